/* Runners driven in-process through the small job interface (jobs/job_local.h): no daemon, no worker. generate's
 * greedy tokens equal the PyTorch reference's (tests/fixtures/llama-tiny/reference.json), score's NLL equals the
 * engine's own model_score on the same tokens, flatten-graph writes the expected paths, and bad parameters are
 * refused by the kind table before anything runs. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model/generate.h"
#include "engine/model/model_tok.h"
#include "jobs/job_local.h"
#include "support/tdata.h"
#include "support/tgpu.h"
#include "jobs/tjobs.h"

#define TINY LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny"

static void teardown(void) {
  tgpu_teardown();
  tdata_cleanup();
}

TestSuite(runners, .init = tgpu_setup, .fini = teardown);

static char dir[256];

static job_local_t *host(void) {
  if (!dir[0]) snprintf(dir, sizeof dir, "%s", tdata_dir());
  lt_err_t err = {0};
  job_local_t *l = job_local_new(tgpu(), dir, &err);
  cr_assert(l, "%s", err.msg);
  return l;
}

Test(runners, generate_writes_stray_bytes_as_replacement_characters) {
  /* The K-quant fixture is random weights over a byte-fallback vocabulary: its greedy continuation of this prompt
   * decodes to bytes that are no valid UTF-8 (it failed the job "without a reason" once). The text comes out with
   * U+FFFD in their place and the job succeeds. */
  job_local_t *l = host();
  const char *kv[] = {"model",       LATHE_SOURCE_DIR "/tests/fixtures/qblock/kquant-tiny.gguf",
                      "prompt",      "Once upon a time",
                      "max_tokens",  "24",
                      "temperature", "0",
                      "ignore_eos",  "true"};
  lt_err_t err = {0};
  cr_assert_eq(job_local_run(l, "generate", kv, 5, &err), JOB_SUCCEEDED, "%s", err.msg);
  const msgpack_object *out = tjobs_first_event(l, "output");
  cr_assert(out, "no output record");
  char text[1024] = "";
  cr_assert(mp_str_copy(mp_get(out, "text"), text, sizeof text));
  cr_assert(strstr(text, "\xEF\xBF\xBD"), "no replacement character in %s", text);
  job_local_destroy(&l);
}

Test(runners, generate_matches_the_reference_greedy_tokens) {
  json_error_t je;
  json_t *ref = json_load_file(TINY "/reference.json", 0, &je);
  cr_assert(ref, "%s", je.text);
  job_local_t *l = host();
  const char *kv[] = {"model",      TINY, "prompt",      json_string_value(json_object_get(ref, "prompt_text")),
                      "max_tokens", "8",  "temperature", "0"};
  lt_err_t err = {0};
  cr_assert_eq(job_local_run(l, "generate", kv, 4, &err), JOB_SUCCEEDED, "%s", err.msg);
  const msgpack_object *out = tjobs_first_event(l, "output");
  cr_assert(out, "no output record");
  const msgpack_object *toks = mp_get(out, "tokens");
  json_t *want = json_object_get(ref, "greedy_tokens");
  cr_assert(toks && toks->type == MSGPACK_OBJECT_ARRAY);
  cr_assert_eq(toks->via.array.size, json_array_size(want));
  for (uint32_t i = 0; i < toks->via.array.size; i++) {
    int64_t v = -1;
    mp_as_int(&toks->via.array.ptr[i], &v);
    cr_assert_eq(v, json_integer_value(json_array_get(want, i)), "token %u", i);
  }
  cr_assert(mp_str_is(mp_get(out, "text"), json_string_value(json_object_get(ref, "greedy_text"))));
  job_local_destroy(&l);
  json_decref(ref);
}

Test(runners, score_equals_the_engine_and_bad_parameters_are_refused) {
  job_local_t *l = host();
  char data[4200];
  snprintf(data, sizeof data, "%s/score.jsonl", dir);
  FILE *f = fopen(data, "w");
  cr_assert(f);
  fprintf(f, "{\"text\": \"Lathe runs on any GPU\"}\n{\"text\": \"Hello, World! 42\"}\n");
  fclose(f);
  const char *kv[] = {"model", TINY, "data", data};
  lt_err_t err = {0};
  cr_assert_eq(job_local_run(l, "score", kv, 2, &err), JOB_SUCCEEDED, "%s", err.msg);
  const msgpack_object *res = job_local_result(l);
  double nll = tjobs_num(mp_get(res, "nll"));
  /* The same rows scored by the engine directly: mean of -log p over every token after the first. */
  tok_t *tok = model_tokenizer_open(TINY, &err);
  model_t *m = model_load(tgpu(), TINY, NULL, &err);
  cr_assert(tok && m, "%s", err.msg);
  const char *rows[] = {"Lathe runs on any GPU", "Hello, World! 42"};
  double sum = 0;
  size_t count = 0;
  for (int r = 0; r < 2; r++) {
    int32_t *ids = NULL;
    size_t n = 0;
    cr_assert_eq(tok_encode(tok, rows[r], strlen(rows[r]), TOK_ADD_BOS, &ids, &n, &err), LT_OK, "%s", err.msg);
    float *lp = talloc(n);
    cr_assert_eq(model_score(m, ids, (uint32_t)n, lp, &err), LT_OK, "%s", err.msg);
    for (size_t i = 1; i < n; i++) sum -= lp[i], count++;
    free(lp), free(ids);
  }
  cr_assert(fabs(nll - sum / count) < 1e-6, "score job %.9g, engine %.9g", nll, sum / count);
  model_destroy(&m);
  tok_destroy(&tok);
  /* A parameter of the wrong type, one out of range and an unknown one: refused with the field named. */
  const char *bad1[] = {"model", TINY, "data", data, "context", "many"};
  cr_assert_eq(job_local_run(l, "score", bad1, 3, &err), JOB_FAILED);
  cr_assert(strstr(err.msg, "context"), "%s", err.msg);
  const char *bad2[] = {"model", TINY, "prompt", "x", "max_tokens", "-3"};
  cr_assert_eq(job_local_run(l, "generate", bad2, 3, &err), JOB_FAILED);
  cr_assert(strstr(err.msg, "max_tokens"), "%s", err.msg);
  const char *bad3[] = {"model", TINY, "data", data, "colour", "red"};
  cr_assert_eq(job_local_run(l, "score", bad3, 3, &err), JOB_FAILED);
  cr_assert(strstr(err.msg, "colour"), "%s", err.msg);
  cr_assert_eq(job_local_event_count(l), 0u, "nothing ran");
  job_local_destroy(&l);
}

Test(runners, export_writes_a_gguf_that_loads) {
  /* llama-tiny as GGUF: the file loads and computes the folder's greedy tokens; an existing file is kept unless
   * --force; an output not named .gguf is refused by the kind table before anything runs. */
  job_local_t *l = host();
  char out[4200];
  snprintf(out, sizeof out, "%s/tiny.gguf", dir);
  const char *kv[] = {"model", TINY, "output", out};
  lt_err_t err = {0};
  cr_assert_eq(job_local_run(l, "export", kv, 2, &err), JOB_SUCCEEDED, "%s", err.msg);
  cr_assert_gt(tjobs_num(mp_get(job_local_result(l), "bytes")), 100000);
  job_local_destroy(&l);
  model_t *a = model_load(tgpu(), TINY, NULL, &err), *b = model_load(tgpu(), out, NULL, &err);
  cr_assert(a && b, "%s", err.msg);
  const int32_t prompt[] = {0, 45, 66, 85, 73, 70};
  const int32_t *prompts[1] = {prompt};
  uint32_t lens[1] = {6};
  gen_opts_t o = {.max_tokens = 8, .ignore_eos = true};
  gen_result_t ra[1], rb[1];
  cr_assert_eq(model_generate(a, prompts, lens, 1, &o, NULL, NULL, NULL, ra, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(model_generate(b, prompts, lens, 1, &o, NULL, NULL, NULL, rb, &err), LT_OK, "%s", err.msg);
  cr_assert_arr_eq(ra[0].tokens, rb[0].tokens, 8 * sizeof(int32_t), "the GGUF copy generates other tokens");
  free(ra[0].tokens), free(rb[0].tokens);
  model_destroy(&a), model_destroy(&b);
  l = host();
  cr_assert_eq(job_local_run(l, "export", kv, 2, &err), JOB_FAILED);
  cr_assert(strstr(err.msg, "--force"), "%s", err.msg);
  job_local_destroy(&l);
  l = host();
  const char *bad[] = {"model", TINY, "output", dir};
  cr_assert_neq(job_local_run(l, "export", bad, 2, &err), JOB_SUCCEEDED);
  cr_assert(strstr(err.msg, ".gguf"), "%s", err.msg);
  job_local_destroy(&l);
}

Test(runners, flatten_graph_in_process) {
  job_local_t *l = host();
  char g[4200];
  snprintf(g, sizeof g, "%s/g.csv", dir);
  FILE *f = fopen(g, "w");
  cr_assert(f);
  fprintf(f, "from,to\na,b\na,c\nb,d\nc,d\nd,a\n");
  fclose(f);
  const char *kv[] = {"input", g};
  lt_err_t err = {0};
  cr_assert_eq(job_local_run(l, "flatten-graph", kv, 1, &err), JOB_SUCCEEDED, "%s", err.msg);
  const msgpack_object *out = tjobs_first_event(l, "output");
  cr_assert(out);
  /* The cycle d -> a is cut; a reaches d by two paths, merged on their shared prefix. */
  cr_assert(mp_str_is(mp_get(out, "text"), "a -> [b -> d, c -> d]\n"));
  const msgpack_object *paths = mp_get(out, "paths");
  cr_assert(paths && paths->type == MSGPACK_OBJECT_ARRAY && paths->via.array.size == 2);
  cr_assert_eq(tjobs_num(mp_get(job_local_result(l), "back_edges")), 1);
  job_local_destroy(&l);
}

Test(runners, distill_kid_with_full_training_runs_in_process) {
  job_local_t *l = host();
  char data[300], out[300];
  snprintf(data, sizeof data, "%s/distill.jsonl", dir);
  snprintf(out, sizeof out, "%s/distill-out", dir);
  FILE *f = fopen(data, "w");
  cr_assert(f);
  for (int i = 0; i < 12; i++)
    if (i % 3 == 2)
      fprintf(f, "{\"prompt\": \"the lord %d\", \"completion\": \" said unto moses\"}\n", i);
    else
      fprintf(f, "{\"text\": \"the lord said unto moses %d and aaron\"}\n", i);
  fclose(f);
  const char *kv[] = {"teacher",    LATHE_SOURCE_DIR "/tests/fixtures/mixtral-tiny",
                      "student",    TINY,
                      "data",       data,
                      "output",     out,
                      "method",     "kid",
                      "train",      "full",
                      "steps",      "12",
                      "batch",      "3",
                      "seq_len",    "16",
                      "eval",       data,
                      "eval_every", "0",
                      "save_every", "5",
                      "mask_ratio", "0.5",
                      "seed",       "7"};
  lt_err_t err = {0};
  cr_assert_eq(job_local_run(l, "distill", kv, sizeof kv / sizeof kv[0] / 2, &err), JOB_SUCCEEDED, "%s", err.msg);
  const msgpack_object *r = job_local_result(l);
  cr_assert(tjobs_num(mp_get(r, "teacher_eval_loss")) > 0);
  cr_assert(tjobs_num(mp_get(r, "eval_ppl")) > 1);
  job_local_destroy(&l);
}
