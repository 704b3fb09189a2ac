"""End to end: the README's main command, on a small picture."""

from importlib import metadata
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT
from facerecon import face_models
from facerecon import morphable
from facerecon import preview


@pytest.mark.slow
def test_main_preview_writes_model_faces_and_picture(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "main.py", "--mode=preview", "--config=configs/synthetic.py",
       f"--workdir={workdir}", "--config.preview.tile_size=64", "--config.preview.num_identities=2",
       "--config.preview.num_expressions=5"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"wrote {workdir}/preview.png" in result.stdout

  picture = cv2.imread(str(workdir / "preview.png"))
  views = len(preview.VIEWS)
  faces = views + 2 + 5
  assert picture.shape == (64 * -(-faces // views), 64 * views, 3)
  # Each face tile shows a face: skin-coloured pixels (R > G > B) in the middle.
  tiles = [picture[r:r + 64, c:c + 64] for r in range(0, picture.shape[0], 64)
           for c in range(0, picture.shape[1], 64)][:faces]
  for tile in tiles:
    centre = tile[16:48, 16:48].reshape(-1, 3).astype(int)  # BGR
    skin = (centre[:, 2] > centre[:, 1]) & (centre[:, 1] > centre[:, 0])
    assert skin.mean() > 0.5

  model = morphable.load_model(workdir / "model.npz")
  assert model.num_vertices == face_models.embedded().num_vertices
  with np.load(workdir / "faces.npz") as data:
    assert data["params"].shape == (faces, model.layout.size)
    assert list(data["names"][:views]) == [v[0] for v in preview.VIEWS]
    assert np.all(np.isfinite(data["params"]))


def test_main_rejects_bad_flags(tmp_path):
  """Each bad command line stops main.py with a message that says what is
  wrong (the commands run side by side: most of each is starting Python)."""
  config = ["--config=configs/synthetic.py", f"--workdir={tmp_path}"]
  cases = [
      (config + ["--config.no_such_field=1"], "no_such_field"),
      (["--config=configs/synthetic.py"], "workdir"),
      (config + [f"--config.model={tmp_path}/missing.npz"], "missing.npz"),
      (config + ["--coordinator_address=127.0.0.1:1234"],
       "--num_processes and --process_id go together"),
      (config + ["--mode=reconstruct", f"--input={tmp_path}/no_photos", "--output=out"],
       "no_photos does not exist"),
      (config + ["--config.coarse.batch_size=0"],
       "config.coarse.batch_size is 0; it must be a positive integer"),
      ([f"--workdir={tmp_path}"], "--mode=train needs --config"),
  ]
  processes = [subprocess.Popen([sys.executable, "main.py", *flags], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for flags, _ in cases]
  for process, (flags, message) in zip(processes, cases):
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and message in stderr, (flags, stderr[-2000:])


def test_preview_shows_named_blendshapes_of_the_ict_head():
  model = face_models.load("ict")
  shown = preview._named_expressions(model)
  assert [name for name, _, _ in shown] == ["jaw open", "smile", "pucker", "brow raise"]
  names = model.expression_names
  assert [names[k] for k in shown[1][1]] == ["mouthSmile_L", "mouthSmile_R"]
  assert all(weight == 1.0 for _, _, weight in shown)


def test_the_facerecon_command_line_becomes_main_flags():
  from facerecon import cli

  assert cli.command_line_flags(["facerecon", "reconstruct", "a.jpg", "photos/", "-o", "out",
                                 "--detector=haar"]) == [
      "facerecon", "--mode=reconstruct", "--input=a.jpg", "--input=photos/", "--output=out",
      "--detector=haar"]
  assert cli.command_line_flags(["facerecon", "evaluate", "AFLW2000/", "--output", "r"]) == [
      "facerecon", "--mode=evaluate", "--input=AFLW2000/", "--output=r"]
  assert cli.command_line_flags(["facerecon", "train", "--config=configs/real.py",
                                 "--workdir=runs/real"]) == [
      "facerecon", "--mode=train", "--config=configs/real.py", "--workdir=runs/real"]
  assert cli.command_line_flags(["facerecon", "--help"]) == ["facerecon", "--help"]
  for wrong in (["facerecon"], ["facerecon", "fly"], ["facerecon", "reconstruct", "-o"]):
    with pytest.raises(SystemExit):
      cli.command_line_flags(wrong)


def test_the_fit_flags_make_one_fit_options():
  """--mirror, --window_shift, --calibrate, --sharpen, --upright and --focus are the
  FitOptions' fields, with their defaults; a bad value is a usage error
  naming its flag."""
  from absl import app
  from absl import flags
  from absl.testing import flagsaver

  from facerecon import cli
  from facerecon import inference

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  for name, value in inference.FitOptions().as_dict().items():
    assert flags.FLAGS[name].default == value, name
  with flagsaver.flagsaver(mirror=False, window_shift=0.1, calibrate=False, sharpen=0.0,
                           upright=False, focus=1.5):
    assert cli.fit_options() == inference.FitOptions(mirror=False, window_shift=0.1,
                                                      calibrate=False, sharpen=0.0,
                                                      upright=False, focus=1.5)
  for flag, value, message in (("window_shift", 0.5, "--window_shift: window shift must be in"),
                               ("sharpen", -1.0, "--sharpen: must be in [0, 5], got -1.0"),
                               ("focus", 12.0, "--focus: must be in [0, 10], got 12.0")):
    with flagsaver.flagsaver(**{flag: value}):
      with pytest.raises(app.UsageError, match=re.escape(message)):
        cli.fit_options()


def test_compilation_cache_folder_and_one_that_cannot_be_made(tmp_path, monkeypatch, caplog):
  """The folder: the flag, else JAX's own (set: none of ours), else
  $FACERECON_COMPILATION_CACHE, else the user's cache folder; one that
  cannot be made is skipped with a warning (JAX's cache stays off)."""
  from absl import flags
  from absl.testing import flagsaver
  import jax

  from facerecon import cli

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  monkeypatch.delenv(cli.CACHE_VARIABLE, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  jax_own = jax.config.jax_compilation_cache_dir  # the tests' shared cache, if any
  try:
    with flagsaver.flagsaver(compilation_cache=None):
      jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_own"))
      assert cli.compilation_cache_folder() == ""
      jax.config.update("jax_compilation_cache_dir", None)
      assert cli.compilation_cache_folder() == str(tmp_path / "xdg" / "facerecon" / "jax")
      monkeypatch.setenv(cli.CACHE_VARIABLE, "")
      assert cli.compilation_cache_folder() == ""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with flagsaver.flagsaver(compilation_cache=str(blocker / "cache")):
      cli._use_compilation_cache()  # pylint: disable=protected-access
    assert "no compilation cache: cannot make" in caplog.text
    assert jax.config.jax_compilation_cache_dir is None
  finally:
    jax.config.update("jax_compilation_cache_dir", jax_own)


def test_the_compilation_cache_size_limit_has_its_lock_installed_with_the_package():
  """The cache folder's size limit makes JAX lock it with filelock; JAX
  keeps no cache at all without it (one warning, then every program
  compiled afresh), so a plain install must bring it, not the test
  extras."""
  try:
    requirements = metadata.requires("facerecon") or []
  except metadata.PackageNotFoundError:
    pytest.skip("facerecon is not installed as a package here")
  plain = [r for r in requirements if "extra ==" not in r]
  assert any(re.match(r"filelock\b", r) for r in plain), plain


@pytest.mark.slow
def test_the_readme_first_command_reconstructs_its_photo_and_videos_too(tmp_path):
  """Command 1's reconstruct step as the README writes it (the installed
  `facerecon` command, the shipped model), given two clips as well: the
  astronaut still, and panning 4 pixels a frame, which her landmarks follow
  with one detector run per clip."""
  with open(os.path.join(ROOT, "README.md")) as f:
    found = re.search(r"\.venv/bin/facerecon reconstruct (\S+) -o (\S+) &&", f.read())
  assert found, "the README's first command no longer reconstructs a photo"
  photo = found.group(1)
  command = os.path.join(os.path.dirname(sys.executable), "facerecon")
  if not os.path.exists(command):
    pytest.skip("the facerecon command is not installed beside this Python")
  image = cv2.imread(os.path.join(ROOT, photo))
  rng = np.random.default_rng(0)
  noisy = lambda im: np.clip(im + rng.normal(0, 3, im.shape), 0, 255).astype(np.uint8)
  os.makedirs(tmp_path / "clips")
  for name, shift in (("pan", 4), ("still", 0)):
    writer = cv2.VideoWriter(str(tmp_path / "clips" / f"{name}.mp4"),
                             cv2.VideoWriter_fourcc(*"mp4v"), 25.0, image.shape[1::-1])
    for t in range(12):
      writer.write(noisy(np.roll(image, shift * t, axis=1)))
    writer.release()
  env = {k: v for k, v in os.environ.items() if k != "FACERECON_RUN"}
  out = tmp_path / "out"
  result = subprocess.run([command, "reconstruct", photo, str(tmp_path / "clips"), "-o",
                           str(out), "--nosmooth"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert ("reconstructed 25 faces from 1 of 1 photos and 2 videos (24 frames)"
          in result.stdout), result.stdout
  stem = out / os.path.splitext(os.path.basename(photo))[0]
  for suffix in ("_face0.obj", "_face0_texture.png", "_face0_landmarks.txt", "_overlay.png",
                 "_pncc.png", "_normals.png", "_face0_displacement.png",
                 "_face0_normal_map.png"):  # the shipped run has a FineNet: detail maps
    assert os.path.exists(f"{stem}{suffix}"), suffix
  with open(out / "summary.json") as f:
    assert [v["detector_runs"] for v in json.load(f)["videos"]] == [1, 1]
  pan = np.stack([np.loadtxt(out / "pan_frames" / f"{t:06d}_face0_landmarks.txt")
                  for t in range(12)])
  np.testing.assert_allclose(pan[..., 0].mean(1) - pan[0, :, 0].mean(), 4 * np.arange(12),
                             atol=6)
  capture = cv2.VideoCapture(str(out / "still_overlay.mp4"))
  assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
