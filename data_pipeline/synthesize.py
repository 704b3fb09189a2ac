r"""Renders synthetic training faces with exact labels into shards.

    python -m data_pipeline.synthesize --output_dir=DIR [--num_faces=100000]
        [--seed=0] [--image_size=200] [--shard_size=1000] [--model=embedded]
        [--backgrounds_dir=PHOTOS] [--workers=2] [--config=configs/real.py]

Writes DIR/metadata.json (what the data set is) and DIR/shard-XXXXX.npz, each
holding `shard_size` faces: image uint8 [n, H, W, 3], params float32 [n, P]
(the facerecon.params layout: the label), texture, lighting, colour, depth
float32 [n, H, W], mask bool, pncc uint8 [n, H, W, 3] (code x 255),
landmarks float32 [n, 68, 2] and index int64 [n] (sample numbers). Face i
depends only on (seed, i): bitwise with the same --batch_size, to float
rounding with another (XLA vectorises differently per batch shape).

Shards are written atomically and skipped when present, so a killed run
resumes where it stopped. Running again into a folder made with other
settings is refused. With --backgrounds_dir, each face is composited over a
random square crop of a photo from that folder; otherwise over a procedural
background. With --config, the config's face model, image size and prior
(`config.synthetic.prior`, its host-side scene included) replace --model,
--image_size and the default prior.
"""

import dataclasses
import json
import multiprocessing
import os
import time

from absl import app
from absl import flags
from absl import logging
import cv2
import jax
from ml_collections import config_flags
import numpy as np

from facerecon import face_models
from facerecon import fileio
from facerecon import memory
from facerecon.data import photos
from facerecon.data import scenes
from facerecon.data import sources
from facerecon.data import synthetic


@dataclasses.dataclass(frozen=True)
class Settings:
  """What defines the data set; stored as metadata.json."""
  num_faces: int
  seed: int
  image_size: int
  shard_size: int
  model: str
  backgrounds: tuple[str, ...]  # photo file names (in backgrounds_dir), sorted
  prior: str = ""  # synthetic.FacePrior as JSON ("": the default prior)

  def face_prior(self) -> synthetic.FacePrior:
    if not self.prior:
      return synthetic.FacePrior()
    return synthetic.FacePrior(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in json.loads(self.prior).items()})

  @property
  def num_shards(self) -> int:
    return -(-self.num_faces // self.shard_size)


def shard_path(output_dir: str, shard: int) -> str:
  return os.path.join(output_dir, f"shard-{shard:05d}.npz")


def list_backgrounds(backgrounds_dir: str | None) -> tuple[str, ...]:
  if not backgrounds_dir:
    return ()
  if not os.path.isdir(backgrounds_dir):
    raise FileNotFoundError(f"--backgrounds_dir {backgrounds_dir} is not a folder")
  names = sorted(name for name in os.listdir(backgrounds_dir)
                 if photos.is_photo(name))
  if not names:
    raise FileNotFoundError(f"no images ({', '.join(photos.IMAGE_SUFFIXES)}) in {backgrounds_dir}")
  return tuple(names)


def check_metadata(output_dir: str, settings: Settings) -> None:
  """Writes metadata.json, or checks that an existing one matches."""
  path = os.path.join(output_dir, "metadata.json")

  wanted = {"settings": dataclasses.asdict(settings),
            "prior": dataclasses.asdict(settings.face_prior()),
            "generator_version": synthetic.GENERATOR_VERSION}
  wanted = json.loads(json.dumps(wanted))  # tuples -> lists, as read back
  if os.path.exists(path):
    with open(path) as f:
      try:
        found = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt ({e}); delete the folder or choose another") from e
    if found != wanted:
      differ = sorted(k for k in wanted["settings"]
                      if found.get("settings", {}).get(k) != wanted["settings"][k])
      if found.get("generator_version") != wanted["generator_version"]:
        differ.append("generator_version")
      raise ValueError(f"{output_dir} holds a data set made with other settings "
                       f"({', '.join(differ) or 'prior'} differ); use another --output_dir")
    return
  os.makedirs(output_dir, exist_ok=True)
  with fileio.atomic_write(path, "w") as f:
    json.dump(wanted, f, indent=2)


def _load_photo(path: str) -> np.ndarray:
  image = cv2.imread(path, cv2.IMREAD_COLOR)
  if image is None:
    raise ValueError(f"cannot read background photo {path}")
  return image[..., ::-1]


def photo_backgrounds(backgrounds_dir, names, seed, indices, size) -> np.ndarray:
  """A random square crop of a random photo per sample index, [n, S, S, 3] in
  [0, 1]; each depends only on (seed, index)."""
  out = np.empty((len(indices), size, size, 3), np.float32)
  for k, index in enumerate(indices):
    rng = np.random.default_rng((seed, int(index), 1))
    photo = _load_photo(os.path.join(backgrounds_dir, names[rng.integers(len(names))]))
    side = int(min(photo.shape[:2]) * rng.uniform(0.4, 1.0))
    top = rng.integers(photo.shape[0] - side + 1)
    left = rng.integers(photo.shape[1] - side + 1)
    crop = photo[top:top + side, left:left + side]
    out[k] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA) / 255.0
  return out


def render_shard(settings: Settings, shard: int, output_dir: str,
                 backgrounds_dir: str | None, batch_size: int) -> int:
  """Renders and writes one shard; returns its number of faces."""
  model = _worker_model(settings.model)
  prior = settings.face_prior()
  size = settings.image_size
  photos = scenes.background_photos(2 * size) if prior.photo_backgrounds > 0 else None
  start = shard * settings.shard_size
  stop = min(start + settings.shard_size, settings.num_faces)
  parts = []
  for first in range(start, stop, batch_size):
    count = min(batch_size, stop - first)
    keys = synthetic.sample_keys(settings.seed, first, count)
    backgrounds = None
    if settings.backgrounds:
      backgrounds = photo_backgrounds(backgrounds_dir, settings.backgrounds, settings.seed,
                                      range(first, first + count), size)
    rendered = jax.tree.map(np.asarray, synthetic.generate_jit(model, keys, prior, size, size,
                                                               backgrounds))
    parts.append(synthetic.finish_photos(rendered, prior, settings.seed, first, photos))
  batch = {field: np.concatenate([getattr(p, field) for p in parts])
           for field in synthetic.SyntheticBatch._fields}
  batch["pncc"] = np.round(batch["pncc"] * 255).astype(np.uint8)
  batch["index"] = np.arange(start, stop, dtype=np.int64)
  with fileio.atomic_write(shard_path(output_dir, shard)) as f:
    np.savez(f, **batch)
  return stop - start


_MODEL_CACHE = {}


def _worker_model(source: str):
  if source not in _MODEL_CACHE:
    _MODEL_CACHE[source] = jax.device_put(face_models.load(source))
  return _MODEL_CACHE[source]


def _render_shards(args):
  settings, shards, output_dir, backgrounds_dir, batch_size = args
  memory.retain_freed_memory()  # in this process, worker or not
  done = 0
  for shard in shards:
    done += render_shard(settings, shard, output_dir, backgrounds_dir, batch_size)
    logging.info("wrote %s", shard_path(output_dir, shard))
  return done


def synthesize(settings: Settings, output_dir: str, backgrounds_dir: str | None = None,
               batch_size: int = 16, workers: int = 1) -> dict:
  """Makes every missing shard; returns a summary."""
  check_metadata(output_dir, settings)
  todo = [s for s in range(settings.num_shards) if not os.path.exists(shard_path(output_dir, s))]
  skipped = settings.num_shards - len(todo)
  start = time.perf_counter()
  if workers <= 1 or len(todo) <= 1:
    faces = _render_shards((settings, todo, output_dir, backgrounds_dir, batch_size))
  else:
    jobs = [(settings, todo[w::workers], output_dir, backgrounds_dir, batch_size)
            for w in range(workers)]
    # spawn: JAX is not fork-safe once initialised.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      faces = sum(pool.map(_render_shards, jobs))
  seconds = time.perf_counter() - start
  return {"shards_written": len(todo), "shards_skipped": skipped, "faces": faces,
          "seconds": seconds, "faces_per_second": faces / seconds if seconds else 0.0}


def config_faces(config) -> dict:
  """The Settings fields a config decides: its face model, image size and
  prior (`config.synthetic.prior` as JSON). ValueError for a bad prior."""
  prior = json.dumps(dataclasses.asdict(sources.face_prior(config)), sort_keys=True)
  return dict(model=config.model, image_size=config.image_size, prior=prior)


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so that the
  pipeline modules can be imported together)."""
  flags.DEFINE_string("output_dir", None, "Where the shards go.")
  flags.DEFINE_integer("num_faces", 100_000, "Faces in the data set.")
  flags.DEFINE_integer("seed", 0, "Data set seed.")
  flags.DEFINE_integer("image_size", 200, "Square image size (pixels).")
  flags.DEFINE_integer("shard_size", 1000, "Faces per shard file.")
  flags.DEFINE_integer("batch_size", 16,
                       "Faces rendered per step (16 ran faster than 64 on 2 cores).")
  flags.DEFINE_string("model", "embedded", "Face model source (see facerecon.face_models).")
  flags.DEFINE_string("backgrounds_dir", None,
                                         "Folder of photos for backgrounds (optional).")
  flags.DEFINE_integer("workers", 1, "Worker processes (each takes whole shards).")
  config_flags.DEFINE_config_file(
      "config", None, "A config whose model, image size and synthetic prior to use (they "
      "replace --model, --image_size and the default prior).")


def main(argv):
  del argv
  for name in ("num_faces", "image_size", "shard_size", "batch_size", "workers"):
    if FLAGS[name].value < 1:
      raise app.UsageError(f"--{name} must be positive, got {FLAGS[name].value}")
  faces = dict(model=FLAGS.model, image_size=FLAGS.image_size, prior="")
  if FLAGS.config is not None:
    try:
      faces = config_faces(FLAGS.config)
    except (ValueError, TypeError) as e:
      raise app.UsageError(str(e)) from None
  settings = Settings(num_faces=FLAGS.num_faces, seed=FLAGS.seed,
                      shard_size=FLAGS.shard_size,
                      backgrounds=list_backgrounds(FLAGS.backgrounds_dir), **faces)
  summary = synthesize(settings, FLAGS.output_dir, FLAGS.backgrounds_dir, FLAGS.batch_size,
                       FLAGS.workers)
  print(f"{summary['faces']} faces in {summary['shards_written']} new shard(s) "
        f"({summary['shards_skipped']} already there) in {summary['seconds']:.1f} s: "
        f"{summary['faces_per_second']:.1f} faces/s -> {FLAGS.output_dir}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["output_dir"])
  app.run(main)
