/* Client requests: one table row per operation (name, handler, whether it writes). Every rejection leaves
 * through requests_handle()'s single error path with a stable code and the field it concerns. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/lathed.h"
#include "jobs/kind.h"

typedef struct req {
  daemon_t *d;
  const peer_t *peer;
  const char *owner;
  const msgpack_object *m;
} req_t;

typedef bool (*req_fn)(req_t *r, mpw_t *w, proto_err_t *e);

/* A store failure inside a request: reported as `internal` (the request may be retried). */
static bool store_failed(proto_err_t *e, const lt_err_t *err) { return proto_fail(e, P_INTERNAL, "", "%s", err->msg); }

/* Loads the job named by the request's "id" field. */
/* Whether the request came over TCP (a CURVE key): such a client sees and acts on its own jobs only. */
static bool remote(const req_t *r) { return strncmp(r->owner, "key:", 4) == 0; }

static bool load_job(req_t *r, store_job_t *j, proto_err_t *e) {
  int64_t id = 0;
  if (!mp_field_int(r->m, "", "id", true, 1, INT64_MAX, &id, e)) return false;
  lt_err_t err = {0};
  int found = store_job_get(r->d->store, id, j, &err);
  if (found < 0) return store_failed(e, &err);
  if (!found) return proto_fail(e, P_NOT_FOUND, "id", "id: no job %lld", (long long)id);
  if (remote(r) && strcmp(j->owner, r->owner) != 0) {
    store_job_clear(j);
    return proto_fail(e, P_DENIED, "id", "id: job %lld is not yours (%s sees and acts on its own jobs only)",
                      (long long)id, r->owner);
  }
  return true;
}

static void write_ms(mpw_t *w, const char *k, int64_t ms) {
  if (ms)
    mpw_kint(w, k, ms);
  else
    mpw_knil(w, k);
}

/* The job object of list/show replies (docs/protocol.md). */
/* What `ps` shows beside the state: the model (the last part of its path), the time run so far (or in all, once
 * finished), and for the running job its latest progress and an estimate of the time left (linear in the steps). */
static void write_times(mpw_t *w, daemon_t *d, const store_job_t *j) {
  proto_err_t pe;
  mp_doc_t *p = j->params ? mp_doc_parse(j->params, j->params_n, &pe) : NULL;
  char model[PATH_MAX] = "";
  if (p && !mp_str_copy(mp_get(mp_doc_root(p), "model"), model, sizeof model))
    mp_str_copy(mp_get(mp_doc_root(p), "student"), model, sizeof model);
  mp_doc_destroy(&p);
  size_t n = strlen(model);
  while (n > 1 && model[n - 1] == '/') model[--n] = '\0';
  const char *base = strrchr(model, '/') ? strrchr(model, '/') + 1 : model;
  if (*base)
    mpw_kstr(w, "model", base);
  else
    mpw_knil(w, "model");
  int64_t now = util_now_ms();
  bool running = j->state == JS_RUNNING && j->started_ms;
  if (running || (j->started_ms && j->finished_ms))
    mpw_kdouble(w, "elapsed_s", (double)((running ? now : j->finished_ms) - j->started_ms) / 1000.0);
  else
    mpw_knil(w, "elapsed_s");
  const slot_t *s = running ? sched_slot_of_job(d, j->id) : NULL;
  if (s && s->remote) {
    /* A job run under Slurm: its batch job, Slurm's state for it and the node (the device index is the node's). */
    mpw_knil(w, "worker");
    if (s->dev_index >= 0)
      mpw_kint(w, "device", s->dev_index);
    else
      mpw_knil(w, "device");
    mpw_kstr(w, "executor", "slurm");
    mpw_kstr(w, "slurm_job", s->slurm_id);
    mpw_kstr(w, "slurm_state", s->slurm_state);
    mpw_kstr(w, "node", s->node);
  } else if (s) {
    mpw_kint(w, "worker", s->ix);
    if (s->dev_index >= 0)
      mpw_kint(w, "device", s->dev_index);
    else if (s->index[0])
      mpw_kint(w, "device", atoll(s->index));
    else
      mpw_knil(w, "device");
  } else {
    mpw_knil(w, "worker");
    mpw_knil(w, "device");
  }
  if (s && s->prog_total > 0) {
    mpw_str(w, "progress");
    mpw_map(w);
    mpw_kint(w, "step", s->prog_step);
    mpw_kint(w, "total", s->prog_total);
    mpw_kstr(w, "unit", s->prog_unit);
    mpw_kdouble(w, "percent", 100.0 * (double)s->prog_step / (double)s->prog_total);
    mpw_end(w);
    if (s->prog_step > 0)
      mpw_kdouble(w, "eta_s",
                  (double)(now - j->started_ms) / 1000.0 * (double)(s->prog_total - s->prog_step) /
                      (double)s->prog_step);
    else
      mpw_knil(w, "eta_s");
  } else {
    mpw_knil(w, "progress");
    mpw_knil(w, "eta_s");
  }
}

static void write_job(mpw_t *w, daemon_t *d, const store_job_t *j, bool full) {
  mpw_map(w);
  mpw_kint(w, "id", j->id);
  mpw_kstr(w, "kind", j->kind);
  mpw_kstr(w, "state", job_state_str(j->state));
  mpw_kstr(w, "reason", j->reason);
  mpw_kint(w, "priority", j->priority);
  mpw_kstr(w, "owner", j->owner);
  mpw_kint(w, "attempts", j->attempts);
  write_ms(w, "created", j->created_ms);
  write_ms(w, "started", j->started_ms);
  write_ms(w, "finished", j->finished_ms);
  write_ms(w, "updated", j->updated_ms);
  if (j->position)
    mpw_kint(w, "position", j->position);
  else
    mpw_knil(w, "position");
  mpw_kint(w, "last_seq", j->last_seq);
  mpw_kbool(w, "cancel_requested", j->cancel_requested);
  write_times(w, d, j);
  if (full) {
    char dir[PATH_MAX];
    store_job_dir(d->store, j->id, dir, sizeof dir);
    mpw_kstr(w, "dir", dir);
    mpw_kstr(w, "sid", j->sid);
    const kind_t *k = kind_find(j->kind, strlen(j->kind));
    mpw_kstr(w, "policy", k ? kind_policy_str(k->policy) : "fail");
    /* Parameters and results near the message limit are left out with their size: the reply must fit. */
    mpw_str(w, "params");
    if (j->params_n <= SHOW_PART_MAX)
      mpw_raw(w, j->params, j->params_n);
    else
      mpw_nil(w), mpw_kint(w, "params_bytes", (int64_t)j->params_n);
    mpw_str(w, "result");
    if (j->result && j->result_n && j->result_n <= SHOW_PART_MAX)
      mpw_raw(w, j->result, j->result_n);
    else
      mpw_nil(w);
    if (j->result_n > SHOW_PART_MAX) mpw_kint(w, "result_bytes", (int64_t)j->result_n);
  }
  mpw_end(w);
}

static bool req_ping(req_t *r, mpw_t *w, proto_err_t *e) {
  (void)e;
  mpw_kint(w, "pid", getpid());
  mpw_kstr(w, "version", LATHED_VERSION);
  mpw_kint(w, "protocol", PROTO_VERSION);
  mpw_kint(w, "started", r->d->started_ms);
  return true;
}

static const char *worker_state_str(worker_state_t s) {
  switch (s) {
  case W_DOWN: return "down";
  case W_STARTING: return "starting";
  case W_IDLE: return "idle";
  case W_BUSY: return "busy";
  }
  return "?";
}

/* One worker as the status reply shows it. */
static void write_worker(mpw_t *w, const slot_t *s) {
  mpw_map(w);
  mpw_kint(w, "index", s->ix);
  /* "lent": idle, its device used by a data-parallel job running on another worker (`job` names it). */
  mpw_kstr(w, "state", s->lent_to ? "lent" : worker_state_str(s->state));
  mpw_kint(w, "pid", s->pid);
  mpw_kint(w, "restarts", s->restarts);
  mpw_kstr(w, "device", s->device);
  mpw_kstr(w, "want", s->want);
  mpw_kstr(w, "device_name", s->name);
  mpw_kstr(w, "uuid", s->uuid);
  mpw_kint(w, "memory_mib", s->mib);
  mpw_kstr(w, "last_exit", s->last_exit);
  if (s->job || s->lent_to)
    mpw_kint(w, "job", s->job ? s->job : s->lent_to);
  else
    mpw_knil(w, "job");
  mpw_end(w);
}

static bool req_status(req_t *r, mpw_t *w, proto_err_t *e) {
  daemon_t *d = r->d;
  int64_t counts[JS_COUNT];
  lt_err_t err = {0};
  if (store_count(d->store, counts, &err)) return store_failed(e, &err);
  req_ping(r, w, e);
  mpw_kstr(w, "socket", d->o.socket);
  mpw_kstr(w, "home", d->o.home);
  mpw_kstr(w, "tcp", d->o.tcp);
  mpw_kint(w, "uptime_ms", util_now_ms() - d->started_ms);
  mpw_kint(w, "max_queue", d->o.max_queue);
  /* "ok", or why the daemon is read-only */
  mpw_kstr(w, "store", d->store_fault[0] ? d->store_fault : "ok");
  mpw_str(w, "jobs");
  mpw_map(w);
  for (int s = 0; s < JS_COUNT; s++) mpw_kint(w, job_state_str((job_state_t)s), counts[s]);
  mpw_end(w);
  /* "worker": the first, as before there were several; "workers": every one. */
  mpw_str(w, "worker");
  write_worker(w, &d->slots[0]);
  mpw_str(w, "workers");
  mpw_array(w);
  for (int i = 0; i < d->n_slots; i++) write_worker(w, &d->slots[i]);
  mpw_end(w);
  mpw_kint(w, "watchers", (int64_t)d->n_watchers);
  mpw_kint(w, "requests", d->requests);
  mpw_kint(w, "rejected", d->rejected);
  mpw_kint(w, "auth_denied", d->auth_denied);
  mpw_kint(w, "tcp_open", d->tcp_open);
  mpw_kint(w, "tcp_shed", d->tcp_shed);
  /* The Slurm executor: whether it can be used, and the Slurm jobs followed now. */
  mpw_str(w, "slurm");
  mpw_map(w);
  mpw_kstr(w, "executor", d->o.executor);
  mpw_kstr(w, "version", d->slurm_version);
  mpw_kstr(w, "missing", d->slurm_missing);
  mpw_kstr(w, "connect", d->wtcp_connect);
  mpw_str(w, "jobs");
  mpw_array(w);
  for (int i = 0; i < d->n_remote; i++) {
    const slot_t *s = &d->remote[i];
    mpw_map(w);
    mpw_kint(w, "job", s->job);
    mpw_kstr(w, "slurm_job", s->slurm_id);
    mpw_kstr(w, "slurm_state", s->slurm_state);
    mpw_kstr(w, "node", s->node);
    mpw_kstr(w, "device", s->device);
    mpw_end(w);
  }
  mpw_end(w);
  mpw_end(w);
  return true;
}

static bool req_submit(req_t *r, mpw_t *w, proto_err_t *e) {
  daemon_t *d = r->d;
  char kname[32] = "", sid[129] = "";
  const msgpack_object *params = NULL;
  int64_t priority = 0;
  bool hold = false;
  const msgpack_object *ko = mp_get(r->m, "kind");
  if (!ko) return proto_fail(e, P_MISSING_FIELD, "kind", "kind: required field is missing");
  if (ko->type != MSGPACK_OBJECT_STR) return proto_fail(e, P_BAD_TYPE, "kind", "kind: expected a string");
  const kind_t *k = kind_find(ko->via.str.ptr, ko->via.str.size);
  if (!k) {
    char known[256] = "";
    for (size_t i = 0; i < kind_count(); i++)
      snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", kind_at(i)->name);
    return proto_fail(e, P_UNKNOWN_KIND, "kind", "kind: no job kind '%.*s' (known: %s)",
                      (int)(ko->via.str.size > 64 ? 64 : ko->via.str.size), ko->via.str.ptr, known);
  }
  util_copy(kname, k->name, sizeof kname);
  if (!mp_field_map(r->m, "", "params", false, &params, e) ||
      !mp_field_str(r->m, "", "sid", false, sid, sizeof sid, e) ||
      !mp_field_int(r->m, "", "priority", false, -1000, 1000, &priority, e) ||
      !mp_field_bool(r->m, "", "hold", false, &hold, e))
    return false;
  mpw_t pw;
  mpw_init(&pw);
  if (!kind_params_normalise(k, params, &pw, e)) {
    mpw_free(&pw);
    return false;
  }
  /* The worker gets the parameters in one message with the job's folder and kind: what cannot reach it is refused
   * here, not left running forever. */
  if (pw.sb.size > PROTO_MAX_MSG - RUN_MSG_RESERVE) {
    proto_fail(e, P_TOO_LARGE, "params",
               "params: %zu bytes with the defaults filled in; a job's parameters may take at most %u bytes (the "
               "worker's message limit less room for the job's folder); pass large inputs as files",
               pw.sb.size, PROTO_MAX_MSG - RUN_MSG_RESERVE);
    mpw_free(&pw);
    return false;
  }
  lt_err_t err = {0};
  store_job_t j = {0};
  bool ok = false;
  if (sid[0]) {
    int found = store_job_by_sid(d->store, r->owner, sid, &j, &err);
    if (found < 0) {
      ok = store_failed(e, &err);
      goto out;
    }
    if (found) {
      /* A retried submit: the same job again, or a conflict if the id now names a different request. */
      if (strcmp(j.kind, kname) != 0 || j.params_n != pw.sb.size || memcmp(j.params, pw.sb.data, pw.sb.size) != 0) {
        ok = proto_fail(e, P_CONFLICT, "sid", "sid: '%s' already names job %lld with other parameters", sid,
                        (long long)j.id);
        goto out;
      }
      mpw_kint(w, "id", j.id);
      mpw_kstr(w, "state", job_state_str(j.state));
      mpw_kbool(w, "existing", true);
      if (j.position)
        mpw_kint(w, "position", j.position);
      else
        mpw_knil(w, "position");
      ok = true;
      goto out;
    }
  }
  {
    mp_doc_t *pd = mp_doc_parse(pw.sb.data, pw.sb.size, e);
    bool pass = pd && preflight_files(d, k, mp_doc_root(pd), r->owner, e);
    mp_doc_destroy(&pd);
    if (!pass) goto out;
  }
  int64_t counts[JS_COUNT];
  if (store_count(d->store, counts, &err)) {
    ok = store_failed(e, &err);
    goto out;
  }
  if (counts[JS_QUEUED] + counts[JS_HELD] >= d->o.max_queue) {
    ok = proto_fail(e, P_QUEUE_FULL, "", "queue full: %lld jobs waiting (the daemon's --max-queue)",
                    (long long)(counts[JS_QUEUED] + counts[JS_HELD]));
    goto out;
  }
  store_job_t nj = {0};
  util_copy(nj.kind, kname, sizeof nj.kind);
  nj.state = hold ? JS_HELD : JS_QUEUED;
  nj.priority = priority;
  util_copy(nj.owner, r->owner, sizeof nj.owner);
  util_copy(nj.sid, sid, sizeof nj.sid);
  nj.created_ms = nj.updated_ms = util_now_ms();
  nj.params = pw.sb.data, nj.params_n = pw.sb.size;
  char dir[PATH_MAX];
  if (store_job_insert(d->store, &nj, &nj.id, &err)) {
    ok = store_failed(e, &err);
    goto out;
  }
  store_job_dir(d->store, nj.id, dir, sizeof dir);
  if (util_mkdir_p(dir, 0700, &err)) {
    ok = store_failed(e, &err);
    goto out;
  }
  nj.params = NULL; /* owned by pw */
  if (ev_transition(d, &nj, nj.state, hold ? "submitted on hold" : "submitted", &err)) {
    ok = store_failed(e, &err);
    goto out;
  }
  store_job_t fresh = {0};
  int64_t pos = store_job_get(d->store, nj.id, &fresh, &err) == 1 ? fresh.position : 0;
  store_job_clear(&fresh);
  mpw_kint(w, "id", nj.id);
  mpw_kstr(w, "state", job_state_str(nj.state));
  mpw_kbool(w, "existing", false);
  if (pos)
    mpw_kint(w, "position", pos);
  else
    mpw_knil(w, "position");
  ok = true;
out:
  store_job_clear(&j);
  mpw_free(&pw);
  return ok;
}

typedef struct list_ctx {
  mpw_t *w;
  daemon_t *d;
  int64_t last;      /* the id of the last job read */
  int64_t n;         /* jobs read (written, or left out as another owner's) */
  const char *owner; /* write only this owner's jobs (NULL: all) */
} list_ctx_t;

/* Counts the jobs it is called for. */
static void count_one(void *user, const store_job_t *j) {
  (void)j;
  ++*(int64_t *)user;
}

static void list_one(void *user, const store_job_t *j) {
  list_ctx_t *c = user;
  if (!c->owner || !strcmp(c->owner, j->owner)) write_job(c->w, c->d, j, false);
  c->last = j->id;
  c->n++;
}

/* A page of jobs (ids above `after`, at most `limit`, at most LIST_PAGE): a reply stays far under the message
 * limit however many jobs the store holds; `more` says whether another page follows (ask with after = last). */
static bool req_list(req_t *r, mpw_t *w, proto_err_t *e) {
  bool all = false;
  int64_t limit = 0, after = 0;
  if (!mp_field_bool(r->m, "", "all", false, &all, e) ||
      !mp_field_int(r->m, "", "limit", false, 0, 1000000, &limit, e) ||
      !mp_field_int(r->m, "", "after", false, 0, INT64_MAX, &after, e))
    return false;
  int64_t page = limit > 0 && limit < LIST_PAGE ? limit : LIST_PAGE;
  mpw_str(w, "jobs");
  mpw_array(w);
  list_ctx_t c = {w, r->d, after, 0, remote(r) ? r->owner : NULL};
  lt_err_t err = {0};
  /* One more than the page tells whether there is more; that one is not written. */
  if (store_list(r->d->store, all, after, page, list_one, &c, &err)) return store_failed(e, &err);
  mpw_end(w);
  bool more = false;
  if (c.n == page) {
    int64_t counts = 0;
    if (store_list(r->d->store, all, c.last, 1, count_one, &counts, &err)) return store_failed(e, &err);
    more = counts > 0;
  }
  mpw_kint(w, "last", c.last);
  mpw_kbool(w, "more", more);
  return true;
}

static bool req_show(req_t *r, mpw_t *w, proto_err_t *e) {
  store_job_t j;
  if (!load_job(r, &j, e)) return false;
  mpw_str(w, "job");
  write_job(w, r->d, &j, true);
  store_job_clear(&j);
  return true;
}

typedef struct ev_ctx {
  mpw_t *w;
  int64_t last;
} ev_ctx_t;

static void event_one(void *user, const store_event_t *ev) {
  ev_ctx_t *c = user;
  ev_write(c->w, ev);
  c->last = ev->seq;
}

static bool req_events(req_t *r, mpw_t *w, proto_err_t *e) {
  int64_t after = 0, limit = EVENTS_PAGE;
  bool follow = false;
  store_job_t j;
  if (!mp_field_int(r->m, "", "after", false, 0, INT64_MAX, &after, e) ||
      !mp_field_int(r->m, "", "limit", false, 1, EVENTS_PAGE, &limit, e) ||
      !mp_field_bool(r->m, "", "follow", false, &follow, e) || !load_job(r, &j, e))
    return false;
  ev_ctx_t c = {w, after};
  lt_err_t err = {0};
  mpw_str(w, "events");
  mpw_array(w);
  int got = store_events_after(r->d->store, j.id, after, limit, event_one, &c, &err);
  mpw_end(w);
  bool ok = got >= 0;
  if (!ok) store_failed(e, &err);
  if (ok) {
    bool more = c.last < j.last_seq;
    mpw_kint(w, "last", c.last);
    mpw_kbool(w, "more", more);
    mpw_kstr(w, "state", job_state_str(j.state));
    /* Registering in the same turn as the reply leaves no gap: later events are pushed after this reply. */
    bool watching = follow && !more && !job_state_final(j.state);
    if (watching && !watch_add(r->d, r->peer, j.id))
      ok = proto_fail(e, P_BAD_STATE, "follow", "follow: too many watchers");
    mpw_kbool(w, "watching", watching);
  }
  store_job_clear(&j);
  return ok;
}

static bool req_unwatch(req_t *r, mpw_t *w, proto_err_t *e) {
  (void)w;
  int64_t id = 0;
  if (!mp_field_int(r->m, "", "id", true, 1, INT64_MAX, &id, e)) return false;
  watch_remove(r->d, r->peer, id);
  return true;
}

/* Moves a job between queued and held, or cancels a waiting one: the transitions the client may ask for. */
static bool set_state(req_t *r, mpw_t *w, proto_err_t *e, job_state_t from, job_state_t to, const char *reason) {
  store_job_t j;
  if (!load_job(r, &j, e)) return false;
  bool ok = true;
  lt_err_t err = {0};
  if (j.state == from) {
    if (ev_transition(r->d, &j, to, reason, &err)) ok = store_failed(e, &err);
  } else if (j.state != to) {
    ok = proto_fail(e, P_BAD_STATE, "id", "id: job %lld is %s", (long long)j.id, job_state_str(j.state));
  }
  if (ok) mpw_kstr(w, "state", job_state_str(j.state));
  store_job_clear(&j);
  return ok;
}

static bool req_hold(req_t *r, mpw_t *w, proto_err_t *e) { return set_state(r, w, e, JS_QUEUED, JS_HELD, "held"); }

static bool req_release(req_t *r, mpw_t *w, proto_err_t *e) {
  return set_state(r, w, e, JS_HELD, JS_QUEUED, "released");
}

static bool req_cancel(req_t *r, mpw_t *w, proto_err_t *e) {
  daemon_t *d = r->d;
  store_job_t j;
  if (!load_job(r, &j, e)) return false;
  char reason[128];
  snprintf(reason, sizeof reason, "cancelled by %s", r->owner);
  lt_err_t err = {0};
  bool ok = true;
  if (j.state == JS_QUEUED || j.state == JS_HELD) {
    if (ev_transition(d, &j, JS_CANCELLED, reason, &err)) ok = store_failed(e, &err);
  } else if (j.state == JS_RUNNING) {
    if (!j.cancel_requested) {
      /* Persisted, so a daemon restart before the worker stops still ends the job cancelled. */
      j.cancel_requested = true;
      j.updated_ms = util_now_ms();
      mpw_t lw;
      mpw_init(&lw);
      mpw_map(&lw);
      mpw_kstr(&lw, "msg", reason);
      mpw_end(&lw);
      if (store_job_update(d->store, &j, &err) || ev_emit(d, j.id, "log", lw.sb.data, lw.sb.size, &err))
        ok = store_failed(e, &err);
      mpw_free(&lw);
      slot_t *s = ok ? sched_slot_of_job(d, j.id) : NULL;
      if (s) {
        util_copy(s->cancel_by, reason, sizeof s->cancel_by);
        sched_stop_running(d, s, STOP_CANCEL);
      }
    }
    mpw_kbool(w, "cancelling", true);
  } else if (j.state != JS_CANCELLED) {
    ok = proto_fail(e, P_BAD_STATE, "id", "id: job %lld already %s", (long long)j.id, job_state_str(j.state));
  }
  if (ok) mpw_kstr(w, "state", job_state_str(j.state));
  store_job_clear(&j);
  return ok;
}

static bool req_priority(req_t *r, mpw_t *w, proto_err_t *e) {
  int64_t p = 0;
  store_job_t j;
  if (!mp_field_int(r->m, "", "priority", true, -1000, 1000, &p, e) || !load_job(r, &j, e)) return false;
  bool ok = true;
  lt_err_t err = {0};
  if (j.state != JS_QUEUED && j.state != JS_HELD) {
    ok = proto_fail(e, P_BAD_STATE, "id", "id: job %lld is %s; only waiting jobs have a priority", (long long)j.id,
                    job_state_str(j.state));
  } else {
    j.priority = p;
    j.updated_ms = util_now_ms();
    if (store_job_update(r->d->store, &j, &err)) ok = store_failed(e, &err);
  }
  if (ok) {
    store_job_t fresh = {0};
    mpw_kint(w, "priority", p);
    if (store_job_get(r->d->store, j.id, &fresh, &err) == 1 && fresh.position)
      mpw_kint(w, "position", fresh.position);
    else
      mpw_knil(w, "position");
    store_job_clear(&fresh);
  }
  store_job_clear(&j);
  return ok;
}

/* Deletes finished job id from the store and its folder from disk (a folder that cannot be removed is logged). */
static lt_status_t remove_job(daemon_t *d, int64_t id, lt_err_t *err) {
  char dir[PATH_MAX];
  store_job_dir(d->store, id, dir, sizeof dir);
  lt_status_t st = store_job_delete(d->store, id, err);
  lt_err_t rm = {0};
  if (!st && util_rm_rf(dir, &rm)) dlog("job %lld removed; %s", (long long)id, rm.msg);
  return st;
}

static bool req_remove(req_t *r, mpw_t *w, proto_err_t *e) {
  (void)w;
  store_job_t j;
  if (!load_job(r, &j, e)) return false;
  bool ok = true;
  lt_err_t err = {0};
  if (!job_state_final(j.state))
    ok = proto_fail(e, P_BAD_STATE, "id", "id: job %lld is %s; cancel it first", (long long)j.id,
                    job_state_str(j.state));
  else if (remove_job(r->d, j.id, &err))
    ok = store_failed(e, &err);
  store_job_clear(&j);
  return ok;
}

int64_t jobs_prune(daemon_t *d, int64_t cutoff_ms, const char *owner, bool *more, lt_err_t *err) {
  int64_t ids[PRUNE_PAGE + 1];
  int n = store_finished_before(d->store, cutoff_ms, owner, ids, PRUNE_PAGE + 1, err);
  if (n < 0) return n;
  *more = n > PRUNE_PAGE;
  if (*more) n = PRUNE_PAGE;
  for (int i = 0; i < n; i++)
    if (remove_job(d, ids[i], err)) return err->code;
  return n;
}

/* Removes up to PRUNE_PAGE finished jobs that ended more than older_than_ms ago (a remote key: its own only);
 * `more` says whether others remain (ask again). */
static bool req_prune(req_t *r, mpw_t *w, proto_err_t *e) {
  int64_t older = 0;
  if (!mp_field_int(r->m, "", "older_than_ms", true, 0, INT64_MAX / 2, &older, e)) return false;
  bool more = false;
  lt_err_t err = {0};
  int64_t n = jobs_prune(r->d, util_now_ms() - older, remote(r) ? r->owner : NULL, &more, &err);
  if (n < 0) return store_failed(e, &err);
  mpw_kint(w, "removed", n);
  mpw_kbool(w, "more", more);
  return true;
}

static bool req_result(req_t *r, mpw_t *w, proto_err_t *e) {
  store_job_t j;
  if (!load_job(r, &j, e)) return false;
  bool ok = job_state_final(j.state);
  if (!ok) {
    proto_fail(e, P_BAD_STATE, "id", "id: job %lld is %s; no result yet", (long long)j.id, job_state_str(j.state));
  } else {
    char dir[PATH_MAX];
    store_job_dir(r->d->store, j.id, dir, sizeof dir);
    mpw_kint(w, "id", j.id);
    mpw_kstr(w, "state", job_state_str(j.state));
    mpw_kstr(w, "reason", j.reason);
    mpw_kstr(w, "dir", dir);
    mpw_str(w, "result");
    if (j.result && j.result_n)
      mpw_raw(w, j.result, j.result_n);
    else
      mpw_nil(w);
  }
  store_job_clear(&j);
  return ok;
}

static bool req_shutdown(req_t *r, mpw_t *w, proto_err_t *e) {
  if (remote(r))
    return proto_fail(e, P_DENIED, "",
                      "shutdown: only the daemon's own user, on its local socket, may stop it (%s may not)", r->owner);
  (void)e;
  mpw_kint(w, "pid", getpid());
  dlog("shutdown requested by %s", r->owner);
  r->d->stopping = true;
  return true;
}

static const struct op {
  const char *name;
  req_fn fn;
  bool writes;
} ops[] = {
    {"ping", req_ping, false},       {"status", req_status, false},    {"submit", req_submit, true},
    {"list", req_list, false},       {"show", req_show, false},        {"events", req_events, false},
    {"unwatch", req_unwatch, false}, {"cancel", req_cancel, true},     {"hold", req_hold, true},
    {"release", req_release, true},  {"priority", req_priority, true}, {"remove", req_remove, true},
    {"prune", req_prune, true},      {"result", req_result, false},    {"shutdown", req_shutdown, false},
};

void requests_handle(daemon_t *d, const peer_t *p, const char *owner, const void *buf, size_t n) {
  d->requests++;
  proto_err_t e = {0};
  int64_t rid = 0, v = 0;
  char name[32];
  mpw_t w;
  mpw_init(&w);
  mp_doc_t *doc = mp_doc_parse(buf, n, &e);
  if (!doc) goto reject;
  const msgpack_object *m = mp_doc_root(doc);
  if (m->type != MSGPACK_OBJECT_MAP) {
    proto_fail(&e, P_NOT_A_MAP, "", "a request is a msgpack map");
    goto reject;
  }
  if (!mp_field_int(m, "", "rid", false, 0, INT64_MAX, &rid, &e)) goto reject;
  if (!mp_get(m, "v")) {
    proto_fail(&e, P_BAD_VERSION, "v", "v: the protocol version field is missing (this daemon speaks %d)",
               PROTO_VERSION);
    goto reject;
  }
  if (!mp_field_int(m, "", "v", true, 0, INT64_MAX, &v, &e)) goto reject;
  if (v != PROTO_VERSION) {
    proto_fail(&e, P_BAD_VERSION, "v", "v: protocol version %lld is not supported (this daemon speaks %d)",
               (long long)v, PROTO_VERSION);
    goto reject;
  }
  if (!mp_field_str(m, "", "op", true, name, sizeof name, &e)) goto reject;
  const struct op *op = NULL;
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    if (strcmp(ops[i].name, name) == 0) op = &ops[i];
  if (!op) {
    proto_fail(&e, P_UNKNOWN_OP, "op", "op: no operation '%s'", name);
    goto reject;
  }
  if (d->stopping && op->writes) {
    proto_fail(&e, P_SHUTTING_DOWN, "", "lathed is shutting down");
    goto reject;
  }
  if (d->store_fault[0] && op->writes) {
    proto_fail(&e, P_READ_ONLY, "",
               "read-only: the job store cannot be written (%s); reads work, writes wait for a retry to commit (every "
               "%d s)",
               d->store_fault, STORE_RETRY_MS / 1000);
    goto reject;
  }
  lt_err_t err = {0};
  if (op->writes && (store_begin(d->store, true, &err) || store_savepoint(d->store, &err))) {
    proto_fail(&e, P_INTERNAL, "", "%s", err.msg);
    goto reject;
  }
  req_t r = {d, p, owner, m};
  mpw_map(&w);
  mpw_kint(&w, "v", PROTO_VERSION);
  mpw_kint(&w, "rid", rid);
  mpw_kbool(&w, "ok", true);
  bool ok = op->fn(&r, &w, &e);
  if (op->writes) store_release(d->store, !ok);
  if (!ok) goto reject;
  mpw_end(&w);
  /* A reply the client could not take is an error it can read (a `list` or `show` never gets here). */
  if (w.sb.size > PROTO_MAX_MSG) {
    proto_fail(&e, P_TOO_LARGE, "", "the reply to %s would be %zu bytes, over the %u-byte message limit", name,
               w.sb.size, PROTO_MAX_MSG);
    mpw_free(&w);
    mpw_init(&w);
    goto reject;
  }
  mp_doc_destroy(&doc);
  d->turn_work += 1 + (int64_t)(w.sb.size >> 10);
  out_peer(d, p, &w, true, (uint64_t)rid);
  return;
reject:
  d->turn_work++;
  d->rejected++;
  mp_doc_destroy(&doc);
  mpw_free(&w);
  mpw_init(&w);
  proto_write_error(&w, (uint64_t)rid, &e);
  out_peer(d, p, &w, true, (uint64_t)rid);
}
