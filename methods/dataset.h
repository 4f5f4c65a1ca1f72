/* Training and evaluation rows read from JSONL and tokenised once, shared by the tuning jobs (tune-zo, tune):
 * {"text"} rows are scored on every token after the first, {"prompt", "completion"} rows on the completion only
 * (engine/text/jsonl.h). */
#ifndef LATHE_DATASET_H
#define LATHE_DATASET_H

#include <stdint.h>

#include "common/status.h"
#include "engine/text/tokenizer.h"

/* One tokenised example: the positions whose next token is scored are [first, n - 1) (prompt + completion rows
 * score the completion only: first = prompt length - 1; text rows: first = 0). */
typedef struct lm_example {
  const int32_t *ids;
  uint32_t n, first;
} lm_example_t;

/* A JSONL file tokenised: examples pointing into arrays of ids. */
typedef struct dataset {
  lm_example_t *ex;
  uint32_t n;
  int32_t **ids;    /* [n], owned */
  uint64_t skipped; /* rows with nothing to score within the context */
  uint64_t cut;     /* rows longer than the context, cut to it */
} dataset_t;

/* Reads and tokenises a JSONL file into d (caller owns: dataset_free); rows are cut to `context` tokens (counted
 * in d->cut), and rows left with nothing to score are skipped (counted). LT_E_INVALID when no row is left. */
lt_status_t dataset_read(dataset_t *d, const tok_t *tok, const char *path, unsigned flags, uint32_t context,
                         lt_err_t *err);

/* Frees what dataset_read() filled and zeroes d. */
void dataset_free(dataset_t *d);

#endif
