// CUDA tally: one block per (image, tile of up to 32 units). The tile's source maps are
// staged in shared memory as fp32; threads walk the output pixels, interpolate every unit of
// the tile (bit-identical to tally.h: blend.h in the tables' Arith mode, one instantiation per
// mode), and read a
// pixel's labels only when some unit of the tile is active there. Counter updates are rare
// (~1% of unit-pixels) and go through warp-aggregated 64-bit atomics.
//
// Skipping dead units. The weights are >= 0 and each axis pair sums to <= 1 (+ rounding), so
// an upsampled value is at most S*M with S = product of the two pair sums and M the map max.
// If every pair sums to >= 1 - 1e-6 ("convex", clamped geometries) that is <= M + 2e-6|M|;
// otherwise (zero padding) it is <= max(M, 0) + 2e-6|M|. Rounding (six fp32 operations; the
// grid-sample chain's eight, five on any one tap; pillow's two fp32 roundings) adds < 1e-6 of
// max(|M|, |m|) (m = map min) plus a few subnormal ulps, so
//   bound = (convex ? M : max(M, 0)) + 4e-6 * max(|M|, |m|) + 1e-36
// is a safe upper bound and a unit with bound <= threshold has no active pixel: it is skipped.
#include <cuda_runtime.h>

// __reduce_add_sync and __match_any_sync need sm_80+ (CMakeLists.txt refuses older targets too).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "dissect_kernels: the CUDA kernels need compute capability 8.0 (sm_80) or newer"
#endif

#include <algorithm>
#include <cmath>
#include <string>

#include "dissect_kernels/blend.h"
#include "dissect_kernels/convert.h"
#include "dissect_kernels/tally.h"

namespace dissect_kernels {
namespace {

constexpr int kTile = 32;              // units per block (bits of a 32-bit active mask)
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRegLayers = 8;          // label layers held in registers; more are re-read
constexpr unsigned kFull = 0xffffffffu;
constexpr int kChunk = kThreads * 65535;  // pixels per counter flush (16-bit counters)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr int kMinBlocksStaged = 4, kMinBlocksGlobal = 3;
#else
constexpr int kMinBlocksStaged = 3, kMinBlocksGlobal = 2;
#endif
constexpr size_t kStageBytes = 46 * 1024;  // under the 48 KB default (static shared included)

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw Error(std::string("tally_cuda: ") + what + ": " + cudaGetErrorString(err));
}

// Adds 1 to intersection[u0 + u, c] for every set bit u of `mask`, aggregating equal
// (unit, concept) pairs across the warp. All 32 lanes must call it together.
__device__ void emit(unsigned mask, int c, const TallyArgs& a, int64_t b, int64_t u0, int lane) {
  while (__any_sync(kFull, mask != 0u)) {
    unsigned long long key = ~0ull;
    int u = 0;
    if (mask) {
      u = __ffs(mask) - 1;
      key = static_cast<unsigned long long>((u0 + u) * a.C + c);
    }
    const unsigned peers = __match_any_sync(kFull, key);
    if (mask) {
      if (lane == __ffs(peers) - 1) {
        atomicAdd(reinterpret_cast<unsigned long long*>(a.intersection) + key,
                  static_cast<unsigned long long>(__popc(peers)));
        if (a.touched) a.touched[(b * a.U + u0 + u) * a.K + a.category_of[c]] = 1;
      }
      mask &= mask - 1u;
    }
  }
}

__device__ __forceinline__ bool in_image(int c, const int32_t* img, int64_t M) {
  for (int64_t m = 0; m < M; ++m)
    if (__ldg(img + m) == c) return true;
  return false;
}

// kStaged: the tile's maps live in shared memory (fp32); otherwise they are read from global
// memory with their strides (maps too large to stage).
// Launch bounds: the most resident blocks per SM (register cap 65536 / (256 * n)) that leave
// no register spills (tests/test_cuda_build.py checks ptxas -v on every default architecture):
// sm_90 4 staged / 3 unstaged (64 / 80 registers), sm_8x 3 / 2 (80 / 128); the pillow
// blend's float64 weights need the unstaged bound in both variants.
template <bool kStaged, Arith kArith>
__global__ void __launch_bounds__(kThreads, kStaged && kArith != Arith::Pillow ? kMinBlocksStaged : kMinBlocksGlobal)
tally_kernel(const TallyArgs a, int tile, int64_t b_first) {
  extern __shared__ float s_src[];
  __shared__ float s_thr[kTile];
  __shared__ float s_max[kTile];
  __shared__ unsigned s_cnt[kTile];  // <= H*W <= 2^30
  __shared__ unsigned s_live;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t b = b_first + blockIdx.y;
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * tile;
  const int nu = static_cast<int>(a.U - u0 < tile ? a.U - u0 : tile);
  const int hw = static_cast<int>(a.h * a.w);
  const int HW = static_cast<int>(a.H * a.W);
  const int64_t acts_b = b * a.acts_stride[0];

  // 1. Zero `touched`, stage the maps, load thresholds, test the tables' convexity.
  if (a.touched)
    for (int64_t i = tid; i < nu * a.K; i += kThreads) a.touched[(b * a.U + u0) * a.K + i] = 0;
  if (kStaged)
    for (int i = tid; i < nu * hw; i += kThreads) {
      const int u = i / hw, j = i - u * hw;
      const int r = j / static_cast<int>(a.w), col = j - r * static_cast<int>(a.w);
      s_src[i] = load_as_float(a.acts, acts_b + (u0 + u) * a.acts_stride[1] + r * a.acts_stride[2] +
                                           col * a.acts_stride[3], a.acts_dtype);
    }
  if (tid < kTile) {
    s_thr[tid] = tid < nu ? a.thresholds[u0 + tid] : INFINITY;
    s_cnt[tid] = 0;
  }
  if (tid == 0) s_live = 0;
  bool pair_ok = true;
  for (int i = tid; i < a.H; i += kThreads) pair_ok &= a.ytab.w0[i] + a.ytab.w1[i] >= 1.0f - 1e-6f;
  for (int i = tid; i < a.W; i += kThreads) pair_ok &= a.xtab.w0[i] + a.xtab.w1[i] >= 1.0f - 1e-6f;
  const bool convex = __syncthreads_and(pair_ok);

  // 2. Per unit: max and min of the map (a warp per unit), `max` output, liveness bound.
  for (int u = warp; u < nu; u += kWarps) {
    float mx = -INFINITY, mn = INFINITY;
    const int64_t ub = acts_b + (u0 + u) * a.acts_stride[1];
    for (int j = lane; j < hw; j += 32) {
      float v;
      if (kStaged) {
        v = s_src[u * hw + j];
      } else {
        const int r = j / static_cast<int>(a.w), col = j - r * static_cast<int>(a.w);
        v = load_as_float(a.acts, ub + r * a.acts_stride[2] + col * a.acts_stride[3], a.acts_dtype);
      }
      mx = fmaxf(mx, v);
      mn = fminf(mn, v);
    }
    for (int o = 16; o > 0; o >>= 1) {
      mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, o));
      mn = fminf(mn, __shfl_xor_sync(kFull, mn, o));
    }
    if (lane == 0) {
      s_max[u] = mx;
      const float bound = (convex ? mx : fmaxf(mx, 0.0f)) + 4e-6f * fmaxf(fabsf(mx), fabsf(mn)) + 1e-36f;
      if (!(bound <= s_thr[u])) atomicOr(&s_live, 1u << u);
    }
  }
  __syncthreads();
  const unsigned live = s_live;

  // 3. Walk the output pixels (uniform trip count: the warp stays converged for emit()).
  // Per-thread active-pixel counts, two 16-bit counters per register (unit 2i low, 2i+1 high):
  // half the registers of one counter per unit, which keeps the kernel free of spills on
  // sm_80..sm_90. A thread visits at most kChunk / kThreads < 2^16 pixels between flushes.
  unsigned cnt[kTile / 2];
  const int32_t* lab_b = a.labels + b * a.L * static_cast<int64_t>(HW);
  const int32_t* img = a.image_labels ? a.image_labels + b * a.M : nullptr;
  const int64_t M = img ? a.M : 0;
  for (int chunk = 0; live && chunk < HW; chunk += kChunk) {
#pragma unroll
    for (int i = 0; i < kTile / 2; ++i) cnt[i] = 0;
    const int chunk_end = HW - chunk < kChunk ? HW : chunk + kChunk;
    for (int base = chunk; base < chunk_end; base += kThreads) {
      const int p = base + tid;
      unsigned act = 0;
      if (p < HW) {
        const int y = p / static_cast<int>(a.W), x = p - y * static_cast<int>(a.W);
        const int iy0 = __ldg(a.ytab.i0 + y), iy1 = __ldg(a.ytab.i1 + y);
        const int ix0 = __ldg(a.xtab.i0 + x), ix1 = __ldg(a.xtab.i1 + x);
        const float wy0 = __ldg(a.ytab.w0 + y), wy1 = __ldg(a.ytab.w1 + y);
        const float wx0 = __ldg(a.xtab.w0 + x), wx1 = __ldg(a.xtab.w1 + x);
        double dy0 = 0, dy1 = 0, dx0 = 0, dx1 = 0;
        if (kArith == Arith::Pillow) {
          dy0 = __ldg(a.ytab.d0 + y); dy1 = __ldg(a.ytab.d1 + y);
          dx0 = __ldg(a.xtab.d0 + x); dx1 = __ldg(a.xtab.d1 + x);
        }
        int64_t o00, o01, o10, o11;
        if (kStaged) {  // shared-memory offsets fit in 32 bits (fewer registers)
          const int w = static_cast<int>(a.w);
          o00 = iy0 * w + ix0; o01 = iy0 * w + ix1; o10 = iy1 * w + ix0; o11 = iy1 * w + ix1;
        } else {
          const int64_t sy = a.acts_stride[2], sx = a.acts_stride[3];
          o00 = iy0 * sy + ix0 * sx; o01 = iy0 * sy + ix1 * sx;
          o10 = iy1 * sy + ix0 * sx; o11 = iy1 * sy + ix1 * sx;
        }
#pragma unroll
        for (int u = 0; u < kTile; ++u) {
          if ((live >> u) & 1u) {
            float a00, a01, a10, a11;
            if (kStaged) {
              const float* s = s_src + u * hw;
              a00 = s[o00]; a01 = s[o01]; a10 = s[o10]; a11 = s[o11];
            } else {
              const int64_t ub = acts_b + (u0 + u) * a.acts_stride[1];
              a00 = load_as_float(a.acts, ub + o00, a.acts_dtype);
              a01 = load_as_float(a.acts, ub + o01, a.acts_dtype);
              a10 = load_as_float(a.acts, ub + o10, a.acts_dtype);
              a11 = load_as_float(a.acts, ub + o11, a.acts_dtype);
            }
            const float v = blend_sample<kArith>(a00, a01, a10, a11, wy0, wy1, wx0, wx1, dy0, dy1, dx0, dx1);
            if (v > s_thr[u]) {
              act |= 1u << u;
              cnt[u >> 1] += 1u << ((u & 1) * 16);
            }
          }
        }
      }
      if (!__any_sync(kFull, act != 0u)) continue;
      // Labels of this pixel, read once for the whole tile (only where something is active).
      const int32_t* lab = lab_b + p;
      int regs[kRegLayers];
#pragma unroll
      for (int l = 0; l < kRegLayers; ++l)
        regs[l] = (act && l < a.L) ? __ldg(lab + l * static_cast<int64_t>(HW)) : 0;
#pragma unroll
      for (int l = 0; l < kRegLayers; ++l) {
        if (l < a.L) {
          const int c = regs[l];
          bool ok = act && c > 0;
          if (ok && !a.per_layer) {
#pragma unroll
            for (int l2 = 0; l2 < l; ++l2) ok &= regs[l2] != c;
            ok = ok && !in_image(c, img, M);
          }
          emit(ok ? act : 0u, c, a, b, u0, lane);
        }
      }
      for (int64_t l = kRegLayers; l < a.L; ++l) {
        const int c = act ? __ldg(lab + l * HW) : 0;
        bool ok = act && c > 0;
        if (ok && !a.per_layer) {
#pragma unroll
          for (int l2 = 0; l2 < kRegLayers; ++l2) ok &= regs[l2] != c;
          for (int64_t l2 = kRegLayers; l2 < l; ++l2) ok &= __ldg(lab + l2 * HW) != c;
          ok = ok && !in_image(c, img, M);
        }
        emit(ok ? act : 0u, c, a, b, u0, lane);
      }
    }

    // The chunk's counts into the block totals (warp sums, one shared atomic per unit).
#pragma unroll
    for (int u = 0; u < kTile; ++u) {
      if ((live >> u) & 1u) {
        const unsigned s = __reduce_add_sync(kFull, (cnt[u >> 1] >> ((u & 1) * 16)) & 0xffffu);
        if (lane == 0 && s) atomicAdd(&s_cnt[u], s);
      }
    }
  }

  // 4. Outputs; image-level labels count every active pixel.
  __syncthreads();
  if (tid < nu) {
    const int64_t u = u0 + tid;
    const long long count = static_cast<long long>(s_cnt[tid]);
    a.active[b * a.U + u] = count;
    a.max[b * a.U + u] = s_max[tid];
    if (count)
      for (int64_t m = 0; m < M; ++m) {
        const int c = img[m];
        if (c <= 0) continue;
        bool dup = false;
        if (!a.per_layer)
          for (int64_t m2 = 0; m2 < m && !dup; ++m2) dup = img[m2] == c;
        if (dup) continue;
        atomicAdd(reinterpret_cast<unsigned long long*>(a.intersection) + (u * a.C + c),
                  static_cast<unsigned long long>(count));
        if (a.touched) a.touched[(b * a.U + u) * a.K + a.category_of[c]] = 1;
      }
  }
}

// The device holding `p`, or -1 when it is not CUDA device (or managed) memory.
int device_of(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  return (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) ? attr.device : -1;
}

// Makes `device` current for its lifetime (the caller's tensors may live on another GPU).
struct DeviceGuard {
  int previous = -1;
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous), "cudaGetDevice");
    if (previous != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous) (void)cudaSetDevice(previous);
  }
};

// One launch of the kernel instantiated for (arith, staged).
void launch(Arith arith, bool staged, dim3 grid, size_t smem, cudaStream_t s, const TallyArgs& a, int tile, int64_t b0) {
  if (arith == Arith::GridSample) {
    if (staged) tally_kernel<true, Arith::GridSample><<<grid, kThreads, smem, s>>>(a, tile, b0);
    else tally_kernel<false, Arith::GridSample><<<grid, kThreads, 0, s>>>(a, tile, b0);
  } else if (arith == Arith::Pillow) {
    if (staged) tally_kernel<true, Arith::Pillow><<<grid, kThreads, smem, s>>>(a, tile, b0);
    else tally_kernel<false, Arith::Pillow><<<grid, kThreads, 0, s>>>(a, tile, b0);
  } else {
    if (staged) tally_kernel<true, Arith::Separable><<<grid, kThreads, smem, s>>>(a, tile, b0);
    else tally_kernel<false, Arith::Separable><<<grid, kThreads, 0, s>>>(a, tile, b0);
  }
}

}  // namespace

void tally_cuda(const TallyArgs& a, std::intptr_t stream) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    throw Error(std::string("tally_cuda: no usable CUDA device (") +
                (err != cudaSuccess ? cudaGetErrorString(err) : "device count is 0") +
                "); use the cpu or triton backend");
  }
  if (a.B == 0 || a.U == 0) return;
  if (a.h < 1 || a.w < 1 || a.H < 1 || a.W < 1 || a.L < 1)
    throw Error("tally_cuda: empty map or label shape");
  if (a.H * a.W > (int64_t{1} << 30) || a.h * a.w > (int64_t{1} << 30))
    throw Error("tally_cuda: maps of more than 2^30 pixels are not supported");
  if (a.category_of == nullptr && a.touched != nullptr) throw Error("tally_cuda: touched needs category_of");
  const int device = device_of(a.acts);
  for (const void* p : {a.acts, static_cast<const void*>(a.labels), static_cast<const void*>(a.intersection),
                        static_cast<const void*>(a.active), static_cast<const void*>(a.max)})
    if (device < 0 || device_of(p) != device)
      throw Error("tally_cuda: inputs and outputs must be CUDA device memory on one device");
  DeviceGuard guard(device);
  const Arith arith = check_arith(a.ytab, a.xtab, "tally_cuda");

  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const size_t map_bytes = static_cast<size_t>(a.h * a.w) * sizeof(float);
  const bool staged = map_bytes <= kStageBytes;
  const int tile = staged ? static_cast<int>(std::min<size_t>(kTile, kStageBytes / map_bytes)) : kTile;
  const int64_t tiles = (a.U + tile - 1) / tile;
  if (tiles > 0x7fffffff) throw Error("tally_cuda: too many units");
  const size_t smem = staged ? tile * map_bytes : 0;
  for (int64_t b0 = 0; b0 < a.B; b0 += 65535) {
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(std::min<int64_t>(65535, a.B - b0)));
    launch(arith, staged, grid, smem, s, a, tile, b0);
    check(cudaGetLastError(), "kernel launch failed");
  }
}

}  // namespace dissect_kernels
