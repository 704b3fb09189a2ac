"""The VGG Face downloader against a real HTTP server on 127.0.0.1.

The server serves good images and every fault the downloader must survive,
and counts requests per path, so "fetched exactly once" can be checked.
"""

import collections
import csv
import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from conftest import ROOT
from data_pipeline import download_vggface as dl
from facerecon.data import cropping

IMAGE_W, IMAGE_H = 120, 90


def _photo(seed: int) -> np.ndarray:
  """A test photo: left half dark, right half bright, plus a seed tint."""
  image = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)
  image[:, IMAGE_W // 2:] = 220
  image[..., 0] = (seed * 37) % 256
  return image


def _jpeg(image) -> bytes:
  return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()


class _Server:
  """A threaded HTTP server with fault paths; counts requests per path."""

  def __init__(self, delay: float = 0.0):
    self.counts = collections.Counter()
    self.lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def _send(self, code, body=b"", content_type="image/jpeg", length=None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

      def do_GET(self):
        with server.lock:
          server.counts[self.path] += 1
          count = server.counts[self.path]
        if delay:
          time.sleep(delay)
        kind = self.path.split("/")[1]
        if kind == "good":
          self._send(200, _jpeg(_photo(int(self.path.split("/")[2].split(".")[0]))))
        elif kind == "missing":
          self._send(404, b"not found", "text/plain")
        elif kind == "flaky":  # 500 twice, then the image
          if count <= 2:
            self._send(500, b"oops", "text/plain")
          else:
            self._send(200, _jpeg(_photo(7)))
        elif kind == "broken":  # always 503
          self._send(503, b"busy", "text/plain")
        elif kind == "slow":
          time.sleep(1.5)
          self._send(200, _jpeg(_photo(8)))
        elif kind == "truncated":
          body = _jpeg(_photo(9))
          self._send(200, body[:len(body) // 2], length=len(body))
        elif kind == "html":
          self._send(200, b"<html><body>Not an image</body></html>", "text/html")
        elif kind == "loop":
          self.send_response(302)
          self.send_header("Location", self.path)
          self.send_header("Content-Length", "0")
          self.end_headers()
        elif kind == "huge":
          big = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
          self._send(200, cv2.imencode(".png", big)[1].tobytes(), "image/png")
        else:
          self._send(400, b"?", "text/plain")

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = _Server()
  yield s
  s.close()


OPTIONS = dl.Options(size=32, timeout=0.5, retries=3, backoff=0.01, max_bytes=200_000)


def _write_files(files_dir, lines_by_name):
  os.makedirs(files_dir, exist_ok=True)
  for name, lines in lines_by_name.items():
    with open(os.path.join(files_dir, f"{name}.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")


def test_good_images_saved_once_and_faults_listed(tmp_path, server):
  u = server.url
  box = "10 20 70 80"  # left top right bottom: straddles the dark/bright edge
  files = tmp_path / "files"
  _write_files(files, {
      "Alice_A": [f"1 {u}/good/1.jpg {box} 1 1 1", f"2 {u}/good/2.jpg -30 -30 200 200 1 1 1",
                  f"3 {u}/missing/3.jpg {box} 1 1 1", f"4 {u}/flaky/4.jpg {box} 1 1 1",
                  f"5 {u}/slow/5.jpg {box} 1 1 1", f"6 {u}/truncated/6.jpg {box} 1 1 1"],
      "Bob_B": [f"1 {u}/html/1.jpg {box} 1 1 1", f"2 {u}/loop/2.jpg {box} 1 1 1",
                f"3 {u}/huge/3.jpg {box} 1 1 1", f"4 {u}/good/4.jpg 300 300 400 400 1 1 1",
                f"5 {u}/good/5.jpg 50 50 40 60 1 1 1", f"6 {u}/broken/6.jpg {box} 1 1 1",
                "7 only-two-fields"],
  })
  out = tmp_path / "out"
  tasks, bad = dl.read_url_files(str(files))
  summary = dl.download_all(tasks, str(out), OPTIONS, workers=4, bad_lines=bad, progress=False)

  saved = sorted(os.path.relpath(os.path.join(d, f), out)
                 for d, _, fs in os.walk(out) for f in fs if f.endswith(".jpg"))
  assert saved == ["Alice_A/1.jpg", "Alice_A/2.jpg", "Alice_A/4.jpg"]
  assert summary["downloaded"] == 3 and summary["failed"] == 10
  # The crop is the box's square by the shared rule (cropping): the photo's
  # dark/bright edge lands where that square puts it, also for a box
  # reaching outside the photo (edge pixels repeat; clamping the box and
  # resizing would stretch the face and move the edge).
  for name, box in (("1", (10, 20, 60, 60)), ("2", (-30, -30, 230, 230))):
    crop = cv2.imread(str(out / "Alice_A" / f"{name}.jpg"))
    assert crop.shape == (32, 32, 3)
    scale, offset = cropping.crop_transform(cropping.square_from_detection(box), 32)
    edge = scale * (IMAGE_W // 2 - 0.5) + offset[0]  # between the photo's two columns
    assert 2 < edge < 30, edge
    dark, bright = crop[:, :int(edge) - 1, 1], crop[:, int(edge) + 2:, 1]
    assert dark.mean() < 40 and bright.mean() > 180, (name, edge)
  # Nothing partial on disk.
  assert not [f for _, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]

  with open(out / "failures.csv") as f:
    rows = {(r["name"], r["id"]): r["reason"] for r in csv.DictReader(f)}
  assert rows[("Alice_A", "3")] == "HTTP 404"
  assert rows[("Alice_A", "5")].startswith("timeout after 4 attempts")
  assert rows[("Alice_A", "6")].startswith("truncated body after 4 attempts")
  assert rows[("Bob_B", "1")] == "not an image"
  assert rows[("Bob_B", "2")] == "redirect loop"
  assert rows[("Bob_B", "3")].startswith("too large")
  assert rows[("Bob_B", "4")].startswith("bad box")
  assert rows[("Bob_B", "5")] == "bad box"
  assert rows[("Bob_B", "6")] == "HTTP 503 after 4 attempts"
  assert rows[("Bob_B", "7")].startswith("bad line")
  # Retried transient failures, not permanent ones.
  assert server.counts["/flaky/4.jpg"] == 3
  assert server.counts["/missing/3.jpg"] == 1
  assert server.counts["/broken/6.jpg"] == 4

  # A second run fetches only what failed, never what is saved.
  before = dict(server.counts)
  summary = dl.download_all(tasks, str(out), OPTIONS, workers=4, bad_lines=bad, progress=False)
  assert summary["skipped"] == 3
  for path in ("/good/1.jpg", "/good/2.jpg", "/flaky/4.jpg"):
    assert server.counts[path] == before[path]


def test_unreachable_server_and_missing_files(tmp_path):
  files = tmp_path / "files"
  _write_files(files, {"C": ["1 http://127.0.0.1:9/x.jpg 0 0 10 10 1 1 1"]})
  tasks, bad = dl.read_url_files(str(files))
  summary = dl.download_all(tasks, str(tmp_path / "out"), OPTIONS, workers=1, bad_lines=bad,
                            progress=False)
  assert summary["failed"] == 1
  assert next(iter(summary["reasons"])).startswith("connection failed")
  with pytest.raises(FileNotFoundError, match="not a folder"):
    dl.read_url_files(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no <Name>.txt"):
    dl.read_url_files(str(tmp_path / "empty"))


@pytest.mark.slow
def test_killed_run_resumes_without_losing_or_refetching(tmp_path):
  server = _Server(delay=0.05)
  try:
    files = tmp_path / "files"
    count = 60
    _write_files(files, {"D": [f"{i} {server.url}/good/{i}.jpg 5 5 100 80 1 1 1"
                               for i in range(count)]})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "data_pipeline.download_vggface", f"--files_dir={files}",
               f"--output_dir={out}", "--workers=2", "--size=32", "--timeout=5"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    saved_dir = out / "D"
    while time.time() < deadline:
      if saved_dir.exists() and len(list(saved_dir.glob("*.jpg"))) >= 10:
        break
      time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved_before = {p.name for p in saved_dir.glob("*.jpg")}
    assert 10 <= len(saved_before) < count
    # Nothing corrupt on disk: every saved file decodes.
    for name in saved_before:
      assert cv2.imread(str(saved_dir / name)) is not None

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{count - len(saved_before)} downloaded, {len(saved_before)} already there" \
        in result.stdout
    saved = sorted(saved_dir.glob("*.jpg"))
    assert len(saved) == count and all(cv2.imread(str(p)) is not None for p in saved)
    # Saved before the kill: fetched exactly once. Only requests in flight at
    # the kill (at most one per worker) can have been fetched twice.
    for name in saved_before:
      assert server.counts[f"/good/{name}"] == 1
    assert sum(c - 1 for c in server.counts.values()) <= 2
  finally:
    server.close()


def test_download_all_keeps_a_bounded_number_of_tasks_in_flight(tmp_path, monkeypatch):
  """However many URLs there are, at most IN_FLIGHT_PER_WORKER tasks per
  worker are submitted and not yet done (VGG Face has 2.6M)."""
  import concurrent.futures

  outstanding, most = [0], [0]
  lock = threading.Lock()

  class CountingPool(concurrent.futures.ThreadPoolExecutor):
    def submit(self, *args, **kwargs):
      with lock:
        outstanding[0] += 1
        most[0] = max(most[0], outstanding[0])
      future = super().submit(*args, **kwargs)
      future.add_done_callback(lambda _: _finished())
      return future

  def _finished():
    with lock:
      outstanding[0] -= 1

  def slow_failure(task, output_dir, options):
    threading.Event().wait(0.001)
    return "refused"

  monkeypatch.setattr(dl.concurrent.futures, "ThreadPoolExecutor", CountingPool)
  monkeypatch.setattr(dl, "download_one", slow_failure)
  tasks = [dl.Task("someone", str(k), f"http://127.0.0.1:9/{k}.jpg", (0, 0, 10, 10))
           for k in range(2000)]
  summary = dl.download_all(tasks, str(tmp_path / "out"), OPTIONS, workers=3, progress=False)
  assert summary["failed"] == 2000 and summary["reasons"] == {"refused": 2000}
  assert 3 <= most[0] <= dl.IN_FLIGHT_PER_WORKER * 3
  # A stream of tasks (the command's: the URL files read as they go) is
  # read only as fast as tasks finish (at most the bound ahead), and its bad
  # lines still count.
  def stream(bad):
    for k, task in enumerate(tasks):
      if k % 500 == 0:
        bad.append(("someone", f"x{k}", "", "bad line"))
      yield task

  bad, most[0] = [], 0
  summary = dl.download_all(stream(bad), str(tmp_path / "out2"), OPTIONS, workers=3,
                            bad_lines=bad, progress=False)
  assert summary["total"] == 2004 and summary["failed"] == 2004
  assert summary["reasons"] == {"refused": 2000, "bad line": 4}
  assert 3 <= most[0] <= dl.IN_FLIGHT_PER_WORKER * 3
