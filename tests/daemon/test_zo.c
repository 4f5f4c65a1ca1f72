/* tune-zo through the real daemon: a worker killed mid-run resumes from the last checkpoint and ends on the
 * weights an uninterrupted run reaches, and zo-replay rebuilds them from the run log. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "td.h"

#define TINY LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny"

static td_t t;

static void setup(void) { memset(&t, 0, sizeof t); }
static void teardown(void) { td_cleanup(&t); }

TestSuite(tune_zo, .init = setup, .fini = teardown, .timeout = 120);

/* Writes a small JSONL training set (text and prompt + completion rows) into the test's folder. */
static void write_data(char *path, size_t n) {
  snprintf(path, n, "%s/train.jsonl", t.dir);
  FILE *f = fopen(path, "w");
  cr_assert(f != NULL);
  static const char *const words[] = {"the", "lord", "said", "unto", "moses", "and", "aaron", "speak"};
  for (int i = 0; i < 24; i++) {
    if (i % 4 == 3)
      fprintf(f, "{\"prompt\": \"%s %s\", \"completion\": \" %s %s %s\"}\n", words[i % 8], words[(i + 3) % 8],
              words[(i + 1) % 8], words[(i * 5) % 8], words[(i + 6) % 8]);
    else
      fprintf(f, "{\"text\": \"%s %s %s %s %s\"}\n", words[i % 8], words[(i * 3) % 8], words[(i + 2) % 8],
              words[(i * 7) % 8], words[(i + 5) % 8]);
  }
  cr_assert_eq(fclose(f), 0);
}

static int64_t submit(lc_t *c, const char *kind, const char *const *kv, const int64_t *ints) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  for (int i = 0; kv[i]; i += 2) {
    mpw_str(&w, kv[i]);
    mpw_str(&w, kv[i + 1]);
  }
  static const char *const int_keys[] = {"steps", "batch", "save_every", "eval_every", "drop_layers", "seed"};
  for (int i = 0; ints && i < 6; i++) {
    mpw_str(&w, int_keys[i]);
    mpw_int(&w, ints[i]);
  }
  if (ints) {
    mpw_str(&w, "lr");
    mpw_double(&w, 1e-3);
    mpw_str(&w, "eps");
    mpw_double(&w, 1e-2);
  }
  mpw_end(&w);
  proto_err_t pe = {0};
  lt_err_t err = {0};
  int64_t id = lc_submit(c, kind, w.sb.data, w.sb.size, NULL, 0, false, NULL, &pe, &err);
  mpw_free(&w);
  cr_assert_gt(id, 0, "submit %s: %s %s", kind, err.msg, pe.msg);
  return id;
}

Test(tune_zo, killed_worker_resumes_to_the_weights_of_an_uninterrupted_run) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  char data[128], out_a[128], out_b[128], ck[160], fa[192], fb[192];
  write_data(data, sizeof data);
  snprintf(out_a, sizeof out_a, "%s/a", t.dir);
  snprintf(out_b, sizeof out_b, "%s/b", t.dir);
  /* steps, batch, save_every, eval_every, drop_layers, seed */
  const int64_t ints[] = {60, 2, 10, 0, 1, 5};
  const char *const kv_a[] = {"model", TINY, "data", data, "output", out_a, "method", "lezo", NULL};
  int64_t a = submit(c, "tune-zo", kv_a, ints);
  /* Kill the worker once the second checkpoint is complete (its folder is renamed into place whole). */
  snprintf(ck, sizeof ck, "%s/checkpoint-20/model.safetensors", out_a);
  struct stat sb;
  int waited = 0;
  for (; stat(ck, &sb) != 0 && waited < 60000; waited += 5) td_sleep_ms(5);
  cr_assert_lt(waited, 60000, "no checkpoint after 60 s");
  pid_t worker = td_worker_pid(c);
  cr_assert_gt(worker, 0);
  kill(worker, SIGKILL);
  td_wait_state(c, a, "succeeded", 60000);
  mp_doc_t *d = td_show(c, a);
  cr_assert_eq(td_int(mp_get(mp_doc_root(d), "job"), "attempts"), 2, "the job ran twice");
  mp_doc_destroy(&d);
  d = lc_call_id(c, "result", a, NULL, NULL);
  int64_t resumed = td_int(mp_get(mp_doc_root(d), "result"), "resumed_from");
  mp_doc_destroy(&d);
  /* 20, or 10 when the kill fell between the checkpoint's rename and the state file naming it. */
  cr_assert_geq(resumed, 10, "resumed from step %lld, not from a checkpoint", (long long)resumed);
  cr_log_info("worker killed after checkpoint-20 was written; attempt 2 resumed from step %lld", (long long)resumed);

  const char *const kv_b[] = {"model", TINY, "data", data, "output", out_b, "method", "lezo", NULL};
  int64_t b = submit(c, "tune_zo", kv_b, ints);
  td_wait_state(c, b, "succeeded", 60000);
  snprintf(fa, sizeof fa, "%s/model.safetensors", out_a);
  snprintf(fb, sizeof fb, "%s/model.safetensors", out_b);
  cr_assert(td_same_file(fa, fb), "the resumed run's weights differ from the uninterrupted run's");
  snprintf(fa, sizeof fa, "%s/zo-log.jsonl", out_a);
  snprintf(fb, sizeof fb, "%s/zo-log.jsonl", out_b);
  cr_assert(td_same_file(fa, fb), "the run logs differ");
  /* The loss curve of the resumed run has every step, those before the resume too (read from the run log). */
  snprintf(fa, sizeof fa, "%s/loss.svg", out_a);
  FILE *svg = fopen(fa, "r");
  cr_assert(svg, "no %s", fa);
  static char doc[1 << 16];
  size_t got = fread(doc, 1, sizeof doc - 1, svg);
  fclose(svg);
  doc[got] = '\0';
  const char *pts = strstr(doc, "points=\"");
  cr_assert(pts && strstr(doc, ">train loss<"), "%s", doc);
  int points = 0;
  for (const char *q = pts + 8; *q && *q != '"'; q++) points += *q == ',';
  cr_assert_eq(points, 60, "the curve has %d of the 60 steps", points);

  /* The log rebuilds the final weights and a checkpoint. */
  char rep[128], log[160];
  snprintf(rep, sizeof rep, "%s/replayed", t.dir);
  snprintf(log, sizeof log, "%s/zo-log.jsonl", out_a);
  const char *const kv_r[] = {"log", log, "output", rep, NULL};
  int64_t r = submit(c, "zo-replay", kv_r, NULL);
  td_wait_state(c, r, "succeeded", 30000);
  snprintf(fa, sizeof fa, "%s/model.safetensors", out_a);
  snprintf(fb, sizeof fb, "%s/model.safetensors", rep);
  cr_assert(td_same_file(fa, fb), "replaying the log gives other weights");
  lc_destroy(&c);
}

/* The first 4 KiB of a file (a safetensors header fits), NUL-terminated, into buf. */
static void head_of(const char *path, char *buf, size_t n) {
  FILE *f = fopen(path, "rb");
  cr_assert(f, "no %s", path);
  size_t got = fread(buf, 1, n - 1, f);
  fclose(f);
  for (size_t i = 0; i < got; i++)
    if (!buf[i]) buf[i] = ' ';
  buf[got] = '\0';
}

/* tune-zo writes the final weights in the base's dtype unless --dtype says otherwise (it tunes in f32). */
Test(tune_zo, the_output_keeps_the_base_dtype_unless_told) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  char data[128], out_a[128], out_b[128], path[192];
  static char head[4096];
  write_data(data, sizeof data);
  snprintf(out_a, sizeof out_a, "%s/a", t.dir);
  snprintf(out_b, sizeof out_b, "%s/b", t.dir);
  const int64_t ints[] = {2, 2, 0, 0, 0, 5};
  const char *const kv_a[] = {"model", TINY "-f16", "data", data, "output", out_a, NULL};
  int64_t a = submit(c, "tune-zo", kv_a, ints);
  const char *const kv_b[] = {"model", TINY "-f16", "data", data, "output", out_b, "dtype", "f32", NULL};
  int64_t b = submit(c, "tune-zo", kv_b, ints);
  td_wait_state(c, a, "succeeded", 60000);
  td_wait_state(c, b, "succeeded", 60000);
  snprintf(path, sizeof path, "%s/model.safetensors", out_a);
  head_of(path, head, sizeof head);
  cr_assert(strstr(head, "\"F16\"") && !strstr(head, "\"F32\""), "the f16 base gives f16 weights: %s", head);
  snprintf(path, sizeof path, "%s/model.safetensors", out_b);
  head_of(path, head, sizeof head);
  cr_assert(strstr(head, "\"F32\"") && !strstr(head, "\"F16\""), "--dtype f32: %s", head);
  lc_destroy(&c);
}
