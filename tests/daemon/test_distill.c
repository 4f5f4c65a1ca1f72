/* distill through the real daemon: kd, atkd and kid runs write their result, per-eval records of the student's and
 * the teacher's held-out loss, and a run log; a kid run killed mid-way resumes to the bytes of an uninterrupted
 * one (its rewriting is a function of the seed and the weights); bad input (tokenizers that differ, a missing
 * teacher, a mask ratio outside (0, 1), lambda outside [0, 1]) is refused at submit, naming the field. */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "td.h"

#define FIX LATHE_SOURCE_DIR "/tests/fixtures"

static td_t t;

static void setup(void) { memset(&t, 0, sizeof t); }
static void teardown(void) { td_cleanup(&t); }

TestSuite(distill, .init = setup, .fini = teardown, .timeout = 180);

/* Submits a distill job (td_submit). */
static int64_t submit(lc_t *c, const char *const *kv, const char *const *ik, const int64_t *iv, const char *const *fk,
                      const double *fv, proto_err_t *pe_out) {
  return td_submit(c, "distill", kv, ik, iv, fk, fv, pe_out);
}

static double result_num(lc_t *c, int64_t id, const char *key) {
  mp_doc_t *d = lc_call_id(c, "result", id, NULL, NULL);
  const msgpack_object *o = mp_get(mp_get(mp_doc_root(d), "result"), key);
  cr_assert(o, "job %lld's result has no %s", (long long)id, key);
  double v = o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32 ? o->via.f64 : (double)o->via.i64;
  mp_doc_destroy(&d);
  return v;
}

/* The run log's lines as JSON objects (caller json_decref()s the array). */
static json_t *read_log(const char *out) {
  char p[300], line[4096];
  snprintf(p, sizeof p, "%s/distill-log.jsonl", out);
  FILE *f = fopen(p, "r");
  cr_assert(f, "no %s", p);
  json_t *a = json_array();
  while (fgets(line, sizeof line, f)) {
    json_error_t je;
    json_t *j = json_loads(line, 0, &je);
    cr_assert(j, "%s: %s", p, je.text);
    json_array_append_new(a, j);
  }
  fclose(f);
  return a;
}

Test(distill, kd_atkd_and_kid_runs_record_student_and_teacher) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  char data[128], ev[128];
  td_write_rows(&t, data, sizeof data, "train", 24, 0);
  td_write_rows(&t, ev, sizeof ev, "eval", 9, 3);
  const char *methods[] = {"kd", "atkd", "kid"};
  double teacher_loss[3];
  for (int m = 0; m < 3; m++) {
    char out[128];
    snprintf(out, sizeof out, "%s/%s", t.dir, methods[m]);
    const char *kv[] = {"teacher",  FIX "/mixtral-tiny",
                        "student",  FIX "/llama-tiny",
                        "data",     data,
                        "eval",     ev,
                        "output",   out,
                        "method",   methods[m],
                        "kid_loss", "atkd",
                        NULL};
    const char *ik[] = {"steps", "batch", "eval_every", "seq_len", NULL};
    const int64_t iv[] = {6, 3, 3, 16};
    const char *fk[] = {"lr", "kd_temperature", NULL};
    const double fv[] = {5e-3, 2.0};
    int64_t id = submit(c, kv, ik, iv, fk, fv, NULL);
    td_wait_state(c, id, "succeeded", 120000);
    teacher_loss[m] = result_num(c, id, "teacher_eval_loss");
    double loss = result_num(c, id, "eval_loss"), ppl = result_num(c, id, "eval_ppl");
    cr_assert(fabs(ppl - exp(loss)) < 1e-9 * ppl, "%s: perplexity %g of loss %g", methods[m], ppl, loss);
    cr_assert(fabs(result_num(c, id, "teacher_eval_ppl") - exp(teacher_loss[m])) < 1e-9 * exp(teacher_loss[m]));
    json_t *log = read_log(out);
    int steps = 0, evals = 0, kid = 0, atkd = 0;
    size_t i;
    json_t *j;
    json_array_foreach(log, i, j) {
      if (json_object_get(j, "eval_loss")) {
        evals++;
        cr_assert(fabs(json_real_value(json_object_get(j, "teacher_eval_loss")) - teacher_loss[m]) < 1e-6);
        continue;
      }
      steps++;
      cr_assert(json_object_get(j, "ce") && json_object_get(j, "teacher_ce"), "%s: a step line without ce", methods[m]);
      if (json_object_get(j, "kid_masked")) {
        kid++;
        cr_assert_gt(json_integer_value(json_object_get(j, "kid_masked")), 0);
      }
      atkd += json_object_get(j, "atkd_easy") != NULL;
    }
    cr_assert_eq(steps, 6, "%s: %d step lines", methods[m], steps);
    cr_assert_eq(evals, 3, "%s: %d eval lines (steps 0, 3 and 6)", methods[m], evals);
    cr_assert_eq(kid, m == 2 ? 6 : 0, "%s: %d kid lines", methods[m], kid);
    cr_assert_eq(atkd, m == 0 ? 0 : 6, "%s: %d atkd lines", methods[m], atkd);
    json_decref(log);
    char p[200];
    struct stat sb;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", out);
    cr_assert(stat(p, &sb) == 0, "%s: no adapter", methods[m]);
  }
  /* The teacher's reference is the same model on the same data every time. */
  cr_assert(teacher_loss[0] == teacher_loss[1] && teacher_loss[1] == teacher_loss[2]);
  lc_destroy(&c);
}

Test(distill, killed_kid_run_resumes_to_the_bytes_of_an_uninterrupted_run) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  char data[128], out_a[128], out_b[128], ck[200], fa[200], fb[200];
  td_write_rows(&t, data, sizeof data, "train", 24, 0);
  snprintf(out_a, sizeof out_a, "%s/a", t.dir);
  snprintf(out_b, sizeof out_b, "%s/b", t.dir);
  const char *ik[] = {"steps", "batch", "save_every", "eval_every", "seq_len", "seed", NULL};
  const int64_t iv[] = {40, 3, 10, 0, 16, 7};
  const char *fk[] = {"lr", "mask_ratio", NULL};
  const double fv[] = {1e-3, 0.5};
  const char *kv_a[] = {"teacher", FIX "/mixtral-tiny",
                        "student", FIX "/llama-tiny",
                        "data",    data,
                        "output",  out_a,
                        "method",  "kid",
                        "train",   "full",
                        NULL};
  int64_t a = submit(c, kv_a, ik, iv, fk, fv, NULL);
  snprintf(ck, sizeof ck, "%s/checkpoint-20/train-state.safetensors", out_a);
  struct stat sb;
  int waited = 0;
  char state[32] = "";
  for (; stat(ck, &sb) != 0 && waited < 90000; waited += 5) {
    td_sleep_ms(5);
    if (waited % 1000 == 0 && !strcmp(td_state(c, a, state, sizeof state), "failed")) break;
  }
  if (!strcmp(state, "failed")) {
    mp_doc_t *d = td_show(c, a);
    char why[512] = "";
    mp_str_copy(mp_get(mp_get(mp_doc_root(d), "job"), "reason"), why, sizeof why);
    mp_doc_destroy(&d);
    cr_assert_fail("the run failed: %s", why);
  }
  cr_assert_lt(waited, 90000, "no checkpoint after 90 s");
  pid_t worker = td_worker_pid(c);
  cr_assert_gt(worker, 0);
  kill(worker, SIGKILL);
  td_wait_state(c, a, "succeeded", 90000);
  cr_assert_geq(result_num(c, a, "resumed_from"), 10, "not resumed from a checkpoint");
  const char *kv_b[] = {"teacher", FIX "/mixtral-tiny",
                        "student", FIX "/llama-tiny",
                        "data",    data,
                        "output",  out_b,
                        "method",  "kid",
                        "train",   "full",
                        NULL};
  int64_t b = submit(c, kv_b, ik, iv, fk, fv, NULL);
  td_wait_state(c, b, "succeeded", 90000);
  snprintf(fa, sizeof fa, "%s/model.safetensors", out_a);
  snprintf(fb, sizeof fb, "%s/model.safetensors", out_b);
  cr_assert(td_same_file(fa, fb), "the resumed run's weights differ from the uninterrupted run's");
  snprintf(fa, sizeof fa, "%s/distill-log.jsonl", out_a);
  snprintf(fb, sizeof fb, "%s/distill-log.jsonl", out_b);
  cr_assert(td_same_file(fa, fb), "the run logs differ");
  lc_destroy(&c);
}

Test(distill, bad_input_is_refused_at_submit) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  char data[128], out[128], missing[160];
  td_write_rows(&t, data, sizeof data, "train", 6, 0);
  snprintf(out, sizeof out, "%s/o", t.dir);
  snprintf(missing, sizeof missing, "%s/no-such-teacher", t.dir);
  struct {
    const char *teacher, *method;
    double mask_ratio, lambda;
    const char *field, *says;
  } cases[] = {
      {FIX "/stories260K/hf", "kd", 0.3, 0.2, "params.student", "token 0"},
      {missing, "kd", 0.3, 0.2, "params.teacher", "No such file"},
      {FIX "/mixtral-tiny", "kid", 0.0, 0.2, "params.mask_ratio", "(0, 1)"},
      {FIX "/mixtral-tiny", "kid", 1.0, 0.2, "params.mask_ratio", "(0, 1)"},
      {FIX "/mixtral-tiny", "atkd", 0.3, 1.5, "params.lambda", "outside"},
      {FIX "/mixtral-tiny", "atkd", 0.3, -0.1, "params.lambda", "outside"},
      {FIX "/mixtral-tiny", "tkd", 0.3, 0.2, "params.method", "kd, atkd or kid"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *kv[] = {"teacher", cases[i].teacher, "student", FIX "/llama-tiny", "data", data, "output", out,
                        "method",  cases[i].method,  NULL};
    const char *fk[] = {"mask_ratio", "lambda", NULL};
    const double fv[] = {cases[i].mask_ratio, cases[i].lambda};
    proto_err_t pe = {0};
    int64_t id = submit(c, kv, NULL, NULL, fk, fv, &pe);
    cr_assert_leq(id, 0, "case %zu was accepted", i);
    cr_assert(strstr(pe.field, cases[i].field), "case %zu: field %s (%s)", i, pe.field, pe.msg);
    cr_assert(strstr(pe.msg, cases[i].says), "case %zu: %s", i, pe.msg);
  }
  /* Nothing was queued: the daemon is still there and answers. */
  mp_doc_t *d = td_status(c);
  cr_assert(d);
  mp_doc_destroy(&d);
  lc_destroy(&c);
}
