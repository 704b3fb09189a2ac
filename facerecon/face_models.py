"""Where face models come from: the built-in procedural face and model files.

A model source is a string, as `config.model` holds it:
- 'embedded': the procedural face of `facerecon.embedded_face` (about 3,400
  vertices; no data files, deterministic);
- 'embedded:<grid>', e.g. 'embedded:253': the same face at another
  resolution (253 gives the BFM's scale, about 53,600 vertices);
- anything else: the path of a model file (`facerecon.morphable.save_model`,
  written for the BFM by `python -m data_pipeline.prepare_bfm`).

`fingerprint` names a model by its contents, so a run directory can tell
whether the model a later command loads is the one it trained with.
"""

import hashlib

import numpy as np

from facerecon import embedded_face
from facerecon import morphable


def embedded(grid_size: int | None = None, num_shape: int = 199, num_expression: int = 29,
             num_texture: int = 199) -> morphable.MorphableModel:
  """The built-in procedural face model (no data files; deterministic).

  `grid_size` sets the resolution: the default gives about 3,500 vertices for
  fast CPU work; `embedded_face.BFM_SCALE_GRID` gives the BFM's scale (about
  53k vertices and 106k triangles). Basis sizes default to the BFM's, so the
  235-d parameter layout holds.
  """
  return embedded_face.build(
      grid_size=embedded_face.DEFAULT_GRID if grid_size is None else grid_size,
      num_shape=num_shape, num_expression=num_expression, num_texture=num_texture)


def load(source: str) -> morphable.MorphableModel:
  """The model of a source string (see the module doc)."""
  if source == "embedded":
    return embedded()
  if source.startswith("embedded:"):
    try:
      grid = int(source.split(":", 1)[1])
    except ValueError:
      raise ValueError(f"model source '{source}': expected 'embedded:<grid size>'") from None
    return embedded(grid_size=grid)
  return morphable.load_model(source)


def fingerprint(model: morphable.MorphableModel) -> str:
  """A hex digest of the model's contents (every field's shape, type and
  values): equal for the same model wherever it was loaded from."""
  digest = hashlib.sha256()
  for name in morphable.FIELDS:
    value = np.ascontiguousarray(getattr(model, name))
    digest.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()
