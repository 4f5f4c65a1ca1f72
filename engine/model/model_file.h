/* A model on disk (Hugging Face folder or GGUF file) seen as one uniform set of weights, so that the forward
 * pass does not care where they came from. Every tensor a LLaMA / Mixtral model needs is checked to exist with
 * the shape its config implies; shapes are row-major (PyTorch order): a Linear weight is [out, in].
 * Q/K layout: Hugging Face stores the Q and K projections for rotate-half RoPE, GGUF "llama" files for
 * interleaved (pairwise) RoPE. Nothing is permuted here: rope_neox tells the forward pass which op_rope mode
 * matches the rows it reads. */
#ifndef LATHE_MODEL_FILE_H
#define LATHE_MODEL_FILE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/ftensor.h"
#include "engine/model/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "common/status.h"

typedef enum model_format { MODEL_FORMAT_HF = 0, MODEL_FORMAT_GGUF } model_format_t;

/* What a tensor is, whatever its file calls it. */
typedef enum model_role {
  MR_TOK_EMBD = 0,   /* [vocab, hidden] */
  MR_OUT_NORM,       /* [hidden] */
  MR_LM_HEAD,        /* [vocab, hidden] */
  MR_ATTN_NORM,      /* [hidden] */
  MR_WQ,             /* [n_heads * head_dim, hidden] */
  MR_WK,             /* [n_kv_heads * head_dim, hidden] */
  MR_WV,             /* [n_kv_heads * head_dim, hidden] */
  MR_WO,             /* [hidden, n_heads * head_dim] */
  MR_FFN_NORM,       /* [hidden] */
  MR_FFN_GATE,       /* [ffn, hidden] */
  MR_FFN_UP,         /* [ffn, hidden] */
  MR_FFN_DOWN,       /* [hidden, ffn] */
  MR_ROUTER,         /* [n_experts, hidden] */
  MR_EXP_GATE,       /* [ffn, hidden], one per expert */
  MR_EXP_UP,         /* [ffn, hidden], one per expert */
  MR_EXP_DOWN,       /* [hidden, ffn], one per expert */
  MR_BQ,             /* [n_heads * head_dim] (qkv_bias) */
  MR_BK,             /* [n_kv_heads * head_dim] (qkv_bias) */
  MR_BV,             /* [n_kv_heads * head_dim] (qkv_bias) */
  MR_WQKV,           /* [(n_heads + 2 n_kv_heads) * head_dim, hidden]: q, k, v rows fused (Phi-3 files) */
  MR_FFN_GATE_UP,    /* [2 ffn, hidden]: gate rows, then up rows (Phi-3 files) */
  MR_POST_ATTN_NORM, /* [hidden]: after the attention, before the residual add (Gemma 2) */
  MR_POST_FFN_NORM,  /* [hidden]: after the MLP, before the residual add (Gemma 2) */
  MR_COUNT
} model_role_t;

typedef struct model_ffn {
  ft_tensor_t gate, up, down;
} model_ffn_t;

/* One transformer block. Dense models fill ffn; MoE models fill router and experts instead. */
typedef struct model_layer {
  ft_tensor_t attn_norm, wq, wk, wv, wo, ffn_norm;
  ft_tensor_t bq, bk, bv;                    /* qkv_bias models only */
  ft_tensor_t post_attn_norm, post_ffn_norm; /* post_norms models only */
  model_ffn_t ffn;
  ft_tensor_t router;
  model_ffn_t *experts; /* [n_experts], NULL for dense; owned by the model_weights */
} model_layer_t;

/* One entry of the flat list: a canonical (Hugging Face) name for every distinct parameter tensor. */
typedef struct model_tensor {
  const char *name; /* e.g. "model.layers.3.self_attn.q_proj.weight"; owned by the model_weights */
  model_role_t role;
  int32_t layer, expert; /* -1 where it does not apply */
  const ft_tensor_t *t;  /* points into the model_weights */
} model_tensor_t;

/* The weights of a model. Tensor views (ft_tensor_t) point into the file object they were mapped from, which
 * must stay open while they are used. For a GGUF MoE file each expert is a slice of the stacked
 * ffn_*_exps tensor (its name is the stacked tensor's). */
typedef struct model_weights {
  model_format_t format;
  bool rope_neox; /* true: Q/K rows in rotate-half order (HF); false: interleaved pairs (GGUF) */
  ft_tensor_t tok_embd, out_norm, lm_head; /* lm_head is a copy of tok_embd's view when tied */
  uint32_t n_layers;
  model_layer_t *layers;
  uint32_t n_tensors;
  model_tensor_t *tensors; /* every parameter once (a tied LM head is not repeated), in forward order */
} model_weights_t;

/* Maps the tensors of a safetensors set in Hugging Face naming onto cfg's layout, checking presence, shape
 * and dtype (floating point, or quantised with its scales: docs/compression.md) of each; the first problem is
 * reported naming the tensor. Caller owns *out (model_weights_destroy); st must outlive it. */
lt_status_t model_weights_from_st(model_weights_t **out, const model_config_t *cfg, const st_file_t *st, lt_err_t *err);

/* As model_weights_from_st for a GGUF file in llama.cpp naming (token_embd, blk.N.attn_q, ...,
 * ffn_gate_inp and stacked ffn_*_exps for MoE). g must outlive *out. */
lt_status_t model_weights_from_gguf(model_weights_t **out, const model_config_t *cfg, const gguf_t *g, lt_err_t *err);

/* Frees *self_p and sets it to NULL; NULL-safe. */
void model_weights_destroy(model_weights_t **self_p);

typedef struct model_file model_file_t;

/* Opens a model: a folder with config.json and safetensors weights, or a .gguf file (recognised by its
 * magic). Reads the config, maps the weights and validates them. Caller owns *out (model_file_destroy). */
lt_status_t model_file_open(model_file_t **out, const char *path, lt_err_t *err);

/* A fingerprint of what is on disk at path (a model file, or a folder and every file directly in it): device,
 * inode, size and modification and change times, hashed. A rewrite, a rename into place or an edit in place
 * changes it. 0 when path cannot be read. */
uint64_t model_file_stamp(const char *path);

/* Closes the files and frees *self_p, setting it to NULL; NULL-safe. */
void model_file_destroy(model_file_t **self_p);

/* The model's hyper-parameters; owned by m. */
const model_config_t *model_file_config(const model_file_t *m);

/* The model's weights; owned by m. */
const model_weights_t *model_file_weights(const model_file_t *m);

/* The GGUF file behind m (for its tokenizer), or NULL for a Hugging Face folder; owned by m. */
const gguf_t *model_file_gguf(const model_file_t *m);

/* The safetensors set behind m, or NULL for a GGUF file; owned by m. */
const st_file_t *model_file_st(const model_file_t *m);

/* The scales of a quantised weight t of m's weights (dtype I8 or U8: "<name>.scales", F16, docs/compression.md),
 * with the weight's logical column count in *cols (its rows are padded); NULL for any other tensor. Owned by m. */
const ft_tensor_t *model_file_scales(const model_file_t *m, const ft_tensor_t *t, uint32_t *cols);

/* Writes the GGUF name of role r in block `layer` (as llama.cpp's converter names it) into buf (cap bytes); an
 * expert's role names the tensor all of the block's experts are stacked in. False for an unknown role. */
bool model_role_gguf_name(model_role_t r, int32_t layer, char *buf, size_t cap);

#endif
