/* What the steering kinds share: JSONL prompt sets, and the steering configuration of a job's STEER_PARAMS
 * (jobs/kinds.def) with the prompts it wraps and pairs. */
#ifndef LATHE_STEER_COMMON_H
#define LATHE_STEER_COMMON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/text/jsonl.h"
#include "methods/steer.h"
#include "jobs/job.h"

/* A list of token sequences; own their arrays. */
typedef struct seqs {
  int32_t **ids;
  uint32_t *lens;
  size_t n;
} seqs_t;

/* Frees every sequence and the arrays, and zeroes s; NULL-safe. */
void seqs_free(seqs_t *s);

/* Reads a JSONL prompt set and tokenizes each row's "text" (or "prompt") string with flags; rows without one fail
 * with the line named. Caller owns *out (seqs_free). */
lt_status_t texts_load(const char *path, const tok_t *tok, unsigned flags, seqs_t *out, lt_err_t *err);

/* Where a job's progress stands: prompts done of total, reported as they go. */
typedef struct job_tally {
  uint64_t done, total;
} job_tally_t;

/* steer_means() over a prompt set, 16 prompts at a time with progress (counted in *t) and stop checks between;
 * mean, norm and *used as for steer_means() over the whole set. *stop is the stop request that ended it early
 * (JOB_GO: it ran to the end or failed with err). */
lt_status_t job_means(job_ctx_t *ctx, model_t *m, const seqs_t *set, uint32_t skip, const bool *want, double *mean,
                      double *norm, uint32_t *used, job_tally_t *t, job_stop_t *stop, lt_err_t *err);

/* A job's steering configuration: method and parameters, the loaded vector, the prompts the method generates
 * from (ROSE: wrapped with the positive prompt) and their twins (contrastive or reverse prompt + prompt). */
typedef struct job_steer {
  steer_cfg_t cfg;
  float *vec;
  seqs_t prompts, twins;
} job_steer_t;

/* Reads the STEER_PARAMS of ctx for model m (loading the vector file, checking the layer) and tokenizes the n
 * prompt texts with flags, wrapping and pairing them as the method needs. Caller owns s (job_steer_free). */
lt_status_t job_steer_init(job_steer_t *s, job_ctx_t *ctx, model_t *m, const tok_t *tok, const char *const *texts,
                           size_t n, unsigned flags, lt_err_t *err);

/* Frees what job_steer_init() made and zeroes s; NULL-safe. */
void job_steer_free(job_steer_t *s);

#endif
