/* The durable job store: one SQLite database in WAL mode (schema in docs/store.md) plus one artifact folder per
 * job. Writes happen inside store_begin()/store_commit() (BEGIN IMMEDIATE); a commit that carries a state change
 * is made with synchronous=FULL, one that carries only progress with synchronous=NORMAL (see store_begin()). Owned by the reactor
 * thread. Functions returning int give 1 (found), 0 (not found) or a negative lt_status_t. */
#ifndef LATHE_STORE_H
#define LATHE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define STORE_VERSION 1

typedef enum job_state { JS_QUEUED, JS_HELD, JS_RUNNING, JS_SUCCEEDED, JS_FAILED, JS_CANCELLED, JS_COUNT } job_state_t;

/* "queued", "held", ...; static string. */
const char *job_state_str(job_state_t s);
/* Parses a state name; false if unknown. */
bool job_state_parse(const char *s, job_state_t *out);
/* succeeded, failed and cancelled are final. */
bool job_state_final(job_state_t s);

/* The persisted fields of one job. params/result are msgpack bytes owned by the struct (store_job_clear()). */
typedef struct store_job {
  int64_t id;
  char kind[32];
  job_state_t state;
  char reason[512];
  int64_t priority;
  char owner[64]; /* "uid:1000" for ipc clients, "key:NAME" for CURVE clients */
  char sid[129];  /* client submission id; "" when none */
  int64_t attempts;
  int64_t created_ms, started_ms, finished_ms, updated_ms; /* 0 when not yet */
  int64_t last_seq;
  bool cancel_requested;
  int64_t position; /* queue position (1 = next) for queued jobs from store_list/store_job_get, else 0 */
  void *params;
  size_t params_n;
  void *result;
  size_t result_n;
} store_job_t;

typedef struct store store_t;

/* Opens (creating if needed) the store in folder home: home/jobs.db and home/jobs/<id>/. Refuses a database
 * whose schema version is newer than STORE_VERSION; migrates older ones. Caller owns; store_destroy(). */
store_t *store_open(const char *home, lt_err_t *err);

/* Closes the database and sets *s to NULL; NULL-safe. An open transaction is rolled back. */
void store_destroy(store_t **s);

/* Starts a write transaction (BEGIN IMMEDIATE) unless one is open. A durable one (state changes) commits with
 * synchronous=FULL, a light one (progress, logs) with NORMAL; SQLite fixes the level before BEGIN, so asking for
 * a durable transaction while a light one is open commits the light one first. */
lt_status_t store_begin(store_t *s, bool durable, lt_err_t *err);

/* Commits the open transaction if any (true durability when marked). */
lt_status_t store_commit(store_t *s, lt_err_t *err);

/* Rolls the open transaction back if any. */
void store_rollback(store_t *s);

/* Writes the database header (the schema version, unchanged) inside the open transaction: a commit after it shows
 * that the store can be written again. */
lt_status_t store_probe(store_t *s, lt_err_t *err);

/* Opens a savepoint inside the transaction (one per request, so a failed request undoes only itself). */
lt_status_t store_savepoint(store_t *s, lt_err_t *err);

/* Releases the savepoint, first rolling back to it when undo is true. */
void store_release(store_t *s, bool undo);

/* Inserts a job (id, last_seq and position ignored); writes the new id to *id. */
lt_status_t store_job_insert(store_t *s, const store_job_t *j, int64_t *id, lt_err_t *err);

/* Writes the mutable fields (state, reason, priority, attempts, times, cancel_requested, result). */
lt_status_t store_job_update(store_t *s, const store_job_t *j, lt_err_t *err);

/* Reads job id into *out (which must be cleared later with store_job_clear()). */
int store_job_get(store_t *s, int64_t id, store_job_t *out, lt_err_t *err);

/* Finds the job an owner submitted with submission id sid. */
int store_job_by_sid(store_t *s, const char *owner, const char *sid, store_job_t *out, lt_err_t *err);

/* Frees the blobs of a job read from the store and zeroes it. */
void store_job_clear(store_job_t *j);

/* Deletes a job and its events (not its folder: see store_job_dir()). */
lt_status_t store_job_delete(store_t *s, int64_t id, lt_err_t *err);

/* Calls fn for every job (all) or every queued, held or running job with an id above after, in id order, with
 * positions filled; stops early after limit jobs (0: no limit). The job passed is owned by the store for the call's
 * duration. */
lt_status_t store_list(store_t *s, bool all, int64_t after, int64_t limit, void (*fn)(void *user, const store_job_t *j),
                       void *user, lt_err_t *err);

/* Calls fn for every job in state st (id order). */
lt_status_t store_each_in_state(store_t *s, job_state_t st, void (*fn)(void *user, const store_job_t *j), void *user,
                                lt_err_t *err);

/* The ids of up to max finished jobs (succeeded, failed, cancelled) that finished before cutoff_ms, oldest id
 * first, of one owner (NULL: any), into ids: returns how many (>= 0) or a negative status. */
int store_finished_before(store_t *s, int64_t cutoff_ms, const char *owner, int64_t *ids, int max, lt_err_t *err);

/* Calls fn for the queued jobs in the order they are to run (priority, then age) until it returns true: 1 with *id
 * set to that job, 0 when it never did, or a negative status. The job passed is owned by the store for the call. */
int store_queue_find(store_t *s, bool (*fn)(void *user, const store_job_t *j), void *user, int64_t *id, lt_err_t *err);

/* Counts jobs by state into counts[JS_COUNT]. */
lt_status_t store_count(store_t *s, int64_t counts[JS_COUNT], lt_err_t *err);

/* Appends an event to job id; *seq receives its per-job sequence number (1, 2, ...). data is a msgpack map. */
lt_status_t store_event_append(store_t *s, int64_t id, int64_t time_ms, const char *type, const void *data, size_t n,
                               int64_t *seq, lt_err_t *err);

/* One stored event, passed to store_events_after()'s callback; owned by the store for the call. */
typedef struct store_event {
  int64_t job, seq, time_ms;
  const char *type;
  const void *data;
  size_t n;
} store_event_t;

/* Calls fn for the events of job id with seq > after, in order, at most limit of them; returns how many were
 * passed (>= 0) or a negative status. */
int store_events_after(store_t *s, int64_t id, int64_t after, int64_t limit,
                       void (*fn)(void *user, const store_event_t *ev), void *user, lt_err_t *err);

/* Writes the artifact folder of job id (home/jobs/<id>) into buf. */
void store_job_dir(const store_t *s, int64_t id, char *buf, size_t n);

#endif
