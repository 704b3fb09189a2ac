"""train_and_evaluate end to end on a tiny config: checkpoints, TensorBoard
events, evaluation against the mean-face baseline, exact resume."""

import os

import pytest

from configs import default
from facerecon import tensorboard
from facerecon import train


def _tiny_config(**overrides):
  config = default.get_config()
  config.model = "embedded:25"
  config.image_size = 32
  config.backbone = "small"
  config.backbone_kwargs.widths = (8, 16)
  config.num_iterations = 2
  config.batch_size = 8
  config.num_train_steps = 4
  config.learning_rate = 1e-3
  config.warmup_steps = 1
  config.schedule = "constant"  # independent of num_train_steps, so a longer run resumes
  config.log_every = 2
  config.eval_every = 4
  config.eval_batches = 1
  config.eval_batch_size = 8
  config.checkpoint_every = 2
  config.keep_checkpoints = 2
  config.data.statistics_samples = 64
  config.update(overrides)
  return config


@pytest.mark.slow
def test_train_and_evaluate_writes_outputs_and_resumes_exactly(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(_tiny_config(), workdir)
  for name in ("param_error", "vertex_error", "depth_error", "landmark_nme"):
    assert name in metrics and f"baseline_{name}" in metrics
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  (events_file,) = os.listdir(os.path.join(workdir, "tensorboard"))
  events = tensorboard.read_events(os.path.join(workdir, "tensorboard", events_file))
  tags = {value.tag for event in events for value in (event.values or ())}
  assert {"train/loss", "train/learning_rate", "train/images_per_second",
          "eval/vertex_error", "eval/image_true_predicted_depth"} <= tags

  # Continue to 6 steps: the same as 6 steps in one go.
  resumed = train.train_and_evaluate(_tiny_config(num_train_steps=6, eval_every=6), workdir)
  straight = train.train_and_evaluate(_tiny_config(num_train_steps=6, eval_every=6),
                                      str(tmp_path / "straight"))
  assert resumed == straight
