/* The `steer-vector` kind: the mean difference of the residual stream entering one block between two prompt sets
 * (each prompt's mean over its positions after BOS, averaged over the set), saved as a steering vector. */
#include <math.h>
#include <stdlib.h>

#include "jobs/runners.h"
#include "jobs/steer_common.h"

job_outcome_t run_steer_vector(job_ctx_t *ctx, lt_err_t *err) {
  const char *path = job_param_str(ctx, "model"), *out_path = job_param_str(ctx, "output");
  bool bos = job_param_bool(ctx, "add_bos");
  tok_t *tok = NULL;
  model_t *m = job_model(ctx, path, &tok, err);
  if (!m) return JOB_FAILED;
  const model_config_t *cf = model_config(m);
  uint32_t d = cf->hidden_size, L = cf->n_layers;
  int64_t layer = job_param_int(ctx, "layer");
  if (layer >= L) {
    lt_fail(err, LT_E_INVALID, "layer %lld is outside the model's blocks 0..%u", (long long)layer, L - 1);
    return JOB_FAILED;
  }
  job_outcome_t out = JOB_FAILED;
  seqs_t pos = {0}, neg = {0};
  bool *want = calloc(L + 1, sizeof *want);
  double *mp = calloc((uint64_t)(L + 1) * d, sizeof *mp), *mn = calloc((uint64_t)(L + 1) * d, sizeof *mn);
  double *np = calloc(L + 1, sizeof *np), *nn = calloc(L + 1, sizeof *nn);
  float *v = calloc(d, sizeof *v);
  if (!want || !mp || !mn || !np || !nn || !v) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  want[layer] = true;
  unsigned flags = bos ? TOK_ADD_BOS : 0;
  if (texts_load(job_param_str(ctx, "positive"), tok, flags, &pos, err) != LT_OK) goto done;
  if (texts_load(job_param_str(ctx, "negative"), tok, flags, &neg, err) != LT_OK) goto done;
  uint32_t used_p = 0, used_n = 0;
  job_tally_t t = {.total = pos.n + neg.n};
  job_stop_t stop = JOB_GO;
  if (job_means(ctx, m, &pos, bos, want, mp, np, &used_p, &t, &stop, err) != LT_OK) goto done;
  if (stop == JOB_GO && job_means(ctx, m, &neg, bos, want, mn, nn, &used_n, &t, &stop, err) != LT_OK) goto done;
  if (stop != JOB_GO) {
    out = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
    goto done;
  }
  if (!used_p || !used_n) {
    lt_fail(err, LT_E_INVALID, "the %s set has no token past the BOS", used_p ? "negative" : "positive");
    goto done;
  }
  const double *a = mp + (uint64_t)layer * d, *b = mn + (uint64_t)layer * d;
  double norm = 0;
  for (uint32_t j = 0; j < d; j++) {
    v[j] = (float)(a[j] - b[j]);
    norm += (double)v[j] * v[j];
  }
  norm = sqrt(norm);
  double strength = steer_contrast(a, b, d, (np[layer] + nn[layer]) / 2);
  if (steer_vector_save(out_path, v, d, (uint32_t)layer, model_path(m), used_p, used_n, err) != LT_OK) goto done;
  job_output_begin(ctx);
  job_output_str(ctx, "output", out_path);
  job_output_int(ctx, "layer", layer);
  job_output_float(ctx, "norm", norm);
  job_output_float(ctx, "contrast", strength);
  job_output_float(ctx, "mean_norm", (np[layer] + nn[layer]) / 2);
  job_output_int(ctx, "positive", used_p);
  job_output_int(ctx, "negative", used_n);
  job_output_end(ctx);
  job_result_str(ctx, "output", out_path);
  job_result_int(ctx, "layer", layer);
  job_result_float(ctx, "norm", norm);
  job_result_float(ctx, "contrast", strength);
  out = JOB_SUCCEEDED;
done:
  seqs_free(&pos), seqs_free(&neg);
  free(want), free(mp), free(mn), free(np), free(nn), free(v);
  return out;
}
