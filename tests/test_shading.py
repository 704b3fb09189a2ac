"""Shape from shading: normals from depth, the in-graph SH lighting fit,
fidelity and smoothness, and their robustness to bad photos."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon import face_models
from facerecon import face_render
from facerecon import shading
from facerecon.data import synthetic


def _grid(size):
  rows, cols = np.meshgrid(np.arange(size, dtype=np.float32),
                           np.arange(size, dtype=np.float32), indexing="ij")
  return rows, cols


def test_normals_of_a_plane_are_exact_everywhere_on_the_mask():
  rows, cols = _grid(12)
  depth = 0.5 * cols - 0.25 * rows + 3.0
  mask = np.ones((12, 12), bool)
  mask[:, :2] = False  # the border of the mask uses one-sided differences
  normals, interior = shading.depth_normals(jnp.asarray(depth), jnp.asarray(mask))
  expected = np.array([-0.5, -0.25, 1.0]) / np.sqrt(1.3125)
  np.testing.assert_allclose(np.asarray(normals)[mask], np.broadcast_to(expected, (120, 3)),
                             atol=1e-6)
  assert not np.asarray(normals)[~mask].any()
  # Interior: all four neighbours on the mask.
  assert not np.asarray(interior)[:, :3].any() and np.asarray(interior)[1:-1, 3:-1].all()
  assert not np.asarray(interior)[0].any() and not np.asarray(interior)[-1].any()


def test_depth_normals_agree_with_the_renderers_normals():
  """The depth map of a rendered face gives the renderer's (mesh) normals:
  the sign conventions (rows down, y up, z towards the camera) match."""
  model = face_models.load("embedded")
  keys = synthetic.sample_keys(0, 0, 4)
  prior = synthetic.FacePrior(yaw=(-45.0, 45.0), pitch=(-30.0, 30.0), detail=(0.0, 0.0))
  faces = synthetic.generate_jit(model, keys, prior, 96, 96)
  face = face_render.render_face(model, faces.params, None, 96, 96)
  normals, interior = shading.depth_normals(face.depth, face.mask)
  angle = shading.normal_angle(normals, face.normals, interior.astype(jnp.float32))
  assert float(angle) < 4.0
  flipped = shading.normal_angle(normals * jnp.array([1.0, -1.0, 1.0]), face.normals,
                                 interior.astype(jnp.float32))
  assert float(flipped) > 3 * float(angle)


def _hemisphere(size=32, radius=12.0):
  rows, cols = _grid(size)
  r2 = (cols - size / 2) ** 2 + (rows - size / 2) ** 2
  mask = r2 < (radius - 1) ** 2
  depth = np.where(mask, np.sqrt(np.maximum(radius ** 2 - r2, 0.0)), 0.0).astype(np.float32)
  return jnp.asarray(depth), jnp.asarray(mask)


def test_lighting_least_squares_recovers_the_light():
  depth, mask = _hemisphere()
  normals, interior = shading.depth_normals(depth, mask)
  light = jnp.array([0.4, 0.2, -0.3, 0.5])
  albedo = jnp.where(mask, 0.3 + 0.5 * jnp.linspace(0, 1, 32)[None, :], 0.0)
  intensity = albedo * shading.sh_irradiance(normals, light)
  solved = shading.solve_lighting(intensity, albedo, normals, interior.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(solved), np.asarray(light), atol=1e-3)
  loss, fitted, shaded = shading.shading_fit(depth, mask, intensity, albedo)
  assert float(loss) < 1e-7  # (float32, and the ridge)
  np.testing.assert_allclose(np.asarray(fitted), np.asarray(light), atol=1e-3)


def test_shading_fit_gradient_matches_finite_differences():
  """The light is solved inside the graph: the gradient includes how the
  best light moves with the depth (float64 finite differences)."""
  with jax.enable_x64():
    depth, mask = _hemisphere(12, 5.0)
    depth = depth.astype(jnp.float64)
    rng = np.random.default_rng(0)
    intensity = jnp.asarray(rng.uniform(0.2, 0.8, (12, 12)))
    albedo = jnp.asarray(rng.uniform(0.5, 0.9, (12, 12)))
    fit = lambda d: shading.shading_fit(d, mask, intensity, albedo)[0]
    direction = jnp.asarray(rng.normal(size=(12, 12))) * mask
    grad = jax.grad(fit)(depth)
    eps = 1e-6
    numeric = (fit(depth + eps * direction) - fit(depth - eps * direction)) / (2 * eps)
    assert float(jnp.sum(grad * direction)) == pytest.approx(float(numeric), rel=1e-5)
    # With the light held fixed the gradient differs: the solve is in the graph.
    light = shading.solve_lighting(intensity, albedo, *_normals_and_weights(depth, mask,
                                                                           intensity))
    fixed = jax.grad(lambda d: _fit_with_light(d, mask, intensity, albedo, light))(depth)
    assert float(jnp.max(jnp.abs(fixed - grad))) > 1e-6


def _normals_and_weights(depth, mask, intensity):
  normals, interior = shading.depth_normals(depth, mask)
  return normals, (interior & (intensity < shading.SATURATED)).astype(depth.dtype)


def _fit_with_light(depth, mask, intensity, albedo, light):
  normals, weights = _normals_and_weights(depth, mask, intensity)
  shaded = albedo * shading.sh_irradiance(normals, light)
  return jnp.sum((shaded - intensity) ** 2 * weights) / jnp.sum(weights)


@pytest.mark.parametrize("kind", ["black", "saturated", "grey", "empty mask", "black albedo"])
def test_bad_photos_give_finite_losses_and_gradients(kind):
  depth, mask = _hemisphere(16, 6.0)
  intensity = {"black": jnp.zeros((16, 16)), "saturated": jnp.ones((16, 16)),
               "grey": jnp.full((16, 16), 0.5)}.get(kind, jnp.full((16, 16), 0.5))
  albedo = jnp.zeros((16, 16)) if kind == "black albedo" else jnp.full((16, 16), 0.7)
  if kind == "empty mask":
    mask = jnp.zeros_like(mask)

  def loss(d):
    return (shading.shading_fit(d, mask, intensity, albedo)[0]
            + shading.fidelity(d, depth, mask) + shading.smoothness(d, mask))

  value, grad = jax.value_and_grad(loss)(depth + 0.1)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_laplacian_fidelity_and_smoothness_values():
  rows, cols = _grid(8)
  depth = jnp.asarray(cols ** 2 + 2 * rows ** 2)
  mask = jnp.ones((8, 8), bool).at[0, 0].set(False)
  values, interior = shading.laplacian(depth, mask)
  interior = np.asarray(interior)
  np.testing.assert_allclose(np.asarray(values)[interior], 6.0)
  assert not np.asarray(values)[~interior].any()
  assert not interior[0].any() and not interior[1, 0] and interior[1:-1, 1:-1].all()
  assert float(shading.smoothness(depth, mask)) == pytest.approx(36.0)
  assert float(shading.fidelity(depth + 2.0, depth, mask)) == pytest.approx(4.0)
  assert float(shading.fidelity(jnp.where(mask, depth, 99.0), depth, mask)) == 0.0


def test_the_shading_fit_prefers_the_true_detailed_surface():
  """On synthetic faces with fine detail, the SfS term (light solved, mean
  texture as albedo, as FineNet's loss uses it) is lower for the true
  detailed depth than for the smooth 3DMM depth."""
  model = face_models.load("embedded")
  prior = synthetic.FacePrior(yaw=(-45.0, 45.0), pitch=(-30.0, 30.0))
  faces = synthetic.generate_jit(model, synthetic.sample_keys(0, 0, 8), prior, 64, 64)
  albedo = shading.luminance(face_render.render_face(model, faces.params, None, 64, 64).albedo)
  intensity = shading.luminance(faces.image.astype(jnp.float32) / 255.0)
  fine = shading.shading_fit(faces.fine_depth, faces.mask, intensity, albedo)[0]
  smooth = shading.shading_fit(faces.depth, faces.mask, intensity, albedo)[0]
  assert float(fine) < 0.6 * float(smooth)
