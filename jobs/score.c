/* The `score` kind: mean negative log-likelihood and perplexity of a JSONL file. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/generate.h"
#include "engine/text/jsonl.h"
#include "jobs/runners.h"

typedef struct tally {
  double nll;
  uint64_t tokens, rows;
} tally_t;

/* Scores tokens[first..n) given everything before them, in windows of at most ctx tokens (each window after the
 * first starts where the previous ended, without context from it). */
static lt_status_t score_tokens(model_t *m, const int32_t *tokens, size_t n, size_t first, size_t ctx, tally_t *t,
                                lt_err_t *err) {
  float *lp = malloc((ctx ? ctx : 1) * sizeof *lp);
  if (!lp) return lt_fail(err, LT_E_NOMEM, "out of memory");
  lt_status_t st = LT_OK;
  for (size_t w0 = 0; w0 + 1 < n && st == LT_OK; w0 += ctx - 1) {
    size_t len = n - w0 < ctx ? n - w0 : ctx;
    if ((st = model_score(m, tokens + w0, (uint32_t)len, lp, err)) != LT_OK) break;
    for (size_t i = 1; i < len; i++)
      if (w0 + i >= first) {
        t->nll -= lp[i];
        t->tokens++;
      }
    if (w0 + len == n) break;
  }
  free(lp);
  return st;
}

job_outcome_t run_score(job_ctx_t *ctx, lt_err_t *err) {
  const char *path = job_param_str(ctx, "model"), *data = job_param_str(ctx, "data");
  size_t window = (size_t)job_param_int(ctx, "context");
  uint64_t max_rows = (uint64_t)job_param_int(ctx, "max_rows");
  unsigned flags = job_param_bool(ctx, "add_bos") ? TOK_ADD_BOS : 0;
  tok_t *tok = NULL;
  model_t *m = job_model(ctx, path, &tok, err);
  if (!m) return JOB_FAILED;
  jsonl_t *r = jsonl_open(data, err);
  if (!r) return JOB_FAILED;
  job_outcome_t out = JOB_FAILED;
  tally_t t = {0};
  json_t *row;
  lt_status_t st = LT_OK;
  while ((!max_rows || t.rows < max_rows) && (st = jsonl_next(r, &row, err)) == LT_OK && row) {
    int32_t *ids = NULL;
    size_t n = 0, first = 1;
    st = jsonl_row_tokens(tok, row, flags, &ids, &n, &first, jsonl_where(r), err);
    json_decref(row);
    if (st == LT_OK) st = score_tokens(m, ids, n, first, window, &t, err);
    free(ids);
    if (st != LT_OK) goto done;
    t.rows++;
    job_progress(ctx, jsonl_offset(r), jsonl_size(r), "bytes");
    job_stop_t stop = job_should_stop(ctx);
    if (stop != JOB_GO) {
      out = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
      goto done;
    }
  }
  if (st != LT_OK) goto done;
  if (t.tokens == 0) {
    lt_fail(err, LT_E_INVALID, "%s: no tokens to score", data);
    goto done;
  }
  double mean = t.nll / (double)t.tokens;
  job_output_begin(ctx);
  job_output_float(ctx, "nll", mean);
  job_output_float(ctx, "perplexity", exp(mean));
  job_output_int(ctx, "tokens", (int64_t)t.tokens);
  job_output_int(ctx, "rows", (int64_t)t.rows);
  job_output_end(ctx);
  job_result_float(ctx, "nll", mean);
  job_result_float(ctx, "perplexity", exp(mean));
  job_result_int(ctx, "tokens", (int64_t)t.tokens);
  job_result_int(ctx, "rows", (int64_t)t.rows);
  out = JOB_SUCCEEDED;
done:
  jsonl_destroy(&r);
  return out;
}
