/* What the model-driven data jobs (feedback, selfgen) share: the model with its chat template set up for text
 * generation, cancellation between tokens, row counting and JSONL files in the job's folder. */
#ifndef LATHE_DATAJOB_H
#define LATHE_DATAJOB_H

#include <jansson.h>
#include <stdio.h>

#include "engine/text/chat.h"
#include "methods/lm.h"
#include "jobs/job.h"

typedef struct dj_model {
  lm_t lm;           /* model and tokenizer owned by the worker; gen options to be filled by the runner */
  chat_tmpl_t *tmpl; /* owned */
} dj_model_t;

/* Loads the model named by the job's `model` parameter (kept by the worker between jobs), opens the chat
 * template its `template` parameter asks for ("model": the model's, the plain one when it has none; "plain")
 * and sets up dm->lm to encode and stop as that template needs and to stop when the job is cancelled. Logs
 * which template is used. Release with dj_model_close(). */
lt_status_t dj_model_open(job_ctx_t *ctx, dj_model_t *dm, lt_err_t *err);

/* Frees the template; the model stays with the worker. NULL-safe. */
void dj_model_close(dj_model_t *dm);

/* Counts the non-blank lines of path, stopping at max (0: no limit). */
lt_status_t dj_count_rows(const char *path, uint64_t max, uint64_t *n, lt_err_t *err);

/* Opens name in the job's folder for writing and announces it as an artifact. NULL with err. */
FILE *dj_create(job_ctx_t *ctx, const char *name, lt_err_t *err);

/* Writes o as one line of JSON (keys in insertion order) and releases it. */
lt_status_t dj_write(FILE *f, json_t *o, lt_err_t *err);

/* An instruction pool: the job's `instruction` list parameters, then the lines of its `instructions` file (plain
 * text, or JSONL {"instruction": ...} when a line starts with '{'). */
typedef struct dj_pool {
  char **v;
  size_t n, cap;
} dj_pool_t;

/* Fills p (zeroed by the caller) from the job's parameters; at most 100,000 entries. */
lt_status_t dj_pool_load(job_ctx_t *ctx, dj_pool_t *p, lt_err_t *err);

/* Frees the entries; NULL-safe. */
void dj_pool_free(dj_pool_t *p);

/* The outcome for a stop request (cancelled, or stopped for a shutdown). */
job_outcome_t dj_stopped(job_stop_t stop);

#endif
