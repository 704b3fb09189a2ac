"""Data-parallel training on 4 devices computes what one device does."""

import jax
import ml_collections
import numpy as np
import pytest

from facerecon import parallel
from facerecon.training import state as state_lib
import toy


def test_four_devices_match_one_device():
  """Same global batch on 1 and 4 devices: same loss, same parameters
  (gradients averaged over the global batch, not summed)."""
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    state, step_fn = toy.setup()
    state, metrics = toy.run(state, step_fn, toy.batches(5), mesh)
    results.append((float(metrics["loss"]), float(metrics["grad_norm"]),
                    jax.device_get(state.params)))
  (loss1, g1, p1), (loss4, g4, p4) = results
  assert loss4 == pytest.approx(loss1, rel=1e-5)
  # Adam hides a wrong gradient scale in the parameters; the norm shows it.
  assert g4 == pytest.approx(g1, rel=1e-4)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_batches_that_do_not_split_are_refused():
  with pytest.raises(ValueError, match="multiple of the device count"):
    parallel.shard_batch(next(toy.batches(1, size=6)), parallel.make_mesh())
  stage = state_lib.Stage("fine", ml_collections.ConfigDict(dict(batch_size=8,
                                                                 eval_batch_size=6)))
  with pytest.raises(ValueError, match=r"config.fine.eval_batch_size \(6\) must be a multiple "
                     "of the 4 devices"):  # checked at the start, not at the first evaluation
    parallel.check_batch_sizes(stage.batch_sizes())
