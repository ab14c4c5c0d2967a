// x86 AVX-512 helpers shared by the CPU kernels (compiled per function with target attributes,
// chosen at run time after __builtin_cpu_supports checks). Empty on other architectures.
#pragma once
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <cstdint>
#define DK_HAVE_X86_SIMD 1

namespace dissect_kernels {

// In-register 16x16 float transpose: on return a[q] lane r holds what a[r] lane q held.
__attribute__((target("avx512f"), always_inline))
inline void transpose16_regs(__m512 (&a)[16]) {
  __m512 b[16];
  for (int i = 0; i < 16; i += 2) {
    b[i] = _mm512_unpacklo_ps(a[i], a[i + 1]);
    b[i + 1] = _mm512_unpackhi_ps(a[i], a[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    a[i] = _mm512_shuffle_ps(b[i], b[i + 2], 0x44);
    a[i + 1] = _mm512_shuffle_ps(b[i], b[i + 2], 0xEE);
    a[i + 2] = _mm512_shuffle_ps(b[i + 1], b[i + 3], 0x44);
    a[i + 3] = _mm512_shuffle_ps(b[i + 1], b[i + 3], 0xEE);
  }
  for (int i = 0; i < 16; i += 8) {
    for (int k = 0; k < 4; ++k) {
      b[i + k] = _mm512_shuffle_f32x4(a[i + k], a[i + 4 + k], 0x88);
      b[i + 4 + k] = _mm512_shuffle_f32x4(a[i + k], a[i + 4 + k], 0xDD);
    }
  }
  for (int k = 0; k < 8; ++k) {
    a[k] = _mm512_shuffle_f32x4(b[k], b[8 + k], 0x88);
    a[8 + k] = _mm512_shuffle_f32x4(b[k], b[8 + k], 0xDD);
  }
}

// Load 16 rows of 16 floats (row r at src + r * ss) and transpose: a[q] lane r = src[r * ss + q].
__attribute__((target("avx512f"), always_inline))
inline void load_transposed16(const float* src, int64_t ss, __m512 (&a)[16]) {
  for (int i = 0; i < 16; ++i) a[i] = _mm512_loadu_ps(src + i * ss);
  transpose16_regs(a);
}

}  // namespace dissect_kernels
#endif
