/* lathed: the job queue daemon. One reactor thread owns every socket, the store and the schedule; the GPU work
 * happens in a lathe-worker child process. Usage: lathed --help. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/util.h"
#include "daemon/lathed.h"

/* ---- receiving ---- */

/* Reads one multipart message from a ROUTER: routing id, then exactly one payload frame. Returns false when
 * nothing is waiting. Oversized or multi-frame messages are answered with an error here. */
static bool recv_one(daemon_t *d, void *sock, int sock_ix) {
  zmq_msg_t idm, msg;
  zmq_msg_init(&idm);
  if (zmq_msg_recv(&idm, sock, ZMQ_DONTWAIT) < 0) {
    zmq_msg_close(&idm);
    return false;
  }
  peer_t p = {sock_ix, {0}, 0};
  size_t idn = zmq_msg_size(&idm);
  p.id_n = (uint8_t)(idn > MAX_ROUTING_ID ? MAX_ROUTING_ID : idn);
  memcpy(p.id, zmq_msg_data(&idm), p.id_n);
  zmq_msg_close(&idm);
  zmq_msg_init(&msg);
  int frames = 0;
  bool have = false;
  char owner[64] = "";
  zmq_msg_t payload;
  zmq_msg_init(&payload);
  int more = 1;
  while (more) {
    if (zmq_msg_recv(&msg, sock, 0) < 0) break;
    frames++;
    more = zmq_msg_more(&msg);
    if (!have) {
      zmq_msg_move(&payload, &msg);
      have = true;
      const char *uid = zmq_msg_gets(&payload, "User-Id");
      util_copy(owner, uid ? uid : "", sizeof owner);
    }
  }
  zmq_msg_close(&msg);
  if (sock == d->wsock || (sock == d->wtcp && sock)) {
    if (frames == 1) sched_worker_msg(d, p.id, p.id_n, owner, zmq_msg_data(&payload), zmq_msg_size(&payload));
  } else if (frames != 1) {
    proto_err_t e;
    proto_fail(&e, P_BAD_FRAMES, "", "a request is one frame; got %d", frames);
    mpw_t w;
    mpw_init(&w);
    proto_write_error(&w, 0, &e);
    out_peer(d, &p, &w, true, 0);
    d->rejected++;
  } else {
    requests_handle(d, &p, owner, zmq_msg_data(&payload), zmq_msg_size(&payload));
  }
  zmq_msg_close(&payload);
  return true;
}

static void handle_signals(daemon_t *d) {
  struct signalfd_siginfo si;
  while (read(d->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
    if (si.ssi_signo == SIGCHLD) {
      sched_reap(d);
    } else if (!d->stopping) {
      dlog("signal %d: shutting down", (int)si.ssi_signo);
      d->stopping = true;
    }
  }
}

/* Stop accepting: the client sockets close (pending replies are flushed first by the caller). */
static void close_clients(daemon_t *d) {
  if (d->ipc) {
    zmq_close(d->ipc);
    d->ipc = NULL;
    unlink(d->o.socket);
  }
  if (d->tcp) zmq_close(d->tcp), d->tcp = NULL;
}

/* Reads the TCP monitor's events: counts connections, and shuts one that arrives over the cap at once (libzmq then
 * closes it and reports the disconnect). */
static void tcp_monitor(daemon_t *d) {
  for (;;) {
    zmq_msg_t ev, addr;
    zmq_msg_init(&ev);
    if (zmq_msg_recv(&ev, d->tcp_mon, ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&ev);
      return;
    }
    zmq_msg_init(&addr);
    if (zmq_msg_more(&ev)) zmq_msg_recv(&addr, d->tcp_mon, 0);
    if (zmq_msg_size(&ev) >= 6) {
      const uint8_t *b = zmq_msg_data(&ev);
      uint16_t event;
      uint32_t value;
      memcpy(&event, b, 2), memcpy(&value, b + 2, 4);
      if (event == ZMQ_EVENT_ACCEPTED && ++d->tcp_open > d->o.max_tcp) {
        shutdown((int)value, SHUT_RDWR);
        d->tcp_shed++;
      } else if (event == ZMQ_EVENT_DISCONNECTED && d->tcp_open > 0) {
        d->tcp_open--;
      }
    }
    zmq_msg_close(&ev), zmq_msg_close(&addr);
  }
}

static void loop(daemon_t *d) {
  int64_t stop_started = 0, exit_sent = 0, wait = 0;
  while (!d->done) {
    zmq_pollitem_t it[7] = {{NULL, d->sigfd, ZMQ_POLLIN, 0}, {d->zap, 0, ZMQ_POLLIN, 0}, {d->wsock, 0, ZMQ_POLLIN, 0}};
    int n = 3;
    if (d->wtcp) it[n++] = (zmq_pollitem_t){d->wtcp, 0, ZMQ_POLLIN, 0};
    if (d->tcp_mon) it[n++] = (zmq_pollitem_t){d->tcp_mon, 0, ZMQ_POLLIN, 0};
    if (d->ipc) it[n++] = (zmq_pollitem_t){d->ipc, 0, ZMQ_POLLIN, 0};
    if (d->tcp) it[n++] = (zmq_pollitem_t){d->tcp, 0, ZMQ_POLLIN, 0};
    if (d->stopping && wait > 100) wait = 100;
    if (zmq_poll(it, n, wait) < 0 && errno != EINTR) {
      dlog("zmq_poll: %s", zmq_strerror(errno));
      break;
    }
    if (it[0].revents) handle_signals(d);
    if (it[1].revents) zap_handle(d);
    if (d->tcp_mon) tcp_monitor(d);
    for (int k = 0; k < BATCH && recv_one(d, d->wsock, -1); k++) {}
    for (int k = 0; d->wtcp && k < BATCH && recv_one(d, d->wtcp, -1); k++) {}
    /* The client sockets share one budget per turn, taken in turns, so neither can starve the other. */
    d->turn_work = 0;
    int64_t turn_end = util_mono_ms() + TURN_MS;
    for (int k = 0; k < BATCH && d->turn_work < TURN_WORK && util_mono_ms() < turn_end; k++) {
      bool got = d->ipc && recv_one(d, d->ipc, 0);
      got |= d->tcp && d->turn_work < TURN_WORK && recv_one(d, d->tcp, 1);
      if (!got) break;
    }
    wait = sched_timers(d);
    int64_t lease = watch_expire(d);
    if (lease < wait) wait = lease;
    if (d->stopping && !stop_started) {
      stop_started = util_mono_ms();
      for (int i = 0; i < d->n_slots; i++) sched_stop_running(d, &d->slots[i], STOP_SHUTDOWN);
      slurm_shutdown(d);
    }
    int64_t retry = store_retry(d);
    if (retry < wait) wait = retry;
    if (!d->stopping && !d->store_fault[0]) {
      sched_dispatch(d);
      int64_t prune = sched_retention(d);
      if (prune < wait) wait = prune;
    }
    bool busy = false, up = false;
    for (int i = 0; i < d->n_slots; i++) busy |= d->slots[i].job != 0, up |= d->slots[i].state != W_DOWN;
    busy |= d->n_remote > 0;
    if (d->stopping && !busy) {
      /* The jobs have stopped (or there were none): let the workers close their devices cleanly, then leave. */
      if (!up)
        d->done = true;
      else if (!exit_sent)
        sched_tell_exit(d), exit_sent = util_mono_ms();
      else if (util_mono_ms() - exit_sent > 3000)
        for (int i = 0; i < d->n_slots; i++) sched_kill_worker(d, &d->slots[i], "it did not exit when told");
    }
    /* One commit per turn (group commit): replies and events leave only once what they report is stored. */
    lt_err_t err = {0};
    if (store_commit(d->store, &err))
      store_failed_commit(d, err.msg);
    else
      out_flush(d);
    if (d->stopping && (d->ipc || d->tcp)) close_clients(d);
  }
}

/* ---- setup ---- */

/* Takes an exclusive lock on path (created if needed), writing our pid into it. Returns the fd or -1. A client
 * probing whether a daemon runs holds a shared lock for a moment: the lock is tried for up to two seconds before
 * another daemon is named as its holder. */
static int take_lock(const char *path, lt_err_t *err) {
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return lt_fail(err, LT_E_IO, "cannot open %s: %s", path, strerror(errno)), -1;
  int locked = flock(fd, LOCK_EX | LOCK_NB);
  for (int i = 0; locked != 0 && errno == EWOULDBLOCK && i < 200; i++) {
    nanosleep(&(struct timespec){0, 10 * 1000000}, NULL);
    locked = flock(fd, LOCK_EX | LOCK_NB);
  }
  if (locked != 0) {
    char buf[32] = "";
    ssize_t r = pread(fd, buf, sizeof buf - 1, 0);
    buf[r > 0 ? r : 0] = '\0';
    lt_fail(err, LT_E_INVALID, "another lathed (pid %ld) holds %s; not starting", strtol(buf, NULL, 10), path);
    close(fd);
    return -1;
  }
  char pid[32];
  int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) dlog("cannot write pid into %s", path);
  return fd;
}

static void *router(daemon_t *d, const char *domain, lt_err_t *err) {
  void *s = zmq_socket(d->ctx, ZMQ_ROUTER);
  int one = 1, zero = 0, hwm = 100000;
  int64_t max = PROTO_HARD_MAX_MSG;
  if (!s || zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) ||
      zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
      zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max, sizeof max) || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) ||
      zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm) || zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm)) {
    lt_fail(err, LT_E_IO, "cannot set up a ROUTER socket: %s", zmq_strerror(errno));
    if (s) zmq_close(s);
    return NULL;
  }
  return s;
}

/* TCP with CURVE: the server key pair lives in home/curve (made on first use); clients must be in the allow
 * folder, checked by the ZAP handler. Without the handler libzmq would accept any key, so no handler, no TCP. */
static lt_status_t setup_tcp(daemon_t *d, lt_err_t *err) {
  if (!d->o.curve_allow[0]) return lt_fail(err, LT_E_INVALID, "--tcp needs --curve-allow DIR (allowed client keys)");
  if (zap_check_curve_dir(d->o.curve_allow, err)) return err->code;
  if (!zmq_has("curve")) return lt_fail(err, LT_E_UNSUPPORTED, "this libzmq has no CURVE support; TCP refused");
  char dir[PATH_MAX + 8], pub_path[PATH_MAX + 24], sec_path[PATH_MAX + 24], pub[41], sec[41];
  snprintf(dir, sizeof dir, "%s/curve", d->o.home);
  snprintf(pub_path, sizeof pub_path, "%s/server.pub", dir);
  snprintf(sec_path, sizeof sec_path, "%s/server.key", dir);
  if (util_private_dir(dir, err)) return err->code;
  if (util_read_z85_key(sec_path, sec, NULL) || util_read_z85_key(pub_path, pub, NULL)) {
    if (zmq_curve_keypair(pub, sec) != 0) return lt_fail(err, LT_E_IO, "zmq_curve_keypair: %s", zmq_strerror(errno));
    if (util_write_z85_key(sec_path, sec, true, err) || util_write_z85_key(pub_path, pub, false, err)) return err->code;
    dlog("made the server key pair %s (give clients %s)", sec_path, pub_path);
  }
  if (!(d->tcp = router(d, "tcp", err))) return err->code;
  int one = 1, handshake = TCP_HANDSHAKE_MS;
  /* Before authentication a TCP peer costs a descriptor: a handshake must finish within TCP_HANDSHAKE_MS, and the
   * open connections are counted (the monitor) and capped, keeping descriptors for the ipc socket and the store. */
  struct rlimit rl;
  int64_t fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (int64_t)rl.rlim_cur : 4096;
  if (!d->o.max_tcp) d->o.max_tcp = fds / 4 < 1024 ? (fds / 4 > 8 ? fds / 4 : 8) : 1024;
  if (zmq_setsockopt(d->tcp, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake) ||
      zmq_socket_monitor(d->tcp, "inproc://lathed-tcp-monitor", ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) ||
      !(d->tcp_mon = zmq_socket(d->ctx, ZMQ_PAIR)) || zmq_connect(d->tcp_mon, "inproc://lathed-tcp-monitor"))
    return lt_fail(err, LT_E_IO, "cannot watch the TCP socket's connections: %s", zmq_strerror(errno));
  if (zmq_setsockopt(d->tcp, ZMQ_CURVE_SERVER, &one, sizeof one) ||
      zmq_setsockopt(d->tcp, ZMQ_CURVE_SECRETKEY, sec, 40) || zmq_bind(d->tcp, d->o.tcp))
    return lt_fail(err, LT_E_IO, "cannot listen on %s: %s", d->o.tcp, zmq_strerror(errno));
  /* With a port of "*" the system picks one: report the real endpoint (status shows it too). */
  size_t len = sizeof d->o.tcp;
  zmq_getsockopt(d->tcp, ZMQ_LAST_ENDPOINT, d->o.tcp, &len);
  dlog("listening on %s (CURVE, clients in %s; at most %lld connections, %d ms to authenticate)", d->o.tcp,
       d->o.curve_allow, (long long)d->o.max_tcp, TCP_HANDSHAKE_MS);
  return LT_OK;
}

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: lathed [options]\n"
      "  --socket PATH          ipc socket (default $LATHE_SOCKET or $XDG_RUNTIME_DIR/lathe/lathed.sock)\n"
      "  --home DIR             store and artifacts (default $LATHE_HOME or $XDG_DATA_HOME/lathe)\n"
      "  --tcp ENDPOINT         also listen on TCP (e.g. tcp://127.0.0.1:7117, port * picks one); needs --curve-allow\n"
      "  --curve-allow DIR      folder of allowed client public keys (*.pub, Z85)\n"
      "  --max-queue N          queued + held jobs accepted (default 10000)\n"
      "  --cancel-grace-ms N    time a running job gets to stop before its worker is killed (default 5000)\n"
      "  --heartbeat-timeout-ms N  a silent worker is killed after this (default 10000)\n"
      "  --start-timeout-ms N  a worker that has not started a job it was handed this long is killed (default 30000)\n"
      "  --watch-lease-ms N  a watch lapses this long after its client last asked or was sent an event (default "
      "30000)\n"
      "  --max-tcp-connections N  TCP connections open at once, authenticated or not (default: a quarter of the\n"
      "                         descriptor limit, at most 1024); more are closed as they arrive\n"
      "  --allow-path NAME=DIR  jobs of TCP key NAME may read and write under DIR (repeat; without one a key may\n"
      "                         name no path)\n"
      "  --max-attempts N       starts of a job before a crash fails it (default 3)\n"
      "  --keep-alive S         seconds the worker keeps the device open when idle (default 300)\n"
      "  --keep-finished D      remove finished jobs (rows and folders) D after they end: 30d, 12h, 90m (default:\n"
      "                         keep them until `lathe rm`)\n"
      "  --worker PATH          the lathe-worker binary (default: next to lathed)\n"
      "  --devices LIST         one worker per entry, a device index or UUID (0,1; 0,0 runs two on device 0);\n"
      "                         default: one per GPU found (the CPU driver only when there is no other)\n"
      "  --executor local|slurm where a job that names none runs (default local; docs/cluster.md)\n"
      "  --slurm-listen ENDPOINT  where Slurm jobs' workers connect, CURVE (default tcp://0.0.0.0:*)\n"
      "  --slurm-host NAME      the name cluster nodes reach this machine by (default its hostname)\n"
      "  --slurm-poll-ms N      how often Slurm is asked about its jobs (default 2000)\n");
}

static bool parse_args(daemon_t *d, int argc, char **argv) {
  enum {
    O_SOCKET = 1,
    O_HOME,
    O_TCP,
    O_ALLOW,
    O_QUEUE,
    O_GRACE,
    O_HB,
    O_START,
    O_LEASE,
    O_MAXTCP,
    O_ATTEMPTS,
    O_KEEP,
    O_WORKER,
    O_DEVICES,
    O_ALLOWPATH,
    O_KEEPFIN,
    O_EXECUTOR,
    O_SLURM_LISTEN,
    O_SLURM_HOST,
    O_SLURM_POLL,
    O_HELP,
    O_VERSION
  };
  static const struct option lo[] = {{"socket", 1, 0, O_SOCKET},
                                     {"home", 1, 0, O_HOME},
                                     {"tcp", 1, 0, O_TCP},
                                     {"curve-allow", 1, 0, O_ALLOW},
                                     {"max-queue", 1, 0, O_QUEUE},
                                     {"cancel-grace-ms", 1, 0, O_GRACE},
                                     {"heartbeat-timeout-ms", 1, 0, O_HB},
                                     {"start-timeout-ms", 1, 0, O_START},
                                     {"watch-lease-ms", 1, 0, O_LEASE},
                                     {"max-tcp-connections", 1, 0, O_MAXTCP},
                                     {"allow-path", 1, 0, O_ALLOWPATH},
                                     {"max-attempts", 1, 0, O_ATTEMPTS},
                                     {"keep-alive", 1, 0, O_KEEP},
                                     {"worker", 1, 0, O_WORKER},
                                     {"devices", 1, 0, O_DEVICES},
                                     {"keep-finished", 1, 0, O_KEEPFIN},
                                     {"executor", 1, 0, O_EXECUTOR},
                                     {"slurm-listen", 1, 0, O_SLURM_LISTEN},
                                     {"slurm-host", 1, 0, O_SLURM_HOST},
                                     {"slurm-poll-ms", 1, 0, O_SLURM_POLL},
                                     {"help", 0, 0, O_HELP},
                                     {"version", 0, 0, O_VERSION},
                                     {0, 0, 0, 0}};
  opts_t *o = &d->o;
  o->max_queue = 10000, o->cancel_grace_ms = 5000, o->heartbeat_timeout_ms = 10000, o->max_attempts = 3;
  o->start_timeout_ms = 30000, o->watch_lease_ms = WATCH_LEASE_MS;
  o->keep_alive_s = 300;
  o->slurm_poll_ms = 2000;
  util_copy(o->executor, "local", sizeof o->executor);
  int c;
  while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    char *end = NULL;
    long long v = optarg ? strtoll(optarg, &end, 10) : 0;
    bool num_ok = optarg && *optarg && end && !*end && v >= 0;
    switch (c) {
    case O_SOCKET: util_copy(o->socket, optarg, sizeof o->socket), o->socket_explicit = true; break;
    case O_HOME: util_copy(o->home, optarg, sizeof o->home); break;
    case O_TCP: util_copy(o->tcp, optarg, sizeof o->tcp); break;
    case O_ALLOW: util_copy(o->curve_allow, optarg, sizeof o->curve_allow); break;
    case O_WORKER: util_copy(o->worker_path, optarg, sizeof o->worker_path); break;
    case O_DEVICES: {
      /* Comma-separated indexes or UUIDs; a device may repeat (two workers on it). */
      size_t n = strlen(optarg);
      bool ok = n > 0 && n < sizeof o->devices && strspn(optarg, "0123456789abcdefABCDEF-,") == n && optarg[0] != ',' &&
                optarg[n - 1] != ',' && !strstr(optarg, ",,");
      int count = 1;
      for (const char *q = optarg; *q; q++) count += *q == ',';
      if (!ok || count > MAX_SLOTS) {
        fprintf(stderr,
                "lathed: --devices %s: a comma-separated list of at most %d device indexes or UUIDs (lathe "
                "devices lists them)\n",
                optarg, MAX_SLOTS);
        return false;
      }
      util_copy(o->devices, optarg, sizeof o->devices);
      break;
    }
    case O_QUEUE: o->max_queue = v; break;
    case O_GRACE: o->cancel_grace_ms = v; break;
    case O_HB: o->heartbeat_timeout_ms = v; break;
    case O_START: o->start_timeout_ms = v; break;
    case O_LEASE: o->watch_lease_ms = v; break;
    case O_MAXTCP: o->max_tcp = v; break;
    case O_ALLOWPATH: {
      const char *eq = strchr(optarg, '=');
      struct allow_path *a = o->n_allow < MAX_ALLOW_PATHS ? &o->allow[o->n_allow] : NULL;
      if (!eq || eq == optarg || (size_t)(eq - optarg) >= sizeof a->key || !a || !realpath(eq + 1, a->dir)) {
        fprintf(stderr, "lathed: --allow-path %s: needs NAME=DIR with an existing DIR (at most %d)\n", optarg,
                MAX_ALLOW_PATHS);
        return false;
      }
      snprintf(a->key, sizeof a->key, "%.*s", (int)(eq - optarg), optarg);
      o->n_allow++;
      break;
    }
    case O_ATTEMPTS: o->max_attempts = v; break;
    case O_KEEP: o->keep_alive_s = v; break;
    case O_KEEPFIN:
      if (!util_parse_duration(optarg, &o->keep_finished_ms) || o->keep_finished_ms <= 0) {
        fprintf(stderr, "lathed: --keep-finished %s: needs a duration such as 30d, 12h or 90m\n", optarg);
        return false;
      }
      break;
    case O_EXECUTOR:
      if (strcmp(optarg, "local") != 0 && strcmp(optarg, "slurm") != 0) {
        fprintf(stderr, "lathed: --executor %s: local or slurm\n", optarg);
        return false;
      }
      util_copy(o->executor, optarg, sizeof o->executor);
      break;
    case O_SLURM_LISTEN: util_copy(o->slurm_listen, optarg, sizeof o->slurm_listen); break;
    case O_SLURM_HOST: util_copy(o->slurm_host, optarg, sizeof o->slurm_host); break;
    case O_SLURM_POLL:
      if (!num_ok || v < 100) {
        fprintf(stderr, "lathed: --slurm-poll-ms %s: at least 100\n", optarg);
        return false;
      }
      o->slurm_poll_ms = v;
      break;
    case O_HELP: usage(stdout); exit(0);
    case O_VERSION:
      printf("lathed %s (protocol %d, store %d)\n", LATHED_VERSION, PROTO_VERSION, STORE_VERSION);
      exit(0);
    default: usage(stderr); return false;
    }
    if (c >= O_QUEUE && c <= O_KEEP && !num_ok) {
      fprintf(stderr, "lathed: %s needs a non-negative integer\n", argv[optind - 2]);
      return false;
    }
  }
  if (optind < argc) {
    usage(stderr);
    return false;
  }
  lt_err_t err = {0};
  if (getenv("LATHE_SOCKET") && *getenv("LATHE_SOCKET")) o->socket_explicit = true;
  if (!o->socket[0] && util_default_socket(o->socket, sizeof o->socket, &err)) {
    fprintf(stderr, "lathed: %s\n", err.msg);
    return false;
  }
  if (!o->home[0] && util_default_home(o->home, sizeof o->home, &err)) {
    fprintf(stderr, "lathed: %s\n", err.msg);
    return false;
  }
  if (!o->worker_path[0]) {
    char dir[PATH_MAX - 16];
    if (!util_exe_dir(dir, sizeof dir)) util_copy(dir, ".", sizeof dir);
    snprintf(o->worker_path, sizeof o->worker_path, "%s/lathe-worker", dir);
  }
  return true;
}

/* Raises the soft descriptor limit to the hard one: clients, the store and the worker all take descriptors. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rlim_t was = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
    dlog("descriptor limit raised from %llu to %llu", (unsigned long long)was, (unsigned long long)rl.rlim_cur);
}

static int run(daemon_t *d) {
  lt_err_t err = {0};
  raise_nofile();
  int lock_fd = -1, home_lock_fd = -1, rc = 1;
  char sockdir[sizeof d->o.socket], lock_path[sizeof d->o.socket + 8], home_lock[PATH_MAX + 16];
  util_copy(sockdir, d->o.socket, sizeof sockdir);
  util_copy(sockdir, dirname(sockdir), sizeof sockdir);
  if (util_private_dir(sockdir, &err)) {
    /* The default folder must be private; an explicit socket may live elsewhere (the ZAP handler still admits
     * only our uid). */
    if (!d->o.socket_explicit || err.code == LT_E_IO) {
      dlog("%s", err.msg);
      return 1;
    }
    dlog("warning: %s (continuing: the socket path was given explicitly)", err.msg);
  }
  snprintf(lock_path, sizeof lock_path, "%s.lock", d->o.socket);
  if ((lock_fd = take_lock(lock_path, &err)) < 0) {
    dlog("%s", err.msg);
    return 3;
  }
  if (util_mkdir_p(d->o.home, 0700, &err)) goto out;
  snprintf(home_lock, sizeof home_lock, "%s/lathed.lock", d->o.home);
  if ((home_lock_fd = take_lock(home_lock, &err)) < 0) {
    rc = 3;
    goto out;
  }
  if (!(d->store = store_open(d->o.home, &err))) goto out;
  d->ctx = zmq_ctx_new();
  d->zap = zmq_socket(d->ctx, ZMQ_REP);
  if (!d->zap || zmq_bind(d->zap, "inproc://zeromq.zap.01") != 0) {
    lt_fail(&err, LT_E_IO, "cannot install the ZAP authentication handler: %s", zmq_strerror(errno));
    goto out;
  }
  if (!(d->ipc = router(d, "ipc", &err))) goto out;
  char ep[sizeof d->o.socket + 8];
  snprintf(ep, sizeof ep, "ipc://%s", d->o.socket);
  unlink(d->o.socket); /* a stale socket of a dead daemon: we hold the lock, so nobody serves it */
  if (zmq_bind(d->ipc, ep) != 0) {
    lt_fail(&err, LT_E_IO, "cannot listen on %s: %s", ep, zmq_strerror(errno));
    goto out;
  }
  if (d->o.tcp[0] && setup_tcp(d, &err)) goto out;
  if (!(d->wsock = router(d, "worker", &err))) goto out;
  if (snprintf(d->worker_endpoint, sizeof d->worker_endpoint, "ipc://%s.w", d->o.socket) > 6 + 107) {
    lt_fail(&err, LT_E_LIMIT, "socket path too long to add the worker socket beside it");
    goto out;
  }
  unlink(d->worker_endpoint + 6);
  if (zmq_bind(d->wsock, d->worker_endpoint) != 0) {
    lt_fail(&err, LT_E_IO, "cannot listen on %s: %s", d->worker_endpoint, zmq_strerror(errno));
    goto out;
  }
  if (!sched_slots(d, &err) || !slurm_init(d, &err)) goto out;
  d->started_ms = util_now_ms();
  sched_recover(d, "lathed restarted");
  if (store_commit(d->store, &err)) goto out;
  dlog("serving %s (store %s, pid %d)", ep, d->o.home, (int)getpid());
  sched_spawn(d);
  loop(d);
  rc = 0;
out:
  if (rc && err.msg[0]) dlog("%s", err.msg);
  close_clients(d);
  if (d->wsock) zmq_close(d->wsock), unlink(d->worker_endpoint + 6);
  if (d->wtcp) zmq_close(d->wtcp);
  if (d->zap) zmq_close(d->zap);
  if (d->tcp_mon) zmq_close(d->tcp_mon);
  if (d->ctx) zmq_ctx_term(d->ctx);
  store_destroy(&d->store);
  for (size_t i = 0; i < d->n_out; i++) free(d->out[i].data);
  free(d->out);
  free(d->watchers);
  for (int i = 0; i < d->n_slots; i++) free(d->slots[i].progress_pending);
  if (home_lock_fd >= 0) close(home_lock_fd);
  if (lock_fd >= 0) close(lock_fd);
  if (rc == 0) dlog("stopped");
  return rc;
}

int main(int argc, char **argv) {
  static daemon_t d;
  if (!parse_args(&d, argc, argv)) return 2;
  umask(077);
  signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM), sigaddset(&set, SIGINT), sigaddset(&set, SIGHUP), sigaddset(&set, SIGCHLD);
  /* Blocked before ZeroMQ starts its threads, so every thread leaves these to the signalfd. */
  sigprocmask(SIG_BLOCK, &set, NULL);
  d.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (d.sigfd < 0) {
    perror("lathed: signalfd");
    return 1;
  }
  return run(&d);
}
