r"""facerecon's command line: `python main.py --mode=...` and the
`facerecon` command installed with the package.

    python main.py --config=configs/synthetic.py --workdir=runs/quickstart
    python main.py --mode=reconstruct --workdir=runs/quickstart --input=photos/ --output=out/
    facerecon reconstruct photo.jpg more_photos/ -o out/
    facerecon evaluate AFLW2000/
    facerecon train --config=configs/real.py --workdir=runs/real

`facerecon SUBCOMMAND ...` is `main.py --mode=SUBCOMMAND ...` with the
photos or folder as positional arguments (for --input) and -o for
--output; every flag below works with both.

Every config field can be overridden on the command line, e.g.
`--config.model=embedded:253 --config.coarse.batch_size=64`.

Modes (--mode):
  train     (the default) train CoarseNet, then FineNet over it when
            config.fine.num_train_steps > 0 (facerecon.training): the config,
            checkpoints, TensorBoard events and pictures go in --workdir, and
            the same command resumes. A SIGTERM saves a checkpoint and exits
            with status 143 (as if killed by it, so schedulers retry)
  preview   build the face model, sample faces, write preview.png
  reconstruct
            3D faces from the photos and videos in --input (files or
            folders; the flag may repeat) with the networks trained in
            --workdir (default: the shipped model), written to --output
            (facerecon.reconstruct; videos: facerecon.video); exits with
            status 1 if any photo or video failed
  evaluate  AFLW2000-3D-style NME by yaw on the folder --input, or the
            synthetic test split with --input=synthetic (facerecon.evaluate);
            prints the table and writes <workdir>/evaluation_<name>.json

reconstruct and evaluate read the run's config from --workdir; a --config
given as well must describe the same networks.

Logs: progress, evaluations and warnings. --verbosity=0 (or -v 0) shows
every library's INFO log too (orbax's checkpointing, absl's).
"""

import logging as pylogging
import os
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from facerecon import config_checks
from facerecon import detect
from facerecon import inference
from facerecon import memory
from facerecon import outputs
from facerecon import reconstruct
from facerecon import rundir
from facerecon import video

# `training`, `preview` and `evaluate` are imported in the modes that use
# them: reconstruct loads no training code, Grain or tfds (tested), and
# starts faster.

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The run directory (local or gs://). reconstruct and evaluate without "
    "it use $FACERECON_RUN or the trained run the package ships.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "preview", "reconstruct", "evaluate"],
                          "What to run.")
config_flags.DEFINE_config_file(
    "config", None, "A config file defining get_config(); reconstruct and evaluate read the "
    "run's own from --workdir.", lock_config=True)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-host runs: host:port of process 0's coordinator (with --num_processes and "
    "--process_id). On Cloud TPU pods and SLURM use --multihost instead.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_INPUT = flags.DEFINE_multi_string(
    "input", None, "reconstruct: a photo, a video or a folder of them (repeat the flag for "
    "more); "
    "evaluate: an AFLW2000-3D style folder (<stem>.jpg + <stem>.mat) or 'synthetic'.")
_OUTPUT = flags.DEFINE_string("output", None, "reconstruct: the output folder; evaluate: "
                              "where to write evaluation_<name>.json (default: the run, or "
                              "the current folder for the shipped run).")
_DETECTOR = flags.DEFINE_enum(
    "detector", "blazeface", list(detect.DETECTORS),
    "reconstruct/evaluate: face detector (MediaPipe's BlazeFace; or OpenCV's cascades, "
    "haar_profile adding profile faces); reconstruct with 'none' takes each photo as a "
    "face crop.")
_BATCH = flags.DEFINE_integer("batch", 16, "reconstruct/evaluate: faces per network batch.")
_MAX_FACES = flags.DEFINE_integer("max_faces", 8, "reconstruct: faces per photo, largest "
                                  "first.")
_WRITE = flags.DEFINE_list(
    "outputs", None, "reconstruct: the files to write, any of "
    f"{', '.join(outputs.OUTPUTS)} (facerecon.outputs; obj is textured when the model has "
    "UVs). Default: all for photos; for videos "
    f"{', '.join(video.DEFAULT_OUTPUTS)} (per frame; overlay, pncc and normals as videos).")
_MIRROR = flags.DEFINE_bool("mirror", True, "reconstruct/evaluate: average each face's fit "
                             "with the mirrored fit of its mirror image (left-right symmetric "
                             "face models).")
_WINDOW_SHIFT = flags.DEFINE_float(
    "window_shift", inference.WINDOW_SHIFT, "reconstruct/evaluate: also average each fit "
    "over four windows of its crop moved by this part of its side (0: the crop alone).")
_CALIBRATE = flags.DEFINE_bool(
    "calibrate", True, "reconstruct/evaluate: apply the run's pose calibration (its "
    "pose_calibration.json, made by data_pipeline.calibrate_pose) where it has one; "
    "--nocalibrate leaves it out.")
_SHARPEN = flags.DEFINE_float(
    "sharpen", inference.SHARPEN, "reconstruct/evaluate: how much CoarseNet's input is "
    "sharpened (an unsharp mask's amount, in [0, 5]; 0 turns it off).")
_UPRIGHT = flags.DEFINE_bool(
    "upright", True, "reconstruct/evaluate: fit each face again in its crop turned so that "
    "the first fit stands upright (twice CoarseNet's time; --noupright: one fit).")
_FOCUS = flags.DEFINE_float(
    "focus", inference.FOCUS, "reconstruct/evaluate: fit each face again with what lies "
    "outside the first fit's face outline blurred by a Gaussian of this many pixels at "
    "CoarseNet's input size (frontal fits; in [0, 10]; 0 turns it off). With --upright, the "
    "same second fit.")
_SMOOTH = flags.DEFINE_bool("smooth", True, "reconstruct, videos: smooth each tracked face's "
                            "parameters over time (One Euro filter, facerecon.video).")
_REDETECT = flags.DEFINE_integer(
    "redetect_every", video.REDETECT_EVERY, "reconstruct, videos: frames between detector "
    "runs while faces are tracked (it also runs whenever none is).")
CACHE_VARIABLE = "FACERECON_COMPILATION_CACHE"
CACHE_MAX_BYTES = 256 << 20
_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "reconstruct/evaluate: a folder where JAX keeps the compiled "
    "networks between runs, so that later starts skip the compiling (one photo: 12 s, then 7 s "
    f"on 2 cores). Default: JAX's own if set ($JAX_COMPILATION_CACHE_DIR), else "
    f"${CACHE_VARIABLE}, else $XDG_CACHE_HOME/facerecon/jax or ~/.cache/facerecon/jax; '' "
    "for none.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() and let it find the cluster "
    "(Cloud TPU pods, SLURM, ...).")


def _quiet_logs():
  """Libraries' INFO logs off unless --verbosity was given: facerecon's own
  (progress, evaluations) stay on. absl's verbosity sets the root logger's
  level, which orbax and absl log through."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
    pylogging.getLogger("facerecon").setLevel(pylogging.INFO)


def _initialize_distributed():
  """jax.distributed for multi-host runs: every process then sees every
  device, and the train step's mesh spans them all."""
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go "
                           "together")
    # Cross-process collectives for CPU devices (GPUs and TPUs have their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _MULTIHOST.value:
    jax.distributed.initialize()


def compilation_cache_folder() -> str:
  """--compilation_cache; else '' (leave it to JAX) when JAX has a cache
  folder already ($JAX_COMPILATION_CACHE_DIR); else
  $FACERECON_COMPILATION_CACHE; else the user's cache folder's
  facerecon/jax. '' for none of ours."""
  if _CACHE.value is not None:
    return _CACHE.value
  if jax.config.jax_compilation_cache_dir:
    return ""
  if CACHE_VARIABLE in os.environ:
    return os.environ[CACHE_VARIABLE]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "facerecon", "jax")


def _use_compilation_cache():
  """JAX's persistent compilation cache in compilation_cache_folder(), when
  it can be made there (a warning otherwise: JAX would warn at every
  compile and still compile)."""
  folder = compilation_cache_folder()
  if not folder:
    return
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    logging.warning("no compilation cache: cannot make %s (%s)", folder, e)
    return
  if not os.access(folder, os.W_OK):
    logging.warning("no compilation cache: %s is not writable", folder)
    return
  jax.config.update("jax_compilation_cache_dir", folder)
  # Every program (a reconstruct compiles about 120, most under a second);
  # a size limit turns on JAX's file lock (concurrent runs) and evicts the
  # oldest entries.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if jax.config.jax_compilation_cache_max_size < 0:
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)


def fit_options() -> inference.FitOptions:
  """How reconstruct and evaluate apply the networks: --mirror,
  --window_shift, --calibrate, --sharpen, --upright and --focus. A bad value is a usage error
  naming its flag (FitOptions' messages start with the field's name, which
  is the flag's)."""
  try:
    return inference.FitOptions(mirror=_MIRROR.value, window_shift=_WINDOW_SHIFT.value,
                                calibrate=_CALIBRATE.value, sharpen=_SHARPEN.value,
                                upright=_UPRIGHT.value, focus=_FOCUS.value)
  except ValueError as e:
    raise app.UsageError(f"--{e}") from None


def _checked(config):
  try:
    config_checks.check(config)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  _quiet_logs()
  memory.retain_freed_memory()
  config = flags.FLAGS.config
  if _MODE.value in ("reconstruct", "evaluate"):
    return _apply_trained(config)
  if not _WORKDIR.value:
    raise app.UsageError(f"--mode={_MODE.value} needs --workdir")
  if config is None:
    raise app.UsageError(f"--mode={_MODE.value} needs --config")
  config = _checked(config)
  if _MODE.value == "preview":
    from facerecon import preview  # pylint: disable=import-outside-toplevel

    print(f"wrote {preview.write_preview(config, _WORKDIR.value)}")
    return 0
  from facerecon import training  # pylint: disable=import-outside-toplevel

  _initialize_distributed()
  try:
    metrics = training.train_and_evaluate(config, _WORKDIR.value)
  except training.Preempted as preempted:
    # Not a finished run: FineNet must not start on a half-trained
    # CoarseNet, and a scheduler should see the job as interrupted.
    print(preempted)
    return 128 + signal.SIGTERM.value
  for stage, name in (("coarse", "CoarseNet"), ("fine", "FineNet")):
    if stage in metrics:
      print(f"{name} final evaluation: "
            + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics[stage].items())))
  return 0


def _apply_trained(explicit_config) -> int:
  """--mode=reconstruct / evaluate; the exit status."""
  inputs = _INPUT.value or []
  if not inputs:
    raise app.UsageError(f"--mode={_MODE.value} needs --input")
  if _MODE.value == "evaluate" and len(inputs) > 1:
    raise app.UsageError("--mode=evaluate takes one --input")
  options = fit_options()
  for given in inputs:
    if given != "synthetic" and not os.path.exists(given):
      raise app.UsageError(f"--input {given} does not exist")
  if _WORKDIR.value:
    run = rundir.RunDir(_WORKDIR.value)
    if not (run.has_best() or run.fine.has_best()):
      raise app.UsageError(f"--workdir {_WORKDIR.value} has no trained networks: train them "
                           "there first with --mode=train")
  else:
    run = rundir.default_run()
    if run is None:
      raise app.UsageError(
          f"no --workdir, and no trained run in ${rundir.RUN_VARIABLE} or shipped with this "
          f"install ({rundir.SHIPPED_RUN}): pass the --workdir of a trained run")
  try:
    config = _checked(rundir.resolve_config(run, explicit_config))
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  _use_compilation_cache()
  # Built only where photos are detected in (not the synthetic test split).
  detector = None if inputs == ["synthetic"] else detect.from_name(_DETECTOR.value)
  if _MODE.value == "evaluate":
    # The shipped run may sit in a read-only install: its results go here.
    results_dir = _OUTPUT.value or (None if _WORKDIR.value else ".")
    from facerecon import evaluate  # pylint: disable=import-outside-toplevel

    table, _ = evaluate.run(config, run.path, inputs[0], detector, _BATCH.value,
                            results_dir, options)
    print(table)
    return 0
  if not _OUTPUT.value:
    raise app.UsageError("--mode=reconstruct needs --output")
  if _REDETECT.value < 1:
    raise app.UsageError(f"--redetect_every must be >= 1, got {_REDETECT.value}")
  try:
    written = None if _WRITE.value is None else outputs.check_outputs(_WRITE.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  summary = reconstruct.reconstruct(config, run.path, inputs, _OUTPUT.value,
                                    batch_size=_BATCH.value, detector=detector,
                                    max_faces=_MAX_FACES.value, outputs=written,
                                    smoothing=_SMOOTH.value, redetect_every=_REDETECT.value,
                                    options=options)
  sources = [f"{summary.photos_read()} of {summary.photos} photos"] if summary.photos else []
  if summary.videos:
    sources.append(f"{len(summary.videos)} videos "
                   f"({sum(v.frames for v in summary.videos)} frames)")
  print(f"reconstructed {summary.faces} faces from {' and '.join(sources) or 'nothing'} "
        f"into {_OUTPUT.value}")
  for path, reason in summary.failures:
    print(f"  failed: {path}: {reason}")
  return 1 if summary.failures else 0


SUBCOMMANDS = ("train", "preview", "reconstruct", "evaluate")


def command_line_flags(argv: list[str]) -> list[str]:
  """`facerecon SUBCOMMAND [PATHS...] [-o OUT] [--flags]` -> the arguments of
  `main.py` (argv[0] kept): --mode=SUBCOMMAND, each path as --input, -o /
  --output as --output."""
  if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
    if len(argv) > 1 and argv[1] in ("-h", "--help", "--helpfull"):
      return argv
    raise SystemExit(f"usage: facerecon {{{','.join(SUBCOMMANDS)}}} [PHOTOS_OR_FOLDERS...] "
                     "[-o OUTPUT] [--flags]   (facerecon --help lists the flags)")
  out = [argv[0], f"--mode={argv[1]}"]
  rest = iter(argv[2:])
  for word in rest:
    if word in ("-o", "--output"):
      target = next(rest, None)
      if target is None:
        raise SystemExit(f"facerecon: {word} needs a folder")
      out.append(f"--output={target}")
    elif word.startswith("-"):
      out.append(word)
    else:
      out.append(f"--input={word}")
  return out


def command():
  """The `facerecon` console command."""
  app.run(main, argv=command_line_flags(sys.argv))


def run():
  """`python main.py ...`."""
  app.run(main)
