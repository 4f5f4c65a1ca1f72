/* Text in, text out on a real (tiny, random) model: prompts and scored contexts are cut to the window as
 * documented, and the results are those of the engine's own generate and score on the cut tokens. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "methods/lm.h"
#include "engine/model/model_tok.h"
#include "support/tgpu.h"

#define TINY LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny"

TestSuite(lm, .init = tgpu_setup, .fini = tgpu_teardown, .timeout = 60);

static model_t *m;
static tok_t *tok;

static void open_tiny(lm_t *lm) {
  lt_err_t err = {0};
  m = model_load(tgpu(), TINY, NULL, &err);
  cr_assert_not_null(m, "%s", err.msg);
  tok = model_tokenizer_open(TINY, &err);
  cr_assert_not_null(tok, "%s", err.msg);
  *lm = (lm_t){.model = m, .tok = tok, .encode_flags = TOK_ADD_BOS, .gen = {.max_tokens = 8}};
}

static void close_tiny(void) {
  model_destroy(&m);
  tok_destroy(&tok);
}

/* n printable characters cycling through the alphabet (the fixture tokenizer has one token per byte). */
static char *letters(size_t n, char first) {
  char *s = malloc(n + 1);
  for (size_t i = 0; i < n; i++) s[i] = (char)('a' + (first - 'a' + i) % 26);
  s[n] = '\0';
  return s;
}

Test(lm, long_prompts_keep_bos_and_their_end) {
  lm_t lm;
  open_tiny(&lm);
  cr_assert_eq(lm_window(&lm), 256);
  lm.gen.max_tokens = 1000;
  cr_assert_eq(lm_max_new(&lm), 128, "a generation asks for half the window at most");
  lm.gen.max_tokens = 8;
  lm.gen.ignore_eos = true;
  char *p = letters(300, 'a');
  const char *prompts[1] = {p};
  char *out[1];
  lt_err_t err = {0};
  cr_assert_eq(lm_generate(&lm, prompts, 1, out, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(lm.n_truncated, 1);
  cr_assert_eq(lm.gen.seed, 1, "the seed moves on by the number of prompts");
  /* The same by hand: BOS and the last 247 characters, then 8 tokens. */
  int32_t *ids = NULL;
  size_t n = 0;
  cr_assert_eq(tok_encode(tok, p, 300, TOK_ADD_BOS, &ids, &n, &err), LT_OK);
  cr_assert_eq(n, 301);
  memmove(ids + 1, ids + 301 - 247, 247 * sizeof *ids);
  uint32_t len = 248;
  const int32_t *pp[1] = {ids};
  gen_opts_t o = {.max_tokens = 8, .ignore_eos = true};
  gen_result_t r[1];
  cr_assert_eq(model_generate(m, pp, &len, 1, &o, NULL, NULL, NULL, r, &err), LT_OK, "%s", err.msg);
  char *want = NULL;
  size_t wn;
  cr_assert_eq(tok_decode(tok, r[0].tokens, r[0].n_tokens, TOK_SKIP_SPECIAL | TOK_KEEP_LEADING, &want, &wn, &err),
               LT_OK);
  cr_assert_str_eq(out[0], want);
  /* A stop string cuts the text before it. */
  cr_assert_geq(wn, 3, "%s", want);
  {
    char stop[2] = {want[2], 0};
    const char *stops[] = {stop, NULL};
    lm.stops = stops;
    lm.gen.seed = 0;
    char *cut[1];
    cr_assert_eq(lm_generate(&lm, prompts, 1, cut, &err), LT_OK);
    cr_assert_eq(strlen(cut[0]), (size_t)(strchr(want, want[2]) - want));
    free(cut[0]);
  }
  free(want), free(r[0].tokens), free(ids), free(out[0]), free(p);
  close_tiny();
}

/* Sum of log p over ids[from..n) by model_score. */
static double score(const int32_t *ids, size_t n, size_t from) {
  float *lp = malloc(n * sizeof *lp);
  lt_err_t err = {0};
  cr_assert_eq(model_score(m, ids, (uint32_t)n, lp, &err), LT_OK, "%s", err.msg);
  double s = 0;
  for (size_t i = from; i < n; i++) s += lp[i];
  free(lp);
  return s;
}

Test(lm, scored_continuations_fit_the_window) {
  lm_t lm;
  open_tiny(&lm);
  lt_err_t err = {0};
  double sum;
  size_t n;
  /* Short: context and continuation as they are. */
  cr_assert_eq(lm_loglik(&lm, "In the beginning", " was the word", &sum, &n, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(n, 13);
  int32_t *a = NULL, *b = NULL;
  size_t na, nb;
  tok_encode(tok, "In the beginning", 16, TOK_ADD_BOS, &a, &na, &err);
  tok_encode(tok, " was the word", 13, 0, &b, &nb, &err);
  int32_t all[256];
  memcpy(all, a, na * sizeof *a);
  memcpy(all + na, b, nb * sizeof *b);
  /* The same computation on the same tokens: equal up to float summation order in the two loops. */
  cr_assert_float_eq(sum, score(all, na + nb, na), 1e-9);
  cr_assert_eq(lm.n_truncated, 0);
  free(a), free(b);
  /* Long: 300 + 250 tokens in a window of 256: the first 192 of the continuation, BOS and the last 63 of the
   * context. */
  char *ctx = letters(300, 'a'), *cont = letters(250, 'k');
  cr_assert_eq(lm_loglik(&lm, ctx, cont, &sum, &n, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(n, 192);
  cr_assert_eq(lm.n_truncated, 1);
  tok_encode(tok, ctx, 300, TOK_ADD_BOS, &a, &na, &err);
  tok_encode(tok, cont, 250, 0, &b, &nb, &err);
  all[0] = a[0];
  memcpy(all + 1, a + na - 63, 63 * sizeof *a);
  memcpy(all + 64, b, 192 * sizeof *b);
  cr_assert_float_eq(sum, score(all, 256, 64), 1e-9);
  free(a), free(b), free(ctx), free(cont);
  /* An empty context without BOS has nothing to condition on. */
  lm.encode_flags = 0;
  cr_assert_eq(lm_loglik(&lm, "", "x", &sum, &n, &err), LT_E_INVALID);
  close_tiny();
}
