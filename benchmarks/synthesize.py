r"""Synthetic training faces per second on this machine.

    python benchmarks/synthesize.py [--size=200] [--batch=16] [--grid=65]

Draws and renders batches with `facerecon.data.synthetic.generate` (jitted,
procedural backgrounds, the default CPU rasterizer) and prints faces per
second over --batches batches after a warm-up. The goal is at least 300
faces/s at 200x200 with the embedded model on 2 cores.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax

from facerecon import face_models
from facerecon import memory
from facerecon.data import synthetic

_SIZE = flags.DEFINE_integer("size", 200, "Square image size.")
_BATCH = flags.DEFINE_integer("batch", 16, "Faces per batch (the synthesize default).")
_BATCHES = flags.DEFINE_integer("batches", 32, "Timed batches.")
_GRID = flags.DEFINE_integer("grid", None, "Embedded model grid (default: the default model).")


def main(argv):
  del argv
  memory.retain_freed_memory()  # as data_pipeline.synthesize does
  model = jax.device_put(face_models.embedded(grid_size=_GRID.value))
  prior = synthetic.FacePrior()
  size, batch = _SIZE.value, _BATCH.value
  run = lambda start: synthetic.generate_jit(
      model, synthetic.sample_keys(0, start, batch), prior, size, size)
  jax.block_until_ready(run(0))  # compile
  start = time.perf_counter()
  for b in range(_BATCHES.value):
    jax.block_until_ready(run((b + 1) * batch))
  seconds = time.perf_counter() - start
  faces = batch * _BATCHES.value
  print(f"{model.num_vertices} vertices, {size}x{size}, batch {batch}: "
        f"{faces / seconds:.1f} faces/s ({1e3 * seconds / faces:.2f} ms per face)")


if __name__ == "__main__":
  app.run(main)
