#include "support/tgpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gpu_t *g_gpu;

void tgpu_setup(void) {
  lt_err_t err = {0};
  /* Share compiled SPIR-V between test processes (each Criterion test runs in its own process). */
  gpu_opts_t o = {.cache_dir = getenv("LATHE_TEST_CACHE_DIR")};
  g_gpu = gpu_new(&o, &err);
  cr_assert(g_gpu != NULL, "gpu_new: %s", err.msg);
}

void tgpu_teardown(void) {
  if (!g_gpu) return;
  uint64_t verr = gpu_stats(g_gpu)->validation_errors;
  gpu_destroy(&g_gpu);
  cr_assert_eq(verr, 0, "the validation layer reported %llu error(s)", (unsigned long long)verr);
}

gpu_t *tgpu(void) { return g_gpu; }

gpu_buf_t *tbuf_bytes(const void *src, uint64_t n) {
  lt_err_t err = {0};
  gpu_buf_t *b = gpu_buf_new(g_gpu, n, &err);
  cr_assert(b != NULL, "gpu_buf_new(%llu): %s", (unsigned long long)n, err.msg);
  lt_status_t st = src ? gpu_upload(b, 0, src, n, &err) : gpu_buf_zero(b, 0, n, &err);
  cr_assert_eq(st, LT_OK, "upload: %s", err.msg);
  return b;
}

gpu_buf_t *tbuf_f32(const float *src, uint64_t n) { return tbuf_bytes(src, n * 4); }

void *tread_bytes(gpu_buf_t *b, uint64_t n) {
  lt_err_t err = {0};
  void *p = malloc(n ? n : 1);
  cr_assert(p != NULL);
  cr_assert_eq(gpu_download(b, 0, p, n, &err), LT_OK, "download: %s", err.msg);
  return p;
}

float *tread_f32(gpu_buf_t *b, uint64_t n) { return tread_bytes(b, n * 4); }

gpu_cmd_t *tbegin(void) {
  lt_err_t err = {0};
  gpu_cmd_t *c = gpu_cmd_begin(g_gpu, &err);
  cr_assert(c != NULL, "gpu_cmd_begin: %s", err.msg);
  return c;
}

void tfinish(gpu_cmd_t **c) {
  lt_err_t err = {0};
  cr_assert_eq(gpu_cmd_finish(c, &err), LT_OK, "gpu_cmd_finish: %s", err.msg);
}

void tassert_close(const float *got, const float *want, uint64_t n, double atol, double rtol, const char *what) {
  uint64_t worst = 0, bad = 0;
  double worst_excess = -1;
  for (uint64_t i = 0; i < n; i++) {
    double tol = atol + rtol * fabs((double)want[i]);
    double d = fabs((double)got[i] - (double)want[i]);
    if (!(d <= tol)) { /* also catches NaN */
      bad++;
      double ex = isnan(d) ? INFINITY : d - tol;
      if (ex > worst_excess) {
        worst_excess = ex;
        worst = i;
      }
    }
  }
  cr_assert_eq(bad, 0, "%s: %llu of %llu elements out of tolerance (atol %g, rtol %g); worst [%llu] got %.9g want %.9g",
               what, (unsigned long long)bad, (unsigned long long)n, atol, rtol, (unsigned long long)worst,
               (double)got[worst], (double)want[worst]);
}

void trand(float *x, uint64_t n, float lo, float hi, uint64_t *seed) {
  for (uint64_t i = 0; i < n; i++) {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    x[i] = lo + (hi - lo) * (float)((*seed >> 40) * (1.0 / 16777216.0));
  }
}

float *talloc(uint64_t n) {
  float *p = calloc(n ? n : 1, sizeof *p);
  cr_assert(p != NULL);
  return p;
}
