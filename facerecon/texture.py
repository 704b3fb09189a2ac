"""Photo textures in a face model's UV layout: the image of a textured OBJ.

`bake(photo, vertices, triangles, uv, size)` colours each texel of a
`size` x `size` texture with the photo where the fitted mesh shows that
point of the face, and fills the rest from its surroundings:
- each texel's triangle and barycentrics come from rasterizing the mesh in
  UV space (`facerecon.render`); a triangle whose UV perimeter, relative to
  its perimeter on the mesh, is over SEAM_STRETCH times the mesh's median
  straddles a seam of the layout (a model with one UV per vertex joins the
  two sides of a seam) and is left out;
- the texel's point on the posed mesh is projected into the photo; it is
  visible where the mesh rendered in the photo (its z-buffer) has no nearer
  surface there;
- hidden texels are filled by push-pull: averages over ever coarser texel
  blocks of the visible ones, blended back down.
Vertices are in the photo's pixels: x = column, y = row, z towards the
viewer (`facerecon.api`'s convention).

`bake_detail(offset, normals, depth, mask, ...)` puts FineNet's detail into
the same layout: a displacement map (the depth offset the detail adds) and
a normal map of the detailed surface, from a depth map (the mesh in its
pixels); texels it does not show get no offset and the mesh's own normal.
"""

from typing import NamedTuple

import cv2
import numpy as np

from facerecon import morphable
from facerecon import render

SEAM_STRETCH = 5.0        # UV / mesh perimeter over the median's: a seam triangle
VISIBLE_TOLERANCE = 1.5   # z-buffer slack, in the visibility render's pixels
VISIBILITY_SIDE = 512      # the visibility render's side (the face's box fills it)


def unseamed_triangles(uv, triangles, vertices) -> np.ndarray:
  """The triangles [T', 3] not stretched across a UV seam (SEAM_STRETCH)."""
  triangles = np.asarray(triangles)

  def perimeter(points):
    corners = np.asarray(points, np.float64)[triangles]
    return np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=-1).sum(axis=1)

  stretch = perimeter(uv) / np.maximum(perimeter(vertices), 1e-12)
  return triangles[stretch <= SEAM_STRETCH * np.median(stretch)]


def fill_holes(colour: np.ndarray, known: np.ndarray) -> np.ndarray:
  """Push-pull: colour [H, W, C] float where `known` [H, W] bool, filled
  elsewhere from the known texels around; known texels keep their value."""
  weighted = colour * known[..., None]
  weight = known.astype(np.float32)
  pyramid = []
  while True:
    pyramid.append((weighted, weight))
    if max(weight.shape) <= 1:
      break
    size = (max(1, (weight.shape[1] + 1) // 2), max(1, (weight.shape[0] + 1) // 2))
    weighted = cv2.resize(weighted, size, interpolation=cv2.INTER_AREA).reshape(
        size[1], size[0], -1)
    weight = cv2.resize(weight, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0])
  top_weighted, top_weight = pyramid[-1]
  filled = np.where(top_weight[..., None] > 0,
                    top_weighted / np.maximum(top_weight, 1e-12)[..., None], 0.5)
  for weighted, weight in reversed(pyramid[:-1]):
    up = cv2.resize(filled, (weight.shape[1], weight.shape[0]),
                    interpolation=cv2.INTER_LINEAR).reshape(weighted.shape)
    # Texels averaging a fraction w of known ones: that average, and the
    # coarser fill for the rest.
    filled = weighted + (1.0 - weight)[..., None] * up
  return filled


def _visibility_depth(vertices, triangles, photo_shape):
  """(z-buffer of the mesh over its box in the photo, the box's top-left
  corner, its scale): a VISIBILITY_SIDE square, whatever the face's size
  (one shape: the rasterizer compiles once)."""
  height, width = photo_shape[:2]
  low = np.clip(np.floor(vertices[:, :2].min(axis=0)), 0, [width - 1, height - 1])
  high = np.clip(np.ceil(vertices[:, :2].max(axis=0)) + 1, low + 1, [width, height])
  scale = VISIBILITY_SIDE / float(max(high - low))
  boxed = np.concatenate([(vertices[:, :2] - low) * scale, vertices[:, 2:] * scale], axis=1)
  raster = render.rasterize(boxed[None].astype(np.float32), triangles, VISIBILITY_SIDE,
                            VISIBILITY_SIDE)
  depth = np.where(np.asarray(raster.mask[0]), np.asarray(raster.depth[0]), -np.inf)
  return depth, low, scale


class Texels(NamedTuple):
  """Where each texel of a UV layout lies on a posed mesh."""
  points: np.ndarray    # [S, S, 3] its point on the mesh (the vertices' frame)
  covered: np.ndarray   # [S, S] bool: in an (unseamed) triangle of the layout
  visible: np.ndarray   # [S, S] bool: and the image shows that point
  triangles: np.ndarray  # [T', 3] the unseamed triangles
  triangle_id: np.ndarray  # [S, S] each texel's triangle in `triangles` (-1: none)
  barycentric: np.ndarray  # [S, S, 3]


def texels(vertices, triangles, uv, size: int, image_shape) -> Texels:
  """The texels of a `size` x `size` texture on a mesh whose vertices are in
  an image's pixels (x = column, y = row, z towards the viewer) of
  `image_shape`; uv [N, 2] in [0, 1] with v up (OBJ's), row 0 at v = 1."""
  vertices = np.asarray(vertices, np.float64)
  uv = np.asarray(uv, np.float64)
  triangles = unseamed_triangles(uv, triangles, vertices).astype(np.int32)
  texel_xy = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5,
                       np.zeros(len(uv))], axis=1)
  raster = render.rasterize(texel_xy[None].astype(np.float32), triangles, size, size)
  triangle_id = np.asarray(raster.triangle_id[0])
  bary = np.asarray(raster.barycentric[0], np.float64)
  covered = triangle_id >= 0
  corners = vertices[triangles[np.maximum(triangle_id, 0)]]  # [S, S, 3, 3]
  points = np.einsum("hwk,hwkc->hwc", bary, corners)
  depth, low, scale = _visibility_depth(vertices, triangles, image_shape)
  box = (points[..., :2] - low) * scale
  columns = np.clip(np.round(box[..., 0]).astype(int), 0, depth.shape[1] - 1)
  rows = np.clip(np.round(box[..., 1]).astype(int), 0, depth.shape[0] - 1)
  inside = ((box[..., 0] > -0.5) & (box[..., 0] < depth.shape[1] - 0.5)
            & (box[..., 1] > -0.5) & (box[..., 1] < depth.shape[0] - 0.5))
  visible = covered & inside & (points[..., 2] * scale
                                >= depth[rows, columns] - VISIBLE_TOLERANCE)
  return Texels(points, covered, visible, triangles, triangle_id, bary)


def _sample(image, points, interpolation=cv2.INTER_LINEAR):
  """`image` [H, W, ...] float32 at points' (column, row)."""
  return cv2.remap(np.asarray(image, np.float32), points[..., 0].astype(np.float32),
                   points[..., 1].astype(np.float32), interpolation,
                   borderMode=cv2.BORDER_REPLICATE)


def bake(photo: np.ndarray, vertices, triangles, uv, size: int = 512):
  """(texture [size, size, 3] uint8, visible [size, size] bool: texels the
  photo shows) of a mesh fitted to an RGB photo; uv [N, 2] in [0, 1] with v
  up (OBJ's), texture row 0 at v = 1."""
  found = texels(vertices, triangles, uv, size, photo.shape)
  filled = fill_holes(_sample(photo, found.points) / 255.0, found.visible)
  return np.clip(np.round(filled * 255.0), 0, 255).astype(np.uint8), found.visible


def bake_detail(offset, normals, depth, mask, vertices, triangles, uv, size: int = 512,
                tolerance: float = 1.5):
  """(displacement [size, size] float32, normal map [size, size, 3] float32)
  in a mesh's UV layout, from a depth map's detail: `offset` [H, W] (the
  depth offset the detail adds, towards the viewer) and `normals` [H, W, 3]
  (the detailed surface's, x right, y up, z towards the viewer) of the
  surface whose depth map is `depth` [H, W] on `mask`; the mesh's vertices
  in that image's pixels (x = column, y = row, z as depth). A texel takes
  the detail where the depth map shows its point (on the mask, its z within
  `tolerance` pixels of the depth there); the others get no offset and the
  mesh's own (interpolated) normal."""
  vertices = np.asarray(vertices, np.float64)
  found = texels(vertices, triangles, uv, size, np.shape(offset))
  points = found.points
  near = np.rint(points[..., :2]).astype(int)
  inside = ((near[..., 0] >= 0) & (near[..., 0] < np.shape(mask)[1]) & (near[..., 1] >= 0)
            & (near[..., 1] < np.shape(mask)[0]))
  on_mask = np.zeros(points.shape[:2], bool)
  on_mask[inside] = np.asarray(mask)[near[..., 1][inside], near[..., 0][inside]]
  surface_depth = _sample(depth, points, cv2.INTER_NEAREST)
  seen = found.covered & on_mask & (np.abs(points[..., 2] - surface_depth) <= tolerance)
  displacement = np.where(seen, _sample(offset, points), 0.0)
  y_up = vertices * np.array([1.0, -1.0, 1.0])  # the normals' frame
  mesh_normals = np.asarray(morphable.vertex_normals(y_up, found.triangles))
  corner_normals = mesh_normals[found.triangles[np.maximum(found.triangle_id, 0)]]
  smooth = np.einsum("hwk,hwkc->hwc", found.barycentric, corner_normals)
  chosen = np.where(seen[..., None], _sample(normals, points), smooth)
  chosen = np.where(found.covered[..., None], chosen, np.array([0.0, 0.0, 1.0]))
  chosen /= np.maximum(np.linalg.norm(chosen, axis=-1, keepdims=True), 1e-12)
  return displacement.astype(np.float32), chosen.astype(np.float32)
