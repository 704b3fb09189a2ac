"""facerecon.memory: freed large blocks are reused, not faulted in again."""

import subprocess
import sys

import pytest

from conftest import ROOT

# Allocates, touches and frees a 64 MiB block several times; prints the page
# faults of the last rounds, with or without the setting.
_SCRIPT = """
import resource, sys
import numpy as np
from facerecon import memory
if sys.argv[1] == "retain":
  assert memory.retain_freed_memory()
def faults():
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round in range(5):
  if round == 2:
    start = faults()
  block = np.empty(64 << 20, np.uint8)
  block.fill(1)
  del block
print((faults() - start) / 3)
"""


def _faults_per_round(mode):
  result = subprocess.run([sys.executable, "-c", _SCRIPT, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  return float(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retained_blocks_are_not_faulted_in_again():
  default = _faults_per_round("default")
  retained = _faults_per_round("retain")
  # 64 MiB is 16,384 pages of 4 KiB (fewer with transparent huge pages).
  assert retained < 0.1 * default, (default, retained)
