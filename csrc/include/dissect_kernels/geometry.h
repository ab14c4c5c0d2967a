// geometry: the per-axis bilinear tables (AxisTable in common.h) for an affine map
// x_src = scale * x_dst + offset and a boundary policy, computed exactly as
// dissect_kernels/geometry.py's axis_table does (float64, rounded once to int32 / float32), so
// a C or C++ caller gets the tables the Python API builds for the same geometry.
#pragma once
#include <cstdint>

#include "dissect_kernels/common.h"

namespace dissect_kernels {

enum class Boundary : int32_t { Clamp = 0, Zero = 1, Border = 2 };

// Fill i0, i1 (int32) and w0, w1 (float32), each of n_dst entries. Throws Error on sizes < 1,
// non-finite scale/offset or an unknown boundary.
void axis_table_affine(double scale, double offset, int64_t n_src, int64_t n_dst, Boundary boundary,
                       int32_t* i0, int32_t* i1, float* w0, float* w1);
// The named presets' (scale, offset) for one axis: "half-pixel" (clamp), "align-corners"
// (clamp), "zero-pad" (the half-pixel map with boundary Zero).
void half_pixel_map(int64_t n_src, int64_t n_dst, double* scale, double* offset);
void align_corners_map(int64_t n_src, int64_t n_dst, double* scale, double* offset);

}  // namespace dissect_kernels
