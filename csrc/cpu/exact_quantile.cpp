// The exact-quantile state machine (see exact_quantile.h): sizing, compaction targets, merge
// plans, readout plans and the exactness verdict, plus the CPU update / quantile / cdf / merge
// over a host state. Every number here is integer or IEEE double arithmetic in a fixed order, so
// a binding in any language that calls these reaches the same state and the same answers.
#include "dissect_kernels/exact_quantile.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <vector>

namespace dissect_kernels::exact {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Shortest decimal that reads back as v (how Python prints a float), for error messages.
std::string shortest(double v) {
  char buf[40];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string mib(double bytes) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.1f", bytes / 1048576.0);
  return buf;
}

// Python's floor division for the (rare) negative case.
int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

void check_view(const StateView& st, const char* name) {
  const std::string n(name);
  if (st.num_units < 1) throw Error(n + ": num_units must be >= 1");
  if (st.capacity < 1) throw Error(n + ": capacity must be >= 1");
  if (!st.buffer || !st.kept || !st.cut || !st.nan_count) throw Error(n + ": state pointers must not be null");
  for (int64_t u = 0; u < st.num_units; ++u)
    if (st.kept[u] < 0 || st.kept[u] > st.capacity)
      throw Error(n + ": kept[" + std::to_string(u) + "] = " + std::to_string(st.kept[u]) +
                  " lies outside [0, capacity = " + std::to_string(st.capacity) + "]");
}

void check_q(const Config& cfg, double q) {
  if (!(q >= 0.0 && q <= 1.0)) throw Error("q must lie in [0, 1], got " + shortest(q));
  if (q < cfg.min_quantile)
    throw Error("q=" + shortest(q) + " is below min_quantile=" + shortest(cfg.min_quantile) +
                ": mode=\"exact\" only keeps the upper tail (build the sketch with a lower min_quantile)");
}

void check_ready(const StateView& st, int64_t n) {
  if (n <= 0) throw StateError("the sketch is empty: call update() before quantile()/cdf()");
  const int64_t bad = units_with_nan(st.nan_count, st.num_units);
  if (bad)
    throw StateError("x contained NaN values (" + std::to_string(bad) + " of " + std::to_string(st.num_units) +
                     " units); quantiles of data with NaN are undefined and this sketch is now invalid");
}

}  // namespace

void validate(const Config& cfg) {
  if (cfg.num_units < 1) throw Error("num_units must be a positive integer, got " + std::to_string(cfg.num_units));
  if (!(cfg.min_quantile >= 0.0 && cfg.min_quantile <= 1.0))
    throw Error("min_quantile must lie in [0, 1], got " + shortest(cfg.min_quantile));
  if (cfg.expected_count < 1)
    throw Error("expected_count must be a positive integer (samples per unit), got " +
                std::to_string(cfg.expected_count) + "; use the sketch mode when the count is unknown");
  if (cfg.slack == 0 || cfg.slack < -1)
    throw Error("slack must be a positive integer (or -1 for the default), got " + std::to_string(cfg.slack));
  if (cfg.max_bytes < 1) throw Error("max_bytes must be positive, got " + std::to_string(cfg.max_bytes));
}

double virtual_index(int64_t n, double q) { return static_cast<double>(n - 1) * q; }

int64_t tail_needed(int64_t n, double q) {
  const int64_t lower = static_cast<int64_t>(std::floor(virtual_index(n, q)));
  return std::min(n, n - lower + 1);
}

int64_t capacity_for(const Config& cfg, int64_t expected) {
  const int64_t target = tail_needed(expected, cfg.min_quantile);
  return target + (cfg.slack < 0 ? std::max(target, kMinSlack) : cfg.slack);
}

int64_t state_bytes(int64_t num_units, int64_t capacity) {
  const double bytes = static_cast<double>(num_units) * (static_cast<double>(capacity) * 4.0 + 20.0);
  if (bytes >= 9.0e18) return std::numeric_limits<int64_t>::max();
  return num_units * (capacity * 4 + 20);
}

void check_budget(const Config& cfg, int64_t capacity, const char* what) {
  const int64_t bytes = state_bytes(cfg.num_units, capacity);
  if (bytes <= cfg.max_bytes) return;
  throw Error(std::string(what) + " needs " + mib(static_cast<double>(bytes)) + " MiB for " +
              std::to_string(cfg.num_units) + " units x " + std::to_string(capacity) + " values (expected_count=" +
              std::to_string(cfg.expected_count) + ", min_quantile=" + shortest(cfg.min_quantile) +
              "), over max_bytes=" + mib(static_cast<double>(cfg.max_bytes)) +
              " MiB; raise max_bytes or use mode=\"sketch\"");
}

int64_t compaction_target(const Config& cfg, int64_t count_after, int64_t capacity) {
  const int64_t slack = capacity - tail_needed(cfg.expected_count, cfg.min_quantile);
  const int64_t want = tail_needed(std::max(cfg.expected_count, count_after), cfg.min_quantile);
  return std::max<int64_t>(1, std::min(want, capacity - std::max<int64_t>(1, floor_div(slack, 4))));
}

MergePlan merge_plan(const Config& ca, int64_t na, int64_t capa, const Config& cb, int64_t nb, int64_t capb) {
  if (ca.num_units != cb.num_units)
    throw Error("cannot merge a state of " + std::to_string(cb.num_units) + " units into one of " +
                std::to_string(ca.num_units));
  if (ca.min_quantile != cb.min_quantile)
    throw Error("min_quantile differs: " + shortest(ca.min_quantile) + " vs " + shortest(cb.min_quantile));
  if (na < 0 || nb < 0) throw Error("merge: counts must be >= 0");
  MergePlan p;
  p.count = na + nb;
  p.expected_count = std::max({ca.expected_count, cb.expected_count, p.count});
  Config merged = ca;
  merged.expected_count = p.expected_count;
  p.capacity = std::max({capa, capb, capacity_for(merged, p.expected_count)});
  check_budget(merged, p.capacity, "the merged exact state");
  p.target = compaction_target(merged, p.count, p.capacity);
  return p;
}

Readout readout(int64_t n, double q) {
  const double vi = virtual_index(n, q);
  int64_t prev, next;
  if (vi >= static_cast<double>(n - 1)) {
    prev = next = n - 1;
  } else {
    prev = static_cast<int64_t>(std::floor(vi));
    next = prev + 1;
  }
  return Readout{n - 1 - prev, n - 1 - next, vi - static_cast<double>(prev)};
}

double lerp(double lower, double upper, double gamma) {
  const double diff = upper - lower;
  return gamma >= 0.5 ? upper - diff * (1.0 - gamma) : lower + diff * gamma;
}

int64_t units_short(const int64_t* kept, const float* cut, int64_t num_units, int64_t rank) {
  int64_t bad = 0;
  for (int64_t u = 0; u < num_units; ++u) bad += kept[u] <= rank && cut[u] != kNegInf;
  return bad;
}

void check_exact(const Config& cfg, const int64_t* kept, const float* cut, int64_t n, double q) {
  const Readout r = readout(n, q);
  const int64_t bad = units_short(kept, cut, cfg.num_units, r.rank_lower);
  if (!bad) return;
  throw StateError("exactness lost for q=" + shortest(q) + ": " + std::to_string(n) +
                   " values arrived (expected_count=" + std::to_string(cfg.expected_count) + ") and " +
                   std::to_string(bad) + " units keep fewer than the " + std::to_string(r.rank_lower + 1) +
                   " largest values the quantile needs; build with a larger expected_count or use "
                   "mode=\"sketch\"");
}

int64_t units_with_nan(const int64_t* nan_count, int64_t num_units) {
  int64_t bad = 0;
  for (int64_t u = 0; u < num_units; ++u) bad += nan_count[u] > 0;
  return bad;
}

int64_t update_cpu(const Config& cfg, const StateView& st, int64_t* count, const QuantileFilterArgs& x) {
  check_view(st, "update");
  if (x.U != st.num_units)
    throw Error("x has " + std::to_string(x.U) + " units but the state has " + std::to_string(st.num_units));
  if (x.G < 0 || x.S < 1) throw Error("x: bad shape (G must be >= 0, S >= 1)");
  const int64_t n = x.G * x.S;
  if (n == 0) return units_with_nan(st.nan_count, st.num_units);
  const int64_t after = *count + n;
  QuantileFilterArgs a = x;
  a.buffer = st.buffer;
  a.capacity = st.capacity;
  a.kept = st.kept;
  a.cut = st.cut;
  a.nan_count = st.nan_count;
  a.target = compaction_target(cfg, after, st.capacity);
  quantile_filter_cpu(a);
  *count = after;
  return units_with_nan(st.nan_count, st.num_units);
}

void quantile_cpu(const Config& cfg, const StateView& st, int64_t n, const double* qs, int64_t nq, double* out) {
  check_view(st, "quantile");
  if (nq < 1 || !qs || !out) throw Error("quantile: need at least one q and an output buffer");
  for (int64_t j = 0; j < nq; ++j) check_q(cfg, qs[j]);
  check_ready(st, n);
  std::vector<Readout> plan(nq);
  std::vector<int64_t> ranks;
  for (int64_t j = 0; j < nq; ++j) {
    check_exact(cfg, st.kept, st.cut, n, qs[j]);
    plan[j] = readout(n, qs[j]);
    ranks.push_back(plan[j].rank_lower);
    ranks.push_back(plan[j].rank_upper);
  }
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  const int64_t nr = static_cast<int64_t>(ranks.size());
#pragma omp parallel
  {
    std::vector<float> vals;
    std::vector<double> stat(nr);
#pragma omp for schedule(dynamic, 16)
    for (int64_t u = 0; u < st.num_units; ++u) {
      const int64_t k = st.kept[u];
      vals.assign(st.buffer + u * st.capacity, st.buffer + u * st.capacity + k);
      int64_t start = 0;  // selections in ascending rank order, each on what is left of the range
      for (int64_t i = 0; i < nr; ++i) {
        const int64_t r = ranks[i];
        if (r >= k) {  // reachable only while nothing above -inf was dropped (checked above)
          stat[i] = -std::numeric_limits<double>::infinity();
          continue;
        }
        std::nth_element(vals.begin() + start, vals.begin() + r, vals.end(), std::greater<float>());
        stat[i] = vals[r];
        start = r + 1;
      }
      for (int64_t j = 0; j < nq; ++j) {
        const int64_t lo = std::lower_bound(ranks.begin(), ranks.end(), plan[j].rank_lower) - ranks.begin();
        const int64_t hi = std::lower_bound(ranks.begin(), ranks.end(), plan[j].rank_upper) - ranks.begin();
        out[u * nq + j] = lerp(stat[lo], stat[hi], plan[j].gamma);
      }
    }
  }
}

void cdf_cpu(const StateView& st, int64_t n, const double* values, int64_t k, double* out) {
  check_view(st, "cdf");
  if (k < 1 || !values || !out) throw Error("cdf: need at least one value per unit and an output buffer");
  check_ready(st, n);
#pragma omp parallel
  {
    std::vector<double> asc;
#pragma omp for schedule(dynamic, 16)
    for (int64_t u = 0; u < st.num_units; ++u) {
      const int64_t kept = st.kept[u];
      asc.assign(st.buffer + u * st.capacity, st.buffer + u * st.capacity + kept);
      std::sort(asc.begin(), asc.end());
      for (int64_t j = 0; j < k; ++j) {
        const double v = values[u * k + j];
        // NaN compares false everywhere: counted as above every kept value, as torch sorts it
        const int64_t le = v != v ? kept : std::upper_bound(asc.begin(), asc.end(), v) - asc.begin();
        out[u * k + j] = static_cast<double>(n - (kept - le)) / static_cast<double>(n);
      }
    }
  }
}

void merge_cpu(const StateView& a, const StateView& b, int64_t target, const StateView& out) {
  check_view(a, "merge (first state)");
  check_view(b, "merge (second state)");
  if (out.num_units < 1 || out.capacity < 1 || !out.buffer || !out.kept || !out.cut || !out.nan_count)
    throw Error("merge: bad output state");
  if (a.num_units != b.num_units || out.num_units != a.num_units)
    throw Error("merge: the states have different numbers of units");
  if (out.capacity < std::max(a.capacity, b.capacity))
    throw Error("merge: the output capacity is smaller than an input's");
  if (!(target > 0 && target < out.capacity)) throw Error("merge: need 0 < target < capacity");
#pragma omp parallel
  {
    std::vector<float> both;
#pragma omp for schedule(dynamic, 16)
    for (int64_t u = 0; u < a.num_units; ++u) {
      // With c = max(cut_a, cut_b) every dropped value of either side is <= c and every value
      // > c is kept by one side: the kept values >= c are the exact top-m multiset of the union.
      const float c = std::max(a.cut[u], b.cut[u]);
      both.clear();
      for (const StateView* s : {&a, &b}) {
        const float* row = s->buffer + u * s->capacity;
        for (int64_t i = 0; i < s->kept[u]; ++i)
          if (row[i] >= c) both.push_back(row[i]);
      }
      const int64_t m = static_cast<int64_t>(both.size());
      float* dst = out.buffer + u * out.capacity;
      if (m > out.capacity) {
        std::nth_element(both.begin(), both.begin() + (target - 1), both.end(), std::greater<float>());
        std::copy(both.begin(), both.begin() + target, dst);
        out.cut[u] = both[target - 1];
        out.kept[u] = target;
      } else {
        std::copy(both.begin(), both.end(), dst);
        out.cut[u] = c;
        out.kept[u] = m;
      }
      std::fill(dst + out.kept[u], dst + out.capacity, kNegInf);
      out.nan_count[u] = a.nan_count[u] + b.nan_count[u];
    }
  }
}

}  // namespace dissect_kernels::exact
