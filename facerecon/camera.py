"""The camera: rotation convention, projections and image coordinates.

Conventions (shared by the renderer, the losses and the data):
- Model space is right-handed: x towards the subject's left (the viewer's
  right in a frontal view), y up, z out of the face towards the viewer.
- R = Rx(phi) Ry(gamma) Rz(theta) with the original code's matrices
  Rx = [1 0 0; 0 c s; 0 -s c], Ry = [c 0 -s; 0 1 0; s 0 c],
  Rz = [c s 0; -s c 0; 0 0 1]. phi is pitch, gamma yaw, theta roll.
- Scaled orthographic projection: p = f R v + t3d, then image coordinates
  (x, H - 1 - y, z): pixel (row i, column j) is centred at x = j, y = i, and
  z is kept as depth with larger z nearer the camera.
"""

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import params as params_lib


def rotation_matrix(angles):
  """[..., 3] (phi, gamma, theta) in radians -> [..., 3, 3] R = Rx Ry Rz."""
  angles = jnp.asarray(angles)
  phi, gamma, theta = angles[..., 0], angles[..., 1], angles[..., 2]
  cx, sx = jnp.cos(phi), jnp.sin(phi)
  cy, sy = jnp.cos(gamma), jnp.sin(gamma)
  cz, sz = jnp.cos(theta), jnp.sin(theta)
  # The product Rx Ry Rz written out, so every entry is a smooth function of
  # the angles (the original computed R in numpy: angles got no gradient).
  rows = [
      [cy * cz, cy * sz, -sy],
      [-cx * sz + sx * sy * cz, cx * cz + sx * sy * sz, sx * cy],
      [sx * sz + cx * sy * cz, -sx * cz + cx * sy * sz, cx * cy],
  ]
  return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def angles_from_rotation(rotation):
  """Inverse of `rotation_matrix`: [..., 3, 3] -> [..., 3], gamma in [-pi/2, pi/2].

  At gimbal lock (|gamma| = pi/2) only phi - theta or phi + theta is defined;
  theta is then set to 0.
  """
  r = jnp.asarray(rotation)
  sin_gamma = jnp.clip(-r[..., 0, 2], -1.0, 1.0)
  gamma = jnp.arcsin(sin_gamma)
  locked = jnp.abs(sin_gamma) > 1.0 - 1e-6
  phi = jnp.where(locked, jnp.arctan2(r[..., 1, 0] * sin_gamma, r[..., 1, 1]),
                  jnp.arctan2(r[..., 1, 2], r[..., 2, 2]))
  theta = jnp.where(locked, 0.0, jnp.arctan2(r[..., 0, 1], r[..., 0, 0]))
  return jnp.stack([phi, gamma, theta], axis=-1)


def world_to_image(points, height: int):
  """Flips y into image rows: (x, y, z) -> (x, H - 1 - y, z)."""
  return jnp.concatenate(
      [points[..., :1], (height - 1) - points[..., 1:2], points[..., 2:]],
      axis=-1)


def _rotate_written_out(rotation, points):
  columns = rotation[..., None, :, :]  # [..., 1, 3, 3]
  return (columns[..., :, 0] * points[..., 0:1] + columns[..., :, 1] * points[..., 1:2]
          + columns[..., :, 2] * points[..., 2:3])


@jax.custom_jvp
def rotate(rotation, points):
  """R p for rotations [..., 3, 3] and points [..., N, 3] -> [..., N, 3].

  Written out as three broadcast products, not an einsum: XLA's CPU runs
  batches of 3x3 products as tiny matrix multiplies (14x slower forward at
  [64, 3441, 3]). The derivative keeps the einsum: reverse mode transposes
  it into matrix products, where the written-out form's transpose is a slow
  reduction over the trailing 3 (4x slower at [1, 53605, 3]).
  """
  return _rotate_written_out(rotation, points)


@rotate.defjvp
def _rotate_jvp(primals, tangents):
  rotation, points = primals
  d_rotation, d_points = tangents
  value = _rotate_written_out(rotation, points)
  return value, (jnp.einsum("...ij,...nj->...ni", d_rotation, points)
                 + jnp.einsum("...ij,...nj->...ni", rotation, d_points))


def transform_scaled_orthographic(vertices, pose):
  """f R v + t3d in model-aligned axes (y up). vertices [..., N, 3], pose [..., 7]."""
  pose = jnp.asarray(pose)
  rotation = rotation_matrix(pose[..., params_lib.ANGLES])
  scale = pose[..., params_lib.SCALE][..., None, None]
  translation = pose[..., params_lib.TRANSLATION][..., None, :]
  return scale * rotate(rotation, vertices) + translation


def project_scaled_orthographic(vertices, pose, height: int):
  """Model-space vertices [..., N, 3] -> image coordinates [..., N, 3].

  `pose` is the 7-d block [phi, gamma, theta, t3d_x, t3d_y, t3d_z, f]
  (leading dims broadcast against the vertices'). Output (x, y, z): column,
  row, depth (larger = nearer).
  """
  return world_to_image(transform_scaled_orthographic(vertices, pose), height)


def project_perspective(vertices, angles, translation, focal_length,
                        principal_point, height: int | None = None):
  """Pinhole projection for users who want perspective instead.

  The camera sits at the origin of camera space looking down -z (so, as in the
  orthographic case, the viewer is on the +z side of the face).
  Camera-space points are R v + translation; pixel coordinates are
  column = cx + focal * x / d and row = cy - focal * y / d, with the distance
  d = -z_cam > 0. `principal_point` (cx, cy) is in pixels; when None it is
  the image centre, which needs `height` (square pixels: width = height).
  Output z is -d, so larger z is nearer, as the rasterizer expects.
  """
  rotation = rotation_matrix(angles)
  cam = rotate(rotation, vertices) + jnp.asarray(translation)[..., None, :]
  distance = -cam[..., 2]
  if principal_point is None:
    if height is None:
      raise ValueError("project_perspective needs principal_point or height")
    principal_point = jnp.array([(height - 1) / 2.0, (height - 1) / 2.0])
  principal_point = jnp.asarray(principal_point)
  focal = jnp.asarray(focal_length)[..., None]
  column = principal_point[..., 0:1] + focal * cam[..., 0] / distance
  row = principal_point[..., 1:2] - focal * cam[..., 1] / distance
  return jnp.stack([column, row, -distance], axis=-1)


def project_landmarks(vertices, landmark_indices, pose, height: int):
  """Image (x, y) of the landmark vertices: [..., N, 3] -> [..., L, 2]."""
  points = jnp.take(vertices, landmark_indices, axis=-2)
  return project_scaled_orthographic(points, pose, height)[..., :2]


def framing_pose(vertices, angles, height: int, width: int, fill: float = 0.85):
  """A pose [7] that shows `vertices` [N, 3] rotated by `angles`, centred.

  The scale f makes the rotated mesh's bounding box span `fill` of the image
  along its tighter axis; t3d puts the box centre at the image centre.
  """
  rotated = rotate(rotation_matrix(angles), vertices)
  low, high = rotated.min(axis=0), rotated.max(axis=0)
  extent = jnp.maximum(high - low, 1e-12)
  scale = fill * jnp.minimum(width / extent[0], height / extent[1])
  centre = 0.5 * (low + high)
  # Image x = f x + tx should be (W - 1) / 2 at the centre; image rows flip y,
  # so the centre's y must map to (H - 1) / 2 as well.
  translation = jnp.stack([(width - 1) / 2.0 - scale * centre[0],
                           (height - 1) / 2.0 - scale * centre[1],
                           -scale * centre[2]])
  return params_lib.make_pose(jnp.asarray(angles, jnp.float32), translation, scale)


def pose_after_image_similarity(pose, scale, offset, height: int,
                                new_height: int | None = None):
  """The pose that renders the same face after the image is mapped by
  p' = scale * p + offset (pixel coordinates, p = (column, row)).

  With the scaled-orthographic camera this is exact: f and t3d scale, and
  t3d shifts by the offset (y through the row flip y_img = H - 1 - y); depth
  scales with f. Landmarks map by the same p' = scale * p + offset.
  `new_height` is the mapped image's height when it differs from `height`
  (crops of a photo and back).
  """
  # numpy in, numpy out: input pipelines call this in worker processes.
  xp = np if isinstance(pose, np.ndarray) else jnp
  offset = xp.asarray(offset, pose.dtype)
  t = pose[..., params_lib.TRANSLATION]
  t_x = scale * t[..., 0] + offset[..., 0]
  # Row r = H - 1 - y maps to r' = scale r + offset_y, and y' = H' - 1 - r'.
  new_height = height if new_height is None else new_height
  t_y = (new_height - 1) - scale * (height - 1) + scale * t[..., 1] - offset[..., 1]
  t_z = scale * t[..., 2]
  return params_lib.make_pose(pose[..., params_lib.ANGLES], xp.stack([t_x, t_y, t_z], -1),
                              scale * pose[..., params_lib.SCALE])


def in_plane_angle(pose):
  """[...]: how far (radians, counter-clockwise as seen) the head's up axis
  leans from the image's up in the image plane; 0 for an upright face,
  whatever its pitch and yaw."""
  rotation = rotation_matrix(pose[..., params_lib.ANGLES])
  # The model's y axis in the camera frame is R's second column.
  return jnp.arctan2(-rotation[..., 0, 1], rotation[..., 1, 1])


def pose_after_image_rotation(pose, angle, height: int):
  """The pose that renders the same face after the square image (`height`
  pixels a side) is turned by `angle` [...] radians counter-clockwise as
  seen, about its centre: exact for the scaled-orthographic camera, the
  rotation about the view axis composed with the pose's and the
  translation turned about the centre (depth unchanged)."""
  angle = jnp.asarray(angle)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  zero = jnp.zeros_like(angle)
  # A roll of -angle is the turn about the view axis, counter-clockwise as seen.
  turn = rotation_matrix(jnp.stack([zero, zero, -angle], -1))
  angles = angles_from_rotation(turn @ rotation_matrix(pose[..., params_lib.ANGLES]))
  t = pose[..., params_lib.TRANSLATION]
  centre = 0.5 * (height - 1)  # the centre in x and in y (= H - 1 - row)
  t_x = centre + cos * (t[..., 0] - centre) - sin * (t[..., 1] - centre)
  t_y = centre + sin * (t[..., 0] - centre) + cos * (t[..., 1] - centre)
  return params_lib.make_pose(angles, jnp.stack([t_x, t_y, t[..., 2]], -1),
                              pose[..., params_lib.SCALE])


def pose_with_angles(pose, angles, centre):
  """The pose [..., 7] with `angles` [..., 3] instead of its own that keeps
  the model-space point `centre` [..., 3] where `pose` put it (image x, y
  and depth): the face turned about that point (scaled orthographic, so
  t3d' = t3d + f R c - f R' c)."""
  angles = jnp.asarray(angles)
  scale = pose[..., params_lib.SCALE][..., None]
  moved = scale * (rotate(rotation_matrix(pose[..., params_lib.ANGLES]), centre[..., None, :])
                   - rotate(rotation_matrix(angles), centre[..., None, :]))[..., 0, :]
  return params_lib.make_pose(angles, pose[..., params_lib.TRANSLATION] + moved,
                              pose[..., params_lib.SCALE])


def params_after_resize(params, size: int, new_size: int):
  """Parameter vectors [..., P] (pose first) that render the same faces in
  a square image of `size` resized to `new_size` (pixel centres at integer
  coordinates: p' = k (p + 1/2) - 1/2 with k = new_size / size)."""
  if new_size == size:
    return params
  k = new_size / size
  pose = params[..., :params_lib.NUM_POSE]
  offset = jnp.full(pose.shape[:-1] + (2,), 0.5 * k - 0.5, pose.dtype)
  pose = pose_after_image_similarity(pose, k, offset, size, new_size)
  return jnp.concatenate([pose, params[..., params_lib.NUM_POSE:]], axis=-1)
