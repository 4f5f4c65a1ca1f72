/* Self-reference AI feedback: an annotator model labels which of two answers A and B to a prompt is better.
 * For each item: (1) the annotator answers the prompt itself; (2) in the same conversation it is shown both
 * answers, asked to compare them with its own answer under a principle, critique both and end with a verdict
 * line; (3) the same again with A and B swapped. The label is kept only when both orders pick the same answer.
 *
 * Which answer an order picks: with FB_DECIDE_TEXT_THEN_LOGLIK, the verdict named in the critique (the last
 * "Verdict:" followed by "Answer A"/"Answer B" or a lone A/B; fb_parse_verdict), and when the critique names
 * none, the likelihood; with FB_DECIDE_LOGLIK, always the likelihood: after the critique the annotator's turn
 * continues with FB_VERDICT_SUFFIX, and the more likely of the continuations " A" and " B" wins (a tie picks the
 * answer shown first).
 *
 * Rewrite likelihoods (every item, consistent or not): in each order the conversation goes on with the critique
 * as the annotator's turn and FB_REWRITE_REQUEST as the next user turn, and answers a and b are each scored as
 * the reply: their mean token log-likelihoods.
 *
 * Preference strength (consistent items only; 0 otherwise): the margin of an order is the chosen answer's mean
 * token log-likelihood minus the rejected one's; the strength is the mean of the two orders' margins.
 *
 * Lean (every item): the answer whose mean over the two orders of its mean token log-likelihood is higher (a tie
 * picks a), and the lean margin, that mean for the lean answer minus the other's (>= 0). It gives inconsistent
 * items a label for training that opts into them; for consistent items it may differ from the chosen answer.
 * The exact texts are in docs/data-jobs.md. */
#ifndef LATHE_FEEDBACK_H
#define LATHE_FEEDBACK_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/text/chat.h"
#include "methods/lm.h"
#include "common/status.h"

#define FB_DEFAULT_PRINCIPLE "which answer is best for humanity"
/* The critique request; the %s are, in order, the answer shown as A, the one shown as B and the principle. */
#define FB_CRITIQUE_REQUEST                                                                                            \
  "Here are two answers to my request.\n\nAnswer A:\n%s\n\nAnswer B:\n%s\n\nCompare each of them with your own "       \
  "answer, judging by this principle: %s. Critique both answers, then end with a line \"Verdict: Answer A\" or "       \
  "\"Verdict: Answer B\"."
#define FB_VERDICT_SUFFIX "\nVerdict: Answer"
#define FB_REWRITE_REQUEST "Now repeat the better answer exactly as it was written."

/* The annotator as the procedure sees it: text in, text out. fb_annotator_lm() wraps a model; tests pass a
 * scripted one. */
typedef struct fb_annotator {
  void *ctx;
  /* Continues each of n rendered prompts; outs[i] receive new strings (the caller frees them). */
  lt_status_t (*generate)(void *ctx, const char *const *prompts, size_t n, char **outs, lt_err_t *err);
  /* The summed log-probability of continuation after context, and its number of tokens. */
  lt_status_t (*loglik)(void *ctx, const char *context, const char *continuation, double *sum, size_t *n_tokens,
                        lt_err_t *err);
  /* Whether the annotator was asked to stop (NULL: never); fb_judge then returns at once, results incomplete. */
  bool (*stopped)(void *ctx);
} fb_annotator_t;

/* The annotator backed by lm (lm_generate and lm_loglik). */
fb_annotator_t fb_annotator_lm(lm_t *lm);

typedef enum fb_decide {
  FB_DECIDE_TEXT_THEN_LOGLIK = 0, /* the verdict written in the critique; the likelihood when there is none */
  FB_DECIDE_LOGLIK,               /* always the likelihood of " A" vs " B" after FB_VERDICT_SUFFIX */
} fb_decide_t;

typedef struct fb_opts {
  const char *principle; /* NULL: FB_DEFAULT_PRINCIPLE */
  fb_decide_t decide;
} fb_opts_t;

/* One item to label. */
typedef struct fb_item {
  const char *prompt, *a, *b;
} fb_item_t;

/* One order's judgement; [0] shows A first, [1] shows B first. Strings are owned by the result. */
typedef struct fb_vote {
  char *prompt;   /* the rendered critique query */
  char *critique; /* what the annotator wrote */
  int said;       /* the verdict named in the critique: 0 the answer shown first, 1 the second, -1 none */
  double ll[2];   /* log-likelihoods of " A" and " B" after the critique (NaN when not computed) */
  int pick;       /* the decision: 0 the answer shown first, 1 the second */
  bool by_text;   /* decided by the critique's text (else by likelihood) */
  double mean[2]; /* mean token log-likelihoods of answers a and b as the reply to FB_REWRITE_REQUEST after the
                     critique; computed for every item (NaN only when the work stopped before it) */
} fb_vote_t;

typedef struct fb_result {
  char *own_prompt; /* the rendered first query */
  char *own;        /* the annotator's own answer */
  fb_vote_t order[2];
  bool consistent;    /* both orders picked the same answer */
  int chosen;         /* 0: a, 1: b, -1: no label (inconsistent) */
  double strength;    /* the margin described above; 0 when inconsistent */
  int lean;           /* 0: a, 1: b, the answer with the higher mean over orders of mean[] (a tie picks a) */
  double lean_margin; /* that mean for the lean answer minus the other's; >= 0 */
} fb_result_t;

/* Labels items[n] with annotator an, rendering every query with t; res[n] are filled (release each with
 * fb_result_free, also after a failure or a stop). */
lt_status_t fb_judge(const fb_annotator_t *an, const chat_tmpl_t *t, const fb_opts_t *o, const fb_item_t *items,
                     size_t n, fb_result_t *res, lt_err_t *err);

/* Frees the strings of r and zeroes it; NULL-safe. */
void fb_result_free(fb_result_t *r);

/* The verdict written in a critique: after the last "Verdict:" (any case), optional spaces and an optional
 * "Answer " (any case), the letter A (0) or B (1) not followed by a letter or digit; -1 when there is none. */
int fb_parse_verdict(const char *text);

#endif
