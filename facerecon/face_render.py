"""Faces rendered from parameter vectors: the one path from the parameter
layout (`facerecon.params`) through the morphable model and the camera to
image-space meshes, landmarks and per-pixel maps (depth, mask, normals,
PNCC, albedo). Networks, losses, the synthetic data and the pictures all
render through here.

Image coordinates are those of `facerecon.camera` (scaled orthographic:
x = column, y = row, z = depth with larger nearer).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from facerecon import camera
from facerecon import morphable
from facerecon import params as params_lib
from facerecon import render


class FaceRender(NamedTuple):
  """Everything one rasterization of posed faces gives; images [..., H, W, C]."""
  raster: render.Raster
  image_vertices: jax.Array  # [..., N, 3] the projected vertices
  depth: jax.Array           # [..., H, W] interpolated z (differentiable), 0 off the face
  mask: jax.Array            # [..., H, W] bool
  normals: jax.Array         # [..., H, W, 3] unit normals, camera frame (y up), 0 off
  pncc: jax.Array            # [..., H, W, 3] PNCC code
  albedo: jax.Array          # [..., H, W, 3] vertex colours / 255
  vertices: jax.Array        # [..., N, 3] the model-space mesh (shape + expression)
  extra: jax.Array | None = None  # [..., H, W, C] the `extra` vertex attributes, if any


def posed_vertices(model: morphable.MorphableModel, params, height: int):
  """(model-space vertices, image vertices), each [..., N, 3], of parameter
  vectors [..., P]: the mesh of shape and expression, and that mesh posed
  and projected into an image `height` pixels high."""
  face = params_lib.split(params, model.layout)
  vertices = morphable.vertices(model, face.shape, face.expression)
  return vertices, camera.project_scaled_orthographic(vertices, face.pose, height)


def image_landmarks(model: morphable.MorphableModel, image_vertices):
  """Image (x, y) [..., 68, 2] of the landmark vertices of projected meshes
  [..., N, 3]."""
  return morphable.landmarks(model, image_vertices)[..., :2]


def project_landmarks(model: morphable.MorphableModel, params, height: int):
  """Image (x, y) [..., 68, 2] of the landmarks of parameter vectors [..., P]
  (only the 68 landmark vertices are posed)."""
  pose = params_lib.split(params, model.layout).pose
  return camera.project_scaled_orthographic(morphable.landmarks_from_params(model, params),
                                            pose, height)[..., :2]


def render_face(model: morphable.MorphableModel, params, texture, height: int, width: int,
                backend: str | None = None, colours=None, extra=None) -> FaceRender:
  """Renders faces from parameter vectors [..., P] and texture coefficients
  [..., Kt] (or None for the mean texture) with the scaled-orthographic camera.
  `colours` [..., N, 3] in [0, 1], if given, replace the texture's; `extra`
  [..., N, C] are more vertex attributes to interpolate (`FaceRender.extra`).

  One rasterization; depth, normals, PNCC and albedo come from one
  interpolation, so gradients reach pose, shape, expression and texture.
  """
  vertices, image_vertices = posed_vertices(model, params, height)
  raster = render.rasterize(image_vertices, model.triangles, height, width, backend)
  # f > 0 only scales, so normals rotate with R; they stay in the y-up camera
  # frame (image rows flip y, normals do not).
  rotation = camera.rotation_matrix(params_lib.split(params, model.layout).angles)
  normals = camera.rotate(rotation, morphable.vertex_normals(vertices, model.triangles))
  if colours is None:
    colours = (model.texture_mean if texture is None
               else morphable.vertex_colors(model, texture)) / 255.0
  pncc = jnp.broadcast_to(model.pncc, vertices.shape)
  more = [] if extra is None else [jnp.broadcast_to(
      extra, vertices.shape[:-1] + extra.shape[-1:])]
  attributes = jnp.concatenate(
      [image_vertices[..., 2:], normals, pncc,
       jnp.broadcast_to(colours, vertices.shape)] + more, axis=-1)
  values = render.interpolate(attributes, raster, image_vertices, model.triangles, backend)
  normal_image = values[..., 1:4]
  # Written out: reductions over a trailing axis of 3 are slow on XLA's CPU.
  norm = jnp.sqrt(normal_image[..., 0:1] ** 2 + normal_image[..., 1:2] ** 2
                  + normal_image[..., 2:3] ** 2)
  normal_image = jnp.where(raster.mask[..., None],
                           normal_image / jnp.maximum(norm, 1e-6), 0.0)
  return FaceRender(raster, image_vertices, values[..., 0], raster.mask,
                    normal_image, values[..., 4:7], values[..., 7:10], vertices,
                    None if extra is None else values[..., 10:])


def render_depth(model: morphable.MorphableModel, params, height: int, width: int,
                 backend: str | None = None):
  """Depth [..., H, W] (image z, pixels, larger = nearer; 0 off the face) and
  mask [..., H, W] of parameter vectors [..., P].

  What `render_face` computes for depth, without normals, PNCC and albedo:
  one rasterization (its depth is the value; `render.interpolate_depth`
  gives the gradient), so gradients reach pose, shape and expression
  through the visible triangles' vertices.
  """
  _, image_vertices = posed_vertices(model, params, height)
  raster = render.rasterize(image_vertices, model.triangles, height, width, backend)
  depth = render.interpolate_depth(raster, image_vertices, model.triangles, backend)
  return depth, raster.mask
