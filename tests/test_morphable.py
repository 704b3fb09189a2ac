import dataclasses
import os

import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial

from facerecon import camera
from facerecon import embedded_face
from facerecon import face_models
from facerecon import morphable
from facerecon import params as params_lib


def _mirror_index(vertices):
  """For each vertex, the index of the vertex at (-x, y, z)."""
  mirrored = vertices * np.array([-1.0, 1.0, 1.0])
  d = np.sum((vertices[None, :, :] - mirrored[:, None, :]) ** 2, axis=-1)
  return np.argmin(d, axis=1), np.sqrt(np.min(d, axis=1))


# --- The embedded model -----------------------------------------------------


def test_default_embedded_model_structure(default_model):
  m = default_model
  assert 3000 <= m.num_vertices <= 5000 and 6000 <= m.num_triangles <= 9000
  assert m.shape_basis.shape == (199, m.num_vertices, 3)
  assert m.expression_basis.shape == (29, m.num_vertices, 3)
  assert m.texture_basis.shape == (199, m.num_vertices, 3)
  assert m.layout == params_lib.BFM_LAYOUT
  for name in ("mean_shape", "shape_basis", "expression_basis", "texture_mean", "pncc"):
    assert getattr(m, name).dtype == np.float32, name
  assert m.triangles.dtype == np.int32 and m.landmark_indices.dtype == np.int32
  # Every vertex is used by a triangle (no stray points).
  assert np.array_equal(np.unique(m.triangles), np.arange(m.num_vertices))


def test_embedded_grid_sets_resolution():
  # The BFM-scale grid's counts, from the grid alone (building the full
  # model takes ~15 s; benchmarks do that).
  u, _, triangles = embedded_face._grid(embedded_face.BFM_SCALE_GRID)
  assert abs(len(u) - 53215) / 53215 < 0.02
  assert abs(len(triangles) - 105840) / 105840 < 0.02
  with pytest.raises(ValueError, match="grid_size"):
    embedded_face._grid(4)


def test_embedded_model_is_deterministic(small_model):
  embedded_face.build.cache_clear()
  again = face_models.embedded(grid_size=25, num_shape=12, num_expression=6,
                                   num_texture=10)
  assert again is not small_model
  for field in dataclasses.fields(morphable.MorphableModel):
    np.testing.assert_array_equal(getattr(again, field.name),
                                  getattr(small_model, field.name))


def test_mean_face_is_mirror_symmetric(small_model):
  mean = np.asarray(small_model.mean_shape, np.float64)
  _, distance = _mirror_index(mean)
  assert distance.max() < 1e-3 * np.ptp(mean[:, 0])


def test_face_anatomy(default_model):
  m = default_model
  mean = np.asarray(m.mean_shape) / embedded_face.UNITS_PER_MM
  lm = mean[np.asarray(m.landmark_indices)]
  # Overall size of an adult face (mm): ~150 wide, ~185 tall.
  width, height, _ = np.ptp(mean, axis=0)
  assert 130 < width < 170 and 160 < height < 210
  # The nose tip (30) sticks out furthest of all landmarks and of the face.
  assert lm[30, 2] == lm[:, 2].max()
  assert mean[:, 2].max() - lm[30, 2] < 1.0
  # Top to bottom: brows, eyes, nose tip, mouth, chin.
  brows, eyes = lm[17:27, 1].mean(), lm[36:48, 1].mean()
  mouth, chin = lm[48:68, 1].mean(), lm[8, 1]
  assert brows > eyes > lm[30, 1] > mouth > chin
  # The subject's right (iBUG 0-16 start, right eye 36-41) is at -x.
  assert lm[0, 0] < 0 < lm[16, 0]
  assert lm[36:42, 0].mean() < 0 < lm[42:48, 0].mean()
  assert lm[48, 0] < lm[54, 0]
  # Left/right landmark pairs mirror each other.
  pairs = [(0, 16), (4, 12), (17, 26), (36, 45), (39, 42), (31, 35), (48, 54)]
  for a, b in pairs:
    np.testing.assert_allclose(lm[a] * [-1, 1, 1], lm[b], atol=4.0)
  # The chin landmark is the lowest point of the jaw contour.
  assert lm[8, 1] == lm[0:17, 1].min()
  # Eye sockets are deeper than the brow ridge and the cheekbones.
  assert lm[37, 2] < lm[19, 2]


def test_bases_orthonormal_and_std_decreasing(default_model):
  m = default_model
  for basis, std in ((m.shape_basis, m.shape_std), (m.texture_basis, m.texture_std)):
    flat = np.asarray(basis, np.float64).reshape(basis.shape[0], -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(basis.shape[0]), atol=1e-4)
    assert np.all(np.diff(std) < 0) and std.min() > 0
  assert np.all(np.diff(m.expression_std) <= 0)
  np.testing.assert_allclose(m.expression_std[[0, -1]], [1.5, 0.5])


def test_identity_changes_are_plausible(default_model):
  """One std of the first shape mode moves vertices by millimetres, not metres."""
  m = default_model
  shape = np.zeros(199, np.float32)
  shape[0] = m.shape_std[0]
  moved = np.asarray(morphable.vertices(m, shape, np.zeros(29, np.float32)))
  rms_mm = np.sqrt(np.mean((moved - m.mean_shape) ** 2)) / embedded_face.UNITS_PER_MM
  assert 0.5 < rms_mm < 10.0


def test_expressions_are_local(default_model):
  """Jaw opening moves the chin down and leaves the brows alone."""
  m = default_model
  expression = np.zeros(29, np.float32)
  expression[0] = 2.0
  moved = np.asarray(morphable.vertices(m, np.zeros(199, np.float32), expression))
  delta = (moved - m.mean_shape) / embedded_face.UNITS_PER_MM
  lm = np.asarray(m.landmark_indices)
  assert delta[lm[8], 1] < -8.0            # chin down by about 14 mm
  assert np.abs(delta[lm[17:27]]).max() < 0.1  # brows still


def test_texture_is_skin_with_darker_features(default_model):
  m = default_model
  colours = np.asarray(m.texture_mean)
  assert colours.min() >= 0 and colours.max() <= 255
  lm = np.asarray(m.landmark_indices)
  cheek = colours[lm[2]]
  assert cheek[0] > cheek[1] > cheek[2]            # skin: R > G > B
  assert colours[lm[57]][1] < cheek[1] - 30        # lips are redder/darker
  assert colours[lm[19]].mean() < cheek.mean() - 30  # brows are dark


def test_pncc_normalised(default_model):
  pncc = np.asarray(default_model.pncc)
  np.testing.assert_allclose(pncc.min(0), 0.0, atol=1e-6)
  np.testing.assert_allclose(pncc.max(0), 1.0, atol=1e-6)


# --- Functions ----------------------------------------------------------------


def test_vertices_are_linear_in_coefficients(small_model):
  m = small_model
  shape = np.zeros(12, np.float32)
  shape[3] = 2.0
  expression = np.zeros(6, np.float32)
  expression[1] = -1.5
  got = np.asarray(morphable.vertices(m, shape, expression))
  want = m.mean_shape + 2.0 * m.shape_basis[3] - 1.5 * m.expression_basis[1]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-2)


def _random_params(model, count: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.concatenate([rng.normal(size=(count, 7)),
                         rng.normal(size=(count, 12)) * model.shape_std,
                         rng.normal(size=(count, 6))], axis=1).astype(np.float32)


def test_vertices_jit_vmap_and_batches(small_model):
  m = small_model
  params = _random_params(m, 5, seed=0)
  batched = jax.jit(morphable.vertices_from_params)(m, params)
  mapped = jax.vmap(morphable.vertices_from_params, in_axes=(None, 0))(m, params)
  single = np.stack([morphable.vertices_from_params(m, p) for p in params])
  assert batched.shape == (5, m.num_vertices, 3)
  np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-5, atol=1e-1)
  np.testing.assert_allclose(np.asarray(mapped), single, rtol=1e-5, atol=1e-1)


def test_landmarks_from_params_are_the_landmark_vertices(small_model):
  m = small_model
  params = _random_params(m, 3, seed=1)
  got = jax.jit(morphable.landmarks_from_params)(m, params)
  want = morphable.landmarks(m, morphable.vertices_from_params(m, params))
  assert got.shape == (3, 68, 3)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-2)


def test_vertex_colours(small_model):
  m = small_model
  texture = np.zeros(10, np.float32)
  texture[0] = 1.0
  np.testing.assert_allclose(np.asarray(morphable.vertex_colors(m, texture)),
                             m.texture_mean + m.texture_basis[0], rtol=1e-6, atol=1e-4)


def test_vertex_normals_of_a_flat_square_and_a_sphere():
  square = jnp.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [5, 5, 5]], jnp.float32)
  triangles = jnp.array([[0, 1, 2], [0, 2, 3]], jnp.int32)
  normals = np.asarray(morphable.vertex_normals(square, triangles))
  np.testing.assert_allclose(normals[:4], [[0, 0, 1]] * 4, atol=1e-6)
  np.testing.assert_array_equal(normals[4], [0, 0, 0])  # unused vertex

  # An octahedron: vertex normals point straight out.
  octa = jnp.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                   jnp.float32)
  faces = jnp.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                     [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]], jnp.int32)
  np.testing.assert_allclose(np.asarray(morphable.vertex_normals(octa, faces)), octa, atol=1e-6)


def test_face_normals_point_out_of_the_face(default_model):
  m = default_model
  normals = np.asarray(morphable.vertex_normals(m.mean_shape, m.triangles))
  np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
  nose_tip = m.landmark_indices[30]
  assert normals[nose_tip, 2] > 0.8
  front = m.mean_shape[:, 2] > 0.5 * m.mean_shape[:, 2].max()
  assert np.mean(normals[front, 2] > 0) > 0.95


def test_vertex_normals_gradient_matches_finite_differences():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    vertices = jnp.asarray(rng.normal(size=(6, 3)))
    triangles = jnp.array([[0, 1, 2], [0, 2, 3], [3, 4, 5], [1, 4, 2]], jnp.int32)
    weights = jnp.asarray(rng.normal(size=(6, 3)))
    loss = lambda v: jnp.sum(weights * morphable.vertex_normals(v, triangles))
    test_util.check_grads(loss, (vertices,), order=1, modes=("rev",))


def test_shape_gradient_is_the_basis(small_model):
  m = small_model
  loss = lambda s: jnp.sum(morphable.vertices(m, s, jnp.zeros(6))[:, 2])
  grad = np.asarray(jax.grad(loss)(jnp.zeros(12)))
  np.testing.assert_allclose(grad, m.shape_basis[:, :, 2].sum(axis=1), rtol=1e-4, atol=1e-4)


# --- Model files ----------------------------------------------------------------


def test_save_load_round_trip(small_model, tmp_path):
  path = tmp_path / "model.npz"
  morphable.save_model(small_model, path)
  assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind
  loaded = morphable.load_model(path)
  for field in dataclasses.fields(morphable.MorphableModel):
    np.testing.assert_array_equal(getattr(loaded, field.name),
                                  getattr(small_model, field.name))
  assert face_models.load(str(path)).num_vertices == small_model.num_vertices


def _arrays(model):
  """The required arrays of a model file (format 2's optional fields left out)."""
  return {name: np.asarray(getattr(model, name)) for name in morphable.FIELDS}


def test_load_errors_name_file_and_field(small_model, tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.npz"):
    morphable.load_model(tmp_path / "nowhere.npz")

  corrupt = tmp_path / "corrupt.npz"
  corrupt.write_bytes(b"PK\x03\x04 this is not a zip file")
  with pytest.raises(ValueError, match="corrupt.npz"):
    morphable.load_model(corrupt)

  arrays = _arrays(small_model)
  missing = tmp_path / "missing.npz"
  np.savez(missing, format_version=morphable.FORMAT_VERSION,
           **{k: v for k, v in arrays.items() if k != "pncc"})
  with pytest.raises(KeyError, match=r"missing\.npz.*pncc"):
    morphable.load_model(missing)

  bad_shape = tmp_path / "bad_shape.npz"
  np.savez(bad_shape, format_version=morphable.FORMAT_VERSION,
           **{**arrays, "texture_mean": arrays["texture_mean"][:-1]})
  with pytest.raises(ValueError, match=r"bad_shape\.npz.*'texture_mean'"):
    morphable.load_model(bad_shape)

  bad_index = tmp_path / "bad_index.npz"
  triangles = arrays["triangles"].copy()
  triangles[0, 0] = small_model.num_vertices
  np.savez(bad_index, format_version=morphable.FORMAT_VERSION,
           **{**arrays, "triangles": triangles})
  with pytest.raises(ValueError, match=r"bad_index\.npz.*'triangles'.*outside"):
    morphable.load_model(bad_index)

  nan = tmp_path / "nan.npz"
  mean = arrays["mean_shape"].copy()
  mean[3, 1] = np.nan
  np.savez(nan, format_version=morphable.FORMAT_VERSION, **{**arrays, "mean_shape": mean})
  with pytest.raises(ValueError, match=r"nan\.npz.*'mean_shape'.*NaN"):
    morphable.load_model(nan)

  old = tmp_path / "old.npz"
  np.savez(old, format_version=99, **arrays)
  with pytest.raises(ValueError, match="format version"):
    morphable.load_model(old)


def test_load_source_strings(small_model):
  assert face_models.load("embedded:25").num_vertices == face_models.embedded(25).num_vertices
  with pytest.raises(ValueError, match="embedded:<grid size>"):
    face_models.load("embedded:big")


def _with_parts(model, surface_vertices, surface_triangles, **changes):
  """The model split into a surface part and a rendered part."""
  parts = (morphable.Part("face", morphable.SURFACE, (0, surface_vertices),
                          (0, surface_triangles)),
           morphable.Part("inside", morphable.RENDERED, (surface_vertices, model.num_vertices),
                          (surface_triangles, model.num_triangles)))
  return dataclasses.replace(model, parts=parts, **changes)


def test_parts_surface_and_format_2_fields(small_model, tmp_path):
  triangles = np.asarray(small_model.triangles)
  # The triangles that use only vertices below 300 first, then the rest.
  inside = triangles.max(axis=1) < 300
  model = dataclasses.replace(small_model, triangles=np.concatenate(
      [triangles[inside], triangles[~inside]]).astype(np.int32))
  landmarks = np.asarray(model.landmark_indices)
  model = _with_parts(model, 300, int(inside.sum()),
                      landmark_indices=np.minimum(landmarks, 299).astype(np.int32),
                      uv=np.asarray(model.pncc[:, :2]),
                      expression_names=tuple(f"e{k}" for k in range(6)),
                      expression_kind=morphable.BLENDSHAPE)
  morphable.validate(model)
  surface = morphable.surface(model)
  assert (surface.num_vertices, surface.num_triangles) == (300, int(inside.sum()))
  assert surface.layout == model.layout
  assert [p.name for p in surface.parts] == ["face"]
  np.testing.assert_array_equal(surface.mean_shape, model.mean_shape[:300])
  assert morphable.surface(small_model) is small_model  # no parts: all surface
  np.testing.assert_array_equal(morphable.part_index(model)[299:301], [0, 1])

  path = tmp_path / "parts.npz"
  morphable.save_model(model, path)
  loaded = morphable.load_model(path)
  assert (loaded.parts, loaded.expression_names, loaded.expression_kind) == (
      model.parts, model.expression_names, model.expression_kind)
  assert face_models.fingerprint(loaded) == face_models.fingerprint(model)
  assert face_models.fingerprint(model) != face_models.fingerprint(small_model)

  # A model without parts keeps its digest through a file (run directories
  # recorded before format 2 stay valid).
  morphable.save_model(small_model, tmp_path / "plain.npz")
  plain = morphable.load_model(tmp_path / "plain.npz")
  assert plain.parts == () and plain.uv is None
  assert face_models.fingerprint(plain) == face_models.fingerprint(small_model)
  # A format 1 file loads with the defaults.
  np.savez(tmp_path / "v1.npz", format_version=np.int32(1), **_arrays(small_model))
  assert face_models.fingerprint(morphable.load_model(tmp_path / "v1.npz")) == \
      face_models.fingerprint(small_model)


def test_bad_parts_are_named(small_model):
  n, t = small_model.num_vertices, small_model.num_triangles
  gap = dataclasses.replace(small_model, parts=(
      morphable.Part("a", morphable.SURFACE, (0, 10), (0, t)),
      morphable.Part("b", morphable.RENDERED, (11, n), (t, t))))
  with pytest.raises(ValueError, match="part 'b'.*tile"):
    morphable.validate(gap)
  order = dataclasses.replace(small_model, parts=(
      morphable.Part("a", morphable.RENDERED, (0, 10), (0, 0)),
      morphable.Part("b", morphable.SURFACE, (10, n), (0, t))))
  with pytest.raises(ValueError, match="surface part 'b' comes after"):
    morphable.validate(order)
  role = dataclasses.replace(small_model, parts=(
      morphable.Part("a", "hidden", (0, n), (0, t)),))
  with pytest.raises(ValueError, match="role 'hidden'"):
    morphable.validate(role)
  short = dataclasses.replace(small_model, parts=(
      morphable.Part("a", morphable.SURFACE, (0, n - 1), (0, t)),))
  with pytest.raises(ValueError, match="parts cover"):
    morphable.validate(short)
  with pytest.raises(ValueError, match="expression names"):
    morphable.validate(dataclasses.replace(small_model, expression_names=("x",)))
  with pytest.raises(ValueError, match="expression kind"):
    morphable.validate(dataclasses.replace(small_model, expression_kind="sparse"))
  with pytest.raises(ValueError, match="'uv'"):
    morphable.validate(dataclasses.replace(small_model, uv=np.zeros((n, 3), np.float32)))


def test_mirror_params_give_the_mirror_image_of_the_face():
  """On the ICT head, the mirrored parameters project each vertex's mirror
  partner where the vertex's image, mirrored in the image's width, is;
  mirroring twice is the identity; a model that is not symmetric (shifted,
  or the embedded model's expressions) has no mirror maps."""
  model = morphable.surface(face_models.load("ict"))
  maps = morphable.mirror_maps(model)
  assert maps is not None
  layout, width = model.layout, 200
  rng = np.random.default_rng(0)
  params = np.zeros((3, layout.size), np.float32)
  params[:, :3] = rng.uniform(-0.5, 0.5, (3, 3))
  vertices = np.asarray(morphable.vertices(model, np.zeros(layout.num_shape),
                                           np.zeros(layout.num_expression)))
  params[:, 6] = 120.0 / np.ptp(vertices[:, 0])  # the face 120 pixels wide
  params[:, 3:6] = [90.0, 110.0, 0.0]
  params[:, layout.shape] = rng.normal(size=(3, layout.num_shape)) * np.asarray(model.shape_std)
  params[:, layout.expression] = (rng.uniform(size=(3, layout.num_expression))
                                  * np.asarray(model.expression_std))
  mirrored = np.asarray(morphable.mirror_params(params, layout, maps, width))

  def image_points(p):
    return np.asarray(camera.project_scaled_orthographic(
        morphable.vertices_from_params(model, p), p[..., :7], width))

  partner = scipy.spatial.cKDTree(vertices).query(vertices * [-1.0, 1.0, 1.0])[1]
  expected = image_points(params)[:, partner] * [-1.0, 1.0, 1.0] + [width - 1.0, 0.0, 0.0]
  error = np.abs(image_points(mirrored) - expected)
  assert error.mean() < 0.1 and error.max() < 1.5  # pixels, of a 120-pixel face
  np.testing.assert_allclose(mirrored[:, :3], params[:, :3] * [1, -1, -1], atol=1e-6)
  twice = np.asarray(morphable.mirror_params(mirrored, layout, maps, width))
  assert np.abs(image_points(twice) - image_points(params)).max() < 1.5
  lopsided = dataclasses.replace(
      model, mean_shape=np.asarray(model.mean_shape) + [0.05 * np.ptp(vertices[:, 0]), 0, 0])
  assert morphable.mirror_maps(lopsided) is None
  assert morphable.mirror_maps(face_models.load("embedded:25")) is None
