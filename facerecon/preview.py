"""`main.py --mode=preview`: build the model, sample faces, write a picture.

Writes to the workdir:
  model.npz    the morphable model in use (the project's model file format)
  faces.npz    the sampled faces: params [B, 7+Ks+Ke], texture [B, Kt], names
  preview.png  their shaded renders with landmarks, labelled
"""

import os

import jax.numpy as jnp
import ml_collections
import numpy as np

from facerecon import camera
from facerecon import face_models
from facerecon import fileio
from facerecon import morphable
from facerecon import params as params_lib
from facerecon import visualize

# Named views of the mean face: (label, pitch, yaw, roll) in degrees.
VIEWS = (("front", 0, 0, 0), ("three-quarter", 0, 35, 0),
         ("profile", 0, 80, 0), ("looking up", 20, -25, 0))
# The first embedded expression modes (see facerecon.embedded_face).
EXPRESSION_NAMES = ("jaw open", "smile", "pucker", "brow raise")


# Blendshapes shown for models that name theirs (ARKit names, both sides).
BLENDSHAPES = (("jaw open", ("jawOpen",)), ("smile", ("mouthSmile_L", "mouthSmile_R")),
               ("pucker", ("mouthPucker",)), ("brow raise", ("browInnerUp_L", "browInnerUp_R")))


def _named_expressions(model: morphable.MorphableModel):
  """(name, mode indices, coefficient) of the expressions to show: the
  model's named blendshapes (weight 1) or the embedded face's first modes
  (coefficient 2 = the full named expression)."""
  if model.expression_names:
    index = {name: k for k, name in enumerate(model.expression_names)}
    return [(title, tuple(index[n] for n in names), 1.0) for title, names in BLENDSHAPES
            if all(n in index for n in names)]
  named = min(len(EXPRESSION_NAMES), model.layout.num_expression)
  return [(EXPRESSION_NAMES[i], (i,), 2.0) for i in range(named)]


def sample_faces(model: morphable.MorphableModel, config: ml_collections.ConfigDict):
  """The preview's faces: named views, random identities, expressions.

  Returns (names, params [B, P], texture [B, Kt]), drawn from
  `config.preview.seed`; random coefficients are N(0, std^2) per mode.
  """
  layout = model.layout
  rng = np.random.default_rng(config.preview.seed)
  size = config.preview.tile_size
  names, shapes, expressions, textures, angles = [], [], [], [], []

  def add(name, shape=None, expression=None, texture=None, view=(0, 0, 0)):
    names.append(name)
    shapes.append(np.zeros(layout.num_shape) if shape is None else shape)
    expressions.append(np.zeros(layout.num_expression) if expression is None
                       else expression)
    textures.append(np.zeros(model.texture_std.shape[0]) if texture is None
                    else texture)
    angles.append(np.deg2rad(view))

  for name, *view in VIEWS:
    add(name, view=view)
  for i in range(config.preview.num_identities):
    add(f"identity {i + 1}",
        shape=rng.normal(size=layout.num_shape) * model.shape_std,
        texture=rng.normal(size=model.texture_std.shape[0]) * model.texture_std,
        view=(0, rng.uniform(-30, 30), 0))
  shown = _named_expressions(model)
  for i in range(config.preview.num_expressions):
    expression = np.zeros(layout.num_expression)
    if i < len(shown):
      name, modes, weight = shown[i]
      expression[list(modes)] = weight
    else:
      expression = rng.normal(size=layout.num_expression) * model.expression_std
      name = f"expression {i + 1}"
    add(name, expression=expression, view=(0, 15, 0))

  # Frame each face by its own geometry so every tile is filled alike.
  poses = []
  for shape, expression, angle in zip(shapes, expressions, angles):
    vertices = morphable.vertices(model, jnp.asarray(shape, jnp.float32),
                                  jnp.asarray(expression, jnp.float32))
    poses.append(np.asarray(camera.framing_pose(vertices, angle, size, size)))
  params = params_lib.join(params_lib.FaceParams(
      np.stack(poses), np.stack(shapes), np.stack(expressions))).astype(np.float32)
  return names, params, np.stack(textures).astype(np.float32)


def write_preview(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the preview; returns the picture's path."""
  model = face_models.load(config.model)
  fileio.makedirs(workdir)
  morphable.save_model(model, os.path.join(workdir, "model.npz"))
  names, params, texture = sample_faces(model, config)
  with fileio.atomic_write(os.path.join(workdir, "faces.npz")) as f:
    np.savez(f, params=params, texture=texture, names=np.array(names))
  size = config.preview.tile_size
  images, landmarks = visualize.shade_faces(model, params, texture, size, size)
  tiles = [visualize.label(visualize.draw_landmarks(visualize.to_uint8(image), points),
                           name)
           for image, points, name in zip(images, landmarks, names)]
  path = os.path.join(workdir, "preview.png")
  fileio.write_png_atomic(path, visualize.grid(tiles, columns=len(VIEWS)))
  return path
