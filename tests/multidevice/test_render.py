"""The rasterizer under shard_map on 4 devices: each device rasterizes its
own images, and gradients keep the single-device scale."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from facerecon import camera
from facerecon import face_models
from facerecon import render


@pytest.mark.parametrize("backend", render.BACKENDS)
def test_data_parallel_gradient_scale(backend):
  """Gradients of a replicated parameter equal the single-device ones (not
  4x, as when a kernel's output is typed device-invariant and the backward
  sums it over the devices), also through attributes shared by the batch."""
  if backend not in render.available_backends():
    pytest.skip(f"backend '{backend}' is not available here")
  model = face_models.embedded(grid_size=25, num_shape=12, num_expression=6, num_texture=10)
  rng = np.random.default_rng(0)
  images = []
  for _ in range(8):
    angles = jnp.asarray(rng.uniform(-0.5, 0.5, 3), jnp.float32)
    pose = camera.framing_pose(model.mean_shape, angles, 32, 32)
    images.append(camera.project_scaled_orthographic(model.mean_shape, pose, 32))
  vertices = jnp.stack(images)
  target = jnp.asarray(rng.normal(size=(8, 32, 32)), jnp.float32)

  def local_loss(offset, v, t):
    # A replicated parameter (a shift of every mesh), per-device data.
    moved = v + offset
    raster = render.rasterize(moved, model.triangles, 32, 32, backend=backend)
    depth = render.interpolate(moved[..., 2:], raster, moved, model.triangles,
                               backend=backend)[..., 0]
    fused = render.interpolate_depth(raster, moved, model.triangles, backend=backend)
    # Attributes without the batch dims, shared by the images (as render_face
    # passes the mean texture), here depending on the parameter too.
    shared = render.interpolate(model.texture_mean / 255.0 + offset, raster, moved,
                                model.triangles, backend=backend)[..., 0]
    return jnp.sum(jnp.where(raster.mask, (depth - t) ** 2 + (fused + t) ** 2 + shared * t,
                             0.0))

  offset = jnp.array([0.3, -0.2, 0.5])
  single = jax.grad(local_loss)(offset, vertices, target)

  mesh = jax.make_mesh((4,), ("data",))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))

  def data_parallel(offset, v, t):
    return jax.lax.psum(local_loss(offset, v, t), "data")

  loss = jax.shard_map(data_parallel, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                       out_specs=P())
  sharded = jax.jit(jax.grad(loss))(offset, shard(vertices), shard(target))
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-4)
