/* Steering (docs/methods.md, "Steering"): the CPU-side statistics of CogSteer's layer analysis (sub-word to word
 * max-pooling, first principal component, Pearson / Spearman / Kendall tau-b, per-word surprisal, contrast
 * strength), mean-difference steering vectors and their files, and steered generation and scoring: activation
 * addition, CogSteer's implicit layer contrastive intervention, ROSE's reverse-prompt contrastive decoding. */
#ifndef LATHE_STEER_H
#define LATHE_STEER_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/generate.h"
#include "engine/model/model.h"
#include "common/status.h"
#include "engine/text/tokenizer.h"

/* ---- words ---- */

/* Assigns each token to a word: word_of[i] is the word's index (0, 1, ...) or -1 for a token in no word (special
 * tokens such as BOS, and tokens that are only whitespace). A token starts a new word when it begins with
 * whitespace (its stored text starts with the space marker Ġ or ▁) or follows a token that ends with whitespace;
 * so the words are the text's whitespace-separated words. Returns the number of words. */
uint32_t steer_words(const tok_t *t, const int32_t *ids, uint32_t n, int32_t *word_of);

/* Max-pools token vectors to word vectors: out[w, :] = max over the tokens i of word w of h[i, :]; h is [n, d],
 * out is [n_words, d]. */
void steer_pool_max(float *out, const float *h, const int32_t *word_of, uint32_t n, uint32_t d, uint32_t n_words);

/* Sums a per-token value over each word's tokens: out[w] = sum of v[i] over the tokens of word w (NaN when one
 * of them is NaN). With v[i] = -log p(token i | tokens before it) this is the word's surprisal. */
void steer_word_sum(double *out, const float *v, const int32_t *word_of, uint32_t n, uint32_t n_words);

/* ---- statistics (double precision, deterministic) ---- */

/* Projects the rows of x[n, d] onto their first principal component: proj[i] = (x_i - mean) . v, where v is the
 * leading eigenvector of the centred covariance, found by power iteration (without forming the d x d matrix)
 * from the centred row of largest norm; its sign makes v's largest-magnitude entry positive. Returns the
 * fraction of the total variance v explains (0 when every row is the same, and proj is then all zeros). */
double steer_pca1(double *proj, const float *x, uint32_t n, uint32_t d);

/* Pearson's correlation of x[n] and y[n]; NaN when n < 2 or either is constant. */
double steer_pearson(const double *x, const double *y, uint32_t n);

/* Ranks of x[n] from 1, tied values getting the average of their ranks: rank[i]. */
void steer_ranks(double *rank, const double *x, uint32_t n);

/* Spearman's correlation (Pearson's on average ranks); NaN when n < 2 or either is constant. */
double steer_spearman(const double *x, const double *y, uint32_t n);

/* Kendall's tau-b (ties in x or y corrected for); NaN when n < 2 or either is constant. O(n^2). */
double steer_kendall(const double *x, const double *y, uint32_t n);

/* The contrast strength of a layer: ||mean_pos - mean_neg|| / mean_norm (d entries each). */
double steer_contrast(const double *mean_pos, const double *mean_neg, uint32_t d, double mean_norm);

/* ---- residual-stream means ---- */

/* Runs every prompt through m (one at a time, nothing generated) and, for each layer l in 0..n_layers with
 * want[l], averages the residual stream entering block l: mean[l * hidden + j] = the mean over prompts of each
 * prompt's mean over its positions from `skip` on (skip 1 leaves out a leading BOS), and norm[l] = the mean of
 * ||h|| over all those positions. Prompts with no position left are skipped; *n_used (may be NULL) counts the
 * others. Layers without want[l] are left as they are. Caller owns mean[(n_layers + 1) * hidden] and
 * norm[n_layers + 1]. */
lt_status_t steer_means(model_t *m, const int32_t *const *prompts, const uint32_t *lens, uint32_t n, uint32_t skip,
                        const bool *want, double *mean, double *norm, uint32_t *n_used, lt_err_t *err);

/* ---- steering-vector files ---- */

/* Writes v[hidden] as a safetensors file: one F32 tensor "steer.vector" [hidden] and metadata naming the model
 * (its path), the layer, and the prompt counts (lathe.model, lathe.layer, lathe.positive, lathe.negative). */
lt_status_t steer_vector_save(const char *path, const float *v, uint32_t hidden, uint32_t layer, const char *model,
                              uint32_t n_pos, uint32_t n_neg, lt_err_t *err);

/* Reads a file written by steer_vector_save(): *v gets hidden floats (caller frees), *layer the recorded layer,
 * model (cap bytes) the recorded model path. Fails when the vector's size is not `hidden`. */
lt_status_t steer_vector_load(const char *path, uint32_t hidden, float **v, uint32_t *layer, char *model, size_t cap,
                              lt_err_t *err);

/* ---- steered generation and scoring ---- */

typedef enum steer_method {
  STEER_NONE = 0, /* plain generation */
  STEER_ADD,      /* activation addition: h_layer += alpha * vec at every position */
  STEER_CONTRAST, /* CogSteer's implicit layer contrastive intervention against a contrastive prompt */
  STEER_ROSE,     /* ROSE: logits_pos - alpha * logits_neg of the prompt and its reverse-prompt twin */
} steer_method_t;

/* A steering configuration. The twin prompts are already wrapped and tokenized by the caller. */
typedef struct steer_cfg {
  steer_method_t method;
  uint32_t layer;   /* ADD: the block whose input gets the vector; CONTRAST: the block whose heads are steered */
  const float *vec; /* ADD: [hidden] */
  float alpha;      /* ADD: the vector's scale; ROSE: the reverse prompt's weight (0.5) */
  float exponent;   /* CONTRAST: s = (1 + ||delta||)^exponent per head (0.4) */
  bool renorm;      /* CONTRAST: rescale the steered heads to the base heads' joint norm */
  /* CONTRAST: each prompt run on the contrastive prompt; ROSE: each prompt wrapped with the reverse prompt */
  const int32_t *const *twins;
  const uint32_t *twin_lens;
} steer_cfg_t;

/* The name of a method ("none", "add", "contrast", "rose"); static string. */
const char *steer_method_str(steer_method_t m);

/* CogSteer's intervention on one position's per-head attention outputs: with delta = a_s - a, per head
 * s = (1 + ||delta_h||)^exponent and a_h <- a_h - s * delta_h; then, with renorm, a <- a * ||a_old|| / ||a||
 * (norms over all heads jointly). a and a_s are [n_heads * head_dim]; a is changed in place. */
void steer_contrast_apply(float *a, const float *a_s, uint32_t n_heads, uint32_t head_dim, float exponent, bool renorm);

/* ROSE: logits[v] <- logits[v] - alpha * neg[v]. */
void steer_rose_combine(float *logits, const float *neg, uint32_t vocab, float alpha);

/* model_generate() under steering configuration s (NULL or STEER_NONE: plain). ADD runs the residual hook at
 * every position; CONTRAST and ROSE pair every prompt with its twin (gen_pair_t: both in one model_forward call
 * per token) and sample from the steered first sequence. o's on_logits, when set, sees the logits each token is
 * chosen from (for ROSE, the combined ones). results as model_generate(). */
lt_status_t steer_generate(model_t *m, const steer_cfg_t *s, const int32_t *const *prompts, const uint32_t *lens,
                           uint32_t n, const gen_opts_t *o, gen_step_fn on_step, void *step_ctx, gen_result_t *res,
                           lt_err_t *err);

/* Log-probabilities of given continuations under steering (teacher forced through the same machinery as
 * steer_generate): lp[i][j] = log p(conts[i][j] | prompt i, conts[i][0..j)) from the logits a token would be
 * chosen from (temperature 1). Caller owns lp[i][cont_lens[i]]. */
lt_status_t steer_score(model_t *m, const steer_cfg_t *s, const int32_t *const *prompts, const uint32_t *lens,
                        const int32_t *const *conts, const uint32_t *cont_lens, uint32_t n, float *const *lp,
                        lt_err_t *err);

#endif
