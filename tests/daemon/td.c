#include "td.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"

void td_sleep_ms(int ms) { nanosleep(&(struct timespec){ms / 1000, (long)(ms % 1000) * 1000000}, NULL); }

static pid_t spawn(td_t *t) {
  const char *argv[40] = {LATHE_BIN_DIR "/lathed", "--socket", t->sock, "--home", t->home};
  int n = 5;
  for (int i = 0; t->args[i] && n < 38; i++) argv[n++] = t->args[i];
  argv[n] = NULL;
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    FILE *f = freopen(t->log, "a", stderr);
    (void)f;
    /* Not inheriting the test's environment choices for the store or socket. */
    unsetenv("LATHE_SOCKET"), unsetenv("LATHE_HOME");
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  return pid;
}

static void set_args(td_t *t, const char *const *extra) {
  int n = 0;
  for (int i = 0; extra && extra[i] && n < 15; i++) t->args[n++] = extra[i];
  t->args[n] = NULL;
}

void td_prepare(td_t *t) {
  if (t->dir[0]) return;
  snprintf(t->dir, sizeof t->dir, "/tmp/lathe-test-XXXXXX");
  cr_assert_not_null(mkdtemp(t->dir), "mkdtemp: %s", strerror(errno));
  snprintf(t->sock, sizeof t->sock, "%s/run/lathed.sock", t->dir);
  snprintf(t->home, sizeof t->home, "%s/home", t->dir);
  snprintf(t->log, sizeof t->log, "%s/lathed.log", t->dir);
}

void td_restart(td_t *t) {
  t->pid = spawn(t);
  /* Serving once it holds the lock and answers a ping. */
  for (int i = 0; i < 400; i++) {
    int st;
    if (waitpid(t->pid, &st, WNOHANG) == t->pid) {
      t->pid = 0;
      cr_assert_fail("lathed exited at start (status %d); see %s", st, t->log);
    }
    if (lc_daemon_pid(t->sock) == t->pid) {
      lc_t *c = td_client(t);
      mpw_t w;
      lc_begin(c, &w, "ping");
      mp_doc_t *d = lc_call(c, &w, NULL, NULL);
      bool ok = d != NULL;
      mp_doc_destroy(&d);
      lc_destroy(&c);
      if (ok) return;
    }
    td_sleep_ms(25);
  }
  cr_assert_fail("lathed did not start serving; see %s", t->log);
}

void td_start(td_t *t, const char *const *extra) {
  td_prepare(t);
  set_args(t, extra);
  td_restart(t);
}

int td_start_expect_exit(td_t *t, const char *const *extra, int timeout_ms) {
  td_prepare(t);
  set_args(t, extra);
  pid_t pid = spawn(t);
  for (int waited = 0; waited < timeout_ms; waited += 20) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    td_sleep_ms(20);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

void td_kill9(td_t *t) {
  cr_assert(t->pid > 0);
  kill(t->pid, SIGKILL);
  waitpid(t->pid, NULL, 0);
  t->pid = 0;
}

void td_term(td_t *t, int timeout_ms) {
  cr_assert(t->pid > 0);
  kill(t->pid, SIGTERM);
  for (int waited = 0; waited < timeout_ms; waited += 20) {
    int st;
    if (waitpid(t->pid, &st, WNOHANG) == t->pid) {
      t->pid = 0;
      cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "lathed exited with status %d after SIGTERM", st);
      return;
    }
    td_sleep_ms(20);
  }
  cr_assert_fail("lathed did not exit within %d ms of SIGTERM", timeout_ms);
}

void td_cleanup(td_t *t) {
  if (t->pid > 0) {
    kill(t->pid, SIGTERM);
    for (int i = 0; i < 250 && waitpid(t->pid, NULL, WNOHANG) != t->pid; i++) td_sleep_ms(20);
    kill(t->pid, SIGKILL);
    waitpid(t->pid, NULL, 0);
    t->pid = 0;
  }
  if (t->dir[0] && !getenv("LATHE_TEST_KEEP")) util_rm_rf(t->dir, NULL);
}

lc_t *td_client(const td_t *t) {
  lc_opts_t o = {.socket = t->sock, .timeout_ms = 10000};
  lt_err_t err = {0};
  lc_t *c = lc_new(&o, &err);
  cr_assert_not_null(c, "%s", err.msg);
  return c;
}

int64_t td_sleep(lc_t *c, int64_t steps, int64_t delay_ms, ...) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  mpw_kint(&w, "steps", steps);
  mpw_kint(&w, "delay_ms", delay_ms);
  va_list ap;
  va_start(ap, delay_ms);
  const char *k;
  while ((k = va_arg(ap, const char *))) {
    int64_t v = va_arg(ap, int64_t);
    mpw_str(&w, k);
    if (!strcmp(k, "ignore_cancel"))
      mpw_bool(&w, v != 0);
    else
      mpw_int(&w, v);
  }
  va_end(ap);
  mpw_end(&w);
  proto_err_t pe = {0};
  lt_err_t err = {0};
  int64_t id = lc_submit(c, "sleep", w.sb.data, w.sb.size, NULL, 0, false, NULL, &pe, &err);
  mpw_free(&w);
  cr_assert_gt(id, 0, "submit: %s", err.msg);
  return id;
}

mp_doc_t *td_show(lc_t *c, int64_t id) {
  lt_err_t err = {0};
  mp_doc_t *d = lc_call_id(c, "show", id, NULL, &err);
  cr_assert_not_null(d, "show %lld: %s", (long long)id, err.msg);
  return d;
}

const char *td_state(lc_t *c, int64_t id, char *buf, size_t n) {
  mp_doc_t *d = td_show(c, id);
  cr_assert(mp_str_copy(mp_get(mp_get(mp_doc_root(d), "job"), "state"), buf, n));
  mp_doc_destroy(&d);
  return buf;
}

void td_wait_state(lc_t *c, int64_t id, const char *want, int timeout_ms) {
  char st[16] = "";
  for (int waited = 0; waited <= timeout_ms; waited += 20) {
    if (!strcmp(td_state(c, id, st, sizeof st), want)) return;
    td_sleep_ms(20);
  }
  cr_assert_fail("job %lld is %s, not %s, after %d ms", (long long)id, st, want, timeout_ms);
}

mp_doc_t *td_status(lc_t *c) {
  mpw_t w;
  lc_begin(c, &w, "status");
  lt_err_t err = {0};
  mp_doc_t *d = lc_call(c, &w, NULL, &err);
  cr_assert_not_null(d, "status: %s", err.msg);
  return d;
}

int64_t td_int(const msgpack_object *m, const char *key) {
  int64_t v = -1;
  const msgpack_object *o = mp_get(m, key);
  if (!o || !mp_as_int(o, &v)) return -1;
  return v;
}

bool td_has(const msgpack_object *m, const char *key, const char *needle) {
  char buf[1024];
  return mp_str_copy(mp_get(m, key), buf, sizeof buf) && strstr(buf, needle) != NULL;
}

pid_t td_worker_pid(lc_t *c) {
  mp_doc_t *d = td_status(c);
  int64_t pid = td_int(mp_get(mp_doc_root(d), "worker"), "pid");
  mp_doc_destroy(&d);
  return (pid_t)(pid > 0 ? pid : 0);
}

static bool record(void *user, const msgpack_object *ev) {
  evlog_t *log = user;
  const msgpack_object *data = mp_get(ev, "data");
  if (log->n < 8192) {
    log->seq[log->n] = td_int(ev, "seq");
    if (!mp_str_copy(mp_get(ev, "type"), log->type[log->n], sizeof log->type[0])) log->type[log->n][0] = '\0';
    if (!strcmp(log->type[log->n], "state") && log->n_states < 64) {
      mp_str_copy(mp_get(data, "state"), log->state[log->n_states], sizeof log->state[0]);
      if (!mp_str_copy(mp_get(data, "reason"), log->reason[log->n_states], sizeof log->reason[0]))
        log->reason[log->n_states][0] = '\0';
      log->n_states++;
    }
    if (!strcmp(log->type[log->n], "progress")) log->last_step = td_int(data, "step");
    log->n++;
  }
  return true;
}

void td_follow(lc_t *c, int64_t id, int64_t after, evlog_t *log) {
  memset(log, 0, sizeof *log);
  proto_err_t pe = {0};
  lt_err_t err = {0};
  cr_assert_eq(lc_follow(c, id, after, record, log, NULL, NULL, &pe, &err), LT_OK, "follow %lld: %s", (long long)id,
               err.msg);
}

void td_assert_in_order(const evlog_t *log, int64_t after) {
  for (int i = 0; i < log->n; i++)
    cr_assert_eq(log->seq[i], after + 1 + i, "event %d has seq %lld, want %lld", i, (long long)log->seq[i],
                 (long long)(after + 1 + i));
}

void td_cli_setup(td_t *t) {
  memset(t, 0, sizeof *t);
  td_prepare(t);
  setenv("LATHE_SOCKET", t->sock, 1);
  setenv("LATHE_HOME", t->home, 1);
  unsetenv("LATHE_NO_AUTOSTART");
  if (getenv("LATHE_TEST_CACHE_DIR")) setenv("LATHE_CACHE_DIR", getenv("LATHE_TEST_CACHE_DIR"), 1);
}

void td_cli_teardown(td_t *t) {
  char cmd[PATH_MAX + 64];
  snprintf(cmd, sizeof cmd, "%s/lathe daemon stop >/dev/null 2>&1", LATHE_BIN_DIR);
  if (system(cmd) != 0) cr_log_warn("lathe daemon stop failed");
  td_cleanup(t);
}

int td_shell(char *out, size_t n, const char *cmdline) {
  FILE *p = popen(cmdline, "r");
  cr_assert_not_null(p, "popen: %s", cmdline);
  size_t got = fread(out, 1, n - 1, p);
  out[got] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

bool td_same_file(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  cr_assert(fa && fb, "cannot open %s or %s", a, b);
  bool same = true;
  int ca, cb;
  do {
    ca = fgetc(fa);
    cb = fgetc(fb);
    same = ca == cb;
  } while (same && ca != EOF);
  fclose(fa), fclose(fb);
  return same;
}

void td_write_rows(const td_t *t, char *path, size_t n, const char *name, int rows, int salt) {
  snprintf(path, n, "%s/%s.jsonl", t->dir, name);
  FILE *f = fopen(path, "w");
  cr_assert(f != NULL);
  static const char *const words[] = {"the", "lord", "said", "unto", "moses", "and", "aaron", "speak"};
  for (int i = 0; i < rows; i++) {
    int j = i + salt;
    if (i % 3 == 2)
      fprintf(f, "{\"prompt\": \"%s %s\", \"completion\": \" %s %s %s\"}\n", words[j % 8], words[(j + 3) % 8],
              words[(j + 1) % 8], words[(j * 5) % 8], words[(j + 6) % 8]);
    else
      fprintf(f, "{\"text\": \"%s %s %s %s\"}\n", words[j % 8], words[(j * 3) % 8], words[(j + 2) % 8],
              words[(j * 7) % 8]);
  }
  cr_assert_eq(fclose(f), 0);
}

int64_t td_submit(lc_t *c, const char *kind, const char *const *kv, const char *const *ik, const int64_t *iv,
                  const char *const *fk, const double *fv, proto_err_t *pe_out) {
  mpw_t w;
  mpw_init(&w);
  mpw_map(&w);
  for (int i = 0; kv[i]; i += 2) {
    mpw_str(&w, kv[i]);
    if (!strcmp(kv[i + 1], "true") || !strcmp(kv[i + 1], "false"))
      mpw_bool(&w, !strcmp(kv[i + 1], "true"));
    else
      mpw_str(&w, kv[i + 1]);
  }
  for (int i = 0; ik && ik[i]; i++) mpw_str(&w, ik[i]), mpw_int(&w, iv[i]);
  for (int i = 0; fk && fk[i]; i++) mpw_str(&w, fk[i]), mpw_double(&w, fv[i]);
  mpw_end(&w);
  proto_err_t pe = {0};
  lt_err_t err = {0};
  int64_t id = lc_submit(c, kind, w.sb.data, w.sb.size, NULL, 0, false, NULL, &pe, &err);
  mpw_free(&w);
  if (pe_out)
    *pe_out = pe;
  else
    cr_assert_gt(id, 0, "submit: %s %s", err.msg, pe.msg);
  return id;
}
