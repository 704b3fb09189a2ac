"""A procedural morphable face model: the embedded default, built from code alone.

The BFM cannot be redistributed, so the project ships this stand-in with the
same structure (see `facerecon.morphable`). The face is a patch of a
cylinder-like head surface, parametrised by (u, v) in [-1, 1]^2 (u around the
head, v up), trimmed by a superellipse to a face outline. Anatomy (nose, brow
ridge, eye sockets with eyeballs and lids, cheekbones, lips, chin, jaw) is
added as smooth displacements towards the viewer. Everything is written in
millimetres and scaled by `UNITS_PER_MM` to the BFM's units.

- Identity modes: derivatives of the surface with respect to named anatomy
  controls (face width, nose length, ...), then smooth global fields; all
  orthonormalised (like the BFM's PCA basis) with decreasing std.
- Expression modes: localised displacement fields (jaw open, smile, pucker,
  brow raise, eye close, ...), then seeded random local bumps. Coefficient 2
  is the full named expression; std falls from 1.5 to 0.5 (3DDFA-like).
- Texture: a skin-tone mean with lips, brows, eyes and nostrils painted on,
  and orthonormalised colour modes with decreasing std.
- 68 landmarks at their anatomical places, iBUG order; the PNCC code is the
  mean shape normalised to [0, 1] per axis.
"""

import dataclasses
import functools

import numpy as np

from facerecon import morphable

UNITS_PER_MM = 1000.0
DEFAULT_GRID = 65        # about 3,400 vertices, 6,600 triangles
BFM_SCALE_GRID = 253    # about 53,600 vertices, 106,400 triangles (BFM: 53,215 / 105,840)
THETA_MAX = np.deg2rad(96.0)  # how far round the head the mask reaches
OUTLINE_EXPONENT = 2.5        # superellipse |u|^p + |v|^p <= 1 of the face mask
SEED = 20170721               # fixes the random parts (extra modes), so builds are identical

# Anatomical landmarks, frontal (X, Y) in mm: X towards the subject's left
# (the viewer's right), Y up. The surface features below are placed at the
# same positions, so landmarks and geometry agree.
EYE_X, EYE_Y = 32.0, 25.0
MOUTH_Y = -38.0
CHIN_Y = -84.0


def _ibug_landmarks_2d() -> np.ndarray:
  """68 frontal (X, Y) positions in iBUG order (0-16 jaw from the subject's right)."""
  t = np.linspace(0.0, np.pi, 17)
  jaw = np.stack([-70.0 * np.cos(t) * (1.0 - 0.2 * np.sin(t)),
                  14.0 - (14.0 - CHIN_Y) * np.sin(t) ** 1.2], axis=1)
  brow_x = np.array([52.0, 43.0, 33.0, 23.0, 14.0])
  brow_y = np.array([37.0, 41.0, 42.5, 42.0, 40.0])
  right_brow = np.stack([-brow_x, brow_y], axis=1)
  left_brow = np.stack([brow_x[::-1], brow_y[::-1]], axis=1)
  nose_bridge = np.array([[0.0, 30.0], [0.0, 18.0], [0.0, 6.0], [0.0, -4.0]])
  nose_base = np.array([[-13.0, -13.0], [-7.0, -15.0], [0.0, -16.0],
                        [7.0, -15.0], [13.0, -13.0]])
  # Eye contour: outer corner, two upper, inner corner, two lower.
  eye = np.array([[13.0, 0.0], [5.0, 4.0], [-5.0, 4.0], [-13.0, 0.0],
                  [-5.0, -3.5], [5.0, -3.5]])
  right_eye = np.stack([-EYE_X - eye[:, 0], EYE_Y + eye[:, 1]], axis=1)
  left_eye = np.stack([EYE_X + eye[[3, 2, 1, 0, 5, 4], 0],
                       EYE_Y + eye[[3, 2, 1, 0, 5, 4], 1]], axis=1)
  outer_lip = np.array([
      [-24, -38], [-15, -33], [-6, -31], [0, -32], [6, -31], [15, -33],
      [24, -38], [15, -44], [6, -47], [0, -48], [-6, -47], [-15, -44]],
      dtype=np.float64)
  inner_lip = np.array([
      [-21, -38], [-8, -36.5], [0, -36.5], [8, -36.5], [21, -38],
      [8, -39.5], [0, -39.5], [-8, -39.5]], dtype=np.float64)
  points = np.concatenate([jaw, right_brow, left_brow, nose_bridge, nose_base,
                           right_eye, left_eye, outer_lip, inner_lip])
  assert points.shape == (68, 2)
  return points


@dataclasses.dataclass(frozen=True)
class Anatomy:
  """Identity controls of the surface; 1.0 (0.0 for offsets) is the mean face."""
  face_width: float = 1.0
  face_height: float = 1.0
  head_depth: float = 1.0
  jaw_width: float = 1.0
  nose_height: float = 1.0     # protrusion
  nose_width: float = 1.0
  nose_length: float = 1.0
  eye_depth: float = 1.0
  brow_ridge: float = 1.0
  cheekbones: float = 1.0
  lip_fullness: float = 1.0
  mouth_width: float = 1.0
  chin: float = 1.0
  forehead_slope: float = 1.0

  def replace(self, **changes) -> "Anatomy":
    return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------
# Surface.


def _sig(t):
  """A smooth step from 0 to 1 (C-infinity, unlike smoothstep)."""
  return 0.5 * (1.0 + np.tanh(t))


def _gauss(x, y, cx, cy, sx, sy):
  return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _bilateral(x, y, cx, cy, sx, sy):
  """A Gaussian mirrored to both sides of the face."""
  return _gauss(np.abs(x), y, cx, cy, sx, sy)


def _relief(x, y, a: Anatomy):
  """Displacement towards the viewer (mm) of the facial features at (X, Y)."""
  nx = x / a.nose_width
  # Nose: a ridge rising from the nasion (Y = 30) to the tip, a tip bulb and
  # the alae; the lower window edge makes the step under the nose.
  tip_y = 30.0 - 35.0 * a.nose_length
  t = np.clip((30.0 - y) / (30.0 - tip_y), 0.0, 1.5)
  ridge_height = a.nose_height * (5.0 + 16.0 * np.minimum(t, 1.0) ** 1.3)
  ridge_width = 6.0 + 5.0 * np.minimum(t, 1.0)
  window = _sig((y - tip_y + 5.0) / 2.2) * _sig((34.0 - y) / 4.0)
  nose = ridge_height * np.exp(-0.5 * (nx / ridge_width) ** 2) * window
  nose += 4.0 * a.nose_height * _gauss(nx, y, 0.0, tip_y + 1.0, 7.5, 5.5)
  nose += 6.0 * _bilateral(nx, y, 12.5, tip_y - 4.0, 5.0, 4.5)
  nose -= 2.0 * _bilateral(nx, y, 7.0, tip_y - 9.0, 2.8, 1.6)  # nostrils

  eyes = (-13.0 * a.eye_depth * _bilateral(x, y, EYE_X, EYE_Y - 1.0, 17.0, 11.0)
          + 8.5 * _bilateral(x, y, EYE_X, EYE_Y, 11.5, 5.0)       # eyeball
          + 1.8 * _bilateral(x, y, EYE_X, EYE_Y + 5.5, 12.0, 1.6)  # upper lid
          + 1.0 * _bilateral(x, y, EYE_X, EYE_Y - 4.5, 10.0, 1.2))  # lower lid
  brows = a.brow_ridge * (7.0 * _bilateral(x, y, 30.0, 39.0, 20.0, 6.0)
                          + 5.0 * _gauss(x, y, 0.0, 35.0, 11.0, 7.0))
  cheeks = (7.0 * a.cheekbones * _bilateral(x, y, 48.0, 5.0, 15.0, 13.0)
            - 3.0 * _bilateral(x, y, 46.0, -28.0, 12.0, 14.0))
  mx = x / a.mouth_width
  mouth = (9.0 * _gauss(mx, y, 0.0, MOUTH_Y, 28.0, 20.0)  # muzzle
           + 4.0 * a.lip_fullness * _gauss(mx, y, 0.0, MOUTH_Y + 5.0, 19.0, 3.2)
           + 5.0 * a.lip_fullness * _gauss(mx, y, 0.0, MOUTH_Y - 5.5, 17.0, 4.2)
           - 3.0 * _gauss(mx, y, 0.0, MOUTH_Y, 23.0, 1.1)   # lip line
           - 2.0 * _bilateral(mx, y, 24.0, MOUTH_Y, 3.0, 3.0)  # corners
           - 1.2 * _gauss(x, y, 0.0, MOUTH_Y + 13.0, 3.0, 5.0))  # philtrum
  chin = (9.0 * a.chin * _gauss(x, y, 0.0, CHIN_Y + 12.0, 17.0, 10.0)
          - 4.0 * _gauss(x, y, 0.0, MOUTH_Y - 16.0, 16.0, 4.0))  # labiomental fold
  temples = -5.0 * _bilateral(x, y, 62.0, 45.0, 12.0, 22.0)
  return nose + eyes + brows + cheeks + mouth + chin + temples


def _surface(u, v, a: Anatomy) -> np.ndarray:
  """Neutral face vertices (mm) at parameters (u, v): [N] x 2 -> [N, 3]."""
  theta = u * THETA_MAX
  y = a.face_height * (5.0 + 95.0 * v)
  half_width = a.face_width * (
      70.0 + 5.0 * np.exp(-((y - 5.0) / 35.0) ** 2)
      - 30.0 * a.jaw_width * _sig((-45.0 - y) / 18.0)
      - 6.0 * _sig((y - 60.0) / 15.0))
  half_depth = a.head_depth * (
      88.0 - 10.0 * a.forehead_slope * _sig((y - 55.0) / 20.0)
      - 4.0 * _sig((-62.0 - y) / 8.0))
  x = half_width * np.sin(theta)
  z = half_depth * np.cos(theta)
  # Features are painted on the front only, fading out towards the ears.
  front = np.clip(np.cos(theta), 0.0, None) ** 1.5
  z = z + front * _relief(x, y, a)
  return np.stack([x, y, z], axis=-1)


# ---------------------------------------------------------------------------
# Expressions: displacement fields (mm) of the neutral face, each a function
# of frontal (X, Y). Coefficient 2 gives the full expression.


def _expression_fields(x, y, count: int) -> list[np.ndarray]:
  sx = np.sign(x)
  ones = np.ones_like(x)
  jaw = _sig((MOUTH_Y - y) / 1.5) * np.exp(
      -0.5 * (np.maximum(np.abs(x) - 20.0, 0.0) / 30.0) ** 2)
  corners = _bilateral(x, y, 24.0, MOUTH_Y, 9.0, 7.0)
  right = _sig(-x / 3.0)  # the subject's right half (X < 0)
  left = 1.0 - right
  mouth = _gauss(x, y, 0.0, MOUTH_Y, 16.0, 9.0)
  brows = _bilateral(x, y, 28.0, 40.0, 26.0, 9.0)

  def field(dx, dy, dz, weight):
    return np.stack([dx * weight, dy * weight, dz * weight], axis=-1)

  smile_cheeks = field(0.0, 2.0, 3.0, _bilateral(x, y, 38.0, -12.0, 14.0, 12.0))
  smile = field(5.0 * sx, 5.0, -2.0, corners) + smile_cheeks
  named = [
      field(0.0, -14.0, -5.0, jaw),                                  # jaw open
      smile,                                                         # smile
      field(-0.35 * x, 0.0, 7.0, mouth),                            # pucker
      field(0.0, 6.0, 0.0, brows),                                   # brow raise
      field(-3.0 * sx, -4.0, 1.0, brows),                           # brow lower
      field(0.0, -3.0, -2.5, _gauss(x, y, -EYE_X, EYE_Y + 2.0, 12.0, 4.5)),  # close right eye
      field(0.0, -3.0, -2.5, _gauss(x, y, EYE_X, EYE_Y + 2.0, 12.0, 4.5)),   # close left eye
      field(6.0 * sx, -1.0, -1.0, _bilateral(x, y, 24.0, MOUTH_Y, 10.0, 8.0)),  # stretch
      field(0.0, 3.0, 1.0, _gauss(x, y, 0.0, MOUTH_Y + 6.0, 14.0, 4.0)),  # upper lip up
      field(0.0, -4.0, -1.0, _gauss(x, y, 0.0, MOUTH_Y - 7.0, 14.0, 5.0)),  # lower lip down
      field(3.0 * sx, 0.0, 7.0, _bilateral(x, y, 38.0, -30.0, 16.0, 16.0)),  # cheek puff
      field(0.0, 2.0, 1.5, _bilateral(x, y, 12.0, 5.0, 8.0, 8.0)),   # nose wrinkle
      field(8.0 * ones, 0.0, 0.0, jaw),                              # jaw sideways
      smile * right[:, None],                                        # right smile
      smile * left[:, None],                                         # left smile
      field(6.0 * ones, 0.0, 0.0, _gauss(x, y, 0.0, MOUTH_Y, 24.0, 8.0)),  # mouth sideways
      field(0.0, 0.0, -2.0, _gauss(x, y, 0.0, MOUTH_Y, 20.0, 6.0)),  # lip press
      field(0.0, -5.0, 0.0, corners),                                # frown
      field(0.0, 5.0, 0.0, _bilateral(x, y, 14.0, 38.0, 10.0, 8.0)),  # inner brow raise
      field(0.0, 2.0, 1.0, _bilateral(x, y, EYE_X, EYE_Y - 3.0, 14.0, 5.0)),  # squint
  ]
  fields = named[:count]
  rng = np.random.default_rng(SEED)
  while len(fields) < count:  # Seeded local bumps around the mobile regions.
    cx, cy = rng.uniform([-45.0, -60.0], [45.0, 45.0])
    sigma = rng.uniform(6.0, 14.0)
    direction = rng.normal(size=3)
    direction *= 4.0 / np.linalg.norm(direction)
    fields.append(field(*direction, _gauss(x, y, cx, cy, sigma, sigma)))
  return fields


# ---------------------------------------------------------------------------
# Texture (RGB 0..255).


def _soft_ellipse(x, y, cx, cy, rx, ry, softness=0.15):
  r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
  return _sig((1.0 - r) / softness)


def _texture_mean(x, y) -> np.ndarray:
  skin = np.array([214.0, 164.0, 138.0])
  colour = np.broadcast_to(skin, x.shape + (3,)).copy()

  def paint(mask, rgb):
    nonlocal colour
    colour = colour * (1.0 - mask[:, None]) + mask[:, None] * np.asarray(rgb)

  paint(0.25 * _bilateral(x, y, 45.0, -5.0, 15.0, 14.0), [225.0, 135.0, 120.0])
  lips = np.maximum(_soft_ellipse(x, y, 0.0, MOUTH_Y + 3.0, 22.5, 4.8),
                    _soft_ellipse(x, y, 0.0, MOUTH_Y - 4.5, 20.0, 6.5))
  paint(lips, [180.0, 92.0, 92.0])
  brow_arc = 41.0 - 0.004 * (np.abs(x) - 33.0) ** 2
  brows = (_sig((np.abs(x) - 13.0) / 1.5) * _sig((54.0 - np.abs(x)) / 2.0)
           * np.exp(-0.5 * ((y - brow_arc) / 2.6) ** 4))
  paint(brows, [88.0, 64.0, 50.0])
  ex = np.abs(x) - EYE_X
  sclera = _soft_ellipse(ex, y, 0.0, EYE_Y, 12.0, 3.8, 0.1)
  paint(sclera, [236.0, 230.0, 224.0])
  paint(sclera * _soft_ellipse(ex, y, 0.0, EYE_Y, 4.8, 4.8, 0.1), [78.0, 56.0, 42.0])
  paint(sclera * _soft_ellipse(ex, y, 0.0, EYE_Y, 1.9, 1.9, 0.1), [14.0, 10.0, 10.0])
  paint(0.8 * _bilateral(x, y, 7.0, -12.5, 3.0, 1.8), [110.0, 70.0, 62.0])
  return colour


# ---------------------------------------------------------------------------
# Assembly.


def _grid(grid_size: int):
  """Parameter-space vertices inside the face outline, and triangles."""
  if grid_size < 8:
    raise ValueError(f"grid_size must be at least 8, got {grid_size}")
  axis = np.linspace(-1.0, 1.0, grid_size)
  v, u = np.meshgrid(axis, axis, indexing="ij")  # rows go up in v
  inside = np.abs(u) ** OUTLINE_EXPONENT + np.abs(v) ** OUTLINE_EXPONENT <= 1.0
  index = np.full(inside.shape, -1, np.int64)
  index[inside] = np.arange(inside.sum())
  # Each grid cell: corners a=(i,j), b=(i,j+1) (+u, towards +x), c=(i+1,j+1),
  # d=(i+1,j) (+v, up). (a, b, c) and (a, c, d) are counter-clockwise seen
  # from +z, so normals point out of the face. Cells with three corners
  # inside keep the one triangle that fits, for a smooth outline.
  a, b = index[:-1, :-1], index[:-1, 1:]
  c, d = index[1:, 1:], index[1:, :-1]
  candidates = [(a, b, c), (a, c, d), (a, b, d), (b, c, d)]
  full = (a >= 0) & (b >= 0) & (c >= 0) & (d >= 0)
  triangles = []
  for k, (p, q, r) in enumerate(candidates):
    keep = (p >= 0) & (q >= 0) & (r >= 0)
    keep &= full if k < 2 else ~full
    triangles.append(np.stack([p[keep], q[keep], r[keep]], axis=1))
  triangles = np.concatenate(triangles)
  return u[inside], v[inside], triangles.astype(np.int32)


def _orthonormal_rows(fields: list[np.ndarray], name: str) -> np.ndarray:
  """Gram-Schmidt (QR) of flattened fields, in order, with a fixed sign."""
  matrix = np.stack([f.reshape(-1) for f in fields], axis=1)
  if matrix.shape[0] < matrix.shape[1]:
    raise ValueError(f"{name}: {matrix.shape[1]} modes need at least as many "
                     f"coordinates, the mesh has {matrix.shape[0]}; use a "
                     f"larger grid_size or fewer modes")
  q, r = np.linalg.qr(matrix)
  q *= np.where(np.diag(r) < 0, -1.0, 1.0)
  if np.min(np.abs(np.diag(r))) < 1e-9 * np.max(np.abs(np.diag(r))):
    raise ValueError(f"{name}: modes are linearly dependent on this mesh")
  return q.T.reshape(len(fields), -1, 3)


def _smooth_fields(u, v, count: int, per_axis_weights) -> list[np.ndarray]:
  """Low-frequency cosine fields over the (u, v) patch, lowest first.

  The constant field is left out: as a shape mode it would be a translation
  (the pose's job), as a texture mode it would repeat the named global ones.
  """
  fields = []
  total = 1
  while len(fields) < count:
    for p in range(total + 1):
      q = total - p
      base = np.cos(np.pi * p * (u + 1.0) / 2.0) * np.cos(np.pi * q * (v + 1.0) / 2.0)
      for axis_weight in per_axis_weights:
        fields.append(base[:, None] * np.asarray(axis_weight))
        if len(fields) == count:
          return fields
    total += 1
  return fields


def _identity_fields(u, v, count: int) -> list[np.ndarray]:
  base = Anatomy()
  neutral = _surface(u, v, base)
  fields = []
  for f in dataclasses.fields(Anatomy):
    step = 0.05
    moved = _surface(u, v, base.replace(**{f.name: getattr(base, f.name) + step}))
    fields.append((moved - neutral) / step)
    if len(fields) == count:
      return fields
  axes = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
  return fields + _smooth_fields(u, v, count - len(fields), axes)


def _texture_fields(x, y, u, v, count: int) -> list[np.ndarray]:
  ones = np.ones_like(x)
  lips = np.maximum(_soft_ellipse(x, y, 0.0, MOUTH_Y + 3.0, 22.5, 4.8),
                    _soft_ellipse(x, y, 0.0, MOUTH_Y - 4.5, 20.0, 6.5))
  named = [
      ones[:, None] * [1.0, 1.0, 1.0],                                    # brightness
      ones[:, None] * [1.0, -0.4, -0.4],                                  # redness
      ones[:, None] * [0.5, 0.5, -1.0],                                   # yellowness
      lips[:, None] * [1.0, 0.3, 0.3],                                    # lip colour
      _bilateral(x, y, 33.0, 41.0, 20.0, 3.0)[:, None] * [1.0, 1.0, 1.0],  # brows
      _bilateral(x, y, 45.0, -5.0, 15.0, 14.0)[:, None] * [1.0, -0.3, -0.3],  # blush
  ]
  fields = named[:count]
  colours = [[1.0, 1.0, 1.0], [1.0, -0.5, -0.5], [0.0, 1.0, -1.0]]
  return fields + _smooth_fields(u, v, count - len(fields), colours)


def _decreasing_std(count: int, first_rms: float, decay: float, dims: int) -> np.ndarray:
  """Per-mode std for unit-norm modes whose RMS per coordinate falls as k^-decay."""
  rms = first_rms * (1.0 + np.arange(count)) ** -decay
  return (rms * np.sqrt(dims)).astype(np.float32)


def _nearest_front_vertices(vertices_mm: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """For each frontal (X, Y), the front-facing vertex nearest to it in X, Y."""
  front = np.nonzero(vertices_mm[:, 2] > 0.1 * vertices_mm[:, 2].max())[0]
  d = np.sum((vertices_mm[front, None, :2] - targets[None]) ** 2, axis=-1)
  return front[np.argmin(d, axis=0)].astype(np.int32)


@functools.lru_cache(maxsize=4)
def build(grid_size: int = DEFAULT_GRID, num_shape: int = 199,
          num_expression: int = 29, num_texture: int = 199
          ) -> morphable.MorphableModel:
  """Builds the procedural model (cached: the same arguments give the same object)."""
  u, v, triangles = _grid(grid_size)
  neutral = _surface(u, v, Anatomy())
  x, y = neutral[:, 0], neutral[:, 1]
  dims = neutral.size

  shape_basis = _orthonormal_rows(_identity_fields(u, v, num_shape), "shape basis")
  expression_basis = np.stack(_expression_fields(x, y, num_expression)) / 2.0
  texture_basis = _orthonormal_rows(_texture_fields(x, y, u, v, num_texture),
                                    "texture basis")
  nose_tip_index = 30
  targets = _ibug_landmarks_2d()
  landmark_indices = _nearest_front_vertices(neutral, targets)
  # The nose tip is the most prominent point, wherever it fell in X, Y.
  near_tip = np.nonzero(np.sum((neutral[:, :2] - targets[nose_tip_index]) ** 2,
                               axis=-1) < 8.0 ** 2)[0]
  landmark_indices[nose_tip_index] = near_tip[np.argmax(neutral[near_tip, 2])]

  span = neutral.max(axis=0) - neutral.min(axis=0)
  pncc = (neutral - neutral.min(axis=0)) / span

  def frozen(array, dtype=np.float32):
    array = np.ascontiguousarray(array, dtype=dtype)
    array.flags.writeable = False  # Cached and shared: never modified in place.
    return array

  model = morphable.MorphableModel(
      mean_shape=frozen(neutral * UNITS_PER_MM),
      shape_basis=frozen(shape_basis),
      shape_std=frozen(_decreasing_std(num_shape, 2.5 * UNITS_PER_MM, 0.9, dims)),
      expression_basis=frozen(expression_basis * UNITS_PER_MM),
      expression_std=frozen(np.linspace(1.5, 0.5, num_expression)),
      texture_mean=frozen(_texture_mean(x, y)),
      texture_basis=frozen(texture_basis),
      texture_std=frozen(_decreasing_std(num_texture, 12.0, 1.2, dims)),
      triangles=frozen(triangles, np.int32),
      landmark_indices=frozen(landmark_indices, np.int32),
      pncc=frozen(pncc),
  )
  return morphable.validate(model, f"embedded model (grid {grid_size})")
