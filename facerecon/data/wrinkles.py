"""Wrinkles of the synthetic faces: a displacement of the face surface
where real faces fold, driven by age and by the expression.

Seven families, each placed by the model's 68 landmarks in its PNCC
coordinates (u across the face, from the subject's right to left, v up;
every model has them, so the BFM and the built-in face get wrinkles too)
and sized by the eye-corner distance there: forehead lines (raised brows),
glabella lines (lowered brows), crow's feet at each eye's outer corner
(smiles, squints), nasolabial folds from each nose wing past the mouth
corner (smiles), and lip lines above the upper lip (pursed lips). A
family's depth is `age` plus its expression's activation (ARKit blendshape
weights of ICT-FaceKit, names in `DRIVERS`; a model without named
blendshapes draws the activations), times the prior's depth, a fraction of
the face's width, as the fine detail's plane waves are. Grooves go into the
face (negative height: away from the camera).

`wrinkle_height(wrinkle_params, pncc, mask, geometry)` evaluates the
displacement per pixel from the face's rendered PNCC code, so it moves with
the face and is part of the detailed depth label.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import morphable

FAMILIES = ("forehead", "glabella", "crows_feet_right", "crows_feet_left",
            "nasolabial_right", "nasolabial_left", "lip_lines")
# ARKit blendshapes whose weights deepen each family (the strongest counts).
# _R / _L are the subject's right and left, as ICT-FaceKit names them.
DRIVERS = {
    "forehead": ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R"),
    "glabella": ("browDown_L", "browDown_R", "noseSneer_L", "noseSneer_R"),
    "crows_feet_right": ("eyeSquint_R", "cheekSquint_R", "mouthSmile_R"),
    "crows_feet_left": ("eyeSquint_L", "cheekSquint_L", "mouthSmile_L"),
    "nasolabial_right": ("mouthSmile_R", "cheekSquint_R", "mouthUpperUp_R"),
    "nasolabial_left": ("mouthSmile_L", "cheekSquint_L", "mouthUpperUp_L"),
    "lip_lines": ("mouthPucker", "mouthFunnel"),
}
# Each family's depth relative to the others (nasolabial folds are the
# deepest, lip lines the finest).
DEPTH = np.array([1.0, 0.8, 0.7, 0.7, 2.0, 2.0, 0.5], np.float32)
MAX_LINES = 6  # forehead, lip and crow's feet lines per family, at most
NUM_PARAMS = len(FAMILIES) + 2 + MAX_LINES  # `sample_wrinkles`'s parameters per face


class WrinkleGeometry(NamedTuple):
  """Where a model's wrinkles go, in its PNCC (u, v), from its landmarks."""
  landmarks: jax.Array   # [68, 2] the landmarks' PNCC (u, v)
  unit: jax.Array        # [] the outer eye corners' distance in PNCC units
  drivers: jax.Array     # [F, Ke] 0/1: which expressions drive each family
  named: bool            # the model names its blendshapes


def geometry(model: morphable.MorphableModel) -> WrinkleGeometry:
  """The wrinkle placement of `model` (traceable: the model may be a jit
  argument; its expression names are static)."""
  pncc = model.pncc[model.landmark_indices][:, :2]
  names = tuple(model.expression_names)
  drivers = np.zeros((len(FAMILIES), max(1, len(names))), np.float32)
  for f, family in enumerate(FAMILIES):
    for name in DRIVERS[family]:
      if name in names:
        drivers[f, names.index(name)] = 1.0
  named = bool(names) and model.expression_kind == morphable.BLENDSHAPE
  return WrinkleGeometry(pncc, jnp.linalg.norm(pncc[45] - pncc[36]), jnp.asarray(drivers),
                         named)


def sample_wrinkles(key, expression, expression_std, wrinkle_geometry: WrinkleGeometry,
                    depth_range: tuple[float, float]):
  """One face's wrinkle parameters [NUM_PARAMS]: each family's depth
  (fraction of the face's width), then the forehead lines' count and
  curvature, then line offsets in [0, 1) shared by the families."""
  keys = jax.random.split(key, 6)
  age = jax.random.uniform(keys[0]) ** 2  # most faces are young
  if wrinkle_geometry.named:
    weights = expression / jnp.maximum(expression_std, 1e-12)  # back to [0, 1]
    activation = jnp.max(wrinkle_geometry.drivers * weights[None, :], axis=1)
  else:
    activation = jax.random.uniform(keys[1], (len(FAMILIES),)) * (
        jax.random.uniform(keys[2], (len(FAMILIES),)) < 0.3)
  scale = jax.random.uniform(keys[3], minval=depth_range[0], maxval=depth_range[1])
  depth = scale * DEPTH * jnp.clip(0.6 * age + activation, 0.0, 1.0)
  lines = jax.random.uniform(keys[4], (2,), minval=jnp.array([3.0, -0.6]),
                             maxval=jnp.array([6.0, 0.6]))
  offsets = jax.random.uniform(keys[5], (MAX_LINES,))
  return jnp.concatenate([depth, lines, offsets]).astype(jnp.float32)


def smooth_window(x, low, high, soft):
  """1 inside [low, high], falling to 0 over `soft` outside, smoothly."""
  rise = jnp.clip((x - low + soft) / soft, 0.0, 1.0)
  fall = jnp.clip((high + soft - x) / soft, 0.0, 1.0)
  return (rise * rise * (3 - 2 * rise)) * (fall * fall * (3 - 2 * fall))


def _groove(distance, width):
  return jnp.exp(-(distance / width) ** 2)


def segment_distance(p, a, b):
  """Distance of points p [..., 2] to the segment a-b, and the position
  along it in [0, 1]."""
  ab = b - a
  t = jnp.clip(jnp.sum((p - a) * ab, axis=-1) / jnp.maximum(jnp.sum(ab * ab), 1e-12), 0.0, 1.0)
  return jnp.linalg.norm(p - (a + t[..., None] * ab), axis=-1), t


def wrinkle_height(params, pncc, mask, wrinkle_geometry: WrinkleGeometry):
  """The wrinkles' height [H, W] of one face, as a fraction of its width
  (negative: into the face; 0 off the mask), at each pixel's PNCC code
  [H, W, 3]. `params`: `sample_wrinkles`'s [NUM_PARAMS]."""
  depth = params[:len(FAMILIES)]
  count, bend = params[len(FAMILIES)], params[len(FAMILIES) + 1]
  offsets = params[len(FAMILIES) + 2:]
  lm, d = wrinkle_geometry.landmarks, wrinkle_geometry.unit
  p = pncc[..., :2]
  u, v = p[..., 0], p[..., 1]
  height = jnp.zeros(u.shape, jnp.float32)

  # Forehead: horizontal lines, bowed, from above the brows up the forehead.
  brow_top = jnp.max(lm[17:27, 1])
  centre_u = 0.5 * (lm[17, 0] + lm[26, 0])
  bowed = v - bend * 0.3 * ((u - centre_u) / d) ** 2 * d
  phase = count * (bowed - brow_top - 0.12 * d) / (0.7 * d)
  window = (smooth_window(bowed, brow_top + 0.12 * d, brow_top + 0.82 * d, 0.1 * d)
            * smooth_window(u, lm[19, 0], lm[24, 0], 0.25 * d))
  height -= depth[0] * window * _groove(phase - jnp.round(phase), 0.18)

  # Glabella: one or two vertical lines between the inner brows.
  mid = 0.5 * (lm[21, 0] + lm[22, 0])
  span = smooth_window(v, lm[27, 1], brow_top + 0.25 * d, 0.08 * d)
  for k, side in enumerate((-1.0, 1.0)):
    line = mid + side * (0.04 + 0.08 * offsets[k]) * d
    height -= depth[1] * span * _groove(u - line, 0.025 * d) * (0.5 + 0.5 * (k == 0))

  # Crow's feet: lines fanning out from each eye's outer corner.
  for family, corner, outward in ((2, lm[36], -1.0), (3, lm[45], 1.0)):
    rel = p - corner
    r = jnp.linalg.norm(rel, axis=-1)
    angle = jnp.arctan2(rel[..., 1], outward * rel[..., 0])  # 0: straight out
    fan = jnp.zeros_like(r)
    for k in range(4):
      ray = (offsets[k] - 0.5) * 0.4 + (k - 1.5) * 0.35  # radians, spread +-0.7
      fan = fan + _groove((angle - ray) * r, 0.02 * d)
    ring = smooth_window(r, 0.12 * d, 0.45 * d, 0.08 * d) * (outward * rel[..., 0] > 0)
    height -= depth[family] * ring * jnp.minimum(fan, 1.0)

  # Nasolabial folds: from beside each nose wing to past the mouth corner.
  for family, wing, corner, outward in ((4, lm[31], lm[48], -1.0), (5, lm[35], lm[54], 1.0)):
    start = wing + jnp.array([outward * 0.12 * d, 0.05 * d])
    end = corner + jnp.array([outward * 0.12 * d, -0.2 * d])
    distance, t = segment_distance(p, start, end)
    along = smooth_window(t, 0.05, 0.9, 0.1)
    height -= depth[family] * along * _groove(distance, 0.05 * d)

  # Lip lines: short vertical lines above the upper lip.
  above = smooth_window(v, lm[51, 1] + 0.02 * d, lm[33, 1] - 0.05 * d, 0.03 * d)
  across = smooth_window(u, lm[48, 0] + 0.05 * d, lm[54, 0] - 0.05 * d, 0.05 * d)
  lines = jnp.zeros_like(u)
  for k in range(MAX_LINES):
    at = lm[48, 0] + (0.1 + 0.8 * offsets[k]) * (lm[54, 0] - lm[48, 0])
    lines = lines + _groove(u - at, 0.012 * d)
  height -= depth[6] * above * across * jnp.minimum(lines, 1.0)
  return jnp.where(mask, height, 0.0)
