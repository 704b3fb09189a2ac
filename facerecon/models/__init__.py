"""Networks: backbones (ResNet v1, VGG-16, a small CPU net), CoarseNet and FineNet."""

from facerecon.models.backbones import BACKBONES
from facerecon.models.backbones import count_params
from facerecon.models.backbones import make_backbone
from facerecon.models.backbones import ResNetV1
from facerecon.models.backbones import SmallNet
from facerecon.models.backbones import VGG16
from facerecon.models.coarse_net import CoarseNet
from facerecon.models.fine import FineNet

__all__ = ["BACKBONES", "CoarseNet", "FineNet", "ResNetV1", "SmallNet", "VGG16", "count_params",
           "make_backbone"]
