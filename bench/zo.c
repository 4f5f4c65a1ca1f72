/* Zeroth-order tuning cost (methods/zo.h), in the same run:
 * - step time of MeZO and of LeZO (half the blocks left out of each step) as Lathe runs them now (version 2: the
 *   forward passes read the weights perturbed, in the file's dtype), steps interleaved, against MeZO version 1
 *   (f32 weights perturbed in place and restored: four passes over every weight a step), with the time of one
 *   of those passes;
 * - peak device memory (gpu_stats bytes_peak, each on a fresh device) of a tuning step against plain inference of
 *   the same batch (the forward pass with per-token NLL) with the same weights, and against version 1 on f32.
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

static zo_t *zo_make(model_t *m, zo_method_t method, uint32_t drop, uint32_t version, const batch_t *b) {
  lt_err_t err = {0};
  zo_opts_t o = {.method = method, .eps = 1e-3f, .drop_layers = drop, .seed = 1, .version = version};
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

/* Seconds of one in-place perturbation pass of z (a +eps pass and its -eps undo, halved). */
static double time_pass(zo_t *z, uint64_t step) {
  lt_err_t err = {0};
  uint64_t seed = zo_step_seed(1, step);
  double t0 = now_s();
  if (zo_perturb(z, seed, 1e-3f, &err) != LT_OK || zo_perturb(z, seed, -1e-3f, &err) != LT_OK)
    die("zo_perturb", err.msg);
  return (now_s() - t0) / 2;
}

/* Peak device bytes of a fresh device holding the model (file dtypes, or f32) after one MeZO step of the given
 * version. */
static uint64_t tuning_peak(const char *path, bool f32, uint32_t version, const batch_t *b) {
  gpu_t *g = fresh_gpu();
  model_t *m = load(g, path, f32);
  zo_t *z = zo_make(m, ZO_MEZO, 0, version, b);
  time_step(z, 0, b);
  uint64_t peak = gpu_stats(g)->bytes_peak;
  zo_destroy(&z);
  model_destroy(&m);
  gpu_destroy(&g);
  return peak;
}

/* MeZO and LeZO (half the blocks left out) of today's arithmetic and MeZO of version 1 on one model and batch,
 * steps interleaved in rotating order so that a busy machine slows all alike (medians over `steps`); then the
 * memory figures. */
static int bench(const char *path, const char *label, uint32_t n, uint32_t len, uint32_t steps) {
  gpu_t *g = fresh_gpu(), *g1 = fresh_gpu();
  model_t *m = load(g, path, false), *m1 = load(g1, path, true);
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
  printf("%s: %.1fM parameters (%.0f%% in its %u blocks, matrices %s on the device), batch %u x %u tokens\n", label,
         (double)total / 1e6, 100.0 * (double)in_blocks / (double)total, L,
         lt_dtype_str(model_param_at(m, model_param_count(m) - 1)->dtype), n, len);
  zo_t *z[3] = {zo_make(m, ZO_MEZO, 0, ZO_VERSION, &b), zo_make(m, ZO_LEZO, drop, ZO_VERSION, &b),
                zo_make(m1, ZO_MEZO, 0, 1, &b)};
  for (int k = 0; k < 3; k++) time_step(z[k], 0, &b); /* warm-up: pipelines compiled */
  double *t[3], *pass = malloc(steps * sizeof *pass);
  for (int k = 0; k < 3; k++)
    if (!(t[k] = malloc(steps * sizeof *t[k]))) die("malloc", "out of memory");
  if (!pass) die("malloc", "out of memory");
  /* Rotating order: each variant runs first, second and third in turn. */
  for (uint32_t s = 0; s < steps; s++) {
    for (int j = 0; j < 3; j++) {
      int k = (int)((s + (uint32_t)j) % 3);
      t[k][s] = time_step(z[k], s + 1, &b);
    }
    pass[s] = time_pass(z[2], s + 1);
  }
  double step_m = median(t[0], steps), step_l = median(t[1], steps), step_v1 = median(t[2], steps);
  double pass_v1 = median(pass, steps);
  int rc = gpu_stats(g)->validation_errors || gpu_stats(g1)->validation_errors ? 1 : 0;
  for (int k = 0; k < 3; k++) zo_destroy(&z[k]), free(t[k]);
  free(pass);
  model_destroy(&m), model_destroy(&m1);
  gpu_destroy(&g), gpu_destroy(&g1);
  printf("  step time (median of %u): MeZO %.1f ms, LeZO (%u of %u blocks left out) %.1f ms: LeZO/MeZO step time "
         "%.2f (speed-up %.2fx)\n",
         steps, step_m * 1e3, drop, L, step_l * 1e3, step_l / step_m, step_m / step_l);
  printf("  against version 1 (f32 perturbed in place, 4 passes a step of %.1f ms each = %.0f%% of its %.1f ms "
         "step): MeZO steps %.2fx faster\n",
         pass_v1 * 1e3, 400.0 * pass_v1 / step_v1, step_v1 * 1e3, step_v1 / step_m);
  uint64_t tune = tuning_peak(path, false, ZO_VERSION, &b), tune_v1 = tuning_peak(path, true, 1, &b);
  uint64_t inf_file = inference_peak(path, false, &b);
  printf("  peak device memory: tuning %.1f MiB, inference %.1f MiB (same weights): tuning / inference %.2fx; "
         "version 1 (f32) %.1f MiB: %.2fx\n",
         mib(tune), mib(inf_file), (double)tune / (double)inf_file, mib(tune_v1), (double)tune_v1 / (double)inf_file);
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
