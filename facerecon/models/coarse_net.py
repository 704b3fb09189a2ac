"""CoarseNet: iterative regression of the face parameters (Richardson et al. 2017).

Iteration k (k = 1..N, each with its own weights) sees the image together
with renders of the current estimate and predicts an additive update:

    estimate_0 = 0                        (normalised units: the data's mean)
    render_k   = render_face(denormalize(estimate_{k-1}))   (no gradient)
    estimate_k = estimate_{k-1} + head_k(backbone_k(inputs(image, render_k)))

Design choices:
- Units: estimates are normalised parameters, (params - mean) / std with
  the data set's `DataStatistics`, instead of the original's ad-hoc sigmoid
  ranges; they are denormalised only to render.
- Start: normalised zeros, i.e. the data set's mean parameters: the mean
  face (shape and expression at their data means, about zero) at the data's
  mean pose (scale and translation that frame a face in the training crops,
  angles at their means). It needs no extra convention, lives in the same
  units as the labels, and matches whatever cropping the data uses; a
  frontal pose from `camera.framing_pose` would have to guess the crop.
  The statistics must therefore come from images of the size fed here.
- Input channels (10): the normalised image (3; 1 for grey input), the grey
  image masked by the rendered face mask (1; the original's input), the
  PNCC code (3, in [0, 1], 0 off the face) and the camera-frame normals
  (3, in [-1, 1], 0 off the face). The renders are inputs, as in the paper:
  they are computed under `stop_gradient`, so gradients reach earlier
  iterations through the additive chain only, never through the renderer.
- Head: a Dense layer to the P parameters, zero-initialised by default
  (`head_init_scale=0`), so every iteration starts as the identity and the
  first estimate is the start estimate; its weights still get gradients,
  and the backbones get theirs once the head has moved off zero.
- BatchNorm: see `facerecon.models.backbones` (no axis_name; batch
  statistics inside jit over a NamedSharding mesh are global).
- Devices: with `mesh` (the training mesh), the renders run per device
  (`facerecon.parallel.map_per_device`), so the CPU rasterizer's custom
  call is not gathered and run on the whole batch by every device. Call with
  `train=True` and `mutable=["batch_stats"]` to train.
- Precision: parameters are float32; `dtype` sets the backbones' compute
  dtype. Rendering, the head and the estimates stay float32.
"""

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from facerecon import face_render
from facerecon import parallel
from facerecon import shading
from facerecon.data import normalization
from facerecon.models import backbones

Dtype = Any
NUM_INPUT_CHANNELS = 10  # for 3-channel images


def input_channels(images, face: face_render.FaceRender):
  """The network input [B, H, W, C + 7]: image, masked grey image, PNCC,
  normals. `images` are normalised (image minus the mean image)."""
  if images.shape[-1] == 3:
    grey = shading.luminance(images, keepdims=True)
  elif images.shape[-1] == 1:
    grey = images
  else:
    raise ValueError(f"images must have 1 or 3 channels, got shape {images.shape}")
  mask = face.mask[..., None].astype(images.dtype)
  return jnp.concatenate([images, grey * mask, face.pncc, face.normals], axis=-1)


def estimate_inputs(estimate, images, model, statistics: normalization.DataStatistics,
                    backend: str | None = None):
  """The network input for normalised estimates [B, P]: their renders at the
  images' size, stacked with the images (`input_channels`)."""
  params = normalization.denormalize_params(estimate, statistics)
  face = face_render.render_face(model, params, None, images.shape[-3], images.shape[-2], backend)
  return input_channels(images, face)


def render_start(model, statistics: normalization.DataStatistics, height: int, width: int,
                 backend: str | None = None) -> face_render.FaceRender:
  """The render of the start estimate (the data's mean parameters), batch 1."""
  start = normalization.denormalize_params(
      jnp.zeros((1, statistics.param_mean.shape[-1])), statistics)
  return face_render.render_face(model, start, None, height, width, backend)


class CoarseIteration(nn.Module):
  """One refinement step: backbone (its own weights) plus a Dense head."""
  num_params: int
  backbone: str
  backbone_kwargs: Mapping[str, Any] | None = None
  head_init_scale: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, train: bool):
    net = backbones.make_backbone(self.backbone, dtype=self.dtype,
                                  **dict(self.backbone_kwargs or {}))
    features = net(inputs.astype(self.dtype), train=train)
    kernel_init = (nn.initializers.zeros if self.head_init_scale == 0 else
                   nn.initializers.variance_scaling(self.head_init_scale ** 2, "fan_in",
                                                    "truncated_normal"))
    return nn.Dense(self.num_params, kernel_init=kernel_init,
                    bias_init=nn.initializers.zeros, dtype=jnp.float32,
                    param_dtype=jnp.float32, name="head")(features.astype(jnp.float32))


class CoarseNet(nn.Module):
  """N refinement iterations from the data's mean parameters.

  `__call__(images, model, statistics, train)`: images [B, H, W, 3] float32,
  normalised; `model` a `facerecon.morphable.MorphableModel` and
  `statistics` a `normalization.DataStatistics` (both pytrees, passed as
  arguments so jit does not bake them in as constants). Returns the
  normalised estimates after each iteration, [num_iterations, B, P] float32.
  Variables: `iteration_{k}/{backbone name}/...` and `iteration_{k}/head`.
  """
  num_iterations: int = 4
  backbone: str = "resnet_v1_101"
  backbone_kwargs: Mapping[str, Any] | None = None
  head_init_scale: float = 0.0  # 0: zeros; else LeCun-normal times this scale
  dtype: Dtype = jnp.float32
  render_backend: str | None = None  # None: render.default_backend()
  mesh: Any = None  # a data-parallel mesh: each device renders its own examples

  @nn.compact
  def __call__(self, images, model, statistics: normalization.DataStatistics,
               train: bool = False, start_face: face_render.FaceRender | None = None):
    """`start_face`: `render_start(model, statistics, H, W)`, when the caller
    keeps it (it depends on neither the images nor the weights)."""
    if images.ndim != 4:
      raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    batch, height, width = images.shape[:3]
    num_params = statistics.param_mean.shape[-1]
    if num_params != model.layout.size:
      raise ValueError(f"statistics have {num_params} parameters, the model's layout "
                       f"needs {model.layout.size}")
    images = images.astype(jnp.float32)

    def start_inputs(images, model, statistics):
      # Every image starts from the same estimate: render it once, not per image.
      face = start_face if start_face is not None else render_start(
          model, statistics, height, width, self.render_backend)
      face = jax.tree.map(lambda x: jnp.broadcast_to(x, images.shape[:1] + x.shape[1:]), face)
      return input_channels(images, face)

    # Per device too (each renders the one start face for its examples): XLA
    # cannot partition a Pallas TPU kernel outside shard_map, even replicated.
    start_inputs = parallel.map_per_device(start_inputs, self.mesh, num_batched=1)
    render_inputs = parallel.map_per_device(
        functools.partial(estimate_inputs, backend=self.render_backend), self.mesh,
        num_batched=2)
    estimate = jnp.zeros((batch, num_params), jnp.float32)
    estimates = []
    for k in range(self.num_iterations):
      # The render is an input, not part of the graph to differentiate.
      inputs = jax.lax.stop_gradient(
          start_inputs(images, model, statistics) if k == 0 else
          render_inputs(jax.lax.stop_gradient(estimate), images, model, statistics))
      update = CoarseIteration(num_params, self.backbone, self.backbone_kwargs,
                               self.head_init_scale, self.dtype,
                               name=f"iteration_{k + 1}")(inputs, train)
      estimate = estimate + update
      estimates.append(estimate)
    return jnp.stack(estimates)
