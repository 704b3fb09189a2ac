"""The tiny run the end-to-end tests train: configs/synthetic.py on a
few-hundred-vertex face, 32x32 images, small networks, a few steps. One set
of overrides for in-process runs (`config`) and main.py runs (`flags`), so
both compile the same programs (the test run shares compiled programs,
see conftest.py)."""

from configs import synthetic

OVERRIDES = {
    "model": "embedded:25",
    "image_size": 32,
    "synthetic.statistics_samples": 64,
    "coarse.backbone": "small",
    "coarse.backbone_kwargs.widths": (8, 16),
    "coarse.num_iterations": 2,
    "coarse.batch_size": 8,
    "coarse.num_train_steps": 4,
    "coarse.learning_rate": 1e-3,
    "coarse.warmup_steps": 1,
    # Constant: independent of num_train_steps, so a longer run resumes a shorter one.
    "coarse.schedule": "constant",
    "coarse.log_every": 2,
    "coarse.eval_every": 4,
    "coarse.eval_batches": 1,
    "coarse.eval_batch_size": 8,
    "coarse.checkpoint_every": 2,
    "coarse.keep_checkpoints": 2,
    "fine.num_train_steps": 0,
    "fine.widths": (4, 8, 8),
    "fine.head": (8,),
    "fine.batch_size": 8,
    "fine.learning_rate": 1e-3,
    "fine.warmup_steps": 1,
    "fine.schedule": "constant",
    "fine.log_every": 2,
    "fine.eval_every": 2,
    "fine.eval_batches": 1,
    "fine.eval_batch_size": 8,
    "fine.checkpoint_every": 2,
    "fine.keep_checkpoints": 2,
}


def _set(config, dotted: str, value):
  *parents, leaf = dotted.split(".")
  node = config
  for key in parents:
    node = node[key]
  node[leaf] = value


def config(**overrides):
  """The tiny config, with `overrides` ('coarse__batch_size' for
  coarse.batch_size) on top."""
  result = synthetic.get_config()
  for dotted, value in {**OVERRIDES,
                        **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
    _set(result, dotted, value)
  return result


def _flag_value(value) -> str:
  if isinstance(value, tuple):
    return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def flags(**overrides) -> list[str]:
  """main.py's flags for the same config."""
  merged = {**OVERRIDES, **{k.replace("__", "."): v for k, v in overrides.items()}}
  return ["--config=configs/synthetic.py"] + [f"--config.{k}={_flag_value(v)}"
                                             for k, v in merged.items()]
