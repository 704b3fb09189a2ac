"""CoarseNet with VGG-16 backbones (the conv layers of TF-slim's vgg_16),
otherwise as configs/resnet.py.

    python main.py --config=configs/vgg.py --workdir=runs/vgg \
        --config.coarse.data.data_dir=... --config.coarse.data.statistics=... \
        --config.model=...

ImageNet initialisation: `--config.coarse.pretrained=pretrained/vgg_16.npz`
(from TF-slim's vgg_16.ckpt by `python -m data_pipeline.convert_slim`).
"""

from configs import resnet


def get_config():
  config = resnet.get_config()
  config.coarse.backbone = "vgg_16"
  return config
