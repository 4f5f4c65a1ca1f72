/* Preference pairs for DPO (tune --objective dpo), read from JSONL and tokenised once: {"prompt", "chosen",
 * "rejected"} rows with an optional "strength" number and "consistent" flag, as the feedback job writes them in
 * preferences.jsonl. Its feedback.jsonl reads too: a row marked "consistent": false is skipped unless inconsistent
 * rows are included, and then, when its chosen and rejected are null, its label is the annotator's likelihood lean
 * ("lean": "a" or "b" names the chosen one of "a" and "b") and its strength the lean's margin ("lean_margin").
 * Each side is tokenised like a {"prompt", "completion"} row of tune (engine/text/jsonl.h): the prompt's tokens,
 * then the completion's, scored on the completion. */
#ifndef LATHE_PREFS_H
#define LATHE_PREFS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/text/tokenizer.h"
#include "methods/dataset.h"

/* One pair: the same prompt with the chosen and the rejected completion. */
typedef struct pref_pair {
  lm_example_t chosen, rejected;
  double strength; /* the row's strength (NaN when it has none) */
  bool consistent; /* false: the row was marked inconsistent (and included) */
} pref_pair_t;

typedef struct pref_opts {
  unsigned flags;            /* tokenizer flags for the prompt (TOK_ADD_BOS) */
  uint32_t context;          /* tokens per side at most: longer sides are cut (counted) */
  bool include_inconsistent; /* train on rows marked "consistent": false too */
  bool need_strength;        /* every kept row must carry a strength (--dpo-weight strength) */
} pref_opts_t;

/* A JSONL file of pairs. */
typedef struct pref_set {
  pref_pair_t *p;
  uint32_t n;
  int32_t **ids;         /* [2n] token arrays, owned */
  uint64_t inconsistent; /* rows marked inconsistent: skipped, or with include_inconsistent kept */
  uint64_t cut;          /* sides longer than the context, cut to it */
  uint64_t skipped;      /* rows with a side left with nothing to score within the context */
} pref_set_t;

/* Reads and tokenises the pairs of path into d (caller owns: pref_free). A row missing "prompt", "chosen" or
 * "rejected", with an empty completion, with chosen equal to rejected (as text or as tokens), or with a strength
 * that is not a number, is an error naming "path:line" and the field; LT_E_INVALID too when no pair is left. */
lt_status_t pref_read(pref_set_t *d, const tok_t *tok, const char *path, const pref_opts_t *o, lt_err_t *err);

/* Frees what pref_read() filled and zeroes d. */
void pref_free(pref_set_t *d);

#endif
