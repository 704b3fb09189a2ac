"""The accelerator kernels, checked on the CPU: JAX lowers for a platform it
does not have, so the Pallas kernels are lowered here for TPU (Mosaic) and
GPU (Triton) as they would be there (whole data-parallel steps:
tests/multidevice/test_lowering.py).

Lowering runs every Python-side check of Pallas (block shapes, dtypes, the
ops a kernel may use, the vma typing under shard_map); it does not compile
the kernels, which needs the accelerator. Their results are tested in
interpret mode (test_render_backends.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facerecon.render import pallas_tpu
from facerecon.render import pallas_triton
from lowering import custom_call_lines
from lowering import KERNEL_CALLS
from lowering import operand_types


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
  lines = custom_call_lines(lowered.as_text(), KERNEL_CALLS[backend, platform])
  assert len(lines) == 1, f"{len(lines)} kernel calls"
  signature = operand_types(lines[0])
  assert "f32" in signature and "bf16" not in signature, signature
