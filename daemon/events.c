/* Job transitions, stored events and their delivery to watchers, and the progress throttle. */
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/lathed.h"

static bool peer_eq(const peer_t *a, const peer_t *b) {
  return a->sock == b->sock && a->id_n == b->id_n && memcmp(a->id, b->id, a->id_n) == 0;
}

bool watch_add(daemon_t *d, const peer_t *p, int64_t job) {
  int64_t now = util_mono_ms();
  for (size_t i = 0; i < d->n_watchers; i++)
    if (d->watchers[i].job == job && peer_eq(&d->watchers[i].peer, p)) {
      d->watchers[i].seen_mono = now;
      return true;
    }
  if (d->n_watchers >= MAX_WATCHERS) watch_expire(d);
  if (d->n_watchers >= MAX_WATCHERS) return false;
  if (!d->watchers && !(d->watchers = calloc(MAX_WATCHERS, sizeof *d->watchers))) return false;
  d->watchers[d->n_watchers++] = (watcher_t){*p, job, now};
  return true;
}

void watch_seen(daemon_t *d, const peer_t *p) {
  int64_t now = util_mono_ms();
  for (size_t i = 0; i < d->n_watchers; i++)
    if (peer_eq(&d->watchers[i].peer, p)) d->watchers[i].seen_mono = now;
}

int64_t watch_expire(daemon_t *d) {
  int64_t now = util_mono_ms(), next = d->o.watch_lease_ms;
  size_t k = 0;
  for (size_t i = 0; i < d->n_watchers; i++) {
    watcher_t *x = &d->watchers[i];
    int64_t left = x->seen_mono + d->o.watch_lease_ms - now;
    if (left <= 0) continue;
    if (left < next) next = left;
    d->watchers[k++] = *x;
  }
  d->n_watchers = k;
  return next;
}

/* Removes watches matching p (NULL: any peer) and job (0: any job). */
static void watch_drop(daemon_t *d, const peer_t *p, int64_t job) {
  size_t k = 0;
  for (size_t i = 0; i < d->n_watchers; i++) {
    watcher_t *x = &d->watchers[i];
    bool match = (!p || peer_eq(&x->peer, p)) && (!job || x->job == job);
    if (!match) d->watchers[k++] = *x;
  }
  d->n_watchers = k;
}

void watch_remove(daemon_t *d, const peer_t *p, int64_t job) { watch_drop(d, p, job); }

void ev_write(mpw_t *w, const store_event_t *ev) {
  mpw_map(w);
  mpw_kint(w, "job", ev->job);
  mpw_kint(w, "seq", ev->seq);
  mpw_kint(w, "time", ev->time_ms);
  mpw_kstr(w, "type", ev->type);
  mpw_str(w, "data");
  mpw_raw(w, ev->data, ev->n);
  mpw_end(w);
}

lt_status_t ev_emit(daemon_t *d, int64_t job, const char *type, const void *data, size_t n, lt_err_t *err) {
  lt_status_t st = store_begin(d->store, false, err);
  store_event_t ev = {job, 0, util_now_ms(), type, data, n};
  if (st || (st = store_event_append(d->store, job, ev.time_ms, type, data, n, &ev.seq, err))) return st;
  bool watched = false;
  for (size_t i = 0; i < d->n_watchers && !watched; i++) watched = d->watchers[i].job == job;
  if (!watched) return LT_OK;
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kint(&w, "v", PROTO_VERSION);
  mpw_str(&w, "event");
  ev_write(&w, &ev);
  mpw_end(&w);
  for (size_t i = 0; i < d->n_watchers; i++) {
    watcher_t *x = &d->watchers[i];
    if (x->job != job) continue;
    char *copy = malloc(w.sb.size);
    if (!copy) continue;
    memcpy(copy, w.sb.data, w.sb.size);
    out_push(d, peer_sock(d, &x->peer), x->peer.id, x->peer.id_n, copy, w.sb.size, false, 0);
  }
  mpw_free(&w);
  return LT_OK;
}

lt_status_t ev_transition(daemon_t *d, store_job_t *j, job_state_t to, const char *reason, lt_err_t *err) {
  slot_t *s = sched_slot_of_job(d, j->id);
  if (s) {
    lt_status_t st = ev_flush_progress(d, s, true, err);
    if (st) return st;
  }
  int64_t now = util_now_ms();
  if (to == JS_RUNNING) j->started_ms = now, j->attempts++;
  if (job_state_final(to)) j->finished_ms = now;
  if (to == JS_QUEUED) j->finished_ms = 0;
  j->state = to;
  j->updated_ms = now;
  util_copy(j->reason, reason, sizeof j->reason);
  lt_status_t st = store_begin(d->store, true, err);
  if (st || (st = store_job_update(d->store, j, err))) return st;
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "state", job_state_str(to));
  mpw_kstr(&w, "reason", reason);
  mpw_kint(&w, "attempt", j->attempts);
  mpw_end(&w);
  st = ev_emit(d, j->id, "state", w.sb.data, w.sb.size, err);
  mpw_free(&w);
  /* A final state is the last event a job has: its watchers are done. */
  if (!st && job_state_final(to)) watch_drop(d, NULL, j->id);
  /* One line per start and end in the daemon's log (the journal under systemd). */
  if (!st && to == JS_RUNNING)
    dlog("job %lld (%s) started, attempt %lld", (long long)j->id, j->kind, (long long)j->attempts);
  if (!st && job_state_final(to))
    dlog("job %lld (%s) %s after %.1f s%s%s", (long long)j->id, j->kind, job_state_str(to),
         j->started_ms ? (double)(now - j->started_ms) / 1000.0 : 0.0, reason[0] ? ": " : "", reason);
  return st;
}

lt_status_t ev_flush_progress(daemon_t *d, slot_t *s, bool force, lt_err_t *err) {
  if (!s->progress_pending) return LT_OK;
  int64_t now = util_mono_ms();
  if (!force && now - s->progress_last_mono < PROGRESS_EVERY_MS) return LT_OK;
  lt_status_t st = ev_emit(d, s->job, "progress", s->progress_pending, s->progress_pending_n, err);
  free(s->progress_pending);
  s->progress_pending = NULL;
  s->progress_last_mono = now;
  return st;
}

lt_status_t ev_progress(daemon_t *d, slot_t *s, const void *data, size_t n, lt_err_t *err) {
  int64_t now = util_mono_ms();
  /* The latest step for `ps`, whether or not this event is held back. */
  proto_err_t pe;
  mp_doc_t *doc = mp_doc_parse(data, n, &pe);
  if (doc) {
    const msgpack_object *m = mp_doc_root(doc);
    int64_t step = 0, total = 0;
    if (mp_as_int(mp_get(m, "step"), &step) && mp_as_int(mp_get(m, "total"), &total))
      s->prog_step = step, s->prog_total = total;
    if (!mp_str_copy(mp_get(m, "unit"), s->prog_unit, sizeof s->prog_unit)) s->prog_unit[0] = '\0';
    mp_doc_destroy(&doc);
  }
  if (!s->progress_pending && now - s->progress_last_mono >= PROGRESS_EVERY_MS) {
    s->progress_last_mono = now;
    return ev_emit(d, s->job, "progress", data, n, err);
  }
  char *copy = malloc(n);
  if (!copy) return lt_fail(err, LT_E_NOMEM, "out of memory");
  memcpy(copy, data, n);
  free(s->progress_pending);
  s->progress_pending = copy;
  s->progress_pending_n = n;
  return LT_OK;
}
