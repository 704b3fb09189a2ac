r"""Input pipeline throughput: training images per second on this machine.

    python benchmarks/input_pipeline.py [--faces=512] [--workers=0,2]

Synthesises --faces faces at 200x200, builds the facerecon_faces/synthetic
tfds data set in a temporary folder, then times the host pipeline (shuffle,
decode, scale/shift augmentation with label updates, label normalisation,
batches of 32 uint8 images) for each worker count. Colour jitter and image
normalisation run on the device inside the train step
(`facerecon.data.preprocessing.network_images`) and are timed separately
here, jitted on this machine's CPU. The goal is 1,000 images/s on 2 cores.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax

from benchmarks import timing
from data_pipeline import build_dataset
from data_pipeline import splits
from data_pipeline import synthesize
from facerecon import memory
from facerecon.data import input_pipeline
from facerecon.data import normalization
from facerecon.data import preprocessing

_FACES = flags.DEFINE_integer("faces", 512, "Faces in the temporary data set.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker process counts to time.")
_BATCHES = flags.DEFINE_integer("batches", 30, "Timed batches of 32.")


def main(argv):
  del argv
  memory.retain_freed_memory()  # as main.py does
  with tempfile.TemporaryDirectory() as tmp:
    source = os.path.join(tmp, "synthetic")
    settings = synthesize.Settings(num_faces=_FACES.value, seed=0, image_size=200,
                                   shard_size=256, model="embedded", backgrounds=())
    synthesize.synthesize(settings, source)
    splits.write_splits_and_statistics(source, (0.8, 0.1, 0.1))
    build_dataset.build("synthetic", source, os.path.join(tmp, "tfds"))
    statistics = normalization.load_statistics(os.path.join(source, "statistics.npz"))
    data = input_pipeline.open_source("facerecon_faces/synthetic", "train",
                                      os.path.join(tmp, "tfds"))
    for workers in map(int, _WORKERS.value):
      iterator = iter(input_pipeline.make_dataset(data, batch_size=32, seed=0,
                                                  statistics=statistics,
                                                  num_workers=workers))
      next(iterator)  # start-up: worker processes, first reads
      start, images = time.perf_counter(), 0
      for _ in range(_BATCHES.value):
        images += len(next(iterator)["image"])
      rate = images / (time.perf_counter() - start)
      print(f"workers={workers}: {rate:.0f} images/s (200x200, host pipeline)")
    batch = next(iter(input_pipeline.make_dataset(data, batch_size=32, statistics=statistics)))
    photometric = jax.jit(lambda x, k: preprocessing.network_images(x, statistics, k))
    seconds = timing.call_seconds(photometric, batch["image"], jax.random.PRNGKey(0),
                                  repeats=_BATCHES.value)
    rate = 32 * _BATCHES.value / seconds.sum()
    print(f"network_images (colour jitter, normalisation) on {jax.devices()[0].platform}: "
          f"{rate:.0f} images/s")


if __name__ == "__main__":
  app.run(main)
