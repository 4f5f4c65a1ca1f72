/* Applying a compression plan to a model's weights on the host and writing the result as a Hugging Face folder
 * (methods/compress.h, docs/compression.md). Tensors the plan leaves alone are written from the source mapping in
 * their own dtype; pruned ones become f32, quantised ones int8 / packed int4 with f16 scales. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "methods/compress.h"
#include "engine/model/model_file.h"
#include "engine/ops/quant.h"
#include "engine/ops/dtype.h"

/* The tensors to write, with the memory they own (new data and names). */
typedef struct out_list {
  ft_tensor_t *t;
  uint32_t n, cap;
  void **owned;
  uint32_t n_owned, cap_owned;
} out_list_t;

/* Takes ownership of p (freed with the list); false when the list cannot grow (p is freed). */
static bool own(out_list_t *o, void *p) {
  if (o->n_owned == o->cap_owned) {
    uint32_t cap = o->cap_owned ? 2 * o->cap_owned : 64;
    void **grown = realloc(o->owned, cap * sizeof *grown);
    if (!grown) {
      free(p);
      return false;
    }
    o->owned = grown, o->cap_owned = cap;
  }
  o->owned[o->n_owned++] = p;
  return true;
}

/* Appends a tensor named name (copied) of dtype and shape [rows, cols] (cols 0: a vector of rows) over data. */
static lt_status_t add(out_list_t *o, const char *name, ft_dtype_t dtype, uint64_t rows, uint64_t cols,
                       const void *data, uint64_t nbytes, lt_err_t *err) {
  char *nm = strdup(name);
  if (!nm || !own(o, nm)) return lt_fail(err, LT_E_NOMEM, "out of memory");
  if (o->n == o->cap) {
    uint32_t cap = o->cap ? 2 * o->cap : 64;
    ft_tensor_t *grown = realloc(o->t, cap * sizeof *grown);
    if (!grown) return lt_fail(err, LT_E_NOMEM, "out of memory");
    o->t = grown, o->cap = cap;
  }
  ft_tensor_t *t = &o->t[o->n++];
  memset(t, 0, sizeof *t);
  t->name = nm;
  t->dtype = dtype;
  t->n_dims = cols ? 2 : 1;
  t->shape[0] = rows;
  t->shape[1] = cols ? cols : 1;
  t->shape[2] = t->shape[3] = 1;
  t->n_elems = rows * (cols ? cols : 1);
  t->data = data;
  t->nbytes = nbytes;
  return LT_OK;
}

static void out_free(out_list_t *o) {
  for (uint32_t i = 0; i < o->n_owned; i++) free(o->owned[i]);
  free(o->owned);
  free(o->t);
}

/* Writes name with its block index replaced by layer and its expert index (when it has one) by expert:
 * "model.layers.<l>.<rest>" and "...experts.<e>.<rest>". */
static void rename_tensor(char *out, size_t cap, const char *name, int32_t layer, int32_t expert) {
  const char *prefix = "model.layers.";
  size_t pl = strlen(prefix);
  if (layer < 0 || strncmp(name, prefix, pl) != 0) {
    snprintf(out, cap, "%s", name);
    return;
  }
  const char *rest = strchr(name + pl, '.');
  const char *ex = expert >= 0 ? strstr(rest, ".experts.") : NULL;
  if (!ex) {
    snprintf(out, cap, "%s%d%s", prefix, layer, rest);
    return;
  }
  const char *tail = strchr(ex + strlen(".experts."), '.');
  snprintf(out, cap, "%s%d%.*s.experts.%d%s", prefix, layer, (int)(ex - rest), rest, expert, tail);
}

/* Score order for pruning: lowest first; ties: the higher column goes first. */
typedef struct scored {
  double s;
  uint32_t k;
} scored_t;

static int scored_cmp(const void *a, const void *b) {
  const scored_t *x = a, *y = b;
  if (x->s != y->s) return x->s < y->s ? -1 : 1;
  return x->k > y->k ? -1 : x->k < y->k;
}

/* Wanda on w [N, K]: score |w_ij| * ||X_j||_2 (sq: per-column sums of squares of the input; NULL ranks by |w|
 * alone), compared within each output row: zero the floor(sparsity * K) lowest of the row, or with an N:M
 * pattern keep the keep_n highest of every keep_m consecutive columns (a shorter last group keeps
 * min(its width, keep_n)). Returns the weights zeroed. */
static uint64_t wanda(float *w, uint32_t N, uint32_t K, const double *sq, const compress_plan_t *p, scored_t *buf) {
  uint64_t zeroed = 0;
  uint32_t span = p->keep_m ? p->keep_m : K;
  for (uint32_t n = 0; n < N; n++) {
    float *row = w + (uint64_t)n * K;
    for (uint32_t g0 = 0; g0 < K; g0 += span) {
      uint32_t len = K - g0 < span ? K - g0 : span;
      uint32_t drop = p->keep_m ? (len > p->keep_n ? len - p->keep_n : 0) : (uint32_t)floor(p->sparsity * len);
      for (uint32_t i = 0; i < len; i++) {
        uint32_t k = g0 + i;
        buf[i] = (scored_t){fabs((double)row[k]) * (sq ? sqrt(sq[k]) : 1.0), k};
      }
      qsort(buf, len, sizeof *buf, scored_cmp);
      for (uint32_t i = 0; i < drop; i++) row[buf[i].k] = 0.0f;
      zeroed += drop;
    }
  }
  return zeroed;
}

/* The calibration input feeding a linear of role r (block l, expert e), for Wanda. */
static const double *input_sq(const compress_calib_t *c, model_role_t r, uint32_t l, int32_t e) {
  switch (r) {
  case MR_WQ:
  case MR_WK:
  case MR_WV: return compress_input_sq(c, MODEL_SITE_ATTN_IN, l, -1);
  case MR_WO: return compress_input_sq(c, MODEL_SITE_ATTN_OUT, l, -1);
  case MR_FFN_GATE:
  case MR_FFN_UP: return compress_input_sq(c, MODEL_SITE_FFN_IN, l, -1);
  case MR_FFN_DOWN: return compress_input_sq(c, MODEL_SITE_FFN_ACT, l, -1);
  case MR_EXP_GATE:
  case MR_EXP_UP: return compress_input_sq(c, MODEL_SITE_EXPERT_IN, l, e);
  case MR_EXP_DOWN: return compress_input_sq(c, MODEL_SITE_EXPERT_ACT, l, e);
  default: return NULL;
  }
}

/* Whether the plan prunes / quantises a tensor of role r: the matrices inside blocks except the router. */
static bool is_block_linear(model_role_t r) {
  return r == MR_WQ || r == MR_WK || r == MR_WV || r == MR_WO || r == MR_FFN_GATE || r == MR_FFN_UP ||
         r == MR_FFN_DOWN || r == MR_EXP_GATE || r == MR_EXP_UP || r == MR_EXP_DOWN;
}

/* Prunes and / or quantises one block matrix t (source block l, expert e) and appends it as name. */
static lt_status_t add_linear(out_list_t *o, const char *name, const ft_tensor_t *t, const model_tensor_t *e,
                              const compress_plan_t *p, const compress_calib_t *calib, compress_summary_t *sum,
                              lt_err_t *err) {
  bool prune = p->sparsity > 0 || p->keep_m;
  uint32_t N = (uint32_t)t->shape[0], K = (uint32_t)t->shape[1];
  uint64_t ne = (uint64_t)N * K;
  if (!prune && !p->bits) return add(o, name, t->dtype, N, K, t->data, t->nbytes, err);
  float *w = malloc(ne * sizeof *w + 4);
  if (!w || !own(o, w)) return lt_fail(err, LT_E_NOMEM, "out of memory");
  lt_status_t st = ft_tensor_to_f32(t, w, err);
  if (st != LT_OK) return st;
  if (prune) {
    const double *sq = input_sq(calib, e->role, (uint32_t)e->layer, e->expert);
    scored_t *buf = malloc(((uint64_t)K + 1) * sizeof *buf);
    if (!buf) return lt_fail(err, LT_E_NOMEM, "out of memory");
    sum->pruned += wanda(w, N, K, sq, p, buf);
    sum->prunable += ne;
    sum->magnitude_fallbacks += sq == NULL;
    free(buf);
  }
  if (!p->bits) return add(o, name, FT_F32, N, K, w, ne * 4, err);
  uint32_t rb = quant_row_bytes(p->bits, K), G = quant_groups(K, p->group);
  uint8_t *q = malloc((uint64_t)N * rb + 4);
  uint16_t *s = malloc((uint64_t)N * G * 2 + 4);
  if (!q || !own(o, q) || !s || !own(o, s)) return lt_fail(err, LT_E_NOMEM, "out of memory");
  quant_rtn(q, s, w, N, K, p->bits, p->group);
  for (uint32_t n = 0; n < N; n++)
    for (uint32_t k = 0; k < K; k++) {
      float sc = dtype_half_to_float(s[(uint64_t)n * G + k / p->group]);
      double amax = sc * ((1 << (p->bits - 1)) - 1);
      double d = fabs((double)quant_weight(q, s, p->bits, p->group, K, n, k) - w[(uint64_t)n * K + k]);
      if (amax > 0) sum->quant_max_rel_err = fmax(sum->quant_max_rel_err, d / amax);
    }
  sum->quantised += ne;
  char sname[160];
  snprintf(sname, sizeof sname, "%.150s.scales", name); /* names are at most ~100 bytes */
  if ((st = add(o, name, p->bits == 8 ? FT_I8 : FT_U8, N, rb, q, (uint64_t)N * rb, err)) != LT_OK) return st;
  return add(o, sname, FT_F16, N, G, s, (uint64_t)N * G * 2, err);
}

/* Appends the router of source block l with the rows of dropped experts removed (any dtype: rows are copied). */
static lt_status_t add_router(out_list_t *o, const char *name, const ft_tensor_t *t, const bool *drop, uint32_t E,
                              lt_err_t *err) {
  uint32_t kept = 0;
  for (uint32_t e = 0; e < E; e++) kept += !drop[e];
  if (kept == E) return add(o, name, t->dtype, t->shape[0], t->shape[1], t->data, t->nbytes, err);
  uint64_t row = t->nbytes / t->shape[0];
  uint8_t *data = malloc(kept * row + 4);
  if (!data || !own(o, data)) return lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t e = 0, j = 0; e < E; e++)
    if (!drop[e]) memcpy(data + (uint64_t)j++ * row, (const uint8_t *)t->data + (uint64_t)e * row, row);
  return add(o, name, t->dtype, kept, t->shape[1], data, kept * row, err);
}

static bool in_ffn(model_role_t r) {
  return r == MR_FFN_NORM || r == MR_FFN_GATE || r == MR_FFN_UP || r == MR_FFN_DOWN || r == MR_ROUTER ||
         r == MR_EXP_GATE || r == MR_EXP_UP || r == MR_EXP_DOWN;
}

lt_status_t compress_write(const char *src, const char *dir, const compress_plan_t *plan, const compress_calib_t *calib,
                           compress_summary_t *summary, lt_err_t *err) {
  compress_summary_t sum = {0};
  model_file_t *f = NULL;
  lt_status_t st = model_file_open(&f, src, err);
  if (st != LT_OK) return st;
  const model_config_t *c = model_file_config(f);
  const model_weights_t *w = model_file_weights(f);
  uint32_t L = c->n_layers, E = c->n_experts;
  model_config_t *nc = malloc(sizeof *nc);
  int32_t *new_layer = malloc((L + 1) * sizeof *new_layer), *new_expert = malloc(((uint64_t)L * E + 1) * 4);
  out_list_t o = {0};
  if (!nc || !new_layer || !new_expert) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  if (w->format != MODEL_FORMAT_HF || c->quant_bits) {
    st = lt_fail(err, LT_E_UNSUPPORTED, "%s: compression reads Hugging Face folders with unquantised weights", src);
    goto out;
  }
  if ((plan->sparsity > 0 || plan->keep_m) && (!calib || !compress_input_sq(calib, MODEL_SITE_ATTN_IN, 0, -1))) {
    st = lt_fail(err, LT_E_INVALID, "pruning needs calibration with the inputs of the linear layers");
    goto out;
  }
  if (plan->bits && !quant_params_ok(plan->bits, plan->group)) {
    st = lt_fail(err, LT_E_INVALID, "quantisation: %u bits in groups of %u (need 8 or 4, a multiple of 8)", plan->bits,
                 plan->group);
    goto out;
  }
  /* The new numbering of blocks and experts, and the new config. */
  *nc = *c;
  memset(nc->layer_experts, 0, sizeof nc->layer_experts);
  memset(nc->ffn_dropped, 0, sizeof nc->ffn_dropped);
  uint32_t kept_layers = 0, max_e = 0, min_e = UINT32_MAX;
  for (uint32_t l = 0; l < L; l++) {
    bool gone = plan->drop_block && plan->drop_block[l];
    new_layer[l] = gone ? -1 : (int32_t)kept_layers;
    if (gone) continue;
    bool no_ffn = c->ffn_dropped[l] || (plan->drop_ffn && plan->drop_ffn[l]);
    nc->ffn_dropped[kept_layers] = no_ffn;
    uint32_t ke = 0;
    for (uint32_t e = 0; e < model_config_experts(c, l); e++) {
      bool eg = plan->drop_expert && plan->drop_expert[(uint64_t)l * E + e];
      new_expert[(uint64_t)l * E + e] = eg ? -1 : (int32_t)ke;
      ke += !eg;
    }
    nc->layer_experts[kept_layers] = (uint16_t)ke;
    if (E && !no_ffn) {
      max_e = ke > max_e ? ke : max_e;
      min_e = ke < min_e ? ke : min_e;
    }
    kept_layers++;
  }
  if (kept_layers == 0) {
    st = lt_fail(err, LT_E_INVALID, "the plan drops all %u blocks", L);
    goto out;
  }
  if (E && max_e && min_e < c->n_experts_used) {
    st = lt_fail(err, LT_E_INVALID, "a block keeps %u experts, fewer than the %u each token is routed to", min_e,
                 c->n_experts_used);
    goto out;
  }
  nc->n_layers = kept_layers;
  if (E && max_e) nc->n_experts = max_e;
  for (uint32_t j = 0; j < kept_layers; j++)
    if (!E || nc->ffn_dropped[j] || min_e == max_e) nc->layer_experts[j] = 0;
  nc->quant_bits = plan->bits;
  nc->quant_group = plan->bits ? plan->group : 0;
  /* The tensors, in the source's forward order. */
  for (uint32_t i = 0; i < w->n_tensors && st == LT_OK; i++) {
    const model_tensor_t *e = &w->tensors[i];
    int32_t l = e->layer, nl = l >= 0 ? new_layer[l] : -1;
    if (l >= 0 && nl < 0) continue;
    if (l >= 0 && in_ffn(e->role) && nc->ffn_dropped[nl]) continue;
    int32_t ne = e->expert >= 0 ? new_expert[(uint64_t)l * E + (uint32_t)e->expert] : -1;
    if (e->expert >= 0 && ne < 0) continue;
    char name[160];
    rename_tensor(name, sizeof name, e->name, nl, ne);
    const ft_tensor_t *t = e->t;
    if (e->role == MR_ROUTER && plan->drop_expert)
      st = add_router(&o, name, t, plan->drop_expert + (uint64_t)l * E, model_config_experts(c, (uint32_t)l), err);
    else if (is_block_linear(e->role))
      st = add_linear(&o, name, t, e, plan, calib, &sum, err);
    else
      st = add(&o, name, t->dtype, t->shape[0], t->n_dims == 2 ? t->shape[1] : 0, t->data, t->nbytes, err);
  }
  if (st == LT_OK) st = model_folder_write(dir, nc, o.t, o.n, src, NULL, err);
  sum.layers = kept_layers;
  sum.tensors = o.n;
out:
  if (summary) *summary = sum;
  out_free(&o);
  free(nc), free(new_layer), free(new_expert);
  model_file_destroy(&f);
  return st;
}
