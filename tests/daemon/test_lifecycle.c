/* Every job state and operation, against a real lathed: submit, follow, succeed, fail, hold/release, priority,
 * cancel (queued and running, and a runner that ignores it), remove, result, idempotent submit, queue full. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "td.h"

static td_t t;
static evlog_t *ev;

static void setup(void) {
  memset(&t, 0, sizeof t);
  ev = calloc(1, sizeof *ev);
  static const char *const args[] = {"--cancel-grace-ms", "600", "--max-queue", "20", NULL};
  td_start(&t, args);
}

static void teardown(void) {
  td_cleanup(&t);
  free(ev);
}

TestSuite(lifecycle, .init = setup, .fini = teardown, .timeout = 30);

Test(lifecycle, queued_running_succeeded_with_result) {
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 5, 10, NULL);
  td_follow(c, id, 0, ev);
  td_assert_in_order(ev, 0);
  cr_assert_eq(ev->n_states, 3);
  cr_assert_str_eq(ev->state[0], "queued");
  cr_assert_str_eq(ev->state[1], "running");
  cr_assert_str_eq(ev->state[2], "succeeded");
  cr_assert_eq(ev->last_step, 5, "the last progress step is always kept");
  mp_doc_t *d = td_show(c, id);
  const msgpack_object *j = mp_get(mp_doc_root(d), "job");
  cr_assert_eq(td_int(j, "attempts"), 1);
  cr_assert_gt(td_int(j, "created"), 0);
  cr_assert_geq(td_int(j, "started"), td_int(j, "created"));
  cr_assert_geq(td_int(j, "finished"), td_int(j, "started"));
  char owner[32];
  snprintf(owner, sizeof owner, "uid:%u", (unsigned)getuid());
  cr_assert(td_has(j, "owner", owner), "owner is the submitting uid");
  mp_doc_destroy(&d);
  d = lc_call_id(c, "result", id, NULL, NULL);
  cr_assert_not_null(d);
  cr_assert_eq(td_int(mp_get(mp_doc_root(d), "result"), "steps"), 5);
  mp_doc_destroy(&d);
  lc_destroy(&c);
  /* The daemon's log (the journal under systemd) has one line for the start and one for the end. */
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "grep -q 'job %lld (sleep) started, attempt 1' %s && grep -q 'job %lld (sleep) succeeded after ' %s",
           (long long)id, t.log, (long long)id, t.log);
  cr_assert_eq(system(cmd), 0, "%s", cmd);
}

Test(lifecycle, failed_with_reason) {
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 5, 0, "fail", (int64_t)2, NULL);
  td_follow(c, id, 0, ev);
  cr_assert_str_eq(ev->state[ev->n_states - 1], "failed");
  cr_assert(strstr(ev->reason[ev->n_states - 1], "params.fail"), "reason: %s", ev->reason[ev->n_states - 1]);
  proto_err_t pe = {0};
  mp_doc_t *d = lc_call_id(c, "result", id, &pe, NULL);
  cr_assert_not_null(d, "a failed job has a result reply: %s", pe.msg);
  mp_doc_destroy(&d);
  lc_destroy(&c);
}

Test(lifecycle, held_released_and_priority_order) {
  lc_t *c = td_client(&t);
  char st[16];
  /* A running job keeps the worker busy while the others wait. */
  int64_t blocker = td_sleep(c, 10, 30, NULL);
  td_wait_state(c, blocker, "running", 5000);
  proto_err_t pe = {0};
  int64_t low = lc_submit(c, "sleep", NULL, 0, NULL, 0, true, NULL, &pe, NULL);
  int64_t high = lc_submit(c, "sleep", NULL, 0, NULL, 5, true, NULL, &pe, NULL);
  int64_t plain = td_sleep(c, 1, 0, NULL);
  cr_assert_str_eq(td_state(c, low, st, sizeof st), "held");
  mp_doc_t *d = td_show(c, plain);
  cr_assert_eq(td_int(mp_get(mp_doc_root(d), "job"), "position"), 1, "held jobs take no queue position");
  mp_doc_destroy(&d);
  d = lc_call_id(c, "release", low, &pe, NULL);
  mp_doc_destroy(&d);
  d = lc_call_id(c, "release", high, &pe, NULL);
  mp_doc_destroy(&d);
  d = td_show(c, high);
  cr_assert_eq(td_int(mp_get(mp_doc_root(d), "job"), "position"), 1, "priority 5 goes first");
  mp_doc_destroy(&d);
  /* Hold and release again, and change a priority. */
  d = lc_call_id(c, "hold", plain, &pe, NULL);
  cr_assert_not_null(d);
  mp_doc_destroy(&d);
  cr_assert_str_eq(td_state(c, plain, st, sizeof st), "held");
  d = lc_call_id(c, "release", plain, &pe, NULL);
  mp_doc_destroy(&d);
  mpw_t w;
  lc_begin(c, &w, "priority");
  mpw_kint(&w, "id", plain);
  mpw_kint(&w, "priority", 9);
  d = lc_call(c, &w, &pe, NULL);
  cr_assert_not_null(d, "%s", pe.msg);
  cr_assert_eq(td_int(mp_doc_root(d), "position"), 1);
  mp_doc_destroy(&d);
  int64_t order[3] = {plain, high, low};
  for (int i = 0; i < 3; i++) td_wait_state(c, order[i], "succeeded", 10000);
  mp_doc_t *a = td_show(c, plain), *b = td_show(c, high), *e = td_show(c, low);
  int64_t sa = td_int(mp_get(mp_doc_root(a), "job"), "started"), sb = td_int(mp_get(mp_doc_root(b), "job"), "started"),
          se = td_int(mp_get(mp_doc_root(e), "job"), "started");
  cr_assert(sa <= sb && sb <= se, "ran in priority order: %lld %lld %lld", (long long)sa, (long long)sb, (long long)se);
  mp_doc_destroy(&a), mp_doc_destroy(&b), mp_doc_destroy(&e);
  /* A finished job cannot be held. */
  d = lc_call_id(c, "hold", plain, &pe, NULL);
  cr_assert_null(d);
  cr_assert_eq(pe.code, P_BAD_STATE);
  lc_destroy(&c);
}

Test(lifecycle, cancel_queued_and_held_at_once) {
  lc_t *c = td_client(&t);
  int64_t blocker = td_sleep(c, 20, 50, NULL);
  int64_t q = td_sleep(c, 1, 0, NULL);
  proto_err_t pe = {0};
  int64_t h = lc_submit(c, "sleep", NULL, 0, NULL, 0, true, NULL, &pe, NULL);
  char st[16];
  mp_doc_t *d = lc_call_id(c, "cancel", q, &pe, NULL);
  cr_assert_not_null(d, "%s", pe.msg);
  mp_doc_destroy(&d);
  cr_assert_str_eq(td_state(c, q, st, sizeof st), "cancelled", "a queued job is cancelled at once");
  d = lc_call_id(c, "cancel", h, &pe, NULL);
  mp_doc_destroy(&d);
  cr_assert_str_eq(td_state(c, h, st, sizeof st), "cancelled");
  d = lc_call_id(c, "cancel", q, &pe, NULL);
  cr_assert_not_null(d, "cancelling a cancelled job again is fine");
  mp_doc_destroy(&d);
  d = lc_call_id(c, "cancel", blocker, &pe, NULL);
  mp_doc_destroy(&d);
  lc_destroy(&c);
}

Test(lifecycle, cancel_running_stops_within_seconds) {
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 1000, 20, NULL);
  td_wait_state(c, id, "running", 5000);
  td_sleep_ms(100);
  proto_err_t pe = {0};
  mp_doc_t *d = lc_call_id(c, "cancel", id, &pe, NULL);
  cr_assert_not_null(d, "%s", pe.msg);
  cr_assert(mp_get(mp_doc_root(d), "cancelling"), "the reply says the cancel is under way");
  mp_doc_destroy(&d);
  td_wait_state(c, id, "cancelled", 2000);
  pid_t before = td_worker_pid(c);
  /* The worker stopped the job itself: it was not killed. */
  mp_doc_t *s = td_status(c);
  cr_assert_eq(td_int(mp_get(mp_doc_root(s), "worker"), "restarts"), 0);
  mp_doc_destroy(&s);
  cr_assert_gt(before, 0);
  lc_destroy(&c);
}

Test(lifecycle, runner_ignoring_cancel_is_killed_after_grace) {
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 1000, 20, "ignore_cancel", (int64_t)1, NULL);
  td_wait_state(c, id, "running", 5000);
  pid_t worker = td_worker_pid(c);
  proto_err_t pe = {0};
  mp_doc_t *d = lc_call_id(c, "cancel", id, &pe, NULL);
  mp_doc_destroy(&d);
  td_wait_state(c, id, "cancelled", 3000); /* grace is 600 ms */
  d = td_show(c, id);
  cr_assert(td_has(mp_get(mp_doc_root(d), "job"), "reason", "did not stop"), "reason names the kill");
  mp_doc_destroy(&d);
  /* A fresh worker takes over and runs the next job. */
  int64_t next = td_sleep(c, 2, 0, NULL);
  td_wait_state(c, next, "succeeded", 5000);
  cr_assert_neq(td_worker_pid(c), worker);
  lc_destroy(&c);
}

Test(lifecycle, remove_and_not_found) {
  lc_t *c = td_client(&t);
  int64_t id = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, id, "succeeded", 5000);
  int64_t blocker = td_sleep(c, 50, 20, NULL);
  td_wait_state(c, blocker, "running", 5000);
  proto_err_t pe = {0};
  mp_doc_t *d = lc_call_id(c, "remove", blocker, &pe, NULL);
  cr_assert_null(d);
  cr_assert_eq(pe.code, P_BAD_STATE, "a running job is not removed");
  d = lc_call_id(c, "remove", id, &pe, NULL);
  cr_assert_not_null(d, "%s", pe.msg);
  mp_doc_destroy(&d);
  d = lc_call_id(c, "show", id, &pe, NULL);
  cr_assert_null(d);
  cr_assert_eq(pe.code, P_NOT_FOUND);
  cr_assert_str_eq(pe.field, "id");
  char dir[256];
  snprintf(dir, sizeof dir, "%s/jobs/%lld", t.home, (long long)id);
  cr_assert_neq(access(dir, F_OK), 0, "its folder is gone");
  lc_destroy(&c);
}

Test(lifecycle, submission_id_makes_submit_idempotent) {
  lc_t *c = td_client(&t);
  proto_err_t pe = {0};
  bool existing = true;
  int64_t a = lc_submit(c, "sleep", NULL, 0, "retry-me", 0, true, &existing, &pe, NULL);
  cr_assert_gt(a, 0);
  cr_assert_not(existing);
  int64_t b = lc_submit(c, "sleep", NULL, 0, "retry-me", 0, true, &existing, &pe, NULL);
  cr_assert_eq(b, a, "a retried submit names the same job");
  cr_assert(existing);
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kint(&w, "steps", 3);
  mpw_end(&w);
  int64_t x = lc_submit(c, "sleep", w.sb.data, w.sb.size, "retry-me", 0, true, NULL, &pe, NULL);
  mpw_free(&w);
  cr_assert_eq(x, 0);
  cr_assert_eq(pe.code, P_CONFLICT);
  lc_destroy(&c);
}

Test(lifecycle, bounded_queue_answers_queue_full) {
  lc_t *c = td_client(&t);
  proto_err_t pe = {0};
  for (int i = 0; i < 20; i++) cr_assert_gt(lc_submit(c, "sleep", NULL, 0, NULL, 0, true, NULL, &pe, NULL), 0);
  cr_assert_eq(lc_submit(c, "sleep", NULL, 0, NULL, 0, true, NULL, &pe, NULL), 0);
  cr_assert_eq(pe.code, P_QUEUE_FULL);
  cr_assert(strstr(pe.msg, "queue full"), "%s", pe.msg);
  lc_destroy(&c);
}

Test(lifecycle, selftest_runs_op_add_on_the_workers_gpu) {
  lc_t *c = td_client(&t);
  proto_err_t pe = {0};
  lt_err_t err = {0};
  int64_t id = lc_submit(c, "selftest", NULL, 0, NULL, 0, false, NULL, &pe, &err);
  cr_assert_gt(id, 0, "%s", err.msg);
  td_follow(c, id, 0, ev);
  mp_doc_t *d = lc_call_id(c, "result", id, NULL, NULL);
  const msgpack_object *m = mp_doc_root(d);
  cr_assert_str_eq(ev->state[ev->n_states - 1], "succeeded", "reason: %s", ev->reason[ev->n_states - 1]);
  cr_assert_eq(td_int(mp_get(m, "result"), "mismatches"), 0);
  char device[256] = "";
  cr_assert(mp_str_copy(mp_get(mp_get(m, "result"), "device"), device, sizeof device) && device[0]);
  cr_log_info("selftest ran on %s", device);
  mp_doc_destroy(&d);
  /* The worker keeps the device open (keep-alive) and reports it. */
  d = td_status(c);
  cr_assert(td_has(mp_get(mp_doc_root(d), "worker"), "device", device));
  mp_doc_destroy(&d);
  lc_destroy(&c);
}

Test(lifecycle, list_shows_positions_and_all) {
  lc_t *c = td_client(&t);
  int64_t blocker = td_sleep(c, 100, 20, NULL);
  td_wait_state(c, blocker, "running", 5000);
  int64_t a = td_sleep(c, 1, 0, NULL), b = td_sleep(c, 1, 0, NULL);
  mpw_t w;
  lc_begin(c, &w, "list");
  mp_doc_t *d = lc_call(c, &w, NULL, NULL);
  const msgpack_object *jobs = mp_get(mp_doc_root(d), "jobs");
  cr_assert_eq(jobs->via.array.size, 3);
  for (uint32_t i = 0; i < 3; i++) {
    const msgpack_object *j = &jobs->via.array.ptr[i];
    int64_t id = td_int(j, "id");
    cr_assert(mp_get(j, "kind") && mp_get(j, "state") && mp_get(j, "reason"));
    if (id == a) cr_assert_eq(td_int(j, "position"), 1);
    if (id == b) cr_assert_eq(td_int(j, "position"), 2);
  }
  mp_doc_destroy(&d);
  proto_err_t pe;
  d = lc_call_id(c, "cancel", blocker, &pe, NULL);
  mp_doc_destroy(&d);
  td_wait_state(c, b, "succeeded", 5000);
  lc_begin(c, &w, "list");
  d = lc_call(c, &w, NULL, NULL);
  cr_assert_eq(mp_get(mp_doc_root(d), "jobs")->via.array.size, 0, "finished jobs leave the default list");
  mp_doc_destroy(&d);
  lc_begin(c, &w, "list");
  mpw_kbool(&w, "all", true);
  d = lc_call(c, &w, NULL, NULL);
  cr_assert_eq(mp_get(mp_doc_root(d), "jobs")->via.array.size, 3);
  mp_doc_destroy(&d);
  lc_destroy(&c);
}
