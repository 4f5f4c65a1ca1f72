/* Row-wise ops: RMSNorm, LayerNorm, softmax, argmax, top-k, log-sum-exp / cross-entropy, cosine similarity.
 * One workgroup per row (rows past 65535 use the y dimension of the grid); invocations stride over the row and
 * meet in a workgroup reduction (shaders/include/rows.glsl). The workgroup grows with the row so no invocation
 * loops past the op's loop budget (engine/ops/ops.def); rows too wide even for the largest workgroup are refused. */
#include "engine/ops/ops_rows.h"

#include <stdio.h>

/* Smallest workgroup used for narrow rows (a subgroup on most GPUs). */
#define ROWS_WG_MIN 32u
/* Per-invocation iterations above which a wide row gets a bigger workgroup, for parallelism, when allowed. */
#define ROWS_ITERS_WIDE 64u
/* Shared memory per invocation in rows.glsl: a vec4 and a uvec2. */
#define ROWS_SHARED_PER_INV 24u
/* Top-k runs one invocation per row when k times the row's loads stays within this (MoE routing rows). */
#define TOPK_PER_INVOCATION_ITERS 512u

static bool g_force_tree;

void op_rows_force_tree(bool on) { g_force_tree = on; }

static uint32_t ceil_div(uint32_t a, uint32_t b) { return a / b + (a % b != 0); }

uint32_t op_rows_wg(op_id_t id, uint32_t n, uint32_t passes, uint32_t max_invocations, uint32_t max_shared) {
  uint32_t cap = 1;
  while (cap * 2 <= max_invocations && cap * 2 <= 1024 && cap * 2 * ROWS_SHARED_PER_INV <= max_shared) cap *= 2;
  uint32_t wg = op_wg(id) < cap ? op_wg(id) : cap;
  while (wg > ROWS_WG_MIN && wg / 2 >= n) wg /= 2;
  while (wg * 2 <= cap && ceil_div(n, wg) > ROWS_ITERS_WIDE) wg *= 2;
  return (uint64_t)passes * ceil_div(n, wg) <= op_loop_budget(id) ? wg : 0;
}

/* True when the rows can be read as vec4 (rows.glsl VEC4): n a multiple of 4 and every row view 16-byte aligned. */
static bool rows_vec4(uint32_t n, const gpu_view_t *views, uint32_t n_views) {
  if (n % 4) return false;
  for (uint32_t i = 0; i < n_views; i++)
    if (views[i].off % 16) return false;
  return true;
}

/* Fetches the pipeline of a row op for rows of n floats read `passes` times, as vec4 when vec4. NULL with err. */
static gpu_pipeline_t *rows_pipeline(gpu_cmd_t *c, op_id_t id, const char *what, uint32_t n, uint32_t passes, bool vec4,
                                     lt_err_t *err) {
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  uint32_t wg = op_rows_wg(id, vec4 ? n / 4 : n, passes, caps->max_wg_invocations, caps->max_shared);
  if (wg == 0) {
    lt_fail(err, LT_E_LIMIT,
            "%s: rows of %u elements are too wide: even the largest workgroup would loop more than %u times per "
            "invocation (lavapipe silently stops loops near 65,535); split the row",
            what, n, op_loop_budget(id));
    return NULL;
  }
  char defines[64];
  snprintf(defines, sizeof defines, "%s%s", vec4 ? "VEC4=1;" : "", g_force_tree ? "ROWS_NO_SUBGROUP=1" : "");
  return op_pipeline(g, id, defines, &wg, 1, err);
}

/* The grid for one workgroup per row. */
static void rows_grid(uint32_t rows, uint32_t *gx, uint32_t *gy) { op_grid_1d(rows, 1, gx, gy); }

static lt_status_t norm(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, gpu_view_t b, bool layernorm,
                        uint32_t rows, uint32_t n, float eps, lt_err_t *err) {
  const char *what = layernorm ? "layernorm" : "rmsnorm";
  if (rows == 0) return LT_OK;
  if (n == 0) return lt_fail(err, LT_E_INVALID, "%s: rows of 0 elements", what);
  /* RMSNorm binds w in the place of the bias, which it never reads. */
  gpu_view_t v[4] = {y, x, w, layernorm ? b : w};
  gpu_pipeline_t *p = rows_pipeline(c, OP_NORM, what, n, layernorm ? 3 : 2, rows_vec4(n, v, 4), err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_norm_t pc = {.rows = rows, .n = n, .eps = eps, .layernorm = layernorm};
  uint64_t rn = 4ull * rows * n;
  uint64_t bytes[4] = {rn, rn, 4ull * n, 4ull * n};
  bool wr[4] = {true, false, false, false};
  uint32_t gx, gy;
  rows_grid(rows, &gx, &gy);
  return op_dispatch(c, p, OP_NORM, v, bytes, wr, 4, &pc, gx, gy, 1, err);
}

lt_status_t op_rmsnorm(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, uint32_t rows, uint32_t n, float eps,
                       lt_err_t *err) {
  return norm(c, y, x, w, w, false, rows, n, eps, err);
}

lt_status_t op_layernorm(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, gpu_view_t b, uint32_t rows,
                         uint32_t n, float eps, lt_err_t *err) {
  return norm(c, y, x, w, b, true, rows, n, eps, err);
}

lt_status_t op_softmax(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, uint32_t rows, uint32_t n, lt_err_t *err) {
  if (rows == 0) return LT_OK;
  if (n == 0) return lt_fail(err, LT_E_INVALID, "softmax: rows of 0 elements");
  gpu_view_t v[2] = {y, x};
  gpu_pipeline_t *p = rows_pipeline(c, OP_SOFTMAX, "softmax", n, 2, rows_vec4(n, v, 2), err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_rows_t pc = {.rows = rows, .n = n};
  uint64_t bytes[2] = {4ull * rows * n, 4ull * rows * n};
  bool wr[2] = {true, false};
  uint32_t gx, gy;
  rows_grid(rows, &gx, &gy);
  return op_dispatch(c, p, OP_SOFTMAX, v, bytes, wr, 2, &pc, gx, gy, 1, err);
}

lt_status_t op_argmax(gpu_cmd_t *c, gpu_view_t idx, gpu_view_t x, uint32_t rows, uint32_t n, lt_err_t *err) {
  if (rows == 0) return LT_OK;
  if (n == 0) return lt_fail(err, LT_E_INVALID, "argmax: rows of 0 elements");
  gpu_view_t v[2] = {idx, x};
  gpu_pipeline_t *p = rows_pipeline(c, OP_ARGMAX, "argmax", n, 1, rows_vec4(n, &x, 1), err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_rows_t pc = {.rows = rows, .n = n};
  uint64_t bytes[2] = {4ull * rows, 4ull * rows * n};
  bool wr[2] = {true, false};
  uint32_t gx, gy;
  rows_grid(rows, &gx, &gy);
  return op_dispatch(c, p, OP_ARGMAX, v, bytes, wr, 2, &pc, gx, gy, 1, err);
}

lt_status_t op_topk(gpu_cmd_t *c, gpu_view_t idx, gpu_view_t val, gpu_view_t x, uint32_t rows, uint32_t n, uint32_t k,
                    lt_err_t *err) {
  if (k < 1 || k > OP_TOPK_MAX) return lt_fail(err, LT_E_INVALID, "topk: k = %u, must be 1..%u", k, OP_TOPK_MAX);
  if (k > n) return lt_fail(err, LT_E_INVALID, "topk: k = %u exceeds the row width %u", k, n);
  if (rows == 0) return LT_OK;
  bool vec4 = rows_vec4(n, &x, 1);
  /* Narrow rows (MoE routing): one invocation per row, k * n / (4 if vec4) iterations each, no barriers. */
  bool per_inv = (uint64_t)k * (vec4 ? n / 4 : n) <= TOPK_PER_INVOCATION_ITERS;
  gpu_pipeline_t *p = per_inv ? op_pipeline(gpu_cmd_gpu(c), OP_TOPK,
                                            vec4 ? "VEC4=1;ROW_PER_INVOCATION=1" : "ROW_PER_INVOCATION=1", NULL, 0, err)
                              : rows_pipeline(c, OP_TOPK, "topk", n, k, vec4, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_rows_t pc = {.rows = rows, .n = n, .k = k};
  gpu_view_t v[3] = {idx, val, x};
  uint64_t bytes[3] = {4ull * rows * k, 4ull * rows * k, 4ull * rows * n};
  bool wr[3] = {true, true, false};
  uint32_t gx, gy;
  if (per_inv)
    op_grid_1d(rows, op_wg(OP_TOPK), &gx, &gy);
  else
    rows_grid(rows, &gx, &gy);
  return op_dispatch(c, p, OP_TOPK, v, bytes, wr, 3, &pc, gx, gy, 1, err);
}

/* The log-sum-exp dispatch: mode 0 plain, 1 with targets (and nll), 2 with a scale per row in `extra`. */
static lt_status_t lse_rows(gpu_cmd_t *c, gpu_view_t lse, gpu_view_t nll, gpu_view_t x, gpu_view_t extra, uint32_t mode,
                            uint32_t rows, uint32_t n, lt_err_t *err) {
  if (rows == 0) return LT_OK;
  if (n == 0) return lt_fail(err, LT_E_INVALID, "logsumexp: rows of 0 elements");
  gpu_pipeline_t *p = rows_pipeline(c, OP_LSE, "logsumexp", n, 1, rows_vec4(n, &x, 1), err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_rows_t pc = {.rows = rows, .n = n, .has_target = mode};
  /* The shader touches binding 1 only with targets and binding 3 only with targets or scales: lse and x stand in
   * for them otherwise (4 bytes each). */
  gpu_view_t v[4] = {lse, mode == 1 ? nll : lse, x, mode ? extra : x};
  uint64_t bytes[4] = {4ull * rows, mode == 1 ? 4ull * rows : 4, 4ull * rows * n, mode ? 4ull * rows : 4};
  bool wr[4] = {true, mode == 1, false, false};
  uint32_t gx, gy;
  rows_grid(rows, &gx, &gy);
  return op_dispatch(c, p, OP_LSE, v, bytes, wr, 4, &pc, gx, gy, 1, err);
}

lt_status_t op_logsumexp(gpu_cmd_t *c, gpu_view_t lse, gpu_view_t nll, gpu_view_t x, gpu_view_t targets, uint32_t rows,
                         uint32_t n, lt_err_t *err) {
  if (!nll.buf != !targets.buf)
    return lt_fail(err, LT_E_INVALID, "logsumexp: targets and nll must both have buffers or both be empty");
  return lse_rows(c, lse, nll, x, targets, targets.buf ? 1 : 0, rows, n, err);
}

lt_status_t op_logsumexp_scaled(gpu_cmd_t *c, gpu_view_t lse, gpu_view_t x, gpu_view_t scales, uint32_t rows,
                                uint32_t n, lt_err_t *err) {
  if (!scales.buf) return lt_fail(err, LT_E_INVALID, "logsumexp: no scales");
  return lse_rows(c, lse, (gpu_view_t){0}, x, scales, 2, rows, n, err);
}

lt_status_t op_cosine(gpu_cmd_t *c, gpu_view_t out, gpu_view_t a, gpu_view_t b, uint32_t rows, uint32_t n,
                      lt_err_t *err) {
  if (rows == 0) return LT_OK;
  if (n == 0) return lt_fail(err, LT_E_INVALID, "cosine: rows of 0 elements");
  gpu_view_t v[3] = {out, a, b};
  gpu_pipeline_t *p = rows_pipeline(c, OP_COSINE, "cosine", n, 1, rows_vec4(n, v + 1, 2), err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_rows_t pc = {.rows = rows, .n = n};
  uint64_t bytes[3] = {4ull * rows, 4ull * rows * n, 4ull * rows * n};
  bool wr[3] = {true, false, false};
  uint32_t gx, gy;
  rows_grid(rows, &gx, &gy);
  return op_dispatch(c, p, OP_COSINE, v, bytes, wr, 3, &pc, gx, gy, 1, err);
}
