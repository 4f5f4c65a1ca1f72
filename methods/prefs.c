/* Preference pairs for DPO read from JSONL (methods/prefs.h). */
#include "methods/prefs.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/jsonl.h"

void pref_free(pref_set_t *d) {
  for (uint64_t i = 0; d->ids && i < 2 * (uint64_t)d->n; i++) free(d->ids[i]);
  free(d->ids);
  free(d->p);
  memset(d, 0, sizeof *d);
}

static bool blank(const char *s) {
  while (*s && isspace((unsigned char)*s)) s++;
  return !*s;
}

/* The label of one row: its prompt, chosen and rejected texts and its strength (NaN: none). Returns 1 for a pair,
 * 0 for a row to skip (inconsistent, not included), or -1 with err naming the line. */
static int row_label(const json_t *row, const pref_opts_t *o, const char *where, const char **prompt,
                     const char **chosen, const char **rejected, double *strength, bool *consistent, lt_err_t *err) {
  const json_t *cj = json_object_get(row, "consistent");
  if (cj && !json_is_boolean(cj) && !json_is_null(cj))
    return lt_fail(err, LT_E_INVALID, "%s: \"consistent\" must be true or false", where), -1;
  *consistent = !json_is_false(cj);
  if (!*consistent && !o->include_inconsistent) return 0;
  const json_t *pj = json_object_get(row, "prompt"), *wj = json_object_get(row, "chosen"),
               *lj = json_object_get(row, "rejected"), *sj = json_object_get(row, "strength");
  *strength = NAN;
  bool from_lean = !*consistent && json_is_null(wj) && json_is_null(lj);
  if (from_lean) {
    /* The feedback job's inconsistent row: the label is its likelihood lean. */
    const char *lean = json_string_value(json_object_get(row, "lean"));
    const char *a = json_string_value(json_object_get(row, "a")), *b = json_string_value(json_object_get(row, "b"));
    if (!lean || (strcmp(lean, "a") && strcmp(lean, "b")) || !a || !b)
      return lt_fail(err, LT_E_INVALID,
                     "%s: an inconsistent row without \"chosen\" and \"rejected\" needs \"lean\" (\"a\" or \"b\") and "
                     "the \"a\" and \"b\" strings (feedback.jsonl has them)",
                     where),
             -1;
    *chosen = !strcmp(lean, "a") ? a : b, *rejected = !strcmp(lean, "a") ? b : a;
    sj = json_object_get(row, "lean_margin");
  } else {
    const char *names[3] = {"prompt", "chosen", "rejected"};
    const json_t *js[3] = {pj, wj, lj};
    for (int k = 0; k < 3; k++)
      if (!json_is_string(js[k]))
        return lt_fail(err, LT_E_INVALID,
                       "%s: a preference row needs \"prompt\", \"chosen\" and \"rejected\" strings: "
                       "\"%s\" is %s",
                       where, names[k], js[k] ? "not a string" : "missing"),
               -1;
    *chosen = json_string_value(wj), *rejected = json_string_value(lj);
  }
  if (!json_is_string(pj))
    return lt_fail(err, LT_E_INVALID, "%s: a preference row needs a \"prompt\" string: it is %s", where,
                   pj ? "not a string" : "missing"),
           -1;
  *prompt = json_string_value(pj);
  if (blank(*chosen) || blank(*rejected))
    return lt_fail(err, LT_E_INVALID, "%s: the %s completion is empty", where, blank(*chosen) ? "chosen" : "rejected"),
           -1;
  if (!strcmp(*chosen, *rejected))
    return lt_fail(err, LT_E_INVALID, "%s: \"chosen\" and \"rejected\" are the same text: the pair prefers nothing",
                   where),
           -1;
  if (sj && !json_is_null(sj)) {
    if (!json_is_number(sj) || !isfinite(json_number_value(sj)))
      return lt_fail(err, LT_E_INVALID, "%s: \"%s\" must be a finite number", where,
                     from_lean ? "lean_margin" : "strength"),
             -1;
    *strength = json_number_value(sj);
  }
  if (o->need_strength && isnan(*strength))
    return lt_fail(err, LT_E_INVALID, "%s: --dpo-weight strength needs a \"strength\" number on every row", where), -1;
  return 1;
}

/* Tokenises prompt + completion into *e (ids owned by *ids), cut to the context (*cut says so). */
static lt_status_t side(const tok_t *tok, const char *prompt, const char *completion, const pref_opts_t *o,
                        const char *where, int32_t **ids, lm_example_t *e, bool *cut, lt_err_t *err) {
  json_t *row = json_pack("{s:s, s:s}", "prompt", prompt, "completion", completion);
  if (!row) return lt_fail(err, LT_E_NOMEM, "out of memory");
  size_t n = 0, scored = 0;
  lt_status_t st = jsonl_row_tokens(tok, row, o->flags, ids, &n, &scored, where, err);
  json_decref(row);
  if (st != LT_OK) return st;
  uint32_t first = scored ? (uint32_t)scored - 1 : 0;
  *cut = n > o->context;
  if (*cut) n = o->context;
  *e = (lm_example_t){.ids = *ids, .n = (uint32_t)n, .first = first};
  return LT_OK;
}

static bool scorable(const lm_example_t *e) { return e->n >= 2 && e->first + 1 < e->n; }

lt_status_t pref_read(pref_set_t *d, const tok_t *tok, const char *path, const pref_opts_t *o, lt_err_t *err) {
  memset(d, 0, sizeof *d);
  jsonl_t *r = jsonl_open(path, err);
  if (!r) return err ? err->code : LT_E_IO;
  lt_status_t st = LT_OK;
  size_t have = 0;
  json_t *row;
  while ((st = jsonl_next(r, &row, err)) == LT_OK && row) {
    const char *prompt = NULL, *chosen = NULL, *rejected = NULL;
    double strength = NAN;
    bool consistent = true;
    int got = row_label(row, o, jsonl_where(r), &prompt, &chosen, &rejected, &strength, &consistent, err);
    d->inconsistent += !consistent;
    if (got <= 0) {
      json_decref(row);
      if (got < 0) st = err->code;
      if (got < 0) break;
      continue;
    }
    int32_t *ids[2] = {NULL, NULL};
    lm_example_t e[2];
    bool cut[2] = {false, false};
    st = side(tok, prompt, chosen, o, jsonl_where(r), &ids[0], &e[0], &cut[0], err);
    if (st == LT_OK) st = side(tok, prompt, rejected, o, jsonl_where(r), &ids[1], &e[1], &cut[1], err);
    json_decref(row);
    if (st == LT_OK && e[0].n == e[1].n && !memcmp(e[0].ids, e[1].ids, e[0].n * sizeof *e[0].ids) && !cut[0])
      st = lt_fail(err, LT_E_INVALID, "%s: \"chosen\" and \"rejected\" are the same tokens: the pair prefers nothing",
                   jsonl_where(r));
    if (st != LT_OK) {
      free(ids[0]), free(ids[1]);
      break;
    }
    d->cut += cut[0] + cut[1];
    if (!scorable(&e[0]) || !scorable(&e[1])) {
      d->skipped++;
      free(ids[0]), free(ids[1]);
      continue;
    }
    if (d->n == have) {
      have = have ? 2 * have : 256;
      pref_pair_t *p = realloc(d->p, have * sizeof *p);
      int32_t **pi = p ? realloc(d->ids, 2 * have * sizeof *pi) : NULL;
      if (p) d->p = p;
      if (pi) d->ids = pi;
      if (!p || !pi || d->n == UINT32_MAX / 2) {
        free(ids[0]), free(ids[1]);
        st = lt_fail(err, LT_E_NOMEM, "out of memory reading %s", path);
        break;
      }
    }
    d->ids[2 * (uint64_t)d->n] = ids[0], d->ids[2 * (uint64_t)d->n + 1] = ids[1];
    d->p[d->n++] = (pref_pair_t){.chosen = e[0], .rejected = e[1], .strength = strength, .consistent = consistent};
  }
  jsonl_destroy(&r);
  if (st == LT_OK && d->n == 0)
    st = lt_fail(err, LT_E_INVALID,
                 "%s: no preference pair to train on (%llu rows marked inconsistent%s, %llu with nothing to score "
                 "within the context)",
                 path, (unsigned long long)d->inconsistent, o->include_inconsistent ? "" : " and skipped",
                 (unsigned long long)d->skipped);
  if (st != LT_OK) pref_free(d);
  return st;
}
