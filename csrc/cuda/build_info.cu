// Build facts of the CUDA module (cuda_build.h). __CUDA_ARCH_LIST__ is nvcc's list of the
// architectures this translation unit is compiled for; CMake compiles every .cu of the module
// with the same list, so it describes all the kernels.
#include <cuda_runtime.h>

#include "dissect_kernels/cuda_build.h"

namespace dissect_kernels {
namespace {

__global__ void probe_kernel(int* sink) {
  if (sink) *sink = 1;
}

}  // namespace

std::vector<int> cuda_built_archs() {
#ifdef __CUDA_ARCH_LIST__
  std::vector<int> archs = {__CUDA_ARCH_LIST__};
  for (int& a : archs) a /= 10;  // 900 -> 90
  return archs;
#else
  return {};
#endif
}

int cuda_runtime_version() { return CUDART_VERSION; }

int cuda_driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return version;
}

std::string cuda_device_problem(int device) {
  int previous = -1;
  cudaError_t err = cudaGetDevice(&previous);
  if (err == cudaSuccess && previous != device) err = cudaSetDevice(device);
  cudaFuncAttributes attr{};
  if (err == cudaSuccess) err = cudaFuncGetAttributes(&attr, probe_kernel);
  if (previous >= 0 && previous != device) (void)cudaSetDevice(previous);
  if (err == cudaSuccess) return "";
  (void)cudaGetLastError();
  return cudaGetErrorString(err);
}

}  // namespace dissect_kernels
