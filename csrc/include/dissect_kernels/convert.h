// Scalar conversions from the stored activation dtypes to fp32 (host and device).
#pragma once
#include <cstdint>
#include <cstring>

#include "dissect_kernels/common.h"

#if defined(__CUDACC__)
#define DK_HD __host__ __device__ __forceinline__
#else
#define DK_HD inline
#endif

namespace dissect_kernels {

DK_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// IEEE binary16 -> binary32, exact (subnormals, inf and NaN included).
DK_HD float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    float f = (float)man * 5.9604644775390625e-08f;  // man * 2^-24, exact
    return sign ? -f : f;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

DK_HD float bfloat16_to_float(uint16_t b) { return bits_to_float((uint32_t)b << 16); }

DK_HD float load_as_float(const void* base, int64_t offset, DType dtype) {
  switch (dtype) {
    case DType::Float16: return half_to_float(static_cast<const uint16_t*>(base)[offset]);
    case DType::BFloat16: return bfloat16_to_float(static_cast<const uint16_t*>(base)[offset]);
    default: return static_cast<const float*>(base)[offset];
  }
}

}  // namespace dissect_kernels
