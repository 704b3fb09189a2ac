r"""The VGG Face downloader's memory at VGG Face's scale.

    python benchmarks/download.py [--identities=2622] [--per_identity=1000] \
        [--downloads=20000] [--workers=32]

Writes a synthetic URL list of VGG Face's size (2,622 identities x 1,000
lines: 2.6M URLs, in VGG Face's line format) pointing at a loopback HTTP
server (127.0.0.1, in a child process so its memory is not counted) that
serves a small JPEG for every URL. Then, in this process, printing the
resident memory (VmRSS, and the peak VmHWM) after each step:
- streams the whole list as the downloader's command does
  (`download_vggface.iter_url_files`);
- runs `download_vggface.download_all` on the stream's first --downloads/4
  and then --downloads images (all 2.6M would take hours at loopback speed;
  tasks are read as they are submitted, at most IN_FLIGHT_PER_WORKER per
  worker ahead, so the memory does not grow with the images done);
- for comparison, reads the whole list into memory (`read_url_files`).
"""

import http.server
import itertools
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import cv2
import numpy as np

from data_pipeline import download_vggface

_IDENTITIES = flags.DEFINE_integer("identities", 2622, "Identities (URL files).")
_PER_IDENTITY = flags.DEFINE_integer("per_identity", 1000, "URLs per identity.")
_DOWNLOADS = flags.DEFINE_integer("downloads", 20000, "Images downloaded (the list's first).")
_WORKERS = flags.DEFINE_integer("workers", 32, "Concurrent downloads.")


def memory_mib() -> tuple[float, float]:
  """(VmRSS, VmHWM) of this process, MiB."""
  fields = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      fields[key] = value
  return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))


def serve(port_queue) -> None:
  """A loopback server: every GET gets the same small JPEG."""
  image = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
  body = cv2.imencode(".jpg", image)[1].tobytes()

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
      pass

    def do_GET(self):
      self.send_response(200)
      self.send_header("Content-Type", "image/jpeg")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  httpd.daemon_threads = True
  port_queue.put(httpd.server_address[1])
  httpd.serve_forever()


def write_url_files(folder: str, url: str) -> int:
  """VGG Face style files: `id url left top right bottom pose score curation`."""
  count = 0
  for identity in range(_IDENTITIES.value):
    name = f"Person_{identity:04d}"
    lines = [f"{k + 1:08d} {url}/{name}/{k + 1:08d}.jpg 20.0 20.0 100.0 100.0 1.0 3.5 1\n"
             for k in range(_PER_IDENTITY.value)]
    with open(os.path.join(folder, name + ".txt"), "w") as f:
      f.writelines(lines)
    count += len(lines)
  return count


def main(argv):
  del argv
  ports = multiprocessing.Queue()
  server = multiprocessing.Process(target=serve, args=(ports,), daemon=True)
  server.start()
  url = f"http://127.0.0.1:{ports.get(timeout=30)}"
  options = download_vggface.Options(timeout=10.0, retries=1)
  try:
    with tempfile.TemporaryDirectory() as scratch:
      files = os.path.join(scratch, "files")
      os.makedirs(files)
      print(f"start: RSS {memory_mib()[0]:.0f} MiB")
      write_url_files(files, url)
      # As the downloader's command reads them: streamed, file by file.
      start = time.perf_counter()
      lines = sum(1 for _ in download_vggface.iter_url_files(files))
      rss, peak = memory_mib()
      print(f"streamed {lines:,} lines in {time.perf_counter() - start:.1f} s: RSS {rss:.0f} "
            f"MiB (peak {peak:.0f})")
      # A quarter, then all --downloads: the memory stays put.
      for downloads in (_DOWNLOADS.value // 4, _DOWNLOADS.value):
        start = time.perf_counter()
        stream = itertools.islice(download_vggface.iter_url_files(files), downloads)
        summary = download_vggface.download_all(
            stream, os.path.join(scratch, f"out{downloads}"), options, _WORKERS.value,
            progress=False)
        seconds = time.perf_counter() - start
        rss, peak = memory_mib()
        print(f"{summary['downloaded']:,} downloaded, {summary['failed']} failed in "
              f"{seconds:.1f} s ({summary['downloaded'] / seconds:.0f} images/s): RSS "
              f"{rss:.0f} MiB (peak {peak:.0f})")
      # For comparison: the whole list held (`read_url_files`).
      start = time.perf_counter()
      tasks, bad = download_vggface.read_url_files(files)
      rss, peak = memory_mib()
      print(f"read {len(tasks) + len(bad):,} lines into a list in "
            f"{time.perf_counter() - start:.1f} s: RSS {rss:.0f} MiB (peak {peak:.0f})")
  finally:
    server.terminate()


if __name__ == "__main__":
  app.run(main)
