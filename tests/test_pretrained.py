"""ImageNet initialisation from TF-slim checkpoints: the name mapping (no
TensorFlow needed) and, with TensorFlow, the converter on a checkpoint the
test writes."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from conftest import ROOT
from facerecon import face_models
from facerecon import networks
from facerecon.data import normalization
from facerecon.models import backbones
from facerecon.models import pretrained


def _slim_resnet_names(scope, units):
  """slim resnet_v1's variable names, written from its definition (not from
  our modules): root conv1, block{b}/unit_{u}/bottleneck_v1/{shortcut (first
  unit: the depth changes), conv1, conv2, conv3}, all with BatchNorm; logits."""
  def conv(prefix):
    return [f"{prefix}/weights"] + [f"{prefix}/BatchNorm/{v}" for v in
                                    ("gamma", "beta", "moving_mean", "moving_variance")]
  names = conv(f"{scope}/conv1")
  for b, count in enumerate(units, 1):
    for u in range(1, count + 1):
      unit = f"{scope}/block{b}/unit_{u}/bottleneck_v1"
      names += (conv(f"{unit}/shortcut") if u == 1 else [])
      for c in ("conv1", "conv2", "conv3"):
        names += conv(f"{unit}/{c}")
  return names + [f"{scope}/logits/weights", f"{scope}/logits/biases"]


def _slim_vgg16_names():
  names = [f"vgg_16/conv{b}/conv{b}_{i}/{v}" for b, n in enumerate((2, 2, 3, 3, 3), 1)
           for i in range(1, n + 1) for v in ("weights", "biases")]
  return names + [f"vgg_16/fc{k}/{v}" for k in (6, 7, 8) for v in ("weights", "biases")]


def _flax_slim_names(variables, scope, standalone=False):
  """Slim name -> leaf for the variables under `scope` (all of them for a
  backbone initialised on its own, whose paths do not include its name)."""
  names = {}
  for collection, tree in variables.items():
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      path = tuple(str(k.key) for k in key_path)
      if standalone:
        path = (scope,) + path
      elif scope not in path:
        continue
      names[pretrained.slim_name(path[path.index(scope):], collection)] = leaf
  return names


@pytest.mark.parametrize("backbone,kwargs,expected", [
    ("resnet_v1_50", {"width": 4}, _slim_resnet_names("resnet_v1_50", (3, 4, 6, 3))),
    ("vgg_16", {}, _slim_vgg16_names())])
def test_every_backbone_variable_has_its_slim_name(backbone, kwargs, expected):
  net = backbones.make_backbone(backbone, **kwargs)
  variables = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  ours = _flax_slim_names(dict(variables), net.name, standalone=True)
  classifier = {n for n in expected if "/logits/" in n or "/fc" in n}
  assert set(ours) == set(expected) - classifier


def _tiny_config():
  config = default.get_config()
  config.model = "embedded:25"
  config.image_size = 32
  config.coarse.backbone = "resnet_v1_50"
  config.coarse.backbone_kwargs.width = 4
  config.coarse.num_iterations = 2
  return config


def _fake_slim_arrays(variables, scope, seed=0):
  """Random arrays for every slim name of the network, with slim's shapes
  (3 input channels for the root conv), plus the classifier slim has."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, leaf in _flax_slim_names(variables, scope).items():
    shape = leaf.shape
    if name == f"{scope}/conv1/weights":
      shape = shape[:2] + (3,) + shape[3:]
    arrays[name] = rng.normal(size=shape).astype(np.float32)
  arrays[f"{scope}/logits/weights"] = np.zeros((1, 1, 128, 1000), np.float32)
  return arrays


def _model_and_statistics(config):
  model = face_models.load(config.model)
  size = model.layout.size
  stats = normalization.DataStatistics(
      param_mean=jnp.zeros(size), param_std=jnp.ones(size),
      mean_image=jnp.zeros((32, 32, 3)), count=jnp.array(1))
  return model, stats


def _coarse_net_variables(config):
  """CoarseNet's initial variables, as a run without pretrained weights starts."""
  model, stats = _model_and_statistics(config)
  return dict(networks.initial_coarse_variables(networks.coarse_net(config), config, None,
                                                model, stats))


@pytest.fixture(scope="module")
def variables():
  """The tiny config's CoarseNet (ResNet-50 backbones): initialising one
  takes tens of seconds, so the tests share it."""
  return _coarse_net_variables(_tiny_config())


def test_init_from_slim_fills_every_iteration_and_adapts_the_root_conv(variables):
  scope = "resnet_v1_50"
  arrays = _fake_slim_arrays(variables, scope)
  loaded = pretrained.init_from_slim(variables, arrays, scope)
  for k in (1, 2):
    iteration = f"iteration_{k}"
    params = loaded["params"][iteration][scope]
    unit = params["block2"]["unit_3"]["bottleneck_v1"]["conv2"]
    np.testing.assert_array_equal(
        unit["weights"], arrays[f"{scope}/block2/unit_3/bottleneck_v1/conv2/weights"])
    np.testing.assert_array_equal(
        unit["BatchNorm"]["scale"],
        arrays[f"{scope}/block2/unit_3/bottleneck_v1/conv2/BatchNorm/gamma"])
    stats = loaded["batch_stats"][iteration][scope]["block4"]["unit_1"]["bottleneck_v1"]
    np.testing.assert_array_equal(
        stats["shortcut"]["BatchNorm"]["var"],
        arrays[f"{scope}/block4/unit_1/bottleneck_v1/shortcut/BatchNorm/moving_variance"])
    root = params["conv1"]["weights"]
    assert root.shape[2] == 10  # CoarseNet's input channels
    np.testing.assert_allclose(root[:, :, :3], arrays[f"{scope}/conv1/weights"] * 255.0)
    assert np.all(np.asarray(root[:, :, 3:]) == 0)
    # The head keeps its initialisation.
    np.testing.assert_array_equal(loaded["params"][iteration]["head"]["kernel"],
                                  variables["params"][iteration]["head"]["kernel"])


def test_init_from_slim_rejects_another_networks_weights(variables):
  arrays = _fake_slim_arrays(variables, "resnet_v1_50")
  del arrays["resnet_v1_50/block3/unit_2/bottleneck_v1/conv1/weights"]
  with pytest.raises(ValueError, match="not in the pretrained.*block3/unit_2"):
    pretrained.init_from_slim(variables, arrays, "resnet_v1_50")
  arrays = _fake_slim_arrays(variables, "resnet_v1_50")
  arrays["resnet_v1_50/block1/unit_1/bottleneck_v1/conv3/weights"] = np.zeros((1, 1, 4, 5))
  with pytest.raises(ValueError, match="conv3/weights has shape"):
    pretrained.init_from_slim(variables, arrays, "resnet_v1_50")
  with pytest.raises(FileNotFoundError, match="convert_slim"):
    pretrained.load_slim_arrays("/nonexistent/resnet_v1_101.npz")


def test_training_starts_from_the_pretrained_weights(variables, tmp_path):
  """config.coarse.pretrained: the variables a CoarseNet run starts from."""
  arrays = _fake_slim_arrays(variables, "resnet_v1_50")
  path = str(tmp_path / "resnet_v1_50.npz")
  np.savez(path, **arrays)
  config = _tiny_config()
  config.coarse.pretrained = path
  start = _coarse_net_variables(config)
  np.testing.assert_array_equal(
      start["params"]["iteration_2"]["resnet_v1_50"]["block1"]["unit_2"]
      ["bottleneck_v1"]["conv1"]["weights"],
      arrays["resnet_v1_50/block1/unit_2/bottleneck_v1/conv1/weights"])


# Writes a name-based TF checkpoint the way slim's Saver does (SaveV2 with
# slim names), then runs the converter on it; needs TensorFlow.
_WRITE_CHECKPOINT = """
import sys
import numpy as np
import tensorflow as tf
arrays = dict(np.load(sys.argv[1]))
arrays["global_step"] = np.array(1000, np.int64)
arrays["resnet_v1_50/conv1/weights/Momentum"] = arrays["resnet_v1_50/conv1/weights"]
names = sorted(arrays)
tf.raw_ops.SaveV2(prefix=sys.argv[2], tensor_names=names, shape_and_slices=[""] * len(names),
                  tensors=[tf.constant(arrays[n]) for n in names])
"""


def _tensorflow_python():
  if os.environ.get("FACERECON_TF_PYTHON"):
    return os.environ["FACERECON_TF_PYTHON"]
  try:
    import tensorflow  # noqa: F401
  except ImportError:
    return None
  return sys.executable


@pytest.mark.slow
@pytest.mark.skipif(_tensorflow_python() is None,
                    reason="needs TensorFlow here or FACERECON_TF_PYTHON (the [convert] extra)")
def test_convert_a_slim_checkpoint(variables, tmp_path):
  python = _tensorflow_python()
  arrays = _fake_slim_arrays(variables, "resnet_v1_50", seed=1)
  np.savez(tmp_path / "arrays.npz", **arrays)
  prefix = str(tmp_path / "resnet_v1_50.ckpt")
  result = subprocess.run([python, "-c", _WRITE_CHECKPOINT, str(tmp_path / "arrays.npz"),
                           prefix], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  output = str(tmp_path / "out" / "resnet_v1_50.npz")
  result = subprocess.run([python, "-m", "data_pipeline.convert_slim", f"--checkpoint={prefix}",
                           f"--output={output}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  converted = pretrained.load_slim_arrays(output)
  assert sorted(converted) == sorted(arrays)  # no global step, no optimizer slots
  for name, value in arrays.items():
    np.testing.assert_array_equal(converted[name], value)
  missing = subprocess.run([python, "-m", "data_pipeline.convert_slim",
                            f"--checkpoint={tmp_path / 'nothing.ckpt'}", f"--output={output}2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert missing.returncode != 0 and "nothing.ckpt.index" in missing.stderr
