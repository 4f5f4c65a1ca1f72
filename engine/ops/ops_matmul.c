/* Matrix multiply y[M,N] (+)= x[M,K] . w[N,K]^T: a register-blocked tiled GEMM (shaders/matmul.comp) and a GEMV
 * for few rows (shaders/gemv.comp). Both walk K in chunks, one dispatch each, so no invocation loops too long. */
#include <stdio.h>
#include <string.h>

#include "engine/ops/ops.h"

/* AUTO takes the GEMV kernel up to this many rows of x. bench_matmul on lavapipe (2 vCPUs), f32 Mx4096x4096, with
 * storage-buffer reads: GEMV 4.3 against GEMM 2.0 GFLOPS at M = 4, 4.4 against 3.8 at M = 8, 4.5 against 9.3 at
 * M = 16. With texel reads (CPU drivers, op_texel_reads) the GEMV keeps the lead further: 21.2 against 8.6 at
 * M = 8, 23.2 against 17.1 at M = 16 (bench_matmul's crossover lines). */
#define GEMV_MAX_AUTO_M 4u
#define GEMV_MAX_AUTO_M_TEXEL 16u

/* Rows of x one GEMV workgroup handles at most (its partial sums live in registers). */
#define GEMV_MAX_MR 4u

/* GEMM tiling (specialisation constants 1..5 of matmul.comp): a bm x bn tile of y per workgroup, bk-wide K tiles
 * in shared memory when staged, tm x tn outputs per invocation; (bm/tm) * (bn/tn) invocations. */
typedef struct gemm_cfg {
  uint32_t bm, bn, bk, tm, tn;
} gemm_cfg_t;

/* Staged (GPUs): 64 invocations with 8x8 sums each, 64x64 tiles of x and w 16 deep (10 KiB of shared memory).
 * Direct (CPU drivers): lavapipe runs every non-uniform load as one scalar load per lane and component, so what
 * pays is many sums per load: 16x16 sums for 32 loads per K-group. Measured on 2 vCPUs, 32x16 ran ~15% faster
 * but took four times as long to compile (~4 s per variant), 8x8 ran at half the speed. */
static const gemm_cfg_t gemm_staged = {.bm = 64, .bn = 64, .bk = 16, .tm = 8, .tn = 8};
static const gemm_cfg_t gemm_direct = {.bm = 128, .bn = 128, .bk = 16, .tm = 16, .tn = 16};

/* GEMV shape (workgroup size and specialisation constants 1..3 of gemv.comp). */
typedef struct gemv_cfg {
  uint32_t wg, rows, mr, spread;
} gemv_cfg_t;

static uint32_t ceil_div(uint64_t a, uint64_t b) { return (uint32_t)((a + b - 1) / b); }

/* The texel format weights of wtype in view w ([rows, K], kv per load, `bytes` of them) are bound through, with
 * the bytes to bind in *span (op_texel_bind): f32 as RGBA32F, f16 and bf16 as RGBA32UI (eight values a texel,
 * unpacked in the shader as the storage path unpacks them); none for scalar loads (kv 1). */
static gpu_texel_t weight_texel(const gpu_caps_t *caps, gpu_view_t w, lt_dtype_t wtype, uint64_t bytes, uint32_t kv,
                                uint64_t *span) {
  gpu_texel_t t = kv == 1           ? GPU_TEXEL_NONE
                  : wtype == LT_F32 ? GPU_TEXEL_RGBA32F
                  : kv == 8         ? GPU_TEXEL_RGBA32UI
                                    : GPU_TEXEL_NONE;
  return op_texel_bind(caps, w, t, bytes, span);
}

/* Loop iterations one invocation of a GEMM or GEMV dispatch runs. Loops marked [[unroll]] in the shaders run no
 * iterations of their own: their trip counts are specialisation constants, so the driver unrolls them (the long-K
 * test would catch one that did not). */
static op_loop_cost_t gemm_loop_iters(const gemm_cfg_t *c, bool staged, uint32_t kv) {
  if (!staged) return (op_loop_cost_t){0, 1, kv}; /* the K loop */
  uint32_t wg = (c->bm / c->tm) * (c->bn / c->tn);
  /* The K-tile loop and its two staging loops. */
  uint32_t stage = ceil_div((uint64_t)c->bm * c->bk / kv, wg) + ceil_div((uint64_t)c->bn * c->bk / kv, wg);
  return (op_loop_cost_t){0, 1 + stage, c->bk};
}

/* How far apart (in rows) a GEMV workgroup's rows sit on CPU drivers, for weight rows of row_bytes (spread_row in
 * shaders/include/common.glsl): about 12 KiB. A workgroup reads its 16 rows side by side; adjacent rows shorter
 * than a page then interleave in the same pages and the CPU's stream prefetcher, which follows one direction per
 * page, stops fetching ahead, so every row's first lines wait on memory. Measured on 2 vCPUs (bench_matmul,
 * interleaved runs), 1x32000x768 f16 went from 5.2-6.1 GFLOPS adjacent to 11.8-12.7 with rows 8 apart (4 apart:
 * 8.6-11.3, 16: 10.1-12.1); f32 from 4.7-5.1 to 9.3-9.7 with rows 4 apart; 1x8000x2048 f16 from 12.2 to 13.9-14.1
 * with 4. Rows of 12 KiB and more stay adjacent. */
static uint32_t gemv_spread(uint64_t row_bytes) {
  uint64_t s = row_bytes ? (12288 + row_bytes - 1) / row_bytes : 1;
  return s > 16 ? 16 : (uint32_t)s;
}

/* The GEMV shape for mr rows of x with op id's kernel over matrices of n rows or more, each row_bytes long: on CPU
 * drivers one subgroup per workgroup (its barrier is nearly free) with many rows to share each load of x, spread
 * (gemv_spread); on GPUs the op's workgroup over 4 adjacent rows. */
static gemv_cfg_t gemv_cfg(const gpu_caps_t *caps, op_id_t id, uint32_t mr, uint64_t row_bytes, uint32_t n) {
  if (caps->kind != GPU_KIND_CPU) return (gemv_cfg_t){op_wg(id), 4, mr, 1};
  gemv_cfg_t c = {caps->subgroup_size, 16, mr, gemv_spread(row_bytes)};
  /* A block of rows * spread rows no larger than the matrix, so few rows do not leave most of a block empty. */
  uint32_t most = n / c.rows ? n / c.rows : 1;
  if (c.spread > most) c.spread = most;
  return c;
}

/* Workgroups of a GEMV over n rows: whole blocks of rows * spread rows (spread_row). */
static uint32_t gemv_groups(const gemv_cfg_t *c, uint32_t n) {
  return ceil_div(n, (uint64_t)c->rows * c->spread) * c->spread;
}

static op_loop_cost_t gemv_loop_iters(const gemv_cfg_t *c, uint32_t kv) {
  uint32_t pairs = c->mr * c->rows;
  /* The K loop; then the final loop over pairs, each summing at most one partial per invocation. */
  return (op_loop_cost_t){ceil_div(pairs, c->wg) * (1 + c->wg), 1, c->wg * kv};
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

/* The matmul with row strides (in elements) for y and x; w rows are contiguous. */
static lt_status_t matmul(gpu_cmd_t *c, gpu_view_t y, uint32_t y_stride, gpu_view_t x, uint32_t x_stride, gpu_view_t w,
                          lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t K, bool accumulate, matmul_path_t path,
                          lt_err_t *err) {
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  bool w16 = wtype == LT_F16 || wtype == LT_BF16;
  if (wtype != LT_F32 && !w16)
    return lt_fail(err, LT_E_INVALID, "op_matmul: w must be f32, f16 or bf16, not %s", lt_dtype_str(wtype));
  if (w16 && K % 8 != 0 && !caps->storage16)
    return lt_fail(err, LT_E_UNSUPPORTED,
                   "op_matmul: %s weights with K not a multiple of 8 need 16-bit storage buffers, which %s lacks",
                   lt_dtype_str(wtype), caps->name);
  if ((unsigned)path > MATMUL_GEMM_DIRECT) return lt_fail(err, LT_E_INVALID, "op_matmul: unknown path %d", (int)path);
  if (M == 0 || N == 0) return LT_OK;
  if (K == 0 && accumulate) return LT_OK; /* y += nothing */
  if (x_stride < K || y_stride < N)
    return lt_fail(err, LT_E_INVALID, "op_matmul: row strides (x %u, y %u) are shorter than the rows (K %u, N %u)",
                   x_stride, y_stride, K, N);

  uint64_t ws = lt_dtype_size(wtype);
  uint64_t xb = 4ull * ((uint64_t)(M - 1) * x_stride + K), wb = ws * N * K,
           yb = 4ull * ((uint64_t)(M - 1) * y_stride + N);
  char shape[96];
  lt_status_t st;
  snprintf(shape, sizeof shape, "[%u,%u] f32", M, K);
  if ((st = check_operand(caps, "x", x, xb, shape, err)) != LT_OK) return st;
  snprintf(shape, sizeof shape, "[%u,%u] %s", N, K, lt_dtype_str(wtype));
  if ((st = check_operand(caps, "w", w, wb, shape, err)) != LT_OK) return st;
  snprintf(shape, sizeof shape, "[%u,%u] f32", M, N);
  if ((st = check_operand(caps, "y", y, yb, shape, err)) != LT_OK) return st;

  bool gemv = path == MATMUL_GEMV ||
              (path == MATMUL_AUTO && M <= (op_texel_reads_on(caps) ? GEMV_MAX_AUTO_M_TEXEL : GEMV_MAX_AUTO_M));
  bool staged = path == MATMUL_GEMM_STAGED || (path != MATMUL_GEMM_DIRECT && caps->kind != GPU_KIND_CPU);
  /* K-elements per load: a vec4 of f32 weights or 16 bytes of f16 ones, where K allows it. */
  uint32_t kv = w16 ? (K % 8 == 0 && x_stride % 8 == 0 ? 8 : 1) : (K % 4 == 0 && x_stride % 4 == 0 ? 4 : 1);
  /* The direct GEMM takes f32 weights eight at a time too: on lavapipe every update of its 256 sums per invocation
   * is a masked store and a reload, so twice the products per update ran 512x4096x4096 at 51.0-51.8 GFLOPS
   * against 38.1-38.7 (two interleaved pairs). The GEMV, bound by memory, ran slower that way. */
  if (!gemv && !staged && kv == 4 && K % 8 == 0 && x_stride % 8 == 0) kv = 8;
  /* Weights, and then x, through texel views where the device reads them (not for the shared-memory GEMM). */
  uint64_t wspan = wb, xspan = xb;
  gpu_texel_t wt = staged ? GPU_TEXEL_NONE : weight_texel(caps, w, wtype, wb, kv, &wspan);
  gpu_texel_t xt = wt ? op_texel_bind(caps, x, GPU_TEXEL_RGBA32F, xb, &xspan) : GPU_TEXEL_NONE;
  char defines[96];
  /* The direct GEMM shares x across a subgroup where a subgroup is one row of tiles: on lavapipe, 512x4096x4096
   * f32 went from 35.5-36.2 to 39.1-40.1 GFLOPS, f16 from 54.8-56.0 to 62.7-62.8 (two interleaved pairs). */
  bool xshare = !gemv && !staged && caps->subgroup_shuffle && caps->subgroup_size == gemm_direct.bn / gemm_direct.tn &&
                gemm_direct.tm % caps->subgroup_size == 0;
  snprintf(defines, sizeof defines, "W_F16=%d;W_BF16=%d;KV=%u;STAGED=%d;W_TEXEL=%d;X_TEXEL=%d;XSHARE=%d",
           wtype == LT_F16, wtype == LT_BF16, kv, staged, wt != GPU_TEXEL_NONE, xt != GPU_TEXEL_NONE, xshare);

  op_id_t id;
  uint32_t spec[6], n_spec, gx, gy, gz = 1;
  op_loop_cost_t cost;
  if (gemv) {
    /* On CPU drivers one subgroup per workgroup (its barrier is nearly free) with many rows to share each load of
     * x: on lavapipe, 1x4096x4096 f32, 8 invocations x 16 rows ran at 2.7 GFLOPS, 16 x 8 at 1.2, 64 x 4 at 0.4. */
    gemv_cfg_t v = gemv_cfg(caps, OP_GEMV, M < GEMV_MAX_MR ? M : GEMV_MAX_MR, ws * K, N);
    uint32_t groups = gemv_groups(&v, N);
    cost = gemv_loop_iters(&v, kv);
    id = OP_GEMV;
    spec[0] = v.wg, spec[1] = v.rows, spec[2] = v.mr, spec[3] = v.spread, n_spec = 4;
    gx = groups < caps->max_wg_count[0] ? groups : caps->max_wg_count[0];
    gz = ceil_div(groups, gx);
    gy = ceil_div(M, v.mr);
  } else {
    const gemm_cfg_t *t = staged ? &gemm_staged : &gemm_direct;
    cost = gemm_loop_iters(t, staged, kv);
    id = OP_MATMUL;
    spec[0] = (t->bm / t->tm) * (t->bn / t->tn), spec[1] = t->bm, spec[2] = t->bn, spec[3] = t->bk, spec[4] = t->tm,
    spec[5] = t->tn, n_spec = 6;
    gx = ceil_div(N, t->bn);
    gy = ceil_div(M, t->bm);
  }
  if (gx > caps->max_wg_count[0] || gy > caps->max_wg_count[1] || gz > caps->max_wg_count[2])
    return lt_fail(err, LT_E_LIMIT, "op_matmul: %ux%ux%u needs %ux%ux%u workgroups, more than the device allows", M, N,
                   K, gx, gy, gz);
  gpu_pipeline_t *p = op_pipeline_texel(g, id, defines, spec, n_spec, (wt ? 1u << 2 : 0) | (xt ? 1u << 1 : 0), err);
  if (!p) return err ? err->code : LT_E_SHADER;

  gpu_view_t views[3] = {y, x, w};
  uint64_t bytes[3] = {yb, xspan, wspan};
  bool writes[3] = {true, false, false};
  gpu_texel_t texel[3] = {GPU_TEXEL_NONE, xt, wt};
  pc_matmul_t pc = {.M = M, .N = N, .K = K, .x_stride = x_stride, .w_stride = K, .y_stride = y_stride};
  return op_dispatch_k_texel(c, p, id, views, bytes, writes, texel, 3, &pc, cost, accumulate, gx, gy, gz, err);
}

/* What the fused GEMV variants (gemv.comp with GLU or QKV) share: the shape and dtype they take, the kernel shape,
 * the pipeline and the grid for `rows` rows of output in all. LT_E_UNSUPPORTED when they do not take it (M above
 * 4, K too long for one dispatch, a dtype other than f32/f16/bf16, or, with row_multiple, row counts that are not
 * multiples of the kernel's rows per workgroup). */
typedef struct fused_gemv {
  gpu_pipeline_t *p;
  uint32_t gx, gz, kv;
  gpu_texel_t wt;        /* the weights' texel format (bindings 2 and up), or none */
  gpu_texel_t xt;        /* x's, and the norm weights' with NORM (RGBA32F), or none */
  uint64_t span[3];      /* the bytes bound of each weight */
  uint64_t xspan, nspan; /* and of x and the norm weights */
} fused_gemv_t;

static lt_status_t fused_gemv_prep(gpu_cmd_t *c, op_id_t id, const char *name, const char *variant, lt_dtype_t wtype,
                                   uint32_t M, uint32_t rows, uint32_t K, const uint32_t *row_counts, uint32_t n_counts,
                                   const gpu_view_t *ws, const uint32_t *w_rows, uint32_t n_w, gpu_view_t x,
                                   gpu_view_t norm, uint32_t norm_binding, fused_gemv_t *f, lt_err_t *err) {
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  bool w16 = wtype == LT_F16 || wtype == LT_BF16;
  if (M == 0 || M > GEMV_MAX_AUTO_M || rows == 0 || K == 0 || (wtype != LT_F32 && !w16) ||
      (w16 && K % 8 != 0 && !caps->storage16))
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: %ux%ux%u %s is not a shape it takes", name, M, rows, K,
                   lt_dtype_str(wtype));
  f->kv = w16 ? (K % 8 == 0 ? 8 : 1) : (K % 4 == 0 ? 4 : 1);
  uint32_t fewest = rows;
  for (uint32_t i = 0; i < n_counts; i++) fewest = row_counts[i] < fewest ? row_counts[i] : fewest;
  gemv_cfg_t v = gemv_cfg(caps, id, M, (uint64_t)lt_dtype_size(wtype) * K, fewest);
  for (uint32_t i = 0; i < n_counts; i++)
    if (row_counts[i] % v.rows)
      return lt_fail(err, LT_E_UNSUPPORTED, "%s: %u rows are not a multiple of %u", name, row_counts[i], v.rows);
  /* The K loop, then the final loop over pairs: one sum of the partials per pair, and one more for each of GLU's up
   * projection, NORM's sums of squares and ROPE's pair partner. All of K in one dispatch or not at all. */
  op_loop_cost_t cost = gemv_loop_iters(&v, f->kv);
  uint32_t extra =
      (strstr(variant, "GLU=") != NULL) + (strstr(variant, "NORM=1") != NULL) + (strstr(variant, "ROPE=1") != NULL);
  cost.fixed += extra * ceil_div(v.mr * v.rows, v.wg) * v.wg;
  uint32_t budget = op_loop_budget(id);
  if (cost.fixed >= budget || (uint64_t)(budget - cost.fixed) / cost.per_unit * cost.k_per_unit < K)
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: K %u needs more than one dispatch", name, K);
  /* Every weight through a texel view, or none; then x and the norm weights together, or neither. */
  f->wt = GPU_TEXEL_NONE;
  for (uint32_t i = 0; i < n_w; i++) {
    uint64_t wb = (uint64_t)lt_dtype_size(wtype) * w_rows[i] * K;
    gpu_texel_t t = weight_texel(caps, ws[i], wtype, wb, f->kv, &f->span[i]);
    if (i > 0 && t != f->wt) t = GPU_TEXEL_NONE;
    f->wt = t;
  }
  if (!f->wt)
    for (uint32_t i = 0; i < n_w; i++) f->span[i] = (uint64_t)lt_dtype_size(wtype) * w_rows[i] * K;
  f->xt = f->wt ? op_texel_bind(caps, x, GPU_TEXEL_RGBA32F, 4ull * M * K, &f->xspan) : GPU_TEXEL_NONE;
  f->nspan = 4ull * K;
  if (f->xt && norm.buf && !op_texel_bind(caps, norm, GPU_TEXEL_RGBA32F, 4ull * K, &f->nspan)) f->xt = GPU_TEXEL_NONE;
  if (!f->xt) f->xspan = 4ull * M * K, f->nspan = 4ull * K;
  char defines[96];
  snprintf(defines, sizeof defines, "W_F16=%d;W_BF16=%d;KV=%u;STAGED=0;W_TEXEL=%d;X_TEXEL=%d;%s", wtype == LT_F16,
           wtype == LT_BF16, f->kv, f->wt != GPU_TEXEL_NONE, f->xt != GPU_TEXEL_NONE, variant);
  /* With row_counts (QKV) each matrix has its own blocks of workgroups, which gemv.comp walks in order. */
  uint32_t groups = n_counts ? 0 : gemv_groups(&v, rows);
  for (uint32_t i = 0; i < n_counts; i++) groups += gemv_groups(&v, row_counts[i]);
  uint32_t spec[4] = {v.wg, v.rows, v.mr, v.spread};
  f->gx = groups < caps->max_wg_count[0] ? groups : caps->max_wg_count[0];
  f->gz = ceil_div(groups, f->gx);
  uint32_t mask =
      (f->wt ? ((1u << n_w) - 1) << 2 : 0) | (f->xt ? 1u << 1 : 0) | (f->xt && norm.buf ? 1u << norm_binding : 0);
  if (!(f->p = op_pipeline_texel(g, id, defines, spec, 4, mask, err))) return err ? err->code : LT_E_SHADER;
  return LT_OK;
}

/* Checks the operands of a fused GEMV: x [M,K], each weight [rows_i, K] in wtype, each output [M, rows_i]. */
static lt_status_t fused_gemv_check(const gpu_caps_t *caps, gpu_view_t x, const gpu_view_t *w, const gpu_view_t *y,
                                    const uint32_t *rows, uint32_t n, lt_dtype_t wtype, uint32_t M, uint32_t K,
                                    lt_err_t *err) {
  char shape[96];
  lt_status_t st;
  snprintf(shape, sizeof shape, "[%u,%u] f32", M, K);
  if ((st = check_operand(caps, "x", x, 4ull * M * K, shape, err)) != LT_OK) return st;
  for (uint32_t i = 0; i < n; i++) {
    snprintf(shape, sizeof shape, "[%u,%u] %s", rows[i], K, lt_dtype_str(wtype));
    if ((st = check_operand(caps, "w", w[i], lt_dtype_size(wtype) * rows[i] * K, shape, err)) != LT_OK) return st;
    snprintf(shape, sizeof shape, "[%u,%u] f32", M, rows[i]);
    if ((st = check_operand(caps, "y", y[i], 4ull * M * rows[i], shape, err)) != LT_OK) return st;
  }
  return LT_OK;
}

lt_status_t op_gemv_glu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t wg, gpu_view_t wu, lt_dtype_t wtype,
                        uint32_t M, uint32_t N, uint32_t K, bool gelu, gpu_view_t norm, float eps, lt_err_t *err) {
  fused_gemv_t f;
  bool nm = norm.buf != NULL;
  const char *variant = gelu ? (nm ? "GLU=2;NORM=1" : "GLU=2") : (nm ? "GLU=1;NORM=1" : "GLU=1");
  op_id_t id = nm ? OP_GEMV_GLU_N : OP_GEMV_GLU;
  const gpu_view_t ws[2] = {wg, wu}, ys[2] = {y, y};
  const uint32_t rows[2] = {N, N};
  lt_status_t st =
      fused_gemv_prep(c, id, "op_gemv_glu", variant, wtype, M, N, K, NULL, 0, ws, rows, 2, x, norm, 4, &f, err);
  if (st == LT_OK) st = fused_gemv_check(gpu_caps(gpu_cmd_gpu(c)), x, ws, ys, rows, 2, wtype, M, K, err);
  if (st != LT_OK) return st;
  gpu_view_t views[5] = {y, x, wg, wu, norm};
  uint64_t bytes[5] = {4ull * M * N, f.xspan, f.span[0], f.span[1], f.nspan};
  bool writes[5] = {true, false, false, false, false};
  pc_matmul_t pc = {
      .M = M, .N = N, .K = K, .x_stride = K, .w_stride = K, .y_stride = N, .k_base = 0, .k_len = K, .eps = eps};
  gpu_texel_t texel[5] = {GPU_TEXEL_NONE, f.xt, f.wt, f.wt, nm ? f.xt : GPU_TEXEL_NONE};
  return op_dispatch_texel(c, f.p, id, views, bytes, writes, texel, nm ? 5 : 4, &pc, f.gx, 1, f.gz, err);
}

lt_status_t op_gemv_qkv_rope(gpu_cmd_t *c, gpu_view_t q, gpu_view_t k, gpu_view_t v, gpu_view_t x, gpu_view_t wq,
                             gpu_view_t wk, gpu_view_t wv, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t N2,
                             uint32_t K, gpu_view_t norm, float eps, const op_qkv_rope_t *rope, lt_err_t *err) {
  fused_gemv_t f;
  const uint32_t rows[3] = {N, N2, N2};
  bool nm = norm.buf != NULL;
  op_id_t id = rope ? OP_GEMV_QKV_R : nm ? OP_GEMV_QKV_N : OP_GEMV_QKV;
  const char *variant = rope ? (nm ? "QKV=1;NORM=1;ROPE=1" : "QKV=1;ROPE=1") : nm ? "QKV=1;NORM=1" : "QKV=1";
  lt_status_t st = LT_OK;
  if (N2 == 0)
    st = lt_fail(err, LT_E_UNSUPPORTED, "op_gemv_qkv: no k and v rows");
  else if (rope && (rope->head_dim < 2 || rope->head_dim % 2 || N % rope->head_dim || N2 % rope->head_dim ||
                    !rope->pos.buf || !rope->table.buf || !rope->max_pos))
    st = lt_fail(err, LT_E_UNSUPPORTED, "op_gemv_qkv: RoPE over heads of %u in %u and %u rows is not one it takes",
                 rope->head_dim, N, N2);
  const gpu_view_t ws[3] = {wq, wk, wv}, ys[3] = {q, k, v};
  if (st == LT_OK)
    st = fused_gemv_prep(c, id, "op_gemv_qkv", variant, wtype, M, N + 2 * N2, K, rows, 3, ws, rows, 3, x, norm, 7, &f,
                         err);
  if (st == LT_OK) st = fused_gemv_check(gpu_caps(gpu_cmd_gpu(c)), x, ws, ys, rows, 3, wtype, M, K, err);
  if (st != LT_OK) return st;
  /* Without the norm, binding 7 of the RoPE variant is unused: x stands in for it. */
  gpu_view_t views[10] = {q, x, wq, wk, wv, k, v, nm ? norm : x, rope ? rope->pos : x, rope ? rope->table : x};
  uint64_t bytes[10] = {4ull * M * N,  f.xspan,
                        f.span[0],     f.span[1],
                        f.span[2],     4ull * M * N2,
                        4ull * M * N2, nm ? f.nspan : 4ull * M * K,
                        4ull * M,      rope ? 8ull * rope->max_pos * (rope->head_dim / 2) : 4};
  bool writes[10] = {true, false, false, false, false, true, true, false, false, false};
  pc_matmul_t pc = {.M = M,
                    .N = N,
                    .K = K,
                    .x_stride = K,
                    .w_stride = K,
                    .y_stride = N,
                    .k_base = 0,
                    .k_len = K,
                    .n2 = N2,
                    .eps = eps,
                    .rope_hd = rope ? rope->head_dim : 0,
                    .rope_neox = rope && rope->neox,
                    .rope_max_pos = rope ? rope->max_pos : 0};
  gpu_texel_t texel[10] = {GPU_TEXEL_NONE, f.xt,           f.wt,           f.wt,
                           f.wt,           GPU_TEXEL_NONE, GPU_TEXEL_NONE, nm ? f.xt : GPU_TEXEL_NONE};
  return op_dispatch_texel(c, f.p, id, views, bytes, writes, texel, rope ? 10 : nm ? 8 : 7, &pc, f.gx, 1, f.gz, err);
}

lt_status_t op_gemv_qkv(gpu_cmd_t *c, gpu_view_t q, gpu_view_t k, gpu_view_t v, gpu_view_t x, gpu_view_t wq,
                        gpu_view_t wk, gpu_view_t wv, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t N2, uint32_t K,
                        gpu_view_t norm, float eps, lt_err_t *err) {
  return op_gemv_qkv_rope(c, q, k, v, x, wq, wk, wv, wtype, M, N, N2, K, norm, eps, NULL, err);
}

lt_status_t op_matmul_path(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, lt_dtype_t wtype, uint32_t M,
                           uint32_t N, uint32_t K, bool accumulate, matmul_path_t path, lt_err_t *err) {
  return matmul(c, y, N, x, K, w, wtype, M, N, K, accumulate, path, err);
}

lt_status_t op_matmul(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, lt_dtype_t wtype, uint32_t M, uint32_t N,
                      uint32_t K, bool accumulate, lt_err_t *err) {
  return matmul(c, y, N, x, K, w, wtype, M, N, K, accumulate, MATMUL_AUTO, err);
}

lt_status_t op_matmul_strided(gpu_cmd_t *c, gpu_view_t y, uint32_t y_stride, gpu_view_t x, uint32_t x_stride,
                              gpu_view_t w, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t K, bool accumulate,
                              lt_err_t *err) {
  return matmul(c, y, y_stride, x, x_stride, w, wtype, M, N, K, accumulate, MATMUL_AUTO, err);
}
