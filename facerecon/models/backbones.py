"""Convolutional backbones (Flax linen): ResNet v1, VGG-16, MobileNet v1 and a
small CPU net.

Each backbone maps images [B, H, W, C] to a feature vector [B, F] (float32)
with `backbone(x, train=...)`; `make_backbone(name, **kwargs)` builds one by
name. Parameters are float32; `dtype` sets the compute dtype (bfloat16 on
accelerators).

Variable names mirror TF-slim's ImageNet checkpoints, so the converter
(`data_pipeline/convert_slim.py`, `facerecon/models/pretrained.py`) maps
them one to one. Each slim `scope/` with
`weights` (and `biases`, or a `BatchNorm/` sub-scope) is one `SlimConv` module
of the same name here:

  slim checkpoint variable                       Flax variable (collection: path)
  resnet_v1_101/conv1/weights                    params: resnet_v1_101/conv1/weights
  resnet_v1_101/conv1/BatchNorm/gamma            params: resnet_v1_101/conv1/BatchNorm/scale
  resnet_v1_101/conv1/BatchNorm/beta             params: resnet_v1_101/conv1/BatchNorm/bias
  resnet_v1_101/conv1/BatchNorm/moving_mean      batch_stats: resnet_v1_101/conv1/BatchNorm/mean
  resnet_v1_101/conv1/BatchNorm/moving_variance  batch_stats: resnet_v1_101/conv1/BatchNorm/var
  resnet_v1_101/block{b}/unit_{u}/bottleneck_v1/{conv1,conv2,conv3,shortcut}/...
                                                 the same names, same rule
  vgg_16/conv{b}/conv{b}_{i}/weights             params: vgg_16/conv{b}/conv{b}_{i}/weights
  vgg_16/conv{b}/conv{b}_{i}/biases              params: vgg_16/conv{b}/conv{b}_{i}/biases

Kernels are [kh, kw, in, out] in both TF and Flax, so they copy unchanged.
The `resnet_v1_101` / `vgg_16` prefix is the backbone module's name (the
default name `make_backbone` gives it); inside CoarseNet it sits under
`iteration_{k}/`. Not mapped: slim's `logits` (resnet) and `fc6`..`fc8`
(vgg), which these feature extractors do not have; and `conv1` / `conv1_1`
when the network's input has other than 3 channels (CoarseNet's has 10):
the converter adapts those kernels (the RGB part from slim, the rest zero;
see `facerecon.models.pretrained`). `mobilenet_v1` (a fast CPU regressor,
like 3DDFA_V2's MobileNet-0.5) has no slim mapping: its layers are `conv0`
and `block{i}/{depthwise,pointwise}`, each a `SlimConv` scope as above.

The architectures follow slim exactly where it matters for imported
weights: `conv2d_same` padding (symmetric explicit padding of k - 1, unlike
TF's 'SAME' for stride 2) for the strided 3x3 and the 7x7 root convolution,
the root max pool 3x3/2 'SAME', the stride on the *last* unit of a block and
on the bottleneck's 3x3 conv, shortcuts that are 1x1 convs when the depth
changes and subsampling otherwise, no conv biases before BatchNorm, and
BatchNorm with decay 0.997, epsilon 1e-5.

BatchNorm across devices: training jits the step over a device mesh with
NamedSharding, so inside jit the batch mean and variance (plain reductions
over the batch axis) are already over the global, sharded batch: XLA inserts
the cross-device reductions. No `axis_name` is needed, and none is used (that
is for pmap / shard_map, where each device sees only its local batch).
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# slim's resnet_arg_scope; VGG has no BatchNorm.
RESNET_BN_DECAY = 0.997
RESNET_BN_EPSILON = 1e-5

# slim resnet_v1_{depth}: units per block (bottleneck depths 64, 128, 256, 512).
RESNET_UNITS = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
# slim vgg_16: convolutions per block, and the blocks' output depths.
VGG16_CONVS = (2, 2, 3, 3, 3)
VGG16_DEPTHS = (64, 128, 256, 512, 512)

# He initialisation for ReLU nets (slim's variance_scaling_initializer).
_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def _same_padding(kernel_size: int) -> tuple[int, int]:
  """slim's `conv2d_same`: k - 1 pixels, the extra one at the end."""
  total = kernel_size - 1
  return (total // 2, total - total // 2)


def depthwise_conv(x, kernel, stride: int = 1, padding=((1, 1), (1, 1))):
  """A depthwise convolution written as k * k shifted multiply-adds.

  Computes `jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
  dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=C)` for
  x [B, H, W, C] and kernel [kh, kw, 1, C] (the grouped conv's kernel shape):
  `sum_{i, j} x_padded[:, i::stride, j::stride, :] * kernel[i, j, 0]`, which
  XLA fuses into one elementwise loop. On XLA's CPU backend that is several
  times faster than the grouped convolution (see `MobileNetV1`). Products
  are summed in at least float32 and returned in x's dtype.
  """
  kh, kw, multiplier, channels = kernel.shape
  if multiplier != 1 or x.shape[-1] != channels:
    raise ValueError(f"depthwise_conv: kernel {kernel.shape} does not fit input "
                     f"{x.shape} (expected [kh, kw, 1, {x.shape[-1]}])")
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = jax.lax.slice(x, (0, i, j, 0),
                          (x.shape[0], i + stride * (out_h - 1) + 1,
                           j + stride * (out_w - 1) + 1, channels),
                          (1, stride, stride, 1))
      term = tap.astype(acc_dtype) * kernel[i, j, 0].astype(acc_dtype)
      out = term if out is None else out + term
  return out.astype(x.dtype)


class SlimConv(nn.Module):
  """A slim `conv2d` scope: `weights`, then either `BatchNorm` or `biases`,
  then an optional ReLU. Padding is slim's `conv2d_same` (explicit, so
  strided convs match slim's), which equals 'SAME' at stride 1.

  `feature_group_count` > 1 makes a grouped convolution (kernel
  [k, k, in / groups, features]); groups = in = features is a depthwise
  conv (kernel [k, k, 1, C]). With `xla_cpu_kernels` a depthwise conv is
  computed by `depthwise_conv` and a 1x1 stride-1 conv by a matrix
  product: the same function of the same variables, several times faster
  on XLA's CPU backend than its grouped and 1x1 convolutions.
  """
  features: int
  kernel_size: int
  stride: int = 1
  batch_norm: bool = True
  relu: bool = True
  bn_momentum: float = RESNET_BN_DECAY
  bn_epsilon: float = RESNET_BN_EPSILON
  kernel_init: Any = _he_normal
  feature_group_count: int = 1
  xla_cpu_kernels: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.kernel_size
    groups = self.feature_group_count
    if x.shape[-1] % groups or self.features % groups:
      raise ValueError(f"SlimConv: {x.shape[-1]} input and {self.features} output "
                       f"channels do not split into {groups} groups")
    kernel = self.param("weights", self.kernel_init,
                        (k, k, x.shape[-1] // groups, self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    pad = _same_padding(k)
    if self.xla_cpu_kernels and groups == x.shape[-1] == self.features:
      y = depthwise_conv(x, kernel, self.stride, (pad, pad))
    elif self.xla_cpu_kernels and k == 1 and self.stride == 1 and groups == 1:
      y = jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0])
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, (self.stride, self.stride), (pad, pad),
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    if self.batch_norm:
      # In training the batch statistics come from this (global) batch and
      # the running averages in `batch_stats` are updated; see the module
      # docstring for why no axis_name is needed.
      y = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, dtype=self.dtype,
                       param_dtype=jnp.float32, name="BatchNorm")(y)
    else:
      y = y + self.param("biases", nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return nn.relu(y) if self.relu else y


def _global_average(x):
  # float32 so that bfloat16 activations are not summed in bfloat16.
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class BottleneckV1(nn.Module):
  """slim `bottleneck` (v1): 1x1, 3x3 (strided), 1x1; post-activation."""
  depth: int
  depth_bottleneck: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda features, k, stride, name, relu=True: SlimConv(
        features, k, stride, relu=relu, dtype=self.dtype, name=name)
    if x.shape[-1] == self.depth:
      # slim's `subsample`: a 1x1 max pool with stride, i.e. every stride-th pixel.
      shortcut = x[:, ::self.stride, ::self.stride, :]
    else:
      shortcut = conv(self.depth, 1, self.stride, "shortcut", relu=False)(x, train)
    residual = conv(self.depth_bottleneck, 1, 1, "conv1")(x, train)
    residual = conv(self.depth_bottleneck, 3, self.stride, "conv2")(residual, train)
    residual = conv(self.depth, 1, 1, "conv3", relu=False)(residual, train)
    return nn.relu(shortcut.astype(self.dtype) + residual)


class _ResNetUnit(nn.Module):
  """slim's `unit_{u}` scope, holding one `bottleneck_v1`."""
  depth: int
  depth_bottleneck: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    return BottleneckV1(self.depth, self.depth_bottleneck, self.stride, dtype=self.dtype,
                        name="bottleneck_v1")(x, train)


class _ResNetBlock(nn.Module):
  """slim's `block{b}` scope: `num_units` bottlenecks, the last one strided."""
  base_depth: int
  num_units: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for u in range(self.num_units):
      stride = self.stride if u == self.num_units - 1 else 1
      x = _ResNetUnit(4 * self.base_depth, self.base_depth, stride, dtype=self.dtype,
                      name=f"unit_{u + 1}")(x, train)
    return x


class ResNetV1(nn.Module):
  """slim `resnet_v1_{depth}` without logits: features [B, 32 * width].

  `width` is the root depth (64 in the real network); smaller values keep
  the structure and names for fast tests.
  """
  depth: int = 101
  width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.depth not in RESNET_UNITS:
      raise ValueError(f"ResNet v1 depth {self.depth} not supported; choose from "
                       f"{sorted(RESNET_UNITS)}")
    x = SlimConv(self.width, 7, 2, dtype=self.dtype, name="conv1")(x, train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for b, num_units in enumerate(RESNET_UNITS[self.depth]):
      # Stride 2 at the end of blocks 1-3; block 4 keeps the resolution.
      x = _ResNetBlock(self.width * 2 ** b, num_units, 2 if b < 3 else 1,
                       dtype=self.dtype, name=f"block{b + 1}")(x, train)
    return _global_average(x)


class _VGGBlock(nn.Module):
  """slim's `conv{b}` scope: `repeat` 3x3 convs named `conv{b}_{i}`."""
  index: int
  features: int
  repeat: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.repeat):
      x = SlimConv(self.features, 3, batch_norm=False,
                   kernel_init=nn.initializers.glorot_uniform(), dtype=self.dtype,
                   name=f"conv{self.index}_{i + 1}")(x)
    return x


class VGG16(nn.Module):
  """slim `vgg_16`'s convolutional part (conv1..conv5, 13 convs; no fc6-fc8).

  Returns the global average of pool5 [B, 512], or with `return_blocks` the
  last conv output of each block (before pooling), for hypercolumns
  (FineNet uses the first three blocks: `num_blocks=3`).
  """
  num_blocks: int = 5
  depths: Sequence[int] = VGG16_DEPTHS  # channels per block (narrower for small nets)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_blocks: bool = False):
    del train  # No BatchNorm or dropout in the convolutional part.
    blocks = []
    for b in range(self.num_blocks):
      x = _VGGBlock(b + 1, self.depths[b], VGG16_CONVS[b], dtype=self.dtype,
                    name=f"conv{b + 1}")(x)
      blocks.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    return blocks if return_blocks else _global_average(x)


class SmallNet(nn.Module):
  """A small fast backbone for the CPU and tests: strided conv-BN-ReLU
  layers, each doubling the channels, then a global average (`pool=
  "average"`) or the flattened last feature map (`pool="flatten"`).

  Flattening keeps where each feature is: a few layers see too little of
  the image for their average to say where the face's parts are (the
  ResNets' averages see the whole image), and regressing pose and shape
  needs that. Its feature count then depends on the image size.
  """
  widths: Sequence[int] = (16, 32, 64, 128)
  pool: str = "average"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, features in enumerate(self.widths):
      x = SlimConv(features, 3, 2, bn_momentum=0.99, dtype=self.dtype,
                   name=f"conv{i + 1}")(x, train)
    if self.pool == "average":
      return _global_average(x)
    if self.pool == "flatten":
      return x.astype(jnp.float32).reshape(x.shape[0], -1)
    raise ValueError(f"SmallNet.pool: unknown pooling '{self.pool}' (use 'average' or "
                     "'flatten')")


# MobileNet v1 (Howard et al. 2017, Table 1): a 3x3/2 conv of 32 channels, then
# 13 depthwise-separable blocks, each (pointwise depth, depthwise stride).
MOBILENET_V1_ROOT_DEPTH = 32
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       *[(512, 1)] * 5, (1024, 2), (1024, 1))
# Keras' / slim's MobileNet BatchNorm epsilon; the decay is SmallNet's (0.99)
# rather than slim's 0.9997, which lags far behind on short from-scratch runs.
MOBILENET_BN_DECAY = 0.99
MOBILENET_BN_EPSILON = 1e-3


def _mobilenet_depth(depth: int, width: float) -> int:
  """`depth` times the width multiplier, rounded to a multiple of 8 (at least 8)."""
  return max(8, int(depth * width / 8 + 0.5) * 8)


class _SeparableBlock(nn.Module):
  """A MobileNet v1 depthwise-separable block: a 3x3 depthwise conv (strided)
  and a 1x1 pointwise conv, each followed by BatchNorm and ReLU."""
  features: int
  stride: int
  xla_cpu_kernels: bool = True
  bn_momentum: float = MOBILENET_BN_DECAY
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    channels = x.shape[-1]
    common = {"bn_momentum": self.bn_momentum, "bn_epsilon": MOBILENET_BN_EPSILON,
              "xla_cpu_kernels": self.xla_cpu_kernels, "dtype": self.dtype}
    x = SlimConv(channels, 3, self.stride, feature_group_count=channels,
                 name="depthwise", **common)(x, train)
    return SlimConv(self.features, 1, name="pointwise", **common)(x, train)


class MobileNetV1(nn.Module):
  """MobileNet v1 (Howard et al. 2017) without the classifier: features
  [B, 1024 * width] (rounded to a multiple of 8).

  A 3x3/2 conv (`conv0`), then 13 depthwise-separable blocks (`block{1..13}/
  depthwise` with kernel [3, 3, 1, C] and `block{i}/pointwise` [1, 1, C, C']),
  all conv-BatchNorm-ReLU (plain ReLU, as 3DDFA_V2's MobileNet, not ReLU6;
  no conv biases), then a global average. `width` is the width multiplier
  (0.5 is 3DDFA_V2's fast CPU regressor); 5 stride-2 layers, so a 120 x 120
  input ends at 4 x 4. Padding is `SlimConv`'s (symmetric 1 pixel for the
  3x3s, like the PyTorch MobileNets), BatchNorm as in the other backbones.

  `xla_cpu_kernels` (default) computes the depthwise convs as 9 shifted
  multiply-adds (`depthwise_conv`) and the pointwise ones as matrix
  products; False uses XLA's grouped and 1x1 convolutions. Both compute the
  same function of the same variables. Inference of width 0.5 on a 120 x
  120 x 10 input, float32, jitted, on a 2-core AMD EPYC (AVX2) CPU with jax
  0.10.2, ms per image (median of 20 calls):

                                    batch 1   batch 64
    grouped depthwise, 1x1 conv       19.6      16.5
    shifted depthwise, 1x1 conv        3.7       2.7
    grouped depthwise, matmul         16.5      16.0
    shifted depthwise, matmul          3.1       1.7    <- xla_cpu_kernels

  (Other jobs shared the machine: repeated runs varied by up to ~50%, but
  the last row was the fastest in every run.) A training step (forward and
  backward, batch 16) took 14 against 103 ms per image. The network has
  50 M multiply-adds per image, so 1.7 ms is ~60 GFLOP/s, near what XLA's
  matmul reaches on these 2 cores. At batch 1 most of the time is XLA's
  YNNPACK matmul fusions on tiny matrices; turning those off process-wide,
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
  (an empty list of fusion types), brought batch 1 to 1.7 ms too.
  """
  width: float = 1.0
  xla_cpu_kernels: bool = True
  bn_momentum: float = MOBILENET_BN_DECAY
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = SlimConv(_mobilenet_depth(MOBILENET_V1_ROOT_DEPTH, self.width), 3, 2,
                 bn_momentum=self.bn_momentum, bn_epsilon=MOBILENET_BN_EPSILON,
                 dtype=self.dtype, name="conv0")(x, train)
    for i, (depth, stride) in enumerate(MOBILENET_V1_BLOCKS):
      x = _SeparableBlock(_mobilenet_depth(depth, self.width), stride,
                          xla_cpu_kernels=self.xla_cpu_kernels,
                          bn_momentum=self.bn_momentum, dtype=self.dtype,
                          name=f"block{i + 1}")(x, train)
    return _global_average(x)


# Backbone name -> (class, default kwargs); the name is also the module's
# default name, the slim checkpoint's top-level scope.
_BACKBONES = {
    "resnet_v1_50": (ResNetV1, {"depth": 50}),
    "resnet_v1_101": (ResNetV1, {"depth": 101}),
    "resnet_v1_152": (ResNetV1, {"depth": 152}),
    "resnet_v1": (ResNetV1, {}),
    "vgg_16": (VGG16, {}),
    "small": (SmallNet, {}),
    "mobilenet_v1": (MobileNetV1, {}),
}
BACKBONES = tuple(_BACKBONES)


def make_backbone(name: str, **kwargs) -> nn.Module:
  """A backbone by name ('resnet_v1_50', 'resnet_v1_101', 'resnet_v1_152',
  'resnet_v1' with depth=..., 'vgg_16', 'small', 'mobilenet_v1'); kwargs set
  its fields (dtype, width, depth, ...) and may override the module `name`."""
  if name not in _BACKBONES:
    raise ValueError(f"unknown backbone '{name}'; choose from {', '.join(BACKBONES)}")
  cls, defaults = _BACKBONES[name]
  fields = {**defaults, **kwargs}
  if "name" not in fields:
    fields["name"] = (f"resnet_v1_{fields.get('depth', 101)}" if cls is ResNetV1
                      else name)
  return cls(**fields)


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays (or of jax.ShapeDtypeStruct,
  e.g. from `jax.eval_shape(module.init, ...)`)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))
