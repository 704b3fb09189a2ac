"""The data a config names, as iterators of host batches.

- CoarseNet's labelled faces (`config.coarse.data`): synthetic faces rendered
  on the fly (`SyntheticStream`, the prior of `config.synthetic`) or a tfds
  data set with 3DMM labels; batches hold 'image' (uint8), 'params' and
  'landmarks'. Their label statistics (`label_statistics`) normalise what
  the network regresses.
- FineNet's photos (`config.fine.data`): synthetic faces (their true
  detailed depth kept for evaluation only), a tfds data set's images, or a
  folder of photos.

Synthetic 'val' and 'test' faces come from seeds no training stage uses
(`synthetic_seed` refuses a shared one). Every iterator has `get_state` /
`set_state`, which checkpoints store, so a resumed run reads on exactly.
"""

import dataclasses

import jax
import numpy as np

from facerecon import face_models
from facerecon.data import normalization
from facerecon.data import preprocessing
from facerecon.data import scenes
from facerecon.data import synthetic


class SyntheticStream:
  """Endless batches of synthetic faces rendered on the fly with exact labels
  (`facerecon.data.synthetic`): batch i holds samples i * global_batch + ...
  of (seed), so the stream is reproducible and its position is its whole
  state. Each host renders its own part of the global batch. `model` is the
  whole face model, rendered parts (eyes, teeth, ...) included; the streams
  of a config render `face_models.load(config.model)`. With `prefetch` the
  next batch's jitted render is started before this one's host-side scene
  is drawn, so that the two overlap (the same batches; on 2 CPU cores
  configs/real.py's faces come 10-20% faster: docs/benchmarks.md)."""

  def __init__(self, model, size: int, batch_size: int, seed: int, prior=None,
               per_host: bool = True, fields=("image", "params", "landmarks"),
               prefetch: bool = False):
    self._model, self._size, self._batch, self._seed = model, size, batch_size, seed
    self._fields = tuple(fields)  # of SyntheticBatch, copied to the host
    self._prior = prior or synthetic.FacePrior()
    self._photos = (scenes.background_photos(2 * size) if self._prior.photo_backgrounds > 0
                    else None)
    # per_host=False: every host gets the same batches (for statistics).
    self._hosts, self._host = ((jax.process_count(), jax.process_index()) if per_host
                               else (1, 0))
    self._prefetch = prefetch
    self._pending = None  # (position, the jitted render started for it)
    self.position = 0

  def __iter__(self):
    return self

  def _first(self, position: int) -> int:
    return (position * self._hosts + self._host) * self._batch

  def _render(self, position: int):
    """The jitted render of batch `position`, started (JAX dispatches it and returns)."""
    keys = synthetic.sample_keys(self._seed, self._first(position), self._batch)
    return position, synthetic.generate_jit(self._model, keys, self._prior, self._size,
                                            self._size)

  def __next__(self) -> dict:
    position, rendered = (self._pending if self._pending is not None
                          and self._pending[0] == self.position else self._render(self.position))
    self._pending = self._render(position + 1) if self._prefetch else None
    first = self._first(position)
    faces = synthetic.finish_photos(jax.tree.map(np.asarray, rendered), self._prior,
                                    self._seed, first, self._photos)
    self.position += 1
    batch = {name: getattr(faces, name) for name in self._fields if name != "albedo"}
    if "albedo" in self._fields:  # not a SyntheticBatch field: rendered again, when asked
      batch["albedo"] = np.asarray(synthetic.albedo_maps(
          self._model, synthetic.sample_keys(self._seed, first, self._batch), self._prior,
          self._size, self._size))
    return batch

  def get_state(self) -> dict:
    return {"position": self.position}

  def set_state(self, state: dict) -> None:
    self.position = int(state["position"])


def face_prior(config) -> synthetic.FacePrior:
  """The FacePrior of config.synthetic.prior (its fields override the defaults)."""
  fields = {f.name for f in dataclasses.fields(synthetic.FacePrior)}
  overrides = dict(config.synthetic.prior)
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"config.synthetic.prior: unknown field(s) {', '.join(unknown)} "
                     f"(FacePrior has {', '.join(sorted(fields))})")
  for name in synthetic.PRIOR_PROBABILITIES:
    if name in overrides and not 0.0 <= overrides[name] <= 1.0:
      raise ValueError(f"config.synthetic.prior.{name} is a probability (a share of the "
                       f"faces), got {overrides[name]}")
  prior = synthetic.FacePrior(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                 for k, v in overrides.items()})
  if prior.camera_distance != (0.0, 0.0) and not (
      prior.procedural_albedo and 1.0 <= prior.camera_distance[0] <= prior.camera_distance[1]):
    raise ValueError("config.synthetic.prior.camera_distance: (0, 0) (orthographic) or face "
                     "widths 1 <= near <= far, with procedural_albedo=True; got "
                     f"{prior.camera_distance}")
  if prior.cast_shadows and not prior.procedural_albedo:
    raise ValueError("config.synthetic.prior.cast_shadows needs procedural_albedo=True (the "
                     "shadows darken the procedural faces' light)")
  return prior


def synthetic_seed(config, split: str, stage: str = "coarse") -> int:
  """The seed of synthetic split 'train' (config.<stage>.seed), 'val' or
  'test'. A face depends only on (seed, index), so two splits with one seed
  would be the same faces: ValueError naming the fields."""
  seeds = {"train": (f"config.{stage}.seed", config[stage].seed),
           "val": ("config.synthetic.validation_seed", config.synthetic.validation_seed),
           "test": ("config.synthetic.test_seed", config.synthetic.test_seed)}
  names = list(seeds)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      if seeds[a][1] == seeds[b][1]:
        raise ValueError(f"{seeds[a][0]} and {seeds[b][0]} are both {seeds[a][1]}: the {a} "
                         f"and {b} splits would be the same synthetic faces; give them "
                         "different seeds")
  return seeds[split][1]


def synthetic_statistics(model, size: int, count: int, seed: int,
                         prior=None) -> normalization.DataStatistics:
  """Parameter mean/std and mean image of `count` synthetic faces."""
  accumulator = normalization.StatisticsAccumulator()
  # The same faces on every host, so every host has the same statistics.
  stream = SyntheticStream(model, size, min(count, 64), seed, prior, per_host=False)
  while accumulator.count < count:
    batch = next(stream)
    accumulator.add(batch["params"], batch["image"])
  return accumulator.result()


def label_statistics(config) -> normalization.DataStatistics:
  """The statistics of CoarseNet's training labels: computed from synthetic
  faces, or the tfds data set's statistics.npz (config.coarse.data.statistics)."""
  data = config.coarse.data
  if data.source == "synthetic":
    return synthetic_statistics(face_models.load(config.model), config.image_size,
                                config.synthetic.statistics_samples,
                                seed=config.synthetic.statistics_seed, prior=face_prior(config))
  if data.source == "tfds":
    if not data.statistics:
      raise ValueError("config.coarse.data.statistics: the statistics.npz of the data set is "
                       "required with config.coarse.data.source='tfds'")
    return normalization.load_statistics(data.statistics)
  raise ValueError(f"config.coarse.data.source: unknown source '{data.source}' "
                   "(use 'synthetic' or 'tfds')")


def with_normalized_labels(batch: dict, statistics: normalization.DataStatistics) -> dict:
  """A labelled host batch with the labels CoarseNet regresses:
  'params_normalized' (and float32 'landmarks')."""
  params = np.asarray(batch["params"], np.float32)
  return {"image": batch["image"], "landmarks": np.asarray(batch["landmarks"], np.float32),
          "params_normalized": np.asarray(normalization.normalize_params(params, statistics),
                                          np.float32)}


def open_labelled(config, statistics, split: str, batch_size: int):
  """An iterator of CoarseNet's host batches of `split` ('train', 'val' or
  'test'): 'image' uint8, 'params', 'landmarks'."""
  data = config.coarse.data
  if data.source == "synthetic":
    return SyntheticStream(face_models.load(config.model), config.image_size, batch_size,
                           synthetic_seed(config, split), face_prior(config),
                           prefetch=split == "train")
  # Grain and tfds take about a second to import; only these sources need
  # them (reconstruction never does).
  from facerecon.data import input_pipeline

  source = input_pipeline.open_source(data.name, split, data.data_dir)
  return iter(input_pipeline.make_dataset(
      source, batch_size=batch_size, seed=config.coarse.seed, train=split == "train",
      statistics=statistics, process_index=jax.process_index(),
      process_count=jax.process_count(),
      num_workers=data.num_workers if split == "train" else 0, image_size=config.image_size))


def open_photos(config, split: str, batch_size: int, labels: bool = False):
  """An iterator of FineNet's host batches of `split` ('train' or 'val'):
  'image' uint8; synthetic batches with `labels` (for evaluation or a
  supervised loss) also 'fine_depth' and 'mask' (the true detailed surface),
  and 'albedo' when FineNet learns it (config.fine.loss.albedo)."""
  data = config.fine.data
  size = preprocessing.fine_image_size(config)
  if data.source == "synthetic":
    fields = ("image", "fine_depth", "mask") if labels else ("image",)
    if labels and config.fine.loss.get("albedo", 0.0) > 0:
      fields += ("albedo",)
    return SyntheticStream(face_models.load(config.model), size, batch_size,
                           synthetic_seed(config, split, "fine"), face_prior(config),
                           fields=fields, prefetch=split == "train")
  if data.source not in ("tfds", "folder"):
    raise ValueError(f"config.fine.data.source: unknown source '{data.source}' "
                     "(use 'synthetic', 'tfds' or 'folder')")
  # As in open_labelled: Grain and tfds are imported only when used.
  from facerecon.data import input_pipeline

  if data.source == "tfds":
    source = input_pipeline.open_source(data.name, split, data.data_dir, features=("image",))
  else:
    if not data.folder:
      raise ValueError("config.fine.data.folder: the photo folder is required with "
                       "config.fine.data.source='folder'")
    source = input_pipeline.FolderSource(data.folder, size, split)
  return iter(input_pipeline.make_dataset(
      source, batch_size=batch_size, seed=config.fine.seed, train=split == "train",
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=data.num_workers if split == "train" else 0, image_size=size))
