"""TensorBoard event files without TensorFlow: scalars and images.

An event file is a sequence of TFRecords, each holding one serialised
`tensorflow.Event` protocol buffer. The first event carries
`file_version = "brain.Event:2"`; the others carry a `Summary` with tagged
values (a float `simple_value`, or an encoded `Image`). TensorBoard reads any
file in the log directory whose name contains "tfevents".

TFRecord framing (little-endian):
    uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
with CRC32C (Castagnoli) and mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8.

The protocol buffers are encoded by hand. Field numbers, from TensorFlow's
tensorflow/core/util/event.proto and tensorflow/core/framework/summary.proto:
    Event:          wall_time = 1 (double), step = 2 (int64),
                    file_version = 3 (string), summary = 5 (Summary)
    Summary:        value = 1 (repeated Summary.Value)
    Summary.Value:  tag = 1 (string), simple_value = 2 (float),
                    image = 4 (Summary.Image)
    Summary.Image:  height = 1, width = 2, colorspace = 3 (int32),
                    encoded_image_string = 4 (bytes)
Colorspace: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.

Each record is framed in memory and appended with one write to a file
opened for appending, so a crash can at worst cut the last record short;
it never leaves a broken record between whole ones. A new writer always
creates a new file. On object stores, where nothing can be appended, each
flush uploads the file whole (see `SummaryWriter`).
"""

import itertools
import os
import socket
import struct
import time
from typing import Mapping

import cv2
import numpy as np

from facerecon import fileio

FILE_VERSION = "brain.Event:2"

# Wire types of the protobuf encoding.
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5

# Event fields (event.proto).
_EVENT_WALL_TIME, _EVENT_STEP, _EVENT_FILE_VERSION, _EVENT_SUMMARY = 1, 2, 3, 5
# Summary fields (summary.proto).
_SUMMARY_VALUE = 1
_VALUE_TAG, _VALUE_SIMPLE_VALUE, _VALUE_IMAGE = 1, 2, 4
_IMAGE_HEIGHT, _IMAGE_WIDTH, _IMAGE_COLORSPACE, _IMAGE_ENCODED = 1, 2, 3, 4


# --- CRC32C ----------------------------------------------------------------------------

def _crc32c_table():
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # reflected Castagnoli
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`, as TFRecord uses."""
  table = _CRC32C_TABLE
  crc = 0xFFFFFFFF
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


# --- Protocol buffer encoding -----------------------------------------------------------

def _varint(value: int) -> bytes:
  if value < 0:  # int64 negatives are ten-byte two's complement varints.
    value += 1 << 64
  out = bytearray()
  while True:
    low = value & 0x7F
    value >>= 7
    if value:
      out.append(low | 0x80)
    else:
      out.append(low)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _varint_field(field: int, value: int) -> bytes:
  return _key(field, _VARINT) + _varint(int(value))


def _bytes_field(field: int, value: bytes) -> bytes:
  return _key(field, _LENGTH_DELIMITED) + _varint(len(value)) + value


def _double_field(field: int, value: float) -> bytes:
  return _key(field, _FIXED64) + struct.pack("<d", value)


def _float_field(field: int, value: float) -> bytes:
  return _key(field, _FIXED32) + struct.pack("<f", value)


def encode_event(wall_time: float, step: int, file_version: str | None = None,
                 summary_values: list[bytes] | None = None) -> bytes:
  """A serialised Event with either a file_version or a Summary of the
  given serialised Summary.Value messages."""
  event = _double_field(_EVENT_WALL_TIME, wall_time) + _varint_field(_EVENT_STEP, step)
  if file_version is not None:
    event += _bytes_field(_EVENT_FILE_VERSION, file_version.encode("utf-8"))
  if summary_values is not None:
    summary = b"".join(_bytes_field(_SUMMARY_VALUE, v) for v in summary_values)
    event += _bytes_field(_EVENT_SUMMARY, summary)
  return event


def scalar_value(tag: str, value: float) -> bytes:
  """A serialised Summary.Value holding a simple_value."""
  return (_bytes_field(_VALUE_TAG, tag.encode("utf-8"))
          + _float_field(_VALUE_SIMPLE_VALUE, float(value)))


def image_value(tag: str, image) -> bytes:
  """A serialised Summary.Value holding a PNG of a uint8 image: [H, W] or
  [H, W, C] with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"image '{tag}' must be uint8, got {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4) or 0 in image.shape:
    raise ValueError(f"image '{tag}' must be [H, W] or [H, W, C] with C in 1..4, "
                     f"got shape {image.shape}")
  height, width, channels = image.shape
  if channels == 3:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  elif channels == 4:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
  elif channels == 2:  # PNG has grey + alpha; OpenCV writes it as BGRA.
    bgr = cv2.cvtColor(np.ascontiguousarray(image[..., [0, 0, 0, 1]]), cv2.COLOR_RGBA2BGRA)
  else:
    bgr = image[..., 0]
  ok, png = cv2.imencode(".png", np.ascontiguousarray(bgr))
  if not ok:
    raise ValueError(f"cannot encode image '{tag}' as PNG")
  encoded = (_varint_field(_IMAGE_HEIGHT, height) + _varint_field(_IMAGE_WIDTH, width)
             + _varint_field(_IMAGE_COLORSPACE, channels)
             + _bytes_field(_IMAGE_ENCODED, png.tobytes()))
  return _bytes_field(_VALUE_TAG, tag.encode("utf-8")) + _bytes_field(_VALUE_IMAGE, encoded)


# --- Writer ------------------------------------------------------------------------------

_file_counter = itertools.count()


class NullWriter:
  """A SummaryWriter that writes nothing (for the processes of a multi-host
  run other than process 0)."""

  def scalar(self, *args, **kwargs):
    pass

  scalars = image = scalar

  def flush(self):
    pass

  def close(self):
    pass


class SummaryWriter:
  """Appends scalars and images to a new event file in `logdir`.

  Local directories: records are written as soon as they are added (whole,
  one write each), so TensorBoard sees them while training runs; `flush`
  also makes them durable (fsync).

  Object stores (`gs://...`) have no append: records collect in memory and
  `flush` uploads the whole file again (what TensorFlow's GCS writer does),
  also done by any write `flush_secs` after the last upload. A file past
  `roll_bytes` is finished and a new one started, so an upload never grows
  without bound; TensorBoard reads the files in name order.

  Use as a context manager or call `close`.
  """

  def __init__(self, logdir: str | os.PathLike, filename_suffix: str = "",
               flush_secs: float = 30.0, roll_bytes: int = 16 << 20):
    self.logdir = os.fspath(logdir)
    self._suffix, self._flush_secs, self._roll_bytes = filename_suffix, flush_secs, roll_bytes
    self._remote = fileio.is_url(self.logdir)
    fileio.makedirs(self.logdir)
    self._fd = None
    self._closed = False
    self._start_file()

  def _start_file(self) -> None:
    # TensorFlow's name is events.out.tfevents.<seconds>.<host>; the pid and a
    # counter (zero-padded, so names sort in creation order) keep two files
    # started in the same second apart.
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_file_counter):06d}{self._suffix}")
    self.path = os.path.join(self.logdir, name)
    if self._remote:
      self._contents, self._uploaded, self._last_upload = bytearray(), 0, time.monotonic()
    else:
      self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    self._write(encode_event(time.time(), 0, file_version=FILE_VERSION))

  def _write(self, event: bytes) -> None:
    if self._closed:
      raise ValueError(f"summary writer for {self.path} is closed")
    record = memoryview(frame_record(event))
    if self._remote:
      self._contents += record
      if time.monotonic() - self._last_upload >= self._flush_secs:
        self.flush()
      return
    while record:  # os.write may write less than asked (rarely, for files).
      record = record[os.write(self._fd, record):]

  def scalar(self, tag: str, value, step: int) -> None:
    self._write(encode_event(time.time(), int(step), summary_values=[scalar_value(tag, value)]))

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    """Several scalars in one event (one record)."""
    if values:
      self._write(encode_event(time.time(), int(step),
                               summary_values=[scalar_value(t, v) for t, v in values.items()]))

  def image(self, tag: str, image, step: int) -> None:
    """A uint8 image [H, W] or [H, W, C] (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA)."""
    self._write(encode_event(time.time(), int(step), summary_values=[image_value(tag, image)]))

  def flush(self) -> None:
    if self._closed:
      return
    if not self._remote:
      os.fsync(self._fd)
      return
    if len(self._contents) > self._uploaded:
      fileio.write_bytes_atomic(self.path, bytes(self._contents))
      self._uploaded = len(self._contents)
    self._last_upload = time.monotonic()
    if self._uploaded >= self._roll_bytes:
      self._start_file()

  def close(self) -> None:
    if self._closed:
      return
    self.flush()
    self._closed = True
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      if self._fd is not None:
        os.close(self._fd)
    except Exception:
      pass
