// pybind11 module dissect_kernels._cuda: the CUDA kernels, called with device pointers and a
// stream handle from Python. Imports without a GPU (static cudart); calls then raise.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "bind_common.h"
#include "dissect_kernels/cuda_build.h"

namespace py = pybind11;
using namespace dissect_kernels;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "dissect_kernels CUDA kernels (torch-free; arguments are device pointers, shapes, strides)";
  m.def("tally", [](const py::dict& spec, std::int64_t stream) {
    TallyArgs args = bind::tally_args(spec);
    py::gil_scoped_release release;
    tally_cuda(args, static_cast<std::intptr_t>(stream));
  }, py::arg("spec"), py::arg("stream") = 0, "Fused upsample-threshold-intersect (see tally.h).");
  m.def("upsample", [](const py::dict& spec, std::int64_t stream) {
    UpsampleArgs args = bind::upsample_args(spec);
    py::gil_scoped_release release;
    upsample_cuda(args, static_cast<std::intptr_t>(stream));
  }, py::arg("spec"), py::arg("stream") = 0, "The tally's bilinear upsampling, materialised (see upsample.h).");
  m.def("built_archs", &cuda_built_archs, "Compute capabilities compiled (10*major + minor), SASS + PTX each.");
  m.def("runtime_version", &cuda_runtime_version, "CUDA runtime version linked statically (1000*major + 10*minor).");
  m.def("driver_version", &cuda_driver_version, "CUDA version the installed driver supports; 0 without a driver.");
  m.def("device_problem", &cuda_device_problem, py::arg("device"),
        "'' when this build's kernels load on the device, else the driver's reason.");
  m.def("device_count", []() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return n;
  }, "Number of CUDA devices visible to this module's runtime (0 without a driver or GPU).");
}
