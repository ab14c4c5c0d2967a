// pybind11 module dissect_kernels._C: the CPU kernels, called with pointers from Python.
#include <pybind11/pybind11.h>

#include "bind_common.h"

namespace py = pybind11;
using namespace dissect_kernels;

void bind_exact_quantile(py::module_& m);  // bind_cpu_exact_quantile.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "dissect_kernels CPU kernels (torch-free; arguments are pointers, shapes, strides)";
  m.def("tally", [](const py::dict& spec, std::int64_t /*stream*/) {
    TallyArgs args = bind::tally_args(spec);
    py::gil_scoped_release release;
    tally_cpu(args);
  }, py::arg("spec"), py::arg("stream") = 0, "Fused upsample-threshold-intersect (see tally.h).");
  m.def("upsample", [](const py::dict& spec, std::int64_t /*stream*/) {
    UpsampleArgs args = bind::upsample_args(spec);
    py::gil_scoped_release release;
    upsample_cpu(args);
  }, py::arg("spec"), py::arg("stream") = 0, "The tally's bilinear upsampling, materialised (see upsample.h).");
  m.def("tail_sketch_update", [](const py::dict& state, std::int64_t x, std::int64_t n, std::int64_t ld) {
    TailSketchState s = bind::tail_sketch_state(state);
    py::gil_scoped_release release;
    tail_sketch_update_cpu(s, reinterpret_cast<const float*>(static_cast<std::uintptr_t>(x)), n, ld);
  }, py::arg("state"), py::arg("x"), py::arg("n"), py::arg("ld"), "Add x [n, U] (row stride ld) to a tail sketch (see tail_sketch.h).");
  m.def("tail_sketch_flush", [](const py::dict& state) {
    TailSketchState s = bind::tail_sketch_state(state);
    py::gil_scoped_release release;
    tail_sketch_flush_cpu(s);
  }, py::arg("state"), "Fold pending values and gap counts into each unit's summary.");
  m.def("quantile_filter", [](const py::dict& spec, std::int64_t /*stream*/) {
    QuantileFilterArgs args = bind::quantile_filter_args(spec);
    py::gil_scoped_release release;
    quantile_filter_cpu(args);
  }, py::arg("spec"), py::arg("stream") = 0, "Exact-tail filter and compaction (see quantile.h).");
  bind_exact_quantile(m);
}
