/* Sampling, generation and scoring on top of the forward pass. */
#ifndef LATHE_GENERATE_H
#define LATHE_GENERATE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model.h"

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

/* Picks a token from logits[vocab] (left unchanged). scratch holds 2 * vocab floats; caller owns both. */
int32_t sample_token(const float *logits, uint32_t vocab, const sample_opts_t *o, sample_rng_t *rng, float *scratch);

/* Options for model_generate(). */
typedef struct gen_opts {
  uint32_t max_tokens; /* new tokens per prompt */
  sample_opts_t sample;
  uint64_t seed;       /* prompt i samples with seed + i */
  bool ignore_eos;     /* keep going after an end-of-sequence token */
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
