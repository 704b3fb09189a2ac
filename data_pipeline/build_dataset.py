r"""Builds the facerecon_faces tfds data set (array_record, no TensorFlow needed).

    python -m data_pipeline.build_dataset --config=synthetic --source_dir=DIR \
        [--data_dir=~/tensorflow_datasets]

The same as `tfds build data_pipeline/facerecon_faces --config=... --manual_dir=DIR
--file_format=array_record` (that command line needs TensorFlow: `pip install -e ".[tfds-cli]"`),
plus a report: split sizes, and everything skipped (unreadable images,
malformed .mat files) by name in <data_dir>/facerecon_faces/<config>/<version>/skipped.txt.
"""

import os

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from data_pipeline.facerecon_faces import facerecon_faces_dataset_builder as builder_lib
from facerecon import fileio

FLAGS = flags.FLAGS


def build(config: str, source_dir: str, data_dir: str | None = None):
  """Builds one config; returns (the builder, the skipped (path, reason) list)."""
  before = len(builder_lib.skipped())
  builder = builder_lib.Builder(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=source_dir))
  skipped = builder_lib.skipped()[before:]
  report = "".join(f"{path}\t{reason}\n" for path, reason in skipped)
  fileio.write_bytes_atomic(os.path.join(builder.data_dir, "skipped.txt"), report.encode())
  return builder, skipped


def define_flags():
  """Command-line flags (defined only when run as a program)."""
  flags.DEFINE_enum("config", None, [c.name for c in builder_lib.Builder.BUILDER_CONFIGS],
                    "Which source format.")
  flags.DEFINE_string("source_dir", None, "The source folder (tfds' manual dir).")
  flags.DEFINE_string("data_dir", None, "tfds data dir (default ~/tensorflow_datasets).")


def main(argv):
  del argv
  builder, skipped = build(FLAGS.config, FLAGS.source_dir, FLAGS.data_dir)
  sizes = ", ".join(f"{name} {info.num_examples}" for name, info in builder.info.splits.items())
  print(f"built {builder.name}/{FLAGS.config} in {builder.data_dir}: {sizes}; "
        f"{len(skipped)} skipped (listed in skipped.txt)")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "source_dir"])
  app.run(main)
