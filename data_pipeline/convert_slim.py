r"""Converts a TF-slim ImageNet checkpoint into an .npz of its model variables.

    pip install -e ".[convert]"      # TensorFlow, needed by this step only
    python -m data_pipeline.convert_slim \
        --checkpoint=downloads/resnet_v1_101.ckpt --output=pretrained/resnet_v1_101.npz

The checkpoints the original trained from are TF-slim's
(https://github.com/tensorflow/models/tree/master/research/slim):
resnet_v1_101.ckpt and vgg_16.ckpt, in TensorFlow's name-based checkpoint
format (`--checkpoint` is its prefix: `resnet_v1_101.ckpt` for
`resnet_v1_101.ckpt.index` + `.data-*`). The output holds every model
variable under its slim name (`resnet_v1_101/conv1/weights`, ...), without
the training-only ones (global step, optimizer slots, moving-average
shadows); training then reads it without TensorFlow
(`--config.coarse.pretrained=...` or `--config.fine.pretrained=...`, see
`facerecon.models.pretrained`).
"""

import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from facerecon import fileio

# Variables that only training needs: not part of the network.
_SKIPPED_SUFFIXES = ("/Momentum", "/RMSProp", "/RMSProp_1", "/Adam", "/Adam_1",
                     "/ExponentialMovingAverage")
_SKIPPED_NAMES = ("global_step",)


def _import_tensorflow():
  try:
    import tensorflow as tf
  except ImportError as e:
    raise ImportError("converting a TF-slim checkpoint needs TensorFlow: "
                      "pip install -e \".[convert]\"") from e
  return tf


def read_slim_checkpoint(prefix: str) -> dict[str, np.ndarray]:
  """The model variables of a name-based TensorFlow checkpoint, by name."""
  if not (os.path.exists(prefix + ".index") or os.path.exists(prefix)):
    raise FileNotFoundError(f"TF checkpoint not found: {prefix}.index (give the prefix, "
                            "e.g. resnet_v1_101.ckpt)")
  tf = _import_tensorflow()
  try:
    reader = tf.train.load_checkpoint(prefix)
  except Exception as e:  # TF raises its own error types for corrupt files.
    raise ValueError(f"cannot read TF checkpoint {prefix}: {e}") from e
  arrays = {}
  for name in sorted(reader.get_variable_to_shape_map()):
    if name in _SKIPPED_NAMES or name.endswith(_SKIPPED_SUFFIXES):
      continue
    arrays[name] = np.asarray(reader.get_tensor(name))
  if not arrays:
    raise ValueError(f"TF checkpoint {prefix} has no model variables")
  return arrays


def convert(prefix: str, output: str) -> int:
  """Writes the checkpoint's model variables to `output` (.npz, atomically);
  returns how many."""
  arrays = read_slim_checkpoint(prefix)
  with fileio.atomic_write(output) as f:
    np.savez(f, **arrays)
  return len(arrays)


def main(argv):
  del argv
  count = convert(_CHECKPOINT.value, _OUTPUT.value)
  logging.info("wrote %d variables", count)
  print(f"{count} variables from {_CHECKPOINT.value} -> {_OUTPUT.value}")


if __name__ == "__main__":
  _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "TF checkpoint prefix.")
  _OUTPUT = flags.DEFINE_string("output", None, "The .npz to write.")
  flags.mark_flags_as_required(["checkpoint", "output"])
  app.run(main)
