"""The trained run the package ships (facerecon/assets/run, made by
data_pipeline.ship_run from `python main.py --config=configs/real.py`):
complete, within the assets' size bound, and reconstructing real photos
without --workdir."""

import os

import jax
import ml_collections
import numpy as np
import pytest
from test_cropping import astronaut_photo

from facerecon import camera
from facerecon import evaluate
from facerecon import face_models
from facerecon import fileio
from facerecon import inference
from facerecon import morphable
from facerecon import networks
from facerecon import outputs
from facerecon import params as params_lib
from facerecon import reconstruct
from facerecon import rundir
from facerecon.data import cropping
from facerecon.data import mat_folders
from facerecon.data import normalization
from facerecon.data import preprocessing

DEV_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                       "aflw2000-3d-dev")
ASSETS_LIMIT = 30 << 20  # bytes: every shipped asset together


@pytest.fixture(scope="module")
def shipped():
  """(config, run directory) of the package's own run ($FACERECON_RUN unset)."""
  saved = os.environ.pop(rundir.RUN_VARIABLE, None)
  try:
    run = rundir.default_run()
  finally:
    if saved is not None:
      os.environ[rundir.RUN_VARIABLE] = saved
  assert run is not None, f"{rundir.SHIPPED_RUN}: the package ships no trained run"
  return rundir.resolve_config(run), run.path


def test_the_shipped_run_is_complete_and_small(shipped):
  config, path = shipped
  assert config.model == "ict" and config.coarse.backbone == "mobilenet_v1"
  for name in ("config.json", "statistics.npz", os.path.join("best", "best.json"),
               os.path.join("fine", "best", "best.json"), rundir.POSE_CALIBRATION_FILE):
    assert os.path.exists(os.path.join(path, name)), name
  calibration = inference.PoseCalibration.from_record(
      rundir.read_pose_calibration(rundir.RunDir(path)), "the shipped run")
  assert calibration.pitch < 0  # it reads real faces' pitch too far up
  total = sum(os.path.getsize(os.path.join(folder, name))
              for folder, _, names in os.walk(face_models.ASSETS) for name in names)
  assert total <= ASSETS_LIMIT, f"assets take {total / 2**20:.1f} MiB"


@pytest.mark.slow
def test_the_shipped_run_reconstructs_a_photo(shipped, tmp_path):
  """The astronaut photo (scikit-image's; never trained on): one face, its
  landmarks on the face the detector found, the mesh of the ICT head's
  surface."""
  config, path = shipped
  photo = tmp_path / "astronaut.png"
  fileio.write_png_atomic(photo, astronaut_photo())
  summary = reconstruct.reconstruct(config, path, str(photo), str(tmp_path / "out"),
                                    progress=False)
  assert summary.faces == 1 and not summary.failures
  landmarks = np.loadtxt(tmp_path / "out" / "astronaut_face0_landmarks.txt")
  assert landmarks.shape == (68, 2)
  # The astronaut's face: about columns 140-240, rows 50-190 of 512 x 512.
  centre = landmarks.mean(axis=0)
  assert 150 < centre[0] < 230 and 70 < centre[1] < 170, centre
  assert 50 < np.ptp(landmarks[:, 0]) < 140
  # The ICT head has UVs: the OBJ is textured with the photo, and opens so.
  import trimesh

  mesh = trimesh.load(tmp_path / "out" / "astronaut_face0.obj", process=False)
  assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
  image = np.asarray(mesh.visual.material.image.convert("RGB"))
  assert image.shape == (outputs.TEXTURE_SIZE,) * 2 + (3,)
  # Her face's skin: the texture's centre is reddish, as the photo is there.
  middle = image[200:312, 200:312].reshape(-1, 3).astype(int)
  assert np.median(middle[:, 0] - middle[:, 2]) > 20
  # Only what is asked is written.
  summary = reconstruct.reconstruct(config, path, str(photo), str(tmp_path / "json_only"),
                                    progress=False, outputs=("json",))
  assert summary.faces == 1
  assert sorted(os.listdir(tmp_path / "json_only")) == ["astronaut_face0.json", "summary.json"]
  with pytest.raises(ValueError, match="--outputs"):
    reconstruct.reconstruct(config, path, str(photo), str(tmp_path / "x"), outputs=("gif",))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEV_DIR), reason="needs ../shared/data/aflw2000-3d-dev")
def test_the_shipped_run_beats_a_constant_layout_on_dev_photos(shipped, tmp_path):
  """50 AFLW2000-3D dev photos of all yaws, ground-truth crops: the shipped
  network's NME is below that of one constant layout, the mean of the
  other 350 photos' landmarks in their crops (what a network that ignores
  the photo would learn at best; the quick-start network was no better)."""
  config, path = shipped
  size = config.image_size
  pairs = mat_folders.find_pairs(DEV_DIR)
  chosen = set(range(0, len(pairs), 8))
  folder = tmp_path / "dev"
  folder.mkdir()
  in_crops, squares, truths = [], [], []
  for k, (image, mat) in enumerate(pairs):
    truth = mat_folders.read_labels(mat, layout=None).landmarks
    square = cropping.square_from_landmarks(truth, cropping.GROUND_TRUTH_FILL)
    if k in chosen:
      squares.append(square)
      truths.append(truth)
      for source in (image, mat):
        os.symlink(os.path.abspath(source), folder / os.path.basename(source))
    else:
      scale, offset = cropping.crop_transform(square, size)
      in_crops.append(np.asarray(truth) * scale + offset)
  layout = np.mean(in_crops, axis=0)
  constant = evaluate.landmark_nme(
      np.stack([cropping.to_photo(layout, square, size) for square in squares]),
      np.stack(truths))
  network = evaluate.evaluate_folder(config, path, str(folder))["ground_truth_crops"]
  assert sum(network[f"count {b}"] for b in ("[0,30]", "[30,60]", "[60,90]")) == len(chosen)
  assert network["all"] < 100 * constant.mean() - 1.0, (network, 100 * constant.mean())


def _frontal_dev_crops(count: int, size: int):
  """(crops, landmarks in them) of the frontal faces (|yaw| under 30
  degrees) among the first `count` dev photos, in their ground-truth crops."""
  crops, truths = [], []
  for _, labels, photo in evaluate.read_labelled_photos(mat_folders.find_pairs(DEV_DIR)[:count],
                                                        []):
    if abs(np.degrees(labels.params[1])) < 30:
      truth = labels.landmarks[:, :2]
      square = cropping.square_from_landmarks(truth, cropping.GROUND_TRUTH_FILL)
      crops.append(cropping.crop(photo, square, size))
      scale, offset = cropping.crop_transform(square, size)
      truths.append(truth * scale + offset)
  return crops, truths


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEV_DIR), reason="needs ../shared/data/aflw2000-3d-dev")
def test_upright_fits_read_rolled_faces_better(shipped):
  """Frontal dev faces in their ground-truth crops turned 25 degrees either
  way: fitted again upright (`FitOptions.upright`, the default; not focused
  either way), their landmarks are nearer the labels (turned with the
  crops) than from one fit, and the fits' in-plane angles follow the turn."""
  config, path = shipped
  size = config.image_size
  crops, truths = _frontal_dev_crops(48, size)
  count = len(crops)
  assert count >= 20
  angles = np.radians(np.where(np.arange(count) % 2 == 0, 25.0, -25.0)).astype(np.float32)
  turned = np.asarray(preprocessing.rotate_images(np.stack(crops), angles))
  # The labels turned with the crops: counter-clockwise as seen (y up).
  centre = 0.5 * (size - 1)
  x, y = np.stack(truths)[..., 0] - centre, centre - np.stack(truths)[..., 1]
  cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
  labels = np.stack([centre + cos * x - sin * y, centre - (sin * x + cos * y)], axis=-1)
  nme = {}
  for upright in (False, True):
    predictor = inference.Predictor(config, path, batch_size=16, fine=False,
                                    options=inference.FitOptions(upright=upright, focus=0.0))
    fits = predictor(turned)
    nme[upright] = evaluate.landmark_nme(fits.landmarks, labels).mean()
    leans = np.asarray(camera.in_plane_angle(fits.params[:, :params_lib.NUM_POSE]))
    assert np.mean(np.sign(leans) == np.sign(angles)) > 0.9
  assert nme[True] < 0.85 * nme[False], nme


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEV_DIR), reason="needs ../shared/data/aflw2000-3d-dev")
def test_focused_fits_read_frontal_dev_faces_better(shipped):
  """The frontal faces of the first 96 dev photos in their ground-truth
  crops: fitted again with their surroundings blurred (`FitOptions.focus`,
  the default), their landmarks are nearer the labels than without
  (measured: NME 0.0452 against 0.0498)."""
  config, path = shipped
  size = config.image_size
  crops, truths = _frontal_dev_crops(96, size)
  assert len(crops) >= 50
  nme = {}
  for focus in (0.0, inference.FOCUS):
    predictor = inference.Predictor(config, path, batch_size=16, fine=False,
                                    options=inference.FitOptions(focus=focus))
    nme[focus] = evaluate.landmark_nme(predictor(np.stack(crops)).landmarks,
                                       np.stack(truths)).mean()
  assert nme[inference.FOCUS] < 0.95 * nme[0.0], nme


@pytest.mark.slow
def test_the_facerecon_command_reconstructs_photos_and_folders(tmp_path):
  """The console command the install puts beside the interpreter, with the
  shipped model: a photo and a folder in one call; usage errors exit non-zero."""
  import subprocess
  import sys

  command = os.path.join(os.path.dirname(sys.executable), "facerecon")
  if not os.path.exists(command):
    pytest.skip("the facerecon command is not installed (pip install -e .)")
  folder = tmp_path / "more"
  folder.mkdir()
  fileio.write_png_atomic(tmp_path / "astronaut.png", astronaut_photo())
  fileio.write_png_atomic(folder / "again.png", astronaut_photo()[:, ::-1])
  result = subprocess.run([command, "reconstruct", str(tmp_path / "astronaut.png"), str(folder),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "reconstructed 2 faces from 2 of 2 photos" in result.stdout
  for stem in ("astronaut", "again"):
    assert os.path.exists(tmp_path / "out" / f"{stem}_face0.obj"), stem
  result = subprocess.run([command, "evaluate"], capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "needs --input" in result.stderr
  result = subprocess.run([command, "evaluate", str(folder), "--window_shift=0.5"],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "--window_shift: window shift must be in" in result.stderr
  result = subprocess.run([command, "fly"], capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "usage: facerecon" in result.stderr


@pytest.mark.slow
def test_the_python_api_reconstructs_faces_in_image_arrays(shipped, tmp_path):
  """facerecon.Reconstructor() (the shipped model): per face the box,
  score, landmarks, pose, mesh and depth, in the photo's pixels and
  consistent with each other and with what reconstruct writes."""
  import facerecon

  config, path = shipped
  photo = astronaut_photo()
  reconstructor = facerecon.Reconstructor(batch_size=4)
  faces = reconstructor(photo)
  assert len(faces) == 1
  face = faces[0]
  assert face.score > 0.8 and face.box.shape == (4,)
  x, y, w, h = face.box
  assert np.all((face.landmarks >= [x - 0.3 * w, y - 0.3 * h])
                & (face.landmarks <= [x + 1.3 * w, y + 1.3 * h]))
  # The 3-D landmarks are the mesh's landmark vertices, over the 2-D ones.
  np.testing.assert_allclose(face.landmarks_3d[:, :2], face.landmarks, atol=0.02 * w)
  assert face.vertices.shape == (reconstructor.model.num_vertices, 3)
  assert face.triangles.shape == np.asarray(reconstructor.model.triangles).shape
  assert np.all(np.isfinite(face.pose_degrees)) and abs(face.pose_degrees[1]) < 45
  size = preprocessing.fine_image_size(config)  # the run has a FineNet: its photo size
  assert size > config.image_size and face.depth.shape == (size, size)
  assert np.isfinite(face.depth).sum() > 0.1 * size**2
  # The face looks at the viewer: its triangles at the landmarks are
  # counter-clockwise with y up, so clockwise (cross product z < 0) here.
  a, b, c = (face.vertices[face.triangles[:, i]].astype(np.float64) for i in range(3))
  normal_z = np.cross(b - a, c - a)[:, 2]
  front = np.asarray(reconstructor.model.landmark_indices)
  assert np.mean(normal_z[np.isin(face.triangles[:, 0], front)] < 0) > 0.5
  # The same landmarks as reconstruct's files.
  fileio.write_png_atomic(tmp_path / "astronaut.png", photo)
  reconstruct.reconstruct(config, path, str(tmp_path / "astronaut.png"), str(tmp_path / "out"),
                          progress=False)
  np.testing.assert_allclose(np.loadtxt(tmp_path / "out" / "astronaut_face0_landmarks.txt"),
                             face.landmarks, atol=0.01)
  # Grey images, images without a face, and bad arrays.
  import cv2

  grey = reconstructor(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY))
  assert len(grey) == 1 and np.abs(grey[0].landmarks - face.landmarks).mean() < 5
  assert reconstructor(np.full((200, 300, 3), 128, np.uint8)) == []
  with pytest.raises(ValueError, match="uint8"):
    reconstructor(photo.astype(np.float32))
  crop_only = facerecon.Reconstructor(detector=None)(photo[50:250, 130:330])
  assert len(crop_only) == 1 and crop_only[0].score is None


def test_a_run_fine_tunes_the_shipped_coarse_net(shipped, tmp_path):
  """config.coarse.init_from: a new run starts from another run's best
  CoarseNet and keeps its statistics; a run without one, or with other
  networks, is refused by name."""
  config, path = shipped
  config = ml_collections.ConfigDict(config.to_dict())
  config.coarse.init_from = path
  model = face_models.load(config.model)
  surface = morphable.surface(model)
  run = rundir.RunDir(str(tmp_path / "fine_tuned"))
  statistics = rundir.statistics(config, surface, run, training=True)
  shipped_statistics = normalization.load_statistics(os.path.join(path, "statistics.npz"))
  np.testing.assert_array_equal(statistics.param_std, shipped_statistics.param_std)
  assert os.path.exists(run.statistics)
  net = networks.coarse_net(config)
  start = networks.initial_coarse_variables(net, config, None, surface, statistics)
  _, trained, _, _ = networks.load_coarse(config, rundir.RunDir(path))
  for ours, theirs in zip(jax.tree.leaves(start), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(ours, theirs)

  # At another image size: the same weights, and statistics in its pixels
  # (a face normalised in 96-pixel crops is the same numbers in its
  # 128-pixel crop).
  larger = ml_collections.ConfigDict(config.to_dict())
  larger.image_size = config.image_size * 4 // 3
  resized = rundir.statistics(larger, surface, rundir.RunDir(str(tmp_path / "larger")),
                              training=True)
  ratio = larger.image_size / config.image_size
  faces = np.asarray(shipped_statistics.param_mean) + np.asarray(
      shipped_statistics.param_std) * np.random.default_rng(0).normal(
          size=(5, statistics.param_mean.size))
  faces_larger = faces.copy()
  faces_larger[:, :params_lib.NUM_POSE] = camera.pose_after_image_similarity(
      faces[:, :params_lib.NUM_POSE], ratio, np.full(2, (ratio - 1) / 2), config.image_size,
      new_height=larger.image_size)
  np.testing.assert_allclose(normalization.normalize_params(faces_larger, resized),
                             normalization.normalize_params(faces, shipped_statistics),
                             rtol=1e-4, atol=1e-4)
  start = networks.initial_coarse_variables(networks.coarse_net(larger), larger, None, surface,
                                            resized)
  for ours, theirs in zip(jax.tree.leaves(start), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(ours, theirs)

  config.coarse.init_from = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="init_from.*nothing"):
    networks.initial_coarse_variables(net, config, None, surface, statistics)
  config.coarse.init_from = path
  config.coarse.backbone_kwargs.width = 0.25
  with pytest.raises(ValueError, match="init_from"):
    networks.initial_coarse_variables(networks.coarse_net(config), config, None, surface,
                                      statistics)


def test_a_run_adds_iterations_to_the_shipped_coarse_net(shipped):
  """config.coarse.init_from with more iterations: the trained one kept, the
  new one a copy of its backbone with a zero head, so the grown network
  starts with the same estimates; fewer iterations are refused."""
  config, path = shipped
  config = ml_collections.ConfigDict(config.to_dict())
  config.coarse.init_from = path
  config.coarse.num_iterations = 2
  model = face_models.load(config.model)
  surface = morphable.surface(model)
  statistics = normalization.load_statistics(os.path.join(path, "statistics.npz"))
  net = networks.coarse_net(config)
  grown = networks.initial_coarse_variables(net, config, None, surface, statistics)
  trained_config = rundir.resolve_config(rundir.RunDir(path))
  trained_net, trained, _, _ = networks.load_coarse(trained_config, rundir.RunDir(path))

  def without_head(iteration):
    return {part: tree for part, tree in iteration.items() if part != "head"}

  for collection in ("params", "batch_stats"):
    first = trained[collection]["iteration_1"]
    jax.tree.map(np.testing.assert_array_equal, grown[collection]["iteration_1"], first)
    jax.tree.map(np.testing.assert_array_equal,
                 without_head(grown[collection]["iteration_2"]), without_head(first))
  head = jax.tree.leaves(grown["params"]["iteration_2"]["head"])
  assert head and not any(np.any(leaf) for leaf in head)

  images = np.random.default_rng(0).normal(
      size=(2, config.image_size, config.image_size, 3)).astype(np.float32)
  estimates = net.apply(grown, images, surface, statistics)
  trained_estimates = trained_net.apply(trained, images, surface, statistics)
  assert estimates.shape[0] == 2
  np.testing.assert_allclose(estimates[1], trained_estimates[0], atol=1e-5)

  record = rundir.read_record(rundir.RunDir(path))
  assert networks.trained_iterations(config, record, "the shipped run") == 1
  record["config"]["coarse"]["num_iterations"] = 3
  with pytest.raises(ValueError, match="num_iterations: the shipped run has 3 iterations, more "
                                       "than the 2 asked"):
    networks.trained_iterations(config, record, "the shipped run")
