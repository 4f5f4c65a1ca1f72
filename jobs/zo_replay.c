/* The `zo-replay` kind: rebuilds the weights of any step of a `tune-zo` run from its base model and its run log
 * (methods/zo.h: the same perturb, restore and update passes, without forward passes). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "methods/zo.h"
#include "jobs/runners.h"

job_outcome_t run_zo_replay(job_ctx_t *ctx, lt_err_t *err) {
  const char *log = job_param_str(ctx, "log"), *output = job_param_str(ctx, "output");
  const char *model = job_param_str(ctx, "model");
  int64_t want = job_param_int(ctx, "steps");
  zo_opts_t o;
  char base[4096];
  zo_record_t *recs = NULL;
  uint64_t n = 0;
  if (zo_log_read(log, &o, base, sizeof base, &recs, &n, err) != LT_OK) return JOB_FAILED;
  job_outcome_t out = JOB_FAILED;
  model_t *m = NULL;
  zo_t *z = NULL;
  uint64_t steps = want < 0 ? n : (uint64_t)want;
  if (steps > n) {
    lt_fail(err, LT_E_INVALID, "%s holds %" PRIu64 " steps, not %" PRIu64, log, n, steps);
    goto done;
  }
  gpu_t *g = job_gpu(ctx, err);
  if (!g) goto done;
  /* A version 1 log was made on f32 weights; version 2 tunes them in their own dtype. */
  model_load_opts_t lo = {.force_f32 = o.version == 1};
  if (!(m = model_load(g, *model ? model : base, &lo, err))) goto done;
  if (!(z = zo_new(m, &o, 1, 2, err))) goto done;
  job_log(ctx, "replaying %" PRIu64 " of %" PRIu64 " steps on %s", steps, n, *model ? model : base);
  for (uint64_t s = 0; s < steps; s++) {
    job_stop_t stop = job_should_stop(ctx);
    if (stop != JOB_GO) {
      out = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
      goto done;
    }
    if (zo_replay(z, &recs[s], err) != LT_OK) goto done;
    job_progress(ctx, s + 1, steps, "steps");
  }
  char steps_s[24];
  snprintf(steps_s, sizeof steps_s, "%" PRIu64, steps);
  const char *meta[] = {"lathe_zo_steps", steps_s};
  model_save_opts_t so = {.meta = meta, .n_meta = 1};
  if (model_save(m, output, &so, err) != LT_OK) goto done;
  job_artifact(ctx, "model", output);
  job_result_int(ctx, "steps", (int64_t)steps);
  job_result_str(ctx, "output", output);
  out = JOB_SUCCEEDED;
done:
  zo_destroy(&z);
  model_destroy(&m);
  free(recs);
  return out;
}
