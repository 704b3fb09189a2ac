"""FineNet, its loss and its training stage (facerecon.train_fine) on tiny
configs: starts as the identity, ImageNet vgg_16 names, outputs and resume,
end-to-end mode, photo folders, and clear errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from facerecon import tensorboard
from facerecon import train
from facerecon import train_fine
from facerecon.models import fine
from facerecon.models import pretrained


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
    return train_fine.fine_loss(depth[None], coarse[None], mask[None], grey[None], grey[None],
                                train_fine.FineLossWeights())[1]

  small, large = terms(100), terms(400)
  assert float(small["fidelity"]) == pytest.approx(float(large["fidelity"]), rel=0.01)
  assert float(small["smoothness"]) == pytest.approx(float(large["smoothness"]), rel=0.02)


def _tiny_config(tmp_path=None, **fine_overrides):
  config = synthetic_config.get_config()
  config.model = "embedded:25"
  config.image_size = 32
  config.backbone_kwargs.widths = (8, 16)
  config.batch_size = 8
  config.num_train_steps = 2
  config.eval_every = 2
  config.eval_batches = 1
  config.eval_batch_size = 8
  config.checkpoint_every = 2
  config.data.statistics_samples = 64
  config.fine.update(num_train_steps=4, widths=(4, 8, 8), head=(8,), batch_size=8,
                     eval_batch_size=8, eval_batches=1, eval_every=2, checkpoint_every=2,
                     log_every=2, schedule="constant", warmup_steps=1, keep_checkpoints=2)
  config.fine.update(fine_overrides)
  return config


@pytest.fixture(scope="module")
def coarse_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("coarse"))
  train.train_and_evaluate(_tiny_config(), workdir)
  return workdir


def _best_variables(workdir):
  import json

  import orbax.checkpoint as ocp

  with open(os.path.join(workdir, "best", "best.json")) as f:
    step = json.load(f)["step"]
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "best", str(step), "default"))


@pytest.mark.slow
def test_fine_stage_writes_outputs(coarse_workdir, tmp_path):
  """Checkpoints, the best checkpoint (FineNet's variables only: CoarseNet
  is frozen), TensorBoard, the picture, and every metric. Resuming is the
  shared train loop's (train.run_train_loop), tested with CoarseNet."""
  workdir = str(tmp_path / "fine")
  metrics = train_fine.train_and_evaluate(_tiny_config(), workdir, coarse_workdir)
  for name in ("loss", "sfs", "fidelity", "smoothness", "depth_error", "normal_error",
               "coarse_depth_error", "coarse_normal_error"):
    assert np.isfinite(metrics[name]), name
  assert metrics["fidelity"] > 0  # FineNet moved off the coarse depth
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  assert sorted(_best_variables(workdir)["params"]) == ["detail", "head_1", "vgg_16"]
  assert os.path.getsize(os.path.join(workdir, "fine_reconstructions.png")) > 0
  (events,) = os.listdir(os.path.join(workdir, "tensorboard"))
  tags = {v.tag for e in tensorboard.read_events(os.path.join(workdir, "tensorboard", events))
          for v in e.values or ()}
  assert {"train/sfs", "eval/normal_error", "eval/fine_reconstructions"} <= tags


@pytest.mark.slow
def test_end_to_end_mode_fine_tunes_coarsenet_too(coarse_workdir, tmp_path):
  workdir = str(tmp_path / "joint")
  train_fine.train_and_evaluate(_tiny_config(num_train_steps=2, end_to_end=True), workdir,
                                coarse_workdir)
  joint = _best_variables(workdir)
  assert sorted(joint["params"]) == ["coarse", "fine"]
  before = jax.tree.leaves(_best_variables(coarse_workdir)["params"])
  after = jax.tree.leaves(joint["params"]["coarse"])
  assert len(before) == len(after)
  assert max(float(np.abs(a - b).max()) for a, b in zip(after, before)) > 0


def _write_photos(folder, count=12):
  import cv2

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
  from facerecon.data import input_pipeline

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
  config = _tiny_config(num_train_steps=2, eval_batch_size=2, best_metric="loss")
  config.fine.data.source = "folder"
  config.fine.data.folder = photos
  metrics = train_fine.train_and_evaluate(config, str(tmp_path / "run"), coarse_workdir)
  assert np.isfinite(metrics["loss"]) and "normal_error" not in metrics


def test_fine_stage_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained CoarseNet"):
    train_fine.train_and_evaluate(_tiny_config(), str(tmp_path / "f"), str(tmp_path / "none"))
  config = _tiny_config()
  config.fine.data.source = "folder"
  with pytest.raises(ValueError, match="config.fine.data.folder"):
    train_fine._open_data(config, None, "train", 8)
  config.fine.data.source = "web"
  with pytest.raises(ValueError, match="config.fine.data.source"):
    train_fine._open_data(config, None, "train", 8)


@pytest.mark.slow
def test_main_trains_coarsenet_then_finenet(tmp_path):
  """The README's command shape: one main.py run trains both stages."""
  import subprocess
  import sys

  from conftest import ROOT
  from test_train_e2e import _TINY_FLAGS

  flags = [f for f in _TINY_FLAGS if not f.startswith("--config.fine.num_train_steps")]
  flags += ["--config.num_train_steps=2", "--config.eval_every=2",
            "--config.fine.num_train_steps=2", "--config.fine.widths=(4,8,8)",
            "--config.fine.head=(8,)", "--config.fine.batch_size=8",
            "--config.fine.eval_batch_size=8", "--config.fine.eval_batches=1",
            "--config.fine.eval_every=2", "--config.fine.checkpoint_every=2"]
  result = subprocess.run([sys.executable, "main.py", f"--workdir={tmp_path}", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if "final evaluation:" in l]
  assert [l.split(" ")[0] for l in lines] == ["CoarseNet", "FineNet"]
  assert "normal_error" in lines[1]
  assert (tmp_path / "reconstructions.png").exists()
  assert (tmp_path / "fine" / "fine_reconstructions.png").exists()
  assert (tmp_path / "fine" / "best" / "best.json").exists()


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
  config = _tiny_config(num_train_steps=2, batch_size=4, eval_batch_size=4,
                        best_metric="loss")
  config.fine.data.update(source="tfds", name="facerecon_faces/synthetic",
                          data_dir=str(tmp_path / "tfds"))
  metrics = train_fine.train_and_evaluate(config, str(tmp_path / "run"), coarse_workdir)
  assert np.isfinite(metrics["loss"]) and "normal_error" not in metrics
  config.fine.update(eval_batch_size=8, num_train_steps=4, eval_every=4)  # val holds 4
  with pytest.raises(ValueError, match=r"fewer than config.fine.eval_batch_size \(8\)"):
    train_fine.train_and_evaluate(config, str(tmp_path / "run"), coarse_workdir)


def loss_and_gradient(coarse_workdir):
  """FineNet's loss terms and gradient on one training batch, with the
  output layer moved off zero (so every layer has a gradient), on however
  many devices this process has."""
  config = _tiny_config()
  mesh = train.make_mesh()
  coarse_net, coarse_variables, model, statistics = train_fine.load_coarse(
      config, coarse_workdir, mesh)
  net = train_fine.make_fine_net(config)
  zeros = jnp.zeros((1, 32, 32))
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), zeros, zeros > 0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.01 if "detail" in str(path) else x, params["params"])
  host = next(train_fine._open_data(config, model, "train", 8))
  batch = train.shard_batch({"image": np.asarray(host["image"])}, mesh)
  loss_fn = train_fine._loss_fn(net, train_fine._coarse_fit_fn(coarse_net, config, mesh),
                                config, mesh)
  context = jax.device_put((model, statistics, coarse_variables), train.replicated(mesh))
  (loss, (_, terms)), grads = jax.jit(jax.value_and_grad(
      lambda p: loss_fn(p, {}, batch, None, context), has_aux=True))(params)
  out = {name: float(value) for name, value in terms.items()}
  out["loss"] = float(loss)
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    out[jax.tree_util.keystr(path)] = float(jnp.linalg.norm(leaf))
  return out


_FOUR_DEVICE_FINE = """
import sys, jax
sys.path.insert(0, {tests!r})
import test_fine
from facerecon import train_fine
assert jax.device_count() == 4
print("GRADIENT", test_fine.loss_and_gradient({coarse!r}))
metrics = train_fine.train_and_evaluate(test_fine._tiny_config(num_train_steps=1), {workdir!r},
                                        {coarse!r})
print("METRICS", {{k: float(v) for k, v in metrics.items()}})
"""


@pytest.mark.slow
def test_fine_stage_on_four_devices_matches_one(coarse_workdir, tmp_path):
  """Each of 4 fake CPU devices renders its own coarse fits and computes
  the loss on its 2 photos: the loss and the gradient of every FineNet
  variable are those of one device (not 4x: see the known pitfall of FFI
  calls under shard_map), and a run completes with the same coarse metrics.
  (Trained parameters are not compared: Adam's first steps are nearly
  sign(gradient), so float summation order decides tiny gradients' steps.)"""
  import ast
  import subprocess
  import sys

  from conftest import ROOT

  one = loss_and_gradient(coarse_workdir)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  code = _FOUR_DEVICE_FINE.format(tests=os.path.join(ROOT, "tests"),
                                  workdir=str(tmp_path / "four"), coarse=coarse_workdir)
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = {l.split(" ", 1)[0]: ast.literal_eval(l.split(" ", 1)[1])
           for l in result.stdout.splitlines() if l.startswith(("GRADIENT ", "METRICS "))}
  four = lines["GRADIENT"]
  assert sorted(four) == sorted(one) and len(one) > 10
  for name in one:
    assert four[name] == pytest.approx(one[name], rel=1e-4, abs=1e-7), name
  assert all(np.isfinite(v) for v in lines["METRICS"].values())
  assert "normal_error" in lines["METRICS"]
