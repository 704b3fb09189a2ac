"""CoarseNet's losses: zero at the target, positive away from it, finite
nonzero gradients, weights, jit and batches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon import face_models
from facerecon import face_render
from facerecon import losses
from facerecon import morphable
from facerecon import params as params_lib
from facerecon.data import normalization
from facerecon.data import synthetic

SIZE = 32


@pytest.fixture(scope="module")
def model():
  return face_models.load("embedded:25")


@pytest.fixture(scope="module")
def faces(model):
  """Three raw parameter vectors of framed synthetic faces [3, P]."""
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  sample = jax.vmap(lambda k: synthetic.sample_face(
      k, model, synthetic.FacePrior(yaw=(-40.0, 40.0), pitch=(-20.0, 20.0)),
      SIZE, SIZE))(keys)
  return sample.params


@pytest.fixture(scope="module")
def stats(model, faces):
  """Statistics with a plausible spread: the model's std for the shape and
  expression blocks, and a few pixels / radians for the pose."""
  std = jnp.concatenate([jnp.array([0.3, 0.3, 0.3, 3.0, 3.0, 3.0, 1e-5]),
                         model.shape_std, model.expression_std])
  return normalization.DataStatistics(param_mean=jnp.mean(faces, axis=0), param_std=std,
                                      mean_image=jnp.zeros((SIZE, SIZE, 3)),
                                      count=jnp.array(3))


def _perturb_shape(model, params, amount=0.5):
  """Adds `amount` std to the first shape modes."""
  block = model.layout.shape
  return params.at[..., block.start:block.start + 5].add(amount * model.shape_std[:5])


def _finite_nonzero(grad):
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad)), "gradient has NaN or inf"
  assert np.any(grad != 0), "gradient is zero"


# --- parameter loss -------------------------------------------------------------------


def test_parameter_loss_per_block_and_weights(model):
  layout = model.layout
  target = jax.random.normal(jax.random.PRNGKey(0), (4, layout.size))
  total, terms = losses.parameter_loss(target, target, layout)
  assert float(total) == 0.0 and all(float(v) == 0.0 for v in terms.values())

  pred = target.at[:, layout.pose].add(2.0).at[:, layout.expression].add(1.0)
  weights = losses.LossWeights(pose=0.5, shape=3.0, expression=7.0)
  total, terms = losses.parameter_loss(pred, target, layout, weights)
  np.testing.assert_allclose(float(terms["pose"]), 4.0, rtol=1e-6)
  assert float(terms["shape"]) == 0.0
  np.testing.assert_allclose(float(terms["expression"]), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(total), 0.5 * 4.0 + 7.0 * 1.0, rtol=1e-6)

  grad = jax.grad(lambda p: losses.parameter_loss(p, target, layout, weights)[0])(pred)
  _finite_nonzero(grad)
  np.testing.assert_array_equal(np.asarray(grad[:, layout.shape]), 0.0)
  with pytest.raises(ValueError, match="entries"):
    losses.parameter_loss(pred[:, :-1], target[:, :-1], layout)


# --- vertex loss ------------------------------------------------------------------------


def test_vertex_loss(model, faces):
  assert float(losses.vertex_loss(faces, faces, model)) == 0.0
  pred = _perturb_shape(model, faces)
  relative = float(losses.vertex_loss(pred, faces, model))
  absolute = float(losses.vertex_loss(pred, faces, model, relative=False))
  assert 1e-4 < relative < 1.0
  np.testing.assert_allclose(absolute, relative * float(losses.face_size(model)), rtol=1e-5)
  # Model space: the pose plays no part.
  posed = pred.at[:, params_lib.ANGLES].add(0.3).at[:, params_lib.TRANSLATION].add(5.0)
  np.testing.assert_allclose(float(losses.vertex_loss(posed, faces, model)), relative,
                             rtol=1e-5)
  grad = jax.grad(lambda p: losses.vertex_loss(p, faces, model))(pred)
  _finite_nonzero(grad[:, model.layout.shape])
  np.testing.assert_array_equal(np.asarray(grad[:, model.layout.pose]), 0.0)
  # At the target the distance's gradient is guarded: finite (zero), not NaN.
  at_target = jax.grad(lambda p: losses.vertex_loss(p, faces, model))(faces)
  assert np.all(np.isfinite(np.asarray(at_target)))


def test_aligned_vertex_error_ignores_size_and_position(model, faces):
  vertices = morphable.vertices_from_params(model, faces)
  moved = 1.3 * vertices + jnp.array([5.0, -2.0, 7.0])
  assert float(losses.aligned_distance(moved, vertices)) < 1e-3 * float(losses.face_size(model))
  assert float(losses.aligned_vertex_error(faces, faces, model)) < 1e-6
  pred = _perturb_shape(model, faces)
  aligned = float(losses.aligned_vertex_error(pred, faces, model))
  assert 0 < aligned <= float(losses.vertex_loss(pred, faces, model)) * (1 + 1e-5)
  # By hand for one pair: the least-squares scale of the centred vertices.
  p = np.asarray(morphable.vertices_from_params(model, pred[0]), np.float64)
  t = np.asarray(vertices[0], np.float64)
  p, t = p - p.mean(0), t - t.mean(0)
  s = (p * t).sum() / (p * p).sum()
  np.testing.assert_allclose(
      float(losses.aligned_vertex_error(pred[:1], faces[:1], model)),
      np.linalg.norm(s * p - t, axis=-1).mean() / float(losses.face_size(model)), rtol=1e-4)


# --- render loss -------------------------------------------------------------------------


def test_depth_loss_back_plane():
  """Uncovered pixels take the farthest visible depth of either render."""
  pred_mask = jnp.array([[[True, True, False, False]]])
  pred_depth = jnp.array([[[5.0, 3.0, 0.0, 0.0]]])
  target_mask = jnp.array([[[False, True, True, False]]])
  target_depth = jnp.array([[[0.0, 4.0, 2.0, 0.0]]])
  # Back plane at min(5, 3, 4, 2) = 2: errors |5-2|, |3-4|, |2-2| over the
  # union of 3 pixels; the fourth pixel is in neither mask.
  loss = losses.depth_loss(pred_depth, pred_mask, target_depth, target_mask, height=10)
  np.testing.assert_allclose(float(loss), (3.0 + 1.0 + 0.0) / 3 / 10, rtol=1e-6)
  grad = jax.grad(lambda d: losses.depth_loss(d, pred_mask, target_depth, target_mask,
                                              height=10))(pred_depth)
  # The prediction spilling over the silhouette is pushed back onto the
  # plane; its depth at the shared pixel towards the target.
  np.testing.assert_allclose(np.asarray(grad), [[[1 / 30, -1 / 30, 0.0, 0.0]]], rtol=1e-6)
  # An empty union gives 0, not NaN.
  empty = jnp.zeros((1, 1, 4), bool)
  assert float(losses.depth_loss(pred_depth, empty, target_depth, empty, height=10)) == 0.0


def test_render_loss_zero_at_target_exact_for_depth_shift(model, faces):
  assert float(losses.render_loss(faces, faces, model, SIZE, SIZE)) == 0.0
  # Moving t3d_z changes depth, not the masks: the loss is |dz| / H exactly,
  # and its gradient in t3d_z is sign(dz) / H per image (mean over 3 images).
  deeper = faces.at[:, 5].add(2.0)
  loss, grad = jax.value_and_grad(
      lambda p: losses.render_loss(p, faces, model, SIZE, SIZE))(deeper)
  np.testing.assert_allclose(float(loss), 2.0 / SIZE, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad[:, 5]), 1.0 / SIZE / 3, rtol=1e-4)


def test_render_loss_gradients_reach_pose_and_shape(model, faces):
  pred = _perturb_shape(model, faces, 1.0).at[:, 0].add(0.1).at[:, 3].add(1.5)
  loss, grad = jax.value_and_grad(
      lambda p: losses.render_loss(p, faces, model, SIZE, SIZE))(pred)
  assert float(loss) > 0
  _finite_nonzero(grad[:, params_lib.ANGLES])
  _finite_nonzero(grad[:, params_lib.TRANSLATION])
  _finite_nonzero(grad[:, model.layout.shape])
  assert np.all(np.isfinite(np.asarray(grad)))
  # A small step against the gradient lowers the loss.
  step = 1e-3 / float(jnp.max(jnp.abs(grad[:, :6])))
  lower = losses.render_loss(pred.at[:, :6].add(-step * grad[:, :6]), faces, model,
                             SIZE, SIZE)
  assert float(lower) < float(loss)


def test_render_loss_backends_agree(model, faces):
  pred = faces.at[:, 3].add(1.3).at[:, 5].add(0.7)
  cpu = losses.render_loss(pred[:1], faces[:1], model, 16, 16)
  reference = losses.render_loss(pred[:1], faces[:1], model, 16, 16, backend="reference")
  np.testing.assert_allclose(float(cpu), float(reference), rtol=1e-4)


# --- landmark loss --------------------------------------------------------------------


def test_landmark_loss(model, faces):
  target = face_render.project_landmarks(model, faces, SIZE)
  assert target.shape == (3, 68, 2)
  assert float(losses.landmark_loss(faces, target, model, SIZE)) < 1e-6
  # A shift of (3, 4) pixels moves every landmark by 5 pixels.
  shifted = faces.at[:, 3].add(3.0).at[:, 4].add(4.0)
  loss, grad = jax.value_and_grad(
      lambda p: losses.landmark_loss(p, target, model, SIZE))(shifted)
  np.testing.assert_allclose(float(loss), 5.0 / SIZE, rtol=1e-4)
  # Normalised by sqrt(H * W).
  np.testing.assert_allclose(
      float(losses.landmark_loss(shifted, target, model, SIZE, 2 * SIZE)),
      5.0 / np.sqrt(2.0 * SIZE * SIZE), rtol=1e-4)
  _finite_nonzero(grad[:, params_lib.TRANSLATION])
  _finite_nonzero(grad[:, model.layout.expression])


# --- total loss, jit and batches ---------------------------------------------------------

ALL = losses.LossWeights(pose=1.0, shape=0.5, expression=2.0, vertex=3.0, render=4.0,
                         landmark=5.0)


def test_total_loss_jit_weights_and_gradients(model, faces, stats):
  target = normalization.normalize_params(faces, stats)
  pred = target + 0.2 * jax.random.normal(jax.random.PRNGKey(1), target.shape)
  loss_fn = jax.jit(losses.total_loss,
                    static_argnames=("weights", "height", "width", "backend"))
  total, terms = loss_fn(pred, target, model, stats, weights=ALL, height=SIZE, width=SIZE)
  assert set(terms) == {"total", "pose", "shape", "expression", "vertex", "render",
                        "landmark"}
  assert all(float(terms[name]) > 0 for name in terms)
  expected = sum(getattr(ALL, name) * float(terms[name])
                 for name in ("pose", "shape", "expression", "vertex", "render", "landmark"))
  np.testing.assert_allclose(float(total), expected, rtol=1e-5)
  np.testing.assert_allclose(float(terms["total"]), float(total))

  # Zero at the target.
  total0, terms0 = loss_fn(target, target, model, stats, weights=ALL, height=SIZE, width=SIZE)
  assert float(total0) < 1e-6, terms0

  # Weights scale their term and nothing else; zero-weight terms are skipped.
  doubled = losses.LossWeights(pose=1.0, shape=0.5, expression=2.0, vertex=3.0,
                               render=8.0, landmark=5.0)
  total2, _ = loss_fn(pred, target, model, stats, weights=doubled, height=SIZE, width=SIZE)
  np.testing.assert_allclose(float(total2) - float(total), 4.0 * float(terms["render"]),
                             rtol=1e-4)
  _, params_only = losses.total_loss(pred, target, model, stats, losses.LossWeights(),
                                     SIZE, SIZE)
  assert set(params_only) == {"total", "pose", "shape", "expression"}

  # Given landmarks are used instead of the target parameters'.
  landmarks = face_render.project_landmarks(model, faces, SIZE)
  _, with_landmarks = loss_fn(pred, target, model, stats, weights=ALL, height=SIZE,
                              width=SIZE, target_landmarks=landmarks + 1.0)
  assert float(with_landmarks["landmark"]) != pytest.approx(float(terms["landmark"]))

  grad = jax.jit(jax.grad(lambda p: losses.total_loss(p, target, model, stats, ALL,
                                                      SIZE, SIZE)[0]))(pred)
  _finite_nonzero(grad)
  assert np.all(np.asarray(grad) != 0)


def test_batch_is_mean_of_single_images(model, faces, stats):
  target = normalization.normalize_params(faces, stats)
  pred = target + 0.3 * jax.random.normal(jax.random.PRNGKey(2), target.shape)
  loss_fn = jax.jit(functools.partial(losses.total_loss, model=model, stats=stats,
                                      weights=ALL, height=SIZE, width=SIZE))
  _, batched = loss_fn(pred, target)
  singles = [loss_fn(pred[i:i + 1], target[i:i + 1])[1] for i in range(3)]
  for name, value in batched.items():
    np.testing.assert_allclose(float(value), np.mean([float(s[name]) for s in singles]),
                               rtol=1e-4, err_msg=name)
  # Unbatched vectors and extra leading dims work too.
  _, unbatched = loss_fn(pred[0], target[0])
  np.testing.assert_allclose(float(unbatched["render"]), float(singles[0]["render"]),
                             rtol=1e-5)
  _, nested = loss_fn(pred[None], target[None])
  np.testing.assert_allclose(float(nested["total"]), float(batched["total"]), rtol=1e-5)
