/* Direct preference optimisation (train_grad_pairs with TRAIN_LOSS_DPO): the loss and every gradient of a policy
 * trained in full against PyTorch's float64 autograd (tools/dpo_ref.py writes tests/fixtures/dpo/), with and
 * without pair weights; a policy equal to its reference gives exactly log 2 per pair; a few AdamW steps raise the
 * margin. Tolerances as in test_train.c: the pair losses (~0.7-1.8) come from sums of 8 f32 cross-entropies each. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model.h"
#include "engine/model/train.h"
#include "methods/tune.h"
#include "support/tgpu.h"
#include "support/ttrain.h"

#define FIXTURES LATHE_SOURCE_DIR "/tests/fixtures"

TestSuite(dpo, .init = tgpu_setup, .fini = tgpu_teardown);

typedef struct pref {
  json_t *j;
  int32_t ids[64];
  uint8_t mask[64];
  uint32_t n_seq, T;
} pref_t;

static void pref_load(pref_t *d) {
  d->j = ttrain_batch_load(FIXTURES "/dpo/dpo_ref.json", d->ids, d->mask, 64, &d->n_seq, &d->T);
}

/* The fixture's policy (trained in full, f32) and its frozen reference, as models and training states. */
static void fixture_models(const pref_t *d, model_t **pm, model_t **rm, train_t **p, train_t **r) {
  *pm = ttrain_load(json_string_value(json_object_get(d->j, "policy")), true);
  *rm = ttrain_load(json_string_value(json_object_get(d->j, "reference")), false);
  lt_err_t err = {0};
  train_opts_t po = {.what = TRAIN_FULL}, ro = {.what = TRAIN_FROZEN};
  *p = train_new(*pm, &po, &err), *r = train_new(*rm, &ro, &err);
  cr_assert(*p && *r, "%s", err.msg);
}

/* Checks p's gradients against case c's PyTorch file, then frees the states, the models and the fixture. */
static void check_grads_and_free(pref_t *d, const json_t *c, train_t *p, train_t *r, model_t *pm, model_t *rm) {
  char path[512];
  snprintf(path, sizeof path, FIXTURES "/dpo/%s", json_string_value(json_object_get(c, "grads_file")));
  ttrain_check_grads(p, path);
  train_destroy(&p), train_destroy(&r);
  model_destroy(&pm), model_destroy(&rm);
  json_decref(d->j);
}

static void check_case(size_t k) {
  pref_t d;
  pref_load(&d);
  json_t *c = json_array_get(json_object_get(d.j, "cases"), k);
  model_t *pm, *rm;
  train_t *p, *r;
  fixture_models(&d, &pm, &rm, &p, &r);
  lt_err_t err = {0};
  train_distill_t dist = {
      .kind = TRAIN_LOSS_DPO, .teacher = r, .beta = (float)json_number_value(json_object_get(c, "beta"))};
  cr_assert_eq(train_set_distill(p, &dist, &err), LT_OK, "%s", err.msg);
  json_t *wj = json_object_get(c, "weights");
  float w[2] = {1, 1};
  for (size_t i = 0; json_is_array(wj) && i < 2; i++) w[i] = (float)json_number_value(json_array_get(wj, i));
  double loss = 0;
  cr_assert_eq(
      train_grad_pairs(p, d.ids, d.mask, json_is_array(wj) ? w : NULL, NULL, d.n_seq / 2, d.T, 1.0f, &loss, &err),
      LT_OK, "%s", err.msg);
  double want = json_number_value(json_object_get(c, "value"));
  cr_assert(fabs(loss - want) < 1e-4, "loss %.7f, reference %.7f", loss, want);
  json_t *mj = json_object_get(c, "margins");
  double mean = 0, acc = 0;
  for (size_t i = 0; i < 2; i++) {
    double z = json_number_value(json_array_get(mj, i));
    mean += z / 2, acc += (z > 0) / 2.0;
  }
  cr_assert(fabs(train_stats(p)->dpo_margin - mean) < 1e-4, "margin %g vs %g", train_stats(p)->dpo_margin, mean);
  cr_assert_eq(train_stats(p)->dpo_accuracy, acc);
  check_grads_and_free(&d, c, p, r, pm, rm);
}

Test(dpo, loss_and_gradients_match_pytorch) { check_case(0); }

/* train_compare's per-sequence log-probabilities and KL against PyTorch; the reference's log-probabilities handed
 * to train_grad_pairs (its forward skipped) give the same loss and gradients. Sums of 8 f32 token terms of a few
 * nats each: 1e-4 relative plus 1e-4. */
Test(dpo, compare_matches_pytorch_and_a_given_reference_gives_the_same_gradient) {
  pref_t d;
  pref_load(&d);
  model_t *pm, *rm;
  train_t *p, *r;
  fixture_models(&d, &pm, &rm, &p, &r);
  lt_err_t err = {0};
  double lp[4], lr[4], kl[4], lp_alone[4];
  cr_assert_eq(train_compare(p, r, d.ids, d.mask, d.n_seq, d.T, lp, lr, kl, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_compare(p, NULL, d.ids, d.mask, d.n_seq, d.T, lp_alone, NULL, NULL, &err), LT_OK, "%s", err.msg);
  const char *keys[3] = {"logp_policy", "logp_reference", "kl"};
  const double *got[3] = {lp, lr, kl};
  for (int k = 0; k < 3; k++)
    for (uint32_t s = 0; s < d.n_seq; s++) {
      double want = json_number_value(json_array_get(json_object_get(d.j, keys[k]), s));
      cr_assert(fabs(got[k][s] - want) < 1e-4 * fabs(want) + 1e-4, "%s[%u] %.7f, PyTorch %.7f", keys[k], s, got[k][s],
                want);
    }
  for (uint32_t s = 0; s < d.n_seq; s++) cr_assert_eq(lp_alone[s], lp[s], "the policy alone gives other sums");
  /* Reference outputs without a reference, and a trained state as the reference, are refused. */
  cr_assert_eq(train_compare(p, NULL, d.ids, d.mask, d.n_seq, d.T, lp, lr, NULL, &err), LT_E_INVALID);
  cr_assert_eq(train_compare(r, p, d.ids, d.mask, d.n_seq, d.T, lp, lr, NULL, &err), LT_E_INVALID);
  json_t *c = json_array_get(json_object_get(d.j, "cases"), 0);
  train_distill_t dist = {
      .kind = TRAIN_LOSS_DPO, .teacher = r, .beta = (float)json_number_value(json_object_get(c, "beta"))};
  cr_assert_eq(train_set_distill(p, &dist, &err), LT_OK, "%s", err.msg);
  double loss = 0;
  cr_assert_eq(train_grad_pairs(p, d.ids, d.mask, NULL, lr, d.n_seq / 2, d.T, 1.0f, &loss, &err), LT_OK, "%s", err.msg);
  double want = json_number_value(json_object_get(c, "value"));
  cr_assert(fabs(loss - want) < 1e-4, "loss %.7f, reference %.7f", loss, want);
  check_grads_and_free(&d, c, p, r, pm, rm);
}
Test(dpo, weighted_pairs_match_pytorch) { check_case(1); }

Test(dpo, a_policy_equal_to_its_reference_gives_log_2_and_learns_the_preference) {
  pref_t d;
  pref_load(&d);
  model_t *pm = ttrain_load("llama-tiny", false), *rm = ttrain_load("llama-tiny", false);
  lt_err_t err = {0};
  train_opts_t po = {.what = TRAIN_LORA, .lora_rank = 4, .lora_alpha = 8, .lora_targets = TRAIN_LORA_Q | TRAIN_LORA_V},
               ro = {.what = TRAIN_FROZEN};
  train_t *p = train_new(pm, &po, &err), *r = train_new(rm, &ro, &err);
  cr_assert(p && r, "%s", err.msg);
  train_distill_t dist = {.kind = TRAIN_LOSS_DPO, .teacher = r, .beta = 0.1f};
  cr_assert_eq(train_set_distill(p, &dist, &err), LT_OK, "%s", err.msg);
  double loss = 0;
  cr_assert_eq(train_grad_pairs(p, d.ids, d.mask, NULL, NULL, d.n_seq / 2, d.T, 1.0f, &loss, &err), LT_OK, "%s",
               err.msg);
  /* LoRA starts at B = 0, so the policy's log-probabilities are the reference's bit for bit: every margin is 0. */
  cr_assert_eq(train_stats(p)->dpo_margin, 0.0);
  cr_assert_eq(loss, log1p(1.0), "loss %.17g, log 2 %.17g", loss, log1p(1.0));
  double lp[4], lr[4], kl[4];
  cr_assert_eq(train_compare(p, r, d.ids, d.mask, d.n_seq, d.T, lp, lr, kl, &err), LT_OK, "%s", err.msg);
  for (uint32_t s = 0; s < d.n_seq; s++) {
    cr_assert_eq(lp[s], lr[s], "sequence %u: %.17g vs %.17g", s, lp[s], lr[s]);
    cr_assert(fabs(kl[s]) < 1e-6, "sequence %u: KL %g to itself", s, kl[s]);
  }
  /* The same with the reference's log-probabilities given (its forward skipped). */
  cr_assert_eq(train_grad_pairs(p, d.ids, d.mask, NULL, lr, d.n_seq / 2, d.T, 1.0f, &loss, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(loss, log1p(1.0), "loss %.17g with the reference given, log 2 %.17g", loss, log1p(1.0));
  tune_opts_t o = {.lr = 2e-2, .steps = 8};
  tuner_t *u = tuner_new(p, &o, &err);
  cr_assert(u, "%s", err.msg);
  tune_batch_t b = {.ids = d.ids, .mask = d.mask, .n_seq = d.n_seq, .T = d.T};
  tune_step_info_t info;
  for (int k = 0; k < 8; k++) cr_assert_eq(tuner_step(u, &b, 1, &info, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_grad_pairs(p, d.ids, d.mask, NULL, NULL, d.n_seq / 2, d.T, 1.0f, &loss, &err), LT_OK, "%s",
               err.msg);
  cr_assert(loss < log1p(1.0) - 0.05, "DPO loss %g after 8 steps", loss);
  cr_assert(train_stats(p)->dpo_margin > 0 && train_stats(p)->dpo_accuracy == 1.0, "margin %g accuracy %g",
            train_stats(p)->dpo_margin, train_stats(p)->dpo_accuracy);
  /* An odd number of sequences is not a set of pairs; beta 0 is refused. */
  cr_assert_eq(train_grad(p, d.ids, d.mask, 3, d.T, 1.0f, &loss, &err), LT_E_INVALID);
  dist.beta = 0;
  cr_assert_eq(train_set_distill(p, &dist, &err), LT_E_INVALID);
  tuner_destroy(&u);
  train_destroy(&p), train_destroy(&r);
  model_destroy(&pm), model_destroy(&rm);
  json_decref(d.j);
}
