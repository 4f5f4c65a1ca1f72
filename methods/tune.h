/* First-order tuning: AdamW over the trainable tensors of a train_t (f32 moments for them only; frozen weights
 * stay in their dtype), global-norm clipping, warmup then cosine / linear / constant learning rate, gradient
 * accumulation, and sharpness-aware minimisation (SAM): the gradient at theta + rho g / ||g|| drives the step. */
#ifndef LATHE_TUNE_H
#define LATHE_TUNE_H

#include <stdint.h>

#include "common/status.h"
#include "engine/model/train.h"

typedef enum tune_schedule { TUNE_COSINE = 0, TUNE_LINEAR, TUNE_CONSTANT } tune_schedule_t;

/* Optimiser settings. */
typedef struct tune_opts {
  double lr;                /* peak learning rate */
  double weight_decay;      /* decoupled decay on tensors with decay set (not norms) */
  double beta1, beta2, eps; /* AdamW moments (0.9, 0.999, 1e-8 when zero) */
  double clip;              /* global gradient-norm clip (0: none) */
  double sam_rho;           /* SAM radius (0: plain AdamW) */
  uint32_t warmup;          /* steps of linear warmup from 0 */
  uint32_t steps;           /* total steps (the schedule's horizon) */
  tune_schedule_t schedule;
} tune_opts_t;

/* One micro-batch of a step: n_seq sequences of T tokens and their target mask (see train.h); labels, when not
 * NULL, are the targets in place of ids (train_grad_labeled); pair_weights, when not NULL, make the micro-batch
 * n_seq / 2 DPO pairs with those weights (train_grad_pairs), whose reference log-probabilities ref_logp may carry. */
typedef struct tune_batch {
  const int32_t *ids;
  const uint8_t *mask;
  uint32_t n_seq, T;
  const int32_t *labels;
  const float *pair_weights;
  const double *ref_logp; /* DPO: the reference's log-probability of each sequence (NULL: computed each pass) */
} tune_batch_t;

/* What one step measured. */
typedef struct tune_step_info {
  double loss;      /* mean of the micro-batch losses at theta */
  double grad_norm; /* global norm of the gradient the update used (before clipping) */
  double lr;        /* the learning rate of this step */
  /* Under distillation (train_set_distill), means over the micro-batches at theta: */
  double ce, teacher_ce;         /* the student's and the teacher's cross-entropy on the data */
  uint32_t atkd_easy, atkd_hard; /* ATKD: tokens in each set, summed */
  /* DPO, means over the micro-batches at theta: */
  double dpo_margin, dpo_accuracy; /* the implicit reward margin and the share of pairs it ranks right */
} tune_step_info_t;

typedef struct tuner tuner_t;

/* Makes an optimiser for t's trainable tensors (moments at zero, step 0). t must outlive it. Caller owns
 * (tuner_destroy); NULL with err. */
tuner_t *tuner_new(train_t *t, const tune_opts_t *o, lt_err_t *err);

/* Frees the optimiser and sets *u to NULL; NULL-safe. */
void tuner_destroy(tuner_t **u);

/* The learning rate of step s (0-based) under the schedule. */
double tune_lr_at(const tune_opts_t *o, uint32_t s);

/* One optimiser step over the micro-batches mb[0..n) (gradient accumulation: the mean of their gradients). */
lt_status_t tuner_step(tuner_t *u, const tune_batch_t *mb, uint32_t n, tune_step_info_t *info, lt_err_t *err);

/* The optimiser state as host arrays, for checkpoints: the step count and, per trainable tensor, its values and
 * first and second moments (rows * cols floats each). save writes them into the caller's arrays; load restores
 * them (a resumed run continues bit for bit). */
lt_status_t tuner_state_save(tuner_t *u, uint32_t *steps, float **values, float **m, float **v, lt_err_t *err);
lt_status_t tuner_state_load(tuner_t *u, uint32_t steps, float *const *values, float *const *m, float *const *v,
                             lt_err_t *err);

#endif
