"""Cast shadows of a distant light: which vertices of a mesh the light
reaches, by a shadow map (the mesh rasterized as the light sees it, its
nearest depth kept per pixel, each vertex compared with it). Per vertex,
so a renderer interpolates the result like any attribute; not
differentiable (visibility is a step).
"""

import functools

import jax
import jax.numpy as jnp

from facerecon.render import raster as raster_lib


def light_frame(direction):
  """Unit vectors (u, v, w) [..., 3] each, w = `direction` [..., 3]
  normalised (towards the light), u and v across it."""
  w = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
  # Any axis not parallel to w: the one w is least along.
  axis = jax.nn.one_hot(jnp.argmin(jnp.abs(w), axis=-1), 3, dtype=w.dtype)
  u = jnp.cross(axis, w)
  u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
  return u, jnp.cross(w, u), w


@functools.partial(jax.jit, static_argnames=("size", "backend"))
def light_visibility(vertices, triangles, direction, size: int, bias: float = 1.5,
                     backend: str | None = None):
  """[..., N] float32, 1 where a distant light from `direction` [..., 3]
  (towards the light, in the vertices' frame) reaches the vertex and 0 where
  the mesh's own triangles [T, 3] stand between (cast shadow). `vertices`
  [..., N, 3] in any Cartesian frame. The shadow map is `size` pixels a
  side over the mesh's extent across the light; a vertex is lit when no
  surface within a pixel of it is more than `bias` pixels' width nearer the
  light (the smallest depth over its 3x3 pixels is taken, so a lit surface
  sloped up to atan(bias) from facing the light does not shadow itself).
  Surfaces facing away from the light count as lit: their shading is dark
  already."""
  if size < 2:
    raise ValueError(f"the shadow map needs at least 2 pixels a side, got {size}")
  u, v, w = light_frame(jnp.asarray(direction, jnp.float32))
  points = jnp.asarray(vertices, jnp.float32)
  across = jnp.stack([jnp.sum(points * u[..., None, :], -1),
                      jnp.sum(points * v[..., None, :], -1)], axis=-1)   # [..., N, 2]
  toward = jnp.sum(points * w[..., None, :], -1)                         # [..., N]
  low = jnp.min(across, axis=-2, keepdims=True)
  extent = jnp.max(jnp.max(across, axis=-2) - jnp.min(across, axis=-2), axis=-1)
  scale = (size - 1) / jnp.maximum(extent, 1e-12)                        # pixels per unit
  pixels = (across - low) * scale[..., None, None]
  # Depth in pixel units too (larger = nearer the light, as the rasterizer
  # keeps), so `bias` compares like with like.
  depth = toward * scale[..., None]
  shadow_map = raster_lib.rasterize(jnp.concatenate([pixels, depth[..., None]], axis=-1),
                                    triangles, size, size, backend)
  nearest = jnp.where(shadow_map.mask, shadow_map.depth, -jnp.inf)
  lead = nearest.shape[:-2]
  flat = nearest.reshape((-1, size, size))
  # The smallest depth of each pixel's 3x3 neighbourhood (the farthest
  # surface near it): a lit vertex's own surface is within a pixel of it.
  farthest = -jax.lax.reduce_window(-flat, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1),
                                    "SAME").reshape(nearest.shape)
  column = jnp.clip(jnp.round(pixels[..., 0]), 0, size - 1).astype(jnp.int32)
  row = jnp.clip(jnp.round(pixels[..., 1]), 0, size - 1).astype(jnp.int32)
  occluder = jnp.take_along_axis(farthest.reshape(lead + (size * size,)), row * size + column,
                                 axis=-1)
  return (depth >= occluder - bias).astype(jnp.float32)
