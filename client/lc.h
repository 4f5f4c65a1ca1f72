/* The client library: one DEALER connection to lathed (ipc, or TCP with CURVE), requests matched to replies by
 * rid, pushed events queued in order, and a gap-free follow of a job's events. Used by the `lathe` CLI, the
 * integration tests and the benchmark. One lc_t belongs to one thread. */
#ifndef LATHE_LC_H
#define LATHE_LC_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/proto.h"
#include "common/status.h"

typedef struct lc lc_t;

typedef struct lc_opts {
  const char *socket;     /* ipc socket path; NULL: $LATHE_SOCKET or the XDG default */
  const char *connect;    /* TCP endpoint ("tcp://host:port"); when set, CURVE is used and socket is ignored */
  const char *server_key; /* file holding the daemon's public key (TCP) */
  const char *client_key; /* file holding this client's secret key (TCP); its public key in the same name + .pub
                              or, for a file ending in .key, the same stem + .pub */
  int timeout_ms;         /* how long a request waits for its reply (0: 10000) */
} lc_opts_t;

/* Opens a connection (it completes in the background). Returns NULL with err on a bad option or key file.
 * Caller owns; lc_destroy(). */
lc_t *lc_new(const lc_opts_t *o, lt_err_t *err);

/* Closes the connection and sets *c to NULL; NULL-safe. */
void lc_destroy(lc_t **c);

/* Starts a request in w: a map holding v, rid and op; add fields with mpw_k*(), then lc_call(). */
void lc_begin(lc_t *c, mpw_t *w, const char *op);

/* Closes and sends the request in w (freeing it) and waits for its reply. Returns the reply (caller owns;
 * mp_doc_destroy()) when it says ok. Otherwise NULL: a daemon error fills pe (code, field, msg) and err; a
 * timeout gives LT_E_IO; a refused handshake gives pe->code P_DENIED. */
mp_doc_t *lc_call(lc_t *c, mpw_t *w, proto_err_t *pe, lt_err_t *err);

/* Shorthand for requests whose only field is the job id (show, cancel, hold, release, remove, result...). */
mp_doc_t *lc_call_id(lc_t *c, const char *op, int64_t id, proto_err_t *pe, lt_err_t *err);

/* Submits a job. params: a msgpack map (bytes) or NULL; sid: submission id or NULL. Returns the job id (> 0) or
 * 0 with pe/err filled. *existing (may be NULL) tells whether the sid named an earlier job. */
int64_t lc_submit(lc_t *c, const char *kind, const void *params, size_t params_n, const char *sid, int64_t priority,
                  bool hold, bool *existing, proto_err_t *pe, lt_err_t *err);

/* Sends raw bytes as one frame (tests: hostile input). */
lt_status_t lc_send_raw(lc_t *c, const void *buf, size_t n, lt_err_t *err);

/* Sends n frames as one multipart message (tests). */
lt_status_t lc_send_frames(lc_t *c, const void *const *bufs, const size_t *ns, int n, lt_err_t *err);

/* Receives the next message that is not an event (a reply, possibly to raw bytes), waiting up to timeout_ms.
 * Returns the decoded message (caller owns) or NULL on timeout or refusal (err says which). */
mp_doc_t *lc_recv_reply(lc_t *c, int timeout_ms, lt_err_t *err);

/* Called by lc_follow for each event object {job, seq, time, type, data}, in seq order, each exactly once.
 * Return false to stop following (a detach). */
typedef bool (*lc_event_fn)(void *user, const msgpack_object *ev);

/* Follows job id's events after seq `after` until the job's final state event has been delivered (returns
 * LT_OK), fn returns false or *stop becomes non-zero (LT_OK, *detached set if non-NULL), or the daemon stops
 * answering (LT_E_IO). Re-asks the daemon for missed events whenever idle for a second or a gap shows. */
lt_status_t lc_follow(lc_t *c, int64_t id, int64_t after, lc_event_fn fn, void *user, volatile sig_atomic_t *stop,
                      bool *detached, proto_err_t *pe, lt_err_t *err);

/* The pid of the lathed holding socket's lock (socket NULL: the default), or 0 if none runs. */
long lc_daemon_pid(const char *socket);

#endif
