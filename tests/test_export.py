"""The per-face output files: meshes read back with third-party readers
(trimesh for OBJ, plyfile for PLY, as users would open them), depth maps,
JSON, and the writers' input checks."""

import json
import os

import cv2
import numpy as np
import plyfile
import pytest
import trimesh

from facerecon import export

# A tetrahedron: small enough to check by eye, closed so every vertex is used.
TETRA_VERTICES = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, 2.25, 0.0],
                           [0.1, 0.2, -3.125]], np.float32)
TETRA_TRIANGLES = np.array([[0, 1, 2], [0, 3, 1], [1, 3, 2], [2, 3, 0]], np.int32)
TETRA_COLOURS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.4, 0.6],
                          [0.5, 0.25, 0.75]])
# trimesh and PLY hold colours as uint8: each is within half a step of the float.
HALF_STEP = 0.5 / 255 + 1e-9


def _no_temporaries(directory):
  leftovers = [name for name in os.listdir(directory) if name.startswith(".")]
  assert not leftovers, leftovers


def _load_obj(path):
  """The OBJ as trimesh reads it, unprocessed. maintain_order keeps vertices
  no triangle uses (trimesh's OBJ loader drops them otherwise), so indices
  and vertex count stay those written."""
  mesh = trimesh.load(path, process=False, maintain_order=True)
  assert isinstance(mesh, trimesh.Trimesh), type(mesh)
  return mesh


def _obj_colours_as_written(path):
  """The r g b numbers of the OBJ's "v" lines: trimesh rounds them to uint8,
  so this is how the file's own precision (6 significant digits) is checked."""
  return np.array([line.split()[4:] for line in path.read_text().splitlines()
                   if line.startswith("v ")], np.float64)


def _load_ply(path):
  """(PlyData, vertices [N, 3], triangles [T, 3], colours uint8 [N, 3] or
  None) as plyfile reads them, keeping the dtypes stored in the file."""
  data = plyfile.PlyData.read(path)
  vertex = data["vertex"]
  vertices = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
  triangles = np.stack(data["face"]["vertex_indices"]).reshape(-1, 3)
  names = [prop.name for prop in vertex.properties]
  colours = None
  if "red" in names:
    colours = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1)
  return data, vertices, triangles, colours


@pytest.mark.parametrize("with_colours", [False, True])
def test_obj_round_trip(tmp_path, with_colours):
  """trimesh reads back the exact float32 vertices, the 0-based triangles and
  the per-vertex colours (or finds none); the file keeps colours to 1e-6."""
  path = tmp_path / "mesh.obj"
  colours = TETRA_COLOURS if with_colours else None
  export.write_obj(path, TETRA_VERTICES, TETRA_TRIANGLES, colours)
  mesh = _load_obj(path)
  # %.9g text parses (as float64) back to the same float32 values.
  np.testing.assert_array_equal(mesh.vertices.astype(np.float32), TETRA_VERTICES)
  np.testing.assert_array_equal(mesh.faces, TETRA_TRIANGLES)
  if with_colours:
    assert mesh.visual.kind == "vertex"
    rgba = mesh.visual.vertex_colors
    assert rgba.dtype == np.uint8 and rgba.shape == (4, 4)
    assert np.all(rgba[:, 3] == 255)
    np.testing.assert_allclose(rgba[:, :3] / 255.0, TETRA_COLOURS, atol=HALF_STEP)
    np.testing.assert_allclose(_obj_colours_as_written(path), TETRA_COLOURS, atol=1e-6)
  else:
    assert mesh.visual.kind is None  # no colours in the file
    assert _obj_colours_as_written(path).shape == (4, 0)
  _no_temporaries(tmp_path)


def test_obj_text_is_one_based(tmp_path):
  """OBJ indices start at 1; integral coordinates are written without noise."""
  path = tmp_path / "square.obj"
  square = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
  export.write_obj(path, square, np.array([[0, 1, 2], [0, 2, 3]]))
  lines = path.read_text().splitlines()
  assert "f 1 2 3" in lines and "f 1 3 4" in lines
  assert "v 1 1 0" in lines
  np.testing.assert_array_equal(_load_obj(path).faces, [[0, 1, 2], [0, 2, 3]])


def test_obj_colours_are_clipped_and_written_per_vertex(tmp_path):
  """Colours outside [0, 1] are clipped, per vertex, before writing."""
  path = tmp_path / "mesh.obj"
  colours = TETRA_COLOURS.copy()
  colours[0] = [1.5, -0.5, 0.5]
  export.write_obj(path, TETRA_VERTICES, TETRA_TRIANGLES, colours)
  assert "v 0 0 0 1 0 0.5" in path.read_text().splitlines()
  rgba = _load_obj(path).visual.vertex_colors
  np.testing.assert_allclose(rgba[0, :3] / 255.0, [1.0, 0.0, 0.5], atol=HALF_STEP)
  np.testing.assert_allclose(rgba[1:, :3] / 255.0, TETRA_COLOURS[1:], atol=HALF_STEP)


@pytest.mark.parametrize("with_colours", [False, True])
def test_ply_round_trip(tmp_path, with_colours):
  """plyfile reads a binary little-endian file with float32 x y z (exactly the
  vertices given, float64 in), int32 triangles and uchar colours rounded to
  the nearest of 255 steps (or no colour properties)."""
  path = tmp_path / "mesh.ply"
  colours = TETRA_COLOURS if with_colours else None
  export.write_ply(path, TETRA_VERTICES.astype(np.float64), TETRA_TRIANGLES, colours)
  data, vertices, triangles, read_colours = _load_ply(path)
  assert not data.text and data.byte_order == "<"
  assert vertices.dtype == np.float32 and triangles.dtype == np.int32
  np.testing.assert_array_equal(vertices, TETRA_VERTICES)
  np.testing.assert_array_equal(triangles, TETRA_TRIANGLES)
  if with_colours:
    assert read_colours.dtype == np.uint8
    np.testing.assert_allclose(read_colours / 255.0, TETRA_COLOURS, atol=HALF_STEP)
  else:
    assert read_colours is None
  _no_temporaries(tmp_path)


@pytest.mark.parametrize("with_colours", [False, True])
def test_ply_header_and_size(tmp_path, with_colours):
  """The exact layout: the header, packed records (12 or 15 bytes a vertex,
  13 a triangle) and nothing after them, and the property types plyfile sees."""
  path = tmp_path / "mesh.ply"
  export.write_ply(path, TETRA_VERTICES, TETRA_TRIANGLES,
                   TETRA_COLOURS if with_colours else None)
  data = path.read_bytes()
  assert data.startswith(b"ply\nformat binary_little_endian 1.0\n")
  header_size = data.index(b"end_header\n") + len(b"end_header\n")
  header = data[:header_size].decode("ascii")
  assert "element vertex 4\n" in header and "element face 4\n" in header
  assert "property list uchar int vertex_indices\n" in header
  assert ("property uchar red\n" in header) == with_colours
  vertex_size = 15 if with_colours else 12
  assert len(data) == header_size + 4 * vertex_size + 4 * 13

  ply = plyfile.PlyData.read(path)
  expected = [("x", "f4"), ("y", "f4"), ("z", "f4")]
  if with_colours:
    expected += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
  assert [(p.name, p.val_dtype) for p in ply["vertex"].properties] == expected
  (face,) = ply["face"].properties
  assert isinstance(face, plyfile.PlyListProperty)
  assert (face.name, face.len_dtype, face.val_dtype) == ("vertex_indices", "u1", "i4")


def test_face_sized_mesh(tmp_path):
  """The size of the BFM's dense mesh: both files hold the same mesh, as
  written (random triangles leave some vertices unused)."""
  rng = np.random.default_rng(0)
  vertices = rng.normal(size=(53_000, 3)).astype(np.float32) * 100
  triangles = rng.integers(0, 53_000, size=(106_000, 3))
  colours = rng.uniform(size=(53_000, 3))
  export.write_obj(tmp_path / "big.obj", vertices, triangles, colours)
  export.write_ply(tmp_path / "big.ply", vertices, triangles, colours)
  _, ply_vertices, ply_triangles, ply_colours = _load_ply(tmp_path / "big.ply")
  np.testing.assert_array_equal(ply_vertices, vertices)
  np.testing.assert_array_equal(ply_triangles, triangles)
  np.testing.assert_allclose(ply_colours / 255.0, colours, atol=HALF_STEP)
  mesh = _load_obj(tmp_path / "big.obj")
  np.testing.assert_array_equal(mesh.vertices.astype(np.float32), vertices)
  np.testing.assert_array_equal(mesh.faces, triangles)
  # trimesh rounds the OBJ's 6-digit colours, so a half-step tie may go either way.
  np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3] / 255.0, colours,
                             atol=HALF_STEP + 1e-6)
  assert (tmp_path / "big.obj").read_text().count("\nf ") == 106_000


@pytest.mark.parametrize("writer", [export.write_obj, export.write_ply])
@pytest.mark.parametrize("field, vertices, triangles, colours", [
    ("vertices", np.zeros((4, 2)), TETRA_TRIANGLES, None),
    ("vertices", np.where(np.arange(12).reshape(4, 3) == 5, np.nan, 0.0),
     TETRA_TRIANGLES, None),
    ("vertices", np.full((4, 3), np.inf), TETRA_TRIANGLES, None),
    ("triangles", TETRA_VERTICES, TETRA_TRIANGLES[:, :2], None),
    ("triangles", TETRA_VERTICES, TETRA_TRIANGLES + 1, None),
    ("triangles", TETRA_VERTICES, TETRA_TRIANGLES - 1, None),
    ("triangles", TETRA_VERTICES, TETRA_TRIANGLES.astype(np.float32), None),
    ("colours", TETRA_VERTICES, TETRA_TRIANGLES, TETRA_COLOURS[:3]),
    ("colours", TETRA_VERTICES, TETRA_TRIANGLES, (TETRA_COLOURS * 255).astype(np.uint8)),
])
def test_mesh_errors_name_field_and_path(tmp_path, writer, field, vertices, triangles,
                                         colours):
  path = tmp_path / "bad_mesh"
  with pytest.raises(ValueError) as error:
    writer(path, vertices, triangles, colours)
  assert str(path) in str(error.value) and field in str(error.value)
  assert not os.listdir(tmp_path)  # nothing written, not even a temporary


def _face_depth(height=24, width=32):
  rows, columns = np.mgrid[:height, :width]
  depth = 50.0 + 0.37 * rows - 0.21 * columns + 0.01 * rows * columns
  mask = (rows - height / 2) ** 2 + (columns - width / 2) ** 2 < 100
  return depth, mask


def test_depth_png16_round_trip(tmp_path):
  depth, mask = _face_depth()
  depth[~mask] = -1e9  # background values must not affect the range
  info = export.write_depth(str(tmp_path / "photo_face0"), depth, mask)
  assert info["png"] == str(tmp_path / "photo_face0_depth.png")
  assert info["npy"] == str(tmp_path / "photo_face0_depth.npy")
  assert info["depth_min"] == depth[mask].min()
  assert info["depth_max"] == depth[mask].max()
  assert info["background"] == 0 and "65534" in info["encoding"]

  image = cv2.imread(info["png"], cv2.IMREAD_UNCHANGED)
  assert image.dtype == np.uint16 and image.shape == depth.shape
  assert np.all(image[~mask] == 0)
  assert image[mask].min() == 1 and image[mask].max() == 65535
  decoded, decoded_mask = export.decode_depth_png16(image, info)
  np.testing.assert_array_equal(decoded_mask, mask)
  assert np.all(np.isnan(decoded[~mask]))
  step = (info["depth_max"] - info["depth_min"]) / 65534
  assert np.abs(decoded[mask] - depth[mask]).max() < step

  stored = np.load(info["npy"])
  assert stored.dtype == np.float32
  np.testing.assert_array_equal(stored[mask], depth[mask].astype(np.float32))
  assert np.all(np.isnan(stored[~mask]))
  _no_temporaries(tmp_path)


def test_depth_png16_constant_face():
  depth = np.full((5, 6), 7.5)
  mask = np.zeros((5, 6), bool)
  mask[1:3, 2:5] = True
  image, info = export.encode_depth_png16(depth, mask)
  assert info["depth_min"] == info["depth_max"] == 7.5
  assert np.all(image[mask] == 65535) and np.all(image[~mask] == 0)
  decoded, decoded_mask = export.decode_depth_png16(image, info)
  np.testing.assert_array_equal(decoded_mask, mask)
  assert np.all(decoded[mask] == 7.5)


def test_depth_png16_non_finite_is_background():
  depth, mask = _face_depth()
  hole = mask.copy()
  hole[:12] = False  # keep the lower half of the face, lose the upper
  depth[mask & ~hole] = np.nan
  depth[5, 5] = np.inf
  image, info = export.encode_depth_png16(depth, mask)
  assert np.all(image[~hole] == 0) and np.all(image[hole] > 0)
  assert np.isfinite(info["depth_min"]) and np.isfinite(info["depth_max"])


def test_depth_png16_no_face():
  image, info = export.encode_depth_png16(np.ones((3, 3)), np.zeros((3, 3), bool))
  assert not image.any() and info["depth_min"] is None
  decoded, decoded_mask = export.decode_depth_png16(image, info)
  assert np.all(np.isnan(decoded)) and not decoded_mask.any()


def test_decode_rejects_8_bit_image():
  with pytest.raises(ValueError, match="IMREAD_UNCHANGED"):
    export.decode_depth_png16(np.ones((3, 3), np.uint8), {"depth_min": 0.0,
                                                          "depth_max": 1.0})


@pytest.mark.parametrize("field, depth, mask", [
    ("depth", np.zeros((2, 3, 1)), np.zeros((2, 3, 1), bool)),
    ("mask", np.zeros((2, 3)), np.zeros((3, 2), bool)),
])
def test_write_depth_checks_shapes(tmp_path, field, depth, mask):
  with pytest.raises(ValueError, match=field):
    export.write_depth(str(tmp_path / "face"), depth, mask)
  assert not os.listdir(tmp_path)


def test_write_json_converts_numpy(tmp_path):
  path = tmp_path / "face.json"
  export.write_json(path, {"params": np.arange(3, dtype=np.float32),
                           "count": np.int64(7), "scale": np.float32(0.5),
                           "flag": np.bool_(True), "nested": [np.zeros((2, 2))],
                           "none": None})
  assert json.loads(path.read_text()) == {
      "params": [0.0, 1.0, 2.0], "count": 7, "scale": 0.5, "flag": True,
      "nested": [[[0.0, 0.0], [0.0, 0.0]]], "none": None}
  _no_temporaries(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), np.float32("inf"),
                                 np.array([1.0, np.nan])])
def test_write_json_rejects_non_finite(tmp_path, bad):
  path = tmp_path / "face.json"
  with pytest.raises(ValueError, match="face.json"):
    export.write_json(path, {"depth": {"min": bad}})
  assert not os.listdir(tmp_path)


def test_writes_replace_existing_files(tmp_path):
  path = tmp_path / "mesh.ply"
  export.write_ply(path, TETRA_VERTICES, TETRA_TRIANGLES, TETRA_COLOURS)
  export.write_ply(path, TETRA_VERTICES[:3], TETRA_TRIANGLES[:1])
  _, vertices, triangles, colours = _load_ply(path)
  assert vertices.shape == (3, 3) and triangles.shape == (1, 3) and colours is None
  assert os.listdir(tmp_path) == ["mesh.ply"]
