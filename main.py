r"""facerecon's entry point.

    python main.py --config=configs/synthetic.py --workdir=runs/quickstart

Every config field can be overridden on the command line, e.g.
`--config.model=embedded:253 --config.preview.tile_size=256`.

Modes (--mode):
  train     (the default) train CoarseNet (facerecon.train.train_and_evaluate): checkpoints,
            TensorBoard events and pictures in --workdir; resumes from there
  preview   build the morphable model, sample faces, write preview.png
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from facerecon import memory
from facerecon import preview

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all outputs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "preview"], "What to run.")
config_flags.DEFINE_config_file(
    "config", None, "A config file defining get_config().", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = flags.FLAGS.config
  memory.retain_freed_memory()
  logging.info("config:\n%s", config)
  if _MODE.value == "preview":
    path = preview.write_preview(config, _WORKDIR.value)
    print(f"wrote {path}")
  elif _MODE.value == "train":
    from facerecon import train  # Deferred: preview needs none of it.

    metrics = train.train_and_evaluate(config, _WORKDIR.value)
    print("final evaluation: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
  app.run(main)
