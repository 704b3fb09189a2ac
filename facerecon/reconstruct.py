"""`--mode=reconstruct`: 3D faces from photos.

    python main.py --mode=reconstruct --workdir=runs/quickstart --input=photos/ --output=out/

For every photo (a file, or every image below a folder): detect the faces
(`facerecon.detect`), crop each as the training data was cropped
(`facerecon.data.cropping`), fit CoarseNet (and FineNet when the run trained
one) in batches (`facerecon.inference`), and write per face, next to the
photo's relative path in `--output`:

  <stem>_face<k>.obj / .ply      the dense mesh; coordinates are the photo's
                                 pixels with y up: column = x, row = H - 1 - y,
                                 z towards the viewer (f R v + t3d). The OBJ
                                 is textured when the model has UVs (.mtl and
                                 _texture.png beside it: the photo baked into
                                 the UV layout, `facerecon.texture`), else
                                 vertex-coloured; the PLY has vertex colours
  <stem>_face<k>_depth.png/.npy  the depth map of the crop (16-bit PNG, 0 off
                                 the face, scale in the JSON; float32 .npy,
                                 NaN off the face), FineNet's when it ran
  <stem>_face<k>_landmarks.txt   68 landmarks, photo pixels (column row)
  <stem>_face<k>_landmarks3d.txt the mesh's 68 landmark vertices (column, row,
                                 z towards the viewer)
  <stem>_face<k>.json            parameters in the model's layout
                                 (facerecon.params), posed in the photo and
                                 in the crop; pose in degrees (pitch, yaw,
                                 roll: facerecon.api's convention); landmarks;
                                 box; crop; depth scale
  <stem>_overlay.png             the photo with the shaded meshes and landmarks

`outputs` (`--outputs`) picks among OUTPUTS which of these are written.

Photos that cannot be read and photos with no face are reported and
skipped; `summary.json` in `--output` lists them, and main.py exits with
status 1 if there were any.
"""

import collections
import concurrent.futures
import dataclasses
import itertools
import os
from typing import NamedTuple

import cv2
import jax
import numpy as np
import tqdm

from facerecon import camera
from facerecon import detect
from facerecon import export
from facerecon import fileio
from facerecon import inference
from facerecon import morphable
from facerecon import params as params_lib
from facerecon import texture
from facerecon import visualize
from facerecon.data import cropping
from facerecon.data import photos

OVERLAY_RENDER_SIZE = 256  # the shaded mesh is rendered at this size, then warped
PREVIEW_SIDE = 1024        # overlays and vertex colours use the photo shrunk to this
LOAD_AHEAD = 4             # photos read and detected ahead of the networks
TEXTURE_SIZE = 512         # the textured OBJ's image side
OUTPUTS = ("obj", "ply", "depth", "landmarks", "json", "overlay")


@dataclasses.dataclass
class Summary:
  photos: int = 0
  faces: int = 0
  failures: list = dataclasses.field(default_factory=list)  # (photo, reason)

  def as_dict(self) -> dict:
    return {"photos": self.photos, "faces": self.faces,
            "failed": [{"photo": p, "reason": r} for p, r in self.failures]}


@dataclasses.dataclass
class _Photo:
  path: str
  stem: str                 # output path without suffix
  height: int
  width: int
  preview: np.ndarray       # the photo shrunk to at most PREVIEW_SIDE
  shrink: float             # preview pixels per photo pixel
  boxes: np.ndarray         # [F, 4] detector boxes (x, y, w, h)
  squares: list             # cropping.Square per face
  crops: np.ndarray         # [F, S, S, 3] uint8
  fitted: list = dataclasses.field(default_factory=list)  # _FittedFace per face fitted so far


class _FittedFace(NamedTuple):
  fit: object                # inference.FaceFits of this face (no batch axis)
  overlay_rgb: np.ndarray    # [R, R, 3] the shaded mesh as an R x R crop of the face's square
  overlay_mask: np.ndarray   # [R, R]


def _output_stems(paths: list[str], bases: list[str], output_dir: str) -> list[str]:
  """Each photo's output path without suffix: its path below `base` (the
  folder given, or a photo's own folder)."""
  stems = [os.path.splitext(os.path.relpath(p, b))[0] for p, b in zip(paths, bases)]
  # a.jpg and a.png in one folder: keep both, told apart by their suffixes.
  counts = collections.Counter(stems)
  repeated = {s for s in stems if counts[s] > 1}
  return [os.path.join(output_dir, s + ("_" + os.path.splitext(p)[1][1:] if s in repeated
                                        else "")) for s, p in zip(stems, paths)]


def _load(path: str, stem: str, detector, size: int, max_faces: int) -> _Photo:
  """Reads, detects and crops one photo (runs in a worker thread; OpenCV
  releases the GIL). Raises ValueError saying why a photo is skipped."""

  photo = photos.read_photo(path)
  height, width = photo.shape[:2]
  if detector is None:  # the photo is a face crop already
    boxes = np.zeros((0, 4))
    squares = [cropping.centred_square(height, width)]
  else:
    boxes, squares, _ = detector.crop_squares(photo)
    boxes, squares = boxes[:max_faces], squares[:max_faces]
    if not len(boxes):
      raise ValueError("no face found")
  crops = np.stack([cropping.crop(photo, square, size) for square in squares])
  preview, shrink = cropping.shrink_to_side(photo, PREVIEW_SIDE)
  return _Photo(path, stem, height, width, preview, shrink, boxes, squares, crops)


def posed_mesh(vertices, pose):
  """Model-space vertices [N, 3] posed in the photo: f R v + t3d (y up)."""
  return _posed_mesh(np.asarray(vertices, np.float32), np.asarray(pose, np.float32))


_posed_mesh = jax.jit(camera.transform_scaled_orthographic)


def _fit_batch(faces: list, predictor, size: int) -> list[_FittedFace]:
  """Fits and shades faces, (photo, k) pairs, at most a batch of them."""
  fits = predictor(np.stack([photo.crops[k] for photo, k in faces]))
  # The overlay render is each crop drawn at render_size: a render_size crop
  # of the face's square (`cropping.to_photo_matrix` puts it in the photo).
  render_size = OVERLAY_RENDER_SIZE
  scale, offset = cropping.crop_transform(cropping.centred_square(size, size), render_size)
  poses = camera.pose_after_image_similarity(fits.params[:, :params_lib.NUM_POSE], scale,
                                             offset, size, new_height=render_size)
  params = np.concatenate([poses, fits.params[:, params_lib.NUM_POSE:]], axis=1)
  # One render for the batch, padded to its size so it compiles once.
  padding = ((0, predictor.batch_size - len(faces)), (0, 0))
  shaded, mask = map(np.asarray, visualize.shade_fits(
      predictor.model, np.pad(params, padding, mode="edge"), render_size))
  return [_FittedFace(type(fits)(*(field[i] for field in fits)), shaded[i], mask[i])
          for i in range(len(faces))]


def _write_face(photo: _Photo, k: int, face: _FittedFace, model, size: int,
                model_name: str, has_fine: bool, outputs) -> np.ndarray:
  """Writes one face's files (those in `outputs`); returns its photo-frame
  landmarks."""
  square = photo.squares[k]
  stem = f"{photo.stem}_face{k}"
  fit = face.fit
  params = fit.params
  photo_pose = cropping.pose_to_photo(params[:params_lib.NUM_POSE], square, size,
                                      photo.height)
  photo_params = np.concatenate([photo_pose, params[params_lib.NUM_POSE:]]).astype(np.float32)
  vertices = np.asarray(posed_mesh(fit.vertices, photo_pose), np.float32)
  # Vertex colours: the photo (its preview) at each vertex's pixel.
  columns = vertices[:, 0] * photo.shrink
  rows = (photo.height - 1 - vertices[:, 1]) * photo.shrink
  colours = cv2.remap(photo.preview, columns[None].astype(np.float32),
                      rows[None].astype(np.float32), cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REPLICATE)[0] / 255.0
  triangles = np.asarray(model.triangles)
  if "obj" in outputs and model.uv is not None:
    # Baked from the preview: vertices in its pixels, y down.
    in_preview = np.stack([columns, rows, vertices[:, 2] * photo.shrink], axis=1)
    image, _ = texture.bake(photo.preview, in_preview, triangles,
                            np.asarray(morphable.vertex_uv(model)), TEXTURE_SIZE)
    export.write_textured_obj(stem + ".obj", vertices, triangles,
                              np.asarray(morphable.vertex_uv(model)), image)
  elif "obj" in outputs:
    export.write_obj(stem + ".obj", vertices, triangles, colours)
  if "ply" in outputs:
    export.write_ply(stem + ".ply", vertices, triangles, colours)
  depth_info = export.write_depth(stem, fit.depth, fit.mask) if "depth" in outputs else {}
  landmarks = cropping.to_photo(fit.landmarks, square, size)
  if "landmarks" in outputs:
    with fileio.atomic_write(stem + "_landmarks.txt", "w") as f:
      np.savetxt(f, landmarks, fmt="%.3f")
    # The mesh's landmark vertices: column, row, z towards the viewer.
    marks = vertices[np.asarray(model.landmark_indices)]
    with fileio.atomic_write(stem + "_landmarks3d.txt", "w") as f:
      np.savetxt(f, np.stack([marks[:, 0], photo.height - 1 - marks[:, 1], marks[:, 2]], 1),
                 fmt="%.3f")
  if "json" not in outputs:
    return landmarks
  layout = model.layout
  export.write_json(stem + ".json", {
      "photo": photo.path, "face": k,
      "model": model_name,
      "layout": {"pose": ["phi", "gamma", "theta", "t3d_x", "t3d_y", "t3d_z", "f"],
                 "num_shape": layout.num_shape, "num_expression": layout.num_expression},
      "params": photo_params, "params_in_crop": params,
      "pose_degrees": dict(zip(("pitch", "yaw", "roll"),
                               np.degrees(photo_pose[:3]).tolist())),
      "landmarks": landmarks,
      "box": photo.boxes[k] if len(photo.boxes) else None,
      "crop": {"centre": [square.centre_x, square.centre_y], "side": square.side,
               "size": size},
      "depth": {**{key: value for key, value in depth_info.items()
                   if key not in ("png", "npy")},
                "units": "crop pixels", "fine": has_fine},
  })
  return landmarks


def _write_photo(photo: _Photo, model, size: int, model_name: str, has_fine: bool,
                 outputs) -> None:
  """Writes the files of a photo whose faces are all fitted."""
  overlay = photo.preview
  for k, face in enumerate(photo.fitted):
    landmarks = _write_face(photo, k, face, model, size, model_name, has_fine, outputs)
    matrix = cropping.to_photo_matrix(photo.squares[k], OVERLAY_RENDER_SIZE)
    overlay = visualize.overlay_on_photo(overlay, face.overlay_rgb, face.overlay_mask,
                                         matrix * photo.shrink, landmarks * photo.shrink)
  if "overlay" in outputs:
    fileio.write_png_atomic(photo.stem + "_overlay.png", overlay)


def reconstruct(config, workdir: str, input_path: str | list[str], output_dir: str, *,
                batch_size: int = 16, detector="blazeface", max_faces: int = 8,
                progress: bool = True, outputs=OUTPUTS) -> Summary:
  """Reconstructs every face in `input_path` (a photo or a folder, or a list
  of them) with the networks trained in `workdir`, writing into
  `output_dir`. `detector`: a detector of `facerecon.detect` or its name
  (`detect.DETECTORS`; 'none' or None: each photo is a face crop already).
  `outputs`: which files (OUTPUTS; all by default). Returns the Summary
  (also written as `<output_dir>/summary.json`)."""
  unknown = set(outputs) - set(OUTPUTS)
  if unknown or not outputs:
    raise ValueError(f"--outputs: unknown or none: {sorted(unknown) or 'empty'} (choose "
                     f"from {', '.join(OUTPUTS)})")
  if isinstance(detector, str):
    detector = detect.from_name(detector)
  paths, bases = [], []
  for given in [input_path] if isinstance(input_path, str) else input_path:
    found = photos.find_photos(given)
    paths += found
    bases += [given if os.path.isdir(given) else os.path.dirname(given)] * len(found)
  stems = _output_stems(paths, bases, output_dir)
  predictor = inference.Predictor(config, workdir, batch_size)
  size = config.image_size
  summary = Summary(photos=len(paths))
  os.makedirs(output_dir, exist_ok=True)

  def fit(faces):
    # A photo's faces may span two batches: it is written once all are fitted.
    for (photo, _), face in zip(faces, _fit_batch(faces, predictor, size)):
      photo.fitted.append(face)
      if len(photo.fitted) == len(photo.squares):
        _write_photo(photo, predictor.model, size, config.model, predictor.has_fine,
                     outputs)
        summary.faces += len(photo.squares)

  waiting, loads = [], collections.deque()  # waiting: (photo, k) of faces to fit, in order
  jobs = iter(zip(paths, stems))
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    # A few photos read and detected ahead of the networks, no more (photos can be huge).
    for path, stem in itertools.islice(jobs, LOAD_AHEAD):
      loads.append((path, pool.submit(_load, path, stem, detector, size, max_faces)))
    for _ in tqdm.trange(len(paths), desc="photos", unit="photo", disable=not progress):
      path, load = loads.popleft()
      for next_path, next_stem in itertools.islice(jobs, 1):
        loads.append((next_path, pool.submit(_load, next_path, next_stem, detector, size,
                                             max_faces)))
      try:
        photo = load.result()
      except (ValueError, OSError) as e:
        summary.failures.append((path, str(e).removeprefix(f"{path}: ")))
        continue
      waiting += [(photo, k) for k in range(len(photo.squares))]
      while len(waiting) >= predictor.batch_size:  # whole batches only: no padding
        fit(waiting[:predictor.batch_size])
        del waiting[:predictor.batch_size]
    if waiting:
      fit(waiting)
  export.write_json(os.path.join(output_dir, "summary.json"), summary.as_dict())
  return summary
