// pybind11 bindings of the exact-quantile state machine (exact_quantile.h) for
// dissect_kernels.stats.exact_quantile: the sizing / target / merge-plan / readout rules every
// device uses, and the CPU update / quantile / cdf / merge over tensors' host memory.
// Argument errors raise ValueError (the Python API's convention for bad input).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "bind_common.h"
#include "dissect_kernels/exact_quantile.h"

namespace py = pybind11;
using namespace dissect_kernels;

namespace {

exact::Config config(const py::dict& d) {
  exact::Config c;
  c.num_units = d["num_units"].cast<int64_t>();
  c.min_quantile = d["min_quantile"].cast<double>();
  c.expected_count = d["expected_count"].cast<int64_t>();
  c.slack = d["slack"].cast<int64_t>();
  c.max_bytes = d["max_bytes"].cast<int64_t>();
  return c;
}

exact::StateView view(const py::dict& d) {
  exact::StateView s;
  s.num_units = d["num_units"].cast<int64_t>();
  s.capacity = d["capacity"].cast<int64_t>();
  s.buffer = bind::ptr<float>(d, "buffer");
  s.kept = bind::ptr<int64_t>(d, "kept");
  s.cut = bind::ptr<float>(d, "cut");
  s.nan_count = bind::ptr<int64_t>(d, "nan_count");
  return s;
}

// Run f with the GIL released (f must not touch Python objects: read the dicts first); the
// core's errors become ValueError.
template <typename F>
auto as_value_error(F&& f) -> decltype(f()) {
  try {
    py::gil_scoped_release release;
    return f();
  } catch (const Error& e) {
    throw py::value_error(e.what());
  }
}

}  // namespace

void bind_exact_quantile(py::module_& m) {
#ifdef DK_VERSION
  m.attr("version") = DK_VERSION;  // the CMake build's version (tests check it equals __version__)
#endif
  m.def("exact_validate", [](const py::dict& cfg) {
    const exact::Config c = config(cfg);
    as_value_error([&] { exact::validate(c); });
  },
        "Check an exact-quantile config (ValueError naming the bad field).");
  m.def("exact_tail_needed", &exact::tail_needed, py::arg("n"), py::arg("q"));
  m.def("exact_capacity", [](const py::dict& cfg, int64_t expected) {
    return exact::capacity_for(config(cfg), expected);
  }, py::arg("cfg"), py::arg("expected"), "Buffer slots per unit for `expected` samples.");
  m.def("exact_state_bytes", &exact::state_bytes, py::arg("num_units"), py::arg("capacity"));
  m.def("exact_check_budget", [](const py::dict& cfg, int64_t capacity, const std::string& what) {
    const exact::Config c = config(cfg);
    as_value_error([&] { exact::check_budget(c, capacity, what.c_str()); });
  }, py::arg("cfg"), py::arg("capacity"), py::arg("what"));
  m.def("exact_target", [](const py::dict& cfg, int64_t count_after, int64_t capacity) {
    return exact::compaction_target(config(cfg), count_after, capacity);
  }, py::arg("cfg"), py::arg("count_after"), py::arg("capacity"), "Values a compaction keeps.");
  m.def("exact_merge_plan", [](const py::dict& a, int64_t na, int64_t capa, const py::dict& b, int64_t nb,
                               int64_t capb) {
    const exact::Config ca = config(a), cb = config(b);
    const exact::MergePlan p = as_value_error([&] { return exact::merge_plan(ca, na, capa, cb, nb, capb); });
    return py::dict(py::arg("expected_count") = p.expected_count, py::arg("capacity") = p.capacity,
                    py::arg("target") = p.target, py::arg("count") = p.count);
  }, "Merged expected count, capacity, compaction target and count.");
  m.def("exact_readout", [](int64_t n, double q) {
    const exact::Readout r = exact::readout(n, q);
    return py::make_tuple(r.rank_lower, r.rank_upper, r.gamma);
  }, py::arg("n"), py::arg("q"), "(descending rank of the lower and upper order statistic, gamma).");
  m.def("exact_lerp", &exact::lerp, py::arg("lower"), py::arg("upper"), py::arg("gamma"));
  m.def("exact_check", [](const py::dict& cfg, std::int64_t kept, std::int64_t cut, int64_t n, double q) {
    const exact::Config c = config(cfg);
    as_value_error([&] {
      exact::check_exact(c, reinterpret_cast<const int64_t*>(static_cast<std::uintptr_t>(kept)),
                         reinterpret_cast<const float*>(static_cast<std::uintptr_t>(cut)), n, q);
    });
  }, "ValueError('exactness lost ...') when a unit (host kept/cut) cannot answer q from n samples.");
  m.def("exact_update", [](const py::dict& cfg, const py::dict& state, int64_t count, const py::dict& x) {
    const exact::Config c = config(cfg);
    const exact::StateView s = view(state);
    const QuantileFilterArgs a = bind::quantile_filter_args(x);
    int64_t n = count;
    const int64_t bad = as_value_error([&] { return exact::update_cpu(c, s, &n, a); });
    return py::make_tuple(n, bad);
  }, "Fold x ([G, U, S] spec) into the state; returns (count after, units with NaN).");
  m.def("exact_quantile", [](const py::dict& cfg, const py::dict& state, int64_t n, const std::vector<double>& qs,
                             std::int64_t out) {
    const exact::Config c = config(cfg);
    const exact::StateView s = view(state);
    as_value_error([&] {
      exact::quantile_cpu(c, s, n, qs.data(), static_cast<int64_t>(qs.size()),
                          reinterpret_cast<double*>(static_cast<std::uintptr_t>(out)));
    });
  }, "out[u, j] = quantile qs[j] of unit u (float64 [U, len(qs)]).");
  m.def("exact_cdf", [](const py::dict& state, int64_t n, std::int64_t values, int64_t k, std::int64_t out) {
    const exact::StateView s = view(state);
    as_value_error([&] {
      exact::cdf_cpu(s, n, reinterpret_cast<const double*>(static_cast<std::uintptr_t>(values)), k,
                     reinterpret_cast<double*>(static_cast<std::uintptr_t>(out)));
    });
  }, "out[u, j] = fraction of samples <= values[u, j] (float64 [U, k]).");
  m.def("exact_merge", [](const py::dict& a, const py::dict& b, int64_t target, const py::dict& out) {
    const exact::StateView va = view(a), vb = view(b), vo = view(out);
    as_value_error([&] { exact::merge_cpu(va, vb, target, vo); });
  }, "out = the union of tails a and b, compacted to `target` when over capacity.");
}
