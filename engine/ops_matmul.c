/* Matrix multiply y[M,N] (+)= x[M,K] . w[N,K]^T: a register-blocked tiled GEMM (shaders/matmul.comp) and a GEMV
 * for few rows (shaders/gemv.comp). Both walk K in chunks, one dispatch each, so no invocation loops too long. */
#include <stdio.h>

#include "engine/ops.h"

/* Loop iterations one invocation may run in one dispatch. lavapipe silently stops every loop of an invocation
 * after about 65,535 iterations in total (nested ones included); a quarter of that leaves a wide margin. */
#define LOOP_BUDGET 16384u

/* AUTO takes the GEMV kernel up to this many rows of x (measured on lavapipe: see bench/matmul.c). */
#define GEMV_MAX_AUTO_M 4u

/* Rows of x one GEMV workgroup handles at most (its partial sums live in registers). */
#define GEMV_MAX_MR 4u

/* GEMM tiling (specialisation constants 1..5 of matmul.comp): a bm x bn tile of y per workgroup, bk-wide K tiles
 * in shared memory, tm x tn outputs per invocation; (bm/tm) * (bn/tn) invocations. */
typedef struct gemm_cfg {
  uint32_t bm, bn, bk, tm, tn;
} gemm_cfg_t;

/* GEMV shape (workgroup size and specialisation constants 1..2 of gemv.comp). */
typedef struct gemv_cfg {
  uint32_t wg, rows, mr;
} gemv_cfg_t;

static gemm_cfg_t gemm_cfg(const gpu_caps_t *caps) {
  (void)caps;
  return (gemm_cfg_t){.bm = 64, .bn = 64, .bk = 16, .tm = 8, .tn = 8};
}

static gemv_cfg_t gemv_cfg(const gpu_caps_t *caps, uint32_t M) {
  (void)caps;
  return (gemv_cfg_t){.wg = 128, .rows = 2, .mr = M < GEMV_MAX_MR ? M : GEMV_MAX_MR};
}

static uint32_t ceil_div(uint64_t a, uint64_t b) { return (uint32_t)((a + b - 1) / b); }

/* Loop iterations of one matmul.comp invocation: (per K tile, fixed), counted as if nothing were unrolled. */
static void gemm_loop_iters(const gemm_cfg_t *c, uint32_t kv, uint32_t *per_tile, uint32_t *fixed) {
  uint32_t wg = (c->bm / c->tm) * (c->bn / c->tn);
  *per_tile = 1 + ceil_div((uint64_t)c->bm * c->bk / kv, wg) + ceil_div((uint64_t)c->bn * c->bk / kv, wg) +
              c->bk / 4 * (1 + c->tm + c->tn * (1 + c->tm));
  *fixed = c->tm * c->tn + c->tm * (1 + c->tn);
}

/* Loop iterations of one gemv.comp invocation: (per step of wg * kv K-elements, fixed), as above. */
static void gemv_loop_iters(const gemv_cfg_t *c, uint32_t *per_step, uint32_t *fixed) {
  uint32_t pairs = c->mr * c->rows;
  *per_step = 1 + c->mr + c->rows * (1 + c->mr);
  *fixed = 2 * pairs + ceil_div(pairs, c->wg) * (1 + c->wg);
}

/* Checks one operand: aligned view, at most one binding's range. */
static lt_status_t check_operand(const gpu_caps_t *caps, const char *name, gpu_view_t v, uint64_t bytes,
                                 const char *shape, lt_err_t *err) {
  if (!v.buf) return lt_fail(err, LT_E_INVALID, "op_matmul: %s has no buffer", name);
  if (v.off % caps->min_storage_align)
    return lt_fail(err, LT_E_INVALID, "op_matmul: %s offset %llu is not a multiple of %llu bytes", name,
                   (unsigned long long)v.off, (unsigned long long)caps->min_storage_align);
  if (bytes > caps->max_storage_range)
    return lt_fail(err, LT_E_LIMIT,
                   "op_matmul: %s (%s) is %llu bytes, more than one binding may cover (maxStorageBufferRange %llu); "
                   "split it by rows and call once per piece",
                   name, shape, (unsigned long long)bytes, (unsigned long long)caps->max_storage_range);
  return LT_OK;
}

lt_status_t op_matmul_path(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, lt_dtype_t wtype, uint32_t M,
                           uint32_t N, uint32_t K, bool accumulate, matmul_path_t path, lt_err_t *err) {
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  if (wtype != LT_F32 && wtype != LT_F16)
    return lt_fail(err, LT_E_INVALID, "op_matmul: w must be f32 or f16, not %s", lt_dtype_str(wtype));
  if (wtype == LT_F16 && !caps->storage16)
    return lt_fail(err, LT_E_UNSUPPORTED, "op_matmul: f16 weights need 16-bit storage buffers, which %s lacks",
                   caps->name);
  if (path != MATMUL_AUTO && path != MATMUL_GEMM && path != MATMUL_GEMV)
    return lt_fail(err, LT_E_INVALID, "op_matmul: unknown path %d", (int)path);
  if (M == 0 || N == 0) return LT_OK;
  if (K == 0 && accumulate) return LT_OK; /* y += nothing */

  uint64_t ws = lt_dtype_size(wtype);
  uint64_t xb = 4ull * M * K, wb = ws * N * K, yb = 4ull * M * N;
  char shape[96];
  lt_status_t st;
  snprintf(shape, sizeof shape, "[%u,%u] f32", M, K);
  if ((st = check_operand(caps, "x", x, xb, shape, err)) != LT_OK) return st;
  snprintf(shape, sizeof shape, "[%u,%u] %s", N, K, lt_dtype_str(wtype));
  if ((st = check_operand(caps, "w", w, wb, shape, err)) != LT_OK) return st;
  snprintf(shape, sizeof shape, "[%u,%u] f32", M, N);
  if ((st = check_operand(caps, "y", y, yb, shape, err)) != LT_OK) return st;

  bool gemv = path == MATMUL_GEMV || (path == MATMUL_AUTO && M <= GEMV_MAX_AUTO_M);
  bool vec4 = K % 4 == 0;
  uint32_t kv = vec4 ? 4 : 1;
  char defines[32];
  snprintf(defines, sizeof defines, "W_F16=%d;VEC4=%d", wtype == LT_F16, vec4);

  op_id_t id;
  uint32_t spec[6], n_spec, gx, gy, gz = 1, k_chunk;
  if (gemv) {
    gemv_cfg_t v = gemv_cfg(caps, M);
    uint32_t per_step, fixed, groups = ceil_div(N, v.rows);
    gemv_loop_iters(&v, &per_step, &fixed);
    id = OP_GEMV;
    spec[0] = v.wg, spec[1] = v.rows, spec[2] = v.mr, n_spec = 3;
    gx = groups < caps->max_wg_count[0] ? groups : caps->max_wg_count[0];
    gz = ceil_div(groups, gx);
    gy = ceil_div(M, v.mr);
    /* Whole steps, rounded down to a multiple of 4 so every chunk but the last keeps K-quads whole. */
    k_chunk = (LOOP_BUDGET - fixed) / per_step * v.wg * kv;
  } else {
    gemm_cfg_t t = gemm_cfg(caps);
    uint32_t per_tile, fixed;
    gemm_loop_iters(&t, kv, &per_tile, &fixed);
    id = OP_MATMUL;
    spec[0] = (t.bm / t.tm) * (t.bn / t.tn), spec[1] = t.bm, spec[2] = t.bn, spec[3] = t.bk, spec[4] = t.tm,
    spec[5] = t.tn, n_spec = 6;
    gx = ceil_div(N, t.bn);
    gy = ceil_div(M, t.bm);
    k_chunk = (LOOP_BUDGET - fixed) / per_tile * t.bk;
  }
  if (gx > caps->max_wg_count[0] || gy > caps->max_wg_count[1] || gz > caps->max_wg_count[2])
    return lt_fail(err, LT_E_LIMIT, "op_matmul: %ux%ux%u needs %ux%ux%u workgroups, more than the device allows", M,
                   N, K, gx, gy, gz);
  gpu_pipeline_t *p = op_pipeline(g, id, defines, spec, n_spec, err);
  if (!p) return err ? err->code : LT_E_SHADER;

  gpu_view_t views[3] = {y, x, w};
  uint64_t bytes[3] = {yb, xb, wb};
  bool writes[3] = {true, false, false};
  pc_matmul_t pc = {.M = M, .N = N, .K = K, .x_stride = K, .w_stride = K, .y_stride = N};
  /* The first chunk overwrites y unless asked to accumulate; later chunks add to it. K == 0 is one empty chunk
   * that writes zeros. */
  uint32_t k_base = 0;
  do {
    pc.k_base = k_base;
    pc.k_len = K - k_base < k_chunk ? K - k_base : k_chunk;
    pc.accumulate = accumulate || k_base > 0;
    if ((st = op_dispatch(c, p, id, views, bytes, writes, 3, &pc, gx, gy, gz, err)) != LT_OK) return st;
    k_base += pc.k_len;
  } while (k_base < K);
  return LT_OK;
}

lt_status_t op_matmul(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, lt_dtype_t wtype, uint32_t M,
                      uint32_t N, uint32_t K, bool accumulate, lt_err_t *err) {
  return op_matmul_path(c, y, x, w, wtype, M, N, K, accumulate, MATMUL_AUTO, err);
}

lt_status_t op_matmul_strided(gpu_cmd_t *c, gpu_view_t y, uint32_t y_stride, gpu_view_t x, uint32_t x_stride,
                              gpu_view_t w, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t K, bool accumulate,
                              lt_err_t *err) {
  if (y_stride != N || x_stride != K)
    return lt_fail(err, LT_E_UNSUPPORTED, "op_matmul_strided: strides other than the row widths are not supported yet");
  return op_matmul_path(c, y, x, w, wtype, M, N, K, accumulate, MATMUL_AUTO, err);
}
