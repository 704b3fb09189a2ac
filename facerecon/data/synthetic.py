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
the face), a fraction of the face's width high, plus wrinkles where faces fold
(`facerecon.data.wrinkles`) and pores, moles and scars
(`facerecon.data.skin_marks`; moles and scars also colour the albedo), each
as the prior asks. The photo is shaded with the
detailed surface's normals and `SyntheticBatch.fine_depth` is its depth: the
ground truth for FineNet, which must find the detail from the shading alone.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import camera
from facerecon import face_render
from facerecon import morphable
from facerecon import params as params_lib
from facerecon import render
from facerecon import shading
from facerecon.data import appearance
from facerecon.data import cropping
from facerecon.data import scenes
from facerecon.data import skin_marks
from facerecon.data import wrinkles as wrinkles_lib

# Bumped whenever the same (seed, index) would give another face, so a data
# set is never resumed with different code (data_pipeline.synthesize).
GENERATOR_VERSION = 8
DETAIL_WAVES = 8  # plane waves summed into each face's displacement
GAMMA = 2.2       # shading is linear; photos are gamma-encoded


# The expressions photos show most, for blendshape models with ARKit-style
# names (ICT-FaceKit's): (share among the archetypes, {name: weight range});
# a name without _L/_R stands for both sides. The mouth's expressions come
# first: on photos of AFLW2000-3D a third of the frontal faces have their
# lips apart by more than 5% of the face (docs/data.md).
EXPRESSION_ARCHETYPES = (
    (0.3, {"mouthSmile": (0.3, 1.0), "cheekSquint": (0.0, 0.6), "eyeSquint": (0.0, 0.4),
           "mouthDimple": (0.0, 0.4)}),
    (0.35, {"mouthSmile": (0.4, 1.0), "jawOpen": (0.1, 0.5), "mouthUpperUp": (0.1, 0.7),
            "mouthLowerDown": (0.0, 0.6), "mouthStretch": (0.0, 0.3),
            "cheekSquint": (0.0, 0.6), "eyeSquint": (0.0, 0.4)}),
    (0.25, {"jawOpen": (0.2, 0.9), "mouthLowerDown": (0.0, 0.6), "mouthUpperUp": (0.0, 0.4),
            "mouthFunnel": (0.0, 0.3)}),
    (0.1, {"jawOpen": (0.2, 0.8), "browInnerUp": (0.3, 1.0), "browOuterUp": (0.3, 1.0),
           "eyeWide": (0.2, 1.0)}),
)


@dataclasses.dataclass(frozen=True)
class FacePrior:
  """Ranges of the synthetic faces; angles in degrees; probabilities in [0, 1]."""
  shape_sigma: float = 1.0       # shape ~ N(0, (shape_sigma * std)^2) per mode
  expression_sigma: float = 1.0  # Gaussian expression models, likewise
  # Blendshape models: each weight is nonzero with this probability (then
  # uniform in [0, expression_sigma], clipped to 1); left/right pairs
  # (names ending _L / _R) move together half the time.
  expression_active: float = 0.15
  # Blendshape models with ARKit-style names: the share of faces that start
  # from one of the expressions photos show most (EXPRESSION_ARCHETYPES:
  # smiles, with teeth or not, open mouths, surprise) before the sparse
  # random weights (at half `expression_active`) are added.
  expression_archetypes: float = 0.0
  texture_sigma: float = 1.0
  pitch: tuple[float, float] = (-75.0, 45.0)   # the original's ranges
  yaw: tuple[float, float] = (-90.0, 90.0)
  roll: tuple[float, float] = (-30.0, 30.0)
  # This fraction of faces has yaw and pitch drawn from the middle third of
  # their ranges (most photos are near frontal).
  frontal_fraction: float = 0.0
  fill: tuple[float, float] = (0.55, 0.85)     # face size / image size
  # Frame by the 68 landmarks the way photos are cropped
  # (facerecon.data.cropping): `fill` is then the landmark box's larger
  # side over the image side (0.52 in detectors' crops), its centre
  # CROP_SHIFT of that side below the image centre. False: by the mesh.
  frame_by_landmarks: bool = False
  shift: float = 0.08            # centre offset, as a fraction of the image
  # The camera's distance from the face, in face widths, drawn log-uniformly
  # from this range: a pinhole camera on the image centre's axis instead of
  # the scaled-orthographic one (a portrait at arm's length is about 3
  # widths away, across a room 20). The labels stay the scaled-orthographic
  # pose at the landmarks' depth; the landmarks are where the photo shows
  # them. (0, 0): orthographic. Procedural faces only.
  camera_distance: tuple[float, float] = (0.0, 0.0)
  ambient: tuple[float, float] = (0.45, 0.9)
  directional: tuple[float, float] = (0.0, 0.6)
  fill_light: tuple[float, float] = (0.0, 0.0)  # a second directional light
  # This fraction of faces has its main light from above the camera's
  # horizon (photos' lights mostly are); the others from any side.
  light_from_above: float = 0.0
  light_colour: float = 0.0      # log-range of the lights' colour casts
  second_order_light: bool = False  # band-2 harmonics: environment light
  specular: bool = False         # highlights (strength drawn per face)
  # The main light's cast shadows (procedural albedo): the chin's on the
  # neck, the nose's on the cheek, the brows' in the eye sockets.
  cast_shadows: bool = False
  gain: tuple[float, float] = (0.85, 1.15)
  offset: tuple[float, float] = (-0.05, 0.05)
  contrast: tuple[float, float] = (0.6, 1.0)   # 1 = full colour, 0 = grey
  noise: float = 0.01            # std of (uniform) pixel noise, image in [0, 1]
  # Appearance: False paints the texture model's colours; True the
  # procedural skin, hair, brows, lips, eyes of facerecon.data.appearance.
  procedural_albedo: bool = False
  hair: float = 1.0              # the share of faces with hair (procedural albedo)
  # The scene, applied on the host (facerecon.data.scenes.finish_photo).
  photo_backgrounds: float = 0.0  # share of backgrounds from photos (when given)
  clutter: float = 0.0           # probability of each clutter shape
  occluders: float = 0.0         # probability of each occluder over the face
  long_hair: float = 0.0         # share of faces with long hair (needs landmarks)
  glasses: float = 0.0           # share of faces with spectacles
  headwear: float = 0.0          # share of faces with a beanie, cap or headband
  other_heads: float = 0.0       # share of photos with another head at a side
  blur: float = 0.0              # largest blur sigma, pixels
  grey: float = 0.0              # share of grey photos
  jpeg: float = 0.0              # share of JPEG-compressed photos (quality 20..95)
  # The finished photo's tone (before blur, grey and JPEG): its luminance
  # (0..255) given a standard deviation drawn from `luminance_std` and a
  # mean from `luminance_mean`, each left as rendered when its range is
  # (0, 0). Renders are flatter and more evenly exposed than photos
  # (docs/data.md). `saturation`: the mean HSV saturation (0..255) of the
  # face, drawn for colour photos, and `background_saturation` the rest's
  # (`scenes.tone`); (0, 0): colours scale with the luminance map (the
  # background with the face when only the face's is given).
  luminance_std: tuple[float, float] = (0.0, 0.0)
  luminance_mean: tuple[float, float] = (0.0, 0.0)
  saturation: tuple[float, float] = (0.0, 0.0)
  background_saturation: tuple[float, float] = (0.0, 0.0)
  # Fine detail: wave height as a fraction of the face's width, and wave
  # frequencies in cycles per face width. (0, 0): smooth faces.
  detail: tuple[float, float] = (0.002, 0.006)
  detail_frequency: tuple[float, float] = (4.0, 10.0)
  # Wrinkles (facerecon.data.wrinkles): the deepest family's depth range, a
  # fraction of the face's width, at full age or expression. (0, 0): none.
  wrinkles: tuple[float, float] = (0.0, 0.0)
  # Pores, moles and scars (facerecon.data.skin_marks): their depth scale
  # range, a fraction of the face's width. (0, 0): none.
  marks: tuple[float, float] = (0.0, 0.0)


# FacePrior's fields that are shares of the faces (or of their parts), in [0, 1].
PRIOR_PROBABILITIES = ("expression_active", "expression_archetypes", "frontal_fraction", "hair",
                       "photo_backgrounds", "clutter", "occluders", "long_hair", "glasses",
                       "headwear", "other_heads", "grey", "jpeg", "light_from_above")


class FaceSample(NamedTuple):
  """Everything drawn for a batch of faces."""
  params: jax.Array    # [B, 7 + Ks + Ke], the label (facerecon.params layout)
  texture: jax.Array   # [B, Kt]
  lighting: jax.Array  # [B, 4] first-order SH coefficients [1, nx, ny, nz] (grey)
  colour: jax.Array    # [B, 7] gain rgb, offset rgb, contrast
  detail: jax.Array    # [B, DETAIL_WAVES, 4] waves: height, frequency u, frequency v, phase
  light: jax.Array     # [B, 9, 3] coloured second-order SH light (shading.sh9_basis)
  highlight: jax.Array  # [B, 4] specular: direction (3), shininess
  main_light: jax.Array  # [B, 3] the main light's colour (its direction: highlight[:3])
  look: appearance.Appearance  # per-face albedo draws
  wrinkles: jax.Array  # [B, wrinkles.NUM_PARAMS] (facerecon.data.wrinkles)
  marks: jax.Array     # [B, skin_marks.NUM_PARAMS] (facerecon.data.skin_marks)
  distance: jax.Array  # [B] the camera's distance in face widths (0: orthographic)


def _uniform(key, shape, bounds):
  return jax.random.uniform(key, shape, minval=bounds[0], maxval=bounds[1])


def _pairs(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
  """Indices (left, right) of the expression names that form _L/_R pairs."""
  index = {name: k for k, name in enumerate(names)}
  left = [k for k, name in enumerate(names) if name.endswith("_L") and name[:-2] + "_R" in index]
  right = [index[names[k][:-2] + "_R"] for k in left]
  return np.asarray(left, np.int32), np.asarray(right, np.int32)


def _archetype_ranges(names: tuple[str, ...]) -> np.ndarray:
  """[archetypes, len(names), 2] weight ranges (zero for the names an
  archetype leaves alone or the model lacks; a name without _L/_R in the
  table stands for both sides)."""
  index = {name: k for k, name in enumerate(names)}
  ranges = np.zeros((len(EXPRESSION_ARCHETYPES), len(names), 2), np.float32)
  for a, (_, table) in enumerate(EXPRESSION_ARCHETYPES):
    for name, bounds in table.items():
      for full in (name, name + "_L", name + "_R"):
        if full in index:
          ranges[a, index[full]] = bounds
  return ranges


def _expression(key, model: morphable.MorphableModel, prior: FacePrior):
  count = model.layout.num_expression
  if model.expression_kind != morphable.BLENDSHAPE:
    return prior.expression_sigma * model.expression_std * jax.random.normal(key, (count,))
  keys = jax.random.split(key, 3)
  ranges = _archetype_ranges(model.expression_names)
  use_archetypes = prior.expression_archetypes > 0 and np.any(ranges)
  if use_archetypes:
    draw_keys = jax.random.split(jax.random.fold_in(key, 1), 3)
    archetype = jax.random.uniform(draw_keys[0]) < prior.expression_archetypes
    shares = np.asarray([share for share, _ in EXPRESSION_ARCHETYPES], np.float32)
    which = jax.random.choice(draw_keys[1], len(shares), p=shares / shares.sum())
    low, high = ranges[:, :, 0], ranges[:, :, 1]
    base = jnp.asarray(low)[which] + jax.random.uniform(draw_keys[2], (count,)) * (
        jnp.asarray(high - low)[which])
    rate = jnp.where(archetype, 0.5 * prior.expression_active, prior.expression_active)
  else:
    rate = prior.expression_active
  active = jax.random.uniform(keys[0], (count,)) < rate
  weights = jnp.where(active, jax.random.uniform(keys[1], (count,),
                                                 maxval=prior.expression_sigma), 0.0)
  if use_archetypes:
    weights = jnp.where(archetype, jnp.maximum(weights, base), weights)
  left, right = _pairs(model.expression_names)
  if left.size:
    weights = jnp.where(jax.random.uniform(keys[2]) < 0.5,
                        weights.at[right].set(weights[left]), weights)
  return jnp.clip(weights, 0.0, 1.0) * model.expression_std


def _angles(keys, prior: FacePrior):
  """(pitch, yaw, roll) in radians from keys [3 + 1]."""
  frontal = jax.random.uniform(keys[3]) < prior.frontal_fraction

  def draw(k, bounds):
    if prior.frontal_fraction <= 0:
      return _uniform(k, (), bounds)
    third = (bounds[1] - bounds[0]) / 3
    return jnp.where(frontal, _uniform(jax.random.fold_in(k, 1), (), (bounds[0] + third,
                                                                      bounds[1] - third)),
                     _uniform(k, (), bounds))

  return jnp.deg2rad(jnp.stack([draw(keys[0], prior.pitch), draw(keys[1], prior.yaw),
                                _uniform(keys[2], (), prior.roll)]))


def _direction(key, min_z: float):
  """A unit direction towards the camera side (z >= min_z, roughly)."""
  direction = jax.random.normal(key, (3,))
  direction = direction.at[2].set(jnp.abs(direction[2]) + min_z)
  return direction / jnp.linalg.norm(direction)


def _light(keys, extra_key, prior: FacePrior):
  """(lighting [4]: grey first-order SH, ambient plus one directional light,
  what the texture-model faces are shaded with; light [9, 3]: the same
  light as coloured second-order SH plus, as the prior says, a fill light,
  colour casts and an environment; highlight [4]: direction, shininess;
  main_light [3]: the main light's colour, for its shadows).
  `keys` [3]: direction, ambient, intensity."""
  main = _direction(keys[0], 0.3)
  # Camera frame, y up; its own key, so that the other draws stay as they were.
  above = jax.random.uniform(jax.random.fold_in(extra_key, 2)) < prior.light_from_above
  main = main.at[1].set(jnp.where(above, jnp.abs(main[1]), main[1]))
  ambient = _uniform(keys[1], (1,), prior.ambient)
  intensity = _uniform(keys[2], (), prior.directional)
  lighting = jnp.concatenate([ambient, intensity * main])
  more = jax.random.split(extra_key, 6)
  cast = lambda k: jnp.exp(prior.light_colour * jax.random.uniform(k, (3,), minval=-1.0,
                                                                   maxval=1.0))
  fill = _direction(more[0], 0.0)
  fill_colour = _uniform(more[1], (), prior.fill_light) * cast(more[2])
  main_colour = intensity * cast(more[3])
  light = (shading.sh9_directional(main, main_colour)
           + shading.sh9_directional(fill, fill_colour))
  light = light.at[0].add(ambient * cast(more[4]))
  if prior.second_order_light:
    light = light + 0.04 * jax.random.normal(more[5], (9, 3)) * ambient
  else:
    light = light.at[4:].set(0.0)
  shininess = _uniform(jax.random.fold_in(extra_key, 1), (1,), (8.0, 40.0))
  return lighting, light, jnp.concatenate([main, shininess]), main_colour


def sample_face(key, model: morphable.MorphableModel, prior: FacePrior, height: int,
                width: int) -> FaceSample:
  """One face's parameters (unbatched: vmap over keys for a batch)."""
  keys = jax.random.split(key, 12)
  layout = model.layout
  shape = prior.shape_sigma * model.shape_std * jax.random.normal(keys[0], (layout.num_shape,))
  expression = _expression(keys[1], model, prior)
  texture = (prior.texture_sigma * model.texture_std
             * jax.random.normal(keys[2], model.texture_std.shape))
  angles = _angles([keys[3], keys[4], keys[5], jax.random.fold_in(key, 1004)], prior)
  vertices = morphable.vertices(morphable.surface(model), shape, expression)
  if prior.frame_by_landmarks:
    vertices = morphable.landmarks(model, vertices)
  fill = _uniform(keys[6], (), prior.fill)
  pose = camera.framing_pose(vertices, angles, height, width, fill=fill)
  if prior.frame_by_landmarks:
    # Rows run down and image y = H - 1 - (f y + t_y): lowering the box
    # lowers t_y.
    pose = pose.at[params_lib.TRANSLATION.start + 1].add(
        -cropping.CROP_SHIFT * fill * height)
  shift = prior.shift * jnp.array([width, height]) * jax.random.uniform(
      keys[7], (2,), minval=-1.0, maxval=1.0)
  pose = pose.at[params_lib.TRANSLATION.start:params_lib.TRANSLATION.start + 2].add(shift)
  lighting, light, highlight, main_light = _light(keys[8:11], jax.random.fold_in(key, 1005), prior)
  colour_keys = jax.random.split(keys[11], 3)
  colour = jnp.concatenate([_uniform(colour_keys[0], (3,), prior.gain),
                            _uniform(colour_keys[1], (3,), prior.offset),
                            _uniform(colour_keys[2], (1,), prior.contrast)])
  params = params_lib.join(params_lib.FaceParams(pose, shape, expression))
  # Their own keys (not more splits), so the draws above stay what they were.
  detail = _detail_waves(jax.random.fold_in(key, 1000), prior)
  look = appearance.sample_appearance(jax.random.fold_in(key, 1001))
  look = look._replace(hair_amount=look.hair_amount * (
      jax.random.uniform(jax.random.fold_in(key, 1002)) < prior.hair))
  folds = (jnp.zeros(wrinkles_lib.NUM_PARAMS) if prior.wrinkles == (0.0, 0.0) else
           wrinkles_lib.sample_wrinkles(jax.random.fold_in(key, 1006), expression,
                                        model.expression_std, wrinkles_lib.geometry(model),
                                        prior.wrinkles))
  marks = (jnp.zeros(skin_marks.NUM_PARAMS) if prior.marks == (0.0, 0.0) else
           skin_marks.sample_marks(jax.random.fold_in(key, 1007), prior.marks))
  distance = (jnp.zeros(()) if prior.camera_distance == (0.0, 0.0) else jnp.exp(_uniform(
      jax.random.fold_in(key, 1008), (), tuple(np.log(prior.camera_distance)))))
  return FaceSample(params.astype(jnp.float32), texture.astype(jnp.float32),
                    lighting.astype(jnp.float32), colour.astype(jnp.float32),
                    detail.astype(jnp.float32), light.astype(jnp.float32),
                    highlight.astype(jnp.float32), main_light.astype(jnp.float32), look,
                    folds, marks, distance.astype(jnp.float32))


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
  words = appearance.mix32(appearance.mix32(index ^ seed[0]) + seed[1])
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


def light_visibility(model, image_vertices, direction, height: int, backend=None):
  """[B, N]: 1 where a distant light from `direction` [B, 3] (camera frame,
  y up) reaches each vertex of the model's meshes posed in an image `height`
  pixels high (`image_vertices` [B, N, 3]), 0 where they shadow it
  (`render.light_visibility`, a shadow map the image's size)."""
  # Image rows run down: (column, -row, z) is the camera frame, moved.
  return render.light_visibility(image_vertices * jnp.asarray([1.0, -1.0, 1.0]),
                                 model.triangles, direction, height, backend=backend)


def perspective_vertices(model, image_vertices, params, distance, height: int, width: int):
  """Image-space vertices [B, N, 3] of scaled-orthographic poses `params`
  seen instead by a pinhole camera on the image centre's axis, `distance`
  [B] face widths (the model's x extent times the pose's scale) from the
  depth of the face's landmarks: each vertex moves from the centre by
  D / (D - (z - z_landmarks)), nearer parts outwards; depth is kept (it only
  orders the surfaces)."""
  extent = jnp.max(model.mean_shape[:, 0]) - jnp.min(model.mean_shape[:, 0])
  pixels = distance * params[:, params_lib.SCALE] * extent                   # [B]
  reference = jnp.mean(morphable.landmarks(model, image_vertices)[..., 2], axis=-1)
  nearer = image_vertices[..., 2] - reference[:, None]
  factor = pixels[:, None] / jnp.maximum(pixels[:, None] - nearer, 0.1 * pixels[:, None])
  centre = jnp.asarray([(width - 1) / 2.0, (height - 1) / 2.0])
  xy = centre + (image_vertices[..., :2] - centre) * factor[..., None]
  return jnp.concatenate([xy, image_vertices[..., 2:]], axis=-1)


def _render_flat(model, params, colours, specular, height: int, width: int, backend,
                 light_direction=None, distance=None):
  """`face_render.render_face` with per-vertex colours [B, N, 3] and
  specular weights [B, N], but each pixel's normal its triangle's (flat
  shading): area-weighted vertex normals are a scatter over every triangle,
  a third of the generator's time on a CPU for ICT-FaceKit's 51k triangles,
  and its triangles are about a pixel at the training sizes. With a
  `light_direction` [B, 3] (camera frame, y up) `extra` gains a second
  channel: where that light reaches (1) or the mesh shadows it (0). With a
  camera `distance` [B] (face widths) the mesh is seen in perspective
  (`perspective_vertices`)."""
  vertices, image_vertices = face_render.posed_vertices(model, params, height)
  if distance is not None:
    image_vertices = perspective_vertices(model, image_vertices, params, distance, height,
                                          width)
  extra = specular[..., None]
  if light_direction is not None:
    lit = light_visibility(model, image_vertices, light_direction, height, backend)
    extra = jnp.concatenate([extra, lit[..., None]], axis=-1)
  raster = render.rasterize(image_vertices, model.triangles, height, width, backend)
  # Triangle normals of the image-space mesh; image rows flip y, which
  # flips the cross product: n = (-cx, cy, -cz) in the y-up camera frame.
  cross = morphable.face_normals(image_vertices, model.triangles)      # [B, T, 3]
  cross = cross * jnp.asarray([-1.0, 1.0, -1.0])
  batch = params.shape[0]
  index = jnp.maximum(raster.triangle_id, 0).reshape(batch, -1)
  normals = jnp.take_along_axis(cross, index[..., None], axis=1).reshape(
      batch, height, width, 3)
  normals = jnp.where(raster.mask[..., None], normals * jax.lax.rsqrt(jnp.maximum(
      normals[..., 0:1] ** 2 + normals[..., 1:2] ** 2 + normals[..., 2:3] ** 2, 1e-24)), 0.0)
  attributes = jnp.concatenate([jnp.broadcast_to(model.pncc, vertices.shape), colours, extra],
                               axis=-1)
  values = render.interpolate(attributes, raster, image_vertices, model.triangles, backend)
  depth = jnp.where(raster.mask, raster.depth, 0.0)
  return face_render.FaceRender(raster, image_vertices, depth, raster.mask, normals,
                                values[..., 0:3], values[..., 3:6], vertices, values[..., 6:])


def _render(model, sample: FaceSample, prior: FacePrior, height: int, width: int, backend,
            where: wrinkles_lib.WrinkleGeometry | None = None):
  """The faces' render, their albedo (skin marks included) in it; `where`:
  the model's wrinkle geometry (built here when the marks need it and it is
  not given)."""
  if prior.procedural_albedo:
    regions = appearance.vertex_regions(model)
    colours, specular = jax.vmap(lambda look: appearance.vertex_albedo(model, regions, look))(
        sample.look)
    face = _render_flat(model, sample.params, colours, specular, height, width, backend,
                        sample.highlight[:, :3] if prior.cast_shadows else None,
                        None if prior.camera_distance == (0.0, 0.0) else sample.distance)
  else:
    face = face_render.render_face(model, sample.params, sample.texture, height, width,
                                   backend)
  if prior.marks != (0.0, 0.0):
    # Moles and scars are colour as well as relief.
    where = wrinkles_lib.geometry(model) if where is None else where
    face = face._replace(albedo=face.albedo * jax.vmap(
        lambda m, pncc, mask: skin_marks.mark_albedo(m, pncc, mask, where))(
            sample.marks, face.pncc, face.mask))
  return face


def _shade(model, sample: FaceSample, prior: FacePrior, height: int, width: int, backend):
  """The face render and its shaded colour [B, H, W, 3] in [0, 1] (gamma-encoded)."""
  # Wrinkles and skin marks are placed by the same landmark geometry: built once.
  where = (wrinkles_lib.geometry(model)
           if prior.wrinkles != (0.0, 0.0) or prior.marks != (0.0, 0.0) else None)
  face = _render(model, sample, prior, height, width, backend, where)
  if prior.detail == (0.0, 0.0) and prior.wrinkles == (0.0, 0.0) and prior.marks == (0.0, 0.0):
    displacement, normals = jnp.zeros_like(face.depth), face.normals  # smooth faces
  else:
    # The face's width in pixels: f times the model's x extent (the PNCC's u
    # runs across it).
    extent = jnp.max(model.mean_shape[:, 0]) - jnp.min(model.mean_shape[:, 0])
    face_width = sample.params[:, params_lib.SCALE] * extent
    displacement = jnp.zeros_like(face.depth)
    if prior.detail != (0.0, 0.0):
      displacement = detail_displacement(sample.detail, face.pncc, face.mask, face_width)
    if prior.wrinkles != (0.0, 0.0):
      displacement = displacement + face_width[:, None, None] * jax.vmap(
          lambda w, pncc, mask: wrinkles_lib.wrinkle_height(w, pncc, mask, where))(
              sample.wrinkles, face.pncc, face.mask)
    if prior.marks != (0.0, 0.0):
      displacement = displacement + face_width[:, None, None] * jax.vmap(
          lambda m, pncc, mask: skin_marks.mark_height(m, pncc, mask, where))(
              sample.marks, face.pncc, face.mask)
    # Normals of depth + displacement: n + n_z (-dd/dcolumn, dd/drow, 0) is
    # parallel to (-dz/dcolumn, dz/drow, 1) of the detailed surface.
    d_col, d_row, _ = shading.depth_gradient(displacement, face.mask)
    normals = face.normals + face.normals[..., 2:3] * jnp.stack(
        [-d_col, d_row, jnp.zeros_like(d_col)], axis=-1)
    normals = normals * jax.lax.rsqrt(jnp.maximum(
        normals[..., 0:1] ** 2 + normals[..., 1:2] ** 2 + normals[..., 2:3] ** 2, 1e-12))
  if prior.procedural_albedo:
    if prior.cast_shadows:
      # In shadow, all but the main light's share: both from one basis.
      main = shading.sh9_directional(sample.highlight[:, :3], sample.main_light)
      both = shading.sh9_irradiance(normals, jnp.concatenate([sample.light, main], axis=-1))
      irradiance = both[..., :3] - (1.0 - face.extra[..., 1:2]) * jnp.maximum(both[..., 3:], 0.0)
    else:
      irradiance = shading.sh9_irradiance(normals, sample.light)
    irradiance = jnp.maximum(irradiance, 0.0)
    linear = face.albedo * irradiance
    if prior.specular:
      # Blinn-Phong with the main light; the viewer looks down -z.
      half = sample.highlight[:, None, None, :3] + jnp.asarray([0.0, 0.0, 1.0])
      half = half / jnp.linalg.norm(half, axis=-1, keepdims=True)
      cosine = jnp.maximum(jnp.sum(normals * half, axis=-1), 0.0)
      strength = face.extra[..., 0] * jnp.mean(sample.light[:, None, None, 1:4], axis=-1).sum(-1)
      if prior.cast_shadows:
        strength = strength * face.extra[..., 1]
      linear = linear + (strength * cosine ** sample.highlight[:, None, None, 3])[..., None]
    shaded = jnp.maximum(linear, 0.0) ** (1.0 / GAMMA)
  else:
    irradiance = jnp.maximum(shading.sh_irradiance(normals, sample.lighting), 0.0)
    shaded = face.albedo * irradiance[..., None]
  return face, displacement, colour_transform(shaded, sample.colour)


def render_sample(model: morphable.MorphableModel, sample: FaceSample, background,
                  height: int, width: int, backend: str | None = None,
                  noise=None, prior: FacePrior = FacePrior()) -> SyntheticBatch:
  """Renders a batch of drawn faces over backgrounds [B, H, W, 3] in [0, 1];
  `noise` [B, H, W, 3] (or None) is added before quantising to uint8."""
  face, displacement, shaded = _shade(model, sample, prior, height, width, backend)
  landmarks = face_render.image_landmarks(model, face.image_vertices)
  image = jnp.where(face.mask[..., None], shaded, background)
  if noise is not None:
    image = image + noise
  image = jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0).astype(jnp.uint8)
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
  or None for procedural ones. Jit with static prior, sizes and backend.
  The prior's scene fields (photo backgrounds, clutter, occluders, blur,
  grey, JPEG) are applied afterwards on the host (`generate_photos`)."""
  split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  sample = jax.vmap(lambda k: sample_face(k, model, prior, height, width))(split[:, 0])
  if backgrounds is None:
    backgrounds = jax.vmap(lambda k: procedural_background(k, height, width))(split[:, 1])
  half_width = prior.noise * np.sqrt(3.0)
  noise = jax.vmap(lambda k: uniform_noise(k, (height, width, 3), half_width))(split[:, 2])
  return render_sample(model, sample, backgrounds, height, width, backend, noise, prior)


generate_jit = jax.jit(generate, static_argnames=("prior", "height", "width", "backend"))


@functools.partial(jax.jit, static_argnames=("prior", "height", "width", "backend"))
def albedo_maps(model: morphable.MorphableModel, keys, prior: FacePrior, height: int,
                width: int, backend: str | None = None):
  """The albedo [B, H, W, 3] of the faces `generate` draws from `keys` (0 off
  the face; linear where the prior paints its own): what the photo's colour
  is before light, for evaluations (the training batches do not carry it)."""
  split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  sample = jax.vmap(lambda k: sample_face(k, model, prior, height, width))(split[:, 0])
  face = _render(model, sample, prior, height, width, backend)
  return jnp.where(face.mask[..., None], face.albedo, 0.0)


def has_scene(prior: FacePrior) -> bool:
  """Whether the prior asks for the host-side scene (`generate_photos`)."""
  return any(getattr(prior, name) > 0 for name in
             ("photo_backgrounds", "clutter", "occluders", "long_hair", "glasses", "headwear",
              "other_heads", "blur", "grey", "jpeg")) or scenes.has_tone(prior)


def generate_photos(model: morphable.MorphableModel, seed: int, start: int, count: int,
                    prior: FacePrior, height: int, width: int, photos=None,
                    backend: str | None = None) -> SyntheticBatch:
  """Samples start .. start + count - 1 of `seed`, rendered (`generate_jit`)
  and finished on the host (`scenes.finish_photo`: photo backgrounds from
  `photos` [M, S, S, 3] uint8, clutter, occluders, blur, grey, JPEG), as a
  SyntheticBatch of numpy arrays. The same faces whatever the batching."""
  keys = sample_keys(seed, start, count)
  batch = jax.tree.map(np.asarray, generate_jit(model, keys, prior, height, width,
                                                backend=backend))
  return finish_photos(batch, prior, seed, start, photos)


def finish_photos(batch: SyntheticBatch, prior: FacePrior, seed: int, start: int,
                  photos=None) -> SyntheticBatch:
  """The host-side scene (`scenes.finish_photo`) of samples start, start + 1,
  ... of `seed`, rendered as the numpy `batch`: each photo's draws come from
  its own generator of (version, seed, index)."""
  if not has_scene(prior):
    return batch
  images = batch.image.copy()
  for k in range(len(images)):
    rng = np.random.default_rng([GENERATOR_VERSION, seed, start + k])
    images[k] = scenes.finish_photo(rng, batch.image[k], batch.mask[k], batch.landmarks[k],
                                    prior, photos)
  return batch._replace(image=images)
