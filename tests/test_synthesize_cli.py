"""data_pipeline.synthesize: shards, resume, settings checks, photo backgrounds."""

import json
import os
import subprocess
import sys

from conftest import ROOT
import cv2
import numpy as np
import pytest

from configs import real
from data_pipeline import synthesize
from facerecon import face_models
from facerecon import params as params_lib
from facerecon.data import sources

MODEL = "embedded:25"  # small: fast to build and render


def _settings(**changes):
  base = dict(num_faces=10, seed=3, image_size=32, shard_size=4, model=MODEL, backgrounds=())
  base.update(changes)
  return synthesize.Settings(**base)


def _load(path):
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def test_writes_shards_and_resumes(tmp_path):
  # 7 faces, shards of 3, batches of 3: two batch shapes (3 and the last
  # shard's 1), so two compiled programs.
  settings = _settings(num_faces=7, shard_size=3)
  out = str(tmp_path / "data")
  summary = synthesize.synthesize(settings, out, batch_size=3)
  assert summary["shards_written"] == 3 and summary["faces"] == 7
  assert sorted(os.listdir(out)) == ["metadata.json", "shard-00000.npz", "shard-00001.npz",
                                     "shard-00002.npz"]
  shards = [_load(synthesize.shard_path(out, s)) for s in range(3)]
  np.testing.assert_array_equal(np.concatenate([s["index"] for s in shards]), np.arange(7))
  last = shards[2]
  model = face_models.load(MODEL)
  assert last["image"].shape == (1, 32, 32, 3) and last["image"].dtype == np.uint8
  assert last["params"].shape == (1, model.layout.size)
  assert last["pncc"].dtype == np.uint8 and last["mask"].dtype == bool
  assert last["landmarks"].shape == (1, 68, 2)
  metadata = json.load(open(os.path.join(out, "metadata.json")))
  assert metadata["settings"]["seed"] == 3 and "prior" in metadata

  # A second run skips everything; a lost shard comes back identical.
  before = os.path.getmtime(synthesize.shard_path(out, 0))
  summary = synthesize.synthesize(settings, out, batch_size=3)
  assert summary["shards_written"] == 0 and summary["shards_skipped"] == 3
  assert os.path.getmtime(synthesize.shard_path(out, 0)) == before
  # A lost shard comes back bitwise identical with the same batching, and
  # the same to float rounding with another (XLA vectorises differently).
  os.remove(synthesize.shard_path(out, 1))
  assert synthesize.synthesize(settings, out, batch_size=3)["shards_written"] == 1
  again = _load(synthesize.shard_path(out, 1))
  for key in shards[1]:
    np.testing.assert_array_equal(again[key], shards[1][key], err_msg=key)
  os.remove(synthesize.shard_path(out, 1))
  synthesize.synthesize(settings, out, batch_size=1)
  other = _load(synthesize.shard_path(out, 1))
  np.testing.assert_allclose(other["params"], shards[1]["params"], rtol=1e-6)
  np.testing.assert_allclose(other["depth"], shards[1]["depth"], rtol=1e-5, atol=1e-4)
  assert np.mean(np.abs(other["image"].astype(int) - shards[1]["image"])) < 0.5


def test_refuses_other_settings_and_corrupt_metadata(tmp_path):
  out = str(tmp_path / "data")
  synthesize.synthesize(_settings(num_faces=4), out)
  with pytest.raises(ValueError, match="seed"):
    synthesize.synthesize(_settings(num_faces=4, seed=4), out)
  with open(os.path.join(out, "metadata.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match="metadata.json is corrupt"):
    synthesize.synthesize(_settings(num_faces=4), out)


def test_photo_backgrounds(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  green = np.zeros((60, 80, 3), np.uint8)
  green[...] = (30, 200, 10)  # BGR, as OpenCV writes
  cv2.imwrite(str(photos / "a.png"), green)
  cv2.imwrite(str(photos / "b.jpg"), green)
  (photos / "notes.txt").write_text("not an image")
  names = synthesize.list_backgrounds(str(photos))
  assert names == ("a.png", "b.jpg")
  out = str(tmp_path / "data")
  synthesize.synthesize(_settings(num_faces=4, backgrounds=names), out, str(photos))
  shard = _load(synthesize.shard_path(out, 0))
  background = shard["image"][~shard["mask"]].astype(int)
  # RGB of the photo, give or take noise and JPEG.
  np.testing.assert_allclose(background.mean(axis=0), [10, 200, 30], atol=4)
  with pytest.raises(FileNotFoundError, match="no images"):
    synthesize.list_backgrounds(str(tmp_path / "data"))
  with pytest.raises(FileNotFoundError, match="not a folder"):
    synthesize.list_backgrounds(str(tmp_path / "missing"))


@pytest.mark.slow
def test_command_line(tmp_path):
  out = tmp_path / "cli"
  result = subprocess.run(
      [sys.executable, "-m", "data_pipeline.synthesize", f"--output_dir={out}",
       "--num_faces=5", "--shard_size=5", "--image_size=24", f"--model={MODEL}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "5 faces in 1 new shard(s)" in result.stdout
  shard = _load(out / "shard-00000.npz")
  face = params_lib.split(shard["params"], face_models.load(MODEL).layout)
  assert np.all(np.isfinite(face.pose))
  bad = subprocess.run(
      [sys.executable, "-m", "data_pipeline.synthesize", f"--output_dir={out}",
       "--num_faces=0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "num_faces" in bad.stderr


def test_a_config_decides_model_size_and_prior():
  """--config: configs/real.py's model, image size and prior (faces made
  with it: test_a_config_prior_with_its_scene)."""
  config = real.get_config()
  faces = synthesize.config_faces(config)
  assert faces["model"] == "ict" and faces["image_size"] == config.image_size
  settings = _settings(**faces)
  assert settings.face_prior() == sources.face_prior(config)
  assert settings.face_prior().procedural_albedo and settings.face_prior().photo_backgrounds > 0
  config.synthetic.prior.hairs = 1.0
  with pytest.raises(ValueError, match="hairs"):
    synthesize.config_faces(config)


def test_a_config_prior_with_its_scene(tmp_path):
  """Settings.prior (--config): the shards hold that prior's faces, its
  host-side scene included, and a folder made with another prior is refused."""
  prior = synthesize.synthetic.FacePrior(procedural_albedo=True, occluders=1.0, grey=1.0)
  settings = _settings(num_faces=4, prior=json.dumps(
      synthesize.dataclasses.asdict(prior), sort_keys=True))
  assert settings.face_prior() == prior
  out = str(tmp_path / "real")
  synthesize.synthesize(settings, out)
  shard = _load(synthesize.shard_path(out, 0))
  image = shard["image"].astype(int)
  assert np.abs(image[..., 0] - image[..., 1]).max() <= 1  # grey photos
  plain = str(tmp_path / "plain")
  synthesize.synthesize(_settings(num_faces=4), plain)
  np.testing.assert_array_equal(_load(synthesize.shard_path(plain, 0))["params"],
                                shard["params"])  # the same faces, other pictures
  with open(os.path.join(out, "metadata.json")) as f:
    assert json.load(f)["prior"]["occluders"] == 1.0
  with pytest.raises(ValueError, match="other settings"):
    synthesize.synthesize(_settings(num_faces=4), out)
