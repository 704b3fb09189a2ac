"""Stage 2: FineNet, trained without labels by shape from shading, in the run
directory's `fine/`.

For each photo the trained CoarseNet (frozen, or fine-tuned with
`config.fine.end_to_end`) gives a face fit; the renderer turns it into the
coarse depth, the face mask and the albedo (the model's mean texture,
grey). FineNet refines the depth, and `facerecon.losses.fine_loss` scores
it against the photo's shading.

Data (`config.fine.data.source`): 'synthetic' (rendered faces; their labels
are used only to evaluate: depth and normal error of fine and coarse against
the true detailed surface), 'tfds' (e.g. facerecon_faces/vggface, images
only) or 'folder' (any folder of face photos). CoarseNet comes from
`config.fine.coarse_workdir` (default: the run itself, i.e. stage 1's).
"""

import logging
from typing import NamedTuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from facerecon import camera
from facerecon import face_models
from facerecon import face_render
from facerecon import losses
from facerecon import networks
from facerecon import parallel
from facerecon import rundir
from facerecon import shading
from facerecon import visualize
from facerecon.data import normalization
from facerecon.data import preprocessing
from facerecon.data import sources
from facerecon.models import fine as fine_lib
from facerecon.training import loop
from facerecon.training.state import jit_train_step
from facerecon.training.state import make_optimizer
from facerecon.training.state import make_train_step
from facerecon.training.state import Stage
from facerecon.training.state import TrainState

logger = logging.getLogger(__name__)


class CoarseFit(NamedTuple):
  depth: jax.Array   # [B, H, W] pixels
  mask: jax.Array    # [B, H, W] bool
  albedo: jax.Array  # [B, H, W] grey mean texture, 0..1


def coarse_fit_fn(coarse_net, config, mesh=None):
  """coarse_fit(coarse variables, uint8 photos [B, S, S, 3] (S: FineNet's
  size), model, statistics, whole model) -> CoarseFit at FineNet's size,
  CoarseNet (of the model's surface, `rundir.load_model`) seeing the photos
  shrunk to its own size, its fit rendered with the whole model
  (`face_models.load`: eyes, teeth and mouth interior included, as in the
  synthetic photos and their true depth, so FineNet learns detail, not to
  fill the surface's eye and mouth holes); each device renders its own
  examples; differentiable in the variables."""
  size = preprocessing.fine_image_size(config)

  def render_fit(estimate, model, statistics):
    params = camera.params_after_resize(normalization.denormalize_params(estimate, statistics),
                                        config.image_size, size)
    face = face_render.render_face(model, params, None, size, size, config.render_backend)
    return CoarseFit(face.depth, face.mask, shading.luminance(face.albedo))

  render_fit = parallel.map_per_device(render_fit, mesh, num_batched=1)

  def coarse_fit(coarse_variables, photos, model, statistics, whole_model):
    images = preprocessing.network_images(photos, statistics, size=config.image_size)
    estimates = coarse_net.apply(coarse_variables, images, model, statistics, train=False)
    return render_fit(estimates[-1], whole_model, statistics)

  return coarse_fit


def _photos(batch, statistics):
  """(FineNet's normalised images, grey intensity 0..1 for the loss)."""
  images = preprocessing.network_images(batch["image"], statistics)
  return images, shading.luminance(batch["image"].astype(jnp.float32) / 255.0)


def _truth(batch, fine_albedo):
  """The supervised terms' arguments of `losses.fine_loss` after the
  unsupervised ones: the true detailed depth and mask, then FineNet's albedo
  and the true one where both are there."""
  truth = (batch["fine_depth"], batch["mask"])
  if fine_albedo is not None and "albedo" in batch:
    truth += (fine_albedo, batch["albedo"])
  return truth


def loss_fn(fine_net, coarse_fit, config, mesh=None):
  """The train step's loss_fn(params, batch_stats, batch, rng, context), with
  context = (model, statistics, CoarseNet variables, whole model): see
  `coarse_fit_fn`."""
  weights = losses.FineLossWeights(**config.fine.loss)
  end_to_end = config.fine.end_to_end

  def per_device(fine, coarse, mask, intensity, albedo, *truth):
    return losses.fine_loss(fine, coarse, mask, intensity, albedo, weights, *truth)

  num_truth = (2 if weights.supervised else 0) + (2 if weights.albedo > 0 else 0)
  loss = parallel.mean_per_device(per_device, mesh, num_batched=5 + num_truth)

  def compute(params, batch_stats, batch, rng, context):
    del batch_stats, rng
    model, statistics, coarse_variables, whole_model = context
    coarse_variables, fine_params = networks.split_fine_params(params, end_to_end,
                                                               coarse_variables)
    images, intensity = _photos(batch, statistics)
    fit = coarse_fit(coarse_variables, batch["image"], model, statistics, whole_model)
    if not end_to_end:
      fit = jax.lax.stop_gradient(fit)
    fine, fine_albedo = fine_lib.split_outputs(
        fine_net.apply({"params": fine_params}, images, fit.depth, fit.mask))
    truth = _truth(batch, fine_albedo) if weights.supervised else ()
    total, terms = loss(fine, fit.depth, fit.mask, intensity, fit.albedo, *truth)
    return total, ({}, terms)

  return compute


def evaluation_fn(fine_net, coarse_fit, config, mesh=None):
  """evaluate(params, batch, context) -> (metrics, (fine, coarse, mask)): the
  loss terms on one batch and, where it has the true detailed depth
  ('fine_depth', 'mask': synthetic data), depth and normal errors of fine
  and coarse: depth error as in CoarseNet's evaluation (mean absolute
  difference over the pixels both masks cover, in units of the image
  height), normal error the mean angle in degrees between the depth maps'
  normals where both have all four neighbours; with an albedo output and the
  true albedo, its error is the 'albedo' term. Jitted."""
  weights = losses.FineLossWeights(**config.fine.loss)
  end_to_end = config.fine.end_to_end
  size = preprocessing.fine_image_size(config)

  def errors(depth, mask, true_depth, true_mask, true_normals, true_interior):
    region = (mask & true_mask).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(region, axis=(1, 2)), 1.0)
    depth_error = jnp.mean(jnp.sum(jnp.abs(depth - true_depth) * region, axis=(1, 2))
                           / count) / size
    normals, interior = shading.depth_normals(depth, mask)
    angle = shading.normal_angle(normals, true_normals,
                                 (interior & true_interior).astype(jnp.float32))
    return depth_error, angle

  def metrics(fine, coarse, mask, intensity, albedo, *truth):
    total, out = losses.fine_loss(fine, coarse, mask, intensity, albedo, weights, *truth)
    out = dict(out, loss=total)
    if truth:
      surface = (*truth[:2], *shading.depth_normals(*truth[:2]))
      out["depth_error"], out["normal_error"] = errors(fine, mask, *surface)
      out["coarse_depth_error"], out["coarse_normal_error"] = errors(coarse, mask, *surface)
    return out

  def evaluate(params, batch, context):
    model, statistics, coarse_variables, whole_model = context
    coarse_variables, fine_params = networks.split_fine_params(params, end_to_end,
                                                               coarse_variables)
    images, intensity = _photos(batch, statistics)
    fit = coarse_fit(coarse_variables, batch["image"], model, statistics, whole_model)
    fine, fine_albedo = fine_lib.split_outputs(
        fine_net.apply({"params": fine_params}, images, fit.depth, fit.mask))
    truth = _truth(batch, fine_albedo) if "fine_depth" in batch else ()
    values = parallel.mean_per_device(metrics, mesh, num_batched=5 + len(truth))(
        fine, fit.depth, fit.mask, intensity, fit.albedo, *truth)
    return values, (fine, fit.depth, fit.mask)

  return jax.jit(evaluate)


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
  """Trains FineNet as `config.fine` says on `devices` (default: all of every
  host) in `<workdir>/fine` (checkpoints, best/, TensorBoard,
  fine_reconstructions.png; resumes from there), over the CoarseNet trained
  in `config.fine.coarse_workdir` or else `workdir`. Returns the last
  evaluation's metrics."""
  stage = Stage.of(config, "fine")
  run = rundir.RunDir(workdir)
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_sizes(stage.batch_sizes())
  coarse_net, coarse_variables, model, statistics = networks.load_coarse(
      config, networks.coarse_run(config, run), mesh)
  # The run records the whole model, as CoarseNet's stage does: `model` is
  # its surface (what CoarseNet fits), `whole_model` also renders the parts
  # the synthetic photos show (eyes, teeth, mouth interior).
  whole_model = face_models.load(config.model)
  rundir.record_config(run, config, whole_model)
  coarse_fit = coarse_fit_fn(coarse_net, config, mesh)
  fine_net = networks.fine_net(config)
  fine_params = networks.initial_fine_params(config, fine_net)
  params = ({"coarse": coarse_variables["params"], "fine": fine_params}
            if config.fine.end_to_end else fine_params)
  tx, schedule = make_optimizer(stage)
  replicated = parallel.replicated(mesh)
  state = jax.device_put(TrainState.create(params, {}, tx), replicated)
  context = jax.device_put((model, statistics, coarse_variables, whole_model), replicated)
  step_fn = jit_train_step(make_train_step(loss_fn(fine_net, coarse_fit, config, mesh), tx),
                           mesh)
  evaluate = evaluation_fn(fine_net, coarse_fit, config, mesh)
  train_data = sources.open_photos(config, "train",
                                   config.fine.batch_size // jax.process_count(),
                                   labels=losses.FineLossWeights(**config.fine.loss).supervised)
  logger.info("FineNet: %d devices (%s) in %d process(es); global batch %d%s", mesh.size,
              jax.devices()[0].platform, jax.process_count(), config.fine.batch_size,
              ", CoarseNet fine-tuned too" if config.fine.end_to_end else "")

  def make_batch(host):
    return parallel.shard_batch({k: np.asarray(v) for k, v in host.items()}, mesh)

  def run_evaluation(state, step, writer):
    return _run_evaluation(config, run.fine, model, evaluate, state, mesh, context, writer,
                           step)

  return loop.run(loop.Task(
      title="FineNet", stage=stage, run=run.fine, state=state, step_fn=step_fn,
      train_data=train_data, make_batch=make_batch, context=context, schedule=schedule,
      evaluate=run_evaluation))


def _run_evaluation(config, run: rundir.RunDir, model, evaluate, state, mesh, context, writer,
                    step) -> dict:
  """Means over config.fine.eval_batches validation batches
  (`loop.sum_metrics`); the picture of the first batch's first faces goes to
  TensorBoard and (process 0) fine_reconstructions.png in the stage's run."""
  fine = config.fine
  per_host = fine.eval_batch_size // jax.process_count()
  shown = min(fine.eval_pictures, per_host)
  pictures = []

  def evaluate_batch(host):
    batch = parallel.shard_batch({k: np.asarray(v) for k, v in host.items()}, mesh)
    return evaluate(state.params, batch, context)

  def picture_of_first(index, host, outputs):
    if index:
      return
    # The outputs are split over the devices of all hosts: gather them.
    fine_depth, coarse, mask = (
        np.asarray(multihost_utils.process_allgather(x, tiled=True))[:shown] for x in outputs)
    truth = host["fine_depth"][:shown] if "fine_depth" in host else None
    pictures.append(visualize.fine_panel(host["image"][:shown], coarse, fine_depth, mask,
                                         truth))

  sums, count = loop.sum_metrics(
      sources.open_photos(config, "val", per_host, labels=True), fine.eval_batches,
      per_host, evaluate_batch, picture_of_first,
      f"the validation data has fewer than config.fine.eval_batch_size "
      f"({fine.eval_batch_size}) images")
  logger.info("FineNet eval at step %d over %d photos", step, count * fine.eval_batch_size)
  return loop.publish_evaluation(writer, run, step, sums, count, "fine_reconstructions",
                                 pictures[0])
