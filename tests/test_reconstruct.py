"""--mode=reconstruct and --mode=evaluate on a tiny trained run: every output
file, failures reported, the run's recorded config, AFLW2000-3D-style
folders, the synthetic test split."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import plyfile
import pytest
import scipy.io
from test_cropping import astronaut_photo
import trimesh

from conftest import ROOT
from data_pipeline import ship_run
from facerecon import camera
from facerecon import evaluate
from facerecon import export
from facerecon import face_models
from facerecon import face_render
from facerecon import inference
from facerecon import morphable
from facerecon import outputs
from facerecon import reconstruct
from facerecon import rundir
from facerecon import texture
from facerecon import training
from facerecon.data import cropping
from facerecon.data import mat_folders
from facerecon.data import photos
from facerecon.data import preprocessing
from facerecon.data import sources
import tiny

# The run the tests reconstruct with: 2 CoarseNet steps, then 2 FineNet steps.
CONFIG = dict(coarse__num_train_steps=2, coarse__eval_every=2, fine__num_train_steps=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny CoarseNet + FineNet run (2 steps each)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  training.train_and_evaluate(tiny.config(**CONFIG), workdir)
  return workdir


def _read_obj(path):
  """(vertices, triangles, colours in [0, 1]) as trimesh reads them."""
  mesh = trimesh.load(path, process=False, maintain_order=True)
  colours = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
  return np.asarray(mesh.vertices), np.asarray(mesh.faces), colours


def _read_ply(path):
  """(vertices, triangles, colours in [0, 1]) as plyfile reads them."""
  data = plyfile.PlyData.read(path)
  vertex = data["vertex"]
  vertices = np.stack([vertex["x"], vertex["y"], vertex["z"]], -1)
  colours = np.stack([vertex["red"], vertex["green"], vertex["blue"]], -1) / 255.0
  return vertices, np.stack(data["face"]["vertex_indices"]), colours


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
  """A real face in many forms, plus photos that must fail."""
  folder = tmp_path_factory.mktemp("photos")
  photo = cv2.cvtColor(astronaut_photo(), cv2.COLOR_RGB2BGR)
  cv2.imwrite(str(folder / "astronaut.jpg"), photo)
  os.makedirs(folder / "more")
  grey16 = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
  cv2.imwrite(str(folder / "more" / "grey16.png"), grey16)
  cv2.imwrite(str(folder / "more" / "rgba.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA))
  cv2.imwrite(str(folder / "more" / "huge.png"), cv2.resize(photo, (3000, 3000)))
  cv2.imwrite(str(folder / "tiny.png"), cv2.resize(photo, (9, 9)))
  cv2.imwrite(str(folder / "wall.png"), np.full((120, 160, 3), 90, np.uint8))
  (folder / "broken.jpg").write_bytes(b"not an image")
  (folder / "notes.txt").write_text("not a photo, not looked at")
  return str(folder)


def test_reconstruct_writes_every_output_and_reports_failures(run_dir, photo_folder, tmp_path):
  config = tiny.config(**CONFIG)
  out = str(tmp_path / "out")
  summary = reconstruct.reconstruct(config, run_dir, photo_folder, out, batch_size=2,
                                    progress=False)
  assert summary.photos == 7 and summary.faces == 4
  assert sorted((os.path.basename(p), r) for p, r in summary.failures) == [
      ("broken.jpg", "cannot decode the image"), ("tiny.png", "no face found"),
      ("wall.png", "no face found")]
  with open(os.path.join(out, "summary.json")) as f:
    assert len(json.load(f)["failed"]) == 3
  model = face_models.load(config.model)
  for stem, size in (("astronaut", 512), ("more/grey16", 512), ("more/rgba", 512),
                     ("more/huge", 3000)):
    base = os.path.join(out, stem + "_face0")
    with open(base + ".json") as f:
      record = json.load(f)
    assert record["depth"]["fine"] is True
    params = np.asarray(record["params"], np.float32)
    assert params.shape == (model.layout.size,)
    landmarks = np.loadtxt(base + "_landmarks.txt")
    np.testing.assert_allclose(landmarks, record["landmarks"], atol=1e-3)
    landmarks_3d = np.loadtxt(base + "_landmarks3d.txt")
    assert landmarks_3d.shape == (68, 3)
    np.testing.assert_allclose(landmarks_3d[:, :2], landmarks, atol=0.01 * size)
    np.testing.assert_allclose([record["pose_degrees"][k] for k in ("pitch", "yaw", "roll")],
                               np.degrees(record["params"][:3]), atol=1e-4)
    # The photo-frame parameters put the landmarks where the file says.
    projected = camera.project_landmarks(morphable.vertices_from_params(model, params),
                                         model.landmark_indices, params[:7], size)
    np.testing.assert_allclose(projected, landmarks, atol=0.01 * size)
    # Both meshes hold the fit, photo pixels with y up: the landmark vertices
    # are the landmarks.
    for vertices, triangles, colours in (_read_obj(base + ".obj"), _read_ply(base + ".ply")):
      assert vertices.shape == (model.num_vertices, 3) and colours.shape == vertices.shape
      np.testing.assert_array_equal(triangles, np.asarray(model.triangles))
      marks = vertices[np.asarray(model.landmark_indices)]
      np.testing.assert_allclose(np.stack([marks[:, 0], size - 1 - marks[:, 1]], -1),
                                 landmarks, atol=0.01 * size)
    depth = np.load(base + "_depth.npy")
    encoded = cv2.imread(base + "_depth.png", cv2.IMREAD_UNCHANGED)
    decoded, mask = export.decode_depth_png16(encoded, record["depth"])
    assert depth.shape == (config.image_size,) * 2 and mask.sum() > 20
    np.testing.assert_array_equal(mask, np.isfinite(depth))
    np.testing.assert_allclose(decoded[mask], depth[mask], atol=1e-3 * np.ptp(depth[mask]))
    overlay = cv2.imread(os.path.join(out, stem + "_overlay.png"))
    assert overlay.shape[:2] == (min(size, outputs.PREVIEW_SIDE),) * 2
    # PNCC and normals: the face on black, where the landmarks are.
    shrink = overlay.shape[0] / size
    for name in ("pncc", "normals"):
      image = cv2.imread(os.path.join(out, stem + f"_{name}.png"))
      assert image.shape == overlay.shape
      rows, columns = np.nonzero(image.max(axis=2) > 0)
      assert len(rows) > 20
      np.testing.assert_allclose([columns.mean(), rows.mean()],
                                 landmarks.mean(axis=0) * shrink, atol=0.15 * size * shrink)
  # The same face in colour, grey 16-bit and RGBA: about the same fit.
  fits = [json.load(open(os.path.join(out, s + "_face0.json")))["landmarks"]
          for s in ("astronaut", "more/grey16", "more/rgba")]
  np.testing.assert_allclose(fits[2], fits[0], atol=2.0)
  assert not [n for n in os.listdir(out) if n.startswith(".")]  # no partial files


def test_finenet_runs_only_for_outputs_that_carry_its_detail(run_dir, photo_folder, tmp_path):
  """Landmarks and JSON only: the run's FineNet is left out (the JSON says
  so), and the fit is CoarseNet's as with every output."""
  config = tiny.config(**CONFIG)
  photo = os.path.join(photo_folder, "astronaut.jpg")
  both = {}
  for outputs_asked in (("landmarks", "json"), ("json", "depth")):
    out = str(tmp_path / "_".join(outputs_asked))
    reconstruct.reconstruct(config, run_dir, photo, out, progress=False, outputs=outputs_asked)
    with open(os.path.join(out, "astronaut_face0.json")) as f:
      both[outputs_asked] = json.load(f)
  assert both[("landmarks", "json")]["depth"]["fine"] is False
  assert both[("json", "depth")]["depth"]["fine"] is True
  np.testing.assert_allclose(both[("landmarks", "json")]["landmarks"],
                             both[("json", "depth")]["landmarks"], atol=1e-3)


def test_reconstruct_fits_whole_batches_and_photos_split_between_them(tmp_path, monkeypatch):
  """Faces go to the networks `batch_size` at a time (never more, so no
  padded batch mid-run); a photo whose faces span two batches is written
  once, whole, as with any batch size."""
  config = tiny.config()
  model = face_models.load(config.model)
  size = config.image_size
  calls = []

  class FixedFits:
    """Every crop gets the same, framed, mean face."""

    def __init__(self, config, workdir, batch_size, **options):
      self.batch_size, self.model, self.has_fine, self.size = batch_size, model, False, size

    def __call__(self, crops):
      calls.append(len(crops))
      params = np.zeros((len(crops), model.layout.size), np.float32)
      vertices = np.asarray(morphable.vertices_from_params(model, params[:1]))
      params[:, :7] = camera.framing_pose(vertices[0], np.zeros(3), size, size, fill=0.6)
      landmarks = camera.project_landmarks(vertices, model.landmark_indices, params[:1, :7],
                                           size)
      depth = np.ones((len(crops), size, size), np.float32)
      mask = np.zeros(depth.shape, bool)
      mask[:, 8:24, 8:24] = True
      return inference.FaceFits(params, np.repeat(np.asarray(landmarks), len(crops), 0),
                                np.repeat(vertices, len(crops), 0), depth, depth, mask)

  class OneFacePerHundredColumns:
    def crop_squares(self, photo):
      boxes = np.array([(100.0 * k + 10, 10.0, 80.0, 80.0)
                        for k in range(photo.shape[1] // 100)])
      return boxes, [cropping.square_from_detection(box) for box in boxes], np.ones(len(boxes))

  photos = tmp_path / "photos"
  photos.mkdir()
  faces = {"a": 3, "b": 2, "c": 3}
  for name, count in faces.items():
    cv2.imwrite(str(photos / f"{name}.png"), np.full((100, 100 * count, 3), 120, np.uint8))
  monkeypatch.setattr(inference, "Predictor", FixedFits)
  outputs = {}
  for batch_size in (4, 16):
    calls.clear()
    out = tmp_path / f"out{batch_size}"
    summary = reconstruct.reconstruct(config, "unused", str(photos), str(out),
                                      batch_size=batch_size,
                                      detector=OneFacePerHundredColumns(), progress=False)
    assert summary.faces == 8 and not summary.failures
    assert calls == ([4, 4] if batch_size == 4 else [8])
    outputs[batch_size] = {
        name: (cv2.imread(str(out / f"{name}_overlay.png")),
               [json.load(open(out / f"{name}_face{k}.json"))["params"] for k in range(count)])
        for name, count in faces.items()}
  for name in faces:
    (overlay_4, params_4), (overlay_16, params_16) = outputs[4][name], outputs[16][name]
    np.testing.assert_allclose(params_4, params_16)
    # Batched renders may round a pixel differently.
    assert np.abs(overlay_4.astype(int) - overlay_16).max() <= 1
    assert (overlay_4 != 120).any()  # the face is drawn in


def test_predictions_do_not_depend_on_the_batching(run_dir):
  config = tiny.config(**CONFIG)
  crops = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
  one = inference.Predictor(config, run_dir, batch_size=1)(crops)
  four = inference.Predictor(config, run_dir, batch_size=4)(crops)
  for a, b in zip(one, four):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  assert not np.allclose(one.depth, one.coarse_depth)  # FineNet ran
  with pytest.raises(ValueError, match=r"crops must be \[n, 32, 32, 3\]"):
    inference.Predictor(config, run_dir)(crops[:, :16])


def test_fits_averaged_with_their_mirror_images(run_dir):
  """`regress_mirrored` averages a crop's fit with the mirrored fit of its
  mirror image, so (with maps that are their own inverse) the mirror image
  gets exactly the mirrored fit; the Predictor uses it only for a symmetric
  model (the embedded model's expressions are not)."""
  config = tiny.config(**CONFIG)
  crops = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
  predictor = inference.Predictor(config, run_dir, batch_size=4)
  assert predictor.mirror is None
  layout = predictor.model.layout
  maps = morphable.MirrorMaps(np.eye(layout.num_shape, dtype=np.float32)[::-1],
                              np.eye(layout.num_expression, dtype=np.float32))
  fit = jax.jit(lambda crops, maps: inference.regress_mirrored(
      predictor.coarse_net, predictor.coarse_variables, crops, predictor.model,
      predictor.statistics, predictor.start_face, config.image_size, maps))
  params, flipped = np.asarray(fit(crops, maps)), np.asarray(fit(crops[:, :, ::-1], maps))
  np.testing.assert_allclose(
      flipped, np.asarray(morphable.mirror_params(params, layout, maps, 32)), atol=1e-4)
  np.testing.assert_allclose(flipped[:, :6], params[:, :6] * [1, -1, -1, -1, 1, 1]
                             + [0, 0, 0, 31, 0, 0], atol=1e-4)
  plain = inference.Predictor(config, run_dir, batch_size=4)(crops).params
  assert np.abs(plain - params).max() > 1e-3  # the mirror image changed the fit


def test_a_runs_pose_calibration_turns_its_fits(run_dir, tmp_path):
  """A run's pose_calibration.json: its pitch added to each fit, weighted by
  the fit's |yaw| (none beyond the taper), the face turned about its
  landmarks' centroid (they stay where they were); `calibrate=False` leaves
  it out; the evaluation records it, ship_run ships it, and a broken file
  is refused naming the file and the field."""
  config = tiny.config(**CONFIG)
  crops = np.random.default_rng(3).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
  plain = inference.Predictor(config, run_dir, batch_size=4)(crops)
  calibrated_run = tmp_path / "calibrated"
  shutil.copytree(run_dir, calibrated_run)
  calibration = rundir.RunDir(str(calibrated_run)).pose_calibration
  with open(calibration, "w") as f:
    json.dump({"pitch": -10.0, "yaw_taper": 60.0}, f)
  predictor = inference.Predictor(config, str(calibrated_run), batch_size=4)
  assert predictor.calibration == inference.PoseCalibration(-10.0, 60.0)
  fits = predictor(crops)
  weight = np.clip(1 - np.degrees(np.abs(plain.params[:, 1])) / 60.0, 0.0, 1.0)
  assert weight.max() > 0.5
  np.testing.assert_allclose(fits.params[:, 0] - plain.params[:, 0],
                             np.radians(-10.0) * weight, atol=1e-5)
  np.testing.assert_allclose(fits.params[:, 1:3], plain.params[:, 1:3], atol=1e-6)
  np.testing.assert_allclose(fits.params[:, 7:], plain.params[:, 7:], atol=1e-6)
  np.testing.assert_allclose(fits.landmarks.mean(1), plain.landmarks.mean(1), atol=1e-3)
  assert np.abs(fits.landmarks - plain.landmarks).max() > 0.05  # the face turned
  unturned = inference.Predictor(config, str(calibrated_run), batch_size=4,
                                 options=inference.FitOptions(calibrate=False))
  np.testing.assert_allclose(unturned(crops).params, plain.params, atol=1e-6)

  folder = tmp_path / "AFLW2000"
  folder.mkdir()
  _write_aflw_style(str(folder), 2, seed=3)
  results = evaluate.evaluate_folder(config, str(calibrated_run), str(folder))
  assert results["pose_calibration"] == {"pitch": -10.0, "yaw_taper": 60.0}
  assert evaluate.evaluate_folder(config, run_dir, str(folder))["pose_calibration"] is None
  ship_run.ship(str(calibrated_run), str(tmp_path / "shipped"))
  assert os.path.exists(tmp_path / "shipped" / rundir.POSE_CALIBRATION_FILE)

  for contents, message in (("{", "is not JSON"),
                            ('{"pitch": "-10", "yaw_taper": 60}', "field 'pitch'"),
                            ('{"pitch": -10}', "field 'yaw_taper'"),
                            ('{"pitch": -10, "yaw_taper": 0}', "field 'yaw_taper'"),
                            ("[1, 2]", "expected a JSON object")):
    with open(calibration, "w") as f:
      f.write(contents)
    with pytest.raises(ValueError, match=message) as error:
      inference.Predictor(config, str(calibrated_run))
    assert calibration in str(error.value)


def test_the_fit_flags_reach_the_evaluation(run_dir, tmp_path):
  """--mode=evaluate with --sharpen=0 --nocalibrate --window_shift=0.1
  --noupright --focus=0 (one FitOptions, `cli.fit_options`): the
  evaluation's JSON records the fits as neither sharpened nor calibrated,
  though the run has a pose calibration, nor made again upright or focused."""
  from absl import flags
  from absl.testing import flagsaver

  from facerecon import cli

  calibrated_run = tmp_path / "calibrated"
  shutil.copytree(run_dir, calibrated_run)
  with open(rundir.RunDir(str(calibrated_run)).pose_calibration, "w") as f:
    json.dump({"pitch": -10.0, "yaw_taper": 60.0}, f)
  folder = tmp_path / "AFLW2000"
  folder.mkdir()
  _write_aflw_style(str(folder), 2, seed=3)
  with flagsaver.flagsaver():  # the flags parsed here are restored after
    flags.FLAGS(["main.py", "--mode=evaluate", f"--workdir={calibrated_run}",
                 f"--input={folder}", f"--output={tmp_path / 'results'}", "--detector=none",
                 "--compilation_cache=", "--sharpen=0", "--nocalibrate", "--window_shift=0.1",
                 "--noupright", "--focus=0"])
    assert cli._apply_trained(None) == 0  # pylint: disable=protected-access
  with open(tmp_path / "results" / "evaluation_AFLW2000.json") as f:
    results = json.load(f)
  assert results["sharpen"] == 0.0 and results["pose_calibration"] is None
  assert results["window_shift"] == 0.1 and results["ground_truth_crops_pose"]["count"] == 2
  assert results["upright"] is False and results["focus"] == 0.0


def test_coarsenets_input_is_sharpened_as_asked(run_dir):
  """`sharpen` 0 leaves CoarseNet's input as it was; the default sharpens it
  (`preprocessing.unsharp_mask` inside `network_images`), which changes the
  fits; a sharpening out of range is refused."""
  config = tiny.config(**CONFIG)
  crops = np.random.default_rng(4).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
  plain = inference.Predictor(config, run_dir, batch_size=2, options=inference.FitOptions(
      window_shift=0.0, sharpen=0.0, upright=False, focus=0.0))
  sharp = inference.Predictor(config, run_dir, batch_size=2,
                              options=inference.FitOptions(window_shift=0.0, upright=False,
                                                           focus=0.0))
  assert sharp.sharpen == sharp.options.sharpen == inference.SHARPEN > 0
  fit = jax.jit(lambda crops, sharpen: inference.regress(
      plain.coarse_net, plain.coarse_variables, crops, plain.model, plain.statistics,
      plain.start_face, config.image_size, sharpen), static_argnums=1)
  np.testing.assert_allclose(plain(crops).params, np.asarray(fit(crops, 0.0)),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(sharp(crops).params, np.asarray(fit(crops, inference.SHARPEN)),
                             rtol=1e-5, atol=1e-4)
  assert np.abs(sharp(crops).params - plain(crops).params).max() > 1e-3


def test_fit_options_refuse_bad_values_naming_the_field():
  """FitOptions: the defaults are the module's; a window shift or a
  sharpening out of range is refused, the message starting with the field's
  name (the command line's flag); recorded as a dict they make the same
  options again."""
  defaults = inference.FitOptions()
  assert (defaults.mirror, defaults.window_shift, defaults.calibrate, defaults.sharpen,
          defaults.upright, defaults.focus) == (True, inference.WINDOW_SHIFT, True,
                                                inference.SHARPEN, True, inference.FOCUS)
  for field, bad, message in (("window_shift", -0.01, "window shift must be in"),
                              ("window_shift", 0.25, "window shift must be in"),
                              ("sharpen", -1.0, r"must be in \[0, 5\]"),
                              ("sharpen", 5.5, r"must be in \[0, 5\]"),
                              ("sharpen", float("nan"), r"must be in \[0, 5\]"),
                              ("focus", -0.5, r"must be in \[0, 10\]"),
                              ("focus", 11.0, r"must be in \[0, 10\]")):
    with pytest.raises(ValueError, match=f"^{field}: {message}"):
      inference.FitOptions(**{field: bad})
  options = inference.FitOptions(mirror=False, window_shift=0, calibrate=False, sharpen=0,
                                 upright=False, focus=2)
  record = options.as_dict()
  assert record == {"mirror": False, "window_shift": 0.0, "calibrate": False, "sharpen": 0.0,
                    "upright": False, "focus": 2.0}
  assert isinstance(record["sharpen"], float) and json.loads(json.dumps(record)) == record
  assert inference.FitOptions(**record) == options
  with pytest.raises(TypeError, match="options must be a FitOptions"):
    inference.Predictor(tiny.config(), None, options={"sharpen": 0.0})


def test_focused_crops_blur_only_outside_frontal_faces_outlines():
  """`focused_crops`: inside the face's outline (the jaw, then the brows,
  grown about the landmarks' mean) the crop is as it was; well outside it,
  the crop blurred; a fit turned FOCUS_MAX_YAW or more keeps its crop."""
  size, centre, radius = 64, 31.5, 12.0
  # The jaw along the lower half of a circle, the brows along its upper half.
  jaw = np.linspace(np.pi, 2 * np.pi, 17)
  brows = np.linspace(0.8 * np.pi, 0.2 * np.pi, 10)  # 17 on the left, 26 on the right
  outline = np.concatenate([jaw, brows])
  ring = np.stack([centre + radius * np.cos(outline), centre - radius * np.sin(outline)], -1)
  landmarks = np.full((68, 2), centre)
  landmarks[:27] = ring
  landmarks[27:] = centre + np.random.default_rng(5).uniform(-2, 2, (41, 2))
  crops = np.random.default_rng(6).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  yaw = np.radians([10.0, inference.FOCUS_MAX_YAW + 1.0])
  got = np.asarray(inference.focused_crops(jnp.asarray(crops),
                                           jnp.asarray(np.stack([landmarks] * 2), jnp.float32),
                                           jnp.asarray(yaw, jnp.float32), 2.0))
  assert got.dtype == np.uint8
  rows, columns = np.mgrid[:size, :size]
  distance = np.hypot(rows - centre, columns - centre)
  near, far = distance < 0.8 * radius, distance > 1.2 * inference.FOCUS_GROWTH * radius + 2
  np.testing.assert_array_equal(got[0][near], crops[0][near])
  blurred = np.round(np.asarray(preprocessing.gaussian_blur(crops[0].astype(np.float32), 2.0)))
  np.testing.assert_array_equal(got[0][far], blurred[far].astype(np.uint8))
  assert np.abs(got[0][far].astype(float) - crops[0][far]).mean() > 20
  np.testing.assert_array_equal(got[1], crops[1])


def test_window_offsets():
  """The crop alone where the shift rounds to no pixel; else four windows
  moved by the rounded shift; shifts outside [0, 0.25) refused."""
  assert inference.window_offsets(128, 0.0) == ((0, 0),)
  assert inference.window_offsets(10, 0.03) == ((0, 0),)
  assert inference.window_offsets(128, 0.03) == ((0, 0), (4, 0), (-4, 0), (0, 4), (0, -4))
  for bad in (-0.01, 0.25):
    with pytest.raises(ValueError, match="window shift"):
      inference.window_offsets(128, bad)


def test_shifted_windows_show_the_crop_moved():
  """Window pixel p shows crop pixel p + offset; beyond the crop its edge
  pixels repeat; windows come window-major."""
  crops = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
  offsets = ((0, 0), (2, 0), (0, -3))
  windows = np.asarray(inference.shifted_windows(crops, offsets)).reshape(3, 2, 8, 8, 3)
  np.testing.assert_array_equal(windows[0], crops)
  np.testing.assert_array_equal(windows[1][:, :, :6], crops[:, :, 2:])
  np.testing.assert_array_equal(windows[1][:, :, 6:], np.repeat(crops[:, :, 7:], 2, axis=2))
  np.testing.assert_array_equal(windows[2][:, 3:], crops[:, :5])
  np.testing.assert_array_equal(windows[2][:, :3], np.repeat(crops[:, :1], 3, axis=1))


def test_window_fits_are_averaged_in_the_crop_frame(run_dir):
  """Each window's fit, mapped into the crop's frame, puts the landmarks
  where the window's fit puts them plus the window's offset; the average of
  the mapped fits is the Predictor's fit, which the windows change."""
  config = tiny.config(**CONFIG)
  crops = np.random.default_rng(2).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
  offsets = ((0, 0), (3, 0), (0, -2))
  predictor = inference.Predictor(config, run_dir, batch_size=2, fine=False)
  model, size = predictor.model, config.image_size

  def fit(crops, offsets):
    return np.asarray(inference.regress_averaged(
        predictor.coarse_net, predictor.coarse_variables, jax.numpy.asarray(crops), model,
        predictor.statistics, predictor.start_face, size, None, offsets))

  mapped = []
  for dx, dy in offsets:
    window = np.asarray(inference.shifted_windows(crops, ((dx, dy),)))
    own = fit(window, ((0, 0),))
    pose = camera.pose_after_image_similarity(own[:, :7], 1.0, np.array([dx, dy], np.float32),
                                              size)
    mapped.append(np.concatenate([np.asarray(pose), own[:, 7:]], axis=-1))
    np.testing.assert_allclose(
        np.asarray(face_render.project_landmarks(model, mapped[-1], size)),
        np.asarray(face_render.project_landmarks(model, own, size)) + [dx, dy], atol=1e-3)
  averaged = fit(crops, offsets)
  np.testing.assert_allclose(averaged, np.mean(mapped, axis=0), rtol=1e-4, atol=1e-4)
  windows = inference.Predictor(config, run_dir, batch_size=2, fine=False,
                                options=inference.FitOptions(window_shift=0.1))
  assert windows.window_offsets == ((0, 0), (3, 0), (-3, 0), (0, 3), (0, -3))
  plain = inference.Predictor(config, run_dir, batch_size=2, fine=False,
                              options=inference.FitOptions(window_shift=0.0))
  assert np.abs(windows(crops).params - plain(crops).params).max() > 1e-3


def _write_aflw_style(folder, count: int, seed: int, shape_entries: int = 199):
  """Synthetic faces saved as AFLW2000-3D saves its photos: <stem>.jpg and
  a .mat with 1-based MATLAB pixel coordinates (`shape_entries` shape
  coefficients: another model's fit when not the run's). Returns their yaws."""
  model = face_models.load("embedded:25")
  batch = next(sources.SyntheticStream(model, 120, count, seed, per_host=False))
  for k in range(count):
    params = batch["params"][k].astype(np.float64)
    pose = params[:7].copy()
    pose[3:5] += 1.0
    cv2.imwrite(os.path.join(folder, f"image{k:05d}.jpg"),
                cv2.cvtColor(batch["image"][k], cv2.COLOR_RGB2BGR))
    points = np.concatenate([batch["landmarks"][k].T + 1.0, np.zeros((1, 68))])
    scipy.io.savemat(os.path.join(folder, f"image{k:05d}.mat"), {
        "Pose_Para": pose[None], "Shape_Para": params[7:7 + shape_entries, None],
        "Exp_Para": params[206:, None], "pt3d_68": points, "roi": np.zeros((1, 4))})
  return np.degrees(batch["params"][:, 1]), batch["landmarks"]


def test_detail_offsets_move_the_visible_vertices_only():
  """FineNet's depth 2 pixels above the coarse depth everywhere on the face:
  the vertices the depth map sees move 2 pixels, those it does not see (the
  far side of a face turned 60 degrees) stay."""
  model = face_models.load("embedded:25")
  size = 64
  vertices = np.asarray(morphable.vertices_from_params(
      model, np.zeros((1, model.layout.size), np.float32)))[0]
  angles = np.radians([0.0, 60.0, 0.0])
  params = np.zeros(model.layout.size, np.float32)
  params[:7] = camera.framing_pose(vertices, angles, size, size, fill=0.7)
  face = face_render.render_face(model, params[None], None, size, size)
  depth, mask = np.asarray(face.depth[0]), np.asarray(face.mask[0])
  fit = inference.FaceFits(params, None, vertices, depth, np.where(mask, depth + 2.0, 0.0),
                           mask)
  offsets = outputs.detail_offsets(fit, size)
  posed = np.asarray(camera.transform_scaled_orthographic(vertices, params[:7]))
  rows = np.clip(np.rint(size - 1 - posed[:, 1]).astype(int), 0, size - 1)
  columns = np.clip(np.rint(posed[:, 0]).astype(int), 0, size - 1)
  hidden = posed[:, 2] < depth[rows, columns] - 3.0
  assert hidden.sum() > 0.1 * len(vertices)
  np.testing.assert_array_equal(offsets[hidden], 0.0)
  seen = offsets != 0
  assert seen.sum() > 0.3 * len(vertices)
  # Bilinear samples next to the silhouette mix in the 0 off the face.
  assert np.median(offsets[seen]) == pytest.approx(2.0)
  assert offsets.min() >= 0.0 and offsets.max() <= 2.0 + 1e-5


def test_detail_maps_carry_the_detail_into_the_uv_layout(tmp_path):
  """The real head facing the viewer, FineNet's depth 2 crop pixels above
  the coarse depth on the face: the displacement map is 2 crop pixels
  (scaled to the photo's) where the crop shows the face and 0 on the back
  of the head; the 16-bit PNG says the same at its scale; the normal map is
  the depth map's normals where seen, the mesh's elsewhere."""
  model = morphable.surface(face_models.load("ict"))
  size, side = 64, 200.0
  vertices = np.asarray(morphable.vertices_from_params(
      model, np.zeros((1, model.layout.size), np.float32)))[0]
  params = np.zeros(model.layout.size, np.float32)
  params[:7] = camera.framing_pose(vertices, np.zeros(3), size, size, fill=0.6)
  face = face_render.render_face(model, params[None], None, size, size)
  depth, mask = np.asarray(face.depth[0]), np.asarray(face.mask[0])
  fit = inference.FaceFits(params, None, vertices, depth, np.where(mask, depth + 2.0, 0.0),
                           mask)
  stem = str(tmp_path / "face")
  uv = np.asarray(morphable.vertex_uv(model))
  info = outputs.write_detail_maps(stem, fit, size, side, np.asarray(model.triangles), uv)
  displacement = np.load(stem + "_displacement.npy")
  assert displacement.shape == (outputs.TEXTURE_SIZE,) * 2
  seen = displacement != 0
  assert 0.05 < seen.mean() < 0.95
  assert np.median(displacement[seen]) == pytest.approx(2.0 * side / size, rel=1e-4)
  assert displacement.min() >= 0.0 and displacement.max() <= 2.0 * side / size + 1e-4
  levels = cv2.imread(stem + "_displacement.png", cv2.IMREAD_UNCHANGED)
  assert levels.dtype == np.uint16
  per_level = info["displacement_photo_pixels_per_level"]
  np.testing.assert_allclose(
      (levels.astype(np.float64) - info["displacement_zero_level"]) * per_level, displacement,
      atol=per_level)
  normal_map = cv2.imread(stem + "_normal_map.png")[..., ::-1] / 127.5 - 1.0
  # Seen texels: the depth map's normals, which face the viewer.
  assert np.mean(normal_map[seen][:, 2] > 0.0) > 0.97
  # The back of the head (the texels the crop does not show, on the mesh):
  # its own normals, facing away.
  found = texture.texels(np.stack([vertices[:, 0], -vertices[:, 1], vertices[:, 2]], 1),
                         np.asarray(model.triangles), uv, outputs.TEXTURE_SIZE, (1, 1))
  behind = found.covered & ~seen & (found.points[..., 2] < vertices[:, 2].min() + 0.3 * np.ptp(
      vertices[:, 2]))
  assert behind.sum() > 200
  assert np.median(normal_map[behind][:, 2]) < -0.5


def test_nme_and_yaw_bins_follow_the_protocol():
  truth = np.array([[[0.0, 0.0], [4.0, 0.0], [4.0, 9.0]]])  # box 4 x 9: sqrt = 6
  predicted = truth + np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
  np.testing.assert_allclose(evaluate.landmark_nme(predicted, truth), [1.0 / 6.0])
  table = evaluate.yaw_table([0.01, 0.02, 0.03, 0.05, 0.05],
                             [0.0, -30.0, 30.5, 75.0, -120.0])
  assert table["[0,30]"] == pytest.approx(1.5) and table["count [0,30]"] == 2
  assert table["[30,60]"] == pytest.approx(3.0) and table["count [30,60]"] == 1
  assert table["[60,90]"] == pytest.approx(5.0) and table["count [60,90]"] == 2
  assert table["mean"] == pytest.approx(3.1666667)
  assert np.isnan(evaluate.yaw_table([0.01], [10.0])["mean"])  # empty bins show


def test_pose_table_follows_the_head_pose_protocol():
  """Mean absolute and signed errors per angle, wrapped at 180 degrees;
  photos with a label angle beyond 99 degrees are left out."""
  truth = np.array([[10.0, 20.0, 95.0], [-5.0, 0.0, 0.0], [0.0, 120.0, 0.0]])
  predicted = np.array([[14.0, 18.0, -175.0], [-3.0, 6.0, 1.0], [50.0, 50.0, 50.0]])
  table = evaluate.pose_table(predicted, truth)
  assert table["count"] == 2
  assert table["pitch"] == pytest.approx(3.0) and table["bias pitch"] == pytest.approx(3.0)
  assert table["yaw"] == pytest.approx(4.0) and table["bias yaw"] == pytest.approx(2.0)
  # -175 is 185 degrees: 90 from 95, not 270.
  assert table["roll"] == pytest.approx(45.5) and table["bias roll"] == pytest.approx(45.5)
  assert table["MAE"] == pytest.approx((3.0 + 4.0 + 45.5) / 3)


def test_aflw_style_evaluation_of_perfect_fits_is_zero(tmp_path, monkeypatch):
  """The protocol's bookkeeping (crop, fit, map back, NME, pose errors) end
  to end, with a predictor that knows each crop's true landmarks and pose:
  NME 0 and pose errors 0."""
  size = tiny.config().image_size
  # Labels fit with another model than the run's (as AFLW2000-3D's BFM fits
  # are for the ICT head): only their pose and landmarks are read.
  _, landmarks = _write_aflw_style(str(tmp_path), 4, seed=5, shape_entries=40)
  truth_of_crop, pose_of_crop = {}, {}
  for k in range(4):
    photo = photos.read_photo(str(tmp_path / f"image{k:05d}.jpg"))
    square = cropping.square_from_landmarks(landmarks[k], cropping.GROUND_TRUTH_FILL)
    scale, offset = cropping.crop_transform(square, size)
    crop = cropping.crop(photo, square, size).tobytes()
    truth_of_crop[crop] = scale * landmarks[k] + offset
    pose_of_crop[crop] = mat_folders.read_labels(str(tmp_path / f"image{k:05d}.mat"),
                                                 layout=None).params[:7]

  class Oracle:
    model = face_models.load("embedded:25")
    size, has_fine, mirror, calibration = tiny.config().image_size, False, None, None

    def __init__(self, *args, **options):
      pass

    def __call__(self, crops):
      points = np.stack([truth_of_crop[c.tobytes()] for c in crops])
      params = np.stack([pose_of_crop[c.tobytes()] for c in crops])
      return inference.FaceFits(params, points, None, None, None, None)

  monkeypatch.setattr(inference, "Predictor", Oracle)
  results = evaluate.evaluate_folder(tiny.config(), "unused", str(tmp_path))
  assert results["ground_truth_crops"]["all"] == pytest.approx(0.0, abs=1e-4)
  pose = results["ground_truth_crops_pose"]
  assert pose["count"] == 4 and pose["MAE"] == pytest.approx(0.0, abs=1e-4)
  assert sum(results["ground_truth_crops"][f"count {b}"]
             for b in ("[0,30]", "[30,60]", "[60,90]")) == 4
  assert results["skipped"] == []


def test_evaluate_on_aflw_style_folder_and_synthetic_test_split(run_dir, tmp_path):
  """main.py --mode=evaluate with the run's own config: the yaw table
  printed and written as JSON; a corrupt .mat is reported and skipped.
  Then the synthetic test split."""
  folder = tmp_path / "AFLW2000"
  folder.mkdir()
  _write_aflw_style(str(folder), 6, seed=7)
  (folder / "image99999.jpg").write_bytes((folder / "image00000.jpg").read_bytes())
  (folder / "image99999.mat").write_bytes(b"corrupt")
  result = subprocess.run(
      [sys.executable, "main.py", "--mode=evaluate", f"--workdir={run_dir}", f"--input={folder}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "ground-truth crops" in result.stdout and "detector crops" in result.stdout
  assert "pose error (deg)" in result.stdout
  with open(os.path.join(run_dir, "evaluation_AFLW2000.json")) as f:
    results = json.load(f)
  table = results["ground_truth_crops"]
  assert sum(table[f"count {b}"] for b in ("[0,30]", "[30,60]", "[60,90]")) == 6
  assert table["all"] > 0 and results["photos"] == 7
  assert [os.path.basename(s["file"]) for s in results["skipped"]] == ["image99999.jpg"]
  assert results["detector_crops"]["missed"] <= 6
  pose = results["ground_truth_crops_pose"]
  assert pose["count"] == 6 and 0 < pose["MAE"] < 90
  # The run has a FineNet: both depths' shading residuals, printed too.
  residual = results["shading_residual"]
  assert residual["coarse"] > 0 and residual["fine"] > 0
  assert residual["fine"] != residual["coarse"]
  assert "shading residual" in result.stdout

  text, synthetic = evaluate.run(tiny.config(**CONFIG), run_dir, "synthetic")
  for key in ("param_error", "vertex_error", "depth_error", "landmark_nme",
              "landmark_nme_box_percent"):
    assert np.isfinite(synthetic[key]) and np.isfinite(synthetic["baseline_" + key]), key
  assert "vertex_error" in text
  assert os.path.exists(os.path.join(run_dir, "evaluation_synthetic_test.json"))
  # The run has a FineNet: its detail against the test faces' true detail.
  detail = synthetic["detail"]
  for net in ("coarse", "fine"):
    for key in ("depth_error", "normal_error", "normal_error_albedo_edges",
                "normal_error_elsewhere"):
      assert np.isfinite(detail[f"{net}_{key}"]) and detail[f"{net}_{key}"] > 0, (net, key)
  assert detail["fine_depth_error"] != detail["coarse_depth_error"]
  assert detail["faces"] == evaluate.DETAIL_BATCHES * 32
  assert "at albedo edges" in text


def test_albedo_edges_are_where_the_albedo_changes_most():
  """A face region with a dark band across a light albedo: the edges are
  the band's borders, the share asked of the region."""
  albedo = np.full((1, 40, 40, 3), 0.6, np.float32)
  albedo[:, 18:22] = 0.1
  region = np.zeros((1, 40, 40), bool)
  region[:, 5:35, 5:35] = True
  edges = evaluate.albedo_edges(albedo, region, share=0.2)
  assert not edges[~region].any()
  assert edges.sum() == pytest.approx(0.2 * region.sum(), rel=0.5)
  rows = np.nonzero(edges[0].any(axis=1))[0]
  assert set(rows) <= {16, 17, 18, 21, 22, 23}


def test_a_broken_run_config_is_refused_naming_the_file(tmp_path):
  run = rundir.RunDir(str(tmp_path))
  assert rundir.read_record(run) is None and rundir.read_pose_calibration(run) is None
  for contents, message in (("{", "config.json is not JSON"),
                            ("[1]", "config.json: expected a JSON object"),
                            ('{"format": 9, "config": {}}', "is not a facerecon run config")):
    (tmp_path / "config.json").write_text(contents)
    with pytest.raises(ValueError, match=message):
      rundir.read_record(run)


def test_a_config_that_differs_from_the_run_is_refused(run_dir, tmp_path):
  """An explicit --config must describe the run's networks: another face
  model (both have 235 parameters) is refused, naming the field; one that
  differs only in what does not shape the networks is fine."""
  flags = tiny.flags(**CONFIG)
  other_model = subprocess.run(
      [sys.executable, "main.py", "--mode=evaluate", f"--workdir={run_dir}", "--input=synthetic",
       *flags, "--config.model=embedded"], cwd=ROOT, capture_output=True, text=True,
      timeout=600)
  assert other_model.returncode != 0
  assert "config.model: the run in" in other_model.stderr
  assert "'embedded:25'" in other_model.stderr
  with pytest.raises(ValueError, match="config.coarse.backbone_kwargs"):
    inference.Predictor(tiny.config(**CONFIG, coarse__backbone_kwargs__widths=(8, 8)), run_dir)
  # The learning rate and the eval batch shape no network: the run's weights load.
  loaded = inference.Predictor(
      tiny.config(**CONFIG, coarse__learning_rate=0.5, coarse__eval_batch_size=4), run_dir)
  trained = inference.Predictor(tiny.config(**CONFIG), run_dir)
  assert loaded.has_fine
  for a, b in zip(jax.tree.leaves(loaded.coarse_variables),
                  jax.tree.leaves(trained.coarse_variables)):
    np.testing.assert_array_equal(a, b)


def test_the_reconstruct_path_imports_no_training_code():
  """Loading trained networks and reconstructing (the module, the Python
  API, the command line) needs neither the training modules nor the data
  pipeline's Grain and tfds."""
  code = ("import sys, facerecon.reconstruct, facerecon.api, facerecon.cli; "
          "print(sorted(m for m in sys.modules if "
          "m.startswith(('facerecon.training', 'grain', 'tensorflow_datasets'))))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "[]"


def test_main_reconstruct_exits_non_zero_when_a_photo_fails(run_dir, tmp_path):
  """--mode=reconstruct needs only the run directory (its config.json);
  what it compiled stays in the compilation cache."""
  photos_in = tmp_path / "in"
  photos_in.mkdir()
  cv2.imwrite(str(photos_in / "face.png"), cv2.cvtColor(astronaut_photo(), cv2.COLOR_RGB2BGR))
  (photos_in / "broken.png").write_bytes(b"\x89PNG broken")
  result = subprocess.run(
      [sys.executable, "main.py", "--mode=reconstruct", f"--workdir={run_dir}",
       f"--input={photos_in}", f"--output={tmp_path / 'out'}",
       f"--compilation_cache={tmp_path / 'cache'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  assert os.listdir(tmp_path / "cache")
  assert "reconstructed 1 faces from 1 of 2 photos" in result.stdout
  assert "broken.png: cannot decode the image" in result.stdout
  assert (tmp_path / "out" / "face_face0.obj").exists()
  missing = subprocess.run(
      [sys.executable, "main.py", "--mode=reconstruct", f"--workdir={tmp_path / 'nothing'}",
       f"--input={photos_in}", "--output=x"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert missing.returncode != 0 and "has no trained networks" in missing.stderr


def test_a_shipped_run_is_used_without_workdir(run_dir, tmp_path):
  """data_pipeline.ship_run copies a run's config, statistics and best
  networks; reconstruct and evaluate then need no --workdir (the run named
  by $FACERECON_RUN here; the package's own by default)."""
  shipped = str(tmp_path / "shipped")
  ship_run.ship(run_dir, shipped)
  ship_run.ship(run_dir, shipped)  # replaces the previous copy
  assert sorted(os.listdir(shipped)) == ["best", "config.json", "fine", "statistics.npz"]
  for folder, _, names in os.walk(shipped):  # no path of this machine in the copy
    for name in names:
      if name.endswith(".txt"):
        assert str(run_dir) not in open(os.path.join(folder, name)).read(), name
  coarse_only = tmp_path / "coarse_only"
  shutil.copytree(run_dir, coarse_only, ignore=shutil.ignore_patterns("fine"))
  ship_run.ship(str(coarse_only), str(tmp_path / "shipped_coarse"))
  assert sorted(os.listdir(tmp_path / "shipped_coarse")) == [
      "best", "config.json", "statistics.npz"]
  folder = tmp_path / "AFLW2000"
  folder.mkdir()
  _write_aflw_style(str(folder), 2, seed=3)
  env = {**os.environ, "FACERECON_RUN": shipped}
  result = subprocess.run(
      [sys.executable, "main.py", "--mode=evaluate", f"--input={folder}",
       f"--output={tmp_path / 'results'}", "--detector=none"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "ground-truth crops" in result.stdout
  assert os.path.exists(tmp_path / "results" / "evaluation_AFLW2000.json")
  assert not os.path.exists(os.path.join(shipped, "evaluation_AFLW2000.json"))

  empty = tmp_path / "empty"
  empty.mkdir()
  result = subprocess.run(
      [sys.executable, "main.py", "--mode=reconstruct", f"--input={folder}",
       f"--output={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "FACERECON_RUN": str(empty)})
  assert result.returncode != 0 and "pass the --workdir of a trained run" in result.stderr
  with pytest.raises(FileNotFoundError, match="config.json: missing"):
    ship_run.ship(str(empty), str(tmp_path / "nothing"))


def test_a_finenet_over_another_runs_coarsenet_ships_with_it(run_dir, tmp_path):
  """A FineNet stage trained over another run's CoarseNet
  (fine.coarse_workdir) ships with that CoarseNet's best and statistics, and
  the shipped config no longer names the other run and has its CoarseNet
  stage as the other run trained it; the copy loads as one
  run with both networks."""
  over = tmp_path / "over"
  shutil.copytree(os.path.join(run_dir, "fine"), over / "fine")
  with open(os.path.join(run_dir, "config.json")) as f:
    record = json.load(f)
  coarse_stage = dict(record["config"]["coarse"])
  record["config"]["fine"]["coarse_workdir"] = run_dir
  record["config"]["coarse"]["num_train_steps"] = 0  # this run trained FineNet only
  (over / "config.json").write_text(json.dumps(record))
  shipped = tmp_path / "shipped"
  ship_run.ship(str(over), str(shipped))
  assert sorted(os.listdir(shipped)) == ["best", "config.json", "fine", "statistics.npz"]
  shipped_config = json.loads((shipped / "config.json").read_text())["config"]
  assert shipped_config["fine"]["coarse_workdir"] is None
  assert shipped_config["coarse"] == coarse_stage  # how the shipped CoarseNet was trained
  for stage in ("", "fine"):
    originals = sorted(os.path.relpath(os.path.join(folder, name), os.path.join(run_dir, stage))
                       for folder, _, names in os.walk(os.path.join(run_dir, stage, "best"))
                       for name in names)
    copies = sorted(os.path.relpath(os.path.join(folder, name), shipped / stage)
                    for folder, _, names in os.walk(shipped / stage / "best") for name in names)
    assert copies == originals
  config = rundir.resolve_config(rundir.RunDir(str(shipped)))
  assert inference.Predictor(config, str(shipped)).fine_net is not None
  coarse_only = tmp_path / "coarse_only"
  shutil.copytree(over, coarse_only, ignore=shutil.ignore_patterns("fine"))
  with pytest.raises(FileNotFoundError, match="no trained FineNet"):
    ship_run.ship(str(coarse_only), str(tmp_path / "nothing"))
