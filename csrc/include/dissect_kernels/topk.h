// topk: per unit the k highest scores seen with their item indices, ordered by score
// descending, equal scores by lower index first (dissect_kernels/stats/topk.py's rule). The
// state is two [U, k] arrays; empty slots hold (-inf, kEmptyIndex) and sort last. Mergeable:
// folding two states keeps the k best of their union.
#pragma once
#include <cstdint>
#include <limits>

#include "dissect_kernels/common.h"

namespace dissect_kernels {

constexpr int64_t kTopKEmptyIndex = std::numeric_limits<int64_t>::max();

struct TopKState {
  int64_t U = 0, k = 0;
  float* values = nullptr;     // [U, k]
  int64_t* indices = nullptr;  // [U, k]
};

// Fill a state with empty slots.
void topk_reset(const TopKState& s);
// Fold scores (element (n, u) at scores[n * stride_n + u * stride_u], dtype) of items
// indices[0..N) into the state. NaN scores must be rejected by the caller.
void topk_update_cpu(const TopKState& s, const void* scores, DType dtype, int64_t N, int64_t stride_n,
                     int64_t stride_u, const int64_t* indices);
// Fold state `other` (same U and k) into `s`.
void topk_merge_cpu(const TopKState& s, const TopKState& other);

}  // namespace dissect_kernels
