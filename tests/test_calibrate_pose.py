"""data_pipeline.calibrate_pose: choosing a run's pitch calibration on
labelled photos, and the command end to end on real dev photos."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from data_pipeline import calibrate_pose
from facerecon import evaluate
from facerecon import face_render
from facerecon import inference
from facerecon import rundir
from facerecon.data import mat_folders

DEV_DIR = os.path.join(ROOT, "..", "shared", "data", "aflw2000-3d-dev")


def _labels(count: int, seed: int):
  rng = np.random.default_rng(seed)
  labels = rng.uniform(0.0, 100.0, (count, 68, 2))
  return labels, rng.uniform(-90.0, 90.0, count)


def test_the_calibration_tapers_with_yaw_and_keeps_the_landmarks_centroid(small_model):
  """Pitch -10 at yaw 0, tapering to none at 60: a frontal face turns by the
  whole of it, one at 30 degrees by half, one at 70 not at all; each keeps
  its landmarks' centroid where it was."""
  params = np.zeros((3, 7 + small_model.layout.num_shape + small_model.layout.num_expression),
                    np.float32)
  params[:, 1] = np.radians([0.0, 30.0, -70.0])
  params[:, 3:7] = [60.0, 50.0, 0.0, 1.5]
  turned = np.asarray(inference.calibrated_params(
      params, small_model, inference.PoseCalibration(-10.0, 60.0)))
  np.testing.assert_allclose(np.degrees(turned[:, 0]), [-10.0, -5.0, 0.0], atol=1e-4)
  np.testing.assert_allclose(turned[:, 1:3], params[:, 1:3], atol=1e-6)
  np.testing.assert_allclose(turned[2], params[2], atol=1e-4)
  before = face_render.project_landmarks(small_model, params, 128)
  after = face_render.project_landmarks(small_model, turned, 128)
  np.testing.assert_allclose(np.asarray(after).mean(1), np.asarray(before).mean(1), atol=1e-3)
  assert np.abs(np.asarray(after[0]) - np.asarray(before[0])).max() > 0.5


def test_the_candidate_nearest_the_labels_is_chosen_and_gains_on_held_out_halves():
  labels, yaw = _labels(40, seed=0)
  noise = np.random.default_rng(1).normal(0.0, 0.5, labels.shape)
  shifted = labels + [3.0, -2.0]
  landmarks = np.stack([shifted, labels + noise, shifted + noise])
  assert calibrate_pose.choose(landmarks, labels, yaw) == 1
  gains = calibrate_pose.held_out_gains(landmarks, labels, yaw, uncalibrated=0, splits=3)
  assert gains.shape == (6,) and np.all(gains > 1.0)
  same = calibrate_pose.held_out_gains(np.stack([shifted, shifted]), labels, yaw,
                                       uncalibrated=0, splits=3)
  np.testing.assert_allclose(same, 0.0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEV_DIR), reason="needs ../shared/data/aflw2000-3d-dev")
def test_the_command_calibrates_the_shipped_run_on_dev_photos(tmp_path):
  """On 20 dev photos: the command writes the calibration it chose, which
  lowers their NME; the evaluation of a run holding that file reproduces
  the NME the command reported, and the command's 'before' is the run
  evaluated without one."""
  photos = tmp_path / "photos"
  photos.mkdir()
  for pair in mat_folders.find_pairs(DEV_DIR)[::20]:
    for source in pair:
      os.symlink(os.path.abspath(source), photos / os.path.basename(source))
  run = tmp_path / "run"
  shutil.copytree(rundir.SHIPPED_RUN, run,
                  ignore=shutil.ignore_patterns(rundir.POSE_CALIBRATION_FILE))
  output = tmp_path / "calibration.json"
  result = subprocess.run(
      [sys.executable, "-m", "data_pipeline.calibrate_pose", f"--run={run}",
       f"--labels={photos}", f"--output={output}"],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "chosen: pitch" in result.stdout
  record = json.loads(output.read_text())
  assert record["labels"] == "photos" and record["photos"] == 20
  assert record["pitch"] in calibrate_pose.PITCHES and record["yaw_taper"] in calibrate_pose.TAPERS
  assert record["nme_after"]["mean"] <= record["nme_before"]["mean"]
  config = rundir.resolve_config(rundir.RunDir(str(run)))
  before = evaluate.evaluate_folder(config, str(run), str(photos))
  assert before["ground_truth_crops"]["all"] == pytest.approx(record["nme_before"]["all"],
                                                              abs=1e-3)
  shutil.copy(output, rundir.RunDir(str(run)).pose_calibration)
  after = evaluate.evaluate_folder(config, str(run), str(photos))
  assert after["pose_calibration"] == {"pitch": record["pitch"],
                                       "yaw_taper": record["yaw_taper"]}
  assert after["ground_truth_crops"]["all"] == pytest.approx(record["nme_after"]["all"],
                                                             abs=1e-3)
  assert inference.Predictor(config, str(run)).calibration is not None
