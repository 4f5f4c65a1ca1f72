/* Distillation's cost over tuning (engine/model/train.h with train_set_distill, methods/distill.h), in the same run:
 * - step time of distill with kd, atkd and kid against a tune step of the same student on the same batch (the
 *   teacher's forward pass, and for kid the student's predicting pass, are the extra cost), full and LoRA: the
 *   median ratio of three interleaved pairs;
 * - peak device memory of each (gpu_stats bytes_peak, each on a fresh device), against the tune step's.
 * Teacher: argv[1] (default LATHE_SOURCE_DIR/models/lathe-kjv-llama); student: the teacher with its middle block
 * dropped (compress_write, as `compress --method block-drop` writes it), made in a temporary folder.
 * Exit status 1 on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "engine/gpu/gpu.h"
#include "engine/model/model.h"
#include "engine/model/train.h"
#include "methods/compress.h"
#include "methods/distill.h"
#include "methods/tune.h"

#define N_SEQ 8u
#define T 64u
#define STEPS 5u
#define REPS 3

/* The median of REPS values (sorted in place). */
static double median(double *v) {
  for (int i = 1; i < REPS; i++)
    for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
      double x = v[j];
      v[j] = v[j - 1], v[j - 1] = x;
    }
  return v[REPS / 2];
}

static _Noreturn void die(const char *what, const char *msg) {
  fprintf(stderr, "bench_distill: %s: %s\n", what, msg);
  exit(1);
}

typedef struct figure {
  double step_s;
  uint64_t peak;
} figure_t;

enum { TUNE = 0, KD, ATKD, KID };

/* STEPS optimiser steps after a warm-up step on a fresh device: seconds per step and the peak device memory. */
static figure_t measure(const char *teacher, const char *student, int method, bool full, const int32_t *ids,
                        const uint8_t *mask) {
  lt_err_t err = {0};
  gpu_t *g = gpu_new(NULL, &err);
  if (!g) die("gpu", err.msg);
  model_load_opts_t lo = {.force_f32 = full};
  model_t *sm = model_load(g, student, &lo, &err), *tm = NULL;
  if (!sm) die("student", err.msg);
  train_opts_t o = {.what = full ? TRAIN_FULL : TRAIN_LORA,
                    .lora_rank = 8,
                    .lora_alpha = 16,
                    .lora_targets = TRAIN_LORA_Q | TRAIN_LORA_V};
  train_t *s = train_new(sm, &o, &err), *t = NULL;
  if (!s) die("train", err.msg);
  if (method != TUNE) {
    model_load_opts_t tl = {0};
    if (!(tm = model_load(g, teacher, &tl, &err))) die("teacher", err.msg);
    train_opts_t fo = {.what = TRAIN_FROZEN};
    if (!(t = train_new(tm, &fo, &err))) die("teacher state", err.msg);
    train_distill_t d = {
        .kind = method == ATKD ? TRAIN_LOSS_ATKD : TRAIN_LOSS_KD, .teacher = t, .temperature = 1.0f, .lambda = 0.2f};
    if (train_set_distill(s, &d, &err) != LT_OK) die("distill", err.msg);
  }
  tune_opts_t to = {.lr = 1e-4, .clip = 1, .steps = STEPS + 1, .schedule = TUNE_CONSTANT};
  tuner_t *u = tuner_new(s, &to, &err);
  if (!u) die("tuner", err.msg);
  int32_t *kid_ids = malloc(N_SEQ * T * 4);
  uint8_t *picked = malloc(N_SEQ * (T - 1));
  double t0 = 0;
  for (uint32_t k = 0; k <= STEPS; k++) {
    if (k == 1) t0 = now_s();
    tune_batch_t b = {ids, mask, N_SEQ, T, NULL, NULL, NULL};
    if (method == KID) {
      distill_kid_pick(1, k, 0, mask, N_SEQ, T, 0.3, picked);
      if (distill_kid_rewrite(s, ids, picked, N_SEQ, T, kid_ids, NULL, &err) != LT_OK) die("kid", err.msg);
      b.labels = ids, b.ids = kid_ids;
    }
    tune_step_info_t info;
    if (tuner_step(u, &b, 1, &info, &err) != LT_OK) die("step", err.msg);
  }
  figure_t f = {(now_s() - t0) / STEPS, gpu_stats(g)->bytes_peak};
  free(kid_ids), free(picked);
  tuner_destroy(&u);
  train_destroy(&s), train_destroy(&t);
  model_destroy(&sm), model_destroy(&tm);
  gpu_destroy(&g);
  return f;
}

/* Writes the teacher with its middle block dropped into dir; returns the student's block count. */
static uint32_t make_student(const char *teacher, const char *dir) {
  lt_err_t err = {0};
  gpu_t *g = gpu_new(NULL, &err);
  if (!g) die("gpu", err.msg);
  model_t *m = model_load(g, teacher, NULL, &err);
  if (!m) die("teacher", err.msg);
  uint32_t L = model_config(m)->n_layers;
  model_destroy(&m);
  gpu_destroy(&g);
  if (L < 2) die("teacher", "needs 2 or more blocks to drop one");
  bool *drop = calloc(L, sizeof *drop);
  drop[L / 2] = true;
  compress_plan_t plan = {.drop_block = drop};
  if (compress_write(teacher, dir, &plan, NULL, NULL, &err) != LT_OK) die("block drop", err.msg);
  free(drop);
  return L - 1;
}

int main(int argc, char **argv) {
  const char *teacher = argc > 1 ? argv[1] : LATHE_SOURCE_DIR "/models/lathe-kjv-llama";
  char dir[] = "/tmp/lathe-bench-distill-XXXXXX";
  if (!mkdtemp(dir)) die("mkdtemp", "cannot make a temporary folder");
  uint32_t L = make_student(teacher, dir);
  int32_t *ids = malloc(N_SEQ * T * 4);
  uint8_t *mask = malloc(N_SEQ * (T - 1));
  uint64_t s = 0x5eed;
  for (uint32_t i = 0; i < N_SEQ * T; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    ids[i] = (int32_t)((s >> 33) % 1024);
  }
  memset(mask, 1, N_SEQ * (T - 1));
  printf("distill batch %ux%u, teacher %s, student the teacher less its middle block (%u blocks)\n", N_SEQ, T, teacher,
         L);
  const char *names[] = {"tune", "distill kd", "distill atkd", "distill kid (kd)"};
  /* Each distill figure is measured REPS times, each right after a tune run of its own (interleaved, so that the
   * machine's drift hits both alike); the median ratio is reported with the median times. */
  for (int full = 1; full >= 0; full--)
    for (int m = KD; m <= KID; m++) {
      double ratio[REPS], ts[REPS], ds[REPS];
      figure_t base = {0}, f = {0};
      for (int r = 0; r < REPS; r++) {
        base = measure(teacher, dir, TUNE, full, ids, mask);
        f = measure(teacher, dir, m, full, ids, mask);
        ratio[r] = f.step_s / base.step_s, ts[r] = base.step_s, ds[r] = f.step_s;
      }
      printf("%-5s %-17s %7.1f ms/step vs tune %7.1f ms/step: ratio %.2f (median of %d interleaved); peak device "
             "memory %.1f MiB vs %.1f MiB (ratio %.2f)\n",
             full ? "full" : "lora", names[m], 1e3 * median(ds), 1e3 * median(ts), median(ratio), REPS, mib(f.peak),
             mib(base.peak), (double)f.peak / (double)base.peak);
    }
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "bench_distill: could not remove %s\n", dir);
  free(ids), free(mask);
  return 0;
}
