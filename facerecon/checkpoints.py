"""orbax checkpoints of a training run: the regular ones that resume it
exactly (`Checkpoints`), and the variables of its best evaluation
(`BestCheckpoint`), which FineNet, reconstruction and evaluation load.
Paths come from `facerecon.rundir`; local paths and object-store URLs both
work (orbax writes through tensorstore).
"""

import dataclasses
import json
import os

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from facerecon import fileio


@dataclasses.dataclass
class Checkpoints:
  """orbax checkpoints of (train state, input iterator state) under
  `<directory>/<step>` (`RunDir.checkpoints`): asynchronous saves every `every` steps,
  the newest `keep` kept, atomic (a save interrupted by a kill leaves the
  previous checkpoints intact)."""
  directory: str
  every: int
  keep: int

  def __post_init__(self):
    self.directory = fileio.absolute(self.directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.keep,
                                             save_interval_steps=self.every,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict | None,
           force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); returns whether it did."""
    if not force and step % self.every:
      return False  # (orbax on its own would also save the first step it sees)
    args = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, like, step: int | None = None):
    """(state, data state or None) of `step` (default: the newest), shaped
    and sharded like `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    has_data = fileio.exists(os.path.join(self.directory, str(step), "data"))
    args = {"state": ocp.args.StandardRestore(abstract)}
    if has_data:
      args["data"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], restored["data"] if has_data else None

  def wait(self):
    """Blocks until asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()




class BestCheckpoint:
  """The network variables of the evaluation with the lowest `metric`, kept
  under `<directory>/<step>` (orbax, only the newest best) with
  `<directory>/best.json` saying which step and metrics. A resumed run
  reads the record, so "best" spans the whole run.

  A new best is saved, then recorded, and only then is the old one deleted,
  so a kill at any moment leaves best.json naming a complete checkpoint."""

  def __init__(self, directory: str, metric: str | None = None,
               field: str = "best_metric"):
    """`metric` None: only for `restore`. `field` names the config field
    that chose the metric, in errors."""
    self.directory, self.metric, self._field = fileio.absolute(directory), metric, field
    self._manager = ocp.CheckpointManager(self.directory)
    try:
      self.record = json.loads(fileio.read_bytes(os.path.join(self.directory, "best.json")))
    except FileNotFoundError:
      self.record = None

  def update(self, step: int, metrics: dict, variables) -> bool:
    """Saves `variables` if `metrics[metric]` beats the best so far."""
    if self.metric is None or self.metric not in metrics:
      raise ValueError(f"{self._field}: '{self.metric}' is not an evaluation metric "
                       f"(have: {', '.join(sorted(metrics))})")
    value = float(metrics[self.metric])
    if self.record is not None and (step == self.record["step"]
                                    or not value < self.record["value"]):
      return False  # (a resumed run evaluating its best step again keeps it)
    if step in self._manager.all_steps():
      self._manager.delete(step)  # saved by a run killed before it recorded it
    self._manager.save(step, args=ocp.args.StandardSave(variables), force=True)
    self._manager.wait_until_finished()
    self.record = {"step": step, "metric": self.metric, "value": value,
                   "metrics": {k: float(v) for k, v in metrics.items()}}
    if jax.process_index() == 0:
      fileio.write_bytes_atomic(os.path.join(self.directory, "best.json"),
                                json.dumps(self.record, indent=2).encode())
    if jax.process_count() > 1:  # best.json first, then the others delete
      multihost_utils.sync_global_devices(f"best.json of step {step}")
    for old in self._manager.all_steps():
      if old != step:
        self._manager.delete(old)
    return True

  def restore(self, like):
    """The best variables, shaped like `like`."""
    if self.record is None:
      raise FileNotFoundError(f"no best checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(self.record["step"], args=ocp.args.StandardRestore(abstract))

  def close(self):
    self._manager.close()
