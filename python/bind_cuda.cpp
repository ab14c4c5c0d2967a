// pybind11 module dissect_kernels._cuda: the CUDA kernels, called with device pointers and a
// stream handle from Python. Imports without a GPU (static cudart); calls then raise.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "bind_common.h"

namespace py = pybind11;
using namespace dissect_kernels;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "dissect_kernels CUDA kernels (torch-free; arguments are device pointers, shapes, strides)";
  m.def("tally", [](const py::dict& spec, std::int64_t stream) {
    TallyArgs args = bind::tally_args(spec);
    py::gil_scoped_release release;
    tally_cuda(args, static_cast<std::intptr_t>(stream));
  }, py::arg("spec"), py::arg("stream") = 0, "Fused upsample-threshold-intersect (see tally.h).");
  m.def("device_count", []() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return n;
  }, "Number of CUDA devices visible to this module's runtime (0 without a driver or GPU).");
}
