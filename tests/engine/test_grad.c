/* The backward passes and the optimiser (engine/ops/ops_grad.h) against their CPU references (ref_grad.h) on odd
 * shapes, and the references themselves against central differences of a float64 forward pass, so that a shared
 * mistake in a formula cannot pass.
 *
 * Tolerances: the GPU sums in f32 where the reference sums in double. A sum of n terms of magnitude up to a carries
 * a rounding error below n * 2^-24 * n * a in the worst case and about sqrt(n) * 2^-24 * |sum| typically; the
 * tests use atol = 1e-5 * (terms summed) * (typical term) with rtol 1e-4, a wide margin over the typical case
 * that still catches any wrong term (an error of one term is of the order of a term). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ops_grad.h"
#include "engine/ops/quant.h"
#include "engine/ops/ref/ref.h"
#include "engine/ops/ref/ref_grad.h"
#include "support/tgpu.h"

TestSuite(grad, .init = tgpu_setup, .fini = tgpu_teardown);

/* dX for each weight dtype: widths that rule out vector loads (scalar path) and widths that allow them. */
static void check_dx(uint32_t M, uint32_t N, uint32_t K) {
  uint64_t seed = 11;
  float *dy = talloc(M * N), *w = talloc(N * K), *dx0 = talloc(M * K), *want = talloc(M * K);
  trand(dy, M * N, -1, 1, &seed);
  trand(w, N * K, -1, 1, &seed);
  trand(dx0, M * K, -1, 1, &seed);
  uint16_t *w16 = calloc(N * K + 2, 2); /* 4 spare bytes: the device buffer is padded to whole words */
  lt_dtype_t types[] = {LT_F32, LT_F16, LT_BF16};
  for (int ti = 0; ti < 3; ti++)
    for (int acc = 0; acc < 2; acc++) {
      lt_dtype_t t = types[ti];
      for (uint32_t i = 0; i < N * K; i++) w16[i] = t == LT_F16 ? dtype_float_to_half(w[i]) : dtype_float_to_bf16(w[i]);
      const void *wh = t == LT_F32 ? (const void *)w : w16;
      gpu_buf_t *bw = t == LT_F32 ? tbuf_f32(w, N * K) : tbuf_bytes(w16, N * K * 2 + 2);
      gpu_buf_t *bdy = tbuf_f32(dy, M * N), *bdx = tbuf_f32(dx0, M * K);
      memcpy(want, dx0, M * K * 4);
      ref_matmul_dx(want, dy, wh, t, M, N, K, acc);
      lt_err_t err = {0};
      gpu_cmd_t *c = tbegin();
      cr_assert_eq(op_matmul_dx(c, gv(bdx), gv(bdy), gv(bw), t, M, N, K, acc, &err), LT_OK, "%s", err.msg);
      tfinish(&c);
      float *got = tread_f32(bdx, M * K);
      /* N = 53 products of magnitude <= 1 each. */
      tassert_close(got, want, M * K, 1e-5 * N, 1e-4, lt_dtype_str(t));
      free(got);
      gpu_buf_destroy(&bw), gpu_buf_destroy(&bdy), gpu_buf_destroy(&bdx);
    }
  free(dy), free(w), free(dx0), free(want), free(w16);
}

Test(grad, matmul_dx_every_weight_dtype) {
  check_dx(37, 53, 45); /* odd widths: scalar loads */
  check_dx(37, 48, 40); /* widths of 8: vec4 and 8-wide 16-bit loads */
}

Test(grad, matmul_dx_quantised_in_place) {
  uint32_t M = 9, N = 29, K = 70, group = 16;
  uint64_t seed = 5;
  float *dy = talloc(M * N), *w = talloc(N * K), *want = talloc(M * K);
  trand(dy, M * N, -1, 1, &seed);
  trand(w, N * K, -1, 1, &seed);
  for (uint32_t bits = 4; bits <= 8; bits += 4) {
    /* 4 spare bytes each: the device buffers are padded to whole words. */
    uint8_t *q = calloc((uint64_t)N * quant_row_bytes(bits, K) + 4, 1);
    uint16_t *s = calloc((uint64_t)N * quant_groups(K, group) + 2, 2);
    quant_rtn(q, s, w, N, K, bits, group);
    ref_matmul_dx_q(want, dy, q, s, bits, group, M, N, K, false);
    gpu_buf_t *bq = tbuf_bytes(q, (uint64_t)N * quant_row_bytes(bits, K) + 4);
    gpu_buf_t *bs = tbuf_bytes(s, (uint64_t)N * quant_groups(K, group) * 2 + 4);
    gpu_buf_t *bdy = tbuf_f32(dy, M * N), *bdx = tbuf_f32(NULL, M * K);
    qmat_view_t qv = {gv(bq), gv(bs), bits == 4 ? LT_I4 : LT_I8, LT_F16, group};
    lt_err_t err = {0};
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_matmul_dx_q(c, gv(bdx), gv(bdy), &qv, M, N, K, false, &err), LT_OK, "%s", err.msg);
    tfinish(&c);
    float *got = tread_f32(bdx, M * K);
    tassert_close(got, want, M * K, 1e-5 * N, 1e-4, bits == 4 ? "int4" : "int8");
    free(got), free(q), free(s);
    gpu_buf_destroy(&bq), gpu_buf_destroy(&bs), gpu_buf_destroy(&bdy), gpu_buf_destroy(&bdx);
  }
  free(dy), free(w), free(want);
}

Test(grad, matmul_dw_accumulates_and_splits_long_sums) {
  /* M = 20000 rows: more than one invocation may loop, so the sum over M is split over dispatches. */
  uint32_t shapes[][3] = {{31, 17, 23}, {20000, 3, 5}, {19, 8, 12}};
  for (int si = 0; si < 3; si++) {
    uint32_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
    uint64_t seed = 3 + si;
    float *dy = talloc((uint64_t)M * N), *x = talloc((uint64_t)M * K), *dw0 = talloc(N * K), *want = talloc(N * K);
    trand(dy, (uint64_t)M * N, -1, 1, &seed);
    trand(x, (uint64_t)M * K, -1, 1, &seed);
    trand(dw0, N * K, -1, 1, &seed);
    memcpy(want, dw0, N * K * 4);
    ref_matmul_dw(want, dy, x, M, N, K, true);
    gpu_buf_t *bdy = tbuf_f32(dy, (uint64_t)M * N), *bx = tbuf_f32(x, (uint64_t)M * K), *bdw = tbuf_f32(dw0, N * K);
    lt_err_t err = {0};
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_matmul_dw(c, gv(bdw), gv(bdy), gv(bx), M, N, K, true, &err), LT_OK, "%s", err.msg);
    tfinish(&c);
    float *got = tread_f32(bdw, N * K);
    /* M products of magnitude <= 1: random signs keep the sum near sqrt(M), its f32 error far below 1e-5 M. */
    tassert_close(got, want, N * K, 1e-5 * sqrt((double)M) * 10, 1e-4, "dw");
    free(got), free(dy), free(x), free(dw0), free(want);
    gpu_buf_destroy(&bdy), gpu_buf_destroy(&bx), gpu_buf_destroy(&bdw);
  }
}

/* sum(g * rmsnorm(x) * w) in double, the loss whose gradient the RMSNorm backward computes. */
static double rms_loss(const double *x, const float *w, const float *g, uint32_t rows, uint32_t n, float eps) {
  double L = 0;
  for (uint32_t r = 0; r < rows; r++) {
    double ss = 0;
    for (uint32_t i = 0; i < n; i++) ss += x[r * n + i] * x[r * n + i];
    double inv = 1.0 / sqrt(ss / n + eps);
    for (uint32_t i = 0; i < n; i++) L += g[r * n + i] * x[r * n + i] * inv * w[i];
  }
  return L;
}

Test(grad, rmsnorm_backward) {
  uint32_t rows = 7, n = 301;
  float eps = 1e-5f;
  uint64_t seed = 9;
  float *x = talloc(rows * n), *w = talloc(n), *g = talloc(rows * n), *dx0 = talloc(rows * n), *dw0 = talloc(n);
  trand(x, rows * n, -2, 2, &seed);
  trand(w, n, 0.5, 1.5, &seed);
  trand(g, rows * n, -1, 1, &seed);
  trand(dx0, rows * n, -1, 1, &seed);
  trand(dw0, n, -1, 1, &seed);
  float *wdx = talloc(rows * n), *wdw = talloc(n);
  memcpy(wdx, dx0, rows * n * 4), memcpy(wdw, dw0, n * 4);
  ref_rmsnorm_backward(wdx, wdw, g, x, w, rows, n, eps);
  /* The reference against central differences of the double loss (for dx; dw is linear in w, checked once). */
  double *xd = malloc(rows * n * sizeof *xd);
  for (uint32_t i = 0; i < rows * n; i++) xd[i] = x[i];
  for (uint32_t i = 0; i < rows * n; i += 97) {
    double h = 1e-6, o = xd[i];
    xd[i] = o + h;
    double up = rms_loss(xd, w, g, rows, n, eps);
    xd[i] = o - h;
    double dn = rms_loss(xd, w, g, rows, n, eps);
    xd[i] = o;
    cr_assert(fabs((up - dn) / (2 * h) - (wdx[i] - dx0[i])) < 1e-5, "reference dx[%u]", i);
  }
  free(xd);
  gpu_buf_t *bx = tbuf_f32(x, rows * n), *bw = tbuf_f32(w, n), *bg = tbuf_f32(g, rows * n),
            *bdx = tbuf_f32(dx0, rows * n), *bdw = tbuf_f32(dw0, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_rmsnorm_backward(c, gv(bdx), gv(bdw), gv(bg), gv(bx), gv(bw), rows, n, eps, &err), LT_OK, "%s",
               err.msg);
  tfinish(&c);
  float *gdx = tread_f32(bdx, rows * n), *gdw = tread_f32(bdw, n);
  /* Row sums of n = 301 terms of magnitude <= 4; dw sums 7 rows. */
  tassert_close(gdx, wdx, rows * n, 1e-5 * n, 1e-4, "dx");
  tassert_close(gdw, wdw, n, 1e-5 * rows * 4, 1e-4, "dw");
  free(gdx), free(gdw);
  /* The overwriting form (a post-norm's input gradient, Gemma 2): dx = the gradient alone, whatever dx held; dw
   * still accumulates. */
  c = tbegin();
  cr_assert_eq(op_rmsnorm_backward_set(c, gv(bdx), gv(bdw), gv(bg), gv(bx), gv(bw), rows, n, eps, &err), LT_OK, "%s",
               err.msg);
  tfinish(&c);
  for (uint32_t i = 0; i < rows * n; i++) wdx[i] -= dx0[i];
  for (uint32_t i = 0; i < n; i++) wdw[i] += wdw[i] - dw0[i];
  gdx = tread_f32(bdx, rows * n), gdw = tread_f32(bdw, n);
  tassert_close(gdx, wdx, rows * n, 1e-5 * n, 1e-4, "dx (set)");
  tassert_close(gdw, wdw, n, 2e-5 * rows * 4, 1e-4, "dw (accumulated twice)");
  free(gdx), free(gdw), free(x), free(w), free(g), free(dx0), free(dw0), free(wdx), free(wdw);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bw), gpu_buf_destroy(&bg), gpu_buf_destroy(&bdx), gpu_buf_destroy(&bdw);
}

Test(grad, rope_backward_is_the_transpose) {
  uint32_t rows = 13, heads = 3, hd = 10, rot = 8;
  rope_scaling_t sc = {.type = 1, .factor = 4, .low_freq_factor = 1, .high_freq_factor = 4, .original_max_position = 8};
  float *tab = talloc(rows * rot);
  rope_table_build(tab, rows, rot, 10000.0, &sc);
  int32_t pos[13];
  for (uint32_t r = 0; r < rows; r++) pos[r] = (int32_t)((r * 5) % rows);
  uint64_t seed = 21, n = (uint64_t)rows * heads * hd;
  float *x = talloc(n), *y = talloc(n);
  trand(x, n, -1, 1, &seed);
  trand(y, n, -1, 1, &seed);
  for (int neox = 0; neox < 2; neox++) {
    float *want = talloc(n);
    memcpy(want, y, n * 4);
    ref_rope_backward(want, pos, rows, heads, hd, rot, neox, 10000.0, &sc);
    /* <rope(x), y> == <x, rope_backward(y)> in double: the reference really is the transpose. */
    float *rx = talloc(n);
    memcpy(rx, x, n * 4);
    ref_rope(rx, pos, rows, heads, hd, rot, neox, 10000.0, &sc);
    double l = 0, r = 0;
    for (uint64_t i = 0; i < n; i++) l += (double)rx[i] * y[i], r += (double)x[i] * want[i];
    cr_assert(fabs(l - r) < 1e-5, "adjoint: %g vs %g", l, r);
    gpu_buf_t *by = tbuf_f32(y, n), *bp = tbuf_bytes(pos, sizeof pos), *bt = tbuf_f32(tab, rows * rot);
    lt_err_t err = {0};
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_rope_backward(c, gv(by), gv(bp), gv(bt), rows, heads, hd, rot, neox, rows, &err), LT_OK, "%s",
                 err.msg);
    tfinish(&c);
    float *got = tread_f32(by, n);
    /* One rotation: a few f32 roundings of values <= 1. */
    tassert_close(got, want, n, 1e-6, 1e-5, neox ? "neox" : "interleaved");
    free(got), free(want), free(rx);
    gpu_buf_destroy(&by), gpu_buf_destroy(&bp), gpu_buf_destroy(&bt);
  }
  free(tab), free(x), free(y);
}

/* sum(dout * attention(q, k, v)) in double, for the finite differences of the attention reference. */
static double attn_loss(const float *q, const float *k, const float *v, const float *dout, uint32_t T, uint32_t H,
                        uint32_t KV, uint32_t hd, uint32_t W, float scale, float cap) {
  uint64_t n = (uint64_t)T * H * hd;
  float *out = talloc(n), *lse = talloc((uint64_t)T * H);
  ref_attention_lse(out, lse, q, k, v, T, H, KV, hd, W, scale, cap);
  double L = 0;
  for (uint64_t i = 0; i < n; i++) L += (double)out[i] * dout[i];
  free(out), free(lse);
  return L;
}

Test(grad, attention_forward_with_lse_and_backward) {
  /* W: a sliding window (Mistral), 0 for full causal attention, ATTN_BIDIRECTIONAL for an encoder's (every query sees
   * every key); cap: soft-capped scores (Gemma 2), 0 for none. With
   * q, k in [-1, 1] the scaled scores reach about 1: caps of 0.5 and 1 bend them. */
  struct {
    uint32_t T, H, KV, hd, W;
    float cap;
  } shapes[] = {{1, 2, 1, 8, 0, 0},
                {19, 4, 2, 16, 0, 0},
                {33, 6, 2, 12, 0, 0},
                {7, 3, 3, 5, 0, 0},
                {19, 4, 2, 16, 5, 0},
                {33, 2, 1, 8, 1, 0},
                {19, 4, 2, 16, 0, 0.5f},
                {21, 4, 2, 16, 4, 1.0f},
                {19, 4, 4, 16, ATTN_BIDIRECTIONAL, 0},
                {33, 6, 2, 12, ATTN_BIDIRECTIONAL, 0},
                {1, 2, 1, 8, ATTN_BIDIRECTIONAL, 0}};
  for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++) {
    uint32_t T = shapes[si].T, H = shapes[si].H, KV = shapes[si].KV, hd = shapes[si].hd, W = shapes[si].W;
    float cap = shapes[si].cap;
    float scale = 1.0f / sqrtf((float)hd);
    uint64_t nq = (uint64_t)T * H * hd, nk = (uint64_t)T * KV * hd, nl = (uint64_t)T * H, seed = 40 + si;
    float *q = talloc(nq), *k = talloc(nk), *v = talloc(nk), *dout = talloc(nq);
    trand(q, nq, -1, 1, &seed), trand(k, nk, -1, 1, &seed), trand(v, nk, -1, 1, &seed), trand(dout, nq, -1, 1, &seed);
    float *out = talloc(nq), *lse = talloc(nl), *dq = talloc(nq), *dk = talloc(nk), *dv = talloc(nk);
    ref_attention_lse(out, lse, q, k, v, T, H, KV, hd, W, scale, cap);
    ref_attention_backward(dq, dk, dv, q, k, v, dout, T, H, KV, hd, W, scale, cap);
    /* The output equals the existing attention reference; the backward reference matches finite differences. */
    float *out2 = talloc(nq);
    /* Bidirectional: queries placed after every key see them all. */
    bool bidir = W == ATTN_BIDIRECTIONAL;
    ref_attention(out2, q, k, v, T, H, KV, hd, bidir ? T : 0, T, bidir ? 0 : W, scale, cap);
    tassert_close(out, out2, nq, 1e-6, 1e-5, "reference forward");
    free(out2);
    float *bufs[3] = {q, k, v}, *grads[3] = {dq, dk, dv};
    for (int b = 0; b < 3; b++) {
      uint64_t n = b == 0 ? nq : nk;
      for (uint64_t i = 0; i < n; i += 7) {
        float o = bufs[b][i], h = 1e-2f;
        bufs[b][i] = o + h;
        double up = attn_loss(q, k, v, dout, T, H, KV, hd, W, scale, cap);
        bufs[b][i] = o - h;
        double dn = attn_loss(q, k, v, dout, T, H, KV, hd, W, scale, cap);
        bufs[b][i] = o;
        /* f32 outputs summed in double: the difference quotient carries ~1e-7 / h of rounding, plus h^2 terms. */
        cr_assert(fabs((up - dn) / (2 * h) - grads[b][i]) < 2e-4 + 1e-3 * fabs(grads[b][i]),
                  "reference d%c[%llu]: %g vs %g", "qkv"[b], (unsigned long long)i, (up - dn) / (2 * h), grads[b][i]);
      }
    }
    gpu_buf_t *bq = tbuf_f32(q, nq), *bk = tbuf_f32(k, nk), *bv = tbuf_f32(v, nk), *bdo = tbuf_f32(dout, nq);
    gpu_buf_t *bo = tbuf_f32(NULL, nq), *bl = tbuf_f32(NULL, nl), *bdq = tbuf_f32(NULL, nq), *bdk = tbuf_f32(NULL, nk),
              *bdv = tbuf_f32(NULL, nk);
    lt_err_t err = {0};
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_attention_lse(c, gv(bo), gv(bl), gv(bq), gv(bk), gv(bv), T, H, KV, hd, W, scale, cap, &err), LT_OK,
                 "%s", err.msg);
    cr_assert_eq(op_attention_backward(c, gv(bdq), gv(bdk), gv(bdv), gv(bq), gv(bk), gv(bv), gv(bo), gv(bdo), gv(bl), T,
                                       H, KV, hd, W, scale, cap, &err),
                 LT_OK, "%s", err.msg);
    tfinish(&c);
    float *go = tread_f32(bo, nq), *gl = tread_f32(bl, nl), *gq = tread_f32(bdq, nq), *gk = tread_f32(bdk, nk),
          *gvv = tread_f32(bdv, nk);
    /* Softmax-weighted sums over at most T keys of values <= 1 (x head size for the scores). */
    tassert_close(go, out, nq, 1e-5 * T, 1e-4, "out");
    tassert_close(gl, lse, nl, 1e-5 * hd, 1e-5, "lse");
    tassert_close(gq, dq, nq, 1e-5 * T * hd, 1e-3, "dq");
    tassert_close(gk, dk, nk, 1e-5 * T * hd * H / KV, 1e-3, "dk");
    tassert_close(gvv, dv, nk, 1e-5 * T * H / KV, 1e-3, "dv");
    free(go), free(gl), free(gq), free(gk), free(gvv);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
    gpu_buf_t *all[] = {bq, bk, bv, bdo, bo, bl, bdq, bdk, bdv};
    for (int i = 0; i < 9; i++) gpu_buf_destroy(&all[i]);
  }
}

Test(grad, swiglu_embed_and_cross_entropy) {
  uint32_t n = 1001;
  uint64_t seed = 77;
  float *gate = talloc(n), *up = talloc(n), *dy = talloc(n), *wg = talloc(n), *wu = talloc(n);
  trand(gate, n, -6, 6, &seed), trand(up, n, -2, 2, &seed), trand(dy, n, -1, 1, &seed);
  ref_swiglu_backward(wg, wu, dy, gate, up, n);
  for (uint32_t i = 0; i < n; i += 50) {
    /* silu(a) * u differentiated by central differences in double. */
    double a = gate[i], h = 1e-6;
    double f1 = (a + h) / (1 + exp(-(a + h))) * up[i], f0 = (a - h) / (1 + exp(-(a - h))) * up[i];
    cr_assert(fabs((f1 - f0) / (2 * h) * dy[i] - wg[i]) < 1e-5, "reference dgate[%u]", i);
  }
  gpu_buf_t *bg = tbuf_f32(gate, n), *bu = tbuf_f32(up, n), *bdy = tbuf_f32(dy, n), *bdg = tbuf_f32(NULL, n),
            *bdu = tbuf_f32(NULL, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_swiglu_backward(c, gv(bdg), gv(bdu), gv(bdy), gv(bg), gv(bu), n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *g1 = tread_f32(bdg, n), *g2 = tread_f32(bdu, n);
  /* exp() to a few ulp, then a handful of roundings. */
  tassert_close(g1, wg, n, 2e-6, 1e-5, "dgate");
  tassert_close(g2, wu, n, 2e-6, 1e-5, "dup");
  free(g1), free(g2), free(gate), free(up), free(dy), free(wg), free(wu);
  gpu_buf_destroy(&bg), gpu_buf_destroy(&bu), gpu_buf_destroy(&bdy), gpu_buf_destroy(&bdg), gpu_buf_destroy(&bdu);

  /* GeGLU (Gemma): the reference against central differences of gelu_tanh(a) * u, then the device against it; and
   * the logit soft-cap's backward dx = dy (1 - (y / cap)^2) at y = cap tanh(a / cap). */
  gate = talloc(n), up = talloc(n), dy = talloc(n), wg = talloc(n), wu = talloc(n);
  trand(gate, n, -6, 6, &seed), trand(up, n, -2, 2, &seed), trand(dy, n, -1, 1, &seed);
  ref_geglu_backward(wg, wu, dy, gate, up, n);
  for (uint32_t i = 0; i < n; i += 50) {
    double a = gate[i], h = 1e-6;
    double f1 = 0.5 * (a + h) * (1 + tanh(0.7978845608028654 * ((a + h) + 0.044715 * pow(a + h, 3)))) * up[i];
    double f0 = 0.5 * (a - h) * (1 + tanh(0.7978845608028654 * ((a - h) + 0.044715 * pow(a - h, 3)))) * up[i];
    cr_assert(fabs((f1 - f0) / (2 * h) * dy[i] - wg[i]) < 1e-5, "reference geglu dgate[%u]", i);
  }
  bg = tbuf_f32(gate, n), bu = tbuf_f32(up, n), bdy = tbuf_f32(dy, n), bdg = tbuf_f32(NULL, n), bdu = tbuf_f32(NULL, n);
  c = tbegin();
  cr_assert_eq(op_geglu_backward(c, gv(bdg), gv(bdu), gv(bdy), gv(bg), gv(bu), n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  g1 = tread_f32(bdg, n), g2 = tread_f32(bdu, n);
  tassert_close(g1, wg, n, 2e-6, 1e-5, "geglu dgate");
  tassert_close(g2, wu, n, 2e-6, 1e-5, "geglu dup");
  free(g1), free(g2);
  float *capped = talloc(n), *wsc = talloc(n);
  ref_softcap(capped, gate, 4.0f, n);
  for (uint32_t i = 0; i < n; i++) wsc[i] = (float)(dy[i] * (1.0 - pow((double)capped[i] / 4.0, 2)));
  gpu_buf_t *bcap = tbuf_f32(capped, n);
  c = tbegin();
  cr_assert_eq(op_softcap_backward(c, gv(bdg), gv(bdy), gv(bcap), 4.0f, n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  g1 = tread_f32(bdg, n);
  tassert_close(g1, wsc, n, 1e-6, 1e-5, "softcap backward");
  free(g1), free(capped), free(wsc), free(gate), free(up), free(dy), free(wg), free(wu);
  gpu_buf_destroy(&bcap);
  gpu_buf_destroy(&bg), gpu_buf_destroy(&bu), gpu_buf_destroy(&bdy), gpu_buf_destroy(&bdg), gpu_buf_destroy(&bdu);

  /* Embedding: 57 rows over 11 ids (repeats, one out of range) into a table of 10 rows of 9. */
  uint32_t R = 57, dim = 9, V = 10;
  int32_t ids[57];
  for (uint32_t r = 0; r < R; r++) ids[r] = (int32_t)((r * 7 + r / 5) % 11);
  float *dyr = talloc(R * dim), *t0 = talloc(V * dim), *want = talloc(V * dim);
  trand(dyr, R * dim, -1, 1, &seed), trand(t0, V * dim, -1, 1, &seed);
  memcpy(want, t0, V * dim * 4);
  ref_embed_backward(want, dyr, ids, R, dim, V);
  gpu_buf_t *bt = tbuf_f32(t0, V * dim), *bd = tbuf_f32(dyr, R * dim);
  c = tbegin();
  cr_assert_eq(op_embed_backward(c, gv(bt), gv(bd), ids, R, dim, V, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *gt = tread_f32(bt, V * dim);
  tassert_close(gt, want, V * dim, 1e-5 * 6, 1e-5, "embedding");
  free(gt), free(dyr), free(t0), free(want);
  gpu_buf_destroy(&bt), gpu_buf_destroy(&bd);

  /* Cross-entropy over rows of 150,001 (wider than any loop may run) and of 7. */
  uint32_t shapes[][2] = {{3, 150001}, {5, 7}};
  for (int si = 0; si < 2; si++) {
    uint32_t rows = shapes[si][0], V2 = shapes[si][1];
    float *x = talloc((uint64_t)rows * V2), *w = talloc(rows), *nll = talloc(rows), *dl = talloc((uint64_t)rows * V2);
    int32_t tg[5];
    trand(x, (uint64_t)rows * V2, -4, 4, &seed);
    for (uint32_t r = 0; r < rows; r++) tg[r] = (int32_t)((r * 7919u) % V2), w[r] = r == 1 ? 0.0f : 0.25f * (r + 1);
    ref_cross_entropy(nll, dl, x, tg, w, rows, V2);
    for (uint32_t r = 0; r < rows; r++) {
      double s = 0;
      for (uint32_t j = 0; j < V2; j++) s += dl[(uint64_t)r * V2 + j];
      cr_assert(fabs(s) < 1e-4, "reference: gradient row %u sums to %g, not 0", r, s);
    }
    gpu_buf_t *bx = tbuf_f32(x, (uint64_t)rows * V2), *bt2 = tbuf_bytes(tg, sizeof tg), *bw2 = tbuf_f32(w, rows),
              *bn = tbuf_f32(NULL, rows), *bl = tbuf_f32(NULL, rows);
    c = tbegin();
    cr_assert_eq(op_cross_entropy(c, gv(bn), gv(bl), true, gv(bx), gv(bt2), gv(bw2), rows, V2, &err), LT_OK, "%s",
                 err.msg);
    tfinish(&c);
    float *gn = tread_f32(bn, rows), *gd = tread_f32(bx, (uint64_t)rows * V2);
    /* log-sum-exp over V terms; probabilities below 1, each a few roundings from exp. */
    tassert_close(gn, nll, rows, 1e-5 * log((double)V2) * 4, 1e-5, "nll");
    tassert_close(gd, dl, (uint64_t)rows * V2, 1e-7, 1e-4, "dlogits");
    free(gn), free(gd), free(x), free(w), free(nll), free(dl);
    gpu_buf_destroy(&bx), gpu_buf_destroy(&bt2), gpu_buf_destroy(&bw2), gpu_buf_destroy(&bn), gpu_buf_destroy(&bl);
  }
}

Test(grad, adamw_steps_and_sum_of_squares) {
  uint32_t n = 4099;
  uint64_t seed = 8;
  float *p = talloc(n), *g = talloc(n), *m = talloc(n), *v = talloc(n);
  trand(p, n, -1, 1, &seed);
  memset(m, 0, n * 4), memset(v, 0, n * 4);
  gpu_buf_t *bp = tbuf_f32(p, n), *bg = tbuf_f32(NULL, n), *bm = tbuf_f32(m, n), *bv = tbuf_f32(v, n);
  lt_err_t err = {0};
  for (uint32_t step = 1; step <= 5; step++) {
    trand(g, n, -1, 1, &seed);
    cr_assert_eq(gpu_upload(bg, 0, g, n * 4, &err), LT_OK);
    adamw_params_t a = {.lr = 1e-2f,
                        .beta1 = 0.9f,
                        .beta2 = 0.999f,
                        .eps = 1e-8f,
                        .weight_decay = 0.1f,
                        .grad_scale = 0.5f,
                        .step = step};
    ref_adamw(p, g, m, v, n, &a);
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_adamw(c, gv(bp), gv(bg), gv(bm), gv(bv), n, &a, &err), LT_OK, "%s", err.msg);
    tfinish(&c);
  }
  float *gp = tread_f32(bp, n), *gm = tread_f32(bm, n), *gvv = tread_f32(bv, n);
  /* Element-wise f32 against double over 5 steps: updates of size lr, a few roundings each. */
  tassert_close(gp, p, n, 1e-6, 1e-5, "param");
  tassert_close(gm, m, n, 1e-7, 1e-5, "m");
  tassert_close(gvv, v, n, 1e-9, 1e-5, "v");
  free(gp), free(gm), free(gvv);
  /* sumsq over more elements than one pass takes (several passes over partials). */
  uint64_t big = 5000001;
  float *x = talloc(big);
  trand(x, big, -1, 1, &seed);
  double want = 0;
  for (uint64_t i = 0; i < big; i++) want += (double)x[i] * x[i];
  gpu_buf_t *bx = tbuf_f32(x, big), *bo = tbuf_f32(NULL, 1);
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_sumsq(c, gv(bo), gv(bx), big, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(bo, 1);
  /* A tree of f32 partial sums: relative error around log2(n) * 2^-24. */
  cr_assert(fabs(got[0] - want) < 1e-5 * want, "sumsq %g vs %g", got[0], want);
  free(got), free(x), free(p), free(g), free(m), free(v);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bo), gpu_buf_destroy(&bp), gpu_buf_destroy(&bg), gpu_buf_destroy(&bm),
      gpu_buf_destroy(&bv);
}

/* T^2 KL(softmax(t/T) || softmax(s/T)) of one row in double, for the finite differences. */
static double kd_row(const double *s, const float *t, uint32_t n, double T) {
  double ms = -INFINITY, mt = -INFINITY, zs = 0, zt = 0, kl = 0;
  for (uint32_t j = 0; j < n; j++) ms = fmax(ms, s[j] / T), mt = fmax(mt, t[j] / T);
  for (uint32_t j = 0; j < n; j++) zs += exp(s[j] / T - ms), zt += exp(t[j] / T - mt);
  for (uint32_t j = 0; j < n; j++) {
    double lps = s[j] / T - ms - log(zs), lpt = t[j] / T - mt - log(zt);
    kl += exp(lpt) * (lpt - lps);
  }
  return T * T * kl;
}

Test(grad, distillation_loss_and_gradient) {
  uint64_t seed = 31;
  uint32_t shapes[][2] = {{5, 7}, {3, 150001}};
  float temps[] = {1.0f, 2.5f};
  for (int si = 0; si < 2; si++)
    for (int ti = 0; ti < 2; ti++) {
      uint32_t rows = shapes[si][0], n = shapes[si][1];
      float T = temps[ti];
      uint64_t rn = (uint64_t)rows * n;
      float *s = talloc(rn), *t = talloc(rn), *w = talloc(rows), *loss = talloc(rows), *ds = talloc(rn);
      trand(s, rn, -4, 4, &seed), trand(t, rn, -4, 4, &seed);
      for (uint32_t r = 0; r < rows; r++) w[r] = 0.5f + 0.25f * (float)r;
      ref_kd(loss, ds, s, t, w, rows, n, T);
      if (n < 100) {
        /* The reference's gradient against central differences of its loss, and KL's floor: equal rows give 0. */
        double *sd = malloc(n * sizeof *sd);
        for (uint32_t r = 0; r < rows; r++) {
          for (uint32_t j = 0; j < n; j++) sd[j] = s[(uint64_t)r * n + j];
          for (uint32_t j = 0; j < n; j++) {
            double o = sd[j], h = 1e-6;
            sd[j] = o + h;
            double up = kd_row(sd, t + (uint64_t)r * n, n, T);
            sd[j] = o - h;
            double dn = kd_row(sd, t + (uint64_t)r * n, n, T);
            sd[j] = o;
            cr_assert(fabs(w[r] * (up - dn) / (2 * h) - ds[(uint64_t)r * n + j]) < 1e-6, "reference d[%u][%u]", r, j);
          }
          cr_assert(fabs(kd_row(sd, s + (uint64_t)r * n, n, T)) < 1e-12, "KL of a row with itself");
        }
        free(sd);
      }
      gpu_buf_t *bs = tbuf_f32(s, rn), *bt = tbuf_f32(t, rn), *bw = tbuf_f32(w, rows), *bl = tbuf_f32(NULL, rows);
      lt_err_t err = {0};
      gpu_cmd_t *c = tbegin();
      cr_assert_eq(op_kd(c, gv(bl), gv(bs), gv(bt), gv(bw), rows, n, T, true, &err), LT_OK, "%s", err.msg);
      tfinish(&c);
      float *gl = tread_f32(bl, rows), *gd = tread_f32(bs, rn);
      /* Sums over n terms of probabilities (<= 1) times log ratios (<= 16): f32 error far below 1e-5 * log n. */
      tassert_close(gl, loss, rows, 1e-5 * log((double)n) * T * T, 1e-4, "kd loss");
      tassert_close(gd, ds, rn, 1e-7, 1e-4, "kd gradient");
      free(gl), free(gd), free(s), free(t), free(w), free(loss), free(ds);
      gpu_buf_destroy(&bs), gpu_buf_destroy(&bt), gpu_buf_destroy(&bw), gpu_buf_destroy(&bl);
    }
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  gpu_buf_t *b = tbuf_f32(NULL, 16);
  cr_assert_eq(op_kd(c, gv(b), gv(b), gv(b), gv(b), 1, 4, 0.0f, false, &err), LT_E_INVALID, "temperature 0");
  tfinish(&c);
  gpu_buf_destroy(&b);
}

/* wt T^2 TCKD + wn T^2 NCKD of one row in double, from log-probabilities (for the finite differences). */
static double atkd_row(const double *s, const float *t, uint32_t g, uint32_t n, double T, double wt, double wn) {
  double ms = -INFINITY, mt = -INFINITY, zs = 0, zt = 0;
  for (uint32_t j = 0; j < n; j++) ms = fmax(ms, s[j] / T), mt = fmax(mt, t[j] / T);
  for (uint32_t j = 0; j < n; j++) zs += exp(s[j] / T - ms), zt += exp(t[j] / T - mt);
  double lzs = ms + log(zs), lzt = mt + log(zt), zsn = 0, ztn = 0;
  for (uint32_t j = 0; j < n; j++)
    if (j != g) zsn += exp(s[j] / T - lzs), ztn += exp(t[j] / T - lzt);
  double qg = exp(s[g] / T - lzs), pg = exp(t[g] / T - lzt);
  double tckd = pg * log(pg / qg) + ztn * log(ztn / zsn), nckd = 0;
  for (uint32_t j = 0; j < n; j++)
    if (j != g) {
      double pt = exp(t[j] / T - lzt) / ztn, ps = exp(s[j] / T - lzs) / zsn;
      nckd += pt * log(pt / ps);
    }
  return T * T * (wt * tckd + wn * nckd);
}

Test(grad, atkd_terms_and_gradient) {
  uint64_t seed = 37;
  uint32_t shapes[][2] = {{5, 7}, {3, 150001}};
  float temps[] = {1.0f, 2.5f};
  for (int si = 0; si < 2; si++)
    for (int ti = 0; ti < 2; ti++) {
      uint32_t rows = shapes[si][0], n = shapes[si][1];
      float T = temps[ti];
      uint64_t rn = (uint64_t)rows * n;
      float *s = talloc(rn), *t = talloc(rn), *w = talloc(2 * rows), *loss = talloc(2 * rows), *ds = talloc(rn);
      int32_t tg[5];
      trand(s, rn, -4, 4, &seed), trand(t, rn, -4, 4, &seed);
      for (uint32_t r = 0; r < rows; r++) {
        tg[r] = (int32_t)((r * 7919u + 3u) % n);
        w[2 * r] = 0.25f + 0.5f * (float)r, w[2 * r + 1] = r == 1 ? 0.0f : 0.75f - 0.1f * (float)r;
      }
      /* Row 0: a teacher sure of the target (1 - pT_g about 1e-8: f32 would round 1 - p to 0). */
      t[(uint64_t)tg[0]] = 20.0f * T;
      ref_atkd(loss, ds, s, t, tg, w, rows, n, T);
      if (n < 100) {
        double *sd = malloc(n * sizeof *sd);
        for (uint32_t r = 0; r < rows; r++) {
          const float *tr = t + (uint64_t)r * n;
          for (uint32_t j = 0; j < n; j++) sd[j] = s[(uint64_t)r * n + j];
          /* The reference's terms against the log-domain ones, and its gradient against central differences. */
          double both = atkd_row(sd, tr, (uint32_t)tg[r], n, T, 1, 1);
          cr_assert(fabs(both - (double)loss[2 * r] - (double)loss[2 * r + 1]) < 1e-5 * (1 + fabs(both)),
                    "reference terms of row %u", r);
          for (uint32_t j = 0; j < n; j++) {
            double o = sd[j], h = 1e-6;
            sd[j] = o + h;
            double up = atkd_row(sd, tr, (uint32_t)tg[r], n, T, w[2 * r], w[2 * r + 1]);
            sd[j] = o - h;
            double dn = atkd_row(sd, tr, (uint32_t)tg[r], n, T, w[2 * r], w[2 * r + 1]);
            sd[j] = o;
            cr_assert(fabs((up - dn) / (2 * h) - ds[(uint64_t)r * n + j]) < 1e-6, "reference d[%u][%u]", r, j);
          }
        }
        free(sd);
      }
      gpu_buf_t *bs = tbuf_f32(s, rn), *bt = tbuf_f32(t, rn), *bw = tbuf_f32(w, 2 * rows),
                *bl = tbuf_f32(NULL, 2 * rows), *bg = tbuf_f32((const float *)tg, rows);
      lt_err_t err = {0};
      gpu_cmd_t *c = tbegin();
      cr_assert_eq(op_atkd(c, gv(bl), gv(bs), gv(bt), gv(bg), gv(bw), rows, n, T, true, &err), LT_OK, "%s", err.msg);
      tfinish(&c);
      float *gl = tread_f32(bl, 2 * rows), *gd = tread_f32(bs, rn);
      /* As for op_kd: sums of n probability-weighted log ratios, f32 error well under 1e-5 * log n. */
      tassert_close(gl, loss, 2 * rows, 1e-5 * log((double)n) * T * T, 1e-4, "atkd terms");
      tassert_close(gd, ds, rn, 1e-7, 1e-4, "atkd gradient");
      free(gl), free(gd), free(s), free(t), free(w), free(loss), free(ds);
      gpu_buf_destroy(&bs), gpu_buf_destroy(&bt), gpu_buf_destroy(&bw), gpu_buf_destroy(&bl), gpu_buf_destroy(&bg);
    }
  /* A target outside the row gives NaN terms; rows of one logit and temperature 0 are refused. */
  lt_err_t err = {0};
  float x[8] = {0.5f, -1, 2, 0, 1, 1, -2, 0.25f};
  int32_t bad[2] = {4, -1};
  gpu_buf_t *b = tbuf_f32(x, 8), *bg = tbuf_f32((const float *)bad, 2), *bl = tbuf_f32(NULL, 4);
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_atkd(c, gv(bl), gv(b), gv(b), gv(bg), gv(NULL), 2, 4, 1.0f, false, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *gl = tread_f32(bl, 4);
  for (int i = 0; i < 4; i++) cr_assert(isnan(gl[i]), "term %d of an out-of-range target: %g", i, gl[i]);
  free(gl);
  c = tbegin();
  cr_assert_eq(op_atkd(c, gv(bl), gv(b), gv(b), gv(bg), gv(NULL), 2, 1, 1.0f, false, &err), LT_E_INVALID, "n = 1");
  cr_assert_eq(op_atkd(c, gv(bl), gv(b), gv(b), gv(bg), gv(NULL), 2, 4, 0.0f, false, &err), LT_E_INVALID, "T = 0");
  tfinish(&c);
  gpu_buf_destroy(&b), gpu_buf_destroy(&bg), gpu_buf_destroy(&bl);
}

/* sum(g * layernorm(x) * w) in double (the bias adds a constant), the loss the LayerNorm backward differentiates. */
static double ln_loss(const double *x, const float *w, const float *g, uint32_t rows, uint32_t n, float eps) {
  double L = 0;
  for (uint32_t r = 0; r < rows; r++) {
    double mean = 0, var = 0;
    for (uint32_t i = 0; i < n; i++) mean += x[r * n + i];
    mean /= n;
    for (uint32_t i = 0; i < n; i++) var += (x[r * n + i] - mean) * (x[r * n + i] - mean);
    double inv = 1.0 / sqrt(var / n + eps);
    for (uint32_t i = 0; i < n; i++) L += g[r * n + i] * (x[r * n + i] - mean) * inv * w[i];
  }
  return L;
}

Test(grad, layernorm_backward) {
  /* Rows with a large common offset too: the backward centres them as the forward does. */
  uint32_t rows = 9, n = 301;
  float eps = 1e-5f;
  uint64_t seed = 19;
  float *x = talloc(rows * n), *w = talloc(n), *g = talloc(rows * n), *dx0 = talloc(rows * n), *dw0 = talloc(n),
        *db0 = talloc(n);
  trand(x, rows * n, -2, 2, &seed);
  for (uint32_t i = 0; i < n; i++) x[2 * n + i] += 30.0f;
  trand(w, n, 0.5, 1.5, &seed);
  trand(g, rows * n, -1, 1, &seed);
  trand(dx0, rows * n, -1, 1, &seed);
  trand(dw0, n, -1, 1, &seed);
  trand(db0, n, -1, 1, &seed);
  float *wdx = talloc(rows * n), *wdw = talloc(n), *wdb = talloc(n);
  memcpy(wdx, dx0, rows * n * 4), memcpy(wdw, dw0, n * 4), memcpy(wdb, db0, n * 4);
  ref_layernorm_backward(wdx, wdw, wdb, g, x, w, rows, n, eps);
  double *xd = malloc(rows * n * sizeof *xd);
  for (uint32_t i = 0; i < rows * n; i++) xd[i] = x[i];
  for (uint32_t i = 0; i < rows * n; i += 89) {
    double h = 1e-6, o = xd[i];
    xd[i] = o + h;
    double up = ln_loss(xd, w, g, rows, n, eps);
    xd[i] = o - h;
    double dn = ln_loss(xd, w, g, rows, n, eps);
    xd[i] = o;
    cr_assert(fabs((up - dn) / (2 * h) - (wdx[i] - dx0[i])) < 1e-5, "reference dx[%u]", i);
  }
  free(xd);
  gpu_buf_t *bx = tbuf_f32(x, rows * n), *bw = tbuf_f32(w, n), *bg = tbuf_f32(g, rows * n),
            *bdx = tbuf_f32(dx0, rows * n), *bdw = tbuf_f32(dw0, n), *bdb = tbuf_f32(db0, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_layernorm_backward(c, gv(bdx), gv(bdw), gv(bdb), gv(bg), gv(bx), gv(bw), rows, n, eps, true, &err),
               LT_OK, "%s", err.msg);
  tfinish(&c);
  float *gdx = tread_f32(bdx, rows * n), *gdw = tread_f32(bdw, n), *gdb = tread_f32(bdb, n);
  /* Row sums of n = 301 terms of magnitude <= 4 (dx); dw and db sum 9 rows. */
  tassert_close(gdx, wdx, rows * n, 1e-5 * n, 1e-4, "dx");
  tassert_close(gdw, wdw, n, 1e-5 * rows * 4, 1e-4, "dw");
  tassert_close(gdb, wdb, n, 1e-6 * rows, 1e-5, "db");
  free(gdx), free(gdw), free(gdb);
  /* Overwriting dx, without dw or db. */
  c = tbegin();
  cr_assert_eq(op_layernorm_backward(c, gv(bdx), gv(NULL), gv(NULL), gv(bg), gv(bx), gv(bw), rows, n, eps, false, &err),
               LT_OK, "%s", err.msg);
  tfinish(&c);
  for (uint32_t i = 0; i < rows * n; i++) wdx[i] -= dx0[i];
  gdx = tread_f32(bdx, rows * n);
  tassert_close(gdx, wdx, rows * n, 1e-5 * n, 1e-4, "dx (set)");
  free(gdx), free(x), free(w), free(g), free(dx0), free(dw0), free(db0), free(wdx), free(wdw), free(wdb);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bw), gpu_buf_destroy(&bg), gpu_buf_destroy(&bdx), gpu_buf_destroy(&bdw);
  gpu_buf_destroy(&bdb);
}

Test(grad, gelu_erf_and_its_backward) {
  uint32_t n = 4001;
  uint64_t seed = 31;
  float *x = talloc(n), *dy = talloc(n), *want = talloc(n), *wantd = talloc(n);
  trand(x, n, -8, 8, &seed);
  trand(dy, n, -1, 1, &seed);
  ref_gelu_erf(want, x, n);
  ref_gelu_erf_backward(wantd, dy, x, n);
  /* The reference's derivative against central differences of libm's GELU. */
  for (uint32_t i = 0; i < n; i += 37) {
    double h = 1e-5, v = x[i];
    double d =
        (0.5 * (v + h) * (1 + erf((v + h) / sqrt(2.0))) - 0.5 * (v - h) * (1 + erf((v - h) / sqrt(2.0)))) / (2 * h);
    cr_assert(fabs(d * dy[i] - wantd[i]) < 1e-6, "reference gelu'(%g)", v);
  }
  gpu_buf_t *bx = tbuf_f32(x, n), *bdy = tbuf_f32(dy, n), *by = tbuf_f32(NULL, n), *bd = tbuf_f32(NULL, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_gelu_erf(c, gv(by), gv(bx), n, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_gelu_erf_backward(c, gv(bd), gv(bdy), gv(bx), n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, n), *gotd = tread_f32(bd, n);
  /* The shader's erf is within 1.5e-7 of the true one: GELU moves by at most |x| / 2 * 1.5e-7 (6e-7 at |x| = 8),
   * plus f32 rounding of values up to 8 (5e-7). The derivative adds |x| phi(x) through exp (a few ulps). */
  tassert_close(got, want, n, 1.2e-6, 1e-6, "gelu_erf");
  tassert_close(gotd, wantd, n, 1e-6, 1e-5, "gelu_erf backward");
  free(got), free(gotd), free(x), free(dy), free(want), free(wantd);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bdy), gpu_buf_destroy(&by), gpu_buf_destroy(&bd);
}
