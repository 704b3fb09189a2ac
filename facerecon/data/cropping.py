"""Face crops: the one rule that turns a face's box into the network's input.

Every path into CoarseNet frames faces the same way: photos cropped from
ground-truth landmarks (training on 300W-LP-style folders, evaluation on
AFLW2000-3D), from a face detector's box (`--mode=reconstruct`, detector
evaluation), and the synthetic training faces, which the rule was measured
on:

- From 68 landmarks: the square whose side the landmarks' box's larger side
  fills `CROP_FILL` of, centred on the box centre moved up by `CROP_SHIFT`
  of that side (the forehead lies above the landmarks). On 256 synthetic
  faces of the built-in model from the default prior, at 200 px, the
  landmark box's larger side is 0.520 of the image side on average (median
  0.518), and its centre lies 0.145 of that side below the image centre;
  the real-photo config draws it from 0.45 to 0.6.
- The evaluation's crops from ground-truth landmarks are tighter,
  `GROUND_TRUTH_FILL`: from exact landmarks the shipped network reads the
  AFLW2000-3D dev photos best at 0.56 (docs/reconstruction.md: a
  calibration on the dev set). Boxes that are estimates (a detector's, the
  landmarks fitted in a video's frame before) keep `CROP_FILL`: off by some
  percent, they are worse tighter (BlazeFace's crops: 10.32 at 0.52, 10.70
  at 0.56).
- From a detector box (x, y, w, h): the landmark box it implies, of side
  `DETECTOR_LANDMARK_SCALE` * w, centred `DETECTOR_LANDMARK_SHIFT` * w below
  the detector box centre; then the landmark rule. OpenCV's frontal cascade
  gave 0.83 and 0.18 (medians over 117 detected synthetic faces) and 0.95
  and 0.19 on a real photo (the astronaut in scikit-image's data, landmark
  box read by hand); the constants sit between. Each detector has its own
  pair (`facerecon.detect`).

A crop is a similarity p' = scale * p + offset from photo pixels to crop
pixels (pixel centres at integer coordinates), so poses and landmarks map
back exactly (`facerecon.camera.pose_after_image_similarity`).

Photos that are face crops already (no detector, no landmarks) are framed
by their centred square (`centred_square`).
"""

from typing import NamedTuple

import cv2
import numpy as np

from facerecon import camera

CROP_FILL = 0.52
GROUND_TRUTH_FILL = 0.56
CROP_SHIFT = 0.145
DETECTOR_LANDMARK_SCALE = 0.9
DETECTOR_LANDMARK_SHIFT = 0.18


class Square(NamedTuple):
  """A square region of a photo: centre (x = column, y = row) and side, in pixels."""
  centre_x: float
  centre_y: float
  side: float


def square_from_landmarks(landmarks, fill: float = CROP_FILL) -> Square:
  """The crop square for 2-D landmarks [L, 2] (column, row) of one face,
  their box filling `fill` of its side."""
  points = np.asarray(landmarks, np.float64)
  if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
    raise ValueError(f"landmarks must be [L, 2] with L >= 2, got shape {points.shape}")
  if not np.all(np.isfinite(points)):
    raise ValueError("landmarks contain NaN or inf")
  low, high = points.min(axis=0), points.max(axis=0)
  size = float(max(high - low))
  if size <= 0:
    raise ValueError("landmarks are all at one point")
  centre = 0.5 * (low + high)
  return square_from_landmark_box(centre[0], centre[1], size, fill)


def square_from_landmark_box(centre_x: float, centre_y: float, size: float,
                             fill: float = CROP_FILL) -> Square:
  """The crop square of a landmark box (its centre and larger side), found
  or implied by a detector: the landmark rule."""
  return Square(float(centre_x), float(centre_y) - CROP_SHIFT * size, size / fill)


def square_from_detection(box, landmark_scale: float = DETECTOR_LANDMARK_SCALE,
                          landmark_shift: float = DETECTOR_LANDMARK_SHIFT) -> Square:
  """The crop square for a detector box (x, y, w, h) in pixels, by a
  detector's rule (default: the cascade's and VGG Face's boxes')."""
  x, y, w, h = (float(v) for v in box)
  if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
    raise ValueError(f"bad detection box {tuple(box)}")
  return square_from_landmark_box(x + 0.5 * w, y + 0.5 * h + landmark_shift * w,
                                  landmark_scale * w)


def centred_square(height: int, width: int) -> Square:
  """The largest square centred in a `height` x `width` photo: the crop of
  a photo that is a face crop already."""
  return Square((width - 1) / 2.0, (height - 1) / 2.0, float(min(height, width)))


def crop_transform(square: Square, size: int) -> tuple[float, np.ndarray]:
  """(scale, offset [2]) of the map p' = scale * p + offset from photo
  pixels to the pixels of a `size` x `size` crop of `square`."""
  scale = size / square.side
  offset = (size - 1) / 2.0 - scale * np.array([square.centre_x, square.centre_y])
  return scale, offset


def crop(image: np.ndarray, square: Square, size: int) -> np.ndarray:
  """The `size` x `size` crop of `square` from an image [H, W, C] (uint8):
  bilinear, area-averaged when shrinking; outside the photo the edge
  pixels repeat (no black bars, which the training faces never have)."""
  scale, offset = crop_transform(square, size)
  height, width = image.shape[:2]
  # Only the part of the photo the crop sees (plus a margin for the filter).
  margin = 2.0 / min(scale, 1.0)
  left = int(np.clip(np.floor(square.centre_x - square.side / 2 - margin), 0, width - 1))
  top = int(np.clip(np.floor(square.centre_y - square.side / 2 - margin), 0, height - 1))
  right = int(np.clip(np.ceil(square.centre_x + square.side / 2 + margin), left + 1, width))
  bottom = int(np.clip(np.ceil(square.centre_y + square.side / 2 + margin), top + 1, height))
  region = image[top:bottom, left:right]
  # Region pixel q = p - (left, top); after resizing by (sx, sy) its pixel
  # u = (q + 0.5) * s - 0.5 (OpenCV's pixel-centre convention).
  sx = sy = 1.0
  if scale < 1.0:
    new_w = max(1, int(round(region.shape[1] * scale)))
    new_h = max(1, int(round(region.shape[0] * scale)))
    sx, sy = new_w / region.shape[1], new_h / region.shape[0]
    region = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
  # p = (u + 0.5) / s - 0.5 + corner, so
  # p' = scale / s * u + scale * (0.5 / s - 0.5 + corner) + offset.
  matrix = np.array(
      [[scale / sx, 0.0, scale * (0.5 / sx - 0.5 + left) + offset[0]],
       [0.0, scale / sy, scale * (0.5 / sy - 0.5 + top) + offset[1]]])
  out = cv2.warpAffine(region, matrix, (size, size), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
  return out.reshape(size, size, *image.shape[2:])


def to_photo(points, square: Square, size: int) -> np.ndarray:
  """Crop pixel coordinates [..., 2] -> photo pixel coordinates."""
  scale, offset = crop_transform(square, size)
  return (np.asarray(points) - offset) / scale


def to_photo_matrix(square: Square, size: int) -> np.ndarray:
  """[2, 3]: the affine map (for `cv2.warpAffine`) from the pixels of a
  `size` x `size` crop of `square` to photo pixels; `to_photo` as a matrix."""
  scale, offset = crop_transform(square, size)
  return np.array([[1.0 / scale, 0.0, -offset[0] / scale],
                   [0.0, 1.0 / scale, -offset[1] / scale]])


def shrink_to_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
  """(image, factor): the image (area-averaged) shrunk by `factor` so its
  longer side is at most `max_side`; itself and 1.0 when it fits already."""
  height, width = image.shape[:2]
  factor = min(1.0, max_side / max(height, width))
  if factor == 1.0:
    return image, factor
  size = (max(1, round(width * factor)), max(1, round(height * factor)))
  return cv2.resize(image, size, interpolation=cv2.INTER_AREA), factor


def pose_to_photo(pose, square: Square, size: int, photo_height: int) -> np.ndarray:
  """A pose [7] fitted in the crop -> the same face's pose in the photo, so
  `camera.project_scaled_orthographic(v, pose, photo_height)` lands on the
  photo's pixels."""
  scale, offset = crop_transform(square, size)
  pose = np.asarray(pose, np.float64)
  photo_pose = camera.pose_after_image_similarity(pose, 1.0 / scale, -offset / scale, size,
                                                  new_height=photo_height)
  return np.asarray(photo_pose)


def pose_to_crop(photo_pose, square: Square, size: int, photo_height: int) -> np.ndarray:
  """`pose_to_photo` undone: a face's pose [7] in the photo -> its pose in
  the `size` crop of `square`."""
  scale, offset = crop_transform(square, size)
  return np.asarray(camera.pose_after_image_similarity(
      np.asarray(photo_pose, np.float64), scale, offset, photo_height, new_height=size))
