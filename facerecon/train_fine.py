"""Stage 2: FineNet trained without labels by shape from shading.

For each photo the trained CoarseNet (frozen, or fine-tuned with
`config.fine.end_to_end`) gives a face fit; the renderer turns it into the
coarse depth, the face mask and the albedo (the model's mean texture, grey).
FineNet refines the depth, and the loss is

    sfs * shading_fit(fine) + fidelity * |fine - coarse|^2 + smoothness * |laplacian(fine)|^2

(`facerecon.shading`; the first-order SH light is solved per image inside
the graph). Depths in the loss are measured in pixels of a 200x200 image
(the paper's size) and the shading residual in grey levels 0..255, so the
paper's weights mean the same at every image size.

Data (`config.fine.data.source`): 'synthetic' (rendered faces; their labels
are used only to evaluate: depth and normal error of fine and coarse against
the true detailed surface), 'tfds' (e.g. facerecon_faces/vggface, images
only) or 'folder' (any folder of face photos). The stage runs in
`<workdir>/fine` with its own checkpoints, best checkpoint, TensorBoard
events and `fine_reconstructions.png`; CoarseNet comes from
`config.fine.coarse_workdir` (default: the workdir, i.e. stage 1's run).
"""

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from facerecon.data import input_pipeline
from facerecon.data import preprocessing
from facerecon import face_render
from facerecon import fileio
from facerecon.data import normalization
from facerecon import parallel
from facerecon import shading
from facerecon import train

REFERENCE_SIZE = 200  # loss depths are in pixels of an image this size
# The shading residual is in 0..255 grey levels, the original's image
# units: with intensities in 0..1 the paper's fidelity weight outweighs the
# shading term 70 to 1 on the synthetic faces' true detail, and no detail is
# learnt.
INTENSITY_SCALE = 255.0
# Shading residuals beyond 5 grey levels count linearly (shading.robust_square):
# on the synthetic faces this kept FineNet from bending the face to explain
# the coarse fit's misplaced features, where plain squares did not.
ROBUST_SCALE = 5.0 / 255.0


class FineLossWeights(NamedTuple):
  sfs: float = 1.0
  fidelity: float = 2.0
  smoothness: float = 1.0


def fine_loss(fine_depth, coarse_depth, mask, intensity, albedo, weights: FineLossWeights):
  """(total, terms) of FineNet's loss on depth maps [B, H, W] (pixels of
  this image) against grey photos `intensity` with grey `albedo` (0..1)."""
  unit = fine_depth.shape[-2] / REFERENCE_SIZE  # this image's pixels per 200-image pixel
  sfs, _, _ = shading.shading_fit(fine_depth, mask, intensity, albedo, ROBUST_SCALE)
  terms = {"sfs": sfs * INTENSITY_SCALE ** 2,
           "fidelity": shading.fidelity(fine_depth, coarse_depth, mask) / unit ** 2,
           # A Laplacian (1/pixel) in 200-image units is the value times `unit`.
           "smoothness": shading.smoothness(fine_depth, mask) * unit ** 2}
  total = sum(getattr(weights, name) * value for name, value in terms.items())
  return total, terms


class CoarseFit(NamedTuple):
  depth: jax.Array   # [B, H, W] pixels
  mask: jax.Array    # [B, H, W] bool
  albedo: jax.Array  # [B, H, W] grey mean texture, 0..1


def make_fine_net(config):
  from facerecon.models import fine

  return fine.FineNet(widths=tuple(config.fine.widths), head=tuple(config.fine.head),
                      dtype=jnp.dtype(config.dtype))


def _coarse_fit_fn(coarse_net, config, mesh):
  """(coarse variables, normalised images, model, statistics) -> CoarseFit,
  each device rendering its own examples; differentiable in the variables."""
  size = config.image_size

  def render_fit(estimate, model, statistics):
    params = normalization.denormalize_params(estimate, statistics)
    face = face_render.render_face(model, params, None, size, size, config.render_backend)
    return CoarseFit(face.depth, face.mask, shading.luminance(face.albedo))

  render_fit = parallel.map_per_device(render_fit, mesh, num_batched=1)

  def coarse_fit(coarse_variables, images, model, statistics):
    estimates = coarse_net.apply(coarse_variables, images, model, statistics, train=False)
    return render_fit(estimates[-1], model, statistics)

  return coarse_fit


def _photos(batch, statistics):
  """(normalised images for the networks, grey intensity 0..1 for the loss)."""

  images = preprocessing.network_images(batch["image"], statistics)
  return images, shading.luminance(batch["image"].astype(jnp.float32) / 255.0)


def _split_params(params, end_to_end: bool, coarse_variables):
  """(coarse variables, FineNet params) from the trained params."""
  if end_to_end:
    return {**coarse_variables, "params": params["coarse"]}, params["fine"]
  return coarse_variables, params


def _loss_fn(fine_net, coarse_fit, config, mesh):
  weights = FineLossWeights(**config.fine.loss)
  end_to_end = config.fine.end_to_end
  loss = parallel.mean_per_device(functools.partial(fine_loss, weights=weights), mesh,
                                  num_batched=5)

  def loss_fn(params, batch_stats, batch, rng, context):
    del batch_stats, rng
    model, statistics, coarse_variables = context
    coarse_variables, fine_params = _split_params(params, end_to_end, coarse_variables)
    images, intensity = _photos(batch, statistics)
    fit = coarse_fit(coarse_variables, images, model, statistics)
    if not end_to_end:
      fit = jax.lax.stop_gradient(fit)
    fine = fine_net.apply({"params": fine_params}, images, fit.depth, fit.mask)
    total, terms = loss(fine, fit.depth, fit.mask, intensity, fit.albedo)
    return total, ({}, terms)

  return loss_fn


def _eval_fn(fine_net, coarse_fit, config, mesh):
  """Loss terms on one batch and, where it has the true detailed depth
  ('fine_depth', 'mask': synthetic data), depth and normal errors of fine
  and coarse: depth error as in CoarseNet's evaluation (mean absolute
  difference over the pixels both masks cover, in units of the image
  height), normal error the mean angle in degrees between the depth maps'
  normals where both have all four neighbours."""
  weights = FineLossWeights(**config.fine.loss)
  end_to_end = config.fine.end_to_end
  size = config.image_size

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
    total, out = fine_loss(fine, coarse, mask, intensity, albedo, weights)
    out = dict(out, loss=total)
    if truth:
      truth = (*truth, *shading.depth_normals(*truth))
      out["depth_error"], out["normal_error"] = errors(fine, mask, *truth)
      out["coarse_depth_error"], out["coarse_normal_error"] = errors(coarse, mask, *truth)
    return out

  def evaluate(params, batch, context):
    model, statistics, coarse_variables = context
    coarse_variables, fine_params = _split_params(params, end_to_end, coarse_variables)
    images, intensity = _photos(batch, statistics)
    fit = coarse_fit(coarse_variables, images, model, statistics)
    fine = fine_net.apply({"params": fine_params}, images, fit.depth, fit.mask)
    truth = ((batch["fine_depth"], batch["mask"]) if "fine_depth" in batch else ())
    values = parallel.mean_per_device(metrics, mesh, num_batched=5 + len(truth))(
        fine, fit.depth, fit.mask, intensity, fit.albedo, *truth)
    return values, (fine, fit.depth, fit.mask)

  return jax.jit(evaluate)


def _open_data(config, model, split: str, batch_size: int, evaluation: bool = False):
  """Host batches of photos ('image' uint8; synthetic evaluation batches
  also 'fine_depth' and 'mask')."""
  data = config.fine.data
  if data.source == "synthetic":
    fields = ("image", "fine_depth", "mask") if evaluation else ("image",)
    seed = train.synthetic_split_seed(config, split, "config.fine.seed")
    return train.SyntheticStream(model, config.image_size, batch_size,
                                 seed, train.synthetic_prior(config), fields=fields)

  if data.source == "tfds":
    source = input_pipeline.open_source(data.name, split, data.data_dir, features=("image",))
  elif data.source == "folder":
    if not data.folder:
      raise ValueError("config.fine.data.folder: the photo folder is required with "
                       "config.fine.data.source='folder'")
    source = input_pipeline.FolderSource(data.folder, config.image_size, split)
  else:
    raise ValueError(f"config.fine.data.source: unknown source '{data.source}' "
                     "(use 'synthetic', 'tfds' or 'folder')")
  return iter(input_pipeline.make_dataset(
      source, batch_size=batch_size, seed=config.fine.seed, train=split == "train",
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=data.num_workers if split == "train" else 0, image_size=config.image_size))


def _best_restorer(workdir: str, metric: str):
  """restore(like) -> the best variables of the run in `workdir`
  (`<workdir>/best`, train.BestCheckpoint) shaped like `like`, or None when
  the run has no best checkpoint (checked now, before `like` is built)."""
  best_dir = os.path.join(workdir, "best")
  if not fileio.exists(os.path.join(best_dir, "best.json")):
    return None

  def restore(like):
    best = train.BestCheckpoint(best_dir, metric)
    try:
      return best.restore(like)
    finally:
      best.close()

  return restore


def load_coarse(config, coarse_workdir: str, mesh):
  """(CoarseNet, its best variables, model, statistics) of stage 1's run in
  `coarse_workdir`."""
  restore = _best_restorer(coarse_workdir, config.best_metric)
  if restore is None:
    raise FileNotFoundError(
        f"no trained CoarseNet in {os.path.join(coarse_workdir, 'best')}: train it first "
        f"(python main.py --config=... --workdir={coarse_workdir}) or set "
        "config.fine.coarse_workdir")
  model, statistics = train.model_and_statistics(config, coarse_workdir)
  net = train.make_coarse_net(config, mesh)
  like = jax.eval_shape(lambda: train.init_coarse_variables(net, config, mesh, model,
                                                            statistics))
  return net, restore(like), model, statistics


def init_fine_params(config, fine_net, seed: int = 0):
  """FineNet's freshly initialised parameters for `config.image_size` inputs."""
  size = config.image_size
  zeros = jnp.zeros((1, size, size))
  return jax.jit(lambda key: fine_net.init(key, jnp.zeros((1, size, size, 3)), zeros,
                                           zeros > 0))(jax.random.PRNGKey(seed))["params"]


def load_fine(config, fine_workdir: str, coarse_variables):
  """(FineNet, its best params, the CoarseNet variables to use with it) of
  stage 2's run in `fine_workdir`, or None when it has no best checkpoint.
  An end-to-end run's CoarseNet variables replace `coarse_variables`."""
  restore = _best_restorer(fine_workdir, config.fine.best_metric)
  if restore is None:
    return None
  fine_net = make_fine_net(config)
  fine_like = jax.eval_shape(lambda: init_fine_params(config, fine_net))
  params_like = ({"coarse": coarse_variables["params"], "fine": fine_like}
                 if config.fine.end_to_end else fine_like)
  restored = restore({"params": params_like, "batch_stats": {}})
  coarse_variables, fine_params = _split_params(restored["params"], config.fine.end_to_end,
                                                coarse_variables)
  return fine_net, fine_params, coarse_variables


def train_and_evaluate(config, workdir: str, coarse_workdir: str | None = None) -> dict:
  """Trains FineNet as `config.fine` says in `workdir` (checkpoints, best/,
  TensorBoard, fine_reconstructions.png; resumes from there), on top of the
  CoarseNet trained in `coarse_workdir`. Returns the last evaluation's
  metrics."""
  from absl import logging

  stage = config.fine
  fileio.makedirs(workdir)
  mesh = train.make_mesh()
  parallel.check_batch_sizes(stage, "config.fine.")
  coarse_net, coarse_variables, model, statistics = load_coarse(
      config, coarse_workdir or workdir, mesh)
  coarse_fit = _coarse_fit_fn(coarse_net, config, mesh)
  fine_net = make_fine_net(config)
  fine_params = init_fine_params(config, fine_net, stage.seed)
  if stage.pretrained:  # ImageNet vgg_16 (a resumed run restores over it)
    from facerecon.models import fine
    from facerecon.models import pretrained

    fine_params = pretrained.init_from_slim(
        {"params": fine_params}, pretrained.load_slim_arrays(stage.pretrained),
        fine.SCOPE)["params"]
  params = ({"coarse": coarse_variables["params"], "fine": fine_params}
            if stage.end_to_end else fine_params)
  tx, schedule = train.make_optimizer(stage, "config.fine.")
  state = jax.device_put(train.TrainState.create(params, {}, tx), train.replicated(mesh))
  context = jax.device_put((model, statistics, coarse_variables), train.replicated(mesh))
  step_fn = train.jit_train_step(
      train.make_train_step(_loss_fn(fine_net, coarse_fit, config, mesh), tx), mesh)
  evaluate = _eval_fn(fine_net, coarse_fit, config, mesh)
  train_data = _open_data(config, model, "train", stage.batch_size // jax.process_count())
  logging.info("FineNet: %d devices (%s) in %d process(es); global batch %d%s", mesh.size,
               jax.devices()[0].platform, jax.process_count(), stage.batch_size,
               ", CoarseNet fine-tuned too" if stage.end_to_end else "")

  def make_batch(host):
    return train.shard_batch({"image": np.asarray(host["image"])}, mesh)

  def run_evaluation(state, step, writer):
    return _run_evaluation(config, model, evaluate, state, mesh, context, writer, step,
                           workdir)

  return train.run_train_loop(stage, workdir, seed=stage.seed, state=state, step_fn=step_fn,
                              train_data=train_data, make_batch=make_batch, context=context,
                              schedule=schedule, evaluate=run_evaluation,
                              field_prefix="config.fine.")


def _run_evaluation(config, model, evaluate, state, mesh, context, writer, step, workdir):
  """Means over config.fine.eval_batches validation batches
  (`train.sum_metrics`); the picture of the first batch's first faces goes
  to TensorBoard and (process 0) `<workdir>/fine_reconstructions.png`."""
  from absl import logging
  from jax.experimental import multihost_utils

  from facerecon import visualize

  stage = config.fine
  per_host = stage.eval_batch_size // jax.process_count()
  shown = min(stage.eval_pictures, per_host)
  pictures = []

  def evaluate_batch(host):
    batch = train.shard_batch({k: np.asarray(v) for k, v in host.items()}, mesh)
    return evaluate(state.params, batch, context)

  def picture_of_first(index, host, outputs):
    if index:
      return
    # The outputs are split over the devices of all hosts: gather them.
    fine, coarse, mask = (np.asarray(multihost_utils.process_allgather(x, tiled=True))[:shown]
                          for x in outputs)
    truth = host["fine_depth"][:shown] if "fine_depth" in host else None
    pictures.append(visualize.fine_panel(host["image"][:shown], coarse, fine, mask, truth))

  sums, count = train.sum_metrics(
      _open_data(config, model, "val", per_host, evaluation=True), stage.eval_batches,
      per_host, evaluate_batch, picture_of_first,
      f"the validation data has fewer than config.fine.eval_batch_size "
      f"({stage.eval_batch_size}) images")
  logging.info("FineNet eval at step %d over %d photos", step, count * stage.eval_batch_size)
  return train.publish_evaluation(writer, workdir, step, sums, count, "fine_reconstructions",
                                  pictures[0])
