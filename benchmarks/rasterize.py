r"""Rasterizer speed: ms per image, each available backend vs the reference.

    python benchmarks/rasterize.py [--sizes=200,224] [--batches=1,32]

On the BFM-scale embedded face (grid 253: 53,605 vertices, 106,324
triangles), three-quarter view filling the image. For each backend, image
size and batch: `rasterize` alone, and forward+backward of a depth-image loss
(rasterize, `interpolate_depth`, squared error to a target over the mask,
gradient w.r.t. the vertices: what face_render.render_depth runs), jitted, median
of --repeats calls ('cpu': FFI kernels; others: pure JAX). The pure-JAX
reference is the in-run baseline (batch 1 only: it takes seconds per image).
Batch 1 runs on one thread; larger batches spread images over XLA's CPU
threads. The last column compares with 3DDFA_V2's Sim3DR (about 2.1 ms at
200x200 and 2.4 ms at 224x224 per image, one thread, same mesh size; figures
from ../shared/REFERENCE.md).

With g++ available it also builds kernels/benchmark_core.cc and times the
CPU kernels called directly (one thread, no XLA: the like-for-like figure
for Sim3DR, a C++ function called from Python), median and minimum.
"""

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from facerecon import camera
from facerecon import embedded_face
from facerecon import face_models
from facerecon import memory
from facerecon import render

_SIZES = flags.DEFINE_list("sizes", ["200", "224"], "Square image sizes.")
_BATCHES = flags.DEFINE_list("batches", ["1", "32"], "Batch sizes.")
_BACKENDS = flags.DEFINE_list("backends", None, "Backends (default: all available).")
_GRID = flags.DEFINE_integer("grid", embedded_face.BFM_SCALE_GRID, "Embedded model grid.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per measurement.")
_REFERENCE_REPEATS = flags.DEFINE_integer("reference_repeats", 2, "Timed reference calls.")

SIM3DR_MS = {200: 2.1, 224: 2.4}


def _kernel_only(image, triangles, size, repeats):
  """Median and min ms of the C++ kernels on one image, or None without g++."""
  compiler = shutil.which(os.environ.get("CXX", "g++"))
  if compiler is None:
    return None
  kernels = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
  with tempfile.TemporaryDirectory() as tmp:
    binary = os.path.join(tmp, "benchmark_core")
    # The package build's flags (setup.py).
    subprocess.run([compiler, "-O3", "-std=c++17", "-ffp-contract=off", f"-I{kernels}",
                    os.path.join(kernels, "benchmark_core.cc"), "-o", binary], check=True)
    np.asarray(image, np.float32).tofile(os.path.join(tmp, "vertices"))
    np.asarray(triangles, np.int32).tofile(os.path.join(tmp, "triangles"))
    lines = subprocess.run([binary, os.path.join(tmp, "vertices"), os.path.join(tmp, "triangles"),
                            str(size), str(repeats)], check=True, capture_output=True,
                           text=True).stdout.split("\n")
  return {name: (float(median), float(low))
          for name, median, low in (line.split() for line in lines if line)}


def main(argv):
  del argv
  memory.retain_freed_memory()  # as main.py does
  model = face_models.embedded(grid_size=_GRID.value)
  backends = _BACKENDS.value or list(render.available_backends())
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores; "
        f"mesh: {model.num_vertices} vertices, {model.num_triangles} triangles")
  print(f"{'backend':>10} {'size':>5} {'batch':>6} {'rasterize':>10} {'fwd+bwd':>9} "
        f"{'bwd/fwd':>8} {'vs Sim3DR':>10}   (ms per image)")
  triangles = jnp.asarray(model.triangles)
  for size in map(int, _SIZES.value):
    pose = camera.framing_pose(model.mean_shape, jnp.array([0.15, 0.5, 0.05]), size, size)
    image = camera.project_scaled_orthographic(model.mean_shape, pose, size)
    kernel = _kernel_only(image, model.triangles, size, max(_REPEATS.value, 100))
    if kernel:
      (r_med, r_min), (d_med, d_min), (i_min, g_min) = (
          kernel["rasterize"], kernel["depth_grad"],
          (kernel["interpolate"][1], kernel["interpolate_grad"][1]))
      both_med = r_med + d_med
      print(f"{'C++ core':>10} {size:>5} {1:>6} {r_med:>10.3f} {both_med:>9.3f} "
            f"{both_med / r_med:>8.2f} {SIM3DR_MS[size] / r_med:>9.2f}x   "
            f"(kernels alone, median; min: rasterize {r_min:.3f}, depth backward "
            f"{d_min:.3f}; generic interpolate {i_min:.3f}, its backward {g_min:.3f})")
    for backend in backends:
      for batch in map(int, _BATCHES.value):
        slow = backend in ("reference", "scatter")  # pure JAX on this platform
        if backend == "reference" and batch > 1:
          continue
        repeats = _REFERENCE_REPEATS.value if slow else _REPEATS.value
        vertices = jnp.broadcast_to(image, (batch,) + image.shape)
        target = jnp.zeros((batch, size, size))

        def forward(v, backend=backend):
          return render.rasterize(v, triangles, size, size, backend=backend).triangle_id

        def loss(v, backend=backend):
          raster = render.rasterize(v, triangles, size, size, backend=backend)
          depth = render.interpolate_depth(raster, v, triangles, backend=backend)
          return jnp.sum(jnp.where(raster.mask, (depth - target) ** 2, 0.0))

        forward_ms = timing.median_ms(jax.jit(forward), vertices, repeats=repeats) / batch
        both_ms = timing.median_ms(jax.jit(jax.grad(loss)), vertices, repeats=repeats) / batch
        print(f"{backend:>10} {size:>5} {batch:>6} {forward_ms:>10.3f} {both_ms:>9.3f} "
              f"{both_ms / forward_ms:>8.2f} {SIM3DR_MS[size] / forward_ms:>9.2f}x")


if __name__ == "__main__":
  app.run(main)
