"""Around and over the synthetic faces: backgrounds, clutter, occluders and
camera degradations, drawn on the host with OpenCV (in XLA, each pixel
recomputed every shape under the blur's fusion: 5 times slower).

Backgrounds are crops of real non-face photos that installed packages ship
(scikit-image's data images; scikit-learn's sample images when it is
installed), flipped and colour-shifted, or procedural (a gradient with
waves), with random shapes as clutter. Occluders are random shapes drawn
over the face (skin-coloured like hands, dark like hair, or any colour like
objects). Degradations: blur, grey images, noise (the caller's), colour
casts and low light (`synthetic.colour_transform`).

Photos of faces (scikit-image's astronaut and camera man, its LFW subset)
are never used. Each photo's draws come from its own numpy Generator,
so a face is the same whatever the batch.
"""

import functools
import os

import cv2
import numpy as np

# scikit-image's bundled colour or grey photos without faces.
_SKIMAGE_PHOTOS = ("brick.png", "chelsea.png", "coffee.png", "grass.png", "gravel.png",
                   "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
                   "motorcycle_right.png", "retina.jpg", "rocket.jpg", "coins.png", "moon.png",
                   "page.png", "text.png", "clock_motion.png", "color.png", "cell.png",
                   "microaneurysms.png", "chessboard_RGB.png")
CROPS_PER_PHOTO = 5  # the middle and four corners, each 60% of the short side


def _photo_paths() -> list[str]:
  paths = []
  try:
    import skimage.data  # a dependency; imported here, it costs a second
    folder = os.path.dirname(skimage.data.__file__)
    paths += [os.path.join(folder, name) for name in _SKIMAGE_PHOTOS
              if os.path.exists(os.path.join(folder, name))]
  except ImportError:
    pass
  try:
    import sklearn.datasets  # optional
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    paths += [os.path.join(folder, name) for name in ("china.jpg", "flower.jpg")
              if os.path.exists(os.path.join(folder, name))]
  except ImportError:
    pass
  return paths


@functools.lru_cache(maxsize=4)
def background_photos(size: int) -> np.ndarray:
  """[M, size, size, 3] uint8: square crops of the packaged photos (empty
  [0, size, size, 3] when none is installed)."""
  tiles = []
  for path in _photo_paths():
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
      continue
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    side = int(0.6 * min(h, w))
    for y, x in ((h - side) // 2, (w - side) // 2), (0, 0), (0, w - side), (h - side, 0), \
        (h - side, w - side):
      crop = image[y:y + side, x:x + side]
      tiles.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
  if not tiles:
    return np.zeros((0, size, size, 3), np.uint8)
  return np.stack(tiles)


def _random_colour(rng):
  return rng.uniform(0, 255, 3)


def _draw_shape(rng, image, centre, radius, colour):
  """A filled ellipse, rectangle or polygon (anti-aliased) about `centre`."""
  kind = rng.integers(3)
  cx, cy = centre + rng.uniform(-1, 1, 2) * radius
  colour = tuple(float(c) for c in colour)
  shift = 4  # sub-pixel coordinates, 1/16 pixel
  scale = 1 << shift
  if kind == 0:
    axes = (int(rng.uniform(0.2, 1.0) * radius * scale), int(rng.uniform(0.2, 1.0) * radius * scale))
    cv2.ellipse(image, (int(cx * scale), int(cy * scale)), axes, float(rng.uniform(0, 180)), 0,
                360, colour, -1, cv2.LINE_AA, shift)
  else:
    corners = 4 if kind == 1 else int(rng.integers(3, 7))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners)) if kind == 2 else \
        rng.uniform(0, np.pi / 2) + np.arange(4) * np.pi / 2
    lengths = rng.uniform(0.3, 1.0, corners) * radius
    points = np.stack([cx + lengths * np.cos(angles), cy + lengths * np.sin(angles)], -1)
    cv2.fillPoly(image, [np.round(points * scale).astype(np.int32)], colour, cv2.LINE_AA, shift)


def photo_background(rng, photos: np.ndarray, height: int, width: int) -> np.ndarray:
  """A random crop of one of `photos` [M, S, S, 3] at a random scale,
  resized to [H, W, 3] uint8, flipped half the time, colour-shifted."""
  photo = photos[rng.integers(len(photos))]
  size = photo.shape[0]
  side = int(rng.uniform(0.3, 1.0) * size)
  y, x = rng.integers(0, size - side + 1, 2)
  crop = cv2.resize(photo[y:y + side, x:x + side], (width, height),
                    interpolation=cv2.INTER_AREA if side > height else cv2.INTER_LINEAR)
  if rng.uniform() < 0.5:
    crop = crop[:, ::-1]
  gain = rng.uniform(0.6, 1.2, 3)
  return np.clip(crop * gain, 0, 255).astype(np.uint8)


def finish_photo(rng, image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, prior,
                 photos: np.ndarray | None) -> np.ndarray:
  """One synthetic photo's scene, on the host: image [H, W, 3] uint8 (the
  face over its procedural background), mask [H, W] bool (the face),
  landmarks [68, 2]; `prior` a `synthetic.FacePrior` (its scene fields);
  `rng` a numpy Generator of this face alone. Returns the new image."""
  height, width = image.shape[:2]
  background = image.copy()
  if photos is not None and len(photos) and rng.uniform() < prior.photo_backgrounds:
    background = photo_background(rng, photos, height, width)
  for _ in range(3):
    if rng.uniform() < prior.clutter:
      _draw_shape(rng, background, np.array([width, height]) * rng.uniform(0, 1, 2),
                  0.4 * width, _random_colour(rng))
  out = np.where(mask[..., None], image, background)
  low, high = landmarks.min(axis=0), landmarks.max(axis=0)
  face_colour = np.median(image[mask], axis=0) if mask.any() else _random_colour(rng)
  for _ in range(2):
    if rng.uniform() < prior.occluders:
      kind = rng.integers(3)  # hand-like, hair-like, anything
      colour = (face_colour * rng.uniform(0.8, 1.2, 3) if kind == 0 else
                rng.uniform(0, 60, 3) if kind == 1 else _random_colour(rng))
      _draw_shape(rng, out, 0.5 * (low + high), 0.4 * float(np.max(high - low)),
                  np.clip(colour, 0, 255))
  if prior.blur > 0:
    sigma = rng.uniform(0, prior.blur)
    if sigma > 0.3:
      out = cv2.GaussianBlur(out, (0, 0), sigma)
  if rng.uniform() < prior.grey:
    out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
  if rng.uniform() < prior.jpeg:
    quality = int(rng.integers(20, 96))
    ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if ok:
      out = cv2.imdecode(data, cv2.IMREAD_UNCHANGED).reshape(out.shape)
  return out
