"""The accelerator code paths of whole data-parallel steps, checked on the
CPU by lowering them for TPU (with the Mosaic kernel) and GPU (with the
Triton kernel) on 4 devices; see tests/test_accelerator_lowering.py."""

import re

import jax
import pytest

from facerecon import face_models
from facerecon import networks
from facerecon.training import coarse
from facerecon.training import fine
from facerecon.training.state import jit_train_step
from facerecon.training.state import make_optimizer
from facerecon.training.state import make_train_step
from facerecon.training.state import Stage
from facerecon.training.state import TrainState
from lowering import custom_call_lines
from lowering import KERNEL_CALLS
from lowering import operand_types
import tiny


@pytest.fixture(scope="module")
def built():
  """(config, CoarseNet's training, a global batch) on the CPU devices."""
  config = tiny.config(coarse__batch_size=4)  # the second iteration renders its estimates
  training = coarse.build(config)
  return config, training, coarse.make_batch(next(training.train_data), training.statistics,
                                             training.mesh)


@pytest.mark.slow
@pytest.mark.parametrize("backend,platform", sorted(KERNEL_CALLS))
def test_bfloat16_steps_lower_for_the_accelerator(built, backend, platform):
  """CoarseNet's bf16 train step and evaluation, and FineNet's end-to-end
  step, data-parallel over 4 devices: every render runs per device inside
  shard_map (Mosaic refuses to be partitioned by XLA), no CPU kernel is
  left, the rasterizer's inputs stay float32 and the convolutions are
  bfloat16 (all but FineNet's float32 output layer)."""
  config, training, batch = built
  config = config.copy_and_resolve_references()
  variables = {"params": training.state.params, "batch_stats": training.state.batch_stats}
  config.render_backend = backend
  config.dtype = "bfloat16"
  net = networks.coarse_net(config, training.mesh)
  step = jit_train_step(make_train_step(coarse.loss_fn(net, config, training.mesh),
                                        training.tx), training.mesh)
  evaluate = coarse.evaluation_fn(net, config, training.mesh)
  # FineNet end to end: its gradients reach CoarseNet through the renders.
  config.fine.end_to_end = True
  # The paper's loss: the batch is photos only.
  config.fine.loss.update(sfs=1.0, fidelity=2.0, smoothness=1.0, depth=0.0, normal=0.0)
  fine_net = networks.fine_net(config)
  fine_tx, _ = make_optimizer(Stage.of(config, "fine"))
  fine_state = TrainState.create(
      {"coarse": variables["params"], "fine": networks.init_fine_params(config, fine_net)}, {},
      fine_tx)
  coarse_fit = fine.coarse_fit_fn(net, config, training.mesh)
  fine_step = jit_train_step(make_train_step(fine.loss_fn(fine_net, coarse_fit, config,
                                                          training.mesh), fine_tx),
                             training.mesh)
  target = KERNEL_CALLS[backend, platform]
  for name, fn, args in [
      ("train step", step, (training.state, batch, jax.random.PRNGKey(0), training.context)),
      ("evaluation", evaluate, (variables, batch) + tuple(training.context)),
      ("FineNet step", fine_step, (fine_state, {"image": batch["image"]},
                                   jax.random.PRNGKey(0),
                                   tuple(training.context)
                                   + (variables, face_models.load(config.model))))]:
    text = fn.trace(*args).lower(lowering_platforms=(platform,)).as_text()
    assert "facerecon_rasterize_cpu" not in text, name
    kernels = custom_call_lines(text, target)
    assert kernels, (name, "no kernel call")
    for line in kernels:  # the rasterizer is fed float32 vertices
      assert "bf16" not in operand_types(line), (name, operand_types(line))
    # The networks compute in bfloat16 (float32 parameters, cast in), but
    # for FineNet's last 1x1 conv, the float32 detail added to the depth:
    # its forward and its two backward convolutions.
    convolutions = re.findall(r"stablehlo.convolution.*-> tensor<[^>]*x(\w+)>", text)
    float32 = {"train step": 0, "evaluation": 0, "FineNet step": 3}[name]
    assert convolutions.count("f32") == float32, (name, convolutions)
    assert convolutions.count("bf16") == len(convolutions) - float32 > 0, (name, convolutions)
