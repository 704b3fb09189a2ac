"""train_and_evaluate end to end on a tiny config: checkpoints, TensorBoard
events, evaluation against the mean-face baseline, exact resume."""

import os

import jax
import numpy as np
import pytest

from configs import default
from facerecon import tensorboard
from facerecon import train


def _tiny_config(**overrides):
  config = default.get_config()
  config.model = "embedded:25"
  config.image_size = 32
  config.backbone = "small"
  config.backbone_kwargs.widths = (8, 16)
  config.num_iterations = 2
  config.batch_size = 8
  config.num_train_steps = 4
  config.learning_rate = 1e-3
  config.warmup_steps = 1
  config.schedule = "constant"  # independent of num_train_steps, so a longer run resumes
  config.log_every = 2
  config.eval_every = 4
  config.eval_batches = 1
  config.eval_batch_size = 8
  config.checkpoint_every = 2
  config.keep_checkpoints = 2
  config.data.statistics_samples = 64
  config.update(overrides)
  return config


@pytest.mark.slow
def test_train_and_evaluate_writes_outputs_and_resumes_exactly(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(_tiny_config(), workdir)
  for name in ("param_error", "vertex_error", "depth_error", "landmark_nme"):
    assert name in metrics and f"baseline_{name}" in metrics
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  (events_file,) = os.listdir(os.path.join(workdir, "tensorboard"))
  events = tensorboard.read_events(os.path.join(workdir, "tensorboard", events_file))
  tags = {value.tag for event in events for value in (event.values or ())}
  assert {"train/loss", "train/learning_rate", "train/images_per_second",
          "eval/vertex_error", "eval/reconstructions"} <= tags
  assert os.path.getsize(os.path.join(workdir, "reconstructions.png")) > 0
  best = train.BestCheckpoint(os.path.join(workdir, "best"), "vertex_error")
  assert best.record["step"] == 4 and best.record["value"] == metrics["vertex_error"]
  best.close()

  # Continue to 6 steps: the same as 6 steps in one go.
  resumed = train.train_and_evaluate(_tiny_config(num_train_steps=6, eval_every=6), workdir)
  straight = train.train_and_evaluate(_tiny_config(num_train_steps=6, eval_every=6),
                                      str(tmp_path / "straight"))
  assert resumed == straight


@pytest.mark.slow
def test_bfloat16_training_runs(tmp_path):
  """config.dtype=bfloat16 (the accelerator setting; emulated on the CPU):
  float32 parameters, finite losses and metrics."""
  config = _tiny_config(num_train_steps=2, eval_every=2, dtype="bfloat16")
  metrics = train.train_and_evaluate(config, str(tmp_path / "bf16"))
  assert all(np.isfinite(v) for v in metrics.values())
  best = train.BestCheckpoint(str(tmp_path / "bf16" / "best"), "vertex_error")
  training = train.build_training(config)
  restored = best.restore({"params": training.state.params,
                           "batch_stats": training.state.batch_stats})
  assert {leaf.dtype for leaf in jax.tree.leaves(restored["params"])} == {np.dtype("float32")}
  best.close()


@pytest.mark.slow
def test_training_stops_after_too_many_non_finite_steps(tmp_path):
  """Every step's loss is NaN (a NaN loss weight): each update is skipped,
  and after max_bad_steps in a row the run stops, naming the setting."""
  config = _tiny_config(num_train_steps=20, max_bad_steps=3, eval_every=100,
                        checkpoint_every=100)
  config.loss.vertex = float("nan")
  with pytest.raises(FloatingPointError, match="3 steps in a row.*learning_rate"):
    train.train_and_evaluate(config, str(tmp_path / "nan"))


_TINY_FLAGS = [
    "--mode=train", "--config=configs/synthetic.py", "--config.model=embedded:25",
    "--config.image_size=32", "--config.backbone=small", "--config.num_iterations=2",
    "--config.backbone_kwargs.widths=(8,16)",
    "--config.batch_size=8", "--config.num_train_steps=12", "--config.checkpoint_every=2",
    "--config.eval_every=12", "--config.eval_batches=1", "--config.eval_batch_size=8",
    "--config.data.statistics_samples=64", "--config.schedule=constant",
    "--config.warmup_steps=1", "--config.learning_rate=1e-3", "--config.log_every=2",
    "--config.fine.num_train_steps=0"]


def _final_line(stdout: str) -> str:
  (line,) = [l for l in stdout.splitlines() if l.startswith("CoarseNet final evaluation:")]
  return line


@pytest.mark.slow
def test_main_resumes_after_sigkill(tmp_path):
  """main.py killed with SIGKILL mid-run, then started again, ends with the
  same evaluation as an uninterrupted run (checkpoints are atomic; the
  input stream's position is restored)."""
  import signal
  import subprocess
  import sys
  import time

  from conftest import ROOT

  killed = tmp_path / "killed"
  process = subprocess.Popen([sys.executable, "main.py", f"--workdir={killed}", *_TINY_FLAGS],
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
    result = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *_TINY_FLAGS],
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
  config = _tiny_config(num_train_steps=2, eval_every=2, batch_size=4, eval_batch_size=2,
                        eval_batches=3)
  config.data.source = "tfds"
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.statistics = os.path.join(source, "statistics.npz")
  metrics = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert metrics["vertex_error"] > 0 and metrics["baseline_vertex_error"] > 0
  config.eval_batch_size = 8  # more than the val split holds
  config.num_train_steps = 4
  config.eval_every = 4
  with pytest.raises(ValueError, match="fewer than config.eval_batch_size"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


_FOUR_DEVICE_TRAINING = r"""
import sys, jax, numpy as np
sys.path.insert(0, {tests!r})
import test_train_e2e as t
from facerecon import train
assert jax.device_count() == 4
config = t._tiny_config(num_train_steps=3, eval_every=3)
# Each device rasterizes its own 2 examples: every rasterizer call in the
# compiled step sees a batch of 2, none the whole batch of 8, apart from the
# one render of the start estimate all images share (batch 1).
run = train.build_training(config)
batch = train.shard_batch(train._with_normalized_labels(next(run.train_data), run.statistics),
                          run.mesh)
hlo = run.step_fn.lower(run.state, batch, jax.random.PRNGKey(0), run.context).compile().as_text()
calls = [line for line in hlo.splitlines() if 'custom_call_target="facerecon_rasterize_cpu"' in line]
start = [line for line in calls if "= (s32[1,32,32]" in line]
per_device = [line for line in calls if line not in start]
assert len(start) <= 1, start
assert per_device and all("= (s32[2,32,32]" in line and "f32[8," not in line
                          for line in per_device), calls
print("RASTERIZE CALLS", len(calls))
metrics = train.train_and_evaluate(config, {workdir!r})
print("METRICS", repr(metrics))
"""


@pytest.mark.slow
def test_four_devices_train_like_one(tmp_path):
  """train_and_evaluate on 4 fake CPU devices (the global batch of 8 split
  2 per device, each device rendering its own 2) ends with the same
  evaluation as on 1 device."""
  import ast
  import subprocess
  import sys

  from conftest import ROOT

  one = train.train_and_evaluate(_tiny_config(num_train_steps=3, eval_every=3),
                                 str(tmp_path / "one"))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  code = _FOUR_DEVICE_TRAINING.format(tests=os.path.join(ROOT, "tests"),
                                      workdir=str(tmp_path / "four"))
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  (line,) = [l for l in result.stdout.splitlines() if l.startswith("METRICS ")]
  four = ast.literal_eval(line[len("METRICS "):])
  assert sorted(four) == sorted(one)
  for name in one:
    assert four[name] == pytest.approx(one[name], rel=1e-3, abs=1e-6), name


def _free_port() -> int:
  import socket

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
  import re
  import signal
  import subprocess
  import sys
  import time

  from conftest import ROOT

  env = dict(os.environ, JAX_PLATFORMS="cpu")
  workdir = tmp_path / "two"

  def start_two(*flags):
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, "main.py", f"--workdir={workdir}", *_TINY_FLAGS, *flags,
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]

  # Too many steps to finish before the signal; FineNet would follow.
  processes = start_two("--config.num_train_steps=100000", "--config.fine.num_train_steps=2")
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

  steps = f"--config.num_train_steps={stopped[0] + 2}"
  processes = start_two(steps)
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
    assert "2 devices (cpu) in 2 process(es)" in err
    assert f"resumed from step {stopped[0]}" in err
  one = subprocess.run([sys.executable, "main.py", f"--workdir={tmp_path / 'one'}",
                        *_TINY_FLAGS, steps],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  expected = _final_metrics(one.stdout)
  for out, _ in outputs:
    got = _final_metrics(out)
    assert sorted(got) == sorted(expected)
    for name in expected:
      assert got[name] == pytest.approx(expected[name], rel=2e-3, abs=1e-6), name
  assert len(os.listdir(workdir / "tensorboard")) == 2  # process 0's, one per start
