"""300W-LP / AFLW2000-3D style folders: <stem>.jpg (or .png) beside <stem>.mat.

One reader for the tfds builder's 'mat_folders' config and for
`--mode=evaluate`. Labels: Pose_Para, Shape_Para and Exp_Para are the
parameter vector (t3d shifted to 0-based pixels, see
`facerecon.params.read_mat_params`). The 68 landmarks come from the x, y
rows of pt3d_68 (AFLW2000-3D) or, when that is absent, from pt2d (300W-LP,
2x68); both are MATLAB's 1-based pixel (column, row) coordinates of the
photo, so minus 1 gives the 0-based pixels the crops and losses use.
"""

import os
import re
from typing import NamedTuple

import numpy as np

from facerecon import fileio
from facerecon import params as params_lib
from facerecon.data import photos


class Labels(NamedTuple):
  params: np.ndarray     # [235] float32 (the layout's size)
  landmarks: np.ndarray  # [68, 2] float32, 0-based pixels (column, row)


def find_pairs(folder: str) -> list[tuple[str, str]]:
  """(image path, .mat path) of every labelled photo below `folder`, sorted."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder} is not a folder")
  pairs = []
  for directory, _, file_names in os.walk(folder):
    names = set(file_names)
    for file_name in file_names:
      stem, suffix = os.path.splitext(file_name)
      if photos.is_photo(file_name) and stem + ".mat" in names:
        pairs.append((os.path.join(directory, file_name), os.path.join(directory, stem + ".mat")))
  if not pairs:
    raise FileNotFoundError(f"no <stem>.jpg + <stem>.mat pairs below {folder}")
  return sorted(pairs)


# 300W-LP names its renders <photo>_<view>, and <photo> itself ends in a
# number (HELEN_1234_1, LFPW_image_test_0001, AFW_134212_2). Requiring both
# numbers keeps plain names like img_3 (or AFLW2000-3D's image00002) whole.
_VIEW_SUFFIX = re.compile(r"(.+_\d+)_\d+")
FLIP_SUFFIX = "_Flip"


def source_photo(image_path: str, folder: str) -> str:
  """The source photo an image was rendered from, as a group key.

  300W-LP renders each photo at many poses (HELEN/HELEN_1234_1_0 ... _k) and
  again mirrored in a <subset>_Flip folder; all of them map to
  'HELEN/HELEN_1234_1', so that splits can keep them together. A name
  without a view number (AFLW2000-3D) is its own group.
  """
  relative = os.path.relpath(image_path, folder)
  directory, file_name = os.path.split(relative)
  stem = os.path.splitext(file_name)[0]
  match = _VIEW_SUFFIX.fullmatch(stem)
  if match:
    stem = match.group(1)
  head, subset = os.path.split(directory)
  if subset.endswith(FLIP_SUFFIX):
    directory = os.path.join(head, subset[:-len(FLIP_SUFFIX)])
  return os.path.join(directory, stem).replace(os.sep, "/")


def read_labels(mat_path: str,
                layout: params_lib.ParamLayout | None = params_lib.BFM_LAYOUT) -> Labels:
  """The labels of one .mat; ValueError naming the file and field if malformed
  (KeyError if a field is missing). `layout` None: the file's own sizes."""
  fields = fileio.load_mat(mat_path)
  params = params_lib.params_from_mat_fields(fields, mat_path, layout)
  name, points = _landmark_field(fields, mat_path)
  landmarks = (points[:2].T - 1.0).astype(np.float32)
  if not np.all(np.isfinite(landmarks)):
    raise ValueError(f"{mat_path}: field '{name}' contains NaN or inf")
  return Labels(params, landmarks)


def _landmark_field(fields, mat_path: str) -> tuple[str, np.ndarray]:
  """(field name, 2x68 or 3x68 points): pt3d_68 if present, else pt2d.

  AFLW2000-3D's pt2d is 2x21 (AFLW's own points), so pt2d counts only when
  it is 2x68, as in 300W-LP.
  """
  if "pt3d_68" in fields:
    points = np.asarray(fields["pt3d_68"])
    if points.shape not in ((3, 68), (2, 68)):
      raise ValueError(f"{mat_path}: field 'pt3d_68' has shape {points.shape}, expected 3x68")
    return "pt3d_68", points
  if "pt2d" in fields:
    points = np.asarray(fields["pt2d"])
    if points.shape != (2, 68):
      raise ValueError(f"{mat_path}: no field 'pt3d_68', and field 'pt2d' has shape "
                       f"{points.shape}, expected 2x68")
    return "pt2d", points
  raise KeyError(f"{mat_path}: no landmarks: neither field 'pt3d_68' nor 'pt2d' "
                 f"(found: {', '.join(sorted(fields)) or 'none'})")
