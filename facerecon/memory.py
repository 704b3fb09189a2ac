"""Process-level memory settings for the command-line entry points.

XLA's CPU runtime allocates its output and temporary buffers with malloc on
every call. glibc serves large blocks (over 128 KiB to 32 MiB, adapting)
with fresh mmaps and returns them on free, so each call page-faults its
buffers in again: on the 2-core virtual machines the benchmarks ran on a
fault costs 2-3 us, and a [64, 200, 200, 10] float buffer took 0.86 ms per
image to fault in, more than the kernel that fills it. Raising glibc's mmap
and trim thresholds keeps freed blocks in the heap for reuse. The cost is
that the process keeps its peak heap instead of returning it to the system.

Only the imperative shell (main.py, data_pipeline, benchmarks) calls this;
library code never changes process settings.
"""

import ctypes
import ctypes.util
import functools

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = 2 << 30  # free heap top kept up to 2 GiB


@functools.cache
def retain_freed_memory() -> bool:
  """Makes glibc reuse freed large blocks instead of unmapping them.

  Returns whether the settings took effect (False where the C library is
  not glibc). Safe to call more than once.
  """
  name = ctypes.util.find_library("c")
  if name is None:
    return False
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # Both must be set: a fixed mmap threshold also stops glibc adapting the
  # trim threshold.
  return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
      mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
