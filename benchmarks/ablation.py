r"""What each part of the photoreal synthetic faces is worth on real photos.

    python benchmarks/ablation.py --dev=../shared/data/aflw2000-3d-dev \
        [--config=configs/real.py] [--steps=3000] [--root=runs/ablation] \
        [--variants=full,no_hair,...] [--init_from=facerecon/assets/run]

Trains CoarseNet once per variant of the config's synthetic prior, each for
the same --steps (the same batch, learning-rate schedule and seed; only the
faces differ), in <root>/<variant>, then evaluates each run's best networks
on the AFLW2000-3D-style folder --dev (ground-truth crops) and prints NME (%)
per yaw bin as a table. Every run resumes when the command is run again, and
a finished one is only evaluated, so the table can be built over several
sittings.

The variants (`VARIANTS`) each take one part away from the full prior:
hair (on the scalp and long), spectacles, photo backgrounds, occluders, the
rich light (second-order environment, highlights, fill light, coloured
casts), the photos' tone (luminance spread and brightness), their colour
(the face's and the background's saturation), and the ICT
head itself (the built-in procedural face, painted by the same procedural
appearance). The procedural appearance itself has no variant: the ICT head
has no texture model to fall back on. With --init_from every variant
fine-tunes that run's CoarseNet instead (the procedural head, another
model, cannot).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from ml_collections import config_flags

from facerecon import config_checks
from facerecon import evaluate
from facerecon import inference
from facerecon import training

# name -> config overrides (dotted field -> value) taking one part away.
VARIANTS = {
    "full": {},
    "no_hair": {"synthetic.prior.hair": 0.0, "synthetic.prior.long_hair": 0.0},
    "no_glasses": {"synthetic.prior.glasses": 0.0},
    "no_photo_backgrounds": {"synthetic.prior.photo_backgrounds": 0.0},
    "no_occluders": {"synthetic.prior.occluders": 0.0},
    "simple_light": {"synthetic.prior.second_order_light": False,
                     "synthetic.prior.specular": False,
                     "synthetic.prior.fill_light": (0.0, 0.0),
                     "synthetic.prior.light_colour": 0.0},
    "procedural_head": {"model": "embedded"},
    "no_tone": {"synthetic.prior.luminance_std": (0.0, 0.0),
                "synthetic.prior.luminance_mean": (0.0, 0.0)},
    "no_colour": {"synthetic.prior.saturation": (0.0, 0.0),
                  "synthetic.prior.background_saturation": (0.0, 0.0)},
}

def variant_config(config, name: str, steps: int, init_from: str | None = None):
  """A copy of `config` with variant `name`'s overrides, trained for `steps`
  and evaluated (validation, best checkpoint) at its end and halfway; from
  the CoarseNet of the run `init_from` when given (fine-tuning)."""
  if name not in VARIANTS:
    raise ValueError(f"unknown variant '{name}' (choose from {', '.join(VARIANTS)})")
  if steps < 2:
    raise ValueError(f"--steps must be at least 2, got {steps}")
  config = config.copy_and_resolve_references()
  for dotted, value in VARIANTS[name].items():
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
      node = node[key]
    if leaf not in node:
      raise ValueError(f"variant '{name}': the config has no field {dotted}")
    node[leaf] = value
  config.coarse.num_train_steps = steps
  config.coarse.eval_every = steps // 2
  config.coarse.warmup_steps = min(config.coarse.warmup_steps, steps // 4)
  config.fine.num_train_steps = 0
  config.coarse.init_from = init_from
  config_checks.check(config)
  return config


def format_table(rows: dict) -> str:
  """Markdown: one row per variant (its ground-truth-crop NME table)."""
  bins = ("[0,30]", "[30,60]", "[60,90]", "mean")
  lines = ["| variant | " + " | ".join(bins) + " |", "|---" * (len(bins) + 1) + "|"]
  for name, table in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{table[b]:.2f}" for b in bins) + " |")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so that the
  tests can import this module beside others that define theirs)."""
  config_flags.DEFINE_config_file("config", os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "real.py"),
      "The full config; each variant changes its synthetic faces only.")
  flags.DEFINE_string("dev", None, "AFLW2000-3D-style folder to evaluate on.")
  flags.DEFINE_integer("steps", 3000, "Training steps per variant.")
  flags.DEFINE_string("root", "runs/ablation", "Folder of the variants' runs.")
  flags.DEFINE_list("variants", list(VARIANTS), "Which variants, in order.")
  flags.DEFINE_string("init_from", None, "A run whose CoarseNet every variant fine-tunes "
                      "(e.g. facerecon/assets/run); default: trained from scratch.")


def main(argv):
  del argv
  if not FLAGS.dev or not os.path.isdir(FLAGS.dev):
    raise app.UsageError(f"--dev must be an AFLW2000-3D-style folder, got {FLAGS.dev!r}")
  try:  # every variant checked before any training
    configs = {name: variant_config(FLAGS.config, name, FLAGS.steps, FLAGS.init_from)
               for name in FLAGS.variants}
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  rows = {}
  for name, config in configs.items():
    workdir = os.path.join(FLAGS.root, name)
    training.train_and_evaluate(config, workdir)
    # As the table's first rows were measured: CoarseNet's input not sharpened.
    rows[name] = evaluate.evaluate_folder(
        config, workdir, FLAGS.dev,
        options=inference.FitOptions(sharpen=0.0))["ground_truth_crops"]
    print(f"{name}: {rows[name]}", flush=True)
  start = f"fine-tuning {FLAGS.init_from}" if FLAGS.init_from else "from scratch"
  print(f"{FLAGS.steps} steps per variant ({start}), ground-truth crops, NME (%):")
  print(format_table(rows))


if __name__ == "__main__":
  define_flags()
  app.run(main)
