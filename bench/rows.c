/* Benchmark of the row-wise ops against their CPU references (naive C, double accumulation, one thread) measured
 * in the same run, with the largest error seen. Each GPU figure is the mean of `reps` dispatches recorded into
 * one recorder, best of 5 such batches; the reduction path (subgroup or shared-memory tree) heads each block.
 * Usage: bench_rows [reps] (default 5). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "engine/gpu/gpu.h"
#include "engine/ops/ops.h"
#include "engine/ops/ops_rows.h"
#include "engine/ops/ref/ref.h"

typedef enum { B_RMS, B_LN, B_SOFTMAX, B_LSE, B_ARGMAX, B_TOPK, B_COSINE } bench_op_t;

typedef struct bench_case {
  const char *name;
  bench_op_t op;
  uint32_t rows, n, k;
} bench_case_t;

static void die(const char *what, const lt_err_t *err) {
  fprintf(stderr, "bench_rows: %s: %s\n", what, err->msg);
  exit(1);
}

static gpu_buf_t *buf_from(gpu_t *g, const void *src, uint64_t bytes) {
  lt_err_t err = {0};
  gpu_buf_t *b = gpu_buf_new(g, bytes, &err);
  if (!b) die("gpu_buf_new", &err);
  if ((src ? gpu_upload(b, 0, src, bytes, &err) : gpu_buf_zero(b, 0, bytes, &err)) != LT_OK) die("upload", &err);
  return b;
}

/* Records one dispatch of the case's op. */
static lt_status_t record(gpu_cmd_t *c, const bench_case_t *bc, gpu_buf_t *x, gpu_buf_t *x2, gpu_buf_t *w, gpu_buf_t *t,
                          gpu_buf_t *y, gpu_buf_t *y2, lt_err_t *err) {
  gpu_view_t none = {0};
  switch (bc->op) {
  case B_RMS: return op_rmsnorm(c, gv(y), gv(x), gv(w), bc->rows, bc->n, 1e-6f, err);
  case B_LN: return op_layernorm(c, gv(y), gv(x), gv(w), gv(w), bc->rows, bc->n, 1e-5f, err);
  case B_SOFTMAX: return op_softmax(c, gv(y), gv(x), bc->rows, bc->n, err);
  case B_LSE: return op_logsumexp(c, gv(y), t ? gv(y2) : none, gv(x), t ? gv(t) : none, bc->rows, bc->n, err);
  case B_ARGMAX: return op_argmax(c, gv(y), gv(x), bc->rows, bc->n, err);
  case B_TOPK: return op_topk(c, gv(y), gv(y2), gv(x), bc->rows, bc->n, bc->k, err);
  case B_COSINE: return op_cosine(c, gv(y), gv(x), gv(x2), bc->rows, bc->n, err);
  }
  return LT_E_INVALID;
}

/* Runs the CPU reference into want (floats, or u32 bits for the index outputs). */
static void reference(const bench_case_t *bc, const float *x, const float *x2, const float *w, const int32_t *t,
                      float *want, float *want2) {
  switch (bc->op) {
  case B_RMS: ref_rmsnorm(want, x, w, bc->rows, bc->n, 1e-6f); break;
  case B_LN: ref_layernorm(want, x, w, w, bc->rows, bc->n, 1e-5f); break;
  case B_SOFTMAX: ref_softmax(want, x, bc->rows, bc->n); break;
  case B_LSE: ref_logsumexp(want, want2, x, t, bc->rows, bc->n); break;
  case B_ARGMAX: ref_argmax((uint32_t *)want, x, bc->rows, bc->n); break;
  case B_TOPK: ref_topk((uint32_t *)want, want2, x, bc->rows, bc->n, bc->k); break;
  case B_COSINE: ref_cosine(want, x, x2, bc->rows, bc->n); break;
  }
}

static void fill(float *x, uint64_t n, float lo, float hi, uint64_t *s) {
  for (uint64_t i = 0; i < n; i++) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    x[i] = lo + (hi - lo) * (float)((*s >> 40) * (1.0 / 16777216.0));
  }
}

static void run_case(gpu_t *g, const bench_case_t *bc, int reps) {
  uint64_t len = (uint64_t)bc->rows * bc->n, seed = 42;
  bool idx_out = bc->op == B_ARGMAX || bc->op == B_TOPK;
  uint64_t out_len = bc->op == B_TOPK                                             ? (uint64_t)bc->rows * bc->k
                     : (bc->op == B_RMS || bc->op == B_LN || bc->op == B_SOFTMAX) ? len
                                                                                  : bc->rows;
  float *x = malloc(len * 4), *x2 = malloc(len * 4), *w = malloc(bc->n * 4ull);
  float *want = malloc(out_len * 4), *want2 = malloc(out_len * 4), *got = malloc(out_len * 4);
  int32_t *t = malloc(bc->rows * 4ull);
  if (!x || !x2 || !w || !want || !want2 || !got || !t) {
    fprintf(stderr, "bench_rows: out of memory\n");
    exit(1);
  }
  fill(x, len, -8, 8, &seed);
  fill(x2, len, -8, 8, &seed);
  fill(w, bc->n, 0.5f, 1.5f, &seed);
  for (uint32_t r = 0; r < bc->rows; r++) t[r] = (int32_t)((r * 7919u) % bc->n);
  gpu_buf_t *bx = buf_from(g, x, len * 4), *bx2 = buf_from(g, x2, len * 4), *bw = buf_from(g, w, bc->n * 4ull);
  gpu_buf_t *bt = bc->op == B_LSE ? buf_from(g, t, bc->rows * 4ull) : NULL;
  gpu_buf_t *by = buf_from(g, NULL, out_len * 4), *by2 = buf_from(g, NULL, out_len * 4);
  lt_err_t err = {0};
  double best = INFINITY;
  for (int round = 0; round < 6; round++) { /* round 0 warms up (pipeline creation); best of the other 5 */
    gpu_cmd_t *c = gpu_cmd_begin(g, &err);
    if (!c) die("gpu_cmd_begin", &err);
    double t0 = now_s();
    for (int i = 0; i < (round ? reps : 1); i++)
      if (record(c, bc, bx, bx2, bw, bt, by, by2, &err) != LT_OK) die(bc->name, &err);
    if (gpu_cmd_finish(&c, &err) != LT_OK) die("gpu_cmd_finish", &err);
    double dt = (now_s() - t0) / reps;
    if (round && dt < best) best = dt;
  }
  double t0 = now_s();
  reference(bc, x, x2, w, t, want, want2);
  double cpu = now_s() - t0;
  if (gpu_download(by, 0, got, out_len * 4, &err) != LT_OK) die("download", &err);
  double worst = 0;
  if (idx_out) {
    for (uint64_t i = 0; i < out_len; i++)
      if (((uint32_t *)got)[i] != ((uint32_t *)want)[i]) worst += 1;
  } else { /* normwise: the largest error over the largest reference value */
    double big = 0;
    for (uint64_t i = 0; i < out_len; i++) {
      worst = fmax(worst, fabs((double)got[i] - want[i]));
      big = fmax(big, fabs((double)want[i]));
    }
    worst /= big > 0 ? big : 1;
  }
  /* Bytes each op must move at least: the input rows once (twice for cosine) plus the outputs. */
  double bytes = 4.0 * (double)len * (bc->op == B_COSINE ? 2 : 1) + 4.0 * (double)out_len;
  printf("%-26s %6u x %-7u %8.3f ms  %7.2f GB/s  cpu-ref %8.3f ms  ratio %6.2fx  %s %.2g\n", bc->name, bc->rows, bc->n,
         best * 1e3, bytes / best * 1e-9, cpu * 1e3, cpu / best, idx_out ? "mismatches" : "max err/max|ref|", worst);
  free(x), free(x2), free(w), free(want), free(want2), free(got), free(t);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bx2), gpu_buf_destroy(&bw), gpu_buf_destroy(&bt);
  gpu_buf_destroy(&by), gpu_buf_destroy(&by2);
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 5;
  if (reps < 1) reps = 1;
  lt_err_t err = {0};
  gpu_opts_t o = {0};
  gpu_t *g = gpu_new(&o, &err);
  if (!g) die("gpu_new", &err);
  const gpu_caps_t *cp = gpu_caps(g);
  printf("device: %s (%s); subgroup %u, arithmetic %d; %d reps\n", cp->name, cp->driver_info, cp->subgroup_size,
         cp->subgroup_arith, reps);
  const bench_case_t cases[] = {
      {"rmsnorm", B_RMS, 512, 4096, 0},
      {"layernorm", B_LN, 512, 4096, 0},
      {"softmax vocab", B_SOFTMAX, 2, 150001, 0},
      {"softmax", B_SOFTMAX, 64, 32000, 0},
      {"logsumexp+nll", B_LSE, 64, 32000, 0},
      {"argmax vocab", B_ARGMAX, 8, 150001, 0},
      {"topk router E=8 k=2", B_TOPK, 4096, 8, 2},
      {"topk router E=64 k=8", B_TOPK, 4096, 64, 8},
      {"topk wide k=32", B_TOPK, 4, 32000, 32},
      {"cosine", B_COSINE, 512, 4096, 0},
  };
  for (int tree = 0; tree < 2; tree++) {
    if (tree && !cp->subgroup_arith) break;
    op_rows_force_tree(tree);
    printf("-- %s reductions\n", tree ? "shared-memory tree" : cp->subgroup_arith ? "subgroup" : "shared-memory tree");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(g, &cases[i], reps);
  }
  gpu_destroy(&g);
  return 0;
}
