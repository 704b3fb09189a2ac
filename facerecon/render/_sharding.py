"""Typing of values under `jax.shard_map`, shared by the kernels and the
pure-JAX backends: inside shard_map a value is "varying" over the manual
mesh axes or not, and scan carries, scatter targets, custom-VJP inputs and
kernel outputs must match the data they are computed from.
"""

import jax


def vary_like(tree, like):
  """Under shard_map, make values vary over the mesh axes of `like` (scan
  carries, scatter targets and custom-VJP inputs must match the data's
  type); axes a value already varies over are left as they are."""
  varying = jax.typeof(like).manual_axis_type.varying

  def cast(x):
    missing = tuple(a for a in varying if a not in jax.typeof(x).manual_axis_type.varying)
    return jax.lax.pcast(x, missing, to="varying") if missing else x

  return jax.tree.map(cast, tree)


def output_like(like, shape, dtype) -> jax.ShapeDtypeStruct:
  """The type of a kernel output (FFI call or pallas_call) computed from `like`.

  Inside shard_map an output varies over the same manual mesh axes as the
  inputs. Typing it so keeps JAX from treating it as device-invariant, which
  would sum gradients across devices (FFI) or fail the trace (pallas_call,
  whose check demands a manual axis type).
  """
  aval = jax.typeof(like)
  if jax.sharding.AxisType.Manual not in aval.sharding.mesh.axis_types:
    return jax.ShapeDtypeStruct(shape, dtype)  # not inside shard_map
  replicated = aval.sharding.update(spec=jax.sharding.PartitionSpec(*[None] * len(shape)))
  return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated,
                              manual_axis_type=aval.manual_axis_type)

