/* The `score` kind: mean negative log-likelihood and perplexity of a JSONL file. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/generate.h"
#include "jobs/runners.h"

#define MAX_LINE (64u << 20)

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
  FILE *f = fopen(data, "r");
  if (!f) {
    lt_fail(err, LT_E_IO, "cannot open %s", data);
    return JOB_FAILED;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  job_outcome_t out = JOB_FAILED;
  tally_t t = {0};
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  uint64_t lineno = 0;
  while ((len = getline(&line, &cap, f)) >= 0) {
    lineno++;
    if (max_rows && t.rows == max_rows) break;
    if ((size_t)len > MAX_LINE) {
      lt_fail(err, LT_E_LIMIT, "%s:%llu: line longer than %u bytes", data, (unsigned long long)lineno, MAX_LINE);
      goto done;
    }
    size_t k = (size_t)len;
    while (k && (line[k - 1] == '\n' || line[k - 1] == '\r' || line[k - 1] == ' ')) k--;
    if (k == 0) continue;
    json_error_t je;
    json_t *row = json_loadb(line, k, 0, &je);
    if (!row || !json_is_object(row)) {
      json_decref(row);
      lt_fail(err, LT_E_INVALID, "%s:%llu: not a JSON object (%s)", data, (unsigned long long)lineno,
              row ? "another JSON value" : je.text);
      goto done;
    }
    const char *text = json_string_value(json_object_get(row, "text"));
    const char *prompt = json_string_value(json_object_get(row, "prompt"));
    const char *completion = json_string_value(json_object_get(row, "completion"));
    if (!text && !(prompt && completion)) {
      json_decref(row);
      lt_fail(err, LT_E_INVALID, "%s:%llu: needs a \"text\" string, or \"prompt\" and \"completion\" strings", data,
              (unsigned long long)lineno);
      goto done;
    }
    int32_t *ids = NULL, *cids = NULL;
    size_t n = 0, nc = 0, first = 1;
    lt_status_t st = tok_encode(tok, text ? text : prompt, strlen(text ? text : prompt), flags, &ids, &n, err);
    if (st == LT_OK && !text) {
      /* The completion is tokenized on its own and appended, so its tokens are exactly what is scored. */
      st = tok_encode(tok, completion, strlen(completion), 0, &cids, &nc, err);
      int32_t *all = st == LT_OK ? realloc(ids, (n + nc + 1) * sizeof *all) : NULL;
      if (st == LT_OK && !all) st = lt_fail(err, LT_E_NOMEM, "out of memory");
      if (all) {
        ids = all;
        memcpy(ids + n, cids, nc * sizeof *cids);
        first = n;
        n += nc;
      }
    }
    json_decref(row);
    if (st == LT_OK) st = score_tokens(m, ids, n, first, window, &t, err);
    free(ids), free(cids);
    if (st != LT_OK) goto done;
    t.rows++;
    job_progress(ctx, (uint64_t)ftell(f), (uint64_t)size, "bytes");
    job_stop_t stop = job_should_stop(ctx);
    if (stop != JOB_GO) {
      out = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
      goto done;
    }
  }
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
  free(line);
  fclose(f);
  return out;
}
