// XLA FFI custom call: the CPU depth rasterizer (see rasterize.h).
//
//   vertices  f32 [..., N, 3]   image coordinates, larger z nearer
//   triangles s32 [..., T, 3]   leading dims multiply to 1 (shared) or to the
//                               vertices' batch (one topology per image)
// -> ids       s32 [..., H, W]
//    bary      f32 [..., H, W, 3]
//    depth     f32 [..., H, W]
//
// Images of a batch are spread over XLA's intra-op thread pool; the calling
// thread works too, so the call finishes even if no pool thread is free.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
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
  std::atomic<int64_t> bad_triangle{-1};
  std::mutex mutex;
  std::condition_variable all_finished;
};

ffi::Error RasterizeCpu(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> vertices,
                        ffi::Buffer<ffi::S32> triangles,
                        ffi::ResultBuffer<ffi::S32> ids,
                        ffi::ResultBuffer<ffi::F32> barycentric,
                        ffi::ResultBuffer<ffi::F32> depth) {
  const auto vdims = vertices.dimensions();
  const auto tdims = triangles.dimensions();
  const auto idims = ids->dimensions();
  if (vdims.size() < 2 || vdims.back() != 3) {
    return ffi::Error::InvalidArgument("rasterize: vertices must be [..., N, 3]");
  }
  if (tdims.size() < 2 || tdims.back() != 3) {
    return ffi::Error::InvalidArgument("rasterize: triangles must be [..., T, 3]");
  }
  if (idims.size() < 2) {
    return ffi::Error::InvalidArgument("rasterize: outputs must be [..., H, W]");
  }
  const int64_t batch = Product(vdims, 0, vdims.size() - 2);
  const int64_t num_vertices = vdims[vdims.size() - 2];
  const int64_t triangle_batch = Product(tdims, 0, tdims.size() - 2);
  const int64_t num_triangles = tdims[tdims.size() - 2];
  const int64_t height = idims[idims.size() - 2];
  const int64_t width = idims[idims.size() - 1];
  if (Product(idims, 0, idims.size() - 2) != batch) {
    return ffi::Error::InvalidArgument("rasterize: output batch differs from vertices'");
  }
  if (triangle_batch != 1 && triangle_batch != batch) {
    return ffi::Error::InvalidArgument(
        "rasterize: triangles' leading dims must be 1 or the vertices' batch");
  }
  if (num_triangles > 0x7fffffff || height * width > 0x7fffffff) {
    return ffi::Error::InvalidArgument("rasterize: more than 2^31 triangles or pixels");
  }
  const int64_t pixels = height * width;
  const float* vertex_data = vertices.typed_data();
  const int32_t* triangle_data = triangles.typed_data();
  int32_t* id_data = ids->typed_data();
  float* bary_data = barycentric->typed_data();
  float* depth_data = depth->typed_data();

  auto job = std::make_shared<BatchJob>();
  auto work = [=]() {
    std::vector<uint64_t> keys;
    std::vector<facerecon::PixelBounds> bounds;
    std::vector<facerecon::Candidate> candidates;
    for (int64_t b; (b = job->next.fetch_add(1)) < batch;) {
      if (keys.empty()) {  // Allocated once per worker, only if it gets work.
        keys.resize(std::max<int64_t>(pixels, 1));
        bounds.resize(std::max<int64_t>(num_vertices, 1));
        candidates.resize(std::max<int64_t>(num_triangles, 1));
      }
      const int64_t bad = facerecon::RasterizeImage(
          vertex_data + b * num_vertices * 3, num_vertices,
          triangle_data + (triangle_batch == 1 ? 0 : b) * num_triangles * 3,
          num_triangles, static_cast<int>(height), static_cast<int>(width),
          {keys.data(), bounds.data(), candidates.data()}, id_data + b * pixels,
          bary_data + b * pixels * 3, depth_data + b * pixels);
      if (bad >= 0) {
        int64_t none = -1;
        job->bad_triangle.compare_exchange_strong(none, bad);
      }
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
  {
    std::unique_lock<std::mutex> lock(job->mutex);
    job->all_finished.wait(lock, [&] { return job->finished.load() >= batch; });
  }
  if (job->bad_triangle.load() >= 0) {
    return ffi::Error::InvalidArgument(
        "rasterize: triangle " + std::to_string(job->bad_triangle.load()) +
        " has a vertex index outside [0, " + std::to_string(num_vertices) + ")");
  }
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
