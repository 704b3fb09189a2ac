"""Shared fixtures. Tests run on the CPU; the whole suite takes minutes."""

import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ and main.py live at the top level.

SMALL_GRID = 25  # a few hundred vertices: fast, still face-shaped


def _share_compiled_programs() -> str | None:
  """Caches compiled XLA programs on disk for this test run: the xdist
  workers and the main.py processes the end-to-end tests start (which
  inherit the environment) compile the same tiny steps many times. A fresh
  directory per run, so every program is still compiled at least once
  (.ci/run makes one for both of its pytest calls). Returns the directory
  this process made (removed when the run ends)."""
  # A size limit turns on JAX's file lock, so concurrent writers are safe.
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
  # JAX keeps only programs that took a second or more to compile; caching
  # every one (JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0) made the suite
  # far slower: thousands of small entries, each write under the lock.
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # .ci/run's, the user's or the xdist controller's
    return None
  path = tempfile.mkdtemp(prefix="facerecon-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  return path


_COMPILATION_CACHE = _share_compiled_programs()


def pytest_ignore_collect(collection_path, config):
  """tests/multidevice runs in a pytest process of its own (its conftest
  sets the CPU device count before JAX starts): only when asked for by
  name, `pytest tests/multidevice`."""
  if collection_path.name == "multidevice" and collection_path.parent.name == "tests":
    asked = [os.path.abspath(str(arg).split("::")[0]) for arg in config.args]
    if not any(path == str(collection_path) or path.startswith(str(collection_path) + os.sep)
               for path in asked):
      return True
  return None


def pytest_unconfigure(config):
  if _COMPILATION_CACHE is not None:
    shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)


# facerecon (and so JAX) is imported inside the fixtures below: JAX reads its
# cache settings from the environment when first imported, after the above.


@pytest.fixture(scope="session")
def small_model():
  """A small embedded model with few modes, for fast tests."""
  from facerecon import face_models

  return face_models.embedded(grid_size=SMALL_GRID, num_shape=12,
                                  num_expression=6, num_texture=10)


@pytest.fixture(scope="session")
def default_model():
  from facerecon import face_models

  return face_models.embedded()


@pytest.fixture(params=["reference", "scatter", "cpu"])
def backend(request):
  """Each rasterizer backend that runs on this machine."""
  from facerecon import render

  if request.param not in render.available_backends():
    pytest.skip(f"rasterizer backend '{request.param}' is not available here")
  return request.param


def pytest_collection_modifyitems(config, items):
  """The tests marked slow run first. With `-n 2 --dist worksteal` (.ci/run)
  the two workers then finish together: the last tests left to share out
  are short ones, not a two-minute end-to-end run that one worker does
  while the other waits. The order is otherwise that of collection."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
