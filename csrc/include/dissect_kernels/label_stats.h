// label_stats: the label side of the IoU tally, per image: the pixel count of every concept
// and whether any concept of each category is present (see dissect_kernels/ops/label_stats.py,
// whose oracle is dissect_kernels/reference/label_stats.py).
//
// pixels[b, c] = number of pixels of image b labelled c in some layer (once per pixel), or, with
// per_layer, the number of (layer, pixel) pairs holding c; an image-level label c covers every
// pixel (H*W; per_layer: H*W per listed entry). Concept 0 (unlabelled) is always 0.
// present[b, k] = 1 when some concept c >= 1 of category k (category_of[c] == k) has pixels.
#pragma once
#include <cstdint>

#include "dissect_kernels/common.h"

namespace dissect_kernels {

struct LabelStatsArgs {
  const int32_t* labels = nullptr;        // [B, L, H, W] contiguous, ids in [0, C)
  int64_t B = 0, L = 0, H = 0, W = 0;
  const int32_t* image_labels = nullptr;  // [B, M] contiguous or null; ids in [0, C), 0 = padding
  int64_t M = 0;
  int64_t C = 0;                          // number of concepts
  bool per_layer = false;
  const int32_t* category_of = nullptr;   // [C] ids in [0, K), or null: no `present`
  int64_t K = 0;
  int64_t* pixels = nullptr;              // [B, C], written
  uint8_t* present = nullptr;             // [B, K], written (0/1), only with category_of
};

// CPU (OpenMP over images) implementation; ids must already be in range.
void label_stats_cpu(const LabelStatsArgs& args);

}  // namespace dissect_kernels
