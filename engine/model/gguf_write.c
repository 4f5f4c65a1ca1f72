/* Hugging Face folder to one GGUF file (engine/model/gguf_write.h): metadata, tokenizer, tensors. */
#include "engine/model/gguf_write.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsout.h"
#include "engine/model/ftensor.h"
#include "engine/model/gguf.h"
#include "engine/model/model_file.h"
#include "engine/ops/dtype.h"
#include "engine/ops/quant.h"
#include "engine/text/tokenizer.h"

#define ALIGN 32u
#define TOKENIZER_MAX_JSON (64u << 20)

/* ggml type numbers. */
enum { T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q8_0 = 8, T_BF16 = 30 };

/* A growing byte buffer; oom latches. */
typedef struct gbuf {
  uint8_t *p;
  size_t n, cap;
  bool oom;
  uint64_t n_kv;
} gbuf_t;

static void put(gbuf_t *b, const void *d, size_t n) {
  if (b->oom) return;
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + n) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->p = p, b->cap = cap;
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
}
static void put_u32(gbuf_t *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(gbuf_t *b, uint64_t v) { put(b, &v, 8); }
static void put_str(gbuf_t *b, const char *s) {
  put_u64(b, strlen(s));
  put(b, s, strlen(s));
}
static void kv_head(gbuf_t *b, const char *key, uint32_t type) {
  put_str(b, key);
  put_u32(b, type);
  b->n_kv++;
}
static void kv_u32(gbuf_t *b, const char *key, uint32_t v) { kv_head(b, key, GGUF_U32), put_u32(b, v); }
static void kv_f32(gbuf_t *b, const char *key, float v) { kv_head(b, key, GGUF_F32), put(b, &v, 4); }
static void kv_bool(gbuf_t *b, const char *key, bool v) {
  uint8_t x = v;
  kv_head(b, key, GGUF_BOOL), put(b, &x, 1);
}
static void kv_str(gbuf_t *b, const char *key, const char *v) { kv_head(b, key, GGUF_STRING), put_str(b, v); }
static void kv_arr_head(gbuf_t *b, const char *key, uint32_t elem, uint64_t n) {
  kv_head(b, key, GGUF_ARRAY);
  put_u32(b, elem);
  put_u64(b, n);
}

/* One output tensor: GGUF name, ggml type, dims innermost first, its bytes (owned). */
typedef struct otensor {
  char name[96];
  uint32_t type, n_dims;
  uint64_t ne[3];
  uint8_t *data;
  uint64_t nbytes;
} otensor_t;

/* ---- tensors ---- */

/* Row r of a head-major [n_head * hd, ...] matrix in llama.cpp's interleaved RoPE order comes from this row of
 * Hugging Face's rotate-half order: within a head, row 2i + j is the old row j * hd / 2 + i. */
static uint64_t interleaved_src(uint64_t r, uint32_t hd) {
  uint64_t h = r / hd, w = r % hd;
  return h * hd + (w % 2) * (hd / 2) + w / 2;
}

/* Converts one weight (rows x cols, row_bytes per row in its GGUF type) row by row through conv, permuting rows when
 * heads_hd is set. */
typedef void (*row_fn)(void *ctx, uint64_t row, uint8_t *dst);

static lt_status_t rows_out(otensor_t *o, uint64_t rows, uint64_t row_bytes, uint32_t perm_hd, row_fn fn, void *ctx,
                            lt_err_t *err) {
  o->nbytes = rows * row_bytes;
  if (!(o->data = malloc(o->nbytes ? o->nbytes : 1))) return lt_fail(err, LT_E_NOMEM, "out of memory for %s", o->name);
  for (uint64_t r = 0; r < rows; r++) fn(ctx, perm_hd ? interleaved_src(r, perm_hd) : r, o->data + r * row_bytes);
  return LT_OK;
}

typedef struct plain_ctx {
  const uint8_t *src;
  uint64_t row_bytes;
} plain_ctx_t;

static void plain_row(void *ctx, uint64_t row, uint8_t *dst) {
  const plain_ctx_t *c = ctx;
  memcpy(dst, c->src + row * c->row_bytes, c->row_bytes);
}

/* Lathe's int8 / int4 rows with 32-column groups as Q8_0 / Q4_0 blocks: the same integers and f16 scales. */
typedef struct q_ctx {
  const uint8_t *q;
  const uint16_t *scales; /* f16 [rows, cols / 32] */
  uint32_t bits, cols;
} q_ctx_t;

static void q_row(void *ctx, uint64_t row, uint8_t *dst) {
  const q_ctx_t *c = ctx;
  uint32_t G = c->cols / 32;
  for (uint32_t g = 0; g < G; g++) {
    uint16_t d;
    memcpy(&d, &c->scales[row * G + g], 2);
    uint8_t *blk = dst + (uint64_t)g * (c->bits == 8 ? 34 : 18);
    memcpy(blk, &d, 2);
    for (uint32_t j = 0; j < 32; j++) {
      int32_t v = quant_int(c->q, c->bits, c->cols, (uint32_t)row, g * 32 + j);
      if (c->bits == 8)
        blk[2 + j] = (uint8_t)(int8_t)v;
      else if (j < 16)
        blk[2 + j] = (uint8_t)((v + 8) & 0xf); /* Q4_0: w = d (q - 8); element j < 16 in the low nibble of byte j */
      else
        blk[2 + j - 16] |= (uint8_t)(((v + 8) & 0xf) << 4);
    }
  }
}

/* A quantised row dequantised (q * s is exact in f32). */
static void deq_row(void *ctx, uint64_t row, uint8_t *dst) {
  const q_ctx_t *c = ctx;
  uint32_t G = (c->cols + 31) / 32;
  for (uint32_t k = 0; k < c->cols; k++) {
    float v =
        (float)quant_int(c->q, c->bits, c->cols, (uint32_t)row, k) * dtype_half_to_float(c->scales[row * G + k / 32]);
    memcpy(dst + 4ull * k, &v, 4);
  }
}

static lt_status_t tensor_out(otensor_t *o, const model_file_t *f, const model_config_t *c, const model_tensor_t *e,
                              bool permute, lt_err_t *err) {
  const ft_tensor_t *t = e->t;
  if (!model_role_gguf_name(e->role, e->layer, o->name, sizeof o->name))
    return lt_fail(err, LT_E_UNSUPPORTED, "%s has no GGUF name", e->name);
  uint32_t perm = 0;
  if (permute && (e->role == MR_WQ || e->role == MR_WK)) perm = c->head_dim;
  if (t->n_dims == 1) { /* norms and biases: F32 */
    o->type = T_F32, o->n_dims = 1, o->ne[0] = t->shape[0];
    o->nbytes = t->n_elems * 4;
    if (!(o->data = malloc(o->nbytes))) return lt_fail(err, LT_E_NOMEM, "out of memory for %s", o->name);
    lt_status_t st = ft_tensor_to_f32(t, (float *)o->data, err);
    bool norm = e->role == MR_OUT_NORM || e->role == MR_ATTN_NORM || e->role == MR_FFN_NORM ||
                e->role == MR_POST_ATTN_NORM || e->role == MR_POST_FFN_NORM;
    if (st == LT_OK && norm && c->norm_plus_one) /* Gemma's offsets from 1: llama.cpp's gemma2 holds 1 + w */
      for (uint64_t i = 0; i < t->n_elems; i++) ((float *)o->data)[i] += 1.0f;
    return st;
  }
  uint64_t rows = t->shape[0];
  o->n_dims = 2;
  o->ne[1] = rows;
  if (t->dtype == FT_I8 || t->dtype == FT_U8) {
    uint32_t cols = 0;
    const ft_tensor_t *sc = model_file_scales(f, t, &cols);
    if (!sc || sc->dtype != FT_F16) return lt_fail(err, LT_E_INVALID, "%s: quantised without f16 scales", e->name);
    if (c->quant_group != 32)
      return lt_fail(err, LT_E_UNSUPPORTED,
                     "%s: GGUF's Q8_0 / Q4_0 hold groups of 32 columns; this model is quantised in groups of %u "
                     "(compress with --group 32)",
                     e->name, c->quant_group);
    q_ctx_t qc = {t->data, sc->data, t->dtype == FT_I8 ? 8 : 4, cols};
    if (cols % 32) { /* rows that are no whole number of blocks: F32 holding q * s exactly (llama.cpp falls back too) */
      o->type = T_F32;
      o->ne[0] = cols;
      return rows_out(o, rows, (uint64_t)cols * 4, perm, deq_row, &qc, err);
    }
    o->type = qc.bits == 8 ? T_Q8_0 : T_Q4_0;
    o->ne[0] = cols;
    return rows_out(o, rows, (uint64_t)cols / 32 * (qc.bits == 8 ? 34 : 18), perm, q_row, &qc, err);
  }
  if (t->dtype != FT_F32 && t->dtype != FT_F16 && t->dtype != FT_BF16)
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: dtype %s has no GGUF form here", e->name, ft_dtype_str(t->dtype));
  o->type = t->dtype == FT_F32 ? T_F32 : t->dtype == FT_F16 ? T_F16 : T_BF16;
  o->ne[0] = t->shape[1];
  plain_ctx_t pc = {t->data, t->nbytes / rows};
  return rows_out(o, rows, pc.row_bytes, perm, plain_row, &pc, err);
}

/* Joins the data of ts[idx[0..n)] (ascending indices, one type; one size too when same_size) into ts[idx[0]], in
 * that order, and removes the others from the list; the caller names the result and sets its dims. `what` names
 * the parts in the error. */
static lt_status_t concat_out(otensor_t *ts, uint32_t *nt, const uint32_t *idx, uint32_t n, bool same_size,
                              const char *what, lt_err_t *err) {
  uint64_t total = 0;
  for (uint32_t k = 0; k < n; k++) {
    const otensor_t *o = &ts[idx[k]];
    if (o->type != ts[idx[0]].type || (same_size && o->nbytes != ts[idx[0]].nbytes))
      return lt_fail(err, LT_E_UNSUPPORTED, "%s differ in type or shape", what);
    total += o->nbytes;
  }
  uint8_t *all = malloc(total ? total : 1);
  if (!all) return lt_fail(err, LT_E_NOMEM, "out of memory joining %s", what);
  uint64_t at = 0;
  for (uint32_t k = 0; k < n; k++) memcpy(all + at, ts[idx[k]].data, ts[idx[k]].nbytes), at += ts[idx[k]].nbytes;
  free(ts[idx[0]].data);
  ts[idx[0]].data = all, ts[idx[0]].nbytes = total;
  for (uint32_t k = n - 1; k >= 1; k--) { /* highest index first, so the lower ones stay where they are */
    uint32_t j = idx[k];
    free(ts[j].data);
    memmove(&ts[j], &ts[j + 1], (*nt - j - 1) * sizeof *ts);
    (*nt)--;
  }
  return LT_OK;
}

/* ---- tokenizer ---- */

/* The token string of each id (NULL where none), from the vocabulary and the added tokens; caller frees the array
 * (the strings belong to tok). */
static const char **token_table(const json_t *tok, uint64_t *n_out, uint8_t **special_out) {
  const json_t *vocab = json_object_get(json_object_get(tok, "model"), "vocab"),
               *added = json_object_get(tok, "added_tokens");
  uint64_t n = 0;
  const char *k;
  json_t *v;
  size_t i;
  json_object_foreach((json_t *)vocab, k,
                      v) if (json_is_integer(v) && json_integer_value(v) >= 0 && (uint64_t)json_integer_value(v) >= n)
      n = (uint64_t)json_integer_value(v) + 1;
  json_array_foreach(added, i, v) {
    json_int_t id = json_integer_value(json_object_get(v, "id"));
    if (id >= 0 && (uint64_t)id >= n) n = (uint64_t)id + 1;
  }
  const char **t = calloc(n + 1, sizeof *t);
  uint8_t *sp = calloc(n + 1, 1);
  if (!t || !sp) {
    free(t), free(sp);
    return NULL;
  }
  json_object_foreach((json_t *)vocab, k, v) if (json_is_integer(v) && json_integer_value(v) >= 0)
      t[json_integer_value(v)] = k;
  json_array_foreach(added, i, v) {
    json_int_t id = json_integer_value(json_object_get(v, "id"));
    const char *s = json_string_value(json_object_get(v, "content"));
    if (id >= 0 && s) t[id] = s, sp[id] = json_is_true(json_object_get(v, "special")) ? 2 : 1;
  }
  *n_out = n;
  *special_out = sp;
  return t;
}

/* The merge i as "a b" into buf (merges are "a b" strings or [a, b] pairs). */
static const char *merge_str(const json_t *m, char *buf, size_t cap) {
  if (json_is_string(m)) return json_string_value(m);
  const char *a = json_string_value(json_array_get(m, 0)), *b = json_string_value(json_array_get(m, 1));
  if (!a || !b) return NULL;
  snprintf(buf, cap, "%s %s", a, b);
  return buf;
}

static bool has_type(const json_t *node, const char *type) {
  if (!node) return false;
  if (json_is_string(json_object_get(node, "type")) && !strcmp(json_string_value(json_object_get(node, "type")), type))
    return true;
  const json_t *list = json_object_get(node, json_object_get(node, "normalizers") ? "normalizers" : "pretokenizers");
  size_t i;
  json_t *e;
  json_array_foreach(list, i, e) if (has_type(e, type)) return true;
  return false;
}

/* The Split pre-tokenizer's regex in node (itself or inside a Sequence), or NULL when there is none. */
static const char *split_regex(const json_t *node) {
  const char *type = json_string_value(json_object_get(node, "type"));
  if (type && !strcmp(type, "Split"))
    return json_string_value(json_object_get(json_object_get(node, "pattern"), "Regex"));
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(node, "pretokenizers"), i, e) {
    const char *r = split_regex(e);
    if (r) return r;
  }
  return NULL;
}

/* Whether tokenizer.json's post-processor puts the special token `bos` first in a single sequence (a
 * TemplateProcessing, alone or inside a Sequence of processors): how a Hugging Face tokenizer without an
 * add_bos_token setting says it adds BOS. */
static bool template_adds_bos(const json_t *pp, const char *bos) {
  if (!pp || !bos) return false;
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(pp, "processors"), i, e) if (template_adds_bos(e, bos)) return true;
  const char *type = json_string_value(json_object_get(pp, "type"));
  if (!type || strcmp(type, "TemplateProcessing") != 0) return false;
  const json_t *first = json_array_get(json_object_get(pp, "single"), 0);
  const char *id = json_string_value(json_object_get(json_object_get(first, "SpecialToken"), "id"));
  return id && !strcmp(id, bos);
}

static lt_status_t tokenizer_kv(gbuf_t *b, const char *src, const model_config_t *c, lt_err_t *err) {
  char path[4200];
  snprintf(path, sizeof path, "%s/tokenizer.json", src);
  json_t *tok = NULL, *cfg = NULL;
  lt_status_t st = ft_json_load(&tok, path, TOKENIZER_MAX_JSON, err);
  if (st != LT_OK) return st;
  snprintf(path, sizeof path, "%s/tokenizer_config.json", src);
  if (ft_json_load(&cfg, path, TOKENIZER_MAX_JSON, NULL) != LT_OK) cfg = NULL;
  const json_t *model = json_object_get(tok, "model"), *merges = json_object_get(model, "merges");
  const char *type = json_string_value(json_object_get(model, "type"));
  bool byte_level = has_type(json_object_get(tok, "pre_tokenizer"), "ByteLevel");
  bool spm = !byte_level && json_is_true(json_object_get(model, "byte_fallback"));
  uint64_t n = 0;
  uint8_t *special = NULL;
  const char **t = NULL;
  float *scores = NULL;
  if (!type || strcmp(type, "BPE") || (!byte_level && !spm)) {
    st = lt_fail(err, LT_E_UNSUPPORTED,
                 "%s/tokenizer.json: only byte-level BPE and SentencePiece-style BPE with byte fallback have a GGUF "
                 "form here",
                 src);
    goto out;
  }
  if (!(t = token_table(tok, &n, &special))) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory reading the vocabulary");
    goto out;
  }
  /* The embedding may have more rows than the tokenizer has tokens: llama.cpp wants one token per row. */
  uint64_t V = c->vocab_size > n ? c->vocab_size : n;
  if (V != c->vocab_size) {
    st = lt_fail(err, LT_E_INVALID, "%s: the tokenizer has %llu tokens, the model %u rows", src, (unsigned long long)n,
                 c->vocab_size);
    goto out;
  }
  const char *pre = spm ? NULL : tok_pre_name(split_regex(json_object_get(tok, "pre_tokenizer")));
  if (!spm && !pre) {
    st = lt_fail(err, LT_E_UNSUPPORTED,
                 "%s/tokenizer.json: its split pattern has no GGUF pre-tokenizer name here (known: GPT-2's, Llama 3's, "
                 "Qwen2's)",
                 src);
    goto out;
  }
  kv_str(b, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
  if (!spm) kv_str(b, "tokenizer.ggml.pre", pre);
  char pad[32];
  kv_arr_head(b, "tokenizer.ggml.tokens", GGUF_STRING, V);
  for (uint64_t i = 0; i < V; i++) {
    if (!t[i < n ? i : 0] || i >= n) snprintf(pad, sizeof pad, "[PAD%llu]", (unsigned long long)i);
    put_str(b, i < n && t[i] ? t[i] : pad);
  }
  /* Token types: 1 normal, 2 unknown, 3 control (special added tokens), 4 user-defined, 5 unused, 6 byte. */
  const char *unk = json_string_value(json_object_get(model, "unk_token"));
  kv_arr_head(b, "tokenizer.ggml.token_type", GGUF_I32, V);
  for (uint64_t i = 0; i < V; i++) {
    int32_t ty = 1;
    if (i >= n || !t[i])
      ty = 5;
    else if (special[i] == 2)
      ty = 3;
    else if (special[i] == 1)
      ty = 4;
    else if (unk && !strcmp(t[i], unk))
      ty = 2;
    else if (spm && strlen(t[i]) == 6 && !strncmp(t[i], "<0x", 3) && t[i][5] == '>')
      ty = 6;
    put(b, &ty, 4);
  }
  if (spm) { /* SentencePiece merges the pair whose result scores highest: earlier BPE merges score higher */
    if (!(scores = calloc(V, sizeof *scores))) {
      st = lt_fail(err, LT_E_NOMEM, "out of memory");
      goto out;
    }
    const json_t *vocab = json_object_get(model, "vocab");
    size_t i;
    json_t *m;
    char buf[512], joined[512];
    json_array_foreach(merges, i, m) {
      const char *s = merge_str(m, buf, sizeof buf), *sp = s ? strchr(s, ' ') : NULL;
      if (!sp) continue;
      snprintf(joined, sizeof joined, "%.*s%s", (int)(sp - s), s, sp + 1);
      json_int_t id = json_integer_value(json_object_get(vocab, joined));
      if (json_object_get(vocab, joined) && id >= 0 && (uint64_t)id < V && scores[id] == 0)
        scores[id] = -(float)(i + 1);
    }
    kv_arr_head(b, "tokenizer.ggml.scores", GGUF_F32, V);
    put(b, scores, V * 4);
    kv_bool(b, "tokenizer.ggml.add_space_prefix", has_type(json_object_get(tok, "normalizer"), "Prepend"));
    if (unk) {
      json_int_t id = json_integer_value(json_object_get(json_object_get(model, "vocab"), unk));
      if (id >= 0) kv_u32(b, "tokenizer.ggml.unknown_token_id", (uint32_t)id);
    }
  } else {
    size_t nm = json_array_size(merges), i;
    json_t *m;
    char buf[512];
    kv_arr_head(b, "tokenizer.ggml.merges", GGUF_STRING, nm);
    json_array_foreach(merges, i, m) {
      const char *s = merge_str(m, buf, sizeof buf);
      put_str(b, s ? s : "");
    }
  }
  if (c->bos_id >= 0) kv_u32(b, "tokenizer.ggml.bos_token_id", (uint32_t)c->bos_id);
  if (c->n_eos) kv_u32(b, "tokenizer.ggml.eos_token_id", (uint32_t)c->eos_ids[0]);
  /* BOS as the Hugging Face tokenizer adds it: its add_bos_token setting, else its post-processor's template,
   * else SentencePiece's habit (llama.cpp assumes none for byte-level vocabularies without this key). */
  const json_t *add_bos = json_object_get(cfg, "add_bos_token");
  const char *bos_text = c->bos_id >= 0 && (uint64_t)c->bos_id < n ? t[c->bos_id] : NULL;
  kv_bool(b, "tokenizer.ggml.add_bos_token",
          add_bos ? json_is_true(add_bos) : template_adds_bos(json_object_get(tok, "post_processor"), bos_text) || spm);
  const char *tmpl = json_string_value(json_object_get(cfg, "chat_template"));
  if (tmpl) kv_str(b, "tokenizer.chat_template", tmpl);
  if (b->oom) st = lt_fail(err, LT_E_NOMEM, "out of memory writing the tokenizer");
out:
  free(t), free(special), free(scores);
  json_decref(tok);
  json_decref(cfg);
  return st;
}

/* ---- the file ---- */

lt_status_t model_export_gguf(const char *src, const char *out_path, lt_err_t *err) {
  model_file_t *f = NULL;
  lt_status_t st = model_file_open(&f, src, err);
  if (st != LT_OK) return st;
  const model_config_t *c = model_file_config(f);
  const model_weights_t *w = model_file_weights(f);
  gbuf_t kv = {0}, info = {0};
  otensor_t *ts = NULL;
  uint32_t nt = 0;
  util_out_t out = {0};
  /* Phi-3 goes out as llama.cpp's phi3 (fused tensors, a window key); a Mistral as llama, which has no window;
   * Gemma 2 as gemma2 (a window key, sliding blocks first then every other one). */
  bool phi3 = c->arch == MODEL_ARCH_PHI3, gemma2 = c->arch == MODEL_ARCH_GEMMA2;
  const char *arch = c->arch == MODEL_ARCH_QWEN2 ? "qwen2" : phi3 ? "phi3" : gemma2 ? "gemma2" : "llama";
  if (w->format != MODEL_FORMAT_HF) {
    st = lt_fail(err, LT_E_UNSUPPORTED, "%s: GGUF output is written from Hugging Face folders", src);
    goto done;
  }
  bool has_window = false, gemma2_order = true;
  for (uint32_t l = 0; l < c->n_layers; l++) has_window |= model_config_window(c, l) != c->sliding_window;
  has_window |= c->sliding_window && !phi3; /* phi3 holds one window for every block */
  for (uint32_t l = 0; l < c->n_layers; l++) gemma2_order &= c->layer_full[l] == (l % 2 == 1);
  float g2_scale = model_config_gemma2_gguf_scale(c); /* llama.cpp's gemma2 has no key for it */
  if (gemma2) has_window = false;
  bool uneven = false;
  for (uint32_t l = 0; l < c->n_layers; l++) uneven |= model_config_experts(c, l) != c->n_experts;
  const char *why = uneven                    ? "experts dropped unevenly across blocks"
                    : gemma2 && !gemma2_order ? "Gemma 2 with other than a sliding block then a global one in turn"
                    : gemma2 && fabsf(model_config_attn_scale(c) - g2_scale) > 1e-6f * g2_scale
                        ? "Gemma 2 with a query_pre_attn_scalar other than head_dim (llama.cpp's gemma2 has no key for "
                          "it)"
                    : gemma2 && !c->tie_word_embeddings ? "Gemma 2 with an output head of its own"
                    : gemma2 && (!(c->attn_softcap > 0) || !(c->final_softcap > 0)) ? "Gemma 2 without soft-capping"
                    : c->rope_scaling.type                                          ? "RoPE scaling"
                    : has_window                 ? "a sliding window (llama.cpp's llama has none)"
                    : c->rope_dim != c->head_dim ? "partial RoPE"
                    : c->head_dim % 2            ? "an odd head size"
                                                 : NULL;
  for (uint32_t l = 0; !why && l < c->n_layers; l++)
    if (c->ffn_dropped[l]) why = "a block without its feed-forward sub-layer";
  if (why) {
    st = lt_fail(err, LT_E_UNSUPPORTED, "%s: %s has no GGUF form here", src, why);
    goto done;
  }
  /* Metadata. */
  char key[128];
  const char *base = strrchr(src, '/');
  kv_str(&kv, "general.architecture", arch);
  kv_str(&kv, "general.name", base && base[1] ? base + 1 : src);
#define KV_U32(k, v) (snprintf(key, sizeof key, "%s." k, arch), kv_u32(&kv, key, (v)))
#define KV_F32(k, v) (snprintf(key, sizeof key, "%s." k, arch), kv_f32(&kv, key, (v)))
  KV_U32("context_length", c->max_position);
  KV_U32("embedding_length", c->hidden_size);
  KV_U32("feed_forward_length", c->intermediate_size);
  KV_U32("block_count", c->n_layers);
  KV_U32("attention.head_count", c->n_heads);
  KV_U32("attention.head_count_kv", c->n_kv_heads);
  KV_U32("attention.key_length", c->head_dim);
  KV_U32("attention.value_length", c->head_dim);
  KV_U32("rope.dimension_count", c->rope_dim);
  KV_U32("vocab_size", c->vocab_size);
  if (phi3 && c->sliding_window) KV_U32("attention.sliding_window", c->sliding_window);
  if (gemma2) { /* no window: one as long as the context */
    KV_U32("attention.sliding_window", c->sliding_window ? c->sliding_window : c->max_position);
    KV_F32("attn_logit_softcapping", c->attn_softcap);
    KV_F32("final_logit_softcapping", c->final_softcap);
  }
  if (c->n_experts) {
    KV_U32("expert_count", c->n_experts);
    KV_U32("expert_used_count", c->n_experts_used);
  }
  KV_F32("rope.freq_base", (float)c->rope_theta);
  KV_F32("attention.layer_norm_rms_epsilon", c->rms_norm_eps);
#undef KV_U32
#undef KV_F32
  /* llama.cpp's file types: 0 all F32, 1 mostly F16, 2 mostly Q4_0, 7 mostly Q8_0, 32 mostly BF16. */
  uint32_t ftype = c->quant_bits == 8 ? 7 : c->quant_bits == 4 ? 2 : 0;
  if ((st = tokenizer_kv(&kv, src, c, err)) != LT_OK) goto done;
  /* Tensors. */
  if (!(ts = calloc(w->n_tensors + 1, sizeof *ts))) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (uint32_t i = 0; i < w->n_tensors && st == LT_OK; i++, nt++)
    st = tensor_out(&ts[nt], f, c, &w->tensors[i], c->arch != MODEL_ARCH_QWEN2 && !phi3 && !gemma2, err);
  if (st != LT_OK) goto done;
  /* Phi-3: each block's q, k, v rows fused into attn_qkv and its gate, up rows into ffn_up, as llama.cpp holds them. */
  for (uint32_t l = 0; phi3 && l < c->n_layers && st == LT_OK; l++) {
    static const char *const parts[2][4] = {{"attn_q", "attn_k", "attn_v", "attn_qkv"},
                                            {"ffn_gate", "ffn_up", NULL, "ffn_up"}};
    for (int g = 0; g < 2 && st == LT_OK; g++) {
      uint32_t idx[3], n = 0, want_n = parts[g][2] ? 3 : 2;
      uint64_t rows = 0;
      for (uint32_t k = 0; k < want_n; k++) {
        char want[96];
        snprintf(want, sizeof want, "blk.%u.%s.weight", l, parts[g][k]);
        for (uint32_t i = 0; i < nt; i++)
          if (!strcmp(ts[i].name, want)) idx[n++] = i, rows += ts[i].ne[1];
      }
      char what[96];
      snprintf(what, sizeof what, "block %u: the parts of %s", l, parts[g][3]);
      if (n != want_n) {
        st = lt_fail(err, LT_E_UNSUPPORTED, "%s are missing", what);
        break;
      }
      if ((st = concat_out(ts, &nt, idx, n, false, what, err)) != LT_OK) break;
      snprintf(ts[idx[0]].name, sizeof ts[idx[0]].name, "blk.%u.%s.weight", l, parts[g][3]);
      ts[idx[0]].ne[1] = rows;
    }
  }
  if (st != LT_OK) goto done;
  /* A block's experts are one GGUF tensor [experts, rows, cols]: the entries of the same name, stacked in order. */
  uint32_t *same = malloc((nt + 1) * sizeof *same);
  if (!same) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (uint32_t i = 0; i < nt && st == LT_OK; i++) {
    uint32_t n = 0;
    for (uint32_t j = i; j < nt; j++)
      if (!strcmp(ts[j].name, ts[i].name)) same[n++] = j;
    if (n == 1) continue;
    char what[128];
    snprintf(what, sizeof what, "%s: the experts", ts[i].name);
    if ((st = concat_out(ts, &nt, same, n, true, what, err)) == LT_OK) ts[i].n_dims = 3, ts[i].ne[2] = n;
  }
  free(same);
  if (st != LT_OK) goto done;
  if (!ftype)
    for (uint32_t i = 0; i < nt; i++)
      if (ts[i].n_dims == 2 && ts[i].type != T_F32) ftype = ts[i].type == T_F16 ? 1 : 32;
  kv_u32(&kv, "general.file_type", ftype);
  uint64_t off = 0;
  for (uint32_t i = 0; i < nt; i++) {
    put_str(&info, ts[i].name);
    put_u32(&info, ts[i].n_dims);
    for (uint32_t d = 0; d < ts[i].n_dims; d++) put_u64(&info, ts[i].ne[d]);
    put_u32(&info, ts[i].type);
    put_u64(&info, off);
    off += (ts[i].nbytes + ALIGN - 1) / ALIGN * ALIGN;
  }
  if (kv.oom || info.oom) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  if ((st = util_out_open(&out, out_path, 0644, err)) != LT_OK) goto done;
  uint8_t head[24] = {'G', 'G', 'U', 'F'}, zeros[ALIGN] = {0};
  uint32_t version = 3;
  uint64_t n_t = nt, n_kv = kv.n_kv;
  memcpy(head + 4, &version, 4), memcpy(head + 8, &n_t, 8), memcpy(head + 16, &n_kv, 8);
  size_t hdr = sizeof head + kv.n + info.n;
  bool ok = fwrite(head, sizeof head, 1, out.f) == 1 && fwrite(kv.p, 1, kv.n, out.f) == kv.n &&
            fwrite(info.p, 1, info.n, out.f) == info.n &&
            fwrite(zeros, 1, (ALIGN - hdr % ALIGN) % ALIGN, out.f) == (ALIGN - hdr % ALIGN) % ALIGN;
  for (uint32_t i = 0; ok && i < nt; i++) {
    uint64_t padn = (ALIGN - ts[i].nbytes % ALIGN) % ALIGN;
    ok = fwrite(ts[i].data, 1, ts[i].nbytes, out.f) == ts[i].nbytes && fwrite(zeros, 1, padn, out.f) == padn;
  }
  st = ok ? util_out_commit(&out, err) : lt_fail(err, LT_E_IO, "%s: write failed", out_path);
done:
  util_out_abort(&out);
  for (uint32_t i = 0; ts && i < nt; i++) free(ts[i].data);
  free(ts), free(kv.p), free(info.p);
  model_file_destroy(&f);
  return st;
}
