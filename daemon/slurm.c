/* The Slurm executor: a job whose `executor` is slurm (or the daemon's --executor slurm) is handed to Slurm with
 * sbatch as a script that runs `lathe-worker --one-shot` on the node Slurm allocates. The worker connects back to
 * lathed over TCP with CURVE, under a key pair issued for that job alone (the secret half in the job's folder, which
 * the node reads from the shared filesystem), streams the job's events and its result like a local worker, and
 * exits. lathed follows the batch job with squeue (sacct once the controller has forgotten it): a job that ends in
 * Slurm before its worker reported (scancel from outside, a node failure, the time limit) fails with Slurm's state
 * and the message Slurm wrote into the job's output; `lathe cancel` runs scancel. Slurm does the cluster's
 * scheduling: lathed submits every Slurm job at once (up to MAX_REMOTE followed at a time) and lets Slurm queue
 * them. The Slurm commands run in processes of their own, each bounded in time; the loop waits for them (they answer
 * in milliseconds on a healthy controller). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "common/util.h"
#include "daemon/lathed.h"

/* How long one Slurm command may take before it is killed. */
#define SLURM_CMD_MS 30000
/* After Slurm says a batch job ended, its worker's last message gets this long to arrive before the job is ended
 * on Slurm's word. */
#define SLURM_END_GRACE_MS 3000

static bool terminal(const char *state) {
  static const char *const ends[] = {"COMPLETED", "CANCELLED",     "FAILED",   "TIMEOUT", "NODE_FAIL",   "PREEMPTED",
                                     "BOOT_FAIL", "OUT_OF_MEMORY", "DEADLINE", "REVOKED", "SPECIAL_EXIT"};
  for (size_t i = 0; i < sizeof ends / sizeof ends[0]; i++)
    if (!strncmp(state, ends[i], strlen(ends[i]))) return true;
  return false;
}

/* Runs a Slurm command (argv[0] on PATH), its output into out (lines joined by spaces unless keep_lines, trailing
 * blanks cut); true when it exited 0. */
static bool slurm_cmd_lines(const char *const *argv, char *out, size_t cap, bool keep_lines) {
  bool timed_out;
  int st = run_tool(argv[0], argv, true, SLURM_CMD_MS, out, cap, &timed_out);
  if (timed_out) snprintf(out, cap, "%s did not answer within %d s", argv[0], SLURM_CMD_MS / 1000);
  if (st < 0) snprintf(out, cap, "cannot run %s: %s", argv[0], strerror(errno));
  for (char *p = out; *p && !keep_lines; p++)
    if (*p == '\n' && p[1]) *p = ' ';
  size_t n = strlen(out);
  while (n && (out[n - 1] == '\n' || out[n - 1] == ' ')) out[--n] = '\0';
  return st >= 0 && !timed_out && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* slurm_cmd_lines with one line of output (for messages). */
static bool slurm_cmd(const char *const *argv, char *out, size_t cap) { return slurm_cmd_lines(argv, out, cap, false); }

bool slurm_init(daemon_t *d, lt_err_t *err) {
  char out[256];
  static const char *const argv[] = {"sbatch", "--version", NULL};
  if (slurm_cmd(argv, out, sizeof out)) {
    util_copy(d->slurm_version, out, sizeof d->slurm_version);
    d->slurm_missing[0] = '\0';
  } else {
    snprintf(d->slurm_missing, sizeof d->slurm_missing, "sbatch --version failed: %.200s", out);
  }
  if (zmq_curve_keypair(d->slurm_pub, d->slurm_sec) != 0) {
    snprintf(d->slurm_missing, sizeof d->slurm_missing, "no CURVE keys: %s", zmq_strerror(errno));
  }
  if (!strcmp(d->o.executor, "slurm")) {
    if (d->slurm_missing[0])
      return lt_fail(err, LT_E_UNSUPPORTED, "--executor slurm: Slurm cannot be used here (%s)", d->slurm_missing),
             false;
    dlog("jobs run under Slurm unless they ask for --executor local (%s)", d->slurm_version);
  }
  return true;
}

/* The string value of params[key] into buf ("" when absent). */
static void pstr(const msgpack_object *params, const char *key, char *buf, size_t n) {
  buf[0] = '\0';
  mp_str_copy(mp_get(params, key), buf, n);
}

bool slurm_preflight(daemon_t *d, const msgpack_object *params, proto_err_t *e) {
  char v[16];
  bool slurm = sched_params_slurm(d, params);
  static const char *const only[] = {"partition", "gres", "time", "account"};
  if (!slurm) {
    for (size_t i = 0; i < sizeof only / sizeof only[0]; i++) {
      char name[32];
      pstr(params, only[i], v, sizeof v);
      snprintf(name, sizeof name, "params.%s", only[i]);
      if (v[0])
        return proto_fail(e, P_BAD_VALUE, name,
                          "%s: only a job run under Slurm (--executor slurm) has a %s; this one runs on lathed's own "
                          "workers",
                          name, only[i]);
    }
    return true;
  }
  if (d->slurm_missing[0])
    return proto_fail(e, P_BAD_VALUE, "params.executor", "params.executor: this lathed cannot use Slurm (%s)",
                      d->slurm_missing);
  char pin[72];
  int64_t mib = 0;
  pstr(params, "device", pin, sizeof pin);
  mp_as_int(mp_get(params, "memory"), &mib);
  if (pin[0])
    return proto_fail(e, P_BAD_VALUE, "params.device",
                      "params.device: a job run under Slurm gets the device of the node Slurm gives it; ask Slurm "
                      "for one with --gres (e.g. gpu:1) instead of --device");
  if (mib > 0)
    return proto_fail(e, P_BAD_VALUE, "params.memory",
                      "params.memory: a job run under Slurm gets the node Slurm gives it; ask Slurm with --gres or "
                      "--partition instead of --memory");
  return true;
}

/* The worker socket for Slurm jobs, bound at the first one: a CURVE server whose clients the ZAP handler admits by
 * the keys issued to the followed jobs (domain "slurm"). */
static bool listen_tcp(daemon_t *d, lt_err_t *err) {
  if (d->wtcp) return true;
  void *s = zmq_socket(d->ctx, ZMQ_ROUTER);
  int one = 1, zero = 0, handshake = TCP_HANDSHAKE_MS;
  int64_t max = PROTO_HARD_MAX_MSG;
  const char *listen = d->o.slurm_listen[0] ? d->o.slurm_listen : "tcp://0.0.0.0:*";
  if (!s || zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, "slurm", 5) ||
      zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
      zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max, sizeof max) || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) ||
      zmq_setsockopt(s, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake) ||
      zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof one) ||
      zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, d->slurm_sec, 40) || zmq_bind(s, listen)) {
    lt_fail(err, LT_E_IO, "cannot listen for Slurm jobs' workers on %s: %s", listen, zmq_strerror(errno));
    if (s) zmq_close(s);
    return false;
  }
  char ep[256];
  size_t len = sizeof ep;
  zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &len);
  const char *port = strrchr(ep, ':');
  char host[256];
  if (d->o.slurm_host[0])
    util_copy(host, d->o.slurm_host, sizeof host);
  else if (gethostname(host, sizeof host) != 0)
    util_copy(host, "localhost", sizeof host);
  host[sizeof host - 1] = '\0';
  snprintf(d->wtcp_connect, sizeof d->wtcp_connect, "tcp://%s%s", host, port ? port : ":0");
  d->wtcp = s;
  dlog("Slurm jobs' workers connect to %s (listening on %s, CURVE)", d->wtcp_connect, ep);
  return true;
}

/* Writes s into f as one single-quoted shell word. */
static void shell_word(FILE *f, const char *s) {
  fputc('\'', f);
  for (; *s; s++)
    if (*s == '\'')
      fputs("'\\''", f);
    else
      fputc(*s, f);
  fputc('\'', f);
}

/* Emits a log event {msg} for job id. */
static void job_note(daemon_t *d, int64_t id, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void job_note(daemon_t *d, int64_t id, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kstr(&w, "msg", msg);
  mpw_end(&w);
  lt_err_t err = {0};
  if (ev_emit(d, id, "log", w.sb.data, w.sb.size, &err)) dlog("job %lld: %s", (long long)id, err.msg);
  mpw_free(&w);
}

/* The job folder's file name into buf. */
static void job_file(daemon_t *d, int64_t id, const char *name, char *buf, size_t n) {
  char dir[PATH_MAX];
  store_job_dir(d->store, id, dir, sizeof dir);
  snprintf(buf, n, "%s/%s", dir, name);
}

/* Writes the batch script and the worker's secret key into the job's folder and submits the script. True with the
 * Slurm job id in s->slurm_id; false with the reason in why. */
static bool submit(daemon_t *d, slot_t *s, const msgpack_object *params, char *why, size_t why_n) {
  char dir[PATH_MAX], script[PATH_MAX + 32], key[PATH_MAX + 32], out[PATH_MAX + 48], idf[PATH_MAX + 32];
  store_job_dir(d->store, s->job, dir, sizeof dir);
  snprintf(script, sizeof script, "%s/slurm-job.sh", dir);
  snprintf(key, sizeof key, "%s/slurm-worker.key", dir);
  snprintf(idf, sizeof idf, "%s/slurm.id", dir);
  char sec[41];
  lt_err_t err = {0};
  if (zmq_curve_keypair(s->pub, sec) != 0 || util_write_z85_key(key, sec, true, &err)) {
    snprintf(why, why_n, "cannot issue the worker's key: %s", err.msg[0] ? err.msg : zmq_strerror(errno));
    return false;
  }
  FILE *f = fopen(script, "w");
  if (!f) {
    snprintf(why, why_n, "cannot write %.300s: %s", script, strerror(errno));
    return false;
  }
  char gen[32];
  snprintf(gen, sizeof gen, "%lld", (long long)s->gen);
  fprintf(f, "#!/bin/sh\n# Lathe job %lld, run under Slurm: its worker connects back to lathed and runs it.\nexec ",
          (long long)s->job);
  shell_word(f, d->o.worker_path);
  fputs(" --one-shot --connect ", f);
  shell_word(f, d->wtcp_connect);
  fprintf(f, " --gen %s --server-key ", gen);
  shell_word(f, d->slurm_pub);
  fputs(" --key-file ", f);
  shell_word(f, key);
  fputc('\n', f);
  if (fclose(f) != 0 || chmod(script, 0700) != 0) {
    snprintf(why, why_n, "cannot write %.300s: %s", script, strerror(errno));
    return false;
  }
  /* %j in --output is Slurm's job id; a '%' of the folder itself is written %%. */
  size_t o = 0;
  o += (size_t)snprintf(out, sizeof out, "--output=");
  for (const char *p = dir; *p && o + 3 < sizeof out; p++) {
    if (*p == '%') out[o++] = '%';
    out[o++] = *p;
  }
  out[o] = '\0';
  snprintf(out + o, sizeof out - o, "/slurm-%%j.out");
  char name[48], part[300], gres[300], tim[300], acct[300], chdir[PATH_MAX + 16], v[256];
  snprintf(name, sizeof name, "--job-name=lathe-%lld", (long long)s->job);
  snprintf(chdir, sizeof chdir, "--chdir=%s", dir);
  const char *argv[16] = {"sbatch", "--parsable", name, out, chdir};
  int na = 5;
  pstr(params, "partition", v, sizeof v);
  if (v[0]) snprintf(part, sizeof part, "--partition=%s", v), argv[na++] = part;
  pstr(params, "gres", v, sizeof v);
  if (v[0]) snprintf(gres, sizeof gres, "--gres=%s", v), argv[na++] = gres;
  pstr(params, "time", v, sizeof v);
  if (v[0]) snprintf(tim, sizeof tim, "--time=%s", v), argv[na++] = tim;
  pstr(params, "account", v, sizeof v);
  if (v[0]) snprintf(acct, sizeof acct, "--account=%s", v), argv[na++] = acct;
  argv[na++] = script;
  argv[na] = NULL;
  char reply[1024];
  if (!slurm_cmd(argv, reply, sizeof reply)) {
    snprintf(why, why_n, "sbatch refused the job: %.400s", reply);
    return false;
  }
  /* --parsable: "ID" or "ID;CLUSTER" */
  size_t digits = strspn(reply, "0123456789");
  if (!digits || digits >= sizeof s->slurm_id) {
    snprintf(why, why_n, "sbatch gave no job id: %.400s", reply);
    return false;
  }
  memcpy(s->slurm_id, reply, digits);
  s->slurm_id[digits] = '\0';
  FILE *idfile = fopen(idf, "w");
  if (idfile) fprintf(idfile, "%s\n", s->slurm_id), fclose(idfile);
  return true;
}

static bool slurm_cb(void *user, const store_job_t *j) { return sched_job_is_slurm(user, j->params, j->params_n); }

void slurm_dispatch(daemon_t *d) {
  while (d->n_remote < MAX_REMOTE && !d->slurm_missing[0]) {
    lt_err_t err = {0};
    store_job_t j;
    if (!sched_next_queued(d, slurm_cb, d, &j)) return;
    int64_t id = j.id;
    mpw_t w;
    if (!sched_start_job(d, &j, NULL, 0, &w)) {
      store_job_clear(&j);
      continue;
    }
    slot_t *s = &d->remote[d->n_remote];
    memset(s, 0, sizeof *s);
    s->remote = true;
    s->ix = -1;
    s->dev_index = -1;
    s->gen = ++d->gen;
    s->job = id;
    s->state = W_STARTING;
    s->run_msg = mpw_take(&w, &s->run_msg_n);
    char why[600] = "";
    proto_err_t pe;
    mp_doc_t *doc = mp_doc_parse(j.params, j.params_n, &pe);
    bool ok = doc && listen_tcp(d, &err) && submit(d, s, mp_doc_root(doc), why, sizeof why);
    mp_doc_destroy(&doc);
    if (!ok) {
      if (!why[0]) snprintf(why, sizeof why, "%s", err.msg[0] ? err.msg : "its parameters could not be read");
      ev_transition(d, &j, JS_FAILED, why, &err);
      dlog("job %lld: %s", (long long)id, why);
      free(s->run_msg);
    } else {
      util_copy(s->slurm_state, "SUBMITTED", sizeof s->slurm_state);
      d->n_remote++;
      job_note(d, id, "submitted to Slurm as job %s; its worker will connect to %s", s->slurm_id, d->wtcp_connect);
      dlog("job %lld: Slurm job %s", (long long)id, s->slurm_id);
      d->slurm_poll_mono = util_mono_ms() + d->o.slurm_poll_ms;
    }
    store_job_clear(&j);
  }
}

void slurm_ready(daemon_t *d, slot_t *s) {
  if (s->state != W_STARTING || !s->run_msg) return;
  char id[32];
  snprintf(id, sizeof id, "w%lld", (long long)s->gen);
  out_push(d, d->wtcp, (const uint8_t *)id, strlen(id), s->run_msg, s->run_msg_n, false, 0);
  s->run_msg = NULL;
  s->state = W_BUSY;
  s->job_started = false;
  s->start_deadline_mono = util_mono_ms() + d->o.start_timeout_ms;
  s->last_beat_mono = util_mono_ms();
  job_note(d, s->job, "the worker of Slurm job %s connected%s%s", s->slurm_id, s->node[0] ? " from node " : "",
           s->node);
}

/* Runs scancel for slot s (once). */
static void scancel(daemon_t *d, slot_t *s, const char *why) {
  if (s->scancelled || !s->slurm_id[0]) return;
  s->scancelled = true;
  char out[512];
  const char *argv[] = {"scancel", s->slurm_id, NULL};
  bool ok = slurm_cmd(argv, out, sizeof out);
  dlog("job %lld: scancel %s (%s)%s%s", (long long)s->job, s->slurm_id, why, ok ? "" : ": ", ok ? "" : out);
  if (s->job) job_note(d, s->job, "scancel %s (%s)%s%s", s->slurm_id, why, ok ? "" : " failed: ", ok ? "" : out);
}

void slurm_release(daemon_t *d, slot_t *s) {
  int i = (int)(s - d->remote);
  if (i < 0 || i >= d->n_remote) return;
  free(s->run_msg);
  free(s->progress_pending);
  if (i != d->n_remote - 1) d->remote[i] = d->remote[d->n_remote - 1];
  d->n_remote--;
}

/* The last line Slurm itself wrote into the batch job's output (slurmstepd's "*** JOB ... CANCELLED ***", an
 * out-of-memory kill, ...), or the output's last line, into buf ("" when there is none). */
static void output_tail(daemon_t *d, const slot_t *s, char *buf, size_t n) {
  char path[PATH_MAX + 64], name[64];
  snprintf(name, sizeof name, "slurm-%s.out", s->slurm_id);
  job_file(d, s->job, name, path, sizeof path);
  buf[0] = '\0';
  FILE *f = fopen(path, "r");
  if (!f) return;
  if (fseek(f, 0, SEEK_END) == 0) {
    long size = ftell(f);
    fseek(f, size > 4096 ? size - 4096 : 0, SEEK_SET);
  }
  char line[1024], last[1024] = "", slurm[1024] = "";
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    if (!line[0]) continue;
    util_copy(last, line, sizeof last);
    if (strstr(line, "slurmstepd") || strstr(line, "***")) util_copy(slurm, line, sizeof slurm);
  }
  fclose(f);
  util_copy(buf, slurm[0] ? slurm : last, n);
}

/* The batch job of slot s ended in Slurm (state) while its Lathe job was still attached: the worker never reported
 * the end. The job fails with Slurm's word for it, or ends cancelled / re-queued when lathed asked it to stop. */
static void ended_in_slurm(daemon_t *d, slot_t *s) {
  store_job_t j;
  lt_err_t err = {0};
  if (store_job_get(d->store, s->job, &j, &err) == 1) {
    char tail[600], how[1024];
    output_tail(d, s, tail, sizeof tail);
    snprintf(how, sizeof how, "Slurm job %s ended %s%s%s%s%s%s while the job ran%s%s", s->slurm_id, s->slurm_state,
             s->slurm_reason[0] && strcmp(s->slurm_reason, "None") ? " (" : "",
             s->slurm_reason[0] && strcmp(s->slurm_reason, "None") ? s->slurm_reason : "",
             s->slurm_reason[0] && strcmp(s->slurm_reason, "None") ? ")" : "", s->node[0] ? " on node " : "", s->node,
             tail[0] ? ": " : "", tail);
    if (s->stop == STOP_CANCEL) j.cancel_requested = true;
    if (j.cancel_requested || s->stop == STOP_SHUTDOWN)
      sched_interrupted(d, s, &j, how, s->stop == STOP_SHUTDOWN);
    else if (ev_transition(d, &j, JS_FAILED, how, &err))
      dlog("job %lld: %s", (long long)j.id, err.msg);
    dlog("job %lld: %s", (long long)j.id, how);
  }
  store_job_clear(&j);
  sched_slot_job_done(d, s);
}

/* Cuts slot s's job off for `how` (a lost worker, a start or stop deadline): scancel, then the job is cancelled,
 * re-queued or failed as a local worker's crash would leave it. */
static void cut_off(daemon_t *d, slot_t *s, const char *how) {
  scancel(d, s, how);
  sched_cut_off(d, s, how);
}

/* Asks Slurm about every followed job (one squeue), then sacct for those the controller no longer lists. */
static void poll_slurm(daemon_t *d) {
  char ids[MAX_REMOTE * 24] = "";
  size_t at = 0;
  for (int i = 0; i < d->n_remote; i++)
    if (d->remote[i].slurm_id[0])
      at += (size_t)snprintf(ids + at, sizeof ids - at, "%s%s", at ? "," : "", d->remote[i].slurm_id);
  if (!at) return;
  static char out[MAX_REMOTE * 512];
  const char *argv[] = {"squeue", "-h", "--states=all", "-j", ids, "-o", "%i|%T|%r|%N", NULL};
  bool ok = slurm_cmd_lines(argv, out, sizeof out, true);
  if (!ok && !strstr(out, "Invalid job id")) {
    dlog("squeue: %s", out);
    return; /* the controller is unreachable for now: ask again at the next poll */
  }
  for (int i = 0; i < d->n_remote; i++) {
    slot_t *s = &d->remote[i];
    char state[24] = "", reason[64] = "", node[64] = "";
    bool listed = false;
    size_t idn = strlen(s->slurm_id);
    for (char *line = ok ? out : NULL; line && *line;) {
      char *next = strchr(line, '\n');
      if (next) *next = '\0';
      if (!strncmp(line, s->slurm_id, idn) && line[idn] == '|') {
        listed = true;
        sscanf(line + idn + 1, "%23[^|]|%63[^|]|%63s", state, reason, node);
      }
      if (next) *next = '\n';
      line = next ? next + 1 : NULL;
    }
    if (!listed) {
      /* Gone from the controller's memory: accounting has the end, if the cluster keeps it. */
      char acct[512];
      const char *sa[] = {"sacct", "-n", "-X", "-P", "-j", s->slurm_id, "-o", "State,Reason,NodeList", NULL};
      if (slurm_cmd(sa, acct, sizeof acct) && acct[0]) {
        sscanf(acct, "%23[^|]|%63[^|]|%63s", state, reason, node);
      } else {
        util_copy(state, "GONE", sizeof state);
        util_copy(reason, "Slurm no longer knows the job", sizeof reason);
      }
    }
    if (strcmp(state, s->slurm_state) != 0 && s->job) {
      if (!strcmp(state, "RUNNING"))
        job_note(d, s->job, "Slurm job %s running on %s", s->slurm_id, node[0] ? node : "its node");
      else if (!terminal(state) && strcmp(state, "GONE") != 0)
        job_note(d, s->job, "Slurm job %s %s (%s)", s->slurm_id, state, reason);
    }
    util_copy(s->slurm_state, state, sizeof s->slurm_state);
    util_copy(s->slurm_reason, reason, sizeof s->slurm_reason);
    if (node[0] && strcmp(node, "(null)") != 0) util_copy(s->node, node, sizeof s->node);
    if ((terminal(state) || !strcmp(state, "GONE")) && !s->ended_mono) s->ended_mono = util_mono_ms();
  }
}

int64_t slurm_timers(daemon_t *d) {
  if (!d->n_remote) return INT64_MAX;
  int64_t now = util_mono_ms();
  if (now >= d->slurm_poll_mono) {
    poll_slurm(d);
    now = util_mono_ms();
    d->slurm_poll_mono = now + d->o.slurm_poll_ms;
  }
  int64_t next = d->slurm_poll_mono - now;
  for (int i = d->n_remote - 1; i >= 0; i--) {
    slot_t *s = &d->remote[i];
    char why[160] = "";
    if (s->ended_mono && s->job && now - s->ended_mono >= SLURM_END_GRACE_MS) {
      ended_in_slurm(d, s);
    } else if (s->job && s->state == W_BUSY && now - s->last_beat_mono > d->o.heartbeat_timeout_ms) {
      snprintf(why, sizeof why, "no heartbeat from the worker of Slurm job %s for %lld ms", s->slurm_id,
               (long long)(now - s->last_beat_mono));
    } else if (s->job && s->state == W_BUSY && !s->job_started && now > s->start_deadline_mono) {
      snprintf(why, sizeof why, "job %lld not started by the worker of Slurm job %s within %lld ms", (long long)s->job,
               s->slurm_id, (long long)d->o.start_timeout_ms);
    } else if (s->job && s->stop != STOP_NONE && now > s->stop_deadline_mono) {
      snprintf(why, sizeof why, "Slurm job %s did not stop within %lld ms of being asked", s->slurm_id,
               (long long)d->o.cancel_grace_ms);
    }
    if (why[0]) cut_off(d, s, why);
    if (!s->job) {
      if (!terminal(s->slurm_state) && strcmp(s->slurm_state, "GONE") != 0) scancel(d, s, "its job has ended");
      slurm_release(d, s);
    }
  }
  return next < 0 ? 0 : next;
}

void slurm_stop(daemon_t *d, slot_t *s, stop_req_t why) {
  s->stop = why;
  s->stop_deadline_mono = util_mono_ms() + d->o.cancel_grace_ms;
  bool connected = s->state == W_BUSY;
  if (why == STOP_CANCEL) {
    /* The cancel goes to the worker too, so that it stops at once and reports; scancel ends the batch job. */
    if (connected) sched_tell_stop(d, s, why);
    scancel(d, s, s->cancel_by[0] ? s->cancel_by : "cancelled");
    if (!connected) cut_off(d, s, "cancelled while waiting in Slurm's queue");
  } else if (connected) {
    sched_tell_stop(d, s, why);
  } else {
    cut_off(d, s, "lathed is shutting down; its Slurm job had not started");
  }
}

void slurm_shutdown(daemon_t *d) {
  for (int i = d->n_remote - 1; i >= 0; i--) sched_stop_running(d, &d->remote[i], STOP_SHUTDOWN);
}

void slurm_recover(daemon_t *d, int64_t job) {
  char path[PATH_MAX + 32];
  job_file(d, job, "slurm.id", path, sizeof path);
  FILE *f = fopen(path, "r");
  if (!f) return;
  char id[24] = "";
  bool got = fscanf(f, "%23s", id) == 1 && strspn(id, "0123456789") == strlen(id);
  fclose(f);
  unlink(path);
  if (!got || !d->slurm_version[0]) return;
  char out[512];
  const char *argv[] = {"scancel", id, NULL};
  bool ok = slurm_cmd(argv, out, sizeof out);
  dlog("job %lld: scancel %s, its Slurm job from before (%s)", (long long)job, id, ok ? "done" : out);
}

void slurm_drop_all(daemon_t *d) {
  for (int i = d->n_remote - 1; i >= 0; i--) {
    scancel(d, &d->remote[i], "the store failed to commit");
    slurm_release(d, &d->remote[i]);
  }
}

bool slurm_key_ok(daemon_t *d, const char *key, char *user, size_t n) {
  for (int i = 0; i < d->n_remote; i++) {
    const slot_t *s = &d->remote[i];
    if (s->job && !strcmp(s->pub, key)) {
      snprintf(user, n, "slurm:%lld", (long long)s->job);
      return true;
    }
  }
  return false;
}
