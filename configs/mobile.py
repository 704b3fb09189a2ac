"""A fast CoarseNet: MobileNet v1 (width 0.5) on 64x64 crops, one
iteration; the class of 3DDFA_V2's model (which takes 120x120), for
reconstructing photos on a CPU: at 120x120 the network alone took 3.0 ms
per face at batch 64 on 2 cores, at 96x96 1.5 ms, at 64x64 0.4 ms
(benchmarks/reconstruct.py). Trained by the same system; by default, like the quick start, on
synthetic faces of the built-in model, CoarseNet only:

    python main.py --config=configs/mobile.py --workdir=runs/mobile
    python main.py --mode=reconstruct --config=configs/mobile.py --workdir=runs/mobile \
        --input=photos/ --output=out/
    python benchmarks/reconstruct.py --config=configs/mobile.py --workdir=runs/mobile

On a labelled tfds data set and the BFM, as configs/resnet.py:
`--config.data.source=tfds --config.data.name=... --config.data.statistics=...
--config.model=models/bfm2009.npz`.
"""

import ml_collections

from configs import synthetic


def get_config():
  config = synthetic.get_config()
  config.image_size = 64
  config.num_iterations = 1  # the start's render is shared by the batch: no render per face
  config.backbone = "mobilenet_v1"
  config.backbone_kwargs = ml_collections.ConfigDict({"width": 0.5})
  config.fine.num_train_steps = 0  # CoarseNet only: speed first
  return config
