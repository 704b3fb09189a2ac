r"""Downloads the VGG Face images and crops their face boxes.

    python -m data_pipeline.download_vggface --files_dir=vgg_face_dataset/files \
        --output_dir=data/vggface [--size=200] [--margin=0.0] [--workers=32]

Reads `<files_dir>/<Name>.txt`, one image per line:
`id url left top right bottom pose detection_score curation`. Each image is
fetched (bounded worker pool, per-request timeout, retries with exponential
backoff for transient failures: timeouts, connection errors, 5xx, truncated
bodies), checked to decode as an image, and cropped to --size x --size around
its face box by the detector-box rule every path into CoarseNet shares
(`facerecon.data.cropping.square_from_detection`; --margin widens the square by
that fraction of its side on each side). Where the square runs off the
photo its edge pixels repeat, so the face is never stretched.
It is written atomically as `<output_dir>/<Name>/<id>.jpg`. Images already
there are skipped, so a killed run resumes without fetching them again.
Failures go to `<output_dir>/failures.csv` (name, id, url, reason) and a
summary is printed at the end.
"""

import concurrent.futures
import csv
import dataclasses
import http.client
import io
import math
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

from absl import app
from absl import flags
import cv2
import numpy as np
import tqdm

from facerecon import fileio
from facerecon.data import cropping

USER_AGENT = "facerecon-downloader/1.0 (research; VGG Face)"


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  id: str
  url: str
  box: tuple[float, float, float, float]  # left, top, right, bottom (pixels)


@dataclasses.dataclass(frozen=True)
class Options:
  size: int = 200
  margin: float = 0.0
  timeout: float = 10.0
  retries: int = 3
  backoff: float = 1.0
  max_bytes: int = 20_000_000
  max_redirects: int = 5
  jpeg_quality: int = 95


class DownloadError(Exception):
  """A failure with a short reason; `transient` ones are retried."""

  def __init__(self, reason: str, transient: bool = False):
    super().__init__(reason)
    self.reason = reason
    self.transient = transient


def iter_url_files(files_dir: str):
  """The lines of `<files_dir>/*.txt`, file by file in name order, without
  holding them (VGG Face's 2.6M lines took 1.2 GB as a list): a Task per
  good line, (name, id, url, reason) per bad one."""
  if not os.path.isdir(files_dir):
    raise FileNotFoundError(f"--files_dir {files_dir} is not a folder")
  names = sorted(f for f in os.listdir(files_dir) if f.endswith(".txt"))
  if not names:
    raise FileNotFoundError(f"no <Name>.txt files in {files_dir}")
  for file_name in names:
    name = file_name[:-len(".txt")]
    with open(os.path.join(files_dir, file_name), encoding="utf-8", errors="replace") as f:
      for number, line in enumerate(f, 1):
        fields = line.split()
        if not fields:
          continue
        try:
          box = tuple(float(v) for v in fields[2:6])
          if len(fields) < 6 or len(box) != 4:
            raise ValueError
          yield Task(name, fields[0], fields[1], box)
        except ValueError:
          yield (name, fields[0], fields[1] if len(fields) > 1 else "",
                 f"bad line {number} of {file_name}")


def read_url_files(files_dir: str) -> tuple[list[Task], list[tuple[str, str, str, str]]]:
  """All tasks of `<files_dir>/*.txt`, and (name, id, url, reason) of bad lines."""
  tasks, bad = [], []
  for item in iter_url_files(files_dir):
    (tasks if isinstance(item, Task) else bad).append(item)
  return tasks, bad


def output_path(output_dir: str, task: Task) -> str:
  return os.path.join(output_dir, task.name, f"{task.id}.jpg")


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
  def __init__(self, limit: int):
    super().__init__()
    self.max_redirections = limit
    self.max_repeats = limit


def fetch(url: str, options: Options) -> bytes:
  """The body at `url`, or DownloadError."""
  opener = urllib.request.build_opener(_LimitedRedirects(options.max_redirects))
  request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
  try:
    with opener.open(request, timeout=options.timeout) as response:
      length = response.headers.get("Content-Length")
      if length is not None and length.isdigit() and int(length) > options.max_bytes:
        raise DownloadError(f"too large ({length} bytes)")
      body = response.read(options.max_bytes + 1)
      if len(body) > options.max_bytes:
        raise DownloadError(f"too large (over {options.max_bytes} bytes)")
      if length is not None and length.isdigit() and len(body) < int(length):
        raise DownloadError("truncated body", transient=True)
      return body
  except DownloadError:
    raise
  except urllib.error.HTTPError as e:
    if e.code in (301, 302, 303, 307, 308):
      raise DownloadError("redirect loop") from e
    raise DownloadError(f"HTTP {e.code}", transient=e.code >= 500 or e.code == 429) from e
  except http.client.IncompleteRead as e:
    raise DownloadError("truncated body", transient=True) from e
  except (socket.timeout, TimeoutError) as e:
    raise DownloadError("timeout", transient=True) from e
  except urllib.error.URLError as e:
    if isinstance(e.reason, (socket.timeout, TimeoutError)):
      raise DownloadError("timeout", transient=True) from e
    raise DownloadError(f"connection failed ({e.reason})", transient=True) from e
  except (ConnectionError, http.client.HTTPException, OSError) as e:
    raise DownloadError(f"connection failed ({type(e).__name__})", transient=True) from e
  except ValueError as e:  # malformed URL
    raise DownloadError(f"bad url ({e})") from e


def crop_face(body: bytes, box, options: Options) -> bytes:
  """Decodes the image, crops the face box's square (`cropping`), re-encodes."""
  image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
  if image is None:
    raise DownloadError("not an image")
  height, width = image.shape[:2]
  left, top, right, bottom = box
  if not all(math.isfinite(v) for v in box) or right <= left or bottom <= top:
    raise DownloadError("bad box")
  if min(right, width) - max(left, 0) < 2 or min(bottom, height) - max(top, 0) < 2:
    raise DownloadError("bad box (outside the image)")
  # Framed like a detection in --mode=reconstruct, so CoarseNet sees these
  # faces (FineNet's training photos) framed about as in training. (The
  # rule's constants were measured on OpenCV's cascade boxes; VGG Face's
  # boxes come from another detector.)
  square = cropping.square_from_detection((left, top, right - left, bottom - top))
  square = square._replace(side=square.side * (1.0 + 2.0 * options.margin))
  crop = cropping.crop(image, square, options.size)
  ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
  if not ok:
    raise DownloadError("could not encode the crop")
  return encoded.tobytes()


def download_one(task: Task, output_dir: str, options: Options) -> str | None:
  """Fetches, crops and saves one image; returns None or the failure reason."""
  delay = options.backoff
  for attempt in range(options.retries + 1):
    try:
      body = fetch(task.url, options)
      fileio.write_bytes_atomic(output_path(output_dir, task), crop_face(body, task.box, options))
      return None
    except DownloadError as e:
      if not e.transient or attempt == options.retries:
        suffix = f" after {attempt + 1} attempts" if e.transient else ""
        return e.reason + suffix
      time.sleep(delay)
      delay *= 2
  return "unreachable"


IN_FLIGHT_PER_WORKER = 4


def download_all(tasks, output_dir: str, options: Options, workers: int,
                 bad_lines=(), progress: bool = True) -> dict:
  """Downloads every task not already on disk; writes failures.csv; returns a
  summary. `tasks`: any iterable of Task (read as it goes: a generator keeps
  memory flat); `bad_lines` (name, id, url, reason) are listed as failures,
  read once the tasks are done (so a generator may fill it as it goes)."""
  os.makedirs(output_dir, exist_ok=True)
  failures = []
  total = skipped = 0
  lock = threading.Lock()
  bar = None
  if progress:
    bar = tqdm.tqdm(total=len(tasks) if hasattr(tasks, "__len__") else None, unit="img",
                    file=sys.stderr, disable=None)
  # At most IN_FLIGHT_PER_WORKER tasks per worker submitted and not yet
  # done: VGG Face's 2.6M URLs submitted at once held gigabytes of futures.
  limit = IN_FLIGHT_PER_WORKER * workers
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    pending = {}

    def collect(done):
      for future in done:
        task = pending.pop(future)
        reason = future.result()
        if reason is not None:
          with lock:
            failures.append((task.name, task.id, task.url, reason))
        if bar is not None:
          bar.update(1)

    for task in tasks:
      total += 1
      if os.path.exists(output_path(output_dir, task)):
        skipped += 1
        if bar is not None:
          bar.update(1)
        continue
      if len(pending) >= limit:
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        collect(done)
      pending[pool.submit(download_one, task, output_dir, options)] = task
    collect(concurrent.futures.wait(pending).done)
  if bar is not None:
    bar.close()
  downloaded = total - skipped - len(failures)
  bad_lines = list(bad_lines)
  failures += bad_lines
  manifest = os.path.join(output_dir, "failures.csv")
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(["name", "id", "url", "reason"])
  writer.writerows(sorted(failures))
  fileio.write_bytes_atomic(manifest, text.getvalue().encode())
  reasons = {}
  for *_, reason in failures:
    key = reason.split(" after ")[0]
    reasons[key] = reasons.get(key, 0) + 1
  return {"total": total + len(bad_lines), "skipped": skipped,
          "downloaded": downloaded, "failed": len(failures), "reasons": reasons,
          "manifest": manifest}


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so that the
  pipeline modules can be imported together)."""
  flags.DEFINE_string("files_dir", None, "Folder of VGG Face <Name>.txt files.")
  flags.DEFINE_string("output_dir", None, "Where <Name>/<id>.jpg go.")
  flags.DEFINE_integer("size", 200, "Side of the saved square crops (pixels).")
  flags.DEFINE_float("margin", 0.0, "Widen the face's crop square by this fraction of its "
                     "side on each side.")
  flags.DEFINE_integer("workers", 32, "Concurrent downloads.")
  flags.DEFINE_float("timeout", 10.0, "Seconds per request.")
  flags.DEFINE_integer("retries", 3, "Retries of a transient failure.")
  flags.DEFINE_float("backoff", 1.0, "First retry delay (s); doubles each time.")
  flags.DEFINE_integer("max_bytes", 20_000_000, "Largest body accepted.")
  flags.DEFINE_integer("max_redirects", 5, "Redirects followed.")
  flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the crops.")


def main(argv):
  del argv
  if FLAGS.workers < 1 or FLAGS.size < 1 or FLAGS.retries < 0 or FLAGS.margin < 0:
    raise app.UsageError("--workers and --size must be positive, --retries and --margin "
                         "not negative")
  options = Options(size=FLAGS.size, margin=FLAGS.margin, timeout=FLAGS.timeout,
                    retries=FLAGS.retries, backoff=FLAGS.backoff,
                    max_bytes=FLAGS.max_bytes, max_redirects=FLAGS.max_redirects,
                    jpeg_quality=FLAGS.jpeg_quality)
  bad = []  # filled as the files are read

  def tasks():
    for item in iter_url_files(FLAGS.files_dir):
      if isinstance(item, Task):
        yield item
      else:
        bad.append(item)

  summary = download_all(tasks(), FLAGS.output_dir, options, FLAGS.workers, bad)
  reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary["reasons"].items())) or "none"
  print(f"{summary['downloaded']} downloaded, {summary['skipped']} already there, "
        f"{summary['failed']} failed of {summary['total']} ({reasons}); "
        f"failures listed in {summary['manifest']}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["files_dir", "output_dir"])
  app.run(main)
