/* Uniform weights from Hugging Face or GGUF files: one table of roles gives both names and expected shapes. */
#include "engine/model/model_file.h"
#include "engine/ops/qblock.h"
#include <dirent.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/ops/quant.h"

/* Symbolic dimensions a role's shape is made of. */
typedef enum dim_sym { D_NONE = 0, D_VOCAB, D_HIDDEN, D_Q, D_KV, D_FFN, D_EXPERTS, D_QKV, D_FFN2 } dim_sym_t;

static const char *const dim_names[] = {"",
                                        "vocab_size",
                                        "hidden_size",
                                        "heads*head_dim",
                                        "kv_heads*head_dim",
                                        "intermediate_size",
                                        "experts",
                                        "(heads+2*kv_heads)*head_dim",
                                        "2*intermediate_size"};

static const struct role_desc {
  const char *hf, *gguf; /* name patterns (layer, then expert); GGUF expert tensors are stacked */
  dim_sym_t dims[2];
} roles[MR_COUNT] = {
    [MR_TOK_EMBD] = {"model.embed_tokens.weight", "token_embd.weight", {D_VOCAB, D_HIDDEN}},
    [MR_OUT_NORM] = {"model.norm.weight", "output_norm.weight", {D_HIDDEN}},
    [MR_LM_HEAD] = {"lm_head.weight", "output.weight", {D_VOCAB, D_HIDDEN}},
    [MR_ATTN_NORM] = {"model.layers.%u.input_layernorm.weight", "blk.%u.attn_norm.weight", {D_HIDDEN}},
    [MR_WQ] = {"model.layers.%u.self_attn.q_proj.weight", "blk.%u.attn_q.weight", {D_Q, D_HIDDEN}},
    [MR_WK] = {"model.layers.%u.self_attn.k_proj.weight", "blk.%u.attn_k.weight", {D_KV, D_HIDDEN}},
    [MR_WV] = {"model.layers.%u.self_attn.v_proj.weight", "blk.%u.attn_v.weight", {D_KV, D_HIDDEN}},
    [MR_WO] = {"model.layers.%u.self_attn.o_proj.weight", "blk.%u.attn_output.weight", {D_HIDDEN, D_Q}},
    [MR_FFN_NORM] = {"model.layers.%u.post_attention_layernorm.weight", "blk.%u.ffn_norm.weight", {D_HIDDEN}},
    [MR_FFN_GATE] = {"model.layers.%u.mlp.gate_proj.weight", "blk.%u.ffn_gate.weight", {D_FFN, D_HIDDEN}},
    [MR_FFN_UP] = {"model.layers.%u.mlp.up_proj.weight", "blk.%u.ffn_up.weight", {D_FFN, D_HIDDEN}},
    [MR_FFN_DOWN] = {"model.layers.%u.mlp.down_proj.weight", "blk.%u.ffn_down.weight", {D_HIDDEN, D_FFN}},
    [MR_ROUTER] = {"model.layers.%u.block_sparse_moe.gate.weight", "blk.%u.ffn_gate_inp.weight", {D_EXPERTS, D_HIDDEN}},
    [MR_EXP_GATE] = {"model.layers.%u.block_sparse_moe.experts.%u.w1.weight",
                     "blk.%u.ffn_gate_exps.weight",
                     {D_FFN, D_HIDDEN}},
    [MR_EXP_UP] = {"model.layers.%u.block_sparse_moe.experts.%u.w3.weight",
                   "blk.%u.ffn_up_exps.weight",
                   {D_FFN, D_HIDDEN}},
    [MR_EXP_DOWN] = {"model.layers.%u.block_sparse_moe.experts.%u.w2.weight",
                     "blk.%u.ffn_down_exps.weight",
                     {D_HIDDEN, D_FFN}},
    [MR_BQ] = {"model.layers.%u.self_attn.q_proj.bias", "blk.%u.attn_q.bias", {D_Q}},
    [MR_BK] = {"model.layers.%u.self_attn.k_proj.bias", "blk.%u.attn_k.bias", {D_KV}},
    [MR_BV] = {"model.layers.%u.self_attn.v_proj.bias", "blk.%u.attn_v.bias", {D_KV}},
    [MR_WQKV] = {"model.layers.%u.self_attn.qkv_proj.weight", "blk.%u.attn_qkv.weight", {D_QKV, D_HIDDEN}},
    [MR_FFN_GATE_UP] = {"model.layers.%u.mlp.gate_up_proj.weight", "blk.%u.ffn_up.weight", {D_FFN2, D_HIDDEN}},
    [MR_POST_ATTN_NORM] = {"model.layers.%u.post_attention_layernorm.weight",
                           "blk.%u.post_attention_norm.weight",
                           {D_HIDDEN}},
    [MR_POST_FFN_NORM] = {"model.layers.%u.post_feedforward_layernorm.weight",
                          "blk.%u.post_ffw_norm.weight",
                          {D_HIDDEN}},
};

/* The Hugging Face name pattern of a role in cfg's architecture: Gemma 2 calls its norm before the MLP
 * pre_feedforward_layernorm and uses LLaMA's name for that norm (post_attention_layernorm) for the one after the
 * attention. */
static const char *role_hf(const model_config_t *c, model_role_t r) {
  if (c->arch == MODEL_ARCH_GEMMA2 && r == MR_FFN_NORM) return "model.layers.%u.pre_feedforward_layernorm.weight";
  return roles[r].hf;
}

/* Rows [r0, r0 + n) of a matrix in a file, as a tensor of its own (the same bytes: a fused tensor's parts). */
static ft_tensor_t row_slice(const ft_tensor_t *t, uint64_t r0, uint64_t n) {
  ft_tensor_t s = *t;
  uint64_t row_bytes = t->nbytes / t->shape[0];
  s.shape[0] = n;
  s.n_elems = n * t->shape[1];
  s.nbytes = n * row_bytes;
  s.data = (const uint8_t *)t->data + r0 * row_bytes;
  return s;
}

#define NAME_CAP 96 /* bytes for a canonical name, NUL included */

/* Writes pattern into buf (cap bytes) with its first "%u" replaced by a and its second by b. */
static int fill_name(char *buf, size_t cap, const char *pattern, uint32_t a, uint32_t b) {
  size_t n = 0;
  int used = 0;
  for (const char *p = pattern; *p && n + 1 < cap; p++) {
    if (p[0] == '%' && p[1] == 'u') {
      n += (size_t)snprintf(buf + n, cap - n, "%u", used++ ? b : a);
      p++;
    } else
      buf[n++] = *p;
  }
  buf[n < cap ? n : cap - 1] = '\0';
  return (int)strlen(buf);
}

bool model_role_gguf_name(model_role_t r, int32_t layer, char *buf, size_t cap) {
  if (r >= MR_COUNT) return false;
  fill_name(buf, cap, roles[r].gguf, layer < 0 ? 0 : (uint32_t)layer, 0);
  return true;
}

static uint64_t dim_value(const model_config_t *c, dim_sym_t d, uint32_t layer) {
  switch (d) {
  case D_VOCAB: return c->vocab_size;
  case D_HIDDEN: return c->hidden_size;
  case D_Q: return (uint64_t)c->n_heads * c->head_dim;
  case D_KV: return (uint64_t)c->n_kv_heads * c->head_dim;
  case D_FFN: return c->intermediate_size;
  case D_EXPERTS: return model_config_experts(c, layer);
  case D_QKV: return (uint64_t)(c->n_heads + 2ull * c->n_kv_heads) * c->head_dim;
  case D_FFN2: return 2ull * c->intermediate_size;
  case D_NONE: break;
  }
  return 0;
}

/* Where tensors come from: one of the two file kinds, looked up by name. */
typedef struct source {
  const st_file_t *st;
  const gguf_t *g;
  const char *lab;
} source_t;

static const ft_tensor_t *source_find(const source_t *src, const char *name) {
  if (src->st) return st_find(src->st, name);
  const gguf_tensor_t *gt = gguf_tensor_find(src->g, name);
  return gt ? &gt->t : NULL;
}

/* Checks a quantised matrix t (I8 or U8, docs/compression.md) of expected shape want[2] against the model's
 * quantization_config, and its scales "<name>.scales": F16 [rows, ceil(cols / group_size)]. The embedding table
 * stays floating point (the gather reads f32 or f16). */
static lt_status_t check_quantised(const ft_tensor_t *t, const source_t *src, const model_config_t *c, model_role_t r,
                                   const uint64_t *want, lt_err_t *err) {
  uint32_t bits = t->dtype == FT_I8 ? 8 : 4;
  if (!src->st || r == MR_TOK_EMBD || c->quant_bits != bits)
    return lt_fail(err, LT_E_INVALID, "%s: tensor %s has dtype %s, which needs quantization_config with %u bits (%s)",
                   src->lab, t->name, ft_dtype_str(t->dtype), bits,
                   r == MR_TOK_EMBD ? "not for the embedding table" : "docs/compression.md");
  uint64_t cols = quant_row_bytes(bits, (uint32_t)want[1]);
  if (t->n_dims != 2 || t->shape[0] != want[0] || t->shape[1] != cols) {
    char got[96], exp[96];
    uint64_t w2[2] = {want[0], cols};
    return lt_fail(err, LT_E_INVALID, "%s: quantised tensor %s has shape %s, expected %s", src->lab, t->name,
                   ft_shape_str(got, sizeof got, t->shape, t->n_dims), ft_shape_str(exp, sizeof exp, w2, 2));
  }
  char name[NAME_CAP + 8];
  snprintf(name, sizeof name, "%s.scales", t->name);
  const ft_tensor_t *sc = st_find(src->st, name);
  uint64_t G = quant_groups((uint32_t)want[1], c->quant_group);
  if (!sc || sc->dtype != FT_F16 || sc->n_dims != 2 || sc->shape[0] != want[0] || sc->shape[1] != G)
    return lt_fail(err, LT_E_INVALID, "%s: %s is missing or not F16 [%llu, %llu]", src->lab, name,
                   (unsigned long long)want[0], (unsigned long long)G);
  return LT_OK;
}

/* Finds the tensor of role r (layer, expert as the pattern needs) and checks its dtype and shape. With
 * stacked, the expected shape gets a leading n_experts dimension (GGUF MoE). Matrices may be quantised
 * (check_quantised). */
static lt_status_t fetch(ft_tensor_t *out, const source_t *src, const model_config_t *c, model_role_t r, uint32_t layer,
                         uint32_t expert, bool stacked, lt_err_t *err) {
  const struct role_desc *d = &roles[r];
  char name[NAME_CAP];
  fill_name(name, sizeof name, src->st ? role_hf(c, r) : d->gguf, layer, expert);
  const ft_tensor_t *t = source_find(src, name);
  if (!t)
    return lt_fail(err, LT_E_INVALID, "%s: tensor %s is missing (needed by %s with %u layers)", src->lab, name,
                   model_arch_str(c->arch), c->n_layers);
  bool quantised = (t->dtype == FT_I8 || t->dtype == FT_U8) && d->dims[1] && !stacked;
  lt_dtype_t qb;
  if (t->dtype != FT_F32 && t->dtype != FT_F16 && t->dtype != FT_BF16 && !ft_dtype_qblock(t->dtype, &qb) && !quantised)
    return lt_fail(err, LT_E_INVALID, "%s: tensor %s has dtype %s; weights must be F32, F16, BF16 or one of %s",
                   src->lab, name, ft_dtype_str(t->dtype), qblock_names());
  uint64_t want[3];
  const char *sym[3];
  uint32_t n = 0;
  if (stacked) want[n] = c->n_experts, sym[n++] = dim_names[D_EXPERTS];
  for (int i = 0; i < 2 && d->dims[i]; i++) want[n] = dim_value(c, d->dims[i], layer), sym[n++] = dim_names[d->dims[i]];
  if (quantised) {
    lt_status_t s = check_quantised(t, src, c, r, want, err);
    if (s == LT_OK) *out = *t;
    return s;
  }
  bool ok = t->n_dims == n;
  for (uint32_t i = 0; ok && i < n; i++) ok = t->shape[i] == want[i];
  if (!ok) {
    char got[96], exp[96], names[96] = "";
    for (uint32_t i = 0; i < n; i++)
      snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", sym[i]);
    return lt_fail(err, LT_E_INVALID, "%s: tensor %s has shape %s, expected %s (%s)", src->lab, name,
                   ft_shape_str(got, sizeof got, t->shape, t->n_dims), ft_shape_str(exp, sizeof exp, want, n), names);
  }
  *out = *t;
  return LT_OK;
}

/* Cuts expert e out of a stacked [n_experts, rows, cols] tensor. */
static ft_tensor_t expert_slice(const ft_tensor_t *s, uint32_t e, uint32_t n_experts) {
  ft_tensor_t t = *s;
  t.n_dims = 2;
  t.shape[0] = s->shape[1];
  t.shape[1] = s->shape[2];
  t.shape[2] = 1;
  t.n_elems = s->n_elems / n_experts;
  t.nbytes = s->nbytes / n_experts;
  t.data = (const uint8_t *)s->data + (uint64_t)e * t.nbytes;
  return t;
}

/* Appends one entry to the flat list, naming it canonically into the names arena. */
static void list_add(model_weights_t *w, const model_config_t *c, char **names, model_role_t r, int32_t layer,
                     int32_t expert, const ft_tensor_t *t) {
  model_tensor_t *e = &w->tensors[w->n_tensors++];
  int len = fill_name(*names, NAME_CAP, role_hf(c, r), (uint32_t)layer, (uint32_t)expert);
  *e = (model_tensor_t){*names, r, layer, expert, t};
  *names += len + 1;
}

static void build_list(model_weights_t *w, const model_config_t *c, char *names) {
  list_add(w, c, &names, MR_TOK_EMBD, -1, -1, &w->tok_embd);
  for (uint32_t l = 0; l < c->n_layers; l++) {
    model_layer_t *L = &w->layers[l];
    int32_t li = (int32_t)l;
    list_add(w, c, &names, MR_ATTN_NORM, li, -1, &L->attn_norm);
    list_add(w, c, &names, MR_WQ, li, -1, &L->wq);
    list_add(w, c, &names, MR_WK, li, -1, &L->wk);
    list_add(w, c, &names, MR_WV, li, -1, &L->wv);
    if (c->qkv_bias) {
      list_add(w, c, &names, MR_BQ, li, -1, &L->bq);
      list_add(w, c, &names, MR_BK, li, -1, &L->bk);
      list_add(w, c, &names, MR_BV, li, -1, &L->bv);
    }
    list_add(w, c, &names, MR_WO, li, -1, &L->wo);
    if (c->post_norms) list_add(w, c, &names, MR_POST_ATTN_NORM, li, -1, &L->post_attn_norm);
    if (c->ffn_dropped[l]) continue;
    list_add(w, c, &names, MR_FFN_NORM, li, -1, &L->ffn_norm);
    if (!c->n_experts) {
      list_add(w, c, &names, MR_FFN_GATE, li, -1, &L->ffn.gate);
      list_add(w, c, &names, MR_FFN_UP, li, -1, &L->ffn.up);
      list_add(w, c, &names, MR_FFN_DOWN, li, -1, &L->ffn.down);
      if (c->post_norms) list_add(w, c, &names, MR_POST_FFN_NORM, li, -1, &L->post_ffn_norm);
      continue;
    }
    list_add(w, c, &names, MR_ROUTER, li, -1, &L->router);
    for (uint32_t e = 0; e < model_config_experts(c, l); e++) {
      list_add(w, c, &names, MR_EXP_GATE, li, (int32_t)e, &L->experts[e].gate);
      list_add(w, c, &names, MR_EXP_UP, li, (int32_t)e, &L->experts[e].up);
      list_add(w, c, &names, MR_EXP_DOWN, li, (int32_t)e, &L->experts[e].down);
    }
  }
  list_add(w, c, &names, MR_OUT_NORM, -1, -1, &w->out_norm);
  if (!c->tie_word_embeddings) list_add(w, c, &names, MR_LM_HEAD, -1, -1, &w->lm_head);
}

/* Allocates w with its layers, experts, flat list and names arena in one block. */
static model_weights_t *weights_alloc(const model_config_t *c, char **names) {
  uint64_t per_layer =
      6 + (c->qkv_bias ? 3 : 0) + (c->post_norms ? 2 : 0) + (c->n_experts ? 1 + 3ull * c->n_experts : 3);
  uint64_t n_list = 3 + (uint64_t)c->n_layers * per_layer;
  uint64_t bytes = sizeof(model_weights_t) + c->n_layers * sizeof(model_layer_t) +
                   (uint64_t)c->n_layers * c->n_experts * sizeof(model_ffn_t) + n_list * sizeof(model_tensor_t) +
                   n_list * NAME_CAP;
  model_weights_t *w = calloc(1, bytes);
  if (!w) return NULL;
  uint8_t *p = (uint8_t *)(w + 1);
  w->layers = (model_layer_t *)p;
  p += c->n_layers * sizeof(model_layer_t);
  for (uint32_t l = 0; c->n_experts && l < c->n_layers; l++, p += c->n_experts * sizeof(model_ffn_t))
    w->layers[l].experts = (model_ffn_t *)p;
  w->tensors = (model_tensor_t *)p;
  *names = (char *)(w->tensors + n_list);
  w->n_layers = c->n_layers;
  return w;
}

static lt_status_t map_weights(model_weights_t **out, const model_config_t *c, const source_t *src, lt_err_t *err) {
  char *names;
  model_weights_t *w = *out = weights_alloc(c, &names);
  if (!w) return lt_fail(err, LT_E_NOMEM, "%s: out of memory for the weight list", src->lab);
  bool gguf = src->g != NULL;
  w->format = gguf ? MODEL_FORMAT_GGUF : MODEL_FORMAT_HF;
  /* llama.cpp's converter permutes LLaMA's Q and K rows into interleaved pairs; Qwen2 and Phi-3 files keep HF's
   * order (llama.cpp runs them with rotate-half RoPE). */
  w->rope_neox = !gguf || c->arch == MODEL_ARCH_QWEN2 || c->arch == MODEL_ARCH_PHI3 || c->arch == MODEL_ARCH_GEMMA2;
  lt_status_t s;
  if ((s = fetch(&w->tok_embd, src, c, MR_TOK_EMBD, 0, 0, false, err)) ||
      (s = fetch(&w->out_norm, src, c, MR_OUT_NORM, 0, 0, false, err)))
    goto fail;
  if (c->tie_word_embeddings)
    w->lm_head = w->tok_embd;
  else if ((s = fetch(&w->lm_head, src, c, MR_LM_HEAD, 0, 0, false, err)))
    goto fail;
  for (uint32_t l = 0; l < c->n_layers; l++) {
    model_layer_t *L = &w->layers[l];
    bool fused = c->arch == MODEL_ARCH_PHI3;
    if (fused) { /* the q, k and v rows of one tensor, and below the gate and up rows of another */
      ft_tensor_t qkv;
      uint64_t qd = dim_value(c, D_Q, l), kvd = dim_value(c, D_KV, l);
      if ((s = fetch(&qkv, src, c, MR_WQKV, l, 0, false, err))) goto fail;
      L->wq = row_slice(&qkv, 0, qd), L->wk = row_slice(&qkv, qd, kvd), L->wv = row_slice(&qkv, qd + kvd, kvd);
    }
    if ((s = fetch(&L->attn_norm, src, c, MR_ATTN_NORM, l, 0, false, err)) ||
        (!fused && ((s = fetch(&L->wq, src, c, MR_WQ, l, 0, false, err)) ||
                    (s = fetch(&L->wk, src, c, MR_WK, l, 0, false, err)) ||
                    (s = fetch(&L->wv, src, c, MR_WV, l, 0, false, err)))) ||
        (s = fetch(&L->wo, src, c, MR_WO, l, 0, false, err)))
      goto fail;
    if (c->post_norms && ((s = fetch(&L->post_attn_norm, src, c, MR_POST_ATTN_NORM, l, 0, false, err)) ||
                          (s = fetch(&L->post_ffn_norm, src, c, MR_POST_FFN_NORM, l, 0, false, err))))
      goto fail;
    if (c->qkv_bias &&
        ((s = fetch(&L->bq, src, c, MR_BQ, l, 0, false, err)) || (s = fetch(&L->bk, src, c, MR_BK, l, 0, false, err)) ||
         (s = fetch(&L->bv, src, c, MR_BV, l, 0, false, err))))
      goto fail;
    if (c->ffn_dropped[l]) continue; /* no post-attention norm, router, experts or MLP */
    if ((s = fetch(&L->ffn_norm, src, c, MR_FFN_NORM, l, 0, false, err))) goto fail;
    if (!c->n_experts) {
      if (fused) {
        ft_tensor_t gu;
        if ((s = fetch(&gu, src, c, MR_FFN_GATE_UP, l, 0, false, err))) goto fail;
        L->ffn.gate = row_slice(&gu, 0, c->intermediate_size);
        L->ffn.up = row_slice(&gu, c->intermediate_size, c->intermediate_size);
      }
      if ((!fused && ((s = fetch(&L->ffn.gate, src, c, MR_FFN_GATE, l, 0, false, err)) ||
                      (s = fetch(&L->ffn.up, src, c, MR_FFN_UP, l, 0, false, err)))) ||
          (s = fetch(&L->ffn.down, src, c, MR_FFN_DOWN, l, 0, false, err)))
        goto fail;
      continue;
    }
    if ((s = fetch(&L->router, src, c, MR_ROUTER, l, 0, false, err))) goto fail;
    if (gguf) {
      ft_tensor_t g3[3];
      if ((s = fetch(&g3[0], src, c, MR_EXP_GATE, l, 0, true, err)) ||
          (s = fetch(&g3[1], src, c, MR_EXP_UP, l, 0, true, err)) ||
          (s = fetch(&g3[2], src, c, MR_EXP_DOWN, l, 0, true, err)))
        goto fail;
      for (uint32_t e = 0; e < c->n_experts; e++)
        L->experts[e] = (model_ffn_t){expert_slice(&g3[0], e, c->n_experts), expert_slice(&g3[1], e, c->n_experts),
                                      expert_slice(&g3[2], e, c->n_experts)};
      continue;
    }
    for (uint32_t e = 0; e < model_config_experts(c, l); e++)
      if ((s = fetch(&L->experts[e].gate, src, c, MR_EXP_GATE, l, e, false, err)) ||
          (s = fetch(&L->experts[e].up, src, c, MR_EXP_UP, l, e, false, err)) ||
          (s = fetch(&L->experts[e].down, src, c, MR_EXP_DOWN, l, e, false, err)))
        goto fail;
  }
  build_list(w, c, names);
  return LT_OK;
fail:
  model_weights_destroy(out);
  return s;
}

lt_status_t model_weights_from_st(model_weights_t **out, const model_config_t *cfg, const st_file_t *st,
                                  lt_err_t *err) {
  source_t src = {st, NULL, st_shard_path(st, 0)};
  return map_weights(out, cfg, &src, err);
}

lt_status_t model_weights_from_gguf(model_weights_t **out, const model_config_t *cfg, const gguf_t *g, lt_err_t *err) {
  source_t src = {NULL, g, gguf_path(g)};
  return map_weights(out, cfg, &src, err);
}

void model_weights_destroy(model_weights_t **self_p) {
  if (!self_p) return;
  free(*self_p);
  *self_p = NULL;
}

/* ---- a model on disk ---- */

struct model_file {
  model_config_t cfg;
  st_file_t *st;
  gguf_t *g;
  model_weights_t *w;
};

lt_status_t model_file_open(model_file_t **out, const char *path, lt_err_t *err) {
  model_file_t *m = *out = calloc(1, sizeof *m);
  if (!m) return lt_fail(err, LT_E_NOMEM, "%s: out of memory", path);
  struct stat sb;
  lt_status_t s;
  if (stat(path, &sb) != 0)
    s = lt_fail(err, LT_E_IO, "%s: no such file or folder", path);
  else if (S_ISDIR(sb.st_mode)) {
    if (!(s = model_config_from_hf(&m->cfg, path, err)) && !(s = st_open(&m->st, path, err)))
      s = model_weights_from_st(&m->w, &m->cfg, m->st, err);
  } else {
    if (!(s = gguf_open(&m->g, path, err)) && !(s = model_config_from_gguf(&m->cfg, m->g, err)))
      s = model_weights_from_gguf(&m->w, &m->cfg, m->g, err);
  }
  if (s) model_file_destroy(out);
  return s;
}

void model_file_destroy(model_file_t **self_p) {
  if (!self_p || !*self_p) return;
  model_file_t *m = *self_p;
  model_weights_destroy(&m->w);
  st_destroy(&m->st);
  gguf_destroy(&m->g);
  free(m);
  *self_p = NULL;
}

const model_config_t *model_file_config(const model_file_t *m) { return &m->cfg; }
const model_weights_t *model_file_weights(const model_file_t *m) { return m->w; }
const gguf_t *model_file_gguf(const model_file_t *m) { return m->g; }
const st_file_t *model_file_st(const model_file_t *m) { return m->st; }

const ft_tensor_t *model_file_scales(const model_file_t *m, const ft_tensor_t *t, uint32_t *cols) {
  if (!m->st || (t->dtype != FT_I8 && t->dtype != FT_U8)) return NULL;
  /* t is one of the weights' tensors: its entry in the flat list gives the role, and so the logical width. */
  const model_tensor_t *e = NULL;
  for (uint32_t i = 0; i < m->w->n_tensors && !e; i++)
    if (m->w->tensors[i].t == t) e = &m->w->tensors[i];
  if (!e) return NULL;
  *cols = (uint32_t)dim_value(&m->cfg, roles[e->role].dims[1], (uint32_t)(e->layer < 0 ? 0 : e->layer));
  char name[NAME_CAP + 8];
  snprintf(name, sizeof name, "%s.scales", t->name);
  return st_find(m->st, name);
}

/* FNV-1a over n bytes, continuing from h. */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

static uint64_t stat_hash(uint64_t h, const char *name, const struct stat *st) {
  uint64_t v[7] = {(uint64_t)st->st_dev,         (uint64_t)st->st_ino,          (uint64_t)st->st_size,
                   (uint64_t)st->st_mtim.tv_sec, (uint64_t)st->st_mtim.tv_nsec, (uint64_t)st->st_ctim.tv_sec,
                   (uint64_t)st->st_ctim.tv_nsec};
  h = fnv(h, name, strlen(name) + 1);
  return fnv(h, v, sizeof v);
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

uint64_t model_file_stamp(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return 0;
  uint64_t h = stat_hash(0xcbf29ce484222325ull, "", &st);
  if (!S_ISDIR(st.st_mode)) return h ? h : 1;
  DIR *d = opendir(path);
  if (!d) return 0;
  char **names = NULL;
  size_t n = 0, cap = 0;
  for (struct dirent *de; (de = readdir(d));) {
    if (de->d_name[0] == '.') continue;
    if (n == cap) {
      char **nn = realloc(names, (cap = cap ? 2 * cap : 32) * sizeof *nn);
      if (!nn) break;
      names = nn;
    }
    if (!(names[n] = strdup(de->d_name))) break;
    n++;
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_name);
  for (size_t i = 0; i < n; i++) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", path, names[i]);
    if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) h = stat_hash(h, names[i], &st);
    free(names[i]);
  }
  free(names);
  return h ? h : 1;
}
