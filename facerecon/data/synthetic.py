"""Synthetic training faces with exact labels (the paper trains CoarseNet on
these): a prior over face parameters and a batched renderer.

Everything is a pure function of (seed, sample index): sample i always gets
the key `fold_in(PRNGKey(seed), i)`, so a data set comes out the same
whatever the number of workers: bitwise for the same batch size, to float
rounding for another (XLA vectorises reductions differently per shape).

The prior draws shape and expression in units of each mode's std (the
original drew shape uniformly in [0, 1e4], a tiny positive corner of the
space), pose angles uniformly in the original's ranges, and a scale and
translation that keep the face in frame. Texture comes from the texture
model. Lighting is first-order spherical harmonics (ambient plus one
directional light), followed by AFLW2000-3D's colour transform (per-channel
gain and offset, contrast towards grey).

Fine detail: the 3DMM is smooth, so each face also carries a displacement
of its depth (`detail_displacement`): a sum of random plane waves over the
face's PNCC code (surface coordinates, so the bumps and wrinkles move with
the face), a fraction of the face's width high. The photo is shaded with the
detailed surface's normals and `SyntheticBatch.fine_depth` is its depth: the
ground truth for FineNet, which must find the detail from the shading alone.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import camera
from facerecon import face_render
from facerecon import morphable
from facerecon import params as params_lib
from facerecon import shading

# Bumped whenever the same (seed, index) would give another face, so a data
# set is never resumed with different code (data_pipeline.synthesize).
GENERATOR_VERSION = 5
DETAIL_WAVES = 8  # plane waves summed into each face's displacement


@dataclasses.dataclass(frozen=True)
class FacePrior:
  """Ranges of the synthetic faces; angles in degrees."""
  shape_sigma: float = 1.0       # shape ~ N(0, (shape_sigma * std)^2) per mode
  expression_sigma: float = 1.0
  texture_sigma: float = 1.0
  pitch: tuple[float, float] = (-75.0, 45.0)   # the original's ranges
  yaw: tuple[float, float] = (-90.0, 90.0)
  roll: tuple[float, float] = (-30.0, 30.0)
  fill: tuple[float, float] = (0.55, 0.85)     # face size / image size
  shift: float = 0.08            # centre offset, as a fraction of the image
  ambient: tuple[float, float] = (0.45, 0.9)
  directional: tuple[float, float] = (0.0, 0.6)
  gain: tuple[float, float] = (0.85, 1.15)
  offset: tuple[float, float] = (-0.05, 0.05)
  contrast: tuple[float, float] = (0.6, 1.0)   # 1 = full colour, 0 = grey
  noise: float = 0.01            # std of (uniform) pixel noise, image in [0, 1]
  # Fine detail: wave height as a fraction of the face's width, and wave
  # frequencies in cycles per face width. (0, 0): smooth faces.
  detail: tuple[float, float] = (0.002, 0.006)
  detail_frequency: tuple[float, float] = (4.0, 10.0)


class FaceSample(NamedTuple):
  """Everything drawn for a batch of faces."""
  params: jax.Array    # [B, 7 + Ks + Ke], the label (facerecon.params layout)
  texture: jax.Array   # [B, Kt]
  lighting: jax.Array  # [B, 4] first-order SH coefficients [1, nx, ny, nz]
  colour: jax.Array    # [B, 7] gain rgb, offset rgb, contrast
  detail: jax.Array    # [B, DETAIL_WAVES, 4] waves: height, frequency u, frequency v, phase


def _uniform(key, shape, bounds):
  return jax.random.uniform(key, shape, minval=bounds[0], maxval=bounds[1])


def sample_face(key, model: morphable.MorphableModel, prior: FacePrior, height: int,
                width: int) -> FaceSample:
  """One face's parameters (unbatched: vmap over keys for a batch)."""
  keys = jax.random.split(key, 12)
  layout = model.layout
  shape = prior.shape_sigma * model.shape_std * jax.random.normal(keys[0], (layout.num_shape,))
  expression = (prior.expression_sigma * model.expression_std
                * jax.random.normal(keys[1], (layout.num_expression,)))
  texture = (prior.texture_sigma * model.texture_std
             * jax.random.normal(keys[2], model.texture_std.shape))
  angles = jnp.deg2rad(jnp.stack([_uniform(keys[3], (), prior.pitch),
                                  _uniform(keys[4], (), prior.yaw),
                                  _uniform(keys[5], (), prior.roll)]))
  vertices = morphable.vertices(model, shape, expression)
  pose = camera.framing_pose(vertices, angles, height, width,
                             fill=_uniform(keys[6], (), prior.fill))
  shift = prior.shift * jnp.array([width, height]) * jax.random.uniform(
      keys[7], (2,), minval=-1.0, maxval=1.0)
  pose = pose.at[params_lib.TRANSLATION.start:params_lib.TRANSLATION.start + 2].add(shift)
  # A light from the front hemisphere (the camera side, +z).
  direction = jax.random.normal(keys[8], (3,))
  direction = direction.at[2].set(jnp.abs(direction[2]) + 0.3)
  direction = direction / jnp.linalg.norm(direction)
  lighting = jnp.concatenate([_uniform(keys[9], (1,), prior.ambient),
                              _uniform(keys[10], (), prior.directional) * direction])
  colour_keys = jax.random.split(keys[11], 3)
  colour = jnp.concatenate([_uniform(colour_keys[0], (3,), prior.gain),
                            _uniform(colour_keys[1], (3,), prior.offset),
                            _uniform(colour_keys[2], (1,), prior.contrast)])
  params = params_lib.join(params_lib.FaceParams(pose, shape, expression))
  # Its own key (not a 13th split), so the draws above stay what they were.
  detail = _detail_waves(jax.random.fold_in(key, 1000), prior)
  return FaceSample(params.astype(jnp.float32), texture.astype(jnp.float32),
                    lighting.astype(jnp.float32), colour.astype(jnp.float32),
                    detail.astype(jnp.float32))


def _detail_waves(key, prior: FacePrior):
  """[DETAIL_WAVES, 4]: height (fraction of face width), frequency (u, v)
  in cycles per face width, phase."""
  keys = jax.random.split(key, 4)
  height = _uniform(keys[0], (DETAIL_WAVES,), prior.detail)
  frequency = _uniform(keys[1], (DETAIL_WAVES,), prior.detail_frequency)
  direction = jax.random.uniform(keys[2], (DETAIL_WAVES,), maxval=jnp.pi)
  phase = jax.random.uniform(keys[3], (DETAIL_WAVES,), maxval=2 * jnp.pi)
  return jnp.stack([height, frequency * jnp.cos(direction), frequency * jnp.sin(direction),
                    phase], axis=-1)


def detail_displacement(waves, pncc, mask, face_width):
  """The detail's depth displacement [B, H, W] in pixels (0 off the mask):
  face_width * sum_k height_k sin(2 pi (fu_k u + fv_k v) + phase_k) at each
  pixel's PNCC code (u, v). waves [B, K, 4], pncc [B, H, W, 3], face_width
  [B] the face's width in pixels."""
  u, v = pncc[..., None, 0], pncc[..., None, 1]                 # [B, H, W, 1]
  w = waves[:, None, None]                                      # [B, 1, 1, K, 4]
  angle = 2 * jnp.pi * (w[..., 1] * u + w[..., 2] * v) + w[..., 3]
  height = jnp.sum(w[..., 0] * jnp.sin(angle), axis=-1)
  return jnp.where(mask, face_width[:, None, None] * height, 0.0)


def colour_transform(image, colour):
  """AFLW2000-3D's colour model: diag(gain) (c I + (1 - c) M) x + offset,
  with M's rows the luminance weights. image [..., H, W, 3], colour [..., 7]."""
  gain, offset, contrast = colour[..., None, None, 0:3], colour[..., None, None, 3:6], \
      colour[..., None, None, 6:7]
  grey = shading.luminance(image, keepdims=True)
  return gain * (contrast * image + (1.0 - contrast) * grey) + offset


def procedural_background(key, height: int, width: int):
  """A smooth random background [H, W, 3] in [0, 1]: a colour gradient plus
  a few low-frequency waves (no photos needed).

  Every term is a product of a function of the row and a function of the
  column (sin(a x + b y) = sin(a x) cos(b y) + cos(a x) sin(b y)), so the
  image is one small matrix product [H, J] x [J, W * 3]: fast on every
  backend, where a per-pixel sum of waves is not (XLA's CPU fuses the
  sines into the pixel loop).
  """
  keys = jax.random.split(key, 4)
  rows = jnp.linspace(-1.0, 1.0, height)
  cols = jnp.linspace(-1.0, 1.0, width)
  base = jax.random.uniform(keys[0], (2, 3), minval=0.15, maxval=0.75)
  base = 0.5 * base + 0.5 * jnp.mean(base, axis=1, keepdims=True)  # muted colours
  angle = jax.random.uniform(keys[1], (), maxval=2 * jnp.pi)
  # Colour ramp base0 + (base1 - base0) * (0.5 + (cos(a) x + sin(a) y) / (2 sqrt 2)).
  slope = 0.5 / jnp.sqrt(2.0)
  frequency = jax.random.uniform(keys[2], (4, 2), minval=-4.0, maxval=4.0)
  amplitude = jax.random.uniform(keys[3], (4, 3), minval=-0.06, maxval=0.06)
  ax = jnp.pi * frequency[:, 0, None] * cols[None]  # [4, W]
  by = jnp.pi * frequency[:, 1, None] * rows[None]  # [4, H]
  diff = base[1] - base[0]
  # Row factors [H, J, 3] and column factors [J, W] of the J = 10 terms.
  row_terms = jnp.concatenate([
      jnp.broadcast_to(jnp.ones(3), (height, 1, 3)),                        # column ramp
      (slope * jnp.sin(angle) * rows)[:, None, None] * diff[None, None, :],  # row ramp
      jnp.cos(by).T[:, :, None] * amplitude[None],                          # x sin(a x)
      jnp.sin(by).T[:, :, None] * amplitude[None]], axis=1)                 # x cos(a x)
  col_terms = jnp.concatenate([
      jnp.ones((1, width)), jnp.ones((1, width)), jnp.sin(ax), jnp.cos(ax)], axis=0)
  # The column ramp carries its colours itself: [J, W, 3] with channel weights.
  col_colour = jnp.concatenate([
      (base[0] + diff * (0.5 + slope * jnp.cos(angle) * cols)[:, None])[None],  # [1, W, 3]
      jnp.broadcast_to(col_terms[1:, :, None], (col_terms.shape[0] - 1, width, 3))], axis=0)
  # image[h, w, c] = sum_j row_terms[h, j, c] col_colour[j, w, c]: one dot
  # over (j, c') with a block-diagonal right factor, output laid out [H, W * 3].
  eye = jnp.eye(3, dtype=col_colour.dtype)
  right = (col_colour[:, None, :, :] * eye[None, :, None, :]).reshape(-1, width * 3)
  image = (row_terms.reshape(height, -1) @ right).reshape(height, width, 3)
  return jnp.clip(image, 0.0, 1.0)


def _mix32(x):
  """An invertible 32-bit integer hash with good avalanche (Wellons' lowbias32)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def uniform_noise(key, shape, half_width):
  """Uniform noise in [-half_width, half_width] with 256 levels: one byte per value.

  Pixel noise needs no cryptographic generator: each 32-bit word is a hash of
  its index and two seed words drawn from `key`, about 12 integer operations
  against Threefry's 80 (Threefry on every word was most of the synthesis
  time). Deterministic in `key`, and independent of any batching.
  """
  size = int(np.prod(shape))
  seed = jax.random.bits(key, (2,), jnp.uint32)
  index = jnp.arange(-(-size // 4), dtype=jnp.uint32)
  words = _mix32(_mix32(index ^ seed[0]) + seed[1])
  # The barrier keeps XLA from fusing the hash into the per-byte loop (four
  # hashes per word).
  words = jax.lax.optimization_barrier(words)
  values = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:size]
  return (values.astype(jnp.float32) * (2.0 * half_width / 255.0) - half_width).reshape(shape)


class SyntheticBatch(NamedTuple):
  image: jax.Array      # [B, H, W, 3] uint8
  params: jax.Array     # [B, P] float32: the label
  texture: jax.Array    # [B, Kt]
  lighting: jax.Array   # [B, 4]
  colour: jax.Array     # [B, 7]
  depth: jax.Array      # [B, H, W] float32, image-space z (larger nearer), 0 off the face
  fine_depth: jax.Array  # [B, H, W] float32, depth with the fine detail, 0 off the face
  mask: jax.Array       # [B, H, W] bool
  pncc: jax.Array       # [B, H, W, 3] float32 in [0, 1], 0 off the face
  landmarks: jax.Array  # [B, 68, 2] float32 image (x, y)


def render_sample(model: morphable.MorphableModel, sample: FaceSample, background,
                  height: int, width: int, backend: str | None = None,
                  noise=None) -> SyntheticBatch:
  """Renders a batch of drawn faces over backgrounds [B, H, W, 3] in [0, 1];
  `noise` [B, H, W, 3] (or None) is added before quantising to uint8."""
  face = face_render.render_face(model, sample.params, sample.texture, height, width, backend)
  # The face's width in pixels: f times the model's x extent (the PNCC's u
  # runs across it).
  extent = jnp.max(model.mean_shape[:, 0]) - jnp.min(model.mean_shape[:, 0])
  displacement = detail_displacement(sample.detail, face.pncc, face.mask,
                                     sample.params[:, params_lib.SCALE] * extent)
  # Normals of depth + displacement: n + n_z (-dd/dcolumn, dd/drow, 0) is
  # parallel to (-dz/dcolumn, dz/drow, 1) of the detailed surface.
  d_col, d_row, _ = shading.depth_gradient(displacement, face.mask)
  normals = face.normals + face.normals[..., 2:3] * jnp.stack(
      [-d_col, d_row, jnp.zeros_like(d_col)], axis=-1)
  normals = normals * jax.lax.rsqrt(jnp.maximum(
      normals[..., 0:1] ** 2 + normals[..., 1:2] ** 2 + normals[..., 2:3] ** 2, 1e-12))
  irradiance = jnp.maximum(shading.sh_irradiance(normals, sample.lighting), 0.0)
  shaded = colour_transform(face.albedo * irradiance[..., None], sample.colour)
  image = jnp.where(face.mask[..., None], shaded, background)
  if noise is not None:
    image = image + noise
  image = jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0).astype(jnp.uint8)
  landmarks = face_render.image_landmarks(model, face.image_vertices)
  return SyntheticBatch(image, sample.params, sample.texture, sample.lighting, sample.colour,
                        face.depth, face.depth + displacement, face.mask, face.pncc, landmarks)


def sample_keys(seed: int, start: int, count: int):
  """Keys of samples start .. start + count - 1 (the same whatever the batching)."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
      jnp.arange(start, start + count, dtype=jnp.uint32))


def generate(model: morphable.MorphableModel, keys, prior: FacePrior, height: int,
             width: int, backgrounds=None, backend: str | None = None) -> SyntheticBatch:
  """Draws and renders one face per key. `backgrounds` [B, H, W, 3] in [0, 1],
  or None for procedural ones. Jit with static prior, sizes and backend."""
  split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  sample = jax.vmap(lambda k: sample_face(k, model, prior, height, width))(split[:, 0])
  if backgrounds is None:
    backgrounds = jax.vmap(lambda k: procedural_background(k, height, width))(split[:, 1])
  half_width = prior.noise * np.sqrt(3.0)
  noise = jax.vmap(lambda k: uniform_noise(k, (height, width, 3), half_width))(split[:, 2])
  return render_sample(model, sample, backgrounds, height, width, backend, noise)


generate_jit = jax.jit(generate, static_argnames=("prior", "height", "width", "backend"))
