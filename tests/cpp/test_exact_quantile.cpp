// The C++ API of the core: the exact-quantile state machine (sizing, targets, merge plans,
// readout, the exactness verdict, CPU update / quantile / merge against sorting everything) and
// the geometry tables against their formula written out independently.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "check.h"
#include "dissect_kernels/dissect_kernels.h"
#include "dissect_kernels/exact_quantile.h"
#include "dissect_kernels/geometry.h"

using namespace dissect_kernels;

namespace {

template <typename F>
bool throws_with(F&& f, const std::string& text) {
  try {
    f();
  } catch (const Error& e) {
    if (std::string(e.what()).find(text) != std::string::npos) return true;
    std::fprintf(stderr, "unexpected message: %s\n", e.what());
    return false;
  }
  return false;
}

exact::Config config(int64_t units, double q, int64_t expected, int64_t slack = -1) {
  exact::Config c;
  c.num_units = units;
  c.min_quantile = q;
  c.expected_count = expected;
  c.slack = slack;
  return c;
}

// Hand-computed values of the sizing rules (the numbers Python's QuantileSketch always used).
void test_sizing() {
  CHECK_EQ_I64(exact::tail_needed(100, 0.99), 3);        // 99 * 0.99 = 98.01 -> ranks 98, 99 + 1
  CHECK_EQ_I64(exact::tail_needed(10, 1.0), 2);
  CHECK_EQ_I64(exact::tail_needed(1, 0.5), 1);           // never more than n
  CHECK_EQ_I64(exact::tail_needed(100000, 0.99), 1002);  // 99999 * 0.99 = 98999.01
  const exact::Config c = config(4, 0.99, 100000);
  CHECK_EQ_I64(exact::capacity_for(c, 100000), 1002 + 1024);  // slack max(tail, 1024)
  CHECK_EQ_I64(exact::capacity_for(config(4, 0.9, 100000), 100000), 2 * 10002);
  CHECK_EQ_I64(exact::capacity_for(config(4, 0.99, 100000, 7), 100000), 1009);
  CHECK_EQ_I64(exact::state_bytes(4, 2026), 4 * (2026 * 4 + 20));
  CHECK_EQ_I64(exact::compaction_target(c, 50000, 2026), 1002);     // the expected tail
  CHECK_EQ_I64(exact::compaction_target(c, 300000, 2026), 2026 - 256);  // capped: slack/4 free
  CHECK_EQ_I64(exact::compaction_target(config(1, 0.99, 100000, 1), 10, 1003), 1002);
  CHECK(throws_with([] { exact::check_budget(config(512, 0.99, 1000000000), 10010024, "mode=\"exact\""); },
                    "use mode=\"sketch\""));
  CHECK(throws_with([] { exact::validate(config(0, 0.99, 10)); }, "num_units"));
  CHECK(throws_with([] { exact::validate(config(2, 1.5, 10)); }, "min_quantile"));
  CHECK(throws_with([] { exact::validate(config(2, 0.9, 0)); }, "expected_count"));
  // merging: expected grows to the total, capacity follows, budgets and configs are checked
  const exact::MergePlan p = exact::merge_plan(c, 150000, 2026, config(4, 0.99, 10), 10, 1034);
  CHECK_EQ_I64(p.count, 150010);
  CHECK_EQ_I64(p.expected_count, 150010);
  CHECK_EQ_I64(p.capacity, exact::capacity_for(c, 150010));
  CHECK(throws_with([&] { exact::merge_plan(c, 1, 2026, config(5, 0.99, 10), 1, 1034); }, "units"));
  CHECK(throws_with([&] { exact::merge_plan(c, 1, 2026, config(4, 0.95, 10), 1, 1034); }, "min_quantile differs"));
}

void test_readout() {
  exact::Readout r = exact::readout(5, 0.5);  // virtual index 2.0
  CHECK(r.rank_lower == 2 && r.rank_upper == 1 && r.gamma == 0.0);
  r = exact::readout(5, 1.0);
  CHECK(r.rank_lower == 0 && r.rank_upper == 0 && r.gamma == 0.0);
  r = exact::readout(11, 0.95);  // 9.5 -> between ascending 9 and 10
  CHECK(r.rank_lower == 1 && r.rank_upper == 0 && r.gamma == 0.5);
  CHECK(exact::lerp(1.0, 3.0, 0.25) == 1.5);
  CHECK(exact::lerp(1.0, 3.0, 0.75) == 3.0 - 2.0 * 0.25);
  CHECK(exact::lerp(0.1, 0.7, 0.7) == 0.5199999999999999);  // numpy's form: from the upper end
  CHECK(exact::lerp(0.1, 0.7, 0.3) == 0.28);
  const int64_t kept[2] = {3, 3};
  const float cut[2] = {-std::numeric_limits<float>::infinity(), 1.0f};
  CHECK_EQ_I64(exact::units_short(kept, cut, 2, 3), 1);  // the -inf cut dropped nothing
  CHECK(throws_with([&] { exact::check_exact(config(2, 0.5, 10), kept, cut, 10, 0.6); }, "exactness lost"));
}

// numpy.quantile(linear) of v by sorting everything.
double brute_quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const int64_t n = static_cast<int64_t>(v.size());
  const exact::Readout r = exact::readout(n, q);
  return exact::lerp(v[n - 1 - r.rank_lower], v[n - 1 - r.rank_upper], r.gamma);
}

struct HostState {
  exact::Config cfg;
  int64_t count = 0;
  std::vector<float> buffer, cut;
  std::vector<int64_t> kept, nan;
  HostState(const exact::Config& c, int64_t cap)
      : cfg(c), buffer(c.num_units * cap, -INFINITY), cut(c.num_units, -INFINITY), kept(c.num_units, 0),
        nan(c.num_units, 0) {}
  exact::StateView view() {
    return exact::StateView{cfg.num_units, static_cast<int64_t>(buffer.size()) / cfg.num_units, buffer.data(),
                            kept.data(), cut.data(), nan.data()};
  }
  void update(const std::vector<float>& x, int64_t row0, int64_t rows) {
    QuantileFilterArgs a;
    a.x = x.data() + row0 * cfg.num_units;
    a.G = rows;
    a.U = cfg.num_units;
    a.S = 1;
    a.x_stride[0] = cfg.num_units;
    a.x_stride[1] = 1;
    a.x_stride[2] = 1;
    CHECK_EQ_I64(exact::update_cpu(cfg, view(), &count, a), 0);
  }
};

void test_update_merge_quantile() {
  const int64_t N = 20000, U = 5;
  std::vector<float> x(N * U);
  dk_seed(7);
  for (auto& v : x) v = static_cast<float>(dk_randint(2000)) / 64.0f - 3.0f;
  const double qs[3] = {0.98, 0.995, 1.0};
  const exact::Config cfg = config(U, 0.98, N, 50);
  const int64_t cap = exact::capacity_for(cfg, N);
  HostState whole(cfg, cap), a(cfg, cap), b(cfg, cap);
  whole.update(x, 0, 3000);
  whole.update(x, 3000, N - 3000);
  a.update(x, 0, 9000);
  b.update(x, 9000, N - 9000);
  const exact::MergePlan plan = exact::merge_plan(a.cfg, a.count, cap, b.cfg, b.count, cap);
  exact::Config mc = cfg;
  mc.expected_count = plan.expected_count;
  HostState merged(mc, plan.capacity);
  exact::merge_cpu(a.view(), b.view(), plan.target, merged.view());
  merged.count = plan.count;
  std::vector<double> got(U * 3), from_merge(U * 3);
  exact::quantile_cpu(cfg, whole.view(), whole.count, qs, 3, got.data());
  exact::quantile_cpu(mc, merged.view(), merged.count, qs, 3, from_merge.data());
  for (int64_t u = 0; u < U; ++u) {
    std::vector<double> col(N);
    for (int64_t n = 0; n < N; ++n) col[n] = x[n * U + u];
    for (int j = 0; j < 3; ++j) {
      const double want = brute_quantile(col, qs[j]);
      CHECK(got[u * 3 + j] == want);
      CHECK(from_merge[u * 3 + j] == want);
    }
    CHECK(whole.kept[u] <= cap && whole.cut[u] > -INFINITY);  // compactions did happen
  }
  CHECK(throws_with([&] { exact::merge_cpu(a.view(), b.view(), cap, a.view()); }, "target"));
  CHECK(throws_with([&] { exact::quantile_cpu(cfg, whole.view(), whole.count, qs, 0, got.data()); }, "q"));
}

void test_geometry() {
  // half-pixel 4 -> 9 with clamp, written out: x = (o + 0.5) * 4/9 - 0.5 clipped to [0, 3]
  std::vector<int32_t> i0(9), i1(9);
  std::vector<float> w0(9), w1(9);
  CHECK_STATUS(dk_axis_table_named(DK_GEOMETRY_HALF_PIXEL, 4, 9, i0.data(), i1.data(), w0.data(), w1.data()), DK_OK);
  for (int o = 0; o < 9; ++o) {
    const double scale = 4.0 / 9.0;
    double xs = scale * o + (0.5 * scale - 0.5);
    xs = std::min(std::max(xs, 0.0), 3.0);
    const double f = std::floor(xs);
    CHECK_EQ_I64(i0[o], static_cast<int>(f));
    CHECK_EQ_I64(i1[o], std::min(static_cast<int>(f) + 1, 3));
    CHECK(w1[o] == static_cast<float>(xs - f) && w0[o] == static_cast<float>(1.0 - (xs - f)));
  }
  // zero padding: the outer taps get weight 0
  CHECK_STATUS(dk_axis_table_named(DK_GEOMETRY_ZERO_PAD, 2, 4, i0.data(), i1.data(), w0.data(), w1.data()), DK_OK);
  CHECK(w0[0] == 0.0f && w1[0] == 0.75f && i1[0] == 0 && w1[3] == 0.0f && w0[3] == 0.75f);
  CHECK_STATUS(dk_axis_table_affine(1.0, 0.0, 0, 4, DK_BOUNDARY_CLAMP, i0.data(), i1.data(), w0.data(), w1.data()),
               DK_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dk_axis_table_affine(NAN, 0.0, 2, 4, DK_BOUNDARY_CLAMP, i0.data(), i1.data(), w0.data(), w1.data()),
               DK_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dk_axis_table_named(DK_GEOMETRY_HALF_PIXEL, 2, 4, nullptr, i1.data(), w0.data(), w1.data()),
               DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("i0 must not be NULL");
}

}  // namespace

int main() {
  test_sizing();
  test_readout();
  test_update_merge_quantile();
  test_geometry();
  return dk_test_summary("test_exact_quantile");
}
