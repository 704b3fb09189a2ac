"""The Python API: faces from an image array.

    import facerecon
    reconstructor = facerecon.Reconstructor()        # the shipped model
    faces = reconstructor(rgb)                        # uint8 [H, W, 3] (or grey [H, W])
    faces[0].landmarks, faces[0].pose_degrees, faces[0].vertices

`Reconstructor(workdir=RUN)` uses a run you trained;
`Reconstructor(options=facerecon.FitOptions(window_shift=0.0))` changes how
its networks are applied (`inference.FitOptions`). Detection, cropping
and the networks are those of `--mode=reconstruct` (`facerecon.detect`,
`facerecon.data.cropping`, `facerecon.inference`); the faces of one call go
through the networks in batches of `batch_size`.

Coordinates are the photo's pixels: x = column, y = row (down), and for 3-D
points z towards the viewer in the same pixel units. The pose is the
model's (`facerecon.camera`): pitch (phi), yaw (gamma) and roll (theta) of
R = Rx(pitch) Ry(yaw) Rz(roll), in degrees, as AFLW2000-3D's Pose_Para
gives them; yaw is positive when the face turns towards the photo's left
(its own right).
"""

import dataclasses

import numpy as np

from facerecon import detect as detect_lib
from facerecon import inference
from facerecon import outputs
from facerecon import params as params_lib
from facerecon import rundir
from facerecon.data import cropping

# How the networks are applied, for `Reconstructor(options=...)`; also `facerecon.FitOptions`.
FitOptions = inference.FitOptions


@dataclasses.dataclass(frozen=True)
class Face:
  """One reconstructed face, in the photo's pixels (see the module's docstring)."""
  box: np.ndarray           # [4] the detector's x, y, w, h (the crop's square without one)
  score: float | None       # the detector's confidence (None without a detector)
  landmarks: np.ndarray     # [68, 2] x, y
  landmarks_3d: np.ndarray  # [68, 3] x, y, z
  pose_degrees: np.ndarray  # [3] pitch, yaw, roll
  vertices: np.ndarray      # [N, 3] x, y, z: the dense mesh (FineNet's detail on it if any)
  triangles: np.ndarray     # [T, 3] the model's (facing the viewer: clockwise in these
  #                           y-down coordinates, counter-clockwise with y up as in OBJ files)
  depth: np.ndarray         # [S, S] the crop's depth map (crop pixels towards the viewer; NaN off
  #                           the face), S FineNet's photo size (CoarseNet's without one)
  crop: cropping.Square     # the crop the networks saw
  params: np.ndarray        # [P] the model's parameters, posed in the photo (camera layout)


class Reconstructor:
  """Faces from image arrays with a trained run (default: the shipped one)."""

  def __init__(self, workdir: str | None = None, detector="blazeface", batch_size: int = 16,
               max_faces: int = 8, options: inference.FitOptions | None = None):
    """`detector`: a detector of `facerecon.detect`, its name, or None (each
    image is a face crop already). `options`: how the networks are applied
    (`FitOptions`: mirror images, shifted windows, the run's pose
    calibration, sharpening; None: the defaults)."""
    run = rundir.RunDir(workdir) if workdir else rundir.default_run()
    if run is None:
      raise FileNotFoundError(f"no trained run: pass workdir= (no ${rundir.RUN_VARIABLE}, "
                              f"and none shipped in {rundir.SHIPPED_RUN})")
    if not (run.has_best() or run.fine.has_best()):
      raise FileNotFoundError(f"{run.path} has no trained networks")
    self.config = rundir.resolve_config(run)
    self.predictor = inference.Predictor(self.config, run.path, batch_size, options=options)
    self.model = self.predictor.model
    self.detector = detect_lib.from_name(detector) if isinstance(detector, str) else detector
    self.max_faces = max_faces

  def __call__(self, image: np.ndarray) -> list[Face]:
    """The faces in an RGB uint8 image [H, W, 3] (or grey [H, W]), best first."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
        image.ndim == 3 and image.shape[2] != 3):
      raise ValueError(f"image must be uint8 [H, W, 3] or [H, W], got {image.dtype} "
                       f"{image.shape}")
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=2)
    height, width = image.shape[:2]
    if self.detector is None:
      boxes, scores = np.zeros((1, 4)), [None]
      squares = [cropping.centred_square(height, width)]
    else:
      boxes, squares, scores = self.detector.crop_squares(image)
      boxes, squares = boxes[:self.max_faces], squares[:self.max_faces]
      scores = [None if np.isnan(s) else s for s in scores[:self.max_faces]]
    if not len(squares):
      return []
    size = self.predictor.size
    fits = self.predictor(np.stack([cropping.crop(image, square, size) for square in squares]))
    triangles = np.asarray(self.model.triangles)
    landmark_indices = np.asarray(self.model.landmark_indices)
    faces = []
    for k, square in enumerate(squares):
      fit = type(fits)(*(field[k] for field in fits))
      pose, posed = outputs.posed_in_photo(fit, square, size, height,
                                           detailed=self.predictor.has_fine)
      posed = posed.astype(np.float64)
      vertices = np.stack([posed[:, 0], height - 1 - posed[:, 1], posed[:, 2]], axis=1)
      depth = np.where(fits.mask[k], fits.depth[k], np.nan).astype(np.float32)
      box = (boxes[k] if self.detector is not None else
             np.array([square.centre_x - square.side / 2, square.centre_y - square.side / 2,
                       square.side, square.side]))
      faces.append(Face(
          box=np.asarray(box, np.float64), score=None if scores[k] is None else float(scores[k]),
          landmarks=cropping.to_photo(fits.landmarks[k], square, size),
          landmarks_3d=vertices[landmark_indices], pose_degrees=np.degrees(pose[:3]),
          vertices=vertices.astype(np.float32), triangles=triangles,
          depth=depth, crop=square,
          params=np.concatenate([pose, fits.params[k, params_lib.NUM_POSE:]])))
    return faces
