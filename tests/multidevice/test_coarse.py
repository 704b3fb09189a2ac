"""CoarseNet's training on 4 devices: each device renders its own examples,
and a run ends with the evaluation of a run on one device."""

import jax
import pytest

from facerecon.training import coarse
import tiny


@pytest.mark.slow
def test_four_devices_train_like_one(tmp_path):
  """The global batch of 8 split 2 per device, each device rasterizing its
  own 2 (every rasterizer call in the compiled step sees a batch of 2, none
  the whole batch of 8, apart from the one render of the start estimate
  that all images share, batch 1); the final evaluation is one device's."""
  config = tiny.config(coarse__num_train_steps=3, coarse__eval_every=3)
  training = coarse.build(config)
  assert training.mesh.size == 4
  batch = coarse.make_batch(next(training.train_data), training.statistics, training.mesh)
  hlo = training.step_fn.lower(training.state, batch, jax.random.PRNGKey(0),
                               training.context).compile().as_text()
  calls = [line for line in hlo.splitlines()
           if 'custom_call_target="facerecon_rasterize_cpu"' in line]
  start = [line for line in calls if "= (s32[1,32,32]" in line]
  per_device = [line for line in calls if line not in start]
  assert len(start) <= 1, start
  assert per_device and all("= (s32[2,32,32]" in line and "f32[8," not in line
                            for line in per_device), calls

  one = coarse.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
  four = coarse.train_and_evaluate(config, str(tmp_path / "four"))
  assert sorted(four) == sorted(one)
  for name in one:
    assert four[name] == pytest.approx(one[name], rel=1e-3, abs=1e-6), name
