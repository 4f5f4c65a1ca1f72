/* Row-wise ops against their CPU references (double accumulation) on odd shapes: rows and widths that are not
 * multiples of the workgroup, ties, large magnitudes, a vocabulary-wide softmax, and both reduction paths
 * (subgroup arithmetic where the device has it, and the shared-memory tree forced). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ops_rows.h"
#include "engine/ops/ref/ref.h"
#include "support/tgpu.h"

TestSuite(rows, .init = tgpu_setup, .fini = tgpu_teardown);

/* Tolerances. The GPU sums in f32 in another order than the double reference (per-invocation strided sums, then
 * a tree); the relative error of such a sum is a few times 2^-24 * log2(n) of the sum of |terms|, i.e. ~1e-6,
 * and exp/inversesqrt add a few ulp. */
/* Norms: y = x * scale * w with scale from a sum of squares: ~1e-6 relative; 1e-5 gives margin. */
#define NORM_RTOL 1e-5
#define NORM_ATOL 1e-6
/* Softmax elements: p = exp(x - max) / sum; a few ulp of exp plus the sum's ~1e-6: 1e-5 relative; 1e-9 absolute
 * for the tiny probabilities whose exp underflows to subnormals. */
#define SOFTMAX_RTOL 1e-5
#define SOFTMAX_ATOL 1e-9
/* lse = max + log(sum): the sum's 1e-6 relative error becomes 1e-6 absolute after the log, and max + log(sum)
 * rounds to an ulp of |lse| (8e-6 at 80): 1e-5 absolute + 1e-6 relative. nll = lse - x[t] keeps that error. */
#define LSE_ATOL 1e-5
#define LSE_RTOL 1e-6
/* cos = dot / (|a||b|): the dot's error is ~1e-6 of sum|a_i b_i| <= |a||b|, so ~1e-6 absolute; 1e-5 margin. */
#define COS_ATOL 1e-5

static const uint32_t ROWS_SET[] = {1, 3, 7, 67};
/* 1000 (a multiple of 4) takes the vec4 path, the others the scalar one. */
static const uint32_t WIDTHS[] = {1, 5, 255, 257, 1000, 4097};

/* Random rows in [lo, hi) with a deterministic seed per shape. */
static float *rand_rows(uint32_t rows, uint32_t n, float lo, float hi, uint64_t seed) {
  float *x = talloc((uint64_t)rows * n);
  seed = seed * 0x9e3779b97f4a7c15ull + rows * 131u + n;
  trand(x, (uint64_t)rows * n, lo, hi, &seed);
  return x;
}

static void assert_u32_eq(const uint32_t *got, const uint32_t *want, uint64_t n, const char *what) {
  for (uint64_t i = 0; i < n; i++)
    cr_assert_eq(got[i], want[i], "%s: [%llu] got %u want %u", what, (unsigned long long)i, got[i], want[i]);
}

static void check_norm(uint32_t rows, uint32_t n, bool layernorm, float offset) {
  float *x = rand_rows(rows, n, offset - 3, offset + 3, 1), *w = rand_rows(1, n, 0.5f, 1.5f, 2);
  float *b = rand_rows(1, n, -1, 1, 3), *want = talloc((uint64_t)rows * n);
  if (layernorm)
    ref_layernorm(want, x, w, b, rows, n, 1e-5f);
  else
    ref_rmsnorm(want, x, w, rows, n, 1e-6f);
  gpu_buf_t *bx = tbuf_f32(x, (uint64_t)rows * n), *bw = tbuf_f32(w, n), *bb = tbuf_f32(b, n);
  gpu_buf_t *by = tbuf_f32(NULL, (uint64_t)rows * n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  lt_status_t st = layernorm ? op_layernorm(c, gv(by), gv(bx), gv(bw), gv(bb), rows, n, 1e-5f, &err)
                             : op_rmsnorm(c, gv(by), gv(bx), gv(bw), rows, n, 1e-6f, &err);
  cr_assert_eq(st, LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, (uint64_t)rows * n);
  char what[96];
  snprintf(what, sizeof what, "%s %ux%u offset %g", layernorm ? "layernorm" : "rmsnorm", rows, n, offset);
  /* An offset mean costs LayerNorm the f32 rounding of x - mean: |offset| * 2^-24 per element, times the scale
   * (1/std, ~0.6 here) and a few roundings of the mean: 1e-6 * |offset| absolute on top. */
  tassert_close(got, want, (uint64_t)rows * n, NORM_ATOL + 1e-6 * fabs(offset), NORM_RTOL, what);
  free(got), free(x), free(w), free(b), free(want);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bw), gpu_buf_destroy(&bb), gpu_buf_destroy(&by);
}

static void check_softmax(uint32_t rows, uint32_t n, float lo, float hi, double atol, double rtol) {
  uint64_t len = (uint64_t)rows * n;
  float *x = rand_rows(rows, n, lo, hi, 4), *want = talloc(len);
  ref_softmax(want, x, rows, n);
  gpu_buf_t *bx = tbuf_f32(x, len), *by = tbuf_f32(NULL, len);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_softmax(c, gv(by), gv(bx), rows, n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, len);
  char what[96];
  snprintf(what, sizeof what, "softmax %ux%u in [%g, %g)", rows, n, lo, hi);
  tassert_close(got, want, len, atol, rtol, what);
  /* Each row sums to 1 within the row's relative tolerance (all elements share the error of the f32 sum). */
  for (uint32_t r = 0; r < rows; r++) {
    double s = 0;
    for (uint32_t i = 0; i < n; i++) s += got[(uint64_t)r * n + i];
    cr_assert(fabs(s - 1.0) <= rtol, "%s: row %u sums to %.9f", what, r, s);
  }
  free(got), free(x), free(want);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&by);
}

static void check_lse(uint32_t rows, uint32_t n, float lo, float hi) {
  uint64_t len = (uint64_t)rows * n;
  float *x = rand_rows(rows, n, lo, hi, 5), *want = talloc(rows), *want_nll = talloc(rows);
  int32_t *t = malloc(rows * sizeof *t);
  cr_assert(t != NULL);
  for (uint32_t r = 0; r < rows; r++) t[r] = (int32_t)((r * 7919u + 13u) % n);
  ref_logsumexp(want, want_nll, x, t, rows, n);
  gpu_buf_t *bx = tbuf_f32(x, len), *bt = tbuf_bytes(t, rows * sizeof *t);
  gpu_buf_t *bl = tbuf_f32(NULL, rows), *bn = tbuf_f32(NULL, rows), *bl2 = tbuf_f32(NULL, rows);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_logsumexp(c, gv(bl), gv(bn), gv(bx), gv(bt), rows, n, &err), LT_OK, "%s", err.msg);
  gpu_view_t none = {0};
  cr_assert_eq(op_logsumexp(c, gv(bl2), none, gv(bx), none, rows, n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(bl, rows), *got_nll = tread_f32(bn, rows), *got2 = tread_f32(bl2, rows);
  char what[96];
  snprintf(what, sizeof what, "logsumexp %ux%u in [%g, %g)", rows, n, lo, hi);
  tassert_close(got, want, rows, LSE_ATOL, LSE_RTOL, what);
  tassert_close(got2, want, rows, LSE_ATOL, LSE_RTOL, "logsumexp without targets");
  tassert_close(got_nll, want_nll, rows, LSE_ATOL, LSE_RTOL, "cross-entropy");
  /* A scale per row (a sampling temperature's 1 / T): the reference sums the f32 products x * s the shader forms. */
  float *s = talloc(rows), *xs = talloc(len), *want_s = talloc(rows);
  for (uint32_t r = 0; r < rows; r++) {
    s[r] = 0.25f + 0.37f * (float)(r % 7);
    for (uint32_t i = 0; i < n; i++) xs[(uint64_t)r * n + i] = x[(uint64_t)r * n + i] * s[r];
  }
  ref_logsumexp(want_s, NULL, xs, NULL, rows, n);
  gpu_buf_t *bs = tbuf_f32(s, rows);
  c = tbegin();
  cr_assert_eq(op_logsumexp_scaled(c, gv(bl), gv(bx), gv(bs), rows, n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got_s = tread_f32(bl, rows);
  tassert_close(got_s, want_s, rows, LSE_ATOL, LSE_RTOL, "logsumexp with a scale per row");
  free(got), free(got_nll), free(got2), free(x), free(want), free(want_nll), free(t);
  free(s), free(xs), free(want_s), free(got_s);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bt), gpu_buf_destroy(&bl), gpu_buf_destroy(&bn), gpu_buf_destroy(&bl2);
  gpu_buf_destroy(&bs);
}

static void check_cosine(uint32_t rows, uint32_t n) {
  uint64_t len = (uint64_t)rows * n;
  float *a = rand_rows(rows, n, -2, 2, 6), *b = rand_rows(rows, n, -2, 2, 7), *want = talloc(rows);
  /* Row 1 (when present) is a scaled copy (cos 1), row 2 all zeros in a (cos 0 by definition). */
  if (rows > 1)
    for (uint32_t i = 0; i < n; i++) b[n + i] = 3.5f * a[n + i];
  if (rows > 2) memset(a + 2ull * n, 0, n * sizeof *a);
  ref_cosine(want, a, b, rows, n);
  gpu_buf_t *ba = tbuf_f32(a, len), *bb = tbuf_f32(b, len), *bo = tbuf_f32(NULL, rows);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_cosine(c, gv(bo), gv(ba), gv(bb), rows, n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(bo, rows);
  char what[64];
  snprintf(what, sizeof what, "cosine %ux%u", rows, n);
  tassert_close(got, want, rows, COS_ATOL, 0, what);
  if (rows > 2) cr_assert_eq(got[2], 0.0f, "%s: a zero row gives 0, got %g", what, got[2]);
  free(got), free(a), free(b), free(want);
  gpu_buf_destroy(&ba), gpu_buf_destroy(&bb), gpu_buf_destroy(&bo);
}

/* Argmax and top-k of x (rows x n) against the references, exactly. */
static void check_rank(const float *x, uint32_t rows, uint32_t n, uint32_t k, const char *what) {
  uint64_t len = (uint64_t)rows * n;
  uint32_t *want_am = malloc(rows * sizeof *want_am), *want_idx = malloc((uint64_t)rows * k * sizeof *want_idx);
  float *want_val = talloc((uint64_t)rows * k);
  cr_assert(want_am && want_idx);
  ref_argmax(want_am, x, rows, n);
  ref_topk(want_idx, want_val, x, rows, n, k);
  gpu_buf_t *bx = tbuf_f32(x, len), *bam = tbuf_f32(NULL, rows);
  gpu_buf_t *bidx = tbuf_f32(NULL, (uint64_t)rows * k), *bval = tbuf_f32(NULL, (uint64_t)rows * k);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_argmax(c, gv(bam), gv(bx), rows, n, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_topk(c, gv(bidx), gv(bval), gv(bx), rows, n, k, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  uint32_t *am = tread_bytes(bam, rows * 4ull), *idx = tread_bytes(bidx, (uint64_t)rows * k * 4);
  float *val = tread_f32(bval, (uint64_t)rows * k);
  char msg[128];
  snprintf(msg, sizeof msg, "argmax %s %ux%u", what, rows, n);
  assert_u32_eq(am, want_am, rows, msg);
  snprintf(msg, sizeof msg, "topk %s %ux%u k %u", what, rows, n, k);
  assert_u32_eq(idx, want_idx, (uint64_t)rows * k, msg);
  /* Values are copied, not computed: bit-exact (memcmp, so NaN compares too). */
  cr_assert(memcmp(val, want_val, (uint64_t)rows * k * 4) == 0, "%s: values differ", msg);
  free(am), free(idx), free(val), free(want_am), free(want_idx), free(want_val);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bam), gpu_buf_destroy(&bidx), gpu_buf_destroy(&bval);
}

/* Random rows quantised to `levels` distinct values, so that most rows hold ties for the maximum. */
static float *tied_rows(uint32_t rows, uint32_t n, uint32_t levels, uint64_t seed) {
  float *x = rand_rows(rows, n, 0, (float)levels, seed);
  for (uint64_t i = 0; i < (uint64_t)rows * n; i++) x[i] = floorf(x[i]) - 2.0f;
  return x;
}

Test(rows, rmsnorm_odd_shapes) {
  for (unsigned r = 0; r < sizeof ROWS_SET / sizeof *ROWS_SET; r++)
    for (unsigned w = 0; w < sizeof WIDTHS / sizeof *WIDTHS; w++) check_norm(ROWS_SET[r], WIDTHS[w], false, 0);
}

Test(rows, layernorm_odd_shapes) {
  for (unsigned r = 0; r < sizeof ROWS_SET / sizeof *ROWS_SET; r++)
    for (unsigned w = 0; w < sizeof WIDTHS / sizeof *WIDTHS; w++) check_norm(ROWS_SET[r], WIDTHS[w], true, 0);
}

Test(rows, layernorm_large_mean) {
  /* mean 1000, std 1.7: E[x^2] - mean^2 in f32 would lose the variance to cancellation (1e6 * 2^-24 = 0.06). */
  check_norm(7, 1000, true, 1000);
  check_norm(3, 4097, true, -1000);
}

Test(rows, softmax_odd_shapes) {
  for (unsigned r = 0; r < sizeof ROWS_SET / sizeof *ROWS_SET; r++)
    for (unsigned w = 0; w < sizeof WIDTHS / sizeof *WIDTHS; w++)
      check_softmax(ROWS_SET[r], WIDTHS[w], -4, 4, SOFTMAX_ATOL, SOFTMAX_RTOL);
}

Test(rows, softmax_large_magnitudes) {
  /* +-80: exp(80) is 5.5e34, so without the max subtraction a few hundred terms overflow f32; 90..110 overflows
   * a single exp. */
  check_softmax(7, 1000, -80, 80, SOFTMAX_ATOL, SOFTMAX_RTOL);
  check_softmax(3, 257, 90, 110, SOFTMAX_ATOL, SOFTMAX_RTOL);
  check_softmax(3, 257, -110, -90, SOFTMAX_ATOL, SOFTMAX_RTOL);
}

Test(rows, softmax_vocabulary_rows) {
  /* 2 rows x 150,001 (a vocabulary): 1e-7 absolute per element (probabilities average 7e-6) plus 1e-4 relative
   * for the f32 sum of 150k terms (~150 per invocation, then a tree). 150,000 takes the vec4 path. */
  check_softmax(2, 150001, -10, 10, 1e-7, 1e-4);
  check_softmax(2, 150000, -10, 10, 1e-7, 1e-4);
}

Test(rows, masked_rows_with_minus_infinity) {
  /* Masked logits (-inf), as in constrained decoding: invocations whose whole share is -inf must add 0, not
   * exp(-inf + inf) = NaN. Row 0: the first 600 of 1000 masked; row 1: one finite element; row 2: every other. */
  uint32_t rows = 3, n = 1000;
  float *x = rand_rows(rows, n, -5, 5, 30), *want = talloc((uint64_t)rows * n), lse_want[3];
  for (uint32_t i = 0; i < n; i++) {
    if (i < 600) x[i] = -INFINITY;
    if (i != 777) x[n + i] = -INFINITY;
    if (i % 2) x[2 * n + i] = -INFINITY;
  }
  ref_softmax(want, x, rows, n);
  ref_logsumexp(lse_want, NULL, x, NULL, rows, n);
  gpu_buf_t *bx = tbuf_f32(x, (uint64_t)rows * n), *by = tbuf_f32(NULL, (uint64_t)rows * n), *bl = tbuf_f32(NULL, 3);
  gpu_view_t none = {0};
  lt_err_t err = {0};
  for (int tree = 0; tree < 2; tree++) {
    op_rows_force_tree(tree);
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_softmax(c, gv(by), gv(bx), rows, n, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(op_logsumexp(c, gv(bl), none, gv(bx), none, rows, n, &err), LT_OK, "%s", err.msg);
    tfinish(&c);
    float *got = tread_f32(by, (uint64_t)rows * n), *lse = tread_f32(bl, 3);
    tassert_close(got, want, (uint64_t)rows * n, SOFTMAX_ATOL, SOFTMAX_RTOL, "softmax of masked rows");
    tassert_close(lse, lse_want, 3, LSE_ATOL, LSE_RTOL, "logsumexp of masked rows");
    free(got), free(lse);
  }
  op_rows_force_tree(false);
  free(x), free(want);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&by), gpu_buf_destroy(&bl);
}

Test(rows, softmax_in_place) {
  uint32_t rows = 5, n = 999;
  float *x = rand_rows(rows, n, -6, 6, 8), *want = talloc((uint64_t)rows * n);
  ref_softmax(want, x, rows, n);
  gpu_buf_t *bx = tbuf_f32(x, (uint64_t)rows * n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_softmax(c, gv(bx), gv(bx), rows, n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(bx, (uint64_t)rows * n);
  tassert_close(got, want, (uint64_t)rows * n, SOFTMAX_ATOL, SOFTMAX_RTOL, "softmax in place");
  free(got), free(x), free(want);
  gpu_buf_destroy(&bx);
}

Test(rows, norms_in_place_at_an_offset) {
  /* y aliases x, and the rows start at a non-zero view offset. */
  uint32_t rows = 3, n = 300;
  uint64_t align = gpu_caps(tgpu())->min_storage_align, off = align > 16 ? align : 16;
  float *x = rand_rows(rows, n, -2, 2, 9), *w = rand_rows(1, n, 0.5f, 1.5f, 10), *b = rand_rows(1, n, -1, 1, 11);
  float *want = talloc((uint64_t)rows * n), *buf = talloc(off / 4 + (uint64_t)rows * n);
  memcpy(buf + off / 4, x, (uint64_t)rows * n * 4);
  gpu_buf_t *bx = tbuf_f32(buf, off / 4 + (uint64_t)rows * n), *bw = tbuf_f32(w, n), *bb = tbuf_f32(b, n);
  gpu_view_t vx = {bx, off};
  lt_err_t err = {0};
  for (int ln = 0; ln < 2; ln++) {
    cr_assert_eq(gpu_upload(bx, 0, buf, (off + (uint64_t)rows * n * 4), &err), LT_OK);
    gpu_cmd_t *c = tbegin();
    lt_status_t st = ln ? op_layernorm(c, vx, vx, gv(bw), gv(bb), rows, n, 1e-5f, &err)
                        : op_rmsnorm(c, vx, vx, gv(bw), rows, n, 1e-5f, &err);
    cr_assert_eq(st, LT_OK, "%s", err.msg);
    tfinish(&c);
    if (ln)
      ref_layernorm(want, x, w, b, rows, n, 1e-5f);
    else
      ref_rmsnorm(want, x, w, rows, n, 1e-5f);
    float *got = tread_f32(bx, off / 4 + (uint64_t)rows * n);
    tassert_close(got + off / 4, want, (uint64_t)rows * n, NORM_ATOL, NORM_RTOL,
                  ln ? "layernorm in place" : "rmsnorm in place");
    free(got);
  }
  free(x), free(w), free(b), free(want), free(buf);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bw), gpu_buf_destroy(&bb);
}

Test(rows, logsumexp_and_cross_entropy) {
  for (unsigned r = 0; r < sizeof ROWS_SET / sizeof *ROWS_SET; r++)
    for (unsigned w = 0; w < sizeof WIDTHS / sizeof *WIDTHS; w++) check_lse(ROWS_SET[r], WIDTHS[w], -4, 4);
  check_lse(7, 1000, -80, 80);
  check_lse(3, 257, 90, 110);
  check_lse(2, 150001, -10, 10);
}

Test(rows, cross_entropy_invalid_targets_give_nan) {
  uint32_t rows = 5, n = 40;
  float *x = rand_rows(rows, n, -3, 3, 12), *want = talloc(rows), *want_nll = talloc(rows);
  int32_t t[5] = {-1, 40, INT_MAX, 39, 0};
  ref_logsumexp(want, want_nll, x, t, rows, n);
  gpu_buf_t *bx = tbuf_f32(x, (uint64_t)rows * n), *bt = tbuf_bytes(t, sizeof t);
  gpu_buf_t *bl = tbuf_f32(NULL, rows), *bn = tbuf_f32(NULL, rows);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_logsumexp(c, gv(bl), gv(bn), gv(bx), gv(bt), rows, n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(bl, rows), *nll = tread_f32(bn, rows);
  tassert_close(got, want, rows, LSE_ATOL, LSE_RTOL, "lse with invalid targets");
  for (uint32_t r = 0; r < 3; r++) cr_assert(isnan(nll[r]) && isnan(want_nll[r]), "target %d: nll %g", t[r], nll[r]);
  tassert_close(nll + 3, want_nll + 3, 2, LSE_ATOL, LSE_RTOL, "nll of the valid targets");
  free(got), free(nll), free(x), free(want), free(want_nll);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bt), gpu_buf_destroy(&bl), gpu_buf_destroy(&bn);
}

Test(rows, cosine_odd_shapes) {
  for (unsigned r = 0; r < sizeof ROWS_SET / sizeof *ROWS_SET; r++)
    for (unsigned w = 0; w < sizeof WIDTHS / sizeof *WIDTHS; w++) check_cosine(ROWS_SET[r], WIDTHS[w]);
}

Test(rows, argmax_ties_take_the_lowest_index) {
  /* Hand-made rows: the maximum repeated in different invocations' strides, -0 against +0, -inf, NaN. */
  enum { N = 1000 };
  static float x[4 * N];
  for (int i = 0; i < N; i++) x[i] = x[N + i] = (float)(i % 17) * 0.25f;
  x[700] = x[301] = x[999] = 9.0f; /* row 0: 301 wins (other invocations hold 700 and 999) */
  x[N + 0] = -0.0f;                /* row 1: max 4.0 at i % 17 == 16: first at 16 */
  for (int i = 0; i < N; i++) x[2 * N + i] = i == 0 ? -0.0f : 0.0f;   /* row 2: -0 ties +0: index 0 */
  for (int i = 0; i < N; i++) x[3 * N + i] = i % 3 ? -INFINITY : NAN; /* row 3: -inf beats NaN: index 1 */
  check_rank(x, 4, N, 8, "hand-made ties");
  uint32_t want[4] = {301, 16, 0, 1}, am[4];
  ref_argmax(am, x, 4, N);
  assert_u32_eq(am, want, 4, "reference argmax of the hand-made rows");
}

Test(rows, argmax_odd_shapes_with_ties) {
  for (unsigned r = 0; r < sizeof ROWS_SET / sizeof *ROWS_SET; r++)
    for (unsigned w = 0; w < sizeof WIDTHS / sizeof *WIDTHS; w++) {
      uint32_t n = WIDTHS[w], rows = ROWS_SET[r];
      float *x = tied_rows(rows, n, 5, 13);
      check_rank(x, rows, n, 1, "5 levels");
      free(x);
    }
}

Test(rows, topk_routing_rows) {
  /* MoE-router-like rows (E = 8, 60, 300; 61 for the scalar path) with many ties, and continuous values. Most
   * run one invocation per row; 300 with k = 8 runs one workgroup per row. */
  const uint32_t widths[] = {8, 60, 61, 300}, ks[] = {1, 2, 8};
  for (unsigned w = 0; w < 4; w++)
    for (unsigned k = 0; k < 3; k++) {
      float *x = tied_rows(67, widths[w], 6, 14 + k);
      check_rank(x, 67, widths[w], ks[k], "tied");
      free(x);
      x = rand_rows(67, widths[w], -5, 5, 17 + k);
      check_rank(x, 67, widths[w], ks[k], "random");
      free(x);
    }
}

Test(rows, topk_wide_rows) {
  float *x = rand_rows(3, 4097, -5, 5, 20);
  check_rank(x, 3, 4097, 32, "k 32");
  check_rank(x, 3, 4097, OP_TOPK_MAX, "k at the limit");
  free(x);
  x = tied_rows(2, 32000, 200, 23);
  check_rank(x, 2, 32000, OP_TOPK_MAX, "sampling candidates, tied");
  free(x);
  x = tied_rows(2, 150001, 40, 21);
  check_rank(x, 2, 150001, 5, "vocabulary, tied");
  free(x);
}

Test(rows, more_than_65535_rows) {
  /* 70,001 rows use the second dimension of the grid. */
  uint32_t rows = 70001, n = 3;
  float *x = tied_rows(rows, n, 3, 22);
  check_rank(x, rows, n, 2, "2D grid");
  free(x);
  check_softmax(rows, n, -3, 3, SOFTMAX_ATOL, SOFTMAX_RTOL);
}

Test(rows, shared_memory_tree_path) {
  /* The subgroup path is what a device with subgroup arithmetic runs; force the tree and check it too. */
  op_rows_force_tree(true);
  const uint32_t shapes[][2] = {{3, 1}, {7, 257}, {5, 1000}, {3, 4097}};
  for (unsigned s = 0; s < 4; s++) {
    uint32_t rows = shapes[s][0], n = shapes[s][1];
    check_norm(rows, n, false, 0);
    check_norm(rows, n, true, 0);
    check_softmax(rows, n, -80, 80, SOFTMAX_ATOL, SOFTMAX_RTOL);
    check_lse(rows, n, -4, 4);
    check_cosine(rows, n);
    float *x = tied_rows(rows, n, 4, 23);
    check_rank(x, rows, n, n < 8 ? n : 8, "tree");
    free(x);
  }
  check_softmax(2, 150001, -10, 10, 1e-7, 1e-4);
  op_rows_force_tree(false);
}

Test(rows, workgroup_sizing_bounds_the_loops) {
  const gpu_caps_t *cp = gpu_caps(tgpu());
  const uint32_t widths[] = {1, 5, 255, 4097, 150001, 1000000};
  for (unsigned i = 0; i < 6; i++)
    for (uint32_t passes = 1; passes <= 32; passes *= 2) {
      uint32_t n = widths[i], wg = op_rows_wg(OP_SOFTMAX, n, passes, cp->max_wg_invocations, cp->max_shared);
      if (wg == 0) continue;
      cr_assert(wg >= 32 && wg <= cp->max_wg_invocations && (wg & (wg - 1)) == 0, "n %u: wg %u", n, wg);
      cr_assert_leq((uint64_t)passes * ((n + wg - 1) / wg), op_loop_budget(OP_SOFTMAX), "n %u passes %u wg %u", n,
                    passes, wg);
    }
  /* 150,001 wide, two passes: must fit. */
  cr_assert_neq(op_rows_wg(OP_SOFTMAX, 150001, 2, cp->max_wg_invocations, cp->max_shared), 0);
  /* A 16 KiB shared-memory device caps the workgroup at 512 invocations (24 bytes each). */
  cr_assert_eq(op_rows_wg(OP_SOFTMAX, 150001, 2, 1024, 16384), 512);
}

Test(rows, bad_arguments_are_errors) {
  gpu_buf_t *b = tbuf_f32(NULL, 64);
  gpu_view_t none = {0};
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_topk(c, gv(b), gv(b), gv(b), 1, 16, 0, &err), LT_E_INVALID);
  cr_assert_eq(op_topk(c, gv(b), gv(b), gv(b), 1, 80, OP_TOPK_MAX + 1, &err), LT_E_INVALID);
  cr_assert_eq(op_topk(c, gv(b), gv(b), gv(b), 1, 4, 5, &err), LT_E_INVALID);
  cr_assert_eq(op_logsumexp(c, gv(b), gv(b), gv(b), none, 1, 16, &err), LT_E_INVALID);
  cr_assert_eq(op_argmax(c, gv(b), gv(b), 1, 0, &err), LT_E_INVALID);
  /* A row needing more than its loop budget per invocation is refused before anything is bound. */
  cr_assert_eq(op_softmax(c, gv(b), gv(b), 1, 0xfffffff0u, &err), LT_E_LIMIT);
  cr_assert(strstr(err.msg, "too wide") != NULL, "message: %s", err.msg);
  cr_assert_eq(op_topk(c, gv(b), gv(b), gv(b), 1, 4000000, 32, &err), LT_E_LIMIT);
  /* Views smaller than the shapes are caught by the binding checks. */
  cr_assert_eq(op_softmax(c, gv(b), gv(b), 2, 40, &err), LT_E_INVALID);
  tfinish(&c);
  gpu_buf_destroy(&b);
}
