r"""Synthetic training faces per second on this machine, and where the time goes.

    python benchmarks/synthesize.py [--config=configs/real.py] [--batch=32]
    python benchmarks/synthesize.py --config=configs/synthetic.py --size=200 --batch=16

Draws and renders batches as training does (`facerecon.data.sources.
SyntheticStream`: the jitted renderer, then the host-side scene when the
config's prior asks for one, the next batch's render started before this
one's scene) at the config's image size (or --size), and prints faces per
second over --batches batches after a warm-up, twice, each time beside the
same stream one batch at a time (no render started ahead). Then it
times the parts on their own, each jitted alone on the same batch: drawing
the faces, posing the mesh, rasterizing, the cast shadows' map (priors with
`cast_shadows`), painting the albedo (procedural
priors), the whole jitted render, and the host-side scene. The goal is 200
faces/s at the training resolution on 2 cores.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from facerecon import face_models
from facerecon import face_render
from facerecon import memory
from facerecon import render
from facerecon.data import appearance
from facerecon.data import scenes
from facerecon.data import sources
from facerecon.data import synthetic

config_flags.DEFINE_config_file("config", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "real.py"),
    "The config whose model, prior and image size to time.")
_SIZE = flags.DEFINE_integer("size", None, "Square image size (default: the config's).")
_BATCH = flags.DEFINE_integer("batch", 32, "Faces per batch.")
_BATCHES = flags.DEFINE_integer("batches", 8, "Timed batches.")


def _best_of(function, repeats: int = 3) -> float:
  """The fastest of `repeats` calls, in seconds (after one warm-up call)."""
  jax.block_until_ready(function())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function())
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  memory.retain_freed_memory()  # as data_pipeline.synthesize does
  config = flags.FLAGS.config
  model = jax.device_put(face_models.load(config.model))
  prior = sources.face_prior(config)
  size = _SIZE.value or config.image_size
  batch = _BATCH.value
  photos = scenes.background_photos(2 * size) if prior.photo_backgrounds > 0 else None
  print(f"{config.model}: {model.num_vertices} vertices, {model.num_triangles} triangles, "
        f"{size}x{size}, batch {batch}:")
  # Training's stream (the next batch's render started before this one's
  # scene is drawn), then one batch at a time as the baseline, alternating.
  for _ in range(2):
    for prefetch in (True, False):
      stream = sources.SyntheticStream(model, size, batch, 0, prior, per_host=False,
                                       prefetch=prefetch)
      next(stream)  # compile, and start the next batch where it prefetches
      start = time.perf_counter()
      for _ in range(_BATCHES.value):
        next(stream)
      seconds = time.perf_counter() - start
      faces = batch * _BATCHES.value
      print(f"  {'as training streams them' if prefetch else 'one batch at a time'}: "
            f"{faces / seconds:.1f} faces/s ({1e3 * seconds / faces:.2f} ms per face)")

  # The parts, each jitted alone (XLA fuses differently inside the whole).
  keys = synthetic.sample_keys(0, 0, batch)
  draw = jax.jit(lambda m, k: jax.vmap(lambda key: synthetic.sample_face(
      key, m, prior, size, size))(jax.vmap(lambda key: jax.random.split(key, 3))(k)[:, 0]))
  sample = draw(model, keys)
  pose = jax.jit(lambda m, p: face_render.posed_vertices(m, p, size))
  _, image_vertices = pose(model, sample.params)
  raster = jax.jit(lambda v, t: render.rasterize(v, t, size, size))
  whole = jax.jit(lambda m, k: synthetic.generate(m, k, prior, size, size))
  parts = {"draw the faces": lambda: draw(model, keys),
           "pose the mesh": lambda: pose(model, sample.params),
           "rasterize": lambda: raster(image_vertices, model.triangles)}
  if prior.cast_shadows:
    shadow = jax.jit(lambda m, v, d: synthetic.light_visibility(m, v, d, size))
    parts["cast shadows (shadow map)"] = lambda: shadow(model, image_vertices,
                                                        sample.highlight[:, :3])
  if prior.procedural_albedo:
    paint = jax.jit(lambda m, looks: jax.vmap(lambda look: appearance.vertex_albedo(
        m, appearance.vertex_regions(m), look))(looks))
    parts["paint the albedo"] = lambda: paint(model, sample.look)
  parts["the whole jitted render"] = lambda: whole(model, keys)
  if synthetic.has_scene(prior):
    rendered = jax.tree.map(np.asarray, whole(model, keys))

    def scene():
      for k in range(batch):
        scenes.finish_photo(np.random.default_rng(k), rendered.image[k], rendered.mask[k],
                            rendered.landmarks[k], prior, photos)

    parts["the scene (host)"] = scene
  for name, function in parts.items():
    print(f"  {name}: {1e3 * _best_of(function) / batch:.2f} ms per face")


if __name__ == "__main__":
  app.run(main)
