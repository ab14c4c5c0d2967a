// tail_sketch CPU core: gap counting + pending buffer per unit, flush = merge + prune
// (rules in tail_sketch.h). OpenMP across groups of units; each unit is processed by one thread.
#include "dissect_kernels/tail_sketch.h"

#include <algorithm>
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
  void reserve(int64_t n) {
    v.resize(n); lo.resize(n); hi.resize(n);
  }
};

inline int64_t allowed_gap(int64_t rmax_c, int64_t N, int64_t T, int64_t kt, int64_t kl) {
  const int64_t s = N - rmax_c + 1;
  if (s <= T) return s >> kt;
  return std::max(T >> kt, N >> kl);
}

// Prune rounds on (v, lo, hi)[0, n) in place; returns the new size.
int64_t prune_rounds(float* v, int64_t* lo, int64_t* hi, int64_t n, int64_t N, int64_t T,
                     int64_t kt, int64_t kl, std::vector<unsigned char>& drop) {
  int quiet = 0;
  drop.resize(std::max<int64_t>(n, 1));
  for (int r = 0; r < kMaxRounds && quiet < 2; ++r) {
    const int64_t parity = (r & 1) ? 0 : 1;  // round 0 tries odd indices
    int64_t removed = 0;
    for (int64_t i = 0; i < n; ++i) drop[i] = 0;
    for (int64_t i = (parity == 1 ? 1 : 2); i + 1 < n; i += 2) {
      if (hi[i + 1] - lo[i - 1] <= allowed_gap(hi[i + 1], N, T, kt, kl)) {
        drop[i] = 1;
        ++removed;
      }
    }
    if (removed) {
      int64_t k = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (drop[i]) continue;
        v[k] = v[i]; lo[k] = lo[i]; hi[k] = hi[i]; ++k;
      }
      n = k;
      quiet = 0;
    } else {
      ++quiet;
    }
  }
  return n;
}

void flush_unit(const TailSketchState& s, int64_t u, Scratch& sc, std::vector<unsigned char>& drop) {
  const int64_t M = s.M, P = s.P;
  float* v = s.values + u * M;
  int64_t* lo = s.rmin + u * M;
  int64_t* hi = s.rmax + u * M;
  int64_t* g = s.gap + u * M;
  int64_t* q = s.eq + u * M;
  int64_t n = s.size[u];
  const int64_t m = s.pend_n[u];
  if (s.counted[u] == 0 && m == 0) return;
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
  std::sort(b, b + m);
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
  const int64_t N = N0 + m;
  const int64_t T = N >> s.tail_shift;
  int64_t c = s.coarsen[u];
  int64_t kk = k;
  for (;;) {
    kk = prune_rounds(sc.v.data(), sc.lo.data(), sc.hi.data(), kk, N, T,
                      std::max<int64_t>(s.k_t - c, 0), std::max<int64_t>(s.k_l - c, 0), drop);
    if (kk <= M) break;
    ++c;
  }
  s.coarsen[u] = c;
  v = s.values + u * M; lo = s.rmin + u * M; hi = s.rmax + u * M;
  std::copy(sc.v.begin(), sc.v.begin() + kk, v);
  std::copy(sc.lo.begin(), sc.lo.begin() + kk, lo);
  std::copy(sc.hi.begin(), sc.hi.begin() + kk, hi);
  std::fill(v + kk, v + M, std::numeric_limits<float>::infinity());
  std::fill(lo + kk, lo + M, int64_t{0});
  std::fill(hi + kk, hi + M, int64_t{0});
  s.size[u] = kk;
  s.total[u] = N;
  s.pend_n[u] = 0;
  int64_t t = -1;  // largest index whose value has >= T values above it for sure
  for (int64_t e = 0; e < kk; ++e) {
    if (N - hi[e] >= T) t = e; else break;
  }
  s.tidx[u] = t;
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
  int64_t z = 0, len = t;  // z = last index in [0, t) with v[z] == v0
  while (len > 1) {
    const int64_t half = len >> 1;
    z += static_cast<int64_t>(v[z + half] <= v0) * half;
    len -= half;
  }
  const float hi0 = (z + 1 < t) ? v[z + 1] : tau;
  int64_t n0 = 0, ne = 0, nb = 0;
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
  for (; i < nb; ++i) {
    int64_t base = 0, l = t;
    while (l > 1) {
      const int64_t half = l >> 1;
      base += static_cast<int64_t>(v[base + half] <= buf[i]) * half;
      l -= half;
    }
    const bool e = v[base] == buf[i];
    q[base] += e;
    g[base] += !e;
  }
  s.pend_n[u] = pn;
  s.counted[u] += n0 + nb;
}

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
      std::vector<unsigned char> drop;
      const int64_t R = std::min(s.block_rows, N);
      std::unique_ptr<float[]> slab(new float[nu * R]), buf(new float[R]);
      for (int64_t r0 = 0; r0 < N; r0 += s.block_rows) {
        const int64_t rows = std::min(s.block_rows, N - r0);
        for (int64_t u = ua; u < ub; ++u)
          if (s.P - s.pend_n[u] < rows) flush_unit(s, u, sc, drop);
        for (int64_t rr = 0; rr < rows; rr += 16) {
          const int64_t re = std::min(rows, rr + 16);
          for (int64_t c = 0; c < nu; c += 16) {
            const int64_t ce = std::min(nu, c + 16);
            for (int64_t r = rr; r < re; ++r) {
              const float* src = x + (r0 + r) * ld + ua;
              for (int64_t q = c; q < ce; ++q) slab[q * R + r] = src[q];
            }
          }
        }
        for (int64_t q = 0; q < nu; ++q) classify(s, ua + q, slab.get() + q * R, rows, buf.get());
      }
    }
  }
}

void tail_sketch_flush_cpu(const TailSketchState& s) {
#pragma omp parallel
  {
    Scratch sc;
    std::vector<unsigned char> drop;
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < s.U; ++u) flush_unit(s, u, sc, drop);
  }
}

}  // namespace dissect_kernels
