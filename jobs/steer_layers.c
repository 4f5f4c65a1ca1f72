/* The `steer-layers` kind: CogSteer's layer analysis (docs/methods.md). Each text runs once through the model,
 * keeping the residual stream entering every block (and the final hidden state); sub-word vectors are max-pooled
 * to words; each layer's word vectors are projected onto their first principal component and that scalar is
 * correlated with a per-word signal (the user's, or the word's surprisal under the model). With two prompt sets
 * each layer's contrast strength is reported as well. The layer is chosen by the largest |correlation| inside the
 * middle band (the sign of a principal component is arbitrary). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/plot.h"
#include "jobs/runners.h"
#include "jobs/steer_common.h"

#define MAX_WORD_BYTES (2ull << 30) /* word vectors kept for all layers at most */

/* One text: its tokens, which word each belongs to, and where its words start among all words. */
typedef struct text {
  int32_t *ids;
  int32_t *word_of;
  uint32_t n, n_words;
  uint64_t first_word;
} text_t;

/* The residual hook: max-pools each layer's rows into the current text's word vectors. */
typedef struct pool_ctx {
  uint32_t d;
  const text_t *t;
  uint32_t *pos; /* per layer: rows of the current text seen so far (pieces arrive in order) */
  float **words; /* per layer: [all words, d] */
} pool_ctx_t;

static void pool_on_resid(void *ctx, uint32_t layer, uint32_t item, const float *h, uint32_t n_tokens, uint32_t d) {
  pool_ctx_t *c = ctx;
  (void)item; /* one text per call */
  for (uint32_t r = 0; r < n_tokens; r++) {
    int32_t w = c->t->word_of[c->pos[layer] + r];
    if (w < 0) continue;
    float *o = c->words[layer] + (c->t->first_word + (uint64_t)w) * d;
    const float *x = h + (uint64_t)r * d;
    for (uint32_t j = 0; j < d; j++)
      if (x[j] > o[j]) o[j] = x[j];
  }
  c->pos[layer] += n_tokens;
}

/* Fills sig[first .. first + n_words) from the row's "signal" array (numbers; null for a missing value). */
static lt_status_t read_signal(const json_t *a, const text_t *t, double *sig, size_t row, lt_err_t *err) {
  if (json_array_size(a) != t->n_words)
    return lt_fail(err, LT_E_INVALID, "row %zu: \"signal\" has %zu values but the text has %u words", row,
                   json_array_size(a), t->n_words);
  for (uint32_t w = 0; w < t->n_words; w++) {
    const json_t *v = json_array_get(a, w);
    if (json_is_null(v))
      sig[t->first_word + w] = NAN;
    else if (json_is_number(v))
      sig[t->first_word + w] = json_number_value(v);
    else
      return lt_fail(err, LT_E_INVALID, "row %zu: \"signal\"[%u] is not a number or null", row, w);
  }
  return LT_OK;
}

/* Runs one text, pooling every layer into words and summing token surprisal into sig when surprisal is wanted. */
static lt_status_t run_text(model_t *m, const text_t *t, pool_ctx_t *pc, const bool *all, double *sig, lt_err_t *err) {
  const model_config_t *cf = model_config(m);
  uint32_t d = cf->hidden_size;
  for (uint32_t l = 0; l <= cf->n_layers; l++) {
    pc->pos[l] = 0;
    for (uint64_t i = t->first_word * d; i < (t->first_word + t->n_words) * d; i++) pc->words[l][i] = -INFINITY;
  }
  pc->t = t;
  int32_t *targets = malloc((uint64_t)t->n * sizeof *targets);
  float *nll = malloc((uint64_t)t->n * sizeof *nll), *surprisal = malloc((uint64_t)t->n * sizeof *surprisal);
  model_seq_t *s = model_seq_new(m, t->n, err);
  lt_status_t st = LT_OK;
  if (!targets || !nll || !surprisal)
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
  else if (!s)
    st = err ? err->code : LT_E_NOMEM;
  if (st == LT_OK) {
    for (uint32_t i = 0; i < t->n; i++) targets[i] = i + 1 < t->n ? t->ids[i + 1] : -1;
    model_hooks_t h = {.ctx = pc, .capture_resid = all, .on_resid = pool_on_resid};
    model_item_t it = {
        .seq = s, .tokens = t->ids, .n_tokens = t->n, .out = MODEL_OUT_NLL, .result = nll, .targets = targets};
    st = model_forward(m, &it, 1, &h, err);
  }
  if (st == LT_OK && sig) {
    /* Token i's surprisal comes from the position before it; the first token has none. */
    surprisal[0] = NAN;
    for (uint32_t i = 1; i < t->n; i++) surprisal[i] = nll[i - 1];
    steer_word_sum(sig + t->first_word, surprisal, t->word_of, t->n, t->n_words);
  }
  model_seq_destroy(&s);
  free(targets), free(nll), free(surprisal);
  return st;
}

/* The correlations of one layer's first principal component with the signal (words with a finite signal). */
static void layer_stats(const float *words, const double *sig, uint64_t n_words, uint32_t d, double *r3,
                        double *explained) {
  double *proj = malloc((n_words ? n_words : 1) * sizeof *proj), *x = malloc((n_words ? n_words : 1) * sizeof *x),
         *y = malloc((n_words ? n_words : 1) * sizeof *y);
  r3[0] = r3[1] = r3[2] = *explained = NAN;
  if (proj && x && y) {
    *explained = steer_pca1(proj, words, (uint32_t)n_words, d);
    uint32_t k = 0;
    for (uint64_t i = 0; i < n_words; i++)
      if (isfinite(sig[i])) x[k] = proj[i], y[k++] = sig[i];
    r3[0] = steer_pearson(x, y, k);
    r3[1] = steer_spearman(x, y, k);
    r3[2] = steer_kendall(x, y, k);
  }
  free(proj), free(x), free(y);
}

job_outcome_t run_steer_layers(job_ctx_t *ctx, lt_err_t *err) {
  const char *path = job_param_str(ctx, "model"), *data = job_param_str(ctx, "data");
  const char *sel = job_param_str(ctx, "select"), *pos_path = job_param_str(ctx, "positive");
  unsigned flags = job_param_bool(ctx, "add_bos") ? TOK_ADD_BOS : 0;
  int sel_i = !strcmp(sel, "pearson") ? 0 : !strcmp(sel, "spearman") ? 1 : 2;
  static const char *const corr_names[3] = {"pearson", "spearman", "kendall"};
  tok_t *tok = NULL;
  model_t *m = job_model(ctx, path, &tok, err);
  if (!m) return JOB_FAILED;
  const model_config_t *cf = model_config(m);
  uint32_t L = cf->n_layers, d = cf->hidden_size;
  int64_t lo = job_param_int(ctx, "band_lo"), hi = job_param_int(ctx, "band_hi");
  if (lo < 0) lo = L / 4;
  if (hi < 0) hi = 3 * L / 4;
  if (hi > (int64_t)L - 1) hi = L - 1;
  if (lo > hi) {
    lt_fail(err, LT_E_INVALID, "the band %lld..%lld holds no block of this model (0..%u)", (long long)lo, (long long)hi,
            L - 1);
    return JOB_FAILED;
  }
  job_outcome_t out = JOB_FAILED;
  json_t **rows = NULL;
  size_t n_rows = 0;
  text_t *texts = NULL;
  bool *all = calloc(L + 1, sizeof *all);
  float **words = calloc(L + 1, sizeof *words);
  uint32_t *pos = calloc(L + 1, sizeof *pos);
  double *sig = NULL, *r = calloc(3 * (L + 1), sizeof *r), *expl = calloc(L + 1, sizeof *expl);
  double *contrast = NULL, *mp = NULL, *mn = NULL, *np = NULL, *nn = NULL;
  seqs_t ps = {0}, ns = {0};
  uint64_t n_words = 0;
  if (!all || !words || !pos || !r || !expl) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (uint32_t l = 0; l <= L; l++) all[l] = true;
  if (jsonl_load(data, (uint64_t)job_param_int(ctx, "max_rows"), &rows, &n_rows, err) != LT_OK) goto done;
  if (!(texts = calloc(n_rows ? n_rows : 1, sizeof *texts))) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  size_t with_signal = 0;
  for (size_t i = 0; i < n_rows; i++) {
    const char *s = jsonl_str(rows[i], "text");
    if (!s) {
      lt_fail(err, LT_E_INVALID, "%s: row %zu has no \"text\" string", data, i + 1);
      goto done;
    }
    with_signal += json_object_get(rows[i], "signal") != NULL;
    size_t n = 0;
    if (tok_encode(tok, s, strlen(s), flags, &texts[i].ids, &n, err) != LT_OK) goto done;
    if (n > UINT32_MAX || !(texts[i].word_of = malloc((n ? n : 1) * sizeof(int32_t)))) {
      lt_fail(err, LT_E_NOMEM, "out of memory");
      goto done;
    }
    texts[i].n = (uint32_t)n;
    texts[i].n_words = steer_words(tok, texts[i].ids, texts[i].n, texts[i].word_of);
    texts[i].first_word = n_words;
    n_words += texts[i].n_words;
  }
  if (with_signal && with_signal != n_rows) {
    lt_fail(err, LT_E_INVALID, "%s: %zu of %zu rows have a \"signal\": give it for every row or for none", data,
            with_signal, n_rows);
    goto done;
  }
  if (n_words < 3) {
    lt_fail(err, LT_E_INVALID, "%s: %llu words in all: too few to correlate", data, (unsigned long long)n_words);
    goto done;
  }
  if ((uint64_t)(L + 1) * n_words * d * 4 > MAX_WORD_BYTES || n_words > UINT32_MAX) {
    lt_fail(err, LT_E_LIMIT, "%llu words x %u layers x %u floats exceed %llu bytes: use --max-rows",
            (unsigned long long)n_words, L + 1, d, MAX_WORD_BYTES);
    goto done;
  }
  if (!(sig = malloc(n_words * sizeof *sig))) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (uint32_t l = 0; l <= L; l++)
    if (!(words[l] = malloc(n_words * d * sizeof(float)))) {
      lt_fail(err, LT_E_NOMEM, "out of memory");
      goto done;
    }
  pool_ctx_t pc = {.d = d, .pos = pos, .words = words};
  uint64_t steps = n_rows + (L + 1);
  job_tally_t tally = {0};
  if (*pos_path) {
    if (texts_load(pos_path, tok, flags, &ps, err) != LT_OK) goto done;
    if (texts_load(job_param_str(ctx, "negative"), tok, flags, &ns, err) != LT_OK) goto done;
    tally.total = ps.n + ns.n;
  }
  for (size_t i = 0; i < n_rows; i++) {
    if (texts[i].n == 0) continue; /* an empty text without BOS: no words */
    if (with_signal && read_signal(json_object_get(rows[i], "signal"), &texts[i], sig, i + 1, err) != LT_OK) goto done;
    if (run_text(m, &texts[i], &pc, all, with_signal ? NULL : sig, err) != LT_OK) goto done;
    job_progress(ctx, i + 1, steps, "steps");
    job_stop_t stop = job_should_stop(ctx);
    if (stop != JOB_GO) {
      out = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
      goto done;
    }
  }
  for (uint32_t l = 0; l <= L; l++) {
    layer_stats(words[l], sig, n_words, d, r + 3 * l, &expl[l]);
    job_progress(ctx, n_rows + l + 1, steps, "steps");
    job_stop_t stop = job_should_stop(ctx);
    if (stop != JOB_GO) {
      out = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
      goto done;
    }
  }
  if (*pos_path) {
    contrast = calloc(L + 1, sizeof *contrast);
    mp = calloc((uint64_t)(L + 1) * d, sizeof *mp), mn = calloc((uint64_t)(L + 1) * d, sizeof *mn);
    np = calloc(L + 1, sizeof *np), nn = calloc(L + 1, sizeof *nn);
    if (!contrast || !mp || !mn || !np || !nn) {
      lt_fail(err, LT_E_NOMEM, "out of memory");
      goto done;
    }
    uint32_t up = 0, un = 0;
    job_stop_t stop = JOB_GO;
    if (job_means(ctx, m, &ps, flags ? 1 : 0, all, mp, np, &up, &tally, &stop, err) != LT_OK) goto done;
    if (stop == JOB_GO && job_means(ctx, m, &ns, flags ? 1 : 0, all, mn, nn, &un, &tally, &stop, err) != LT_OK)
      goto done;
    if (stop != JOB_GO) {
      out = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
      goto done;
    }
    for (uint32_t l = 0; l <= L; l++)
      contrast[l] = steer_contrast(mp + (uint64_t)l * d, mn + (uint64_t)l * d, d, (np[l] + nn[l]) / 2);
  }
  int64_t chosen = -1, chosen_c = -1;
  for (int64_t l = lo; l <= hi; l++) {
    double v = fabs(r[3 * l + sel_i]);
    if (isfinite(v) && (chosen < 0 || v > fabs(r[3 * chosen + sel_i]))) chosen = l;
    if (contrast && isfinite(contrast[l]) && (chosen_c < 0 || contrast[l] > contrast[chosen_c])) chosen_c = l;
  }
  for (uint32_t l = 0; l <= L; l++) {
    job_output_begin(ctx);
    job_output_str(ctx, "plot", "layer");
    job_output_int(ctx, "layer", l);
    for (int k = 0; k < 3; k++) job_output_float(ctx, corr_names[k], r[3 * l + k]);
    job_output_float(ctx, "variance", expl[l]);
    if (contrast) job_output_float(ctx, "contrast", contrast[l]);
    job_output_end(ctx);
  }
  if (chosen < 0) {
    lt_fail(err, LT_E_INVALID, "no %s correlation could be computed in the band %lld..%lld (is the signal constant?)",
            sel, (long long)lo, (long long)hi);
    goto done;
  }
  char title[1200], subtitle[200];
  const char *base = strrchr(path, '/') && strrchr(path, '/')[1] ? strrchr(path, '/') + 1 : path;
  snprintf(title, sizeof title, "CogSteer layer analysis: %s", base);
  snprintf(subtitle, sizeof subtitle, "first principal component of %llu word vectors vs %s; chosen block %lld (%s)",
           (unsigned long long)n_words, with_signal ? "the signal" : "surprisal", (long long)chosen, sel);
  double *cols[3] = {malloc((L + 1) * sizeof(double)), malloc((L + 1) * sizeof(double)),
                     malloc((L + 1) * sizeof(double))};
  bool plotted = false;
  if (cols[0] && cols[1] && cols[2]) {
    for (uint32_t l = 0; l <= L; l++)
      for (int k = 0; k < 3; k++) cols[k][l] = r[3 * l + k];
    plot_curve_t curves[4] = {{"Pearson r", cols[0], 0},
                              {"Spearman rho", cols[1], 0},
                              {"Kendall tau-b", cols[2], 0},
                              {"contrast strength", contrast, 1}};
    plot_spec_t spec = {.title = title,
                        .subtitle = subtitle,
                        .xlabel = "layer (residual stream entering the block; last: final state)",
                        .ylabel = {"correlation", "contrast strength"},
                        .n = L + 1,
                        .curves = curves,
                        .n_curves = contrast ? 4 : 3,
                        .band_lo = (int)lo,
                        .band_hi = (int)hi,
                        .mark = (int)chosen};
    char svg[4200];
    snprintf(svg, sizeof svg, "%s/layers.svg", job_dir(ctx));
    plotted = plot_svg_write(svg, &spec, err) == LT_OK;
  }
  for (int k = 0; k < 3; k++) free(cols[k]);
  if (!plotted) goto done;
  job_artifact(ctx, "plot", "layers.svg");
  job_output_begin(ctx);
  job_output_int(ctx, "chosen_layer", chosen);
  job_output_str(ctx, "select", sel);
  job_output_float(ctx, sel, r[3 * chosen + sel_i]);
  job_output_int(ctx, "band_lo", lo);
  job_output_int(ctx, "band_hi", hi);
  job_output_str(ctx, "signal", with_signal ? "given" : "surprisal");
  job_output_int(ctx, "texts", (int64_t)n_rows);
  job_output_int(ctx, "words", (int64_t)n_words);
  if (contrast) job_output_int(ctx, "contrast_layer", chosen_c);
  job_output_str(ctx, "plot_file", "layers.svg");
  job_output_end(ctx);
  job_result_int(ctx, "chosen_layer", chosen);
  job_result_str(ctx, "select", sel);
  job_result_float(ctx, sel, r[3 * chosen + sel_i]);
  if (contrast) job_result_int(ctx, "contrast_layer", chosen_c);
  job_result_int(ctx, "words", (int64_t)n_words);
  out = JOB_SUCCEEDED;
done:
  for (size_t i = 0; texts && i < n_rows; i++) free(texts[i].ids), free(texts[i].word_of);
  for (uint32_t l = 0; words && l <= L; l++) free(words[l]);
  free(texts), free(all), free(words), free(pos), free(sig), free(r), free(expl);
  free(contrast), free(mp), free(mn), free(np), free(nn);
  seqs_free(&ps), seqs_free(&ns);
  jsonl_free(rows, n_rows);
  return out;
}
