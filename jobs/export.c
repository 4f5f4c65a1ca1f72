/* The `export` kind: a Hugging Face folder written as one GGUF file (engine/model/gguf_write.h), CPU only. */
#include <stdio.h>
#include <sys/stat.h>

#include "engine/model/gguf_write.h"
#include "jobs/runners.h"

job_outcome_t run_export(job_ctx_t *ctx, lt_err_t *err) {
  const char *src = job_param_str(ctx, "model"), *out = job_param_str(ctx, "output");
  struct stat sb;
  if (!job_param_bool(ctx, "force") && stat(out, &sb) == 0) {
    lt_fail(err, LT_E_INVALID, "%s exists (--force true replaces it)", out);
    return JOB_FAILED;
  }
  job_log(ctx, "writing %s as %s", src, out);
  if (model_export_gguf(src, out, err) != LT_OK) return JOB_FAILED;
  job_artifact(ctx, "gguf", out);
  long long bytes = stat(out, &sb) == 0 ? (long long)sb.st_size : -1;
  job_output_begin(ctx);
  job_output_str(ctx, "output", out);
  job_output_int(ctx, "bytes", bytes);
  job_output_end(ctx);
  job_result_str(ctx, "output", out);
  job_result_int(ctx, "bytes", bytes);
  return JOB_SUCCEEDED;
}
