"""ImageNet initialisation from TF-slim checkpoints (the original's start).

`data_pipeline/convert_slim.py` turns a slim checkpoint into an .npz keyed
by slim variable names (it needs TensorFlow; this module does not). Here
each backbone variable is matched by name (see `facerecon.models.backbones`
for the naming rule):

  Flax (collection, .../<scope>/leaf)         slim name
  params       .../weights                    <scope>/weights
  params       .../biases                     <scope>/biases
  params       .../BatchNorm/scale            <scope>/BatchNorm/gamma
  params       .../BatchNorm/bias             <scope>/BatchNorm/beta
  batch_stats  .../BatchNorm/mean             <scope>/BatchNorm/moving_mean
  batch_stats  .../BatchNorm/var              <scope>/BatchNorm/moving_variance

The first convolution takes CoarseNet's 10 input channels, not RGB: its
RGB slice gets the slim kernel times 255 (slim's networks see 0..255 pixel
values minus the ImageNet mean; ours see 0..1 minus the data's mean image)
and the 7 render channels start at zero, so at the start each iteration
computes the ImageNet features of the photo and learns to use the renders.
slim's classifier (`logits`, `fc6`..`fc8`) is not used. The heads keep
their initialisation.
"""

import os

import jax
import numpy as np

# Flax leaf path suffix -> slim name suffix, per collection.
_PARAM_NAMES = {("weights",): "weights", ("biases",): "biases",
                ("BatchNorm", "scale"): "BatchNorm/gamma",
                ("BatchNorm", "bias"): "BatchNorm/beta"}
_STAT_NAMES = {("BatchNorm", "mean"): "BatchNorm/moving_mean",
               ("BatchNorm", "var"): "BatchNorm/moving_variance"}
RGB_SCALE = 255.0


def load_slim_arrays(path: str) -> dict[str, np.ndarray]:
  """The .npz written by data_pipeline/convert_slim.py."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"pretrained weights not found: {path} (convert a slim "
                            "checkpoint with python -m data_pipeline.convert_slim)")
  try:
    with np.load(path) as data:
      return {name: data[name] for name in data.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read pretrained weights {path}: {e}") from e


def slim_name(path: tuple[str, ...], collection: str) -> str:
  """The slim name of a backbone variable at Flax `path` (starting with the
  backbone's scope, e.g. ('resnet_v1_101', 'conv1', 'BatchNorm', 'scale'))."""
  names = _PARAM_NAMES if collection == "params" else _STAT_NAMES
  for suffix, slim_suffix in names.items():
    if path[-len(suffix):] == suffix:
      return "/".join(path[:-len(suffix)] + (slim_suffix,))
  raise ValueError(f"no slim name for the {collection} variable {'/'.join(path)}")


def _leaf_path(key_path) -> tuple[str, ...]:
  return tuple(str(k.key) for k in key_path)


def _converted(name: str, value, ours) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if value.shape == ours.shape:
    return value
  # The first convolution: RGB from slim (rescaled), the rest zero.
  if (value.ndim == 4 and ours.ndim == 4 and value.shape[2] == 3 and ours.shape[2] > 3
      and value.shape[:2] + value.shape[3:] == ours.shape[:2] + ours.shape[3:]):
    out = np.zeros(ours.shape, np.float32)
    out[:, :, :3] = value * RGB_SCALE
    return out
  raise ValueError(f"pretrained variable {name} has shape {value.shape}, the network's "
                   f"has {ours.shape}: a checkpoint for another network?")


def init_from_slim(variables: dict, arrays: dict[str, np.ndarray], scope: str) -> dict:
  """Replaces every backbone variable of `variables` ({'params': ...,
  'batch_stats': ...}) found under a module named `scope` (at any depth:
  each CoarseNet iteration has its own copy) by the slim array of the same
  name. Every such variable must be in `arrays`."""
  out, missing, used = {}, [], 0
  for collection, tree in variables.items():
    def replace(key_path, leaf, collection=collection):
      nonlocal used
      path = _leaf_path(key_path)
      if scope not in path:
        return leaf
      name = slim_name(path[path.index(scope):], collection)
      if name not in arrays:
        missing.append(name)
        return leaf
      used += 1
      return _converted(name, arrays[name], leaf).astype(leaf.dtype)
    out[collection] = jax.tree_util.tree_map_with_path(replace, tree)
  if missing:
    raise ValueError(f"{len(missing)} variables of '{scope}' are not in the pretrained "
                     f"weights (a checkpoint for another network?), e.g. "
                     f"{', '.join(sorted(missing)[:3])}")
  if not used:
    raise ValueError(f"the network has no variables under '{scope}'")
  return out
