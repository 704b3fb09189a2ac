"""Every fast backend against the pure-JAX reference, and the transformations
(jit, vmap, grad, shard_map) the training code relies on."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon import camera
from facerecon import face_render
from facerecon import render
from facerecon.render import _tiles
from facerecon.render import pallas_tpu
from facerecon.render import pallas_triton
from facerecon.render import raster

FAST_BACKENDS = [b for b in render.BACKENDS if b != "reference"]


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request):
  if request.param not in render.available_backends():
    pytest.skip(f"backend '{request.param}' is not available here")
  return request.param


def _coverage_margin(vertices, triangles, ids):
  """For each pixel of ids [B, H, W] and its triangle (where id >= 0) in
  vertices [B, N, 3]: (margin, slack). margin: how far the pixel centre's
  smallest barycentric is above the coverage threshold, exact (float64) for
  the float32 vertices. slack: a bound on how far float32 rounding, with or
  without FMA contraction, can move it (it grows with the triangle's
  conditioning, so it is large for slivers and about 1e-5 for a face mesh)."""
  v = np.asarray(vertices, np.float32).astype(np.float64)
  corner = np.asarray(triangles)[np.maximum(ids, 0)]  # [B, H, W, 3]
  c = v[np.arange(v.shape[0])[:, None, None, None], corner]  # [B, H, W, 3, 3]
  x0, y0 = c[..., 0, 0], c[..., 0, 1]
  e1x, e1y = c[..., 1, 0] - x0, c[..., 1, 1] - y0
  e2x, e2y = c[..., 2, 0] - x0, c[..., 2, 1] - y0
  rows, cols = np.mgrid[0:ids.shape[-2], 0:ids.shape[-1]]
  dx, dy = cols - x0, rows - y0
  with np.errstate(divide="ignore", invalid="ignore"):  # degenerate picks get NaN: rejected
    area = e1x * e2y - e1y * e2x
    k1x, k1y, k2x, k2y = e2y / area, -e2x / area, -e1y / area, e1x / area
    b1, b2 = k1x * dx + k1y * dy, k2x * dx + k2y * dy
    margin = np.minimum(np.minimum(1 - b1 - b2, b1), b2) + np.float64(np.float32(1e-6))
    conditioning = (np.abs(e1x * e2y) + np.abs(e1y * e2x)) / np.abs(area)
    terms = np.abs(k1x * dx) + np.abs(k1y * dy) + np.abs(k2x * dx) + np.abs(k2y * dy)
  eps = np.finfo(np.float32).eps
  return margin, 4 * eps * (6 + conditioning) * (1 + terms)


def _assert_same_raster(fast, reference, vertices, triangles, label=""):
  """`fast` agrees with `reference` (Rasters of vertices [..., N, 3]) as far
  as float32 rounding allows (see facerecon/render.py's docstring).

  Every shown triangle covers its pixel, up to rounding, and ids lie in
  [-1, T). Triangle ids are identical except at pixels where the choice is
  within rounding: one backend's pick lies within rounding of its coverage
  threshold there and is in front of the other's (or the other shows
  background), or the two picks' depths tie within 1e-5 of the depth range.
  Where ids agree, depth is within 1e-5 of the depth range and barycentrics
  within 1e-5.
  """
  height, width = np.shape(reference.triangle_id)[-2:]
  num_triangles = np.shape(triangles)[0]
  vertices = np.asarray(vertices).reshape((-1,) + np.shape(vertices)[-2:])
  ids_f = np.asarray(fast.triangle_id).reshape(-1, height, width)
  ids_r = np.asarray(reference.triangle_id).reshape(-1, height, width)
  depth_f = np.asarray(fast.depth).reshape(-1, height, width)
  depth_r = np.asarray(reference.depth).reshape(-1, height, width)
  near = {}
  for name, ids in (("fast", ids_f), ("reference", ids_r)):
    assert np.all((ids >= -1) & (ids < num_triangles)), (
        f"{label} {name}: ids outside [-1, {num_triangles}): {np.unique(ids)}")
    margin, slack = _coverage_margin(vertices, triangles, ids)
    outside = (ids >= 0) & ~(margin >= -slack)
    assert not outside.any(), (f"{label} {name}: {outside.sum()} pixels show a triangle that "
                               f"does not cover them, e.g. {np.argwhere(outside)[:3].tolist()}")
    near[name] = (ids >= 0) & (np.abs(margin) <= slack)
  tolerance = 1e-5 * max(np.abs(depth_r).max(), 1e-6)
  differ = ids_f != ids_r
  rounding = ((near["fast"] & ((ids_r < 0) | (depth_f >= depth_r - tolerance)))
              | (near["reference"] & ((ids_f < 0) | (depth_r >= depth_f - tolerance)))
              | ((ids_f >= 0) & (ids_r >= 0) & (np.abs(depth_f - depth_r) <= tolerance)))
  unexplained = differ & ~rounding
  assert not unexplained.any(), (
      f"{label}: {unexplained.sum()} pixels pick different triangles beyond rounding, e.g. "
      f"(image, row, column) {np.argwhere(unexplained)[:3].tolist()}")
  same = ~differ
  np.testing.assert_array_less(np.abs(depth_f - depth_r)[same], tolerance + 1e-30)
  covered = same & (ids_r >= 0)
  np.testing.assert_allclose(
      np.asarray(fast.barycentric).reshape(-1, height, width, 3)[covered],
      np.asarray(reference.barycentric).reshape(-1, height, width, 3)[covered], atol=1e-5)


def _raster_of_ids(vertices, triangles, ids):
  """The Raster a pure-JAX backend returns with triangle ids [B, H, W] found
  for vertices [B, N, 3]: the other fields come from the common code."""
  return render.Raster(ids, *raster.raster_fields(vertices, triangles, ids))


# A sliver whose corner v1 lies exactly on pixel centre (row 7, column 6), in an
# 18 x 21 image: whether it covers that pixel depends on FMA contraction.
_SLIVER = np.array([[9.0, 5.0, 17.173858642578125], [6.0, 7.0, 17.894287109375],
                    [7.5735273361206055, 5.930615425109863, 16.842514038085938]], np.float32)


def test_sliver_with_a_corner_on_a_pixel_centre():
  """Every backend that runs here (the Pallas kernels interpreted) draws the
  sliver as the reference does up to rounding, and nothing else: 'scatter'
  once put its depth at pixel (0, 0) with the no-triangle sentinel as id
  when its passes disagreed on the corner pixel."""
  from jax.experimental.pallas import tpu as pltpu

  vertices, triangles = jnp.asarray(_SLIVER)[None], jnp.array([[0, 1, 2]], jnp.int32)
  reference = render.rasterize(vertices, triangles, 18, 21, backend="reference")
  rasters = {b: render.rasterize(vertices, triangles, 18, 21, backend=b)
             for b in render.available_backends()}
  rasters["pallas (interpreted)"] = _raster_of_ids(vertices, triangles, pallas_tpu.rasterize_ids(
      vertices, triangles, 18, 21, interpret=pltpu.InterpretParams()))
  rasters["triton (interpreted)"] = _triton_interpret_raster(vertices, triangles, height=18,
                                                             width=21)
  for name, result in rasters.items():
    assert not bool(result.mask[0, 0, 0]), name
    _assert_same_raster(result, reference, vertices, triangles, label=name)


def test_raster_comparison_allows_rounding_only():
  """The comparison above accepts a different pick on a shared edge (a tie
  within rounding) but not a pixel dropped or given to a triangle that does
  not cover it."""
  square = jnp.array([[[0.5, 0.5, 1], [6.5, 0.5, 1], [6.5, 6.5, 1], [0.5, 6.5, 1]]],
                     jnp.float32)
  triangles = jnp.array([[0, 1, 2], [0, 2, 3]], jnp.int32)
  reference = render.rasterize(square, triangles, 8, 8, backend="reference")
  ids = reference.triangle_id
  assert int(ids[0, 3, 3]) == 0 and int(ids[0, 2, 5]) == 0  # (3, 3) is on the shared edge
  edge_swapped = _raster_of_ids(square, triangles, ids.at[0, 3, 3].set(1))
  _assert_same_raster(edge_swapped, reference, square, triangles)
  for wrong in (-1, 1):  # (2, 5) lies well inside triangle 0 only
    with pytest.raises(AssertionError):
      _assert_same_raster(_raster_of_ids(square, triangles, ids.at[0, 2, 5].set(wrong)),
                          reference, square, triangles)


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
  _assert_same_raster(fast, reference, vertices, triangles)


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
  _assert_same_raster(fast, reference, batch, default_model.triangles)


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
    face = face_render.render_face(small_model, p, None, 40, 40, backend=backend)
    return jnp.sum(jnp.where(face.mask, (face.depth - target) ** 2, 0.0))

  value_fast, grad_fast = jax.value_and_grad(loss)(params, fast_backend)
  value_ref, grad_ref = jax.value_and_grad(loss)(params, "reference")
  np.testing.assert_allclose(float(value_fast), float(value_ref), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad_fast), np.asarray(grad_ref), rtol=1e-3, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(grad_fast)))
  assert np.abs(np.asarray(grad_fast)[0, :7]).min() > 0  # every pose entry


@pytest.mark.parametrize("seed", [0, 1])
def test_pallas_kernel_in_tpu_interpret_mode(seed, small_model):
  """The Mosaic (TPU) kernel, run with TPU semantics on the CPU, agrees with
  the reference: random meshes (with large triangles, which take the dense
  path) and a batch of faces."""
  from jax.experimental.pallas import tpu as pltpu

  rng = np.random.default_rng(seed)
  vertices, triangles = _random_mesh(rng, 30, 120, 21, 30)
  interpret = pltpu.InterpretParams()
  ids = pallas_tpu.rasterize_ids(vertices[None], triangles, 21, 30, interpret=interpret)
  reference = render.rasterize(vertices[None], triangles, 21, 30, backend="reference")
  _assert_same_raster(_raster_of_ids(vertices[None], triangles, ids), reference, vertices[None],
                      triangles)

  faces = []
  for yaw in (-0.6, 0.5):
    pose = camera.framing_pose(small_model.mean_shape, jnp.array([0.1, yaw, 0.0]), 18, 26)
    faces.append(camera.project_scaled_orthographic(small_model.mean_shape, pose, 18))
  faces = jnp.stack(faces)
  triangles = jnp.asarray(small_model.triangles)
  ids = pallas_tpu.rasterize_ids(faces, triangles, 18, 26, interpret=interpret)
  reference = render.rasterize(faces, triangles, 18, 26, backend="reference")
  _assert_same_raster(_raster_of_ids(faces, triangles, ids), reference, faces, triangles)


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _triton_interpret_raster(vertices, triangles, height, width):
  """The Triton kernel's Raster for vertices [B, N, 3], run with interpret=True
  on the CPU; the other fields come from the backends' common code."""

  return _raster_of_ids(vertices, triangles, pallas_triton.rasterize_ids(
      vertices, triangles, height, width, interpret=True))


def _assert_triton_interpret_agrees(vertices, triangles, height, width):
  fast = _triton_interpret_raster(vertices, triangles, height=height, width=width)
  reference = render.rasterize(vertices, triangles, height, width, backend="reference")
  _assert_same_raster(fast, reference, vertices, triangles)
  return reference


@pytest.mark.parametrize("seed", [0, 1])
def test_triton_kernel_in_interpret_mode_on_random_meshes(seed):
  """The Triton (GPU) kernel, interpreted on the CPU, agrees with the
  reference on a batch of random meshes (one launch, grid over the batch):
  tiles with several chunks, and large triangles that take the dense path."""

  rng = np.random.default_rng(seed)
  vertices, triangles = _random_mesh(rng, 60, 800, 20, 28)
  batch = jnp.stack([vertices, vertices + jnp.asarray(rng.normal(size=vertices.shape), jnp.float32),
                     vertices * jnp.array([0.7, 1.2, -1.0])])
  _, _, chunk_start, _, _, large = _tiles.bin_triangles(
      vertices, triangles, 20, 28, pallas_triton.TILE, pallas_triton.CHUNK)
  assert 0 < int(large.sum()) < triangles.shape[0]
  assert int(jnp.max(jnp.diff(chunk_start))) >= 2  # the chunk loop runs more than once
  reference = _assert_triton_interpret_agrees(batch, triangles, 20, 28)
  assert np.asarray(reference.mask).mean() > 0.3


def test_triton_kernel_in_interpret_mode_on_faces(small_model):
  faces = []
  for yaw in (-0.6, 0.1, 0.5):
    pose = camera.framing_pose(small_model.mean_shape, jnp.array([0.1, yaw, 0.0]), 20, 28)
    faces.append(camera.project_scaled_orthographic(small_model.mean_shape, pose, 20))
  reference = _assert_triton_interpret_agrees(jnp.stack(faces), jnp.asarray(small_model.triangles),
                                              20, 28)
  assert np.asarray(reference.mask).mean() > 0.2


def test_triton_kernel_in_interpret_mode_on_edge_cases():
  """Triangles partly off-screen, degenerate and non-finite ones, a triangle
  larger than the image (dense path), exact depth ties between the kernel and
  the dense path and across chunks, 1x1 and empty renders (no triangles, no images)."""

  nan, inf = float("nan"), float("inf")
  corners = [
      [[-5, -4, 1], [8, -3, 1], [-2, 9, 1]],          # 0: partly off-screen, z = 1
      [[-40, -40, 1], [90, -40, 1], [-40, 90, 1]],    # 1: covers the image (dense), z = 1
      [[12, 4, 3], [20, 4, 3], [12, 12, 3]],          # 2: spans tiles 0 and 1, z = 3
      [[25, 17, 2], [33, 18, 2], [26, 25, 2]],        # 3: off the bottom-right corner
      [[1, 1, 4], [5, 5, 4], [9, 9, 4]],              # 4: zero area
      [[3, 3, 4], [3, 3, 4], [3, 3, 4]],              # 5: a point
      [[nan, 2, 4], [4, 4, 4], [2, 6, 4]],            # 6: NaN vertex
      [[inf, 2, 4], [4, 4, 4], [2, 6, 4]],            # 7: infinite vertex
  ] + [[[16, 4, 3], [22, 4, 3], [16, 10, 3]]] * 40    # 8-47: copies tying with 2, in tile 1
  vertices = jnp.asarray(np.asarray(corners, np.float32).reshape(-1, 3))
  triangles = jnp.arange(vertices.shape[0], dtype=jnp.int32).reshape(-1, 3)
  _, _, chunk_start, _, _, large = _tiles.bin_triangles(
      vertices, triangles, 20, 28, pallas_triton.TILE, pallas_triton.CHUNK)
  assert bool(large[1]) and not bool(large[2]) and int(chunk_start[2] - chunk_start[1]) == 2

  reference = _assert_triton_interpret_agrees(vertices[None], triangles, 20, 28)
  ids = np.asarray(reference.triangle_id[0])
  assert ids[0, 0] == 0 and ids[19, 0] == 1  # 0 ties the dense path's 1: lower index
  assert ids[19, 27] == 3
  assert ids[4, 17] == 2 and ids[5, 20] == 8  # 2 ties the copies (its entry is in chunk 2)
  assert np.all(ids >= 0)
  _assert_triton_interpret_agrees(vertices[None], triangles, 1, 1)
  # No triangles at all.
  empty = pallas_triton.rasterize_ids(vertices[None], jnp.zeros((0, 3), jnp.int32), 20, 28,
                                      interpret=True)
  np.testing.assert_array_equal(np.asarray(empty), -1)
  # No images (no empty launch grid).
  assert pallas_triton.rasterize_ids(vertices[None][:0], triangles, 20, 28,
                                     interpret=True).shape == (0, 20, 28)


def test_triton_backend_is_listed_on_gpus_only():
  assert ("triton" in render.available_backends()) == (jax.default_backend() == "gpu")
  if jax.default_backend() == "gpu":
    assert render.default_backend() == "scatter"  # until the kernel is measured on a GPU


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the compiled Triton kernel needs a GPU")
def test_triton_kernel_on_gpu(small_model):
  """The real compiled Triton kernel: agrees with the reference on random
  meshes and a batch of faces, and under jax.grad of a depth loss."""
  rng = np.random.default_rng(5)
  vertices, triangles = _random_mesh(rng, 60, 300, 37, 45)
  fast = render.rasterize(vertices, triangles, 37, 45, backend="triton")
  reference = render.rasterize(vertices, triangles, 37, 45, backend="reference")
  _assert_same_raster(fast, reference, vertices, triangles)

  faces = []
  for yaw in (-0.8, -0.2, 0.4, 0.9):
    pose = camera.framing_pose(small_model.mean_shape, jnp.array([0.1, yaw, 0.0]), 64, 48)
    faces.append(camera.project_scaled_orthographic(small_model.mean_shape, pose, 64))
  faces = jnp.stack(faces)
  target = jnp.asarray(rng.normal(size=(4, 64, 48)), jnp.float32)
  fast = render.rasterize(faces, small_model.triangles, 64, 48, backend="triton")
  reference = render.rasterize(faces, small_model.triangles, 64, 48, backend="reference")
  _assert_same_raster(fast, reference, faces, small_model.triangles)

  def loss(v, backend):
    raster = render.rasterize(v, small_model.triangles, 64, 48, backend=backend)
    depth = render.interpolate(v[..., 2:], raster, v, small_model.triangles)[..., 0]
    return jnp.sum(jnp.where(raster.mask, (depth - target) ** 2, 0.0))

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  grad_fast, grad_ref = grad(faces, "triton"), grad(faces, "reference")
  assert np.all(np.isfinite(np.asarray(grad_fast))) and np.abs(np.asarray(grad_fast)).max() > 0
  np.testing.assert_allclose(np.asarray(grad_fast), np.asarray(grad_ref), rtol=1e-4, atol=1e-6)


def test_the_install_goes_on_without_a_compiler(tmp_path):
  """setup.py's kernel build with no C++ compiler: it warns and succeeds,
  building nothing (the package then renders with 'scatter')."""
  import subprocess
  import sys

  from conftest import ROOT

  env = dict(os.environ, CC=str(tmp_path / "no-cc"), CXX=str(tmp_path / "no-c++"))
  result = subprocess.run(
      [sys.executable, "setup.py", "build_ext", f"--build-lib={tmp_path / 'lib'}",
       f"--build-temp={tmp_path / 'tmp'}"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "CPU rasterizer kernel was not built" in result.stderr
  assert "'scatter'" in result.stderr
  assert not list((tmp_path / "lib").rglob("*.so"))


def test_without_the_kernel_rendering_falls_back_to_scatter_with_a_warning():
  import subprocess
  import sys

  from conftest import ROOT

  script = (
      "import logging, numpy as np\n"
      "logging.basicConfig()\n"
      "from facerecon.render import raster\n"
      "print(raster.default_backend())\n"
      "v = np.array([[[2.0, 2.0, 1.0], [12.0, 3.0, 1.0], [4.0, 12.0, 1.0]]], np.float32)\n"
      "ids = raster.rasterize(v, np.array([[0, 1, 2]], np.int32), 16, 16).triangle_id\n"
      "print(int((np.asarray(ids) == 0).sum()))\n")
  env = dict(os.environ, FACERECON_CPU_KERNEL="/nonexistent/_rasterize_cpu.so",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  backend, covered = result.stdout.split()
  assert backend == "scatter" and int(covered) > 20
  assert "cannot load the CPU rasterizer kernel" in result.stderr
  assert "'scatter' backend" in result.stderr


def test_a_source_distribution_carries_the_kernels(tmp_path):
  """MANIFEST.in: an sdist builds the kernels on the user's machine, so it
  must carry their sources (and the configs and assets the README uses)."""
  import subprocess
  import sys
  import tarfile

  from conftest import ROOT

  result = subprocess.run(
      [sys.executable, "setup.py", "-q", "egg_info", f"--egg-base={tmp_path}", "sdist",
       f"--dist-dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  (archive,) = tmp_path.glob("*.tar.gz")
  with tarfile.open(archive) as tar:
    names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
  assert {"kernels/rasterize_cpu.cc", "kernels/rasterize.h", "setup.py", "configs/real.py",
          "facerecon/assets/blazeface_full_range.npz", "facerecon/assets/MediaPipe-LICENSE",
          "facerecon/models/graph.py"} <= names
