// CPU exact-tail filter (see quantile.h): one pass over the input. float32 rows with AVX-512
// (runtime-detected): 16-row x 16-unit tiles, each unit with a value above its cut appended as a
// column (register compress + one store), compaction count/keep passes vectorised; otherwise an
// SSE 16-unit bitmask. One thread walks whole rows; several take unit panels dynamically (no
// static split to wait on).
#include "dissect_kernels/quantile.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "dissect_kernels/convert.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include "dissect_kernels/simd_x86.h"
#ifdef DK_HAVE_X86_SIMD
#define DK_QUANTILE_AVX512 1
#endif

namespace dissect_kernels {
namespace {

constexpr int64_t kBlock = 16;

template <typename T> inline float to_float(T v);
template <> inline float to_float<float>(float v) { return v; }

struct Half { uint16_t bits; };
struct BF16 { uint16_t bits; };
template <> inline float to_float<Half>(Half v) { return half_to_float(v.bits); }
template <> inline float to_float<BF16>(BF16 v) { return bfloat16_to_float(v.bits); }

// Bit j set when !(v[j] <= c[j]) (above the cut, or NaN), for a block of 16.
inline uint32_t above16(const float* v, const float* c) {
#if defined(__SSE2__)
  uint32_t m = 0;
  for (int k = 0; k < 4; ++k)
    m |= static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpnle_ps(_mm_loadu_ps(v + 4 * k),
                                                             _mm_loadu_ps(c + 4 * k)))) << (4 * k);
  return m;
#else
  uint32_t m = 0;
  for (int j = 0; j < 16; ++j) m |= static_cast<uint32_t>(!(v[j] <= c[j])) << j;
  return m;
#endif
}

inline uint32_t above16(const float* v, float c) {
#if defined(__SSE2__)
  const __m128 cc = _mm_set1_ps(c);
  uint32_t m = 0;
  for (int k = 0; k < 4; ++k)
    m |= static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpnle_ps(_mm_loadu_ps(v + 4 * k), cc))) << (4 * k);
  return m;
#else
  uint32_t m = 0;
  for (int j = 0; j < 16; ++j) m |= static_cast<uint32_t>(!(v[j] <= c)) << j;
  return m;
#endif
}

// A block of 16 values as float: the input itself for float32, converted otherwise.
template <typename T>
inline const float* as_floats(const T* p, float* tmp) {
  for (int j = 0; j < 16; ++j) tmp[j] = to_float<T>(p[j]);
  return tmp;
}
template <>
inline const float* as_floats<float>(const float* p, float*) { return p; }

// Number of b[0..n) that are > c; *equal += the number == c.
inline int64_t count_above_scalar(const float* b, int64_t n, float c, int64_t* equal) {
  int64_t above = 0, eq = 0;
  for (int64_t i = 0; i < n; ++i) {
    above += b[i] > c;
    eq += b[i] == c;
  }
  *equal += eq;
  return above;
}
// Keep (in order, in place) the b[0..n) that are > c; returns how many.
inline int64_t keep_above_scalar(float* b, int64_t n, float c) {
  int64_t w = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float x = b[i];
    b[w] = x;
    w += x > c;
  }
  return w;
}

#ifdef DK_QUANTILE_AVX512
__attribute__((target("avx512f,popcnt")))
int64_t count_above_avx512(const float* b, int64_t n, float c, int64_t* equal) {
  const __m512 cc = _mm512_set1_ps(c);
  int64_t above = 0, eq = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(b + i);
    above += __builtin_popcount(_mm512_cmp_ps_mask(v, cc, _CMP_GT_OQ));
    eq += __builtin_popcount(_mm512_cmp_ps_mask(v, cc, _CMP_EQ_OQ));
  }
  *equal += eq;
  return above + count_above_scalar(b + i, n - i, c, equal);
}
// Register compress + full 16-lane store at b + w (w <= i, so it only overwrites values
// already loaded); the slots past the kept count are left unspecified.
__attribute__((target("avx512f,popcnt")))
int64_t keep_above_avx512(float* b, int64_t n, float c) {
  const __m512 cc = _mm512_set1_ps(c);
  int64_t w = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(b + i);
    const __mmask16 m = _mm512_cmp_ps_mask(v, cc, _CMP_GT_OQ);
    _mm512_storeu_ps(b + w, _mm512_maskz_compress_ps(m, v));
    w += __builtin_popcount(m);
  }
  for (; i < n; ++i) {
    const float x = b[i];
    b[w] = x;
    w += x > c;
  }
  return w;
}
inline bool has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("popcnt");
  return ok;
}
inline int64_t count_above(const float* b, int64_t n, float c, int64_t* equal) {
  return has_avx512() ? count_above_avx512(b, n, c, equal) : count_above_scalar(b, n, c, equal);
}
inline int64_t keep_above(float* b, int64_t n, float c) {
  return has_avx512() ? keep_above_avx512(b, n, c) : keep_above_scalar(b, n, c);
}
#else
inline int64_t count_above(const float* b, int64_t n, float c, int64_t* equal) {
  return count_above_scalar(b, n, c, equal);
}
inline int64_t keep_above(float* b, int64_t n, float c) { return keep_above_scalar(b, n, c); }
#endif

struct State {
  float* buf;
  int64_t capacity, target;
  int64_t* kept;
  float* cut;
  int64_t* nan;

  // Make room: keep the top values, raise the cut. Fast path: a pivot c from a strided sample
  // of the buffer (rank chosen a few sigma above target/n), one counting pass, and if at least
  // `target` (and not too many) values are > c, one in-place pass keeping exactly those: every
  // value > c kept, every dropped value <= c, so the kept values are still the top-kept
  // multiset. Otherwise nth_element: exactly `target` values, cut = the target-th largest.
  inline void compact(int64_t u) {
    float* b = buf + u * capacity;
    const int64_t n = kept[u];
    constexpr int64_t kSample = 1024;
    if (n >= 8 * kSample) {
      float smp[kSample];
      const int64_t stride = n / kSample;
      for (int64_t i = 0; i < kSample; ++i) smp[i] = b[i * stride];
      const double f = static_cast<double>(target) / static_cast<double>(n);
      const double want = f + 4.0 * std::sqrt(f * (1.0 - f) / kSample) + 2.0 / kSample;
      const int64_t m = static_cast<int64_t>(want * kSample);
      if (m < kSample) {
        std::nth_element(smp, smp + m, smp + kSample, std::greater<float>());
        const float c = smp[m];
        int64_t equal = 0;
        const int64_t above = count_above(b, n, c, &equal);
        if (above >= target && above <= (target + capacity) / 2) {
          cut[u] = c;
          kept[u] = keep_above(b, n, c);
          return;
        }
        if (above < target && above + equal >= target) {
          // c is the target-th largest (typically a run of ties such as ReLU zeros): keep
          // the values > c and target - above copies of c, as nth_element would.
          const int64_t w = keep_above(b, n, c);
          std::fill(b + w, b + target, c);
          cut[u] = c;
          kept[u] = target;
          return;
        }
      }
    }
    std::nth_element(b, b + (target - 1), b + n, std::greater<float>());
    cut[u] = b[target - 1];
    kept[u] = target;
  }

  // Slow path for one value of unit u (NaN, or possibly above the cut).
  inline void push(int64_t u, float v) {
    if (v != v) { ++nan[u]; return; }
    if (!(v > cut[u])) return;
    if (v == 0.f) v = 0.f;  // -0.0 -> +0.0
    if (kept[u] == capacity) {
      compact(u);
      if (!(v > cut[u])) return;
    }
    buf[u * capacity + kept[u]++] = v;
  }

  // Append v (known !(v <= cut[u])): NaN counted, -0.0 stored as +0.0 (v + 0.0f), compaction
  // when full (after which v must beat the new cut).
  inline void append(int64_t u, float v) {
    if (v != v) { ++nan[u]; return; }
    int64_t k = kept[u];
    if (k == capacity) {
      compact(u);
      if (!(v > cut[u])) return;
      k = kept[u];
    }
    buf[u * capacity + k] = v + 0.0f;
    kept[u] = k + 1;
  }
};

#ifdef DK_QUANTILE_AVX512
// Appends for float32 units [u0, u1) with a per-unit fill limit: the capacity, except before a
// unit's first compaction (cut still -inf, so every value is appended -- with ReLU inputs mostly
// zeros): then compact as soon as the buffer holds target + slack/8 values, which raises the cut
// early. Only with a large slack (>= 4096), where the extra compaction is cheap next to the
// appends it saves.
struct LimitedAppender {
  State& st;
  std::vector<int64_t> lim_store;
  int64_t* lim;
  LimitedAppender(State& s, int64_t u0, int64_t u1) : st(s), lim_store(static_cast<size_t>(u1 - u0)) {
    lim = lim_store.data() - u0;
    const int64_t cap = st.capacity;
    const int64_t early = cap - st.target >= 4096 ? st.target + (cap - st.target) / 8 : cap;
    for (int64_t uu = u0; uu < u1; ++uu)
      lim[uu] = st.cut[uu] == -std::numeric_limits<float>::infinity() ? early : cap;
  }
  // Append v to unit uu (v is NaN or above the cut it was compared with).
  inline void append(int64_t uu, float v) {
    if (__builtin_expect(v != v, 0)) { ++st.nan[uu]; return; }
    int64_t k = st.kept[uu];
    if (__builtin_expect(k >= lim[uu], 0)) {
      lim[uu] = st.capacity;
      if (k > st.target) {
        st.compact(uu);
        if (!(v > st.cut[uu])) return;
        k = st.kept[uu];
      }
    }
    st.buf[uu * st.capacity + k] = v + 0.0f;
    st.kept[uu] = k + 1;
  }
};

// float32 rows [g0, g1), units [u0, u1), row-major: a 64-unit mask per step (4 AVX-512
// compares) so the loop over passing lanes mispredicts about once per 64 values.
__attribute__((target("avx512f")))
void scan_rows_f32_avx512(const QuantileFilterArgs& a, LimitedAppender& ap, int64_t u0, int64_t u1,
                          int64_t g0, int64_t g1) {
  const float* x = static_cast<const float*>(a.x);
  const float* cut = ap.st.cut;
  for (int64_t g = g0; g < g1; ++g) {
    const float* row = x + g * a.x_stride[0];
    int64_t u = u0;
    for (; u + 64 <= u1; u += 64) {
      uint64_t hits = 0;
      for (int k = 0; k < 4; ++k)
        hits |= static_cast<uint64_t>(_mm512_cmp_ps_mask(_mm512_loadu_ps(row + u + 16 * k),
                                                          _mm512_loadu_ps(cut + u + 16 * k),
                                                          _CMP_NLE_UQ)) << (16 * k);
      for (; hits; hits &= hits - 1) {
        const int j = __builtin_ctzll(hits);
        ap.append(u + j, row[u + j]);
      }
    }
    for (; u + 16 <= u1; u += 16) {
      uint32_t hits = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + u), _mm512_loadu_ps(cut + u),
                                         _CMP_NLE_UQ);
      for (; hits; hits &= hits - 1) {
        const int j = __builtin_ctz(hits);
        ap.append(u + j, row[u + j]);
      }
    }
    for (; u < u1; ++u) ap.st.push(u, row[u]);
  }
}

// Append the values of column `col` (16 consecutive rows of unit uu) above its cut: one register
// compress and a full 16-lane store (slots past `kept` are scratch). A unit within 16 slots of
// its limit, or a column with a NaN, goes lane by lane (re-checking the cut after a compaction).
__attribute__((target("avx512f,popcnt"), always_inline))
inline void append_column(LimitedAppender& ap, int64_t uu, __m512 col) {
  State& st = ap.st;
  const __mmask16 m = _mm512_cmp_ps_mask(col, _mm512_set1_ps(st.cut[uu]), _CMP_NLE_UQ);
  const int64_t k = st.kept[uu];
  if (__builtin_expect(k + 16 > ap.lim[uu] || _mm512_cmp_ps_mask(col, col, _CMP_UNORD_Q), 0)) {
    alignas(64) float lane[16];
    _mm512_store_ps(lane, col);
    for (int r = 0; r < 16; ++r)
      if (!(lane[r] <= st.cut[uu])) ap.append(uu, lane[r]);
    return;
  }
  _mm512_storeu_ps(st.buf + uu * st.capacity + k,
                   _mm512_maskz_compress_ps(m, _mm512_add_ps(col, _mm512_setzero_ps())));
  st.kept[uu] = k + __builtin_popcount(m);
}

// float32 rows, units [u0, u1), in tiles of 16 rows x 16 units. The 16 row vectors are compared
// with the 16 cuts (row-major, cheap); only units with a value above their cut are visited, each
// as a column of its 16 consecutive values (appended in row order, so the buffers match the
// row-major walk's up to when compactions happen): gathered from the tile when few units hit
// (a high cut), from an in-register transpose when many do. Rows past the last full tile, and
// the last units when U is not a multiple of 16: row-major walk.
__attribute__((target("avx512f,popcnt")))
void scan_tiles_f32_avx512(const QuantileFilterArgs& a, State& st, int64_t u0, int64_t u1) {
  LimitedAppender ap(st, u0, u1);
  const float* x = static_cast<const float*>(a.x);
  const int64_t ld = a.x_stride[0];
  const int64_t ue = u0 + (u1 - u0) / 16 * 16;
  const int64_t ge = ld < (int64_t{1} << 26) ? a.G / 16 * 16 : 0;  // gather offsets are int32
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int32_t>(ld)));
  for (int64_t g = 0; g < ge; g += 16) {
    const float* tile = x + g * ld;
    for (int64_t u = u0; u < ue; u += 16) {
      if (g + 16 < ge)  // the next tile's rows into L2: 16 strided streams defeat the hardware prefetcher
        for (int r = 0; r < 16; ++r) _mm_prefetch(reinterpret_cast<const char*>(tile + (16 + r) * ld + u), _MM_HINT_T1);
      __m512 v[16];
      const __m512 cv = _mm512_loadu_ps(st.cut + u);
      uint32_t hit = 0;
      for (int r = 0; r < 16; ++r) {
        v[r] = _mm512_loadu_ps(tile + r * ld + u);
        hit |= _mm512_cmp_ps_mask(v[r], cv, _CMP_NLE_UQ);
      }
      if (!hit) continue;
      if (__builtin_popcount(hit) > 4) {
        transpose16_regs(v);
        for (; hit; hit &= hit - 1) {
          const int q = __builtin_ctz(hit);
          append_column(ap, u + q, v[q]);
        }
      } else {
        for (; hit; hit &= hit - 1) {
          const int q = __builtin_ctz(hit);
          append_column(ap, u + q, _mm512_i32gather_ps(rows, tile + u + q, 4));
        }
      }
    }
    for (int64_t r = g; r < g + 16; ++r)
      for (int64_t uu = ue; uu < u1; ++uu) st.push(uu, x[r * ld + uu]);
  }
  scan_rows_f32_avx512(a, ap, u0, u1, ge, a.G);
}
#endif

// Units [u0, u1) of rows g, units contiguous (S == 1, unit stride 1): a row-major walk, each
// block of 16 units compared with its 16 cuts at once (the portable path; float16/bfloat16).
template <typename T>
void scan_rows(const QuantileFilterArgs& a, State& st, int64_t u0, int64_t u1) {
  const T* x = static_cast<const T*>(a.x);
  for (int64_t g = 0; g < a.G; ++g) {
    const T* row = x + g * a.x_stride[0];
    int64_t u = u0;
    for (; u + kBlock <= u1; u += kBlock) {
      float tmp[kBlock];
      const float* v = as_floats<T>(row + u, tmp);
      for (uint32_t hits = above16(v, st.cut + u); hits; hits &= hits - 1) {
        const int j = __builtin_ctz(hits);
        st.push(u + j, v[j]);
      }
    }
    for (; u < u1; ++u) st.push(u, to_float<T>(row[u]));
  }
}

// One unit over every (g, s), positions contiguous (s stride 1) or not.
template <typename T>
void scan_unit(const QuantileFilterArgs& a, State& st, int64_t u) {
  const T* x = static_cast<const T*>(a.x) + u * a.x_stride[1];
  const int64_t ss = a.x_stride[2];
  for (int64_t g = 0; g < a.G; ++g) {
    const T* p = x + g * a.x_stride[0];
    int64_t s = 0;
    if (ss == 1) {
      for (; s + kBlock <= a.S; s += kBlock) {
        float tmp[kBlock];
        const float* v = as_floats<T>(p + s, tmp);
        // in order, so a compaction mid-block raises the cut for the rest (push re-checks)
        for (uint32_t hits = above16(v, st.cut[u]); hits; hits &= hits - 1)
          st.push(u, v[__builtin_ctz(hits)]);
      }
    }
    for (; s < a.S; ++s) st.push(u, to_float<T>(p[s * ss]));
  }
}

template <typename T>
void run(const QuantileFilterArgs& a) {
  State st{a.buffer, a.capacity, a.target, a.kept, a.cut, a.nan_count};
  if (a.S == 1 && a.x_stride[1] == 1) {
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    // One thread: whole rows. Several: unit panels handed out dynamically, so a thread that
    // the OS deschedules on a shared machine does not hold the others at a static split.
    const int64_t panel = nt == 1 ? a.U : 64;
    const int64_t np = (a.U + panel - 1) / panel;
#pragma omp parallel for schedule(dynamic, 1) if (np > 1)
    for (int64_t p = 0; p < np; ++p) {
      const int64_t u0 = p * panel, u1 = std::min(a.U, u0 + panel);
#ifdef DK_QUANTILE_AVX512
      if (std::is_same<T, float>::value && has_avx512())
        scan_tiles_f32_avx512(a, st, u0, u1);
      else
#endif
        scan_rows<T>(a, st, u0, u1);
    }
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < a.U; ++u) scan_unit<T>(a, st, u);
  }
}

}  // namespace

void quantile_filter_cpu(const QuantileFilterArgs& a) {
  if (a.U <= 0 || a.G < 0 || a.S <= 0) throw Error("quantile_filter: bad shape");
  if (!(a.target > 0 && a.target < a.capacity))
    throw Error("quantile_filter: need 0 < target < capacity");
  for (int64_t u = 0; u < a.U; ++u)
    if (a.kept[u] < 0 || a.kept[u] > a.capacity) throw Error("quantile_filter: kept out of range");
  switch (a.x_dtype) {
    case DType::Float32: run<float>(a); break;
    case DType::Float16: run<Half>(a); break;
    case DType::BFloat16: run<BF16>(a); break;
    default: throw Error("quantile_filter: unsupported dtype");
  }
}

}  // namespace dissect_kernels
