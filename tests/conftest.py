"""Shared fixtures. Tests run on the CPU; the whole suite takes minutes."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ and main.py live at the top level.

SMALL_GRID = 25  # a few hundred vertices: fast, still face-shaped


@pytest.fixture(scope="session")
def small_model():
  """A small embedded model with few modes, for fast tests."""
  from facerecon import morphable

  return morphable.embedded_model(grid_size=SMALL_GRID, num_shape=12,
                                  num_expression=6, num_texture=10)


@pytest.fixture(scope="session")
def default_model():
  from facerecon import morphable

  return morphable.embedded_model()


@pytest.fixture(params=["reference", "scatter", "cpu"])
def backend(request):
  """Each rasterizer backend that runs on this machine."""
  from facerecon import render

  if request.param not in render.available_backends():
    pytest.skip(f"rasterizer backend '{request.param}' is not available here")
  return request.param
