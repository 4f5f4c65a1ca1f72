/* The worker process (spawn, heartbeats, crash handling, restart backoff) and the schedule: which job runs,
 * and what happens to a job whose run was cut off. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/lathed.h"
#include "jobs/kind.h"

/* Longest wait between two spawns of a worker that keeps dying before it is ready. */
#define MAX_BACKOFF_MS 30000

static void worker_id(const slot_t *s, char *buf, size_t n) { snprintf(buf, n, "w%lld", (long long)s->gen); }

void sched_to_worker(daemon_t *d, slot_t *s, mpw_t *w) {
  char id[32];
  worker_id(s, id, sizeof id);
  size_t n;
  char *data = mpw_take(w, &n);
  out_push(d, s->remote ? d->wtcp : d->wsock, (const uint8_t *)id, strlen(id), data, n, false, 0);
}
#define to_worker sched_to_worker

/* Starts slot s's worker unless one runs or it is backing off. */
static void spawn_slot(daemon_t *d, slot_t *s) {
  if (d->stopping || s->state != W_DOWN || util_mono_ms() < s->backoff_until_mono) return;
  s->gen = ++d->gen;
  char gen[32], keep[32];
  snprintf(gen, sizeof gen, "%lld", (long long)s->gen);
  snprintf(keep, sizeof keep, "%lld", (long long)d->o.keep_alive_s);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    /* The worker dies with the daemon: a kill -9 of lathed must not leave a second owner of the GPU. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    const char *argv[] = {"lathe-worker", "--connect", d->worker_endpoint, "--gen", gen,
                          "--keep-alive", keep,        "--device",         s->want, NULL};
    if (!s->want[0]) argv[7] = NULL; /* no device of its own: the worker chooses */
    execv(d->o.worker_path, (char *const *)argv);
    fprintf(stderr, "lathed: cannot run %s: %s\n", d->o.worker_path, strerror(errno));
    _exit(127);
  }
  if (pid < 0) {
    dlog("fork: %s", strerror(errno));
    s->backoff_until_mono = util_mono_ms() + 1000;
    return;
  }
  s->pid = pid;
  s->state = W_STARTING;
  s->started_mono = s->last_beat_mono = util_mono_ms();
  s->kill_reason[0] = '\0';
}

void sched_spawn(daemon_t *d) {
  for (int i = 0; i < d->n_slots; i++) spawn_slot(d, &d->slots[i]);
}

void sched_kill_worker(daemon_t *d, slot_t *s, const char *why) {
  (void)d;
  if (s->pid <= 0) return;
  if (why && !s->kill_reason[0]) {
    util_copy(s->kill_reason, why, sizeof s->kill_reason);
    dlog("killing worker %d (slot %d): %s", (int)s->pid, s->ix, why);
  }
  kill(s->pid, SIGKILL);
}

void sched_tell_exit(daemon_t *d) {
  for (int i = 0; i < d->n_slots; i++) {
    slot_t *s = &d->slots[i];
    if (s->state == W_DOWN || s->state == W_STARTING) {
      sched_kill_worker(d, s, NULL);
      continue;
    }
    mpw_t w;
    mpw_init(&w);
    mpw_map(&w);
    mpw_kstr(&w, "t", "exit");
    mpw_end(&w);
    to_worker(d, s, &w);
  }
}

void sched_interrupted(daemon_t *d, const slot_t *s, store_job_t *j, const char *how, bool shutdown) {
  const kind_t *k = kind_find(j->kind, strlen(j->kind));
  char reason[512];
  job_state_t to;
  if (j->cancel_requested) {
    to = JS_CANCELLED;
    snprintf(reason, sizeof reason, "%s (%s)", s && s->cancel_by[0] ? s->cancel_by : "cancelled", how);
  } else if (!k || k->policy == KIND_FAIL) {
    to = JS_FAILED;
    snprintf(reason, sizeof reason, "%s; kind %s %s", how, j->kind, k ? "cannot be restarted" : "is unknown");
  } else if (!shutdown && j->attempts >= d->o.max_attempts) {
    to = JS_FAILED;
    snprintf(reason, sizeof reason, "%s on attempt %lld of %lld; giving up", how, (long long)j->attempts,
             (long long)d->o.max_attempts);
  } else {
    to = JS_QUEUED;
    if (shutdown) j->attempts--; /* not the job's fault: give the attempt back */
    snprintf(reason, sizeof reason, "%s; re-queued to %s", how,
             k->policy == KIND_RESUME ? "resume from its checkpoint" : "restart");
  }
  lt_err_t err = {0};
  if (ev_transition(d, j, to, reason, &err)) dlog("job %lld: %s", (long long)j->id, err.msg);
  dlog("job %lld %s: %s", (long long)j->id, job_state_str(to), reason);
}

void sched_slot_job_done(daemon_t *d, slot_t *s) {
  for (int i = 0; s->job && i < d->n_slots; i++)
    if (d->slots[i].lent_to == s->job) d->slots[i].lent_to = 0;
  s->job = 0;
  s->stop = STOP_NONE;
  s->cancel_by[0] = '\0';
  free(s->progress_pending);
  s->progress_pending = NULL;
}

void sched_cut_off(daemon_t *d, slot_t *s, const char *how) {
  store_job_t j;
  lt_err_t err = {0};
  if (store_job_get(d->store, s->job, &j, &err) == 1) {
    if (s->stop == STOP_CANCEL) j.cancel_requested = true;
    sched_interrupted(d, s, &j, how, s->stop == STOP_SHUTDOWN);
  }
  store_job_clear(&j);
  sched_slot_job_done(d, s);
}

static void worker_died(daemon_t *d, slot_t *s, int status) {
  char how[160];
  if (WIFSIGNALED(status))
    snprintf(how, sizeof how, "worker killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
  else
    snprintf(how, sizeof how, "worker exited with status %d", WEXITSTATUS(status));
  if (s->kill_reason[0]) snprintf(how, sizeof how, "worker killed: %s", s->kill_reason);
  util_copy(s->last_exit, how, sizeof s->last_exit);
  bool was_ready = s->state == W_IDLE || s->state == W_BUSY;
  bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0 && d->stopping;
  if (!clean) dlog("%s", how);
  s->pid = 0;
  s->state = W_DOWN;
  s->device[0] = '\0';
  if (was_ready) {
    s->crash_streak = 0;
  } else {
    s->crash_streak++;
    int64_t back = 250LL << (s->crash_streak < 8 ? s->crash_streak : 8);
    s->backoff_until_mono = util_mono_ms() + (back > MAX_BACKOFF_MS ? MAX_BACKOFF_MS : back);
  }
  if (s->job) sched_cut_off(d, s, how);
  s->restarts++;
  spawn_slot(d, s);
}

void sched_reap(daemon_t *d) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
    for (int i = 0; i < d->n_slots; i++)
      if (pid == d->slots[i].pid) worker_died(d, &d->slots[i], status);
}

typedef struct ids {
  int64_t *v;
  size_t n, cap;
} ids_t;

static void collect(void *user, const store_job_t *j) {
  ids_t *ids = user;
  if (ids->n == ids->cap) {
    size_t cap = ids->cap ? 2 * ids->cap : 16;
    int64_t *v = realloc(ids->v, cap * sizeof *v);
    if (!v) return;
    ids->v = v, ids->cap = cap;
  }
  ids->v[ids->n++] = j->id;
}

void sched_recover(daemon_t *d, const char *why) {
  ids_t ids = {0};
  lt_err_t err = {0};
  if (store_each_in_state(d->store, JS_RUNNING, collect, &ids, &err)) dlog("recovery: %s", err.msg);
  char how[160];
  snprintf(how, sizeof how, "interrupted: %s", why);
  for (size_t i = 0; i < ids.n; i++) {
    store_job_t j;
    slurm_recover(d, ids.v[i]);
    if (store_job_get(d->store, ids.v[i], &j, &err) == 1) sched_interrupted(d, NULL, &j, how, false);
    store_job_clear(&j);
  }
  free(ids.v);
}

void sched_stop_running(daemon_t *d, slot_t *s, stop_req_t why) {
  if (!s->job || s->stop == why) return;
  if (s->stop == STOP_CANCEL && why == STOP_SHUTDOWN) return; /* already stopping for good */
  if (s->remote) {
    slurm_stop(d, s, why);
    return;
  }
  s->stop = why;
  s->stop_deadline_mono = util_mono_ms() + d->o.cancel_grace_ms;
  sched_tell_stop(d, s, why);
}

void sched_tell_stop(daemon_t *d, slot_t *s, stop_req_t why) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", why == STOP_CANCEL ? "cancel" : "checkpoint");
  mpw_kint(&w, "job", s->job);
  mpw_end(&w);
  to_worker(d, s, &w);
}

/* Where a job's parameters send it: the device it is pinned to ("" when any), the MiB of device memory it asks
 * for, its executor ("" when it names none) and the devices it runs on at once (tune-zo --devices; 1 else). */
typedef struct place {
  char pin[72], exec[8];
  int64_t mib, devices;
} place_t;

static void job_place(const void *params, size_t n, place_t *p) {
  memset(p, 0, sizeof *p);
  p->devices = 1;
  proto_err_t e;
  mp_doc_t *doc = mp_doc_parse(params, n, &e);
  if (doc) {
    mp_str_copy(mp_get(mp_doc_root(doc), "device"), p->pin, sizeof p->pin);
    mp_as_int(mp_get(mp_doc_root(doc), "memory"), &p->mib);
    mp_str_copy(mp_get(mp_doc_root(doc), "executor"), p->exec, sizeof p->exec);
    mp_as_int(mp_get(mp_doc_root(doc), "devices"), &p->devices);
  }
  mp_doc_destroy(&doc);
}

/* Whether executor name exec ("": none named) sends a job to Slurm. */
static bool exec_is_slurm(const daemon_t *d, const char *exec) {
  return !strcmp(exec[0] ? exec : d->o.executor, "slurm");
}

bool sched_job_is_slurm(const daemon_t *d, const void *params, size_t n) {
  place_t p;
  job_place(params, n, &p);
  return exec_is_slurm(d, p.exec);
}

bool sched_params_slurm(const daemon_t *d, const msgpack_object *params) {
  char exec[8] = "";
  mp_str_copy(mp_get(params, "executor"), exec, sizeof exec);
  return exec_is_slurm(d, exec);
}

/* Whether slot s is idle with nothing lent and a device of its own to name. */
static bool lendable(const slot_t *s) { return s->state == W_IDLE && !s->job && !s->lent_to && s->want[0]; }

bool sched_devices_known(const daemon_t *d, int64_t n) {
  int64_t named = 0;
  for (int i = 0; i < d->n_slots; i++) named += d->slots[i].want[0] != 0;
  return n <= 1 || named >= n;
}

/* Whether slot s may run a job pinned to pin that needs mib MiB: any job when the slot's worker chooses its own
 * device (it opens the pinned one itself, and its memory is not known), else one pinned to nothing or to the slot's
 * device by index or UUID, asking for no more memory than the device has (when the listing said). */
static bool slot_fits(const slot_t *s, const char *pin, int64_t mib) {
  if (!s->want[0]) return true;
  if (mib > 0 && s->mib > 0 && mib > s->mib) return false;
  return !pin[0] || !strcmp(pin, s->want) || !strcmp(pin, s->index) || (s->uuid[0] && !strcasecmp(pin, s->uuid));
}

bool sched_device_known(const daemon_t *d, const char *pin, int64_t mib) {
  for (int i = 0; i < d->n_slots; i++)
    if (slot_fits(&d->slots[i], pin, mib)) return true;
  return false;
}

slot_t *sched_slot_of_job(daemon_t *d, int64_t id) {
  for (int i = 0; id && i < d->n_slots; i++)
    if (d->slots[i].job == id) return &d->slots[i];
  for (int i = 0; id && i < d->n_remote; i++)
    if (d->remote[i].job == id) return &d->remote[i];
  return NULL;
}

typedef struct fit {
  daemon_t *d;
  slot_t *s;
} fit_t;

static bool fits_cb(void *user, const store_job_t *j) {
  const fit_t *f = user;
  place_t p;
  job_place(j->params, j->params_n, &p);
  if (exec_is_slurm(f->d, p.exec)) return false; /* Slurm's (slurm_dispatch) */
  if (p.devices > 1) {
    /* A data-parallel job starts only when it can have that many idle workers' devices at once (smaller jobs
     * behind it may start meanwhile). */
    int64_t others = 0;
    for (int i = 0; i < f->d->n_slots; i++) others += &f->d->slots[i] != f->s && lendable(&f->d->slots[i]);
    if (!f->s->want[0] || others < p.devices - 1) return false;
  }
  return slot_fits(f->s, p.pin, p.mib);
}

bool sched_start_job(daemon_t *d, store_job_t *j, const char *const *lent, int n_lent, mpw_t *w) {
  lt_err_t err = {0};
  const kind_t *k = kind_find(j->kind, strlen(j->kind));
  char dir[PATH_MAX];
  store_job_dir(d->store, j->id, dir, sizeof dir);
  if (!k) {
    ev_transition(d, j, JS_FAILED, "unknown kind (this lathed has no such job kind)", &err);
    return false;
  }
  if (util_mkdir_p(dir, 0700, &err)) {
    ev_transition(d, j, JS_FAILED, err.msg, &err);
    return false;
  }
  if (ev_transition(d, j, JS_RUNNING, "started", &err)) {
    dlog("job %lld: %s", (long long)j->id, err.msg);
    return false;
  }
  mpw_init(w);
  mpw_map(w);
  mpw_kstr(w, "t", "run");
  mpw_kint(w, "job", j->id);
  mpw_kstr(w, "kind", j->kind);
  mpw_kstr(w, "dir", dir);
  mpw_kint(w, "attempt", j->attempts);
  if (n_lent) {
    mpw_str(w, "lent");
    mpw_array(w);
    for (int i = 0; i < n_lent; i++) mpw_str(w, lent[i]);
    mpw_end(w);
  }
  mpw_str(w, "params");
  mpw_raw(w, j->params, j->params_n);
  mpw_end(w);
  if (w->sb.size > PROTO_MAX_MSG) {
    /* Refused at submit (requests.c); a job stored before that check gets a reason, not a silent drop. */
    char why[200];
    snprintf(why, sizeof why, "its run message (%zu bytes) exceeds the worker's %u-byte message limit", w->sb.size,
             PROTO_MAX_MSG);
    ev_transition(d, j, JS_FAILED, why, &err);
    mpw_free(w);
    return false;
  }
  return true;
}

bool sched_next_queued(daemon_t *d, bool (*fn)(void *user, const store_job_t *j), void *user, store_job_t *j) {
  lt_err_t err = {0};
  int64_t id = 0;
  int found = store_queue_find(d->store, fn, user, &id, &err);
  if (found < 0) dlog("%s", err.msg);
  return found > 0 && store_job_get(d->store, id, j, &err) == 1;
}

/* Hands slot s (idle) the first queued job it may run. */
static void dispatch_slot(daemon_t *d, slot_t *s) {
  fit_t f = {d, s};
  store_job_t j;
  if (!sched_next_queued(d, fits_cb, &f, &j)) return;
  int64_t id = j.id;
  /* A data-parallel job borrows the devices of other idle workers: they stay idle, lent to it, until it ends. */
  place_t p;
  job_place(j.params, j.params_n, &p);
  const char *lent[MAX_SLOTS] = {0};
  slot_t *lenders[MAX_SLOTS] = {0};
  int n_lent = 0;
  for (int i = 0; i < d->n_slots && n_lent < p.devices - 1; i++)
    if (&d->slots[i] != s && lendable(&d->slots[i])) lenders[n_lent] = &d->slots[i], lent[n_lent++] = d->slots[i].want;
  mpw_t w;
  if (sched_start_job(d, &j, lent, n_lent, &w)) {
    for (int i = 0; i < n_lent; i++) lenders[i]->lent_to = id;
    to_worker(d, s, &w);
    s->job = id;
    s->prog_step = s->prog_total = 0, s->prog_unit[0] = '\0';
    s->job_started = false;
    s->start_deadline_mono = util_mono_ms() + d->o.start_timeout_ms;
    s->state = W_BUSY;
    s->stop = STOP_NONE;
    s->progress_last_mono = 0;
  }
  store_job_clear(&j);
}

void sched_dispatch(daemon_t *d) {
  slurm_dispatch(d);
  for (int i = 0; i < d->n_slots && !d->stopping; i++)
    if (d->slots[i].state == W_IDLE && !d->slots[i].job && !d->slots[i].lent_to) dispatch_slot(d, &d->slots[i]);
}

/* A worker reports how its job ended. */
static void job_done(daemon_t *d, slot_t *s, const msgpack_object *m) {
  char status[16] = "", reason[400] = "";
  mp_field_str(m, "", "status", true, status, sizeof status, NULL);
  mp_field_str(m, "", "reason", false, reason, sizeof reason, NULL);
  store_job_t j;
  lt_err_t err = {0};
  if (store_job_get(d->store, s->job, &j, &err) != 1) {
    sched_slot_job_done(d, s);
    return;
  }
  const msgpack_object *result = mp_get(m, "result");
  mpw_t rw;
  mpw_init(&rw);
  if (result && result->type == MSGPACK_OBJECT_MAP) {
    mpw_obj(&rw, result);
    free(j.result); /* an earlier, interrupted run's result */
    j.result = rw.sb.data, j.result_n = rw.sb.size;
  }
  if (!strcmp(status, "succeeded")) {
    ev_transition(d, &j, JS_SUCCEEDED, "", &err);
  } else if (!strcmp(status, "cancelled")) {
    ev_transition(d, &j, JS_CANCELLED, s->cancel_by[0] ? s->cancel_by : "cancelled", &err);
  } else if (!strcmp(status, "stopped") && s->stop == STOP_SHUTDOWN) {
    sched_interrupted(d, s, &j, "stopped for a daemon shutdown", true);
  } else {
    ev_transition(d, &j, JS_FAILED, reason[0] ? reason : "the runner failed without a reason", &err);
  }
  if (err.code) dlog("job %lld: %s", (long long)j.id, err.msg);
  if (j.result == rw.sb.data) j.result = NULL; /* owned by rw */
  store_job_clear(&j);
  mpw_free(&rw);
  sched_slot_job_done(d, s);
  s->state = W_IDLE;
}

void sched_worker_msg(daemon_t *d, const uint8_t *id, size_t id_n, const char *owner, const void *buf, size_t n) {
  slot_t *s = NULL;
  for (int i = 0; i < d->n_slots + d->n_remote && !s; i++) {
    slot_t *c = i < d->n_slots ? &d->slots[i] : &d->remote[i - d->n_slots];
    char want[32];
    worker_id(c, want, sizeof want);
    if (id_n == strlen(want) && memcmp(id, want, id_n) == 0) s = c;
  }
  if (!s) return; /* a previous worker's last words */
  if (s->remote) {
    /* A Slurm job's key speaks for that job alone, whatever routing id its connection claims. */
    char want[48];
    snprintf(want, sizeof want, "slurm:%lld", (long long)s->job);
    if (strcmp(owner, want) != 0) {
      dlog("a message for %s's worker came from %s: dropped", want, owner);
      return;
    }
  }
  proto_err_t e;
  mp_doc_t *doc = mp_doc_parse(buf, n, &e);
  if (!doc) {
    dlog("bad message from the worker: %s", e.msg);
    return;
  }
  const msgpack_object *m = mp_doc_root(doc);
  const msgpack_object *t = mp_get(m, "t");
  int64_t job = 0;
  mp_field_int(m, "", "job", false, 0, INT64_MAX, &job, NULL);
  s->last_beat_mono = util_mono_ms();
  lt_err_t err = {0};
  bool release = false;
  if (mp_str_is(t, "ready") && s->remote) {
    slurm_ready(d, s);
  } else if (mp_str_is(t, "ready")) {
    if (s->state == W_STARTING) s->state = W_IDLE;
    s->crash_streak = 0;
  } else if (mp_str_is(t, "hb")) {
    mp_field_str(m, "", "device", false, s->device, sizeof s->device, NULL);
    mp_field_int(m, "", "index", false, -1, INT64_MAX, &s->dev_index, NULL);
  } else if (mp_str_is(t, "started") && job && job == s->job) {
    s->job_started = true;
  } else if (mp_str_is(t, "unreadable") && s->job && !s->job_started) {
    /* The worker could not read the run message: handing it over again would fail the same way. */
    char why[300] = "", reason[400];
    mp_field_str(m, "", "reason", false, why, sizeof why, NULL);
    snprintf(reason, sizeof reason, "the worker could not read the job's run message: %s", why);
    store_job_t j;
    if (store_job_get(d->store, s->job, &j, &err) == 1) {
      ev_transition(d, &j, JS_FAILED, reason, &err);
      store_job_clear(&j);
    }
    sched_slot_job_done(d, s);
    s->state = W_IDLE;
    release = s->remote;
  } else if (mp_str_is(t, "event") && job && job == s->job) {
    s->job_started = true;
    const msgpack_object *type = mp_get(m, "type"), *data = mp_get(m, "data");
    char tname[16] = "";
    if (data && data->type == MSGPACK_OBJECT_MAP && mp_str_copy(type, tname, sizeof tname) &&
        (!strcmp(tname, "progress") || !strcmp(tname, "log") || !strcmp(tname, "metric") ||
         !strcmp(tname, "artifact") || !strcmp(tname, "output") || !strcmp(tname, "text"))) {
      mpw_t w;
      mpw_init(&w);
      mpw_obj(&w, data);
      if (!strcmp(tname, "progress"))
        ev_progress(d, s, w.sb.data, w.sb.size, &err);
      else if (!ev_flush_progress(d, s, true, &err))
        ev_emit(d, job, tname, w.sb.data, w.sb.size, &err);
      mpw_free(&w);
    }
  } else if (mp_str_is(t, "signal") && s->remote) {
    s->signalled = true;
    d->slurm_poll_mono = util_mono_ms(); /* ask Slurm why now */
  } else if (mp_str_is(t, "done") && job && job == s->job && s->remote && s->signalled && s->stop == STOP_NONE) {
    /* Slurm stopped the job (lathed did not ask): it ends with Slurm's reason once Slurm gives it (slurm.c). */
    s->state = W_DOWN;
  } else if (mp_str_is(t, "done") && job && job == s->job) {
    job_done(d, s, m);
    release = s->remote;
  }
  if (err.code) dlog("%s", err.msg);
  mp_doc_destroy(&doc);
  if (release) slurm_release(d, s);
}

/* Whether the deadline `due` has passed; if not, brings *next down to the time left. */
static bool overdue(int64_t due, int64_t now, int64_t *next) {
  int64_t left = due - now;
  if (left <= 0) return true;
  if (left < *next) *next = left;
  return false;
}

/* Slot s's timers; brings *next down to its next deadline. */
static void slot_timers(daemon_t *d, slot_t *s, int64_t *nextp) {
  int64_t now = util_mono_ms(), next = *nextp;
  lt_err_t err = {0};
  if (s->progress_pending) {
    int64_t due = s->progress_last_mono + PROGRESS_EVERY_MS - now;
    if (due <= 0 && ev_flush_progress(d, s, false, &err))
      dlog("%s", err.msg);
    else if (due < next)
      next = due;
  }
  char why[128];
  if (s->state != W_DOWN && s->pid > 0 && !s->kill_reason[0] &&
      overdue(s->last_beat_mono + d->o.heartbeat_timeout_ms, now, &next)) {
    snprintf(why, sizeof why, "no heartbeat for %lld ms", (long long)(now - s->last_beat_mono));
    sched_kill_worker(d, s, why);
  }
  if (s->job && !s->job_started && !s->kill_reason[0] && overdue(s->start_deadline_mono, now, &next)) {
    snprintf(why, sizeof why, "job %lld not started by the worker within %lld ms", (long long)s->job,
             (long long)d->o.start_timeout_ms);
    sched_kill_worker(d, s, why);
  }
  if (s->job && s->stop != STOP_NONE && !s->kill_reason[0] && overdue(s->stop_deadline_mono, now, &next)) {
    snprintf(why, sizeof why, "job %lld did not stop within %lld ms of being asked", (long long)s->job,
             (long long)d->o.cancel_grace_ms);
    sched_kill_worker(d, s, why);
  }
  if (s->state == W_DOWN && !d->stopping && overdue(s->backoff_until_mono, now, &next)) spawn_slot(d, s);
  *nextp = next;
}

int64_t sched_timers(daemon_t *d) {
  int64_t next = 1000;
  for (int i = 0; i < d->n_slots; i++) slot_timers(d, &d->slots[i], &next);
  int64_t remote = slurm_timers(d);
  if (remote < next) next = remote;
  return next < 0 ? 0 : next;
}

void store_failed_commit(daemon_t *d, const char *why) {
  dlog("%s", why);
  out_fail(d, why);
  for (int i = 0; i < d->n_slots; i++) {
    sched_kill_worker(d, &d->slots[i], "the store failed to commit");
    if (d->slots[i].job) sched_slot_job_done(d, &d->slots[i]);
  }
  slurm_drop_all(d);
  if (!d->store_fault[0]) {
    const char *hint =
        strstr(why, "malformed") ? "stop lathed and recover it as docs/store.md says" : "free space on its disk";
    snprintf(d->store_fault, sizeof d->store_fault, "%.150s; %s", why, hint);
    dlog("the store cannot be written: read-only until a write succeeds (tried every %d ms)", STORE_RETRY_MS);
  }
  d->store_retry_mono = util_mono_ms() + STORE_RETRY_MS;
}

int64_t store_retry(daemon_t *d) {
  if (!d->store_fault[0]) return INT64_MAX;
  int64_t now = util_mono_ms();
  if (now < d->store_retry_mono) return d->store_retry_mono - now;
  lt_err_t err = {0};
  if (store_begin(d->store, true, &err) || store_probe(d->store, &err) || store_commit(d->store, &err)) {
    store_rollback(d->store);
    d->store_retry_mono = now + STORE_RETRY_MS;
    return STORE_RETRY_MS;
  }
  dlog("the store can be written again: taking writes (it failed with: %s)", d->store_fault);
  d->store_fault[0] = '\0';
  /* The jobs the store shows running lost their run with the failed commit: re-queued or failed per their kind
   * (committed with the turn). */
  if (store_begin(d->store, true, &err))
    store_failed_commit(d, err.msg);
  else
    sched_recover(d, "the store failed to commit");
  return d->store_fault[0] ? STORE_RETRY_MS : INT64_MAX;
}

int64_t sched_retention(daemon_t *d) {
  if (!d->o.keep_finished_ms) return INT64_MAX;
  int64_t now = util_mono_ms();
  if (now < d->prune_due_mono) return d->prune_due_mono - now;
  lt_err_t err = {0};
  bool more = false;
  int64_t n = store_begin(d->store, true, &err)
                  ? err.code
                  : jobs_prune(d, util_now_ms() - d->o.keep_finished_ms, NULL, &more, &err);
  if (n < 0)
    dlog("retention: %s", err.msg);
  else if (n > 0)
    dlog("retention: removed %lld finished jobs that ended over %lld s ago%s", (long long)n,
         (long long)(d->o.keep_finished_ms / 1000), more ? " (more to come)" : "");
  d->prune_due_mono = more ? now : now + RETENTION_EVERY_MS;
  return more ? 0 : RETENTION_EVERY_MS;
}

/* Runs `lathe-worker --list-devices` and reads its lines into the slot-shaped table devs (at most MAX_SLOTS);
 * returns how many, 0 when there is no Vulkan or the worker cannot run. */
static int list_devices(daemon_t *d, slot_t *devs, char kinds[][16]) {
  char out[8192];
  bool timed_out;
  static const char *const args[] = {"--list-devices", NULL};
  int status = worker_tool(d, args, out, sizeof out, &timed_out);
  if (status < 0 || timed_out || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 0;
  int n = 0;
  for (char *line = strtok(out, "\n"); line && n < MAX_SLOTS; line = strtok(NULL, "\n")) {
    char *f[5] = {0};
    int nf = 0;
    for (char *p = line; nf < 5; nf++) {
      f[nf] = p;
      char *tab = strchr(p, '\t');
      if (!tab) {
        nf++;
        break;
      }
      *tab = '\0', p = tab + 1;
    }
    if (nf < 4) continue;
    slot_t *s = &devs[n];
    memset(s, 0, sizeof *s);
    util_copy(s->index, f[0], sizeof s->index);
    util_copy(kinds[n], f[1], 16);
    util_copy(s->name, f[2], sizeof s->name);
    util_copy(s->uuid, f[3], sizeof s->uuid);
    s->mib = nf > 4 ? atoll(f[4]) : 0;
    n++;
  }
  return n;
}

/* Fills slot s to open device selector want, with its index, UUID, name and memory when the listing has it. */
static void slot_for(slot_t *s, const char *want, const slot_t *devs, int n_devs) {
  util_copy(s->want, want, sizeof s->want);
  for (int i = 0; i < n_devs; i++)
    if (!strcmp(want, devs[i].index) || !strcasecmp(want, devs[i].uuid)) {
      util_copy(s->index, devs[i].index, sizeof s->index);
      util_copy(s->uuid, devs[i].uuid, sizeof s->uuid);
      util_copy(s->name, devs[i].name, sizeof s->name);
      s->mib = devs[i].mib;
    }
}

bool sched_slots(daemon_t *d, lt_err_t *err) {
  slot_t devs[MAX_SLOTS];
  char kinds[MAX_SLOTS][16];
  int n_devs = list_devices(d, devs, kinds);
  d->n_slots = 0;
  const char *env = getenv("LATHE_DEVICE");
  if (d->o.devices[0]) {
    char list[sizeof d->o.devices];
    util_copy(list, d->o.devices, sizeof list);
    for (char *tok = strtok(list, ","); tok && d->n_slots < MAX_SLOTS; tok = strtok(NULL, ",")) {
      slot_t *s = &d->slots[d->n_slots++];
      slot_for(s, tok, devs, n_devs);
      if (n_devs && !s->index[0]) {
        char names[512] = "";
        size_t at = 0;
        for (int i = 0; i < n_devs && at < sizeof names; i++)
          at +=
              (size_t)snprintf(names + at, sizeof names - at, "%s%s (%s)", i ? ", " : "", devs[i].index, devs[i].name);
        lt_fail(err, LT_E_INVALID, "--devices: there is no device %s here; the devices: %s", tok, names);
        return false;
      }
    }
  } else if (env && *env) {
    slot_for(&d->slots[d->n_slots++], env, devs, n_devs);
  } else {
    /* Every device, but a CPU driver (lavapipe) only when there is nothing else. */
    bool other = false;
    for (int i = 0; i < n_devs; i++) other |= strcmp(kinds[i], "cpu") != 0;
    for (int i = 0; i < n_devs && d->n_slots < MAX_SLOTS; i++)
      if (!other || strcmp(kinds[i], "cpu") != 0) slot_for(&d->slots[d->n_slots++], devs[i].index, devs, n_devs);
  }
  if (!d->n_slots) d->n_slots = 1; /* no Vulkan listed: one worker of its own choice (CPU-only kinds still run) */
  for (int i = 0; i < d->n_slots; i++) {
    d->slots[i].ix = i;
    d->slots[i].dev_index = -1;
    const slot_t *s = &d->slots[i];
    if (s->want[0])
      dlog("worker %d: device %s%s%s%s", i, s->want, s->name[0] ? " (" : "", s->name, s->name[0] ? ")" : "");
    else
      dlog("worker %d: the worker's own choice of device", i);
  }
  return true;
}
