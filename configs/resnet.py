"""The paper's CoarseNet: ResNet-101 (v1) backbones, 4 iterations, 200x200,
trained on a tfds data set of faces with 3DMM labels.

    python main.py --config=configs/resnet.py --workdir=runs/resnet \
        --config.coarse.data.name=facerecon_faces/synthetic \
        --config.coarse.data.data_dir=~/tensorflow_datasets \
        --config.coarse.data.statistics=data/synthetic/statistics.npz \
        --config.model=models/bfm2009.npz

`--config.model`: the BFM converted by `python -m data_pipeline.prepare_bfm`
(or 'embedded:253', the BFM-scale built-in face). On GPU/TPU add
`--config.dtype=bfloat16`. ImageNet initialisation as in the original: add
`--config.coarse.pretrained=pretrained/resnet_v1_101.npz`, made from TF-slim's
resnet_v1_101.ckpt by `python -m data_pipeline.convert_slim`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.image_size = 200
  config.coarse.backbone = "resnet_v1_101"
  config.coarse.num_iterations = 4
  config.coarse.data.source = "tfds"
  config.coarse.data.num_workers = 8
  config.coarse.batch_size = 64
  return config
