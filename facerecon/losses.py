"""The training losses: pure, jit-able functions.

CoarseNet's are functions of parameter vectors; FineNet's (`fine_loss`, at
the end) of depth maps and photos.

Networks predict parameters in normalised units (`facerecon.data.normalization`);
`parameter_loss` compares those directly, the geometric losses take raw
(denormalised) parameters in the `facerecon.params` layout. `total_loss`
does the bookkeeping for a train step. Every function accepts any leading
batch dims ([..., P]) and averages over them.

The terms:
- **parameter**: mean squared error per block (pose, shape, expression) of the
  normalised vectors, each block with its own weight (the original weighted
  pose 1e-3; normalised units make the blocks comparable to start with).
- **vertex**: mean Euclidean distance between predicted and true model-space
  vertices (shape and expression, no pose), divided by the model's face
  size, so it is a fraction of the face's size, the same for the BFM and the
  embedded model. This is the paper's geometry loss (basis x params) made
  unit-free; pose is left to the parameter, render and landmark terms so it
  is not counted twice.
- **render**: mean absolute difference of depth maps rendered from both
  parameter vectors, over the union of their masks, in units of the image
  height. A pixel that one face does not cover takes the depth of a *back
  plane*: the farthest (smallest) depth visible in either render of that
  image. So the loss is zero only when the depth maps and masks agree, a
  prediction that spills over the true silhouette is pushed back onto the
  plane (gradient through its depth), and the arbitrary background value of
  the rasterizer (0, which with framed poses lies mid-face) plays no part.
  Visibility is held fixed, as in the renderer: a pixel the prediction
  does not cover gives it no gradient (no silhouette gradients).
- **landmark**: mean Euclidean distance between the 68 projected landmarks
  and the true ones, divided by sqrt(H * W) (the image size).

Weight decay is not a loss term here: the optimizer applies it
(`facerecon.training.state.make_optimizer`, decoupled, kernels only).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from facerecon import face_render
from facerecon import morphable
from facerecon import params as params_lib
from facerecon import shading
from facerecon.data import normalization


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the loss terms; hashable, so it can be a static jit argument.

  A term with weight 0 is not computed at all (no rendering cost).
  """
  pose: float = 1.0
  shape: float = 1.0
  expression: float = 1.0
  vertex: float = 0.0
  render: float = 0.0
  landmark: float = 0.0


def _norm3(x):
  """Euclidean norm over a trailing axis of 2 or 3, with a finite (zero)
  gradient at 0. Written out: trailing-axis reductions are slow on XLA's CPU."""
  squared = x[..., 0] * x[..., 0]
  for i in range(1, x.shape[-1]):
    squared = squared + x[..., i] * x[..., i]
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def parameter_loss(pred, target, layout: params_lib.ParamLayout,
                   weights: LossWeights = LossWeights()):
  """Weighted per-block mean squared error of normalised parameter vectors.

  pred, target: [..., layout.size] in normalised units. Returns
  (weighted total, {"pose", "shape", "expression"}: each block's unweighted
  MSE, averaged over the batch and the block's entries; 0 for an empty block).
  """
  if pred.shape[-1] != layout.size or target.shape[-1] != layout.size:
    raise ValueError(f"parameter vectors have {pred.shape[-1]} and {target.shape[-1]} "
                     f"entries, layout {layout} needs {layout.size}")
  error = jnp.square(pred - target)
  terms = {}
  total = 0.0
  for name, block in (("pose", layout.pose), ("shape", layout.shape),
                      ("expression", layout.expression)):
    values = error[..., block]
    terms[name] = jnp.mean(values) if values.shape[-1] else jnp.zeros((), error.dtype)
    total = total + getattr(weights, name) * terms[name]
  return total, terms


def face_size(model: morphable.MorphableModel):
  """The model's size: RMS distance of the mean shape's vertices from their
  centroid, in model units (about 6e4 for the BFM)."""
  centred = model.mean_shape - jnp.mean(model.mean_shape, axis=0)
  return jnp.sqrt(jnp.mean(jnp.sum(centred * centred, axis=-1)))


def vertex_loss(pred_params, target_params, model: morphable.MorphableModel,
                relative: bool = True):
  """Mean Euclidean distance between model-space vertices (shape and
  expression, pose ignored) of raw parameter vectors [..., P].

  With `relative` (the default) it is divided by `face_size(model)`, a
  fraction of the face's size; otherwise it is in model units.
  """
  # One pass over the bases (the dense mesh's size) instead of two.
  difference = params_lib.split(pred_params - target_params, model.layout)
  offset = morphable.vertex_offsets(model, difference.shape, difference.expression)
  distance = jnp.mean(_norm3(offset))
  return distance / face_size(model) if relative else distance


def aligned_distance(pred_vertices, target_vertices):
  """Mean distance between vertex sets [..., N, 3] after the best isotropic
  scale and translation of `pred_vertices` onto the target (least squares,
  closed form)."""
  pred = pred_vertices - jnp.mean(pred_vertices, axis=-2, keepdims=True)
  target = target_vertices - jnp.mean(target_vertices, axis=-2, keepdims=True)
  scale = (jnp.sum(pred * target, axis=(-2, -1), keepdims=True)
           / jnp.maximum(jnp.sum(pred * pred, axis=(-2, -1), keepdims=True), 1e-12))
  return jnp.mean(_norm3(scale * pred - target))


def aligned_vertex_error(pred_params, target_params, model: morphable.MorphableModel):
  """`vertex_loss` after aligning the predicted vertices' scale and position
  (`aligned_distance`), as a fraction of the face size. An evaluation
  metric: a framed crop does not show the face's absolute size (the camera
  scale f absorbs it), and the largest shape modes are about 35% size change."""
  return aligned_distance(morphable.vertices_from_params(model, pred_params),
                          morphable.vertices_from_params(model, target_params)
                          ) / face_size(model)


def depth_loss(pred_depth, pred_mask, target_depth, target_mask, height: int):
  """Mean absolute depth difference over the union of the masks, in units of
  `height`, with uncovered pixels on the back plane (see the module doc).

  Depths and masks [..., H, W]; averaged per image over its union, then
  over images. An image whose union is empty contributes 0. The target
  gets no gradient.
  """
  target_depth = jax.lax.stop_gradient(target_depth)
  union = pred_mask | target_mask
  far = jnp.minimum(
      jnp.min(jnp.where(pred_mask, pred_depth, jnp.inf), axis=(-2, -1)),
      jnp.min(jnp.where(target_mask, target_depth, jnp.inf), axis=(-2, -1)))
  far = jax.lax.stop_gradient(jnp.where(jnp.isfinite(far), far, 0.0))[..., None, None]
  pred_full = jnp.where(pred_mask, pred_depth, far)
  target_full = jnp.where(target_mask, target_depth, far)
  error = jnp.where(union, jnp.abs(pred_full - target_full), 0.0)
  count = jnp.sum(union, axis=(-2, -1))
  per_image = jnp.sum(error, axis=(-2, -1)) / jnp.maximum(count, 1)
  return jnp.mean(per_image) / height


def render_loss(pred_params, target_params, model: morphable.MorphableModel,
                height: int, width: int, backend: str | None = None):
  """Depth-map loss between renders of raw parameter vectors [..., P]
  (see `depth_loss`); gradients reach `pred_params` only."""
  pred_depth, pred_mask = face_render.render_depth(model, pred_params, height, width, backend)
  target_depth, target_mask = face_render.render_depth(
      model, jax.lax.stop_gradient(target_params), height, width, backend)
  return depth_loss(pred_depth, pred_mask, target_depth, target_mask, height)


def landmark_loss(pred_params, target_landmarks, model: morphable.MorphableModel,
                  height: int, width: int | None = None):
  """Mean 2D distance between the projected landmarks of raw parameter
  vectors [..., P] and `target_landmarks` [..., 68, 2] (image x, y in
  pixels), divided by sqrt(height * width); width defaults to height."""
  width = height if width is None else width
  pred = face_render.project_landmarks(model, pred_params, height)
  return jnp.mean(_norm3(pred - target_landmarks)) / jnp.sqrt(float(height * width))


def total_loss(pred, target, model: morphable.MorphableModel,
               stats: normalization.DataStatistics, weights: LossWeights,
               height: int, width: int, target_landmarks=None,
               backend: str | None = None):
  """The weighted sum of all terms, for a train step.

  pred, target: normalised parameter vectors [..., P] (the network's output
  and the normalised label). `target_landmarks` [..., 68, 2] (pixels, e.g.
  the input pipeline's) are used by the landmark term; without them the
  target parameters' landmarks are. Static arguments (for jit): weights,
  height, width, backend.

  Returns (total, terms): `terms` maps "total", "pose", "shape",
  "expression" and each geometric term with a nonzero weight ("vertex",
  "render", "landmark") to its unweighted scalar value, for logging.
  """
  total, terms = parameter_loss(pred, target, model.layout, weights)
  geometric = {"vertex": weights.vertex, "render": weights.render,
               "landmark": weights.landmark}
  if any(geometric.values()):
    pred_raw = normalization.denormalize_params(pred, stats)
    target_raw = jax.lax.stop_gradient(normalization.denormalize_params(target, stats))
    if weights.vertex:
      terms["vertex"] = vertex_loss(pred_raw, target_raw, model)
    if weights.render:
      terms["render"] = render_loss(pred_raw, target_raw, model, height, width, backend)
    if weights.landmark:
      if target_landmarks is None:
        target_landmarks = face_render.project_landmarks(model, target_raw, height)
      terms["landmark"] = landmark_loss(pred_raw, target_landmarks, model, height, width)
    for name, weight in geometric.items():
      if weight:
        total = total + weight * terms[name]
  terms["total"] = total
  return total, terms


# --- FineNet: shape from shading ----------------------------------------------------

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
  # Supervised terms against the true detailed surface (synthetic faces
  # only; 0: the paper's unsupervised loss).
  depth: float = 0.0
  normal: float = 0.0
  # FineNet's albedo estimate against the true albedo (synthetic faces only;
  # > 0 also gives FineNet its albedo output, `networks.fine_net`).
  albedo: float = 0.0

  @property
  def supervised(self) -> bool:
    return self.depth > 0 or self.normal > 0 or self.albedo > 0


def fine_loss(fine_depth, coarse_depth, mask, intensity, albedo, weights: FineLossWeights,
              true_depth=None, true_mask=None, fine_albedo=None, true_albedo=None):
  """(total, terms) of FineNet's loss on depth maps [B, H, W] (pixels of
  this image) against grey photos `intensity` with grey `albedo` (0..1):

      sfs * shading_fit(fine) + fidelity * |fine - coarse|^2
          + smoothness * |laplacian(fine)|^2
          + depth * |fine - true| + normal * (1 - cos(normals, true normals))
          + albedo * |fine albedo - true albedo|

  (`facerecon.shading`; the first-order SH light is solved per image inside
  the graph). The first three are the paper's unsupervised loss; the
  depth and normal terms need the true detailed depth and mask (synthetic
  faces) and are computed whenever those are given, the albedo term
  (`albedo_error`) FineNet's albedo [B, H, W, 3] and the true one too.
  Depths are measured in pixels of a REFERENCE_SIZE image (the paper's size)
  and the shading residual in grey levels 0..255, so the weights mean the
  same at every image size."""
  unit = fine_depth.shape[-2] / REFERENCE_SIZE  # this image's pixels per 200-image pixel
  terms = {"sfs": shading_residual(fine_depth, mask, intensity, albedo),
           "fidelity": shading.fidelity(fine_depth, coarse_depth, mask) / unit ** 2,
           # A Laplacian (1/pixel) in 200-image units is the value times `unit`.
           "smoothness": shading.smoothness(fine_depth, mask) * unit ** 2}
  if true_depth is not None:
    terms.update(detail_errors(fine_depth, mask, true_depth, true_mask))
    terms["depth"] = terms["depth"] / unit
    if fine_albedo is not None:
      terms["albedo"] = albedo_error(fine_albedo, true_albedo, mask & true_mask)
  elif weights.supervised:
    raise ValueError("FineNet's supervised loss terms (config.fine.loss.depth, "
                     "config.fine.loss.normal, config.fine.loss.albedo) need the true "
                     "detailed depth: synthetic data")
  if weights.albedo > 0 and "albedo" not in terms:
    raise ValueError("config.fine.loss.albedo needs FineNet's albedo and the true albedo")
  total = sum(getattr(weights, name) * value for name, value in terms.items())
  return total, terms


def albedo_error(albedo, true_albedo, region):
  """Mean absolute difference of two albedo maps [B, H, W, 3] (RGB 0..1)
  over the pixels of `region` [B, H, W], per image, then over the images
  (so a batch split over devices gives the same mean)."""
  return shading.masked_mean(jnp.mean(jnp.abs(albedo - true_albedo), axis=-1),
                             jnp.asarray(region, albedo.dtype))


def shading_residual(depth, mask, intensity, albedo):
  """The shape-from-shading term: the robust squared residual (grey levels
  0..255) between photos `intensity` [..., H, W] and `albedo` shaded by
  the depth maps' normals under each image's best first-order SH light."""
  residual, _, _ = shading.shading_fit(depth, mask, intensity, albedo, ROBUST_SCALE)
  return residual * INTENSITY_SCALE ** 2


def detail_errors(depth, mask, true_depth, true_mask):
  """{'depth': mean absolute depth difference (pixels) where both masks
  cover, 'normal': mean 1 - cosine between the depth maps' normals where
  both have all four neighbours}."""
  mask, true_mask = jnp.asarray(mask, bool), jnp.asarray(true_mask, bool)
  region = (mask & true_mask).astype(depth.dtype)
  normals, interior = shading.depth_normals(depth, mask)
  true_normals, true_interior = shading.depth_normals(true_depth, true_mask)
  cosine = jnp.sum(normals * true_normals, axis=-1)
  return {"depth": shading.masked_mean(jnp.abs(depth - true_depth), region),
          "normal": shading.masked_mean(1.0 - cosine,
                                        (interior & true_interior).astype(depth.dtype))}
