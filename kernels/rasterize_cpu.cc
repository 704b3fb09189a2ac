// XLA FFI custom calls for the CPU backend (the math is in rasterize.h).
//
// FaceReconRasterizeCpu
//   vertices   f32 [..., N, 3]   image coordinates, larger z nearer
//   triangles  s32 [..., T, 3]   leading dims multiply to 1 (shared) or to the
//                                vertices' batch (one topology per image)
//   -> ids s32 [..., H, W], barycentric f32 [..., H, W, 3], depth f32 [..., H, W]
// FaceReconInterpolateCpu
//   attributes f32 [..., N, C], vertices, ids, triangles -> out f32 [..., H, W, C]
// FaceReconInterpolateGradCpu
//   attributes, vertices, ids, triangles, grad_out f32 [..., H, W, C]
//   -> grad_attributes f32 [..., N, C], grad_vertices f32 [..., N, 3]
// FaceReconDepthGradCpu
//   vertices, ids, triangles, grad_depth f32 [..., H, W]
//   -> grad_vertices f32 [..., N, 3]   (backward of the interpolated z)
//
// Images of a batch are spread over XLA's intra-op thread pool; the calling
// thread works too, so a call finishes even if no pool thread is free.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "rasterize.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

int64_t Product(ffi::Span<const int64_t> dims, size_t begin, size_t end) {
  int64_t n = 1;
  for (size_t i = begin; i < end; ++i) n *= dims[i];
  return n;
}

// Shared by the caller and pool tasks; a task that starts after the call
// returned finds no image left and touches nothing but this.
struct BatchJob {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
  std::mutex mutex;
  std::condition_variable all_finished;
};

// Runs image(b) for b in [0, batch) on the pool and the calling thread.
// `make_worker` is called once per participating thread and returns that
// thread's per-image function (so scratch memory is per thread).
void ParallelForBatch(ffi::ThreadPool& pool, int64_t batch,
                      std::function<std::function<void(int64_t)>()> make_worker) {
  auto job = std::make_shared<BatchJob>();
  auto work = [job, batch, make_worker]() {
    std::function<void(int64_t)> image;
    for (int64_t b; (b = job->next.fetch_add(1)) < batch;) {
      if (!image) image = make_worker();  // only threads that get work allocate
      image(b);
      if (job->finished.fetch_add(1) + 1 == batch) {
        std::lock_guard<std::mutex> lock(job->mutex);
        job->all_finished.notify_all();
      }
    }
  };
  const int64_t helpers =
      std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), batch) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(job->mutex);
  job->all_finished.wait(lock, [&] { return job->finished.load() >= batch; });
}

// Shapes shared by the three calls, checked once.
struct Geometry {
  int64_t batch, num_vertices, triangle_batch, num_triangles, height, width;
};

ffi::Error CheckGeometry(const char* op, ffi::Span<const int64_t> vdims,
                         ffi::Span<const int64_t> tdims,
                         ffi::Span<const int64_t> idims, Geometry* g) {
  const std::string name(op);
  if (vdims.size() < 2 || vdims.back() != 3) {
    return ffi::Error::InvalidArgument(name + ": vertices must be [..., N, 3]");
  }
  if (tdims.size() < 2 || tdims.back() != 3) {
    return ffi::Error::InvalidArgument(name + ": triangles must be [..., T, 3]");
  }
  if (idims.size() < 2) {
    return ffi::Error::InvalidArgument(name + ": images must be [..., H, W]");
  }
  g->batch = Product(vdims, 0, vdims.size() - 2);
  g->num_vertices = vdims[vdims.size() - 2];
  g->triangle_batch = Product(tdims, 0, tdims.size() - 2);
  g->num_triangles = tdims[tdims.size() - 2];
  g->height = idims[idims.size() - 2];
  g->width = idims[idims.size() - 1];
  if (Product(idims, 0, idims.size() - 2) != g->batch) {
    return ffi::Error::InvalidArgument(name + ": image batch differs from the vertices'");
  }
  if (g->triangle_batch != 1 && g->triangle_batch != g->batch) {
    return ffi::Error::InvalidArgument(
        name + ": triangles' leading dims must be 1 or the vertices' batch");
  }
  if (g->num_triangles > 0x7fffffff || g->height > facerecon::kMaxImageSide ||
      g->width > facerecon::kMaxImageSide) {
    return ffi::Error::InvalidArgument(
        name + ": more than 2^31 triangles, or an image side over " +
        std::to_string(facerecon::kMaxImageSide));
  }
  return ffi::Error::Success();
}

// Scratch memory per thread, kept across calls: XLA's pool threads live as
// long as the process, and fresh allocations each call cost page faults.
facerecon::Scratch ThreadScratch(int64_t pixels, int64_t num_vertices, int64_t num_triangles) {
  thread_local facerecon::ScratchArena arena;
  return arena.Get(pixels, num_vertices, num_triangles);
}

const int32_t* ImageTriangles(const Geometry& g, const int32_t* triangles, int64_t b) {
  return triangles + (g.triangle_batch == 1 ? 0 : b) * g.num_triangles * 3;
}

ffi::Error RasterizeCpu(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> vertices,
                        ffi::Buffer<ffi::S32> triangles,
                        ffi::ResultBuffer<ffi::S32> ids,
                        ffi::ResultBuffer<ffi::F32> barycentric,
                        ffi::ResultBuffer<ffi::F32> depth) {
  Geometry g;
  if (auto error = CheckGeometry("rasterize", vertices.dimensions(),
                                 triangles.dimensions(), ids->dimensions(), &g);
      error.failure()) {
    return error;
  }
  const int64_t pixels = g.height * g.width;
  const float* vertex_data = vertices.typed_data();
  const int32_t* triangle_data = triangles.typed_data();
  int32_t* id_data = ids->typed_data();
  float* bary_data = barycentric->typed_data();
  float* depth_data = depth->typed_data();
  std::atomic<int64_t> bad_triangle{-1};
  ParallelForBatch(pool, g.batch, [&]() -> std::function<void(int64_t)> {
    const facerecon::Scratch scratch = ThreadScratch(pixels, g.num_vertices, g.num_triangles);
    return [=, &g, &bad_triangle](int64_t b) {
      const int64_t bad = facerecon::RasterizeImage(
          vertex_data + b * g.num_vertices * 3, g.num_vertices,
          ImageTriangles(g, triangle_data, b), g.num_triangles,
          static_cast<int>(g.height), static_cast<int>(g.width), scratch,
          id_data + b * pixels, bary_data + b * pixels * 3, depth_data + b * pixels);
      if (bad >= 0) {
        int64_t none = -1;
        bad_triangle.compare_exchange_strong(none, bad);
      }
    };
  });
  if (bad_triangle.load() >= 0) {
    return ffi::Error::InvalidArgument(
        "rasterize: triangle " + std::to_string(bad_triangle.load()) +
        " has a vertex index outside [0, " + std::to_string(g.num_vertices) + ")");
  }
  return ffi::Error::Success();
}

// Shapes of an interpolate call: the geometry plus C, the attribute channels.
ffi::Error CheckInterpolate(const ffi::Buffer<ffi::F32>& attributes,
                            const ffi::Buffer<ffi::F32>& vertices,
                            const ffi::Buffer<ffi::S32>& ids,
                            const ffi::Buffer<ffi::S32>& triangles, Geometry* g,
                            int64_t* channels) {
  if (auto error = CheckGeometry("interpolate", vertices.dimensions(),
                                 triangles.dimensions(), ids.dimensions(), g);
      error.failure()) {
    return error;
  }
  *channels = attributes.dimensions().back();
  if (static_cast<int64_t>(attributes.element_count()) !=
      g->batch * g->num_vertices * *channels) {
    return ffi::Error::InvalidArgument("interpolate: attributes must be [..., N, C]");
  }
  return ffi::Error::Success();
}

ffi::Error InterpolateCpu(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> attributes,
                          ffi::Buffer<ffi::F32> vertices, ffi::Buffer<ffi::S32> ids,
                          ffi::Buffer<ffi::S32> triangles,
                          ffi::ResultBuffer<ffi::F32> out) {
  Geometry g;
  int64_t channels;
  if (auto error = CheckInterpolate(attributes, vertices, ids, triangles, &g, &channels);
      error.failure()) {
    return error;
  }
  const int64_t pixels = g.height * g.width;
  const float* a = attributes.typed_data();
  const float* v = vertices.typed_data();
  const int32_t* i = ids.typed_data();
  const int32_t* t = triangles.typed_data();
  float* o = out->typed_data();
  ParallelForBatch(pool, g.batch, [&]() -> std::function<void(int64_t)> {
    return [=, &g](int64_t b) {
      facerecon::InterpolateImage(v + b * g.num_vertices * 3, a + b * g.num_vertices * channels,
                                  g.num_vertices, channels, ImageTriangles(g, t, b),
                                  g.num_triangles, i + b * pixels, static_cast<int>(g.height),
                                  static_cast<int>(g.width), o + b * pixels * channels);
    };
  });
  return ffi::Error::Success();
}

ffi::Error InterpolateGradCpu(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> attributes,
                              ffi::Buffer<ffi::F32> vertices, ffi::Buffer<ffi::S32> ids,
                              ffi::Buffer<ffi::S32> triangles,
                              ffi::Buffer<ffi::F32> grad_out,
                              ffi::ResultBuffer<ffi::F32> grad_attributes,
                              ffi::ResultBuffer<ffi::F32> grad_vertices) {
  Geometry g;
  int64_t channels;
  if (auto error = CheckInterpolate(attributes, vertices, ids, triangles, &g, &channels);
      error.failure()) {
    return error;
  }
  const int64_t pixels = g.height * g.width;
  if (static_cast<int64_t>(grad_out.element_count()) != g.batch * pixels * channels) {
    return ffi::Error::InvalidArgument("interpolate: gradient must be [..., H, W, C]");
  }
  const float* a = attributes.typed_data();
  const float* v = vertices.typed_data();
  const int32_t* i = ids.typed_data();
  const int32_t* t = triangles.typed_data();
  const float* go = grad_out.typed_data();
  float* ga = grad_attributes->typed_data();
  float* gv = grad_vertices->typed_data();
  ParallelForBatch(pool, g.batch, [&]() -> std::function<void(int64_t)> {
    return [=, &g](int64_t b) {
      facerecon::InterpolateImageGrad(
          v + b * g.num_vertices * 3, a + b * g.num_vertices * channels, g.num_vertices,
          channels, ImageTriangles(g, t, b), g.num_triangles, i + b * pixels,
          static_cast<int>(g.height), static_cast<int>(g.width), go + b * pixels * channels,
          ga + b * g.num_vertices * channels, gv + b * g.num_vertices * 3);
    };
  });
  return ffi::Error::Success();
}

ffi::Error DepthGradCpu(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> vertices,
                        ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::S32> triangles,
                        ffi::Buffer<ffi::F32> grad_depth,
                        ffi::ResultBuffer<ffi::F32> grad_vertices) {
  Geometry g;
  if (auto error = CheckGeometry("depth gradient", vertices.dimensions(),
                                 triangles.dimensions(), ids.dimensions(), &g);
      error.failure()) {
    return error;
  }
  const int64_t pixels = g.height * g.width;
  if (static_cast<int64_t>(grad_depth.element_count()) != g.batch * pixels) {
    return ffi::Error::InvalidArgument("depth gradient: gradient must be [..., H, W]");
  }
  const float* v = vertices.typed_data();
  const int32_t* i = ids.typed_data();
  const int32_t* t = triangles.typed_data();
  const float* gd = grad_depth.typed_data();
  float* gv = grad_vertices->typed_data();
  ParallelForBatch(pool, g.batch, [&]() -> std::function<void(int64_t)> {
    return [=, &g](int64_t b) {
      facerecon::DepthImageGrad(v + b * g.num_vertices * 3, g.num_vertices,
                                ImageTriangles(g, t, b), g.num_triangles, i + b * pixels,
                                static_cast<int>(g.height), static_cast<int>(g.width),
                                gd + b * pixels, gv + b * g.num_vertices * 3);
    };
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FaceReconRasterizeCpu, RasterizeCpu,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FaceReconInterpolateCpu, InterpolateCpu,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FaceReconInterpolateGradCpu, InterpolateGradCpu,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FaceReconDepthGradCpu, DepthGradCpu,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
