/* dissect_kernels C ABI: the engine's ops over plain pointers, shapes, element strides and dtype
 * codes, for C and any language with a C FFI (ctypes, cffi, Rust, Go, Julia, ...).
 *
 * Conventions
 *   - Every function returns a dk_status; DK_OK (0) is success. On failure dk_last_error()
 *     returns a message naming the argument and what was expected (thread-local, valid until
 *     the next dk_* call on the same thread). Null pointers, negative sizes and unknown codes
 *     are reported, never dereferenced.
 *   - Arrays are host memory, row-major; "strides" are in elements, not bytes.
 *   - Results equal the Python API's (dissect_kernels.tally, label_stats, ExactQuantile, TopK)
 *     on the same inputs: integer counts identical, exact quantiles equal to numpy.quantile.
 *   - Accumulators (dk_quantile, dk_topk) are opaque handles: create, update, merge, query,
 *     serialise (a byte string in host byte order), free. A handle may be used from one thread
 *     at a time; the kernels themselves use OpenMP threads.
 *
 * Minimal use (see examples/c/dissect_example.c):
 *   dk_quantile_options opt = dk_quantile_default_options(num_units);
 *   opt.expected_count = n_images * h * w;          // exact mode needs the total count
 *   dk_quantile* q = NULL;
 *   if (dk_quantile_create(&opt, &q) != DK_OK) { fprintf(stderr, "%s\n", dk_last_error()); ... }
 *   dk_quantile_update_maps(q, acts, DK_FLOAT32, B, U, h, w, strides);   // [B, U, h, w]
 *   double q995 = 0.995, thr[U];
 *   dk_quantile_query(q, &q995, 1, thr);                                  // exact thresholds
 *   dk_quantile_free(q);
 */
#ifndef DISSECT_KERNELS_H_
#define DISSECT_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DK_API __declspec(dllexport)
#else
#define DK_API __attribute__((visibility("default")))
#endif

typedef enum dk_status {
  DK_OK = 0,
  DK_ERR_INVALID_ARGUMENT = 1, /* a null pointer, bad size, bad code, out-of-range id, NaN ... */
  DK_ERR_STATE = 2,            /* the accumulator cannot answer: empty, NaN seen, exactness lost */
  DK_ERR_OUT_OF_MEMORY = 3,
  DK_ERR_UNSUPPORTED = 4,      /* e.g. a CUDA call in a build without CUDA */
  DK_ERR_INTERNAL = 5
} dk_status;

typedef enum dk_dtype { DK_FLOAT32 = 0, DK_FLOAT16 = 1, DK_BFLOAT16 = 2 } dk_dtype;

/* The message of the last failed call on this thread ("" when none). */
DK_API const char* dk_last_error(void);
/* The library version, "MAJOR.MINOR.PATCH" (equal to the Python package's __version__). */
DK_API const char* dk_version(void);
/* Name of a status code, e.g. "DK_ERR_INVALID_ARGUMENT". */
DK_API const char* dk_status_name(dk_status status);

/* ---- geometry: bilinear tables for one axis ----------------------------------------------
 * Output index o reads source indices i0[o], i1[o] with weights w0[o], w1[o] for the affine map
 * x_src = scale * o + offset (dissect_kernels.Geometry). */
typedef enum dk_boundary { DK_BOUNDARY_CLAMP = 0, DK_BOUNDARY_ZERO = 1, DK_BOUNDARY_BORDER = 2 } dk_boundary;
typedef enum dk_geometry {
  DK_GEOMETRY_HALF_PIXEL = 0,    /* F.interpolate(bilinear, align_corners=False), edge clamp */
  DK_GEOMETRY_ALIGN_CORNERS = 1, /* F.interpolate(bilinear, align_corners=True) */
  DK_GEOMETRY_ZERO_PAD = 2       /* the half-pixel map, taps outside the map read 0 */
} dk_geometry;

typedef struct dk_axis_table {
  const int32_t* i0;
  const int32_t* i1;
  const float* w0;
  const float* w1;
} dk_axis_table;

/* Fill i0, i1, w0, w1 (n_dst entries each) for a named geometry or an affine map. */
DK_API dk_status dk_axis_table_named(dk_geometry geometry, int64_t n_src, int64_t n_dst,
                                     int32_t* i0, int32_t* i1, float* w0, float* w1);
DK_API dk_status dk_axis_table_affine(double scale, double offset, int64_t n_src, int64_t n_dst,
                                      dk_boundary boundary, int32_t* i0, int32_t* i1, float* w0, float* w1);

/* ---- tally: fused upsample -> threshold -> intersect -------------------------------------
 * For image b, unit u, output pixel (y, x): v = bilinear(acts[b, u], ytab[y], xtab[x]) in fp32
 * (tally.h's order, no FMA); active = v > thresholds[u]. For every active pixel and every
 * concept c > 0 labelled there (labels layers; image_labels cover every pixel):
 * intersection[u, c] += 1 (once per pixel, or once per layer holding c with per_layer).
 * Outputs: intersection [U, C] is ACCUMULATED (+=; zero it first); active [B, U] (mask area),
 * max [B, U] (max of each source map) and touched [B, U, K] (0/1: an active pixel lies on a
 * concept of category k; only with category_of) are written. */
typedef struct dk_tally_args {
  const void* acts;            /* [B, U, h, w], element strides acts_stride */
  int32_t acts_dtype;          /* dk_dtype */
  int64_t B, U, h, w;
  int64_t acts_stride[4];
  const float* thresholds;     /* [U] */
  const int32_t* labels;       /* [B, L, H, W] contiguous, ids in [0, num_concepts), 0 = none */
  int64_t L, H, W;
  const int32_t* image_labels; /* [B, M] contiguous or NULL; ids in [0, num_concepts), 0 = padding */
  int64_t M;
  dk_axis_table ytab;          /* H entries */
  dk_axis_table xtab;          /* W entries */
  int64_t num_concepts;
  int32_t per_layer;           /* 0: a pixel counts once; 1: once per layer holding the concept */
  const int32_t* category_of;  /* [num_concepts] ids in [0, num_categories), or NULL (no touched) */
  int64_t num_categories;
  int64_t* intersection;       /* [U, num_concepts], accumulated */
  int64_t* active;             /* [B, U] */
  float* max;                  /* [B, U] */
  uint8_t* touched;            /* [B, U, num_categories] or NULL; required with category_of */
} dk_tally_args;

/* CPU tally; every id and table index is range-checked first. */
DK_API dk_status dk_tally(const dk_tally_args* args);
/* CUDA tally: pointers are device memory, stream a cudaStream_t (0 = default stream). Ids are
 * not range-checked (device memory). DK_ERR_UNSUPPORTED in a build without CUDA. */
DK_API dk_status dk_tally_cuda(const dk_tally_args* args, intptr_t stream);

/* ---- label_stats: per-image concept pixel counts and category presence ------------------
 * pixels [B, num_concepts] int64: pixels of concept c in image b (once per pixel; per_layer:
 * per layer), image-level labels covering every pixel, concept 0 always 0. present
 * [B, num_categories] (0/1, only with category_of): some concept of category k has pixels. */
DK_API dk_status dk_label_stats(const int32_t* labels, int64_t B, int64_t L, int64_t H, int64_t W,
                                const int32_t* image_labels, int64_t M, int64_t num_concepts,
                                int32_t per_layer, const int32_t* category_of, int64_t num_categories,
                                int64_t* pixels, uint8_t* present);

/* ---- quantile: per-unit streaming quantiles ----------------------------------------------
 * DK_QUANTILE_EXACT keeps every value that can still be in the top (1 - min_quantile) tail of
 * expected_count samples per unit: dk_quantile_query equals numpy.quantile(method="linear")
 * for q in [min_quantile, 1] (DK_ERR_STATE "exactness lost" when more samples than expected
 * pushed a needed rank out; never a wrong value). DK_QUANTILE_SKETCH is the tail sketch
 * (Python's TailSketch: any count, ~1.2 MB per unit, deterministic, mergeable; its rank error
 * is reported by dk_quantile_rank_error_bound; tail-only and faster for min_quantile >= ~0.978).
 * DK_QUANTILE_AUTO is exact when expected_count is known and the state fits max_bytes, else the
 * sketch. Both modes refuse q below min_quantile. The codes match the Python state_dict's "mode".
 * Sketch mode reaches the Python TailSketch's state from the same batches (same order). */
typedef enum dk_quantile_mode { DK_QUANTILE_AUTO = 0, DK_QUANTILE_EXACT = 1, DK_QUANTILE_SKETCH = 2 } dk_quantile_mode;

typedef struct dk_quantile_options {
  int32_t mode;            /* dk_quantile_mode */
  int64_t num_units;
  double min_quantile;     /* default 0.99 */
  int64_t expected_count;  /* samples per unit; -1 = unknown */
  int64_t slack;           /* free buffer slots beyond the tail; -1 = default */
  int64_t max_bytes;       /* state budget; default 2 GiB */
} dk_quantile_options;

typedef struct dk_quantile dk_quantile;

DK_API dk_quantile_options dk_quantile_default_options(int64_t num_units);
DK_API dk_status dk_quantile_create(const dk_quantile_options* options, dk_quantile** out);
DK_API void dk_quantile_free(dk_quantile* q);
/* The mode a handle runs in: DK_QUANTILE_EXACT or DK_QUANTILE_SKETCH (what AUTO picked). */
DK_API dk_status dk_quantile_get_mode(const dk_quantile* q, int32_t* mode);
/* Add x viewed as [G, U, S] with element strides (g, u, s): rows [N, U] are G = N, S = 1;
 * maps [B, U, h, w] with contiguous h, w are G = B, S = h * w. Samples are taken in (g, s)
 * order. NaN: DK_ERR_INVALID_ARGUMENT; exact mode then refuses queries (its count includes
 * them), sketch mode is left unchanged. */
DK_API dk_status dk_quantile_update(dk_quantile* q, const void* x, int32_t dtype, int64_t G, int64_t U,
                                    int64_t S, const int64_t strides[3]);
/* Add maps [B, U, h, w] with element strides[4] (every position of every image is a sample). */
DK_API dk_status dk_quantile_update_maps(dk_quantile* q, const void* x, int32_t dtype, int64_t B, int64_t U,
                                         int64_t h, int64_t w, const int64_t strides[4]);
/* out[u * nq + j] = quantile qs[j] of unit u, float64. */
DK_API dk_status dk_quantile_query(const dk_quantile* q, const double* qs, int64_t nq, double* out);
/* out[u * nq + j] = guaranteed |rank error| / count of dk_quantile_query's answer (0 in exact mode). */
DK_API dk_status dk_quantile_rank_error_bound(const dk_quantile* q, const double* qs, int64_t nq, double* out);
/* out[u * k + j] = fraction of the samples of unit u that are <= values[u * k + j] (exact mode:
 * exact at and above quantile(min_quantile); sketch: the midpoint of its rank bounds). */
DK_API dk_status dk_quantile_cdf(const dk_quantile* q, const double* values, int64_t k, double* out);
/* Fold `other` (same num_units and min_quantile) into `into`; `other` is unchanged. */
DK_API dk_status dk_quantile_merge(dk_quantile* into, const dk_quantile* other);
DK_API dk_status dk_quantile_count(const dk_quantile* q, int64_t* count);
DK_API dk_status dk_quantile_num_units(const dk_quantile* q, int64_t* num_units);
/* Serialise: with buffer NULL (or too small) *size receives the bytes needed; the call fails
 * with DK_ERR_INVALID_ARGUMENT only when a non-NULL buffer is too small. */
DK_API dk_status dk_quantile_serialize(const dk_quantile* q, void* buffer, size_t capacity, size_t* size);
DK_API dk_status dk_quantile_deserialize(const void* buffer, size_t size, dk_quantile** out);

/* ---- top-k: per-unit highest scores with their item indices -----------------------------
 * Scores descending, equal scores by lower index first; slots not yet filled read
 * (-inf, -1). NaN scores: DK_ERR_INVALID_ARGUMENT (the state is unchanged). */
typedef struct dk_topk dk_topk;

DK_API dk_status dk_topk_create(int64_t num_units, int64_t k, dk_topk** out);
DK_API void dk_topk_free(dk_topk* t);
/* scores (n, u) at scores[n * stride_n + u * stride_u]; indices [N] int64 item ids. */
DK_API dk_status dk_topk_update(dk_topk* t, const void* scores, int32_t dtype, int64_t N, int64_t U,
                                int64_t stride_n, int64_t stride_u, const int64_t* indices);
DK_API dk_status dk_topk_merge(dk_topk* into, const dk_topk* other);
/* values [U, k] float32 and indices [U, k] int64, best first. */
DK_API dk_status dk_topk_result(const dk_topk* t, float* values, int64_t* indices);
DK_API dk_status dk_topk_count(const dk_topk* t, int64_t* count);
DK_API dk_status dk_topk_serialize(const dk_topk* t, void* buffer, size_t capacity, size_t* size);
DK_API dk_status dk_topk_deserialize(const void* buffer, size_t size, dk_topk** out);

#ifdef __cplusplus
}
#endif

#endif /* DISSECT_KERNELS_H_ */
