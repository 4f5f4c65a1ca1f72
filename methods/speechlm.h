/* A self-powered speech-text model (docs/speech.md): the speech encoder and connector (engine/model/speech.h)
 * feeding an LLM through rows of input embeddings, and what its jobs need: log-mel features of audio files,
 * prompts with the speech in the user's turn, greedy answers, a training step, word error rates.
 *
 * The prompt: the LLM's chat template (the plain one, "User: ... Assistant:", when it has none) renders a user
 * turn whose content is the instruction, a blank line and the speech, as the selfgen job puts an input after its
 * instruction; the speech's rows take the place of tokens there. A target follows the generation prompt, ended
 * by a newline (the first line is the answer). The LLM's own answer to an instruction applied to a transcript
 * (the self-powered target) comes from the same turn with the transcript in the speech's place. */
#ifndef LATHE_SPEECHLM_H
#define LATHE_SPEECHLM_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/speech.h"
#include "engine/model/train.h"
#include "engine/text/chat.h"
#include "engine/text/tokenizer.h"
#include "methods/tune.h"

typedef struct slm slm_t;

/* Joins speech model sp to the LLM llm (tokenizer tok, chat template tmpl; all borrowed, outliving the result).
 * sp's connector must write llm's hidden size. Caller owns; NULL with err. */
slm_t *slm_new(speech_t *sp, model_t *llm, const tok_t *tok, const chat_tmpl_t *tmpl, lt_err_t *err);

/* Frees the join (not what it borrows); NULL-safe. */
void slm_destroy(slm_t **s);

/* Log-mel features [*T][n_mels] of an audio file (engine/audio/audio.h: mixed to mono, resampled to 16 kHz,
 * refused past max_seconds), computed on the device. Caller frees *feats. */
lt_status_t slm_features(slm_t *s, const char *path, double max_seconds, float **feats, uint32_t *T, lt_err_t *err);

/* The connector's rows [*n][llm hidden] for features [T][n_mels] (a forward pass without training). Caller frees
 * *rows. */
lt_status_t slm_speech_rows(slm_t *s, const float *feats, uint32_t T, float **rows, uint32_t *n, lt_err_t *err);

/* A tokenized prompt: ids[n]; with speech, n_speech placeholder tokens at speech_at take the speech's rows. */
typedef struct slm_prompt {
  int32_t *ids;
  uint32_t n, speech_at, n_speech;
  uint32_t target_at; /* where a target starts (n when none) */
} slm_prompt_t;

/* The prompt for instruction with n_speech rows of speech in the user's turn, followed by target's tokens when
 * target is not NULL. Caller frees with slm_prompt_free(). */
lt_status_t slm_prompt_speech(slm_t *s, const char *instruction, uint32_t n_speech, const char *target, slm_prompt_t *p,
                              lt_err_t *err);

/* The same turn with text input in the speech's place (the LLM alone), without a target. */
lt_status_t slm_prompt_text(slm_t *s, const char *instruction, const char *input, slm_prompt_t *p, lt_err_t *err);

/* Frees p's ids; NULL-safe. */
void slm_prompt_free(slm_prompt_t *p);

/* Greedy answers to n prompts generated together, rows[i] being prompt i's speech rows (NULL for a text prompt):
 * at most max_tokens each, cut at the first newline, the end of the turn or an end-of-sequence token, trimmed.
 * texts[i] get new strings (caller frees). */
lt_status_t slm_answer(slm_t *s, const slm_prompt_t *prompts, const float *const *rows, uint32_t n, uint32_t max_tokens,
                       char **texts, lt_err_t *err);

/* The negative log-likelihood of each prompt's target under the LLM as it runs now (its adapter included):
 * prompts made with slm_prompt_speech() with a target, rows[i] their speech rows. Adds the sum over target tokens
 * to *sum and their number to *count. */
lt_status_t slm_target_nll(slm_t *s, const slm_prompt_t *prompts, const float *const *rows, uint32_t n, double *sum,
                           uint64_t *count, lt_err_t *err);

/* One training example: features, the instruction and the target text. */
typedef struct slm_example {
  const float *feats;
  uint32_t T;
  const char *instruction, *target;
} slm_example_t;

/* Settings of a training step. */
typedef struct slm_step_opts {
  float lr, weight_decay, clip; /* the speech model's AdamW; clip: global gradient-norm clip (0: none) */
  uint32_t step;                /* 1-based AdamW step */
} slm_step_opts_t;

/* What a step measured. */
typedef struct slm_step_info {
  double loss;      /* the masked mean cross-entropy of the targets */
  double grad_norm; /* the speech model's gradient norm before clipping */
  uint32_t tokens;  /* target tokens */
  uint32_t max_len; /* the longest sequence */
} slm_step_info_t;

/* One step on n examples: their speech rows enter the LLM (state t: TRAIN_INPUTS, or TRAIN_LORA with `lora` its
 * optimiser, which then steps too), the targets' cross-entropy is taken, its gradient flows back through the
 * LLM into the connector (and the encoder, when trainable) and the speech model takes an AdamW step. Examples
 * longer than the LLM's context window are refused with their index. */
lt_status_t slm_train_step(slm_t *s, train_t *t, tuner_t *lora, const slm_example_t *ex, uint32_t n,
                           const slm_step_opts_t *o, slm_step_info_t *info, lt_err_t *err);

/* The tokens example ex takes in the LLM (its prompt, speech rows and target), into *n. */
lt_status_t slm_example_tokens(slm_t *s, const slm_example_t *ex, uint32_t *n, lt_err_t *err);

/* The LLM's context window in tokens. */
uint32_t slm_window(const slm_t *s);

/* The mean cross-entropy of the examples' targets under the current model (no update). */
lt_status_t slm_eval_loss(slm_t *s, train_t *t, const slm_example_t *ex, uint32_t n, double *loss, lt_err_t *err);

/* Word edits (substitutions, insertions, deletions) turning ref into hyp, words compared lower-cased with
 * punctuation left out; *ref_words gets ref's word count. The word error rate is edits / ref_words. */
uint32_t slm_word_edits(const char *hyp, const char *ref, uint32_t *ref_words);

#endif
