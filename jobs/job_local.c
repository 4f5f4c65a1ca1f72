/* The in-process runner host (jobs/job_local.h). */
#include "jobs/job_local.h"

#include <stdlib.h>
#include <string.h>

#include "engine/model/model_tok.h"
#include "jobs/kind.h"

struct job_local {
  gpu_t *g;
  bool own_gpu;
  char dir[4096];
  model_t *model; /* the last model a job asked for, kept like the worker keeps it */
  tok_t *tok;
  char model_path[4096];
  mp_doc_t **events;
  size_t n_events, cap_events;
  mp_doc_t *result;
  int64_t next_id;
};

static void local_emit(void *host, const void *msg, size_t n) {
  job_local_t *l = host;
  if (l->n_events == l->cap_events) {
    size_t cap = l->cap_events ? 2 * l->cap_events : 64;
    mp_doc_t **e = realloc(l->events, cap * sizeof *e);
    if (!e) return;
    l->events = e, l->cap_events = cap;
  }
  proto_err_t pe;
  mp_doc_t *d = mp_doc_parse(msg, n, &pe);
  if (d) l->events[l->n_events++] = d;
}

static job_stop_t local_poll_stop(void *host) {
  (void)host;
  return JOB_GO;
}

static gpu_t *local_gpu(void *host, job_ctx_t *c, lt_err_t *err) {
  (void)c;
  job_local_t *l = host;
  if (!l->g && (l->g = gpu_new(NULL, err))) l->own_gpu = true;
  return l->g;
}

static model_t *local_model(void *host, job_ctx_t *c, const char *path, tok_t **tok, lt_err_t *err) {
  job_local_t *l = host;
  if (l->model && !strcmp(l->model_path, path)) {
    *tok = l->tok;
    return l->model;
  }
  model_destroy(&l->model);
  tok_destroy(&l->tok);
  gpu_t *g = local_gpu(l, c, err);
  if (!g || !(l->tok = model_tokenizer_open(path, err))) return NULL;
  if (!(l->model = model_load(g, path, NULL, err))) {
    tok_destroy(&l->tok);
    return NULL;
  }
  snprintf(l->model_path, sizeof l->model_path, "%s", path);
  *tok = l->tok;
  return l->model;
}

static const job_host_t LOCAL_HOST = {local_emit, local_poll_stop, local_gpu, local_model};

job_local_t *job_local_new(gpu_t *g, const char *dir, lt_err_t *err) {
  job_local_t *l = calloc(1, sizeof *l);
  if (!l) return lt_fail(err, LT_E_NOMEM, "out of memory"), NULL;
  l->g = g;
  snprintf(l->dir, sizeof l->dir, "%s", dir);
  l->next_id = 1;
  return l;
}

static void drop_run(job_local_t *l) {
  for (size_t i = 0; i < l->n_events; i++) mp_doc_destroy(&l->events[i]);
  l->n_events = 0;
  mp_doc_destroy(&l->result);
}

void job_local_destroy(job_local_t **lp) {
  if (!lp || !*lp) return;
  job_local_t *l = *lp;
  drop_run(l);
  free(l->events);
  model_destroy(&l->model);
  tok_destroy(&l->tok);
  if (l->own_gpu) gpu_destroy(&l->g);
  free(l);
  *lp = NULL;
}

/* Writes the kv pairs as the params map the CLI would send: typed values, repeated keys of list parameters
 * gathered into one list. False with e naming the parameter. */
static bool params_from_text(const kind_t *k, const char *const *kv, size_t n, mpw_t *w, proto_err_t *e) {
  mpw_map(w);
  for (size_t i = 0; i < n; i++) {
    const kind_param_t *p = kind_param_find(k, kv[2 * i]);
    if (!p) return proto_fail(e, P_BAD_VALUE, kv[2 * i], "params.%s: %s has no such parameter", kv[2 * i], k->name);
    bool seen = false;
    for (size_t j = 0; j < i && !seen; j++) seen = kind_param_find(k, kv[2 * j]) == p;
    if (seen) continue;
    mpw_str(w, p->key);
    if (p->type != KT_STRS) {
      if (!kind_parse_text(p, kv[2 * i + 1], w, e)) return false;
      continue;
    }
    mpw_array(w);
    for (size_t j = i; j < n; j++)
      if (kind_param_find(k, kv[2 * j]) == p) mpw_str(w, kv[2 * j + 1]);
    mpw_end(w);
  }
  mpw_end(w);
  return true;
}

job_outcome_t job_local_run(job_local_t *l, const char *kind, const char *const *kv, size_t n, lt_err_t *err) {
  drop_run(l);
  const kind_t *k = kind_find(kind, strlen(kind));
  if (!k) return lt_fail(err, LT_E_INVALID, "no job kind '%s'", kind), JOB_FAILED;
  mpw_t raw, norm;
  mpw_init(&raw);
  mpw_init(&norm);
  proto_err_t pe = {0};
  mp_doc_t *d = NULL, *nd = NULL;
  job_outcome_t out = JOB_FAILED;
  if (!params_from_text(k, kv, n, &raw, &pe) || !(d = mp_doc_parse(raw.sb.data, raw.sb.size, &pe)) ||
      !kind_params_normalise(k, mp_doc_root(d), &norm, &pe) || !(nd = mp_doc_parse(norm.sb.data, norm.sb.size, &pe))) {
    lt_fail(err, LT_E_INVALID, "%s", pe.msg);
    goto done;
  }
  job_spec_t spec = {.id = l->next_id++, .attempt = 1, .kind = kind, .dir = l->dir, .params = mp_doc_root(nd)};
  mpw_t result;
  mpw_init(&result);
  out = job_run(&LOCAL_HOST, l, &spec, &result, err);
  l->result = mp_doc_parse(result.sb.data, result.sb.size, &pe);
  mpw_free(&result);
done:
  mp_doc_destroy(&d);
  mp_doc_destroy(&nd);
  mpw_free(&raw);
  mpw_free(&norm);
  return out;
}

size_t job_local_event_count(const job_local_t *l) { return l->n_events; }
const msgpack_object *job_local_event(const job_local_t *l, size_t i) { return mp_doc_root(l->events[i]); }
const msgpack_object *job_local_result(const job_local_t *l) { return l->result ? mp_doc_root(l->result) : NULL; }
