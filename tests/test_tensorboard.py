"""TensorBoard event files written without TensorFlow: framing, CRCs, protos."""

import os
import struct

import numpy as np
import pytest

from facerecon import tensorboard as tb


def test_crc32c_known_vectors():
  assert tb.crc32c(b"123456789") == 0xE3069283
  assert tb.crc32c(b"") == 0
  # RFC 3720 (iSCSI) B.4: 32 bytes of zeros.
  assert tb.crc32c(bytes(32)) == 0x8A9136AA


def test_varint_encoding():
  assert tb._varint(0) == b"\x00"
  assert tb._varint(1) == b"\x01"
  assert tb._varint(300) == b"\xac\x02"
  assert tb._varint(-1) == b"\xff" * 9 + b"\x01"
  for value in (0, 1, 127, 128, 300, 2**35 + 7, 2**63 - 1):
    assert tb._read_varint(tb._varint(value), 0) == (value, len(tb._varint(value)))


def _image(height=20, width=30, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _write_sample(logdir):
  image = _image()
  with tb.SummaryWriter(logdir) as writer:
    writer.scalar("loss/total", 1.5, step=0)
    writer.scalar("loss/total", 0.25, step=10)
    writer.scalar("lr", np.float32(3e-4), step=10)
    writer.scalars({"eval/nme": 0.034, "throughput/images_per_s": 812.5}, step=2**40)
    writer.image("renders/depth", image, step=10)
    writer.image("renders/grey", image[..., 0], step=11)
    path = writer.path
  return path, image


def test_write_and_read_back(tmp_path):
  path, image = _write_sample(tmp_path / "run")
  name = os.path.basename(path)
  assert name.startswith("events.out.tfevents.") and os.path.dirname(path) == str(
      tmp_path / "run")
  events = tb.read_events(path)
  assert events[0].file_version == "brain.Event:2" and events[0].values is None
  assert all(e.wall_time > 1e9 for e in events)
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.values
             if v.simple_value is not None]
  assert scalars == [(0, "loss/total", 1.5), (10, "loss/total", 0.25),
                     (10, "lr", float(np.float32(3e-4))),
                     (2**40, "eval/nme", float(np.float32(0.034))),
                     (2**40, "throughput/images_per_s", 812.5)]
  images = [(e.step, v) for e in events for v in (e.values or ()) if v.image is not None]
  assert [(step, v.tag) for step, v in images] == [(10, "renders/depth"), (11, "renders/grey")]
  colour, grey = images[0][1].image, images[1][1].image
  assert (colour.height, colour.width, colour.colorspace) == (20, 30, 3)
  assert colour.encoded.startswith(b"\x89PNG")
  np.testing.assert_array_equal(colour.decode(), image)
  assert grey.colorspace == 1
  np.testing.assert_array_equal(grey.decode()[..., 0], image[..., 0])


def test_rgba_and_grey_alpha_images(tmp_path):
  rgba, grey_alpha = _image(channels=4, seed=1), _image(channels=2, seed=2)
  with tb.SummaryWriter(tmp_path) as writer:
    writer.image("rgba", rgba, 1)
    writer.image("grey_alpha", grey_alpha, 2)
  events = tb.read_events(writer.path)
  decoded = {v.tag: v.image for e in events[1:] for v in e.values}
  assert decoded["rgba"].colorspace == 4 and decoded["grey_alpha"].colorspace == 2
  np.testing.assert_array_equal(decoded["rgba"].decode(), rgba)
  np.testing.assert_array_equal(decoded["grey_alpha"].decode(), grey_alpha)


def test_bad_images_rejected(tmp_path):
  with tb.SummaryWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match="uint8"):
      writer.image("float", np.zeros((4, 4, 3), np.float32), 0)
    with pytest.raises(ValueError, match="shape"):
      writer.image("five", np.zeros((4, 4, 5), np.uint8), 0)
  with pytest.raises(ValueError, match="closed"):
    writer.scalar("late", 1.0, 0)


def test_two_writers_get_separate_files(tmp_path):
  with tb.SummaryWriter(tmp_path) as a, tb.SummaryWriter(tmp_path) as b:
    a.scalar("x", 1.0, 0)
    b.scalar("x", 2.0, 0)
  assert a.path != b.path
  assert len(tb.read_events(a.path)) == len(tb.read_events(b.path)) == 2


@pytest.mark.parametrize("where", ["length", "length_crc", "data", "data_crc"])
def test_flipped_byte_is_detected(tmp_path, where):
  path, _ = _write_sample(tmp_path)
  with open(path, "rb") as f:
    data = bytearray(f.read())
  # The second record (the first scalar) starts after the file_version record.
  first_length = struct.unpack("<Q", data[:8])[0]
  start = 12 + first_length + 4
  length = struct.unpack("<Q", data[start:start + 8])[0]
  offset = {"length": start, "length_crc": start + 9, "data": start + 12 + length // 2,
            "data_crc": start + 12 + length + 1}[where]
  data[offset] ^= 0x10
  with open(path, "wb") as f:
    f.write(data)
  with pytest.raises(tb.CorruptRecordError, match=os.path.basename(path)) as error:
    tb.read_events(path)
  assert "CRC" in str(error.value) or "truncated" in str(error.value)


def test_truncated_file_is_detected(tmp_path):
  path, _ = _write_sample(tmp_path)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 3)
  with pytest.raises(tb.CorruptRecordError, match="truncated"):
    tb.read_events(path)


def test_tensorboard_loads_the_file(tmp_path):
  """TensorBoard's own reader, when the tensorboard package is installed."""
  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  path, image = _write_sample(tmp_path)
  accumulator = event_accumulator.EventAccumulator(
      str(tmp_path), size_guidance={event_accumulator.IMAGES: 0,
                                    event_accumulator.SCALARS: 0})
  accumulator.Reload()
  tags = accumulator.Tags()
  assert set(tags["scalars"]) == {"loss/total", "lr", "eval/nme", "throughput/images_per_s"}
  assert set(tags["images"]) == {"renders/depth", "renders/grey"}
  loss = accumulator.Scalars("loss/total")
  assert [(s.step, s.value) for s in loss] == [(0, 1.5), (10, 0.25)]
  assert accumulator.Scalars("eval/nme")[0].step == 2**40
  (depth,) = accumulator.Images("renders/depth")
  assert (depth.step, depth.height, depth.width) == (10, 20, 30)
  decoded = tb.Image(depth.height, depth.width, 3, depth.encoded_image_string).decode()
  np.testing.assert_array_equal(decoded, image)
