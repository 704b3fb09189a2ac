"""Data parallelism: the device mesh, batch shardings, and per-device steps.

Training jits over a one-axis mesh ('data'): the global batch is split over
all devices (of all hosts), parameters are replicated, and XLA inserts the
cross-device reductions. That partitioning does not reach XLA custom calls
(the CPU rasterizer): given a sharded batch, XLA gathers it and every device
rasterizes the whole batch. `mean_per_device` and `map_per_device` run such
steps under `jax.shard_map` instead, each device on its own examples.
"""

from typing import Callable

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A one-axis mesh over `devices` (default: every device of every host)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh):
  """This host's part of the global batch (numpy, leading axis = examples)
  -> global arrays split over the mesh's data axis."""
  sharding = batch_sharding(mesh)
  per_device = jax.process_count() * np.asarray(jax.tree.leaves(batch)[0]).shape[0]
  if per_device % mesh.size:
    raise ValueError(f"the global batch ({per_device}) does not split evenly over "
                     f"{mesh.size} devices; make the batch size a multiple of the device "
                     "count")
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def check_batch_sizes(sizes: dict) -> None:
  """ValueError naming the field unless every batch size of `sizes` (config
  field name -> value) splits evenly over the devices of all hosts (checked
  at the start, not at the first evaluation a thousand steps in)."""
  for field, size in sizes.items():
    if size % jax.device_count():
      raise ValueError(f"{field} ({size}) must be a multiple of the {jax.device_count()} "
                       "devices")


def _specs(num_batched: int, num_args: int):
  return tuple(P(DATA_AXIS) if i < num_batched else P() for i in range(num_args))


def map_per_device(fn: Callable, mesh: Mesh | None, num_batched: int) -> Callable:
  """fn(*args) run by each device on its examples: the first `num_batched`
  arguments (pytrees of arrays with a leading batch axis) are split over the
  data axis, the rest replicated; every output has a leading batch axis.
  Without a mesh, or with one device, `fn` itself."""
  if mesh is None or mesh.size == 1:
    return fn

  def sharded(*args):
    return jax.shard_map(fn, mesh=mesh, in_specs=_specs(num_batched, len(args)),
                         out_specs=P(DATA_AXIS))(*args)

  return sharded


def mean_per_device(fn: Callable, mesh: Mesh | None, num_batched: int) -> Callable:
  """Like `map_per_device` for an `fn` whose outputs are means over its
  examples: each device computes them on its part of the batch, and they
  are averaged over the devices (equal parts, so that is the global batch's
  mean, and gradients flow back to each device's examples)."""
  if mesh is None or mesh.size == 1:
    return fn

  def per_device(*args):
    return jax.lax.pmean(fn(*args), DATA_AXIS)

  def sharded(*args):
    return jax.shard_map(per_device, mesh=mesh, in_specs=_specs(num_batched, len(args)),
                         out_specs=P())(*args)

  return sharded
