"""The Grain input pipeline on a tiny synthetic facerecon_faces data set."""

import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import build_dataset
from data_pipeline import splits
from data_pipeline import synthesize
from facerecon import camera
from facerecon import face_models
from facerecon import face_render
from facerecon import morphable
from facerecon import params as params_lib
from facerecon.data import input_pipeline as ip
from facerecon.data import normalization
from facerecon.data import photos
from facerecon.data import preprocessing

MODEL = "embedded:25"
SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("pipeline")
  source = str(tmp / "synthetic")
  settings = synthesize.Settings(num_faces=20, seed=0, image_size=SIZE, shard_size=10,
                                 model=MODEL, backgrounds=())
  synthesize.synthesize(settings, source)
  splits.write_splits_and_statistics(source, (0.6, 0.2, 0.2), seed=0)
  data_dir = str(tmp / "tfds")
  build_dataset.build("synthetic", source, data_dir)
  return data_dir, normalization.load_statistics(os.path.join(source, "statistics.npz"))


def _source(dataset, split="train", features=ip.TRAINING_FEATURES):
  return ip.open_source("facerecon_faces/synthetic", split, dataset[0], features)


def test_fast_example_parsing_matches_tfds(dataset):
  """The direct array_record path decodes plain features exactly as tfds
  does; features it cannot parse (zlib maps) and split slices go through
  tfds; unknown features are named."""
  import tensorflow_datasets as tfds

  plain = ("image", "params", "landmarks", "index", "lighting", "name")
  fast = _source(dataset, "val", plain)
  assert type(fast).__name__ == "_ExampleFeatures"
  reference = tfds.data_source("facerecon_faces/synthetic", split="val", data_dir=dataset[0])
  assert len(fast) == len(reference) == 4
  for i in range(len(fast)):
    got, want = fast[i], reference[i]
    assert sorted(got) == sorted(plain)
    for key in plain:
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
      assert np.asarray(got[key]).dtype == np.asarray(want[key]).dtype, key
  with_maps = _source(dataset, "val", ("image", "depth"))
  assert type(with_maps).__name__ == "_SelectedFeatures"
  np.testing.assert_array_equal(with_maps[1]["depth"], reference[1]["depth"])
  sliced = _source(dataset, "train[:50%]")
  assert len(sliced) == 6
  with pytest.raises(KeyError, match="no feature.*nonexistent"):
    _source(dataset, "val", ("image", "nonexistent"))


def test_batches_and_normalisation(dataset):
  source = _source(dataset)
  assert len(source) == 12 and sorted(source[0]) == ["image", "landmarks", "params"]
  statistics = dataset[1]
  batch = next(iter(ip.make_dataset(source, batch_size=5, statistics=statistics)))
  assert batch["image"].shape == (5, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
  assert batch["params"].shape == (5, face_models.load(MODEL).layout.size)
  np.testing.assert_allclose(
      batch["params_normalized"],
      np.asarray(normalization.normalize_params(batch["params"], statistics)), rtol=1e-5)
  # Evaluation: every example once, in order, unaugmented.
  evaluation = list(ip.make_dataset(source, batch_size=5, train=False, statistics=statistics))
  assert [len(b["image"]) for b in evaluation] == [5, 5, 2]
  np.testing.assert_array_equal(evaluation[0]["image"][0], photos.decode_image(source[0]["image"]))
  np.testing.assert_array_equal(evaluation[0]["params"][0], source[0]["params"])
  # On the device: image / 255 - mean image.
  images = preprocessing.network_images(evaluation[0]["image"], statistics)
  np.testing.assert_allclose(np.asarray(images[0]),
                             evaluation[0]["image"][0] / 255.0 - statistics.mean_image,
                             atol=1e-6)


def test_network_images_jitter_each_image(dataset):
  statistics = dataset[1]
  images = np.stack([np.full((SIZE, SIZE, 3), 120, np.uint8)] * 4)
  images[:, :, :SIZE // 2] = (200, 80, 40)
  jitter = jax.jit(lambda x, k: preprocessing.network_images(x, statistics, k))
  out = np.asarray(jitter(images, jax.random.PRNGKey(1)))
  again = np.asarray(jitter(images, jax.random.PRNGKey(1)))
  np.testing.assert_array_equal(out, again)  # deterministic given the key
  assert out.dtype == np.float32 and np.all(np.isfinite(out))
  assert len({float(np.round(o.mean(), 5)) for o in out}) == 4  # each image its own jitter
  plain = np.asarray(preprocessing.network_images(images, statistics, jax.random.PRNGKey(1),
                                                  preprocessing.NO_AUGMENTATION))
  np.testing.assert_allclose(plain, images / 255.0 - statistics.mean_image, atol=1e-6)


def test_augmentation_keeps_labels_consistent(dataset):
  """After scale/shift jitter the label still describes the image: the face
  rendered from the new label covers the warped stored mask, and the new
  landmarks are the new label's projected landmarks."""
  source = _source(dataset, features=("image", "params", "landmarks", "mask"))
  model = face_models.load(MODEL)
  augmentation = preprocessing.Augmentation(scale=0.25, shift=0.15)
  rng = np.random.default_rng(0)
  gains = []
  for k in range(4):
    example = ip.prepare_example(source[k], rng, augmentation, None)
    face = params_lib.split(jnp.asarray(example["params"]), model.layout)
    vertices = morphable.vertices(model, face.shape, face.expression)
    landmarks = camera.project_landmarks(vertices, model.landmark_indices, face.pose, SIZE)
    np.testing.assert_allclose(np.asarray(landmarks), example["landmarks"], atol=2e-3)
    warped = example["mask"]

    def iou_with(params):
      rendered = np.asarray(face_render.render_face(model, jnp.asarray(params)[None], None,
                                               SIZE, SIZE).mask[0])
      return (rendered & warped).sum() / max((rendered | warped).sum(), 1)

    # Nearest-neighbour warping flips boundary pixels of a 32-pixel mask.
    new_iou, old_iou = iou_with(example["params"]), iou_with(source[k]["params"])
    assert new_iou >= 0.85, new_iou
    gains.append(new_iou - old_iou)
    original = source[k]["params"]
    assert not np.allclose(example["params"][3:7], original[3:7])  # the pose moved
    np.testing.assert_array_equal(example["params"][:3], original[:3])  # angles kept
    np.testing.assert_array_equal(example["params"][7:], original[7:])  # shape kept
  assert np.mean(gains) > 0.15, gains  # the old label no longer fits the image


def test_iterator_state_resumes_exactly(dataset):
  source = _source(dataset)
  pipeline = ip.make_dataset(source, batch_size=4, seed=3, statistics=dataset[1])
  iterator = iter(pipeline)
  for _ in range(4):  # past the first epoch (3 batches of 4)
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]
  resumed = iter(pipeline)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_epochs_reshuffle_and_hosts_partition(dataset):
  source = _source(dataset)
  iterator = iter(ip.make_dataset(source, batch_size=12, seed=1,
                                  augmentation=preprocessing.NO_AUGMENTATION))
  first, second = next(iterator)["params"], next(iterator)["params"]
  assert not np.array_equal(first, second)  # another order
  np.testing.assert_array_equal(np.sort(first[:, 3]), np.sort(second[:, 3]))  # same faces
  hosts = [np.concatenate([b["params"][:, 3] for b in ip.make_dataset(
      source, batch_size=4, train=False, process_index=i, process_count=2)]) for i in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == 6
  assert not set(hosts[0]) & set(hosts[1])
  everything = [source[i]["params"][3] for i in range(len(source))]
  np.testing.assert_array_equal(np.sort(np.concatenate(hosts)), np.sort(everything))
  # 12 examples over 5 hosts: 2 each (2 left out), never 3 on some and 2 on others.
  shares = [sum(len(b["params"]) for b in ip.make_dataset(
      source, batch_size=2, train=False, process_index=i, process_count=5)) for i in range(5)]
  assert shares == [2] * 5


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(dataset):
  source = _source(dataset)
  make = lambda workers: iter(ip.make_dataset(source, batch_size=4, seed=2,
                                              statistics=dataset[1], num_workers=workers))
  local, workers = make(0), make(1)
  for _ in range(3):
    a, b = next(local), next(workers)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_photos_of_another_size_are_cropped_from_their_landmarks(dataset):
  """300W-LP's photos are 450x450: with image_size the pipeline crops them
  by the landmark rule (facerecon.data.cropping), and the label follows: the new
  landmarks are the new parameters' projected landmarks, inside the crop."""

  source = _source(dataset, features=("image", "params", "landmarks", "mask"))
  model = face_models.load(MODEL)
  example = dict(source[0])
  photo = photos.decode_image(example["image"])
  # The stored face placed into a larger, off-centre photo by a known similarity.
  scale, offset = 3.0, np.array([40.0, 17.0])
  big = cv2.warpAffine(photo, np.array([[scale, 0, offset[0]], [0, scale, offset[1]]]),
                       (160, 130))
  example["image"] = cv2.imencode(".png", big)[1].tobytes()
  example["params"] = np.concatenate([camera.pose_after_image_similarity(
      example["params"][:7].astype(np.float64), scale, offset, SIZE, new_height=130),
      example["params"][7:]]).astype(np.float32)
  example["landmarks"] = scale * example["landmarks"] + offset
  out = ip.prepare_example(example, None, preprocessing.Augmentation(), None, image_size=24)
  assert out["image"].shape == (24, 24, 3) and "mask" not in out
  face = params_lib.split(jnp.asarray(out["params"]), model.layout)
  vertices = morphable.vertices(model, face.shape, face.expression)
  landmarks = camera.project_landmarks(vertices, model.landmark_indices, face.pose, 24)
  np.testing.assert_allclose(np.asarray(landmarks), out["landmarks"], atol=2e-3)
  assert out["landmarks"].min() > 0 and out["landmarks"].max() < 24
  # The same size passes through untouched.
  same = ip.prepare_example(dict(source[0]), None, preprocessing.Augmentation(), None,
                            image_size=SIZE)
  np.testing.assert_array_equal(same["image"], photos.decode_image(source[0]["image"]))


def test_read_photo_names_a_missing_or_undecodable_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
    photos.read_photo(str(tmp_path / "nowhere.jpg"))
  (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
  with pytest.raises(ValueError, match="broken.png: cannot decode"):
    photos.read_photo(str(tmp_path / "broken.png"))


def test_dataset_statistics_of_a_tfds_train_split(dataset, tmp_path):
  """The command that gives a tfds data set (300W-LP's mat_folders) its
  statistics reproduces, on the synthetic set, those `splits` wrote from the
  shards (the same train split; images through the encoded copies)."""
  import subprocess
  import sys

  from conftest import ROOT

  output = tmp_path / "statistics.npz"
  result = subprocess.run(
      [sys.executable, "-m", "data_pipeline.dataset_statistics",
       "--name=facerecon_faces/synthetic", f"--data_dir={dataset[0]}", f"--image_size={SIZE}",
       f"--output={output}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "statistics of 12 train examples" in result.stdout
  got, want = normalization.load_statistics(output), dataset[1]
  assert int(got.count) == int(want.count) == 12
  np.testing.assert_allclose(got.param_mean, want.param_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.param_std, want.param_std, rtol=1e-4, atol=1e-5)
  assert got.mean_image.shape == want.mean_image.shape == (SIZE, SIZE, 3)
  difference = np.abs(np.asarray(got.mean_image) - np.asarray(want.mean_image))
  assert difference.mean() < 1 / 255 and difference.max() < 8 / 255  # (JPEG's losses)


def test_rotate_images_turns_about_the_centre_and_repeats_the_edges():
  """A quarter turn counter-clockwise (as seen) moves a pixel right of the
  centre to above it, exactly; 0 leaves an image as it was; uint8 stays
  uint8; a half-pixel bilinear sample averages; beyond the image its edge
  pixels repeat (no black corners)."""
  image = np.zeros((2, 9, 9, 3), np.uint8)
  image[:, 4, 7] = 200                                   # 3 pixels right of the centre
  turned = np.asarray(preprocessing.rotate_images(image, np.array([np.pi / 2, 0.0])))
  assert turned.dtype == np.uint8
  expected = np.zeros((9, 9, 3), np.uint8)
  expected[1, 4] = 200                                   # 3 pixels above it
  np.testing.assert_array_equal(turned[0], expected)
  np.testing.assert_array_equal(turned[1], image[1])
  ramp = np.tile(np.arange(8, dtype=np.float32) * 10, (8, 1))[None, ..., None]
  # Turned half a turn: column j shows column 7 - j.
  np.testing.assert_allclose(np.asarray(preprocessing.rotate_images(ramp, np.array([np.pi]))),
                             ramp[:, :, ::-1], atol=1e-3)
  edges = np.asarray(preprocessing.rotate_images(ramp, np.array([np.pi / 4])))
  assert edges.min() >= 0.0 and edges[0, 0, 0, 0] > 0.0  # a corner repeats the edge


def test_unsharp_mask_matches_opencv_and_keeps_flat_images():
  """The unsharp mask against OpenCV's Gaussian (7 taps at sigma 1, edge
  pixels repeated); a flat image and amount 0 are left as they are; edges
  get steeper."""
  rng = np.random.default_rng(0)
  images = rng.uniform(0.0, 1.0, (2, 12, 10, 3)).astype(np.float32)
  sharpened = np.asarray(jax.jit(preprocessing.unsharp_mask, static_argnums=(1, 2))(
      images, 1.5, 1.0))
  for image, got in zip(images, sharpened):
    blurred = cv2.GaussianBlur(image, (7, 7), 1.0, borderType=cv2.BORDER_REPLICATE)
    np.testing.assert_allclose(got, image + 1.5 * (image - blurred), atol=1e-5)
  flat = np.full((1, 8, 8, 3), 0.4, np.float32)
  np.testing.assert_allclose(np.asarray(preprocessing.unsharp_mask(flat, 2.0)), flat, atol=1e-6)
  np.testing.assert_allclose(np.asarray(preprocessing.unsharp_mask(images, 0.0)), images,
                             atol=1e-6)
  step = np.zeros((1, 8, 8, 1), np.float32)
  step[:, :, 4:] = 1.0
  edge = np.asarray(preprocessing.unsharp_mask(step, 1.0))[0, 0, :, 0]
  assert edge[4] - edge[3] > 1.0 and edge[3] < 0.0 and edge[4] > 1.0


def test_gaussian_blur_matches_opencv():
  """The Gaussian blur (3 sigma each side, edge pixels repeated) against
  OpenCV's at sigma 1 and 2.5; a flat image is left as it is."""
  rng = np.random.default_rng(1)
  images = rng.uniform(0.0, 1.0, (2, 20, 16, 3)).astype(np.float32)
  for sigma, taps in ((1.0, 7), (2.5, 17)):
    blurred = np.asarray(jax.jit(preprocessing.gaussian_blur, static_argnums=1)(images, sigma))
    for image, got in zip(images, blurred):
      want = cv2.GaussianBlur(image, (taps, taps), sigma, borderType=cv2.BORDER_REPLICATE)
      np.testing.assert_allclose(got, want, atol=1e-5)
  flat = np.full((1, 8, 8, 3), 0.7, np.float32)
  np.testing.assert_allclose(np.asarray(preprocessing.gaussian_blur(flat, 3.0)), flat, atol=1e-6)


def test_polygon_masks_agree_with_opencv_and_keep_holes_of_concave_outlines():
  """Pixel centres inside each polygon (column, row), by the even-odd rule:
  a square's pixels exactly; a concave outline (a U) leaves its notch out;
  OpenCV fills the same pixels of a random convex polygon (away from its
  edges, where the two rules of a pixel on the line may differ); the
  polygon's point order does not matter."""
  square = np.array([[1.5, 2.5], [5.5, 2.5], [5.5, 6.5], [1.5, 6.5]], np.float32)
  notched = np.array([[1.5, 1.5], [8.5, 1.5], [8.5, 8.5], [6.5, 8.5], [6.5, 4.5],
                      [3.5, 4.5], [3.5, 8.5], [1.5, 8.5]], np.float32)
  masks = [np.asarray(preprocessing.polygon_masks(p[None], 10, 10))[0] for p in (square, notched)]
  expected = np.zeros((10, 10), bool)
  expected[3:7, 2:6] = True                                 # rows 3..6, columns 2..5
  np.testing.assert_array_equal(masks[0], expected)
  assert masks[1][2:5, 2:9].all() and masks[1][5:9, 2:4].all() and masks[1][5:9, 7:9].all()
  assert not masks[1][5:9, 4:7].any()                       # the notch
  assert masks[1].sum() == 7 * 3 + 2 * (2 * 4)
  rng = np.random.default_rng(2)
  angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
  radii = rng.uniform(8, 12, 9)
  polygon = np.stack([20 + radii * np.cos(angles), 18 + radii * np.sin(angles)], -1)
  polygon = cv2.convexHull(polygon.astype(np.float32))[:, 0]
  filled = np.zeros((40, 40), np.uint8)
  cv2.fillPoly(filled, [np.round(polygon * 256).astype(np.int32)], 1, cv2.LINE_8, 8)
  both = np.asarray(preprocessing.polygon_masks(np.stack([polygon, polygon[::-1]]), 40, 40))
  np.testing.assert_array_equal(both[0], both[1])
  kernel = np.ones((3, 3), np.uint8)
  far_from_edges = (cv2.erode(filled, kernel).astype(bool)
                    | ~cv2.dilate(filled, kernel).astype(bool))
  np.testing.assert_array_equal(both[0][far_from_edges], filled.astype(bool)[far_from_edges])
  assert both[0].sum() > 200
