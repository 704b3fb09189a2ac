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
import json
import os
import signal
import threading
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
from jax.sharding import Mesh
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from facerecon.data import input_pipeline
from facerecon.data import preprocessing
from facerecon import fileio
from facerecon.data import normalization
from facerecon.parallel import DATA_AXIS  # noqa: F401 (re-exported)
from facerecon.parallel import batch_sharding
from facerecon.parallel import check_batch_sizes
from facerecon.parallel import make_mesh
from facerecon.parallel import mean_per_device
from facerecon.parallel import replicated
from facerecon.parallel import shard_batch

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


def learning_rate_schedule(config, field_prefix: str = "config.") -> optax.Schedule:
  """config: learning_rate, warmup_steps, num_train_steps, schedule
  ('constant' after warm-up, or 'cosine' decay to 0 at num_train_steps).
  Errors name fields as `field_prefix` + name."""
  warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
  if config.schedule == "constant":
    after = optax.constant_schedule(config.learning_rate)
  elif config.schedule == "cosine":
    after = optax.cosine_decay_schedule(
        config.learning_rate, max(config.num_train_steps - config.warmup_steps, 1))
  else:
    raise ValueError(f"{field_prefix}schedule: unknown schedule '{config.schedule}' "
                     "(use 'constant' or 'cosine')")
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def _decays(params):
  """Weight decay on kernels (ndim > 1), not on biases or BatchNorm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config, field_prefix: str = "config."
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(W) with global-norm gradient clipping and decoupled weight decay
  (the original declared weight decay 1e-4 and never applied it). config:
  the schedule fields, grad_clip_norm (0: off), weight_decay, adam_b1,
  adam_b2. Errors name fields as `field_prefix` + name."""
  schedule = learning_rate_schedule(config, field_prefix)
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
  return jax.jit(train_step,
                 in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh),
                               replicated(mesh)),
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
    self.directory = fileio.absolute(self.directory)
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
    if not force and step % self.every:
      return False  # (orbax on its own would also save the first step it sees)
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
    has_data = fileio.exists(os.path.join(self.directory, str(step), "data"))
    args = {"state": ocp.args.StandardRestore(abstract)}
    if has_data:
      args["data"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], restored["data"] if has_data else None

  def wait(self):
    """Blocks until asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


class Preempted(Exception):
  """A SIGTERM stopped training after the checkpoint of `step` was saved;
  running the same command again resumes from it."""

  def __init__(self, step: int):
    super().__init__(f"preempted (SIGTERM) at step {step}: its checkpoint is saved; run the "
                     "same command again to resume")
    self.step = step


class PreemptionFlag:
  """Whether a SIGTERM (how schedulers and TPU maintenance preempt jobs) asks
  the train loop to save a checkpoint and stop at this step.

  One process: a SIGTERM handler sets the flag, seen at the next step.
  Several: the hosts must stop at the same step, or one would leave the
  others waiting in the step's collectives. JAX's preemption service
  (started by jax.distributed.initialize, with its own SIGTERM handler)
  hears the signal on any host and names one step for all of them;
  `reached(step)` must then be asked at every step on every host."""

  def __init__(self):
    self._event = threading.Event()
    self._multihost, self._service_off = jax.process_count() > 1, False
    self._previous = None if self._multihost else signal.signal(
        signal.SIGTERM, lambda signum, frame: self._event.set())

  def reached(self, step: int) -> bool:
    if not self._multihost:
      return self._event.is_set()
    if self._service_off:
      return False
    from jax.experimental import multihost_utils

    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # jax_enable_preemption_service=False: SIGTERM just kills
      from absl import logging

      logging.warning("JAX's preemption service is off (jax_enable_preemption_service): "
                      "a SIGTERM will stop this run without a checkpoint")
      self._service_off = True
      return False

  def signalled(self) -> bool:
    """Whether this process got a SIGTERM (one process only: with several,
    JAX's service holds the signal, and it ends a stage at the agreed step
    only, which may lie past the stage's last step)."""
    return not self._multihost and self._event.is_set()

  def restore_handler(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class BestCheckpoint:
  """The network variables of the evaluation with the lowest `metric`, kept
  under `<directory>/<step>` (orbax, only the newest best) with
  `<directory>/best.json` saying which step and metrics. A resumed run
  reads the record, so "best" spans the whole run.

  A new best is saved, then recorded, and only then is the old one deleted,
  so a kill at any moment leaves best.json naming a complete checkpoint."""

  def __init__(self, directory: str, metric: str, field: str = "config.best_metric"):
    self.directory, self.metric, self._field = fileio.absolute(directory), metric, field
    self._manager = ocp.CheckpointManager(self.directory)
    try:
      self.record = json.loads(fileio.read_bytes(os.path.join(self.directory, "best.json")))
    except FileNotFoundError:
      self.record = None

  def update(self, step: int, metrics: dict, variables) -> bool:
    """Saves `variables` if `metrics[metric]` beats the best so far."""
    if self.metric not in metrics:
      raise ValueError(f"{self._field}: '{self.metric}' is not an evaluation metric "
                       f"(have: {', '.join(sorted(metrics))})")
    value = float(metrics[self.metric])
    if self.record is not None and (step == self.record["step"]
                                    or not value < self.record["value"]):
      return False  # (a resumed run evaluating its best step again keeps it)
    if step in self._manager.all_steps():
      self._manager.delete(step)  # saved by a run killed before it recorded it
    self._manager.save(step, args=ocp.args.StandardSave(variables), force=True)
    self._manager.wait_until_finished()
    self.record = {"step": step, "metric": self.metric, "value": value,
                   "metrics": {k: float(v) for k, v in metrics.items()}}
    if jax.process_index() == 0:
      fileio.write_bytes_atomic(os.path.join(self.directory, "best.json"),
                                json.dumps(self.record, indent=2).encode())
    if jax.process_count() > 1:  # best.json first, then the others delete
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"best.json of step {step}")
    for old in self._manager.all_steps():
      if old != step:
        self._manager.delete(old)
    return True

  def restore(self, like):
    """The best variables, shaped like `like`."""
    if self.record is None:
      raise FileNotFoundError(f"no best checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(self.record["step"], args=ocp.args.StandardRestore(abstract))

  def close(self):
    self._manager.close()


# --- train_and_evaluate: CoarseNet on synthetic or tfds data -------------------------


class SyntheticStream:
  """Endless batches of synthetic faces rendered on the fly with exact labels
  (`facerecon.synthetic`): batch i holds samples i * global_batch + ... of
  (seed), so the stream is reproducible and its position is its whole state.
  Each host renders its own part of the global batch."""

  def __init__(self, model, size: int, batch_size: int, seed: int, prior=None,
               per_host: bool = True, fields=("image", "params", "landmarks")):
    from facerecon.data import synthetic  # Deferred: only this source needs it.

    self._synthetic = synthetic
    self._model, self._size, self._batch, self._seed = model, size, batch_size, seed
    self._fields = tuple(fields)  # of SyntheticBatch, copied to the host
    self._prior = prior or synthetic.FacePrior()
    # per_host=False: every host gets the same batches (for statistics).
    self._hosts, self._host = ((jax.process_count(), jax.process_index()) if per_host
                               else (1, 0))
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    first = (self.position * self._hosts + self._host) * self._batch
    keys = self._synthetic.sample_keys(self._seed, first, self._batch)
    faces = self._synthetic.generate_jit(self._model, keys, self._prior, self._size,
                                         self._size)
    self.position += 1
    return {name: np.asarray(getattr(faces, name)) for name in self._fields}

  def get_state(self) -> dict:
    return {"position": self.position}

  def set_state(self, state: dict) -> None:
    self.position = int(state["position"])


def synthetic_prior(config):
  """The FacePrior of config.data.prior (its fields override the defaults)."""
  from facerecon.data import synthetic

  fields = {f.name for f in dataclasses.fields(synthetic.FacePrior)}
  overrides = dict(config.data.prior)
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"config.data.prior: unknown field(s) {', '.join(unknown)} "
                     f"(FacePrior has {', '.join(sorted(fields))})")
  return synthetic.FacePrior(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                for k, v in overrides.items()})


def synthetic_statistics(model, size: int, count: int, seed: int, prior=None):
  """Parameter mean/std and mean image of `count` synthetic faces."""
  accumulator = normalization.StatisticsAccumulator()
  # The same faces on every host, so every host has the same statistics.
  stream = SyntheticStream(model, size, min(count, 64), seed, prior, per_host=False)
  while accumulator.count < count:
    batch = next(stream)
    accumulator.add(batch["params"], batch["image"])
  return accumulator.result()


STATISTICS_FILE = "statistics.npz"


def model_and_statistics(config, workdir: str | None = None, training: bool = False):
  """(the morphable model of config.model, the statistics its labels are
  normalised by): what every CoarseNet run, loader and predictor needs.

  A run keeps the statistics it trained with in <workdir>/statistics.npz,
  and everything that later reads the run uses those: a changed
  config.data (prior, samples, statistics path) at resume, FineNet or
  --mode=reconstruct would otherwise silently denormalise with other
  statistics. Without that file they come from config (`_statistics`).
  `training` a run from its start (no checkpoint yet) takes them from
  config and writes the file, replacing one left by an attempt that never
  reached a checkpoint (perhaps with the wrong config)."""
  from absl import logging
  from facerecon import face_models

  model = face_models.load(config.model)
  if workdir is None:
    return model, _statistics(config, model)
  path = os.path.join(workdir, STATISTICS_FILE)
  starting = training and not ocp.utils.checkpoint_steps(
      fileio.absolute(os.path.join(workdir, "checkpoints")))
  if not starting:
    try:
      statistics = normalization.load_statistics(path)
    except FileNotFoundError:  # a run from before runs kept them
      return model, _statistics(config, model)
    if statistics.param_mean.shape != (model.layout.size,):
      raise ValueError(f"{path}: statistics of {statistics.param_mean.shape[0]} parameters, but "
                       f"config.model ({config.model}) has {model.layout.size}: this run was "
                       "trained with another face model")
    logging.info("label statistics of the run: %s", path)
    return model, statistics
  statistics = _statistics(config, model)
  if jax.process_index() == 0:
    normalization.save_statistics(statistics, path)
  return model, statistics


def _statistics(config, model):
  """The data set's DataStatistics: computed from synthetic faces, or the
  tfds data set's statistics.npz (config.data.statistics)."""

  data = config.data
  if data.source == "synthetic":
    return synthetic_statistics(model, config.image_size, data.statistics_samples,
                                seed=data.statistics_seed, prior=synthetic_prior(config))
  if data.source == "tfds":
    if not data.statistics:
      raise ValueError("config.data.statistics: the statistics.npz of the data set is "
                       "required with config.data.source='tfds'")
    return normalization.load_statistics(data.statistics)
  raise ValueError(f"config.data.source: unknown source '{data.source}' "
                   "(use 'synthetic' or 'tfds')")


def _open_data(config, model, statistics, split: str, batch_size: int):
  """An iterator of host batches ('image' uint8, 'params', 'landmarks') of
  `split` ('train', 'val' or 'test'): config.data.source 'synthetic'
  (rendered on the fly; 'val' and 'test' are fixed sets from seeds training
  never uses) or 'tfds' (config.data.name, data_dir)."""
  data = config.data
  if data.source == "synthetic":
    return SyntheticStream(model, config.image_size, batch_size,
                           synthetic_split_seed(config, split), synthetic_prior(config))

  source = input_pipeline.open_source(data.name, split, data.data_dir)
  return iter(input_pipeline.make_dataset(
      source, batch_size=batch_size, seed=config.seed, train=split == "train",
      statistics=statistics, process_index=jax.process_index(),
      process_count=jax.process_count(), num_workers=data.num_workers if split == "train"
      else 0, image_size=config.image_size))


def synthetic_split_seed(config, split: str, train_field: str = "config.seed") -> int:
  """The seed of synthetic split 'train' (the field `train_field`), 'val' or
  'test'. A face depends only on (seed, index), so two splits with one seed
  would be the same faces: ValueError naming the fields."""
  import functools
  import itertools

  fields = {"train": train_field, "val": "config.data.validation_seed",
            "test": "config.data.test_seed"}
  seeds = {name: functools.reduce(lambda node, key: node[key], field.split(".")[1:], config)
           for name, field in fields.items()}
  for a, b in itertools.combinations(fields, 2):
    if seeds[a] == seeds[b]:
      raise ValueError(f"{fields[a]} and {fields[b]} are both {seeds[a]}: the {a} and {b} "
                       "splits would be the same synthetic faces; give them different seeds")
  return seeds[split]


def _with_normalized_labels(batch: dict, statistics) -> dict:
  params = np.asarray(batch["params"], np.float32)
  return {"image": batch["image"], "landmarks": np.asarray(batch["landmarks"], np.float32),
          "params_normalized": ((params - np.asarray(statistics.param_mean))
                                / np.asarray(statistics.param_std)).astype(np.float32)}


def make_coarse_net(config, mesh=None):
  """CoarseNet as `config` says; with a `mesh`, its renders run per device."""
  from facerecon import models

  return models.CoarseNet(num_iterations=config.num_iterations, backbone=config.backbone,
                          backbone_kwargs=dict(config.backbone_kwargs) or None,
                          dtype=jnp.dtype(config.dtype), render_backend=config.render_backend,
                          mesh=mesh)


def init_coarse_variables(net, config, mesh, model, statistics, seed: int = 0):
  """CoarseNet's (`make_coarse_net(config, mesh)`) freshly initialised
  variables for config.image_size images."""
  size = config.image_size
  # One example per device: the renders split the batch over the devices.
  images = jnp.zeros((mesh.size, size, size, 3))
  return jax.jit(net.init)(jax.random.PRNGKey(seed), images, model, statistics)


def initial_coarse_variables(net, config, mesh, model, statistics):
  """The variables a CoarseNet run starts from: `init_coarse_variables` of
  config.seed, with the ImageNet weights of config.pretrained where it is
  set (a resumed run restores over them)."""
  variables = init_coarse_variables(net, config, mesh, model, statistics, config.seed)
  if config.pretrained:
    from facerecon.models import backbones
    from facerecon.models import pretrained

    scope = backbones.make_backbone(config.backbone, **dict(config.backbone_kwargs)).name
    variables = pretrained.init_from_slim(
        dict(variables), pretrained.load_slim_arrays(config.pretrained), scope)
  return variables


def batch_loss_fn(config, mesh=None):
  """batch_loss(estimates, target, landmarks, model, statistics) -> (loss,
  terms): the mean over CoarseNet's iterations (a tuple of normalised
  estimates [B, P]) of `losses.total_loss`, each device on its examples.
  `terms` (logged as train/<term>, their weighted sum as train/total) are
  the last iteration's, the network's output; train/loss is the mean."""
  from facerecon import losses

  weights = losses.LossWeights(**config.loss)
  size = config.image_size

  def batch_loss(estimates, target, landmarks, model, statistics):
    # Every iteration is supervised (each has its own weights to train).
    totals, terms = [], {}
    for estimate in estimates:
      total, terms = losses.total_loss(estimate, target, model, statistics, weights, size,
                                       size, landmarks, config.render_backend)
      totals.append(total)
    return jnp.mean(jnp.stack(totals)), terms

  # The losses render: each device renders its own examples.
  return mean_per_device(batch_loss, mesh, num_batched=3)


def _loss_fn(net, config, mesh=None):

  batch_loss = batch_loss_fn(config, mesh)

  def loss_fn(params, batch_stats, batch, rng, context):
    model, statistics = context
    images = preprocessing.network_images(batch["image"], statistics, rng)
    estimates, updates = net.apply({"params": params, "batch_stats": batch_stats}, images,
                                   model, statistics, train=True, mutable=["batch_stats"])
    total, terms = batch_loss(tuple(estimates), batch["params_normalized"], batch["landmarks"],
                              model, statistics)
    return total, (updates["batch_stats"], terms)

  return loss_fn


def _eval_fn(net, config, mesh=None):
  """Metrics of the last iteration's estimate and of the mean-face baseline
  (the start estimate) on one batch."""
  from facerecon import losses

  size = config.image_size

  def metrics(normalized, target_normalized, landmarks, model, statistics):
    raw = normalization.denormalize_params(normalized, statistics)
    target = normalization.denormalize_params(target_normalized, statistics)
    return {"param_error": jnp.mean((normalized - target_normalized) ** 2),
            "vertex_error": losses.vertex_loss(raw, target, model),
            "vertex_error_aligned": losses.aligned_vertex_error(raw, target, model),
            "depth_error": losses.render_loss(raw, target, model, size, size,
                                              config.render_backend),
            "landmark_nme": losses.landmark_loss(raw, landmarks, model, size, size)}

  metrics = mean_per_device(metrics, mesh, num_batched=3)  # the depth error renders

  def evaluate(variables, batch, model, statistics):
    images = preprocessing.network_images(batch["image"], statistics)
    estimates = net.apply(variables, images, model, statistics, train=False)
    labels = (batch["params_normalized"], batch["landmarks"], model, statistics)
    out = metrics(estimates[-1], *labels)
    baseline = metrics(jnp.zeros_like(estimates[-1]), *labels)
    out.update({f"baseline_{k}": v for k, v in baseline.items()})
    return out, estimates[-1]

  return jax.jit(evaluate)


class Training(NamedTuple):
  """Everything a training run is built from (`build_training`)."""
  mesh: Mesh
  model: Any            # the MorphableModel
  statistics: Any       # the data set's DataStatistics
  context: Any          # (model, statistics), replicated on the mesh
  net: Any              # CoarseNet
  train_data: Any       # iterator of host batches, with get_state / set_state
  state: TrainState     # freshly initialised, replicated
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  step_fn: Callable     # the jitted train step (state, batch, rng, context)


def build_training(config, workdir: str | None = None) -> Training:
  """The mesh, face model, data, network, optimizer, initial state and
  jitted step of `config` (shared by train_and_evaluate and the benchmark);
  with a `workdir`, the run's statistics are kept there."""
  mesh = make_mesh()
  check_batch_sizes(config)
  model, statistics = model_and_statistics(config, workdir, training=True)
  train_data = _open_data(config, model, statistics, "train",
                          config.batch_size // jax.process_count())
  context = jax.device_put((model, statistics), replicated(mesh))
  net = make_coarse_net(config, mesh)
  variables = initial_coarse_variables(net, config, mesh, model, statistics)
  tx, schedule = make_optimizer(config)
  state = jax.device_put(
      TrainState.create(variables["params"], variables.get("batch_stats", {}), tx),
      replicated(mesh))
  step_fn = jit_train_step(make_train_step(_loss_fn(net, config, mesh), tx), mesh)
  return Training(mesh, model, statistics, context, net, train_data, state, tx, schedule,
                  step_fn)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains CoarseNet as `config` says, writing checkpoints, TensorBoard
  events and pictures under `workdir`; resumes from the newest checkpoint
  there. Returns the last evaluation's metrics."""
  from absl import logging

  fileio.makedirs(workdir)
  mesh, model, statistics, context, net, train_data, state, tx, schedule, step_fn = (
      build_training(config, workdir))
  logging.info("CoarseNet: %d devices (%s) in %d process(es); global batch %d", mesh.size,
               jax.devices()[0].platform, jax.process_count(), config.batch_size)
  evaluate = _eval_fn(net, config, mesh)

  def run_evaluation(state, step, writer):
    return _run_evaluation(config, model, statistics, evaluate, state, mesh, context, writer,
                           step, workdir)

  return run_train_loop(
      config, workdir, seed=config.seed, state=state, step_fn=step_fn, train_data=train_data,
      make_batch=lambda host: shard_batch(_with_normalized_labels(host, statistics), mesh),
      context=context, schedule=schedule, evaluate=run_evaluation)


def run_train_loop(stage, workdir: str, *, seed: int, state: TrainState, step_fn: Callable,
                   train_data, make_batch: Callable, context, schedule: optax.Schedule,
                   evaluate: Callable, field_prefix: str = "config.") -> dict:
  """The loop every training stage shares: steps, logs, evaluations with the
  best checkpoint, regular checkpoints that resume exactly, SIGTERM.

  `stage` (a config or sub-config) has num_train_steps, batch_size,
  log_every, eval_every, checkpoint_every, keep_checkpoints, max_bad_steps
  and best_metric. `train_data` is an iterator of host batches with
  get_state / set_state; `make_batch(host batch)` gives the step's global
  batch; `evaluate(state, step, writer)` returns the metrics. Returns the
  last evaluation's metrics; raises `Preempted` after a SIGTERM, once the
  checkpoint is saved. Errors name fields as `field_prefix` + name.
  """
  import time

  from absl import logging

  from facerecon import tensorboard

  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), stage.checkpoint_every,
                            stage.keep_checkpoints)
  if checkpoints.latest_step() is not None:
    state, data_state = checkpoints.restore(state)
    if data_state is not None:
      train_data.set_state(data_state)
    logging.info("resumed from step %d", int(state.step))

  best = BestCheckpoint(os.path.join(workdir, "best"), stage.best_metric,
                        field_prefix + "best_metric")
  # Process 0 writes the logs and pictures (every process has the same values).
  writer = (tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))
            if jax.process_index() == 0 else tensorboard.NullWriter())
  preempted = PreemptionFlag()
  key = jax.random.PRNGKey(seed + 1)
  metrics = {}
  try:
    start_step = int(state.step)
    timer, timed_steps = time.perf_counter(), 0

    def check_finite(done, step_metrics):
      if int(step_metrics["bad_in_a_row"]) >= stage.max_bad_steps:
        raise FloatingPointError(
            f"{stage.max_bad_steps} steps in a row had a non-finite loss or gradient "
            f"(step {done}); lower {field_prefix}learning_rate or check the data")

    previous = None  # (step, metrics) of the step before, checked one step late
    for step in range(start_step, stage.num_train_steps):
      batch = make_batch(next(train_data))
      state, train_metrics = step_fn(state, batch, jax.random.fold_in(key, step), context)
      timed_steps += 1
      done = step + 1
      # Waiting for this step's result here would leave the host idle while
      # it runs; the previous step's is ready or nearly, and the next batch
      # is then made while this step runs.
      if previous is not None:
        check_finite(*previous)
      previous = (done, train_metrics)
      if done % stage.log_every == 0 or done == stage.num_train_steps:
        values = jax.device_get(train_metrics)
        seconds = time.perf_counter() - timer
        images_per_second = timed_steps * stage.batch_size / seconds
        eta = (stage.num_train_steps - done) * seconds / timed_steps
        scalars = {f"train/{k}": float(v) for k, v in values.items()
                   if k not in ("finite", "bad_in_a_row")}
        skipped = int(state.skipped)
        # optax counts only the updates applied: this step's was number
        # done - 1 - skipped (from 0), unless this step was skipped itself.
        scalars.update({"train/learning_rate": float(schedule(max(done - 1 - skipped, 0))),
                        "train/images_per_second": images_per_second,
                        "train/skipped_steps": float(skipped)})
        writer.scalars(scalars, done)
        logging.info("step %d/%d loss %.4g, %.1f images/s, ETA %.0f s", done,
                     stage.num_train_steps, values["loss"], images_per_second, eta)
        timer, timed_steps = time.perf_counter(), 0
      if done % stage.eval_every == 0 or done == stage.num_train_steps:
        metrics = evaluate(state, done, writer)
        if best.update(done, metrics, {"params": state.params,
                                       "batch_stats": state.batch_stats}):
          logging.info("best %s so far: %.4g at step %d", stage.best_metric,
                       metrics[stage.best_metric], done)
      stop = preempted.reached(done)
      checkpoints.save(done, state, train_data.get_state(),
                       force=stop or done == stage.num_train_steps)
      if stop:
        logging.warning("SIGTERM: saving step %d and stopping", done)
        raise Preempted(done)  # (the checkpoint is written in `finally`)
    if previous is not None:
      check_finite(*previous)
  finally:
    checkpoints.wait()
    checkpoints.close()
    best.close()
    writer.close()
    preempted.restore_handler()
  if preempted.signalled():  # during the last step or the saves: stop all the same
    raise Preempted(int(state.step))
  return metrics


def _run_evaluation(config, model, statistics, evaluate, state, mesh, context, writer, step,
                    workdir):
  """Evaluates on up to config.eval_batches full validation batches
  (`sum_evaluation`); writes the metrics and a picture of the first batch's
  first faces (`visualize.reconstruction_panel`) to TensorBoard and, from
  process 0, to `<workdir>/reconstructions.png`."""
  from absl import logging
  from jax.experimental import multihost_utils

  from facerecon import visualize

  shown = min(config.eval_pictures, config.eval_batch_size // jax.process_count())
  pictures = []

  def picture_of_first(index, host, estimate):
    if index:
      return
    # The estimates are split over the devices of all hosts: gather them.
    estimate = np.asarray(multihost_utils.process_allgather(estimate, tiled=True))
    raw = normalization.denormalize_params(estimate[:shown], statistics)
    target = normalization.denormalize_params(host["params_normalized"][:shown], statistics)
    pictures.append(visualize.reconstruction_panel(model, host["image"][:shown], raw, target))

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  sums, count = sum_evaluation(config, model, statistics, evaluate, variables, mesh, context,
                               "val", config.eval_batches, picture_of_first)
  logging.info("eval at step %d over %d examples", step, count * config.eval_batch_size)
  return publish_evaluation(writer, workdir, step, sums, count, "reconstructions", pictures[0])


def sum_evaluation(config, model, statistics, evaluate, variables, mesh, context, split: str,
                   num_batches: int, on_batch: Callable | None = None) -> tuple[dict, int]:
  """The sums of `evaluate`'s metrics (`_eval_fn`) over up to `num_batches`
  full batches of config.eval_batch_size faces of `split` (`_open_data`; a
  tfds split may have fewer, its partial last batch is left out) and the
  number of batches summed. on_batch(index, host batch with normalised
  labels, estimate) sees each batch. ValueError if there is no full batch."""
  per_host = config.eval_batch_size // jax.process_count()
  batches = (_with_normalized_labels(batch, statistics)
             for batch in _open_data(config, model, statistics, split, per_host))
  name = {"val": "validation"}.get(split, split)
  return sum_metrics(
      batches, num_batches, per_host,
      lambda host: evaluate(variables, shard_batch(host, mesh), *context), on_batch,
      f"the {name} split has fewer than config.eval_batch_size "
      f"({config.eval_batch_size}) examples")


def sum_metrics(batches, num_batches: int, per_host: int, evaluate_batch: Callable,
                on_batch: Callable | None, too_few: str) -> tuple[dict, int]:
  """Sums the metrics of evaluate_batch(host batch) -> (metrics, output)
  over up to `num_batches` of `batches`, stopping at the first with fewer
  than `per_host` images; returns the sums and the number of batches.
  on_batch(index, host batch, output) sees each batch. ValueError(too_few)
  if there is no full batch."""
  import itertools

  sums, count = {}, 0
  for host in itertools.islice(batches, num_batches):
    if len(host["image"]) != per_host:
      break
    values, output = evaluate_batch(host)
    for k, v in jax.device_get(values).items():
      sums[k] = sums.get(k, 0.0) + float(v)
    if on_batch is not None:
      on_batch(count, host, output)
    count += 1
  if not count:
    raise ValueError(too_few)
  return sums, count


def publish_evaluation(writer, workdir: str, step: int, sums: dict, count: int, name: str,
                       picture) -> dict:
  """The means of `sums` over `count` batches, written as eval/ scalars with
  the picture as eval/<name> to TensorBoard and (process 0) as
  <workdir>/<name>.png, and logged. Returns the means."""
  from absl import logging

  totals = {k: v / count for k, v in sums.items()}
  writer.scalars({f"eval/{k}": v for k, v in totals.items()}, step)
  writer.image(f"eval/{name}", picture, step)
  writer.flush()
  if jax.process_index() == 0:
    fileio.write_png_atomic(os.path.join(workdir, f"{name}.png"), picture)
  logging.info("eval at step %d: %s", step,
               ", ".join(f"{k} {v:.4g}" for k, v in sorted(totals.items())))
  return totals
