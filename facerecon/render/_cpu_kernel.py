"""The CPU kernels: kernels/rasterize_cpu.cc, built by `pip install -e .` into
facerecon/render/_rasterize_cpu*.so, loaded with ctypes and registered as
XLA FFI custom-call targets.
"""

import ctypes
import functools
import glob
import os

import jax

from facerecon.render import _sharding

_TARGETS = {  # XLA custom-call target -> symbol in the kernel library
    "facerecon_rasterize_cpu": "FaceReconRasterizeCpu",
    "facerecon_interpolate_cpu": "FaceReconInterpolateCpu",
    "facerecon_interpolate_grad_cpu": "FaceReconInterpolateGradCpu",
    "facerecon_depth_grad_cpu": "FaceReconDepthGradCpu",
}
# Overrides the CPU kernel library, e.g. a sanitizer build (kernels/run_sanitizers.sh).
CPU_KERNEL_ENV = "FACERECON_CPU_KERNEL"


def _library_path() -> str | None:
  if os.environ.get(CPU_KERNEL_ENV):
    return os.environ[CPU_KERNEL_ENV]
  here = os.path.dirname(os.path.abspath(__file__))
  found = sorted(glob.glob(os.path.join(here, "_rasterize_cpu*.so")))
  return found[0] if found else None


@functools.cache
def register() -> str | None:
  """Loads and registers the CPU kernel; returns None or why it is missing."""
  path = _library_path()
  if path is None:
    return ("the CPU rasterizer kernel is not built (facerecon/render/_rasterize_cpu*.so "
            "is missing); run `pip install -e .` in the repository")
  try:
    library = ctypes.cdll.LoadLibrary(path)
  except OSError as e:
    return f"cannot load the CPU rasterizer kernel {path}: {e}"
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return None


def call(target, like, results, *args):
  """Calls a CPU kernel; `results` are (shape, dtype) pairs, typed like `like`."""
  problem = register()
  if problem:
    raise RuntimeError(problem)
  call = jax.ffi.ffi_call(target, tuple(_sharding.output_like(like, d, t) for d, t in results),
                          vmap_method="expand_dims")
  return call(*args)

