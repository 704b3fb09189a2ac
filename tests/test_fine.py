"""FineNet, its loss and its training stage (facerecon.training.fine) on
tiny configs: starts as the identity, ImageNet vgg_16 names, outputs and
resume, end-to-end mode, photo folders, and clear errors (4 devices:
tests/multidevice)."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT
import events
from facerecon import config_checks
from facerecon import face_models
from facerecon import inference
from facerecon import losses
from facerecon import morphable
from facerecon import networks
from facerecon.data import input_pipeline
from facerecon.data import sources
from facerecon.models import fine
from facerecon.models import pretrained
from facerecon.training import coarse
from facerecon.training import fine as fine_stage
import tiny


def _net_inputs(batch=2, size=16):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
  mask = jnp.zeros((batch, size, size), bool).at[:, 3:13, 4:12].set(True)
  depth = jnp.where(mask, 20.0 + jnp.asarray(rng.normal(size=(batch, size, size))), 0.0)
  return images, depth, mask


def test_finenet_starts_as_the_identity_and_keeps_off_face_pixels():
  images, depth, mask = _net_inputs()
  net = fine.FineNet(widths=(4, 8, 8), head=(6, 4))
  variables = net.init(jax.random.PRNGKey(0), images, depth, mask)
  np.testing.assert_array_equal(np.asarray(net.apply(variables, images, depth, mask)),
                                np.asarray(depth))
  # With the zero layer moved, the face changes and the background stays.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if "detail" in str(path) else x, variables["params"])
  out = np.asarray(net.apply({"params": params}, images, depth, mask))
  assert np.abs(out - np.asarray(depth))[np.asarray(mask)].min() > 0
  np.testing.assert_array_equal(out[~np.asarray(mask)], 0.0)
  # Every layer gets a gradient once the output layer is non-zero.
  grads = jax.grad(lambda p: jnp.sum(net.apply({"params": p}, images, depth, mask) ** 2))(
      params)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_finenet_albedo_output_and_its_error():
  """With `albedo`, FineNet also returns an RGB albedo in (0, 1) on the mask
  and 0 off it, its depth unchanged; `albedo_error` is the mean absolute
  difference over a region; the albedo term needs both albedos."""
  images, depth, mask = _net_inputs()
  plain = fine.FineNet(widths=(4, 8, 8), head=(6,))
  with_albedo = fine.FineNet(widths=(4, 8, 8), head=(6,), albedo=True)
  variables = with_albedo.init(jax.random.PRNGKey(0), images, depth, mask)
  fine_depth, albedo = with_albedo.apply(variables, images, depth, mask)
  assert albedo.shape == images.shape[:3] + (3,)
  assert float(albedo[mask].min()) > 0 and float(albedo[mask].max()) < 1
  assert float(jnp.abs(albedo[~mask]).max()) == 0
  np.testing.assert_array_equal(fine_depth, depth)  # the detail starts at zero
  assert fine.split_outputs(fine_depth) == (fine_depth, None)
  assert "albedo" not in plain.init(jax.random.PRNGKey(0), images, depth, mask)["params"]
  region = jnp.zeros(mask.shape, bool).at[:, :2, :2].set(True)
  true = jnp.zeros_like(albedo).at[:, :2, :2].set(jnp.array([0.5, 0.2, 0.2]))
  np.testing.assert_allclose(losses.albedo_error(jnp.full_like(albedo, 0.5), true, region),
                             0.2, rtol=1e-6)
  weights = losses.FineLossWeights(albedo=1.0)
  with pytest.raises(ValueError, match="albedo"):
    losses.fine_loss(depth, depth, mask, images[..., 0], images[..., 0], weights, depth, mask)


def test_finenet_hypercolumns_see_beyond_the_first_block():
  """The output at a pixel depends on pixels the first block cannot see
  (4 3x3 convs: 4 pixels away): the upsampled deeper blocks are used."""
  images, depth, mask = _net_inputs(1, 32)
  mask = jnp.ones_like(mask)
  net = fine.FineNet(widths=(4, 8, 8), head=(6,))
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if "detail" in str(path) else x,
      net.init(jax.random.PRNGKey(0), images, depth, mask)["params"])
  grad = jax.grad(lambda im: net.apply({"params": params}, im, depth, mask)[0, 16, 16])(images)
  far = np.abs(np.asarray(grad))[0, 16, 24:]  # 8+ pixels to the right
  assert far.max() > 0


def test_finenet_wrong_shapes_are_rejected():
  images, depth, mask = _net_inputs()
  with pytest.raises(ValueError, match="FineNet takes images"):
    fine.FineNet(widths=(4, 8, 8)).init(jax.random.PRNGKey(0), images, depth[:, :8], mask)


def test_finenet_loads_slim_vgg16_names():
  """Every FineNet block variable has its slim vgg_16 name; the first conv
  takes the RGB weights (x255) and starts the depth and mask inputs at 0."""
  images, depth, mask = _net_inputs()
  net = fine.FineNet()  # the paper's widths
  variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), images, depth, mask)
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
  rng = np.random.default_rng(1)
  arrays = {}
  for block, (convs, width) in enumerate(zip((2, 2, 3), (64, 128, 256)), start=1):
    previous = 3 if block == 1 else (64, 128)[block - 2]
    for i in range(1, convs + 1):
      inputs = previous if i == 1 else width
      name = f"vgg_16/conv{block}/conv{block}_{i}"
      arrays[f"{name}/weights"] = rng.normal(size=(3, 3, inputs, width)).astype(np.float32)
      arrays[f"{name}/biases"] = rng.normal(size=(width,)).astype(np.float32)
  arrays["vgg_16/fc8/weights"] = np.zeros((1, 1, 4096, 1000), np.float32)  # not used
  loaded = pretrained.init_from_slim(dict(variables), arrays, fine.SCOPE)["params"]
  root = loaded["vgg_16"]["conv1"]["conv1_1"]["weights"]
  np.testing.assert_allclose(root[:, :, :3], arrays["vgg_16/conv1/conv1_1/weights"] * 255.0)
  assert root.shape[2] == 5 and not np.any(root[:, :, 3:])
  np.testing.assert_array_equal(loaded["vgg_16"]["conv3"]["conv3_3"]["biases"],
                                arrays["vgg_16/conv3/conv3_3/biases"])
  del arrays["vgg_16/conv2/conv2_2/weights"]
  with pytest.raises(ValueError, match="conv2_2/weights"):
    pretrained.init_from_slim(dict(variables), arrays, fine.SCOPE)


def test_fine_loss_weights_balance_at_every_image_size():
  """Depths in the loss are in pixels of a 200x200 image: the same surface
  at two sizes gives the same fidelity and smoothness."""
  def terms(size):
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    x = cols / size
    depth = jnp.asarray(size * (0.2 + 0.01 * np.sin(12 * x)), jnp.float32)
    coarse = jnp.asarray(size * 0.2 * np.ones((size, size)), jnp.float32)
    mask = jnp.ones((size, size), bool)
    grey = jnp.full((size, size), 0.5)
    return losses.fine_loss(depth[None], coarse[None], mask[None], grey[None], grey[None],
                            losses.FineLossWeights())[1]

  small, large = terms(100), terms(400)
  assert float(small["fidelity"]) == pytest.approx(float(large["fidelity"]), rel=0.01)
  assert float(small["smoothness"]) == pytest.approx(float(large["smoothness"]), rel=0.02)


def test_supervised_fine_terms_measure_the_true_detail():
  """depth: the mean absolute difference in 200-image pixels; normal: 0 for
  the true surface shifted in depth, larger for a surface without its
  ripples; both only with the truth, and asking for them without it is an
  error."""
  size = 100
  x = np.arange(size)[None, :] / size * np.ones((size, 1))
  truth = jnp.asarray(size * (0.2 + 0.01 * np.sin(12 * x)), jnp.float32)[None]
  flat = jnp.full_like(truth, 0.2 * size)
  mask = jnp.ones_like(truth, bool)
  grey = jnp.full_like(truth, 0.5)
  weights = losses.FineLossWeights(depth=1.0, normal=1.0)

  def terms(depth):
    return losses.fine_loss(depth, flat, mask, grey, grey, weights, truth, mask)[1]

  shifted, smooth = terms(truth + 0.5), terms(flat)
  assert float(shifted["depth"]) == pytest.approx(0.5 * 200 / size, rel=1e-4)
  assert float(shifted["normal"]) == pytest.approx(0.0, abs=1e-6)
  assert float(smooth["normal"]) > 1e-3
  # Where the prediction's mask does not cover, the truth is not compared.
  half = mask.at[:, :, size // 2:].set(False)
  only_left = losses.fine_loss(truth.at[:, :, size // 2:].add(7.0), flat, half, grey, grey,
                               weights, truth, mask)[1]
  assert float(only_left["depth"]) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="config.fine.loss.depth"):
    losses.fine_loss(flat, flat, mask, grey, grey, weights)
  unsupervised = losses.fine_loss(flat, flat, mask, grey, grey, losses.FineLossWeights())[1]
  assert "depth" not in unsupervised and "normal" not in unsupervised


# The paper's unsupervised loss (the tiny config, as the quick start's, learns
# the true detail instead): for photos without it.
UNSUPERVISED = dict(loss__sfs=1.0, loss__fidelity=2.0, loss__smoothness=1.0, loss__depth=0.0,
                    loss__normal=0.0)


def _config(coarse_workdir, **fine_overrides):
  """The tiny config's FineNet stage, 4 steps, over the CoarseNet in
  `coarse_workdir`."""
  fine = {"num_train_steps": 4, "coarse_workdir": coarse_workdir, **fine_overrides}
  return tiny.config(**{f"fine__{k}": v for k, v in fine.items()})


@pytest.fixture(scope="module")
def coarse_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("coarse"))
  coarse.train_and_evaluate(tiny.config(coarse__num_train_steps=2, coarse__eval_every=2),
                            workdir)
  return workdir


def _best_variables(run):
  with open(os.path.join(run, "best", "best.json")) as f:
    step = json.load(f)["step"]
  return ocp.StandardCheckpointer().restore(os.path.join(run, "best", str(step), "default"))


@pytest.mark.slow
def test_fine_stage_writes_outputs(coarse_workdir, tmp_path):
  """Checkpoints, the best checkpoint (FineNet's variables only: CoarseNet
  is frozen), TensorBoard, the picture, the run's config, and every metric.
  Resuming is the shared train loop's (training.loop), tested with CoarseNet.
  Trained with the paper's terms and the supervised ones, the albedo output's
  included (the unsupervised loss alone: the folder and tfds tests)."""
  workdir = str(tmp_path / "run")
  metrics = fine_stage.train_and_evaluate(
      _config(coarse_workdir, loss__sfs=1.0, loss__fidelity=2.0, loss__albedo=1.0), workdir)
  for name in ("loss", "sfs", "fidelity", "smoothness", "depth", "normal", "albedo",
               "depth_error", "normal_error", "coarse_depth_error", "coarse_normal_error"):
    assert np.isfinite(metrics[name]), name
  assert metrics["fidelity"] > 0  # FineNet moved off the coarse depth
  assert 0 < metrics["albedo"] < 1
  stage = os.path.join(workdir, "fine")
  assert sorted(os.listdir(os.path.join(stage, "checkpoints"))) == ["2", "4"]
  assert sorted(_best_variables(stage)["params"]) == ["albedo", "detail", "head_1", "vgg_16"]
  assert os.path.getsize(os.path.join(stage, "fine_reconstructions.png")) > 0
  assert {"train/sfs", "eval/normal_error", "eval/fine_reconstructions"} <= events.tags(
      os.path.join(stage, "tensorboard"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["config"]["fine"]["coarse_workdir"] == coarse_workdir


@pytest.mark.slow
def test_end_to_end_mode_fine_tunes_coarsenet_too(coarse_workdir, tmp_path):
  workdir = str(tmp_path / "joint")
  fine_stage.train_and_evaluate(_config(coarse_workdir, num_train_steps=2, end_to_end=True),
                                workdir)
  joint = _best_variables(os.path.join(workdir, "fine"))
  assert sorted(joint["params"]) == ["coarse", "fine"]
  before = jax.tree.leaves(_best_variables(coarse_workdir)["params"])
  after = jax.tree.leaves(joint["params"]["coarse"])
  assert len(before) == len(after)
  assert max(float(np.abs(a - b).max()) for a, b in zip(after, before)) > 0


@pytest.mark.slow
def test_a_finenet_starts_from_another_runs_finenet(coarse_workdir, tmp_path):
  """fine.init_from: FineNet fine-tuned from another run's best FineNet
  (e.g. over a newer CoarseNet); other FineNets and starts are refused."""
  first = str(tmp_path / "first")
  fine_stage.train_and_evaluate(_config(coarse_workdir, num_train_steps=2), first)
  config = _config(coarse_workdir, num_train_steps=2, init_from=first)
  net = networks.fine_net(config)
  start = networks.initial_fine_params(config, net)
  trained = _best_variables(os.path.join(first, "fine"))["params"]
  fresh = networks.init_fine_params(config, net, config.fine.seed)
  for a, b, c in zip(jax.tree.leaves(start), jax.tree.leaves(trained), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(a, b)
  assert any(np.abs(a - c).max() > 0 for a, c in zip(jax.tree.leaves(start),
                                                     jax.tree.leaves(fresh)))
  metrics = fine_stage.train_and_evaluate(config, str(tmp_path / "second"))
  assert np.isfinite(metrics["normal_error"])

  # Its photos' size is not part of a FineNet: it starts one at another size.
  larger = _config(coarse_workdir, init_from=first, image_size=2 * config.image_size)
  for a, b in zip(jax.tree.leaves(networks.initial_fine_params(larger, networks.fine_net(larger))),
                  jax.tree.leaves(trained)):
    np.testing.assert_array_equal(a, b)

  with pytest.raises(FileNotFoundError, match="no trained FineNet"):
    networks.initial_fine_params(_config(coarse_workdir, init_from=coarse_workdir), net)
  wider = _config(coarse_workdir, init_from=first, widths=(4, 8, 16))
  with pytest.raises(ValueError, match="config.fine.widths"):
    networks.initial_fine_params(wider, networks.fine_net(wider))
  with_albedo = _config(coarse_workdir, init_from=first, loss__albedo=1.0)
  with pytest.raises(ValueError, match="config.fine.loss.albedo: .* no albedo output"):
    networks.initial_fine_params(with_albedo, networks.fine_net(with_albedo))
  both = _config(coarse_workdir, init_from=first, pretrained="vgg.npz")
  with pytest.raises(ValueError, match="fine.init_from"):
    config_checks.check(both)


def _write_photos(folder, count=12):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(3)
  kinds = ["colour.jpg", "grey.png", "rgba.png", "deep.png", "large.jpg", "small.png"]
  for i in range(count):
    kind = kinds[i % len(kinds)]
    if kind == "grey.png":
      image = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    elif kind == "rgba.png":
      image = rng.integers(0, 255, (30, 30, 4), dtype=np.uint8)
    elif kind == "deep.png":
      image = rng.integers(0, 65535, (36, 36, 3), dtype=np.uint16)
    elif kind == "large.jpg":
      image = rng.integers(0, 255, (900, 700, 3), dtype=np.uint8)
    elif kind == "small.png":
      image = rng.integers(0, 255, (9, 12, 3), dtype=np.uint8)
    else:
      image = rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)
    cv2.imwrite(os.path.join(folder, f"{i:02d}_{kind}"), image)


def test_folder_source_crops_and_resizes_any_photo(tmp_path):
  _write_photos(str(tmp_path))
  (tmp_path / "notes.txt").write_text("not an image")
  train_source = input_pipeline.FolderSource(str(tmp_path), 24, "train")
  val_source = input_pipeline.FolderSource(str(tmp_path), 24, "val")
  assert (len(train_source), len(val_source)) == (11, 1)
  for source in (train_source, val_source):
    for i in range(len(source)):
      image = source[i]["image"]
      assert image.shape == (24, 24, 3) and image.dtype == np.uint8
  (tmp_path / "zz_broken.jpg").write_bytes(b"not a jpeg")
  broken = input_pipeline.FolderSource(str(tmp_path), 24, "train")
  with pytest.raises(ValueError, match="zz_broken.jpg"):
    broken[len(broken) - 1]
  with pytest.raises(FileNotFoundError, match="does not exist"):
    input_pipeline.FolderSource(str(tmp_path / "missing"), 24)


@pytest.mark.slow
def test_fine_stage_trains_on_a_folder_of_photos(coarse_workdir, tmp_path):
  photos = str(tmp_path / "photos")
  _write_photos(photos, 20)
  config = _config(coarse_workdir, num_train_steps=2, eval_batch_size=2, best_metric="loss",
                   **UNSUPERVISED)
  config.fine.data.source = "folder"
  config.fine.data.folder = photos
  metrics = fine_stage.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(metrics["loss"]) and "normal_error" not in metrics


def test_fine_stage_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained CoarseNet"):
    fine_stage.train_and_evaluate(_config(str(tmp_path / "none")), str(tmp_path / "f"))
  config = _config(None)
  config.fine.data.source = "folder"
  with pytest.raises(ValueError, match="config.fine.data.folder"):
    sources.open_photos(config, "train", 8)
  config.fine.data.source = "web"
  with pytest.raises(ValueError, match="config.fine.data.source"):
    sources.open_photos(config, "train", 8)
  config.fine.data.source = "folder"
  config.fine.data.folder = str(tmp_path)
  config.fine.loss.depth = 1.0
  with pytest.raises(ValueError, match="fine.loss.depth"):
    config_checks.check(config)


@pytest.mark.slow
def test_main_trains_coarsenet_then_finenet(tmp_path):
  """The README's command shape: one main.py run trains both stages."""
  flags = tiny.flags(coarse__num_train_steps=2, coarse__eval_every=2, fine__num_train_steps=2)
  result = subprocess.run([sys.executable, "main.py", f"--workdir={tmp_path}", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if "final evaluation:" in l]
  assert [l.split(" ")[0] for l in lines] == ["CoarseNet", "FineNet"]
  # The log: a progress line per log_every steps; no library INFO chatter.
  assert re.search(r"CoarseNet step 2/2: loss [\d.e+-]+, \d+ images/s, ETA 0m00s",
                   result.stderr), result.stderr[-3000:]
  assert "FineNet step 2/2" in result.stderr
  assert not [l for l in result.stderr.splitlines() if "orbax" in l or "checkpoint_manager" in l]
  assert "normal_error" in lines[1]
  assert (tmp_path / "reconstructions.png").exists()
  assert (tmp_path / "fine" / "fine_reconstructions.png").exists()
  assert (tmp_path / "fine" / "best" / "best.json").exists()


@pytest.mark.slow
def test_both_stages_in_one_run_of_a_model_with_rendered_only_parts(tmp_path):
  """A model whose last vertices are a rendered-only part (as ICT's eyes and
  teeth): FineNet's stage records the same whole model CoarseNet's did, so
  it trains in the same run directory, and CoarseNet's fit is rendered with
  the whole model (the depth FineNet refines covers the rendered part)."""
  model = face_models.load("embedded:25")
  cut = model.num_vertices * 4 // 5
  triangles = np.asarray(model.triangles)
  on_surface = triangles.max(axis=1) < cut
  model = dataclasses.replace(
      model, triangles=np.concatenate([triangles[on_surface], triangles[~on_surface]]),
      landmark_indices=np.minimum(np.asarray(model.landmark_indices), cut - 1).astype(np.int32),
      parts=(morphable.Part("face", morphable.SURFACE, (0, cut), (0, int(on_surface.sum()))),
             morphable.Part("inside", morphable.RENDERED, (cut, model.num_vertices),
                            (int(on_surface.sum()), model.num_triangles))))
  path = str(tmp_path / "parts.npz")
  morphable.save_model(model, path)
  config = tiny.config(model=path, coarse__num_train_steps=2, coarse__eval_every=2,
                       fine__num_train_steps=2)
  workdir = str(tmp_path / "run")
  coarse.train_and_evaluate(config, workdir)
  fine_stage.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["num_vertices"] == model.num_vertices
  loaded = face_models.load(path)
  surface = morphable.surface(loaded)
  predictor = inference.Predictor(config, workdir)
  fit_fn = fine_stage.coarse_fit_fn(predictor.coarse_net, config)
  photos = np.zeros((1, 32, 32, 3), np.uint8)
  statistics = predictor.statistics
  whole = fit_fn(predictor.coarse_variables, photos, surface, statistics, loaded)
  cut_only = fit_fn(predictor.coarse_variables, photos, surface, statistics, surface)
  assert int(whole.mask.sum()) > int(cut_only.mask.sum())


@pytest.mark.slow
def test_fine_stage_trains_on_the_images_of_a_tfds_data_set(coarse_workdir, tmp_path):
  """config.fine.data.source='tfds' reads only the images (here of the
  synthetic data set; VGG Face's has nothing else)."""
  from data_pipeline import build_dataset
  from data_pipeline import splits
  from data_pipeline import synthesize

  source = str(tmp_path / "synthetic")
  synthesize.synthesize(synthesize.Settings(num_faces=20, seed=0, image_size=32, shard_size=10,
                                            model="embedded:25", backgrounds=()), source)
  splits.write_splits_and_statistics(source, (0.6, 0.2, 0.2), seed=0)
  build_dataset.build("synthetic", source, str(tmp_path / "tfds"))
  config = _config(coarse_workdir, num_train_steps=2, batch_size=4, eval_batch_size=4,
                   best_metric="loss", **UNSUPERVISED)
  config.fine.data.update(source="tfds", name="facerecon_faces/synthetic",
                          data_dir=str(tmp_path / "tfds"))
  metrics = fine_stage.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(metrics["loss"]) and "normal_error" not in metrics
  config.fine.update(eval_batch_size=8, num_train_steps=4, eval_every=4)  # val holds 4
  with pytest.raises(ValueError, match=r"fewer than config.fine.eval_batch_size \(8\)"):
    fine_stage.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_finenet_at_twice_coarsenets_size(coarse_workdir, tmp_path):
  """fine.image_size 64 over a 32-pixel CoarseNet: FineNet trains on 64-pixel
  photos, and the run's Predictor takes 64-pixel crops, returns its depth at
  64 and places the landmarks as CoarseNet does on the crops shrunk to 32
  (mapped back to 64)."""
  workdir = str(tmp_path / "large")
  config = _config(coarse_workdir, num_train_steps=2, image_size=64)
  metrics = fine_stage.train_and_evaluate(config, workdir)
  assert np.isfinite(metrics["normal_error"]) and metrics["fidelity"] > 0
  predictor = inference.Predictor(config, workdir, batch_size=4)
  assert predictor.has_fine and predictor.size == 64
  host = next(sources.open_photos(config, "val", 4))
  assert host["image"].shape == (4, 64, 64, 3)
  fits = predictor(host["image"])
  assert fits.depth.shape == fits.coarse_depth.shape == fits.mask.shape == (4, 64, 64)
  assert np.abs(fits.depth - fits.coarse_depth).max() > 0  # FineNet ran
  shrunk = np.stack([cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)
                     for image in host["image"]])
  coarse_only = inference.Predictor(tiny.config(), coarse_workdir, batch_size=4)
  assert coarse_only.size == 32
  np.testing.assert_allclose(fits.landmarks, 2 * (coarse_only(shrunk).landmarks + 0.5) - 0.5,
                             atol=0.5)
