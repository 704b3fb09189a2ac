"""Workdirs on Google Cloud Storage (`gs://`), against a real GCS emulator
(gcp-storage-emulator's HTTP server on 127.0.0.1): the file helpers, the
TensorBoard writer, and a training run that resumes from its checkpoints
there and ends like the same run in a local directory."""

import os
import socket
import tempfile

import numpy as np
import pytest

import events
from facerecon import fileio
from facerecon.training import tensorboard
import tiny

BUCKET = "facerecon-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _send_generation_headers():
  """Real GCS answers a media download with the object's generation in
  x-goog-generation; tensorstore (orbax's array writer) needs it for its
  conditional writes, and the emulator leaves it out. Add it."""
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects

  plain = objects.download
  if getattr(plain, "sends_generation", False):
    return

  def download(request, response, storage, *args, **kwargs):
    plain(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # not found: the plain handler has answered 404
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])

  download.sends_generation = True
  objects.download = download  # objects.get's alt=media path looks it up here
  for _, handlers in server.HANDLERS:
    for method, handler in handlers.items():
      if handler is plain:
        handlers[method] = download


@pytest.fixture(scope="session")
def gcs():
  """The emulator's URL. Session-wide: etils.epath keeps its gcsfs client
  (and so the endpoint) for the life of the process."""
  from gcp_storage_emulator.server import create_server

  _send_generation_headers()
  port = _free_port()
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs (etils.epath's gs:// backend)
    yield url
  server.stop()


def _events(url: str) -> list:
  """The events of an event file in the bucket, read by TensorBoard's loader
  from a local copy."""
  with tempfile.TemporaryDirectory() as local:
    path = os.path.join(local, os.path.basename(url))
    with open(path, "wb") as f:
      f.write(fileio.read_bytes(url))
    return events.events(path)


def _env(url: str) -> dict:
  return dict(os.environ, STORAGE_EMULATOR_HOST=url, JAX_PLATFORMS="cpu",
              TENSORSTORE_GCS_HTTP_URL=url,  # orbax's arrays go through tensorstore
              GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator")


def test_is_url_and_absolute():
  assert fileio.is_url("gs://bucket/run") and fileio.is_url("s3://b/x")
  assert not fileio.is_url("runs/gs:/x") and not fileio.is_url("/tmp/run")
  assert fileio.absolute("gs://bucket/run") == "gs://bucket/run"
  assert fileio.absolute("run") == os.path.join(os.getcwd(), "run")


def test_atomic_write_to_the_object_store(gcs):
  path = f"gs://{BUCKET}/files/a.json"
  assert not fileio.exists(path)
  with pytest.raises(FileNotFoundError, match="a.json"):
    fileio.read_bytes(path)
  with fileio.atomic_write(path, "w") as f:
    f.write('{"step": 1}')
  assert fileio.exists(path) and fileio.read_bytes(path) == b'{"step": 1}'
  # A write that fails part-way leaves the old object.
  with pytest.raises(RuntimeError):
    with fileio.atomic_write(path, "w") as f:
      f.write('{"st')
      raise RuntimeError("killed")
  assert fileio.read_bytes(path) == b'{"step": 1}'
  fileio.write_png_atomic(f"gs://{BUCKET}/files/p.png", np.zeros((4, 5, 3), np.uint8))
  assert fileio.read_bytes(f"gs://{BUCKET}/files/p.png").startswith(b"\x89PNG")


def test_summary_writer_uploads_on_flush_and_rolls_files(gcs):
  from etils import epath

  logdir = f"gs://{BUCKET}/tb"
  writer = tensorboard.SummaryWriter(logdir, flush_secs=float("inf"), roll_bytes=300)
  writer.scalars({"loss": 1.5}, step=1)
  assert not fileio.exists(writer.path)  # nothing uploaded before a flush
  writer.flush()
  first = writer.path
  assert [e.step for e in _events(first)] == [0, 1]
  noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  writer.image("picture", noise, step=2)  # a PNG of noise: the file passes 300 bytes
  writer.flush()
  assert writer.path != first  # rolled: the next records go to a new file
  writer.scalars({"loss": 0.5}, step=3)
  writer.close()
  names = sorted(p.name for p in epath.Path(logdir).iterdir())
  assert names == sorted([os.path.basename(first), os.path.basename(writer.path)])
  assert names[0] == os.path.basename(first)  # name order is write order
  steps = [e.step for name in names for e in _events(f"{logdir}/{name}") if e.summary.value]
  assert steps == [1, 2, 3]
  with pytest.raises(ValueError, match="closed"):
    writer.scalar("loss", 1.0, step=4)


@pytest.mark.slow
def test_main_trains_and_resumes_in_a_gs_workdir(gcs, tmp_path):
  """main.py with --workdir=gs://...: checkpoints (orbax), the best
  checkpoint's record, TensorBoard events and pictures go to the bucket; a
  second run resumes from the bucket's checkpoint and ends with the
  evaluation of one uninterrupted local run; --mode=reconstruct loads the
  trained network from the bucket."""
  import subprocess
  import sys

  from etils import epath
  from test_cropping import astronaut_photo
  from test_train_e2e import _final_metrics

  from conftest import ROOT

  workdir = f"gs://{BUCKET}/run"

  def main(workdir, steps, *more):
    result = subprocess.run(
        [sys.executable, "main.py", f"--workdir={workdir}", *more,
         *tiny.flags(coarse__num_train_steps=steps)],
        cwd=ROOT, env=_env(gcs), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  main(workdir, 4)
  resumed = main(workdir, 8)
  assert "resumed from step 4" in resumed.stderr
  local = main(str(tmp_path / "local"), 8)
  got, expected = _final_metrics(resumed.stdout), _final_metrics(local.stdout)
  assert sorted(got) == sorted(expected)
  for name in expected:
    assert got[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name

  run = epath.Path(workdir)
  assert {p.name for p in (run / "checkpoints").iterdir()} >= {"8"}
  assert fileio.exists(f"{workdir}/best/best.json")
  assert fileio.read_bytes(f"{workdir}/reconstructions.png").startswith(b"\x89PNG")
  written = [e for p in sorted((run / "tensorboard").iterdir())
             for e in _events(os.fspath(p)) if e.summary.value]
  tags = {v.tag for e in written for v in e.summary.value}
  assert "eval/vertex_error" in tags and max(e.step for e in written) == 8

  photo = tmp_path / "astronaut.png"
  fileio.write_png_atomic(photo, astronaut_photo())
  main(workdir, 8, "--mode=reconstruct", f"--input={photo}", f"--output={tmp_path / 'out'}")
  assert (tmp_path / "out" / "astronaut_face0.obj").exists()
