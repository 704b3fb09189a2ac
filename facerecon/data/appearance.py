"""What synthetic faces look like: procedural albedo per vertex and light.

Model-agnostic: regions (brows, lips, beard, scalp, eyelids, cheeks) are
placed from the model's mean shape and its 68 landmarks, in units of the
distance between the outer eye corners, so the same code paints ICT-FaceKit's
head, the BFM's face or the built-in procedural face. Parts a model names
(`morphable.model_parts`: irises, scleras, teeth, gums, mouth socket,
eyelashes, ...) get their own colours; a model without parts is all skin.

Skin tones span the human range (a light-to-dark axis in linear RGB with
hue jitter), with blotches (low-frequency waves over the texture
coordinates), freckles and per-vertex grain; eyebrows of varied thickness
and density, lips, stubble and beards, eye shadow and blush, hair on the
scalp at a varied hairline (or none), irises of varied colour with a pupil.
All of it is drawn per face from a key (`sample_appearance`) and painted by
`vertex_albedo`, a pure function: jit- and vmap-able.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import morphable

# Linear-RGB albedos at the two ends of the skin axis, and hair colours
# (black and dark brown twice as often as brown, auburn, blond, grey).
_SKIN_LIGHT = (0.78, 0.56, 0.45)
_SKIN_DARK = (0.13, 0.075, 0.05)
_HAIR = ((0.02, 0.015, 0.012), (0.02, 0.015, 0.012), (0.05, 0.03, 0.02), (0.05, 0.03, 0.02),
         (0.12, 0.07, 0.04), (0.25, 0.10, 0.05), (0.45, 0.32, 0.17), (0.35, 0.34, 0.33))
_IRIS = ((0.18, 0.09, 0.04), (0.08, 0.04, 0.02), (0.20, 0.30, 0.45), (0.22, 0.30, 0.16),
         (0.30, 0.30, 0.30))
BLOTCH_WAVES = 4
IRIS_RADIUS = 0.55  # of the eyeball's radius (a 12 mm ball shows a 6-6.5 mm iris)

# Colours of parts by name (substring match), linear RGB.
_PART_COLOURS = {"teeth": (0.75, 0.70, 0.58), "gums": (0.55, 0.20, 0.22),
                 "mouth_socket": (0.25, 0.06, 0.07), "sclera": (0.45, 0.40, 0.37),
                 "eyelashes": (0.03, 0.02, 0.02), "eye_socket": (0.35, 0.20, 0.17)}


class Appearance(NamedTuple):
  """One face's draws (vmap for a batch)."""
  skin: jax.Array         # [3] base albedo
  blotches: jax.Array     # [BLOTCH_WAVES, 4] amplitude, frequency u, v, phase
  freckles: jax.Array     # [] density in [0, 1]
  grain: jax.Array        # [] per-vertex albedo noise amplitude
  hair: jax.Array         # [3] hair colour
  hairline: jax.Array     # [] hairline height above the nose bridge, eye widths
  hair_amount: jax.Array  # [] 0: bald .. 1: full
  brows: jax.Array        # [2] thickness (eye widths), density
  beard: jax.Array        # [] density (0: shaved)
  lips: jax.Array         # [3] lip colour
  makeup: jax.Array       # [4] eye shadow colour (3), strength
  blush: jax.Array        # [] strength
  iris: jax.Array         # [3]
  pupil: jax.Array        # [] pupil radius, a fraction of the iris's
  tint: jax.Array         # [3] teeth / sclera tint
  specular: jax.Array     # [] specular strength
  seed: jax.Array         # [2] uint32 for per-vertex noise


def _uniform(key, shape=(), low=0.0, high=1.0):
  return jax.random.uniform(key, shape, minval=low, maxval=high)


def sample_appearance(key) -> Appearance:
  keys = jax.random.split(key, 24)
  tone = _uniform(keys[0]) ** 1.3  # 0: light .. 1: dark, lighter tones a little more often
  light, dark = jnp.asarray(_SKIN_LIGHT), jnp.asarray(_SKIN_DARK)
  skin = jnp.exp((1 - tone) * jnp.log(light) + tone * jnp.log(dark))
  skin = skin * jnp.exp(_uniform(keys[1], (3,), -0.07, 0.07))  # hue jitter
  blotches = jnp.concatenate([
      _uniform(keys[2], (BLOTCH_WAVES, 1), 0.0, 0.08),
      _uniform(keys[3], (BLOTCH_WAVES, 2), -12.0, 12.0),
      _uniform(keys[4], (BLOTCH_WAVES, 1), 0.0, 2 * np.pi)], axis=-1)
  freckles = jnp.where(_uniform(keys[5]) < 0.2, _uniform(keys[6], (), 0.05, 0.35), 0.0)
  hair_index = jax.random.randint(keys[7], (), 0, len(_HAIR))
  hair = jnp.asarray(_HAIR)[hair_index] * jnp.exp(_uniform(keys[8], (3,), -0.25, 0.25))
  hair_amount = jnp.where(_uniform(keys[9]) < 0.15, 0.0, _uniform(keys[10], (), 0.9, 1.0))
  brows = jnp.stack([_uniform(keys[11], (), 0.035, 0.09), _uniform(keys[12], (), 0.3, 1.0)])
  beard = jnp.where(_uniform(keys[13]) < 0.3, _uniform(keys[14], (), 0.1, 1.0), 0.0)
  lips = skin * jnp.asarray([1.05, 0.62, 0.62]) * _uniform(keys[15], (), 0.6, 1.0)
  lipstick = _uniform(keys[16], (4,))
  lips = jnp.where(lipstick[0] < 0.15, lipstick[1:] * jnp.asarray([0.6, 0.12, 0.2]), lips)
  makeup = jnp.concatenate([_uniform(keys[17], (3,), 0.02, 0.4),
                            jnp.where(lipstick[0] < 0.25, lipstick[1:2], 0.0)])
  iris_keys = jax.random.split(keys[18], 4)
  iris = (jnp.asarray(_IRIS)[jax.random.randint(iris_keys[0], (), 0, len(_IRIS))]
          * jnp.exp(_uniform(iris_keys[1], (3,), -0.3, 0.3)))
  tint = jnp.exp(_uniform(iris_keys[2], (3,), -0.15, 0.05))
  return Appearance(
      skin=skin, blotches=blotches, freckles=freckles,
      grain=_uniform(keys[19], (), 0.01, 0.05), hair=hair,
      hairline=_uniform(iris_keys[3], (), 0.45, 0.9), hair_amount=hair_amount, brows=brows,
      beard=beard, lips=lips, makeup=makeup, blush=_uniform(keys[20], (), 0.0, 0.25),
      iris=iris, pupil=_uniform(keys[23], (), 0.25, 0.5), tint=tint,
      specular=_uniform(keys[21], (), 0.0, 0.35),
      seed=jax.random.bits(keys[22], (2,), jnp.uint32))


def mix32(x):
  """An invertible 32-bit integer hash (Wellons' lowbias32)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def hash_uniform(index, seed):
  """Uniform [0, 1) per uint32 index and seed [2] (a hash: fast, no key splits)."""
  words = mix32(mix32(index ^ seed[0]) + seed[1])
  return (words >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


class VertexRegions(NamedTuple):
  """Where things are on the mean face, per vertex [N] (no batch)."""
  height: jax.Array      # y above the nose bridge, in eye widths
  behind: jax.Array      # how far behind the jaw corners (z), in eye widths
  brow_distance: jax.Array
  lips: jax.Array        # in [0, 1]
  beard: jax.Array       # in [0, 1]
  eyelids: jax.Array     # in [0, 1]
  cheeks: jax.Array      # in [0, 1]
  surface: jax.Array     # [N] bool: on a surface part (skin)


def _smoothstep(x):
  x = jnp.clip(x, 0.0, 1.0)
  return x * x * (3 - 2 * x)


def _segment_distance(points, a, b):
  """Distance of points [N, 3] to the segments a [S, 3] -> b [S, 3]: [N]."""
  ab = b - a
  t = jnp.clip(jnp.einsum("nsk,sk->ns", points[:, None] - a[None], ab)
               / jnp.maximum(jnp.sum(ab * ab, -1), 1e-12), 0.0, 1.0)
  closest = a[None] + t[..., None] * ab[None]
  return jnp.min(jnp.sqrt(jnp.sum((points[:, None] - closest) ** 2, -1)), axis=-1)


def _polyline(landmarks, indices):
  return landmarks[np.asarray(indices[:-1])], landmarks[np.asarray(indices[1:])]


def _inside_polygon(xy, polygon):
  """Crossing-number test of points [N, 2] in a closed polygon [S, 2]: [N] bool."""
  a, b = polygon, jnp.roll(polygon, -1, axis=0)
  y = xy[:, None, 1]
  crosses = (a[None, :, 1] > y) != (b[None, :, 1] > y)
  t = (y - a[None, :, 1]) / jnp.where(b[:, 1] == a[:, 1], 1e-12, b[:, 1] - a[:, 1])[None]
  x_cross = a[None, :, 0] + t * (b[None, :, 0] - a[None, :, 0])
  return (jnp.sum(crosses & (xy[:, None, 0] < x_cross), axis=-1) % 2) == 1


def vertex_regions(model: morphable.MorphableModel) -> VertexRegions:
  """The regions of `model`'s mean face (jnp: works on traced models)."""
  mean = model.mean_shape
  lm = jnp.take(mean, model.landmark_indices, axis=0)
  unit = jnp.linalg.norm(lm[36] - lm[45])
  p = (mean - lm[27]) / unit
  q = (lm - lm[27]) / unit
  height = p[:, 1]
  behind = (0.5 * (q[0, 2] + q[16, 2])) - p[:, 2]
  brow_a, brow_b = _polyline(q, [17, 18, 19, 20, 21])
  brow_c, brow_d = _polyline(q, [22, 23, 24, 25, 26])
  brow_distance = _segment_distance(p, jnp.concatenate([brow_a, brow_c]),
                                    jnp.concatenate([brow_b, brow_d]))
  lip_a, lip_b = _polyline(q, list(range(48, 60)) + [48])
  front = _smoothstep((p[:, 2] - (q[51, 2] - 0.25)) / 0.1)
  inside = _inside_polygon(p[:, :2], q[48:60, :2]).astype(jnp.float32)
  lip_edge = jnp.exp(-jnp.square(_segment_distance(p, lip_a, lip_b) / 0.025))
  lips = jnp.maximum(inside, lip_edge) * front
  below_nose = _smoothstep((q[33, 1] - 0.03 - height) / 0.06)
  above_neck = _smoothstep((height - (q[8, 1] - 0.35)) / 0.1)
  jaw_front = _smoothstep((p[:, 2] - (0.5 * (q[0, 2] + q[16, 2]) - 0.15)) / 0.1)
  beard = below_nose * above_neck * jaw_front * (1.0 - lips)
  eye_a, eye_b = _polyline(q, [36, 37, 38, 39, 42, 43, 44, 45])
  above_eye = _smoothstep((height - 0.5 * (q[37, 1] + q[44, 1]) + 0.02) / 0.05)
  eyelids = jnp.exp(-jnp.square(_segment_distance(p, eye_a, eye_b) / 0.12)) * above_eye
  cheek_centres = jnp.stack([0.5 * (q[2] + q[31]), 0.5 * (q[14] + q[35])])
  cheek_distance = jnp.min(jnp.linalg.norm(p[:, None] - cheek_centres[None], axis=-1), -1)
  cheeks = jnp.exp(-jnp.square(cheek_distance / 0.18))
  surface_vertices, _ = morphable.surface_size(model)
  surface = np.arange(model.num_vertices) < surface_vertices
  return VertexRegions(height, behind, brow_distance, lips, beard, eyelids, cheeks,
                       jnp.asarray(surface))


def _part_masks(model: morphable.MorphableModel) -> dict[str, np.ndarray]:
  """Name fragment -> [N] float mask of the parts whose name contains it."""
  masks = {}
  for part in morphable.model_parts(model):
    for fragment in ("teeth", "gums", "mouth_socket", "sclera", "iris", "eyelashes",
                     "eye_socket"):
      if fragment in part.name:
        mask = masks.setdefault(fragment, np.zeros(model.num_vertices, np.float32))
        mask[part.vertices[0]:part.vertices[1]] = 1.0
  return masks


def _eye_discs(model: morphable.MorphableModel):
  """[N]: each eye vertex's distance across (in x, y) from its eye's front,
  in eyeball radii.

  The visible shell of an eye (ICT-FaceKit's 'sclera' part, the cornea and
  white that cover its 'iris' ball) carries the iris: a disc around the
  front-most vertex (the face looks down +z). Both eye parts are painted by
  this distance; other vertices read 2 (outside every disc)."""
  distance = jnp.full(model.num_vertices, 2.0)
  for part in morphable.model_parts(model):
    if "iris" not in part.name and "sclera" not in part.name:
      continue
    v0, v1 = part.vertices
    eye = model.mean_shape[v0:v1]
    front = eye[jnp.argmax(eye[:, 2])]
    radius = 0.5 * (jnp.max(eye[:, 0]) - jnp.min(eye[:, 0]))
    across = jnp.linalg.norm(eye[:, :2] - front[:2], axis=-1) / jnp.maximum(radius, 1e-6)
    # Behind the front half the disc must not reappear.
    across = jnp.where(eye[:, 2] > front[2] - radius, across, 2.0)
    distance = distance.at[v0:v1].set(across)
  return distance


def vertex_albedo(model: morphable.MorphableModel, regions: VertexRegions,
                  look: Appearance):
  """One face's albedo [N, 3] in [0, 1] (linear RGB) and specular weight [N]."""
  n = model.num_vertices
  index = jnp.arange(n, dtype=jnp.uint32)
  noise = hash_uniform(index, look.seed)
  noise2 = hash_uniform(index + jnp.uint32(n), look.seed)
  uv = morphable.vertex_uv(model)
  waves = look.blotches
  blotch = jnp.sum(waves[:, 0] * jnp.sin(uv[:, 0:1] * waves[:, 1] + uv[:, 1:2] * waves[:, 2]
                                         + waves[:, 3]), axis=-1)
  skin = look.skin[None] * jnp.exp(blotch + look.grain * (2 * noise - 1))[:, None]
  freckle = (noise2 < look.freckles * 0.3) * regions.cheeks.clip(0.3, 1.0)
  skin = skin * (1.0 - 0.35 * freckle[:, None])
  skin = skin * (1.0 + look.blush * regions.cheeks[:, None] * jnp.asarray([0.25, -0.1, -0.1]))
  skin = skin * (1.0 - look.makeup[3] * regions.eyelids[:, None]) + \
      look.makeup[3] * regions.eyelids[:, None] * look.makeup[None, :3]
  # Lips, brows, beard, scalp hair, blended over the skin.
  albedo = skin + regions.lips[:, None] * (look.lips[None] - skin)
  brow = jnp.exp(-jnp.square(regions.brow_distance / look.brows[0])) * look.brows[1]
  brow = brow * (noise < 0.85)
  albedo = albedo + brow[:, None] * (look.hair[None] - albedo)
  stubble = regions.beard * look.beard * (noise2 < 0.3 + 0.7 * look.beard)
  albedo = albedo + stubble[:, None] * (look.hair[None] - albedo)
  scalp = jnp.maximum(_smoothstep((regions.height - look.hairline) / 0.08),
                      _smoothstep((regions.behind + 0.1) / 0.15)
                      * _smoothstep((regions.height + 0.2) / 0.15))
  hair = scalp * look.hair_amount
  # Strands: per-vertex streaks much stronger than the skin's grain.
  strands = look.hair[None] * (0.4 + 1.2 * noise2[:, None])
  albedo = albedo + hair[:, None] * (strands - albedo)
  albedo = jnp.where(regions.surface[:, None], albedo, look.skin[None] * 0.6)
  specular = jnp.where(regions.surface, (1.0 - 0.8 * hair) * (1.0 - 0.5 * regions.lips), 0.3)
  # Parts: eyes, mouth, eyelashes.
  masks = _part_masks(model)
  for fragment, colour in _PART_COLOURS.items():
    if fragment in masks:
      paint = jnp.asarray(colour)
      if fragment in ("teeth", "sclera"):
        paint = paint * look.tint
      if fragment == "eyelashes":
        paint = jnp.minimum(look.hair * 0.5, paint * 3)
      mask = jnp.asarray(masks[fragment])[:, None]
      albedo = albedo * (1 - mask) + mask * paint * (0.9 + 0.2 * noise[:, None])
  eyes = [masks[k] for k in ("sclera", "iris") if k in masks]
  if eyes:
    across = _eye_discs(model)[:, None]
    iris_weight = 1.0 - _smoothstep((across - IRIS_RADIUS) / 0.06)
    # Darker towards the limbus, the pupil near black.
    iris = look.iris[None] * (0.7 + 0.6 * noise[:, None]) * (
        1.0 - 0.5 * _smoothstep((across - 0.6 * IRIS_RADIUS) / (0.4 * IRIS_RADIUS)))
    iris = iris + (1.0 - _smoothstep((across - look.pupil * IRIS_RADIUS) / 0.04)) * (0.01 - iris)
    mask = jnp.asarray(sum(eyes))[:, None] * iris_weight
    albedo = albedo * (1 - mask) + mask * iris
  wet = sum(jnp.asarray(masks[k]) for k in ("sclera", "iris", "teeth") if k in masks)
  specular = jnp.where(jnp.asarray(wet) > 0, 1.5, specular) if masks else specular
  return jnp.clip(albedo, 0.0, 1.0), specular * look.specular
