"""Build entry point; metadata and dependencies live in setup.cfg.

Compiles the CPU rasterizer (kernels/rasterize_cpu.cc) against the XLA FFI
headers that ship with jaxlib. The result is a plain shared library that
facerecon.render loads with ctypes and registers as an XLA custom call.
"""

import os
import sys

import setuptools
from setuptools.command.build_ext import build_ext


class BuildKernels(build_ext):
  """Builds the kernels when a C++ compiler is there; without one the
  install goes on (the extension is optional) and says what that costs."""

  def build_extension(self, extension):
    try:
      super().build_extension(extension)
    except Exception as e:  # no compiler, or one that fails: any error of the toolchain
      print(f"WARNING: facerecon's CPU rasterizer kernel was not built ({e}). "
            "facerecon works without it: rendering falls back to the pure-JAX 'scatter' "
            "backend, about 100 times slower per image on the CPU (README, 'Install'). "
            "Install a C++ compiler (g++ or clang++) and reinstall to build it.",
            file=sys.stderr)

  def build_extensions(self):
    import jaxlib  # Only its headers are needed (jax.ffi.include_dir()).

    include = os.path.join(os.path.dirname(os.path.abspath(jaxlib.__file__)), "include")
    for extension in self.extensions:
      extension.include_dirs.append(include)
    super().build_extensions()

  def get_export_symbols(self, extension):
    return []  # Loaded with ctypes: no PyInit_ function to export.


setuptools.setup(
    ext_modules=[
        setuptools.Extension(
            "facerecon.render._rasterize_cpu",
            sources=["kernels/rasterize_cpu.cc"],
            include_dirs=["kernels"],
            depends=["kernels/rasterize.h"],
            language="c++",
            # No FMA contraction: every product is rounded as written, so the
            # scalar and AVX2 passes agree bit for bit. (XLA does contract, so
            # the pure-JAX backends may differ at pixels within rounding of
            # an edge; see facerecon/render/raster.py.)
            extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off", "-w"],
        )
    ],
    cmdclass={"build_ext": BuildKernels},
)
