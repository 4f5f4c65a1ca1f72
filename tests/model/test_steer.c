/* Steering (methods/steer.h): the statistics against hand-computed values, word pooling on two real tokenizers,
 * and the steered forward paths against CPU references built here from the plain forward pass and its hooks:
 * activation addition at alpha 0, ROSE's combined logits, CogSteer's contrastive intervention, mean-difference
 * steering vectors and teacher-forced scoring. */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model/generate.h"
#include "engine/model/model.h"
#include "engine/model/model_tok.h"
#include "methods/steer.h"
#include "support/tgpu.h"

#define STORIES LATHE_SOURCE_DIR "/tests/fixtures/stories260K/hf"
#define TINY LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny"

/* The statistics tests need no GPU; the others open it per test. */
TestSuite(steer);
#define GPU .init = tgpu_setup, .fini = tgpu_teardown

/* ---- statistics: hand-computed values (exact rationals or closed forms; 1e-12 is double rounding) ---- */

Test(steer, pearson_spearman_kendall_without_ties) {
  /* x = 1..5, y = (3, 4, 1, 2, 5): sxy = 2, sxx = syy = 10 so r = 0.2; the values are their own ranks, so
   * Spearman is 0.2 too; 6 concordant and 4 discordant pairs of 10 give tau = 0.2. */
  double x[] = {1, 2, 3, 4, 5}, y[] = {3, 4, 1, 2, 5};
  cr_assert_float_eq(steer_pearson(x, y, 5), 0.2, 1e-12);
  cr_assert_float_eq(steer_spearman(x, y, 5), 0.2, 1e-12);
  cr_assert_float_eq(steer_kendall(x, y, 5), 0.2, 1e-12);
  /* x = (1, 2, 3), y = (2, 4, 7): sxy = 5, sxx = 2, syy = 114/9. */
  double a[] = {1, 2, 3}, b[] = {2, 4, 7};
  cr_assert_float_eq(steer_pearson(a, b, 3), 5 / sqrt(2 * 114.0 / 9), 1e-12);
  /* A constant has no correlation. */
  double c[] = {1, 1, 1};
  cr_assert(isnan(steer_pearson(a, c, 3)) && isnan(steer_spearman(a, c, 3)) && isnan(steer_kendall(a, c, 3)));
}

Test(steer, spearman_and_kendall_with_ties) {
  /* x = (1, 2, 2, 3) ranks to (1, 2.5, 2.5, 4); y = (1, 3, 2, 4) to itself: Pearson of the ranks is
   * 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10). Kendall: 5 concordant, 0 discordant, 1 pair tied in x of 6:
   * tau-b = 5 / sqrt(5 * 6). */
  double x[] = {1, 2, 2, 3}, y[] = {1, 3, 2, 4}, r[4];
  steer_ranks(r, x, 4);
  cr_assert(r[0] == 1 && r[1] == 2.5 && r[2] == 2.5 && r[3] == 4, "ranks %g %g %g %g", r[0], r[1], r[2], r[3]);
  cr_assert_float_eq(steer_spearman(x, y, 4), 3 / sqrt(10), 1e-12);
  cr_assert_float_eq(steer_kendall(x, y, 4), 5 / sqrt(30), 1e-12);
  /* Ties on both sides: x = (1, 1, 2, 3), y = (1, 2, 2, 2): 2 concordant, 1 pair tied in x, 3 tied in y:
   * tau-b = 2 / sqrt(5 * 3) (tau-a would be 2 / 6). */
  double u[] = {1, 1, 2, 3}, v[] = {1, 2, 2, 2};
  cr_assert_float_eq(steer_kendall(u, v, 4), 2 / sqrt(15), 1e-12);
}

Test(steer, pca_first_component) {
  /* Four points t * (0.6, 0.8) + s * (-0.8, 0.6) + (10, -5) with (t, s) = (2, 0), (-2, 0), (0, 1), (0, -1): the
   * centred covariance has eigenvalues 2 (along (0.6, 0.8)) and 0.5, so the projections are (2, -2, 0, 0) and
   * the component explains 2 / 2.5 of the variance. The sign makes 0.8 (the largest entry) positive. */
  float x[] = {11.2f, -3.4f, 8.8f, -6.6f, 9.2f, -4.4f, 10.8f, -5.6f};
  double p[4];
  double ex = steer_pca1(p, x, 4, 2);
  /* the inputs are floats: 1e-6 covers their rounding */
  cr_assert_float_eq(ex, 0.8, 1e-6);
  double want[] = {2, -2, 0, 0};
  for (int i = 0; i < 4; i++) cr_assert_float_eq(p[i], want[i], 1e-5, "proj[%d] = %g", i, p[i]);
  /* Identical rows: no component, zero projections. */
  float same[] = {1, 2, 1, 2, 1, 2};
  cr_assert_eq(steer_pca1(p, same, 3, 2), 0.0);
  cr_assert(p[0] == 0 && p[1] == 0 && p[2] == 0);
  /* Deterministic: a second run gives the same bits. */
  double q[4];
  steer_pca1(q, x, 4, 2);
  steer_pca1(p, x, 4, 2);
  cr_assert_arr_eq(p, q, sizeof q);
}

Test(steer, contrast_intervention_by_hand) {
  /* Two heads of two: a = (1, 0 | 0, 1), a_s = (1, 3 | 0, 1). Head 0: delta = (0, 3), s = 4^0.4, a0 = (1, -3s);
   * head 1: delta = 0, unchanged. Renormalised: times sqrt(2 / (1 + 9 s^2 + 1)). */
  double s = pow(4.0, 0.4);
  float a[4] = {1, 0, 0, 1}, as[4] = {1, 3, 0, 1};
  steer_contrast_apply(a, as, 2, 2, 0.4f, false);
  float want[4] = {1, (float)(-3 * s), 0, 1};
  tassert_close(a, want, 4, 0, 1e-6, "without renorm");
  float b[4] = {1, 0, 0, 1};
  steer_contrast_apply(b, as, 2, 2, 0.4f, true);
  double k = sqrt(2 / (2 + 9 * s * s));
  float wantr[4] = {(float)k, (float)(-3 * s * k), 0, (float)k};
  tassert_close(b, wantr, 4, 0, 1e-6, "renormalised");
  float neg[3] = {1, -2, 4}, lg[3] = {0.5f, 1, -1};
  steer_rose_combine(lg, neg, 3, 0.5f);
  float wl[3] = {0, 2, -3};
  tassert_close(lg, wl, 3, 0, 0, "ROSE");
}

/* ---- words ---- */

static tok_t *open_tok(const char *path) {
  lt_err_t err = {0};
  tok_t *t = model_tokenizer_open(path, &err);
  cr_assert(t != NULL, "%s", err.msg);
  return t;
}

static uint32_t words_of(tok_t *t, const char *text, int32_t *word_of, uint32_t cap) {
  lt_err_t err = {0};
  int32_t *ids = NULL;
  size_t n = 0;
  cr_assert_eq(tok_encode(t, text, strlen(text), TOK_ADD_BOS, &ids, &n, &err), LT_OK, "%s", err.msg);
  cr_assert(n <= cap);
  uint32_t nw = steer_words(t, ids, (uint32_t)n, word_of);
  for (size_t i = n; i < cap; i++) word_of[i] = -2;
  free(ids);
  return nw;
}

Test(steer, words_from_sentencepiece_and_byte_level_tokens) {
  /* SentencePiece (stories260K): "Once upon a time" is [BOS, ▁Once, ▁upon, ▁a, ▁time]. */
  tok_t *spm = open_tok(STORIES);
  int32_t w[32];
  cr_assert_eq(words_of(spm, "Once upon a time", w, 32), 4);
  int32_t want[] = {-1, 0, 1, 2, 3};
  cr_assert_arr_eq(w, want, sizeof want);
  tok_destroy(&spm);
  /* Byte-level without merges (fixture): every character is a token and a space is a token of its own, which
   * belongs to no word and starts the next one; punctuation stays in its word. */
  tok_t *bl = open_tok(TINY);
  cr_assert_eq(words_of(bl, "ab  cd,e f", w, 32), 3);
  int32_t want2[] = {-1, 0, 0, -1, -1, 1, 1, 1, 1, -1, 2};
  cr_assert_arr_eq(w, want2, sizeof want2);
  tok_destroy(&bl);
  /* Max-pooling and sums over words. */
  int32_t of[] = {-1, 0, 0, 1};
  float h[] = {9, 9, 1, 5, 3, 2, -1, -7}, pooled[4], v[] = {1, 2, 3, 4};
  steer_pool_max(pooled, h, of, 4, 2, 2);
  float wp[] = {3, 5, -1, -7};
  tassert_close(pooled, wp, 4, 0, 0, "max-pool");
  double sums[2];
  steer_word_sum(sums, v, of, 4, 2);
  cr_assert(sums[0] == 5 && sums[1] == 4);
}

/* ---- the model paths ---- */

static model_t *load(const char *path) {
  lt_err_t err = {0};
  model_t *m = model_load(tgpu(), path, NULL, &err);
  cr_assert(m != NULL, "%s", err.msg);
  return m;
}

static int32_t *encode(tok_t *t, const char *text, uint32_t *n) {
  lt_err_t err = {0};
  int32_t *ids = NULL;
  size_t len = 0;
  cr_assert_eq(tok_encode(t, text, strlen(text), TOK_ADD_BOS, &ids, &len, &err), LT_OK, "%s", err.msg);
  *n = (uint32_t)len;
  return ids;
}

/* Every step's logits as the generator saw them (after any combination), for one prompt. */
typedef struct seen {
  uint32_t vocab, steps;
  float logits[32][512];
} seen_t;

static void record_logits(void *ctx, uint32_t item, uint32_t step, float *logits, const float *second, uint32_t V) {
  seen_t *s = ctx;
  (void)second;
  if (item != 0 || step >= 32) return;
  memcpy(s->logits[step], logits, (uint64_t)V * 4);
  s->vocab = V;
  s->steps = step + 1;
}

Test(steer, alpha_zero_reproduces_unsteered_generation, GPU) {
  /* Sampling (temperature 0.8, top-p 0.95) on stories260K: activation addition with alpha 0 must give the same
   * tokens and bit-identical logits as no steering, for a batch of two prompts. */
  model_t *m = load(STORIES);
  tok_t *tok = open_tok(STORIES);
  lt_err_t err = {0};
  uint32_t d = model_config(m)->hidden_size, n0, n1;
  int32_t *p0 = encode(tok, "Once upon a time", &n0), *p1 = encode(tok, "The cat", &n1);
  const int32_t *prompts[2] = {p0, p1};
  uint32_t lens[2] = {n0, n1};
  float *vec = talloc(d);
  uint64_t seed = 7;
  trand(vec, d, -3, 3, &seed);
  static seen_t a, b;
  gen_opts_t o = {.max_tokens = 24,
                  .sample = {.temperature = 0.8f, .top_p = 0.95f},
                  .seed = 3,
                  .on_logits = record_logits,
                  .logits_ctx = &a};
  gen_result_t plain[2], steered[2];
  cr_assert_eq(steer_generate(m, NULL, prompts, lens, 2, &o, NULL, NULL, plain, &err), LT_OK, "%s", err.msg);
  steer_cfg_t s = {.method = STEER_ADD, .layer = 2, .vec = vec, .alpha = 0.0f};
  o.logits_ctx = &b;
  cr_assert_eq(steer_generate(m, &s, prompts, lens, 2, &o, NULL, NULL, steered, &err), LT_OK, "%s", err.msg);
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(plain[i].n_tokens, steered[i].n_tokens);
    cr_assert_arr_eq(plain[i].tokens, steered[i].tokens, plain[i].n_tokens * sizeof(int32_t), "prompt %d", i);
  }
  cr_assert_eq(a.steps, b.steps);
  cr_assert_arr_eq(a.logits, b.logits, sizeof a.logits, "logits differ");
  /* The same vector at alpha 4 does change the generation (so the comparison above can fail). */
  s.alpha = 4.0f;
  gen_result_t moved[2];
  cr_assert_eq(steer_generate(m, &s, prompts, lens, 2, &o, NULL, NULL, moved, &err), LT_OK, "%s", err.msg);
  cr_assert(moved[0].n_tokens != plain[0].n_tokens ||
                memcmp(moved[0].tokens, plain[0].tokens, plain[0].n_tokens * sizeof(int32_t)) != 0,
            "alpha 4 left the generation unchanged");
  for (int i = 0; i < 2; i++) free(plain[i].tokens), free(steered[i].tokens), free(moved[i].tokens);
  free(vec), free(p0), free(p1);
  tok_destroy(&tok);
  model_destroy(&m);
}

/* One sequence of the references below: its own KV cache, fed one call at a time. */
static void feed(model_t *m, model_seq_t *s, const int32_t *ids, uint32_t n, float *logits, const model_hooks_t *h) {
  lt_err_t err = {0};
  model_item_t it = {
      .seq = s, .tokens = ids, .n_tokens = n, .out = logits ? MODEL_OUT_LAST : MODEL_OUT_NONE, .result = logits};
  cr_assert_eq(model_forward(m, &it, 1, h, &err), LT_OK, "%s", err.msg);
}

Test(steer, rose_logits_equal_the_formula_on_both_sequences, GPU) {
  /* ROSE, greedy, on stories260K, two prompts batched: at every step the logits the token is chosen from equal
   * logits_pos - 0.5 * logits_neg computed here in double from two separate sequences fed one at a time with the
   * same chosen tokens. Both sides are f32 forward passes batched differently: 2e-4 absolute + 1e-4 relative, as
   * for cached decoding against prefill (tests/model/test_forward.c). */
  model_t *m = load(STORIES);
  tok_t *tok = open_tok(STORIES);
  lt_err_t err = {0};
  uint32_t V = model_config(m)->vocab_size, np, nn, np2, nn2;
  int32_t *pos = encode(tok, "Lily was happy. Once upon a time", &np);
  int32_t *neg = encode(tok, "Lily was sad. Once upon a time", &nn);
  int32_t *pos2 = encode(tok, "Tom ran", &np2), *neg2 = encode(tok, "Tom was angry. Tom ran", &nn2);
  const int32_t *prompts[2] = {pos, pos2}, *twins[2] = {neg, neg2};
  uint32_t lens[2] = {np, np2}, tlens[2] = {nn, nn2};
  static seen_t got;
  gen_opts_t o = {.max_tokens = 12, .on_logits = record_logits, .logits_ctx = &got};
  steer_cfg_t s = {.method = STEER_ROSE, .alpha = 0.5f, .twins = twins, .twin_lens = tlens};
  gen_result_t r[2];
  cr_assert_eq(steer_generate(m, &s, prompts, lens, 2, &o, NULL, NULL, r, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(got.steps, r[0].n_tokens + (r[0].stopped_at_eos ? 1 : 0));
  cr_assert(r[0].n_tokens >= 4, "only %u tokens", r[0].n_tokens);
  model_seq_t *sp = model_seq_new(m, 64, &err), *sn = model_seq_new(m, 64, &err);
  float *lp = talloc(V), *ln = talloc(V), *want = talloc(V);
  feed(m, sp, pos, np, lp, NULL);
  feed(m, sn, neg, nn, ln, NULL);
  double differs = 0;
  for (uint32_t t = 0; t < got.steps; t++) {
    for (uint32_t v = 0; v < V; v++) {
      want[v] = (float)((double)lp[v] - 0.5 * (double)ln[v]);
      differs += fabs(want[v] - lp[v]);
    }
    tassert_close(got.logits[t], want, V, 2e-4, 1e-4, "combined logits");
    if (t == r[0].n_tokens) break;
    feed(m, sp, &r[0].tokens[t], 1, lp, NULL);
    feed(m, sn, &r[0].tokens[t], 1, ln, NULL);
  }
  cr_assert(differs > 1.0, "the reverse prompt barely changed the logits (%g)", differs);
  model_seq_destroy(&sp), model_seq_destroy(&sn);
  free(lp), free(ln), free(want), free(pos), free(neg), free(pos2), free(neg2);
  for (int i = 0; i < 2; i++) free(r[i].tokens);
  tok_destroy(&tok);
  model_destroy(&m);
}

/* The reference intervention: capture a_s from the contrastive sequence's last row, then steer the base
 * sequence's last row with the formula written out again here in double. */
typedef struct ref_ctx {
  float a_s[64];
  bool steer;     /* false: capture a_s; true: steer the base row */
  double changed; /* sum of |a' - a| */
} ref_ctx_t;

static bool ref_attn(void *ctx, uint32_t layer, uint32_t item, float *heads, uint32_t n, uint32_t nh, uint32_t hd) {
  ref_ctx_t *c = ctx;
  (void)layer, (void)item;
  float *a = heads + (uint64_t)(n - 1) * nh * hd;
  if (!c->steer) {
    memcpy(c->a_s, a, (uint64_t)nh * hd * 4);
    return false;
  }
  double out[64], na = 0, no = 0;
  for (uint32_t h = 0; h < nh; h++) {
    double dd = 0;
    for (uint32_t j = 0; j < hd; j++) dd += pow((double)c->a_s[h * hd + j] - a[h * hd + j], 2);
    double s = exp(0.4 * log(1 + sqrt(dd)));
    for (uint32_t j = 0; j < hd; j++)
      out[h * hd + j] = a[h * hd + j] - s * ((double)c->a_s[h * hd + j] - a[h * hd + j]);
  }
  for (uint32_t j = 0; j < nh * hd; j++) na += (double)a[j] * a[j], no += out[j] * out[j];
  for (uint32_t j = 0; j < nh * hd; j++) {
    double v = out[j] * sqrt(na / no);
    c->changed += fabs(v - a[j]);
    a[j] = (float)v;
  }
  return true;
}

static void contrast_matches_reference(uint32_t layer) {
  /* The fixture model (2 blocks, 4 heads of 16), greedy, one prompt and its contrastive twin, batched with a
   * second pair. Reference: each sequence alone; the twin's last-row heads captured, the base's last row steered
   * by ref_attn, at the whole-prompt prefill and at every step. f32 passes batched differently on both sides and
   * logits of magnitude ~5: 1e-4 absolute + 1e-4 relative (the fixtures' suggested tolerance). */
  model_t *m = load(TINY);
  tok_t *tok = open_tok(TINY);
  lt_err_t err = {0};
  uint32_t V = model_config(m)->vocab_size, nb, nc, nb2, nc2;
  int32_t *base = encode(tok, "Lathe runs", &nb), *twin = encode(tok, "Stop it. Lathe runs", &nc);
  int32_t *base2 = encode(tok, "ok", &nb2), *twin2 = encode(tok, "no way: ok", &nc2);
  const int32_t *prompts[2] = {base, base2}, *twins[2] = {twin, twin2};
  uint32_t lens[2] = {nb, nb2}, tlens[2] = {nc, nc2};
  static seen_t got;
  memset(&got, 0, sizeof got);
  gen_opts_t o = {.max_tokens = 8, .ignore_eos = true, .on_logits = record_logits, .logits_ctx = &got};
  steer_cfg_t s = {
      .method = STEER_CONTRAST, .layer = layer, .exponent = 0.4f, .renorm = true, .twins = twins, .twin_lens = tlens};
  gen_result_t r[2];
  cr_assert_eq(steer_generate(m, &s, prompts, lens, 2, &o, NULL, NULL, r, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(r[0].n_tokens, 8);
  ref_ctx_t rc = {0};
  model_hooks_t h = {.ctx = &rc, .on_attn = ref_attn, .attn_layer = layer};
  model_seq_t *sb = model_seq_new(m, 64, &err), *sc = model_seq_new(m, 64, &err), *su = model_seq_new(m, 64, &err);
  float *lb = talloc(V), *lu = talloc(V);
  rc.steer = false;
  feed(m, sc, twin, nc, NULL, &h);
  rc.steer = true;
  feed(m, sb, base, nb, lb, &h);
  feed(m, su, base, nb, lu, NULL);
  double moved = 0;
  for (uint32_t t = 0; t < 8; t++) {
    tassert_close(got.logits[t], lb, V, 1e-4, 1e-4, "steered logits");
    for (uint32_t v = 0; v < V; v++) moved += fabs(lb[v] - lu[v]);
    if (t == 7) break;
    rc.steer = false;
    feed(m, sc, &r[0].tokens[t], 1, NULL, &h);
    rc.steer = true;
    feed(m, sb, &r[0].tokens[t], 1, lb, &h);
    feed(m, su, &r[0].tokens[t], 1, lu, NULL);
  }
  /* The intervention did something: the heads changed and the logits moved away from the unsteered ones. */
  cr_assert(rc.changed > 1e-2, "heads changed by only %g", rc.changed);
  cr_assert(moved > 1e-2, "logits moved by only %g", moved);
  model_seq_destroy(&sb), model_seq_destroy(&sc), model_seq_destroy(&su);
  free(lb), free(lu), free(base), free(twin), free(base2), free(twin2);
  for (int i = 0; i < 2; i++) free(r[i].tokens);
  tok_destroy(&tok);
  model_destroy(&m);
}

Test(steer, contrastive_intervention_matches_cpu_reference_layer0, GPU) { contrast_matches_reference(0); }
Test(steer, contrastive_intervention_matches_cpu_reference_layer1, GPU) { contrast_matches_reference(1); }

/* Captures one layer's residual rows of a single-prompt forward pass. */
typedef struct rows {
  float h[64][64];
  uint32_t n;
} rows_t;

static void grab(void *ctx, uint32_t layer, uint32_t item, const float *h, uint32_t n, uint32_t d) {
  rows_t *r = ctx;
  (void)layer, (void)item;
  memcpy(r->h[r->n], h, (uint64_t)n * d * 4);
  r->n += n;
}

Test(steer, steering_vector_is_the_mean_difference, GPU) {
  /* steer_means at layer 2 of stories260K, positions after BOS, against the same means computed here from the
   * residual rows captured by a hook: per prompt the mean over positions, then the mean over prompts, in double.
   * Both sides sum the same f32 rows in double in the same order: 1e-9 relative. Then a save/load round trip. */
  model_t *m = load(STORIES);
  tok_t *tok = open_tok(STORIES);
  lt_err_t err = {0};
  const model_config_t *cf = model_config(m);
  uint32_t d = cf->hidden_size, L = cf->n_layers, layer = 2;
  const char *pos_text[] = {"She was very happy.", "The sun was bright and they laughed.", "Tom smiled."};
  const char *neg_text[] = {"She was very sad.", "The boy cried all day."};
  int32_t *pos[3], *neg[2];
  uint32_t pl[3], nl[2];
  for (int i = 0; i < 3; i++) pos[i] = encode(tok, pos_text[i], &pl[i]);
  for (int i = 0; i < 2; i++) neg[i] = encode(tok, neg_text[i], &nl[i]);
  bool want[8] = {false};
  want[layer] = true;
  double *mp = calloc((L + 1) * d, 8), *mn = calloc((L + 1) * d, 8), normp[8], normn[8];
  uint32_t used = 0;
  cr_assert_eq(steer_means(m, (const int32_t *const *)pos, pl, 3, 1, want, mp, normp, &used, &err), LT_OK, "%s",
               err.msg);
  cr_assert_eq(used, 3);
  cr_assert_eq(steer_means(m, (const int32_t *const *)neg, nl, 2, 1, want, mn, normn, NULL, &err), LT_OK, "%s",
               err.msg);
  double ref[2][64] = {{0}}, norm_sum = 0;
  uint32_t norm_n = 0;
  for (int set = 0; set < 2; set++) {
    int count = set ? 2 : 3;
    for (int p = 0; p < count; p++) {
      static rows_t r;
      r.n = 0;
      bool cap[8] = {false};
      cap[layer] = true;
      model_hooks_t h = {.ctx = &r, .capture_resid = cap, .on_resid = grab};
      model_seq_t *s = model_seq_new(m, 64, &err);
      feed(m, s, set ? neg[p] : pos[p], set ? nl[p] : pl[p], NULL, &h);
      model_seq_destroy(&s);
      for (uint32_t j = 0; j < d; j++) {
        double acc = 0;
        for (uint32_t t = 1; t < r.n; t++) acc += r.h[t][j];
        ref[set][j] += acc / (r.n - 1) / count;
      }
      if (set == 0)
        for (uint32_t t = 1; t < r.n; t++, norm_n++) {
          double nn = 0;
          for (uint32_t j = 0; j < d; j++) nn += (double)r.h[t][j] * r.h[t][j];
          norm_sum += sqrt(nn);
        }
    }
  }
  float *v = talloc(d), *want_v = talloc(d);
  for (uint32_t j = 0; j < d; j++) {
    v[j] = (float)(mp[layer * d + j] - mn[layer * d + j]);
    want_v[j] = (float)(ref[0][j] - ref[1][j]);
  }
  tassert_close(v, want_v, d, 1e-9, 1e-6, "mean difference");
  cr_assert_float_eq(normp[layer], norm_sum / norm_n, 1e-9 * normp[layer]);
  double vn = 0;
  for (uint32_t j = 0; j < d; j++) vn += (double)v[j] * v[j];
  cr_assert(vn > 0.1, "the two sets gave nearly the same mean (|v|^2 = %g)", vn);
  char path[] = "/tmp/lathe-steer-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  close(fd);
  cr_assert_eq(steer_vector_save(path, v, d, layer, STORIES, 3, 2, &err), LT_OK, "%s", err.msg);
  float *back = NULL;
  uint32_t bl = 0;
  char model[PATH_MAX];
  cr_assert_eq(steer_vector_load(path, d, &back, &bl, model, sizeof model, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(bl, layer);
  cr_assert_str_eq(model, STORIES);
  cr_assert_arr_eq(back, v, d * 4);
  free(back);
  cr_assert_eq(steer_vector_load(path, d + 1, &back, &bl, model, sizeof model, &err), LT_E_INVALID);
  cr_assert_null(back);
  unlink(path);
  free(back), free(v), free(want_v), free(mp), free(mn);
  for (int i = 0; i < 3; i++) free(pos[i]);
  for (int i = 0; i < 2; i++) free(neg[i]);
  tok_destroy(&tok);
  model_destroy(&m);
}

Test(steer, forced_scoring_matches_model_score, GPU) {
  /* Unsteered teacher-forced log-probabilities equal model_score's on the concatenated tokens (log-softmax over
   * 512 logits of cached decoding vs one prefill: 2e-4 absolute, as the logits themselves). */
  model_t *m = load(STORIES);
  lt_err_t err = {0};
  static const int32_t all[] = {1, 403, 407, 261, 378, 275, 302, 261, 361, 401, 408, 384};
  const uint32_t np = 5, nc = 7;
  float want[12], got[7];
  cr_assert_eq(model_score(m, all, 12, want, &err), LT_OK, "%s", err.msg);
  const int32_t *prompts[1] = {all}, *conts[1] = {all + np};
  uint32_t lens[1] = {np}, clens[1] = {nc};
  float *lp[1] = {got};
  cr_assert_eq(steer_score(m, NULL, prompts, lens, conts, clens, 1, lp, &err), LT_OK, "%s", err.msg);
  tassert_close(got, want + np, nc, 2e-4, 0, "log-probabilities");
  model_destroy(&m);
}
