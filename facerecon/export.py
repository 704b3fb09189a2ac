"""Per-face output files of `--mode=reconstruct`: meshes, depth maps, JSON.

Meshes are written twice, with the same content:

  OBJ  Wavefront text. "v x y z" lines, or "v x y z r g b" with vertex
       colours in [0, 1] (a widespread extension read by MeshLab, Blender and
       Open3D); "f i j k" triangles with OBJ's 1-based indices.
  PLY  binary little-endian: a vertex element (float32 x y z, and uchar
       red green blue when there are colours) and a face element
       (`property list uchar int vertex_indices`, always 3 entries).

Both store vertices at float32 precision, so the two files describe the same
mesh (OBJ colours keep 6 significant digits, PLY's 8 bits). Both open in
trimesh, Blender and MeshLab; the tests read them back with trimesh (OBJ) and
plyfile (PLY).

Depth maps are written as a float32 .npy (NaN off the face) and as a 16-bit
PNG for viewing and compact storage: 0 = no face, and face pixels map
linearly so that the face's smallest depth (`depth_min`) is 1 and its
largest (`depth_max`) is 65535: full 16-bit resolution whatever the units.
The dict `encode_depth_png16` returns holds the two limits, which
`decode_depth_png16` needs to undo the mapping; reconstruct stores it in the
face's JSON.

Every file goes through `facerecon.fileio`'s atomic writers, so an interrupted
run never leaves a truncated file under its final name.
"""

import io
import json
import os

import numpy as np

from facerecon import fileio

PNG16_MAX = 65535
# Face pixels use 1..65535; the number of steps between depth_min and depth_max.
PNG16_STEPS = PNG16_MAX - 1
PNG16_ENCODING = (
    "value = round(1 + (depth - depth_min) / (depth_max - depth_min) * 65534) "
    "on the face (65535 everywhere when depth_max == depth_min); "
    "0 = no face")

_PLY_FORMAT_LINE = "format binary_little_endian 1.0"
_PLY_XYZ = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
_PLY_RGB = [("red", "u1"), ("green", "u1"), ("blue", "u1")]
# Packed (no alignment padding): 1 count byte then three int32 = 13 bytes.
_PLY_FACE = np.dtype([("count", "u1"), ("indices", "<i4", (3,))])


def _check_mesh(path, vertices, triangles, colours):
  """Returns (float32 vertices, int64 triangles, float colours or None).

  Raises ValueError naming `path` and the offending field.
  """
  path = os.fspath(path)
  vertices = np.asarray(vertices)
  if vertices.ndim != 2 or vertices.shape[1] != 3:
    raise ValueError(f"{path}: vertices must have shape [N, 3], "
                     f"got {vertices.shape}")
  if not np.issubdtype(vertices.dtype, np.number):
    raise ValueError(f"{path}: vertices must be numeric, got {vertices.dtype}")
  vertices = vertices.astype(np.float32)
  # Checked after the cast: a float64 beyond float32's range becomes inf.
  if not np.all(np.isfinite(vertices)):
    bad = int(np.sum(~np.all(np.isfinite(vertices), axis=1)))
    raise ValueError(f"{path}: vertices has {bad} non-finite vertices "
                     "(NaN or inf, or beyond float32's range)")
  num_vertices = vertices.shape[0]

  triangles = np.asarray(triangles)
  if triangles.ndim != 2 or triangles.shape[1] != 3:
    raise ValueError(f"{path}: triangles must have shape [T, 3], "
                     f"got {triangles.shape}")
  # Float indices usually mean a mix-up of arrays; refuse rather than truncate.
  if triangles.size and not np.issubdtype(triangles.dtype, np.integer):
    raise ValueError(f"{path}: triangles must be integers, got {triangles.dtype}")
  triangles = triangles.astype(np.int64)
  if triangles.size and (triangles.min() < 0 or triangles.max() >= num_vertices):
    raise ValueError(
        f"{path}: triangles has indices in [{triangles.min()}, {triangles.max()}], "
        f"outside [0, {num_vertices - 1}] for {num_vertices} vertices")

  if colours is not None:
    colours = np.asarray(colours)
    if colours.shape != (num_vertices, 3):
      raise ValueError(f"{path}: colours must have shape [{num_vertices}, 3] "
                       f"(one RGB per vertex), got {colours.shape}")
    # Integer colours are almost certainly 0..255, which clipping to [0, 1]
    # would silently turn white.
    if not np.issubdtype(colours.dtype, np.floating):
      raise ValueError(f"{path}: colours must be floats in [0, 1], "
                       f"got {colours.dtype}")
    if not np.all(np.isfinite(colours)):
      raise ValueError(f"{path}: colours has non-finite values")
    colours = np.clip(colours, 0.0, 1.0)
  return vertices, triangles, colours


def write_obj(path, vertices, triangles, colours=None) -> None:
  """Writes a Wavefront OBJ: vertices [N, 3], 0-based triangles [T, 3], and
  optional per-vertex colours [N, 3] in [0, 1] (clipped)."""
  vertices, triangles, colours = _check_mesh(path, vertices, triangles, colours)
  num_vertices, num_triangles = len(vertices), len(triangles)
  # One %-format over a repeated template is far faster than a Python loop or
  # np.savetxt (which formats row by row); %.9g round-trips float32 exactly.
  if colours is None:
    table, template = vertices, "v %.9g %.9g %.9g\n"
  else:
    table = np.concatenate([vertices.astype(np.float64), colours], axis=1)
    template = "v %.9g %.9g %.9g %.6g %.6g %.6g\n"
  text = io.StringIO()
  text.write(f"# facerecon mesh: {num_vertices} vertices, "
             f"{num_triangles} triangles\n")
  text.write((template * num_vertices) % tuple(table.ravel().tolist()))
  text.write(("f %d %d %d\n" * num_triangles)
             % tuple((triangles + 1).ravel().tolist()))
  with fileio.atomic_write(path, "w") as f:
    f.write(text.getvalue())


def write_textured_obj(path, vertices, triangles, uv, texture) -> None:
  """Writes a Wavefront OBJ with texture coordinates, its material
  (`<stem>.mtl`) and its texture image (`<stem>_texture.png`) beside it:
  vertices [N, 3], 0-based triangles [T, 3], uv [N, 2] (v up), texture
  [H, W, 3] uint8 RGB. Opens with its texture in Blender and trimesh."""
  vertices, triangles, _ = _check_mesh(path, vertices, triangles, None)
  uv = np.asarray(uv, np.float64)
  if uv.shape != (len(vertices), 2) or not np.all(np.isfinite(uv)):
    raise ValueError(f"{path}: uv must be finite with shape [{len(vertices)}, 2], "
                     f"got {uv.shape}")
  texture = np.asarray(texture)
  if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] != 3:
    raise ValueError(f"{path}: texture must be uint8 [H, W, 3], got {texture.dtype} "
                     f"{texture.shape}")
  stem = os.path.splitext(os.fspath(path))[0]
  name = os.path.basename(stem)
  text = io.StringIO()
  text.write(f"# facerecon textured mesh: {len(vertices)} vertices, "
             f"{len(triangles)} triangles\nmtllib {name}.mtl\nusemtl face\n")
  text.write(("v %.9g %.9g %.9g\n" * len(vertices)) % tuple(vertices.ravel().tolist()))
  text.write(("vt %.7g %.7g\n" * len(uv)) % tuple(uv.ravel().tolist()))
  corners = np.repeat(triangles + 1, 2, axis=1)  # v/vt pairs: the same index
  text.write(("f %d/%d %d/%d %d/%d\n" * len(triangles)) % tuple(corners.ravel().tolist()))
  fileio.write_png_atomic(stem + "_texture.png", texture)
  with fileio.atomic_write(stem + ".mtl", "w") as f:
    f.write(f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\n"
            f"map_Kd {name}_texture.png\n")
  with fileio.atomic_write(path, "w") as f:
    f.write(text.getvalue())


def write_ply(path, vertices, triangles, colours=None) -> None:
  """Writes a binary little-endian PLY: vertices [N, 3], 0-based triangles
  [T, 3], and optional per-vertex colours [N, 3] in [0, 1] (stored as uchar)."""
  vertices, triangles, colours = _check_mesh(path, vertices, triangles, colours)
  fields = _PLY_XYZ + (_PLY_RGB if colours is not None else [])
  vertex_table = np.empty(len(vertices), np.dtype(fields))
  for axis, (name, _) in enumerate(_PLY_XYZ):
    vertex_table[name] = vertices[:, axis]
  if colours is not None:
    rgb = np.round(colours * 255.0).astype(np.uint8)
    for channel, (name, _) in enumerate(_PLY_RGB):
      vertex_table[name] = rgb[:, channel]
  face_table = np.empty(len(triangles), _PLY_FACE)
  face_table["count"] = 3
  face_table["indices"] = triangles
  header = ["ply", _PLY_FORMAT_LINE, "comment written by facerecon",
            f"element vertex {len(vertices)}"]
  header += [f"property float {name}" for name, _ in _PLY_XYZ]
  if colours is not None:
    header += [f"property uchar {name}" for name, _ in _PLY_RGB]
  header += [f"element face {len(triangles)}",
             "property list uchar int vertex_indices", "end_header"]
  data = ("\n".join(header) + "\n").encode("ascii")
  fileio.write_bytes_atomic(
      path, data + vertex_table.tobytes() + face_table.tobytes())


def _check_depth(where, depth, mask):
  depth = np.asarray(depth)
  mask = np.asarray(mask)
  if depth.ndim != 2:
    raise ValueError(f"{where}: depth must be 2-D [H, W], got shape {depth.shape}")
  if mask.shape != depth.shape:
    raise ValueError(f"{where}: mask has shape {mask.shape}, expected depth's "
                     f"{depth.shape}")
  depth = depth.astype(np.float64)
  # A non-finite depth cannot be encoded: it counts as background.
  face = mask.astype(bool) & np.isfinite(depth)
  return depth, face


def encode_depth_png16(depth, mask):
  """Encodes a depth map [H, W] as a uint16 image plus the info to decode it.

  Pixels where `mask` is False or depth is not finite become 0. With no face
  pixels at all, depth_min and depth_max are None and the image is all 0.
  """
  return _encode_checked_depth(*_check_depth("encode_depth_png16", depth, mask))


def _encode_checked_depth(depth, face):
  """`encode_depth_png16` of a depth and face mask from `_check_depth`."""
  image = np.zeros(depth.shape, np.uint16)
  info = {"depth_min": None, "depth_max": None, "background": 0,
          "encoding": PNG16_ENCODING}
  if not face.any():
    return image, info
  values = depth[face]
  depth_min, depth_max = float(values.min()), float(values.max())
  if depth_max > depth_min:
    scaled = 1.0 + (values - depth_min) / (depth_max - depth_min) * PNG16_STEPS
    # Clipping only guards against rounding at the ends.
    image[face] = np.clip(np.round(scaled), 1, PNG16_MAX).astype(np.uint16)
  else:
    image[face] = PNG16_MAX
  info["depth_min"], info["depth_max"] = depth_min, depth_max
  return image, info


def decode_depth_png16(image, info):
  """Inverts `encode_depth_png16`: returns (depth float32 [H, W] with NaN off
  the face, mask bool [H, W]). Exact to (depth_max - depth_min) / 65534 / 2."""
  image = np.asarray(image)
  if image.ndim != 2:
    raise ValueError(f"depth image must be 2-D [H, W], got shape {image.shape}")
  # cv2.imread without IMREAD_UNCHANGED returns 8 bits per pixel and would
  # decode to nonsense; catch that here.
  if image.dtype != np.uint16:
    raise ValueError(f"depth image must be uint16, got {image.dtype} (read the "
                     "PNG with cv2.IMREAD_UNCHANGED)")
  mask = image != 0
  depth = np.full(image.shape, np.nan, np.float32)
  if not mask.any():
    return depth, mask
  depth_min, depth_max = info["depth_min"], info["depth_max"]
  if depth_min is None or depth_max is None:
    raise ValueError("depth image has face pixels but info has no depth range")
  steps = image[mask].astype(np.float64) - 1.0
  if depth_max > depth_min:
    depth[mask] = depth_min + steps / PNG16_STEPS * (depth_max - depth_min)
  else:
    depth[mask] = depth_min
  return depth, mask


def write_depth(stem, depth, mask) -> dict:
  """Writes `stem`_depth.png (16-bit, see `encode_depth_png16`) and
  `stem`_depth.npy (float32, NaN off the face).

  Returns the encoding info plus the two paths under "png" and "npy".
  """
  stem = os.fspath(stem)
  png_path, npy_path = stem + "_depth.png", stem + "_depth.npy"
  depth, face = _check_depth(stem + "_depth", depth, mask)
  image, info = _encode_checked_depth(depth, face)
  fileio.write_png_atomic(png_path, image)
  with fileio.atomic_write(npy_path, "wb") as f:
    np.save(f, np.where(face, depth, np.nan).astype(np.float32))
  return {**info, "png": png_path, "npy": npy_path}


def _json_default(value):
  """Turns numpy (and other array-like) values into JSON's types."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  if hasattr(value, "__array__"):  # e.g. jax arrays
    return np.asarray(value).tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path, data) -> None:
  """Writes `data` as indented JSON; numpy arrays and scalars become lists and
  numbers. Non-finite floats raise ValueError: NaN and Infinity are not JSON,
  and most readers other than Python's reject them."""
  path = os.fspath(path)
  try:
    text = json.dumps(data, indent=1, allow_nan=False, default=_json_default)
  except ValueError as e:
    raise ValueError(f"{path}: cannot write non-finite floats (NaN/inf) as "
                     f"JSON: {e}") from e
  except TypeError as e:
    raise TypeError(f"{path}: {e}") from e
  with fileio.atomic_write(path, "w") as f:
    f.write(text + "\n")
