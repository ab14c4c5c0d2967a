/* A network-dissection step in C with libdissect_kernels: per-unit thresholds at the 0.95
 * quantile of a layer's activations (exact, streamed in batches), then the fused
 * upsample -> threshold -> intersect tally against a segmentation, then IoU per (unit, concept).
 * Every result is checked against a brute-force computation written out below; the exit status
 * is 0 only when all of them agree.
 *
 * The data are chosen so the check is exact on any compiler: activations are multiples of 1/8
 * and the segmentation is twice the map's size, so half-pixel bilinear weights are 1/4 and 3/4
 * and every interpolated value is exact in float and in double. */
#include <dissect_kernels/dissect_kernels.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 6, U = 4, h = 5, w = 6, H = 2 * h, W = 2 * w, C = 5 };

static float acts[B][U][h][w];
static int32_t labels[B][1][H][W];

#define TRY(call)                                                         \
  do {                                                                    \
    if ((call) != DK_OK) {                                                \
      fprintf(stderr, "%s failed: %s\n", #call, dk_last_error());         \
      return 1;                                                           \
    }                                                                     \
  } while (0)

static unsigned long long rng = 88172645463325252ull;
static unsigned long long next_random(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static int cmp_double(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

/* numpy.quantile(v, q, method="linear") of sorted v[0..n). */
static double linear_quantile(const double* v, int n, double q) {
  const double pos = (n - 1) * q;
  const int lo = (int)floor(pos), hi = lo + 1 < n ? lo + 1 : n - 1;
  const double t = pos - lo, d = v[hi] - v[lo];
  return t >= 0.5 ? v[hi] - d * (1 - t) : v[lo] + d * t;
}

/* The activation of unit u in image b upsampled to (y, x): half-pixel centres, edge clamp. */
static double upsampled(int b, int u, int y, int x) {
  double sy = (y + 0.5) * h / H - 0.5, sx = (x + 0.5) * w / W - 0.5;
  sy = sy < 0 ? 0 : (sy > h - 1 ? h - 1 : sy);
  sx = sx < 0 ? 0 : (sx > w - 1 ? w - 1 : sx);
  const int y0 = (int)floor(sy), x0 = (int)floor(sx);
  const int y1 = y0 + 1 < h ? y0 + 1 : y0, x1 = x0 + 1 < w ? x0 + 1 : x0;
  const double fy = sy - y0, fx = sx - x0;
  const double top = (1 - fx) * acts[b][u][y0][x0] + fx * acts[b][u][y0][x1];
  const double bottom = (1 - fx) * acts[b][u][y1][x0] + fx * acts[b][u][y1][x1];
  return (1 - fy) * top + fy * bottom;
}

int main(void) {
  for (int b = 0; b < B; ++b) {
    for (int u = 0; u < U; ++u)
      for (int i = 0; i < h; ++i)
        for (int j = 0; j < w; ++j) acts[b][u][i][j] = (float)((int)(next_random() % 64) - 16) / 8.0f;
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) labels[b][0][y][x] = (int32_t)((x / 3 + y / 4 + b) % C);
  }
  printf("dissect_kernels %s\n", dk_version());

  /* 1. Exact 0.95 quantile per unit over every position of every image, two batches. */
  dk_quantile_options opt = dk_quantile_default_options(U);
  opt.mode = DK_QUANTILE_EXACT;
  opt.min_quantile = 0.95;
  opt.expected_count = B * h * w;
  dk_quantile* sketch = NULL;
  TRY(dk_quantile_create(&opt, &sketch));
  const int64_t strides[4] = {U * h * w, h * w, w, 1};
  TRY(dk_quantile_update_maps(sketch, acts[0], DK_FLOAT32, 2, U, h, w, strides));
  TRY(dk_quantile_update_maps(sketch, acts[2], DK_FLOAT32, B - 2, U, h, w, strides));
  const double q = 0.95;
  double thr[U];
  TRY(dk_quantile_query(sketch, &q, 1, thr));
  dk_quantile_free(sketch);

  int failures = 0;
  float thresholds[U];
  for (int u = 0; u < U; ++u) {
    double all[B * h * w];
    int n = 0;
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < h; ++i)
        for (int j = 0; j < w; ++j) all[n++] = acts[b][u][i][j];
    qsort(all, n, sizeof(double), cmp_double);
    if (thr[u] != linear_quantile(all, n, q)) {
      fprintf(stderr, "unit %d: threshold %.9g, brute force %.9g\n", u, thr[u], linear_quantile(all, n, q));
      ++failures;
    }
    thresholds[u] = (float)thr[u];
  }

  /* 2. The fused tally with half-pixel tables from the library. */
  int32_t yi0[H], yi1[H], xi0[W], xi1[W];
  float yw0[H], yw1[H], xw0[W], xw1[W];
  TRY(dk_axis_table_named(DK_GEOMETRY_HALF_PIXEL, h, H, yi0, yi1, yw0, yw1));
  TRY(dk_axis_table_named(DK_GEOMETRY_HALF_PIXEL, w, W, xi0, xi1, xw0, xw1));
  int64_t inter[U][C], active[B][U], pixels[B][C];
  float maxes[B][U];
  memset(inter, 0, sizeof inter);
  dk_tally_args a;
  memset(&a, 0, sizeof a);
  a.acts = acts;
  a.acts_dtype = DK_FLOAT32;
  a.B = B, a.U = U, a.h = h, a.w = w;
  memcpy(a.acts_stride, strides, sizeof strides);
  a.thresholds = thresholds;
  a.labels = &labels[0][0][0][0];
  a.L = 1, a.H = H, a.W = W;
  a.ytab = (dk_axis_table){yi0, yi1, yw0, yw1};
  a.xtab = (dk_axis_table){xi0, xi1, xw0, xw1};
  a.num_concepts = C;
  a.intersection = &inter[0][0];
  a.active = &active[0][0];
  a.max = &maxes[0][0];
  TRY(dk_tally(&a));
  TRY(dk_label_stats(&labels[0][0][0][0], B, 1, H, W, NULL, 0, C, 0, NULL, 0, &pixels[0][0], NULL));

  /* 3. Brute force: upsample every map, threshold, count; then IoU = I / (A + G - I). */
  long long want_inter[U][C] = {{0}}, area[U] = {0}, truth[C] = {0};
  for (int b = 0; b < B; ++b) {
    for (int c = 1; c < C; ++c) truth[c] += pixels[b][c];
    for (int u = 0; u < U; ++u) {
      long long on = 0;
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          if (!(upsampled(b, u, y, x) > (double)thresholds[u])) continue;
          ++on;
          if (labels[b][0][y][x] > 0) ++want_inter[u][labels[b][0][y][x]];
        }
      if (on != active[b][u]) {
        fprintf(stderr, "image %d unit %d: active %lld, brute force %lld\n", b, u, (long long)active[b][u], on);
        ++failures;
      }
      area[u] += on;
    }
  }
  for (int c = 1; c < C; ++c) {
    long long count = 0;
    for (int b = 0; b < B; ++b)
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) count += labels[b][0][y][x] == c;
    if (count != truth[c]) {
      fprintf(stderr, "concept %d: %lld labelled pixels, brute force %lld\n", c, truth[c], count);
      ++failures;
    }
  }
  for (int u = 0; u < U; ++u) {
    int best = 1;
    double best_iou = -1;
    for (int c = 1; c < C; ++c) {
      if (inter[u][c] != want_inter[u][c]) {
        fprintf(stderr, "unit %d concept %d: intersection %lld, brute force %lld\n", u, c,
                (long long)inter[u][c], want_inter[u][c]);
        ++failures;
      }
      const double iou = (double)inter[u][c] / (double)(area[u] + truth[c] - inter[u][c]);
      if (iou > best_iou) best_iou = iou, best = c;
    }
    printf("unit %d: threshold %.4f, active pixels %lld, best concept %d, IoU %.4f\n", u, thr[u], area[u], best,
           best_iou);
  }
  if (failures) {
    fprintf(stderr, "%d results disagree with the brute-force computation\n", failures);
    return 1;
  }
  printf("all results equal the brute-force computation\n");
  return 0;
}
