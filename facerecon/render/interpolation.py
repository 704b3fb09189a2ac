"""Interpolation over a raster: per-vertex attributes to per-pixel values, and
the depth map, differentiable in the vertices (visibility held fixed, as
nvdiffrast's `interpolate`) and the attributes.
"""

import functools

import jax
import jax.numpy as jnp

from facerecon.render import _cpu_kernel
from facerecon.render import _sharding
from facerecon.render import _tiles
from facerecon.render import raster as raster_lib


def _interpolate_dtype(vertices, backend):
  """What `interpolate` and `interpolate_depth` compute and return in:
  float32 (the 'cpu' kernels' type; bfloat16 cannot even hold the pixel grid,
  257 rounds to 256), or float64 for float64 inputs on the pure-JAX paths
  (the gradient checks' oracle)."""
  if backend == "cpu":
    return jnp.float32
  return jnp.promote_types(jnp.result_type(vertices), jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _interpolate(attributes, vertices, triangle_id, triangles, backend):
  """attributes [B, N, C], vertices [B, N, 3], ids [B, H, W] -> [B, H, W, C]."""
  if backend == "cpu":
    shape = triangle_id.shape + attributes.shape[-1:]
    return _cpu_kernel.call("facerecon_interpolate_cpu", vertices, ((shape, jnp.float32),),
                            attributes, vertices, triangle_id, triangles)[0]
  corner_index, corners = _tiles.pixel_corners(vertices, triangles, triangle_id)
  bary = _tiles.pixel_barycentrics(corners)[0]
  values = jax.vmap(lambda a, i: a[i])(attributes, corner_index)  # [B, H, W, 3, C]
  # Broadcast-and-sum, not einsum: XLA's CPU dot over [B, H, W] batches of
  # 3-vectors is many tiny matrix products.
  out = jnp.sum(bary[..., None] * values, axis=-2)
  return jnp.where((triangle_id >= 0)[..., None], out, 0.0)


def _interpolate_fwd(attributes, vertices, triangle_id, triangles, backend):
  return (_interpolate(attributes, vertices, triangle_id, triangles, backend),
          (attributes, vertices, triangle_id, triangles))


def _interpolate_bwd(backend, residuals, grad_out):
  attributes, vertices, triangle_id, triangles = residuals
  if backend == "cpu":
    grad_attributes, grad_vertices = _cpu_kernel.call(
        "facerecon_interpolate_grad_cpu", vertices,
        ((attributes.shape, jnp.float32), (vertices.shape, jnp.float32)),
        attributes, vertices, triangle_id, triangles, grad_out.astype(jnp.float32))
    return grad_attributes, grad_vertices, None, None
  grad_out = jnp.where((triangle_id >= 0)[..., None], grad_out, 0.0)
  corner_index, corners = _tiles.pixel_corners(vertices, triangles, triangle_id)
  setup = _tiles.triangle_setup(corners)
  cols, rows = _tiles.pixel_grid(triangle_id.shape[-2], triangle_id.shape[-1], vertices.dtype)
  bary = jnp.stack(_tiles.barycentrics(setup, cols, rows)[0], axis=-1)  # [B, H, W, 3]
  values = jax.vmap(lambda a, i: a[i])(attributes, corner_index)  # [B, H, W, 3, C]
  # out = sum_k b_k a_k: d/d a_k = g b_k and d/d b_k = <g, a_k>. Since
  # p = sum_j b_j v_j, moving corner k by d changes b like moving p by
  # -b_k d, so d/d v_k = -b_k sum_j (d/d b_j) grad_p b_j (x and y only).
  grad_bary = jnp.sum(grad_out[..., None, :] * values, axis=-1)
  u = grad_bary[..., 1] - grad_bary[..., 0]
  w = grad_bary[..., 2] - grad_bary[..., 0]
  grad_point = jnp.stack([u * setup.k1x + w * setup.k2x, u * setup.k1y + w * setup.k2y,
                          jnp.zeros_like(u)], axis=-1)  # [B, H, W, 3]
  grad_corners = -bary[..., None] * grad_point[..., None, :]
  grad_values = grad_out[..., None, :] * bary[..., None]
  # One scatter for both gradients: [B, H, W, 3 corners, 3 + C].
  per_corner = jnp.concatenate([grad_corners, grad_values], axis=-1)
  batch, num_vertices = vertices.shape[:2]
  flat_index = (corner_index
                + num_vertices * jnp.arange(batch, dtype=jnp.int32)[:, None, None, None])
  summed = jax.ops.segment_sum(per_corner.reshape(-1, per_corner.shape[-1]),
                               flat_index.reshape(-1), num_segments=batch * num_vertices)
  summed = summed.reshape(batch, num_vertices, per_corner.shape[-1])  # (no -1: batch may be 0)
  return (summed[..., 3:].astype(attributes.dtype),
          summed[..., :3].astype(vertices.dtype), None, None)


_interpolate.defvjp(_interpolate_fwd, _interpolate_bwd)


def interpolate(attributes, raster: raster_lib.Raster, vertices, triangles,
                backend: str | None = None):
  """Per-vertex attributes [..., N, C] -> per-pixel [..., H, W, C].

  `vertices` are the image-space vertices that were rasterized. Barycentrics
  are recomputed from them for each pixel's visible triangle, so gradients
  flow to vertex x, y, z (through the barycentrics, visibility held fixed)
  and to the attributes. Background pixels get 0. Attributes without the
  batch dims are shared by the batch. `backend` as for `rasterize`: 'cpu'
  runs forward and backward as FFI kernels, 'reference' in pure JAX; both
  compute the same function and gradient, in float32 whatever the input
  dtype (float64 stays float64 on the pure-JAX backends).
  """
  backend = backend or raster_lib.default_backend()
  if backend not in raster_lib.BACKENDS:
    raise ValueError(f"unknown interpolate backend '{backend}'")
  dtype = _interpolate_dtype(vertices, backend)
  vertices = jnp.asarray(vertices, dtype)
  triangles = jnp.asarray(triangles, jnp.int32)
  attributes = jnp.broadcast_to(jnp.asarray(attributes, dtype),
                                vertices.shape[:-1] + (jnp.shape(attributes)[-1],))
  # Shared attributes get the vertices' type under shard_map, so the
  # backward's per-device gradient matches it (pvary's transpose sums them).
  attributes = _sharding.vary_like(attributes, vertices)
  flat_vertices, batch = _tiles.flatten_batch(vertices, 2)
  flat_attributes, _ = _tiles.flatten_batch(attributes, 2)
  flat_ids, _ = _tiles.flatten_batch(raster.triangle_id, 2)
  values = _interpolate(flat_attributes, flat_vertices, flat_ids, triangles, backend)
  return values.reshape(batch + values.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _depth(vertices, depth, triangle_id, triangles, backend):
  """vertices [B, N, 3], the raster's depth and ids [B, H, W] -> [B, H, W]."""
  del vertices, triangles, backend  # The value is the raster's; they give the gradient.
  return jnp.where(triangle_id >= 0, depth, 0.0)


def _depth_fwd(vertices, depth, triangle_id, triangles, backend):
  return _depth(vertices, depth, triangle_id, triangles, backend), (vertices, triangle_id,
                                                                    triangles)


def _depth_bwd(backend, residuals, grad_depth):
  vertices, triangle_id, triangles = residuals
  if backend == "cpu":
    (grad_vertices,) = _cpu_kernel.call("facerecon_depth_grad_cpu", vertices,
                                        ((vertices.shape, jnp.float32),),
                                        vertices, triangle_id, triangles,
                                        grad_depth.astype(jnp.float32))
  else:
    grad_z, grad_vertices = _interpolate_bwd(
        backend, (vertices[..., 2:], vertices, triangle_id, triangles), grad_depth[..., None])[:2]
    grad_vertices = grad_vertices.at[..., 2].add(grad_z[..., 0])
  return grad_vertices.astype(vertices.dtype), jnp.zeros_like(grad_depth), None, None


_depth.defvjp(_depth_fwd, _depth_bwd)


def interpolate_depth(raster: raster_lib.Raster, vertices, triangles,
                      backend: str | None = None):
  """The depth map [..., H, W] as a differentiable function of the vertices.

  Equals `interpolate(vertices[..., 2:], raster, vertices, triangles)[..., 0]`
  (z interpolated over each pixel's visible triangle, 0 off the mask) and has
  the same gradient, but the value is the raster's depth (no second pass) and
  the backward is one kernel on 'cpu' that writes the z and the x, y terms
  together. This is what depth losses should call. Float32 as `interpolate`.
  """
  backend = backend or raster_lib.default_backend()
  if backend not in raster_lib.BACKENDS:
    raise ValueError(f"unknown interpolate backend '{backend}'")
  vertices = jnp.asarray(vertices, _interpolate_dtype(vertices, backend))
  flat_vertices, batch = _tiles.flatten_batch(vertices, 2)
  flat_ids, _ = _tiles.flatten_batch(raster.triangle_id, 2)
  flat_depth, _ = _tiles.flatten_batch(raster.depth, 2)
  depth = _depth(flat_vertices, flat_depth.astype(flat_vertices.dtype), flat_ids,
                 jnp.asarray(triangles, jnp.int32), backend)
  return depth.reshape(batch + depth.shape[1:])

