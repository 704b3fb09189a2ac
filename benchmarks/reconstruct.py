r"""Reconstruction latency on this machine: per photo and per face.

    python benchmarks/reconstruct.py [--workdir=runs/mobile] [--config=configs/mobile.py]

Times, as medians over --repeats runs after a warm-up, on a real photo (the
astronaut in scikit-image's data, one face, 512x512; or --photo):
- detect: the --detector (facerecon.detect) on the photo, and on a
  4000x3000 photo (the photo pasted small into a grey one: BlazeFace then
  searches tiles for faces down to 40 pixels);
- crop: facerecon.data.cropping.crop of the face;
- regression: CoarseNet alone (`inference.regress`, jitted) per face, at batch 1 and at
  --batch faces per call;
- dense mesh: the model-space vertices from the parameters, batch 1;
- FineNet (where the run has one): its depth from the crop and the coarse
  depth, batch 1;
- network call: facerecon.inference.Predictor on one crop (CoarseNet, dense
  mesh, depth map, landmarks; FineNet where the run has one), and the same
  with the crop alone (`--window_shift=0`: no shifted windows averaged) and
  with one fit (`--noupright --focus=0`: not fitted again, upright and
  focused);
- end to end: detect + crop + network call + the mesh posed in the photo.
Without --workdir the networks are freshly initialised (the timings do not
depend on the weights). The goal is 3DDFA_V2's figures on this
machine class: detector 8 to 16 ms per photo, regression under 1 ms per face.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from benchmarks import timing
from facerecon import detect
from facerecon import inference
from facerecon import memory
from facerecon import morphable
from facerecon import outputs
from facerecon import rundir
from facerecon.data import cropping
from facerecon.data import photos
from facerecon.data import preprocessing

config_flags.DEFINE_config_file("config", "configs/mobile.py", "The network's config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run (default: random weights).")
_PHOTO = flags.DEFINE_string("photo", None, "A photo with a face (default: the astronaut).")
_BATCH = flags.DEFINE_integer("batch", 64, "Faces per call for the batched regression.")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed runs of each part.")
_DETECTOR = flags.DEFINE_enum("detector", "blazeface", ["blazeface", "haar", "haar_profile"],
                              "The face detector.")


def main(argv):
  del argv
  memory.retain_freed_memory()
  config = flags.FLAGS.config
  if _WORKDIR.value:  # the run's own config (a --config given must agree with it)
    explicit = config if flags.FLAGS["config"].present else None
    config = rundir.resolve_config(rundir.RunDir(_WORKDIR.value), explicit)
  path = _PHOTO.value
  if path is None:
    import skimage  # (a test extra: only this default photo needs it)

    path = os.path.join(os.path.dirname(skimage.__file__), "data", "astronaut.png")
  photo = photos.read_photo(path)
  repeats = _REPEATS.value
  detector = detect.from_name(_DETECTOR.value)
  boxes, squares, _ = detector.crop_squares(photo)
  if not len(boxes):
    raise SystemExit(f"no face found in {path}")
  square = squares[0]
  large = np.full((3000, 4000, 3), 128, np.uint8)
  large[1000:1000 + photo.shape[0], 2000:2000 + photo.shape[1]] = photo
  predictor = inference.Predictor(config, _WORKDIR.value, batch_size=1)
  crop_alone = inference.Predictor(config, _WORKDIR.value, batch_size=1,
                                   options=inference.FitOptions(window_shift=0.0))
  one_fit = inference.Predictor(config, _WORKDIR.value, batch_size=1,
                                options=inference.FitOptions(upright=False, focus=0.0))
  size = predictor.size  # the crops' side: FineNet's where the run has one
  crop = cropping.crop(photo, square, size)
  model, statistics = predictor.model, predictor.statistics
  net, variables = predictor.coarse_net, predictor.coarse_variables
  start_face = predictor.start_face
  # CoarseNet alone on uint8 crops, its first input render kept (as the Predictor does).
  regress = jax.jit(lambda *arguments: inference.regress(net, *arguments, config.image_size,
                                                        predictor.options.sharpen))
  one = crop[None]
  many = np.repeat(one, _BATCH.value, axis=0)
  dense = jax.jit(morphable.vertices_from_params)
  fits = predictor(one)
  params = fits.params
  fine = jax.jit(lambda fine_params, crops, depth, mask: predictor.fine_net.apply(
      {"params": fine_params}, preprocessing.network_images(crops, statistics), depth, mask))

  def end_to_end():
    found_square = detector.crop_squares(photo)[1][0]
    fits = predictor(cropping.crop(photo, found_square, size)[None])
    pose = cropping.pose_to_photo(fits.params[0, :7], found_square, size, photo.shape[0])
    return outputs.posed_mesh(fits.vertices[0], pose)

  figures = {
      "detect (per photo)": timing.median_ms(detector.detect, photo, repeats=repeats),
      "detect, 4000x3000 photo": timing.median_ms(detector.detect, large,
                                                  repeats=max(3, repeats // 10)),
      "crop (per face)": timing.median_ms(cropping.crop, photo, square, size, repeats=repeats),
      "regression, batch 1 (per face)": timing.median_ms(
          regress, variables, one, model, statistics, start_face, repeats=repeats),
      f"regression, batch {_BATCH.value} (per face)": timing.median_ms(
          regress, variables, many, model, statistics, start_face,
          repeats=max(3, repeats // 10)) / _BATCH.value,
      "dense mesh, batch 1 (per face)": timing.median_ms(dense, model, params,
                                                         repeats=repeats),
      **({"FineNet, batch 1 (per face)": timing.median_ms(
          fine, predictor.fine_params, one, fits.coarse_depth, fits.mask, repeats=repeats)}
         if predictor.has_fine else {}),
      "network call (per face)": timing.median_ms(predictor, one, repeats=repeats),
      "network call, crop alone (per face)": timing.median_ms(crop_alone, one,
                                                              repeats=repeats),
      "network call, one fit (per face)": timing.median_ms(one_fit, one, repeats=repeats),
      "end to end (per photo)": timing.median_ms(end_to_end, repeats=repeats),
  }
  print(f"{config.coarse.backbone} {dict(config.coarse.backbone_kwargs)}, "
        f"{config.image_size}x{config.image_size} (crops {size}x{size}), "
        f"{config.coarse.num_iterations} iteration(s), {model.num_vertices} vertices, "
        f"{'trained' if _WORKDIR.value else 'random'} weights, FineNet: "
        f"{predictor.has_fine}; {os.cpu_count()} cores; photo {photo.shape[1]}x{photo.shape[0]}")
  for name, ms in figures.items():
    print(f"  {name:<36}{ms:8.2f} ms")


if __name__ == "__main__":
  app.run(main)
