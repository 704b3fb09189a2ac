"""data_pipeline.mat_folders: labels of 300W-LP and AFLW2000-3D .mat files,
and the source-photo groups the mat_folders splits keep together."""

import numpy as np
import pytest
import scipy.io

from facerecon.data import mat_folders

# 68 distinct 1-based (x, y) points, as MATLAB writes them.
POINTS = np.vstack([np.arange(68) + 1.0, np.arange(68) * 2.0 + 5.0])


def _write_mat(path, **landmark_fields):
  """A .mat with the parameter fields both data sets have, plus the given
  landmark fields (300W-LP: pt2d 2x68; AFLW2000-3D: pt3d_68 and a 2x21 pt2d)."""
  scipy.io.savemat(path, {
      "Pose_Para": np.array([[0.1, 0.2, 0.3, 200.0, 210.0, 0.0, 1e-3]]),
      "Shape_Para": np.zeros((199, 1)), "Exp_Para": np.zeros((29, 1)),
      "Tex_Para": np.zeros((199, 1)), "Illum_Para": np.zeros((1, 10)),
      "Color_Para": np.zeros((1, 7)), "roi": np.array([[10.0, 10.0, 300.0, 300.0]]),
      **landmark_fields})


def test_read_labels_takes_300wlp_pt2d_like_aflw2000_pt3d_68(tmp_path):
  """300W-LP has no pt3d_68: its 2x68 pt2d gives the landmarks, with the same
  1-based -> 0-based shift, so both data sets land in one convention."""
  lp = str(tmp_path / "AFW_134212_1_0.mat")
  _write_mat(lp, pt2d=POINTS)
  aflw = str(tmp_path / "image00002.mat")
  _write_mat(aflw, pt3d_68=np.vstack([POINTS, np.zeros(68)]),
             pt2d=np.full((2, 21), -1.0))  # AFLW's 21 points: not the 68
  from_pt2d = mat_folders.read_labels(lp)
  from_pt3d = mat_folders.read_labels(aflw)
  assert from_pt2d.landmarks.shape == (68, 2) and from_pt2d.landmarks.dtype == np.float32
  np.testing.assert_array_equal(from_pt2d.landmarks, POINTS.T - 1.0)
  np.testing.assert_array_equal(from_pt3d.landmarks, from_pt2d.landmarks)
  np.testing.assert_array_equal(from_pt2d.params, from_pt3d.params)


def test_read_labels_without_landmarks_names_file_and_fields(tmp_path):
  path = str(tmp_path / "no_points.mat")
  _write_mat(path)
  with pytest.raises(KeyError, match=r"no_points\.mat.*pt3d_68.*pt2d"):
    mat_folders.read_labels(path)
  # A pt2d that is not 68 points (AFLW's 21) is no substitute.
  path = str(tmp_path / "aflw_points.mat")
  _write_mat(path, pt2d=np.zeros((2, 21)))
  with pytest.raises(ValueError, match=r"aflw_points\.mat.*pt3d_68.*'pt2d' has shape"):
    mat_folders.read_labels(path)
  path = str(tmp_path / "nan_points.mat")
  _write_mat(path, pt2d=np.full((2, 68), np.nan))
  with pytest.raises(ValueError, match=r"nan_points\.mat: field 'pt2d' contains NaN"):
    mat_folders.read_labels(path)


@pytest.mark.parametrize("relative, group", [
    ("HELEN/HELEN_1234_1_0.jpg", "HELEN/HELEN_1234_1"),
    ("HELEN/HELEN_1234_1_13.jpg", "HELEN/HELEN_1234_1"),
    ("HELEN_Flip/HELEN_1234_1_3.jpg", "HELEN/HELEN_1234_1"),
    ("AFW/AFW_134212_2_0.jpg", "AFW/AFW_134212_2"),
    ("LFPW_Flip/LFPW_image_test_0001_7.jpg", "LFPW/LFPW_image_test_0001"),
    ("image00002.jpg", "image00002"),   # AFLW2000-3D: no view number
    ("AFLW2000/image00002.jpg", "AFLW2000/image00002"),
    ("faces/img_3.jpg", "faces/img_3"),  # no photo number before it: kept whole
])
def test_source_photo_groups_views_and_flips(tmp_path, relative, group):
  assert mat_folders.source_photo(str(tmp_path / relative), str(tmp_path)) == group
