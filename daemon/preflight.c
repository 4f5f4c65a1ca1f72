/* Submit-time checks on the files a job names: for every kind, paths that must exist, outputs that must not
 * overwrite an input or an existing result, a remote key's allowed folders; per kind (jobs/kind.h, kind_files),
 * two models that must share a tokenizer. Parsing a model's tokenizer is the engine's work, which lathed never does
 * in its own process: it runs `lathe-worker --check-tokenizers` (worker_tool) and waits for its verdict (at most
 * WORKER_TOOL_MS; a crash or a hang of that process is an error for this submit, never for the daemon). The wait
 * holds the daemon's loop: a tokenizer of 150,000 tokens parses in well under a second. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/lathed.h"
#include "jobs/kind.h"

/* The string value of params[key] into buf ("" when absent). */
static void param_str(const msgpack_object *params, const char *key, char *buf, size_t n) {
  buf[0] = '\0';
  const msgpack_object *o = mp_get(params, key);
  if (o && o->type == MSGPACK_OBJECT_STR) mp_str_copy(o, buf, n);
}

int run_tool(const char *path, const char *const *argv, bool err_too, int64_t limit_ms, char *out, size_t cap,
             bool *timed_out) {
  *timed_out = false;
  out[0] = '\0';
  int fd[2];
  if (pipe(fd) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    dup2(fd[1], STDOUT_FILENO);
    if (err_too) dup2(fd[1], STDERR_FILENO);
    close(fd[0]), close(fd[1]);
    execvp(path, (char *const *)argv);
    dprintf(STDOUT_FILENO, "cannot run %s: %s\n", path, strerror(errno)); /* unbuffered: _exit follows */
    _exit(127);
  }
  int saved = errno;
  close(fd[1]);
  if (pid < 0) {
    close(fd[0]);
    errno = saved;
    return -1;
  }
  size_t n = 0;
  int64_t end = util_mono_ms() + limit_ms;
  for (;;) {
    int64_t left = end - util_mono_ms();
    if (left <= 0) {
      *timed_out = true;
      break;
    }
    struct pollfd p = {fd[0], POLLIN, 0};
    int r = poll(&p, 1, (int)left);
    if (r <= 0) continue;
    ssize_t got = read(fd[0], out + n, cap - 1 - n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    n += (size_t)got;
    if (n == cap - 1) break;
  }
  close(fd[0]);
  if (*timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  out[n] = '\0';
  return status;
}

int worker_tool(const daemon_t *d, const char *const *args, char *out, size_t cap, bool *timed_out) {
  const char *argv[16] = {"lathe-worker"};
  int na = 1;
  for (; args[na - 1] && na < 15; na++) argv[na] = args[na - 1];
  argv[na] = NULL;
  return run_tool(d->o.worker_path, argv, false, WORKER_TOOL_MS, out, cap, timed_out);
}

/* Runs the worker's tokenizer check on the models in params a and b. */
static bool same_tokenizer(daemon_t *d, const msgpack_object *params, const char *a, const char *b, proto_err_t *e) {
  char pa[PATH_MAX], pb[PATH_MAX], field[80];
  param_str(params, a, pa, sizeof pa), param_str(params, b, pb, sizeof pb);
  snprintf(field, sizeof field, "params.%s", b);
  if (!pa[0] || !pb[0]) return true;
  char out[1024];
  bool timed_out;
  const char *args[] = {"--check-tokenizers", pa, a, pb, b, NULL};
  int status = worker_tool(d, args, out, sizeof out, &timed_out);
  if (status < 0)
    return proto_fail(e, P_INTERNAL, field, "%s: cannot check the tokenizers: %s", field, strerror(errno));
  size_t n = strlen(out);
  while (n && (out[n - 1] == '\n' || out[n - 1] == '\r')) out[--n] = '\0';
  if (timed_out)
    return proto_fail(e, P_BAD_VALUE, field, "%s: the tokenizer check took over %d s", field, WORKER_TOOL_MS / 1000);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 1) return proto_fail(e, P_BAD_VALUE, field, "%s: %s", field, out);
  if (WIFSIGNALED(status))
    return proto_fail(e, P_BAD_VALUE, field, "%s: the tokenizer check died of signal %d on these files", field,
                      WTERMSIG(status));
  return proto_fail(e, P_INTERNAL, field, "%s: the tokenizer check failed: %s", field,
                    out[0] ? out : "no reason given");
}

/* The real path of p, or, when p does not exist, its folder's real path joined with its last name (into out). */
static void resolve(const char *p, char *out) {
  if (realpath(p, out)) return;
  char parent[PATH_MAX], base[PATH_MAX];
  util_copy(parent, p, sizeof parent);
  char *slash = strrchr(parent, '/');
  util_copy(base, slash ? slash + 1 : p, sizeof base);
  if (slash) *slash = '\0';
  char rp[PATH_MAX];
  size_t nr = 0, nb = strlen(base);
  if (!realpath(slash ? (parent[0] ? parent : "/") : ".", rp) || (nr = strlen(rp)) + nb + 2 > PATH_MAX) {
    util_copy(out, p, PATH_MAX);
    return;
  }
  if (nr == 1) nr = 0; /* "/" */
  memcpy(out, rp, nr);
  out[nr] = '/';
  memcpy(out + nr + 1, base, nb + 1);
}

/* Whether path is a folder with an entry, or a file. */
static bool occupied(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return false;
  if (!S_ISDIR(st.st_mode)) return true;
  DIR *dir = opendir(path);
  if (!dir) return true;
  bool any = false;
  for (struct dirent *de; !any && (de = readdir(dir));) any = strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
  closedir(dir);
  return any;
}

/* Whether the real path `real` lies under a folder --allow-path gives key `name`. */
static bool allowed(const daemon_t *d, const char *name, const char *real) {
  for (int i = 0; i < d->o.n_allow; i++) {
    const struct allow_path *a = &d->o.allow[i];
    size_t n = strlen(a->dir);
    if (!strcmp(a->key, name) && !strncmp(real, a->dir, n) && (real[n] == '\0' || real[n] == '/' || n == 1))
      return true;
  }
  return false;
}

/* Every kind: the input paths (every path parameter but output) exist; output is none of them, and an output that
 * exists and is not empty is written into only with force. */
static bool preflight_paths(const daemon_t *d, const kind_t *k, const msgpack_object *params, const char *owner,
                            proto_err_t *e) {
  const char *key = owner && !strncmp(owner, "key:", 4) ? owner + 4 : NULL;
  char out[PATH_MAX] = "", out_real[PATH_MAX] = "";
  param_str(params, "output", out, sizeof out);
  if (out[0]) resolve(out, out_real);
  for (size_t i = 0; i < k->n_params; i++) {
    const kind_param_t *p = &k->params[i];
    if (p->type != KT_PATH || !strcmp(p->key, "output")) continue;
    char path[PATH_MAX], field[80], real[PATH_MAX];
    param_str(params, p->key, path, sizeof path);
    if (!path[0]) continue;
    snprintf(field, sizeof field, "params.%s", p->key);
    resolve(path, real);
    if (key && !allowed(d, key, real))
      return proto_fail(e, P_DENIED, field,
                        "%s: %s is outside the folders key %s may use on this server (lathed --allow-path %s=DIR)",
                        field, path, key, key);
    char why[PATH_MAX + 200];
    if (!util_input_ok(p->key, path, why, sizeof why)) return proto_fail(e, P_BAD_VALUE, field, "%s: %s", field, why);
    if (out_real[0] && !strcmp(real, out_real))
      return proto_fail(e, P_BAD_VALUE, "params.output",
                        "params.output: %s is also the job's %s: the result would overwrite its own input; write "
                        "it elsewhere",
                        out, p->key);
  }
  if (key && out[0] && !allowed(d, key, out_real))
    return proto_fail(e, P_DENIED, "params.output",
                      "params.output: %s is outside the folders key %s may use on this server (lathed --allow-path "
                      "%s=DIR)",
                      out, key, key);
  char why[PATH_MAX + 200];
  if (out[0] && !util_output_ok(out, why, sizeof why))
    return proto_fail(e, P_BAD_VALUE, "params.output", "params.output: %s", why);
  const msgpack_object *force = mp_get(params, "force");
  bool forced = force && force->type == MSGPACK_OBJECT_BOOLEAN && force->via.boolean;
  if (out[0] && !forced && occupied(out))
    return proto_fail(e, P_BAD_VALUE, "params.output",
                      "params.output: %s exists and is not empty; pass --force to write into it (the files this job "
                      "writes are replaced, others stay)",
                      out);
  return true;
}

/* A job pinned to a device, or asking for device memory, needs a worker that fits. */
static bool preflight_device(const daemon_t *d, const msgpack_object *params, proto_err_t *e) {
  char pin[72];
  int64_t mib = 0;
  param_str(params, "device", pin, sizeof pin);
  mp_as_int(mp_get(params, "memory"), &mib);
  if (sched_device_known(d, pin, mib)) return true;
  char list[512] = "";
  size_t at = 0;
  for (int i = 0; i < d->n_slots && at < sizeof list; i++)
    at += (size_t)snprintf(list + at, sizeof list - at, "%s%s (%s, %lld MiB)", i ? ", " : "", d->slots[i].want,
                           d->slots[i].name, (long long)d->slots[i].mib);
  if (!sched_device_known(d, pin, 0))
    return proto_fail(e, P_BAD_VALUE, "params.device",
                      "params.device: no worker of this daemon runs on device %s; its workers' devices: %s", pin, list);
  return proto_fail(e, P_BAD_VALUE, "params.memory",
                    "params.memory: no worker%s%s has a device with %lld MiB; its "
                    "workers' devices: %s",
                    pin[0] ? " on device " : "", pin, (long long)mib, list);
}

bool preflight_files(daemon_t *d, const kind_t *k, const msgpack_object *params, const char *owner, proto_err_t *e) {
  if (!slurm_preflight(d, params, e)) return false;
  bool slurm = sched_params_slurm(d, params);
  if ((!slurm && !preflight_device(d, params, e)) || !preflight_paths(d, k, params, owner, e)) return false;
  int64_t devices = 1;
  mp_as_int(mp_get(params, "devices"), &devices);
  if (devices > 1 && slurm)
    return proto_fail(e, P_BAD_VALUE, "params.devices",
                      "params.devices: a job run under Slurm has its node's one device; run data-parallel jobs on "
                      "lathed's own workers (--executor local)");
  if (!slurm && !sched_devices_known(d, devices))
    return proto_fail(e, P_BAD_VALUE, "params.devices",
                      "params.devices: %lld devices at once, but this daemon has %d worker%s with a device of its own "
                      "(lathe devices lists them; lathed --devices 0,1 names them)",
                      (long long)devices, d->n_slots, d->n_slots == 1 ? "" : "s");
  const kind_files_t *f = kind_files(k);
  if (!f) return true;
  if (f->same_tokenizer[0] && !same_tokenizer(d, params, f->same_tokenizer[0], f->same_tokenizer[1], e)) return false;
  return true;
}
