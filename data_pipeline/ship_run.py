r"""Copies what reconstruction needs of a trained run into the package.

    python -m data_pipeline.ship_run --workdir=runs/real [--output=facerecon/assets/run]

Copies the run's config.json, statistics.npz, best/ checkpoint (and its
FineNet stage's, if it has one) and pose calibration (if it has one),
nothing else: the package then ships the run, and `main.py
--mode=reconstruct` and `--mode=evaluate` use it without --workdir
(`facerecon.rundir.default_run`). A FineNet trained over another
run's CoarseNet (`config.fine.coarse_workdir`) ships with that CoarseNet:
its best/ and statistics are copied in, and the shipped config.json no
longer names the other run. The copy is made beside --output and renamed
over it, so a failed copy leaves the old one whole (the other run may be
the shipped one itself).
"""

import json
import os
import shutil

from absl import app
from absl import flags
from absl import logging

from facerecon import rundir


def ship(workdir: str, output: str) -> None:
  """Copies the trained parts of the run in `workdir` to the folder `output`."""
  run = rundir.RunDir(workdir)
  if not os.path.exists(run.config_file):
    raise FileNotFoundError(f"{run.config_file}: missing (not a complete run)")
  record = rundir.read_record(run)
  coarse_workdir = record["config"]["fine"].get("coarse_workdir")
  coarse = rundir.RunDir(coarse_workdir) if coarse_workdir else run
  if not coarse.has_best():
    raise FileNotFoundError(f"{coarse.best_record}: no trained CoarseNet in {coarse.path}")
  if coarse_workdir and not run.fine.has_best():
    raise FileNotFoundError(f"{run.fine.best_record}: no trained FineNet in {workdir} (its "
                            f"CoarseNet is {coarse_workdir}'s: ship that run instead)")
  if not os.path.exists(coarse.statistics):
    raise FileNotFoundError(f"{coarse.statistics}: missing (not a complete run)")
  staging = output.rstrip(os.sep) + ".partial"
  shutil.rmtree(staging, ignore_errors=True)
  shipped = rundir.RunDir(staging)
  os.makedirs(shipped.path)
  # The CoarseNet's normalisation is the one its weights learnt (and the one
  # a FineNet trained over it used).
  shutil.copy2(coarse.statistics, shipped.statistics)
  # The pose calibration was made on the run as shipped (`data_pipeline.calibrate_pose`).
  if os.path.exists(run.pose_calibration):
    shutil.copy2(run.pose_calibration, shipped.pose_calibration)
  if coarse_workdir:
    # The shipped config says how both networks were trained: CoarseNet's
    # stage as the other run trained it.
    record["config"]["coarse"] = rundir.read_record(coarse)["config"]["coarse"]
  record["config"]["fine"]["coarse_workdir"] = None
  with open(shipped.config_file, "w") as f:
    json.dump(record, f, indent=2)
  stages = [(coarse, shipped)]
  if run.fine.has_best():  # a CoarseNet-only run has no FineNet to ship
    stages.append((run.fine, shipped.fine))
  for stage, copy in stages:
    if stage is not coarse:
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
