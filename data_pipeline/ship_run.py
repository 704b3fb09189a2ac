r"""Copies what reconstruction needs of a trained run into the package.

    python -m data_pipeline.ship_run --workdir=runs/real [--output=facerecon/assets/run]

Copies the run's config.json, statistics.npz and best/ checkpoint (and its
FineNet stage's, if it has one), nothing else: the package then ships the
run, and `main.py --mode=reconstruct` and `--mode=evaluate` use it without
--workdir (`facerecon.rundir.default_run`). The copy is made beside
--output and renamed over it, so a failed copy leaves the old one whole.
"""

import os
import shutil

from absl import app
from absl import flags
from absl import logging

from facerecon import rundir


def ship(workdir: str, output: str) -> None:
  """Copies the trained parts of the run in `workdir` to the folder `output`."""
  run = rundir.RunDir(workdir)
  if not run.has_best():
    raise FileNotFoundError(f"{run.best_record}: no trained CoarseNet in {workdir}")
  for path in (run.config_file, run.statistics):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: missing (not a complete run)")
  staging = output.rstrip(os.sep) + ".partial"
  shutil.rmtree(staging, ignore_errors=True)
  stages = [(run, rundir.RunDir(staging))]
  if run.fine.has_best():  # a CoarseNet-only run has no FineNet to ship
    stages.append((run.fine, rundir.RunDir(staging).fine))
  for stage, copy in stages:
    os.makedirs(copy.path, exist_ok=True)
    for path in (stage.config_file, stage.statistics):
      if os.path.exists(path):
        shutil.copy2(path, copy.join(os.path.basename(path)))
    shutil.copytree(stage.best, copy.best)
    # orbax's commit markers name the folder they were written to: only
    # their presence matters, and a path of this machine has no place in
    # the package.
    for folder, _, names in os.walk(copy.best):
      if "commit_success.txt" in names:
        with open(os.path.join(folder, "commit_success.txt"), "w") as f:
          f.write("Checkpoint commit was successful\n")
  previous = output.rstrip(os.sep) + ".previous"
  shutil.rmtree(previous, ignore_errors=True)
  if os.path.exists(output):
    os.rename(output, previous)
  os.rename(staging, output)
  shutil.rmtree(previous, ignore_errors=True)


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "The trained run.")
  flags.DEFINE_string("output", rundir.SHIPPED_RUN, "Where the package's run goes.")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  ship(FLAGS.workdir, FLAGS.output)
  logging.info("shipped %s as %s", FLAGS.workdir, FLAGS.output)


if __name__ == "__main__":
  define_flags()
  app.run(main)
