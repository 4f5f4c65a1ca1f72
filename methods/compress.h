/* Compression of a model by cheap calibration statistics (docs/compression.md; the criteria are in the
 * Compression section of docs/methods.md): expert drop, feed-forward (MoE) sub-layer drop, block drop, Wanda
 * pruning and symmetric per-group RTN quantisation, composed in one plan and written as a Hugging Face folder
 * that Lathe loads. Calibration runs N windows of T tokens through the model once, with hooks capturing what the
 * plan needs; everything else works on the host copy of the weights. */
#ifndef LATHE_COMPRESS_H
#define LATHE_COMPRESS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/model.h"
#include "common/status.h"
#include "engine/text/tokenizer.h"

/* ---- data ---- */

/* The token stream of a JSONL file: each row's "text" (or "prompt" followed by "completion") tokenized with the
 * beginning-of-sequence token and appended, up to max_tokens (0: all). Caller owns *ids (free()). */
lt_status_t compress_read_tokens(const tok_t *tok, const char *path, uint64_t max_tokens, int32_t **ids, uint64_t *n,
                                 lt_err_t *err);

/* ---- calibration ---- */

typedef struct compress_calib compress_calib_t;

typedef struct compress_calib_opts {
  uint32_t samples; /* N windows */
  uint32_t tokens;  /* T tokens per window */
  uint64_t seed;    /* the windows start at offsets drawn uniformly from it */
  bool inputs;      /* also sum the squared inputs of every linear layer (Wanda); a device round trip per site */
  /* Called after each window (may be NULL); returning false stops the calibration early (it then succeeds with
   * the windows seen so far). */
  bool (*on_window)(void *ctx, uint32_t done, uint32_t total);
  void *ctx;
} compress_calib_opts_t;

/* Propagates N windows of T tokens of the stream ids[n] through m once (one window per forward call) and
 * accumulates, per block l: the mean over tokens of cos(h_l, h_{l+1}) (block drop), of cos(x, x + FFN(norm(x)))
 * with x the stream entering the feed-forward sub-layer (layer drop), of each expert's router probability (expert
 * drop), and with opts->inputs the per-column sums of squares of the inputs of every linear layer (Wanda). Needs
 * n >= T. Caller owns *out (compress_calib_destroy). */
lt_status_t compress_calibrate(compress_calib_t **out, model_t *m, const int32_t *ids, uint64_t n,
                               const compress_calib_opts_t *opts, lt_err_t *err);

/* Frees *c and sets it to NULL; NULL-safe. */
void compress_calib_destroy(compress_calib_t **c);

/* Calibration tokens seen (N * T). */
uint64_t compress_calib_tokens(const compress_calib_t *c);

/* Mean cos(h_l, h_{l+1}) per block [n_layers]; owned by c. */
const double *compress_block_scores(const compress_calib_t *c);

/* Mean cos(x, x + FFN(norm(x))) per block [n_layers] (NaN for a block without a feed-forward sub-layer); owned by c. */
const double *compress_layer_scores(const compress_calib_t *c);

/* Mean router probability per block and expert [n_layers * n_experts] (0 past a block's experts); owned by c;
 * NULL for a dense model. */
const double *compress_expert_scores(const compress_calib_t *c);

/* Per-column sums of squares over the calibration rows of the input at `site` of block `layer` (expert: at the
 * expert sites), i.e. ||X_j||_2^2 of the linear layers reading it; NULL when not collected or never reached (an
 * expert no calibration token was routed to). Owned by c. */
const double *compress_input_sq(const compress_calib_t *c, model_site_t site, uint32_t layer, int32_t expert);

/* ---- choices ---- */

/* Marks in drop[n_items] the `count` items with the highest scores among those not yet marked and not excluded
 * (exclude may be NULL; NaN scores are never picked; ties: the lower index). Returns how many were marked. */
uint32_t compress_pick_highest(bool *drop, const double *scores, uint32_t n_items, uint32_t count, const bool *exclude);

/* As compress_pick_highest, but the items are drawn uniformly at random from seed (a baseline). */
uint32_t compress_pick_random(bool *drop, const double *scores, uint32_t n_items, uint32_t count, const bool *exclude,
                              uint64_t seed);

/* Expert drop: marks drop[l * E + e] for the experts with the lowest scores so that each block l not in
 * skip_block keeps `keep` experts, or (global) so that the kept blocks keep keep * blocks experts in total, the
 * highest-scoring ones overall, with at least min_keep per block. Fails when keep < min_keep or keep > E. */
lt_status_t compress_pick_experts(bool *drop, const double *scores, uint32_t L, uint32_t E, uint32_t keep, bool global,
                                  uint32_t min_keep, const bool *skip_block, lt_err_t *err);

/* ---- the plan, applied to the weights ---- */

typedef struct compress_plan {
  const bool *drop_block;  /* [n_layers] blocks removed whole; NULL: none */
  const bool *drop_ffn;    /* [n_layers] feed-forward sub-layers removed (attention stays); NULL: none */
  const bool *drop_expert; /* [n_layers * n_experts] experts removed with their router rows; NULL: none */
  double sparsity;         /* Wanda: fraction of each weight row zeroed (0: no pruning) */
  uint32_t keep_n, keep_m; /* N:M pattern instead: keep the keep_n highest scores of every keep_m columns */
  uint32_t bits, group;    /* RTN quantisation: 8 or 4 bits, columns per scale (bits 0: none) */
} compress_plan_t;

/* What compress_write did. */
typedef struct compress_summary {
  uint32_t layers, tensors;     /* blocks and tensors written */
  uint64_t pruned, prunable;    /* weights zeroed by pruning, of the weights it applies to */
  uint32_t magnitude_fallbacks; /* pruned matrices with no calibration input (|W| alone ranked them) */
  uint64_t quantised;           /* weights quantised */
  double quant_max_rel_err;     /* largest |w - q s| / max |w| of its group over the quantised weights */
} compress_summary_t;

/* Applies the plan to the weights of the Hugging Face folder src (as m was loaded from) and writes the result as
 * a folder dir that Lathe loads: dropped blocks removed and the rest renumbered, dropped feed-forward
 * sub-layers listed in lathe_dropped_moe_layers, dropped experts and their router rows removed (per-block counts
 * in lathe_experts_per_layer when they differ), pruned matrices f32, quantised ones I8 / U8 with F16 scales
 * (docs/compression.md). Pruning and quantisation apply to the matrices inside blocks except the router; pruning
 * needs calib collected with inputs. summary may be NULL. */
lt_status_t compress_write(const char *src, const char *dir, const compress_plan_t *plan, const compress_calib_t *calib,
                           compress_summary_t *summary, lt_err_t *err);

/* The methods of one compression job and their parameters (docs/compression.md). */
typedef struct compress_methods {
  bool block_drop, layer_drop, expert_drop, prune, quantize;
  uint32_t drop;           /* block-drop / layer-drop: how many */
  uint32_t keep;           /* expert-drop: experts kept per block (0: three quarters, rounded up) */
  bool global;             /* expert-drop: rank across blocks */
  double sparsity;         /* prune: unstructured fraction zeroed per row (when keep_m is 0) */
  uint32_t keep_n, keep_m; /* prune: N:M pattern */
  uint32_t bits, group;    /* quantize */
} compress_methods_t;

/* A plan with the drop lists it points to. */
typedef struct compress_choice {
  compress_plan_t plan;
  bool *drop_block, *drop_ffn, *drop_expert; /* [n_layers], [n_layers], [n_layers * n_experts]; owned */
  uint32_t n_layers, n_experts;
} compress_choice_t;

/* Turns the methods into a plan for the model cfg describes, in the fixed order block drop, layer drop (among
 * the blocks kept), expert drop (in the blocks that keep their feed-forward sub-layer), pruning, quantisation.
 * Drops follow the calibration scores, or with random a uniform draw from seed of the same size (per block the
 * same number of experts): the baseline. Caller frees out with compress_choice_free(). */
lt_status_t compress_choose(compress_choice_t *out, const model_config_t *cfg, const compress_calib_t *c,
                            const compress_methods_t *m, bool random, uint64_t seed, lt_err_t *err);

/* Frees the lists of a choice; NULL-safe. */
void compress_choice_free(compress_choice_t *c);

/* Hooks that make the original model compute what the choice's drops leave (skip_block, skip_ffn,
 * expert_mask); they point into c. */
model_hooks_t compress_choice_hooks(const compress_choice_t *c);

/* ---- measuring ---- */

/* Mean negative log-likelihood of consecutive windows of T tokens of ids[n] (at most max_windows; 0: all), each
 * scoring its tokens 1..T-1, several windows per forward call; hooks may be NULL. *tokens gets the count scored. */
lt_status_t compress_eval_nll(model_t *m, const int32_t *ids, uint64_t n, uint32_t T, uint32_t max_windows,
                              const model_hooks_t *hooks, double *nll, uint64_t *tokens, lt_err_t *err);

/* Speed and memory of a model. */
typedef struct compress_speed {
  double prefill_tok_s; /* one prompt of T tokens */
  double decode_tok_s;  /* one token at a time after it */
  uint64_t weight_device_bytes, weight_file_bytes, activation_bytes;
} compress_speed_t;

/* Times the prefill of ids[0..T) and the decoding of n_decode tokens after it (fed from ids[T..]; needs
 * n >= T + n_decode), the best of reps runs after a warm-up, and reads model_mem(). */
lt_status_t compress_measure(model_t *m, const int32_t *ids, uint64_t n, uint32_t T, uint32_t n_decode, uint32_t reps,
                             compress_speed_t *out, lt_err_t *err);

#endif
