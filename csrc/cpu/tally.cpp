// CPU tally: per (image, unit) load the small source map, prove whole maps, output rows and
// column segments inactive with a rigorous upper bound, interpolate only what survives, and
// count labels under the active pixels. Work scales with the active region, not B*U*H*W.
//
// Results are bit-identical to the formula in tally.h: surviving pixels are computed exactly
// as written there (blend.h, in the tables' Arith mode; built with -ffp-contract=off), and
// the skips only drop pixels that provably cannot satisfy v > t.
//
// The bound (why skipping is exact). Let u = 2^-24 (fp32 unit roundoff) and fl() an fp32
// operation. For any fp32 p, q and weights w >= 0: fl(w*p) = w*p*(1+d) + e with |d| <= u and
// |e| <= 2^-150 (underflow), and fl(p+q) likewise without e. Hence for one tap pair
//   fl(fl(w0*p) + fl(w1*q)) <= w0*p + w1*q + 3u*(w0*|p| + w1*|q|) + 2^-148.
// Horizontal pass on source row i (max M_i, max-abs A_i): w0*p + w1*q <= s*M_i with
// s = w0 + w1 in [Sx_min, Sx_max] (the table's extremes, exact in double), which is linear in
// s, so every horizontally interpolated value r on row i satisfies
//   r <= R_i = max(Sx_max*M_i, Sx_min*M_i) + 3u*Sx_max*A_i + tiny,
//   |r| <= A'_i = Sx_max*A_i*(1 + 3u) + tiny.
// Vertical pass of output row y (rows i0, i1, weights wy0, wy1 >= 0):
//   v <= wy0*R_i0 + wy1*R_i1 + 3u*(wy0*A'_i0 + wy1*A'_i1) + tiny.
// If that is <= t, no pixel of row y is active (v > t is false). The same holds with M_i, A_i
// taken over only the source columns a column segment reads (segment test), and with the
// map's max M / max-abs A in place of the row values and [Sy_min, Sy_max] for wy0 + wy1
// (whole-map test).
// The other arithmetic modes stay inside the same 6u of slack: the grid-sample chain rounds
// each term at most 5 times (corner weight, product, three fused adds), and the pillow passes
// round twice to fp32 (float64 sums add ~2^-52) plus < 2u for the fp32 weights the bound uses
// in place of the float64 ones.
// For clamp tables (s = 1 up to ~1e-7) this is ~ M + 1e-6*|M|; with zero padding
// (s in [0, 1]) ~ max(M, 0) + .... The bound is evaluated in double (error ~2^-53, far inside
// the 3u slack); `tiny` = 1e-40 covers underflow. Skipping is disabled when a table holds a
// negative or non-finite weight, and for a map holding a non-finite value (inf*0 = NaN etc.).
#include "dissect_kernels/tally.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "dissect_kernels/blend.h"
#include "dissect_kernels/convert.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dissect_kernels {
namespace {

constexpr double kU3 = 3.0 * 5.9604644775390625e-08;  // 3 * 2^-24
constexpr double kTiny = 1e-40;

struct WeightRange {
  double smin = 0, smax = 0;
  bool ok = true;  // every weight finite and >= 0
};

WeightRange weight_range(const AxisTable& t) {
  WeightRange r{std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(), true};
  for (int64_t o = 0; o < t.n; ++o) {
    double w0 = t.w0[o], w1 = t.w1[o];
    if (!(w0 >= 0.0 && w1 >= 0.0 && std::isfinite(w0) && std::isfinite(w1))) r.ok = false;
    r.smin = std::min(r.smin, w0 + w1);
    r.smax = std::max(r.smax, w0 + w1);
  }
  return r;
}

// Upper bound of s*m for s in [smin, smax] (linear in s, so at an end).
inline double scaled_max(double m, const WeightRange& s) { return std::max(s.smax * m, s.smin * m); }

// Load acts[b, u] into `src` (row-major h x w) and return false if any value is non-finite.
inline bool load_map(const TallyArgs& a, int64_t b, int64_t u, float* src, float& mx, float& mn) {
  const int64_t base = b * a.acts_stride[0] + u * a.acts_stride[1];
  mx = -INFINITY;
  mn = INFINITY;
  for (int64_t i = 0; i < a.h; ++i) {
    const int64_t rowoff = base + i * a.acts_stride[2];
    float* dst = src + i * a.w;
    switch (a.acts_dtype) {
      case DType::Float16: {
        const uint16_t* p = static_cast<const uint16_t*>(a.acts) + rowoff;
        for (int64_t j = 0; j < a.w; ++j) dst[j] = half_to_float(p[j * a.acts_stride[3]]);
        break;
      }
      case DType::BFloat16: {
        const uint16_t* p = static_cast<const uint16_t*>(a.acts) + rowoff;
        for (int64_t j = 0; j < a.w; ++j) dst[j] = bfloat16_to_float(p[j * a.acts_stride[3]]);
        break;
      }
      default: {
        const float* p = static_cast<const float*>(a.acts) + rowoff;
        for (int64_t j = 0; j < a.w; ++j) dst[j] = p[j * a.acts_stride[3]];
      }
    }
    for (int64_t j = 0; j < a.w; ++j) {
      mx = std::max(mx, dst[j]);
      mn = std::min(mn, dst[j]);
    }
  }
  return std::isfinite(mx) && std::isfinite(mn);
}

// Output columns grouped into segments that read a narrow range of source columns, so a
// segment far from the map's peak is skipped by its own bound. A run of equal (i0, i1) taps
// reads source columns [c0, c1]; short runs are merged (>= kMinSeg pixels) to keep the
// per-segment overhead below the work it can save.
struct Segment {
  int64_t x0, x1;  // output columns [x0, x1)
  int64_t c0, c1;  // source columns read, [c0, c1]
};
constexpr int64_t kMinSeg = 8;

std::vector<Segment> segments(const AxisTable& t) {
  std::vector<Segment> out;
  for (int64_t x = 0; x < t.n; ++x) {
    const int64_t lo = std::min(t.i0[x], t.i1[x]), hi = std::max(t.i0[x], t.i1[x]);
    const bool same_taps = x > 0 && t.i0[x] == t.i0[x - 1] && t.i1[x] == t.i1[x - 1];
    if (out.empty() || (!same_taps && out.back().x1 - out.back().x0 >= kMinSeg)) {
      out.push_back({x, x + 1, lo, hi});
    } else {
      Segment& s = out.back();
      s.x1 = x + 1;
      s.c0 = std::min(s.c0, lo);
      s.c1 = std::max(s.c1, hi);
    }
  }
  return out;
}

// Per-thread scratch buffers.
struct Scratch {
  std::vector<float> src, rows, v;
  std::vector<double> seg_hi, seg_abs, row_hi, row_abs;
  std::vector<uint8_t> seg_done, img_mask;
  std::vector<int32_t> xs, run_c;  // run_c/run_n: pending run of concept id per layer
  std::vector<int64_t> run_n;
  Scratch(const TallyArgs& a, int64_t nseg)
      : src(a.h * a.w), rows(a.h * a.W), v(a.W), seg_hi(a.h * nseg), seg_abs(a.h * nseg),
        row_hi(a.h), row_abs(a.h), seg_done(a.h * nseg), img_mask(a.C, 0), xs(a.W), run_c(a.L, 0), run_n(a.L, 0) {}
};

// Largest total size of the per-thread [U, C] partial counts (default 256 MiB); the
// environment variable DK_TALLY_CPU_PARTIAL_BYTES overrides it (tests use 0 to exercise the
// unit-block strategy).
int64_t partial_bytes_limit() {
  const char* env = std::getenv("DK_TALLY_CPU_PARTIAL_BYTES");
  return env ? std::atoll(env) : (int64_t(256) << 20);
}

}  // namespace

void tally_cpu(const TallyArgs& a) {
  const int64_t HW = a.H * a.W;
  const WeightRange sx = weight_range(a.xtab), sy = weight_range(a.ytab);
  const bool tables_ok = sx.ok && sy.ok;
  const int32_t *xi0 = a.xtab.i0, *xi1 = a.xtab.i1, *yi0 = a.ytab.i0, *yi1 = a.ytab.i1;
  const float *xw0 = a.xtab.w0, *xw1 = a.xtab.w1, *yw0 = a.ytab.w0, *yw1 = a.ytab.w1;
  const Arith arith = check_arith(a.ytab, a.xtab, "tally_cpu");
  const double *xd0 = a.xtab.d0, *xd1 = a.xtab.d1, *yd0 = a.ytab.d0, *yd1 = a.ytab.d1;
  const std::vector<Segment> seg = segments(a.xtab);
  const int64_t nseg = (int64_t)seg.size();

  // Work order: one image at a time, all (or a block of) units inner, so the image's label
  // maps stay in L2 while every unit's active pixels read them (label loads were the largest
  // cost at ~0.5 % activity). Calls below `grain` unit-pixels per thread run on one thread
  // without any OpenMP region (waking a team costs more than it saves, and on shared cores a
  // late-scheduled or spinning pool thread can stall a region for a time slice).
  int64_t threads = 1;
#ifdef _OPENMP
  const int64_t grain = int64_t(1) << 24;  // unit-pixels per thread (~ms of work)
  threads = std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), a.B * a.U * HW / grain));
#endif

  // One (image, unit) map: writes max / active / touched, adds to the row `inter`.
  auto run_map = [&](int64_t b, int64_t u, const int32_t* lab, const int32_t* img, Scratch& s, int64_t* inter) {
    float mx, mn;
    const bool finite = load_map(a, b, u, s.src.data(), mx, mn);
    a.max[b * a.U + u] = mx;
    const float t = a.thresholds[u];
    uint8_t* touched = a.touched ? a.touched + (b * a.U + u) * a.K : nullptr;
    if (touched) std::fill(touched, touched + a.K, uint8_t(0));
    const bool bounded = tables_ok && finite;
    const double td = t;
    int64_t count = 0;
    bool skip_map = false;
    if (bounded) {  // whole-map bound (see the header comment)
      const double A = std::max(std::fabs((double)mx), std::fabs((double)mn));
      const double R = scaled_max(mx, sx) + kU3 * sx.smax * A + kTiny;
      const double Ar = sx.smax * A * (1.0 + kU3) + kTiny;
      skip_map = scaled_max(R, sy) + kU3 * sy.smax * Ar + kTiny <= td;
    }
    if (!skip_map) {
      // Bounds per (source row, segment) and per source row; horizontal values lazily.
      for (int64_t i = 0; i < a.h; ++i) {
        const float* p = &s.src[i * a.w];
        double rhi = -INFINITY, rab = 0;
        for (int64_t k = 0; k < nseg; ++k) {
          double hi = -INFINITY, ab = 0;
          for (int64_t j = seg[k].c0; j <= seg[k].c1; ++j) {
            hi = std::max(hi, (double)p[j]);
            ab = std::max(ab, std::fabs((double)p[j]));
          }
          s.seg_hi[i * nseg + k] = scaled_max(hi, sx) + kU3 * sx.smax * ab + kTiny;
          s.seg_abs[i * nseg + k] = sx.smax * ab * (1.0 + kU3) + kTiny;
          s.seg_done[i * nseg + k] = 0;
          rhi = std::max(rhi, s.seg_hi[i * nseg + k]);
          rab = std::max(rab, s.seg_abs[i * nseg + k]);
        }
        s.row_hi[i] = rhi;
        s.row_abs[i] = rab;
      }
      auto vbound = [&](double w0, double w1, double hi0, double hi1, double ab0, double ab1) {
        return w0 * hi0 + w1 * hi1 + kU3 * (w0 * ab0 + w1 * ab1) + kTiny;
      };
      auto add_run = [&](int32_t c, int64_t n) {  // n active pixels hold concept c
        if (c <= 0 || (!a.per_layer && s.img_mask[c])) return;
        inter[c] += n;
        if (touched) touched[a.category_of[c]] = 1;
      };
      auto flush = [&](int64_t l) {
        add_run(s.run_c[l], s.run_n[l]);
        s.run_c[l] = 0;
      };
      for (int64_t y = 0; y < a.H; ++y) {
        const int32_t i0 = yi0[y], i1 = yi1[y];
        const float wy0 = yw0[y], wy1 = yw1[y];
        if (bounded && vbound(wy0, wy1, s.row_hi[i0], s.row_hi[i1], s.row_abs[i0], s.row_abs[i1]) <= td)
          continue;
        int32_t* xs = s.xs.data();
        int64_t n = 0;
        for (int64_t k = 0; k < nseg; ++k) {
          const int64_t q0 = i0 * nseg + k, q1 = i1 * nseg + k;
          if (bounded && vbound(wy0, wy1, s.seg_hi[q0], s.seg_hi[q1], s.seg_abs[q0], s.seg_abs[q1]) <= td)
            continue;
          const int64_t x0 = seg[k].x0, x1 = seg[k].x1;
          float* v = s.v.data();
          if (arith == Arith::GridSample) {  // four corners at once (blend.h)
            const float* p0 = &s.src[i0 * a.w];
            const float* p1 = &s.src[i1 * a.w];
            for (int64_t x = x0; x < x1; ++x)
              v[x] = blend_corners(wy0, wy1, xw0[x], xw1[x], p0[xi0[x]], p0[xi1[x]], p1[xi0[x]], p1[xi1[x]]);
          } else {
            for (int64_t q : {q0, q1}) {  // horizontal taps of this segment, once per map
              if (s.seg_done[q]) continue;
              const int64_t i = q / nseg;
              const float* p = &s.src[i * a.w];
              float* r = &s.rows[i * a.W];
              if (arith == Arith::Pillow)
                for (int64_t x = x0; x < x1; ++x) r[x] = blend_pair_f64(xd0[x], xd1[x], p[xi0[x]], p[xi1[x]]);
              else
                for (int64_t x = x0; x < x1; ++x) r[x] = blend_pair(xw0[x], xw1[x], p[xi0[x]], p[xi1[x]]);
              s.seg_done[q] = 1;
            }
            const float* r0 = &s.rows[i0 * a.W];
            const float* r1 = &s.rows[i1 * a.W];
            if (arith == Arith::Pillow)
              for (int64_t x = x0; x < x1; ++x) v[x] = blend_pair_f64(yd0[y], yd1[y], r0[x], r1[x]);
            else
              for (int64_t x = x0; x < x1; ++x) v[x] = blend_pair(wy0, wy1, r0[x], r1[x]);
          }
          for (int64_t x = x0; x < x1; ++x) {
            xs[n] = (int32_t)x;
            n += v[x] > t;
          }
        }
        if (n == 0) continue;
        count += n;
        // Label work. Labels come in blobs, so consecutive active pixels mostly add to the
        // same counter: accumulate a run per layer and add it when the id changes (a
        // chain of ++inter[c] on one address is bound by store-to-load latency).
        const int32_t* lrow = lab + y * a.W;
        if (a.L == 1) {  // one layer: no per-pixel dedup; image labels filtered per run
          int32_t rc = s.run_c[0];
          int64_t rn = s.run_n[0];
          for (int64_t k = 0; k < n; ++k) {
            const int32_t c = lrow[xs[k]];
            if (c == rc) {
              ++rn;
            } else {
              add_run(rc, rn);
              rc = c;
              rn = 1;
            }
          }
          s.run_c[0] = rc;
          s.run_n[0] = rn;
          continue;
        }
        for (int64_t k = 0; k < n; ++k) {
          const int64_t x = xs[k];
          for (int64_t l = 0; l < a.L; ++l) {
            const int32_t c = lrow[l * HW + x];
            if (c <= 0) continue;
            if (!a.per_layer) {
              if (s.img_mask[c]) continue;
              bool dup = false;
              for (int64_t j = 0; j < l && !dup; ++j) dup = lrow[j * HW + x] == c;
              if (dup) continue;
            }
            if (s.run_c[l] == c) {
              ++s.run_n[l];
            } else {
              flush(l);
              s.run_c[l] = c;
              s.run_n[l] = 1;
            }
          }
        }
      }
      for (int64_t l = 0; l < a.L; ++l) flush(l);
    }
    // Image-level labels cover every pixel: each active pixel counts once per label
    // (once per distinct id without per_layer).
    if (count) {
      for (int64_t m = 0; m < a.M; ++m) {
        const int32_t c = img[m];
        if (c <= 0) continue;
        if (!a.per_layer && std::find(img, img + m, c) != img + m) continue;
        inter[c] += count;
        if (touched) touched[a.category_of[c]] = 1;
      }
    }
    a.active[b * a.U + u] = count;
  };
  // Units [u0, u1) of image b; intersection rows at inter_base + u * C.
  auto run_image = [&](int64_t b, int64_t u0, int64_t u1, Scratch& s, int64_t* inter_base) {
    const int32_t* lab = a.labels + b * a.L * HW;
    const int32_t* img = a.image_labels ? a.image_labels + b * a.M : nullptr;
    // Image-level concepts of this image (any-layer dedup of pixel labels against them).
    for (int64_t m = 0; m < a.M; ++m)
      if (img[m] > 0) s.img_mask[img[m]] = 1;
    for (int64_t u = u0; u < u1; ++u) run_map(b, u, lab, img, s, inter_base + u * a.C);
    for (int64_t m = 0; m < a.M; ++m)
      if (img[m] > 0) s.img_mask[img[m]] = 0;
  };

  if (threads == 1) {
    Scratch s(a, nseg);
    for (int64_t b = 0; b < a.B; ++b) run_image(b, 0, a.U, s, a.intersection);
    return;
  }
#ifdef _OPENMP
  const int64_t UC = a.U * a.C;
  if (UC * threads * 8 <= partial_bytes_limit()) {
    // Threads take whole images and count into private [U, C] partials, summed at the end
    // (one barrier; images are the dynamic work items).
    std::vector<std::vector<int64_t>> part(threads);
#pragma omp parallel num_threads(threads)
    {
      const int tid = omp_get_thread_num();
      part[tid].assign(UC, 0);
      Scratch s(a, nseg);
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < a.B; ++b) run_image(b, 0, a.U, s, part[tid].data());
#pragma omp for schedule(static)
      for (int64_t i = 0; i < UC; ++i) {
        int64_t sum = 0;
        for (int64_t t = 0; t < threads; ++t) sum += part[t][i];
        a.intersection[i] += sum;
      }
    }
    return;
  }
  // Very large U*C: threads own unit blocks (their rows of `intersection`) and walk all images.
  const int64_t ublock = std::max<int64_t>(1, std::min<int64_t>(64, a.U / (4 * threads)));
  const int64_t nblocks = (a.U + ublock - 1) / ublock;
#pragma omp parallel num_threads(threads)
  {
    Scratch s(a, nseg);
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk)
      for (int64_t b = 0; b < a.B; ++b)
        run_image(b, blk * ublock, std::min(a.U, (blk + 1) * ublock), s, a.intersection);
  }
#endif
}

}  // namespace dissect_kernels
