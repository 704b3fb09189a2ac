"""Wall times of calls, shared by the benchmark scripts."""

import time

import jax
import numpy as np


def call_seconds(fn, *args, repeats: int) -> np.ndarray:
  """Seconds taken by each of `repeats` calls fn(*args), after one call that
  compiles and warms up. Each call is waited for (jax.block_until_ready):
  JAX returns before the device has finished."""
  jax.block_until_ready(fn(*args))
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    seconds.append(time.perf_counter() - start)
  return np.array(seconds)


def median_ms(fn, *args, repeats: int) -> float:
  """The median milliseconds of a call fn(*args) (`call_seconds`)."""
  return 1e3 * float(np.median(call_seconds(fn, *args, repeats=repeats)))
