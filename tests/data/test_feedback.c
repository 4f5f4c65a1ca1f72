/* Self-reference AI feedback with a scripted annotator: the second query really shows the answers swapped, a
 * label survives only when both orders agree (inconsistent pairs are flagged), the verdict comes from the
 * critique's text or else from the likelihood, the strength is the documented margin, and every pair, consistent
 * or not, gets its rewrite likelihoods and its lean. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "methods/feedback.h"

TestSuite(feedback, .timeout = 30);

#define GOOD "A kind and true answer."
#define BAD "A cruel and false answer."
#define OWN "My own answer."

typedef enum mode {
  M_NAME_GOOD,   /* the critique names the position where GOOD is shown */
  M_ALWAYS_A,    /* the critique always says A: pure position bias */
  M_SILENT_GOOD, /* no verdict in the critique; the likelihood favours the position of GOOD */
  M_SILENT_A,    /* no verdict; the likelihood always favours " A" */
} mock_mode_t;

typedef struct mock {
  mock_mode_t mode;
  char *seen[32]; /* prompts given to generate, in order */
  size_t n_seen;
  size_t n_loglik;
  size_t stop_after;      /* report a stop once this many prompts were generated (0: never) */
  bool table;             /* score an answer as a reply by reply_sum (else GOOD -4, anything else -12) */
  double reply_sum[2][2]; /* [0 when GOOD is shown first, 1 when second][0 GOOD, 1 the other]: sums of 4 tokens */
} mock_t;

/* Whether GOOD is the answer shown first in a critique query (or a context that starts with one). */
static bool good_first(const char *text) {
  const char *a = strstr(text, "Answer A:\n");
  cr_assert_not_null(a, "not a critique query: %s", text);
  return strncmp(a + 10, GOOD, strlen(GOOD)) == 0;
}

static lt_status_t mock_generate(void *ctx, const char *const *prompts, size_t n, char **outs, lt_err_t *err) {
  (void)err;
  mock_t *m = ctx;
  for (size_t i = 0; i < n; i++) {
    cr_assert_lt(m->n_seen, 32);
    m->seen[m->n_seen++] = strdup(prompts[i]);
    const char *out = OWN;
    if (strstr(prompts[i], "Answer A:\n")) {
      bool first = good_first(prompts[i]);
      out = m->mode == M_NAME_GOOD  ? (first ? "A is kinder.\nVerdict: Answer A" : "B is kinder.\nVerdict: Answer B")
            : m->mode == M_ALWAYS_A ? "Both are fine.\nVerdict: A"
                                    : "Both answers have merit.";
    }
    outs[i] = strdup(out);
  }
  return LT_OK;
}

/* " A" / " B" after a verdict suffix: per mode. An answer as a reply: GOOD -1 per token, anything else -3
 * (4 tokens each), so the margin is exactly 2; or, with table, reply_sum / 4 by order and answer. */
static lt_status_t mock_loglik(void *ctx, const char *context, const char *cont, double *sum, size_t *n,
                               lt_err_t *err) {
  (void)err;
  mock_t *m = ctx;
  m->n_loglik++;
  if (!strcmp(cont, " A") || !strcmp(cont, " B")) {
    cr_assert(strstr(context, FB_VERDICT_SUFFIX), "the verdict is scored after the suffix");
    bool want_a = m->mode == M_SILENT_A || good_first(context);
    *sum = (cont[1] == 'A') == want_a ? -0.5 : -2.0;
    *n = 1;
    return LT_OK;
  }
  cr_assert(strstr(context, FB_REWRITE_REQUEST), "answers are scored as the reply to the rewrite request");
  *n = 4;
  if (m->table)
    *sum = m->reply_sum[!good_first(context)][strcmp(cont, GOOD) != 0];
  else
    *sum = !strcmp(cont, GOOD) ? -4.0 : -12.0;
  return LT_OK;
}

static bool mock_stopped(void *ctx) {
  return ((mock_t *)ctx)->stop_after && ((mock_t *)ctx)->n_seen >= ((mock_t *)ctx)->stop_after;
}

static void judge(mock_t *m, const chat_tmpl_t *t, fb_decide_t decide, const fb_item_t *items, size_t n,
                  fb_result_t *res) {
  fb_annotator_t an = {m, mock_generate, mock_loglik, mock_stopped};
  fb_opts_t o = {.principle = "kindness", .decide = decide};
  lt_err_t err = {0};
  cr_assert_eq(fb_judge(&an, t, &o, items, n, res, &err), LT_OK, "%s", err.msg);
}

static void mock_free(mock_t *m) {
  for (size_t i = 0; i < m->n_seen; i++) free(m->seen[i]);
}

/* Replaces every `from` in s by `to` (new string). */
static char *subst(const char *s, const char *from, const char *to) {
  size_t n = 0, lf = strlen(from), lt = strlen(to);
  for (const char *p = s; (p = strstr(p, from)); p += lf) n++;
  char *out = malloc(strlen(s) + n * lt + 1), *o = out;
  for (const char *p = s, *q;; p = q + lf) {
    q = strstr(p, from);
    size_t k = q ? (size_t)(q - p) : strlen(p);
    memcpy(o, p, k);
    o += k;
    if (!q) break;
    memcpy(o, to, lt);
    o += lt;
  }
  *o = '\0';
  return out;
}

static void check_swap(const char *tmpl_src) {
  lt_err_t err = {0};
  chat_tmpl_t *t = chat_tmpl_new(tmpl_src, "<s>", "</s>", &err);
  cr_assert_not_null(t, "%s", err.msg);
  mock_t m = {.mode = M_NAME_GOOD};
  fb_item_t it = {"What should I say?", GOOD, BAD};
  fb_result_t r;
  judge(&m, t, FB_DECIDE_TEXT_THEN_LOGLIK, &it, 1, &r);
  /* The generate calls saw: the own-answer query, then the two critique queries in order. */
  cr_assert_eq(m.n_seen, 3);
  cr_assert_str_eq(m.seen[1], r.order[0].prompt);
  cr_assert_str_eq(m.seen[2], r.order[1].prompt);
  cr_assert(strstr(r.order[0].prompt, "Answer A:\n" GOOD "\n\nAnswer B:\n" BAD "\n\n"), "%s", r.order[0].prompt);
  cr_assert(strstr(r.order[1].prompt, "Answer A:\n" BAD "\n\nAnswer B:\n" GOOD "\n\n"), "%s", r.order[1].prompt);
  /* Exactly a swap: exchanging the two texts in the first query gives the second, byte for byte. */
  char *tmp = subst(r.order[0].prompt, GOOD, "\x01"), *tmp2 = subst(tmp, BAD, GOOD),
       *swapped = subst(tmp2, "\x01", BAD);
  cr_assert_str_eq(swapped, r.order[1].prompt);
  free(tmp), free(tmp2), free(swapped);
  /* Same conversation: the prompt and the annotator's own answer come first, under the principle. */
  cr_assert(strstr(r.order[1].prompt, "What should I say?") < strstr(r.order[1].prompt, OWN));
  cr_assert(strstr(r.order[1].prompt, "judging by this principle: kindness."));
  cr_assert_str_eq(r.own, OWN);
  fb_result_free(&r);
  mock_free(&m);
  chat_tmpl_destroy(&t);
}

Test(feedback, position_swap_really_swaps) {
  check_swap(CHAT_PLAIN_TEMPLATE);
  check_swap("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}");
}

Test(feedback, agreeing_orders_keep_the_label_with_its_margin) {
  lt_err_t err = {0};
  chat_tmpl_t *t = chat_tmpl_new(CHAT_PLAIN_TEMPLATE, NULL, NULL, &err);
  mock_t m = {.mode = M_NAME_GOOD};
  fb_item_t items[2] = {{"p1", GOOD, BAD}, {"p2", BAD, GOOD}};
  fb_result_t r[2];
  judge(&m, t, FB_DECIDE_TEXT_THEN_LOGLIK, items, 2, r);
  cr_assert(r[0].consistent && r[1].consistent);
  cr_assert_eq(r[0].chosen, 0, "a is GOOD");
  cr_assert_eq(r[1].chosen, 1, "b is GOOD");
  for (int i = 0; i < 2; i++) {
    cr_assert(r[i].order[0].by_text && r[i].order[1].by_text);
    cr_assert(isnan(r[i].order[0].ll[0]), "the text decided: no likelihood needed");
    /* mean log-likelihood of GOOD is -1, of BAD -3: margin 2 in both orders */
    cr_assert_float_eq(r[i].strength, 2.0, 1e-12);
    /* the lean agrees with the label here, by the same margin */
    cr_assert_eq(r[i].lean, r[i].chosen);
    cr_assert_float_eq(r[i].lean_margin, 2.0, 1e-12);
  }
  cr_assert_float_eq(r[0].order[1].mean[0], -1.0, 1e-12);
  cr_assert_float_eq(r[0].order[1].mean[1], -3.0, 1e-12);
  fb_result_free(&r[0]), fb_result_free(&r[1]);
  mock_free(&m);
  chat_tmpl_destroy(&t);
}

Test(feedback, inconsistent_pairs_are_flagged) {
  lt_err_t err = {0};
  chat_tmpl_t *t = chat_tmpl_new(CHAT_PLAIN_TEMPLATE, NULL, NULL, &err);
  fb_item_t it = {"p", GOOD, BAD};
  fb_result_t r;
  /* The critique always says A: order one picks a, order two picks b. The rewrite likelihoods (a is GOOD):
   * A first (GOOD first): a -4/4 = -1.0, b -6/4 = -1.5; B first (GOOD second): a -10/4 = -2.5, b -2/4 = -0.5.
   * Means over the orders: a (-1.0 - 2.5) / 2 = -1.75, b (-1.5 - 0.5) / 2 = -1.0: the lean is b, by 0.75,
   * although the first order alone favours a. */
  mock_t m = {.mode = M_ALWAYS_A, .table = true, .reply_sum = {{-4.0, -6.0}, {-10.0, -2.0}}};
  judge(&m, t, FB_DECIDE_TEXT_THEN_LOGLIK, &it, 1, &r);
  cr_assert_not(r.consistent);
  cr_assert_eq(r.chosen, -1);
  cr_assert_eq(r.strength, 0.0, "no strength for an unlabelled pair");
  cr_assert_eq(r.order[0].said, 0);
  cr_assert_eq(r.order[1].said, 0);
  /* the likelihoods are computed all the same, for answers a and b in each order */
  cr_assert_float_eq(r.order[0].mean[0], -1.0, 1e-12);
  cr_assert_float_eq(r.order[0].mean[1], -1.5, 1e-12);
  cr_assert_float_eq(r.order[1].mean[0], -2.5, 1e-12);
  cr_assert_float_eq(r.order[1].mean[1], -0.5, 1e-12);
  cr_assert_eq(r.lean, 1, "b has the higher mean over the orders");
  cr_assert_float_eq(r.lean_margin, 0.75, 1e-12);
  fb_result_free(&r);
  mock_free(&m);
  /* A tie over the orders picks a, even where a is the worse text and each order alone leans: a = BAD, b = GOOD;
   * A first (BAD first): a -1, b -2; B first (GOOD first): a -2, b -1; both means -1.5. */
  fb_item_t tie = {"p", BAD, GOOD};
  m = (mock_t){.mode = M_ALWAYS_A, .table = true, .reply_sum = {{-4.0, -8.0}, {-8.0, -4.0}}};
  judge(&m, t, FB_DECIDE_TEXT_THEN_LOGLIK, &tie, 1, &r);
  cr_assert_not(r.consistent);
  cr_assert_float_eq(r.order[0].mean[0], -1.0, 1e-12);
  cr_assert_float_eq(r.order[0].mean[1], -2.0, 1e-12);
  cr_assert_float_eq(r.order[1].mean[0], -2.0, 1e-12);
  cr_assert_float_eq(r.order[1].mean[1], -1.0, 1e-12);
  cr_assert_eq(r.lean, 0, "a tie picks a");
  cr_assert_eq(r.lean_margin, 0.0);
  fb_result_free(&r);
  mock_free(&m);
  /* No verdict written, and the likelihood always prefers " A": inconsistent too, decided by likelihood. */
  m = (mock_t){.mode = M_SILENT_A};
  judge(&m, t, FB_DECIDE_TEXT_THEN_LOGLIK, &it, 1, &r);
  cr_assert_not(r.consistent);
  cr_assert_not(r.order[0].by_text);
  cr_assert_eq(r.order[0].said, -1);
  cr_assert_float_eq(r.order[0].ll[0], -0.5, 1e-12);
  fb_result_free(&r);
  mock_free(&m);
  chat_tmpl_destroy(&t);
}

Test(feedback, likelihood_decides_when_the_critique_names_nothing) {
  lt_err_t err = {0};
  chat_tmpl_t *t = chat_tmpl_new(CHAT_PLAIN_TEMPLATE, NULL, NULL, &err);
  fb_item_t it = {"p", BAD, GOOD};
  fb_result_t r;
  mock_t m = {.mode = M_SILENT_GOOD};
  judge(&m, t, FB_DECIDE_TEXT_THEN_LOGLIK, &it, 1, &r);
  cr_assert(r.consistent);
  cr_assert_eq(r.chosen, 1);
  cr_assert_eq(r.order[0].pick, 1, "GOOD is shown second in the first order");
  cr_assert_eq(r.order[1].pick, 0);
  fb_result_free(&r);
  mock_free(&m);
  /* With FB_DECIDE_LOGLIK the written verdict is ignored: position-biased text, likelihood consistent. */
  m = (mock_t){.mode = M_ALWAYS_A};
  judge(&m, t, FB_DECIDE_LOGLIK, &it, 1, &r);
  cr_assert_not(r.order[0].by_text);
  cr_assert_eq(r.order[0].said, 0, "the verdict is still read and reported");
  fb_result_free(&r);
  mock_free(&m);
  chat_tmpl_destroy(&t);
}

Test(feedback, verdict_parsing) {
  cr_assert_eq(fb_parse_verdict("Verdict: Answer A"), 0);
  cr_assert_eq(fb_parse_verdict("blah\nverdict: answer B."), 1);
  cr_assert_eq(fb_parse_verdict("Verdict: B"), 1);
  cr_assert_eq(fb_parse_verdict("**Verdict:** Answer A"), 0, "markdown emphasis is skipped");
  cr_assert_eq(fb_parse_verdict("Verdict: \"Answer B\""), 1);
  cr_assert_eq(fb_parse_verdict("Verdict: Answer A\nOn reflection, Verdict: Answer B"), 1, "the last verdict counts");
  cr_assert_eq(fb_parse_verdict("Verdict: Answers are equal"), -1);
  cr_assert_eq(fb_parse_verdict("Verdict: Both"), -1);
  cr_assert_eq(fb_parse_verdict("Answer A is better"), -1, "no verdict line");
  cr_assert_eq(fb_parse_verdict("Verdict: AB"), -1);
}

Test(feedback, a_stopped_annotator_ends_the_work_early) {
  lt_err_t err = {0};
  chat_tmpl_t *t = chat_tmpl_new(CHAT_PLAIN_TEMPLATE, NULL, NULL, &err);
  fb_item_t items[2] = {{"p1", GOOD, BAD}, {"p2", BAD, GOOD}};
  fb_result_t r[2];
  mock_t m = {.mode = M_SILENT_GOOD, .stop_after = 2}; /* stopped during the own answers */
  judge(&m, t, FB_DECIDE_TEXT_THEN_LOGLIK, items, 2, r);
  cr_assert_eq(m.n_seen, 2, "no critique is asked for after the stop");
  cr_assert_eq(m.n_loglik, 0, "nothing is scored after the stop");
  cr_assert_null(r[0].order[0].critique);
  fb_result_free(&r[0]), fb_result_free(&r[1]);
  mock_free(&m);
  chat_tmpl_destroy(&t);
}
