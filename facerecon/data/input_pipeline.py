"""Grain input pipeline: facerecon_faces (tfds array_record) or folders of
photos -> host batches.

On the host (`make_dataset`), per host: its shard of the examples, seeded
shuffle, repeat, decode, the geometric augmentation that must update the
labels (scale/shift jitter moves f, t3d, the landmarks and the
depth/mask/PNCC maps with the image), label normalisation, batching and
optional worker processes. Images stay uint8, a quarter of the bytes to
move; colour jitter and image normalisation run on the device
(`facerecon.data.preprocessing`).

The iterator's state (`get_state` / `set_state`) is what a checkpoint
stores, so a resumed run continues exactly where it stopped. Reading needs
no TensorFlow.
"""

import functools
import os

from absl import flags
import cv2
import grain
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from facerecon import camera
from facerecon.data import cropping
from facerecon.data import normalization
from facerecon.data import photos
from facerecon.data.preprocessing import Augmentation

# What training reads by default: the render loss renders depth from the
# labels, so the stored depth/mask/PNCC maps are only for evaluation.
TRAINING_FEATURES = ("image", "params", "landmarks")


def open_source(name: str, split: str, data_dir: str | None = None,
                features=TRAINING_FEATURES):
  """A random-access source of `split` that decodes only `features`.

  Plain features (encoded images, numbers, fixed-size arrays) are read
  straight from the split's array_record files and their tf.train.Example
  protos: tfds' generic parser converts every feature of an example (about
  0.4 ms each, a third of the host's time per image). Other features (the
  zlib-compressed maps) go through `tfds.data_source` with the rest skipped.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  keys = tuple(k for k in builder.info.features if k in features)
  missing = sorted(set(features) - set(builder.info.features))
  if missing:
    raise KeyError(f"{name} has no feature(s) {', '.join(missing)}; it has "
                   f"{', '.join(builder.info.features)}")
  plain = {}
  for key in keys:
    feature = builder.info.features[key]
    if (isinstance(feature, tfds.features.Tensor)
        and getattr(feature, "_encoding", tfds.features.Encoding.NONE)
        == tfds.features.Encoding.NONE):
      plain[key] = (feature.np_dtype, feature.shape)
  if len(plain) == len(keys) and split in builder.info.splits:  # not "train[:10%]"
    paths = [os.fspath(p) for p in builder.info.splits[split].filepaths]
    return _ExampleFeatures(grain.sources.ArrayRecordDataSource(paths), plain)
  skip = {k: tfds.decode.SkipDecoding() for k in builder.info.features if k not in features}
  source = tfds.data_source(name, split=split, data_dir=data_dir, decoders=skip)
  return _SelectedFeatures(source, keys)


class _ExampleFeatures:
  """Serialized tf.train.Examples -> dicts of some plain features, parsed
  without tfds' per-feature machinery (and without TensorFlow)."""

  def __init__(self, records, features: dict):
    self._records, self._features = records, features

  def __len__(self):
    return len(self._records)

  def __getitem__(self, index):
    feature_map = tf_example_pb2.Example.FromString(self._records[index]).features.feature
    out = {}
    for key, (dtype, shape) in self._features.items():
      feature = feature_map[key]
      if dtype == np.object_:  # bytes: an encoded image or a name
        out[key] = feature.bytes_list.value[0]
        continue
      kind = "float_list" if np.issubdtype(dtype, np.floating) else "int64_list"
      values = np.asarray(getattr(feature, kind).value, dtype)
      out[key] = values.reshape([-1 if d is None else d for d in shape]) if shape else values[0]
    return out


class _SelectedFeatures:
  """A random-access source keeping only some keys of each example."""

  def __init__(self, source, keys):
    self._source, self._keys = source, keys

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    example = self._source[index]
    return {k: example[k] for k in self._keys}


class FolderSource:
  """A random-access source of the face photos in a folder (any sizes, grey
  or colour): each becomes a centred square crop resized to `size` x `size`
  RGB uint8, {"image": array}. For FineNet's unlabelled stage. The files,
  sorted by name, are split deterministically: every `val_every`-th is
  'val', the rest 'train'."""

  def __init__(self, folder: str, size: int, split: str = "train", val_every: int = 10):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"photo folder {folder} does not exist")
    names = sorted(n for n in os.listdir(folder) if photos.is_photo(n))
    if split not in ("train", "val"):
      raise ValueError(f"FolderSource: unknown split '{split}' (use 'train' or 'val')")
    picked = [n for i, n in enumerate(names)
              if (i % val_every == val_every - 1) == (split == "val")]
    if not picked:
      raise ValueError(f"photo folder {folder} has no {split} images ({len(names)} image "
                       f"files of {', '.join(photos.IMAGE_SUFFIXES)})")
    self._paths = [os.path.join(folder, n) for n in picked]
    self._size = size

  def __len__(self):
    return len(self._paths)

  def __getitem__(self, index):
    image = photos.read_photo(self._paths[index])
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top:top + side, left:left + side]
    interpolation = cv2.INTER_AREA if side > self._size else cv2.INTER_LINEAR
    return {"image": cv2.resize(crop, (self._size, self._size), interpolation=interpolation)}


def _warp(array, matrix, size, nearest=False):
  return cv2.warpAffine(array, matrix, (size[1], size[0]),
                        flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT if nearest else cv2.BORDER_REFLECT_101)


def _labels_after_similarity(labels: dict, scale, offset, height: int,
                             new_height: int | None = None) -> dict:
  """'params' and 'landmarks' moved with their image (of `height` rows)
  under p' = scale * p + offset (`camera.pose_after_image_similarity`;
  `new_height`: the mapped image's height when it differs)."""
  pose = camera.pose_after_image_similarity(labels["params"][:7], scale, offset, height,
                                            new_height=new_height)
  return {"params": np.concatenate([pose, labels["params"][7:]]).astype(np.float32),
          "landmarks": (scale * labels["landmarks"] + offset).astype(np.float32)}


def _crop_to_size(image: np.ndarray, labels: dict, size: int) -> np.ndarray:
  """The `size` x `size` network crop of a photo of another size: from its
  landmarks (`facerecon.data.cropping`, the rule reconstruct and evaluate use),
  labels mapped with it; unlabelled photos: the centred square."""
  height, width = image.shape[:2]
  if "landmarks" in labels:
    square = cropping.square_from_landmarks(labels["landmarks"])
  else:
    square = cropping.centred_square(height, width)
  scale, offset = cropping.crop_transform(square, size)
  if "params" in labels:
    labels.update(_labels_after_similarity(labels, scale, offset, height, new_height=size))
  return cropping.crop(image, square, size)


def prepare_example(example: dict, rng: np.random.Generator | None,
                    augmentation: Augmentation,
                    statistics: normalization.DataStatistics | None,
                    image_size: int | None = None) -> dict:
  """One decoded example with the geometric augmentation applied and the
  label normalised (numpy; runs in workers). The image stays uint8. With
  `image_size`, images of another size (e.g. 300W-LP's 450x450 photos) are
  first cropped to it (`_crop_to_size`); their per-pixel maps are dropped."""
  warp = rng is not None and augmentation.geometric
  # OpenCV warps four channels about twice as fast as three (SIMD).
  image = example["image"]
  if isinstance(image, np.ndarray):  # decoded already (FolderSource)
    image = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA) if warp else image
  else:
    image = photos.decode_image(image, channels=4 if warp else 3)
  height, width = image.shape[:2]
  out = {}
  labelled = "params" in example
  if labelled:
    out["params"] = np.asarray(example["params"], np.float32)
    out["landmarks"] = np.asarray(example["landmarks"], np.float32)
  maps = {k: np.asarray(example[k]) for k in ("depth", "mask", "pncc") if k in example}
  if image_size is not None and (height, width) != (image_size, image_size):
    image = _crop_to_size(image, out, image_size)
    height, width, maps = image_size, image_size, {}
  if warp:
    scale = rng.uniform(1.0 - augmentation.scale, 1.0 + augmentation.scale)
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = rng.uniform(-augmentation.shift, augmentation.shift, 2) * np.array([width, height])
    offset = centre * (1.0 - scale) + shift  # p' = scale * p + offset
    matrix = np.array([[scale, 0.0, offset[0]], [0.0, scale, offset[1]]])
    image = cv2.cvtColor(_warp(image, matrix, (height, width)), cv2.COLOR_RGBA2RGB)
    if labelled:
      out.update(_labels_after_similarity(out, scale, offset, height))
    if "depth" in maps:  # depth scales with f; off-face pixels stay 0
      maps["depth"] = _warp(maps["depth"], matrix, (height, width), nearest=True) * scale
    for key in ("mask", "pncc"):
      if key in maps:
        warped = _warp(maps[key].astype(np.uint8), matrix, (height, width), nearest=True)
        maps[key] = warped.astype(maps[key].dtype)
  if statistics is not None and labelled:
    out["params_normalized"] = np.asarray(
        normalization.normalize_params(out["params"], statistics), np.float32)
  out["image"] = np.ascontiguousarray(image)  # uint8; see facerecon.data.preprocessing
  out.update({k: v.astype(np.float32) if k == "depth" else v for k, v in maps.items()})
  return out


def make_dataset(source, *, batch_size: int, seed: int = 0, train: bool = True,
                 statistics: normalization.DataStatistics | None = None,
                 augmentation: Augmentation = Augmentation(), num_epochs: int | None = None,
                 process_index: int = 0, process_count: int = 1,
                 num_workers: int = 0, num_threads: int | None = None,
                 image_size: int | None = None) -> grain.IterDataset:
  """The batches of one host. `source`: a random-access data source such as
  `tfds.data_source('facerecon_faces/synthetic')['train']`.

  Training shuffles (seeded, differently each epoch), repeats (forever by
  default), augments and drops the last partial batch; evaluation does
  none of these. `batch_size` is per host; each of `process_count` hosts
  reads its own equal share of the examples. `num_threads` prepare batches in
  each process (default: the cores per process; decoding and warping release
  the GIL, and more threads than cores only contend).
  """
  dataset = grain.MapDataset.source(source)
  # Every host gets the same number of examples (the last len % hosts are
  # left out): evaluation runs a collective per batch, and a host with one
  # more full batch than the others would wait for them forever.
  dataset = dataset[:len(dataset) - len(dataset) % process_count]
  dataset = dataset[process_index::process_count]
  if train:
    dataset = dataset.shuffle(seed=seed).repeat(num_epochs)
  augment = train and augmentation.geometric
  prepare = functools.partial(prepare_example, augmentation=augmentation,
                              statistics=statistics, image_size=image_size)
  if augment:
    dataset = dataset.random_map(lambda example, rng: prepare(example, rng), seed=seed)
  else:
    dataset = dataset.map(lambda example: prepare(example, None))
  dataset = dataset.batch(batch_size, drop_remainder=train)
  if num_threads is None:
    num_threads = max(1, (os.cpu_count() or 1) // max(num_workers, 1))
  # Elements are whole batches here: a few in flight per thread is plenty.
  iterable = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads))
  if num_workers:
    if not flags.FLAGS.is_parsed():
      # Grain's workers read its absl flags; outside an absl program (a
      # notebook, a test) take their defaults.
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iterable
