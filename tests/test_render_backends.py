"""Every fast backend against the pure-JAX reference, and the transformations
(jit, vmap, grad, shard_map) the training code relies on."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon import camera
from facerecon import render

from conftest import ROOT

FAST_BACKENDS = [b for b in render.BACKENDS if b != "reference"]


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request):
  if request.param not in render.available_backends():
    pytest.skip(f"backend '{request.param}' is not available here")
  return request.param


def _assert_same_raster(fast, reference):
  """Identical triangle ids except where depths tie exactly; depth within
  1e-5 of the depth range."""
  ids_f, ids_r = np.asarray(fast.triangle_id), np.asarray(reference.triangle_id)
  depth_f, depth_r = np.asarray(fast.depth), np.asarray(reference.depth)
  differ = ids_f != ids_r
  assert np.all(depth_f[differ] == depth_r[differ]), (
      f"{differ.sum()} pixels pick different triangles at different depths")
  scale = max(np.abs(depth_r).max(), 1e-6)
  np.testing.assert_array_less(np.abs(depth_f - depth_r), 1e-5 * scale + 1e-30)
  covered = ids_r >= 0
  np.testing.assert_allclose(np.asarray(fast.barycentric)[covered & ~differ],
                             np.asarray(reference.barycentric)[covered & ~differ],
                             atol=1e-5)


def _random_mesh(rng, num_vertices, num_triangles, height, width):
  """Triangles of mixed sizes, some partly or fully off-screen."""
  vertices = np.stack([rng.uniform(-10, width + 10, num_vertices),
                       rng.uniform(-10, height + 10, num_vertices),
                       rng.normal(size=num_vertices) * 20], axis=1)
  triangles = rng.integers(0, num_vertices, size=(num_triangles, 3))
  # Make most triangles small: pull two corners towards the first.
  small = rng.uniform(size=num_triangles) < 0.8
  for corner in (1, 2):
    offset = rng.normal(size=(num_triangles, 3)) * [2.0, 2.0, 1.0]
    vertices_small = vertices[triangles[:, 0]] + offset
    new_index = num_vertices + np.arange(num_triangles) + (corner - 1) * num_triangles
    vertices = np.concatenate([vertices, vertices_small])
    triangles[small, corner] = new_index[small]
  return jnp.asarray(vertices, jnp.float32), jnp.asarray(triangles, jnp.int32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_reference_on_random_meshes(fast_backend, seed):
  rng = np.random.default_rng(seed)
  vertices, triangles = _random_mesh(rng, 60, 300, 37, 45)
  fast = render.rasterize(vertices, triangles, 37, 45, backend=fast_backend)
  reference = render.rasterize(vertices, triangles, 37, 45, backend="reference")
  assert np.asarray(reference.mask).mean() > 0.3
  _assert_same_raster(fast, reference)


def test_agrees_with_reference_on_faces(fast_backend, default_model):
  rng = np.random.default_rng(3)
  images = []
  for _ in range(3):
    angles = jnp.asarray(rng.uniform([-0.6, -1.4, -0.4], [0.6, 1.4, 0.4]), jnp.float32)
    pose = camera.framing_pose(default_model.mean_shape, angles, 96, 80)
    images.append(camera.project_scaled_orthographic(default_model.mean_shape, pose, 96))
  batch = jnp.stack(images)
  fast = render.rasterize(batch, default_model.triangles, 96, 80, backend=fast_backend)
  reference = render.rasterize(batch, default_model.triangles, 96, 80, backend="reference")
  _assert_same_raster(fast, reference)


def test_traced_out_of_range_indices_fail_clearly(fast_backend):
  """Concrete indices are checked in Python for every backend; traced ones
  are checked by the compiled kernel, and pure-JAX backends (whose gathers
  clamp) still give defined output."""
  vertices = jnp.zeros((3, 3)).at[:, :2].set(jnp.array([[0.0, 0], [3, 0], [0, 3]]))
  call = jax.jit(lambda t: render.rasterize(vertices, t, 4, 4, backend=fast_backend))
  bad = jnp.array([[0, 1, 2], [0, 5, 1]], jnp.int32)
  if fast_backend == "cpu":
    with pytest.raises(Exception, match=r"triangle 1 has a vertex index outside \[0, 3\)"):
      jax.block_until_ready(call(bad))
  else:
    raster = jax.block_until_ready(call(bad))
    ids = np.asarray(raster.triangle_id)
    assert np.all((ids >= -1) & (ids < 2)) and np.all(np.isfinite(np.asarray(raster.depth)))


def test_vmap_over_vertices_and_topologies(fast_backend, small_model):
  pose = camera.framing_pose(small_model.mean_shape, jnp.zeros(3), 24, 24)
  image = camera.project_scaled_orthographic(small_model.mean_shape, pose, 24)
  batch = jnp.stack([image, image + jnp.array([2.0, 1.0, 0.0])])
  direct = render.rasterize(batch, small_model.triangles, 24, 24, backend=fast_backend)
  mapped = jax.vmap(lambda v: render.rasterize(
      v, small_model.triangles, 24, 24, backend=fast_backend))(batch)
  np.testing.assert_array_equal(np.asarray(mapped.triangle_id), np.asarray(direct.triangle_id))
  # One topology per image: the second image keeps only half the triangles.
  half = jnp.asarray(small_model.triangles).at[::2].set(small_model.triangles[0])
  both = jnp.stack([small_model.triangles, half])
  per_image = jax.vmap(lambda v, t: render.rasterize(v, t, 24, 24, backend=fast_backend))(
      batch, both)
  np.testing.assert_array_equal(np.asarray(per_image.triangle_id[0]),
                                np.asarray(direct.triangle_id[0]))
  assert np.asarray(per_image.mask[1]).sum() < np.asarray(direct.mask[1]).sum()


def test_face_render_gradients_match_reference(fast_backend, small_model):
  rng = np.random.default_rng(4)
  layout = small_model.layout
  shape = rng.normal(size=layout.num_shape) * small_model.shape_std
  base_pose = camera.framing_pose(small_model.mean_shape, jnp.array([0.1, 0.3, 0.0]), 40, 40)
  params = jnp.concatenate([base_pose, jnp.asarray(shape, jnp.float32),
                            jnp.zeros(layout.num_expression)])[None]
  target = jnp.asarray(rng.normal(size=(1, 40, 40)), jnp.float32)

  def loss(p, backend):
    face = render.render_face(small_model, p, None, 40, 40, backend=backend)
    return jnp.sum(jnp.where(face.mask, (face.depth - target) ** 2, 0.0))

  value_fast, grad_fast = jax.value_and_grad(loss)(params, fast_backend)
  value_ref, grad_ref = jax.value_and_grad(loss)(params, "reference")
  np.testing.assert_allclose(float(value_fast), float(value_ref), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad_fast), np.asarray(grad_ref), rtol=1e-3, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(grad_fast)))
  assert np.abs(np.asarray(grad_fast)[0, :7]).min() > 0  # every pose entry


_SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from facerecon import camera, morphable, render
    assert jax.device_count() == 4, jax.devices()
    model = morphable.embedded_model(grid_size=25, num_shape=12, num_expression=6,
                                     num_texture=10)
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
      raster = render.rasterize(moved, model.triangles, 32, 32, backend="{backend}")
      depth = render.interpolate(moved[..., 2:], raster, moved, model.triangles)[..., 0]
      return jnp.sum(jnp.where(raster.mask, (depth - t) ** 2, 0.0))

    offset = jnp.array([0.3, -0.2, 0.5])
    single = jax.grad(local_loss)(offset, vertices, target)

    mesh = jax.make_mesh((4,), ("data",))
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    def data_parallel(offset, v, t):
      return jax.lax.psum(local_loss(offset, v, t), "data")
    loss = jax.shard_map(data_parallel, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                         out_specs=P())
    sharded = jax.jit(jax.grad(loss))(offset, shard(vertices), shard(target))
    ratio = np.asarray(sharded) / np.asarray(single)
    print("ratio", ratio)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-4)
    print("OK")
""")


@pytest.mark.parametrize("backend_name", render.BACKENDS)
def test_data_parallel_gradient_scale_on_four_devices(backend_name):
  """Each of 4 devices rasterizes its own images; gradients of a replicated
  parameter equal the single-device ones (not 4x: see DEVELOPERS.md)."""
  if backend_name not in render.available_backends():
    pytest.skip(f"backend '{backend_name}' is not available here")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-c", _SHARDED_SCRIPT.replace("{backend}", backend_name)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "OK" in result.stdout, (
      result.stdout[-2000:] + result.stderr[-4000:])


@pytest.mark.parametrize("seed", [0, 1])
def test_pallas_kernel_in_tpu_interpret_mode(seed, small_model):
  """The Mosaic (TPU) kernel, run with TPU semantics on the CPU, agrees with
  the reference: random meshes (with large triangles, which take the dense
  path) and a batch of faces."""
  from jax.experimental.pallas import tpu as pltpu
  from facerecon import render_pallas

  rng = np.random.default_rng(seed)
  vertices, triangles = _random_mesh(rng, 30, 120, 21, 30)
  interpret = pltpu.InterpretParams()
  ids = render_pallas.rasterize_ids(vertices[None], triangles, 21, 30, interpret=interpret)
  reference = render.rasterize(vertices, triangles, 21, 30, backend="reference")
  np.testing.assert_array_equal(np.asarray(ids[0]), np.asarray(reference.triangle_id))

  faces = []
  for yaw in (-0.6, 0.5):
    pose = camera.framing_pose(small_model.mean_shape, jnp.array([0.1, yaw, 0.0]), 18, 26)
    faces.append(camera.project_scaled_orthographic(small_model.mean_shape, pose, 18))
  faces = jnp.stack(faces)
  ids = render_pallas.rasterize_ids(faces, jnp.asarray(small_model.triangles), 18, 26,
                                    interpret=interpret)
  reference = render.rasterize(faces, small_model.triangles, 18, 26, backend="reference")
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(reference.triangle_id))
