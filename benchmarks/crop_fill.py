r"""NME on AFLW2000-3D-style photos by the fill of the ground-truth crops.

    python benchmarks/crop_fill.py --dev=../shared/data/aflw2000-3d-dev \
        [--workdir=RUN] [--fills=0.52,0.54,0.55,0.56,0.57,0.58,0.6]

Evaluates the run (default: the shipped one) on the folder --dev once per
fill (the landmark box's larger side over the crop's side, the crop's
centre kept; `facerecon.data.cropping`) and prints NME (%) per yaw bin:
how `cropping.GROUND_TRUTH_FILL` was chosen (docs/reconstruction.md#crops).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

from facerecon import evaluate
from facerecon import rundir
from facerecon.data import cropping

BINS = ("[0,30]", "[30,60]", "[60,90]", "mean")


def main(argv):
  del argv
  flags_ = flags.FLAGS
  run = rundir.RunDir(flags_.workdir) if flags_.workdir else rundir.default_run()
  if run is None:
    raise app.UsageError("no --workdir and no shipped run")
  config = rundir.resolve_config(run, None)
  fills = [float(f) for f in flags_.fills]
  if not all(0.0 < f < 1.0 for f in fills):
    raise app.UsageError(f"--fills must be in (0, 1), got {flags_.fills}")
  print("fill    " + "".join(f"{b:>10}" for b in BINS))
  for fill in fills:
    table = evaluate.evaluate_folder(config, run.path, flags_.dev, batch_size=flags_.batch,
                                     ground_truth_fill=fill)["ground_truth_crops"]
    print(f"{fill:<8.3f}" + "".join(f"{table[b]:10.2f}" for b in BINS), flush=True)


if __name__ == "__main__":
  flags.DEFINE_string("dev", None, "An AFLW2000-3D-style folder (<stem>.jpg + <stem>.mat).")
  flags.DEFINE_string("workdir", None, "The run (default: $FACERECON_RUN or the shipped one).")
  flags.DEFINE_list("fills", ["0.52", "0.54", "0.55", str(cropping.GROUND_TRUTH_FILL), "0.57",
                              "0.58", "0.6"], "The fills to evaluate.")
  flags.DEFINE_integer("batch", 32, "Faces per network batch.")
  flags.mark_flag_as_required("dev")
  app.run(main)
