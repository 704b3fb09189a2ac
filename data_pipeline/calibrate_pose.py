r"""Calibrates a trained run's pitch on labelled real photos.

    python -m data_pipeline.calibrate_pose --run=RUN --labels=DIR [--output=FILE]

DIR is an AFLW2000-3D style folder (`<stem>.jpg` beside `<stem>.mat`). The
run fits each photo in the crop the evaluation makes from its ground-truth
landmarks, as the evaluation fits them (windows, mirror image, sharpened
input) but without any calibration the run has, and the command chooses
the `inference.PoseCalibration` (a pitch added to frontal fits, tapering
to none at a |yaw|) among PITCHES x TAPERS with the lowest NME mean over
the yaw bins, each face turned about its landmarks' centroid. It prints
the NME and the head-pose error before and after, and the gain on held-out
halves (chosen on a random half of the photos, measured on the other), and
writes the choice as the run's pose_calibration.json (or --output), which
`--mode=reconstruct`, `--mode=evaluate`, the `facerecon` command and
`facerecon.Reconstructor` then apply; `data_pipeline.ship_run` ships it with the run.

Why: a network trained on synthetic faces can read real faces' pitch with a
bias the synthetic faces do not show (the shipped CoarseNet reads the
AFLW2000-3D dev photos' frontal faces about 6 degrees too far up). This is
calibration on the labels given; with AFLW2000-3D's dev set it is reported
as such (docs/reconstruction.md).
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from facerecon import evaluate
from facerecon import face_render
from facerecon import fileio
from facerecon import inference
from facerecon import rundir
from facerecon.data import cropping

PITCHES = tuple(float(p) for p in np.arange(-12.0, 12.5, 1.0))  # degrees
TAPERS = (30.0, 45.0, 60.0, 90.0)                                # degrees of |yaw|


def landmarks_in_photos(fitted: evaluate.LabelledFits, model, size: int, params) -> np.ndarray:
  """[F, 68, 2]: the landmarks of parameter vectors [F, P] (in the crops of
  `fitted`) in the photos."""
  points = np.asarray(face_render.project_landmarks(model, params, size))
  return np.stack([cropping.to_photo(p, square, size)
                   for p, square in zip(points, fitted.squares)])


def _nme_mean(landmarks, labels, yaw) -> float:
  return evaluate.yaw_table(evaluate.landmark_nme(landmarks, labels), yaw)["mean"]


def choose(landmarks: np.ndarray, labels: np.ndarray, yaw: np.ndarray) -> int:
  """The candidate (index into `landmarks` [C, F, 68, 2]) of the lowest NME mean."""
  return int(np.argmin([_nme_mean(points, labels, yaw) for points in landmarks]))


def held_out_gains(landmarks: np.ndarray, labels: np.ndarray, yaw: np.ndarray,
                   uncalibrated: int, splits: int = 10, seed: int = 0) -> np.ndarray:
  """[2 * splits] the NME mean over yaw bins (%) of one random half of the
  photos uncalibrated (candidate `uncalibrated`) minus under the
  calibration chosen on the other half, each split both ways."""
  gains = []
  for chosen_on, measured_on in evaluate.random_halves(len(labels), splits, seed):
    best = choose(landmarks[:, chosen_on], labels[chosen_on], yaw[chosen_on])
    gains.append(_nme_mean(landmarks[uncalibrated, measured_on], labels[measured_on],
                           yaw[measured_on])
                 - _nme_mean(landmarks[best, measured_on], labels[measured_on],
                             yaw[measured_on]))
  return np.asarray(gains)


def calibrate(run: rundir.RunDir, folder: str, batch_size: int = 32):
  """(the chosen PoseCalibration, a report dict) from the run's fits of the
  photos in `folder`."""
  predictor = inference.Predictor(rundir.resolve_config(run), run.path, batch_size,
                                  options=inference.FitOptions(calibrate=False))
  fitted = evaluate.fit_labelled_photos(predictor, folder)
  for entry in fitted.skipped:
    logging.warning("skipped %s: %s", entry["file"], entry["reason"])
  calibrations = [inference.PoseCalibration(pitch, taper)
                  for taper in TAPERS for pitch in PITCHES]
  uncalibrated = calibrations.index(inference.PoseCalibration(0.0, TAPERS[0]))
  params = [np.asarray(inference.calibrated_params(fitted.fits.params, predictor.model,
                                                   calibration))
            for calibration in calibrations]
  landmarks = np.stack([landmarks_in_photos(fitted, predictor.model, predictor.size, p)
                        for p in params])
  best = choose(landmarks, fitted.labels, fitted.yaw)
  gains = held_out_gains(landmarks, fitted.labels, fitted.yaw, uncalibrated)
  chosen = calibrations[best]
  pose_labels = [evaluate.pose_table(np.degrees(params[index][:, :3]), fitted.angles)
                 for index in (uncalibrated, best)]
  report = {"photos": len(fitted.labels), "skipped": len(fitted.skipped),
            # What the fits it was chosen on were (the choice depends on them).
            "fits": {"mirror": predictor.mirror is not None,
                     "window_offsets": [list(o) for o in predictor.window_offsets],
                     "sharpen": predictor.options.sharpen,
                     "upright": predictor.options.upright,
                     "focus": predictor.options.focus},
            "nme_before": evaluate.yaw_table(evaluate.landmark_nme(
                landmarks[uncalibrated], fitted.labels), fitted.yaw),
            "nme_after": evaluate.yaw_table(evaluate.landmark_nme(
                landmarks[best], fitted.labels), fitted.yaw),
            "pose_before": pose_labels[0], "pose_after": pose_labels[1],
            "held_out_gains": [float(g) for g in gains]}
  return chosen, report


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("run", None, "The trained run to calibrate.")
  flags.DEFINE_string("labels", None, "An AFLW2000-3D style folder: <stem>.jpg beside "
                      "<stem>.mat.")
  flags.DEFINE_string("output", None, "Where to write the calibration (default: the run's "
                      "pose_calibration.json).")
  flags.mark_flags_as_required(["run", "labels"])


def main(argv):
  del argv
  run = rundir.RunDir(FLAGS.run)
  if not (run.has_best() or run.fine.has_best()):
    raise app.UsageError(f"--run: no trained networks in {run.path}")
  chosen, report = calibrate(run, FLAGS.labels)
  bins = [evaluate.bin_name(low, high) for low, high in evaluate.YAW_BINS] + ["mean"]
  for name in ("before", "after"):
    table, pose = report[f"nme_{name}"], report[f"pose_{name}"]
    print(f"NME (%) {name}: " + ", ".join(f"{b} {table[b]:.2f}" for b in bins)
          + f"; pose MAE {pose['MAE']:.2f} (pitch {pose['pitch']:.2f}, signed "
          f"{pose['bias pitch']:+.2f})")
  gains = np.asarray(report["held_out_gains"])
  print(f"chosen: pitch {chosen.pitch:+.1f} degrees, tapering to none at {chosen.yaw_taper:.0f} "
        f"degrees of yaw; chosen on a random half, the other half's NME mean drops by "
        f"{gains.mean():.2f} on average (lower in {int(np.sum(gains > 0))} of {len(gains)})")
  output = FLAGS.output or run.pose_calibration
  # The folder's name, not this machine's path to it.
  record = {**chosen._asdict(), "labels": os.path.basename(os.path.normpath(FLAGS.labels)),
            **report}
  fileio.write_bytes_atomic(output, json.dumps(record, indent=2).encode())
  logging.info("wrote %s", output)


if __name__ == "__main__":
  define_flags()
  app.run(main)
