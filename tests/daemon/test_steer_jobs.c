/* The steering kinds through the real daemon and the real `lathe` CLI on stories260K: steer-vector writes its
 * file, generate with that vector at alpha 0 equals unsteered generation, the two-pass methods run, steer-layers
 * picks a layer in its band and writes its plot, steer-eval reports both conditions, and the validators refuse
 * contradictory options before anything runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "td.h"

#define STORIES LATHE_SOURCE_DIR "/tests/fixtures/stories260K/hf"

static td_t t;

static void setup(void) { td_cli_setup(&t); }

static void teardown(void) { td_cli_teardown(&t); }

TestSuite(steer_jobs, .init = setup, .fini = teardown, .timeout = 120);

/* Runs `lathe --json ARGS` in the test's folder, capturing stdout and stderr (the events) into out; returns the
 * exit status. */
static int lathe(char *out, size_t n, const char *args) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cd %s && %s/lathe --json %s 2>&1", t.dir, LATHE_BIN_DIR, args);
  return td_shell(out, n, cmd);
}

static void write_file(const char *name, const char *text) {
  char p[256];
  snprintf(p, sizeof p, "%s/%s", t.dir, name);
  FILE *f = fopen(p, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
}

/* The value of "key": in the first output line holding it, as text up to the next ',' or '}'. */
static const char *field(const char *out, const char *key, char *buf, size_t n) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(out, pat);
  cr_assert_not_null(p, "no %s in:\n%s", key, out);
  p += strlen(pat);
  size_t k = strcspn(p, ",}");
  snprintf(buf, n, "%.*s", (int)(k < n ? k : n - 1), p);
  return buf;
}

static const char *pos_set = "{\"text\": \"Lily was very happy. She laughed and smiled.\"}\n"
                             "{\"text\": \"Tom was happy and glad. He smiled.\"}\n";
static const char *neg_set = "{\"text\": \"Lily was very sad. She cried and cried.\"}\n"
                             "{\"text\": \"Tom was sad and upset. He cried.\"}\n";

Test(steer_jobs, vector_generate_layers_and_eval) {
  static char out[1 << 16], out2[1 << 16];
  char v1[256], v2[256];
  write_file("pos.jsonl", pos_set);
  write_file("neg.jsonl", neg_set);
  cr_assert_eq(lathe(out, sizeof out,
                     "run steer-vector --model " STORIES
                     " --positive pos.jsonl --negative neg.jsonl --layer 2 --output happy.safetensors"),
               0, "%s", out);
  cr_assert_str_eq(field(out, "layer", v1, sizeof v1), "2");
  cr_assert(atof(field(out, "norm", v1, sizeof v1)) > 0, "%s", out);
  char path[1024];
  snprintf(path, sizeof path, "%s/happy.safetensors", t.dir);
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "the vector file was not written (the CLI makes relative paths absolute)");
  fclose(f);
  /* At alpha 0 the vector changes nothing: the same greedy text as without it. */
  const char *gen = "run generate --model " STORIES " --prompt 'Once upon a time' --max-tokens 16 --temperature 0";
  char cmd[1024];
  cr_assert_eq(lathe(out, sizeof out, gen), 0, "%s", out);
  snprintf(cmd, sizeof cmd, "%s --steer-vector happy.safetensors --steer-alpha 0", gen);
  cr_assert_eq(lathe(out2, sizeof out2, cmd), 0, "%s", out2);
  cr_assert_str_eq(field(out, "text", v1, sizeof v1), field(out2, "text", v2, sizeof v2));
  cr_assert_str_eq(field(out2, "steer", v1, sizeof v1), "\"add\"");
  /* The two-pass methods run through the daemon and say so. */
  snprintf(cmd, sizeof cmd, "%s --contrast-prompt 'Lily cried. ' --steer-layer 2", gen);
  cr_assert_eq(lathe(out, sizeof out, cmd), 0, "%s", out);
  cr_assert_str_eq(field(out, "steer", v1, sizeof v1), "\"contrast\"");
  snprintf(cmd, sizeof cmd, "%s --reverse-prompt 'Lily cried. ' --positive-prompt 'Lily smiled. '", gen);
  cr_assert_eq(lathe(out, sizeof out, cmd), 0, "%s", out);
  cr_assert_str_eq(field(out, "steer", v1, sizeof v1), "\"rose\"");
  /* steer-layers: one row per layer (0..5), a layer chosen in the default band 1..3, and the plot. */
  write_file("texts.jsonl", "{\"text\": \"Once upon a time, there was a little girl named Lily.\"}\n"
                            "{\"text\": \"She loved to play outside in the park with her dog.\"}\n");
  cr_assert_eq(lathe(out, sizeof out,
                     "run steer-layers --model " STORIES
                     " --data texts.jsonl --positive pos.jsonl --negative neg.jsonl"),
               0, "%s", out);
  cr_assert(strstr(out, "\"layer\":5"), "%s", out);
  int chosen = atoi(field(out, "chosen_layer", v1, sizeof v1));
  cr_assert(chosen >= 1 && chosen <= 3, "chosen layer %d", chosen);
  field(out, "contrast_layer", v1, sizeof v1);
  const char *id = strstr(out, "{\"id\": ");
  cr_assert_not_null(id);
  snprintf(path, sizeof path, "%s/jobs/%d/layers.svg", t.home, atoi(id + 7));
  f = fopen(path, "r");
  cr_assert_not_null(f, "no plot at %s", path);
  char head[8] = {0};
  cr_assert_eq(fread(head, 1, 4, f), 4);
  fclose(f);
  cr_assert_str_eq(head, "<svg");
  /* With signals: a row whose signal does not match its words is refused, naming the row. */
  write_file("bad.jsonl", "{\"text\": \"one two three\", \"signal\": [1, 2]}\n");
  cr_assert_eq(lathe(out, sizeof out, "run steer-layers --model " STORIES " --data bad.jsonl"), 1);
  cr_assert(strstr(out, "3 words"), "%s", out);
  /* steer-eval: both conditions and the summary. */
  write_file("prompts.jsonl", "{\"prompt\": \"Lily was\", \"continuation\": \" happy.\"}\n");
  cr_assert_eq(lathe(out, sizeof out,
                     "run steer-eval --model " STORIES
                     " --prompts prompts.jsonl --steer-vector happy.safetensors --target happy "
                     "--avoid sad --samples 2 --max-tokens 8"),
               0, "%s", out);
  cr_assert(strstr(out, "\"condition\":\"unsteered\"") && strstr(out, "\"condition\":\"steered\""), "%s", out);
  cr_assert_str_eq(field(out, "continuation_tokens", v1, sizeof v1), "3");
  field(out, "logprob_shift_per_token", v1, sizeof v1);
  /* and its picture: the unsteered and steered bars of the target and the avoid words. */
  id = strstr(out, "{\"id\": ");
  cr_assert_not_null(id);
  snprintf(path, sizeof path,
           "grep -q 'all target words' %s/jobs/%d/steer-eval.svg && grep -q '>steered<' "
           "%s/jobs/%d/steer-eval.svg && grep -q 'all avoid words' %s/jobs/%d/steer-eval.svg",
           t.home, atoi(id + 7), t.home, atoi(id + 7), t.home, atoi(id + 7));
  cr_assert_eq(system(path), 0, "%s", path);
}

Test(steer_jobs, contradictory_options_are_usage_errors) {
  static char out[1 << 14];
  const char *gen = "run generate --model " STORIES " --prompt hi";
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s --steer-vector /tmp/v.safetensors --reverse-prompt no", gen);
  cr_assert_eq(lathe(out, sizeof out, cmd), 2, "two methods at once");
  snprintf(cmd, sizeof cmd, "%s --contrast-prompt no", gen);
  cr_assert_eq(lathe(out, sizeof out, cmd), 2, "contrast without a layer");
  cr_assert_eq(lathe(out, sizeof out, "run steer-eval --model " STORIES " --prompts /tmp/p.jsonl"), 2,
               "steer-eval without a method");
  cr_assert_eq(lathe(out, sizeof out, "run steer-layers --model " STORIES " --data /tmp/d.jsonl --positive /tmp/p"), 2,
               "positive without negative");
  cr_assert_eq(lathe(out, sizeof out, "run steer-layers --model " STORIES " --data /tmp/d.jsonl --select median"), 2,
               "unknown correlation");
}
