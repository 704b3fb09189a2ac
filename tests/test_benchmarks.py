"""The benchmark scripts run and print their figures (tiny settings; the
figures themselves are measured by hand, see the README)."""

import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import scipy.io

from conftest import ROOT


def test_call_seconds_times_each_call_after_a_warm_up():
  from benchmarks import timing

  calls = []
  seconds = timing.call_seconds(lambda x: calls.append(x) or x, 7, repeats=3)
  assert calls == [7] * 4 and seconds.shape == (3,) and (seconds >= 0).all()
  assert timing.median_ms(lambda: None, repeats=2) >= 0


@pytest.mark.slow
def test_train_benchmark_breaks_the_step_down():
  result = subprocess.run(
      [sys.executable, "benchmarks/train.py", "--steps=2", "--batch_sizes=8",
       "--config.model=embedded:25", "--config.image_size=32",
       "--config.coarse.num_iterations=1", "--config.coarse.backbone_kwargs.widths=(8,16)",
       "--config.synthetic.statistics_samples=64"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith("per step:")]
  assert len(lines) == 1, result.stdout  # one per batch size
  for line in lines:
    step, outside, share, rest = map(float, re.match(
        r"per step: ([\d.]+) ms step = ([\d.]+) ms renderer \+ loss \(([\d.]+)%\) \+ "
        r"(-?[\d.]+) ms networks", line).groups())
    assert step > 0 and outside > 0
    # The printed figures are rounded to 0.01 ms and 0.1 %: the share must lie
    # between the shares of the rounding's extremes.
    low = 100 * (outside - 0.005) / (step + 0.005) - 0.05
    high = 100 * (outside + 0.005) / (step - 0.005) + 0.05
    assert low <= share <= high, line
    assert step - outside == pytest.approx(rest, abs=0.02)
  assert "global batch 8," in result.stdout


def test_ablation_variants_each_take_one_part_away():
  """benchmarks/ablation.py's variants: valid configs that differ from the
  full one in their own fields only, at the asked budget."""
  from benchmarks import ablation
  from configs import real

  full = ablation.variant_config(real.get_config(), "full", 3000)
  assert full.coarse.num_train_steps == 3000 and full.coarse.eval_every == 1500
  assert full.fine.num_train_steps == 0
  flat = lambda c: _flatten(c.to_dict())
  for name, overrides in ablation.VARIANTS.items():
    variant = flat(ablation.variant_config(real.get_config(), name, 3000))
    changed = {k for k, v in variant.items() if v != flat(full)[k]}
    assert changed == {k for k, v in overrides.items() if flat(full)[k] != v}, name
    assert changed or name == "full", name
  tuned = ablation.variant_config(real.get_config(), "no_tone", 500, "facerecon/assets/run")
  assert tuned.coarse.init_from == "facerecon/assets/run" and full.coarse.init_from is None
  with pytest.raises(ValueError, match="unknown variant 'no_eyes'"):
    ablation.variant_config(real.get_config(), "no_eyes", 3000)
  table = ablation.format_table({"full": {"[0,30]": 5.0, "[30,60]": 6.25, "[60,90]": 8.0,
                                          "mean": 6.417}})
  assert table.splitlines()[-1] == "| full | 5.00 | 6.25 | 8.00 | 6.42 |"


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return out


@pytest.mark.slow
def test_video_benchmark_prints_jitter_and_lag_with_and_without_smoothing():
  result = subprocess.run(
      # Each crop's fit alone: averaged over shifted windows her still head
      # barely jitters (0.33% of her face's size), leaving little to smooth.
      [sys.executable, "benchmarks/video.py", "--frames=12", "--window_shift=0"], cwd=ROOT,
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line.split() for line in result.stdout.splitlines()
          if line.startswith(("still ", "pan "))]
  assert [row[:2] for row in rows] == [["still", "False"], ["still", "True"],
                                       ["pan", "False"], ["pan", "True"]]
  # The shipped model on the astronaut: smoothing steadies her still head.
  jitter = {row[1]: float(row[2]) for row in rows[:2]}
  assert jitter["True"] < 0.6 * jitter["False"], jitter


def test_download_benchmark_streams_downloads_and_reads_a_url_list():
  result = subprocess.run(
      [sys.executable, "benchmarks/download.py", "--identities=3", "--per_identity=10",
       "--downloads=8", "--workers=2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "streamed 30 lines" in result.stdout
  assert re.search(r"^2 downloaded, 0 failed", result.stdout, re.M)
  assert re.search(r"^8 downloaded, 0 failed", result.stdout, re.M)
  assert "read 30 lines into a list" in result.stdout


def test_photo_statistics_measure_tone_and_colour_and_count_grey_images_apart():
  from benchmarks import photo_statistics

  images = np.zeros((3, 8, 8, 3), np.uint8)
  images[0] = (200, 100, 100)  # HSV saturation 255 * (1 - 100 / 200), rounded
  images[1] = (90, 90, 90)     # grey
  images[2, :, :4] = (60, 60, 60)
  images[2, :, 4:] = (180, 180, 180)
  images[2, 2:6, 2:6] = (100, 50, 50)  # the centre: saturation 128
  stats = photo_statistics.statistics(images)
  np.testing.assert_allclose(stats["grey share"], [0, 1, 0])
  np.testing.assert_allclose(stats["saturation, centre"], [128, 128], atol=1)  # colour only
  np.testing.assert_allclose(stats["red / green, centre"], [2.0, 2.0])
  assert stats["luminance std, crop"][0] < 1e-3 and stats["luminance std, crop"][2] > 50
  np.testing.assert_allclose(stats["luminance mean"][1], 90, atol=0.01)


@pytest.mark.slow
def _write_labelled_noise(folder, seed: int, height: int, width: int, margin: int):
  """Two AFLW2000-3D-style pairs of noise photos and random landmarks
  `margin` pixels or more inside them (pose 0)."""
  rng = np.random.default_rng(seed)
  for k in range(2):
    cv2.imwrite(str(folder / f"image{k:05d}.jpg"),
                rng.integers(0, 255, (height, width, 3)).astype(np.uint8))
    points = np.stack([rng.uniform(margin, width - margin, 68),
                       rng.uniform(margin, height - margin, 68), np.zeros(68)])
    scipy.io.savemat(folder / f"image{k:05d}.mat", {
        "Pose_Para": np.zeros((1, 7)), "Shape_Para": np.zeros((199, 1)),
        "Exp_Para": np.zeros((29, 1)), "pt3d_68": points})


def test_photo_statistics_compare_synthetic_faces_with_a_labelled_folder(tmp_path):
  _write_labelled_noise(tmp_path, seed=0, height=120, width=100, margin=30)
  result = subprocess.run(
      [sys.executable, "benchmarks/photo_statistics.py", f"--photos={tmp_path}", "--faces=8",
       "--config=configs/synthetic.py", "--config.image_size=32"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = {line.split("synthetic")[0].strip(): line for line in result.stdout.splitlines()
          if " synthetic " in line and " photos " in line}
  assert set(rows) == {"luminance std, crop", "luminance std, centre", "luminance mean",
                       "saturation, centre", "saturation, crop", "red / green, centre",
                       "grey share"}, result.stdout
  assert re.search(r"photos\s+\d+ / \d+ / \d+$", rows["luminance mean"]), rows
  missing = subprocess.run([sys.executable, "benchmarks/photo_statistics.py",
                            f"--photos={tmp_path / 'nowhere'}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert missing.returncode != 0 and "--photos must be" in missing.stderr


def test_crop_fill_benchmark_prints_a_row_per_fill(tmp_path):
  """The shipped run on two labelled photos, at two fills of the
  ground-truth crops: a row of NME per fill, and the fills differ."""
  _write_labelled_noise(tmp_path, seed=1, height=160, width=140, margin=40)
  result = subprocess.run(
      [sys.executable, "benchmarks/crop_fill.py", f"--dev={tmp_path}", "--fills=0.45,0.6"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line.split() for line in result.stdout.splitlines() if re.match(r"0\.\d+ ", line)]
  assert [row[0] for row in rows] == ["0.450", "0.600"], result.stdout
  frontal = [float(row[1]) for row in rows]
  assert all(np.isfinite(frontal)) and frontal[0] != frontal[1]
  wrong = subprocess.run([sys.executable, "benchmarks/crop_fill.py", f"--dev={tmp_path}",
                          "--fills=1.5"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert wrong.returncode != 0 and "--fills must be in (0, 1)" in wrong.stderr


DEV_DIR = os.path.join(ROOT, "..", "shared", "data", "aflw2000-3d-dev")


@pytest.mark.skipif(not os.path.isdir(DEV_DIR), reason="needs ../shared/data/aflw2000-3d-dev")
def test_detector_framing_benchmark_prints_the_rule_the_framing_and_held_out_halves():
  """The shipped run on 12 real dev photos: a row per framing, each with
  three yaw bins and their mean; the held-out lines for size and shift."""
  result = subprocess.run(
      [sys.executable, "benchmarks/detector_framing.py", f"--photos={DEV_DIR}",
       "--max_photos=12"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert re.match(r"1[0-2] faces found", lines[0]), result.stdout
  rows = {line[:48].strip(): line[48:].split() for line in lines[1:5]}
  from facerecon import detect

  framing = "(" + ", ".join(f"{v:g}" for v in detect.FRAMING) + ")"
  assert list(rows)[:2] == ["landmark rule alone", f"FRAMING {framing}"], result.stdout
  for cells in rows.values():  # a bin without photos reads nan; their mean is finite
    values = [float(v) for v in cells]
    assert len(values) == 4 and np.isfinite(values[3]) and 0 < values[3] < 50
  assert sum("held out, " in line for line in lines) == 2
