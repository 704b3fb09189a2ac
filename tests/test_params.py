import h5py
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from facerecon import params as params_lib


def _write_300wlp_mat(path, pose, shape, expression):
  """A 300W-LP / AFLW2000-3D style label file, with the real shapes."""
  scipy.io.savemat(path, {
      "Pose_Para": pose.reshape(1, 7),
      "Shape_Para": shape.reshape(-1, 1),
      "Exp_Para": expression.reshape(-1, 1),
      "Tex_Para": np.zeros((199, 1)),
      "Illum_Para": np.zeros((1, 10)),
      "Color_Para": np.zeros((1, 7)),
      "pt3d_68": np.zeros((3, 68)),
      "roi": np.array([[10.0, 20.0, 300.0, 310.0]]),
  })


def test_layout_blocks_follow_model_sizes(small_model):
  layout = params_lib.ParamLayout.for_model(small_model)
  assert (layout.num_shape, layout.num_expression) == (12, 6)
  assert layout.size == 7 + 12 + 6
  assert params_lib.BFM_LAYOUT.size == 235
  assert (layout.shape.start, layout.shape.stop) == (7, 19)
  assert (layout.expression.start, layout.expression.stop) == (19, 25)


@pytest.mark.parametrize("xp", [np, jnp])
def test_split_join_round_trip(xp):
  layout = params_lib.ParamLayout(num_shape=5, num_expression=3)
  vector = xp.arange(2 * 15, dtype=xp.float32).reshape(2, 15)
  face = params_lib.split(vector, layout)
  assert face.pose.shape == (2, 7) and face.shape.shape == (2, 5)
  np.testing.assert_array_equal(face.angles, vector[:, 0:3])
  np.testing.assert_array_equal(face.translation, vector[:, 3:6])
  np.testing.assert_array_equal(face.scale, vector[:, 6])
  np.testing.assert_array_equal(face.expression, vector[:, 12:15])
  np.testing.assert_array_equal(params_lib.join(face), vector)


def test_split_rejects_wrong_size():
  with pytest.raises(ValueError, match="has 10 entries.*needs 15"):
    params_lib.split(np.zeros(10), params_lib.ParamLayout(5, 3))


def test_make_pose_order():
  pose = params_lib.make_pose(np.array([0.1, 0.2, 0.3]), np.array([4.0, 5.0, 6.0]),
                              np.float64(7e-4))
  np.testing.assert_allclose(pose, [0.1, 0.2, 0.3, 4.0, 5.0, 6.0, 7e-4])


def test_read_mat_params_layout_and_pixel_shift(tmp_path):
  rng = np.random.default_rng(0)
  pose = np.array([0.1, -0.4, 0.05, 100.5, 80.25, 3.0, 1.2e-3])
  shape = rng.normal(size=199) * 1e5
  expression = rng.normal(size=29)
  path = tmp_path / "image00002.mat"
  _write_300wlp_mat(path, pose, shape, expression)

  raw = params_lib.read_mat_params(path, matlab_pixels=False)
  assert raw.shape == (235,) and raw.dtype == np.float32
  np.testing.assert_allclose(raw, np.concatenate([pose, shape, expression]).astype(np.float32))

  shifted = params_lib.read_mat_params(path)
  np.testing.assert_allclose(shifted[3:5], pose[3:5] - 1.0)
  np.testing.assert_array_equal(shifted[5:], raw[5:])
  np.testing.assert_array_equal(shifted[:3], raw[:3])


def test_read_mat_params_v73(tmp_path):
  """The same labels saved as MATLAB v7.3 (HDF5, arrays stored transposed)."""
  pose = np.arange(7, dtype=np.float64)
  shape = np.arange(199, dtype=np.float64)
  expression = -np.arange(29, dtype=np.float64)
  path = tmp_path / "v73.mat"
  with h5py.File(path, "w", userblock_size=512) as f:
    f["Pose_Para"] = pose.reshape(1, 7).T
    f["Shape_Para"] = shape.reshape(-1, 1).T
    f["Exp_Para"] = expression.reshape(-1, 1).T
  with open(path, "r+b") as f:
    f.write(b"MATLAB 7.3 MAT-file, created by a test".ljust(116))
  vector = params_lib.read_mat_params(path, matlab_pixels=False)
  np.testing.assert_array_equal(vector, np.concatenate([pose, shape, expression]))


def test_read_mat_params_errors_name_file_and_field(tmp_path):
  path = tmp_path / "bad.mat"
  scipy.io.savemat(path, {"Pose_Para": np.zeros((1, 7)), "Shape_Para": np.zeros((199, 1))})
  with pytest.raises(KeyError, match=r"bad\.mat.*'Exp_Para'"):
    params_lib.read_mat_params(path)

  scipy.io.savemat(path, {"Pose_Para": np.zeros((1, 6)), "Shape_Para": np.zeros((199, 1)),
                          "Exp_Para": np.zeros((29, 1))})
  with pytest.raises(ValueError, match=r"bad\.mat.*'Pose_Para' has 6 entries"):
    params_lib.read_mat_params(path)

  scipy.io.savemat(path, {"Pose_Para": np.full((1, 7), np.nan),
                          "Shape_Para": np.zeros((199, 1)), "Exp_Para": np.zeros((29, 1))})
  with pytest.raises(ValueError, match="NaN"):
    params_lib.read_mat_params(path)

  with pytest.raises(FileNotFoundError, match="missing.mat"):
    params_lib.read_mat_params(tmp_path / "missing.mat")

  (tmp_path / "corrupt.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00garbage" * 10)
  with pytest.raises(ValueError, match="corrupt.mat"):
    params_lib.read_mat_params(tmp_path / "corrupt.mat")


def test_read_labels_loads_each_mat_once(tmp_path, monkeypatch):
  """mat_folders.read_labels: the parameters of `params_from_mat_fields`
  and the landmarks from one load of the file."""
  from facerecon import fileio
  from facerecon.data import mat_folders

  rng = np.random.default_rng(1)
  pose, shape, expression = rng.normal(size=7), rng.normal(size=199), rng.normal(size=29)
  path = str(tmp_path / "image00003.mat")
  _write_300wlp_mat(path, pose, shape, expression)
  loads = []
  load_mat = fileio.load_mat
  monkeypatch.setattr(fileio, "load_mat", lambda p: loads.append(p) or load_mat(p))
  labels = mat_folders.read_labels(path)
  assert loads == [path]
  np.testing.assert_array_equal(labels.params, params_lib.read_mat_params(path))
  np.testing.assert_array_equal(labels.landmarks, np.full((68, 2), -1.0, np.float32))
