// CPU upsample: per map, convert the source to fp32 once, interpolate the h source rows
// horizontally (h*W values), then blend pairs of those rows into each output row. The
// vertical blend is a contiguous, vectorisable loop and does almost all of the work; the
// output write is the floor (4*H*W bytes per map). Grid-sample arithmetic blends the four
// corners of each output pixel instead. Built with -ffp-contract=off, so every value equals
// upsample.h's formula (blend.h, in the tables' Arith mode) bit for bit.
#include "dissect_kernels/upsample.h"

#include <algorithm>
#include <vector>

#include "dissect_kernels/blend.h"
#include "dissect_kernels/convert.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dissect_kernels {
namespace {

// acts[b, u] as row-major fp32 h x w.
void load_map(const UpsampleArgs& a, int64_t b, int64_t u, float* dst) {
  const int64_t base = b * a.acts_stride[0] + u * a.acts_stride[1];
  for (int64_t i = 0; i < a.h; ++i)
    for (int64_t j = 0; j < a.w; ++j)
      dst[i * a.w + j] = load_as_float(a.acts, base + i * a.acts_stride[2] + j * a.acts_stride[3], a.acts_dtype);
}

// One map, grid-sample arithmetic: every output pixel blends its four corners (blend.h).
void upsample_map_corners(const UpsampleArgs& a, const float* src, float* out) {
  const int64_t W = a.xtab.n, H = a.ytab.n;
  const int32_t *xi0 = a.xtab.i0, *xi1 = a.xtab.i1;
  const float *xw0 = a.xtab.w0, *xw1 = a.xtab.w1;
  for (int64_t y = 0; y < H; ++y) {
    const float* p0 = src + a.ytab.i0[y] * a.w;
    const float* p1 = src + a.ytab.i1[y] * a.w;
    const float wy0 = a.ytab.w0[y], wy1 = a.ytab.w1[y];
    float* o = out + y * W;
    for (int64_t x = 0; x < W; ++x)
      o[x] = blend_corners(wy0, wy1, xw0[x], xw1[x], p0[xi0[x]], p0[xi1[x]], p1[xi0[x]], p1[xi1[x]]);
  }
}

// One map: src (h x w fp32) -> out (H x W), `rows` is h x W scratch; separable or pillow.
void upsample_map(const UpsampleArgs& a, const float* src, float* rows, float* out, Arith arith) {
  if (arith == Arith::GridSample) return upsample_map_corners(a, src, out);
  const int64_t W = a.xtab.n, H = a.ytab.n;
  const int32_t *xi0 = a.xtab.i0, *xi1 = a.xtab.i1;
  const float *xw0 = a.xtab.w0, *xw1 = a.xtab.w1;
  const bool f64 = arith == Arith::Pillow;
  for (int64_t i = 0; i < a.h; ++i) {
    const float* p = src + i * a.w;
    float* r = rows + i * W;
    if (f64)
      for (int64_t x = 0; x < W; ++x) r[x] = blend_pair_f64(a.xtab.d0[x], a.xtab.d1[x], p[xi0[x]], p[xi1[x]]);
    else
      for (int64_t x = 0; x < W; ++x) r[x] = blend_pair(xw0[x], xw1[x], p[xi0[x]], p[xi1[x]]);
  }
  for (int64_t y = 0; y < H; ++y) {
    const float* __restrict r0 = rows + a.ytab.i0[y] * W;
    const float* __restrict r1 = rows + a.ytab.i1[y] * W;
    float* __restrict o = out + y * W;
    if (f64) {
      const double dy0 = a.ytab.d0[y], dy1 = a.ytab.d1[y];
      for (int64_t x = 0; x < W; ++x) o[x] = blend_pair_f64(dy0, dy1, r0[x], r1[x]);
    } else {
      const float wy0 = a.ytab.w0[y], wy1 = a.ytab.w1[y];
      for (int64_t x = 0; x < W; ++x) o[x] = blend_pair(wy0, wy1, r0[x], r1[x]);
    }
  }
}

}  // namespace

void upsample_cpu(const UpsampleArgs& a) {
  if (a.h < 1 || a.w < 1 || a.ytab.n < 1 || a.xtab.n < 1) throw Error("upsample_cpu: empty map");
  const Arith arith = check_arith(a.ytab, a.xtab, "upsample_cpu");
  const int64_t maps = a.B * a.U, HW = a.ytab.n * a.xtab.n;
  // Below ~1M output values per thread a team costs more than it saves (see tally.cpp).
  int64_t threads = 1;
#ifdef _OPENMP
  threads = std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), maps * HW / (int64_t(1) << 20)));
#endif
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<float> src(a.h * a.w), rows(a.h * a.xtab.n);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < maps; ++m) {
      load_map(a, m / a.U, m % a.U, src.data());
      upsample_map(a, src.data(), rows.data(), a.out + m * HW, arith);
    }
  }
}

}  // namespace dissect_kernels
