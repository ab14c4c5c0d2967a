// quantile: the exact-tail filter behind QuantileSketch(mode="exact").
//
// Per unit u the state is a buffer of `capacity` floats holding `kept[u]` values and a cut
// cut[u] with the invariant: the kept values are exactly the top-kept[u] values (as a
// multiset) of everything seen so far, every kept value is >= cut[u], every dropped value is
// <= cut[u]. The filter reads each input value once, appends it when v > cut[u], and when a
// buffer fills it is re-compacted to at least its `target` largest values, raising the cut
// (CPU: a sampled pivot c with >= target values above it, keeping exactly the values > c; or,
// when c is itself the target-th largest (a run of ties), the values > c plus copies of c up
// to `target`; else nth_element, keeping exactly `target` with the cut at the target-th
// largest; before a unit's first compaction, with a large slack, the CPU compacts early). A value equal
// to the cut may be dropped: after the first compaction the buffer holds >= target values
// >= cut, so the top-m multiset of the stream is unchanged by it (a kept copy of the cut value
// stands in for it) and the ranks a query within expected_count needs are all kept -- ties
// cost no exactness. (Before it, the cut is -inf and only -inf values are dropped; the
// readout knows those ranks hold -inf.) Past expected_count the dropped ties are not counted,
// so a unit whose tail is one repeated value loses exactness there; the readout says so.
// NaN inputs are never kept; they are counted in nan_count[u] so the caller can refuse them.
// -0.0 is stored as +0.0 (they compare equal; this keeps every backend's output bit-identical).
#pragma once
#include "dissect_kernels/common.h"

namespace dissect_kernels {

struct QuantileFilterArgs {
  // input viewed as [G, U, S]: [N, U] is G=N, S=1; [B, U, H, W] is G=B, S=H*W
  const void* x = nullptr;
  DType x_dtype = DType::Float32;
  int64_t G = 0, U = 0, S = 0;
  int64_t x_stride[3] = {0, 0, 0};  // element strides of the g, u, s axes
  // state (updated in place)
  float* buffer = nullptr;   // [U, capacity] contiguous
  int64_t capacity = 0;
  int64_t* kept = nullptr;   // [U], 0 <= kept <= capacity
  float* cut = nullptr;      // [U], -inf before the first compaction
  int64_t target = 0;        // a compaction keeps >= target values, 0 < target < capacity
  int64_t* nan_count = nullptr;  // [U], incremented per NaN seen
};

// CPU (OpenMP over units) implementation.
void quantile_filter_cpu(const QuantileFilterArgs& args);

}  // namespace dissect_kernels
