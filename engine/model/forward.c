/* The transformer forward pass on the GPU (LLaMA dense blocks and Mixtral MoE blocks), batched over sequences,
 * with the sequences' KV caches and the hooks for steering and analysis. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/qblock.h"
#include "engine/model/generate.h"
#include "engine/model/model_internal.h"
#include "engine/ops/ops.h"

/* Masked experts get this router logit (finite, so softmax stays NaN-free when every expert is masked). */
#define MASKED_LOGIT -1.0e30f

struct model_seq {
  model_t *m;
  uint32_t len, cap;
  gpu_buf_t **k, **v; /* per layer: f32 [cap, n_kv_heads * head_dim] */
};

/* ---- sequences ---- */

/* Makes sure the RoPE table covers positions [0, rows). */
static lt_status_t rope_ensure(model_t *m, uint32_t rows, lt_err_t *err) {
  if (m->rope && m->rope_rows >= rows) return LT_OK;
  uint64_t n = (uint64_t)rows * m->cfg.rope_dim;
  float *t = malloc(n * sizeof *t);
  if (!t) return lt_fail(err, LT_E_NOMEM, "out of memory building the RoPE table");
  rope_table_build(t, rows, m->cfg.rope_dim, m->cfg.rope_theta, &m->cfg.rope_scaling);
  gpu_buf_destroy(&m->rope);
  lt_status_t st = LT_OK;
  m->rope = gpu_buf_new(m->g, n * 4, err);
  if (!m->rope)
    st = err ? err->code : LT_E_DEVICE_OOM;
  else
    st = gpu_upload(m->rope, 0, t, n * 4, err);
  free(t);
  m->rope_rows = st == LT_OK ? rows : 0;
  return st;
}

model_seq_t *model_seq_new(model_t *m, uint32_t capacity, lt_err_t *err) {
  const model_config_t *c = &m->cfg;
  if (capacity == 0) capacity = c->max_position && c->max_position < 4096 ? c->max_position : 4096;
  uint64_t kvd = (uint64_t)c->n_kv_heads * c->head_dim;
  if ((uint64_t)capacity * kvd * 4 > gpu_caps(m->g)->max_storage_range) {
    lt_fail(err, LT_E_LIMIT, "a KV cache of %u tokens does not fit one binding on this device (at most %llu tokens)",
            capacity, (unsigned long long)(gpu_caps(m->g)->max_storage_range / (kvd * 4)));
    return NULL;
  }
  if (rope_ensure(m, capacity, err) != LT_OK) return NULL;
  model_seq_t *s = calloc(1, sizeof *s);
  if (!s) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  s->m = m;
  s->cap = capacity;
  s->k = calloc(c->n_layers, sizeof *s->k);
  s->v = calloc(c->n_layers, sizeof *s->v);
  bool ok = s->k && s->v;
  for (uint32_t l = 0; ok && l < c->n_layers; l++) {
    s->k[l] = gpu_buf_new(m->g, capacity * kvd * 4, err);
    s->v[l] = s->k[l] ? gpu_buf_new(m->g, capacity * kvd * 4, err) : NULL;
    ok = s->v[l] != NULL;
  }
  if (!ok) {
    if (!s->k || !s->v) lt_fail(err, LT_E_NOMEM, "out of memory");
    model_seq_destroy(&s);
  }
  return s;
}

void model_seq_destroy(model_seq_t **sp) {
  if (!sp || !*sp) return;
  model_seq_t *s = *sp;
  for (uint32_t l = 0; l < s->m->cfg.n_layers; l++) {
    if (s->k) gpu_buf_destroy(&s->k[l]);
    if (s->v) gpu_buf_destroy(&s->v[l]);
  }
  free(s->k);
  free(s->v);
  free(s);
  *sp = NULL;
}

uint32_t model_seq_len(const model_seq_t *s) { return s->len; }
void model_seq_truncate(model_seq_t *s, uint32_t n) {
  if (n < s->len) s->len = n;
}

/* ---- the forward pass ---- */

/* ---- weights read perturbed (model_set_zread) ---- */

/* Whether dmat w has piece buffer b in a float dtype (what a perturbed read takes). */
static bool dmat_has_float_piece(const dmat_t *w, const gpu_buf_t *b) {
  if (w->scales || qblock_is(w->dtype) || (w->dtype != LT_F32 && w->dtype != LT_F16 && w->dtype != LT_BF16))
    return false;
  for (uint32_t p = 0; p < w->n_pieces; p++)
    if (w->piece[p] == b) return true;
  return false;
}

static bool ffn_has_float_piece(const dffn_t *f, const gpu_buf_t *b) {
  return dmat_has_float_piece(&f->gate, b) || dmat_has_float_piece(&f->up, b) || dmat_has_float_piece(&f->down, b);
}

bool model_param_zreadable(const model_t *m, uint32_t i) {
  if (i >= m->n_params) return false;
  const gpu_buf_t *b = m->params[i].buf;
  if (dmat_has_float_piece(&m->embed, b) || dmat_has_float_piece(&m->lm_head, b)) return true;
  for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
    const dlayer_t *L = &m->layers[l];
    if (dmat_has_float_piece(&L->wq, b) || dmat_has_float_piece(&L->wk, b) || dmat_has_float_piece(&L->wv, b) ||
        dmat_has_float_piece(&L->wo, b) || dmat_has_float_piece(&L->router, b) || ffn_has_float_piece(&L->ffn, b))
      return true;
    for (uint32_t e = 0; L->experts && e < L->n_experts; e++)
      if (ffn_has_float_piece(&L->experts[e], b)) return true;
  }
  return false;
}

/* Rows of a weight [*, cols] in dtype per perturbed chunk: a power of two at least 4 whose byte offsets, in the
 * weight and in y, are multiples of the device's storage alignment. */
static uint32_t zread_row_align(const model_t *m, uint32_t cols, lt_dtype_t dtype) {
  uint64_t align = gpu_caps(m->g)->min_storage_align;
  uint32_t r = 4;
  while (align && r < (1u << 16) && (((uint64_t)r * cols * lt_dtype_size(dtype)) % align || (4ull * r) % align)) r *= 2;
  return r;
}

lt_status_t model_set_zread(model_t *m, const model_zread_t *z, lt_err_t *err) {
  if (!z) {
    m->zread = NULL;
    return LT_OK;
  }
  uint64_t need = 0;
  for (uint32_t i = 0; i < m->n_params; i++) {
    if (!z->on[i]) continue;
    const model_param_t *p = &m->params[i];
    if (!model_param_zreadable(m, i))
      return lt_fail(err, LT_E_INVALID,
                     "%s (%s) is not read through a matmul or the embedding in a float dtype: it "
                     "cannot be perturbed as it is read",
                     p->name, lt_dtype_str(p->dtype));
    uint64_t rows = zread_row_align(m, p->cols, p->dtype), whole = (uint64_t)p->n_rows * p->cols;
    uint64_t chunk = rows * p->cols > MODEL_ZREAD_CHUNK ? rows * p->cols : MODEL_ZREAD_CHUNK;
    if (chunk > whole) chunk = whole;
    if (chunk > need) need = chunk;
  }
  if (need * 4 > gpu_caps(m->g)->max_storage_range)
    return lt_fail(err, LT_E_LIMIT, "a perturbed read needs %llu floats of scratch, more than one binding takes",
                   (unsigned long long)need);
  if (need && (!m->zscratch || gpu_buf_size(m->zscratch) < need * 4)) {
    gpu_buf_destroy(&m->zscratch);
    if (!(m->zscratch = gpu_buf_new(m->g, need * 4, err))) return err ? err->code : LT_E_NOMEM;
  }
  m->zread = z;
  return LT_OK;
}

/* The index of the parameter piece held in buffer b when forward passes read it perturbed now, else -1. */
static int32_t zread_param(const model_t *m, const gpu_buf_t *b) {
  if (!m->zread) return -1;
  for (uint32_t i = 0; i < m->n_params; i++)
    if (m->params[i].buf == b) return m->zread->on[i] ? (int32_t)i : -1;
  return -1;
}

/* y[M, nr] (+)= x . (piece p of w, perturbed as parameter zi)^T: the piece in chunks of rows, each copied
 * perturbed into f32 scratch and multiplied from there. */
static lt_status_t zread_mul(const model_t *m, gpu_cmd_t *c, gpu_view_t y, uint32_t y_stride, gpu_view_t x,
                             const dmat_t *w, uint32_t p, uint32_t nr, uint32_t M, bool accumulate, int32_t zi,
                             lt_err_t *err) {
  const model_zread_t *z = m->zread;
  uint32_t K = w->cols, align = zread_row_align(m, K, w->dtype);
  uint64_t fit = gpu_buf_size(m->zscratch) / 4 / K;
  uint32_t chunk = fit >= nr ? nr : (uint32_t)(fit / align * align);
  if (chunk == 0) return lt_fail(err, LT_E_LIMIT, "%s: no room for a perturbed chunk", m->params[zi].name);
  uint64_t es = lt_dtype_size(w->dtype);
  for (uint32_t r = 0; r < nr; r += chunk) {
    uint32_t n = nr - r < chunk ? nr - r : chunk;
    gpu_view_t src = {w->piece[p], (uint64_t)r * K * es}, yr = {y.buf, y.off + (uint64_t)r * 4};
    lt_status_t st = op_perturb_copy(c, gv(m->zscratch), src, w->dtype, n * K, (uint64_t)r * K, z->seed,
                                     z->tensor_id[zi], z->scale, err);
    if (st == LT_OK) st = op_matmul_strided(c, yr, y_stride, x, K, gv(m->zscratch), LT_F32, M, n, K, accumulate, err);
    if (st != LT_OK) return st;
  }
  return LT_OK;
}

/* y[M, N] = x[M, K] . W^T for a weight split into row pieces: piece p fills columns of y starting at its first
 * row, through the strided matmul (through a perturbed copy when model_set_zread says so). */
static lt_status_t dmat_mul(const model_t *m, gpu_cmd_t *c, gpu_view_t y, uint32_t y_stride, gpu_view_t x,
                            const dmat_t *w, uint32_t M, bool accumulate, lt_err_t *err) {
  for (uint32_t p = 0; p < w->n_pieces; p++) {
    uint32_t r0 = p * w->rows_per_piece, nr = w->rows - r0 < w->rows_per_piece ? w->rows - r0 : w->rows_per_piece;
    gpu_view_t yp = {y.buf, y.off + (uint64_t)r0 * 4};
    lt_status_t st;
    int32_t zi = zread_param(m, w->piece[p]);
    if (zi >= 0) {
      st = zread_mul(m, c, yp, y_stride, x, w, p, nr, M, accumulate, zi, err);
    } else if (qblock_is(w->dtype)) {
      qmat_view_t q = {gv(w->piece[p]), {0}, w->dtype, LT_F32, 0};
      st = op_matmul_q(c, yp, y_stride, x, w->cols, &q, M, nr, w->cols, accumulate, MATMUL_AUTO, err);
    } else if (w->scales) {
      qmat_view_t q = {gv(w->piece[p]), gv(w->scales[p]), w->dtype, w->stype, w->group};
      st = op_matmul_q(c, yp, y_stride, x, w->cols, &q, M, nr, w->cols, accumulate, MATMUL_AUTO, err);
    } else {
      st = op_matmul_strided(c, yp, y_stride, x, w->cols, gv(w->piece[p]), w->dtype, M, nr, w->cols, accumulate, err);
    }
    if (st != LT_OK) return st;
  }
  return LT_OK;
}

static bool g_fuse = true, g_fuse_rope = true;

static bool fusable(const dmat_t *const *w, int n);

void model_fuse_decode(bool on) { g_fuse = on; }

void model_fuse_rope(bool on) { g_fuse_rope = on; }

/* The gated MLP of block l for T tokens as one dispatch (op_gemv_glu) from x (with norm: the residual stream, the
 * norm folded in), when the weights allow it: gate and up whole in one float dtype, and no LoRA on either.
 * LT_E_UNSUPPORTED (err cleared) when they do not, or when the op does not take the shape: the caller runs the
 * separate ops. */
static lt_status_t fused_glu(const model_t *m, gpu_cmd_t *c, const dlayer_t *L, uint32_t l, uint32_t T, gpu_buf_t *x,
                             gpu_buf_t *norm, lt_err_t *err) {
  const dmat_t *g = &L->ffn.gate, *u = &L->ffn.up, *w[2] = {g, u};
  bool lora = adapter_has_lora(m, l, 4) || adapter_has_lora(m, l, 5);
  if (!g_fuse || m->zread || T > 4 || lora || !fusable(w, 2)) return LT_E_UNSUPPORTED;
  gpu_view_t nv = norm ? gv(norm) : (gpu_view_t){0};
  lt_status_t st = op_gemv_glu(c, gv(m->a.gate), gv(x), gv(g->piece[0]), gv(u->piece[0]), g->dtype, T, g->rows, g->cols,
                               m->cfg.gelu, nv, m->cfg.rms_norm_eps, err);
  if (st == LT_E_UNSUPPORTED) lt_err_clear(err);
  return st;
}

/* Whether nothing reads activation site `site` in this pass (so the norm that produces it may be folded away). */
static bool site_unread(const model_hooks_t *h, model_site_t site) {
  return !h || !h->on_site || !h->capture_site || !h->capture_site[site];
}

/* Whether matrices w[0..n) can go to a fused GEMV: whole (one piece each), one float dtype, not quantised. */
static bool fusable(const dmat_t *const *w, int n) {
  for (int i = 0; i < n; i++)
    if (w[i]->n_pieces != 1 || w[i]->dtype != w[0]->dtype || w[i]->scales || qblock_is(w[i]->dtype) ||
        (w[i]->dtype != LT_F32 && w[i]->dtype != LT_F16 && w[i]->dtype != LT_BF16))
      return false;
  return true;
}

/* Block l's q, k and v projections for T tokens as one dispatch (op_gemv_qkv) from x (with norm: the residual
 * stream, the norm folded in) when the weights allow it (no LoRA on them); LT_E_UNSUPPORTED (err cleared)
 * otherwise, and the caller runs the three products. Where every dim turns and no bias comes between (Qwen2's are
 * added before RoPE), q and k leave turned (*roped), and with cache (k and v views of one sequence's cache rows,
 * aligned) k and v go straight there (*cache_used). */
static lt_status_t fused_qkv(const model_t *m, gpu_cmd_t *c, const dlayer_t *L, uint32_t l, uint32_t T, gpu_buf_t *x,
                             gpu_buf_t *norm, const gpu_view_t *cache, bool *roped, bool *cache_used, lt_err_t *err) {
  const dmat_t *w[3] = {&L->wq, &L->wk, &L->wv};
  bool lora = adapter_has_lora(m, l, 0) || adapter_has_lora(m, l, 1) || adapter_has_lora(m, l, 2);
  *roped = *cache_used = false;
  if (!g_fuse || m->zread || T > 4 || lora || !fusable(w, 3) || L->wk.rows != L->wv.rows) return LT_E_UNSUPPORTED;
  const acts_t *a = &m->a;
  const model_config_t *cf = &m->cfg;
  gpu_view_t nv = norm ? gv(norm) : (gpu_view_t){0};
  op_qkv_rope_t r = {gv(a->pos), gv(m->rope), cf->head_dim, m->rope_rows, m->rope_neox};
  bool rope = g_fuse_rope && !L->bq && cf->rope_dim == cf->head_dim, direct = rope && cache;
  /* With RoPE first; a head size its epilogue does not take falls back to the plain fused product. */
  lt_status_t st = LT_E_UNSUPPORTED;
  for (int turn = rope; turn >= 0 && st == LT_E_UNSUPPORTED; turn--) {
    bool to_cache = turn && direct;
    lt_err_clear(err);
    st = op_gemv_qkv_rope(c, gv(a->q), to_cache ? cache[0] : gv(a->k), to_cache ? cache[1] : gv(a->v), gv(x),
                          gv(L->wq.piece[0]), gv(L->wk.piece[0]), gv(L->wv.piece[0]), L->wq.dtype, T, L->wq.rows,
                          L->wk.rows, L->wq.cols, nv, cf->rms_norm_eps, turn ? &r : NULL, err);
    if (st == LT_OK) *roped = turn, *cache_used = to_cache;
  }
  if (st == LT_E_UNSUPPORTED) lt_err_clear(err);
  return st;
}

static lt_status_t mul(const model_t *m, gpu_cmd_t *c, gpu_buf_t *y, gpu_buf_t *x, const dmat_t *w, uint32_t M,
                       bool acc, lt_err_t *err) {
  return dmat_mul(m, c, gv(y), w->rows, gv(x), w, M, acc, err);
}

/* A sub-layer's output joins the residual stream a->x: x += in . W^T plus the LoRA of `target` (block l), or with a
 * post-norm (Gemma 2) x += norm(in . W^T + LoRA), through a->sub (a->xn is free at both call sites). */
static lt_status_t join_stream(model_t *m, gpu_cmd_t *c, gpu_buf_t *in, const dmat_t *w, gpu_buf_t *post_norm,
                               uint32_t l, int target, uint32_t T, lt_err_t *err) {
  acts_t *a = &m->a;
  uint32_t d = m->cfg.hidden_size;
  gpu_buf_t *out = post_norm ? a->sub : a->x;
  lt_status_t st = mul(m, c, out, in, w, T, !post_norm, err);
  if (st == LT_OK) st = adapter_lora(m, c, out, in, l, target, T, err);
  if (st == LT_OK && post_norm &&
      (st = op_rmsnorm(c, gv(a->xn), gv(a->sub), gv(post_norm), T, d, m->cfg.rms_norm_eps, err)) == LT_OK)
    st = op_add(c, gv(a->x), gv(a->x), gv(a->xn), T * d, T * d, err);
  return st;
}

/* Ends the current recording (submit + wait) and starts a new one, so the host can read results mid-pass. */
static lt_status_t flush(gpu_t *g, gpu_cmd_t **c, lt_err_t *err) {
  lt_status_t st = gpu_cmd_finish(c, err);
  if (st != LT_OK) return st;
  *c = gpu_cmd_begin(g, err);
  return *c ? LT_OK : (err ? err->code : LT_E_VULKAN);
}

typedef struct pass {
  model_t *m;
  model_item_t *items;
  uint32_t n_items, T;
  uint32_t *row0;         /* first row of each item */
  const uint32_t *caller; /* the caller's index of each item (hooks report it) */
  const model_hooks_t *h;
} pass_t;

static lt_status_t report_resid(pass_t *p, gpu_cmd_t **c, uint32_t layer, lt_err_t *err) {
  const model_hooks_t *h = p->h;
  if (!h || !h->on_resid || !h->capture_resid || !h->capture_resid[layer]) return LT_OK;
  lt_status_t st = flush(p->m->g, c, err);
  uint32_t d = p->m->cfg.hidden_size;
  float *buf = st == LT_OK ? malloc((uint64_t)p->T * d * 4) : NULL;
  if (st == LT_OK && !buf) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK) st = gpu_download(p->m->a.x, 0, buf, (uint64_t)p->T * d * 4, err);
  for (uint32_t i = 0; st == LT_OK && i < p->n_items; i++)
    h->on_resid(h->ctx, layer, p->caller[i], buf + (uint64_t)p->row0[i] * d, p->items[i].n_tokens, d);
  free(buf);
  return st;
}

/* Reports rows x cols floats of buf at a site (model_hooks_t.on_site) when the hooks ask for it. */
static lt_status_t report_site(pass_t *p, gpu_cmd_t **c, model_site_t site, uint32_t layer, int32_t expert,
                               gpu_buf_t *buf, uint32_t rows, uint32_t cols, lt_err_t *err) {
  const model_hooks_t *h = p->h;
  if (!h || !h->on_site || !h->capture_site || !h->capture_site[site]) return LT_OK;
  lt_status_t st = flush(p->m->g, c, err);
  float *x = st == LT_OK ? malloc((uint64_t)rows * cols * 4 + 4) : NULL;
  if (st == LT_OK && !x) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK) st = gpu_download(buf, 0, x, (uint64_t)rows * cols * 4, err);
  if (st == LT_OK) h->on_site(h->ctx, site, layer, expert, x, rows, cols);
  free(x);
  return st;
}

static lt_status_t add_vector(pass_t *p, gpu_cmd_t *c, lt_err_t *err) {
  const model_hooks_t *h = p->h;
  uint32_t d = p->m->cfg.hidden_size;
  for (uint32_t i = 0; i < p->n_items; i++) {
    uint32_t len = p->items[i].seq->len, n = p->items[i].n_tokens;
    uint32_t from = h->add_from > len ? h->add_from - len : 0;
    uint32_t to = h->add_to == 0 ? n : (h->add_to > len ? h->add_to - len : 0);
    if (to > n) to = n;
    if (from >= to) continue;
    gpu_view_t x = {p->m->a.x, (uint64_t)(p->row0[i] + from) * d * 4};
    lt_status_t st = op_add(c, x, x, gv(p->m->a.addv), (to - from) * d, d, err);
    if (st != LT_OK) return st;
  }
  return LT_OK;
}

static lt_status_t attn_hook(pass_t *p, gpu_cmd_t **c, uint32_t layer, lt_err_t *err) {
  const model_hooks_t *h = p->h;
  const model_config_t *cf = &p->m->cfg;
  uint32_t qd = cf->n_heads * cf->head_dim;
  lt_status_t st = flush(p->m->g, c, err);
  float *buf = st == LT_OK ? malloc((uint64_t)p->T * qd * 4) : NULL;
  if (st == LT_OK && !buf) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK) st = gpu_download(p->m->a.att, 0, buf, (uint64_t)p->T * qd * 4, err);
  bool changed = false;
  for (uint32_t i = 0; st == LT_OK && i < p->n_items; i++)
    changed |= h->on_attn(h->ctx, layer, p->caller[i], buf + (uint64_t)p->row0[i] * qd, p->items[i].n_tokens,
                          cf->n_heads, cf->head_dim);
  if (st == LT_OK && changed) st = gpu_upload(p->m->a.att, 0, buf, (uint64_t)p->T * qd * 4, err);
  free(buf);
  return st;
}

/* The sparse MoE feed-forward of one layer: route on the GPU, group rows by expert on the host, then for each
 * expert gather its rows, run its SwiGLU MLP and scatter-add the weighted result into the stream. */
static lt_status_t moe_ffn(pass_t *p, gpu_cmd_t **c, uint32_t l, lt_err_t *err) {
  model_t *m = p->m;
  const model_config_t *cf = &m->cfg;
  acts_t *a = &m->a;
  dlayer_t *L = &m->layers[l];
  uint32_t T = p->T, E = L->n_experts, K = cf->n_experts_used, d = cf->hidden_size, ffn = cf->intermediate_size;
  lt_status_t st;
  if ((st = mul(m, *c, a->rlog, a->xn, &L->router, T, false, err)) != LT_OK) return st;
  if (p->h && p->h->expert_mask) {
    gpu_view_t mk = {a->mask, (uint64_t)l * a->mask_stride * 4};
    if ((st = op_add(*c, gv(a->rlog), gv(a->rlog), mk, T * E, E, err)) != LT_OK) return st;
  }
  if ((st = op_softmax(*c, gv(a->rprob), gv(a->rlog), T, E, err)) != LT_OK) return st;
  if ((st = op_topk(*c, gv(a->tk_idx), gv(a->tk_val), gv(a->rprob), T, E, K, err)) != LT_OK) return st;
  if ((st = flush(m->g, c, err)) != LT_OK) return st;
  uint32_t *idx = malloc((uint64_t)T * K * 4);
  float *val = malloc((uint64_t)T * K * 4);
  uint32_t *count = calloc(E, 4), *start = calloc(E + 1, 4), *fill = calloc(E, 4);
  uint64_t list_n = (uint64_t)T * K + 4ull * E;
  int32_t *eids = malloc(list_n * 4);
  float *ew = malloc(list_n * 4);
  float *probs = NULL;
  if (!idx || !val || !count || !start || !fill || !eids || !ew) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  if ((st = gpu_download(a->tk_idx, 0, idx, (uint64_t)T * K * 4, err)) != LT_OK) goto out;
  if ((st = gpu_download(a->tk_val, 0, val, (uint64_t)T * K * 4, err)) != LT_OK) goto out;
  if (p->h && p->h->on_router) {
    if (!(probs = malloc((uint64_t)T * E * 4))) {
      st = lt_fail(err, LT_E_NOMEM, "out of memory");
      goto out;
    }
    if ((st = gpu_download(a->rprob, 0, probs, (uint64_t)T * E * 4, err)) != LT_OK) goto out;
    p->h->on_router(p->h->ctx, l, probs, T, E);
  }
  for (uint64_t i = 0; i < (uint64_t)T * K; i++)
    if (idx[i] < E) count[idx[i]]++;
  /* Each expert's list starts at a multiple of 4 entries so its views stay 16-byte aligned. */
  for (uint32_t e = 0; e < E; e++) start[e + 1] = start[e] + (count[e] + 3) / 4 * 4;
  for (uint32_t t = 0; t < T; t++) {
    double sum = 0;
    for (uint32_t k = 0; k < K; k++) sum += val[t * K + k];
    for (uint32_t k = 0; k < K; k++) {
      uint32_t e = idx[t * K + k];
      if (e >= E) continue;
      uint32_t at = start[e] + fill[e]++;
      eids[at] = (int32_t)t;
      ew[at] = sum > 0 ? (float)(val[t * K + k] / sum) : 0.0f;
    }
  }
  if ((st = gpu_upload(a->eids, 0, eids, (uint64_t)start[E] * 4 + 4, err)) != LT_OK) goto out;
  if ((st = gpu_upload(a->ew, 0, ew, (uint64_t)start[E] * 4 + 4, err)) != LT_OK) goto out;
  for (uint32_t e = 0; e < E && st == LT_OK; e++) {
    uint32_t n = count[e];
    if (n == 0) continue;
    dffn_t *X = &L->experts[e];
    gpu_view_t ids = {a->eids, (uint64_t)start[e] * 4}, wts = {a->ew, (uint64_t)start[e] * 4};
    if ((st = op_embed(*c, gv(a->xe), gv(a->xn), LT_F32, ids, n, d, 0, T, err)) != LT_OK) break;
    if ((st = report_site(p, c, MODEL_SITE_EXPERT_IN, l, (int32_t)e, a->xe, n, d, err)) != LT_OK) break;
    if ((st = mul(m, *c, a->ge, a->xe, &X->gate, n, false, err)) != LT_OK) break;
    if ((st = mul(m, *c, a->ue, a->xe, &X->up, n, false, err)) != LT_OK) break;
    if ((st = op_swiglu(*c, gv(a->ge), gv(a->ge), gv(a->ue), n * ffn, err)) != LT_OK) break;
    if ((st = report_site(p, c, MODEL_SITE_EXPERT_ACT, l, (int32_t)e, a->ge, n, ffn, err)) != LT_OK) break;
    if ((st = mul(m, *c, a->oe, a->ge, &X->down, n, false, err)) != LT_OK) break;
    st = op_scatter_add(*c, gv(a->x), gv(a->oe), ids, wts, n, d, T, err);
  }
out:
  free(idx), free(val), free(count), free(start), free(fill), free(eids), free(ew), free(probs);
  return st;
}

_Static_assert(MODEL_TOP_MAX <= OP_TOPK_MAX, "MODEL_OUT_TOP's candidates are op_topk's");

/* Whether item it asks for its row's mass beside the candidates (a nucleus cut over the whole vocabulary). */
static bool nucleus_row(const model_item_t *it) {
  return it->out == MODEL_OUT_TOP && it->top_mass && it->top_temp > 0 && it->top_p > 0 && it->top_p < 1;
}

/* The f32 scale a nucleus row's logits take in op_logsumexp_scaled: 1 / temperature. */
static float nucleus_scale(const model_item_t *it) { return 1.0f / it->top_temp; }

/* Sets a nucleus row's *top_mass from its log-sum-exp at the sampling temperature (lse); where its candidates (in
 * it->result, descending) hold less than top_p of that mass, downloads the row's logits (V floats at byte off of
 * logits) into top_logits instead and sets *top_mass to 0. */
static lt_status_t nucleus_mass(const model_item_t *it, float lse, gpu_buf_t *logits, uint64_t off, uint32_t V,
                                lt_err_t *err) {
  /* The candidates' weights as the sampler computes them, rounded to f32, summed in double. */
  double mass = exp((double)lse - (double)it->result[0] * nucleus_scale(it)), held = 0;
  for (uint32_t j = 0; j < it->top_k; j++) held += (float)sample_weight(it->result[j], it->result[0], it->top_temp);
  *it->top_mass = mass;
  if (held >= it->top_p * mass && isfinite(mass)) return LT_OK;
  *it->top_mass = 0;
  return gpu_download(logits, off, it->top_logits, (uint64_t)V * 4, err);
}

/* Computes logits for the rows the items ask for, in chunks of LOGIT_ROWS, and fills their results. */
static lt_status_t outputs(pass_t *p, gpu_cmd_t **c, lt_err_t *err) {
  model_t *m = p->m;
  acts_t *a = &m->a;
  uint32_t V = m->cfg.vocab_size, d = m->cfg.hidden_size;
  int32_t sel[LOGIT_ROWS], tgt[LOGIT_ROWS];
  uint32_t who[LOGIT_ROWS], tok[LOGIT_ROWS];
  float *logits = malloc((uint64_t)LOGIT_ROWS * V * 4);
  float nll[LOGIT_ROWS], lse[LOGIT_ROWS], top_val[LOGIT_ROWS * MODEL_TOP_MAX];
  uint32_t top_idx[LOGIT_ROWS * MODEL_TOP_MAX];
  if (!logits) return lt_fail(err, LT_E_NOMEM, "out of memory");
  lt_status_t st = LT_OK;
  uint32_t n = 0;
  for (uint32_t i = 0; i <= p->n_items && st == LT_OK; i++) {
    /* Queue this item's rows; run a chunk whenever it fills (and once at the end). */
    const model_item_t *it = i < p->n_items ? &p->items[i] : NULL;
    uint32_t first = 0, last = 0;
    if (it && it->out != MODEL_OUT_NONE && it->n_tokens) {
      first = it->out == MODEL_OUT_LAST || it->out == MODEL_OUT_TOP ? it->n_tokens - 1 : 0;
      last = it->n_tokens;
    }
    for (uint32_t t = first; t <= last && st == LT_OK; t++) {
      bool have_row = it && t < last;
      if (have_row) {
        sel[n] = (int32_t)(p->row0[i] + t);
        tgt[n] = it->out == MODEL_OUT_NLL ? it->targets[t] : -1;
        if (nucleus_row(it)) {
          float s = nucleus_scale(it); /* op_logsumexp_scaled reads it from this row's slot */
          memcpy(&tgt[n], &s, 4);
        }
        who[n] = i;
        tok[n] = t;
        n++;
      }
      bool end = it == NULL && t == last;
      if (n == 0 || (n < a->logit_rows && !end)) continue;
      bool any_nll = false, any_logits = false, any_mass = false;
      uint32_t top = 0; /* candidates to select: the most any row of the chunk wants */
      for (uint32_t r = 0; r < n; r++) {
        const model_item_t *ir = &p->items[who[r]];
        if (ir->out == MODEL_OUT_NLL)
          any_nll = true;
        else if (ir->out == MODEL_OUT_TOP)
          top = ir->top_k > top ? ir->top_k : top, any_mass |= nucleus_row(ir);
        else
          any_logits = true;
      }
      if ((st = gpu_upload(a->sel, 0, sel, n * 4, err)) != LT_OK) break;
      if ((st = gpu_upload(a->tgt, 0, tgt, n * 4, err)) != LT_OK) break;
      if ((st = op_embed(*c, gv(a->xs), gv(a->xn), LT_F32, gv(a->sel), n, d, 0, p->T, err)) != LT_OK) break;
      if ((st = dmat_mul(m, *c, gv(a->logits), V, gv(a->xs), &m->lm_head, n, false, err)) != LT_OK) break;
      if (m->cfg.final_softcap > 0 &&
          (st = op_softcap(*c, gv(a->logits), gv(a->logits), m->cfg.final_softcap, n * V, err)) != LT_OK)
        break;
      if (any_nll && (st = op_logsumexp(*c, gv(a->lse), gv(a->nll), gv(a->logits), gv(a->tgt), n, V, err)) != LT_OK)
        break;
      if (top && (st = op_topk(*c, gv(a->top_idx), gv(a->top_val), gv(a->logits), n, V, top, err)) != LT_OK) break;
      /* After the cross-entropy, which has read a->lse's rows: the nucleus rows' sums (their scales in tgt). */
      if (any_mass && (st = op_logsumexp_scaled(*c, gv(a->lse), gv(a->logits), gv(a->tgt), n, V, err)) != LT_OK) break;
      if ((st = flush(m->g, c, err)) != LT_OK) break;
      if (top && ((st = gpu_download(a->top_idx, 0, top_idx, (uint64_t)n * top * 4, err)) != LT_OK ||
                  (st = gpu_download(a->top_val, 0, top_val, (uint64_t)n * top * 4, err)) != LT_OK))
        break;
      if (any_logits && (st = gpu_download(a->logits, 0, logits, (uint64_t)n * V * 4, err)) != LT_OK) break;
      if (any_nll && (st = gpu_download(a->nll, 0, nll, n * 4, err)) != LT_OK) break;
      if (any_mass && (st = gpu_download(a->lse, 0, lse, n * 4, err)) != LT_OK) break;
      for (uint32_t r = 0; r < n; r++) {
        model_item_t *ir = &p->items[who[r]];
        if (ir->out == MODEL_OUT_NLL) {
          ir->result[tok[r]] = nll[r];
        } else if (ir->out == MODEL_OUT_TOP) {
          memcpy(ir->result, top_val + (uint64_t)r * top, ir->top_k * 4ull);
          for (uint32_t j = 0; j < ir->top_k; j++) ir->top_ids[j] = (int32_t)top_idx[r * top + j];
          if (nucleus_row(ir) && (st = nucleus_mass(ir, lse[r], a->logits, (uint64_t)r * V * 4, V, err)) != LT_OK)
            break;
        } else if (ir->out == MODEL_OUT_LAST) {
          memcpy(ir->result, logits + (uint64_t)r * V, (uint64_t)V * 4);
        } else {
          memcpy(ir->result + (uint64_t)tok[r] * V, logits + (uint64_t)r * V, (uint64_t)V * 4);
        }
      }
      n = 0;
    }
  }
  free(logits);
  return st;
}

/* One pass over the weights for items whose tokens fit the activation arena together. */
static lt_status_t forward_pass(model_t *m, model_item_t *items, const uint32_t *caller, uint32_t n_items,
                                const model_hooks_t *h, lt_err_t *err) {
  const model_config_t *cf = &m->cfg;
  acts_t *a = &m->a;
  uint32_t d = cf->hidden_size, qd = cf->n_heads * cf->head_dim, kvd = cf->n_kv_heads * cf->head_dim;
  uint32_t ffn = cf->intermediate_size;
  pass_t p = {.m = m, .items = items, .caller = caller, .n_items = n_items, .h = h};
  lt_status_t st = LT_OK;
  gpu_cmd_t *c = NULL;
  gpu_buf_t *emb = NULL;
  int32_t *ids = NULL, *pos = NULL;
  p.row0 = malloc((n_items + 1) * sizeof *p.row0);
  if (!p.row0) return lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t i = 0; i < n_items; i++) {
    p.row0[i] = p.T;
    p.T += items[i].n_tokens;
  }
  ids = malloc(p.T * sizeof *ids);
  pos = malloc(p.T * sizeof *pos);
  if (!ids || !pos) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  for (uint32_t i = 0; i < n_items; i++)
    for (uint32_t t = 0; t < items[i].n_tokens; t++) {
      int32_t id = items[i].tokens[t];
      if (id < 0 || (uint32_t)id >= cf->vocab_size) {
        st = lt_fail(err, LT_E_INVALID, "token id %d at position %u of item %u is outside the vocabulary (%u)", id, t,
                     i, cf->vocab_size);
        goto out;
      }
      ids[p.row0[i] + t] = id;
      pos[p.row0[i] + t] = (int32_t)(items[i].seq->len + t);
    }
  if ((st = gpu_upload(a->ids, 0, ids, p.T * 4, err)) != LT_OK) goto out;
  if ((st = gpu_upload(a->pos, 0, pos, p.T * 4, err)) != LT_OK) goto out;
  /* Embeddings from outside: every item's rows one after another in one buffer, copied into the stream below. */
  uint64_t n_emb = 0;
  for (uint32_t i = 0; i < n_items; i++) n_emb += items[i].n_embeds;
  if (n_emb) {
    if (!(emb = gpu_buf_new(m->g, n_emb * d * 4, err))) {
      st = err ? err->code : LT_E_DEVICE_OOM;
      goto out;
    }
    for (uint32_t i = 0, row = 0; i < n_items && st == LT_OK; i++)
      if (items[i].n_embeds) {
        st = gpu_upload(emb, (uint64_t)row * d * 4, items[i].embeds, (uint64_t)items[i].n_embeds * d * 4, err);
        row += items[i].n_embeds;
      }
    if (st != LT_OK) goto out;
  }
  if (h && h->add_vec && (st = gpu_upload(a->addv, 0, h->add_vec, (uint64_t)d * 4, err)) != LT_OK) goto out;
  if (h && h->add_vec && h->add_alpha != 1.0f) {
    /* Scale once on the device: addv = alpha * vec. */
    gpu_cmd_t *s = gpu_cmd_begin(m->g, err);
    st = s ? op_scale(s, gv(a->addv), gv(a->addv), h->add_alpha, d, err) : (err ? err->code : LT_E_VULKAN);
    if (s) {
      lt_status_t st2 = gpu_cmd_finish(&s, err);
      if (st == LT_OK) st = st2;
    }
    if (st != LT_OK) goto out;
  }
  if (h && h->expert_mask && cf->n_experts) {
    uint64_t n = (uint64_t)cf->n_layers * a->mask_stride;
    float *mk = malloc(n * 4);
    if (!mk) {
      st = lt_fail(err, LT_E_NOMEM, "out of memory");
      goto out;
    }
    for (uint32_t l = 0; l < cf->n_layers; l++)
      for (uint32_t e = 0; e < a->mask_stride; e++)
        mk[(uint64_t)l * a->mask_stride + e] =
            e < cf->n_experts && h->expert_mask[(uint64_t)l * cf->n_experts + e] ? MASKED_LOGIT : 0.0f;
    st = gpu_upload(a->mask, 0, mk, n * 4, err);
    free(mk);
    if (st != LT_OK) goto out;
  }
  if (!(c = gpu_cmd_begin(m->g, err))) {
    st = err ? err->code : LT_E_VULKAN;
    goto out;
  }
  for (uint32_t pc = 0; pc < m->embed.n_pieces && st == LT_OK; pc++) {
    uint32_t lo = pc * m->embed.rows_per_piece;
    uint32_t hi = lo + m->embed.rows_per_piece < m->embed.rows ? lo + m->embed.rows_per_piece : m->embed.rows;
    int32_t zi = zread_param(m, m->embed.piece[pc]);
    op_zread_t zr = zi >= 0 ? (op_zread_t){m->zread->seed, m->zread->tensor_id[zi], m->zread->scale} : (op_zread_t){0};
    st = op_embed_z(c, gv(a->x), gv(m->embed.piece[pc]), m->embed.dtype, gv(a->ids), p.T, d, lo, hi,
                    zi >= 0 ? &zr : NULL, err);
  }
  if (st == LT_OK && cf->embed_scale > 0) st = op_scale(c, gv(a->x), gv(a->x), cf->embed_scale, p.T * d, err);
  for (uint32_t i = 0, row = 0; i < n_items && st == LT_OK; i++)
    if (items[i].n_embeds) {
      st = gpu_cmd_copy(c, emb, (uint64_t)row * d * 4, a->x, ((uint64_t)p.row0[i] + items[i].embeds_at) * d * 4,
                        (uint64_t)items[i].n_embeds * d * 4, err);
      row += items[i].n_embeds;
    }
  for (uint32_t l = 0; l < cf->n_layers && st == LT_OK; l++) {
    dlayer_t *L = &m->layers[l];
    if ((st = report_resid(&p, &c, l, err)) != LT_OK) break;
    if (h && h->add_vec && h->add_layer == l && (st = add_vector(&p, c, err)) != LT_OK) break;
    if (h && h->skip_block && h->skip_block[l]) continue;
    /* q, k, v: the norm folded into one fused product, else the norm and then one fused product, else four ops. */
    bool roped = false, cached = false;
    /* One sequence: k and v can go straight to its cache rows. */
    gpu_view_t cache[2] = {{0}};
    uint64_t at = n_items == 1 ? (uint64_t)items[0].seq->len * kvd * 4 : 0, align = gpu_caps(m->g)->min_storage_align;
    if (n_items == 1 && (!align || at % align == 0)) {
      cache[0] = (gpu_view_t){items[0].seq->k[l], at}, cache[1] = (gpu_view_t){items[0].seq->v[l], at};
    }
    const gpu_view_t *cv = cache[0].buf ? cache : NULL;
    st = site_unread(h, MODEL_SITE_ATTN_IN) ? fused_qkv(m, c, L, l, p.T, a->x, L->attn_norm, cv, &roped, &cached, err)
                                            : LT_E_UNSUPPORTED;
    if (st == LT_E_UNSUPPORTED) {
      if ((st = op_rmsnorm(c, gv(a->xn), gv(a->x), gv(L->attn_norm), p.T, d, cf->rms_norm_eps, err)) != LT_OK) break;
      if ((st = report_site(&p, &c, MODEL_SITE_ATTN_IN, l, -1, a->xn, p.T, d, err)) != LT_OK) break;
      if ((st = fused_qkv(m, c, L, l, p.T, a->xn, NULL, cv, &roped, &cached, err)) == LT_E_UNSUPPORTED) {
        if ((st = mul(m, c, a->q, a->xn, &L->wq, p.T, false, err)) != LT_OK) break;
        if ((st = mul(m, c, a->k, a->xn, &L->wk, p.T, false, err)) != LT_OK) break;
        st = mul(m, c, a->v, a->xn, &L->wv, p.T, false, err);
      }
    }
    if (st != LT_OK) break;
    if (L->bq && ((st = op_add(c, gv(a->q), gv(a->q), gv(L->bq), p.T * qd, qd, err)) != LT_OK ||
                  (st = op_add(c, gv(a->k), gv(a->k), gv(L->bk), p.T * kvd, kvd, err)) != LT_OK ||
                  (st = op_add(c, gv(a->v), gv(a->v), gv(L->bv), p.T * kvd, kvd, err)) != LT_OK))
      break;
    if ((st = adapter_lora(m, c, a->q, a->xn, l, 0, p.T, err)) != LT_OK) break;
    if ((st = adapter_lora(m, c, a->k, a->xn, l, 1, p.T, err)) != LT_OK) break;
    if ((st = adapter_lora(m, c, a->v, a->xn, l, 2, p.T, err)) != LT_OK) break;
    if (!roped && (st = op_rope(c, gv(a->q), gv(a->pos), gv(m->rope), p.T, cf->n_heads, cf->head_dim, cf->rope_dim,
                                m->rope_neox, m->rope_rows, err)) != LT_OK)
      break;
    if (!roped && (st = op_rope(c, gv(a->k), gv(a->pos), gv(m->rope), p.T, cf->n_kv_heads, cf->head_dim, cf->rope_dim,
                                m->rope_neox, m->rope_rows, err)) != LT_OK)
      break;
    for (uint32_t i = 0; i < n_items && st == LT_OK; i++) {
      model_seq_t *s = items[i].seq;
      uint64_t src = (uint64_t)p.row0[i] * kvd * 4, dst = (uint64_t)s->len * kvd * 4;
      uint64_t bytes = (uint64_t)items[i].n_tokens * kvd * 4;
      if (!cached && (st = gpu_cmd_copy(c, a->k, src, s->k[l], dst, bytes, err)) != LT_OK) break;
      if (!cached && (st = gpu_cmd_copy(c, a->v, src, s->v[l], dst, bytes, err)) != LT_OK) break;
      gpu_view_t o = {a->att, (uint64_t)p.row0[i] * qd * 4}, q = {a->q, (uint64_t)p.row0[i] * qd * 4};
      st = op_attention(c, o, q, gv(s->k[l]), gv(s->v[l]), items[i].n_tokens, cf->n_heads, cf->n_kv_heads, cf->head_dim,
                        s->len, s->len + items[i].n_tokens, model_config_window(cf, l), model_config_attn_scale(cf),
                        cf->attn_softcap, err);
    }
    if (st != LT_OK) break;
    if (h && h->on_attn && h->attn_layer == l && (st = attn_hook(&p, &c, l, err)) != LT_OK) break;
    if ((st = report_site(&p, &c, MODEL_SITE_ATTN_OUT, l, -1, a->att, p.T, qd, err)) != LT_OK) break;
    if ((st = join_stream(m, c, a->att, &L->wo, L->post_attn_norm, l, 3, p.T, err)) != LT_OK) break;
    if ((st = adapter_bottleneck(m, c, a->x, l, 0, p.T, err)) != LT_OK) break;
    if ((h && h->skip_ffn && h->skip_ffn[l]) || L->ffn_dropped) continue;
    if ((st = report_site(&p, &c, MODEL_SITE_FFN_RESID, l, -1, a->x, p.T, d, err)) != LT_OK) break;
    /* The MLP's norm folded into the fused gate-and-up product where it can be, else run first. */
    st = !cf->n_experts && site_unread(h, MODEL_SITE_FFN_IN) ? fused_glu(m, c, L, l, p.T, a->x, L->ffn_norm, err)
                                                             : LT_E_UNSUPPORTED;
    bool folded = st == LT_OK;
    if (st != LT_OK && st != LT_E_UNSUPPORTED) break;
    if (!folded) {
      if ((st = op_rmsnorm(c, gv(a->xn), gv(a->x), gv(L->ffn_norm), p.T, d, cf->rms_norm_eps, err)) != LT_OK) break;
      if ((st = report_site(&p, &c, MODEL_SITE_FFN_IN, l, -1, a->xn, p.T, d, err)) != LT_OK) break;
    }
    if (cf->n_experts) {
      st = moe_ffn(&p, &c, l, err);
    } else if (folded || (st = fused_glu(m, c, L, l, p.T, a->xn, NULL, err)) != LT_E_UNSUPPORTED) {
      if (st != LT_OK) break;
      if ((st = report_site(&p, &c, MODEL_SITE_FFN_ACT, l, -1, a->gate, p.T, ffn, err)) != LT_OK) break;
      st = join_stream(m, c, a->gate, &L->ffn.down, L->post_ffn_norm, l, 6, p.T, err);
    } else {
      if ((st = mul(m, c, a->gate, a->xn, &L->ffn.gate, p.T, false, err)) != LT_OK) break;
      if ((st = mul(m, c, a->up, a->xn, &L->ffn.up, p.T, false, err)) != LT_OK) break;
      if ((st = adapter_lora(m, c, a->gate, a->xn, l, 4, p.T, err)) != LT_OK) break;
      if ((st = adapter_lora(m, c, a->up, a->xn, l, 5, p.T, err)) != LT_OK) break;
      st = cf->gelu ? op_geglu(c, gv(a->gate), gv(a->gate), gv(a->up), p.T * ffn, err)
                    : op_swiglu(c, gv(a->gate), gv(a->gate), gv(a->up), p.T * ffn, err);
      if (st != LT_OK) break;
      if ((st = report_site(&p, &c, MODEL_SITE_FFN_ACT, l, -1, a->gate, p.T, ffn, err)) != LT_OK) break;
      st = join_stream(m, c, a->gate, &L->ffn.down, L->post_ffn_norm, l, 6, p.T, err);
    }
    if (st == LT_OK) st = adapter_bottleneck(m, c, a->x, l, 1, p.T, err);
    if (st == LT_OK) st = report_site(&p, &c, MODEL_SITE_FFN_OUT, l, -1, a->x, p.T, d, err);
  }
  if (st == LT_OK) st = report_resid(&p, &c, cf->n_layers, err);
  if (st == LT_OK) st = op_rmsnorm(c, gv(a->xn), gv(a->x), gv(m->out_norm), p.T, d, cf->rms_norm_eps, err);
  if (st == LT_OK) st = outputs(&p, &c, err);
  if (st == LT_OK) st = gpu_cmd_finish(&c, err);
  if (st == LT_OK)
    for (uint32_t i = 0; i < n_items; i++) items[i].seq->len += items[i].n_tokens;
out:
  gpu_cmd_abort(&c);
  gpu_buf_destroy(&emb);
  free(ids);
  free(pos);
  free(p.row0);
  return st;
}

lt_status_t model_forward(model_t *m, model_item_t *items, uint32_t n_items, const model_hooks_t *h, lt_err_t *err) {
  for (uint32_t i = 0; i < n_items; i++) {
    const model_item_t *it = &items[i];
    if (!it->seq || it->seq->m != m) return lt_fail(err, LT_E_INVALID, "item %u: no sequence of this model", i);
    if ((uint64_t)it->seq->len + it->n_tokens > it->seq->cap)
      return lt_fail(err, LT_E_LIMIT, "item %u: %u + %u tokens exceed the sequence capacity %u", i, it->seq->len,
                     it->n_tokens, it->seq->cap);
    if (it->out != MODEL_OUT_NONE && !it->result) return lt_fail(err, LT_E_INVALID, "item %u: no result buffer", i);
    if (it->out == MODEL_OUT_NLL && !it->targets) return lt_fail(err, LT_E_INVALID, "item %u: NLL without targets", i);
    if (it->out == MODEL_OUT_TOP &&
        (!it->top_ids || it->top_k < 1 || it->top_k > MODEL_TOP_MAX || it->top_k > m->cfg.vocab_size))
      return lt_fail(err, LT_E_INVALID, "item %u: top %u candidates (want 1..%u, at most the vocabulary %u, and ids)",
                     i, it->top_k, MODEL_TOP_MAX, m->cfg.vocab_size);
    if (nucleus_row(it) && !it->top_logits)
      return lt_fail(err, LT_E_INVALID, "item %u: a nucleus cut's mass needs top_logits for the rows it outgrows", i);
    if (it->n_embeds && (!it->embeds || (uint64_t)it->embeds_at + it->n_embeds > it->n_tokens))
      return lt_fail(err, LT_E_INVALID, "item %u: input embeddings for tokens %u..%u of %u", i, it->embeds_at,
                     it->embeds_at + it->n_embeds, it->n_tokens);
    for (uint32_t j = 0; j < i; j++)
      if (items[j].seq == it->seq) return lt_fail(err, LT_E_INVALID, "items %u and %u share a sequence", j, i);
  }
  /* Group items into passes that fit the arena; split an item longer than the arena into consecutive pieces
   * (earlier pieces produce no logits unless every position is wanted). */
  uint32_t cap = m->a.cap;
  model_item_t *pass = malloc((n_items ? n_items : 1) * sizeof *pass);
  uint32_t *caller = malloc((n_items ? n_items : 1) * sizeof *caller);
  if (!pass || !caller) {
    free(pass), free(caller);
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  lt_status_t st = LT_OK;
  uint32_t n = 0, used = 0;
  for (uint32_t i = 0; i < n_items && st == LT_OK; i++) {
    const model_item_t *it = &items[i];
    for (uint32_t done = 0; done < it->n_tokens && st == LT_OK;) {
      if (used == cap) {
        st = forward_pass(m, pass, caller, n, h, err);
        n = used = 0;
        if (st != LT_OK) break;
      }
      uint32_t take = it->n_tokens - done < cap - used ? it->n_tokens - done : cap - used;
      model_item_t piece = *it;
      piece.tokens = it->tokens + done;
      piece.n_tokens = take;
      bool final = done + take == it->n_tokens;
      if ((it->out == MODEL_OUT_LAST || it->out == MODEL_OUT_TOP) && !final) piece.out = MODEL_OUT_NONE;
      if (it->out == MODEL_OUT_ALL) piece.result = it->result + (uint64_t)done * m->cfg.vocab_size;
      if (it->out == MODEL_OUT_NLL) {
        piece.result = it->result + done;
        piece.targets = it->targets + done;
      }
      /* The piece's share of the outside embeddings. */
      uint32_t lo = it->embeds_at > done ? it->embeds_at : done;
      uint32_t hi = it->embeds_at + it->n_embeds < done + take ? it->embeds_at + it->n_embeds : done + take;
      piece.n_embeds = it->n_embeds && hi > lo ? hi - lo : 0;
      piece.embeds_at = piece.n_embeds ? lo - done : 0;
      piece.embeds = piece.n_embeds ? it->embeds + (uint64_t)(lo - it->embeds_at) * m->cfg.hidden_size : NULL;
      caller[n] = i;
      pass[n++] = piece;
      used += take;
      done += take;
    }
  }
  if (st == LT_OK && n) st = forward_pass(m, pass, caller, n, h, err);
  free(pass);
  free(caller);
  return st;
}
