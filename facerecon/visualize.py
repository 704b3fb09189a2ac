"""Pictures for people: shaded renders, landmark overlays, labelled grids."""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from facerecon import face_render
from facerecon import morphable
from facerecon import shading

DEFAULT_LIGHT = (0.3, 0.4, 1.0)  # camera frame, y up: upper right, in front
BACKGROUND = 0.12


def _shaded(face, light=DEFAULT_LIGHT):
  """A face render (face_render.FaceRender) shaded Lambertian, over BACKGROUND."""
  shaded = jnp.clip(shading.lambertian(face.albedo, face.normals, light), 0.0, 1.0)
  return jnp.where(face.mask[..., None], shaded, BACKGROUND)


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _shade_and_depth(model: morphable.MorphableModel, params, texture, height: int,
                     width: int, light=DEFAULT_LIGHT):
  """One render: (shaded RGB, landmarks, depth, mask); see `shade_faces`."""
  face = face_render.render_face(model, params, texture, height, width)
  shaded = _shaded(face, light)
  landmarks = face_render.image_landmarks(model, face.image_vertices)
  return shaded, landmarks, face.depth, face.mask


def shade_faces(model: morphable.MorphableModel, params, texture,
                height: int, width: int, light=DEFAULT_LIGHT):
  """Lambertian renders of faces: params [B, P], texture [B, Kt] ->
  (RGB [B, H, W, 3] in [0, 1] over a grey background, landmarks [B, 68, 2])."""
  return _shade_and_depth(model, params, texture, height, width, light)[:2]


def to_uint8(image) -> np.ndarray:
  return np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def draw_landmarks(image: np.ndarray, points, colour=(40, 230, 90)) -> np.ndarray:
  """Draws points [L, 2] (x, y pixels) on a copy of an RGB uint8 image."""
  out = image.copy()
  radius = max(1, round(min(image.shape[:2]) / 160))
  for x, y in np.asarray(points):
    if np.isfinite(x) and np.isfinite(y):
      cv2.circle(out, (int(round(x)), int(round(y))), radius, colour, -1,
                 lineType=cv2.LINE_AA)
  return out


def label(image: np.ndarray, text: str) -> np.ndarray:
  """Writes `text` in the top-left corner of a copy of an RGB uint8 image."""
  out = image.copy()
  scale = image.shape[0] / 400.0
  cv2.putText(out, text, (4, int(16 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX,
              scale, (235, 235, 235), 1, cv2.LINE_AA)
  return out


def grid(images: list[np.ndarray], columns: int) -> np.ndarray:
  """Tiles equally sized RGB images row by row (blank tiles fill the last row)."""
  if not images:
    raise ValueError("grid needs at least one image")
  blank = np.zeros_like(images[0])
  rows = -(-len(images) // columns)
  padded = list(images) + [blank] * (rows * columns - len(images))
  return np.concatenate([np.concatenate(padded[r * columns:(r + 1) * columns], axis=1)
                         for r in range(rows)], axis=0)


def depth_to_grey(depth, mask, low=None, high=None) -> np.ndarray:
  """Depth maps [..., H, W] (larger nearer) -> uint8 grey, near = bright, 0
  off the mask; the range is the covered depths' unless given."""
  depth, mask = np.asarray(depth), np.asarray(mask)
  covered = depth[mask]
  if low is None or high is None:
    low, high = (covered.min(), covered.max()) if covered.size else (0.0, 1.0)
  scaled = 40 + 215 * np.clip((depth - low) / max(high - low, 1e-6), 0.0, 1.0)
  return np.where(mask, scaled, 0).astype(np.uint8)


def reconstruction_panel(model: morphable.MorphableModel, images, predicted, target,
                         tile: int = 192) -> np.ndarray:
  """One row per face: [photo | predicted mesh over it, with predicted (green)
  and true (red) landmarks | true depth | predicted depth], each tile
  `tile` pixels. images [K, S, S, 3] uint8; predicted and target raw
  parameter vectors [K, P] (target may be None: no true-depth column)."""
  images = np.asarray(images)
  count, size = images.shape[0], images.shape[1]
  both = predicted if target is None else jnp.concatenate([predicted, target])
  shaded, landmarks, depth, mask = map(np.asarray,
                                       _shade_and_depth(model, both, None, size, size))
  scale = tile / size
  up = lambda a: cv2.resize(a, (tile, tile), interpolation=cv2.INTER_NEAREST)
  rows = []
  for k in range(count):
    photo = up(images[k])
    # The mesh at 60% over the photo, so misalignments show.
    alpha = 0.6 * mask[k][..., None]
    over = (alpha * shaded[k] * 255 + (1 - alpha) * images[k]).astype(np.uint8)
    over = up(over)
    if target is not None:
      over = draw_landmarks(over, landmarks[count + k] * scale + scale / 2, (230, 60, 50))
    over = draw_landmarks(over, landmarks[k] * scale + scale / 2)
    # Both depth maps on the true face's range, so they compare.
    ref = count + k if target is not None else k
    covered = depth[ref][mask[ref]]
    low, high = (covered.min(), covered.max()) if covered.size else (0.0, 1.0)
    grey = lambda d, m: up(np.repeat(depth_to_grey(d, m, low, high)[..., None], 3, -1))
    row = [photo, over]
    if target is not None:
      row.append(grey(depth[count + k], mask[count + k]))
    row.append(grey(depth[k], mask[k]))
    rows.append(np.concatenate(row, axis=1))
  return np.concatenate(rows, axis=0)



def shade_depth(depth, mask, light=DEFAULT_LIGHT) -> np.ndarray:
  """A depth map [H, W] shown as a grey Lambertian render of its normals
  (`shading.depth_normals`): the detail that a grey depth map hides shows up.
  uint8 [H, W, 3], BACKGROUND off the mask."""
  normals, _ = shading.depth_normals(jnp.asarray(depth), jnp.asarray(mask))
  shaded = shading.lambertian(jnp.full(normals.shape[:-1] + (1,), 0.85), normals, light)
  image = np.where(np.asarray(mask)[..., None], np.asarray(shaded), BACKGROUND)
  return to_uint8(np.repeat(image, 3, axis=-1))


def fine_panel(images, coarse_depth, fine_depth, mask, true_depth=None,
               tile: int = 192) -> np.ndarray:
  """One row per face: [photo | coarse depth | fine depth | coarse shaded |
  fine shaded (| true shaded)], `tile` pixels each. images [K, S, S, 3]
  uint8; depths and mask [K, S, S]; true_depth (synthetic faces' detailed
  depth) on the same mask as given, or None."""
  up = lambda a: cv2.resize(np.asarray(a), (tile, tile), interpolation=cv2.INTER_NEAREST)
  rows = []
  for k in range(len(images)):
    covered = np.asarray(coarse_depth[k])[np.asarray(mask[k])]
    low, high = (covered.min(), covered.max()) if covered.size else (0.0, 1.0)
    grey = lambda d: np.repeat(depth_to_grey(d, mask[k], low, high)[..., None], 3, -1)
    # Shaded at full tile size, so the detail's normals are not blocky.
    shade = lambda d: shade_depth(cv2.resize(np.asarray(d, np.float32), (tile, tile)) * (
        tile / d.shape[-1]), up(np.asarray(mask[k], np.uint8)) > 0)
    row = [up(images[k]), up(grey(coarse_depth[k])), up(grey(fine_depth[k])),
           shade(coarse_depth[k]), shade(fine_depth[k])]
    if true_depth is not None:
      row.append(shade(true_depth[k]))
    rows.append(np.concatenate([label(r, t) for r, t in zip(row, _FINE_LABELS)], axis=1))
  return np.concatenate(rows, axis=0)


_FINE_LABELS = ("photo", "coarse depth", "fine depth", "coarse shaded", "fine shaded",
                "true shaded")


@functools.partial(jax.jit, static_argnames=("size",))
def fit_images(model: morphable.MorphableModel, params, size: int):
  """Renders of fits, params [B, P] posed for an image of `size`: (grey
  Lambertian shading, the PNCC code, the normals as RGB = (n + 1) / 2 in the
  camera frame (x right, y up, z towards the viewer): each [B, size, size, 3]
  in [0, 1]; mask [B, size, size])."""
  face = face_render.render_face(model, params, None, size, size)
  shaded = _shaded(face)
  normals = jnp.where(face.mask[..., None], 0.5 * (face.normals + 1.0), 0.0)
  pncc = jnp.where(face.mask[..., None], face.pncc, 0.0)
  return shaded, pncc, normals, face.mask


def overlay_on_photo(photo: np.ndarray, render_rgb, render_mask, to_photo_matrix,
                     landmarks=None, opacity: float = 0.7):
  """The photo with a face render blended in and landmarks drawn.
  `to_photo_matrix` [2, 3] maps render pixels to photo pixels; `landmarks`
  [L, 2] are photo pixels. RGB uint8."""
  height, width = photo.shape[:2]
  matrix = np.asarray(to_photo_matrix, np.float64)
  face = cv2.warpAffine(to_uint8(render_rgb), matrix, (width, height), flags=cv2.INTER_LINEAR)
  alpha = cv2.warpAffine(np.asarray(render_mask, np.float32), matrix, (width, height),
                         flags=cv2.INTER_LINEAR)[..., None] * opacity
  out = (photo * (1.0 - alpha) + face * alpha + 0.5).astype(np.uint8)
  if landmarks is not None:
    out = draw_landmarks(out, landmarks)
  return out
