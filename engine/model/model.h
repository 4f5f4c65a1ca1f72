/* A loaded model on the GPU: weights placed once, per-sequence KV caches, a batched forward pass with hooks for
 * steering and analysis, generation and scoring. */
#ifndef LATHE_MODEL_H
#define LATHE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/ftensor.h"
#include "engine/gpu/gpu.h"
#include "engine/model/model_config.h"
#include "common/status.h"

typedef struct model model_t;
typedef struct model_seq model_seq_t;

/* Options for model_load(); zero-initialised means defaults. */
typedef struct model_load_opts {
  uint32_t max_tokens_per_pass; /* activation rows held at once; 0 = 512 */
  bool force_f32; /* place f16 and block-quantised weights as f32 too (tuning: f16 would round each perturbation) */
} model_load_opts_t;

/* What the loader placed on the device. */
typedef struct model_mem {
  uint64_t weight_file_bytes;   /* bytes the weights take in their file dtypes */
  uint64_t weight_device_bytes; /* bytes the weights take on the device */
  uint64_t activation_bytes;    /* bytes of the activation arena */
} model_mem_t;

/* Loads a Hugging Face folder or a .gguf file onto g: f32, f16 and bf16 weights stay in their dtype (16-bit ones
 * need 16-bit storage buffers, else they become f32; opts->force_f32 makes them f32); GGUF's block formats (Q4_0 ..
 * Q6_K, engine/ops/qblock.h) stay as they are in the file, read in place by the shaders (force_f32 dequantises
 * them); norms are converted to f32 at load; int8 / int4 weights of a compressed model stay quantised
 * (docs/compression.md). Tensors larger than the device's maxStorageBufferRange are split into row pieces.
 * Caller owns the result (model_destroy); g must outlive it. NULL with err on failure. */
model_t *model_load(gpu_t *g, const char *path, const model_load_opts_t *opts, lt_err_t *err);

/* Frees the model's device memory and sets *m to NULL; NULL-safe. */
void model_destroy(model_t **m);

/* The model's hyper-parameters; owned by m. */
const model_config_t *model_config(const model_t *m);

/* Bytes placed by the loader; owned by m. */
const model_mem_t *model_mem(const model_t *m);

/* The gpu the model lives on. */
gpu_t *model_gpu(const model_t *m);

/* The folder or file the model was loaded from; owned by m. */
const char *model_path(const model_t *m);

/* An adapter for a loaded model: LoRA pairs in PEFT's layout (adapter_config.json with peft_type LORA and
 * adapter_model.safetensors) or a Lathe CogSteer bottleneck adapter (adapter_config.json with lathe_adapter and
 * adapter.safetensors), as `tune` writes them. */
typedef struct model_adapter model_adapter_t;

/* Reads the adapter folder dir for m, checks every tensor against m's shapes and places it on m's device (f32).
 * Caller owns (model_adapter_destroy; before m). NULL with err naming what does not fit. */
model_adapter_t *model_adapter_load(model_t *m, const char *dir, lt_err_t *err);

/* Frees the adapter and sets *a to NULL; NULL-safe. Unset it from its model first. */
void model_adapter_destroy(model_adapter_t **a);

/* Makes m's forward pass (generation, scoring, hooks) apply a on top of the weights; NULL removes it. a must be
 * loaded for m and outlive its use. */
void model_set_adapter(model_t *m, const model_adapter_t *a);

/* The adapter forward passes of m apply now (NULL: none); owned by whoever loaded it. */
const model_adapter_t *model_get_adapter(const model_t *m);

/* A zeroth-order perturbation that forward passes apply to the weights as they read them: parameter piece i
 * (model_param_at) reads as w + scale * z(seed, tensor_id[i], element within the piece) where on[i], z as
 * op_perturb() draws it; the weights themselves are not changed. */
typedef struct model_zread {
  uint64_t seed;
  float scale;
  const uint32_t *tensor_id; /* [model_param_count] */
  const bool *on;            /* [model_param_count] */
} model_zread_t;

/* Makes later forward passes read the weights perturbed by *z (NULL: as they are). m keeps the pointer, and the
 * arrays it points to, until the next call: the caller owns them. Pieces marked on must be model_param_zreadable.
 * While one is set the fused decode kernels stand aside, and matmuls read a perturbed copy of at most
 * MODEL_ZREAD_CHUNK floats of their weight at a time (a scratch buffer m keeps until it is destroyed). */
lt_status_t model_set_zread(model_t *m, const model_zread_t *z, lt_err_t *err);

/* Floats of the scratch buffer through which a perturbed matmul reads its weight, at most (4 MiB). */
#define MODEL_ZREAD_CHUNK (1u << 20)

/* Whether the forward pass reads piece i only through a matmul or the embedding gather in a float dtype, which
 * model_set_zread() perturbs (norm weights and biases are read by other ops: they are not). */
bool model_param_zreadable(const model_t *m, uint32_t i);

/* Whether Q and K rotate in rotate-half pairs (Hugging Face layout) rather than interleaved pairs (GGUF). */
bool model_rope_neox(const model_t *m);

/* One parameter tensor on the device: a weight matrix split into row pieces is listed once per piece. The list
 * is in forward order and names each tensor as Hugging Face does; a tied LM head is not listed twice. */
typedef struct model_param {
  char name[96];         /* e.g. "model.layers.3.mlp.up_proj.weight" */
  int32_t layer, expert; /* -1 where it does not apply */
  bool is_norm;          /* a norm weight vector (tuning jobs do not decay these) */
  lt_dtype_t dtype;      /* device dtype: f32, f16 or bf16, or i8 / i4 for quantised weights (engine/ops/quant.h) */
  uint32_t rows, cols;   /* shape of the whole tensor; a vector has rows 1 */
  uint32_t row0, n_rows; /* the rows this piece holds */
  gpu_buf_t *buf;        /* the piece's data, owned by the model */
  gpu_buf_t *scales;     /* quantised only: the piece's scales [n_rows, ceil(cols / group)], owned by the model */
  lt_dtype_t stype;      /* quantised only: the scales' dtype (f16 or f32) */
  uint32_t group;        /* quantised only: columns per scale */
} model_param_t;

/* Number of parameter pieces of the model. */
uint32_t model_param_count(const model_t *m);

/* The i-th parameter piece; owned by m. */
const model_param_t *model_param_at(const model_t *m, uint32_t i);

/* Options for model_save(); zero-initialised means defaults. */
typedef struct model_save_opts {
  uint64_t max_shard_bytes; /* 0: 2 GiB shards, as Hugging Face writes them */
  const char *const *meta;  /* (key, value) pairs for the safetensors __metadata__ ("format": "pt" is added) */
  uint32_t n_meta;
  lt_dtype_t f32_as; /* f32 tensors are written as this: LT_F32 (0, the default), LT_F16 or LT_BF16 */
} model_save_opts_t;

/* Writes the model's current weights as a Hugging Face folder dir (created if needed): config.json from the
 * model's config, model.safetensors (sharded with an index when large) with 16-bit weights kept in their dtype,
 * quantised ones quantised (docs/compression.md) and the rest f32, and the source folder's tokenizer.json,
 * tokenizer_config.json and generation_config.json when it has them. The result loads in Lathe and (unless
 * quantised) in the Python stack. */
lt_status_t model_save(model_t *m, const char *dir, const model_save_opts_t *opts, lt_err_t *err);

/* Writes a Hugging Face folder dir (created with its parents if needed) from host tensors, as model_save() does: the tensors in
 * their order and dtypes, config.json from cfg, and src_dir's tokenizer and generation files when src_dir (may be
 * NULL) is a folder that has them. */
lt_status_t model_folder_write(const char *dir, const model_config_t *cfg, const ft_tensor_t *tensors, uint32_t n,
                               const char *src_dir, const model_save_opts_t *opts, lt_err_t *err);

/* config.json for cfg in the fields transformers reads, plus Lathe's compression fields. Caller owns (json_decref). */
json_t *model_config_json(const model_config_t *cfg);

/* A sequence: its KV cache for every layer (f32) and its length. capacity is the most tokens it can hold
 * (0: the model's max_position, capped at 4096). Caller owns (model_seq_destroy). */
model_seq_t *model_seq_new(model_t *m, uint32_t capacity, lt_err_t *err);

/* Frees a sequence and sets *s to NULL; NULL-safe. */
void model_seq_destroy(model_seq_t **s);

/* Tokens held by the sequence. */
uint32_t model_seq_len(const model_seq_t *s);

/* Forgets everything after the first n tokens (n <= length). */
void model_seq_truncate(model_seq_t *s, uint32_t n);

/* ---- hooks: each costs nothing when its pointer is NULL ---- */

/* Called with the residual stream entering block `layer` (layer == n_layers: the final hidden state before the
 * output norm) for batch item `item` (its index in the caller's items array; an item longer than one pass is reported once per pass, with that pass's tokens): h is [n_tokens, hidden], valid during the call only. */
typedef void (*model_resid_fn)(void *ctx, uint32_t layer, uint32_t item, const float *h, uint32_t n_tokens,
                               uint32_t hidden);

/* Called with the per-head attention outputs of block `layer` before the output projection for batch item
 * `item`: heads is [n_tokens, n_heads * head_dim] and may be modified in place; return true when modified so
 * the change is written back. */
typedef bool (*model_attn_fn)(void *ctx, uint32_t layer, uint32_t item, float *heads, uint32_t n_tokens,
                              uint32_t n_heads, uint32_t head_dim);

/* Called with each MoE layer's router probabilities (softmax over experts, after masking) for all rows of the
 * pass: probs is [n_rows, n_experts]. */
typedef void (*model_router_fn)(void *ctx, uint32_t layer, const float *probs, uint32_t n_rows, uint32_t n_experts);

/* Where on_site reports activations: the inputs of the linear layers and the stream around the feed-forward
 * sub-layer (calibration: pruning norms, layer-drop scores). */
typedef enum model_site {
  MODEL_SITE_ATTN_IN = 0, /* rmsnorm(h_l): input of q_proj, k_proj, v_proj [rows, hidden] */
  MODEL_SITE_ATTN_OUT,    /* per-head attention output: input of o_proj [rows, n_heads * head_dim] */
  MODEL_SITE_FFN_RESID,   /* the stream entering the feed-forward sub-layer, before its norm [rows, hidden] */
  MODEL_SITE_FFN_IN,      /* its norm: input of the router, or of gate_proj and up_proj [rows, hidden] */
  MODEL_SITE_FFN_ACT,     /* dense: silu(gate_proj x) * up_proj x, input of down_proj [rows, intermediate] */
  MODEL_SITE_EXPERT_IN,   /* MoE: the rows routed to one expert, input of its w1 and w3 [rows_e, hidden] */
  MODEL_SITE_EXPERT_ACT,  /* MoE: silu(w1 x) * w3 x of those rows, input of its w2 [rows_e, intermediate] */
  MODEL_SITE_FFN_OUT,     /* the stream after the feed-forward sub-layer [rows, hidden] */
  MODEL_SITE_COUNT
} model_site_t;

/* Called at `site` of block `layer` (expert: the expert at the expert sites, else -1) with x [rows, cols]: every row
 * of the pass (the items' new tokens in item order), or at the expert sites the rows routed to that expert in
 * ascending order. x is valid during the call only. */
typedef void (*model_site_fn)(void *ctx, model_site_t site, uint32_t layer, int32_t expert, const float *x,
                              uint32_t rows, uint32_t cols);

typedef struct model_hooks {
  void *ctx;
  /* Reading the residual stream: capture_resid[l] (l in 0..n_layers) selects the layers reported to on_resid. */
  const bool *capture_resid;
  model_resid_fn on_resid;
  /* Adding a vector to the residual stream entering block add_layer: h += add_alpha * add_vec[hidden] at the
   * positions [add_from, add_to) of every item's new tokens (positions counted in the sequence; add_to 0 means
   * no end). */
  const float *add_vec;
  uint32_t add_layer;
  float add_alpha;
  uint32_t add_from, add_to;
  /* Reading and replacing per-head attention outputs of block attn_layer. */
  model_attn_fn on_attn;
  uint32_t attn_layer;
  /* Reading MoE router probabilities. */
  model_router_fn on_router;
  /* skip_block[l]: block l is not run at all (the stream passes through unchanged). */
  const bool *skip_block;
  /* skip_moe[l]: the feed-forward (MoE or dense) sub-layer of block l is not run; attention stays. */
  const bool *skip_ffn;
  /* expert_mask[l * n_experts + e]: expert e of layer l is never routed to. */
  const bool *expert_mask;
  /* Reading activations at sites: capture_site[s] (s < MODEL_SITE_COUNT) selects the sites reported to on_site,
   * in every block. Each report waits for the device, so it costs a pass its speed. */
  const bool *capture_site;
  model_site_fn on_site;
} model_hooks_t;

/* What a forward pass returns for one batch item. */
typedef enum model_out { MODEL_OUT_NONE = 0, MODEL_OUT_LAST, MODEL_OUT_ALL, MODEL_OUT_NLL, MODEL_OUT_TOP } model_out_t;

/* Most candidates MODEL_OUT_TOP returns (op_topk's limit; 64 covers the usual top_k settings, 40 and 50). */
#define MODEL_TOP_MAX 64u

/* One sequence's share of a batched forward pass. */
typedef struct model_item {
  model_seq_t *seq;
  const int32_t *tokens; /* appended to seq */
  uint32_t n_tokens;
  model_out_t out;
  /* MODEL_OUT_LAST: vocab floats; MODEL_OUT_ALL: n_tokens * vocab floats; MODEL_OUT_NLL: n_tokens floats,
   * out[i] = -log p(targets[i] | sequence up to token i). Caller owns. */
  float *result;
  const int32_t *targets; /* MODEL_OUT_NLL only: n_tokens ids (a negative id gives NaN) */
  /* MODEL_OUT_TOP: the top_k (1..MODEL_TOP_MAX, at most the vocabulary) largest logits of the last position,
   * descending with the lower id first on ties, into result, and their ids into top_ids (caller owns): selected on
   * the device, so a decoding step downloads 8 bytes per candidate instead of the vocabulary's logits. */
  uint32_t top_k;
  int32_t *top_ids;
  /* MODEL_OUT_TOP for a nucleus cut over the whole vocabulary (top_p in (0, 1), top_temp > 0, top_mass set): the
   * row's mass at that temperature, sum over the vocabulary of exp((logit - max) / top_temp), into *top_mass (an
   * f32 log-sum-exp on the device). Where the candidates hold less than top_p of it, the nucleus reaches past them:
   * the row's logits are then downloaded into top_logits (vocabulary floats, caller owns) and *top_mass is 0. */
  float top_temp, top_p;
  double *top_mass;
  float *top_logits;
  /* Input embeddings from outside (a speech connector's rows): tokens [embeds_at, embeds_at + n_embeds) of this
   * item enter the first block as these hidden-size vectors (host floats, used as they are: no embedding scale)
   * instead of their tokens' embeddings; the tokens there must still be valid ids. n_embeds 0: none. */
  const float *embeds;
  uint32_t embeds_at, n_embeds;
} model_item_t;

/* Runs the tokens of every item through the model (one pass over the weights for the whole batch), appending
 * them to the items' sequences, and fills each item's result. hooks may be NULL. */
lt_status_t model_forward(model_t *m, model_item_t *items, uint32_t n_items, const model_hooks_t *hooks, lt_err_t *err);

/* Whether forward passes of up to 4 tokens run the attention's q, k and v products as one dispatch (op_gemv_qkv)
 * and a gated MLP's gate, up and activation as one (op_gemv_glu), where the weights allow it (default on; the
 * logits are the same either way). For tests and side-by-side measurements; process-wide. */
void model_fuse_decode(bool on);

/* Whether the fused q, k, v product also turns q and k by RoPE and writes k and v into a single sequence's KV
 * cache (default on; same logits). For side-by-side measurements; process-wide. */
void model_fuse_rope(bool on);

#endif
