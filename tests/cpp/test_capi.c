/* The C ABI (dissect_kernels.h) from C, against brute-force computations written out here:
 * tally, label_stats, top-k and exact quantiles on random inputs (strided, bfloat16), merges,
 * serialisation round trips, and the error codes and messages for bad arguments. */
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "dissect_kernels/dissect_kernels.h"

/* ---------------------------------------------------------------- helpers */

static float bf16_to_float(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static uint16_t float_to_bf16_trunc(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  return (uint16_t)(bits >> 16);
}

/* A random value on a coarse grid (ties on purpose), in [lo, lo + span). */
static float grid_value(float lo, int span_steps, float step) { return lo + step * (float)dk_randint(span_steps); }

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

/* numpy.quantile(sorted ascending v[0..n), q, method="linear"). */
static double numpy_linear(const double* v, long long n, double q) {
  double vi = (double)(n - 1) * q;
  long long prev, next;
  if (vi >= (double)(n - 1)) {
    prev = next = n - 1;
  } else {
    prev = (long long)floor(vi);
    next = prev + 1;
  }
  double gamma = vi - (double)prev, a = v[prev], b = v[next], diff = b - a;
  return gamma >= 0.5 ? b - diff * (1.0 - gamma) : a + diff * gamma;
}

/* ---------------------------------------------------------------- tally */

enum { TB = 3, TU = 5, Th = 4, Tw = 5, TL = 2, TH = 9, TW = 7, TM = 2, TC = 6, TK = 3 };

typedef struct {
  float acts[TB * Th * TU * Tw]; /* stored [B, h, U, w]: a strided view as [B, U, h, w] */
  uint16_t acts_bf16[TB * TU * Th * Tw];
  float thr[TU];
  int32_t labels[TB * TL * TH * TW];
  int32_t image_labels[TB * TM];
  int32_t category_of[TC];
  int32_t yi0[TH], yi1[TH], xi0[TW], xi1[TW];
  float yw0[TH], yw1[TH], xw0[TW], xw1[TW];
} TallyCase;

static float act_at(const TallyCase* t, int bf16, long long b, long long u, long long i, long long j) {
  if (bf16) return bf16_to_float(t->acts_bf16[((b * TU + u) * Th + i) * Tw + j]);
  return t->acts[((b * Th + i) * TU + u) * Tw + j];
}

/* Brute force: every unit-pixel interpolated (tally.h's fp32 order), every concept counted. */
static void tally_brute(const TallyCase* t, int bf16, int per_layer, long long* inter, long long* active,
                        float* mx, unsigned char* touched) {
  memset(inter, 0, sizeof(long long) * TU * TC);
  for (long long b = 0; b < TB; ++b)
    for (long long u = 0; u < TU; ++u) {
      long long area = 0;
      float m = -INFINITY;
      for (long long i = 0; i < Th; ++i)
        for (long long j = 0; j < Tw; ++j) m = fmaxf(m, act_at(t, bf16, b, u, i, j));
      mx[b * TU + u] = m;
      for (long long k = 0; k < TK; ++k) touched[(b * TU + u) * TK + k] = 0;
      for (long long y = 0; y < TH; ++y)
        for (long long x = 0; x < TW; ++x) {
          float r0 = t->xw0[x] * act_at(t, bf16, b, u, t->yi0[y], t->xi0[x]) +
                     t->xw1[x] * act_at(t, bf16, b, u, t->yi0[y], t->xi1[x]);
          float r1 = t->xw0[x] * act_at(t, bf16, b, u, t->yi1[y], t->xi0[x]) +
                     t->xw1[x] * act_at(t, bf16, b, u, t->yi1[y], t->xi1[x]);
          float v = t->yw0[y] * r0 + t->yw1[y] * r1;
          if (!(v > t->thr[u])) continue;
          ++area;
          long long hits[TC] = {0};
          for (long long l = 0; l < TL; ++l) hits[t->labels[((b * TL + l) * TH + y) * TW + x]]++;
          for (long long mm = 0; mm < TM; ++mm) hits[t->image_labels[b * TM + mm]]++;
          for (long long c = 1; c < TC; ++c) {
            if (!hits[c]) continue;
            inter[u * TC + c] += per_layer ? hits[c] : 1;
            touched[(b * TU + u) * TK + t->category_of[c]] = 1;
          }
        }
      active[b * TU + u] = area;
    }
}

static void make_tally_case(TallyCase* t, unsigned long long seed) {
  dk_seed(seed);
  for (int i = 0; i < TB * Th * TU * Tw; ++i) t->acts[i] = grid_value(-1.0f, 97, 1.0f / 32);
  for (int i = 0; i < TB * TU * Th * Tw; ++i) t->acts_bf16[i] = float_to_bf16_trunc(grid_value(-1.0f, 97, 1.0f / 32));
  for (int u = 0; u < TU; ++u) t->thr[u] = grid_value(0.0f, 40, 1.0f / 40);
  t->thr[TU - 1] = 100.0f; /* a unit with no active pixel */
  for (int i = 0; i < TB * TL * TH * TW; ++i) t->labels[i] = (int32_t)dk_randint(TC);
  for (int i = 0; i < TB * TM; ++i) t->image_labels[i] = (int32_t)dk_randint(TC);
  t->image_labels[0] = t->image_labels[1] = 3; /* a repeated image-level label */
  for (int c = 0; c < TC; ++c) t->category_of[c] = c % TK;
  CHECK_STATUS(dk_axis_table_named(DK_GEOMETRY_HALF_PIXEL, Th, TH, t->yi0, t->yi1, t->yw0, t->yw1), DK_OK);
  CHECK_STATUS(dk_axis_table_named(DK_GEOMETRY_ZERO_PAD, Tw, TW, t->xi0, t->xi1, t->xw0, t->xw1), DK_OK);
}

static dk_tally_args tally_args(TallyCase* t, int bf16, int per_layer, long long* inter, long long* active,
                                float* mx, unsigned char* touched) {
  dk_tally_args a;
  memset(&a, 0, sizeof a);
  a.acts = bf16 ? (const void*)t->acts_bf16 : (const void*)t->acts;
  a.acts_dtype = bf16 ? DK_BFLOAT16 : DK_FLOAT32;
  a.B = TB; a.U = TU; a.h = Th; a.w = Tw;
  if (bf16) {
    a.acts_stride[0] = TU * Th * Tw; a.acts_stride[1] = Th * Tw; a.acts_stride[2] = Tw; a.acts_stride[3] = 1;
  } else {
    a.acts_stride[0] = Th * TU * Tw; a.acts_stride[1] = Tw; a.acts_stride[2] = TU * Tw; a.acts_stride[3] = 1;
  }
  a.thresholds = t->thr;
  a.labels = t->labels; a.L = TL; a.H = TH; a.W = TW;
  a.image_labels = t->image_labels; a.M = TM;
  a.ytab.i0 = t->yi0; a.ytab.i1 = t->yi1; a.ytab.w0 = t->yw0; a.ytab.w1 = t->yw1;
  a.xtab.i0 = t->xi0; a.xtab.i1 = t->xi1; a.xtab.w0 = t->xw0; a.xtab.w1 = t->xw1;
  a.num_concepts = TC;
  a.per_layer = per_layer;
  a.category_of = t->category_of; a.num_categories = TK;
  a.intersection = (int64_t*)inter; a.active = (int64_t*)active; a.max = mx; a.touched = touched;
  return a;
}

static void test_tally(void) {
  static TallyCase t;
  for (int trial = 0; trial < 4; ++trial) {
    int bf16 = trial & 1, per_layer = trial >> 1;
    make_tally_case(&t, 11 + trial);
    long long inter[TU * TC], active[TB * TU], want_inter[TU * TC], want_active[TB * TU];
    float mx[TB * TU], want_mx[TB * TU];
    unsigned char touched[TB * TU * TK], want_touched[TB * TU * TK];
    memset(inter, 0, sizeof inter);
    memset(active, 0x5a, sizeof active); /* poisoned: the kernel must write them */
    memset(touched, 0xab, sizeof touched);
    for (int i = 0; i < TB * TU; ++i) mx[i] = NAN;
    dk_tally_args a = tally_args(&t, bf16, per_layer, inter, active, mx, touched);
    CHECK_STATUS(dk_tally(&a), DK_OK);
    tally_brute(&t, bf16, per_layer, want_inter, want_active, want_mx, want_touched);
    CHECK(memcmp(inter, want_inter, sizeof inter) == 0);
    CHECK(memcmp(active, want_active, sizeof active) == 0);
    CHECK(memcmp(mx, want_mx, sizeof mx) == 0);
    CHECK(memcmp(touched, want_touched, sizeof touched) == 0);
    long long total = 0;
    for (int i = 0; i < TB * TU; ++i) total += active[i];
    CHECK(total > 0); /* the case is not vacuous */
    /* intersection accumulates */
    CHECK_STATUS(dk_tally(&a), DK_OK);
    for (int i = 0; i < TU * TC; ++i) CHECK_EQ_I64(inter[i], 2 * want_inter[i]);
  }
}

static void test_tally_errors(void) {
  static TallyCase t;
  make_tally_case(&t, 5);
  long long inter[TU * TC], active[TB * TU];
  float mx[TB * TU];
  unsigned char touched[TB * TU * TK];
  dk_tally_args a = tally_args(&t, 0, 0, inter, active, mx, touched);
  CHECK_STATUS(dk_tally(NULL), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("args");
  dk_tally_args bad = a;
  bad.acts = NULL;
  CHECK_STATUS(dk_tally(&bad), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("acts must not be NULL");
  bad = a;
  bad.B = -2;
  CHECK_STATUS(dk_tally(&bad), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("B must be >= 0");
  bad = a;
  bad.acts_dtype = 9;
  CHECK_STATUS(dk_tally(&bad), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("acts_dtype");
  bad = a;
  bad.num_concepts = 3; /* labels hold ids up to 5 */
  CHECK_STATUS(dk_tally(&bad), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("num_concepts = 3");
  bad = a;
  bad.category_of = NULL; /* touched without category_of */
  CHECK_STATUS(dk_tally(&bad), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("touched needs category_of");
  bad = a;
  bad.ytab.w1 = NULL;
  CHECK_STATUS(dk_tally(&bad), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("ytab.w1");
  t.xi1[2] = Tw; /* a table index past the source map */
  CHECK_STATUS(dk_tally(&a), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("xtab.i1[2]");
  CHECK(strcmp(dk_status_name(DK_ERR_STATE), "DK_ERR_STATE") == 0);
#ifndef DK_TEST_HAVE_CUDA
  make_tally_case(&t, 5);
  a = tally_args(&t, 0, 0, inter, active, mx, touched);
  CHECK_STATUS(dk_tally_cuda(&a, 0), DK_ERR_UNSUPPORTED);
#endif
}

/* ---------------------------------------------------------------- label_stats */

static void test_label_stats(void) {
  static TallyCase t;
  make_tally_case(&t, 21);
  for (int per_layer = 0; per_layer < 2; ++per_layer) {
    long long pixels[TB * TC];
    unsigned char present[TB * TK];
    memset(pixels, 0x5a, sizeof pixels);
    memset(present, 0xab, sizeof present);
    CHECK_STATUS(dk_label_stats(t.labels, TB, TL, TH, TW, t.image_labels, TM, TC, per_layer, t.category_of, TK,
                                (int64_t*)pixels, present), DK_OK);
    for (long long b = 0; b < TB; ++b) {
      for (long long c = 0; c < TC; ++c) {
        long long listed = 0, want = 0;
        for (long long m = 0; m < TM; ++m) listed += t.image_labels[b * TM + m] == c;
        for (long long p = 0; p < TH * TW; ++p) {
          long long layers = 0;
          for (long long l = 0; l < TL; ++l) layers += t.labels[(b * TL + l) * TH * TW + p] == c;
          want += per_layer ? layers : (layers > 0);
        }
        if (per_layer) want += listed * TH * TW;
        else if (listed) want = TH * TW;
        if (c == 0) want = 0;
        CHECK_EQ_I64(pixels[b * TC + c], want);
      }
      for (long long k = 0; k < TK; ++k) {
        int any = 0;
        for (long long c = 1; c < TC; ++c) any |= t.category_of[c] == k && pixels[b * TC + c] > 0;
        CHECK_EQ_I64(present[b * TK + k], any);
      }
    }
  }
  long long pixels[TB * TC];
  CHECK_STATUS(dk_label_stats(t.labels, TB, TL, TH, TW, NULL, 2, TC, 0, NULL, 0, (int64_t*)pixels, NULL),
               DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("image_labels");
  CHECK_STATUS(dk_label_stats(t.labels, TB, TL, TH, -1, NULL, 0, TC, 0, NULL, 0, (int64_t*)pixels, NULL),
               DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("W must be >= 1");
  t.category_of[4] = TK; /* category id out of range */
  unsigned char present[TB * TK];
  CHECK_STATUS(dk_label_stats(t.labels, TB, TL, TH, TW, NULL, 0, TC, 0, t.category_of, TK, (int64_t*)pixels, present),
               DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("category_of[4]");
}

/* ---------------------------------------------------------------- top-k */

typedef struct { float v; long long i; } Pair;
static int pair_better_first(const void* a, const void* b) {
  const Pair *x = (const Pair*)a, *y = (const Pair*)b;
  if (x->v != y->v) return x->v > y->v ? -1 : 1;
  return (x->i > y->i) - (x->i < y->i);
}

static void test_topk(void) {
  enum { N = 60, U = 4, K = 7 };
  float scores[N * U];
  int64_t idx[N];
  dk_seed(31);
  for (int n = 0; n < N; ++n) {
    idx[n] = 1000 - 3 * n; /* descending ids: ties must pick the lower id, not the earlier row */
    for (int u = 0; u < U; ++u) scores[n * U + u] = grid_value(0.0f, 9, 0.5f);
  }
  dk_topk *a = NULL, *b = NULL, *whole = NULL;
  CHECK_STATUS(dk_topk_create(U, K, &a), DK_OK);
  CHECK_STATUS(dk_topk_create(U, K, &b), DK_OK);
  CHECK_STATUS(dk_topk_create(U, K, &whole), DK_OK);
  CHECK_STATUS(dk_topk_update(a, scores, DK_FLOAT32, N / 3, U, U, 1, idx), DK_OK);
  CHECK_STATUS(dk_topk_update(b, scores + (N / 3) * U, DK_FLOAT32, N - N / 3, U, U, 1, idx + N / 3), DK_OK);
  CHECK_STATUS(dk_topk_update(whole, scores, DK_FLOAT32, N, U, U, 1, idx), DK_OK);
  CHECK_STATUS(dk_topk_merge(a, b), DK_OK);
  float va[U * K], vw[U * K];
  int64_t ia[U * K], iw[U * K];
  CHECK_STATUS(dk_topk_result(a, va, ia), DK_OK);
  CHECK_STATUS(dk_topk_result(whole, vw, iw), DK_OK);
  for (int u = 0; u < U; ++u) {
    Pair all[N];
    for (int n = 0; n < N; ++n) { all[n].v = scores[n * U + u]; all[n].i = idx[n]; }
    qsort(all, N, sizeof(Pair), pair_better_first);
    for (int j = 0; j < K; ++j) {
      CHECK(va[u * K + j] == all[j].v && vw[u * K + j] == all[j].v);
      CHECK_EQ_I64(ia[u * K + j], all[j].i);
      CHECK_EQ_I64(iw[u * K + j], all[j].i);
    }
  }
  int64_t count = 0;
  CHECK_STATUS(dk_topk_count(a, &count), DK_OK);
  CHECK_EQ_I64(count, N);
  /* serialise -> deserialise -> identical results */
  size_t size = 0;
  CHECK_STATUS(dk_topk_serialize(a, NULL, 0, &size), DK_OK);
  unsigned char* buf = (unsigned char*)malloc(size);
  CHECK_STATUS(dk_topk_serialize(a, buf, size, &size), DK_OK);
  dk_topk* back = NULL;
  CHECK_STATUS(dk_topk_deserialize(buf, size, &back), DK_OK);
  float vb[U * K];
  int64_t ib[U * K];
  CHECK_STATUS(dk_topk_result(back, vb, ib), DK_OK);
  CHECK(memcmp(vb, va, sizeof va) == 0 && memcmp(ib, ia, sizeof ia) == 0);
  dk_topk* truncated = (dk_topk*)&size; /* any non-NULL value: a failed call sets it to NULL */
  CHECK_STATUS(dk_topk_deserialize(buf, size - 3, &truncated), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("truncated");
  CHECK(truncated == NULL);
  free(buf);
  /* unfilled slots read (-inf, -1); NaN is refused and leaves the state alone */
  dk_topk* few = NULL;
  CHECK_STATUS(dk_topk_create(1, 3, &few), DK_OK);
  float one = 2.5f, nan_score = NAN;
  int64_t id = 42;
  CHECK_STATUS(dk_topk_update(few, &one, DK_FLOAT32, 1, 1, 1, 1, &id), DK_OK);
  CHECK_STATUS(dk_topk_update(few, &nan_score, DK_FLOAT32, 1, 1, 1, 1, &id), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("NaN");
  float fv[3];
  int64_t fi[3];
  CHECK_STATUS(dk_topk_result(few, fv, fi), DK_OK);
  CHECK(fv[0] == 2.5f && fi[0] == 42 && isinf(fv[1]) && fv[1] < 0 && fi[1] == -1 && fi[2] == -1);
  dk_topk* none = NULL;
  CHECK_STATUS(dk_topk_create(0, 3, &none), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("num_units");
  CHECK_STATUS(dk_topk_merge(a, few), DK_ERR_INVALID_ARGUMENT);
  dk_topk_free(a);
  dk_topk_free(b);
  dk_topk_free(whole);
  dk_topk_free(back);
  dk_topk_free(few);
}

/* ---------------------------------------------------------------- quantile */

static void test_quantile_exact(void) {
  enum { N = 3000, U = 6 };
  static float x[N * U];
  static double col[N];
  dk_seed(41);
  for (int n = 0; n < N; ++n)
    for (int u = 0; u < U; ++u) {
      float v = grid_value(-2.0f, 400, 0.05f); /* many ties */
      x[n * U + u] = u == 1 ? 0.75f : (u == 2 && v < 0 ? 0.0f : v);
    }
  const double qs[4] = {0.99, 0.995, 0.9995, 1.0}; /* 2999 * 0.9995 has fraction >= 0.5 */
  dk_quantile_options o = dk_quantile_default_options(U);
  o.expected_count = N;
  o.slack = 37; /* many compactions */
  dk_quantile *whole = NULL, *a = NULL, *b = NULL;
  CHECK_STATUS(dk_quantile_create(&o, &whole), DK_OK);
  CHECK_STATUS(dk_quantile_create(&o, &a), DK_OK);
  CHECK_STATUS(dk_quantile_create(&o, &b), DK_OK);
  const int64_t rows[3] = {U, 1, 1};
  int64_t start = 0;
  const int64_t cuts[4] = {700, 701, 2200, N};
  for (int i = 0; i < 4; ++i) { /* uneven batches, one of a single row */
    CHECK_STATUS(dk_quantile_update(whole, x + start * U, DK_FLOAT32, cuts[i] - start, U, 1, rows), DK_OK);
    start = cuts[i];
  }
  CHECK_STATUS(dk_quantile_update(a, x, DK_FLOAT32, 1000, U, 1, rows), DK_OK);
  CHECK_STATUS(dk_quantile_update(b, x + 1000 * U, DK_FLOAT32, N - 1000, U, 1, rows), DK_OK);
  CHECK_STATUS(dk_quantile_merge(a, b), DK_OK);
  double got[U * 4], merged[U * 4];
  CHECK_STATUS(dk_quantile_query(whole, qs, 4, got), DK_OK);
  CHECK_STATUS(dk_quantile_query(a, qs, 4, merged), DK_OK);
  for (int u = 0; u < U; ++u) {
    for (int n = 0; n < N; ++n) col[n] = x[n * U + u];
    qsort(col, N, sizeof(double), cmp_double);
    for (int j = 0; j < 4; ++j) {
      double want = numpy_linear(col, N, qs[j]);
      CHECK(got[u * 4 + j] == want);
      CHECK(merged[u * 4 + j] == want);
    }
  }
  int64_t count = 0;
  CHECK_STATUS(dk_quantile_count(a, &count), DK_OK);
  CHECK_EQ_I64(count, N);
  /* cdf at the 0.99 quantile: exact there (>= the cut) */
  double at[U], cdf[U];
  for (int u = 0; u < U; ++u) at[u] = got[u * 4];
  CHECK_STATUS(dk_quantile_cdf(whole, at, 1, cdf), DK_OK);
  for (int u = 0; u < U; ++u) {
    long long le = 0;
    for (int n = 0; n < N; ++n) le += (double)x[n * U + u] <= at[u];
    CHECK(cdf[u] == (double)le / N);
  }
  /* serialise, restore, keep feeding: same answers as never stopping */
  size_t size = 0;
  CHECK_STATUS(dk_quantile_serialize(whole, NULL, 0, &size), DK_OK);
  unsigned char* buf = (unsigned char*)malloc(size);
  CHECK_STATUS(dk_quantile_serialize(whole, buf, size - 1, &size), DK_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(dk_quantile_serialize(whole, buf, size, &size), DK_OK);
  dk_quantile* back = NULL;
  CHECK_STATUS(dk_quantile_deserialize(buf, size, &back), DK_OK);
  double again[U * 4];
  CHECK_STATUS(dk_quantile_query(back, qs, 4, again), DK_OK);
  CHECK(memcmp(again, got, sizeof got) == 0);
  buf[0] = 'X';
  dk_quantile* junk = NULL;
  CHECK_STATUS(dk_quantile_deserialize(buf, size, &junk), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("magic");
  CHECK_STATUS(dk_quantile_deserialize(buf, 10, &junk), DK_ERR_INVALID_ARGUMENT);
  CHECK(junk == NULL);
  free(buf);
  /* errors: below min_quantile, q out of range, wrong unit count, empty, NaN, lost exactness */
  double low = 0.5, bad_q = 1.5;
  CHECK_STATUS(dk_quantile_query(whole, &low, 1, got), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("below min_quantile");
  CHECK_STATUS(dk_quantile_query(whole, &bad_q, 1, got), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("[0, 1]");
  CHECK_STATUS(dk_quantile_update(whole, x, DK_FLOAT32, 10, U + 1, 1, rows), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("num_units");
  dk_quantile* empty = NULL;
  CHECK_STATUS(dk_quantile_create(&o, &empty), DK_OK);
  CHECK_STATUS(dk_quantile_query(empty, qs, 1, got), DK_ERR_STATE);
  CHECK_ERROR_MENTIONS("empty");
  x[5 * U + 3] = NAN;
  CHECK_STATUS(dk_quantile_update(empty, x, DK_FLOAT32, 10, U, 1, rows), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("NaN");
  CHECK_STATUS(dk_quantile_query(empty, qs, 1, got), DK_ERR_STATE);
  x[5 * U + 3] = 0.0f;
  dk_quantile* small = NULL;
  o.expected_count = 2700; /* 3000 arrive: the constant unit 1 loses ties at its cut */
  o.slack = -1;
  CHECK_STATUS(dk_quantile_create(&o, &small), DK_OK);
  CHECK_STATUS(dk_quantile_update(small, x, DK_FLOAT32, N / 2, U, 1, rows), DK_OK);
  CHECK_STATUS(dk_quantile_update(small, x + (N / 2) * U, DK_FLOAT32, N - N / 2, U, 1, rows), DK_OK);
  CHECK_STATUS(dk_quantile_query(small, qs, 1, got), DK_ERR_STATE);
  CHECK_ERROR_MENTIONS("exactness lost");
  o.expected_count = -1;
  o.mode = DK_QUANTILE_EXACT;
  CHECK_STATUS(dk_quantile_create(&o, &junk), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("expected_count");
  o.expected_count = 1000000000;
  o.max_bytes = 1 << 20;
  CHECK_STATUS(dk_quantile_create(&o, &junk), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("max_bytes");
  CHECK_STATUS(dk_quantile_create(NULL, &junk), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("options");
  dk_quantile_free(whole);
  dk_quantile_free(a);
  dk_quantile_free(b);
  dk_quantile_free(back);
  dk_quantile_free(empty);
  dk_quantile_free(small);
  dk_quantile_free(NULL);
}

/* [B, U, h, w] maps, non-contiguous (h, w), bfloat16: every position is a sample. */
static void test_quantile_maps(void) {
  enum { B = 7, U = 3, h = 5, w = 6 };
  static uint16_t x[B * h * U * w * 2]; /* stored [B, h, U, 2w], the view takes even columns */
  static double col[B * h * w];
  dk_seed(51);
  for (int i = 0; i < B * h * U * w * 2; ++i) x[i] = float_to_bf16_trunc(grid_value(-1.0f, 300, 0.03125f));
  const int64_t strides[4] = {h * U * w * 2, w * 2, U * w * 2, 2};
  dk_quantile_options o = dk_quantile_default_options(U);
  o.mode = DK_QUANTILE_EXACT;
  o.min_quantile = 0.9;
  o.expected_count = B * h * w;
  o.slack = 5;
  dk_quantile* q = NULL;
  CHECK_STATUS(dk_quantile_create(&o, &q), DK_OK);
  CHECK_STATUS(dk_quantile_update_maps(q, x, DK_BFLOAT16, B, U, h, w, strides), DK_OK);
  const double qs[3] = {0.9, 0.97, 1.0};
  double got[U * 3];
  CHECK_STATUS(dk_quantile_query(q, qs, 3, got), DK_OK);
  for (int u = 0; u < U; ++u) {
    int n = 0;
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < h; ++i)
        for (int j = 0; j < w; ++j) col[n++] = bf16_to_float(x[b * strides[0] + u * strides[1] + i * strides[2] + j * 2]);
    qsort(col, n, sizeof(double), cmp_double);
    for (int k = 0; k < 3; ++k) CHECK(got[u * 3 + k] == numpy_linear(col, n, qs[k]));
  }
  dk_quantile_free(q);
}

/* Sketch mode: every answer within its reported rank-error bound of the truth (counted by
 * brute force), for one stream, for a merge of two shards and after a serialise round trip. */
static long long count_below(const double* sorted, long long n, double v, int or_equal) {
  long long lo = 0, hi = n;
  while (lo < hi) {
    const long long mid = (lo + hi) / 2;
    if (sorted[mid] < v || (or_equal && sorted[mid] == v)) lo = mid + 1; else hi = mid;
  }
  return lo;
}

static void check_within_bounds(dk_quantile* q, const float* x, long long N, int U, const double* qs, int nq) {
  static double col[80000], got[16], bound[16];
  CHECK_STATUS(dk_quantile_query(q, qs, nq, got), DK_OK);
  CHECK_STATUS(dk_quantile_rank_error_bound(q, qs, nq, bound), DK_OK);
  for (int u = 0; u < U; ++u) {
    for (long long n = 0; n < N; ++n) col[n] = x[n * U + u];
    qsort(col, (size_t)N, sizeof(double), cmp_double);
    for (int j = 0; j < nq; ++j) {
      const double t = qs[j] * (double)N, v = got[u * nq + j];
      const double lt = (double)count_below(col, N, v, 0), le = (double)count_below(col, N, v, 1);
      const double err = fmax(0.0, fmax(lt - t, t - le)) / (double)N;
      CHECK(err <= bound[u * nq + j] + 1e-12);
      CHECK(bound[u * nq + j] < 1e-3); /* and the bound itself is tight at the tail */
    }
  }
}

static void test_quantile_sketch(void) {
  enum { N = 70000, U = 3 };
  static float x[N * U];
  dk_seed(61);
  for (int i = 0; i < N * U; ++i) {
    const double r = (double)dk_randint(1000000) / 1e6;
    x[i] = (float)floor(20.0 * -log(1.0 - r)) / 4.0f; /* exponential tail, ties on a grid */
  }
  const double qs[3] = {0.99, 0.995, 0.999};
  dk_quantile_options o = dk_quantile_default_options(U);
  o.mode = DK_QUANTILE_SKETCH;
  dk_quantile *whole = NULL, *a = NULL, *b = NULL;
  CHECK_STATUS(dk_quantile_create(&o, &whole), DK_OK);
  CHECK_STATUS(dk_quantile_create(&o, &a), DK_OK);
  CHECK_STATUS(dk_quantile_create(&o, &b), DK_OK);
  const int64_t rows[3] = {U, 1, 1};
  for (int64_t r0 = 0; r0 < N; r0 += 9000) {
    const int64_t n = N - r0 < 9000 ? N - r0 : 9000;
    CHECK_STATUS(dk_quantile_update(whole, x + r0 * U, DK_FLOAT32, n, U, 1, rows), DK_OK);
  }
  CHECK_STATUS(dk_quantile_update(a, x, DK_FLOAT32, 25000, U, 1, rows), DK_OK);
  CHECK_STATUS(dk_quantile_update(b, x + 25000 * U, DK_FLOAT32, N - 25000, U, 1, rows), DK_OK);
  CHECK_STATUS(dk_quantile_merge(a, b), DK_OK);
  int64_t count = 0;
  CHECK_STATUS(dk_quantile_count(a, &count), DK_OK);
  CHECK_EQ_I64(count, N);
  check_within_bounds(whole, x, N, U, qs, 3);
  check_within_bounds(a, x, N, U, qs, 3);
  size_t size = 0;
  CHECK_STATUS(dk_quantile_serialize(a, NULL, 0, &size), DK_OK);
  unsigned char* buf = (unsigned char*)malloc(size);
  CHECK_STATUS(dk_quantile_serialize(a, buf, size, &size), DK_OK);
  dk_quantile* back = NULL;
  CHECK_STATUS(dk_quantile_deserialize(buf, size, &back), DK_OK);
  double want[U * 3], again[U * 3];
  CHECK_STATUS(dk_quantile_query(a, qs, 3, want), DK_OK);
  CHECK_STATUS(dk_quantile_query(back, qs, 3, again), DK_OK);
  CHECK(memcmp(want, again, sizeof want) == 0);
  dk_quantile* junk = NULL;
  CHECK_STATUS(dk_quantile_deserialize(buf, size / 2, &junk), DK_ERR_INVALID_ARGUMENT);
  free(buf);
  /* NaN is refused and leaves the sketch as it was; q below min_quantile is refused */
  x[7] = NAN;
  CHECK_STATUS(dk_quantile_update(back, x, DK_FLOAT32, 10, U, 1, rows), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("NaN");
  x[7] = 0.0f;
  CHECK_STATUS(dk_quantile_count(back, &count), DK_OK);
  CHECK_EQ_I64(count, N);
  const double low = 0.5;
  CHECK_STATUS(dk_quantile_query(back, &low, 1, want), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("below min_quantile");
  /* auto mode: the sketch when the count is unknown or the exact state is over budget */
  dk_quantile* autoq = NULL;
  int32_t mode = -1;
  o.mode = DK_QUANTILE_AUTO;
  o.expected_count = 1000000000;
  o.max_bytes = 1 << 20;
  CHECK_STATUS(dk_quantile_create(&o, &autoq), DK_OK);
  CHECK_STATUS(dk_quantile_get_mode(autoq, &mode), DK_OK);
  CHECK_EQ_I64(mode, DK_QUANTILE_SKETCH);
  dk_quantile* exactq = NULL;
  o.expected_count = 1000;
  o.max_bytes = (int64_t)1 << 30;
  CHECK_STATUS(dk_quantile_create(&o, &exactq), DK_OK);
  CHECK_STATUS(dk_quantile_get_mode(exactq, &mode), DK_OK);
  CHECK_EQ_I64(mode, DK_QUANTILE_EXACT);
  CHECK_STATUS(dk_quantile_update(exactq, x, DK_FLOAT32, 10, U, 1, rows), DK_OK);
  CHECK_STATUS(dk_quantile_merge(autoq, exactq), DK_ERR_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("sketch-mode and an exact-mode");
  dk_quantile_free(whole);
  dk_quantile_free(a);
  dk_quantile_free(b);
  dk_quantile_free(back);
  dk_quantile_free(autoq);
  dk_quantile_free(exactq);
}

int main(void) {
  CHECK(strlen(dk_version()) >= 5);
  test_tally();
  test_tally_errors();
  test_label_stats();
  test_topk();
  test_quantile_exact();
  test_quantile_maps();
  test_quantile_sketch();
  return dk_test_summary("test_capi");
}
