"""File helpers shared by every writer and reader: atomic writes, paths that
may be object-store URLs, and MATLAB files.

Every file the project writes goes through `atomic_write`, so a killed process
never leaves a partial file under the final name. A workdir may be local or
a URL (`gs://bucket/run`, for TPU pods): the helpers here take both, local
paths through `os`, URLs through etils.epath (gcsfs for `gs://`).
"""

import contextlib
import io
import os
import re
import tempfile
from typing import Iterator, Mapping

import cv2
from etils import epath
import numpy as np

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str | os.PathLike) -> bool:
  """True for `gs://...`-style paths (object stores), False for local ones."""
  return bool(_URL.match(os.fspath(path)))


def _remote(path: str):
  if path.startswith("gs://"):
    try:
      import gcsfs  # noqa: F401  (epath's gs:// backend without TensorFlow)
    except ImportError:
      try:
        import tensorflow  # noqa: F401  (epath's other gs:// backend)
      except ImportError:
        raise ImportError(f"{path}: gs:// paths need gcsfs: pip install '.[gcs]' "
                          "(the [tpu] extra includes it)") from None
  return epath.Path(path)


def absolute(path: str | os.PathLike) -> str:
  """`path` made absolute (local) or unchanged (URL)."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)


def makedirs(path: str | os.PathLike) -> None:
  """Creates directory `path` and its parents (object stores have none to make)."""
  path = os.fspath(path)
  if is_url(path):
    _remote(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def exists(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _remote(path).exists() if is_url(path) else os.path.exists(path)


def read_bytes(path: str | os.PathLike) -> bytes:
  """The contents of `path`; FileNotFoundError names it when it is missing."""
  path = os.fspath(path)
  if is_url(path):
    try:
      return _remote(path).read_bytes()
    except FileNotFoundError:
      raise FileNotFoundError(f"not found: {path}") from None
  with open(path, "rb") as f:
    return f.read()


def _umask() -> int:
  """The process's umask. Linux reports it; elsewhere os.umask must set it
  to read it, and a file another thread (orbax's savers) creates in between
  would get the wrong permissions."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  umask = os.umask(0o077)  # (the safer setting while it is out)
  os.umask(umask)
  return umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
  """Yields a file object whose contents replace `path` only on success."""
  path = os.fspath(path)
  if is_url(path):
    # An object-store upload replaces the object whole or not at all, so
    # buffering and uploading on success is the atomic write there.
    buffer = io.StringIO() if "b" not in mode else io.BytesIO()
    yield buffer
    data = buffer.getvalue()
    _remote(path).write_bytes(data.encode() if isinstance(data, str) else data)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(
      dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  try:
    # mkstemp makes the file 0600; give it the permissions open() would.
    os.chmod(tmp_path, 0o666 & ~_umask())
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp_path)
    raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  with atomic_write(path, "wb") as f:
    f.write(data)


def write_png_atomic(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes an HxW or HxWx3 RGB uint8/uint16 image as PNG."""
  image = np.asarray(image)
  if image.ndim == 3:
    image = image[..., ::-1]  # OpenCV stores BGR.
  ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
  if not ok:
    raise ValueError(f"could not encode {path} as PNG (shape {image.shape}, "
                     f"dtype {image.dtype})")
  write_bytes_atomic(path, encoded.tobytes())


def load_mat(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
  """Reads the numeric variables of a MATLAB file, v4/v5/v7 or v7.3 (HDF5).

  Arrays come back with MATLAB's shapes in both cases (h5py sees MATLAB's
  column-major arrays transposed, so they are transposed back here).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"MATLAB file not found: {path}")
  with open(path, "rb") as f:
    header = f.read(512 + len(_HDF5_SIGNATURE))
  # v7.3 files are HDF5 with a 512-byte MATLAB header block before the
  # superblock; a plain HDF5 file starts with the signature itself.
  if header[512:].startswith(_HDF5_SIGNATURE) or header.startswith(_HDF5_SIGNATURE):
    return _load_mat_hdf5(path)
  # Imported here, as h5py below: they take 0.3 s to import, and only
  # MATLAB files (300W-LP / AFLW2000-3D labels, the BFM) need them.
  import scipy.io

  try:
    raw = scipy.io.loadmat(path)
  except Exception as e:  # scipy raises several types for corrupt files.
    raise ValueError(f"cannot read MATLAB file {path}: {e}") from e
  return {k: v for k, v in raw.items() if not k.startswith("__")}


def _load_mat_hdf5(path: str) -> Mapping[str, np.ndarray]:
  import h5py  # (see load_mat)

  try:
    with h5py.File(path, "r") as f:
      return {name: np.asarray(f[name]).T for name in f.keys()
              if isinstance(f[name], h5py.Dataset) and not name.startswith("#")}
  except OSError as e:
    raise ValueError(f"cannot read MATLAB v7.3 file {path}: {e}") from e


def require_field(fields: Mapping[str, np.ndarray], name: str, path: str,
                  shape: tuple[int | None, ...] | None = None) -> np.ndarray:
  """Returns fields[name], checking it exists and has `shape` (None = any)."""
  if name not in fields:
    raise KeyError(f"{path}: missing field '{name}' "
                   f"(found: {', '.join(sorted(fields)) or 'none'})")
  value = np.asarray(fields[name])
  if shape is not None:
    ok = value.ndim == len(shape) and all(
        want is None or want == got for want, got in zip(shape, value.shape))
    if not ok:
      expected = "x".join("?" if s is None else str(s) for s in shape)
      raise ValueError(f"{path}: field '{name}' has shape "
                       f"{'x'.join(map(str, value.shape))}, expected {expected}")
  return value
