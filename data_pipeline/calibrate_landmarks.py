r"""Checks what a model's 68 landmark vertices mean against 3-D labels, and
moves those that sit systematically elsewhere.

    python -m data_pipeline.calibrate_landmarks --model=FILE --labels=DIR \
        [--output=FILE] [--threshold=0.25]

DIR is an AFLW2000-3D style folder (`<stem>.mat` with `pt3d_68`, the 68
points of a fitted BFM in 3-D; a profile's jaw points lie on the far side
of the jaw, not on its silhouette). For every label the model is fitted to
the 68 points (a similarity transform, identity coefficients with a
Gaussian prior, expression weights in their range, by alternating least
squares); each landmark's residual, taken back into the model's frame, is
averaged over the labels. A landmark whose mean residual is systematic
(larger than `--threshold` times its spread over the labels, and over 2% of
the face's size) is moved to the surface vertex nearest to where the labels
put it. The command prints the per-landmark table before and after, and
with `--output` writes the model with the new landmark vertices.

This is calibration on the labels given; with AFLW2000-3D's dev set it is
reported as such.
"""

import dataclasses
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from facerecon import camera
from facerecon import fileio
from facerecon import morphable
from facerecon.data import mat_folders

_MOVED_MIN = 0.02  # of the face size: smaller systematic offsets are left alone
# A landmark moves only to vertices the expressions move as they move its own
# (each expression at full weight, or one std, within this fraction of the face
# size): on a closed mouth the lips' inner edges touch, and the vertex nearest
# to where the labels put a lower lip's point may lie on the upper lip, which
# stays when the jaw opens.
_MOTION_TOLERANCE = 0.05


class Fit:
  """Fits of one model's landmarks to many sets of 3-D points (numpy)."""

  def __init__(self, model: morphable.MorphableModel, landmarks: np.ndarray,
               iterations: int = 12, prior: float = 1.0):
    self.model = model
    self.landmarks = np.asarray(landmarks)
    self.mean = np.asarray(model.mean_shape, np.float64)[self.landmarks]          # [68, 3]
    shape = np.asarray(model.shape_basis, np.float64)[:, self.landmarks]
    expression = np.asarray(model.expression_basis, np.float64)[:, self.landmarks]
    self.basis = np.concatenate([shape, expression]).reshape(
        len(shape) + len(expression), -1)                                           # [K, 204]
    self.num_shape = len(shape)
    std = np.concatenate([np.asarray(model.shape_std, np.float64),
                          np.asarray(model.expression_std, np.float64)])
    # Ridge weights: the Gaussian prior's 1/std^2 (a blendshape weight's std
    # is its range, 1).
    self.ridge = prior / np.maximum(std, 1e-12) ** 2
    self.blendshape = model.expression_kind == morphable.BLENDSHAPE
    self.iterations = iterations

  def __call__(self, points: np.ndarray):
    """points [68, 3] -> (coefficients [K], residual [68, 3] in model units,
    in the model's frame, target - fitted)."""
    coefficients = np.zeros(len(self.basis))
    for _ in range(self.iterations):
      shape = self.mean + (coefficients @ self.basis).reshape(-1, 3)
      scale, rotation, translation = similarity(shape, points)
      # The points taken into the model's frame; then the coefficients.
      local = (points - translation) @ rotation / scale
      target = (local - self.mean).reshape(-1)
      normal = self.basis @ self.basis.T + np.diag(self.ridge)
      coefficients = np.linalg.solve(normal, self.basis @ target)
      if self.blendshape:
        coefficients[self.num_shape:] = np.clip(coefficients[self.num_shape:], 0.0, 1.0)
    shape = self.mean + (coefficients @ self.basis).reshape(-1, 3)
    scale, rotation, translation = similarity(shape, points)
    local = (points - translation) @ rotation / scale
    return coefficients, local - shape


def similarity(source: np.ndarray, target: np.ndarray):
  """The scale s, rotation R and translation t minimising
  |s source R^T + t - target|^2 (Umeyama), points [N, 3]."""
  mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
  a, b = source - mu_s, target - mu_t
  u, sigma, vt = np.linalg.svd(b.T @ a)
  d = np.sign(np.linalg.det(u @ vt))
  correction = np.diag([1.0, 1.0, d])
  rotation = u @ correction @ vt
  scale = np.trace(np.diag(sigma) @ correction) / np.sum(a * a)
  return scale, rotation, mu_t - scale * mu_s @ rotation.T


def read_points(label_dir: str) -> list[np.ndarray]:
  """pt3d_68 of every .mat below `label_dir` as [68, 3] points in the
  model's y-up frame: the labels' rows run down, so y is negated (z already
  points at the camera: with it negated too, the fits are 3.5 times worse)."""
  points = []
  for _, mat_path in mat_folders.find_pairs(label_dir):
    fields = fileio.load_mat(mat_path)
    pt3d = fileio.require_field(fields, "pt3d_68", mat_path, (3, 68))
    points.append(np.stack([pt3d[0], -pt3d[1], pt3d[2]], axis=-1).astype(np.float64))
  return points


def read_angles(label_dir: str) -> np.ndarray:
  """Pose_Para's (pitch, yaw, roll) in degrees [L, 3], in `read_points`' order."""
  return np.stack([np.degrees(mat_folders.read_labels(mat_path, layout=None).params[:3])
                   for _, mat_path in mat_folders.find_pairs(label_dir)])


def frame_offset(model: morphable.MorphableModel, landmarks: np.ndarray,
                 points: list[np.ndarray], angles: np.ndarray, max_yaw: float = 30.0):
  """(median of the fitted pose's angles minus the labels' [3] (pitch, yaw,
  roll, degrees), the fitted angles [L', 3], how many labels): how the
  model's frame sits in the labels' (the BFM's for AFLW2000-3D), and the
  labels' poses in the model's frame, over labels within `max_yaw`."""
  fit = Fit(model, landmarks)
  kept = np.flatnonzero(np.abs(angles[:, 1]) <= max_yaw)
  fitted = []
  for k in kept:
    coefficients, _ = fit(points[k])
    shape = fit.mean + (coefficients @ fit.basis).reshape(-1, 3)
    _, rotation, _ = similarity(shape, points[k])
    fitted.append(np.degrees(np.asarray(camera.angles_from_rotation(rotation))))
  fitted = np.asarray(fitted).reshape(-1, 3)
  return np.median(fitted - angles[kept], axis=0), fitted, len(kept)


def landmark_table(model: morphable.MorphableModel, landmarks: np.ndarray,
                   points: list[np.ndarray]):
  """Per landmark: mean residual [68, 3] (model units, model frame), its
  spread (RMS about the mean) [68] and the mean distance [68]."""
  fit = Fit(model, landmarks)
  residuals = np.stack([fit(p)[1] for p in points])  # [L, 68, 3]
  mean = residuals.mean(axis=0)
  spread = np.sqrt(np.mean(np.sum((residuals - mean) ** 2, axis=-1), axis=0))
  distance = np.mean(np.linalg.norm(residuals, axis=-1), axis=0)
  return mean, spread, distance


def face_size(model: morphable.MorphableModel) -> float:
  """RMS distance of the surface's mean vertices from their centroid."""
  num_vertices, _ = morphable.surface_size(model)
  mean = np.asarray(model.mean_shape[:num_vertices], np.float64)
  return float(np.sqrt(np.mean(np.sum((mean - mean.mean(axis=0)) ** 2, axis=-1))))


def expression_motion(model: morphable.MorphableModel) -> np.ndarray:
  """[Ke, N, 3]: how each expression (at full weight, or one std) moves
  each surface vertex."""
  num_vertices, _ = morphable.surface_size(model)
  basis = np.asarray(model.expression_basis[:, :num_vertices], np.float64)
  return basis * np.asarray(model.expression_std, np.float64)[:, None, None]


def calibrate(model: morphable.MorphableModel, points: list[np.ndarray],
              threshold: float = 0.25, rounds: int = 3):
  """(new landmark indices [68], moved landmark numbers, table before, after).

  Each round moves the systematic landmarks together (a move changes every
  fit a little) and is kept if the mean distance over all landmarks went
  down; the rounds stop at the first that does not help."""
  landmarks = np.asarray(model.landmark_indices).copy()
  before = current = landmark_table(model, landmarks, points)
  size = face_size(model)
  num_vertices, _ = morphable.surface_size(model)
  surface = np.asarray(model.mean_shape[:num_vertices], np.float64)
  motion = expression_motion(model)
  allowed = [np.flatnonzero(np.max(np.linalg.norm(motion - motion[:, [v]], axis=-1), axis=0)
                            <= _MOTION_TOLERANCE * size) for v in landmarks]
  for _ in range(rounds):
    mean, spread, distance = current
    offset = np.linalg.norm(mean, axis=-1)
    candidates = np.flatnonzero((offset > threshold * spread) & (offset > _MOVED_MIN * size))
    proposal = landmarks.copy()
    for k in candidates:
      target = surface[landmarks[k]] + mean[k]
      proposal[k] = int(allowed[k][np.argmin(np.sum((surface[allowed[k]] - target) ** 2,
                                                    axis=-1))])
    if np.array_equal(proposal, landmarks):
      break
    trial = landmark_table(model, proposal, points)
    if trial[2].mean() >= distance.mean():
      break
    landmarks, current = proposal, trial
  moved = np.flatnonzero(landmarks != np.asarray(model.landmark_indices))
  return landmarks, moved, before, current


def print_table(size: float, before, after, old, new) -> None:
  print("landmark  vertex before->after   mean distance / face size   systematic offset")
  for k in range(len(old)):
    print(f"{k:8d}  {old[k]:6d} -> {new[k]:6d}     {before[2][k] / size:.3f} -> "
          f"{after[2][k] / size:.3f}          {np.linalg.norm(before[0][k]) / size:.3f} -> "
          f"{np.linalg.norm(after[0][k]) / size:.3f}")
  print(f"all       mean distance / face size {before[2].mean() / size:.4f} -> "
        f"{after[2].mean() / size:.4f}")


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("model", None, "The model file (.npz).")
  flags.DEFINE_string("labels", None, "A folder of AFLW2000-3D style .mat files (pt3d_68).")
  flags.DEFINE_string("output", None, "Where to write the model with the calibrated "
                      "landmarks (optional).")
  flags.DEFINE_float("threshold", 0.25, "Move a landmark whose mean offset exceeds this "
                     "fraction of its spread.")
  flags.DEFINE_bool("compact", True, "Write the output model compact (float16 bases).")
  flags.mark_flags_as_required(["model", "labels"])


def main(argv):
  del argv
  model = morphable.load_model(FLAGS.model)
  points = read_points(FLAGS.labels)
  logging.info("fitting %d label sets", len(points))
  old = np.asarray(model.landmark_indices)
  new, moved, before, after = calibrate(model, points, FLAGS.threshold)
  print_table(face_size(model), before, after, old, new)
  print(f"moved landmarks: {', '.join(map(str, moved)) or 'none'}")
  offset, fitted, count = frame_offset(model, new, points, read_angles(FLAGS.labels))
  print(f"over the {count} labels within 30 degrees of yaw: the model's frame in the "
        "labels', fitted minus labelled pitch, yaw, roll (medians) "
        + ", ".join(f"{v:+.1f}" for v in offset) + " degrees; the fitted pitch's quartiles "
        + " / ".join(f"{v:+.1f}" for v in np.percentile(fitted[:, 0], [25, 50, 75])))
  if FLAGS.output:
    calibrated = dataclasses.replace(model, landmark_indices=new.astype(np.int32))
    morphable.save_model(calibrated, FLAGS.output, compact=FLAGS.compact)
    logging.info("wrote %s", os.fspath(FLAGS.output))


if __name__ == "__main__":
  define_flags()
  app.run(main)
