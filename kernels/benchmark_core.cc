// Times the CPU rasterizer core directly (one thread, no XLA): the figure to
// compare with other C++ rasterizers such as 3DDFA_V2's Sim3DR. Built and run
// by benchmarks/rasterize.py.
//
// Usage: benchmark_core VERTICES.f32 TRIANGLES.i32 SIZE REPEATS
// (raw little-endian [N, 3] float32 image-space vertices and [T, 3] int32).
// Prints median and minimum ms for rasterize, interpolate of one channel
// (depth), its backward pass, and the fused depth backward (what a depth
// loss runs after rasterize).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "rasterize.h"

namespace {

template <typename T>
std::vector<T> ReadFile(const char* path) {
  std::FILE* f = std::fopen(path, "rb");
  if (!f) {
    std::fprintf(stderr, "cannot open %s\n", path);
    std::exit(2);
  }
  std::fseek(f, 0, SEEK_END);
  const long bytes = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  std::vector<T> data(bytes / sizeof(T));
  if (std::fread(data.data(), sizeof(T), data.size(), f) != data.size()) {
    std::fprintf(stderr, "short read from %s\n", path);
    std::exit(2);
  }
  std::fclose(f);
  return data;
}

template <typename F>
void Time(const char* name, int repeats, F run) {
  run();  // warm up: scratch, caches
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    ms.push_back(std::chrono::duration<double, std::milli>(
                     std::chrono::steady_clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("%s %.3f %.3f\n", name, ms[ms.size() / 2], ms[0]);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s VERTICES TRIANGLES SIZE REPEATS\n", argv[0]);
    return 2;
  }
  const std::vector<float> vertices = ReadFile<float>(argv[1]);
  const std::vector<int32_t> triangles = ReadFile<int32_t>(argv[2]);
  const int size = std::atoi(argv[3]), repeats = std::atoi(argv[4]);
  const int64_t num_vertices = vertices.size() / 3, num_triangles = triangles.size() / 3;
  const int64_t pixels = static_cast<int64_t>(size) * size;
  facerecon::ScratchArena arena;
  const facerecon::Scratch scratch = arena.Get(pixels, num_vertices, num_triangles);
  std::vector<int32_t> ids(pixels);
  std::vector<float> bary(3 * pixels), depth(pixels), z(num_vertices), out(pixels),
      grad_out(pixels, 1.0f), grad_z(num_vertices), grad_vertices(3 * num_vertices);
  for (int64_t v = 0; v < num_vertices; ++v) z[v] = vertices[3 * v + 2];
  Time("rasterize", repeats, [&] {
    facerecon::RasterizeImage(vertices.data(), num_vertices, triangles.data(), num_triangles,
                              size, size, scratch, ids.data(), bary.data(), depth.data());
  });
  Time("interpolate", repeats, [&] {
    facerecon::InterpolateImage(vertices.data(), z.data(), num_vertices, 1, triangles.data(),
                                num_triangles, ids.data(), size, size, out.data());
  });
  Time("interpolate_grad", repeats, [&] {
    facerecon::InterpolateImageGrad(vertices.data(), z.data(), num_vertices, 1,
                                    triangles.data(), num_triangles, ids.data(), size, size,
                                    grad_out.data(), grad_z.data(), grad_vertices.data());
  });
  Time("depth_grad", repeats, [&] {
    facerecon::DepthImageGrad(vertices.data(), num_vertices, triangles.data(), num_triangles,
                              ids.data(), size, size, grad_out.data(), grad_vertices.data());
  });
  return 0;
}
