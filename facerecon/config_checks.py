"""Checks of a config's values where they enter (main.py, training), so a bad
value is an error that names its field instead of a failure deep in JAX
(a batch size of 0 was a ZeroDivisionError in the sharding code).

`check(config)` checks types, ranges and choices of the fields of
configs/default.py. What needs files or data (a model file, a statistics
file, a tfds data set) is checked by the code that opens it, which also
names the field.
"""

import math
import numbers

from facerecon import render
from facerecon.data import sources
from facerecon.models import backbones

DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("constant", "cosine")
COARSE_SOURCES = ("synthetic", "tfds")
FINE_SOURCES = ("synthetic", "tfds", "folder")


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


# The fields of every stage (configs/default.py `_stage`): field -> (check,
# what the value must be).
_INT = (_is_int, "an integer")
_POSITIVE_INT = (lambda v: _is_int(v) and v > 0, "a positive integer")
_NON_NEGATIVE_INT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0, "a finite number >= 0")
_FRACTION = (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
_STAGE_FIELDS = {
    "seed": _INT,
    "num_train_steps": _NON_NEGATIVE_INT,
    "batch_size": _POSITIVE_INT,
    "learning_rate": _NON_NEGATIVE,
    "warmup_steps": _NON_NEGATIVE_INT,
    "grad_clip_norm": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "adam_b1": _FRACTION,
    "adam_b2": _FRACTION,
    "max_bad_steps": _POSITIVE_INT,
    "log_every": _POSITIVE_INT,
    "eval_every": _POSITIVE_INT,
    "eval_batches": _POSITIVE_INT,
    "eval_batch_size": _POSITIVE_INT,
    "eval_pictures": _NON_NEGATIVE_INT,
    "checkpoint_every": _POSITIVE_INT,
    "keep_checkpoints": _POSITIVE_INT,
}


def _require(ok: bool, field: str, value, what: str) -> None:
  if not ok:
    raise ValueError(f"config.{field} is {value!r}; it must be {what}")


def _choice(config, field: str, choices) -> None:
  value = get_field(config, field)
  _require(value in choices, field, value, "one of " + ", ".join(map(repr, choices)))


def get_field(config, dotted: str):
  """config['a']['b'] for 'a.b' (a ConfigDict or the dicts of a recorded one)."""
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def _check_stage(config, name: str) -> None:
  for field, (ok, what) in _STAGE_FIELDS.items():
    value = get_field(config, f"{name}.{field}")
    _require(ok(value), f"{name}.{field}", value, what)
  _choice(config, f"{name}.schedule", SCHEDULES)
  for field, value in config[name].loss.items():
    _require(_is_number(value) and value >= 0, f"{name}.loss.{field}", value,
             "a finite number >= 0")


def _check_widths(config, field: str) -> None:
  value = get_field(config, field)
  ok = (isinstance(value, (list, tuple)) and len(value) > 0
        and all(_is_int(v) and v > 0 for v in value))
  _require(ok, field, value, "a non-empty sequence of positive integers")


def check(config) -> None:
  """ValueError naming the first field whose value is wrong."""
  _require(isinstance(config.model, str) and config.model, "model", config.model,
           "a face model source ('embedded', 'embedded:<grid>' or a model file)")
  _require(_is_int(config.image_size) and config.image_size >= 16, "image_size",
           config.image_size, "an integer >= 16")
  _choice(config, "dtype", DTYPES)
  if config.render_backend is not None:
    _choice(config, "render_backend", render.BACKENDS)

  sources.face_prior(config)  # unknown prior fields are named there
  _require(_is_int(config.synthetic.statistics_samples)
           and config.synthetic.statistics_samples > 0, "synthetic.statistics_samples",
           config.synthetic.statistics_samples, "a positive integer")

  _check_stage(config, "coarse")
  coarse = config.coarse
  _require(_is_int(coarse.num_iterations) and coarse.num_iterations > 0,
           "coarse.num_iterations", coarse.num_iterations, "a positive integer")
  _choice(config, "coarse.backbone", backbones.BACKBONES)
  _choice(config, "coarse.data.source", COARSE_SOURCES)
  _require(not (coarse.init_from and coarse.pretrained), "coarse.init_from",
           coarse.init_from, "unset when coarse.pretrained is set (one start only)")
  _require(_is_int(coarse.data.num_workers) and coarse.data.num_workers >= 0,
           "coarse.data.num_workers", coarse.data.num_workers, "an integer >= 0")

  _check_stage(config, "fine")
  _require(not (config.fine.get("init_from") and config.fine.pretrained), "fine.init_from",
           config.fine.get("init_from"), "unset when fine.pretrained is set (one start only)")
  fine_size = config.fine.get("image_size")
  _require(fine_size is None or (_is_int(fine_size) and fine_size >= config.image_size),
           "fine.image_size", fine_size, "unset or an integer >= image_size")
  _check_widths(config, "fine.widths")
  _check_widths(config, "fine.head")
  _choice(config, "fine.data.source", FINE_SOURCES)
  for field in ("depth", "normal", "albedo"):
    _require(not config.fine.loss.get(field) or config.fine.data.source == "synthetic",
             f"fine.loss.{field}", config.fine.loss.get(field),
             "0 unless fine.data.source is 'synthetic' (only synthetic faces have the "
             "true detail)")
  _require(_is_int(config.fine.data.num_workers) and config.fine.data.num_workers >= 0,
           "fine.data.num_workers", config.fine.data.num_workers, "an integer >= 0")
