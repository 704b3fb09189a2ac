"""The train state, the optimizer and the data-parallel train step, shared by
every training stage.

Data parallelism is jit over a one-axis mesh (`facerecon.parallel`): the
global batch is split over all devices (of all hosts), parameters and
optimizer state are replicated, and XLA inserts the gradient all-reduce.
Statistics computed inside the step (losses, BatchNorm batch statistics)
are over the global batch, as if on one device. The same code runs on CPU,
GPU and TPU.

A step whose loss or gradient is not finite changes nothing but the step
counter and the skip counters (`TrainState.skipped`, `bad_in_a_row`); the
train loop stops after too many in a row.
"""

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import optax

from facerecon import parallel


@dataclasses.dataclass(frozen=True)
class Stage:
  """A training stage: its name ('coarse' or 'fine') and its fields,
  `config.<name>` (the schema of configs/default.py's `_stage`). Errors
  name a field by its full path (`field`)."""
  name: str
  config: ml_collections.ConfigDict

  @classmethod
  def of(cls, config, name: str) -> "Stage":
    return cls(name, config[name])

  def field(self, name: str) -> str:
    return f"config.{self.name}.{name}"

  def batch_sizes(self) -> dict:
    """{field name: value} of the stage's training and evaluation batch sizes."""
    return {self.field(name): self.config[name] for name in ("batch_size", "eval_batch_size")}


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array          # data steps taken (skipped ones included)
  params: Any
  batch_stats: Any         # BatchNorm running statistics ({} if none)
  opt_state: Any
  skipped: jax.Array       # updates skipped for a non-finite loss or gradient, in total
  bad_in_a_row: jax.Array  # consecutive skipped updates

  @classmethod
  def create(cls, params, batch_stats, tx: optax.GradientTransformation) -> "TrainState":
    zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated
    return cls(step=zero(), params=params, batch_stats=batch_stats, opt_state=tx.init(params),
               skipped=zero(), bad_in_a_row=zero())


def learning_rate_schedule(stage: Stage) -> optax.Schedule:
  """The stage's learning_rate, warmup_steps, num_train_steps, schedule
  ('constant' after warm-up, or 'cosine' decay to 0 at num_train_steps)."""
  config = stage.config
  warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
  if config.schedule == "constant":
    after = optax.constant_schedule(config.learning_rate)
  elif config.schedule == "cosine":
    after = optax.cosine_decay_schedule(
        config.learning_rate, max(config.num_train_steps - config.warmup_steps, 1))
  else:
    raise ValueError(f"{stage.field('schedule')}: unknown schedule '{config.schedule}' "
                     "(use 'constant' or 'cosine')")
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def _decays(params):
  """Weight decay on kernels (ndim > 1), not on biases or BatchNorm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(stage: Stage) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(W) with global-norm gradient clipping and decoupled weight decay
  (the original declared weight decay 1e-4 and never applied it): the
  stage's schedule fields, grad_clip_norm (0: off), weight_decay, adam_b1,
  adam_b2."""
  config = stage.config
  schedule = learning_rate_schedule(stage)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                           weight_decay=config.weight_decay, mask=_decays))
  return optax.chain(*parts), schedule


# --- The train step --------------------------------------------------------------------

# loss_fn(params, batch_stats, batch, rng, context) -> (loss, (new_batch_stats,
# metrics)); `context` holds replicated inputs such as the face model (passed,
# not closed over, so large arrays are not baked into the program).
LossFn = Callable[[Any, Any, Any, jax.Array, Any], tuple[jax.Array, tuple[Any, dict]]]


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
  """A pure step (state, batch, rng, context) -> (state, metrics). A
  non-finite loss or gradient keeps params, statistics and optimizer state
  as they were."""

  def train_step(state: TrainState, batch, rng, context=None):
    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, rng, context)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    def keep_if_finite(new, old):
      return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

    state = state.replace(
        step=state.step + 1,
        params=keep_if_finite(params, state.params),
        batch_stats=keep_if_finite(batch_stats, state.batch_stats),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        skipped=state.skipped + (~finite).astype(jnp.int32),
        bad_in_a_row=jnp.where(finite, 0, state.bad_in_a_row + 1))
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   finite=finite, bad_in_a_row=state.bad_in_a_row)
    return state, metrics

  return train_step


def jit_train_step(train_step, mesh: Mesh):
  """The step jitted for the mesh: state replicated, batch split over the
  data axis, the old state's buffers reused for the new one."""
  replicated = parallel.replicated(mesh)
  return jax.jit(train_step,
                 in_shardings=(replicated, parallel.batch_sharding(mesh), replicated, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)
