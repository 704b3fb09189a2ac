"""Where face models come from: the built-in procedural face and model files.

A model source is a string, as `config.model` holds it:
- 'embedded': the procedural face of `facerecon.embedded_face` (about 3,400
  vertices; no data files, deterministic);
- 'embedded:<grid>', e.g. 'embedded:253': the same face at another
  resolution (253 gives the BFM's scale, about 53,600 vertices);
- 'ict': the package's real head, ICT-FaceKit's light model (USC ICT, MIT
  licence, `facerecon/assets/ICT-FaceKit-LICENSE`): face, head and neck
  (11,248 surface vertices) with eyes, teeth, mouth interior and eyelashes
  (25,959 vertices in all), 100 identity modes and 53 expression
  blendshapes, its landmarks calibrated on AFLW2000-3D's labels. Built by
  `python -m data_pipeline.prepare_ict` and
  `python -m data_pipeline.calibrate_landmarks` (docs/data.md);
- anything else: the path of a model file (`facerecon.morphable.save_model`,
  written for the BFM by `python -m data_pipeline.prepare_bfm`).

`fingerprint` names a model by its contents, so a run directory can tell
whether the model a later command loads is the one it trained with.
"""

import functools
import hashlib
import os

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


ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
# Source name -> the shipped model file in ASSETS.
SHIPPED = {"ict": "ict_face_model.npz"}


def load(source: str) -> morphable.MorphableModel:
  """The model of a source string (see the module doc). Models are
  immutable, so repeated loads of one source share one (a file's is read
  again when its size or time changes)."""
  if source in SHIPPED or source.startswith("embedded"):
    return _load(source, None)
  try:
    status = os.stat(source)
  except OSError:
    status = None  # morphable.load_model names the missing file
  return _load(source, None if status is None else (status.st_size, status.st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _load(source: str, file_status) -> morphable.MorphableModel:
  del file_status  # only part of the cache key
  if source in SHIPPED:
    return morphable.load_model(os.path.join(ASSETS, SHIPPED[source]))
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
  # The fields added with model format 2 count only where they are not the
  # defaults, so run directories of models without them keep their digest.
  if model.uv is not None:
    digest.update(b"uv;" + np.ascontiguousarray(model.uv).tobytes())
  if model.parts:
    digest.update(f"parts:{model.parts!r};".encode())
  if model.expression_names:
    digest.update(f"expression_names:{model.expression_names!r};".encode())
  if model.expression_kind != morphable.GAUSSIAN:
    digest.update(f"expression_kind:{model.expression_kind};".encode())
  return digest.hexdigest()
