"""A toy regression model trained by the real training machinery (train
state, optimizer, data-parallel step), for the tests of that machinery."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from facerecon import parallel
from facerecon.training import state as state_lib


class Toy(nn.Module):
  """Dense + BatchNorm (so there are batch statistics) + Dense. No bias
  before the BatchNorm (its true gradient is 0, and Adam would blow float
  rounding up into full-size steps)."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(8, use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(1)(nn.relu(x))[:, 0]


def stage(**overrides) -> state_lib.Stage:
  config = ml_collections.ConfigDict(dict(
      learning_rate=0.05, warmup_steps=2, num_train_steps=20, schedule="cosine",
      grad_clip_norm=1.0, weight_decay=1e-2, adam_b1=0.9, adam_b2=0.999))
  config.update(overrides)
  return state_lib.Stage("coarse", config)


def setup(config=None):
  model = Toy()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((4, 3)), train=False)
  tx, _ = state_lib.make_optimizer(config or stage())

  def loss_fn(params, batch_stats, batch, rng, context):
    del rng, context
    prediction, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                      batch["x"], train=True, mutable=["batch_stats"])
    loss = jnp.mean((prediction - batch["y"]) ** 2)
    return loss, (updates["batch_stats"], {"mse": loss})

  state = state_lib.TrainState.create(variables["params"], variables["batch_stats"], tx)
  return state, state_lib.make_train_step(loss_fn, tx)


def batches(count, size=8, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    x = rng.normal(size=(size, 3)).astype(np.float32)
    yield {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)}


def run(state, step_fn, batches, mesh, losses=None):
  """Steps through `batches` (the state is donated: use the returned one)."""
  step = state_lib.jit_train_step(step_fn, mesh)
  for batch in batches:
    state, metrics = step(state, parallel.shard_batch(batch, mesh), jax.random.PRNGKey(0), None)
    # One step in flight: several async multi-device steps on a 2-core CPU
    # can stall XLA's rendezvous.
    jax.block_until_ready(metrics)
    if losses is not None:
      losses.append(float(metrics["loss"]))
  return state, metrics
