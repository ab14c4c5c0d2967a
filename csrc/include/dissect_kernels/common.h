// Shared plain-C++ types for every op: dtypes, per-axis interpolation tables, errors.
// No Python, no torch: callers pass raw pointers, shapes and element strides.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace dissect_kernels {

enum class DType : int32_t { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// How the four taps of a bilinear sample are blended (dissect_kernels/geometry.py, blend.h):
// Separable: fp32 row pass then column pass; GridSample: torch grid_sample's fp32 corner
// weights and fused multiply-add chain; Pillow: PIL's float64 passes with float64 weights d0/d1,
// rounded to fp32 after each pass.
enum class Arith : int32_t { Separable = 0, GridSample = 1, Pillow = 2 };

// One axis of a bilinear resampling, precomputed on the host: output index o reads source
// indices i0[o], i1[o] with weights w0[o], w1[o] (fp32) and d0[o], d1[o] (their float64
// values; only Arith::Pillow reads them, and they may be null otherwise). Weights are >= 0 and
// w0 + w1 <= 1 (+ rounding); out-of-range neighbours have weight 0. Both tables of a
// resampling use the same arith.
struct AxisTable {
  const int32_t* i0;
  const int32_t* i1;
  const float* w0;
  const float* w1;
  int64_t n;  // output length along this axis
  const double* d0 = nullptr;
  const double* d1 = nullptr;
  Arith arith = Arith::Separable;
};

struct Error : std::runtime_error {
  explicit Error(const std::string& what) : std::runtime_error("dissect_kernels: " + what) {}
};

}  // namespace dissect_kernels
