/* Sampling, generation and scoring on top of the forward pass. */
#ifndef LATHE_GENERATE_H
#define LATHE_GENERATE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/model.h"

/* How to pick the next token. temperature 0 is greedy (lowest id on ties). */
typedef struct sample_opts {
  float temperature; /* 0: greedy */
  uint32_t top_k;    /* 0: no limit */
  float top_p;       /* 1 (or 0): no nucleus cut */
} sample_opts_t;

/* A small counter-based generator (splitmix64): one per prompt so results do not depend on the batch. */
typedef struct sample_rng {
  uint64_t state;
} sample_rng_t;

/* The weight sampling gives a logit, exp((logit - max) / temperature), before rounding (the candidates keep it as
 * f32). */
double sample_weight(float logit, float max, float temperature);

/* Picks a token from logits[vocab] (left unchanged). scratch holds 2 * vocab floats; caller owns both. */
int32_t sample_token(const float *logits, uint32_t vocab, const sample_opts_t *o, sample_rng_t *rng, float *scratch);

/* Picks a token as sample_token() would, from the k largest logits of a row (descending, the lower id first on ties:
 * MODEL_OUT_TOP) and their ids: for greedy options or a top_k of at most k with mass 0 (a top-p cut is then a share
 * of the candidates' own sum); for a top-p cut with no top-k, with mass the whole row's sum of weights at the
 * temperature (MODEL_OUT_TOP's top_mass) where the candidates hold top_p of it: the same tokens as sample_token
 * unless the cut falls within the mass's f32 rounding. */
int32_t sample_top(const float *top, const int32_t *ids, uint32_t k, double mass, const sample_opts_t *o,
                   sample_rng_t *rng);

/* Called for prompt `item` at decoding step `step` with the logits the next token is chosen from (vocab floats;
 * it may change them in place: ROSE combines them with `second`, the logits of the prompt's second sequence, or
 * NULL when there is none or it was not asked for). */
typedef void (*gen_logits_fn)(void *ctx, uint32_t item, uint32_t step, float *logits, const float *second,
                              uint32_t vocab);

/* A second sequence per prompt, with its own KV cache, decoded in lockstep with the first (two-pass steering:
 * CogSteer's contrastive pass, ROSE's reverse prompt): the token chosen for a prompt is appended to both. The
 * prompts' tokens but the last are prefilled first, for both sequences in one call and without hooks; from then
 * on every model_forward call holds one token per sequence, the second sequence of each prompt just before its
 * first, so that an attention hook sees each prompt's second row before its first. */
typedef struct gen_pair {
  const int32_t *const *prompts; /* the second sequence's prompt for each prompt (at least one token) */
  const uint32_t *prompt_lens;
  bool second_logits; /* compute the second sequence's logits and pass them to on_logits */
} gen_pair_t;

/* Options for model_generate(). */
typedef struct gen_opts {
  uint32_t max_tokens; /* new tokens per prompt */
  sample_opts_t sample;
  uint64_t seed;   /* prompt i samples with seed + i */
  bool ignore_eos; /* keep going after an end-of-sequence token */
  /* More tokens that end a sequence as the model's end-of-sequence tokens do (a chat template's end of turn);
   * like them, not part of the result. */
  const int32_t *stop_ids;
  uint32_t n_stop_ids;
  /* Teacher forcing (NULL: sample): prompt i continues with forced[i][0..forced_lens[i]) instead of sampled
   * tokens, end-of-sequence tokens included; max_tokens is then ignored. */
  const int32_t *const *forced;
  const uint32_t *forced_lens;
  gen_logits_fn on_logits; /* NULL: none */
  void *logits_ctx;
  const gen_pair_t *pair; /* NULL: one sequence per prompt */
  /* Download every step's logits and sample on the host even where the device could select the candidates (greedy,
   * or a top_k of at most MODEL_TOP_MAX, with no on_logits and no forcing); for comparisons. */
  bool host_sampling;
} gen_opts_t;

/* One prompt's generated tokens; tokens is owned by the caller of model_generate (free()). */
typedef struct gen_result {
  int32_t *tokens;
  uint32_t n_tokens;
  bool stopped_at_eos;
} gen_result_t;

/* Called after each decoding step with the tokens chosen so far for prompt `item`; return false to stop all. */
typedef bool (*gen_step_fn)(void *ctx, uint32_t item, const int32_t *tokens, uint32_t n_tokens);

/* Generates for n prompts together (prefill of all prompts, then one batched decoding step per token). The
 * end-of-sequence token is not included in the result. results[n] are filled; caller frees their tokens. */
lt_status_t model_generate(model_t *m, const int32_t *const *prompts, const uint32_t *prompt_lens, uint32_t n,
                           const gen_opts_t *o, const model_hooks_t *hooks, gen_step_fn on_step, void *step_ctx,
                           gen_result_t *results, lt_err_t *err);

/* logprobs[i] = log p(tokens[i] | tokens[0..i)) for i in [1, n); logprobs[0] = 0. Caller owns logprobs[n]. */
lt_status_t model_score(model_t *m, const int32_t *tokens, uint32_t n, float *logprobs, lt_err_t *err);

#endif
