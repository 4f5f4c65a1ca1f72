/* Loading a model onto the GPU: weights placed in bindable row pieces, the activation arena, the parameter
 * registry, and the accessors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model_internal.h"
#include "engine/ops/dtype.h"
#include "engine/ops/qblock.h"
#include "engine/ops/quant.h"

static void dmat_free(dmat_t *d) {
  for (uint32_t i = 0; d->piece && i < d->n_pieces; i++) gpu_buf_destroy(&d->piece[i]);
  for (uint32_t i = 0; d->scales && i < d->n_pieces; i++) gpu_buf_destroy(&d->scales[i]);
  free(d->piece);
  free(d->scales);
  memset(d, 0, sizeof *d);
}

/* Uploads t as f32, plus `offset` on every element (Gemma's norm weights are stored as offsets from 1). */
static lt_status_t upload_f32_plus(gpu_t *g, gpu_buf_t **out, const ft_tensor_t *t, float offset, uint64_t *dev_bytes,
                                   lt_err_t *err) {
  lt_status_t st = LT_OK;
  float *host = malloc(t->n_elems * sizeof *host);
  if (!host) return lt_fail(err, LT_E_NOMEM, "out of memory converting %s", t->name);
  if ((st = ft_tensor_to_f32(t, host, err)) == LT_OK) {
    for (uint64_t i = 0; offset != 0 && i < t->n_elems; i++) host[i] += offset;
    *out = gpu_buf_new(g, t->n_elems * 4, err);
    st = *out ? gpu_upload(*out, 0, host, t->n_elems * 4, err) : (err ? err->code : LT_E_DEVICE_OOM);
    if (st == LT_OK) *dev_bytes += t->n_elems * 4;
  }
  free(host);
  return st;
}

static lt_status_t upload_f32(gpu_t *g, gpu_buf_t **out, const ft_tensor_t *t, uint64_t *dev_bytes, lt_err_t *err) {
  return upload_f32_plus(g, out, t, 0.0f, dev_bytes, err);
}

/* Uploads a norm's weight vector as the multiplier the RMSNorm shader applies (1 + w for Gemma). */
static lt_status_t upload_norm(model_t *m, gpu_buf_t **out, const ft_tensor_t *t, lt_err_t *err) {
  float one = m->cfg.norm_plus_one && !m->cfg.norms_hold_one ? 1.0f : 0.0f;
  return upload_f32_plus(m->g, out, t, one, &m->mem.weight_device_bytes, err);
}

/* Rows per piece of a matrix whose rows take row_bytes (and, quantised, scale_bytes in a second buffer). */
static lt_status_t piece_rows(model_t *m, dmat_t *d, const ft_tensor_t *t, uint64_t row_bytes, uint64_t scale_bytes,
                              lt_err_t *err) {
  const gpu_caps_t *caps = gpu_caps(m->g);
  uint64_t widest = row_bytes > scale_bytes ? row_bytes : scale_bytes;
  uint64_t max_rows = caps->max_storage_range / widest;
  if (max_rows >= d->rows)
    d->rows_per_piece = d->rows;
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

/* Uploads rows [r0, r0 + nr) of a matrix (row_bytes each, from src) into a new buffer *out, rounded up to whole
 * 32-bit words (rows of GGUF blocks need not end on one; the rest of the last word is 0). */
static lt_status_t piece_upload(model_t *m, gpu_buf_t **out, const uint8_t *src, uint32_t r0, uint32_t nr,
                                uint64_t row_bytes, lt_err_t *err) {
  uint64_t bytes = (uint64_t)nr * row_bytes, whole = bytes / 4 * 4;
  if (!(*out = gpu_buf_new(m->g, (bytes + 3) / 4 * 4, err))) return err ? err->code : LT_E_DEVICE_OOM;
  m->mem.weight_device_bytes += (bytes + 3) / 4 * 4;
  const uint8_t *from = src + (uint64_t)r0 * row_bytes;
  lt_status_t st = whole ? gpu_upload(*out, 0, from, whole, err) : LT_OK;
  if (st == LT_OK && whole < bytes) {
    uint8_t tail[4] = {0};
    memcpy(tail, from + whole, bytes - whole);
    st = gpu_upload(*out, whole, tail, 4, err);
  }
  return st;
}

/* Places a matrix in one of GGUF's block formats on the device as it is in the file (the shaders read the blocks
 * in place). */
static lt_status_t dmat_load_blocks(model_t *m, dmat_t *d, const ft_tensor_t *t, lt_dtype_t q, lt_err_t *err) {
  d->rows = (uint32_t)t->shape[0];
  d->cols = (uint32_t)t->shape[1];
  d->dtype = q;
  uint64_t row_bytes = qblock_row_bytes(q, d->cols);
  lt_status_t st = piece_rows(m, d, t, row_bytes, 0, err);
  for (uint32_t p = 0; p < d->n_pieces && st == LT_OK; p++) {
    uint32_t r0 = p * d->rows_per_piece, nr = d->rows - r0 < d->rows_per_piece ? d->rows - r0 : d->rows_per_piece;
    st = piece_upload(m, &d->piece[p], t->data, r0, nr, row_bytes, err);
  }
  return st;
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
  lt_dtype_t q;
  if (ft_dtype_qblock(t->dtype, &q) && !m->force_f32) return dmat_load_blocks(m, d, t, q, err);
  d->rows = (uint32_t)t->shape[0];
  d->cols = (uint32_t)t->shape[1];
  /* f16 and bf16 stay 16-bit on devices with 16-bit storage unless f32 was asked for; the rest (and block formats
   * when f32 was asked for) is f32. */
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
  gpu_buf_t **all[] = {&a->x,    &a->xn,   &a->q,     &a->k,      &a->v,      &a->att,     &a->gate,   &a->up,
                       &a->ids,  &a->pos,  &a->sel,   &a->tgt,    &a->lse,    &a->nll,     &a->xs,     &a->logits,
                       &a->addv, &a->rlog, &a->rprob, &a->tk_idx, &a->tk_val, &a->xe,      &a->ge,     &a->ue,
                       &a->oe,   &a->eids, &a->ew,    &a->mask,   &a->sub,    &a->top_idx, &a->top_val};
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
    return lt_fail(err, LT_E_LIMIT,
                   "this device binds at most %llu bytes: too few for one row of activations or logits",
                   (unsigned long long)max_bind);
  a->logit_rows = lrows < LOGIT_ROWS ? (uint32_t)lrows : LOGIT_ROWS;
  uint64_t d = c->hidden_size, qd = (uint64_t)c->n_heads * c->head_dim, kvd = (uint64_t)c->n_kv_heads * c->head_dim;
  uint64_t ffn = c->intermediate_size, E = c->n_experts ? c->n_experts : 1,
           K = c->n_experts_used ? c->n_experts_used : 1;
  struct {
    gpu_buf_t **b;
    uint64_t bytes;
  } want[] = {
      {&a->x, cap * d * 4},
      {&a->xn, cap * d * 4},
      {&a->q, cap * qd * 4},
      {&a->k, cap * kvd * 4},
      {&a->v, cap * kvd * 4},
      {&a->att, cap * qd * 4},
      {&a->gate, cap * ffn * 4},
      {&a->up, cap * ffn * 4},
      {&a->ids, cap * 4},
      {&a->pos, cap * 4},
      {&a->sel, LOGIT_ROWS * 4},
      {&a->tgt, LOGIT_ROWS * 4},
      {&a->lse, LOGIT_ROWS * 4},
      {&a->nll, LOGIT_ROWS * 4},
      {&a->top_idx, LOGIT_ROWS * MODEL_TOP_MAX * 4},
      {&a->top_val, LOGIT_ROWS * MODEL_TOP_MAX * 4},
      {&a->xs, LOGIT_ROWS * d * 4},
      {&a->logits, (uint64_t)a->logit_rows * c->vocab_size * 4},
      {&a->addv, d * 4},
      {&a->sub, c->post_norms ? cap * d * 4 : 4},
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
    } moe[] = {{&a->rlog, cap * E * 4},
               {&a->rprob, cap * E * 4},
               {&a->tk_idx, cap * K * 4},
               {&a->tk_val, cap * K * 4},
               {&a->xe, cap * d * 4},
               {&a->ge, cap * ffn * 4},
               {&a->ue, cap * ffn * 4},
               {&a->oe, cap * d * 4},
               {&a->eids, list * 4},
               {&a->ew, list * 4},
               {&a->mask, (uint64_t)c->n_layers * a->mask_stride * 4}};
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
    case MR_BQ: st = params_add(m, t, NULL, L->bq, m->cfg.n_heads * m->cfg.head_dim, err); break;
    case MR_BK: st = params_add(m, t, NULL, L->bk, m->cfg.n_kv_heads * m->cfg.head_dim, err); break;
    case MR_BV: st = params_add(m, t, NULL, L->bv, m->cfg.n_kv_heads * m->cfg.head_dim, err); break;
    case MR_POST_ATTN_NORM: st = params_add(m, t, NULL, L->post_attn_norm, d, err); break;
    case MR_POST_FFN_NORM: st = params_add(m, t, NULL, L->post_ffn_norm, d, err); break;
    case MR_WQKV:
    case MR_FFN_GATE_UP: break; /* listed as their parts (q, k, v; gate, up) */
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
    model_file_destroy(&f);
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
  if (m->tied)
    m->lm_head = m->embed;
  else if ((st = dmat_load(m, &m->lm_head, &w->lm_head, err)) != LT_OK)
    goto out;
  if ((st = upload_norm(m, &m->out_norm, &w->out_norm, err)) != LT_OK) goto out;
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
    if ((st = upload_norm(m, &d->attn_norm, &src->attn_norm, err)) != LT_OK) break;
    if (!d->ffn_dropped && (st = upload_norm(m, &d->ffn_norm, &src->ffn_norm, err)) != LT_OK) break;
    if (c->post_norms && ((st = upload_norm(m, &d->post_attn_norm, &src->post_attn_norm, err)) != LT_OK ||
                          (st = upload_norm(m, &d->post_ffn_norm, &src->post_ffn_norm, err)) != LT_OK))
      break;
    if ((st = dmat_load(m, &d->wq, &src->wq, err)) != LT_OK) break;
    if ((st = dmat_load(m, &d->wk, &src->wk, err)) != LT_OK) break;
    if ((st = dmat_load(m, &d->wv, &src->wv, err)) != LT_OK) break;
    if ((st = dmat_load(m, &d->wo, &src->wo, err)) != LT_OK) break;
    if (c->qkv_bias && ((st = upload_f32(g, &d->bq, &src->bq, &m->mem.weight_device_bytes, err)) != LT_OK ||
                        (st = upload_f32(g, &d->bk, &src->bk, &m->mem.weight_device_bytes, err)) != LT_OK ||
                        (st = upload_f32(g, &d->bv, &src->bv, &m->mem.weight_device_bytes, err)) != LT_OK))
      break;
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
  model_file_destroy(&f);
  m->file = NULL;
  if (st != LT_OK) model_destroy(&m);
  return m;
}

void model_destroy(model_t **mp) {
  if (!mp || !*mp) return;
  model_t *m = *mp;
  if (m->tied) memset(&m->lm_head, 0, sizeof m->lm_head);
  dmat_free(&m->embed);
  dmat_free(&m->lm_head);
  gpu_buf_destroy(&m->zscratch);
  free(m->params);
  gpu_buf_destroy(&m->out_norm);
  for (uint32_t l = 0; m->layers && l < m->cfg.n_layers; l++) {
    dlayer_t *d = &m->layers[l];
    gpu_buf_destroy(&d->attn_norm);
    gpu_buf_destroy(&d->ffn_norm);
    gpu_buf_destroy(&d->post_attn_norm);
    gpu_buf_destroy(&d->post_ffn_norm);
    gpu_buf_destroy(&d->bq);
    gpu_buf_destroy(&d->bk);
    gpu_buf_destroy(&d->bv);
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
bool model_rope_neox(const model_t *m) { return m->rope_neox; }
