// Helpers shared by the CPU and CUDA bindings: read an op's argument dict (integers that are
// pointers, shapes and strides, built by dissect_kernels/ops/<op>.py) into the plain C++ struct.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "dissect_kernels/tail_sketch.h"
#include "dissect_kernels/quantile.h"
#include "dissect_kernels/tally.h"
#include "dissect_kernels/upsample.h"

namespace dissect_kernels::bind {
namespace py = pybind11;

template <typename T>
inline T* ptr(const py::dict& d, const char* key) {
  return reinterpret_cast<T*>(static_cast<std::uintptr_t>(d[key].cast<std::int64_t>()));
}

// d[key] = [i0, i1, w0, w1, d0, d1, arith]: six pointers and the Arith code (AxisTable.spec()
// in dissect_kernels/geometry.py).
inline AxisTable axis_table(const py::dict& d, const char* key, int64_t n) {
  auto p = d[key].cast<std::vector<std::int64_t>>();
  auto as = [](std::int64_t v) { return reinterpret_cast<const void*>(static_cast<std::uintptr_t>(v)); };
  AxisTable t{static_cast<const int32_t*>(as(p.at(0))), static_cast<const int32_t*>(as(p.at(1))),
              static_cast<const float*>(as(p.at(2))), static_cast<const float*>(as(p.at(3))), n};
  t.d0 = static_cast<const double*>(as(p.at(4)));
  t.d1 = static_cast<const double*>(as(p.at(5)));
  t.arith = static_cast<Arith>(p.at(6));
  return t;
}

inline TallyArgs tally_args(const py::dict& d) {
  TallyArgs a;
  a.acts = ptr<const void>(d, "acts");
  a.acts_dtype = static_cast<DType>(d["acts_dtype"].cast<int>());
  a.B = d["B"].cast<int64_t>();
  a.U = d["U"].cast<int64_t>();
  a.h = d["h"].cast<int64_t>();
  a.w = d["w"].cast<int64_t>();
  auto st = d["acts_stride"].cast<std::vector<int64_t>>();
  for (int i = 0; i < 4; ++i) a.acts_stride[i] = st.at(i);
  a.thresholds = ptr<const float>(d, "thresholds");
  a.labels = ptr<const int32_t>(d, "labels");
  a.L = d["L"].cast<int64_t>();
  a.H = d["H"].cast<int64_t>();
  a.W = d["W"].cast<int64_t>();
  a.image_labels = ptr<const int32_t>(d, "image_labels");
  a.M = d["M"].cast<int64_t>();
  a.ytab = axis_table(d, "ytab", a.H);
  a.xtab = axis_table(d, "xtab", a.W);
  a.C = d["C"].cast<int64_t>();
  a.per_layer = d["per_layer"].cast<bool>();
  a.category_of = ptr<const int32_t>(d, "category_of");
  a.K = d["K"].cast<int64_t>();
  a.intersection = ptr<int64_t>(d, "intersection");
  a.active = ptr<int64_t>(d, "active");
  a.max = ptr<float>(d, "max");
  a.touched = ptr<uint8_t>(d, "touched");
  return a;
}

inline UpsampleArgs upsample_args(const py::dict& d) {
  UpsampleArgs a;
  a.acts = ptr<const void>(d, "acts");
  a.acts_dtype = static_cast<DType>(d["acts_dtype"].cast<int>());
  a.B = d["B"].cast<int64_t>();
  a.U = d["U"].cast<int64_t>();
  a.h = d["h"].cast<int64_t>();
  a.w = d["w"].cast<int64_t>();
  auto st = d["acts_stride"].cast<std::vector<int64_t>>();
  for (int i = 0; i < 4; ++i) a.acts_stride[i] = st.at(i);
  a.ytab = axis_table(d, "ytab", d["H"].cast<int64_t>());
  a.xtab = axis_table(d, "xtab", d["W"].cast<int64_t>());
  a.out = ptr<float>(d, "out");
  return a;
}

inline TailSketchState tail_sketch_state(const py::dict& d) {
  TailSketchState s;
  s.U = d["U"].cast<int64_t>();
  s.M = d["M"].cast<int64_t>();
  s.P = d["P"].cast<int64_t>();
  s.k_t = d["k_t"].cast<int64_t>();
  s.k_l = d["k_l"].cast<int64_t>();
  s.tail_shift = d["tail_shift"].cast<int64_t>();
  s.block_rows = d["block_rows"].cast<int64_t>();
  s.values = ptr<float>(d, "values");
  s.rmin = ptr<int64_t>(d, "rmin");
  s.rmax = ptr<int64_t>(d, "rmax");
  s.gap = ptr<int64_t>(d, "gap");
  s.eq = ptr<int64_t>(d, "eq");
  s.size = ptr<int64_t>(d, "size");
  s.total = ptr<int64_t>(d, "total");
  s.counted = ptr<int64_t>(d, "counted");
  s.pend = ptr<float>(d, "pend");
  s.pend_n = ptr<int64_t>(d, "pend_n");
  s.tidx = ptr<int64_t>(d, "tidx");
  s.coarsen = ptr<int64_t>(d, "coarsen");
  return s;
}

inline QuantileFilterArgs quantile_filter_args(const py::dict& d) {
  QuantileFilterArgs a;
  a.x = ptr<const void>(d, "x");
  a.x_dtype = static_cast<DType>(d["x_dtype"].cast<int>());
  a.G = d["G"].cast<int64_t>();
  a.U = d["U"].cast<int64_t>();
  a.S = d["S"].cast<int64_t>();
  auto st = d["x_stride"].cast<std::vector<int64_t>>();
  for (int i = 0; i < 3; ++i) a.x_stride[i] = st.at(i);
  a.buffer = ptr<float>(d, "buffer");
  a.capacity = d["capacity"].cast<int64_t>();
  a.kept = ptr<int64_t>(d, "kept");
  a.cut = ptr<float>(d, "cut");
  a.target = d["target"].cast<int64_t>();
  a.nan_count = ptr<int64_t>(d, "nan_count");
  return a;
}

}  // namespace dissect_kernels::bind
