"""A fast CoarseNet: MobileNet v1 (width 0.5) on 64x64 crops, one
iteration; the class of 3DDFA_V2's model (which takes 120x120), for
reconstructing photos on a CPU (docs/benchmarks.md). Trained by the same
system; by default, like the quick start, on synthetic faces of the
built-in model, CoarseNet only:

    python main.py --config=configs/mobile.py --workdir=runs/mobile
    python main.py --mode=reconstruct --workdir=runs/mobile --input=photos/ --output=out/
    python benchmarks/reconstruct.py --workdir=runs/mobile

On a labelled tfds data set and the BFM, as configs/resnet.py:
`--config.coarse.data.source=tfds --config.coarse.data.name=...
--config.coarse.data.statistics=... --config.model=models/bfm2009.npz`.
"""

from configs import synthetic


def get_config():
  config = synthetic.get_config()
  config.image_size = 64
  config.coarse.num_iterations = 1  # the start's render is shared by the batch
  config.coarse.backbone = "mobilenet_v1"
  config.coarse.backbone_kwargs = {"width": 0.5}
  config.fine.num_train_steps = 0  # CoarseNet only: speed first
  return config
