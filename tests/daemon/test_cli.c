/* The `lathe` binary itself: JSON shapes the issue promises, exit statuses, autostart, help from the table. */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/util.h"
#include "td.h"

static td_t t;

static void setup(void) { td_cli_setup(&t); }

static void teardown(void) { td_cli_teardown(&t); }

TestSuite(cli, .init = setup, .fini = teardown, .timeout = 60);

/* Runs `lathe ARGS`, capturing stdout into out; returns the exit status. */
static int lathe(char *out, size_t n, const char *args) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "%s/lathe %s 2>/dev/null", LATHE_BIN_DIR, args);
  return td_shell(out, n, cmd);
}

/* `lathe ARGS 2>&1` into out (static): the exit status. */
static int lathe_all(char *out, size_t n, const char *args) {
  static char cmd[4096];
  snprintf(cmd, sizeof cmd, "%s/lathe %.3000s 2>&1", LATHE_BIN_DIR, args);
  return td_shell(out, n, cmd);
}

Test(cli, autostart_json_shapes_and_exit_statuses) {
  static char out[1 << 16];
  cr_assert_eq(lathe(out, sizeof out, "--no-autostart ps"), 3, "no daemon and no autostart: exit 3");
  cr_assert_eq(lathe(out, sizeof out, "--json submit sleep --steps 2 --delay-ms 1"), 0);
  cr_assert(strstr(out, "\"id\": 1"), "submit --json prints the id: %s", out);
  cr_assert_gt(lc_daemon_pid(t.sock), 0, "the CLI started a daemon");
  cr_assert_eq(lathe(out, sizeof out, "--json daemon status"), 0);
  cr_assert(strstr(out, "\"pid\":"), "daemon status --json has the pid: %s", out);
  /* Results on stdout, events on stderr (as JSON lines when not a terminal). */
  char cmd[512], errs[1 << 14];
  snprintf(cmd, sizeof cmd, "%s/lathe run sleep --steps 3 --delay_ms 1 2>%s/run.err", LATHE_BIN_DIR, t.dir);
  cr_assert_eq(td_shell(out, sizeof out, cmd), 0, "run exits 0 on success");
  cr_assert(!strstr(out, "\"state\""), "events stay off stdout (results only): %s", out);
  snprintf(cmd, sizeof cmd, "cat %s/run.err", t.dir);
  cr_assert_eq(td_shell(errs, sizeof errs, cmd), 0);
  cr_assert(strstr(errs, "\"state\":\"succeeded\""), "not a terminal: events as JSON lines on stderr: %s", errs);
  cr_assert_eq(lathe(out, sizeof out, "run sleep --steps 3 --fail 1"), 1, "run exits 1 on failure");
  cr_assert_eq(lathe(out, sizeof out, "--json ps --all"), 0);
  int lines = 0;
  for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n"), lines++)
    cr_assert(strstr(l, "\"id\":") && strstr(l, "\"kind\":") && strstr(l, "\"state\":") && strstr(l, "\"reason\":"),
              "ps line: %s", l);
  cr_assert_eq(lines, 3);
  cr_assert_eq(lathe(out, sizeof out, "result 2"), 0);
  cr_assert(strstr(out, "  steps = 3\n"), "readable by default: %s", out);
  cr_assert_eq(lathe(out, sizeof out, "--json result 2"), 0);
  cr_assert(strstr(out, "\"steps\":3"), "%s", out);
  cr_assert_eq(lathe(out, sizeof out, "show 2"), 0);
  cr_assert(strstr(out, "job 2  sleep  succeeded (attempt 1)\n") && strstr(out, "params:\n  steps = 3\n") &&
                strstr(out, "\nstarted   20"),
            "readable: %s", out);
  cr_assert_eq(lathe(out, sizeof out, "logs 2"), 0);
  cr_assert(strstr(out, "\"seq\":1"), "%s", out);
  cr_assert_eq(lathe(out, sizeof out, "submit sleep --steps x"), 2, "a bad parameter is a usage error");
  cr_assert_eq(lathe(out, sizeof out, "submit sleep --nope 1"), 2);
  cr_assert_eq(lathe(out, sizeof out, "--json daemon stop"), 0);
  cr_assert_eq(lc_daemon_pid(t.sock), 0, "daemon stop stops it");
}

Test(cli, help_comes_from_the_kind_table) {
  static char out[1 << 14];
  cr_assert_eq(lathe(out, sizeof out, "help sleep"), 0);
  for (size_t i = 0; i < kind_count(); i++) {
    const kind_t *k = kind_at(i);
    char args[64];
    snprintf(args, sizeof args, "help %s", k->name);
    cr_assert_eq(lathe(out, sizeof out, args), 0);
    for (size_t p = 0; p < k->n_params; p++) {
      char flag[80];
      snprintf(flag, sizeof flag, "--%s ", k->params[p].key);
      for (char *q = flag; *q; q++) *q = *q == '_' ? '-' : *q; /* flags are shown as typed: --delay-ms */
      cr_assert(strstr(out, flag), "help %s lacks %s", k->name, flag);
    }
  }
  /* A kind that is not there is an error, with the nearest name offered; so are mistyped commands and flags. */
  static char err[1 << 12];
  cr_assert_eq(lathe_all(err, sizeof err, "help tnue"), 2);
  cr_assert(strstr(err, "no job kind 'tnue'; did you mean 'tune'?"), "%s", err);
  cr_assert_eq(lathe_all(err, sizeof err, "sbumit sleep"), 2);
  cr_assert(strstr(err, "unknown command 'sbumit'; did you mean 'submit'?"), "%s", err);
  cr_assert_eq(lathe_all(err, sizeof err, "submit sleep --delay-mss 3"), 2);
  cr_assert(strstr(err, "kind sleep has no parameter --delay-mss; did you mean --delay-ms?"), "%s", err);
  cr_assert_eq(lathe_all(err, sizeof err, "--version"), 0);
  cr_assert(!strncmp(err, "lathe ", 6) && strstr(err, "(protocol "), "%s", err);
  cr_assert_eq(lathe_all(err, sizeof err, "version"), 0);
  /* An error about a parameter names the flag as typed, not the wire field. */
  cr_assert_eq(lathe_all(err, sizeof err, "submit generate --model /no/such --prompt x --max-tokens 2"), 2);
  cr_assert(strstr(err, "--model: /no/such: No such file") && !strstr(err, "params."), "%s", err);
}

/* Mistakes about files are refused at submit, naming the parameter, and nothing is queued for them: a missing
 * model or data file, an output that is the job's own input, an output folder that exists and is not empty
 * (accepted with --force, as is an empty one). */

Test(cli, missing_inputs_and_unsafe_outputs_are_refused_at_submit) {
  static char out[1 << 14], args[2048];
  char data[256], full[256], empty[256];
  snprintf(data, sizeof data, "%s/train.jsonl", t.dir);
  FILE *f = fopen(data, "w");
  cr_assert(f);
  fputs("{\"text\": \"In the beginning God created the heaven and the earth.\"}\n", f);
  fclose(f);
  snprintf(full, sizeof full, "%s/full", t.dir);
  snprintf(empty, sizeof empty, "%s/empty", t.dir);
  snprintf(args, sizeof args, "mkdir -p %s %s && touch %s/old-result", full, empty, full);
  cr_assert_eq(td_shell(out, sizeof out, args), 0);
  const char *model = LATHE_SOURCE_DIR "/models/lathe-kjv-llama";
  snprintf(args, sizeof args, "submit tune --model %s/none --data %s --output %s/o1 --steps 1", t.dir, data, t.dir);
  cr_assert_eq(lathe_all(out, sizeof out, args), 2, "%s", out);
  cr_assert(strstr(out, "--model: ") && strstr(out, "No such file"), "%s", out);
  snprintf(args, sizeof args, "submit tune --model %s --data %s.missing --output %s/o2 --steps 1", model, data, t.dir);
  cr_assert_eq(lathe_all(out, sizeof out, args), 2, "%s", out);
  cr_assert(strstr(out, "--data: ") && strstr(out, "No such file"), "%s", out);
  snprintf(args, sizeof args, "submit tune --model %s --data %s --output %s --steps 1", model, data, full);
  cr_assert_eq(lathe_all(out, sizeof out, args), 2, "%s", out);
  cr_assert(strstr(out, "--output: ") && strstr(out, "exists and is not empty"), "%s", out);
  /* The output is the model itself, named another way; --force does not change that. */
  snprintf(args, sizeof args,
           "submit compress --model %s --method layer-drop --drop 1 --data %s --eval %s --output %s/../lathe-kjv-llama "
           "--force",
           model, data, data, model);
  cr_assert_eq(lathe_all(out, sizeof out, args), 2, "%s", out);
  cr_assert(strstr(out, "--output: ") && strstr(out, "is also the job's model"), "%s", out);
  /* A model that is no model: a folder without config.json, a file that is not GGUF; an output below a file. */
  snprintf(args, sizeof args, "submit tune --model %s --data %s --output %s/o3 --steps 1", t.dir, data, t.dir);
  cr_assert_eq(lathe_all(out, sizeof out, args), 2, "%s", out);
  cr_assert(strstr(out, "--model: ") && strstr(out, "is a folder without config.json"), "%s", out);
  snprintf(args, sizeof args, "submit generate --model %s --prompt hi", data);
  cr_assert_eq(lathe_all(out, sizeof out, args), 2, "%s", out);
  cr_assert(strstr(out, "--model: ") && strstr(out, "is not a GGUF file"), "%s", out);
  snprintf(args, sizeof args, "submit tune --model %s --data %s --output %s/o4 --steps 1", model, data, data);
  cr_assert_eq(lathe_all(out, sizeof out, args), 2, "%s", out);
  cr_assert(strstr(out, "--output: ") && strstr(out, "is a file, not a folder"), "%s", out);
  /* The daemon checks again for clients that do not. */
  cr_assert_eq(lathe(out, sizeof out, "daemon start"), 0);
  lc_t *c = td_client(&t);
  proto_err_t pe = {0};
  const char *kv[] = {"model", t.dir, "data", data, NULL};
  cr_assert_leq(td_submit(c, "score", kv, NULL, NULL, NULL, NULL, &pe), 0);
  cr_assert_str_eq(pe.field, "params.model");
  cr_assert(strstr(pe.msg, "is a folder without config.json"), "%s", pe.msg);
  char below[300];
  snprintf(below, sizeof below, "%s/o5", data);
  const char *kv2[] = {"model", model, "data", data, "output", below, NULL};
  cr_assert_leq(td_submit(c, "tune", kv2, NULL, NULL, NULL, NULL, &pe), 0);
  cr_assert_str_eq(pe.field, "params.output");
  cr_assert(strstr(pe.msg, "is a file, not a folder"), "%s", pe.msg);
  lc_destroy(&c);
  cr_assert_eq(lathe_all(out, sizeof out, "--json ps --all"), 0);
  cr_assert_eq(out[0], '\0', "nothing was queued: %s", out);
  /* With --force, and into an empty folder, the same jobs are accepted. */
  snprintf(args, sizeof args, "submit tune --model %s --data %s --output %s --steps 1 --force", model, data, full);
  cr_assert_eq(lathe_all(out, sizeof out, args), 0, "%s", out);
  snprintf(args, sizeof args, "submit tune --model %s --data %s --output %s --steps 1", model, data, empty);
  cr_assert_eq(lathe_all(out, sizeof out, args), 0, "%s", out);
}

/* The worker keeps the last model for the next job only while nothing on disk changed: a folder rewritten in
 * place is loaded again, and the job then runs the new weights. */
Test(cli, a_model_changed_on_disk_is_loaded_again) {
  static char out[1 << 16], args[2048], text[3][512];
  const char *models = LATHE_SOURCE_DIR "/models";
  snprintf(args, sizeof args, "cp -r %s/lathe-kjv-llama %s/m", models, t.dir);
  cr_assert_eq(td_shell(out, sizeof out, args), 0);
  const char *src[3] = {"m", "m", "m"};
  for (int k = 0; k < 3; k++) {
    if (k == 2) {
      snprintf(args, sizeof args, "rm -r %s/m && cp -r %s/lathe-kjv-moe %s/m", t.dir, models, t.dir);
      cr_assert_eq(td_shell(out, sizeof out, args), 0);
    }
    snprintf(args, sizeof args,
             "--json run generate --model %s/%s --prompt 'And God said' --temperature 0 --max-tokens 12", t.dir,
             src[k]);
    cr_assert_eq(lathe_all(out, sizeof out, args), 0, "%s", out);
    const char *tx = strstr(out, "{\"prompt\":");
    cr_assert(tx, "%s", out);
    util_copy(text[k], tx, sizeof text[k]);
    *strchr(text[k], '\n') = '\0';
    if (k == 1) cr_assert(strstr(out, "already loaded"), "the second job reuses the kept model: %s", out);
    if (k == 2) cr_assert(strstr(out, "changed on disk since it was loaded"), "%s", out);
  }
  cr_assert_str_eq(text[0], text[1]);
  /* The MoE model's own greedy text, from its own path. */
  snprintf(args, sizeof args,
           "--json run generate --model %s/lathe-kjv-moe --prompt 'And God said' --temperature 0 --max-tokens 12",
           models);
  cr_assert_eq(lathe_all(out, sizeof out, args), 0, "%s", out);
  cr_assert(strstr(out, text[2]), "after the rewrite the job ran the new weights: %s vs %s", text[2], out);
  cr_assert_str_neq(text[0], text[2], "the two models write the same text: the test shows nothing");
}

/* `daemon start` reports the pid the daemon itself answers with (never a placeholder read from a lock file that
 * does not hold it yet), and `daemon stop` waits until it is gone. */
Test(cli, daemon_start_reports_the_daemons_own_pid) {
  static char out[1 << 14];
  cr_assert_eq(lathe(out, sizeof out, "--json daemon start"), 0);
  const char *p = strstr(out, "\"pid\": ");
  cr_assert(p && strstr(out, "\"started\": true"), "%s", out);
  long pid = strtol(p + 7, NULL, 10);
  cr_assert_gt(pid, 1, "%s", out);
  cr_assert_eq(lc_daemon_pid(t.sock), pid);
  cr_assert_eq(lathe(out, sizeof out, "--json daemon status"), 0);
  char want[48];
  snprintf(want, sizeof want, "\"pid\":%ld", pid);
  cr_assert(strstr(out, want), "%s in %s", want, out);
  /* Stopped with a job running: the reply names it; the text form says what becomes of it. */
  cr_assert_eq(lathe(out, sizeof out, "submit sleep --steps 200 --delay-ms 50"), 0);
  for (int i = 0; i < 100 && !strstr(out, "running"); i++) {
    td_sleep_ms(50);
    lathe(out, sizeof out, "ps");
  }
  cr_assert_eq(lathe(out, sizeof out, "daemon stop"), 0);
  cr_assert(strstr(out, "stopped\njob 1 (sleep) was running and was checkpointed: it resumes from there"), "%s", out);
  cr_assert_eq(lc_daemon_pid(t.sock), 0);
}

/* What a user reads back: `ps --json` gives a running job's progress, elapsed time and an estimate of the time
 * left, and the model; `logs --tail N` prints the last N events; a generate job's result holds its texts (and its
 * folder generations.jsonl). */
Test(cli, ps_progress_logs_tail_and_generate_texts) {
  static char out[1 << 16];
  cr_assert_eq(lathe(out, sizeof out, "submit sleep --steps 60 --delay-ms 100"), 0);
  bool seen = false;
  for (int i = 0; i < 100 && !seen; i++) {
    td_sleep_ms(50);
    cr_assert_eq(lathe(out, sizeof out, "--json ps"), 0);
    const char *pg = strstr(out, "\"progress\":{\"step\":");
    seen = pg && atoi(pg + 19) >= 5 && strstr(out, "\"eta_s\":") && strstr(out, "\"elapsed_s\":");
  }
  cr_assert(seen, "no progress, elapsed and ETA for the running job: %s", out);
  cr_assert(strstr(out, "\"unit\":\"steps\"") && strstr(out, "\"percent\":"), "%s", out);
  /* Stopped, its events stay put: the last five are seqs last-4 .. last. */
  cr_assert_eq(lathe(out, sizeof out, "cancel 1"), 0);
  for (int i = 0; i < 100 && !strstr(out, "\"state\":\"cancelled\""); i++) {
    td_sleep_ms(50);
    cr_assert_eq(lathe(out, sizeof out, "--json ps --all"), 0);
  }
  const char *ls = strstr(out, "\"last_seq\":");
  cr_assert(ls, "%s", out);
  long last = strtol(ls + 11, NULL, 10);
  cr_assert_gt(last, 5);
  cr_assert_eq(lathe(out, sizeof out, "logs 1 --tail 5"), 0);
  int lines = 0;
  for (const char *p = out; (p = strchr(p, '\n')); p++) lines++;
  cr_assert_eq(lines, 5, "%s", out);
  char want[48];
  snprintf(want, sizeof want, "\"seq\":%ld,", last - 4);
  cr_assert(!strncmp(strstr(out, "\"seq\":"), want, strlen(want)), "want %s first: %s", want, out);
  char args[512];
  snprintf(args, sizeof args,
           "--json run generate --model %s/models/lathe-kjv-llama --prompt 'And God said' --prompt 'In the' "
           "--temperature 0 --max-tokens 6",
           LATHE_SOURCE_DIR);
  cr_assert_eq(lathe(out, sizeof out, args), 0);
  char first[256];
  const char *tx = strstr(out, "\"text\":\"");
  cr_assert(tx, "%s", out);
  snprintf(first, sizeof first, "%.*s", (int)(strchr(tx + 8, '"') - tx - 8), tx + 8);
  cr_assert_eq(lathe(out, sizeof out, "--json result 2"), 0);
  cr_assert(strstr(out, "\"texts\"") && strstr(out, first), "the result lacks the text '%s': %s", first, out);
  char path[300];
  snprintf(path, sizeof path, "%s/jobs/2/generations.jsonl", t.home);
  FILE *f = fopen(path, "r");
  cr_assert(f, "no %s", path);
  int rows = 0;
  for (int ch; (ch = fgetc(f)) != EOF;) rows += ch == '\n';
  fclose(f);
  cr_assert_eq(rows, 2);
  /* Asked for more tokens than the context holds, generation stops at it and says so once. */
  snprintf(args, sizeof args,
           "--json run generate --model %s/models/lathe-kjv-llama --prompt 'And God said' --temperature 0 "
           "--max-tokens 500",
           LATHE_SOURCE_DIR);
  cr_assert_eq(lathe_all(out, sizeof out, args), 0, "%s", out);
  cr_assert(strstr(out, "max_tokens 500 reaches past the model's context (128 tokens"), "%s", out);
  cr_assert(strstr(out, "\"stop\":\"context\""), "%s", out);
}

/* Writes t.dir/zo.jsonl (its path into path) with `rows` identical prompt + completion rows for tune-zo runs. */
static void zo_data(char *path, size_t n, int rows) {
  snprintf(path, n, "%s/zo.jsonl", t.dir);
  FILE *f = fopen(path, "w");
  cr_assert(f);
  for (int i = 0; i < rows; i++) fputs("{\"prompt\": \"And God said\", \"completion\": \" unto Moses\"}\n", f);
  fclose(f);
}

/* On a terminal (forced with LATHE_TTY=1, stderr to a file) a run shows one updating line: step/N, the run's
 * figures (loss, eval loss) and the rate, redrawn in place; its metrics are no lines of their own. */
Test(cli, a_terminal_gets_one_updating_progress_line) {
  static char out[1 << 16], errs[1 << 18];
  char data[256], args[1024];
  zo_data(data, sizeof data, 16);
  snprintf(args, sizeof args,
           "LATHE_TTY=1 %s/lathe run tune-zo --model %s/models/lathe-kjv-llama --data %s --steps 12 --eval-every 0 "
           "--output %s/zo 2>%s/tty.err",
           LATHE_BIN_DIR, LATHE_SOURCE_DIR, data, t.dir, t.dir);
  cr_assert_eq(td_shell(out, sizeof out, args), 0, "%s", out);
  snprintf(args, sizeof args, "cat %s/tty.err", t.dir);
  cr_assert_eq(td_shell(errs, sizeof errs, args), 0);
  int redraws = 0, lines = 0;
  for (const char *p = errs; (p = strstr(p, "\r\033[Kjob 1 [")); p++) redraws++;
  for (const char *p = errs; (p = strchr(p, '\n')); p++) lines++;
  cr_assert_geq(redraws, 12, "%s", errs);
  cr_assert(strstr(errs, "12/12 steps") && strstr(errs, "  loss "), "%s", errs);
  cr_assert(!strstr(errs, "metric "), "metrics are not lines of their own: %s", errs);
  cr_assert_leq(lines, 10, "a line per event, not one updating line: %s", errs);
  cr_assert(!strstr(out, "progress"), "%s", out);
  /* The run's result also lies beside the model it wrote. */
  snprintf(args, sizeof args,
           "grep -q '\"kind\": \"tune-zo\"' %s/zo/lathe-report.json && grep -q '\"steps\": 12' %s/zo/lathe-report.json",
           t.dir, t.dir);
  cr_assert_eq(system(args), 0, "%s", args);
}

/* compress needs only --model, --method, --data and --output: without --eval it scores a held-out tail of --data,
 * and says so. Its pictures: the per-block scores with the dropped block shaded, and for a MoE model the expert
 * usage with the dropped experts crossed out. */
Test(cli, compress_without_eval_scores_a_held_out_share_of_the_data) {
  static char out[1 << 16], args[1024];
  snprintf(args, sizeof args,
           "--json run compress --model %s/models/lathe-kjv-moe --method block-drop --drop 1 --method expert-drop "
           "--data %s/models/kjv-heldout.jsonl --output %s/cmp --samples 4 --eval-windows 8",
           LATHE_SOURCE_DIR, LATHE_SOURCE_DIR, t.dir);
  cr_assert_eq(lathe_all(out, sizeof out, args), 0, "%s", out);
  cr_assert(strstr(out, "no --eval: scoring the last ") && strstr(out, "(held out of calibration)"), "%s", out);
  cr_assert(strstr(out, "\"perplexity_before\":") && strstr(out, "\"perplexity_after\":"), "%s", out);
  /* The report travels with the model. */
  snprintf(args, sizeof args, "grep -q '\"perplexity\"' %s/cmp/lathe-report.json", t.dir);
  cr_assert_eq(system(args), 0, "no lathe-report.json beside the compressed model");
  const char *home = getenv("LATHE_HOME");
  snprintf(args, sizeof args,
           "test $(grep -c 'fill=\"#f7c6c6\"/>' %s/jobs/1/scores.svg) = 1 && grep -q '>dropped block<' "
           "%s/jobs/1/scores.svg",
           home, home);
  cr_assert_eq(system(args), 0, "scores.svg shades one dropped block: %s", args);
  /* Expert drop keeps three quarters of each block's experts: a quarter of the cells crossed out. */
  snprintf(
      args, sizeof args,
      "test $(grep -c '<path d=\"M' %s/jobs/1/experts.svg) -ge 2 && grep -q '>dropped expert<' %s/jobs/1/experts.svg",
      home, home);
  cr_assert_eq(system(args), 0, "experts.svg marks the dropped experts: %s", args);
}

/* `lathe rm --older-than D` removes the finished jobs that ended over D ago, rows and folders, page by page (150
 * of them: two pages of the daemon's `prune`), and leaves the younger, the held and the running. */
Test(cli, rm_older_than_removes_the_old_finished_jobs) {
  static char out[1 << 16];
  cr_assert_eq(lathe(out, sizeof out, "daemon start"), 0);
  lc_t *c = td_client(&t);
  int64_t last = 0;
  for (int i = 0; i < 150; i++) last = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, last, "succeeded", 20000);
  td_sleep_ms(2500);
  int64_t young = td_sleep(c, 1, 0, NULL);
  td_wait_state(c, young, "succeeded", 5000);
  int64_t running = td_sleep(c, 400, 50, NULL);
  td_wait_state(c, running, "running", 5000);
  mp_doc_t *d = td_show(c, young);
  int64_t young_end = td_int(mp_get(mp_doc_root(d), "job"), "finished");
  mp_doc_destroy(&d);
  lc_destroy(&c);
  /* Older than the young job is now, rounded up, plus a second: the old ones ended 2.5 s before it did. */
  int64_t age_s = (util_now_ms() - young_end + 999) / 1000 + 1;
  char cmd[64], want[96];
  snprintf(cmd, sizeof cmd, "rm --older-than %llds", (long long)age_s);
  cr_assert_eq(lathe(out, sizeof out, cmd), 0);
  snprintf(want, sizeof want, "removed 150 finished jobs that ended over %llds ago", (long long)age_s);
  cr_assert(strstr(out, want), "%s: %s", want, out);
  cr_assert_eq(lathe(out, sizeof out, "--json ps --all"), 0);
  int rows = 0;
  for (const char *p = out; (p = strstr(p, "\"id\":")); p++) rows++;
  cr_assert_eq(rows, 2, "the young and the running job are left: %s", out);
  char dir[256];
  snprintf(dir, sizeof dir, "%s/jobs/1", getenv("LATHE_HOME"));
  cr_assert_neq(access(dir, F_OK), 0, "job 1's folder is gone");
  cr_assert_eq(lathe_all(out, sizeof out, "rm --older-than soon"), 2);
  cr_assert(strstr(out, "usage: lathe rm --older-than D"), "%s", out);
  cr_assert_eq(lathe(out, sizeof out, "cancel 152"), 0);
}

/* generate streams its texts as they are produced (`text` events): on a terminal (forced) stdout gets each prompt
 * and its text as it comes, prompt after prompt with a blank line between, and exactly the texts of the result
 * (the pieces join up, and the finished outputs are not printed twice); `logs` lists the pieces. */
Test(cli, generate_streams_its_texts_prompt_by_prompt) {
  static char out[1 << 16], res[1 << 16], args[2 * PATH_MAX], cmd[3 * PATH_MAX];
  snprintf(args, sizeof args,
           "run generate --model %s/models/lathe-kjv-llama --prompt 'And God said' --prompt 'In the' "
           "--temperature 0 --max-tokens 48",
           LATHE_SOURCE_DIR);
  snprintf(cmd, sizeof cmd, "LATHE_TTY=1 %s/lathe %s 2>/dev/null", LATHE_BIN_DIR, args);
  cr_assert_eq(td_shell(out, sizeof out, cmd), 0, "%s", out);
  cr_assert_eq(lathe(res, sizeof res, "--json result 1"), 0);
  json_error_t je;
  json_t *r = json_loads(res, 0, &je);
  cr_assert(r, "%s: %s", je.text, res);
  json_t *texts = json_object_get(json_object_get(r, "result"), "texts");
  cr_assert_eq(json_array_size(texts), 2, "%s", res);
  static char want[1 << 16];
  snprintf(want, sizeof want, "And God said%s\n\nIn the%s\njob 1 succeeded\n",
           json_string_value(json_array_get(texts, 0)), json_string_value(json_array_get(texts, 1)));
  json_decref(r);
  cr_assert_str_eq(out, want);
  cr_assert_eq(lathe(out, sizeof out, "--json logs 1"), 0);
  cr_assert(strstr(out, "\"type\":\"text\"") && strstr(out, "\"done\":true"), "%s", out);
}

/* A device chosen on the client reaches the job: --device, or LATHE_DEVICE in the client's environment (the
 * flag wins); a device that exists runs it, one that does not fails the job naming the devices there are, and
 * text that is no device index or UUID is refused at submit naming where it came from. */
Test(cli, the_clients_device_choice_reaches_the_job) {
  static char out[1 << 16];
  cr_assert_eq(lathe(out, sizeof out, "run selftest --n 64 --device 0"), 0, "%s", out);
  cr_assert_eq(td_shell(out, sizeof out, "LATHE_DEVICE=0 " LATHE_BIN_DIR "/lathe submit selftest --n 64 2>&1"), 0, "%s",
               out);
  cr_assert_eq(td_shell(out, sizeof out, "LATHE_DEVICE=0 " LATHE_BIN_DIR "/lathe --json show 2"), 0);
  cr_assert(strstr(out, "\"device\":\"0\""), "LATHE_DEVICE did not reach job 2: %s", out);
  cr_assert_eq(lathe_all(out, sizeof out, "run selftest --n 64 --device 9"), 2, "%s", out);
  cr_assert(strstr(out, "--device: no worker of this daemon runs on device 9; its workers' devices: 0 ("), "%s", out);
  cr_assert_eq(lathe_all(out, sizeof out, "submit selftest --device gpu0"), 2);
  cr_assert(strstr(out, "--device: 'gpu0' is neither a device index nor a UUID"), "%s", out);
  cr_assert_eq(td_shell(out, sizeof out, "LATHE_DEVICE=first " LATHE_BIN_DIR "/lathe submit selftest 2>&1"), 2);
  cr_assert(strstr(out, "LATHE_DEVICE=first: not a device index or UUID"), "%s", out);
  cr_assert_eq(td_shell(out, sizeof out, "LATHE_DEVICE=first " LATHE_BIN_DIR "/lathe submit selftest --device 0"), 0,
               "the flag wins over the environment: %s", out);
}

/* Without a terminal and without --json, `run` writes a progress line every two seconds at most and no metric
 * lines (the job's log keeps them all); --json keeps every event for programs. */
Test(cli, without_a_terminal_progress_is_a_line_every_few_seconds) {
  static char out[1 << 18];
  int64_t t0 = util_mono_ms();
  cr_assert_eq(lathe_all(out, sizeof out, "run sleep --steps 30 --delay-ms 100"), 0, "%s", out);
  int64_t took = util_mono_ms() - t0;
  int progress = 0;
  for (const char *p = out; (p = strstr(p, "\"type\":\"progress\"")); p++) progress++;
  cr_assert(progress >= 1 && progress <= 1 + took / 2000, "%d progress lines in %lld ms: %s", progress, (long long)took,
            out);
  /* tune-zo emits five metrics a step: none of them is a line here. */
  char data[256], args[1024];
  zo_data(data, sizeof data, 8);
  snprintf(args, sizeof args, "run tune-zo --model %s/models/lathe-kjv-llama --data %s --steps 4 --output %s/zo",
           LATHE_SOURCE_DIR, data, t.dir);
  cr_assert_eq(lathe_all(out, sizeof out, args), 0, "%s", out);
  cr_assert_null(strstr(out, "\"type\":\"metric\""), "%s", out);
  cr_assert(strstr(out, "\"type\":\"log\""), "log lines stay: %s", out);
  cr_assert_eq(lathe_all(out, sizeof out, "--json run sleep --steps 30 --delay-ms 100"), 0, "%s", out);
  progress = 0;
  for (const char *p = out; (p = strstr(p, "\"type\":\"progress\"")); p++) progress++;
  cr_assert_geq(progress, 20, "--json keeps the events: %d", progress);
}

/* Runs `lathe` with argv (no shell: texts go through as they are), capturing stdout into out; the exit status. */
static int lathe_argv(char *out, size_t n, const char *const *args) {
  int fd[2];
  cr_assert_eq(pipe(fd), 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    dup2(fd[1], STDOUT_FILENO);
    close(fd[0]), close(fd[1]);
    const char *argv[16] = {LATHE_BIN_DIR "/lathe"};
    for (int i = 0; args[i] && i < 14; i++) argv[i + 1] = args[i];
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(fd[1]);
  size_t got = 0;
  for (ssize_t r; got + 1 < n && (r = read(fd[0], out + got, n - 1 - got)) > 0;) got += (size_t)r;
  out[got] = '\0';
  close(fd[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* `lathe tokenize` (no daemon) gives the committed known encodings of the reference tokenizer, BOS included, for
 * every case (whitespace runs, digits, contractions, accents, emoji, special markers), from a folder that holds
 * only tokenizer.json; and a GGUF's embedded vocabulary gives the greedy fixture's prompt ids. */
Test(cli, tokenize_gives_the_reference_ids) {
  static char out[1 << 16];
  json_error_t je;
  json_t *cases = json_load_file(LATHE_SOURCE_DIR "/tests/fixtures/tokenizer-cases.json", 0, &je);
  cr_assert(cases, "%s", je.text);
  const char *tok_path;
  json_t *list;
  int checked = 0;
  json_object_foreach(cases, tok_path, list) {
    static char dir[512], cmd[3 * PATH_MAX];
    snprintf(dir, sizeof dir, "%s/tok-only-%d", t.dir, checked);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s/%s %s/", dir, LATHE_SOURCE_DIR, tok_path, dir);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    size_t i;
    json_t *c;
    json_array_foreach(list, i, c) {
      const char *text = json_string_value(json_object_get(c, "text"));
      const char *args[] = {"tokenize", "--model", dir, "--text", text, "--add-bos", "--parse-special", "--json", NULL};
      cr_assert_eq(lathe_argv(out, sizeof out, args), 0, "%s: %s", text, out);
      json_t *got = json_loads(out, 0, &je);
      cr_assert(got, "%s", out);
      cr_assert(json_equal(json_object_get(got, "ids"), json_object_get(c, "ids")), "%s on %s: got %s", tok_path, text,
                out);
      cr_assert_eq(json_array_size(json_object_get(got, "pieces")), json_array_size(json_object_get(c, "ids")));
      json_decref(got);
      checked++;
    }
  }
  json_decref(cases);
  cr_assert_geq(checked, 12);
  const char *args[] = {"tokenize", "--model",          LATHE_SOURCE_DIR "/tests/fixtures/stories260K/stories260K.gguf",
                        "--text",   "Once upon a time", "--add-bos",
                        NULL};
  cr_assert_eq(lathe_argv(out, sizeof out, args), 0, "%s", out);
  cr_assert_str_eq(out, "1 403 407 261 378\t\"<s>\" \" Once\" \" upon\" \" a\" \" time\"\n");
  const char *bad[] = {"tokenize", "--model", t.dir, "--text", "x", NULL};
  cr_assert_eq(lathe_argv(out, sizeof out, bad), 1);
  const char *usage[] = {"tokenize", "--text", "x", NULL};
  cr_assert_eq(lathe_argv(out, sizeof out, usage), 2);
}

/* `lathe history` lists the finished jobs only, like sacct: start, end, elapsed, attempts and how each ended;
 * --since D keeps those that ended within D. */
Test(cli, history_lists_finished_jobs_with_their_times) {
  static char out[1 << 14];
  cr_assert_eq(lathe(out, sizeof out, "run sleep --steps 2 --delay-ms 10"), 0);
  cr_assert_eq(lathe(out, sizeof out, "submit sleep --steps 1000 --hold"), 0);
  cr_assert_eq(lathe(out, sizeof out, "history"), 0);
  cr_assert(strstr(out, "STARTED") && strstr(out, "ENDED") && strstr(out, "ATTEMPTS"), "%s", out);
  cr_assert(strstr(out, "     1  sleep        succeeded  20"), "job 1 with its start date: %s", out);
  cr_assert_null(strstr(out, "     2  sleep"), "the held job is not history: %s", out);
  cr_assert_eq(lathe(out, sizeof out, "--json history --since 1h"), 0);
  cr_assert(strstr(out, "\"id\":1,") && !strstr(out, "\"id\":2,"), "%s", out);
  cr_assert_eq(lathe_all(out, sizeof out, "history --since soon"), 2);
}
