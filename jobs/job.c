/* The runner API (jobs/job.h), implemented once over a host: parameters read from the normalised map, events and
 * output records built as msgpack and handed to the host, the result map built for the caller. */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model_file.h"
#include "engine/text/jsonl.h"
#include "jobs/runners.h"

struct job_ctx {
  const job_host_t *h;
  void *host;
  const job_spec_t *spec;
  char dir[PATH_MAX];
  job_stop_t stop;
  mpw_t *result;
  mpw_t out;   /* the output record being built */
  char **strs; /* NUL-terminated copies handed out by job_param_str */
  size_t n_strs;
  model_t *adapted; /* the model the job's adapter is set on (removed when the job ends) */
  model_adapter_t *adapter;
  json_t *report; /* the result's fields as JSON, for job_report_write (NULL until the first) */
};

/* Starts an event message {t: event, job, type, data: {...}}: the caller adds data fields then calls
 * event_end(). */
static void event_begin(job_ctx_t *c, mpw_t *w, const char *type) {
  mpw_init(w);
  mpw_map(w);
  mpw_kstr(w, "t", "event");
  mpw_kint(w, "job", c->spec->id);
  mpw_kstr(w, "type", type);
  mpw_str(w, "data");
  mpw_map(w);
}

static void event_end(job_ctx_t *c, mpw_t *w) {
  mpw_end(w);
  mpw_end(w);
  c->h->emit(c->host, w->sb.data, w->sb.size);
  mpw_free(w);
}

int64_t job_id(const job_ctx_t *c) { return c->spec->id; }
uint32_t job_attempt(const job_ctx_t *c) { return c->spec->attempt; }
const char *job_dir(const job_ctx_t *c) { return c->dir; }

uint32_t job_lent_devices(const job_ctx_t *c) {
  const msgpack_object *l = c->spec->lent;
  return l && l->type == MSGPACK_OBJECT_ARRAY ? l->via.array.size : 0;
}

const char *job_lent_device(const job_ctx_t *c, uint32_t i, char *buf, size_t n) {
  buf[0] = '\0';
  if (i < job_lent_devices(c)) mp_str_copy(&c->spec->lent->via.array.ptr[i], buf, n);
  return buf;
}

static const msgpack_object *param(const job_ctx_t *c, const char *key) {
  const msgpack_object *o = mp_get(c->spec->params, key);
  if (!o) {
    /* Hosts normalise params against the same table: a missing key is a programming error. */
    fprintf(stderr, "lathe: job %lld has no parameter %s\n", (long long)c->spec->id, key);
    abort();
  }
  return o;
}

int64_t job_param_int(const job_ctx_t *c, const char *key) {
  int64_t v = 0;
  mp_as_int(param(c, key), &v);
  return v;
}

double job_param_float(const job_ctx_t *c, const char *key) {
  const msgpack_object *o = param(c, key);
  int64_t i;
  if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64) return o->via.f64;
  return mp_as_int(o, &i) ? (double)i : 0;
}

bool job_param_bool(const job_ctx_t *c, const char *key) {
  const msgpack_object *o = param(c, key);
  return o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean;
}

/* Keeps a NUL-terminated copy of a string object for the job's lifetime; "" when o is not a string. */
static const char *keep_str(job_ctx_t *c, const msgpack_object *o) {
  char **strs = o->type == MSGPACK_OBJECT_STR ? realloc(c->strs, (c->n_strs + 1) * sizeof *strs) : NULL;
  if (!strs) return "";
  c->strs = strs;
  char *s = o->via.str.size ? strndup(o->via.str.ptr, o->via.str.size) : strdup("");
  if (!s) return "";
  c->strs[c->n_strs++] = s;
  return s;
}

const char *job_param_str(job_ctx_t *c, const char *key) { return keep_str(c, param(c, key)); }

size_t job_param_list_len(job_ctx_t *c, const char *key) {
  const msgpack_object *o = param(c, key);
  return o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : 0;
}

const char *job_param_list_at(job_ctx_t *c, const char *key, size_t i) {
  const msgpack_object *o = param(c, key);
  return o->type == MSGPACK_OBJECT_ARRAY && i < o->via.array.size ? keep_str(c, &o->via.array.ptr[i]) : "";
}

job_stop_t job_should_stop(job_ctx_t *c) {
  job_stop_t s = c->h->poll_stop(c->host);
  if (s == JOB_STOP_CANCEL || (s == JOB_STOP_CHECKPOINT && c->stop != JOB_STOP_CANCEL)) c->stop = s;
  return c->stop;
}

void job_progress(job_ctx_t *c, uint64_t step, uint64_t total, const char *unit) {
  mpw_t w;
  event_begin(c, &w, "progress");
  mpw_kint(&w, "step", (int64_t)step);
  mpw_kint(&w, "total", (int64_t)total);
  mpw_kstr(&w, "unit", unit ? unit : "");
  event_end(c, &w);
}

void job_log(job_ctx_t *c, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  mpw_t w;
  event_begin(c, &w, "log");
  mpw_kstr(&w, "msg", msg);
  event_end(c, &w);
}

void job_metric(job_ctx_t *c, const char *name, double value, uint64_t step) {
  mpw_t w;
  event_begin(c, &w, "metric");
  mpw_kstr(&w, "name", name);
  mpw_kdouble(&w, "value", value);
  mpw_kint(&w, "step", (int64_t)step);
  event_end(c, &w);
}

void job_text(job_ctx_t *c, uint32_t item, const char *prompt, const char *piece, size_t n, bool done) {
  mpw_t w;
  event_begin(c, &w, "text");
  mpw_kint(&w, "item", item);
  if (prompt) mpw_kstr(&w, "prompt", prompt);
  mpw_str(&w, "text");
  mpw_strn(&w, piece, n);
  mpw_kbool(&w, "done", done);
  event_end(c, &w);
}

void job_output_begin(job_ctx_t *c) { event_begin(c, &c->out, "output"); }
void job_output_str(job_ctx_t *c, const char *key, const char *v) { mpw_kstr(&c->out, key, v); }
void job_output_int(job_ctx_t *c, const char *key, int64_t v) { mpw_kint(&c->out, key, v); }
void job_output_float(job_ctx_t *c, const char *key, double v) { mpw_kdouble(&c->out, key, v); }
void job_output_ints(job_ctx_t *c, const char *key, const int32_t *v, size_t n) {
  mpw_str(&c->out, key);
  mpw_array(&c->out);
  for (size_t i = 0; i < n; i++) mpw_int(&c->out, v[i]);
  mpw_end(&c->out);
}
void job_output_bool(job_ctx_t *c, const char *key, bool v) { mpw_kbool(&c->out, key, v); }
void job_output_null(job_ctx_t *c, const char *key) { mpw_knil(&c->out, key); }
void job_output_list_begin(job_ctx_t *c, const char *key) {
  if (key) mpw_str(&c->out, key);
  mpw_array(&c->out);
}
void job_output_list_str(job_ctx_t *c, const char *v) { mpw_str(&c->out, v); }
void job_output_list_end(job_ctx_t *c) { mpw_end(&c->out); }
void job_output_end(job_ctx_t *c) { event_end(c, &c->out); }

void job_artifact(job_ctx_t *c, const char *name, const char *relpath) {
  mpw_t w;
  event_begin(c, &w, "artifact");
  mpw_kstr(&w, "name", name);
  mpw_kstr(&w, "path", relpath);
  event_end(c, &w);
}

/* Keeps a result field in the JSON mirror of the result (a NaN as null). */
static void report_set(job_ctx_t *c, const char *key, json_t *v) {
  if (!c->report) c->report = json_object();
  json_object_set_new(c->report, key, v ? v : json_null());
}

void job_result_int(job_ctx_t *c, const char *key, int64_t v) {
  mpw_kint(c->result, key, v);
  report_set(c, key, json_integer((json_int_t)v));
}
void job_result_float(job_ctx_t *c, const char *key, double v) {
  mpw_kdouble(c->result, key, v);
  report_set(c, key, isfinite(v) ? json_real(v) : NULL);
}
void job_result_str(job_ctx_t *c, const char *key, const char *v) {
  mpw_kstr(c->result, key, v);
  report_set(c, key, json_string(v));
}
void job_result_strs(job_ctx_t *c, const char *key, const char *const *v, size_t n) {
  mpw_str(c->result, key);
  mpw_array(c->result);
  json_t *a = json_array();
  for (size_t i = 0; i < n; i++) mpw_str(c->result, v[i]), json_array_append_new(a, json_string(v[i]));
  mpw_end(c->result);
  report_set(c, key, a);
}

lt_status_t job_report_write(job_ctx_t *c, const char *dir, lt_err_t *err) {
  char path[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/lathe-report.json", dir);
  json_t *o = json_pack("{s:s, s:I, s:O}", "kind", c->spec->kind ? c->spec->kind : "", "job", (json_int_t)c->spec->id,
                        "result", c->report ? c->report : json_object());
  lt_status_t st = o ? jsonl_write_file(path, o, JSON_INDENT(1) | JSON_PRESERVE_ORDER, err)
                     : lt_fail(err, LT_E_NOMEM, "out of memory");
  json_decref(o);
  return st;
}

gpu_t *job_gpu(job_ctx_t *c, lt_err_t *err) { return c->h->gpu(c->host, c, err); }

void job_picture(job_ctx_t *c, lt_status_t st, const char *name, const char *path, const lt_err_t *e) {
  if (st == LT_OK)
    job_artifact(c, name, path);
  else
    job_log(c, "%s not written: %s", path, e->msg);
}

lt_dtype_t job_save_dtype(job_ctx_t *c, const char *base) {
  const char *dt = job_param_str(c, "dtype");
  if (!strcmp(dt, "f16")) return LT_F16;
  if (!strcmp(dt, "bf16")) return LT_BF16;
  if (!strcmp(dt, "f32")) return LT_F32;
  return job_base_dtype(base);
}

lt_dtype_t job_base_dtype(const char *base) {
  model_file_t *f = NULL;
  lt_err_t e = {0};
  if (model_file_open(&f, base, &e) != LT_OK) return LT_F32;
  ft_dtype_t t = model_file_weights(f)->tok_embd.dtype;
  model_file_destroy(&f);
  return t == FT_F16 ? LT_F16 : t == FT_BF16 ? LT_BF16 : LT_F32;
}

model_t *job_model(job_ctx_t *c, const char *path, tok_t **tok, lt_err_t *err) {
  model_t *m = c->h->model(c->host, c, path, tok, err);
  const msgpack_object *ad = m ? mp_get(c->spec->params, "adapter") : NULL;
  if (!ad || ad->type != MSGPACK_OBJECT_STR || ad->via.str.size == 0 || c->adapted == m) return m;
  const char *dir = keep_str(c, ad);
  if (!(c->adapter = model_adapter_load(m, dir, err))) return NULL;
  model_set_adapter(m, c->adapter);
  c->adapted = m;
  job_log(c, "adapter %s applied on top of %s", dir, path);
  return m;
}

job_outcome_t job_run(const job_host_t *h, void *ctx, const job_spec_t *spec, mpw_t *result, lt_err_t *err) {
  job_ctx_t c = {.h = h, .host = ctx, .spec = spec, .result = result};
  snprintf(c.dir, sizeof c.dir, "%s", spec->dir ? spec->dir : "");
  mpw_map(result);
  const kind_t *k = spec->kind ? kind_find(spec->kind, strlen(spec->kind)) : NULL;
  kind_run_fn fn = k ? runner_for(k) : NULL;
  job_outcome_t out = JOB_FAILED;
  if (!fn || !spec->params)
    lt_fail(err, LT_E_INVALID, "no runner for kind '%s'", spec->kind ? spec->kind : "");
  else
    out = fn(&c, err);
  if (out == JOB_FAILED && err && !err->msg[0]) lt_fail(err, LT_E_INVALID, "the runner failed without a reason");
  /* The host may keep the model for the next job: it must not keep this job's adapter. */
  if (c.adapted) model_set_adapter(c.adapted, NULL);
  model_adapter_destroy(&c.adapter);
  json_decref(c.report);
  mpw_end(result);
  for (size_t i = 0; i < c.n_strs; i++) free(c.strs[i]);
  free(c.strs);
  return out;
}
