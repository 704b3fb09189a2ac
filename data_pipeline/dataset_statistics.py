r"""The label statistics of a labelled tfds data set's train split.

    python -m data_pipeline.dataset_statistics --name=facerecon_faces/mat_folders \
        --data_dir=~/tensorflow_datasets --image_size=200 --output=data/300wlp/statistics.npz

CoarseNet regresses parameters normalised by the train split's mean and
standard deviation and sees images less the mean image
(`facerecon.data.normalization`): pass the file to training as
`--config.coarse.data.statistics`. The examples are taken as training reads them
(`facerecon.data.input_pipeline.make_dataset`, without augmentation): photos of another
size (300W-LP's 450x450) are first cropped to `--image_size` by the shared
landmark rule, and their labels moved with them. (For synthetic shards,
`data_pipeline.splits` writes the same statistics when it splits them.)
"""

import os

from absl import app
from absl import flags

from facerecon.data import input_pipeline
from facerecon.data import normalization


def dataset_statistics(name: str, data_dir: str | None, image_size: int,
                       batch_size: int = 64) -> normalization.DataStatistics:
  """The statistics of the train split of tfds data set `name` at `image_size`."""
  source = input_pipeline.open_source(name, "train", data_dir)
  accumulator = normalization.StatisticsAccumulator()
  for batch in input_pipeline.make_dataset(source, batch_size=batch_size, train=False,
                                           image_size=image_size):
    accumulator.add(batch["params"], batch["image"])
  return accumulator.result()


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("name", None, "The tfds data set, e.g. facerecon_faces/mat_folders.")
  flags.DEFINE_string("data_dir", None, "The tfds data directory (default: tfds').")
  flags.DEFINE_integer("image_size", 200, "The network's input size (config.image_size).")
  flags.DEFINE_string("output", None, "Where to write statistics.npz.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.image_size < 1:
    raise app.UsageError("--image_size must be positive")
  data_dir = None if FLAGS.data_dir is None else os.path.expanduser(FLAGS.data_dir)
  try:
    stats = dataset_statistics(FLAGS.name, data_dir, FLAGS.image_size)
  except KeyError as e:  # e.g. vggface: photos without labels
    raise app.UsageError(f"--name={FLAGS.name}: statistics need the labels (params, "
                         f"landmarks): {e.args[0]}") from None
  normalization.save_statistics(stats, FLAGS.output)
  print(f"statistics of {int(stats.count)} train examples of {FLAGS.name} at "
        f"{FLAGS.image_size}x{FLAGS.image_size} written to {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["name", "output"])
  app.run(main)
