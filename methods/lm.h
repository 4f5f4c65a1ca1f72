/* Text in, text out on a loaded model, for the data jobs: prompts are encoded as the chat template in use wants,
 * cut to the model's context window, generated together and decoded; continuations are scored.
 *
 * The window: the model's max_position (at most 4096). A generation asks for at most half of it; a prompt
 * longer than the rest keeps its first token when that is BOS and its last tokens (left truncation). A scored
 * context plus continuation longer than the window keeps the continuation's first tokens (at most three
 * quarters of the window) and the context's last ones. Every cut is counted in n_truncated. */
#ifndef LATHE_LM_H
#define LATHE_LM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/model/generate.h"
#include "engine/text/tokenizer.h"

typedef struct lm {
  model_t *model;
  const tok_t *tok;
  unsigned encode_flags;    /* how prompts and contexts are encoded: chat_encode_flags() of the template */
  gen_opts_t gen;           /* sampling and max_tokens; prompt k of a call samples with seed + k, and the seed
                               moves on by the number of prompts after each call */
  const char *const *stops; /* NULL or NULL-terminated: a generation is cut before the first of these strings */
  gen_step_fn on_step;      /* called after each decoding step (may be NULL); return false to stop */
  void *step_ctx;
  uint64_t n_truncated; /* prompts and contexts cut to fit the window so far */
  bool stopped;         /* on_step asked to stop: from then on calls return at once with empty results */
} lm_t;

/* The context window of lm's model in tokens. */
uint32_t lm_window(const lm_t *lm);

/* The max_tokens a generation really asks for: lm->gen.max_tokens, at most half the window. */
uint32_t lm_max_new(const lm_t *lm);

/* Generates a continuation of each of n prompts (batched). outs[i] receive new NUL-terminated strings (caller
 * frees each; all NULL on failure): the decoded tokens without special tokens, cut at the first stop string. */
lt_status_t lm_generate(lm_t *lm, const char *const *prompts, size_t n, char **outs, lt_err_t *err);

/* Scores continuation after context: *sum is the sum of its tokens' log-probabilities and *n_tokens their
 * number (the continuation is encoded on its own, without BOS, and appended). */
lt_status_t lm_loglik(lm_t *lm, const char *context, const char *continuation, double *sum, size_t *n_tokens,
                      lt_err_t *err);

#endif
