// Shared plain-C++ types for every op: dtypes, per-axis interpolation tables, errors.
// No Python, no torch: callers pass raw pointers, shapes and element strides.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace dissect_kernels {

enum class DType : int32_t { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// One axis of a separable bilinear resampling, precomputed on the host (in float64, then
// rounded): output index o reads source indices i0[o], i1[o] with weights w0[o], w1[o].
// Weights are >= 0 and w0 + w1 <= 1 (+ rounding); out-of-range neighbours have weight 0.
struct AxisTable {
  const int32_t* i0;
  const int32_t* i1;
  const float* w0;
  const float* w1;
  int64_t n;  // output length along this axis
};

struct Error : std::runtime_error {
  explicit Error(const std::string& what) : std::runtime_error("dissect_kernels: " + what) {}
};

}  // namespace dissect_kernels
