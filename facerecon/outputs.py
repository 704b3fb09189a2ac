"""The files written for fitted faces: meshes, depth, landmarks, JSON and
the per-photo images (overlay, PNCC, normals), for `facerecon.reconstruct`'s
photos and `facerecon.video`'s frames alike.

Per face, `<stem>_face<k>`:
  .obj / .ply           the dense mesh; coordinates are the photo's pixels
                        with y up: column = x, row = H - 1 - y, z towards the
                        viewer (f R v + t3d). Where the run has a FineNet,
                        the visible vertices carry its detail
                        (`detail_offsets`). The OBJ is textured when the
                        model has UVs (.mtl and _texture.png beside it: the
                        photo baked into the UV layout, `facerecon.texture`),
                        else vertex-coloured; the PLY has vertex colours.
                        With a FineNet, the textured OBJ's detail in its UV
                        layout beside it (`facerecon.texture.bake_detail`):
  _displacement.png/.npy  the depth offset the detail adds, towards the
                        viewer (float32 .npy in photo pixels; 16-bit PNG,
                        DISPLACEMENT_ZERO = none, DISPLACEMENT_LEVELS levels
                        per side of the face's square, as in the JSON)
  _normal_map.png       the detailed surface's normals, RGB = (n + 1) / 2,
                        object space: the OBJ's x, y, z
  _depth.png / .npy     the depth map of the crop (16-bit PNG, 0 off the
                        face, scale in the JSON; float32 .npy, NaN off the
                        face), FineNet's when it ran
  _landmarks.txt        68 landmarks, photo pixels (column row)
  _landmarks3d.txt      the mesh's 68 landmark vertices (column, row, z
                        towards the viewer)
  .json                 parameters in the model's layout (facerecon.params),
                        posed in the photo and in the crop; pose in degrees
                        (pitch, yaw, roll: facerecon.api's convention);
                        landmarks; box; crop; depth scale
Per photo, every face drawn in (the photo shrunk to at most PREVIEW_SIDE):
  _overlay.png          the photo with the shaded meshes and landmarks
  _pncc.png             the faces' PNCC code (3DDFA's projected normalised
                        coordinate code) on black
  _normals.png          the faces' normals, RGB = (n + 1) / 2 with x right,
                        y up, z towards the viewer, on black
"""

import dataclasses
from typing import NamedTuple

import cv2
import jax
import numpy as np

from facerecon import camera
from facerecon import export
from facerecon import fileio
from facerecon import morphable
from facerecon import params as params_lib
from facerecon import shading
from facerecon import texture
from facerecon import visualize
from facerecon.data import cropping

OVERLAY_RENDER_SIZE = 256  # faces are rendered at this size, then warped into the photo
PREVIEW_SIDE = 1024        # the per-photo images and vertex colours use the photo shrunk to this
TEXTURE_SIZE = 512         # the textured OBJ's image side
# The 16-bit displacement map: level DISPLACEMENT_ZERO is no offset, and one
# face square's side (photo pixels) is DISPLACEMENT_LEVELS levels, so +-6 %
# of it fits (FineNet's detail is under 1 %).
DISPLACEMENT_ZERO = 32768
DISPLACEMENT_LEVELS = 2 ** 19
OUTPUTS = ("obj", "ply", "depth", "landmarks", "json", "overlay", "pncc", "normals")
PHOTO_IMAGES = ("overlay", "pncc", "normals")  # one image per photo, not per face
# The files FineNet's detail changes (the photo images are renders of the
# parameters): without one of them a run's FineNet need not run.
DETAIL_OUTPUTS = ("obj", "ply", "depth")


def check_outputs(outputs) -> tuple[str, ...]:
  """`outputs` as a tuple; ValueError naming --outputs when one is unknown or none given."""
  outputs = tuple(outputs)
  unknown = set(outputs) - set(OUTPUTS)
  if unknown or not outputs:
    raise ValueError(f"--outputs: unknown or none: {sorted(unknown) or 'empty'} (choose "
                     f"from {', '.join(OUTPUTS)})")
  return outputs


def needs_detail(outputs) -> bool:
  """Whether any of `outputs` carries FineNet's detail."""
  return bool(set(outputs) & set(DETAIL_OUTPUTS))


@dataclasses.dataclass
class Photo:
  """A photo (or a video frame) and its faces' crops, on the way to its files."""
  path: str
  stem: str                 # output path without suffix
  height: int
  width: int
  preview: np.ndarray       # the photo shrunk to at most PREVIEW_SIDE
  shrink: float             # preview pixels per photo pixel
  boxes: np.ndarray         # [F, 4] detector boxes (x, y, w, h); [0, 4] without a detector
  squares: list             # cropping.Square per face
  crops: np.ndarray         # [F, S, S, 3] uint8
  fitted: list = dataclasses.field(default_factory=list)  # FittedFace per face fitted so far
  face_names: list | None = None  # the faces' numbers in file names (default 0, 1, ...)


def photo_from_image(image: np.ndarray, path: str, stem: str, boxes, squares,
                     size: int) -> Photo:
  """A Photo of an RGB image and its faces' crop squares."""
  height, width = image.shape[:2]
  crops = (np.stack([cropping.crop(image, square, size) for square in squares])
           if len(squares) else np.zeros((0, size, size, 3), np.uint8))
  preview, shrink = cropping.shrink_to_side(image, PREVIEW_SIDE)
  return Photo(path, stem, height, width, preview, shrink, np.asarray(boxes).reshape(-1, 4),
               list(squares), crops)


class FittedFace(NamedTuple):
  fit: object                # inference.FaceFits of this face (no batch axis)
  shaded: np.ndarray         # [R, R, 3] the shaded mesh as an R x R crop of the face's square
  pncc: np.ndarray           # [R, R, 3] its PNCC code
  normals: np.ndarray        # [R, R, 3] its normals as RGB
  mask: np.ndarray           # [R, R]


def posed_mesh(vertices, pose):
  """Model-space vertices [N, 3] posed in the photo: f R v + t3d (y up)."""
  return _posed_mesh(np.asarray(vertices, np.float32), np.asarray(pose, np.float32))


_posed_mesh = jax.jit(camera.transform_scaled_orthographic)


def posed_in_photo(fit, square: cropping.Square, size: int, photo_height: int,
                   detailed: bool):
  """(the pose [7] in the photo, the mesh [N, 3] posed there: photo pixels,
  y up) of a fit (one face's inference.FaceFits) in a `size` crop of
  `square`; `detailed`: with FineNet's detail (`detail_offsets`, crop
  pixels scaled to the photo's)."""
  pose = cropping.pose_to_photo(fit.params[:params_lib.NUM_POSE], square, size, photo_height)
  vertices = np.array(posed_mesh(fit.vertices, pose), np.float32)
  if detailed:
    vertices[:, 2] += detail_offsets(fit, size) * (square.side / size)
  return pose, vertices


# A vertex takes FineNet's detail where it is the surface the depth map sees:
# its depth within this many crop pixels of the coarse depth at its pixel.
VISIBLE_DEPTH_TOLERANCE = 1.5


def detail_offsets(fit, size: int) -> np.ndarray:
  """Each vertex's depth offset [N] (crop pixels, towards the viewer) that
  carries FineNet's detail onto the dense mesh: fine minus coarse depth at
  the vertex's crop pixel (bilinear), for vertices on the visible surface
  (`VISIBLE_DEPTH_TOLERANCE`; 0 elsewhere, e.g. the back of the head)."""
  posed = np.asarray(posed_mesh(fit.vertices, fit.params[:params_lib.NUM_POSE]))
  columns, rows = posed[:, 0], (size - 1) - posed[:, 1]
  detail = np.where(fit.mask, fit.depth - fit.coarse_depth, 0.0).astype(np.float32)
  coarse = fit.coarse_depth.astype(np.float32)

  def sample(image, interpolation):
    return cv2.remap(image, columns[None].astype(np.float32), rows[None].astype(np.float32),
                     interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)[0]

  near = np.rint(columns).astype(int), np.rint(rows).astype(int)
  inside = (near[0] >= 0) & (near[0] < size) & (near[1] >= 0) & (near[1] < size)
  covered = np.zeros(len(posed), bool)
  covered[inside] = fit.mask[near[1][inside], near[0][inside]]
  visible = covered & (np.abs(posed[:, 2] - sample(coarse, cv2.INTER_NEAREST))
                       <= VISIBLE_DEPTH_TOLERANCE)
  return np.where(visible, sample(detail, cv2.INTER_LINEAR), 0.0).astype(np.float32)


def render_fits(fits, model, batch_size: int, size: int) -> list[FittedFace]:
  """FittedFaces of a batch of fits (inference.FaceFits of at most
  `batch_size` crops of side `size`)."""
  count = len(fits.params)
  # The render is each crop drawn at render_size: a render_size crop of the
  # face's square (`cropping.to_photo_matrix` puts it in the photo).
  render_size = OVERLAY_RENDER_SIZE
  scale, offset = cropping.crop_transform(cropping.centred_square(size, size), render_size)
  poses = camera.pose_after_image_similarity(fits.params[:, :params_lib.NUM_POSE], scale,
                                             offset, size, new_height=render_size)
  params = np.concatenate([poses, fits.params[:, params_lib.NUM_POSE:]], axis=1)
  # One render for the batch, padded to its size so it compiles once.
  padding = ((0, batch_size - count), (0, 0))
  shaded, pncc, normals, mask = map(np.asarray, visualize.fit_images(
      model, np.pad(params, padding, mode="edge"), render_size))
  return [FittedFace(type(fits)(*(field[i] for field in fits)), shaded[i], pncc[i],
                     normals[i], mask[i]) for i in range(count)]


def write_face(photo: Photo, k: int, face: FittedFace, model, size: int,
               model_name: str, has_fine: bool, outputs) -> np.ndarray:
  """Writes one face's files (those in `outputs`); returns its photo-frame
  landmarks."""
  square = photo.squares[k]
  stem = f"{photo.stem}_face{k if photo.face_names is None else photo.face_names[k]}"
  fit = face.fit
  params = fit.params
  photo_pose, vertices = posed_in_photo(fit, square, size, photo.height, detailed=has_fine)
  photo_params = np.concatenate([photo_pose, params[params_lib.NUM_POSE:]]).astype(np.float32)
  landmarks = cropping.to_photo(fit.landmarks, square, size)
  # Vertex colours: the photo (its preview) at each vertex's pixel.
  columns = vertices[:, 0] * photo.shrink
  rows = (photo.height - 1 - vertices[:, 1]) * photo.shrink
  colours = cv2.remap(photo.preview, columns[None].astype(np.float32),
                      rows[None].astype(np.float32), cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REPLICATE)[0] / 255.0
  triangles = np.asarray(model.triangles)
  detail_maps = {}
  if "obj" in outputs and model.uv is not None:
    uv = np.asarray(morphable.vertex_uv(model))
    # Baked from the preview: vertices in its pixels, y down.
    in_preview = np.stack([columns, rows, vertices[:, 2] * photo.shrink], axis=1)
    image, _ = texture.bake(photo.preview, in_preview, triangles, uv, TEXTURE_SIZE)
    export.write_textured_obj(stem + ".obj", vertices, triangles, uv, image)
    if has_fine:
      detail_maps = write_detail_maps(stem, fit, size, square.side, triangles, uv)
  elif "obj" in outputs:
    export.write_obj(stem + ".obj", vertices, triangles, colours)
  if "ply" in outputs:
    export.write_ply(stem + ".ply", vertices, triangles, colours)
  depth_info = export.write_depth(stem, fit.depth, fit.mask) if "depth" in outputs else {}
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
      "photo": photo.path, "face": k if photo.face_names is None else photo.face_names[k],
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
      **({"detail_maps": detail_maps} if detail_maps else {}),
      "depth": {**{key: value for key, value in depth_info.items()
                   if key not in ("png", "npy")},
                "units": "crop pixels", "fine": has_fine},
  })
  return landmarks


def write_detail_maps(stem: str, fit, size: int, side: float, triangles, uv) -> dict:
  """Writes a face's FineNet detail in the UV layout (`<stem>_displacement`
  .png/.npy, `<stem>_normal_map.png`); returns the JSON's description. The
  detail is taken in the crop (fine minus coarse depth, the fine depth map's
  normals) and scaled to the photo's pixels."""
  pose = fit.params[:params_lib.NUM_POSE]
  posed = np.asarray(posed_mesh(fit.vertices, pose), np.float64)
  in_crop = np.stack([posed[:, 0], (size - 1) - posed[:, 1], posed[:, 2]], axis=1)
  offset = np.where(fit.mask, fit.depth - fit.coarse_depth, 0.0)
  normals, _ = shading.depth_normals(np.asarray(fit.depth, np.float32), np.asarray(fit.mask))
  displacement, normal_map = texture.bake_detail(
      offset, np.asarray(normals), fit.coarse_depth, fit.mask, in_crop, triangles, uv,
      TEXTURE_SIZE, VISIBLE_DEPTH_TOLERANCE)
  displacement *= side / size  # crop pixels to the photo's
  per_level = side / DISPLACEMENT_LEVELS
  levels = np.clip(np.round(DISPLACEMENT_ZERO + displacement / per_level), 0, 65535)
  with fileio.atomic_write(stem + "_displacement.npy", "wb") as f:
    np.save(f, displacement)
  fileio.write_png_atomic(stem + "_displacement.png", levels.astype(np.uint16))
  fileio.write_png_atomic(stem + "_normal_map.png", np.clip(
      np.round((normal_map + 1.0) * 127.5), 0, 255).astype(np.uint8))
  return {"displacement_zero_level": DISPLACEMENT_ZERO,
          "displacement_photo_pixels_per_level": per_level,
          "displacement_units": "photo pixels towards the viewer",
          "normal_map_space": "object: the OBJ's x, y, z"}


def photo_images(preview: np.ndarray, names) -> dict:
  """The per-photo images of `names` (of PHOTO_IMAGES) before any face is
  drawn in: the photo for the overlay, black for the others."""
  return {name: preview if name == "overlay" else np.zeros_like(preview)
          for name in PHOTO_IMAGES if name in names}


def write_photo(photo: Photo, model, size: int, model_name: str, has_fine: bool,
                outputs) -> dict:
  """Writes the per-face files of a photo whose faces are all fitted;
  returns the images of PHOTO_IMAGES in `outputs` (name -> RGB uint8 of the
  preview's size) with the faces drawn in, for the caller to write."""
  images = photo_images(photo.preview, outputs)
  for k, face in enumerate(photo.fitted):
    landmarks = write_face(photo, k, face, model, size, model_name, has_fine, outputs)
    matrix = cropping.to_photo_matrix(photo.squares[k], OVERLAY_RENDER_SIZE) * photo.shrink
    for name in images:
      if name == "overlay":
        images[name] = visualize.overlay_on_photo(images[name], face.shaded, face.mask,
                                                  matrix, landmarks * photo.shrink)
      else:
        images[name] = visualize.overlay_on_photo(images[name], getattr(face, name),
                                                  face.mask, matrix, opacity=1.0)
  return images
