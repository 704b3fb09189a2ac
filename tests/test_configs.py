"""Every config file loads, and the network it describes builds (shapes
only: nothing is allocated)."""

import importlib

import jax
import jax.numpy as jnp
import pytest

from facerecon import models
from facerecon import face_models
from facerecon.data import normalization
from facerecon import train

CONFIGS = ("default", "synthetic", "resnet", "vgg", "mobile")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_network(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.batch_size > 0 and config.num_train_steps >= 0
  tx, schedule = train.make_optimizer(config)
  assert float(schedule(config.warmup_steps)) == pytest.approx(config.learning_rate)
  model = face_models.load("embedded:25")
  size = model.layout.size
  stats = normalization.DataStatistics(
      param_mean=jnp.zeros(size), param_std=jnp.ones(size),
      mean_image=jnp.zeros((config.image_size, config.image_size, 3)), count=jnp.array(1))
  net = train.make_coarse_net(config)
  shapes = jax.eval_shape(
      lambda: net.init(jax.random.PRNGKey(0),
                       jnp.zeros((1, config.image_size, config.image_size, 3)), model, stats))
  count = models.count_params(shapes["params"])
  backbone = {"resnet_v1_101": 42_500_160, "vgg_16": 14_714_688}.get(config.backbone)
  if backbone:  # the slim backbone per iteration (10 input channels), plus the heads
    assert count > config.num_iterations * backbone * 0.99
  assert len(shapes["params"]) == config.num_iterations


@pytest.mark.parametrize("name", CONFIGS + ("finenet",))
def test_config_builds_its_finenet(name):
  from facerecon import train_fine

  config = importlib.import_module(f"configs.{name}").get_config()
  stage = config.fine
  tx, schedule = train.make_optimizer(stage)
  assert float(schedule(stage.warmup_steps)) == pytest.approx(stage.learning_rate)
  size = config.image_size
  shapes = jax.eval_shape(lambda: train_fine.make_fine_net(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, size, size)),
      jnp.zeros((1, size, size), bool)))
  assert models.count_params(shapes["params"]) > 0
  train_fine.FineLossWeights(**stage.loss)
  if name == "finenet":  # stage 2 alone, on photos
    assert config.num_train_steps == 0 and stage.num_train_steps > 0
    assert stage.data.source == "tfds" and stage.best_metric == "loss"
