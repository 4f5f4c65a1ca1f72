/* Zeroth-order tuning (methods/zo.c) on the fixture models: perturb and restore, the projected gradient against
 * two forward passes of CPU-perturbed weights, LeZO's untouched blocks, replay of the log, and a resumed run. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model/generate.h"
#include "engine/model/model.h"
#include "engine/ops/ref/ref.h"
#include "methods/zo.h"
#include "support/tgpu.h"

#define TINY LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny"
#define TINY_F16 LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny-f16"
#define STORIES LATHE_SOURCE_DIR "/tests/fixtures/stories260K/hf"

/* How far the shader's z may be from ref_normal's (tests/engine/test_perturb.c). */
#define Z_TOL(z) (1e-5 + 1e-5 * fabs(z))

TestSuite(zo, .init = tgpu_setup, .fini = tgpu_teardown);

/* Three llama-tiny examples (vocab 96): two text rows and a prompt (5 tokens) + completion row. */
static const int32_t ex0[] = {0, 45, 66, 85, 73, 70, 1, 83, 86, 79, 84, 66, 74, 11};
static const int32_t ex1[] = {0, 12, 33, 44, 55, 66, 77, 88, 21, 34};
static const int32_t ex2[] = {0, 5, 6, 7, 8, 9, 10, 11, 12};
static const zo_example_t tiny_batch[3] = {{ex0, 14, 0}, {ex1, 10, 4}, {ex2, 9, 0}};

static model_t *load(const char *path, bool force_f32) {
  lt_err_t err = {0};
  model_load_opts_t o = {.force_f32 = force_f32};
  model_t *m = model_load(tgpu(), path, &o, &err);
  cr_assert(m != NULL, "model_load(%s): %s", path, err.msg);
  return m;
}

static zo_t *zo(model_t *m, zo_method_t method, float eps, float wd, uint32_t drop, uint64_t seed) {
  lt_err_t err = {0};
  zo_opts_t o = {.method = method, .eps = eps, .weight_decay = wd, .drop_layers = drop, .seed = seed};
  zo_t *z = zo_new(m, &o, 4, 32, &err);
  cr_assert(z != NULL, "zo_new: %s", err.msg);
  return z;
}

/* Every parameter piece's floats, in registry order. */
typedef struct snap {
  uint32_t n;
  float **w;
} snap_t;

static uint64_t piece_len(const model_param_t *p) { return (uint64_t)p->n_rows * p->cols; }

static snap_t snapshot(model_t *m) {
  snap_t s = {.n = model_param_count(m)};
  s.w = calloc(s.n, sizeof *s.w);
  for (uint32_t i = 0; i < s.n; i++) s.w[i] = tread_f32(model_param_at(m, i)->buf, piece_len(model_param_at(m, i)));
  return s;
}

static void snap_free(snap_t *s) {
  for (uint32_t i = 0; i < s->n; i++) free(s->w[i]);
  free(s->w);
}

/* Number of pieces whose bytes differ between a and b (listed by name in the log). */
static uint32_t pieces_differing(model_t *m, const snap_t *a, const snap_t *b) {
  uint32_t diff = 0;
  for (uint32_t i = 0; i < a->n; i++)
    if (memcmp(a->w[i], b->w[i], piece_len(model_param_at(m, i)) * 4) != 0) diff++;
  return diff;
}

static void upload(model_t *m, const snap_t *s) {
  lt_err_t err = {0};
  for (uint32_t i = 0; i < s->n; i++) {
    const model_param_t *p = model_param_at(m, i);
    cr_assert_eq(gpu_upload(p->buf, 0, s->w[i], piece_len(p) * 4, &err), LT_OK, "%s", err.msg);
  }
}

Test(zo, perturb_then_restore_returns_the_weights) {
  /* +eps z, -2 eps z, +eps z: each of the three passes rounds once per multiply and once per add, so
   * |theta' - theta| <= 2^-24 * (3 |theta| + 7 eps |z|) per element (the intermediate values are at most
   * |theta| + eps |z|). The first pass alone must match ref_perturb to 2^-24 * (|theta| + 2 eps |z|) plus eps
   * times the shader's own error on z (f32 log, sqrt and cos: 1e-5 + 1e-5 |z|, see tests/engine/test_perturb.c);
   * the restore uses the same shader z three times, so that error cancels there. */
  model_t *m = load(TINY, true);
  const float eps = 1e-2f;
  zo_t *z = zo(m, ZO_MEZO, eps, 0.0f, 0, 7);
  lt_err_t err = {0};
  uint64_t seed = zo_step_seed(7, 3);
  snap_t base = snapshot(m);
  cr_assert_eq(zo_perturb(z, seed, eps, &err), LT_OK, "%s", err.msg);
  snap_t plus = snapshot(m);
  cr_assert_eq(zo_perturb(z, seed, -2.0f * eps, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(zo_perturb(z, seed, eps, &err), LT_OK, "%s", err.msg);
  snap_t back = snapshot(m);
  double worst_plus = 0, worst_back = 0;
  uint64_t exact = 0, total = 0;
  for (uint32_t i = 0; i < base.n; i++) {
    const model_param_t *p = model_param_at(m, i);
    uint32_t id = zo_tensor_id(p);
    for (uint64_t k = 0; k < piece_len(p); k++) {
      double th = base.w[i][k], zz = ref_normal(seed, id, k);
      double want = th + (double)eps * zz;
      double tol_plus = 0x1p-24 * (fabs(th) + 2.0 * eps * fabs(zz)) + eps * Z_TOL(zz);
      double tol_back = 0x1p-24 * (3.0 * fabs(th) + 7.0 * eps * fabs(zz));
      double e1 = fabs(plus.w[i][k] - want), e2 = fabs(back.w[i][k] - th);
      cr_assert_leq(e1, tol_plus, "%s[%llu]: +eps z gives %.9g, want %.9g", p->name, (unsigned long long)k,
                    (double)plus.w[i][k], want);
      cr_assert_leq(e2, tol_back, "%s[%llu]: restored %.9g, was %.9g", p->name, (unsigned long long)k,
                    (double)back.w[i][k], th);
      if (e1 / tol_plus > worst_plus) worst_plus = e1 / tol_plus;
      if (e2 / tol_back > worst_back) worst_back = e2 / tol_back;
      exact += back.w[i][k] == base.w[i][k];
      total++;
    }
  }
  cr_log_info("perturb: worst error %.2f of its bound; restore: %.2f of its bound, %llu of %llu bit-exact", worst_plus,
              worst_back, (unsigned long long)exact, (unsigned long long)total);
  snap_free(&base), snap_free(&plus), snap_free(&back);
  zo_destroy(&z);
  model_destroy(&m);
}

/* Every piece's values widened to f32, in registry order, whatever its dtype on the device. */
static snap_t snapshot_any(model_t *m) {
  snap_t s = {.n = model_param_count(m)};
  s.w = calloc(s.n, sizeof *s.w);
  for (uint32_t i = 0; i < s.n; i++) {
    const model_param_t *p = model_param_at(m, i);
    uint64_t n = piece_len(p);
    if (p->dtype == LT_F32) {
      s.w[i] = tread_f32(p->buf, n);
      continue;
    }
    uint16_t *h = tread_bytes(p->buf, 2 * n);
    s.w[i] = talloc(n);
    for (uint64_t k = 0; k < n; k++)
      s.w[i][k] = p->dtype == LT_F16 ? dtype_half_to_float(h[k]) : dtype_bf16_to_float(h[k]);
    free(h);
  }
  return s;
}

static double score_batch(model_t *m, const zo_example_t *b, uint32_t n);
static snap_t cpu_perturbed(model_t *m, const snap_t *base, uint64_t seed, float scale);

Test(zo, f16_weights_tune_in_their_own_dtype) {
  /* llama-tiny-f16 as stored: the matrices stay f16 on the device (the memory of inference), the norms f32. A step's
   * losses are the forward passes at w + eps z and w - eps z: checked against an f32 copy of the model with those
   * weights made on the CPU (as in the f32 test below). Its update is decay * w - lr g z rounded stochastically to
   * one of the two f16 neighbours; replaying the log from the base gives the same bits. Version 1 (in place)
   * still refuses f16 weights by name. */
  model_t *m = load(TINY_F16, false);
  uint32_t n16 = 0;
  for (uint32_t i = 0; i < model_param_count(m); i++) n16 += model_param_at(m, i)->dtype == LT_F16;
  if (!n16) {
    cr_log_info("this device has no 16-bit storage: llama-tiny-f16 loads as f32");
    model_destroy(&m);
    return;
  }
  lt_err_t err = {0};
  zo_opts_t v1 = {.method = ZO_MEZO, .eps = 1e-3f, .seed = 1, .version = 1};
  cr_assert_null(zo_new(m, &v1, 1, 8, &err));
  cr_assert(strstr(err.msg, "force_f32") != NULL, "%s", err.msg);
  const float eps = 1e-2f, lr = 2e-3f, wd = 0.1f;
  zo_t *z = zo(m, ZO_MEZO, eps, wd, 0, 11);
  model_t *cpu = load(TINY_F16, true);
  snap_t base = snapshot_any(m);
  zo_record_t log[3];
  uint64_t moved = 0, total = 0;
  for (uint64_t step = 0; step < 3; step++) {
    snap_t before = snapshot_any(m);
    cr_assert_eq(zo_step(z, step, lr, tiny_batch, 3, &log[step], &err), LT_OK, "%s", err.msg);
    const zo_record_t *rec = &log[step];
    snap_t p = cpu_perturbed(m, &before, rec->seed, eps), q = cpu_perturbed(m, &before, rec->seed, -eps);
    upload(cpu, &p);
    double lp = score_batch(cpu, tiny_batch, 3);
    upload(cpu, &q);
    double lm = score_batch(cpu, tiny_batch, 3);
    cr_log_info("f16 step %llu: L+ %.7f (cpu %.7f), L- %.7f (cpu %.7f), g %.5f", (unsigned long long)step,
                rec->loss_plus, lp, rec->loss_minus, lm, (double)rec->g);
    cr_assert_leq(fabs(rec->loss_plus - lp), 1e-5 * lp, "L+");
    cr_assert_leq(fabs(rec->loss_minus - lm), 1e-5 * lm, "L-");
    snap_t after = snapshot_any(m);
    for (uint32_t i = 0; i < base.n; i++) {
      const model_param_t *pp = model_param_at(m, i);
      cr_assert(pp->dtype == LT_F16 || pp->is_norm, "%s is %s after tuning", pp->name, lt_dtype_str(pp->dtype));
      float decay = pp->is_norm ? 1.0f : 1.0f - lr * wd;
      for (uint64_t k = 0; k < piece_len(pp); k++) {
        double th = before.w[i][k], zz = ref_normal(rec->seed, zo_tensor_id(pp), k);
        double want = decay * th - (double)lr * rec->g * zz, got = after.w[i][k];
        /* f16: one of the two neighbours of want (spacing 2^-10 of the binade, 2^-24 below 2^-14); f32 norms:
         * the in-place +eps, -2 eps, +eps leaves a few roundings (see the f32 test). */
        double tol = pp->dtype == LT_F16 ? fmax(fabs(want) * 0x1p-10, 0x1p-24) * 1.01
                                         : 0x1p-24 * (5.0 * fabs(th) + 9.0 * (eps + lr * fabs(rec->g)) * fabs(zz));
        tol += lr * fabs(rec->g) * Z_TOL(zz);
        cr_assert_leq(fabs(got - want), tol, "%s[%llu]: %.9g, want %.9g", pp->name, (unsigned long long)k, got, want);
        if (pp->dtype == LT_F16) moved += got != th, total++;
      }
    }
    snap_free(&p), snap_free(&q), snap_free(&before), snap_free(&after);
  }
  /* lr |g| |z| is around 1e-3 of weights around 0.1: most f16 weights move at least once in three steps. */
  cr_log_info("f16 weights changed by a step: %llu of %llu", (unsigned long long)moved, (unsigned long long)total);
  cr_assert_gt(moved, total / 10, "stochastic rounding moved almost nothing");
  snap_t trained = snapshot_any(m);
  zo_destroy(&z);
  model_destroy(&m);
  /* Replay from the base weights: bit for bit. */
  model_t *r = load(TINY_F16, false);
  z = zo(r, ZO_MEZO, eps, wd, 0, 11);
  for (int s2 = 0; s2 < 3; s2++) cr_assert_eq(zo_replay(z, &log[s2], &err), LT_OK, "%s", err.msg);
  snap_t replayed = snapshot_any(r);
  cr_assert_eq(pieces_differing(r, &replayed, &trained), 0, "replay differs from the trained f16 weights");
  cr_assert_gt(pieces_differing(r, &replayed, &base), 0, "training changed nothing");
  snap_free(&base), snap_free(&trained), snap_free(&replayed);
  zo_destroy(&z);
  model_destroy(&r);
  model_destroy(&cpu);
}

/* Mean NLL of the scored tokens of the batch by model_score, one sequence at a time. */
static double score_batch(model_t *m, const zo_example_t *b, uint32_t n) {
  lt_err_t err = {0};
  double sum = 0;
  uint32_t count = 0;
  for (uint32_t i = 0; i < n; i++) {
    float lp[64];
    cr_assert_eq(model_score(m, b[i].ids, b[i].n, lp, &err), LT_OK, "%s", err.msg);
    for (uint32_t t = b[i].first; t + 1 < b[i].n; t++, count++) sum -= lp[t + 1];
  }
  return sum / count;
}

/* theta + scale * z(seed) on the CPU with ref_normal, in double rounded once. */
static snap_t cpu_perturbed(model_t *m, const snap_t *base, uint64_t seed, float scale) {
  snap_t s = {.n = base->n, .w = calloc(base->n, sizeof(float *))};
  for (uint32_t i = 0; i < s.n; i++) {
    const model_param_t *p = model_param_at(m, i);
    s.w[i] = talloc(piece_len(p));
    memcpy(s.w[i], base->w[i], piece_len(p) * 4);
    ref_perturb(s.w[i], (uint32_t)piece_len(p), seed, zo_tensor_id(p), scale);
  }
  return s;
}

Test(zo, projected_gradient_matches_two_cpu_perturbed_forward_passes) {
  /* L+ and L- again, independently: weights perturbed on the CPU (ref_normal, double) and uploaded into a second
   * copy of the model, losses by model_score one sequence at a time (zo_loss runs the batch together). The two
   * paths sum in different orders: losses (about 5) agree to 1e-5 relative, so g = (L+ - L-) / (2 eps) with
   * eps = 1e-2 agrees to 2 * 5e-5 / 2e-2 = 5e-3 absolute; we allow 5e-3 + 1e-3 |g|. A step with another
   * seed must miss that by far (the check can fail). */
  model_t *m = load(TINY, true), *cpu = load(TINY, true);
  const float eps = 1e-2f, lr = 1e-3f;
  zo_t *z = zo(m, ZO_MEZO, eps, 0.0f, 0, 11);
  snap_t base = snapshot(m);
  lt_err_t err = {0};
  for (uint64_t step = 0; step < 3; step++) {
    zo_record_t rec;
    snap_t before = snapshot(m);
    cr_assert_eq(zo_step(z, step, lr, tiny_batch, 3, &rec, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(rec.seed, zo_step_seed(11, step));
    snap_t p = cpu_perturbed(m, &before, rec.seed, eps), q = cpu_perturbed(m, &before, rec.seed, -eps);
    upload(cpu, &p);
    double lp = score_batch(cpu, tiny_batch, 3);
    upload(cpu, &q);
    double lm = score_batch(cpu, tiny_batch, 3);
    double g = (lp - lm) / (2.0 * eps);
    cr_log_info("step %llu: L+ %.7f (cpu %.7f), L- %.7f (cpu %.7f), g %.5f (cpu %.5f)", (unsigned long long)step,
                rec.loss_plus, lp, rec.loss_minus, lm, (double)rec.g, g);
    cr_assert_leq(fabs(rec.loss_plus - lp), 1e-5 * lp, "L+");
    cr_assert_leq(fabs(rec.loss_minus - lm), 1e-5 * lm, "L-");
    cr_assert_leq(fabs(rec.g - g), 5e-3 + 1e-3 * fabs(g), "projected gradient %.6f, cpu %.6f", (double)rec.g, g);
    cr_assert_gt(fabs(g), 0.05, "a gradient this small would not test the comparison");
    /* The update itself: theta - lr g z, to the rounding of the restore (see the test above) plus the update's, and
     * lr |g| times the shader's error on z. */
    snap_t after = snapshot(m);
    for (uint32_t i = 0; i < base.n; i++) {
      const model_param_t *pp = model_param_at(m, i);
      for (uint64_t k = 0; k < piece_len(pp); k++) {
        double th = before.w[i][k], zz = ref_normal(rec.seed, zo_tensor_id(pp), k);
        double want = th - (double)lr * rec.g * zz;
        double tol =
            0x1p-24 * (5.0 * fabs(th) + 9.0 * (eps + lr * fabs(rec.g)) * fabs(zz)) + lr * fabs(rec.g) * Z_TOL(zz);
        cr_assert_leq(fabs(after.w[i][k] - want), tol, "%s[%llu] after the update", pp->name, (unsigned long long)k);
      }
    }
    snap_free(&p), snap_free(&q), snap_free(&before), snap_free(&after);
  }
  /* The check can fail: the gradient along another step's direction is a different number. */
  snap_t now = snapshot(m);
  uint64_t other = zo_step_seed(11, 99);
  snap_t p = cpu_perturbed(m, &now, other, eps), q = cpu_perturbed(m, &now, other, -eps);
  upload(cpu, &p);
  double lp = score_batch(cpu, tiny_batch, 3);
  upload(cpu, &q);
  double g_other = (lp - score_batch(cpu, tiny_batch, 3)) / (2.0 * eps);
  zo_record_t rec;
  cr_assert_eq(zo_step(z, 3, lr, tiny_batch, 3, &rec, &err), LT_OK, "%s", err.msg);
  cr_assert_gt(fabs(rec.g - g_other), 5e-3 + 1e-3 * fabs(g_other), "another direction's g must differ");
  snap_free(&p), snap_free(&q), snap_free(&now), snap_free(&base);
  zo_destroy(&z);
  model_destroy(&m);
  model_destroy(&cpu);
}

Test(zo, lezo_touches_only_the_chosen_blocks) {
  /* stories260K has 5 blocks; LeZO leaving out 3 tunes 2 per step plus the embeddings and the final norm. */
  model_t *m = load(STORIES, true);
  uint32_t L = model_config(m)->n_layers;
  cr_assert_eq(L, 5);
  zo_t *z = zo(m, ZO_LEZO, 1e-3f, 0.1f, 3, 5);
  static const int32_t ids[] = {1, 403, 407, 261, 378, 275, 302, 261, 361, 401, 408, 384, 276, 293, 270, 302};
  zo_example_t b = {ids, 16, 0};
  lt_err_t err = {0};
  uint32_t seen[5] = {0};
  for (uint64_t step = 0; step < 4; step++) {
    bool active[5];
    zo_blocks(z, zo_step_seed(5, step), active);
    uint32_t n_active = 0;
    for (uint32_t l = 0; l < L; l++) {
      n_active += active[l];
      seen[l] += active[l];
    }
    cr_assert_eq(n_active, 2, "step %llu: %u blocks active", (unsigned long long)step, n_active);
    snap_t before = snapshot(m);
    zo_record_t rec;
    cr_assert_eq(zo_step(z, step, 1e-2f, &b, 1, &rec, &err), LT_OK, "%s", err.msg);
    snap_t after = snapshot(m);
    for (uint32_t i = 0; i < before.n; i++) {
      const model_param_t *p = model_param_at(m, i);
      bool same = memcmp(before.w[i], after.w[i], piece_len(p) * 4) == 0;
      if (p->layer >= 0 && !active[p->layer])
        cr_assert(same, "step %llu: %s (block %d, left out) changed", (unsigned long long)step, p->name, p->layer);
      else
        cr_assert_not(same, "step %llu: %s (tuned) did not change", (unsigned long long)step, p->name);
    }
    snap_free(&before), snap_free(&after);
  }
  /* Four steps drew more than one pair of blocks (the draw follows the seed). */
  uint32_t distinct = 0;
  for (uint32_t l = 0; l < L; l++) distinct += seen[l] > 0;
  cr_assert_gt(distinct, 2, "the same blocks every step");
  zo_destroy(&z);
  model_destroy(&m);
}

Test(zo, batches_are_an_epoch_shuffle_fixed_by_seed_and_step) {
  enum { N = 37, B = 5 };
  uint32_t count[N] = {0}, idx[B], again[B];
  /* Steps 0..6 cover 35 of the 37 examples of epoch 0, each at most once. */
  for (uint64_t s = 0; s < 7; s++) {
    zo_sample(42, s, B, N, idx);
    zo_sample(42, s, B, N, again);
    cr_assert_arr_eq(idx, again, sizeof idx);
    for (int j = 0; j < B; j++) {
      cr_assert_lt(idx[j], N);
      count[idx[j]]++;
    }
  }
  for (int i = 0; i < N; i++) cr_assert_leq(count[i], 1, "example %d drawn twice in one epoch", i);
  uint32_t other[B];
  zo_sample(43, 0, B, N, other);
  zo_sample(42, 0, B, N, idx);
  cr_assert(memcmp(idx, other, sizeof idx) != 0, "another seed gives other batches");
}

/* Runs steps [from, to) of a run with the tiny batch rotated by step; appends the records to log. */
static void run_steps(zo_t *z, uint64_t from, uint64_t to, zo_record_t *log) {
  lt_err_t err = {0};
  for (uint64_t s = from; s < to; s++) {
    zo_example_t b[2] = {tiny_batch[s % 3], tiny_batch[(s + 1) % 3]};
    cr_assert_eq(zo_step(z, s, 2e-3f, b, 2, &log[s], &err), LT_OK, "%s", err.msg);
  }
}

Test(zo, replaying_the_log_reproduces_the_checkpoint) {
  /* MeZO with weight decay and LeZO: base weights + the logged (seed, g, lr) give the checkpoint bit for bit,
   * and the checkpoint written by model_save loads back to the same bits. */
  char dir[] = "/tmp/lathe-zo-replay-XXXXXX";
  cr_assert(mkdtemp(dir) != NULL);
  for (int method = 0; method < 2; method++) {
    model_t *m = load(TINY, true);
    zo_t *z = zo(m, method ? ZO_LEZO : ZO_MEZO, 1e-2f, method ? 0.0f : 0.5f, method ? 1 : 0, 21);
    zo_record_t log[6];
    run_steps(z, 0, 6, log);
    snap_t trained = snapshot(m);
    lt_err_t err = {0};
    char ck[128];
    snprintf(ck, sizeof ck, "%s/checkpoint-%d", dir, method);
    cr_assert_eq(model_save(m, ck, NULL, &err), LT_OK, "%s", err.msg);
    zo_destroy(&z);
    model_destroy(&m);

    /* Through the log file: the run's options and every step's floats must read back exactly. */
    char lp[128];
    snprintf(lp, sizeof lp, "%s/zo-log-%d.jsonl", dir, method);
    FILE *f = fopen(lp, "w");
    cr_assert(f != NULL);
    zo_opts_t o = {.method = method ? ZO_LEZO : ZO_MEZO,
                   .eps = 1e-2f,
                   .weight_decay = method ? 0.0f : 0.5f,
                   .drop_layers = method ? 1 : 0,
                   .seed = 21};
    cr_assert_eq(zo_log_header(f, TINY, &o, &err), LT_OK, "%s", err.msg);
    for (int s = 0; s < 6; s++) cr_assert_eq(zo_log_record(f, &log[s], &err), LT_OK, "%s", err.msg);
    cr_assert_eq(fclose(f), 0);
    zo_opts_t ro;
    char base_path[512];
    zo_record_t *read = NULL;
    uint64_t n_read = 0;
    cr_assert_eq(zo_log_read(lp, &ro, base_path, sizeof base_path, &read, &n_read, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(n_read, 6);
    cr_assert_str_eq(base_path, TINY);
    cr_assert(ro.method == o.method && ro.eps == o.eps && ro.weight_decay == o.weight_decay &&
                  ro.drop_layers == o.drop_layers && ro.seed == o.seed,
              "the header reads back to other options");
    for (int s = 0; s < 6; s++)
      cr_assert(read[s].seed == log[s].seed && read[s].g == log[s].g && read[s].lr == log[s].lr, "step %d", s);

    model_t *r = load(base_path, true);
    z = zo_new(r, &ro, 1, 8, &err);
    cr_assert(z != NULL, "%s", err.msg);
    snap_t base = snapshot(r);
    cr_assert_gt(pieces_differing(r, &base, &trained), 0, "training changed nothing");
    for (int s = 0; s < 6; s++) cr_assert_eq(zo_replay(z, &read[s], &err), LT_OK, "%s", err.msg);
    free(read);
    snap_t replayed = snapshot(r);
    cr_assert_eq(pieces_differing(r, &replayed, &trained), 0, "replay differs from the trained weights");
    /* Without the perturb/restore passes the rounding they leave is missing: not bit-exact (why replay
     * repeats them). */
    upload(r, &base);
    for (int s = 0; s < 6; s++) cr_assert_eq(zo_update(z, log[s].seed, log[s].lr, log[s].g, &err), LT_OK);
    snap_t updates_only = snapshot(r);
    cr_log_info("%s: updates alone leave %u of %u pieces off by rounding", method ? "lezo" : "mezo",
                pieces_differing(r, &updates_only, &trained), trained.n);
    zo_destroy(&z);
    model_destroy(&r);

    model_t *c = load(ck, false);
    snap_t loaded = snapshot(c);
    cr_assert_eq(pieces_differing(c, &loaded, &trained), 0, "the saved checkpoint loads to other weights");
    model_destroy(&c);
    snap_free(&trained), snap_free(&base), snap_free(&replayed), snap_free(&updates_only), snap_free(&loaded);
  }
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  cr_assert_eq(system(cmd), 0);
}

Test(zo, resumed_run_equals_uninterrupted_run) {
  /* 8 steps straight, against 3 steps, a checkpoint written and the model freed, then the checkpoint loaded into
   * a new model and steps 3..7: the same weights bit for bit. */
  char dir[] = "/tmp/lathe-zo-resume-XXXXXX";
  cr_assert(mkdtemp(dir) != NULL);
  zo_record_t log_a[8], log_b[8];
  model_t *a = load(TINY, true);
  zo_t *z = zo(a, ZO_LEZO, 1e-2f, 0.1f, 1, 99);
  run_steps(z, 0, 8, log_a);
  snap_t straight = snapshot(a);
  zo_destroy(&z);

  model_t *b = load(TINY, true);
  z = zo(b, ZO_LEZO, 1e-2f, 0.1f, 1, 99);
  run_steps(z, 0, 3, log_b);
  lt_err_t err = {0};
  char ck[128];
  snprintf(ck, sizeof ck, "%s/checkpoint-3", dir);
  cr_assert_eq(model_save(b, ck, NULL, &err), LT_OK, "%s", err.msg);
  zo_destroy(&z);
  model_destroy(&b);
  b = load(ck, true);
  z = zo(b, ZO_LEZO, 1e-2f, 0.1f, 1, 99);
  run_steps(z, 3, 8, log_b);
  snap_t resumed = snapshot(b);
  cr_assert_eq(pieces_differing(b, &straight, &resumed), 0, "the resumed run ends elsewhere");
  for (int s = 0; s < 8; s++) cr_assert_eq(log_a[s].g, log_b[s].g, "step %d: g differs", s);
  zo_destroy(&z);
  model_destroy(&a);
  model_destroy(&b);
  snap_free(&straight), snap_free(&resumed);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  cr_assert_eq(system(cmd), 0);
}

Test(zo, the_log_reader_rejects_a_gap_and_a_foreign_header) {
  char path[] = "/tmp/lathe-zo-log-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  close(fd);
  static const char *const bad[] = {
      /* step 1 is missing */
      "{\"format\":\"lathe-zo-log\",\"version\":1,\"base\":\"/m\",\"method\":\"mezo\",\"eps\":0.001,"
      "\"weight_decay\":0,\"drop_layers\":0,\"seed\":\"1\"}\n"
      "{\"step\":0,\"seed\":\"5\",\"g\":1.5,\"lr\":1e-6}\n{\"step\":2,\"seed\":\"6\",\"g\":1.5,\"lr\":1e-6}\n",
      /* a newer version */
      "{\"format\":\"lathe-zo-log\",\"version\":3,\"base\":\"/m\",\"method\":\"mezo\",\"eps\":0.001,"
      "\"weight_decay\":0,\"drop_layers\":0,\"seed\":\"1\"}\n",
      /* a seed that is not a 64-bit decimal */
      "{\"format\":\"lathe-zo-log\",\"version\":1,\"base\":\"/m\",\"method\":\"mezo\",\"eps\":0.001,"
      "\"weight_decay\":0,\"drop_layers\":0,\"seed\":\"1\"}\n{\"step\":0,\"seed\":\"-5\",\"g\":1.5,\"lr\":1e-6}\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    FILE *f = fopen(path, "w");
    cr_assert(f != NULL);
    fputs(bad[i], f);
    fclose(f);
    zo_opts_t o;
    zo_record_t *r = NULL;
    uint64_t n = 7;
    lt_err_t err = {0};
    cr_assert_eq(zo_log_read(path, &o, NULL, 0, &r, &n, &err), LT_E_CORRUPT, "case %zu: %s", i, err.msg);
    cr_assert_null(r);
    cr_assert_eq(n, 0);
  }
  unlink(path);
}

Test(zo, mixtral_router_and_experts_follow_their_block) {
  /* The MoE fixture: a LeZO step leaving out one of its two blocks changes the other block's router and every
   * one of its experts, and nothing of the block left out. */
  model_t *m = load(LATHE_SOURCE_DIR "/tests/fixtures/mixtral-tiny", true);
  zo_t *z = zo(m, ZO_LEZO, 1e-2f, 0.0f, 1, 3);
  bool active[2];
  zo_blocks(z, zo_step_seed(3, 0), active);
  snap_t before = snapshot(m);
  zo_record_t rec;
  lt_err_t err = {0};
  cr_assert_eq(zo_step(z, 0, 1e-2f, tiny_batch, 3, &rec, &err), LT_OK, "%s", err.msg);
  cr_assert(isfinite(rec.g));
  snap_t after = snapshot(m);
  uint32_t experts = 0;
  for (uint32_t i = 0; i < before.n; i++) {
    const model_param_t *p = model_param_at(m, i);
    bool same = memcmp(before.w[i], after.w[i], piece_len(p) * 4) == 0;
    bool tuned = p->layer < 0 || active[p->layer];
    cr_assert(same != tuned, "%s (block %d, %s)", p->name, p->layer,
              tuned ? "tuned but unchanged" : "left out but changed");
    experts += p->expert >= 0 && tuned;
  }
  cr_assert_gt(experts, 0, "no expert tensor was tuned");
  snap_free(&before), snap_free(&after);
  zo_destroy(&z);
  model_destroy(&m);
}

Test(zo, data_parallel_steps_equal_one_replica_bit_for_bit) {
  /* tune-zo --devices N: replicas each score their micro-batches and only per-example loss sums travel. 5 LeZO
   * steps (weight decay on) on one replica against 2 and 3 replicas with the same micro-batches (2 examples, and
   * 1: one replica then has two micro-batches a step, another none in some), each replica on a device object of
   * its own: the same records and the same weights, bit for bit. */
  static const int32_t ex3[] = {0, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87};
  const zo_example_t batch[4] = {tiny_batch[0], tiny_batch[1], {ex3, 19, 3}, tiny_batch[2]};
  lt_err_t err = {0};
  gpu_opts_t go = {.cache_dir = getenv("LATHE_TEST_CACHE_DIR")};
  gpu_t *gs[3] = {tgpu(), gpu_new(&go, &err), NULL};
  cr_assert(gs[1] != NULL, "a second device object: %s", err.msg);
  cr_assert((gs[2] = gpu_new(&go, &err)) != NULL, "a third device object: %s", err.msg);
  snap_t base;
  {
    model_t *b = load(TINY, true);
    base = snapshot(b);
    model_destroy(&b);
  }
  static const uint32_t micros[2] = {2, 1}, reps[2][2] = {{2, 3}, {3, 2}};
  for (int mi = 0; mi < 2; mi++) {
    uint32_t micro = micros[mi];
    model_t *m1 = load(TINY, true);
    zo_t *z1 = zo(m1, ZO_LEZO, 1e-2f, 0.1f, 1, 33);
    zo_record_t one[5], rec[5];
    for (uint64_t s = 0; s < 5; s++)
      cr_assert_eq(zo_step_replicas(&z1, 1, micro, s, 2e-3f, batch, 4, &one[s], &err), LT_OK, "%s", err.msg);
    snap_t want = snapshot(m1);
    cr_assert_gt(pieces_differing(m1, &base, &want), 0, "the steps changed nothing");
    for (int ri = 0; ri < 2; ri++) {
      uint32_t n_rep = reps[mi][ri];
      model_t *m[3];
      zo_t *z[3];
      for (uint32_t r = 0; r < n_rep; r++) {
        model_load_opts_t lo = {.force_f32 = true};
        m[r] = model_load(gs[r], TINY, &lo, &err);
        cr_assert(m[r] != NULL, "%s", err.msg);
        z[r] = zo(m[r], ZO_LEZO, 1e-2f, 0.1f, 1, 33);
      }
      for (uint64_t s = 0; s < 5; s++) {
        cr_assert_eq(zo_step_replicas(z, n_rep, micro, s, 2e-3f, batch, 4, &rec[s], &err), LT_OK, "%s", err.msg);
        cr_assert(rec[s].g == one[s].g && rec[s].loss_plus == one[s].loss_plus &&
                      rec[s].loss_minus == one[s].loss_minus,
                  "micro %u, %u replicas, step %llu: g %.9g vs %.9g", micro, n_rep, (unsigned long long)s,
                  (double)rec[s].g, (double)one[s].g);
      }
      for (uint32_t r = 0; r < n_rep; r++) {
        snap_t got = snapshot(m[r]);
        cr_assert_eq(pieces_differing(m[r], &got, &want), 0, "micro %u, %u replicas: replica %u's weights differ",
                     micro, n_rep, r);
        snap_free(&got);
        zo_destroy(&z[r]);
        model_destroy(&m[r]);
      }
    }
    /* The whole batch in one forward pass is the same step to within rounding, not bit for bit on every driver:
     * logged, not asserted. */
    zo_record_t whole;
    model_t *mw = load(TINY, true);
    zo_t *zw = zo(mw, ZO_LEZO, 1e-2f, 0.1f, 1, 33);
    cr_assert_eq(zo_step(zw, 0, 2e-3f, batch, 4, &whole, &err), LT_OK, "%s", err.msg);
    cr_assert_float_eq(whole.loss_plus, one[0].loss_plus, 1e-5 * fabs(one[0].loss_plus), "micro %u", micro);
    cr_log_info("micro-batches of %u: L+ %.17g, one forward pass: %.17g", micro, one[0].loss_plus, whole.loss_plus);
    zo_destroy(&zw), model_destroy(&mw);
    snap_free(&want);
    zo_destroy(&z1);
    model_destroy(&m1);
  }
  /* Two replicas through one device object would race in their threads: refused. */
  model_load_opts_t lo = {.force_f32 = true};
  model_t *ma = model_load(gs[1], TINY, &lo, &err), *mb = model_load(gs[1], TINY, &lo, &err);
  cr_assert(ma && mb, "%s", err.msg);
  zo_t *zz[2] = {zo(ma, ZO_MEZO, 1e-2f, 0, 0, 1), zo(mb, ZO_MEZO, 1e-2f, 0, 0, 1)};
  zo_record_t rr;
  cr_assert_eq(zo_step_replicas(zz, 2, 2, 0, 1e-3f, batch, 4, &rr, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "share a device object"), "%s", err.msg);
  zo_destroy(&zz[0]), zo_destroy(&zz[1]), model_destroy(&ma), model_destroy(&mb);
  snap_free(&base);
  gpu_destroy(&gs[1]);
  gpu_destroy(&gs[2]);
}

Test(zo, version_1_logs_replay_with_their_own_arithmetic) {
  /* A run logged before version 2 perturbed f32 weights in place and restored them. Its log reads back as version
   * 1, and replaying it with that arithmetic gives its weights bit for bit; the version 2 replay of the same
   * records does not (its steps never restored anything in place but the norms), which is why the log carries the
   * version. */
  char path[] = "/tmp/lathe-zo-v1-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  close(fd);
  zo_opts_t o = {.method = ZO_MEZO, .eps = 1e-2f, .weight_decay = 0.5f, .seed = 8, .version = 1};
  model_t *m = load(TINY, true);
  lt_err_t err = {0};
  zo_t *z = zo_new(m, &o, 4, 32, &err);
  cr_assert(z != NULL, "%s", err.msg);
  zo_record_t log[4];
  run_steps(z, 0, 4, log);
  snap_t trained = snapshot(m);
  zo_destroy(&z);
  model_destroy(&m);
  FILE *f = fopen(path, "w");
  cr_assert(f != NULL);
  cr_assert_eq(zo_log_header(f, TINY, &o, &err), LT_OK, "%s", err.msg);
  for (int s = 0; s < 4; s++) cr_assert_eq(zo_log_record(f, &log[s], &err), LT_OK, "%s", err.msg);
  fclose(f);
  zo_opts_t ro;
  zo_record_t *read = NULL;
  uint64_t n = 0;
  cr_assert_eq(zo_log_read(path, &ro, NULL, 0, &read, &n, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(ro.version, 1);
  for (uint32_t version = 1; version <= 2; version++) {
    model_t *r = load(TINY, true);
    ro.version = version;
    z = zo_new(r, &ro, 1, 8, &err);
    cr_assert(z != NULL, "%s", err.msg);
    for (uint64_t s = 0; s < n; s++) cr_assert_eq(zo_replay(z, &read[s], &err), LT_OK, "%s", err.msg);
    snap_t got = snapshot(r);
    uint32_t diff = pieces_differing(r, &got, &trained);
    if (version == 1)
      cr_assert_eq(diff, 0, "the version 1 replay differs in %u pieces", diff);
    else
      cr_assert_gt(diff, 0, "a version 2 replay of a version 1 log should not match it bit for bit");
    snap_free(&got);
    zo_destroy(&z);
    model_destroy(&r);
  }
  free(read);
  snap_free(&trained);
  unlink(path);
}
