"""Landmark calibration against 3-D labels (data_pipeline.calibrate_landmarks)."""

import dataclasses
import os

import numpy as np
import pytest

from data_pipeline import calibrate_landmarks
from data_pipeline import prepare_ict
from facerecon import camera
from facerecon import evaluate
from facerecon import face_models
from facerecon import morphable
from facerecon import rundir
from facerecon.data import mat_folders

DEV_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                       "aflw2000-3d-dev")


def _labels(model, landmarks, count, seed=0):
  """Label point sets [68, 3]: random faces' `landmarks` vertices, rotated,
  scaled and moved."""
  rng = np.random.default_rng(seed)
  points = []
  for _ in range(count):
    shape = rng.normal(size=model.layout.num_shape) * np.asarray(model.shape_std) * 0.5
    expression = (rng.normal(size=model.layout.num_expression)
                  * np.asarray(model.expression_std) * 0.3)
    vertices = np.asarray(morphable.vertices(model, shape, expression), np.float64)
    rotation = np.asarray(camera.rotation_matrix(np.deg2rad(rng.uniform(-30, 30, 3))))
    points.append(rng.uniform(0.5, 2.0) * vertices[landmarks] @ rotation.T
                  + rng.normal(size=3) * 100)
  return points


def test_moves_a_landmark_the_labels_put_elsewhere(small_model):
  landmarks = np.asarray(small_model.landmark_indices)
  elsewhere = landmarks.copy()
  # The labels' nose tip is another vertex, well away from the model's.
  mean = np.asarray(small_model.mean_shape)
  distance = np.linalg.norm(mean - mean[landmarks[30]], axis=-1)
  elsewhere[30] = int(np.argmin(np.abs(distance - 0.1 * calibrate_landmarks.face_size(
      small_model) * 3)))
  points = _labels(small_model, elsewhere, 30)
  new, moved, before, after = calibrate_landmarks.calibrate(small_model, points)
  assert 30 in moved
  assert np.linalg.norm(mean[new[30]] - mean[elsewhere[30]]) < 0.02 * distance.max()
  assert after[2].mean() < 0.5 * before[2].mean()
  # Landmarks the labels agree with stay where they were.
  assert np.mean(new == landmarks) > 0.9


def test_a_landmark_moves_only_to_vertices_the_expressions_move_alike(small_model):
  """As a lower lip's inner edge touches the upper lip's on a closed mouth:
  the vertex where the labels put the nose tip is one that an expression
  moves far, unlike the nose tip's own vertex, so the landmark goes to the
  nearest vertex that moves as its own does."""
  landmarks = np.asarray(small_model.landmark_indices)
  mean = np.asarray(small_model.mean_shape)
  size = calibrate_landmarks.face_size(small_model)
  distance = np.linalg.norm(mean - mean[landmarks[30]], axis=-1)
  target = int(np.argmin(np.abs(distance - 0.3 * size)))
  elsewhere = landmarks.copy()
  elsewhere[30] = target
  points = _labels(small_model, elsewhere, 30)
  basis = np.asarray(small_model.expression_basis).copy()
  basis[0, target] += 0.2 * size / float(small_model.expression_std[0])
  model = dataclasses.replace(small_model, expression_basis=basis)
  new, moved, _, _ = calibrate_landmarks.calibrate(model, points)
  assert 30 in moved and new[30] != target
  motion = calibrate_landmarks.expression_motion(model)
  assert np.max(np.linalg.norm(motion[:, new[30]] - motion[:, landmarks[30]], axis=-1)) <= (
      calibrate_landmarks._MOTION_TOLERANCE * size)
  # Towards where the labels put it (a coarse grid: its next vertices).
  assert np.linalg.norm(mean[new[30]] - mean[target]) < 0.2 * size < distance[target]
  # Without that expression the nearest vertex is the labels' own.
  plain, _, _, _ = calibrate_landmarks.calibrate(small_model, points)
  assert plain[30] == target


def test_labels_that_agree_move_nothing(small_model):
  points = _labels(small_model, np.asarray(small_model.landmark_indices), 20)
  new, moved, before, _ = calibrate_landmarks.calibrate(small_model, points)
  assert len(moved) == 0
  np.testing.assert_array_equal(new, small_model.landmark_indices)
  # Residuals only from the fit's prior (it shrinks the coefficients a little).
  assert before[2].mean() < 5e-3 * calibrate_landmarks.face_size(small_model)


def test_frame_offset_finds_how_the_models_frame_is_tilted_in_the_labels(small_model):
  """Labels posed at their stated angles plus a fixed tilt (as a model whose
  frame is pitched against the BFM's): the median fitted-minus-stated angle
  is that tilt; labels turned beyond 30 degrees of yaw are left out."""
  rng = np.random.default_rng(3)
  landmarks = np.asarray(small_model.landmark_indices)
  vertices = np.asarray(morphable.vertices(
      small_model, np.zeros(small_model.layout.num_shape),
      np.zeros(small_model.layout.num_expression)), np.float64)[landmarks]
  tilt = np.array([8.0, 0.0, -3.0])
  angles = np.concatenate([rng.uniform(-20, 20, (9, 3)), [[0.0, 50.0, 0.0]]])
  points = [1.5 * vertices @ np.asarray(camera.rotation_matrix(np.deg2rad(a + tilt))).T
            for a in angles]
  offset, fitted, count = calibrate_landmarks.frame_offset(small_model, landmarks, points,
                                                           angles)
  assert count == 9
  np.testing.assert_allclose(offset, tilt, atol=0.2)
  np.testing.assert_allclose(fitted, angles[:9] + tilt, atol=0.2)


@pytest.mark.skipif(not os.path.isdir(DEV_DIR), reason="needs ../shared/data/aflw2000-3d-dev")
def test_the_shipped_landmarks_fit_the_dev_labels_better():
  """The calibration on AFLW2000-3D's dev labels (docs/data.md): the shipped
  model's landmarks fit them at least twice as well as ICT-FaceKit's own."""
  shipped = face_models.load("ict")
  points = calibrate_landmarks.read_points(DEV_DIR)[::4]
  ict_own = np.asarray(prepare_ict.LANDMARKS)
  # ICT's vertex numbers, renumbered as the shipped model's (the face comes first).
  _, _, own = calibrate_landmarks.landmark_table(shipped, ict_own, points)
  _, _, calibrated = calibrate_landmarks.landmark_table(
      shipped, np.asarray(shipped.landmark_indices), points)
  assert calibrated.mean() < 0.5 * own.mean()


def test_the_shipped_lips_part_when_the_jaw_opens():
  """The inner lips' landmarks (61-63 upper, 65-67 lower) stay on their own
  lips: jawOpen moves the lower ones down, away from the upper ones."""
  shipped = face_models.load("ict")
  landmarks = np.asarray(shipped.landmark_indices)
  motion = calibrate_landmarks.expression_motion(shipped)[
      list(shipped.expression_names).index("jawOpen")]
  upper, lower = motion[landmarks[61:64], 1], motion[landmarks[65:68], 1]
  outer_lower = motion[landmarks[56:59], 1]
  assert np.all(lower < upper.min() - 10.0)  # millimetres, y up
  np.testing.assert_allclose(lower, outer_lower, atol=8.0)


def _fits(count, num_vertices=30, seed=0):
  """Projected vertices [F, V, 2] of `count` made-up fits (pixels)."""
  return np.random.default_rng(seed).uniform(0.0, 100.0, (count, num_vertices, 2))


def test_choose_by_fits_takes_the_vertex_the_labels_sit_on():
  projected = _fits(12)
  truth = np.random.default_rng(1).permutation(30)[:6]  # six landmarks' true vertices
  labels = projected[:, truth] + np.random.default_rng(2).normal(0.0, 0.5, (12, len(truth), 2))
  # Yaws across the three bins; each landmark may go anywhere.
  yaw = np.linspace(-85.0, 85.0, 12)
  chosen = calibrate_landmarks.choose_by_fits(projected, labels, yaw,
                                              [np.arange(30)] * len(truth))
  np.testing.assert_array_equal(chosen, truth)
  # Only among its candidates: the one nearest on average (the bins here
  # hold four photos each, so the NME's weights are the box sizes').
  allowed = [np.setdiff1d(np.arange(30), [t]) for t in truth]
  again = calibrate_landmarks.choose_by_fits(projected, labels, yaw, allowed)
  size = evaluate.landmark_box_size(labels)
  for k, options in enumerate(allowed):
    distance = np.linalg.norm(projected[:, options] - labels[:, k, None], axis=-1)
    assert again[k] == options[np.argmin(np.mean(distance / size[:, None], axis=0))]


def test_choose_by_fits_weighs_each_yaw_bin_as_the_nme_does():
  """Eight frontal photos whose label sits on vertex 0 (vertex 1 a pixel
  off) and one profile whose label sits on vertex 1 (vertex 0 four pixels
  off): in the NME's mean over bins the profile's bin weighs as much as the
  frontal one, so vertex 1 wins, although a plain mean over photos prefers 0."""
  corners = np.array([[0.0, 0.0], [50.0, 50.0]])  # every label box alike
  projected = np.zeros((9, 2, 2))
  labels = np.zeros((9, 3, 2))
  labels[:, 1:] = corners
  projected[:8, 1] = [1.0, 0.0]
  projected[8, 0] = [4.0, 0.0]
  yaw = np.array([0.0] * 8 + [80.0])
  candidates = [np.array([0, 1]), np.array([0]), np.array([0])]
  chosen = calibrate_landmarks.choose_by_fits(projected, labels, yaw, candidates)
  assert chosen[0] == 1
  # All photos in one bin: the plain mean, vertex 0.
  chosen = calibrate_landmarks.choose_by_fits(projected, labels, np.zeros(9), candidates)
  assert chosen[0] == 0


def test_held_out_gains_are_positive_where_the_labels_sit_elsewhere_and_none_otherwise():
  projected = _fits(40, num_vertices=20, seed=3)
  current = np.arange(5)
  elsewhere = np.arange(5, 10)
  noise = np.random.default_rng(4).normal(0.0, 1.0, (40, 5, 2))
  yaw = np.random.default_rng(5).uniform(-90.0, 90.0, 40)
  candidates = [np.arange(20)] * 5
  gains = calibrate_landmarks.held_out_gains(projected, projected[:, elsewhere] + noise, yaw,
                                             candidates, current, splits=3)
  assert gains.shape == (6,) and np.all(gains > 5.0)
  same = calibrate_landmarks.held_out_gains(projected, projected[:, current] + noise, yaw,
                                            candidates, current, splits=3)
  np.testing.assert_allclose(same, 0.0, atol=1e-9)


def test_allowed_vertices_keep_within_the_radius(small_model):
  landmarks = np.asarray(small_model.landmark_indices)
  size = calibrate_landmarks.face_size(small_model)
  mean = np.asarray(small_model.mean_shape, np.float64)
  near = calibrate_landmarks.allowed_vertices(small_model, landmarks, radius=0.2)
  anywhere = calibrate_landmarks.allowed_vertices(small_model, landmarks)
  for k, v in enumerate(landmarks):
    assert v in near[k] and set(near[k]) <= set(anywhere[k])
    assert np.all(np.linalg.norm(mean[near[k]] - mean[v], axis=-1) <= 0.2 * size)
  assert sum(map(len, near)) < sum(map(len, anywhere))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEV_DIR), reason="needs ../shared/data/aflw2000-3d-dev")
def test_fit_photos_places_the_landmarks_where_the_evaluation_does(tmp_path):
  """The shipped run's fits of four dev photos: its landmark vertices'
  projections give the evaluation's NME (the same crops, fits and camera)."""
  run = rundir.RunDir(rundir.SHIPPED_RUN)
  config = rundir.resolve_config(run)
  pairs = mat_folders.find_pairs(DEV_DIR)[::100]
  for pair in pairs:
    for source in pair:
      os.symlink(os.path.abspath(source), tmp_path / os.path.basename(source))
  landmarks = np.asarray(face_models.load(config.model).landmark_indices)
  projected, labels, yaw = calibrate_landmarks.fit_photos(run, str(tmp_path), landmarks)
  assert projected.shape == (4, 68, 2) and labels.shape == (4, 68, 2) and yaw.shape == (4,)
  table = evaluate.yaw_table(evaluate.landmark_nme(projected, labels), yaw)
  expected = evaluate.evaluate_folder(config, run.path, str(tmp_path))["ground_truth_crops"]
  assert abs(table["all"] - expected["all"]) < 1e-3


def test_choose_by_fits_keeps_a_symmetric_model_s_landmarks_in_mirror_pairs():
  """Vertices 0/1 and 2/3 are mirror partners, 4 and 5 lie on the midline.
  Alone, the left jaw end (landmark 0) would take vertex 2, a little nearer
  its labels, and the nose tip (30) vertex 0, off the midline; in pairs the
  left jaw end takes 0, whose partner 1 is where the right one's (16) labels
  sit, and the nose tip the nearest midline vertex."""
  points = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 1.0], [10.0, 5.0], [5.0, 0.0], [5.0, 3.0]])
  projected = np.broadcast_to(points, (2, 6, 2))
  labels = np.tile(np.array([[0.0, 0.0], [10.0, 5.0]]), (2, 34, 1))  # a common box
  labels[:, 0] = [0.0, 0.8]
  labels[:, 16] = [10.0, 0.0]
  labels[:, 30] = [0.2, 0.1]
  yaw = np.zeros(2)
  candidates = [np.arange(6)] * 68
  alone = calibrate_landmarks.choose_by_fits(projected, labels, yaw, candidates)
  assert (alone[0], alone[16], alone[30]) == (2, 1, 0)
  partner = np.array([1, 0, 3, 2, 4, 5])
  paired = calibrate_landmarks.choose_by_fits(projected, labels, yaw, candidates, partner)
  assert (paired[0], paired[16], paired[30]) == (0, 1, 4)
  mirror = np.asarray(morphable.LANDMARK_MIRROR)
  np.testing.assert_array_equal(partner[paired], paired[mirror])


def test_the_shipped_landmarks_are_mirror_pairs():
  """LANDMARK_MIRROR is an involution, and the shipped head's landmark
  vertices (chosen in pairs) are each other's mirror partners by it."""
  mirror = np.asarray(morphable.LANDMARK_MIRROR)
  np.testing.assert_array_equal(mirror[mirror], np.arange(68))
  shipped = face_models.load("ict")
  partner = morphable.mirror_partners(shipped, morphable.surface_size(shipped)[0])
  landmarks = np.asarray(shipped.landmark_indices)
  np.testing.assert_array_equal(partner[landmarks], landmarks[mirror])
