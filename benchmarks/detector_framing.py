r"""How BlazeFace's crops are framed (`detect.Framing`) against a run's
landmark error on labelled photos: the figures behind `detect.FRAMING`.

    python benchmarks/detector_framing.py --photos=DIR [--workdir=RUN] [--max_photos=N]

For every face BlazeFace finds over a photo's labelled landmarks (as the
evaluation pairs them), the run (default: the shipped one) fits its crop
under the landmark rule alone (`detect.Framing()`) resized by each of
SIZES, and its crop at FRAMING's size moved across, the way the nose
points, by each of SHIFTS (parts of the side). From these per-photo NME
tables (each photo's NME interpolated between the grid's crops) it chooses
the size (tighten, turn_start, turn_growth) and then the shift (turn_shift)
of the lowest NME mean over the yaw bins, and prints, per yaw bin: the rule
alone, FRAMING, and the choices; then held-out halves: chosen on a random
half of the photos, how much each lowers the other half's mean (five
splits, both ways). Calibration on the photos given, as FRAMING's is on the
AFLW2000-3D dev photos (docs/reconstruction.md).
"""

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import numpy as np

from facerecon import detect
from facerecon import evaluate
from facerecon import inference
from facerecon import rundir
from facerecon.data import cropping
from facerecon.data import mat_folders

_PHOTOS = flags.DEFINE_string("photos", None, "An AFLW2000-3D style folder (photos and .mat "
                              "labels).", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run (default: the shipped one).")
_MAX_PHOTOS = flags.DEFINE_integer("max_photos", None, "Photos used, in name order (default: "
                                   "all).")

SIZES = tuple(np.round(np.arange(0.84, 1.25, 0.04), 2))  # of the landmark rule's side
SHIFTS = (0.0, 0.02, 0.04, 0.06)                         # of the side, the nose's way
# The choices' grids.
TIGHTEN = tuple(np.round(np.arange(0.96, 1.101, 0.01), 2))
TURN_START = (0.0, 0.05, 0.1, 0.15, 0.2)
TURN_GROWTH = tuple(np.round(np.arange(0.0, 2.01, 0.1), 1))
TURN_SHIFT = tuple(np.round(np.arange(0.0, 0.301, 0.02), 2))


class Tables:
  """Per found face: NME [F, len(SIZES)] and [F, len(SHIFTS)], |nose| [F],
  label yaw [F] (degrees)."""

  def __init__(self, sizes, shifts, nose, yaw):
    self.sizes, self.shifts, self.nose, self.yaw = sizes, shifts, nose, yaw
    self.bins = evaluate.yaw_bins(yaw)

  def sized(self, framing: detect.Framing) -> np.ndarray:
    """[F] NME of each face's crop resized by `framing` (not moved)."""
    factors = np.clip(detect.framing_side_factor(framing, self.nose), SIZES[0], SIZES[-1])
    return np.array([np.interp(f, SIZES, row) for f, row in zip(factors, self.sizes)])

  def shifted(self, turn_shift: float) -> np.ndarray:
    """[F] NME of each face's crop at FRAMING's size moved by `turn_shift`."""
    amounts = np.clip(turn_shift * self.nose, SHIFTS[0], SHIFTS[-1])
    return np.array([np.interp(a, SHIFTS, row) for a, row in zip(amounts, self.shifts)])

  def mean(self, nme, faces=None) -> float:
    """The NME mean over the yaw bins (%) of `faces` (indices; default all)."""
    faces = np.arange(len(nme)) if faces is None else faces
    return 100.0 * float(np.mean([nme[faces][b[faces]].mean() for b in self.bins
                                  if b[faces].any()]))

  def row(self, nme) -> str:
    return "".join(f"{100.0 * nme[b].mean():>10.2f}" for b in self.bins) + \
        f"{self.mean(nme):>10.2f}"


def size_candidates():
  return [detect.Framing(t, s, g) for t, s, g in itertools.product(TIGHTEN, TURN_START,
                                                                   TURN_GROWTH)]


def choose_size(tables: Tables, faces=None) -> detect.Framing:
  return min(size_candidates(), key=lambda f: tables.mean(tables.sized(f), faces))


def choose_shift(tables: Tables, faces=None) -> float:
  return min(TURN_SHIFT, key=lambda s: tables.mean(tables.shifted(s), faces))


def held_out_gains(tables: Tables, splits: int = 5):
  """([gain of the size chosen on one half on the other], [the shift's])."""
  sizes, shifts = [], []
  unframed, unshifted = tables.sized(detect.Framing()), tables.shifted(0.0)
  for chosen_on, measured_on in evaluate.random_halves(len(tables.yaw), splits):
    size = choose_size(tables, chosen_on)
    sizes.append(tables.mean(unframed, measured_on)
                 - tables.mean(tables.sized(size), measured_on))
    shift = choose_shift(tables, chosen_on)
    shifts.append(tables.mean(unshifted, measured_on)
                  - tables.mean(tables.shifted(shift), measured_on))
  return np.array(sizes), np.array(shifts)


def measure(predictor: inference.Predictor, folder: str, max_photos=None) -> Tables:
  """The per-face tables of the run's fits of BlazeFace's crops of `folder`."""
  blazeface = detect.BlazeFace()
  framed_size = detect.FRAMING._replace(turn_shift=0.0)
  crops, squares, labels, nose, yaw = [], [], [], [], []
  pairs = mat_folders.find_pairs(folder)[:max_photos]
  for _, label, photo in evaluate.read_labelled_photos(pairs, []):
    found = blazeface.detect_faces(photo)
    index = evaluate.face_over_truth(found.boxes, label.landmarks)
    if index is None:
      continue
    box, points = found.boxes[index], found.keypoints[index]
    offset = detect.nose_offset(box, points)
    plain = detect.keypoint_square(box, points, detect.Framing())
    sized = detect.keypoint_square(box, points, framed_size)
    candidates = [plain._replace(side=plain.side * s) for s in SIZES]
    candidates += [sized._replace(centre_x=sized.centre_x + np.sign(offset) * a * sized.side)
                   for a in SHIFTS]
    squares += candidates
    crops += [cropping.crop(photo, square, predictor.size) for square in candidates]
    labels.append(label.landmarks[:, :2])
    nose.append(abs(offset))
    yaw.append(np.degrees(label.params[1]))
  if not labels:
    raise ValueError(f"BlazeFace found no labelled face in {folder}")
  points = np.concatenate([predictor(np.stack(crops[start:start + 256])).landmarks
                           for start in range(0, len(crops), 256)])
  in_photos = np.stack([cropping.to_photo(p, square, predictor.size)
                        for p, square in zip(points, squares)])
  in_photos = in_photos.reshape(len(labels), len(SIZES) + len(SHIFTS), 68, 2)
  truth = np.stack(labels)
  nme = np.stack([evaluate.landmark_nme(in_photos[:, k], truth)
                  for k in range(in_photos.shape[1])], axis=1)
  return Tables(nme[:, :len(SIZES)], nme[:, len(SIZES):], np.array(nose), np.array(yaw))


def _values(numbers) -> str:
  return "(" + ", ".join(f"{float(v):g}" for v in numbers) + ")"


def main(argv):
  del argv
  run = rundir.RunDir(_WORKDIR.value) if _WORKDIR.value else rundir.default_run()
  predictor = inference.Predictor(rundir.resolve_config(run), run.path, 32)
  tables = measure(predictor, _PHOTOS.value, _MAX_PHOTOS.value)
  print(f"{len(tables.yaw)} faces found; NME (%)"
        + "".join(f"{evaluate.bin_name(*b):>10}" for b in evaluate.YAW_BINS) + f"{'mean':>10}")
  size, shift = choose_size(tables), choose_shift(tables)
  rows = [("landmark rule alone", tables.sized(detect.Framing())),
          (f"FRAMING {_values(detect.FRAMING)}", tables.shifted(detect.FRAMING.turn_shift)),
          (f"size chosen here {_values(size[:3])}", tables.sized(size)),
          (f"FRAMING's size, shift chosen here {shift:g}", tables.shifted(shift))]
  for title, nme in rows:
    print(f"{title:<48}" + tables.row(nme))
  sizes, shifts = held_out_gains(tables)
  for name, gains in (("size", sizes), ("shift", shifts)):
    print(f"held out, {name}: chosen on one half, the other half's mean lower by "
          f"{gains.mean():.2f} on average ({np.sum(gains > 0)} of {len(gains)} halves)")


if __name__ == "__main__":
  app.run(main)
