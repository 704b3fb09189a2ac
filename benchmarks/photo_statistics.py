r"""The synthetic training faces' tone and colour against real photos' crops.

    python benchmarks/photo_statistics.py --photos=../shared/data/aflw2000-3d-dev \
        [--config=configs/real.py] [--faces=256]

Unlabelled image statistics only: the same measures on --faces training
faces of the config (its prior, at its image size, seed --seed) and on the
ground-truth-landmark crops of an AFLW2000-3D-style folder (<stem>.jpg +
<stem>.mat: the crops the network sees in `--mode=evaluate`, at the same
size). Printed as 10th / 50th / 90th percentiles:
- luminance: its standard deviation over the crop and over its central
  half (the face), and its mean (0..255);
- saturation: the mean HSV saturation (0..255) of the central half and of
  the crop, colour images only (grey ones are counted apart);
- the face's redness: the central half's mean red over green.
The prior's `luminance_std`, `luminance_mean`, `saturation` and
`background_saturation` ranges (docs/data.md) were chosen by these figures.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import cv2
from ml_collections import config_flags
import numpy as np

from facerecon import face_models
from facerecon.data import cropping
from facerecon.data import mat_folders
from facerecon.data import photos as photos_lib
from facerecon.data import sources

FLAGS = flags.FLAGS
_BATCH = 64
_GREY_CHROMA = 2.0  # mean |R - G| below this: a grey image


def statistics(images: np.ndarray) -> dict:
  """Per image measures of uint8 crops [N, S, S, 3] (see the module doc);
  the colour measures only over the colour images."""
  size = images.shape[1]
  centre = slice(size // 4, size - size // 4)
  pixels = images.astype(np.float32)
  luminance = pixels @ np.float32([0.299, 0.587, 0.114])
  colour = np.abs(pixels[..., 0] - pixels[..., 1]).mean(axis=(1, 2)) >= _GREY_CHROMA
  saturation = np.stack([cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1] for image in images])
  face = pixels[:, centre, centre].reshape(len(images), -1, 3).mean(axis=1)
  return {
      "luminance std, crop": luminance.std(axis=(1, 2)),
      "luminance std, centre": luminance[:, centre, centre].std(axis=(1, 2)),
      "luminance mean": luminance.mean(axis=(1, 2)),
      "saturation, centre": saturation[colour][:, centre, centre].mean(axis=(1, 2)),
      "saturation, crop": saturation[colour].mean(axis=(1, 2)),
      "red / green, centre": (face[:, 0] / np.maximum(face[:, 1], 1.0))[colour],
      "grey share": (~colour).astype(np.float32),
  }


def synthetic_crops(config, count: int, seed: int) -> np.ndarray:
  stream = sources.SyntheticStream(face_models.load(config.model), config.image_size, _BATCH,
                                   seed, sources.face_prior(config), per_host=False,
                                   fields=("image",))
  return np.concatenate([next(stream)["image"] for _ in range(-(-count // _BATCH))])[:count]


def photo_crops(folder: str, size: int) -> np.ndarray:
  crops = []
  for image_path, mat_path in mat_folders.find_pairs(folder):
    landmarks = mat_folders.read_labels(mat_path, layout=None).landmarks
    square = cropping.square_from_landmarks(landmarks)
    crops.append(cropping.crop(photos_lib.read_photo(image_path), square, size))
  if not crops:
    raise app.UsageError(f"--photos: no <stem>.jpg + <stem>.mat pairs in {folder}")
  return np.stack(crops)


def define_flags():
  """The command's flags (defined when run, so importing the module for its
  functions defines none)."""
  config_flags.DEFINE_config_file("config", os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "real.py"),
      "The config whose synthetic faces to measure.")
  flags.DEFINE_string("photos", None, "AFLW2000-3D-style folder (.jpg + .mat).")
  flags.DEFINE_integer("faces", 256, "Synthetic faces to measure.")
  flags.DEFINE_integer("seed", 7, "The synthetic faces' seed.")


def main(argv):
  del argv
  if not FLAGS.photos or not os.path.isdir(FLAGS.photos):
    raise app.UsageError(f"--photos must be an AFLW2000-3D-style folder, got {FLAGS.photos!r}")
  config = FLAGS.config
  rows = {"synthetic": statistics(synthetic_crops(config, FLAGS.faces, FLAGS.seed)),
          "photos": statistics(photo_crops(FLAGS.photos, config.image_size))}
  print(f"{FLAGS.faces} synthetic faces of the config at {config.image_size}x"
        f"{config.image_size} against the photos' ground-truth crops; 10th / 50th / 90th "
        "percentiles (grey share: the mean)")
  for name in rows["synthetic"]:
    cells = []
    for values in (rows["synthetic"][name], rows["photos"][name]):
      cells.append(f"{values.mean():.2f}" if name == "grey share" else
                   " / ".join(f"{v:.2f}" if name.startswith("red") else f"{v:.0f}"
                              for v in np.percentile(values, [10, 50, 90])))
    print(f"{name:22s} synthetic {cells[0]:>18s}   photos {cells[1]:>18s}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
