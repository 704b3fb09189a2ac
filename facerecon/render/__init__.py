"""Render primitives: rasterize (visibility) and interpolate (differentiable),
split the way nvdiffrast splits them. Nothing here knows about faces
(`facerecon.face_render` composes these into face renders).

- `raster`: `rasterize` and its backends ('cpu', 'pallas', 'triton',
  'scatter', 'reference'), `available_backends`, `default_backend`.
- `interpolation`: `interpolate` and `interpolate_depth`, with custom VJPs.
- `shadows`: `light_visibility`, a distant light's cast shadows per vertex.
- `pallas_tpu`, `pallas_triton`: the tile-binned Pallas kernels for TPU and
  GPU; `_tiles` holds what they share with the pure-JAX backends,
  `_cpu_kernel` the XLA FFI kernels, `_sharding` their shard_map typing.
"""

from facerecon.render.interpolation import interpolate
from facerecon.render.interpolation import interpolate_depth
from facerecon.render.raster import available_backends
from facerecon.render.raster import BACKENDS
from facerecon.render.raster import BACKGROUND_DEPTH
from facerecon.render.raster import check_triangles
from facerecon.render.raster import default_backend
from facerecon.render.raster import Raster
from facerecon.render.raster import rasterize
from facerecon.render.shadows import light_visibility

__all__ = ["BACKENDS", "BACKGROUND_DEPTH", "Raster", "available_backends", "check_triangles",
           "default_backend", "interpolate", "interpolate_depth", "light_visibility",
           "rasterize"]
