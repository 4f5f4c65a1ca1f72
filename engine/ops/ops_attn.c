/* Positions and lookup: the RoPE table and rotation, the embedding gather, and causal attention over a KV cache. */
#include <assert.h>
#include <math.h>
#include <stdio.h>

#include "engine/ops/ops.h"
#include "engine/ops/qblock.h"

/* Attention tuning: workgroups of op_wg(OP_ATTN) invocations walk the keys in blocks of that many, with tiles of 16
 * queries (4 when there are fewer queries or little shared memory). lavapipe silently stops a shader loop after
 * ~65,535 iterations per invocation, so a split's estimated per-invocation iterations stay within the op's loop
 * budget (engine/ops/ops.def). */
#define ATTN_MAX_HD 256u
#define ATTN_MAX_SPLIT 2048u
#define ATTN_MIN_SPLIT 256u
#define ATTN_TARGET_GROUPS 256u        /* workgroups wanted in flight before splitting for parallelism */
#define ATTN_SCRATCH_CAP (16ull << 20) /* bytes of split partials per dispatch */
#define ATTN_BR16_SHARED 24576u        /* shared bytes attn.comp needs with 16-query tiles (~20.8 KiB) */

/* inv_freq of pair i (theta^(-2i/rot_dim)) with the Llama-3 adjustment of Hugging Face's
 * _compute_llama3_parameters when s asks for it. */
static double rope_inv_freq(uint32_t i, uint32_t rot_dim, double theta, const rope_scaling_t *s) {
  double inv = pow(theta, -2.0 * (double)i / (double)rot_dim);
  if (!s || s->type != 1) return inv;
  double orig = s->original_max_position, lo = s->low_freq_factor, hi = s->high_freq_factor;
  double wavelen = 2.0 * M_PI / inv;
  if (wavelen < orig / hi) return inv;               /* high frequencies: kept */
  if (wavelen > orig / lo) return inv / s->factor;   /* low frequencies: slowed by the factor */
  double smooth = (orig / wavelen - lo) / (hi - lo); /* in between: interpolated */
  return (1.0 - smooth) * inv / s->factor + smooth * inv;
}

void rope_table_build(float *table, uint32_t max_pos, uint32_t rot_dim, double theta, const rope_scaling_t *scaling) {
  uint32_t pairs = rot_dim / 2;
  for (uint32_t i = 0; i < pairs; i++) {
    double inv = rope_inv_freq(i, rot_dim, theta, scaling);
    for (uint32_t p = 0; p < max_pos; p++) {
      double a = (double)p * inv;
      float *e = table + ((uint64_t)p * pairs + i) * 2;
      e[0] = (float)cos(a);
      e[1] = (float)sin(a);
    }
  }
}

/* Spreads `rows` workgroup rows over the grid's y and z (y at most 65535); shaders take row = z * ny + y. */
static void rows_grid(uint32_t rows, uint32_t *gy, uint32_t *gz) {
  *gy = rows < 65535 ? rows : 65535;
  *gz = (rows + *gy - 1) / *gy;
}

/* op_rope, or with inverse its backward (the same rotation by minus the angle). */
static lt_status_t rope(gpu_cmd_t *c, gpu_view_t x, gpu_view_t pos, gpu_view_t table, uint32_t rows, uint32_t n_heads,
                        uint32_t head_dim, uint32_t rot_dim, bool neox, uint32_t max_pos, bool inverse, lt_err_t *err) {
  if (rot_dim == 0 || rot_dim % 2 || rot_dim > head_dim)
    return lt_fail(err, LT_E_INVALID, "rope: rot_dim %u must be even and in [2, head_dim %u]", rot_dim, head_dim);
  if (max_pos == 0) return lt_fail(err, LT_E_INVALID, "rope: empty table");
  if (rows == 0 || n_heads == 0) return LT_OK;
  uint64_t n = (uint64_t)rows * n_heads * head_dim;
  if (n > UINT32_MAX)
    return lt_fail(err, LT_E_LIMIT, "rope: %llu elements exceed 32-bit indexing", (unsigned long long)n);
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_ROPE, NULL, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_rope_t pc = {.rows = rows,
                  .n_heads = n_heads,
                  .head_dim = head_dim,
                  .rot_dim = rot_dim,
                  .neox = neox,
                  .max_pos = max_pos,
                  .inverse = inverse};
  gpu_view_t v[3] = {x, pos, table};
  uint64_t bytes[3] = {4 * n, 4ull * rows, 4ull * max_pos * rot_dim};
  bool w[3] = {true, false, false};
  uint32_t gy, gz;
  rows_grid(rows, &gy, &gz);
  return op_dispatch(c, p, OP_ROPE, v, bytes, w, 3, &pc,
                     (n_heads * (rot_dim / 2) + op_wg(OP_ROPE) - 1) / op_wg(OP_ROPE), gy, gz, err);
}

lt_status_t op_rope(gpu_cmd_t *c, gpu_view_t x, gpu_view_t pos, gpu_view_t table, uint32_t rows, uint32_t n_heads,
                    uint32_t head_dim, uint32_t rot_dim, bool neox, uint32_t max_pos, lt_err_t *err) {
  return rope(c, x, pos, table, rows, n_heads, head_dim, rot_dim, neox, max_pos, false, err);
}

lt_status_t op_rope_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t pos, gpu_view_t table, uint32_t rows,
                             uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim, bool neox, uint32_t max_pos,
                             lt_err_t *err) {
  return rope(c, dx, pos, table, rows, n_heads, head_dim, rot_dim, neox, max_pos, true, err);
}

lt_status_t op_embed(gpu_cmd_t *c, gpu_view_t y, gpu_view_t table, lt_dtype_t ttype, gpu_view_t ids, uint32_t n_ids,
                     uint32_t dim, uint32_t row_lo, uint32_t row_hi, lt_err_t *err) {
  return op_embed_z(c, y, table, ttype, ids, n_ids, dim, row_lo, row_hi, NULL, err);
}

lt_status_t op_embed_z(gpu_cmd_t *c, gpu_view_t y, gpu_view_t table, lt_dtype_t ttype, gpu_view_t ids, uint32_t n_ids,
                       uint32_t dim, uint32_t row_lo, uint32_t row_hi, const op_zread_t *z, lt_err_t *err) {
  bool blocks = qblock_is(ttype);
  if (z && blocks)
    return lt_fail(err, LT_E_INVALID, "embed: a perturbed read needs a float table, not %s", lt_dtype_str(ttype));
  if (z && (uint64_t)(row_hi - row_lo) * dim > UINT32_MAX)
    return lt_fail(err, LT_E_LIMIT, "embed: a perturbed piece of %u x %u elements exceeds 32-bit indexing",
                   row_hi - row_lo, dim);
  if (ttype != LT_F32 && ttype != LT_F16 && ttype != LT_BF16 && !blocks)
    return lt_fail(err, LT_E_INVALID, "embed: table dtype %s (want f32, f16, bf16 or one of %s)", lt_dtype_str(ttype),
                   qblock_names());
  if (blocks && dim % qblock_info(ttype)->block)
    return lt_fail(err, LT_E_INVALID, "embed: rows of %u are no multiple of %s's %u-element blocks", dim,
                   lt_dtype_str(ttype), qblock_info(ttype)->block);
  if (row_hi < row_lo) return lt_fail(err, LT_E_INVALID, "embed: rows [%u, %u) are reversed", row_lo, row_hi);
  gpu_t *g = gpu_cmd_gpu(c);
  if ((ttype == LT_F16 || ttype == LT_BF16) && !gpu_caps(g)->storage16)
    return lt_fail(err, LT_E_UNSUPPORTED, "embed: a %s table needs 16-bit storage buffers", lt_dtype_str(ttype));
  if (n_ids == 0 || dim == 0 || row_hi == row_lo) return LT_OK;
  uint64_t n = (uint64_t)n_ids * dim;
  if (n > UINT32_MAX)
    return lt_fail(err, LT_E_LIMIT, "embed: %llu outputs exceed 32-bit indexing", (unsigned long long)n);
  char defines[40];
  if (blocks)
    snprintf(defines, sizeof defines, "GQ=%d", (int)ttype);
  else
    snprintf(defines, sizeof defines, "TABLE_F16=%d;TABLE_BF16=%d;PERTURB=%d", ttype == LT_F16, ttype == LT_BF16,
             z != NULL);
  gpu_pipeline_t *p = op_pipeline(g, OP_EMBED, defines, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  uint64_t row_bytes = blocks ? qblock_row_bytes(ttype, dim) : (uint64_t)dim * lt_dtype_size(ttype);
  pc_embed_t pc = {.n_ids = n_ids, .dim = dim, .row_lo = row_lo, .row_hi = row_hi, .row_bytes = (uint32_t)row_bytes};
  if (z) {
    pc.seed_lo = (uint32_t)z->seed, pc.seed_hi = (uint32_t)(z->seed >> 32);
    pc.tensor_id = z->tensor_id, pc.scale = z->scale;
  }
  gpu_view_t v[3] = {y, table, ids};
  /* Block rows need not end on a word: the shader reads whole words, the last one partly. */
  uint64_t tb = (uint64_t)(row_hi - row_lo) * row_bytes;
  uint64_t bytes[3] = {4 * n, blocks ? (tb + 3) / 4 * 4 : tb, 4ull * n_ids};
  bool w[3] = {true, false, false};
  uint32_t gy, gz, per_row = blocks ? dim / 8 : dim;
  rows_grid(n_ids, &gy, &gz);
  return op_dispatch(c, p, OP_EMBED, v, bytes, w, 3, &pc, (per_row + op_wg(OP_EMBED) - 1) / op_wg(OP_EMBED), gy, gz,
                     err);
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static bool g_key_slices = true, g_decode_kernel = true, g_row_kernel = true;

void op_attention_key_slices(bool on) { g_key_slices = on; }

void op_attention_decode_kernel(bool on) { g_decode_kernel = on; }

void op_attention_row_kernel(bool on) { g_row_kernel = on; }

/* Splits of len keys, shortened when fewer than ATTN_TARGET_GROUPS workgroups would run (decode, few rows) so that
 * a long cache spreads over the whole device: about kv_used / (target / groups) keys, whole blocks of `block`
 * keys, no fewer than ATTN_MIN_SPLIT. */
static uint64_t attn_spread(uint64_t len, uint64_t kv_used, uint64_t groups, uint32_t block) {
  if (groups >= ATTN_TARGET_GROUPS) return len;
  uint64_t want = (ATTN_TARGET_GROUPS + groups - 1) / groups;
  uint64_t even = ((kv_used + want - 1) / want + block - 1) / block * block;
  return min_u64(len, even > ATTN_MIN_SPLIT ? even : ATTN_MIN_SPLIT);
}

/* Keys per split: short enough that no invocation of attn.comp (workgroups of wg) loops past its budget, and when
 * there are few workgroups (decode), short enough to spread a long cache over the whole device. */
static uint32_t attn_split_len(uint32_t wg, uint32_t hd, uint32_t br, uint64_t kv_used, uint64_t groups) {
  /* Per block an invocation loops over the head's vec4s (scores), twice over its keys of one query row plus the
   * row's partial results (softmax), and over the block's keys (P.V); the loops over queries and dims are
   * unrolled. */
  uint32_t tpr = wg / br;
  uint32_t per_block = (hd + 3) / 4 + 2 * (wg / tpr) + 2 * tpr + wg;
  return (uint32_t)attn_spread(min_u64(op_loop_budget(OP_ATTN) / per_block * wg, ATTN_MAX_SPLIT), kv_used, groups, wg);
}

/* Query rows share a split count while their causal key ranges end in the same split: returns the end of the run
 * of rows starting at t0 and its split count in *ns. */
static uint32_t attn_run_end(uint32_t t0, uint32_t n_q, uint32_t q_pos0, uint32_t kv_len, uint32_t split,
                             uint32_t *ns) {
  uint64_t end = min_u64(kv_len, (uint64_t)q_pos0 + t0 + 1);
  uint64_t k = (end + split - 1) / split;
  *ns = (uint32_t)k;
  if (k * split >= kv_len) return n_q;
  return (uint32_t)min_u64(k * split - q_pos0, n_q); /* first row whose keys reach past split k */
}

/* Most rows of one dispatch with ns splits: the grid's x limit on tiles and, with partials, the scratch cap. */
static uint32_t attn_chunk_rows(const gpu_caps_t *caps, uint32_t n_heads, uint32_t group, uint32_t hd, uint32_t br,
                                uint32_t ns) {
  uint64_t rows = (uint64_t)caps->max_wg_count[0] * br / group;
  if (ns > 1) rows = min_u64(rows, ATTN_SCRATCH_CAP / ((uint64_t)n_heads * ns * (hd + 2) * 4));
  return rows ? (uint32_t)min_u64(rows, UINT32_MAX) : 1;
}

/* Decode attention (attn_dec.comp) shapes: at most this many queries per KV head (rows x query heads), and per
 * invocation at most this many vec4 columns of a head and vec4 output registers over all its queries. */
#define ATTN_DEC_MAX_QN 32u
#define ATTN_DEC_MAX_CW 4u
#define ATTN_DEC_MAX_REGS 32u
/* attn_rows.comp (one invocation per query) for heads of at most this many vec4s, where the tiles of attn.comp
 * would be nearly idle; on CPU drivers, whose invocations are SIMD lanes of few threads, for heads up to the
 * second bound (bench_attn: prefill 512 with 12/4 heads of 64 ran 3x faster than the tiles, 32/8 of 128 1.5x).
 * KC keys a step. */
#define ATTN_ROWS_MAX_HD4 8u
#define ATTN_ROWS_MAX_HD4_CPU 32u
#define ATTN_ROWS_KC 4u

/* One op_attention call: its tensors, how K and V are bound (texel views where kvt, over kspan and vspan bytes) and
 * the push constants its dispatches share. */
typedef struct attn_call {
  gpu_view_t out, q, k, v;
  bool kvt;
  uint64_t kspan, vspan;
  pc_attn_t pc;
} attn_call_t;

/* Scratch of c for the split partials of `recs` (row, head, split) records of head_dim floats: the (max, sum)
 * pairs at 0 and the sums at *acc_off. */
static lt_status_t attn_scratch(gpu_cmd_t *c, uint64_t recs, uint32_t head_dim, gpu_buf_t **scratch, uint64_t *acc_off,
                                lt_err_t *err) {
  const gpu_caps_t *caps = gpu_caps(gpu_cmd_gpu(c));
  uint64_t align = caps->min_storage_align ? caps->min_storage_align : 4;
  *acc_off = (recs * 8 + align - 1) / align * align;
  *scratch = gpu_cmd_scratch(c, *acc_off + recs * head_dim * 4, err);
  return *scratch ? LT_OK : err ? err->code : LT_E_DEVICE_OOM;
}

/* Records query rows [pc.row_base, pc.n_q) over pc.n_splits key splits: pa (op aid) on a gx x gy x gz grid and,
 * with several splits, attn_merge.comp (pm) over the partials in scratch (sums at acc_off). */
static lt_status_t attn_run(gpu_cmd_t *c, const attn_call_t *a, gpu_pipeline_t *pa, op_id_t aid, gpu_pipeline_t *pm,
                            gpu_buf_t *scratch, uint64_t acc_off, uint32_t gx, uint32_t gy, uint32_t gz,
                            lt_err_t *err) {
  const pc_attn_t *pc = &a->pc;
  uint32_t ns = pc->n_splits, rows = pc->n_q - pc->row_base, hd = pc->head_dim;
  uint64_t row_elems = (uint64_t)pc->n_heads * hd, keys = min_u64(pc->kv_len, (uint64_t)pc->q_pos0 + pc->n_q);
  uint64_t recs = (uint64_t)rows * pc->n_heads * ns;
  /* One split writes out directly; its partial bindings then only need a valid placeholder. */
  gpu_view_t part_ml = ns > 1 ? (gpu_view_t){scratch, 0} : a->q;
  gpu_view_t part_acc = ns > 1 ? (gpu_view_t){scratch, acc_off} : a->q;
  gpu_view_t va[6] = {a->out, a->q, a->k, a->v, part_ml, part_acc};
  uint64_t ba[6] = {4 * row_elems * pc->n_q,     4 * row_elems * pc->n_q, 4ull * pc->kv_stride * keys,
                    4ull * pc->kv_stride * keys, ns > 1 ? 8 * recs : 4,   ns > 1 ? 4 * hd * recs : 4};
  if (a->kvt) ba[2] = a->kspan, ba[3] = a->vspan;
  bool wa[6] = {ns == 1, false, false, false, ns > 1, ns > 1};
  gpu_texel_t tt = a->kvt ? GPU_TEXEL_RGBA32F : GPU_TEXEL_NONE;
  gpu_texel_t ta[6] = {GPU_TEXEL_NONE, GPU_TEXEL_NONE, tt, tt, GPU_TEXEL_NONE, GPU_TEXEL_NONE};
  lt_status_t st = op_dispatch_texel(c, pa, aid, va, ba, wa, ta, 6, pc, gx, gy, gz, err);
  if (st != LT_OK || ns == 1) return st;
  gpu_view_t vm[3] = {a->out, part_ml, part_acc};
  uint64_t bm[3] = {4 * row_elems * pc->n_q, 8 * recs, 4 * hd * recs};
  bool wm[3] = {true, false, false};
  return op_dispatch(c, pm, OP_ATTN_MERGE, vm, bm, wm, 3, pc, pc->n_heads, rows, 1, err);
}

/* The call through attn_dec.comp when its shape suits it (few queries per KV head, heads a multiple of 4, K and V
 * as the call binds them); *used says whether it did. */
static lt_status_t attn_decode(gpu_cmd_t *c, attn_call_t *a, bool *used, lt_err_t *err) {
  *used = false;
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  pc_attn_t *pc = &a->pc;
  uint32_t group = pc->n_heads / pc->n_kv_heads, qn = pc->n_q * group, hd4 = pc->head_dim / 4;
  uint32_t wg = op_wg(OP_ATTN_DEC);
  if (!g_decode_kernel || pc->head_dim % 4 || (uint64_t)pc->n_q * group > ATTN_DEC_MAX_QN) return LT_OK;
  /* D invocations share a key's dims: as few as keep each one's columns and registers in bounds, and within a
   * subgroup (shuffles). */
  uint32_t d = 1;
  while (d < 8 && d * 2 <= hd4 && ((hd4 + d - 1) / d > ATTN_DEC_MAX_CW || qn * ((hd4 + d - 1) / d) > ATTN_DEC_MAX_REGS))
    d *= 2;
  uint32_t cw = (hd4 + d - 1) / d;
  if (qn * cw > ATTN_DEC_MAX_REGS || (d > 1 && (!caps->subgroup_shuffle || caps->subgroup_size < d))) return LT_OK;
  /* The lanes' merge in shared memory: fewer lanes (a smaller workgroup, still whole subgroups) where it would not
   * fit. */
  uint32_t sg = caps->subgroup_size > d ? caps->subgroup_size : d;
  while ((uint64_t)(wg / d) * qn * (16ull * hd4 + 8) > caps->max_shared && wg / 2 >= sg && wg / 2 >= 2 * d) wg /= 2;
  uint32_t lanes = wg / d;
  if ((uint64_t)lanes * qn * (16ull * hd4 + 8) > caps->max_shared) return LT_OK;
  uint32_t kc = lanes >= 64 ? 1 : lanes >= 32 ? 2 : 4, block = lanes * kc;
  uint64_t kv_used = min_u64(pc->kv_len, (uint64_t)pc->q_pos0 + pc->n_q);
  /* Splits: within the loop budget (one iteration a block, and the merge's two walks over the lanes), and spread
   * over the device when there are few KV heads. */
  uint64_t merge = 2ull * lanes * ((qn * hd4 + wg - 1) / wg);
  uint64_t split = attn_spread(min_u64((op_loop_budget(OP_ATTN_DEC) - merge) * block, ATTN_MAX_SPLIT * 8ull), kv_used,
                               pc->n_kv_heads, block);
  uint32_t ns = (uint32_t)((kv_used + split - 1) / split);
  if (ns > caps->max_wg_count[0]) return LT_OK;
  gpu_buf_t *scratch = NULL;
  uint64_t acc_off = 0;
  lt_status_t st;
  if (ns > 1 && (st = attn_scratch(c, (uint64_t)pc->n_q * pc->n_heads * ns, pc->head_dim, &scratch, &acc_off, err)))
    return st;
  char defines[80];
  snprintf(defines, sizeof defines, "QN=%u;G=%u;HD4N=%u;D=%u;KC=%u;KV_TEXEL=%d", qn, group, hd4, d, kc, a->kvt);
  gpu_pipeline_t *pd = op_pipeline_texel(g, OP_ATTN_DEC, defines, &wg, 1, a->kvt ? 3u << 2 : 0, err);
  gpu_pipeline_t *pm = pd && ns > 1 ? op_pipeline(g, OP_ATTN_MERGE, NULL, NULL, 0, err) : pd;
  if (!pm) return err ? err->code : LT_E_SHADER;
  pc->row_base = 0, pc->split_len = (uint32_t)split, pc->n_splits = ns;
  *used = true;
  return attn_run(c, a, pd, OP_ATTN_DEC, pm, scratch, acc_off, ns, pc->n_kv_heads, 1, err);
}

lt_status_t op_attention(gpu_cmd_t *c, gpu_view_t out, gpu_view_t q, gpu_view_t k, gpu_view_t v, uint32_t n_q,
                         uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim, uint32_t q_pos0, uint32_t kv_len,
                         uint32_t window, float scale, float softcap, lt_err_t *err) {
  if (n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads)
    return lt_fail(err, LT_E_INVALID, "attention: %u heads do not group over %u KV heads", n_heads, n_kv_heads);
  if (head_dim == 0 || head_dim > ATTN_MAX_HD)
    return lt_fail(err, LT_E_INVALID, "attention: head_dim %u outside [1, %u]", head_dim, ATTN_MAX_HD);
  if (kv_len == 0) return lt_fail(err, LT_E_INVALID, "attention: empty KV cache");
  if (n_q == 0) return LT_OK;
  uint64_t row_elems = (uint64_t)n_heads * head_dim, kv_stride = (uint64_t)n_kv_heads * head_dim;
  uint64_t kv_used = min_u64(kv_len, (uint64_t)q_pos0 + n_q);
  if (row_elems * n_q > UINT32_MAX || kv_stride * kv_used > UINT32_MAX)
    return lt_fail(err, LT_E_LIMIT, "attention: tensors exceed 32-bit indexing");
  gpu_t *g = gpu_cmd_gpu(c);
  const gpu_caps_t *caps = gpu_caps(g);
  if (n_kv_heads > caps->max_wg_count[1])
    return lt_fail(err, LT_E_LIMIT, "attention: %u KV heads exceed the grid limit %u", n_kv_heads,
                   caps->max_wg_count[1]);
  uint32_t group = n_heads / n_kv_heads;
  /* K and V through texel views where the device reads them (vec4 loads: heads a multiple of 4), bound over every
   * key this call may read. */
  attn_call_t a = {.out = out,
                   .q = q,
                   .k = k,
                   .v = v,
                   .pc = {.window = window,
                          .softcap = softcap > 0 ? softcap : 0.0f,
                          .n_q = n_q,
                          .n_heads = n_heads,
                          .n_kv_heads = n_kv_heads,
                          .head_dim = head_dim,
                          .q_pos0 = q_pos0,
                          .kv_len = kv_len,
                          .kv_stride = (uint32_t)kv_stride,
                          .scale = scale}};
  uint64_t kv_bytes = 4 * kv_stride * kv_len;
  a.kvt = head_dim % 4 == 0 && op_texel_bind(caps, k, GPU_TEXEL_RGBA32F, kv_bytes, &a.kspan) &&
          op_texel_bind(caps, v, GPU_TEXEL_RGBA32F, kv_bytes, &a.vspan);
  bool used;
  lt_status_t st = attn_decode(c, &a, &used, err);
  if (used || st != LT_OK) return st;
  /* Small heads leave the tiles nearly idle: one invocation per query instead (attn_rows.comp), its "tile" a
   * workgroup of queries. */
  uint32_t hd4 = (head_dim + 3) / 4, rows_hd4 = caps->kind == GPU_KIND_CPU ? ATTN_ROWS_MAX_HD4_CPU : ATTN_ROWS_MAX_HD4;
  op_id_t aid = g_row_kernel && head_dim % 4 == 0 && hd4 <= rows_hd4 ? OP_ATTN_ROWS : OP_ATTN;
  /* attn.comp holds blocks of at most 64 keys (MAX_BC) and splits a block evenly over a tile's rows. */
  uint32_t wg = op_wg(OP_ATTN), br;
  assert(wg <= 64 && wg % 16 == 0);
  char defines[64];
  if (aid == OP_ATTN_ROWS) {
    br = op_wg(OP_ATTN_ROWS);
    snprintf(defines, sizeof defines, "HD4N=%u;KC=%u;KV_TEXEL=%d", hd4, ATTN_ROWS_KC, a.kvt);
  } else {
    /* Tiles of 16 queries reuse each K and V load 16 times; decode with little GQA fills only a few of them. */
    br = (uint64_t)n_q * group >= 16 && caps->max_shared >= ATTN_BR16_SHARED ? 16 : 4;
    uint32_t dg = wg / (br / 4); /* invocations sharing 4 queries' columns */
    /* With 4-query tiles a small head leaves most of those invocations without a column: they split the keys of
     * P.V into slices instead. */
    uint32_t ks = 1;
    if (br == 4 && g_key_slices)
      while (ks * 2 <= dg && dg / (ks * 2) >= hd4) ks *= 2;
    dg /= ks;
    snprintf(defines, sizeof defines, "BR=%u;DI=%u;HD4=%d;KS=%u;KV_TEXEL=%d", br, (hd4 + dg - 1) / dg,
             head_dim % 4 == 0, ks, a.kvt);
  }
  uint64_t groups = ((uint64_t)n_q * group + br - 1) / br * n_kv_heads; /* tiles, or workgroups of queries */
  uint32_t split = aid == OP_ATTN_ROWS
                       ? (uint32_t)attn_spread((uint64_t)(op_loop_budget(OP_ATTN_ROWS) - 1) * ATTN_ROWS_KC, kv_used,
                                               groups, ATTN_ROWS_KC)
                       : attn_split_len(wg, head_dim, br, kv_used, groups);
  gpu_pipeline_t *pa = op_pipeline_texel(g, aid, defines, NULL, 0, a.kvt ? 3u << 2 : 0, err);
  gpu_pipeline_t *pm = pa ? op_pipeline(g, OP_ATTN_MERGE, NULL, NULL, 0, err) : NULL;
  if (!pm) return err ? err->code : LT_E_SHADER;

  /* Scratch for the largest dispatch that writes partials: `most` (rows x splits) partial records per head. */
  uint64_t most = 0;
  for (uint32_t t0 = 0, t1, ns; t0 < n_q; t0 = t1) {
    t1 = attn_run_end(t0, n_q, q_pos0, kv_len, split, &ns);
    uint64_t recs = min_u64(t1 - t0, attn_chunk_rows(caps, n_heads, group, head_dim, br, ns)) * ns;
    if (ns > 1 && recs > most) most = recs;
  }
  gpu_buf_t *scratch = NULL;
  uint64_t acc_off = 0;
  if (most && (st = attn_scratch(c, most * n_heads, head_dim, &scratch, &acc_off, err)) != LT_OK) return st;

  a.pc.split_len = split;
  for (uint32_t t0 = 0, t1, ns; t0 < n_q && st == LT_OK; t0 = t1) {
    t1 = attn_run_end(t0, n_q, q_pos0, kv_len, split, &ns);
    t1 = (uint32_t)min_u64(t1, (uint64_t)t0 + attn_chunk_rows(caps, n_heads, group, head_dim, br, ns));
    a.pc.n_q = t1;
    a.pc.row_base = t0;
    a.pc.n_splits = ns;
    uint32_t gx = (uint32_t)(((uint64_t)(t1 - t0) * group + br - 1) / br);
    st = attn_run(c, &a, pa, aid, pm, scratch, acc_off, gx, n_kv_heads, ns, err);
  }
  return st;
}
