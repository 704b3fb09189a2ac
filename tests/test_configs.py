"""Every config file loads, passes the checks, and the networks it describes
build (shapes only: nothing is allocated); bad values are refused naming
their field."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import pytest

from configs import default
from facerecon import config_checks
from facerecon import face_models
from facerecon import losses
from facerecon import models
from facerecon import networks
from facerecon.data import normalization
from facerecon.data import synthetic
from facerecon.training.state import make_optimizer
from facerecon.training.state import Stage

CONFIGS = ("default", "synthetic", "resnet", "vgg", "mobile", "finenet")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_networks(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  config_checks.check(config)
  for stage in ("coarse", "fine"):
    tx, schedule = make_optimizer(Stage.of(config, stage))
    assert float(schedule(config[stage].warmup_steps)) == pytest.approx(
        config[stage].learning_rate)
  losses.LossWeights(**config.coarse.loss)
  losses.FineLossWeights(**config.fine.loss)

  model = face_models.load("embedded:25")
  size = model.layout.size
  stats = normalization.DataStatistics(
      param_mean=jnp.zeros(size), param_std=jnp.ones(size),
      mean_image=jnp.zeros((config.image_size, config.image_size, 3)), count=jnp.array(1))
  net = networks.coarse_net(config)
  shapes = jax.eval_shape(
      lambda: net.init(jax.random.PRNGKey(0),
                       jnp.zeros((1, config.image_size, config.image_size, 3)), model, stats))
  count = models.count_params(shapes["params"])
  backbone = {"resnet_v1_101": 42_500_160, "vgg_16": 14_714_688}.get(config.coarse.backbone)
  if backbone:  # the slim backbone per iteration (10 input channels), plus the heads
    assert count > config.coarse.num_iterations * backbone * 0.99
  assert len(shapes["params"]) == config.coarse.num_iterations

  fine_shapes = jax.eval_shape(lambda: networks.init_fine_params(config,
                                                                 networks.fine_net(config)))
  assert models.count_params(fine_shapes) > 0
  if name == "finenet":  # stage 2 alone, on photos
    assert config.coarse.num_train_steps == 0 and config.fine.num_train_steps > 0
    assert config.fine.data.source == "tfds" and config.fine.best_metric == "loss"


def test_the_default_prior_is_the_generators():
  """configs/default.py writes the FacePrior's defaults out as literals."""
  assert synthetic.FacePrior(**default.get_config().synthetic.prior) == synthetic.FacePrior()


def test_both_stages_have_the_same_schedule_fields():
  config = default.get_config()
  shared = set(config.coarse) & set(config.fine)
  assert {"seed", "num_train_steps", "batch_size", "learning_rate", "schedule",
          "warmup_steps", "grad_clip_norm", "weight_decay", "adam_b1", "adam_b2",
          "max_bad_steps", "pretrained", "log_every", "eval_every", "eval_batches",
          "eval_batch_size", "eval_pictures", "best_metric", "checkpoint_every",
          "keep_checkpoints", "loss", "data"} <= shared


@pytest.mark.parametrize("field,value,message", [
    ("coarse.batch_size", 0, "config.coarse.batch_size is 0; it must be a positive integer"),
    ("coarse.batch_size", -8, "config.coarse.batch_size is -8"),
    ("fine.eval_batch_size", 0, "config.fine.eval_batch_size is 0"),
    ("coarse.learning_rate", float("nan"), "config.coarse.learning_rate is nan"),
    ("fine.adam_b2", 1.0, "config.fine.adam_b2 is 1.0; it must be a number in"),
    ("coarse.schedule", "linear", "config.coarse.schedule is 'linear'; it must be one of"),
    ("coarse.backbone", "resnet_v2", "config.coarse.backbone is 'resnet_v2'"),
    ("coarse.num_iterations", 0, "config.coarse.num_iterations is 0"),
    ("coarse.loss.vertex", -1.0, "config.coarse.loss.vertex is -1.0"),
    ("fine.widths", (8, 0, 8), "config.fine.widths is"),
    ("fine.data.source", "web", "config.fine.data.source is 'web'"),
    ("coarse.data.source", "folder", "config.coarse.data.source is 'folder'"),
    ("image_size", 0, "config.image_size is 0"),
    ("dtype", "float8", "config.dtype is 'float8'"),
    ("render_backend", "opengl", "config.render_backend is 'opengl'"),
    ("synthetic.statistics_samples", 0, "config.synthetic.statistics_samples is 0"),
])
def test_bad_values_are_refused_naming_the_field(field, value, message):
  config = default.get_config()
  *parents, leaf = field.split(".")
  node = config
  for key in parents:
    node = node[key]
  node[leaf] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_checks.check(config)


def test_a_run_starts_from_imagenet_weights_or_another_run_not_both():
  config = default.get_config()
  config.coarse.init_from = "runs/real"
  config_checks.check(config)
  config.coarse.pretrained = "resnet_v1_101.npz"
  with pytest.raises(ValueError, match="config.coarse.init_from is 'runs/real'; it must be "
                     "unset when coarse.pretrained is set"):
    config_checks.check(config)


def test_an_unknown_prior_field_is_refused():
  config = default.get_config()
  config.synthetic.prior.unlock()
  config.synthetic.prior.yaw_range = (0.0, 1.0)
  with pytest.raises(ValueError, match="config.synthetic.prior: unknown field.* yaw_range"):
    config_checks.check(config)
  assert {f.name for f in dataclasses.fields(synthetic.FacePrior)} == set(
      default.get_config().synthetic.prior)
