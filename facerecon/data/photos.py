"""Photo files: which files are photos, and how one is read.

Decoding is OpenCV's (no TensorFlow); photos come back RGB uint8 whatever
the file holds (grey, RGBA, 16-bit), with EXIF rotation applied.
"""

import os

import cv2
import numpy as np

from facerecon import fileio

# What counts as a photo, everywhere (folders of photos, labelled folders,
# backgrounds, reconstruction inputs).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def is_video(name: str) -> bool:
  """Whether a file name has one of the VIDEO_SUFFIXES (any case)."""
  return name.lower().endswith(VIDEO_SUFFIXES)


def is_photo(name: str) -> bool:
  """Whether a file name has one of the IMAGE_SUFFIXES (any case)."""
  return name.lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes, channels: int = 3) -> np.ndarray:
  """Encoded bytes -> RGB (channels=3) or RGBA (4, opaque) uint8 [H, W, C]."""
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if image is None:
    raise ValueError("undecodable image")
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGR2RGBA)


def read_photo(path: str) -> np.ndarray:
  """A photo file -> RGB uint8 [H, W, 3]. Errors name the file: a missing one
  FileNotFoundError, an unreadable or undecodable one ValueError. `path` may
  be a URL (gs://, `facerecon.fileio`)."""
  try:
    data = fileio.read_bytes(path)
  except FileNotFoundError:
    raise
  except OSError as e:
    raise ValueError(f"{path}: cannot read the file ({e.strerror or e})") from e
  try:
    return decode_image(data)
  except ValueError as e:
    raise ValueError(f"{path}: cannot decode the image") from e


def find_photos(path: str, videos: bool = False) -> list[str]:
  """The photo files of `path` (and video files, if `videos`): the file
  itself, or every such file below the folder (sorted). FileNotFoundError
  when there is none."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} does not exist")
  suffixes = IMAGE_SUFFIXES + (VIDEO_SUFFIXES if videos else ())
  found = []
  for directory, _, names in os.walk(path):
    found += [os.path.join(directory, n) for n in names if n.lower().endswith(suffixes)]
  if not found:
    raise FileNotFoundError(f"{path} holds no image{' or video' if videos else ''} files "
                            f"({', '.join(suffixes)})")
  return sorted(found)
