/* Event delivery: 50 concurrent watchers of one job all get every event in order; a late watcher gets the
 * earlier ones; `events after N` pages; progress is throttled but its last step is kept. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "td.h"

static td_t t;

static void setup(void) {
  memset(&t, 0, sizeof t);
  td_start(&t, NULL);
}
static void teardown(void) { td_cleanup(&t); }

TestSuite(watch, .init = setup, .fini = teardown, .timeout = 60);

typedef struct watcher_arg {
  int64_t id;
  evlog_t *log;
  lt_status_t st;
} watcher_arg_t;

static bool record_plain(void *user, const msgpack_object *ev) {
  evlog_t *log = user;
  if (log->n < 8192) {
    const msgpack_object *s = mp_get(ev, "seq");
    int64_t seq = 0;
    if (s) mp_as_int(s, &seq);
    log->seq[log->n++] = seq;
  }
  return true;
}

static void *watch_thread(void *p) {
  watcher_arg_t *a = p;
  lc_t *c = td_client(&t);
  a->st = lc_follow(c, a->id, 0, record_plain, a->log, NULL, NULL, NULL, NULL);
  lc_destroy(&c);
  return NULL;
}

Test(watch, fifty_concurrent_watchers_get_every_event_in_order) {
  enum { W = 50 };
  lc_t *c = td_client(&t);
  /* A blocker holds the worker so that all watchers are attached before the job starts. */
  int64_t blocker = td_sleep(c, 1, 300, NULL);
  int64_t id = td_sleep(c, 40, 20, NULL);
  pthread_t th[W];
  watcher_arg_t args[W];
  for (int i = 0; i < W; i++) {
    args[i] = (watcher_arg_t){id, calloc(1, sizeof(evlog_t)), LT_E_IO};
    pthread_create(&th[i], NULL, watch_thread, &args[i]);
  }
  for (int i = 0; i < W; i++) pthread_join(th[i], NULL);
  mp_doc_t *d = td_show(c, id);
  int64_t last = td_int(mp_get(mp_doc_root(d), "job"), "last_seq");
  mp_doc_destroy(&d);
  cr_assert_gt(last, 10);
  for (int i = 0; i < W; i++) {
    cr_assert_eq(args[i].st, LT_OK, "watcher %d failed", i);
    cr_assert_eq(args[i].log->n, last, "watcher %d got %d of %lld events", i, args[i].log->n, (long long)last);
    td_assert_in_order(args[i].log, 0);
    free(args[i].log);
  }
  td_wait_state(c, blocker, "succeeded", 1000);
  lc_destroy(&c);
}

Test(watch, late_watcher_gets_earlier_events) {
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 10, 30, NULL);
  td_sleep_ms(200); /* part way through */
  evlog_t *ev = calloc(1, sizeof *ev);
  td_follow(c, id, 0, ev);
  td_assert_in_order(ev, 0);
  cr_assert_str_eq(ev->state[0], "queued", "the first event is the submission");
  cr_assert_str_eq(ev->state[ev->n_states - 1], "succeeded");
  /* And after the end: a watcher asking from seq 3 gets 4, 5, ... */
  evlog_t *late = calloc(1, sizeof *late);
  td_follow(c, id, 3, late);
  td_assert_in_order(late, 3);
  cr_assert_eq(late->n, ev->n - 3);
  free(ev), free(late);
  lc_destroy(&c);
}

Test(watch, events_after_n_pages) {
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 3, 0, NULL);
  td_wait_state(c, id, "succeeded", 5000);
  mpw_t w;
  lc_begin(c, &w, "events");
  mpw_kint(&w, "id", id);
  mpw_kint(&w, "after", 1);
  mpw_kint(&w, "limit", 2);
  mp_doc_t *d = lc_call(c, &w, NULL, NULL);
  cr_assert_not_null(d);
  const msgpack_object *m = mp_doc_root(d), *evs = mp_get(m, "events");
  cr_assert_eq(evs->via.array.size, 2);
  cr_assert_eq(td_int(&evs->via.array.ptr[0], "seq"), 2);
  cr_assert_eq(td_int(m, "last"), 3);
  cr_assert(mp_get(m, "more")->via.boolean, "more events remain");
  mp_doc_destroy(&d);
  lc_destroy(&c);
}

Test(watch, progress_is_throttled_and_the_last_step_kept) {
  lc_t *c = td_client(&t);
  /* 400 steps 2 ms apart, 500 a second: the daemon stores about ten progress events a second. */
  int64_t id = td_sleep(c, 400, 2, NULL);
  evlog_t *ev = calloc(1, sizeof *ev);
  td_follow(c, id, 0, ev);
  mp_doc_t *d = td_show(c, id);
  const msgpack_object *j = mp_get(mp_doc_root(d), "job");
  double secs = (double)(td_int(j, "finished") - td_int(j, "started")) / 1000.0;
  mp_doc_destroy(&d);
  int progress = 0;
  for (int i = 0; i < ev->n; i++) progress += !strcmp(ev->type[i], "progress");
  cr_log_info("400 steps in %.2f s stored as %d progress events", secs, progress);
  cr_assert_leq(progress, 2 + (int)(secs * 10) + 1, "at most ~10 progress events per second");
  cr_assert_gt(secs, 0.5);
  cr_assert_eq(ev->last_step, 400, "the last progress event is kept");
  free(ev);
  lc_destroy(&c);
}
