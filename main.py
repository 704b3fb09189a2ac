r"""facerecon's entry point.

    python main.py --config=configs/synthetic.py --workdir=runs/quickstart

Every config field can be overridden on the command line, e.g.
`--config.model=embedded:253 --config.preview.tile_size=256`.

Modes (--mode):
  train     (the default) train CoarseNet (facerecon.train.train_and_evaluate): checkpoints,
            TensorBoard events and pictures in --workdir; resumes from there. Then,
            if config.fine.num_train_steps > 0, FineNet on top of it
            (facerecon.train_fine) in --workdir/fine
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
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-host runs: host:port of process 0's coordinator (with --num_processes and "
    "--process_id). On Cloud TPU pods and SLURM use --multihost instead.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() and let it find the cluster "
    "(Cloud TPU pods, SLURM, ...).")


def _initialize_distributed():
  """jax.distributed for multi-host runs: every process then sees every
  device, and the train step's mesh spans them all."""
  import jax

  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go "
                           "together")
    # Cross-process collectives for CPU devices (GPUs and TPUs have their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _MULTIHOST.value:
    jax.distributed.initialize()


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
    _initialize_distributed()
    from facerecon import train  # Deferred: preview needs none of it.

    if config.num_train_steps > 0:
      metrics = train.train_and_evaluate(config, _WORKDIR.value)
      _print_metrics("CoarseNet", metrics)
    if config.fine.num_train_steps > 0:
      import os

      from facerecon import train_fine

      metrics = train_fine.train_and_evaluate(config, os.path.join(_WORKDIR.value, "fine"),
                                              config.fine.coarse_workdir or _WORKDIR.value)
      _print_metrics("FineNet", metrics)


def _print_metrics(name, metrics):
  print(f"{name} final evaluation: "
        + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
  app.run(main)
