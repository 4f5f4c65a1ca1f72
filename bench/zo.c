/* Zeroth-order tuning cost (methods/zo.h), in the same run:
 * - step time of LeZO (half the blocks left out of each step) against MeZO on the same model and batch, steps
 *   interleaved, with the time of one perturbation pass: the only work LeZO saves (4 passes a step);
 * - peak device memory (gpu_stats bytes_peak, each on a fresh device) of a tuning step against plain inference of
 *   the same batch (the forward pass with per-token NLL), with the file's weights and with f32 weights (tuning
 *   needs f32).
 * Models: argv[1] (default LATHE_SOURCE_DIR/models/lathe-kjv-llama, else stories260K) and the ~100M synthetic f16
 * LLaMA of bench/synth.h. LATHE_BENCH_QUICK=1 shrinks the batches. Exit status 1 on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "clock.h"
#include "engine/gpu/gpu.h"
#include "engine/model/model.h"
#include "methods/zo.h"
#include "synth.h"

static char synth_dir[256];

/* Prints what failed, removes the synthetic folder and exits with status 1. */
static _Noreturn void die(const char *what, const char *msg) {
  fprintf(stderr, "bench_zo: %s: %s\n", what, msg);
  synth_remove(synth_dir);
  exit(1);
}

/* A batch of n random rows of len tokens (text rows: every token after the first scored). */
typedef struct batch {
  uint32_t n, len;
  int32_t *ids;
  zo_example_t *ex;
} batch_t;

static batch_t batch_make(uint32_t n, uint32_t len, uint32_t vocab) {
  batch_t b = {.n = n, .len = len, .ids = malloc((uint64_t)n * len * 4), .ex = malloc(n * sizeof(zo_example_t))};
  if (!b.ids || !b.ex) die("malloc", "out of memory");
  uint64_t seed = 7;
  for (uint64_t i = 0; i < (uint64_t)n * len; i++) b.ids[i] = (int32_t)(splitmix64(&seed) % vocab);
  for (uint32_t i = 0; i < n; i++) b.ex[i] = (zo_example_t){.ids = b.ids + (uint64_t)i * len, .n = len, .first = 0};
  return b;
}

static gpu_t *fresh_gpu(void) {
  lt_err_t err = {0};
  gpu_t *g = gpu_new(NULL, &err);
  if (!g) die("gpu_new", err.msg);
  return g;
}

static model_t *load(gpu_t *g, const char *path, bool f32) {
  lt_err_t err = {0};
  model_load_opts_t o = {.force_f32 = f32};
  model_t *m = model_load(g, path, &o, &err);
  if (!m) die("model_load", err.msg);
  return m;
}

/* Peak device bytes of plain inference of the batch on a fresh device: the model (file dtypes, or f32), one
 * sequence per row and a forward pass with per-token NLL, as zo_loss runs it. */
static uint64_t inference_peak(const char *path, bool f32, const batch_t *b) {
  gpu_t *g = fresh_gpu();
  model_t *m = load(g, path, f32);
  lt_err_t err = {0};
  model_seq_t **seqs = calloc(b->n, sizeof *seqs);
  model_item_t *it = calloc(b->n, sizeof *it);
  float *nll = malloc((uint64_t)b->n * b->len * 4);
  if (!seqs || !it || !nll) die("malloc", "out of memory");
  for (uint32_t i = 0; i < b->n; i++) {
    if (!(seqs[i] = model_seq_new(m, b->len, &err))) die("model_seq_new", err.msg);
    it[i] = (model_item_t){.seq = seqs[i],
                           .tokens = b->ex[i].ids,
                           .n_tokens = b->len - 1,
                           .out = MODEL_OUT_NLL,
                           .result = nll + (uint64_t)i * b->len,
                           .targets = b->ex[i].ids + 1};
  }
  if (model_forward(m, it, b->n, NULL, &err) != LT_OK) die("model_forward", err.msg);
  uint64_t peak = gpu_stats(g)->bytes_peak;
  for (uint32_t i = 0; i < b->n; i++) model_seq_destroy(&seqs[i]);
  free(seqs), free(it), free(nll);
  model_destroy(&m);
  gpu_destroy(&g);
  return peak;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The median of v[n] (sorts v). */
static double median(double *v, uint32_t n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static zo_t *zo_make(model_t *m, zo_method_t method, uint32_t drop, const batch_t *b) {
  lt_err_t err = {0};
  zo_opts_t o = {.method = method, .eps = 1e-3f, .drop_layers = drop, .seed = 1};
  zo_t *z = zo_new(m, &o, b->n, b->len, &err);
  if (!z) die("zo_new", err.msg);
  return z;
}

/* Seconds of one step of z on the batch. */
static double time_step(zo_t *z, uint64_t step, const batch_t *b) {
  lt_err_t err = {0};
  zo_record_t rec;
  double t0 = now_s();
  if (zo_step(z, step, 1e-6f, b->ex, b->n, &rec, &err) != LT_OK) die("zo_step", err.msg);
  return now_s() - t0;
}

/* Seconds of one perturbation pass of z (a +eps pass and its -eps undo, halved). */
static double time_pass(zo_t *z, uint64_t step) {
  lt_err_t err = {0};
  uint64_t seed = zo_step_seed(1, step);
  double t0 = now_s();
  if (zo_perturb(z, seed, 1e-3f, &err) != LT_OK || zo_perturb(z, seed, -1e-3f, &err) != LT_OK)
    die("zo_perturb", err.msg);
  return (now_s() - t0) / 2;
}

/* MeZO against LeZO (half the blocks left out) on one model and batch, steps interleaved in ABBA order so that a busy
 * machine slows both alike (medians over `steps`); then the memory figures. */
static int bench(const char *path, const char *label, uint32_t n, uint32_t len, uint32_t steps) {
  gpu_t *g = fresh_gpu();
  model_t *m = load(g, path, true);
  const model_config_t *c = model_config(m);
  uint32_t L = c->n_layers, drop = L / 2;
  uint64_t in_blocks = 0, total = 0;
  for (uint32_t i = 0; i < model_param_count(m); i++) {
    const model_param_t *p = model_param_at(m, i);
    uint64_t k = (uint64_t)p->n_rows * p->cols;
    total += k;
    if (p->layer >= 0) in_blocks += k;
  }
  batch_t b = batch_make(n, len, c->vocab_size);
  printf("%s: %.1fM parameters (%.0f%% in its %u blocks), batch %u x %u tokens\n", label, (double)total / 1e6,
         100.0 * (double)in_blocks / (double)total, L, n, len);
  /* The tuning peak: the model in f32 and one MeZO step (its warm-up) on a fresh device. */
  zo_t *mezo = zo_make(m, ZO_MEZO, 0, &b);
  time_step(mezo, 0, &b);
  uint64_t tune_peak = gpu_stats(g)->bytes_peak;
  zo_t *lezo = zo_make(m, ZO_LEZO, drop, &b);
  time_step(lezo, 0, &b);
  double *tm = malloc(steps * sizeof *tm), *tl = malloc(steps * sizeof *tl);
  double *pm = malloc(steps * sizeof *pm), *pl = malloc(steps * sizeof *pl);
  if (!tm || !tl || !pm || !pl) die("malloc", "out of memory");
  /* ABBA order: whichever method runs second in a round runs first in the next. */
  for (uint32_t s = 0; s < steps; s++) {
    if (s % 2 == 0) {
      tm[s] = time_step(mezo, s + 1, &b), tl[s] = time_step(lezo, s + 1, &b);
      pm[s] = time_pass(mezo, s + 1), pl[s] = time_pass(lezo, s + 1);
    } else {
      tl[s] = time_step(lezo, s + 1, &b), tm[s] = time_step(mezo, s + 1, &b);
      pl[s] = time_pass(lezo, s + 1), pm[s] = time_pass(mezo, s + 1);
    }
  }
  double step_m = median(tm, steps), step_l = median(tl, steps), pass_m = median(pm, steps);
  double pass_l = median(pl, steps);
  int rc = gpu_stats(g)->validation_errors ? 1 : 0;
  zo_destroy(&mezo), zo_destroy(&lezo);
  free(tm), free(tl), free(pm), free(pl);
  model_destroy(&m);
  gpu_destroy(&g);
  printf("  step time (median of %u): MeZO %.1f ms, LeZO (%u of %u blocks left out) %.1f ms: LeZO speed-up %.2fx\n",
         steps, step_m * 1e3, drop, L, step_l * 1e3, step_m / step_l);
  printf("  one perturbation pass: MeZO %.1f ms (x4 = %.0f%% of its step), LeZO %.1f ms (%.2fx less work)\n",
         pass_m * 1e3, 400.0 * pass_m / step_m, pass_l * 1e3, pass_m / pass_l);
  uint64_t inf_file = inference_peak(path, false, &b), inf_f32 = inference_peak(path, true, &b);
  printf("  peak device memory: tuning %.1f MiB, inference %.1f MiB (file weights) / %.1f MiB (f32 weights): "
         "tuning / inference %.2fx / %.2fx\n",
         mib(tune_peak), mib(inf_file), mib(inf_f32), (double)tune_peak / (double)inf_file,
         (double)tune_peak / (double)inf_f32);
  if (rc) printf("  validation layer: errors reported\n");
  free(b.ids), free(b.ex);
  return rc;
}

int main(int argc, char **argv) {
  const char *q = getenv("LATHE_BENCH_QUICK");
  bool quick = q && *q && strcmp(q, "0") != 0;
  struct stat sb;
  const char *path = argc > 1 ? argv[1] : LATHE_SOURCE_DIR "/models/lathe-kjv-llama", *label = path;
  if (argc <= 1 && stat(path, &sb) != 0) {
    printf("note: %s not found: measuring stories260K instead\n", path);
    path = LATHE_SOURCE_DIR "/tests/fixtures/stories260K/hf";
  }
  const char *slash = strrchr(path, '/');
  label = slash && slash[1] ? slash + 1 : path;
  if (!strcmp(label, "hf")) label = "stories260K";
  int rc = bench(path, label, quick ? 4 : 16, quick ? 32 : 64, quick ? 4 : 10);
  char msg[512];
  double t0 = now_s();
  if (!synth_write(synth_dir, sizeof synth_dir, msg, sizeof msg)) die("synthetic model", msg);
  printf("synthetic model written to %s in %.2f s\n", synth_dir, now_s() - t0);
  rc |= bench(synth_dir, "synthetic-100M-f16", quick ? 1 : 4, quick ? 16 : 32, quick ? 2 : 4);
  synth_remove(synth_dir);
  return rc;
}
