"""Our TensorBoard event-file writer, checked by reading its files back with
TensorBoard's own code only (its record reader, CRC checks, Event protos and
EventAccumulator, through `events`), plus the writer's pure helpers."""

import os
import struct

import cv2
from google.protobuf.internal import decoder
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import events
from facerecon.training import tensorboard as tb

# What `_write_sample` writes, as (step, [tags]) per event after the file_version.
SAMPLE_EVENTS = [(0, ["loss/total"]), (10, ["loss/total"]), (10, ["lr"]),
                 (2**40, ["eval/nme", "throughput/images_per_s"]),
                 (10, ["renders/depth"]), (11, ["renders/grey"])]


def test_crc32c_known_vectors():
  """CRC-32C (Castagnoli), not zlib's CRC-32: TFRecord readers reject the latter."""
  assert tb.crc32c(b"123456789") == 0xE3069283
  assert tb.crc32c(b"") == 0
  # RFC 3720 (iSCSI) B.4: 32 bytes of zeros.
  assert tb.crc32c(bytes(32)) == 0x8A9136AA


def test_varint_encoding():
  """Protobuf varints: known encodings, and protobuf's own decoder reads them
  back (int64 negatives as ten-byte two's complement)."""
  assert tb._varint(0) == b"\x00"
  assert tb._varint(1) == b"\x01"
  assert tb._varint(127) == b"\x7f"
  assert tb._varint(128) == b"\x80\x01"
  assert tb._varint(300) == b"\xac\x02"
  assert tb._varint(2**40) == b"\x80\x80\x80\x80\x80\x20"
  assert tb._varint(-1) == b"\xff" * 9 + b"\x01"
  for value in (0, 1, 127, 128, 300, 2**35 + 7, 2**40, 2**63 - 1, -1, -2**63):
    encoded = tb._varint(value)
    assert decoder._DecodeSignedVarint(encoded, 0) == (value, len(encoded))


def _image(height=20, width=30, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _decode_png(encoded, colorspace):
  """The pixels of an image summary's PNG as [H, W, C], channels in the order
  the writer was given them (C = colorspace: grey, grey + alpha, RGB, RGBA)."""
  assert encoded.startswith(b"\x89PNG\r\n\x1a\n")
  decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
  assert decoded is not None and decoded.dtype == np.uint8
  if colorspace == 1:
    assert decoded.ndim == 2
    return decoded[..., None]
  if colorspace == 2:  # Written as a BGRA PNG with the grey in B, G and R.
    assert decoded.shape[-1] == 4
    np.testing.assert_array_equal(decoded[..., 0], decoded[..., 1])
    np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])
    return decoded[..., [0, 3]]
  if colorspace == 3:
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
  assert colorspace == 4
  return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)


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


def _summary(event):
  """(step, [tags]) of an event with a summary."""
  return event.step, [value.tag for value in event.summary.value]


def _record_starts(data):
  """Offsets of the TFRecords in an event file's bytes (to damage one): each
  is an 8-byte length, its 4-byte CRC, the data and the data's 4-byte CRC."""
  starts, start = [], 0
  while start < len(data):
    starts.append(start)
    start += 12 + struct.unpack("<Q", data[start:start + 8])[0] + 4
  assert start == len(data)
  return starts


def test_write_and_read_back(tmp_path):
  """TensorBoard reads every event: the file_version first, scalars at float32
  precision (2**40 steps intact, `scalars` as one event), PNG images."""
  path, image = _write_sample(tmp_path / "run")
  name = os.path.basename(path)
  assert name.startswith("events.out.tfevents.") and os.path.dirname(path) == str(
      tmp_path / "run")
  written = events.events(path)
  assert written[0].file_version == "brain.Event:2"
  assert not written[0].HasField("summary")
  assert all(e.wall_time > 1e9 for e in written)
  assert [_summary(e) for e in written[1:]] == SAMPLE_EVENTS
  scalars = [(e.step, v.tag, v.simple_value) for e in written[1:] for v in e.summary.value
             if v.WhichOneof("value") == "simple_value"]
  assert scalars == [(0, "loss/total", 1.5), (10, "loss/total", 0.25),
                     (10, "lr", float(np.float32(3e-4))),
                     (2**40, "eval/nme", float(np.float32(0.034))),
                     (2**40, "throughput/images_per_s", 812.5)]
  images = [(e.step, v) for e in written[1:] for v in e.summary.value
            if v.WhichOneof("value") == "image"]
  assert [(step, v.tag) for step, v in images] == [(10, "renders/depth"), (11, "renders/grey")]
  colour, grey = images[0][1].image, images[1][1].image
  assert (colour.height, colour.width, colour.colorspace) == (20, 30, 3)
  np.testing.assert_array_equal(_decode_png(colour.encoded_image_string, 3), image)
  assert (grey.height, grey.width, grey.colorspace) == (20, 30, 1)
  np.testing.assert_array_equal(_decode_png(grey.encoded_image_string, 1)[..., 0],
                                image[..., 0])
  assert events.tags(tmp_path / "run") == {tag for _, tags in SAMPLE_EVENTS for tag in tags}


def test_rgba_and_grey_alpha_images(tmp_path):
  """Images with alpha keep it: RGBA is colorspace 4, grey + alpha 2."""
  rgba, grey_alpha = _image(channels=4, seed=1), _image(channels=2, seed=2)
  with tb.SummaryWriter(tmp_path) as writer:
    writer.image("rgba", rgba, 1)
    writer.image("grey_alpha", grey_alpha, 2)
  decoded = {v.tag: v.image for e in events.events(writer.path)[1:] for v in e.summary.value}
  assert decoded["rgba"].colorspace == 4 and decoded["grey_alpha"].colorspace == 2
  np.testing.assert_array_equal(_decode_png(decoded["rgba"].encoded_image_string, 4), rgba)
  np.testing.assert_array_equal(
      _decode_png(decoded["grey_alpha"].encoded_image_string, 2), grey_alpha)


def test_bad_images_rejected(tmp_path):
  """Non-uint8 images and other channel counts raise and write nothing; a
  closed writer refuses more."""
  with tb.SummaryWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match="uint8"):
      writer.image("float", np.zeros((4, 4, 3), np.float32), 0)
    with pytest.raises(ValueError, match="shape"):
      writer.image("five", np.zeros((4, 4, 5), np.uint8), 0)
  with pytest.raises(ValueError, match="closed"):
    writer.scalar("late", 1.0, 0)
  assert [e.file_version for e in events.events(writer.path)] == ["brain.Event:2"]


def test_two_writers_get_separate_files(tmp_path):
  """Two writers on one directory (even in the same second) never share a file."""
  with tb.SummaryWriter(tmp_path) as a, tb.SummaryWriter(tmp_path) as b:
    a.scalar("x", 1.0, 0)
    b.scalar("x", 2.0, 0)
  assert a.path != b.path
  a_events, b_events = events.events(a.path), events.events(b.path)
  assert len(a_events) == len(b_events) == 2
  assert a_events[1].summary.value[0].simple_value == 1.0
  assert b_events[1].summary.value[0].simple_value == 2.0


@pytest.mark.parametrize("where", ["length", "length_crc", "data", "data_crc"])
def test_flipped_byte_is_detected(tmp_path, where):
  """Our CRCs match TensorBoard's checks: with one byte of the first scalar's
  record flipped, TensorBoard's reader stops before that record, returning
  only the file_version event and neither the damaged record nor any after it."""
  path, _ = _write_sample(tmp_path)
  assert len(events.events(path)) == 1 + len(SAMPLE_EVENTS)
  with open(path, "rb") as f:
    data = bytearray(f.read())
  # The second record (the first scalar) follows the file_version record.
  start = _record_starts(data)[1]
  length = struct.unpack("<Q", data[start:start + 8])[0]
  offset = {"length": start, "length_crc": start + 9, "data": start + 12 + length // 2,
            "data_crc": start + 12 + length + 1}[where]
  data[offset] ^= 0x10
  with open(path, "wb") as f:
    f.write(data)
  assert [e.file_version for e in events.events(path)] == ["brain.Event:2"]


@pytest.mark.parametrize("where", ["length", "length_crc", "data", "data_crc"])
def test_truncated_file_is_detected(tmp_path, where):
  """A file cut short inside its last record (what a crash mid-write can
  leave): TensorBoard reads every whole record before it and not the partial one."""
  path, _ = _write_sample(tmp_path)
  with open(path, "rb") as f:
    data = f.read()
  start = _record_starts(data)[-1]
  cut = {"length": start + 3, "length_crc": start + 10, "data": start + 40,
         "data_crc": len(data) - 3}[where]
  with open(path, "r+b") as f:
    f.truncate(cut)
  written = events.events(path)
  assert written[0].file_version == "brain.Event:2"
  assert [_summary(e) for e in written[1:]] == SAMPLE_EVENTS[:-1]


def test_tensorboard_loads_the_file(tmp_path):
  """TensorBoard's EventAccumulator (what its dashboards use) finds every tag,
  the scalars, the 2**40 step and the image."""
  _, image = _write_sample(tmp_path)
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
  np.testing.assert_array_equal(_decode_png(depth.encoded_image_string, 3), image)
