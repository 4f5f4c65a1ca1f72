/* First-order training over a loaded model: a forward pass that keeps what the backward needs, an explicit
 * backward pass over LLaMA and Mixtral blocks written like the forward (no autograd framework), and the trainable
 * tensors with their gradients. What is trained: every parameter (full), LoRA pairs on chosen projections, or
 * CogSteer's bottleneck adapters at one block (the backward stops there and never runs below it).
 *
 * Conventions: a batch is n_seq sequences of T tokens each, packed as R = n_seq * T rows. mask[s * (T-1) + t]
 * (0 or 1) says whether target ids[s][t+1] counts; the loss is the mean cross-entropy over the targets that count
 * (tools/lathe_ref.py masked_lm_loss). Gradients accumulate over calls until train_zero_grad(). */
#ifndef LATHE_TRAIN_H
#define LATHE_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/model/model.h"

typedef struct train train_t;

/* What is trained. TRAIN_FROZEN trains nothing: a forward-only state (a distillation teacher, evaluation) that
 * never allocates a gradient, of parameters or of activations, and keeps only each block's input (recompute).
 * TRAIN_INPUTS trains nothing of the model either, but its backward runs down to the input embeddings set with
 * train_set_inputs() (a speech connector learning to feed a frozen LLM). */
typedef enum train_what { TRAIN_FULL = 0, TRAIN_LORA, TRAIN_ADAPTER, TRAIN_FROZEN, TRAIN_INPUTS } train_what_t;

/* LoRA target projections (a bit each). */
enum {
  TRAIN_LORA_Q = 1u << 0,
  TRAIN_LORA_K = 1u << 1,
  TRAIN_LORA_V = 1u << 2,
  TRAIN_LORA_O = 1u << 3,
  TRAIN_LORA_GATE = 1u << 4,
  TRAIN_LORA_UP = 1u << 5,
  TRAIN_LORA_DOWN = 1u << 6,
};

/* Options of train_new(); zero-initialised means full training without recomputation. */
typedef struct train_opts {
  train_what_t what;
  uint32_t lora_rank;     /* LoRA: r >= 1 */
  float lora_alpha;       /* LoRA: the update is (alpha / r) B A */
  uint32_t lora_targets;  /* LoRA: TRAIN_LORA_* bits */
  uint32_t adapter_layer; /* adapter: block M */
  uint32_t adapter_dim;   /* adapter: bottleneck width (0: hidden / 16, at least 1) */
  uint64_t seed;          /* initialisation of LoRA A and adapter down-projections */
  bool recompute;         /* keep only block inputs; recompute inside each block during the backward */
  float balance;          /* mixture of experts: weight of the load-balancing loss (mean over MoE blocks; 0: off) */
} train_opts_t;

/* One trainable tensor: its f32 values and gradient on the device (owned by the train_t or, for full training,
 * the values by the model). */
typedef struct train_tensor {
  char name[160]; /* Hugging Face name, or the PEFT / adapter name for added tensors */
  uint32_t rows, cols;
  bool decay; /* weight decay applies (not to norms and biases) */
  gpu_buf_t *value, *grad;
  bool owns_value; /* value was allocated by the training state (LoRA, adapters), not the model's own */
} train_tensor_t;

/* Counters of the last train_grad() call, for tests and benchmarks. */
typedef struct train_stats {
  uint32_t backward_dispatches;   /* dispatches recorded by the backward pass */
  uint32_t lowest_block_backward; /* the lowest block the backward ran (n_layers when none) */
  uint64_t activation_bytes;      /* device bytes held for saved activations and gradients of activations */
  uint64_t gradient_bytes;        /* device bytes of gradients: the trainable tensors' and the activations' */
  /* The last train_grad() under distillation (train_set_distill): */
  double ce;                     /* the student's masked mean cross-entropy on the batch */
  double teacher_ce;             /* the teacher's, on the same batch */
  uint32_t atkd_easy, atkd_hard; /* ATKD: target tokens in each set */
  /* The last train_grad_pairs() under DPO: */
  double dpo_margin;   /* mean over pairs of beta * (the policy's log-ratio to the reference, chosen minus rejected) */
  double dpo_accuracy; /* share of pairs whose margin is above 0 */
} train_stats_t;

/* The loss train_grad() minimises. */
typedef enum train_loss_kind {
  TRAIN_LOSS_CE = 0, /* masked mean cross-entropy against the data */
  TRAIN_LOSS_KD,     /* masked mean of T^2 KL(pT || pS) at temperature T */
  TRAIN_LOSS_ATKD,   /* lambda NCKD(easy) + (1 - lambda) (TCKD(hard) + NCKD(hard)), each a mean over its set */
  TRAIN_LOSS_DPO,    /* direct preference optimisation against a frozen reference (train_grad_pairs) */
} train_loss_kind_t;

/* The settings of a loss taken against a second, frozen model (train_set_distill): distillation's teacher, or
 * DPO's reference. */
typedef struct train_distill {
  train_loss_kind_t kind;
  train_t *teacher;  /* a TRAIN_FROZEN state over the teacher (DPO: the reference) model: same device and
                        vocabulary; not owned */
  float temperature; /* KD / ATKD: > 0 */
  float lambda;      /* ATKD: weight of the easy tokens, in [0, 1] */
  float beta;        /* DPO: > 0 */
} train_distill_t;

/* Prepares training of m: checks the options against the model (LoRA rank >= 1 and targets, adapter block in
 * range, full training needs f32 weights: load with force_f32), allocates gradients (and LoRA / adapter tensors,
 * LoRA B and adapter up-projections at zero so the model starts unchanged). m must outlive the result. Caller
 * owns (train_destroy); NULL with err naming what is wrong. */
train_t *train_new(model_t *m, const train_opts_t *o, lt_err_t *err);

/* Frees the training state and sets *t to NULL; NULL-safe. */
void train_destroy(train_t **t);

/* Number of trainable tensors. */
uint32_t train_tensor_count(const train_t *t);
/* The i-th trainable tensor; owned by t. */
const train_tensor_t *train_tensor_at(const train_t *t, uint32_t i);

/* A run of positions whose input embeddings come from outside: positions [pos, pos + n) of sequence seq of the
 * next batches take rows [row, row + n) of the embedding buffer. */
typedef struct train_input_run {
  uint32_t seq, pos, n, row;
} train_input_run_t;

/* Makes the next passes read the runs' input embeddings from emb (device, f32 [rows, hidden], used as they are:
 * no embedding scale) instead of their tokens' (whose ids must still be valid; they are placeholders). With
 * demb, each backward also writes dLoss/d(those rows) into demb at the same rows (overwritten). emb NULL clears.
 * The runs are copied; they are checked against each batch. A state that trains the token embeddings (full) or
 * whose backward stops above block 0 (an adapter) cannot take a gradient for them: LT_E_UNSUPPORTED. */
lt_status_t train_set_inputs(train_t *t, gpu_buf_t *emb, gpu_buf_t *demb, const train_input_run_t *runs, uint32_t n,
                             lt_err_t *err);

/* Sets every gradient to zero. */
lt_status_t train_zero_grad(train_t *t, lt_err_t *err);

/* Runs the forward and backward pass of one batch and adds the gradient of the masked mean cross-entropy, times
 * scale (1 / accumulation steps), to the gradients. *loss gets the batch loss (unscaled). ids: n_seq * T token
 * ids; mask: n_seq * (T - 1) of 0/1. */
lt_status_t train_grad(train_t *t, const int32_t *ids, const uint8_t *mask, uint32_t n_seq, uint32_t T, float scale,
                       double *loss, lt_err_t *err);

/* As train_grad, with row (s, t)'s target labels[s * T + t + 1] instead of ids[s * T + t + 1] (KID: the inputs
 * rewritten, the labels kept); labels NULL means ids. Labels are read only where the mask counts. */
lt_status_t train_grad_labeled(train_t *t, const int32_t *ids, const int32_t *labels, const uint8_t *mask,
                               uint32_t n_seq, uint32_t T, float scale, double *loss, lt_err_t *err);

/* DPO's gradient of a batch of n_pairs preference pairs: sequence 2p is pair p's prompt + chosen completion,
 * sequence 2p + 1 its prompt + rejected completion, the mask covering the completion tokens (of T each, as for
 * train_grad). With the log-probabilities of the completions summed over their tokens under the policy (t) and the
 * frozen reference (train_set_distill with TRAIN_LOSS_DPO), pair p's loss is
 * -log sigmoid(beta ((lp_w - lr_w) - (lp_l - lr_l))), times weights[p] (NULL: 1); the batch loss is their mean
 * over the pairs, and its gradient times scale is added. *loss gets the batch loss. One forward pass of each model
 * and one backward pass of the policy; ref_lp, when not NULL, gives lr per sequence (2 * n_pairs doubles, from
 * train_compare on the reference) and the reference's forward is skipped (SAM's second pass, repeated batches). */
lt_status_t train_grad_pairs(train_t *t, const int32_t *ids, const uint8_t *mask, const float *weights,
                             const double *ref_lp, uint32_t n_pairs, uint32_t T, float scale, double *loss,
                             lt_err_t *err);

/* DPO's loss of one pair whose implicit reward margin is z: -log sigmoid(z) = log(1 + exp(-z)), without overflow. */
double train_dpo_pair_loss(double z);

/* Forward only, t and (when not NULL) the frozen ref on the same batch (ids, mask as for train_grad): per sequence
 * s, lp[s] the summed log-probability of its counted targets under t, lr[s] under ref, and kl[s] the summed
 * KL(p_t || p_ref) of the next-token distributions at those positions. Any output may be NULL; each holds n_seq
 * doubles, caller-owned. */
lt_status_t train_compare(train_t *t, train_t *ref, const int32_t *ids, const uint8_t *mask, uint32_t n_seq, uint32_t T,
                          double *lp, double *lr, double *kl, lt_err_t *err);

/* Makes train_grad() minimise a distillation loss against d->teacher, which runs forward only on the same batch
 * (CE: back to plain cross-entropy). train_loss() stays the cross-entropy. LT_E_INVALID when the teacher is not
 * frozen, sits on another device or has another vocabulary size, or a setting is out of range. */
lt_status_t train_set_distill(train_t *t, const train_distill_t *d, lt_err_t *err);

/* ATKD's split of one batch: u[i] = 1 - pT(target) of n tokens; those below the median (the mean of the middle
 * two for an even count) are easy, the rest hard. w[2i] (TCKD) and w[2i + 1] (NCKD) get the weights that make
 * sum_i w[2i] TCKD_i + w[2i + 1] NCKD_i the ATKD loss times scale; *easy and *hard the set sizes. */
void train_atkd_weights(const float *u, uint32_t n, float lambda, float scale, float *w, uint32_t *easy,
                        uint32_t *hard);

/* The model's greedy prediction of every next token of a batch, forward only: next[s * T + t] is the argmax of the
 * logits at position t (the prediction for position t + 1). next holds n_seq * T ids, caller-owned. */
lt_status_t train_predict(train_t *t, const int32_t *ids, uint32_t n_seq, uint32_t T, int32_t *next, lt_err_t *err);

/* The masked mean cross-entropy of a batch with the current trainable values, forward only (evaluation). */
lt_status_t train_loss(train_t *t, const int32_t *ids, const uint8_t *mask, uint32_t n_seq, uint32_t T, double *loss,
                       lt_err_t *err);

/* Counters of the last train_grad(); owned by t. */
const train_stats_t *train_stats(const train_t *t);

/* Folds the LoRA pairs into dst, a copy of the base loaded with f32 weights (force_f32): W += (alpha / r) B A for
 * every pair, summed on the host in double. LT_E_INVALID when t is not LoRA training or dst lacks a target. */
lt_status_t train_lora_merge(const train_t *t, model_t *dst, lt_err_t *err);

/* Writes the LoRA pairs in PEFT's layout (adapter_config.json naming base, adapter_model.safetensors) or the
 * bottleneck adapters in Lathe's (adapter_config.json, adapter.safetensors) into the existing folder dir; they
 * load back with model_adapter_load(). LT_E_INVALID for full training. */
lt_status_t train_save_adapter(const train_t *t, const char *dir, const char *base, lt_err_t *err);

/* Starts LoRA or adapter training from a folder train_save_adapter() wrote: every trainable tensor takes the
 * values stored under its name. LT_E_INVALID naming the first tensor that is missing or of another shape, or for
 * full training (which starts from a model). */
lt_status_t train_load_adapter(train_t *t, const char *dir, lt_err_t *err);

/* The model being trained. */
model_t *train_model(const train_t *t);

#endif
