"""The train loop every stage shares, and the evaluation bookkeeping.

A stage (CoarseNet, FineNet) describes itself to the loop as a `Task`: its
config fields, run directory, state, jitted step, input and evaluation.
The loop owns the rest: steps, progress lines, TensorBoard scalars,
evaluations with the best checkpoint, regular checkpoints that resume
exactly (the input's position included), a stop on too many non-finite
steps, and SIGTERM (save, then raise `Preempted`).
"""

import dataclasses
import itertools
import logging
import signal
import threading
import time
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import optax

from facerecon import checkpoints as ckpt
from facerecon import fileio
from facerecon import rundir
from facerecon.training import tensorboard
from facerecon.training.state import Stage
from facerecon.training.state import TrainState

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Task:
  """One training stage, as the loop runs it."""
  title: str              # 'CoarseNet' or 'FineNet', in progress lines
  stage: Stage            # its config fields (num_train_steps, batch_size, log_every, ...)
  run: rundir.RunDir      # where its checkpoints, best/, events and pictures go
  state: TrainState       # freshly initialised; the newest checkpoint replaces it
  step_fn: Callable       # (state, global batch, rng, context) -> (state, metrics)
  train_data: Any         # an iterator of host batches with get_state / set_state
  make_batch: Callable    # host batch -> the step's global batch
  context: Any            # the step's replicated inputs (face model, statistics, ...)
  schedule: optax.Schedule
  evaluate: Callable      # (state, step, writer) -> metrics


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Preempted(Exception):
  """A SIGTERM stopped training after the checkpoint of `step` was saved;
  running the same command again resumes from it."""

  def __init__(self, step: int):
    super().__init__(f"preempted (SIGTERM) at step {step}: its checkpoint is saved; run the "
                     "same command again to resume")
    self.step = step


class PreemptionFlag:
  """Whether a SIGTERM (how schedulers and TPU maintenance preempt jobs) asks
  the train loop to save a checkpoint and stop at this step.

  One process: a SIGTERM handler sets the flag, seen at the next step.
  Several: the hosts must stop at the same step, or one would leave the
  others waiting in the step's collectives. JAX's preemption service
  (started by jax.distributed.initialize, with its own SIGTERM handler)
  hears the signal on any host and names one step for all of them;
  `reached(step)` must then be asked at every step on every host."""

  def __init__(self):
    self._event = threading.Event()
    self._multihost, self._service_off = jax.process_count() > 1, False
    self._previous = None if self._multihost else signal.signal(
        signal.SIGTERM, lambda signum, frame: self._event.set())

  def reached(self, step: int) -> bool:
    if not self._multihost:
      return self._event.is_set()
    if self._service_off:
      return False
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # jax_enable_preemption_service=False: SIGTERM just kills
      logger.warning("JAX's preemption service is off (jax_enable_preemption_service): "
                     "a SIGTERM will stop this run without a checkpoint")
      self._service_off = True
      return False

  def signalled(self) -> bool:
    """Whether this process got a SIGTERM (one process only: with several,
    JAX's service holds the signal, and it ends a stage at the agreed step
    only, which may lie past the stage's last step)."""
    return not self._multihost and self._event.is_set()

  def restore_handler(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def run(task: Task) -> dict:
  """Trains `task` to its stage's num_train_steps: steps, progress lines and
  TensorBoard scalars every log_every steps, evaluations every eval_every
  (kept in the best checkpoint when they beat it), checkpoints every
  checkpoint_every that resume exactly, SIGTERM. Resumes from the task's
  newest checkpoint. Returns the last evaluation's metrics; raises
  `Preempted` after a SIGTERM, once the checkpoint is saved."""
  stage, run_dir, state, train_data = task.stage.config, task.run, task.state, task.train_data
  checkpoints = ckpt.Checkpoints(run_dir.checkpoints, stage.checkpoint_every,
                                 stage.keep_checkpoints)
  if checkpoints.latest_step() is not None:
    state, data_state = checkpoints.restore(state)
    if data_state is not None:
      train_data.set_state(data_state)
    logger.info("%s: resumed from step %d", task.title, int(state.step))

  best = ckpt.BestCheckpoint(run_dir.best, stage.best_metric, task.stage.field("best_metric"))
  # Process 0 writes the logs and pictures (every process has the same values).
  writer = (tensorboard.SummaryWriter(run_dir.tensorboard)
            if jax.process_index() == 0 else tensorboard.NullWriter())
  preempted = PreemptionFlag()
  key = jax.random.PRNGKey(stage.seed + 1)
  metrics = {}
  try:
    start_step = int(state.step)
    timer, timed_steps = time.perf_counter(), 0

    def check_finite(done, step_metrics):
      if int(step_metrics["bad_in_a_row"]) >= stage.max_bad_steps:
        raise FloatingPointError(
            f"{stage.max_bad_steps} steps in a row had a non-finite loss or gradient "
            f"(step {done}); lower {task.stage.field('learning_rate')} or check the data")

    previous = None  # (step, metrics) of the step before, checked one step late
    for step in range(start_step, stage.num_train_steps):
      batch = task.make_batch(next(train_data))
      state, train_metrics = task.step_fn(state, batch, jax.random.fold_in(key, step),
                                          task.context)
      timed_steps += 1
      done = step + 1
      # Waiting for this step's result here would leave the host idle while
      # it runs; the previous step's is ready or nearly, and the next batch
      # is then made while this step runs.
      if previous is not None:
        check_finite(*previous)
      previous = (done, train_metrics)
      if done % stage.log_every == 0 or done == stage.num_train_steps:
        values = jax.device_get(train_metrics)
        seconds = time.perf_counter() - timer
        images_per_second = timed_steps * stage.batch_size / seconds
        eta = (stage.num_train_steps - done) * seconds / timed_steps
        scalars = {f"train/{k}": float(v) for k, v in values.items()
                   if k not in ("finite", "bad_in_a_row")}
        skipped = int(state.skipped)
        # optax counts only the updates applied: this step's was number
        # done - 1 - skipped (from 0), unless this step was skipped itself.
        scalars.update({"train/learning_rate": float(task.schedule(max(done - 1 - skipped, 0))),
                        "train/images_per_second": images_per_second,
                        "train/skipped_steps": float(skipped)})
        writer.scalars(scalars, done)
        logger.info("%s step %d/%d: loss %.4g, %.0f images/s, ETA %s", task.title, done,
                    stage.num_train_steps, values["loss"], images_per_second, _duration(eta))
        timer, timed_steps = time.perf_counter(), 0
      if done % stage.eval_every == 0 or done == stage.num_train_steps:
        metrics = task.evaluate(state, done, writer)
        if best.update(done, metrics, {"params": state.params,
                                       "batch_stats": state.batch_stats}):
          logger.info("%s: best %s so far, %.4g at step %d", task.title, stage.best_metric,
                      metrics[stage.best_metric], done)
      stop = preempted.reached(done)
      checkpoints.save(done, state, train_data.get_state(),
                       force=stop or done == stage.num_train_steps)
      if stop:
        logger.warning("SIGTERM: saving step %d and stopping", done)
        raise Preempted(done)  # (the checkpoint is written in `finally`)
    if previous is not None:
      check_finite(*previous)
  finally:
    checkpoints.wait()
    checkpoints.close()
    best.close()
    writer.close()
    preempted.restore_handler()
  if preempted.signalled():  # during the last step or the saves: stop all the same
    raise Preempted(int(state.step))
  return metrics


def sum_metrics(batches, num_batches: int, per_host: int, evaluate_batch: Callable,
                on_batch: Callable | None, too_few: str) -> tuple[dict, int]:
  """Sums the metrics of evaluate_batch(host batch) -> (metrics, output)
  over up to `num_batches` of `batches`, stopping at the first with fewer
  than `per_host` images; returns the sums and the number of batches.
  on_batch(index, host batch, output) sees each batch. ValueError(too_few)
  if there is no full batch."""
  sums, count = {}, 0
  for host in itertools.islice(batches, num_batches):
    if len(host["image"]) != per_host:
      break
    values, output = evaluate_batch(host)
    for k, v in jax.device_get(values).items():
      sums[k] = sums.get(k, 0.0) + float(v)
    if on_batch is not None:
      on_batch(count, host, output)
    count += 1
  if not count:
    raise ValueError(too_few)
  return sums, count


def publish_evaluation(writer, run_dir: rundir.RunDir, step: int, sums: dict, count: int,
                       name: str, picture) -> dict:
  """The means of `sums` over `count` batches, written as eval/ scalars with
  the picture as eval/<name> to TensorBoard and (process 0) as
  <run>/<name>.png, and logged. Returns the means."""
  totals = {k: v / count for k, v in sums.items()}
  writer.scalars({f"eval/{k}": v for k, v in totals.items()}, step)
  writer.image(f"eval/{name}", picture, step)
  writer.flush()
  if jax.process_index() == 0:
    fileio.write_png_atomic(run_dir.picture(name), picture)
  logger.info("eval at step %d: %s", step,
              ", ".join(f"{k} {v:.4g}" for k, v in sorted(totals.items())))
  return totals
