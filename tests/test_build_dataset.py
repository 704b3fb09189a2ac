"""The facerecon_faces tfds builder: all three configs, array_record, read
back through tfds.data_source without TensorFlow."""

import os

import cv2
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from data_pipeline import build_dataset
from data_pipeline import splits
from data_pipeline import synthesize


def _read_all(data_dir, config):
  source = tfds.data_source(f"facerecon_faces/{config}", data_dir=data_dir)
  return {name: [split[i] for i in range(len(split))] for name, split in source.items()}


def _jpeg(value, size=(20, 24)):
  image = np.full(size + (3,), value, np.uint8)
  return cv2.imencode(".jpg", image)[1].tobytes()


def test_tensorflow_is_not_installed():
  """The point of array_record + data_source: no TensorFlow needed."""
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FACERECON_TFDS_PYTHON"),
                    reason="set FACERECON_TFDS_PYTHON to a Python with the [tfds-cli] extra")
def test_tfds_build_command_line(tmp_path):
  """`tfds build` (which needs TensorFlow; run in another environment, e.g.
  FACERECON_TFDS_PYTHON=/path/venv/bin/python) writes the same examples as
  the Python entry point, readable here without TensorFlow."""
  import subprocess

  source = str(tmp_path / "synthetic")
  settings = synthesize.Settings(num_faces=10, seed=1, image_size=16, shard_size=5,
                                 model="embedded:25", backgrounds=())
  synthesize.synthesize(settings, source)
  splits.write_splits_and_statistics(source, (0.6, 0.2, 0.2), seed=2)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [os.environ["FACERECON_TFDS_PYTHON"], "-m", "tensorflow_datasets.scripts.cli.main",
       "build", os.path.join(root, "data_pipeline", "facerecon_faces"), "--config=synthetic",
       f"--manual_dir={source}", f"--data_dir={tmp_path / 'cli'}", "--file_format=array_record"],
      cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  build_dataset.build("synthetic", source, str(tmp_path / "python"))
  by_cli, by_python = _read_all(str(tmp_path / "cli"), "synthetic"), _read_all(
      str(tmp_path / "python"), "synthetic")
  assert sorted(by_cli) == sorted(by_python) == ["test", "train", "val"]
  for split in by_cli:
    key = lambda example: int(example["index"])
    for a, b in zip(sorted(by_cli[split], key=key), sorted(by_python[split], key=key)):
      assert sorted(a) == sorted(b)
      for field in a:
        np.testing.assert_array_equal(np.asarray(a[field]), np.asarray(b[field]), err_msg=field)


def test_synthetic_config(tmp_path):
  source = str(tmp_path / "synthetic")
  settings = synthesize.Settings(num_faces=10, seed=1, image_size=16, shard_size=5,
                                 model="embedded:25", backgrounds=())
  synthesize.synthesize(settings, source)
  splits.write_splits_and_statistics(source, (0.6, 0.2, 0.2), seed=2)
  data_dir = str(tmp_path / "tfds")
  builder, skipped = build_dataset.build("synthetic", source, data_dir)
  assert skipped == []
  examples = _read_all(data_dir, "synthetic")
  assert {k: len(v) for k, v in examples.items()} == {"train": 6, "val": 2, "test": 2}
  shard = np.load(synthesize.shard_path(source, 0))
  by_index = {int(e["index"]): e for split in examples.values() for e in split}
  example = by_index[3]
  image = cv2.imdecode(np.frombuffer(example["image"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
  # JPEG quality 95: close to the rendered image.
  assert np.abs(image.astype(int) - shard["image"][3]).mean() < 3
  np.testing.assert_array_equal(example["params"], shard["params"][3])
  np.testing.assert_array_equal(example["depth"], shard["depth"][3])
  np.testing.assert_array_equal(example["mask"], shard["mask"][3])
  assert os.path.exists(os.path.join(builder.data_dir, "skipped.txt"))
  with pytest.raises(FileNotFoundError, match="splits.json"):
    os.remove(os.path.join(source, "splits.json"))
    build_dataset.build("synthetic", source, str(tmp_path / "tfds2"))


def test_vggface_config_splits_by_identity_and_skips_bad_images(tmp_path):
  source = tmp_path / "vgg"
  for p in range(10):
    person = source / f"Person_{p}"
    person.mkdir(parents=True)
    for i in range(3):
      (person / f"{i}.jpg").write_bytes(_jpeg(20 * p + i))
  (source / "Person_3" / "9.jpg").write_bytes(b"this is not a jpeg")
  data_dir = str(tmp_path / "tfds")
  _, skipped = build_dataset.build("vggface", str(source), data_dir)
  assert [os.path.basename(p) for p, _ in skipped] == ["9.jpg"]
  examples = _read_all(data_dir, "vggface")
  assert sum(len(v) for v in examples.values()) == 30
  people = {name: {e["name"].decode().split("/")[0] for e in split}
            for name, split in examples.items()}
  assert not (people["train"] & people["val"] or people["train"] & people["test"]
              or people["val"] & people["test"])


def test_mat_folders_config_reads_labels_and_skips_malformed(tmp_path):
  source = tmp_path / "aflw"
  source.mkdir()
  rng = np.random.default_rng(0)
  for k in range(5):
    (source / f"image{k:05d}.jpg").write_bytes(_jpeg(40 * k))
    scipy.io.savemat(source / f"image{k:05d}.mat", {
        "Pose_Para": np.array([[0.1, 0.2, 0.3, 50.0 + k, 60.0, 1.0, 1e-3]]),
        "Shape_Para": rng.normal(size=(199, 1)), "Exp_Para": rng.normal(size=(29, 1)),
        "pt3d_68": np.vstack([np.arange(68) + 1.0, np.arange(68) + 11.0, np.zeros(68)]),
    })
  (source / "broken.jpg").write_bytes(_jpeg(9))
  scipy.io.savemat(source / "broken.mat", {"Pose_Para": np.zeros((1, 7))})  # no Shape_Para
  (source / "alone.jpg").write_bytes(_jpeg(9))  # no .mat: not a pair, ignored
  data_dir = str(tmp_path / "tfds")
  _, skipped = build_dataset.build("mat_folders", str(source), data_dir)
  assert len(skipped) == 1 and skipped[0][0].endswith("broken.mat")
  assert "Shape_Para" in skipped[0][1]
  examples = [e for split in _read_all(data_dir, "mat_folders").values() for e in split]
  assert len(examples) == 5
  first = next(e for e in examples if e["name"] == b"image00000.jpg")
  assert first["params"].shape == (235,)
  np.testing.assert_allclose(first["params"][3:5], [49.0, 59.0])  # 0-based pixels
  np.testing.assert_allclose(first["landmarks"][:, 0], np.arange(68))
  np.testing.assert_allclose(first["landmarks"][:, 1], np.arange(68) + 10)


def test_mat_folders_split_keeps_each_source_photo_in_one_split(tmp_path):
  """300W-LP renders each photo at many poses and again in <subset>_Flip:
  splitting by file put views of one face in train and test."""
  from data_pipeline.facerecon_faces import facerecon_faces_dataset_builder as builder

  source = tmp_path / "300W_LP"
  for subset in ("HELEN", "HELEN_Flip", "AFW", "AFW_Flip"):
    (source / subset).mkdir(parents=True)
    for photo in range(8):
      for view in range(6):
        stem = source / subset / f"{subset.split('_')[0]}_{1000 + photo}_1_{view}"
        stem.with_suffix(".jpg").touch()
        stem.with_suffix(".mat").touch()
  (source / "AFLW2000").mkdir()
  for k in range(10):  # AFLW2000-3D names: one photo per file
    (source / "AFLW2000" / f"image{k:05d}.jpg").touch()
    (source / "AFLW2000" / f"image{k:05d}.mat").touch()
  parts = builder.mat_split_pairs(str(source))
  # The same pairs for the same folder: the split is seeded.
  assert parts == builder.mat_split_pairs(str(source))
  everything = sorted(p for pairs in parts.values() for p in pairs)
  assert everything == sorted(builder.mat_folders.find_pairs(str(source)))
  assert len(everything) == 4 * 8 * 6 + 10

  def photo(pair):  # subset without _Flip, and the stem without its view
    subset, name = pair[0].split(os.sep)[-2:]
    return subset.removesuffix("_Flip"), name.rsplit("_", 1)[0] if "_" in name else name
  owners = {}
  for split, pairs in parts.items():
    assert pairs, f"split {split} is empty"
    for pair in pairs:
      owners.setdefault(photo(pair), set()).add(split)
  assert len(owners) == 2 * 8 + 10
  assert all(len(splits_of) == 1 for splits_of in owners.values()), owners
