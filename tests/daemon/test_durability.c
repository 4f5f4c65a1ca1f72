/* Crashes and restarts: kill -9 of the daemon and of the worker, a hung worker, a crashing kind, SIGTERM with a
 * job running, a second daemon on the same socket, 1,000 submitted jobs. Nothing may be lost. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "td.h"

static td_t t;

static void setup(void) { memset(&t, 0, sizeof t); }
static void teardown(void) { td_cleanup(&t); }

TestSuite(durability, .init = setup, .fini = teardown, .timeout = 60);

static bool alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

Test(durability, kill9_daemon_with_jobs_queued_and_running) {
  static const char *const args[] = {"--max-attempts", "3", NULL};
  td_start(&t, args);
  lc_t *c = td_client(&t);
  int64_t running = td_sleep(c, 20, 50, NULL);
  int64_t q1 = td_sleep(c, 2, 0, NULL), q2 = td_sleep(c, 2, 0, NULL);
  proto_err_t pe;
  int64_t held = lc_submit(c, "sleep", NULL, 0, NULL, 0, true, NULL, &pe, NULL);
  td_wait_state(c, running, "running", 5000);
  td_sleep_ms(700); /* past the first checkpoint (written every 500 ms) */
  pid_t worker = td_worker_pid(c);
  lc_destroy(&c);
  td_kill9(&t);
  /* The worker dies with the daemon (no second owner of the GPU). */
  for (int i = 0; i < 100 && alive(worker); i++) td_sleep_ms(20);
  cr_assert_not(alive(worker), "worker %d outlived the daemon", (int)worker);
  td_restart(&t);
  c = td_client(&t);
  char st[16];
  cr_assert_str_eq(td_state(c, held, st, sizeof st), "held", "a held job stays held");
  td_wait_state(c, running, "succeeded", 15000);
  td_wait_state(c, q1, "succeeded", 5000);
  td_wait_state(c, q2, "succeeded", 5000);
  evlog_t *ev = calloc(1, sizeof *ev);
  td_follow(c, running, 0, ev);
  td_assert_in_order(ev, 0);
  bool requeued = false;
  for (int i = 0; i < ev->n_states; i++)
    if (!strcmp(ev->state[i], "queued") && strstr(ev->reason[i], "lathed restarted")) requeued = true;
  cr_assert(requeued, "the interrupted job was re-queued with the reason");
  mp_doc_t *d = lc_call_id(c, "result", running, NULL, NULL);
  cr_assert_gt(td_int(mp_get(mp_doc_root(d), "result"), "resumed_from"), 0, "it resumed from its checkpoint");
  mp_doc_destroy(&d);
  free(ev);
  lc_destroy(&c);
}

Test(durability, kill9_worker_mid_job) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 15, 40, NULL);
  td_wait_state(c, id, "running", 5000);
  td_sleep_ms(200);
  pid_t worker = td_worker_pid(c);
  cr_assert_gt(worker, 0);
  kill(worker, SIGKILL);
  td_wait_state(c, id, "succeeded", 15000);
  mp_doc_t *d = td_show(c, id);
  const msgpack_object *j = mp_get(mp_doc_root(d), "job");
  cr_assert_eq(td_int(j, "attempts"), 2);
  mp_doc_destroy(&d);
  d = td_status(c);
  const msgpack_object *w = mp_get(mp_doc_root(d), "worker");
  cr_assert_geq(td_int(w, "restarts"), 1);
  cr_assert_neq(td_int(w, "pid"), worker, "a fresh worker replaced the killed one");
  cr_assert(td_has(w, "last_exit", "signal 9"), "last exit names the signal");
  mp_doc_destroy(&d);
  lc_destroy(&c);
}

Test(durability, crashing_kind_fails_after_max_attempts) {
  static const char *const args[] = {"--max-attempts", "2", NULL};
  td_start(&t, args);
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 5, 0, "crash", (int64_t)1, NULL);
  td_wait_state(c, id, "failed", 15000);
  mp_doc_t *d = td_show(c, id);
  const msgpack_object *j = mp_get(mp_doc_root(d), "job");
  cr_assert_eq(td_int(j, "attempts"), 2);
  cr_assert(td_has(j, "reason", "signal 6"), "reason names the crash");
  cr_assert(td_has(j, "reason", "giving up"));
  mp_doc_destroy(&d);
  int64_t next = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, next, "succeeded", 10000);
  lc_destroy(&c);
}

Test(durability, hung_worker_is_killed_and_replaced) {
  static const char *const args[] = {"--heartbeat-timeout-ms", "1500", NULL};
  td_start(&t, args);
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 10, 50, NULL);
  td_wait_state(c, id, "running", 5000);
  pid_t worker = td_worker_pid(c);
  kill(worker, SIGSTOP); /* hangs the whole process, heartbeats included */
  td_wait_state(c, id, "succeeded", 15000);
  mp_doc_t *d = td_status(c);
  cr_assert(td_has(mp_get(mp_doc_root(d), "worker"), "last_exit", "no heartbeat"));
  mp_doc_destroy(&d);
  lc_destroy(&c);
}

Test(durability, sigterm_checkpoints_and_resumes) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 30, 40, NULL);
  int64_t q = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, id, "running", 5000);
  td_sleep_ms(300);
  lc_destroy(&c);
  td_term(&t, 10000);
  td_restart(&t);
  c = td_client(&t);
  td_wait_state(c, id, "succeeded", 15000);
  td_wait_state(c, q, "succeeded", 5000);
  mp_doc_t *d = lc_call_id(c, "result", id, NULL, NULL);
  cr_assert_gt(td_int(mp_get(mp_doc_root(d), "result"), "resumed_from"), 0, "resumed from the shutdown checkpoint");
  mp_doc_destroy(&d);
  d = td_show(c, id);
  cr_assert_eq(td_int(mp_get(mp_doc_root(d), "job"), "attempts"), 1, "a shutdown does not spend an attempt");
  mp_doc_destroy(&d);
  lc_destroy(&c);
}

Test(durability, second_daemon_refuses_and_does_not_steal) {
  td_start(&t, NULL);
  td_t other = t;
  other.pid = 0;
  int rc = td_start_expect_exit(&other, NULL, 5000);
  cr_assert_eq(rc, 3, "a second lathed on the same socket exits with status 3, got %d", rc);
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, id, "succeeded", 5000);
  cr_assert_eq(lc_daemon_pid(t.sock), t.pid, "the first daemon still holds the socket");
  lc_destroy(&c);
}

Test(durability, newer_store_schema_is_refused) {
  td_start(&t, NULL);
  td_term(&t, 5000);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "sqlite3 %s/jobs.db 'PRAGMA user_version = 99' 2>/dev/null", t.home);
  cr_assert_eq(system(cmd), 0, "the sqlite3 shell (installed by scripts/deps.sh) failed: %s", cmd);
  int rc = td_start_expect_exit(&t, NULL, 5000);
  cr_assert(rc != 0 && rc != -1, "lathed must refuse a store from a newer version (exit %d)", rc);
}

/* Sends n submit requests without waiting, then reads the n replies: the daemon answers them in batches, each
 * batch in one transaction. */
static void submit_many(lc_t *c, int n, int64_t *ids) {
  for (int i = 0; i < n; i++) {
    mpw_t w;
    lc_begin(c, &w, "submit");
    mpw_kstr(&w, "kind", "sleep");
    mpw_str(&w, "params");
    mpw_map(&w);
    mpw_kint(&w, "steps", 0);
    mpw_end(&w);
    mpw_end(&w);
    cr_assert_eq(lc_send_raw(c, w.sb.data, w.sb.size, NULL), LT_OK);
    mpw_free(&w);
  }
  for (int i = 0; i < n; i++) {
    lt_err_t err = {0};
    mp_doc_t *d = lc_recv_reply(c, 20000, &err);
    cr_assert_not_null(d, "reply %d: %s", i, err.msg);
    const msgpack_object *ok = mp_get(mp_doc_root(d), "ok");
    cr_assert(ok && ok->via.boolean, "submit %d refused", i);
    ids[i] = td_int(mp_doc_root(d), "id");
    mp_doc_destroy(&d);
  }
}

Test(durability, thousand_jobs_all_accounted_for) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  enum { N = 1000 };
  int64_t *ids = calloc(N, sizeof *ids);
  int64_t t0 = util_mono_ms();
  submit_many(c, N, ids);
  int64_t t1 = util_mono_ms();
  cr_log_info("1000 submits answered in %lld ms", (long long)(t1 - t0));
  for (int i = 1; i < N; i++) cr_assert_gt(ids[i], ids[i - 1], "ids are unique and increasing");
  int64_t done = 0;
  for (int waited = 0; waited < 50000 && done < N; waited += 100) {
    mp_doc_t *d = td_status(c);
    done = td_int(mp_get(mp_doc_root(d), "jobs"), "succeeded");
    mp_doc_destroy(&d);
    if (done < N) td_sleep_ms(100);
  }
  cr_log_info("1000 no-op jobs ran in %lld ms", (long long)(util_mono_ms() - t1));
  cr_assert_eq(done, N, "all jobs succeeded (got %lld)", (long long)done);
  /* The list comes in pages of at most 500, each starting after the last id of the one before. */
  int64_t seen = 0, after = 0, pages = 0;
  for (bool more = true; more; pages++) {
    mpw_t w;
    lc_begin(c, &w, "list");
    mpw_kbool(&w, "all", true);
    mpw_kint(&w, "after", after);
    mp_doc_t *d = lc_call(c, &w, NULL, NULL);
    cr_assert(d);
    const msgpack_object *jobs = mp_get(mp_doc_root(d), "jobs");
    cr_assert_leq(jobs->via.array.size, 500);
    for (uint32_t i = 0; i < jobs->via.array.size; i++, seen++)
      cr_assert_gt(td_int(&jobs->via.array.ptr[i], "id"), after, "ids go up across pages");
    after = td_int(mp_doc_root(d), "last");
    more = mp_get(mp_doc_root(d), "more")->via.boolean;
    mp_doc_destroy(&d);
  }
  cr_assert_eq(seen, N);
  cr_assert_eq(pages, 2);
  /* The CLI reads every page. */
  char cmd[512];
  static char out[1 << 20];
  snprintf(cmd, sizeof cmd, "LATHE_SOCKET=%s %s/lathe --no-autostart --json ps --all | wc -l", t.sock, LATHE_BIN_DIR);
  cr_assert_eq(td_shell(out, sizeof out, cmd), 0);
  cr_assert_eq(atoi(out), N, "%s", out);
  free(ids);
  lc_destroy(&c);
}

/* A worker that is handed a job but never starts it (stopped here while idle, its heartbeats silent for longer
 * than the start timeout but not the heartbeat timeout) is killed after --start-timeout-ms, and the job runs on
 * the next worker. */
Test(durability, a_job_the_worker_never_starts_goes_to_a_new_worker) {
  static const char *const args[] = {"--heartbeat-timeout-ms", "60000", "--start-timeout-ms", "1000", NULL};
  td_start(&t, args);
  lc_t *c = td_client(&t);
  /* The worker must be ready (idle) before it is stopped, else nothing is handed to it. */
  bool idle = false;
  for (int i = 0; i < 400 && !idle; i++) {
    mp_doc_t *s = td_status(c);
    idle = td_has(mp_get(mp_doc_root(s), "worker"), "state", "idle");
    mp_doc_destroy(&s);
    if (!idle) td_sleep_ms(25);
  }
  cr_assert(idle, "the worker never became ready");
  pid_t worker = td_worker_pid(c);
  kill(worker, SIGSTOP);
  int64_t id = td_sleep(c, 2, 10, NULL);
  td_wait_state(c, id, "succeeded", 20000);
  mp_doc_t *d = td_status(c);
  cr_assert(td_has(mp_get(mp_doc_root(d), "worker"), "last_exit", "not started by the worker within 1000 ms"));
  mp_doc_destroy(&d);
  d = td_show(c, id);
  cr_assert_eq(td_int(mp_get(mp_doc_root(d), "job"), "attempts"), 2);
  mp_doc_destroy(&d);
  lc_destroy(&c);
}

/* Clients that follow a quiet job and go away without a word leave the watch table when their lease lapses
 * (--watch-lease-ms): the table does not fill up with the dead. */
Test(durability, watchers_that_vanish_leave_the_table) {
  static const char *const args[] = {"--watch-lease-ms", "600", NULL};
  td_start(&t, args);
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 1, 20000, NULL); /* one step of 20 s: no event while it sleeps */
  td_wait_state(c, id, "running", 5000);
  td_sleep_ms(300); /* past the progress throttle: the job is quiet from here */
  for (int k = 0; k < 20; k++) {
    lc_t *w = td_client(&t);
    mpw_t m;
    lc_begin(w, &m, "events");
    mpw_kint(&m, "id", id);
    mpw_kint(&m, "after", 1000000);
    mpw_kbool(&m, "follow", true);
    mp_doc_t *d = lc_call(w, &m, NULL, NULL);
    cr_assert(d, "follow refused");
    mp_doc_destroy(&d);
    lc_destroy(&w);
  }
  mp_doc_t *d = td_status(c);
  cr_assert_eq(td_int(mp_doc_root(d), "watchers"), 20);
  mp_doc_destroy(&d);
  int64_t n = -1;
  for (int i = 0; i < 60 && n != 0; i++) {
    td_sleep_ms(50);
    d = td_status(c);
    n = td_int(mp_doc_root(d), "watchers");
    mp_doc_destroy(&d);
  }
  cr_assert_eq(n, 0, "%lld watchers left after their lease", (long long)n);
  lc_destroy(&c);
}

/* A client probing the lock (a shared flock, held for a moment) while lathed starts does not make it refuse to
 * start: the daemon retries its exclusive lock for a bounded time. */
Test(durability, a_probe_holding_the_lock_does_not_stop_a_start) {
  td_prepare(&t);
  char lock[200];
  snprintf(lock, sizeof lock, "%s/run", t.dir);
  cr_assert_eq(mkdir(lock, 0700), 0);
  snprintf(lock, sizeof lock, "%s.lock", t.sock);
  int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  cr_assert(fd >= 0);
  cr_assert_eq(flock(fd, LOCK_SH), 0);
  pid_t holder = fork();
  if (holder == 0) { /* keeps the shared lock 300 ms after the daemon is spawned, then lets go */
    td_sleep_ms(300);
    _exit(0);
  }
  close(fd); /* the child's copy holds the lock */
  td_start(&t, NULL);
  waitpid(holder, NULL, 0);
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, id, "succeeded", 5000);
  lc_destroy(&c);
}

/* Runs a shell command line, asserting it succeeds. */
static void sh(const char *cmd) { cr_assert_eq(system(cmd), 0, "%s", cmd); }

/* A store with NULL where text belongs (a hand-edited schema) is read without a crash; a store deleted or
 * truncated next to existing job folders, or with a damaged page, is refused at start with the way out named. */
Test(durability, a_damaged_store_is_read_safely_or_refused) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  int64_t a = td_sleep(c, 1, 0, NULL), b = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, b, "succeeded", 5000);
  lc_destroy(&c);
  td_term(&t, 5000);
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "sqlite3 %s/jobs.db \"PRAGMA writable_schema=ON; UPDATE sqlite_schema SET sql = replace(replace(sql, "
           "'kind TEXT NOT NULL', 'kind TEXT'), 'reason TEXT NOT NULL', 'reason TEXT') WHERE name = 'jobs';\" && "
           "sqlite3 %s/jobs.db \"UPDATE jobs SET kind = NULL, reason = NULL WHERE id = %lld\"",
           t.home, t.home, (long long)a);
  sh(cmd);
  td_restart(&t);
  c = td_client(&t);
  mpw_t w;
  lc_begin(c, &w, "list");
  mpw_kbool(&w, "all", true);
  mp_doc_t *d = lc_call(c, &w, NULL, NULL);
  cr_assert(d, "list of a store with NULL columns");
  cr_assert_eq(mp_get(mp_doc_root(d), "jobs")->via.array.size, 2);
  mp_doc_destroy(&d);
  d = td_show(c, a);
  cr_assert(td_has(mp_get(mp_doc_root(d), "job"), "kind", ""));
  mp_doc_destroy(&d);
  lc_destroy(&c);
  td_term(&t, 5000);
  /* A damaged page (the second page overwritten with junk). */
  snprintf(cmd, sizeof cmd,
           "cp %s/jobs.db %s/jobs.keep && rm -f %s/jobs.db-wal %s/jobs.db-shm && "
           "dd if=/dev/urandom of=%s/jobs.db bs=4096 seek=1 count=1 conv=notrunc 2>/dev/null",
           t.home, t.dir, t.home, t.home, t.home);
  sh(cmd);
  cr_assert_gt(td_start_expect_exit(&t, NULL, 5000), 0);
  snprintf(cmd, sizeof cmd, "grep -q 'is damaged' %s", t.log);
  sh(cmd);
  /* Truncated to nothing, then deleted: job folders 1 and 2 are still there. */
  for (int k = 0; k < 2; k++) {
    snprintf(cmd, sizeof cmd, "%s %s/jobs.db", k == 0 ? "truncate -s 0" : "rm", t.home);
    sh(cmd);
    cr_assert_gt(td_start_expect_exit(&t, NULL, 5000), 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "grep -q 'holds 2 job folders: starting would reuse' %s && grep -q 'mv %s/jobs' %s",
             t.log, t.home, t.log);
    sh(cmd);
  }
}

/* The status's "store" field contains needle (polls up to timeout_ms). A status asked in the turn whose commit
 * fails is answered with the `internal` error that says to retry (nothing of that turn happened): it is asked
 * again. */
static bool store_says(lc_t *c, const char *needle, int timeout_ms) {
  for (int waited = 0; waited < timeout_ms; waited += 50) {
    mpw_t w;
    lc_begin(c, &w, "status");
    lt_err_t err = {0};
    mp_doc_t *d = lc_call(c, &w, NULL, &err);
    if (!d) {
      cr_assert(strstr(err.msg, "could not commit"), "status: %s", err.msg);
      td_sleep_ms(50);
      continue;
    }
    bool yes = td_has(mp_doc_root(d), "store", needle);
    mp_doc_destroy(&d);
    if (yes) return true;
    td_sleep_ms(50);
  }
  return false;
}

/* The store's disk fills while a job runs (its commit fails): the daemon turns read-only and says why; reads
 * work, writes (a cancel included) are refused naming the cause, and nothing is left "running" without a run. Once
 * space returns, a retry commits: the job gets its run back and a cancel stops it, new jobs run. */
Test(durability, a_full_disk_makes_the_daemon_read_only_until_space_returns) {
  td_prepare(&t);
  char flag[160], ao[512];
  snprintf(flag, sizeof flag, "%s/disk-full", t.dir);
  const char *asan = getenv("ASAN_OPTIONS");
  char *asan_was = asan ? strdup(asan) : NULL;
  /* The shim comes first in the preload list; a sanitized lathed must accept that. */
  snprintf(ao, sizeof ao, "%s%sverify_asan_link_order=0", asan ? asan : "", asan ? ":" : "");
  setenv("ASAN_OPTIONS", ao, 1);
  setenv("LD_PRELOAD", LATHE_FULLFS, 1);
  setenv("LATHE_TEST_FULL_FLAG", flag, 1);
  td_start(&t, NULL);
  unsetenv("LD_PRELOAD");
  if (asan_was) setenv("ASAN_OPTIONS", asan_was, 1), free(asan_was);
  lc_t *c = td_client(&t);
  cr_assert(store_says(c, "ok", 1000));
  int64_t a = td_sleep(c, 2000, 20, NULL);
  td_wait_state(c, a, "running", 5000);
  FILE *f = fopen(flag, "w");
  cr_assert(f);
  fclose(f);
  /* The running job's progress cannot be stored: the commit fails and the daemon turns read-only. */
  cr_assert(store_says(c, "free space on its disk", 10000), "the daemon did not say its store is full");
  proto_err_t pe = {0};
  const char *kv[] = {NULL}, *ik[] = {"steps", NULL};
  int64_t iv[] = {1};
  cr_assert_leq(td_submit(c, "sleep", kv, ik, iv, NULL, NULL, &pe), 0);
  cr_assert_eq(pe.code, P_READ_ONLY, "submit: %s", pe.msg);
  cr_assert(strstr(pe.msg, "disk is full") && strstr(pe.msg, "read-only"), "%s", pe.msg);
  mp_doc_t *d = lc_call_id(c, "cancel", a, &pe, NULL);
  cr_assert_null(d);
  cr_assert_eq(pe.code, P_READ_ONLY, "cancel: %s", pe.msg);
  char st[16];
  td_state(c, a, st, sizeof st); /* reads still work */
  unlink(flag);
  cr_assert(store_says(c, "ok", 10000), "the daemon did not take writes again");
  d = lc_call_id(c, "cancel", a, &pe, NULL);
  cr_assert(d, "cancel after recovery: %s", pe.msg);
  mp_doc_destroy(&d);
  td_wait_state(c, a, "cancelled", 10000);
  mp_doc_t *s = td_show(c, a);
  cr_assert(td_has(mp_get(mp_doc_root(s), "job"), "reason", "cancelled"));
  mp_doc_destroy(&s);
  int64_t b = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, b, "succeeded", 10000);
  lc_destroy(&c);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "grep -q 'the store can be written again' %s", t.log);
  sh(cmd);
}

/* lathed --keep-finished D removes the jobs that finished over D ago (rows and folders) when it starts and every
 * ten minutes after; held and queued jobs stay, whatever their age. */
Test(durability, keep_finished_removes_old_finished_jobs) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  int64_t a = td_sleep(c, 1, 0, NULL), b = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, b, "succeeded", 5000);
  mpw_t p;
  mpw_init(&p);
  mpw_map(&p);
  mpw_kint(&p, "steps", 1);
  mpw_end(&p);
  proto_err_t pe = {0};
  int64_t held = lc_submit(c, "sleep", p.sb.data, p.sb.size, NULL, 0, true, NULL, &pe, NULL);
  mpw_free(&p);
  cr_assert_gt(held, 0, "%s", pe.msg);
  lc_destroy(&c);
  td_term(&t, 5000);
  td_sleep_ms(1100);
  static const char *const keep[] = {"--keep-finished", "1s", NULL};
  td_start(&t, keep);
  c = td_client(&t);
  mp_doc_t *d = NULL;
  for (int i = 0; i < 40 && (d = lc_call_id(c, "show", a, &pe, NULL)); i++) mp_doc_destroy(&d), td_sleep_ms(50);
  cr_assert_null(d, "job %lld is still there", (long long)a);
  cr_assert_eq(pe.code, P_NOT_FOUND);
  d = lc_call_id(c, "show", b, &pe, NULL);
  cr_assert_null(d);
  char st[16];
  cr_assert_str_eq(td_state(c, held, st, sizeof st), "held");
  char dir[256];
  snprintf(dir, sizeof dir, "%s/jobs/%lld", t.home, (long long)a);
  cr_assert_neq(access(dir, F_OK), 0, "its folder is gone");
  lc_destroy(&c);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "grep -q 'retention: removed 2 finished jobs' %s", t.log);
  sh(cmd);
  td_t bad = {0};
  static const char *const soon[] = {"--keep-finished", "soon", NULL};
  cr_assert_gt(td_start_expect_exit(&bad, soon, 5000), 0, "a duration that is none is refused");
  td_cleanup(&bad);
}
