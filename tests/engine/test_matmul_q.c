/* Quantised matrix multiply (int8 and packed int4 weights with f16 or f32 group scales) against its CPU reference
 * on odd shapes, both kernels, strided rows, accumulation and K split over dispatches; and the RTN quantiser. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/quant.h"
#include "engine/ops/ref/ref.h"
#include "support/tgpu.h"

TestSuite(matmul_q, .init = tgpu_setup, .fini = tgpu_teardown);

/* One problem: x [M, x_stride] f32, q and f16 scales of a [N, K] weight, y0 [M, y_stride] the starting y. */
typedef struct qproblem {
  uint32_t M, N, K, group, x_stride, y_stride;
  lt_dtype_t wtype;
  float *x, *y0;
  uint8_t *q;
  uint16_t *scales;
} qproblem_t;

static uint64_t next(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return *s >> 33;
}

/* Stores integer v at (n, k) of q in the layout of engine/ops/quant.h. */
static void put_q(uint8_t *q, lt_dtype_t wtype, uint32_t K, uint32_t n, uint32_t k, int v) {
  uint8_t *row = q + (uint64_t)n * quant_row_bytes(wtype == LT_I4 ? 4 : 8, K);
  if (wtype == LT_I8)
    row[k] = (uint8_t)(int8_t)v;
  else
    row[k / 2] |= (uint8_t)((v & 0xf) << (k % 2 ? 4 : 0));
}

/* Fills a problem with random integers over the full range (or in [-2, 2] when integral) and scales in
 * [0.01, 0.1] (or powers of two 0.5, 1, 2 when integral; with x in {-1, 0, 1} every f32 partial sum is then a
 * multiple of 0.5 below 2^23, exact, so any summation order gives the exact result). Padding stays 0. */
static qproblem_t qproblem_new(uint32_t M, uint32_t N, uint32_t K, lt_dtype_t wtype, uint32_t group, uint32_t pad_x,
                               uint32_t pad_y, bool integral, uint64_t seed) {
  qproblem_t p = {M, N, K, group, K + pad_x, N + pad_y, wtype, NULL, NULL, NULL, NULL};
  uint32_t bits = wtype == LT_I4 ? 4 : 8, G = quant_groups(K, group), qmax = (1u << (bits - 1)) - 1;
  p.x = talloc((uint64_t)M * p.x_stride + 1);
  p.y0 = talloc((uint64_t)M * p.y_stride + 1);
  trand(p.x, (uint64_t)M * p.x_stride, -1, 1, &seed);
  trand(p.y0, (uint64_t)M * p.y_stride, -1, 1, &seed);
  if (integral) {
    for (uint64_t i = 0; i < (uint64_t)M * p.x_stride; i++) p.x[i] = roundf(p.x[i]);
    for (uint64_t i = 0; i < (uint64_t)M * p.y_stride; i++) p.y0[i] = roundf(4.0f * p.y0[i]);
  }
  p.q = calloc((uint64_t)N * quant_row_bytes(bits, K) + 4, 1);
  p.scales = malloc(((uint64_t)N * G + 2) * 2);
  cr_assert(p.q && p.scales);
  for (uint32_t n = 0; n < N; n++) {
    for (uint32_t k = 0; k < K; k++) {
      int span = integral ? 2 : (int)qmax;
      put_q(p.q, wtype, K, n, k, (int)(next(&seed) % (uint64_t)(2 * span + 1)) - span);
    }
    for (uint32_t g = 0; g < G; g++) {
      float s =
          integral ? ldexpf(1.0f, (int)(next(&seed) % 3) - 1) : 0.01f + 0.09f * (float)(next(&seed) % 1000) / 1000;
      p.scales[(uint64_t)n * G + g] = dtype_float_to_half(s);
    }
  }
  return p;
}

static void qproblem_free(qproblem_t *p) { free(p->x), free(p->y0), free(p->q), free(p->scales); }

/* Runs the op (y starting as y0) with scales of stype and returns y [M, y_stride]. Caller owns (free()). */
static float *run_q(const qproblem_t *p, lt_dtype_t stype, bool accumulate, matmul_path_t path, uint64_t *dispatches) {
  uint32_t bits = p->wtype == LT_I4 ? 4 : 8, G = quant_groups(p->K, p->group);
  uint64_t ns = (uint64_t)p->N * G;
  float *sf = talloc(ns + 1);
  for (uint64_t i = 0; i < ns; i++) sf[i] = dtype_half_to_float(p->scales[i]);
  gpu_buf_t *bx = tbuf_f32(p->x, (uint64_t)p->M * p->x_stride);
  gpu_buf_t *by = tbuf_f32(p->y0, (uint64_t)p->M * p->y_stride);
  gpu_buf_t *bq = tbuf_bytes(p->q, (uint64_t)p->N * quant_row_bytes(bits, p->K) + 4);
  gpu_buf_t *bs = stype == LT_F16 ? tbuf_bytes(p->scales, ns * 2 + 4) : tbuf_f32(sf, ns + 1);
  qmat_view_t w = {gv(bq), gv(bs), p->wtype, stype, p->group};
  uint64_t before = gpu_stats(tgpu())->dispatches;
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_matmul_q(c, gv(by), p->y_stride, gv(bx), p->x_stride, &w, p->M, p->N, p->K, accumulate, path, &err),
               LT_OK, "%s", err.msg);
  tfinish(&c);
  if (dispatches) *dispatches = gpu_stats(tgpu())->dispatches - before;
  float *got = tread_f32(by, (uint64_t)p->M * p->y_stride);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&by), gpu_buf_destroy(&bq), gpu_buf_destroy(&bs);
  free(sf);
  return got;
}

/* Compares the GPU's y with the reference, elementwise within 1e-5 * (sum_k |x_mk w_nk| + |y0| when accumulating)
 * + 1e-6 (exact: 0). Why: both sides multiply the same values (the integer times its f16 scale, widened exactly),
 * so the only difference is f32 rounding of the GPU's reordered sums (octet dots scaled once, then tile or
 * subgroup partials, then K chunks), the bound argued in tests/engine/test_matmul.c. A missing, doubled or
 * mis-scaled term is ~1/K of sum |terms| (>= 1e-3 here), far outside it. Columns of y outside [0, N) (the stride
 * padding) must keep y0. */
static void check_q(const qproblem_t *p, lt_dtype_t stype, bool accumulate, matmul_path_t path, bool exact,
                    const char *what) {
  uint32_t M = p->M, N = p->N, K = p->K, bits = p->wtype == LT_I4 ? 4 : 8;
  float *xc = talloc((uint64_t)M * K + 1), *want = talloc((uint64_t)M * N + 1);
  for (uint32_t m = 0; m < M; m++) {
    memcpy(xc + (uint64_t)m * K, p->x + (uint64_t)m * p->x_stride, (uint64_t)K * 4);
    memcpy(want + (uint64_t)m * N, p->y0 + (uint64_t)m * p->y_stride, (uint64_t)N * 4);
  }
  ref_matmul_q(want, xc, p->q, p->scales, p->wtype, p->group, M, N, K, accumulate);
  float *got = run_q(p, stype, accumulate, path, NULL);
  for (uint32_t m = 0; m < M; m++) {
    for (uint32_t n = 0; n < N; n++) {
      double mag = accumulate ? fabs((double)p->y0[(uint64_t)m * p->y_stride + n]) : 0.0;
      for (uint32_t k = 0; k < K; k++)
        mag += fabs((double)xc[(uint64_t)m * K + k] * quant_weight(p->q, p->scales, bits, p->group, K, n, k));
      double tol = exact ? 0.0 : 1e-5 * mag + 1e-6;
      double g = got[(uint64_t)m * p->y_stride + n], e = want[(uint64_t)m * N + n];
      cr_assert(fabs(g - e) <= tol, "%s %ux%ux%u %s group %u scales %s%s path %d: y[%u,%u] = %.9g, want %.9g (%.3g)",
                what, M, N, K, lt_dtype_str(p->wtype), p->group, lt_dtype_str(stype), accumulate ? " accumulate" : "",
                (int)path, m, n, g, e, tol);
    }
    for (uint32_t n = N; n < p->y_stride; n++)
      cr_assert_eq(got[(uint64_t)m * p->y_stride + n], p->y0[(uint64_t)m * p->y_stride + n], "%s: padding written",
                   what);
  }
  free(xc), free(want), free(got);
}

typedef struct qshape {
  uint32_t M, N, K, group;
} qshape_t;

/* Shapes that are no multiples of any tile, workgroup or group size; K both a multiple of 4 (vec4 loads of x) and
 * not, below one octet, and with a partial last group. */
static const qshape_t odd_q[] = {{1, 37, 53, 8},    {3, 129, 77, 32},  {67, 65, 131, 128}, {130, 33, 257, 64},
                                 {5, 70, 64, 128},  {2, 3, 1, 8},      {65, 1, 4, 16},     {1, 1, 1, 128},
                                 {4, 19, 300, 128}, {70, 66, 136, 24}, {3, 41, 250, 32},   {2, 37, 480, 32}};
/* (The last two, {5, 70, 64, 128} and, for int8, {4, 19, 300, 128} take the CPU drivers' GEMV that reads two or
 * four octets a texel: padded K and the group multiples of 16 for int8, 32 for int4.) */
#define N_ODD_Q (sizeof odd_q / sizeof odd_q[0])

static void check_odd(matmul_path_t path, const char *what) {
  for (unsigned s = 0; s < N_ODD_Q; s++)
    for (int t = 0; t < 2; t++)
      for (int acc = 0; acc < 2; acc++) {
        const qshape_t *sh = &odd_q[s];
        /* Strided rows (padding 3 in x, 5 in y) on every other case. */
        uint32_t px = (s + t) % 2 ? 3 : 0, py = (s + acc) % 2 ? 5 : 0;
        qproblem_t p =
            qproblem_new(sh->M, sh->N, sh->K, t ? LT_I4 : LT_I8, sh->group, px, py, false, 2000 + 10 * s + 2 * t + acc);
        check_q(&p, (s + acc) % 2 ? LT_F32 : LT_F16, acc, path, false, what);
        qproblem_free(&p);
      }
}

Test(matmul_q, gemm_odd_shapes) { check_odd(MATMUL_GEMM, "gemm"); }

Test(matmul_q, gemv_odd_shapes) { check_odd(MATMUL_GEMV, "gemv"); }

Test(matmul_q, auto_odd_shapes) { check_odd(MATMUL_AUTO, "auto"); }

Test(matmul_q, long_k_is_split_over_dispatches) {
  /* K past what one invocation may loop over (GEMV: 1.1M to 1.7M columns by the rows of x and the loads of x;
   * GEMM: 768 columns):
   * split into chunks that accumulate. Integer data (see qproblem_new) makes the exact result the only right one,
   * so a chunk that drops, repeats or overwrites one term, or an invocation lavapipe cut short, fails. */
  struct {
    uint32_t M, N, K;
    matmul_path_t path;
    lt_dtype_t wtype;
    bool accumulate;
  } cases[] = {
      {1, 2, 2000003, MATMUL_GEMV, LT_I4, false}, {4, 1, 1200008, MATMUL_GEMV, LT_I8, true},
      {1, 2, 2000000, MATMUL_GEMV, LT_I4, true},  /* four octets a texel on CPU drivers */
      {3, 2, 1200000, MATMUL_GEMV, LT_I8, false}, /* two */
      {9, 70, 2003, MATMUL_GEMM, LT_I8, false},   {66, 3, 2000, MATMUL_GEMM, LT_I4, true},
  };
  for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    qproblem_t p = qproblem_new(cases[i].M, cases[i].N, cases[i].K, cases[i].wtype, 128, 0, 0, true, 99 + i);
    uint64_t dispatches = 0;
    free(run_q(&p, LT_F16, cases[i].accumulate, cases[i].path, &dispatches));
    cr_assert_gt(dispatches, 1, "K = %u ran as %llu dispatch(es); expected a split", cases[i].K,
                 (unsigned long long)dispatches);
    check_q(&p, LT_F16, cases[i].accumulate, cases[i].path, true, "split K");
    qproblem_free(&p);
  }
}

Test(matmul_q, repeated_runs_are_bit_identical) {
  /* Shared-memory tiles and subgroup partials are summed in a fixed order: a race would show up as jitter. */
  for (int path = MATMUL_GEMM; path <= MATMUL_GEMV; path++) {
    qproblem_t p = qproblem_new(67, 65, 131, LT_I4, 32, 0, 0, false, 5);
    float *first = run_q(&p, LT_F16, false, path, NULL);
    for (int r = 0; r < 3; r++) {
      float *again = run_q(&p, LT_F16, false, path, NULL);
      cr_assert(memcmp(first, again, (size_t)67 * 65 * 4) == 0, "path %d run %d differs from the first", path, r);
      free(again);
    }
    free(first);
    qproblem_free(&p);
  }
}

Test(matmul_q, a_wrong_weight_fails_the_check) {
  /* The tolerance is tight enough to see one integer off by one in a 131-long row. */
  qproblem_t p = qproblem_new(3, 9, 131, LT_I8, 32, 0, 0, false, 11);
  float *xc = p.x, *want = talloc(27);
  ref_matmul_q(want, xc, p.q, p.scales, p.wtype, p.group, 3, 9, 131, false);
  p.q[4 * quant_row_bytes(8, 131) + 70] ^= 1; /* weight (4, 70) one off */
  float *got = run_q(&p, LT_F16, false, MATMUL_AUTO, NULL);
  double worst = 0, mag = 0;
  for (uint32_t k = 0; k < 131; k++) mag += fabs((double)xc[k] * quant_weight(p.q, p.scales, 8, 32, 131, 4, k));
  for (uint32_t m = 0; m < 3; m++) worst = fmax(worst, fabs((double)got[m * 9 + 4] - want[m * 9 + 4]));
  cr_assert_gt(worst, 1e-5 * mag + 1e-6, "an off-by-one weight moved y by only %g", worst);
  free(want), free(got);
  qproblem_free(&p);
}

Test(matmul_q, bad_arguments_are_errors) {
  gpu_buf_t *b = tbuf_f32(NULL, 1024);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  qmat_view_t w = {gv(b), gv(b), LT_F16, LT_F16, 128};
  cr_assert_eq(op_matmul_q(c, gv(b), 4, gv(b), 4, &w, 4, 4, 4, false, MATMUL_AUTO, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "f16") != NULL, "names the dtype: %s", err.msg);
  w.wtype = LT_I8;
  w.group = 12;
  cr_assert_eq(op_matmul_q(c, gv(b), 4, gv(b), 4, &w, 4, 4, 4, false, MATMUL_AUTO, &err), LT_E_INVALID);
  w.group = 128;
  cr_assert_eq(op_matmul_q(c, gv(b), 3, gv(b), 4, &w, 4, 4, 4, false, MATMUL_AUTO, &err), LT_E_INVALID);
  /* x of 40 x 40 f32 needs 6,400 bytes of a 4,096-byte buffer. */
  cr_assert_eq(op_matmul_q(c, gv(b), 40, gv(b), 40, &w, 2, 4, 40, false, MATMUL_AUTO, &err), LT_OK);
  cr_assert_eq(op_matmul_q(c, gv(b), 40, gv(b), 40, &w, 40, 4, 40, false, MATMUL_AUTO, &err), LT_E_INVALID);
  gpu_cmd_abort(&c);
  gpu_buf_destroy(&b);
}

/* ---- the quantiser (CPU) ---- */

Test(matmul_q, rtn_rounds_to_the_nearest_level) {
  /* Every weight comes back within half a step (its group's f16 scale) plus the scale's own f16 rounding
   * (2^-11 relative, times qmax steps); the group's largest weight maps to +-qmax; padding is 0; an all-zero
   * group has scale 0. */
  uint32_t N = 5, K = 77, group = 32, G = quant_groups(K, group);
  uint64_t seed = 3;
  float *w = talloc((uint64_t)N * K), *back = talloc((uint64_t)N * K);
  trand(w, (uint64_t)N * K, -2, 2, &seed);
  for (uint32_t k = 32; k < 64; k++) w[2 * K + k] = 0.0f; /* row 2, group 1 */
  for (uint32_t bits = 4; bits <= 8; bits += 4) {
    uint8_t *q = malloc((uint64_t)N * quant_row_bytes(bits, K));
    uint16_t *s = malloc((uint64_t)N * G * 2);
    cr_assert(q && s);
    quant_rtn(q, s, w, N, K, bits, group);
    quant_dequant(back, q, s, N, K, bits, group);
    int32_t qmax = (1 << (bits - 1)) - 1;
    cr_assert_eq(s[2 * G + 1], 0, "an all-zero group has scale 0");
    for (uint32_t n = 0; n < N; n++) {
      for (uint32_t g = 0; g < G; g++) {
        float sc = dtype_half_to_float(s[(uint64_t)n * G + g]);
        int32_t top = 0;
        for (uint32_t k = g * group; k < K && k < (g + 1) * group; k++) {
          int32_t v = quant_int(q, bits, K, n, k);
          cr_assert(v >= -qmax && v <= qmax, "bits %u: q = %d out of range", bits, v);
          top = abs(v) > top ? abs(v) : top;
          double err = fabs((double)back[(uint64_t)n * K + k] - w[(uint64_t)n * K + k]);
          cr_assert_leq(err, 0.5 * sc + qmax * sc * 0x1p-11 + 1e-7, "bits %u (%u,%u): error %g, scale %g", bits, n, k,
                        err, sc);
        }
        if (sc > 0) cr_assert_eq(top, qmax, "bits %u row %u group %u: largest |q| %d", bits, n, g, top);
      }
      for (uint32_t k = K; k < quant_padded_cols(K); k++) cr_assert_eq(quant_int(q, bits, K, n, k), 0, "padding");
    }
    free(q), free(s);
  }
  free(w), free(back);
}
