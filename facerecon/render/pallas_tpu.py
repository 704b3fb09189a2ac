"""The Pallas rasterizer (Mosaic, for TPU): tile-binned pixel x triangle blocks.

Same coverage and depth-test rules as `facerecon.render.raster` (it uses the same
setup formulas). The image is cut into TILE x TILE pixel tiles. A triangle
whose candidate box fits in TILE pixels a side touches at most 2 x 2 tiles
and is binned into each. Each tile's list is padded to CHUNK triangles
(padding never covers anything); the binning (`_tiles.bin_triangles`) is
shared with the GPU kernel in pallas_triton.py. One program per tile loops
over its chunks, evaluating a [TILE * TILE pixels (sublanes), CHUNK
triangles (lanes)] block and keeping the nearest depth and, on ties, the
lowest triangle index. So the cost grows with pixels x triangles per tile,
not with tiles x triangles. The rare larger triangles take the dense path
of the pure-JAX backends.

`rasterize_ids(..., interpret=pltpu.InterpretParams())` checks the TPU
semantics on the CPU; the tests do that. Not yet measured on a TPU.
"""

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from facerecon.render import _sharding
from facerecon.render import _tiles

TILE = 8     # pixels per tile side: 64 pixels, the sublane dim of a block
CHUNK = 128  # triangles per block, the lane dim


def _tile_kernel(chunk_start_ref, data_hbm, ids_hbm, z_ref, id_ref, data_vmem, ids_vmem,
                 *, tiles_x):
  ty, tx = pl.program_id(0), pl.program_id(1)
  tile = ty * tiles_x + tx
  pixel = jax.lax.broadcasted_iota(jnp.int32, (TILE * TILE, CHUNK), 0)
  # lax.rem / lax.div, not % and //: pixel is never negative, and Python's
  # floor semantics lower through `sign`, which Mosaic only lowers on a TPU.
  px = (tx * TILE + jax.lax.rem(pixel, TILE)).astype(jnp.float32)
  py = (ty * TILE + jax.lax.div(pixel, TILE)).astype(jnp.float32)

  def chunk(c, best):
    pltpu.sync_copy(data_hbm.at[:, pl.ds(c * CHUNK, CHUNK)], data_vmem)
    pltpu.sync_copy(ids_hbm.at[:, pl.ds(c * CHUNK, CHUNK)], ids_vmem)
    row = [data_vmem[k:k + 1, :] for k in range(len(_tiles.BIN_FIELDS))]
    setup = _tiles.TriangleSetup(*row[:len(_tiles.TriangleSetup._fields)])
    box = tuple(row[len(_tiles.TriangleSetup._fields):])
    return _tiles.nearest_in_block(setup, box, ids_vmem[...], px, py, best)

  init = (jnp.full((TILE * TILE, 1), -jnp.inf, jnp.float32),
          jnp.full((TILE * TILE, 1), _tiles.NO_TRIANGLE, jnp.int32))
  best_z, best_id = jax.lax.fori_loop(chunk_start_ref[tile], chunk_start_ref[tile + 1], chunk,
                                      init)
  z_ref[0] = best_z
  id_ref[0] = best_id


def _rasterize_image(vertices, triangles, height, width, interpret):
  data, ids, chunk_start, setup, box, large = _tiles.bin_triangles(
      vertices, triangles, height, width, TILE, CHUNK)
  tiles_x, tiles_y = pl.cdiv(width, TILE), pl.cdiv(height, TILE)
  num_tiles = tiles_x * tiles_y
  out_block = pl.BlockSpec((1, TILE * TILE, 1),
                           lambda ty, tx, starts: (ty * tiles_x + tx, 0, 0))
  tile_z, tile_id = pl.pallas_call(
      functools.partial(_tile_kernel, tiles_x=tiles_x),
      out_shape=(_sharding.output_like(vertices, (num_tiles, TILE * TILE, 1), jnp.float32),
                 _sharding.output_like(vertices, (num_tiles, TILE * TILE, 1), jnp.int32)),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(tiles_y, tiles_x),
          in_specs=[pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)],
          out_specs=(out_block, out_block),
          scratch_shapes=[pltpu.VMEM((len(_tiles.BIN_FIELDS), CHUNK), jnp.float32),
                          pltpu.VMEM((1, CHUNK), jnp.int32)]),
      interpret=interpret,
  )(chunk_start, data, ids)

  tile_z = _tiles.untile(tile_z[..., 0], height, width, TILE)
  tile_id = _tiles.untile(tile_id[..., 0], height, width, TILE)
  large_z, large_id = _tiles.large_triangles_nearest(setup, box, large, height, width, vertices)
  return _tiles.merge_nearest(tile_z, tile_id, large_z, large_id).reshape(height, width)


def rasterize_ids(vertices, triangles, height: int, width: int, interpret=None):
  """Triangle ids [B, H, W] of vertices [B, N, 3] (image coordinates).

  Images go one at a time (lax.map), so each image's dense path can skip
  chunks without large triangles. `interpret`: None on a TPU, or
  `pltpu.InterpretParams()` to run the TPU semantics on another platform.
  """
  return jax.lax.map(
      lambda v: _rasterize_image(v, triangles, height, width, interpret), vertices)
