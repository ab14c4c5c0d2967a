// tail_sketch: per-unit deterministic relative-error (top-tail) quantile summary, CPU core.
//
// Per unit the state is a sorted summary of M entries (value, rmin, rmax): rmin <= the
// entry's position in one sorted order of all N values seen <= rmax (positions 1..N).
// Values >= tau (the summary value about N/2^tail_shift from the top) or below the minimum
// go to a pending buffer of P values (flushed before a block of block_rows rows could overflow it);
// when no entry above the minimum has N/2^tail_shift values above it, tau is the first entry above
// the minimum (so a tau that drifted into the tail stays: nothing lands in the gap below it); every other value x only increments the count of the
// summary gap (v_g, v_{g+1}) holding it, or of ties with v_g (exact bookkeeping; the gap widens
// instead of a value being stored). A flush applies the counts (prefix sums; ties with v_g are
// ordered right after it and get a run-end entry (v_g, rmin+eq, rmax+eq)), sorts the pending values,
// merges them in (GK-style bounds from the gap each lands in), then prunes: in rounds of
// alternating parity, entry i is dropped if rmax[i+1] - rmin[i-1] <= G(entry i+1), with
//   s = N - rmax + 1 (lower bound on rank from the top), T = N >> tail_shift,
//   G = s >> (k_t - c)                      if s <= T   (relative: the top tail)
//   G = max(T >> (k_t - c), N >> (k_l - c)) otherwise   (absolute: the bulk)
// until two consecutive rounds drop nothing (at most 64 rounds); c ("coarsen") grows by one
// and the prune repeats while more than M entries remain. k_l = 0 (tail-only: G = N below the
// tail) leaves no entries between the minimum and tau, so no value needs a gap search. The torch implementation
// (dissect_kernels/stats/_tail_torch.py) follows exactly the same rules and gives the same state.
#pragma once
#include <cstdint>

#include "dissect_kernels/common.h"

namespace dissect_kernels {

struct TailSketchState {
  int64_t U = 0;       // units
  int64_t M = 0;       // summary capacity (entries) per unit
  int64_t P = 0;       // pending capacity per unit
  int64_t k_t = 9, k_l = 12, tail_shift = 5;
  int64_t block_rows = 4096;  // flush check granularity (rows of an update)
  float* values = nullptr;    // [U, M] ascending, +inf beyond size
  int64_t* rmin = nullptr;    // [U, M], 0 beyond size
  int64_t* rmax = nullptr;    // [U, M], 0 beyond size
  int64_t* gap = nullptr;     // [U, M] values counted into gap (v_g, v_{g+1}) since the last flush
  int64_t* eq = nullptr;      // [U, M] values counted equal to v_g (a flush adds a run-end entry)
  int64_t* size = nullptr;    // [U] entries in use
  int64_t* total = nullptr;   // [U] values represented by rmin/rmax (N)
  int64_t* counted = nullptr; // [U] sum of gap and eq
  float* pend = nullptr;      // [U, P] pending values (first pend_n valid)
  int64_t* pend_n = nullptr;  // [U]
  int64_t* tidx = nullptr;    // [U] index of tau in the summary; < 1: no bulk region yet
  int64_t* coarsen = nullptr; // [U]
};


// Add x [N, U] float32 (element (n, u) at x[n * ld + u]) to the sketch.
void tail_sketch_update_cpu(const TailSketchState& s, const float* x, int64_t N, int64_t ld);
// Fold the pending values and gap counts of every unit into its summary.
void tail_sketch_flush_cpu(const TailSketchState& s);
// Merge flushed sketch b into flushed sketch a (same U, M and k's): GK's rule (an entry takes
// the bounds of the other summary's gap it falls in; bounds add), then the flush's prune and tau
// (tail-only: tau not below the larger of the two). b is unchanged.
void tail_sketch_merge_cpu(const TailSketchState& a, const TailSketchState& b);
// Flushed s: per unit and q = qs[j] a stored value v and bound = max(0, qN - rmin[i2],
// rmax[i1] - 1 - qN) / N over the run i1..i2 of entries holding v (the smaller of the two entries
// around rmin + rmax = 2qN): value[u * nq + j], bound[u * nq + j].
void tail_sketch_select_cpu(const TailSketchState& s, const double* qs, int64_t nq, float* value, double* bound);
// Flushed s: out[u * k + j] = estimated fraction <= y[u * k + j] (midpoint of its rank bounds;
// 0 below the minimum, 1 at or above the maximum).
void tail_sketch_cdf_cpu(const TailSketchState& s, const float* y, int64_t k, double* out);

}  // namespace dissect_kernels
