/* bench_daemon: submit-to-running latency and submissions per second for no-op jobs (sleep steps=0), against a
 * peer measured in the same run on the same machine: a bare ZeroMQ DEALER/ROUTER round trip over ipc with a
 * msgpack-sized payload (the floor any request over this transport pays). Prints each figure and its ratio. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "clock.h"
#include "client/lc.h"
#include "common/util.h"

enum { LATENCY_JOBS = 200, THROUGHPUT_JOBS = 2000, ECHO_ROUNDS = 5000 };

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The peer: a ROUTER echoing on an ipc socket in its own thread-less child process. */
static pid_t echo_server(const char *ep) {
  pid_t pid = fork();
  if (pid == 0) {
    void *ctx = zmq_ctx_new(), *r = zmq_socket(ctx, ZMQ_ROUTER);
    int unlimited = 0; /* a ROUTER drops what does not fit under its high-water mark */
    zmq_setsockopt(r, ZMQ_SNDHWM, &unlimited, sizeof unlimited);
    zmq_setsockopt(r, ZMQ_RCVHWM, &unlimited, sizeof unlimited);
    zmq_bind(r, ep);
    for (;;) {
      zmq_msg_t id, body;
      zmq_msg_init(&id), zmq_msg_init(&body);
      if (zmq_msg_recv(&id, r, 0) < 0 || zmq_msg_recv(&body, r, 0) < 0) _exit(0);
      zmq_msg_send(&id, r, ZMQ_SNDMORE);
      zmq_msg_send(&body, r, 0);
    }
  }
  return pid;
}

/* Round trips per second and median latency (s) of the bare echo; pipelined messages per second. */
static void measure_echo(const char *ep, double *rt_per_s, double *rt_median, double *pipelined_per_s) {
  void *ctx = zmq_ctx_new(), *d = zmq_socket(ctx, ZMQ_DEALER);
  int unlimited = 0;
  zmq_setsockopt(d, ZMQ_SNDHWM, &unlimited, sizeof unlimited);
  zmq_setsockopt(d, ZMQ_RCVHWM, &unlimited, sizeof unlimited);
  zmq_connect(d, ep);
  char msg[64] = {0}, buf[256];
  zmq_send(d, msg, sizeof msg, 0);
  zmq_recv(d, buf, sizeof buf, 0); /* connected */
  double *lat = malloc(ECHO_ROUNDS * sizeof *lat), t0 = now_s();
  for (int i = 0; i < ECHO_ROUNDS; i++) {
    double a = now_s();
    zmq_send(d, msg, sizeof msg, 0);
    zmq_recv(d, buf, sizeof buf, 0);
    lat[i] = now_s() - a;
  }
  *rt_per_s = ECHO_ROUNDS / (now_s() - t0);
  qsort(lat, ECHO_ROUNDS, sizeof *lat, cmp_double);
  *rt_median = lat[ECHO_ROUNDS / 2];
  t0 = now_s();
  for (int i = 0; i < THROUGHPUT_JOBS; i++) zmq_send(d, msg, sizeof msg, 0);
  for (int i = 0; i < THROUGHPUT_JOBS; i++) zmq_recv(d, buf, sizeof buf, 0);
  *pipelined_per_s = THROUGHPUT_JOBS / (now_s() - t0);
  free(lat);
  zmq_close(d);
  zmq_ctx_term(ctx);
}

static bool on_event(void *user, const msgpack_object *ev) {
  double *t_running = user;
  const msgpack_object *st = mp_get(mp_get(ev, "data"), "state");
  if (mp_str_is(mp_get(ev, "type"), "state") && mp_str_is(st, "running")) {
    *t_running = now_s();
    return false; /* running is all we wait for */
  }
  return true;
}

static void noop_params(mpw_t *w) {
  mpw_init(w);
  mpw_map(w);
  mpw_kint(w, "steps", 0);
  mpw_end(w);
}

int main(void) {
  char dir[] = "/tmp/lathe-bench-XXXXXX", sock[128], home[128], ep[160], echo_ep[160], bin[PATH_MAX - 16],
       lathed[PATH_MAX];
  if (!mkdtemp(dir) || !util_exe_dir(bin, sizeof bin)) return 1;
  snprintf(sock, sizeof sock, "%s/run/lathed.sock", dir);
  snprintf(home, sizeof home, "%s/home", dir);
  snprintf(ep, sizeof ep, "ipc://%s", sock);
  snprintf(echo_ep, sizeof echo_ep, "ipc://%s/echo.sock", dir);
  snprintf(lathed, sizeof lathed, "%s/lathed", bin);
  pid_t daemon = fork();
  if (daemon == 0) {
    if (!freopen("/dev/null", "w", stderr)) _exit(127);
    execl(lathed, "lathed", "--socket", sock, "--home", home, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 200 && lc_daemon_pid(sock) != daemon; i++) nanosleep(&(struct timespec){0, 20000000}, NULL);
  lt_err_t err = {0};
  lc_t *c = lc_new(&(lc_opts_t){.socket = sock, .timeout_ms = 30000}, &err);
  if (!c) return fprintf(stderr, "bench_daemon: %s\n", err.msg), 1;
  mpw_t w;
  lc_begin(c, &w, "ping");
  mp_doc_t *d = lc_call(c, &w, NULL, &err);
  if (!d) return fprintf(stderr, "bench_daemon: lathed does not answer: %s\n", err.msg), 1;
  mp_doc_destroy(&d);

  /* Submit-to-running: one job at a time, from the submit request to the pushed "running" event. */
  double *lat = malloc(LATENCY_JOBS * sizeof *lat);
  for (int i = 0; i < LATENCY_JOBS; i++) {
    noop_params(&w);
    double t0 = now_s(), t_running = 0;
    int64_t id = lc_submit(c, "sleep", w.sb.data, w.sb.size, NULL, 0, false, NULL, NULL, &err);
    mpw_free(&w);
    if (!id || lc_follow(c, id, 0, on_event, &t_running, NULL, NULL, NULL, &err) || !t_running)
      return fprintf(stderr, "bench_daemon: %s\n", err.msg), 1;
    lat[i] = t_running - t0;
  }
  qsort(lat, LATENCY_JOBS, sizeof *lat, cmp_double);
  double lat_median = lat[LATENCY_JOBS / 2], lat_p90 = lat[LATENCY_JOBS * 9 / 10];

  /* Submissions per second: sequential (each waits for its durable reply) and pipelined (group commit). */
  double t0 = now_s();
  for (int i = 0; i < LATENCY_JOBS; i++) {
    noop_params(&w);
    lc_submit(c, "sleep", w.sb.data, w.sb.size, NULL, 0, false, NULL, NULL, &err);
    mpw_free(&w);
  }
  double seq_per_s = LATENCY_JOBS / (now_s() - t0);
  t0 = now_s();
  for (int i = 0; i < THROUGHPUT_JOBS; i++) {
    lc_begin(c, &w, "submit");
    mpw_kstr(&w, "kind", "sleep");
    mpw_str(&w, "params");
    mpw_map(&w);
    mpw_kint(&w, "steps", 0);
    mpw_end(&w);
    mpw_end(&w);
    lc_send_raw(c, w.sb.data, w.sb.size, &err);
    mpw_free(&w);
  }
  for (int i = 0; i < THROUGHPUT_JOBS; i++) {
    d = lc_recv_reply(c, 30000, &err);
    if (!d) return fprintf(stderr, "bench_daemon: %s\n", err.msg), 1;
    mp_doc_destroy(&d);
  }
  double pipe_per_s = THROUGHPUT_JOBS / (now_s() - t0);

  /* Jobs run per second: until every no-op job has succeeded. */
  int64_t total = 2 * LATENCY_JOBS + THROUGHPUT_JOBS, done = 0;
  while (done < total) {
    lc_begin(c, &w, "status");
    d = lc_call(c, &w, NULL, &err);
    if (!d) return fprintf(stderr, "bench_daemon: %s\n", err.msg), 1;
    const msgpack_object *o = mp_get(mp_get(mp_doc_root(d), "jobs"), "succeeded");
    if (o) mp_as_int(o, &done);
    mp_doc_destroy(&d);
    if (done < total) nanosleep(&(struct timespec){0, 10000000}, NULL);
  }
  double run_per_s = THROUGHPUT_JOBS / (now_s() - t0);
  lc_destroy(&c);
  kill(daemon, SIGTERM);
  waitpid(daemon, NULL, 0);

  pid_t echo = echo_server(echo_ep);
  double rt_per_s, rt_median, echo_pipe_per_s;
  measure_echo(echo_ep, &rt_per_s, &rt_median, &echo_pipe_per_s);
  kill(echo, SIGKILL);
  waitpid(echo, NULL, 0);
  util_rm_rf(dir, NULL);

  printf("bare ZeroMQ ipc round trip (peer): median %.1f us, %.0f round trips/s, %.0f pipelined msgs/s\n",
         rt_median * 1e6, rt_per_s, echo_pipe_per_s);
  printf("submit-to-running latency (no-op job, %d jobs): median %.2f ms, p90 %.2f ms = %.1fx a bare round trip\n",
         LATENCY_JOBS, lat_median * 1e3, lat_p90 * 1e3, lat_median / rt_median);
  printf("sequential submits (each waits for its durable reply): %.0f /s = %.3fx bare round trips/s\n", seq_per_s,
         seq_per_s / rt_per_s);
  printf("pipelined submits (%d in flight, group commit): %.0f /s = %.3fx bare pipelined msgs/s\n", THROUGHPUT_JOBS,
         pipe_per_s, pipe_per_s / echo_pipe_per_s);
  printf("%d no-op jobs from pipelined submit to all succeeded: %.0f jobs/s\n", THROUGHPUT_JOBS, run_per_s);
  free(lat);
  return 0;
}
