"""launch_tpu.sh against a fake `gcloud` on PATH that records its calls."""

import os
import shlex
import subprocess
import tarfile

import pytest

from conftest import ROOT

FAKE_GCLOUD = """#!/usr/bin/env bash
# Records each call (one shell-quoted line); 'describe' exits with
# $FAKE_DESCRIBE_STATUS; 'scp' keeps a copy of the archive it would send.
printf '%q ' "$@" >> "$FAKE_LOG"
printf '\\n' >> "$FAKE_LOG"
case "$4" in
  describe) exit "${FAKE_DESCRIBE_STATUS:-1}" ;;
  scp) cp "$5" "$FAKE_DIR/shipped.tar.gz" ;;
esac
"""


def _launch(tmp_path, *args, describe_status=1):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  log = tmp_path / "calls.log"
  log.write_text("")
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
         "FAKE_DIR": str(tmp_path), "FAKE_DESCRIBE_STATUS": str(describe_status)}
  result = subprocess.run(["bash", os.path.join(ROOT, "launch_tpu.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=120)
  calls = [shlex.split(line) for line in log.read_text().splitlines()]
  return result, calls


ARGS = ["--name=pod", "--zone=us-central2-b", "--accelerator-type=v4-32",
        "--config=configs/resnet.py", "--workdir=gs://bucket/runs/resnet", "--",
        "--config.coarse.batch_size=256", "--config.synthetic.prior.yaw=(-45.0, 45.0)"]


def test_creates_ships_installs_and_trains_on_every_worker(tmp_path):
  result, calls = _launch(tmp_path, *ARGS)
  assert result.returncode == 0, result.stderr
  verbs = [call[3] for call in calls]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh"]
  assert calls[1] == ["compute", "tpus", "tpu-vm", "create", "pod", "--zone=us-central2-b",
                      "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
  assert calls[2][5:] == ["pod:facerecon.tar.gz", "--zone=us-central2-b", "--worker=all"]
  install, train = (dict(a.split("=", 1) for a in call if a.startswith("--"))
                    for call in calls[3:])
  assert install["--worker"] == train["--worker"] == "all"
  assert "pip install --quiet '.[tpu]'" in install["--command"]
  # The training command, as each worker's shell will split it.
  words = shlex.split(train["--command"])
  assert words[:3] == ["cd", "facerecon", "&&"]
  assert words[3:] == ["python3", "main.py", "--multihost", "--config=configs/resnet.py",
                       "--workdir=gs://bucket/runs/resnet", "--config.coarse.batch_size=256",
                       "--config.synthetic.prior.yaw=(-45.0, 45.0)"]
  with tarfile.open(tmp_path / "shipped.tar.gz") as archive:
    names = set(archive.getnames())
  assert {"main.py", "setup.cfg", "facerecon/training/loop.py", "launch_tpu.sh"} <= names
  assert not any(n.startswith((".venv", "runs/")) for n in names)


def test_reuses_an_existing_slice(tmp_path):
  result, calls = _launch(tmp_path, *ARGS, describe_status=0)
  assert result.returncode == 0, result.stderr
  assert [call[3] for call in calls] == ["describe", "scp", "ssh", "ssh"]
  assert "reusing TPU VM pod" in result.stdout


def test_dry_run_prints_every_command_and_runs_none(tmp_path):
  result, calls = _launch(tmp_path, "--dry-run", "--project=proj", *ARGS)
  assert result.returncode == 0, result.stderr
  assert calls == []
  printed = [shlex.split(line[2:]) for line in result.stdout.splitlines()
             if line.startswith("+ ")]
  assert [p[4] for p in printed] == ["describe", "create", "scp", "ssh", "ssh"]
  assert all("--project=proj" in p for p in printed)
  assert "--config.coarse.batch_size=256" in printed[-1][-1]


@pytest.mark.parametrize("args, message", [
    (["--zone=z", "--workdir=gs://b/r"], "--name is required"),
    (["--name=n", "--workdir=gs://b/r"], "--zone is required"),
    (["--name=n", "--zone=z"], "--workdir is required"),
    (["--name=n", "--zone=z", "--workdir=gs://b/r", "--config=configs/none.py"],
     "configs/none.py does not exist"),
    (["--name=n", "--zone=z", "--workdir=gs://b/r", "--batch=3"], "unknown flag '--batch=3'"),
])
def test_bad_flags_are_named(tmp_path, args, message):
  result, calls = _launch(tmp_path, *args)
  assert result.returncode == 2 and message in result.stderr and calls == []
