/* The `feedback` kind: self-reference AI feedback over a JSONL of {prompt, a, b} (methods/feedback.h). Writes
 * feedback.jsonl (every row, with the votes, critiques, the lean and a null label when the orders disagree) and
 * preferences.jsonl (the consistent rows only, {prompt, chosen, rejected, strength, consistent}, ready for
 * preference training), and sends one output record per row. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "methods/feedback.h"
#include "engine/text/lines.h"
#include "jobs/datajob.h"
#include "jobs/runners.h"

typedef struct tally {
  uint64_t rows, consistent, by_text, votes;
  double strength;
} tally_t;

static json_t *json_num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* Writes one judged row to both files and as an output record. */
static lt_status_t emit(job_ctx_t *ctx, FILE *all, FILE *prefs, uint64_t row, const fb_item_t *it, const fb_result_t *r,
                        tally_t *t, lt_err_t *err) {
  const char *chosen = r->chosen < 0 ? NULL : r->chosen == 0 ? it->a : it->b;
  const char *rejected = r->chosen < 0 ? NULL : r->chosen == 0 ? it->b : it->a;
  static const char *const ab[] = {"a", "b"};
  const char *vote[2] = {ab[r->order[0].pick], ab[1 - r->order[1].pick]};
  const char *by[2] = {r->order[0].by_text ? "text" : "loglik", r->order[1].by_text ? "text" : "loglik"};
  job_output_begin(ctx);
  job_output_int(ctx, "row", (int64_t)row);
  job_output_str(ctx, "prompt", it->prompt);
  if (chosen) {
    job_output_str(ctx, "chosen", chosen);
    job_output_str(ctx, "rejected", rejected);
  } else {
    job_output_null(ctx, "chosen");
    job_output_null(ctx, "rejected");
  }
  job_output_float(ctx, "strength", r->strength);
  job_output_bool(ctx, "consistent", r->consistent);
  job_output_list_begin(ctx, "votes");
  job_output_list_str(ctx, vote[0]), job_output_list_str(ctx, vote[1]);
  job_output_list_end(ctx);
  job_output_list_begin(ctx, "decided_by");
  job_output_list_str(ctx, by[0]), job_output_list_str(ctx, by[1]);
  job_output_list_end(ctx);
  job_output_end(ctx);

  json_t *o = json_object();
  json_object_set_new(o, "prompt", json_string(it->prompt));
  json_object_set_new(o, "chosen", chosen ? json_string(chosen) : json_null());
  json_object_set_new(o, "rejected", rejected ? json_string(rejected) : json_null());
  json_object_set_new(o, "strength", json_real(r->strength));
  json_object_set_new(o, "consistent", json_boolean(r->consistent));
  json_object_set_new(o, "lean", json_string(ab[r->lean]));
  json_object_set_new(o, "lean_margin", json_num(r->lean_margin));
  json_object_set_new(o, "a", json_string(it->a));
  json_object_set_new(o, "b", json_string(it->b));
  json_object_set_new(o, "own_answer", json_string(r->own));
  json_t *orders = json_array();
  for (int k = 0; k < 2; k++) {
    const fb_vote_t *v = &r->order[k];
    json_t *e = json_object();
    json_object_set_new(e, "shown_first", json_string(ab[k]));
    json_object_set_new(e, "critique", json_string(v->critique));
    json_object_set_new(e, "verdict_in_text", v->said < 0 ? json_null() : json_string(v->said ? "B" : "A"));
    json_object_set_new(e, "loglik_A", json_num(v->ll[0]));
    json_object_set_new(e, "loglik_B", json_num(v->ll[1]));
    json_object_set_new(e, "vote", json_string(vote[k]));
    json_object_set_new(e, "decided_by", json_string(by[k]));
    json_object_set_new(e, "mean_loglik_a", json_num(v->mean[0]));
    json_object_set_new(e, "mean_loglik_b", json_num(v->mean[1]));
    json_array_append_new(orders, e);
  }
  json_object_set_new(o, "orders", orders);
  lt_status_t st = dj_write(all, o, err);
  if (st == LT_OK && chosen) {
    o = json_object();
    json_object_set_new(o, "prompt", json_string(it->prompt));
    json_object_set_new(o, "chosen", json_string(chosen));
    json_object_set_new(o, "rejected", json_string(rejected));
    json_object_set_new(o, "strength", json_real(r->strength));
    json_object_set_new(o, "consistent", json_true());
    st = dj_write(prefs, o, err);
  }
  t->rows++;
  t->consistent += r->consistent;
  t->by_text += r->order[0].by_text + r->order[1].by_text;
  t->votes += 2;
  if (r->consistent) t->strength += r->strength;
  return st;
}

/* The strings of a {prompt, a, b} row; false with err naming the line. */
static bool row_item(const lines_t *r, json_t *row, fb_item_t *it, lt_err_t *err) {
  it->prompt = json_string_value(json_object_get(row, "prompt"));
  it->a = json_string_value(json_object_get(row, "a"));
  it->b = json_string_value(json_object_get(row, "b"));
  if (it->prompt && it->a && it->b && *it->a && *it->b) return true;
  lt_fail(err, LT_E_INVALID, "%s:%llu: needs \"prompt\", \"a\" and \"b\" strings (a and b not empty)", lines_path(r),
          (unsigned long long)lines_lineno(r));
  return false;
}

/* Reads up to want rows into rows[] and items[] (*more false at the end of the file); on failure nothing is
 * left held. */
static lt_status_t read_batch(lines_t *r, json_t **rows, fb_item_t *items, size_t want, size_t *n, bool *more,
                              lt_err_t *err) {
  *n = 0;
  while (*n < want) {
    int got = lines_next_json(r, &rows[*n], err);
    if (got == 1 && row_item(r, rows[*n], &items[*n], err)) {
      (*n)++;
      continue;
    }
    if (got == 1) json_decref(rows[*n]);
    if (got == 0) {
      *more = false;
      return LT_OK;
    }
    for (size_t i = 0; i < *n; i++) json_decref(rows[i]);
    *n = 0;
    return err->code;
  }
  return LT_OK;
}

job_outcome_t run_feedback(job_ctx_t *ctx, lt_err_t *err) {
  const char *data = job_param_str(ctx, "data");
  uint64_t max_rows = (uint64_t)job_param_int(ctx, "max_rows"), total = 0;
  size_t batch = (size_t)job_param_int(ctx, "batch");
  fb_opts_t opts = {.principle = job_param_str(ctx, "principle"),
                    .decide = !strcmp(job_param_str(ctx, "decide"), "loglik") ? FB_DECIDE_LOGLIK
                                                                              : FB_DECIDE_TEXT_THEN_LOGLIK};
  job_outcome_t out = JOB_FAILED;
  dj_model_t dm = {0};
  lines_t *r = NULL;
  FILE *all = NULL, *prefs = NULL;
  json_t **rows = calloc(batch, sizeof *rows);
  fb_item_t *items = calloc(batch, sizeof *items);
  fb_result_t *res = calloc(batch, sizeof *res);
  tally_t t = {0};
  if (!rows || !items || !res) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  if (dj_count_rows(data, max_rows, &total, err) != LT_OK || dj_model_open(ctx, &dm, err) != LT_OK) goto done;
  dm.lm.gen = (gen_opts_t){.max_tokens = (uint32_t)job_param_int(ctx, "max_tokens"),
                           .sample = {.temperature = (float)job_param_float(ctx, "temperature"),
                                      .top_k = (uint32_t)job_param_int(ctx, "top_k"),
                                      .top_p = (float)job_param_float(ctx, "top_p")},
                           .seed = (uint64_t)job_param_int(ctx, "seed")};
  if (lm_max_new(&dm.lm) < dm.lm.gen.max_tokens)
    job_log(ctx, "max_tokens %u is more than half the context window: generating %u tokens at most",
            dm.lm.gen.max_tokens, lm_max_new(&dm.lm));
  fb_annotator_t an = fb_annotator_lm(&dm.lm);
  if (!(r = lines_open(data, 0, err)) || !(all = dj_create(ctx, "feedback.jsonl", err)) ||
      !(prefs = dj_create(ctx, "preferences.jsonl", err)))
    goto done;
  job_progress(ctx, 0, total, "rows");
  for (bool more = true; more && t.rows < total;) {
    size_t n = 0;
    lt_status_t st = LT_OK;
    if (read_batch(r, rows, items, batch < total - t.rows ? batch : (size_t)(total - t.rows), &n, &more, err) != LT_OK)
      goto done;
    if (n) st = fb_judge(&an, dm.tmpl, &opts, items, n, res, err);
    job_stop_t stop = job_should_stop(ctx);
    for (size_t i = 0; i < n; i++) {
      if (st == LT_OK && stop == JOB_GO) st = emit(ctx, all, prefs, t.rows + 1, &items[i], &res[i], &t, err);
      fb_result_free(&res[i]);
      json_decref(rows[i]);
    }
    if (stop != JOB_GO) {
      out = dj_stopped(stop);
      goto done;
    }
    if (st != LT_OK) goto done;
    job_progress(ctx, t.rows, total, "rows");
  }
  if (dm.lm.n_truncated)
    job_log(ctx, "%llu prompts or scored texts were cut to the %u-token context window",
            (unsigned long long)dm.lm.n_truncated, lm_window(&dm.lm));
  job_log(ctx,
          "%llu rows: %llu consistent, %llu flagged inconsistent; %llu of %llu votes decided by the critique's "
          "text, the rest by likelihood",
          (unsigned long long)t.rows, (unsigned long long)t.consistent, (unsigned long long)(t.rows - t.consistent),
          (unsigned long long)t.by_text, (unsigned long long)t.votes);
  job_result_int(ctx, "rows", (int64_t)t.rows);
  job_result_int(ctx, "consistent", (int64_t)t.consistent);
  job_result_int(ctx, "inconsistent", (int64_t)(t.rows - t.consistent));
  job_result_int(ctx, "votes_by_text", (int64_t)t.by_text);
  job_result_float(ctx, "mean_strength", t.consistent ? t.strength / (double)t.consistent : 0.0);
  job_result_int(ctx, "truncated", (int64_t)dm.lm.n_truncated);
  out = JOB_SUCCEEDED;
done:
  if (all) fclose(all);
  if (prefs) fclose(prefs);
  lines_destroy(&r);
  dj_model_close(&dm);
  free(rows), free(items), free(res);
  return out;
}
