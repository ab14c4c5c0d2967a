// Small host-side helpers for the CUDA entry points: error checks, the device a pointer lives
// on, and a guard that makes that device current for the call.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "dissect_kernels/common.h"

namespace dissect_kernels::cuda_util {

inline void check(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) throw Error(std::string(op) + ": " + what + ": " + cudaGetErrorString(err));
}

// Throws the op's "no usable CUDA device" error when the runtime sees no device.
inline void require_device(const char* op) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    throw Error(std::string(op) + ": no usable CUDA device (" +
                (err != cudaSuccess ? cudaGetErrorString(err) : "device count is 0") +
                "); use the cpu or triton backend");
  }
}

// The device holding `p`, or -1 when it is not CUDA device (or managed) memory.
inline int device_of(const void* p) {
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
  DeviceGuard(int device, const char* op) {
    check(cudaGetDevice(&previous), op, "cudaGetDevice");
    if (previous != device) check(cudaSetDevice(device), op, "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous) (void)cudaSetDevice(previous);
  }
};

}  // namespace dissect_kernels::cuda_util
