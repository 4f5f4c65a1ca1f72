/* The `selftest` kind: proves the worker owns a working Vulkan device by adding two vectors with op_add and
 * comparing with the CPU. */
#include <math.h>
#include <stdlib.h>

#include "engine/ops/ops.h"
#include "jobs/runners.h"

job_outcome_t run_selftest(job_ctx_t *ctx, lt_err_t *err) {
  uint32_t n = (uint32_t)job_param_int(ctx, "n");
  job_outcome_t out = JOB_FAILED;
  gpu_buf_t *ba = NULL, *bb = NULL, *by = NULL;
  gpu_cmd_t *c = NULL;
  float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *y = malloc(n * sizeof *y);
  if (!a || !b || !y) {
    lt_fail(err, LT_E_NOMEM, "cannot allocate %u floats", n);
    goto done;
  }
  job_progress(ctx, 0, 3, "checks");
  gpu_t *g = job_gpu(ctx, err);
  if (!g) goto done;
  const gpu_caps_t *caps = gpu_caps(g);
  job_log(ctx, "device: %s (%s %s)", caps->name, caps->driver_name, caps->driver_info);
  job_progress(ctx, 1, 3, "checks");
  if (job_should_stop(ctx) != JOB_GO) {
    out = JOB_CANCELLED;
    goto done;
  }
  for (uint32_t i = 0; i < n; i++) a[i] = (float)i * 0.25f - 7.0f, b[i] = 3.0f - (float)(i % 97) * 0.5f;
  if (!(ba = gpu_buf_new(g, n * sizeof(float), err)) || !(bb = gpu_buf_new(g, n * sizeof(float), err)) ||
      !(by = gpu_buf_new(g, n * sizeof(float), err)))
    goto done;
  if (gpu_upload(ba, 0, a, n * sizeof(float), err) || gpu_upload(bb, 0, b, n * sizeof(float), err)) goto done;
  if (!(c = gpu_cmd_begin(g, err))) goto done;
  if (op_add(c, gv(by), gv(ba), gv(bb), n, n, err) || gpu_cmd_finish(&c, err)) goto done;
  if (gpu_download(by, 0, y, n * sizeof(float), err)) goto done;
  job_progress(ctx, 2, 3, "checks");
  /* One f32 add per element: the device must return exactly the correctly rounded sum. */
  uint32_t bad = 0;
  double worst = 0;
  for (uint32_t i = 0; i < n; i++) {
    double d = fabs((double)y[i] - (double)(a[i] + b[i]));
    if (d > 0) bad++;
    if (d > worst) worst = d;
  }
  job_result_str(ctx, "device", caps->name);
  job_result_str(ctx, "driver", caps->driver_name);
  job_result_int(ctx, "n", n);
  job_result_int(ctx, "mismatches", bad);
  job_result_float(ctx, "max_abs_err", worst);
  if (bad) {
    lt_fail(err, LT_E_INVALID, "op_add on %s: %u of %u sums wrong (worst %g)", caps->name, bad, n, worst);
    goto done;
  }
  job_progress(ctx, 3, 3, "checks");
  out = JOB_SUCCEEDED;
done:
  gpu_cmd_abort(&c);
  gpu_buf_destroy(&ba), gpu_buf_destroy(&bb), gpu_buf_destroy(&by);
  free(a), free(b), free(y);
  return out;
}
