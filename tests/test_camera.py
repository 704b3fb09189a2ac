import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon import camera
from facerecon import params as params_lib


def _reference_rotation(phi, gamma, theta):
  """R = Rx Ry Rz with the matrices exactly as REFERENCE.md writes them."""
  c, s = np.cos, np.sin
  rx = np.array([[1, 0, 0], [0, c(phi), s(phi)], [0, -s(phi), c(phi)]])
  ry = np.array([[c(gamma), 0, -s(gamma)], [0, 1, 0], [s(gamma), 0, c(gamma)]])
  rz = np.array([[c(theta), s(theta), 0], [-s(theta), c(theta), 0], [0, 0, 1]])
  return rx @ ry @ rz


def test_rotation_matches_matrix_product():
  rng = np.random.default_rng(0)
  angles = rng.uniform(-np.pi, np.pi, size=(16, 3))
  got = np.asarray(camera.rotation_matrix(jnp.asarray(angles, jnp.float32)))
  want = np.stack([_reference_rotation(*a) for a in angles])
  np.testing.assert_allclose(got, want, atol=2e-6)
  np.testing.assert_allclose(got @ np.swapaxes(got, -1, -2),
                             np.broadcast_to(np.eye(3), got.shape), atol=2e-6)
  np.testing.assert_allclose(np.linalg.det(got), 1.0, atol=1e-5)


@pytest.mark.parametrize("rotation_shape,points_shape", [
    ((3, 3), (7, 3)), ((4, 3, 3), (4, 7, 3)), ((4, 3, 3), (7, 3)), ((3, 3), (2, 7, 3)),
    ((2, 1, 3, 3), (1, 5, 7, 3))])
def test_rotate_value_and_gradient_match_einsum(rotation_shape, points_shape):
  rng = np.random.default_rng(3)
  rotation = jnp.asarray(rng.normal(size=rotation_shape))
  points = jnp.asarray(rng.normal(size=points_shape))
  weights = jnp.asarray(rng.normal(size=np.broadcast_shapes(
      rotation_shape[:-2] + (1, 1), points_shape)))
  einsum = lambda r, p: jnp.sum(weights * jnp.einsum("...ij,...nj->...ni", r, p) ** 2)
  written = lambda r, p: jnp.sum(weights * camera.rotate(r, p) ** 2)
  np.testing.assert_allclose(written(rotation, points), einsum(rotation, points), rtol=1e-5)
  for got, want in zip(jax.grad(written, (0, 1))(rotation, points),
                       jax.grad(einsum, (0, 1))(rotation, points)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_known_rotations():
  quarter = np.pi / 2
  # Pitch +90 deg: the face's up (y) turns away from the viewer (-z) and
  # the nose (+z) turns up (+y): the face looks up.
  r = np.asarray(camera.rotation_matrix(jnp.array([quarter, 0.0, 0.0])))
  np.testing.assert_allclose(r @ [0, 1, 0], [0, 0, -1], atol=1e-6)
  np.testing.assert_allclose(r @ [0, 0, 1], [0, 1, 0], atol=1e-6)
  # Yaw +90 deg: the nose (+z) turns to -x (the image's left).
  r = np.asarray(camera.rotation_matrix(jnp.array([0.0, quarter, 0.0])))
  np.testing.assert_allclose(r @ [0, 0, 1], [-1, 0, 0], atol=1e-6)
  # Roll +90 deg: x turns to -y.
  r = np.asarray(camera.rotation_matrix(jnp.array([0.0, 0.0, quarter])))
  np.testing.assert_allclose(r @ [1, 0, 0], [0, -1, 0], atol=1e-6)


def test_angles_round_trip_away_from_gimbal_lock():
  rng = np.random.default_rng(1)
  angles = np.stack([rng.uniform(-np.pi, np.pi, 200),
                     rng.uniform(-1.45, 1.45, 200),
                     rng.uniform(-np.pi, np.pi, 200)], axis=1)
  back = camera.angles_from_rotation(camera.rotation_matrix(jnp.asarray(angles)))
  np.testing.assert_allclose(np.asarray(back), angles, atol=2e-4)


def test_angles_at_gimbal_lock_reproduce_rotation():
  for gamma in (np.pi / 2, -np.pi / 2):
    r = camera.rotation_matrix(jnp.array([0.3, gamma, -0.2]))
    back = camera.angles_from_rotation(r)
    assert np.all(np.isfinite(np.asarray(back)))
    np.testing.assert_allclose(np.asarray(camera.rotation_matrix(back)),
                               np.asarray(r), atol=1e-4)


def test_scaled_orthographic_known_values():
  pose = jnp.array([0.0, 0.0, 0.0, 10.0, 20.0, 5.0, 2.0])
  points = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  got = camera.project_scaled_orthographic(points, pose, height=100)
  # x = 2*1 + 10; y = 99 - (2*2 + 20); z = 2*3 + 5
  np.testing.assert_allclose(np.asarray(got), [[12.0, 75.0, 11.0], [10.0, 79.0, 5.0]])


def test_projection_broadcasts_batches():
  rng = np.random.default_rng(2)
  vertices = jnp.asarray(rng.normal(size=(4, 9, 3)), jnp.float32)
  poses = jnp.asarray(np.concatenate([rng.normal(size=(4, 6)), np.ones((4, 1))], 1),
                      jnp.float32)
  batched = camera.project_scaled_orthographic(vertices, poses, 64)
  single = jnp.stack([camera.project_scaled_orthographic(v, p, 64)
                      for v, p in zip(vertices, poses)])
  np.testing.assert_allclose(np.asarray(batched), np.asarray(single), rtol=1e-6, atol=1e-5)


def test_projection_gradients_match_finite_differences():
  """Angles, f and t all get correct gradients (the original's angles had none)."""
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    vertices = jnp.asarray(rng.normal(size=(7, 3)))
    pose = jnp.array([0.2, -0.5, 0.1, 3.0, -2.0, 1.0, 1.7])
    weights = jnp.asarray(rng.normal(size=(7, 3)))

    def loss(p):
      return jnp.sum(weights * camera.project_scaled_orthographic(vertices, p, 50))

    test_util.check_grads(loss, (pose,), order=2, modes=("rev", "fwd"))
    grad = jax.grad(loss)(pose)
    assert np.all(np.abs(np.asarray(grad[:3])) > 0)  # every angle moves the image


def test_perspective_projection():
  points = jnp.array([[0.0, 0.0, -10.0], [1.0, 2.0, -10.0]])
  got = camera.project_perspective(points, jnp.zeros(3), jnp.zeros(3),
                                   focal_length=100.0, principal_point=None, height=64)
  np.testing.assert_allclose(np.asarray(got[0]), [31.5, 31.5, -10.0])
  np.testing.assert_allclose(np.asarray(got[1]), [31.5 + 10.0, 31.5 - 20.0, -10.0])
  with pytest.raises(ValueError, match="principal_point or height"):
    camera.project_perspective(points, jnp.zeros(3), jnp.zeros(3), 1.0, None)


def test_landmark_projection(small_model):
  pose = jnp.array([0.1, 0.3, -0.05, 60.0, 70.0, 0.0, 8e-4])
  got = camera.project_landmarks(small_model.mean_shape, small_model.landmark_indices,
                                 pose, 128)
  full = camera.project_scaled_orthographic(small_model.mean_shape, pose, 128)
  np.testing.assert_allclose(np.asarray(got),
                             np.asarray(full)[np.asarray(small_model.landmark_indices), :2])


def test_framing_pose_centres_and_fills(small_model):
  angles = jnp.array([0.2, -0.6, 0.1])
  pose = camera.framing_pose(small_model.mean_shape, angles, 120, 160, fill=0.8)
  np.testing.assert_allclose(np.asarray(pose[:3]), np.asarray(angles))
  image = np.asarray(camera.project_scaled_orthographic(small_model.mean_shape, pose, 120))
  low, high = image[:, :2].min(0), image[:, :2].max(0)
  np.testing.assert_allclose((low + high) / 2, [79.5, 59.5], atol=1e-3)
  # The tighter axis spans fill x its size; the other fits inside.
  ratios = (high - low) / np.array([160, 120])
  np.testing.assert_allclose(ratios.max(), 0.8, rtol=1e-5)


def test_aflw_viewer_convention_lines_up(tmp_path):
  """AFLW2000-3D's MATLAB viewer plots (x, H + 1 - y) of f R v + t3d in
  1-based pixels; read_mat_params + our projection give the same pixels,
  0-based."""
  import scipy.io

  rng = np.random.default_rng(4)
  pose = np.array([0.1, -0.3, 0.05, 220.3, 180.7, 2.0, 1.1e-3])
  scipy.io.savemat(tmp_path / "a.mat", {
      "Pose_Para": pose.reshape(1, 7), "Shape_Para": np.zeros((199, 1)),
      "Exp_Para": np.zeros((29, 1))})
  ours = params_lib.read_mat_params(tmp_path / "a.mat")
  points = rng.normal(size=(10, 3)) * 5e4
  height = 450
  world = _reference_rotation(*pose[:3]) @ points.T * pose[6] + pose[3:6, None]
  matlab_x, matlab_y = world[0], height + 1 - world[1]  # 1-based pixels
  with jax.enable_x64(True):
    got = np.asarray(camera.project_scaled_orthographic(
        jnp.asarray(points), jnp.asarray(ours, jnp.float64), height))
  np.testing.assert_allclose(got[:, 0], matlab_x - 1, atol=1e-3)
  np.testing.assert_allclose(got[:, 1], matlab_y - 1, atol=1e-3)


def test_pose_after_image_similarity_moves_the_projection():
  rng = np.random.default_rng(5)
  vertices = jnp.asarray(rng.normal(size=(20, 3)) * 30, jnp.float32)
  pose = jnp.array([0.2, -0.4, 0.1, 60.0, 70.0, 3.0, 0.9])
  scale, offset = 1.3, jnp.array([-12.0, 7.5])
  before = camera.project_scaled_orthographic(vertices, pose, 128)
  after = camera.project_scaled_orthographic(
      vertices, camera.pose_after_image_similarity(pose, scale, offset, 128), 128)
  np.testing.assert_allclose(np.asarray(after[:, :2]),
                             scale * np.asarray(before[:, :2]) + np.asarray(offset), atol=1e-3)
  np.testing.assert_allclose(np.asarray(after[:, 2]), scale * np.asarray(before[:, 2]),
                             rtol=1e-5, atol=1e-3)
  as_numpy = camera.pose_after_image_similarity(np.asarray(pose), scale, np.asarray(offset), 128)
  assert isinstance(as_numpy, np.ndarray)
  np.testing.assert_allclose(as_numpy, np.asarray(
      camera.pose_after_image_similarity(pose, scale, offset, 128)), rtol=1e-6)


def test_pose_after_image_rotation_turns_the_projection_about_the_centre():
  """The image turned by an angle about its centre: every projected point
  turns with it (counter-clockwise as seen, so clockwise in row-down
  coordinates), depth stays; the head's in-plane angle grows by the angle."""
  rng = np.random.default_rng(6)
  vertices = jnp.asarray(rng.normal(size=(20, 3)) * 30, jnp.float32)
  pose = jnp.array([0.2, -0.4, 0.1, 60.0, 70.0, 3.0, 0.9])
  size, angle = 128, 0.7
  before = np.asarray(camera.project_scaled_orthographic(vertices, pose, size))
  turned = camera.pose_after_image_rotation(pose, angle, size)
  after = np.asarray(camera.project_scaled_orthographic(vertices, turned, size))
  centre = 0.5 * (size - 1)
  x, y = before[:, 0] - centre, centre - before[:, 1]          # y up
  expected_x = centre + np.cos(angle) * x - np.sin(angle) * y
  expected_row = centre - (np.sin(angle) * x + np.cos(angle) * y)
  np.testing.assert_allclose(after[:, 0], expected_x, atol=1e-3)
  np.testing.assert_allclose(after[:, 1], expected_row, atol=1e-3)
  np.testing.assert_allclose(after[:, 2], before[:, 2], atol=1e-3)
  np.testing.assert_allclose(float(camera.in_plane_angle(turned)),
                             float(camera.in_plane_angle(pose)) + angle, atol=1e-5)


def test_in_plane_angle_is_the_roll_of_a_face_looking_at_the_camera():
  """0 for any pitch and yaw without roll; minus the roll when the face looks
  straight at the camera (a positive roll turns the head clockwise as seen:
  its up axis (0, 1, 0) goes to (sin, cos)); batched."""
  poses = jnp.array([[0.3, -0.8, 0.0, 0, 0, 0, 1.0], [0.0, 0.0, 0.5, 0, 0, 0, 1.0],
                     [0.0, 0.0, -1.2, 0, 0, 0, 1.0]])
  angles = np.asarray(camera.in_plane_angle(poses))
  np.testing.assert_allclose(angles, [0.0, -0.5, 1.2], atol=1e-6)
  head_up = np.asarray(camera.rotation_matrix(poses[1, :3]))[:, 1]
  np.testing.assert_allclose(head_up, [np.sin(0.5), np.cos(0.5), 0.0], atol=1e-6)


def test_params_after_resize_maps_pixel_centres():
  """A face in a 32-pixel image, the image resized to 96: pixel centres map
  by p' = 3 (p + 1/2) - 1/2, depth scales by 3, the shape part is kept."""
  rng = np.random.default_rng(6)
  vertices = jnp.asarray(rng.normal(size=(20, 3)) * 5, jnp.float32)
  pose = jnp.array([0.1, 0.3, -0.2, 16.0, 15.0, 1.0, 0.2])
  params = jnp.concatenate([pose, jnp.arange(4.0)])[None]
  resized = camera.params_after_resize(params, 32, 96)
  before = camera.project_scaled_orthographic(vertices, params[0, :7], 32)
  after = camera.project_scaled_orthographic(vertices, resized[0, :7], 96)
  np.testing.assert_allclose(np.asarray(after[:, :2]),
                             3 * (np.asarray(before[:, :2]) + 0.5) - 0.5, atol=1e-3)
  np.testing.assert_allclose(np.asarray(after[:, 2]), 3 * np.asarray(before[:, 2]),
                             rtol=1e-5, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(resized[0, 7:]), np.arange(4.0))
  assert camera.params_after_resize(params, 32, 32) is params


def test_pose_with_angles_turns_the_face_about_a_point():
  """The new angles replace the old, the scale stays, the point keeps its
  image position and depth, and every other point turns about it."""
  rng = np.random.default_rng(7)
  vertices = jnp.asarray(rng.normal(size=(20, 3)) * 30, jnp.float32)
  pose = jnp.array([[0.2, -0.4, 0.1, 60.0, 70.0, 3.0, 0.9], [-0.3, 1.1, 0.0, 5.0, 9.0, 1.0, 2.0]])
  centre = jnp.asarray(rng.normal(size=(2, 3)) * 20, jnp.float32)
  angles = pose[:, :3] + jnp.array([[0.15, 0.0, 0.0], [-0.1, 0.2, 0.05]])
  turned = camera.pose_with_angles(pose, angles, centre)
  np.testing.assert_allclose(np.asarray(turned[:, :3]), np.asarray(angles), atol=1e-6)
  np.testing.assert_allclose(np.asarray(turned[:, 6]), np.asarray(pose[:, 6]))
  for k in range(2):
    before = camera.transform_scaled_orthographic(centre[k][None], pose[k])
    after = camera.transform_scaled_orthographic(centre[k][None], turned[k])
    np.testing.assert_allclose(np.asarray(after), np.asarray(before), atol=1e-3)
    moved = camera.transform_scaled_orthographic(vertices, turned[k])
    expected = after + pose[k, 6] * camera.rotate(camera.rotation_matrix(angles[k]),
                                                  vertices - centre[k])
    np.testing.assert_allclose(np.asarray(moved), np.asarray(expected), atol=1e-3)
