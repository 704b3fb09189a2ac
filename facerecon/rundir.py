"""The run directory: the one place that knows what a run keeps where.

    <workdir>/
      config.json         the run's resolved config and its face model's identity
      statistics.npz      the label statistics the run normalises with
      checkpoints/<step>  orbax checkpoints: train state, input position
      best/<step>         the variables of the best evaluation so far
      best/best.json      which step that was, and its metrics
      tensorboard/        event files
      reconstructions.png the latest evaluation's picture
      evaluation_<name>.json   --mode=evaluate's results
      pose_calibration.json    a correction of the fits' pitch on real photos
                          (`python -m data_pipeline.calibrate_pose`), if made
      fine/               FineNet's stage, laid out the same way (its picture
                          is fine_reconstructions.png)

A workdir may be local or an object-store URL (`facerecon.fileio`).

Training writes config.json when it starts, so `--mode=reconstruct` and
`--mode=evaluate` need only the workdir: `resolve_config` reads it back, and
an explicit config must agree with it on every field that shapes the
trained networks (`NETWORK_FIELDS`), or the error names the field. The face
model is recorded by source and content (`face_models.fingerprint`): a
later command that loads another model under the same name is refused.
"""

import dataclasses
import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from facerecon import config_checks
from facerecon import face_models
from facerecon import fileio
from facerecon import morphable
from facerecon.data import normalization
from facerecon.data import sources

CONFIG_FILE = "config.json"
STATISTICS_FILE = "statistics.npz"
POSE_CALIBRATION_FILE = "pose_calibration.json"
CONFIG_FORMAT = 1

# The fields that define what the trained networks are and what they see:
# a config that differs in one of them cannot use the run's weights. (The
# others, batch sizes, evaluation or data settings, may change freely.)
COARSE_NETWORK_FIELDS = ("model", "image_size", "coarse.num_iterations", "coarse.backbone",
                         "coarse.backbone_kwargs")
NETWORK_FIELDS = COARSE_NETWORK_FIELDS + ("fine.widths", "fine.head", "fine.end_to_end",
                                          "fine.coarse_workdir", "fine.image_size")
# Network fields added after runs were recorded without them, with the value
# those runs had.
LATER_FIELDS = {"fine.image_size": None}


def trained_fields(run: "RunDir", started) -> tuple[str, ...]:
  """The NETWORK_FIELDS that `run`'s networks already fix: CoarseNet's once
  its stage has `started` (a checkpoint or a best), all of them once FineNet's
  has (FineNet is trained over that CoarseNet)."""
  if started(run.fine):
    return NETWORK_FIELDS
  return COARSE_NETWORK_FIELDS if started(run) else ()


@dataclasses.dataclass(frozen=True)
class RunDir:
  """The paths of one run (or of its FineNet stage, `fine`)."""
  path: str

  def __post_init__(self):
    object.__setattr__(self, "path", fileio.absolute(self.path))

  def join(self, *names: str) -> str:
    return os.path.join(self.path, *names)

  @property
  def config_file(self) -> str:
    return self.join(CONFIG_FILE)

  @property
  def statistics(self) -> str:
    return self.join(STATISTICS_FILE)

  @property
  def pose_calibration(self) -> str:
    return self.join(POSE_CALIBRATION_FILE)

  @property
  def checkpoints(self) -> str:
    return self.join("checkpoints")

  @property
  def best(self) -> str:
    return self.join("best")

  @property
  def best_record(self) -> str:
    return self.join("best", "best.json")

  @property
  def tensorboard(self) -> str:
    return self.join("tensorboard")

  @property
  def fine(self) -> "RunDir":
    """FineNet's stage of this run."""
    return RunDir(self.join("fine"))

  def picture(self, name: str) -> str:
    return self.join(f"{name}.png")

  def evaluation(self, name: str) -> str:
    return self.join(f"evaluation_{name}.json")

  def has_best(self) -> bool:
    """Whether a best checkpoint has been recorded (a trained network)."""
    return fileio.exists(self.best_record)

  def has_checkpoints(self) -> bool:
    """Whether training has saved a checkpoint (the run has started)."""
    return bool(ocp.utils.checkpoint_steps(self.checkpoints)) if fileio.exists(
        self.checkpoints) else False


# The trained run the package ships (`python -m data_pipeline.ship_run`), which
# --mode=reconstruct and --mode=evaluate use without --workdir; the
# environment variable FACERECON_RUN names another.
SHIPPED_RUN = os.path.join(face_models.ASSETS, "run")
RUN_VARIABLE = "FACERECON_RUN"


def default_run() -> RunDir | None:
  """The run to use when no --workdir is given: $FACERECON_RUN, or the
  package's shipped run; None if that has no trained networks."""
  run = RunDir(os.environ.get(RUN_VARIABLE) or SHIPPED_RUN)
  return run if (run.has_best() or run.fine.has_best()) else None


# --- The recorded config ---------------------------------------------------------------


def _plain(value):
  """A config value as JSON holds it (tuples become lists, ConfigDicts dicts)."""
  return json.loads(json.dumps(value.to_dict() if isinstance(value, ml_collections.ConfigDict)
                               else value))


def _tuples(value):
  """JSON's lists back to the tuples configs use for sequences."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def model_record(source: str, model: morphable.MorphableModel) -> dict:
  """What config.json says of the face model."""
  layout = model.layout
  return {"source": source, "fingerprint": face_models.fingerprint(model),
          "num_vertices": model.num_vertices, "num_shape": layout.num_shape,
          "num_expression": layout.num_expression}


def _read_json_object(path: str) -> dict | None:
  """A JSON object file's contents; None when there is no such file."""
  try:
    data = fileio.read_bytes(path)
  except FileNotFoundError:
    return None
  try:
    record = json.loads(data)
  except ValueError as e:  # JSONDecodeError is a ValueError
    raise ValueError(f"{path} is not JSON: {e}") from None
  if not isinstance(record, dict):
    raise ValueError(f"{path}: expected a JSON object, got {record!r}")
  return record


def read_record(run: RunDir) -> dict | None:
  """config.json's contents ({'config', 'model'}), or None when there is none."""
  record = _read_json_object(run.config_file)
  if record is not None and (record.get("format") != CONFIG_FORMAT or "config" not in record):
    raise ValueError(f"{run.config_file} is not a facerecon run config: format "
                     f"{record.get('format')}, expected {CONFIG_FORMAT}")
  return record


def read_pose_calibration(run: RunDir) -> dict | None:
  """pose_calibration.json's contents, or None when the run has none."""
  return _read_json_object(run.pose_calibration)


def check_same_networks(config, record: dict, where: str,
                        fields=NETWORK_FIELDS) -> None:
  """ValueError naming the first of `fields` in which `config` differs from a
  recorded run's config (`where` names the run)."""
  saved = record["config"]
  for name in fields:
    try:
      recorded = config_checks.get_field(saved, name)
    except KeyError:
      if name not in LATER_FIELDS:
        raise ValueError(f"{where}: its config.json has no field {name}") from None
      recorded = LATER_FIELDS[name]
    try:
      given = _plain(config_checks.get_field(config, name))
    except KeyError:
      given = LATER_FIELDS[name]
    if given != recorded:
      raise ValueError(f"config.{name}: {where} was trained with {recorded!r}, but the config "
                       f"given says {given!r}")


def check_model(record: dict, model_record_now: dict, where: str) -> None:
  """ValueError unless the face model described by `model_record_now`
  (`model_record`) is the one the run recorded."""
  recorded = record.get("model", {})
  if recorded.get("fingerprint") != model_record_now["fingerprint"]:
    raise ValueError(
        f"config.model: {where} was trained with the face model {recorded.get('source')!r} "
        f"({recorded.get('num_vertices')} vertices), and the model {model_record_now['source']!r} "
        f"({model_record_now['num_vertices']} vertices) is not that one (its contents differ)")


def record_config(run: RunDir, config, model: morphable.MorphableModel) -> None:
  """Writes config.json at the start of training. A run that has already
  started (a checkpoint, here or in its FineNet stage) keeps its networks:
  a config differing in a field they fix (`trained_fields`), or another face
  model, is refused. Process 0 writes; the others only check."""
  record = read_record(run)
  model_now = model_record(config.model, model)
  fields = trained_fields(run, RunDir.has_checkpoints)
  if record is not None and fields:
    check_same_networks(config, record, f"the run in {run.path}", fields)
    check_model(record, model_now, f"the run in {run.path}")
  if jax.process_index() == 0:
    contents = {"format": CONFIG_FORMAT, "config": _plain(config), "model": model_now}
    fileio.makedirs(run.path)
    fileio.write_bytes_atomic(run.config_file, json.dumps(contents, indent=2).encode())


def resolve_config(run: RunDir, explicit=None):
  """The config to apply the run with: its recorded one, or `explicit` (a
  --config) after checking that it describes the same networks. A run
  without config.json needs `explicit`."""
  record = read_record(run)
  if record is None:
    if explicit is None:
      raise ValueError(f"{run.path} has no {CONFIG_FILE} (a run trained before runs recorded "
                       "their config, or not a run directory): pass the config it was trained "
                       "with (--config)")
    return explicit
  if explicit is None:
    return ml_collections.ConfigDict(_tuples(record["config"]))  # as the run recorded it
  check_same_networks(explicit, record, f"the run in {run.path}",
                      trained_fields(run, RunDir.has_best))
  return explicit


# --- The face model and the label statistics --------------------------------------------


def load_model(config, run: RunDir | None = None) -> morphable.MorphableModel:
  """The face model the networks of config.model use: its surface parts
  (`morphable.surface`; the rendered-only parts are for synthetic photos).
  With a run that recorded a model, checked to be the same model."""
  model = face_models.load(config.model)
  record = None if run is None else read_record(run)
  if record is not None:
    check_model(record, model_record(config.model, model), f"the run in {run.path}")
  return morphable.surface(model)


def statistics(config, model: morphable.MorphableModel, run: RunDir | None = None,
               training: bool = False) -> normalization.DataStatistics:
  """The statistics the labels of `model` are normalised by.

  A run keeps the statistics it trained with in statistics.npz, and
  everything that later reads the run uses those: a changed config
  (prior, samples, statistics path) at resume, FineNet or reconstruction
  would otherwise silently denormalise with other statistics. Without that
  file they come from the config (`sources.label_statistics`). `training`
  a run from its start (no checkpoint yet) takes them from the config and
  writes the file, replacing one left by an attempt that never reached a
  checkpoint (perhaps with the wrong config); one fine-tuning another run's
  CoarseNet (config.coarse.init_from) takes that run's."""
  if run is None:
    return sources.label_statistics(config)
  if not (training and not run.has_checkpoints()):
    try:
      stats = normalization.load_statistics(run.statistics)
    except FileNotFoundError:  # a run from before runs kept them
      return sources.label_statistics(config)
    if stats.param_mean.shape != (model.layout.size,):
      raise ValueError(f"{run.statistics}: statistics of {stats.param_mean.shape[0]} "
                       f"parameters, but config.model ({config.model}) has "
                       f"{model.layout.size}: this run was trained with another face model")
    return stats
  init_from = config.coarse.get("init_from")
  # A fine-tuned CoarseNet keeps the normalisation its weights learnt (in
  # pixels of its own image size when it was trained at another).
  if init_from:
    stats = normalization.load_statistics(RunDir(init_from).statistics)
    # Its mean image is at the size it was trained at.
    stats = normalization.statistics_for_size(stats, stats.mean_image.shape[0],
                                              config.image_size)
  else:
    stats = sources.label_statistics(config)
  if jax.process_index() == 0:
    normalization.save_statistics(stats, run.statistics)
  return stats


def model_and_statistics(config, run: RunDir | None = None):
  """(the face model, its label statistics) of a run (`load_model`,
  `statistics`), or of `config` alone: what every loader and predictor needs."""
  model = load_model(config, run)
  return model, statistics(config, model, run)
