// C ABI: the top-k accumulator (dk_topk, see dissect_kernels.h), over topk.h's CPU kernels.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "capi_internal.h"
#include "dissect_kernels/topk.h"

using namespace dissect_kernels;
using namespace dissect_kernels::capi;

struct dk_topk {
  int64_t U = 0, k = 0, count = 0;
  std::vector<float> values;
  std::vector<int64_t> indices;

  TopKState state() { return TopKState{U, k, values.data(), indices.data()}; }
  TopKState state() const { return const_cast<dk_topk*>(this)->state(); }
  void allocate(int64_t units, int64_t kk) {
    U = units;
    k = kk;
    values.resize(static_cast<size_t>(U * k));
    indices.resize(static_cast<size_t>(U * k));
    topk_reset(state());
  }
};

namespace {
constexpr char kMagic[4] = {'D', 'K', 'T', '1'};
constexpr uint32_t kFormat = 1;
constexpr int64_t kMaxEntries = int64_t{1} << 34;  // U * k guard against absurd sizes
}  // namespace

extern "C" {

dk_status dk_topk_create(int64_t num_units, int64_t k, dk_topk** out) {
  return guarded("dk_topk_create", [&] {
    not_null(out, "out");
    *out = nullptr;
    at_least(num_units, 1, "num_units");
    at_least(k, 1, "k");
    require(num_units <= kMaxEntries / k, "num_units * k is too large");
    auto t = std::make_unique<dk_topk>();
    t->allocate(num_units, k);
    *out = t.release();
  });
}

void dk_topk_free(dk_topk* t) { delete t; }

dk_status dk_topk_update(dk_topk* t, const void* scores, int32_t dtype, int64_t N, int64_t U, int64_t stride_n,
                         int64_t stride_u, const int64_t* indices) {
  return guarded("dk_topk_update", [&] {
    not_null(t, "t");
    const DType dt = dtype_of(dtype, "dtype");
    at_least(N, 0, "N");
    require(U == t->U, "U = " + std::to_string(U) + " but the accumulator has num_units = " + std::to_string(t->U));
    if (N == 0) return;
    not_null(scores, "scores");
    not_null(indices, "indices");
    const int64_t st[3] = {stride_n, stride_u, 0};
    no_nan(scores, dt, N, U, 1, st, "scores");
    topk_update_cpu(t->state(), scores, dt, N, stride_n, stride_u, indices);
    t->count += N;
  });
}

dk_status dk_topk_merge(dk_topk* into, const dk_topk* other) {
  return guarded("dk_topk_merge", [&] {
    not_null(into, "into");
    not_null(other, "other");
    require(into->U == other->U && into->k == other->k, "can only merge a dk_topk with the same num_units and k");
    const dk_topk copy = *other;  // `other` may be `into`
    topk_merge_cpu(into->state(), copy.state());
    into->count += copy.count;
  });
}

dk_status dk_topk_result(const dk_topk* t, float* values, int64_t* indices) {
  return guarded("dk_topk_result", [&] {
    not_null(t, "t");
    not_null(values, "values");
    not_null(indices, "indices");
    std::copy(t->values.begin(), t->values.end(), values);
    for (size_t i = 0; i < t->indices.size(); ++i)
      indices[i] = t->indices[i] == kTopKEmptyIndex ? -1 : t->indices[i];
  });
}

dk_status dk_topk_count(const dk_topk* t, int64_t* count) {
  return guarded("dk_topk_count", [&] {
    not_null(t, "t");
    not_null(count, "count");
    *count = t->count;
  });
}

// Layout (host byte order): "DKT1", u32 format, i64 num_units, i64 k, i64 count, values [U, k]
// f32, indices [U, k] i64 (empty slots as INT64_MAX).
dk_status dk_topk_serialize(const dk_topk* t, void* buffer, size_t capacity, size_t* size) {
  return guarded("dk_topk_serialize", [&] {
    not_null(t, "t");
    Writer w;
    w.put_array(kMagic, 4);
    w.put(kFormat);
    w.put(t->U);
    w.put(t->k);
    w.put(t->count);
    w.put_array(t->values.data(), t->U * t->k);
    w.put_array(t->indices.data(), t->U * t->k);
    emit_bytes(w, buffer, capacity, size);
  });
}

dk_status dk_topk_deserialize(const void* buffer, size_t size, dk_topk** out) {
  return guarded("dk_topk_deserialize", [&] {
    not_null(out, "out");
    *out = nullptr;
    not_null(buffer, "buffer");
    Reader r{static_cast<const unsigned char*>(buffer), size, "dk_topk_deserialize"};
    char magic[4];
    r.get_array(magic, 4);
    require(std::equal(magic, magic + 4, kMagic), "buffer does not hold a serialised dk_topk (bad magic)");
    require(r.get<uint32_t>() == kFormat, "unsupported dk_topk format version");
    const int64_t U = r.get<int64_t>(), k = r.get<int64_t>(), count = r.get<int64_t>();
    require(U >= 1 && k >= 1 && U <= kMaxEntries / k && count >= 0, "corrupt dk_topk header");
    require(static_cast<double>(U) * static_cast<double>(k) * 12.0 <= static_cast<double>(r.left),
            "dk_topk_deserialize: the buffer is truncated or corrupt");
    auto t = std::make_unique<dk_topk>();
    t->allocate(U, k);
    t->count = count;
    r.get_array(t->values.data(), U * k);
    r.get_array(t->indices.data(), U * k);
    require(r.left == 0, "dk_topk_deserialize: trailing bytes after the state");
    *out = t.release();
  });
}

}  // extern "C"
