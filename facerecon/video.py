"""Faces through a video (`--mode=reconstruct --input=clip.mp4`: the formats
of `facerecon.data.photos.VIDEO_SUFFIXES` that OpenCV reads): every frame
reconstructed, faces tracked between frames.

Tracking: the detector runs on the first frame, every `redetect_every`
frames after it (to find faces that came in) and on every frame where no
face is tracked. In between, a face's crop is the landmark crop
(`cropping.square_from_landmarks`, the framing the networks were trained
on) of its landmarks in the frame before, as 3DDFA_V2's video demo does. A
track ends when its face leaves the frame or shrinks below MIN_FACE, or
when the detector, run again, fails to see it MAX_MISSES times in a row.

Smoothing (`smoothing=True`): each face's parameters in the photo (pose,
identity, expression) go through a One Euro filter (Casiez et al., CHI
2012): a low-pass filter whose cutoff rises with the speed of change, so a
still head is steadied and a moving one lags little. The landmarks, meshes
and renders written are the smoothed parameters'; tracking uses the raw
ones. `benchmarks/video.py` measures the jitter with and without it.

Written, with <stem> the video's output path without suffix (as a photo's):
  <stem>_overlay.mp4 (and _pncc.mp4, _normals.mp4 when asked): the frames
      with the faces drawn in (`facerecon.outputs`), at the video's rate;
  <stem>_frames/<frame>_face<track>.*: each frame's per-face files
      (`facerecon.outputs`; the face number is its track's, the same person
      keeps it while tracked), frames numbered from 0 with six digits.
"""

import dataclasses
import functools
import os
import tempfile

import cv2
import jax
import numpy as np

from facerecon import detect
from facerecon import face_render
from facerecon import fileio
from facerecon import morphable
from facerecon import outputs as outputs_lib
from facerecon import params as params_lib
from facerecon.data import cropping

DEFAULT_OUTPUTS = ("landmarks", "json", "overlay")  # per-frame meshes only when asked
REDETECT_EVERY = 30      # frames between detector runs while faces are tracked
MAX_MISSES = 2           # detector runs in a row that miss a track end it
MATCH_IOU = 0.3          # a detection continues a track whose crop it overlaps this much
MIN_FACE = 12.0          # pixels: a track whose landmark box is smaller ends
FALLBACK_FPS = 30.0      # when the file does not say
# One Euro filter settings, in the normalised units of `_parameter_units`
# (radians; face sizes; relative scale; the model's coefficients), per second.
MIN_CUTOFF = 1.0         # Hz: the cutoff of a still face
SPEED_COEFFICIENT = 5.0  # Hz per unit/s: how fast the cutoff rises with speed
DERIVATIVE_CUTOFF = 1.0  # Hz: the low-pass on the speed estimate


class OneEuroFilter:
  """The One Euro filter on vectors (Casiez, Roussel and Vogel, CHI 2012):
  exponential smoothing whose cutoff frequency is `min_cutoff` plus `beta`
  times the (low-passed) speed, per component."""

  def __init__(self, min_cutoff: float | None = None, beta: float | None = None,
               derivative_cutoff: float | None = None):
    """Unset settings are the module's (MIN_CUTOFF, SPEED_COEFFICIENT,
    DERIVATIVE_CUTOFF) as they are when the filter is made."""
    self.min_cutoff = MIN_CUTOFF if min_cutoff is None else min_cutoff
    self.beta = SPEED_COEFFICIENT if beta is None else beta
    self.derivative_cutoff = DERIVATIVE_CUTOFF if derivative_cutoff is None else derivative_cutoff
    self.value = None
    self.speed = None

  @staticmethod
  def _weight(cutoff, dt: float):
    """The new sample's weight: 1 / (1 + tau / dt), tau = 1 / (2 pi cutoff)."""
    return 1.0 / (1.0 + 1.0 / (2.0 * np.pi * cutoff * dt))

  def __call__(self, value: np.ndarray, dt: float) -> np.ndarray:
    value = np.asarray(value, np.float64)
    if self.value is None:
      self.value, self.speed = value, np.zeros_like(value)
      return value
    a = self._weight(self.derivative_cutoff, dt)
    self.speed = a * (value - self.value) / dt + (1.0 - a) * self.speed
    a = self._weight(self.min_cutoff + self.beta * np.abs(self.speed), dt)
    self.value = a * value + (1.0 - a) * self.value
    return self.value


@dataclasses.dataclass
class _Track:
  number: int               # the face's number in file names
  square: cropping.Square   # where to crop it in the next frame
  units: np.ndarray         # [P] the parameters' normalising units (`_parameter_units`)
  smoother: OneEuroFilter | None
  misses: int = 0


@dataclasses.dataclass
class VideoSummary:
  video: str
  frames: int = 0
  fps: float = 0.0
  detector_runs: int = 0    # frames the detector ran on
  faces: int = 0            # faces fitted, summed over the frames
  tracks: int = 0           # faces that came into view (tracks started)
  frames_without_face: int = 0

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _parameter_units(photo_params: np.ndarray, face_size: float) -> np.ndarray:
  """Units that make a parameter vector's components comparable for one
  filter setting: angles in radians, translation in face sizes (pixels),
  the scale relative to its first value, coefficients as they are."""
  units = np.ones(len(photo_params))
  units[params_lib.TRANSLATION] = face_size
  units[params_lib.SCALE] = abs(photo_params[params_lib.SCALE])
  return units


def _corners(square: cropping.Square) -> np.ndarray:
  half = square.side / 2
  return np.array([square.centre_x - half, square.centre_y - half,
                   square.centre_x + half, square.centre_y + half])


@functools.partial(jax.jit, static_argnames=("size",))
def _crop_fit(model, crop_params, size: int):
  """Landmarks [68, 2] in the crop and model-space vertices [N, 3] of a
  crop-frame parameter vector."""
  return (face_render.project_landmarks(model, crop_params, size),
          morphable.vertices_from_params(model, crop_params))


def _refit(fit, model, photo_params: np.ndarray, square: cropping.Square, size: int,
           photo_height: int):
  """The fit (inference.FaceFits of one face) with its parameters replaced
  by photo-frame ones, brought back into its crop; depth and mask kept."""
  pose = cropping.pose_to_crop(photo_params[:params_lib.NUM_POSE], square, size, photo_height)
  crop_params = np.concatenate([pose, photo_params[params_lib.NUM_POSE:]]).astype(np.float32)
  landmarks, vertices = map(np.asarray, _crop_fit(model, crop_params, size))
  return fit._replace(params=crop_params, landmarks=landmarks, vertices=vertices)


def _frames(path: str):
  """(fps, iterator of RGB frames) of a local video file; ValueError if
  OpenCV cannot open it."""
  capture = cv2.VideoCapture(path)
  if not capture.isOpened():
    raise ValueError(f"{path}: cannot open the video")
  fps = capture.get(cv2.CAP_PROP_FPS)
  fps = float(fps) if np.isfinite(fps) and 1.0 <= fps <= 1000.0 else FALLBACK_FPS

  def frames():
    try:
      while True:
        ok, frame = capture.read()
        if not ok:
          return
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
      capture.release()

  return fps, frames()


class _VideoWriters:
  """The per-frame images (outputs_lib.PHOTO_IMAGES asked for) as videos,
  put in place whole when complete: written beside their final name under a
  hidden name (local outputs), or in `scratch` and copied (gs://)."""

  def __init__(self, stem: str, names, fps: float, scratch: str):
    self.stem, self.names, self.fps, self.scratch = stem, tuple(names), fps, scratch
    self.writers = {}

  def _partial(self, name: str) -> str:
    if fileio.is_url(self.stem):
      return os.path.join(self.scratch, f"{name}.mp4")
    folder, base = os.path.split(self.stem)
    return os.path.join(folder, f".{base}_{name}.partial.mp4")

  def write(self, images: dict) -> None:
    for name in self.names:
      image = images[name]
      if name not in self.writers:
        height, width = image.shape[:2]
        fileio.makedirs(os.path.dirname(self.stem) or ".")
        self.writers[name] = cv2.VideoWriter(self._partial(name),
                                             cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                             (width, height))
        if not self.writers[name].isOpened():
          raise OSError(f"{self.stem}_{name}.mp4: OpenCV cannot write mp4 videos here")
      self.writers[name].write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

  def finish(self) -> None:
    for name, writer in self.writers.items():
      writer.release()
      final = f"{self.stem}_{name}.mp4"
      if fileio.is_url(final):
        with open(self._partial(name), "rb") as f:
          fileio.write_bytes_atomic(final, f.read())
      else:
        os.replace(self._partial(name), final)

  def discard(self) -> None:
    """Removes the partial videos of a run that failed."""
    for name, writer in self.writers.items():
      writer.release()
      if os.path.exists(self._partial(name)):
        os.remove(self._partial(name))


def reconstruct_video(path: str, stem: str, predictor, detector, *, model_name: str,
                      max_faces: int = 8, outputs=DEFAULT_OUTPUTS, smoothing: bool = True,
                      redetect_every: int = REDETECT_EVERY) -> VideoSummary:
  """Reconstructs the faces of every frame of the video at `path` with
  `predictor` (inference.Predictor), writing `<stem>_*` (see the module).
  `detector`: a detector of `facerecon.detect` (None: every frame is a face
  crop already). ValueError when the video cannot be read or shows no face."""
  if redetect_every < 1:
    raise ValueError(f"redetect_every must be >= 1, got {redetect_every}")
  model, size = predictor.model, predictor.size
  with tempfile.TemporaryDirectory() as scratch:
    local = path
    if fileio.is_url(path):  # OpenCV reads local files only
      local = os.path.join(scratch, "input" + os.path.splitext(path)[1])
      with open(local, "wb") as f:
        f.write(fileio.read_bytes(path))
    fps, frames = _frames(local)
    summary = VideoSummary(video=path, fps=fps)
    writers = _VideoWriters(stem, [n for n in outputs_lib.PHOTO_IMAGES if n in outputs], fps,
                            scratch)
    frames_dir = stem + "_frames"  # made by the first file written in it
    tracks: list[_Track] = []
    try:
      last_detection = None
      for index, frame in enumerate(frames):
        summary.frames += 1
        height, width = frame.shape[:2]
        if detector is None:
          if not tracks:
            tracks.append(_Track(0, cropping.centred_square(height, width), None, None))
            summary.tracks += 1
        elif not tracks or index - last_detection >= redetect_every:
          last_detection = index
          summary.detector_runs += 1
          summary.tracks += _update_tracks(tracks, detector.crop_squares(frame)[1], max_faces,
                                           summary.tracks)
        if not tracks:
          summary.frames_without_face += 1
          writers.write(outputs_lib.photo_images(
              cropping.shrink_to_side(frame, outputs_lib.PREVIEW_SIDE)[0], writers.names))
          continue
        photo = outputs_lib.photo_from_image(
            frame, path, os.path.join(frames_dir, f"{index:06d}"), np.zeros((0, 4)),
            [t.square for t in tracks], size)
        photo.face_names = [t.number for t in tracks]
        faces = []
        for k, track in enumerate(tracks):
          # One face at a time: most videos show one (no padded batch).
          fits = predictor(photo.crops[k:k + 1], batch_size=1)
          fit = type(fits)(*(field[0] for field in fits))
          landmarks = cropping.to_photo(fit.landmarks, track.square, size)
          if smoothing:
            photo_pose = cropping.pose_to_photo(fit.params[:params_lib.NUM_POSE], track.square,
                                                size, height)
            photo_params = np.concatenate([photo_pose, fit.params[params_lib.NUM_POSE:]])
            if track.smoother is None:
              face_size = float(np.max(landmarks.max(0) - landmarks.min(0)))
              track.units = _parameter_units(photo_params, face_size)
              track.smoother = OneEuroFilter()
            steady = track.smoother(photo_params / track.units, 1.0 / fps) * track.units
            fits = jax.tree.map(lambda x: x[None], _refit(fit, model, steady, track.square,
                                                          size, height))
          faces += outputs_lib.render_fits(fits, model, 1, size)
          # The next frame's crop follows the raw landmarks: smoothing lags.
          if detector is not None:
            track.square = cropping.square_from_landmarks(landmarks)
        photo.fitted = faces
        writers.write(outputs_lib.write_photo(photo, model, size, model_name,
                                              predictor.has_fine, outputs))
        summary.faces += len(tracks)
        tracks[:] = [t for t in tracks if _in_view(t.square, height, width)]
      if not summary.frames:
        raise ValueError(f"{path}: no frames could be read")
      if not summary.faces:
        raise ValueError("no face found in any frame")
    except BaseException:
      writers.discard()
      raise
    writers.finish()
  return summary


def _update_tracks(tracks: list, squares, max_faces: int, started: int) -> int:
  """Matches the detector's crop squares to the tracks (in place): a
  matched track is seen, an unmatched one is missed (and ends after
  MAX_MISSES), an unmatched square starts a track while there is room.
  Returns the number of tracks started."""
  unmatched = list(squares)
  for track in tracks:
    if unmatched:
      overlaps = detect.box_iou(_corners(track.square),
                            np.stack([_corners(s) for s in unmatched]))
      best = int(np.argmax(overlaps))
      if overlaps[best] >= MATCH_IOU:
        track.misses = 0
        unmatched.pop(best)
        continue
    track.misses += 1
  tracks[:] = [t for t in tracks if t.misses < MAX_MISSES]
  new = 0
  for square in unmatched[:max(0, max_faces - len(tracks))]:
    tracks.append(_Track(started + new, square, None, None))
    new += 1
  return new


def _in_view(square: cropping.Square, height: int, width: int) -> bool:
  """Whether a track's next crop still holds a face worth fitting: its
  centre inside the frame and its face at least MIN_FACE pixels."""
  face = square.side * cropping.CROP_FILL
  return (face >= MIN_FACE and 0 <= square.centre_x < width
          and 0 <= square.centre_y + cropping.CROP_SHIFT * face < height)
