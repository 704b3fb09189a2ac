"""Backbones and CoarseNet: shapes, slim-compatible structure, parameter
counts, iterations, gradients, BatchNorm modes and bfloat16.

Kept fast on a 2-core CPU: backbone variables come from `jax.eval_shape`
plus a deterministic numpy fill (threefry initialisers take seconds to
compile here), and CoarseNet is initialised once, jitted, with an 'rbg' key.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon import camera
from facerecon import face_models
from facerecon import face_render
from facerecon.data import normalization
from facerecon.models import backbones
from facerecon.models import coarse_net

SIZE = 32
ITERATIONS = 3
SMALL = {"widths": (8, 16, 32)}


def _filled_variables(module, *args, **kwargs):
  """Variables with `module.init`'s structure, filled deterministically."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    if path[-1].key in ("var", "scale"):  # BatchNorm variance and gamma
      return np.ones(leaf.shape, np.float32)
    return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _flat_names(tree):
  return {"/".join(str(k.key) for k in path)
          for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("name, kwargs, features", [
    ("resnet_v1_50", {"width": 8}, 256),
    ("vgg_16", {}, 512),
    ("small", {}, 128),
    ("mobilenet_v1", {"width": 0.25}, 256),
])
def test_backbones_run_on_a_tiny_batch(name, kwargs, features):
  net = backbones.make_backbone(name, **kwargs)
  images = jnp.asarray(np.random.default_rng(1).standard_normal((2, SIZE, SIZE, 3)),
                       jnp.float32)
  variables = _filled_variables(net, images)
  out = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, images)
  assert out.shape == (2, features) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


def test_resnet_v1_mirrors_slim_names_and_counts():
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  counts = {}
  for depth in (50, 101):
    net = backbones.make_backbone(f"resnet_v1_{depth}")
    assert net.name == f"resnet_v1_{depth}"
    variables = jax.eval_shape(net.init, jax.random.key(0), images)
    counts[depth] = backbones.count_params(variables["params"])
  # slim resnet_v1_101 / _50 without logits (44,549,160 / 25,557,032 minus
  # the 2048 x 1000 + 1000 logits).
  assert counts[101] == 42_500_160
  assert counts[50] == 23_508_032
  names = _flat_names(variables["params"])
  unit = "block1/unit_1/bottleneck_v1"
  assert {"conv1/weights", "conv1/BatchNorm/scale", "conv1/BatchNorm/bias",
          f"{unit}/conv1/weights", f"{unit}/conv2/weights", f"{unit}/conv3/weights",
          f"{unit}/shortcut/weights", f"{unit}/shortcut/BatchNorm/scale",
          "block3/unit_23/bottleneck_v1/conv3/BatchNorm/bias"} <= names
  assert not any("bias" in n and "BatchNorm" not in n for n in names)  # no conv biases
  # Later units keep the depth: slim subsamples instead of a shortcut conv.
  assert not any(n.startswith("block1/unit_3/bottleneck_v1/shortcut") for n in names)
  assert "conv1/BatchNorm/mean" in _flat_names(variables["batch_stats"])
  assert variables["params"]["conv1"]["weights"].shape == (7, 7, 3, 64)
  assert variables["params"]["block4"]["unit_3"]["bottleneck_v1"]["conv3"][
      "weights"].shape == (1, 1, 512, 2048)


def test_resnet_v1_strides_follow_slim():
  # 64 -> conv1 32 -> pool 16 -> block1 8 -> block2 4 -> block3 2 -> block4 2.
  net = backbones.ResNetV1(depth=50, width=4)
  _, state = jax.eval_shape(
      lambda x: net.init_with_output(jax.random.key(0), x, capture_intermediates=True),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  outputs = state["intermediates"]
  assert outputs["conv1"]["__call__"][0].shape == (1, 32, 32, 4)
  sizes = [outputs[f"block{b}"]["__call__"][0].shape for b in range(1, 5)]
  assert sizes == [(1, 8, 8, 16), (1, 4, 4, 32), (1, 2, 2, 64), (1, 2, 2, 128)]
  # The stride sits on the last unit's 3x3 conv.
  last = outputs["block1"]["unit_3"]["bottleneck_v1"]
  assert last["conv1"]["__call__"][0].shape == (1, 16, 16, 4)
  assert last["conv2"]["__call__"][0].shape == (1, 8, 8, 4)
  conv = backbones.SlimConv(4, 3, stride=2, batch_norm=False)
  for size in (7, 8):  # conv2d_same: ceil(size / 2) for odd and even sizes
    out = jax.eval_shape(lambda x: conv.init_with_output(jax.random.key(0), x)[0],
                         jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32))
    assert out.shape == (1, (size + 1) // 2, (size + 1) // 2, 4)


def test_vgg16_conv_layers():
  net = backbones.make_backbone("vgg_16")
  assert net.name == "vgg_16"
  variables = jax.eval_shape(net.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  params = variables["params"]
  assert backbones.count_params(params) == 14_714_688  # slim vgg_16 conv1..conv5
  convs = [(block, conv) for block in params for conv in params[block]]
  assert len(convs) == 13
  assert params["conv1"]["conv1_1"]["weights"].shape == (3, 3, 3, 64)
  assert params["conv5"]["conv5_3"]["biases"].shape == (512,)
  assert "batch_stats" not in variables
  # FineNet's hypercolumns: the first three blocks' last conv outputs.
  blocks = jax.eval_shape(
      lambda x: backbones.VGG16(num_blocks=3).init_with_output(
          jax.random.key(0), x, return_blocks=True)[0],
      jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))
  assert [b.shape for b in blocks] == [(1, 32, 32, 64), (1, 16, 16, 128), (1, 8, 8, 256)]


# MobileNet v1's channels after conv0 and each of its 13 blocks (Howard et al.).
MOBILENET_V1_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512,
                         1024, 1024)


def test_mobilenet_v1_layers_and_count():
  net = backbones.make_backbone("mobilenet_v1")
  assert net.name == "mobilenet_v1"
  variables = jax.eval_shape(net.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  params = variables["params"]
  # By hand: conv0 3x3x3x32 plus BatchNorm; per block a 3x3 depthwise kernel
  # (9 per channel) and a 1x1 pointwise one, each with BatchNorm's gamma and beta.
  expected = 3 * 3 * 3 * 32 + 2 * 32
  for c_in, c_out in zip(MOBILENET_V1_CHANNELS[:-1], MOBILENET_V1_CHANNELS[1:]):
    expected += 9 * c_in + 2 * c_in + c_in * c_out + 2 * c_out
  # The published MobileNet v1 1.0 (4,231,976 trainable parameters) less its
  # 1024 x 1000 + 1000 classifier.
  assert expected == 4_231_976 - 1_025_000 == 3_206_976
  assert backbones.count_params(params) == expected
  assert params["conv0"]["weights"].shape == (3, 3, 3, 32)
  assert sorted(params) == sorted(["conv0"] + [f"block{i}" for i in range(1, 14)])
  for i, (c_in, c_out) in enumerate(zip(MOBILENET_V1_CHANNELS[:-1],
                                        MOBILENET_V1_CHANNELS[1:])):
    block = params[f"block{i + 1}"]
    assert block["depthwise"]["weights"].shape == (3, 3, 1, c_in)
    assert block["pointwise"]["weights"].shape == (1, 1, c_in, c_out)
  names = _flat_names(params)
  assert not any("bias" in n and "BatchNorm" not in n for n in names)  # no conv biases
  assert {"block13/pointwise/BatchNorm/mean", "block1/depthwise/BatchNorm/var"} <= (
      _flat_names(variables["batch_stats"]))

  # Width 0.5 at 3DDFA_V2's 120 x 120 (CoarseNet's 10 channels): five stride-2
  # layers, 120 -> 60 -> 30 -> 15 -> 8 -> 4, and half the channels.
  half = backbones.make_backbone("mobilenet_v1", width=0.5)
  out, state = jax.eval_shape(
      lambda x: half.init_with_output(jax.random.key(0), x, capture_intermediates=True),
      jax.ShapeDtypeStruct((2, 120, 120, 10), jnp.float32))
  assert out.shape == (2, 512) and out.dtype == jnp.float32
  outputs = state["intermediates"]
  assert outputs["conv0"]["__call__"][0].shape == (2, 60, 60, 16)
  assert outputs["block13"]["__call__"][0].shape == (2, 4, 4, 512)
  assert [outputs[f"block{i}"]["__call__"][0].shape[1] for i in (1, 2, 4, 6, 12)] == [
      60, 30, 15, 8, 4]
  assert state["params"]["block13"]["depthwise"]["weights"].shape == (3, 3, 1, 512)


@pytest.mark.parametrize("stride, size", [(1, 9), (2, 9), (2, 8)])
def test_depthwise_conv_matches_grouped_conv(stride, size):
  rng = np.random.default_rng(3)
  channels = 24
  out_size = (size - 1) // stride + 1  # 'SAME' output size
  x = jnp.asarray(rng.standard_normal((2, size, size, channels)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, channels)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((2, out_size, out_size, channels)),
                          jnp.float32)
  padding = ((1, 1), (1, 1))
  shifted = lambda x, k: backbones.depthwise_conv(x, k, stride, padding)
  grouped = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels, precision=jax.lax.Precision.HIGHEST)

  @jax.jit
  def outputs_and_gradients(x, kernel):
    # Training differentiates through it, so the gradients must agree too.
    return [(conv(x, kernel), jax.grad(lambda x, k: jnp.sum(conv(x, k) * cotangent),
                                       argnums=(0, 1))(x, kernel))
            for conv in (shifted, grouped)]

  (out, grads), (expected, expected_grads) = outputs_and_gradients(x, kernel)
  assert out.shape == expected.shape == (2, out_size, out_size, channels)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  for grad, expected_grad in zip(grads, expected_grads):
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match="does not fit"):
    backbones.depthwise_conv(x, kernel[:, :, :, :-1])


def test_mobilenet_v1_cpu_kernels_match_xla_convolutions():
  """xla_cpu_kernels (shifted depthwise, matmul pointwise) computes what XLA's
  grouped and 1x1 convolutions compute, with the same variables."""
  fast = backbones.make_backbone("mobilenet_v1", width=0.25)
  reference = fast.clone(xla_cpu_kernels=False)
  images = jnp.asarray(np.random.default_rng(4).standard_normal((2, SIZE, SIZE, 10)),
                       jnp.float32)
  variables = _filled_variables(fast, images)
  run = lambda net: jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, images)
  np.testing.assert_allclose(run(fast), run(reference), rtol=1e-5, atol=1e-5)


def test_make_backbone_rejects_unknown_names():
  with pytest.raises(ValueError, match="unknown backbone"):
    backbones.make_backbone("resnet_v2_50")
  assert backbones.make_backbone("resnet_v1", depth=152).name == "resnet_v1_152"


# --- CoarseNet -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
  """The embedded:25 model, statistics of faces framed in SIZE x SIZE images,
  normalised images, and one CoarseNet initialisation."""
  model = face_models.load("embedded:25")
  layout = model.layout
  rng = np.random.default_rng(0)
  n = 16
  frontal = np.asarray(camera.framing_pose(model.mean_shape, np.zeros(3, np.float32),
                                           SIZE, SIZE))
  labels = np.zeros((n, layout.size), np.float32)
  labels[:, layout.pose] = frontal
  labels[:, :3] += 0.3 * rng.standard_normal((n, 3))
  labels[:, 3:5] += 2.0 * rng.standard_normal((n, 2))
  labels[:, 6] *= 1.0 + 0.1 * rng.standard_normal(n)
  labels[:, layout.shape] = rng.standard_normal((n, layout.num_shape)) * model.shape_std
  labels[:, layout.expression] = (rng.standard_normal((n, layout.num_expression))
                                  * model.expression_std)
  accumulator = normalization.StatisticsAccumulator()
  accumulator.add(labels, rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8))
  stats = accumulator.result()
  images = normalization.normalize_image(
      rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8), stats)
  net = coarse_net.CoarseNet(num_iterations=ITERATIONS, backbone="small",
                             backbone_kwargs=SMALL)
  variables = jax.jit(lambda key, x, m, s: net.init(key, x, m, s, train=False))(
      jax.random.key(0, impl="rbg"), images, model, stats)
  return model, stats, images, net, variables, labels


def test_coarse_net_shapes_iterations_and_start(setup):
  model, stats, images, net, variables, _ = setup
  params = variables["params"]
  # One subtree per iteration, each with its own backbone and head.
  assert sorted(params) == [f"iteration_{k + 1}" for k in range(ITERATIONS)]
  for k in range(ITERATIONS):
    assert sorted(params[f"iteration_{k + 1}"]) == ["head", "small"]
  first = params["iteration_1"]["small"]["conv1"]["weights"]
  second = params["iteration_2"]["small"]["conv1"]["weights"]
  assert first.shape == (3, 3, coarse_net.NUM_INPUT_CHANNELS, 8)
  assert not np.allclose(first, second)  # independently initialised
  assert backbones.count_params(params) == ITERATIONS * (
      backbones.count_params(params["iteration_1"]))

  estimates = jax.jit(lambda v, x, m, s: net.apply(v, x, m, s, train=False))(
      variables, images, model, stats)
  assert estimates.shape == (ITERATIONS, 2, 235) and estimates.dtype == jnp.float32
  # The heads start at zero, so every estimate is the start: normalised zeros,
  # i.e. the data's mean parameters.
  np.testing.assert_array_equal(estimates, 0.0)
  np.testing.assert_allclose(normalization.denormalize_params(estimates[0], stats),
                             np.broadcast_to(stats.param_mean, (2, 235)))


def test_start_estimate_renders_a_face(setup):
  model, stats, images, *_ = setup

  @jax.jit
  def start_inputs(model, params, images):
    face = face_render.render_face(model, params, None, SIZE, SIZE)
    return face, coarse_net.input_channels(images, face)

  face, inputs = start_inputs(model, stats.param_mean[None], images[:1])
  assert inputs.shape == (1, SIZE, SIZE, coarse_net.NUM_INPUT_CHANNELS)
  coverage = float(face.mask.mean())
  assert 0.1 < coverage < 0.9  # the mean pose frames the face in the image
  off_face = ~np.asarray(face.mask[0])
  np.testing.assert_array_equal(np.asarray(inputs[0, :, :, 3:])[off_face], 0.0)
  np.testing.assert_array_equal(inputs[..., :3], images[:1])


def test_a_kept_start_render_gives_the_same_estimates(setup):
  """inference.Predictor keeps CoarseNet's first input render
  (coarse_net.render_start): the estimates are those of rendering it in
  the call."""
  model, stats, images, net, variables, _ = setup
  variables = _perturbed_heads(variables)
  start = jax.jit(coarse_net.render_start, static_argnums=(2, 3))(model, stats, SIZE, SIZE)
  assert start.mask.shape == (1, SIZE, SIZE)
  apply = jax.jit(lambda v, x, m, s, f: net.apply(v, x, m, s, start_face=f))
  np.testing.assert_allclose(apply(variables, images, model, stats, start),
                             apply(variables, images, model, stats, None), rtol=1e-6,
                             atol=1e-6)


def _perturbed_heads(variables, scale=1e-2):
  """The variables with small non-zero heads, so updates are non-zero."""
  rng = np.random.default_rng(2)
  params = dict(variables["params"])
  for name in params:
    head = params[name]["head"]
    params[name] = {**params[name], "head": {
        "kernel": scale * rng.standard_normal(head["kernel"].shape).astype(np.float32),
        "bias": head["bias"]}}
  return {**variables, "params": params}


def test_coarse_net_gradient_is_finite(setup):
  model, stats, images, net, variables, labels = setup
  variables = _perturbed_heads(variables)
  targets = normalization.normalize_params(jnp.asarray(labels[:2]), stats)

  def loss(params, batch_stats):
    estimates, _ = net.apply({"params": params, "batch_stats": batch_stats}, images, model,
                             stats, train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.square(estimates - targets))

  value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"],
                                                   variables["batch_stats"])
  assert np.isfinite(value)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  for k in range(ITERATIONS):
    grad = grads[f"iteration_{k + 1}"]
    assert np.abs(grad["head"]["kernel"]).max() > 0
    assert np.abs(grad["small"]["conv1"]["weights"]).max() > 0
  # With non-zero heads the iterations refine: estimates differ per iteration.
  estimates = jax.jit(lambda v, x, m, s: net.apply(v, x, m, s, train=False))(
      variables, images, model, stats)
  assert not np.allclose(estimates[0], estimates[1])


def test_batch_stats_update_only_in_training(setup):
  model, stats, images, net, variables, _ = setup
  apply = jax.jit(lambda v, x, m, s: net.apply(v, x, m, s, train=True,
                                               mutable=["batch_stats"]))
  _, updated = apply(variables, images, model, stats)
  before = jax.tree_util.tree_leaves(variables["batch_stats"])
  after = jax.tree_util.tree_leaves(updated["batch_stats"])
  assert len(before) == len(after) == ITERATIONS * 2 * len(SMALL["widths"])
  assert all(not np.allclose(a, b) for a, b in zip(before, after))
  # Evaluation reads the running averages and writes nothing: it needs no
  # mutable collection, and a mutable one comes back unchanged.
  evaluate = jax.jit(lambda v, x, m, s: net.apply(v, x, m, s, train=False,
                                                  mutable=["batch_stats"]))
  _, unchanged = evaluate(variables, images, model, stats)
  for a, b in zip(before, jax.tree_util.tree_leaves(unchanged["batch_stats"])):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_compute(setup):
  model, stats, images, net, variables, _ = setup
  variables = _perturbed_heads(variables)
  half = net.clone(dtype=jnp.bfloat16)
  run = lambda module: jax.jit(lambda v, x, m, s: module.apply(v, x, m, s, train=False))(
      variables, images, model, stats)
  estimates, reference = run(half), run(net)
  assert estimates.dtype == jnp.float32 and estimates.shape == reference.shape
  assert np.all(np.isfinite(estimates))
  np.testing.assert_allclose(estimates, reference, atol=0.05 * np.abs(reference).max())


def test_coarse_net_rejects_mismatched_statistics(setup):
  model, stats, images, net, variables, _ = setup
  short = normalization.DataStatistics(stats.param_mean[:-1], stats.param_std[:-1],
                                       stats.mean_image, stats.count)
  with pytest.raises(ValueError, match="235"):
    jax.eval_shape(lambda: net.apply(variables, images, model, short, train=False))
