"""Tests on 4 CPU devices. XLA fixes the device count when JAX starts, so
this folder runs in a pytest process of its own, whose first act is this
conftest setting the count:

    python -m pytest tests/multidevice

(tests/conftest.py leaves the folder out of every other pytest run.)"""
# isort: skip_file  (the device count must be set before JAX is imported)

import os

DEVICES = 4
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={DEVICES}").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (after the device count is set)
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def four_devices():
  """Fails clearly when JAX started before this conftest could set the count."""
  assert jax.device_count() == DEVICES, (
      f"{jax.device_count()} devices: run tests/multidevice in its own pytest process")
