/* The data jobs through the real daemon and the `lathe` CLI: flatten-graph without any Vulkan driver (its JSON
 * shape, caps and bad input), feedback and selfgen on the embedded model, each with progress events. */
#include <jansson.h>
#include <math.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "td.h"

/* The embedded default model (trained by this project on the King James Bible) once it is in the tree; until
 * then stories260K. Either way a small LLaMA without a chat template. */
#define KJV_MODEL LATHE_SOURCE_DIR "/models/lathe-kjv-llama"
#define STORIES_MODEL LATHE_SOURCE_DIR "/tests/fixtures/stories260K/hf"

static const char *data_model(void) {
  static const char *m;
  if (!m) m = access(KJV_MODEL "/model.safetensors", R_OK) == 0 ? KJV_MODEL : STORIES_MODEL;
  return m;
}
#define DATA_MODEL data_model()

static td_t t;

static void setup(void) { td_cli_setup(&t); }

static void teardown(void) { td_cli_teardown(&t); }

TestSuite(data_jobs, .init = setup, .fini = teardown, .timeout = 180);

static char out[1 << 18], err[1 << 18];

static void slurp(const char *path, char *buf, size_t n) {
  FILE *f = fopen(path, "r");
  size_t got = f ? fread(buf, 1, n - 1, f) : 0;
  buf[got] = '\0';
  if (f) fclose(f);
}

/* Runs `lathe ARGS` with stdout into out and stderr into err; returns the exit status. */
static int lathe(const char *args) {
  char cmd[2048], o[160], e[160];
  snprintf(o, sizeof o, "%s/cli.out", t.dir);
  snprintf(e, sizeof e, "%s/cli.err", t.dir);
  snprintf(cmd, sizeof cmd, "%s/lathe %s >%s 2>%s", LATHE_BIN_DIR, args, o, e);
  int st = system(cmd);
  slurp(o, out, sizeof out);
  slurp(e, err, sizeof err);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Writes text to name in the test's folder and returns its path (static storage). */
static const char *file(const char *name, const char *text) {
  static char path[256];
  snprintf(path, sizeof path, "%s/%s", t.dir, name);
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
  return path;
}

static int count(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
  return n;
}

Test(data_jobs, flatten_graph_runs_without_a_gpu) {
  /* No Vulkan driver at all for the daemon and its worker: the CPU-only kind must not care. */
  setenv("VK_ICD_FILENAMES", "/nonexistent/icd.json", 1);
  setenv("VK_DRIVER_FILES", "/nonexistent/icd.json", 1);
  char args[1024];
  snprintf(args, sizeof args, "--json run flatten-graph --input %s",
           file("g.csv", "from,to\na,b\na,c\nb,d\nc,d\nd,a\n"));
  cr_assert_eq(lathe(args), 0, "%s", err);
  static const char *want =
      "{\"paths\":[[\"a\",\"b\",\"d\"],[\"a\",\"c\",\"d\"]],\"text\":\"a -> [b -> d, c -> d]\\n\",";
  cr_assert(strncmp(out, want, strlen(want)) == 0, "%s", out);
  cr_assert_eq(count(out, "\n"), 1, "one JSON object on stdout: %s", out);
  cr_assert(strstr(out, "\"truncated\":false"), "%s", out);
  cr_assert(strstr(err, "\"type\":\"progress\""), "progress events: %s", err);
  cr_assert(strstr(err, "1 back edges removed"), "the cycle d -> a is reported: %s", err);
  /* The same daemon cannot run a GPU kind here, which shows there really is no device. */
  cr_assert_eq(lathe("--json run selftest --n 8"), 1, "selftest must fail without a driver: %s", err);
  /* Capped paths and refused sizes come back with the cap named. */
  snprintf(args, sizeof args, "--json run flatten-graph --input %s --max-paths 1",
           file("g2.jsonl", "{\"source\": \"r\", \"target\": \"x\"}\n{\"source\": \"r\", \"target\": \"y\"}\n"));
  cr_assert_eq(lathe(args), 0, "%s", err);
  cr_assert(strstr(out, "\"text\":\"r -> x\\n\"") && strstr(out, "\"truncated\":true") &&
                strstr(out, "listed the first 1 of 2 paths (the max_paths cap)"),
            "%s", out);
  snprintf(args, sizeof args, "--json run flatten-graph --input %s --max-nodes 3", file("g3.csv", "a,b\nc,d\n"));
  cr_assert_eq(lathe(args), 1);
  cr_assert(strstr(err, "g3.csv:2: more than 3 nodes (the max_nodes cap)"), "%s", err);
  snprintf(args, sizeof args, "--json run flatten-graph --input %s --format xml", file("g4.csv", "a,b\n"));
  cr_assert_eq(lathe(args), 2, "a bad format is a usage error");
}

Test(data_jobs, feedback_runs_end_to_end_with_progress) {
  char args[1024];
  const char *data =
      file("fb.jsonl", "{\"prompt\": \"Tell me about the cat.\", \"a\": \"The cat was kind and shared her toys.\", "
                       "\"b\": \"The cat was mean.\"}\n\n"
                       "{\"prompt\": \"What did Tom do?\", \"a\": \"Tom hit the dog.\", \"b\": \"Tom helped his "
                       "mom in the garden.\"}\n");
  snprintf(args, sizeof args, "--json run feedback --model %s --data %s --max-tokens 16 --batch 2", DATA_MODEL, data);
  cr_assert_eq(lathe(args), 0, "%s", err);
  cr_assert_eq(count(out, "\n"), 2, "one record per row: %s", out);
  for (const char *p = out; *p; p = strchr(p, '\n') + 1) {
    cr_assert(strncmp(p, "{\"row\":", 7) == 0, "%s", p);
    const char *end = strchr(p, '\n');
    for (const char *k = "\"prompt\":\0\"chosen\":\0\"rejected\":\0\"strength\":\0\"consistent\":\0"; *k;
         k += strlen(k) + 1) {
      const char *at = strstr(p, k);
      cr_assert(at && at < end, "%s lacks %s", p, k);
    }
  }
  cr_assert(strstr(err, "\"type\":\"progress\",\"data\":{\"step\":2,\"total\":2,\"unit\":\"rows\"}"), "%s", err);
  cr_assert(strstr(err, "\"name\":\"preferences.jsonl\""), "%s", err);
  cr_assert_eq(lathe("--json result 1"), 0);
  cr_assert(strstr(out, "\"rows\":2"), "%s", out);
  /* feedback.jsonl: every row, consistent or not, has its lean and a lean margin >= 0. */
  static char rows[1 << 16];
  char path[256];
  snprintf(path, sizeof path, "%s/jobs/1/feedback.jsonl", t.home);
  slurp(path, rows, sizeof rows);
  cr_assert_eq(count(rows, "\n"), 2, "%s", rows);
  for (char *p = rows, *end; (end = strchr(p, '\n')); p = end + 1) {
    *end = '\0';
    const char *lean = strstr(p, "\"lean\":"), *margin = strstr(p, "\"lean_margin\":");
    cr_assert(lean && (!strncmp(lean + 7, "\"a\"", 3) || !strncmp(lean + 7, "\"b\"", 3)), "%s", p);
    cr_assert(margin, "%s", p);
    char *num_end;
    double m = strtod(margin + 14, &num_end);
    cr_assert(num_end != margin + 14 && m >= 0, "%s", p);
  }
}

/* The AI-feedback loop: feedback labels pairs, tune --objective dpo trains a LoRA on them against the starting
 * weights. The held-out pairs are the training ones here (the figures of docs/preference.md hold some out): DPO
 * must lower their loss from exactly log 2, and the inconsistent rows are skipped unless included. */
Test(data_jobs, feedback_labels_train_dpo_end_to_end) {
  char args[2048], path[256];
  const char *data = file(
      "fb.jsonl", "{\"prompt\": \"And God said\", \"a\": \"Let there be light.\", \"b\": \"Let the cat in.\"}\n"
                  "{\"prompt\": \"In the beginning\", \"a\": \"God created the earth.\", \"b\": \"we took a bus.\"}\n"
                  "{\"prompt\": \"The LORD is\", \"a\": \"my shepherd.\", \"b\": \"my laptop.\"}\n"
                  "{\"prompt\": \"Blessed are\", \"a\": \"the meek.\", \"b\": \"the servers.\"}\n");
  snprintf(args, sizeof args, "--json run feedback --model %s --data %s --max-tokens 8 --batch 4", DATA_MODEL, data);
  cr_assert_eq(lathe(args), 0, "%s", err);
  cr_assert_eq(lathe("--json result 1"), 0);
  const char *ic = strstr(out, "\"inconsistent\":");
  cr_assert(ic, "%s", out);
  int inconsistent = atoi(ic + 15);
  snprintf(path, sizeof path, "%s/jobs/1/feedback.jsonl", t.home);
  /* Every row, the inconsistent ones by their lean. */
  snprintf(args, sizeof args,
           "--json run tune --model %s --objective dpo --data %s --eval %s --include-inconsistent --train lora "
           "--steps 6 --batch 2 --lr 5e-3 --eval-every 3 --output %s/dpo",
           DATA_MODEL, path, path, t.dir);
  cr_assert_eq(lathe(args), 0, "%s", err);
  cr_assert(strstr(err, "4 training pairs (") && strstr(err, " rows marked inconsistent, included"), "%s", err);
  json_error_t je;
  const char *final = strstr(out, "{\"output\":");
  json_t *res = json_loads(final ? final : "{}", JSON_DISABLE_EOF_CHECK, &je);
  cr_assert(res, "%s", out);
  double base = json_number_value(json_object_get(res, "eval_loss_base")),
         after = json_number_value(json_object_get(res, "eval_loss"));
  cr_assert_eq(base, log1p(1.0), "the policy starts as its reference: %.17g", base);
  cr_assert(after < base - 0.01, "DPO loss on its own pairs %g -> %g", base, after);
  cr_assert(json_number_value(json_object_get(res, "eval_reward_accuracy")) > 0.5, "%s", out);
  cr_assert(json_number_value(json_object_get(res, "eval_kl_ref")) > 0, "%s", out);
  cr_assert(json_is_number(json_object_get(res, "eval_pref_accuracy_base")) &&
                json_is_number(json_object_get(res, "eval_pref_accuracy")),
            "%s", out);
  json_decref(res);
  cr_assert(strstr(out, "{\"step\":0,\"eval_loss\":0.69314718055994"), "a record per eval from step 0: %s", out);
  char grep[300];
  snprintf(grep, sizeof grep, "grep -q '\"eval_pref_accuracy\"' %s/dpo/lathe-report.json", t.dir);
  cr_assert_eq(system(grep), 0, "the DPO result lies beside the adapter: %s", grep);
  /* Without --include-inconsistent the flagged rows are left out, and a file of nothing else is refused. */
  snprintf(args, sizeof args,
           "--json run tune --model %s --objective dpo --data %s --train lora --steps 1 --batch 1 --output %s/dpo2",
           DATA_MODEL, path, t.dir);
  char want[96];
  snprintf(want, sizeof want, "%d training pairs (%d rows marked inconsistent, skipped", 4 - inconsistent,
           inconsistent);
  if (inconsistent < 4) {
    cr_assert_eq(lathe(args), 0, "%s", err);
    cr_assert(strstr(err, want), "%s in %s", want, err);
  } else {
    cr_assert_eq(lathe(args), 1);
    cr_assert(strstr(err, "no preference pair to train on"), "%s", err);
  }
}

/* Whether the CLI's JSON event stream holds text (its quotes escaped as JSON writes them). */
static bool json_has(const char *stream, const char *text) {
  char esc[512];
  size_t n = 0;
  for (const char *p = text; *p && n + 2 < sizeof esc; p++) {
    if (*p == '"') esc[n++] = '\\';
    esc[n++] = *p;
  }
  esc[n] = '\0';
  return strstr(stream, esc) != NULL;
}

/* Bad preference rows fail the job with the file, the line and what is wrong; DPO settings without DPO are refused
 * at submit. */
Test(data_jobs, bad_preference_rows_name_the_line) {
  static const struct {
    const char *rows, *want;
  } cases[] = {
      {"{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n{\"prompt\": \"a\", \"chosen\": \" b\"}\n",
       "bad.jsonl:2: a preference row needs \"prompt\", \"chosen\" and \"rejected\" strings: \"rejected\" is missing"},
      {"{\"prompt\": \"a\", \"chosen\": \" the same\", \"rejected\": \" the same\"}\n",
       "bad.jsonl:1: \"chosen\" and \"rejected\" are the same text"},
      {"\n{\"prompt\": \"a\", \"chosen\": \"\", \"rejected\": \" c\"}\n",
       "bad.jsonl:2: the chosen completion is empty"},
      {"{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \"  \"}\n",
       "bad.jsonl:1: the rejected completion is empty"},
      {"{\"prompt\": 3, \"chosen\": \" b\", \"rejected\": \" c\"}\n", "bad.jsonl:1: a preference row needs"},
  };
  char args[1024];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(args, sizeof args, "--json run tune --model %s --objective dpo --data %s --steps 1 --output %s/o%zu",
             DATA_MODEL, file("bad.jsonl", cases[i].rows), t.dir, i);
    cr_assert_eq(lathe(args), 1, "case %zu: %s", i, err);
    cr_assert(json_has(err, cases[i].want), "case %zu: want %s in %s", i, cases[i].want, err);
  }
  const char *good = file("good.jsonl", "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n");
  snprintf(args, sizeof args,
           "--json run tune --model %s --objective dpo --data %s --dpo-weight strength "
           "--steps 1 --output %s/w",
           DATA_MODEL, good, t.dir);
  cr_assert_eq(lathe(args), 1);
  cr_assert(json_has(err, "good.jsonl:1: --dpo-weight strength needs a \"strength\" number on every row"), "%s", err);
  snprintf(args, sizeof args, "--json run tune --model %s --data %s --dpo-weight strength --steps 1 --output %s/x",
           DATA_MODEL, good, t.dir);
  cr_assert_eq(lathe(args), 2, "refused at submit");
  cr_assert(strstr(err, "--dpo-weight: only --objective dpo weighs pairs"), "%s", err);
  snprintf(args, sizeof args, "--json run tune --model %s --data %s --objective ppo --steps 1 --output %s/y",
           DATA_MODEL, good, t.dir);
  cr_assert_eq(lathe(args), 2, "refused at submit");
  cr_assert(strstr(err, "--objective: ce or dpo"), "%s", err);
}

Test(data_jobs, selfgen_runs_end_to_end_with_progress) {
  char args[1024];
  const char *data = file("in.jsonl", "{\"input\": \"Lily saw a big dog.\"}\n{\"text\": \"Tom lost his ball.\"}\n"
                                      "{\"instruction\": \"Tell a story about a bird.\"}\n");
  snprintf(args, sizeof args,
           "--json run selfgen --model %s --data %s --instruction 'Continue the story.' --instruction 'Say what "
           "happens next.' --per-input 2 --max-tokens 24 --batch 4 --stop '\n'",
           DATA_MODEL, data);
  cr_assert_eq(lathe(args), 0, "%s", err);
  cr_assert_eq(count(out, "\n"), 5, "2 + 2 + 1 pairs: %s", out);
  cr_assert_eq(count(out, "\"completion\":"), 5);
  cr_assert_eq(count(out, "\"kept\":"), 5);
  cr_assert(strstr(out, "\"instruction\":\"Tell a story about a bird.\""), "a row's own instruction wins: %s", out);
  cr_assert(strstr(err, "\"step\":3,\"total\":3,\"unit\":\"rows\""), "%s", err);
  cr_assert_eq(lathe("--json result 1"), 0);
  cr_assert(strstr(out, "\"pairs\":5"), "%s", out);
  /* Cut at the first line, some targets end a sentence and become training data (KJV: 4 of 5; stories: 1). */
  cr_assert(strstr(out, "\"kept\":") && !strstr(out, "\"kept\":0"), "%s", out);
}

Test(data_jobs, feedback_stops_promptly_when_cancelled) {
  char args[1024], rows[1 << 14] = "";
  for (int i = 0; i < 60; i++)
    snprintf(rows + strlen(rows), sizeof rows - strlen(rows),
             "{\"prompt\": \"Row %d?\", \"a\": \"Yes.\", \"b\": \"No.\"}\n", i);
  snprintf(args, sizeof args, "--json submit feedback --model %s --data %s --max-tokens 64 --batch 1", DATA_MODEL,
           file("many.jsonl", rows));
  cr_assert_eq(lathe(args), 0, "%s", err);
  lc_t *c = td_client(&t);
  td_wait_state(c, 1, "running", 30000);
  pid_t worker = td_worker_pid(c);
  td_sleep_ms(1500); /* well inside the first rows: the model is loaded and generating */
  proto_err_t pe = {0};
  mp_doc_t *d = lc_call_id(c, "cancel", 1, &pe, NULL);
  cr_assert_not_null(d, "%s", pe.msg);
  mp_doc_destroy(&d);
  /* job.h: a cancelled job returns within a second or two (measured: 20 to 200 ms, one decoding step). The test
   * waits on the state rather than timing it (a loaded machine stretches any clock), and what proves the runner
   * stopped by itself is the worker: one that ignored the cancel for the daemon's 5 s grace would be killed. */
  int64_t t0 = util_mono_ms();
  td_wait_state(c, 1, "cancelled", 30000);
  cr_log_info("cancelled after %lld ms", (long long)(util_mono_ms() - t0));
  cr_assert_eq(td_worker_pid(c), worker, "the runner did not stop by itself: the worker was killed");
  lc_destroy(&c);
}

/* What job id wrote to selfgen.jsonl and dropped.jsonl (static storage). */
static const char *pairs_written(int id) {
  static char buf[8192];
  char path[256];
  snprintf(path, sizeof path, "%s/jobs/%d/selfgen.jsonl", t.home, id);
  slurp(path, buf, sizeof buf / 2);
  snprintf(path, sizeof path, "%s/jobs/%d/dropped.jsonl", t.home, id);
  slurp(path, buf + strlen(buf), sizeof buf / 2);
  return buf;
}

/* stories260K with a chat template of its own, in t.dir/tmodel (its path into dir): "<s>[role] content ...
 * [assistant]". */
static void templated_model(char *dir, size_t n) {
  static char cmd[3 * PATH_MAX];
  snprintf(dir, n, "%s/tmodel", t.dir);
  snprintf(cmd, sizeof cmd, "mkdir -p %s && ln -s %s/[cgm]* %s/tokenizer.json %s/", dir, STORIES_MODEL, STORIES_MODEL,
           dir);
  cr_assert_eq(system(cmd), 0);
  file("tmodel/tokenizer_config.json",
       "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"chat_template\": "
       "\"{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
       "{% if add_generation_prompt %}[assistant]{% endif %}\"}\n");
}

Test(data_jobs, selfgen_renders_with_the_models_template_or_the_plain_one) {
  static char dir[200], args[1024];
  templated_model(dir, sizeof dir);
  const char *data = file("in.jsonl", "{\"input\": \"Hello there.\"}\n");
  snprintf(args, sizeof args, "--json run selfgen --model %s --data %s --instruction Go. --max-tokens 4 --stop x", dir,
           data);
  cr_assert_eq(lathe(args), 0, "%s", err);
  cr_assert(strstr(err, "using the model's chat template"), "%s", err);
  cr_assert(strstr(pairs_written(1), "\"prompt\":\"<s>[user] Go.\\n\\nHello there. [assistant]\""), "%s",
            pairs_written(1));
  strcat(args, " --template plain");
  cr_assert_eq(lathe(args), 0, "%s", err);
  cr_assert(strstr(err, "using the plain chat template"), "%s", err);
  cr_assert(strstr(pairs_written(2), "\"prompt\":\"User: Go.\\n\\nHello there.\\n\\nAssistant:\""), "%s",
            pairs_written(2));
}

/* generate --chat renders each prompt as a user turn (after --system) with the model's template, or the plain one
 * when the model has none, and says which; --system alone is refused. */
Test(data_jobs, generate_chat_renders_the_conversation) {
  static char dir[200], args[1024];
  templated_model(dir, sizeof dir);
  snprintf(args, sizeof args,
           "--json run generate --model %s --chat --system 'Be kind.' --prompt Hi --prompt 'Tell a story' "
           "--temperature 0 --max-tokens 8",
           dir);
  cr_assert_eq(lathe(args), 0, "%s", err);
  cr_assert(strstr(err, "chat: the model's template with a system message, 1 end-of-turn token"), "%s", err);
  cr_assert(strstr(out, "\"rendered\":\"<s>[system] Be kind. [user] Hi [assistant]\""), "%s", out);
  cr_assert(strstr(out, "\"rendered\":\"<s>[system] Be kind. [user] Tell a story [assistant]\""), "%s", out);
  snprintf(args, sizeof args, "--json run generate --model %s --chat --prompt Hi --temperature 0 --max-tokens 8",
           STORIES_MODEL);
  cr_assert_eq(lathe(args), 0, "%s", err);
  cr_assert(strstr(err, "chat: the plain template"), "%s", err);
  cr_assert(strstr(out, "\"rendered\":\"User: Hi\\n\\nAssistant:\""), "%s", out);
  cr_assert_null(strstr(out, "\\nUser:"), "the reply ends where the next turn would open: %s", out);
  snprintf(args, sizeof args, "run generate --model %s --system 'Be kind.' --prompt Hi", STORIES_MODEL);
  cr_assert_eq(lathe(args), 2, "%s", err);
  cr_assert(strstr(err, "--system: a system message needs --chat"), "%s", err);
}
