"""The Pallas rasterizer for GPUs (Triton lowering): tile-binned pixel x
triangle blocks.

Same coverage and depth-test rules as `facerecon.render.raster`, and the same
binning as the TPU kernel (pallas_tpu.py): `_tiles.bin_triangles` cuts
each image into TILE x TILE pixel tiles and gives every tile a list of the
triangles whose candidate boxes touch it, padded to whole chunks of CHUNK
triangles. One program per (image, tile) loops over its tile's chunks,
evaluating a [TILE * TILE pixels, CHUNK triangles] block with the shared
`_tiles.nearest_in_block`, and keeps the nearest depth and, on ties, the
lowest triangle index. The rare triangles larger than a tile take the
dense path of the pure-JAX backends and are merged per pixel.

The Triton lowering has no scalar prefetch, no manual copies and no scratch
memory, so the per-tile chunk offsets are an ordinary input read as scalars
in the kernel, the binned triangle data are whole-array inputs in global
memory, and each chunk is loaded with a dynamic slice of CHUNK lanes. The
whole batch is one launch: the grid is (image, tile).

`rasterize_ids(..., interpret=True)` runs the kernel on the CPU; the tests
do that. Verified in interpret mode only: not yet run or measured on a GPU.
"""

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from facerecon.render import _sharding
from facerecon.render import _tiles

# Block sizes (Triton needs powers of two), chosen for register pressure; not
# yet tuned on a GPU. A program evaluates a [TILE * TILE, CHUNK] = [256, 32]
# block per loop step: 8,192 values per block-sized tensor. With NUM_WARPS = 8
# (256 threads) that is 32 registers per thread per tensor; the loop body
# keeps about five alive at once (dx or dy, b1, b2, z, the coverage mask),
# about 160 of the 255 registers a thread may have, so it should not spill.
# CHUNK = 64, or 4 warps, would double that and most likely spill. A 16-pixel
# tile also means only triangles spanning more than 16 pixels take the dense
# path (almost none on a face mesh), and a tile's padding (at most one
# partly filled chunk) stays small next to its work.
TILE = 16
CHUNK = 32
NUM_WARPS = 8


def _tile_kernel(chunk_start_ref, data_ref, ids_ref, z_ref, id_ref, *, tiles_x):
  """One (image, tile): the nearest binned triangle of each of its pixels.

  chunk_start_ref [B, num_tiles + 1], data_ref [B, fields, capacity] and
  ids_ref [B, 1, capacity] are whole arrays in global memory; z_ref and
  id_ref are this tile's [TILE * TILE] outputs.
  """
  image, tile = pl.program_id(0), pl.program_id(1)
  pixel = jax.lax.broadcasted_iota(jnp.int32, (TILE * TILE, 1), 0)
  px = ((tile % tiles_x) * TILE + pixel % TILE).astype(jnp.float32)
  py = ((tile // tiles_x) * TILE + pixel // TILE).astype(jnp.float32)
  num_setup = len(_tiles.TriangleSetup._fields)

  def chunk(c, best):
    lanes = pl.ds(pl.multiple_of(c * CHUNK, CHUNK), CHUNK)
    row = [data_ref[image, k, lanes][None, :] for k in range(len(_tiles.BIN_FIELDS))]
    setup = _tiles.TriangleSetup(*row[:num_setup])
    box = tuple(row[num_setup:])
    ids = ids_ref[image, 0, lanes][None, :]
    return _tiles.nearest_in_block(setup, box, ids, px, py, best)

  init = (jnp.full((TILE * TILE, 1), -jnp.inf, jnp.float32),
          jnp.full((TILE * TILE, 1), _tiles.NO_TRIANGLE, jnp.int32))
  first, end = chunk_start_ref[image, tile], chunk_start_ref[image, tile + 1]
  best_z, best_id = jax.lax.fori_loop(first, end, chunk, init)
  z_ref[...] = best_z[:, 0]
  id_ref[...] = best_id[:, 0]


def rasterize_ids(vertices, triangles, height: int, width: int, interpret: bool = False):
  """Triangle ids [B, H, W] of vertices [B, N, 3] (image coordinates), -1 where
  no triangle covers the pixel.

  `interpret`: False on a GPU (compiled through Triton), True to run the
  kernel's semantics on another platform (the CPU tests).
  """
  batch = vertices.shape[0]
  if triangles.shape[0] == 0 or batch == 0:  # nothing to draw, or no images (no empty grid)
    return jnp.full((batch, height, width), -1, jnp.int32)
  data, ids, chunk_start, setup, box, large = jax.vmap(
      lambda v: _tiles.bin_triangles(v, triangles, height, width, TILE, CHUNK))(vertices)
  tiles_x, tiles_y = pl.cdiv(width, TILE), pl.cdiv(height, TILE)
  num_tiles = tiles_x * tiles_y
  out_block = pl.BlockSpec((None, None, TILE * TILE), lambda image, tile: (image, tile, 0))
  tile_z, tile_id = pl.pallas_call(
      functools.partial(_tile_kernel, tiles_x=tiles_x),
      out_shape=(_sharding.output_like(vertices, (batch, num_tiles, TILE * TILE), jnp.float32),
                 _sharding.output_like(vertices, (batch, num_tiles, TILE * TILE), jnp.int32)),
      grid=(batch, num_tiles),
      # No in_specs: each input is one whole-array block, read with explicit indices.
      out_specs=(out_block, out_block),
      compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS),
      interpret=interpret,
  )(chunk_start, data, ids)
  tile_z = _tiles.untile(tile_z, height, width, TILE)
  tile_id = _tiles.untile(tile_id, height, width, TILE)

  setup, box, order, num_large = jax.vmap(_tiles.large_first)(setup, box, large)
  large_z, large_id = _tiles.large_triangles_nearest_batch(setup, box, order, num_large,
                                                            height, width, vertices)
  return _tiles.merge_nearest(tile_z, tile_id, large_z, large_id).reshape(
      batch, height, width)
