"""Triangle setup and the nearest-triangle search shared by every rasterizer
backend and kernel (package-internal).

Every backend evaluates the same formulas in the same order: per-triangle
constants (`triangle_setup`), barycentrics and depth of a pixel centre
(`barycentrics`), the coverage test (`covers`) and the z-test of a block of
pixels against a block of triangles (`nearest_in_block`: the nearer wins,
an exact depth tie the lower triangle index). The dense path tests every
pixel against chunks of triangles; the Pallas kernels bin small triangles
into pixel tiles (`bin_triangles`) and leave the rare large ones to the
dense path, merging the two per pixel (`merge_nearest`).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from facerecon.render import _sharding

NO_TRIANGLE = np.iinfo(np.int32).max  # "no triangle yet" in min-id selections
DENSE_CHUNK = 64  # triangles per step of the dense path

# Coverage tolerance on barycentrics: a pixel centre on a shared edge is then
# covered by both triangles (the depth test picks one), so rounding cannot
# open cracks between neighbours.
INSIDE_TOLERANCE = 1e-6
# Covered pixel centres also lie in the triangle's bounding box widened by this
# many pixels, which bounds how far the tolerance reaches for thin slivers.
# Both constants are mirrored in kernels/rasterize.h.
BOX_MARGIN = 1e-3


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


def barycentrics(setup: TriangleSetup, px, py):
  """Barycentrics (b0, b1, b2) and depth of points (px, py)."""
  dx, dy = px - setup.x0, py - setup.y0
  b1 = setup.k1x * dx + setup.k1y * dy
  b2 = setup.k2x * dx + setup.k2y * dy
  z = setup.z0 + b1 * setup.dz1 + b2 * setup.dz2
  return (1.0 - b1 - b2, b1, b2), z


def triangle_boxes(corners):
  """Bounding boxes widened by BOX_MARGIN: (x_lo, x_hi, y_lo, y_hi), each [...]."""
  return (jnp.min(corners[..., 0], axis=-1) - BOX_MARGIN,
          jnp.max(corners[..., 0], axis=-1) + BOX_MARGIN,
          jnp.min(corners[..., 1], axis=-1) - BOX_MARGIN,
          jnp.max(corners[..., 1], axis=-1) + BOX_MARGIN)


def covers(bary, z, valid):
  """Whether points with barycentrics `bary` and depth `z` are covered (and `valid`)."""
  b0, b1, b2 = bary
  return (valid & (b0 >= -INSIDE_TOLERANCE) & (b1 >= -INSIDE_TOLERANCE)
          & (b2 >= -INSIDE_TOLERANCE) & jnp.isfinite(z))


def nearest_in_block(setup, box, ids, px, py, best):
  """One block of the z-test: pixel centres px, py [P, 1] against triangles
  whose setup, box and mesh indices broadcast as [1, C] (padding: NaN setup
  and box, id NO_TRIANGLE). best: the nearest (z, id) so far, each [P, 1].
  Returns the updated (z, id): the nearer wins, equal z the lower id. Shared
  by the dense path and the Pallas kernels, so all evaluate the same ops."""
  best_z, best_id = best
  x_lo, x_hi, y_lo, y_hi = box
  bary, z = barycentrics(setup, px, py)  # each [P, C]
  inside = covers(bary, z, (px >= x_lo) & (px <= x_hi) & (py >= y_lo) & (py <= y_hi))
  z = jnp.where(inside, z, -jnp.inf)
  block_z = jnp.max(z, axis=1, keepdims=True)
  block_id = jnp.min(jnp.where(inside & (z == block_z), ids, NO_TRIANGLE), axis=1,
                     keepdims=True)
  better = (block_z > best_z) | ((block_z == best_z) & (block_id < best_id))
  return jnp.where(better, block_z, best_z), jnp.where(better, block_id, best_id)


def dense_nearest(setup, box, ids, px, py, like, num_active=None):
  """Nearest covering triangle of every pixel, testing all pairs in chunks.

  setup, box, ids: per-triangle arrays [T] (ids are the triangles' indices in
  the mesh); px, py: pixel centres [P, 1]. Returns (z [P], id [P]) with
  -inf / NO_TRIANGLE where nothing covers; equal z goes to the lowest id.
  Only chunks starting before `num_active` are evaluated (triangles past it
  are skipped, a chunk at a time).
  """
  pad = (-ids.shape[0]) % DENSE_CHUNK
  # Padding entries are NaN: they never cover a pixel.
  chunked = lambda a, fill=jnp.nan: jnp.pad(a, (0, pad), constant_values=fill).reshape(
      -1, DENSE_CHUNK)
  setup = jax.tree.map(chunked, setup)
  box = jax.tree.map(chunked, box)
  ids = chunked(ids, NO_TRIANGLE)
  starts = jnp.arange(ids.shape[0], dtype=jnp.int32) * DENSE_CHUNK

  def evaluate(carry, setup, box, chunk_ids):
    return nearest_in_block(setup, box, chunk_ids, px, py, carry)

  def scan_chunk(carry, chunk):
    setup, box, chunk_ids, start = chunk
    if num_active is None:
      return evaluate(carry, setup, box, chunk_ids), None
    return jax.lax.cond(start < num_active, lambda c: evaluate(c, setup, box, chunk_ids),
                        lambda c: c, carry), None

  init = _sharding.vary_like((jnp.full((px.shape[0], 1), -jnp.inf, jnp.float32),
                              jnp.full((px.shape[0], 1), NO_TRIANGLE, jnp.int32)), like)
  (best_z, best_id), _ = jax.lax.scan(scan_chunk, init, (setup, box, ids, starts))
  return best_z[:, 0], best_id[:, 0]


def pixel_centres(height, width):
  """Column and row of every pixel centre, each [H * W, 1] (row-major)."""
  cols, rows = pixel_grid(height, width, jnp.float32)
  return cols.reshape(-1, 1), rows.reshape(-1, 1)


def candidate_ranges(box, height, width):
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


def large_first(setup, box, large):
  """Setup, box and mesh indices reordered with the `large` triangles first
  (each group in index order), and how many are large."""
  order = jnp.argsort(~large, stable=True).astype(jnp.int32)
  take = lambda a: a[order]
  return (jax.tree.map(take, setup), jax.tree.map(take, box), order,
          jnp.sum(large).astype(jnp.int32))


def large_triangles_nearest(setup, box, large, height, width, like):
  """The dense path for one image's `large` triangles; chunks holding none
  are skipped. Returns (z [P], id [P])."""
  setup, box, order, num_large = large_first(setup, box, large)
  px, py = pixel_centres(height, width)
  return dense_nearest(setup, box, order, px, py, like, num_active=num_large)


def large_triangles_nearest_batch(setup, box, order, num_large, height, width, vertices):
  """The dense path for a batch of images: per-image setup, box and mesh
  indices, large triangles first ([B, T] each, from `large_first`), and
  how many are large [B]. Returns (z [B, P], id [B, P]).

  Chunks past the largest count in the batch are skipped: an unbatched
  predicate, so the skipping survives vmap (a batched one turns lax.cond
  into a select that runs both branches).
  """
  num_active = jnp.max(num_large)
  px, py = pixel_centres(height, width)
  return jax.vmap(
      lambda s, b, o, v: dense_nearest(s, b, o, px, py, v, num_active=num_active))(
          setup, box, order, vertices)


def merge_nearest(z_a, id_a, z_b, id_b):
  """Nearest of two candidate sets per pixel (ties: lowest id); -1 if none."""
  best_z = jnp.maximum(z_a, z_b)
  best_id = jnp.minimum(jnp.where(z_a == best_z, id_a, NO_TRIANGLE),
                        jnp.where(z_b == best_z, id_b, NO_TRIANGLE))
  # A depth without an id (passes that disagreed on a pixel within rounding of
  # an edge) is background too, never the sentinel as an id.
  return jnp.where((best_z > -jnp.inf) & (best_id != NO_TRIANGLE), best_id, -1)


# --- Tile binning (the Pallas kernels) -----------------------------------------

# Rows of the binned triangle data: the setup constants, then the box.
BIN_FIELDS = TriangleSetup._fields + ("x_lo", "x_hi", "y_lo", "y_hi")


def bin_triangles(vertices, triangles, height, width, tile: int, chunk: int):
  """Per-tile padded triangle lists for one image, for the Pallas kernels.

  The image is cut into tile x tile pixel tiles (row-major). A triangle whose
  candidate box fits in `tile` pixels a side touches at most 2 x 2 tiles and
  is binned into each; each tile's list is padded to a multiple of `chunk`
  (padding is NaN with id NO_TRIANGLE, so it never covers anything).
  Larger triangles are left for the dense path.

  Returns (data [len(BIN_FIELDS), capacity] float32, ids [1, capacity] int32,
  chunk_start [num_tiles + 1] int32: tile k owns chunks chunk_start[k] to
  chunk_start[k + 1]), plus the per-triangle setup, box and `large` mask for
  the dense path. Every chunk lies inside capacity.
  """
  num_triangles = triangles.shape[0]
  corners = vertices[triangles]
  setup = triangle_setup(corners)
  box = triangle_boxes(corners)
  col_lo, num_cols, row_lo, num_rows, finite = candidate_ranges(box, height, width)
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
  ids = jnp.where(present, slot_triangle, NO_TRIANGLE)[None, :]
  return data, ids, chunk_start, setup, box, large


def untile(a, height, width, tile: int):
  """Per-tile pixels [..., num_tiles, tile * tile] (tiles and their pixels
  row-major, as `bin_triangles` numbers them) -> [..., height * width]."""
  tiles_x, tiles_y = -(-width // tile), -(-height // tile)
  lead = a.shape[:-2]
  a = jnp.swapaxes(a.reshape(lead + (tiles_y, tiles_x, tile, tile)), -3, -2)
  a = a.reshape(lead + (tiles_y * tile, tiles_x * tile))[..., :height, :width]
  return a.reshape(lead + (height * width,))


def flatten_batch(x, trailing: int):
  """x [..., *trailing dims] -> ([prod(...), *trailing dims], the leading shape)."""
  batch = x.shape[:x.ndim - trailing]
  return x.reshape((math.prod(batch),) + x.shape[x.ndim - trailing:]), batch


def pixel_grid(height, width, dtype):
  """(columns, rows) of the pixel centres, each [H, W]."""
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=dtype),
                            jnp.arange(width, dtype=dtype), indexing="ij")
  return cols, rows


def pixel_corners(vertices, triangles, triangle_id):
  """Corner indices [B, H, W, 3] and positions [B, H, W, 3, 3] of each pixel's
  triangle; background pixels get a harmless unit triangle (no NaN)."""
  mask = triangle_id >= 0
  corner_index = triangles[jnp.maximum(triangle_id, 0)]
  corners = jax.vmap(lambda v, i: v[i])(vertices, corner_index)
  unit = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                   vertices.dtype)
  return corner_index, jnp.where(mask[..., None, None], corners, unit)


def pixel_barycentrics(corners):
  """Barycentrics [B, H, W, 3] and depth [B, H, W] of each pixel centre in
  its triangle `corners` [B, H, W, 3, 3]."""
  cols, rows = pixel_grid(corners.shape[-4], corners.shape[-3], corners.dtype)
  bary, depth = barycentrics(triangle_setup(corners), cols, rows)
  return jnp.stack(bary, axis=-1), depth

