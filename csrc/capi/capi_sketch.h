// The sketch mode of dk_quantile: a TailSketch (tail_sketch.h) in memory the handle owns, with
// the configuration Python's TailSketch derives from min_quantile (dissect_kernels/stats/
// tail_sketch.py: capacity 65536, tail-only above min_quantile ~0.978), so both reach the same
// state from the same batches. Queries and merges read flushed copies, as Python's do.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "dissect_kernels/tail_sketch.h"

namespace dissect_kernels::capi {

constexpr int64_t kSketchCapacity = 65536;  // TailSketch's default (M = P = capacity / 2)

struct SketchStore {
  TailSketchState st;
  std::vector<float> values, pend;
  std::vector<int64_t> rmin, rmax, gap, eq, size, total, counted, pend_n, tidx, coarsen;

  // Empty sketch of U units configured for min_quantile like Python's TailSketch.
  void configure(int64_t U, double min_quantile) {
    const int64_t c = 16;  // log2(kSketchCapacity)
    const bool tail_only = min_quantile >= 1.0 - std::pow(2.0, -5.5);
    st.U = U;
    st.M = st.P = kSketchCapacity / 2;
    st.k_t = c - 7;
    st.k_l = tail_only ? 0 : c - 4;
    st.tail_shift = tail_only ? tail_shift_for(min_quantile) : 5;
    st.block_rows = kSketchCapacity / 16;
    const size_t UM = static_cast<size_t>(U * st.M);
    values.assign(UM, INFINITY);
    pend.assign(static_cast<size_t>(U * st.P), 0.0f);
    for (auto* v : {&rmin, &rmax, &gap, &eq}) v->assign(UM, 0);
    for (auto* v : {&size, &total, &counted, &pend_n, &coarsen}) v->assign(static_cast<size_t>(U), 0);
    tidx.assign(static_cast<size_t>(U), -1);
    bind();
  }
  // Point st at this object's arrays (after construction or a copy).
  void bind() {
    st.values = values.data();
    st.pend = pend.data();
    st.rmin = rmin.data();
    st.rmax = rmax.data();
    st.gap = gap.data();
    st.eq = eq.data();
    st.size = size.data();
    st.total = total.data();
    st.counted = counted.data();
    st.pend_n = pend_n.data();
    st.tidx = tidx.data();
    st.coarsen = coarsen.data();
  }
  SketchStore() = default;
  SketchStore(const SketchStore& o) { *this = o; }
  SketchStore& operator=(const SketchStore& o) {
    st = o.st;
    values = o.values, pend = o.pend, rmin = o.rmin, rmax = o.rmax, gap = o.gap, eq = o.eq;
    size = o.size, total = o.total, counted = o.counted, pend_n = o.pend_n, tidx = o.tidx, coarsen = o.coarsen;
    bind();
    return *this;
  }
  // Values seen per unit (every unit has seen the same number).
  int64_t count() const { return st.U ? total[0] + counted[0] + pend_n[0] : 0; }
  // A copy with every pending value and gap count folded in.
  SketchStore flushed() const {
    SketchStore copy(*this);
    tail_sketch_flush_cpu(copy.st);
    return copy;
  }

  // tail_sketch.py's tail_shift_for: the largest shift (tail = top N / 2^shift) that holds
  // quantiles >= min_quantile with a margin of sqrt(2); 5 at least, 10 at most.
  static int64_t tail_shift_for(double min_quantile) {
    if (min_quantile >= 1.0) return 10;
    const double shift = std::floor(std::log2(1.0 / (1.0 - min_quantile)) - 0.5);
    return static_cast<int64_t>(std::fmin(10.0, std::fmax(5.0, shift)));
  }
};

}  // namespace dissect_kernels::capi
