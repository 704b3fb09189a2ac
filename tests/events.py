"""Event files read back with TensorBoard's own reader and protos (not our
writer's code)."""

import os

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2


def events(path: str) -> list:
  """The events of one file, in order, as TensorBoard's Event protos (as
  written: no conversion of scalars to tensors). The reader checks the
  records' framing and CRCs."""
  return [event_pb2.Event.FromString(record) for record in
          event_file_loader.RawEventFileLoader(os.fspath(path)).Load()]


def tags(logdir: str) -> set:
  """Every summary tag in the event files of `logdir`."""
  found = set()
  for name in os.listdir(logdir):
    if "tfevents" in name:
      for event in events(os.path.join(logdir, name)):
        found.update(value.tag for value in event.summary.value)
  return found
