"""Face detection for photos: OpenCV's cascade detectors, shipped in its wheel.

`FaceDetector(...).detect(rgb)` returns face boxes (x, y, w, h) in the
photo's pixels, largest first. The frontal cascade runs on a copy of the
photo shrunk so its longer side is `detect_side` pixels (detection cost
grows with the pixel count; faces smaller than `min_face` of that side are
not looked for); with `profiles`, OpenCV's profile cascade runs on the copy
and on its mirror image too (it finds left-facing profiles only), and boxes
that overlap a frontal one are merged away. `facerecon.data.cropping` turns a
box into the network's crop.

Speed and recall on 2 cores (the 512x512 astronaut photo; 64 synthetic
faces of the quick start's prior at 200 px), median ms per photo in a
process that has imported JAX: side 256 and scale step 1.15: 38 ms, 17/64
found; 256 and 1.2: 27 ms, 11/64; 192 and 1.15 (the default): 19 ms,
17/64. Histogram equalisation changed little (16/64). The cascade finds
real faces far more reliably than the procedural faces; see
benchmarks/reconstruct.py.
"""

import dataclasses
import os
import threading

import cv2
import numpy as np

from facerecon.data import cropping

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


def _overlap(a, b) -> float:
  """Intersection over the smaller box's area."""
  x0, y0 = max(a[0], b[0]), max(a[1], b[1])
  x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
  inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
  return inter / min(a[2] * a[3], b[2] * b[3])


@dataclasses.dataclass
class FaceDetector:
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
        if all(_overlap(box, kept) < 0.5 for kept in boxes):
          boxes.append(box)
    boxes.sort(key=lambda b: -b[2] * b[3])
    return np.array(boxes, np.float64).reshape(-1, 4) / shrink


def from_name(name: str) -> "FaceDetector | None":
  """The detector `--detector` names: 'haar', 'haar_profile' (frontal and
  profile cascades), or 'none' (None: every photo is a face crop already)."""
  if name == "none":
    return None
  if name not in ("haar", "haar_profile"):
    raise ValueError(f"--detector: unknown detector '{name}' (use haar, haar_profile "
                     "or none)")
  return FaceDetector(profiles=name == "haar_profile")
