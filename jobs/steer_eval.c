/* The `steer-eval` kind: did steering work, and at what cost? For every prompt, `samples` generations without and
 * with the job's steering configuration (the same seeds for both), then: how often the target and avoid words
 * appear, the mean log-probability shift (steered minus unsteered, per token) of the prompts' given
 * continuations, and the perplexity of each condition's generations under the unsteered model (fluency). For ROSE
 * the unsteered condition uses the same positive-prompt wrapping, so only the reverse-prompt contrast differs. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/plot.h"
#include "jobs/runners.h"
#include "jobs/steer_common.h"

#define CHUNK 32 /* generations batched together */

/* What one condition produced. */
typedef struct tally {
  uint64_t words, target_hits, avoid_hits, with_target, with_avoid, samples;
  uint32_t per_target[KIND_MAX_LIST], per_avoid[KIND_MAX_LIST]; /* hits of each listed word */
  double nll;                                                   /* of the generated tokens under the unsteered model */
  uint64_t tokens;                                              /* generated tokens scored */
} tally_t;

/* The first listed word (of list key) that word w (n bytes, lower-cased) matches: equal, or (unless whole)
 * starting with it; -1 when none does. */
static int listed(const char *w, size_t n, job_ctx_t *ctx, const char *key, bool whole) {
  for (size_t i = 0; i < job_param_list_len(ctx, key); i++) {
    const char *e = job_param_list_at(ctx, key, i);
    size_t k = strlen(e);
    if (k == 0 || k > n || (whole && k != n)) continue;
    bool same = true;
    for (size_t j = 0; j < k && same; j++) same = w[j] == (char)tolower((unsigned char)e[j]);
    if (same) return (int)i;
  }
  return -1;
}

/* Counts the words of text (runs of letters, digits, apostrophes and non-ASCII bytes) and the listed ones. */
static void count_words(const char *text, job_ctx_t *ctx, bool whole, tally_t *t) {
  char w[256];
  uint64_t target = 0, avoid = 0;
  for (const unsigned char *p = (const unsigned char *)text; *p;) {
    if (!(isalnum(*p) || *p >= 0x80 || *p == '\'')) {
      p++;
      continue;
    }
    size_t n = 0;
    for (; *p && (isalnum(*p) || *p >= 0x80 || *p == '\''); p++)
      if (n < sizeof w) w[n++] = (char)tolower(*p);
    t->words++;
    int a = listed(w, n, ctx, "target", whole), b = listed(w, n, ctx, "avoid", whole);
    if (a >= 0) target++, t->per_target[a]++;
    if (b >= 0) avoid++, t->per_avoid[b]++;
  }
  t->target_hits += target;
  t->avoid_hits += avoid;
  t->with_target += target > 0;
  t->with_avoid += avoid > 0;
  t->samples++;
}

/* Adds the unsteered model's negative log-likelihood of gen given prompt to t. */
static lt_status_t fluency(model_t *m, const int32_t *prompt, uint32_t np, const int32_t *gen, uint32_t ng, tally_t *t,
                           lt_err_t *err) {
  if (ng == 0) return LT_OK;
  int32_t *all = malloc(((uint64_t)np + ng) * sizeof *all);
  float *lp = malloc(((uint64_t)np + ng) * sizeof *lp);
  lt_status_t st = all && lp ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK) {
    memcpy(all, prompt, (uint64_t)np * 4);
    memcpy(all + np, gen, (uint64_t)ng * 4);
    st = model_score(m, all, np + ng, lp, err);
  }
  for (uint32_t i = np; st == LT_OK && i < np + ng; i++) t->nll -= lp[i];
  if (st == LT_OK) t->tokens += ng;
  free(all), free(lp);
  return st;
}

typedef struct run {
  job_ctx_t *ctx;
  model_t *m;
  tok_t *tok;
  const job_steer_t *js;
  const char *const *texts; /* the prompts as given */
  const gen_opts_t *o;
  size_t n_prompts;
  uint32_t samples;
  bool whole;
  uint64_t done, total; /* generations, for progress */
} run_t;

/* Generates every prompt's samples under s (NULL: unsteered), CHUNK at a time, tallying them; the first sample of
 * each prompt is sent as an output record. */
static job_outcome_t condition(run_t *r, const steer_cfg_t *s, const char *name, tally_t *t, lt_err_t *err) {
  const job_steer_t *js = r->js;
  uint64_t total = (uint64_t)r->n_prompts * r->samples;
  const int32_t *pp[CHUNK], *tw[CHUNK];
  uint32_t pl[CHUNK], twl[CHUNK];
  gen_result_t res[CHUNK];
  for (uint64_t c0 = 0; c0 < total; c0 += CHUNK) {
    uint32_t k = total - c0 < CHUNK ? (uint32_t)(total - c0) : CHUNK;
    for (uint32_t j = 0; j < k; j++) {
      size_t p = (size_t)((c0 + j) / r->samples);
      pp[j] = js->prompts.ids[p];
      pl[j] = js->prompts.lens[p];
      if (js->twins.n) tw[j] = js->twins.ids[p], twl[j] = js->twins.lens[p];
    }
    steer_cfg_t chunk = s ? *s : (steer_cfg_t){0};
    chunk.twins = tw;
    chunk.twin_lens = twl;
    gen_opts_t o = *r->o;
    o.seed = r->o->seed + c0; /* generation i of the whole run samples with seed + i, in both conditions */
    if (steer_generate(r->m, &chunk, pp, pl, k, &o, NULL, NULL, res, err) != LT_OK) return JOB_FAILED;
    lt_status_t st = LT_OK;
    for (uint32_t j = 0; j < k; j++) {
      char *text = NULL;
      size_t len = 0;
      if (st == LT_OK)
        st = tok_decode(r->tok, res[j].tokens, res[j].n_tokens, TOK_KEEP_LEADING | TOK_UTF8_REPLACE, &text, &len, err);
      if (st == LT_OK) st = fluency(r->m, pp[j], pl[j], res[j].tokens, res[j].n_tokens, t, err);
      if (st == LT_OK) {
        count_words(text, r->ctx, r->whole, t);
        if ((c0 + j) % r->samples == 0) {
          job_output_begin(r->ctx);
          job_output_str(r->ctx, "condition", name);
          job_output_str(r->ctx, "prompt", r->texts[(c0 + j) / r->samples]);
          job_output_str(r->ctx, "text", text);
          job_output_end(r->ctx);
        }
      }
      free(text);
      free(res[j].tokens);
    }
    if (st != LT_OK) return JOB_FAILED;
    r->done += k;
    job_progress(r->ctx, r->done, r->total, "generations");
    job_stop_t stop = job_should_stop(r->ctx);
    if (stop != JOB_GO) return stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
  }
  return JOB_SUCCEEDED;
}

/* "word count, word count, ..." for list key; caller frees. */
static char *counts_str(job_ctx_t *ctx, const char *key, const uint32_t *hits) {
  size_t n = job_param_list_len(ctx, key), cap = 1;
  for (size_t i = 0; i < n; i++) cap += strlen(job_param_list_at(ctx, key, i)) + 16;
  char *s = malloc(cap);
  if (!s) return NULL;
  size_t at = 0;
  s[0] = '\0';
  for (size_t i = 0; i < n; i++)
    at += (size_t)snprintf(s + at, cap - at, "%s%s %u", i ? ", " : "", job_param_list_at(ctx, key, i), hits[i]);
  return s;
}

static void report(job_ctx_t *ctx, const char *name, const char *method, const tally_t *t) {
  double words = t->words ? (double)t->words : NAN, samples = t->samples ? (double)t->samples : NAN;
  job_output_begin(ctx);
  job_output_str(ctx, "condition", name);
  job_output_str(ctx, "method", method);
  job_output_int(ctx, "samples", (int64_t)t->samples);
  job_output_int(ctx, "words", (int64_t)t->words);
  job_output_int(ctx, "target_hits", (int64_t)t->target_hits);
  job_output_float(ctx, "target_per_100_words", 100.0 * (double)t->target_hits / words);
  job_output_float(ctx, "samples_with_target", (double)t->with_target / samples);
  job_output_int(ctx, "avoid_hits", (int64_t)t->avoid_hits);
  job_output_float(ctx, "avoid_per_100_words", 100.0 * (double)t->avoid_hits / words);
  job_output_float(ctx, "samples_with_avoid", (double)t->with_avoid / samples);
  char *tc = counts_str(ctx, "target", t->per_target), *ac = counts_str(ctx, "avoid", t->per_avoid);
  job_output_str(ctx, "target_counts", tc ? tc : "");
  job_output_str(ctx, "avoid_counts", ac ? ac : "");
  free(tc), free(ac);
  job_output_float(ctx, "perplexity_unsteered_model", t->tokens ? exp(t->nll / (double)t->tokens) : NAN);
  job_output_end(ctx);
}

/* steer-eval.svg in the job folder: hits per 100 words, unsteered vs steered, for all target words, all avoid words
 * and each listed word (up to 12 bars' worth of groups); the fluency cost and log-probability shift in the subtitle. */
static void bars(job_ctx_t *ctx, const char *method, const tally_t *base, const tally_t *steered, double ppl0,
                 double ppl1, double shift) {
  enum { GROUPS = 12 };
  const char *groups[GROUPS];
  char names[GROUPS][48];
  double v[2 * GROUPS];
  uint32_t g = 0;
  const tally_t *t[2] = {base, steered};
  for (int k = 0; k < 2 && g < GROUPS; k++) {
    const char *key = k ? "avoid" : "target";
    size_t n = job_param_list_len(ctx, key);
    if (!n) continue;
    snprintf(names[g], sizeof names[g], "all %s words", key);
    for (int c = 0; c < 2; c++)
      v[c * GROUPS + g] = t[c]->words ? 100.0 * (double)(k ? t[c]->avoid_hits : t[c]->target_hits) / t[c]->words : NAN;
    g++;
    for (size_t i = 0; i < n && n > 1 && g < GROUPS; i++, g++) {
      snprintf(names[g], sizeof names[g], "%s%.40s", k ? "-" : "+", job_param_list_at(ctx, key, i));
      for (int c = 0; c < 2; c++)
        v[c * GROUPS + g] =
            t[c]->words ? 100.0 * (double)(k ? t[c]->per_avoid[i] : t[c]->per_target[i]) / t[c]->words : NAN;
    }
  }
  if (!g) return;
  double packed[2 * GROUPS];
  for (uint32_t i = 0; i < g; i++) groups[i] = names[i], packed[i] = v[i], packed[g + i] = v[GROUPS + i];
  char title[160], sub[200], path[4200];
  snprintf(title, sizeof title, "steer-eval --%s: listed words per 100 generated words", method);
  int at = snprintf(sub, sizeof sub, "perplexity under the unsteered model: %.2f unsteered, %.2f steered", ppl0, ppl1);
  if (isfinite(shift))
    snprintf(sub + at, sizeof sub - (size_t)at, "; continuations' log-probability shift %+.3f per token", shift);
  static const char *const series[] = {"unsteered", "steered"};
  plot_bars_t b = {.title = title,
                   .subtitle = sub,
                   .ylabel = "per 100 words",
                   .n_groups = g,
                   .n_series = 2,
                   .groups = groups,
                   .series = series,
                   .v = packed};
  lt_err_t e = {0};
  snprintf(path, sizeof path, "%s/steer-eval.svg", job_dir(ctx));
  job_picture(ctx, plot_bars_write(path, &b, &e), "plot", "steer-eval.svg", &e);
}

job_outcome_t run_steer_eval(job_ctx_t *ctx, lt_err_t *err) {
  const char *path = job_param_str(ctx, "model"), *data = job_param_str(ctx, "prompts");
  unsigned flags = job_param_bool(ctx, "add_bos") ? TOK_ADD_BOS : 0;
  gen_opts_t o = {.max_tokens = (uint32_t)job_param_int(ctx, "max_tokens"),
                  .sample = {.temperature = (float)job_param_float(ctx, "temperature"),
                             .top_k = (uint32_t)job_param_int(ctx, "top_k"),
                             .top_p = (float)job_param_float(ctx, "top_p")},
                  .seed = (uint64_t)job_param_int(ctx, "seed")};
  tok_t *tok = NULL;
  model_t *m = job_model(ctx, path, &tok, err);
  if (!m) return JOB_FAILED;
  job_outcome_t out = JOB_FAILED;
  json_t **rows = NULL;
  size_t n = 0;
  const char **texts = NULL;
  job_steer_t js = {0};
  seqs_t conts = {0};
  float **lp_base = NULL, **lp_steer = NULL;
  if (jsonl_load(data, 0, &rows, &n, err) != LT_OK) goto done;
  if (n == 0) {
    lt_fail(err, LT_E_INVALID, "%s: no prompts", data);
    goto done;
  }
  texts = calloc(n, sizeof *texts);
  conts.ids = calloc(n, sizeof *conts.ids);
  conts.lens = calloc(n, sizeof *conts.lens);
  lp_base = calloc(n, sizeof *lp_base);
  lp_steer = calloc(n, sizeof *lp_steer);
  if (!texts || !conts.ids || !conts.lens || !lp_base || !lp_steer) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  conts.n = n;
  for (size_t i = 0; i < n; i++) {
    texts[i] = jsonl_str(rows[i], "prompt") ? jsonl_str(rows[i], "prompt") : jsonl_str(rows[i], "text");
    if (!texts[i]) {
      lt_fail(err, LT_E_INVALID, "%s: row %zu has no \"prompt\" string", data, i + 1);
      goto done;
    }
    const char *c =
        jsonl_str(rows[i], "continuation") ? jsonl_str(rows[i], "continuation") : jsonl_str(rows[i], "completion");
    size_t len = 0;
    if (c && tok_encode(tok, c, strlen(c), 0, &conts.ids[i], &len, err) != LT_OK) goto done;
    conts.lens[i] = (uint32_t)len;
    lp_base[i] = malloc((len ? len : 1) * sizeof(float));
    lp_steer[i] = malloc((len ? len : 1) * sizeof(float));
    if (!lp_base[i] || !lp_steer[i]) {
      lt_fail(err, LT_E_NOMEM, "out of memory");
      goto done;
    }
  }
  if (job_steer_init(&js, ctx, m, tok, texts, n, flags, err) != LT_OK) goto done;
  const char *method = steer_method_str(js.cfg.method);
  run_t r = {.ctx = ctx,
             .m = m,
             .tok = tok,
             .js = &js,
             .texts = texts,
             .o = &o,
             .n_prompts = n,
             .samples = (uint32_t)job_param_int(ctx, "samples"),
             .whole = job_param_bool(ctx, "whole_words")};
  r.total = 2ull * n * r.samples;
  tally_t base = {0}, steered = {0};
  job_progress(ctx, 0, r.total, "generations");
  if ((out = condition(&r, NULL, "unsteered", &base, err)) != JOB_SUCCEEDED) goto done;
  if ((out = condition(&r, &js.cfg, "steered", &steered, err)) != JOB_SUCCEEDED) goto done;
  out = JOB_FAILED;
  /* The continuations, teacher forced under both conditions. */
  const int32_t *const *prompts = (const int32_t *const *)js.prompts.ids, *const *cids =
                                                                              (const int32_t *const *)conts.ids;
  if (steer_score(m, NULL, prompts, js.prompts.lens, cids, conts.lens, (uint32_t)n, lp_base, err) != LT_OK) goto done;
  if (steer_score(m, &js.cfg, prompts, js.prompts.lens, cids, conts.lens, (uint32_t)n, lp_steer, err) != LT_OK)
    goto done;
  double shift = 0, lp0 = 0, lp1 = 0;
  uint64_t scored = 0;
  for (size_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < conts.lens[i]; j++, scored++) lp0 += lp_base[i][j], lp1 += lp_steer[i][j];
  if (scored) shift = (lp1 - lp0) / (double)scored;
  report(ctx, "unsteered", "none", &base);
  report(ctx, "steered", method, &steered);
  double b_rate = base.words ? 100.0 * (double)base.target_hits / (double)base.words : NAN;
  double s_rate = steered.words ? 100.0 * (double)steered.target_hits / (double)steered.words : NAN;
  double b_avoid = base.words ? 100.0 * (double)base.avoid_hits / (double)base.words : NAN;
  double s_avoid = steered.words ? 100.0 * (double)steered.avoid_hits / (double)steered.words : NAN;
  double ppl0 = base.tokens ? exp(base.nll / (double)base.tokens) : NAN;
  double ppl1 = steered.tokens ? exp(steered.nll / (double)steered.tokens) : NAN;
  job_output_begin(ctx);
  job_output_str(ctx, "summary", method);
  job_output_float(ctx, "target_per_100_words_shift", s_rate - b_rate);
  job_output_float(ctx, "avoid_per_100_words_shift", s_avoid - b_avoid);
  job_output_int(ctx, "continuation_tokens", (int64_t)scored);
  job_output_float(ctx, "logprob_shift_per_token", scored ? shift : NAN);
  job_output_float(ctx, "perplexity_ratio", ppl1 / ppl0);
  job_output_end(ctx);
  bars(ctx, method, &base, &steered, ppl0, ppl1, scored ? shift : NAN);
  job_result_str(ctx, "method", method);
  job_result_float(ctx, "target_per_100_words_unsteered", b_rate);
  job_result_float(ctx, "target_per_100_words_steered", s_rate);
  job_result_float(ctx, "avoid_per_100_words_unsteered", b_avoid);
  job_result_float(ctx, "avoid_per_100_words_steered", s_avoid);
  if (scored) job_result_float(ctx, "logprob_shift_per_token", shift);
  job_result_float(ctx, "perplexity_unsteered", ppl0);
  job_result_float(ctx, "perplexity_steered", ppl1);
  out = JOB_SUCCEEDED;
done:
  for (size_t i = 0; i < n; i++) {
    if (lp_base) free(lp_base[i]);
    if (lp_steer) free(lp_steer[i]);
  }
  free(lp_base), free(lp_steer), free(texts);
  seqs_free(&conts);
  job_steer_free(&js);
  jsonl_free(rows, n);
  return out;
}
