"""CoarseNet's training end to end on a tiny config: the run directory
(config, checkpoints, events, pictures), evaluation against the mean-face
baseline, exact resume, main.py killed and resumed, two processes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT
import events
from facerecon import checkpoints
from facerecon import networks
from facerecon import rundir
from facerecon.training import coarse
import tiny


@pytest.mark.slow
def test_train_and_evaluate_writes_outputs_and_resumes_exactly(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = coarse.train_and_evaluate(tiny.config(), workdir)
  for name in ("param_error", "vertex_error", "depth_error", "landmark_nme"):
    assert name in metrics and f"baseline_{name}" in metrics
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  assert {"train/loss", "train/learning_rate", "train/images_per_second",
          "eval/vertex_error", "eval/reconstructions"} <= events.tags(
              os.path.join(workdir, "tensorboard"))
  assert os.path.getsize(os.path.join(workdir, "reconstructions.png")) > 0
  best = checkpoints.BestCheckpoint(os.path.join(workdir, "best"))
  assert best.record["step"] == 4 and best.record["value"] == metrics["vertex_error"]
  best.close()
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  assert record["config"]["coarse"]["num_train_steps"] == 4
  assert record["model"]["source"] == "embedded:25" and len(record["model"]["fingerprint"]) == 64

  # Continue to 6 steps: the same as 6 steps in one go.
  longer = tiny.config(coarse__num_train_steps=6, coarse__eval_every=6)
  resumed = coarse.train_and_evaluate(longer, workdir)
  straight = coarse.train_and_evaluate(longer, str(tmp_path / "straight"))
  assert resumed == straight


@pytest.mark.slow
def test_bfloat16_training_runs(tmp_path):
  """config.dtype=bfloat16 (the accelerator setting; emulated on the CPU):
  float32 parameters, finite losses and metrics."""
  config = tiny.config(coarse__num_train_steps=2, coarse__eval_every=2, dtype="bfloat16")
  run = rundir.RunDir(str(tmp_path / "bf16"))
  metrics = coarse.train_and_evaluate(config, run.path)
  assert all(np.isfinite(v) for v in metrics.values())
  trained = networks.load_trained(config, run)
  assert {leaf.dtype for leaf in jax.tree.leaves(trained.coarse_variables["params"])} == {
      np.dtype("float32")}


@pytest.mark.slow
def test_training_stops_after_too_many_non_finite_steps(tmp_path):
  """A learning rate so large that the first update makes the network's
  output overflow: every later step's loss is non-finite and skipped, and
  after max_bad_steps in a row the run stops, naming the setting."""
  config = tiny.config(coarse__num_train_steps=20, coarse__max_bad_steps=3,
                       coarse__eval_every=100, coarse__checkpoint_every=100,
                       coarse__learning_rate=1e30, coarse__grad_clip_norm=0.0)
  with pytest.raises(FloatingPointError, match="3 steps in a row.*config.coarse.learning_rate"):
    coarse.train_and_evaluate(config, str(tmp_path / "nan"))


def _final_line(stdout: str) -> str:
  (line,) = [l for l in stdout.splitlines() if l.startswith("CoarseNet final evaluation:")]
  return line


_TWELVE_STEPS = tiny.flags(coarse__num_train_steps=12, coarse__eval_every=12)


@pytest.mark.slow
def test_main_resumes_after_sigkill(tmp_path):
  """main.py killed with SIGKILL mid-run, then started again, ends with the
  same evaluation as an uninterrupted run (checkpoints are atomic; the
  input stream's position is restored)."""
  killed = tmp_path / "killed"
  process = subprocess.Popen([sys.executable, "main.py", f"--workdir={killed}", *_TWELVE_STEPS],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "4").is_dir():
    assert process.poll() is None and time.time() < deadline, "no checkpoint 4 appeared"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  steps_then = sorted(int(p) for p in os.listdir(killed / "checkpoints") if p.isdigit())
  assert steps_then and max(steps_then) < 12

  def run(workdir):
    result = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *_TWELVE_STEPS],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  resumed = run(killed)
  assert "resumed from step" in resumed.stderr
  straight = run(tmp_path / "straight")
  assert _final_line(resumed.stdout) == _final_line(straight.stdout)


@pytest.mark.slow
def test_train_and_evaluate_on_a_tfds_data_set(tmp_path):
  """The tfds source: Grain batches with normalised labels; evaluation uses
  the full batches of the val split (4 examples: 2 batches of 2, the third
  requested batch does not exist)."""
  from data_pipeline import build_dataset
  from data_pipeline import splits
  from data_pipeline import synthesize

  source = str(tmp_path / "synthetic")
  synthesize.synthesize(synthesize.Settings(num_faces=20, seed=0, image_size=32, shard_size=10,
                                            model="embedded:25", backgrounds=()), source)
  splits.write_splits_and_statistics(source, (0.6, 0.2, 0.2), seed=0)
  build_dataset.build("synthetic", source, str(tmp_path / "tfds"))
  config = tiny.config(coarse__num_train_steps=2, coarse__eval_every=2, coarse__batch_size=4,
                       coarse__eval_batch_size=2, coarse__eval_batches=3)
  config.coarse.data.update(source="tfds", data_dir=str(tmp_path / "tfds"),
                            statistics=os.path.join(source, "statistics.npz"))
  metrics = coarse.train_and_evaluate(config, str(tmp_path / "run"))
  assert metrics["vertex_error"] > 0 and metrics["baseline_vertex_error"] > 0
  config.coarse.update(eval_batch_size=8, num_train_steps=4, eval_every=4)  # val holds 4
  with pytest.raises(ValueError, match="fewer than config.coarse.eval_batch_size"):
    coarse.train_and_evaluate(config, str(tmp_path / "run"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _final_metrics(stdout: str) -> dict:
  line = _final_line(stdout)[len("CoarseNet final evaluation: "):]
  return {k: float(v) for k, v in (item.split(" ") for item in line.split(", "))}


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  """Two processes on localhost (jax.distributed, one CPU device each, a
  local coordinator) share the work of one global batch. A SIGTERM to one
  of them stops both at the same step with its checkpoint and exit status
  143, before FineNet; resumed, they end with the evaluation of a single
  process, and only process 0 writes the logs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  workdir = tmp_path / "two"

  def start_two(flags):
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, "main.py", f"--workdir={workdir}", *flags,
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]

  # Too many steps to finish before the signal; FineNet would follow.
  processes = start_two(tiny.flags(coarse__num_train_steps=100000, fine__num_train_steps=2))
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "2").is_dir():
    assert all(p.poll() is None for p in processes) and time.time() < deadline
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=300) for p in processes]
  stopped = []
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 143, err[-3000:]
    stopped.append(int(re.search(r"preempted \(SIGTERM\) at step (\d+)", out).group(1)))
  assert stopped[0] == stopped[1], stopped
  assert (workdir / "checkpoints" / str(stopped[0])).is_dir()
  assert not (workdir / "fine").exists()

  flags = tiny.flags(coarse__num_train_steps=stopped[0] + 2, coarse__eval_every=12)
  processes = start_two(flags)
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
    assert "2 devices (cpu) in 2 process(es)" in err
    assert f"resumed from step {stopped[0]}" in err
  one = subprocess.run([sys.executable, "main.py", f"--workdir={tmp_path / 'one'}", *flags],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  expected = _final_metrics(one.stdout)
  for out, _ in outputs:
    got = _final_metrics(out)
    assert sorted(got) == sorted(expected)
    for name in expected:
      assert got[name] == pytest.approx(expected[name], rel=2e-3, abs=1e-6), name
  assert len(os.listdir(workdir / "tensorboard")) == 2  # process 0's, one per start
