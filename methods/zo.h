/* Zeroth-order fine-tuning (MeZO, LeZO): a step is two forward passes at theta + eps z and theta - eps z, with
 * the direction z regenerated on the device from (step seed, tensor id, element) and never stored. The weights
 * are changed in place through the model's parameter registry, so tuning takes the memory of inference.
 *
 * z is drawn per parameter piece (a whole tensor, or one row piece of a tensor split to fit a binding): the piece's
 * tensor id is a hash of its Hugging Face name and first row, and the element index counts from that row. A run
 * is therefore reproducible on devices that split the tensors the same way (a tensor that fits one binding is one piece
 * everywhere).
 *
 * LeZO: each step perturbs and updates only the transformer blocks drawn from its step seed (n_layers -
 * drop_layers of them); the embeddings, the LM head and the final norm are in every step (a documented choice,
 * as in docs/methods.md: they are few tensors and the only ones every token's loss depends on directly). */
#ifndef LATHE_ZO_H
#define LATHE_ZO_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"
#include "engine/model/model.h"
#include "methods/dataset.h"

typedef enum zo_method { ZO_MEZO = 0, ZO_LEZO } zo_method_t;

/* What a run is: fixed for its whole length (the log's header records it). */
typedef struct zo_opts {
  zo_method_t method;
  float eps;            /* perturbation scale (MeZO default 1e-3) */
  float weight_decay;   /* decoupled decay on every non-norm tensor: theta -= lr * wd * theta */
  uint32_t drop_layers; /* LeZO: blocks left out of each step (< n_layers); 0 under MeZO */
  uint64_t seed;        /* run seed: the step seeds derive from it (zo_step_seed()) */
  uint32_t version;     /* the arithmetic of a step, as the run log's version names it: 2 (0 means 2) perturbs the
                           weights as the forward pass reads them; 1 (logs of earlier runs) perturbed f32 weights in
                           place and restored them */
} zo_opts_t;

/* The log version (and step arithmetic) new runs use. */
#define ZO_VERSION 2

/* One tokenised example (methods/dataset.h). */
typedef lm_example_t zo_example_t;

/* One step of the run log: with the run's opts, it is all a replay needs. */
typedef struct zo_record {
  uint64_t step, seed;          /* seed = zo_step_seed(run seed, step) */
  float g, lr;                  /* projected gradient (L+ - L-) / (2 eps); learning rate */
  double loss_plus, loss_minus; /* for the log reader; replay does not need them */
} zo_record_t;

typedef struct zo zo_t;

/* Prepares tuning of m's weights in place: batches of at most max_batch examples of at most max_tokens tokens.
 * Version 2: the weights stay in their dtype (f32, f16 or bf16). The forward passes of a step read the matrices and
 * the embedding perturbed (model_set_zread), so they never change until the update, which rounds f16 and bf16
 * stochastically; the few tensors read elsewhere (norm weights, biases) are perturbed in place and must be f32.
 * Version 1: every parameter must be f32 (load with model_load_opts_t.force_f32). Fails with LT_E_INVALID on
 * weights it cannot tune, bad options or a tensor-id collision. Caller owns the result (zo_destroy); m must
 * outlive it. */
zo_t *zo_new(model_t *m, const zo_opts_t *o, uint32_t max_batch, uint32_t max_tokens, lt_err_t *err);

/* Frees z (not the model) and sets *z to NULL; NULL-safe. */
void zo_destroy(zo_t **z);

/* The seed of step `step` of a run seeded run_seed (a splitmix64 mix of both). */
uint64_t zo_step_seed(uint64_t run_seed, uint64_t step);

/* The training examples of step `step`: idx[j] for j < batch, from an epoch-wise shuffle of [0, n_examples)
 * keyed by the run seed (example p = step * batch + j of the endless stream is entry p % n of epoch p / n's
 * permutation). A pure function of its arguments, so a resumed run sees the batches it would have seen. */
void zo_sample(uint64_t run_seed, uint64_t step, uint32_t batch, uint32_t n_examples, uint32_t *idx);

/* Fills active[n_layers] with the blocks a step with this seed touches: all under MeZO; under LeZO all but
 * drop_layers, drawn from the seed. */
void zo_blocks(const zo_t *z, uint64_t step_seed, bool *active);

/* The tensor id of a parameter piece (a hash of its name and first row). */
uint32_t zo_tensor_id(const model_param_t *p);

/* theta += scale * z(step_seed) in place over the parameters of the step's blocks (zo_blocks()) and the
 * always-tuned tensors; LT_E_INVALID when one of them is not f32. */
lt_status_t zo_perturb(zo_t *z, uint64_t step_seed, float scale, lt_err_t *err);

/* The update of a step over the same parameters: theta = (1 - lr * wd) * theta for non-norm tensors, then
 * theta += (-lr * g) * z(step_seed); version 2 in one pass per tensor in its dtype (op_perturb_update()). */
lt_status_t zo_update(zo_t *z, uint64_t step_seed, float lr, float g, lt_err_t *err);

/* Per example b of the batch: the NLL summed over its scored tokens into sum[b] (in token order) and their
 * number into count[b] (0 for an example with nothing scored within max_tokens). One forward pass; n <=
 * max_batch. */
lt_status_t zo_nll_each(zo_t *z, const zo_example_t *batch, uint32_t n, double *sum, uint64_t *count, lt_err_t *err);

/* The NLL summed over the scored tokens of the batch into *sum, and their number into *count (eval mode: nothing
 * stochastic in the forward pass). n <= max_batch; longer examples are cut to max_tokens. */
lt_status_t zo_nll(zo_t *z, const zo_example_t *batch, uint32_t n, double *sum, uint64_t *count, lt_err_t *err);

/* Mean NLL over the scored tokens of the batch (token-weighted): the loss of a step. LT_E_INVALID when no token
 * is scored. */
lt_status_t zo_loss(zo_t *z, const zo_example_t *batch, uint32_t n, double *loss, lt_err_t *err);

/* One MeZO/LeZO step on the batch: L+ at theta + eps z, L- at theta - eps z, g = (L+ - L-) / (2 eps), update with
 * lr. Version 2 reads the perturbed weights in the forward passes (the in-place tensors: perturb +eps, -2 eps,
 * +eps); version 1 perturbs everything in place: +eps, L+, -2 eps, L-, +eps (restore). Fills *rec. The losses add
 * the per-example NLL sums (zo_nll_each) in example order, then divide by the scored tokens. */
lt_status_t zo_step(zo_t *z, uint64_t step, float lr, const zo_example_t *batch, uint32_t n, zo_record_t *rec,
                    lt_err_t *err);

/* Replicas of one run at most (zo_step_replicas). */
#define ZO_MAX_REPLICAS 16

/* zo_step, data-parallel over n_rep replicas: z[r] tunes its own copy of the same weights (each on its own device,
 * or several on one, each through a gpu_t of its own: they run in threads at once). The batch is scored in micro-batches of `micro` examples, one forward pass each (0: the
 * whole batch in one); replica r scores micro-batches r, r + n_rep, ..., each replica in a thread of its own, and
 * only the per-example loss sums come back; every replica then applies the same update. The forward passes are
 * the same whatever n_rep, so the losses, g and the weights are bit for bit those of one replica with the same
 * `micro` (an example's NLL can move in its last bit with the other examples of its forward pass on some drivers,
 * which is why the micro-batches, not only the batch, are fixed). zo_step is one replica, one micro-batch. */
lt_status_t zo_step_replicas(zo_t *const *z, uint32_t n_rep, uint32_t micro, uint64_t step, float lr,
                             const zo_example_t *batch, uint32_t n, zo_record_t *rec, lt_err_t *err);

/* Re-applies a logged step without forward passes: the same in-place perturb and restore passes and the same
 * update, so the weights come out bit for bit as the step left them (the restore's float rounding included) on the
 * same device. */
lt_status_t zo_replay(zo_t *z, const zo_record_t *rec, lt_err_t *err);

/* ---- the run log (methods/zo_log.c), JSON Lines ----
 * Line 1, the header: {"format": "lathe-zo-log", "version": 2 (1: earlier runs, read and replayed with their own
 * arithmetic), "base": model path, "method": "mezo" | "lezo",
 * "eps", "weight_decay", "drop_layers", "seed"}. Then one line per step, in order from step 0:
 * {"step", "seed": the step seed as a decimal string (64 bits), "g", "lr", "loss_plus", "loss_minus"}; g and lr
 * are written so that they read back to the same floats. Version bump: any change to what a line means. */

/* Writes the header line for a run of base with opts o. */
lt_status_t zo_log_header(FILE *f, const char *base, const zo_opts_t *o, lt_err_t *err);

/* Writes one step's line. */
lt_status_t zo_log_record(FILE *f, const zo_record_t *r, lt_err_t *err);

/* Reads the log at path: the header into *o (its version included) and base (base_n bytes, may be 0), the steps into a new array *recs
 * of *n (caller owns, free()). LT_E_CORRUPT when a line is malformed or a step is missing. */
lt_status_t zo_log_read(const char *path, zo_opts_t *o, char *base, size_t base_n, zo_record_t **recs, uint64_t *n,
                        lt_err_t *err);

#endif
