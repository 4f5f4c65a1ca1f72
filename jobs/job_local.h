/* An in-process host for the runners (jobs/job.h): runs any job kind directly on a parameter list, without the
 * daemon or a worker, and keeps its events and result for the caller to read. Tests use it to drive runners; the
 * parameters go through the kind table exactly as the CLI and the daemon pass them (text parsed per the schema,
 * then normalised with defaults and the kind's validator). */
#ifndef LATHE_JOB_LOCAL_H
#define LATHE_JOB_LOCAL_H

#include <stddef.h>

#include "jobs/job.h"

typedef struct job_local job_local_t;

/* A host that runs jobs with artifact folder dir on device g (NULL: opened on first use and owned by the host).
 * Caller owns the result (job_local_destroy); NULL with err. */
job_local_t *job_local_new(gpu_t *g, const char *dir, lt_err_t *err);

/* Frees the host, its kept model and (if it opened it) its device, and sets *l to NULL; NULL-safe. */
void job_local_destroy(job_local_t **l);

/* Runs kind with parameters given as n (key, text) pairs, as the CLI's --key text flags (a list parameter may
 * repeat its key). A parameter the kind table refuses fails with LT_E_INVALID naming it, before anything runs.
 * Events and the result of an earlier run are dropped first. */
job_outcome_t job_local_run(job_local_t *l, const char *kind, const char *const *kv, size_t n, lt_err_t *err);

/* Number of events the last run emitted. */
size_t job_local_event_count(const job_local_t *l);
/* Event i: the map {t: "event", job, type, data}; owned by l until the next run. */
const msgpack_object *job_local_event(const job_local_t *l, size_t i);
/* The result map of the last run; owned by l until the next run. */
const msgpack_object *job_local_result(const job_local_t *l);

#endif
