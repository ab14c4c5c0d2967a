// tail_sketch CPU core: gap counting + pending buffer per unit, flush = merge + prune
// (rules in tail_sketch.h). OpenMP across groups of units; each unit is processed by one thread.
// On CPUs with AVX-512 (checked at run time; DK_TAIL_SKETCH_SCALAR=1 forces the portable code) the
// 16x16 transpose, the partition and the bulk search are vectorised, and groups of 16 units whose
// summaries have no entries between the minimum and tau (tail-only) are classified in place, tile by
// tile, without the slab; every path finds the same gap index (last summary entry <= x) and keeps
// the same pending order, so the state is identical to the portable code's and the torch path's.
#include "dissect_kernels/tail_sketch.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include "dissect_kernels/simd_x86.h"
#ifdef DK_HAVE_X86_SIMD
#define DK_TS_X86 1
#endif
#include <limits>
#include <memory>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <vector>

namespace dissect_kernels {
namespace {

constexpr int kMaxRounds = 64;
constexpr int64_t kGroup = 16;     // units per tile (one 64-byte line of a float row)

struct Scratch {
  std::vector<float> v;
  std::vector<int64_t> lo, hi;
  std::vector<uint32_t> k0, k1;
  void reserve(int64_t n) {
    v.resize(n); lo.resize(n); hi.resize(n);
  }
};

inline int64_t allowed_gap(int64_t rmax_c, int64_t N, int64_t T, int64_t kt, int64_t kl) {
  const int64_t s = N - rmax_c + 1;
  if (s <= T) return s >> kt;
  return std::max(T >> kt, N >> kl);
}

// Prune rounds on (v, lo, hi)[0, n) in place; returns the new size. A round decides and compacts
// in one pass: entry i's neighbours i - 1 and i + 1 are of the other parity (never dropped in this
// round), and every read of index i or i + 1 happens before the write to position k <= i.
int64_t prune_rounds(float* v, int64_t* lo, int64_t* hi, int64_t n, int64_t N, int64_t T,
                     int64_t kt, int64_t kl) {
  int quiet = 0;
  for (int r = 0; r < kMaxRounds && quiet < 2; ++r) {
    const int64_t first = (r & 1) ? 2 : 1;  // round 0 tries odd indices
    int64_t k = 0, prev_lo = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t cur_lo = lo[i];
      const bool drop = i >= first && ((i - first) & 1) == 0 && i + 1 < n &&
                        hi[i + 1] - prev_lo <= allowed_gap(hi[i + 1], N, T, kt, kl);
      prev_lo = cur_lo;
      if (drop) continue;
      v[k] = v[i]; lo[k] = cur_lo; hi[k] = hi[i]; ++k;
    }
    quiet = k < n ? 0 : quiet + 1;
    n = k;
  }
  return n;
}

// Ascending sort of n finite-or-infinite floats (no NaN) by LSD radix on order-preserving keys
// (3 passes of 11 bits); the result equals std::sort's up to the order of -0.0 / +0.0 ties.
void radix_sort(float* b, int64_t n, std::vector<uint32_t>& k0, std::vector<uint32_t>& k1) {
  if (n < 256) { std::sort(b, b + n); return; }
  k0.resize(n); k1.resize(n);
  uint32_t cnt[3][2048];
  std::memset(cnt, 0, sizeof(cnt));
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, b + i, 4);
    u ^= (u >> 31) ? 0xFFFFFFFFu : 0x80000000u;
    k0[i] = u;
    ++cnt[0][u & 2047]; ++cnt[1][(u >> 11) & 2047]; ++cnt[2][u >> 22];
  }
  for (int p = 0; p < 3; ++p) {
    uint32_t sum = 0;
    for (int d = 0; d < 2048; ++d) { const uint32_t c = cnt[p][d]; cnt[p][d] = sum; sum += c; }
  }
  for (int64_t i = 0; i < n; ++i) { const uint32_t u = k0[i]; k1[cnt[0][u & 2047]++] = u; }
  for (int64_t i = 0; i < n; ++i) { const uint32_t u = k1[i]; k0[cnt[1][(u >> 11) & 2047]++] = u; }
  for (int64_t i = 0; i < n; ++i) { const uint32_t u = k0[i]; k1[cnt[2][u >> 22]++] = u; }
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u = k1[i];
    u ^= (u >> 31) ? 0x80000000u : 0xFFFFFFFFu;
    std::memcpy(b + i, &u, 4);
  }
}

// Last index i in [0, t) with v[i] <= x (v ascending, v[0] <= x): a branchless binary search.
inline int64_t last_le(const float* v, int64_t t, float x) {
  int64_t b = 0;
  for (int64_t l = t; l > 1; l -= l >> 1) b += static_cast<int64_t>(v[b + (l >> 1)] <= x) * (l >> 1);
  return b;
}

// Count bulk value x in its gap (v_b, v_b+1), or as a tie of v_b.
inline void count_in_gap(const float* v, int64_t t, float x, int64_t* g, int64_t* q) {
  const int64_t b = last_le(v, t, x);
  if (v[b] == x) ++q[b]; else ++g[b];
}

#ifdef DK_TS_X86
bool have_avx512() {
  // DK_TAIL_SKETCH_SCALAR=1 forces the portable code (to test it on AVX-512 machines).
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512vl") && std::getenv("DK_TAIL_SKETCH_SCALAR") == nullptr;
  return ok;
}

// AVX-512 version of classify's two loops (same results as the scalar code): partition with
// register compress (full 16-lane stores only where they stay inside the unit's buffers), then a
// 16-lane gather binary search for the index of the last v[0, t) <= x.
// After a search: lane w of block k found entry base[k][w]; count it as a tie (q) when the
// entry equals the value, else in the gap above the entry (g).
template <int K>
__attribute__((target("avx512f,avx512dq,avx512vl")))
inline void count_found(const float* v, const __m512 (&x)[K], const __m512i (&base)[K],
                        int32_t (&bi)[K][16], int64_t* g, int64_t* q) {
  __mmask16 e[K];
  for (int k = 0; k < K; ++k) {
    e[k] = _mm512_cmp_ps_mask(_mm512_i32gather_ps(base[k], v, 4), x[k], _CMP_EQ_OQ);
    _mm512_store_si512(bi[k], base[k]);
  }
  for (int k = 0; k < K; ++k)
    for (int w = 0; w < 16; ++w) {
      ++(((e[k] >> w) & 1) ? q : g)[bi[k][w]];
    }
}

__attribute__((target("avx512f,avx512dq,avx512vl,popcnt")))
void classify_avx512(const float* v, int64_t t, float v0, float hi0, float tau, const float* xs,
                     int64_t n, float* buf, float* pend, int64_t& pn_io, int64_t P, int64_t* g,
                     int64_t* q, int64_t& n0_out, int64_t& ne_out, int64_t& nb_out) {
  int64_t n0 = 0, ne = 0, nb = 0, i = 0, pn = pn_io;  // locals: no store-to-load chain per step
  const __m512 V0 = _mm512_set1_ps(v0), H0 = _mm512_set1_ps(hi0), TAU = _mm512_set1_ps(tau);
  for (; i + 16 <= n && pn + 16 <= P; i += 16) {
    const __m512 x = _mm512_loadu_ps(xs + i);
    const __mmask16 ge0 = _mm512_cmp_ps_mask(x, V0, _CMP_GE_OQ);
    const __mmask16 lth = _mm512_cmp_ps_mask(x, H0, _CMP_LT_OQ);
    const __mmask16 geh = _mm512_cmp_ps_mask(x, H0, _CMP_GE_OQ);
    const __mmask16 ltt = _mm512_cmp_ps_mask(x, TAU, _CMP_LT_OQ);
    const __mmask16 c0 = ge0 & lth, c1 = geh & ltt;
    const __mmask16 eqm = c0 & _mm512_cmp_ps_mask(x, V0, _CMP_EQ_OQ);
    const __mmask16 pm = static_cast<__mmask16>(~(c0 | c1));
    n0 += __builtin_popcount(c0);
    ne += __builtin_popcount(eqm);
    _mm512_storeu_ps(buf + nb, _mm512_maskz_compress_ps(c1, x));
    nb += __builtin_popcount(c1);
    _mm512_storeu_ps(pend + pn, _mm512_maskz_compress_ps(pm, x));
    pn += __builtin_popcount(pm);
  }
  for (; i < n; ++i) {
    const float x = xs[i];
    const bool c0 = (x >= v0) & (x < hi0);
    const bool c1 = (x >= hi0) & (x < tau);
    n0 += c0;
    ne += c0 & (x == v0);
    if (c1) buf[nb++] = x;
    if (!(c0 | c1)) pend[pn++] = x;
  }
  // 4 independent 16-lane searches per step: the gather latency of one chain hides behind the others.
  // For t >= 64 the first 5 levels run in registers: pivots P_j = v[p_j], p_j = j t / 32, give
  // c = last j with P_j <= x (v[0] <= x), so the answer lies in [p_c, p_{c+1}) (p_32 = t); the
  // gathers then search only that range (per-lane length, <= ceil(t / 32)). Same index as before:
  // the last i < t with v[i] <= x.
  constexpr int K = 4;
  int64_t j = 0;
  alignas(64) int32_t bi[K][16];
  const bool coarse = t >= 64;
  alignas(64) float piv[32] = {};
  alignas(64) int32_t pidx[32] = {};
  int64_t fine_steps = 0;
  if (coarse) {
    int64_t maxlen = 0;
    for (int c = 0; c < 32; ++c) {
      pidx[c] = static_cast<int32_t>((c * t) >> 5);
      piv[c] = v[pidx[c]];
      const int64_t end = (c == 31) ? t : (((c + 1) * t) >> 5);
      maxlen = std::max(maxlen, end - pidx[c]);
    }
    for (int64_t l = maxlen; l > 1; l -= l >> 1) ++fine_steps;
  }
  const __m512 PLO = _mm512_load_ps(piv), PHI = _mm512_load_ps(piv + 16);
  const __m512i ILO = _mm512_load_si512(pidx), IHI = _mm512_load_si512(pidx + 16);
  const __m512i ONE = _mm512_set1_epi32(1), C31 = _mm512_set1_epi32(31);
  const __m512i TV = _mm512_set1_epi32(static_cast<int32_t>(t));
  for (; coarse && j + 16 * K <= nb; j += 16 * K) {
    __m512 x[K];
    __m512i base[K], len[K];
    for (int k = 0; k < K; ++k) {
      x[k] = _mm512_loadu_ps(buf + j + 16 * k);
      __m512i c = _mm512_setzero_si512();
      for (int step = 16; step >= 1; step >>= 1) {
        const __m512i cand = _mm512_add_epi32(c, _mm512_set1_epi32(step));
        const __m512 pv = _mm512_permutex2var_ps(PLO, cand, PHI);
        c = _mm512_mask_mov_epi32(c, _mm512_cmp_ps_mask(pv, x[k], _CMP_LE_OQ), cand);
      }
      base[k] = _mm512_permutex2var_epi32(ILO, c, IHI);
      __m512i end = _mm512_permutex2var_epi32(ILO, _mm512_add_epi32(c, ONE), IHI);
      end = _mm512_mask_mov_epi32(end, _mm512_cmpeq_epi32_mask(c, C31), TV);
      len[k] = _mm512_sub_epi32(end, base[k]);
    }
    for (int64_t st = 0; st < fine_steps; ++st) {
      for (int k = 0; k < K; ++k) {
        const __m512i half = _mm512_srli_epi32(len[k], 1);
        const __m512i idx = _mm512_add_epi32(base[k], half);
        const __m512 vv = _mm512_i32gather_ps(idx, v, 4);
        base[k] = _mm512_mask_mov_epi32(base[k], _mm512_cmp_ps_mask(vv, x[k], _CMP_LE_OQ), idx);
        len[k] = _mm512_sub_epi32(len[k], half);
      }
    }
    count_found<K>(v, x, base, bi, g, q);
  }
  for (; j + 16 * K <= nb; j += 16 * K) {
    __m512 x[K];
    __m512i base[K];
    for (int k = 0; k < K; ++k) { x[k] = _mm512_loadu_ps(buf + j + 16 * k); base[k] = _mm512_setzero_si512(); }
    int64_t l = t;
    while (l > 1) {
      const int64_t half = l >> 1;
      const __m512i h = _mm512_set1_epi32(static_cast<int32_t>(half));
      for (int k = 0; k < K; ++k) {
        const __m512i idx = _mm512_add_epi32(base[k], h);
        const __m512 vv = _mm512_i32gather_ps(idx, v, 4);
        base[k] = _mm512_mask_mov_epi32(base[k], _mm512_cmp_ps_mask(vv, x[k], _CMP_LE_OQ), idx);
      }
      l -= half;
    }
    count_found<K>(v, x, base, bi, g, q);
  }
  for (; j + 16 <= nb; j += 16) {
    const __m512 x = _mm512_loadu_ps(buf + j);
    __m512i base = _mm512_setzero_si512();
    int64_t l = t;
    while (l > 1) {
      const int64_t half = l >> 1;
      const __m512i idx = _mm512_add_epi32(base, _mm512_set1_epi32(static_cast<int32_t>(half)));
      const __m512 vv = _mm512_i32gather_ps(idx, v, 4);
      base = _mm512_mask_mov_epi32(base, _mm512_cmp_ps_mask(vv, x, _CMP_LE_OQ), idx);
      l -= half;
    }
    const __mmask16 e = _mm512_cmp_ps_mask(_mm512_i32gather_ps(base, v, 4), x, _CMP_EQ_OQ);
    _mm512_store_si512(bi[0], base);
    for (int w = 0; w < 16; ++w) {
      if ((e >> w) & 1) ++q[bi[0][w]]; else ++g[bi[0][w]];
    }
  }
  for (; j < nb; ++j) count_in_gap(v, t, buf[j], g, q);
  n0_out = n0; ne_out = ne; nb_out = nb; pn_io = pn;
}
// 16x16 float transpose: dst[q * ds + r] = src[r * ss + q] for r, q < 16.
__attribute__((target("avx512f")))
inline void transpose16_avx512(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m512 a[16];
  load_transposed16(src, ss, a);
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ds, a[i]);
}
#endif

// The merged entries sc.(v, lo, hi)[0, k) of unit u, N values in all: prune them (coarsening from
// c while more than M remain), write them back as u's summary (the padding of entries the old
// summary of old_size held is refilled), and place tau (tail-only: never below tau_floor).
void store_pruned(const TailSketchState& s, int64_t u, Scratch& sc, int64_t k, int64_t N, int64_t c,
                  float tau_floor, int64_t old_size) {
  const int64_t M = s.M;
  const int64_t T = N >> s.tail_shift;
  int64_t kk = k;
  for (;;) {
    kk = prune_rounds(sc.v.data(), sc.lo.data(), sc.hi.data(), kk, N, T,
                      std::max<int64_t>(s.k_t - c, 0), std::max<int64_t>(s.k_l - c, 0));
    if (kk <= M) break;
    ++c;
  }
  s.coarsen[u] = c;
  float* v = s.values + u * M;
  int64_t* lo = s.rmin + u * M;
  int64_t* hi = s.rmax + u * M;
  std::copy(sc.v.begin(), sc.v.begin() + kk, v);
  std::copy(sc.lo.begin(), sc.lo.begin() + kk, lo);
  std::copy(sc.hi.begin(), sc.hi.begin() + kk, hi);
  // entries past the old size already hold the padding (+inf, 0): refill only the vacated ones
  const int64_t stale = std::max(kk, old_size);
  std::fill(v + kk, v + stale, std::numeric_limits<float>::infinity());
  std::fill(lo + kk, lo + stale, int64_t{0});
  std::fill(hi + kk, hi + stale, int64_t{0});
  s.size[u] = kk;
  s.total[u] = N;
  s.pend_n[u] = 0;
  int64_t t = -1;  // largest index whose value has >= T values above it for sure
  for (int64_t e = 0; e < kk; ++e) {
    if (N - hi[e] >= T) t = e; else break;
  }
  if (t < 1 || v[t] == v[0])  // no such entry above the minimum: the first one above it is tau
    for (int64_t e = 1; e < kk; ++e)
      if (v[e] > v[0]) { t = e; break; }
  if (t >= 0 && v[t] < tau_floor)  // (the largest value is >= tau_floor: one is found)
    for (int64_t e = 0; e < kk; ++e)
      if (v[e] >= tau_floor) { t = e; break; }
  s.tidx[u] = t;
}

void flush_unit(const TailSketchState& s, int64_t u, Scratch& sc) {
  const int64_t M = s.M, P = s.P;
  float* v = s.values + u * M;
  int64_t* lo = s.rmin + u * M;
  int64_t* hi = s.rmax + u * M;
  int64_t* g = s.gap + u * M;
  int64_t* q = s.eq + u * M;
  int64_t n = s.size[u];
  const int64_t old_size = n;
  const int64_t m = s.pend_n[u];
  if (s.counted[u] == 0 && m == 0) return;
  // tail-only (k_l == 0): tau never moves down, or values would land in the counted gap below it
  const int64_t t_old = s.tidx[u];
  const float tau_floor = (s.k_l == 0 && t_old >= 1 && t_old < n) ? v[t_old] : -std::numeric_limits<float>::infinity();
  // 1. counts -> exact position shifts; ties get a run-end entry (position + eq)
  sc.reserve(2 * n + m);
  int64_t shift = 0, k = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t l = lo[i] + shift, h = hi[i] + shift;
    sc.v[k] = v[i]; sc.lo[k] = l; sc.hi[k] = h; ++k;
    if (q[i] > 0) { sc.v[k] = v[i]; sc.lo[k] = l + q[i]; sc.hi[k] = h + q[i]; ++k; }
    shift += g[i] + q[i];
    g[i] = 0; q[i] = 0;
  }
  s.total[u] += s.counted[u];
  s.counted[u] = 0;
  n = k;
  std::vector<float> ov(sc.v.begin(), sc.v.begin() + n);
  std::vector<int64_t> olo(sc.lo.begin(), sc.lo.begin() + n), ohi(sc.hi.begin(), sc.hi.begin() + n);
  v = ov.data(); lo = olo.data(); hi = ohi.data();
  const int64_t N0 = s.total[u];
  float* b = s.pend + u * P;
  radix_sort(b, m, sc.k0, sc.k1);
  int64_t i = 0, j = 0;
  k = 0;
  while (i < n || j < m) {
    if (j < m && (i >= n || b[j] < v[i])) {
      const int64_t jj = j + 1;
      sc.v[k] = b[j];
      sc.lo[k] = (i > 0 ? lo[i - 1] : 0) + jj;
      sc.hi[k] = (i < n ? hi[i] - 1 : N0) + jj;
      ++j;
    } else {
      sc.v[k] = v[i]; sc.lo[k] = lo[i] + j; sc.hi[k] = hi[i] + j;
      ++i;
    }
    ++k;
  }
  store_pruned(s, u, sc, k, N0 + m, s.coarsen[u], tau_floor, old_size);
}

// Classify n contiguous values of unit u: bulk values bump a gap count, the rest go pending.
// Branchless partition first (values in the first gap, e.g. ReLU zeros, need no search), then an
// interleaved branchless binary search over v[0, t) for the remaining bulk values.
void classify(const TailSketchState& s, int64_t u, const float* xs, int64_t n, float* buf) {
  const int64_t t = s.tidx[u];
  float* pend = s.pend + u * s.P;
  int64_t pn = s.pend_n[u];
  if (t < 1 || s.size[u] == 0) {
    std::copy(xs, xs + n, pend + pn);
    s.pend_n[u] = pn + n;
    return;
  }
  const float* v = s.values + u * s.M;
  int64_t* g = s.gap + u * s.M;
  int64_t* q = s.eq + u * s.M;
  const float v0 = v[0], tau = v[t];
  const int64_t z = last_le(v, t, v0);  // the last index in [0, t) with v[z] == v0
  const float hi0 = (z + 1 < t) ? v[z + 1] : tau;
  int64_t n0 = 0, ne = 0, nb = 0;
#ifdef DK_TS_X86
  if (t < (int64_t{1} << 30) && have_avx512()) {
    classify_avx512(v, t, v0, hi0, tau, xs, n, buf, pend, pn, s.P, g, q, n0, ne, nb);
    g[z] += n0 - ne;
    q[z] += ne;
    s.pend_n[u] = pn;
    s.counted[u] += n0 + nb;
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float x = xs[i];
    const bool c0 = (x >= v0) & (x < hi0);
    const bool c1 = (x >= hi0) & (x < tau);
    n0 += c0;
    ne += c0 & (x == v0);
    buf[nb] = x;
    nb += c1;
    pend[pn] = x;
    pn += !(c0 | c1);
  }
  g[z] += n0 - ne;
  q[z] += ne;
  constexpr int W = 16;
  int64_t i = 0;
  for (; i + W <= nb; i += W) {
    int64_t base[W];
    for (int w = 0; w < W; ++w) base[w] = 0;
    int64_t l = t;
    while (l > 1) {
      const int64_t half = l >> 1;
      for (int w = 0; w < W; ++w) base[w] += static_cast<int64_t>(v[base[w] + half] <= buf[i + w]) * half;
      l -= half;
    }
    for (int w = 0; w < W; ++w) {
      const bool e = v[base[w]] == buf[i + w];
      q[base[w]] += e;
      g[base[w]] += !e;
    }
  }
  for (; i < nb; ++i) count_in_gap(v, t, buf[i], g, q);
  s.pend_n[u] = pn;
  s.counted[u] += n0 + nb;
}

#ifdef DK_TS_X86
// True when every entry of [0, tidx) of unit u equals v[0] (tail-only summaries, or any summary
// without bulk entries yet): then classify needs no search -- a value is counted in the first gap
// (or as a tie with v[0]) when v[0] <= x < tau, and goes pending otherwise.
inline bool searchless(const TailSketchState& s, int64_t u) {
  const int64_t t = s.tidx[u];
  const float* v = s.values + u * s.M;
  return t >= 1 && s.size[u] > 0 && t < (int64_t{1} << 30) && v[t - 1] == v[0];
}

// Values of column `col` (16 consecutive rows of one unit) outside [v0, tau) go pending, in row
// order (register compress + one 16-lane store while it stays inside the unit's buffer).
__attribute__((target("avx512f,popcnt"), always_inline))
inline void pend_column(float* pend, int64_t& pn, int64_t P, __m512 col, __m512 v0, __m512 tau) {
  const __mmask16 in = _mm512_cmp_ps_mask(col, v0, _CMP_GE_OQ) & _mm512_cmp_ps_mask(col, tau, _CMP_LT_OQ);
  const __mmask16 pm = static_cast<__mmask16>(~in);
  if (pn + 16 <= P) {
    _mm512_storeu_ps(pend + pn, _mm512_maskz_compress_ps(pm, col));
    pn += __builtin_popcount(pm);
    return;
  }
  alignas(64) float lane[16];
  _mm512_store_ps(lane, col);
  for (int r = 0; r < 16; ++r)
    if ((pm >> r) & 1) pend[pn++] = lane[r];
}

// classify() for 16 searchless units [u0, u0 + 16) over `rows` rows read in place (row r of unit
// u0 + k at x[r * ld + k]), without the slab: per 16-row tile the row vectors are compared with the
// 16 units' [v0, tau) (per-lane counts of in-range values and of ties with v0), and only units with
// a value outside it are visited, as a column (gathered when few, transposed when many). Same
// counts and the same pending order as classify, so the same state.
__attribute__((target("avx512f,popcnt")))
void classify_tiles_searchless(const TailSketchState& s, int64_t u0, const float* x, int64_t ld, int64_t rows) {
  alignas(64) float v0s[16], taus[16];
  int64_t z[16], pn[16];
  for (int k = 0; k < 16; ++k) {
    const float* v = s.values + (u0 + k) * s.M;
    v0s[k] = v[0];
    taus[k] = v[s.tidx[u0 + k]];
    z[k] = s.tidx[u0 + k] - 1;  // the last entry equal to v[0] within [0, tidx)
    pn[k] = s.pend_n[u0 + k];
  }
  const __m512 V0 = _mm512_load_ps(v0s), TAU = _mm512_load_ps(taus);
  const __m512i ONE = _mm512_set1_epi32(1);
  const __m512i offs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int32_t>(ld)));
  __m512i n0 = _mm512_setzero_si512(), ne = _mm512_setzero_si512();
  const int64_t re = ld < (int64_t{1} << 26) ? rows / 16 * 16 : 0;  // gather offsets are int32
  for (int64_t r = 0; r < re; r += 16) {
    const float* tile = x + r * ld;
    if (r + 16 < re)
      for (int i = 0; i < 16; ++i) _mm_prefetch(reinterpret_cast<const char*>(tile + (16 + i) * ld), _MM_HINT_T1);
    __m512 v[16];
    uint32_t out = 0;
    for (int i = 0; i < 16; ++i) {
      v[i] = _mm512_loadu_ps(tile + i * ld);
      const __mmask16 in = _mm512_cmp_ps_mask(v[i], V0, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v[i], TAU, _CMP_LT_OQ);
      n0 = _mm512_mask_add_epi32(n0, in, n0, ONE);
      ne = _mm512_mask_add_epi32(ne, in & _mm512_cmp_ps_mask(v[i], V0, _CMP_EQ_OQ), ne, ONE);
      out |= static_cast<uint16_t>(~in);
    }
    if (!out) continue;
    if (__builtin_popcount(out) > 4) {
      transpose16_regs(v);
      for (; out; out &= out - 1) {
        const int k = __builtin_ctz(out);
        pend_column(s.pend + (u0 + k) * s.P, pn[k], s.P, v[k], _mm512_set1_ps(v0s[k]), _mm512_set1_ps(taus[k]));
      }
    } else {
      for (; out; out &= out - 1) {
        const int k = __builtin_ctz(out);
        pend_column(s.pend + (u0 + k) * s.P, pn[k], s.P, _mm512_i32gather_ps(offs, tile + k, 4),
                    _mm512_set1_ps(v0s[k]), _mm512_set1_ps(taus[k]));
      }
    }
  }
  alignas(64) int32_t c0[16], ce[16];
  _mm512_store_si512(c0, n0);
  _mm512_store_si512(ce, ne);
  for (int k = 0; k < 16; ++k) {
    const int64_t u = u0 + k;
    int64_t in = c0[k], eq = ce[k];
    float* pend = s.pend + u * s.P;
    for (int64_t r = re; r < rows; ++r) {  // the rows past the last full tile
      const float xv = x[r * ld + k];
      const bool c = (xv >= v0s[k]) & (xv < taus[k]);
      in += c;
      eq += c & (xv == v0s[k]);
      if (!c) pend[pn[k]++] = xv;
    }
    s.gap[u * s.M + z[k]] += in - eq;
    s.eq[u * s.M + z[k]] += eq;
    s.counted[u] += in;
    s.pend_n[u] = pn[k];
  }
}
#endif

}  // namespace

void tail_sketch_update_cpu(const TailSketchState& s, const float* x, int64_t N, int64_t ld) {
  if (s.block_rows < 1 || s.block_rows > s.P) throw Error("tail_sketch: block_rows must lie in [1, P]");
  const int64_t groups = (s.U + kGroup - 1) / kGroup;
  // Units are independent: each thread owns a contiguous range of unit groups and walks all rows
  // (no barriers); per block it transposes its slab of x (contiguous reads) and classifies per unit.
#pragma omp parallel
  {
    int64_t tid = 0, nth = 1;
#ifdef _OPENMP
    tid = omp_get_thread_num();
    nth = omp_get_num_threads();
#endif
    const int64_t g0 = groups * tid / nth, g1 = groups * (tid + 1) / nth;
    const int64_t ua = std::min(s.U, g0 * kGroup), ub = std::min(s.U, g1 * kGroup), nu = ub - ua;
    if (nu > 0) {
      Scratch sc;
      const int64_t R = std::min(s.block_rows, N);
      const int64_t RS = R + 16;  // padded slab row stride: a power-of-two stride would make the
      // transpose's 16 column writes fall into one L1 set (4K aliasing)
      std::unique_ptr<float[]> slab(new float[kGroup * RS]), buf(new float[R + 16]);
      for (int64_t r0 = 0; r0 < N; r0 += s.block_rows) {
        const int64_t rows = std::min(s.block_rows, N - r0);
        for (int64_t u = ua; u < ub; ++u)
          if (s.P - s.pend_n[u] < rows) flush_unit(s, u, sc);
        // one group of 16 units at a time: its slab (16 x rows) stays in L2 between the
        // transpose and the classification
        for (int64_t c = 0; c < nu; c += kGroup) {
          const int64_t ce = std::min(nu, c + kGroup);
          int64_t r = 0;
#ifdef DK_TS_X86
          if (ce - c == 16 && have_avx512()) {
            bool direct = true;
            for (int64_t k = 0; k < 16 && direct; ++k) direct = searchless(s, ua + c + k);
            if (direct) {
              classify_tiles_searchless(s, ua + c, x + r0 * ld + ua + c, ld, rows);
              continue;
            }
          }
          if (ce - c == 16 && have_avx512())
            for (; r + 16 <= rows; r += 16) transpose16_avx512(x + (r0 + r) * ld + ua + c, ld, slab.get() + r, RS);
#endif
          for (; r < rows; ++r) {
            const float* src = x + (r0 + r) * ld + ua + c;
            for (int64_t q = 0; q < ce - c; ++q) slab[q * RS + r] = src[q];
          }
          for (int64_t q = c; q < ce; ++q) classify(s, ua + q, slab.get() + (q - c) * RS, rows, buf.get());
        }
      }
    }
  }
}

void tail_sketch_flush_cpu(const TailSketchState& s) {
#pragma omp parallel
  {
    Scratch sc;
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < s.U; ++u) flush_unit(s, u, sc);
  }
}

namespace {

// Tail-only sketches keep tau from moving down: the current tau of unit u, else -inf.
float tau_floor_of(const TailSketchState& s, int64_t u) {
  const int64_t t = s.tidx[u];
  return (s.k_l == 0 && t >= 1 && t < s.size[u]) ? s.values[u * s.M + t] : -std::numeric_limits<float>::infinity();
}

// GK merge of unit u of flushed b into flushed a: an entry of one summary gains the bounds of
// the gap of the other it falls in (ties: a's entries first), then prune and store as a flush does.
void merge_unit(const TailSketchState& a, const TailSketchState& b, int64_t u, Scratch& sc) {
  const int64_t M = a.M, na = a.size[u], nb = b.size[u], Na = a.total[u], Nb = b.total[u];
  const float* va = a.values + u * M;
  const int64_t *loa = a.rmin + u * M, *hia = a.rmax + u * M;
  const float* vb = b.values + u * M;
  const int64_t *lob = b.rmin + u * M, *hib = b.rmax + u * M;
  sc.reserve(na + nb);
  int64_t i = 0, j = 0, k = 0;
  while (i < na || j < nb) {
    if (i < na && (j >= nb || va[i] <= vb[j])) {  // j = #b below va[i]
      sc.v[k] = va[i];
      sc.lo[k] = loa[i] + (j > 0 ? lob[j - 1] : 0);
      sc.hi[k] = hia[i] + (j < nb ? hib[j] - 1 : Nb);
      ++i;
    } else {                                       // i = #a at or below vb[j]
      sc.v[k] = vb[j];
      sc.lo[k] = lob[j] + (i > 0 ? loa[i - 1] : 0);
      sc.hi[k] = hib[j] + (i < na ? hia[i] - 1 : Na);
      ++j;
    }
    ++k;
  }
  const float floor = std::max(tau_floor_of(a, u), tau_floor_of(b, u));
  store_pruned(a, u, sc, k, Na + Nb, std::max(a.coarsen[u], b.coarsen[u]), floor, na);
}

}  // namespace

void tail_sketch_merge_cpu(const TailSketchState& a, const TailSketchState& b) {
  if (a.U != b.U || a.M != b.M || a.k_t != b.k_t || a.k_l != b.k_l || a.tail_shift != b.tail_shift)
    throw Error("tail_sketch_merge: the sketches differ in units, capacity or configuration");
  for (int64_t u = 0; u < a.U; ++u)
    if (a.pend_n[u] || a.counted[u] || b.pend_n[u] || b.counted[u])
      throw Error("tail_sketch_merge: both sketches must be flushed first");
#pragma omp parallel
  {
    Scratch sc;
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < a.U; ++u) merge_unit(a, b, u, sc);
  }
}

void tail_sketch_select_cpu(const TailSketchState& s, const double* qs, int64_t nq, float* value, double* bound) {
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t u = 0; u < s.U; ++u) {
    const int64_t n = s.size[u];
    const float* v = s.values + u * s.M;
    const int64_t *lo = s.rmin + u * s.M, *hi = s.rmax + u * s.M;
    const double N = static_cast<double>(s.total[u]);
    for (int64_t j = 0; j < nq; ++j) {
      const double t = qs[j] * N;
      // the first entry whose rmin + rmax reaches 2t, and the one before it: the closer bound wins
      int64_t i0 = 0, len = n;  // lower bound by bisection, as torch.searchsorted
      while (len > 0) {
        const int64_t half = len / 2, mid = i0 + half;
        if (static_cast<double>(lo[mid]) + static_cast<double>(hi[mid]) < 2 * t) {
          i0 = mid + 1;
          len -= half + 1;
        } else {
          len = half;
        }
      }
      int64_t best = 0;
      double best_b = 0;
      for (int d = 1; d >= 0; --d) {
        const int64_t i = std::min(std::max<int64_t>(i0 - d, 0), n - 1);
        int64_t i1 = i, i2 = i;  // the run of entries holding v[i]
        while (i1 > 0 && v[i1 - 1] == v[i]) --i1;
        while (i2 + 1 < n && v[i2 + 1] == v[i]) ++i2;
        const double b = std::max(0.0, std::max(t - static_cast<double>(lo[i2]), static_cast<double>(hi[i1]) - 1 - t));
        if (d == 1 || b < best_b) best = i, best_b = b;
      }
      value[u * nq + j] = v[best];
      bound[u * nq + j] = best_b / N;
    }
  }
}

void tail_sketch_cdf_cpu(const TailSketchState& s, const float* y, int64_t k, double* out) {
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t u = 0; u < s.U; ++u) {
    const int64_t n = s.size[u];
    const float* v = s.values + u * s.M;
    const int64_t *lo = s.rmin + u * s.M, *hi = s.rmax + u * s.M;
    const double N = static_cast<double>(s.total[u]);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = std::min<int64_t>(std::upper_bound(v, v + n, y[u * k + j]) - v - 1, n - 1);
      double est;
      if (e >= n - 1) {
        est = 1.0;
      } else if (e < 0) {
        est = 0.0;
      } else {
        const double lower = static_cast<double>(lo[e]), upper = static_cast<double>(hi[e + 1]) - 1;
        est = (lower + upper) / 2 / N;
      }
      out[u * k + j] = est;
    }
  }
}

}  // namespace dissect_kernels
