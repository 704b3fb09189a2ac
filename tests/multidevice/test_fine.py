"""FineNet on 4 devices: each device renders its own coarse fits and
computes the loss on its photos, and the loss and gradients are one
device's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon import face_models
from facerecon import networks
from facerecon import parallel
from facerecon import rundir
from facerecon.data import sources
from facerecon.training import coarse
from facerecon.training import fine
import tiny


@pytest.fixture(scope="module")
def coarse_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("coarse"))
  coarse.train_and_evaluate(tiny.config(coarse__num_train_steps=2, coarse__eval_every=2),
                            workdir, devices=jax.devices()[:1])
  return workdir


def loss_and_gradient(config, coarse_workdir, devices):
  """FineNet's loss terms and gradient on one training batch on `devices`,
  with the output layer moved off zero (so every layer has a gradient)."""
  mesh = parallel.make_mesh(devices)
  coarse_net, coarse_variables, model, statistics = networks.load_coarse(
      config, rundir.RunDir(coarse_workdir), mesh)
  net = networks.fine_net(config)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.01 if "detail" in str(path) else x,
      networks.init_fine_params(config, net))
  host = next(sources.open_photos(config, "train", 8, labels=True))
  batch = parallel.shard_batch({k: np.asarray(v) for k, v in host.items()}, mesh)
  loss_fn = fine.loss_fn(net, fine.coarse_fit_fn(coarse_net, config, mesh), config, mesh)
  context = jax.device_put((model, statistics, coarse_variables, face_models.load(config.model)),
                           parallel.replicated(mesh))
  (loss, (_, terms)), grads = jax.jit(jax.value_and_grad(
      lambda p: loss_fn(p, {}, batch, None, context), has_aux=True))(params)
  out = {name: float(value) for name, value in terms.items()}
  out["loss"] = float(loss)
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    out[jax.tree_util.keystr(path)] = float(jnp.linalg.norm(leaf))
  return out


@pytest.mark.slow
def test_fine_stage_on_four_devices_matches_one(coarse_workdir, tmp_path):
  """The loss and the gradient of every FineNet variable are those of one
  device (not 4x: see the known pitfall of FFI calls under shard_map), and
  a run completes. (Trained parameters are not compared: Adam's first steps
  are nearly sign(gradient), so float summation order decides tiny
  gradients' steps.)"""
  # Every loss term weighted: the paper's and the supervised ones (albedo's too).
  config = tiny.config(coarse__num_train_steps=2, fine__num_train_steps=1,
                       fine__coarse_workdir=coarse_workdir, fine__loss__sfs=1.0,
                       fine__loss__fidelity=2.0, fine__loss__smoothness=1.0,
                       fine__loss__albedo=1.0)
  one = loss_and_gradient(config, coarse_workdir, jax.devices()[:1])
  four = loss_and_gradient(config, coarse_workdir, jax.devices())
  assert sorted(four) == sorted(one) and len(one) > 10
  for name in one:
    assert four[name] == pytest.approx(one[name], rel=1e-4, abs=1e-7), name
  metrics = fine.train_and_evaluate(config, str(tmp_path / "four"))
  assert all(np.isfinite(v) for v in metrics.values()) and "normal_error" in metrics
