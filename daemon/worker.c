/* lathe-worker: runs jobs on one GPU for lathed. Two threads: the I/O thread owns the connection to the daemon
 * (heartbeats, forwarding commands and events); the runner thread owns the Vulkan device and runs one job at a
 * time. They talk over an inproc PAIR, never through shared memory. Started by lathed only. */
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
#include "engine/model/model_tok.h"
#include "jobs/runners.h"

#define HEARTBEAT_MS 500
#define PAIR_ENDPOINT "inproc://runner"

/* ---- the runner thread and the job context ---- */

typedef struct runner {
  void *ctx, *pair;
  gpu_t *gpu;
  model_t *model; /* the last model a job used, kept with the device */
  tok_t *tok;
  char model_path[PATH_MAX];
  int64_t idle_since_mono;
  int64_t keep_alive_ms;
} runner_t;

struct job_ctx {
  runner_t *r;
  int64_t id;
  uint32_t attempt;
  char dir[PATH_MAX];
  const msgpack_object *params;
  job_stop_t stop;
  mpw_t result;
  mpw_t out; /* the output record being built */
  char **strs; /* NUL-terminated copies handed out by job_param_str */
  size_t n_strs;
};

/* Sends a writer's bytes over the runner's PAIR (to the I/O thread, which forwards them to lathed). */
static void pair_send(void *pair, mpw_t *w) {
  zmq_send(pair, w->sb.data, w->sb.size, 0);
  mpw_free(w);
}

/* Starts an event message {t: event, job, type, data: {...}}: the caller adds data fields then calls
 * event_end(). */
static void event_begin(job_ctx_t *c, mpw_t *w, const char *type) {
  mpw_init(w);
  mpw_map(w);
  mpw_kstr(w, "t", "event");
  mpw_kint(w, "job", c->id);
  mpw_kstr(w, "type", type);
  mpw_str(w, "data");
  mpw_map(w);
}

static void event_end(job_ctx_t *c, mpw_t *w) {
  mpw_end(w);
  mpw_end(w);
  pair_send(c->r->pair, w);
}

int64_t job_id(const job_ctx_t *c) { return c->id; }
uint32_t job_attempt(const job_ctx_t *c) { return c->attempt; }
const char *job_dir(const job_ctx_t *c) { return c->dir; }

static const msgpack_object *param(const job_ctx_t *c, const char *key) {
  const msgpack_object *o = mp_get(c->params, key);
  if (!o) {
    /* The daemon normalises params against the same table: a missing key is a programming error. */
    fprintf(stderr, "lathe-worker: job %lld has no parameter %s\n", (long long)c->id, key);
    abort();
  }
  return o;
}

int64_t job_param_int(const job_ctx_t *c, const char *key) {
  int64_t v = 0;
  mp_as_int(param(c, key), &v);
  return v;
}

double job_param_float(const job_ctx_t *c, const char *key) {
  const msgpack_object *o = param(c, key);
  int64_t i;
  if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64) return o->via.f64;
  return mp_as_int(o, &i) ? (double)i : 0;
}

bool job_param_bool(const job_ctx_t *c, const char *key) {
  const msgpack_object *o = param(c, key);
  return o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean;
}

/* Keeps a NUL-terminated copy of a string object for the job's lifetime; "" when o is not a string. */
static const char *keep_str(job_ctx_t *c, const msgpack_object *o) {
  char **strs = o->type == MSGPACK_OBJECT_STR ? realloc(c->strs, (c->n_strs + 1) * sizeof *strs) : NULL;
  if (!strs) return "";
  c->strs = strs;
  char *s = o->via.str.size ? strndup(o->via.str.ptr, o->via.str.size) : strdup("");
  if (!s) return "";
  c->strs[c->n_strs++] = s;
  return s;
}

const char *job_param_str(job_ctx_t *c, const char *key) { return keep_str(c, param(c, key)); }

size_t job_param_list_len(job_ctx_t *c, const char *key) {
  const msgpack_object *o = param(c, key);
  return o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : 0;
}

const char *job_param_list_at(job_ctx_t *c, const char *key, size_t i) {
  const msgpack_object *o = param(c, key);
  return o->type == MSGPACK_OBJECT_ARRAY && i < o->via.array.size ? keep_str(c, &o->via.array.ptr[i]) : "";
}

job_stop_t job_should_stop(job_ctx_t *c) {
  char buf[512];
  int n;
  while ((n = zmq_recv(c->r->pair, buf, sizeof buf, ZMQ_DONTWAIT)) >= 0) {
    proto_err_t e;
    mp_doc_t *d = mp_doc_parse(buf, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf), &e);
    const msgpack_object *t = d ? mp_get(mp_doc_root(d), "t") : NULL;
    if (mp_str_is(t, "cancel") || mp_str_is(t, "exit")) c->stop = JOB_STOP_CANCEL;
    else if (mp_str_is(t, "checkpoint") && c->stop != JOB_STOP_CANCEL) c->stop = JOB_STOP_CHECKPOINT;
    mp_doc_destroy(&d);
  }
  return c->stop;
}

void job_progress(job_ctx_t *c, uint64_t step, uint64_t total, const char *unit) {
  mpw_t w;
  event_begin(c, &w, "progress");
  mpw_kint(&w, "step", (int64_t)step);
  mpw_kint(&w, "total", (int64_t)total);
  mpw_kstr(&w, "unit", unit ? unit : "");
  event_end(c, &w);
}

void job_log(job_ctx_t *c, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  mpw_t w;
  event_begin(c, &w, "log");
  mpw_kstr(&w, "msg", msg);
  event_end(c, &w);
}

void job_metric(job_ctx_t *c, const char *name, double value, uint64_t step) {
  mpw_t w;
  event_begin(c, &w, "metric");
  mpw_kstr(&w, "name", name);
  mpw_kdouble(&w, "value", value);
  mpw_kint(&w, "step", (int64_t)step);
  event_end(c, &w);
}

void job_output_begin(job_ctx_t *c) { event_begin(c, &c->out, "output"); }
void job_output_str(job_ctx_t *c, const char *key, const char *v) { mpw_kstr(&c->out, key, v); }
void job_output_int(job_ctx_t *c, const char *key, int64_t v) { mpw_kint(&c->out, key, v); }
void job_output_float(job_ctx_t *c, const char *key, double v) { mpw_kdouble(&c->out, key, v); }
void job_output_ints(job_ctx_t *c, const char *key, const int32_t *v, size_t n) {
  mpw_str(&c->out, key);
  mpw_array(&c->out);
  for (size_t i = 0; i < n; i++) mpw_int(&c->out, v[i]);
  mpw_end(&c->out);
}
void job_output_bool(job_ctx_t *c, const char *key, bool v) { mpw_kbool(&c->out, key, v); }
void job_output_null(job_ctx_t *c, const char *key) { mpw_knil(&c->out, key); }
void job_output_list_begin(job_ctx_t *c, const char *key) {
  if (key) mpw_str(&c->out, key);
  mpw_array(&c->out);
}
void job_output_list_str(job_ctx_t *c, const char *v) { mpw_str(&c->out, v); }
void job_output_list_end(job_ctx_t *c) { mpw_end(&c->out); }
void job_output_end(job_ctx_t *c) { event_end(c, &c->out); }

void job_artifact(job_ctx_t *c, const char *name, const char *relpath) {
  mpw_t w;
  event_begin(c, &w, "artifact");
  mpw_kstr(&w, "name", name);
  mpw_kstr(&w, "path", relpath);
  event_end(c, &w);
}

void job_result_int(job_ctx_t *c, const char *key, int64_t v) { mpw_kint(&c->result, key, v); }
void job_result_float(job_ctx_t *c, const char *key, double v) { mpw_kdouble(&c->result, key, v); }
void job_result_str(job_ctx_t *c, const char *key, const char *v) { mpw_kstr(&c->result, key, v); }

/* Tells the I/O thread which device is open ("" when none), for the heartbeats. */
static void announce_device(runner_t *r) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", "device");
  mpw_kstr(&w, "name", r->gpu ? gpu_caps(r->gpu)->name : "");
  mpw_end(&w);
  pair_send(r->pair, &w);
}

gpu_t *job_gpu(job_ctx_t *c, lt_err_t *err) {
  runner_t *r = c->r;
  if (!r->gpu && (r->gpu = gpu_new(NULL, err))) announce_device(r);
  return r->gpu;
}

/* Frees the kept model and tokenizer (before the device they live on). */
static void drop_model(runner_t *r) {
  model_destroy(&r->model);
  tok_destroy(&r->tok);
  r->model_path[0] = '\0';
}

model_t *job_model(job_ctx_t *c, const char *path, tok_t **tok, lt_err_t *err) {
  runner_t *r = c->r;
  if (r->model && strcmp(r->model_path, path) == 0) {
    job_log(c, "model %s already loaded", path);
    *tok = r->tok;
    return r->model;
  }
  drop_model(r);
  gpu_t *g = job_gpu(c, err);
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

/* Runs the job a "run" command describes and reports {t: done, job, status, reason, result}. */
static void run_job(runner_t *r, const msgpack_object *m) {
  job_ctx_t c = {.r = r};
  char kname[32] = "";
  int64_t attempt = 1;
  mp_field_int(m, "", "job", true, 1, INT64_MAX, &c.id, NULL);
  mp_field_int(m, "", "attempt", false, 0, UINT32_MAX, &attempt, NULL);
  c.attempt = (uint32_t)attempt;
  mp_field_str(m, "", "kind", true, kname, sizeof kname, NULL);
  mp_field_str(m, "", "dir", true, c.dir, sizeof c.dir, NULL);
  mp_field_map(m, "", "params", true, &c.params, NULL);
  mpw_init(&c.result);
  mpw_map(&c.result);
  const kind_t *k = kind_find(kname, strlen(kname));
  kind_run_fn fn = k ? runner_for(k) : NULL;
  lt_err_t err = {0};
  job_outcome_t out = JOB_FAILED;
  if (!fn || !c.params) lt_fail(&err, LT_E_INVALID, "this worker cannot run kind '%s'", kname);
  else out = fn(&c, &err);
  if (out == JOB_FAILED && !err.msg[0]) lt_fail(&err, LT_E_INVALID, "the runner failed without a reason");
  mpw_end(&c.result);
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", "done");
  mpw_kint(&w, "job", c.id);
  mpw_kstr(&w, "status", outcome_str(out));
  mpw_kstr(&w, "reason", out == JOB_FAILED ? err.msg : "");
  mpw_str(&w, "result");
  mpw_raw(&w, c.result.sb.data, c.result.sb.size);
  mpw_end(&w);
  pair_send(r->pair, &w);
  mpw_free(&c.result);
  for (size_t i = 0; i < c.n_strs; i++) free(c.strs[i]);
  free(c.strs);
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

static void send_simple(void *sock, const char *t, const char *device, int64_t gen) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "t", t);
  mpw_kint(&w, "pid", getpid());
  mpw_kint(&w, "gen", gen);
  if (device) mpw_kstr(&w, "device", device);
  mpw_end(&w);
  zmq_send(sock, w.sb.data, w.sb.size, ZMQ_DONTWAIT);
  mpw_free(&w);
}

int main(int argc, char **argv) {
  char endpoint[PATH_MAX + 8] = "";
  long long gen = 0, keep_alive = 300;
  static const struct option lo[] = {
      {"connect", 1, 0, 'c'}, {"gen", 1, 0, 'g'}, {"keep-alive", 1, 0, 'k'}, {0, 0, 0, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    if (opt == 'c') util_copy(endpoint, optarg, sizeof endpoint);
    else if (opt == 'g') gen = atoll(optarg);
    else if (opt == 'k') keep_alive = atoll(optarg);
    else return 2;
  }
  if (!endpoint[0]) {
    fprintf(stderr, "lathe-worker: started by lathed only (--connect ENDPOINT --gen N)\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  void *ctx = zmq_ctx_new();
  void *dealer = zmq_socket(ctx, ZMQ_DEALER), *pair = zmq_socket(ctx, ZMQ_PAIR);
  char id[32];
  snprintf(id, sizeof id, "w%lld", gen);
  int zero = 0;
  int64_t max = PROTO_HARD_MAX_MSG;
  zmq_setsockopt(dealer, ZMQ_ROUTING_ID, id, strlen(id));
  zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(dealer, ZMQ_MAXMSGSIZE, &max, sizeof max);
  zmq_bind(pair, PAIR_ENDPOINT);
  if (zmq_connect(dealer, endpoint) != 0) {
    fprintf(stderr, "lathe-worker: cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
    return 1;
  }
  runner_t r = {.ctx = ctx, .keep_alive_ms = keep_alive * 1000};
  pthread_t th;
  pthread_create(&th, NULL, runner_main, &r);
  char device[256] = "";
  send_simple(dealer, "ready", NULL, gen);
  int64_t next_beat = util_mono_ms() + HEARTBEAT_MS;
  bool leaving = false;
  while (!leaving) {
    int64_t wait = next_beat - util_mono_ms();
    zmq_pollitem_t it[2] = {{dealer, 0, ZMQ_POLLIN, 0}, {pair, 0, ZMQ_POLLIN, 0}};
    zmq_poll(it, 2, wait > 0 ? wait : 0);
    if (util_mono_ms() >= next_beat) {
      send_simple(dealer, "hb", device, gen);
      next_beat = util_mono_ms() + HEARTBEAT_MS;
    }
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    while (zmq_msg_recv(&msg, dealer, ZMQ_DONTWAIT) >= 0) {
      proto_err_t e;
      mp_doc_t *d = mp_doc_parse(zmq_msg_data(&msg), zmq_msg_size(&msg), &e);
      if (d && mp_str_is(mp_get(mp_doc_root(d), "t"), "exit")) leaving = true;
      if (d) zmq_msg_send(&msg, pair, 0); /* run, cancel, checkpoint, exit: the runner's business */
      mp_doc_destroy(&d);
    }
    while (zmq_msg_recv(&msg, pair, ZMQ_DONTWAIT) >= 0) {
      proto_err_t e;
      mp_doc_t *d = mp_doc_parse(zmq_msg_data(&msg), zmq_msg_size(&msg), &e);
      const msgpack_object *m = d ? mp_doc_root(d) : NULL;
      if (m && mp_str_is(mp_get(m, "t"), "device")) {
        mp_str_copy(mp_get(m, "name"), device, sizeof device);
        send_simple(dealer, "hb", device, gen);
      } else if (m) {
        zmq_msg_send(&msg, dealer, 0);
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
