r"""The README's pictures of real photos reconstructed.

    python docs/pictures.py --output=docs/textured_meshes.jpg PHOTO...
    python docs/pictures.py --kind=overlays --output=docs/real_dev_reconstructions.jpg PHOTO...
    python docs/pictures.py --kind=detail --workdir=RUN --output=docs/real_dev_detail.jpg PHOTO...

`textured`: photos, and the textured OBJ `facerecon reconstruct` writes for
each (the same mesh and baked texture, through `facerecon.Reconstructor`
and `facerecon.texture`), seen from the photo's camera and turned 35
degrees either way. `overlays`: photos beside the `<stem>_overlay.png`
`facerecon reconstruct` writes (mesh and landmarks over the photo), two
photos a row. `detail` (a run with a FineNet): per photo, the crop the
networks saw, CoarseNet's and FineNet's depth maps shaded (grey
Lambertian renders of their normals), and the detailed dense mesh the
outputs carry, shaded, turned 35 degrees.

Each photo's best face; the shipped model (or --workdir).
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import cv2
import numpy as np

import facerecon
from facerecon import morphable
from facerecon import reconstruct
from facerecon import render
from facerecon import rundir
from facerecon import texture
from facerecon import visualize
from facerecon.data import cropping
from facerecon.data import photos

_OUTPUT = flags.DEFINE_string("output", None, "The picture (.jpg or .png).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run (default: the shipped one).")
_TILE = flags.DEFINE_integer("tile", 220, "Pixels per tile side.")
_KIND = flags.DEFINE_enum("kind", "textured", ["textured", "overlays", "detail"],
                          "Which picture.")
TURN_DEGREES = 35.0
BACKGROUND = 245


def turned(vertices, square, tile: int, yaw_degrees: float) -> np.ndarray:
  """The mesh (photo pixels, y down, z towards the viewer) in the pixels of
  a `tile` x `tile` view of the crop `square`, turned by `yaw_degrees`
  about its centre."""
  scale, offset = cropping.crop_transform(square, tile)
  points = np.asarray(vertices, np.float64) * scale
  points[:, :2] += offset
  centre = points.mean(axis=0)
  angle = np.radians(yaw_degrees)
  turn = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0],
                   [-np.sin(angle), 0, np.cos(angle)]])
  return (points - centre) @ turn.T + centre


def textured_view(vertices, triangles, uv, image, square, tile: int, yaw_degrees: float):
  """The textured mesh (photo pixels, y down, z towards the viewer) turned
  by `yaw_degrees` about its centre, drawn into a `tile` x `tile` view of
  the crop `square`."""
  points = turned(vertices, square, tile, yaw_degrees)
  raster = render.rasterize(points[None].astype(np.float32), triangles, tile, tile)
  texel = np.asarray(render.interpolate(np.asarray(uv, np.float32), raster,
                                        points[None].astype(np.float32), triangles))[0]
  mask = np.asarray(raster.mask[0])
  size = image.shape[0]
  colour = cv2.remap(image, (texel[..., 0] * size - 0.5).astype(np.float32),
                     ((1.0 - texel[..., 1]) * size - 0.5).astype(np.float32), cv2.INTER_LINEAR)
  return np.where(mask[..., None], colour, BACKGROUND).astype(np.uint8)


def face_square(face) -> cropping.Square:
  """The view of a face in the pictures: its landmark crop, a little closer."""
  square = cropping.square_from_landmarks(face.landmarks)
  return square._replace(side=square.side * 0.8)


def textured_row(reconstructor, photo, face, tile: int) -> np.ndarray:
  model = reconstructor.model
  triangles = np.asarray(model.triangles)
  uv = np.asarray(morphable.vertex_uv(model))
  image, _ = texture.bake(photo, face.vertices, triangles, uv)
  square = face_square(face)
  row = [cropping.crop(photo, square, tile)]
  row += [textured_view(face.vertices, triangles, uv, image, square, tile, yaw)
          for yaw in (0.0, -TURN_DEGREES, TURN_DEGREES)]
  return np.concatenate(row, axis=1)


def shaded_view(vertices, triangles, square, tile: int, yaw_degrees: float):
  """The mesh (photo pixels, y down, z towards the viewer) grey-shaded from
  its vertex normals, turned as in `textured_view`."""
  points = turned(vertices, square, tile, yaw_degrees).astype(np.float32)
  # y up for the normals (the rows run down), back to image axes after.
  normals = np.asarray(morphable.vertex_normals(points * [1, -1, 1], triangles))
  raster = render.rasterize(points[None], triangles, tile, tile)
  normal = np.array(render.interpolate(normals, raster, points[None], triangles))[0]
  normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-6)
  light = np.array([0.3, 0.3, 1.0]) / np.linalg.norm([0.3, 0.3, 1.0])
  grey = 255 * (0.25 + 0.7 * np.clip(normal @ light, 0.0, 1.0))
  mask = np.asarray(raster.mask[0])
  return np.repeat(np.where(mask, grey, BACKGROUND)[..., None], 3, -1).astype(np.uint8)


def detail_row(reconstructor, photo, face, tile: int) -> np.ndarray:
  predictor = reconstructor.predictor
  crop = cropping.crop(photo, face.crop, predictor.size)
  fits = predictor(crop[None])
  panel = visualize.fine_panel(crop[None], fits.coarse_depth, fits.depth, fits.mask, tile=tile)
  # The panel's photo, coarse shaded and fine shaded tiles (not the grey depth maps).
  columns = [panel[:, k * tile:(k + 1) * tile] for k in (0, 3, 4)]
  triangles = np.asarray(reconstructor.model.triangles)
  columns.append(shaded_view(face.vertices, triangles, face.crop, tile, TURN_DEGREES))
  return np.concatenate(columns, axis=1)


def overlay_pair(path: str, photo, face, tile: int, run: rundir.RunDir) -> np.ndarray:
  """The photo and the overlay `facerecon reconstruct` writes for it, side by side."""
  with tempfile.TemporaryDirectory() as folder:
    reconstruct.reconstruct(rundir.resolve_config(run), run.path, path, folder,
                            outputs=("overlay",), progress=False)
    stem = os.path.splitext(os.path.basename(path))[0]
    overlay = photos.read_photo(os.path.join(folder, f"{stem}_overlay.png"))
  square = face_square(face)
  return np.concatenate([cropping.crop(photo, square, tile), cropping.crop(overlay, square, tile)],
                        axis=1)


def main(argv):
  paths = argv[1:]
  if not paths or not _OUTPUT.value:
    raise app.UsageError("give --output and one or more photos")
  run = rundir.RunDir(_WORKDIR.value) if _WORKDIR.value else rundir.default_run()
  reconstructor = facerecon.Reconstructor(workdir=run.path)
  tile = _TILE.value
  rows = []
  for path in paths:
    photo = photos.read_photo(path)
    faces = reconstructor(photo)
    if not faces:
      print(f"{path}: no face found: left out")
      continue
    if _KIND.value == "textured":
      rows.append(textured_row(reconstructor, photo, faces[0], tile))
    elif _KIND.value == "detail":
      rows.append(detail_row(reconstructor, photo, faces[0], tile))
    else:
      rows.append(overlay_pair(path, photo, faces[0], tile, run))
  drawn = len(rows)
  if _KIND.value == "overlays":  # two photos a row
    rows += [np.full_like(rows[0], 255)] * (len(rows) % 2)
    rows = [np.concatenate(rows[k:k + 2], axis=1) for k in range(0, len(rows), 2)]
  picture = np.concatenate(rows, axis=0)
  cv2.imwrite(_OUTPUT.value, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
              [cv2.IMWRITE_JPEG_QUALITY, 88])
  print(f"wrote {_OUTPUT.value}: {drawn} of {len(paths)} photos")


if __name__ == "__main__":
  app.run(main)
