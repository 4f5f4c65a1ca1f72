#include "methods/lm.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

uint32_t lm_window(const lm_t *lm) {
  uint32_t w = model_config(lm->model)->max_position;
  return w && w < 4096 ? w : 4096;
}

uint32_t lm_max_new(const lm_t *lm) {
  uint32_t half = lm_window(lm) / 2;
  return lm->gen.max_tokens < half ? lm->gen.max_tokens : half;
}

/* Keeps at most keep of ids[*n] in place: the first token when it is BOS, then the last ones. Returns whether it
 * cut anything. */
static bool keep_tail(const lm_t *lm, int32_t *ids, size_t *n, size_t keep) {
  if (*n <= keep) return false;
  size_t head = keep >= 2 && ids[0] == tok_bos(lm->tok) ? 1 : 0;
  memmove(ids + head, ids + *n - (keep - head), (keep - head) * sizeof *ids);
  *n = keep;
  return true;
}

/* The step callback given to model_generate: lm's own, remembering a stop. */
static bool step(void *ctx, uint32_t item, const int32_t *tokens, uint32_t n) {
  lm_t *lm = ctx;
  if (lm->on_step && !lm->on_step(lm->step_ctx, item, tokens, n)) lm->stopped = true;
  return !lm->stopped;
}

lt_status_t lm_generate(lm_t *lm, const char *const *prompts, size_t n, char **outs, lt_err_t *err) {
  uint32_t max_new = lm_max_new(lm), limit = lm_window(lm) - max_new;
  int32_t **ids = calloc(n ? n : 1, sizeof *ids);
  uint32_t *lens = calloc(n ? n : 1, sizeof *lens);
  gen_result_t *res = calloc(n ? n : 1, sizeof *res);
  lt_status_t st = LT_OK;
  for (size_t i = 0; i < n; i++) outs[i] = NULL;
  if (lm->stopped) { /* asked to stop: every output empty, nothing computed */
    for (size_t i = 0; i < n && st == LT_OK; i++)
      if (!(outs[i] = strdup(""))) st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto decoded;
  }
  if (!ids || !lens || !res) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n && st == LT_OK; i++) {
    size_t len = 0;
    if ((st = tok_encode(lm->tok, prompts[i], strlen(prompts[i]), lm->encode_flags, &ids[i], &len, err)) != LT_OK)
      break;
    if (len == 0) st = lt_fail(err, LT_E_INVALID, "prompt %zu encodes to no tokens", i);
    if (keep_tail(lm, ids[i], &len, limit ? limit : 1)) lm->n_truncated++;
    lens[i] = (uint32_t)len;
  }
  if (st != LT_OK) goto done;
  gen_opts_t o = lm->gen;
  o.max_tokens = max_new;
  st = model_generate(lm->model, (const int32_t *const *)ids, lens, (uint32_t)n, &o, NULL, step, lm, res, err);
  lm->gen.seed += n;
  for (size_t i = 0; i < n && st == LT_OK; i++) {
    size_t len = 0;
    st = tok_decode(lm->tok, res[i].tokens, res[i].n_tokens, TOK_SKIP_SPECIAL | TOK_KEEP_LEADING | TOK_UTF8_REPLACE,
                    &outs[i], &len, err);
    for (size_t s = 0; st == LT_OK && lm->stops && lm->stops[s]; s++) {
      char *hit = strstr(outs[i], lm->stops[s]);
      if (hit) *hit = '\0';
    }
  }
decoded:
  if (st != LT_OK)
    for (size_t i = 0; i < n; i++) {
      free(outs[i]);
      outs[i] = NULL;
    }
done:
  for (size_t i = 0; i < n; i++) {
    if (ids) free(ids[i]);
    if (res) free(res[i].tokens);
  }
  free(ids), free(lens), free(res);
  return st;
}

lt_status_t lm_loglik(lm_t *lm, const char *context, const char *continuation, double *sum, size_t *n_tokens,
                      lt_err_t *err) {
  int32_t *c = NULL, *k = NULL, *all = NULL;
  float *lp = NULL;
  size_t nc = 0, nk = 0;
  *sum = 0;
  *n_tokens = 0;
  if (lm->stopped) return LT_OK;
  lt_status_t st = tok_encode(lm->tok, context, strlen(context), lm->encode_flags, &c, &nc, err);
  if (st == LT_OK) st = tok_encode(lm->tok, continuation, strlen(continuation), 0, &k, &nk, err);
  if (st == LT_OK && nc == 0) st = lt_fail(err, LT_E_INVALID, "nothing to condition on: the context is empty");
  if (st != LT_OK || nk == 0) goto done;
  size_t w = lm_window(lm);
  if (nc + nk > w) {
    nk = nk < w * 3 / 4 ? nk : w * 3 / 4;
    keep_tail(lm, c, &nc, w - nk);
    lm->n_truncated++;
  }
  all = malloc((nc + nk) * sizeof *all);
  lp = malloc((nc + nk) * sizeof *lp);
  if (!all || !lp) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  memcpy(all, c, nc * sizeof *all);
  memcpy(all + nc, k, nk * sizeof *all);
  if ((st = model_score(lm->model, all, (uint32_t)(nc + nk), lp, err)) != LT_OK) goto done;
  for (size_t i = nc; i < nc + nk; i++) *sum += lp[i];
  *n_tokens = nk;
done:
  free(c), free(k), free(all), free(lp);
  return st;
}
