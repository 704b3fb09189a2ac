// Depth rasterizer core: plain C++, no XLA, so sanitizer drivers can call it.
//
// Semantics (identical to facerecon.render's pure-JAX reference, including
// the order of floating-point operations, so triangle ids agree exactly):
// - pixel (row i, column j) is sampled at x = j, y = i;
// - a triangle covers a pixel when the pixel centre lies in its bounding box
//   widened by kBoxMargin and all three barycentrics are >= -kTolerance
//   (either winding; zero-area and non-finite triangles cover nothing);
// - the largest interpolated z wins; equal z goes to the lower triangle index;
// - uncovered pixels: id -1, barycentrics 0, depth kBackgroundDepth.
//
// The z-test packs (depth, ~index) into one uint64 per pixel, so "nearer, then
// lower index" is a single unsigned max.

#ifndef FACERECON_KERNELS_RASTERIZE_H_
#define FACERECON_KERNELS_RASTERIZE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace facerecon {

constexpr float kTolerance = 1e-6f;
// Candidate pixels lie within the triangle's bounding box widened by this
// (pixels). It bounds how far the barycentric tolerance can reach, so thin
// slivers with huge 1/area cannot cover far-away pixels.
constexpr float kBoxMargin = 1e-3f;
constexpr float kBackgroundDepth = 0.0f;

// Per-triangle constants; see facerecon.render.triangle_setup.
struct TriangleSetup {
  float x0, y0, z0, k1x, k1y, k2x, k2y, dz1, dz2;
};

// Returns false for triangles with zero or non-finite area (the reference's
// rule); other non-finite values make the per-pixel tests fail instead.
inline bool SetUpTriangle(const float* v0, const float* v1, const float* v2,
                          TriangleSetup* s) {
  const float e1x = v1[0] - v0[0], e1y = v1[1] - v0[1], e1z = v1[2] - v0[2];
  const float e2x = v2[0] - v0[0], e2y = v2[1] - v0[1], e2z = v2[2] - v0[2];
  const float area = e1x * e2y - e1y * e2x;
  if (!(area != 0.0f) || !std::isfinite(area)) return false;
  const float inv = 1.0f / area;
  *s = {v0[0], v0[1], v0[2], e2y * inv, -e2x * inv, -e1y * inv, e1x * inv,
        e1z, e2z};
  return true;
}

// Barycentrics (b0, b1, b2) and depth at pixel centre (px, py).
inline void Barycentrics(const TriangleSetup& s, float px, float py, float* b,
                         float* z) {
  const float dx = px - s.x0, dy = py - s.y0;
  const float b1 = s.k1x * dx + s.k1y * dy;
  const float b2 = s.k2x * dx + s.k2y * dy;
  b[0] = 1.0f - b1 - b2;
  b[1] = b1;
  b[2] = b2;
  *z = s.z0 + b1 * s.dz1 + b2 * s.dz2;
}

// Monotone map of finite floats to uint32; never 0, which marks background.
inline uint32_t OrderedBits(float z) {
  uint32_t bits;
  std::memcpy(&bits, &z, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Pixel-centre bounds of one vertex: every candidate centre of a triangle
// lies in [min ceil(x - m), max floor(x + m)] over its corners (ceil and floor
// are monotone, so this equals ceil(min x - m) and floor(max x + m)). Values
// are clamped to [-1, size] in float first, so huge or NaN coordinates cannot
// overflow the int conversion.
inline void VertexBounds(float x, int size, int32_t* lo, int32_t* hi) {
  const float limit = static_cast<float>(size);
  float low = x - kBoxMargin, high = x + kBoxMargin;
  low = low > -1.0f ? (low < limit ? low : limit) : -1.0f;  // NaN -> -1
  high = high > -1.0f ? (high < limit ? high : limit) : -1.0f;
  // Exact ceil/floor by truncation: std::ceil/floor are slow without SSE4.1.
  const int32_t low_trunc = static_cast<int32_t>(low);
  const int32_t high_trunc = static_cast<int32_t>(high);
  *lo = low_trunc + (low > static_cast<float>(low_trunc));
  *hi = high_trunc - (high < static_cast<float>(high_trunc));
}

struct PixelBounds {
  int32_t col_lo, col_hi, row_lo, row_hi;
};

inline uint64_t PixelKey(float z, int64_t t) {
  return (static_cast<uint64_t>(OrderedBits(z)) << 32) | ~static_cast<uint32_t>(t);
}

// One triangle whose bounding box holds exactly one pixel centre.
struct Candidate {
  int32_t triangle, col, row;  // col and row kept apart: no division later
  uint64_t key;                // filled by pass 2
};

// Scratch memory for RasterizeImage.
struct Scratch {
  uint64_t* keys;          // height * width
  PixelBounds* bounds;     // num_vertices
  Candidate* candidates;   // num_triangles
};

// Z-tests every pixel in [col_lo, col_hi] x [row_lo, row_hi] against a triangle.
inline void RasterizeBox(const TriangleSetup& s, int64_t t, int col_lo, int col_hi,
                         int row_lo, int row_hi, int width, uint64_t* keys) {
  for (int row = row_lo; row <= row_hi; ++row) {
    uint64_t* key_row = keys + static_cast<int64_t>(row) * width;
    for (int col = col_lo; col <= col_hi; ++col) {
      float b[3], z;
      Barycentrics(s, static_cast<float>(col), static_cast<float>(row), b, &z);
      if (b[0] >= -kTolerance && b[1] >= -kTolerance && b[2] >= -kTolerance &&
          std::isfinite(z)) {
        const uint64_t key = PixelKey(z, t);
        if (key > key_row[col]) key_row[col] = key;
      }
    }
  }
}

// Rasterizes one image. `vertices` [num_vertices, 3], `triangles`
// [num_triangles, 3]. Writes ids [H, W], barycentrics [H, W, 3] and depth
// [H, W]. Returns the index of the first triangle with an out-of-range vertex
// index, or -1 if all are valid (on error the outputs are background).
//
// For a face mesh at training resolution most triangles cover no pixel or
// one, and which is unpredictable; so pass 1 finds candidates with integer
// bounds only and compacts the one-pixel ones without branching, and pass 2
// tests those branch-free. The z-test is an unsigned max, so the order in
// which triangles are processed does not change the result.
inline int64_t RasterizeImage(const float* vertices, int64_t num_vertices,
                              const int32_t* triangles, int64_t num_triangles,
                              int height, int width, const Scratch& scratch,
                              int32_t* ids, float* barycentric, float* depth) {
  const int64_t pixels = static_cast<int64_t>(height) * width;
  uint64_t* keys = scratch.keys;
  PixelBounds* bounds = scratch.bounds;
  Candidate* candidates = scratch.candidates;
  std::fill(keys, keys + pixels, uint64_t{0});
  for (int64_t v = 0; v < num_vertices; ++v) {
    PixelBounds& b = bounds[v];
    VertexBounds(vertices[3 * v], width, &b.col_lo, &b.col_hi);
    VertexBounds(vertices[3 * v + 1], height, &b.row_lo, &b.row_hi);
  }
  const auto corner = [&](int32_t index) {
    return vertices + 3 * static_cast<int64_t>(index);
  };
  int64_t bad_triangle = -1;
  int64_t num_candidates = 0;
  for (int64_t t = 0; t < num_triangles; ++t) {
    const int32_t* tri = triangles + 3 * t;
    if (static_cast<uint64_t>(tri[0]) >= static_cast<uint64_t>(num_vertices) ||
        static_cast<uint64_t>(tri[1]) >= static_cast<uint64_t>(num_vertices) ||
        static_cast<uint64_t>(tri[2]) >= static_cast<uint64_t>(num_vertices)) {
      bad_triangle = t;
      break;
    }
    const PixelBounds &b0 = bounds[tri[0]], &b1 = bounds[tri[1]], &b2 = bounds[tri[2]];
    const int col_lo = std::max(std::min(b0.col_lo, std::min(b1.col_lo, b2.col_lo)), 0);
    const int col_hi = std::min(std::max(b0.col_hi, std::max(b1.col_hi, b2.col_hi)), width - 1);
    const int row_lo = std::max(std::min(b0.row_lo, std::min(b1.row_lo, b2.row_lo)), 0);
    const int row_hi = std::min(std::max(b0.row_hi, std::max(b1.row_hi, b2.row_hi)), height - 1);
    if (col_hi <= col_lo && row_hi <= row_lo) {
      candidates[num_candidates] = {static_cast<int32_t>(t), col_lo, row_lo, 0};
      num_candidates += (col_lo == col_hi) & (row_lo == row_hi);
      continue;
    }
    TriangleSetup s;
    if (col_lo <= col_hi && row_lo <= row_hi &&
        SetUpTriangle(corner(tri[0]), corner(tri[1]), corner(tri[2]), &s)) {
      RasterizeBox(s, t, col_lo, col_hi, row_lo, row_hi, width, keys);
    }
  }
  if (bad_triangle < 0) {
    // Pass 2 computes keys only; pass 3 merges them. Kept apart because the
    // two triangles of a mesh cell usually share their candidate pixel, and
    // a read-modify-write at the end of the setup chain would serialise them.
    for (int64_t c = 0; c < num_candidates; ++c) {
      Candidate& candidate = candidates[c];
      const int32_t t = candidate.triangle;
      const int32_t* tri = triangles + 3 * static_cast<int64_t>(t);
      TriangleSetup s;
      const bool usable = SetUpTriangle(corner(tri[0]), corner(tri[1]), corner(tri[2]), &s);
      float b[3], z;
      Barycentrics(s, static_cast<float>(candidate.col), static_cast<float>(candidate.row),
                   b, &z);
      const bool covered = usable & (b[0] >= -kTolerance) & (b[1] >= -kTolerance) &
                           (b[2] >= -kTolerance) & std::isfinite(z);
      candidate.key = covered ? PixelKey(z, t) : 0;
    }
    for (int64_t c = 0; c < num_candidates; ++c) {
      const Candidate& candidate = candidates[c];
      uint64_t& slot = keys[static_cast<int64_t>(candidate.row) * width + candidate.col];
      slot = candidate.key > slot ? candidate.key : slot;
    }
  }
  if (bad_triangle >= 0) std::fill(keys, keys + pixels, uint64_t{0});
  // Resolve: recompute barycentrics and depth of each pixel's winner.
  for (int row = 0; row < height; ++row) {
    for (int col = 0; col < width; ++col) {
      const int64_t p = static_cast<int64_t>(row) * width + col;
      float* b = barycentric + 3 * p;
      if (keys[p] == 0) {
        ids[p] = -1;
        b[0] = b[1] = b[2] = 0.0f;
        depth[p] = kBackgroundDepth;
        continue;
      }
      const int64_t t = static_cast<int64_t>(~static_cast<uint32_t>(keys[p]));
      const int32_t* tri = triangles + 3 * t;
      TriangleSetup s;
      SetUpTriangle(vertices + 3 * static_cast<int64_t>(tri[0]),
                    vertices + 3 * static_cast<int64_t>(tri[1]),
                    vertices + 3 * static_cast<int64_t>(tri[2]), &s);
      ids[p] = static_cast<int32_t>(t);
      Barycentrics(s, static_cast<float>(col), static_cast<float>(row), b, depth + p);
    }
  }
  return bad_triangle;
}

// Interpolates per-vertex attributes [N, C] at each pixel's visible triangle
// (ids [H, W]): out [H, W, C] = sum_k b_k a_k, 0 on the background or for an
// id / vertex index out of range.
inline void InterpolateImage(const float* vertices, const float* attributes,
                             int64_t num_vertices, int64_t channels,
                             const int32_t* triangles, int64_t num_triangles,
                             const int32_t* ids, int64_t pixels, int width, float* out) {
  for (int64_t p = 0; p < pixels; ++p) {
    float* o = out + p * channels;
    const int32_t t = ids[p];
    const int32_t* tri = triangles + 3 * static_cast<int64_t>(t);
    TriangleSetup s;
    if (t < 0 || t >= num_triangles ||
        static_cast<uint64_t>(tri[0]) >= static_cast<uint64_t>(num_vertices) ||
        static_cast<uint64_t>(tri[1]) >= static_cast<uint64_t>(num_vertices) ||
        static_cast<uint64_t>(tri[2]) >= static_cast<uint64_t>(num_vertices) ||
        !SetUpTriangle(vertices + 3 * static_cast<int64_t>(tri[0]),
                       vertices + 3 * static_cast<int64_t>(tri[1]),
                       vertices + 3 * static_cast<int64_t>(tri[2]), &s)) {
      std::fill(o, o + channels, 0.0f);
      continue;
    }
    float b[3], z;
    Barycentrics(s, static_cast<float>(p % width), static_cast<float>(p / width), b, &z);
    const float* a0 = attributes + tri[0] * channels;
    const float* a1 = attributes + tri[1] * channels;
    const float* a2 = attributes + tri[2] * channels;
    for (int64_t c = 0; c < channels; ++c) o[c] = b[0] * a0[c] + b[1] * a1[c] + b[2] * a2[c];
  }
}

// Backward of InterpolateImage for upstream gradients grad_out [H, W, C].
// Accumulates into grad_attributes [N, C] (+= g b_k) and grad_vertices [N, 3]
// (x, y only: barycentrics do not depend on z). Since p = sum_j b_j v_j,
// moving corner k by d changes b like moving p by -b_k d, so
// dL/dv_k = -b_k sum_j (dL/db_j) grad_p b_j, with dL/db_j = <g, a_j>.
inline void InterpolateImageGrad(const float* vertices, const float* attributes,
                                 int64_t num_vertices, int64_t channels,
                                 const int32_t* triangles, int64_t num_triangles,
                                 const int32_t* ids, int64_t pixels, int width,
                                 const float* grad_out, float* grad_attributes,
                                 float* grad_vertices) {
  std::fill(grad_attributes, grad_attributes + num_vertices * channels, 0.0f);
  std::fill(grad_vertices, grad_vertices + num_vertices * 3, 0.0f);
  for (int64_t p = 0; p < pixels; ++p) {
    const int32_t t = ids[p];
    const int32_t* tri = triangles + 3 * static_cast<int64_t>(t);
    TriangleSetup s;
    if (t < 0 || t >= num_triangles ||
        static_cast<uint64_t>(tri[0]) >= static_cast<uint64_t>(num_vertices) ||
        static_cast<uint64_t>(tri[1]) >= static_cast<uint64_t>(num_vertices) ||
        static_cast<uint64_t>(tri[2]) >= static_cast<uint64_t>(num_vertices) ||
        !SetUpTriangle(vertices + 3 * static_cast<int64_t>(tri[0]),
                       vertices + 3 * static_cast<int64_t>(tri[1]),
                       vertices + 3 * static_cast<int64_t>(tri[2]), &s)) {
      continue;
    }
    float b[3], z;
    Barycentrics(s, static_cast<float>(p % width), static_cast<float>(p / width), b, &z);
    const float* g = grad_out + p * channels;
    float grad_b[3] = {0.0f, 0.0f, 0.0f};
    for (int k = 0; k < 3; ++k) {
      const float* a = attributes + tri[k] * channels;
      float* ga = grad_attributes + tri[k] * channels;
      for (int64_t c = 0; c < channels; ++c) {
        grad_b[k] += g[c] * a[c];
        ga[c] += g[c] * b[k];
      }
    }
    // sum_j grad_b_j grad_p b_j, with grad_p b_0 = -(grad_p b_1 + grad_p b_2).
    const float u = grad_b[1] - grad_b[0], w = grad_b[2] - grad_b[0];
    const float gx = u * s.k1x + w * s.k2x, gy = u * s.k1y + w * s.k2y;
    for (int k = 0; k < 3; ++k) {
      float* gv = grad_vertices + 3 * static_cast<int64_t>(tri[k]);
      gv[0] -= b[k] * gx;
      gv[1] -= b[k] * gy;
    }
  }
}

}  // namespace facerecon

#endif  // FACERECON_KERNELS_RASTERIZE_H_
