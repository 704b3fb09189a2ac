"""The ICT-FaceKit converter on small OBJ folders written here, and on the
real folder when ../shared has it."""

import json
import lzma
import os

import numpy as np
import pytest

from data_pipeline import prepare_ict
from facerecon import face_models
from facerecon import morphable

ICT_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ict-facekit",
                       "FaceXModel")
SKIN = (200, 150, 120)
TINY = prepare_ict.Layout(
    num_vertices=26, num_polygons=12, num_identities=2,
    parts=(("face", morphable.SURFACE, 0, 15, 0, 8, SKIN),
           ("head_and_neck", morphable.SURFACE, 16, 19, 9, 9, SKIN),
           ("eye_blend_left", None, 20, 22, 10, 10, None),
           ("teeth", morphable.RENDERED, 23, 25, 11, 11, (230, 230, 210))))
EXPRESSIONS = ["jawOpen", "mouthSmile_L"]
LANDMARKS = [k % 16 for k in range(68)]


def _neutral():
  """26 vertices (cm): a 4x4 grid facing +z, a head quad, a blend and a tooth triangle."""
  grid = [(x, y, 0.1 * x * y) for y in range(4) for x in range(4)]
  rest = [(4, 3, -1), (4, 4, -1), (3, 4, -1), (5, 5, -2), (9, 9, 9), (9, 8, 9), (8, 9, 9),
          (1, 1, -1), (2, 1, -1), (1, 2, -1)]
  vertices = np.array(grid + rest, np.float64)
  # Counter-clockwise seen from +z (x right, y up): (a, a+1, a+5, a+4).
  polygons = [[4 * r + c, 4 * r + c + 1, 4 * r + c + 5, 4 * r + c + 4]
              for r in range(3) for c in range(3)]
  polygons += [[15, 16, 17, 18], [20, 21, 22], [23, 24, 25]]
  return vertices, polygons


def _write_obj(path, vertices, polygons, compress=False):
  lines = ["# test mesh"]
  lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
  lines += [f"vt {k / 26:.6f} {1 - k / 26:.6f}" for k in range(len(vertices))]
  lines.append("vt 0.9 0.9")  # a seam: vertex 0's second coordinate (ignored)
  for p, polygon in enumerate(polygons):
    uvs = [len(vertices) if (p == 5 and v == 0) else v for v in polygon]
    lines.append("f " + " ".join(f"{v + 1}/{t + 1}" for v, t in zip(polygon, uvs)))
  text = ("\n".join(lines) + "\n").encode()
  if compress:
    with lzma.open(str(path) + ".xz", "wb") as f:
      f.write(text)
  else:
    with open(path, "wb") as f:
      f.write(text)


def _offsets(k):
  return np.random.default_rng(k).normal(scale=0.1, size=(26, 3))


def write_folder(folder, compress=False):
  """A tiny ICT-like folder; returns the neutral vertices."""
  folder.mkdir(parents=True, exist_ok=True)
  vertices, polygons = _neutral()
  _write_obj(folder / "generic_neutral_mesh.obj", vertices, polygons, compress)
  for k in range(2):
    _write_obj(folder / f"identity{k:03d}.obj", vertices + _offsets(k), polygons, compress)
  for k, name in enumerate(EXPRESSIONS):
    _write_obj(folder / f"{name}.obj", vertices + _offsets(10 + k), polygons, compress)
  (folder / "vertex_indices.json").write_text(json.dumps(
      {"expressions": EXPRESSIONS, "idx_to_landmark_verts": LANDMARKS}))
  return vertices


def test_converts_a_small_folder(tmp_path):
  neutral = write_folder(tmp_path / "plain")
  write_folder(tmp_path / "xz", compress=True)
  model = prepare_ict.build_model(str(tmp_path / "plain"), TINY)
  from_xz = prepare_ict.build_model(str(tmp_path / "xz"), TINY)
  assert face_models.fingerprint(model) == face_models.fingerprint(from_xz)

  keep = np.r_[0:20, 23:26]  # the eye-blend part is left out
  np.testing.assert_allclose(model.mean_shape, 10 * neutral[keep], rtol=1e-6)
  for k in range(2):
    np.testing.assert_allclose(model.shape_basis[k], 10 * _offsets(k)[keep], atol=1e-5)
  np.testing.assert_allclose(model.expression_basis[1], 10 * _offsets(11)[keep], atol=1e-5)
  np.testing.assert_array_equal(model.shape_std, [1, 1])
  assert model.expression_names == tuple(EXPRESSIONS)
  assert model.expression_kind == morphable.BLENDSHAPE
  assert model.layout.size == 7 + 2 + 2

  # Quads (a, b, c, d) -> (a, b, c), (a, c, d); the tooth renumbered past the blend.
  np.testing.assert_array_equal(model.triangles[:2], [[0, 1, 5], [0, 5, 4]])
  np.testing.assert_array_equal(model.triangles[-1], [20, 21, 22])
  assert model.parts == (
      morphable.Part("face", morphable.SURFACE, (0, 16), (0, 18)),
      morphable.Part("head_and_neck", morphable.SURFACE, (16, 20), (18, 20)),
      morphable.Part("teeth", morphable.RENDERED, (20, 23), (20, 21)))
  normals = np.asarray(morphable.face_normals(model.mean_shape, model.triangles[:18]))
  assert np.all(normals[:, 2] > 0)  # the face's triangles face +z: outwards
  np.testing.assert_array_equal(model.landmark_indices, LANDMARKS)
  # Each vertex's first texture coordinate (vertex 0's seam copy is ignored).
  np.testing.assert_allclose(model.uv[:3], [[0, 1], [1 / 26, 25 / 26], [2 / 26, 24 / 26]],
                             atol=1e-6)
  np.testing.assert_array_equal(model.texture_mean[-1], [230, 230, 210])
  assert model.texture_basis.shape == (0, 23, 3)

  surface = morphable.surface(model)
  assert surface.num_vertices == 20 and surface.num_triangles == 20
  assert surface.layout == model.layout


def test_compact_file_restores_float32_within_a_bound(tmp_path):
  write_folder(tmp_path / "ict")
  model = prepare_ict.build_model(str(tmp_path / "ict"), TINY)
  path = tmp_path / "model.npz"
  morphable.save_model(model, path, compact=True)
  loaded = morphable.load_model(path)
  assert loaded.shape_basis.dtype == np.float32
  # float16 keeps 11 significant bits.
  bound = np.abs(model.shape_basis).max() * 2.0 ** -11
  assert np.abs(loaded.shape_basis - model.shape_basis).max() <= bound
  np.testing.assert_array_equal(loaded.mean_shape, model.mean_shape)
  assert (loaded.parts, loaded.expression_names, loaded.expression_kind) == (
      model.parts, model.expression_names, model.expression_kind)
  np.testing.assert_array_equal(loaded.uv, model.uv)


def test_errors_name_the_file(tmp_path):
  folder = tmp_path / "ict"
  write_folder(folder)
  vertices, polygons = _neutral()

  os.remove(folder / "identity001.obj")
  with pytest.raises(FileNotFoundError, match="identity001.obj"):
    prepare_ict.build_model(str(folder), TINY)
  _write_obj(folder / "identity001.obj", vertices, polygons)

  _write_obj(folder / "jawOpen.obj", vertices[:-1], [p for p in polygons if max(p) < 25])
  with pytest.raises(ValueError, match=r"jawOpen\.obj: 25 vertices"):
    prepare_ict.build_model(str(folder), TINY)

  _write_obj(folder / "jawOpen.obj", vertices, [p[::-1] for p in polygons])
  with pytest.raises(ValueError, match=r"jawOpen\.obj: its faces differ.*topology"):
    prepare_ict.build_model(str(folder), TINY)
  _write_obj(folder / "jawOpen.obj", vertices, polygons)

  (folder / "generic_neutral_mesh.obj").write_text("v 1 2\n")
  with pytest.raises(ValueError, match=r"generic_neutral_mesh\.obj.*vertex lines"):
    prepare_ict.build_model(str(folder), TINY)

  with pytest.raises(FileNotFoundError, match="not a folder"):
    prepare_ict.build_model(str(tmp_path / "nowhere"), TINY)


@pytest.mark.skipif(not os.path.isdir(ICT_DIR), reason="needs ../shared/data/ict-facekit")
def test_the_real_folder_gives_the_shipped_model():
  """The package's model is this folder converted (then its landmarks
  calibrated, docs/data.md): the same mesh, parts and bases to float16."""
  model = prepare_ict.build_model(ICT_DIR)
  shipped = face_models.load("ict")
  assert model.num_vertices == shipped.num_vertices == 25959
  assert morphable.surface_size(model) == (11248, 22288)
  assert model.layout.num_shape == 100 and model.layout.num_expression == 53
  np.testing.assert_array_equal(model.triangles, shipped.triangles)
  assert model.parts == shipped.parts and model.expression_names == shipped.expression_names
  np.testing.assert_array_equal(model.mean_shape, shipped.mean_shape)
  for name in ("shape_basis", "expression_basis"):
    error = np.abs(np.asarray(getattr(model, name)) - getattr(shipped, name)).max()
    assert error <= np.abs(getattr(model, name)).max() * 2.0 ** -11, name
  # The calibration moved landmarks only to other face vertices.
  face_vertices = model.parts[0].vertices[1]
  assert np.asarray(shipped.landmark_indices).max() < face_vertices
