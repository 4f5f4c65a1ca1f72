/* Model hyper-parameters from config.json or GGUF metadata, range-checked the same way for both. */
#include "engine/model/model_config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONFIG_MAX_JSON (4u << 20) /* config.json and generation_config.json, bytes */

/* Defaults where a config leaves a field out, as the transformers config classes have them. */
static const struct arch_desc {
  const char *hf_class, *model_type;
  model_arch_t arch;
  bool moe;
  float rms_norm_eps;
  double rope_theta;
  uint32_t max_position, sliding_window;
} archs[] = {
    {"LlamaForCausalLM", "llama", MODEL_ARCH_LLAMA, false, 1e-6f, 10000.0, 2048, 0},
    {"MistralForCausalLM", "mistral", MODEL_ARCH_MISTRAL, false, 1e-6f, 10000.0, 4096 * 32, 4096},
    {"MixtralForCausalLM", "mixtral", MODEL_ARCH_MIXTRAL, true, 1e-5f, 1e6, 4096 * 32, 0},
    {"Qwen2ForCausalLM", "qwen2", MODEL_ARCH_QWEN2, false, 1e-6f, 10000.0, 32768, 0},
    {"Phi3ForCausalLM", "phi3", MODEL_ARCH_PHI3, false, 1e-5f, 10000.0, 4096, 0}, /* Phi3Config: no window */
    {"Gemma2ForCausalLM", "gemma2", MODEL_ARCH_GEMMA2, false, 1e-6f, 10000.0, 8192, 4096},
};
#define N_ARCHS (sizeof archs / sizeof archs[0])
#define ARCH_LIST                                                                                                      \
  "LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Phi3ForCausalLM, Gemma2ForCausalLM"

/* Upper bounds that keep every later size computation far from overflow. */
#define MAX_HIDDEN (1u << 16)
#define MAX_FFN (1u << 20)
#define MAX_LAYERS MODEL_MAX_LAYERS
#define MAX_HEADS 1024u
#define MAX_HEAD_DIM 1024u
#define MAX_VOCAB (1u << 22)
#define MAX_POSITION (1u << 24)
#define MAX_EXPERTS 256u
#define MAX_EXPERTS_USED 32u /* op_topk's limit */

const char *model_arch_str(model_arch_t a) {
  switch (a) {
  case MODEL_ARCH_LLAMA: return "LlamaForCausalLM";
  case MODEL_ARCH_MIXTRAL: return "MixtralForCausalLM";
  case MODEL_ARCH_MISTRAL: return "MistralForCausalLM";
  case MODEL_ARCH_QWEN2: return "Qwen2ForCausalLM";
  case MODEL_ARCH_PHI3: return "Phi3ForCausalLM";
  case MODEL_ARCH_GEMMA2: return "Gemma2ForCausalLM";
  case MODEL_ARCH_COUNT: break;
  }
  return "?";
}

const char *model_arch_type(model_arch_t a) {
  for (size_t k = 0; k < N_ARCHS; k++)
    if (archs[k].arch == a) return archs[k].model_type;
  return "?";
}

uint32_t model_config_window(const model_config_t *c, uint32_t layer) {
  return layer < MODEL_MAX_LAYERS && c->layer_full[layer] ? 0 : c->sliding_window;
}

float model_config_gemma2_gguf_scale(const model_config_t *c) {
  return 1.0f / sqrtf((float)(c->n_layers == 46 ? c->hidden_size / c->n_heads : c->head_dim));
}

float model_config_attn_scale(const model_config_t *c) {
  return c->attn_scale > 0 ? c->attn_scale : 1.0f / sqrtf((float)c->head_dim);
}

uint32_t model_config_experts(const model_config_t *c, uint32_t layer) {
  return layer < MODEL_MAX_LAYERS && c->layer_experts[layer] ? c->layer_experts[layer] : c->n_experts;
}

/* Checks the ranges and the relations between fields, whatever the source. */
static lt_status_t config_check(const model_config_t *c, const char *lab, lt_err_t *err) {
  const struct {
    const char *name;
    uint32_t v, lo, hi;
  } r[] = {
      {"hidden_size", c->hidden_size, 1, MAX_HIDDEN},
      {"intermediate_size", c->intermediate_size, 1, MAX_FFN},
      {"num_hidden_layers", c->n_layers, 1, MAX_LAYERS},
      {"num_attention_heads", c->n_heads, 1, MAX_HEADS},
      {"num_key_value_heads", c->n_kv_heads, 1, c->n_heads},
      {"head_dim", c->head_dim, 1, MAX_HEAD_DIM},
      {"rope dimension count", c->rope_dim, 2, c->head_dim},
      {"vocab_size", c->vocab_size, 1, MAX_VOCAB},
      {"max_position_embeddings", c->max_position, 1, MAX_POSITION},
  };
  for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
    if (r[i].v < r[i].lo || r[i].v > r[i].hi)
      return lt_fail(err, LT_E_INVALID, "%s: %s is %u, outside [%u, %u]", lab, r[i].name, r[i].v, r[i].lo, r[i].hi);
  if (c->n_heads % c->n_kv_heads)
    return lt_fail(err, LT_E_INVALID, "%s: %u attention heads do not split into groups of %u key/value heads", lab,
                   c->n_heads, c->n_kv_heads);
  if (c->rope_dim % 2) return lt_fail(err, LT_E_INVALID, "%s: rope dimension count %u is odd", lab, c->rope_dim);
  if (!(c->rms_norm_eps > 0) || !isfinite(c->rms_norm_eps))
    return lt_fail(err, LT_E_INVALID, "%s: rms_norm_eps %g is not a positive number", lab, c->rms_norm_eps);
  if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
    return lt_fail(err, LT_E_INVALID, "%s: rope_theta %g is not a positive number", lab, c->rope_theta);
  if (c->arch == MODEL_ARCH_MIXTRAL && (c->n_experts < 1 || c->n_experts > MAX_EXPERTS || c->n_experts_used < 1 ||
                                        c->n_experts_used > c->n_experts || c->n_experts_used > MAX_EXPERTS_USED))
    return lt_fail(err, LT_E_INVALID, "%s: %u experts with %u used per token is outside [1, %u] experts, [1, %u] used",
                   lab, c->n_experts, c->n_experts_used, MAX_EXPERTS, MAX_EXPERTS_USED);
  for (uint32_t l = 0; l < c->n_layers; l++) {
    uint32_t e = c->layer_experts[l];
    if (e && (c->arch != MODEL_ARCH_MIXTRAL || e < c->n_experts_used || e > c->n_experts))
      return lt_fail(err, LT_E_INVALID, "%s: lathe_experts_per_layer gives block %u %u experts, outside [%u, %u]", lab,
                     l, e, c->n_experts_used, c->n_experts);
  }
  if (c->quant_bits && !((c->quant_bits == 8 || c->quant_bits == 4) && c->quant_group && c->quant_group % 8 == 0))
    return lt_fail(err, LT_E_INVALID, "%s: quantization_config: bits %u, group_size %u (need 8 or 4, a multiple of 8)",
                   lab, c->quant_bits, c->quant_group);
  if (c->bos_id >= (int64_t)c->vocab_size)
    return lt_fail(err, LT_E_INVALID, "%s: bos id %d is outside the vocabulary (%u)", lab, c->bos_id, c->vocab_size);
  for (uint32_t i = 0; i < c->n_eos; i++)
    if (c->eos_ids[i] < 0 || c->eos_ids[i] >= (int64_t)c->vocab_size)
      return lt_fail(err, LT_E_INVALID, "%s: eos id %d is outside the vocabulary (%u)", lab, c->eos_ids[i],
                     c->vocab_size);
  return LT_OK;
}

/* ---- config.json ---- */

/* How an integer field may appear: required, optional, or optional but never 0 when given (its default is
 * computed from other fields, so a 0 would be silently replaced). */
typedef enum field_rule { REQUIRED, OPTIONAL, OPTIONAL_NONZERO } field_rule_t;

/* Reads an integer field into *out; absent or null gives def unless it is required. */
static lt_status_t json_u32(const json_t *o, const char *key, field_rule_t rule, uint32_t def, uint32_t *out,
                            const char *lab, lt_err_t *err) {
  const json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) {
    if (rule == REQUIRED) return lt_fail(err, LT_E_INVALID, "%s: %s is missing", lab, key);
    *out = def;
    return LT_OK;
  }
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX ||
      (rule == OPTIONAL_NONZERO && !json_integer_value(v)))
    return lt_fail(err, LT_E_INVALID, "%s: %s is not an integer in [%d, 2^32)", lab, key, rule == OPTIONAL_NONZERO);
  *out = (uint32_t)json_integer_value(v);
  return LT_OK;
}

/* Reads a number field (integer or real) into *out; absent or null gives def. */
static lt_status_t json_num(const json_t *o, const char *key, double def, double *out, const char *lab, lt_err_t *err) {
  const json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v))
    *out = def;
  else if (json_is_number(v))
    *out = json_number_value(v);
  else
    return lt_fail(err, LT_E_INVALID, "%s: %s is not a number", lab, key);
  return LT_OK;
}

/* Reads bos_token_id / eos_token_id from o when present (eos may be an int or a list of ints). */
static lt_status_t json_ids(model_config_t *c, const json_t *o, const char *lab, lt_err_t *err) {
  const json_t *bos = json_object_get(o, "bos_token_id"), *eos = json_object_get(o, "eos_token_id");
  if (json_is_null(bos))
    c->bos_id = -1;
  else if (bos) {
    if (!json_is_integer(bos) || json_integer_value(bos) < 0 || json_integer_value(bos) > INT32_MAX)
      return lt_fail(err, LT_E_INVALID, "%s: bos_token_id is not a non-negative integer", lab);
    c->bos_id = (int32_t)json_integer_value(bos);
  }
  if (json_is_null(eos))
    c->n_eos = 0;
  else if (eos) {
    size_t n = json_is_array(eos) ? json_array_size(eos) : 1;
    if (n > MODEL_MAX_EOS) return lt_fail(err, LT_E_LIMIT, "%s: %zu eos ids, at most %d", lab, n, MODEL_MAX_EOS);
    for (size_t i = 0; i < n; i++) {
      const json_t *e = json_is_array(eos) ? json_array_get(eos, i) : eos;
      if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
        return lt_fail(err, LT_E_INVALID, "%s: eos_token_id is not a non-negative integer or a list of them", lab);
      c->eos_ids[i] = (int32_t)json_integer_value(e);
    }
    c->n_eos = (uint32_t)n;
  }
  return LT_OK;
}

static lt_status_t json_rope_scaling(rope_scaling_t *rs, const json_t *o, const char *lab, lt_err_t *err) {
  *rs = (rope_scaling_t){0};
  if (!o || json_is_null(o)) return LT_OK;
  if (!json_is_object(o)) return lt_fail(err, LT_E_INVALID, "%s: rope_scaling is not an object", lab);
  const json_t *t = json_object_get(o, "rope_type");
  if (!t) t = json_object_get(o, "type");
  const char *type = json_string_value(t);
  if (!type) return lt_fail(err, LT_E_INVALID, "%s: rope_scaling has no rope_type string", lab);
  if (!strcmp(type, "default")) return LT_OK;
  if (strcmp(type, "llama3"))
    return lt_fail(err, LT_E_UNSUPPORTED,
                   "%s: rope_scaling type \"%.40s\" is not supported (supported: default, llama3)", lab, type);
  static const char *const keys[] = {"factor", "low_freq_factor", "high_freq_factor",
                                     "original_max_position_embeddings"};
  double v[4];
  for (int i = 0; i < 4; i++) {
    const json_t *j = json_object_get(o, keys[i]);
    if (!json_is_number(j) || !(json_number_value(j) > 0) || !isfinite(json_number_value(j)))
      return lt_fail(err, LT_E_INVALID, "%s: rope_scaling (llama3) needs a positive number %s", lab, keys[i]);
    v[i] = json_number_value(j);
  }
  if (v[1] >= v[2] || v[3] > MAX_POSITION)
    return lt_fail(err, LT_E_INVALID,
                   "%s: rope_scaling (llama3) needs low_freq_factor < high_freq_factor and a sane original length",
                   lab);
  *rs = (rope_scaling_t){1, (float)v[0], (float)v[1], (float)v[2], (uint32_t)v[3]};
  return LT_OK;
}

/* Reads Lathe's compression fields (docs/compression.md): quantization_config ("lathe_rtn" only), the blocks
 * whose feed-forward sub-layer was dropped, and per-block expert counts. */
static lt_status_t json_compression(model_config_t *c, const json_t *config, const char *lab, lt_err_t *err) {
  const json_t *qc = json_object_get(config, "quantization_config");
  lt_status_t s;
  if (qc && !json_is_null(qc)) {
    const char *method = json_string_value(json_object_get(qc, "quant_method"));
    if (!json_is_object(qc) || !method)
      return lt_fail(err, LT_E_INVALID, "%s: quantization_config is not an object with a quant_method", lab);
    if (strcmp(method, "lathe_rtn"))
      return lt_fail(err, LT_E_UNSUPPORTED, "%s: quant_method %.40s is not supported (supported: lathe_rtn)", lab,
                     method);
    if ((s = json_u32(qc, "bits", REQUIRED, 0, &c->quant_bits, lab, err)) ||
        (s = json_u32(qc, "group_size", REQUIRED, 0, &c->quant_group, lab, err)))
      return s;
  }
  const json_t *drop = json_object_get(config, "lathe_dropped_moe_layers"), *v;
  size_t i;
  if (drop && !json_is_array(drop))
    return lt_fail(err, LT_E_INVALID, "%s: lathe_dropped_moe_layers is not a list", lab);
  json_array_foreach(drop, i, v) {
    json_int_t l = json_integer_value(v);
    if (!json_is_integer(v) || l < 0 || l >= (json_int_t)c->n_layers || c->ffn_dropped[l])
      return lt_fail(err, LT_E_INVALID, "%s: lathe_dropped_moe_layers[%zu] is not a distinct block index below %u", lab,
                     i, c->n_layers);
    c->ffn_dropped[l] = true;
  }
  const json_t *per = json_object_get(config, "lathe_experts_per_layer");
  if (per && (!json_is_array(per) || json_array_size(per) != c->n_layers))
    return lt_fail(err, LT_E_INVALID, "%s: lathe_experts_per_layer is not a list of %u counts", lab, c->n_layers);
  json_array_foreach(per, i, v) {
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > MAX_EXPERTS)
      return lt_fail(err, LT_E_INVALID, "%s: lathe_experts_per_layer[%zu] is not a count in [1, %u]", lab, i,
                     MAX_EXPERTS);
    c->layer_experts[i] = (uint16_t)json_integer_value(v);
  }
  return LT_OK;
}

/* Reads an optional positive number (absent: def; null: 0, the feature off) into *out. */
static lt_status_t json_opt_pos(const json_t *o, const char *key, double def, float *out, const char *lab,
                                lt_err_t *err) {
  const json_t *v = json_object_get(o, key);
  if (!v) {
    *out = (float)def;
    return LT_OK;
  }
  if (json_is_null(v)) {
    *out = 0;
    return LT_OK;
  }
  if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)))
    return lt_fail(err, LT_E_INVALID, "%s: %s is not a positive number", lab, key);
  *out = (float)json_number_value(v);
  return LT_OK;
}

/* Gemma 2's fields, with Gemma2Config's defaults: embeddings scaled by sqrt(hidden_size), norms as offsets from 1
 * before and after each sub-layer, GeGLU, scores scaled by query_pre_attn_scalar^-1/2 and soft-capped
 * (attn_logit_softcapping), logits soft-capped (final_logit_softcapping), and the sliding window on the blocks
 * layer_types names "sliding_attention" (absent: the even blocks). */
static lt_status_t json_gemma2(model_config_t *cfg, const json_t *config, const char *lab, lt_err_t *err) {
  float qpas;
  lt_status_t s;
  if ((s = json_opt_pos(config, "query_pre_attn_scalar", 256, &qpas, lab, err)) ||
      (s = json_opt_pos(config, "attn_logit_softcapping", 50.0, &cfg->attn_softcap, lab, err)) ||
      (s = json_opt_pos(config, "final_logit_softcapping", 30.0, &cfg->final_softcap, lab, err)))
    return s;
  if (!(qpas > 0)) return lt_fail(err, LT_E_INVALID, "%s: query_pre_attn_scalar is null", lab);
  cfg->attn_scale = 1.0f / sqrtf(qpas);
  cfg->embed_scale = sqrtf((float)cfg->hidden_size);
  cfg->norm_plus_one = cfg->post_norms = cfg->gelu = true;
  const json_t *types = json_object_get(config, "layer_types");
  if (types && !json_is_null(types) && (!json_is_array(types) || json_array_size(types) != cfg->n_layers))
    return lt_fail(err, LT_E_INVALID, "%s: layer_types is not a list of %u entries", lab, cfg->n_layers);
  for (uint32_t l = 0; l < cfg->n_layers && l < MODEL_MAX_LAYERS; l++) {
    const char *t = json_is_array(types) ? json_string_value(json_array_get(types, l)) : NULL;
    if (json_is_array(types) && (!t || (strcmp(t, "sliding_attention") && strcmp(t, "full_attention"))))
      return lt_fail(err, LT_E_INVALID, "%s: layer_types[%u] is neither sliding_attention nor full_attention", lab, l);
    cfg->layer_full[l] = t ? !strcmp(t, "full_attention") : l % 2 == 1;
  }
  return LT_OK;
}

/* Finds the architecture from "architectures" (the first supported entry), else from "model_type". */
static lt_status_t json_arch(const struct arch_desc **out, const json_t *config, const char *lab, lt_err_t *err) {
  const json_t *list = json_object_get(config, "architectures"), *e;
  size_t i;
  json_array_foreach(list, i, e) {
    for (size_t k = 0; k < N_ARCHS; k++)
      if (json_is_string(e) && !strcmp(json_string_value(e), archs[k].hf_class)) {
        *out = &archs[k];
        return LT_OK;
      }
  }
  const char *mt = json_string_value(json_object_get(config, "model_type"));
  if (!json_array_size(list) && mt)
    for (size_t k = 0; k < N_ARCHS; k++)
      if (!strcmp(mt, archs[k].model_type)) {
        *out = &archs[k];
        return LT_OK;
      }
  const char *named = json_string_value(json_array_get(list, 0));
  return lt_fail(err, LT_E_UNSUPPORTED, "%s: architecture %.60s is not supported (supported: " ARCH_LIST ")", lab,
                 named ? named
                 : mt  ? mt
                       : "(none given)");
}

lt_status_t model_config_from_json(model_config_t *cfg, const json_t *config, const json_t *generation, const char *lab,
                                   lt_err_t *err) {
  *cfg = (model_config_t){0};
  if (!json_is_object(config)) return lt_fail(err, LT_E_INVALID, "%s: config is not a JSON object", lab);
  const struct arch_desc *a = NULL;
  lt_status_t s = json_arch(&a, config, lab, err);
  if (s) return s;
  cfg->arch = a->arch;

  /* Gemma 2 names its MLP activation hidden_activation (hidden_act too, in older configs). */
  bool gemma2 = cfg->arch == MODEL_ARCH_GEMMA2;
  const char *act_key = gemma2 && json_object_get(config, "hidden_activation") ? "hidden_activation" : "hidden_act";
  const char *act = json_string_value(json_object_get(config, act_key)),
             *want_act = gemma2 ? "gelu_pytorch_tanh" : "silu";
  if (json_object_get(config, act_key) && (!act || strcmp(act, want_act)))
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: %s %.40s is not supported (supported: %s)", lab, act_key,
                   act ? act : "(not a string)", want_act);
  static const char *const biases[] = {"attention_bias", "mlp_bias"};
  for (int i = 0; i < 2; i++)
    if (json_is_true(json_object_get(config, biases[i])))
      return lt_fail(err, LT_E_UNSUPPORTED, "%s: %s true is not supported", lab, biases[i]);

  double eps, theta;
  uint32_t head_dim, n_kv;
  if ((s = json_u32(config, "hidden_size", REQUIRED, 0, &cfg->hidden_size, lab, err)) ||
      (s = json_u32(config, "intermediate_size", REQUIRED, 0, &cfg->intermediate_size, lab, err)) ||
      (s = json_u32(config, "num_hidden_layers", REQUIRED, 0, &cfg->n_layers, lab, err)) ||
      (s = json_u32(config, "num_attention_heads", REQUIRED, 0, &cfg->n_heads, lab, err)) ||
      (s = json_u32(config, "vocab_size", REQUIRED, 0, &cfg->vocab_size, lab, err)) ||
      (s = json_u32(config, "num_key_value_heads", OPTIONAL_NONZERO, 0, &n_kv, lab, err)) ||
      (s = json_u32(config, "head_dim", OPTIONAL_NONZERO, 0, &head_dim, lab, err)) ||
      (s = json_u32(config, "max_position_embeddings", OPTIONAL, a->max_position, &cfg->max_position, lab, err)) ||
      (s = json_u32(config, "sliding_window", OPTIONAL, a->sliding_window, &cfg->sliding_window, lab, err)) ||
      (s = json_num(config, "rms_norm_eps", a->rms_norm_eps, &eps, lab, err)) ||
      (s = json_num(config, "rope_theta", a->rope_theta, &theta, lab, err)) ||
      (s = json_rope_scaling(&cfg->rope_scaling, json_object_get(config, "rope_scaling"), lab, err)))
    return s;
  if (a->moe && ((s = json_u32(config, "num_local_experts", OPTIONAL, 8, &cfg->n_experts, lab, err)) ||
                 (s = json_u32(config, "num_experts_per_tok", OPTIONAL, 2, &cfg->n_experts_used, lab, err))))
    return s;
  if (cfg->n_layers > MAX_LAYERS)
    return lt_fail(err, LT_E_INVALID, "%s: num_hidden_layers is %u, more than %u", lab, cfg->n_layers, MAX_LAYERS);
  /* An explicit null window is full attention (Mistral v0.2 on); Qwen2 applies its window only when
   * use_sliding_window is true, and then only above max_window_layers, which Lathe does not do: refused. */
  if (json_is_null(json_object_get(config, "sliding_window"))) cfg->sliding_window = 0;
  if (cfg->arch != MODEL_ARCH_MISTRAL && cfg->arch != MODEL_ARCH_MIXTRAL && cfg->arch != MODEL_ARCH_PHI3 && !gemma2) {
    if (cfg->arch == MODEL_ARCH_QWEN2 && json_is_true(json_object_get(config, "use_sliding_window")))
      return lt_fail(err, LT_E_UNSUPPORTED, "%s: use_sliding_window true is not supported for Qwen2", lab);
    cfg->sliding_window = 0;
  }
  cfg->qkv_bias = cfg->arch == MODEL_ARCH_QWEN2;
  const json_t *prf = json_object_get(config, "partial_rotary_factor");
  if (prf && !json_is_null(prf) && (!json_is_number(prf) || json_number_value(prf) != 1.0))
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: partial_rotary_factor other than 1 is not supported", lab);
  if ((s = json_compression(cfg, config, lab, err))) return s;
  cfg->n_kv_heads = n_kv ? n_kv : cfg->n_heads;
  if (!head_dim && gemma2) head_dim = 256; /* Gemma2Config's default */
  if (!head_dim) {
    if (!cfg->n_heads || cfg->hidden_size % cfg->n_heads)
      return lt_fail(err, LT_E_INVALID, "%s: hidden_size %u does not split into %u heads and head_dim is not given",
                     lab, cfg->hidden_size, cfg->n_heads);
    head_dim = cfg->hidden_size / cfg->n_heads;
  }
  cfg->head_dim = cfg->rope_dim = head_dim;
  cfg->rms_norm_eps = (float)eps;
  cfg->rope_theta = theta;
  const json_t *tie = json_object_get(config, "tie_word_embeddings");
  if (tie && !json_is_boolean(tie)) return lt_fail(err, LT_E_INVALID, "%s: tie_word_embeddings is not a boolean", lab);
  cfg->tie_word_embeddings = tie ? json_is_true(tie) : gemma2; /* Gemma2Config ties by default */
  if (gemma2 && (s = json_gemma2(cfg, config, lab, err))) return s;

  cfg->bos_id = gemma2 ? 2 : 1; /* the config classes' defaults */
  cfg->eos_ids[0] = gemma2 ? 1 : 2;
  cfg->n_eos = 1;
  if ((s = json_ids(cfg, config, lab, err))) return s;
  if (generation) {
    if (!json_is_object(generation)) return lt_fail(err, LT_E_INVALID, "%s: generation config is not an object", lab);
    if ((s = json_ids(cfg, generation, lab, err))) return s;
  }
  return config_check(cfg, lab, err);
}

lt_status_t model_config_from_hf(model_config_t *cfg, const char *dir, lt_err_t *err) {
  size_t n = strlen(dir) + 32;
  char *path = malloc(n);
  if (!path) return lt_fail(err, LT_E_NOMEM, "%s: out of memory", dir);
  json_t *config = NULL, *gen = NULL;
  snprintf(path, n, "%s/config.json", dir);
  lt_status_t s = ft_json_load(&config, path, CONFIG_MAX_JSON, err);
  if (!s) {
    snprintf(path, n, "%s/generation_config.json", dir);
    if (access(path, F_OK) == 0) s = ft_json_load(&gen, path, CONFIG_MAX_JSON, err);
  }
  if (!s) {
    snprintf(path, n, "%s/config.json", dir);
    s = model_config_from_json(cfg, config, gen, path, err);
  }
  json_decref(config);
  json_decref(gen);
  free(path);
  return s;
}

/* ---- GGUF metadata ---- */

/* Reads <arch>.<key> as a u32 into *out; absent gives def unless it is required. */
static lt_status_t gguf_u32(const gguf_t *g, const char *arch, const char *key, field_rule_t rule, uint32_t def,
                            uint32_t *out, lt_err_t *err) {
  char full[96];
  snprintf(full, sizeof full, "%s.%s", arch, key);
  if (rule != REQUIRED && !gguf_kv_find(g, full)) {
    *out = def;
    return LT_OK;
  }
  lt_status_t s = gguf_get_u32(g, full, out, err);
  if (!s && rule == OPTIONAL_NONZERO && !*out) return lt_fail(err, LT_E_INVALID, "%s: %s is 0", gguf_path(g), full);
  return s;
}

/* Gemma 2 as llama.cpp's gemma2 holds it: norms already 1 + w, soft-caps under their keys (absent: 50 and 30),
 * sliding-window blocks first and then every other one, embeddings scaled by sqrt(hidden), and the query scale
 * that llama.cpp derives from the shape (model_config_gemma2_gguf_scale). Called once the sizes are read. */
static lt_status_t gguf_gemma2(model_config_t *cfg, const gguf_t *g, const char *lab, lt_err_t *err) {
  static const struct {
    const char *key;
    float def;
  } caps[2] = {{"gemma2.attn_logit_softcapping", 50.0f}, {"gemma2.final_logit_softcapping", 30.0f}};
  float v[2];
  for (int i = 0; i < 2; i++) {
    v[i] = caps[i].def;
    lt_status_t s = gguf_kv_find(g, caps[i].key) ? gguf_get_f32(g, caps[i].key, &v[i], err) : LT_OK;
    if (s) return s;
    if (!(v[i] > 0) || !isfinite(v[i])) return lt_fail(err, LT_E_INVALID, "%s: %s is %g", lab, caps[i].key, v[i]);
  }
  cfg->attn_softcap = v[0], cfg->final_softcap = v[1];
  if (!cfg->n_heads || !cfg->hidden_size || cfg->hidden_size % cfg->n_heads)
    return lt_fail(err, LT_E_INVALID, "%s: embedding_length %u does not split into %u heads", lab, cfg->hidden_size,
                   cfg->n_heads);
  cfg->attn_scale = model_config_gemma2_gguf_scale(cfg);
  cfg->embed_scale = sqrtf((float)cfg->hidden_size);
  cfg->norm_plus_one = cfg->norms_hold_one = cfg->post_norms = cfg->gelu = true;
  for (uint32_t l = 0; l < cfg->n_layers && l < MODEL_MAX_LAYERS; l++) cfg->layer_full[l] = l % 2 == 1;
  return LT_OK;
}

lt_status_t model_config_from_gguf(model_config_t *cfg, const gguf_t *g, lt_err_t *err) {
  *cfg = (model_config_t){0};
  const char *lab = gguf_path(g), *arch;
  lt_status_t s = gguf_get_str(g, "general.architecture", &arch, err);
  if (s) return s;
  if (strcmp(arch, "llama") && strcmp(arch, "qwen2") && strcmp(arch, "phi3") && strcmp(arch, "gemma2"))
    return lt_fail(err, LT_E_UNSUPPORTED,
                   "%s: GGUF architecture %.40s is not supported (supported: llama, qwen2, phi3, gemma2)", lab, arch);
  char key[96];
  snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
  if (gguf_kv_find(g, key)) {
    const char *type;
    if ((s = gguf_get_str(g, key, &type, err))) return s;
    if (strcmp(type, "none"))
      return lt_fail(err, LT_E_UNSUPPORTED, "%s: %s %.40s is not supported (supported: none)", lab, key, type);
  }
  if (gguf_tensor_find(g, "rope_factors_long.weight") || gguf_tensor_find(g, "rope_factors_short.weight"))
    return lt_fail(err, LT_E_UNSUPPORTED,
                   "%s: rope_factors_long / rope_factors_short (Phi-3's longrope) are not supported", lab);
  if (gguf_tensor_find(g, "rope_freqs.weight"))
    return lt_fail(err, LT_E_UNSUPPORTED,
                   "%s: rope_freqs.weight (per-frequency RoPE factors, llama3 scaling) is not supported", lab);
  uint32_t n_kv, key_len;
  if ((s = gguf_u32(g, arch, "embedding_length", REQUIRED, 0, &cfg->hidden_size, err)) ||
      (s = gguf_u32(g, arch, "feed_forward_length", REQUIRED, 0, &cfg->intermediate_size, err)) ||
      (s = gguf_u32(g, arch, "block_count", REQUIRED, 0, &cfg->n_layers, err)) ||
      (s = gguf_u32(g, arch, "attention.head_count", REQUIRED, 0, &cfg->n_heads, err)) ||
      (s = gguf_u32(g, arch, "attention.head_count_kv", OPTIONAL_NONZERO, 0, &n_kv, err)) ||
      (s = gguf_u32(g, arch, "attention.key_length", OPTIONAL_NONZERO, 0, &key_len, err)) ||
      (s = gguf_u32(g, arch, "context_length", OPTIONAL, 2048, &cfg->max_position, err)) ||
      (s = gguf_u32(g, arch, "expert_count", OPTIONAL, 0, &cfg->n_experts, err)) ||
      (s = gguf_u32(g, arch, "expert_used_count", OPTIONAL, 0, &cfg->n_experts_used, err)))
    return s;
  bool qwen2 = !strcmp(arch, "qwen2"), phi3 = !strcmp(arch, "phi3"), gemma2 = !strcmp(arch, "gemma2");
  if ((qwen2 || phi3 || gemma2) && cfg->n_experts)
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: %s with experts is not supported", lab, arch);
  cfg->arch = qwen2            ? MODEL_ARCH_QWEN2
              : phi3           ? MODEL_ARCH_PHI3
              : gemma2         ? MODEL_ARCH_GEMMA2
              : cfg->n_experts ? MODEL_ARCH_MIXTRAL
                               : MODEL_ARCH_LLAMA;
  /* Phi-3's window: phi3.attention.sliding_window (absent: none); Gemma 2's (absent: 4096, as llama.cpp reads it). */
  if ((phi3 || gemma2) &&
      (s = gguf_u32(g, arch, "attention.sliding_window", OPTIONAL, gemma2 ? 4096 : 0, &cfg->sliding_window, err)))
    return s;
  cfg->qkv_bias = qwen2;
  if (!cfg->n_experts) cfg->n_experts_used = 0;
  cfg->n_kv_heads = n_kv ? n_kv : cfg->n_heads;
  if (!key_len) {
    if (!cfg->n_heads || cfg->hidden_size % cfg->n_heads)
      return lt_fail(err, LT_E_INVALID, "%s: embedding_length %u does not split into %u heads", lab, cfg->hidden_size,
                     cfg->n_heads);
    key_len = cfg->hidden_size / cfg->n_heads;
  }
  cfg->head_dim = key_len;
  if ((s = gguf_u32(g, arch, "rope.dimension_count", OPTIONAL_NONZERO, key_len, &cfg->rope_dim, err))) return s;
  cfg->rms_norm_eps = qwen2 || gemma2 ? 1e-6f : 1e-5f;
  snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
  if (gguf_kv_find(g, key) && (s = gguf_get_f32(g, key, &cfg->rms_norm_eps, err))) return s;
  float theta = qwen2 ? 1e6f : 10000.0f;
  snprintf(key, sizeof key, "%s.rope.freq_base", arch);
  if (gguf_kv_find(g, key) && (s = gguf_get_f32(g, key, &theta, err))) return s;
  cfg->rope_theta = theta;
  if (gemma2 && (s = gguf_gemma2(cfg, g, lab, err))) return s;

  /* The vocabulary: llama.vocab_size, else the tokenizer's token list, else the embedding table. */
  const gguf_tensor_t *embd = gguf_tensor_find(g, "token_embd.weight");
  gguf_tokenizer_t tok;
  bool have_tok = gguf_kv_find(g, "tokenizer.ggml.tokens") != NULL;
  if (have_tok && (s = gguf_tokenizer(g, &tok, err))) return s;
  snprintf(key, sizeof key, "%s.vocab_size", arch);
  if (gguf_kv_find(g, key)) {
    if ((s = gguf_get_u32(g, key, &cfg->vocab_size, err))) return s;
  } else if (have_tok)
    cfg->vocab_size = tok.n_tokens > UINT32_MAX ? UINT32_MAX : (uint32_t)tok.n_tokens;
  else if (embd && embd->t.n_dims == 2)
    cfg->vocab_size = embd->t.shape[0] > UINT32_MAX ? UINT32_MAX : (uint32_t)embd->t.shape[0];
  else
    return lt_fail(err, LT_E_INVALID, "%s: no llama.vocab_size, tokenizer or token_embd.weight to size the vocabulary",
                   lab);

  cfg->tie_word_embeddings = gguf_tensor_find(g, "output.weight") == NULL;
  /* Ids past INT32_MAX clamp to a value config_check refuses as outside the vocabulary. */
  cfg->bos_id = !have_tok ? -1 : tok.bos_id > INT32_MAX ? INT32_MAX : (int32_t)tok.bos_id;
  if (have_tok && tok.eos_id >= 0) {
    cfg->eos_ids[0] = tok.eos_id > INT32_MAX ? INT32_MAX : (int32_t)tok.eos_id;
    cfg->n_eos = 1;
  }
  return config_check(cfg, lab, err);
}
