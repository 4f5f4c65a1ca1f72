/* Matrix multiply with a quantised weight y[M,N] (+)= x[M,K] . dequant(w)[N,K]^T: a tiled GEMM that dequantises
 * the weight tile into shared memory (shaders/matmul_q.comp) and a GEMV for few rows (shaders/gemv_q.comp), both
 * reading int8 / int4 and their scales straight from the weight buffers. K is walked in chunks, one dispatch each,
 * so no invocation loops too long. */
#include <stdio.h>

#include "engine/ops/ops.h"
#include "engine/ops/qblock.h"
#include "engine/ops/quant.h"

/* shaders/include/qblock.glsl names the block formats by these numbers. */
_Static_assert(LT_Q8_0 == 6 && LT_Q4_0 == 7 && LT_Q4_1 == 8 && LT_Q5_0 == 9 && LT_Q5_1 == 10 && LT_Q2_K == 11 &&
                   LT_Q3_K == 12 && LT_Q4_K == 13 && LT_Q5_K == 14 && LT_Q6_K == 15,
               "qblock.glsl's GQ_ numbers");

/* AUTO takes the GEMV kernel up to this many rows of x. */
#define GEMV_MAX_AUTO_M 4u

/* Rows of x one GEMV workgroup handles at most (its partial sums live in registers). */
#define GEMV_MAX_MR 4u

/* K-elements per load of the integers (an octet). */
#define OCTET 8u

/* GEMM tiling (specialisation constants 1..5 of matmul_q.comp), as for the f32 kernel: a bm x bn tile of y per
 * workgroup, bk-wide K tiles (a multiple of 8), tm x tn outputs per invocation. */
typedef struct gemm_q_cfg {
  uint32_t bm, bn, bk, tm, tn;
} gemm_q_cfg_t;

/* GEMV shape (workgroup size and specialisation constants 1..2 of gemv_q.comp). */
typedef struct gemv_q_cfg {
  uint32_t wg, rows, mr;
} gemv_q_cfg_t;

static uint32_t ceil_div(uint64_t a, uint64_t b) { return (uint32_t)((a + b - 1) / b); }

/* Loop iterations of one matmul_q.comp invocation, per K tile, counted as if nothing were unrolled; a scalar x
 * load (no VEC4) loops 4 times. */
static op_loop_cost_t gemm_q_loop_iters(const gemm_q_cfg_t *c, bool vec4) {
  uint32_t wg = (c->bm / c->tm) * (c->bn / c->tn), ko = c->bk / OCTET;
  uint32_t per_tile = 1 + ceil_div((uint64_t)c->bm * ko, wg) * (vec4 ? 1 : 5) + ceil_div((uint64_t)c->bn * ko, wg) +
                      c->bk / 4 * (1 + c->tm + c->tn * (1 + c->tm));
  return (op_loop_cost_t){c->tm * c->tn + c->tm * (1 + c->tn), per_tile, c->bk};
}

/* Loop iterations of one gemv_q.comp invocation, per step of wg * opl octets, as above. */
static op_loop_cost_t gemv_q_loop_iters(const gemv_q_cfg_t *c, bool vec4, uint32_t opl) {
  uint32_t pairs = c->mr * c->rows;
  uint32_t per_step = 1 + c->mr * opl * (vec4 ? 1 : 5) + c->rows * (1 + c->mr) * opl;
  return (op_loop_cost_t){2 * pairs + ceil_div(pairs, c->wg) * (1 + c->wg), per_step, c->wg * OCTET * opl};
}

/* Checks one operand: a buffer, an aligned offset, at most one binding's range. */
static lt_status_t check_operand(const gpu_caps_t *caps, const char *name, gpu_view_t v, uint64_t bytes,
                                 lt_err_t *err) {
  if (!v.buf) return lt_fail(err, LT_E_INVALID, "op_matmul_q: %s has no buffer", name);
  if (v.off % caps->min_storage_align)
    return lt_fail(err, LT_E_INVALID, "op_matmul_q: %s offset %llu is not a multiple of %llu bytes", name,
                   (unsigned long long)v.off, (unsigned long long)caps->min_storage_align);
  if (bytes > caps->max_storage_range)
    return lt_fail(err, LT_E_LIMIT,
                   "op_matmul_q: %s is %llu bytes, more than one binding may cover (%llu); split the weight by rows",
                   name, (unsigned long long)bytes, (unsigned long long)caps->max_storage_range);
  return LT_OK;
}

lt_status_t op_matmul_q(gpu_cmd_t *c, gpu_view_t y, uint32_t y_stride, gpu_view_t x, uint32_t x_stride,
                        const qmat_view_t *w, uint32_t M, uint32_t N, uint32_t K, bool accumulate, matmul_path_t path,
                        lt_err_t *err) {
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  bool blocks = qblock_is(w->wtype);
  if (!blocks && w->wtype != LT_I8 && w->wtype != LT_I4)
    return lt_fail(err, LT_E_INVALID, "op_matmul_q: w must be i8, i4 or a block format (%s), not %s", qblock_names(),
                   lt_dtype_str(w->wtype));
  if (blocks && K % qblock_info(w->wtype)->block)
    return lt_fail(err, LT_E_INVALID, "op_matmul_q: K %u is not a multiple of %s's %u-element blocks", K,
                   lt_dtype_str(w->wtype), qblock_info(w->wtype)->block);
  if (!blocks && w->stype != LT_F32 && w->stype != LT_F16)
    return lt_fail(err, LT_E_INVALID, "op_matmul_q: scales must be f32 or f16, not %s", lt_dtype_str(w->stype));
  if (!blocks && w->stype == LT_F16 && !caps->storage16)
    return lt_fail(err, LT_E_UNSUPPORTED, "op_matmul_q: f16 scales need 16-bit storage buffers, which %s lacks",
                   caps->name);
  uint32_t bits = w->wtype == LT_I4 ? 4 : 8;
  if (!blocks && !quant_params_ok(bits, w->group))
    return lt_fail(err, LT_E_INVALID, "op_matmul_q: group %u is not a positive multiple of %u", w->group, OCTET);
  if (x_stride < K || y_stride < N)
    return lt_fail(err, LT_E_INVALID, "op_matmul_q: strides x %u, y %u are below the row widths K %u, N %u", x_stride,
                   y_stride, K, N);
  if (M == 0 || N == 0) return LT_OK;
  if (K == 0 && accumulate) return LT_OK; /* y += nothing */

  uint32_t n_groups = blocks ? 0 : quant_groups(K, w->group);
  uint64_t row_bytes = blocks ? qblock_row_bytes(w->wtype, K) : quant_row_bytes(bits, K);
  uint64_t xb = 4ull * ((uint64_t)(M - 1) * x_stride + K), yb = 4ull * ((uint64_t)(M - 1) * y_stride + N);
  /* Block rows need not end on a word: the shader reads whole words, the last one partly. */
  uint64_t qb = ((uint64_t)N * row_bytes + 3) / 4 * 4, sb = (uint64_t)N * n_groups * lt_dtype_size(w->stype);
  if (row_bytes > UINT32_MAX)
    return lt_fail(err, LT_E_LIMIT, "op_matmul_q: rows of %llu bytes exceed 32-bit indexing",
                   (unsigned long long)row_bytes);
  lt_status_t st;
  if ((st = check_operand(caps, "x", x, xb, err)) != LT_OK || (st = check_operand(caps, "y", y, yb, err)) != LT_OK ||
      (st = check_operand(caps, "q", w->q, qb, err)) != LT_OK ||
      (!blocks && (st = check_operand(caps, "scales", w->scales, sb, err)) != LT_OK))
    return st;

  bool gemv = path == MATMUL_GEMV || (path == MATMUL_AUTO && M <= GEMV_MAX_AUTO_M);
  bool vec4 = K % 4 == 0 && x_stride % 4 == 0;
  /* The weight's words, and then x (vec4 loads), through texel views where the device reads them. */
  uint64_t qspan, xspan = xb;
  /* The GEMV of int8 / int4 on CPU drivers reads 16 bytes a lane (two octets of int8, four of int4) where rows
   * and scale groups start on such a texel: one texel fetch then stands for two or four of R32UI's. */
  uint32_t opl = 1, o = bits == 8 ? 2 : 4;
  gpu_texel_t wt = GPU_TEXEL_NONE;
  if (gemv && !blocks && caps->kind == GPU_KIND_CPU && quant_padded_cols(K) % (OCTET * o) == 0 &&
      w->group % (OCTET * o) == 0 && (wt = op_texel_bind(caps, w->q, GPU_TEXEL_RGBA32UI, qb, &qspan)))
    opl = o;
  if (!wt) wt = op_texel_bind(caps, w->q, GPU_TEXEL_R32UI, qb, &qspan);
  gpu_texel_t xt = wt && vec4 ? op_texel_bind(caps, x, GPU_TEXEL_RGBA32F, xb, &xspan) : GPU_TEXEL_NONE;
  char defines[96];
  snprintf(defines, sizeof defines, "BITS=%u;S_F16=%d;VEC4=%d;GQ=%d;W_TEXEL=%d;X_TEXEL=%d;OPL=%u", bits,
           !blocks && w->stype == LT_F16, vec4, blocks ? (int)w->wtype : 0, wt != GPU_TEXEL_NONE, xt != GPU_TEXEL_NONE,
           opl);

  op_id_t id;
  uint32_t spec[6], n_spec, gx, gy, gz = 1;
  op_loop_cost_t cost;
  if (gemv) {
    /* GPUs: enough invocations for the octets of one row (short rows leave most of a wide workgroup idle), from 32
     * up to the table's size, over 2 rows. CPU drivers: one subgroup over 8 rows, as the f16 GEMV, so that each
     * load of x serves 8 rows and no workgroup waits at a barrier. On lavapipe (bench_matmul, one run each) that
     * took 1x32000x768 from 1.8 to 7.8 GFLOPS in Q8_0 and 1.3 to 4.7 in Q4_K, 1x4096x4096 from 4.3 to 9.6 (Q8_0)
     * and 3.2 to 5.4 (Q4_K), 4x4096x4096 from 7.2 to 21.3 (Q8_0); 16 rows ran about the same as 8, and
     * workgroups of 16 slower. Rows spread apart as the f16 GEMV's (gemv_spread) ran no faster: these kernels are
     * bound by unpacking, not memory. */
    gemv_q_cfg_t v = {.wg = caps->subgroup_size, .rows = 8, .mr = M < GEMV_MAX_MR ? M : GEMV_MAX_MR};
    if (caps->kind != GPU_KIND_CPU) {
      v.wg = 32, v.rows = 2;
      while (v.wg < op_wg(OP_GEMV_Q) && v.wg * OCTET < K) v.wg *= 2;
    }
    uint32_t groups = ceil_div(N, v.rows);
    cost = gemv_q_loop_iters(&v, vec4, opl);
    id = OP_GEMV_Q;
    spec[0] = v.wg, spec[1] = v.rows, spec[2] = v.mr, n_spec = 3;
    gx = groups < caps->max_wg_count[0] ? groups : caps->max_wg_count[0];
    gz = ceil_div(groups, gx);
    gy = ceil_div(M, v.mr);
  } else {
    gemm_q_cfg_t t = {.bm = 64, .bn = 64, .bk = 16, .tm = 8, .tn = 8};
    cost = gemm_q_loop_iters(&t, vec4);
    id = OP_MATMUL_Q;
    spec[0] = (t.bm / t.tm) * (t.bn / t.tn), spec[1] = t.bm, spec[2] = t.bn, spec[3] = t.bk, spec[4] = t.tm,
    spec[5] = t.tn, n_spec = 6;
    gx = ceil_div(N, t.bn);
    gy = ceil_div(M, t.bm);
  }
  if (gx > caps->max_wg_count[0] || gy > caps->max_wg_count[1] || gz > caps->max_wg_count[2])
    return lt_fail(err, LT_E_LIMIT, "op_matmul_q: %ux%ux%u needs %ux%ux%u workgroups, more than the device allows", M,
                   N, K, gx, gy, gz);
  gpu_pipeline_t *p = op_pipeline_texel(g, id, defines, spec, n_spec, (wt ? 1u << 2 : 0) | (xt ? 1u << 1 : 0), err);
  if (!p) return err ? err->code : LT_E_SHADER;

  /* The block formats carry their scales: their shader binds the blocks in the scales' slot too, unread. */
  gpu_view_t views[4] = {y, x, w->q, blocks ? w->q : w->scales};
  uint64_t bytes[4] = {yb, xspan, qspan, blocks ? qb : sb};
  gpu_texel_t texel[4] = {GPU_TEXEL_NONE, xt, wt, GPU_TEXEL_NONE};
  bool writes[4] = {true, false, false, false};
  pc_matmul_q_t pc = {.M = M,
                      .N = N,
                      .K = K,
                      .x_stride = x_stride,
                      .y_stride = y_stride,
                      .kp = quant_padded_cols(K),
                      .n_groups = n_groups,
                      .group = w->group,
                      .row_bytes = (uint32_t)row_bytes};
  /* Chunks are whole K tiles or steps of octets, so every chunk but the last ends on an octet. */
  return op_dispatch_k_texel(c, p, id, views, bytes, writes, texel, 4, &pc, cost, accumulate, gx, gy, gz, err);
}
