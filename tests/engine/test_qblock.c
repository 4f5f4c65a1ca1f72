/* GGUF's block formats (Q4_0 .. Q6_K) read in place by the quantised matrix multiply: both kernels against the CPU
 * reference on odd shapes for every format, strided rows and accumulation; the CPU reference against ggml's own
 * dequantiser (fixtures made by tools/qblock_fixtures.sh); bad shapes refused. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/qblock.h"
#include "engine/ops/ops_grad.h"
#include "support/tgpu.h"

TestSuite(qblock, .init = tgpu_setup, .fini = tgpu_teardown);

static const lt_dtype_t formats[] = {LT_Q8_0, LT_Q4_0, LT_Q4_1, LT_Q5_0, LT_Q5_1,
                                     LT_Q2_K, LT_Q3_K, LT_Q4_K, LT_Q5_K, LT_Q6_K};
#define N_FORMATS (sizeof formats / sizeof formats[0])

static uint64_t next(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return *s >> 33;
}

/* N rows of K elements of random blocks: every bit random (so every integer, high bit and packed scale occurs),
 * except the f16 fields, set to finite values of either sign in [2^-10, 2^-6]: a real file's range, and products
 * with the integers stay far from f16/f32 limits. Caller owns the result (N * row bytes, plus a word of slack). */
static uint8_t *random_rows(lt_dtype_t t, uint32_t N, uint32_t K, uint64_t seed) {
  const qblock_info_t *q = qblock_info(t);
  uint64_t row = qblock_row_bytes(t, K), n = (uint64_t)N * row;
  uint8_t *b = malloc(n + 4);
  cr_assert(b);
  for (uint64_t i = 0; i < n + 4; i++) b[i] = (uint8_t)next(&seed);
  for (uint64_t blk = 0; blk < n / q->bytes; blk++)
    for (int f = 0; f < 2; f++) {
      if (q->half_at[f] == UINT32_MAX) continue;
      float v = ldexpf(1.0f + (float)(next(&seed) % 1024) / 1024.0f, -10 + (int)(next(&seed) % 4));
      uint16_t h = dtype_float_to_half(next(&seed) % 2 ? -v : v);
      memcpy(b + blk * q->bytes + q->half_at[f], &h, 2);
    }
  return b;
}

/* Runs y (starting as y0 [M, ys]) (+)= x [M, xs] . w^T on the device through path; returns y (caller frees). */
static float *run(lt_dtype_t t, const uint8_t *w, const float *x, const float *y0, uint32_t M, uint32_t N, uint32_t K,
                  uint32_t xs, uint32_t ys, bool acc, matmul_path_t path) {
  uint64_t wb = ((uint64_t)N * qblock_row_bytes(t, K) + 3) / 4 * 4;
  gpu_buf_t *bw = tbuf_bytes(w, wb), *bx = tbuf_f32(x, (uint64_t)M * xs), *by = tbuf_f32(y0, (uint64_t)M * ys);
  qmat_view_t q = {gv(bw), {0}, t, LT_F32, 0};
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_matmul_q(c, gv(by), ys, gv(bx), xs, &q, M, N, K, acc, path, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, (uint64_t)M * ys);
  gpu_buf_destroy(&bw), gpu_buf_destroy(&bx), gpu_buf_destroy(&by);
  return got;
}

/* Compares the device's y with the double-precision sum of x times qblock_weight(), within
 * 1e-5 * max|w of row n| * sum_k |x_mk| (+ |y0| when accumulating) + 1e-6. Why: each weight the shader decodes
 * is the reference's up to one f32 rounding (it may fuse d q + m into one fma), at most 2^-24 of the block's
 * largest term, and the reordered f32 sum adds at most about 1e-5 of sum |terms| (tests/engine/test_matmul.c);
 * a misread nibble, high bit or scale moves y by about |x w| / sum |x w| ~ 1/K of the magnitude (>= 1/768 here),
 * far outside. Padding columns of y must keep y0. Returns the largest error seen relative to its tolerance. */
static double check(lt_dtype_t t, uint32_t M, uint32_t N, uint32_t K, uint32_t pad, bool acc, matmul_path_t path,
                    uint64_t seed) {
  uint32_t xs = K + pad, ys = N + pad;
  uint8_t *w = random_rows(t, N, K, seed);
  float *x = talloc((uint64_t)M * xs + 1), *y0 = talloc((uint64_t)M * ys + 1), *row = talloc(K);
  trand(x, (uint64_t)M * xs, -1, 1, &seed);
  trand(y0, (uint64_t)M * ys, -1, 1, &seed);
  float *got = run(t, w, x, y0, M, N, K, xs, ys, acc, path);
  uint64_t rb = qblock_row_bytes(t, K);
  double worst = 0;
  for (uint32_t n = 0; n < N; n++) {
    qblock_dequant(t, w + n * rb, row, K);
    double wmax = 0;
    for (uint32_t k = 0; k < K; k++) wmax = fmax(wmax, fabs(row[k]));
    for (uint32_t m = 0; m < M; m++) {
      double want = acc ? y0[(uint64_t)m * ys + n] : 0.0, xsum = 0;
      for (uint32_t k = 0; k < K; k++) {
        want += (double)x[(uint64_t)m * xs + k] * qblock_weight(t, w + n * rb, k);
        xsum += fabs(x[(uint64_t)m * xs + k]);
      }
      double tol = 1e-5 * (wmax * xsum + (acc ? fabs(y0[(uint64_t)m * ys + n]) : 0.0)) + 1e-6;
      double g = got[(uint64_t)m * ys + n];
      cr_assert(fabs(g - want) <= tol, "%s %ux%ux%u path %d%s: y[%u,%u] = %.9g, want %.9g (tol %.3g)", lt_dtype_str(t),
                M, N, K, (int)path, acc ? " accumulate" : "", m, n, g, want, tol);
      worst = fmax(worst, fabs(g - want) / tol);
    }
  }
  for (uint32_t m = 0; m < M; m++)
    for (uint32_t n = N; n < ys; n++)
      cr_assert_eq(got[(uint64_t)m * ys + n], y0[(uint64_t)m * ys + n], "%s: padding written", lt_dtype_str(t));
  free(w), free(x), free(y0), free(row), free(got);
  return worst;
}

typedef struct shape {
  uint32_t M, N, blocks; /* K = blocks * the format's block size */
} shape_t;

/* Row counts that are no multiple of any workgroup or tile; K of one block, an odd number of them, and enough to
 * take several steps of a GEMV workgroup. */
static const shape_t shapes[] = {{1, 37, 1}, {3, 65, 3}, {2, 1, 5}, {5, 19, 2}, {67, 33, 3}, {1, 129, 9}};

static void check_all(matmul_path_t path) {
  for (unsigned f = 0; f < N_FORMATS; f++)
    for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      uint32_t K = shapes[s].blocks * qblock_info(formats[f])->block;
      check(formats[f], shapes[s].M, shapes[s].N, K, s % 2 ? 3 : 0, s % 3 == 1, path, 100 * f + s);
    }
}

Test(qblock, gemv_odd_shapes_every_format) { check_all(MATMUL_GEMV); }

Test(qblock, gemm_odd_shapes_every_format) { check_all(MATMUL_GEMM); }

Test(qblock, a_misread_bit_fails_the_check) {
  /* The tolerance sees one flipped bit of an integer: rows compared against a reference whose blocks differ from
   * the device's by one bit of element 70's integer must fail. */
  for (unsigned f = 0; f < N_FORMATS; f++) {
    lt_dtype_t t = formats[f];
    uint32_t K = 3 * qblock_info(t)->block, N = 4, M = 2;
    uint64_t seed = 7 + f, rb = qblock_row_bytes(t, K);
    uint8_t *w = random_rows(t, N, K, seed);
    float *x = talloc((uint64_t)M * K), *got;
    trand(x, (uint64_t)M * K, -1, 1, &seed);
    got = run(t, w, x, x, M, N, K, K, N, false, MATMUL_AUTO);
    /* Flip the lowest bit of byte b of row 1, for the first b from 40 on that moves a weight by at least 2% of the
     * row's largest (a bit under a small sub-block scale moves it by less than the tolerance resolves). */
    float before[768], after[768];
    qblock_dequant(t, w + rb, before, K);
    float wmax0 = 0;
    for (uint32_t k = 0; k < K; k++) wmax0 = fmaxf(wmax0, fabsf(before[k]));
    int changed = 0;
    for (uint32_t b = 40; b < rb && !changed; b++) {
      w[rb + b] ^= 1;
      qblock_dequant(t, w + rb, after, K);
      for (uint32_t k = 0; k < K; k++) changed += fabsf(before[k] - after[k]) >= 0.02f * wmax0;
      if (!changed) w[rb + b] ^= 1;
    }
    cr_assert(changed, "%s: no bit changed a weight", lt_dtype_str(t));
    double worst = 0;
    for (uint32_t m = 0; m < M; m++) {
      double want = 0, xsum = 0, wmax = 0;
      for (uint32_t k = 0; k < K; k++) {
        want += (double)x[m * K + k] * after[k];
        xsum += fabs(x[m * K + k]);
        wmax = fmax(wmax, fabs(after[k]));
      }
      worst = fmax(worst, fabs(got[m * N + 1] - want) / (1e-5 * wmax * xsum + 1e-6));
    }
    cr_assert_gt(worst, 1.0, "%s: one flipped bit moved y by only %g tolerances", lt_dtype_str(t), worst);
    free(w), free(x), free(got);
  }
}

Test(qblock, bad_shapes_are_errors) {
  gpu_buf_t *b = tbuf_f32(NULL, 4096);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  qmat_view_t w = {gv(b), {0}, LT_Q4_K, LT_F32, 0};
  cr_assert_eq(op_matmul_q(c, gv(b), 4, gv(b), 300, &w, 1, 4, 300, false, MATMUL_AUTO, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "Q4_K") && strstr(err.msg, "256"), "names the format and its block: %s", err.msg);
  /* The 16,384-byte buffer holds 78 rows of one Q6_K block (210 bytes each), not 100: the op refuses to read past
   * it. */
  w.wtype = LT_Q6_K;
  cr_assert_eq(op_matmul_q(c, gv(b), 100, gv(b), 256, &w, 1, 78, 256, false, MATMUL_AUTO, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_matmul_q(c, gv(b), 100, gv(b), 256, &w, 1, 100, 256, false, MATMUL_AUTO, &err), LT_E_INVALID);
  gpu_cmd_abort(&c);
  gpu_buf_destroy(&b);
}

Test(qblock, table_and_row_sizes) {
  cr_assert_eq(qblock_row_bytes(LT_Q4_K, 4096), 16 * 144);
  cr_assert_eq(qblock_row_bytes(LT_Q4_0, 96), 3 * 18);
  cr_assert_eq(qblock_row_bytes(LT_Q6_K, 300), 0, "300 is no multiple of 256");
  cr_assert_eq(qblock_row_bytes(LT_F16, 256), 0);
  lt_dtype_t t;
  cr_assert(qblock_from_ggml(12, &t) && t == LT_Q4_K);
  cr_assert(qblock_from_ggml(8, &t) && t == LT_Q8_0);
  cr_assert(!qblock_from_ggml(16, &t), "IQ2_XXS is not supported");
  cr_assert_str_eq(lt_dtype_str(LT_Q5_1), "Q5_1");
}

/* ---- the CPU reference against ggml's dequantiser ---- */

/* tests/fixtures/qblock/<FORMAT>.bin, written by tools/qblock_fixtures.sh: "LQB1", u32 rows, u32 cols, then the rows
 * of blocks ggml quantised from a fixed pseudo-random matrix, then ggml's dequantisation of them (f32). */
Test(qblock, the_reference_equals_ggml_dequantisation) {
  for (unsigned f = 0; f < N_FORMATS; f++) {
    lt_dtype_t t = formats[f];
    char path[PATH_MAX];
    snprintf(path, sizeof path, LATHE_SOURCE_DIR "/tests/fixtures/qblock/%s.bin", lt_dtype_str(t));
    FILE *fp = fopen(path, "rb");
    cr_assert(fp, "%s is missing", path);
    char magic[4];
    uint32_t rows, cols;
    cr_assert(fread(magic, 4, 1, fp) == 1 && memcmp(magic, "LQB1", 4) == 0 && fread(&rows, 4, 1, fp) == 1 &&
                  fread(&cols, 4, 1, fp) == 1,
              "%s: bad header", path);
    uint64_t rb = qblock_row_bytes(t, cols), n = (uint64_t)rows * cols;
    cr_assert(rb && rows && rows <= 64 && cols <= 4096, "%s: shape %ux%u", path, rows, cols);
    uint8_t *blocks = malloc(rows * rb);
    float *want = talloc(n), *got = talloc(n);
    cr_assert(fread(blocks, rb, rows, fp) == rows && fread(want, 4, n, fp) == n, "%s: short", path);
    fclose(fp);
    qblock_dequant(t, blocks, got, n);
    /* Same f32 operations in the same order, but a compiler may fuse d q - m into an fma on either side: one
     * rounding (2^-24) of terms no larger than the row's largest weight plus its offset, so 1e-6 of the row's
     * largest |w| bounds it; a misread integer is off by a whole step (>= 1/64 of that here). */
    for (uint32_t r = 0; r < rows; r++) {
      float wmax = 0;
      for (uint32_t k = 0; k < cols; k++) wmax = fmaxf(wmax, fabsf(want[(uint64_t)r * cols + k]));
      for (uint32_t k = 0; k < cols; k++) {
        uint64_t i = (uint64_t)r * cols + k;
        cr_assert(fabsf(got[i] - want[i]) <= 1e-6f * wmax, "%s row %u element %u: %.9g, ggml %.9g", lt_dtype_str(t), r,
                  k, got[i], want[i]);
      }
    }
    free(blocks), free(want), free(got);
  }
}

/* ---- the backward pass through a block-format weight (LoRA on a quantised base) ---- */

Test(qblock, dx_through_every_format) {
  /* dx[m, k] = sum_n dy[m, n] w[n, k] against the double-precision sum of the reference's weights, within
   * 1e-5 * max|w| * sum_n |dy_mn| + 1e-6 (the argument of check() above, the sum now running over n). */
  for (unsigned f = 0; f < N_FORMATS; f++) {
    lt_dtype_t t = formats[f];
    uint32_t M = 5, N = 37, K = 2 * qblock_info(t)->block;
    uint64_t seed = 500 + f, rb = qblock_row_bytes(t, K);
    uint8_t *w = random_rows(t, N, K, seed);
    float *dy = talloc((uint64_t)M * N), *wf = talloc((uint64_t)N * K);
    trand(dy, (uint64_t)M * N, -1, 1, &seed);
    qblock_dequant(t, w, wf, (uint64_t)N * K);
    gpu_buf_t *bw = tbuf_bytes(w, (N * rb + 3) / 4 * 4), *bdy = tbuf_f32(dy, (uint64_t)M * N),
              *bdx = tbuf_f32(NULL, (uint64_t)M * K);
    qmat_view_t q = {gv(bw), {0}, t, LT_F32, 0};
    lt_err_t err = {0};
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_matmul_dx_q(c, gv(bdx), gv(bdy), &q, M, N, K, false, &err), LT_OK, "%s", err.msg);
    tfinish(&c);
    float *got = tread_f32(bdx, (uint64_t)M * K);
    double wmax = 0;
    for (uint64_t i = 0; i < (uint64_t)N * K; i++) wmax = fmax(wmax, fabs(wf[i]));
    for (uint32_t m = 0; m < M; m++)
      for (uint32_t k = 0; k < K; k++) {
        double want = 0, dsum = 0;
        for (uint32_t n = 0; n < N; n++) {
          want += (double)dy[m * N + n] * wf[(uint64_t)n * K + k];
          dsum += fabs(dy[m * N + n]);
        }
        double tol = 1e-5 * wmax * dsum + 1e-6;
        cr_assert(fabs(got[(uint64_t)m * K + k] - want) <= tol, "%s dx[%u,%u] = %.9g, want %.9g", lt_dtype_str(t), m, k,
                  got[(uint64_t)m * K + k], want);
      }
    gpu_buf_destroy(&bw), gpu_buf_destroy(&bdy), gpu_buf_destroy(&bdx);
    free(w), free(dy), free(wf), free(got);
  }
}
