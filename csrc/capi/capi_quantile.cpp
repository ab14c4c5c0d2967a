// C ABI: the quantile accumulator (dk_quantile, see dissect_kernels.h). Exact mode owns a host
// state and drives it with exact_quantile.h's state machine, so its sizes, compaction targets,
// merges and answers are the ones the Python ExactQuantile reaches. Sketch mode owns a TailSketch
// (capi_sketch.h) and reaches the Python TailSketch's state from the same batches.
#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "capi_internal.h"
#include "capi_sketch.h"
#include "dissect_kernels/convert.h"
#include "dissect_kernels/exact_quantile.h"

using namespace dissect_kernels;
using namespace dissect_kernels::capi;

struct dk_quantile {
  int32_t mode = DK_QUANTILE_EXACT;  // DK_QUANTILE_EXACT or DK_QUANTILE_SKETCH once created
  exact::Config cfg;                 // sketch mode uses num_units and min_quantile
  SketchStore sketch;
  int64_t count = 0;                 // exact mode (the sketch counts itself)
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
  bool is_sketch() const { return mode == DK_QUANTILE_SKETCH; }
  int64_t samples() const { return is_sketch() ? sketch.count() : count; }
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

// The mode a create call gets: exact when asked, or ("auto") when the count is known and fits.
int32_t resolve_mode(const dk_quantile_options* o, const exact::Config& cfg, int64_t* capacity) {
  const bool known = cfg.expected_count >= 1;
  *capacity = known ? exact::capacity_for(cfg, cfg.expected_count) : 0;
  if (o->mode == DK_QUANTILE_EXACT) {
    require(known, "mode DK_QUANTILE_EXACT needs options.expected_count (samples per unit)");
    exact::check_budget(cfg, *capacity, "mode=\"exact\"");
    return DK_QUANTILE_EXACT;
  }
  if (o->mode == DK_QUANTILE_AUTO && known && exact::state_bytes(cfg.num_units, *capacity) <= cfg.max_bytes)
    return DK_QUANTILE_EXACT;
  return DK_QUANTILE_SKETCH;
}

void check_handle(const dk_quantile* q) { not_null(q, "q"); }

// x viewed as [B, U, h, w] with element strides (b, u, i, j); samples are the (b, i, j) in that
// order, which is how Python flattens maps for the sketch ([G, U, S] is h = 1, w = S).
struct Input {
  const void* x;
  DType dtype;
  int64_t B, U, h, w;
  int64_t stride[4];
  int64_t rows() const { return B * h * w; }
  // Element offset of sample `row`'s unit 0.
  int64_t row_offset(int64_t row) const {
    const int64_t b = row / (h * w), rem = row - b * (h * w), i = rem / w, j = rem - i * w;
    return b * stride[0] + i * stride[2] + j * stride[3];
  }
};

Input input(const dk_quantile* q, const void* x, int32_t dtype, int64_t B, int64_t U, int64_t h, int64_t w,
            const int64_t* strides, int nstrides) {
  Input in{x, dtype_of(dtype, "dtype"), B, U, h, w, {0, 0, 0, 0}};
  at_least(B, 0, nstrides == 3 ? "G" : "B");
  at_least(h, 1, "h");
  at_least(w, 1, nstrides == 3 ? "S" : "w");
  require(U == q->cfg.num_units,
          "U = " + std::to_string(U) + " but the accumulator has num_units = " + std::to_string(q->cfg.num_units));
  not_null(strides, "strides");
  if (B > 0) not_null(x, "x");
  if (nstrides == 3) {
    in.stride[0] = strides[0], in.stride[1] = strides[1], in.stride[2] = 0, in.stride[3] = strides[2];
  } else {
    for (int i = 0; i < 4; ++i) in.stride[i] = strides[i];
  }
  return in;
}

// Exact mode: [G, U, S] views go to the filter as they are; maps whose (h, w) do not flatten go
// one row of every map at a time (the order of samples does not change exact answers).
void exact_update(dk_quantile* q, const Input& in) {
  QuantileFilterArgs a;
  a.x_dtype = in.dtype;
  a.U = in.U;
  const bool flat = in.h == 1 || in.stride[2] == in.w * in.stride[3];
  a.G = in.B;
  a.S = flat ? in.h * in.w : in.w;
  a.x_stride[0] = in.stride[0], a.x_stride[1] = in.stride[1], a.x_stride[2] = in.stride[3];
  const size_t esize = in.dtype == DType::Float32 ? 4 : 2;
  for (int64_t i = 0; i < (flat ? 1 : in.h); ++i) {
    a.x = in.x ? static_cast<const char*>(in.x) + i * in.stride[2] * static_cast<int64_t>(esize) : nullptr;
    const int64_t bad = exact::update_cpu(q->cfg, q->view(), &q->count, a);
    require(bad == 0, "x contains NaN values (" + std::to_string(bad) + " of " + std::to_string(q->cfg.num_units) +
                          " units); this accumulator is now invalid");
  }
}

// Sketch mode: NaN is refused before anything changes (as Python's TailSketch.update); rows
// are gathered as float32 in blocks of the sketch's block_rows, so flushes happen where a single
// update of all the rows would make them.
void sketch_update(dk_quantile* q, const Input& in) {
  const int64_t R = in.rows(), U = in.U;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t base = in.row_offset(r);
    for (int64_t u = 0; u < U; ++u) {
      const float v = load_as_float(in.x, base + u * in.stride[1], in.dtype);
      require(v == v, "x contains NaN values (sample " + std::to_string(r) + ", unit " + std::to_string(u) + ")");
    }
  }
  const int64_t block = q->sketch.st.block_rows;
  std::vector<float> rows(static_cast<size_t>(std::min(R, block) * U));
  for (int64_t r0 = 0; r0 < R; r0 += block) {
    const int64_t n = std::min(block, R - r0);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t base = in.row_offset(r0 + r);
      for (int64_t u = 0; u < U; ++u) rows[r * U + u] = load_as_float(in.x, base + u * in.stride[1], in.dtype);
    }
    tail_sketch_update_cpu(q->sketch.st, rows.data(), n, U);
  }
}

void check_q(const dk_quantile* q, const double* qs, int64_t nq) {
  for (int64_t j = 0; j < nq; ++j) {
    require(qs[j] >= 0.0 && qs[j] <= 1.0, "q must lie in [0, 1], got " + std::to_string(qs[j]));
    require(qs[j] >= q->cfg.min_quantile, "q=" + std::to_string(qs[j]) + " is below min_quantile=" +
                                              std::to_string(q->cfg.min_quantile) + " (build with a lower one)");
  }
}

void refuse_nan_state(const dk_quantile* q, const char* which) {
  const int64_t bad = q->is_sketch() ? 0 : exact::units_with_nan(q->nan_count.data(), q->cfg.num_units);
  if (bad)
    throw exact::StateError(std::string(which) + " saw NaN values in " + std::to_string(bad) +
                            " units; its quantiles are undefined");
}

void refuse_empty(const dk_quantile* q) {
  if (q->samples() == 0) throw exact::StateError("the sketch is empty: update it before asking for quantiles");
}

// Sketch readout: value and bound per unit and q from a flushed copy.
void sketch_select(const dk_quantile* q, const double* qs, int64_t nq, float* value, double* bound) {
  refuse_empty(q);
  const SketchStore flat = q->sketch.flushed();
  tail_sketch_select_cpu(flat.st, qs, nq, value, bound);
}

void merge_exact(dk_quantile* into, const dk_quantile* other) {
  const exact::MergePlan plan =
      exact::merge_plan(into->cfg, into->count, into->capacity, other->cfg, other->count, other->capacity);
  dk_quantile merged;
  merged.cfg = into->cfg;
  merged.cfg.expected_count = plan.expected_count;
  merged.allocate(plan.capacity);
  exact::merge_cpu(into->view(), other->view(), plan.target, merged.view());
  merged.count = plan.count;
  std::swap(*into, merged);
}

void merge_sketch(dk_quantile* into, const dk_quantile* other) {
  require(into->cfg.num_units == other->cfg.num_units && into->sketch.st.k_l == other->sketch.st.k_l &&
              into->sketch.st.tail_shift == other->sketch.st.tail_shift,
          "cannot merge sketches of different num_units or min_quantile configuration");
  const SketchStore b = other->sketch.flushed();  // `other` may be `into`: copy before flushing
  tail_sketch_flush_cpu(into->sketch.st);
  tail_sketch_merge_cpu(into->sketch.st, b.st);
}

// Serialised sketch: per unit size, total, counted, pend_n, tidx, coarsen, then its summary
// entries (values, rmin, rmax, gap, eq) and pending values; the config is re-derived.
void put_sketch(Writer& w, const SketchStore& s) {
  const int64_t U = s.st.U, M = s.st.M, P = s.st.P;
  for (const auto* v : {&s.size, &s.total, &s.counted, &s.pend_n, &s.tidx, &s.coarsen}) w.put_array(v->data(), U);
  for (int64_t u = 0; u < U; ++u) {
    const int64_t n = s.size[u];
    w.put_array(s.values.data() + u * M, n);
    for (const auto* v : {&s.rmin, &s.rmax, &s.gap, &s.eq}) w.put_array(v->data() + u * M, n);
    w.put_array(s.pend.data() + u * P, s.pend_n[u]);
  }
}

void get_sketch(Reader& r, SketchStore& s) {
  const int64_t U = s.st.U, M = s.st.M, P = s.st.P;
  for (auto* v : {&s.size, &s.total, &s.counted, &s.pend_n, &s.tidx, &s.coarsen}) r.get_array(v->data(), U);
  for (int64_t u = 0; u < U; ++u) {
    const int64_t n = s.size[u];
    require(n >= 0 && n <= M && s.pend_n[u] >= 0 && s.pend_n[u] <= P && s.tidx[u] >= -1 && s.tidx[u] < M &&
                s.total[u] >= 0 && s.counted[u] >= 0 && s.coarsen[u] >= 0,
            "corrupt dk_quantile: sketch sizes out of range");
    r.get_array(s.values.data() + u * M, n);
    for (auto* v : {&s.rmin, &s.rmax, &s.gap, &s.eq}) r.get_array(v->data() + u * M, n);
    r.get_array(s.pend.data() + u * P, s.pend_n[u]);
  }
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
    int64_t cap = 0;
    auto q = std::make_unique<dk_quantile>();
    q->cfg = cfg;
    q->mode = resolve_mode(options, cfg, &cap);
    if (q->is_sketch())
      q->sketch.configure(cfg.num_units, cfg.min_quantile);
    else
      q->allocate(cap);
    *out = q.release();
  });
}

void dk_quantile_free(dk_quantile* q) { delete q; }

dk_status dk_quantile_get_mode(const dk_quantile* q, int32_t* mode) {
  return guarded("dk_quantile_get_mode", [&] {
    check_handle(q);
    not_null(mode, "mode");
    *mode = q->mode;
  });
}

dk_status dk_quantile_update(dk_quantile* q, const void* x, int32_t dtype, int64_t G, int64_t U, int64_t S,
                             const int64_t strides[3]) {
  return guarded("dk_quantile_update", [&] {
    check_handle(q);
    const Input in = input(q, x, dtype, G, U, 1, S, strides, 3);
    if (in.rows() == 0) return;
    q->is_sketch() ? sketch_update(q, in) : exact_update(q, in);
  });
}

dk_status dk_quantile_update_maps(dk_quantile* q, const void* x, int32_t dtype, int64_t B, int64_t U, int64_t h,
                                  int64_t w, const int64_t strides[4]) {
  return guarded("dk_quantile_update_maps", [&] {
    check_handle(q);
    const Input in = input(q, x, dtype, B, U, h, w, strides, 4);
    if (in.rows() == 0) return;
    q->is_sketch() ? sketch_update(q, in) : exact_update(q, in);
  });
}

dk_status dk_quantile_query(const dk_quantile* q, const double* qs, int64_t nq, double* out) {
  return guarded("dk_quantile_query", [&] {
    check_handle(q);
    at_least(nq, 1, "nq");
    not_null(qs, "qs");
    not_null(out, "out");
    check_q(q, qs, nq);
    if (!q->is_sketch()) {
      exact::quantile_cpu(q->cfg, q->view(), q->count, qs, nq, out);
      return;
    }
    std::vector<float> value(static_cast<size_t>(q->cfg.num_units * nq));
    std::vector<double> bound(value.size());
    sketch_select(q, qs, nq, value.data(), bound.data());
    std::copy(value.begin(), value.end(), out);
  });
}

dk_status dk_quantile_rank_error_bound(const dk_quantile* q, const double* qs, int64_t nq, double* out) {
  return guarded("dk_quantile_rank_error_bound", [&] {
    check_handle(q);
    at_least(nq, 1, "nq");
    not_null(qs, "qs");
    not_null(out, "out");
    check_q(q, qs, nq);
    if (!q->is_sketch()) {
      refuse_empty(q);
      std::fill(out, out + q->cfg.num_units * nq, 0.0);
      return;
    }
    std::vector<float> value(static_cast<size_t>(q->cfg.num_units * nq));
    sketch_select(q, qs, nq, value.data(), out);
  });
}

dk_status dk_quantile_cdf(const dk_quantile* q, const double* values, int64_t k, double* out) {
  return guarded("dk_quantile_cdf", [&] {
    check_handle(q);
    at_least(k, 1, "k");
    not_null(values, "values");
    not_null(out, "out");
    if (!q->is_sketch()) {
      exact::cdf_cpu(q->view(), q->count, values, k, out);
      return;
    }
    refuse_empty(q);
    std::vector<float> y(static_cast<size_t>(q->cfg.num_units * k));
    for (size_t i = 0; i < y.size(); ++i) {
      require(values[i] == values[i], "values contains NaN (at " + std::to_string(i) + ")");
      y[i] = static_cast<float>(values[i]);
    }
    const SketchStore flat = q->sketch.flushed();
    tail_sketch_cdf_cpu(flat.st, y.data(), k, out);
  });
}

dk_status dk_quantile_merge(dk_quantile* into, const dk_quantile* other) {
  return guarded("dk_quantile_merge", [&] {
    not_null(into, "into");
    not_null(other, "other");
    require(into->mode == other->mode, "cannot merge a sketch-mode and an exact-mode dk_quantile");
    refuse_nan_state(other, "other");
    refuse_nan_state(into, "into");
    if (other->samples() == 0) return;
    into->is_sketch() ? merge_sketch(into, other) : merge_exact(into, other);
  });
}

dk_status dk_quantile_count(const dk_quantile* q, int64_t* count) {
  return guarded("dk_quantile_count", [&] {
    check_handle(q);
    not_null(count, "count");
    *count = q->samples();
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
// i64 expected_count, i64 slack, i64 max_bytes; exact: i64 count, i64 capacity, kept[U] i64,
// cut[U] f32, nan_count[U] i64, then each unit's kept values (f32); sketch: put_sketch's arrays.
dk_status dk_quantile_serialize(const dk_quantile* q, void* buffer, size_t capacity, size_t* size) {
  return guarded("dk_quantile_serialize", [&] {
    check_handle(q);
    const int64_t U = q->cfg.num_units;
    Writer w;
    w.put_array(kMagic, 4);
    w.put(kFormat);
    w.put(q->mode);
    w.put(int32_t{0});
    w.put(U);
    w.put(q->cfg.min_quantile);
    w.put(q->cfg.expected_count);
    w.put(q->cfg.slack);
    w.put(q->cfg.max_bytes);
    if (q->is_sketch()) {
      put_sketch(w, q->sketch);
    } else {
      w.put(q->count);
      w.put(q->capacity);
      w.put_array(q->kept.data(), U);
      w.put_array(q->cut.data(), U);
      w.put_array(q->nan_count.data(), U);
      for (int64_t u = 0; u < U; ++u) w.put_array(q->buffer.data() + u * q->capacity, q->kept[u]);
    }
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
    const int32_t mode = r.get<int32_t>();
    require(mode == DK_QUANTILE_EXACT || mode == DK_QUANTILE_SKETCH, "corrupt dk_quantile: unknown mode");
    (void)r.get<int32_t>();
    dk_quantile_options o = dk_quantile_default_options(r.get<int64_t>());
    o.mode = mode;
    o.min_quantile = r.get<double>();
    o.expected_count = r.get<int64_t>();
    o.slack = r.get<int64_t>();
    o.max_bytes = r.get<int64_t>();
    const exact::Config cfg = config_of(&o);
    auto q = std::make_unique<dk_quantile>();
    q->cfg = cfg;
    q->mode = mode;
    if (mode == DK_QUANTILE_SKETCH) {
      require(static_cast<double>(cfg.num_units) * 48.0 <= static_cast<double>(r.left),
              "dk_quantile_deserialize: the buffer is truncated or corrupt");
      q->sketch.configure(cfg.num_units, cfg.min_quantile);
      get_sketch(r, q->sketch);
    } else {
      require(cfg.expected_count >= 1, "corrupt dk_quantile: expected_count < 1");
      const int64_t count = r.get<int64_t>();
      const int64_t cap = r.get<int64_t>();
      require(count >= 0, "corrupt dk_quantile: negative count");
      require(cap >= 1 && exact::state_bytes(cfg.num_units, cap) <= cfg.max_bytes,
              "corrupt dk_quantile: capacity outside [1, max_bytes]");
      std::vector<int64_t> kept(static_cast<size_t>(cfg.num_units));
      r.get_array(kept.data(), cfg.num_units);  // before allocating: a short buffer fails cheaply
      q->allocate(cap);
      q->kept = kept;
      q->count = count;
      r.get_array(q->cut.data(), cfg.num_units);
      r.get_array(q->nan_count.data(), cfg.num_units);
      for (int64_t u = 0; u < cfg.num_units; ++u) {
        require(q->kept[u] >= 0 && q->kept[u] <= cap, "corrupt dk_quantile: kept outside [0, capacity]");
        r.get_array(q->buffer.data() + u * cap, q->kept[u]);
      }
    }
    require(r.left == 0, "dk_quantile_deserialize: trailing bytes after the state");
    *out = q.release();
  });
}

}  // extern "C"
