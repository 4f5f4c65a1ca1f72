/* Integration test fixture: each test gets its own folder, socket and a real lathed started from the build
 * folder, driven with the real client library. */
#ifndef LATHE_TD_H
#define LATHE_TD_H

#include <criterion/criterion.h>
#include <stdbool.h>
#include <sys/types.h>

#include "client/lc.h"
#include "jobs/kind.h"

typedef struct td {
  char dir[64];         /* the test's own folder under /tmp */
  char sock[128];       /* its socket */
  char home[128];       /* its store */
  char log[128];        /* the daemon's stderr */
  pid_t pid;            /* the running lathed, 0 when none */
  const char *args[16]; /* extra lathed arguments, NULL-terminated */
} td_t;

/* Makes the test's folder (idempotent) and fills in the paths. */
void td_prepare(td_t *t);
/* Makes the folder and starts lathed with extra arguments (NULL-terminated list, may be NULL); asserts it serves. */
void td_start(td_t *t, const char *const *extra);
/* Starts lathed again on the same folder with the same arguments. */
void td_restart(td_t *t);
/* Starts lathed and returns its exit status (for daemons expected to refuse to start). */
int td_start_expect_exit(td_t *t, const char *const *extra, int timeout_ms);
/* kill -9 of the daemon, reaped. */
void td_kill9(td_t *t);
/* SIGTERM and wait (asserts a clean exit within timeout_ms). */
void td_term(td_t *t, int timeout_ms);
/* Stops the daemon if running and removes the folder. */
void td_cleanup(td_t *t);

/* Prepares t for tests that drive the `lathe` CLI: the folder, and LATHE_SOCKET / LATHE_HOME pointing into it
 * (autostart on, the shared shader cache when LATHE_TEST_CACHE_DIR is set). */
void td_cli_setup(td_t *t);
/* Stops the daemon the CLI started (if any) and removes t's folder. */
void td_cli_teardown(td_t *t);
/* Runs a shell command line, capturing its stdout into out (NUL-terminated); returns its exit status, -1 when it
 * did not exit normally. */
int td_shell(char *out, size_t n, const char *cmdline);

/* Writes t->dir/NAME.jsonl into path (n bytes) with `rows` training rows built from eight KJV words (salt shifts
 * them): two {"text"} rows, then one {"prompt", "completion"} row, in turn. Asserts. */
void td_write_rows(const td_t *t, char *path, size_t n, const char *name, int rows, int salt);

/* Submits a job of kind with its params: kv string pairs ("true" / "false" travel as booleans), ik / iv integer
 * and fk / fv float ones, each key list NULL-ended (ik and fk may be NULL). With pe_out the refusal is left there
 * for the caller; without, a refusal fails the test. Returns the job id (<= 0 when refused). */
int64_t td_submit(lc_t *c, const char *kind, const char *const *kv, const char *const *ik, const int64_t *iv,
                  const char *const *fk, const double *fv, proto_err_t *pe_out);

/* Whether two files hold the same bytes (asserts both open). */
bool td_same_file(const char *a, const char *b);

/* A new client of t's daemon (asserts). Caller owns. */
lc_t *td_client(const td_t *t);

/* Submits a sleep job with the given steps and delay plus extra key/int64_t pairs, NULL-terminated
 * (ignore_cancel is sent as a bool). Asserts. */
int64_t td_sleep(lc_t *c, int64_t steps, int64_t delay_ms, ...);

/* The job's state name into buf (asserts the job exists). */
const char *td_state(lc_t *c, int64_t id, char *buf, size_t n);
/* Waits until the job is in state `want`; asserts within timeout_ms. */
void td_wait_state(lc_t *c, int64_t id, const char *want, int timeout_ms);
/* The job's show reply (asserts). Caller owns. */
mp_doc_t *td_show(lc_t *c, int64_t id);
/* The status reply (asserts). Caller owns. */
mp_doc_t *td_status(lc_t *c);
/* An integer field of a map, or -1. */
int64_t td_int(const msgpack_object *m, const char *key);
/* Whether a string field of a map contains needle. */
bool td_has(const msgpack_object *m, const char *key, const char *needle);
/* The worker's pid from the status (0 if none). */
pid_t td_worker_pid(lc_t *c);
/* What td_follow() saw: every event's seq and type, and the states in order. */
typedef struct evlog {
  int n, n_states;
  int64_t seq[8192];
  char type[8192][12];
  char state[64][16];
  char reason[64][256];
  int64_t last_step;
} evlog_t;

/* Follows job id from seq `after` to its final state, recording into log (zeroed first). Asserts. */
void td_follow(lc_t *c, int64_t id, int64_t after, evlog_t *log);
/* Asserts log holds seqs after+1, after+2, ... without gaps or repeats. */
void td_assert_in_order(const evlog_t *log, int64_t after);

/* Sleeps ms milliseconds. */
void td_sleep_ms(int ms);

#endif
