/* The hyper-parameters of a LLaMA-family model, from a Hugging Face folder (config.json, optional
 * generation_config.json) or from GGUF metadata (llama.* and tokenizer.ggml.* keys). */
#ifndef LATHE_MODEL_CONFIG_H
#define LATHE_MODEL_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/model/gguf.h"
#include "engine/ops/ops.h"
#include "common/status.h"

#define MODEL_MAX_EOS 8
#define MODEL_MAX_LAYERS 1024u

typedef enum model_arch {
  MODEL_ARCH_LLAMA = 0, /* LlamaForCausalLM */
  MODEL_ARCH_MIXTRAL,   /* MixtralForCausalLM: LLaMA attention, sparse MoE feed-forward */
  MODEL_ARCH_MISTRAL,   /* MistralForCausalLM: LLaMA's tensors, attention within a sliding window */
  MODEL_ARCH_QWEN2,     /* Qwen2ForCausalLM: LLaMA with biases on the q, k and v projections */
  MODEL_ARCH_PHI3,      /* Phi3ForCausalLM: Mistral with fused qkv and gate_up tensors in its files */
  MODEL_ARCH_GEMMA2,    /* Gemma2ForCausalLM: scaled embeddings, 1 + w norms before and after each sub-layer, GeGLU,
                           soft-capped scores and logits, sliding-window and global blocks in turn */
  MODEL_ARCH_COUNT
} model_arch_t;

/* Everything the forward pass needs to know about the shapes and constants of a model. MoE routing (Mixtral):
 * softmax over the n_experts router logits, keep the n_experts_used largest, renormalise them to sum to 1. */
typedef struct model_config {
  model_arch_t arch;
  uint32_t hidden_size;       /* d */
  uint32_t intermediate_size; /* feed-forward width (of each expert for MoE) */
  uint32_t n_layers;
  uint32_t n_heads, n_kv_heads, head_dim;
  uint32_t rope_dim; /* leading dims of each head that RoPE rotates (= head_dim unless the file says less) */
  uint32_t vocab_size;
  uint32_t max_position; /* max_position_embeddings / llama.context_length */
  float rms_norm_eps;
  double rope_theta;
  rope_scaling_t rope_scaling; /* type 0 none, 1 llama3 */
  bool tie_word_embeddings;    /* the LM head is the embedding table */
  int32_t bos_id;              /* -1 when none */
  uint32_t n_eos;
  int32_t eos_ids[MODEL_MAX_EOS];
  uint32_t n_experts, n_experts_used; /* MoE; both 0 for a dense model */
  uint32_t sliding_window;            /* attention window in tokens; 0 for full causal attention */
  bool qkv_bias;                      /* the q, k and v projections have biases (Qwen2) */
  /* Gemma 2 (0 / false elsewhere). */
  float embed_scale;                 /* > 0: the embeddings are multiplied by it (sqrt(hidden_size)) */
  bool norm_plus_one;                /* RMSNorm weights are stored as offsets from 1 (the loader adds the 1) */
  bool norms_hold_one;               /* with norm_plus_one: the file's norms hold 1 + w already (GGUF gemma2) */
  bool post_norms;                   /* an RMSNorm after the attention and after the MLP, before each residual add */
  bool gelu;                         /* the MLP's activation is GELU (tanh form), not SiLU */
  float attn_scale;                  /* > 0: scores are attn_scale * q.k instead of q.k / sqrt(head_dim) */
  float attn_softcap, final_softcap; /* > 0: scores / logits soft-capped to cap * tanh(x / cap) */
  bool layer_full[MODEL_MAX_LAYERS]; /* block l attends to the whole context whatever sliding_window says */
  /* Compressed models (Lathe's own config.json fields, docs/compression.md); all 0 / false otherwise. */
  uint32_t quant_bits, quant_group;         /* quantization_config "lathe_rtn": bits 8 or 4, columns per scale */
  uint16_t layer_experts[MODEL_MAX_LAYERS]; /* lathe_experts_per_layer: experts of block l (0: n_experts) */
  bool ffn_dropped[MODEL_MAX_LAYERS];       /* lathe_dropped_moe_layers: block l has no feed-forward sub-layer */
} model_config_t;

/* The sliding window block `layer` attends within (0: the whole context). */
uint32_t model_config_window(const model_config_t *c, uint32_t layer);

/* The factor on q.k in attention scores: attn_scale, else 1 / sqrt(head_dim). */
float model_config_attn_scale(const model_config_t *c);

/* The query scale llama.cpp's gemma2 takes from a model's shape, having no key for it: 1/sqrt(hidden / heads) for
 * the 46-block model (Gemma 2 27B), else 1/sqrt(head_dim). */
float model_config_gemma2_gguf_scale(const model_config_t *c);

/* Experts of block `layer` (per-layer counts after an expert drop, else n_experts; 0 for a dense model). */
uint32_t model_config_experts(const model_config_t *c, uint32_t layer);

/* Returns the architecture's Hugging Face class name ("LlamaForCausalLM", ...); static string. */
const char *model_arch_str(model_arch_t a);

/* Returns the architecture's Hugging Face model_type ("llama", ...); static string. */
const char *model_arch_type(model_arch_t a);

/* Fills cfg from dir/config.json and, when present, dir/generation_config.json (its bos/eos ids win).
 * Unsupported architectures, activations, biases and RoPE scalings are refused with LT_E_UNSUPPORTED. */
lt_status_t model_config_from_hf(model_config_t *cfg, const char *dir, lt_err_t *err);

/* As model_config_from_hf from parsed JSON (generation may be NULL); label names the source in messages. */
lt_status_t model_config_from_json(model_config_t *cfg, const json_t *config, const json_t *generation,
                                   const char *label, lt_err_t *err);

/* Fills cfg from GGUF metadata (general.architecture "llama"; llama.expert_count > 0 makes it Mixtral). The
 * LM head counts as tied when the file has no output.weight. */
lt_status_t model_config_from_gguf(model_config_t *cfg, const gguf_t *g, lt_err_t *err);

#endif
