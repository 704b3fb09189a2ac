r"""Builds the trimmed BFM 2009 + 3DDFA expression model file.

    python -m data_pipeline.prepare_bfm --bfm_dir=DIR --output=FILE

DIR holds the files the original project used (the user downloads them; they
cannot be redistributed):
  01_MorphableModel.mat  BFM 2009: shapeMU 160470x1, shapePC 160470x199,
                         shapeEV 199x1, texMU, texPC, texEV
  Model_Expression.mat   3DDFA: mu_exp 159645x1, w_exp 159645x29 (already
                         on the 53,215 kept vertices)
  model_info.mat         3DDFA: trimIndex 53215x1 (1-based into BFM's 53,490
                         vertices), tri 3x105840 (1-based into the kept
                         vertices), keypoints 1x68 (1-based kept-vertex indices)
  vertex_code.mat        3DDFA: vertex_code, the PNCC code (3xN or Nx3)

MATLAB v5/v7 and v7.3 (HDF5) files are both read. BFM vectors are interleaved
x1 y1 z1 x2 ... (MATLAB's reshape(v, 3, N)); they are de-interleaved here,
which is the step the original TF code got wrong. Triangle winding is checked
against the face's outward direction and flipped if needed, so the written
model follows `facerecon.morphable`'s conventions.
"""

import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from facerecon import fileio
from facerecon import morphable

BFM_FILE = "01_MorphableModel.mat"
EXPRESSION_FILE = "Model_Expression.mat"
INFO_FILE = "model_info.mat"
CODE_FILE = "vertex_code.mat"


def _read(bfm_dir: str, name: str):
  path = os.path.join(bfm_dir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"missing model file {path} (expected in --bfm_dir)")
  return path, fileio.load_mat(path)


def _one_based_index(values: np.ndarray, upper: int, path: str, field: str) -> np.ndarray:
  values = np.asarray(values).astype(np.int64).reshape(-1)
  if values.size and (values.min() < 1 or values.max() > upper):
    raise ValueError(f"{path}: field '{field}' has indices in [{values.min()}, "
                     f"{values.max()}], expected 1-based indices in [1, {upper}]")
  return values - 1


def _deinterleave_rows(matrix: np.ndarray) -> np.ndarray:
  """[3N, K] interleaved (x1 y1 z1 x2 ...) -> [K, N, 3]."""
  return np.ascontiguousarray(matrix.T.reshape(matrix.shape[1], -1, 3))


def _orient_outwards(mean: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, bool]:
  """Flips the winding if the normals point into the face (away from +z)."""
  normals = np.asarray(morphable.face_normals(mean, triangles))
  if normals[:, 2].sum() < 0:
    return triangles[:, [0, 2, 1]], True
  return triangles, False


def build_model(bfm_dir: str) -> morphable.MorphableModel:
  """Reads the four files and returns the trimmed model (validated)."""
  info_path, info = _read(bfm_dir, INFO_FILE)
  bfm_path, bfm = _read(bfm_dir, BFM_FILE)
  exp_path, exp = _read(bfm_dir, EXPRESSION_FILE)
  code_path, code = _read(bfm_dir, CODE_FILE)

  shape_mu = fileio.require_field(bfm, "shapeMU", bfm_path, (None, 1))
  full_dims = shape_mu.shape[0]
  if full_dims % 3:
    raise ValueError(f"{bfm_path}: field 'shapeMU' has {full_dims} rows, "
                     f"not a multiple of 3")
  shape_pc = fileio.require_field(bfm, "shapePC", bfm_path, (full_dims, None))
  shape_ev = fileio.require_field(bfm, "shapeEV", bfm_path, (shape_pc.shape[1], 1))
  tex_mu = fileio.require_field(bfm, "texMU", bfm_path, (full_dims, 1))
  tex_pc = fileio.require_field(bfm, "texPC", bfm_path, (full_dims, None))
  tex_ev = fileio.require_field(bfm, "texEV", bfm_path, (tex_pc.shape[1], 1))

  keep = _one_based_index(
      fileio.require_field(info, "trimIndex", info_path, (None, 1)),
      full_dims // 3, info_path, "trimIndex")
  n = keep.size
  rows = (3 * keep[:, None] + np.arange(3)).reshape(-1)  # x, y, z rows of each kept vertex
  tri = fileio.require_field(info, "tri", info_path, (3, None))
  triangles = _one_based_index(tri, n, info_path, "tri").reshape(3, -1).T
  landmarks = _one_based_index(
      fileio.require_field(info, "keypoints", info_path, (1, morphable.NUM_LANDMARKS)),
      n, info_path, "keypoints")

  mu_exp = fileio.require_field(exp, "mu_exp", exp_path, (3 * n, 1))
  w_exp = fileio.require_field(exp, "w_exp", exp_path, (3 * n, None))
  if "sigma_exp" in exp:
    expression_std = fileio.require_field(
        exp, "sigma_exp", exp_path, (w_exp.shape[1], 1)).reshape(-1)
  else:
    # 3DDFA's w_exp columns carry their own scale (coefficients are O(1));
    # the data statistics, not this prior, normalise the network's outputs.
    logging.warning("%s has no 'sigma_exp'; expression std set to 1", exp_path)
    expression_std = np.ones(w_exp.shape[1])

  vertex_code = fileio.require_field(code, "vertex_code", code_path)
  if vertex_code.shape == (3, n):
    vertex_code = vertex_code.T
  if vertex_code.shape != (n, 3):
    raise ValueError(f"{code_path}: field 'vertex_code' has shape "
                     f"{'x'.join(map(str, vertex_code.shape))}, expected 3x{n} or {n}x3")

  f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
  mean = (shape_mu[rows, 0].astype(np.float64)
          + mu_exp[:, 0].astype(np.float64)).reshape(n, 3)
  triangles, flipped = _orient_outwards(mean, triangles)
  if flipped:
    logging.info("triangle winding flipped so normals point out of the face")
  model = morphable.MorphableModel(
      mean_shape=f32(mean),
      shape_basis=f32(_deinterleave_rows(shape_pc[rows])),
      shape_std=f32(shape_ev.reshape(-1)),
      expression_basis=f32(_deinterleave_rows(w_exp)),
      expression_std=f32(expression_std),
      texture_mean=f32(tex_mu[rows, 0].reshape(n, 3)),
      texture_basis=f32(_deinterleave_rows(tex_pc[rows])),
      texture_std=f32(tex_ev.reshape(-1)),
      triangles=np.ascontiguousarray(triangles, dtype=np.int32),
      landmark_indices=landmarks.astype(np.int32),
      pncc=f32(vertex_code),
  )
  return morphable.validate(model, bfm_dir)


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so that the
  pipeline modules can be imported together)."""
  flags.DEFINE_string("bfm_dir", None, "Folder with the four .mat files.")
  flags.DEFINE_string("output", None, "Model file to write (.npz).")


def main(argv):
  del argv
  model = build_model(FLAGS.bfm_dir)
  morphable.save_model(model, FLAGS.output)
  print(f"wrote {FLAGS.output}: {model.num_vertices} vertices, "
        f"{model.num_triangles} triangles, {model.shape_basis.shape[0]} shape, "
        f"{model.expression_basis.shape[0]} expression, "
        f"{model.texture_basis.shape[0]} texture modes")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["bfm_dir", "output"])
  app.run(main)
