"""Around and over the synthetic faces: backgrounds, clutter, occluders and
camera degradations, drawn on the host with OpenCV (in XLA, each pixel
recomputed every shape under the blur's fusion: 5 times slower).

Backgrounds are crops of real non-face photos that installed packages ship
(scikit-image's data images; scikit-learn's sample images when it is
installed), flipped and colour-shifted, or procedural (a gradient with
waves), with random shapes as clutter and sometimes another head at a
side. Long hair falls from the temples
past the jaw (behind the head, sometimes a lock over the face),
spectacles sit over the eyes, and beanies, caps and headbands on the head,
all placed by the 68 landmarks. Occluders
are random shapes drawn over the face (skin-coloured like hands, dark like
hair, or any colour like objects). Degradations: blur, grey images, noise (the caller's), colour
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


# Long-hair colours (sRGB): black, dark and mid brown, auburn, blond, grey.
_HAIR_COLOURS = ((25, 20, 18), (45, 32, 24), (85, 60, 40), (120, 60, 35), (190, 150, 95),
                 (150, 148, 145))


def _eye_line(landmarks):
  """(the eye centres [2, 2], the unit vector from the first to the second,
  their distance) of a face's 68 landmarks; the vector is 0 where the
  distance is."""
  eyes = np.stack([landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)])
  along = eyes[1] - eyes[0]
  spacing = float(np.linalg.norm(along))
  return eyes, along / max(spacing, 1e-12), spacing


def _eye_offsets(landmarks, eyes, along):
  """Each eye centre's distance from the nose bridge (landmark 27) along
  the line between the eyes, outwards: it shrinks steadily for the eye a
  turning head takes away, and goes negative once the nose hides it."""
  bridge = landmarks[27]
  return float(np.dot(bridge - eyes[0], along)), float(np.dot(eyes[1] - bridge, along))


def draw_glasses(rng, image, landmarks):
  """Spectacles over the eyes of a face's 68 landmarks (iBUG order), drawn
  into `image` [H, W, 3] uint8: a frame (ellipse) round each eye, the bridge
  and the arms, sometimes tinted lenses. An eye the head turns away (its
  offset from the nose bridge under 0.2 of the other eye's: past about 55
  degrees of yaw) gets no frame."""
  eyes, along, spacing = _eye_line(landmarks)
  if spacing < 2.0:
    return
  offsets = _eye_offsets(landmarks, eyes, along)
  visible = [o > 0.2 * max(offsets) for o in offsets]
  half_width = rng.uniform(0.36, 0.5) * spacing
  half_height = half_width * rng.uniform(0.55, 0.85)
  angle = float(np.degrees(np.arctan2(along[1], along[0])))
  thickness = max(1, int(round(spacing * rng.uniform(0.03, 0.09))))
  colour = tuple(float(c) for c in (rng.uniform(0, 60, 3) if rng.uniform() < 0.7
                                    else rng.uniform(0, 255, 3)))
  scale = 16  # cv2's shift=4 sub-pixel units

  def point(p):
    return tuple(int(round(v * scale)) for v in p)

  axes = (int(half_width * scale), int(half_height * scale))
  if rng.uniform() < 0.25:  # tinted lenses (sunglasses when the frame is dark)
    lenses = image.copy()
    for eye, shown in zip(eyes, visible):
      if shown:
        cv2.ellipse(lenses, point(eye), axes, angle, 0, 360, colour, -1, cv2.LINE_AA, 4)
    alpha = rng.uniform(0.5, 0.9)
    image[...] = (alpha * lenses + (1 - alpha) * image).astype(np.uint8)
  outward = (-along, along)  # from each eye towards its ear
  for eye, shown, out in zip(eyes, visible, outward):
    if shown:
      cv2.ellipse(image, point(eye), axes, angle, 0, 360, colour, thickness, cv2.LINE_AA, 4)
      edge = eye + out * half_width
      cv2.line(image, point(edge), point(edge + out * 0.5 * spacing), colour, thickness,
               cv2.LINE_AA, 4)
  if all(visible):
    up = np.array([along[1], -along[0]]) * 0.1 * spacing
    cv2.line(image, point(eyes[0] + along * half_width + up),
             point(eyes[1] - along * half_width + up), colour, thickness, cv2.LINE_AA, 4)


def draw_long_hair(rng, background, image, landmarks):
  """Long hair of the head in `image` (68 landmarks):
  locks falling from the temples past the jaw drawn into `background`
  (seen only outside the head), and, half the time, a lock over one side
  of the face drawn into `image`. Strands are lines of varied brightness."""
  low, high = landmarks.min(axis=0), landmarks.max(axis=0)
  face_width, face_height = float(high[0] - low[0]), float(high[1] - low[1])
  if face_width < 2.0 or face_height < 2.0:
    return
  brow = landmarks[17:27, 1].min()
  # A colour of its own: the scene does not know the scalp's (dyed or
  # mismatched hair is no rarer in photos than a bald crown with long hair).
  colour = np.asarray(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], np.float64)
  colour = colour * rng.uniform(0.8, 1.2, 3)
  length = rng.uniform(0.1, 1.2) * face_height  # below the chin
  spread = rng.uniform(0.1, 0.4) * face_width
  centre_x = 0.5 * (low[0] + high[0])
  # The volume round the head: an ellipse behind it, seen outside its outline.
  crown = (centre_x, brow - 0.3 * face_height)
  _fill_hair(rng, background, [], colour, ellipse=(
      crown, (0.5 * face_width + spread, 0.75 * face_height + 0.5 * spread)))
  locks = []
  for jaw, side in ((landmarks[0], -1.0), (landmarks[16], 1.0)):
    outer = jaw[0] + side * spread
    locks.append(np.array([
        [jaw[0] - side * 0.1 * face_width, crown[1]],
        [outer, crown[1]],
        [outer + side * rng.uniform(0.0, 0.3) * spread, high[1]],
        [outer + side * rng.uniform(0.0, 0.6) * spread, high[1] + length],
        [jaw[0] - side * 0.15 * face_width, high[1] + length],
        [jaw[0] - side * 0.1 * face_width, high[1]]]))
  _fill_hair(rng, background, locks, colour)
  if rng.uniform() < 0.5:  # one lock over the side of the face, from a parting
    jaw, sign = (landmarks[0], -1.0) if rng.integers(2) == 0 else (landmarks[16], 1.0)
    cover = rng.uniform(0.08, 0.3) * face_width
    top = brow - 0.35 * face_height
    lock = np.array([
        [jaw[0] - sign * 0.3 * cover, top],
        [jaw[0] + sign * 0.1 * face_width, top],
        [jaw[0] + sign * 0.1 * face_width, high[1] + length],
        [jaw[0] - sign * cover, high[1] + length],
        [jaw[0] - sign * cover, 0.5 * (brow + high[1])]])
    _fill_hair(rng, image, [lock], colour)


def draw_other_head(rng, background, image, mask):
  """Another person's head at a side of the photo, partly out of it, drawn
  into `background` [H, W, 3] uint8 (seen only outside the face): the
  photo's own rendered head (`image` where `mask`), mirrored, scaled by 0.7
  to 1.2, moved sideways until its inner edge lies between the middle of
  the head's half and the photo's edge, up or down by up to a fifth of the
  height, and made darker or lighter by up to a third."""
  height, width = mask.shape
  columns = np.nonzero(mask.any(axis=0))[0]
  if not len(columns):
    return
  scale = rng.uniform(0.7, 1.2)
  side = 1.0 if rng.uniform() < 0.5 else -1.0
  centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
  half = 0.5 * float(columns[-1] - columns[0] + 1)  # the head's half-width
  nearest, farthest = half * (0.5 + scale), 0.5 * width + 0.8 * scale * half
  move = np.array([side * rng.uniform(nearest, max(nearest, farthest)),
                   rng.uniform(-0.2, 0.2) * height])
  # p' = centre + move + scale * mirror(p - centre), mirror flipping x.
  matrix = np.array([[-scale, 0.0, 0.0], [0.0, scale, 0.0]])
  matrix[:, 2] = centre + move - matrix[:, :2] @ centre
  head = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR)
  cover = cv2.warpAffine(mask.astype(np.float32), matrix, (width, height),
                         flags=cv2.INTER_LINEAR)[..., None]
  shade = rng.uniform(0.67, 1.33)
  background[...] = np.clip(cover * np.clip(head * shade, 0, 255) + (1.0 - cover) * background,
                            0, 255).astype(np.uint8)


HEADWEAR_KINDS = ("beanie", "cap", "headband")


def draw_headwear(rng, image, landmarks, kind: str | None = None):
  """Headwear on the head of a face's 68 landmarks (iBUG order), drawn into
  `image` [H, W, 3] uint8 in the head's frame (up square to the eyes'
  line): a beanie (a knitted dome over the crown from a rim across the
  forehead), a cap (a dome and a brim jutting out the way the face looks)
  or a headband across the forehead; `kind` one of HEADWEAR_KINDS, or None
  for a random one. Cloth of any colour, dark ones commonest, with stripes
  of varied brightness along the head's up."""
  _, along, spacing = _eye_line(landmarks)
  if spacing < 1.0:
    return
  up = np.array([along[1], -along[0]])                   # image rows grow downwards
  brow = landmarks[17:27].mean(axis=0)
  height = float(np.dot(brow - landmarks[8], up))         # brows above the chin
  width = float(np.ptp(landmarks[:, :2] @ along))
  if height < 2.0 or width < 2.0:
    return
  kind = HEADWEAR_KINDS[rng.integers(len(HEADWEAR_KINDS))] if kind is None else kind
  if kind not in HEADWEAR_KINDS:
    raise ValueError(f"headwear kind must be one of {HEADWEAR_KINDS}, got {kind!r}")
  colour = rng.uniform(0, 80, 3) if rng.uniform() < 0.6 else _random_colour(rng)
  # Where the head's middle is across the image: the jaw's ends, not the
  # brows (which a turned head moves towards its side).
  middle = 0.5 * (landmarks[0] + landmarks[16])
  rim = (brow + up * rng.uniform(0.1, 0.4) * height
         + along * float(np.dot(middle - brow, along)) * rng.uniform(0.3, 0.7))
  angle = float(np.degrees(np.arctan2(along[1], along[0])))
  half_width = rng.uniform(0.5, 0.65) * width
  scale = 16  # cv2's shift=4 sub-pixel units

  def point(p):
    return tuple(int(round(v * scale)) for v in p)

  def fill(shape, shade=1.0):
    cv2.fillPoly(image, [np.round(shape * scale).astype(np.int32)],
                 tuple(float(c) for c in np.clip(colour * shade, 0, 255)), cv2.LINE_AA, 4)

  def band(depth):  # a strip along the rim, `depth` up the head
    return np.stack([rim + side * along * half_width + lift * up
                     for side, lift in ((-1, 0.0), (1, 0.0), (1, depth), (-1, depth))])

  if kind == "headband":
    fill(band(rng.uniform(0.08, 0.2) * height))
    return
  # The dome: the upper half of an ellipse over the rim.
  crown = rng.uniform(0.5, 0.9) * height
  arc = np.radians(np.linspace(0.0, 180.0, 33))
  dome = rim + np.cos(arc)[:, None] * along * half_width + np.sin(arc)[:, None] * up * crown
  fill(dome)
  for _ in range(int(rng.integers(4, 12))):  # stripes (knit, seams) along the up
    x = rng.uniform(-0.9, 0.9)
    top = rim + along * x * half_width + up * crown * np.sqrt(1.0 - x * x)
    shade = tuple(float(c) for c in np.clip(colour * rng.uniform(0.6, 1.4), 0, 255))
    cv2.line(image, point(rim + along * x * half_width), point(top), shade, 1, cv2.LINE_AA, 4)
  if kind == "beanie":  # the folded rim, a band of its own shade
    fill(band(rng.uniform(0.08, 0.2) * height), rng.uniform(0.7, 1.3))
    return
  # A cap's brim: a flat ellipse at the rim, pushed the way the nose points.
  facing = float(np.dot(landmarks[30] - middle, along))
  brim = rim + along * 1.5 * facing
  length = rng.uniform(0.15, 0.35) * height
  cv2.ellipse(image, point(brim), (int(half_width * 1.05 * scale), int(length * scale)), angle,
              0, 360, tuple(float(c) for c in np.clip(colour * 0.8, 0, 255)), -1, cv2.LINE_AA,
              4)


def _fill_hair(rng, image, locks, colour, ellipse=None):
  """Fills each lock (a polygon [K, 2] whose first two points are its top
  and whose last points run back up its inner side) or the `ellipse`
  ((centre), (axes)) with the hair colour, then draws strands down it."""
  scale = 16
  fill = tuple(float(c) for c in np.clip(colour, 0, 255))
  if ellipse is not None:
    centre, axes = ellipse
    cv2.ellipse(image, tuple(int(round(v * scale)) for v in centre),
                tuple(int(round(v * scale)) for v in axes), 0.0, 0, 360, fill, -1,
                cv2.LINE_AA, 4)
  for lock in locks:
    cv2.fillPoly(image, [np.round(lock * scale).astype(np.int32)], fill, cv2.LINE_AA, 4)
    bottom = lock[len(lock) // 2: len(lock) // 2 + 2]
    for _ in range(12):  # strands from the top edge to the bottom edge
      a, b = rng.uniform(0.05, 0.95, 2)
      start = lock[0] + a * (lock[1] - lock[0])
      end = bottom[0] + b * (bottom[1] - bottom[0])
      shade = tuple(float(c) for c in np.clip(colour * rng.uniform(0.6, 1.5), 0, 255))
      cv2.line(image, tuple(int(v) for v in np.round(start * scale)),
               tuple(int(v) for v in np.round(end * scale)), shade, 1, cv2.LINE_AA, 4)


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


_SATURATION_STEPS = 4
_MAX_SATURATION_SCALE = 1.5  # muted renders (grey, colour casts) are not made loud


def has_tone(prior) -> bool:
  """Whether a `synthetic.FacePrior` changes the finished photo's tone."""
  return (max(prior.luminance_std) > 0 or max(prior.luminance_mean) > 0
          or max(prior.saturation) > 0)


def mean_saturation(image: np.ndarray, region: np.ndarray | None = None) -> float:
  """The mean HSV saturation (0..255) of a uint8 RGB image [H, W, 3], over
  `region` (bool [H, W]) when it has a pixel."""
  saturation = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1]
  return float(saturation[region].mean() if region is not None and region.any()
               else saturation.mean())


def tone(image: np.ndarray, std: float, mean: float, saturation: float = 0.0,
         face: np.ndarray | None = None, background_saturation: float = 0.0) -> np.ndarray:
  """uint8 image [H, W, 3] with its luminance's standard deviation made
  `std` and its mean `mean` (0..255; either 0: as it is) by one affine map
  of the luminance, colours keeping their offsets from their pixel's grey,
  scaled alike; clipped. With `saturation` > 0 the offsets are then scaled
  so that the mean HSV saturation (0..255) of `face` (bool [H, W]; None:
  the whole image) is about `saturation`, and with `background_saturation`
  > 0 the other pixels' separately to theirs (the luminance map alone makes
  a flat render's colours as loud as its contrast grows)."""
  pixels = image.astype(np.float32)
  luminance = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)  # as the grey photos are made
  old_mean, old_std = float(luminance.mean()), float(luminance.std())
  gain = std / max(old_std, 1.0) if std > 0 else 1.0
  new_mean = mean if mean > 0 else old_mean
  out = gain * (pixels - old_mean) + new_mean
  if saturation <= 0:
    return _to_uint8(out)
  grey = (gain * (luminance - old_mean) + new_mean)[..., None]
  chroma = out - grey
  face = np.ones(luminance.shape, bool) if face is None else face
  # (pixels scaled, pixels measured, target): the face and the rest apart,
  # or every pixel by the face's measure.
  parts = ([(face, face, saturation), (~face, ~face, background_saturation)]
           if background_saturation > 0 else [(np.ones_like(face), face, saturation)])
  scales = np.ones(len(parts), np.float32)

  def scaled_image():
    scale = (np.where(face, scales[0], scales[1])[..., None] if len(parts) == 2
             else scales[0])
    return _to_uint8(grey + chroma * scale)

  for _ in range(_SATURATION_STEPS):
    # Clipping makes the saturation of dark pixels grow faster than their
    # colour offsets: a few fixed-point steps find each part's scale.
    image = scaled_image()
    for k, (_, measured, target) in enumerate(parts):
      current = mean_saturation(image, measured)
      if current >= 1.0:  # a grey region has no colour to scale
        scales[k] = min(scales[k] * target / current, _MAX_SATURATION_SCALE)
  return scaled_image()


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Float pixels rounded and clipped to uint8 (`pixels` is overwritten)."""
  return np.rint(np.clip(pixels, 0, 255, out=pixels), out=pixels).astype(np.uint8)


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
  # Drawn only when asked, so runs without other heads keep their faces.
  if prior.other_heads > 0 and rng.uniform() < prior.other_heads:
    draw_other_head(rng, background, image, mask)
  head = image.copy()
  if rng.uniform() < prior.long_hair:
    draw_long_hair(rng, background, head, landmarks)
  out = np.where(mask[..., None], head, background)
  if rng.uniform() < prior.glasses:
    draw_glasses(rng, out, landmarks)
  # Drawn only when asked, so runs without headwear keep their faces.
  if prior.headwear > 0 and rng.uniform() < prior.headwear:
    draw_headwear(rng, out, landmarks)
  low, high = landmarks.min(axis=0), landmarks.max(axis=0)
  # The face's colour (for hand-like occluders) is measured only when one is
  # drawn; a face out of the frame gets a random one, drawn here as always.
  face_colour = None if mask.any() else _random_colour(rng)
  for _ in range(2):
    if rng.uniform() < prior.occluders:
      kind = rng.integers(3)  # hand-like, hair-like, anything
      if kind == 0 and face_colour is None:
        face_colour = np.median(image[mask], axis=0)
      colour = (face_colour * rng.uniform(0.8, 1.2, 3) if kind == 0 else
                rng.uniform(0, 60, 3) if kind == 1 else _random_colour(rng))
      _draw_shape(rng, out, 0.5 * (low + high), 0.4 * float(np.max(high - low)),
                  np.clip(colour, 0, 255))
  if has_tone(prior):
    std, mean = rng.uniform(*prior.luminance_std), rng.uniform(*prior.luminance_mean)
    # Saturations are drawn only when asked, so runs without them keep their faces.
    saturation, background = (
        rng.uniform(*prior.saturation) if max(prior.saturation) > 0 else 0.0,
        rng.uniform(*prior.background_saturation)
        if max(prior.background_saturation) > 0 else 0.0)
    out = tone(out, std, mean, saturation, mask, background)
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
