"""The networks' input: uint8 photos -> normalised float images.

Every path into CoarseNet and FineNet (training, evaluation, FineNet's
photos, reconstruction) goes through `network_images`: pixels to [0, 1],
colour jitter when training (a key is given), then the data set's mean
image subtracted (`normalization.normalize_image`). It is jit-able and runs
on the device inside the train step: the pixel-wise float work is free
there, and the host moves uint8 images, a quarter of the bytes.

The geometric augmentation, which must move the labels with the image,
runs on the host (`facerecon.data.input_pipeline`); `Augmentation` holds
the ranges of both.
"""

import dataclasses

import jax
import jax.numpy as jnp

from facerecon import shading
from facerecon.data import normalization

# How photos are shrunk to a network's size (CoarseNet's, from FineNet's
# larger crops): Lanczos, not a triangle filter. The shipped CoarseNet, shown
# FineNet's 128-pixel crops of the AFLW2000-3D dev photos at 96, scores NME
# 7.94 after it against 8.07 after the blurrier triangle
# (docs/reconstruction.md).
SHRINK_FILTER = "lanczos3"


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Ranges of the random changes (0 switches one off)."""
  scale: float = 0.1        # image scale s in [1 - scale, 1 + scale]
  shift: float = 0.05       # centre shift, fraction of the image side
  brightness: float = 0.2   # multiply by [1 - b, 1 + b]
  contrast: float = 0.2     # mix with the image mean
  saturation: float = 0.2   # mix with the grey image

  @property
  def geometric(self) -> bool:
    """Whether the host has work to do (colour jitter runs on the device)."""
    return bool(self.scale or self.shift)

  @property
  def photometric(self) -> bool:
    return bool(self.brightness or self.contrast or self.saturation)


NO_AUGMENTATION = Augmentation(0.0, 0.0, 0.0, 0.0, 0.0)


def gaussian_blur(images, sigma: float):
  """Float images [..., H, W, C] blurred by a Gaussian of `sigma` pixels
  (separable, 3 sigma each side, edge pixels repeated)."""
  radius = max(1, int(round(3 * sigma)))
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2)
  taps = taps / taps.sum()
  blurred = images
  for axis in (-3, -2):
    pad = [(0, 0)] * images.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(blurred, pad, mode="edge")
    size = images.shape[axis]
    blurred = sum(taps[k] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis % images.ndim)
                  for k in range(2 * radius + 1))
  return blurred


def unsharp_mask(images, amount: float, sigma: float = 1.0):
  """Float images [..., H, W, C] sharpened: plus `amount` times their
  difference from themselves blurred by a Gaussian of `sigma` pixels
  (`gaussian_blur`)."""
  return images + amount * (images - gaussian_blur(images, sigma))


def polygon_masks(polygons, height: int, width: int):
  """[n, H, W] bool: which pixel centres lie inside each closed polygon
  [n, K, 2] (column, row; pixel (r, c) is the point (c, r)), by the even-odd
  rule."""
  rows, columns = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                               jnp.arange(width, dtype=jnp.float32), indexing="ij")
  start = polygons[:, None, None, :, :]                      # [n, 1, 1, K, 2]
  end = jnp.roll(polygons, -1, axis=1)[:, None, None, :, :]
  x, y = columns[None, :, :, None], rows[None, :, :, None]   # [1, H, W, 1]
  # Edges that the horizontal ray from the pixel to the right crosses.
  straddles = (start[..., 1] > y) != (end[..., 1] > y)
  rise = jnp.where(straddles, end[..., 1] - start[..., 1], 1.0)
  crossing = start[..., 0] + (y - start[..., 1]) * (end[..., 0] - start[..., 0]) / rise
  crossings = jnp.sum(straddles & (x < crossing), axis=-1)
  return crossings % 2 == 1


def rotate_images(images, angles):
  """Square images [n, S, S, C] (any dtype) turned counter-clockwise as seen
  by `angles` [n] radians about their centres: bilinear, the edge pixels
  repeated beyond the image (as `cropping.crop` repeats the photo's), the
  input's dtype kept (rounded for integers). Image pixel (row, column);
  output pixel q shows the input at centre + R(-angle)(q - centre) in a
  y-up frame."""
  size = images.shape[1]
  centre = 0.5 * (size - 1)
  rows, columns = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32),
                               jnp.arange(size, dtype=jnp.float32), indexing="ij")
  x, y = columns - centre, centre - rows            # y up
  cos, sin = jnp.cos(angles)[:, None, None], jnp.sin(angles)[:, None, None]
  source_x = centre + cos * x + sin * y
  source_row = centre - (-sin * x + cos * y)
  source_row = jnp.clip(source_row, 0.0, size - 1.0)
  source_x = jnp.clip(source_x, 0.0, size - 1.0)
  top = jnp.clip(jnp.floor(source_row), 0, size - 2).astype(jnp.int32)
  left = jnp.clip(jnp.floor(source_x), 0, size - 2).astype(jnp.int32)
  down, across = (source_row - top)[..., None], (source_x - left)[..., None]
  values = images.astype(jnp.float32)
  pick = jax.vmap(lambda image, r, c: image[r, c])
  upper = (1 - across) * pick(values, top, left) + across * pick(values, top, left + 1)
  lower = (1 - across) * pick(values, top + 1, left) + across * pick(values, top + 1, left + 1)
  out = (1 - down) * upper + down * lower
  if jnp.issubdtype(images.dtype, jnp.integer):
    info = jnp.iinfo(images.dtype)
    out = jnp.clip(jnp.round(out), info.min, info.max)
  return out.astype(images.dtype)


def colour_jitter(images, key, augmentation: Augmentation):
  """Images [B, H, W, 3] in [0, 1], each with its own saturation, contrast and
  brightness change drawn from `key`; clipped to [0, 1]."""
  amounts = jax.random.uniform(key, (images.shape[0], 3), minval=-1.0, maxval=1.0)
  saturation = (amounts[:, 0] * augmentation.saturation)[:, None, None, None]
  contrast = (amounts[:, 1] * augmentation.contrast)[:, None, None, None]
  brightness = (amounts[:, 2] * augmentation.brightness)[:, None, None, None]
  images = images * (1.0 - saturation) + shading.luminance(images, keepdims=True) * saturation
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  images = mean + (images - mean) * (1.0 + contrast)
  return jnp.clip(images * (1.0 + brightness), 0.0, 1.0)


def fine_image_size(config) -> int:
  """The side of FineNet's square photos: config.fine.image_size, or
  CoarseNet's config.image_size where that is unset. CoarseNet sees the same
  photos shrunk to its size (`network_images(..., size=)`)."""
  return config.fine.get("image_size") or config.image_size


def network_images(images, statistics: normalization.DataStatistics | None, key=None,
                   augmentation: Augmentation = Augmentation(), size: int | None = None,
                   sharpen: float = 0.0):
  """uint8 images [B, H, W, 3] -> float32 network input: shrunk to `size`
  (`SHRINK_FILTER`, antialiased; square images) where given and different,
  sharpened by `unsharp_mask(.., sharpen)` where `sharpen` > 0 (photos
  reconstructed: `inference.SHARPEN`), colour-jittered when `key` is given
  (training), centred on the statistics' mean image (none with `statistics`
  None)."""
  images = jnp.asarray(images).astype(jnp.float32) / 255.0
  if size is not None and images.shape[-3:-1] != (size, size):
    images = jax.image.resize(images, images.shape[:-3] + (size, size, images.shape[-1]),
                              SHRINK_FILTER, antialias=True)
  if sharpen > 0:
    images = unsharp_mask(images, sharpen)
  if key is not None and augmentation.photometric:
    images = colour_jitter(images, key, augmentation)
  if statistics is not None:
    images = normalization.normalize_image(images, statistics)
  return images
