#include "daemon/store.h"

#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <dirent.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static const char *const state_names[JS_COUNT] = {"queued", "held", "running", "succeeded", "failed", "cancelled"};

const char *job_state_str(job_state_t s) { return (unsigned)s < JS_COUNT ? state_names[s] : "unknown"; }

bool job_state_parse(const char *s, job_state_t *out) {
  if (!s) return false;
  for (int i = 0; i < JS_COUNT; i++)
    if (strcmp(s, state_names[i]) == 0) return *out = (job_state_t)i, true;
  return false;
}

bool job_state_final(job_state_t s) { return s == JS_SUCCEEDED || s == JS_FAILED || s == JS_CANCELLED; }

/* Version 1 of the schema (docs/store.md). A later version adds a migration step below, never edits this. */
static const char schema_v1[] =
    "CREATE TABLE jobs ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " kind TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('queued','held','running','succeeded','failed','cancelled')),"
    " reason TEXT NOT NULL DEFAULT '',"
    " priority INTEGER NOT NULL DEFAULT 0,"
    " owner TEXT NOT NULL,"
    " sid TEXT,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL,"
    " started_ms INTEGER,"
    " finished_ms INTEGER,"
    " updated_ms INTEGER NOT NULL,"
    " last_seq INTEGER NOT NULL DEFAULT 0,"
    " cancel_requested INTEGER NOT NULL DEFAULT 0,"
    " params BLOB NOT NULL,"
    " result BLOB);"
    "CREATE UNIQUE INDEX jobs_sid ON jobs(owner, sid) WHERE sid IS NOT NULL;"
    "CREATE INDEX jobs_queue ON jobs(state, priority DESC, id);"
    "CREATE TABLE events ("
    " job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    " seq INTEGER NOT NULL,"
    " time_ms INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " data BLOB NOT NULL,"
    " PRIMARY KEY (job_id, seq)) WITHOUT ROWID;";

/* migrations[v] brings a version-v database to version v+1; index 0 creates the schema. */
static const char *const migrations[STORE_VERSION] = {schema_v1};

enum {
  Q_INSERT,
  Q_UPDATE,
  Q_GET,
  Q_BY_SID,
  Q_DELETE,
  Q_LIST,
  Q_IN_STATE,
  Q_COUNT,
  Q_SEQ,
  Q_EVENT,
  Q_EVENTS,
  Q_POSITION,
  Q_FINISHED,
  Q_QUEUE,
  Q_N
};

static const char *const sql[Q_N] = {
    [Q_INSERT] = "INSERT INTO jobs (kind, state, reason, priority, owner, sid, attempts, created_ms, updated_ms,"
                 " params) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7, ?8)",
    [Q_UPDATE] = "UPDATE jobs SET state = ?2, reason = ?3, priority = ?4, attempts = ?5, started_ms = ?6,"
                 " finished_ms = ?7, updated_ms = ?8, cancel_requested = ?9, result = ?10 WHERE id = ?1",
#define JOB_COLS                                                                                                       \
  "id, kind, state, reason, priority, owner, sid, attempts, created_ms, started_ms, finished_ms, updated_ms,"          \
  " last_seq, cancel_requested, params, result"
    [Q_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?1",
    [Q_BY_SID] = "SELECT " JOB_COLS " FROM jobs WHERE owner = ?1 AND sid = ?2",
    [Q_DELETE] = "DELETE FROM jobs WHERE id = ?1",
    /* Positions are numbered over every queued job before the page (id > ?3) is cut. */
    [Q_LIST] = "SELECT * FROM (SELECT " JOB_COLS ", CASE WHEN state = 'queued' THEN"
               " ROW_NUMBER() OVER (PARTITION BY state ORDER BY priority DESC, id) END AS position"
               " FROM jobs WHERE ?1 OR state IN ('queued', 'held', 'running')) WHERE id > ?3 ORDER BY id LIMIT ?2",
    [Q_IN_STATE] = "SELECT " JOB_COLS " FROM jobs WHERE state = ?1 ORDER BY id",
    [Q_COUNT] = "SELECT state, count(*) FROM jobs GROUP BY state",
    [Q_SEQ] = "UPDATE jobs SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
    [Q_EVENT] = "INSERT INTO events (job_id, seq, time_ms, type, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    [Q_EVENTS] = "SELECT seq, time_ms, type, data FROM events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    [Q_POSITION] =
        "SELECT count(*) FROM jobs WHERE state = 'queued' AND (priority > ?2 OR (priority = ?2 AND id <= ?1))",
    [Q_QUEUE] = "SELECT " JOB_COLS " FROM jobs WHERE state = 'queued' ORDER BY priority DESC, id",
    [Q_FINISHED] = "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_ms < ?1"
                   " AND (?2 IS NULL OR owner = ?2) ORDER BY id LIMIT ?3",
};

struct store {
  sqlite3 *db;
  sqlite3_stmt *q[Q_N];
  bool in_txn, sync_full; /* sync_full: the synchronous level in force (FULL or NORMAL) */
  char home[PATH_MAX];
};

static lt_status_t db_fail(store_t *s, lt_err_t *err, const char *what) {
  return lt_fail(err, LT_E_IO, "store: %s: %s", what, sqlite3_errmsg(s->db));
}

static lt_status_t exec(store_t *s, const char *q, lt_err_t *err) {
  char *msg = NULL;
  if (sqlite3_exec(s->db, q, NULL, NULL, &msg) != SQLITE_OK) {
    lt_fail(err, LT_E_IO, "store: %s", msg ? msg : sqlite3_errmsg(s->db));
    sqlite3_free(msg);
    return LT_E_IO;
  }
  return LT_OK;
}

static int user_version(store_t *s) {
  sqlite3_stmt *st;
  int v = -1;
  if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  return v;
}

/* A text column, "" when it is NULL (a damaged or hand-edited store must not crash the daemon). */
static const char *col_text(sqlite3_stmt *st, int i) {
  const unsigned char *t = sqlite3_column_text(st, i);
  return t ? (const char *)t : "";
}

/* A store that is missing or empty next to job folders (deleted, truncated, or a fresh file in an old home) would
 * hand out their ids again and write into their folders: refused, naming the way out. */
static bool store_matches_folders(const char *home, const char *db, lt_err_t *err) {
  struct stat st;
  if (stat(db, &st) == 0 && st.st_size > 0) return true;
  char jobs[PATH_MAX + 8];
  snprintf(jobs, sizeof jobs, "%s/jobs", home);
  DIR *d = opendir(jobs);
  if (!d) return true;
  long n = 0;
  for (struct dirent *de; (de = readdir(d));) n += de->d_name[0] >= '0' && de->d_name[0] <= '9';
  closedir(d);
  if (!n) return true;
  lt_fail(err, LT_E_CORRUPT,
          "store %s is %s but %s holds %ld job folders: starting would reuse their ids and folders. Restore the store, "
          "or move the folders aside (mv %s %s.old) to start afresh",
          db, stat(db, &st) == 0 ? "empty" : "missing", jobs, n, jobs, jobs);
  return false;
}

/* PRAGMA quick_check, and the tables and columns this lathed reads. */
static bool store_healthy(store_t *s, const char *path, lt_err_t *err) {
  sqlite3_stmt *st = NULL;
  char verdict[256] = "";
  if (sqlite3_prepare_v2(s->db, "PRAGMA quick_check", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    util_copy(verdict, col_text(st, 0), sizeof verdict);
  else
    util_copy(verdict, sqlite3_errmsg(s->db), sizeof verdict);
  sqlite3_finalize(st);
  if (strcmp(verdict, "ok") != 0) {
    lt_fail(err, LT_E_CORRUPT,
            "store %s is damaged (%s). Keep a copy, then recover it with `sqlite3 %s .dump | sqlite3 fixed.db && "
            "sqlite3 fixed.db 'PRAGMA user_version = %d'` and put fixed.db in its place (docs/store.md)",
            path, verdict, path, STORE_VERSION);
    return false;
  }
  static const char *const need[] = {
      "jobs.id",          "jobs.kind",       "jobs.state",    "jobs.reason",           "jobs.priority",
      "jobs.owner",       "jobs.sid",        "jobs.attempts", "jobs.created_ms",       "jobs.started_ms",
      "jobs.finished_ms", "jobs.updated_ms", "jobs.last_seq", "jobs.cancel_requested", "jobs.params",
      "jobs.result",      "events.job_id",   "events.seq",    "events.type",           "events.data"};
  for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
    char table[16], q[128];
    const char *dot = strchr(need[i], '.');
    snprintf(table, sizeof table, "%.*s", (int)(dot - need[i]), need[i]);
    snprintf(q, sizeof q, "SELECT 1 FROM pragma_table_info('%s') WHERE name = '%s'", table, dot + 1);
    bool found = sqlite3_prepare_v2(s->db, q, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (!found) {
      lt_fail(err, LT_E_CORRUPT, "store %s lacks the column %s that this lathed reads (docs/store.md)", path, need[i]);
      return false;
    }
  }
  return true;
}

store_t *store_open(const char *home, lt_err_t *err) {
  store_t *s = calloc(1, sizeof *s);
  if (!s) return lt_fail(err, LT_E_NOMEM, "out of memory"), NULL;
  char path[PATH_MAX + 16];
  util_copy(s->home, home, sizeof s->home);
  snprintf(path, sizeof path, "%s/jobs", home);
  if (util_mkdir_p(path, 0700, err)) goto fail;
  snprintf(path, sizeof path, "%s/jobs.db", home);
  if (!store_matches_folders(home, path, err)) goto fail;
  if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
      SQLITE_OK) {
    db_fail(s, err, path);
    goto fail;
  }
  sqlite3_busy_timeout(s->db, 5000);
  if (exec(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;", err)) goto fail;
  s->sync_full = true;
  int v = user_version(s);
  if (v < 0) {
    db_fail(s, err, "reading the schema version");
    goto fail;
  }
  if (v > STORE_VERSION) {
    lt_fail(err, LT_E_CORRUPT,
            "store %s has schema version %d; this lathed knows up to %d (use a newer lathed, see docs/store.md)", path,
            v, STORE_VERSION);
    goto fail;
  }
  for (; v < STORE_VERSION; v++) {
    char bump[64];
    snprintf(bump, sizeof bump, "PRAGMA user_version = %d;", v + 1);
    if (exec(s, "BEGIN IMMEDIATE", err)) goto fail;
    if (exec(s, migrations[v], err) || exec(s, bump, err) || exec(s, "COMMIT", err)) {
      exec(s, "ROLLBACK", NULL);
      goto fail;
    }
  }
  if (!store_healthy(s, path, err)) goto fail;
  for (int i = 0; i < Q_N; i++)
    if (sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->q[i], NULL) != SQLITE_OK) {
      db_fail(s, err, sql[i]);
      goto fail;
    }
  return s;
fail:
  store_destroy(&s);
  return NULL;
}

void store_destroy(store_t **sp) {
  if (!sp || !*sp) return;
  store_t *s = *sp;
  if (s->in_txn) store_rollback(s);
  for (int i = 0; i < Q_N; i++) sqlite3_finalize(s->q[i]);
  sqlite3_close(s->db);
  free(s);
  *sp = NULL;
}

lt_status_t store_begin(store_t *s, bool durable, lt_err_t *err) {
  if (s->in_txn && (s->sync_full || !durable)) return LT_OK;
  if (s->in_txn) {
    lt_status_t st = store_commit(s, err);
    if (st) return st;
  }
  if (durable != s->sync_full) {
    if (exec(s, durable ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", err)) return LT_E_IO;
    s->sync_full = durable;
  }
  lt_status_t st = exec(s, "BEGIN IMMEDIATE", err);
  if (!st) s->in_txn = true;
  return st;
}

lt_status_t store_commit(store_t *s, lt_err_t *err) {
  if (!s->in_txn) return LT_OK;
  /* An I/O error (disk full) inside the transaction can make SQLite roll it back on its own: what followed ran
   * outside it, so the turn is failed as a whole rather than committed in part. */
  if (sqlite3_get_autocommit(s->db)) {
    s->in_txn = false;
    return lt_fail(err, LT_E_IO, "store: the transaction was rolled back by an earlier write error");
  }
  lt_status_t st = exec(s, "COMMIT", err);
  if (st) store_rollback(s);
  s->in_txn = false;
  return st;
}

void store_rollback(store_t *s) {
  if (s->in_txn) exec(s, "ROLLBACK", NULL);
  s->in_txn = false;
}

lt_status_t store_probe(store_t *s, lt_err_t *err) {
  char q[64];
  snprintf(q, sizeof q, "PRAGMA user_version = %d", STORE_VERSION);
  return exec(s, q, err);
}

lt_status_t store_savepoint(store_t *s, lt_err_t *err) { return exec(s, "SAVEPOINT req", err); }

void store_release(store_t *s, bool undo) {
  if (undo) exec(s, "ROLLBACK TO req", NULL);
  exec(s, "RELEASE req", NULL);
}

/* Resets a statement for reuse; every statement goes through run() or a row loop then this. */
static sqlite3_stmt *stmt(store_t *s, int q) {
  sqlite3_reset(s->q[q]);
  sqlite3_clear_bindings(s->q[q]);
  return s->q[q];
}

static void bind_opt_ms(sqlite3_stmt *st, int i, int64_t ms) {
  if (ms)
    sqlite3_bind_int64(st, i, ms);
  else
    sqlite3_bind_null(st, i);
}

lt_status_t store_job_insert(store_t *s, const store_job_t *j, int64_t *id, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_INSERT);
  sqlite3_bind_text(st, 1, j->kind, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, job_state_str(j->state), -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, j->reason, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, j->priority);
  sqlite3_bind_text(st, 5, j->owner, -1, SQLITE_STATIC);
  if (j->sid[0]) sqlite3_bind_text(st, 6, j->sid, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 7, j->created_ms);
  sqlite3_bind_blob(st, 8, j->params, (int)j->params_n, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE) return db_fail(s, err, "inserting a job");
  *id = sqlite3_last_insert_rowid(s->db);
  return LT_OK;
}

lt_status_t store_job_update(store_t *s, const store_job_t *j, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_UPDATE);
  sqlite3_bind_int64(st, 1, j->id);
  sqlite3_bind_text(st, 2, job_state_str(j->state), -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, j->reason, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 4, j->priority);
  sqlite3_bind_int64(st, 5, j->attempts);
  bind_opt_ms(st, 6, j->started_ms);
  bind_opt_ms(st, 7, j->finished_ms);
  sqlite3_bind_int64(st, 8, j->updated_ms);
  sqlite3_bind_int(st, 9, j->cancel_requested);
  if (j->result) sqlite3_bind_blob(st, 10, j->result, (int)j->result_n, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE) return db_fail(s, err, "updating a job");
  return LT_OK;
}

static void *blob_dup(sqlite3_stmt *st, int col, size_t *n) {
  const void *p = sqlite3_column_blob(st, col);
  *n = (size_t)sqlite3_column_bytes(st, col);
  if (!p) return NULL;
  void *c = malloc(*n ? *n : 1);
  if (c) memcpy(c, p, *n);
  return c;
}

/* Reads a JOB_COLS row; with copy_blobs false the blobs point into the statement (valid until it steps). */
static void read_row(sqlite3_stmt *st, store_job_t *j, bool copy_blobs) {
  memset(j, 0, sizeof *j);
  j->id = sqlite3_column_int64(st, 0);
  util_copy(j->kind, col_text(st, 1), sizeof j->kind);
  /* A state that is not one of ours reads as failed: such a job is never run. */
  if (!job_state_parse(col_text(st, 2), &j->state)) j->state = JS_FAILED;
  util_copy(j->reason, col_text(st, 3), sizeof j->reason);
  j->priority = sqlite3_column_int64(st, 4);
  util_copy(j->owner, col_text(st, 5), sizeof j->owner);
  util_copy(j->sid, col_text(st, 6), sizeof j->sid);
  j->attempts = sqlite3_column_int64(st, 7);
  j->created_ms = sqlite3_column_int64(st, 8);
  j->started_ms = sqlite3_column_int64(st, 9);
  j->finished_ms = sqlite3_column_int64(st, 10);
  j->updated_ms = sqlite3_column_int64(st, 11);
  j->last_seq = sqlite3_column_int64(st, 12);
  j->cancel_requested = sqlite3_column_int(st, 13) != 0;
  if (copy_blobs) {
    j->params = blob_dup(st, 14, &j->params_n);
    j->result = blob_dup(st, 15, &j->result_n);
  } else {
    j->params = (void *)sqlite3_column_blob(st, 14), j->params_n = (size_t)sqlite3_column_bytes(st, 14);
    j->result = (void *)sqlite3_column_blob(st, 15), j->result_n = (size_t)sqlite3_column_bytes(st, 15);
  }
}

static int position(store_t *s, const store_job_t *j) {
  if (j->state != JS_QUEUED) return 0;
  sqlite3_stmt *st = stmt(s, Q_POSITION);
  sqlite3_bind_int64(st, 1, j->id);
  sqlite3_bind_int64(st, 2, j->priority);
  return sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
}

static int get_one(store_t *s, sqlite3_stmt *st, store_job_t *out, lt_err_t *err) {
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) return 0;
  if (rc != SQLITE_ROW) return db_fail(s, err, "reading a job");
  read_row(st, out, true);
  sqlite3_reset(st);
  out->position = position(s, out);
  return 1;
}

int store_job_get(store_t *s, int64_t id, store_job_t *out, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_GET);
  sqlite3_bind_int64(st, 1, id);
  return get_one(s, st, out, err);
}

int store_job_by_sid(store_t *s, const char *owner, const char *sid, store_job_t *out, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_BY_SID);
  sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, sid, -1, SQLITE_STATIC);
  return get_one(s, st, out, err);
}

void store_job_clear(store_job_t *j) {
  free(j->params);
  free(j->result);
  memset(j, 0, sizeof *j);
}

lt_status_t store_job_delete(store_t *s, int64_t id, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_DELETE);
  sqlite3_bind_int64(st, 1, id);
  return sqlite3_step(st) == SQLITE_DONE ? LT_OK : db_fail(s, err, "deleting a job");
}

static lt_status_t each_row(store_t *s, sqlite3_stmt *st, bool with_position, void (*fn)(void *, const store_job_t *),
                            void *user, lt_err_t *err) {
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    store_job_t j;
    read_row(st, &j, false);
    if (with_position) j.position = sqlite3_column_int64(st, 16);
    fn(user, &j);
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? LT_OK : db_fail(s, err, "listing jobs");
}

lt_status_t store_list(store_t *s, bool all, int64_t after, int64_t limit, void (*fn)(void *user, const store_job_t *j),
                       void *user, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_LIST);
  sqlite3_bind_int(st, 1, all);
  sqlite3_bind_int64(st, 2, limit > 0 ? limit : -1);
  sqlite3_bind_int64(st, 3, after);
  return each_row(s, st, true, fn, user, err);
}

lt_status_t store_each_in_state(store_t *s, job_state_t state, void (*fn)(void *user, const store_job_t *j), void *user,
                                lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_IN_STATE);
  sqlite3_bind_text(st, 1, job_state_str(state), -1, SQLITE_STATIC);
  return each_row(s, st, false, fn, user, err);
}

int store_queue_find(store_t *s, bool (*fn)(void *user, const store_job_t *j), void *user, int64_t *id, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_QUEUE);
  int rc, found = 0;
  while (!found && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    store_job_t j;
    read_row(st, &j, false);
    if (fn(user, &j)) *id = j.id, found = 1;
  }
  if (!found && rc != SQLITE_DONE) found = db_fail(s, err, "reading the queue");
  sqlite3_reset(st);
  return found;
}

int store_finished_before(store_t *s, int64_t cutoff_ms, const char *owner, int64_t *ids, int max, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_FINISHED);
  sqlite3_bind_int64(st, 1, cutoff_ms);
  if (owner)
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, 2);
  sqlite3_bind_int(st, 3, max);
  int n = 0, rc = SQLITE_DONE;
  while (n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) ids[n++] = sqlite3_column_int64(st, 0);
  if (n < max && rc != SQLITE_DONE) return db_fail(s, err, "finding finished jobs");
  sqlite3_reset(st);
  return n;
}

lt_status_t store_count(store_t *s, int64_t counts[JS_COUNT], lt_err_t *err) {
  memset(counts, 0, sizeof(int64_t) * JS_COUNT);
  sqlite3_stmt *st = stmt(s, Q_COUNT);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    job_state_t js;
    if (job_state_parse((const char *)sqlite3_column_text(st, 0), &js)) counts[js] = sqlite3_column_int64(st, 1);
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? LT_OK : db_fail(s, err, "counting jobs");
}

lt_status_t store_event_append(store_t *s, int64_t id, int64_t time_ms, const char *type, const void *data, size_t n,
                               int64_t *seq, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_SEQ);
  sqlite3_bind_int64(st, 1, id);
  if (sqlite3_step(st) != SQLITE_ROW) {
    sqlite3_reset(st);
    return db_fail(s, err, "numbering an event");
  }
  *seq = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  st = stmt(s, Q_EVENT);
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, *seq);
  sqlite3_bind_int64(st, 3, time_ms);
  sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC);
  sqlite3_bind_blob(st, 5, data, (int)n, SQLITE_STATIC);
  return sqlite3_step(st) == SQLITE_DONE ? LT_OK : db_fail(s, err, "storing an event");
}

int store_events_after(store_t *s, int64_t id, int64_t after, int64_t limit,
                       void (*fn)(void *user, const store_event_t *ev), void *user, lt_err_t *err) {
  sqlite3_stmt *st = stmt(s, Q_EVENTS);
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, after);
  sqlite3_bind_int64(st, 3, limit);
  int rc, count = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    store_event_t ev = {id,
                        sqlite3_column_int64(st, 0),
                        sqlite3_column_int64(st, 1),
                        col_text(st, 2),
                        sqlite3_column_blob(st, 3),
                        (size_t)sqlite3_column_bytes(st, 3)};
    fn(user, &ev);
    count++;
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? count : db_fail(s, err, "reading events");
}

void store_job_dir(const store_t *s, int64_t id, char *buf, size_t n) {
  snprintf(buf, n, "%s/jobs/%lld", s->home, (long long)id);
}
