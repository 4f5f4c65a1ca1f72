/* Self-reference AI feedback; the procedure is described in feedback.h and docs/data-jobs.md. */
#include "methods/feedback.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static lt_status_t lm_gen_cb(void *ctx, const char *const *prompts, size_t n, char **outs, lt_err_t *err) {
  return lm_generate(ctx, prompts, n, outs, err);
}

static lt_status_t lm_ll_cb(void *ctx, const char *context, const char *continuation, double *sum, size_t *n,
                            lt_err_t *err) {
  return lm_loglik(ctx, context, continuation, sum, n, err);
}

static bool lm_stopped_cb(void *ctx) { return ((const lm_t *)ctx)->stopped; }

fb_annotator_t fb_annotator_lm(lm_t *lm) { return (fb_annotator_t){lm, lm_gen_cb, lm_ll_cb, lm_stopped_cb}; }

static bool stopped(const fb_annotator_t *an) { return an->stopped && an->stopped(an->ctx); }

int fb_parse_verdict(const char *text) {
  const char *last = NULL;
  for (const char *p = text; (p = strcasestr(p, "verdict:")); p += 8) last = p;
  if (!last) return -1;
  const char *p = last + 8;
  while (*p && strchr(" \t*\"'", *p)) p++;
  if (!strncasecmp(p, "answer", 6)) {
    p += 6;
    while (*p && strchr(" \t", *p)) p++;
  }
  if ((*p == 'A' || *p == 'B') && !isalnum((unsigned char)p[1])) return *p == 'A' ? 0 : 1;
  return -1;
}

void fb_result_free(fb_result_t *r) {
  if (!r) return;
  free(r->own_prompt), free(r->own);
  for (int k = 0; k < 2; k++) free(r->order[k].prompt), free(r->order[k].critique);
  memset(r, 0, sizeof *r);
}

/* A new string printed like printf; NULL when out of memory. */
__attribute__((format(printf, 1, 2))) static char *fmt(const char *f, ...) {
  va_list ap;
  va_start(ap, f);
  int n = vsnprintf(NULL, 0, f, ap);
  va_end(ap);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (!s) return NULL;
  va_start(ap, f);
  vsnprintf(s, (size_t)n + 1, f, ap);
  va_end(ap);
  return s;
}

static lt_status_t render(const chat_tmpl_t *t, const chat_msg_t *m, size_t n, char **out, lt_err_t *err) {
  size_t len;
  return chat_render(t, m, n, true, out, &len, err);
}

/* Mean token log-likelihood of reply after context. */
static lt_status_t mean_ll(const fb_annotator_t *an, const char *context, const char *reply, double *mean,
                           lt_err_t *err) {
  double sum;
  size_t n;
  lt_status_t st = an->loglik(an->ctx, context, reply, &sum, &n, err);
  if (st == LT_OK && n == 0) st = lt_fail(err, LT_E_INVALID, "an answer encodes to no tokens");
  if (st == LT_OK) *mean = sum / (double)n;
  return st;
}

/* Decides one order: by the critique's verdict, or by the likelihood of " A" vs " B" after FB_VERDICT_SUFFIX. */
static lt_status_t decide(const fb_annotator_t *an, const fb_opts_t *o, fb_vote_t *v, lt_err_t *err) {
  v->said = fb_parse_verdict(v->critique);
  if (o->decide == FB_DECIDE_TEXT_THEN_LOGLIK && v->said >= 0) {
    v->pick = v->said;
    v->by_text = true;
    return LT_OK;
  }
  char *ctx = fmt("%s%s%s", v->prompt, v->critique, FB_VERDICT_SUFFIX);
  if (!ctx) return lt_fail(err, LT_E_NOMEM, "out of memory");
  size_t n;
  lt_status_t st = an->loglik(an->ctx, ctx, " A", &v->ll[0], &n, err);
  if (st == LT_OK) st = an->loglik(an->ctx, ctx, " B", &v->ll[1], &n, err);
  free(ctx);
  v->pick = v->ll[1] > v->ll[0] ? 1 : 0;
  return st;
}

lt_status_t fb_judge(const fb_annotator_t *an, const chat_tmpl_t *t, const fb_opts_t *o, const fb_item_t *items,
                     size_t n, fb_result_t *res, lt_err_t *err) {
  const char *principle = o && o->principle ? o->principle : FB_DEFAULT_PRINCIPLE;
  fb_opts_t opts = o ? *o : (fb_opts_t){0};
  memset(res, 0, n * sizeof *res);
  for (size_t i = 0; i < n; i++) {
    res[i].chosen = -1;
    for (int k = 0; k < 2; k++)
      res[i].order[k].ll[0] = res[i].order[k].ll[1] = res[i].order[k].mean[0] = res[i].order[k].mean[1] = NAN;
  }
  const char **prompts = calloc(2 * n + 1, sizeof *prompts);
  char **outs = calloc(2 * n + 1, sizeof *outs), **requests = calloc(2 * n + 1, sizeof *requests);
  lt_status_t st = LT_OK;
  if (!prompts || !outs || !requests) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  /* (1) the annotator's own answers */
  for (size_t i = 0; i < n && st == LT_OK; i++) {
    chat_msg_t m[] = {{"user", items[i].prompt}};
    st = render(t, m, 1, &res[i].own_prompt, err);
    prompts[i] = res[i].own_prompt;
  }
  if (st != LT_OK || (st = an->generate(an->ctx, prompts, n, outs, err)) != LT_OK) goto done;
  for (size_t i = 0; i < n; i++) res[i].own = outs[i];
  if (stopped(an)) goto done;
  /* (2) the critiques, A first and then B first, in the same conversation */
  for (size_t i = 0; i < n && st == LT_OK; i++)
    for (int k = 0; k < 2 && st == LT_OK; k++) {
      const char *first = k ? items[i].b : items[i].a, *second = k ? items[i].a : items[i].b;
      if (!(requests[2 * i + k] = fmt(FB_CRITIQUE_REQUEST, first, second, principle))) {
        st = lt_fail(err, LT_E_NOMEM, "out of memory");
        break;
      }
      chat_msg_t m[] = {{"user", items[i].prompt}, {"assistant", res[i].own}, {"user", requests[2 * i + k]}};
      st = render(t, m, 3, &res[i].order[k].prompt, err);
      prompts[2 * i + k] = res[i].order[k].prompt;
    }
  if (st != LT_OK || (st = an->generate(an->ctx, prompts, 2 * n, outs, err)) != LT_OK) goto done;
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < 2; k++) res[i].order[k].critique = outs[2 * i + k];
  /* (3) the decisions, and (4) every row's likelihoods of a and b as the reply to the rewrite request: the
   * lean, and the strength of consistent rows */
  for (size_t i = 0; i < n && st == LT_OK && !stopped(an); i++) {
    fb_result_t *r = &res[i];
    for (int k = 0; k < 2 && st == LT_OK; k++) st = decide(an, &opts, &r->order[k], err);
    if (st != LT_OK) break;
    int vote0 = r->order[0].pick, vote1 = 1 - r->order[1].pick; /* in terms of a (0) and b (1) */
    r->consistent = vote0 == vote1;
    r->chosen = r->consistent ? vote0 : -1;
    for (int k = 0; k < 2 && st == LT_OK; k++) {
      fb_vote_t *v = &r->order[k];
      chat_msg_t m[] = {{"user", items[i].prompt},
                        {"assistant", r->own},
                        {"user", requests[2 * i + k]},
                        {"assistant", v->critique},
                        {"user", FB_REWRITE_REQUEST}};
      char *ctx = NULL;
      st = render(t, m, 5, &ctx, err);
      if (st == LT_OK) st = mean_ll(an, ctx, items[i].a, &v->mean[0], err);
      if (st == LT_OK) st = mean_ll(an, ctx, items[i].b, &v->mean[1], err);
      free(ctx);
    }
    if (st != LT_OK) break;
    const fb_vote_t *v0 = &r->order[0], *v1 = &r->order[1];
    double avg[2] = {(v0->mean[0] + v1->mean[0]) / 2, (v0->mean[1] + v1->mean[1]) / 2};
    r->lean = avg[1] > avg[0] ? 1 : 0;
    r->lean_margin = avg[r->lean] - avg[1 - r->lean];
    if (r->consistent) {
      int c = r->chosen;
      r->strength = ((v0->mean[c] - v0->mean[1 - c]) + (v1->mean[c] - v1->mean[1 - c])) / 2;
    }
  }
done:
  if (requests)
    for (size_t i = 0; i < 2 * n; i++) free(requests[i]);
  free(prompts), free(outs), free(requests);
  return st;
}
