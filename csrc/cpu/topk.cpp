// CPU top-k (see topk.h): per unit, the current k entries plus the candidates are partially
// sorted by (score descending, index ascending) and the first k kept.
#include "dissect_kernels/topk.h"

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "dissect_kernels/convert.h"

namespace dissect_kernels {
namespace {

using Entry = std::pair<float, int64_t>;

inline bool better(const Entry& x, const Entry& y) {
  if (x.first != y.first) return x.first > y.first;
  return x.second < y.second;
}

// Keep the k best of the unit's state and `cand`, written back in order.
void fold_unit(const TopKState& s, int64_t u, std::vector<Entry>& cand) {
  float* v = s.values + u * s.k;
  int64_t* ix = s.indices + u * s.k;
  for (int64_t j = 0; j < s.k; ++j) cand.emplace_back(v[j], ix[j]);
  const int64_t keep = std::min<int64_t>(s.k, static_cast<int64_t>(cand.size()));
  std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), better);
  for (int64_t j = 0; j < keep; ++j) {
    v[j] = cand[j].first;
    ix[j] = cand[j].second;
  }
}

}  // namespace

void topk_reset(const TopKState& s) {
  std::fill(s.values, s.values + s.U * s.k, -std::numeric_limits<float>::infinity());
  std::fill(s.indices, s.indices + s.U * s.k, kTopKEmptyIndex);
}

void topk_update_cpu(const TopKState& s, const void* scores, DType dtype, int64_t N, int64_t stride_n,
                     int64_t stride_u, const int64_t* indices) {
#pragma omp parallel
  {
    std::vector<Entry> cand;
#pragma omp for schedule(dynamic, 16)
    for (int64_t u = 0; u < s.U; ++u) {
      cand.clear();
      const float worst = s.values[u * s.k + s.k - 1];
      for (int64_t n = 0; n < N; ++n) {
        const float x = load_as_float(scores, n * stride_n + u * stride_u, dtype);
        if (x >= worst) cand.emplace_back(x, indices[n]);  // anything below the k-th cannot enter
      }
      if (!cand.empty()) fold_unit(s, u, cand);
    }
  }
}

void topk_merge_cpu(const TopKState& s, const TopKState& other) {
#pragma omp parallel
  {
    std::vector<Entry> cand;
#pragma omp for schedule(dynamic, 16)
    for (int64_t u = 0; u < s.U; ++u) {
      cand.assign(0, Entry{});
      for (int64_t j = 0; j < other.k; ++j)
        cand.emplace_back(other.values[u * other.k + j], other.indices[u * other.k + j]);
      fold_unit(s, u, cand);
    }
  }
}

}  // namespace dissect_kernels
