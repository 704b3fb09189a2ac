r"""Builds a facerecon model file from ICT-FaceKit's FaceXModel folder.

    python -m data_pipeline.prepare_ict --ict_dir=DIR --output=FILE [--compact]

DIR is the `FaceXModel` folder of ICT-FaceKit (USC ICT, MIT licence), as
downloaded: `generic_neutral_mesh.obj`, `identity000.obj` .. `identity099.obj`
(identity principal components, one standard deviation each), one OBJ per
expression blendshape (ARKit-style names, weights in [0, 1]) and
`vertex_indices.json` (the expression list and the 68 landmark vertices).
xz-compressed copies (`.obj.xz`) are read as well.

The written model (`facerecon.morphable`, format 2):
- vertices in millimetres (the OBJs are in centimetres), y up, the face
  looking down +z; the mean shape is the neutral mesh;
- shape: the identity modes (basis = identity mesh - neutral, std 1);
- expression: the blendshapes (basis = shape - neutral), kind 'blendshape'
  with their names (std 1: a weight's whole range);
- triangles: each quad (a, b, c, d) split into (a, b, c) and (a, c, d), so
  the winding of the OBJ (counter-clockwise seen from outside) is kept;
- parts: face and head-and-neck are the surface (losses, evaluation, dense
  output); mouth socket, eye sockets, gums and tongue, teeth, scleras,
  irises and eyelashes are rendered only. The data set's lacrimal-fluid,
  eye-blend and eye-occlusion meshes (transparent overlays for Unreal
  Engine's eye shaders, meaningless as opaque surfaces) are left out;
- uv: each vertex's first texture coordinate (seams keep one side's);
- the 68 Multi-PIE landmark vertices of the data set, in iBUG order;
- a PNCC code: the mean shape normalised to [0, 1] over the surface's box;
- a texture mean of plain per-part colours (ICT's light model has no albedo
  model; the synthetic faces paint their own).
"""

import json
import lzma
import os
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import numpy as np

from facerecon import morphable

NEUTRAL = "generic_neutral_mesh"
INDICES_FILE = "vertex_indices.json"
MM_PER_UNIT = 10.0  # the OBJs are in centimetres


class Layout(NamedTuple):
  """What the folder must hold: counts and the parts table (name, role or
  None to leave the part out, first and last vertex, first and last
  polygon, plain RGB colour 0..255)."""
  num_vertices: int
  num_polygons: int
  num_identities: int
  parts: tuple


# The data set's parts (its README).
_ICT_PARTS = (
    ("face", morphable.SURFACE, 0, 9408, 0, 9229, (224, 172, 138)),
    ("head_and_neck", morphable.SURFACE, 9409, 11247, 9230, 11143, (214, 162, 128)),
    ("mouth_socket", morphable.RENDERED, 11248, 13293, 11144, 13225, (120, 40, 45)),
    ("eye_socket_left", morphable.RENDERED, 13294, 13677, 13226, 13629, (150, 90, 85)),
    ("eye_socket_right", morphable.RENDERED, 13678, 14061, 13630, 14033, (150, 90, 85)),
    ("gums_and_tongue", morphable.RENDERED, 14062, 17038, 14034, 17005, (190, 90, 95)),
    ("teeth", morphable.RENDERED, 17039, 21450, 17006, 21495, (235, 228, 205)),
    ("sclera_left", morphable.RENDERED, 21451, 22220, 21496, 22295, (240, 236, 230)),
    ("iris_left", morphable.RENDERED, 22221, 23020, 22296, 23093, (90, 60, 40)),
    ("sclera_right", morphable.RENDERED, 23021, 23790, 23094, 23893, (240, 236, 230)),
    ("iris_right", morphable.RENDERED, 23791, 24590, 23894, 24691, (90, 60, 40)),
    ("lacrimal_fluid_left", None, 24591, 24794, 24692, 24854, None),
    ("lacrimal_fluid_right", None, 24795, 24998, 24855, 25017, None),
    ("eye_blend_left", None, 24999, 25022, 25018, 25032, None),
    ("eye_blend_right", None, 25023, 25046, 25033, 25047, None),
    ("eye_occlusion_left", None, 25047, 25198, 25048, 25175, None),
    ("eye_occlusion_right", None, 25199, 25350, 25176, 25303, None),
    ("eyelashes_left", morphable.RENDERED, 25351, 26034, 25304, 25843, (30, 22, 18)),
    ("eyelashes_right", morphable.RENDERED, 26035, 26718, 25844, 26383, (30, 22, 18)),
)
ICT_LAYOUT = Layout(num_vertices=26719, num_polygons=26384, num_identities=100,
                    parts=_ICT_PARTS)

# The data set's Multi-PIE 68 landmark vertices (its README), used when
# vertex_indices.json does not list them.
LANDMARKS = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272,
    4088, 3443, 268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942,
    4857, 1140, 2075, 1147, 4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756,
    3721, 3725, 3732, 5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841,
    5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966)


class ObjMesh(NamedTuple):
  """What an OBJ file holds: vertices [N, 3], texture coordinates [M, 2],
  polygons (lists of 0-based vertex and texture indices) and the text of
  its face lines (to compare topologies fast)."""
  vertices: np.ndarray
  uvs: np.ndarray | None
  polygons: list[list[int]] | None
  polygon_uvs: list[list[int]] | None
  face_text: bytes


def find_file(ict_dir: str, stem: str) -> str:
  """`<stem>.obj`, or `<stem>.obj.xz` if only that exists."""
  for name in (stem + ".obj", stem + ".obj.xz"):
    path = os.path.join(ict_dir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"missing ICT-FaceKit file {os.path.join(ict_dir, stem + '.obj')} "
                          f"(nor .obj.xz) in --ict_dir")


def _read_text(path: str) -> bytes:
  try:
    if path.endswith(".xz"):
      with lzma.open(path, "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except (OSError, lzma.LZMAError) as e:
    raise ValueError(f"cannot read {path}: {e}") from e


def _floats(lines: list[bytes], width: int, path: str, what: str) -> np.ndarray:
  try:
    values = np.array(b" ".join(line[2:] for line in lines).split(), dtype=np.float64)
  except ValueError as e:
    raise ValueError(f"{path}: unreadable {what} line: {e}") from e
  if values.size != width * len(lines):
    raise ValueError(f"{path}: {what} lines must have {width} numbers each")
  return values.reshape(-1, width)


def read_obj(path: str, with_polygons: bool = True) -> ObjMesh:
  """Reads an OBJ (or .obj.xz): 'v x y z', 'vt u v' and 'f v/vt ...' lines."""
  lines = _read_text(path).splitlines()
  vertex_lines = [line for line in lines if line.startswith(b"v ")]
  vertices = _floats(vertex_lines, 3, path, "vertex")
  face_text = b"\n".join(line for line in lines if line.startswith(b"f "))
  if not with_polygons:
    return ObjMesh(vertices, None, None, None, face_text)
  uv_lines = [line[1:] for line in lines if line.startswith(b"vt ")]
  uvs = _floats(uv_lines, 2, path, "texture coordinate") if uv_lines else np.zeros((0, 2))
  polygons, polygon_uvs = [], []
  for line in lines:
    if not line.startswith(b"f "):
      continue
    corners = [c.split(b"/") for c in line.split()[1:]]
    try:
      polygons.append([int(c[0]) - 1 for c in corners])
      polygon_uvs.append([int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in corners])
    except ValueError as e:
      raise ValueError(f"{path}: unreadable face line {line[:60]!r}: {e}") from e
  for polygon in polygons:
    if len(polygon) < 3 or min(polygon) < 0 or max(polygon) >= len(vertices):
      raise ValueError(f"{path}: face {polygon} has vertex indices outside "
                       f"[1, {len(vertices)}] or fewer than 3 corners")
  return ObjMesh(vertices, uvs, polygons, polygon_uvs, face_text)


def _triangulate(polygons: list[list[int]]) -> np.ndarray:
  """Fans each polygon from its first corner: (a, b, c, d) -> (a, b, c), (a, c, d)."""
  return np.array([(p[0], p[k], p[k + 1]) for p in polygons for k in range(1, len(p) - 1)],
                  np.int64).reshape(-1, 3)


def _expression_names(ict_dir: str) -> tuple[list[str], dict]:
  """The expression list of vertex_indices.json, and the whole file."""
  path = os.path.join(ict_dir, INDICES_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"missing ICT-FaceKit file {path} (it lists the expressions)")
  try:
    with open(path) as f:
      indices = json.load(f)
    return [str(name) for name in indices["expressions"]], indices
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: cannot read the 'expressions' list: {e}") from e


def _landmarks(indices: dict, path: str) -> np.ndarray:
  values = indices.get("idx_to_landmark_verts", LANDMARKS)
  landmarks = np.asarray(values, np.int64)
  if landmarks.shape != (morphable.NUM_LANDMARKS,):
    raise ValueError(f"{path}: 'idx_to_landmark_verts' has {landmarks.size} entries, "
                     f"expected {morphable.NUM_LANDMARKS}")
  return landmarks


def _read_offsets(ict_dir: str, stems: list[str], neutral: ObjMesh) -> np.ndarray:
  """[K, N, 3] each file's vertices minus the neutral's, checked to share its
  topology (the same face lines, or, written another way, the same faces)."""
  offsets = np.empty((len(stems),) + neutral.vertices.shape, np.float32)
  for k, stem in enumerate(stems):
    path = find_file(ict_dir, stem)
    mesh = read_obj(path, with_polygons=False)
    if mesh.vertices.shape != neutral.vertices.shape:
      raise ValueError(f"{path}: {len(mesh.vertices)} vertices, the neutral mesh has "
                       f"{len(neutral.vertices)} (not the same topology)")
    if mesh.face_text != neutral.face_text and read_obj(path).polygons != neutral.polygons:
      raise ValueError(f"{path}: its faces differ from the neutral mesh's "
                       f"(not the same topology)")
    offsets[k] = mesh.vertices - neutral.vertices
  return offsets


def build_model(ict_dir: str, layout: Layout = ICT_LAYOUT) -> morphable.MorphableModel:
  """Reads the folder and returns the model (validated). `layout` is
  ICT-FaceKit's; tests pass a small one."""
  if not os.path.isdir(ict_dir):
    raise FileNotFoundError(f"--ict_dir {ict_dir} is not a folder")
  neutral_path = find_file(ict_dir, NEUTRAL)
  neutral_mesh = read_obj(neutral_path)
  n = len(neutral_mesh.vertices)
  if n != layout.num_vertices or len(neutral_mesh.polygons) != layout.num_polygons:
    raise ValueError(f"{neutral_path}: {n} vertices and {len(neutral_mesh.polygons)} faces; "
                     f"ICT-FaceKit's FaceXModel has {layout.num_vertices} and "
                     f"{layout.num_polygons}")
  neutral = neutral_mesh.vertices
  names, indices = _expression_names(ict_dir)
  landmarks = _landmarks(indices, os.path.join(ict_dir, INDICES_FILE))
  identity = _read_offsets(ict_dir, [f"identity{k:03d}" for k in range(layout.num_identities)],
                           neutral_mesh)
  expression = _read_offsets(ict_dir, names, neutral_mesh)

  # Keep the parts with a role; renumber vertices past the left-out ones.
  keep = np.zeros(n, bool)
  new_index = np.full(n, -1, np.int64)
  parts, triangles, colours = [], [], []
  vertex_count = triangle_count = 0
  for name, role, v0, v1, p0, p1, colour in layout.parts:
    polygons = neutral_mesh.polygons[p0:p1 + 1]
    if role is None:
      continue
    keep[v0:v1 + 1] = True
    new_index[v0:v1 + 1] = np.arange(vertex_count, vertex_count + v1 + 1 - v0)
    part_triangles = new_index[_triangulate(polygons)]
    # A part's faces use its own vertices and those of kept parts before it
    # (the sockets and the neck are stitched to the face).
    if part_triangles.size and (part_triangles.min() < 0
                                or np.max(_triangulate(polygons)) > v1):
      raise ValueError(f"{neutral_path}: part {name}'s faces use vertices outside it and "
                       f"the parts before it (not ICT-FaceKit's topology)")
    parts.append(morphable.Part(name, role, (vertex_count, vertex_count + v1 + 1 - v0),
                                (triangle_count, triangle_count + len(part_triangles))))
    triangles.append(part_triangles)
    colours.append(np.broadcast_to(np.asarray(colour, np.float32), (v1 + 1 - v0, 3)))
    vertex_count += v1 + 1 - v0
    triangle_count += len(part_triangles)
  triangles = np.concatenate(triangles)

  uv = np.zeros((n, 2), np.float64)
  for polygon, polygon_uv in zip(reversed(neutral_mesh.polygons),
                                 reversed(neutral_mesh.polygon_uvs)):
    for v, t in zip(polygon, polygon_uv):  # reversed: the first occurrence wins
      if 0 <= t < len(neutral_mesh.uvs):
        uv[v] = neutral_mesh.uvs[t]

  mean = (neutral * MM_PER_UNIT)[keep]
  surface = mean[:sum(p.vertices[1] - p.vertices[0] for p in parts
                     if p.role == morphable.SURFACE)]
  low, high = surface.min(axis=0), surface.max(axis=0)
  pncc = np.clip((mean - low) / (high - low), 0.0, 1.0)
  normals = np.asarray(morphable.face_normals(mean, triangles[:parts[0].triangles[1]]))
  if normals[:, 2].sum() < 0:
    raise ValueError(f"{neutral_path}: the face's polygons are wound clockwise seen from "
                     f"outside (not ICT-FaceKit's orientation)")

  f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
  model = morphable.MorphableModel(
      mean_shape=f32(mean),
      shape_basis=f32(identity[:, keep] * MM_PER_UNIT),
      shape_std=np.ones(layout.num_identities, np.float32),
      expression_basis=f32(expression[:, keep] * MM_PER_UNIT),
      expression_std=np.ones(len(names), np.float32),
      texture_mean=f32(np.concatenate(colours)),
      texture_basis=np.zeros((0, vertex_count, 3), np.float32),
      texture_std=np.zeros((0,), np.float32),
      triangles=triangles.astype(np.int32),
      landmark_indices=new_index[landmarks].astype(np.int32),
      pncc=f32(pncc),
      uv=f32(uv[keep]),
      parts=tuple(parts),
      expression_names=tuple(names),
      expression_kind=morphable.BLENDSHAPE,
  )
  return morphable.validate(model, ict_dir)


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program)."""
  flags.DEFINE_string("ict_dir", None, "ICT-FaceKit's FaceXModel folder.")
  flags.DEFINE_string("output", None, "The model file to write (.npz).")
  flags.DEFINE_bool("compact", False, "Store the bases in float16, compressed (the "
                    "package's shipped model).")
  flags.mark_flags_as_required(["ict_dir", "output"])


def main(argv):
  del argv
  model = build_model(FLAGS.ict_dir)
  morphable.save_model(model, FLAGS.output, compact=FLAGS.compact)
  logging.info("wrote %s: %d vertices (%d surface), %d triangles, %d identity and %d "
               "expression modes", FLAGS.output, model.num_vertices,
               morphable.surface_size(model)[0], model.num_triangles,
               model.layout.num_shape, model.layout.num_expression)


if __name__ == "__main__":
  define_flags()
  app.run(main)
