"""FineNet (stage 2) on real face photos without labels, over the paper's
CoarseNet trained with configs/resnet.py:

    python main.py --config=configs/finenet.py --workdir=runs/finenet \
        --config.fine.coarse_workdir=runs/resnet \
        --config.coarse.data.data_dir=~/tensorflow_datasets \
        --config.coarse.data.statistics=data/synthetic/statistics.npz \
        --config.model=models/bfm2009.npz \
        --config.fine.data.data_dir=~/tensorflow_datasets

The CoarseNet fields (model, image size, coarse network) must be those of
the run in `fine.coarse_workdir` (checked against its config.json), so this
starts from configs/resnet.py. Photos: the VGG Face crops as the tfds data
set facerecon_faces/vggface (`python -m data_pipeline.download_vggface`, then
`build_dataset`), or any folder of face crops:
--config.fine.data.source=folder --config.fine.data.folder=DIR. ImageNet
initialisation as in the original: --config.fine.pretrained=pretrained/vgg_16.npz.
--config.fine.end_to_end also fine-tunes CoarseNet through the renderer.
"""

from configs import resnet


def get_config():
  config = resnet.get_config()
  config.coarse.num_train_steps = 0  # CoarseNet is trained already: only stage 2 runs
  config.fine.num_train_steps = 70_000  # the original's schedule
  config.fine.data.source = "tfds"
  config.fine.data.name = "facerecon_faces/vggface"
  config.fine.data.num_workers = 8
  config.fine.batch_size = 16
  config.fine.eval_batch_size = 16
  config.fine.best_metric = "loss"  # photos have no true depth
  return config
