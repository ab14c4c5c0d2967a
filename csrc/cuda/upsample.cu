// CUDA upsample: one thread per output value, a 2-D grid of (pixel blocks, maps). The four
// taps come from a tiny map that stays in L1; the coalesced fp32 output write is the floor.
// The blend (blend.h, one kernel per Arith mode) spells every rounding with an intrinsic, so
// values equal upsample.h's formula (and the tally's) bit for bit whatever the flags.
#include <cuda_runtime.h>

#include <algorithm>

#include "device_guard.cuh"
#include "dissect_kernels/blend.h"
#include "dissect_kernels/convert.h"
#include "dissect_kernels/upsample.h"

namespace dissect_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

template <Arith M>
__global__ void __launch_bounds__(kThreads) upsample_kernel(const UpsampleArgs a, int64_t map0) {
  const int64_t m = map0 + blockIdx.y;
  const int64_t W = a.xtab.n, HW = a.ytab.n * W;
  const int64_t base = (m / a.U) * a.acts_stride[0] + (m % a.U) * a.acts_stride[1];
  const int64_t sy = a.acts_stride[2], sx = a.acts_stride[3];
  float* out = a.out + m * HW;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; p < HW;
       p += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t y = p / W, x = p - y * W;
    const int64_t r0 = base + __ldg(a.ytab.i0 + y) * sy, r1 = base + __ldg(a.ytab.i1 + y) * sy;
    const int64_t c0 = __ldg(a.xtab.i0 + x) * sx, c1 = __ldg(a.xtab.i1 + x) * sx;
    double dy0 = 0, dy1 = 0, dx0 = 0, dx1 = 0;
    if (M == Arith::Pillow) {
      dy0 = __ldg(a.ytab.d0 + y); dy1 = __ldg(a.ytab.d1 + y);
      dx0 = __ldg(a.xtab.d0 + x); dx1 = __ldg(a.xtab.d1 + x);
    }
    out[p] = blend_sample<M>(load_as_float(a.acts, r0 + c0, a.acts_dtype), load_as_float(a.acts, r0 + c1, a.acts_dtype),
                             load_as_float(a.acts, r1 + c0, a.acts_dtype), load_as_float(a.acts, r1 + c1, a.acts_dtype),
                             __ldg(a.ytab.w0 + y), __ldg(a.ytab.w1 + y), __ldg(a.xtab.w0 + x), __ldg(a.xtab.w1 + x),
                             dy0, dy1, dx0, dx1);
  }
}

}  // namespace

void upsample_cuda(const UpsampleArgs& a, std::intptr_t stream) {
  constexpr const char* kOp = "upsample_cuda";
  cuda_util::require_device(kOp);
  const int64_t maps = a.B * a.U, HW = a.ytab.n * a.xtab.n;
  if (maps == 0 || HW == 0) return;
  if (a.h < 1 || a.w < 1) throw Error("upsample_cuda: empty map");
  const Arith arith = check_arith(a.ytab, a.xtab, kOp);
  const int device = cuda_util::device_of(a.acts);
  for (const void* p : {a.acts, static_cast<const void*>(a.out), static_cast<const void*>(a.ytab.i0),
                        static_cast<const void*>(a.xtab.w0)})
    if (device < 0 || cuda_util::device_of(p) != device)
      throw Error("upsample_cuda: inputs, tables and output must be CUDA device memory on one device");
  cuda_util::DeviceGuard guard(device, kOp);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const unsigned blocks_x = static_cast<unsigned>(std::min<int64_t>((HW + kThreads - 1) / kThreads, 1 << 16));
  for (int64_t m0 = 0; m0 < maps; m0 += kMaxGridY) {
    const dim3 grid(blocks_x, static_cast<unsigned>(std::min<int64_t>(kMaxGridY, maps - m0)));
    if (arith == Arith::GridSample)
      upsample_kernel<Arith::GridSample><<<grid, kThreads, 0, s>>>(a, m0);
    else if (arith == Arith::Pillow)
      upsample_kernel<Arith::Pillow><<<grid, kThreads, 0, s>>>(a, m0);
    else
      upsample_kernel<Arith::Separable><<<grid, kThreads, 0, s>>>(a, m0);
    cuda_util::check(cudaGetLastError(), kOp, "kernel launch failed");
  }
}

}  // namespace dissect_kernels
