"""Training: CoarseNet (`coarse`) then FineNet (`fine`), two tasks of one
loop (`loop`) over one train state and step (`state`).

    metrics = training.train_and_evaluate(config, workdir)
"""

from facerecon import config_checks
from facerecon.training import coarse
from facerecon.training import fine
from facerecon.training.loop import Preempted


def train_and_evaluate(config, workdir: str) -> dict:
  """Checks `config`, then trains the stages it asks for in `workdir`:
  CoarseNet when config.coarse.num_train_steps > 0, then FineNet over it
  when config.fine.num_train_steps > 0. Each resumes from its newest
  checkpoint; a SIGTERM raises `Preempted` once its checkpoint is saved (and
  FineNet does not start). Returns {'coarse': metrics, 'fine': metrics} of
  the stages that ran (their last evaluations)."""
  config_checks.check(config)
  metrics = {}
  if config.coarse.num_train_steps > 0:
    metrics["coarse"] = coarse.train_and_evaluate(config, workdir)
  if config.fine.num_train_steps > 0:
    metrics["fine"] = fine.train_and_evaluate(config, workdir)
  return metrics


__all__ = ["Preempted", "train_and_evaluate"]
