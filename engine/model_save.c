/* Writing a model on the device back out as a Hugging Face folder. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/model.h"
#include "engine/safetensors.h"

#define DEFAULT_SHARD (2ull << 30)

/* config.json for the model's hyper-parameters, in the fields transformers reads. */
static json_t *config_json(const model_config_t *c) {
  json_t *j = json_object();
  bool moe = c->arch == MODEL_ARCH_MIXTRAL;
  json_object_set_new(j, "architectures", json_pack("[s]", model_arch_str(c->arch)));
  json_object_set_new(j, "model_type", json_string(moe ? "mixtral" : "llama"));
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
  if (c->n_eos == 1) json_object_set_new(j, "eos_token_id", json_integer(c->eos_ids[0]));
  else if (c->n_eos > 1) {
    json_t *a = json_array();
    for (uint32_t i = 0; i < c->n_eos; i++) json_array_append_new(a, json_integer(c->eos_ids[i]));
    json_object_set_new(j, "eos_token_id", a);
  }
  if (moe) {
    json_object_set_new(j, "num_local_experts", json_integer(c->n_experts));
    json_object_set_new(j, "num_experts_per_tok", json_integer(c->n_experts_used));
  }
  if (c->sliding_window) json_object_set_new(j, "sliding_window", json_integer(c->sliding_window));
  json_object_set_new(j, "torch_dtype", json_string("float32"));
  return j;
}

/* Copies src_dir/name to dir/name when it exists; a missing source file is not an error. */
static lt_status_t copy_if_present(const char *src_dir, const char *dir, const char *name, lt_err_t *err) {
  char from[4096], to[4096];
  snprintf(from, sizeof from, "%s/%s", src_dir, name);
  snprintf(to, sizeof to, "%s/%s", dir, name);
  FILE *in = fopen(from, "rb");
  if (!in) return LT_OK;
  FILE *out = fopen(to, "wb");
  if (!out) {
    fclose(in);
    return lt_fail(err, LT_E_IO, "cannot write %s: %s", to, strerror(errno));
  }
  char buf[65536];
  size_t n;
  bool ok = true;
  while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out) == n;
  ok = !ferror(in) && ok;
  fclose(in);
  ok = fclose(out) == 0 && ok;
  return ok ? LT_OK : lt_fail(err, LT_E_IO, "copying %s to %s failed", from, to);
}

lt_status_t model_save(model_t *m, const char *dir, const model_save_opts_t *opts, lt_err_t *err) {
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) return lt_fail(err, LT_E_IO, "cannot create %s: %s", dir, strerror(errno));
  uint32_t n = model_param_count(m);
  ft_tensor_t *ts = calloc(n ? n : 1, sizeof *ts);
  void **data = calloc(n ? n : 1, sizeof *data);
  lt_status_t st = (ts && data) ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  uint32_t nt = 0;
  /* Consecutive pieces of one tensor are gathered into one host copy. */
  for (uint32_t i = 0; i < n && st == LT_OK;) {
    const model_param_t *p = model_param_at(m, i);
    uint64_t esz = lt_dtype_size(p->dtype), bytes = (uint64_t)p->rows * p->cols * esz;
    uint8_t *host = malloc(bytes ? bytes : 1);
    if (!host) {
      st = lt_fail(err, LT_E_NOMEM, "out of memory saving %s", p->name);
      break;
    }
    data[nt] = host;
    uint32_t j = i;
    for (; j < n && strcmp(model_param_at(m, j)->name, p->name) == 0 && st == LT_OK; j++) {
      const model_param_t *q = model_param_at(m, j);
      st = gpu_download(q->buf, 0, host + (uint64_t)q->row0 * q->cols * esz, (uint64_t)q->n_rows * q->cols * esz, err);
    }
    ft_tensor_t *t = &ts[nt++];
    t->name = p->name;
    t->dtype = p->dtype == LT_F16 ? FT_F16 : p->dtype == LT_BF16 ? FT_BF16 : FT_F32;
    t->n_dims = p->is_norm ? 1 : 2;
    t->shape[0] = p->is_norm ? p->cols : p->rows;
    t->shape[1] = p->is_norm ? 1 : p->cols;
    t->n_elems = (uint64_t)p->rows * p->cols;
    t->data = host;
    t->nbytes = bytes;
    i = j;
  }
  if (st == LT_OK) {
    const char *meta[34] = {"format", "pt"};
    uint32_t n_meta = 1;
    for (uint32_t k = 0; opts && k < opts->n_meta && n_meta < 17; k++, n_meta++) {
      meta[2 * n_meta] = opts->meta[2 * k];
      meta[2 * n_meta + 1] = opts->meta[2 * k + 1];
    }
    uint64_t shard = opts && opts->max_shard_bytes ? opts->max_shard_bytes : DEFAULT_SHARD;
    st = st_write_sharded(dir, ts, nt, shard, meta, n_meta, err);
  }
  if (st == LT_OK) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = config_json(model_config(m));
    if (json_dump_file(cfg, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0)
      st = lt_fail(err, LT_E_IO, "cannot write %s", path);
    json_decref(cfg);
  }
  struct stat sb;
  const char *src = model_path(m);
  if (st == LT_OK && stat(src, &sb) == 0 && S_ISDIR(sb.st_mode) && strcmp(src, dir) != 0) {
    const char *names[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (size_t k = 0; k < 3 && st == LT_OK; k++) st = copy_if_present(src, dir, names[k], err);
  }
  for (uint32_t i = 0; i < nt; i++) free(data[i]);
  free(ts);
  free(data);
  return st;
}
