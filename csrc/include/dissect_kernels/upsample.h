// upsample: the tally's bilinear resampling, materialised (exemplar masks, quantiles of
// upsampled maps, visualisation). For every map (b, u) and output pixel (y, x):
//   r0 = wx0[x]*a[b,u,iy0[y],ix0[x]] + wx1[x]*a[b,u,iy0[y],ix1[x]]   (fp32, this order, no FMA)
//   r1 = wx0[x]*a[b,u,iy1[y],ix0[x]] + wx1[x]*a[b,u,iy1[y],ix1[x]]
//   out[b,u,y,x] = wy0[y]*r0 + wy1[y]*r1
// exactly the value tally.h compares with the threshold, so thresholding `out` with `>`
// reproduces the tally's active pixels bit for bit.
#pragma once
#include "dissect_kernels/common.h"

namespace dissect_kernels {

struct UpsampleArgs {
  const void* acts = nullptr;  // [B, U, h, w], element strides below (any layout)
  DType acts_dtype = DType::Float32;
  int64_t B = 0, U = 0, h = 0, w = 0;
  int64_t acts_stride[4] = {0, 0, 0, 0};
  AxisTable ytab{}, xtab{};  // ytab.n == H, xtab.n == W; indices in [0, h) and [0, w)
  float* out = nullptr;      // [B, U, H, W] contiguous fp32, written
};

// CPU (OpenMP over maps) implementation.
void upsample_cpu(const UpsampleArgs& args);
// CUDA implementation; pointers are device pointers, stream is a cudaStream_t (0 = default).
void upsample_cuda(const UpsampleArgs& args, std::intptr_t stream);

}  // namespace dissect_kernels
