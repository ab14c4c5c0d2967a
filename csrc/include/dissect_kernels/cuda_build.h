// What the CUDA build can run on: the compute capabilities it was compiled for, the CUDA
// runtime it links (statically), the installed driver's CUDA version, and a probe that asks
// the driver whether this build's kernels load on a device. Callers (e.g. backend choice in
// dissect_kernels/_native.py) use these to refuse a GPU or driver before launching anything.
// All but cuda_device_problem work on a machine without a GPU or driver.
#pragma once
#include <string>
#include <vector>

namespace dissect_kernels {

// Compute capabilities compiled, as 10*major + minor (e.g. {80, 86, 89, 90}); each is built
// as SASS plus PTX by the default CMake build (CMAKE_CUDA_ARCHITECTURES without -real).
std::vector<int> cuda_built_archs();
// CUDA runtime version linked into the module, 1000*major + 10*minor (e.g. 13000).
int cuda_runtime_version();
// CUDA version the installed driver supports (cudaDriverGetVersion), 0 without a driver.
int cuda_driver_version();
// "" when this build's kernels load on `device`, else the driver's reason (no kernel image
// for the device, driver too old for the PTX, no device ...).
std::string cuda_device_problem(int device);

}  // namespace dissect_kernels
