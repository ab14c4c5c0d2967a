// Bilinear axis tables (see geometry.h), operation for operation as geometry.py's axis_table:
// x = scale * i + offset in double, clipped for clamp/border, floor, w1 = x - x0, w0 = 1 - w1,
// zero weight for taps outside the map with boundary Zero, indices clipped, one rounding each.
#include "dissect_kernels/geometry.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace dissect_kernels {

void axis_table_affine(double scale, double offset, int64_t n_src, int64_t n_dst, Boundary boundary,
                       int32_t* i0, int32_t* i1, float* w0, float* w1) {
  if (n_src < 1 || n_dst < 1)
    throw Error("axis sizes must be >= 1, got source " + std::to_string(n_src) + ", target " + std::to_string(n_dst));
  if (n_src > INT32_MAX) throw Error("axis source size must fit in int32");
  if (!std::isfinite(scale) || !std::isfinite(offset)) throw Error("geometry scale/offset must be finite");
  if (boundary != Boundary::Clamp && boundary != Boundary::Zero && boundary != Boundary::Border)
    throw Error("geometry boundary must be clamp (0), zero (1) or border (2)");
  const double last = static_cast<double>(n_src - 1);
  for (int64_t o = 0; o < n_dst; ++o) {
    double x = scale * static_cast<double>(o) + offset;
    if (boundary != Boundary::Zero) x = std::min(std::max(x, 0.0), last);
    const double x0 = std::floor(x);
    double hi = x - x0;
    double lo = 1.0 - hi;
    // x0 may lie far outside int64 for wild affine maps: clip in double first (as the clip below)
    const double lo_i = std::min(std::max(x0, -2.0), last + 1.0);
    const int64_t a = static_cast<int64_t>(lo_i), b = a + 1;
    if (boundary == Boundary::Zero) {
      if (!(x0 >= 0.0 && x0 <= last)) lo = 0.0;
      if (!(x0 + 1.0 >= 0.0 && x0 + 1.0 <= last)) hi = 0.0;
    }
    i0[o] = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(a, 0), n_src - 1));
    i1[o] = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(b, 0), n_src - 1));
    w0[o] = static_cast<float>(lo);
    w1[o] = static_cast<float>(hi);
  }
}

void half_pixel_map(int64_t n_src, int64_t n_dst, double* scale, double* offset) {
  *scale = static_cast<double>(n_src) / static_cast<double>(n_dst);
  *offset = 0.5 * *scale - 0.5;
}

void align_corners_map(int64_t n_src, int64_t n_dst, double* scale, double* offset) {
  *scale = n_dst > 1 ? static_cast<double>(n_src - 1) / static_cast<double>(n_dst - 1) : 0.0;
  *offset = 0.0;
}

}  // namespace dissect_kernels
