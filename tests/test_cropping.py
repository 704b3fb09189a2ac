"""Face crops (facerecon.data.cropping) and the face detector (facerecon.detect)."""

import os

import numpy as np
import pytest

from facerecon import camera
from facerecon import face_models
from facerecon import face_render
from facerecon.data import cropping
from facerecon.data import sources
from facerecon.data import synthetic


def astronaut_photo():
  """A real photo of a face: scikit-image ships it (NASA, public domain)."""
  import cv2
  import skimage

  path = os.path.join(os.path.dirname(skimage.__file__), "data", "astronaut.png")
  return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def synthetic_faces():
  model = face_models.load("embedded")
  stream = sources.SyntheticStream(model, 200, 64, 0, synthetic.FacePrior(), per_host=False)
  return model, next(stream)


def test_landmark_crop_reproduces_the_training_framing(synthetic_faces):
  """The rule's squares of synthetic faces are, on average, the images they
  came from: the framing CoarseNet learnt (if the prior's framing changes,
  the rule's constants must follow). The evaluation's ground-truth crops
  are tighter about the same centre."""
  _, batch = synthetic_faces
  squares = np.array([cropping.square_from_landmarks(lm) for lm in batch["landmarks"]])
  assert np.mean(squares[:, 2]) == pytest.approx(200, rel=0.03)
  assert np.mean(squares[:, 0]) == pytest.approx(99.5, abs=0.03 * 200)
  assert np.mean(squares[:, 1]) == pytest.approx(99.5, abs=0.03 * 200)
  tight = np.array([cropping.square_from_landmarks(lm, cropping.GROUND_TRUTH_FILL)
                    for lm in batch["landmarks"]])
  np.testing.assert_allclose(tight[:, :2], squares[:, :2])
  np.testing.assert_allclose(tight[:, 2] * cropping.GROUND_TRUTH_FILL,
                             squares[:, 2] * cropping.CROP_FILL)


@pytest.mark.parametrize("size", [48, 400])  # shrinking and enlarging
def test_crop_samples_the_square_exactly(size):
  """On a linear ramp, bilinear and area sampling are exact: every crop
  pixel holds the photo's value at the photo point it maps to (to 0.15
  photo pixels: OpenCV's area filter at fractional scales)."""
  height, width = 300, 420
  rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
  ramp = lambda x, y: 40.0 + 0.3 * x + 0.2 * y
  photo = np.stack([ramp(columns, rows)] * 3, axis=-1).astype(np.float32)
  square = cropping.Square(200.3, 150.8, 161.0)
  out = cropping.crop(photo, square, size)
  assert out.shape == (size, size, 3)
  crop_rows, crop_columns = np.mgrid[0:size, 0:size].astype(np.float64)
  points = cropping.to_photo(np.stack([crop_columns, crop_rows], -1), square, size)
  inside = slice(size // 8, size - size // 8)  # away from the filters' edges
  np.testing.assert_allclose(out[inside, inside, 0],
                             ramp(points[inside, inside, 0], points[inside, inside, 1]),
                             atol=0.05)


def test_crop_beyond_the_photo_repeats_its_edge():
  photo = np.zeros((50, 60, 3), np.uint8)
  photo[:, -1] = 200
  out = cropping.crop(photo, cropping.Square(59.0, 25.0, 40.0), 40)
  assert out.shape == (40, 40, 3)
  assert out[:, -5:].min() == 200  # right of the photo: its last column


def test_poses_and_landmarks_map_between_photo_and_crop(synthetic_faces):
  """A fit in the crop, mapped back with pose_to_photo, projects onto the
  photo exactly where the photo's own labels put the landmarks."""
  model, batch = synthetic_faces
  size = 64
  for params, landmarks in zip(batch["params"][:4], batch["landmarks"][:4]):
    square = cropping.square_from_landmarks(landmarks)
    scale, offset = cropping.crop_transform(square, size)
    crop_pose = np.asarray(camera.pose_after_image_similarity(
        params[:7].astype(np.float64), scale, offset, 200, new_height=size))
    crop_params = np.concatenate([crop_pose, params[7:]]).astype(np.float32)
    in_crop = np.asarray(face_render.project_landmarks(model, crop_params, size))
    np.testing.assert_allclose(in_crop, scale * landmarks + offset, atol=1e-2)
    np.testing.assert_allclose(cropping.to_photo(in_crop, square, size), landmarks, atol=1e-2)
    photo_pose = cropping.pose_to_photo(crop_pose, square, size, 200)
    np.testing.assert_allclose(photo_pose, params[:7], rtol=1e-4, atol=1e-3)


def test_detector_box_maps_to_a_square_below_its_centre():
  square = cropping.square_from_detection((100, 50, 80, 80))
  expected_side = cropping.DETECTOR_LANDMARK_SCALE * 80 / cropping.CROP_FILL
  assert square.side == pytest.approx(expected_side)
  assert square.centre_x == pytest.approx(140)
  assert square.centre_y > 90  # the face's landmarks lie lower than the box centre


def test_bad_boxes_and_landmarks_are_rejected():
  with pytest.raises(ValueError, match="landmarks must be"):
    cropping.square_from_landmarks(np.zeros((68, 3)))
  with pytest.raises(ValueError, match="NaN"):
    cropping.square_from_landmarks(np.full((68, 2), np.nan))
  with pytest.raises(ValueError, match="one point"):
    cropping.square_from_landmarks(np.ones((68, 2)))
  with pytest.raises(ValueError, match="bad detection box"):
    cropping.square_from_detection((0, 0, -5, 10))


def test_detector_finds_the_face_in_a_real_photo():
  from facerecon import detect

  photo = astronaut_photo()
  boxes = detect.FaceDetector().detect(photo)
  assert len(boxes) == 1
  x, y, w, h = boxes[0]
  # Read off the photo: her face spans columns ~177-272 and rows ~70-178.
  assert 160 < x < 190 and 50 < y < 80 and 85 < w < 120
  # Grey input, a photo 4x larger, and the profile cascades find it too.
  import cv2

  grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
  np.testing.assert_allclose(detect.FaceDetector().detect(grey)[0], boxes[0], atol=8)
  big = cv2.resize(photo, (2048, 2048))
  np.testing.assert_allclose(detect.FaceDetector().detect(big)[0] / 4, boxes[0], atol=8)
  assert len(detect.FaceDetector(profiles=True).detect(photo)) >= 1


def test_detector_finds_nothing_in_faceless_or_tiny_pictures():
  from facerecon import detect

  detector = detect.FaceDetector()
  rng = np.random.default_rng(0)
  assert detector.detect(np.full((240, 320, 3), 128, np.uint8)).shape == (0, 4)
  assert detector.detect(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).shape == (0, 4)
  assert detector.detect(np.zeros((6, 9, 3), np.uint8)).shape == (0, 4)
  with pytest.raises(ValueError, match="detect_side"):
    detect.FaceDetector(detect_side=8)


def test_centred_square_crop_maps_back_with_its_matrix():
  square = cropping.centred_square(300, 420)
  assert square == cropping.Square(209.5, 149.5, 300.0)
  # A crop of the square at its own size is the photo's middle: a shift.
  np.testing.assert_allclose(cropping.to_photo_matrix(square, 300),
                             [[1.0, 0.0, 60.0], [0.0, 1.0, 0.0]], atol=1e-12)
  points = np.array([[0.0, 0.0], [47.0, 47.0], [12.3, 30.1]])
  matrix = cropping.to_photo_matrix(cropping.Square(200.3, 150.8, 161.0), 48)
  np.testing.assert_allclose(points @ matrix[:, :2].T + matrix[:, 2],
                             cropping.to_photo(points, cropping.Square(200.3, 150.8, 161.0), 48))


def test_shrink_to_side_shrinks_only_what_is_too_large():
  image = np.zeros((300, 420, 3), np.uint8)
  same, factor = cropping.shrink_to_side(image, 420)
  assert same is image and factor == 1.0
  small, factor = cropping.shrink_to_side(image, 210)
  assert small.shape == (150, 210, 3) and factor == 0.5
  thin, _ = cropping.shrink_to_side(np.zeros((1000, 3), np.uint8), 100)
  assert thin.shape == (100, 1)  # never below one pixel


def test_detector_threads_share_no_cascade_and_agree():
  import concurrent.futures

  from facerecon import detect

  detector = detect.FaceDetector()
  photo = astronaut_photo()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    found = list(pool.map(detector.detect, [photo] * 4))
  for boxes in found:
    np.testing.assert_array_equal(boxes, found[0])
  assert len(found[0]) == 1


@pytest.mark.parametrize("contents", [None, b"not a cascade"])
def test_detector_names_a_missing_or_corrupt_model_file(monkeypatch, tmp_path, contents):
  import cv2

  from facerecon import detect

  if contents is not None:
    (tmp_path / detect.FRONTAL).write_bytes(contents)
  monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=f"{detect.FRONTAL} is missing or corrupt"):
    detect.FaceDetector()


@pytest.fixture(scope="module")
def blazeface():
  from facerecon import detect

  return detect.BlazeFace()


def test_blazeface_finds_the_face_and_its_keypoints_in_a_real_photo(blazeface):
  import cv2

  photo = astronaut_photo()
  found = blazeface.detect_faces(photo)
  assert len(found.boxes) == 1 and found.scores[0] > 0.8
  x, y, w, h = found.boxes[0]
  # Read off the photo: her face spans columns ~177-272 and rows ~70-178.
  assert 165 < x < 200 and 55 < y < 100 and 70 < w < 110
  eyes, nose, mouth = found.keypoints[0, :2], found.keypoints[0, 2], found.keypoints[0, 3]
  assert eyes[0, 0] < eyes[1, 0] and abs(eyes[0, 1] - eyes[1, 1]) < 10  # her right eye on the left
  assert eyes[:, 1].max() < nose[1] < mouth[1]
  # The crop square holds the face, about twice its width across.
  boxes, squares, scores = blazeface.crop_squares(photo)
  np.testing.assert_array_equal(boxes, found.boxes)
  np.testing.assert_array_equal(scores, found.scores)
  square = squares[0]
  assert x < square.centre_x < x + w and y < square.centre_y < y + h
  assert 1.5 * w < square.side < 2.3 * w
  # Grey input and a photo 4x larger find the same face.
  grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
  np.testing.assert_allclose(blazeface.detect(grey)[0], found.boxes[0], atol=6)
  big = cv2.resize(photo, (2048, 2048))
  np.testing.assert_allclose(blazeface.detect(big)[0] / 4, found.boxes[0], atol=6)
  # The graph at its file's input size (192) finds the same face; input
  # sides must suit its strides.
  from facerecon import detect

  np.testing.assert_allclose(detect.BlazeFace(input_side=192).detect(photo)[0],
                             found.boxes[0], atol=6)
  with pytest.raises(ValueError, match="input_side must be a multiple of 32"):
    detect.BlazeFace(input_side=100)


@pytest.mark.parametrize("corner", [(3100, 2300), (37, 2700)])
def test_blazeface_finds_a_40_pixel_face_in_a_4000_by_3000_photo(blazeface, corner):
  """Tiles: the face is 1.3 pixels wide in the whole photo's 128x128 input."""
  import cv2

  photo = astronaut_photo()
  box = blazeface.detect(photo)[0]
  scale = 40.0 / box[2]
  small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
  large = np.full((3000, 4000, 3), 128, np.uint8)
  x, y = corner
  large[y:y + small.shape[0], x:x + small.shape[1]] = small
  boxes = blazeface.detect(large)
  assert len(boxes) == 1
  expected = box * scale + [x, y, 0, 0]
  centre = lambda b: b[:2] + b[2:] / 2
  np.testing.assert_allclose(centre(boxes[0]), centre(expected), atol=6)
  assert 0.7 < boxes[0][2] / expected[2] < 1.3  # at 16 input pixels, the size is rough
  # Without tiles (the smallest face looked for as large as the photo) it is not found.
  from facerecon import detect

  assert len(detect.BlazeFace(min_face=3000).detect(large)) == 0


def test_blazeface_searches_tiles_only_where_the_whole_photo_misses_faces(blazeface):
  """At the defaults (128 input, faces of 40 pixels, 16 input pixels found)
  photos up to 640 pixels are searched whole; larger ones in tiles too, at
  scales from 320 pixels, overlapping by a quarter."""
  assert blazeface._squares(480, 640) == [(0, 0, 640)]
  squares = blazeface._squares(700, 700)
  assert squares[0] == (0, 0, 700) and {side for _, _, side in squares[1:]} == {320}
  covered = np.zeros((700, 700), bool)
  for x, y, side in squares[1:]:
    covered[y:y + side, x:x + side] = True
  assert covered.all()


def test_blazeface_finds_nothing_in_faceless_pictures_and_names_a_bad_file(blazeface,
                                                                          tmp_path):
  from facerecon import detect

  rng = np.random.default_rng(0)
  assert blazeface.detect(np.full((240, 320, 3), 128, np.uint8)).shape == (0, 4)
  assert blazeface.detect(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).shape == (0, 4)
  assert blazeface.detect(np.zeros((6, 9, 3), np.uint8)).shape == (0, 4)
  with pytest.raises(FileNotFoundError, match="nothing.npz"):
    detect.BlazeFace(path=str(tmp_path / "nothing.npz"))
  with pytest.raises(ValueError, match="min_score"):
    detect.BlazeFace(min_score=1.5)
  with pytest.raises(ValueError, match="unknown detector 'yolo'"):
    detect.from_name("yolo")
  assert isinstance(detect.from_name("blazeface"), detect.BlazeFace)
  assert detect.from_name("none") is None


def test_weighted_suppression_merges_one_face_and_keeps_two():
  from facerecon import detect

  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float64)
  points = np.zeros((3, 6, 2))
  points[1] += 1.0
  merged, merged_points, scores = detect.weighted_suppression(
      boxes, points, np.array([0.9, 0.3, 0.6]), iou=0.3)
  np.testing.assert_allclose(merged[0], [0.25, 0, 10.25, 10])  # weights 0.75 / 0.25
  np.testing.assert_allclose(merged_points[0], 0.25)
  np.testing.assert_allclose(merged[1], boxes[2])
  np.testing.assert_allclose(scores, [0.9, 0.6])


def _keypoints(nose_x):
  """BlazeFace's six keypoints (eyes, nose, mouth, ears) of a 100-pixel box
  at (0, 0), the nose `nose_x` box widths right of the eyes' midpoint."""
  return np.array([[35.0, 40.0], [65.0, 40.0], [50.0 + 100.0 * nose_x, 60.0], [50.0, 78.0],
                   [5.0, 50.0], [95.0, 50.0]])


def test_keypoint_square_grows_and_moves_turned_faces():
  from facerecon import detect

  box = np.array([0.0, 0.0, 100.0, 100.0])
  landmark_side = detect.BLAZEFACE_LANDMARK_SCALE * 100.0 / cropping.CROP_FILL
  framing = detect.FRAMING
  assert detect.nose_offset(box, _keypoints(0.3)) == pytest.approx(0.3)

  def rule_x(nose):  # the landmark rule's centre: inner keypoints, offset, pulled to the ears
    inner = 50.0 + 25.0 * nose
    return inner + 100.0 * detect.INNER_OFFSET[0] + detect.EAR_PULL[0] * (50.0 - inner)

  frontal = detect.keypoint_square(box, _keypoints(0.0))
  # Frontal: the landmark rule's square, tighter; not moved across.
  assert frontal.side == pytest.approx(landmark_side / framing.tighten)
  assert frontal.centre_x == pytest.approx(rule_x(0.0))
  # Turned a little (within TURN_START): the same size, moved the nose's way.
  slight = detect.keypoint_square(box, _keypoints(0.1))
  assert slight.side == pytest.approx(frontal.side)
  assert slight.centre_x - rule_x(0.1) == pytest.approx(framing.turn_shift * 0.1 * slight.side)
  # In profile: larger by the turn, moved the nose's way; mirrored keypoints
  # give the same size moved the other way.
  right, left = (detect.keypoint_square(box, _keypoints(n)) for n in (0.3, -0.3))
  assert right.side == pytest.approx(
      landmark_side / (framing.tighten - framing.turn_growth * (0.3 - framing.turn_start)))
  assert right.side > frontal.side and right.side == pytest.approx(left.side)
  assert right.centre_x - rule_x(0.3) == pytest.approx(framing.turn_shift * 0.3 * right.side)
  assert left.centre_x - rule_x(-0.3) == pytest.approx(-framing.turn_shift * 0.3 * left.side)
  assert right.centre_y == pytest.approx(frontal.centre_y)
  # Keypoints turned beyond any face keep a finite crop at most twice the rule's.
  extreme = detect.keypoint_square(box, _keypoints(2.0))
  assert np.isfinite(extreme.side) and extreme.side == pytest.approx(2.0 * landmark_side)
  # No framing: the landmark rule's square itself.
  plain = detect.keypoint_square(box, _keypoints(0.3), detect.Framing())
  assert plain.side == pytest.approx(landmark_side) and plain.centre_x == pytest.approx(rule_x(0.3))
