/* First-order training over a loaded LLaMA or Mixtral model: the training forward (keeping what the backward
 * reads), the explicit backward pass, and the trainable tensors (full, LoRA, CogSteer adapters). See train.h.
 *
 * Shapes (llm.c style): R = n_seq * T rows; d hidden, qd = heads * head_dim, kvd = kv_heads * head_dim, f the MLP
 * width, V the vocabulary. Per block l the forward keeps
 *   x   (R,d)   the stream entering the block        xn1 (R,d)  rmsnorm(x), input of q/k/v
 *   q   (R,qd)  after RoPE   k, v (R,kvd)            att (R,qd) attention output   lse (R,heads)
 *   h1  (R,d)   the stream after attention (before its adapter)   z1 (R,a) adapter down-projection
 *   s1  (R,d)   the adapter block only: the stream after the attention adapter
 *   xn2 (R,d)   rmsnorm(stream), input of gate/up    g, u (R,f) gate and up projections   act (R,f) silu(g) * u
 *   h2  (R,d)   the stream after the MLP (before its adapter)     z2 (R,a)
 * Mixture-of-experts blocks keep instead of g, u, act: the router's probabilities and, per routed (row, expert),
 * the expert's input, gate, up, product and output (rows listed per expert; the routing itself on the host).
 * With recompute only x is kept per block; the rest lives in one shared set that the backward refills block by
 * block from x. The backward carries dx = dLoss/d(stream) from the head down, block by block. */
#include "engine/model/train.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/safetensors.h"
#include "engine/text/jsonl.h"
#include "engine/ops/qblock.h"
#include "engine/ops/ops.h"
#include "engine/ops/ops_grad.h"

/* Rows of logits computed at once (bounds the logits buffer to LOGIT_CHUNK * V floats). */
#define LOGIT_CHUNK 64u

/* A linear layer's weight as the training pass sees it: the model's tensor, its gradient when trained in full,
 * and its LoRA pair when it has one. */
typedef struct wref {
  const model_param_t *p;
  int32_t grad; /* index of its train_tensor_t (full training), else -1 */
  int32_t lora; /* index of its LoRA A in the tensor list (B follows), else -1 */
} wref_t;

typedef struct tlayer {
  const model_param_t *attn_norm, *ffn_norm;
  int32_t attn_norm_grad, ffn_norm_grad;
  const model_param_t *bq, *bk, *bv; /* q, k, v biases (qkv_bias models), else NULL */
  int32_t bq_grad, bk_grad, bv_grad;
  const model_param_t *post_attn_norm, *post_ffn_norm; /* post_norms models (Gemma 2), else NULL */
  int32_t post_attn_norm_grad, post_ffn_norm_grad;
  wref_t wq, wk, wv, wo, gate, up, down;
  /* Mixture of experts: the router and each expert's w1 (gate), w3 (up), w2 (down). */
  uint32_t n_exp;
  wref_t router, *eg, *eu, *ed;
} tlayer_t;

/* The routing of one MoE block for the batch (host side): each row's top-k experts and renormalised gate weights,
 * and per expert its rows in ascending order, each expert's list starting at a multiple of 4 entries so its views
 * stay 16-byte aligned. */
typedef struct route {
  uint32_t *idx;   /* [R * K] the chosen experts, descending probability, lower index first on ties */
  float *wgt;      /* [R * K] their gate weights (probabilities renormalised over the k) */
  float *prob;     /* [R * E] the router's probabilities */
  uint32_t *count; /* [E] rows per expert */
  uint32_t *start; /* [E + 1] list offset of each expert */
  int32_t *rows;   /* [list] the row of each list entry */
  float *ew;       /* [list] its gate weight */
  uint32_t *slot;  /* [list] its (row * K + k) */
} route_t;

/* Saved activations of one block (see the header comment). */
typedef struct blk {
  gpu_buf_t *x, *xn1, *q, *k, *v, *att, *lse, *h1, *z1, *s1, *xn2, *g, *u, *act, *h2, *z2;
  gpu_buf_t *ao, *fo; /* post_norms: the attention's and the MLP's outputs before their norms */
  /* MoE: router probabilities (R, E), then in the backward the router logits' gradient; the expert lists (ids,
   * gate weights) and each listed row's expert input, gate, up, product and output. */
  gpu_buf_t *rprob, *eids, *ew, *xe, *ge, *ue, *ae, *oe;
} blk_t;

struct train {
  model_t *m;
  gpu_t *g;
  const model_config_t *cf;
  train_opts_t o;
  bool neox;
  float lora_scale;
  uint32_t adapter_dim;
  const model_param_t *embed, *head, *out_norm;
  int32_t embed_grad, head_grad, out_norm_grad;
  tlayer_t *L;
  int32_t adapter[4]; /* adapter tensors: attention down, attention up, MLP down, MLP up */
  train_tensor_t *tt;
  uint32_t n_tt;
  /* activations for cap rows */
  uint32_t cap, cap_T;
  blk_t *blk;                             /* per block; with recompute the non-x buffers alias shared */
  blk_t shared;                           /* recompute: the one set of non-x buffers */
  gpu_buf_t *xf;                          /* (R,d) final stream after the output norm */
  gpu_buf_t *xL;                          /* (R,d) final stream before the output norm */
  gpu_buf_t *ids, *pos, *tgt, *wts, *nll; /* (R) */
  gpu_buf_t *lse;                         /* (LOGIT_CHUNK) */
  gpu_buf_t *logits;                      /* (LOGIT_CHUNK, V) */
  gpu_buf_t *capped;                      /* final_softcap: the capped logits of the chunk, for the backward */
  gpu_buf_t *pn;                          /* post_norms: a normed sub-layer output on its way into the stream */
  gpu_buf_t *dx, *dxn, *datt, *dq, *dk, *dv, *dg, *du, *dact, *lu, *dlu, *dz; /* gradients of activations */
  gpu_buf_t *rope;
  uint32_t rope_rows;
  uint64_t act_bytes;
  train_stats_t stats;
  /* MoE */
  uint32_t E, K, list_cap; /* most experts of a block, experts per token, list entries per block */
  route_t *routes;         /* per block */
  gpu_buf_t *ones;         /* (list_cap) ones: the weights that scatter expert input gradients back */
  uint32_t T_real;         /* tokens per sequence before padding: rows past it are left out of router statistics */
  uint64_t act_grad_bytes; /* the part of act_bytes that holds gradients of activations */
  float scale;             /* the loss scale of the running pass (gradient accumulation) */
  /* distillation */
  train_distill_t dist;
  gpu_buf_t *dl;        /* (R, 2) per-row distillation terms: KD in [2r]; ATKD's TCKD, NCKD */
  gpu_buf_t *aw;        /* (R, 2) per-row weights of those terms */
  gpu_buf_t *pred;      /* (R) argmax predictions (train_predict) */
  float *tnll;          /* (cap) host copy of the teacher's per-row cross-entropy (ATKD's split) */
  const float *pair_w;  /* DPO: the running batch's pair weights (NULL: 1) */
  const double *ref_lp; /* DPO: the running batch's reference log-probabilities per sequence (NULL: computed) */
  /* train_compare: the frozen model compared with (NULL: none) and the caller's per-sequence outputs */
  train_t *cmp_ref;
  double *cmp_lp, *cmp_lr, *cmp_kl;
  /* train_set_inputs: embeddings from outside for runs of positions, and where their gradient goes */
  gpu_buf_t *in_emb, *in_demb;
  train_input_run_t *in_runs;
  uint32_t n_in_runs;
};

/* ---- set-up ---- */

static const model_param_t *find_param(const model_t *m, const char *name) {
  for (uint32_t i = 0; i < model_param_count(m); i++) {
    const model_param_t *p = model_param_at(m, i);
    if (!strcmp(p->name, name)) return p;
  }
  return NULL;
}

/* Appends a trainable tensor of rows x cols f32 with a zeroed gradient; value is the model's buffer (full) or a
 * new one (NULL: allocate). Returns its index, or -1 with err. */
static int32_t tensor_add(train_t *t, const char *name, uint32_t rows, uint32_t cols, bool decay, gpu_buf_t *value,
                          lt_err_t *err) {
  train_tensor_t *grown = realloc(t->tt, (t->n_tt + 1) * sizeof *grown);
  if (!grown) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return -1;
  }
  t->tt = grown;
  train_tensor_t *x = &t->tt[t->n_tt];
  memset(x, 0, sizeof *x);
  snprintf(x->name, sizeof x->name, "%s", name);
  x->rows = rows, x->cols = cols, x->decay = decay;
  uint64_t bytes = (uint64_t)rows * cols * 4;
  x->grad = gpu_buf_new(t->g, bytes, err);
  if (!x->grad) return -1;
  t->stats.gradient_bytes += bytes;
  if (value) {
    x->value = value;
  } else if (!(x->value = gpu_buf_new(t->g, bytes, err))) {
    gpu_buf_destroy(&x->grad);
    return -1;
  }
  x->owns_value = value == NULL;
  return (int32_t)t->n_tt++;
}

/* splitmix64: the stream the LoRA A and adapter initialisations draw from. */
static uint64_t mix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Fills tensor i with uniform values in [-bound, bound] from the seed stream (bound 0: zeros). */
static lt_status_t tensor_init(train_t *t, int32_t i, float bound, uint64_t *seed, lt_err_t *err) {
  train_tensor_t *x = &t->tt[i];
  uint64_t n = (uint64_t)x->rows * x->cols;
  float *v = malloc(n * sizeof *v);
  if (!v) return lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint64_t j = 0; j < n; j++)
    v[j] = bound == 0 ? 0.0f : (float)(((double)(mix64(seed) >> 11) * 0x1.0p-53 * 2.0 - 1.0) * bound);
  lt_status_t st = gpu_upload(x->value, 0, v, n * 4, err);
  free(v);
  return st;
}

/* The weight of a linear layer: one piece in f32 for full training, any dtype otherwise. */
static lt_status_t wref_get(train_t *t, wref_t *w, const char *name, lt_err_t *err) {
  w->grad = w->lora = -1;
  w->p = find_param(t->m, name);
  if (!w->p) return lt_fail(err, LT_E_INVALID, "the model has no tensor %s", name);
  if (w->p->n_rows != w->p->rows)
    return lt_fail(err, LT_E_UNSUPPORTED,
                   "%s is split into pieces on this device (%u rows of %u per binding); training needs each weight in "
                   "one binding",
                   name, w->p->n_rows, w->p->rows);
  if (t->o.what == TRAIN_FULL) {
    if (w->p->dtype != LT_F32)
      return lt_fail(err, LT_E_UNSUPPORTED,
                     "%s is %s on the device: full training needs f32 weights (load with force_f32)", name,
                     lt_dtype_str(w->p->dtype));
    w->grad = tensor_add(t, name, w->p->rows, w->p->cols, true, w->p->buf, err);
    if (w->grad < 0) return err ? err->code : LT_E_NOMEM;
  }
  return LT_OK;
}

static lt_status_t norm_get(train_t *t, const model_param_t **p, int32_t *grad, const char *name, lt_err_t *err) {
  *grad = -1;
  *p = find_param(t->m, name);
  if (!*p) return lt_fail(err, LT_E_INVALID, "the model has no tensor %s", name);
  if (t->o.what == TRAIN_FULL) {
    *grad = tensor_add(t, name, 1, (*p)->cols, false, (*p)->buf, err);
    if (*grad < 0) return err ? err->code : LT_E_NOMEM;
  }
  return LT_OK;
}

/* Adds the LoRA pair of w (A: r x in, uniform like PEFT's Kaiming init; B: out x r, zero) named as PEFT names
 * them: base_model.model.<module>.lora_A.weight. */
static lt_status_t lora_add(train_t *t, wref_t *w, const char *module, uint64_t *seed, lt_err_t *err) {
  char name[sizeof t->tt->name];
  uint32_t r = t->o.lora_rank, in = w->p->cols, out = w->p->rows;
  snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", module);
  int32_t a = tensor_add(t, name, r, in, true, NULL, err);
  if (a < 0) return err ? err->code : LT_E_NOMEM;
  snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", module);
  if (tensor_add(t, name, out, r, true, NULL, err) < 0) return err ? err->code : LT_E_NOMEM;
  w->lora = a;
  /* PEFT: kaiming_uniform_(a=sqrt(5)) on A gives bound 1 / sqrt(in). */
  lt_status_t st = tensor_init(t, a, 1.0f / sqrtf((float)in), seed, err);
  if (st == LT_OK) st = tensor_init(t, a + 1, 0.0f, seed, err);
  return st;
}

static void blk_free(blk_t *b) {
  gpu_buf_t **all[] = {&b->x,  &b->xn1, &b->q,  &b->k,  &b->v,   &b->att, &b->lse, &b->h1,    &b->z1,
                       &b->s1, &b->xn2, &b->g,  &b->u,  &b->act, &b->h2,  &b->z2,  &b->rprob, &b->eids,
                       &b->ew, &b->xe,  &b->ge, &b->ue, &b->ae,  &b->oe,  &b->ao,  &b->fo};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) gpu_buf_destroy(all[i]);
}

static void acts_free(train_t *t) {
  for (uint32_t l = 0; t->blk && l < t->cf->n_layers; l++) {
    if (t->o.recompute)
      gpu_buf_destroy(&t->blk[l].x);
    else
      blk_free(&t->blk[l]);
  }
  free(t->blk);
  t->blk = NULL;
  blk_free(&t->shared);
  for (uint32_t l = 0; t->routes && l < t->cf->n_layers; l++) {
    route_t *r = &t->routes[l];
    free(r->idx), free(r->wgt), free(r->prob), free(r->count), free(r->start), free(r->rows), free(r->ew),
        free(r->slot);
  }
  free(t->routes);
  t->routes = NULL;
  gpu_buf_destroy(&t->ones);
  gpu_buf_t **all[] = {&t->lse,    &t->xf,   &t->xL, &t->ids, &t->pos,  &t->tgt, &t->wts, &t->nll, &t->logits,
                       &t->capped, &t->pn,   &t->dx, &t->dxn, &t->datt, &t->dq,  &t->dk,  &t->dv,  &t->dg,
                       &t->du,     &t->dact, &t->lu, &t->dlu, &t->dz,   &t->dl,  &t->aw,  &t->pred};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) gpu_buf_destroy(all[i]);
  free(t->tnll);
  t->tnll = NULL;
  t->stats.gradient_bytes -= t->act_grad_bytes;
  t->act_grad_bytes = 0;
  t->cap = 0;
  t->act_bytes = 0;
}

/* Allocates one buffer of n floats (at least one), counting its bytes. */
static gpu_buf_t *abuf(train_t *t, uint64_t n, lt_err_t *err) {
  if (n == 0) n = 1;
  gpu_buf_t *b = gpu_buf_new(t->g, n * 4, err);
  if (b) t->act_bytes += n * 4;
  return b;
}

static lt_status_t blk_alloc(train_t *t, blk_t *b, uint32_t R, bool with_x, lt_err_t *err) {
  const model_config_t *c = t->cf;
  uint64_t d = c->hidden_size, qd = (uint64_t)c->n_heads * c->head_dim, kvd = (uint64_t)c->n_kv_heads * c->head_dim;
  uint64_t f = c->intermediate_size, a = t->adapter_dim;
  struct {
    gpu_buf_t **b;
    uint64_t n;
  } want[] = {{&b->xn1, R * d},
              {&b->q, R * qd},
              {&b->k, R * kvd},
              {&b->v, R * kvd},
              {&b->att, R * qd},
              {&b->lse, (uint64_t)R * c->n_heads},
              {&b->h1, R * d},
              {&b->z1, R * a},
              {&b->s1, a ? R * d : 0},
              {&b->xn2, R * d},
              {&b->g, R * f},
              {&b->u, R * f},
              {&b->act, R * f},
              {&b->h2, R * d},
              {&b->z2, R * a},
              {&b->ao, c->post_norms ? R * d : 0},
              {&b->fo, c->post_norms ? R * d : 0}};
  if (with_x && !(b->x = abuf(t, R * d, err))) return err ? err->code : LT_E_DEVICE_OOM;
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!(*want[i].b = abuf(t, want[i].n, err))) return err ? err->code : LT_E_DEVICE_OOM;
  if (!t->E) return LT_OK;
  uint64_t L = t->list_cap;
  struct {
    gpu_buf_t **b;
    uint64_t n;
  } moe[] = {{&b->rprob, (uint64_t)R * t->E},
             {&b->eids, L},
             {&b->ew, L},
             {&b->xe, L * d},
             {&b->ge, L * f},
             {&b->ue, L * f},
             {&b->ae, L * f},
             {&b->oe, L * d}};
  for (size_t i = 0; i < sizeof moe / sizeof moe[0]; i++)
    if (!(*moe[i].b = abuf(t, moe[i].n, err))) return err ? err->code : LT_E_DEVICE_OOM;
  return LT_OK;
}

/* Makes the activation buffers hold R rows of sequences of T tokens. */
static lt_status_t acts_ensure(train_t *t, uint32_t R, uint32_t T, lt_err_t *err) {
  if (t->cap >= R && t->rope_rows >= T) return LT_OK;
  const model_config_t *c = t->cf;
  acts_free(t);
  lt_status_t st = LT_OK;
  uint64_t d = c->hidden_size, qd = (uint64_t)c->n_heads * c->head_dim, kvd = (uint64_t)c->n_kv_heads * c->head_dim;
  uint64_t f = c->intermediate_size, r = t->o.lora_rank ? t->o.lora_rank : 1, a = t->adapter_dim;
  uint64_t widest_lora = d > f ? d : f;
  if (!(t->blk = calloc(c->n_layers, sizeof *t->blk))) return lt_fail(err, LT_E_NOMEM, "out of memory");
  if (t->E) {
    t->list_cap = R * t->K + 4 * t->E;
    if (!(t->routes = calloc(c->n_layers, sizeof *t->routes))) return lt_fail(err, LT_E_NOMEM, "out of memory");
    for (uint32_t l = 0; l < c->n_layers; l++) {
      route_t *ro = &t->routes[l];
      ro->idx = malloc((uint64_t)R * t->K * 4), ro->wgt = malloc((uint64_t)R * t->K * 4);
      ro->prob = malloc((uint64_t)R * t->E * 4), ro->count = malloc(t->E * 4), ro->start = malloc((t->E + 1) * 4);
      ro->rows = malloc((uint64_t)t->list_cap * 4), ro->ew = malloc((uint64_t)t->list_cap * 4);
      ro->slot = malloc((uint64_t)t->list_cap * 4);
      if (!ro->idx || !ro->wgt || !ro->prob || !ro->count || !ro->start || !ro->rows || !ro->ew || !ro->slot)
        return lt_fail(err, LT_E_NOMEM, "out of memory");
    }
    float *one = malloc((uint64_t)t->list_cap * 4);
    if (!one) return lt_fail(err, LT_E_NOMEM, "out of memory");
    for (uint32_t i = 0; i < t->list_cap; i++) one[i] = 1.0f;
    if (!(t->ones = abuf(t, t->list_cap, err)))
      st = err ? err->code : LT_E_DEVICE_OOM;
    else
      st = gpu_upload(t->ones, 0, one, (uint64_t)t->list_cap * 4, err);
    free(one);
  }
  if (st == LT_OK && c->qkv_bias && !t->ones && t->o.what == TRAIN_FULL) {
    /* Bias gradients are column sums of the projections' output gradients: dy^T . ones. */
    float *one = malloc((uint64_t)R * 4);
    if (!one) return lt_fail(err, LT_E_NOMEM, "out of memory");
    for (uint32_t i = 0; i < R; i++) one[i] = 1.0f;
    if (!(t->ones = abuf(t, R, err)))
      st = err ? err->code : LT_E_DEVICE_OOM;
    else
      st = gpu_upload(t->ones, 0, one, (uint64_t)R * 4, err);
    free(one);
  }
  if (t->o.recompute) {
    st = blk_alloc(t, &t->shared, R, false, err);
    for (uint32_t l = 0; l < c->n_layers && st == LT_OK; l++) {
      t->blk[l] = t->shared;
      t->blk[l].x = abuf(t, R * d, err);
      if (!t->blk[l].x) st = err ? err->code : LT_E_DEVICE_OOM;
    }
  } else {
    for (uint32_t l = 0; l < c->n_layers && st == LT_OK; l++) st = blk_alloc(t, &t->blk[l], R, true, err);
  }
  /* grad: a gradient of activations (or the LoRA / adapter intermediates only the backward reads), which a frozen
   * state never allocates. */
  struct {
    gpu_buf_t **b;
    uint64_t n;
    bool grad;
  } want[] = {{&t->xf, R * d, false},
              {&t->xL, R * d, false},
              {&t->ids, R, false},
              {&t->pos, R, false},
              {&t->tgt, R, false},
              {&t->wts, R, false},
              {&t->nll, R, false},
              {&t->dl, 2 * R, false},
              {&t->aw, 2 * R, false},
              {&t->pred, R, false},
              {&t->logits, (uint64_t)LOGIT_CHUNK * c->vocab_size, false},
              {&t->capped, c->final_softcap > 0 ? (uint64_t)LOGIT_CHUNK * c->vocab_size : 0, true},
              {&t->pn, c->post_norms ? R * d : 0, false},
              {&t->lse, LOGIT_CHUNK, false},
              {&t->dx, R * d, true},
              {&t->dxn, R * d, true},
              {&t->datt, R * qd, true},
              {&t->dq, R * qd, true},
              {&t->dk, R * kvd, true},
              {&t->dv, R * kvd, true},
              {&t->dg, R * f, true},
              {&t->du, R * f, true},
              {&t->dact, R * f, true},
              {&t->lu, R * r, true},
              {&t->dlu, R * r, true},
              {&t->dz, R * (a > widest_lora ? a : widest_lora), true}};
  bool frozen = t->o.what == TRAIN_FROZEN;
  for (size_t i = 0; i < sizeof want / sizeof want[0] && st == LT_OK; i++) {
    if (want[i].grad && frozen) continue;
    if (!(*want[i].b = abuf(t, want[i].n, err))) st = err ? err->code : LT_E_DEVICE_OOM;
    if (want[i].grad) t->act_grad_bytes += want[i].n * 4, t->stats.gradient_bytes += want[i].n * 4;
  }
  if (st == LT_OK && !(t->tnll = malloc((uint64_t)R * sizeof *t->tnll))) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK && t->rope_rows < T) {
    uint64_t n = (uint64_t)T * c->rope_dim;
    float *tab = malloc(n * sizeof *tab);
    if (!tab) st = lt_fail(err, LT_E_NOMEM, "out of memory building the RoPE table");
    if (st == LT_OK) {
      rope_table_build(tab, T, c->rope_dim, c->rope_theta, &c->rope_scaling);
      gpu_buf_destroy(&t->rope);
      if (!(t->rope = gpu_buf_new(t->g, n * 4, err)))
        st = err ? err->code : LT_E_DEVICE_OOM;
      else
        st = gpu_upload(t->rope, 0, tab, n * 4, err);
      free(tab);
      t->rope_rows = st == LT_OK ? T : 0;
    }
  }
  if (st != LT_OK) {
    acts_free(t);
    return st;
  }
  t->cap = R;
  t->stats.activation_bytes = t->act_bytes;
  return LT_OK;
}

train_t *train_new(model_t *m, const train_opts_t *o, lt_err_t *err) {
  const model_config_t *c = model_config(m);

  if (c->n_experts && o->what == TRAIN_LORA && (o->lora_targets & (TRAIN_LORA_GATE | TRAIN_LORA_UP | TRAIN_LORA_DOWN)))
    return lt_fail(err, LT_E_UNSUPPORTED,
                   "LoRA targets gate, up and down name a dense MLP; this mixture-of-experts model takes q,k,v,o"),
           NULL;
  for (uint32_t l = 0; l < c->n_layers; l++)
    if (c->ffn_dropped[l])
      return lt_fail(err, LT_E_UNSUPPORTED,
                     "block %u has no feed-forward sub-layer (a compressed model): training "
                     "such a model is not supported",
                     l),
             NULL;
  if (o->what == TRAIN_LORA && o->lora_rank == 0)
    return lt_fail(err, LT_E_INVALID, "LoRA rank must be at least 1"), NULL;
  if (o->what == TRAIN_LORA && (o->lora_targets == 0 || o->lora_targets >> 7))
    return lt_fail(err, LT_E_INVALID, "LoRA targets must be a non-empty subset of q,k,v,o,gate,up,down"), NULL;
  if (o->what == TRAIN_ADAPTER && o->adapter_layer >= c->n_layers)
    return lt_fail(err, LT_E_INVALID, "adapter block %u is out of range: the model has blocks 0..%u", o->adapter_layer,
                   c->n_layers - 1),
           NULL;
  train_t *t = calloc(1, sizeof *t);
  if (!t) return lt_fail(err, LT_E_NOMEM, "out of memory"), NULL;
  t->m = m, t->g = model_gpu(m), t->cf = c, t->o = *o;
  if (o->what == TRAIN_FROZEN) t->o.recompute = true; /* forward only: block inputs and one shared set */
  t->neox = model_rope_neox(m);
  t->embed_grad = t->head_grad = t->out_norm_grad = -1;
  for (int i = 0; i < 4; i++) t->adapter[i] = -1;
  t->lora_scale = o->what == TRAIN_LORA ? o->lora_alpha / (float)o->lora_rank : 0.0f;
  t->adapter_dim = o->what == TRAIN_ADAPTER
                       ? (o->adapter_dim ? o->adapter_dim : (c->hidden_size / 16 ? c->hidden_size / 16 : 1))
                       : 0;
  uint64_t seed = o->seed ^ 0x4c61746865ull;
  lt_status_t st = LT_OK;
  wref_t emb;
  if ((st = wref_get(t, &emb, "model.embed_tokens.weight", err)) != LT_OK) goto fail;
  t->embed = emb.p, t->embed_grad = emb.grad;
  if (c->tie_word_embeddings) {
    t->head = t->embed, t->head_grad = t->embed_grad;
  } else {
    wref_t h;
    if ((st = wref_get(t, &h, "lm_head.weight", err)) != LT_OK) goto fail;
    t->head = h.p, t->head_grad = h.grad;
  }
  if ((st = norm_get(t, &t->out_norm, &t->out_norm_grad, "model.norm.weight", err)) != LT_OK) goto fail;
  if (!(t->L = calloc(c->n_layers, sizeof *t->L))) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto fail;
  }
  for (uint32_t l = 0; l < c->n_layers && st == LT_OK; l++) {
    tlayer_t *L = &t->L[l];
    char name[128];
#define W(field, fmt)                                                                                                  \
  snprintf(name, sizeof name, "model.layers.%u." fmt ".weight", l);                                                    \
  if ((st = wref_get(t, &L->field, name, err)) != LT_OK) break;
    snprintf(name, sizeof name, "model.layers.%u.input_layernorm.weight", l);
    if ((st = norm_get(t, &L->attn_norm, &L->attn_norm_grad, name, err)) != LT_OK) break;
    W(wq, "self_attn.q_proj") W(wk, "self_attn.k_proj") W(wv, "self_attn.v_proj") W(wo, "self_attn.o_proj");
    L->bq_grad = L->bk_grad = L->bv_grad = -1;
    if (c->qkv_bias) {
      const model_param_t **bs[3] = {&L->bq, &L->bk, &L->bv};
      int32_t *gs[3] = {&L->bq_grad, &L->bk_grad, &L->bv_grad};
      for (int k = 0; k < 3 && st == LT_OK; k++) {
        snprintf(name, sizeof name, "model.layers.%u.self_attn.%c_proj.bias", l, "qkv"[k]);
        st = norm_get(t, bs[k], gs[k], name, err); /* trained in full training, never decayed */
      }
      if (st != LT_OK) break;
    }
    /* Gemma 2 names its norm before the MLP pre_feedforward_layernorm, and LLaMA's name is its norm after the
     * attention. */
    snprintf(name, sizeof name, "model.layers.%u.%s.weight", l,
             c->post_norms ? "pre_feedforward_layernorm" : "post_attention_layernorm");
    if ((st = norm_get(t, &L->ffn_norm, &L->ffn_norm_grad, name, err)) != LT_OK) break;
    L->post_attn_norm_grad = L->post_ffn_norm_grad = -1;
    if (c->post_norms) {
      snprintf(name, sizeof name, "model.layers.%u.post_attention_layernorm.weight", l);
      if ((st = norm_get(t, &L->post_attn_norm, &L->post_attn_norm_grad, name, err)) != LT_OK) break;
      snprintf(name, sizeof name, "model.layers.%u.post_feedforward_layernorm.weight", l);
      if ((st = norm_get(t, &L->post_ffn_norm, &L->post_ffn_norm_grad, name, err)) != LT_OK) break;
    }
    if (c->n_experts) {
      L->n_exp = model_config_experts(c, l);
      W(router, "block_sparse_moe.gate");
      L->eg = calloc(L->n_exp, sizeof *L->eg), L->eu = calloc(L->n_exp, sizeof *L->eu);
      L->ed = calloc(L->n_exp, sizeof *L->ed);
      if (!L->eg || !L->eu || !L->ed) st = lt_fail(err, LT_E_NOMEM, "out of memory");
      for (uint32_t e = 0; e < L->n_exp && st == LT_OK; e++) {
        wref_t *ws[3] = {&L->eg[e], &L->ed[e], &L->eu[e]};
        for (int k = 0; k < 3 && st == LT_OK; k++) {
          snprintf(name, sizeof name, "model.layers.%u.block_sparse_moe.experts.%u.w%d.weight", l, e, k + 1);
          st = wref_get(t, ws[k], name, err);
        }
      }
      if (st != LT_OK) break;
      if (L->n_exp > t->E) t->E = L->n_exp;
      t->K = c->n_experts_used;
    } else {
      W(gate, "mlp.gate_proj") W(up, "mlp.up_proj") W(down, "mlp.down_proj");
    }
#undef W
    if (o->what == TRAIN_LORA) {
      wref_t *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
      const char *mods[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
      for (int i = 0; i < 7 && st == LT_OK; i++) {
        if (!(o->lora_targets & (1u << i))) continue;
        char module[96];
        snprintf(module, sizeof module, "model.layers.%u.%s", l, mods[i]);
        st = lora_add(t, ws[i], module, &seed, err);
      }
    }
  }
  if (st != LT_OK) goto fail;
  if (o->what == TRAIN_ADAPTER) {
    /* Down-projections start like a Linear layer (uniform 1/sqrt(in)); up-projections at zero, so the adapted
     * model starts equal to the base. */
    uint32_t d = c->hidden_size, a = t->adapter_dim, M = o->adapter_layer;
    const char *names[4] = {"attn.down", "attn.up", "mlp.down", "mlp.up"};
    for (int i = 0; i < 4 && st == LT_OK; i++) {
      char name[128];
      snprintf(name, sizeof name, "adapter.layers.%u.%s.weight", M, names[i]);
      bool down = i % 2 == 0;
      t->adapter[i] = tensor_add(t, name, down ? a : d, down ? d : a, true, NULL, err);
      if (t->adapter[i] < 0)
        st = err ? err->code : LT_E_NOMEM;
      else
        st = tensor_init(t, t->adapter[i], down ? 1.0f / sqrtf((float)d) : 0.0f, &seed, err);
    }
  }
  if (st == LT_OK) st = train_zero_grad(t, err);
  if (st == LT_OK) return t;
fail:
  train_destroy(&t);
  return NULL;
}

void train_destroy(train_t **tp) {
  if (!tp || !*tp) return;
  train_t *t = *tp;
  acts_free(t);
  free(t->in_runs);
  gpu_buf_destroy(&t->rope);
  for (uint32_t i = 0; i < t->n_tt; i++) {
    gpu_buf_destroy(&t->tt[i].grad);
    if (t->tt[i].owns_value) gpu_buf_destroy(&t->tt[i].value);
  }
  free(t->tt);
  for (uint32_t l = 0; t->L && l < t->cf->n_layers; l++) free(t->L[l].eg), free(t->L[l].eu), free(t->L[l].ed);
  free(t->L);
  free(t);
  *tp = NULL;
}

uint32_t train_tensor_count(const train_t *t) { return t->n_tt; }
const train_tensor_t *train_tensor_at(const train_t *t, uint32_t i) { return &t->tt[i]; }
const train_stats_t *train_stats(const train_t *t) { return &t->stats; }
model_t *train_model(const train_t *t) { return t->m; }

lt_status_t train_zero_grad(train_t *t, lt_err_t *err) {
  lt_status_t st = LT_OK;
  for (uint32_t i = 0; i < t->n_tt && st == LT_OK; i++)
    st = gpu_buf_zero(t->tt[i].grad, 0, (uint64_t)t->tt[i].rows * t->tt[i].cols * 4, err);
  return st;
}

/* ---- linear layers ---- */

/* y (+)= x . W^T for the model's weight in its own dtype. */
static lt_status_t wmul(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, const model_param_t *p, uint32_t R, bool acc,
                        lt_err_t *err) {
  if (p->scales || qblock_is(p->dtype)) {
    qmat_view_t q = {gv(p->buf), p->scales ? gv(p->scales) : (gpu_view_t){0}, p->dtype, p->stype, p->group};
    return op_matmul_q(c, y, p->rows, x, p->cols, &q, R, p->rows, p->cols, acc, MATMUL_AUTO, err);
  }
  return op_matmul(c, y, x, gv(p->buf), p->dtype, R, p->rows, p->cols, acc, err);
}

/* dx (+)= dy . W for the model's weight in its own dtype. */
static lt_status_t wmul_dx(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, const model_param_t *p, uint32_t R, bool acc,
                           lt_err_t *err) {
  if (p->scales || qblock_is(p->dtype)) {
    qmat_view_t q = {gv(p->buf), p->scales ? gv(p->scales) : (gpu_view_t){0}, p->dtype, p->stype, p->group};
    return op_matmul_dx_q(c, dx, dy, &q, R, p->rows, p->cols, acc, err);
  }
  return op_matmul_dx(c, dx, dy, gv(p->buf), p->dtype, R, p->rows, p->cols, acc, err);
}

/* y (+)= x . W^T + lora_scale * (x . A^T) . B^T; keeps nothing (the backward recomputes x . A^T). */
static lt_status_t lin_fwd(train_t *t, gpu_cmd_t *c, gpu_buf_t *y, gpu_buf_t *x, const wref_t *w, uint32_t R, bool acc,
                           lt_err_t *err) {
  lt_status_t st = wmul(c, gv(y), gv(x), w->p, R, acc, err);
  if (st != LT_OK || w->lora < 0) return st;
  const train_tensor_t *A = &t->tt[w->lora], *B = &t->tt[w->lora + 1];
  uint32_t r = A->rows;
  if ((st = op_matmul(c, gv(t->lu), gv(x), gv(A->value), LT_F32, R, r, A->cols, false, err)) != LT_OK) return st;
  if ((st = op_scale(c, gv(t->lu), gv(t->lu), t->lora_scale, R * r, err)) != LT_OK) return st;
  return op_matmul(c, gv(y), gv(t->lu), gv(B->value), LT_F32, R, B->rows, r, true, err);
}

/* The backward of lin_fwd: dx (+)= dy . W (+ the LoRA path), and the gradients of W (full) or of A and B. */
static lt_status_t lin_bwd(train_t *t, gpu_cmd_t *c, gpu_buf_t *dx, gpu_buf_t *dy, gpu_buf_t *x, const wref_t *w,
                           uint32_t R, bool acc, lt_err_t *err) {
  lt_status_t st = LT_OK;
  if (dx && (st = wmul_dx(c, gv(dx), gv(dy), w->p, R, acc, err)) != LT_OK) return st;
  if (w->grad >= 0 &&
      (st = op_matmul_dw(c, gv(t->tt[w->grad].grad), gv(dy), gv(x), R, w->p->rows, w->p->cols, true, err)) != LT_OK)
    return st;
  if (w->lora < 0) return st;
  const train_tensor_t *A = &t->tt[w->lora], *B = &t->tt[w->lora + 1];
  uint32_t r = A->rows, in = A->cols, out = B->rows;
  /* lu = s (x A^T); dB += dy^T lu; dlu = s (dy B); dA += dlu^T x; dx += dlu A. */
  if ((st = op_matmul(c, gv(t->lu), gv(x), gv(A->value), LT_F32, R, r, in, false, err)) != LT_OK) return st;
  if ((st = op_scale(c, gv(t->lu), gv(t->lu), t->lora_scale, R * r, err)) != LT_OK) return st;
  if ((st = op_matmul_dw(c, gv(B->grad), gv(dy), gv(t->lu), R, out, r, true, err)) != LT_OK) return st;
  if ((st = op_matmul_dx(c, gv(t->dlu), gv(dy), gv(B->value), LT_F32, R, out, r, false, err)) != LT_OK) return st;
  if ((st = op_scale(c, gv(t->dlu), gv(t->dlu), t->lora_scale, R * r, err)) != LT_OK) return st;
  if ((st = op_matmul_dw(c, gv(A->grad), gv(t->dlu), gv(x), R, r, in, true, err)) != LT_OK) return st;
  if (dx) st = op_matmul_dx(c, gv(dx), gv(t->dlu), gv(A->value), LT_F32, R, r, in, true, err);
  return st;
}

/* ---- adapters: h' = h + relu(h . D^T) . U^T ---- */

static lt_status_t adapter_fwd(train_t *t, gpu_cmd_t *c, gpu_buf_t *out, gpu_buf_t *h, gpu_buf_t *z, int site,
                               uint32_t R, lt_err_t *err) {
  const train_tensor_t *D = &t->tt[t->adapter[2 * site]], *U = &t->tt[t->adapter[2 * site + 1]];
  uint32_t d = t->cf->hidden_size, a = t->adapter_dim;
  lt_status_t st = op_matmul(c, gv(z), gv(h), gv(D->value), LT_F32, R, a, d, false, err);
  if (st == LT_OK && out != h) st = gpu_cmd_copy(c, h, 0, out, 0, (uint64_t)R * d * 4, err);
  if (st == LT_OK) st = op_relu(c, gv(t->dz), gv(z), R * a, err);
  if (st == LT_OK) st = op_matmul(c, gv(out), gv(t->dz), gv(U->value), LT_F32, R, d, a, true, err);
  return st;
}

/* dx holds dLoss/dh'; adds the adapter's gradients and leaves dLoss/dh in dx. */
static lt_status_t adapter_bwd(train_t *t, gpu_cmd_t *c, gpu_buf_t *h, gpu_buf_t *z, int site, uint32_t R,
                               lt_err_t *err) {
  const train_tensor_t *D = &t->tt[t->adapter[2 * site]], *U = &t->tt[t->adapter[2 * site + 1]];
  uint32_t d = t->cf->hidden_size, a = t->adapter_dim;
  lt_status_t st = op_relu(c, gv(t->dz), gv(z), R * a, err); /* r = relu(z) */
  if (st == LT_OK) st = op_matmul_dw(c, gv(U->grad), gv(t->dx), gv(t->dz), R, d, a, true, err);
  if (st == LT_OK) st = op_matmul_dx(c, gv(t->dz), gv(t->dx), gv(U->value), LT_F32, R, d, a, false, err);
  if (st == LT_OK) st = op_relu_backward(c, gv(t->dz), gv(t->dz), gv(z), R * a, err);
  if (st == LT_OK) st = op_matmul_dw(c, gv(D->grad), gv(t->dz), gv(h), R, a, d, true, err);
  if (st == LT_OK) st = op_matmul_dx(c, gv(t->dx), gv(t->dz), gv(D->value), LT_F32, R, a, d, true, err);
  return st;
}

/* ---- mixture of experts ---- */

/* A batch as the passes see it: n_seq sequences of T tokens, R rows. */
typedef struct batch {
  uint32_t n_seq, T, R;
} batch_t;

/* Ends the recording (submit and wait) and starts a new one, so the host can read results mid-pass. */
static lt_status_t flush(train_t *t, gpu_cmd_t **c, lt_err_t *err) {
  lt_status_t st = gpu_cmd_finish(c, err);
  if (st != LT_OK) return st;
  *c = gpu_cmd_begin(t->g, err);
  return *c ? LT_OK : (err ? err->code : LT_E_VULKAN);
}

/* Routes every row from its probabilities (host): the k largest in descending order, lower index first on ties
 * (as op_topk), weights renormalised over the k, and the per-expert row lists. */
static void route_build(route_t *ro, uint32_t R, uint32_t E, uint32_t K) {
  memset(ro->count, 0, E * 4);
  for (uint32_t r = 0; r < R; r++) {
    const float *p = ro->prob + (uint64_t)r * E;
    double sum = 0;
    for (uint32_t k = 0; k < K; k++) {
      uint32_t best = E;
      for (uint32_t e = 0; e < E; e++) {
        bool taken = false;
        for (uint32_t j = 0; j < k && !taken; j++) taken = ro->idx[r * K + j] == e;
        if (!taken && (best == E || p[e] > p[best])) best = e;
      }
      ro->idx[r * K + k] = best;
      sum += p[best];
      ro->count[best]++;
    }
    for (uint32_t k = 0; k < K; k++) ro->wgt[r * K + k] = sum > 0 ? (float)(p[ro->idx[r * K + k]] / sum) : 0.0f;
  }
  ro->start[0] = 0;
  for (uint32_t e = 0; e < E; e++) ro->start[e + 1] = ro->start[e] + (ro->count[e] + 3) / 4 * 4;
  uint32_t *fill = calloc(E, 4);
  for (uint32_t r = 0; fill && r < R; r++)
    for (uint32_t k = 0; k < K; k++) {
      uint32_t e = ro->idx[r * K + k], at = ro->start[e] + fill[e]++;
      ro->rows[at] = (int32_t)r, ro->ew[at] = ro->wgt[r * K + k], ro->slot[at] = r * K + k;
    }
  free(fill);
}

/* The MoE feed-forward of block l: h2 = s1 + sum over each row's experts of weight * expert(xn2[row]). The routing
 * is read back to the host (one wait), then each expert gathers its rows, runs its SwiGLU MLP and scatter-adds. */
static lt_status_t moe_fwd(train_t *t, gpu_cmd_t **c, uint32_t l, const batch_t *bt, gpu_buf_t *s1, lt_err_t *err) {
  const tlayer_t *L = &t->L[l];
  blk_t *b = &t->blk[l];
  route_t *ro = &t->routes[l];
  uint32_t R = bt->R, E = L->n_exp, K = t->K, d = t->cf->hidden_size, f = t->cf->intermediate_size;
  lt_status_t st = wmul(*c, gv(b->rprob), gv(b->xn2), L->router.p, R, false, err);
  if (st == LT_OK) st = op_softmax(*c, gv(b->rprob), gv(b->rprob), R, E, err);
  if (st == LT_OK) st = flush(t, c, err);
  if (st == LT_OK) st = gpu_download(b->rprob, 0, ro->prob, (uint64_t)R * E * 4, err);
  if (st != LT_OK) return st;
  route_build(ro, R, E, K);
  uint32_t n = ro->start[E];
  if ((st = gpu_upload(b->eids, 0, ro->rows, (uint64_t)n * 4 + 4, err)) != LT_OK) return st;
  if ((st = gpu_upload(b->ew, 0, ro->ew, (uint64_t)n * 4 + 4, err)) != LT_OK) return st;
  if ((st = gpu_cmd_copy(*c, s1, 0, b->h2, 0, (uint64_t)R * d * 4, err)) != LT_OK) return st;
  for (uint32_t e = 0; e < E && st == LT_OK; e++) {
    uint32_t ne = ro->count[e];
    uint64_t o = ro->start[e];
    if (!ne) continue;
    gpu_view_t ids = {b->eids, o * 4}, w = {b->ew, o * 4}, xe = {b->xe, o * d * 4}, ge = {b->ge, o * f * 4},
               ue = {b->ue, o * f * 4}, ae = {b->ae, o * f * 4}, oe = {b->oe, o * d * 4};
    st = op_embed(*c, xe, gv(b->xn2), LT_F32, ids, ne, d, 0, R, err);
    if (st == LT_OK) st = wmul(*c, ge, xe, L->eg[e].p, ne, false, err);
    if (st == LT_OK) st = wmul(*c, ue, xe, L->eu[e].p, ne, false, err);
    if (st == LT_OK) st = op_swiglu(*c, ae, ge, ue, ne * f, err);
    if (st == LT_OK) st = wmul(*c, oe, ae, L->ed[e].p, ne, false, err);
    if (st == LT_OK) st = op_scatter_add(*c, gv(b->h2), oe, ids, w, ne, d, R, err);
  }
  return st;
}

/* The backward of moe_fwd: t->dx holds dLoss/dh2 (also dLoss/ds1 through the residual); writes dLoss/dxn2 into
 * t->dxn and adds the router's and experts' weight gradients. The gate weights' and router's gradients are
 * formed on the host (one wait): d weight = dh2[row] . expert output; through the renormalisation and the
 * softmax to the router logits; plus the load-balancing term when t->o.balance is set. */
static lt_status_t moe_bwd(train_t *t, gpu_cmd_t **c, uint32_t l, const batch_t *bt, lt_err_t *err) {
  const tlayer_t *L = &t->L[l];
  blk_t *b = &t->blk[l];
  route_t *ro = &t->routes[l];
  uint32_t R = bt->R, E = L->n_exp, K = t->K, d = t->cf->hidden_size, f = t->cf->intermediate_size;
  uint32_t n = ro->start[E];
  float *dh = malloc((uint64_t)R * d * 4), *oe = malloc((uint64_t)n * d * 4 + 4);
  double *dw = calloc((uint64_t)R * K, sizeof *dw);
  float *dl = malloc((uint64_t)R * E * 4);
  lt_status_t st = dh && oe && dw && dl ? flush(t, c, err) : lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK) st = gpu_download(t->dx, 0, dh, (uint64_t)R * d * 4, err);
  if (st == LT_OK && n) st = gpu_download(b->oe, 0, oe, (uint64_t)n * d * 4, err);
  if (st == LT_OK) {
    /* d weight of each listed (row, slot), and d expert output = weight * dh[row] (written over oe). */
    for (uint32_t e = 0; e < E; e++)
      for (uint32_t j = ro->start[e]; j < ro->start[e] + ro->count[e]; j++) {
        const float *g = dh + (uint64_t)ro->rows[j] * d;
        float *y = oe + (uint64_t)j * d;
        double s = 0;
        for (uint32_t i = 0; i < d; i++) s += (double)g[i] * y[i], y[i] = ro->ew[j] * g[i];
        dw[ro->slot[j]] = s;
      }
    /* Rows past the real tokens of each sequence are padding: left out of the balancing statistics. */
    uint32_t real = 0;
    for (uint32_t r = 0; r < R; r++) real += r % bt->T < t->T_real;
    double *frac = calloc(E, sizeof *frac);
    if (frac && t->o.balance > 0)
      for (uint32_t r = 0; r < R; r++)
        for (uint32_t k = 0; r % bt->T < t->T_real && k < K; k++) frac[ro->idx[r * K + k]] += 1.0 / ((double)real * K);
    uint32_t moe_blocks = 0;
    for (uint32_t j = 0; j < t->cf->n_layers; j++) moe_blocks += t->L[j].n_exp > 0;
    double coef = t->o.balance * t->scale / (moe_blocks ? moe_blocks : 1) * E / (real ? real : 1);
    for (uint32_t r = 0; r < R; r++) {
      const float *p = ro->prob + (uint64_t)r * E;
      double S = 0, dot = 0, *dp = calloc(E, sizeof *dp);
      if (!dp) break;
      for (uint32_t k = 0; k < K; k++) S += p[ro->idx[r * K + k]], dot += dw[r * K + k] * ro->wgt[r * K + k];
      /* w_k = p_k / S: dp_k = (dw_k - sum_j dw_j w_j) / S for the chosen k; 0 for the others. */
      for (uint32_t k = 0; S > 0 && k < K; k++) dp[ro->idx[r * K + k]] += (dw[r * K + k] - dot) / S;
      if (frac && t->o.balance > 0 && r % bt->T < t->T_real)
        for (uint32_t e = 0; e < E; e++) dp[e] += coef * frac[e];
      double pd = 0;
      for (uint32_t e = 0; e < E; e++) pd += p[e] * dp[e];
      for (uint32_t e = 0; e < E; e++) dl[(uint64_t)r * E + e] = (float)(p[e] * (dp[e] - pd));
      free(dp);
    }
    free(frac);
    if (n) st = gpu_upload(b->oe, 0, oe, (uint64_t)n * d * 4, err);
    if (st == LT_OK) st = gpu_upload(b->rprob, 0, dl, (uint64_t)R * E * 4, err);
  }
  free(dh), free(oe), free(dw), free(dl);
  /* dxn = dlogits . Wr (and Wr's gradient); then each expert's input gradient scattered back onto its rows. */
  if (st == LT_OK) st = lin_bwd(t, *c, t->dxn, b->rprob, b->xn2, &L->router, R, false, err);
  for (uint32_t e = 0; e < E && st == LT_OK; e++) {
    uint32_t ne = ro->count[e];
    uint64_t o = ro->start[e];
    if (!ne) continue;
    gpu_view_t ids = {b->eids, o * 4}, ones = {t->ones, o * 4}, xe = {b->xe, o * d * 4}, ge = {b->ge, o * f * 4},
               ue = {b->ue, o * f * 4}, ae = {b->ae, o * f * 4}, doe = {b->oe, o * d * 4};
    const wref_t *W1 = &L->eg[e], *W3 = &L->eu[e], *W2 = &L->ed[e];
    st = wmul_dx(*c, gv(t->dact), doe, W2->p, ne, false, err);
    if (st == LT_OK && W2->grad >= 0) st = op_matmul_dw(*c, gv(t->tt[W2->grad].grad), doe, ae, ne, d, f, true, err);
    if (st == LT_OK) st = op_swiglu_backward(*c, gv(t->dg), gv(t->du), gv(t->dact), ge, ue, ne * f, err);
    if (st == LT_OK) st = wmul_dx(*c, gv(t->dz), gv(t->dg), W1->p, ne, false, err);
    if (st == LT_OK) st = wmul_dx(*c, gv(t->dz), gv(t->du), W3->p, ne, true, err);
    if (st == LT_OK && W1->grad >= 0)
      st = op_matmul_dw(*c, gv(t->tt[W1->grad].grad), gv(t->dg), xe, ne, f, d, true, err);
    if (st == LT_OK && W3->grad >= 0)
      st = op_matmul_dw(*c, gv(t->tt[W3->grad].grad), gv(t->du), xe, ne, f, d, true, err);
    if (st == LT_OK) st = op_scatter_add(*c, gv(t->dxn), gv(t->dz), ids, ones, ne, d, R, err);
  }
  return st;
}

/* ---- one block ---- */

/* A sub-layer's output joins the residual stream: stream += x . W^T, or with a post-norm (Gemma 2)
 * stream += norm(x . W^T), the norm's input kept in pre for the backward. */
static lt_status_t join_fwd(train_t *t, gpu_cmd_t *c, gpu_buf_t *stream, gpu_buf_t *x, const wref_t *w,
                            const model_param_t *post_norm, gpu_buf_t *pre, uint32_t R, lt_err_t *err) {
  if (!post_norm) return lin_fwd(t, c, stream, x, w, R, true, err);
  uint32_t d = t->cf->hidden_size;
  lt_status_t st = lin_fwd(t, c, pre, x, w, R, false, err);
  if (st == LT_OK) st = op_rmsnorm(c, gv(t->pn), gv(pre), gv(post_norm->buf), R, d, t->cf->rms_norm_eps, err);
  if (st == LT_OK) st = op_add(c, gv(stream), gv(stream), gv(t->pn), R * d, R * d, err);
  return st;
}

/* The gradient reaching a sub-layer's output projection from dLoss/d(stream) in t->dx: t->dx itself, or with a
 * post-norm its backward into t->dxn (the norm weight's gradient added at grad >= 0). */
static gpu_buf_t *join_bwd(train_t *t, gpu_cmd_t *c, const model_param_t *post_norm, int32_t grad, gpu_buf_t *pre,
                           uint32_t R, lt_status_t *st, lt_err_t *err) {
  if (!post_norm) return t->dx;
  if (*st == LT_OK)
    *st = op_rmsnorm_backward_set(c, gv(t->dxn), grad >= 0 ? gv(t->tt[grad].grad) : gv(NULL), gv(t->dx), gv(pre),
                                  gv(post_norm->buf), R, t->cf->hidden_size, t->cf->rms_norm_eps, err);
  return t->dxn;
}

/* Runs block l forward from b->x, filling the block's saved activations; the block's output goes to out. */
static lt_status_t block_fwd(train_t *t, gpu_cmd_t **cp, uint32_t l, const batch_t *bt, gpu_buf_t *out, lt_err_t *err) {
  gpu_cmd_t *c = *cp;
  const model_config_t *cf = t->cf;
  const tlayer_t *L = &t->L[l];
  blk_t *b = &t->blk[l];
  uint32_t R = bt->R, d = cf->hidden_size, qd = cf->n_heads * cf->head_dim, kvd = cf->n_kv_heads * cf->head_dim;
  uint32_t f = cf->intermediate_size;
  bool adapt = t->o.what == TRAIN_ADAPTER && l == t->o.adapter_layer;
  lt_status_t st = op_rmsnorm(c, gv(b->xn1), gv(b->x), gv(L->attn_norm->buf), R, d, cf->rms_norm_eps, err);
  if (st == LT_OK) st = lin_fwd(t, c, b->q, b->xn1, &L->wq, R, false, err);
  if (st == LT_OK) st = lin_fwd(t, c, b->k, b->xn1, &L->wk, R, false, err);
  if (st == LT_OK) st = lin_fwd(t, c, b->v, b->xn1, &L->wv, R, false, err);
  if (st == LT_OK && L->bq) {
    if ((st = op_add(c, gv(b->q), gv(b->q), gv(L->bq->buf), R * qd, qd, err)) == LT_OK &&
        (st = op_add(c, gv(b->k), gv(b->k), gv(L->bk->buf), R * kvd, kvd, err)) == LT_OK)
      st = op_add(c, gv(b->v), gv(b->v), gv(L->bv->buf), R * kvd, kvd, err);
  }
  if (st == LT_OK)
    st = op_rope(c, gv(b->q), gv(t->pos), gv(t->rope), R, cf->n_heads, cf->head_dim, cf->rope_dim, t->neox,
                 t->rope_rows, err);
  if (st == LT_OK)
    st = op_rope(c, gv(b->k), gv(t->pos), gv(t->rope), R, cf->n_kv_heads, cf->head_dim, cf->rope_dim, t->neox,
                 t->rope_rows, err);
  for (uint32_t s = 0; s < bt->n_seq && st == LT_OK; s++) {
    uint64_t r0 = (uint64_t)s * bt->T;
    gpu_view_t o = {b->att, r0 * qd * 4}, q = {b->q, r0 * qd * 4}, k = {b->k, r0 * kvd * 4}, v = {b->v, r0 * kvd * 4};
    gpu_view_t lse = {b->lse, r0 * cf->n_heads * 4};
    st = op_attention_lse(c, o, lse, q, k, v, bt->T, cf->n_heads, cf->n_kv_heads, cf->head_dim,
                          model_config_window(cf, l), model_config_attn_scale(cf), cf->attn_softcap, err);
  }
  /* h1 = x + att . Wo^T (through the post-norm, if any) */
  if (st == LT_OK) st = gpu_cmd_copy(c, b->x, 0, b->h1, 0, (uint64_t)R * d * 4, err);
  if (st == LT_OK) st = join_fwd(t, c, b->h1, b->att, &L->wo, L->post_attn_norm, b->ao, R, err);
  gpu_buf_t *s1 = adapt ? b->s1 : b->h1;
  if (st == LT_OK && adapt) st = adapter_fwd(t, c, s1, b->h1, b->z1, 0, R, err);
  if (st == LT_OK) st = op_rmsnorm(c, gv(b->xn2), gv(s1), gv(L->ffn_norm->buf), R, d, cf->rms_norm_eps, err);
  if (L->n_exp) {
    if (st == LT_OK) st = moe_fwd(t, cp, l, bt, s1, err);
    c = *cp;
  } else {
    if (st == LT_OK) st = lin_fwd(t, c, b->g, b->xn2, &L->gate, R, false, err);
    if (st == LT_OK) st = lin_fwd(t, c, b->u, b->xn2, &L->up, R, false, err);
    if (st == LT_OK)
      st = cf->gelu ? op_geglu(c, gv(b->act), gv(b->g), gv(b->u), R * f, err)
                    : op_swiglu(c, gv(b->act), gv(b->g), gv(b->u), R * f, err);
    /* h2 = s1 + act . Wdown^T (through the post-norm, if any) */
    if (st == LT_OK) st = gpu_cmd_copy(c, s1, 0, b->h2, 0, (uint64_t)R * d * 4, err);
    if (st == LT_OK) st = join_fwd(t, c, b->h2, b->act, &L->down, L->post_ffn_norm, b->fo, R, err);
  }
  if (st == LT_OK) {
    if (adapt)
      st = adapter_fwd(t, c, out, b->h2, b->z2, 1, R, err);
    else
      st = gpu_cmd_copy(c, b->h2, 0, out, 0, (uint64_t)R * d * 4, err);
  }
  return st;
}

/* Backward through block l: t->dx holds dLoss/d(block output) and gets dLoss/d(block input) (for the adapter
 * block, only what the adapters need: the pass stops there). */
static lt_status_t block_bwd(train_t *t, gpu_cmd_t **cp, uint32_t l, const batch_t *bt, lt_err_t *err) {
  gpu_cmd_t *c = *cp;
  const model_config_t *cf = t->cf;
  const tlayer_t *L = &t->L[l];
  blk_t *b = &t->blk[l];
  uint32_t R = bt->R, d = cf->hidden_size, qd = cf->n_heads * cf->head_dim, kvd = cf->n_kv_heads * cf->head_dim;
  uint32_t f = cf->intermediate_size;
  bool adapt = t->o.what == TRAIN_ADAPTER && l == t->o.adapter_layer;
  lt_status_t st = LT_OK;
  if (adapt) st = adapter_bwd(t, c, b->h2, b->z2, 1, R, err);
  /* MLP: dact = dx . Wdown; swiglu backward; dxn = dg . Wgate + du . Wup; rmsnorm backward adds into dx. The
   * stream entering the norm is h1, or the attention adapter's output (which the adapter block recomputes). */
  if (L->n_exp) {
    if (st == LT_OK) st = moe_bwd(t, cp, l, bt, err);
    c = *cp;
  } else {
    /* dxn is free until the gate and up projections' backward below rewrites it. */
    gpu_buf_t *dfo = join_bwd(t, c, L->post_ffn_norm, L->post_ffn_norm_grad, b->fo, R, &st, err);
    if (st == LT_OK) st = lin_bwd(t, c, t->dact, dfo, b->act, &L->down, R, false, err);
    if (st == LT_OK)
      st = cf->gelu ? op_geglu_backward(c, gv(t->dg), gv(t->du), gv(t->dact), gv(b->g), gv(b->u), R * f, err)
                    : op_swiglu_backward(c, gv(t->dg), gv(t->du), gv(t->dact), gv(b->g), gv(b->u), R * f, err);
    if (st == LT_OK) st = lin_bwd(t, c, t->dxn, t->dg, b->xn2, &L->gate, R, false, err);
    if (st == LT_OK) st = lin_bwd(t, c, t->dxn, t->du, b->xn2, &L->up, R, true, err);
  }
  gpu_buf_t *s1 = adapt ? b->s1 : b->h1;
  float eps = cf->rms_norm_eps;
  if (st == LT_OK)
    st = op_rmsnorm_backward(c, gv(t->dx), L->ffn_norm_grad >= 0 ? gv(t->tt[L->ffn_norm_grad].grad) : gv(NULL),
                             gv(t->dxn), gv(s1), gv(L->ffn_norm->buf), R, d, eps, err);
  if (st == LT_OK && adapt) {
    st = adapter_bwd(t, c, b->h1, b->z1, 0, R, err);
    if (st == LT_OK) t->stats.lowest_block_backward = l;
    return st; /* nothing below the adapters needs a gradient */
  }
  /* Attention: datt = dx . Wo; flash backward per sequence; RoPE backward; dxn = dq Wq + dk Wk + dv Wv. */
  /* dxn is free until the q, k, v projections' backward below rewrites it. */
  gpu_buf_t *dao = join_bwd(t, c, L->post_attn_norm, L->post_attn_norm_grad, b->ao, R, &st, err);
  if (st == LT_OK) st = lin_bwd(t, c, t->datt, dao, b->att, &L->wo, R, false, err);
  for (uint32_t s = 0; s < bt->n_seq && st == LT_OK; s++) {
    uint64_t r0 = (uint64_t)s * bt->T;
    gpu_view_t q = {b->q, r0 * qd * 4}, k = {b->k, r0 * kvd * 4}, v = {b->v, r0 * kvd * 4}, o = {b->att, r0 * qd * 4};
    gpu_view_t lse = {b->lse, r0 * cf->n_heads * 4}, dout = {t->datt, r0 * qd * 4};
    gpu_view_t dq = {t->dq, r0 * qd * 4}, dk = {t->dk, r0 * kvd * 4}, dv = {t->dv, r0 * kvd * 4};
    st = op_attention_backward(c, dq, dk, dv, q, k, v, o, dout, lse, bt->T, cf->n_heads, cf->n_kv_heads, cf->head_dim,
                               model_config_window(cf, l), model_config_attn_scale(cf), cf->attn_softcap, err);
  }
  if (st == LT_OK)
    st = op_rope_backward(c, gv(t->dq), gv(t->pos), gv(t->rope), R, cf->n_heads, cf->head_dim, cf->rope_dim, t->neox,
                          t->rope_rows, err);
  if (st == LT_OK)
    st = op_rope_backward(c, gv(t->dk), gv(t->pos), gv(t->rope), R, cf->n_kv_heads, cf->head_dim, cf->rope_dim, t->neox,
                          t->rope_rows, err);
  /* The biases' gradients: the column sums of dq, dk, dv (full training). */
  const int32_t bg[3] = {L->bq_grad, L->bk_grad, L->bv_grad};
  gpu_buf_t *bdy[3] = {t->dq, t->dk, t->dv};
  for (int k = 0; k < 3 && st == LT_OK; k++)
    if (bg[k] >= 0) st = op_matmul_dw(c, gv(t->tt[bg[k]].grad), gv(bdy[k]), gv(t->ones), R, k ? kvd : qd, 1, true, err);
  /* q and k were saved after RoPE; the weight gradients need xn1 only, which is saved. */
  if (st == LT_OK) st = lin_bwd(t, c, t->dxn, t->dq, b->xn1, &L->wq, R, false, err);
  if (st == LT_OK) st = lin_bwd(t, c, t->dxn, t->dk, b->xn1, &L->wk, R, true, err);
  if (st == LT_OK) st = lin_bwd(t, c, t->dxn, t->dv, b->xn1, &L->wv, R, true, err);
  if (st == LT_OK)
    st = op_rmsnorm_backward(c, gv(t->dx), L->attn_norm_grad >= 0 ? gv(t->tt[L->attn_norm_grad].grad) : gv(NULL),
                             gv(t->dxn), gv(b->x), gv(L->attn_norm->buf), R, d, eps, err);
  if (st == LT_OK) t->stats.lowest_block_backward = l;
  return st;
}

/* ---- the whole pass ---- */

/* What a pass computes. */
typedef enum pass { PASS_LOSS, PASS_GRAD, PASS_PREDICT, PASS_COMPARE } pass_t;

/* Uploads ids, positions, targets (labels shifted, or ids) and per-row loss weights (mask / count * scale) to t
 * and to te (the teacher of a distillation pass, else NULL); returns the count and the weights. */
static lt_status_t batch_upload(train_t *t, train_t *te, const int32_t *ids, const int32_t *labels, const uint8_t *mask,
                                const batch_t *bt, float scale, uint32_t *count, float **wts_out, lt_err_t *err) {
  uint32_t R = bt->R, V = t->cf->vocab_size;
  int32_t *pos = malloc(R * sizeof *pos), *tgt = malloc(R * sizeof *tgt);
  float *w = malloc(R * sizeof *w);
  lt_status_t st = LT_OK;
  if (!pos || !tgt || !w) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  if (!labels) labels = ids;
  uint32_t n = 0;
  for (uint32_t s = 0; s < bt->n_seq && st == LT_OK; s++)
    for (uint32_t i = 0; i < bt->T; i++) {
      uint32_t r = s * bt->T + i;
      bool on = mask && i + 1 < bt->T && mask[s * (bt->T - 1) + i];
      if (ids[r] < 0 || (uint32_t)ids[r] >= V || (on && (labels[r + 1] < 0 || (uint32_t)labels[r + 1] >= V))) {
        int32_t bad = ids[r] < 0 || (uint32_t)ids[r] >= V ? ids[r] : labels[r + 1];
        st = lt_fail(err, LT_E_INVALID, "token id %d at position %u of sequence %u is outside the vocabulary (%u)", bad,
                     ids[r] == bad ? i : i + 1, s, V);
        break;
      }
      pos[r] = (int32_t)i;
      tgt[r] = on ? labels[r + 1] : i + 1 < bt->T ? ids[r + 1] : 0;
      w[r] = on ? 1.0f : 0.0f;
      n += on;
    }
  if (st == LT_OK && n == 0 && mask) st = lt_fail(err, LT_E_INVALID, "the batch has no target token to learn from");
  for (uint32_t r = 0; st == LT_OK && r < R; r++) w[r] *= n ? scale / (float)n : 0.0f;
  for (train_t *x = t; x && st == LT_OK; x = x == t ? te : NULL) {
    st = gpu_upload(x->ids, 0, ids, R * 4, err);
    if (st == LT_OK) st = gpu_upload(x->pos, 0, pos, R * 4, err);
    if (st == LT_OK) st = gpu_upload(x->tgt, 0, tgt, R * 4, err);
    if (st == LT_OK) st = gpu_upload(x->wts, 0, w, R * 4, err);
  }
  free(pos), free(tgt);
  *count = n;
  if (st == LT_OK && wts_out)
    *wts_out = w;
  else
    free(w);
  return st;
}

/* The forward through every block and the output norm (t->xf). */
static lt_status_t forward_body(train_t *t, gpu_cmd_t **cp, const batch_t *bt, lt_err_t *err) {
  const model_config_t *cf = t->cf;
  uint32_t d = cf->hidden_size, R = bt->R;
  lt_status_t st =
      op_embed(*cp, gv(t->blk[0].x), gv(t->embed->buf), t->embed->dtype, gv(t->ids), R, d, 0, t->embed->rows, err);
  if (st == LT_OK && cf->embed_scale > 0)
    st = op_scale(*cp, gv(t->blk[0].x), gv(t->blk[0].x), cf->embed_scale, R * d, err);
  for (uint32_t i = 0; i < t->n_in_runs && st == LT_OK; i++) {
    const train_input_run_t *r = &t->in_runs[i];
    st = gpu_cmd_copy(*cp, t->in_emb, (uint64_t)r->row * d * 4, t->blk[0].x,
                      ((uint64_t)r->seq * bt->T + r->pos) * d * 4, (uint64_t)r->n * d * 4, err);
  }
  for (uint32_t l = 0; l < cf->n_layers && st == LT_OK; l++) {
    gpu_buf_t *out = l + 1 < cf->n_layers ? t->blk[l + 1].x : t->xL;
    st = block_fwd(t, cp, l, bt, out, err);
  }
  if (st == LT_OK) st = op_rmsnorm(*cp, gv(t->xf), gv(t->xL), gv(t->out_norm->buf), R, d, cf->rms_norm_eps, err);
  return st;
}

/* Logits rows [r0, r0 + n) into t->logits (soft-capped when the model caps them; with a gradient buffer, a copy of
 * the capped values goes to t->capped for the backward). */
static lt_status_t logits_chunk(train_t *t, gpu_cmd_t *c, uint32_t r0, uint32_t n, lt_err_t *err) {
  uint32_t d = t->cf->hidden_size, V = t->cf->vocab_size;
  gpu_view_t xf = {t->xf, (uint64_t)r0 * d * 4};
  lt_status_t st = wmul(c, gv(t->logits), xf, t->head, n, false, err);
  if (st != LT_OK || !(t->cf->final_softcap > 0)) return st;
  st = op_softcap(c, gv(t->logits), gv(t->logits), t->cf->final_softcap, n * V, err);
  if (st == LT_OK && t->capped) st = gpu_cmd_copy(c, t->logits, 0, t->capped, 0, (uint64_t)n * V * 4, err);
  return st;
}

/* The cross-entropy of rows [r0, r0 + n) from t->logits into t->nll; with backward, the logits become its gradient. */
static lt_status_t ce_chunk(train_t *t, gpu_cmd_t *c, uint32_t r0, uint32_t n, bool backward, lt_err_t *err) {
  gpu_view_t tgt = {t->tgt, (uint64_t)r0 * 4}, w = {t->wts, (uint64_t)r0 * 4}, nll = {t->nll, (uint64_t)r0 * 4};
  return op_cross_entropy(c, nll, gv(t->lse), backward, gv(t->logits), tgt, w, n, t->cf->vocab_size, err);
}

/* The distillation terms of rows [r0, r0 + n) into t->dl from the student's t->logits and the teacher's, and with
 * backward their gradient in place of the student's logits. The student's cross-entropy goes to t->nll first. */
static lt_status_t distill_chunk(train_t *t, gpu_cmd_t *c, uint32_t r0, uint32_t n, bool backward, lt_err_t *err) {
  train_t *te = t->dist.teacher;
  uint32_t V = t->cf->vocab_size;
  float T = t->dist.temperature;
  lt_status_t st = ce_chunk(t, c, r0, n, false, err);
  if (st == LT_OK) st = logits_chunk(te, c, r0, n, err);
  if (t->dist.kind == TRAIN_LOSS_KD) {
    if (st == LT_OK) st = ce_chunk(te, c, r0, n, false, err);
    /* KD has one term per row: they sit at stride 1 in dl, weighted by the loss weights. */
    gpu_view_t w = {t->wts, (uint64_t)r0 * 4}, dl = {t->dl, (uint64_t)r0 * 4};
    if (st == LT_OK) st = op_kd(c, dl, gv(t->logits), gv(te->logits), w, n, V, T, backward, err);
  } else {
    gpu_view_t tgt = {t->tgt, (uint64_t)r0 * 4}, aw = {t->aw, (uint64_t)r0 * 8}, dl = {t->dl, (uint64_t)r0 * 8};
    if (st == LT_OK) st = op_atkd(c, dl, gv(t->logits), gv(te->logits), tgt, aw, n, V, T, backward, err);
  }
  return st;
}

/* train_compare's rows [r0, r0 + n): both models' cross-entropies into their nll, and KL(p_t || p_ref) per row
 * into t->dl (op_kd at temperature 1 with the roles swapped: the compared model as the "student"). */
static lt_status_t compare_chunk(train_t *t, gpu_cmd_t *c, uint32_t r0, uint32_t n, lt_err_t *err) {
  train_t *ref = t->cmp_ref;
  lt_status_t st = ce_chunk(t, c, r0, n, false, err);
  if (st != LT_OK || !ref) return st;
  st = logits_chunk(ref, c, r0, n, err);
  if (st == LT_OK) st = ce_chunk(ref, c, r0, n, false, err);
  gpu_view_t w = {t->wts, (uint64_t)r0 * 4}, dl = {t->dl, (uint64_t)r0 * 4};
  if (st == LT_OK) st = op_kd(c, dl, gv(ref->logits), gv(t->logits), w, n, t->cf->vocab_size, 1.0f, false, err);
  return st;
}

/* Logits, loss (cross-entropy, or distillation under train_set_distill when a gradient is wanted) or predictions,
 * chunk by chunk; with backward, also dLoss/dxf into t->dxn and the head's gradient. */
static lt_status_t head(train_t *t, gpu_cmd_t *c, const batch_t *bt, pass_t pass, lt_err_t *err) {
  uint32_t d = t->cf->hidden_size, V = t->cf->vocab_size, R = bt->R;
  bool backward = pass == PASS_GRAD;
  bool distill = backward && t->dist.kind != TRAIN_LOSS_CE && t->dist.kind != TRAIN_LOSS_DPO;
  lt_status_t st = LT_OK;
  for (uint32_t r0 = 0; r0 < R && st == LT_OK; r0 += LOGIT_CHUNK) {
    uint32_t n = R - r0 < LOGIT_CHUNK ? R - r0 : LOGIT_CHUNK;
    st = logits_chunk(t, c, r0, n, err);
    if (st == LT_OK && pass == PASS_PREDICT) {
      st = op_argmax(c, (gpu_view_t){t->pred, (uint64_t)r0 * 4}, gv(t->logits), n, V, err);
      continue;
    }
    if (st == LT_OK && pass == PASS_COMPARE) {
      st = compare_chunk(t, c, r0, n, err);
      continue;
    }
    if (st == LT_OK) st = distill ? distill_chunk(t, c, r0, n, true, err) : ce_chunk(t, c, r0, n, backward, err);
    if (st != LT_OK || !backward) continue;
    if (t->cf->final_softcap > 0) /* the gradient wrt the capped logits, back through the cap */
      st = op_softcap_backward(c, gv(t->logits), gv(t->logits), gv(t->capped), t->cf->final_softcap, n * V, err);
    gpu_view_t xf = {t->xf, (uint64_t)r0 * d * 4}, dxf = {t->dxn, (uint64_t)r0 * d * 4};
    st = wmul_dx(c, dxf, gv(t->logits), t->head, n, false, err);
    if (st == LT_OK && t->head_grad >= 0)
      st = op_matmul_dw(c, gv(t->tt[t->head_grad].grad), gv(t->logits), xf, n, V, d, true, err);
  }
  return st;
}

/* Sums weighted per-row values of buf (stride floats apart, from offset off) over the batch, divided by scale. */
static lt_status_t read_sum(gpu_buf_t *buf, uint32_t stride, uint32_t off, const batch_t *bt, const float *w,
                            float scale, double *out, lt_err_t *err) {
  float *v = malloc((uint64_t)bt->R * stride * sizeof *v);
  if (!v) return lt_fail(err, LT_E_NOMEM, "out of memory");
  lt_status_t st = gpu_download(buf, 0, v, (uint64_t)bt->R * stride * 4, err);
  double s = 0;
  for (uint32_t r = 0; st == LT_OK && r < bt->R; r++)
    if (w[(uint64_t)r * stride + off] != 0) s += (double)w[(uint64_t)r * stride + off] * v[(uint64_t)r * stride + off];
  free(v);
  *out = s / scale;
  return st;
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

void train_atkd_weights(const float *u, uint32_t n, float lambda, float scale, float *w, uint32_t *easy,
                        uint32_t *hard) {
  float *sorted = n ? malloc(n * sizeof *sorted) : NULL;
  double median = 0;
  if (sorted) {
    memcpy(sorted, u, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_float);
    median = n % 2 ? sorted[n / 2] : 0.5 * ((double)sorted[n / 2 - 1] + sorted[n / 2]);
    free(sorted);
  }
  uint32_t ne = 0;
  for (uint32_t i = 0; i < n; i++) ne += (double)u[i] < median;
  uint32_t nh = n - ne;
  for (uint32_t i = 0; i < n; i++) {
    bool e = (double)u[i] < median;
    w[2 * i] = e ? 0.0f : (1.0f - lambda) * scale / (float)nh;
    w[2 * i + 1] = e ? lambda * scale / (float)ne : (1.0f - lambda) * scale / (float)nh;
  }
  *easy = ne, *hard = nh;
}

/* ATKD: the teacher's forward and cross-entropy on the batch (already uploaded), its uncertainty per counted row,
 * the easy / hard split and the per-row term weights into t->aw. */
static lt_status_t atkd_prepare(train_t *t, const batch_t *bt, const float *w, float scale, lt_err_t *err) {
  train_t *te = t->dist.teacher;
  gpu_cmd_t *c = gpu_cmd_begin(t->g, err);
  if (!c) return err ? err->code : LT_E_VULKAN;
  lt_status_t st = forward_body(te, &c, bt, err);
  for (uint32_t r0 = 0; r0 < bt->R && st == LT_OK; r0 += LOGIT_CHUNK) {
    uint32_t n = bt->R - r0 < LOGIT_CHUNK ? bt->R - r0 : LOGIT_CHUNK;
    st = logits_chunk(te, c, r0, n, err);
    if (st == LT_OK) st = ce_chunk(te, c, r0, n, false, err);
  }
  if (st == LT_OK) st = gpu_cmd_finish(&c, err);
  gpu_cmd_abort(&c);
  if (st == LT_OK) st = gpu_download(te->nll, 0, t->tnll, (uint64_t)bt->R * 4, err);
  float *u = st == LT_OK ? malloc((uint64_t)bt->R * sizeof *u) : NULL;
  float *aw = st == LT_OK ? calloc(2 * (uint64_t)bt->R, sizeof *aw) : NULL, *aw_n = NULL;
  if (st == LT_OK && (!u || !aw || !(aw_n = malloc(2 * (uint64_t)bt->R * sizeof *aw_n))))
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
  uint32_t n = 0;
  double tce = 0;
  for (uint32_t r = 0; st == LT_OK && r < bt->R; r++)
    if (w[r] != 0) u[n++] = 1.0f - expf(-t->tnll[r]), tce += (double)w[r] * t->tnll[r];
  if (st == LT_OK) {
    train_atkd_weights(u, n, t->dist.lambda, scale, aw_n, &t->stats.atkd_easy, &t->stats.atkd_hard);
    for (uint32_t r = 0, i = 0; r < bt->R; r++)
      if (w[r] != 0) aw[2 * r] = aw_n[2 * i], aw[2 * r + 1] = aw_n[2 * i + 1], i++;
    t->stats.teacher_ce = tce / scale;
    st = gpu_upload(t->aw, 0, aw, 2 * (uint64_t)bt->R * 4, err);
  }
  free(u), free(aw), free(aw_n);
  return st;
}

double train_dpo_pair_loss(double z) { return z < 0 ? -z + log1p(exp(z)) : log1p(exp(-z)); }

/* DPO: both models' forward passes and per-row cross-entropies on the batch (already uploaded), the pairs' summed
 * completion log-probabilities, their losses, and the per-row weights of the policy's cross-entropy whose gradient
 * is the DPO loss's (times scale) into t->wts. The policy's activations stay for the backward. */
static lt_status_t dpo_prepare(train_t *t, gpu_cmd_t **cp, const batch_t *bt, const float *w, float scale, double *loss,
                               lt_err_t *err) {
  /* The reference's forward only when its log-probabilities were not given. */
  train_t *ref = t->ref_lp ? NULL : t->dist.teacher;
  lt_status_t st = ref ? forward_body(ref, cp, bt, err) : LT_OK;
  if (st == LT_OK) st = forward_body(t, cp, bt, err);
  for (uint32_t r0 = 0; r0 < bt->R && st == LT_OK; r0 += LOGIT_CHUNK) {
    uint32_t n = bt->R - r0 < LOGIT_CHUNK ? bt->R - r0 : LOGIT_CHUNK;
    for (train_t *x = ref ? ref : t; x && st == LT_OK; x = x == ref ? t : NULL) {
      st = logits_chunk(x, *cp, r0, n, err);
      if (st == LT_OK) st = ce_chunk(x, *cp, r0, n, false, err);
    }
  }
  if (st == LT_OK) st = gpu_cmd_finish(cp, err);
  gpu_cmd_abort(cp);
  uint32_t P = bt->n_seq / 2;
  float *pn = st == LT_OK ? malloc((uint64_t)bt->R * sizeof *pn) : NULL, *wn = NULL;
  double *d = st == LT_OK ? calloc(bt->n_seq, sizeof *d) : NULL; /* per sequence: log pi - log ref */
  if (st == LT_OK && (!pn || !d || !(wn = calloc(bt->R, sizeof *wn)))) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK && ref) st = gpu_download(ref->nll, 0, t->tnll, (uint64_t)bt->R * 4, err);
  if (st == LT_OK) st = gpu_download(t->nll, 0, pn, (uint64_t)bt->R * 4, err);
  /* Given log-probabilities: the policy's summed from 0 in row order as train_compare sums them, so that equal
   * models give a margin of exactly 0 either way. */
  for (uint32_t r = 0; st == LT_OK && r < bt->R; r++)
    if (w[r] != 0) d[r / bt->T] += (ref ? (double)t->tnll[r] : 0.0) - (double)pn[r];
  for (uint32_t s = 0; st == LT_OK && t->ref_lp && s < bt->n_seq; s++) d[s] -= t->ref_lp[s];
  double sum = 0, margin = 0, acc = 0, beta = t->dist.beta;
  for (uint32_t p = 0; st == LT_OK && p < P; p++) {
    double z = beta * (d[2 * p] - d[2 * p + 1]), pw = t->pair_w ? t->pair_w[p] : 1.0;
    sum += pw * train_dpo_pair_loss(z);
    margin += z, acc += z > 0;
    /* d loss_p / d nll(token of the chosen) = beta sigmoid(-z); of the rejected, its negative. */
    double c = pw * beta / (1.0 + exp(z)) / P * scale;
    for (uint32_t k = 0; k < 2; k++)
      for (uint32_t i = 0; i < bt->T; i++) {
        uint64_t r = (uint64_t)(2 * p + k) * bt->T + i;
        if (w[r] != 0) wn[r] = (float)(k == 0 ? c : -c);
      }
  }
  if (st == LT_OK) {
    *loss = sum / P;
    t->stats.dpo_margin = margin / P, t->stats.dpo_accuracy = acc / P;
    st = gpu_upload(t->wts, 0, wn, (uint64_t)bt->R * 4, err);
  }
  free(pn), free(wn), free(d);
  if (st == LT_OK && !(*cp = gpu_cmd_begin(t->g, err))) st = err ? err->code : LT_E_VULKAN;
  return st;
}

/* train_compare's per-sequence sums over the counted rows (w[r] != 0): log-probabilities under t and ref, and
 * the KL per row in t->dl. */
static lt_status_t compare_sums(train_t *t, train_t *ref, const batch_t *bt, const float *w, lt_err_t *err) {
  float *v = malloc((uint64_t)bt->R * sizeof *v);
  if (!v) return lt_fail(err, LT_E_NOMEM, "out of memory");
  struct {
    gpu_buf_t *buf;
    double *out, sign;
  } sums[3] = {{t->nll, t->cmp_lp, -1}, {ref ? ref->nll : NULL, t->cmp_lr, -1}, {t->dl, t->cmp_kl, 1}};
  lt_status_t st = LT_OK;
  for (int k = 0; k < 3 && st == LT_OK; k++) {
    if (!sums[k].out) continue;
    memset(sums[k].out, 0, bt->n_seq * sizeof *sums[k].out);
    if (k > 0 && !ref) continue;
    st = gpu_download(sums[k].buf, 0, v, (uint64_t)bt->R * 4, err);
    for (uint32_t r = 0; st == LT_OK && r < bt->R; r++)
      if (w[r] != 0) sums[k].out[r / bt->T] += sums[k].sign * v[r];
  }
  free(v);
  return st;
}

static lt_status_t run_padded(train_t *t, const int32_t *ids, const int32_t *labels, const uint8_t *mask,
                              uint32_t n_seq, uint32_t T, float scale, pass_t pass, double *loss, int32_t *next,
                              lt_err_t *err) {
  if (n_seq == 0 || T < 2) return lt_fail(err, LT_E_INVALID, "a batch needs at least one sequence of 2 tokens");
  if (T > t->cf->max_position && t->cf->max_position)
    return lt_fail(err, LT_E_LIMIT, "sequences of %u tokens exceed the model's context (%u)", T, t->cf->max_position);
  bool backward = pass == PASS_GRAD, distill = backward && t->dist.kind != TRAIN_LOSS_CE;
  bool dpo = distill && t->dist.kind == TRAIN_LOSS_DPO, compare = pass == PASS_COMPARE;
  if (dpo && n_seq % 2) return lt_fail(err, LT_E_INVALID, "DPO batches hold pairs: %u sequences is not even", n_seq);
  train_t *te = distill ? t->dist.teacher : compare ? t->cmp_ref : NULL;
  batch_t bt = {n_seq, T, n_seq * T};
  for (uint32_t i = 0; i < t->n_in_runs; i++) {
    const train_input_run_t *r = &t->in_runs[i];
    if (r->seq >= n_seq || r->pos + (uint64_t)r->n > t->T_real)
      return lt_fail(err, LT_E_INVALID, "input embeddings for positions %u..%u of sequence %u: the batch has %u of %u",
                     r->pos, r->pos + r->n, r->seq, n_seq, t->T_real);
  }
  lt_status_t st = acts_ensure(t, bt.R, T, err);
  if (st == LT_OK && te) {
    st = acts_ensure(te, bt.R, T, err);
    te->T_real = t->T_real, te->scale = 1.0f;
  }
  uint32_t count = 0;
  float *w = NULL;
  if (st == LT_OK)
    st = batch_upload(t, te, ids, labels, pass == PASS_PREDICT ? NULL : mask, &bt, backward ? scale : 1.0f, &count, &w,
                      err);
  if (st == LT_OK && distill && t->dist.kind == TRAIN_LOSS_ATKD) st = atkd_prepare(t, &bt, w, scale, err);
  /* The backward adds every gradient of the stream into dx, starting from zero. */
  if (st == LT_OK && backward) st = gpu_buf_zero(t->dx, 0, (uint64_t)bt.R * t->cf->hidden_size * 4, err);
  if (st != LT_OK) {
    free(w);
    return st;
  }
  gpu_cmd_t *c = gpu_cmd_begin(t->g, err);
  if (!c) {
    free(w);
    return err ? err->code : LT_E_VULKAN;
  }
  const model_config_t *cf = t->cf;
  uint32_t d = cf->hidden_size;
  if (dpo) {
    /* Both forwards, the pairs' losses and the rows' weights; the head below reads the policy's kept activations. */
    st = dpo_prepare(t, &c, &bt, w, scale, loss, err);
  } else {
    /* ATKD's teacher ran in atkd_prepare */
    if (te && (compare || t->dist.kind == TRAIN_LOSS_KD)) st = forward_body(te, &c, &bt, err);
    if (st == LT_OK) st = forward_body(t, &c, &bt, err);
  }
  if (st == LT_OK) st = head(t, c, &bt, pass, err);
  if (st == LT_OK && backward) {
    uint64_t before = gpu_stats(t->g)->dispatches;
    t->stats.lowest_block_backward = cf->n_layers;
    /* dx = rmsnorm backward of the output norm, from dxf (in dxn). */
    st = op_rmsnorm_backward(c, gv(t->dx), t->out_norm_grad >= 0 ? gv(t->tt[t->out_norm_grad].grad) : gv(NULL),
                             gv(t->dxn), gv(t->xL), gv(t->out_norm->buf), bt.R, d, cf->rms_norm_eps, err);
    uint32_t lowest = t->o.what == TRAIN_ADAPTER ? t->o.adapter_layer : 0;
    for (uint32_t l = cf->n_layers; l-- > lowest && st == LT_OK;) {
      if (t->o.recompute) {
        gpu_buf_t *out = l + 1 < cf->n_layers ? t->blk[l + 1].x : t->xL;
        /* Recompute into the shared set; the block's output buffer is rewritten with the same values. */
        st = block_fwd(t, &c, l, &bt, out, err);
      }
      if (st == LT_OK) st = block_bwd(t, &c, l, &bt, err);
    }
    for (uint32_t i = 0; t->in_demb && i < t->n_in_runs && st == LT_OK; i++) {
      const train_input_run_t *r = &t->in_runs[i];
      st = gpu_cmd_copy(c, t->dx, ((uint64_t)r->seq * bt.T + r->pos) * d * 4, t->in_demb, (uint64_t)r->row * d * 4,
                        (uint64_t)r->n * d * 4, err);
    }
    if (st == LT_OK && t->embed_grad >= 0 && t->cf->embed_scale > 0) /* x0 = scale * E[id] */
      st = op_scale(c, gv(t->dx), gv(t->dx), t->cf->embed_scale, bt.R * d, err);
    if (st == LT_OK && t->embed_grad >= 0)
      st = op_embed_backward(c, gv(t->tt[t->embed_grad].grad), gv(t->dx), ids, bt.R, d, t->embed->rows, err);
    t->stats.backward_dispatches = (uint32_t)(gpu_stats(t->g)->dispatches - before);
  }
  if (st == LT_OK) st = gpu_cmd_finish(&c, err);
  gpu_cmd_abort(&c);
  if (st == LT_OK && pass == PASS_PREDICT) st = gpu_download(t->pred, 0, next, (uint64_t)bt.R * 4, err);
  if (st == LT_OK && compare) st = compare_sums(t, te, &bt, w, err);
  if (st == LT_OK && pass != PASS_PREDICT && !compare && !dpo)
    st = read_sum(t->nll, 1, 0, &bt, w, backward ? scale : 1.0f, loss, err);
  if (st == LT_OK && distill && !dpo) {
    t->stats.ce = *loss;
    if (t->dist.kind == TRAIN_LOSS_KD) {
      st = read_sum(te->nll, 1, 0, &bt, w, scale, &t->stats.teacher_ce, err);
      if (st == LT_OK) st = read_sum(t->dl, 1, 0, &bt, w, scale, loss, err);
    } else {
      float *aw = malloc(2 * (uint64_t)bt.R * sizeof *aw);
      double tc = 0, nc = 0;
      if (!aw) st = lt_fail(err, LT_E_NOMEM, "out of memory");
      if (st == LT_OK) st = gpu_download(t->aw, 0, aw, 2 * (uint64_t)bt.R * 4, err);
      if (st == LT_OK) st = read_sum(t->dl, 2, 0, &bt, aw, scale, &tc, err);
      if (st == LT_OK) st = read_sum(t->dl, 2, 1, &bt, aw, scale, &nc, err);
      *loss = tc + nc;
      free(aw);
    }
  }
  free(w);
  return st;
}

/* Runs a batch whose sequences are padded to T_pad tokens (masked out), so that every per-sequence view of the
 * activations starts at a bindable offset (min_storage_align). Padding sits after each sequence's tokens, where
 * causal attention never lets it reach them. */
static lt_status_t run(train_t *t, const int32_t *ids, const int32_t *labels, const uint8_t *mask, uint32_t n_seq,
                       uint32_t T, float scale, pass_t pass, double *loss, int32_t *next, lt_err_t *err) {
  uint32_t q = (uint32_t)(gpu_caps(t->g)->min_storage_align / 4);
  t->T_real = T;
  t->scale = pass == PASS_GRAD ? scale : 1.0f;
  if (q <= 1 || T % q == 0 || n_seq == 0 || T < 2)
    return run_padded(t, ids, labels, mask, n_seq, T, scale, pass, loss, next, err);
  uint32_t Tp = (T + q - 1) / q * q;
  int32_t *pi = malloc((uint64_t)n_seq * Tp * sizeof *pi),
          *pl = labels ? malloc((uint64_t)n_seq * Tp * sizeof *pl) : NULL;
  int32_t *pn = next ? malloc((uint64_t)n_seq * Tp * sizeof *pn) : NULL;
  uint8_t *pm = calloc((uint64_t)n_seq * (Tp - 1), 1);
  lt_status_t st = pi && pm && (!labels || pl) && (!next || pn) ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t s = 0; st == LT_OK && s < n_seq; s++) {
    for (uint32_t i = 0; i < Tp; i++) {
      uint64_t from = (uint64_t)s * T + (i < T ? i : T - 1);
      pi[(uint64_t)s * Tp + i] = ids[from];
      if (pl) pl[(uint64_t)s * Tp + i] = labels[from];
    }
    if (mask) memcpy(pm + (uint64_t)s * (Tp - 1), mask + (uint64_t)s * (T - 1), T - 1);
  }
  if (st == LT_OK) st = run_padded(t, pi, pl, mask ? pm : NULL, n_seq, Tp, scale, pass, loss, pn, err);
  for (uint32_t s = 0; st == LT_OK && next && s < n_seq; s++)
    memcpy(next + (uint64_t)s * T, pn + (uint64_t)s * Tp, T * sizeof *next);
  free(pi), free(pl), free(pn), free(pm);
  return st;
}

static lt_status_t grad_check(const train_t *t, lt_err_t *err) {
  if (t->o.what == TRAIN_FROZEN) return lt_fail(err, LT_E_INVALID, "a frozen training state has nothing to train");
  if (t->o.what == TRAIN_INPUTS && !t->in_demb)
    return lt_fail(err, LT_E_INVALID, "an inputs-only training state needs input embeddings with a gradient");
  return LT_OK;
}

lt_status_t train_set_inputs(train_t *t, gpu_buf_t *emb, gpu_buf_t *demb, const train_input_run_t *runs, uint32_t n,
                             lt_err_t *err) {
  free(t->in_runs);
  t->in_runs = NULL, t->n_in_runs = 0, t->in_emb = t->in_demb = NULL;
  if (!emb) return LT_OK;
  if (demb && (t->o.what == TRAIN_FULL || t->o.what == TRAIN_ADAPTER || t->o.what == TRAIN_FROZEN))
    return lt_fail(err, LT_E_UNSUPPORTED,
                   "input embeddings with a gradient need a LoRA or inputs-only training state (this one %s)",
                   t->o.what == TRAIN_FULL      ? "trains the token embeddings"
                   : t->o.what == TRAIN_ADAPTER ? "stops its backward at the adapter's block"
                                                : "is frozen");
  uint64_t d4 = (uint64_t)t->cf->hidden_size * 4;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t end = ((uint64_t)runs[i].row + runs[i].n) * d4;
    if (runs[i].n == 0 || end > gpu_buf_size(emb) || (demb && end > gpu_buf_size(demb)))
      return lt_fail(err, LT_E_INVALID, "input run %u (rows %u..%u) is empty or outside the embedding buffers", i,
                     runs[i].row, runs[i].row + runs[i].n);
  }
  if (n && !(t->in_runs = malloc(n * sizeof *runs))) return lt_fail(err, LT_E_NOMEM, "out of memory");
  if (n) memcpy(t->in_runs, runs, n * sizeof *runs);
  t->n_in_runs = n, t->in_emb = emb, t->in_demb = demb;
  return LT_OK;
}

lt_status_t train_grad(train_t *t, const int32_t *ids, const uint8_t *mask, uint32_t n_seq, uint32_t T, float scale,
                       double *loss, lt_err_t *err) {
  return train_grad_labeled(t, ids, NULL, mask, n_seq, T, scale, loss, err);
}

lt_status_t train_grad_labeled(train_t *t, const int32_t *ids, const int32_t *labels, const uint8_t *mask,
                               uint32_t n_seq, uint32_t T, float scale, double *loss, lt_err_t *err) {
  if (grad_check(t, err) != LT_OK) return err ? err->code : LT_E_INVALID;
  return run(t, ids, labels, mask, n_seq, T, scale, PASS_GRAD, loss, NULL, err);
}

lt_status_t train_grad_pairs(train_t *t, const int32_t *ids, const uint8_t *mask, const float *weights,
                             const double *ref_lp, uint32_t n_pairs, uint32_t T, float scale, double *loss,
                             lt_err_t *err) {
  if (grad_check(t, err) != LT_OK) return err ? err->code : LT_E_INVALID;
  if (t->dist.kind != TRAIN_LOSS_DPO)
    return lt_fail(err, LT_E_INVALID, "preference pairs need DPO set first (train_set_distill with a reference)");
  if (n_pairs == 0) return lt_fail(err, LT_E_INVALID, "a DPO batch needs at least one pair");
  t->pair_w = weights, t->ref_lp = ref_lp;
  lt_status_t st = run(t, ids, NULL, mask, 2 * n_pairs, T, scale, PASS_GRAD, loss, NULL, err);
  t->pair_w = NULL, t->ref_lp = NULL;
  return st;
}

lt_status_t train_compare(train_t *t, train_t *ref, const int32_t *ids, const uint8_t *mask, uint32_t n_seq, uint32_t T,
                          double *lp, double *lr, double *kl, lt_err_t *err) {
  if (ref && ref->o.what != TRAIN_FROZEN)
    return lt_fail(err, LT_E_INVALID, "compare: the reference must be a frozen (forward-only) training state");
  if (ref && (ref->g != t->g || ref->cf->vocab_size != t->cf->vocab_size))
    return lt_fail(err, LT_E_INVALID, "compare: the reference sits on another device or has another vocabulary");
  if (!ref && (lr || kl)) return lt_fail(err, LT_E_INVALID, "compare: reference outputs asked without a reference");
  if (!mask) return lt_fail(err, LT_E_INVALID, "compare: a mask of the scored tokens is needed");
  t->cmp_ref = ref, t->cmp_lp = lp, t->cmp_lr = lr, t->cmp_kl = kl;
  lt_status_t st = run(t, ids, NULL, mask, n_seq, T, 1.0f, PASS_COMPARE, NULL, NULL, err);
  t->cmp_ref = NULL, t->cmp_lp = t->cmp_lr = t->cmp_kl = NULL;
  return st;
}

lt_status_t train_loss(train_t *t, const int32_t *ids, const uint8_t *mask, uint32_t n_seq, uint32_t T, double *loss,
                       lt_err_t *err) {
  return run(t, ids, NULL, mask, n_seq, T, 1.0f, PASS_LOSS, loss, NULL, err);
}

lt_status_t train_predict(train_t *t, const int32_t *ids, uint32_t n_seq, uint32_t T, int32_t *next, lt_err_t *err) {
  return run(t, ids, NULL, NULL, n_seq, T, 1.0f, PASS_PREDICT, NULL, next, err);
}

lt_status_t train_set_distill(train_t *t, const train_distill_t *d, lt_err_t *err) {
  if (d->kind == TRAIN_LOSS_CE) {
    memset(&t->dist, 0, sizeof t->dist);
    return LT_OK;
  }
  const train_t *te = d->teacher;
  if (d->kind != TRAIN_LOSS_KD && d->kind != TRAIN_LOSS_ATKD && d->kind != TRAIN_LOSS_DPO)
    return lt_fail(err, LT_E_INVALID, "distillation: unknown loss %d", (int)d->kind);
  if (!te || te->o.what != TRAIN_FROZEN)
    return lt_fail(err, LT_E_INVALID, "distillation: the teacher must be a frozen (forward-only) training state");
  if (te->g != t->g) return lt_fail(err, LT_E_INVALID, "distillation: the teacher sits on another device");
  if (te->cf->vocab_size != t->cf->vocab_size)
    return lt_fail(err, LT_E_INVALID, "distillation: the teacher's vocabulary has %u tokens, the student's %u",
                   te->cf->vocab_size, t->cf->vocab_size);
  if (d->kind == TRAIN_LOSS_DPO && !(d->beta > 0 && isfinite(d->beta)))
    return lt_fail(err, LT_E_INVALID, "DPO: beta %g (must be > 0)", d->beta);
  if (d->kind != TRAIN_LOSS_DPO && (!(d->temperature > 0) || !isfinite(d->temperature)))
    return lt_fail(err, LT_E_INVALID, "distillation: temperature %g (must be > 0)", d->temperature);
  if (d->kind == TRAIN_LOSS_ATKD && !(d->lambda >= 0 && d->lambda <= 1))
    return lt_fail(err, LT_E_INVALID, "ATKD: lambda %g is outside [0, 1]", d->lambda);
  if (d->kind == TRAIN_LOSS_ATKD && t->cf->vocab_size < 2)
    return lt_fail(err, LT_E_INVALID, "ATKD needs a vocabulary of 2 or more tokens");
  t->dist = *d;
  return LT_OK;
}

lt_status_t train_lora_merge(const train_t *t, model_t *dst, lt_err_t *err) {
  if (t->o.what != TRAIN_LORA) return lt_fail(err, LT_E_INVALID, "merge: the training state holds no LoRA pairs");
  lt_status_t st = LT_OK;
  float s = t->lora_scale;
  for (uint32_t i = 0; st == LT_OK && i + 1 < t->n_tt; i += 2) {
    const train_tensor_t *A = &t->tt[i], *B = &t->tt[i + 1];
    /* base_model.model.<module>.lora_A.weight -> <module>.weight */
    char name[sizeof A->name];
    const char *from = A->name + strlen("base_model.model."), *end = strstr(from, ".lora_A.weight");
    snprintf(name, sizeof name, "%.*s.weight", (int)(end - from), from);
    const model_param_t *p = find_param(dst, name);
    if (!p || p->n_rows != p->rows || p->dtype != LT_F32)
      return lt_fail(err, LT_E_INVALID, "merge: %s is missing, split or not f32 in the model merged into", name);
    uint32_t out = B->rows, in = A->cols, rk = A->rows;
    float *w = malloc((uint64_t)out * in * 4), *a = malloc((uint64_t)rk * in * 4), *b = malloc((uint64_t)out * rk * 4);
    if (!w || !a || !b) st = lt_fail(err, LT_E_NOMEM, "out of memory merging %s", name);
    if (st == LT_OK) st = gpu_download(p->buf, 0, w, (uint64_t)out * in * 4, err);
    if (st == LT_OK) st = gpu_download(A->value, 0, a, (uint64_t)rk * in * 4, err);
    if (st == LT_OK) st = gpu_download(B->value, 0, b, (uint64_t)out * rk * 4, err);
    for (uint32_t o = 0; st == LT_OK && o < out; o++)
      for (uint32_t j = 0; j < in; j++) {
        double d = 0;
        for (uint32_t q = 0; q < rk; q++) d += (double)b[(uint64_t)o * rk + q] * a[(uint64_t)q * in + j];
        w[(uint64_t)o * in + j] += (float)(s * d);
      }
    if (st == LT_OK) st = gpu_upload(p->buf, 0, w, (uint64_t)out * in * 4, err);
    free(w), free(a), free(b);
  }
  return st;
}

/* Writes the trainable tensors' values as one f32 safetensors file at path. */
static lt_status_t write_tensors(const train_t *t, const char *path, lt_err_t *err) {
  ft_tensor_t *ts = calloc(t->n_tt + 1, sizeof *ts);
  float **data = calloc(t->n_tt + 1, sizeof *data);
  lt_status_t st = ts && data ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t i = 0; st == LT_OK && i < t->n_tt; i++) {
    const train_tensor_t *x = &t->tt[i];
    uint64_t b = (uint64_t)x->rows * x->cols * 4;
    if (!(data[i] = malloc(b)))
      st = lt_fail(err, LT_E_NOMEM, "out of memory");
    else
      st = gpu_download(x->value, 0, data[i], b, err);
    ts[i] = (ft_tensor_t){.name = x->name,
                          .dtype = FT_F32,
                          .n_dims = 2,
                          .shape = {x->rows, x->cols},
                          .n_elems = (uint64_t)x->rows * x->cols,
                          .data = data[i],
                          .nbytes = b};
  }
  const char *meta[] = {"format", "pt"};
  if (st == LT_OK) st = st_write(path, ts, t->n_tt, meta, 1, err);
  for (uint32_t i = 0; data && i < t->n_tt; i++) free(data[i]);
  free(ts), free(data);
  return st;
}

lt_status_t train_save_adapter(const train_t *t, const char *dir, const char *base, lt_err_t *err) {
  json_t *j = NULL;
  const char *file;
  if (t->o.what == TRAIN_LORA) {
    static const char *const mods[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    json_t *targets = json_array();
    for (int i = 0; i < 7; i++)
      if (t->o.lora_targets & (1u << i)) json_array_append_new(targets, json_string(mods[i]));
    j = json_pack("{s:s, s:s, s:i, s:f, s:o, s:f, s:s, s:s, s:b, s:b}", "peft_type", "LORA", "task_type", "CAUSAL_LM",
                  "r", (int)t->o.lora_rank, "lora_alpha", (double)t->o.lora_alpha, "target_modules", targets,
                  "lora_dropout", 0.0, "bias", "none", "base_model_name_or_path", base, "fan_in_fan_out", 0,
                  "inference_mode", 1);
    file = "adapter_model.safetensors";
  } else if (t->o.what == TRAIN_ADAPTER) {
    j = json_pack("{s:s, s:i, s:i, s:i, s:s, s:s}", "lathe_adapter", "cogsteer-bottleneck", "layer",
                  (int)t->o.adapter_layer, "bottleneck", (int)t->adapter_dim, "hidden_size", (int)t->cf->hidden_size,
                  "placement", "h += relu(h D^T) U^T after the attention and after the MLP of the block", "base_model",
                  base);
    file = "adapter.safetensors";
  } else {
    return lt_fail(err, LT_E_INVALID, "full training writes a model folder, not an adapter");
  }
  char p[4200];
  snprintf(p, sizeof p, "%s/adapter_config.json", dir);
  lt_status_t st = j ? jsonl_write_file(p, j, JSON_INDENT(2) | JSON_PRESERVE_ORDER, err)
                     : lt_fail(err, LT_E_NOMEM, "cannot write %s: out of memory", p);
  json_decref(j);
  if (st != LT_OK) return st;
  snprintf(p, sizeof p, "%s/%s", dir, file);
  return write_tensors(t, p, err);
}

lt_status_t train_load_adapter(train_t *t, const char *dir, lt_err_t *err) {
  if (t->o.what == TRAIN_FULL)
    return lt_fail(err, LT_E_INVALID, "full training starts from a model: merge the adapter in %s first", dir);
  char p[4200];
  snprintf(p, sizeof p, "%s/%s", dir, t->o.what == TRAIN_LORA ? "adapter_model.safetensors" : "adapter.safetensors");
  st_file_t *f = NULL;
  lt_status_t st = st_open(&f, p, err);
  for (uint32_t i = 0; st == LT_OK && i < t->n_tt; i++) {
    const train_tensor_t *x = &t->tt[i];
    const ft_tensor_t *s = st_find(f, x->name);
    if (!s || s->dtype != FT_F32 || s->n_dims != 2 || s->shape[0] != x->rows || s->shape[1] != x->cols)
      st = lt_fail(err, LT_E_INVALID, "%s: %s is missing or not f32 [%u, %u]: the adapter does not fit this run", p,
                   x->name, x->rows, x->cols);
    else
      st = gpu_upload(x->value, 0, s->data, (uint64_t)x->rows * x->cols * 4, err);
  }
  st_destroy(&f);
  return st;
}
