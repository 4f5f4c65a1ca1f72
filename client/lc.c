#include "client/lc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "common/util.h"

/* Pushed events that arrived while a reply was awaited, in arrival order. */
typedef struct evq {
  mp_doc_t **v;
  size_t head, n, cap;
} evq_t;

struct lc {
  void *ctx, *sock, *mon;
  uint64_t rid;
  int timeout_ms;
  bool denied;         /* the daemon refused this client's key (ZAP) */
  char handshake[160]; /* why a handshake failed ("" when none did) */
  char socket[108];
  evq_t q;
};

static int monitor_seq;

/* Whether the daemon's socket at path can be trusted to be this user's daemon: the socket, when there, belongs to
 * us; its folder, when others may write to it, must keep their hands off our files (the sticky bit, as /tmp has),
 * and then the socket must already be there (else another user could create it first). */
static lt_status_t socket_trusted(const char *path, lt_err_t *err) {
  char dir[PATH_MAX];
  util_copy(dir, path, sizeof dir);
  char *slash = strrchr(dir, '/');
  if (slash) *(slash == dir ? slash + 1 : slash) = '\0';
  struct stat ds, ss;
  bool have = lstat(path, &ss) == 0;
  uid_t me = getuid();
  if (have && ss.st_uid != me)
    return lt_fail(err, LT_E_IO,
                   "%s belongs to uid %u, not to you (uid %u): another user's program may be listening there; "
                   "nothing was sent",
                   path, (unsigned)ss.st_uid, (unsigned)me);
  if (have && !S_ISSOCK(ss.st_mode)) return lt_fail(err, LT_E_INVALID, "%s is not a socket", path);
  if (!slash || lstat(dir, &ds) != 0) return LT_OK; /* no folder yet: the daemon makes it private */
  bool others_write = (ds.st_mode & (S_IWGRP | S_IWOTH)) != 0;
  if (others_write && !(ds.st_mode & S_ISVTX))
    return lt_fail(err, LT_E_IO,
                   "%s: other users can write to the folder %s and replace the socket; use a private folder", path,
                   dir);
  if (others_write && !have)
    return lt_fail(err, LT_E_IO,
                   "%s does not exist, in a folder other users can write to: not waiting on a socket another user "
                   "could create; start the daemon first or use a private folder",
                   path);
  return LT_OK;
}

lc_t *lc_new(const lc_opts_t *o, lt_err_t *err) {
  lc_opts_t none = {0};
  if (!o) o = &none;
  lc_t *c = calloc(1, sizeof *c);
  if (!c) return lt_fail(err, LT_E_NOMEM, "out of memory"), NULL;
  c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
  c->rid = 1;
  char ep[PATH_MAX + 16];
  if (o->connect && *o->connect) {
    snprintf(ep, sizeof ep, "%s", o->connect);
  } else {
    if (o->socket && *o->socket) {
      if (!util_copy(c->socket, o->socket, sizeof c->socket)) {
        lt_fail(err, LT_E_LIMIT, "socket path too long: %s", o->socket);
        goto fail;
      }
    } else if (util_default_socket(c->socket, sizeof c->socket, err)) {
      goto fail;
    }
    snprintf(ep, sizeof ep, "ipc://%s", c->socket);
    if (socket_trusted(c->socket, err) != LT_OK) goto fail;
  }
  c->ctx = zmq_ctx_new();
  c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
  int zero = 0;
  int64_t max = PROTO_HARD_MAX_MSG;
  zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &max, sizeof max);
  if (o->connect && *o->connect) {
    char server[41], sec[41], pub[41], pub_path[PATH_MAX];
    if (!o->server_key || !o->client_key) {
      lt_fail(err, LT_E_INVALID, "TCP needs the server's public key and this client's secret key");
      goto fail;
    }
    size_t len = strlen(o->client_key);
    if (len > 4 && strcmp(o->client_key + len - 4, ".key") == 0)
      snprintf(pub_path, sizeof pub_path, "%.*s.pub", (int)(len - 4), o->client_key);
    else
      snprintf(pub_path, sizeof pub_path, "%s.pub", o->client_key);
    if (util_read_z85_key(o->server_key, server, err) || util_read_z85_key(o->client_key, sec, err) ||
        util_read_z85_key(pub_path, pub, err))
      goto fail;
    zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, server, 40);
    zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, sec, 40);
    zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, pub, 40);
  }
  /* A monitor reports a refused handshake, which otherwise looks like a daemon that never answers. */
  char mon_ep[64];
  snprintf(mon_ep, sizeof mon_ep, "inproc://lc-monitor-%d", __atomic_fetch_add(&monitor_seq, 1, __ATOMIC_RELAXED));
  if (zmq_socket_monitor(c->sock, mon_ep,
                         ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                             ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) == 0) {
    c->mon = zmq_socket(c->ctx, ZMQ_PAIR);
    zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof zero);
    zmq_connect(c->mon, mon_ep);
  }
  if (zmq_connect(c->sock, ep) != 0) {
    lt_fail(err, LT_E_IO, "cannot connect to %s: %s", ep, zmq_strerror(errno));
    goto fail;
  }
  return c;
fail:
  lc_destroy(&c);
  return NULL;
}

void lc_destroy(lc_t **cp) {
  if (!cp || !*cp) return;
  lc_t *c = *cp;
  for (size_t i = 0; i < c->q.n; i++) mp_doc_destroy(&c->q.v[(c->q.head + i) % c->q.cap]);
  free(c->q.v);
  if (c->sock) zmq_socket_monitor(c->sock, NULL, 0);
  if (c->mon) zmq_close(c->mon);
  if (c->sock) zmq_close(c->sock);
  if (c->ctx) zmq_ctx_term(c->ctx);
  free(c);
  *cp = NULL;
}

static bool q_push(evq_t *q, mp_doc_t *d) {
  if (q->n == q->cap) {
    size_t cap = q->cap ? 2 * q->cap : 64;
    mp_doc_t **v = malloc(cap * sizeof *v);
    if (!v) return false;
    for (size_t i = 0; i < q->n; i++) v[i] = q->v[(q->head + i) % q->cap];
    free(q->v);
    q->v = v, q->cap = cap, q->head = 0;
  }
  q->v[(q->head + q->n++) % q->cap] = d;
  return true;
}

static mp_doc_t *q_pop(evq_t *q) {
  if (!q->n) return NULL;
  mp_doc_t *d = q->v[q->head];
  q->head = (q->head + 1) % q->cap;
  q->n--;
  return d;
}

/* Reads monitor events; true if a handshake failed, with c->handshake saying how: only a refusal by the daemon's
 * authentication is "denied"; a connection that broke off mid-handshake (a daemon stopping) or a protocol error (a
 * wrong server key, another program on the port) says so instead. */
static bool check_monitor(lc_t *c) {
  if (!c->mon) return false;
  zmq_msg_t m;
  zmq_msg_init(&m);
  while (zmq_msg_recv(&m, c->mon, ZMQ_DONTWAIT) >= 0) {
    if (zmq_msg_size(&m) >= 6) {
      uint16_t ev;
      uint32_t value;
      memcpy(&ev, zmq_msg_data(&m), sizeof ev);
      memcpy(&value, (const char *)zmq_msg_data(&m) + 2, sizeof value);
      if (ev & ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
        c->denied = true;
        snprintf(c->handshake, sizeof c->handshake, "the daemon refused this client (authentication failed, %u)",
                 (unsigned)value);
      } else if (ev & ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
        snprintf(c->handshake, sizeof c->handshake,
                 "the handshake with the daemon failed (protocol error %#x: is the server key the daemon's, and is it "
                 "a lathed listening there?)",
                 (unsigned)value);
      } else if (ev & ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
        snprintf(c->handshake, sizeof c->handshake,
                 "the connection closed during the handshake (the daemon may have stopped or restarted)");
      }
    }
    while (zmq_msg_more(&m) && zmq_msg_recv(&m, c->mon, ZMQ_DONTWAIT) >= 0) {}
  }
  zmq_msg_close(&m);
  return c->handshake[0] != '\0';
}

/* Receives one decoded message within timeout_ms: NULL on timeout or refusal (err says which). Undecodable
 * messages are skipped. */
static mp_doc_t *recv_any(lc_t *c, int timeout_ms, lt_err_t *err) {
  int64_t end = util_mono_ms() + timeout_ms;
  for (;;) {
    zmq_pollitem_t it[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
    int64_t left = end - util_mono_ms();
    if (left < 0) left = 0;
    int r = zmq_poll(it, c->mon ? 2 : 1, (long)left);
    if (r < 0 && errno != EINTR) {
      lt_fail(err, LT_E_IO, "zmq_poll: %s", zmq_strerror(errno));
      return NULL;
    }
    if (check_monitor(c)) {
      lt_fail(err, LT_E_IO, "%s", c->handshake);
      if (!c->denied) c->handshake[0] = '\0'; /* reported once: libzmq tries again */
      return NULL;
    }
    if (r > 0 && (it[0].revents & ZMQ_POLLIN)) {
      zmq_msg_t m;
      zmq_msg_init(&m);
      if (zmq_msg_recv(&m, c->sock, ZMQ_DONTWAIT) >= 0) {
        proto_err_t pe;
        mp_doc_t *d = mp_doc_parse(zmq_msg_data(&m), zmq_msg_size(&m), &pe);
        zmq_msg_close(&m);
        if (d) return d;
        continue;
      }
      zmq_msg_close(&m);
    }
    if (r < 0 && errno == EINTR) {
      lt_fail(err, LT_E_IO, "interrupted");
      return NULL;
    }
    if (util_mono_ms() >= end) {
      lt_fail(err, LT_E_IO, "no answer from lathed within %d ms", timeout_ms);
      return NULL;
    }
  }
}

static bool is_event(const mp_doc_t *d) { return mp_get(mp_doc_root(d), "event") != NULL; }

mp_doc_t *lc_recv_reply(lc_t *c, int timeout_ms, lt_err_t *err) {
  int64_t end = util_mono_ms() + timeout_ms;
  for (;;) {
    int64_t left = end - util_mono_ms();
    mp_doc_t *d = recv_any(c, left > 0 ? (int)left : 0, err);
    if (!d || !is_event(d)) return d;
    if (!q_push(&c->q, d)) mp_doc_destroy(&d);
  }
}

lt_status_t lc_send_raw(lc_t *c, const void *buf, size_t n, lt_err_t *err) {
  if (zmq_send(c->sock, buf, n, 0) < 0) return lt_fail(err, LT_E_IO, "send: %s", zmq_strerror(errno));
  return LT_OK;
}

lt_status_t lc_send_frames(lc_t *c, const void *const *bufs, const size_t *ns, int n, lt_err_t *err) {
  for (int i = 0; i < n; i++)
    if (zmq_send(c->sock, bufs[i], ns[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
      return lt_fail(err, LT_E_IO, "send: %s", zmq_strerror(errno));
  return LT_OK;
}

void lc_begin(lc_t *c, mpw_t *w, const char *op) {
  mpw_init(w);
  mpw_map(w);
  mpw_kint(w, "v", PROTO_VERSION);
  mpw_kint(w, "rid", (int64_t)c->rid);
  mpw_kstr(w, "op", op);
}

mp_doc_t *lc_call(lc_t *c, mpw_t *w, proto_err_t *pe, lt_err_t *err) {
  proto_err_t dummy;
  lt_err_t dummy_err;
  if (!pe) pe = &dummy;
  if (!err) err = &dummy_err;
  pe->code = P_OK;
  uint64_t rid = c->rid++;
  mpw_end(w);
  lt_status_t st = lc_send_raw(c, w->sb.data, w->sb.size, err);
  mpw_free(w);
  if (st) return NULL;
  int64_t end = util_mono_ms() + c->timeout_ms;
  for (;;) {
    int64_t left = end - util_mono_ms();
    mp_doc_t *d = lc_recv_reply(c, left > 0 ? (int)left : 0, err);
    if (!d) {
      if (c->denied) proto_fail(pe, P_DENIED, "", "%s", err->msg);
      return NULL;
    }
    const msgpack_object *m = mp_doc_root(d), *ok = mp_get(m, "ok");
    int64_t got = -1;
    const msgpack_object *r = mp_get(m, "rid");
    if (r) mp_as_int(r, &got);
    if (got != (int64_t)rid) { /* a late reply to an earlier request that timed out */
      mp_doc_destroy(&d);
      continue;
    }
    if (ok && ok->type == MSGPACK_OBJECT_BOOLEAN && ok->via.boolean) return d;
    char code[32] = "internal";
    mp_str_copy(mp_get(m, "code"), code, sizeof code);
    pe->code = proto_code_parse(code);
    if (!mp_str_copy(mp_get(m, "field"), pe->field, sizeof pe->field)) pe->field[0] = '\0';
    if (!mp_str_copy(mp_get(m, "msg"), pe->msg, sizeof pe->msg)) pe->msg[0] = '\0';
    lt_fail(err, LT_E_INVALID, "%s: %s", code, pe->msg);
    mp_doc_destroy(&d);
    return NULL;
  }
}

mp_doc_t *lc_call_id(lc_t *c, const char *op, int64_t id, proto_err_t *pe, lt_err_t *err) {
  mpw_t w;
  lc_begin(c, &w, op);
  mpw_kint(&w, "id", id);
  return lc_call(c, &w, pe, err);
}

int64_t lc_submit(lc_t *c, const char *kind, const void *params, size_t params_n, const char *sid, int64_t priority,
                  bool hold, bool *existing, proto_err_t *pe, lt_err_t *err) {
  mpw_t w;
  lc_begin(c, &w, "submit");
  mpw_kstr(&w, "kind", kind);
  if (params) {
    mpw_str(&w, "params");
    mpw_raw(&w, params, params_n);
  }
  if (sid && *sid) mpw_kstr(&w, "sid", sid);
  if (priority) mpw_kint(&w, "priority", priority);
  if (hold) mpw_kbool(&w, "hold", true);
  mp_doc_t *d = lc_call(c, &w, pe, err);
  if (!d) return 0;
  int64_t id = 0;
  const msgpack_object *m = mp_doc_root(d), *ex = mp_get(m, "existing");
  mp_field_int(m, "", "id", true, 1, INT64_MAX, &id, pe);
  if (existing) *existing = ex && ex->type == MSGPACK_OBJECT_BOOLEAN && ex->via.boolean;
  mp_doc_destroy(&d);
  return id;
}

/* Delivers ev if it is the next one; returns 1 delivered, 0 duplicate, -1 gap. Sets *final on a final state. */
static int deliver(const msgpack_object *ev, int64_t *last, lc_event_fn fn, void *user, bool *final, bool *go_on) {
  int64_t seq = 0;
  const msgpack_object *s = mp_get(ev, "seq");
  if (!s || !mp_as_int(s, &seq) || seq <= *last) return 0;
  if (seq != *last + 1) return -1;
  *last = seq;
  const msgpack_object *type = mp_get(ev, "type"), *data = mp_get(ev, "data");
  if (mp_str_is(type, "state")) {
    const msgpack_object *st = mp_get(data, "state");
    if (mp_str_is(st, "succeeded") || mp_str_is(st, "failed") || mp_str_is(st, "cancelled")) *final = true;
  }
  *go_on = fn(user, ev);
  return 1;
}

lt_status_t lc_follow(lc_t *c, int64_t id, int64_t after, lc_event_fn fn, void *user, volatile sig_atomic_t *stop,
                      bool *detached, proto_err_t *pe, lt_err_t *err) {
  int64_t last = after;
  bool final = false, go_on = true;
  if (detached) *detached = false;
  while (!final && go_on && !(stop && *stop)) {
    mpw_t w;
    lc_begin(c, &w, "events");
    mpw_kint(&w, "id", id);
    mpw_kint(&w, "after", last);
    mpw_kbool(&w, "follow", true);
    mp_doc_t *d = lc_call(c, &w, pe, err);
    if (!d) return (stop && *stop) ? LT_OK : LT_E_IO;
    const msgpack_object *m = mp_doc_root(d), *evs = mp_get(m, "events"), *more = mp_get(m, "more");
    bool has_more = more && more->type == MSGPACK_OBJECT_BOOLEAN && more->via.boolean;
    for (uint32_t i = 0; evs && evs->type == MSGPACK_OBJECT_ARRAY && i < evs->via.array.size && go_on; i++)
      deliver(&evs->via.array.ptr[i], &last, fn, user, &final, &go_on);
    mp_doc_destroy(&d);
    if (has_more || final || !go_on) continue;
    /* Now watching: take pushed events (queued ones first) until idle for a second or a gap shows. */
    bool gap = false;
    while (!final && go_on && !gap && !(stop && *stop)) {
      mp_doc_t *e = q_pop(&c->q);
      if (!e) e = recv_any(c, 1000, err);
      if (!e) {
        if (c->denied) return LT_E_IO;
        break;
      }
      const msgpack_object *ev = mp_get(mp_doc_root(e), "event");
      int64_t job = 0;
      if (ev && mp_get(ev, "job") && mp_as_int(mp_get(ev, "job"), &job) && job == id)
        gap = deliver(ev, &last, fn, user, &final, &go_on) < 0;
      mp_doc_destroy(&e);
    }
  }
  if (!final && detached) *detached = true;
  if (!final && go_on == false) {
    mpw_t w;
    lc_begin(c, &w, "unwatch");
    mpw_kint(&w, "id", id);
    mp_doc_t *d = lc_call(c, &w, NULL, NULL);
    mp_doc_destroy(&d);
  }
  return LT_OK;
}

long lc_daemon_pid(const char *socket) {
  char path[PATH_MAX], def[108];
  if (!socket || !*socket) {
    if (util_default_socket(def, sizeof def, NULL)) return 0;
    socket = def;
  }
  snprintf(path, sizeof path, "%s.lock", socket);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  long pid = 0;
  /* A shared lock we can take means no daemon holds the exclusive one. */
  if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
    flock(fd, LOCK_UN);
  } else {
    char buf[32] = "";
    ssize_t r = pread(fd, buf, sizeof buf - 1, 0);
    buf[r > 0 ? r : 0] = '\0';
    pid = strtol(buf, NULL, 10);
    if (pid <= 0) pid = 1;
  }
  close(fd);
  return pid;
}
