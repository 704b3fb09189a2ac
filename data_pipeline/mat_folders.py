"""300W-LP / AFLW2000-3D style folders: <stem>.jpg (or .png) beside <stem>.mat.

One reader for the tfds builder's 'mat_folders' config and for
`--mode=evaluate`. Labels: Pose_Para, Shape_Para and Exp_Para are the
parameter vector (t3d shifted to 0-based pixels, see
`facerecon.params.read_mat_params`); pt3d_68 gives the 68 landmarks in
0-based pixels (MATLAB's are 1-based, so minus 1).
"""

import os
from typing import NamedTuple

import numpy as np

from facerecon import fileio
from facerecon import params as params_lib

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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
      if suffix.lower() in IMAGE_SUFFIXES and stem + ".mat" in names:
        pairs.append((os.path.join(directory, file_name), os.path.join(directory, stem + ".mat")))
  if not pairs:
    raise FileNotFoundError(f"no <stem>.jpg + <stem>.mat pairs below {folder}")
  return sorted(pairs)


def read_labels(mat_path: str, layout: params_lib.ParamLayout = params_lib.BFM_LAYOUT) -> Labels:
  """The labels of one .mat; ValueError naming the file and field if malformed."""
  fields = fileio.load_mat(mat_path)
  params = params_lib.params_from_mat_fields(fields, mat_path, layout)
  points = fileio.require_field(fields, "pt3d_68", mat_path)
  if points.shape not in ((3, 68), (2, 68)):
    raise ValueError(f"{mat_path}: field 'pt3d_68' has shape {points.shape}, expected 3x68")
  landmarks = (points[:2].T - 1.0).astype(np.float32)
  if not np.all(np.isfinite(landmarks)):
    raise ValueError(f"{mat_path}: field 'pt3d_68' contains NaN or inf")
  return Labels(params, landmarks)
