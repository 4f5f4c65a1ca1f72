/* Distillation (train_set_distill, methods/distill.h): KD and ATKD gradients of a student trained in full against
 * PyTorch's float64 autograd (tools/distill_ref.py writes tests/fixtures/distill/), with teachers of another
 * architecture and dtype run forward only; the teacher untouched and without gradients; ATKD's easy / hard split by
 * hand; KID's masking (exact share, seeded) and rewriting.
 *
 * Tolerances: as in test_train.c (1e-4 absolute + 1e-3 relative on gradients whose largest entries are ~1); the
 * teacher runs in f32 arithmetic over its stored weights (bf16 for llama3-scaled) where the reference runs those
 * same weights in f64. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model.h"
#include "engine/model/train.h"
#include "methods/compress.h"
#include "methods/distill.h"
#include "methods/tune.h"
#include "support/tgpu.h"
#include "support/ttrain.h"

#define FIXTURES LATHE_SOURCE_DIR "/tests/fixtures"

TestSuite(distill, .init = tgpu_setup, .fini = tgpu_teardown);

typedef struct dref {
  json_t *j;
  int32_t ids[64], argmax[64];
  uint8_t mask[64];
  uint32_t n_seq, T;
} dref_t;

static void dref_load(dref_t *d) {
  d->j = ttrain_batch_load(FIXTURES "/distill/distill_ref.json", d->ids, d->mask, 64, &d->n_seq, &d->T);
  ttrain_int_grid(json_object_get(d->j, "student_argmax"), d->n_seq, d->T, d->argmax);
}

static json_t *dref_case(const dref_t *d, const char *name) {
  json_t *cs = json_object_get(d->j, "cases");
  for (size_t i = 0; i < json_array_size(cs); i++)
    if (!strcmp(json_string_value(json_object_get(json_array_get(cs, i), "name")), name)) return json_array_get(cs, i);
  cr_assert_fail("no case %s in distill_ref.json", name);
  return NULL;
}

static double jnum(json_t *c, const char *key) { return json_number_value(json_object_get(c, key)); }

/* One reference case: the student (llama-tiny, full) against its teacher in the teacher's own dtype. */
static void check_case(const char *name) {
  dref_t d;
  dref_load(&d);
  json_t *c = dref_case(&d, name);
  bool atkd = !strcmp(json_string_value(json_object_get(c, "loss")), "atkd");
  model_t *sm = ttrain_load("llama-tiny", true),
          *tm = ttrain_load(json_string_value(json_object_get(c, "teacher")), false);
  lt_err_t err = {0};
  train_opts_t so = {.what = TRAIN_FULL}, to = {.what = TRAIN_FROZEN};
  train_t *s = train_new(sm, &so, &err), *t = train_new(tm, &to, &err);
  cr_assert(s && t, "%s", err.msg);
  train_distill_t dist = {.kind = atkd ? TRAIN_LOSS_ATKD : TRAIN_LOSS_KD,
                          .teacher = t,
                          .temperature = (float)jnum(c, "temperature"),
                          .lambda = (float)jnum(c, "lambda")};
  cr_assert_eq(train_set_distill(s, &dist, &err), LT_OK, "%s", err.msg);
  double loss = 0;
  cr_assert_eq(train_grad(s, d.ids, d.mask, d.n_seq, d.T, 1.0f, &loss, &err), LT_OK, "%s", err.msg);
  const train_stats_t *st = train_stats(s);
  /* Losses of size 1-6 from f32 logits of size ~1: 1e-4 absolute, as for the cross-entropy in test_train.c. */
  cr_assert(fabs(loss - jnum(c, "value")) < 1e-4, "%s: loss %.7f, reference %.7f", name, loss, jnum(c, "value"));
  cr_assert(fabs(st->ce - jnum(c, "student_ce")) < 1e-4, "%s: student ce %.7f vs %.7f", name, st->ce,
            jnum(c, "student_ce"));
  cr_assert(fabs(st->teacher_ce - jnum(c, "teacher_ce")) < 1e-4, "%s: teacher ce %.7f vs %.7f", name, st->teacher_ce,
            jnum(c, "teacher_ce"));
  if (atkd) {
    cr_assert_eq(st->atkd_easy, (uint32_t)jnum(c, "n_easy"), "%s: %u easy tokens", name, st->atkd_easy);
    cr_assert_eq(st->atkd_hard, (uint32_t)jnum(c, "n_hard"), "%s: %u hard tokens", name, st->atkd_hard);
  }
  char p[512];
  snprintf(p, sizeof p, FIXTURES "/distill/%s", json_string_value(json_object_get(c, "grads_file")));
  ttrain_check_grads(s, p);
  train_destroy(&s), train_destroy(&t);
  model_destroy(&sm), model_destroy(&tm);
  json_decref(d.j);
}

Test(distill, kd_gradients_match_pytorch_with_a_mixtral_teacher) { check_case("kd"); }
Test(distill, atkd_gradients_match_pytorch_with_a_bf16_teacher) { check_case("atkd"); }
Test(distill, atkd_at_temperature_2_matches_pytorch) { check_case("atkd-t2"); }

Test(distill, atkd_split_by_hand) {
  /* Even count: u sorted 0.1 0.3 0.5 0.9, median 0.4: tokens 0 and 3 easy; lambda 0.2 over 2 easy and 2 hard. */
  float u[4] = {0.1f, 0.9f, 0.5f, 0.3f}, w[8];
  uint32_t e = 0, h = 0;
  train_atkd_weights(u, 4, 0.2f, 1.0f, w, &e, &h);
  cr_assert(e == 2 && h == 2, "easy %u hard %u", e, h);
  float want[8] = {0, 0.1f, 0.4f, 0.4f, 0.4f, 0.4f, 0, 0.1f};
  for (int i = 0; i < 8; i++) cr_assert(fabsf(w[i] - want[i]) < 1e-7f, "w[%d] %g, want %g", i, w[i], want[i]);
  /* Odd count: the median token itself is hard; a scale (accumulation) multiplies every weight. */
  float u3[3] = {0.7f, 0.2f, 0.4f}, w3[6];
  train_atkd_weights(u3, 3, 0.5f, 0.5f, w3, &e, &h);
  cr_assert(e == 1 && h == 2, "easy %u hard %u", e, h);
  float want3[6] = {0.125f, 0.125f, 0, 0.25f, 0.125f, 0.125f};
  for (int i = 0; i < 6; i++) cr_assert(fabsf(w3[i] - want3[i]) < 1e-7f, "w3[%d] %g, want %g", i, w3[i], want3[i]);
  /* All equal: nothing lies below the median, every token is hard and the easy term drops out. */
  float ue[3] = {0.5f, 0.5f, 0.5f}, we[6];
  train_atkd_weights(ue, 3, 0.2f, 1.0f, we, &e, &h);
  cr_assert(e == 0 && h == 3, "easy %u hard %u", e, h);
  for (int i = 0; i < 6; i++) cr_assert(fabsf(we[i] - 0.8f / 3) < 1e-7f, "we[%d] %g", i, we[i]);
}

Test(distill, the_teacher_is_untouched_and_never_gets_a_gradient) {
  dref_t d;
  dref_load(&d);
  model_t *sm = ttrain_load("llama-tiny", false), *tm = ttrain_load("mixtral-tiny", false);
  lt_err_t err = {0};
  uint32_t np = model_param_count(tm);
  void **before = calloc(np, sizeof *before);
  for (uint32_t i = 0; i < np; i++) {
    const model_param_t *p = model_param_at(tm, i);
    before[i] = tread_bytes(p->buf, gpu_buf_size(p->buf));
  }
  train_opts_t so = {.what = TRAIN_LORA, .lora_rank = 4, .lora_alpha = 8, .lora_targets = TRAIN_LORA_Q | TRAIN_LORA_V},
               to = {.what = TRAIN_FROZEN};
  train_t *s = train_new(sm, &so, &err), *t = train_new(tm, &to, &err);
  cr_assert(s && t, "%s", err.msg);
  train_distill_t dist = {.kind = TRAIN_LOSS_ATKD, .teacher = t, .temperature = 1.0f, .lambda = 0.2f};
  cr_assert_eq(train_set_distill(s, &dist, &err), LT_OK, "%s", err.msg);
  tune_opts_t o = {.lr = 1e-2, .steps = 3};
  tuner_t *u = tuner_new(s, &o, &err);
  cr_assert(u, "%s", err.msg);
  tune_batch_t b = {.ids = d.ids, .mask = d.mask, .n_seq = d.n_seq, .T = d.T};
  tune_step_info_t info[3];
  for (int k = 0; k < 3; k++) cr_assert_eq(tuner_step(u, &b, 1, &info[k], &err), LT_OK, "%s", err.msg);
  cr_assert(info[2].loss < info[0].loss, "ATKD loss %g -> %g does not fall", info[0].loss, info[2].loss);
  dist.kind = TRAIN_LOSS_KD;
  cr_assert_eq(train_set_distill(s, &dist, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(tuner_step(u, &b, 1, &info[0], &err), LT_OK, "%s", err.msg);
  /* The frozen state holds no trainable tensor and not one byte of gradient; a gradient of it is refused. */
  cr_assert_eq(train_tensor_count(t), 0);
  cr_assert_eq(train_stats(t)->gradient_bytes, 0, "%llu gradient bytes",
               (unsigned long long)train_stats(t)->gradient_bytes);
  cr_assert(train_stats(s)->gradient_bytes > 0);
  double l = 0;
  cr_assert_eq(train_grad(t, d.ids, d.mask, d.n_seq, d.T, 1.0f, &l, &err), LT_E_INVALID);
  /* Its weights are bit-identical. */
  for (uint32_t i = 0; i < np; i++) {
    const model_param_t *p = model_param_at(tm, i);
    void *after = tread_bytes(p->buf, gpu_buf_size(p->buf));
    cr_assert(!memcmp(before[i], after, gpu_buf_size(p->buf)), "teacher tensor %s changed", p->name);
    free(after), free(before[i]);
  }
  free(before);
  /* A teacher that is not frozen, or temperature / lambda out of range, is refused. */
  train_distill_t bad = dist;
  bad.teacher = s;
  cr_assert_eq(train_set_distill(s, &bad, &err), LT_E_INVALID);
  bad = dist, bad.temperature = 0;
  cr_assert_eq(train_set_distill(s, &bad, &err), LT_E_INVALID);
  bad = dist, bad.kind = TRAIN_LOSS_ATKD, bad.lambda = 1.5f;
  cr_assert_eq(train_set_distill(s, &bad, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "lambda"), "%s", err.msg);
  tuner_destroy(&u);
  train_destroy(&s), train_destroy(&t);
  model_destroy(&sm), model_destroy(&tm);
  json_decref(d.j);
}

Test(distill, predictions_match_pytorch) {
  dref_t d;
  dref_load(&d);
  model_t *m = ttrain_load("llama-tiny", false);
  lt_err_t err = {0};
  train_opts_t o = {.what = TRAIN_FROZEN};
  train_t *t = train_new(m, &o, &err);
  cr_assert(t, "%s", err.msg);
  int32_t next[64];
  cr_assert_eq(train_predict(t, d.ids, d.n_seq, d.T, next, &err), LT_OK, "%s", err.msg);
  for (uint32_t i = 0; i < d.n_seq * d.T; i++) cr_assert_eq(next[i], d.argmax[i], "position %u", i);
  train_destroy(&t);
  model_destroy(&m);
  json_decref(d.j);
}

Test(distill, kid_masks_exactly_the_share_asked_and_follows_the_seed) {
  enum { NS = 3, T = 41 };
  uint8_t mask[NS * (T - 1)], a[NS * (T - 1)], b[NS * (T - 1)];
  uint32_t count = 0;
  for (uint32_t i = 0; i < NS * (T - 1); i++) mask[i] = (i % 40) >= 7 && i % 11 != 0, count += mask[i];
  double ratios[] = {0.3, 0.05, 0.5, 0.999};
  for (int k = 0; k < 4; k++) {
    uint32_t want = (uint32_t)floor(ratios[k] * count + 0.5);
    uint32_t n = distill_kid_pick(7, 3, 1, mask, NS, T, ratios[k], a);
    cr_assert_eq(n, want, "ratio %g: %u picked of %u, want %u", ratios[k], n, count, want);
    uint32_t got = 0;
    for (uint32_t i = 0; i < NS * (T - 1); i++) {
      cr_assert(!a[i] || mask[i], "position %u picked outside the mask", i);
      got += a[i];
    }
    cr_assert_eq(got, want);
    distill_kid_pick(7, 3, 1, mask, NS, T, ratios[k], b);
    cr_assert(!memcmp(a, b, sizeof a), "same seed, other picks");
  }
  distill_kid_pick(7, 3, 1, mask, NS, T, 0.3, a);
  distill_kid_pick(7, 4, 1, mask, NS, T, 0.3, b);
  cr_assert(memcmp(a, b, sizeof a), "another step picks the same tokens");
  distill_kid_pick(8, 3, 1, mask, NS, T, 0.3, b);
  cr_assert(memcmp(a, b, sizeof a), "another seed picks the same tokens");
  /* Uniform over the counted positions: over many draws each is picked about ratio of the time. */
  uint32_t hits[NS * (T - 1)] = {0};
  for (uint32_t s = 0; s < 2000; s++) {
    distill_kid_pick(s, 0, 0, mask, NS, T, 0.3, a);
    for (uint32_t i = 0; i < NS * (T - 1); i++) hits[i] += a[i];
  }
  double p = (double)distill_kid_count(count, 0.3) / count;
  for (uint32_t i = 0; i < NS * (T - 1); i++)
    if (mask[i]) /* binomial(2000, p): 5 standard deviations */
      cr_assert(fabs(hits[i] - 2000 * p) < 5 * sqrt(2000 * p * (1 - p)), "position %u picked %u times", i, hits[i]);
  cr_assert_eq(distill_kid_count(10, 0.25), 3);
  cr_assert_eq(distill_kid_count(10, 0.04), 0);
}

Test(distill, kid_writes_the_students_predictions_into_the_picked_targets) {
  dref_t d;
  dref_load(&d);
  model_t *m = ttrain_load("llama-tiny", false);
  lt_err_t err = {0};
  train_opts_t o = {.what = TRAIN_LORA, .lora_rank = 2, .lora_alpha = 2, .lora_targets = TRAIN_LORA_Q};
  train_t *t = train_new(m, &o, &err);
  cr_assert(t, "%s", err.msg);
  /* Under distillation, with the teacher's buffers not yet made: the prediction is the student's alone. */
  model_t *tm = ttrain_load("mixtral-tiny", false);
  train_opts_t fo = {.what = TRAIN_FROZEN};
  train_t *te = train_new(tm, &fo, &err);
  cr_assert(te, "%s", err.msg);
  train_distill_t dist = {.kind = TRAIN_LOSS_KD, .teacher = te, .temperature = 1.0f};
  cr_assert_eq(train_set_distill(t, &dist, &err), LT_OK, "%s", err.msg);
  uint8_t picked[64];
  int32_t out[64];
  uint32_t k = distill_kid_pick(1, 0, 0, d.mask, d.n_seq, d.T, 0.5, picked), changed = 0;
  cr_assert_eq(distill_kid_rewrite(t, d.ids, picked, d.n_seq, d.T, out, &changed, &err), LT_OK, "%s", err.msg);
  uint32_t diff = 0;
  for (uint32_t s = 0; s < d.n_seq; s++)
    for (uint32_t i = 0; i < d.T; i++) {
      uint32_t r = s * d.T + i;
      bool p = i > 0 && picked[s * (d.T - 1) + i - 1];
      cr_assert_eq(out[r], p ? d.argmax[r - 1] : d.ids[r], "sequence %u position %u", s, i);
      diff += out[r] != d.ids[r];
    }
  cr_assert_eq(diff, changed);
  cr_assert(k > 0 && changed > 0, "%u picked, %u changed: the tiny model is rarely right", k, changed);
  train_destroy(&t), train_destroy(&te);
  model_destroy(&m), model_destroy(&tm);
  json_decref(d.j);
}

Test(distill, a_quantised_teacher_runs_in_its_own_dtype) {
  /* mixtral-tiny quantised to int8 (group 32) by compress_write, as `compress --method quantize` writes it: the
   * teacher's weights stay i8 on the device and its forward reads them in place. The KD loss moves only by the
   * quantisation error: int8 round-to-nearest changes each logit by about 1% of its size, so the loss (a KL of
   * size ~1.35) and the teacher's cross-entropy (~5.2) by well under 3%. */
  dref_t d;
  dref_load(&d);
  json_t *c = dref_case(&d, "kd");
  char dir[] = "/tmp/lathe-distill-q8-XXXXXX";
  cr_assert(mkdtemp(dir));
  lt_err_t err = {0};
  compress_plan_t plan = {.bits = 8, .group = 32};
  cr_assert_eq(compress_write(FIXTURES "/mixtral-tiny", dir, &plan, NULL, NULL, &err), LT_OK, "%s", err.msg);
  model_load_opts_t lo = {0};
  model_t *tm = model_load(tgpu(), dir, &lo, &err), *sm = ttrain_load("llama-tiny", true);
  cr_assert(tm, "%s", err.msg);
  bool any_q = false;
  for (uint32_t i = 0; i < model_param_count(tm); i++) any_q |= model_param_at(tm, i)->dtype == LT_I8;
  cr_assert(any_q, "the quantised teacher has no int8 weight on the device");
  train_opts_t so = {.what = TRAIN_FULL}, to = {.what = TRAIN_FROZEN};
  train_t *s = train_new(sm, &so, &err), *t = train_new(tm, &to, &err);
  cr_assert(s && t, "%s", err.msg);
  train_distill_t dist = {.kind = TRAIN_LOSS_KD, .teacher = t, .temperature = (float)jnum(c, "temperature")};
  cr_assert_eq(train_set_distill(s, &dist, &err), LT_OK, "%s", err.msg);
  double loss = 0;
  cr_assert_eq(train_grad(s, d.ids, d.mask, d.n_seq, d.T, 1.0f, &loss, &err), LT_OK, "%s", err.msg);
  double want = jnum(c, "value"), tce = jnum(c, "teacher_ce");
  cr_assert(fabs(loss - want) < 0.03 * want, "loss %g with an int8 teacher, %g with f32", loss, want);
  cr_assert(loss != want, "the int8 teacher gave the f32 teacher's loss exactly");
  cr_assert(fabs(train_stats(s)->teacher_ce - tce) < 0.03 * tce, "teacher ce %g vs %g", train_stats(s)->teacher_ce,
            tce);
  train_destroy(&s), train_destroy(&t);
  model_destroy(&sm), model_destroy(&tm);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  cr_assert_eq(system(cmd), 0);
  json_decref(d.j);
}
