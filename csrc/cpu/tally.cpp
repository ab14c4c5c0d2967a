// CPU tally: per (image, unit) load the source map, interpolate separably, compare, count.
// Parallel over units, so each thread owns its rows of `intersection` (no atomics).
#include "dissect_kernels/tally.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "dissect_kernels/convert.h"

namespace dissect_kernels {

void tally_cpu(const TallyArgs& a) {
  const int64_t hw_out = a.H * a.W;
#pragma omp parallel
  {
    std::vector<float> src(a.h * a.w), rows(a.h * a.W);
    std::vector<int32_t> seen;
    for (int64_t b = 0; b < a.B; ++b) {
      const int32_t* lab = a.labels + b * a.L * hw_out;
      const int32_t* img = a.image_labels ? a.image_labels + b * a.M : nullptr;
#pragma omp for schedule(dynamic, 4)
      for (int64_t u = 0; u < a.U; ++u) {
        float mx = -INFINITY;
        for (int64_t i = 0; i < a.h; ++i)
          for (int64_t j = 0; j < a.w; ++j) {
            int64_t off = b * a.acts_stride[0] + u * a.acts_stride[1] + i * a.acts_stride[2] + j * a.acts_stride[3];
            float v = load_as_float(a.acts, off, a.acts_dtype);
            src[i * a.w + j] = v;
            mx = std::max(mx, v);
          }
        for (int64_t i = 0; i < a.h; ++i)
          for (int64_t x = 0; x < a.W; ++x)
            rows[i * a.W + x] = a.xtab.w0[x] * src[i * a.w + a.xtab.i0[x]] + a.xtab.w1[x] * src[i * a.w + a.xtab.i1[x]];
        const float t = a.thresholds[u];
        int64_t* inter = a.intersection + u * a.C;
        uint8_t* touched = a.touched ? a.touched + (b * a.U + u) * a.K : nullptr;
        if (touched) std::fill(touched, touched + a.K, uint8_t(0));
        int64_t count = 0;
        for (int64_t y = 0; y < a.H; ++y) {
          const float* r0 = &rows[a.ytab.i0[y] * a.W];
          const float* r1 = &rows[a.ytab.i1[y] * a.W];
          const float wy0 = a.ytab.w0[y], wy1 = a.ytab.w1[y];
          for (int64_t x = 0; x < a.W; ++x) {
            float v = wy0 * r0[x] + wy1 * r1[x];
            if (!(v > t)) continue;
            ++count;
            seen.clear();
            for (int64_t l = 0; l < a.L; ++l) {
              int32_t c = lab[l * hw_out + y * a.W + x];
              if (c <= 0) continue;
              if (!a.per_layer) {
                bool dup = std::find(seen.begin(), seen.end(), c) != seen.end();
                for (int64_t m = 0; m < a.M && !dup; ++m) dup = img[m] == c;
                if (dup) continue;
                seen.push_back(c);
              }
              ++inter[c];
              if (touched) touched[a.category_of[c]] = 1;
            }
          }
        }
        // Image-level labels cover every pixel: each active pixel counts once per label
        // (once per distinct id without per_layer).
        for (int64_t m = 0; m < a.M; ++m) {
          int32_t c = img[m];
          if (c <= 0) continue;
          if (!a.per_layer && std::find(img, img + m, c) != img + m) continue;
          inter[c] += count;
          if (touched && count) touched[a.category_of[c]] = 1;
        }
        a.active[b * a.U + u] = count;
        a.max[b * a.U + u] = mx;
      }
    }
  }
}

}  // namespace dissect_kernels
