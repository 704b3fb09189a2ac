"""Pictures for people: shaded renders, landmark overlays, labelled grids."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import morphable
from facerecon import render

DEFAULT_LIGHT = (0.3, 0.4, 1.0)  # camera frame, y up: upper right, in front
BACKGROUND = 0.12


@functools.partial(jax.jit, static_argnames=("height", "width"))
def shade_faces(model: morphable.MorphableModel, params, texture,
                height: int, width: int, light=DEFAULT_LIGHT):
  """Lambertian renders of faces: params [B, P], texture [B, Kt] ->
  (RGB [B, H, W, 3] in [0, 1] over a grey background, landmarks [B, 68, 2])."""
  face = render.render_face(model, params, texture, height, width)
  shaded = jnp.clip(render.lambertian(face.albedo, face.normals, light), 0.0, 1.0)
  shaded = jnp.where(face.mask[..., None], shaded, BACKGROUND)
  landmarks = jnp.take(face.image_vertices, model.landmark_indices, axis=-2)[..., :2]
  return shaded, landmarks


def to_uint8(image) -> np.ndarray:
  return np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def draw_landmarks(image: np.ndarray, points, colour=(40, 230, 90)) -> np.ndarray:
  """Draws points [L, 2] (x, y pixels) on a copy of an RGB uint8 image."""
  import cv2

  out = image.copy()
  radius = max(1, round(min(image.shape[:2]) / 160))
  for x, y in np.asarray(points):
    if np.isfinite(x) and np.isfinite(y):
      cv2.circle(out, (int(round(x)), int(round(y))), radius, colour, -1,
                 lineType=cv2.LINE_AA)
  return out


def label(image: np.ndarray, text: str) -> np.ndarray:
  """Writes `text` in the top-left corner of a copy of an RGB uint8 image."""
  import cv2

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
