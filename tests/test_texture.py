"""Photo textures in UV space (facerecon.texture) and the textured OBJ
(facerecon.export.write_textured_obj), read back with trimesh."""

import numpy as np
import pytest
import trimesh

from facerecon import export
from facerecon import texture


def _quad(x0, y0, x1, y1, z, uv0=(0.0, 0.0), uv1=(1.0, 1.0)):
  """Two triangles over a photo rectangle, facing the viewer, and their UVs
  (v up: the photo's top edge at v = uv1[1])."""
  vertices = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float64)
  uv = np.array([[uv0[0], uv1[1]], [uv1[0], uv1[1]], [uv1[0], uv0[1]], [uv0[0], uv0[1]]])
  return vertices, np.array([[0, 1, 2], [0, 2, 3]]), uv


def test_fill_holes_keeps_what_is_known_and_fills_from_the_neighbours():
  colour = np.zeros((32, 32, 3), np.float32)
  colour[:, :16] = [1.0, 0.0, 0.0]
  colour[:, 16:] = [0.0, 0.0, 1.0]
  known = np.zeros((32, 32), bool)
  known[:, :12] = True
  known[:, 20:] = True
  filled = texture.fill_holes(colour, known)
  np.testing.assert_allclose(filled[known], colour[known], atol=1e-6)
  assert filled[:, 12, 0] .min() > filled[:, 12, 2].max()   # near the red side: red
  assert filled[:, 19, 2].min() > filled[:, 19, 0].max()    # near the blue side: blue
  nothing = texture.fill_holes(colour, np.zeros((32, 32), bool))
  np.testing.assert_allclose(nothing, 0.5)


def test_seam_triangles_are_left_out():
  """Three neighbouring triangles of the mesh; the last one's third vertex
  sits across the atlas in UV (the far side of a seam)."""
  vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [2, 0, 0]], np.float64)
  uv = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [0.9, 0.9]])
  triangles = np.array([[0, 1, 2], [1, 3, 2], [1, 4, 3]])
  np.testing.assert_array_equal(texture.unseamed_triangles(uv, triangles, vertices),
                                [[0, 1, 2], [1, 3, 2]])


def test_bake_takes_the_photo_where_the_mesh_shows_it():
  """A quad over a red-and-blue photo fills the atlas: its texture is the
  photo's; a second quad behind it is hidden, so its half of the atlas is
  filled, not copied from the photo."""
  photo = np.zeros((100, 120, 3), np.uint8)
  photo[:, :60] = [200, 0, 0]
  photo[:, 60:] = [0, 0, 200]
  front, triangles, uv = _quad(20, 10, 100, 90, z=10.0, uv0=(0.0, 0.0), uv1=(0.5, 1.0))
  back, _, back_uv = _quad(30, 20, 90, 80, z=-10.0, uv0=(0.5, 0.0), uv1=(1.0, 1.0))
  vertices = np.concatenate([front, back])
  all_triangles = np.concatenate([triangles, triangles + 4])
  image, visible = texture.bake(photo, vertices, all_triangles, np.concatenate([uv, back_uv]),
                                size=64)
  assert image.shape == (64, 64, 3) and image.dtype == np.uint8
  # Front quad: atlas columns 0..31 map photo columns 20..100; red up to 60.
  assert visible[:, 2:30].mean() > 0.95 and visible[:, 34:].mean() < 0.05
  assert np.all(image[5:59, 2:12, 0] > 150) and np.all(image[5:59, 2:12, 2] < 50)
  assert np.all(image[5:59, 20:30, 2] > 150) and np.all(image[5:59, 20:30, 0] < 50)


def test_a_textured_obj_opens_with_its_texture(tmp_path):
  vertices, triangles, uv = _quad(0, 0, 10, 10, z=0.0)
  image = np.zeros((8, 8, 3), np.uint8)
  image[:, :, 1] = 255
  path = tmp_path / "face.obj"
  export.write_textured_obj(path, vertices, triangles, uv, image)
  assert (tmp_path / "face.mtl").exists() and (tmp_path / "face_texture.png").exists()
  mesh = trimesh.load(path, process=False)
  assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
  np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-5)
  np.testing.assert_array_equal(mesh.faces, triangles)
  np.testing.assert_allclose(mesh.visual.uv, uv, atol=1e-6)
  assert mesh.visual.material.image.size == (8, 8)
  assert np.asarray(mesh.visual.material.image.convert("RGB"))[0, 0].tolist() == [0, 255, 0]
  with pytest.raises(ValueError, match="face.obj: uv must be finite"):
    export.write_textured_obj(path, vertices, triangles, uv[:2], image)
  with pytest.raises(ValueError, match="face.obj: texture must be uint8"):
    export.write_textured_obj(path, vertices, triangles, uv, image.astype(np.float32))


def test_bake_detail_puts_the_image_detail_where_the_mesh_shows_it():
  """A quad facing the viewer takes the image's offset and normals at its
  texels; a quad hidden behind it gets no offset and its own normal."""
  columns = np.arange(120, dtype=np.float32)[None, :].repeat(100, axis=0)
  offset = 0.01 * columns
  tilted = np.array([0.6, 0.0, 0.8], np.float32)
  normals = np.broadcast_to(tilted, (100, 120, 3)).copy()
  front, triangles, uv = _quad(20, 10, 100, 90, z=10.0, uv0=(0.0, 0.0), uv1=(0.5, 1.0))
  back, _, back_uv = _quad(30, 20, 90, 80, z=-10.0, uv0=(0.5, 0.0), uv1=(1.0, 1.0))
  depth = np.zeros((100, 120), np.float32)
  depth[10:91, 20:101] = 10.0  # the front quad's depth map
  displacement, normal_map = texture.bake_detail(
      offset, normals, depth, depth > 0, np.concatenate([front, back]),
      np.concatenate([triangles, triangles + 4]), np.concatenate([uv, back_uv]), size=64)
  assert displacement.shape == (64, 64) and normal_map.shape == (64, 64, 3)
  # Front quad: atlas column c (0..31) is photo column 20 + 80 (c + 0.5) / 32.
  atlas = np.arange(2, 30)
  np.testing.assert_allclose(displacement[10:54, 2:30],
                             np.broadcast_to(0.01 * (20 + 80 * (atlas + 0.5) / 32 - 0.5),
                                             (44, 28)), atol=0.02)
  np.testing.assert_allclose(normal_map[10:54, 2:30], np.broadcast_to(tilted, (44, 28, 3)),
                             atol=1e-5)
  np.testing.assert_array_equal(displacement[10:54, 36:62], 0.0)
  # The hidden quad's own normal: the same winding as the front one (its
  # vertices in rows, y down, so the normal is the mesh's in y-up terms).
  np.testing.assert_allclose(np.abs(normal_map[10:54, 36:62, 2]), 1.0, atol=1e-6)
  np.testing.assert_allclose(normal_map[10:54, 36:62, :2], 0.0, atol=1e-6)
