"""Skin marks of the synthetic faces: pores, moles and scars.

Like the wrinkles (`facerecon.data.wrinkles`), each is placed in the face's
PNCC coordinates by the model's 68 landmarks and sized by the outer eye
corners' distance there, so it moves with the face and works with every
model:
- pores: pits of a value noise over cells of PORE_CELL eye distances
  (about 1.5 mm on an adult), on the skin between the brows and the chin;
- moles: up to MAX_MOLES round bumps, raised and darker than the skin;
- a scar (sometimes): a narrow line, sunken or raised, paler than the skin.
Moles and scars are colour and relief at once: the relief is part of the
detailed depth label, the colour only of the photo, so a network has to
tell them apart (an albedo edge is not a fold).

`sample_marks(key, depth_range)` draws one face's parameters (depths a
fraction of the face's width, from `depth_range`, as the wrinkles'),
`mark_height` evaluates the relief per pixel and `mark_albedo` the colour
factor per pixel, both from the pixels' PNCC code.
"""

import jax
import jax.numpy as jnp

from facerecon.data import appearance
from facerecon.data import wrinkles

MAX_MOLES = 3
PORE_CELL = 0.025        # the pore noise's cell, in eye-corner distances
MOLE_PROBABILITY = 0.35  # each of the MAX_MOLES
SCAR_PROBABILITY = 0.15
# Layout of `sample_marks`'s parameters.
_PORES = 0                         # pore depth, seed (2)
_MOLES = 3                         # MAX_MOLES x (u, v, radius, height)
_SCAR = _MOLES + 4 * MAX_MOLES     # start (2), end (2), width, depth (signed), present
NUM_PARAMS = _SCAR + 7

_MOLE_COLOUR = (0.42, 0.30, 0.24)  # albedo factor at a mole's centre
_SCAR_COLOUR = (1.12, 1.02, 1.0)   # and along a scar


def sample_marks(key, depth_range: tuple[float, float]):
  """One face's mark parameters [NUM_PARAMS]: positions in the unit box of
  the face (u from jaw to jaw, v from chin to brows; `mark_height` maps them
  into PNCC), sizes in eye-corner distances, depths as fractions of the
  face's width."""
  keys = jax.random.split(key, 10)
  scale = jax.random.uniform(keys[0], minval=depth_range[0], maxval=depth_range[1])
  pores = jnp.stack([0.08 * scale * jax.random.uniform(keys[1]),
                     jax.random.uniform(keys[2], maxval=1e6), jax.random.uniform(keys[3])])
  position = jax.random.uniform(keys[4], (MAX_MOLES, 2), minval=0.1, maxval=0.9)
  radius = jax.random.uniform(keys[5], (MAX_MOLES, 1), minval=0.02, maxval=0.06)
  height = (0.4 * scale * jax.random.uniform(keys[6], (MAX_MOLES, 1), minval=0.3, maxval=1.0)
            * (jax.random.uniform(keys[7], (MAX_MOLES, 1)) < MOLE_PROBABILITY))
  moles = jnp.concatenate([position, radius, height], axis=1).ravel()
  scar_keys = jax.random.split(keys[8], 5)
  start = jax.random.uniform(scar_keys[0], (2,), minval=0.15, maxval=0.85)
  angle = jax.random.uniform(scar_keys[1], maxval=2 * jnp.pi)
  length = jax.random.uniform(scar_keys[2], minval=0.1, maxval=0.3)
  end = jnp.clip(start + length * jnp.stack([jnp.cos(angle), jnp.sin(angle)]), 0.05, 0.95)
  width = jax.random.uniform(scar_keys[3], minval=0.01, maxval=0.03)
  depth = 0.5 * scale * jnp.where(jax.random.uniform(scar_keys[4]) < 0.6, -1.0, 1.0)
  present = (jax.random.uniform(keys[9]) < SCAR_PROBABILITY).astype(jnp.float32)
  scar = jnp.concatenate([start, end, jnp.stack([width, depth, present])])
  return jnp.concatenate([pores, moles, scar]).astype(jnp.float32)


def _face_box(geometry: wrinkles.WrinkleGeometry):
  """(low, size) of the face's box in PNCC (u, v): jaw to jaw, chin to brows."""
  lm = geometry.landmarks
  low = jnp.stack([jnp.min(lm[0:17, 0]), lm[8, 1]])
  high = jnp.stack([jnp.max(lm[0:17, 0]), jnp.max(lm[17:27, 1])])
  return low, high - low


def _value_noise(u, v, seed):
  """Smooth noise in [0, 1) over unit cells of (u, v) (bilinear between
  hashed corners)."""
  cu, cv = jnp.floor(u), jnp.floor(v)
  fu, fv = u - cu, v - cv
  fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
  words = jnp.stack([seed, seed * 7.0 + 3.0]).astype(jnp.uint32)

  def corner(du, dv):
    index = ((cu + du).astype(jnp.int32).astype(jnp.uint32) * jnp.uint32(73856093)
             ^ (cv + dv).astype(jnp.int32).astype(jnp.uint32) * jnp.uint32(19349663))
    return appearance.hash_uniform(index, words)

  top = corner(0, 0) * (1 - fu) + corner(1, 0) * fu
  bottom = corner(0, 1) * (1 - fu) + corner(1, 1) * fu
  return top * (1 - fv) + bottom * fv


def _marks(params, pncc, geometry: wrinkles.WrinkleGeometry):
  """(pores, moles, scar) per pixel: pore pits in [0, 1], mole bumps in
  [0, 1] times their heights, the scar's profile in [0, 1] (times present)."""
  p = pncc[..., :2]
  d = geometry.unit
  low, size = _face_box(geometry)
  inside = wrinkles.smooth_window(p[..., 0], low[0], low[0] + size[0], 0.1 * d) * \
      wrinkles.smooth_window(p[..., 1], low[1], low[1] + size[1], 0.1 * d)
  noise = _value_noise(p[..., 0] / (PORE_CELL * d) + params[_PORES + 2] * 1e3,
                       p[..., 1] / (PORE_CELL * d), params[_PORES + 1])
  pores = inside * jnp.clip((noise - 0.55) / 0.45, 0.0, 1.0) ** 2
  moles = jnp.zeros(p.shape[:-1], jnp.float32)
  mole_colour = jnp.zeros(p.shape[:-1], jnp.float32)
  for k in range(MAX_MOLES):
    u, v, radius, height = (params[_MOLES + 4 * k + i] for i in range(4))
    centre = low + jnp.stack([u, v]) * size
    r = jnp.linalg.norm(p - centre, axis=-1) / (radius * d)
    bump = jnp.exp(-2.0 * r * r)
    moles = moles + height * bump
    mole_colour = jnp.maximum(mole_colour, (height > 0) * jnp.clip(1.5 - 1.5 * r, 0.0, 1.0))
  start = low + params[_SCAR:_SCAR + 2] * size
  end = low + params[_SCAR + 2:_SCAR + 4] * size
  distance, _ = wrinkles.segment_distance(p, start, end)
  width, present = params[_SCAR + 4], params[_SCAR + 6]
  scar = present * jnp.exp(-(distance / (width * d)) ** 2)
  return pores, moles, mole_colour, scar


def mark_height(params, pncc, mask, geometry: wrinkles.WrinkleGeometry):
  """The marks' height [H, W] of one face, a fraction of its width (0 off
  the mask): pores sink, moles rise, a scar does either."""
  pores, moles, _, scar = _marks(params, pncc, geometry)
  height = -params[_PORES] * pores + moles + params[_SCAR + 5] * scar
  return jnp.where(mask, height, 0.0)


def mark_albedo(params, pncc, mask, geometry: wrinkles.WrinkleGeometry):
  """The albedo factor [H, W, 3] the marks give one face (1 off the mask
  and on clear skin): darker moles, paler scars."""
  _, _, mole_colour, scar = _marks(params, pncc, geometry)
  mole = 1.0 + mole_colour[..., None] * (jnp.asarray(_MOLE_COLOUR) - 1.0)
  pale = 1.0 + scar[..., None] * (jnp.asarray(_SCAR_COLOUR) - 1.0)
  return jnp.where(mask[..., None], mole * pale, 1.0)
