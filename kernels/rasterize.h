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

#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#define FACERECON_SSE2 1
#endif

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

// Largest image side: per-vertex bounds are stored as int16.
constexpr int kMaxImageSide = 32766;

// Pixel-centre bounds of a vertex, packed so that the bounds of a triangle
// are an element-wise min over its three corners: [ceil(x - m), ceil(y - m),
// -floor(x + m), -floor(y + m)] (ceil and floor are monotone, so the min of
// the corners' ceil is the ceil of their min). Values are clamped to
// [-1, size] in float first, so huge or NaN coordinates cannot overflow.
struct PixelBounds {
  int16_t col_lo, row_lo, neg_col_hi, neg_row_hi;
};

// Exact ceil and floor by truncation (std::ceil/floor are slow without
// SSE4.1); `v` must already be clamped to [-1, size].
inline int32_t CeilClamped(float v) {
  const int32_t t = static_cast<int32_t>(v);
  return t + (v > static_cast<float>(t));
}
inline int32_t FloorClamped(float v) {
  const int32_t t = static_cast<int32_t>(v);
  return t - (v < static_cast<float>(t));
}
inline float ClampToImage(float v, float size) {
  return v > -1.0f ? (v < size ? v : size) : -1.0f;  // NaN -> -1
}

inline void VertexBoundsScalar(const float* v, int width, int height, PixelBounds* b) {
  const float w = static_cast<float>(width), h = static_cast<float>(height);
  b->col_lo = static_cast<int16_t>(CeilClamped(ClampToImage(v[0] - kBoxMargin, w)));
  b->row_lo = static_cast<int16_t>(CeilClamped(ClampToImage(v[1] - kBoxMargin, h)));
  b->neg_col_hi = static_cast<int16_t>(-FloorClamped(ClampToImage(v[0] + kBoxMargin, w)));
  b->neg_row_hi = static_cast<int16_t>(-FloorClamped(ClampToImage(v[1] + kBoxMargin, h)));
}

#ifdef FACERECON_SSE2
inline __m128 ClampToImage4(__m128 v, __m128 size) {
  // max(v, -1) returns -1 for NaN (SSE returns the second operand).
  return _mm_min_ps(_mm_max_ps(v, _mm_set1_ps(-1.0f)), size);
}
inline __m128i Ceil4(__m128 v) {
  const __m128i t = _mm_cvttps_epi32(v);
  return _mm_sub_epi32(t, _mm_castps_si128(_mm_cmpgt_ps(v, _mm_cvtepi32_ps(t))));
}
inline __m128i NegFloor4(__m128 v) {  // -floor(v)
  const __m128i t = _mm_cvttps_epi32(v);
  const __m128i floor = _mm_add_epi32(t, _mm_castps_si128(_mm_cmplt_ps(v, _mm_cvtepi32_ps(t))));
  return _mm_sub_epi32(_mm_setzero_si128(), floor);
}
#endif

// Bounds of all vertices ([N, 3] floats, x y z interleaved).
inline void VertexBounds(const float* vertices, int64_t num_vertices, int width, int height,
                         PixelBounds* bounds) {
  int64_t v = 0;
#ifdef FACERECON_SSE2
  const __m128 w = _mm_set1_ps(static_cast<float>(width));
  const __m128 h = _mm_set1_ps(static_cast<float>(height));
  const __m128 margin = _mm_set1_ps(kBoxMargin);
  for (; v + 4 <= num_vertices; v += 4) {
    const float* p = vertices + 3 * v;
    // [x0 y0 z0 x1] [y1 z1 x2 y2] [z2 x3 y3 z3] -> x = [x0..x3], y = [y0..y3].
    const __m128 a = _mm_loadu_ps(p), b = _mm_loadu_ps(p + 4), c = _mm_loadu_ps(p + 8);
    const __m128 x01 = _mm_shuffle_ps(a, b, _MM_SHUFFLE(0, 0, 3, 0));   // x0 x1 y1 y1
    const __m128 x23 = _mm_shuffle_ps(b, c, _MM_SHUFFLE(0, 1, 0, 2));   // x2 x2 x3 z2
    const __m128 x = _mm_shuffle_ps(x01, x23, _MM_SHUFFLE(2, 0, 1, 0));  // x0 x1 x2 x3
    const __m128 y01 = _mm_shuffle_ps(a, b, _MM_SHUFFLE(0, 0, 1, 1));   // y0 y0 y1 y1
    const __m128 y23 = _mm_shuffle_ps(b, c, _MM_SHUFFLE(2, 2, 3, 3));   // y2 y2 y3 y3
    const __m128 y = _mm_shuffle_ps(y01, y23, _MM_SHUFFLE(2, 0, 2, 0));  // y0 y1 y2 y3
    const __m128i col_lo = Ceil4(ClampToImage4(_mm_sub_ps(x, margin), w));
    const __m128i row_lo = Ceil4(ClampToImage4(_mm_sub_ps(y, margin), h));
    const __m128i neg_col_hi = NegFloor4(ClampToImage4(_mm_add_ps(x, margin), w));
    const __m128i neg_row_hi = NegFloor4(ClampToImage4(_mm_add_ps(y, margin), h));
    // Transpose four vertices' four int16 fields into 4 x 8 bytes.
    const __m128i lo = _mm_packs_epi32(col_lo, row_lo);        // cl0..3 rl0..3
    const __m128i hi = _mm_packs_epi32(neg_col_hi, neg_row_hi);
    const __m128i lo_pairs = _mm_unpacklo_epi16(lo, _mm_srli_si128(lo, 8));  // cl0 rl0 cl1 rl1 ..
    const __m128i hi_pairs = _mm_unpacklo_epi16(hi, _mm_srli_si128(hi, 8));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bounds + v),
                     _mm_unpacklo_epi32(lo_pairs, hi_pairs));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bounds + v + 2),
                     _mm_unpackhi_epi32(lo_pairs, hi_pairs));
  }
#endif
  for (; v < num_vertices; ++v) {
    VertexBoundsScalar(vertices + 3 * v, width, height, bounds + v);
  }
}

// Candidate pixel range of a triangle, clipped to the image (empty when
// lo > hi).
struct TriangleBox {
  int col_lo, col_hi, row_lo, row_hi;
};

inline TriangleBox BoxOf(const PixelBounds& a, const PixelBounds& b, const PixelBounds& c,
                         int width, int height) {
#ifdef FACERECON_SSE2
  const __m128i m = _mm_max_epi16(
      _mm_min_epi16(_mm_min_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&a)),
                                  _mm_loadl_epi64(reinterpret_cast<const __m128i*>(&b))),
                    _mm_loadl_epi64(reinterpret_cast<const __m128i*>(&c))),
      _mm_set_epi16(0, 0, 0, 0, static_cast<int16_t>(1 - height),
                    static_cast<int16_t>(1 - width), 0, 0));
  const uint64_t packed = static_cast<uint64_t>(_mm_cvtsi128_si64(m));
  return {static_cast<int16_t>(packed), -static_cast<int16_t>(packed >> 32),
          static_cast<int16_t>(packed >> 16), -static_cast<int16_t>(packed >> 48)};
#else
  return {std::max<int>(std::min({a.col_lo, b.col_lo, c.col_lo}), 0),
          std::min<int>(-std::max({a.neg_col_hi, b.neg_col_hi, c.neg_col_hi}), width - 1),
          std::max<int>(std::min({a.row_lo, b.row_lo, c.row_lo}), 0),
          std::min<int>(-std::max({a.neg_row_hi, b.neg_row_hi, c.neg_row_hi}), height - 1)};
#endif
}

inline uint64_t PixelKey(float z, int64_t t) {
  return (static_cast<uint64_t>(OrderedBits(z)) << 32) | ~static_cast<uint32_t>(t);
}

// One triangle whose bounding box holds exactly one pixel centre.
struct Candidate {
  int32_t triangle;
  int16_t col, row;  // kept apart: no division later
};

// Scratch memory for RasterizeImage.
struct Scratch {
  uint64_t* keys;            // height * width
  PixelBounds* bounds;       // num_vertices
  Candidate* candidates;     // num_triangles
  uint64_t* candidate_keys;  // num_triangles
};

// Index of the first triangle with a vertex index outside [0, num_vertices),
// or -1. The common all-valid case is one vectorisable min/max pass.
inline int64_t FirstBadTriangle(const int32_t* triangles, int64_t num_triangles,
                                int64_t num_vertices) {
  int32_t low = 0, high = 0;
  for (int64_t i = 0; i < 3 * num_triangles; ++i) {
    low = std::min(low, triangles[i]);
    high = std::max(high, triangles[i]);
  }
  if (low >= 0 && high < num_vertices) return -1;
  for (int64_t t = 0; t < num_triangles; ++t) {
    for (int k = 0; k < 3; ++k) {
      if (triangles[3 * t + k] < 0 || triangles[3 * t + k] >= num_vertices) return t;
    }
  }
  return -1;
}

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
  const int64_t bad_triangle = FirstBadTriangle(triangles, num_triangles, num_vertices);
  if (bad_triangle < 0) {
    VertexBounds(vertices, num_vertices, width, height, bounds);
    const auto corner = [&](int32_t index) {
      return vertices + 3 * static_cast<int64_t>(index);
    };
    // Pass 1: candidates from integer bounds only.
    int64_t num_candidates = 0;
    for (int64_t t = 0; t < num_triangles; ++t) {
      const int32_t* tri = triangles + 3 * t;
      const TriangleBox box =
          BoxOf(bounds[tri[0]], bounds[tri[1]], bounds[tri[2]], width, height);
      if (box.col_hi <= box.col_lo && box.row_hi <= box.row_lo) {
        candidates[num_candidates] = {static_cast<int32_t>(t), static_cast<int16_t>(box.col_lo),
                                      static_cast<int16_t>(box.row_lo)};
        num_candidates += (box.col_lo == box.col_hi) & (box.row_lo == box.row_hi);
        continue;
      }
      TriangleSetup s;
      if (box.col_lo <= box.col_hi && box.row_lo <= box.row_hi &&
          SetUpTriangle(corner(tri[0]), corner(tri[1]), corner(tri[2]), &s)) {
        RasterizeBox(s, t, box.col_lo, box.col_hi, box.row_lo, box.row_hi, width, keys);
      }
    }
    // Pass 2 computes the candidates' keys; pass 3 merges them. Kept apart
    // because the two triangles of a mesh cell usually share their candidate
    // pixel, and a read-modify-write at the end of the setup chain would
    // serialise them.
    uint64_t* candidate_keys = scratch.candidate_keys;
    for (int64_t c = 0; c < num_candidates; ++c) {
      const Candidate candidate = candidates[c];
      const int32_t* tri = triangles + 3 * static_cast<int64_t>(candidate.triangle);
      TriangleSetup s;
      const bool usable = SetUpTriangle(corner(tri[0]), corner(tri[1]), corner(tri[2]), &s);
      float b[3], z;
      Barycentrics(s, static_cast<float>(candidate.col), static_cast<float>(candidate.row),
                   b, &z);
      const bool covered = usable & (b[0] >= -kTolerance) & (b[1] >= -kTolerance) &
                           (b[2] >= -kTolerance) & std::isfinite(z);
      candidate_keys[c] = covered ? PixelKey(z, candidate.triangle) : 0;
    }
    for (int64_t c = 0; c < num_candidates; ++c) {
      uint64_t& slot = keys[static_cast<int64_t>(candidates[c].row) * width + candidates[c].col];
      slot = candidate_keys[c] > slot ? candidate_keys[c] : slot;
    }
  }
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

// The corner indices of pixel (col, row)'s visible triangle `t` and the
// pixel's barycentrics in it. False for the background, an id or vertex index
// out of range, or an unusable triangle: the pixel then contributes nothing.
inline bool PixelTriangle(int32_t t, int col, int row, const float* vertices,
                          int64_t num_vertices, const int32_t* triangles,
                          int64_t num_triangles, const int32_t** corners,
                          TriangleSetup* s, float* b) {
  if (t < 0 || t >= num_triangles) return false;
  const int32_t* tri = triangles + 3 * static_cast<int64_t>(t);
  for (int k = 0; k < 3; ++k) {
    if (static_cast<uint64_t>(tri[k]) >= static_cast<uint64_t>(num_vertices)) return false;
  }
  if (!SetUpTriangle(vertices + 3 * static_cast<int64_t>(tri[0]),
                     vertices + 3 * static_cast<int64_t>(tri[1]),
                     vertices + 3 * static_cast<int64_t>(tri[2]), s)) {
    return false;
  }
  float z;
  Barycentrics(*s, static_cast<float>(col), static_cast<float>(row), b, &z);
  *corners = tri;
  return true;
}

// Interpolates per-vertex attributes [N, C] at each pixel's visible triangle
// (ids [H, W]): out [H, W, C] = sum_k b_k a_k, 0 where PixelTriangle fails.
inline void InterpolateImage(const float* vertices, const float* attributes,
                             int64_t num_vertices, int64_t channels,
                             const int32_t* triangles, int64_t num_triangles,
                             const int32_t* ids, int height, int width, float* out) {
  for (int row = 0; row < height; ++row) {
    for (int col = 0; col < width; ++col) {
      const int64_t p = static_cast<int64_t>(row) * width + col;
      float* o = out + p * channels;
      const int32_t* tri;
      TriangleSetup s;
      float b[3];
      if (!PixelTriangle(ids[p], col, row, vertices, num_vertices, triangles, num_triangles,
                         &tri, &s, b)) {
        std::fill(o, o + channels, 0.0f);
        continue;
      }
      const float* a0 = attributes + tri[0] * channels;
      const float* a1 = attributes + tri[1] * channels;
      const float* a2 = attributes + tri[2] * channels;
      for (int64_t c = 0; c < channels; ++c) o[c] = b[0] * a0[c] + b[1] * a1[c] + b[2] * a2[c];
    }
  }
}

// Backward of InterpolateImage for upstream gradients grad_out [H, W, C].
// Writes grad_attributes [N, C] (sum of g b_k) and grad_vertices [N, 3]
// (x, y only: barycentrics do not depend on z). Since p = sum_j b_j v_j,
// moving corner k by d changes b like moving p by -b_k d, so
// dL/dv_k = -b_k sum_j (dL/db_j) grad_p b_j, with dL/db_j = <g, a_j>.
inline void InterpolateImageGrad(const float* vertices, const float* attributes,
                                 int64_t num_vertices, int64_t channels,
                                 const int32_t* triangles, int64_t num_triangles,
                                 const int32_t* ids, int height, int width,
                                 const float* grad_out, float* grad_attributes,
                                 float* grad_vertices) {
  std::fill(grad_attributes, grad_attributes + num_vertices * channels, 0.0f);
  std::fill(grad_vertices, grad_vertices + num_vertices * 3, 0.0f);
  for (int row = 0; row < height; ++row) {
    for (int col = 0; col < width; ++col) {
      const int64_t p = static_cast<int64_t>(row) * width + col;
      const int32_t* tri;
      TriangleSetup s;
      float b[3];
      if (!PixelTriangle(ids[p], col, row, vertices, num_vertices, triangles, num_triangles,
                         &tri, &s, b)) {
        continue;
      }
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
}

}  // namespace facerecon

#endif  // FACERECON_KERNELS_RASTERIZE_H_
