/* The `selfgen` kind: for (instruction, input) pairs the model writes its own target, greedily; targets that
 * end a sentence are kept as training JSONL {prompt, completion} (selfgen.jsonl, for tune-zo and later tuning),
 * the others go to dropped.jsonl. One output record per pair. */
#include <stdlib.h>
#include <string.h>

#include "engine/text/lines.h"
#include "methods/selfgen.h"
#include "jobs/datajob.h"
#include "jobs/runners.h"

/* One (instruction, input) pair of a batch. */
typedef struct pair {
  uint64_t row;
  const char *instruction, *input; /* owned by the row's JSON or the pool */
  char *prompt, *completion;
} pair_t;

typedef struct tally {
  uint64_t rows, pairs, kept;
} tally_t;

/* Adds the pairs of one input row: its own "instruction" if it has one, else per_input from the pool. */
static lt_status_t row_pairs(json_t *row, const lines_t *r, const dj_pool_t *pool, size_t per_input, uint64_t row_no,
                             pair_t *pairs, size_t *np, lt_err_t *err) {
  const char *input = json_string_value(json_object_get(row, "input"));
  if (!input) input = json_string_value(json_object_get(row, "text"));
  const char *own = json_string_value(json_object_get(row, "instruction"));
  if (!input && !own)
    return lt_fail(err, LT_E_INVALID, "%s:%llu: needs an \"input\" (or \"text\") string, or an \"instruction\"",
                   lines_path(r), (unsigned long long)lines_lineno(r));
  if (!own && !pool->n)
    return lt_fail(err, LT_E_INVALID,
                   "%s:%llu: the row has no \"instruction\" and no pool was given "
                   "(--instruction or --instructions)",
                   lines_path(r), (unsigned long long)lines_lineno(r));
  size_t k = own ? 1 : per_input;
  for (size_t j = 0; j < k; j++)
    pairs[(*np)++] = (pair_t){.row = row_no,
                              .instruction = own ? own : pool->v[sg_pick(row_no - 1, j, per_input, pool->n)],
                              .input = input ? input : ""};
  return LT_OK;
}

/* Renders, generates and writes the pairs in chunks of batch. */
static lt_status_t run_pairs(job_ctx_t *ctx, dj_model_t *dm, pair_t *pairs, size_t np, size_t batch, FILE *kept,
                             FILE *dropped, tally_t *t, lt_err_t *err) {
  const char **prompts = calloc(batch, sizeof *prompts);
  char **outs = calloc(batch, sizeof *outs);
  lt_status_t st = prompts && outs ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  for (size_t at = 0; at < np && st == LT_OK; at += batch) {
    size_t n = np - at < batch ? np - at : batch;
    for (size_t i = 0; i < n && st == LT_OK; i++) {
      pair_t *p = &pairs[at + i];
      char *msg = sg_message(p->instruction, p->input);
      chat_msg_t m[] = {{"user", msg ? msg : ""}};
      size_t len;
      st = msg ? chat_render(dm->tmpl, m, 1, true, &p->prompt, &len, err) : lt_fail(err, LT_E_NOMEM, "out of memory");
      free(msg);
      prompts[i] = p->prompt;
    }
    if (st != LT_OK || (st = lm_generate(&dm->lm, prompts, n, outs, err)) != LT_OK) break;
    if (job_should_stop(ctx) != JOB_GO) {
      for (size_t i = 0; i < n; i++) free(outs[i]);
      break;
    }
    for (size_t i = 0; i < n; i++) {
      pair_t *p = &pairs[at + i];
      p->completion = outs[i];
      size_t len = strlen(p->completion);
      while (len && strchr(" \t\r\n", p->completion[len - 1])) p->completion[--len] = '\0';
      bool keep = sg_ends_sentence(p->completion);
      job_output_begin(ctx);
      job_output_int(ctx, "row", (int64_t)p->row);
      job_output_str(ctx, "instruction", p->instruction);
      job_output_str(ctx, "input", p->input);
      job_output_str(ctx, "completion", p->completion);
      job_output_bool(ctx, "kept", keep);
      job_output_end(ctx);
      json_t *o = json_object();
      json_object_set_new(o, "prompt", json_string(p->prompt));
      json_object_set_new(o, "completion", json_string(p->completion));
      json_object_set_new(o, "instruction", json_string(p->instruction));
      json_object_set_new(o, "input", json_string(p->input));
      if (st == LT_OK)
        st = dj_write(keep ? kept : dropped, o, err);
      else
        json_decref(o);
      t->pairs++;
      t->kept += keep;
    }
  }
  free(prompts), free(outs);
  return st;
}

job_outcome_t run_selfgen(job_ctx_t *ctx, lt_err_t *err) {
  const char *data = job_param_str(ctx, "data");
  uint64_t max_rows = (uint64_t)job_param_int(ctx, "max_rows"), total = 0;
  size_t batch = (size_t)job_param_int(ctx, "batch"), per_input = (size_t)job_param_int(ctx, "per_input");
  job_outcome_t out = JOB_FAILED;
  dj_pool_t pool = {0};
  dj_model_t dm = {0};
  lines_t *r = NULL;
  FILE *kept = NULL, *dropped = NULL;
  const char **stops = NULL;
  json_t **rows = calloc(batch, sizeof *rows);
  pair_t *pairs = calloc(batch * per_input, sizeof *pairs);
  tally_t t = {0};
  if (!rows || !pairs) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  if (dj_pool_load(ctx, &pool, err) != LT_OK || dj_count_rows(data, max_rows, &total, err) != LT_OK ||
      dj_model_open(ctx, &dm, err) != LT_OK)
    goto done;
  dm.lm.gen = (gen_opts_t){.max_tokens = (uint32_t)job_param_int(ctx, "max_tokens")}; /* greedy */
  /* The stop strings: the template's own (the plain one's next turn), then the job's. */
  size_t n_tmpl = 0, n_job = job_param_list_len(ctx, "stop");
  while (dm.lm.stops && dm.lm.stops[n_tmpl]) n_tmpl++;
  if (!(stops = calloc(n_tmpl + n_job + 1, sizeof *stops))) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n_tmpl; i++) stops[i] = dm.lm.stops[i];
  for (size_t i = 0; i < n_job; i++) stops[n_tmpl + i] = job_param_list_at(ctx, "stop", i);
  dm.lm.stops = stops;
  if (lm_max_new(&dm.lm) < dm.lm.gen.max_tokens)
    job_log(ctx, "max_tokens %u is more than half the context window: generating %u tokens at most",
            dm.lm.gen.max_tokens, lm_max_new(&dm.lm));
  job_log(ctx, "%zu instructions in the pool, %zu per input", pool.n, per_input);
  if (!(r = lines_open(data, 0, err)) || !(kept = dj_create(ctx, "selfgen.jsonl", err)) ||
      !(dropped = dj_create(ctx, "dropped.jsonl", err)))
    goto done;
  job_progress(ctx, 0, total, "rows");
  bool more = true;
  while (more && t.rows < total) {
    size_t nr = 0, np = 0;
    lt_status_t st = LT_OK;
    while (st == LT_OK && nr < batch && t.rows + nr < total) {
      int got = lines_next_json(r, &rows[nr], err);
      if (got <= 0) {
        more = false;
        st = (lt_status_t)got;
        break;
      }
      st = row_pairs(rows[nr], r, &pool, per_input, t.rows + nr + 1, pairs, &np, err);
      nr++;
    }
    if (st == LT_OK) st = run_pairs(ctx, &dm, pairs, np, batch, kept, dropped, &t, err);
    for (size_t i = 0; i < np; i++) free(pairs[i].prompt), free(pairs[i].completion);
    for (size_t i = 0; i < nr; i++) json_decref(rows[i]);
    job_stop_t stop = job_should_stop(ctx);
    if (stop != JOB_GO) {
      out = dj_stopped(stop);
      goto done;
    }
    if (st != LT_OK) goto done;
    t.rows += nr;
    job_progress(ctx, t.rows, total, "rows");
  }
  if (dm.lm.n_truncated)
    job_log(ctx, "%llu prompts were cut to the %u-token context window", (unsigned long long)dm.lm.n_truncated,
            lm_window(&dm.lm));
  job_log(ctx, "%llu inputs, %llu pairs: %llu kept (ending a sentence), %llu dropped", (unsigned long long)t.rows,
          (unsigned long long)t.pairs, (unsigned long long)t.kept, (unsigned long long)(t.pairs - t.kept));
  job_result_int(ctx, "rows", (int64_t)t.rows);
  job_result_int(ctx, "pairs", (int64_t)t.pairs);
  job_result_int(ctx, "kept", (int64_t)t.kept);
  job_result_int(ctx, "dropped", (int64_t)(t.pairs - t.kept));
  out = JOB_SUCCEEDED;
done:
  if (kept) fclose(kept);
  if (dropped) fclose(dropped);
  lines_destroy(&r);
  dj_model_close(&dm);
  dj_pool_free(&pool);
  free(stops), free(rows), free(pairs);
  return out;
}
