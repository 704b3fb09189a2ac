r"""Training throughput: steps/s and images/s of CoarseNet's train step.

    python benchmarks/train.py [--config=configs/synthetic.py] [--steps=20]
        [--config.backbone=small --config.image_size=64 ...]

Builds the config's network, optimizer and data (synthetic faces rendered
on the fly by default), compiles the step, then times --steps steps: the
data (host batches, sharding) and the step itself are timed separately and
together. On a GPU, run it with configs/resnet.py plus
--config.data.source=synthetic --config.dtype=bfloat16 for the paper's
network.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from facerecon import memory
from facerecon import train

_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.",
                                lock_config=True)


def main(argv):
  del argv
  memory.retain_freed_memory()  # as main.py does
  config = flags.FLAGS.config
  run = train.build_training(config)
  mesh, state, step, data = run.mesh, run.state, run.step_fn, run.train_data
  size = config.image_size

  def next_batch():
    return train.shard_batch(train._with_normalized_labels(next(data), run.statistics), mesh)

  batch = next_batch()
  start = time.perf_counter()
  state, metrics = step(state, batch, jax.random.PRNGKey(0), run.context)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start

  data_seconds = step_seconds = 0.0
  for i in range(_STEPS.value):
    start = time.perf_counter()
    batch = jax.block_until_ready(next_batch())
    data_seconds += time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = step(state, batch, jax.random.PRNGKey(i), run.context)
    jax.block_until_ready(metrics)
    step_seconds += time.perf_counter() - start
  steps, images = _STEPS.value, _STEPS.value * config.batch_size
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; backbone {config.backbone}, "
        f"{config.num_iterations} iterations, {size}x{size}, global batch {config.batch_size}, "
        f"{config.dtype}; first step (compile) {compile_seconds:.1f} s")
  print(f"train step: {steps / step_seconds:.2f} steps/s, {images / step_seconds:.1f} images/s")
  print(f"data ({config.data.source}): {images / data_seconds:.1f} images/s")
  print(f"together: {images / (step_seconds + data_seconds):.1f} images/s "
        f"(final loss {float(np.asarray(metrics['loss'])):.4f})")


if __name__ == "__main__":
  app.run(main)
