"""The training machinery on a toy regression model: optimizer, skipped
non-finite steps, data-parallel equivalence on 4 fake devices, orbax
checkpoints that resume exactly, the SIGTERM flag."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import ROOT
from facerecon.data import normalization
from facerecon import train


class _Toy(nn.Module):
  """Dense + BatchNorm (so there are batch statistics) + Dense. No bias
  before the BatchNorm (its true gradient is 0, and Adam would blow float
  rounding up into full-size steps)."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(8, use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(1)(nn.relu(x))[:, 0]


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      learning_rate=0.05, warmup_steps=2, num_train_steps=20, schedule="cosine",
      grad_clip_norm=1.0, weight_decay=1e-2, adam_b1=0.9, adam_b2=0.999))
  config.update(overrides)
  return config


def _setup(config=None):
  model = _Toy()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((4, 3)), train=False)
  tx, _ = train.make_optimizer(config or _config())

  def loss_fn(params, batch_stats, batch, rng, context):
    del rng, context
    prediction, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                      batch["x"], train=True, mutable=["batch_stats"])
    loss = jnp.mean((prediction - batch["y"]) ** 2)
    return loss, (updates["batch_stats"], {"mse": loss})

  state = train.TrainState.create(variables["params"], variables["batch_stats"], tx)
  return state, train.make_train_step(loss_fn, tx)


def _batches(count, size=8, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    x = rng.normal(size=(size, 3)).astype(np.float32)
    yield {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)}


def _run(state, step_fn, batches, mesh, losses=None):
  """Steps through `batches` (the state is donated: use the returned one)."""
  step = train.jit_train_step(step_fn, mesh)
  for batch in batches:
    state, metrics = step(state, train.shard_batch(batch, mesh), jax.random.PRNGKey(0), None)
    # One step in flight: several async multi-device steps on a 2-core CPU
    # can stall XLA's rendezvous.
    jax.block_until_ready(metrics)
    if losses is not None:
      losses.append(float(metrics["loss"]))
  return state, metrics


def test_training_reduces_the_loss_and_updates_statistics():
  mesh = train.make_mesh()
  state, step_fn = _setup(_config(schedule="constant", num_train_steps=60))
  start_mean = np.asarray(state.batch_stats["BatchNorm_0"]["mean"])
  losses = []
  state, _ = _run(state, step_fn, _batches(60, size=32), mesh, losses)
  assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
  assert int(state.step) == 60 and int(state.skipped) == 0
  assert not np.allclose(state.batch_stats["BatchNorm_0"]["mean"], start_mean)


def test_weight_decay_on_kernels_only():
  """With zero gradients only decay moves the parameters: kernels shrink,
  biases and BatchNorm scales stay."""
  state, _ = _setup(_config(warmup_steps=0, schedule="constant", learning_rate=0.1,
                            weight_decay=0.5, grad_clip_norm=0.0))
  tx, _ = train.make_optimizer(_config(warmup_steps=0, schedule="constant",
                                       learning_rate=0.1, weight_decay=0.5, grad_clip_norm=0.0))
  zeros = jax.tree.map(jnp.zeros_like, state.params)
  updates, _ = tx.update(zeros, tx.init(state.params), state.params)
  kernel = state.params["Dense_0"]["kernel"]
  np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.1 * 0.5 * kernel, rtol=1e-5)
  assert np.all(updates["Dense_1"]["bias"] == 0)
  assert np.all(updates["BatchNorm_0"]["scale"] == 0)


def test_unknown_schedule_is_named():
  with pytest.raises(ValueError, match="config.schedule.*'linear'"):
    train.make_optimizer(_config(schedule="linear"))
  with pytest.raises(ValueError, match="config.fine.schedule.*'linear'"):
    train.make_optimizer(_config(schedule="linear"), "config.fine.")


def test_non_finite_step_is_skipped():
  mesh = train.make_mesh()
  state, step_fn = _setup()
  state, _ = _run(state, step_fn, _batches(2), mesh)
  before = jax.device_get(state)
  bad = next(_batches(1, seed=5))
  bad["x"][3, 1] = np.nan
  state, metrics = _run(state, step_fn, [bad, bad], mesh)
  assert not bool(metrics["finite"])
  assert int(state.step) == 4 and int(state.skipped) == 2 and int(state.bad_in_a_row) == 2
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(jax.device_get(state.opt_state)),
                  jax.tree.leaves(before.opt_state)):
    np.testing.assert_array_equal(a, b)
  state, metrics = _run(state, step_fn, _batches(1, seed=6), mesh)
  assert bool(metrics["finite"]) and int(state.bad_in_a_row) == 0 and int(state.skipped) == 2


_FOUR_DEVICES = r"""
import jax, numpy as np, sys
sys.path.insert(0, {tests!r})
import test_train as t
from facerecon import train
assert jax.device_count() == 4
results = []
for devices in (jax.devices()[:1], jax.devices()):
  mesh = train.make_mesh(devices)
  state, step_fn = t._setup()
  state, metrics = t._run(state, step_fn, t._batches(5), mesh)
  results.append((float(metrics["loss"]), float(metrics["grad_norm"]),
                  jax.device_get(state.params)))
(loss1, g1, p1), (loss4, g4, p4) = results
assert abs(loss1 - loss4) <= 1e-5 * abs(loss1), (loss1, loss4)
# Adam hides a wrong gradient scale in the parameters; the norm shows it.
assert abs(g1 - g4) <= 1e-4 * abs(g1), (g1, g4)
for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
try:
  train.shard_batch(next(t._batches(1, size=6)), train.make_mesh())
  raise AssertionError("a batch of 6 was split over 4 devices")
except ValueError as e:
  assert "multiple of the device count" in str(e)
import ml_collections
stage = ml_collections.ConfigDict(dict(batch_size=8, eval_batch_size=6))
try:  # checked at the start, not at the first evaluation
  train.check_batch_sizes(stage, "config.fine.")
  raise AssertionError("an evaluation batch of 6 passed on 4 devices")
except ValueError as e:
  assert "config.fine.eval_batch_size (6) must be a multiple of the 4 devices" in str(e), e
print("same on 1 and 4 devices", loss1, loss4)
"""


def test_four_devices_match_one_device():
  """Same global batch on 1 and 4 (fake CPU) devices: same loss, same
  parameters (gradients averaged over the global batch, not summed); a
  batch that does not split evenly is refused."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  code = _FOUR_DEVICES.format(tests=os.path.join(ROOT, "tests"))
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert "same on 1 and 4 devices" in result.stdout


def test_checkpoints_resume_exactly(tmp_path):
  """6 steps straight == 3 steps, save, restore in a fresh manager, 3 more;
  the input iterator state comes back too; only `keep` checkpoints stay."""
  mesh = train.make_mesh()
  batches = list(_batches(6))
  state, step_fn = _setup()
  straight, _ = _run(state, step_fn, batches, mesh)

  state, step_fn = _setup()
  checkpoints = train.Checkpoints(str(tmp_path / "checkpoints"), every=1, keep=2)
  template = jax.tree.map(jnp.copy, state)  # `state` itself is donated below
  for i, batch in enumerate(batches[:3]):
    state, _ = _run(state, step_fn, [batch], mesh)
    assert checkpoints.save(i + 1, state, {"position": i + 1})
  checkpoints.wait()
  checkpoints.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]

  reopened = train.Checkpoints(str(tmp_path / "checkpoints"), every=1, keep=2)
  assert reopened.latest_step() == 3
  restored, data_state = reopened.restore(template)
  assert data_state == {"position": 3} and int(restored.step) == 3
  resumed, _ = _run(restored, step_fn, batches[3:], mesh)
  for a, b in zip(jax.tree.leaves(jax.device_get(resumed)),
                  jax.tree.leaves(jax.device_get(straight))):
    np.testing.assert_array_equal(a, b)
  reopened.close()


def test_restore_without_checkpoints_names_the_folder(tmp_path):
  state, _ = _setup()
  checkpoints = train.Checkpoints(str(tmp_path / "empty"), every=1, keep=1)
  with pytest.raises(FileNotFoundError, match="empty"):
    checkpoints.restore(state)
  checkpoints.close()


def test_synthetic_splits_must_not_share_a_seed():
  """A face depends only on (seed, index): a seed sweep reaching
  config.data.validation_seed would otherwise train on the validation set."""
  from configs import default

  config = default.get_config()
  assert [train.synthetic_split_seed(config, s) for s in ("train", "val", "test")] == [0, 2, 3]
  config.seed = 2
  with pytest.raises(ValueError, match="config.seed and config.data.validation_seed are both 2"):
    train.synthetic_split_seed(config, "train")
  config.seed, config.fine.seed = 0, 3
  with pytest.raises(ValueError, match="config.fine.seed and config.data.test_seed are both 3"):
    train.synthetic_split_seed(config, "val", "config.fine.seed")


def test_a_run_keeps_the_statistics_it_trained_with(tmp_path):
  """Statistics saved by training are the ones a later reader of the run
  and a resumed run get, even with another config.data (here fewer
  statistics samples); a run that restarts before any checkpoint replaces
  them; statistics of another parameter layout are refused."""
  import orbax.checkpoint as ocp
  from configs import default

  def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  workdir = str(tmp_path)
  config = default.get_config()
  config.model, config.image_size, config.data.statistics_samples = "embedded:25", 32, 16
  _, first = train.model_and_statistics(config, workdir, training=True)
  config.data.statistics_samples = 64  # (the first attempt's config was wrong)
  _, trained = train.model_and_statistics(config, workdir, training=True)
  assert not same(first, trained) and (tmp_path / train.STATISTICS_FILE).is_file()
  manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))  # it reaches step 5
  manager.save(5, args=ocp.args.StandardSave({"w": np.zeros(2)}))
  manager.wait_until_finished()
  manager.close()

  config.data.statistics_samples = 16
  _, other = train.model_and_statistics(config)
  assert not same(other, trained)
  assert same(train.model_and_statistics(config, workdir)[1], trained)  # FineNet, reconstruct
  assert same(train.model_and_statistics(config, workdir, training=True)[1], trained)  # resume

  normalization.save_statistics(dataclasses.replace(
      trained, param_mean=trained.param_mean[:10], param_std=trained.param_std[:10]),
      tmp_path / train.STATISTICS_FILE)
  with pytest.raises(ValueError, match="statistics of 10 parameters, but config.model"):
    train.model_and_statistics(config, workdir)


def test_sigterm_sets_the_preemption_flag():
  flag = train.PreemptionFlag()
  try:
    assert not flag.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.reached(2)
  finally:
    flag.restore_handler()


class _Stream:
  """Toy batches with the get_state / set_state of the train loop's input."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    self.position += 1
    return next(_batches(1, seed=self.position))

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def test_train_loop_stops_at_sigterm_with_a_checkpoint(tmp_path):
  """A SIGTERM during step 3 of 10: step 3 is checkpointed (off the every-4
  schedule), the loop raises Preempted instead of returning as if done, and
  a second loop resumes from step 3."""
  mesh = train.make_mesh()
  state, step_fn = _setup()
  stage = ml_collections.ConfigDict(dict(
      num_train_steps=10, batch_size=8, log_every=100, eval_every=100, checkpoint_every=4,
      keep_checkpoints=2, max_bad_steps=3, best_metric="mse"))
  jitted = train.jit_train_step(step_fn, mesh)
  steps_run = []

  def step_then_sigterm(state, batch, rng, context, kill_at=3):
    state, metrics = jitted(state, batch, rng, context)
    steps_run.append(int(state.step))
    if steps_run[-1] == kill_at:
      os.kill(os.getpid(), signal.SIGTERM)
    return state, metrics

  def loop(state, step_fn, train_data=None):
    return train.run_train_loop(
        stage, str(tmp_path), seed=0, state=state, step_fn=step_fn,
        train_data=train_data or _Stream(),
        make_batch=lambda host: train.shard_batch(host, mesh), context=None,
        schedule=lambda step: 0.05, evaluate=lambda state, step, writer: {"mse": 1.0})

  template = jax.tree.map(jnp.copy, state)
  with pytest.raises(train.Preempted, match="at step 3") as stopped:
    loop(state, step_then_sigterm)
  assert stopped.value.step == 3 and steps_run == [1, 2, 3]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back

  steps_run.clear()
  resumed = jax.tree.map(jnp.copy, template)
  metrics = loop(template, lambda *args: step_then_sigterm(*args, kill_at=None))
  assert metrics == {"mse": 1.0} and steps_run == list(range(4, 11))
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints")) == [8, 10]

  class SignalledWhileSaving(_Stream):  # after the last step's preemption check
    def get_state(self):
      if self.position == 10:
        os.kill(os.getpid(), signal.SIGTERM)
      return super().get_state()

  shutil.rmtree(tmp_path / "checkpoints")
  stage.checkpoint_every = 5
  with pytest.raises(train.Preempted, match="at step 10"):
    loop(resumed, lambda *args: step_then_sigterm(*args, kill_at=None), SignalledWhileSaving())
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints")) == [5, 10]


def test_best_checkpoint_keeps_the_lowest_and_survives_reopening(tmp_path):
  directory = str(tmp_path / "best")
  variables = lambda v: {"params": {"w": jnp.full((2, 3), v)}}
  best = train.BestCheckpoint(directory, "vertex_error")
  assert best.update(10, {"vertex_error": 0.5, "depth_error": 1.0}, variables(1.0))
  assert not best.update(20, {"vertex_error": 0.7}, variables(2.0))
  assert best.update(30, {"vertex_error": 0.2}, variables(3.0))
  best.close()
  reopened = train.BestCheckpoint(directory, "vertex_error")
  assert reopened.record["step"] == 30 and reopened.record["value"] == 0.2
  assert not reopened.update(40, {"vertex_error": 0.3}, variables(4.0))
  restored = reopened.restore(variables(0.0))
  np.testing.assert_array_equal(restored["params"]["w"], np.full((2, 3), 3.0))
  assert sorted(p for p in os.listdir(directory) if p.isdigit()) == ["30"]
  with pytest.raises(ValueError, match="config.best_metric.*depth_error"):
    reopened.update(50, {"depth_error": 0.1}, variables(5.0))
  reopened.close()


def test_best_checkpoint_after_a_kill_between_saving_and_recording(tmp_path):
  """A run killed after saving a new best but before best.json names it
  leaves that step behind; the resumed run, evaluating the step again, saves
  it anew (orbax refuses to overwrite a step), and re-evaluating the
  recorded best step (on an accelerator, not bit-identical) keeps it."""
  import orbax.checkpoint as ocp

  directory = tmp_path / "best"
  variables = lambda v: {"params": {"w": jnp.full((2,), v)}}
  best = train.BestCheckpoint(str(directory), "vertex_error")
  assert best.update(10, {"vertex_error": 0.5}, variables(1.0))
  assert not best.update(10, {"vertex_error": 0.4}, variables(9.0))  # its best step again
  best.close()
  stray = ocp.CheckpointManager(str(directory))  # the killed run's unrecorded save
  stray.save(20, args=ocp.args.StandardSave(variables(2.0)), force=True)
  stray.wait_until_finished()
  stray.close()

  resumed = train.BestCheckpoint(str(directory), "vertex_error")
  assert resumed.record["step"] == 10
  np.testing.assert_array_equal(resumed.restore(variables(0.0))["params"]["w"], [1.0, 1.0])
  assert resumed.update(20, {"vertex_error": 0.3}, variables(3.0))
  assert sorted(p for p in os.listdir(directory) if p.isdigit()) == ["20"]
  np.testing.assert_array_equal(resumed.restore(variables(0.0))["params"]["w"], [3.0, 3.0])
  resumed.close()
