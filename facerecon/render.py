"""The renderer: rasterize (visibility) and interpolate (differentiable), split
the way nvdiffrast splits them, plus shading helpers.

Image coordinates are those of `facerecon.camera`: pixel (row i, column j) is
sampled at x = j, y = i, and larger z is nearer. A pixel is covered by a
triangle when its centre lies inside or on the triangle's edges (either
winding); among covering triangles the largest interpolated z wins, and exact
depth ties go to the lowest triangle index, so the result is deterministic.
Uncovered pixels have triangle_id -1, barycentric 0 and depth
`BACKGROUND_DEPTH`.

Backends: 'reference' is pure JAX (every pixel against every triangle, in
chunks): slow, simple, and the oracle the fast backends are tested against.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BACKGROUND_DEPTH = 0.0
BACKENDS = ("reference",)
_REFERENCE_CHUNK = 64


class Raster(NamedTuple):
  triangle_id: jax.Array  # [..., H, W] int32, -1 = background
  barycentric: jax.Array  # [..., H, W, 3] float32
  depth: jax.Array        # [..., H, W] float32, BACKGROUND_DEPTH off the mesh
  mask: jax.Array         # [..., H, W] bool, triangle_id >= 0


def check_triangles(triangles, num_vertices: int) -> None:
  """Raises if concrete triangle indices fall outside [0, num_vertices)."""
  if isinstance(triangles, jax.core.Tracer):
    return  # Traced values cannot be checked here; callers validate inputs.
  triangles = np.asarray(triangles)
  if triangles.ndim != 2 or triangles.shape[1] != 3:
    raise ValueError(f"triangles must be [T, 3], got shape {triangles.shape}")
  if triangles.size and (triangles.min() < 0 or triangles.max() >= num_vertices):
    raise ValueError(f"triangle indices must be in [0, {num_vertices}), got "
                     f"[{triangles.min()}, {triangles.max()}]")


# Coverage tolerance on barycentrics: a pixel centre on a shared edge is then
# covered by both triangles (the depth test picks one), so rounding cannot
# open cracks between neighbours.
_INSIDE_TOLERANCE = 1e-6


def triangle_setup(corners):
  """Per-triangle constants for barycentrics: corners [..., 3, 3] -> [..., 9].

  With d = p - v0, b1 = k1x dx + k1y dy, b2 = k2x dx + k2y dy, b0 = 1 - b1 - b2
  and z = z0 + b1 (z1 - z0) + b2 (z2 - z0). Working relative to v0 keeps
  float32 precision for small triangles far from the origin. Zero-area and
  non-finite triangles get NaN constants, so they cover nothing.
  Returns (x0, y0, z0, k1x, k1y, k2x, k2y, dz1, dz2).
  """
  e1 = corners[..., 1, :] - corners[..., 0, :]
  e2 = corners[..., 2, :] - corners[..., 0, :]
  area = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
  usable = (area != 0) & jnp.isfinite(area)
  inv = jnp.where(usable, 1.0 / jnp.where(usable, area, 1.0), jnp.nan)
  return jnp.stack([
      corners[..., 0, 0], corners[..., 0, 1], corners[..., 0, 2],
      e2[..., 1] * inv, -e2[..., 0] * inv, -e1[..., 1] * inv, e1[..., 0] * inv,
      e1[..., 2], e2[..., 2]], axis=-1)


def _barycentrics(setup, px, py):
  """Barycentrics [..., 3] and depth [...] of points (px, py) given a setup."""
  dx, dy = px - setup[..., 0], py - setup[..., 1]
  b1 = setup[..., 3] * dx + setup[..., 4] * dy
  b2 = setup[..., 5] * dx + setup[..., 6] * dy
  z = setup[..., 2] + b1 * setup[..., 7] + b2 * setup[..., 8]
  return jnp.stack([1.0 - b1 - b2, b1, b2], axis=-1), z


def _rasterize_reference_image(vertices, triangles, height, width):
  """One image: vertices [N, 3] -> triangle_id [H, W]."""
  num_triangles = triangles.shape[0]
  pad = (-num_triangles) % _REFERENCE_CHUNK
  setup = triangle_setup(vertices[triangles])
  # Padding rows are NaN: they never cover a pixel.
  setup = jnp.pad(setup, ((0, pad), (0, 0)), constant_values=jnp.nan)
  chunks = setup.reshape(-1, _REFERENCE_CHUNK, setup.shape[-1])
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  px, py = cols.reshape(-1, 1), rows.reshape(-1, 1)

  def scan_chunk(carry, chunk_and_start):
    best_z, best_id = carry
    chunk, start = chunk_and_start
    b, z = _barycentrics(chunk, px, py)  # [P, C, 3], [P, C]
    inside = jnp.all(b >= -_INSIDE_TOLERANCE, axis=-1) & jnp.isfinite(z)
    z = jnp.where(inside, z, -jnp.inf)
    chunk_best = jnp.argmax(z, axis=1)  # first maximum: lowest index wins ties
    chunk_z = jnp.take_along_axis(z, chunk_best[:, None], axis=1)[:, 0]
    better = chunk_z > best_z
    best_z = jnp.where(better, chunk_z, best_z)
    best_id = jnp.where(better, start + chunk_best.astype(jnp.int32), best_id)
    return (best_z, best_id), None

  starts = jnp.arange(chunks.shape[0], dtype=jnp.int32) * _REFERENCE_CHUNK
  init = (jnp.full(px.shape[0], -jnp.inf, jnp.float32),
          jnp.full(px.shape[0], -1, jnp.int32))
  (_, best_id), _ = jax.lax.scan(scan_chunk, init, (chunks, starts))
  return best_id.reshape(height, width)


def _raster_from_ids(vertices, triangles, triangle_id):
  """Barycentrics and depth of each pixel for fixed triangle ids (one image).

  Differentiable in `vertices`: this is where gradients reach x, y and z.
  """
  height, width = triangle_id.shape
  mask = triangle_id >= 0
  corners = vertices[triangles[jnp.maximum(triangle_id, 0)]]  # [H, W, 3, 3]
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=vertices.dtype),
                            jnp.arange(width, dtype=vertices.dtype), indexing="ij")
  # Background pixels get a harmless unit triangle so no NaN reaches gradients.
  unit = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                   vertices.dtype)
  corners = jnp.where(mask[..., None, None], corners, unit)
  bary, depth = _barycentrics(triangle_setup(corners), cols, rows)
  bary = jnp.where(mask[..., None], bary, 0.0)
  depth = jnp.where(mask, depth, BACKGROUND_DEPTH)
  return bary, depth, mask


def _flatten_batch(x, trailing: int):
  batch = x.shape[:x.ndim - trailing]
  return x.reshape((math.prod(batch),) + x.shape[x.ndim - trailing:]), batch


def rasterize(vertices, triangles, height: int, width: int,
              backend: str | None = None) -> Raster:
  """Visibility of a triangle mesh: vertices [..., N, 3] in image coordinates.

  Not differentiable (use `interpolate` for gradients). Any leading batch
  shape; `triangles` [T, 3] int32 is shared by the batch.
  """
  backend = backend or "reference"
  if backend not in BACKENDS:
    raise ValueError(f"unknown rasterizer backend '{backend}'; available: "
                     f"{', '.join(BACKENDS)}")
  vertices = jax.lax.stop_gradient(jnp.asarray(vertices, jnp.float32))
  if vertices.ndim < 2 or vertices.shape[-1] != 3:
    raise ValueError(f"vertices must be [..., N, 3], got shape {vertices.shape}")
  if height < 1 or width < 1:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  check_triangles(triangles, vertices.shape[-2])
  return _rasterize(vertices, jnp.asarray(triangles, jnp.int32), height, width,
                    backend)


@functools.partial(jax.jit, static_argnames=("height", "width", "backend"))
def _rasterize(vertices, triangles, height, width, backend):
  del backend  # Only the reference backend exists so far.
  flat, batch = _flatten_batch(vertices, 2)
  if triangles.shape[0] == 0:
    empty = batch + (height, width)
    return Raster(jnp.full(empty, -1, jnp.int32), jnp.zeros(empty + (3,)),
                  jnp.full(empty, BACKGROUND_DEPTH), jnp.zeros(empty, bool))
  ids = jax.vmap(lambda v: _rasterize_reference_image(
      v, triangles, height, width))(flat)
  bary, depth, mask = jax.vmap(
      lambda v, i: _raster_from_ids(v, triangles, i))(flat, ids)
  unflat = lambda x, trailing: x.reshape(batch + x.shape[x.ndim - trailing:])
  return Raster(unflat(ids, 2), unflat(bary, 3), unflat(depth, 2), unflat(mask, 2))


def _gather_corner_attributes(attributes, triangles, triangle_id):
  """attributes [B, N, C], ids [B, H, W] -> corner values [B, H, W, C, 3]."""
  corner_index = triangles[jnp.maximum(triangle_id, 0)]  # [B, H, W, 3]
  gathered = jax.vmap(lambda a, idx: a[idx])(attributes, corner_index)
  return jnp.moveaxis(gathered, -2, -1)


def interpolate(attributes, raster: Raster, vertices, triangles):
  """Per-vertex attributes [..., N, C] -> per-pixel [..., H, W, C].

  Barycentrics are recomputed from `vertices` (image coordinates) for the
  visible triangle of each pixel, so gradients flow to vertex x, y, z (through
  the barycentrics, visibility held fixed) and to the attributes. Background
  pixels get 0. `attributes` without the batch dims are shared by the batch.
  """
  vertices = jnp.asarray(vertices)
  triangles = jnp.asarray(triangles, jnp.int32)
  attributes = jnp.broadcast_to(
      attributes, vertices.shape[:-1] + (jnp.shape(attributes)[-1],))
  flat_vertices, batch = _flatten_batch(vertices, 2)
  flat_attributes, _ = _flatten_batch(attributes, 2)
  flat_ids, _ = _flatten_batch(raster.triangle_id, 2)
  bary, _, mask = jax.vmap(lambda v, i: _raster_from_ids(v, triangles, i))(
      flat_vertices, flat_ids)
  corners = _gather_corner_attributes(flat_attributes, triangles, flat_ids)
  values = jnp.einsum("bhwck,bhwk->bhwc", corners, bary)
  values = jnp.where(mask[..., None], values, 0.0)
  return values.reshape(batch + values.shape[1:])


def lambertian(albedo, normals, light_direction, ambient=0.35, diffuse=0.65):
  """Shaded colour: albedo * (ambient + diffuse * max(n . l, 0)).

  `normals` and `light_direction` in the same (camera, y-up) frame; the
  light direction points from the surface towards the light.
  """
  light = jnp.asarray(light_direction, jnp.float32)
  light = light / jnp.linalg.norm(light, axis=-1, keepdims=True)
  cosine = jnp.maximum(jnp.sum(normals * light, axis=-1, keepdims=True), 0.0)
  return albedo * (ambient + diffuse * cosine)
