r"""Video tracking: jitter on a still head and lag on a moving one, with and
without smoothing (facerecon.video).

    python benchmarks/video.py [--workdir=RUN] [--photos=DIR] [--frames=60]

For each photo (the astronaut in scikit-image's data, or up to --max_photos
photos of --photos) two clips are made and written as mp4 (25 fps, OpenCV's
mp4v codec), each frame with fresh sensor noise (--noise, grey levels):
- still: the photo as it is, every frame: the head does not move, so all
  frame-to-frame motion of the landmarks is jitter;
- pan: the photo shifted by --pan pixels per frame to the right: the
  landmarks should move with it; their lag behind the true shift (mean over
  the frames after the first second) is what smoothing costs.
Each clip is reconstructed by `video.reconstruct_video` (the shipped model
or --workdir, BlazeFace, landmark tracking) with and without smoothing.
Printed per setting, over photos (median, and range): jitter, the mean
distance a landmark moves between consecutive frames (less the pan's
motion), in % of the face's
size (sqrt(w * h) of its landmark box, as NME) and in pixels; lag in the
same units; milliseconds per frame.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import cv2
import numpy as np

from facerecon import detect
from facerecon import inference
from facerecon import outputs
from facerecon import rundir
from facerecon import video
from facerecon.data import photos

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run (default: the shipped one).")
_PHOTOS = flags.DEFINE_string("photos", None, "A folder of face photos (default: the "
                              "astronaut).")
_MAX_PHOTOS = flags.DEFINE_integer("max_photos", 10, "Photos of --photos used, in name order.")
_FRAMES = flags.DEFINE_integer("frames", 60, "Frames per clip.")
_NOISE = flags.DEFINE_float("noise", 3.0, "Sensor noise per frame (grey levels, std).")
_PAN = flags.DEFINE_float("pan", 2.0, "Pan clip: pixels per frame.")
_MIN_CUTOFF = flags.DEFINE_float("min_cutoff", video.MIN_CUTOFF, "The One Euro filter's "
                                 "cutoff for a still face, Hz (facerecon.video).")
_WINDOW_SHIFT = flags.DEFINE_float("window_shift", inference.WINDOW_SHIFT, "As reconstruct's "
                                    "(0: each crop's fit alone).")
_BETA = flags.DEFINE_float("beta", video.SPEED_COEFFICIENT, "The One Euro filter's speed "
                           "coefficient (facerecon.video).")
FPS = 25.0


def astronaut() -> np.ndarray:
  import skimage  # pylint: disable=import-outside-toplevel

  return photos.read_photo(os.path.join(os.path.dirname(skimage.__file__), "data",
                                        "astronaut.png"))


def write_clip(path: str, photo: np.ndarray, frames: int, pan: float, noise: float,
               seed: int) -> None:
  """An mp4 of `photo` shifted right by `pan` pixels per frame, with noise."""
  height, width = photo.shape[:2]
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
  rng = np.random.default_rng(seed)
  for t in range(frames):
    shift = np.float32([[1, 0, pan * t], [0, 1, 0]])
    frame = cv2.warpAffine(photo, shift, (width, height), borderMode=cv2.BORDER_REFLECT)
    frame = np.clip(frame + rng.normal(0.0, noise, frame.shape), 0, 255).astype(np.uint8)
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()


TRACK_OUTPUTS = ("landmarks",)  # what each clip writes


def track(predictor, detector, path: str, out: str, smoothing: bool):
  """(landmarks [T, 68, 2] of face 0 per frame, ms per frame)."""
  stem = os.path.join(out, "clip")
  start = time.perf_counter()
  summary = video.reconstruct_video(path, stem, predictor, detector, model_name="",
                                    outputs=TRACK_OUTPUTS, smoothing=smoothing)
  elapsed = time.perf_counter() - start
  marks = [np.loadtxt(os.path.join(stem + "_frames", f"{t:06d}_face0_landmarks.txt"))
           for t in range(summary.frames)]
  return np.stack(marks), 1000.0 * elapsed / summary.frames


def face_size(landmarks: np.ndarray) -> float:
  extent = landmarks.max(axis=0) - landmarks.min(axis=0)
  return float(np.sqrt(extent[0] * extent[1]))


def main(argv):
  del argv
  video.MIN_CUTOFF, video.SPEED_COEFFICIENT = _MIN_CUTOFF.value, _BETA.value
  run = rundir.RunDir(_WORKDIR.value) if _WORKDIR.value else rundir.default_run()
  config = rundir.resolve_config(run)
  # As reconstruct does: FineNet only for outputs that carry its detail.
  predictor = inference.Predictor(config, run.path, 1,
                                  fine=outputs.needs_detail(TRACK_OUTPUTS),
                                  options=inference.FitOptions(window_shift=_WINDOW_SHIFT.value))
  detector = detect.from_name("blazeface")
  if _PHOTOS.value:
    chosen = photos.find_photos(_PHOTOS.value)[:_MAX_PHOTOS.value]
    faces = [(os.path.basename(p), photos.read_photo(p)) for p in chosen]
  else:
    faces = [("astronaut", astronaut())]
  with tempfile.TemporaryDirectory() as scratch:  # compiles, so no clip's time includes it
    path = os.path.join(scratch, "warm_up.mp4")
    write_clip(path, faces[0][1], 3, 0.0, _NOISE.value, seed=0)
    for smoothing in (False, True):
      track(predictor, detector, path, os.path.join(scratch, str(smoothing)), smoothing)
  results = {}  # (clip, smoothing) -> list of (jitter %, jitter px, lag %, lag px, ms)
  settle = min(int(FPS), _FRAMES.value // 2)  # lag: after the first second (or half)
  for k, (name, photo) in enumerate(faces):
    with tempfile.TemporaryDirectory() as scratch:
      for clip, pan in (("still", 0.0), ("pan", _PAN.value)):
        path = os.path.join(scratch, f"{clip}.mp4")
        write_clip(path, photo, _FRAMES.value, pan, _NOISE.value, seed=k)
        for smoothing in (False, True):
          out = os.path.join(scratch, f"{clip}_{smoothing}")
          try:
            marks, ms = track(predictor, detector, path, out, smoothing)
          except (ValueError, FileNotFoundError) as e:
            print(f"{name}: {clip}: {e}: skipped")
            continue
          size = face_size(marks[0])
          # Motion that is not the pan's: jitter.
          truth_shift = pan * np.arange(len(marks))
          steady = marks - np.stack([truth_shift, 0 * truth_shift], -1)[:, None]
          step = np.linalg.norm(np.diff(steady, axis=0), axis=-1).mean()
          # Pan: each frame's landmarks against the first frame's, shifted.
          lag = (truth_shift - (marks[..., 0].mean(1) - marks[0, :, 0].mean()))[settle:].mean()
          results.setdefault((clip, smoothing), []).append(
              (100 * step / size, step, 100 * lag / size, lag, ms))
  print(f"video tracking: {len(faces)} photo(s), {_FRAMES.value} frames at {FPS:g} fps, "
        f"noise {_NOISE.value:g}, pan {_PAN.value:g} px/frame; One Euro min cutoff "
        f"{video.MIN_CUTOFF:g} Hz, beta {video.SPEED_COEFFICIENT:g}; median [min, max]")
  print(f"{'clip':6} {'smoothing':9} {'jitter %':>20} {'jitter px':>20} {'lag %':>20} "
        f"{'lag px':>20} {'ms/frame':>8}")
  spread = lambda v: f"{np.median(v):6.2f} [{np.min(v):5.2f},{np.max(v):5.2f}]"
  for (clip, smoothing), rows in results.items():
    rows = np.asarray(rows)
    lag = ("" if clip == "still" else spread(rows[:, 2]), "" if clip == "still"
           else spread(rows[:, 3]))
    print(f"{clip:6} {str(smoothing):9} {spread(rows[:, 0]):>20} {spread(rows[:, 1]):>20} "
          f"{lag[0]:>20} {lag[1]:>20} {np.median(rows[:, 4]):8.1f}")


if __name__ == "__main__":
  app.run(main)
