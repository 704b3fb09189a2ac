r"""Training throughput of CoarseNet's train step, and where its time goes.

    python benchmarks/train.py [--config=configs/synthetic.py] [--steps=20]
        [--batch_sizes=32,64,128] [--config.coarse.backbone=small --config.image_size=64 ...]

Builds the config's network, optimizer and data (synthetic faces rendered
on the fly by default), compiles the step, then times --steps steps: the
data (host batches, sharding) and the step itself separately and together.
Then it times, on the same batch, the step's work outside the networks:
the input renders of iterations 2..K and every iteration's loss (renders
included) forward and backward. The rest of the step is the networks and
the optimizer. On an accelerator it also prints the peak device memory.

--batch_sizes repeats everything for each global batch size and reports a
batch that does not fit in device memory as such (the largest that fits is
the last one reported with figures). On a GPU, run it with configs/resnet.py
plus --config.coarse.data.source=synthetic --config.dtype=bfloat16 for the
paper's network.
"""

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from benchmarks import timing
from facerecon import memory
from facerecon import parallel
from facerecon.models import coarse_net
from facerecon.training import coarse

_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", [], "Global batch sizes to measure, in "
                                 "turn (default: the config's).")
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.",
                                lock_config=True)


def renderer_and_loss(config, run):
  """The step's work outside the networks, jitted: (estimates, batch, model,
  statistics) -> (input renders of iterations 2..K, (loss, its gradient with
  respect to the estimates)). Iteration 1's input is the start render, one
  for the whole batch."""
  batch_loss = coarse.batch_loss_fn(config, run.mesh)
  input_render = parallel.map_per_device(
      functools.partial(coarse_net.estimate_inputs, backend=config.render_backend), run.mesh,
      num_batched=2)

  def work(estimates, batch, model, statistics):
    images = batch["image"].astype(jnp.float32)
    inputs = [input_render(e, images, model, statistics) for e in estimates[:-1]]
    loss = lambda e: batch_loss(e, batch["params_normalized"], batch["landmarks"], model,
                                statistics)[0]
    return inputs, jax.value_and_grad(loss)(estimates)

  return jax.jit(work)


def measure(config) -> None:
  run = coarse.build(config)
  state, step, data = run.state, run.step_fn, run.train_data
  size = config.image_size

  def next_batch():
    return coarse.make_batch(next(data), run.statistics, run.mesh)

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
  stage = config.coarse
  steps, images = _STEPS.value, _STEPS.value * stage.batch_size
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; backbone {stage.backbone}, "
        f"{stage.num_iterations} iterations, {size}x{size}, global batch {stage.batch_size}, "
        f"{config.dtype}; first step (compile) {compile_seconds:.1f} s")
  print(f"train step: {steps / step_seconds:.2f} steps/s, {images / step_seconds:.1f} images/s")
  print(f"data ({stage.data.source}): {images / data_seconds:.1f} images/s")
  print(f"together: {images / (step_seconds + data_seconds):.1f} images/s "
        f"(final loss {float(np.asarray(metrics['loss'])):.4f})")

  # Estimates near the labels, as a trained network's would be.
  noise = jax.random.normal(jax.random.PRNGKey(1), (stage.num_iterations,) +
                            batch["params_normalized"].shape)
  estimates = tuple(batch["params_normalized"] + 0.3 * noise[k]
                    for k in range(stage.num_iterations))
  outside = float(np.mean(timing.call_seconds(renderer_and_loss(config, run), estimates,
                                               batch, *run.context, repeats=steps)))
  per_step, per_batch = step_seconds / steps, data_seconds / steps
  print(f"per step: {1e3 * per_step:.2f} ms step = {1e3 * outside:.2f} ms renderer + loss "
        f"({100 * outside / per_step:.1f}%) + {1e3 * (per_step - outside):.2f} ms networks "
        f"+ optimizer; input {1e3 * per_batch:.2f} ms per batch")
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    print(f"peak device memory: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB "
          f"(device 0, since the process started)")


def _out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def main(argv):
  del argv
  memory.retain_freed_memory()  # as main.py does
  config = flags.FLAGS.config
  for batch_size in _BATCH_SIZES.value or [config.coarse.batch_size]:
    config.coarse.batch_size = int(batch_size)
    try:
      measure(config)
    except Exception as e:  # XLA reports a batch too large as a runtime error.
      if not _out_of_memory(e):
        raise
      print(f"global batch {config.coarse.batch_size}: does not fit in device memory")
      break
    jax.clear_caches()


if __name__ == "__main__":
  app.run(main)
