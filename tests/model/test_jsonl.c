/* The shared JSONL reader: blank lines skipped, bad rows named by file and line, rows tokenized with the scored
 * part marked. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/text/jsonl.h"
#include "engine/model/model_tok.h"
#include "methods/prefs.h"

#include "support/tdata.h"

#define STORIES LATHE_SOURCE_DIR "/tests/fixtures/stories260K/hf"

static char path[64];

static void write_file(const char *text) { snprintf(path, sizeof path, "%s", tdata_file("rows.jsonl", text, 0)); }

TestSuite(jsonl, .fini = tdata_cleanup);

Test(jsonl, rows_blank_lines_and_errors_name_the_line) {
  write_file("{\"text\": \"a\"}\n\n  \r\n{\"text\": \"b\"}\r\n[1, 2]\n{\"text\": \"c\"}\n");
  lt_err_t err = {0};
  jsonl_t *r = jsonl_open(path, &err);
  cr_assert(r != NULL, "%s", err.msg);
  json_t *row;
  cr_assert_eq(jsonl_next(r, &row, &err), LT_OK);
  cr_assert_str_eq(jsonl_str(row, "text"), "a");
  json_decref(row);
  cr_assert_eq(jsonl_next(r, &row, &err), LT_OK);
  cr_assert_str_eq(jsonl_str(row, "text"), "b");
  json_decref(row);
  cr_assert_eq(jsonl_next(r, &row, &err), LT_E_INVALID);
  cr_assert_null(row);
  char want[96];
  snprintf(want, sizeof want, "%s:5: not a JSON object", path);
  cr_assert(strstr(err.msg, want) != NULL, "%s", err.msg);
  jsonl_destroy(&r);
  json_t **rows;
  size_t n;
  cr_assert_eq(jsonl_load(path, 2, &rows, &n, &err), LT_OK, "max_rows stops before the bad row: %s", err.msg);
  cr_assert_eq(n, 2);
  jsonl_free(rows, n);
  cr_assert_eq(jsonl_load(path, 0, &rows, &n, &err), LT_E_INVALID);
  unlink(path);
  cr_assert_null(jsonl_open("/nonexistent/data.jsonl", &err));
  cr_assert(strstr(err.msg, "/nonexistent/data.jsonl") != NULL, "%s", err.msg);
}

Test(jsonl, row_tokens_mark_the_scored_part) {
  lt_err_t err = {0};
  tok_t *tok = model_tokenizer_open(STORIES, &err);
  cr_assert(tok != NULL, "%s", err.msg);
  json_t *text = json_pack("{s:s}", "text", "Once upon a time");
  json_t *pair = json_pack("{s:s, s:s}", "prompt", "Once upon", "completion", " a time");
  json_t *bad = json_pack("{s:s}", "prompt", "Once");
  int32_t *ids;
  size_t n, first;
  cr_assert_eq(jsonl_row_tokens(tok, text, TOK_ADD_BOS, &ids, &n, &first, "t:1", &err), LT_OK, "%s", err.msg);
  int32_t want[5] = {1, 403, 407, 261, 378};
  cr_assert_eq(n, 5);
  cr_assert_arr_eq(ids, want, sizeof want);
  cr_assert_eq(first, 1, "a text row scores every token after the first");
  free(ids);
  cr_assert_eq(jsonl_row_tokens(tok, pair, TOK_ADD_BOS, &ids, &n, &first, "t:2", &err), LT_OK, "%s", err.msg);
  int32_t *p = NULL, *c = NULL;
  size_t np = 0, nc = 0;
  cr_assert_eq(tok_encode(tok, "Once upon", 9, TOK_ADD_BOS, &p, &np, &err), LT_OK);
  cr_assert_eq(tok_encode(tok, " a time", 7, 0, &c, &nc, &err), LT_OK);
  cr_assert_eq(n, np + nc);
  cr_assert_eq(first, np, "scoring starts at the first completion token");
  cr_assert_arr_eq(ids, p, np * sizeof *p);
  cr_assert_arr_eq(ids + np, c, nc * sizeof *c);
  free(ids), free(p), free(c);
  cr_assert_eq(jsonl_row_tokens(tok, bad, 0, &ids, &n, &first, "t:3", &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "t:3") != NULL, "%s", err.msg);
  json_decref(text), json_decref(pair), json_decref(bad);
  tok_destroy(&tok);
}

/* Preference pairs (methods/prefs.h): both sides share the prompt's tokens and are scored on their completion;
 * rows marked inconsistent are skipped or, included, labelled by their lean; counts and strengths as read. */
Test(jsonl, preference_pairs_read_with_their_labels) {
  write_file("{\"prompt\": \"Once upon\", \"chosen\": \" a time\", \"rejected\": \" the hill\", \"strength\": 0.5}\n"
             "{\"prompt\": \"Lily\", \"chosen\": null, \"rejected\": null, \"consistent\": false, \"a\": \" ran\", "
             "\"b\": \" sat\", \"lean\": \"b\", \"lean_margin\": 0.25}\n"
             "{\"prompt\": \"Tom\", \"chosen\": \" hid\", \"rejected\": \" ran\", \"consistent\": true}\n");
  lt_err_t err = {0};
  tok_t *tok = model_tokenizer_open(STORIES, &err);
  cr_assert(tok != NULL, "%s", err.msg);
  pref_set_t d;
  pref_opts_t o = {.flags = TOK_ADD_BOS, .context = 64};
  cr_assert_eq(pref_read(&d, tok, path, &o, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(d.n, 2);
  cr_assert_eq(d.inconsistent, 1);
  cr_assert_eq(d.p[0].strength, 0.5);
  cr_assert(isnan(d.p[1].strength), "no strength given");
  int32_t *p = NULL, *c = NULL;
  size_t np = 0, nc = 0;
  cr_assert_eq(tok_encode(tok, "Once upon", 9, TOK_ADD_BOS, &p, &np, &err), LT_OK);
  cr_assert_eq(tok_encode(tok, " the hill", 9, 0, &c, &nc, &err), LT_OK);
  const lm_example_t *rj = &d.p[0].rejected;
  cr_assert_eq(rj->n, np + nc);
  cr_assert_eq(rj->first, np - 1, "the last prompt token predicts the first completion token");
  cr_assert_arr_eq(rj->ids, p, np * sizeof *p);
  cr_assert_arr_eq(rj->ids + np, c, nc * sizeof *c);
  cr_assert_arr_eq(d.p[0].chosen.ids, p, np * sizeof *p);
  free(p), free(c);
  pref_free(&d);
  /* Included, the inconsistent row's chosen side is its lean (b) and its strength the lean's margin. */
  o.include_inconsistent = true;
  cr_assert_eq(pref_read(&d, tok, path, &o, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(d.n, 3);
  cr_assert(!d.p[1].consistent && d.p[1].strength == 0.25);
  cr_assert_eq(tok_encode(tok, " sat", 4, 0, &c, &nc, &err), LT_OK);
  const lm_example_t *ch = &d.p[1].chosen;
  cr_assert_eq(ch->n - ch->first - 1, nc);
  cr_assert_arr_eq(ch->ids + ch->first + 1, c, nc * sizeof *c);
  free(c);
  pref_free(&d);
  /* A strength on every row is asked for: the third row has none. */
  o.need_strength = true;
  cr_assert_eq(pref_read(&d, tok, path, &o, &err), LT_E_INVALID);
  char want[128];
  snprintf(want, sizeof want, "%s:3: --dpo-weight strength needs a \"strength\"", path);
  cr_assert(strstr(err.msg, want), "%s", err.msg);
  /* A context that leaves a side nothing to score skips the row; a file of nothing else is refused. */
  o = (pref_opts_t){.flags = TOK_ADD_BOS};
  write_file("{\"prompt\": \"Once upon a time there was a little girl\", \"chosen\": \" a\", \"rejected\": \" b\"}\n");
  o.context = 4;
  cr_assert_eq(pref_read(&d, tok, path, &o, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "no preference pair to train on") && strstr(err.msg, "1 with nothing to score"), "%s",
            err.msg);
  tok_destroy(&tok);
}
