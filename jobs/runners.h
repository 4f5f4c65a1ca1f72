/* The runner of each kind, for the worker: the same rows as jobs/kinds.def. */
#ifndef LATHE_RUNNERS_H
#define LATHE_RUNNERS_H

#include "jobs/job.h"
#include "jobs/kind.h"

/* The runner of kind k; never NULL for a kind in the table. */
kind_run_fn runner_for(const kind_t *k);

#define P(...)
#define KIND(name, policy, validate, summary, params) job_outcome_t run_##name(job_ctx_t *ctx, lt_err_t *err);
#include "jobs/kinds.def"
#undef KIND
#undef P

#endif
