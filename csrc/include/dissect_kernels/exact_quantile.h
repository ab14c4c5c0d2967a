// exact_quantile: the exact-mode quantile state machine, in one place for every language.
//
// A per-unit exact tail (quantile.h's filter state: buffer [U, capacity], kept, cut, nan_count)
// answers numpy.quantile(method="linear") exactly for q >= min_quantile. This header owns every
// decision around that state:
//   * sizing: how many of the largest values a quantile reads (tail_needed), the buffer capacity
//     for an expected count, the state's bytes against a budget;
//   * the compaction target of each update (the tail of max(expected, seen) values, leaving a
//     quarter of the slack free);
//   * merging: the merged expected count, capacity and target, and the union of two tails;
//   * readout: the two order statistics and the weight numpy interpolates between, and whether
//     a unit still holds them ("exactness lost" otherwise);
//   * cdf of kept values.
// Python's ExactQuantile calls these for every device: on CPU the whole state machine runs here;
// on a GPU the Python side moves data with torch/Triton but takes capacities, targets, readout
// plans and the exactness verdict from these functions, so both reach the same state.
#pragma once
#include <cstdint>
#include <string>

#include "dissect_kernels/common.h"
#include "dissect_kernels/quantile.h"

namespace dissect_kernels::exact {

// An error caused by the state rather than the arguments (empty, NaN seen, exactness lost).
struct StateError : Error {
  using Error::Error;
};

constexpr int64_t kMinSlack = 1024;                      // free slots beyond the tail, at least
constexpr int64_t kDefaultMaxBytes = int64_t{2} << 30;   // state budget: 2 GiB

struct Config {
  int64_t num_units = 0;
  double min_quantile = 0.99;   // smallest q a query may ask for, in [0, 1]
  int64_t expected_count = 0;   // samples per unit the state is sized for, >= 1
  int64_t slack = -1;           // free slots beyond the tail; < 0: max(tail, kMinSlack)
  int64_t max_bytes = kDefaultMaxBytes;
};

// Throws Error naming the bad field.
void validate(const Config& cfg);

// numpy's virtual index (n - 1) * q, in double.
double virtual_index(int64_t n, double q);
// How many of the largest of n values the linear quantile at q (and every q' >= q) reads:
// ranks floor((n-1)q) .. n-1, plus one of margin for rounding of (n-1)q; at most n.
int64_t tail_needed(int64_t n, double q);
// Buffer slots per unit for `expected` samples: the tail plus the slack.
int64_t capacity_for(const Config& cfg, int64_t expected);
// Bytes of a state of U units x capacity (buffer, kept, cut, nan_count).
int64_t state_bytes(int64_t num_units, int64_t capacity);
// Throws Error (naming mode="sketch") when a state of `capacity` slots exceeds cfg.max_bytes.
void check_budget(const Config& cfg, int64_t capacity, const char* what);
// Values a compaction keeps after count_after samples: the tail needed for
// max(expected, count_after) samples, capped so a quarter of the slack stays free; >= 1.
int64_t compaction_target(const Config& cfg, int64_t count_after, int64_t capacity);

// The result of merging state b (config cb, count nb, capacity capb) into a (ca, na, capa).
struct MergePlan {
  int64_t expected_count;  // max(expected_a, expected_b, na + nb)
  int64_t capacity;        // max(capa, capb, capacity_for(expected_count))
  int64_t target;          // compaction target of the merged state
  int64_t count;           // na + nb
};
// Throws Error when the two are incompatible (units, min_quantile) or over the byte budget.
MergePlan merge_plan(const Config& ca, int64_t na, int64_t capa, const Config& cb, int64_t nb, int64_t capb);

// Readout of quantile q from n samples: the lower and upper order statistics as descending
// ranks (0 = the largest) and numpy's weight gamma between them.
struct Readout {
  int64_t rank_lower;
  int64_t rank_upper;
  double gamma;
};
Readout readout(int64_t n, double q);
// numpy's _lerp: lower + (upper - lower) * gamma, from the upper end when gamma >= 0.5.
double lerp(double lower, double upper, double gamma);
// Units that no longer hold the `rank`-th largest value (kept <= rank after a compaction).
int64_t units_short(const int64_t* kept, const float* cut, int64_t num_units, int64_t rank);
// Throws Error("exactness lost ...") when some unit cannot answer quantile q from n samples.
void check_exact(const Config& cfg, const int64_t* kept, const float* cut, int64_t n, double q);
// Units with NaN inputs counted (their state is invalid: quantiles of NaN are undefined).
int64_t units_with_nan(const int64_t* nan_count, int64_t num_units);

// A state in caller-owned host memory (the layout of quantile.h's filter state).
struct StateView {
  int64_t num_units = 0;
  int64_t capacity = 0;
  float* buffer = nullptr;      // [U, capacity], first kept[u] valid per unit
  int64_t* kept = nullptr;      // [U]
  float* cut = nullptr;         // [U], -inf before the first compaction
  int64_t* nan_count = nullptr; // [U]
};

// Fold x (quantile.h's [G, U, S] view, host memory) into st; *count += G * S. Compactions keep
// compaction_target(cfg, *count, capacity) values. Returns the units that saw a NaN (> 0: the
// caller must report an error; the state is then invalid).
int64_t update_cpu(const Config& cfg, const StateView& st, int64_t* count, const QuantileFilterArgs& x);
// out[u * nq + j] = quantile qs[j] of unit u (float64), equal to numpy.quantile(linear) over
// the n samples seen. Throws Error on q outside [min_quantile, 1], NaN state, lost exactness.
void quantile_cpu(const Config& cfg, const StateView& st, int64_t n, const double* qs, int64_t nq, double* out);
// out[u * k + j] = fraction of the n samples <= values[u * k + j]: exact at and above the cut,
// an upper bound below it.
void cdf_cpu(const StateView& st, int64_t n, const double* values, int64_t k, double* out);
// out = the union of tails a and b (out.capacity slots; compacted to `target` when the kept
// values exceed it). out must not alias a or b.
void merge_cpu(const StateView& a, const StateView& b, int64_t target, const StateView& out);

}  // namespace dissect_kernels::exact
