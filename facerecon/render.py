"""The renderer: rasterize (visibility) and interpolate (differentiable), split
the way nvdiffrast splits them, plus the face renders the networks and
losses use (depth, mask, normals, PNCC, albedo, shading).

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
- 'pallas': the tile-binned Pallas (Mosaic) kernel in render_pallas.py, on
  TPU (checked on the CPU in interpret mode).
- 'triton': the tile-binned Pallas kernel for the Triton lowering in
  render_triton.py, on GPU (checked on the CPU in interpret mode; not yet
  measured on a GPU, so 'scatter' stays the GPU default until it is).
- 'scatter': pure JAX, triangle-parallel (small triangles z-test their few
  candidate pixels with scatter-max/min; large ones take the dense path).
  Runs anywhere; the GPU default until 'triton' is measured there.
- 'reference': pure JAX (every pixel against every triangle, in chunks):
  slow, simple, runs anywhere; the oracle the others are tested against.
All backends share one set of formulas (`triangle_setup`), evaluated in the
same order, but not bit for bit: the 'cpu' kernel is built without FMA
contraction, while XLA contracts a * b + c into FMAs as it fuses (per fusion,
so even two pure-JAX backends may round differently). Triangle ids therefore
agree except at pixels whose centre lies within float32 rounding of a
triangle's coverage threshold (on an edge or at a vertex), or where two
triangles' depths tie within rounding; barycentrics and depth agree to
rounding. That is what the tests check (`_assert_same_raster` in
tests/test_render_backends.py).
"""

import ctypes
import functools
import glob
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BACKGROUND_DEPTH = 0.0
BACKENDS = ("cpu", "pallas", "triton", "scatter", "reference")
_REFERENCE_CHUNK = 64
_CPU_TARGETS = {  # XLA custom-call target -> symbol in the kernel library
    "facerecon_rasterize_cpu": "FaceReconRasterizeCpu",
    "facerecon_interpolate_cpu": "FaceReconInterpolateCpu",
    "facerecon_interpolate_grad_cpu": "FaceReconInterpolateGradCpu",
    "facerecon_depth_grad_cpu": "FaceReconDepthGradCpu",
}
# Overrides the CPU kernel library, e.g. a sanitizer build (kernels/run_sanitizers.sh).
CPU_KERNEL_ENV = "FACERECON_CPU_KERNEL"


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
# Covered pixel centres also lie in the triangle's bounding box widened by this
# many pixels, which bounds how far the tolerance reaches for thin slivers.
# Both constants are mirrored in kernels/rasterize.h.
_BOX_MARGIN = 1e-3


class TriangleSetup(NamedTuple):
  """Per-triangle constants for barycentrics (struct of arrays, shape [...]).

  With d = p - v0: b1 = k1x dx + k1y dy, b2 = k2x dx + k2y dy,
  b0 = 1 - b1 - b2 and z = z0 + b1 dz1 + b2 dz2. kernels/rasterize.h
  evaluates the same expressions in the same order.
  """
  x0: jax.Array
  y0: jax.Array
  z0: jax.Array
  k1x: jax.Array
  k1y: jax.Array
  k2x: jax.Array
  k2y: jax.Array
  dz1: jax.Array
  dz2: jax.Array


def triangle_setup(corners) -> TriangleSetup:
  """corners [..., 3, 3] -> the constants of each triangle.

  Working relative to v0 keeps float32 precision for small triangles far
  from the origin. Zero-area and non-finite triangles get NaN constants, so
  they cover nothing.
  """
  x, y, z = corners[..., 0], corners[..., 1], corners[..., 2]
  e1x, e1y, e1z = x[..., 1] - x[..., 0], y[..., 1] - y[..., 0], z[..., 1] - z[..., 0]
  e2x, e2y, e2z = x[..., 2] - x[..., 0], y[..., 2] - y[..., 0], z[..., 2] - z[..., 0]
  area = e1x * e2y - e1y * e2x
  usable = (area != 0) & jnp.isfinite(area)
  inv = jnp.where(usable, 1.0 / jnp.where(usable, area, 1.0), jnp.nan)
  return TriangleSetup(x[..., 0], y[..., 0], z[..., 0], e2y * inv, -e2x * inv,
                       -e1y * inv, e1x * inv, e1z, e2z)


def _barycentrics(setup: TriangleSetup, px, py):
  """Barycentrics (b0, b1, b2) and depth of points (px, py)."""
  dx, dy = px - setup.x0, py - setup.y0
  b1 = setup.k1x * dx + setup.k1y * dy
  b2 = setup.k2x * dx + setup.k2y * dy
  z = setup.z0 + b1 * setup.dz1 + b2 * setup.dz2
  return (1.0 - b1 - b2, b1, b2), z


_NO_TRIANGLE = np.iinfo(np.int32).max  # "no triangle yet" in min-id selections
_SCATTER_WINDOW = 4  # 'scatter' backend: boxes up to this many pixels a side are small


def _triangle_boxes(corners):
  """Bounding boxes widened by _BOX_MARGIN: (x_lo, x_hi, y_lo, y_hi), each [...]."""
  return (jnp.min(corners[..., 0], axis=-1) - _BOX_MARGIN,
          jnp.max(corners[..., 0], axis=-1) + _BOX_MARGIN,
          jnp.min(corners[..., 1], axis=-1) - _BOX_MARGIN,
          jnp.max(corners[..., 1], axis=-1) + _BOX_MARGIN)


def _covers(bary, z, valid):
  b0, b1, b2 = bary
  return (valid & (b0 >= -_INSIDE_TOLERANCE) & (b1 >= -_INSIDE_TOLERANCE)
          & (b2 >= -_INSIDE_TOLERANCE) & jnp.isfinite(z))


def _vary_like(tree, like):
  """Under shard_map, make values vary over the mesh axes of `like` (scan
  carries, scatter targets and custom-VJP inputs must match the data's
  type); axes a value already varies over are left as they are."""
  varying = jax.typeof(like).manual_axis_type.varying

  def cast(x):
    missing = tuple(a for a in varying if a not in jax.typeof(x).manual_axis_type.varying)
    return jax.lax.pcast(x, missing, to="varying") if missing else x

  return jax.tree.map(cast, tree)


def _nearest_in_block(setup, box, ids, px, py, best):
  """One block of the z-test: pixel centres px, py [P, 1] against triangles
  whose setup, box and mesh indices broadcast as [1, C] (padding: NaN setup
  and box, id _NO_TRIANGLE). best: the nearest (z, id) so far, each [P, 1].
  Returns the updated (z, id): the nearer wins, equal z the lower id. Shared
  by the dense path and the Pallas kernels, so all evaluate the same ops."""
  best_z, best_id = best
  x_lo, x_hi, y_lo, y_hi = box
  bary, z = _barycentrics(setup, px, py)  # each [P, C]
  inside = _covers(bary, z, (px >= x_lo) & (px <= x_hi) & (py >= y_lo) & (py <= y_hi))
  z = jnp.where(inside, z, -jnp.inf)
  block_z = jnp.max(z, axis=1, keepdims=True)
  block_id = jnp.min(jnp.where(inside & (z == block_z), ids, _NO_TRIANGLE), axis=1,
                     keepdims=True)
  better = (block_z > best_z) | ((block_z == best_z) & (block_id < best_id))
  return jnp.where(better, block_z, best_z), jnp.where(better, block_id, best_id)


def _dense_nearest(setup, box, ids, px, py, like, num_active=None):
  """Nearest covering triangle of every pixel, testing all pairs in chunks.

  setup, box, ids: per-triangle arrays [T] (ids are the triangles' indices in
  the mesh); px, py: pixel centres [P, 1]. Returns (z [P], id [P]) with
  -inf / _NO_TRIANGLE where nothing covers; equal z goes to the lowest id.
  Only chunks starting before `num_active` are evaluated (triangles past it
  are skipped, a chunk at a time).
  """
  pad = (-ids.shape[0]) % _REFERENCE_CHUNK
  # Padding entries are NaN: they never cover a pixel.
  chunked = lambda a, fill=jnp.nan: jnp.pad(a, (0, pad), constant_values=fill).reshape(
      -1, _REFERENCE_CHUNK)
  setup = jax.tree.map(chunked, setup)
  box = jax.tree.map(chunked, box)
  ids = chunked(ids, _NO_TRIANGLE)
  starts = jnp.arange(ids.shape[0], dtype=jnp.int32) * _REFERENCE_CHUNK

  def evaluate(carry, setup, box, chunk_ids):
    return _nearest_in_block(setup, box, chunk_ids, px, py, carry)

  def scan_chunk(carry, chunk):
    setup, box, chunk_ids, start = chunk
    if num_active is None:
      return evaluate(carry, setup, box, chunk_ids), None
    return jax.lax.cond(start < num_active, lambda c: evaluate(c, setup, box, chunk_ids),
                        lambda c: c, carry), None

  init = _vary_like((jnp.full((px.shape[0], 1), -jnp.inf, jnp.float32),
                     jnp.full((px.shape[0], 1), _NO_TRIANGLE, jnp.int32)), like)
  (best_z, best_id), _ = jax.lax.scan(scan_chunk, init, (setup, box, ids, starts))
  return best_z[:, 0], best_id[:, 0]


def _pixel_centres(height, width):
  cols, rows = _pixel_grid(height, width, jnp.float32)
  return cols.reshape(-1, 1), rows.reshape(-1, 1)


def _rasterize_reference_image(vertices, triangles, height, width):
  """One image: vertices [N, 3] -> triangle_id [H, W]. Every pixel is tested
  against every triangle."""
  corners = vertices[triangles]
  px, py = _pixel_centres(height, width)
  ids = jnp.arange(triangles.shape[0], dtype=jnp.int32)
  _, best_id = _dense_nearest(triangle_setup(corners), _triangle_boxes(corners), ids,
                              px, py, vertices)
  return jnp.where(best_id == _NO_TRIANGLE, -1, best_id).reshape(height, width)


def _candidate_ranges(box, height, width):
  """Integer candidate pixels of each box: (col_lo, num_cols, row_lo, num_rows,
  finite). Centres ceil(lo)..floor(hi), clipped to the image; clipping before
  the int conversion keeps huge values safe; non-finite boxes are empty."""
  x_lo, x_hi, y_lo, y_hi = box
  finite = jnp.isfinite(x_lo) & jnp.isfinite(x_hi) & jnp.isfinite(y_lo) & jnp.isfinite(y_hi)

  def pixel_range(low, high, size):
    first = jnp.clip(jnp.ceil(jnp.where(finite, low, 0.0)), 0, size)
    last = jnp.clip(jnp.floor(jnp.where(finite, high, -1.0)), -1, size - 1)
    return first.astype(jnp.int32), (last - first + 1).astype(jnp.int32)

  col_lo, num_cols = pixel_range(x_lo, x_hi, width)
  row_lo, num_rows = pixel_range(y_lo, y_hi, height)
  return col_lo, num_cols, row_lo, num_rows, finite


def _large_first(setup, box, large):
  """Setup, box and mesh indices reordered with the `large` triangles first
  (each group in index order), and how many are large."""
  order = jnp.argsort(~large, stable=True).astype(jnp.int32)
  take = lambda a: a[order]
  return (jax.tree.map(take, setup), jax.tree.map(take, box), order,
          jnp.sum(large).astype(jnp.int32))


def _large_triangles_nearest(setup, box, large, height, width, like):
  """The dense path for one image's `large` triangles; chunks holding none
  are skipped. Returns (z [P], id [P])."""
  setup, box, order, num_large = _large_first(setup, box, large)
  px, py = _pixel_centres(height, width)
  return _dense_nearest(setup, box, order, px, py, like, num_active=num_large)


def _large_triangles_nearest_batch(setup, box, order, num_large, height, width, vertices):
  """The dense path for a batch of images: per-image setup, box and mesh
  indices, large triangles first ([B, T] each, from `_large_first`), and
  how many are large [B]. Returns (z [B, P], id [B, P]).

  Chunks past the largest count in the batch are skipped: an unbatched
  predicate, so the skipping survives vmap (a batched one turns lax.cond
  into a select that runs both branches).
  """
  num_active = jnp.max(num_large)
  px, py = _pixel_centres(height, width)
  return jax.vmap(
      lambda s, b, o, v: _dense_nearest(s, b, o, px, py, v, num_active=num_active))(
          setup, box, order, vertices)


def _merge_nearest(z_a, id_a, z_b, id_b):
  """Nearest of two candidate sets per pixel (ties: lowest id); -1 if none."""
  best_z = jnp.maximum(z_a, z_b)
  best_id = jnp.minimum(jnp.where(z_a == best_z, id_a, _NO_TRIANGLE),
                        jnp.where(z_b == best_z, id_b, _NO_TRIANGLE))
  # A depth without an id (passes that disagreed on a pixel within rounding of
  # an edge) is background too, never the sentinel as an id.
  return jnp.where((best_z > -jnp.inf) & (best_id != _NO_TRIANGLE), best_id, -1)


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
  setup = triangle_setup(corners)
  box = _triangle_boxes(corners)
  col_lo, num_cols, row_lo, num_rows, finite = _candidate_ranges(box, height, width)
  small = ~finite | ((num_cols <= window) & (num_rows <= window))

  offsets = jnp.arange(window, dtype=jnp.int32)
  cols = col_lo[:, None, None] + offsets[None, None, :]  # [T, K, K]
  rows = row_lo[:, None, None] + offsets[None, :, None]
  valid = ((small & finite)[:, None, None]
           & (offsets[None, None, :] < num_cols[:, None, None])
           & (offsets[None, :, None] < num_rows[:, None, None]))
  bary, z = _barycentrics(jax.tree.map(lambda a: a[:, None, None], setup),
                          cols.astype(jnp.float32), rows.astype(jnp.float32))
  # The float coverage test is evaluated once and materialised: XLA may
  # otherwise recompute it in each pass's fusion, contracting a * b + c into
  # FMAs differently, so the passes could disagree on pixels within rounding
  # of an edge (a depth written with no id).
  z = jax.lax.optimization_barrier(jnp.where(_covers(bary, z, valid), z, -jnp.inf).reshape(-1))
  covered = z > -jnp.inf
  # Writes are routed by integer bounds only; entries outside them go to a
  # pixel past the image and are dropped.
  num_pixels = height * width
  pixel = jnp.where(valid.reshape(-1), (rows * width + cols).reshape(-1), num_pixels)
  triangle = jnp.repeat(jnp.arange(num_triangles, dtype=jnp.int32), window * window)
  small_z = _vary_like(jnp.full(num_pixels, -jnp.inf, jnp.float32), vertices).at[pixel].max(
      z, mode="drop")
  nearest = covered & (z == small_z.at[pixel].get(mode="fill", fill_value=-jnp.inf))
  small_id = _vary_like(jnp.full(num_pixels, _NO_TRIANGLE, jnp.int32), vertices).at[pixel].min(
      jnp.where(nearest, triangle, _NO_TRIANGLE), mode="drop")
  return (small_z, small_id) + _large_first(setup, box, ~small)


def _rasterize_scatter(vertices, triangles, height, width):
  """vertices [B, N, 3] -> triangle_id [B, H, W]; same result as the reference."""
  small_z, small_id, setup, box, order, num_large = jax.vmap(
      lambda v: _scatter_small_triangles(v, triangles, height, width))(vertices)
  large_z, large_id = _large_triangles_nearest_batch(setup, box, order, num_large,
                                                     height, width, vertices)
  return _merge_nearest(small_z, small_id, large_z, large_id).reshape(-1, height, width)


# --- Tile binning (shared by the Pallas kernels) ------------------------------

# Rows of the binned triangle data: the setup constants, then the box.
BIN_FIELDS = TriangleSetup._fields + ("x_lo", "x_hi", "y_lo", "y_hi")


def _bin_triangles(vertices, triangles, height, width, tile: int, chunk: int):
  """Per-tile padded triangle lists for one image, for the Pallas kernels.

  The image is cut into tile x tile pixel tiles (row-major). A triangle whose
  candidate box fits in `tile` pixels a side touches at most 2 x 2 tiles and
  is binned into each; each tile's list is padded to a multiple of `chunk`
  (padding is NaN with id _NO_TRIANGLE, so it never covers anything).
  Larger triangles are left for the dense path.

  Returns (data [len(BIN_FIELDS), capacity] float32, ids [1, capacity] int32,
  chunk_start [num_tiles + 1] int32: tile k owns chunks chunk_start[k] to
  chunk_start[k + 1]), plus the per-triangle setup, box and `large` mask for
  the dense path. Every chunk lies inside capacity.
  """
  num_triangles = triangles.shape[0]
  corners = vertices[triangles]
  setup = triangle_setup(corners)
  box = _triangle_boxes(corners)
  col_lo, num_cols, row_lo, num_rows, finite = _candidate_ranges(box, height, width)
  nonempty = finite & (num_cols > 0) & (num_rows > 0)
  binned = nonempty & (num_cols <= tile) & (num_rows <= tile)
  large = nonempty & ~binned

  tiles_x, tiles_y = -(-width // tile), -(-height // tile)
  num_tiles = tiles_x * tiles_y
  tx0, ty0 = col_lo // tile, row_lo // tile
  tx1, ty1 = (col_lo + num_cols - 1) // tile, (row_lo + num_rows - 1) // tile
  keys = []
  for dy in (0, 1):
    for dx in (0, 1):
      valid = binned & (ty0 + dy <= ty1) & (tx0 + dx <= tx1)
      keys.append(jnp.where(valid, (ty0 + dy) * tiles_x + tx0 + dx, num_tiles))
  key = jnp.concatenate(keys)  # [4T], num_tiles = no tile
  entry_triangle = jnp.tile(jnp.arange(num_triangles, dtype=jnp.int32), 4)
  order = jnp.argsort(key, stable=True)
  key, entry_triangle = key[order], entry_triangle[order]

  counts = jnp.zeros(num_tiles + 1, jnp.int32).at[key].add(1)[:num_tiles]
  first_entry = jnp.cumsum(counts) - counts
  chunks = (counts + chunk - 1) // chunk
  chunk_start = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(chunks)]).astype(jnp.int32)
  capacity = (-(-4 * num_triangles // chunk) + num_tiles) * chunk
  in_tile = key < num_tiles
  safe_key = jnp.minimum(key, num_tiles - 1)
  rank = jnp.arange(key.shape[0], dtype=jnp.int32) - first_entry[safe_key]
  slot = jnp.where(in_tile, chunk_start[safe_key] * chunk + rank, capacity)
  slot_triangle = jnp.full(capacity, -1, jnp.int32).at[slot].set(entry_triangle, mode="drop")

  fields = list(setup) + list(box)
  present = slot_triangle >= 0
  gather = lambda a: jnp.where(present, a[jnp.maximum(slot_triangle, 0)], jnp.nan)
  data = jnp.stack([gather(f) for f in fields]).astype(jnp.float32)
  ids = jnp.where(present, slot_triangle, _NO_TRIANGLE)[None, :]
  return data, ids, chunk_start, setup, box, large


def _untile(a, height, width, tile: int):
  """Per-tile pixels [..., num_tiles, tile * tile] (tiles and their pixels
  row-major, as `_bin_triangles` numbers them) -> [..., height * width]."""
  tiles_x, tiles_y = -(-width // tile), -(-height // tile)
  lead = a.shape[:-2]
  a = jnp.swapaxes(a.reshape(lead + (tiles_y, tiles_x, tile, tile)), -3, -2)
  a = a.reshape(lead + (tiles_y * tile, tiles_x * tile))[..., :height, :width]
  return a.reshape(lead + (height * width,))


def _flatten_batch(x, trailing: int):
  batch = x.shape[:x.ndim - trailing]
  return x.reshape((math.prod(batch),) + x.shape[x.ndim - trailing:]), batch


# --- Backends -----------------------------------------------------------------


def _cpu_kernel_path() -> str | None:
  if os.environ.get(CPU_KERNEL_ENV):
    return os.environ[CPU_KERNEL_ENV]
  here = os.path.dirname(os.path.abspath(__file__))
  found = sorted(glob.glob(os.path.join(here, "_rasterize_cpu*.so")))
  return found[0] if found else None


@functools.cache
def _register_cpu_kernel() -> str | None:
  """Loads and registers the CPU kernel; returns None or why it is missing."""
  path = _cpu_kernel_path()
  if path is None:
    return ("the CPU rasterizer kernel is not built (facerecon/_rasterize_cpu*.so "
            "is missing); run `pip install -e .` in the repository")
  try:
    library = ctypes.cdll.LoadLibrary(path)
  except OSError as e:
    return f"cannot load the CPU rasterizer kernel {path}: {e}"
  for target, symbol in _CPU_TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return None


def available_backends() -> tuple[str, ...]:
  """The backends that can run here, fastest first."""
  available = ["scatter", "reference"]
  platform = jax.default_backend()
  if platform == "cpu" and _register_cpu_kernel() is None:
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
  """The fastest available backend for the default JAX platform."""
  return available_backends()[0]


def output_like(like, shape, dtype) -> jax.ShapeDtypeStruct:
  """The type of a kernel output (FFI call or pallas_call) computed from `like`.

  Inside shard_map an output varies over the same manual mesh axes as the
  inputs. Typing it so keeps JAX from treating it as device-invariant, which
  would sum gradients across devices (FFI) or fail the trace (pallas_call,
  whose check demands a manual axis type).
  """
  aval = jax.typeof(like)
  if jax.sharding.AxisType.Manual not in aval.sharding.mesh.axis_types:
    return jax.ShapeDtypeStruct(shape, dtype)  # not inside shard_map
  replicated = aval.sharding.update(spec=jax.sharding.PartitionSpec(*[None] * len(shape)))
  return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated,
                              manual_axis_type=aval.manual_axis_type)


def _cpu_call(target, like, results, *args):
  """Calls a CPU kernel; `results` are (shape, dtype) pairs, typed like `like`."""
  problem = _register_cpu_kernel()
  if problem:
    raise RuntimeError(problem)
  call = jax.ffi.ffi_call(target, tuple(output_like(like, d, t) for d, t in results),
                          vmap_method="expand_dims")
  return call(*args)


def _rasterize_cpu(vertices, triangles, height, width):
  """[B, N, 3] -> ids, barycentric, depth through the FFI custom call."""
  batch = vertices.shape[0]
  return _cpu_call("facerecon_rasterize_cpu", vertices,
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
  flat, batch = _flatten_batch(vertices, 2)
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
      from facerecon import render_pallas  # Deferred: it imports this module.
      ids = render_pallas.rasterize_ids(flat, triangles, height, width)
    elif backend == "triton":
      from facerecon import render_triton  # Deferred: it imports this module.
      ids = render_triton.rasterize_ids(flat, triangles, height, width)
    else:
      ids = jax.vmap(lambda v: _rasterize_reference_image(
          v, triangles, height, width))(flat)
    bary, depth, mask = _raster_fields(flat, triangles, ids)
  unflat = lambda x, trailing: x.reshape(batch + x.shape[x.ndim - trailing:])
  return Raster(unflat(ids, 2), unflat(bary, 3), unflat(depth, 2), unflat(mask, 2))


# --- Interpolation ----------------------------------------------------------------


def _pixel_grid(height, width, dtype):
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=dtype),
                            jnp.arange(width, dtype=dtype), indexing="ij")
  return cols, rows


def _raster_fields(vertices, triangles, triangle_id):
  """Barycentrics [B, H, W, 3], depth and mask [B, H, W] from each pixel's
  triangle id: how every backend but 'cpu' fills in the Raster."""
  mask = triangle_id >= 0
  bary, depth = _pixel_barycentrics(_pixel_corners(vertices, triangles, triangle_id)[1])
  return (jnp.where(mask[..., None], bary, 0.0), jnp.where(mask, depth, BACKGROUND_DEPTH),
          mask)


def _pixel_corners(vertices, triangles, triangle_id):
  """Corner indices [B, H, W, 3] and positions [B, H, W, 3, 3] of each pixel's
  triangle; background pixels get a harmless unit triangle (no NaN)."""
  mask = triangle_id >= 0
  corner_index = triangles[jnp.maximum(triangle_id, 0)]
  corners = jax.vmap(lambda v, i: v[i])(vertices, corner_index)
  unit = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                   vertices.dtype)
  return corner_index, jnp.where(mask[..., None, None], corners, unit)


def _pixel_barycentrics(corners):
  """Barycentrics [B, H, W, 3] and depth [B, H, W] of each pixel centre in
  its triangle `corners` [B, H, W, 3, 3]."""
  cols, rows = _pixel_grid(corners.shape[-4], corners.shape[-3], corners.dtype)
  bary, depth = _barycentrics(triangle_setup(corners), cols, rows)
  return jnp.stack(bary, axis=-1), depth


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
    return _cpu_call("facerecon_interpolate_cpu", vertices, ((shape, jnp.float32),),
                     attributes, vertices, triangle_id, triangles)[0]
  corner_index, corners = _pixel_corners(vertices, triangles, triangle_id)
  bary = _pixel_barycentrics(corners)[0]
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
    grad_attributes, grad_vertices = _cpu_call(
        "facerecon_interpolate_grad_cpu", vertices,
        ((attributes.shape, jnp.float32), (vertices.shape, jnp.float32)),
        attributes, vertices, triangle_id, triangles, grad_out.astype(jnp.float32))
    return grad_attributes, grad_vertices, None, None
  grad_out = jnp.where((triangle_id >= 0)[..., None], grad_out, 0.0)
  corner_index, corners = _pixel_corners(vertices, triangles, triangle_id)
  setup = triangle_setup(corners)
  cols, rows = _pixel_grid(triangle_id.shape[-2], triangle_id.shape[-1], vertices.dtype)
  bary = jnp.stack(_barycentrics(setup, cols, rows)[0], axis=-1)  # [B, H, W, 3]
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


def interpolate(attributes, raster: Raster, vertices, triangles,
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
  backend = backend or default_backend()
  if backend not in BACKENDS:
    raise ValueError(f"unknown interpolate backend '{backend}'")
  dtype = _interpolate_dtype(vertices, backend)
  vertices = jnp.asarray(vertices, dtype)
  triangles = jnp.asarray(triangles, jnp.int32)
  attributes = jnp.broadcast_to(jnp.asarray(attributes, dtype),
                                vertices.shape[:-1] + (jnp.shape(attributes)[-1],))
  # Shared attributes get the vertices' type under shard_map, so the
  # backward's per-device gradient matches it (pvary's transpose sums them).
  attributes = _vary_like(attributes, vertices)
  flat_vertices, batch = _flatten_batch(vertices, 2)
  flat_attributes, _ = _flatten_batch(attributes, 2)
  flat_ids, _ = _flatten_batch(raster.triangle_id, 2)
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
    (grad_vertices,) = _cpu_call("facerecon_depth_grad_cpu", vertices,
                                 ((vertices.shape, jnp.float32),),
                                 vertices, triangle_id, triangles,
                                 grad_depth.astype(jnp.float32))
  else:
    grad_z, grad_vertices = _interpolate_bwd(
        backend, (vertices[..., 2:], vertices, triangle_id, triangles), grad_depth[..., None])[:2]
    grad_vertices = grad_vertices.at[..., 2].add(grad_z[..., 0])
  return grad_vertices.astype(vertices.dtype), jnp.zeros_like(grad_depth), None, None


_depth.defvjp(_depth_fwd, _depth_bwd)


def interpolate_depth(raster: Raster, vertices, triangles, backend: str | None = None):
  """The depth map [..., H, W] as a differentiable function of the vertices.

  Equals `interpolate(vertices[..., 2:], raster, vertices, triangles)[..., 0]`
  (z interpolated over each pixel's visible triangle, 0 off the mask) and has
  the same gradient, but the value is the raster's depth (no second pass) and
  the backward is one kernel on 'cpu' that writes the z and the x, y terms
  together. This is what depth losses should call. Float32 as `interpolate`.
  """
  backend = backend or default_backend()
  if backend not in BACKENDS:
    raise ValueError(f"unknown interpolate backend '{backend}'")
  vertices = jnp.asarray(vertices, _interpolate_dtype(vertices, backend))
  flat_vertices, batch = _flatten_batch(vertices, 2)
  flat_ids, _ = _flatten_batch(raster.triangle_id, 2)
  flat_depth, _ = _flatten_batch(raster.depth, 2)
  depth = _depth(flat_vertices, flat_depth.astype(flat_vertices.dtype), flat_ids,
                 jnp.asarray(triangles, jnp.int32), backend)
  return depth.reshape(batch + depth.shape[1:])


# --- Shading ------------------------------------------------------------------------


def lambertian(albedo, normals, light_direction, ambient=0.35, diffuse=0.65):
  """Shaded colour: albedo * (ambient + diffuse * max(n . l, 0)).

  `normals` and `light_direction` in the same (camera, y-up) frame; the
  light direction points from the surface towards the light.
  """
  light = jnp.asarray(light_direction, jnp.float32)
  light = light / jnp.linalg.norm(light, axis=-1, keepdims=True)
  cosine = jnp.maximum(jnp.sum(normals * light, axis=-1, keepdims=True), 0.0)
  return albedo * (ambient + diffuse * cosine)


def sh_irradiance(normals, coefficients):
  """l . [1, nx, ny, nz] per pixel: normals [..., H, W, 3], one grey light
  per image [..., 4] -> [..., H, W] (written out: fast on every backend)."""
  c = coefficients[..., None, None, :]
  return (c[..., 0] + c[..., 1] * normals[..., 0] + c[..., 2] * normals[..., 1]
          + c[..., 3] * normals[..., 2])


def sh_basis(normals):
  """First-order spherical-harmonics basis [1, nx, ny, nz]: [..., 3] -> [..., 4]."""
  return jnp.concatenate([jnp.ones_like(normals[..., :1]), normals], axis=-1)


def sh_shading(albedo, normals, coefficients):
  """albedo * (l . [1, nx, ny, nz]) with 4 lighting coefficients per image
  ([..., 4], shared by the channels) or per channel ([..., C, 4]).

  albedo [..., H, W, C], normals [..., H, W, 3]; coefficients' leading dims
  are the images' batch dims.
  """
  coefficients = jnp.asarray(coefficients)
  if coefficients.ndim == albedo.ndim - 2:  # [..., 4]: one grey light
    return albedo * sh_irradiance(normals, coefficients)[..., None]
  # [..., C, 4]: a light per channel.
  channels = [sh_irradiance(normals, coefficients[..., c, :])
              for c in range(coefficients.shape[-2])]
  return albedo * jnp.stack(channels, axis=-1)


# --- Face renders ---------------------------------------------------------------------


class FaceRender(NamedTuple):
  """Everything one rasterization of posed faces gives; images [..., H, W, C]."""
  raster: Raster
  image_vertices: jax.Array  # [..., N, 3] the projected vertices
  depth: jax.Array           # [..., H, W] interpolated z (differentiable), 0 off the face
  mask: jax.Array            # [..., H, W] bool
  normals: jax.Array         # [..., H, W, 3] unit normals, camera frame (y up), 0 off
  pncc: jax.Array            # [..., H, W, 3] PNCC code
  albedo: jax.Array          # [..., H, W, 3] vertex colours / 255
  vertices: jax.Array        # [..., N, 3] the model-space mesh (shape + expression)


def render_face(model, params, texture, height: int, width: int,
                backend: str | None = None) -> FaceRender:
  """Renders faces from parameter vectors [..., P] and texture coefficients
  [..., Kt] (or None for the mean texture) with the scaled-orthographic camera.

  One rasterization; depth, normals, PNCC and albedo come from one
  interpolation, so gradients reach pose, shape, expression and texture.
  """
  from facerecon import camera  # Deferred: camera and morphable are higher level.
  from facerecon import morphable
  from facerecon import params as params_lib

  face = params_lib.split(params, model.layout)
  vertices = morphable.vertices(model, face.shape, face.expression)
  image_vertices = camera.project_scaled_orthographic(vertices, face.pose, height)
  raster = rasterize(image_vertices, model.triangles, height, width, backend)
  # f > 0 only scales, so normals rotate with R; they stay in the y-up camera
  # frame (image rows flip y, normals do not).
  rotation = camera.rotation_matrix(face.angles)
  normals = camera.rotate(rotation, morphable.vertex_normals(vertices, model.triangles))
  colours = (model.texture_mean if texture is None
             else morphable.vertex_colors(model, texture)) / 255.0
  pncc = jnp.broadcast_to(model.pncc, vertices.shape)
  attributes = jnp.concatenate(
      [image_vertices[..., 2:], normals, pncc,
       jnp.broadcast_to(colours, vertices.shape)], axis=-1)
  values = interpolate(attributes, raster, image_vertices, model.triangles, backend)
  normal_image = values[..., 1:4]
  # Written out: reductions over a trailing axis of 3 are slow on XLA's CPU.
  norm = jnp.sqrt(normal_image[..., 0:1] ** 2 + normal_image[..., 1:2] ** 2
                  + normal_image[..., 2:3] ** 2)
  normal_image = jnp.where(raster.mask[..., None],
                           normal_image / jnp.maximum(norm, 1e-6), 0.0)
  return FaceRender(raster, image_vertices, values[..., 0], raster.mask,
                    normal_image, values[..., 4:7], values[..., 7:10], vertices)
