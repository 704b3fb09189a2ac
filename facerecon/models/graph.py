"""A converted TFLite inference graph (`data_pipeline.prepare_detector`),
run in JAX.

The file is an .npz: `graph.json` (the operators in execution order, each
with its input and output tensor ids and options; every tensor's name,
shape and dtype; the graph's inputs and outputs) and `tensor_<id>` arrays
for the constants. `Graph.__call__` runs it on a batch: TFLite graphs are
written for a batch of one, and every operator here keeps the leading axis
as the batch (RESHAPE replaces only the trailing shape).

The operators are those the MediaPipe face detectors use; a file with any
other is refused when it is loaded, naming the operator.
"""

import dataclasses
import io
import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import fileio

OPERATORS = ("ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
             "MAX_POOL_2D", "PAD", "RELU", "RESHAPE", "RESIZE_BILINEAR")
_DESCRIPTION = "graph.json"


def _activation(x, code: int):
  # TFLite's fused activations: 0 none, 1 ReLU, 2 ReLU to [-1, 1], 3 ReLU6.
  if code == 0:
    return x
  if code == 1:
    return jax.nn.relu(x)
  if code == 2:
    return jnp.clip(x, -1.0, 1.0)
  if code == 3:
    return jnp.clip(x, 0.0, 6.0)
  raise ValueError(f"fused activation {code} is not supported")


def _conv(x, kernel, bias, options, groups: int):
  out = jax.lax.conv_general_dilated(
      x, kernel, window_strides=tuple(options["stride"]), padding=options["padding"],
      rhs_dilation=tuple(options["dilation"]), feature_group_count=groups,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return _activation(out + bias, options["activation"])


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
  """TF's SAME padding of one axis: the odd pixel goes at the end."""
  extent = (kernel - 1) * dilation + 1
  total = max((-(-size // stride) - 1) * stride + extent - size, 0)
  return total // 2, total - total // 2


def _depthwise_conv(x, kernel, bias, options):
  """DEPTHWISE_CONV_2D (kernel [1, H, W, in * multiplier]) as a sum of
  shifted, strided slices times per-channel weights. Not XLA's grouped
  convolution: on CPU that was 20 times slower here, and fused after a
  channel PAD and before a max pool it gave wrong values (jax 0.10)."""
  multiplier = options["depth_multiplier"] or kernel.shape[-1] // x.shape[-1]
  if multiplier > 1:  # output channel c * multiplier + m reads input channel c
    x = jnp.repeat(x, multiplier, axis=-1)
  (kh, kw), (sh, sw), (dh, dw) = kernel.shape[1:3], options["stride"], options["dilation"]
  h, w = x.shape[1:3]
  if options["padding"] == "SAME":
    pads = (_same_padding(h, kh, sh, dh), _same_padding(w, kw, sw, dw))
  else:
    pads = ((0, 0), (0, 0))
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  out_h = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
  out_w = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
  out = bias
  for i in range(kh):
    for j in range(kw):
      window = x[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh,
                 j * dw:j * dw + (out_w - 1) * sw + 1:sw]
      out = out + window * kernel[0, i, j]
  return _activation(out, options["activation"])


def _resize_bilinear(x, size, align_corners: bool, half_pixel_centers: bool):
  """TFLite's RESIZE_BILINEAR (its three sampling conventions)."""

  def axis_weights(n_in, n_out):
    out = np.arange(n_out, dtype=np.float64)
    if align_corners and n_out > 1:
      source = out * (n_in - 1) / (n_out - 1)
    elif half_pixel_centers:
      source = np.maximum((out + 0.5) * n_in / n_out - 0.5, 0.0)
    else:
      source = out * n_in / n_out
    low = np.minimum(np.floor(source).astype(np.int32), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (source - low).astype(np.float32)

  (y0, y1, wy), (x0, x1, wx) = (axis_weights(x.shape[1], size[0]),
                                axis_weights(x.shape[2], size[1]))
  rows = x[:, y0] * (1 - wy)[None, :, None, None] + x[:, y1] * wy[None, :, None, None]
  return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def _pad(x, padding):
  """PAD with zeros, batch axis kept. As concatenations: XLA's CPU fusion of
  a padded tensor into a later max pool gave wrong values (jax 0.10)."""
  for axis, (before, after) in enumerate(padding[1:], start=1):
    parts = []
    for count in (before, after):
      shape = list(x.shape)
      shape[axis] = count
      parts.append(jnp.zeros(shape, x.dtype))
    x = jnp.concatenate([parts[0], x, parts[1]], axis=axis) if before or after else x
  return x


def _max_pool(x, options):
  """MAX_POOL_2D with its window equal to its stride (the detectors' 2x2,
  stride 2), as a reshape and max: XLA's CPU reduce_window gave wrong values
  for it under jit (jax 0.10)."""
  window, stride = tuple(options["window"]), tuple(options["stride"])
  if window != stride:
    raise ValueError(f"MAX_POOL_2D with window {window} != stride {stride} is not supported")
  (b, h, w, c), (sh, sw) = x.shape, stride
  if options["padding"] == "SAME":  # TF's SAME: the extra row and column at the end
    out_h, out_w = -(-h // sh), -(-w // sw)
    x = jnp.pad(x, ((0, 0), (0, out_h * sh - h), (0, out_w * sw - w), (0, 0)),
                constant_values=-jnp.inf)
  else:
    out_h, out_w = h // sh, w // sw
    x = x[:, :out_h * sh, :out_w * sw]
  return x.reshape(b, out_h, sh, out_w, sw, c).max(axis=(2, 4))


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jit-able
class Graph:
  """A loaded graph: call it on float32 input [B, *input_shape[1:]]; it
  returns the graph's outputs, each [B, ...]."""
  description: dict
  constants: dict  # tensor id -> float32 (or int32) array, DEQUANTIZE done

  @property
  def input_shape(self) -> tuple:
    return tuple(self.description["tensors"][self.description["inputs"][0]]["shape"])

  @property
  def output_shapes(self) -> list:
    return [tuple(self.description["tensors"][i]["shape"]) for i in self.description["outputs"]]

  def output_index(self, name: str) -> int:
    """Position among the outputs of the output tensor called `name`."""
    names = [self.description["tensors"][i]["name"] for i in self.description["outputs"]]
    if name not in names:
      raise KeyError(f"the graph has no output '{name}' (it has {names})")
    return names.index(name)

  def __call__(self, x):
    values = dict(self.constants)
    values[self.description["inputs"][0]] = x
    for op in self.description["operators"]:
      args = [values[i] if i >= 0 else None for i in op["inputs"]]
      values[op["outputs"][0]] = self._run(op, args)
    return [values[i] for i in self.description["outputs"]]

  def _run(self, op, args):
    name, options = op["op"], op["options"]
    if name == "CONV_2D":
      if args[1].shape[1:3] == (1, 1) and tuple(options["stride"]) == (1, 1):
        # Pointwise: a matrix product, faster than XLA's CPU convolution.
        out = jnp.einsum("bhwi,oi->bhwo", args[0], args[1][:, 0, 0]) + args[2]
        return _activation(out, options["activation"])
      kernel = jnp.transpose(args[1], (1, 2, 3, 0))  # OHWI -> HWIO
      return _conv(args[0], kernel, args[2], options, 1)
    if name == "DEPTHWISE_CONV_2D":
      return _depthwise_conv(args[0], args[1], args[2], options)
    if name == "ADD":
      return _activation(args[0] + args[1], options["activation"])
    if name == "RELU":
      return jax.nn.relu(args[0])
    if name == "DEQUANTIZE":
      return args[0].astype(jnp.float32)
    if name == "PAD":
      return _pad(args[0], np.asarray(args[1]).tolist())
    if name == "MAX_POOL_2D":
      return _activation(_max_pool(args[0], options), options["activation"])
    if name == "RESHAPE":
      shape = self.description["tensors"][op["outputs"][0]]["shape"]
      if len(shape) == 3 and args[0].size != np.prod(shape[1:]) * args[0].shape[0]:
        # [B, H, W, C] -> [B, H * W, C] of another input size than the file's.
        return jnp.reshape(args[0], (args[0].shape[0], -1, shape[2]))
      return jnp.reshape(args[0], (args[0].shape[0], *shape[1:]))
    if name == "CONCATENATION":
      axis = options["axis"] % args[0].ndim
      return _activation(jnp.concatenate(args, axis=axis), options["activation"])
    if name == "RESIZE_BILINEAR":
      # The file's sizes are for its input size: kept as factors of the
      # tensor's own size, so the graph runs on other input sizes too.
      described = self.description["tensors"][op["inputs"][0]]["shape"][1:3]
      size = [int(v) * n // d for v, n, d in zip(np.asarray(args[1]), args[0].shape[1:3],
                                                  described)]
      return _resize_bilinear(args[0], size, options["align_corners"],
                              options["half_pixel_centers"])
    raise ValueError(f"operator {name} is not supported")


def save(path, description: dict, arrays: dict) -> None:
  """Writes a graph file atomically."""
  payload = {_DESCRIPTION: np.frombuffer(json.dumps(description).encode(), np.uint8)}
  payload.update(arrays)
  with fileio.atomic_write(path) as f:
    np.savez_compressed(f, **payload)


def load(path) -> Graph:
  """Reads a graph file; a missing, corrupt or unsupported one raises an
  error naming it."""
  try:
    with np.load(io.BytesIO(fileio.read_bytes(path))) as data:
      description = json.loads(data[_DESCRIPTION].tobytes().decode())
      arrays = {int(key.split("_", 1)[1]): data[key] for key in data.files if key != _DESCRIPTION}
  except FileNotFoundError as e:
    raise FileNotFoundError(f"graph file {path} does not exist") from e
  except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile,
          json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"graph file {path} is corrupt or not a graph file ({e})") from e
  try:
    for op in description["operators"]:
      if op["op"] not in OPERATORS:
        raise ValueError(f"operator {op['op']} is not supported (supported: {OPERATORS})")
    tensors = description["tensors"]
    for op in description["operators"]:
      if op["op"] == "DEQUANTIZE":
        source = op["inputs"][0]
        arrays[op["outputs"][0]] = arrays.pop(source).astype(np.float32)
    if len(description["inputs"]) != 1:
      raise ValueError("the graph must have one input")
    for i, array in arrays.items():
      if list(array.shape) != tensors[i]["shape"]:
        raise ValueError(f"tensor {i} ({tensors[i]['name']}) has shape {array.shape}, "
                         f"the graph says {tensors[i]['shape']}")
  except (KeyError, IndexError, TypeError) as e:
    raise ValueError(f"graph file {path}: malformed graph description ({e!r})") from e
  except ValueError as e:
    raise ValueError(f"graph file {path}: {e}") from e
  # DEQUANTIZE has been done: drop those operators.
  description = dict(description, operators=[op for op in description["operators"]
                                             if op["op"] != "DEQUANTIZE"])
  # Integer constants (paddings, sizes) stay numpy: they set shapes.
  constants = {i: jnp.asarray(a) if a.dtype.kind == "f" else a for i, a in arrays.items()}
  return Graph(description, constants)
