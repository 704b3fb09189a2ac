r"""Deterministic train/val/test splits and training-set statistics.

    python -m data_pipeline.splits --data_dir=DIR [--ratios=0.6,0.2,0.2] [--seed=1234]

For a folder of synthetic shards (data_pipeline.synthesize): writes
DIR/splits.json (sample indices of each split) and DIR/statistics.npz
(per-parameter mean/std and the mean image of the train split; see
facerecon.data.normalization). For data with identities (VGG Face), use
`split_by_group` so that no person is in two splits.
"""

import glob
import json
import os

from absl import app
from absl import flags
import numpy as np

from facerecon import fileio
from facerecon.data import normalization

SPLITS = ("train", "val", "test")


def _check_ratios(ratios) -> np.ndarray:
  ratios = np.asarray(ratios, np.float64)
  if ratios.shape != (3,) or np.any(ratios < 0) or not np.isclose(ratios.sum(), 1.0):
    raise ValueError(f"split ratios must be 3 non-negative numbers summing to 1, got "
                     f"{ratios.tolist()}")
  return ratios


def split_indices(num: int, ratios=(0.6, 0.2, 0.2), seed: int = 1234) -> dict:
  """A seeded partition of range(num): {'train', 'val', 'test'} -> sorted indices.
  Sizes are the ratios rounded down; the remainder goes to train."""
  ratios = _check_ratios(ratios)
  order = np.random.default_rng(seed).permutation(num)
  val, test = (int(num * r) for r in ratios[1:])
  train = num - val - test
  parts = np.split(order, [train, train + val])
  return {name: np.sort(part) for name, part in zip(SPLITS, parts)}


def split_by_group(groups, ratios=(0.6, 0.2, 0.2), seed: int = 1234) -> dict:
  """Splits samples so that each group (a person) falls in one split only.

  Groups are shuffled with the seed and dealt out in order: each goes to the
  split furthest below its target share of samples. Returns sorted indices.
  """
  ratios = _check_ratios(ratios)
  groups = np.asarray(groups)
  names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
  targets = ratios * len(groups)
  filled = np.zeros(3)
  assignment = np.empty(len(names), np.int64)
  for g in np.random.default_rng(seed).permutation(len(names)):
    split = int(np.argmax(targets - filled))
    assignment[g] = split
    filled[split] += sizes[g]
  sample_split = assignment[inverse]
  return {name: np.nonzero(sample_split == k)[0] for k, name in enumerate(SPLITS)}


def shard_files(data_dir: str) -> list[str]:
  files = sorted(glob.glob(os.path.join(data_dir, "shard-*.npz")))
  if not files:
    raise FileNotFoundError(f"no shard-*.npz files in {data_dir}")
  return files


def read_shard(path: str, fields) -> dict:
  """{field: array} of one shard; any failure to read it (a truncated copy
  raises zipfile.BadZipFile, a missing field KeyError) is a ValueError
  naming the shard."""
  try:
    with np.load(path) as shard:
      return {name: shard[name] for name in fields}
  except Exception as e:  # np.load raises many types for a bad file
    raise ValueError(f"cannot read shard {path}: {type(e).__name__}: {e}") from e


def train_statistics(files, train_indices) -> normalization.DataStatistics:
  """Statistics of the train samples, streamed shard by shard."""
  train = np.asarray(train_indices)
  accumulator = normalization.StatisticsAccumulator()
  for path in files:
    shard = read_shard(path, ("index", "params", "image"))
    keep = np.isin(shard["index"], train)
    if keep.any():
      try:
        accumulator.add(shard["params"][keep], shard["image"][keep])
      except ValueError as e:  # e.g. NaN labels: say which shard holds them
        raise ValueError(f"shard {path}: {e}") from e
  return accumulator.result()


def write_splits_and_statistics(data_dir: str, ratios=(0.6, 0.2, 0.2), seed: int = 1234):
  files = shard_files(data_dir)
  indices = np.concatenate([read_shard(path, ("index",))["index"] for path in files])
  if len(np.unique(indices)) != len(indices):
    raise ValueError(f"{data_dir}: shards repeat sample indices")
  positions = split_indices(len(indices), ratios, seed)
  splits = {name: np.sort(indices[p]).tolist() for name, p in positions.items()}
  with fileio.atomic_write(os.path.join(data_dir, "splits.json"), "w") as f:
    json.dump({"seed": seed, "ratios": list(map(float, ratios)), **splits}, f)
  stats = train_statistics(files, splits["train"])
  normalization.save_statistics(stats, os.path.join(data_dir, "statistics.npz"))
  return splits, stats


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so that the
  pipeline modules can be imported together)."""
  flags.DEFINE_string("data_dir", None, "Folder of shard-*.npz files.")
  flags.DEFINE_list("ratios", ["0.6", "0.2", "0.2"], "train,val,test fractions.")
  flags.DEFINE_integer("seed", 1234, "Split seed (the original used 1234).")


def main(argv):
  del argv
  ratios = [float(r) for r in FLAGS.ratios]
  splits, stats = write_splits_and_statistics(FLAGS.data_dir, ratios, FLAGS.seed)
  sizes = ", ".join(f"{name} {len(splits[name])}" for name in SPLITS)
  print(f"splits: {sizes}; statistics of {int(stats.count)} train samples written to "
        f"{FLAGS.data_dir}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["data_dir"])
  app.run(main)
