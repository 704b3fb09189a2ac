"""Face detection for photos: MediaPipe's BlazeFace (the default), run in
JAX, or OpenCV's cascades.

`detector.detect(rgb)` returns face boxes (x, y, w, h) in the photo's
pixels, best first; `detector.crop_squares(rgb)` the boxes, the
network's crop square of each (by the detector's own rule) and their scores.

BlazeFace (`BlazeFace`): MediaPipe's full-range face detector (Apache 2.0;
the graph converted by `data_pipeline.prepare_detector` ships in
`facerecon/assets`, with MediaPipe's licence). Run at a 128x128 input
(the file's is 192x192: the graph is convolutional, and at 128 it takes half
the time), on the 400 AFLW2000-3D dev photos it finds 395 at the default
score threshold 0.3 (0.5, MediaPipe's own, finds 391; 0.15 finds 397;
at 192: 392, 374 and 396), against the frontal cascade's 241. Its crop
comes from its box and its six keypoints (`keypoint_square`, calibrated on
the dev photos' landmark boxes): the implied landmark box's centre is off
by a median 0.027 (across) and 0.019 (down) of the box width, against
0.097 and 0.041 from the box alone. Photos are searched whole and, where a
face of `min_face` pixels would be too small for the graph's input,
in tiles (see `BlazeFace`).

The cascades (`FaceDetector`): the frontal cascade runs on a copy of the
photo shrunk so its longer side is `detect_side` pixels (faces smaller than
`min_face` of that side are not looked for); with `profiles`, OpenCV's
profile cascade runs on the copy and on its mirror image too (it finds
left-facing profiles only), and boxes that overlap a frontal one are merged
away. Speed and recall on 2 cores (the 512x512 astronaut photo; 64 synthetic
faces of the quick start's prior at 200 px), median ms per photo in a
process that has imported JAX: side 256 and scale step 1.15: 38 ms, 17/64
found; 256 and 1.2: 27 ms, 11/64; 192 and 1.15: 19 ms, 17/64.
"""

import dataclasses
import os
import threading
from typing import NamedTuple

import cv2
import jax
import numpy as np

from facerecon.data import cropping
from facerecon.models import graph

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

FRONTAL = "haarcascade_frontalface_default.xml"
PROFILE = "haarcascade_profileface.xml"


def _cascade(name: str):
  path = os.path.join(cv2.data.haarcascades, name)
  try:
    cascade = cv2.CascadeClassifier(path)
  except (cv2.error, SystemError):  # a file that is not XML at all
    cascade = None
  if cascade is None or cascade.empty():
    raise FileNotFoundError(f"OpenCV's face detector model {path} is missing or corrupt: "
                            "install opencv-python-headless<5 (OpenCV 5 no longer ships it)")
  return cascade


@dataclasses.dataclass
class FaceDetector:
  """OpenCV's cascades (see the module's docstring)."""
  detect_side: int = 192     # the longer side the photo is shrunk to
  min_face: float = 0.08     # smallest face, as a fraction of that side
  scale_step: float = 1.15   # the cascade's scale factor between pyramid levels
  min_neighbors: int = 5     # overlapping hits needed (higher: fewer false faces)
  profiles: bool = False     # also run the profile cascade (both directions; 3x slower)
  equalize: bool = False     # equalise the histogram first

  def __post_init__(self):
    if self.detect_side < 32:
      raise ValueError(f"detect_side must be at least 32, got {self.detect_side}")
    # Loaded here so a missing or corrupt model file fails now, not in a
    # worker; the first thread that detects takes it over.
    self._unclaimed = [_cascade(FRONTAL)]
    # One set of cascades per thread: a CascadeClassifier shared by threads
    # crashes in detectMultiScale.
    self._local = threading.local()

  def _cascades(self):
    if not hasattr(self._local, "frontal"):
      try:
        self._local.frontal = self._unclaimed.pop()  # atomic: one thread gets it
      except IndexError:
        self._local.frontal = _cascade(FRONTAL)
      self._local.profile = _cascade(PROFILE) if self.profiles else None
    return self._local.frontal, self._local.profile

  def crop_squares(self, image: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
    """(boxes [F, 4], the network's crop square of each, scores [F]: NaN,
    the cascade has none), best first."""
    boxes = self.detect(image)
    return (boxes, [cropping.square_from_detection(box) for box in boxes],
            np.full(len(boxes), np.nan))

  def detect(self, image: np.ndarray) -> np.ndarray:
    """Face boxes [F, 4] (x, y, w, h; float, photo pixels) in an RGB or grey
    uint8 image, largest first; [0, 4] when there is none."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey, shrink = cropping.shrink_to_side(grey, self.detect_side)
    grey = cv2.equalizeHist(grey) if self.equalize else grey
    smallest = max(12, int(self.min_face * max(grey.shape)))
    if min(grey.shape) < smallest:
      return np.zeros((0, 4))

    def run(cascade, picture):
      found = cascade.detectMultiScale(picture, self.scale_step, self.min_neighbors,
                                       minSize=(smallest, smallest))
      return [tuple(float(v) for v in box) for box in found]

    frontal, profile = self._cascades()
    boxes = run(frontal, grey)
    if profile is not None:
      mirrored = [(grey.shape[1] - x - w, y, w, h) for x, y, w, h in
                  run(profile, np.ascontiguousarray(grey[:, ::-1]))]
      for box in run(profile, grey) + mirrored:
        corners = lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])
        if all(_inside_fraction(corners(box), corners(kept)) < 0.5 for kept in boxes):
          boxes.append(box)
    boxes.sort(key=lambda b: -b[2] * b[3])
    return np.array(boxes, np.float64).reshape(-1, 4) / shrink





# ---------------------------------------------------------------------------
# BlazeFace (MediaPipe's face detector, Apache 2.0), run in JAX.

BLAZEFACE_FILE = os.path.join(ASSETS, "blazeface_full_range.npz")
# The converted graph's outputs and its anchors: one per cell of a grid of
# stride 4 over its input, 48x48 at 192 (MediaPipe's full-range anchor options: one
# layer, stride 4, aspect ratio 1, fixed anchor size).
_REGRESSORS = "reshaped_regressor_face_4"
_CLASSIFIERS = "reshaped_classifier_face_4"
_ANCHOR_STRIDE = 4
_COARSEST_STRIDE = 32  # the graph's smallest feature map (6x6 of 192), upsampled back
# The box -> landmark box rule (`keypoint_square`): least squares from the
# detections (input side 128) of the 395 AFLW2000-3D dev photos BlazeFace
# finds to their ground-truth landmark boxes: calibration on the dev set
# (docs/reconstruction.md: a 2-fold split of it gives the same NME).
BLAZEFACE_LANDMARK_SCALE = 0.906
INNER_OFFSET = (-0.001, 0.127)
EAR_PULL = (0.615, 0.419)


class Framing(NamedTuple):
  """How a BlazeFace crop is resized and moved from the landmark rule's
  square, by `nose`: how far the nose keypoint sits from the eyes' midpoint
  across, in box widths (about 0.06 frontal, 0.23 in profile on the dev
  photos; its sign says which way the face turns). The side is divided by
  tighten - turn_growth * max(|nose| - turn_start, 0) and the centre moved
  nose * turn_shift of the new side across."""
  tighten: float = 1.0
  turn_start: float = 0.0
  turn_growth: float = 0.0
  turn_shift: float = 0.0


# The framing the shipped networks read best (lowest mean NME over the dev
# photos' yaw bins; `python benchmarks/detector_framing.py`, docs/
# reconstruction.md; calibration on the dev set too): the least-squares
# landmark box makes frontal crops a little loose and turned faces' too
# tight and off to the side they turn from.
FRAMING = Framing(tighten=1.04, turn_start=0.2, turn_growth=1.7, turn_shift=0.12)

# Tiles are searched when the whole photo's pass would miss faces of this
# many times `min_face`. The graph finds faces from about 16 input pixels
# (of 100 dev faces: 84 at 16, 81 at 14, 32 at 10; alike at inputs 128 and
# 192): photos up to 640 pixels are searched whole, for faces down to 1/8
# of their side, without the tiles' cost.
TILE_GAP = 2.0
# BlazeFace's 6 keypoints, in its order (the subject's right and left).
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")


class Detections(NamedTuple):
  """Faces found in one photo, best first: boxes [F, 4] (x, y, w, h), scores
  [F], keypoints [F, 6, 2] (column, row; KEYPOINTS), all in photo pixels."""
  boxes: np.ndarray
  scores: np.ndarray
  keypoints: np.ndarray


def _normalise(pixels) -> np.ndarray:
  """uint8-range RGB -> BlazeFace's input range [-1, 1], float32."""
  return np.asarray(pixels, np.float32) / 127.5 - 1.0


def _anchors(side: int) -> np.ndarray:
  """Anchor centres [N, 2] (x, y) in [0, 1] of the input, in the graph's order."""
  cells = side // _ANCHOR_STRIDE
  y, x = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
  return (np.stack([x, y], -1).reshape(-1, 2) + 0.5) / cells


def _decode(regressors, logits, anchors, side: int):
  """(boxes [N, 4] as x0, y0, x1, y1; keypoints [N, 6, 2]; scores [N]) in
  the input's [0, 1] coordinates, for one input's raw outputs."""
  centre = regressors[:, :2] / side + anchors
  size = regressors[:, 2:4] / side
  boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
  keypoints = regressors[:, 4:16].reshape(-1, 6, 2) / side + anchors[:, None]
  scores = 1.0 / (1.0 + np.exp(-np.clip(logits[:, 0], -100.0, 100.0)))
  return boxes, keypoints, scores


def box_iou(box, boxes):
  """Intersection over union of a box and boxes [K, 4], corners (x0, y0, x1, y1) -> [K]."""
  x0 = np.maximum(box[0], boxes[:, 0])
  y0 = np.maximum(box[1], boxes[:, 1])
  x1 = np.minimum(box[2], boxes[:, 2])
  y1 = np.minimum(box[3], boxes[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def _inside_fraction(a, b) -> float:
  """Intersection of boxes a and b (x0, y0, x1, y1) over the smaller one's area."""
  inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
           * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
  smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
  return inter / max(smaller, 1e-12)


def weighted_suppression(boxes, keypoints, scores, iou: float):
  """MediaPipe's weighted non-maximum suppression: each kept face is the
  score-weighted mean of the candidates that overlap the best remaining one
  by more than `iou`. Returns (boxes, keypoints, scores), best first."""
  order = np.argsort(-scores)
  boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
  kept_boxes, kept_points, kept_scores = [], [], []
  remaining = np.arange(len(scores))
  while remaining.size:
    overlap = box_iou(boxes[remaining[0]], boxes[remaining])
    group = remaining[overlap > iou]
    group = group if group.size else remaining[:1]
    weights = scores[group] / scores[group].sum()
    kept_boxes.append(weights @ boxes[group])
    kept_points.append(np.tensordot(weights, keypoints[group], axes=1))
    kept_scores.append(scores[remaining[0]])
    remaining = remaining[overlap <= iou]
  return (np.array(kept_boxes).reshape(-1, 4), np.array(kept_points).reshape(-1, 6, 2),
          np.array(kept_scores))


def _tiles(height: int, width: int, tile: int, stride: int):
  """Top-left corners of `tile`-sided squares covering the photo, `stride` apart."""
  def starts(extent):
    if extent <= tile:
      return [0]
    count = -(-(extent - tile) // stride) + 1
    return np.linspace(0, extent - tile, count).round().astype(int).tolist()
  return [(x, y) for y in starts(height) for x in starts(width)]


@dataclasses.dataclass
class BlazeFace:
  """MediaPipe's full-range BlazeFace, converted (data_pipeline.prepare_detector)
  and run in JAX.

  The whole photo is letterboxed into the graph's input. When a face
  of `TILE_GAP` * `min_face` photo pixels would be smaller than
  `min_input_face` input pixels there (photos over 640 pixels at the
  defaults; smaller ones are searched whole, for faces down to 1/8 of their
  longer side), square tiles of the photo are searched too, at every scale
  from the one where `min_face` pixels reach `min_input_face` up to the
  whole photo (each tile side `tile_growth` times the last; tiles overlap
  by a quarter of their side, so a face is whole in some tile of the scale
  that suits it); the tiles run as batches. A face that only tiles found
  must score `verify_score` in a second look, a crop three face widths
  wide (busy or blurry tiles of large photos give false faces). Faces
  under `min_face` / 2 pixels are dropped."""
  min_score: float = 0.3
  verify_score: float = 0.6  # a face only tiles found, at its second look
  iou: float = 0.3
  min_face: float = 40.0        # smallest face side looked for, in photo pixels
  min_input_face: float = 16.0  # smallest face side the graph finds, in its pixels
  tile_growth: float = 3.0
  batch: int = 16
  # The graph's input side (a multiple of 32; None: the file's, 192): at 128
  # it finds as many dev faces in half the time (docs/reconstruction.md).
  input_side: int | None = 128
  path: str = BLAZEFACE_FILE

  def __post_init__(self):
    if not 0 < self.min_score < 1:
      raise ValueError(f"min_score must be in (0, 1), got {self.min_score}")
    if self.min_face <= 0 or self.tile_growth <= 1:
      raise ValueError("min_face must be positive and tile_growth above 1")
    self._graph = graph.load(self.path)
    self._side = self.input_side or self._graph.input_shape[1]
    if self._side % _COARSEST_STRIDE:
      raise ValueError(f"input_side must be a multiple of {_COARSEST_STRIDE}, got "
                       f"{self._side}")
    self._outputs = (self._graph.output_index(_REGRESSORS),
                     self._graph.output_index(_CLASSIFIERS))
    self._anchors = _anchors(self._side)
    self._run = jax.jit(self._graph)

  def _squares(self, height: int, width: int):
    """(x, y, side) of the photo squares to search: the whole photo, then tiles."""
    whole = max(height, width)
    squares = [(0, 0, whole)]
    tile = self.min_face * self._side / self.min_input_face
    if tile >= whole / TILE_GAP:
      return squares
    while tile < whole / 1.5:
      side = int(round(tile))
      squares += [(x, y, side) for x, y in _tiles(height, width, side, side - side // 4)]
      tile *= self.tile_growth
    return squares

  def _inputs(self, image, squares):
    inputs = np.zeros((len(squares), self._side, self._side, 3), np.float32)
    for k, (x, y, side) in enumerate(squares):
      part = image[y:y + side, x:x + side]
      scale = self._side / side
      h, w = (max(1, min(self._side, int(round(n * scale)))) for n in part.shape[:2])
      resized = cv2.resize(part, (w, h), interpolation=cv2.INTER_AREA if scale < 1
                           else cv2.INTER_LINEAR)
      inputs[k, :h, :w] = resized
    return _normalise(inputs)  # the letterbox stays black (-1)

  def _raw(self, inputs: np.ndarray):
    """The graph on inputs [n, S, S, 3] in [-1, 1]: (regressors, logits) as
    numpy, run at batches of powers of two up to `batch` (one compilation each)."""
    outputs = []
    for start in range(0, len(inputs), self.batch):
      chunk = inputs[start:start + self.batch]
      size = min(self.batch, 1 << (len(chunk) - 1).bit_length())  # 1, 2, 4, ...: few shapes
      padded = np.zeros((size, *inputs.shape[1:]), np.float32)
      padded[:len(chunk)] = chunk
      result = self._run(padded)
      outputs.append([np.asarray(result[i])[:len(chunk)] for i in self._outputs])
    return [np.concatenate(parts) for parts in zip(*outputs)]

  def detect_faces(self, image: np.ndarray) -> Detections:
    """Every face in an RGB (or grey) uint8 photo, best first."""
    if image.ndim == 2:
      image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    height, width = image.shape[:2]
    squares = self._squares(height, width)
    regressors, logits = self._raw(self._inputs(image, squares))
    found_boxes, found_points, found_scores, whole_boxes = [], [], [], None
    for k, (x, y, side) in enumerate(squares):
      boxes, points, scores = _decode(regressors[k], logits[k], self._anchors, self._side)
      keep = scores >= self.min_score
      if k > 0:  # a tile: a face its edge cuts is another tile's
        margin = 0.02
        keep &= ((boxes[:, 0] > margin) | (x == 0)) & ((boxes[:, 1] > margin) | (y == 0))
        keep &= (((boxes[:, 2] < 1 - margin) | (x + side >= width))
                 & ((boxes[:, 3] < 1 - margin) | (y + side >= height)))
      offset = np.array([x, y], np.float64)
      found_boxes.append(boxes[keep] * side + np.tile(offset, 2))
      found_points.append(points[keep] * side + offset)
      found_scores.append(scores[keep])
      if k == 0:
        whole_boxes = found_boxes[0]
    boxes, points, scores = weighted_suppression(
        np.concatenate(found_boxes), np.concatenate(found_points),
        np.concatenate(found_scores), self.iou)
    # Faces do not nest: a box mostly inside a better one's, or round it, is
    # the same face seen at another scale (tiles of faces too small or cut).
    keep = []
    for k in range(len(boxes)):
      if (boxes[k, 2] - boxes[k, 0] >= self.min_face / 2
          and all(_inside_fraction(boxes[k], boxes[j]) < 0.5 for j in keep)):
        keep.append(k)
    boxes, points, scores = boxes[keep], points[keep], scores[keep]
    # Faces only tiles found are looked at again, framed three face widths
    # wide: blurry or busy tiles of large photos give false faces that a
    # second look at the face's own scale rejects.
    unconfirmed = [k for k in range(len(boxes))
                   if not len(whole_boxes) or box_iou(boxes[k], whole_boxes).max() <= self.iou]
    if unconfirmed:
      checked = self._second_look(image, boxes[unconfirmed])
      for k, found in zip(unconfirmed, checked):
        if found is not None:
          boxes[k], points[k], scores[k] = found
      keep = [k for k in range(len(boxes))
              if k not in unconfirmed or checked[unconfirmed.index(k)] is not None]
      order = sorted(keep, key=lambda k: -scores[k])
      boxes, points, scores = boxes[order], points[order], scores[order]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return Detections(xywh, scores, points)

  def _second_look(self, image, boxes) -> list:
    """For each box (x0, y0, x1, y1): the face found at the centre of a crop
    three box widths wide, as (box, keypoints, score) in photo pixels, or
    None when none scores `verify_score`."""
    squares = [cropping.Square(0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3]), 3.0 * (b[2] - b[0]))
               for b in boxes]
    crops = np.stack([cropping.crop(image, square, self._side) for square in squares])
    regressors, logits = self._raw(_normalise(crops))
    out = []
    for k, square in enumerate(squares):
      found, points, scores = _decode(regressors[k], logits[k], self._anchors, self._side)
      centres = 0.5 * (found[:, :2] + found[:, 2:])
      near = np.linalg.norm(centres - 0.5, axis=1) < 0.1  # 0.3 face widths
      candidates = np.flatnonzero(near & (scores >= self.verify_score))
      if not candidates.size:
        out.append(None)
        continue
      best = candidates[np.argmax(scores[candidates])]
      corners = cropping.to_photo(found[best].reshape(2, 2) * self._side, square, self._side)
      out.append((corners.reshape(4), cropping.to_photo(points[best] * self._side, square,
                                                        self._side), scores[best]))
    return out

  def detect(self, image: np.ndarray) -> np.ndarray:
    """Face boxes [F, 4] (x, y, w, h), best first."""
    return self.detect_faces(image).boxes

  def crop_squares(self, image: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
    """(boxes [F, 4], the network's crop square of each, scores [F]), best first."""
    found = self.detect_faces(image)
    return found.boxes, [keypoint_square(box, points) for box, points in
                         zip(found.boxes, found.keypoints)], found.scores


def keypoint_square(box, keypoints, framing: Framing = FRAMING) -> cropping.Square:
  """The crop square of a BlazeFace face: the landmark box it implies, then
  the landmark rule (`cropping`), then `framing`. The landmark box's side is
  BLAZEFACE_LANDMARK_SCALE of the box width; its centre is the mean of the
  four inner keypoints (eyes, nose, mouth), moved by INNER_OFFSET box widths
  and by EAR_PULL of the way towards the ears' mean (a turned face's
  landmarks reach round to the far jaw, whose side the ears show)."""
  w = float(box[2])
  if not (np.isfinite(box).all() and w > 0 and box[3] > 0):
    raise ValueError(f"bad detection box {tuple(box)}")
  points = np.asarray(keypoints, np.float64)
  inner, ears = points[:4].mean(axis=0), points[4:].mean(axis=0)
  centre = inner + np.array(INNER_OFFSET) * w + np.array(EAR_PULL) * (ears - inner)
  square = cropping.square_from_landmark_box(centre[0], centre[1], BLAZEFACE_LANDMARK_SCALE * w)
  nose = nose_offset(box, points)
  side = square.side * float(framing_side_factor(framing, nose))
  return cropping.Square(square.centre_x + framing.turn_shift * nose * side, square.centre_y,
                         side)


def framing_side_factor(framing: Framing, nose):
  """What `framing` multiplies the landmark rule's side by for faces whose
  `nose_offset` is `nose` (a number or an array)."""
  divisor = framing.tighten - framing.turn_growth * np.maximum(
      np.abs(nose) - framing.turn_start, 0.0)
  # At most twice the rule's side however far the keypoints turn (|nose|
  # stays under 0.4 on the dev photos).
  return 1.0 / np.maximum(divisor, 0.5)


def nose_offset(box, keypoints) -> float:
  """How far the nose keypoint sits from the eyes' midpoint across, in box
  widths (`Framing`)."""
  points = np.asarray(keypoints, np.float64)
  return float((points[2, 0] - points[:2, 0].mean()) / float(box[2]))


DETECTORS = ("blazeface", "haar", "haar_profile", "none")


def from_name(name: str) -> "BlazeFace | FaceDetector | None":
  """The detector `--detector` names: 'blazeface', 'haar', 'haar_profile'
  (frontal and profile cascades), or 'none' (None: every photo is a face
  crop already)."""
  if name not in DETECTORS:
    raise ValueError(f"--detector: unknown detector '{name}' (use {', '.join(DETECTORS)})")
  if name == "none":
    return None
  if name == "blazeface":
    return BlazeFace()
  return FaceDetector(profiles=name == "haar_profile")
