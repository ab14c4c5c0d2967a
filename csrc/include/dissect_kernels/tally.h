// tally: fused upsample -> threshold -> intersect, one pass; nothing upsampled is stored.
//
// For every image b, unit u and output pixel (y, x):
//   r0 = wx0[x]*a[b,u,iy0[y],ix0[x]] + wx1[x]*a[b,u,iy0[y],ix1[x]]   (fp32, this order, no FMA)
//   r1 = wx0[x]*a[b,u,iy1[y],ix0[x]] + wx1[x]*a[b,u,iy1[y],ix1[x]]
//   v  = wy0[y]*r0 + wy1[y]*r1 ;  active = v > thresholds[u]
// and for an active pixel, every concept c > 0 present at (y, x) in a label layer (image-level
// labels cover every pixel) adds 1 to intersection[u, c]: once per pixel when per_layer is
// false ("any layer"), once per layer holding c when per_layer is true.
#pragma once
#include "dissect_kernels/common.h"

namespace dissect_kernels {

struct TallyArgs {
  // inputs
  const void* acts = nullptr;   // [B, U, h, w], element strides below
  DType acts_dtype = DType::Float32;
  int64_t B = 0, U = 0, h = 0, w = 0;
  int64_t acts_stride[4] = {0, 0, 0, 0};
  const float* thresholds = nullptr;   // [U]
  const int32_t* labels = nullptr;     // [B, L, H, W] contiguous, ids in [0, C)
  int64_t L = 0, H = 0, W = 0;
  const int32_t* image_labels = nullptr;  // [B, M] contiguous or null; ids in [0, C)
  int64_t M = 0;
  AxisTable ytab{}, xtab{};           // ytab.n == H, xtab.n == W
  int64_t C = 0;                      // number of concepts
  bool per_layer = false;
  const int32_t* category_of = nullptr;  // [C] category index in [0, K), or null: no `touched`
  int64_t K = 0;
  // outputs
  int64_t* intersection = nullptr;  // [U, C], accumulated (+=)
  int64_t* active = nullptr;        // [B, U], written
  float* max = nullptr;             // [B, U], written: max of the source map acts[b, u]
  uint8_t* touched = nullptr;       // [B, U, K], written (0/1), only with category_of
};

// CPU (OpenMP) implementation.
void tally_cpu(const TallyArgs& args);
// CUDA implementation; pointers are device pointers, stream is a cudaStream_t (0 = default).
void tally_cuda(const TallyArgs& args, std::intptr_t stream);

}  // namespace dissect_kernels
