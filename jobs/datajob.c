/* Helpers of the model-driven data jobs (no runner here). */
#include "jobs/datajob.h"
#include "common/fsout.h"

#include <stdlib.h>
#include <string.h>

#include "engine/model/model_tok.h"
#include "engine/text/lines.h"

/* After each token of a generation: go on unless the job is asked to stop. */
static bool keep_going(void *ctx, uint32_t item, const int32_t *tokens, uint32_t n) {
  (void)item, (void)tokens, (void)n;
  return job_should_stop(ctx) == JOB_GO;
}

lt_status_t dj_model_open(job_ctx_t *ctx, dj_model_t *dm, lt_err_t *err) {
  memset(dm, 0, sizeof *dm);
  const char *path = job_param_str(ctx, "model");
  bool force_plain = !strcmp(job_param_str(ctx, "template"), "plain");
  tok_t *tok = NULL;
  model_t *m = job_model(ctx, path, &tok, err);
  if (!m) return err->code ? err->code : LT_E_INVALID;
  dm->tmpl = force_plain ? chat_tmpl_plain(err) : model_chat_template_open(path, err);
  if (!dm->tmpl) return err->code;
  bool plain = chat_tmpl_is_plain(dm->tmpl);
  dm->lm = (lm_t){.model = m,
                  .tok = tok,
                  .encode_flags = chat_encode_flags(dm->tmpl, tok),
                  .stops = plain ? CHAT_PLAIN_STOPS : NULL,
                  .on_step = keep_going,
                  .step_ctx = ctx};
  job_log(ctx, "%s; context window %u tokens",
          force_plain ? "using the plain chat template (User: ... Assistant:), as asked"
          : plain     ? "the model has no chat template: using the plain one (User: ... Assistant:)"
                      : "using the model's chat template",
          lm_window(&dm->lm));
  return LT_OK;
}

void dj_model_close(dj_model_t *dm) {
  if (dm) chat_tmpl_destroy(&dm->tmpl);
}

lt_status_t dj_count_rows(const char *path, uint64_t max, uint64_t *n, lt_err_t *err) {
  *n = 0;
  lines_t *r = lines_open(path, 0, err);
  if (!r) return err->code;
  const char *line;
  size_t len;
  int got = 0;
  while ((!max || *n < max) && (got = lines_next(r, &line, &len, err)) == 1) {
    size_t a = 0;
    while (a < len && (line[a] == ' ' || line[a] == '\t')) a++;
    if (a < len) (*n)++;
  }
  lines_destroy(&r);
  return got < 0 ? (lt_status_t)got : LT_OK;
}

FILE *dj_create(job_ctx_t *ctx, const char *name, lt_err_t *err) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", job_dir(ctx), name);
  FILE *f = util_open_nofollow(path, false, err);
  if (f) job_artifact(ctx, name, name);
  return f;
}

lt_status_t dj_write(FILE *f, json_t *o, lt_err_t *err) {
  int rc = json_dumpf(o, f, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(o);
  if (rc != 0 || fputc('\n', f) == EOF || fflush(f) != 0) return lt_fail(err, LT_E_IO, "write error (disk full?)");
  return LT_OK;
}

job_outcome_t dj_stopped(job_stop_t stop) { return stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED; }

#define MAX_POOL 100000

static lt_status_t dj_pool_add(dj_pool_t *p, const char *s, size_t n, lt_err_t *err) {
  if (p->n == MAX_POOL) return lt_fail(err, LT_E_LIMIT, "more than %d instructions", MAX_POOL);
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 16;
    char **v = realloc(p->v, cap * sizeof *v);
    if (!v) return lt_fail(err, LT_E_NOMEM, "out of memory");
    p->v = v, p->cap = cap;
  }
  if (!(p->v[p->n] = strndup(s, n))) return lt_fail(err, LT_E_NOMEM, "out of memory");
  p->n++;
  return LT_OK;
}

void dj_pool_free(dj_pool_t *p) {
  for (size_t i = 0; i < p->n; i++) free(p->v[i]);
  free(p->v);
}

lt_status_t dj_pool_load(job_ctx_t *ctx, dj_pool_t *p, lt_err_t *err) {
  for (size_t i = 0; i < job_param_list_len(ctx, "instruction"); i++) {
    const char *s = job_param_list_at(ctx, "instruction", i);
    lt_status_t st = dj_pool_add(p, s, strlen(s), err);
    if (st != LT_OK) return st;
  }
  const char *path = job_param_str(ctx, "instructions");
  if (!*path) return LT_OK;
  lines_t *r = lines_open(path, 1u << 20, err);
  if (!r) return err->code;
  const char *line;
  size_t len;
  int got = 0;
  lt_status_t st = LT_OK;
  while (st == LT_OK && (got = lines_next(r, &line, &len, err)) == 1) {
    while (len && strchr(" \t", line[len - 1])) len--;
    while (len && strchr(" \t", *line)) line++, len--;
    if (!len) continue;
    if (*line != '{') {
      st = dj_pool_add(p, line, len, err);
      continue;
    }
    json_t *o = json_loadb(line, len, 0, NULL);
    const char *s = json_string_value(json_object_get(o, "instruction"));
    st = s ? dj_pool_add(p, s, strlen(s), err)
           : lt_fail(err, LT_E_INVALID, "%s:%llu: expected {\"instruction\": \"...\"}", path,
                     (unsigned long long)lines_lineno(r));
    json_decref(o);
  }
  if (st == LT_OK && got < 0) st = (lt_status_t)got;
  lines_destroy(&r);
  return st;
}
