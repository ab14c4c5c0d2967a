// CPU label_stats (see label_stats.h): one pass over each image's label layers. "Any layer"
// counting skips an id already seen at the same pixel in an earlier layer (L is small, so the
// L(L-1)/2 compares per pixel beat any set structure).
#include "dissect_kernels/label_stats.h"

#include <algorithm>

namespace dissect_kernels {

void label_stats_cpu(const LabelStatsArgs& a) {
  const int64_t HW = a.H * a.W;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < a.B; ++b) {
    int64_t* pix = a.pixels + b * a.C;
    std::fill(pix, pix + a.C, int64_t{0});
    const int32_t* lab = a.labels + b * a.L * HW;
    for (int64_t p = 0; p < HW; ++p) {
      for (int64_t l = 0; l < a.L; ++l) {
        const int32_t c = lab[l * HW + p];
        if (c <= 0) continue;
        bool repeat = false;
        if (!a.per_layer)
          for (int64_t l2 = 0; l2 < l && !repeat; ++l2) repeat = lab[l2 * HW + p] == c;
        pix[c] += !repeat;
      }
    }
    const int32_t* img = a.image_labels ? a.image_labels + b * a.M : nullptr;
    for (int64_t m = 0; img && m < a.M; ++m) {
      const int32_t c = img[m];
      if (c <= 0) continue;
      if (a.per_layer) {
        pix[c] += HW;
      } else {
        pix[c] = HW;  // an image-level label covers every pixel
      }
    }
    pix[0] = 0;
    if (a.category_of && a.present) {
      uint8_t* pres = a.present + b * a.K;
      std::fill(pres, pres + a.K, uint8_t{0});
      for (int64_t c = 1; c < a.C; ++c)
        if (pix[c] > 0) pres[a.category_of[c]] = 1;
    }
  }
}

}  // namespace dissect_kernels
