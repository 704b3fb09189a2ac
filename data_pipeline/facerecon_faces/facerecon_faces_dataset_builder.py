"""facerecon_faces: face images with 3DMM labels, as array_record shards.

Readable with `tfds.data_source` and Grain without TensorFlow installed:
images are stored encoded (JPEG: quality 95 for rendered faces, the original
bytes for photos) and decoded by the input pipeline. The source folder is the manual
dir:

    tfds build data_pipeline/facerecon_faces --config=synthetic --manual_dir=DIR
    python -m data_pipeline.build_dataset --config=synthetic --source_dir=DIR

Configs:
- synthetic: shards from data_pipeline.synthesize, split as in the folder's
  splits.json (data_pipeline.splits). Exact labels, depth, mask, PNCC.
- vggface: crops from data_pipeline.download_vggface (<Name>/<id>.jpg), no
  labels; split 60/20/20 by identity (no person in two splits).
- mat_folders: 300W-LP / AFLW2000-3D style: <stem>.jpg (or .png) beside
  <stem>.mat anywhere below the folder. Pose_Para, Shape_Para and Exp_Para
  are the 235-d label (t3d shifted to 0-based pixels, see
  facerecon.params.read_mat_params); pt3d_68 (AFLW2000-3D) or else pt2d
  (300W-LP) gives the landmarks (minus 1: MATLAB's pixels are 1-based).
  Split 60/20/20 by source photo: 300W-LP's renders of one photo at other
  poses (<photo>_<view>) and in <subset>_Flip stay in one split.

An unreadable image, malformed .mat or corrupt shard is skipped and reported
by name (a warning in the log; `skipped()` lists them, and
data_pipeline.build_dataset writes them to skipped.txt); the build goes on.
"""

import json
import os

from absl import logging
import cv2
import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import splits as splits_lib
from facerecon.data import mat_folders
from facerecon.data import photos

# Rendered faces are stored as JPEG like the photos: it decodes 3x faster
# than PNG, which bounds the input pipeline's throughput; the labels stay
# exact. Full-resolution chroma (4:4:4) keeps the colours the shading loss
# compares.
SYNTHETIC_JPEG_QUALITY = 95


def _common_features():
  return {
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes
      "name": tfds.features.Text(),
  }


def _labelled_features():
  return {
      "params": tfds.features.Tensor(shape=(None,), dtype=np.float32),
      "landmarks": tfds.features.Tensor(shape=(68, 2), dtype=np.float32),
  }


class Builder(tfds.core.GeneratorBasedBuilder):
  """Face images with 3DMM parameter labels."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "mat_folders: split by source photo (300W-LP's views and _Flip copies "
               "share a split); landmarks from pt2d where there is no pt3d_68 (300W-LP).",
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="synthetic", description="Rendered faces, exact labels."),
      tfds.core.BuilderConfig(name="vggface", description="VGG Face crops, no labels."),
      tfds.core.BuilderConfig(name="mat_folders",
                              description="300W-LP / AFLW2000-3D style .jpg + .mat."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Pass the source folder as the manual dir: for 'synthetic' the output of
  `python -m data_pipeline.synthesize` (after `python -m data_pipeline.splits`),
  for 'vggface' the output of `python -m data_pipeline.download_vggface`, for
  'mat_folders' a folder of <stem>.jpg + <stem>.mat files (300W-LP, AFLW2000-3D).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    features = _common_features()
    if self.builder_config.name in ("synthetic", "mat_folders"):
      features.update(_labelled_features())
    if self.builder_config.name == "synthetic":
      features.update({
          "index": tfds.features.Scalar(dtype=np.int64),
          "depth": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="zlib"),
          "mask": tfds.features.Tensor(shape=(None, None), dtype=np.bool_, encoding="zlib"),
          "pncc": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
          "texture": tfds.features.Tensor(shape=(None,), dtype=np.float32),
          "lighting": tfds.features.Tensor(shape=(4,), dtype=np.float32),
          "colour": tfds.features.Tensor(shape=(7,), dtype=np.float32),
      })
    return tfds.core.DatasetInfo(
        builder=self, description="Face images with 3D morphable model labels.",
        features=tfds.features.FeaturesDict(features),
        homepage="https://github.com/facerecon/facerecon")

  def _split_generators(self, dl_manager):
    source = os.fspath(dl_manager.manual_dir)
    if not os.path.isdir(source):
      raise FileNotFoundError(f"manual dir {source} is not a folder")
    make = {"synthetic": self._synthetic_splits, "vggface": self._vggface_splits,
            "mat_folders": self._mat_splits}[self.builder_config.name]
    return {split: self._generate_examples(examples)
            for split, examples in make(source).items()}

  def _generate_examples(self, examples):
    """Each config's splits come as (key, example) generators; see below."""
    yield from examples

  # --- synthetic -----------------------------------------------------------

  def _synthetic_splits(self, source):
    path = os.path.join(source, "splits.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: run python -m data_pipeline.splits "
                              f"--data_dir={source} first")
    with open(path) as f:
      assignment = json.load(f)
    files = splits_lib.shard_files(source)
    return {name: self._synthetic_examples(files, set(assignment[name]))
            for name in splits_lib.SPLITS}

  def _synthetic_examples(self, files, wanted):
    for path in files:
      try:
        with np.load(path) as shard:
          data = {k: shard[k] for k in shard.files}
      except Exception as e:  # a corrupt shard is reported, not fatal
        _report_skip(path, f"unreadable shard ({e})")
        continue
      for k, index in enumerate(data["index"]):
        if int(index) not in wanted:
          continue
        ok, jpeg = cv2.imencode(".jpg", data["image"][k][..., ::-1],
                                [cv2.IMWRITE_JPEG_QUALITY, SYNTHETIC_JPEG_QUALITY,
                                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        yield int(index), {
            "image": jpeg.tobytes(), "name": f"synthetic-{int(index):08d}",
            "index": int(index), "params": data["params"][k], "landmarks": data["landmarks"][k],
            "depth": data["depth"][k], "mask": data["mask"][k], "pncc": data["pncc"][k],
            "texture": data["texture"][k], "lighting": data["lighting"][k],
            "colour": data["colour"][k],
        }

  # --- VGG Face ------------------------------------------------------------

  def _vggface_splits(self, source):
    items = sorted((name, file_name) for name in os.listdir(source)
                   if os.path.isdir(os.path.join(source, name))
                   for file_name in os.listdir(os.path.join(source, name))
                   if photos.is_photo(file_name))
    if not items:
      raise FileNotFoundError(f"no <Name>/<id>.jpg images in {source}")
    groups = splits_lib.split_by_group([name for name, _ in items])
    return {split: self._photo_examples(source, [items[i] for i in positions])
            for split, positions in groups.items()}

  def _photo_examples(self, source, items):
    for name, file_name in items:
      path = os.path.join(source, name, file_name)
      image = _read_image_bytes(path)
      if image is not None:
        yield f"{name}/{file_name}", {"image": image, "name": f"{name}/{file_name}"}

  # --- 300W-LP / AFLW2000-3D -------------------------------------------------

  def _mat_splits(self, source):
    return {split: self._mat_examples(source, pairs)
            for split, pairs in mat_split_pairs(source).items()}

  def _mat_examples(self, source, pairs):
    for image_path, mat_path in pairs:
      image = _read_image_bytes(image_path)
      if image is None:
        continue
      try:
        params, landmarks = mat_folders.read_labels(mat_path)
      except (ValueError, KeyError, OSError) as e:
        _report_skip(mat_path, str(e))
        continue
      name = os.path.relpath(image_path, source)
      yield name, {"image": image, "name": name, "params": params, "landmarks": landmarks}


def mat_split_pairs(source: str, seed: int = 1234) -> dict:
  """The (image, .mat) pairs below `source` split 60/20/20 by source photo:
  300W-LP's renders of one photo at other poses, and their mirrored copies
  in <subset>_Flip, are near-duplicates, so they share a split
  (`mat_folders.source_photo`)."""
  pairs = mat_folders.find_pairs(source)
  groups = [mat_folders.source_photo(image_path, source) for image_path, _ in pairs]
  positions = splits_lib.split_by_group(groups, seed=seed)
  return {split: [pairs[i] for i in p] for split, p in positions.items()}


_SKIPPED = []


def _report_skip(path: str, reason: str) -> None:
  logging.warning("skipped %s: %s", path, reason)
  _SKIPPED.append((path, reason))


def skipped() -> list[tuple[str, str]]:
  """(path, reason) of everything skipped by builds in this process."""
  return list(_SKIPPED)


def _read_image_bytes(path: str) -> bytes | None:
  """The file's bytes if they decode as an image; else reported and None."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    _report_skip(path, f"unreadable ({e})")
    return None
  if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
    _report_skip(path, "not a decodable image")
    return None
  return data
