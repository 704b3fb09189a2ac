"""FineNet: refines CoarseNet's depth map with detail (Richardson et al. 2017).

A fully convolutional hypercolumn network:

    inputs   = [normalised image (3), coarse depth (1, centred, scaled), mask (1)]
    blocks   = VGG-16's conv1..conv3 (`backbones.VGG16`, slim names, so
               ImageNet vgg_16 weights load into them; narrower for CPU runs)
    columns  = concat(block 1, block 2 and block 3 resized to full resolution)
    detail   = 1x1 convs (50, 50, 10 with ReLU, then 1, zero-initialised)
    fine     = coarse + detail on the mask
    albedo   = (with `albedo=True`) a sigmoid of 3 more 1x1 outputs of the
               same head: RGB 0..1, 0 off the mask

The network predicts the detail in pixels of depth, added to the coarse
depth, so it starts as the identity (the last layer is zero) and the
fidelity term measures the detail itself. Off the face mask the output is
the coarse depth (0). The albedo output lets the network say what is colour
(brows, lips, make-up) apart from what is relief; it is learnt from synthetic
faces' true albedo (`losses.albedo_error`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from facerecon.models import backbones

Dtype = Any
SCOPE = "vgg_16"  # the blocks' scope: slim's vgg_16 names (models.pretrained)


def split_outputs(outputs):
  """(depth, albedo or None) of a FineNet's output."""
  return outputs if isinstance(outputs, tuple) else (outputs, None)


def depth_input(depth, mask):
  """The coarse depth as a network input [B, H, W, 1]: centred on each
  face's mean depth, divided by a tenth of the image height, 0 off the face."""
  weights = mask.astype(depth.dtype)
  mean = (jnp.sum(depth * weights, axis=(1, 2), keepdims=True)
          / jnp.maximum(jnp.sum(weights, axis=(1, 2), keepdims=True), 1.0))
  scale = 0.1 * depth.shape[1]
  return ((depth - mean) * weights / scale)[..., None]


class FineNet(nn.Module):
  """`__call__(images, coarse_depth, mask)`: images [B, H, W, C] normalised
  (image minus the mean image), coarse depth and mask [B, H, W]. Returns the
  refined depth [B, H, W] float32 (pixels, larger nearer, 0 off the mask),
  and with `albedo` (depth, albedo [B, H, W, 3]) (`split_outputs`)."""
  widths: Sequence[int] = backbones.VGG16_DEPTHS[:3]  # conv1..conv3 channels
  head: Sequence[int] = (50, 50, 10)                  # the 1x1 convs before the output
  albedo: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, coarse_depth, mask, train: bool = False):
    del train  # No BatchNorm or dropout.
    if images.ndim != 4 or coarse_depth.shape != images.shape[:3] or \
        mask.shape != images.shape[:3]:
      raise ValueError(f"FineNet takes images [B, H, W, C] with depth and mask [B, H, W]; "
                       f"got {images.shape}, {coarse_depth.shape}, {mask.shape}")
    batch, height, width = images.shape[:3]
    coarse_depth = coarse_depth.astype(jnp.float32)
    inputs = jnp.concatenate([images.astype(jnp.float32), depth_input(coarse_depth, mask),
                              mask[..., None].astype(jnp.float32)], axis=-1)
    blocks = backbones.VGG16(num_blocks=len(self.widths), depths=tuple(self.widths),
                             dtype=self.dtype, name=SCOPE)(
                                 inputs.astype(self.dtype), return_blocks=True)
    columns = [jax.image.resize(b, (batch, height, width, b.shape[-1]), "bilinear")
               if b.shape[1:3] != (height, width) else b for b in blocks]
    x = jnp.concatenate(columns, axis=-1)
    for i, features in enumerate(self.head):
      x = nn.relu(nn.Conv(features, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                          name=f"head_{i + 1}")(x))
    detail = nn.Conv(1, (1, 1), kernel_init=nn.initializers.zeros, dtype=jnp.float32,
                     param_dtype=jnp.float32, name="detail")(x.astype(jnp.float32))[..., 0]
    depth = jnp.where(mask, coarse_depth + detail, coarse_depth)
    if not self.albedo:
      return depth
    albedo = nn.sigmoid(nn.Conv(3, (1, 1), dtype=jnp.float32, param_dtype=jnp.float32,
                                name="albedo")(x.astype(jnp.float32)))
    return depth, jnp.where(mask[..., None], albedo, 0.0)
