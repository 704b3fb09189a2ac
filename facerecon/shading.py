"""Shading: luminance, Lambertian and spherical-harmonics lighting of normal
maps, and shape from shading on depth maps (normals from depth, first-order
SH lighting solved by least squares, the terms of FineNet's unsupervised
loss; Richardson et al. 2017, section 4).

Depth maps are image-space z [..., H, W] in pixels (larger = nearer, the
renderer's convention) with a mask of the pixels on the face. Normals are in
the renderer's camera frame (x right, y up, z towards the camera): a surface
z(column, row) has the normal (-dz/dcolumn, dz/drow, 1) normalised (rows run
down, y runs up).

Everything is differentiable; the lighting is solved inside the graph
(`jnp.linalg.solve` on the 4x4 normal equations, with a small ridge), so the
loss's gradient sees how the best light changes with the depth (the original
solved it in numpy, so no gradient reached the network). Dark, saturated,
flat grey and empty images give finite values and gradients.
"""

import jax.numpy as jnp

# Rec. 601 luma weights (OpenCV's RGB -> grey): the one luminance everywhere
# (network inputs, colour jitter, the synthetic faces' colour transform, the
# shading loss).
LUMINANCE = (0.299, 0.587, 0.114)
# Pixels this bright are left out of the shading fit: clipped highlights
# say nothing about the normal.
SATURATED = 0.98
# The ridge on the lighting's normal equations, relative to their trace.
LIGHTING_RIDGE = 1e-4


def _shift(x, rows: int, cols: int):
  """x[..., r + rows, c + cols] with zeros past the border."""
  height, width = x.shape[-2:]
  pad = [(0, 0)] * (x.ndim - 2) + [(max(-rows, 0), max(rows, 0)), (max(-cols, 0), max(cols, 0))]
  padded = jnp.pad(x, pad)
  r0, c0 = max(rows, 0), max(cols, 0)
  return padded[..., r0:r0 + height, c0:c0 + width]


def _derivative(z, mask, rows: int, cols: int):
  """dz along (rows, cols): central where both neighbours are on the mask,
  one-sided where one is, 0 where none is; and whether both were."""
  ahead, behind = _shift(z, rows, cols), _shift(z, -rows, -cols)
  has_ahead = mask & _shift(mask, rows, cols)
  has_behind = mask & _shift(mask, -rows, -cols)
  both = has_ahead & has_behind
  derivative = jnp.where(both, 0.5 * (ahead - behind),
                         jnp.where(has_ahead, ahead - z, jnp.where(has_behind, z - behind, 0.0)))
  return derivative, both


def depth_gradient(depth, mask):
  """(dz/dcolumn, dz/drow, interior) of depth maps [..., H, W]: finite
  differences on the mask (see `_derivative`); `interior` marks pixels whose
  four neighbours are all on the mask."""
  mask = jnp.asarray(mask, bool)
  d_col, both_cols = _derivative(depth, mask, 0, 1)
  d_row, both_rows = _derivative(depth, mask, 1, 0)
  return d_col, d_row, both_cols & both_rows


def normals_from_gradient(d_col, d_row, mask):
  """Unit normals [..., H, W, 3] of a surface with these depth derivatives
  (0 off the mask)."""
  length = jnp.sqrt(d_col * d_col + d_row * d_row + 1.0)
  normals = jnp.stack([-d_col / length, d_row / length, 1.0 / length], axis=-1)
  return jnp.where(jnp.asarray(mask, bool)[..., None], normals, 0.0)


def depth_normals(depth, mask):
  """(normals [..., H, W, 3], interior [..., H, W]) of depth maps."""
  d_col, d_row, interior = depth_gradient(depth, mask)
  return normals_from_gradient(d_col, d_row, mask), interior


def laplacian(depth, mask):
  """(4-neighbour Laplacian [..., H, W], interior): 0 where a neighbour is
  off the mask."""
  mask = jnp.asarray(mask, bool)
  neighbours = [(1, 0), (-1, 0), (0, 1), (0, -1)]
  interior = mask
  total = -4.0 * depth
  for rows, cols in neighbours:
    interior = interior & _shift(mask, rows, cols)
    total = total + _shift(depth, rows, cols)
  return jnp.where(interior, total, 0.0), interior


def luminance(image, keepdims: bool = False):
  """Luminance [..., H, W] (or [..., H, W, 1] with `keepdims`) of RGB
  [..., H, W, 3] with the `LUMINANCE` weights (written out: a reduction over
  a trailing axis of 3 is slow on XLA's CPU)."""
  channel = (lambda c: image[..., c:c + 1]) if keepdims else (lambda c: image[..., c])
  return (LUMINANCE[0] * channel(0) + LUMINANCE[1] * channel(1)
          + LUMINANCE[2] * channel(2))


def lambertian(albedo, normals, light_direction, ambient=0.35, diffuse=0.65):
  """Shaded colour: albedo * (ambient + diffuse * max(n . l, 0)).

  `normals` and `light_direction` in the same (camera, y-up) frame; the
  light direction points from the surface towards the light.
  """
  light = jnp.asarray(light_direction, jnp.float32)
  light = light / jnp.linalg.norm(light, axis=-1, keepdims=True)
  cosine = jnp.maximum(jnp.sum(normals * light, axis=-1, keepdims=True), 0.0)
  return albedo * (ambient + diffuse * cosine)


def sh_irradiance(normals, coefficients):
  """l . [1, nx, ny, nz] per pixel: normals [..., H, W, 3], one grey light
  per image [..., 4] -> [..., H, W] (written out: fast on every backend)."""
  c = coefficients[..., None, None, :]
  return (c[..., 0] + c[..., 1] * normals[..., 0] + c[..., 2] * normals[..., 1]
          + c[..., 3] * normals[..., 2])


def sh9_basis(normals):
  """Second-order spherical-harmonics basis, unnormalised (the constants go
  into the coefficients): [1, x, y, z, xy, xz, yz, x^2 - y^2, 3z^2 - 1]
  of normals [..., 3] -> [..., 9]."""
  x, y, z = normals[..., 0:1], normals[..., 1:2], normals[..., 2:3]
  return jnp.concatenate([jnp.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y,
                          3.0 * z * z - 1.0], axis=-1)


def sh9_irradiance(normals, coefficients):
  """Coloured second-order light: normals [..., H, W, 3] and coefficients
  [..., 9, C] (one light per image, in the `sh9_basis` terms) -> irradiance
  [..., H, W, C]."""
  basis = sh9_basis(normals)                                    # [..., H, W, 9]
  return jnp.einsum("...hwk,...kc->...hwc", basis, coefficients)


def sh9_directional(direction, colour):
  """The `sh9_basis` coefficients [..., 9, C] of a distant light from unit
  `direction` [..., 3] of `colour` [..., C] seen by a Lambertian surface:
  max(n . d, 0) projected on the first nine harmonics (Ramamoorthi and
  Hanrahan 2001: bands 0, 1, 2 scaled by pi, 2 pi / 3, pi / 4)."""
  x, y, z = direction[..., 0], direction[..., 1], direction[..., 2]
  # Y_lm(d) Y_lm(n) summed within each band, written in the basis's terms:
  # band 0: 1/4; band 1: 3/4 (d . n); band 2: 15/4 (xy, xz, yz), 15/16
  # (x^2 - y^2), 5/16 (3z^2 - 1); each times the band's factor / pi.
  terms = jnp.stack([
      jnp.full_like(x, 0.25),
      0.5 * x, 0.5 * y, 0.5 * z,                       # 2/3 * 3/4
      (15.0 / 16.0) * x * y, (15.0 / 16.0) * x * z, (15.0 / 16.0) * y * z,  # 1/4 * 15/4
      (15.0 / 64.0) * (x * x - y * y), (5.0 / 64.0) * (3.0 * z * z - 1.0)], axis=-1)
  return terms[..., :, None] * colour[..., None, :]


def sh_basis(normals):
  """First-order spherical-harmonics basis [1, nx, ny, nz]: [..., 3] -> [..., 4]."""
  return jnp.concatenate([jnp.ones_like(normals[..., :1]), normals], axis=-1)


def sh_shading(albedo, normals, coefficients):
  """albedo * (l . [1, nx, ny, nz]) with 4 lighting coefficients per image
  ([..., 4], shared by the channels) or per channel ([..., C, 4]).

  albedo [..., H, W, C], normals [..., H, W, 3]; coefficients' leading dims
  are the images' batch dims.
  """
  coefficients = jnp.asarray(coefficients)
  if coefficients.ndim == albedo.ndim - 2:  # [..., 4]: one grey light
    return albedo * sh_irradiance(normals, coefficients)[..., None]
  # [..., C, 4]: a light per channel.
  channels = [sh_irradiance(normals, coefficients[..., c, :])
              for c in range(coefficients.shape[-2])]
  return albedo * jnp.stack(channels, axis=-1)



def solve_lighting(intensity, albedo, normals, weights):
  """Least-squares first-order SH light [..., 4] per image: minimises
  sum weights * (albedo * (l . [1, n]) - intensity)^2 over the pixels.

  intensity, albedo, weights [..., H, W]; normals [..., H, W, 3]. A small
  ridge (relative to the system's trace) keeps empty or black images finite:
  their light comes out 0.
  """
  basis = sh_basis(normals) * albedo[..., None]                  # [..., H, W, 4]
  weighted = basis * weights[..., None]
  gram = jnp.einsum("...hwi,...hwj->...ij", weighted, basis)
  rhs = jnp.einsum("...hwi,...hw->...i", weighted, intensity)
  trace = jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None]
  gram = gram + (LIGHTING_RIDGE * trace / 4.0 + 1e-12) * jnp.eye(4, dtype=gram.dtype)
  return jnp.linalg.solve(gram, rhs[..., None])[..., 0]


def masked_mean(values, weights):
  """Per-image mean of values over weights [..., H, W], then over images."""
  total = jnp.sum(values * weights, axis=(-2, -1))
  count = jnp.sum(weights, axis=(-2, -1))
  return jnp.mean(total / jnp.maximum(count, 1.0))


def shading_fit(depth, mask, intensity, albedo, robust_scale=None):
  """The shape-from-shading data term of depth maps against grey photos.

  depth, mask [..., H, W]; intensity (the photo's luminance, 0..1) and
  albedo (grey, 0..1) [..., H, W]. The light is solved per image on the
  interior pixels that are not saturated; returns (mean squared shading
  residual over those pixels, or its `robust_square` with `robust_scale`;
  lights [..., 4]; shaded images [..., H, W]).
  """
  normals, interior = depth_normals(depth, mask)
  weights = (interior & (intensity < SATURATED)).astype(depth.dtype)
  light = solve_lighting(intensity, albedo, normals, weights)
  shaded = albedo * sh_irradiance(normals, light)
  return masked_mean(robust_square(shaded - intensity, robust_scale), weights), light, shaded


def robust_square(residual, scale=None):
  """residual^2 where |residual| << scale, 2 scale |residual| where >> (a
  scaled Charbonnier penalty); plain squares with scale None. Pixels the
  coarse fit explains badly (a misplaced eyebrow, background inside the
  mask) then pull on the depth no harder than the detail's own residuals."""
  if scale is None:
    return residual * residual
  return 2.0 * scale * (jnp.sqrt(residual * residual + scale * scale) - scale)


def fidelity(depth, reference, mask):
  """Mean squared depth change (pixels^2) over the mask: stay near the coarse depth."""
  return masked_mean((depth - reference) ** 2, jnp.asarray(mask, depth.dtype))


def smoothness(depth, mask):
  """Mean squared Laplacian of the depth over the interior pixels."""
  values, interior = laplacian(depth, mask)
  return masked_mean(values ** 2, interior.astype(depth.dtype))


def normal_angle(normals, reference, weights):
  """Mean angle in degrees between unit normal maps [..., H, W, 3] over weights."""
  cosine = jnp.clip(jnp.sum(normals * reference, axis=-1), -1.0, 1.0)
  return masked_mean(jnp.degrees(jnp.arccos(cosine)), weights)
