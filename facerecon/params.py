"""The parameter vector: one layout for labels, network outputs and file I/O.

A face is described by `7 + num_shape + num_expression` numbers, the layout of
the original code and of 300W-LP / AFLW2000-3D (235 for the BFM):

  [phi, gamma, theta, t3d_x, t3d_y, t3d_z, f | shape (num_shape) | expression]

Angles are in radians, (phi, gamma, theta) = (pitch, yaw, roll) in the
convention of `facerecon.camera.rotation_matrix`; t3d is in image pixels and f
is the scale from model units to pixels. Shape and expression coefficients are
in the model's absolute units (per-mode std in `MorphableModel.shape_std` and
`.expression_std`). Basis sizes come from the model, never from constants.
"""

import dataclasses
import os
from typing import Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np

from facerecon import fileio

NUM_POSE = 7
ANGLES = slice(0, 3)       # phi (pitch), gamma (yaw), theta (roll)
TRANSLATION = slice(3, 6)  # t3d, in pixels
SCALE = 6                  # f


@dataclasses.dataclass(frozen=True)
class ParamLayout:
  """Sizes of the three blocks; hashable so it can be a static jit argument."""
  num_shape: int
  num_expression: int

  @property
  def size(self) -> int:
    return NUM_POSE + self.num_shape + self.num_expression

  @property
  def pose(self) -> slice:
    return slice(0, NUM_POSE)

  @property
  def shape(self) -> slice:
    return slice(NUM_POSE, NUM_POSE + self.num_shape)

  @property
  def expression(self) -> slice:
    return slice(NUM_POSE + self.num_shape, self.size)

  @classmethod
  def for_model(cls, model) -> "ParamLayout":
    """The layout of a `facerecon.morphable.MorphableModel`."""
    return cls(num_shape=model.shape_basis.shape[0],
               num_expression=model.expression_basis.shape[0])


BFM_LAYOUT = ParamLayout(num_shape=199, num_expression=29)


class FaceParams(NamedTuple):
  """A parameter vector split into its blocks; each has leading batch dims."""
  pose: jnp.ndarray        # [..., 7]
  shape: jnp.ndarray       # [..., num_shape]
  expression: jnp.ndarray  # [..., num_expression]

  @property
  def angles(self):
    return self.pose[..., ANGLES]

  @property
  def translation(self):
    return self.pose[..., TRANSLATION]

  @property
  def scale(self):
    return self.pose[..., SCALE]


def split(params, layout: ParamLayout) -> FaceParams:
  """[..., layout.size] -> FaceParams. Works on numpy and jax arrays."""
  if params.shape[-1] != layout.size:
    raise ValueError(f"parameter vector has {params.shape[-1]} entries, "
                     f"layout {layout} needs {layout.size}")
  return FaceParams(params[..., layout.pose], params[..., layout.shape],
                    params[..., layout.expression])


def join(face: FaceParams):
  """FaceParams -> [..., 7 + num_shape + num_expression]."""
  if face.pose.shape[-1] != NUM_POSE:
    raise ValueError(f"pose has {face.pose.shape[-1]} entries, expected {NUM_POSE}")
  xp = np if all(isinstance(x, np.ndarray) for x in face) else jnp
  return xp.concatenate([face.pose, face.shape, face.expression], axis=-1)


def make_pose(angles, translation, scale):
  """Builds the 7-d pose block from (phi, gamma, theta), t3d and f."""
  xp = np if isinstance(angles, np.ndarray) else jnp
  scale = xp.asarray(scale)[..., None]
  return xp.concatenate([angles, translation, scale], axis=-1)


def read_mat_params(path: str | os.PathLike,
                    layout: ParamLayout = BFM_LAYOUT,
                    matlab_pixels: bool = True) -> np.ndarray:
  """Reads Pose_Para / Shape_Para / Exp_Para of a 300W-LP or AFLW2000-3D .mat.

  With `matlab_pixels` (the default, right for those data sets) t3d_x and
  t3d_y are shifted by -1: the fits were made in MATLAB's 1-based pixel
  coordinates, whereas `facerecon.camera` centres pixel (0, 0) at x = y = 0.
  The projected landmarks then land on the same photo pixels.

  Returns a float32 vector of `layout.size` entries.
  """
  path = os.fspath(path)
  return params_from_mat_fields(fileio.load_mat(path), path, layout, matlab_pixels)


def params_from_mat_fields(fields: Mapping[str, np.ndarray], path: str,
                           layout: ParamLayout | None = BFM_LAYOUT,
                           matlab_pixels: bool = True) -> np.ndarray:
  """`read_mat_params` of the variables of a .mat loaded already
  (`fileio.load_mat`); `path` names the file in errors. `layout` None takes
  the file's own sizes (for its pose alone, whatever model it was fit with)."""
  pose = fileio.require_field(fields, "Pose_Para", path).reshape(-1)
  shape = fileio.require_field(fields, "Shape_Para", path).reshape(-1)
  expression = fileio.require_field(fields, "Exp_Para", path).reshape(-1)
  if layout is None:
    layout = ParamLayout(num_shape=shape.size, num_expression=expression.size)
  for name, value, want in (("Pose_Para", pose, NUM_POSE),
                            ("Shape_Para", shape, layout.num_shape),
                            ("Exp_Para", expression, layout.num_expression)):
    if value.size != want:
      raise ValueError(f"{path}: field '{name}' has {value.size} entries, "
                       f"expected {want}")
  vector = np.concatenate([pose, shape, expression]).astype(np.float64)
  if not np.all(np.isfinite(vector)):
    raise ValueError(f"{path}: parameters contain NaN or inf")
  if matlab_pixels:
    vector[3:5] -= 1.0
  return vector.astype(np.float32)
