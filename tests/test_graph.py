"""TFLite graphs converted (data_pipeline.prepare_detector) and run in JAX
(facerecon.models.graph): a small graph written as a real .tflite
flatbuffer, with every operator the face detector uses, against a NumPy
reference; errors for files the runner cannot run."""

import flatbuffers
import jax
import numpy as np
import pytest
import tflite

from data_pipeline import prepare_detector
from facerecon.models import graph

_FLOAT32, _FLOAT16, _INT32 = 0, 1, 2
_OPCODES = {name: code for code, name in tflite.BUILTIN_OPCODE2NAME.items()}


class _TFLiteWriter:
  """Writes a one-subgraph .tflite file with the flatbuffer schema's builders."""

  def __init__(self):
    self.tensors, self.buffers, self.operators, self.codes = [], [b""], [], []

  def tensor(self, shape, dtype=_FLOAT32, data=None, name=None) -> int:
    buffer = 0
    if data is not None:
      self.buffers.append(np.ascontiguousarray(data).tobytes())
      buffer = len(self.buffers) - 1
    self.tensors.append((list(shape), dtype, buffer, name or f"t{len(self.tensors)}"))
    return len(self.tensors) - 1

  def constant(self, array) -> int:
    array = np.asarray(array)
    dtype = {np.float32: _FLOAT32, np.float16: _FLOAT16, np.int32: _INT32}[array.dtype.type]
    return self.tensor(array.shape, dtype, array)

  def op(self, name, inputs, outputs, options=None):
    if name not in self.codes:
      self.codes.append(name)
    self.operators.append((self.codes.index(name), inputs, outputs, options))

  def write(self, path, inputs, outputs):
    b = flatbuffers.Builder(1024)

    def int_vector(start, values):
      start(b, len(values))
      for v in reversed(values):
        b.PrependInt32(v)
      return b.EndVector()

    def table_vector(start, offsets):
      start(b, len(offsets))
      for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
      return b.EndVector()

    buffers = []
    for data in self.buffers:
      vector = b.CreateByteVector(data) if data else None
      tflite.BufferStart(b)
      if vector is not None:
        tflite.BufferAddData(b, vector)
      buffers.append(tflite.BufferEnd(b))
    tensors = []
    for shape, dtype, buffer, name in self.tensors:
      name_offset = b.CreateString(name)
      shape_offset = int_vector(tflite.TensorStartShapeVector, shape)
      tflite.TensorStart(b)
      tflite.TensorAddShape(b, shape_offset)
      tflite.TensorAddType(b, dtype)
      tflite.TensorAddBuffer(b, buffer)
      tflite.TensorAddName(b, name_offset)
      tensors.append(tflite.TensorEnd(b))
    operators = []
    for code, op_inputs, op_outputs, options in self.operators:
      options_type, options_offset = options(b) if options else (0, None)
      in_offset = int_vector(tflite.OperatorStartInputsVector, op_inputs)
      out_offset = int_vector(tflite.OperatorStartOutputsVector, op_outputs)
      tflite.OperatorStart(b)
      tflite.OperatorAddOpcodeIndex(b, code)
      tflite.OperatorAddInputs(b, in_offset)
      tflite.OperatorAddOutputs(b, out_offset)
      if options_offset is not None:
        tflite.OperatorAddBuiltinOptionsType(b, options_type)
        tflite.OperatorAddBuiltinOptions(b, options_offset)
      operators.append(tflite.OperatorEnd(b))
    codes = []
    for name in self.codes:
      tflite.OperatorCodeStart(b)
      tflite.OperatorCodeAddDeprecatedBuiltinCode(b, _OPCODES[name])
      tflite.OperatorCodeAddBuiltinCode(b, _OPCODES[name])
      tflite.OperatorCodeAddVersion(b, 1)
      codes.append(tflite.OperatorCodeEnd(b))
    tensor_vector = table_vector(tflite.SubGraphStartTensorsVector, tensors)
    operator_vector = table_vector(tflite.SubGraphStartOperatorsVector, operators)
    input_vector = int_vector(tflite.SubGraphStartInputsVector, inputs)
    output_vector = int_vector(tflite.SubGraphStartOutputsVector, outputs)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vector)
    tflite.SubGraphAddInputs(b, input_vector)
    tflite.SubGraphAddOutputs(b, output_vector)
    tflite.SubGraphAddOperators(b, operator_vector)
    subgraph = tflite.SubGraphEnd(b)
    code_vector = table_vector(tflite.ModelStartOperatorCodesVector, codes)
    subgraph_vector = table_vector(tflite.ModelStartSubgraphsVector, [subgraph])
    buffer_vector = table_vector(tflite.ModelStartBuffersVector, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, code_vector)
    tflite.ModelAddSubgraphs(b, subgraph_vector)
    tflite.ModelAddBuffers(b, buffer_vector)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    with open(path, "wb") as f:
      f.write(b.Output())


def _conv_options(stride, padding, activation=0, depth_multiplier=None):
  kind = "Conv2DOptions" if depth_multiplier is None else "DepthwiseConv2DOptions"

  def build(b):
    getattr(tflite, kind + "Start")(b)
    getattr(tflite, kind + "AddPadding")(b, 0 if padding == "SAME" else 1)
    getattr(tflite, kind + "AddStrideW")(b, stride)
    getattr(tflite, kind + "AddStrideH")(b, stride)
    getattr(tflite, kind + "AddFusedActivationFunction")(b, activation)
    getattr(tflite, kind + "AddDilationWFactor")(b, 1)
    getattr(tflite, kind + "AddDilationHFactor")(b, 1)
    if depth_multiplier is not None:
      tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, depth_multiplier)
    return getattr(tflite.BuiltinOptions, kind), getattr(tflite, kind + "End")(b)
  return build


def _pool_options(b):
  tflite.Pool2DOptionsStart(b)
  tflite.Pool2DOptionsAddPadding(b, 0)
  tflite.Pool2DOptionsAddStrideW(b, 2)
  tflite.Pool2DOptionsAddStrideH(b, 2)
  tflite.Pool2DOptionsAddFilterWidth(b, 2)
  tflite.Pool2DOptionsAddFilterHeight(b, 2)
  return tflite.BuiltinOptions.Pool2DOptions, tflite.Pool2DOptionsEnd(b)


def _add_options(b):
  tflite.AddOptionsStart(b)
  tflite.AddOptionsAddFusedActivationFunction(b, 1)
  return tflite.BuiltinOptions.AddOptions, tflite.AddOptionsEnd(b)


def _concat_options(b):
  tflite.ConcatenationOptionsStart(b)
  tflite.ConcatenationOptionsAddAxis(b, 1)
  return tflite.BuiltinOptions.ConcatenationOptions, tflite.ConcatenationOptionsEnd(b)


# --- A NumPy reference, written independently of the JAX runner. ---

def _same_pad(x, kernel, stride):
  pads = []
  for size in x.shape[1:3]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    pads.append((total // 2, total - total // 2))
  return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def _np_conv(x, w, bias, stride, padding, depthwise=False):
  k = w.shape[1]
  x = _same_pad(x, k, stride) if padding == "SAME" else x
  out_h, out_w = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
  out = np.zeros((1, out_h, out_w, w.shape[-1] if depthwise else w.shape[0]))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[0, i * stride:i * stride + k, j * stride:j * stride + k]
      if depthwise:
        out[0, i, j] = (patch * w[0]).sum(axis=(0, 1))
      else:
        out[0, i, j] = np.einsum("hwi,ohwi->o", patch, w)
  return out + bias


def _np_resize(x, size):  # TF's legacy bilinear: source = out * in / out_size
  out = np.zeros((1, size[0], size[1], x.shape[3]))
  for i in range(size[0]):
    for j in range(size[1]):
      sy, sx = i * x.shape[1] / size[0], j * x.shape[2] / size[1]
      y0, x0 = int(sy), int(sx)
      y1, x1 = min(y0 + 1, x.shape[1] - 1), min(x0 + 1, x.shape[2] - 1)
      fy, fx = sy - y0, sx - x0
      out[0, i, j] = ((1 - fy) * ((1 - fx) * x[0, y0, x0] + fx * x[0, y0, x1])
                      + fy * ((1 - fx) * x[0, y1, x0] + fx * x[0, y1, x1]))
  return out


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
  """A .tflite file with each operator BlazeFace uses (the pattern that
  XLA's grouped convolution got wrong included: a channel PAD and a
  depthwise then pointwise convolution added, then max-pooled), its weights
  and the NumPy reference's output on an input."""
  rng = np.random.default_rng(0)
  w = _TFLiteWriter()
  conv_w16 = rng.normal(size=(4, 3, 3, 3)).astype(np.float16)
  conv_b = rng.normal(size=4).astype(np.float32)
  dw_w = rng.normal(size=(1, 3, 3, 4)).astype(np.float32)
  dw_b = rng.normal(size=4).astype(np.float32)
  pw_w = rng.normal(size=(6, 1, 1, 4)).astype(np.float32)
  pw_b = rng.normal(size=6).astype(np.float32)

  x = w.tensor([1, 9, 9, 3], name="input")
  half = w.constant(conv_w16)
  conv_w = w.tensor([4, 3, 3, 3])
  w.op("DEQUANTIZE", [half], [conv_w])
  t2 = w.tensor([1, 5, 5, 4])
  w.op("CONV_2D", [x, conv_w, w.constant(conv_b)], [t2], _conv_options(2, "SAME", 1))
  t3 = w.tensor([1, 5, 5, 4])
  w.op("DEPTHWISE_CONV_2D", [t2, w.constant(dw_w), w.constant(dw_b)], [t3],
       _conv_options(1, "SAME", 0, depth_multiplier=1))
  t4 = w.tensor([1, 5, 5, 6])
  w.op("PAD", [t2, w.constant(np.array([[0, 0], [0, 0], [0, 0], [0, 2]], np.int32))], [t4])
  t5 = w.tensor([1, 5, 5, 6])
  w.op("CONV_2D", [t3, w.constant(pw_w), w.constant(pw_b)], [t5], _conv_options(1, "VALID"))
  t6 = w.tensor([1, 5, 5, 6])
  w.op("ADD", [t4, t5], [t6], _add_options)
  t7 = w.tensor([1, 3, 3, 6])
  w.op("MAX_POOL_2D", [t6], [t7], _pool_options)
  t8 = w.tensor([1, 6, 6, 6])
  w.op("RESIZE_BILINEAR", [t7, w.constant(np.array([6, 6], np.int32))], [t8])
  t9 = w.tensor([1, 6, 6, 6])
  w.op("RELU", [t8], [t9])
  t10 = w.tensor([1, 36, 6], name="upsampled")
  w.op("RESHAPE", [t9, w.constant(np.array([1, 36, 6], np.int32))], [t10])
  t11 = w.tensor([1, 9, 6])
  w.op("RESHAPE", [t7, w.constant(np.array([1, 9, 6], np.int32))], [t11])
  t12 = w.tensor([1, 45, 6], name="joined")
  w.op("CONCATENATION", [t10, t11], [t12], _concat_options)
  path = tmp_path_factory.mktemp("graph") / "small.tflite"
  w.write(str(path), [x], [t12, t10])

  image = rng.normal(size=(2, 9, 9, 3)).astype(np.float32)
  expected = []
  for one in image:
    one = one[None].astype(np.float64)
    a2 = np.maximum(_np_conv(one, conv_w16.astype(np.float64), conv_b, 2, "SAME"), 0)
    a3 = _np_conv(a2, dw_w, dw_b, 1, "SAME", depthwise=True)
    a6 = np.maximum(np.pad(a2, ((0, 0),) * 3 + ((0, 2),)) + _np_conv(a3, pw_w, pw_b, 1, "VALID"),
                    0)
    # 2x2 max pool, stride 2, SAME: the last row and column pool alone.
    a7 = np.stack([[a6[0, i:i + 2, j:j + 2].max(axis=(0, 1)) for j in range(0, 5, 2)]
                   for i in range(0, 5, 2)])[None]
    a10 = np.maximum(_np_resize(a7, (6, 6)), 0).reshape(1, 36, 6)
    expected.append(np.concatenate([a10, a7.reshape(1, 9, 6)], axis=1)[0])
  return path, image, np.stack(expected)


def test_a_converted_graph_runs_as_the_reference_does(small_graph, tmp_path):
  path, image, expected = small_graph
  description, arrays = prepare_detector.convert(str(path))
  assert [op["op"] for op in description["operators"]][:2] == ["DEQUANTIZE", "CONV_2D"]
  out = tmp_path / "small.npz"
  graph.save(str(out), description, arrays)
  loaded = graph.load(str(out))
  assert loaded.input_shape == (1, 9, 9, 3)
  assert loaded.output_shapes == [(1, 45, 6), (1, 36, 6)]
  assert loaded.output_index("joined") == 0 and loaded.output_index("upsampled") == 1
  with pytest.raises(KeyError, match="no output 'scores'"):
    loaded.output_index("scores")
  # A batch of two, eager and jitted: the same as the reference, face by face.
  for run in (loaded, jax.jit(loaded)):
    joined, upsampled = (np.asarray(o) for o in run(image))
    np.testing.assert_allclose(joined, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(upsampled, expected[:, :36], rtol=1e-4, atol=1e-4)


def test_the_converter_command_writes_a_file_the_runner_reads(small_graph, tmp_path):
  import subprocess
  import sys

  from conftest import ROOT

  path, image, expected = small_graph
  out = tmp_path / "cmd.npz"
  result = subprocess.run([sys.executable, "-m", "data_pipeline.prepare_detector",
                           f"--tflite={path}", f"--output={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "12 operators" in result.stdout
  np.testing.assert_allclose(np.asarray(graph.load(str(out))(image)[0]), expected,
                             rtol=1e-4, atol=1e-4)


def test_bad_files_are_refused_with_their_name(small_graph, tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    graph.load(str(tmp_path / "missing.npz"))
  corrupt = tmp_path / "corrupt.npz"
  corrupt.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="corrupt.npz.*corrupt"):
    graph.load(str(corrupt))
  not_tflite = tmp_path / "x.tflite"
  not_tflite.write_bytes(b"\0" * 64)
  with pytest.raises(ValueError, match="x.tflite"):
    prepare_detector.convert(str(not_tflite))
  # A graph with an operator the runner does not have.
  description, arrays = prepare_detector.convert(str(small_graph[0]))
  description["operators"][1]["op"] = "TANH"
  odd = tmp_path / "odd.npz"
  graph.save(str(odd), description, arrays)
  with pytest.raises(ValueError, match="odd.npz: operator TANH is not supported"):
    graph.load(str(odd))
  # A weight whose shape is not the graph's.
  description, arrays = prepare_detector.convert(str(small_graph[0]))
  key = next(k for k, a in arrays.items() if a.ndim == 4 and len(a) > 1)
  arrays[key] = arrays[key][:1]
  bad = tmp_path / "bad.npz"
  graph.save(str(bad), description, arrays)
  with pytest.raises(ValueError, match="bad.npz: tensor .* has shape"):
    graph.load(str(bad))
