"""Data statistics and normalisation: networks see and predict normalised units.

A data set stores, from its training split: the mean and std of every entry
of the parameter vector (the facerecon.params layout) and the mean image.
Networks regress (params - mean) / std rather than the original's ad-hoc
sigmoid ranges; images are centred on the mean image.
"""

import dataclasses
import io
import os

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import camera
from facerecon import fileio
from facerecon import params as params_lib

# Parameters that never vary in the training data (std 0) get this std so
# that normalising cannot divide by zero.
MIN_STD = 1e-6


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DataStatistics:
  param_mean: jax.Array  # [P]
  param_std: jax.Array   # [P], >= MIN_STD
  mean_image: jax.Array  # [H, W, C] in [0, 1]
  count: jax.Array       # [] number of training samples


def normalize_params(params, stats: DataStatistics):
  """Parameter vectors [..., P] -> normalised units (numpy in, numpy out with
  numpy statistics; the one label normalisation of every data path)."""
  return (params - stats.param_mean) / stats.param_std


def denormalize_params(normalized, stats: DataStatistics):
  """The inverse of `normalize_params`."""
  return normalized * stats.param_std + stats.param_mean


def normalize_image(image, stats: DataStatistics):
  """uint8 or [0, 1] float images [..., H, W, C] -> centred float32. Images
  of another size than the statistics' take the mean image resized to theirs
  (FineNet's photos can be larger than CoarseNet's)."""
  image = jnp.asarray(image)
  if image.dtype == jnp.uint8:
    image = image.astype(jnp.float32) / 255.0
  mean = stats.mean_image
  if mean.shape[-3:-1] != image.shape[-3:-1]:
    mean = jax.image.resize(mean, image.shape[-3:-1] + mean.shape[-1:], "linear")
  return image - mean


def statistics_for_size(stats: DataStatistics, size: int, new_size: int) -> DataStatistics:
  """The statistics of the same faces in `new_size` x `new_size` images
  instead of `size` x `size`: the pose's translation and scale are pixels,
  so they follow the resize (its mean exactly, `camera.params_after_resize`;
  their spread times the ratio). A CoarseNet fine-tuned at another image
  size keeps the normalisation its weights learnt this way."""
  if size == new_size:
    return stats
  ratio = new_size / size
  mean = np.asarray(camera.params_after_resize(stats.param_mean, size, new_size))
  std = np.array(stats.param_std, np.float64)
  std[params_lib.TRANSLATION] *= ratio
  std[params_lib.SCALE] *= ratio
  std = np.maximum(std, MIN_STD)  # a constant parameter's floor stays one
  return dataclasses.replace(stats, param_mean=mean.astype(np.float32),
                             param_std=std.astype(np.float32))


class StatisticsAccumulator:
  """Streaming mean/std of parameters and mean image (float64 sums)."""

  def __init__(self):
    self.count = 0
    self.param_sum = self.param_square_sum = self.image_sum = None

  def add(self, params: np.ndarray, images: np.ndarray) -> None:
    """params [n, P]; images [n, H, W, C] uint8 or floats in [0, 1]."""
    params = np.asarray(params, np.float64)
    images = np.asarray(images)
    images = images.astype(np.float64) / 255.0 if images.dtype == np.uint8 else \
        images.astype(np.float64)
    if not np.all(np.isfinite(params)):
      raise ValueError("parameters contain NaN or inf")
    if self.param_sum is None:
      self.param_sum = np.zeros(params.shape[1])
      self.param_square_sum = np.zeros(params.shape[1])
      self.image_sum = np.zeros(images.shape[1:])
    # Sums relative to the first batch's mean would be more robust; float64
    # sums are exact enough for the BFM's magnitudes (shape ~1e5-1e6).
    self.count += params.shape[0]
    self.param_sum += params.sum(axis=0)
    self.param_square_sum += np.square(params).sum(axis=0)
    self.image_sum += images.sum(axis=0)

  def result(self) -> DataStatistics:
    if not self.count:
      raise ValueError("no samples to compute statistics from")
    mean = self.param_sum / self.count
    variance = np.maximum(self.param_square_sum / self.count - np.square(mean), 0.0)
    return DataStatistics(
        param_mean=mean.astype(np.float32),
        param_std=np.maximum(np.sqrt(variance), MIN_STD).astype(np.float32),
        mean_image=(self.image_sum / self.count).astype(np.float32),
        count=np.int64(self.count))


def save_statistics(stats: DataStatistics, path: str | os.PathLike) -> None:
  with fileio.atomic_write(path) as f:
    np.savez(f, **{field.name: np.asarray(getattr(stats, field.name))
                   for field in dataclasses.fields(DataStatistics)})


def load_statistics(path: str | os.PathLike) -> DataStatistics:
  """A statistics.npz (a local path or an object-store URL, `fileio`)."""
  path = os.fspath(path)
  try:
    contents = fileio.read_bytes(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"statistics file not found: {path}") from None
  try:
    with np.load(io.BytesIO(contents)) as data:
      fields = {name: data[name] for name in data.files}
  except Exception as e:
    raise ValueError(f"cannot read statistics file {path}: {e}") from e
  missing = [f.name for f in dataclasses.fields(DataStatistics) if f.name not in fields]
  if missing:
    raise KeyError(f"{path}: missing field(s) {', '.join(missing)}")
  stats = DataStatistics(**{f.name: fields[f.name] for f in dataclasses.fields(DataStatistics)})
  if stats.param_mean.shape != stats.param_std.shape or stats.param_mean.ndim != 1:
    raise ValueError(f"{path}: 'param_mean' {stats.param_mean.shape} and 'param_std' "
                     f"{stats.param_std.shape} must be equal 1-d shapes")
  if np.any(stats.param_std < MIN_STD) or not np.all(np.isfinite(stats.param_mean)):
    raise ValueError(f"{path}: 'param_std' below {MIN_STD} or non-finite 'param_mean'")
  return stats
