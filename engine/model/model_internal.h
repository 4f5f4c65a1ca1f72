/* Private to engine/model: the device-side layout of a loaded model, shared by the loader (model_load.c) and
 * the forward pass (forward.c). */
#ifndef LATHE_MODEL_INTERNAL_H
#define LATHE_MODEL_INTERNAL_H

#include "engine/model/model.h"
#include "engine/model/model_file.h"
#include "engine/ops/ops.h"

/* Rows of logits computed at once, at most (bounds the logits buffer to LOGIT_ROWS * vocab floats); fewer when
 * the device binds less. */
#define LOGIT_ROWS 32u

/* A weight matrix [rows, cols] on the device, split into row pieces when it exceeds one binding. */
typedef struct dmat {
  lt_dtype_t dtype; /* f32, f16, or i8 / i4: quantised (engine/ops/quant.h), with scales */
  uint32_t rows, cols;
  uint32_t rows_per_piece, n_pieces;
  gpu_buf_t **piece;
  gpu_buf_t **scales; /* quantised only: each piece's scales, stype, group columns per scale */
  lt_dtype_t stype;
  uint32_t group;
} dmat_t;

typedef struct dffn {
  dmat_t gate, up, down;
} dffn_t;

typedef struct dlayer {
  gpu_buf_t *attn_norm, *ffn_norm;           /* f32 [hidden] */
  gpu_buf_t *bq, *bk, *bv;                   /* f32 q, k, v biases (qkv_bias models), else NULL */
  gpu_buf_t *post_attn_norm, *post_ffn_norm; /* f32 [hidden] (post_norms models), else NULL */
  dmat_t wq, wk, wv, wo;
  dffn_t ffn;
  dmat_t router;
  dffn_t *experts;
  uint32_t n_experts; /* this block's experts (an expert drop may leave different counts per block) */
  bool ffn_dropped;   /* compressed model: no feed-forward sub-layer (docs/compression.md) */
} dlayer_t;

/* The activation arena for up to cap rows (tokens) per pass. */
typedef struct acts {
  uint32_t cap;                                    /* rows per pass */
  uint32_t logit_rows;                             /* rows of logits per chunk */
  gpu_buf_t *x, *xn, *q, *k, *v, *att, *gate, *up; /* [cap, width] f32 */
  gpu_buf_t *ids, *pos;                            /* i32 [cap] */
  gpu_buf_t *sel, *tgt, *lse, *nll;                /* [LOGIT_ROWS] */
  gpu_buf_t *top_idx, *top_val;                    /* [LOGIT_ROWS, MODEL_TOP_MAX] (MODEL_OUT_TOP) */
  gpu_buf_t *xs, *logits;                          /* [LOGIT_ROWS, hidden], [LOGIT_ROWS, vocab] */
  gpu_buf_t *addv;                                 /* f32 [hidden] */
  gpu_buf_t *sub;                                  /* [cap, hidden]: a sub-layer's output before its post-norm */
  /* MoE */
  gpu_buf_t *rlog, *rprob, *tk_idx, *tk_val; /* [cap, E], [cap, E], [cap, k] */
  gpu_buf_t *xe, *ge, *ue, *oe;              /* expert work rows */
  gpu_buf_t *eids, *ew;                      /* [cap * k + 4 * E] */
  gpu_buf_t *mask;                           /* f32 [n_layers, mask_stride] */
  uint32_t mask_stride;                      /* E rounded up so each layer's row is a bindable offset */
} acts_t;

struct model {
  gpu_t *g;
  char path[1024];
  model_config_t cfg;
  bool rope_neox;
  dmat_t embed, lm_head;
  gpu_buf_t *out_norm;
  dlayer_t *layers;
  model_mem_t mem;
  acts_t a;
  gpu_buf_t *rope; /* f32 [rope_rows, rope_dim / 2, 2] */
  uint32_t rope_rows;
  bool tied;      /* lm_head shares embed's pieces */
  bool force_f32; /* f16 weights placed as f32 (model_load_opts_t) */
  model_param_t *params;
  uint32_t n_params;
  const model_file_t *file;       /* during model_load only: where quantised weights find their scales */
  const model_adapter_t *adapter; /* applied by the forward pass when set (model_set_adapter) */
  const model_zread_t *zread;     /* weights read perturbed when set (model_set_zread) */
  gpu_buf_t *zscratch;            /* f32 [MODEL_ZREAD_CHUNK]: a perturbed stretch of a weight for a matmul */
};

/* Whether the model's adapter puts a LoRA pair on projection `target` of block l (adapter.c). */
bool adapter_has_lora(const model_t *m, uint32_t l, int target);

/* The forward pass's adapter steps (engine/model/adapter.c); each does nothing when no adapter (of its kind, at
 * that place) is set. y += (alpha / r) (x A^T) B^T for target (0..6: q, k, v, o, gate, up, down) of block l, over T
 * rows. */
lt_status_t adapter_lora(const model_t *m, gpu_cmd_t *c, gpu_buf_t *y, gpu_buf_t *x, uint32_t l, int target, uint32_t T,
                         lt_err_t *err);
/* h += relu(h D^T) U^T at site 0 (after the attention) or 1 (after the MLP) of block l, over T rows. */
lt_status_t adapter_bottleneck(const model_t *m, gpu_cmd_t *c, gpu_buf_t *h, uint32_t l, int site, uint32_t T,
                               lt_err_t *err);

#endif
