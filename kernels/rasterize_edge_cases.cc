// Edge cases for the rasterizer core, run under AddressSanitizer,
// UndefinedBehaviorSanitizer and valgrind by kernels/run_sanitizers.sh.
// Every case must finish without a memory error and leave defined output:
// ids in [-1, T), finite barycentrics summing to 1 where covered, finite depth.
// Interpolation and its backward kernels run on each result too.

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "rasterize.h"

namespace {

int failures = 0;

void Check(bool ok, const char* what, const char* name) {
  if (!ok) {
    std::printf("FAIL %s: %s\n", name, what);
    ++failures;
  }
}

// Interpolates z over `ids` and runs both backward kernels, into exactly-sized
// buffers; the fused depth backward must equal the generic one with its
// attribute gradient added to z.
void CheckInterpolation(const char* name, const std::vector<float>& vertices,
                        const std::vector<int32_t>& triangles, const std::vector<int32_t>& ids,
                        int height, int width) {
  const int64_t num_vertices = vertices.size() / 3, num_triangles = triangles.size() / 3;
  const int64_t pixels = static_cast<int64_t>(height) * width;
  std::vector<float> z(num_vertices), out(pixels), grad_out(pixels);
  for (int64_t i = 0; i < num_vertices; ++i) z[i] = vertices[3 * i + 2];
  for (int64_t p = 0; p < pixels; ++p) grad_out[p] = 0.5f + static_cast<float>(p % 5);
  facerecon::InterpolateImage(vertices.data(), z.data(), num_vertices, 1, triangles.data(),
                              num_triangles, ids.data(), height, width, out.data());
  std::vector<float> grad_z(num_vertices), grad_vertices(3 * num_vertices),
      fused(3 * num_vertices);
  facerecon::InterpolateImageGrad(vertices.data(), z.data(), num_vertices, 1, triangles.data(),
                                  num_triangles, ids.data(), height, width, grad_out.data(),
                                  grad_z.data(), grad_vertices.data());
  facerecon::DepthImageGrad(vertices.data(), num_vertices, triangles.data(), num_triangles,
                            ids.data(), height, width, grad_out.data(), fused.data());
  for (int64_t i = 0; i < num_vertices; ++i) grad_vertices[3 * i + 2] += grad_z[i];
  for (int64_t i = 0; i < 3 * num_vertices; ++i) {
    const float a = grad_vertices[i], b = fused[i];
    // Both non-finite alike (special inputs), or close.
    const bool same = (!std::isfinite(a) && !std::isfinite(b)) ||
                      std::fabs(a - b) <= 1e-3f * (1.0f + std::fabs(a));
    Check(same, "fused depth gradient differs from interpolate's", name);
  }
}

// Rasterizes into exactly-sized heap buffers (so ASan sees any overrun) and
// checks the output invariants, and that the vector passes (if this CPU has
// AVX2) give exactly the scalar passes' output. Returns the kernel's
// bad-triangle result.
int64_t Run(const char* name, const std::vector<float>& vertices,
            const std::vector<int32_t>& triangles, int height, int width) {
  const int64_t num_vertices = vertices.size() / 3, num_triangles = triangles.size() / 3;
  const int64_t pixels = static_cast<int64_t>(height) * width;
  const int64_t list = num_triangles + facerecon::kLanes;
  std::vector<uint64_t> keys(pixels), candidate_keys(list);
  std::vector<facerecon::PixelBounds> bounds(num_vertices);
  std::vector<int32_t> lists(6 * list);
  int32_t* l = lists.data();
  const facerecon::Scratch scratch = {keys.data(), bounds.data(), l, l + list,
                                      {l + 2 * list, l + 3 * list, l + 4 * list},
                                      candidate_keys.data(), l + 5 * list};
  std::vector<int32_t> ids(pixels), scalar_ids(pixels);
  std::vector<float> bary(pixels * 3), depth(pixels), scalar_bary(pixels * 3), scalar_depth(pixels);
  const int64_t bad = facerecon::RasterizeImage(
      vertices.data(), num_vertices, triangles.data(), num_triangles, height, width, scratch,
      ids.data(), bary.data(), depth.data());
  const int64_t scalar_bad = facerecon::RasterizeImage(
      vertices.data(), num_vertices, triangles.data(), num_triangles, height, width, scratch,
      scalar_ids.data(), scalar_bary.data(), scalar_depth.data(), /*vector=*/false);
  Check(bad == scalar_bad && ids == scalar_ids &&
            std::memcmp(bary.data(), scalar_bary.data(), bary.size() * sizeof(float)) == 0 &&
            std::memcmp(depth.data(), scalar_depth.data(), depth.size() * sizeof(float)) == 0,
        "vector and scalar passes differ", name);
  for (int64_t p = 0; p < pixels; ++p) {
    Check(ids[p] >= -1 && ids[p] < num_triangles, "triangle id out of range", name);
    Check(std::isfinite(depth[p]), "non-finite depth", name);
    if (ids[p] < 0) {
      Check(bary[3 * p] == 0 && bary[3 * p + 1] == 0 && bary[3 * p + 2] == 0,
            "background barycentrics not zero", name);
    } else {
      const float sum = bary[3 * p] + bary[3 * p + 1] + bary[3 * p + 2];
      Check(std::fabs(sum - 1.0f) < 1e-3f, "barycentrics do not sum to 1", name);
    }
  }
  CheckInterpolation(name, vertices, triangles, ids, height, width);
  // Ids need not come from this mesh (a caller's bug): out-of-range ones must
  // be ignored, not followed.
  for (int64_t p = 0; p < pixels; ++p) {
    if (p % 3 == 0) ids[p] = static_cast<int32_t>(num_triangles + p % 5);
    if (p % 7 == 0) ids[p] = std::numeric_limits<int32_t>::min();
  }
  CheckInterpolation(name, vertices, triangles, ids, height, width);
  return bad;
}

std::vector<float> RandomVertices(std::mt19937& rng, int count, float low, float high) {
  std::uniform_real_distribution<float> uniform(low, high);
  std::vector<float> v(3 * count);
  for (float& x : v) x = uniform(rng);
  return v;
}

std::vector<int32_t> RandomTriangles(std::mt19937& rng, int count, int num_vertices) {
  std::uniform_int_distribution<int32_t> index(0, num_vertices - 1);
  std::vector<int32_t> t(3 * count);
  for (int32_t& i : t) i = index(rng);
  return t;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();

  // Random meshes over many image shapes, including 1x1 and single rows/columns.
  const int shapes[][2] = {{1, 1}, {1, 17}, {17, 1}, {8, 8}, {33, 20}, {64, 64}};
  for (const auto& shape : shapes) {
    for (int trial = 0; trial < 5; ++trial) {
      auto v = RandomVertices(rng, 50, -20.0f, 80.0f);
      auto t = RandomTriangles(rng, 200, 50);
      Check(Run("random", v, t, shape[0], shape[1]) == -1, "valid mesh reported bad", "random");
    }
  }
  // Fine jittered grids (about one pixel per triangle, like a face mesh at
  // training resolution): mostly one-pixel candidates, the vector passes'
  // main path, including the last vertex (loaded in parts).
  for (int trial = 0; trial < 4; ++trial) {
    const int side = 30 + 7 * trial;
    std::uniform_real_distribution<float> jitter(-0.4f, 0.4f), depth(-5.0f, 5.0f);
    std::vector<float> v;
    for (int i = 0; i < side; ++i) {
      for (int j = 0; j < side; ++j) {
        v.insert(v.end(), {j * 1.3f + jitter(rng) - 2.0f, i * 1.1f + jitter(rng) - 1.0f,
                           depth(rng)});
      }
    }
    std::vector<int32_t> t;
    for (int i = 0; i + 1 < side; ++i) {
      for (int j = 0; j + 1 < side; ++j) {
        const int32_t a = i * side + j;
        t.insert(t.end(), {a, a + 1, a + side, a + 1, a + side + 1, a + side});
      }
    }
    Check(Run("fine grid", v, t, 41, 37 + trial) == -1, "valid mesh reported bad", "fine grid");
  }
  // Non-finite and huge coordinates.
  const float specials[] = {nan, inf, -inf, 1e30f, -1e30f, 3e38f, 1e-40f, 0.0f};
  for (float special : specials) {
    auto v = RandomVertices(rng, 30, -5.0f, 40.0f);
    for (int i = 0; i < 30; i += 3) v[3 * i + (i % 3)] = special;
    auto t = RandomTriangles(rng, 100, 30);
    Run("special values", v, t, 32, 24);
  }
  // A triangle far larger than the image, and one fully off-screen.
  Run("huge triangle", {-1e6f, -1e6f, 1.0f, 3e6f, -1e6f, 2.0f, -1e6f, 3e6f, 3.0f},
      {0, 1, 2}, 20, 30);
  Run("off-screen", {500, 500, 0, 510, 500, 0, 500, 510, 0}, {0, 1, 2}, 20, 30);
  // Degenerate triangles: zero area, a point, repeated indices.
  Run("degenerate", {1, 1, 0, 5, 5, 0, 9, 9, 0}, {0, 1, 2, 0, 0, 0, 1, 1, 2}, 10, 10);
  // Empty meshes.
  Run("no triangles", {1, 2, 3}, {}, 5, 7);
  Run("no vertices", {}, {}, 5, 7);
  // Out-of-range indices: reported, outputs left as background.
  const std::vector<float> v3 = {0, 0, 0, 9, 0, 0, 0, 9, 0};
  Check(Run("index too large", v3, {0, 1, 2, 0, 1, 3}, 10, 10) == 1,
        "index 3 of 3 vertices not reported", "index too large");
  Check(Run("negative index", v3, {0, -1, 2}, 10, 10) == 0,
        "negative index not reported", "negative index");
  Check(Run("no vertices, a triangle", {}, {0, 0, 0}, 4, 4) == 0,
        "index into an empty vertex array not reported", "no vertices, a triangle");

  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
