"""Stage 1: CoarseNet, supervised on faces with 3DMM labels (synthetic faces
rendered on the fly, or a tfds data set), in the run directory itself.

The loss (`facerecon.losses.total_loss`) supervises every iteration's
estimate; evaluation measures the last one against the mean-face baseline
(the start estimate) on the validation split, and keeps the best under
best/ (`config.coarse.best_metric`).
"""

import logging
from typing import Any, Callable, NamedTuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax

from facerecon import face_models
from facerecon import losses
from facerecon import morphable
from facerecon import networks
from facerecon import parallel
from facerecon import rundir
from facerecon import visualize
from facerecon.data import normalization
from facerecon.data import preprocessing
from facerecon.data import sources
from facerecon.training import loop
from facerecon.training.state import jit_train_step
from facerecon.training.state import make_optimizer
from facerecon.training.state import make_train_step
from facerecon.training.state import Stage
from facerecon.training.state import TrainState

logger = logging.getLogger(__name__)


def batch_loss_fn(config, mesh=None):
  """batch_loss(estimates, target, landmarks, model, statistics) -> (loss,
  terms): the mean over CoarseNet's iterations (a tuple of normalised
  estimates [B, P]) of `losses.total_loss`, each device on its examples.
  `terms` (logged as train/<term>, their weighted sum as train/total) are
  the last iteration's, the network's output; train/loss is the mean."""
  weights = losses.LossWeights(**config.coarse.loss)
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
  return parallel.mean_per_device(batch_loss, mesh, num_batched=3)


def loss_fn(net, config, mesh=None):
  """The train step's loss_fn(params, batch_stats, batch, rng, context), with
  context = (model, statistics)."""
  batch_loss = batch_loss_fn(config, mesh)

  def compute(params, batch_stats, batch, rng, context):
    model, statistics = context
    images = preprocessing.network_images(batch["image"], statistics, rng)
    estimates, updates = net.apply({"params": params, "batch_stats": batch_stats}, images,
                                   model, statistics, train=True, mutable=["batch_stats"])
    total, terms = batch_loss(tuple(estimates), batch["params_normalized"], batch["landmarks"],
                              model, statistics)
    return total, (updates["batch_stats"], terms)

  return compute


def evaluation_fn(net, config, mesh=None):
  """evaluate(variables, batch, model, statistics) -> (metrics, estimate):
  the metrics of the last iteration's estimate and of the mean-face
  baseline (the start estimate) on one batch, jitted."""
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

  metrics = parallel.mean_per_device(metrics, mesh, num_batched=3)  # the depth error renders

  def evaluate(variables, batch, model, statistics):
    images = preprocessing.network_images(batch["image"], statistics)
    estimates = net.apply(variables, images, model, statistics, train=False)
    labels = (batch["params_normalized"], batch["landmarks"], model, statistics)
    out = metrics(estimates[-1], *labels)
    baseline = metrics(jnp.zeros_like(estimates[-1]), *labels)
    out.update({f"baseline_{k}": v for k, v in baseline.items()})
    return out, estimates[-1]

  return jax.jit(evaluate)


def sum_evaluation(config, statistics, evaluate, variables, mesh, context, split: str,
                   num_batches: int, on_batch: Callable | None = None) -> tuple[dict, int]:
  """The sums of `evaluate`'s metrics (`evaluation_fn`) over up to
  `num_batches` full batches of config.coarse.eval_batch_size faces of
  `split` (a tfds split may have fewer; its partial last batch is left out)
  and the number of batches summed. on_batch(index, host batch with
  normalised labels, estimate) sees each batch. ValueError if there is no
  full batch."""
  batch_size = config.coarse.eval_batch_size
  per_host = batch_size // jax.process_count()
  batches = (sources.with_normalized_labels(batch, statistics)
             for batch in sources.open_labelled(config, statistics, split, per_host))
  name = {"val": "validation"}.get(split, split)
  return loop.sum_metrics(
      batches, num_batches, per_host,
      lambda host: evaluate(variables, parallel.shard_batch(host, mesh), *context), on_batch,
      f"the {name} split has fewer than config.coarse.eval_batch_size ({batch_size}) examples")


class Training(NamedTuple):
  """Everything a CoarseNet run is built from (`build`)."""
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


def build(config, run: rundir.RunDir | None = None, devices=None) -> Training:
  """The mesh (over `devices`, default all), face model, data, network,
  optimizer, initial state and jitted step of `config` (shared by
  train_and_evaluate and the benchmark); with a run directory, the config
  is recorded there (`rundir.record_config`) and so are the statistics."""
  stage = Stage.of(config, "coarse")
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_sizes(stage.batch_sizes())
  whole_model = face_models.load(config.model)
  if run is not None:
    rundir.record_config(run, config, whole_model)
  # The networks and losses see the model's surface; the synthetic photos
  # (sources) render the whole model.
  model = morphable.surface(whole_model)
  statistics = rundir.statistics(config, model, run, training=True)
  train_data = sources.open_labelled(config, statistics, "train",
                                     config.coarse.batch_size // jax.process_count())
  replicated = parallel.replicated(mesh)
  context = jax.device_put((model, statistics), replicated)
  net = networks.coarse_net(config, mesh)
  variables = networks.initial_coarse_variables(net, config, mesh, model, statistics)
  tx, schedule = make_optimizer(stage)
  state = jax.device_put(
      TrainState.create(variables["params"], variables.get("batch_stats", {}), tx), replicated)
  step_fn = jit_train_step(make_train_step(loss_fn(net, config, mesh), tx), mesh)
  return Training(mesh, model, statistics, context, net, train_data, state, tx, schedule,
                  step_fn)


def make_batch(host: dict, statistics, mesh: Mesh):
  """A host batch of labelled faces -> the train step's global batch."""
  return parallel.shard_batch(sources.with_normalized_labels(host, statistics), mesh)


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
  """Trains CoarseNet as `config.coarse` says on `devices` (default: all of
  every host), writing checkpoints, TensorBoard events and pictures under
  `workdir`; resumes from the newest checkpoint there. Returns the last
  evaluation's metrics."""
  run = rundir.RunDir(workdir)
  training = build(config, run, devices)
  logger.info("CoarseNet: %d devices (%s) in %d process(es); global batch %d",
              training.mesh.size, jax.devices()[0].platform, jax.process_count(),
              config.coarse.batch_size)
  evaluate = evaluation_fn(training.net, config, training.mesh)

  def run_evaluation(state, step, writer):
    return _run_evaluation(config, run, training, evaluate, state, step, writer)

  return loop.run(loop.Task(
      title="CoarseNet", stage=Stage.of(config, "coarse"), run=run, state=training.state,
      step_fn=training.step_fn, train_data=training.train_data,
      make_batch=lambda host: make_batch(host, training.statistics, training.mesh),
      context=training.context, schedule=training.schedule, evaluate=run_evaluation))


def _run_evaluation(config, run: rundir.RunDir, training: Training, evaluate, state, step,
                    writer) -> dict:
  """Evaluates on up to config.coarse.eval_batches full validation batches
  (`sum_evaluation`); writes the metrics and a picture of the first batch's
  first faces (`visualize.reconstruction_panel`) to TensorBoard and, from
  process 0, to `reconstructions.png` in the run."""
  coarse = config.coarse
  shown = min(coarse.eval_pictures, coarse.eval_batch_size // jax.process_count())
  pictures = []

  def picture_of_first(index, host, estimate):
    if index:
      return
    # The estimates are split over the devices of all hosts: gather them.
    estimate = np.asarray(multihost_utils.process_allgather(estimate, tiled=True))
    raw = normalization.denormalize_params(estimate[:shown], training.statistics)
    target = normalization.denormalize_params(host["params_normalized"][:shown],
                                              training.statistics)
    pictures.append(visualize.reconstruction_panel(training.model, host["image"][:shown], raw,
                                                   target))

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  sums, count = sum_evaluation(config, training.statistics, evaluate,
                               variables, training.mesh, training.context, "val",
                               coarse.eval_batches, picture_of_first)
  logger.info("CoarseNet eval at step %d over %d faces", step, count * coarse.eval_batch_size)
  return loop.publish_evaluation(writer, run, step, sums, count, "reconstructions",
                                 pictures[0])
