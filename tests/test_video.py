"""Videos: the One Euro filter, tracking (detector runs only when needed),
per-frame files and overlay videos, failures. The shipped model on real
clips: tests/test_main.py (the command) and tests/test_benchmarks.py
(smoothing steadies a still head)."""

import json
import os

import cv2
import numpy as np
import pytest

from facerecon import camera
from facerecon import face_models
from facerecon import inference
from facerecon import morphable
from facerecon import video
from facerecon.data import cropping
import tiny


def write_clip(path, frames, fps=25.0):
  """An mp4 of RGB frames (OpenCV's mp4v codec)."""
  height, width = frames[0].shape[:2]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
  assert writer.isOpened()
  for frame in frames:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()


def read_clip(path):
  capture = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, frame = capture.read()
    if not ok:
      return frames
    frames.append(frame)


def test_one_euro_filter_steadies_a_still_value_and_follows_a_moving_one():
  rng = np.random.default_rng(0)
  # Jitter of 1% of a face's size (the filter's units, video._parameter_units).
  still = 5.0 + rng.normal(0.0, 0.01, (200, 3))
  steady = video.OneEuroFilter(min_cutoff=1.0, beta=5.0)
  out = np.stack([steady(x, 1 / 25) for x in still])
  np.testing.assert_allclose(out[0], still[0])  # the first value passes through
  assert np.diff(out[50:], axis=0).std() < 0.3 * np.diff(still[50:], axis=0).std()
  assert np.abs(out[50:].mean(0) - 5.0).max() < 0.005
  # A ramp of 1 unit per second: followed, a fraction of a second behind.
  ramp = np.arange(100)[:, None] / 25.0 * np.ones(3)
  follow = video.OneEuroFilter(min_cutoff=1.0, beta=5.0)
  out = np.stack([follow(x, 1 / 25) for x in ramp])
  lag = ramp[-1] - out[-1]
  assert (lag > 0).all() and (lag < 0.2).all()
  # Faster motion raises the cutoff: less lag, in time, than with beta 0.
  plain = video.OneEuroFilter(min_cutoff=1.0, beta=0.0)
  assert (ramp[-1] - [plain(x, 1 / 25) for x in ramp][-1] > 2 * lag).all()


class CentredFits:
  """A predictor whose fit of every crop is one mean face framed as the
  landmark crop rule frames faces, so the face in the photo is wherever the
  crop was and tracking it keeps the crop where it is."""

  def __init__(self, config):
    self.model = face_models.load(config.model)
    self.size, self.batch_size, self.has_fine = config.image_size, 4, False
    self.calls = []
    model, size = self.model, self.size
    params = np.zeros((1, model.layout.size), np.float32)
    self.vertices = np.asarray(morphable.vertices_from_params(model, params))
    pose = camera.framing_pose(self.vertices[0], np.zeros(3), size, size, fill=0.5)
    landmarks = np.asarray(camera.project_landmarks(self.vertices[0], model.landmark_indices,
                                                    pose, size))
    low, high = landmarks.min(0), landmarks.max(0)
    scale = size * cropping.CROP_FILL / (high - low).max()
    centre = (size - 1) / 2 + np.array([0.0, cropping.CROP_SHIFT * size * cropping.CROP_FILL])
    offset = centre - scale * (low + high) / 2
    params[0, :7] = camera.pose_after_image_similarity(np.asarray(pose), scale, offset, size)
    self.params, self.landmarks = params, scale * landmarks + offset

  def __call__(self, crops, batch_size=None):
    self.calls.append(len(crops))
    n, size = len(crops), self.size
    depth = np.ones((n, size, size), np.float32)
    mask = np.zeros(depth.shape, bool)
    mask[:, 8:24, 8:24] = True
    return inference.FaceFits(np.repeat(self.params, n, 0),
                              np.repeat(self.landmarks[None], n, 0),
                              np.repeat(self.vertices, n, 0), depth, depth, mask)


class CountingDetector:
  """One face at a fixed box; counts the frames it is run on."""

  def __init__(self, box=(40.0, 30.0, 60.0, 60.0)):
    self.box, self.runs = np.array([box]), 0

  def crop_squares(self, frame):
    self.runs += 1
    return self.box, [cropping.square_from_detection(self.box[0])], np.ones(1)


def test_a_clip_is_tracked_with_the_detector_run_only_when_needed(tmp_path):
  config = tiny.config()
  predictor, detector = CentredFits(config), CountingDetector()
  frames = [np.full((120, 160, 3), 60 + 5 * t, np.uint8) for t in range(12)]
  write_clip(tmp_path / "clip.mp4", frames)
  stem = str(tmp_path / "out" / "clip")
  summary = video.reconstruct_video(str(tmp_path / "clip.mp4"), stem, predictor, detector,
                                    model_name="embedded", redetect_every=5,
                                    outputs=("json", "landmarks", "overlay", "pncc"))
  # Frames 0, 5 and 10: the start and each redetect_every.
  assert detector.runs == 3 and summary.detector_runs == 3
  assert summary.frames == 12 and summary.faces == 12 and summary.tracks == 1
  assert predictor.calls == [1] * 12  # one face per call, no padding to the batch
  names = sorted(os.listdir(stem + "_frames"))
  assert names[:3] == ["000000_face0.json", "000000_face0_landmarks.txt",
                       "000000_face0_landmarks3d.txt"]
  assert len(names) == 3 * 12
  for name in ("overlay", "pncc"):
    written = read_clip(stem + f"_{name}.mp4")
    assert len(written) == 12 and written[0].shape == (120, 160, 3)
  assert not os.path.exists(stem + "_normals.mp4")
  # The face is drawn where it was tracked: landmarks and PNCC agree.
  with open(os.path.join(stem + "_frames", "000011_face0.json")) as f:
    record = json.load(f)
  centre = np.asarray(record["landmarks"]).mean(axis=0)
  pncc = read_clip(stem + "_pncc.mp4")[11].max(axis=2)
  rows, columns = np.nonzero(pncc > 40)
  assert abs(columns.mean() - centre[0]) < 10 and abs(rows.mean() - centre[1]) < 10


def test_tracks_end_when_the_detector_misses_them_and_new_faces_start_tracks(tmp_path):
  config = tiny.config()
  predictor = CentredFits(config)

  class MovingFace(CountingDetector):
    """The face jumps to the other side at frame 6."""

    def crop_squares(self, frame):
      self.box = np.array([(40.0, 30.0, 60.0, 60.0) if frame[0, 0, 0] < 100
                           else (200.0, 30.0, 60.0, 60.0)])
      return super().crop_squares(frame)

  frames = [np.full((120, 320, 3), 60 if t < 6 else 160, np.uint8) for t in range(12)]
  write_clip(tmp_path / "clip.mp4", frames)
  stem = str(tmp_path / "clip")
  summary = video.reconstruct_video(str(tmp_path / "clip.mp4"), stem, predictor,
                                    MovingFace(), model_name="embedded", redetect_every=2,
                                    outputs=("json",))
  # The old track is missed at frames 6 and 8 (MAX_MISSES = 2): it ends there.
  assert video.MAX_MISSES == 2 and summary.tracks == 2
  names = set(os.listdir(stem + "_frames"))
  assert "000006_face1.json" in names and "000007_face0.json" in names
  assert "000008_face0.json" not in names and "000011_face1.json" in names


def test_broken_and_faceless_videos_are_reported(tmp_path):
  config = tiny.config()
  (tmp_path / "broken.mp4").write_bytes(b"not a video")
  write_clip(tmp_path / "empty_room.mp4", [np.full((64, 64, 3), 90, np.uint8)] * 4)

  class NoFaces:
    runs = 0

    def crop_squares(self, frame):
      self.runs += 1
      return np.zeros((0, 4)), [], np.zeros(0)

  detector = NoFaces()
  predictor = CentredFits(config)
  for name, reason in (("broken.mp4", "cannot open the video|no frames"),
                       ("empty_room.mp4", "no face found in any frame")):
    with pytest.raises(ValueError, match=reason):
      video.reconstruct_video(str(tmp_path / name), str(tmp_path / "out" / name), predictor,
                              detector, model_name="embedded")
  assert detector.runs == 4  # with nothing tracked, the detector runs on every frame
  assert not os.listdir(tmp_path / "out")  # no overlay video of a failed one, nor its part
