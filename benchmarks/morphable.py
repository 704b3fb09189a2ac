r"""Speed of the morphable model functions on this machine.

    python benchmarks/morphable.py [--grids=65,253] [--batches=1,32]

For each embedded model resolution: build time, then ms per face for
parameters -> vertices, + vertex normals, + scaled-orthographic projection,
forward and forward+backward (gradient of a scalar of the projected
vertices w.r.t. the parameters), jitted, at each batch size. The numpy
einsum of the same vertex computation is printed as an in-run baseline.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from facerecon import camera
from facerecon import face_models
from facerecon import morphable
from facerecon import params as params_lib

_GRIDS = flags.DEFINE_list("grids", ["65", "253"], "Embedded model grid sizes.")
_BATCHES = flags.DEFINE_list("batches", ["1", "32"], "Batch sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per measurement.")


def _random_params(model, batch, rng):
  layout = model.layout
  pose = np.concatenate([rng.uniform(-0.5, 0.5, (batch, 3)), rng.uniform(50, 150, (batch, 3)),
                         np.full((batch, 1), 1e-3)], axis=1)
  return jnp.asarray(np.concatenate(
      [pose, rng.normal(size=(batch, layout.num_shape)) * model.shape_std,
       rng.normal(size=(batch, layout.num_expression)) * model.expression_std], axis=1),
      jnp.float32)


def _geometry(model, params):
  face = params_lib.split(params, model.layout)
  vertices = morphable.vertices(model, face.shape, face.expression)
  normals = morphable.vertex_normals(vertices, model.triangles)
  projected = camera.project_scaled_orthographic(vertices, face.pose, 200)
  return projected, normals


def main(argv):
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPU cores")
  rng = np.random.default_rng(0)
  repeats = _REPEATS.value
  vertices_fn = jax.jit(morphable.vertices_from_params)
  geometry_fn = jax.jit(_geometry)
  grad_fn = jax.jit(jax.grad(lambda m, p: sum(jnp.sum(x) for x in _geometry(m, p)),
                             argnums=1))
  for grid in map(int, _GRIDS.value):
    start = time.perf_counter()
    model = face_models.embedded(grid_size=grid)
    build_s = time.perf_counter() - start
    print(f"\nembedded model grid {grid}: {model.num_vertices} vertices, "
          f"{model.num_triangles} triangles, built in {build_s:.1f} s")
    device_model = jax.device_put(model)
    flat_basis = np.concatenate([model.shape_basis, model.expression_basis]).reshape(
        -1, model.num_vertices * 3)
    print(f"{'batch':>6} {'numpy verts':>12} {'verts':>8} {'+normals+proj':>14} "
          f"{'fwd+bwd':>8}   (ms per face)")
    for batch in map(int, _BATCHES.value):
      params = _random_params(model, batch, rng)
      coefficients = np.asarray(params[:, 7:])
      numpy_ms = timing.median_ms(lambda c: model.mean_shape.reshape(-1) + c @ flat_basis,
                                  coefficients, repeats=repeats) / batch
      vertices_ms = timing.median_ms(vertices_fn, device_model, params, repeats=repeats) / batch
      geometry_ms = timing.median_ms(geometry_fn, device_model, params, repeats=repeats) / batch
      grad_ms = timing.median_ms(grad_fn, device_model, params, repeats=repeats) / batch
      print(f"{batch:>6} {numpy_ms:>12.3f} {vertices_ms:>8.3f} {geometry_ms:>14.3f} "
            f"{grad_ms:>8.3f}")


if __name__ == "__main__":
  app.run(main)
