"""The Pallas rasterizer (Mosaic, for TPU): tile-binned pixel x triangle blocks.

Same coverage and depth-test rules as `facerecon.render` (it uses the same
setup formulas). The image is cut into TILE x TILE pixel tiles. A triangle
whose candidate box fits in TILE pixels a side touches at most 2 x 2 tiles
and is binned into each. Each tile's list is padded to CHUNK triangles
(padding never covers anything). One program per tile loops over its chunks,
evaluating a [TILE * TILE pixels (sublanes), CHUNK triangles (lanes)] block
and keeping the nearest depth and, on ties, the lowest triangle index. So
the cost grows with pixels x triangles per tile, not with tiles x
triangles. The rare larger triangles take the dense path of the pure-JAX
backends.

`rasterize_ids(..., interpret=pltpu.InterpretParams())` checks the TPU
semantics on the CPU; the tests do that. Not yet measured on a TPU.
"""

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from facerecon import render

TILE = 8     # pixels per tile side: 64 pixels, the sublane dim of a block
CHUNK = 128  # triangles per block, the lane dim
_FIELDS = render.TriangleSetup._fields + ("x_lo", "x_hi", "y_lo", "y_hi")


def _bin_triangles(vertices, triangles, height, width):
  """Per-tile padded triangle lists for one image.

  Returns (data [len(_FIELDS), capacity] float32, ids [1, capacity] int32,
  chunk_start [num_tiles + 1] int32: tile k owns chunks chunk_start[k] to
  chunk_start[k + 1]), plus the per-triangle setup, box and large mask for
  the dense path.
  """
  num_triangles = triangles.shape[0]
  corners = vertices[triangles]
  setup = render.triangle_setup(corners)
  box = render._triangle_boxes(corners)
  col_lo, num_cols, row_lo, num_rows, finite = render._candidate_ranges(box, height, width)
  nonempty = finite & (num_cols > 0) & (num_rows > 0)
  binned = nonempty & (num_cols <= TILE) & (num_rows <= TILE)
  large = nonempty & ~binned

  tiles_x, tiles_y = pl.cdiv(width, TILE), pl.cdiv(height, TILE)
  num_tiles = tiles_x * tiles_y
  tx0, ty0 = col_lo // TILE, row_lo // TILE
  tx1, ty1 = (col_lo + num_cols - 1) // TILE, (row_lo + num_rows - 1) // TILE
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
  chunks = (counts + CHUNK - 1) // CHUNK
  chunk_start = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(chunks)]).astype(jnp.int32)
  capacity = (pl.cdiv(4 * num_triangles, CHUNK) + num_tiles) * CHUNK
  in_tile = key < num_tiles
  safe_key = jnp.minimum(key, num_tiles - 1)
  rank = jnp.arange(key.shape[0], dtype=jnp.int32) - first_entry[safe_key]
  slot = jnp.where(in_tile, chunk_start[safe_key] * CHUNK + rank, capacity)
  slot_triangle = jnp.full(capacity, -1, jnp.int32).at[slot].set(entry_triangle, mode="drop")

  fields = list(setup) + list(box)
  present = slot_triangle >= 0
  gather = lambda a: jnp.where(present, a[jnp.maximum(slot_triangle, 0)], jnp.nan)
  data = jnp.stack([gather(f) for f in fields]).astype(jnp.float32)
  ids = jnp.where(present, slot_triangle, render._NO_TRIANGLE)[None, :]
  return data, ids, chunk_start, setup, box, large


def _tile_kernel(chunk_start_ref, data_hbm, ids_hbm, z_ref, id_ref, data_vmem, ids_vmem,
                 *, tiles_x):
  ty, tx = pl.program_id(0), pl.program_id(1)
  tile = ty * tiles_x + tx
  pixel = jax.lax.broadcasted_iota(jnp.int32, (TILE * TILE, CHUNK), 0)
  px = (tx * TILE + pixel % TILE).astype(jnp.float32)
  py = (ty * TILE + pixel // TILE).astype(jnp.float32)

  def chunk(c, carry):
    best_z, best_id = carry
    pltpu.sync_copy(data_hbm.at[:, pl.ds(c * CHUNK, CHUNK)], data_vmem)
    pltpu.sync_copy(ids_hbm.at[:, pl.ds(c * CHUNK, CHUNK)], ids_vmem)
    row = {name: data_vmem[k:k + 1, :] for k, name in enumerate(_FIELDS)}
    setup = render.TriangleSetup(*(row[name] for name in render.TriangleSetup._fields))
    bary, z = render._barycentrics(setup, px, py)
    in_box = ((px >= row["x_lo"]) & (px <= row["x_hi"])
              & (py >= row["y_lo"]) & (py <= row["y_hi"]))
    inside = render._covers(bary, z, in_box)
    z = jnp.where(inside, z, -jnp.inf)
    chunk_z = jnp.max(z, axis=1, keepdims=True)
    chunk_id = jnp.min(jnp.where(inside & (z == chunk_z), ids_vmem[...], render._NO_TRIANGLE),
                       axis=1, keepdims=True)
    better = (chunk_z > best_z) | ((chunk_z == best_z) & (chunk_id < best_id))
    return jnp.where(better, chunk_z, best_z), jnp.where(better, chunk_id, best_id)

  init = (jnp.full((TILE * TILE, 1), -jnp.inf, jnp.float32),
          jnp.full((TILE * TILE, 1), render._NO_TRIANGLE, jnp.int32))
  best_z, best_id = jax.lax.fori_loop(chunk_start_ref[tile], chunk_start_ref[tile + 1], chunk,
                                      init)
  z_ref[0] = best_z
  id_ref[0] = best_id


def _rasterize_image(vertices, triangles, height, width, interpret):
  data, ids, chunk_start, setup, box, large = _bin_triangles(vertices, triangles, height, width)
  tiles_x, tiles_y = pl.cdiv(width, TILE), pl.cdiv(height, TILE)
  num_tiles = tiles_x * tiles_y
  out_block = pl.BlockSpec((1, TILE * TILE, 1),
                           lambda ty, tx, starts: (ty * tiles_x + tx, 0, 0))
  tile_z, tile_id = pl.pallas_call(
      functools.partial(_tile_kernel, tiles_x=tiles_x),
      out_shape=(jax.ShapeDtypeStruct((num_tiles, TILE * TILE, 1), jnp.float32),
                 jax.ShapeDtypeStruct((num_tiles, TILE * TILE, 1), jnp.int32)),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(tiles_y, tiles_x),
          in_specs=[pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)],
          out_specs=(out_block, out_block),
          scratch_shapes=[pltpu.VMEM((len(_FIELDS), CHUNK), jnp.float32),
                          pltpu.VMEM((1, CHUNK), jnp.int32)]),
      interpret=interpret,
  )(chunk_start, data, ids)

  def untile(a):
    a = a.reshape(tiles_y, tiles_x, TILE, TILE).transpose(0, 2, 1, 3)
    return a.reshape(tiles_y * TILE, tiles_x * TILE)[:height, :width].reshape(-1)

  tile_z, tile_id = untile(tile_z), untile(tile_id)
  large_z, large_id = render._large_triangles_nearest(setup, box, large, height, width, vertices)
  return render._merge_nearest(tile_z, tile_id, large_z, large_id).reshape(height, width)


def rasterize_ids(vertices, triangles, height: int, width: int, interpret=None):
  """Triangle ids [B, H, W] of vertices [B, N, 3] (image coordinates).

  Images go one at a time (lax.map), so each image's dense path can skip
  chunks without large triangles. `interpret`: None on a TPU, or
  `pltpu.InterpretParams()` to run the TPU semantics on another platform.
  """
  return jax.lax.map(
      lambda v: _rasterize_image(v, triangles, height, width, interpret), vertices)
