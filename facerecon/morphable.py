"""The 3D morphable face model: one immutable pytree and pure functions on it.

    vertices = mean_shape + shape @ shape_basis + expression @ expression_basis
    colours  = texture_mean + texture @ texture_basis

Vertices are [N, 3] (x, y, z) in model units (the BFM's: about one unit per
micrometre). `mean_shape` already includes the mean expression offset (the
BFM/3DDFA `mu_shape + mu_exp`). Bases are stored de-interleaved as [K, N, 3];
coefficients are in absolute units with per-mode standard deviations
`*_std`, like 300W-LP / AFLW2000-3D labels. Triangles are 0-based and wound
counter-clockwise seen from outside, so `vertex_normals` point out of the face.
Texture values are RGB in [0, 255] like the BFM's.

A model may also say what its vertices are (`parts`): named vertex and
triangle ranges, each with a role. 'surface' parts (a face mask, or face,
head and neck) come first and are what the losses, the evaluation and the
dense mesh output use (`surface`); 'rendered' parts (eyeballs, teeth, mouth
interior, eyelashes) only appear in rendered photos. A model without parts
is all surface. Its expression modes are 'gaussian' (coefficients ~ N(0,
std^2), like the BFM's) or 'blendshape' (weights in [0, 1], mostly zero, like
ARKit's), with names; `uv` gives texture coordinates per vertex.

All functions take the model as an argument (never close over it inside jit:
it would be baked into the program as constants) and accept any leading batch
dims on the coefficients.
"""

import dataclasses
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.spatial

from facerecon import fileio
from facerecon import params as params_lib

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 files (no parts, names, kinds, uv) still load
NUM_LANDMARKS = 68
SURFACE = "surface"    # used by losses, evaluation and the dense mesh output
RENDERED = "rendered"  # only drawn in rendered photos
ROLES = (SURFACE, RENDERED)
GAUSSIAN = "gaussian"      # expression ~ N(0, std^2)
BLENDSHAPE = "blendshape"  # expression weights in [0, 1]
EXPRESSION_KINDS = (GAUSSIAN, BLENDSHAPE)
# Fields a model file may store in float16 (`save_model(compact=True)`):
# loading restores float32.
COMPACT_FIELDS = ("shape_basis", "expression_basis", "texture_basis")

# Field name -> (rank, dtype) of the model file; shapes are cross-checked in
# `validate`.
FIELDS = {
    "mean_shape": (2, np.float32),
    "shape_basis": (3, np.float32),
    "shape_std": (1, np.float32),
    "expression_basis": (3, np.float32),
    "expression_std": (1, np.float32),
    "texture_mean": (2, np.float32),
    "texture_basis": (3, np.float32),
    "texture_std": (1, np.float32),
    "triangles": (2, np.int32),
    "landmark_indices": (1, np.int32),
    "pncc": (2, np.float32),
}


class Part(NamedTuple):
  """A named piece of the mesh: vertices [start, stop) and triangles [start, stop)."""
  name: str
  role: str  # SURFACE or RENDERED
  vertices: tuple[int, int]
  triangles: tuple[int, int]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=list(FIELDS) + ["uv"],
    meta_fields=["parts", "expression_names", "expression_kind"])
@dataclasses.dataclass(frozen=True)
class MorphableModel:
  mean_shape: jax.Array        # [N, 3]
  shape_basis: jax.Array       # [Ks, N, 3]
  shape_std: jax.Array         # [Ks]
  expression_basis: jax.Array  # [Ke, N, 3]
  expression_std: jax.Array    # [Ke]
  texture_mean: jax.Array      # [N, 3], RGB 0..255
  texture_basis: jax.Array     # [Kt, N, 3]
  texture_std: jax.Array       # [Kt]
  triangles: jax.Array         # [T, 3] int32, 0-based, CCW from outside
  landmark_indices: jax.Array  # [68] int32, iBUG order
  pncc: jax.Array              # [N, 3] in [0, 1]: the PNCC vertex code
  uv: jax.Array | None = None  # [N, 2] texture coordinates; None: the PNCC's (x, y)
  parts: tuple[Part, ...] = ()  # () : one surface part, the whole mesh
  expression_names: tuple[str, ...] = ()  # () : unnamed
  expression_kind: str = GAUSSIAN

  @property
  def num_vertices(self) -> int:
    return self.mean_shape.shape[0]

  @property
  def num_triangles(self) -> int:
    return self.triangles.shape[0]

  @property
  def layout(self) -> params_lib.ParamLayout:
    return params_lib.ParamLayout.for_model(self)


def validate(model: MorphableModel, source: str = "model") -> MorphableModel:
  """Checks ranks, dtypes and cross-field sizes; returns the model.

  Errors name `source` (a file path, usually) and the offending field.
  """
  for name, (rank, dtype) in FIELDS.items():
    value = getattr(model, name)
    if np.ndim(value) != rank:
      raise ValueError(f"{source}: field '{name}' has rank {np.ndim(value)} "
                       f"(shape {np.shape(value)}), expected rank {rank}")
    if np.asarray(value).dtype != dtype:
      raise ValueError(f"{source}: field '{name}' has dtype "
                       f"{np.asarray(value).dtype}, expected {np.dtype(dtype)}")
  n = model.mean_shape.shape[0]
  expect = {
      "mean_shape": (n, 3),
      "shape_basis": (model.shape_std.shape[0], n, 3),
      "expression_basis": (model.expression_std.shape[0], n, 3),
      "texture_mean": (n, 3),
      "texture_basis": (model.texture_std.shape[0], n, 3),
      "pncc": (n, 3),
      "landmark_indices": (NUM_LANDMARKS,),
  }
  for name, shape in expect.items():
    if tuple(np.shape(getattr(model, name))) != shape:
      raise ValueError(f"{source}: field '{name}' has shape "
                       f"{np.shape(getattr(model, name))}, expected {shape}")
  if model.triangles.shape[1:] != (3,):
    raise ValueError(f"{source}: field 'triangles' has shape "
                     f"{model.triangles.shape}, expected (T, 3)")
  for name in ("triangles", "landmark_indices"):
    index = np.asarray(getattr(model, name))
    if index.size and (index.min() < 0 or index.max() >= n):
      raise ValueError(f"{source}: field '{name}' has indices in "
                       f"[{index.min()}, {index.max()}], outside [0, {n})")
  for name in FIELDS:
    value = np.asarray(getattr(model, name))
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
      raise ValueError(f"{source}: field '{name}' contains NaN or inf")
  if model.uv is not None:
    uv = np.asarray(model.uv)
    if uv.shape != (n, 2) or uv.dtype != np.float32 or not np.all(np.isfinite(uv)):
      raise ValueError(f"{source}: field 'uv' has shape {uv.shape} and dtype {uv.dtype}, "
                       f"expected finite float32 ({n}, 2)")
  if model.expression_kind not in EXPRESSION_KINDS:
    raise ValueError(f"{source}: expression kind {model.expression_kind!r} is not one of "
                     f"{EXPRESSION_KINDS}")
  if model.expression_names and len(model.expression_names) != model.expression_std.shape[0]:
    raise ValueError(f"{source}: {len(model.expression_names)} expression names for "
                     f"{model.expression_std.shape[0]} expression modes")
  _validate_parts(model, source)
  return model


def _validate_parts(model: MorphableModel, source: str) -> None:
  """Parts tile the vertices and triangles in order, surface parts first,
  and surface triangles use only surface vertices."""
  vertex_end = triangle_end = 0
  seen_rendered = False
  for part in model_parts(model):
    if part.role not in ROLES:
      raise ValueError(f"{source}: part {part.name!r} has role {part.role!r}, not one of {ROLES}")
    if part.role == RENDERED:
      seen_rendered = True
    elif seen_rendered:
      raise ValueError(f"{source}: surface part {part.name!r} comes after a rendered part "
                       f"(surface parts must come first)")
    if (part.vertices[0] != vertex_end or part.triangles[0] != triangle_end
        or part.vertices[1] < part.vertices[0] or part.triangles[1] < part.triangles[0]):
      raise ValueError(f"{source}: part {part.name!r} has vertices {part.vertices} and "
                       f"triangles {part.triangles}; parts must tile the mesh in order "
                       f"(next vertex {vertex_end}, next triangle {triangle_end})")
    vertex_end, triangle_end = part.vertices[1], part.triangles[1]
  if (vertex_end, triangle_end) != (model.num_vertices, model.num_triangles):
    raise ValueError(f"{source}: parts cover {vertex_end} vertices and {triangle_end} "
                     f"triangles, the mesh has {model.num_vertices} and {model.num_triangles}")
  num_vertices, num_triangles = surface_size(model)
  surface_triangles = np.asarray(model.triangles[:num_triangles])
  if surface_triangles.size and surface_triangles.max() >= num_vertices:
    raise ValueError(f"{source}: surface triangles use vertex {surface_triangles.max()}, "
                     f"beyond the {num_vertices} surface vertices")
  if np.max(np.asarray(model.landmark_indices)) >= num_vertices:
    raise ValueError(f"{source}: field 'landmark_indices' has vertices beyond the "
                     f"{num_vertices} surface vertices")


def model_parts(model: MorphableModel) -> tuple[Part, ...]:
  """The model's parts; one surface part for a model that names none."""
  if model.parts:
    return model.parts
  return (Part("face", SURFACE, (0, model.num_vertices), (0, model.num_triangles)),)


def surface_size(model: MorphableModel) -> tuple[int, int]:
  """(vertices, triangles) of the surface parts, which come first."""
  surface = [part for part in model_parts(model) if part.role == SURFACE]
  if not surface:
    return 0, 0
  return surface[-1].vertices[1], surface[-1].triangles[1]


def surface(model: MorphableModel) -> MorphableModel:
  """The model cut to its surface parts (what losses, evaluation and the
  dense mesh output use): the same parameter layout and landmarks, fewer
  vertices. The model itself when it is all surface."""
  num_vertices, num_triangles = surface_size(model)
  if (num_vertices, num_triangles) == (model.num_vertices, model.num_triangles):
    return model
  cut = lambda a: a[..., :num_vertices, :]
  return dataclasses.replace(
      model, mean_shape=cut(model.mean_shape), shape_basis=cut(model.shape_basis),
      expression_basis=cut(model.expression_basis), texture_mean=cut(model.texture_mean),
      texture_basis=cut(model.texture_basis), triangles=model.triangles[:num_triangles],
      pncc=cut(model.pncc), uv=None if model.uv is None else cut(model.uv),
      parts=tuple(p for p in model_parts(model) if p.role == SURFACE))


def vertex_uv(model: MorphableModel):
  """Texture coordinates [N, 2]: the model's own, or its PNCC's (x, y) (a
  frontal projection of the mean face, a fine layout for a face mask)."""
  return model.pncc[:, :2] if model.uv is None else model.uv


def part_index(model: MorphableModel) -> np.ndarray:
  """[N] int32: each vertex's part (the position in `model_parts`)."""
  index = np.zeros(model.num_vertices, np.int32)
  for k, part in enumerate(model_parts(model)):
    index[part.vertices[0]:part.vertices[1]] = k
  return index


def apply_basis(coefficients, basis):
  """Coefficients [..., K] times a basis [K, N, C] -> [..., N, C].

  One 2-D matrix product on the flattened basis. Written as a tensordot over
  [K, N, 3], the same contraction has the same forward time on XLA's CPU,
  but forward+backward took up to 7x longer (batch 1; benchmarks/morphable.py)."""
  k, n, c = basis.shape
  flat = coefficients @ basis.reshape(k, n * c)
  return flat.reshape(flat.shape[:-1] + (n, c))


def vertices(model: MorphableModel, shape, expression):
  """Coefficients [..., Ks] and [..., Ke] -> vertices [..., N, 3]."""
  return model.mean_shape + vertex_offsets(model, shape, expression)


def vertex_offsets(model: MorphableModel, shape, expression):
  """Coefficients [..., Ks] and [..., Ke] -> the vertices' offsets from the
  mean shape [..., N, 3]. The model is linear, so two faces' vertices differ
  by the offsets of their coefficients' difference."""
  return (apply_basis(shape, model.shape_basis)
          + apply_basis(expression, model.expression_basis))


def vertices_from_params(model: MorphableModel, params):
  """A full parameter vector [..., 7 + Ks + Ke] -> model-space vertices."""
  face = params_lib.split(params, model.layout)
  return vertices(model, face.shape, face.expression)


def vertex_colors(model: MorphableModel, texture):
  """Texture coefficients [..., Kt] -> per-vertex RGB [..., N, 3] (0..255, unclipped)."""
  return model.texture_mean + apply_basis(texture, model.texture_basis)


def face_normals(vertices, triangles):
  """Unnormalised triangle normals (length = 2 x area): [..., N, 3] -> [..., T, 3]."""
  corners = jnp.take(vertices, triangles, axis=-2)  # [..., T, 3, 3]
  return jnp.cross(corners[..., 1, :] - corners[..., 0, :],
                   corners[..., 2, :] - corners[..., 0, :])


def vertex_normals(vertices, triangles):
  """Area-weighted unit vertex normals [..., N, 3]; zero for unused vertices."""
  per_face = face_normals(vertices, triangles)
  batch = per_face.shape[:-2]
  summed = jnp.zeros(batch + (vertices.shape[-2], 3), per_face.dtype)
  for corner in range(3):
    summed = summed.at[..., triangles[:, corner], :].add(per_face)
  sq = jnp.sum(summed * summed, axis=-1, keepdims=True)
  # Guard both the value and the gradient of the norm at isolated vertices.
  safe = jnp.where(sq > 0, sq, 1.0)
  return jnp.where(sq > 0, summed * jax.lax.rsqrt(safe), 0.0)


def landmarks(model: MorphableModel, vertices):
  """The 68 iBUG landmark vertices: [..., N, 3] -> [..., 68, 3]."""
  return jnp.take(vertices, model.landmark_indices, axis=-2)


def landmarks_from_params(model: MorphableModel, params):
  """The 68 landmark vertices of parameter vectors [..., P] -> [..., 68, 3]
  (only their rows of the bases are used)."""
  face = params_lib.split(params, model.layout)
  rows = model.landmark_indices
  return (jnp.take(model.mean_shape, rows, axis=0)
          + apply_basis(face.shape, jnp.take(model.shape_basis, rows, axis=1))
          + apply_basis(face.expression, jnp.take(model.expression_basis, rows, axis=1)))


# Landmark k of a face is landmark LANDMARK_MIRROR[k] of its mirror image
# (iBUG 68: the jaw, brows, nostrils, eyes and lips swap sides; the nose's
# ridge and the midline points stay).
LANDMARK_MIRROR = (tuple(range(16, -1, -1)) + tuple(range(26, 16, -1)) + (27, 28, 29, 30)
                   + (35, 34, 33, 32, 31) + (45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40)
                   + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55)
                   + (64, 63, 62, 61, 60, 67, 66, 65))


# --- Left-right mirroring -----------------------------------------------------------------

MIRROR_TOLERANCE = 0.01  # of the face's size: how far a vertex's mirror partner may be
# How much of a basis's mirror image its own modes may miss (relative norm;
# ICT-FaceKit's: 0.4 %; the embedded model's expressions: 10.5 %, not symmetric).
MIRROR_BASIS_TOLERANCE = 0.02


class MirrorMaps(NamedTuple):
  """Coefficient maps of a left-right symmetric model: the face mirrored in
  x (its vertices' partners swapped) has shape @ shape and expression @
  expression as coefficients (row vectors; least squares, exact when the
  bases mirror into themselves, as ICT-FaceKit's do to 0.4 %)."""
  shape: np.ndarray       # [Ks, Ks] float32
  expression: np.ndarray  # [Ke, Ke] float32


def mirror_partners(model: MorphableModel, count: int | None = None) -> np.ndarray | None:
  """[N] each vertex's mirror partner in x = 0 (the nearest vertex of the
  mirrored mean shape), or None when one has none within MIRROR_TOLERANCE
  of the face's size; among the first `count` vertices only (e.g. the
  surface: other parts may touch it) when given."""
  mean = np.asarray(model.mean_shape[:count], np.float64)
  distance, partner = scipy.spatial.cKDTree(mean).query(mean * [-1.0, 1.0, 1.0])
  if distance.max() > MIRROR_TOLERANCE * np.ptp(mean, axis=0).max():
    return None
  return partner


def mirror_maps(model: MorphableModel) -> MirrorMaps | None:
  """The model's MirrorMaps, or None when it is not left-right symmetric
  about x = 0, the plane the camera mirrors about: a vertex of the mean shape
  without a mirror partner within MIRROR_TOLERANCE of the face's size, or a
  basis whose mirror image its modes miss by more than MIRROR_BASIS_TOLERANCE."""
  partner = mirror_partners(model)
  if partner is None:
    return None

  def coefficient_map(basis):
    basis = np.asarray(basis, np.float64)
    k = basis.shape[0]
    if k == 0:
      return np.zeros((0, 0), np.float32)
    flipped = np.empty_like(basis)
    flipped[:, partner] = basis * [-1.0, 1.0, 1.0]
    modes, images = basis.reshape(k, -1).T, flipped.reshape(k, -1).T
    # modes A = images: A's column j holds mode j's mirror image in the modes.
    # Solved through the k x k normal equations (rcond squared with them):
    # the same maps to 1e-10, in 0.3 s instead of lstsq's 7 s on the tall
    # [3N, k] system for the ICT head's surface (2 busy cores), which every
    # Predictor's start paid.
    solution = np.linalg.lstsq(modes.T @ modes, modes.T @ images, rcond=1e-12)[0]
    if np.linalg.norm(modes @ solution - images) > MIRROR_BASIS_TOLERANCE * np.linalg.norm(images):
      return None
    return solution.T.astype(np.float32)  # row vectors: coefficients @ map

  maps = MirrorMaps(coefficient_map(model.shape_basis), coefficient_map(model.expression_basis))
  return None if maps.shape is None or maps.expression is None else maps


def mirror_params(params, layout: params_lib.ParamLayout, maps: MirrorMaps, width: int):
  """The parameters [..., P] of the face mirrored left-right in an image
  `width` pixels wide (column x -> width - 1 - x): the rotation F R F with
  F = diag(-1, 1, 1) is yaw and roll negated (`facerecon.camera`), the x
  translation mirrored, the coefficients through `maps`."""
  params = jnp.asarray(params)
  face = params_lib.split(params, layout)
  angles = face.pose[..., params_lib.ANGLES] * jnp.array([1.0, -1.0, -1.0])
  translation = face.pose[..., params_lib.TRANSLATION]
  translation = jnp.concatenate([(width - 1) - translation[..., :1], translation[..., 1:]], -1)
  return jnp.concatenate([angles, translation, face.pose[..., params_lib.SCALE:],
                          face.shape @ maps.shape, face.expression @ maps.expression], axis=-1)


def save_model(model: MorphableModel, path: str | os.PathLike, compact: bool = False) -> None:
  """Writes the model file (an .npz), atomically. `compact` stores the bases
  in float16 and compresses the file (for shipped models; loading restores
  float32); otherwise every array is stored as it is, uncompressed."""
  validate(model, os.fspath(path))
  arrays = {name: np.asarray(getattr(model, name)) for name in FIELDS}
  if compact:
    for name in COMPACT_FIELDS:
      arrays[name] = arrays[name].astype(np.float16)
  if model.uv is not None:
    arrays["uv"] = np.asarray(model.uv)
  parts = model_parts(model)
  arrays.update(
      part_names=np.array([p.name for p in parts]),
      part_roles=np.array([p.role for p in parts]),
      part_vertices=np.array([p.vertices for p in parts], np.int64).reshape(-1, 2),
      part_triangles=np.array([p.triangles for p in parts], np.int64).reshape(-1, 2),
      expression_names=np.array(model.expression_names, dtype=str),
      expression_kind=np.array(model.expression_kind))
  with fileio.atomic_write(path) as f:
    (np.savez_compressed if compact else np.savez)(
        f, format_version=np.int32(FORMAT_VERSION), **arrays)


def load_model(path: str | os.PathLike) -> MorphableModel:
  """Reads a model file written by `save_model` (or `prepare_bfm`,
  `prepare_ict`); files of format version 1 get the defaults for parts,
  names, kind and uv."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"morphable model file not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as data:
      contents = {name: data[name] for name in data.files}
  except Exception as e:  # zipfile/ValueError/OSError for corrupt files.
    raise ValueError(f"cannot read morphable model file {path}: {e}") from e
  version = contents.get("format_version")
  if version is None or int(version) not in READABLE_VERSIONS:
    raise ValueError(f"{path}: not a facerecon model file of format version "
                     f"{'/'.join(map(str, READABLE_VERSIONS))} (format_version={version})")
  missing = [name for name in FIELDS if name not in contents]
  if missing:
    raise KeyError(f"{path}: missing field(s) {', '.join(missing)}")
  fields = {k: contents[k] for k in FIELDS}
  for name in COMPACT_FIELDS:
    if fields[name].dtype == np.float16:
      fields[name] = fields[name].astype(np.float32)
  # Format 2's optional fields; a file without them gets the defaults.
  extras = {"uv": contents.get("uv")}
  try:
    if "part_names" in contents:
      extras["parts"] = tuple(
          Part(str(name), str(role), (int(v[0]), int(v[1])), (int(t[0]), int(t[1])))
          for name, role, v, t in zip(contents["part_names"], contents["part_roles"],
                                      contents["part_vertices"], contents["part_triangles"],
                                      strict=True))
    if "expression_names" in contents:
      extras["expression_names"] = tuple(str(x) for x in contents["expression_names"])
    if "expression_kind" in contents:
      extras["expression_kind"] = str(contents["expression_kind"])
  except (KeyError, ValueError, IndexError, TypeError) as e:
    raise ValueError(f"{path}: bad 'part_*', 'expression_names' or 'expression_kind' "
                     f"fields: {e}") from e
  model = MorphableModel(**fields, **extras)
  if model.parts == model_parts(dataclasses.replace(model, parts=())):
    model = dataclasses.replace(model, parts=())  # the default, as built in memory
  return validate(model, path)
