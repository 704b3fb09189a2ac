"""prepare_bfm on small fixtures shaped like the real files.

The fixtures keep the real field names, orientations (column vectors, 3xT
triangles, 1x68 keypoints), dtypes (single-precision BFM arrays, uint16
indices) and basis sizes (199 shape/texture, 29 expression modes); only the
vertex count is small. They are written both as MATLAB v5 (scipy) and v7.3
(HDF5) files.
"""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io

from conftest import ROOT
from data_pipeline import prepare_bfm
from facerecon import morphable

FULL_VERTICES = 40   # BFM has 53,490
GRID = (5, 6)        # the kept vertices form a 5x6 grid (30 of the 40)


def _make_fixture(rng, clockwise=False):
  """Arrays of the four files plus the geometry they must produce."""
  n = GRID[0] * GRID[1]
  keep = np.sort(rng.choice(FULL_VERTICES, size=n, replace=False))  # 0-based
  ys, xs = np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1]), indexing="ij")
  positions = np.stack([xs.ravel() * 1e4, ys.ravel() * 1e4,
                        5e4 - 1e3 * (xs.ravel() - 2.5) ** 2], axis=1).astype(np.float32)
  triangles = []
  for i in range(GRID[0] - 1):
    for j in range(GRID[1] - 1):
      a, b = i * GRID[1] + j, i * GRID[1] + j + 1
      c, d = b + GRID[1], a + GRID[1]
      triangles += [(a, b, c), (a, c, d)]  # counter-clockwise seen from +z
  triangles = np.array(triangles)
  stored_triangles = triangles[:, [0, 2, 1]] if clockwise else triangles

  def full_column(kept_values, fill):
    """Interleaved x1 y1 z1 ... over all BFM vertices, junk where not kept."""
    column = np.full((FULL_VERTICES, 3), fill, np.float32)
    column[keep] = kept_values
    return column.reshape(-1, 1)

  shape_basis = rng.normal(size=(199, n, 3)).astype(np.float32)
  texture_basis = rng.normal(size=(199, n, 3)).astype(np.float32)
  shape_pc = np.concatenate([full_column(shape_basis[k], 7.0) for k in range(199)], axis=1)
  tex_pc = np.concatenate([full_column(texture_basis[k], 7.0) for k in range(199)], axis=1)
  texture = rng.uniform(0, 255, size=(n, 3)).astype(np.float32)
  mu_exp = rng.normal(size=(n, 3)) * 100.0
  w_exp = rng.normal(size=(n, 3, 29))
  keypoints = rng.integers(0, n, size=68)
  vertex_code = rng.uniform(size=(3, n))
  files = {
      prepare_bfm.BFM_FILE: {
          "shapeMU": full_column(positions, -9e9), "shapePC": shape_pc,
          "shapeEV": np.linspace(5e5, 2e2, 199, dtype=np.float32).reshape(-1, 1),
          "texMU": full_column(texture, -1.0), "texPC": tex_pc,
          "texEV": np.linspace(4e3, 1e1, 199, dtype=np.float32).reshape(-1, 1),
          "tl": np.ones((10, 3), np.float64),
          "segbin": np.zeros((FULL_VERTICES, 4), np.uint8)},
      prepare_bfm.EXPRESSION_FILE: {
          "mu_exp": mu_exp.reshape(-1, 1), "w_exp": w_exp.reshape(3 * n, 29)},
      prepare_bfm.INFO_FILE: {
          "trimIndex": (keep + 1).astype(np.uint16).reshape(-1, 1),
          "tri": (stored_triangles.T + 1).astype(np.uint16),
          "keypoints": (keypoints + 1).astype(np.uint16).reshape(1, 68),
          "symlist": np.zeros((2, 4), np.uint16)},
      prepare_bfm.CODE_FILE: {"vertex_code": vertex_code},
  }
  expected = {
      "mean_shape": (positions.astype(np.float64) + mu_exp).astype(np.float32),
      "shape_basis": shape_basis, "texture_basis": texture_basis,
      "texture_mean": texture,
      "expression_basis": np.moveaxis(w_exp, 2, 0).astype(np.float32),
      "triangles": triangles, "landmark_indices": keypoints,
      "pncc": vertex_code.T.astype(np.float32),
      "shape_std": files[prepare_bfm.BFM_FILE]["shapeEV"].ravel(),
  }
  return files, expected


def _write_v5(directory, files):
  for name, fields in files.items():
    scipy.io.savemat(os.path.join(directory, name), fields)


def _write_v73(directory, files):
  """MATLAB v7.3: HDF5 behind a 512-byte header, arrays stored transposed."""
  for name, fields in files.items():
    path = os.path.join(directory, name)
    with h5py.File(path, "w", userblock_size=512) as f:
      for key, value in fields.items():
        f.create_dataset(key, data=np.asarray(value).T)
    with open(path, "r+b") as f:
      f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116))


@pytest.mark.parametrize("writer", [_write_v5, _write_v73], ids=["v5", "v7.3"])
def test_recovers_known_geometry_exactly(tmp_path, writer):
  files, expected = _make_fixture(np.random.default_rng(0))
  writer(str(tmp_path), files)
  model = prepare_bfm.build_model(str(tmp_path))
  np.testing.assert_array_equal(model.mean_shape, expected["mean_shape"])
  np.testing.assert_array_equal(model.shape_basis, expected["shape_basis"])
  np.testing.assert_array_equal(model.texture_basis, expected["texture_basis"])
  np.testing.assert_array_equal(model.texture_mean, expected["texture_mean"])
  np.testing.assert_array_equal(model.expression_basis, expected["expression_basis"])
  np.testing.assert_array_equal(model.triangles, expected["triangles"])
  np.testing.assert_array_equal(model.landmark_indices, expected["landmark_indices"])
  np.testing.assert_array_equal(model.pncc, expected["pncc"])
  np.testing.assert_array_equal(model.shape_std, expected["shape_std"])
  np.testing.assert_array_equal(model.expression_std, np.ones(29, np.float32))
  assert model.layout.size == 235


def test_flips_inward_winding(tmp_path):
  files, expected = _make_fixture(np.random.default_rng(1), clockwise=True)
  _write_v5(str(tmp_path), files)
  model = prepare_bfm.build_model(str(tmp_path))
  np.testing.assert_array_equal(model.triangles, expected["triangles"])
  normals = np.asarray(morphable.vertex_normals(model.mean_shape, model.triangles))
  assert np.all(normals[:, 2] > 0)


def test_command_line_writes_loadable_model(tmp_path):
  files, expected = _make_fixture(np.random.default_rng(2))
  bfm_dir = tmp_path / "bfm"
  bfm_dir.mkdir()
  _write_v5(str(bfm_dir), files)
  output = tmp_path / "out" / "bfm.npz"
  result = subprocess.run(
      [sys.executable, "-m", "data_pipeline.prepare_bfm", f"--bfm_dir={bfm_dir}",
       f"--output={output}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "30 vertices, 40 triangles" in result.stdout
  model = morphable.load_model(output)
  np.testing.assert_array_equal(model.mean_shape, expected["mean_shape"])


def _expect_error(tmp_path, files, exception, pattern):
  _write_v5(str(tmp_path), files)
  with pytest.raises(exception, match=pattern):
    prepare_bfm.build_model(str(tmp_path))


def test_missing_file_is_named(tmp_path):
  files, _ = _make_fixture(np.random.default_rng(3))
  del files[prepare_bfm.CODE_FILE]
  _expect_error(tmp_path, files, FileNotFoundError, "vertex_code.mat")


def test_missing_field_is_named(tmp_path):
  files, _ = _make_fixture(np.random.default_rng(4))
  del files[prepare_bfm.EXPRESSION_FILE]["w_exp"]
  _expect_error(tmp_path, files, KeyError, r"Model_Expression\.mat: missing field 'w_exp'")


def test_wrong_shape_is_named(tmp_path):
  files, _ = _make_fixture(np.random.default_rng(5))
  files[prepare_bfm.EXPRESSION_FILE]["mu_exp"] = np.zeros((89, 1))
  _expect_error(tmp_path, files, ValueError,
                r"Model_Expression\.mat: field 'mu_exp' has shape 89x1, expected 90x1")


def test_out_of_range_indices_are_named(tmp_path):
  files, _ = _make_fixture(np.random.default_rng(6))
  files[prepare_bfm.INFO_FILE]["tri"][0, 0] = 31
  _expect_error(tmp_path, files, ValueError, r"model_info\.mat: field 'tri'.*\[1, 30\]")
  files[prepare_bfm.INFO_FILE]["tri"][0, 0] = 1
  files[prepare_bfm.INFO_FILE]["trimIndex"][0, 0] = 0
  _expect_error(tmp_path, files, ValueError, r"model_info\.mat: field 'trimIndex'")


def test_vertex_code_wrong_shape(tmp_path):
  files, _ = _make_fixture(np.random.default_rng(7))
  files[prepare_bfm.CODE_FILE]["vertex_code"] = np.zeros((3, 29))
  _expect_error(tmp_path, files, ValueError, r"vertex_code\.mat.*3x30 or 30x3")
