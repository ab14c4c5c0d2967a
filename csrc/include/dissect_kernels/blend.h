// blend: the arithmetic of one bilinear sample, shared by the CPU and CUDA kernels (and
// written out the same way in reference/upsample.py and triton/blend.py), one function per
// Arith mode (common.h; the modes are described in dissect_kernels/geometry.py). Host code is
// built with -ffp-contract=off; device code spells every rounding with an intrinsic, so
// `a*b + c` rounds twice whatever the flags and only the grid-sample chain's fmaf is fused.
#pragma once
#include <cmath>
#include <string>

#include "dissect_kernels/common.h"

#if defined(__CUDACC__)
#define DK_BLEND_FN __host__ __device__ __forceinline__
#else
#define DK_BLEND_FN inline
#endif

namespace dissect_kernels {
namespace blend_ops {
#if defined(__CUDA_ARCH__)
DK_BLEND_FN float mul(float a, float b) { return __fmul_rn(a, b); }
DK_BLEND_FN float add(float a, float b) { return __fadd_rn(a, b); }
DK_BLEND_FN float fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
DK_BLEND_FN double mul(double a, double b) { return __dmul_rn(a, b); }
DK_BLEND_FN double add(double a, double b) { return __dadd_rn(a, b); }
DK_BLEND_FN float to_float(double a) { return __double2float_rn(a); }
#else
DK_BLEND_FN float mul(float a, float b) { return a * b; }
DK_BLEND_FN float add(float a, float b) { return a + b; }
DK_BLEND_FN float fma(float a, float b, float c) { return std::fmaf(a, b, c); }
DK_BLEND_FN double mul(double a, double b) { return a * b; }
DK_BLEND_FN double add(double a, double b) { return a + b; }
DK_BLEND_FN float to_float(double a) { return static_cast<float>(a); }
#endif
}  // namespace blend_ops

// Separable fp32: one pass over a pair of taps (rows first, then the vertical pair).
DK_BLEND_FN float blend_pair(float w0, float w1, float a, float b) {
  return blend_ops::add(blend_ops::mul(w0, a), blend_ops::mul(w1, b));
}

// Pillow: a pair of taps summed in float64 with float64 weights, rounded once to fp32.
DK_BLEND_FN float blend_pair_f64(double d0, double d1, float a, float b) {
  using namespace blend_ops;
  return to_float(add(mul(static_cast<double>(a), d0), mul(static_cast<double>(b), d1)));
}

// grid_sample (torch CPU AVX2 and CUDA): corner weights fl(wy*wx), then the fused chain over
// nw, ne, sw, se = (y0, x0), (y0, x1), (y1, x0), (y1, x1).
DK_BLEND_FN float blend_corners(float wy0, float wy1, float wx0, float wx1, float a00, float a01,
                                float a10, float a11) {
  using namespace blend_ops;
  const float v = mul(a00, mul(wy0, wx0));
  return fma(a11, mul(wy1, wx1), fma(a10, mul(wy1, wx0), fma(a01, mul(wy0, wx1), v)));
}

// One sample in mode M from its four taps, fp32 weights w and float64 weights d.
template <Arith M>
DK_BLEND_FN float blend_sample(float a00, float a01, float a10, float a11, float wy0, float wy1,
                               float wx0, float wx1, double dy0, double dy1, double dx0, double dx1) {
  if (M == Arith::GridSample) return blend_corners(wy0, wy1, wx0, wx1, a00, a01, a10, a11);
  if (M == Arith::Pillow)
    return blend_pair_f64(dy0, dy1, blend_pair_f64(dx0, dx1, a00, a01), blend_pair_f64(dx0, dx1, a10, a11));
  return blend_pair(wy0, wy1, blend_pair(wx0, wx1, a00, a01), blend_pair(wx0, wx1, a10, a11));
}

// The resampling's Arith mode after checking the pair of tables agrees (host side).
inline Arith check_arith(const AxisTable& y, const AxisTable& x, const char* who) {
  const int32_t m = static_cast<int32_t>(y.arith);
  if (y.arith != x.arith || m < 0 || m > 2)
    throw Error(std::string(who) + ": the y and x tables must use one arithmetic mode 0..2, got " +
                std::to_string(m) + " and " + std::to_string(static_cast<int32_t>(x.arith)));
  if (y.arith == Arith::Pillow && (!y.d0 || !y.d1 || !x.d0 || !x.d1))
    throw Error(std::string(who) + ": Arith::Pillow needs the float64 weights d0, d1 of both tables");
  return y.arith;
}

}  // namespace dissect_kernels
