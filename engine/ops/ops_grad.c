/* Backward passes and the optimiser (engine/ops/ops_grad.h). */
#include "engine/ops/qblock.h"
#include "engine/ops/ops_grad.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ops_rows.h"
#include "engine/ops/quant.h"

/* Most elements one 1D dispatch covers: flat_index() grids reach 65535 x 65535 workgroups, but 32-bit indices
 * end first. */
#define MAX_1D (UINT32_MAX / 2u)

static uint32_t ceil_div(uint64_t a, uint32_t b) { return (uint32_t)((a + b - 1) / b); }

/* ---- the backward matrix product (matmul_grad.comp) ----
 * Neither gradient is the forward kernel's computation: that one sums along the rows of both operands (x[M,K] .
 * w[N,K]^T), while dX = dY . W sums down the columns of W and dW = dY^T . X down the columns of both. The backward
 * kernel sums outer products along r, reading w by rows with vector loads, and reads its other operand through
 * two strides, which covers both gradients. */

/* Tiling (specialisation constants 1..4 of matmul_grad.comp): a bm x bn tile of y per workgroup, tm x tn sums per
 * invocation. CPU drivers run each lane's loads one by one, so what pays there is many sums per load (16 x 16, as
 * the forward direct kernel); GPUs keep 8 x 8 in registers. */
typedef struct grad_cfg {
  uint32_t bm, bn, tm, tn;
} grad_cfg_t;

static const grad_cfg_t GRAD_CPU = {.bm = 128, .bn = 128, .tm = 16, .tn = 16};
static const grad_cfg_t GRAD_GPU = {.bm = 64, .bn = 64, .tm = 8, .tn = 8};

/* y[M,N] (+)= sum_r a(m, r) . w[r, n] over r < R, with a(m, r) = a[m * a_m + r * a_r]; y and a f32, w [R, N] of
 * wtype (f32, f16, bf16) or, when q is not NULL, the quantised q. The sum over R goes in chunks under the loop
 * budget, in order. */
static lt_status_t grad_gemm(gpu_cmd_t *c, const char *what, gpu_view_t y, gpu_view_t a, uint32_t a_m, uint32_t a_r,
                             gpu_view_t w, lt_dtype_t wtype, const qmat_view_t *q, uint32_t M, uint32_t N, uint32_t R,
                             bool accumulate, lt_err_t *err) {
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  uint32_t bits = 0, n_groups = 0;
  bool blocks = q && qblock_is(q->wtype);
  if (blocks) {
    bits = 8;
    if (N % qblock_info(q->wtype)->block)
      return lt_fail(err, LT_E_INVALID, "%s: rows of %u are no multiple of %s's %u-element blocks", what, N,
                     lt_dtype_str(q->wtype), qblock_info(q->wtype)->block);
  } else if (q) {
    if ((q->wtype != LT_I8 && q->wtype != LT_I4) || (q->stype != LT_F16 && q->stype != LT_F32))
      return lt_fail(err, LT_E_INVALID, "%s: quantised weight %s with %s scales (want i8 / i4 with f16 / f32)", what,
                     lt_dtype_str(q->wtype), lt_dtype_str(q->stype));
    bits = q->wtype == LT_I4 ? 4 : 8;
    if (!quant_params_ok(bits, q->group))
      return lt_fail(err, LT_E_INVALID, "%s: group %u is not a positive multiple of %u", what, q->group,
                     QUANT_COL_ALIGN);
    if (q->stype == LT_F16 && !caps->storage16)
      return lt_fail(err, LT_E_UNSUPPORTED, "%s: f16 scales need 16-bit storage buffers, which %s lacks", what,
                     caps->name);
    n_groups = quant_groups(N, q->group);
  } else if (wtype != LT_F32 && wtype != LT_F16 && wtype != LT_BF16) {
    return lt_fail(err, LT_E_INVALID, "%s: weight dtype %s (want f32, f16 or bf16)", what, lt_dtype_str(wtype));
  }
  bool w16 = !q && (wtype == LT_F16 || wtype == LT_BF16);
  if (w16 && N % 8 != 0 && !caps->storage16)
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: %s weights with rows not a multiple of 8 need 16-bit storage buffers",
                   what, lt_dtype_str(wtype));
  if (M == 0 || N == 0 || (R == 0 && accumulate)) return LT_OK;
  uint64_t yb = 4ull * M * N, ab = 4ull * ((uint64_t)(M - 1) * a_m + (uint64_t)(R ? R - 1 : 0) * a_r + 1);
  uint64_t row_bytes = blocks ? qblock_row_bytes(q->wtype, N) : q ? quant_row_bytes(bits, N) : 0;
  /* Block rows need not end on a word: the shader reads whole words, the last one partly. */
  uint64_t wb = blocks ? ((uint64_t)R * row_bytes + 3) / 4 * 4
                : q    ? (uint64_t)R * row_bytes
                       : (uint64_t)R * N * lt_dtype_size(wtype);
  uint64_t sb = blocks ? wb : q ? (uint64_t)R * n_groups * lt_dtype_size(q->stype) : 0;
  /* Elements of w per load along N. The plain kernel's vector loads declare a as vec4s too, so its binding is
   * rounded up to whole vec4s, which the buffer must hold (a partly bound vec4 may read as zeros). */
  uint32_t kv = q ? 8 : w16 ? (N % 8 == 0 ? 8 : 1) : (N % 4 == 0 ? 4 : 1);
  if (!q && kv > 1) {
    uint64_t ab16 = (ab + 15) & ~15ull;
    if (ab16 <= gpu_buf_size(a.buf) - a.off && ab16 <= caps->max_storage_range)
      ab = ab16;
    else
      kv = 1;
  }
  char defines[64];
  if (q)
    snprintf(defines, sizeof defines, "BITS=%u;S_F16=%d;GQ=%d", bits, !blocks && q->stype == LT_F16,
             blocks ? (int)q->wtype : 0);
  else
    snprintf(defines, sizeof defines, "W_F16=%d;W_BF16=%d;KV=%u", wtype == LT_F16, wtype == LT_BF16, kv);
  const grad_cfg_t *t = caps->kind == GPU_KIND_CPU ? &GRAD_CPU : &GRAD_GPU;
  uint32_t spec[5] = {(t->bm / t->tm) * (t->bn / t->tn), t->bm, t->bn, t->tm, t->tn};
  uint32_t gx = ceil_div(N, t->bn), gy = ceil_div(M, t->bm);
  if (gx > caps->max_wg_count[0] || gy > caps->max_wg_count[1])
    return lt_fail(err, LT_E_LIMIT, "%s: a %ux%u output needs %ux%u workgroups, more than the device allows", what, M,
                   N, gx, gy);
  op_id_t id = q ? OP_MATMUL_GRAD_Q : OP_MATMUL_GRAD;
  gpu_pipeline_t *p = op_pipeline(g, id, defines, spec, 5, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  /* The block formats carry their scales: their shader binds the blocks in the scales' slot too, unread. */
  gpu_view_t views[4] = {y, a, q ? q->q : w, blocks ? q->q : q ? q->scales : w};
  uint64_t bytes[4] = {yb, ab, wb, sb};
  bool writes[4] = {true, false, false, false};
  pc_matmul_grad_t pc = {.M = M,
                         .N = N,
                         .K = R,
                         .x_stride = a_m,
                         .x_rstride = a_r,
                         .w_stride = N,
                         .y_stride = N,
                         .kp = quant_padded_cols(N),
                         .n_groups = n_groups,
                         .group = q ? q->group : 0,
                         .row_bytes = (uint32_t)row_bytes};
  /* The r loop is the kernel's only loop that is not unrolled: one iteration per row of w. */
  op_loop_cost_t cost = {0, 1, 1};
  return op_dispatch_k(c, p, id, views, bytes, writes, q ? 4 : 3, &pc, cost, accumulate, gx, gy, 1, err);
}

lt_status_t op_matmul_dx(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, gpu_view_t w, lt_dtype_t wtype, uint32_t M,
                         uint32_t N, uint32_t K, bool accumulate, lt_err_t *err) {
  /* dx[m, k] = sum_n dy[m, n] w[n, k]: r runs along the rows of dy. */
  return grad_gemm(c, "matmul backward (dx)", dx, dy, N, 1, w, wtype, NULL, M, K, N, accumulate, err);
}

lt_status_t op_matmul_dx_q(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, const qmat_view_t *w, uint32_t M, uint32_t N,
                           uint32_t K, bool accumulate, lt_err_t *err) {
  return grad_gemm(c, "matmul backward (dx)", dx, dy, N, 1, w->q, w->wtype, w, M, K, N, accumulate, err);
}

lt_status_t op_matmul_dw(gpu_cmd_t *c, gpu_view_t dw, gpu_view_t dy, gpu_view_t x, uint32_t M, uint32_t N, uint32_t K,
                         bool accumulate, lt_err_t *err) {
  /* dw[n, k] = sum_m dy[m, n] x[m, k]: r runs down the columns of dy and the rows of x. */
  return grad_gemm(c, "matmul backward (dw)", dw, dy, 1, N, x, LT_F32, NULL, N, K, M, accumulate, err);
}

/* ---- RMSNorm ---- */

/* RMSNorm's backward, or LayerNorm's with db (db.buf NULL: none) when ln. */
static lt_status_t norm_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dw, gpu_view_t db, gpu_view_t g, gpu_view_t x,
                                 gpu_view_t w, uint32_t rows, uint32_t n, float eps, bool acc_dx, bool ln,
                                 lt_err_t *err) {
  if (rows == 0 || n == 0) return LT_OK;
  gpu_t *gp = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(gp);
  uint32_t wg = op_rows_wg(OP_NORM_BW, n, 2, caps->max_wg_invocations, caps->max_shared);
  if (wg == 0) return lt_fail(err, LT_E_LIMIT, "rmsnorm backward: rows of %u elements are too wide", n);
  gpu_pipeline_t *p = op_pipeline(gp, OP_NORM_BW, NULL, &wg, 1, err);
  uint64_t rinv_n = (uint64_t)rows * (ln ? 2 : 1);
  gpu_buf_t *rinv = p ? gpu_cmd_scratch(c, rinv_n * 4, err) : NULL;
  if (!p || !rinv) return err ? err->code : LT_E_SHADER;
  uint64_t rn = (uint64_t)rows * n * 4;
  gpu_view_t v[6] = {dx, dw.buf ? dw : dx, g, x, w, gv(rinv)};
  uint64_t bytes[6] = {rn, dw.buf ? (uint64_t)n * 4 : rn, rn, rn, (uint64_t)n * 4, rinv_n * 4};
  bool wr[6] = {true, true, false, false, false, true};
  pc_norm_bw_t pc = {.rows = rows, .n = n, .eps = eps, .mode = 0, .accumulate = acc_dx, .layernorm = ln};
  uint32_t gx, gy;
  op_grid_1d(rows, 1, &gx, &gy);
  lt_status_t st = op_dispatch(c, p, OP_NORM_BW, v, bytes, wr, 6, &pc, gx, gy, 1, err);
  if (st != LT_OK || (!dw.buf && !db.buf)) return st;
  /* dw (mode 1) and db (mode 2): one invocation per column over the rows, in chunks of the loop budget. */
  uint32_t cwg = op_wg(OP_NORM_BW);
  p = op_pipeline(gp, OP_NORM_BW, NULL, &cwg, 1, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  op_grid_1d(n, cwg, &gx, &gy);
  for (uint32_t mode = 1; mode <= 2 && st == LT_OK; mode++) {
    gpu_view_t out = mode == 1 ? dw : db;
    if (!out.buf) continue;
    v[1] = out;
    bytes[1] = (uint64_t)n * 4;
    for (uint32_t r0 = 0; r0 < rows && st == LT_OK; r0 += op_loop_budget(OP_NORM_BW)) {
      uint32_t len = rows - r0 < op_loop_budget(OP_NORM_BW) ? rows - r0 : op_loop_budget(OP_NORM_BW);
      pc = (pc_norm_bw_t){
          .rows = rows, .n = n, .eps = eps, .mode = mode, .r_base = r0, .r_len = len, .accumulate = 1, .layernorm = ln};
      st = op_dispatch(c, p, OP_NORM_BW, v, bytes, wr, 6, &pc, gx, gy, 1, err);
    }
  }
  return st;
}

lt_status_t op_layernorm_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dw, gpu_view_t db, gpu_view_t g, gpu_view_t x,
                                  gpu_view_t w, uint32_t rows, uint32_t n, float eps, bool acc_dx, lt_err_t *err) {
  return norm_backward(c, dx, dw, db, g, x, w, rows, n, eps, acc_dx, true, err);
}

lt_status_t op_rmsnorm_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dw, gpu_view_t g, gpu_view_t x, gpu_view_t w,
                                uint32_t rows, uint32_t n, float eps, lt_err_t *err) {
  return norm_backward(c, dx, dw, gv(NULL), g, x, w, rows, n, eps, true, false, err);
}

lt_status_t op_rmsnorm_backward_set(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dw, gpu_view_t g, gpu_view_t x,
                                    gpu_view_t w, uint32_t rows, uint32_t n, float eps, lt_err_t *err) {
  return norm_backward(c, dx, dw, gv(NULL), g, x, w, rows, n, eps, false, false, err);
}

/* ---- attention ---- */

static lt_status_t attn_check(uint32_t T, uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim, lt_err_t *err) {
  if (n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads)
    return lt_fail(err, LT_E_INVALID, "attention: %u heads over %u KV heads", n_heads, n_kv_heads);
  if (head_dim == 0 || head_dim > 256)
    return lt_fail(err, LT_E_UNSUPPORTED, "training attention: head size %u (1..256 supported)", head_dim);
  if (T > op_loop_budget(OP_ATTN_TRAIN))
    return lt_fail(err, LT_E_LIMIT, "training attention: sequences of %u tokens exceed %u (one loop per key)", T,
                   op_loop_budget(OP_ATTN_TRAIN));
  return LT_OK;
}

/* Records one mode of attn_train.comp over `items` invocations. */
static lt_status_t attn_train(gpu_cmd_t *c, gpu_view_t *v, uint32_t T, uint32_t H, uint32_t KV, uint32_t hd,
                              pc_attn_train_t *pc, uint64_t items, lt_err_t *err) {
  char def[24];
  snprintf(def, sizeof def, "HD=%u", hd);
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_ATTN_TRAIN, def, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  uint64_t qn = (uint64_t)T * H * hd * 4, kn = (uint64_t)T * KV * hd * 4, ln = (uint64_t)T * H * 4;
  uint64_t bytes[9] = {pc->mode == 2 ? kn : qn, pc->mode == 2 ? kn : ln, qn, kn, kn, qn, qn, ln, ln};
  bool w[9] = {true, true, false, false, false, false, false, false, false};
  uint32_t gx, gy;
  op_grid_1d(items, op_wg(OP_ATTN_TRAIN), &gx, &gy);
  return op_dispatch(c, p, OP_ATTN_TRAIN, v, bytes, w, 9, pc, gx, gy, 1, err);
}

/* The push constants every mode of attn_train.comp shares (softcap <= 0: none). */
static pc_attn_train_t attn_train_pc(uint32_t T, uint32_t n_heads, uint32_t n_kv_heads, uint32_t window, float scale,
                                     float softcap, uint32_t mode) {
  bool bidir = window == ATTN_BIDIRECTIONAL;
  return (pc_attn_train_t){.T = T,
                           .n_heads = n_heads,
                           .n_kv_heads = n_kv_heads,
                           .scale = scale,
                           .mode = mode,
                           .window = bidir ? 0 : window,
                           .softcap = softcap > 0 ? softcap : 0.0f,
                           .bidir = bidir};
}

lt_status_t op_attention_lse(gpu_cmd_t *c, gpu_view_t out, gpu_view_t lse, gpu_view_t q, gpu_view_t k, gpu_view_t v,
                             uint32_t T, uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim, uint32_t window,
                             float scale, float softcap, lt_err_t *err) {
  lt_status_t st = attn_check(T, n_heads, n_kv_heads, head_dim, err);
  if (st != LT_OK || T == 0) return st;
  /* Modes 0 reads none of bindings 5..8: q stands in for them. */
  gpu_view_t views[9] = {out, lse, q, k, v, q, q, lse, lse};
  pc_attn_train_t pc = attn_train_pc(T, n_heads, n_kv_heads, window, scale, softcap, 0);
  return attn_train(c, views, T, n_heads, n_kv_heads, head_dim, &pc, (uint64_t)T * n_heads, err);
}

lt_status_t op_attention_backward(gpu_cmd_t *c, gpu_view_t dq, gpu_view_t dk, gpu_view_t dv, gpu_view_t q, gpu_view_t k,
                                  gpu_view_t v, gpu_view_t out, gpu_view_t dout, gpu_view_t lse, uint32_t T,
                                  uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim, uint32_t window,
                                  float scale, float softcap, lt_err_t *err) {
  lt_status_t st = attn_check(T, n_heads, n_kv_heads, head_dim, err);
  if (st != LT_OK || T == 0) return st;
  gpu_buf_t *D = gpu_cmd_scratch(c, (uint64_t)T * n_heads * 4, err);
  if (!D) return err ? err->code : LT_E_DEVICE_OOM;
  gpu_view_t views[9] = {dq, gv(D), q, k, v, out, dout, lse, gv(D)};
  pc_attn_train_t pc = attn_train_pc(T, n_heads, n_kv_heads, window, scale, softcap, 1);
  st = attn_train(c, views, T, n_heads, n_kv_heads, head_dim, &pc, (uint64_t)T * n_heads, err);
  /* dk, dv: each invocation loops over (query, head) pairs of its chunk of queries. */
  uint32_t rep = n_heads / n_kv_heads, chunk = op_loop_budget(OP_ATTN_TRAIN) / rep;
  if (chunk == 0) return lt_fail(err, LT_E_LIMIT, "training attention: %u query heads per KV head", rep);
  gpu_view_t kv_views[9] = {dk, dv, q, k, v, out, dout, lse, gv(D)};
  for (uint32_t t0 = 0; t0 < T && st == LT_OK; t0 += chunk) {
    pc = attn_train_pc(T, n_heads, n_kv_heads, window, scale, softcap, 2);
    pc.t_base = t0, pc.t_len = chunk, pc.accumulate = t0 > 0;
    st = attn_train(c, kv_views, T, n_heads, n_kv_heads, head_dim, &pc, (uint64_t)T * n_kv_heads, err);
  }
  return st;
}

/* ---- elementwise backward passes ---- */

static lt_status_t glu_backward(gpu_cmd_t *c, gpu_view_t dgate, gpu_view_t dup, gpu_view_t dy, gpu_view_t gate,
                                gpu_view_t up, uint32_t n, bool gelu, lt_err_t *err) {
  if (n == 0) return LT_OK;
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_SWIGLU_BW, NULL, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  gpu_view_t v[5] = {dgate, dup, dy, gate, up};
  uint64_t b = (uint64_t)n * 4, bytes[5] = {b, b, b, b, b};
  bool w[5] = {true, true, false, false, false};
  pc_swiglu_bw_t pc = {.n = n, .gelu = gelu};
  uint32_t gx, gy;
  op_grid_1d(n, op_wg(OP_SWIGLU_BW), &gx, &gy);
  return op_dispatch(c, p, OP_SWIGLU_BW, v, bytes, w, 5, &pc, gx, gy, 1, err);
}

lt_status_t op_swiglu_backward(gpu_cmd_t *c, gpu_view_t dgate, gpu_view_t dup, gpu_view_t dy, gpu_view_t gate,
                               gpu_view_t up, uint32_t n, lt_err_t *err) {
  return glu_backward(c, dgate, dup, dy, gate, up, n, false, err);
}

lt_status_t op_geglu_backward(gpu_cmd_t *c, gpu_view_t dgate, gpu_view_t dup, gpu_view_t dy, gpu_view_t gate,
                              gpu_view_t up, uint32_t n, lt_err_t *err) {
  return glu_backward(c, dgate, dup, dy, gate, up, n, true, err);
}

/* Orders row indices by (id, row): the grouping embed_bw.comp sums in. */
static const int32_t *g_sort_ids;
static int cmp_rows(const void *a, const void *b) {
  int32_t ra = *(const int32_t *)a, rb = *(const int32_t *)b;
  int32_t ia = g_sort_ids[ra], ib = g_sort_ids[rb];
  return ia != ib ? (ia < ib ? -1 : 1) : (ra > rb) - (ra < rb);
}

lt_status_t op_embed_backward(gpu_cmd_t *c, gpu_view_t dtable, gpu_view_t dy, const int32_t *host_ids, uint32_t n_rows,
                              uint32_t dim, uint32_t table_rows, lt_err_t *err) {
  if (n_rows == 0 || dim == 0) return LT_OK;
  gpu_t *g = gpu_cmd_gpu(c);
  gpu_pipeline_t *p = op_pipeline(g, OP_EMBED_BW, NULL, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  /* Groups of one id, each cut into runs of at most the loop budget: rows, then per run its id and start. */
  int32_t *rows = malloc((uint64_t)n_rows * 4), *ids = malloc((uint64_t)n_rows * 4),
          *start = malloc(((uint64_t)n_rows + 1) * 4);
  lt_status_t st = rows && ids && start ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  uint32_t runs = 0;
  if (st == LT_OK) {
    for (uint32_t r = 0; r < n_rows; r++) rows[r] = (int32_t)r;
    g_sort_ids = host_ids;
    qsort(rows, n_rows, sizeof *rows, cmp_rows);
    for (uint32_t j = 0; j < n_rows; j++) {
      int32_t id = host_ids[rows[j]];
      bool fresh =
          j == 0 || id != ids[runs - 1] || (uint32_t)(j - (uint32_t)start[runs - 1]) >= op_loop_budget(OP_EMBED_BW);
      if (!fresh) continue;
      ids[runs] = id;
      start[runs++] = (int32_t)j;
    }
    start[runs] = (int32_t)n_rows;
  }
  /* Runs of one id must not meet in one dispatch (both would add to the same row): a run that repeats an id
   * starts a new dispatch. With the loop budget far above most batches, that is one dispatch. */
  uint32_t first = 0;
  while (st == LT_OK && first < runs) {
    uint32_t last = first + 1;
    while (last < runs && ids[last] != ids[last - 1]) last++;
    uint32_t nu = last - first;
    gpu_buf_t *b_rows = gpu_cmd_scratch(c, (uint64_t)n_rows * 4, err),
              *b_ids = gpu_cmd_scratch(c, (uint64_t)nu * 4, err),
              *b_start = gpu_cmd_scratch(c, ((uint64_t)nu + 1) * 4, err);
    if (!b_rows || !b_ids || !b_start) {
      st = err ? err->code : LT_E_DEVICE_OOM;
      break;
    }
    /* Scratch buffers are written through the host before the recorder runs: each dispatch gets its own. */
    if ((st = gpu_upload(b_rows, 0, rows, (uint64_t)n_rows * 4, err)) != LT_OK) break;
    if ((st = gpu_upload(b_ids, 0, ids + first, (uint64_t)nu * 4, err)) != LT_OK) break;
    if ((st = gpu_upload(b_start, 0, start + first, ((uint64_t)nu + 1) * 4, err)) != LT_OK) break;
    gpu_view_t v[5] = {dtable, dy, gv(b_ids), gv(b_rows), gv(b_start)};
    uint64_t bytes[5] = {(uint64_t)table_rows * dim * 4, (uint64_t)n_rows * dim * 4, (uint64_t)nu * 4,
                         (uint64_t)n_rows * 4, ((uint64_t)nu + 1) * 4};
    bool w[5] = {true, false, false, false, false};
    pc_embed_bw_t pc = {.n_unique = nu, .dim = dim, .table_rows = table_rows};
    uint32_t gx, gy;
    op_grid_1d((uint64_t)nu * dim, op_wg(OP_EMBED_BW), &gx, &gy);
    st = op_dispatch(c, p, OP_EMBED_BW, v, bytes, w, 5, &pc, gx, gy, 1, err);
    first = last;
  }
  free(rows), free(ids), free(start);
  return st;
}

lt_status_t op_cross_entropy(gpu_cmd_t *c, gpu_view_t nll, gpu_view_t lse, bool backward, gpu_view_t logits,
                             gpu_view_t targets, gpu_view_t weights, uint32_t rows, uint32_t n, lt_err_t *err) {
  if (rows == 0) return LT_OK;
  lt_status_t st = op_logsumexp(c, lse, nll, logits, targets, rows, n, err);
  if (st != LT_OK || !backward) return st;
  uint64_t total = (uint64_t)rows * n;
  if (total > MAX_1D) return lt_fail(err, LT_E_LIMIT, "cross-entropy: %u x %u logits in one call", rows, n);
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_CE_GRAD, NULL, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  gpu_view_t v[4] = {logits, lse, targets, weights};
  uint64_t bytes[4] = {total * 4, (uint64_t)rows * 4, (uint64_t)rows * 4, (uint64_t)rows * 4};
  bool w[4] = {true, false, false, false};
  pc_ce_grad_t pc = {.rows = rows, .n = n};
  uint32_t gx, gy;
  op_grid_1d(total, op_wg(OP_CE_GRAD), &gx, &gy);
  return op_dispatch(c, p, OP_CE_GRAD, v, bytes, w, 4, &pc, gx, gy, 1, err);
}

lt_status_t op_kd(gpu_cmd_t *c, gpu_view_t loss, gpu_view_t student, gpu_view_t teacher, gpu_view_t weights,
                  uint32_t rows, uint32_t n, float temperature, bool backward, lt_err_t *err) {
  if (rows == 0) return LT_OK;
  if (n == 0) return lt_fail(err, LT_E_INVALID, "distillation: rows of 0 logits");
  if (!(temperature > 0)) return lt_fail(err, LT_E_INVALID, "distillation: temperature %g (must be > 0)", temperature);
  if (backward && !weights.buf) return lt_fail(err, LT_E_INVALID, "distillation: the gradient needs row weights");
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  /* Three passes over the row: two log-sum-exps, then the terms and the gradient. */
  uint32_t wg = op_rows_wg(OP_KD, n, 3, caps->max_wg_invocations, caps->max_shared);
  if (wg == 0) return lt_fail(err, LT_E_LIMIT, "distillation: rows of %u logits are too wide", n);
  gpu_pipeline_t *p = op_pipeline(g, OP_KD, NULL, &wg, 1, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  uint64_t rn = 4ull * rows * n;
  gpu_view_t v[4] = {loss, student, teacher, weights.buf ? weights : loss};
  uint64_t bytes[4] = {4ull * rows, rn, rn, 4ull * rows};
  bool w[4] = {true, backward, false, false};
  pc_kd_t pc = {.rows = rows, .n = n, .temperature = temperature, .backward = backward};
  uint32_t gx, gy;
  op_grid_1d(rows, 1, &gx, &gy);
  return op_dispatch(c, p, OP_KD, v, bytes, w, 4, &pc, gx, gy, 1, err);
}

lt_status_t op_atkd(gpu_cmd_t *c, gpu_view_t loss, gpu_view_t student, gpu_view_t teacher, gpu_view_t targets,
                    gpu_view_t weights, uint32_t rows, uint32_t n, float temperature, bool backward, lt_err_t *err) {
  if (rows == 0) return LT_OK;
  if (n < 2) return lt_fail(err, LT_E_INVALID, "ATKD: rows of %u logits (the non-target part needs 2 or more)", n);
  if (!(temperature > 0)) return lt_fail(err, LT_E_INVALID, "ATKD: temperature %g (must be > 0)", temperature);
  if (backward && !weights.buf) return lt_fail(err, LT_E_INVALID, "ATKD: the gradient needs row weights");
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  /* Three passes over the row: the non-target maxima, their sums, then the terms and the gradient. */
  uint32_t wg = op_rows_wg(OP_ATKD, n, 3, caps->max_wg_invocations, caps->max_shared);
  if (wg == 0) return lt_fail(err, LT_E_LIMIT, "ATKD: rows of %u logits are too wide", n);
  gpu_pipeline_t *p = op_pipeline(g, OP_ATKD, NULL, &wg, 1, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  uint64_t rn = 4ull * rows * n;
  gpu_view_t v[5] = {loss, student, teacher, targets, weights.buf ? weights : loss};
  uint64_t bytes[5] = {8ull * rows, rn, rn, 4ull * rows, 8ull * rows};
  bool w[5] = {true, backward, false, false, false};
  pc_kd_t pc = {.rows = rows, .n = n, .temperature = temperature, .backward = backward};
  uint32_t gx, gy;
  op_grid_1d(rows, 1, &gx, &gy);
  return op_dispatch(c, p, OP_ATKD, v, bytes, w, 5, &pc, gx, gy, 1, err);
}

/* ---- the optimiser ---- */

lt_status_t op_adamw(gpu_cmd_t *c, gpu_view_t p, gpu_view_t g, gpu_view_t m, gpu_view_t v, uint32_t n,
                     const adamw_params_t *a, lt_err_t *err) {
  if (n == 0) return LT_OK;
  if (a->step == 0) return lt_fail(err, LT_E_INVALID, "adamw: steps count from 1");
  gpu_pipeline_t *pl = op_pipeline(gpu_cmd_gpu(c), OP_ADAMW, NULL, NULL, 0, err);
  if (!pl) return err ? err->code : LT_E_SHADER;
  pc_adamw_t pc = {.n = n,
                   .lr = a->lr,
                   .beta1 = a->beta1,
                   .beta2 = a->beta2,
                   .eps = a->eps,
                   .weight_decay = a->weight_decay,
                   .grad_scale = a->grad_scale,
                   .c1 = (float)(1.0 - pow(a->beta1, a->step)),
                   .c2 = (float)(1.0 - pow(a->beta2, a->step))};
  gpu_view_t views[4] = {p, g, m, v};
  uint64_t b = (uint64_t)n * 4, bytes[4] = {b, b, b, b};
  bool w[4] = {true, false, true, true};
  uint32_t gx, gy;
  op_grid_1d(n, op_wg(OP_ADAMW), &gx, &gy);
  return op_dispatch(c, pl, OP_ADAMW, views, bytes, w, 4, &pc, gx, gy, 1, err);
}

/* Reduces x[0, n) to out[0] with `mode` on the first pass and `then` on the passes over the partials. */
static lt_status_t reduce_all(gpu_cmd_t *c, gpu_view_t out, gpu_view_t x, uint64_t n, uint32_t mode, uint32_t then,
                              const char *name, lt_err_t *err) {
  if (n == 0) return lt_fail(err, LT_E_INVALID, "%s: no elements", name);
  if (n > (uint64_t)UINT32_MAX) return lt_fail(err, LT_E_LIMIT, "%s: %llu elements", name, (unsigned long long)n);
  uint32_t wg = op_wg(OP_REDUCE);
  /* Each workgroup sums `chunk` elements, each invocation at most a quarter of the budget of them; passes over
   * the partials repeat until one value is left. */
  uint64_t chunk = (uint64_t)wg * (op_loop_budget(OP_REDUCE) / 4);
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_REDUCE, NULL, &wg, 1, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  gpu_view_t src = x;
  lt_status_t st = LT_OK;
  while (st == LT_OK) {
    uint64_t groups = (n + chunk - 1) / chunk;
    gpu_view_t dst = out;
    if (groups > 1) {
      gpu_buf_t *b = gpu_cmd_scratch(c, groups * 4, err);
      if (!b) return err ? err->code : LT_E_DEVICE_OOM;
      dst = gv(b);
    }
    gpu_view_t v[2] = {dst, src};
    uint64_t bytes[2] = {groups * 4, n * 4};
    bool w[2] = {true, false};
    pc_reduce_t pc = {.n = (uint32_t)n, .chunk = (uint32_t)chunk, .mode = mode};
    uint32_t gx, gy;
    op_grid_1d(groups, 1, &gx, &gy);
    st = op_dispatch(c, p, OP_REDUCE, v, bytes, w, 2, &pc, gx, gy, 1, err);
    if (groups == 1) break;
    src = dst;
    n = groups;
    mode = then;
  }
  return st;
}

lt_status_t op_sumsq(gpu_cmd_t *c, gpu_view_t out, gpu_view_t x, uint64_t n, lt_err_t *err) {
  return reduce_all(c, out, x, n, REDUCE_SUMSQ, REDUCE_SUM, "sumsq", err);
}

lt_status_t op_max(gpu_cmd_t *c, gpu_view_t out, gpu_view_t x, uint64_t n, lt_err_t *err) {
  return reduce_all(c, out, x, n, REDUCE_MAX, REDUCE_MAX, "max", err);
}
