import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import real
from facerecon import camera
from facerecon import face_models
from facerecon import face_render
from facerecon import morphable
from facerecon import params as params_lib
from facerecon import shading
from facerecon.data import scenes
from facerecon.data import skin_marks
from facerecon.data import sources
from facerecon.data import synthetic
from facerecon.data import wrinkles

PRIOR = synthetic.FacePrior()


def _generate(model, start, count, size=48):
  return synthetic.generate_jit(model, synthetic.sample_keys(7, start, count), PRIOR,
                                size, size)


def test_samples_do_not_depend_on_batching(small_model):
  """The same samples whatever the batch (to float rounding: XLA may
  vectorise another batch shape differently)."""
  together = _generate(small_model, 0, 6)
  apart = _generate(small_model, 3, 2)
  for field in ("params", "texture", "lighting", "colour", "landmarks"):
    np.testing.assert_allclose(np.asarray(getattr(apart, field)),
                               np.asarray(getattr(together, field))[3:5], rtol=1e-5,
                               atol=1e-5, err_msg=field)
  image_difference = np.abs(np.asarray(apart.image, int) - np.asarray(together.image[3:5], int))
  assert image_difference.mean() < 0.5
  assert np.mean(np.asarray(apart.mask) != np.asarray(together.mask[3:5])) < 0.01
  other_seed = synthetic.generate_jit(small_model, synthetic.sample_keys(8, 0, 6), PRIOR, 48, 48)
  assert not np.array_equal(np.asarray(other_seed.params), np.asarray(together.params))


def test_a_prefetching_stream_gives_the_same_batches(small_model):
  """A SyntheticStream that starts the next batch's render ahead gives the
  same batches, scene included, as one that renders each when asked; also
  after its position is set elsewhere (a resumed run) and back."""
  prior = synthetic.FacePrior(clutter=0.5, occluders=0.5, glasses=0.5, jpeg=0.5)
  plain, ahead = (sources.SyntheticStream(small_model, 32, 3, 7, prior, per_host=False,
                                          prefetch=prefetch) for prefetch in (False, True))
  wanted = [next(plain) for _ in range(4)]
  got = [next(ahead), next(ahead)]
  ahead.set_state({"position": 3})
  got.append(next(ahead))
  ahead.set_state({"position": 2})
  got.insert(2, next(ahead))
  assert ahead.get_state() == {"position": 3}
  for want, batch in zip(wanted, got):
    assert want.keys() == batch.keys()
    for name in want:
      np.testing.assert_array_equal(batch[name], want[name])


def test_labels_describe_the_images(small_model):
  batch = _generate(small_model, 0, 6)
  layout = small_model.layout
  assert batch.image.dtype == jnp.uint8 and batch.image.shape == (6, 48, 48, 3)
  assert batch.params.shape == (6, layout.size) and batch.params.dtype == jnp.float32
  face = params_lib.split(batch.params, layout)
  vertices = morphable.vertices(small_model, face.shape, face.expression)
  landmarks = camera.project_landmarks(vertices, small_model.landmark_indices, face.pose, 48)
  np.testing.assert_allclose(np.asarray(landmarks), np.asarray(batch.landmarks), atol=1e-3)
  mask = np.asarray(batch.mask)
  assert np.all(mask.sum(axis=(1, 2)) > 0.1 * 48 * 48)  # every face is in frame
  depth, pncc = np.asarray(batch.depth), np.asarray(batch.pncc)
  assert np.all(depth[~mask] == 0) and np.all(pncc[~mask] == 0)
  assert pncc.min() >= 0 and pncc.max() <= 1 + 1e-6
  # The face's pixels differ from the background around them.
  assert np.asarray(batch.image).std() > 10


def test_prior_ranges_and_scale(small_model):
  keys = synthetic.sample_keys(0, 0, 400)
  sample = jax.vmap(lambda k: synthetic.sample_face(k, small_model, PRIOR, 64, 64))(keys)
  face = params_lib.split(sample.params, small_model.layout)
  degrees = np.rad2deg(np.asarray(face.angles))
  for axis, (low, high) in enumerate((PRIOR.pitch, PRIOR.yaw, PRIOR.roll)):
    assert low <= degrees[:, axis].min() and degrees[:, axis].max() <= high
    assert degrees[:, axis].max() - degrees[:, axis].min() > 0.8 * (high - low)
  # Shape and expression are N(0, std^2) per mode (not the original's [0, 1e4]).
  shape_z = np.asarray(face.shape) / small_model.shape_std
  np.testing.assert_allclose(shape_z.std(axis=0).mean(), 1.0, atol=0.1)
  assert abs(shape_z.mean()) < 0.1
  expression_z = np.asarray(face.expression) / small_model.expression_std
  np.testing.assert_allclose(expression_z.std(axis=0).mean(), 1.0, atol=0.1)
  ambient = np.asarray(sample.lighting[:, 0])
  assert PRIOR.ambient[0] <= ambient.min() and ambient.max() <= PRIOR.ambient[1]
  assert np.all(np.asarray(sample.lighting[:, 3]) >= 0)  # light from the camera side


def test_colour_transform():
  image = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 4, 5, 3)), jnp.float32)
  identity = jnp.array([1, 1, 1, 0, 0, 0, 1.0])
  np.testing.assert_allclose(np.asarray(synthetic.colour_transform(image, identity)),
                             np.asarray(image), atol=1e-6)
  grey = synthetic.colour_transform(image, jnp.array([1, 1, 1, 0.1, 0.1, 0.1, 0.0]))
  expected = np.asarray(image) @ np.array(shading.LUMINANCE) + 0.1
  np.testing.assert_allclose(np.asarray(grey), np.repeat(expected[..., None], 3, -1), atol=1e-6)


def test_uniform_noise_statistics():
  """256 evenly used levels over [-h, h], std h / sqrt(3), no correlation
  between neighbours or between keys, the same for the same key."""
  half_width = 0.02
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  noise = np.asarray(synthetic.uniform_noise(keys[0], (120, 100, 3), half_width), np.float64)
  again = np.asarray(synthetic.uniform_noise(keys[0], (120, 100, 3), half_width))
  other = np.asarray(synthetic.uniform_noise(keys[1], (120, 100, 3), half_width), np.float64)
  np.testing.assert_array_equal(noise, again)
  assert noise.shape == (120, 100, 3)
  assert noise.min() >= -half_width - 1e-7 and noise.max() <= half_width + 1e-7
  levels = np.round((noise + half_width) / (2 * half_width) * 255).astype(int)
  counts = np.bincount(levels.ravel(), minlength=256)
  assert counts.size == 256 and counts.min() > 0.7 * counts.mean()  # 141 per level
  assert abs(noise.mean()) < 0.01 * half_width
  np.testing.assert_allclose(noise.std(), half_width / np.sqrt(3), rtol=0.02)
  flat, flat_other = noise.ravel(), other.ravel()
  for a, b in ((flat[:-1], flat[1:]), (flat[:-4], flat[4:]), (flat, flat_other)):
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02


def test_fine_detail_is_a_displacement_on_the_face_seen_in_the_shading():
  model = face_models.load("embedded")
  keys = synthetic.sample_keys(5, 0, 4)
  prior = synthetic.FacePrior(yaw=(-30.0, 30.0), pitch=(-20.0, 20.0))
  faces = synthetic.generate_jit(model, keys, prior, 64, 64)
  smooth = synthetic.generate_jit(model, keys, dataclasses.replace(prior, detail=(0.0, 0.0)),
                                  64, 64)
  mask = np.asarray(faces.mask)
  displacement = np.asarray(faces.fine_depth - faces.depth)
  assert not displacement[~mask].any()
  # Heights of 0.2-0.6% of the face's width per wave: a few tenths of a pixel here.
  assert 0.1 < displacement[mask].std() < 1.0
  # Same faces otherwise: the detail only changes the shading on the face.
  np.testing.assert_array_equal(np.asarray(smooth.params), np.asarray(faces.params))
  np.testing.assert_array_equal(np.asarray(smooth.fine_depth), np.asarray(smooth.depth))
  changed = np.abs(np.asarray(faces.image, int) - np.asarray(smooth.image, int)).max(-1) > 0
  assert not changed[~mask].any() and changed[mask].mean() > 0.3


def test_photoreal_faces_of_the_ict_head():
  """configs/real.py's faces: the ICT head with procedural appearance and a
  host-side scene; labels still exact, faces independent of the batching."""
  model = face_models.load("ict")
  prior = sources.face_prior(real.get_config())
  assert prior.procedural_albedo and synthetic.has_scene(prior)
  photos = scenes.background_photos(96)
  # Faces 2 and 3 in two batches (of one size: one compilation).
  together = synthetic.generate_photos(model, 5, 0, 4, prior, 48, 48, photos)
  apart = synthetic.generate_photos(model, 5, 2, 4, prior, 48, 48, photos)
  np.testing.assert_array_equal(apart.params[:2], together.params[2:])
  np.testing.assert_array_equal(apart.image[:2], together.image[2:])
  plain = synthetic.generate_jit(model, synthetic.sample_keys(5, 0, 4), prior, 48, 48)
  assert np.mean(np.asarray(plain.image) != together.image) > 0.2  # the scene was drawn

  surface = morphable.surface(model)
  face = params_lib.split(together.params, model.layout)
  vertices = morphable.vertices(surface, face.shape, face.expression)
  landmarks = camera.project_landmarks(vertices, surface.landmark_indices, face.pose, 48)
  np.testing.assert_allclose(np.asarray(landmarks), together.landmarks, atol=1e-3)
  # Framed as photos are cropped: the landmark box's larger side is `fill`
  # of the image.
  side = (together.landmarks.max(axis=1) - together.landmarks.min(axis=1)).max(axis=-1) / 48
  assert np.all((side > prior.fill[0] - 1e-3) & (side < prior.fill[1] + 1e-3))


def test_blendshape_prior_is_sparse_and_in_range():
  model = face_models.load("ict")
  prior = synthetic.FacePrior(expression_active=0.15)
  keys = synthetic.sample_keys(0, 0, 200)
  weights = np.asarray(jax.vmap(lambda k: synthetic._expression(k, model, prior))(keys))
  assert weights.min() >= 0 and weights.max() <= 1
  active = np.mean(weights > 0)
  assert 0.1 < active < 0.3  # 15%, more where left/right pairs move together
  left, right = synthetic._pairs(model.expression_names)
  assert len(left) > 15
  together = np.mean(np.all(weights[:, left] == weights[:, right], axis=1))
  assert 0.35 < together < 0.75  # half the faces, plus a few with both zero


def test_expression_archetypes_open_mouths_and_smile():
  """A share of the faces start from a common photo expression (smile, open
  mouth, surprise): mouths open and smile more often than under the sparse
  random weights alone, within the weights' range; without the archetypes
  the draws are the same as before they existed."""
  model = face_models.load("ict")
  names = list(model.expression_names)
  keys = synthetic.sample_keys(0, 0, 400)
  draw = lambda prior: np.asarray(jax.vmap(lambda k: synthetic._expression(k, model, prior))(
      keys))
  plain = draw(synthetic.FacePrior(expression_active=0.15))
  mixed = draw(synthetic.FacePrior(expression_active=0.15, expression_archetypes=0.5))
  assert mixed.min() >= 0 and mixed.max() <= 1
  jaw, smile = names.index("jawOpen"), names.index("mouthSmile_L")
  assert np.mean(mixed[:, jaw] > 0.2) > 1.5 * np.mean(plain[:, jaw] > 0.2)
  assert np.mean(mixed[:, smile] > 0.3) > 2.0 * np.mean(plain[:, smile] > 0.3)
  # Half the faces keep sparse random weights only: as many zeros overall
  # as without archetypes, within what the archetypes set.
  assert 0.5 < np.mean(mixed == 0) / np.mean(plain == 0) < 1.0
  np.testing.assert_array_equal(draw(synthetic.FacePrior(expression_active=0.15,
                                                         expression_archetypes=0.0)), plain)
  # Models without those names (the embedded one) are left as they were.
  ranges = synthetic._archetype_ranges(("a", "b"))
  assert not ranges.any()


def test_main_light_from_above():
  """`light_from_above` of the faces have their main light above the
  camera's horizon (y up); at 0 the lights are those drawn before it existed."""
  keys = synthetic.sample_keys(0, 0, 200)
  def main_lights(fraction):
    prior = synthetic.FacePrior(light_from_above=fraction)
    return np.asarray(jax.vmap(lambda k: synthetic._light(
        jax.random.split(k, 3), jax.random.fold_in(k, 1), prior)[2][:3])(keys))
  anywhere, above, most = main_lights(0.0), main_lights(1.0), main_lights(0.8)
  assert 0.35 < np.mean(anywhere[:, 1] > 0) < 0.65
  assert np.all(above[:, 1] >= 0)
  assert 0.85 < np.mean(most[:, 1] >= 0) < 0.95  # 0.8 + 0.2 of the other half
  np.testing.assert_allclose(np.abs(above), np.abs(anywhere))


def test_prior_probabilities_are_checked():
  config = real.get_config()
  config.synthetic.prior.expression_archetypes = 1.5
  with pytest.raises(ValueError, match="expression_archetypes"):
    sources.face_prior(config)
  config = real.get_config()
  config.synthetic.prior.cast_shadows = True
  assert sources.face_prior(config).cast_shadows
  config.synthetic.prior.procedural_albedo = False
  with pytest.raises(ValueError, match="cast_shadows needs procedural_albedo"):
    sources.face_prior(config)
  for distance, procedural in (((3.0, 2.0), True), ((0.5, 4.0), True), ((2.0, 4.0), False)):
    config = real.get_config()
    config.synthetic.prior.camera_distance = distance
    config.synthetic.prior.procedural_albedo = procedural
    with pytest.raises(ValueError, match="camera_distance"):
      sources.face_prior(config)
  config = real.get_config()
  config.synthetic.prior.camera_distance = (2.0, 20.0)
  assert sources.face_prior(config).camera_distance == (2.0, 20.0)


def test_a_camera_near_the_face_sees_it_in_perspective():
  """`camera_distance`: the labels' pose is the same; the landmarks move
  from the image centre as far as a pinhole camera that distance away
  shows them (nearer ones outwards, the jaw's ends at the back inwards),
  and far away the camera is orthographic."""
  model = face_models.load("ict")
  config = real.get_config()
  prior = dataclasses.replace(sources.face_prior(config), yaw=(-10.0, 10.0), pitch=(-5.0, 5.0),
                              roll=(0.0, 0.0), frontal_fraction=0.0)
  keys = synthetic.sample_keys(3, 0, 4)
  flat = synthetic.generate_jit(model, keys, prior, 96, 96)
  near = synthetic.generate_jit(model, keys, dataclasses.replace(
      prior, camera_distance=(2.5, 2.5)), 96, 96)
  far = synthetic.generate_jit(model, keys, dataclasses.replace(
      prior, camera_distance=(1e4, 1e4)), 96, 96)
  np.testing.assert_array_equal(np.asarray(near.params), np.asarray(flat.params))
  np.testing.assert_allclose(np.asarray(far.landmarks), np.asarray(flat.landmarks), atol=0.02)
  centre = np.array([47.5, 47.5])
  flat_lm, near_lm = np.asarray(flat.landmarks), np.asarray(near.landmarks)
  radius = lambda points, k: np.linalg.norm(points[:, k] - centre, axis=-1)
  assert np.all(radius(near_lm, 30) > radius(flat_lm, 30))       # the nose tip, nearest
  assert np.all(radius(near_lm, 0) < radius(flat_lm, 0))         # the jaw's ends, behind
  assert np.all(radius(near_lm, 16) < radius(flat_lm, 16))
  # The pinhole's factor for the nose tip: D / (D - dz), D 2.5 face widths.
  _, image_vertices = face_render.posed_vertices(model, flat.params, 96)
  moved = np.asarray(synthetic.perspective_vertices(
      model, image_vertices, flat.params, jnp.full((4,), 2.5), 96, 96))
  tip = model.landmark_indices[30]
  width = float(np.ptp(model.mean_shape[:, 0])) * np.asarray(flat.params)[:, params_lib.SCALE]
  depth = np.asarray(image_vertices)[:, :, 2]
  reference = np.asarray(image_vertices)[:, np.asarray(model.landmark_indices), 2].mean(-1)
  factor = 2.5 * width / (2.5 * width - (depth[:, tip] - reference))
  np.testing.assert_allclose(moved[:, tip, :2] - centre,
                             (np.asarray(image_vertices)[:, tip, :2] - centre) * factor[:, None],
                             rtol=1e-4, atol=1e-3)


def test_tone_sets_the_luminance_spread_and_brightness():
  rng = np.random.default_rng(0)
  image = rng.integers(100, 156, (32, 32, 3)).astype(np.uint8)  # a flat render
  toned = scenes.tone(image, std=40.0, mean=90.0)
  luminance = toned.astype(np.float64) @ [0.299, 0.587, 0.114]
  assert abs(luminance.std() - 40.0) < 1.0 and abs(luminance.mean() - 90.0) < 1.0
  # Colours keep their direction from grey: the channels' order per pixel.
  assert np.mean(np.argsort(toned, axis=-1) == np.argsort(image, axis=-1)) > 0.95
  np.testing.assert_array_equal(scenes.tone(image, 0.0, 0.0), image)
  kept_mean = scenes.tone(image, 20.0, 0.0).astype(np.float64) @ [0.299, 0.587, 0.114]
  assert abs(kept_mean.mean() - (image.astype(np.float64) @ [0.299, 0.587, 0.114]).mean()) < 1


def test_tone_sets_the_saturation_of_the_face_and_of_the_background():
  rng = np.random.default_rng(1)
  image = rng.integers(40, 200, (48, 48, 3)).astype(np.uint8)  # loud colours
  face = np.zeros((48, 48), bool)
  face[12:36, 12:36] = True
  plain = scenes.tone(image, 50.0, 100.0)
  luminance = lambda im: im.astype(np.float64) @ [0.299, 0.587, 0.114]
  assert scenes.mean_saturation(plain, face) > 100
  # The whole image's colours, scaled by the face's measure.
  muted = scenes.tone(image, 50.0, 100.0, saturation=40.0, face=face)
  assert abs(scenes.mean_saturation(muted, face) - 40.0) < 3
  assert abs(scenes.mean_saturation(muted, ~face) - 40.0) < 10
  # The luminance map stays the one `std` and `mean` ask for.
  assert abs(luminance(muted).std() - 50.0) < 2 and abs(luminance(muted).mean() - 100.0) < 2
  # Face and background apart.
  both = scenes.tone(image, 50.0, 100.0, saturation=60.0, face=face, background_saturation=20.0)
  assert abs(scenes.mean_saturation(both, face) - 60.0) < 3
  assert abs(scenes.mean_saturation(both, ~face) - 20.0) < 3
  # A grey image stays grey whatever the target.
  grey = np.repeat(image[..., :1], 3, axis=-1)
  np.testing.assert_array_equal(scenes.tone(grey, 50.0, 100.0, saturation=80.0, face=face),
                                scenes.tone(grey, 50.0, 100.0))


def test_the_real_config_matches_the_luminance_of_photos():
  """configs/real.py's tone ranges: the training faces' luminance spread is
  that of photo crops (docs/data.md), where without them it is flatter."""
  model = face_models.load("ict")
  prior = sources.face_prior(real.get_config())
  assert scenes.has_tone(prior)
  photos = scenes.background_photos(96)
  toned = synthetic.generate_photos(model, 9, 0, 32, prior, 64, 64, photos)
  flat = synthetic.generate_photos(
      model, 9, 0, 32, dataclasses.replace(prior, luminance_std=(0.0, 0.0),
                                           luminance_mean=(0.0, 0.0)), 64, 64, photos)
  spread = lambda batch: np.median((batch.image.astype(np.float64) @ [0.299, 0.587, 0.114])
                                   .std(axis=(1, 2)))
  assert spread(flat) < 45 < spread(toned)
  np.testing.assert_array_equal(toned.params, flat.params)  # the same faces
  # Its colour ranges: without them the tone's contrast made the colours as
  # loud (docs/data.md: saturation 158 against the photos' 92, median).
  loud = synthetic.generate_photos(
      model, 9, 0, 32, dataclasses.replace(prior, saturation=(0.0, 0.0),
                                           background_saturation=(0.0, 0.0)), 64, 64, photos)
  saturation = lambda batch: np.median([scenes.mean_saturation(image)
                                        for image in batch.image])
  assert saturation(toned) < 0.8 * saturation(loud)
  assert 60 < saturation(toned) < 130


def _family_only(family: str, depth: float = 0.01):
  params = np.zeros(wrinkles.NUM_PARAMS, np.float32)
  params[wrinkles.FAMILIES.index(family)] = depth
  params[len(wrinkles.FAMILIES)] = 4.0  # forehead lines
  params[len(wrinkles.FAMILIES) + 2:] = np.linspace(0.1, 0.9, wrinkles.MAX_LINES)
  return jnp.asarray(params)


def test_wrinkles_fold_where_faces_fold_and_deepen_with_the_expression():
  """ICT-FaceKit's head, the wrinkles evaluated at its own vertices' PNCC:
  each family lies where it belongs (by the landmarks), and a raised brow
  deepens the forehead lines only."""
  model = morphable.surface(face_models.load("ict"))
  where = wrinkles.geometry(model)
  assert where.named
  pncc = jnp.asarray(model.pncc)[None]                       # [1, N, 3] as pixels
  everywhere = jnp.ones(pncc.shape[:2], bool)
  lm = np.asarray(where.landmarks)
  unit = float(where.unit)
  height = lambda family: np.asarray(wrinkles.wrinkle_height(
      _family_only(family), pncc, everywhere, where))[0]
  forehead = height("forehead")
  folded = forehead < -1e-3
  assert folded.sum() > 50 and forehead.min() >= -0.0101
  v = np.asarray(model.pncc)[:, 1]
  assert np.all(v[folded] > lm[17:27, 1].max())             # above the brows
  for family, corner in (("crows_feet_right", lm[36]), ("crows_feet_left", lm[45])):
    folded = height(family) < -1e-3
    distance = np.linalg.norm(np.asarray(model.pncc)[folded, :2] - corner, axis=1)
    assert folded.sum() > 10 and np.all(distance < 0.6 * unit), family
  folded = height("nasolabial_right") < -1e-3
  u = np.asarray(model.pncc)[folded, 0]
  assert folded.sum() > 10 and np.all(u < lm[30, 0])        # the subject's right side

  names = model.expression_names
  raised = np.zeros(len(names), np.float32)
  raised[names.index("browInnerUp_L")] = 1.0
  key = jax.random.PRNGKey(3)
  draw = lambda weights: np.asarray(wrinkles.sample_wrinkles(
      key, jnp.asarray(weights) * model.expression_std, model.expression_std, where,
      (0.01, 0.01)))
  calm, surprised = draw(np.zeros(len(names), np.float32)), draw(raised)
  assert surprised[0] > calm[0] and surprised[0] == pytest.approx(0.01)
  np.testing.assert_array_equal(surprised[1:], calm[1:])


def test_synthetic_faces_carry_their_wrinkles_in_the_detailed_depth(small_model):
  """With `wrinkles` the detailed depth label differs from the smooth one
  on the face only; without (and without detail) they are the same. The
  built-in face has no named blendshapes: its activations are drawn."""
  prior = dataclasses.replace(synthetic.FacePrior(), detail=(0.0, 0.0), yaw=(-20.0, 20.0),
                              pitch=(-10.0, 10.0))
  keys = synthetic.sample_keys(4, 0, 4)
  smooth = synthetic.generate_jit(small_model, keys, prior, 64, 64)
  np.testing.assert_array_equal(smooth.fine_depth, smooth.depth)
  folded = synthetic.generate_jit(small_model, keys,
                                  dataclasses.replace(prior, wrinkles=(0.01, 0.02)), 64, 64)
  difference = np.asarray(folded.fine_depth) - np.asarray(folded.depth)
  mask = np.asarray(folded.mask)
  assert np.all(difference[~mask] == 0)
  assert np.abs(difference[mask]).max() > 0.1 and np.all(difference <= 1e-6)
  np.testing.assert_array_equal(folded.depth, smooth.depth)


def test_skin_marks_are_relief_and_colour_where_the_face_is():
  """A face with two moles and a raised scar (the real head, facing the
  viewer): the marks' height is up at the moles' centres and along the
  scar, pores only sink it, and the albedo is darker at the moles, paler on
  the scar, untouched off the face and on clear skin."""
  model = face_models.load("ict")
  where = wrinkles.geometry(model)
  size = 128
  vertices = np.asarray(morphable.vertices_from_params(
      model, np.zeros((1, model.layout.size), np.float32)))[0]
  params = np.zeros(model.layout.size, np.float32)
  params[:7] = camera.framing_pose(vertices, np.zeros(3), size, size, fill=0.8)
  face = face_render.render_face(model, params[None], None, size, size)
  pncc, mask = face.pncc[0], face.mask[0]
  marks = np.zeros(skin_marks.NUM_PARAMS, np.float32)
  moles = skin_marks._MOLES
  marks[moles:moles + 8] = [0.3, 0.5, 0.1, 0.004, 0.7, 0.5, 0.1, 0.004]
  scar = skin_marks._SCAR
  marks[scar:scar + 7] = [0.4, 0.2, 0.6, 0.2, 0.04, 0.003, 1.0]
  height = np.asarray(skin_marks.mark_height(jnp.asarray(marks), pncc, mask, where))
  albedo = np.asarray(skin_marks.mark_albedo(jnp.asarray(marks), pncc, mask, where))
  low, box = map(np.asarray, skin_marks._face_box(where))

  def pixel(u, v):
    """The face pixel whose PNCC is nearest the box position (u, v)."""
    target = low + np.array([u, v]) * box
    distance = np.linalg.norm(np.asarray(pncc)[..., :2] - target, axis=-1)
    distance[~np.asarray(mask)] = np.inf
    return np.unravel_index(np.argmin(distance), distance.shape)

  for u, v in ((0.3, 0.5), (0.7, 0.5)):
    assert height[pixel(u, v)] == pytest.approx(0.004, rel=0.1)
    assert np.all(albedo[pixel(u, v)] < 0.6)
  assert height[pixel(0.5, 0.2)] == pytest.approx(0.003, rel=0.1)
  assert albedo[pixel(0.5, 0.2)][0] > 1.05
  assert np.all(height[~np.asarray(mask)] == 0) and np.all(albedo[~np.asarray(mask)] == 1)
  clear = pixel(0.5, 0.8)  # between the brows and the nose: no mole, no scar
  np.testing.assert_allclose(albedo[clear], 1.0, atol=1e-3)
  marks[0] = 0.001  # pores on
  pitted = np.asarray(skin_marks.mark_height(jnp.asarray(marks), pncc, mask, where)) - height
  assert pitted.min() < -1e-4 and pitted.max() <= 0.0


def test_synthetic_faces_carry_their_skin_marks(small_model):
  """With `marks` on, the detailed depth differs from the smooth one on the
  face only, and so does the photo; the draws of everything else stay."""
  prior = dataclasses.replace(synthetic.FacePrior(), detail=(0.0, 0.0), yaw=(-20.0, 20.0),
                              pitch=(-10.0, 10.0))
  keys = synthetic.sample_keys(4, 0, 8)
  smooth = synthetic.generate_jit(small_model, keys, prior, 64, 64)
  marked = synthetic.generate_jit(small_model, keys,
                                  dataclasses.replace(prior, marks=(0.01, 0.02)), 64, 64)
  difference = np.asarray(marked.fine_depth) - np.asarray(marked.depth)
  mask = np.asarray(marked.mask)
  assert np.all(difference[~mask] == 0) and np.abs(difference[mask]).max() > 0.02
  np.testing.assert_array_equal(marked.depth, smooth.depth)
  np.testing.assert_array_equal(marked.params, smooth.params)
  changed = np.any(np.asarray(marked.image) != np.asarray(smooth.image), axis=-1)
  assert changed[mask].any() and not changed[~mask].any()


def test_cast_shadows_darken_the_neck_under_the_chin_and_nothing_else_changes():
  """With `cast_shadows` the main light's share is taken from where the head
  shadows it: never a pixel brighter, the background and the labels as
  they were; lit from above, the chin shades the neck, not the forehead."""
  model = face_models.load("ict")
  prior = synthetic.FacePrior(procedural_albedo=True, frame_by_landmarks=True, fill=(0.5, 0.5),
                              shift=0.0, pitch=(0.0, 0.0), yaw=(0.0, 0.0), roll=(0.0, 0.0),
                              ambient=(0.2, 0.2), directional=(1.0, 1.0), light_from_above=1.0,
                              noise=0.0, hair=0.0)
  keys = synthetic.sample_keys(3, 0, 4)
  plain = synthetic.generate_jit(model, keys, prior, 64, 64)
  shadowed = synthetic.generate_jit(model, keys, dataclasses.replace(prior, cast_shadows=True),
                                    64, 64)
  np.testing.assert_array_equal(np.asarray(shadowed.params), np.asarray(plain.params))
  np.testing.assert_array_equal(np.asarray(shadowed.landmarks), np.asarray(plain.landmarks))
  darker = np.asarray(plain.image, int) - np.asarray(shadowed.image, int)
  mask = np.asarray(plain.mask)
  assert darker.min() == 0 and not darker[~mask].any()
  assert 0.02 < np.mean(darker.max(-1)[mask] > 4) < 0.5
  landmarks = np.asarray(plain.landmarks)
  below_chin, forehead = [], []
  for k in range(len(keys)):
    height = np.ptp(landmarks[k, :, 1])
    column = int(landmarks[k, 8, 0])               # the chin
    chin, brow = int(landmarks[k, 8, 1] + 0.05 * height), int(landmarks[k, 19, 1])
    below_chin.append(darker[k, chin:chin + int(0.15 * height), column - 3:column + 4].mean())
    forehead.append(darker[k, brow - int(0.25 * height):brow, column - 3:column + 4].mean())
  assert np.mean(below_chin) > 2.0 and np.mean(forehead) < 0.5
