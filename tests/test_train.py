"""The training machinery on a toy regression model: optimizer, skipped
non-finite steps, orbax checkpoints that resume exactly, the best
checkpoint, the train loop and SIGTERM (data-parallel equivalence on 4
fake devices: tests/multidevice)."""

import dataclasses
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from facerecon import checkpoints
from facerecon import parallel
from facerecon import rundir
from facerecon.data import normalization
from facerecon.data import sources
from facerecon.training import loop
from facerecon.training import state as state_lib
import toy


def test_training_reduces_the_loss_and_updates_statistics():
  mesh = parallel.make_mesh()
  state, step_fn = toy.setup(toy.stage(schedule="constant", num_train_steps=60))
  start_mean = np.asarray(state.batch_stats["BatchNorm_0"]["mean"])
  losses = []
  state, _ = toy.run(state, step_fn, toy.batches(60, size=32), mesh, losses)
  assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
  assert int(state.step) == 60 and int(state.skipped) == 0
  assert not np.allclose(state.batch_stats["BatchNorm_0"]["mean"], start_mean)


def test_weight_decay_on_kernels_only():
  """With zero gradients only decay moves the parameters: kernels shrink,
  biases and BatchNorm scales stay."""
  state, _ = toy.setup(toy.stage(warmup_steps=0, schedule="constant", learning_rate=0.1,
                            weight_decay=0.5, grad_clip_norm=0.0))
  tx, _ = state_lib.make_optimizer(toy.stage(warmup_steps=0, schedule="constant",
                                           learning_rate=0.1, weight_decay=0.5,
                                           grad_clip_norm=0.0))
  zeros = jax.tree.map(jnp.zeros_like, state.params)
  updates, _ = tx.update(zeros, tx.init(state.params), state.params)
  kernel = state.params["Dense_0"]["kernel"]
  np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.1 * 0.5 * kernel, rtol=1e-5)
  assert np.all(updates["Dense_1"]["bias"] == 0)
  assert np.all(updates["BatchNorm_0"]["scale"] == 0)


def test_unknown_schedule_is_named():
  with pytest.raises(ValueError, match="config.coarse.schedule.*'linear'"):
    state_lib.make_optimizer(toy.stage(schedule="linear"))
  fine = state_lib.Stage("fine", toy.stage(schedule="linear").config)
  with pytest.raises(ValueError, match="config.fine.schedule.*'linear'"):
    state_lib.make_optimizer(fine)


def test_non_finite_step_is_skipped():
  mesh = parallel.make_mesh()
  state, step_fn = toy.setup()
  state, _ = toy.run(state, step_fn, toy.batches(2), mesh)
  before = jax.device_get(state)
  bad = next(toy.batches(1, seed=5))
  bad["x"][3, 1] = np.nan
  state, metrics = toy.run(state, step_fn, [bad, bad], mesh)
  assert not bool(metrics["finite"])
  assert int(state.step) == 4 and int(state.skipped) == 2 and int(state.bad_in_a_row) == 2
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(jax.device_get(state.opt_state)),
                  jax.tree.leaves(before.opt_state)):
    np.testing.assert_array_equal(a, b)
  state, metrics = toy.run(state, step_fn, toy.batches(1, seed=6), mesh)
  assert bool(metrics["finite"]) and int(state.bad_in_a_row) == 0 and int(state.skipped) == 2


def test_checkpoints_resume_exactly(tmp_path):
  """6 steps straight == 3 steps, save, restore in a fresh manager, 3 more;
  the input iterator state comes back too; only `keep` checkpoints stay."""
  mesh = parallel.make_mesh()
  batches = list(toy.batches(6))
  state, step_fn = toy.setup()
  straight, _ = toy.run(state, step_fn, batches, mesh)

  state, step_fn = toy.setup()
  saved = checkpoints.Checkpoints(str(tmp_path / "checkpoints"), every=1, keep=2)
  template = jax.tree.map(jnp.copy, state)  # `state` itself is donated below
  for i, batch in enumerate(batches[:3]):
    state, _ = toy.run(state, step_fn, [batch], mesh)
    assert saved.save(i + 1, state, {"position": i + 1})
  saved.wait()
  saved.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]

  reopened = checkpoints.Checkpoints(str(tmp_path / "checkpoints"), every=1, keep=2)
  assert reopened.latest_step() == 3
  restored, data_state = reopened.restore(template)
  assert data_state == {"position": 3} and int(restored.step) == 3
  resumed, _ = toy.run(restored, step_fn, batches[3:], mesh)
  for a, b in zip(jax.tree.leaves(jax.device_get(resumed)),
                  jax.tree.leaves(jax.device_get(straight))):
    np.testing.assert_array_equal(a, b)
  reopened.close()


def test_restore_without_checkpoints_names_the_folder(tmp_path):
  state, _ = toy.setup()
  empty = checkpoints.Checkpoints(str(tmp_path / "empty"), every=1, keep=1)
  with pytest.raises(FileNotFoundError, match="empty"):
    empty.restore(state)
  empty.close()


def test_synthetic_splits_must_not_share_a_seed():
  """A face depends only on (seed, index): a seed sweep reaching
  config.synthetic.validation_seed would otherwise train on the validation set."""
  config = default.get_config()
  assert [sources.synthetic_seed(config, s) for s in ("train", "val", "test")] == [0, 2, 3]
  config.coarse.seed = 2
  with pytest.raises(ValueError, match="config.coarse.seed and config.synthetic.validation_seed "
                     "are both 2"):
    sources.synthetic_seed(config, "train")
  config.coarse.seed, config.fine.seed = 0, 3
  with pytest.raises(ValueError, match="config.fine.seed and config.synthetic.test_seed are "
                     "both 3"):
    sources.synthetic_seed(config, "val", "fine")


def test_a_run_keeps_the_statistics_it_trained_with(tmp_path):
  """Statistics saved by training are the ones a later reader of the run
  and a resumed run get, even with another config (here fewer statistics
  samples); a run that restarts before any checkpoint replaces them;
  statistics of another parameter layout are refused."""
  import orbax.checkpoint as ocp

  def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  run = rundir.RunDir(str(tmp_path))
  config = default.get_config()
  config.model, config.image_size, config.synthetic.statistics_samples = "embedded:25", 32, 16
  model = rundir.load_model(config)
  first = rundir.statistics(config, model, run, training=True)
  config.synthetic.statistics_samples = 64  # (the first attempt's config was wrong)
  trained = rundir.statistics(config, model, run, training=True)
  assert not same(first, trained) and os.path.isfile(run.statistics)
  manager = ocp.CheckpointManager(run.checkpoints)  # it reaches step 5
  manager.save(5, args=ocp.args.StandardSave({"w": np.zeros(2)}))
  manager.wait_until_finished()
  manager.close()

  config.synthetic.statistics_samples = 16
  other = rundir.statistics(config, model)
  assert not same(other, trained)
  assert same(rundir.model_and_statistics(config, run)[1], trained)  # FineNet, reconstruct
  assert same(rundir.statistics(config, model, run, training=True), trained)  # resume

  normalization.save_statistics(dataclasses.replace(
      trained, param_mean=trained.param_mean[:10], param_std=trained.param_std[:10]),
      run.statistics)
  with pytest.raises(ValueError, match="statistics of 10 parameters, but config.model"):
    rundir.model_and_statistics(config, run)


def test_sigterm_sets_the_preemption_flag():
  flag = loop.PreemptionFlag()
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
    return next(toy.batches(1, seed=self.position))

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def test_train_loop_stops_at_sigterm_with_a_checkpoint(tmp_path):
  """A SIGTERM during step 3 of 10: step 3 is checkpointed (off the every-4
  schedule), the loop raises Preempted instead of returning as if done, and
  a second loop resumes from step 3."""
  mesh = parallel.make_mesh()
  state, step_fn = toy.setup()
  stage = ml_collections.ConfigDict(dict(
      seed=0, num_train_steps=10, batch_size=8, log_every=100, eval_every=100,
      checkpoint_every=4, keep_checkpoints=2, max_bad_steps=3, best_metric="mse"))
  jitted = state_lib.jit_train_step(step_fn, mesh)
  steps_run = []

  def step_then_sigterm(state, batch, rng, context, kill_at=3):
    state, metrics = jitted(state, batch, rng, context)
    steps_run.append(int(state.step))
    if steps_run[-1] == kill_at:
      os.kill(os.getpid(), signal.SIGTERM)
    return state, metrics

  def train(state, step_fn, train_data=None):
    return loop.run(loop.Task(
        title="toy", stage=state_lib.Stage("coarse", stage), run=rundir.RunDir(str(tmp_path)),
        state=state, step_fn=step_fn, train_data=train_data or _Stream(),
        make_batch=lambda host: parallel.shard_batch(host, mesh), context=None,
        schedule=lambda step: 0.05, evaluate=lambda state, step, writer: {"mse": 1.0}))

  template = jax.tree.map(jnp.copy, state)
  with pytest.raises(loop.Preempted, match="at step 3") as stopped:
    train(state, step_then_sigterm)
  assert stopped.value.step == 3 and steps_run == [1, 2, 3]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back

  steps_run.clear()
  resumed = jax.tree.map(jnp.copy, template)
  metrics = train(template, lambda *args: step_then_sigterm(*args, kill_at=None))
  assert metrics == {"mse": 1.0} and steps_run == list(range(4, 11))
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints")) == [8, 10]

  class SignalledWhileSaving(_Stream):  # after the last step's preemption check
    def get_state(self):
      if self.position == 10:
        os.kill(os.getpid(), signal.SIGTERM)
      return super().get_state()

  shutil.rmtree(tmp_path / "checkpoints")
  stage.checkpoint_every = 5
  with pytest.raises(loop.Preempted, match="at step 10"):
    train(resumed, lambda *args: step_then_sigterm(*args, kill_at=None), SignalledWhileSaving())
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints")) == [5, 10]


def test_best_checkpoint_keeps_the_lowest_and_survives_reopening(tmp_path):
  directory = str(tmp_path / "best")
  variables = lambda v: {"params": {"w": jnp.full((2, 3), v)}}
  best = checkpoints.BestCheckpoint(directory, "vertex_error", "config.coarse.best_metric")
  assert best.update(10, {"vertex_error": 0.5, "depth_error": 1.0}, variables(1.0))
  assert not best.update(20, {"vertex_error": 0.7}, variables(2.0))
  assert best.update(30, {"vertex_error": 0.2}, variables(3.0))
  best.close()
  reopened = checkpoints.BestCheckpoint(directory, "vertex_error", "config.coarse.best_metric")
  assert reopened.record["step"] == 30 and reopened.record["value"] == 0.2
  assert not reopened.update(40, {"vertex_error": 0.3}, variables(4.0))
  restored = reopened.restore(variables(0.0))
  np.testing.assert_array_equal(restored["params"]["w"], np.full((2, 3), 3.0))
  assert sorted(p for p in os.listdir(directory) if p.isdigit()) == ["30"]
  with pytest.raises(ValueError, match="config.coarse.best_metric.*depth_error"):
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
  best = checkpoints.BestCheckpoint(str(directory), "vertex_error")
  assert best.update(10, {"vertex_error": 0.5}, variables(1.0))
  assert not best.update(10, {"vertex_error": 0.4}, variables(9.0))  # its best step again
  best.close()
  stray = ocp.CheckpointManager(str(directory))  # the killed run's unrecorded save
  stray.save(20, args=ocp.args.StandardSave(variables(2.0)), force=True)
  stray.wait_until_finished()
  stray.close()

  resumed = checkpoints.BestCheckpoint(str(directory), "vertex_error")
  assert resumed.record["step"] == 10
  np.testing.assert_array_equal(resumed.restore(variables(0.0))["params"]["w"], [1.0, 1.0])
  assert resumed.update(20, {"vertex_error": 0.3}, variables(3.0))
  assert sorted(p for p in os.listdir(directory) if p.isdigit()) == ["20"]
  np.testing.assert_array_equal(resumed.restore(variables(0.0))["params"]["w"], [3.0, 3.0])
  resumed.close()
