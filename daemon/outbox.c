/* The daemon's outbox and log: messages produced during a loop turn wait here for the turn's store commit, then go
 * out (or, when the commit failed, become error replies); dlog() writes the daemon's log lines. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "daemon/lathed.h"

void dlog(const char *fmt, ...) {
  char ts[32];
  time_t t = time(NULL);
  strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", localtime(&t));
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s lathed[%d]: ", ts, (int)getpid());
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* ---- the outbox ---- */

void out_push(daemon_t *d, void *sock, const uint8_t *id, size_t id_n, char *data, size_t n, bool is_reply,
              uint64_t rid) {
  if (d->n_out == d->cap_out) {
    size_t cap = d->cap_out ? 2 * d->cap_out : 64;
    outmsg_t *o = realloc(d->out, cap * sizeof *o);
    if (!o) {
      dlog("out of memory queueing a message; dropped");
      free(data);
      return;
    }
    d->out = o, d->cap_out = cap;
  }
  outmsg_t *m = &d->out[d->n_out++];
  m->sock = sock;
  m->id_n = (uint8_t)id_n;
  memcpy(m->id, id, id_n);
  m->is_reply = is_reply;
  m->is_worker = sock == d->wsock;
  m->rid = rid;
  m->data = data;
  m->n = n;
}

void *peer_sock(daemon_t *d, const peer_t *p) { return p->sock == 0 ? d->ipc : d->tcp; }

void out_peer(daemon_t *d, const peer_t *p, mpw_t *w, bool is_reply, uint64_t rid) {
  size_t n;
  char *data = mpw_take(w, &n);
  out_push(d, peer_sock(d, p), p->id, p->id_n, data, n, is_reply, rid);
}

/* Sends everything queued this turn. A client that is gone (or whose pipe is full) loses its watches. */
void out_flush(daemon_t *d) {
  for (size_t i = 0; i < d->n_out; i++) {
    outmsg_t *m = &d->out[i];
    if (!m->sock) {
      free(m->data);
      continue;
    }
    bool sent = zmq_send(m->sock, m->id, m->id_n, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                zmq_send(m->sock, m->data, m->n, ZMQ_DONTWAIT) >= 0;
    if (!m->is_worker) {
      peer_t p = {m->sock == d->ipc ? 0 : 1, {0}, m->id_n};
      memcpy(p.id, m->id, m->id_n);
      if (!sent)
        watch_remove(d, &p, 0);
      else if (!m->is_reply)
        watch_seen(d, &p);
    }
    free(m->data);
  }
  d->n_out = 0;
}

/* After a failed commit nothing of this turn happened: replies become `internal` errors, the rest is dropped. */
void out_fail(daemon_t *d, const char *why) {
  for (size_t i = 0; i < d->n_out; i++) {
    outmsg_t *m = &d->out[i];
    free(m->data);
    m->data = NULL;
    if (m->is_reply) {
      proto_err_t e;
      proto_fail(&e, P_INTERNAL, "", "the store could not commit (%s); nothing was changed, retry", why);
      mpw_t w;
      mpw_init(&w);
      proto_write_error(&w, m->rid, &e);
      m->data = mpw_take(&w, &m->n);
    } else {
      m->sock = NULL;
    }
  }
  out_flush(d);
}
