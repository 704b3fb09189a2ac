"""The reference rasterizer and interpolate: the semantics every backend follows."""

import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon import camera
from facerecon import render
from facerecon import shading

TRIANGLE = jnp.array([[0, 1, 2]], jnp.int32)


def _brute_force_coverage(corners, height, width):
  """Pixels whose centre is inside or on the triangle (exact, float64)."""
  (x0, y0, _), (x1, y1, _), (x2, y2, _) = np.asarray(corners, np.float64)
  rows, cols = np.mgrid[0:height, 0:width]
  def edge(ax, ay, bx, by):
    return (bx - ax) * (rows - ay) - (by - ay) * (cols - ax)
  w = np.stack([edge(x1, y1, x2, y2), edge(x2, y2, x0, y0), edge(x0, y0, x1, y1)])
  return np.all(w >= 0, axis=0) | np.all(w <= 0, axis=0)


def test_single_triangle_coverage_depth_and_barycentrics(backend):
  vertices = jnp.array([[1.3, 1.2, 1.0], [9.6, 2.1, 2.0], [3.4, 8.7, 4.0]])
  r = render.rasterize(vertices, TRIANGLE, 11, 12, backend=backend)
  np.testing.assert_array_equal(np.asarray(r.mask),
                                _brute_force_coverage(vertices, 11, 12))
  assert r.triangle_id.dtype == jnp.int32 and r.triangle_id.shape == (11, 12)
  np.testing.assert_array_equal(np.asarray(r.triangle_id)[~np.asarray(r.mask)], -1)
  bary = np.asarray(r.barycentric)[np.asarray(r.mask)]
  np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-6)
  assert bary.min() >= -1e-6
  # Depth is interpolated per pixel (the original used one flat value).
  rows, cols = np.nonzero(np.asarray(r.mask))
  points = bary @ np.asarray(vertices)
  np.testing.assert_allclose(points[:, 0], cols, atol=1e-4)
  np.testing.assert_allclose(points[:, 1], rows, atol=1e-4)
  np.testing.assert_allclose(np.asarray(r.depth)[rows, cols], points[:, 2], rtol=1e-5)
  assert len(np.unique(np.asarray(r.depth)[rows, cols])) > 5
  np.testing.assert_array_equal(np.asarray(r.depth)[~np.asarray(r.mask)],
                                render.BACKGROUND_DEPTH)


def test_nearer_triangle_wins_and_ties_go_to_lower_index(backend):
  far = [[0, 0, 1.0], [10, 0, 1.0], [0, 10, 1.0]]
  near = [[0, 0, 2.0], [10, 0, 2.0], [0, 10, 2.0]]
  vertices = jnp.array(far + near, jnp.float32)
  triangles = jnp.array([[0, 1, 2], [3, 4, 5]], jnp.int32)
  r = render.rasterize(vertices, triangles, 8, 8, backend=backend)
  covered = np.asarray(r.mask)
  assert np.all(np.asarray(r.triangle_id)[covered] == 1)
  # Exactly equal depth: the lower index wins.
  tie = jnp.array(far + far, jnp.float32)
  r = render.rasterize(tie, triangles, 8, 8, backend=backend)
  assert np.all(np.asarray(r.triangle_id)[np.asarray(r.mask)] == 0)


def test_shared_edges_leave_no_cracks(backend):
  """Two triangles of a square: every pixel of the square is covered."""
  square = jnp.array([[0.5, 0.5, 0], [6.5, 0.5, 0], [6.5, 6.5, 0], [0.5, 6.5, 0]],
                     jnp.float32)
  triangles = jnp.array([[0, 1, 2], [0, 2, 3]], jnp.int32)
  r = render.rasterize(square, triangles, 8, 8, backend=backend)
  expected = np.zeros((8, 8), bool)
  expected[1:7, 1:7] = True
  np.testing.assert_array_equal(np.asarray(r.mask), expected)


def test_partly_outside_triangles_are_clipped_not_dropped(backend):
  vertices = jnp.array([[-20.0, -5.0, 1.0], [30.0, 2.0, 1.0], [4.0, 40.0, 1.0]])
  r = render.rasterize(vertices, TRIANGLE, 10, 10, backend=backend)
  np.testing.assert_array_equal(np.asarray(r.mask), _brute_force_coverage(vertices, 10, 10))
  assert np.asarray(r.mask).sum() > 50


@pytest.mark.parametrize("vertices", [
    [[1, 1, 0], [5, 5, 0], [9, 9, 0]],              # collinear: zero area
    [[3, 3, 0], [3, 3, 0], [3, 3, 0]],              # a point
    [[np.nan, 1, 0], [5, 1, 0], [1, 5, 0]],         # NaN
    [[np.inf, 1, 0], [5, 1, 0], [1, 5, 0]],         # inf
    [[1, 1, np.nan], [5, 1, 0], [1, 5, 0]],         # NaN depth
    [[100, 100, 0], [120, 100, 0], [100, 120, 0]],  # off-screen
], ids=["collinear", "point", "nan", "inf", "nan-z", "offscreen"])
def test_degenerate_inputs_cover_nothing(vertices, backend):
  r = render.rasterize(jnp.array(vertices, jnp.float32), TRIANGLE, 9, 7,
                       backend=backend)
  assert not np.asarray(r.mask).any()
  assert np.all(np.asarray(r.triangle_id) == -1)
  assert np.all(np.isfinite(np.asarray(r.depth)))


def test_empty_mesh_tiny_and_non_square_images(backend):
  r = render.rasterize(jnp.zeros((2, 0, 3)), jnp.zeros((0, 3), jnp.int32), 3, 5,
                       backend=backend)
  assert r.triangle_id.shape == (2, 3, 5) and not np.asarray(r.mask).any()
  one = render.rasterize(jnp.array([[-1.0, -1.0, 0], [2, -1, 0], [-1, 2, 0]]), TRIANGLE, 1, 1,
                         backend=backend)
  assert np.asarray(one.mask).tolist() == [[True]]


def test_invalid_arguments_raise_clear_errors(backend):
  vertices = jnp.zeros((3, 3))
  with pytest.raises(ValueError, match=r"triangle indices must be in \[0, 3\)"):
    render.rasterize(vertices, jnp.array([[0, 1, 3]]), 4, 4, backend=backend)
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    render.rasterize(vertices, jnp.array([[0, -1, 2]]), 4, 4, backend=backend)
  with pytest.raises(ValueError, match=r"vertices must be \[\.\.\., N, 3\]"):
    render.rasterize(jnp.zeros((3, 2)), TRIANGLE, 4, 4, backend=backend)
  with pytest.raises(ValueError, match="image size"):
    render.rasterize(vertices, TRIANGLE, 0, 4, backend=backend)
  with pytest.raises(ValueError, match="unknown rasterizer backend 'magic'"):
    render.rasterize(vertices, TRIANGLE, 4, 4, backend="magic")


def test_batch_dims(small_model, backend):
  pose = camera.framing_pose(small_model.mean_shape, jnp.array([0.0, 0.4, 0.0]), 24, 20)
  image = camera.project_scaled_orthographic(small_model.mean_shape, pose, 24)
  stacked = jnp.stack([image, image + jnp.array([1.0, 0.0, 0.0])]).reshape(2, 1, -1, 3)
  r = render.rasterize(stacked, small_model.triangles, 24, 20, backend=backend)
  assert r.triangle_id.shape == (2, 1, 24, 20) and r.barycentric.shape == (2, 1, 24, 20, 3)
  single = render.rasterize(image, small_model.triangles, 24, 20, backend=backend)
  np.testing.assert_array_equal(np.asarray(r.triangle_id[0, 0]), np.asarray(single.triangle_id))
  # The shifted copy is the same picture one column to the right.
  np.testing.assert_array_equal(np.asarray(r.mask[1, 0, :, 1:]), np.asarray(single.mask[:, :-1]))


def test_interpolate_reproduces_attributes_and_depth(small_model, backend):
  pose = camera.framing_pose(small_model.mean_shape, jnp.array([0.1, -0.3, 0.0]), 32, 32)
  image = camera.project_scaled_orthographic(small_model.mean_shape, pose, 32)
  r = render.rasterize(image, small_model.triangles, 32, 32, backend=backend)
  depth = render.interpolate(image[:, 2:], r, image, small_model.triangles)[..., 0]
  np.testing.assert_allclose(np.asarray(depth), np.asarray(r.depth), rtol=1e-5, atol=1e-4)
  fused = render.interpolate_depth(r, image, small_model.triangles, backend=backend)
  np.testing.assert_allclose(np.asarray(fused), np.asarray(depth), rtol=1e-5, atol=1e-4)
  assert np.all(np.asarray(fused)[~np.asarray(r.mask)] == 0)
  xy = render.interpolate(image[:, :2], r, image, small_model.triangles)
  rows, cols = np.nonzero(np.asarray(r.mask))
  np.testing.assert_allclose(np.asarray(xy)[rows, cols], np.stack([cols, rows], 1), atol=1e-3)
  # Unbatched attributes broadcast over a batch of vertices.
  batch = jnp.stack([image, image])
  rb = render.rasterize(batch, small_model.triangles, 32, 32, backend=backend)
  colours = render.interpolate(small_model.texture_mean, rb, batch, small_model.triangles)
  assert colours.shape == (2, 32, 32, 3)


@pytest.mark.parametrize("depth_op", ["interpolate", "interpolate_depth"])
def test_depth_loss_gradient_matches_finite_differences(backend, depth_op):
  """Gradients reach x, y and z of the vertices, visibility held fixed. The
  pure-JAX path is checked against finite differences in float64; each
  backend's (float32) gradient must match it, through `interpolate` of z and
  through the fused `interpolate_depth`."""
  rng = np.random.default_rng(0)
  vertices = np.array([[1.2, 0.7, 1.0], [14.3, 2.2, 3.0], [2.1, 12.6, 2.0],
                       [13.1, 13.4, 5.0]])
  triangles = jnp.array([[0, 1, 2], [1, 3, 2]], jnp.int32)
  raster = render.rasterize(jnp.asarray(vertices, jnp.float32), triangles, 16, 16,
                            backend=backend)
  target = rng.normal(size=(16, 16))

  def loss(v, interpolate_backend):
    depth = render.interpolate(v[:, 2:], raster, v, triangles,
                               backend=interpolate_backend)[..., 0]
    return jnp.sum(jnp.where(raster.mask, (depth - target) ** 2, 0.0))

  with jax.enable_x64(True):
    v64 = jnp.asarray(vertices)
    test_util.check_grads(lambda v: loss(v, "reference"), (v64,), order=1,
                          modes=("rev",), eps=1e-4)
    exact = np.asarray(jax.grad(loss)(v64, "reference"))
  if depth_op == "interpolate_depth":
    def loss(v, interpolate_backend):  # noqa: F811 (the op under test)
      depth = render.interpolate_depth(raster, v, triangles, backend=interpolate_backend)
      return jnp.sum(jnp.where(raster.mask, (depth - target) ** 2, 0.0))
  got = np.asarray(jax.grad(loss)(jnp.asarray(vertices, jnp.float32), backend))
  np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
  assert np.all(np.abs(got[:, :2]) > 0)  # x and y get gradient, not only z


def test_spherical_harmonics_shading():
  rng = np.random.default_rng(1)
  normals = rng.normal(size=(2, 3, 4, 3))
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  albedo = rng.uniform(size=(2, 3, 4, 3))
  grey = rng.normal(size=(2, 4))
  basis = np.concatenate([np.ones((2, 3, 4, 1)), normals], axis=-1)
  expected = albedo * np.einsum("bhwk,bk->bhw", basis, grey)[..., None]
  np.testing.assert_allclose(np.asarray(shading.sh_shading(albedo, normals, grey)), expected,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(shading.sh_basis(jnp.asarray(normals))), basis, atol=1e-6)
  per_channel = rng.normal(size=(2, 3, 4))
  expected = albedo * np.einsum("bhwk,bck->bhwc", basis, per_channel)
  np.testing.assert_allclose(np.asarray(shading.sh_shading(albedo, normals, per_channel)),
                             expected, rtol=1e-5, atol=1e-6)
  # Lambertian: a light straight at a normal gives ambient + diffuse.
  shaded = shading.lambertian(jnp.ones((1, 1, 3)), jnp.array([[[0.0, 0.0, 1.0]]]), [0, 0, 2.0])
  np.testing.assert_allclose(np.asarray(shaded), 1.0, atol=1e-6)


def test_exact_depth_ties_between_signed_zeros_go_to_the_lower_index(backend):
  """z = -0.0 and z = +0.0 are equal depths, so the lower index wins on every
  backend (the CPU kernel once put -0.0 behind +0.0). Triangles 0 (larger
  than a pixel) and 1-10 (one pixel each, enough for the CPU kernel's
  8-candidate vector pass) have z = -0.0 and a first corner on a pixel
  centre; triangle 11, at z = +0.0, covers the image."""
  # All four barycentric coefficients are negative, so at the first corner b1
  # and b2 are -0.0 and z = z0 + b1 dz1 + b2 dz2 stays -0.0 (elsewhere +0.0).
  shapes = [[(0, 0), (-3, 1), (1, -3)]] + [[(0, 0), (-0.5, 0.25), (0.25, -0.5)]] * 10
  corners = [(2, 2)] + [(1 + k % 5, 5 + k // 5) for k in range(10)]  # (column, row)
  vertices = [[col + dx, row + dy, -0.0] for (col, row), shape in zip(corners, shapes)
              for dx, dy in shape]
  vertices += [[-20, -20, 0.0], [40, -20, 0.0], [-20, 40, 0.0]]
  vertices = jnp.asarray(np.asarray(vertices, np.float32))
  triangles = jnp.arange(36, dtype=jnp.int32).reshape(12, 3)
  raster = render.rasterize(vertices, triangles, 8, 8, backend=backend)
  expected = np.full((8, 8), 11)
  expected[_brute_force_coverage(vertices[:3], 8, 8)] = 0
  for k, (col, row) in enumerate(corners):
    expected[row, col] = k
  np.testing.assert_array_equal(np.asarray(raster.triangle_id), expected)
  assert str(float(raster.depth[2, 2])) == "-0.0"  # the tie was at -0.0 vs +0.0


def test_empty_batch(backend):
  """A batch of no images rasterizes, interpolates and differentiates to
  correctly shaped empty arrays."""
  triangles = TRIANGLE
  for shape in [(0, 3, 3), (2, 0, 3, 3)]:
    vertices = jnp.zeros(shape)
    raster = render.rasterize(vertices, triangles, 5, 6, backend=backend)
    assert raster.triangle_id.shape == shape[:-2] + (5, 6)
    assert raster.barycentric.shape == shape[:-2] + (5, 6, 3)

    def loss(v, attributes):
      values = render.interpolate(attributes, raster, v, triangles, backend=backend)
      return (jnp.sum(values)
              + jnp.sum(render.interpolate_depth(raster, v, triangles, backend=backend)))

    shared = jnp.ones((3, 2))  # attributes shared by the (empty) batch
    assert render.interpolate(shared, raster, vertices, triangles,
                              backend=backend).shape == shape[:-2] + (5, 6, 2)
    grad_vertices, grad_shared = jax.grad(loss, argnums=(0, 1))(vertices, shared)
    assert grad_vertices.shape == shape and grad_shared.shape == (3, 2)
    assert not np.asarray(grad_shared).any()


def test_interpolate_computes_in_float32_for_bfloat16_inputs(backend):
  """bfloat16 vertices and attributes are interpolated in float32: in
  bfloat16 the pixel grid itself rounds (257 -> 256) on a 300-pixel row."""
  vertices = jnp.array([[258.0, 2.0, 1.0], [298.0, 2.0, 3.0], [258.0, 38.0, 2.0]])  # exact in bf16
  attributes = jnp.array([[0.0], [1.0], [0.0]])  # interpolates to (column - 258) / 40
  raster = render.rasterize(vertices, TRIANGLE, 40, 300, backend=backend)
  assert int(raster.mask.sum()) > 500
  half = lambda x: x.astype(jnp.bfloat16)

  def depth_loss(v):
    return jnp.sum(render.interpolate_depth(raster, v, TRIANGLE, backend=backend) ** 2)

  values = render.interpolate(half(attributes), raster, half(vertices), TRIANGLE, backend=backend)
  expected = render.interpolate(attributes, raster, vertices, TRIANGLE, backend=backend)
  np.testing.assert_allclose(np.asarray(values, np.float32), np.asarray(expected), atol=1e-6)
  assert values.dtype == jnp.float32
  # Gradients come back in the inputs' dtype, from a float32 computation.
  grad = jax.grad(depth_loss)(half(vertices))
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(grad, np.float32),
                             np.asarray(half(jax.grad(depth_loss)(vertices)), np.float32),
                             rtol=1e-6)


def _plate(count: int, half: float, height: float):
  """A flat square of count x count vertices over [-half, half]^2 at z =
  height, and its triangles."""
  xs = np.linspace(-half, half, count)
  x, y = np.meshgrid(xs, xs)
  vertices = np.stack([x.ravel(), y.ravel(), np.full(x.size, height)], axis=-1)
  index = np.arange(x.size).reshape(count, count)
  a, b, c, d = (index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, :-1].ravel(),
                index[1:, 1:].ravel())
  return vertices, np.concatenate([np.stack([a, b, c], -1), np.stack([b, d, c], -1)])


def test_light_visibility_is_the_shadow_a_roof_casts_on_the_floor():
  floor, floor_triangles = _plate(21, 10.0, 0.0)   # a vertex every unit
  roof, roof_triangles = _plate(5, 3.0, 4.0)
  vertices = np.concatenate([floor, roof]).astype(np.float32)
  triangles = np.concatenate([floor_triangles, roof_triangles + len(floor)]).astype(np.int32)
  x, y = floor[:, 0], floor[:, 1]
  # Light from straight above, then from 45 degrees towards +x: the roof's
  # shadow moves 4 units (its height) towards -x.
  directions = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]], np.float32)
  batch = np.asarray(render.light_visibility(np.stack([vertices, vertices]), triangles,
                                             directions, 64))
  for lit, shift in zip(batch, (0.0, 4.0)):
    assert lit.shape == (len(vertices),) and set(np.unique(lit)) <= {0.0, 1.0}
    np.testing.assert_array_equal(lit[len(floor):], 1.0)      # nothing above the roof
    inside = (np.abs(x + shift) < 2.2) & (np.abs(y) < 2.2)
    outside = (np.abs(x + shift) > 3.8) | (np.abs(y) > 3.8)
    np.testing.assert_array_equal(lit[:len(floor)][inside], 0.0)
    np.testing.assert_array_equal(lit[:len(floor)][outside], 1.0)
  # One mesh at a time gives the same; a light from below sees the floor
  # first and lights the floor whole and the roof not at all.
  np.testing.assert_array_equal(
      np.asarray(render.light_visibility(vertices, triangles, directions[1], 64)), batch[1])
  from_below = np.asarray(render.light_visibility(vertices, triangles,
                                                  np.array([0.0, 0.0, -1.0]), 64))
  np.testing.assert_array_equal(from_below[:len(floor)], 1.0)
  np.testing.assert_array_equal(from_below[len(floor):], 0.0)
  with pytest.raises(ValueError, match="2 pixels"):
    render.light_visibility(vertices, triangles, directions[0], 1)
