"""Training machinery: a device mesh, data-parallel train steps, the
optimizer, and checkpoints that resume exactly.

Data parallelism is jit over a one-axis mesh ('data'): the global batch is
split over all devices (of all hosts), parameters and optimizer state are
replicated, and XLA inserts the gradient all-reduce. Statistics computed
inside the step (losses, BatchNorm batch statistics) are over the global
batch, as if on one device. The same code runs on CPU, GPU and TPU.

A step whose loss or gradient is not finite changes nothing but the step
counter and the skip counters (`TrainState.skipped`, `bad_in_a_row`); the
caller stops after too many in a row.

The model-specific parts (CoarseNet, the losses, the data) plug in through
`loss_fn`; `train_and_evaluate` (the issue's entry point) builds on this.
"""

import dataclasses
import os
import signal
import threading
from typing import Any, Callable

import flax.struct
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

DATA_AXIS = "data"


# --- Devices ------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
  """A one-axis mesh over `devices` (default: every device of every host)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh):
  """This host's part of the global batch (numpy, leading axis = examples)
  -> global arrays split over the mesh's data axis."""
  sharding = batch_sharding(mesh)
  per_device = jax.process_count() * np.asarray(jax.tree.leaves(batch)[0]).shape[0]
  if per_device % mesh.size:
    raise ValueError(f"the global batch ({per_device}) does not split evenly over "
                     f"{mesh.size} devices; make batch_size a multiple of the device count")
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


# --- State and optimizer --------------------------------------------------------------


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


def learning_rate_schedule(config) -> optax.Schedule:
  """config: learning_rate, warmup_steps, num_train_steps, schedule
  ('constant' after warm-up, or 'cosine' decay to 0 at num_train_steps)."""
  warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
  if config.schedule == "constant":
    after = optax.constant_schedule(config.learning_rate)
  elif config.schedule == "cosine":
    after = optax.cosine_decay_schedule(
        config.learning_rate, max(config.num_train_steps - config.warmup_steps, 1))
  else:
    raise ValueError(f"config.schedule: unknown schedule '{config.schedule}' "
                     "(use 'constant' or 'cosine')")
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def _decays(params):
  """Weight decay on kernels (ndim > 1), not on biases or BatchNorm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(W) with global-norm gradient clipping and decoupled weight decay
  (the original declared weight decay 1e-4 and never applied it). config:
  the schedule fields, grad_clip_norm (0: off), weight_decay, adam_b1,
  adam_b2."""
  schedule = learning_rate_schedule(config)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                           weight_decay=config.weight_decay, mask=_decays))
  return optax.chain(*parts), schedule


# --- The train step --------------------------------------------------------------------

# loss_fn(params, batch_stats, batch, rng) -> (loss, (new_batch_stats, metrics))
LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, tuple[Any, dict]]]


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
  """A pure step (state, batch, rng) -> (state, metrics). A non-finite loss
  or gradient keeps params, statistics and optimizer state as they were."""

  def train_step(state: TrainState, batch, rng):
    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, rng)
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
                   finite=finite)
    return state, metrics

  return train_step


def jit_train_step(train_step, mesh: Mesh):
  """The step jitted for the mesh: state replicated, batch split over the
  data axis, the old state's buffers reused for the new one."""
  return jax.jit(train_step,
                 in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=0)


# --- Checkpoints ------------------------------------------------------------------------


@dataclasses.dataclass
class Checkpoints:
  """orbax checkpoints of (TrainState, input iterator state) under
  `<workdir>/checkpoints/<step>`: asynchronous saves every `every` steps,
  the newest `keep` kept, atomic (a save interrupted by a kill leaves the
  previous checkpoints intact)."""
  directory: str
  every: int
  keep: int

  def __post_init__(self):
    self.directory = os.path.abspath(self.directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.keep,
                                             save_interval_steps=self.every,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: TrainState, data_state: dict | None,
           force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); returns whether it did."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, like: TrainState, step: int | None = None):
    """(state, data state or None) of `step` (default: the newest), shaped
    and sharded like `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    names = self._manager.item_metadata(step).keys()
    args = {"state": ocp.args.StandardRestore(abstract)}
    if "data" in names:
      args["data"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], restored.get("data") if "data" in names else None

  def wait(self):
    """Blocks until asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


class PreemptionFlag:
  """Set by SIGTERM (how schedulers and TPU maintenance preempt jobs), so
  the train loop can save a checkpoint and exit cleanly at the next step."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._event.set())

  def __bool__(self) -> bool:
    return self._event.is_set()

  def restore_handler(self):
    signal.signal(signal.SIGTERM, self._previous)
