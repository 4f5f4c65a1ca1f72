/* lathe-worker: runs jobs on one GPU for lathed. Two threads: the I/O thread owns the connection to the daemon
 * (heartbeats, forwarding commands and events); the runner thread owns the Vulkan device and runs one job at a
 * time. They talk over an inproc PAIR, never through shared memory. Started by lathed only: as its child on this
 * machine (ipc), or with --one-shot by a Slurm batch script on a cluster node, connecting back over TCP with CURVE
 * under a key lathed issued for that one job, running that job and exiting. */
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/util.h"
#include "daemon/tokenize.h"
#include "engine/model/model_file.h"
#include "engine/model/model_tok.h"
#include "jobs/runners.h"

#define HEARTBEAT_MS 500
/* A one-shot worker that has not been handed its job this long after it started gives up (lathed forgot it). */
#define ONE_SHOT_WAIT_MS 120000
/* A one-shot worker's last message (the job's end) gets this long to reach lathed before the worker exits. */
#define ONE_SHOT_LINGER_MS 10000
#define PAIR_ENDPOINT "inproc://runner"

/* ---- the runner thread and the job context ---- */

typedef struct runner {
  void *ctx, *pair;
  gpu_t *gpu;
  const char *default_device; /* --device: what a job that names none runs on ("" or NULL: the best device) */
  model_t *model;             /* the last model a job used, kept with the device */
  tok_t *tok;
  char model_path[PATH_MAX];
  uint64_t model_stamp; /* model_file_stamp() of model_path when it was loaded */
  int64_t idle_since_mono;
  int64_t keep_alive_ms;
} runner_t;

/* Sends a writer's bytes over the runner's PAIR (to the I/O thread, which forwards them to lathed). */
static void pair_send(void *pair, mpw_t *w) {
  zmq_send(pair, w->sb.data, w->sb.size, 0);
  mpw_free(w);
}

/* ---- the worker as a job host (jobs/job.h) ---- */

/* Events go to lathed through the I/O thread. */
static void host_emit(void *host, const void *msg, size_t n) { zmq_send(((runner_t *)host)->pair, msg, n, 0); }

/* Cancel, exit and checkpoint commands arrive from the I/O thread on the PAIR. */
static job_stop_t host_poll_stop(void *host) {
  runner_t *r = host;
  job_stop_t stop = JOB_GO;
  char buf[512];
  int n;
  while ((n = zmq_recv(r->pair, buf, sizeof buf, ZMQ_DONTWAIT)) >= 0) {
    proto_err_t e;
    mp_doc_t *d = mp_doc_parse(buf, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf), &e);
    const msgpack_object *t = d ? mp_get(mp_doc_root(d), "t") : NULL;
    if (mp_str_is(t, "cancel") || mp_str_is(t, "exit"))
      stop = JOB_STOP_CANCEL;
    else if (mp_str_is(t, "checkpoint") && stop != JOB_STOP_CANCEL)
      stop = JOB_STOP_CHECKPOINT;
    mp_doc_destroy(&d);
  }
  return stop;
}

/* Tells the I/O thread which device is open ("" when none), for the heartbeats. */
static void announce_device(runner_t *r) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", "device");
  mpw_kstr(&w, "name", r->gpu ? gpu_caps(r->gpu)->name : "");
  mpw_kint(&w, "index", r->gpu ? (int64_t)gpu_caps(r->gpu)->device_index : -1);
  mpw_end(&w);
  pair_send(r->pair, &w);
}

static void drop_model(runner_t *r);

/* Whether device selector want (an index or a UUID) names the open device of g. */
static bool is_device(const gpu_t *g, const char *want) {
  const gpu_caps_t *c = gpu_caps(g);
  if (want[0] >= '0' && want[0] <= '9' && strlen(want) < 8) return (uint32_t)atoi(want) == c->device_index;
  char u[37];
  gpu_uuid_str(c->device_uuid, u);
  return strcasecmp(u, want) == 0;
}

/* The device, opened on first use and kept between jobs (the keep-alive). A job naming another device (its
 * `device` parameter, an index or UUID) closes the kept one and opens that; one naming none runs on this worker's
 * device (--device), or, without one, on what is open, else the daemon's choice (LATHE_DEVICE where it runs, or the
 * best device). */
static gpu_t *host_gpu(void *host, job_ctx_t *c, lt_err_t *err) {
  runner_t *r = host;
  const char *want = job_param_str(c, "device");
  if (!*want && r->default_device) want = r->default_device;
  if (r->gpu && *want && !is_device(r->gpu, want)) {
    job_log(c, "closing %s to open device %s", gpu_caps(r->gpu)->name, want);
    drop_model(r);
    gpu_destroy(&r->gpu);
  }
  if (!r->gpu) {
    gpu_opts_t o = {.device = *want ? want : NULL};
    if (!(r->gpu = gpu_new(&o, err))) return NULL;
    announce_device(r);
  }
  return r->gpu;
}

/* Frees the kept model and tokenizer (before the device they live on). */
static void drop_model(runner_t *r) {
  model_destroy(&r->model);
  tok_destroy(&r->tok);
  r->model_path[0] = '\0';
}

/* The model at path: the kept one when it is the same path and nothing on disk there changed since it was loaded
 * (model_file_stamp), else loaded (and kept for the next job). */
static model_t *host_model(void *host, job_ctx_t *c, const char *path, tok_t **tok, lt_err_t *err) {
  runner_t *r = host;
  uint64_t stamp = model_file_stamp(path);
  if (r->model && strcmp(r->model_path, path) == 0) {
    if (stamp && stamp == r->model_stamp) {
      job_log(c, "model %s already loaded", path);
      *tok = r->tok;
      return r->model;
    }
    job_log(c, "model %s changed on disk since it was loaded: loading it again", path);
  }
  drop_model(r);
  gpu_t *g = host_gpu(r, c, err);
  if (!g) return NULL;
  tok_t *t = model_tokenizer_open(path, err);
  if (!t) return NULL;
  model_t *m = model_load(g, path, NULL, err);
  if (!m) {
    tok_destroy(&t);
    return NULL;
  }
  const model_mem_t *mem = model_mem(m);
  job_log(c, "loaded %s: %.1f MiB of weights on %s (%.1f MiB in the file)", path,
          (double)mem->weight_device_bytes / 1048576.0, gpu_caps(g)->name, (double)mem->weight_file_bytes / 1048576.0);
  r->model = m;
  r->tok = t;
  snprintf(r->model_path, sizeof r->model_path, "%s", path);
  r->model_stamp = stamp;
  *tok = t;
  return m;
}

static const char *outcome_str(job_outcome_t o) {
  switch (o) {
  case JOB_SUCCEEDED: return "succeeded";
  case JOB_FAILED: return "failed";
  case JOB_CANCELLED: return "cancelled";
  case JOB_STOPPED: return "stopped";
  }
  return "failed";
}

static const job_host_t WORKER_HOST = {host_emit, host_poll_stop, host_gpu, host_model};

/* Runs the job a "run" command describes and reports {t: done, job, status, reason, result}. */
static void run_job(runner_t *r, const msgpack_object *m) {
  char kname[32] = "", dir[PATH_MAX] = "";
  int64_t id = 0, attempt = 1;
  const msgpack_object *params = NULL;
  mp_field_int(m, "", "job", true, 1, INT64_MAX, &id, NULL);
  mp_field_int(m, "", "attempt", false, 0, UINT32_MAX, &attempt, NULL);
  mp_field_str(m, "", "kind", true, kname, sizeof kname, NULL);
  mp_field_str(m, "", "dir", true, dir, sizeof dir, NULL);
  mp_field_map(m, "", "params", true, &params, NULL);
  job_spec_t spec = {
      .id = id, .attempt = (uint32_t)attempt, .kind = kname, .dir = dir, .params = params, .lent = mp_get(m, "lent")};
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", "started");
  mpw_kint(&w, "job", id);
  mpw_end(&w);
  pair_send(r->pair, &w);
  mpw_t result;
  mpw_init(&result);
  lt_err_t err = {0};
  job_outcome_t out = job_run(&WORKER_HOST, r, &spec, &result, &err);
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", "done");
  mpw_kint(&w, "job", id);
  mpw_kstr(&w, "status", outcome_str(out));
  mpw_kstr(&w, "reason", out == JOB_FAILED ? err.msg : "");
  mpw_str(&w, "result");
  mpw_raw(&w, result.sb.data, result.sb.size);
  mpw_end(&w);
  pair_send(r->pair, &w);
  mpw_free(&result);
  r->idle_since_mono = util_mono_ms();
}

static void *runner_main(void *arg) {
  runner_t *r = arg;
  r->pair = zmq_socket(r->ctx, ZMQ_PAIR);
  zmq_connect(r->pair, PAIR_ENDPOINT);
  for (;;) {
    /* The keep-alive: an idle device is closed after keep_alive_ms (0 closes it after every job). */
    long timeout = -1;
    if (r->gpu) {
      int64_t left = r->idle_since_mono + r->keep_alive_ms - util_mono_ms();
      if (left <= 0) {
        drop_model(r);
        gpu_destroy(&r->gpu);
        announce_device(r);
        continue;
      }
      timeout = (long)left;
    }
    zmq_pollitem_t it = {r->pair, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout) <= 0) continue;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, r->pair, 0) < 0) {
      zmq_msg_close(&msg);
      continue;
    }
    proto_err_t e;
    mp_doc_t *d = mp_doc_parse(zmq_msg_data(&msg), zmq_msg_size(&msg), &e);
    zmq_msg_close(&msg);
    const msgpack_object *t = d ? mp_get(mp_doc_root(d), "t") : NULL;
    bool leave = mp_str_is(t, "exit");
    if (mp_str_is(t, "run")) run_job(r, mp_doc_root(d));
    mp_doc_destroy(&d);
    if (leave) break;
  }
  drop_model(r);
  gpu_destroy(&r->gpu);
  zmq_close(r->pair);
  return NULL;
}

/* ---- the I/O thread ---- */

/* SIGTERM or SIGINT reached a one-shot worker (Slurm's scancel, or its time limit): the job is cancelled. */
static volatile sig_atomic_t got_term;
static void on_term(int sig) {
  (void)sig;
  got_term = 1;
}

/* Sends {t: TYPE} to the runner (cancel, exit). */
static void tell_runner(void *pair, const char *type) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", type);
  mpw_end(&w);
  pair_send(pair, &w);
}

/* Sets up CURVE on the dealer for a one-shot worker: the daemon's public key, and the job's key pair from the
 * secret key in key_file (the public half is derived from it). */
static bool one_shot_curve(void *dealer, const char *server_key, const char *key_file) {
  char sec[41], pub[41];
  lt_err_t err = {0};
  if (!server_key || strlen(server_key) != 40) {
    fprintf(stderr, "lathe-worker: --one-shot needs --server-key (the daemon's 40-character Z85 public key)\n");
    return false;
  }
  if (!key_file || util_read_z85_key(key_file, sec, &err) != LT_OK || zmq_curve_public(pub, sec) != 0) {
    fprintf(stderr, "lathe-worker: --one-shot needs --key-file with the job's secret key: %s\n",
            err.msg[0] ? err.msg : "no key file given");
    return false;
  }
  if (zmq_setsockopt(dealer, ZMQ_CURVE_SERVERKEY, server_key, 40) ||
      zmq_setsockopt(dealer, ZMQ_CURVE_SECRETKEY, sec, 40) || zmq_setsockopt(dealer, ZMQ_CURVE_PUBLICKEY, pub, 40)) {
    fprintf(stderr, "lathe-worker: cannot set up CURVE: %s\n", zmq_strerror(zmq_errno()));
    return false;
  }
  return true;
}

/* Tells the daemon a message from it could not be read (a run it would otherwise wait on forever). */
static void send_unreadable(void *sock, const char *why) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", "unreadable");
  mpw_kstr(&w, "reason", why);
  mpw_end(&w);
  zmq_send(sock, w.sb.data, w.sb.size, 0);
  mpw_free(&w);
}

static void send_simple(void *sock, const char *t, const char *device, int64_t index, int64_t gen) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", t);
  mpw_kint(&w, "pid", getpid());
  mpw_kint(&w, "gen", gen);
  if (device) mpw_kstr(&w, "device", device), mpw_kint(&w, "index", index);
  mpw_end(&w);
  zmq_send(sock, w.sb.data, w.sb.size, ZMQ_DONTWAIT);
  mpw_free(&w);
}

/* lathe-worker --check-tokenizers PATH_A NAME_A PATH_B NAME_B: lathed's submit-time check that two models share a
 * tokenizer, run in a process of its own so that a hostile file can never take the daemon down. Prints "ok" and
 * exits 0, or prints the reason and exits 1. No device is opened. */
static int check_tokenizers(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stdout, "lathe-worker --check-tokenizers PATH_A NAME_A PATH_B NAME_B\n");
    return 2;
  }
  lt_err_t err = {0};
  if (model_tokenizers_same(argv[0], argv[2], argv[1], argv[3], &err) != LT_OK) {
    fprintf(stdout, "%s\n", err.msg);
    return 1;
  }
  fprintf(stdout, "ok\n");
  return 0;
}

/* lathe-worker --list-devices: lathed's view of the machine's Vulkan devices, one line each (gpu_list_devices), so
 * that it can start a worker per device without touching Vulkan itself. Exits 1 with the reason when there is no
 * Vulkan. */
static int list_devices(void) {
  lt_err_t err = {0};
  if (gpu_list_devices(stdout, &err) < 0) {
    fprintf(stdout, "%s\n", err.msg);
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  /* lathe-worker --tokenize ARGS: `lathe tokenize ARGS` (daemon/tokenize.c). */
  if (argc > 1 && !strcmp(argv[1], "--tokenize")) return tokenize_main(argc - 1, argv + 1);
  char endpoint[PATH_MAX + 8] = "";
  const char *default_device = NULL, *server_key = NULL, *key_file = NULL;
  long long gen = 0, keep_alive = 300;
  bool one_shot = false;
  static const struct option lo[] = {{"connect", 1, 0, 'c'},    {"gen", 1, 0, 'g'},
                                     {"keep-alive", 1, 0, 'k'}, {"check-tokenizers", 0, 0, 't'},
                                     {"device", 1, 0, 'd'},     {"list-devices", 0, 0, 'l'},
                                     {"one-shot", 0, 0, 'o'},   {"server-key", 1, 0, 's'},
                                     {"key-file", 1, 0, 'f'},   {0, 0, 0, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    if (opt == 't')
      return check_tokenizers(argc - optind, argv + optind);
    else if (opt == 'c')
      util_copy(endpoint, optarg, sizeof endpoint);
    else if (opt == 'g')
      gen = atoll(optarg);
    else if (opt == 'k')
      keep_alive = atoll(optarg);
    else if (opt == 'd')
      default_device = optarg;
    else if (opt == 'l')
      return list_devices();
    else if (opt == 'o')
      one_shot = true;
    else if (opt == 's')
      server_key = optarg;
    else if (opt == 'f')
      key_file = optarg;
    else
      return 2;
  }
  if (!endpoint[0]) {
    fprintf(stderr, "lathe-worker: started by lathed only (--connect ENDPOINT --gen N)\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  if (one_shot) {
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
  }
  void *ctx = zmq_ctx_new();
  void *dealer = zmq_socket(ctx, ZMQ_DEALER), *pair = zmq_socket(ctx, ZMQ_PAIR);
  char id[32];
  snprintf(id, sizeof id, "w%lld", gen);
  int zero = 0;
  int64_t max = PROTO_HARD_MAX_MSG;
  zmq_setsockopt(dealer, ZMQ_ROUTING_ID, id, strlen(id));
  zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(dealer, ZMQ_MAXMSGSIZE, &max, sizeof max);
  if (one_shot && !one_shot_curve(dealer, server_key, key_file)) return 1;
  zmq_bind(pair, PAIR_ENDPOINT);
  if (zmq_connect(dealer, endpoint) != 0) {
    fprintf(stderr, "lathe-worker: cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
    return 1;
  }
  runner_t r = {.ctx = ctx, .keep_alive_ms = keep_alive * 1000, .default_device = default_device};
  pthread_t th;
  /* The runner leaves the stop signals to this thread (its poll wakes at least every heartbeat). */
  sigset_t stops, was;
  sigemptyset(&stops);
  sigaddset(&stops, SIGTERM), sigaddset(&stops, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stops, &was);
  pthread_create(&th, NULL, runner_main, &r);
  pthread_sigmask(SIG_SETMASK, &was, NULL);
  int64_t started = util_mono_ms();
  bool got_run = false, told_cancel = false;
  char device[256] = "";
  int64_t dev_index = -1; /* the open device's index, -1 when none is open */
  send_simple(dealer, "ready", NULL, -1, gen);
  int64_t next_beat = util_mono_ms() + HEARTBEAT_MS;
  bool leaving = false;
  while (!leaving) {
    int64_t wait = next_beat - util_mono_ms();
    zmq_pollitem_t it[2] = {{dealer, 0, ZMQ_POLLIN, 0}, {pair, 0, ZMQ_POLLIN, 0}};
    zmq_poll(it, 2, wait > 0 ? wait : 0);
    if (one_shot && got_term && !told_cancel) {
      /* Cancelled by Slurm: the job stops at its next check and reports it; with no job yet there is nothing to do. */
      told_cancel = true;
      send_simple(dealer, "signal", NULL, -1, gen); /* lathed asks Slurm why */
      fprintf(stderr, "lathe-worker: stop signal: %s\n", got_run ? "cancelling the job" : "leaving");
      tell_runner(pair, got_run ? "cancel" : "exit");
      leaving = !got_run;
    }
    if (one_shot && !got_run && !leaving && util_mono_ms() - started > ONE_SHOT_WAIT_MS) {
      fprintf(stderr, "lathe-worker: lathed at %s handed over no job within %d s; leaving\n", endpoint,
              ONE_SHOT_WAIT_MS / 1000);
      tell_runner(pair, "exit");
      leaving = true;
    }
    if (util_mono_ms() >= next_beat) {
      send_simple(dealer, "hb", device, dev_index, gen);
      next_beat = util_mono_ms() + HEARTBEAT_MS;
    }
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    while (zmq_msg_recv(&msg, dealer, ZMQ_DONTWAIT) >= 0) {
      proto_err_t e;
      mp_doc_t *d = mp_doc_parse(zmq_msg_data(&msg), zmq_msg_size(&msg), &e);
      if (d && mp_str_is(mp_get(mp_doc_root(d), "t"), "exit")) leaving = true;
      if (d && mp_str_is(mp_get(mp_doc_root(d), "t"), "run")) got_run = true;
      if (d) zmq_msg_send(&msg, pair, 0); /* run, cancel, checkpoint, exit: the runner's business */
      if (!d) send_unreadable(dealer, e.msg);
      mp_doc_destroy(&d);
    }
    while (zmq_msg_recv(&msg, pair, ZMQ_DONTWAIT) >= 0) {
      proto_err_t e;
      mp_doc_t *d = mp_doc_parse(zmq_msg_data(&msg), zmq_msg_size(&msg), &e);
      const msgpack_object *m = d ? mp_doc_root(d) : NULL;
      if (m && mp_str_is(mp_get(m, "t"), "device")) {
        mp_str_copy(mp_get(m, "name"), device, sizeof device);
        dev_index = -1;
        mp_as_int(mp_get(m, "index"), &dev_index);
        send_simple(dealer, "hb", device, dev_index, gen);
      } else if (m) {
        bool done = mp_str_is(mp_get(m, "t"), "done");
        zmq_msg_send(&msg, dealer, 0);
        if (one_shot && done) {
          /* Its one job has ended: the runner closes the device, and the report gets time to reach lathed. */
          int linger = ONE_SHOT_LINGER_MS;
          zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
          tell_runner(pair, "exit");
          leaving = true;
        }
      }
      mp_doc_destroy(&d);
    }
    zmq_msg_close(&msg);
  }
  pthread_join(th, NULL);
  zmq_close(pair);
  zmq_close(dealer);
  zmq_ctx_term(ctx);
  return 0;
}
