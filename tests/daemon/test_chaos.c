/* Chaos: random kill -9s of the daemon and of the worker while jobs run and watchers follow them. Afterwards every
 * acknowledged job is in the store, ends in a terminal state (failed and cancelled ones with a reason), and every
 * watcher saw its job's events with gap-free sequence numbers. `make check` runs a short round
 * (LATHE_CHAOS_ROUNDS, default 6); `make soak` a long one (docs/operations.md). The kill times come from a seed
 * (LATHE_CHAOS_SEED, default the clock) that a failure names, so a failing run can be repeated. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "td.h"

static td_t t;

static void setup(void) { memset(&t, 0, sizeof t); }
static void teardown(void) { td_cleanup(&t); }

TestSuite(chaos, .init = setup, .fini = teardown, .timeout = 1800);

#define MAX_JOBS 512
#define WATCHERS 6

/* One watcher: follows a job across daemon deaths (reconnecting, asking from the last seq it saw). */
typedef struct watcher {
  pthread_t th;
  int64_t job;
  int64_t seq[4096];
  int n;
  bool final;
  char why[200]; /* what went wrong, "" when nothing */
} watcher_t;

static atomic_bool stop_watching;

static bool record(void *user, const msgpack_object *ev) {
  watcher_t *w = user;
  int64_t seq = 0;
  mp_as_int(mp_get(ev, "seq"), &seq);
  if (w->n < 4096) w->seq[w->n++] = seq;
  return true;
}

static void *watch_main(void *arg) {
  watcher_t *w = arg;
  while (!w->final && !atomic_load(&stop_watching)) {
    lc_opts_t o = {.socket = t.sock, .timeout_ms = 2000};
    lc_t *c = lc_new(&o, NULL);
    if (!c) {
      td_sleep_ms(100);
      continue;
    }
    int64_t last = w->n ? w->seq[w->n - 1] : 0;
    lc_follow(c, w->job, last, record, w, NULL, NULL, NULL, NULL);
    /* Finished when the job is in a final state (read back, since lc_follow also returns on a daemon death). */
    mp_doc_t *d = lc_call_id(c, "show", w->job, NULL, NULL);
    if (d) {
      const msgpack_object *st = mp_get(mp_get(mp_doc_root(d), "job"), "state");
      w->final = mp_str_is(st, "succeeded") || mp_str_is(st, "failed") || mp_str_is(st, "cancelled");
      mp_doc_destroy(&d);
    }
    lc_destroy(&c);
    if (!w->final) td_sleep_ms(50);
  }
  return NULL;
}

/* A client of the current daemon, retried while it restarts. */
static lc_t *client(void) {
  for (int i = 0; i < 200; i++) {
    lc_opts_t o = {.socket = t.sock, .timeout_ms = 3000};
    lc_t *c = lc_new(&o, NULL);
    mpw_t w;
    if (c) {
      lc_begin(c, &w, "ping");
      mp_doc_t *d = lc_call(c, &w, NULL, NULL);
      if (d) {
        mp_doc_destroy(&d);
        return c;
      }
      lc_destroy(&c);
    }
    td_sleep_ms(50);
  }
  cr_assert_fail("the daemon does not answer");
  return NULL;
}

/* Submits a sleep job of `steps` steps of `delay` ms; its id, or 0 when the daemon died before acknowledging. */
static int64_t submit(lc_t *c, int64_t steps, int64_t delay) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kint(&w, "steps", steps);
  mpw_kint(&w, "delay_ms", delay);
  mpw_end(&w);
  int64_t id = lc_submit(c, "sleep", w.sb.data, w.sb.size, NULL, 0, false, NULL, NULL, NULL);
  mpw_free(&w);
  return id > 0 ? id : 0;
}

/* Waits until job id is in a final state; asserts within timeout_ms, naming the seed. */
static void wait_final(lc_t *c, int64_t id, int timeout_ms, unsigned seed) {
  char st[16] = "";
  for (int waited = 0; waited < timeout_ms; waited += 50) {
    td_state(c, id, st, sizeof st);
    if (!strcmp(st, "succeeded") || !strcmp(st, "failed") || !strcmp(st, "cancelled")) return;
    td_sleep_ms(50);
  }
  cr_assert_fail("job %lld is still %s after %d ms (LATHE_CHAOS_SEED=%u)", (long long)id, st, timeout_ms, seed);
}

Test(chaos, kills_lose_no_job_and_no_event) {
  const char *r = getenv("LATHE_CHAOS_ROUNDS"), *s = getenv("LATHE_CHAOS_SEED");
  int rounds = r && atoi(r) > 0 ? atoi(r) : 6;
  unsigned seed = s && *s ? (unsigned)strtoul(s, NULL, 10) : (unsigned)time(NULL);
  cr_log_info("chaos: %d rounds, LATHE_CHAOS_SEED=%u", rounds, seed);
  srand(seed);
  static const char *const args[] = {"--max-attempts", "1000", "--heartbeat-timeout-ms", "3000", NULL};
  td_start(&t, args);
  lc_t *c = client();
  static int64_t ids[MAX_JOBS];
  int n = 0;
  for (int i = 0; i < 8; i++) ids[n++] = submit(c, 4 + rand() % 8, 40 + rand() % 60);
  static watcher_t ws[WATCHERS];
  atomic_store(&stop_watching, false);
  for (int i = 0; i < WATCHERS; i++) {
    memset(&ws[i], 0, sizeof ws[i]);
    ws[i].job = ids[i];
    cr_assert_eq(pthread_create(&ws[i].th, NULL, watch_main, &ws[i]), 0);
  }
  for (int round = 0; round < rounds; round++) {
    td_sleep_ms(150 + rand() % 400);
    for (int k = 0; k < 3 && n < MAX_JOBS; k++) {
      int64_t id = submit(c, 2 + rand() % 6, 30 + rand() % 50);
      if (id) ids[n++] = id;
    }
    if (rand() % 2) {
      pid_t worker = td_worker_pid(c);
      if (worker > 0) kill(worker, SIGKILL);
    } else {
      lc_destroy(&c);
      td_kill9(&t);
      td_restart(&t);
      c = client();
    }
  }
  /* Every acknowledged job ends, and is there. */
  for (int i = 0; i < n; i++) {
    cr_assert_gt(ids[i], 0);
    wait_final(c, ids[i], 120000, seed);
    mp_doc_t *d = td_show(c, ids[i]);
    const msgpack_object *j = mp_get(mp_doc_root(d), "job");
    cr_assert(j, "job %lld is gone (LATHE_CHAOS_SEED=%u)", (long long)ids[i], seed);
    if (!td_has(j, "state", "succeeded")) {
      char reason[256] = "";
      mp_str_copy(mp_get(j, "reason"), reason, sizeof reason);
      cr_assert(reason[0], "job %lld ended without a reason (LATHE_CHAOS_SEED=%u)", (long long)ids[i], seed);
    }
    mp_doc_destroy(&d);
  }
  for (int i = 0; i < WATCHERS; i++) {
    for (int k = 0; k < 200 && !ws[i].final; k++) td_sleep_ms(50);
    atomic_store(&stop_watching, true);
    pthread_join(ws[i].th, NULL);
    cr_assert(ws[i].final, "watcher of job %lld never saw it end (LATHE_CHAOS_SEED=%u)", (long long)ws[i].job, seed);
    for (int k = 0; k < ws[i].n; k++)
      cr_assert_eq(ws[i].seq[k], k + 1, "watcher of job %lld: event %d has seq %lld (LATHE_CHAOS_SEED=%u)",
                   (long long)ws[i].job, k, (long long)ws[i].seq[k], seed);
  }
  lc_destroy(&c);
}
