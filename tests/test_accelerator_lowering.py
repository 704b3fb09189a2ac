"""The accelerator code paths, checked on the CPU: JAX lowers for a platform
it does not have, so the Pallas kernels and whole data-parallel steps are
lowered here for TPU (Mosaic) and GPU (Triton) as they would be there.

Lowering runs every Python-side check of Pallas (block shapes, dtypes, the
ops a kernel may use, the vma typing under shard_map); it does not compile
the kernels, which needs the accelerator. Their results are tested in
interpret mode (test_render_backends.py)."""

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from facerecon.render import pallas_tpu
from facerecon.render import pallas_triton

# The custom call each accelerator backend lowers to, by (backend, platform).
KERNEL_CALLS = {("pallas", "tpu"): "tpu_custom_call",
                ("triton", "cuda"): "__gpu$xla.gpu.triton"}


def _custom_call_lines(text: str, target: str) -> list[str]:
  return [line for line in text.splitlines() if f"custom_call @{target}" in line]


def _operand_types(line: str) -> str:
  """The `(operand types) -> (result types)` signature at the end of a
  custom_call line."""
  return line[line.rindex(" : (") + 3:]


@pytest.mark.parametrize("backend,platform", sorted(KERNEL_CALLS))
def test_kernel_lowers_for_its_accelerator(backend, platform):
  """Each kernel lowers for its platform to one kernel call on float32
  vertex data, for a batch of two images with large and small triangles."""
  kernel = {"pallas": pallas_tpu, "triton": pallas_triton}[backend]
  rng = np.random.default_rng(0)
  vertices = jnp.asarray(np.stack([rng.uniform(-4, 36, (2, 50)), rng.uniform(-4, 28, (2, 50)),
                                   rng.normal(size=(2, 50))], -1), jnp.float32)
  triangles = jnp.asarray(rng.integers(0, 50, (40, 3)), jnp.int32)
  lowered = jax.jit(kernel.rasterize_ids, static_argnums=(2, 3)).trace(
      vertices, triangles, 24, 32).lower(lowering_platforms=(platform,))
  assert lowered.out_info.shape == (2, 24, 32)
  lines = _custom_call_lines(lowered.as_text(), KERNEL_CALLS[backend, platform])
  assert len(lines) == 1, f"{len(lines)} kernel calls"
  signature = _operand_types(lines[0])
  assert "f32" in signature and "bf16" not in signature, signature


_STEPS_SCRIPT = textwrap.dedent("""
    import re, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from configs import synthetic
    from facerecon import train
    from facerecon import train_fine
    from test_accelerator_lowering import KERNEL_CALLS, _custom_call_lines, _operand_types
    assert jax.device_count() == 2, jax.devices()

    config = synthetic.get_config()
    config.num_iterations = 2          # the second iteration renders its estimates
    config.batch_size = 4
    config.data.statistics_samples = 32
    training = train.build_training(config)
    host = next(training.train_data)
    batch = train.shard_batch(train._with_normalized_labels(host, training.statistics),
                              training.mesh)
    eval_batch = {{k: v for k, v in batch.items()}}
    variables = {{"params": training.state.params, "batch_stats": training.state.batch_stats}}
    for (backend, platform), target in sorted(KERNEL_CALLS.items()):
      accelerated = config.copy_and_resolve_references()
      accelerated.render_backend = backend
      accelerated.dtype = "bfloat16"
      net = train.make_coarse_net(accelerated, training.mesh)
      step = train.jit_train_step(train.make_train_step(
          train._loss_fn(net, accelerated, training.mesh), training.tx), training.mesh)
      evaluate = train._eval_fn(net, accelerated, training.mesh)
      # FineNet end to end: its gradients reach CoarseNet through the renders.
      accelerated.fine.end_to_end = True
      fine_net = train_fine.make_fine_net(accelerated)
      fine_tx, _ = train.make_optimizer(accelerated.fine)
      fine_state = train.TrainState.create(
          {{"coarse": variables["params"],
           "fine": train_fine.init_fine_params(accelerated, fine_net)}}, {{}}, fine_tx)
      coarse_fit = train_fine._coarse_fit_fn(net, accelerated, training.mesh)
      fine_step = train.jit_train_step(train.make_train_step(
          train_fine._loss_fn(fine_net, coarse_fit, accelerated, training.mesh), fine_tx),
          training.mesh)
      for name, fn, args in [
          ("train step", step, (training.state, batch, jax.random.PRNGKey(0),
                                training.context)),
          ("evaluation", evaluate, (variables, eval_batch) + tuple(training.context)),
          ("FineNet step", fine_step, (fine_state, {{"image": batch["image"]}},
                                       jax.random.PRNGKey(0),
                                       tuple(training.context) + (variables,)))]:
        text = fn.trace(*args).lower(lowering_platforms=(platform,)).as_text()
        assert "facerecon_rasterize_cpu" not in text, (name, platform)
        kernels = _custom_call_lines(text, target)
        assert kernels, (name, platform, "no kernel call")
        for line in kernels:  # the rasterizer is fed float32 vertices
          assert "bf16" not in _operand_types(line), (name, platform, _operand_types(line))
        # The networks compute in bfloat16 (float32 parameters, cast in), but
        # for FineNet's last 1x1 conv, the float32 detail added to the depth:
        # its forward and its two backward convolutions.
        convolutions = re.findall(r"stablehlo.convolution.*-> tensor<[^>]*x(\\w+)>", text)
        float32 = {{"train step": 0, "evaluation": 0, "FineNet step": 3}}[name]
        assert convolutions.count("f32") == float32, (name, convolutions)
        assert convolutions.count("bf16") == len(convolutions) - float32 > 0, (name, convolutions)
        print(name, platform, len(kernels), "kernel calls,", len(convolutions),
              "bf16 convolutions")
    print("OK")
""")


@pytest.mark.slow
def test_bfloat16_steps_lower_for_tpu_and_gpu_on_two_devices():
  """CoarseNet's bf16 train step and evaluation, and FineNet's end-to-end
  step, data-parallel over two devices, lower for TPU with the Mosaic
  kernel and for GPU with the Triton kernel: every render runs per device
  inside shard_map (Mosaic refuses to be partitioned by XLA), no CPU kernel
  is left, the rasterizer's inputs stay float32 and the convolutions are
  bfloat16 (all but FineNet's float32 output layer)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  code = _STEPS_SCRIPT.format(tests=os.path.join(ROOT, "tests"))
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and "OK" in result.stdout, (
      result.stdout[-2000:] + result.stderr[-4000:])
  assert len(re.findall("kernel calls", result.stdout)) == 6, result.stdout
