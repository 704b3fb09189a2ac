// Depth rasterizer core: plain C++, no XLA, so sanitizer drivers can call it.
//
// Semantics (those of facerecon.render's pure-JAX reference, with the same
// floating-point operations in the same order; but this file is built without
// FMA contraction and XLA contracts, so triangle ids can differ from the
// reference's at pixels within float rounding of an edge or of a depth tie):
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
#include <limits>
#include <memory>

#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#define FACERECON_SSE2 1
#endif
// AVX2 passes, compiled for AVX2 whatever the build flags and chosen at run
// time (HaveAvx2), so the library still loads on older x86-64 CPUs.
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FACERECON_AVX2 1
#define FACERECON_AVX2_FN __attribute__((target("avx2")))
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
// -0 is first made +0 (z + 0 is +0 for either zero, z otherwise), so equal
// depths tie and go to the lower index, as in the other backends.
inline uint32_t OrderedBits(float z) {
  z += 0.0f;
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

// Scratch memory for RasterizeImage: per-pixel keys, per-vertex bounds and
// the candidate lists in struct-of-arrays form (padded by kLanes, so vector
// code may store a full vector at the end of a list).
constexpr int64_t kLanes = 8;

struct Scratch {
  uint64_t* keys;                // height * width
  PixelBounds* bounds;           // num_vertices
  int32_t* candidate_triangle;   // num_triangles + kLanes
  int32_t* candidate_pixel;      // num_triangles + kLanes: col | row << 16
  int32_t* candidate_corner[3];  // num_triangles + kLanes each
  uint64_t* candidate_keys;      // num_triangles + kLanes
  int32_t* large_triangles;      // num_triangles + kLanes
};

// Owns a Scratch for images up to the largest size asked so far; it grows and
// is never cleared (RasterizeImage initialises what it reads).
class ScratchArena {
 public:
  Scratch Get(int64_t pixels, int64_t num_vertices, int64_t num_triangles) {
    const int64_t list = num_triangles + kLanes;
    Grow(&keys_, &keys_size_, std::max<int64_t>(pixels, 1));
    Grow(&bounds_, &bounds_size_, std::max<int64_t>(num_vertices, 1));
    Grow(&lists_, &lists_size_, 6 * list);
    Grow(&candidate_keys_, &candidate_keys_size_, list);
    int32_t* l = lists_.get();
    return {keys_.get(), bounds_.get(), l, l + list, {l + 2 * list, l + 3 * list, l + 4 * list},
            candidate_keys_.get(), l + 5 * list};
  }

 private:
  template <typename T>
  static void Grow(std::unique_ptr<T[]>* buffer, int64_t* size, int64_t n) {
    if (n > *size) {
      buffer->reset(new T[n]);
      *size = n;
    }
  }
  std::unique_ptr<uint64_t[]> keys_, candidate_keys_;
  std::unique_ptr<PixelBounds[]> bounds_;
  std::unique_ptr<int32_t[]> lists_;
  int64_t keys_size_ = 0, bounds_size_ = 0, lists_size_ = 0, candidate_keys_size_ = 0;
};

// The largest vertex index as unsigned (negative indices are huge). Always
// inlined, so the AVX2 caller below gets it vectorised for AVX2.
__attribute__((always_inline)) inline uint32_t MaxIndex(const int32_t* triangles,
                                                        int64_t num_triangles) {
  uint32_t high = 0;
  for (int64_t i = 0; i < 3 * num_triangles; ++i) {
    high = std::max(high, static_cast<uint32_t>(triangles[i]));
  }
  return high;
}

// Index of the first triangle with a vertex index outside [0, num_vertices),
// or -1. The common all-valid case is one unsigned max, which vectorises.
inline int64_t FirstBadTriangle(const int32_t* triangles, int64_t num_triangles,
                                int64_t num_vertices) {
  if (num_triangles == 0 ||
      static_cast<int64_t>(MaxIndex(triangles, num_triangles)) < num_vertices) {
    return -1;
  }
  for (int64_t t = 0; t < num_triangles; ++t) {
    for (int k = 0; k < 3; ++k) {
      if (static_cast<uint32_t>(triangles[3 * t + k]) >= static_cast<uint64_t>(num_vertices)) {
        return t;
      }
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

inline const float* Corner(const float* vertices, int32_t index) {
  return vertices + 3 * static_cast<int64_t>(index);
}

// The passes of RasterizeImage. Each has a scalar version and, on x86-64, an
// AVX2 version doing eight triangles, candidates or pixels at a time with the
// same floating-point operations in the same order (so both give identical
// output; the sanitizer driver checks this).
//
// Pass 1 (FindCandidates): each triangle's candidate box from the integer
// vertex bounds alone. A box holding exactly one pixel centre (the common
// case for a face mesh at training resolution) makes the triangle a
// candidate; a larger one puts it on the large list. Returns the candidates.
inline int64_t FindCandidatesScalar(const int32_t* triangles, int64_t begin, int64_t end,
                                    int width, int height, const Scratch& s,
                                    int64_t num_candidates, int64_t* num_large) {
  for (int64_t t = begin; t < end; ++t) {
    const int32_t* tri = triangles + 3 * t;
    const TriangleBox box =
        BoxOf(s.bounds[tri[0]], s.bounds[tri[1]], s.bounds[tri[2]], width, height);
    if (box.col_lo == box.col_hi && box.row_lo == box.row_hi) {
      s.candidate_triangle[num_candidates] = static_cast<int32_t>(t);
      s.candidate_pixel[num_candidates] = box.col_lo | (box.row_lo << 16);
      for (int k = 0; k < 3; ++k) s.candidate_corner[k][num_candidates] = tri[k];
      ++num_candidates;
    } else if (box.col_lo <= box.col_hi && box.row_lo <= box.row_hi) {
      s.large_triangles[(*num_large)++] = static_cast<int32_t>(t);
    }
  }
  return num_candidates;
}

// Pass 2: the key of each candidate at its pixel (0 if it does not cover it).
// Kept apart from the merge because the two triangles of a mesh cell usually
// share their candidate pixel, and a read-modify-write at the end of the
// setup chain would serialise them.
inline void CandidateKeysScalar(const float* vertices, const Scratch& s, int64_t begin,
                                int64_t end) {
  for (int64_t c = begin; c < end; ++c) {
    TriangleSetup setup;
    const bool usable = SetUpTriangle(Corner(vertices, s.candidate_corner[0][c]),
                                      Corner(vertices, s.candidate_corner[1][c]),
                                      Corner(vertices, s.candidate_corner[2][c]), &setup);
    float b[3], z;
    Barycentrics(setup, static_cast<float>(s.candidate_pixel[c] & 0xffff),
                 static_cast<float>(s.candidate_pixel[c] >> 16), b, &z);
    const bool covered = usable & (b[0] >= -kTolerance) & (b[1] >= -kTolerance) &
                         (b[2] >= -kTolerance) & std::isfinite(z);
    s.candidate_keys[c] = covered ? PixelKey(z, s.candidate_triangle[c]) : 0;
  }
}

// Resolve: barycentrics and depth of each pixel's winner, recomputed.
inline void ResolvePixelsScalar(const float* vertices, const int32_t* triangles,
                                const uint64_t* keys, int row, int col_begin, int width,
                                int32_t* ids, float* barycentric, float* depth) {
  for (int col = col_begin; col < width; ++col) {
    const int64_t p = static_cast<int64_t>(row) * width + col;
    float* b = barycentric + 3 * p;
    if (keys[p] == 0) {
      ids[p] = -1;
      b[0] = b[1] = b[2] = 0.0f;
      depth[p] = kBackgroundDepth;
      continue;
    }
    const int32_t t = static_cast<int32_t>(~static_cast<uint32_t>(keys[p]));
    const int32_t* tri = triangles + 3 * static_cast<int64_t>(t);
    TriangleSetup setup;
    SetUpTriangle(Corner(vertices, tri[0]), Corner(vertices, tri[1]), Corner(vertices, tri[2]),
                  &setup);
    ids[p] = t;
    Barycentrics(setup, static_cast<float>(col), static_cast<float>(row), b, depth + p);
  }
}

#ifdef FACERECON_AVX2
// Lane permutations that move the set lanes of an 8-bit mask to the front,
// one byte per lane.
struct CompactTable {
  uint64_t lanes[256];
};
constexpr CompactTable MakeCompactTable() {
  CompactTable table{};
  for (int mask = 0; mask < 256; ++mask) {
    int k = 0;
    for (int lane = 0; lane < 8; ++lane) {
      if (mask & (1 << lane)) table.lanes[mask] |= static_cast<uint64_t>(lane) << (8 * k++);
    }
  }
  return table;
}
inline constexpr CompactTable kCompact = MakeCompactTable();

// Corner k of eight triangles stored as 24 consecutive int32.
FACERECON_AVX2_FN inline void LoadTriangles8(const int32_t* p, __m256i* i0, __m256i* i1,
                                             __m256i* i2) {
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
  const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16));
  *i0 = _mm256_permutevar8x32_epi32(_mm256_blend_epi32(_mm256_blend_epi32(a, b, 0x92), c, 0x24),
                                    _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
  *i1 = _mm256_permutevar8x32_epi32(_mm256_blend_epi32(_mm256_blend_epi32(a, b, 0x24), c, 0x49),
                                    _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6));
  *i2 = _mm256_permutevar8x32_epi32(_mm256_blend_epi32(_mm256_blend_epi32(a, b, 0x49), c, 0x92),
                                    _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
}

// Gathers are slow here (AMD Zen 3): the three corners' bounds are loaded as
// scalars, four triangles per register, one int64 (four int16) each.
FACERECON_AVX2_FN inline int64_t FindCandidatesAvx2(const int32_t* triangles,
                                                    int64_t num_triangles, int width,
                                                    int height, const Scratch& s,
                                                    int64_t* num_large) {
  static_assert(sizeof(PixelBounds) == sizeof(int64_t), "PixelBounds is one int64");
  const auto bound = [&](int32_t vertex) {
    int64_t packed;
    std::memcpy(&packed, s.bounds + vertex, sizeof(packed));
    return packed;
  };
  // Clamping the box to the image is a max: col_lo, row_lo >= 0 and
  // -col_hi >= 1 - width, -row_hi >= 1 - height.
  const uint64_t neg_hi_min = (static_cast<uint64_t>(static_cast<uint16_t>(1 - height)) << 16) |
                              static_cast<uint16_t>(1 - width);
  const __m256i clamp = _mm256_set1_epi64x(static_cast<int64_t>(neg_hi_min << 32));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t n = 0, t = 0;
  for (; t + kLanes <= num_triangles; t += kLanes) {
    const int32_t* p = triangles + 3 * t;
    __m256 box[2];  // triangles 0-3 and 4-7: [col_lo row_lo -col_hi -row_hi] each
    for (int half = 0; half < 2; ++half) {
      const int32_t* q = p + 12 * half;
      __m256i m = _mm256_set_epi64x(bound(q[9]), bound(q[6]), bound(q[3]), bound(q[0]));
      m = _mm256_min_epi16(m, _mm256_set_epi64x(bound(q[10]), bound(q[7]), bound(q[4]),
                                                bound(q[1])));
      m = _mm256_min_epi16(m, _mm256_set_epi64x(bound(q[11]), bound(q[8]), bound(q[5]),
                                                bound(q[2])));
      box[half] = _mm256_castsi256_ps(_mm256_max_epi16(m, clamp));
    }
    // (col_lo, row_lo) and (-col_hi, -row_hi) pairs of the eight triangles, in order.
    const __m256i lo = _mm256_permute4x64_epi64(
        _mm256_castps_si256(_mm256_shuffle_ps(box[0], box[1], _MM_SHUFFLE(2, 0, 2, 0))),
        _MM_SHUFFLE(3, 1, 2, 0));
    const __m256i neg_hi = _mm256_permute4x64_epi64(
        _mm256_castps_si256(_mm256_shuffle_ps(box[0], box[1], _MM_SHUFFLE(3, 1, 3, 1))),
        _MM_SHUFFLE(3, 1, 2, 0));
    // lo - hi per axis: 0 for one pixel centre, > 0 for none.
    const __m256i span = _mm256_add_epi16(lo, neg_hi);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i one = _mm256_cmpeq_epi32(span, zero);
    const __m256i some = _mm256_cmpeq_epi32(_mm256_cmpgt_epi16(span, zero), zero);
    const int one_mask = _mm256_movemask_ps(_mm256_castsi256_ps(one));
    int large_mask = _mm256_movemask_ps(_mm256_castsi256_ps(some)) & ~one_mask;
    const __m256i permutation =
        _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(kCompact.lanes[one_mask])));
    const auto store = [&](int32_t* list, __m256i v) FACERECON_AVX2_FN {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(list + n),
                          _mm256_permutevar8x32_epi32(v, permutation));
    };
    __m256i i0, i1, i2;
    LoadTriangles8(p, &i0, &i1, &i2);
    store(s.candidate_triangle, _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(t)), lane));
    store(s.candidate_pixel, lo);
    store(s.candidate_corner[0], i0);
    store(s.candidate_corner[1], i1);
    store(s.candidate_corner[2], i2);
    n += __builtin_popcount(one_mask);
    for (; large_mask; large_mask &= large_mask - 1) {
      s.large_triangles[(*num_large)++] = static_cast<int32_t>(t + __builtin_ctz(large_mask));
    }
  }
  return FindCandidatesScalar(triangles, t, num_triangles, width, height, s, n, num_large);
}

// VertexBounds for eight vertices at a time.
FACERECON_AVX2_FN inline void VertexBoundsAvx2(const float* vertices, int64_t num_vertices,
                                               int width, int height, PixelBounds* bounds) {
  const __m256 w = _mm256_set1_ps(static_cast<float>(width));
  const __m256 h = _mm256_set1_ps(static_cast<float>(height));
  const __m256 margin = _mm256_set1_ps(kBoxMargin);
  const __m256 minus_one = _mm256_set1_ps(-1.0f);
  // max(v, -1) returns -1 for NaN (the second operand), like ClampToImage.
  const auto clamp = [&](__m256 v, __m256 size) FACERECON_AVX2_FN {
    return _mm256_min_ps(_mm256_max_ps(v, minus_one), size);
  };
  int64_t v = 0;
  for (; v + kLanes <= num_vertices; v += kLanes) {
    const float* p = vertices + 3 * v;
    const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8), c = _mm256_loadu_ps(p + 16);
    // Lanes as in LoadTriangles8: x from a[0,3,6] b[1,4,7] c[2,5], y one further.
    const __m256 x = _mm256_permutevar8x32_ps(
        _mm256_blend_ps(_mm256_blend_ps(a, b, 0x92), c, 0x24),
        _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
    const __m256 y = _mm256_permutevar8x32_ps(
        _mm256_blend_ps(_mm256_blend_ps(a, b, 0x24), c, 0x49),
        _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6));
    const __m256i col_lo = _mm256_cvttps_epi32(_mm256_ceil_ps(clamp(_mm256_sub_ps(x, margin), w)));
    const __m256i row_lo = _mm256_cvttps_epi32(_mm256_ceil_ps(clamp(_mm256_sub_ps(y, margin), h)));
    const __m256i neg_col_hi = _mm256_sub_epi32(
        _mm256_setzero_si256(),
        _mm256_cvttps_epi32(_mm256_floor_ps(clamp(_mm256_add_ps(x, margin), w))));
    const __m256i neg_row_hi = _mm256_sub_epi32(
        _mm256_setzero_si256(),
        _mm256_cvttps_epi32(_mm256_floor_ps(clamp(_mm256_add_ps(y, margin), h))));
    // Per 128-bit lane: four vertices' fields -> four PixelBounds.
    const __m256i lo = _mm256_packs_epi32(col_lo, row_lo);  // cl0-3 rl0-3 | cl4-7 rl4-7
    const __m256i hi = _mm256_packs_epi32(neg_col_hi, neg_row_hi);
    const __m256i lo_pairs = _mm256_unpacklo_epi16(lo, _mm256_srli_si256(lo, 8));
    const __m256i hi_pairs = _mm256_unpacklo_epi16(hi, _mm256_srli_si256(hi, 8));
    const __m256i first = _mm256_unpacklo_epi32(lo_pairs, hi_pairs);   // vertices 0 1 | 4 5
    const __m256i second = _mm256_unpackhi_epi32(lo_pairs, hi_pairs);  // vertices 2 3 | 6 7
    __m256i* out = reinterpret_cast<__m256i*>(bounds + v);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(first, second, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(first, second, 0x31));
  }
  VertexBounds(vertices + 3 * v, num_vertices - v, width, height, bounds + v);
}

// FirstBadTriangle's fast check, compiled for AVX2.
FACERECON_AVX2_FN inline bool IndicesBelowAvx2(const int32_t* triangles, int64_t num_triangles,
                                               int64_t num_vertices) {
  return static_cast<int64_t>(MaxIndex(triangles, num_triangles)) < num_vertices;
}

// x, y, z of eight vertices (indices in memory): 16-byte row loads and a
// transpose, cheaper than gathers here. The last vertex has no fourth float
// after it, so it is loaded in parts.
FACERECON_AVX2_FN inline __m128 LoadVertex(const float* vertices, int64_t num_vertices,
                                           int32_t index) {
  const float* v = vertices + 3 * static_cast<int64_t>(index);
  if (index + 1 < num_vertices) return _mm_loadu_ps(v);
  return _mm_setr_ps(v[0], v[1], v[2], 0.0f);
}

FACERECON_AVX2_FN inline void LoadVertices8(const float* vertices, int64_t num_vertices,
                                            const int32_t* index, __m256* x, __m256* y,
                                            __m256* z) {
  __m256 rows[4];
  for (int j = 0; j < 4; ++j) {
    rows[j] = _mm256_insertf128_ps(
        _mm256_castps128_ps256(LoadVertex(vertices, num_vertices, index[j])),
        LoadVertex(vertices, num_vertices, index[j + 4]), 1);
  }
  const __m256 xy01 = _mm256_unpacklo_ps(rows[0], rows[1]), xy23 = _mm256_unpacklo_ps(rows[2], rows[3]);
  const __m256 zw01 = _mm256_unpackhi_ps(rows[0], rows[1]), zw23 = _mm256_unpackhi_ps(rows[2], rows[3]);
  *x = _mm256_shuffle_ps(xy01, xy23, _MM_SHUFFLE(1, 0, 1, 0));
  *y = _mm256_shuffle_ps(xy01, xy23, _MM_SHUFFLE(3, 2, 3, 2));
  *z = _mm256_shuffle_ps(zw01, zw23, _MM_SHUFFLE(1, 0, 1, 0));
}

// Setup and barycentrics of eight triangles at eight pixels, as
// SetUpTriangle + Barycentrics compute them.
struct Barycentrics8 {
  __m256 b0, b1, b2, z, usable;
};

FACERECON_AVX2_FN inline Barycentrics8 Barycentrics8At(const float* vertices,
                                                       int64_t num_vertices,
                                                       const int32_t* const corner[3],
                                                       __m256 px, __m256 py) {
  __m256 x0, y0, z0, x1, y1, z1, x2, y2, z2;
  LoadVertices8(vertices, num_vertices, corner[0], &x0, &y0, &z0);
  LoadVertices8(vertices, num_vertices, corner[1], &x1, &y1, &z1);
  LoadVertices8(vertices, num_vertices, corner[2], &x2, &y2, &z2);
  const __m256 e1x = _mm256_sub_ps(x1, x0), e1y = _mm256_sub_ps(y1, y0);
  const __m256 e1z = _mm256_sub_ps(z1, z0);
  const __m256 e2x = _mm256_sub_ps(x2, x0), e2y = _mm256_sub_ps(y2, y0);
  const __m256 e2z = _mm256_sub_ps(z2, z0);
  const __m256 area = _mm256_sub_ps(_mm256_mul_ps(e1x, e2y), _mm256_mul_ps(e1y, e2x));
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 usable =
      _mm256_and_ps(_mm256_cmp_ps(area, _mm256_setzero_ps(), _CMP_NEQ_UQ),
                    _mm256_cmp_ps(_mm256_andnot_ps(sign, area),
                                  _mm256_set1_ps(std::numeric_limits<float>::infinity()),
                                  _CMP_LT_OQ));
  const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), area);
  const __m256 k1x = _mm256_mul_ps(e2y, inv), k1y = _mm256_mul_ps(_mm256_xor_ps(e2x, sign), inv);
  const __m256 k2x = _mm256_mul_ps(_mm256_xor_ps(e1y, sign), inv), k2y = _mm256_mul_ps(e1x, inv);
  const __m256 dx = _mm256_sub_ps(px, x0), dy = _mm256_sub_ps(py, y0);
  const __m256 b1 = _mm256_add_ps(_mm256_mul_ps(k1x, dx), _mm256_mul_ps(k1y, dy));
  const __m256 b2 = _mm256_add_ps(_mm256_mul_ps(k2x, dx), _mm256_mul_ps(k2y, dy));
  const __m256 b0 = _mm256_sub_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), b1), b2);
  const __m256 z =
      _mm256_add_ps(_mm256_add_ps(z0, _mm256_mul_ps(b1, e1z)), _mm256_mul_ps(b2, e2z));
  return {b0, b1, b2, z, usable};
}

FACERECON_AVX2_FN inline void CandidateKeysAvx2(const float* vertices, int64_t num_vertices,
                                                const Scratch& s, int64_t num_candidates) {
  const __m256 tolerance = _mm256_set1_ps(-kTolerance);
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  int64_t c = 0;
  for (; c + kLanes <= num_candidates; c += kLanes) {
    const auto load = [&](const int32_t* list) FACERECON_AVX2_FN {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(list + c));
    };
    const __m256i pixel = load(s.candidate_pixel);
    const __m256 px = _mm256_cvtepi32_ps(_mm256_and_si256(pixel, _mm256_set1_epi32(0xffff)));
    const __m256 py = _mm256_cvtepi32_ps(_mm256_srli_epi32(pixel, 16));
    const int32_t* const corner[3] = {s.candidate_corner[0] + c, s.candidate_corner[1] + c,
                                      s.candidate_corner[2] + c};
    const Barycentrics8 r = Barycentrics8At(vertices, num_vertices, corner, px, py);
    __m256 covered = _mm256_and_ps(r.usable, _mm256_cmp_ps(r.b0, tolerance, _CMP_GE_OQ));
    covered = _mm256_and_ps(covered, _mm256_cmp_ps(r.b1, tolerance, _CMP_GE_OQ));
    covered = _mm256_and_ps(covered, _mm256_cmp_ps(r.b2, tolerance, _CMP_GE_OQ));
    covered = _mm256_and_ps(
        covered, _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), r.z), inf, _CMP_LT_OQ));
    const __m256i mask = _mm256_castps_si256(covered);
    // OrderedBits: -0 to +0, then flip all bits of negatives, set the sign
    // bit of the rest.
    const __m256i bits = _mm256_castps_si256(_mm256_add_ps(r.z, _mm256_setzero_ps()));
    const __m256i ordered = _mm256_xor_si256(
        bits, _mm256_or_si256(_mm256_srai_epi32(bits, 31), _mm256_set1_epi32(INT32_MIN)));
    const __m256i high = _mm256_and_si256(ordered, mask);
    const __m256i low = _mm256_andnot_si256(load(s.candidate_triangle), mask);  // ~t
    const __m256i keys01 = _mm256_unpacklo_epi32(low, high);  // candidates 0 1 | 4 5
    const __m256i keys23 = _mm256_unpackhi_epi32(low, high);  // candidates 2 3 | 6 7
    __m256i* out = reinterpret_cast<__m256i*>(s.candidate_keys + c);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(keys01, keys23, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(keys01, keys23, 0x31));
  }
  CandidateKeysScalar(vertices, s, c, num_candidates);
}

FACERECON_AVX2_FN inline void ResolveRowAvx2(const float* vertices, int64_t num_vertices,
                                             const int32_t* triangles,
                                             const uint64_t* keys, int row, int width,
                                             int32_t* ids, float* barycentric, float* depth) {
  int col = 0;
  for (; col + kLanes <= width; col += kLanes) {
    const int64_t p = static_cast<int64_t>(row) * width + col;
    const __m256 k0 = _mm256_loadu_ps(reinterpret_cast<const float*>(keys + p));
    const __m256 k1 = _mm256_loadu_ps(reinterpret_cast<const float*>(keys + p + 4));
    // Low and high halves of the eight keys, in pixel order.
    const __m256i low = _mm256_permute4x64_epi64(
        _mm256_castps_si256(_mm256_shuffle_ps(k0, k1, _MM_SHUFFLE(2, 0, 2, 0))),
        _MM_SHUFFLE(3, 1, 2, 0));
    const __m256i high = _mm256_permute4x64_epi64(
        _mm256_castps_si256(_mm256_shuffle_ps(k0, k1, _MM_SHUFFLE(3, 1, 3, 1))),
        _MM_SHUFFLE(3, 1, 2, 0));
    const __m256i background = _mm256_cmpeq_epi32(high, _mm256_setzero_si256());
    float* b = barycentric + 3 * p;
    if (_mm256_movemask_ps(_mm256_castsi256_ps(background)) == 0xff) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ids + p), _mm256_set1_epi32(-1));
      _mm256_storeu_ps(depth + p, _mm256_set1_ps(kBackgroundDepth));
      for (int k = 0; k < 3; ++k) _mm256_storeu_ps(b + 8 * k, _mm256_setzero_ps());
      continue;
    }
    // Background lanes look up triangle 0 (it exists: some key is set).
    const __m256i t = _mm256_andnot_si256(background, _mm256_xor_si256(low, _mm256_set1_epi32(-1)));
    alignas(32) int32_t winner[kLanes], corners[3][kLanes];
    _mm256_store_si256(reinterpret_cast<__m256i*>(winner), t);
    for (int lane = 0; lane < kLanes; ++lane) {
      for (int k = 0; k < 3; ++k) corners[k][lane] = triangles[3 * int64_t{winner[lane]} + k];
    }
    const int32_t* const corner[3] = {corners[0], corners[1], corners[2]};
    const __m256 px = _mm256_cvtepi32_ps(
        _mm256_add_epi32(_mm256_set1_epi32(col), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    const __m256 py = _mm256_set1_ps(static_cast<float>(row));
    const Barycentrics8 r = Barycentrics8At(vertices, num_vertices, corner, px, py);
    const __m256 bg = _mm256_castsi256_ps(background);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ids + p), _mm256_or_si256(t, background));
    _mm256_storeu_ps(depth + p, _mm256_blendv_ps(r.z, _mm256_set1_ps(kBackgroundDepth), bg));
    const __m256 b0 = _mm256_andnot_ps(bg, r.b0), b1 = _mm256_andnot_ps(bg, r.b1);
    const __m256 b2 = _mm256_andnot_ps(bg, r.b2);
    // Interleave to [b0 b1 b2] per pixel: output vector k holds pixels
    // (8k + lane) / 3, component (8k + lane) % 3.
    const __m256i sources[3] = {_mm256_setr_epi32(0, 0, 0, 1, 1, 1, 2, 2),
                                _mm256_setr_epi32(2, 3, 3, 3, 4, 4, 4, 5),
                                _mm256_setr_epi32(5, 5, 6, 6, 6, 7, 7, 7)};
    const auto interleave = [&](int k, int from_b1, int from_b2) FACERECON_AVX2_FN {
      const __m256i s = sources[k];
      return _mm256_blend_ps(
          _mm256_blend_ps(_mm256_permutevar8x32_ps(b0, s), _mm256_permutevar8x32_ps(b1, s),
                          from_b1),
          _mm256_permutevar8x32_ps(b2, s), from_b2);
    };
    _mm256_storeu_ps(b, interleave(0, 0x92, 0x24));
    _mm256_storeu_ps(b + 8, interleave(1, 0x24, 0x49));
    _mm256_storeu_ps(b + 16, interleave(2, 0x49, 0x92));
  }
  ResolvePixelsScalar(vertices, triangles, keys, row, col, width, ids, barycentric, depth);
}

inline bool HaveAvx2() {
  static const bool have = __builtin_cpu_supports("avx2");
  return have;
}
#else
inline bool HaveAvx2() { return false; }
#endif  // FACERECON_AVX2

// Rasterizes one image. `vertices` [num_vertices, 3], `triangles`
// [num_triangles, 3]. Writes ids [H, W], barycentrics [H, W, 3] and depth
// [H, W]. Returns the index of the first triangle with an out-of-range vertex
// index, or -1 if all are valid (on error the outputs are background).
// `vector` false forces the scalar passes (for tests).
//
// For a face mesh at training resolution most triangles cover no pixel or
// one, and which is unpredictable; so pass 1 sorts triangles with integer
// bounds only, pass 2 tests the one-pixel candidates without branching, and
// the rare larger triangles are z-tested over their boxes. The z-test is an
// unsigned max, so the order in which triangles are processed does not change
// the result.
inline int64_t RasterizeImage(const float* vertices, int64_t num_vertices,
                              const int32_t* triangles, int64_t num_triangles,
                              int height, int width, const Scratch& scratch,
                              int32_t* ids, float* barycentric, float* depth,
                              bool vector = true) {
  const int64_t pixels = static_cast<int64_t>(height) * width;
  uint64_t* keys = scratch.keys;
  std::fill(keys, keys + pixels, uint64_t{0});
  const bool avx2 = vector && HaveAvx2();
  int64_t bad_triangle = -1;
#ifdef FACERECON_AVX2
  if (!avx2 || !IndicesBelowAvx2(triangles, num_triangles, num_vertices))
#endif
    bad_triangle = FirstBadTriangle(triangles, num_triangles, num_vertices);
  if (bad_triangle < 0 && num_triangles > 0) {
#ifdef FACERECON_AVX2
    if (avx2) {
      VertexBoundsAvx2(vertices, num_vertices, width, height, scratch.bounds);
    } else
#endif
      VertexBounds(vertices, num_vertices, width, height, scratch.bounds);
    int64_t num_candidates, num_large = 0;
#ifdef FACERECON_AVX2
    if (avx2) {
      num_candidates =
          FindCandidatesAvx2(triangles, num_triangles, width, height, scratch, &num_large);
      CandidateKeysAvx2(vertices, num_vertices, scratch, num_candidates);
    } else
#endif
    {
      num_candidates = FindCandidatesScalar(triangles, 0, num_triangles, width, height,
                                            scratch, 0, &num_large);
      CandidateKeysScalar(vertices, scratch, 0, num_candidates);
    }
    for (int64_t c = 0; c < num_candidates; ++c) {
      const int32_t pixel = scratch.candidate_pixel[c];
      uint64_t& slot = keys[static_cast<int64_t>(pixel >> 16) * width + (pixel & 0xffff)];
      slot = std::max(slot, scratch.candidate_keys[c]);
    }
    for (int64_t l = 0; l < num_large; ++l) {
      const int32_t t = scratch.large_triangles[l];
      const int32_t* tri = triangles + 3 * static_cast<int64_t>(t);
      TriangleSetup s;
      if (SetUpTriangle(Corner(vertices, tri[0]), Corner(vertices, tri[1]),
                        Corner(vertices, tri[2]), &s)) {
        const TriangleBox box = BoxOf(scratch.bounds[tri[0]], scratch.bounds[tri[1]],
                                      scratch.bounds[tri[2]], width, height);
        RasterizeBox(s, t, box.col_lo, box.col_hi, box.row_lo, box.row_hi, width, keys);
      }
    }
  }
  for (int row = 0; row < height; ++row) {
#ifdef FACERECON_AVX2
    if (avx2) {
      ResolveRowAvx2(vertices, num_vertices, triangles, keys, row, width, ids, barycentric,
                     depth);
      continue;
    }
#endif
    ResolvePixelsScalar(vertices, triangles, keys, row, 0, width, ids, barycentric, depth);
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

// Calls hit(p, tri, s, b) for each pixel p (row-major in [H, W]) whose
// visible triangle (ids[p]) passes PixelTriangle, and miss(p) for the others:
// the loop every interpolation kernel shares.
template <typename Hit, typename Miss>
inline void ForEachPixelTriangle(const float* vertices, int64_t num_vertices,
                                 const int32_t* triangles, int64_t num_triangles,
                                 const int32_t* ids, int height, int width, Hit hit,
                                 Miss miss) {
  for (int row = 0; row < height; ++row) {
    for (int col = 0; col < width; ++col) {
      const int64_t p = static_cast<int64_t>(row) * width + col;
      const int32_t* tri;
      TriangleSetup s;
      float b[3];
      if (PixelTriangle(ids[p], col, row, vertices, num_vertices, triangles, num_triangles,
                        &tri, &s, b)) {
        hit(p, tri, s, b);
      } else {
        miss(p);
      }
    }
  }
}

// Adds the x, y gradient of a pixel through its barycentrics to its corners:
// with dL/db_j given as u = dL/db_1 - dL/db_0 and w = dL/db_2 - dL/db_0,
// sum_j (dL/db_j) grad_p b_j = u grad_p b_1 + w grad_p b_2 (since grad_p b_0 =
// -(grad_p b_1 + grad_p b_2)); p = sum_j b_j v_j, so moving corner k by d
// changes b like moving p by -b_k d, and dL/dv_k = -b_k times that.
inline void AddBarycentricGrad(const TriangleSetup& s, const float* b, const int32_t* tri,
                               float u, float w, float* grad_vertices) {
  const float gx = u * s.k1x + w * s.k2x, gy = u * s.k1y + w * s.k2y;
  for (int k = 0; k < 3; ++k) {
    float* gv = grad_vertices + 3 * static_cast<int64_t>(tri[k]);
    gv[0] -= b[k] * gx;
    gv[1] -= b[k] * gy;
  }
}

// InterpolateImage for a channel count known at compile time (kChannels > 0)
// or given at run time (kChannels == 0): a fixed count lets the compiler
// unroll and vectorise the channel loop.
template <int kChannels>
inline void InterpolateImageT(const float* vertices, const float* attributes,
                              int64_t num_vertices, int64_t runtime_channels,
                              const int32_t* triangles, int64_t num_triangles,
                              const int32_t* ids, int height, int width, float* out) {
  const int64_t channels = kChannels > 0 ? kChannels : runtime_channels;
  ForEachPixelTriangle(
      vertices, num_vertices, triangles, num_triangles, ids, height, width,
      [&](int64_t p, const int32_t* tri, const TriangleSetup&, const float* b) {
        float* o = out + p * channels;
        const float* a0 = attributes + tri[0] * channels;
        const float* a1 = attributes + tri[1] * channels;
        const float* a2 = attributes + tri[2] * channels;
        for (int64_t c = 0; c < channels; ++c) {
          o[c] = b[0] * a0[c] + b[1] * a1[c] + b[2] * a2[c];
        }
      },
      [&](int64_t p) { std::fill(out + p * channels, out + (p + 1) * channels, 0.0f); });
}

// Interpolates per-vertex attributes [N, C] at each pixel's visible triangle
// (ids [H, W]): out [H, W, C] = sum_k b_k a_k, 0 where PixelTriangle fails.
inline void InterpolateImage(const float* vertices, const float* attributes,
                             int64_t num_vertices, int64_t channels,
                             const int32_t* triangles, int64_t num_triangles,
                             const int32_t* ids, int height, int width, float* out) {
  switch (channels) {  // the counts the renderer uses
#define FACERECON_CHANNELS(n)                                                          \
  case n:                                                                              \
    return InterpolateImageT<n>(vertices, attributes, num_vertices, n, triangles,      \
                                num_triangles, ids, height, width, out);
    FACERECON_CHANNELS(1)
    FACERECON_CHANNELS(3)
    FACERECON_CHANNELS(4)
    FACERECON_CHANNELS(10)
#undef FACERECON_CHANNELS
    default:
      return InterpolateImageT<0>(vertices, attributes, num_vertices, channels, triangles,
                                  num_triangles, ids, height, width, out);
  }
}

// Backward of InterpolateImage for upstream gradients grad_out [H, W, C].
// Writes grad_attributes [N, C] (sum of g b_k) and grad_vertices [N, 3]
// (x, y only: barycentrics do not depend on z), with dL/db_j = <g, a_j>.
inline void InterpolateImageGrad(const float* vertices, const float* attributes,
                                 int64_t num_vertices, int64_t channels,
                                 const int32_t* triangles, int64_t num_triangles,
                                 const int32_t* ids, int height, int width,
                                 const float* grad_out, float* grad_attributes,
                                 float* grad_vertices) {
  std::fill(grad_attributes, grad_attributes + num_vertices * channels, 0.0f);
  std::fill(grad_vertices, grad_vertices + num_vertices * 3, 0.0f);
  ForEachPixelTriangle(
      vertices, num_vertices, triangles, num_triangles, ids, height, width,
      [&](int64_t p, const int32_t* tri, const TriangleSetup& s, const float* b) {
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
        AddBarycentricGrad(s, b, tri, grad_b[1] - grad_b[0], grad_b[2] - grad_b[0],
                           grad_vertices);
      },
      [](int64_t) {});
}

// Backward of the depth map z = sum_k b_k z_k (what InterpolateImage gives
// for attributes = the vertices' z) for upstream gradients grad_depth [H, W]:
// adds into grad_vertices [N, 3] both the z term (g b_k) and the x, y term
// through the barycentrics, in one pass. Equals InterpolateImageGrad with
// C = 1 plus its attribute gradient added to z, without the extra buffers.
inline void DepthImageGrad(const float* vertices, int64_t num_vertices,
                           const int32_t* triangles, int64_t num_triangles,
                           const int32_t* ids, int height, int width,
                           const float* grad_depth, float* grad_vertices) {
  std::fill(grad_vertices, grad_vertices + num_vertices * 3, 0.0f);
  ForEachPixelTriangle(
      vertices, num_vertices, triangles, num_triangles, ids, height, width,
      [&](int64_t p, const int32_t* tri, const TriangleSetup& s, const float* b) {
        const float g = grad_depth[p];
        if (g == 0.0f) return;  // (no 0 * inf where a vertex z is infinite)
        // dL/db_k = g z_k, so u and w are g times the edges' z rise.
        AddBarycentricGrad(s, b, tri, g * s.dz1, g * s.dz2, grad_vertices);
        for (int k = 0; k < 3; ++k) {
          grad_vertices[3 * static_cast<int64_t>(tri[k]) + 2] += b[k] * g;
        }
      },
      [](int64_t) {});
}

}  // namespace facerecon

#endif  // FACERECON_KERNELS_RASTERIZE_H_
