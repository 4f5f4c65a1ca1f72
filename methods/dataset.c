/* Tokenised JSONL data sets for the tuning jobs (methods/dataset.h). */
#include "methods/dataset.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/jsonl.h"

void dataset_free(dataset_t *d) {
  for (uint32_t i = 0; d->ids && i < d->n; i++) free(d->ids[i]);
  free(d->ids);
  free(d->ex);
  memset(d, 0, sizeof *d);
}

lt_status_t dataset_read(dataset_t *d, const tok_t *tok, const char *path, unsigned flags, uint32_t context,
                         lt_err_t *err) {
  memset(d, 0, sizeof *d);
  jsonl_t *r = jsonl_open(path, err);
  if (!r) return err ? err->code : LT_E_IO;
  lt_status_t st = LT_OK;
  size_t have = 0;
  json_t *row;
  while ((st = jsonl_next(r, &row, err)) == LT_OK && row) {
    int32_t *ids = NULL;
    size_t n = 0, scored = 0;
    st = jsonl_row_tokens(tok, row, flags, &ids, &n, &scored, jsonl_where(r), err);
    json_decref(row);
    if (st != LT_OK) {
      free(ids);
      break;
    }
    /* The token before the first scored one predicts it: the loss starts at that position. */
    uint32_t first = scored ? (uint32_t)scored - 1 : 0;
    if (n > context) {
      n = context;
      d->cut++;
    }
    if (n < 2 || first + 1 >= n) {
      d->skipped++;
      free(ids);
      continue;
    }
    if (d->n == have) {
      have = have ? 2 * have : 256;
      lm_example_t *ex = realloc(d->ex, have * sizeof *ex);
      int32_t **pi = ex ? realloc(d->ids, have * sizeof *pi) : NULL;
      if (ex) d->ex = ex;
      if (pi) d->ids = pi;
      if (!ex || !pi || d->n == UINT32_MAX) {
        free(ids);
        st = lt_fail(err, LT_E_NOMEM, "out of memory reading %s", path);
        break;
      }
    }
    d->ids[d->n] = ids;
    d->ex[d->n++] = (lm_example_t){.ids = ids, .n = (uint32_t)n, .first = first};
  }
  jsonl_destroy(&r);
  if (st == LT_OK && d->n == 0) st = lt_fail(err, LT_E_INVALID, "%s: no row with tokens to score", path);
  if (st != LT_OK) dataset_free(d);
  return st;
}
