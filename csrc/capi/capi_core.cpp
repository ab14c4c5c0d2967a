// C ABI: errors, version, geometry tables, tally and label_stats (see dissect_kernels.h).
// Every argument is checked here (pointers, sizes, codes, id ranges) before a kernel runs.
#include <cmath>
#include <string>

#include "capi_internal.h"
#include "dissect_kernels/convert.h"
#include "dissect_kernels/geometry.h"
#include "dissect_kernels/label_stats.h"
#include "dissect_kernels/tally.h"

#ifndef DK_VERSION
#error "DK_VERSION must be defined by the build (CMakeLists.txt reads it from dissect_kernels/_version.py)"
#endif

namespace dissect_kernels::capi {
namespace {
thread_local std::string last_error;
}

void set_error(const std::string& message) { last_error = "dissect_kernels: " + message; }
void clear_error() { last_error.clear(); }
const char* last_error_message() { return last_error.c_str(); }

DType dtype_of(int32_t code, const char* name) {
  require(code == DK_FLOAT32 || code == DK_FLOAT16 || code == DK_BFLOAT16,
          std::string(name) + " must be DK_FLOAT32 (0), DK_FLOAT16 (1) or DK_BFLOAT16 (2), got " +
              std::to_string(code));
  return static_cast<DType>(code);
}

size_t dtype_size(DType dtype) { return dtype == DType::Float32 ? 4 : 2; }

void ids_in_range(const int32_t* ids, int64_t n, int64_t limit, const char* name, const char* limit_name) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= limit)
      throw ArgError(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                     " lies outside [0, " + limit_name + " = " + std::to_string(limit) + ")");
}

void no_nan(const void* x, DType dtype, int64_t G, int64_t U, int64_t S, const int64_t* st, const char* name) {
  for (int64_t g = 0; g < G; ++g)
    for (int64_t u = 0; u < U; ++u)
      for (int64_t s = 0; s < S; ++s) {
        const float v = load_as_float(x, g * st[0] + u * st[1] + s * st[2], dtype);
        if (v != v)
          throw ArgError(std::string(name) + " contains NaN (at [" + std::to_string(g) + ", " + std::to_string(u) +
                         ", " + std::to_string(s) + "])");
      }
}

void emit_bytes(const Writer& w, void* buffer, size_t capacity, size_t* size) {
  not_null(size, "size");
  *size = w.bytes.size();
  if (buffer == nullptr) return;
  require(capacity >= w.bytes.size(), "capacity " + std::to_string(capacity) + " is smaller than the " +
                                          std::to_string(w.bytes.size()) + " bytes needed (see *size)");
  std::memcpy(buffer, w.bytes.data(), w.bytes.size());
}

namespace {

void check_table(const dk_axis_table& t, int64_t n, int64_t src, const char* name) {
  const std::string nm(name);
  not_null(t.i0, (nm + ".i0").c_str());
  not_null(t.i1, (nm + ".i1").c_str());
  not_null(t.w0, (nm + ".w0").c_str());
  not_null(t.w1, (nm + ".w1").c_str());
  const std::string extent = nm == "ytab" ? "h" : "w";
  ids_in_range(t.i0, n, src, (nm + ".i0").c_str(), extent.c_str());
  ids_in_range(t.i1, n, src, (nm + ".i1").c_str(), extent.c_str());
}

void check_labels(const int32_t* labels, int64_t n_labels, const int32_t* image_labels, int64_t n_image,
                  int64_t num_concepts) {
  ids_in_range(labels, n_labels, num_concepts, "labels", "num_concepts");
  if (image_labels) ids_in_range(image_labels, n_image, num_concepts, "image_labels", "num_concepts");
}

void check_categories(const int32_t* category_of, int64_t num_concepts, int64_t num_categories,
                      const void* out, const char* out_name) {
  if (category_of == nullptr) {
    require(out == nullptr, std::string(out_name) + " needs category_of (pass both or neither)");
    return;
  }
  at_least(num_categories, 1, "num_categories");
  not_null(out, out_name);
  ids_in_range(category_of, num_concepts, num_categories, "category_of", "num_categories");
}

TallyArgs tally_args(const dk_tally_args* a, bool host) {
  not_null(a, "args");
  TallyArgs t;
  t.acts_dtype = dtype_of(a->acts_dtype, "acts_dtype");
  at_least(a->B, 0, "B");
  at_least(a->U, 1, "U");
  at_least(a->h, 1, "h");
  at_least(a->w, 1, "w");
  at_least(a->L, 1, "L");
  at_least(a->H, 1, "H");
  at_least(a->W, 1, "W");
  at_least(a->M, 0, "M");
  at_least(a->num_concepts, 1, "num_concepts");
  require(a->h <= INT32_MAX && a->w <= INT32_MAX, "h and w must fit in int32");
  not_null(a->acts, "acts");
  not_null(a->thresholds, "thresholds");
  not_null(a->labels, "labels");
  require(a->M == 0 || a->image_labels != nullptr, "image_labels must not be NULL when M > 0");
  not_null(a->intersection, "intersection");
  not_null(a->active, "active");
  not_null(a->max, "max");
  if (a->category_of == nullptr)
    require(a->touched == nullptr, "touched needs category_of (pass both or neither)");
  else
    not_null(a->touched, "touched");
  if (host) {
    check_table(a->ytab, a->H, a->h, "ytab");
    check_table(a->xtab, a->W, a->w, "xtab");
    check_labels(a->labels, a->B * a->L * a->H * a->W, a->M ? a->image_labels : nullptr, a->B * a->M,
                 a->num_concepts);
    check_categories(a->category_of, a->num_concepts, a->num_categories, a->touched, "touched");
  }
  t.acts = a->acts;
  t.B = a->B;
  t.U = a->U;
  t.h = a->h;
  t.w = a->w;
  for (int i = 0; i < 4; ++i) t.acts_stride[i] = a->acts_stride[i];
  t.thresholds = a->thresholds;
  t.labels = a->labels;
  t.L = a->L;
  t.H = a->H;
  t.W = a->W;
  t.image_labels = a->M ? a->image_labels : nullptr;
  t.M = a->M;
  t.ytab = AxisTable{a->ytab.i0, a->ytab.i1, a->ytab.w0, a->ytab.w1, a->H};
  t.xtab = AxisTable{a->xtab.i0, a->xtab.i1, a->xtab.w0, a->xtab.w1, a->W};
  t.C = a->num_concepts;
  t.per_layer = a->per_layer != 0;
  t.category_of = a->category_of;
  t.K = a->category_of ? a->num_categories : 0;
  t.intersection = a->intersection;
  t.active = a->active;
  t.max = a->max;
  t.touched = a->category_of ? a->touched : nullptr;
  return t;
}

}  // namespace
}  // namespace dissect_kernels::capi

using namespace dissect_kernels;
using namespace dissect_kernels::capi;

extern "C" {

const char* dk_last_error(void) { return last_error_message(); }

const char* dk_version(void) { return DK_VERSION; }

const char* dk_status_name(dk_status status) {
  switch (status) {
    case DK_OK: return "DK_OK";
    case DK_ERR_INVALID_ARGUMENT: return "DK_ERR_INVALID_ARGUMENT";
    case DK_ERR_STATE: return "DK_ERR_STATE";
    case DK_ERR_OUT_OF_MEMORY: return "DK_ERR_OUT_OF_MEMORY";
    case DK_ERR_UNSUPPORTED: return "DK_ERR_UNSUPPORTED";
    case DK_ERR_INTERNAL: return "DK_ERR_INTERNAL";
  }
  return "unknown dk_status";
}

dk_status dk_axis_table_affine(double scale, double offset, int64_t n_src, int64_t n_dst, dk_boundary boundary,
                               int32_t* i0, int32_t* i1, float* w0, float* w1) {
  return guarded("dk_axis_table_affine", [&] {
    at_least(n_src, 1, "n_src");
    at_least(n_dst, 1, "n_dst");
    not_null(i0, "i0");
    not_null(i1, "i1");
    not_null(w0, "w0");
    not_null(w1, "w1");
    require(boundary == DK_BOUNDARY_CLAMP || boundary == DK_BOUNDARY_ZERO || boundary == DK_BOUNDARY_BORDER,
            "boundary must be DK_BOUNDARY_CLAMP (0), DK_BOUNDARY_ZERO (1) or DK_BOUNDARY_BORDER (2), got " +
                std::to_string(static_cast<int>(boundary)));
    require(std::isfinite(scale) && std::isfinite(offset), "scale and offset must be finite");
    axis_table_affine(scale, offset, n_src, n_dst, static_cast<Boundary>(boundary), i0, i1, w0, w1);
  });
}

dk_status dk_axis_table_named(dk_geometry geometry, int64_t n_src, int64_t n_dst, int32_t* i0, int32_t* i1,
                              float* w0, float* w1) {
  double scale = 0, offset = 0;
  dk_boundary boundary = DK_BOUNDARY_CLAMP;
  const dk_status st = guarded("dk_axis_table_named", [&] {
    at_least(n_src, 1, "n_src");
    at_least(n_dst, 1, "n_dst");
    switch (geometry) {
      case DK_GEOMETRY_HALF_PIXEL: half_pixel_map(n_src, n_dst, &scale, &offset); break;
      case DK_GEOMETRY_ALIGN_CORNERS: align_corners_map(n_src, n_dst, &scale, &offset); break;
      case DK_GEOMETRY_ZERO_PAD:
        half_pixel_map(n_src, n_dst, &scale, &offset);
        boundary = DK_BOUNDARY_ZERO;
        break;
      default:
        throw ArgError("geometry must be DK_GEOMETRY_HALF_PIXEL (0), DK_GEOMETRY_ALIGN_CORNERS (1) or "
                       "DK_GEOMETRY_ZERO_PAD (2), got " + std::to_string(static_cast<int>(geometry)));
    }
  });
  if (st != DK_OK) return st;
  return dk_axis_table_affine(scale, offset, n_src, n_dst, boundary, i0, i1, w0, w1);
}

dk_status dk_tally(const dk_tally_args* args) {
  return guarded("dk_tally", [&] {
    const TallyArgs t = tally_args(args, /*host=*/true);
    if (t.B > 0) tally_cpu(t);
  });
}

dk_status dk_tally_cuda(const dk_tally_args* args, intptr_t stream) {
  return guarded("dk_tally_cuda", [&] {
    const TallyArgs t = tally_args(args, /*host=*/false);
#ifdef DK_HAVE_CUDA
    if (t.B > 0) tally_cuda(t, stream);
#else
    (void)t;
    (void)stream;
    throw UnsupportedError("this build of dissect_kernels has no CUDA kernels (configure with nvcc and DK_WITH_CUDA=ON)");
#endif
  });
}

dk_status dk_label_stats(const int32_t* labels, int64_t B, int64_t L, int64_t H, int64_t W,
                         const int32_t* image_labels, int64_t M, int64_t num_concepts, int32_t per_layer,
                         const int32_t* category_of, int64_t num_categories, int64_t* pixels, uint8_t* present) {
  return guarded("dk_label_stats", [&] {
    at_least(B, 1, "B");
    at_least(L, 1, "L");
    at_least(H, 1, "H");
    at_least(W, 1, "W");
    at_least(M, 0, "M");
    at_least(num_concepts, 1, "num_concepts");
    not_null(labels, "labels");
    not_null(pixels, "pixels");
    require(M == 0 || image_labels != nullptr, "image_labels must not be NULL when M > 0");
    check_labels(labels, B * L * H * W, M ? image_labels : nullptr, B * M, num_concepts);
    check_categories(category_of, num_concepts, num_categories, present, "present");
    LabelStatsArgs a;
    a.labels = labels;
    a.B = B;
    a.L = L;
    a.H = H;
    a.W = W;
    a.image_labels = M ? image_labels : nullptr;
    a.M = M;
    a.C = num_concepts;
    a.per_layer = per_layer != 0;
    a.category_of = category_of;
    a.K = category_of ? num_categories : 0;
    a.pixels = pixels;
    a.present = category_of ? present : nullptr;
    label_stats_cpu(a);
  });
}

}  // extern "C"
