// C ABI: the quantile accumulator (dk_quantile, see dissect_kernels.h). Exact mode owns a host
// state and drives it with exact_quantile.h's state machine, so its sizes, compaction targets,
// merges and answers are the ones the Python ExactQuantile reaches.
#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "capi_internal.h"
#include "dissect_kernels/exact_quantile.h"

using namespace dissect_kernels;
using namespace dissect_kernels::capi;

struct dk_quantile {
  exact::Config cfg;
  int64_t count = 0;
  int64_t capacity = 0;
  std::vector<float> buffer;
  std::vector<int64_t> kept;
  std::vector<float> cut;
  std::vector<int64_t> nan_count;

  void allocate(int64_t cap) {
    capacity = cap;
    const int64_t U = cfg.num_units;
    buffer.assign(static_cast<size_t>(U * cap), -std::numeric_limits<float>::infinity());
    kept.assign(static_cast<size_t>(U), 0);
    cut.assign(static_cast<size_t>(U), -std::numeric_limits<float>::infinity());
    nan_count.assign(static_cast<size_t>(U), 0);
  }
  exact::StateView view() {
    return exact::StateView{cfg.num_units, capacity, buffer.data(), kept.data(), cut.data(), nan_count.data()};
  }
  exact::StateView view() const { return const_cast<dk_quantile*>(this)->view(); }
};

namespace {

constexpr char kMagic[4] = {'D', 'K', 'Q', '1'};
constexpr uint32_t kFormat = 1;

exact::Config config_of(const dk_quantile_options* o) {
  not_null(o, "options");
  require(o->mode == DK_QUANTILE_AUTO || o->mode == DK_QUANTILE_EXACT || o->mode == DK_QUANTILE_SKETCH,
          "options.mode must be DK_QUANTILE_AUTO (0), DK_QUANTILE_EXACT (1) or DK_QUANTILE_SKETCH (2), got " +
              std::to_string(o->mode));
  exact::Config c;
  c.num_units = o->num_units;
  c.min_quantile = o->min_quantile;
  c.expected_count = o->expected_count;
  c.slack = o->slack;
  c.max_bytes = o->max_bytes;
  at_least(c.num_units, 1, "options.num_units");
  require(c.min_quantile >= 0.0 && c.min_quantile <= 1.0,
          "options.min_quantile must lie in [0, 1], got " + std::to_string(c.min_quantile));
  require(c.expected_count == -1 || c.expected_count >= 1,
          "options.expected_count must be >= 1 or -1 (unknown), got " + std::to_string(c.expected_count));
  require(c.slack == -1 || c.slack >= 1, "options.slack must be >= 1 or -1 (default), got " + std::to_string(c.slack));
  at_least(c.max_bytes, 1, "options.max_bytes");
  return c;
}

void check_handle(const dk_quantile* q) { not_null(q, "q"); }

// Views x [G, U, S] for the exact filter (shape and pointer checks first).
QuantileFilterArgs input(const dk_quantile* q, const void* x, int32_t dtype, int64_t G, int64_t U, int64_t S,
                         const int64_t* strides) {
  QuantileFilterArgs a;
  a.x_dtype = dtype_of(dtype, "dtype");
  at_least(G, 0, "G");
  at_least(S, 1, "S");
  require(U == q->cfg.num_units,
          "U = " + std::to_string(U) + " but the accumulator has num_units = " + std::to_string(q->cfg.num_units));
  not_null(strides, "strides");
  if (G > 0) not_null(x, "x");
  a.x = x;
  a.G = G;
  a.U = U;
  a.S = S;
  for (int i = 0; i < 3; ++i) a.x_stride[i] = strides[i];
  return a;
}

void refuse_nan_state(const dk_quantile* q, const char* which) {
  const int64_t bad = exact::units_with_nan(q->nan_count.data(), q->cfg.num_units);
  if (bad)
    throw exact::StateError(std::string(which) + " saw NaN values in " + std::to_string(bad) +
                            " units; its quantiles are undefined");
}

}  // namespace

extern "C" {

dk_quantile_options dk_quantile_default_options(int64_t num_units) {
  dk_quantile_options o;
  o.mode = DK_QUANTILE_AUTO;
  o.num_units = num_units;
  o.min_quantile = 0.99;
  o.expected_count = -1;
  o.slack = -1;
  o.max_bytes = exact::kDefaultMaxBytes;
  return o;
}

dk_status dk_quantile_create(const dk_quantile_options* options, dk_quantile** out) {
  return guarded("dk_quantile_create", [&] {
    not_null(out, "out");
    *out = nullptr;
    const exact::Config cfg = config_of(options);
    const bool known = cfg.expected_count >= 1;
    const int64_t cap = known ? exact::capacity_for(cfg, cfg.expected_count) : 0;
    const bool fits = known && exact::state_bytes(cfg.num_units, cap) <= cfg.max_bytes;
    if (options->mode == DK_QUANTILE_EXACT) {
      require(known, "mode DK_QUANTILE_EXACT needs options.expected_count (samples per unit)");
      exact::check_budget(cfg, cap, "mode=\"exact\"");
    } else if (options->mode == DK_QUANTILE_SKETCH || !fits) {
      throw UnsupportedError(
          std::string("the sketch mode is not part of this C library (") +
          (known ? "the exact state would exceed options.max_bytes" : "options.expected_count is unknown") +
          "); give expected_count and a max_bytes that fits the exact mode");
    }
    auto* q = new dk_quantile();
    q->cfg = cfg;
    try {
      q->allocate(cap);
    } catch (...) {
      delete q;
      throw;
    }
    *out = q;
  });
}

void dk_quantile_free(dk_quantile* q) { delete q; }

dk_status dk_quantile_update(dk_quantile* q, const void* x, int32_t dtype, int64_t G, int64_t U, int64_t S,
                             const int64_t strides[3]) {
  return guarded("dk_quantile_update", [&] {
    check_handle(q);
    const QuantileFilterArgs a = input(q, x, dtype, G, U, S, strides);
    const int64_t bad = exact::update_cpu(q->cfg, q->view(), &q->count, a);
    require(bad == 0, "x contains NaN values (" + std::to_string(bad) + " of " + std::to_string(q->cfg.num_units) +
                          " units); this accumulator is now invalid");
  });
}

dk_status dk_quantile_update_maps(dk_quantile* q, const void* x, int32_t dtype, int64_t B, int64_t U, int64_t h,
                                  int64_t w, const int64_t strides[4]) {
  dk_status st = guarded("dk_quantile_update_maps", [&] {
    check_handle(q);
    at_least(h, 1, "h");
    at_least(w, 1, "w");
    not_null(strides, "strides");
  });
  if (st != DK_OK) return st;
  if (strides[2] == w * strides[3] || h == 1) {  // (h, w) flatten to one sample axis
    const int64_t s3[3] = {strides[0], strides[1], strides[3]};
    return dk_quantile_update(q, x, dtype, B, U, h * w, s3);
  }
  st = guarded("dk_quantile_update_maps", [&] { (void)dtype_of(dtype, "dtype"); });
  if (st != DK_OK) return st;
  const size_t esize = dtype_size(static_cast<DType>(dtype));
  const int64_t s3[3] = {strides[0], strides[1], strides[3]};
  for (int64_t i = 0; i < h; ++i) {  // one row of every map at a time
    const void* row = x ? static_cast<const char*>(x) + i * strides[2] * static_cast<int64_t>(esize) : nullptr;
    st = dk_quantile_update(q, row, dtype, B, U, w, s3);
    if (st != DK_OK) return st;
  }
  return DK_OK;
}

dk_status dk_quantile_query(const dk_quantile* q, const double* qs, int64_t nq, double* out) {
  return guarded("dk_quantile_query", [&] {
    check_handle(q);
    at_least(nq, 1, "nq");
    not_null(qs, "qs");
    not_null(out, "out");
    exact::quantile_cpu(q->cfg, q->view(), q->count, qs, nq, out);
  });
}

dk_status dk_quantile_cdf(const dk_quantile* q, const double* values, int64_t k, double* out) {
  return guarded("dk_quantile_cdf", [&] {
    check_handle(q);
    at_least(k, 1, "k");
    not_null(values, "values");
    not_null(out, "out");
    exact::cdf_cpu(q->view(), q->count, values, k, out);
  });
}

dk_status dk_quantile_merge(dk_quantile* into, const dk_quantile* other) {
  return guarded("dk_quantile_merge", [&] {
    not_null(into, "into");
    not_null(other, "other");
    refuse_nan_state(other, "other");
    refuse_nan_state(into, "into");
    if (other->count == 0) return;
    const exact::MergePlan plan =
        exact::merge_plan(into->cfg, into->count, into->capacity, other->cfg, other->count, other->capacity);
    dk_quantile merged;
    merged.cfg = into->cfg;
    merged.cfg.expected_count = plan.expected_count;
    merged.allocate(plan.capacity);
    exact::merge_cpu(into->view(), other->view(), plan.target, merged.view());
    merged.count = plan.count;
    std::swap(*into, merged);
  });
}

dk_status dk_quantile_count(const dk_quantile* q, int64_t* count) {
  return guarded("dk_quantile_count", [&] {
    check_handle(q);
    not_null(count, "count");
    *count = q->count;
  });
}

dk_status dk_quantile_num_units(const dk_quantile* q, int64_t* num_units) {
  return guarded("dk_quantile_num_units", [&] {
    check_handle(q);
    not_null(num_units, "num_units");
    *num_units = q->cfg.num_units;
  });
}

// Layout (host byte order): "DKQ1", u32 format, i32 mode, i32 0, i64 num_units, f64 min_quantile,
// i64 expected_count, i64 slack, i64 max_bytes, i64 count, i64 capacity, kept[U] i64, cut[U] f32,
// nan_count[U] i64, then each unit's kept values (f32).
dk_status dk_quantile_serialize(const dk_quantile* q, void* buffer, size_t capacity, size_t* size) {
  return guarded("dk_quantile_serialize", [&] {
    check_handle(q);
    const int64_t U = q->cfg.num_units;
    Writer w;
    w.put_array(kMagic, 4);
    w.put(kFormat);
    w.put(int32_t{DK_QUANTILE_EXACT});
    w.put(int32_t{0});
    w.put(U);
    w.put(q->cfg.min_quantile);
    w.put(q->cfg.expected_count);
    w.put(q->cfg.slack);
    w.put(q->cfg.max_bytes);
    w.put(q->count);
    w.put(q->capacity);
    w.put_array(q->kept.data(), U);
    w.put_array(q->cut.data(), U);
    w.put_array(q->nan_count.data(), U);
    for (int64_t u = 0; u < U; ++u) w.put_array(q->buffer.data() + u * q->capacity, q->kept[u]);
    emit_bytes(w, buffer, capacity, size);
  });
}

dk_status dk_quantile_deserialize(const void* buffer, size_t size, dk_quantile** out) {
  return guarded("dk_quantile_deserialize", [&] {
    not_null(out, "out");
    *out = nullptr;
    not_null(buffer, "buffer");
    Reader r{static_cast<const unsigned char*>(buffer), size, "dk_quantile_deserialize"};
    char magic[4];
    r.get_array(magic, 4);
    require(std::equal(magic, magic + 4, kMagic), "buffer does not hold a serialised dk_quantile (bad magic)");
    require(r.get<uint32_t>() == kFormat, "unsupported dk_quantile format version");
    require(r.get<int32_t>() == DK_QUANTILE_EXACT, "unsupported dk_quantile mode");
    (void)r.get<int32_t>();
    dk_quantile_options o = dk_quantile_default_options(r.get<int64_t>());
    o.mode = DK_QUANTILE_EXACT;
    o.min_quantile = r.get<double>();
    o.expected_count = r.get<int64_t>();
    o.slack = r.get<int64_t>();
    o.max_bytes = r.get<int64_t>();
    const exact::Config cfg = config_of(&o);
    require(cfg.expected_count >= 1, "corrupt dk_quantile: expected_count < 1");
    const int64_t count = r.get<int64_t>();
    const int64_t cap = r.get<int64_t>();
    require(count >= 0, "corrupt dk_quantile: negative count");
    require(cap >= 1 && exact::state_bytes(cfg.num_units, cap) <= cfg.max_bytes,
            "corrupt dk_quantile: capacity outside [1, max_bytes]");
    std::vector<int64_t> kept(static_cast<size_t>(cfg.num_units));
    r.get_array(kept.data(), cfg.num_units);  // before allocating: a short buffer fails cheaply
    auto q = std::make_unique<dk_quantile>();
    q->cfg = cfg;
    q->allocate(cap);
    q->kept = kept;
    q->count = count;
    r.get_array(q->cut.data(), cfg.num_units);
    r.get_array(q->nan_count.data(), cfg.num_units);
    for (int64_t u = 0; u < cfg.num_units; ++u) {
      require(q->kept[u] >= 0 && q->kept[u] <= cap, "corrupt dk_quantile: kept outside [0, capacity]");
      r.get_array(q->buffer.data() + u * cap, q->kept[u]);
    }
    require(r.left == 0, "dk_quantile_deserialize: trailing bytes after the state");
    *out = q.release();
  });
}

}  // extern "C"
