/* The transformer forward pass on the GPU (LLaMA dense blocks and Mixtral MoE blocks), batched over sequences. */
#include "engine/model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model_file.h"
#include "engine/ops/ops.h"
#include "engine/ops/quant.h"

/* Rows of logits computed at once, at most (bounds the logits buffer to LOGIT_ROWS * vocab floats); fewer when
 * the device binds less. */
#define LOGIT_ROWS 32u
/* Masked experts get this router logit (finite, so softmax stays NaN-free when every expert is masked). */
#define MASKED_LOGIT -1.0e30f

/* A weight matrix [rows, cols] on the device, split into row pieces when it exceeds one binding. */
typedef struct dmat {
  lt_dtype_t dtype; /* f32, f16, or i8 / i4: quantised (engine/ops/quant.h), with scales */
  uint32_t rows, cols;
  uint32_t rows_per_piece, n_pieces;
  gpu_buf_t **piece;
  gpu_buf_t **scales; /* quantised only: each piece's scales, stype, group columns per scale */
  lt_dtype_t stype;
  uint32_t group;
} dmat_t;

typedef struct dffn {
  dmat_t gate, up, down;
} dffn_t;

typedef struct dlayer {
  gpu_buf_t *attn_norm, *ffn_norm; /* f32 [hidden] */
  dmat_t wq, wk, wv, wo;
  dffn_t ffn;
  dmat_t router;
  dffn_t *experts;
  uint32_t n_experts; /* this block's experts (an expert drop may leave different counts per block) */
  bool ffn_dropped;   /* compressed model: no feed-forward sub-layer (docs/compression.md) */
} dlayer_t;

/* The activation arena for up to cap rows (tokens) per pass. */
typedef struct acts {
  uint32_t cap;        /* rows per pass */
  uint32_t logit_rows; /* rows of logits per chunk */
  gpu_buf_t *x, *xn, *q, *k, *v, *att, *gate, *up; /* [cap, width] f32 */
  gpu_buf_t *ids, *pos;                            /* i32 [cap] */
  gpu_buf_t *sel, *tgt, *lse, *nll;                /* [LOGIT_ROWS] */
  gpu_buf_t *xs, *logits;                          /* [LOGIT_ROWS, hidden], [LOGIT_ROWS, vocab] */
  gpu_buf_t *addv;                                 /* f32 [hidden] */
  /* MoE */
  gpu_buf_t *rlog, *rprob, *tk_idx, *tk_val;       /* [cap, E], [cap, E], [cap, k] */
  gpu_buf_t *xe, *ge, *ue, *oe;                    /* expert work rows */
  gpu_buf_t *eids, *ew;                            /* [cap * k + 4 * E] */
  gpu_buf_t *mask;                                 /* f32 [n_layers, mask_stride] */
  uint32_t mask_stride;                            /* E rounded up so each layer's row is a bindable offset */
} acts_t;

struct model {
  gpu_t *g;
  char path[1024];
  model_config_t cfg;
  bool rope_neox;
  dmat_t embed, lm_head;
  gpu_buf_t *out_norm;
  dlayer_t *layers;
  model_mem_t mem;
  acts_t a;
  gpu_buf_t *rope; /* f32 [rope_rows, rope_dim / 2, 2] */
  uint32_t rope_rows;
  bool tied;       /* lm_head shares embed's pieces */
  bool force_f32;  /* f16 weights placed as f32 (model_load_opts_t) */
  model_param_t *params;
  uint32_t n_params;
  const model_file_t *file; /* during model_load only: where quantised weights find their scales */
};

struct model_seq {
  model_t *m;
  uint32_t len, cap;
  gpu_buf_t **k, **v; /* per layer: f32 [cap, n_kv_heads * head_dim] */
};

/* ---- loading ---- */

static void dmat_free(dmat_t *d) {
  for (uint32_t i = 0; d->piece && i < d->n_pieces; i++) gpu_buf_destroy(&d->piece[i]);
  for (uint32_t i = 0; d->scales && i < d->n_pieces; i++) gpu_buf_destroy(&d->scales[i]);
  free(d->piece);
  free(d->scales);
  memset(d, 0, sizeof *d);
}

static lt_status_t upload_f32(gpu_t *g, gpu_buf_t **out, const ft_tensor_t *t, uint64_t *dev_bytes, lt_err_t *err) {
  lt_status_t st = LT_OK;
  float *host = malloc(t->n_elems * sizeof *host);
  if (!host) return lt_fail(err, LT_E_NOMEM, "out of memory converting %s", t->name);
  if ((st = ft_tensor_to_f32(t, host, err)) == LT_OK) {
    *out = gpu_buf_new(g, t->n_elems * 4, err);
    st = *out ? gpu_upload(*out, 0, host, t->n_elems * 4, err) : (err ? err->code : LT_E_DEVICE_OOM);
    if (st == LT_OK) *dev_bytes += t->n_elems * 4;
  }
  free(host);
  return st;
}

/* Rows per piece of a matrix whose rows take row_bytes (and, quantised, scale_bytes in a second buffer). */
static lt_status_t piece_rows(model_t *m, dmat_t *d, const ft_tensor_t *t, uint64_t row_bytes, uint64_t scale_bytes,
                              lt_err_t *err) {
  const gpu_caps_t *caps = gpu_caps(m->g);
  uint64_t widest = row_bytes > scale_bytes ? row_bytes : scale_bytes;
  uint64_t max_rows = caps->max_storage_range / widest;
  if (max_rows >= d->rows) d->rows_per_piece = d->rows;
  else {
    /* A piece fills the output columns from its first row on (strided matmul): its first row times 4 bytes
     * must be a multiple of the device's minStorageBufferOffsetAlignment. */
    uint64_t align = caps->min_storage_align > 4 ? caps->min_storage_align / 4 : 1;
    if (max_rows < align)
      return lt_fail(err, LT_E_LIMIT, "%s: a row of %llu bytes is too wide for this device's bindings", t->name,
                     (unsigned long long)row_bytes);
    d->rows_per_piece = (uint32_t)(max_rows / align * align);
  }
  d->n_pieces = (d->rows + d->rows_per_piece - 1) / d->rows_per_piece;
  d->piece = calloc(d->n_pieces, sizeof *d->piece);
  if (!d->piece) return lt_fail(err, LT_E_NOMEM, "out of memory");
  return LT_OK;
}

/* Uploads rows [r0, r0 + nr) of a matrix (row_bytes each, from src) into a new buffer *out. */
static lt_status_t piece_upload(model_t *m, gpu_buf_t **out, const uint8_t *src, uint32_t r0, uint32_t nr,
                                uint64_t row_bytes, lt_err_t *err) {
  uint64_t bytes = (uint64_t)nr * row_bytes;
  if (!(*out = gpu_buf_new(m->g, bytes, err))) return err ? err->code : LT_E_DEVICE_OOM;
  m->mem.weight_device_bytes += bytes;
  return gpu_upload(*out, 0, src + (uint64_t)r0 * row_bytes, bytes, err);
}

/* Places a quantised weight (I8 or packed-int4 U8 rows, F16 scales) on the device as it is in the file: the
 * integers untouched, the scales f16 (f32 on a device without 16-bit storage). */
static lt_status_t dmat_load_q(model_t *m, dmat_t *d, const ft_tensor_t *t, lt_err_t *err) {
  uint32_t cols = 0;
  const ft_tensor_t *sc = model_file_scales(m->file, t, &cols);
  if (!sc) return lt_fail(err, LT_E_INVALID, "%s: quantised weight without scales", t->name);
  d->rows = (uint32_t)t->shape[0];
  d->cols = cols;
  d->dtype = t->dtype == FT_I8 ? LT_I8 : LT_I4;
  d->group = m->cfg.quant_group;
  d->stype = gpu_caps(m->g)->storage16 ? LT_F16 : LT_F32;
  uint64_t row_bytes = quant_row_bytes(d->dtype == LT_I8 ? 8 : 4, cols);
  uint64_t G = quant_groups(cols, d->group), srow = G * lt_dtype_size(d->stype);
  lt_status_t st = piece_rows(m, d, t, row_bytes, srow, err);
  if (st != LT_OK) return st;
  float *conv = NULL;
  if (d->stype == LT_F32) {
    if (!(conv = malloc(sc->n_elems * sizeof *conv))) return lt_fail(err, LT_E_NOMEM, "out of memory");
    st = ft_tensor_to_f32(sc, conv, err);
  }
  const uint8_t *ssrc = conv ? (const uint8_t *)conv : (const uint8_t *)sc->data;
  if (st == LT_OK && !(d->scales = calloc(d->n_pieces, sizeof *d->scales)))
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t p = 0; p < d->n_pieces && st == LT_OK; p++) {
    uint32_t r0 = p * d->rows_per_piece, nr = d->rows - r0 < d->rows_per_piece ? d->rows - r0 : d->rows_per_piece;
    if ((st = piece_upload(m, &d->piece[p], t->data, r0, nr, row_bytes, err)) == LT_OK)
      st = piece_upload(m, &d->scales[p], ssrc, r0, nr, srow, err);
  }
  free(conv);
  return st;
}

/* Places a 2-D weight on the device: f16 stays f16 (when the device has 16-bit storage), everything else f32. */
static lt_status_t dmat_load(model_t *m, dmat_t *d, const ft_tensor_t *t, lt_err_t *err) {
  lt_status_t st = LT_OK;
  const gpu_caps_t *caps = gpu_caps(m->g);
  memset(d, 0, sizeof *d);
  if (t->n_dims != 2) return lt_fail(err, LT_E_INVALID, "%s: expected a matrix, got %u dims", t->name, t->n_dims);
  if (t->dtype == FT_I8 || t->dtype == FT_U8) return dmat_load_q(m, d, t, err);
  d->rows = (uint32_t)t->shape[0];
  d->cols = (uint32_t)t->shape[1];
  /* f16 and bf16 stay 16-bit on devices with 16-bit storage unless f32 was asked for; the rest (and Q8_0) is f32. */
  bool keep16 = caps->storage16 && !m->force_f32;
  d->dtype = keep16 && t->dtype == FT_F16 ? LT_F16 : keep16 && t->dtype == FT_BF16 ? LT_BF16 : LT_F32;
  uint64_t row_bytes = (uint64_t)d->cols * lt_dtype_size(d->dtype);
  if ((st = piece_rows(m, d, t, row_bytes, 0, err)) != LT_OK) return st;
  float *conv = NULL;
  if (d->dtype == LT_F32 && t->dtype != FT_F32) {
    conv = malloc(t->n_elems * sizeof *conv);
    if (!conv) return lt_fail(err, LT_E_NOMEM, "out of memory converting %s", t->name);
    if ((st = ft_tensor_to_f32(t, conv, err)) != LT_OK) goto out;
  }
  const uint8_t *src = conv ? (const uint8_t *)conv : (const uint8_t *)t->data;
  for (uint32_t p = 0; p < d->n_pieces && st == LT_OK; p++) {
    uint32_t r0 = p * d->rows_per_piece, nr = d->rows - r0 < d->rows_per_piece ? d->rows - r0 : d->rows_per_piece;
    st = piece_upload(m, &d->piece[p], src, r0, nr, row_bytes, err);
  }
out:
  free(conv);
  return st;
}

static lt_status_t ffn_load(model_t *m, dffn_t *f, const model_ffn_t *src, lt_err_t *err) {
  lt_status_t st;
  if ((st = dmat_load(m, &f->gate, &src->gate, err)) != LT_OK) return st;
  if ((st = dmat_load(m, &f->up, &src->up, err)) != LT_OK) return st;
  return dmat_load(m, &f->down, &src->down, err);
}

static void ffn_free(dffn_t *f) {
  dmat_free(&f->gate);
  dmat_free(&f->up);
  dmat_free(&f->down);
}

static void acts_free(acts_t *a) {
  gpu_buf_t **all[] = {&a->x,    &a->xn,  &a->q,     &a->k,      &a->v,      &a->att, &a->gate, &a->up,
                       &a->ids,  &a->pos, &a->sel,   &a->tgt,    &a->lse,    &a->nll, &a->xs,   &a->logits,
                       &a->addv, &a->rlog, &a->rprob, &a->tk_idx, &a->tk_val, &a->xe,  &a->ge,   &a->ue,
                       &a->oe,   &a->eids, &a->ew,   &a->mask};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) gpu_buf_destroy(all[i]);
  a->cap = 0;
}

/* Allocates the activation arena for cap rows. */
static lt_status_t acts_alloc(model_t *m, uint32_t cap, lt_err_t *err) {
  const model_config_t *c = &m->cfg;
  acts_t *a = &m->a;
  acts_free(a);
  /* Every activation buffer is bound whole: keep [cap, widest row] within one binding. */
  uint64_t max_bind = gpu_caps(m->g)->max_storage_range;
  uint64_t widest = c->hidden_size;
  uint64_t widths[] = {(uint64_t)c->n_heads * c->head_dim, c->intermediate_size,
                       (uint64_t)c->n_experts * (c->n_experts_used ? c->n_experts_used : 1)};
  for (size_t i = 0; i < 3; i++)
    if (widths[i] > widest) widest = widths[i];
  if (cap > max_bind / (widest * 4)) cap = (uint32_t)(max_bind / (widest * 4));
  uint64_t lrows = max_bind / ((uint64_t)c->vocab_size * 4);
  if (cap == 0 || lrows == 0)
    return lt_fail(err, LT_E_LIMIT, "this device binds at most %llu bytes: too few for one row of activations or logits",
                   (unsigned long long)max_bind);
  a->logit_rows = lrows < LOGIT_ROWS ? (uint32_t)lrows : LOGIT_ROWS;
  uint64_t d = c->hidden_size, qd = (uint64_t)c->n_heads * c->head_dim, kvd = (uint64_t)c->n_kv_heads * c->head_dim;
  uint64_t ffn = c->intermediate_size, E = c->n_experts ? c->n_experts : 1, K = c->n_experts_used ? c->n_experts_used : 1;
  struct {
    gpu_buf_t **b;
    uint64_t bytes;
  } want[] = {
      {&a->x, cap * d * 4},      {&a->xn, cap * d * 4},       {&a->q, cap * qd * 4},
      {&a->k, cap * kvd * 4},    {&a->v, cap * kvd * 4},      {&a->att, cap * qd * 4},
      {&a->gate, cap * ffn * 4}, {&a->up, cap * ffn * 4},     {&a->ids, cap * 4},
      {&a->pos, cap * 4},        {&a->sel, LOGIT_ROWS * 4},   {&a->tgt, LOGIT_ROWS * 4},
      {&a->lse, LOGIT_ROWS * 4}, {&a->nll, LOGIT_ROWS * 4},   {&a->xs, LOGIT_ROWS * d * 4},
      {&a->logits, (uint64_t)a->logit_rows * c->vocab_size * 4}, {&a->addv, d * 4},
  };
  uint64_t total = 0;
  lt_status_t st = LT_OK;
  for (size_t i = 0; i < sizeof want / sizeof want[0] && st == LT_OK; i++) {
    *want[i].b = gpu_buf_new(m->g, want[i].bytes, err);
    if (!*want[i].b) st = err ? err->code : LT_E_DEVICE_OOM;
    total += want[i].bytes;
  }
  if (st == LT_OK && c->n_experts) {
    uint64_t list = cap * K + 4 * E;
    uint64_t align = gpu_caps(m->g)->min_storage_align / 4;
    a->mask_stride = (uint32_t)(align > 1 ? (E + align - 1) / align * align : E);
    struct {
      gpu_buf_t **b;
      uint64_t bytes;
    } moe[] = {{&a->rlog, cap * E * 4}, {&a->rprob, cap * E * 4}, {&a->tk_idx, cap * K * 4},
               {&a->tk_val, cap * K * 4}, {&a->xe, cap * d * 4}, {&a->ge, cap * ffn * 4},
               {&a->ue, cap * ffn * 4},  {&a->oe, cap * d * 4},  {&a->eids, list * 4},
               {&a->ew, list * 4},       {&a->mask, (uint64_t)c->n_layers * a->mask_stride * 4}};
    for (size_t i = 0; i < sizeof moe / sizeof moe[0] && st == LT_OK; i++) {
      *moe[i].b = gpu_buf_new(m->g, moe[i].bytes, err);
      if (!*moe[i].b) st = err ? err->code : LT_E_DEVICE_OOM;
      total += moe[i].bytes;
    }
  }
  if (st != LT_OK) {
    acts_free(a);
    return st;
  }
  a->cap = cap;
  m->mem.activation_bytes = total;
  return LT_OK;
}

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
  if (!m->rope) st = err ? err->code : LT_E_DEVICE_OOM;
  else st = gpu_upload(m->rope, 0, t, n * 4, err);
  free(t);
  m->rope_rows = st == LT_OK ? rows : 0;
  return st;
}

/* Appends the pieces of one tensor (a matrix or, with vec, a norm vector) to the parameter list. */
static lt_status_t params_add(model_t *m, const model_tensor_t *t, const dmat_t *d, gpu_buf_t *vec, uint32_t vec_n,
                              lt_err_t *err) {
  uint32_t n = d ? d->n_pieces : 1;
  model_param_t *grown = realloc(m->params, (m->n_params + n) * sizeof *grown);
  if (!grown) return lt_fail(err, LT_E_NOMEM, "out of memory");
  m->params = grown;
  for (uint32_t p = 0; p < n; p++) {
    model_param_t *q = &m->params[m->n_params++];
    memset(q, 0, sizeof *q);
    snprintf(q->name, sizeof q->name, "%s", t->name);
    q->layer = t->layer;
    q->expert = t->expert;
    if (d) {
      q->dtype = d->dtype;
      q->scales = d->scales ? d->scales[p] : NULL;
      q->stype = d->stype;
      q->group = d->group;
      q->rows = d->rows;
      q->cols = d->cols;
      q->row0 = p * d->rows_per_piece;
      q->n_rows = d->rows - q->row0 < d->rows_per_piece ? d->rows - q->row0 : d->rows_per_piece;
      q->buf = d->piece[p];
    } else {
      q->is_norm = true;
      q->dtype = LT_F32;
      q->rows = q->n_rows = 1;
      q->cols = vec_n;
      q->buf = vec;
    }
  }
  return LT_OK;
}

/* Lists every device tensor under its Hugging Face name, in the file's forward order. */
static lt_status_t params_build(model_t *m, const model_weights_t *w, lt_err_t *err) {
  lt_status_t st = LT_OK;
  uint32_t d = m->cfg.hidden_size;
  for (uint32_t i = 0; i < w->n_tensors && st == LT_OK; i++) {
    const model_tensor_t *t = &w->tensors[i];
    dlayer_t *L = t->layer >= 0 ? &m->layers[t->layer] : NULL;
    dffn_t *X = L && t->expert >= 0 ? &L->experts[t->expert] : NULL;
    switch (t->role) {
    case MR_TOK_EMBD: st = params_add(m, t, &m->embed, NULL, 0, err); break;
    case MR_LM_HEAD: st = params_add(m, t, &m->lm_head, NULL, 0, err); break;
    case MR_OUT_NORM: st = params_add(m, t, NULL, m->out_norm, d, err); break;
    case MR_ATTN_NORM: st = params_add(m, t, NULL, L->attn_norm, d, err); break;
    case MR_FFN_NORM: st = params_add(m, t, NULL, L->ffn_norm, d, err); break;
    case MR_WQ: st = params_add(m, t, &L->wq, NULL, 0, err); break;
    case MR_WK: st = params_add(m, t, &L->wk, NULL, 0, err); break;
    case MR_WV: st = params_add(m, t, &L->wv, NULL, 0, err); break;
    case MR_WO: st = params_add(m, t, &L->wo, NULL, 0, err); break;
    case MR_FFN_GATE: st = params_add(m, t, &L->ffn.gate, NULL, 0, err); break;
    case MR_FFN_UP: st = params_add(m, t, &L->ffn.up, NULL, 0, err); break;
    case MR_FFN_DOWN: st = params_add(m, t, &L->ffn.down, NULL, 0, err); break;
    case MR_ROUTER: st = params_add(m, t, &L->router, NULL, 0, err); break;
    case MR_EXP_GATE: st = params_add(m, t, &X->gate, NULL, 0, err); break;
    case MR_EXP_UP: st = params_add(m, t, &X->up, NULL, 0, err); break;
    case MR_EXP_DOWN: st = params_add(m, t, &X->down, NULL, 0, err); break;
    case MR_COUNT: break;
    }
  }
  return st;
}

uint32_t model_param_count(const model_t *m) { return m->n_params; }
const model_param_t *model_param_at(const model_t *m, uint32_t i) { return &m->params[i]; }

model_t *model_load(gpu_t *g, const char *path, const model_load_opts_t *opts, lt_err_t *err) {
  model_file_t *f = NULL;
  lt_status_t st = model_file_open(&f, path, err);
  if (st != LT_OK) return NULL;
  model_t *m = calloc(1, sizeof *m);
  if (!m) {
    model_file_close(&f);
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  m->g = g;
  m->file = f;
  m->force_f32 = opts && opts->force_f32;
  snprintf(m->path, sizeof m->path, "%s", path);
  m->cfg = *model_file_config(f);
  const model_weights_t *w = model_file_weights(f);
  m->rope_neox = w->rope_neox;
  const model_config_t *c = &m->cfg;
  for (uint32_t i = 0; i < w->n_tensors; i++) m->mem.weight_file_bytes += w->tensors[i].t->nbytes;
  if ((st = dmat_load(m, &m->embed, &w->tok_embd, err)) != LT_OK) goto out;
  /* A tied LM head is the embedding table itself: placed once, so tuning it tunes both. */
  m->tied = c->tie_word_embeddings;
  if (m->tied) m->lm_head = m->embed;
  else if ((st = dmat_load(m, &m->lm_head, &w->lm_head, err)) != LT_OK) goto out;
  if ((st = upload_f32(g, &m->out_norm, &w->out_norm, &m->mem.weight_device_bytes, err)) != LT_OK) goto out;
  m->layers = calloc(c->n_layers, sizeof *m->layers);
  if (!m->layers) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  for (uint32_t l = 0; l < c->n_layers && st == LT_OK; l++) {
    const model_layer_t *src = &w->layers[l];
    dlayer_t *d = &m->layers[l];
    d->n_experts = model_config_experts(c, l);
    d->ffn_dropped = c->ffn_dropped[l];
    if ((st = upload_f32(g, &d->attn_norm, &src->attn_norm, &m->mem.weight_device_bytes, err)) != LT_OK) break;
    if (!d->ffn_dropped &&
        (st = upload_f32(g, &d->ffn_norm, &src->ffn_norm, &m->mem.weight_device_bytes, err)) != LT_OK)
      break;
    if ((st = dmat_load(m, &d->wq, &src->wq, err)) != LT_OK) break;
    if ((st = dmat_load(m, &d->wk, &src->wk, err)) != LT_OK) break;
    if ((st = dmat_load(m, &d->wv, &src->wv, err)) != LT_OK) break;
    if ((st = dmat_load(m, &d->wo, &src->wo, err)) != LT_OK) break;
    if (d->ffn_dropped) continue;
    if (c->n_experts) {
      if ((st = dmat_load(m, &d->router, &src->router, err)) != LT_OK) break;
      d->experts = calloc(d->n_experts, sizeof *d->experts);
      if (!d->experts) st = lt_fail(err, LT_E_NOMEM, "out of memory");
      for (uint32_t e = 0; e < d->n_experts && st == LT_OK; e++)
        st = ffn_load(m, &d->experts[e], &src->experts[e], err);
    } else {
      st = ffn_load(m, &d->ffn, &src->ffn, err);
    }
  }
  if (st != LT_OK) goto out;
  if ((st = params_build(m, w, err)) != LT_OK) goto out;
  st = acts_alloc(m, opts && opts->max_tokens_per_pass ? opts->max_tokens_per_pass : 512, err);
out:
  model_file_close(&f);
  m->file = NULL;
  if (st != LT_OK) model_free(&m);
  return m;
}

void model_free(model_t **mp) {
  if (!mp || !*mp) return;
  model_t *m = *mp;
  if (m->tied) memset(&m->lm_head, 0, sizeof m->lm_head);
  dmat_free(&m->embed);
  dmat_free(&m->lm_head);
  free(m->params);
  gpu_buf_destroy(&m->out_norm);
  for (uint32_t l = 0; m->layers && l < m->cfg.n_layers; l++) {
    dlayer_t *d = &m->layers[l];
    gpu_buf_destroy(&d->attn_norm);
    gpu_buf_destroy(&d->ffn_norm);
    dmat_free(&d->wq);
    dmat_free(&d->wk);
    dmat_free(&d->wv);
    dmat_free(&d->wo);
    ffn_free(&d->ffn);
    dmat_free(&d->router);
    for (uint32_t e = 0; d->experts && e < d->n_experts; e++) ffn_free(&d->experts[e]);
    free(d->experts);
  }
  free(m->layers);
  acts_free(&m->a);
  gpu_buf_destroy(&m->rope);
  free(m);
  *mp = NULL;
}

const model_config_t *model_config(const model_t *m) { return &m->cfg; }
const model_mem_t *model_mem(const model_t *m) { return &m->mem; }
gpu_t *model_gpu(const model_t *m) { return m->g; }
const char *model_path(const model_t *m) { return m->path; }

/* ---- sequences ---- */

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
uint32_t model_seq_capacity(const model_seq_t *s) { return s->cap; }
void model_seq_truncate(model_seq_t *s, uint32_t n) {
  if (n < s->len) s->len = n;
}

/* ---- the forward pass ---- */

/* y[M, N] = x[M, K] . W^T for a weight split into row pieces: piece p fills columns of y starting at its first
 * row, through the strided matmul. */
static lt_status_t dmat_mul(gpu_cmd_t *c, gpu_view_t y, uint32_t y_stride, gpu_view_t x, const dmat_t *w, uint32_t M,
                            bool accumulate, lt_err_t *err) {
  for (uint32_t p = 0; p < w->n_pieces; p++) {
    uint32_t r0 = p * w->rows_per_piece, nr = w->rows - r0 < w->rows_per_piece ? w->rows - r0 : w->rows_per_piece;
    gpu_view_t yp = {y.buf, y.off + (uint64_t)r0 * 4};
    lt_status_t st;
    if (w->scales) {
      qmat_view_t q = {gv(w->piece[p]), gv(w->scales[p]), w->dtype, w->stype, w->group};
      st = op_matmul_q(c, yp, y_stride, x, w->cols, &q, M, nr, w->cols, accumulate, MATMUL_AUTO, err);
    } else {
      st = op_matmul_strided(c, yp, y_stride, x, w->cols, gv(w->piece[p]), w->dtype, M, nr, w->cols, accumulate, err);
    }
    if (st != LT_OK) return st;
  }
  return LT_OK;
}

static lt_status_t mul(gpu_cmd_t *c, gpu_buf_t *y, gpu_buf_t *x, const dmat_t *w, uint32_t M, bool acc, lt_err_t *err) {
  return dmat_mul(c, gv(y), w->rows, gv(x), w, M, acc, err);
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
  uint32_t *row0; /* first row of each item */
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
    changed |= h->on_attn(h->ctx, layer, p->caller[i], buf + (uint64_t)p->row0[i] * qd, p->items[i].n_tokens, cf->n_heads,
                          cf->head_dim);
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
  if ((st = mul(*c, a->rlog, a->xn, &L->router, T, false, err)) != LT_OK) return st;
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
    if ((st = mul(*c, a->ge, a->xe, &X->gate, n, false, err)) != LT_OK) break;
    if ((st = mul(*c, a->ue, a->xe, &X->up, n, false, err)) != LT_OK) break;
    if ((st = op_swiglu(*c, gv(a->ge), gv(a->ge), gv(a->ue), n * ffn, err)) != LT_OK) break;
    if ((st = report_site(p, c, MODEL_SITE_EXPERT_ACT, l, (int32_t)e, a->ge, n, ffn, err)) != LT_OK) break;
    if ((st = mul(*c, a->oe, a->ge, &X->down, n, false, err)) != LT_OK) break;
    st = op_scatter_add(*c, gv(a->x), gv(a->oe), ids, wts, n, d, T, err);
  }
out:
  free(idx), free(val), free(count), free(start), free(fill), free(eids), free(ew), free(probs);
  return st;
}

/* Computes logits for the rows the items ask for, in chunks of LOGIT_ROWS, and fills their results. */
static lt_status_t outputs(pass_t *p, gpu_cmd_t **c, lt_err_t *err) {
  model_t *m = p->m;
  acts_t *a = &m->a;
  uint32_t V = m->cfg.vocab_size, d = m->cfg.hidden_size;
  int32_t sel[LOGIT_ROWS], tgt[LOGIT_ROWS];
  uint32_t who[LOGIT_ROWS], tok[LOGIT_ROWS];
  float *logits = malloc((uint64_t)LOGIT_ROWS * V * 4);
  float nll[LOGIT_ROWS];
  if (!logits) return lt_fail(err, LT_E_NOMEM, "out of memory");
  lt_status_t st = LT_OK;
  uint32_t n = 0;
  for (uint32_t i = 0; i <= p->n_items && st == LT_OK; i++) {
    /* Queue this item's rows; run a chunk whenever it fills (and once at the end). */
    const model_item_t *it = i < p->n_items ? &p->items[i] : NULL;
    uint32_t first = 0, last = 0;
    if (it && it->out != MODEL_OUT_NONE && it->n_tokens) {
      first = it->out == MODEL_OUT_LAST ? it->n_tokens - 1 : 0;
      last = it->n_tokens;
    }
    for (uint32_t t = first; t <= last && st == LT_OK; t++) {
      bool have_row = it && t < last;
      if (have_row) {
        sel[n] = (int32_t)(p->row0[i] + t);
        tgt[n] = it->out == MODEL_OUT_NLL ? it->targets[t] : -1;
        who[n] = i;
        tok[n] = t;
        n++;
      }
      bool end = it == NULL && t == last;
      if (n == 0 || (n < a->logit_rows && !end)) continue;
      bool any_nll = false, any_logits = false;
      for (uint32_t r = 0; r < n; r++) {
        if (p->items[who[r]].out == MODEL_OUT_NLL) any_nll = true;
        else any_logits = true;
      }
      if ((st = gpu_upload(a->sel, 0, sel, n * 4, err)) != LT_OK) break;
      if ((st = gpu_upload(a->tgt, 0, tgt, n * 4, err)) != LT_OK) break;
      if ((st = op_embed(*c, gv(a->xs), gv(a->xn), LT_F32, gv(a->sel), n, d, 0, p->T, err)) != LT_OK) break;
      if ((st = dmat_mul(*c, gv(a->logits), V, gv(a->xs), &m->lm_head, n, false, err)) != LT_OK) break;
      if (any_nll && (st = op_logsumexp(*c, gv(a->lse), gv(a->nll), gv(a->logits), gv(a->tgt), n, V, err)) != LT_OK)
        break;
      if ((st = flush(m->g, c, err)) != LT_OK) break;
      if (any_logits && (st = gpu_download(a->logits, 0, logits, (uint64_t)n * V * 4, err)) != LT_OK) break;
      if (any_nll && (st = gpu_download(a->nll, 0, nll, n * 4, err)) != LT_OK) break;
      for (uint32_t r = 0; r < n; r++) {
        model_item_t *ir = &p->items[who[r]];
        if (ir->out == MODEL_OUT_NLL) ir->result[tok[r]] = nll[r];
        else if (ir->out == MODEL_OUT_LAST) memcpy(ir->result, logits + (uint64_t)r * V, (uint64_t)V * 4);
        else memcpy(ir->result + (uint64_t)tok[r] * V, logits + (uint64_t)r * V, (uint64_t)V * 4);
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
        st = lt_fail(err, LT_E_INVALID, "token id %d at position %u of item %u is outside the vocabulary (%u)", id,
                     t, i, cf->vocab_size);
        goto out;
      }
      ids[p.row0[i] + t] = id;
      pos[p.row0[i] + t] = (int32_t)(items[i].seq->len + t);
    }
  if ((st = gpu_upload(a->ids, 0, ids, p.T * 4, err)) != LT_OK) goto out;
  if ((st = gpu_upload(a->pos, 0, pos, p.T * 4, err)) != LT_OK) goto out;
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
    st = op_embed(c, gv(a->x), gv(m->embed.piece[pc]), m->embed.dtype, gv(a->ids), p.T, d, lo, hi, err);
  }
  for (uint32_t l = 0; l < cf->n_layers && st == LT_OK; l++) {
    dlayer_t *L = &m->layers[l];
    if ((st = report_resid(&p, &c, l, err)) != LT_OK) break;
    if (h && h->add_vec && h->add_layer == l && (st = add_vector(&p, c, err)) != LT_OK) break;
    if (h && h->skip_block && h->skip_block[l]) continue;
    if ((st = op_rmsnorm(c, gv(a->xn), gv(a->x), gv(L->attn_norm), p.T, d, cf->rms_norm_eps, err)) != LT_OK) break;
    if ((st = report_site(&p, &c, MODEL_SITE_ATTN_IN, l, -1, a->xn, p.T, d, err)) != LT_OK) break;
    if ((st = mul(c, a->q, a->xn, &L->wq, p.T, false, err)) != LT_OK) break;
    if ((st = mul(c, a->k, a->xn, &L->wk, p.T, false, err)) != LT_OK) break;
    if ((st = mul(c, a->v, a->xn, &L->wv, p.T, false, err)) != LT_OK) break;
    if ((st = op_rope(c, gv(a->q), gv(a->pos), gv(m->rope), p.T, cf->n_heads, cf->head_dim, cf->rope_dim,
                      m->rope_neox, m->rope_rows, err)) != LT_OK)
      break;
    if ((st = op_rope(c, gv(a->k), gv(a->pos), gv(m->rope), p.T, cf->n_kv_heads, cf->head_dim, cf->rope_dim,
                      m->rope_neox, m->rope_rows, err)) != LT_OK)
      break;
    for (uint32_t i = 0; i < n_items && st == LT_OK; i++) {
      model_seq_t *s = items[i].seq;
      uint64_t src = (uint64_t)p.row0[i] * kvd * 4, dst = (uint64_t)s->len * kvd * 4;
      uint64_t bytes = (uint64_t)items[i].n_tokens * kvd * 4;
      if ((st = gpu_cmd_copy(c, a->k, src, s->k[l], dst, bytes, err)) != LT_OK) break;
      if ((st = gpu_cmd_copy(c, a->v, src, s->v[l], dst, bytes, err)) != LT_OK) break;
      gpu_view_t o = {a->att, (uint64_t)p.row0[i] * qd * 4}, q = {a->q, (uint64_t)p.row0[i] * qd * 4};
      st = op_attention(c, o, q, gv(s->k[l]), gv(s->v[l]), items[i].n_tokens, cf->n_heads, cf->n_kv_heads,
                        cf->head_dim, s->len, s->len + items[i].n_tokens, 1.0f / sqrtf((float)cf->head_dim), err);
    }
    if (st != LT_OK) break;
    if (h && h->on_attn && h->attn_layer == l && (st = attn_hook(&p, &c, l, err)) != LT_OK) break;
    if ((st = report_site(&p, &c, MODEL_SITE_ATTN_OUT, l, -1, a->att, p.T, qd, err)) != LT_OK) break;
    if ((st = mul(c, a->x, a->att, &L->wo, p.T, true, err)) != LT_OK) break;
    if ((h && h->skip_ffn && h->skip_ffn[l]) || L->ffn_dropped) continue;
    if ((st = report_site(&p, &c, MODEL_SITE_FFN_RESID, l, -1, a->x, p.T, d, err)) != LT_OK) break;
    if ((st = op_rmsnorm(c, gv(a->xn), gv(a->x), gv(L->ffn_norm), p.T, d, cf->rms_norm_eps, err)) != LT_OK) break;
    if ((st = report_site(&p, &c, MODEL_SITE_FFN_IN, l, -1, a->xn, p.T, d, err)) != LT_OK) break;
    if (cf->n_experts) {
      st = moe_ffn(&p, &c, l, err);
    } else {
      if ((st = mul(c, a->gate, a->xn, &L->ffn.gate, p.T, false, err)) != LT_OK) break;
      if ((st = mul(c, a->up, a->xn, &L->ffn.up, p.T, false, err)) != LT_OK) break;
      if ((st = op_swiglu(c, gv(a->gate), gv(a->gate), gv(a->up), p.T * ffn, err)) != LT_OK) break;
      if ((st = report_site(&p, &c, MODEL_SITE_FFN_ACT, l, -1, a->gate, p.T, ffn, err)) != LT_OK) break;
      st = mul(c, a->x, a->gate, &L->ffn.down, p.T, true, err);
    }
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
      if (it->out == MODEL_OUT_LAST && !final) piece.out = MODEL_OUT_NONE;
      if (it->out == MODEL_OUT_ALL) piece.result = it->result + (uint64_t)done * m->cfg.vocab_size;
      if (it->out == MODEL_OUT_NLL) {
        piece.result = it->result + done;
        piece.targets = it->targets + done;
      }
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
