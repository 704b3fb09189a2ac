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

All functions take the model as an argument (never close over it inside jit:
it would be baked into the program as constants) and accept any leading batch
dims on the coefficients.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import fileio
from facerecon import params as params_lib

FORMAT_VERSION = 1
NUM_LANDMARKS = 68

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


@jax.tree_util.register_dataclass
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
  return model


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


def save_model(model: MorphableModel, path: str | os.PathLike) -> None:
  """Writes the model file (an uncompressed .npz), atomically."""
  validate(model, os.fspath(path))
  arrays = {name: np.asarray(getattr(model, name)) for name in FIELDS}
  with fileio.atomic_write(path) as f:
    np.savez(f, format_version=np.int32(FORMAT_VERSION), **arrays)


def load_model(path: str | os.PathLike) -> MorphableModel:
  """Reads a model file written by `save_model` (or `prepare_bfm`)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"morphable model file not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as data:
      contents = {name: data[name] for name in data.files}
  except Exception as e:  # zipfile/ValueError/OSError for corrupt files.
    raise ValueError(f"cannot read morphable model file {path}: {e}") from e
  version = contents.get("format_version")
  if version is None or int(version) != FORMAT_VERSION:
    raise ValueError(f"{path}: not a facerecon model file of format version "
                     f"{FORMAT_VERSION} (format_version={version})")
  missing = [name for name in FIELDS if name not in contents]
  if missing:
    raise KeyError(f"{path}: missing field(s) {', '.join(missing)}")
  return validate(MorphableModel(**{k: contents[k] for k in FIELDS}), path)
