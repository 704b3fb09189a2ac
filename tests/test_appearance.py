"""Procedural albedo (facerecon.data.appearance) and the host-side scene
(facerecon.data.scenes) of the synthetic faces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon import camera
from facerecon import face_models
from facerecon import shading
from facerecon.data import appearance
from facerecon.data import scenes
from facerecon.data import synthetic


def _looks(count, seed=0):
  keys = synthetic.sample_keys(seed, 0, count)
  return jax.vmap(appearance.sample_appearance)(keys)


def test_ict_albedo_paints_parts_and_regions():
  model = face_models.load("ict")
  regions = appearance.vertex_regions(model)
  looks = _looks(8)
  albedo, specular = jax.vmap(lambda look: appearance.vertex_albedo(model, regions, look))(looks)
  albedo, specular = np.asarray(albedo), np.asarray(specular)
  assert albedo.shape == (8, model.num_vertices, 3) and albedo.min() >= 0 and albedo.max() <= 1
  assert np.all(specular >= 0)
  part = {p.name: slice(*p.vertices) for p in model.parts}
  brightness = albedo.mean(axis=-1)
  # The visible eye shell ('sclera'): a near-black pupil at its front (the
  # face looks down +z), a white of the eye around the iris, teeth brighter
  # than the iris.
  shell = np.asarray(model.mean_shape)[part["sclera_left"]]
  eye = brightness[:, part["sclera_left"]]
  front = np.argmax(shell[:, 2])
  assert np.all(eye[:, front] < 0.02)
  across = np.linalg.norm(shell[:, :2] - shell[front, :2], axis=-1)
  width = np.ptp(shell[:, 0])  # two eyeball radii
  white = (across > 0.4 * width) & (shell[:, 2] > shell[front, 2] - 0.5 * width)
  iris = across < 0.2 * width
  assert white.any() and iris.sum() > 3
  assert np.all(eye[:, white].mean(1) > 0.25)
  assert np.all(brightness[:, part["teeth"]].mean(1) > 2 * eye[:, iris].mean(1))
  # Skin tones span light to dark.
  skin = np.asarray(looks.skin).mean(axis=-1)
  assert skin.max() > 3 * skin.min()
  # Where a face has hair, the top of the head is hair-coloured, not skin.
  top = np.asarray(regions.height) > 1.1
  hair = np.asarray(looks.hair_amount) > 0.5
  assert hair.any() and (~hair).any()
  top_colour = albedo[:, top].mean(axis=1)
  np.testing.assert_allclose(top_colour[~hair], np.asarray(looks.skin)[~hair], rtol=0.3)
  hair_colour = np.asarray(looks.hair)[hair]
  assert np.all(np.abs(top_colour[hair] - hair_colour).mean(-1)
                < np.abs(top_colour[hair] - np.asarray(looks.skin)[hair]).mean(-1))


def test_regions_follow_the_landmarks_of_any_model(small_model):
  """Model-agnostic: the lips and brows sit at the landmarks of the
  procedural face too (no parts, no uv)."""
  regions = appearance.vertex_regions(small_model)
  mean = np.asarray(small_model.mean_shape)
  landmarks = mean[np.asarray(small_model.landmark_indices)]
  lips = np.asarray(regions.lips) > 0.5
  assert lips.any()
  centre = mean[lips].mean(axis=0)
  assert np.linalg.norm(centre - landmarks[48:60].mean(axis=0)) < np.linalg.norm(
      landmarks[36] - landmarks[45]) * 0.15
  brow = np.asarray(regions.brow_distance) < 0.05
  assert mean[brow, 1].min() > landmarks[36:48, 1].max()  # brows above the eyes
  albedo, _ = appearance.vertex_albedo(small_model, regions, jax.tree.map(lambda x: x[0],
                                                                         _looks(1)))
  assert np.all(np.isfinite(np.asarray(albedo)))


def test_second_order_light_of_a_distant_source():
  """sh9_directional approximates max(n . d, 0) as the first nine harmonics
  do: the same mean, errors under 0.1."""
  rng = np.random.default_rng(0)
  normals = rng.normal(size=(4000, 3))
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  direction = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
  light = shading.sh9_directional(jnp.asarray(direction), jnp.ones(1))
  approx = np.asarray(shading.sh9_irradiance(jnp.asarray(normals)[None, None], light))[0, 0, :, 0]
  exact = np.maximum(normals @ direction, 0.0)
  assert np.abs(approx - exact).max() < 0.1
  assert abs(approx.mean() - exact.mean()) < 0.01
  assert np.abs(approx - exact).mean() < 0.04


def test_background_photos_hold_no_faces():
  photos = scenes.background_photos(64)
  assert photos.shape[1:] == (64, 64, 3) and photos.dtype == np.uint8
  assert len(photos) >= 10 * scenes.CROPS_PER_PHOTO
  names = " ".join(scenes._photo_paths())
  for face in ("astronaut", "camera.png", "lfw"):
    assert face not in names


def test_finish_photo_keeps_the_face_and_is_deterministic():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
  mask = np.zeros((48, 48), bool)
  mask[10:38, 12:36] = True
  landmarks = np.array([[12.0, 10.0], [35.0, 37.0]])
  photos = scenes.background_photos(96)
  backgrounds_only = synthetic.FacePrior(photo_backgrounds=1.0)
  out = scenes.finish_photo(np.random.default_rng(1), image, mask, landmarks,
                            backgrounds_only, photos)
  np.testing.assert_array_equal(out[mask], image[mask])
  assert np.mean(out[~mask] != image[~mask]) > 0.5
  again = scenes.finish_photo(np.random.default_rng(1), image, mask, landmarks,
                              backgrounds_only, photos)
  np.testing.assert_array_equal(out, again)
  occluded = scenes.finish_photo(np.random.default_rng(2), image, mask, landmarks,
                                 synthetic.FacePrior(occluders=1.0), photos)
  assert np.mean(np.any(occluded[mask] != image[mask], axis=-1)) > 0.05
  grey = scenes.finish_photo(np.random.default_rng(3), image, mask, landmarks,
                             synthetic.FacePrior(grey=1.0, jpeg=1.0, blur=1.5), photos)
  assert np.abs(grey[..., 0].astype(int) - grey[..., 1]).max() <= 3  # grey, JPEG-rounded
  assert grey.std() < image.std()  # blurred


def _landmarks_at_yaw(model, yaw_degrees, size=96):
  """A model's 68 mean-shape landmarks turned by a yaw, seen by the
  orthographic camera, as image (column, row) filling half of a size x size
  image."""
  points = np.asarray(model.mean_shape)[np.asarray(model.landmark_indices)]
  turned = np.asarray(camera.rotate(camera.rotation_matrix(
      np.radians([0.0, yaw_degrees, 0.0], dtype=np.float32)), points))
  image = turned[:, :2] * [1.0, -1.0]
  image = image - image.min(axis=0)
  return image / image.max() * size * 0.5 + size * 0.25


def test_glasses_sit_over_the_eyes_and_skip_a_hidden_eye():
  model = face_models.load("ict")
  image = np.full((96, 96, 3), 128, np.uint8)
  for yaw, frames in ((0.0, 2), (30.0, 2), (70.0, 1), (-70.0, 1)):
    landmarks = _landmarks_at_yaw(model, yaw)
    drawn = image.copy()
    scenes.draw_glasses(np.random.default_rng(0), drawn, landmarks)
    rows, columns = np.nonzero(np.any(drawn != image, axis=-1))
    eyes = np.stack([landmarks[36:42].mean(0), landmarks[42:48].mean(0)])
    spacing = np.linalg.norm(eyes[1] - eyes[0])
    assert len(rows) > 10, yaw
    assert np.all(np.abs(rows - eyes[:, 1].mean()) < 0.6 * spacing + 2), yaw  # at eye height
    # A frame round an eye draws on both sides of it. The eye the nose
    # hides (the one nearer the bridge) gets none: nothing is drawn on its
    # far side from the other eye.
    framed = [np.any(columns < eye[0] - 1) and np.any(columns > eye[0] + 1) for eye in eyes]
    assert sum(framed) >= frames, yaw
    if frames == 1:
      near_bridge = np.argmin(np.abs(eyes[:, 0] - landmarks[27, 0]))
      hidden, shown = eyes[near_bridge], eyes[1 - near_bridge]
      assert not np.any((columns - hidden[0]) * np.sign(hidden[0] - shown[0]) > 1), yaw


def test_headwear_sits_on_the_head_above_the_eyes():
  """Each kind of headwear, on faces turned up to 40 degrees and rolled:
  it is drawn, above the eyes in the head's frame and never as low as the
  nose tip; the eyes are kept (a cap's brim may come down to the brows);
  a kind that is not one is refused; the scene draws it only when asked."""
  model = face_models.load("ict")
  image = np.full((96, 96, 3), 128, np.uint8)
  for yaw in (0.0, 40.0, -40.0):
    landmarks = _landmarks_at_yaw(model, yaw)
    for roll in (0.0, 20.0):
      turn = np.radians(roll)
      centre = landmarks.mean(0)
      rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
      points = (landmarks - centre) @ rotation.T + centre
      eyes = np.stack([points[36:42].mean(0), points[42:48].mean(0)])
      along = (eyes[1] - eyes[0]) / np.linalg.norm(eyes[1] - eyes[0])
      up = np.array([along[1], -along[0]])
      for seed, kind in enumerate(scenes.HEADWEAR_KINDS * 3):
        drawn = image.copy()
        scenes.draw_headwear(np.random.default_rng(seed), drawn, points, kind)
        rows, columns = np.nonzero(np.any(drawn != image, axis=-1))
        assert len(rows) > 20, (yaw, roll, kind)
        height = (np.stack([columns, rows], -1) - eyes.mean(0)) @ up  # above the eyes
        assert height.min() > (points[30] - eyes.mean(0)) @ up + 1, (yaw, roll, kind)
        assert np.median(height) > 0, (yaw, roll, kind)
        if kind != "cap":
          for eye in eyes:
            np.testing.assert_array_equal(drawn[int(eye[1]), int(eye[0])],
                                          image[int(eye[1]), int(eye[0])])
  with pytest.raises(ValueError, match="headwear kind must be one of"):
    scenes.draw_headwear(np.random.default_rng(0), image.copy(), landmarks, "crown")
  mask = np.zeros((96, 96), bool)
  plain = synthetic.FacePrior(glasses=1.0)
  worn = synthetic.FacePrior(glasses=1.0, headwear=1.0)
  assert synthetic.has_scene(synthetic.FacePrior(headwear=0.2))
  outs = [scenes.finish_photo(np.random.default_rng(2), image, mask, landmarks, prior, None)
          for prior in (plain, plain, worn)]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert np.any(outs[2] != outs[0])


def test_another_head_appears_at_a_side_behind_the_face():
  """`draw_other_head`: the photo's own head, moved to a side and partly
  out of the photo, drawn into the background only; the same draws give
  the same head; the scene draws one only when asked."""
  size = 64
  image = np.zeros((size, size, 3), np.uint8)
  image[..., 0] = 200
  rows, columns = np.mgrid[:size, :size]
  mask = np.hypot(rows - 31.5, columns - 31.5) < 14
  for seed in range(6):
    background = np.full((size, size, 3), 50, np.uint8)
    scenes.draw_other_head(np.random.default_rng(seed), background, image, mask)
    drawn = np.any(background != 50, axis=-1)
    assert drawn.sum() > 20, seed
    # Beside the face (the middle of its disc, columns 25..38, holds none
    # of it), red like the head.
    assert not drawn[:, 25:39].any(), seed
    assert np.all(background[drawn][:, 0] > background[drawn][:, 1]), seed
    again = np.full((size, size, 3), 50, np.uint8)
    scenes.draw_other_head(np.random.default_rng(seed), again, image, mask)
    np.testing.assert_array_equal(again, background)
  landmarks = np.stack(np.meshgrid(np.linspace(20, 44, 17), np.linspace(20, 44, 4)),
                       -1).reshape(-1, 2)[:68]
  plain, crowded = synthetic.FacePrior(clutter=0.5), synthetic.FacePrior(clutter=0.5,
                                                                         other_heads=1.0)
  outs = [scenes.finish_photo(np.random.default_rng(3), image, mask, landmarks, prior, None)
          for prior in (plain, plain, crowded)]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert np.any(outs[2] != outs[0]) and np.array_equal(outs[2][mask], outs[0][mask])
  assert synthetic.has_scene(synthetic.FacePrior(other_heads=0.3))


def test_long_hair_falls_beside_the_face(small_model):
  landmarks = _landmarks_at_yaw(small_model, 0.0)
  low, high = landmarks.min(0), landmarks.max(0)
  mask = np.zeros((96, 96), bool)
  mask[int(low[1]) - 10:int(high[1]) + 1, int(low[0]):int(high[0]) + 1] = True
  rng = np.random.default_rng(0)
  image = rng.integers(100, 200, (96, 96, 3), dtype=np.uint8)
  background = np.full((96, 96, 3), 255, np.uint8)
  for seed in range(4):
    back, head = background.copy(), image.copy()
    scenes.draw_long_hair(np.random.default_rng(seed), back, head, landmarks)
    hair = np.any(back != background, axis=-1) & ~mask
    beside = (np.arange(96)[:, None] > landmarks[17:27, 1].min()) & (
        (np.arange(96)[None] < low[0]) | (np.arange(96)[None] > high[0]))
    assert (hair & beside).sum() > 20, seed
    # Any lock over the face stays at its sides: the nose and eyes are kept.
    centre = slice(int(landmarks[39, 0]), int(landmarks[42, 0]) + 1)
    np.testing.assert_array_equal(head[int(landmarks[27, 1]):int(landmarks[33, 1]), centre],
                                  image[int(landmarks[27, 1]):int(landmarks[33, 1]), centre])
  out = scenes.finish_photo(np.random.default_rng(5), image, mask, landmarks,
                            synthetic.FacePrior(long_hair=1.0, glasses=1.0), None)
  again = scenes.finish_photo(np.random.default_rng(5), image, mask, landmarks,
                              synthetic.FacePrior(long_hair=1.0, glasses=1.0), None)
  np.testing.assert_array_equal(out, again)
  assert np.any(out != image)
  assert synthetic.has_scene(synthetic.FacePrior(glasses=0.1))
