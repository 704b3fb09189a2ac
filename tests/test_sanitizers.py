"""The rasterizer core's edge cases under ASan + UBSan and valgrind."""

import shutil
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_kernel_edge_cases_under_sanitizers():
  # --no-python: the FFI-under-ASan stage (2 minutes) is run by hand.
  result = subprocess.run(["bash", "kernels/run_sanitizers.sh", "--no-python"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "sanitizers: all passed" in result.stdout
  assert "FAIL" not in result.stdout
