/* Several workers, one per device: on a machine with one Vulkan device the tests show lavapipe's driver to the
 * daemon twice (two ICD files naming it), which gives devices 0 and 1; `--devices 0,0` runs two workers on one
 * device. Two jobs run at the same time, a job pinned to a device waits for that device's worker while the other
 * is idle, killing one worker touches only its job, and ps and status show which device runs what. */
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td.h"

static td_t t;

static void setup(void) { memset(&t, 0, sizeof t); }
static void teardown(void) { td_cleanup(&t); }

TestSuite(workers, .init = setup, .fini = teardown, .timeout = 90);

/* Starts lathed seeing lavapipe twice (devices 0 and 1), with extra arguments. */
static void start_two_devices(const char *const *extra) {
  td_prepare(&t);
  glob_t g;
  cr_assert_eq(glob("/usr/share/vulkan/icd.d/lvp_icd*.json", 0, NULL, &g), 0, "no lavapipe ICD file");
  char copy[256], both[1024], cmd[1024];
  snprintf(copy, sizeof copy, "%s/lvp-again.json", t.dir);
  snprintf(cmd, sizeof cmd, "cp %s %s", g.gl_pathv[0], copy);
  cr_assert_eq(system(cmd), 0);
  snprintf(both, sizeof both, "%s:%s", g.gl_pathv[0], copy);
  globfree(&g);
  setenv("VK_ICD_FILENAMES", both, 1);
  td_start(&t, extra);
  unsetenv("VK_ICD_FILENAMES");
}

/* The `worker` and `device` fields of job id's show reply (-1 when nil). */
static void placed(lc_t *c, int64_t id, int64_t *worker, int64_t *device) {
  mp_doc_t *d = td_show(c, id);
  const msgpack_object *j = mp_get(mp_doc_root(d), "job");
  *worker = td_int(j, "worker");
  *device = td_int(j, "device");
  mp_doc_destroy(&d);
}

/* A sleep job pinned to device pin (NULL: none) of `steps` 50 ms steps. */
static int64_t sleeper(lc_t *c, int64_t steps, const char *pin) {
  const char *kv[] = {"device", pin, NULL};
  const char *ik[] = {"steps", "delay_ms", NULL};
  const int64_t iv[] = {steps, 50};
  return td_submit(c, "sleep", pin ? kv : kv + 2, ik, iv, NULL, NULL, NULL);
}

Test(workers, two_jobs_run_at_once_one_per_device) {
  start_two_devices(NULL);
  lc_t *c = td_client(&t);
  mp_doc_t *st = td_status(c);
  const msgpack_object *ws = mp_get(mp_doc_root(st), "workers");
  cr_assert(ws && ws->via.array.size == 2, "one worker per device");
  mp_doc_destroy(&st);
  int64_t a = sleeper(c, 200, NULL), b = sleeper(c, 200, NULL);
  td_wait_state(c, a, "running", 10000);
  td_wait_state(c, b, "running", 10000);
  int64_t wa, da, wb, db;
  placed(c, a, &wa, &da);
  placed(c, b, &wb, &db);
  cr_assert(wa != wb && wa >= 0 && wb >= 0, "the two jobs run on different workers (%lld, %lld)", (long long)wa,
            (long long)wb);
  cr_assert(da != db && da >= 0 && db >= 0, "and on different devices (%lld, %lld)", (long long)da, (long long)db);
  /* The CLI shows it: `lathe devices` a busy line per worker, `lathe ps` the device of each running job. */
  static char out[1 << 14];
  char cmd[512];
  snprintf(cmd, sizeof cmd, "%s/lathe --no-autostart --socket %s devices", LATHE_BIN_DIR, t.sock);
  cr_assert_eq(td_shell(out, sizeof out, cmd), 0, "%s", out);
  int busy = 0;
  for (const char *p = out; (p = strstr(p, " busy ")); p++) busy++;
  cr_assert_eq(busy, 2, "%s", out);
  cr_assert(strstr(out, "WORKER  DEVICE NAME") && strstr(out, "MiB"), "%s", out);
  snprintf(cmd, sizeof cmd, "%s/lathe --no-autostart --socket %s ps", LATHE_BIN_DIR, t.sock);
  cr_assert_eq(td_shell(out, sizeof out, cmd), 0, "%s", out);
  cr_assert(strstr(out, " DEV ") && strstr(out, "    0  ") && strstr(out, "    1  "), "%s", out);
  /* A job pinned to a device that has no worker is refused at submit. */
  proto_err_t pe = {0};
  const char *kv[] = {"device", "7", NULL};
  cr_assert_leq(td_submit(c, "sleep", kv, NULL, NULL, NULL, NULL, &pe), 0);
  cr_assert_str_eq(pe.field, "params.device");
  /* --memory: a job that needs more device memory than any device has is refused; one that fits runs. */
  mp_doc_t *sd = td_status(c);
  int64_t mib = td_int(&mp_get(mp_doc_root(sd), "workers")->via.array.ptr[0], "memory_mib");
  mp_doc_destroy(&sd);
  cr_assert_gt(mib, 0, "the listing gives each device's memory");
  const char *mk[] = {"memory", NULL};
  const int64_t too_much[] = {mib + 1}, enough[] = {mib};
  cr_assert_leq(td_submit(c, "sleep", kv + 2, mk, too_much, NULL, NULL, &pe), 0);
  cr_assert_str_eq(pe.field, "params.memory");
  cr_assert(strstr(pe.msg, "MiB"), "%s", pe.msg);
  int64_t fits = td_submit(c, "sleep", kv + 2, mk, enough, NULL, NULL, NULL);
  cr_assert_gt(fits, 0);
  lc_destroy(&c);
}

Test(workers, a_pinned_job_waits_for_its_device_and_a_killed_worker_touches_only_its_job) {
  start_two_devices(NULL);
  lc_t *c = td_client(&t);
  int64_t a = sleeper(c, 400, "1");
  td_wait_state(c, a, "running", 10000);
  int64_t b = sleeper(c, 400, "1");
  int64_t other = sleeper(c, 400, NULL);
  td_wait_state(c, other, "running", 10000);
  char s[16];
  cr_assert_str_eq(td_state(c, b, s, sizeof s), "queued", "pinned to the busy device 1, it waits");
  int64_t w, dev;
  placed(c, other, &w, &dev);
  cr_assert_eq(dev, 0, "the unpinned job took the idle device");
  placed(c, a, &w, &dev);
  cr_assert_eq(dev, 1);
  /* Kill device 1's worker: its job is re-queued (sleep resumes), the other job runs on untouched. */
  mp_doc_t *st = td_status(c);
  const msgpack_object *ws = mp_get(mp_doc_root(st), "workers");
  pid_t victim = (pid_t)td_int(&ws->via.array.ptr[w], "pid");
  mp_doc_destroy(&st);
  cr_assert_gt(victim, 0);
  kill(victim, SIGKILL);
  for (int i = 0; i < 200 && strcmp(td_state(c, a, s, sizeof s), "running") == 0; i++) {
    mp_doc_t *d = td_show(c, a);
    bool again = td_int(mp_get(mp_doc_root(d), "job"), "attempts") > 1;
    mp_doc_destroy(&d);
    if (again) break;
    td_sleep_ms(50);
  }
  mp_doc_t *d = td_show(c, other);
  cr_assert_eq(td_int(mp_get(mp_doc_root(d), "job"), "attempts"), 1, "the other worker's job was not touched");
  cr_assert(td_has(mp_get(mp_doc_root(d), "job"), "state", "running"));
  mp_doc_destroy(&d);
  /* Device 1's worker comes back; the cancelled first job frees it and the waiting one runs there. */
  cr_assert_not_null(lc_call_id(c, "cancel", a, NULL, NULL));
  td_wait_state(c, a, "cancelled", 20000);
  td_wait_state(c, b, "running", 20000);
  placed(c, b, &w, &dev);
  cr_assert_eq(dev, 1, "the pinned job ran on its device");
  lc_destroy(&c);
}

Test(workers, two_workers_on_one_device) {
  static const char *const args[] = {"--devices", "0,0", NULL};
  td_start(&t, args);
  lc_t *c = td_client(&t);
  /* --device any is no pin (stored as the default), like naming none. */
  int64_t a = sleeper(c, 200, "any"), b = sleeper(c, 200, "0");
  mp_doc_t *shown = td_show(c, a);
  char pin[16] = "?";
  mp_str_copy(mp_get(mp_get(mp_get(mp_doc_root(shown), "job"), "params"), "device"), pin, sizeof pin);
  mp_doc_destroy(&shown);
  cr_assert_str_eq(pin, "", "--device any stored as %s", pin);
  td_wait_state(c, a, "running", 10000);
  td_wait_state(c, b, "running", 10000);
  int64_t wa, da, wb, db;
  placed(c, a, &wa, &da);
  placed(c, b, &wb, &db);
  cr_assert(wa != wb && da == 0 && db == 0, "workers %lld and %lld, devices %lld and %lld", (long long)wa,
            (long long)wb, (long long)da, (long long)db);
  lc_destroy(&c);
  td_t bad = {0};
  static const char *const wrong[] = {"--devices", "0,,1", NULL};
  cr_assert_gt(td_start_expect_exit(&bad, wrong, 5000), 0, "a malformed list is refused");
  td_cleanup(&bad);
  td_t absent = {0};
  static const char *const none[] = {"--devices", "0,5", NULL};
  cr_assert_gt(td_start_expect_exit(&absent, none, 5000), 0, "a device that is not there is refused");
  char cmd[512];
  snprintf(cmd, sizeof cmd, "grep -q 'there is no device 5 here; the devices: 0 (' %s", absent.log);
  cr_assert_eq(system(cmd), 0, "%s", cmd);
  td_cleanup(&absent);
}

/* The status reply's workers as "STATE:JOB" for worker 0 and 1 into a and b (JOB 0 when none). */
static void worker_states(lc_t *c, char *a, char *b, size_t n) {
  mp_doc_t *st = td_status(c);
  const msgpack_object *ws = mp_get(mp_doc_root(st), "workers");
  char *out[2] = {a, b};
  for (uint32_t i = 0; i < 2 && ws && i < ws->via.array.size; i++) {
    char state[16] = "";
    mp_str_copy(mp_get(&ws->via.array.ptr[i], "state"), state, sizeof state);
    snprintf(out[i], n, "%s:%lld", state, (long long)td_int(&ws->via.array.ptr[i], "job"));
  }
  mp_doc_destroy(&st);
}

Test(workers, data_parallel_tune_zo_gives_the_bytes_of_one_device, .timeout = 240) {
  /* tune-zo --devices 2 borrows the second worker's device (shown `lent`, a sleep job waits meanwhile), scores
   * each batch's two micro-batches on the two devices and exchanges only the losses: its checkpoint, final weights
   * and run log are byte for byte those of one device running the same micro-batches. A third device is refused. */
  start_two_devices(NULL);
  lc_t *c = td_client(&t);
  char data[PATH_MAX], out[3][PATH_MAX + 8];
  snprintf(data, sizeof data, "%s/train.jsonl", t.dir);
  FILE *f = fopen(data, "w");
  cr_assert(f != NULL);
  static const char *const words[] = {"the", "lord", "said", "unto", "moses", "and", "aaron", "speak"};
  for (int i = 0; i < 24; i++)
    fprintf(f, "{\"text\": \"%s %s %s %s %s\"}\n", words[i % 8], words[(i * 3) % 8], words[(i + 2) % 8],
            words[(i * 7) % 8], words[(i + 5) % 8]);
  cr_assert_eq(fclose(f), 0);
  int64_t ids[3];
  /* devices, micro_batch: 2 devices sharing each batch of 4 (micro-batches of 2 by default), then one device with
   * micro-batches of 2, then one device with the whole batch per forward pass. */
  const int64_t dev[3] = {2, 1, 1}, micro[3] = {0, 2, 0};
  int64_t sleeper_id = 0;
  for (int r = 0; r < 3; r++) {
    snprintf(out[r], sizeof out[r], "%s/out%d", t.dir, r);
    const char *kv[] = {
        "model", LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny", "data", data, "output", out[r], "method", "lezo", NULL};
    const char *ik[] = {"steps", "batch", "save_every", "eval_every", "seed", "devices", "micro_batch", NULL};
    const int64_t iv[] = {60, 4, 30, 0, 9, dev[r], micro[r]};
    const char *fk[] = {"lr", "eps", NULL};
    const double fv[] = {1e-3, 1e-2};
    ids[r] = td_submit(c, "tune-zo", kv, ik, iv, fk, fv, NULL);
    if (r == 0) {
      /* While it runs: worker 0 or 1 busy with it, the other lent to it, and a sleep job waits for a worker. */
      char a[48] = "", b[48] = "", want_busy[48], want_lent[48];
      snprintf(want_busy, sizeof want_busy, "busy:%lld", (long long)ids[0]);
      snprintf(want_lent, sizeof want_lent, "lent:%lld", (long long)ids[0]);
      bool seen = false;
      for (int waited = 0; waited < 30000 && !seen; waited += 10) {
        worker_states(c, a, b, sizeof a);
        seen = (!strcmp(a, want_busy) && !strcmp(b, want_lent)) || (!strcmp(a, want_lent) && !strcmp(b, want_busy));
        if (!seen) td_sleep_ms(10);
      }
      cr_assert(seen, "workers %s and %s while job %lld ran on two devices", a, b, (long long)ids[0]);
      sleeper_id = sleeper(c, 1, NULL);
      mp_doc_t *d = td_show(c, sleeper_id);
      char state[16] = "";
      mp_str_copy(mp_get(mp_get(mp_doc_root(d), "job"), "state"), state, sizeof state);
      mp_doc_destroy(&d);
      cr_assert_str_eq(state, "queued", "the sleep job waits while both devices are taken");
    }
    td_wait_state(c, ids[r], "succeeded", 200000);
  }
  td_wait_state(c, sleeper_id, "succeeded", 30000);
  static const char *const files[] = {"model.safetensors", "zo-log.jsonl", "checkpoint-30/model.safetensors"};
  for (int i = 0; i < 3; i++) {
    char fa[PATH_MAX + 64], fb[PATH_MAX + 64];
    snprintf(fa, sizeof fa, "%s/%s", out[0], files[i]);
    snprintf(fb, sizeof fb, "%s/%s", out[1], files[i]);
    cr_assert(td_same_file(fa, fb), "%s: two devices differ from one device with the same micro-batches", files[i]);
    snprintf(fb, sizeof fb, "%s/%s", out[2], files[i]);
    cr_log_info("%s with the whole batch in one forward pass: %s", files[i],
                td_same_file(fa, fb) ? "the same bytes" : "different in the last bits");
  }
  /* The log says how the work was shared. */
  mp_doc_t *ev = lc_call_id(c, "events", ids[0], NULL, NULL);
  cr_assert(ev != NULL);
  bool said = false;
  const msgpack_object *evs = mp_get(mp_doc_root(ev), "events");
  for (uint32_t i = 0; evs && i < evs->via.array.size && !said; i++) {
    char msg[512] = "";
    mp_str_copy(mp_get(mp_get(&evs->via.array.ptr[i], "data"), "msg"), msg, sizeof msg);
    said = strstr(msg, "forward passes of 2 examples on 2 devices") != NULL;
  }
  mp_doc_destroy(&ev);
  cr_assert(said, "no log line names the two devices");
  proto_err_t pe = {0};
  const char *kv[] = {
      "model", LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny", "data", data, "output", out[0], "force", "true", NULL};
  const char *ik[] = {"devices", "batch", NULL};
  const int64_t iv[] = {3, 4};
  int64_t refused = td_submit(c, "tune-zo", kv, ik, iv, NULL, NULL, &pe);
  cr_assert_leq(refused, 0, "three devices of two are refused (got job %lld)", (long long)refused);
  cr_assert(strstr(pe.msg, "3 devices at once, but this daemon has 2 workers"), "%s", pe.msg);
}
