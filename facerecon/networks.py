"""The networks a config describes: built, initialised, and loaded trained
from a run directory.

Training starts from `initial_coarse_variables` / `initial_fine_params`;
FineNet, reconstruction and evaluation load the best variables of a run
(`load_trained`), which needs none of the training machinery.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from facerecon import checkpoints
from facerecon import morphable
from facerecon import rundir
from facerecon.data import normalization
from facerecon.data import preprocessing
from facerecon.models import backbones
from facerecon.models import coarse_net as coarse_net_lib
from facerecon.models import fine as fine_lib
from facerecon.models import pretrained


def coarse_net(config, mesh=None) -> coarse_net_lib.CoarseNet:
  """CoarseNet as `config` says; with a `mesh`, its renders run per device."""
  coarse = config.coarse
  return coarse_net_lib.CoarseNet(
      num_iterations=coarse.num_iterations, backbone=coarse.backbone,
      backbone_kwargs=dict(coarse.backbone_kwargs) or None, dtype=jnp.dtype(config.dtype),
      render_backend=config.render_backend, mesh=mesh)


def init_coarse_variables(net, config, mesh, model, statistics, seed: int = 0):
  """CoarseNet's (`coarse_net(config, mesh)`) freshly initialised variables
  for config.image_size images."""
  size = config.image_size
  # One example per device: the renders split the batch over the devices.
  images = jnp.zeros((1 if mesh is None else mesh.size, size, size, 3))
  return jax.jit(net.init)(jax.random.PRNGKey(seed), images, model, statistics)


def initial_coarse_variables(net, config, mesh, model, statistics):
  """The variables a CoarseNet run starts from: `init_coarse_variables` of
  config.coarse.seed, with the ImageNet weights of config.coarse.pretrained
  where it is set, or the best CoarseNet of the run config.coarse.init_from
  (fine-tuning; it must have the same networks, or fewer iterations:
  `grow_iterations`). A resumed run restores over them."""
  coarse = config.coarse
  variables = init_coarse_variables(net, config, mesh, model, statistics, coarse.seed)
  if coarse.get("init_from"):
    source = rundir.RunDir(coarse.init_from)
    # Its image size may differ where a global average ends the backbone
    # (the convolutions take any size; `rundir.statistics` rescales the
    # pixel statistics); a flattened last feature map fixes it.
    flattened = dict(coarse.backbone_kwargs).get("pool") == "flatten"
    check_coarse_run(config, source, "config.coarse.init_from: ",
                     tuple(f for f in rundir.COARSE_NETWORK_FIELDS
                           if (f != "image_size" or flattened)
                           and f != "coarse.num_iterations"))
    trained = trained_iterations(config, rundir.read_record(source),
                                 f"the CoarseNet run in {source.path}")
    restored = restore_best(source, first_iterations(variables, trained))
    return grow_iterations(restored, variables)
  if coarse.pretrained:
    scope = backbones.make_backbone(coarse.backbone, **dict(coarse.backbone_kwargs)).name
    variables = pretrained.init_from_slim(
        dict(variables), pretrained.load_slim_arrays(coarse.pretrained), scope)
  return variables


def trained_iterations(config, record: dict | None, where: str) -> int:
  """How many iterations the CoarseNet of a run's `record` (its config.json;
  None: as `config`) has; ValueError when more than `config` asks (`where`
  names the run): a fine-tuning may add iterations, not drop them."""
  asked = config.coarse.num_iterations
  trained = asked if record is None else int(record["config"]["coarse"]["num_iterations"])
  if trained > asked:
    raise ValueError(f"config.coarse.num_iterations: {where} has {trained} "
                     f"iteration{'s' * (trained != 1)}, more than the {asked} asked (a run can "
                     "gain iterations, not lose them)")
  return trained


def _iteration_number(name: str) -> int:
  return int(name.rsplit("_", 1)[1])


def first_iterations(variables, count: int):
  """CoarseNet's `variables` ({collection: {'iteration_k': ...}}) with only
  iterations 1..count."""
  return {collection: {name: tree for name, tree in trees.items()
                       if _iteration_number(name) <= count}
          for collection, trees in variables.items()}


def grow_iterations(trained, fresh):
  """CoarseNet variables shaped like `fresh` (N iterations) from `trained`
  ones of its first M <= N iterations: those kept, each later one a copy of
  iteration M's backbone (and its batch statistics) with `fresh`'s head.
  A fresh head is zero, so the grown network starts with the trained one's
  estimates, and each new iteration starts from features that already read
  faces (it sees the same input channels, over the fit so far) instead of
  from random ones: the paper's later iterations over a trained first."""
  def grow(kept, fresh_iterations):
    last = kept[f"iteration_{max(map(_iteration_number, kept))}"]
    # Copies: a train step donates its state's buffers, one at a time.
    return {name: kept[name] if name in kept else
            {part: tree[part] if part == "head" else jax.tree.map(jnp.copy, value)
             for part, value in last.items()}
            for name, tree in fresh_iterations.items()}
  return {collection: grow(trained[collection], trees) for collection, trees in fresh.items()}


def fine_net(config) -> fine_lib.FineNet:
  """FineNet as `config.fine` says."""
  return fine_lib.FineNet(widths=tuple(config.fine.widths), head=tuple(config.fine.head),
                          albedo=config.fine.loss.get("albedo", 0.0) > 0,
                          dtype=jnp.dtype(config.dtype))


def init_fine_params(config, net, seed: int = 0):
  """FineNet's freshly initialised parameters for its photos' size."""
  size = preprocessing.fine_image_size(config)
  zeros = jnp.zeros((1, size, size))
  return jax.jit(lambda key: net.init(key, jnp.zeros((1, size, size, 3)), zeros,
                                      zeros > 0))(jax.random.PRNGKey(seed))["params"]


# What a FineNet's parameters depend on: a run's FineNet can start another
# one (config.fine.init_from) when these agree. Its photos' size is not one
# (it is convolutional): a FineNet may be fine-tuned at another size, as a
# CoarseNet may (coarse.init_from), or over a CoarseNet of another size.
FINE_NETWORK_FIELDS = ("fine.widths", "fine.head")


def initial_fine_params(config, net):
  """The parameters a FineNet run starts from: `init_fine_params` of
  config.fine.seed, with the ImageNet vgg_16 weights of config.fine.pretrained
  where it is set, or the best FineNet of the run config.fine.init_from
  (fine-tuning, e.g. over a newer CoarseNet; it must have the same FineNet).
  A resumed run restores over them."""
  params = init_fine_params(config, net, config.fine.seed)
  if config.fine.get("init_from"):
    source = rundir.RunDir(config.fine.init_from)
    if not source.fine.has_best():
      raise FileNotFoundError(f"config.fine.init_from: no trained FineNet in "
                              f"{source.fine.best}")
    where = f"config.fine.init_from: the FineNet run in {source.path}"
    record = rundir.read_record(source)
    if record is None:
      raise FileNotFoundError(f"{where}: no {source.config_file}")
    rundir.check_same_networks(config, record, where, FINE_NETWORK_FIELDS)
    recorded = record["config"]["fine"]
    if recorded.get("end_to_end"):
      raise ValueError(f"{where} also trained its CoarseNet (fine.end_to_end): start from a "
                       "FineNet trained alone")
    if (recorded["loss"].get("albedo", 0.0) > 0) != (config.fine.loss.get("albedo", 0.0) > 0):
      raise ValueError(f"config.fine.loss.albedo: {where} has "
                       f"{'an' if recorded['loss'].get('albedo', 0.0) > 0 else 'no'} albedo "
                       "output and this config asks otherwise")
    return restore_best(source.fine, {"params": params, "batch_stats": {}})["params"]
  if config.fine.pretrained:
    params = pretrained.init_from_slim(
        {"params": params}, pretrained.load_slim_arrays(config.fine.pretrained),
        fine_lib.SCOPE)["params"]
  return params


def split_fine_params(params, end_to_end: bool, coarse_variables):
  """(CoarseNet variables, FineNet params) from a FineNet run's trained
  params: an end-to-end run trains CoarseNet's params too."""
  if end_to_end:
    return {**coarse_variables, "params": params["coarse"]}, params["fine"]
  return coarse_variables, params


def restore_best(run: rundir.RunDir, like):
  """The best variables of `run`, shaped like `like`."""
  best = checkpoints.BestCheckpoint(run.best)
  try:
    return best.restore(like)
  finally:
    best.close()


def coarse_run(config, run: rundir.RunDir) -> rundir.RunDir:
  """The run whose CoarseNet a FineNet stage in `run` trains over."""
  return rundir.RunDir(config.fine.coarse_workdir) if config.fine.coarse_workdir else run


def check_coarse_run(config, run: rundir.RunDir, context: str = "",
                     fields=rundir.COARSE_NETWORK_FIELDS) -> None:
  """FileNotFoundError when `run` has no trained CoarseNet, ValueError when
  it recorded other networks than `config`'s (in `fields`); `context`
  prefixes the messages (which setting named the run)."""
  if not run.has_best():
    raise FileNotFoundError(
        f"{context}no trained CoarseNet in {run.best}: train one there first "
        f"(python main.py --config=... --workdir={run.path})")
  record = rundir.read_record(run)
  if record is not None:
    rundir.check_same_networks(config, record, f"{context}the CoarseNet run in {run.path}",
                               fields)


def load_coarse(config, run: rundir.RunDir, mesh=None):
  """(CoarseNet, its best variables, the face model, the statistics) of the
  CoarseNet trained in `run`. A run that recorded its config must have been
  trained with config's CoarseNet and face model."""
  check_coarse_run(config, run)
  model, statistics = rundir.model_and_statistics(config, run)
  net = coarse_net(config, mesh)
  like = jax.eval_shape(lambda: init_coarse_variables(net, config, mesh, model, statistics))
  return net, restore_best(run, like), model, statistics


def load_fine(config, run: rundir.RunDir, coarse_variables):
  """(FineNet, its best params, the CoarseNet variables to use with it) of
  the FineNet stage `run` (a run's `.fine`), or None when it has no best
  checkpoint. An end-to-end run's CoarseNet variables replace
  `coarse_variables`."""
  if not run.has_best():
    return None
  net = fine_net(config)
  fine_like = jax.eval_shape(lambda: init_fine_params(config, net))
  params_like = ({"coarse": coarse_variables["params"], "fine": fine_like}
                 if config.fine.end_to_end else fine_like)
  restored = restore_best(run, {"params": params_like, "batch_stats": {}})
  coarse_variables, fine_params = split_fine_params(restored["params"], config.fine.end_to_end,
                                                    coarse_variables)
  return net, fine_params, coarse_variables


class TrainedNetworks(NamedTuple):
  """What a run trained, ready to apply."""
  model: morphable.MorphableModel
  statistics: normalization.DataStatistics
  coarse_net: coarse_net_lib.CoarseNet
  coarse_variables: dict
  fine_net: fine_lib.FineNet | None  # None when the run trained no FineNet
  fine_params: dict | None


def load_trained(config, run: rundir.RunDir, mesh=None) -> TrainedNetworks:
  """The best CoarseNet of the run (`config.fine.coarse_workdir`'s when it
  trained over another run's) and, when the run trained one, its FineNet."""
  net, variables, model, statistics = load_coarse(config, coarse_run(config, run), mesh)
  fine = load_fine(config, run.fine, variables)
  if fine is None:
    return TrainedNetworks(model, statistics, net, variables, None, None)
  fine_net_, fine_params, variables = fine
  return TrainedNetworks(model, statistics, net, variables, fine_net_, fine_params)


def fresh(config, mesh=None) -> TrainedNetworks:
  """CoarseNet freshly initialised as training would start it, no FineNet
  (for timings): statistics from the config."""
  model, statistics = rundir.model_and_statistics(config)
  net = coarse_net(config, mesh)
  variables = initial_coarse_variables(net, config, mesh, model, statistics)
  return TrainedNetworks(model, statistics, net, variables, None, None)
