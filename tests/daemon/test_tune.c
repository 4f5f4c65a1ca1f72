/* tune through the real daemon: a worker killed mid-run resumes from its checkpoint and ends on the bytes an
 * uninterrupted run writes; each kind of result (full HF folder, PEFT adapter with a merged model, CogSteer adapter)
 * is written; bad parameters are refused at submit, naming the field, and a block out of range fails the job
 * before any step. */
#include <jansson.h>
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

TestSuite(tune, .init = setup, .fini = teardown, .timeout = 180);

/* Submits a tune job at learning rate lr (td_submit). */
static int64_t submit(lc_t *c, const char *const *kv, const char *const *int_keys, const int64_t *ints, double lr,
                      proto_err_t *pe_out) {
  const char *const fk[] = {"lr", NULL};
  const double fv[] = {lr};
  return td_submit(c, "tune", kv, int_keys, ints, fk, fv, pe_out);
}

/* A float (or integer) field of a result map into *v. */
static bool mp_as_double(const msgpack_object *o, double *v) {
  if (!o) return false;
  if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32)
    *v = o->via.f64;
  else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
    *v = (double)o->via.u64;
  else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
    *v = (double)o->via.i64;
  else
    return false;
  return true;
}

static bool exists(const char *dir, const char *name) {
  char p[300];
  struct stat sb;
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return stat(p, &sb) == 0;
}

Test(tune, killed_worker_resumes_to_the_bytes_of_an_uninterrupted_run) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  char data[128], out_a[128], out_b[128], ck[200], fa[200], fb[200];
  td_write_rows(&t, data, sizeof data, "train", 24, 0);
  snprintf(out_a, sizeof out_a, "%s/a", t.dir);
  snprintf(out_b, sizeof out_b, "%s/b", t.dir);
  const char *const ik[] = {"steps", "batch", "save_every", "eval_every", "seq_len", "seed", NULL};
  const int64_t iv[] = {40, 3, 10, 0, 16, 7};
  const char *const kv_a[] = {"model", TINY, "data", data, "output", out_a, "train", "full", NULL};
  int64_t a = submit(c, kv_a, ik, iv, 1e-3, NULL);
  snprintf(ck, sizeof ck, "%s/checkpoint-20/train-state.safetensors", out_a);
  struct stat sb;
  int waited = 0;
  for (; stat(ck, &sb) != 0 && waited < 90000; waited += 5) td_sleep_ms(5);
  cr_assert_lt(waited, 90000, "no checkpoint after 90 s");
  pid_t worker = td_worker_pid(c);
  cr_assert_gt(worker, 0);
  kill(worker, SIGKILL);
  td_wait_state(c, a, "succeeded", 90000);
  mp_doc_t *d = td_show(c, a);
  cr_assert_eq(td_int(mp_get(mp_doc_root(d), "job"), "attempts"), 2, "the job ran twice");
  mp_doc_destroy(&d);
  d = lc_call_id(c, "result", a, NULL, NULL);
  int64_t resumed = td_int(mp_get(mp_doc_root(d), "result"), "resumed_from");
  mp_doc_destroy(&d);
  cr_assert_geq(resumed, 10, "resumed from step %lld, not from a checkpoint", (long long)resumed);
  const char *const kv_b[] = {"model", TINY, "data", data, "output", out_b, "train", "full", NULL};
  int64_t b = submit(c, kv_b, ik, iv, 1e-3, NULL);
  td_wait_state(c, b, "succeeded", 90000);
  snprintf(fa, sizeof fa, "%s/model.safetensors", out_a);
  snprintf(fb, sizeof fb, "%s/model.safetensors", out_b);
  cr_assert(td_same_file(fa, fb), "the resumed run's weights differ from the uninterrupted run's");
  snprintf(fa, sizeof fa, "%s/tune-log.jsonl", out_a);
  snprintf(fb, sizeof fb, "%s/tune-log.jsonl", out_b);
  cr_assert(td_same_file(fa, fb), "the run logs differ");
  cr_assert(exists(out_a, "loss.svg"));
  lc_destroy(&c);
}

Test(tune, lora_and_adapter_results_and_the_forgetting_measure) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  char data[128], ev[128], gen[128], out_l[128], out_d[128];
  td_write_rows(&t, data, sizeof data, "train", 30, 0);
  td_write_rows(&t, ev, sizeof ev, "eval", 9, 3);
  td_write_rows(&t, gen, sizeof gen, "general", 9, 5);
  snprintf(out_l, sizeof out_l, "%s/lora", t.dir);
  snprintf(out_d, sizeof out_d, "%s/adapter", t.dir);
  const char *const ik[] = {"steps", "batch", "eval_every", "seq_len", NULL};
  const int64_t iv[] = {12, 4, 6, 16};
  const char *const kv_l[] = {"model",
                              TINY,
                              "data",
                              data,
                              "eval",
                              ev,
                              "eval_general",
                              gen,
                              "output",
                              out_l,
                              "train",
                              "lora",
                              "lora_targets",
                              "q,k,v,o,gate,up,down",
                              "merge",
                              "true",
                              NULL};
  int64_t l = submit(c, kv_l, ik, iv, 5e-3, NULL);
  td_wait_state(c, l, "succeeded", 90000);
  cr_assert(exists(out_l, "adapter_config.json") && exists(out_l, "adapter_model.safetensors"));
  cr_assert(exists(out_l, "merged/model.safetensors") && exists(out_l, "merged/config.json"), "no merged model");
  char p[256];
  snprintf(p, sizeof p, "%s/adapter_config.json", out_l);
  json_error_t je;
  json_t *j = json_load_file(p, 0, &je);
  cr_assert(j, "%s", je.text);
  cr_assert_str_eq(json_string_value(json_object_get(j, "peft_type")), "LORA");
  cr_assert_eq(json_integer_value(json_object_get(j, "r")), 8);
  cr_assert_eq(json_array_size(json_object_get(j, "target_modules")), 7u);
  json_decref(j);
  mp_doc_t *d = lc_call_id(c, "result", l, NULL, NULL);
  const msgpack_object *res = mp_get(mp_doc_root(d), "result");
  double before = 0, after = 0, forgetting = 0, eb = 0, ea = 0;
  cr_assert(mp_as_double(mp_get(res, "general_loss_before"), &before));
  cr_assert(mp_as_double(mp_get(res, "general_loss_after"), &after));
  cr_assert(mp_as_double(mp_get(res, "forgetting"), &forgetting));
  cr_assert(mp_as_double(mp_get(res, "eval_loss_base"), &eb));
  cr_assert(mp_as_double(mp_get(res, "eval_loss"), &ea));
  cr_assert_float_eq(forgetting, after - before, 1e-12);
  cr_assert_lt(ea, eb, "LoRA did not lower the held-out loss: %g -> %g", eb, ea);
  mp_doc_destroy(&d);

  const char *const ik2[] = {"steps", "batch", "seq_len", "layer", NULL};
  const int64_t iv2[] = {12, 4, 16, 1};
  const char *const kv_d[] = {"model", TINY, "data", data, "eval", ev, "output", out_d, "train", "adapter", NULL};
  int64_t a = submit(c, kv_d, ik2, iv2, 5e-3, NULL);
  td_wait_state(c, a, "succeeded", 90000);
  cr_assert(exists(out_d, "adapter_config.json") && exists(out_d, "adapter.safetensors"));
  lc_destroy(&c);
}

Test(tune, bad_parameters_are_refused) {
  td_start(&t, NULL);
  lc_t *c = td_client(&t);
  char data[128], out[128];
  td_write_rows(&t, data, sizeof data, "train", 6, 0);
  snprintf(out, sizeof out, "%s/o", t.dir);
  struct {
    const char *k1, *v1, *k2, *v2;
    const char *ikey;
    int64_t ival;
    const char *field;
  } cases[] = {
      {"lora_targets", "q,x", NULL, NULL, NULL, 0, "params.lora_targets"},
      {"train", "lora", NULL, NULL, "lora_rank", 0, "params.lora_rank"},
      {"train", "adapter", NULL, NULL, NULL, 0, "params.layer"},
      {"train", "everything", NULL, NULL, NULL, 0, "params.train"},
      {"schedule", "step", NULL, NULL, NULL, 0, "params.schedule"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *kv[] = {"model", TINY, "data", data, "output", out, cases[i].k1, cases[i].v1, NULL, NULL, NULL};
    const char *ik[] = {cases[i].ikey, NULL};
    int64_t iv[] = {cases[i].ival};
    proto_err_t pe = {0};
    int64_t id = submit(c, kv, cases[i].ikey ? ik : NULL, iv, 1e-3, &pe);
    cr_assert_leq(id, 0, "case %zu was accepted", i);
    cr_assert(strstr(pe.field, cases[i].field) || strstr(pe.msg, cases[i].field), "case %zu: %s (%s)", i, pe.msg,
              pe.field);
  }
  /* A block the model does not have: known only once the model is read, so the job fails before any step. */
  const char *kv[] = {"model", TINY, "data", data, "output", out, "train", "adapter", NULL};
  const char *ik[] = {"layer", NULL};
  int64_t iv[] = {7};
  int64_t id = submit(c, kv, ik, iv, 1e-3, NULL);
  td_wait_state(c, id, "failed", 60000);
  mp_doc_t *d = td_show(c, id);
  cr_assert(td_has(mp_get(mp_doc_root(d), "job"), "reason", "out of range"), "the failure does not say why");
  mp_doc_destroy(&d);
  lc_destroy(&c);
}
