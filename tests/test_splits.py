import json
import os

import numpy as np
import pytest

from data_pipeline import splits
from data_pipeline import synthesize
from facerecon.data import normalization


def test_split_indices_partition_deterministically():
  parts = splits.split_indices(1003, seed=1234)
  assert [len(parts[k]) for k in splits.SPLITS] == [603, 200, 200]
  everything = np.concatenate([parts[k] for k in splits.SPLITS])
  np.testing.assert_array_equal(np.sort(everything), np.arange(1003))
  again = splits.split_indices(1003, seed=1234)
  other = splits.split_indices(1003, seed=1)
  for k in splits.SPLITS:
    np.testing.assert_array_equal(parts[k], again[k])
  assert not np.array_equal(parts["val"], other["val"])
  with pytest.raises(ValueError, match="summing to 1"):
    splits.split_indices(10, (0.5, 0.2, 0.2))


def test_split_by_group_keeps_people_apart():
  rng = np.random.default_rng(0)
  people = [f"person_{i}" for i in range(50)]
  groups = np.repeat(people, rng.integers(5, 40, size=50))
  parts = splits.split_by_group(groups, (0.6, 0.2, 0.2), seed=3)
  everything = np.concatenate([parts[k] for k in splits.SPLITS])
  np.testing.assert_array_equal(np.sort(everything), np.arange(len(groups)))
  owners = [set(groups[parts[k]]) for k in splits.SPLITS]
  assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
  shares = np.array([len(parts[k]) for k in splits.SPLITS]) / len(groups)
  np.testing.assert_allclose(shares, [0.6, 0.2, 0.2], atol=0.06)


def test_statistics_stream_equals_direct_computation(tmp_path):
  rng = np.random.default_rng(1)
  params = rng.normal(size=(30, 5)) * [1e5, 1.0, 0.0, 3.0, 1e-3] + [5e5, 0, 7, 0, 0]
  images = rng.integers(0, 256, size=(30, 4, 6, 3), dtype=np.uint8)
  accumulator = normalization.StatisticsAccumulator()
  for start in range(0, 30, 7):
    accumulator.add(params[start:start + 7], images[start:start + 7])
  stats = accumulator.result()
  np.testing.assert_allclose(stats.param_mean, params.mean(0), rtol=1e-6)
  np.testing.assert_allclose(stats.param_std[[0, 1, 3, 4]], params.std(0)[[0, 1, 3, 4]],
                             rtol=1e-4)
  assert stats.param_std[2] == normalization.MIN_STD  # constant parameter
  np.testing.assert_allclose(stats.mean_image, images.mean(0) / 255.0, rtol=1e-6)
  normalized = normalization.normalize_params(params.astype(np.float32), stats)
  np.testing.assert_allclose(np.asarray(normalized)[:, [0, 1, 3]].std(0), 1.0, rtol=1e-3)
  np.testing.assert_allclose(
      np.asarray(normalization.denormalize_params(normalized, stats)), params, rtol=1e-5,
      atol=1e-3)

  path = tmp_path / "statistics.npz"
  normalization.save_statistics(stats, path)
  loaded = normalization.load_statistics(path)
  np.testing.assert_array_equal(loaded.param_std, stats.param_std)
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    normalization.load_statistics(tmp_path / "nope.npz")
  np.savez(tmp_path / "bad.npz", param_mean=np.zeros(3), param_std=np.zeros(3),
           mean_image=np.zeros((2, 2, 3)), count=np.int64(1))
  with pytest.raises(ValueError, match="bad.npz"):
    normalization.load_statistics(tmp_path / "bad.npz")
  with pytest.raises(ValueError, match="NaN"):
    accumulator.add(np.full((1, 5), np.nan), images[:1])


def test_splits_and_statistics_of_synthetic_shards(tmp_path):
  data = str(tmp_path / "data")
  settings = synthesize.Settings(num_faces=10, seed=0, image_size=16, shard_size=4,
                                 model="embedded:25", backgrounds=())
  synthesize.synthesize(settings, data)
  parts, stats = splits.write_splits_and_statistics(data, (0.6, 0.2, 0.2), seed=5)
  with open(os.path.join(data, "splits.json")) as f:
    written = json.load(f)
  assert [len(written[k]) for k in splits.SPLITS] == [6, 2, 2]
  assert sorted(written["train"] + written["val"] + written["test"]) == list(range(10))
  # The statistics are of the train samples only.
  shards = [np.load(p) for p in splits.shard_files(data)]
  params = np.concatenate([s["params"] for s in shards])
  index = np.concatenate([s["index"] for s in shards])
  train = np.isin(index, written["train"])
  np.testing.assert_allclose(stats.param_mean, params[train].mean(0), rtol=1e-5, atol=1e-5)
  assert int(stats.count) == 6
  assert normalization.load_statistics(os.path.join(data, "statistics.npz")).count == 6


def test_truncated_or_incomplete_shard_is_named(tmp_path):
  """A shard cut short by a killed copy (zipfile.BadZipFile inside np.load),
  or one missing a field, is a ValueError that names the shard."""
  for s in range(2):
    np.savez(tmp_path / f"shard-{s:05d}.npz", index=np.arange(4 * s, 4 * s + 4),
             params=np.ones((4, 5), np.float32), image=np.zeros((4, 8, 8, 3), np.uint8))
  path = tmp_path / "shard-00001.npz"
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"shard-00001\.npz"):
    splits.write_splits_and_statistics(str(tmp_path))
  files = splits.shard_files(str(tmp_path))
  with pytest.raises(ValueError, match=r"shard-00001\.npz"):
    splits.train_statistics(files, [0, 1, 4, 5])
  np.savez(path, index=np.arange(4, 8), params=np.ones((4, 5), np.float32))  # no image
  with pytest.raises(ValueError, match=r"shard-00001\.npz.*image"):
    splits.train_statistics(files, [0, 1, 4, 5])
