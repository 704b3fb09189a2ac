"""Rasterization: which triangle each pixel sees (visibility; not differentiable).

Image coordinates are those of `facerecon.camera`: pixel (row i, column j) is
sampled at x = j, y = i, and larger z is nearer. A pixel is covered by a
triangle when its centre lies inside or on the triangle's edges (either
winding) and within its bounding box widened by 1e-3 pixels; among covering
triangles the largest interpolated z wins, and exact
depth ties go to the lowest triangle index, so the result is deterministic.
Uncovered pixels have triangle_id -1, barycentric 0 and depth
`BACKGROUND_DEPTH`.

Backends (`rasterize(..., backend=)`; None picks `default_backend()`):
- 'cpu': the XLA FFI custom call in kernels/rasterize_cpu.cc, built by
  `pip install -e .`; batches are spread over XLA's CPU threads.
- 'pallas': the tile-binned Pallas (Mosaic) kernel in pallas_tpu.py, on
  TPU (checked on the CPU in interpret mode).
- 'triton': the tile-binned Pallas kernel for the Triton lowering in
  pallas_triton.py, on GPU (checked on the CPU in interpret mode; not yet
  measured on a GPU, so 'scatter' stays the GPU default until it is).
- 'scatter': pure JAX, triangle-parallel (small triangles z-test their few
  candidate pixels with scatter-max/min; large ones take the dense path).
  Runs anywhere; the GPU default until 'triton' is measured there.
- 'reference': pure JAX (every pixel against every triangle, in chunks):
  slow, simple, runs anywhere; the oracle the others are tested against.
All backends share one set of formulas (`_tiles`), evaluated in the
same order, but not bit for bit: the 'cpu' kernel is built without FMA
contraction, while XLA contracts a * b + c into FMAs as it fuses (per fusion,
so even two pure-JAX backends may round differently). Triangle ids therefore
agree except at pixels whose centre lies within float32 rounding of a
triangle's coverage threshold (on an edge or at a vertex), or where two
triangles' depths tie within rounding; barycentrics and depth agree to
rounding. That is what the tests check (`_assert_same_raster` in
tests/test_render_backends.py).
"""

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from facerecon.render import _cpu_kernel
from facerecon.render import _sharding
from facerecon.render import _tiles
from facerecon.render import pallas_tpu
from facerecon.render import pallas_triton

BACKGROUND_DEPTH = 0.0
BACKENDS = ("cpu", "pallas", "triton", "scatter", "reference")
_SCATTER_WINDOW = 4  # 'scatter' backend: boxes up to this many pixels a side are small


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


def _rasterize_reference_image(vertices, triangles, height, width):
  """One image: vertices [N, 3] -> triangle_id [H, W]. Every pixel is tested
  against every triangle."""
  corners = vertices[triangles]
  px, py = _tiles.pixel_centres(height, width)
  ids = jnp.arange(triangles.shape[0], dtype=jnp.int32)
  _, best_id = _tiles.dense_nearest(_tiles.triangle_setup(corners),
                                    _tiles.triangle_boxes(corners), ids, px, py, vertices)
  return jnp.where(best_id == _tiles.NO_TRIANGLE, -1, best_id).reshape(height, width)


def _scatter_small_triangles(vertices, triangles, height, width):
  """One image, triangle-parallel: each triangle whose candidate box is at
  most _SCATTER_WINDOW pixels a side z-tests those pixels; a scatter-max keeps
  the nearest depth and a scatter-min the lowest id at that depth.

  Returns (z [P], id [P]) of the small triangles, and the others for the
  dense path: setup, box, mesh indices (large first) and how many are large.
  """
  num_triangles = triangles.shape[0]
  window = _SCATTER_WINDOW
  corners = vertices[triangles]
  setup = _tiles.triangle_setup(corners)
  box = _tiles.triangle_boxes(corners)
  col_lo, num_cols, row_lo, num_rows, finite = _tiles.candidate_ranges(box, height, width)
  small = ~finite | ((num_cols <= window) & (num_rows <= window))

  offsets = jnp.arange(window, dtype=jnp.int32)
  cols = col_lo[:, None, None] + offsets[None, None, :]  # [T, K, K]
  rows = row_lo[:, None, None] + offsets[None, :, None]
  valid = ((small & finite)[:, None, None]
           & (offsets[None, None, :] < num_cols[:, None, None])
           & (offsets[None, :, None] < num_rows[:, None, None]))
  bary, z = _tiles.barycentrics(jax.tree.map(lambda a: a[:, None, None], setup),
                                cols.astype(jnp.float32), rows.astype(jnp.float32))
  # The float coverage test is evaluated once and materialised: XLA may
  # otherwise recompute it in each pass's fusion, contracting a * b + c into
  # FMAs differently, so the passes could disagree on pixels within rounding
  # of an edge (a depth written with no id).
  z = jax.lax.optimization_barrier(
      jnp.where(_tiles.covers(bary, z, valid), z, -jnp.inf).reshape(-1))
  covered = z > -jnp.inf
  # Writes are routed by integer bounds only; entries outside them go to a
  # pixel past the image and are dropped.
  num_pixels = height * width
  pixel = jnp.where(valid.reshape(-1), (rows * width + cols).reshape(-1), num_pixels)
  triangle = jnp.repeat(jnp.arange(num_triangles, dtype=jnp.int32), window * window)
  small_z = _sharding.vary_like(jnp.full(num_pixels, -jnp.inf, jnp.float32),
                                vertices).at[pixel].max(z, mode="drop")
  nearest = covered & (z == small_z.at[pixel].get(mode="fill", fill_value=-jnp.inf))
  small_id = _sharding.vary_like(jnp.full(num_pixels, _tiles.NO_TRIANGLE, jnp.int32),
                                 vertices).at[pixel].min(
      jnp.where(nearest, triangle, _tiles.NO_TRIANGLE), mode="drop")
  return (small_z, small_id) + _tiles.large_first(setup, box, ~small)


def _rasterize_scatter(vertices, triangles, height, width):
  """vertices [B, N, 3] -> triangle_id [B, H, W]; same result as the reference."""
  small_z, small_id, setup, box, order, num_large = jax.vmap(
      lambda v: _scatter_small_triangles(v, triangles, height, width))(vertices)
  large_z, large_id = _tiles.large_triangles_nearest_batch(setup, box, order, num_large,
                                                           height, width, vertices)
  return _tiles.merge_nearest(small_z, small_id, large_z, large_id).reshape(-1, height, width)


def available_backends() -> tuple[str, ...]:
  """The backends that can run here, fastest first."""
  available = ["scatter", "reference"]
  platform = jax.default_backend()
  if platform == "cpu" and _cpu_kernel.register() is None:
    available.insert(0, "cpu")
  if platform == "tpu":
    available.insert(0, "pallas")
  if platform == "gpu":
    # After 'scatter' for now: the Triton kernel is verified in interpret
    # mode only. It becomes the GPU default (first) once it is measured
    # faster than 'scatter' on a GPU.
    available.insert(1, "triton")
  return tuple(available)


def default_backend() -> str:
  """The fastest available backend for the default JAX platform (on a CPU
  without the built kernel: 'scatter', with a warning, once)."""
  backends = available_backends()
  if jax.default_backend() == "cpu" and backends[0] != "cpu":
    _warn_once(_cpu_kernel.register())
  return backends[0]


@functools.cache
def _warn_once(reason: str) -> None:
  logging.getLogger("facerecon").warning(
      "%s: rendering uses the pure-JAX 'scatter' backend, about 100 times slower per image "
      "(a C++ compiler at install time builds the kernel)", reason)


def _rasterize_cpu(vertices, triangles, height, width):
  """[B, N, 3] -> ids, barycentric, depth through the FFI custom call."""
  batch = vertices.shape[0]
  return _cpu_kernel.call("facerecon_rasterize_cpu", vertices,
                          (((batch, height, width), jnp.int32),
                           ((batch, height, width, 3), jnp.float32),
                           ((batch, height, width), jnp.float32)),
                          vertices, triangles)


def rasterize(vertices, triangles, height: int, width: int,
              backend: str | None = None) -> Raster:
  """Visibility of a triangle mesh: vertices [..., N, 3] in image coordinates.

  Not differentiable (use `interpolate` for gradients). Any leading batch
  shape; `triangles` [T, 3] int32 is shared by the batch. Concrete triangle
  indices are checked here; traced ones are checked by the CPU kernel, which
  fails the call with the offending triangle's index.
  """
  backend = backend or default_backend()
  if backend not in BACKENDS:
    raise ValueError(f"unknown rasterizer backend '{backend}'; available: "
                     f"{', '.join(available_backends())}")
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
  flat, batch = _tiles.flatten_batch(vertices, 2)
  if triangles.shape[0] == 0 or flat.shape[0] == 0:  # nothing to draw, or no images
    empty = batch + (height, width)
    return Raster(jnp.full(empty, -1, jnp.int32), jnp.zeros(empty + (3,)),
                  jnp.full(empty, BACKGROUND_DEPTH), jnp.zeros(empty, bool))
  if backend == "cpu":
    ids, bary, depth = _rasterize_cpu(flat, triangles, height, width)
    mask = ids >= 0
  else:
    if backend == "scatter":
      ids = _rasterize_scatter(flat, triangles, height, width)
    elif backend == "pallas":
      ids = pallas_tpu.rasterize_ids(flat, triangles, height, width)
    elif backend == "triton":
      ids = pallas_triton.rasterize_ids(flat, triangles, height, width)
    else:
      ids = jax.vmap(lambda v: _rasterize_reference_image(
          v, triangles, height, width))(flat)
    bary, depth, mask = raster_fields(flat, triangles, ids)
  unflat = lambda x, trailing: x.reshape(batch + x.shape[x.ndim - trailing:])
  return Raster(unflat(ids, 2), unflat(bary, 3), unflat(depth, 2), unflat(mask, 2))


def raster_fields(vertices, triangles, triangle_id):
  """Barycentrics [B, H, W, 3], depth and mask [B, H, W] from each pixel's
  triangle id: how every backend but 'cpu' fills in the Raster."""
  mask = triangle_id >= 0
  corners = _tiles.pixel_corners(vertices, triangles, triangle_id)[1]
  bary, depth = _tiles.pixel_barycentrics(corners)
  return (jnp.where(mask[..., None], bary, 0.0), jnp.where(mask, depth, BACKGROUND_DEPTH),
          mask)

