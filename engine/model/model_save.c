/* Writing a model on the device back out as a Hugging Face folder. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/model/model.h"
#include "engine/text/jsonl.h"
#include "common/fsout.h"
#include "engine/ops/qblock.h"
#include "engine/ops/quant.h"
#include "engine/ops/dtype.h"
#include "engine/model/safetensors.h"

#define DEFAULT_SHARD (2ull << 30)

json_t *model_config_json(const model_config_t *c) {
  json_t *j = json_object();
  bool moe = c->arch == MODEL_ARCH_MIXTRAL;
  /* A Phi-3 is saved with its q, k, v and gate, up matrices apart, as LLaMA names them: that is exactly a Mistral
   * (same window, no RoPE scaling), so it is written as one, which transformers loads as it is. */
  model_arch_t as = c->arch == MODEL_ARCH_PHI3 ? MODEL_ARCH_MISTRAL : c->arch;
  json_object_set_new(j, "architectures", json_pack("[s]", model_arch_str(as)));
  json_object_set_new(j, "model_type", json_string(model_arch_type(as)));
  json_object_set_new(j, "hidden_size", json_integer(c->hidden_size));
  json_object_set_new(j, "intermediate_size", json_integer(c->intermediate_size));
  json_object_set_new(j, "num_hidden_layers", json_integer(c->n_layers));
  json_object_set_new(j, "num_attention_heads", json_integer(c->n_heads));
  json_object_set_new(j, "num_key_value_heads", json_integer(c->n_kv_heads));
  json_object_set_new(j, "head_dim", json_integer(c->head_dim));
  json_object_set_new(j, "vocab_size", json_integer(c->vocab_size));
  json_object_set_new(j, "max_position_embeddings", json_integer(c->max_position));
  json_object_set_new(j, "rms_norm_eps", json_real(c->rms_norm_eps));
  json_object_set_new(j, "rope_theta", json_real(c->rope_theta));
  if (c->rope_scaling.type == 1)
    json_object_set_new(j, "rope_scaling",
                        json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor",
                                  (double)c->rope_scaling.factor, "low_freq_factor",
                                  (double)c->rope_scaling.low_freq_factor, "high_freq_factor",
                                  (double)c->rope_scaling.high_freq_factor, "original_max_position_embeddings",
                                  (json_int_t)c->rope_scaling.original_max_position));
  json_object_set_new(j, "hidden_act", json_string("silu"));
  json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
  json_object_set_new(j, "attention_bias", json_false());
  json_object_set_new(j, "mlp_bias", json_false());
  if (c->bos_id >= 0) json_object_set_new(j, "bos_token_id", json_integer(c->bos_id));
  if (c->n_eos == 1)
    json_object_set_new(j, "eos_token_id", json_integer(c->eos_ids[0]));
  else if (c->n_eos > 1) {
    json_t *a = json_array();
    for (uint32_t i = 0; i < c->n_eos; i++) json_array_append_new(a, json_integer(c->eos_ids[i]));
    json_object_set_new(j, "eos_token_id", a);
  }
  if (moe) {
    json_object_set_new(j, "num_local_experts", json_integer(c->n_experts));
    json_object_set_new(j, "num_experts_per_tok", json_integer(c->n_experts_used));
  }
  if (c->arch == MODEL_ARCH_GEMMA2) {
    json_object_set_new(j, "hidden_activation", json_string("gelu_pytorch_tanh"));
    json_object_set_new(j, "hidden_act", json_string("gelu_pytorch_tanh"));
    /* attn_scale is query_pre_attn_scalar^-1/2 in f32: the scalar comes back to within rounding (an integer). */
    double qpas = 1.0 / ((double)c->attn_scale * c->attn_scale);
    json_object_set_new(j, "query_pre_attn_scalar",
                        fabs(qpas - round(qpas)) < 1e-3 * qpas ? json_integer((json_int_t)round(qpas))
                                                               : json_real(qpas));
    json_object_set_new(j, "attn_logit_softcapping", c->attn_softcap > 0 ? json_real(c->attn_softcap) : json_null());
    json_object_set_new(j, "final_logit_softcapping", c->final_softcap > 0 ? json_real(c->final_softcap) : json_null());
    json_t *types = json_array();
    for (uint32_t l = 0; l < c->n_layers; l++)
      json_array_append_new(types, json_string(c->layer_full[l] ? "full_attention" : "sliding_attention"));
    json_object_set_new(j, "layer_types", types);
  }
  if (c->sliding_window)
    json_object_set_new(j, "sliding_window", json_integer(c->sliding_window));
  else if (as == MODEL_ARCH_MISTRAL || as == MODEL_ARCH_MIXTRAL || as == MODEL_ARCH_GEMMA2)
    json_object_set_new(j, "sliding_window", json_null()); /* absent would mean Mistral's default window */
  json_object_set_new(j, "torch_dtype", json_string("float32"));
  /* Lathe's compression fields (docs/compression.md). */
  if (c->quant_bits)
    json_object_set_new(j, "quantization_config",
                        json_pack("{s:s, s:i, s:i}", "quant_method", "lathe_rtn", "bits", (json_int_t)c->quant_bits,
                                  "group_size", (json_int_t)c->quant_group));
  json_t *dropped = json_array(), *per = json_array();
  bool uneven = false;
  for (uint32_t l = 0; l < c->n_layers; l++) {
    if (c->ffn_dropped[l]) json_array_append_new(dropped, json_integer(l));
    json_array_append_new(per, json_integer(model_config_experts(c, l)));
    uneven |= model_config_experts(c, l) != c->n_experts;
  }
  if (json_array_size(dropped))
    json_object_set_new(j, "lathe_dropped_moe_layers", dropped);
  else
    json_decref(dropped);
  if (uneven)
    json_object_set_new(j, "lathe_experts_per_layer", per);
  else
    json_decref(per);
  return j;
}

/* Copies src_dir/name to dir/name when it exists; a missing source file is not an error. */
static lt_status_t copy_if_present(const char *src_dir, const char *dir, const char *name, lt_err_t *err) {
  char from[4096], to[4096];
  snprintf(from, sizeof from, "%s/%s", src_dir, name);
  snprintf(to, sizeof to, "%s/%s", dir, name);
  FILE *in = fopen(from, "rb");
  if (!in) return LT_OK;
  util_out_t out;
  if (util_out_open(&out, to, 0644, err) != LT_OK) {
    fclose(in);
    return LT_E_IO;
  }
  char buf[65536];
  size_t n;
  bool ok = true;
  while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out.f) == n;
  ok = !ferror(in) && ok;
  fclose(in);
  if (!ok) {
    util_out_abort(&out);
    return lt_fail(err, LT_E_IO, "copying %s to %s failed", from, to);
  }
  return util_out_commit(&out, err);
}

/* Creates dir and any missing parents, as mkdir -p does. */
static lt_status_t make_dirs(const char *dir, lt_err_t *err) {
  char p[4096];
  if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
    return lt_fail(err, LT_E_LIMIT, "path too long: %.64s...", dir);
  for (char *s = p + 1;; s++) {
    bool end = *s == '\0';
    if (*s != '/' && !end) continue;
    *s = '\0';
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
      return lt_fail(err, LT_E_IO, "cannot create %s: %s", p, strerror(errno));
    if (end) return LT_OK;
    *s = '/';
  }
}

lt_status_t model_folder_write(const char *dir, const model_config_t *cfg, const ft_tensor_t *tensors, uint32_t n,
                               const char *src_dir, const model_save_opts_t *opts, lt_err_t *err) {
  lt_status_t st = make_dirs(dir, err);
  if (st != LT_OK) return st;
  const char *meta[34] = {"format", "pt"};
  uint32_t n_meta = 1;
  for (uint32_t k = 0; opts && k < opts->n_meta && n_meta < 17; k++, n_meta++) {
    meta[2 * n_meta] = opts->meta[2 * k];
    meta[2 * n_meta + 1] = opts->meta[2 * k + 1];
  }
  uint64_t shard = opts && opts->max_shard_bytes ? opts->max_shard_bytes : DEFAULT_SHARD;
  st = st_write_sharded(dir, tensors, n, shard, meta, n_meta, err);
  if (st == LT_OK) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *j = model_config_json(cfg);
    st = jsonl_write_file(path, j, JSON_INDENT(2) | JSON_PRESERVE_ORDER, err);
    json_decref(j);
  }
  struct stat sb;
  if (st == LT_OK && src_dir && stat(src_dir, &sb) == 0 && S_ISDIR(sb.st_mode) && strcmp(src_dir, dir) != 0) {
    const char *names[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (size_t k = 0; k < 3 && st == LT_OK; k++) st = copy_if_present(src_dir, dir, names[k], err);
  }
  return st;
}

/* Gathers the pieces [i, j) of one parameter (or, with scales, of its scales) into host, converting f32 scales to
 * f16 (they hold f16 values exactly). row_bytes: bytes of one row of the gathered tensor. */
static lt_status_t gather(model_t *m, uint32_t i, uint32_t j, bool scales, uint64_t row_bytes, uint8_t *host,
                          lt_err_t *err) {
  lt_status_t st = LT_OK;
  for (uint32_t k = i; k < j && st == LT_OK; k++) {
    const model_param_t *q = model_param_at(m, k);
    uint8_t *dst = host + (uint64_t)q->row0 * row_bytes;
    if (!scales || q->stype == LT_F16) {
      st = gpu_download(scales ? q->scales : q->buf, 0, dst, (uint64_t)q->n_rows * row_bytes, err);
      continue;
    }
    uint64_t n = (uint64_t)q->n_rows * row_bytes / 2;
    float *f = malloc(n * 4 + 4);
    if (!f) return lt_fail(err, LT_E_NOMEM, "out of memory saving %s", q->name);
    if ((st = gpu_download(q->scales, 0, f, n * 4, err)) == LT_OK)
      for (uint64_t e = 0; e < n; e++) ((uint16_t *)dst)[e] = dtype_float_to_half(f[e]);
    free(f);
  }
  return st;
}

lt_status_t model_save(model_t *m, const char *dir, const model_save_opts_t *opts, lt_err_t *err) {
  uint32_t n = model_param_count(m);
  /* At most two tensors per parameter (a quantised one has its scales), each with its host copy and name. */
  ft_tensor_t *ts = calloc(2 * (uint64_t)n + 1, sizeof *ts);
  void **data = calloc(2 * (uint64_t)n + 1, sizeof *data);
  char(*names)[sizeof((model_param_t){0}).name + 8] = calloc(n + 1, sizeof *names); /* "<name>.scales" */
  lt_status_t st = (ts && data && names) ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  uint32_t nt = 0;
  /* Consecutive pieces of one tensor are gathered into one host copy. */
  for (uint32_t i = 0; i < n && st == LT_OK;) {
    const model_param_t *p = model_param_at(m, i);
    uint32_t j = i;
    while (j < n && strcmp(model_param_at(m, j)->name, p->name) == 0) j++;
    bool quant = p->dtype == LT_I8 || p->dtype == LT_I4, blocks = qblock_is(p->dtype);
    uint32_t bits = p->dtype == LT_I4 ? 4 : 8;
    uint64_t row = quant    ? quant_row_bytes(bits, p->cols)
                   : blocks ? qblock_row_bytes(p->dtype, p->cols)
                            : (uint64_t)p->cols * lt_dtype_size(p->dtype);
    for (int part = 0; part < (quant ? 2 : 1) && st == LT_OK; part++) {
      bool sc = part == 1;
      uint64_t row_bytes = sc ? 2ull * quant_groups(p->cols, p->group) : row, bytes = p->rows * row_bytes;
      uint8_t *host = malloc(bytes ? bytes : 1);
      if (!host) {
        st = lt_fail(err, LT_E_NOMEM, "out of memory saving %s", p->name);
        break;
      }
      data[nt] = host;
      st = gather(m, i, j, sc, row_bytes, host, err);
      if (st == LT_OK && blocks) { /* GGUF's block formats have no safetensors form: written dequantised, f32 */
        float *f = malloc((uint64_t)p->rows * p->cols * 4 + 4);
        if (!f) {
          st = lt_fail(err, LT_E_NOMEM, "out of memory saving %s", p->name);
          break;
        }
        qblock_dequant(p->dtype, host, f, (uint64_t)p->rows * p->cols);
        free(host);
        data[nt] = host = (uint8_t *)f;
        row_bytes = (uint64_t)p->cols * 4;
        bytes = p->rows * row_bytes;
      }
      ft_tensor_t *t = &ts[nt++];
      snprintf(names[i], sizeof names[i], "%s.scales", p->name);
      t->name = sc ? names[i] : p->name;
      t->dtype = sc                    ? FT_F16
                 : p->dtype == LT_F16  ? FT_F16
                 : p->dtype == LT_BF16 ? FT_BF16
                 : p->dtype == LT_I8   ? FT_I8
                 : quant               ? FT_U8
                                       : FT_F32;
      if (st == LT_OK && p->is_norm && model_config(m)->norm_plus_one) /* stored as the offset from 1 */
        for (uint64_t e = 0; e < p->cols; e++) {
          float v;
          memcpy(&v, host + 4 * e, 4);
          v -= 1.0f;
          memcpy(host + 4 * e, &v, 4);
        }
      t->n_dims = p->is_norm ? 1 : 2;
      t->shape[0] = p->is_norm ? p->cols : p->rows;
      t->shape[1] = p->is_norm ? 1 : blocks ? p->cols : row_bytes / (sc ? 2 : quant ? 1 : lt_dtype_size(p->dtype));
      t->n_elems = t->shape[0] * t->shape[1];
      t->data = host;
      t->nbytes = bytes;
      lt_dtype_t as = opts ? opts->f32_as : LT_F32;
      if (st == LT_OK && !quant && (p->dtype == LT_F32 || blocks) && (as == LT_F16 || as == LT_BF16)) {
        /* Narrowed in place, rounding to nearest even: the caller asked for a 16-bit checkpoint. */
        /* Element e's 16 bits land at byte 2e, below the 4e where its f32 was read: nothing unread is overwritten. */
        for (uint64_t e = 0; e < t->n_elems; e++) {
          float v;
          memcpy(&v, host + 4 * e, 4);
          uint16_t h = as == LT_F16 ? dtype_float_to_half(v) : dtype_float_to_bf16(v);
          memcpy(host + 2 * e, &h, 2);
        }
        t->dtype = as == LT_F16 ? FT_F16 : FT_BF16;
        t->nbytes = t->n_elems * 2;
      }
    }
    i = j;
  }
  if (st == LT_OK) st = model_folder_write(dir, model_config(m), ts, nt, model_path(m), opts, err);
  for (uint32_t i = 0; i < nt; i++) free(data[i]);
  free(ts);
  free(data);
  free(names);
  return st;
}
