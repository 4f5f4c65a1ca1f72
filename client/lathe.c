/* lathe: the command-line client of lathed. `lathe help` lists the commands; job kinds and their parameters
 * come from the kind table (jobs/kinds.def). Starts a daemon when none runs (unless --no-autostart or
 * LATHE_NO_AUTOSTART=1). Text on a terminal; JSON lines with --json or when stdout is not a terminal. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "client/lc.h"
#include "common/util.h"
#include "jobs/kind.h"

/* Exit statuses: 0 success (for run/watch: the job succeeded), 1 job failed or was cancelled, 2 usage (also a
 * submission refused for a parameter or a file), 3 daemon unreachable or request refused otherwise, 130 detached
 * with Ctrl-C. */
enum { EXIT_JOB_FAILED = 1, EXIT_USAGE = 2, EXIT_DAEMON = 3, EXIT_DETACHED = 130 };

typedef struct cli {
  lc_opts_t o;
  bool json;  /* --json */
  bool lines; /* JSON lines for events: --json or stdout not a terminal */
  bool autostart;
  const char *socket_flag;
  const char *devices; /* `daemon start --devices LIST`: passed to lathed */
  lc_t *c;
} cli_t;

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

/* Rewrites the daemon's field names as the flags a user types: "params.max_tokens" becomes "--max-tokens". */
static void flagify(char *msg) {
  for (char *p = msg; (p = strstr(p, "params."));) {
    size_t n = 7;
    while (p[n] == '_' || (p[n] >= 'a' && p[n] <= 'z') || (p[n] >= '0' && p[n] <= '9')) n++;
    if (n == 7) {
      p += 7;
      continue;
    }
    p[0] = '-', p[1] = '-';
    memmove(p + 2, p + 7, strlen(p + 7) + 1);
    for (char *q = p + 2; q < p + n - 5; q++)
      if (*q == '_') *q = '-';
    p += n - 5;
  }
}

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  flagify(msg);
  fprintf(stderr, "lathe: %s\n", msg);
  return code;
}

/* A parameter key as the flag a user types: underscores become dashes, in place. */
static char *dashed(char *s) {
  for (char *q = s; *q; q++)
    if (*q == '_') *q = '-';
  return s;
}

/* Edit distance of a and b (short words), for did-you-mean. */
static size_t distance(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b), row[65];
  if (na > 64 || nb > 64) return SIZE_MAX;
  for (size_t j = 0; j <= nb; j++) row[j] = j;
  for (size_t i = 1; i <= na; i++) {
    size_t prev = row[0];
    row[0] = i;
    for (size_t j = 1; j <= nb; j++) {
      size_t cur = row[j], sub = prev + (a[i - 1] != b[j - 1]);
      row[j] = sub < row[j] + 1 ? sub : row[j] + 1;
      if (row[j - 1] + 1 < row[j]) row[j] = row[j - 1] + 1;
      prev = cur;
    }
  }
  return row[nb];
}

/* The candidate closest to word, or NULL when none is within a third of its length (at least 2 edits). */
static const char *closest(const char *word, const char *const *cands, size_t n) {
  const char *best = NULL;
  size_t best_d = strlen(word) / 3 > 2 ? strlen(word) / 3 : 2;
  for (size_t i = 0; i < n; i++) {
    size_t d = distance(word, cands[i]);
    if (d <= best_d && (!best || d < distance(word, best))) best = cands[i];
  }
  return best;
}

/* The job kind whose name is closest to word, or NULL (closest()). */
static const char *closest_kind(const char *word) {
  const char *names[64];
  size_t n = 0;
  for (size_t i = 0; i < kind_count() && n < 64; i++) names[n++] = kind_at(i)->name;
  return closest(word, names, n);
}

/* ---- msgpack to JSON ---- */

static json_t *to_json(const msgpack_object *o) {
  switch (o->type) {
  case MSGPACK_OBJECT_NIL: return json_null();
  case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    return o->via.u64 <= INT64_MAX ? json_integer((json_int_t)o->via.u64) : json_real((double)o->via.u64);
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer(o->via.i64);
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
  case MSGPACK_OBJECT_STR: {
    json_t *s = json_stringn(o->via.str.ptr, o->via.str.size);
    if (s) return s;
    /* not UTF-8: replace the offending bytes */
    char *copy = malloc(o->via.str.size + 1);
    if (!copy) return json_null();
    for (uint32_t i = 0; i < o->via.str.size; i++) {
      unsigned char ch = (unsigned char)o->via.str.ptr[i];
      copy[i] = ch < 0x80 && ch ? (char)ch : '?';
    }
    s = json_stringn(copy, o->via.str.size);
    free(copy);
    return s ? s : json_null();
  }
  case MSGPACK_OBJECT_ARRAY: {
    json_t *a = json_array();
    for (uint32_t i = 0; i < o->via.array.size; i++) json_array_append_new(a, to_json(&o->via.array.ptr[i]));
    return a;
  }
  case MSGPACK_OBJECT_MAP: {
    json_t *m = json_object();
    for (uint32_t i = 0; i < o->via.map.size; i++) {
      const msgpack_object *k = &o->via.map.ptr[i].key;
      if (k->type != MSGPACK_OBJECT_STR) continue;
      char key[256];
      snprintf(key, sizeof key, "%.*s", (int)k->via.str.size, k->via.str.ptr);
      json_object_set_new(m, key, to_json(&o->via.map.ptr[i].val));
    }
    return m;
  }
  default: return json_null();
  }
}

/* Prints o to f as one line of JSON (or indented with pretty). */
static void print_json_to(FILE *f, const msgpack_object *o, bool pretty) {
  json_t *j = to_json(o);
  json_dumpf(j, f, (pretty ? JSON_INDENT(2) : JSON_COMPACT) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
  fputc('\n', f);
  fflush(f);
  json_decref(j);
}

/* Prints o to stdout as one line of JSON (or indented with pretty). */
static void print_json(const msgpack_object *o, bool pretty) { print_json_to(stdout, o, pretty); }

static int64_t get_int(const msgpack_object *m, const char *k) {
  int64_t v = 0;
  const msgpack_object *o = mp_get(m, k);
  if (o) mp_as_int(o, &v);
  return v;
}

static bool get_bool(const msgpack_object *m, const char *k) {
  const msgpack_object *o = mp_get(m, k);
  return o && o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean;
}

static const char *get_str(const msgpack_object *m, const char *k, char *buf, size_t n) {
  if (!mp_str_copy(mp_get(m, k), buf, n)) buf[0] = '\0';
  return buf;
}

/* ---- the daemon ---- */

/* Starts lathed in the background (like gpg-agent): detached in its own session, logging to lathed.log in the log
 * folder (util_default_log_dir), and waits until it holds its lock. */
static int start_daemon(cli_t *cli) {
  char home[PATH_MAX], log[PATH_MAX + 16], dir[PATH_MAX - 16], lathed[PATH_MAX];
  lt_err_t err = {0};
  if (util_default_log_dir(home, sizeof home, &err) || util_mkdir_p(home, 0700, &err))
    return fail(EXIT_DAEMON, "%s", err.msg);
  snprintf(log, sizeof log, "%s/lathed.log", home);
  snprintf(lathed, sizeof lathed, "lathed");
  if (util_exe_dir(dir, sizeof dir)) {
    char beside[PATH_MAX];
    snprintf(beside, sizeof beside, "%s/lathed", dir);
    if (access(beside, X_OK) == 0) util_copy(lathed, beside, sizeof lathed);
  }
  pid_t pid = fork();
  if (pid < 0) return fail(EXIT_DAEMON, "fork: %s", strerror(errno));
  if (pid == 0) {
    setsid();
    if (fork() != 0) _exit(0);
    FILE *f = freopen(log, "a", stderr);
    (void)f;
    int fd = dup(2);
    if (fd >= 0) dup2(fd, 1), close(fd);
    if (!freopen("/dev/null", "r", stdin)) _exit(127);
    const char *args[8] = {"lathed"};
    int n = 1;
    if (cli->socket_flag) args[n++] = "--socket", args[n++] = cli->socket_flag;
    if (cli->devices) args[n++] = "--devices", args[n++] = cli->devices;
    args[n] = NULL;
    execvp(lathed, (char *const *)args);
    fprintf(stderr, "lathe: cannot run %s: %s\n", lathed, strerror(errno));
    _exit(127);
  }
  waitpid(pid, NULL, 0);
  for (int i = 0; i < 200; i++) {
    if (lc_daemon_pid(cli->o.socket)) return 0;
    nanosleep(&(struct timespec){0, 50 * 1000000}, NULL);
  }
  return fail(EXIT_DAEMON, "lathed did not start; see %s", log);
}

/* Connects, starting a daemon first when none runs and that is allowed. */
static int connect_daemon(cli_t *cli) {
  if (cli->c) return 0;
  bool tcp = cli->o.connect && *cli->o.connect;
  if (!tcp && !lc_daemon_pid(cli->o.socket)) {
    if (!cli->autostart) return fail(EXIT_DAEMON, "no lathed is running (autostart is off: run `lathe daemon start`)");
    int rc = start_daemon(cli);
    if (rc) return rc;
  }
  lt_err_t err = {0};
  if (!(cli->c = lc_new(&cli->o, &err))) return fail(EXIT_DAEMON, "%s", err.msg);
  return 0;
}

/* Sends a request built in w and returns the reply, or NULL after printing the error (*rc set). */
static mp_doc_t *call(cli_t *cli, mpw_t *w, int *rc) {
  proto_err_t pe = {0};
  lt_err_t err = {0};
  mp_doc_t *d = lc_call(cli->c, w, &pe, &err);
  if (!d) *rc = fail(EXIT_DAEMON, "%s", pe.code ? pe.msg : err.msg);
  return d;
}

static bool parse_id(const char *s, int64_t *id) {
  char *end;
  long long v = s ? strtoll(s, &end, 10) : 0;
  if (!s || !*s || *end || v <= 0) return false;
  *id = v;
  return true;
}

/* ---- job kinds: help and arguments from the table ---- */

static void kind_help(FILE *f, const kind_t *k) {
  fprintf(f, "lathe run|submit %s [--PARAM VALUE ...] [--priority N] [--hold] [--sid ID]\n  %s\n", k->name, k->summary);
  fprintf(f, "  on a crash: %s\n",
          k->policy == KIND_RESTART  ? "restarts from scratch"
          : k->policy == KIND_RESUME ? "resumes from its last checkpoint"
                                     : "fails with the reason");
  for (size_t i = 0; i < k->n_params; i++) {
    const kind_param_t *p = &k->params[i];
    char flag[64];
    snprintf(flag, sizeof flag, "--%s", p->key);
    dashed(flag);
    snprintf(flag + strlen(flag), sizeof flag - strlen(flag), " %s", kind_type_str(p->type));
    fprintf(f, "  %-26s %s", flag, p->help);
    if (p->required)
      fprintf(f, " (required)\n");
    else
      fprintf(f, " (default %s)\n", *p->def ? p->def : "\"\"");
  }
}

static void kinds_help(FILE *f) {
  fprintf(f, "job kinds:\n");
  for (size_t i = 0; i < kind_count(); i++) fprintf(f, "  %-13s %s\n", kind_at(i)->name, kind_at(i)->summary);
  fprintf(f, "`lathe help KIND` shows a kind's parameters.\n");
}

typedef struct submit_args {
  const kind_t *k;
  mpw_t params;
  int64_t priority;
  bool hold;
  const char *sid;
} submit_args_t;

/* Parses `KIND [--param value ...] [--priority N] [--hold] [--sid ID]` into a params map. */
static int parse_submit(int argc, char **argv, submit_args_t *a) {
  if (argc < 1) {
    kinds_help(stderr);
    return EXIT_USAGE;
  }
  a->k = kind_find(argv[0], strlen(argv[0]));
  if (!a->k) {
    const char *near = closest_kind(argv[0]);
    if (near) return fail(EXIT_USAGE, "no job kind '%s'; did you mean '%s'?", argv[0], near);
    fprintf(stderr, "lathe: no job kind '%s'\n", argv[0]);
    kinds_help(stderr);
    return EXIT_USAGE;
  }
  mpw_init(&a->params);
  mpw_map(&a->params);
  /* A list parameter (--prompt A --prompt B) collects every occurrence; written once after the loop. */
  const kind_param_t *list_p[8];
  const char *list_v[8][KIND_MAX_LIST];
  size_t list_n[8] = {0}, n_lists = 0;
  bool device_given = false;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
      kind_help(stdout, a->k);
      exit(0);
    }
    if (strncmp(arg, "--", 2) != 0)
      return fail(EXIT_USAGE, "unexpected argument '%s' (parameters are --KEY VALUE)", arg);
    char key[64];
    const char *eq = strchr(arg, '='), *value = NULL;
    snprintf(key, sizeof key, "%.*s", (int)(eq ? (size_t)(eq - arg - 2) : strlen(arg + 2)), arg + 2);
    for (char *p = key; *p; p++)
      if (*p == '-') *p = '_';
    if (eq) value = eq + 1;
    if (!strcmp(key, "hold") && !eq) {
      a->hold = true;
      continue;
    }
    const kind_param_t *p = kind_param_find(a->k, key);
    device_given |= !strcmp(key, "device");
    bool is_bool = p && p->type == KT_BOOL;
    if (!value && is_bool) {
      const char *next = i + 1 < argc ? argv[i + 1] : NULL;
      bool next_is_value = next && (!strcmp(next, "true") || !strcmp(next, "false") || !strcmp(next, "yes") ||
                                    !strcmp(next, "no") || !strcmp(next, "1") || !strcmp(next, "0"));
      value = next_is_value ? argv[++i] : "true";
    }
    if (!value) {
      if (i + 1 >= argc) return fail(EXIT_USAGE, "--%s needs a value", key);
      value = argv[++i];
    }
    if (!strcmp(key, "priority")) {
      char *end;
      a->priority = strtoll(value, &end, 10);
      if (!*value || *end) return fail(EXIT_USAGE, "--priority needs an integer");
    } else if (!strcmp(key, "sid")) {
      a->sid = value;
    } else if (!p) {
      const char *names[64];
      size_t nf = 0;
      for (size_t j = 0; j < a->k->n_params && nf < 64; j++) names[nf++] = a->k->params[j].key;
      const char *near = closest(key, names, nf);
      char shown[64], near_shown[64] = "";
      snprintf(shown, sizeof shown, "%s", key);
      if (near) snprintf(near_shown, sizeof near_shown, "%s", near);
      dashed(shown), dashed(near_shown);
      if (near)
        return fail(EXIT_USAGE, "kind %s has no parameter --%s; did you mean --%s?", a->k->name, shown, near_shown);
      fprintf(stderr, "lathe: kind %s has no parameter --%s\n", a->k->name, shown);
      kind_help(stderr, a->k);
      return EXIT_USAGE;
    } else if (p->type == KT_STRS) {
      size_t j = 0;
      while (j < n_lists && list_p[j] != p) j++;
      if (j == n_lists) {
        if (n_lists == 8) return fail(EXIT_USAGE, "too many list parameters");
        list_p[n_lists++] = p;
      }
      if (list_n[j] == KIND_MAX_LIST) return fail(EXIT_USAGE, "--%s given more than %d times", key, KIND_MAX_LIST);
      list_v[j][list_n[j]++] = value;
    } else {
      proto_err_t e;
      mpw_str(&a->params, key);
      if (!kind_parse_text(p, value, &a->params, &e)) return fail(EXIT_USAGE, "%s", e.msg);
    }
  }
  /* LATHE_DEVICE in the client's environment reaches the job unless --device names one. */
  const char *env_dev = getenv("LATHE_DEVICE");
  if (!device_given && env_dev && *env_dev) {
    proto_err_t e;
    mpw_str(&a->params, "device");
    if (!kind_parse_text(kind_param_find(a->k, "device"), env_dev, &a->params, &e))
      return fail(EXIT_USAGE, "LATHE_DEVICE: %s", e.msg);
  }
  for (size_t j = 0; j < n_lists; j++) {
    mpw_str(&a->params, list_p[j]->key);
    mpw_array(&a->params);
    for (size_t k = 0; k < list_n[j]; k++) mpw_str(&a->params, list_v[j][k]);
    mpw_end(&a->params);
  }
  mpw_end(&a->params);
  /* Checked here too so that a typo is reported before anything is sent (the daemon checks again). */
  proto_err_t e;
  mp_doc_t *d = mp_doc_parse(a->params.sb.data, a->params.sb.size, &e);
  mpw_t norm;
  mpw_init(&norm);
  bool ok = d && kind_params_normalise(a->k, mp_doc_root(d), &norm, &e);
  mpw_free(&norm);
  mp_doc_destroy(&d);
  if (!ok && !device_given && !strcmp(e.field, "params.device"))
    return fail(EXIT_USAGE, "LATHE_DEVICE=%s: not a device index or UUID (lathe-devices lists them)", env_dev);
  return ok ? 0 : fail(EXIT_USAGE, "%s", e.msg);
}

static int64_t submit(cli_t *cli, submit_args_t *a, int *rc) {
  proto_err_t pe = {0};
  lt_err_t err = {0};
  bool existing = false;
  int64_t id = lc_submit(cli->c, a->k->name, a->params.sb.data, a->params.sb.size, a->sid, a->priority, a->hold,
                         &existing, &pe, &err);
  mpw_free(&a->params);
  /* A submission the daemon refuses for what it says (a parameter, a file it names) is the user's to fix: a usage
   * error; anything else (no daemon, a full queue, a store failure) is the daemon's. */
  bool usage = pe.code == P_BAD_VALUE || pe.code == P_OUT_OF_RANGE || pe.code == P_UNKNOWN_PARAM ||
               pe.code == P_MISSING_PARAM || pe.code == P_UNKNOWN_KIND || pe.code == P_BAD_TYPE;
  if (!id) *rc = fail(usage ? EXIT_USAGE : EXIT_DAEMON, "%s", pe.code ? pe.msg : err.msg);
  return id;
}

/* ---- following a job ---- */

/* Curves a job sends as output records {"plot": XKEY, XKEY: integer, NAME: number, ...} (steer-layers' per-layer
 * correlations): printed as table rows as they come, drawn in the terminal when the job ends. */
#define CURVE_POINTS 256
#define CURVE_SERIES 8
#define CHART_ROWS 10
typedef struct curves {
  char xkey[32];
  size_t n, n_series;
  int64_t x[CURVE_POINTS];
  char name[CURVE_SERIES][32];
  double y[CURVE_SERIES][CURVE_POINTS];
} curves_t;

/* One prompt's text as a generate job streams it: what has come, and how much of it is printed. */
typedef struct stream {
  char *buf;
  size_t n, printed;
  bool done;
} stream_t;

/* Without a terminal or --json, `run` and `watch` print a progress line this often at most. */
#define LINE_EVERY_MS 2000

typedef struct follow {
  cli_t *cli;
  stream_t *items; /* generated texts streaming in (`text` events), printed prompt by prompt */
  uint32_t n_items, cur;
  bool streaming; /* a text has started: progress stays off the terminal it shares */
  /* JSON lines on a non-terminal without --json: progress at most every LINE_EVERY_MS, metrics left to the log */
  bool quiet_lines;
  int64_t line_last_mono;
  int64_t id;
  bool bar; /* drawing a progress bar on a terminal */
  bool bar_drawn;
  bool logs_only; /* `logs`: print every event as a line, no bar */
  FILE *ev;       /* where events go: stdout for `logs` (they are what it prints), else stderr (results: stdout) */
  char final[16];
  char reason[512];
  int64_t t0, step0; /* first progress seen, for the rate */
  /* The latest progress and up to 3 of the job's figures (loss, eval loss, ...), shown on the one bar line. */
  int64_t step, total, t_last;
  char unit[32];
  char mname[3][24];
  double mval[3];
  int n_m;
  curves_t *curves; /* NULL until a plot record comes */
} follow_t;

static void fmt_time(int64_t ms, char *buf, size_t n) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  localtime_r(&t, &tm);
  size_t len = strftime(buf, n, "%H:%M:%S", &tm);
  snprintf(buf + len, n - len, ".%03d", (int)(ms % 1000));
}

static void fmt_dur(double s, char *buf, size_t n) {
  if (!isfinite(s) || s < 0)
    snprintf(buf, n, "?");
  else if (s >= 3600)
    snprintf(buf, n, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
  else
    snprintf(buf, n, "%d:%02d", (int)s / 60, (int)s % 60);
}

static void clear_bar(follow_t *f) {
  if (f->bar_drawn) fputs("\r\033[K", f->ev);
  f->bar_drawn = false;
}

/* Draws the bar line from the latest progress and figures: step/N, the figures, the rate and the time left. */
static void redraw_bar(follow_t *f) {
  double secs = (double)(f->t_last - f->t0) / 1000.0;
  double rate = secs > 0 ? (double)(f->step - f->step0) / secs : NAN;
  char eta[32] = "?", line[512], figs[160] = "";
  if (f->total > 0 && rate > 0) fmt_dur((double)(f->total - f->step) / rate, eta, sizeof eta);
  int width = 24, fill = f->total > 0 ? (int)(width * f->step / f->total) : 0;
  char bar[64];
  for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
  bar[width] = '\0';
  for (int i = 0, at = 0; i < f->n_m && at < (int)sizeof figs; i++)
    at += snprintf(figs + at, sizeof figs - (size_t)at, "  %s %.4g", f->mname[i], f->mval[i]);
  if (isfinite(rate))
    snprintf(line, sizeof line, "job %lld [%s] %lld/%lld %s%s  %.1f %s/s  ETA %s", (long long)f->id, bar,
             (long long)f->step, (long long)f->total, f->unit, figs, rate, f->unit, eta);
  else
    snprintf(line, sizeof line, "job %lld [%s] %lld/%lld %s%s", (long long)f->id, bar, (long long)f->step,
             (long long)f->total, f->unit, figs);
  fprintf(f->ev, "\r\033[K%s", line);
  fflush(f->ev);
  f->bar_drawn = true;
}

static void draw_bar(follow_t *f, const msgpack_object *ev) {
  const msgpack_object *data = mp_get(ev, "data");
  f->step = get_int(data, "step"), f->total = get_int(data, "total"), f->t_last = get_int(ev, "time");
  get_str(data, "unit", f->unit, sizeof f->unit);
  if (!f->t0) f->t0 = f->t_last, f->step0 = f->step;
  redraw_bar(f);
}

/* A metric on a terminal: its latest value joins the bar (the first three names that are figures of the run, not
 * its pace), instead of a line of its own; the log and the result keep every value. */
static void bar_metric(follow_t *f, const msgpack_object *ev) {
  const msgpack_object *data = mp_get(ev, "data"), *v = mp_get(data, "value");
  char name[24];
  get_str(data, "name", name, sizeof name);
  static const char *const pace[] = {"lr", "eta_s", "tokens_per_s", "grad_norm", "kid_changed"};
  for (size_t i = 0; i < sizeof pace / sizeof pace[0]; i++)
    if (!strcmp(name, pace[i])) return;
  double x = v && (v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32)
                 ? v->via.f64
                 : (double)get_int(data, "value");
  int k = 0;
  while (k < f->n_m && strcmp(f->mname[k], name)) k++;
  if (k == f->n_m && f->n_m == 3) return;
  if (k == f->n_m) snprintf(f->mname[f->n_m++], sizeof f->mname[0], "%s", name);
  f->mval[k] = x;
  if (f->bar_drawn) redraw_bar(f);
}

/* One line describing an event (text mode). */
static void print_event_line(follow_t *f, const msgpack_object *ev) {
  const msgpack_object *data = mp_get(ev, "data");
  char type[16], when[32], a[512], b[128];
  get_str(ev, "type", type, sizeof type);
  fmt_time(get_int(ev, "time"), when, sizeof when);
  clear_bar(f);
  fprintf(f->ev, "%s #%-4lld ", when, (long long)get_int(ev, "seq"));
  if (!strcmp(type, "state")) {
    get_str(data, "reason", a, sizeof a);
    fprintf(f->ev, "%s%s%s\n", get_str(data, "state", b, sizeof b), *a ? ": " : "", a);
  } else if (!strcmp(type, "progress")) {
    fprintf(f->ev, "progress %lld/%lld %s\n", (long long)get_int(data, "step"), (long long)get_int(data, "total"),
            get_str(data, "unit", b, sizeof b));
  } else if (!strcmp(type, "log")) {
    fprintf(f->ev, "%s\n", get_str(data, "msg", a, sizeof a));
  } else if (!strcmp(type, "metric")) {
    const msgpack_object *v = mp_get(data, "value");
    fprintf(f->ev, "metric %s = %g (step %lld)\n", get_str(data, "name", b, sizeof b),
            v && (v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32) ? v->via.f64 : 0.0,
            (long long)get_int(data, "step"));
  } else if (!strcmp(type, "artifact")) {
    fprintf(f->ev, "artifact %s: %s\n", get_str(data, "name", b, sizeof b), get_str(data, "path", a, sizeof a));
  } else if (!strcmp(type, "text")) {
    fprintf(f->ev, "text %lld%s: %s\n", (long long)get_int(data, "item"), get_bool(data, "done") ? " (end)" : "",
            get_str(data, "text", a, sizeof a));
  } else {
    fprintf(f->ev, "%s\n", type);
  }
  fflush(f->ev);
}

static bool is_number(const msgpack_object *o) {
  return o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64 ||
         o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
}

static double number(const msgpack_object *o) {
  if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64) return o->via.f64;
  int64_t v = 0;
  mp_as_int(o, &v);
  return (double)v;
}

/* A plot record: prints it as a table row (the header first) and keeps its point. False when it is not one. */
static bool plot_point(follow_t *f, const msgpack_object *data) {
  const msgpack_object *pk = mp_get(data, "plot");
  char xkey[32];
  if (!pk || !mp_str_copy(pk, xkey, sizeof xkey)) return false;
  const msgpack_object *xo = mp_get(data, xkey);
  if (!xo || !is_number(xo)) return false;
  if (!f->curves && !(f->curves = calloc(1, sizeof *f->curves))) return false;
  curves_t *c = f->curves;
  bool first = c->n == 0 && c->n_series == 0;
  if (first) snprintf(c->xkey, sizeof c->xkey, "%s", xkey);
  if (c->n == CURVE_POINTS || strcmp(c->xkey, xkey) != 0) return false;
  c->x[c->n] = (int64_t)number(xo);
  for (size_t s = 0; s < CURVE_SERIES; s++) c->y[s][c->n] = NAN;
  for (uint32_t i = 0; i < data->via.map.size; i++) {
    const msgpack_object *k = &data->via.map.ptr[i].key, *v = &data->via.map.ptr[i].val;
    char name[32];
    if (!mp_str_copy(k, name, sizeof name) || !strcmp(name, xkey) || !strcmp(name, "plot")) continue;
    size_t s = 0;
    while (s < c->n_series && strcmp(c->name[s], name) != 0) s++;
    if (s == c->n_series) {
      if (!first || s == CURVE_SERIES) continue; /* the columns are those of the first row */
      snprintf(c->name[c->n_series++], sizeof c->name[0], "%s", name);
    }
    c->y[s][c->n] = is_number(v) ? number(v) : NAN;
  }
  if (first) {
    printf("%8s", c->xkey);
    for (size_t s = 0; s < c->n_series; s++) printf(" %10.10s", c->name[s]);
    printf("\n");
  }
  printf("%8lld", (long long)c->x[c->n]);
  for (size_t s = 0; s < c->n_series; s++) printf(" %10.4f", c->y[s][c->n]);
  printf("\n");
  c->n++;
  return true;
}

/* Draws each series of c against its x values as a small text chart. */
static void draw_curves(const curves_t *c) {
  for (size_t s = 0; s < c->n_series; s++) {
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < c->n; i++)
      if (isfinite(c->y[s][i])) {
        lo = c->y[s][i] < lo ? c->y[s][i] : lo;
        hi = c->y[s][i] > hi ? c->y[s][i] : hi;
      }
    if (!isfinite(lo)) continue;
    if (hi - lo < 1e-12) hi = lo + 1;
    printf("\n%s by %s\n", c->name[s], c->xkey);
    for (int row = CHART_ROWS - 1; row >= 0; row--) {
      if (row == CHART_ROWS - 1)
        printf("%9.3f |", hi);
      else if (row == 0)
        printf("%9.3f |", lo);
      else
        printf("%9s |", "");
      for (size_t i = 0; i < c->n; i++) {
        double y = c->y[s][i];
        int at = isfinite(y) ? (int)((y - lo) / (hi - lo) * (CHART_ROWS - 1) + 0.5) : -1;
        printf("%4s", at == row ? "*" : "");
      }
      printf("\n");
    }
    printf("%9s +", "");
    for (size_t i = 0; i < c->n; i++) printf("----");
    printf("\n%9s  ", "");
    for (size_t i = 0; i < c->n; i++) printf("%4lld", (long long)c->x[i]);
    printf("\n");
  }
}

/* Appends n bytes to item's stream (growing the table). False when out of memory or the item is absurd. */
static bool stream_add(follow_t *f, uint32_t item, const char *p, size_t n) {
  if (item >= 1u << 20) return false;
  if (item >= f->n_items) {
    stream_t *v = realloc(f->items, (item + 1) * sizeof *v);
    if (!v) return false;
    memset(v + f->n_items, 0, (item + 1 - f->n_items) * sizeof *v);
    f->items = v, f->n_items = item + 1;
  }
  stream_t *s = &f->items[item];
  char *b = realloc(s->buf, s->n + n + 1);
  if (!b) return false;
  memcpy(b + s->n, p, n);
  s->buf = b, s->n += n;
  return true;
}

/* Prints the streamed texts in prompt order: the current prompt's text as it comes, a later prompt's (held until
 * then) once the ones before it are done, a blank line between prompts. */
static void stream_pump(follow_t *f) {
  while (f->cur < f->n_items) {
    stream_t *s = &f->items[f->cur];
    if (s->printed == 0 && s->n && f->cur > 0) fputs("\n", stdout);
    fwrite(s->buf + s->printed, 1, s->n - s->printed, stdout);
    s->printed = s->n;
    if (!s->done) break;
    fputs("\n", stdout);
    f->cur++;
  }
  fflush(stdout);
}

/* A `text` event in text mode: the next piece of one prompt's generated text (with its prompt first). */
static void stream_text(follow_t *f, const msgpack_object *data) {
  if (!f->streaming) {
    clear_bar(f);
    f->streaming = true;
  }
  int64_t item = get_int(data, "item");
  const msgpack_object *prompt = mp_get(data, "prompt"), *text = mp_get(data, "text");
  if (item < 0) return;
  if (prompt && prompt->type == MSGPACK_OBJECT_STR)
    stream_add(f, (uint32_t)item, prompt->via.str.ptr, prompt->via.str.size);
  if (text && text->type == MSGPACK_OBJECT_STR) stream_add(f, (uint32_t)item, text->via.str.ptr, text->via.str.size);
  if ((uint32_t)item < f->n_items && get_bool(data, "done")) f->items[item].done = true;
  stream_pump(f);
}

/* Whether an output record repeats a text that was streamed already (generate's records name their item). */
static bool streamed_already(const follow_t *f, const msgpack_object *data) {
  int64_t item = mp_get(data, "item") ? get_int(data, "item") : -1;
  return item >= 0 && (uint64_t)item < f->n_items && f->items[item].done;
}

/* Shows an output record in text mode: a generation as prompt + text, a plot record as a table row, anything else
 * as key: value lines. */
static void print_output(follow_t *f, const msgpack_object *data) {
  clear_bar(f);
  const msgpack_object *text = mp_get(data, "text"), *cond = mp_get(data, "condition");
  if (plot_point(f, data)) {
    fflush(stdout);
    return;
  }
  if (text && text->type == MSGPACK_OBJECT_STR) {
    if (cond && cond->type == MSGPACK_OBJECT_STR) printf("[%.*s] ", (int)cond->via.str.size, cond->via.str.ptr);
    const msgpack_object *prompt = mp_get(data, "prompt");
    if (prompt && prompt->type == MSGPACK_OBJECT_STR) printf("%.*s", (int)prompt->via.str.size, prompt->via.str.ptr);
    printf("%.*s\n", (int)text->via.str.size, text->via.str.ptr);
  } else {
    for (uint32_t i = 0; i < data->via.map.size; i++) {
      const msgpack_object *k = &data->via.map.ptr[i].key, *v = &data->via.map.ptr[i].val;
      if (k->type != MSGPACK_OBJECT_STR) continue;
      printf("%.*s: ", (int)k->via.str.size, k->via.str.ptr);
      if (v->type == MSGPACK_OBJECT_STR)
        printf("%.*s\n", (int)v->via.str.size, v->via.str.ptr);
      else
        print_json(v, false);
    }
  }
  fflush(stdout);
}

static bool on_event(void *user, const msgpack_object *ev) {
  follow_t *f = user;
  const msgpack_object *data = mp_get(ev, "data");
  char type[16];
  get_str(ev, "type", type, sizeof type);
  if (!strcmp(type, "state")) {
    get_str(data, "state", f->final, sizeof f->final);
    get_str(data, "reason", f->reason, sizeof f->reason);
  }
  if (!strcmp(type, "output") && data) {
    /* What the job produced: one JSON object per output on stdout (with --json nothing else goes there). */
    if (f->cli->lines)
      print_json(data, false);
    else if (!streamed_already(f, data))
      print_output(f, data);
  } else if (!strcmp(type, "text") && data && !f->cli->lines && !f->logs_only) {
    stream_text(f, data);
  } else if (f->streaming && !f->cli->lines && (!strcmp(type, "progress") || !strcmp(type, "metric"))) {
    /* the text coming in shows the progress */
  } else if (f->quiet_lines && !strcmp(type, "metric")) {
    /* in the job's log and result; a line each would flood a file or a pipe */
  } else if (f->quiet_lines && !strcmp(type, "progress") && util_mono_ms() - f->line_last_mono < LINE_EVERY_MS) {
    /* the next one a few seconds on shows where it stands */
  } else if (f->cli->lines) {
    if (!strcmp(type, "progress")) f->line_last_mono = util_mono_ms();
    print_json_to(f->ev, ev, false);
  } else if (f->bar && !strcmp(type, "progress"))
    draw_bar(f, ev);
  else if (f->bar && !strcmp(type, "metric"))
    bar_metric(f, ev);
  else {
    bool had_bar = f->bar_drawn;
    print_event_line(f, ev);
    if (had_bar && f->bar && strcmp(type, "state")) redraw_bar(f);
  }
  return true;
}

/* Draws the curves collected (text mode) and frees them. */
static void end_curves(follow_t *f) {
  if (f->curves && !f->cli->lines) draw_curves(f->curves);
  free(f->curves);
  f->curves = NULL;
}

/* Follows job id to its end; returns the exit status (0 succeeded, 1 failed/cancelled, 130 detached). */
static int follow_job(cli_t *cli, int64_t id, bool logs_only, bool to_end, int64_t after) {
  follow_t f = {.cli = cli,
                .id = id,
                .logs_only = logs_only,
                .quiet_lines = cli->lines && !cli->json && !logs_only,
                .bar = !cli->lines && !logs_only,
                .ev = logs_only ? stdout : stderr};
  struct sigaction sa = {.sa_handler = on_sigint};
  sigaction(SIGINT, &sa, NULL);
  proto_err_t pe = {0};
  lt_err_t err = {0};
  bool detached = false;
  lt_status_t st;
  if (to_end) {
    st = lc_follow(cli->c, id, after, on_event, &f, &interrupted, &detached, &pe, &err);
  } else {
    /* `logs` without -f: what is stored now, page by page. */
    bool more = true;
    st = LT_OK;
    while (more && !st) {
      mpw_t w;
      lc_begin(cli->c, &w, "events");
      mpw_kint(&w, "id", id);
      mpw_kint(&w, "after", after);
      mp_doc_t *d = lc_call(cli->c, &w, &pe, &err);
      if (!d) {
        st = LT_E_IO;
        break;
      }
      const msgpack_object *m = mp_doc_root(d), *evs = mp_get(m, "events");
      for (uint32_t i = 0; evs && i < evs->via.array.size; i++) on_event(&f, &evs->via.array.ptr[i]);
      after = get_int(m, "last");
      more = get_bool(m, "more");
      mp_doc_destroy(&d);
    }
    end_curves(&f);
    return st ? fail(EXIT_DAEMON, "%s", pe.code ? pe.msg : err.msg) : 0;
  }
  clear_bar(&f);
  end_curves(&f);
  for (uint32_t i = 0; i < f.n_items; i++) free(f.items[i].buf);
  free(f.items);
  if (st) return fail(EXIT_DAEMON, "%s", pe.code ? pe.msg : err.msg);
  if (detached || interrupted) {
    fprintf(stderr, "lathe: detached from job %lld (it keeps running); re-attach with: lathe watch %lld\n",
            (long long)id, (long long)id);
    return EXIT_DETACHED;
  }
  if (!cli->lines && !logs_only) printf("job %lld %s%s%s\n", (long long)id, f.final, f.reason[0] ? ": " : "", f.reason);
  return strcmp(f.final, "succeeded") == 0 ? 0 : EXIT_JOB_FAILED;
}

/* ---- commands ---- */

/* A local submission's input paths must exist and be readable here (models must look like models) and its output
 * must be writable: a mistake is caught before a daemon is even started (lathed checks again). The paths of a remote daemon live on its machine: not checked. */
static int check_inputs(const cli_t *cli, const submit_args_t *a) {
  if (cli->o.connect && *cli->o.connect) return 0;
  proto_err_t e;
  mp_doc_t *d = mp_doc_parse(a->params.sb.data, a->params.sb.size, &e);
  int rc = 0;
  for (size_t i = 0; d && !rc && i < a->k->n_params; i++) {
    const kind_param_t *p = &a->k->params[i];
    char path[PATH_MAX], why[PATH_MAX + 200];
    if (p->type != KT_PATH || !mp_str_copy(mp_get(mp_doc_root(d), p->key), path, sizeof path) || !path[0]) continue;
    if (!strcmp(p->key, "output") ? !util_output_ok(path, why, sizeof why)
                                  : !util_input_ok(p->key, path, why, sizeof why))
      rc = fail(EXIT_USAGE, "params.%s: %s", p->key, why);
  }
  mp_doc_destroy(&d);
  return rc;
}

static int cmd_submit(cli_t *cli, int argc, char **argv, bool follow) {
  submit_args_t a = {0};
  int rc = parse_submit(argc, argv, &a);
  if (!rc) rc = check_inputs(cli, &a);
  if (rc || (rc = connect_daemon(cli))) return rc;
  int64_t id = submit(cli, &a, &rc);
  if (!id) return rc;
  if (!follow) {
    mp_doc_t *d = lc_call_id(cli->c, "show", id, NULL, NULL);
    const msgpack_object *job = d ? mp_get(mp_doc_root(d), "job") : NULL;
    char state[16] = "";
    if (job) get_str(job, "state", state, sizeof state);
    if (cli->json) {
      printf("{\"id\": %lld, \"state\": \"%s\"}\n", (long long)id, state);
    } else {
      printf("submitted job %lld (%s", (long long)id, state);
      if (job && get_int(job, "position")) printf(", position %lld", (long long)get_int(job, "position"));
      printf(")\n");
    }
    mp_doc_destroy(&d);
    return 0;
  }
  if (cli->lines)
    fprintf(stderr, "{\"id\": %lld}\n", (long long)id);
  else
    fprintf(stderr, "job %lld submitted; Ctrl-C detaches\n", (long long)id);
  fflush(stderr);
  return follow_job(cli, id, false, true, 0);
}

/* Calls fn(cli, job, user) for every job the daemon lists (all: finished ones too), page by page: a reply holds a
 * few hundred jobs at most. Returns 0, or the exit status of a request that failed. */
static int each_job(cli_t *cli, bool all, void (*fn)(cli_t *cli, const msgpack_object *j, void *user), void *user) {
  int rc = 0;
  for (int64_t after = 0, more = 1; more;) {
    mpw_t w;
    lc_begin(cli->c, &w, "list");
    mpw_kbool(&w, "all", all);
    mpw_kint(&w, "after", after);
    mp_doc_t *d = call(cli, &w, &rc);
    if (!d) return rc;
    const msgpack_object *jobs = mp_get(mp_doc_root(d), "jobs");
    more = get_bool(mp_doc_root(d), "more");
    after = get_int(mp_doc_root(d), "last");
    for (uint32_t i = 0; jobs && i < jobs->via.array.size; i++) fn(cli, &jobs->via.array.ptr[i], user);
    mp_doc_destroy(&d);
  }
  return 0;
}

/* One job as `ps` prints it (a JSON object with --json). */
static void ps_row(cli_t *cli, const msgpack_object *j, void *user) {
  (void)user;
  if (cli->json) {
    print_json(j, false);
    return;
  }
  char kind[32], state[16], reason[512], pos[16] = "-", model[64], prog[16] = "-", elapsed[32] = "-", eta[32] = "-",
                                         dev[16] = "-";
  if (get_int(j, "position")) snprintf(pos, sizeof pos, "%lld", (long long)get_int(j, "position"));
  const msgpack_object *dv = mp_get(j, "device");
  char node[64] = "";
  if (*get_str(j, "slurm_job", node, sizeof node)) /* run under Slurm: its node ("slurm" before it has one) */
    snprintf(dev, sizeof dev, "%.15s", *get_str(j, "node", node, sizeof node) ? node : "slurm");
  else if (dv && dv->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
    snprintf(dev, sizeof dev, "%llu", (unsigned long long)dv->via.u64);
  const msgpack_object *pr = mp_get(j, "progress"), *el = mp_get(j, "elapsed_s"), *et = mp_get(j, "eta_s");
  if (pr && pr->type == MSGPACK_OBJECT_MAP) {
    const msgpack_object *pc = mp_get(pr, "percent");
    if (pc && (pc->type == MSGPACK_OBJECT_FLOAT64 || pc->type == MSGPACK_OBJECT_FLOAT32))
      snprintf(prog, sizeof prog, "%.0f%%", pc->via.f64);
  }
  if (el && el->type == MSGPACK_OBJECT_FLOAT64) fmt_dur(el->via.f64, elapsed, sizeof elapsed);
  if (et && et->type == MSGPACK_OBJECT_FLOAT64) fmt_dur(et->via.f64, eta, sizeof eta);
  printf("%6lld  %-12s %-10s %8s %8s %8s %4s %4s  %-18.18s %s\n", (long long)get_int(j, "id"),
         get_str(j, "kind", kind, sizeof kind), get_str(j, "state", state, sizeof state), prog, elapsed, eta, pos, dev,
         get_str(j, "model", model, sizeof model), get_str(j, "reason", reason, sizeof reason));
}

static int cmd_ps(cli_t *cli, int argc, char **argv) {
  bool all = false;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--all") || !strcmp(argv[i], "-a"))
      all = true;
    else
      return fail(EXIT_USAGE, "ps: unexpected '%s' (ps [--all])", argv[i]);
  }
  int rc = connect_daemon(cli);
  if (rc) return rc;
  if (!cli->json)
    printf("%6s  %-12s %-10s %8s %8s %8s %4s %4s  %-18s %s\n", "ID", "KIND", "STATE", "PROGRESS", "ELAPSED", "ETA",
           "POS", "DEV", "MODEL", "REASON");
  return each_job(cli, all, ps_row, NULL);
}

/* Local date and time of ms since the epoch ("-" for 0) into buf. */
static void fmt_when(int64_t ms, char *buf, size_t n) {
  if (ms <= 0) {
    snprintf(buf, n, "-");
    return;
  }
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  localtime_r(&t, &tm);
  strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm);
}

/* One finished job as `history` prints it, when it ended at or after the cutoff *user (ms since the epoch). */
static void history_row(cli_t *cli, const msgpack_object *j, void *user) {
  int64_t ended = get_int(j, "finished");
  if (ended <= 0 || ended < *(const int64_t *)user) return;
  if (cli->json) {
    print_json(j, false);
    return;
  }
  char kind[32], state[16], reason[512], model[64], started[32], end[32], elapsed[32] = "-";
  fmt_when(get_int(j, "started"), started, sizeof started);
  fmt_when(ended, end, sizeof end);
  const msgpack_object *el = mp_get(j, "elapsed_s");
  if (el && el->type == MSGPACK_OBJECT_FLOAT64) fmt_dur(el->via.f64, elapsed, sizeof elapsed);
  printf("%6lld  %-12s %-10s %-19s  %-19s %8s %8lld  %-18.18s %s\n", (long long)get_int(j, "id"),
         get_str(j, "kind", kind, sizeof kind), get_str(j, "state", state, sizeof state), started, end, elapsed,
         (long long)get_int(j, "attempts"), get_str(j, "model", model, sizeof model),
         get_str(j, "reason", reason, sizeof reason));
}

/* `lathe history [--since D]`: the finished jobs (those that ended within D), like sacct: when each started and
 * ended, how long it ran, how it ended and why. */
static int cmd_history(cli_t *cli, int argc, char **argv) {
  int64_t since = 0;
  for (int i = 0; i < argc; i++) {
    const char *v = !strcmp(argv[i], "--since") && i + 1 < argc ? argv[++i]
                    : !strncmp(argv[i], "--since=", 8)          ? argv[i] + 8
                                                                : NULL;
    if (!v || !util_parse_duration(v, &since))
      return fail(EXIT_USAGE, "usage: lathe history [--since D]   (D: a duration such as 30d, 12h, 90m)");
  }
  int rc = connect_daemon(cli);
  if (rc) return rc;
  int64_t cutoff = since ? util_now_ms() - since : 0;
  if (!cli->json)
    printf("%6s  %-12s %-10s %-19s  %-19s %8s %8s  %-18s %s\n", "ID", "KIND", "STATE", "STARTED", "ENDED", "ELAPSED",
           "ATTEMPTS", "MODEL", "REASON");
  return each_job(cli, true, history_row, &cutoff);
}

/* One value for a person: strings as they are, floats to 4 significant digits, nil as "-", containers as JSON. */
static void print_value(const msgpack_object *o) {
  switch (o->type) {
  case MSGPACK_OBJECT_STR: printf("%.*s", (int)o->via.str.size, o->via.str.ptr); break;
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: printf("%.4g", o->via.f64); break;
  case MSGPACK_OBJECT_POSITIVE_INTEGER: printf("%llu", (unsigned long long)o->via.u64); break;
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: printf("%lld", (long long)o->via.i64); break;
  case MSGPACK_OBJECT_BOOLEAN: printf("%s", o->via.boolean ? "true" : "false"); break;
  case MSGPACK_OBJECT_NIL: printf("-"); break;
  default: print_json_to(stdout, o, false); return; /* ends the line itself */
  }
  putchar('\n');
}

/* A map's entries as "  key = value" lines. */
static void print_map(const msgpack_object *m) {
  for (uint32_t i = 0; m && m->type == MSGPACK_OBJECT_MAP && i < m->via.map.size; i++) {
    const msgpack_object_kv *kv = &m->via.map.ptr[i];
    printf("  %.*s = ", (int)kv->key.via.str.size, kv->key.via.str.ptr);
    print_value(&kv->val);
  }
}

/* `lathe show ID` for a person: state, times in local time with durations, progress, folder, parameters, result. */
static void print_job(const msgpack_object *j) {
  char kind[32], state[16], reason[512], model[64], dir[PATH_MAX], a[64], b[64];
  printf("job %lld  %s  %s (attempt %lld)\n", (long long)get_int(j, "id"), get_str(j, "kind", kind, sizeof kind),
         get_str(j, "state", state, sizeof state), (long long)get_int(j, "attempts"));
  if (*get_str(j, "reason", reason, sizeof reason)) printf("reason:   %s\n", reason);
  if (*get_str(j, "model", model, sizeof model)) printf("model:    %s\n", model);
  const char *names[3] = {"created", "started", "finished"};
  for (int k = 0; k < 3; k++) {
    int64_t ms = get_int(j, names[k]);
    if (!ms) continue;
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(a, sizeof a, "%Y-%m-%d %H:%M:%S", &tm);
    printf("%-9s %s\n", names[k], a);
  }
  const msgpack_object *el = mp_get(j, "elapsed_s"), *pr = mp_get(j, "progress"), *et = mp_get(j, "eta_s");
  if (el && el->type == MSGPACK_OBJECT_FLOAT64) fmt_dur(el->via.f64, a, sizeof a), printf("elapsed:  %s\n", a);
  if (pr && pr->type == MSGPACK_OBJECT_MAP) {
    strcpy(b, "?");
    if (et && et->type == MSGPACK_OBJECT_FLOAT64) fmt_dur(et->via.f64, b, sizeof b);
    printf("progress: %lld/%lld %s, ETA %s\n", (long long)get_int(pr, "step"), (long long)get_int(pr, "total"),
           get_str(pr, "unit", a, sizeof a), b);
  }
  if (get_int(j, "position")) printf("queued:   position %lld\n", (long long)get_int(j, "position"));
  if (*get_str(j, "dir", dir, sizeof dir)) printf("folder:   %s\n", dir);
  printf("params:\n");
  print_map(mp_get(j, "params"));
  const msgpack_object *res = mp_get(j, "result");
  if (res && res->type == MSGPACK_OBJECT_MAP) {
    printf("result:\n");
    print_map(res);
  }
}

/* Commands of the form `CMD ID` that print the reply (show, result, cancel, hold, release, rm). */
static int cmd_id(cli_t *cli, const char *op, int argc, char **argv) {
  int64_t id;
  if (argc != 1 || !parse_id(argv[0], &id)) return fail(EXIT_USAGE, "usage: lathe %s ID", op);
  int rc = connect_daemon(cli);
  if (rc) return rc;
  const char *wire = !strcmp(op, "rm") ? "remove" : op;
  mpw_t w;
  lc_begin(cli->c, &w, wire);
  mpw_kint(&w, "id", id);
  mp_doc_t *d = call(cli, &w, &rc);
  if (!d) return rc;
  const msgpack_object *m = mp_doc_root(d);
  char state[16], reason[512], dir[PATH_MAX];
  if (!strcmp(op, "show")) {
    const msgpack_object *j = mp_get(m, "job");
    if (cli->json)
      print_json(j, false);
    else
      print_job(j);
  } else if (!strcmp(op, "result")) {
    const msgpack_object *res = mp_get(m, "result");
    if (cli->json) {
      print_json(m, false);
    } else {
      printf("job %lld %s%s%s\nfolder: %s\n", (long long)id, get_str(m, "state", state, sizeof state),
             *get_str(m, "reason", reason, sizeof reason) ? ": " : "", reason, get_str(m, "dir", dir, sizeof dir));
      if (res && res->type == MSGPACK_OBJECT_MAP) print_map(res);
    }
  } else if (cli->json) {
    print_json(m, false);
  } else if (!strcmp(op, "rm")) {
    printf("job %lld removed\n", (long long)id);
  } else {
    const msgpack_object *cancelling = mp_get(m, "cancelling");
    printf("job %lld %s%s\n", (long long)id, get_str(m, "state", state, sizeof state),
           cancelling && cancelling->via.boolean ? " (cancel requested; it stops within seconds)" : "");
  }
  mp_doc_destroy(&d);
  return 0;
}

/* `lathe rm --older-than D`: removes the finished jobs that ended more than D ago (a remote key's own only), page
 * by page. */
static int cmd_prune(cli_t *cli, int argc, char **argv) {
  int64_t older = 0;
  const char *arg = argc == 2 ? argv[1] : argc == 1 && !strncmp(argv[0], "--older-than=", 13) ? argv[0] + 13 : NULL;
  if (!arg || !util_parse_duration(arg, &older))
    return fail(EXIT_USAGE, "usage: lathe rm --older-than D   (D: a duration such as 30d, 12h, 90m or 45s)");
  int rc = connect_daemon(cli);
  if (rc) return rc;
  int64_t removed = 0;
  int64_t cutoff = util_now_ms() - older;
  for (bool more = true; more;) {
    mpw_t w;
    lc_begin(cli->c, &w, "prune");
    /* The same cutoff for every page, however long the removal takes. */
    mpw_kint(&w, "older_than_ms", util_now_ms() - cutoff);
    mp_doc_t *d = call(cli, &w, &rc);
    if (!d) return rc;
    removed += get_int(mp_doc_root(d), "removed");
    more = get_bool(mp_doc_root(d), "more");
    mp_doc_destroy(&d);
  }
  if (cli->json)
    printf("{\"removed\": %lld}\n", (long long)removed);
  else
    printf("removed %lld finished job%s that ended over %s ago\n", (long long)removed, removed == 1 ? "" : "s", arg);
  return 0;
}

static int cmd_priority(cli_t *cli, int argc, char **argv) {
  int64_t id;
  char *end;
  long long p = argc == 2 ? strtoll(argv[1], &end, 10) : 0;
  if (argc != 2 || !parse_id(argv[0], &id) || !*argv[1] || *end) return fail(EXIT_USAGE, "usage: lathe priority ID N");
  int rc = connect_daemon(cli);
  if (rc) return rc;
  mpw_t w;
  lc_begin(cli->c, &w, "priority");
  mpw_kint(&w, "id", id);
  mpw_kint(&w, "priority", p);
  mp_doc_t *d = call(cli, &w, &rc);
  if (!d) return rc;
  if (cli->json)
    print_json(mp_doc_root(d), false);
  else
    printf("job %lld priority %lld\n", (long long)id, p);
  mp_doc_destroy(&d);
  return 0;
}

/* `logs ID [-f] [--tail N]` and `watch ID [--tail N]`: the events (the last N of them; watch: the last 20 unless
 * said) and, when following, the live ones after them. */
static int cmd_logs(cli_t *cli, int argc, char **argv, bool watch) {
  int64_t id = 0, tail = watch ? 20 : -1;
  bool follow = watch;
  const char *usage_line = watch ? "watch ID [--tail N]" : "logs ID [-f] [--tail N]";
  for (int i = 0; i < argc; i++) {
    char *end = NULL;
    if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--follow"))
      follow = true;
    else if ((!strcmp(argv[i], "--tail") || !strcmp(argv[i], "-n")) && i + 1 < argc &&
             (tail = strtoll(argv[i + 1], &end, 10)) >= 0 && *argv[i + 1] && !*end)
      i++;
    else if (!id && parse_id(argv[i], &id))
      continue;
    else
      return fail(EXIT_USAGE, "usage: lathe %s", usage_line);
  }
  if (!id) return fail(EXIT_USAGE, "usage: lathe %s", usage_line);
  int rc = connect_daemon(cli);
  if (rc) return rc;
  int64_t after = 0;
  if (tail >= 0) { /* the last `tail` events: from the job's last sequence number */
    mpw_t w;
    lc_begin(cli->c, &w, "show");
    mpw_kint(&w, "id", id);
    mp_doc_t *d = call(cli, &w, &rc);
    if (!d) return rc;
    int64_t last = get_int(mp_get(mp_doc_root(d), "job"), "last_seq");
    mp_doc_destroy(&d);
    after = last > tail ? last - tail : 0;
  }
  rc = follow_job(cli, id, !watch, follow, after);
  return watch || rc == EXIT_DETACHED || rc == EXIT_DAEMON ? rc : 0;
}

/* Running jobs `daemon stop` reports at most (one per worker). */
#define MAX_RUNNING 16

static int cmd_daemon(cli_t *cli, int argc, char **argv) {
  const char *what = argc ? argv[0] : "status";
  long pid = lc_daemon_pid(cli->o.socket);
  lt_err_t err = {0};
  int rc = 0;
  if (!strcmp(what, "start")) {
    for (int i = 1; i < argc; i++) {
      if (!strcmp(argv[i], "--devices") && i + 1 < argc)
        cli->devices = argv[++i];
      else if (!strncmp(argv[i], "--devices=", 10))
        cli->devices = argv[i] + 10;
      else
        return fail(EXIT_USAGE, "usage: lathe daemon start [--devices LIST]   (LIST: device indexes or UUIDs, 0,1)");
    }
    if (pid) {
      printf(cli->json ? "{\"pid\": %ld, \"started\": false}\n" : "lathed already running (pid %ld)\n", pid);
      return 0;
    }
    if ((rc = start_daemon(cli))) return rc;
    /* The pid the daemon itself reports once it answers (its lock file may not hold it yet). */
    if ((rc = connect_daemon(cli))) return rc;
    mpw_t w;
    mp_doc_t *d = NULL;
    for (int i = 0; i < 200 && !d; i++) {
      lc_begin(cli->c, &w, "ping");
      if (!(d = lc_call(cli->c, &w, NULL, NULL))) nanosleep(&(struct timespec){0, 50000000}, NULL);
    }
    if (!d) return fail(EXIT_DAEMON, "lathed started but does not answer on %s", cli->o.socket);
    pid = (long)get_int(mp_doc_root(d), "pid");
    mp_doc_destroy(&d);
    printf(cli->json ? "{\"pid\": %ld, \"started\": true}\n" : "lathed started (pid %ld)\n", pid);
    return 0;
  }
  if (!strcmp(what, "stop")) {
    if (!pid && !(cli->o.connect && *cli->o.connect)) {
      printf(cli->json ? "{\"pid\": null, \"stopped\": false}\n" : "lathed is not running\n");
      return 0;
    }
    if (!(cli->c = lc_new(&cli->o, &err))) return fail(EXIT_DAEMON, "%s", err.msg);
    mpw_t w;
    bool remote = cli->o.connect && *cli->o.connect;
    if (remote) { /* the remote daemon's pid, for the message: the local lock file says nothing about it */
      lc_begin(cli->c, &w, "ping");
      mp_doc_t *p = call(cli, &w, &rc);
      if (!p) return rc;
      pid = (long)get_int(mp_doc_root(p), "pid");
      mp_doc_destroy(&p);
    }
    /* The running jobs, one per worker at most: after the stop the user is told what becomes of each. */
    int64_t running[MAX_RUNNING] = {0};
    char rkind[MAX_RUNNING][32] = {{0}}, policy[MAX_RUNNING][16] = {{0}};
    int n_running = 0;
    lc_begin(cli->c, &w, "status");
    mp_doc_t *s = lc_call(cli->c, &w, NULL, NULL);
    const msgpack_object *ws = s ? mp_get(mp_doc_root(s), "workers") : NULL;
    for (uint32_t i = 0; ws && ws->type == MSGPACK_OBJECT_ARRAY && i < ws->via.array.size; i++)
      if (get_int(&ws->via.array.ptr[i], "job") > 0 && n_running < MAX_RUNNING)
        running[n_running++] = get_int(&ws->via.array.ptr[i], "job");
    mp_doc_destroy(&s);
    for (int i = 0; i < n_running; i++)
      if ((s = lc_call_id(cli->c, "show", running[i], NULL, NULL))) {
        get_str(mp_get(mp_doc_root(s), "job"), "kind", rkind[i], sizeof rkind[i]);
        get_str(mp_get(mp_doc_root(s), "job"), "policy", policy[i], sizeof policy[i]);
        mp_doc_destroy(&s);
      }
    lc_begin(cli->c, &w, "shutdown");
    mp_doc_t *d = call(cli, &w, &rc);
    if (!d) return rc;
    mp_doc_destroy(&d);
    /* Stopping may wait for the running job to checkpoint (the daemon's cancel grace). A local daemon is gone
     * when its lock is free; a remote one when it stops answering. */
    bool gone = false;
    for (int i = 0; i < 1200 && !gone; i++) {
      if (remote) {
        lc_begin(cli->c, &w, "ping");
        mp_doc_t *p = lc_call(cli->c, &w, NULL, NULL);
        gone = !p;
        mp_doc_destroy(&p);
      } else {
        gone = !lc_daemon_pid(cli->o.socket);
      }
      if (!gone) nanosleep(&(struct timespec){0, 50000000}, NULL);
    }
    if (cli->json) {
      printf("{\"pid\": %ld, \"stopped\": %s, \"running_job\": %lld, \"running_jobs\": [", pid, gone ? "true" : "false",
             (long long)running[0]);
      for (int i = 0; i < n_running; i++) printf("%s%lld", i ? ", " : "", (long long)running[i]);
      printf("]}\n");
    } else {
      printf("lathed (pid %ld) %s\n", pid, gone ? "stopped" : "is still stopping");
    }
    for (int i = 0; i < n_running && !cli->json; i++) {
      const char *fate = !strcmp(policy[i], "resume") ? "checkpointed: it resumes from there when lathed starts again"
                         : !strcmp(policy[i], "restart") ? "stopped: it starts over when lathed starts again"
                                                         : "stopped: its kind cannot be restarted, so it fails";
      printf("job %lld (%s) was running and was %s\n", (long long)running[i], rkind[i], fate);
    }
    return gone ? 0 : EXIT_DAEMON;
  }
  if (strcmp(what, "status") != 0) return fail(EXIT_USAGE, "usage: lathe daemon start|stop|status");
  if (!pid && !(cli->o.connect && *cli->o.connect)) {
    printf(cli->json ? "{\"pid\": null, \"running\": false}\n" : "lathed is not running\n");
    return EXIT_DAEMON;
  }
  if (!(cli->c = lc_new(&cli->o, &err))) return fail(EXIT_DAEMON, "%s", err.msg);
  mpw_t w;
  lc_begin(cli->c, &w, "status");
  mp_doc_t *d = call(cli, &w, &rc);
  if (!d) return rc;
  const msgpack_object *m = mp_doc_root(d);
  if (cli->json) {
    print_json(m, false);
  } else {
    const msgpack_object *jobs = mp_get(m, "jobs"), *wk = mp_get(m, "worker");
    char s1[PATH_MAX], s2[PATH_MAX], up[32];
    fmt_dur((double)get_int(m, "uptime_ms") / 1000.0, up, sizeof up);
    printf("lathed %s, pid %lld, up %s\n", get_str(m, "version", s1, sizeof s1), (long long)get_int(m, "pid"), up);
    printf("socket  %s\nstore   %s\n", get_str(m, "socket", s1, sizeof s1), get_str(m, "home", s2, sizeof s2));
    if (strcmp(get_str(m, "store", s1, sizeof s1), "ok") != 0 && s1[0]) printf("READ-ONLY: %s\n", s1);
    printf("jobs    %lld queued, %lld held, %lld running, %lld succeeded, %lld failed, %lld cancelled\n",
           (long long)get_int(jobs, "queued"), (long long)get_int(jobs, "held"), (long long)get_int(jobs, "running"),
           (long long)get_int(jobs, "succeeded"), (long long)get_int(jobs, "failed"),
           (long long)get_int(jobs, "cancelled"));
    printf("worker  %s, pid %lld, %lld restarts, device %s\n", get_str(wk, "state", s1, sizeof s1),
           (long long)get_int(wk, "pid"), (long long)get_int(wk, "restarts"),
           *get_str(wk, "device", s2, sizeof s2) ? s2 : "(not open)");
  }
  mp_doc_destroy(&d);
  return 0;
}

/* `lathe tokenize ...`: runs lathe-worker --tokenize (next to this program), which links the tokenizers; no daemon
 * is involved. */
static int cmd_tokenize(const cli_t *cli, int argc, char **argv) {
  char dir[PATH_MAX - 32], worker[PATH_MAX];
  if (!util_exe_dir(dir, sizeof dir)) return fail(EXIT_DAEMON, "cannot find the folder this program is in");
  snprintf(worker, sizeof worker, "%s/lathe-worker", dir);
  char **args = calloc((size_t)argc + 4, sizeof *args);
  if (!args) return fail(EXIT_DAEMON, "out of memory");
  args[0] = worker, args[1] = "--tokenize";
  for (int i = 0; i < argc; i++) args[i + 2] = argv[i];
  if (cli->json) args[argc + 2] = "--json"; /* lathe's own --json, wherever it was written */
  fflush(stdout);
  execv(worker, args);
  free(args);
  return fail(EXIT_DAEMON, "cannot run %s: %s", worker, strerror(errno));
}

/* `lathe devices`: the daemon's workers, one line each: worker, device index, name, memory, state, job. */
static int cmd_devices(cli_t *cli, int argc, char **argv) {
  (void)argv;
  if (argc) return fail(EXIT_USAGE, "usage: lathe devices");
  int rc = connect_daemon(cli);
  if (rc) return rc;
  mpw_t w;
  lc_begin(cli->c, &w, "status");
  mp_doc_t *d = call(cli, &w, &rc);
  if (!d) return rc;
  const msgpack_object *ws = mp_get(mp_doc_root(d), "workers");
  if (!cli->json) printf("%6s  %-6s %-36s %9s  %-8s %s\n", "WORKER", "DEVICE", "NAME", "MEMORY", "STATE", "JOB");
  for (uint32_t i = 0; ws && ws->type == MSGPACK_OBJECT_ARRAY && i < ws->via.array.size; i++) {
    const msgpack_object *x = &ws->via.array.ptr[i];
    if (cli->json) {
      print_json(x, false);
      continue;
    }
    char want[72], name[128], state[16], mem[32] = "-", job[24] = "-";
    get_str(x, "want", want, sizeof want);
    get_str(x, "device_name", name, sizeof name);
    if (!name[0]) get_str(x, "device", name, sizeof name);
    get_str(x, "state", state, sizeof state);
    /* A worker that died and is waiting to start again has lost its device for now. */
    if (!strcmp(state, "down")) snprintf(state, sizeof state, "lost");
    if (get_int(x, "memory_mib") > 0) snprintf(mem, sizeof mem, "%lld MiB", (long long)get_int(x, "memory_mib"));
    if (get_int(x, "job") > 0) snprintf(job, sizeof job, "%lld", (long long)get_int(x, "job"));
    printf("%6lld  %-6s %-36.36s %9s  %-8s %s\n", (long long)get_int(x, "index"), want[0] ? want : "any",
           name[0] ? name : "(not open)", mem, state, job);
  }
  /* Jobs run under Slurm: one line each, the node and Slurm's state in place of a local device. */
  const msgpack_object *sl = mp_get(mp_doc_root(d), "slurm"), *sj = sl ? mp_get(sl, "jobs") : NULL;
  for (uint32_t i = 0; sj && sj->type == MSGPACK_OBJECT_ARRAY && i < sj->via.array.size; i++) {
    const msgpack_object *x = &sj->via.array.ptr[i];
    if (cli->json) {
      print_json(x, false);
      continue;
    }
    char sid[24], st[24], node[64], dev[128], name[256];
    get_str(x, "slurm_job", sid, sizeof sid);
    get_str(x, "slurm_state", st, sizeof st);
    get_str(x, "node", node, sizeof node);
    get_str(x, "device", dev, sizeof dev);
    snprintf(name, sizeof name, "Slurm job %s on %s%s%s", sid, node[0] ? node : "(no node yet)", dev[0] ? ": " : "",
             dev);
    printf("%6s  %-6s %-36.36s %9s  %-8s %lld\n", "slurm", "-", name, "-", st, (long long)get_int(x, "job"));
  }
  mp_doc_destroy(&d);
  return 0;
}

static int cmd_keygen(int argc, char **argv) {
  if (argc != 1) return fail(EXIT_USAGE, "usage: lathe keygen PATH   (writes PATH.key and PATH.pub)");
  char pub[41], sec[41], p1[PATH_MAX], p2[PATH_MAX];
  if (zmq_curve_keypair(pub, sec) != 0) return fail(EXIT_DAEMON, "this libzmq has no CURVE support");
  snprintf(p1, sizeof p1, "%s.key", argv[0]);
  snprintf(p2, sizeof p2, "%s.pub", argv[0]);
  lt_err_t err = {0};
  if (util_write_z85_key(p1, sec, true, &err) || util_write_z85_key(p2, pub, false, &err))
    return fail(EXIT_DAEMON, "%s", err.msg);
  printf("wrote %s (keep it private) and %s (copy it into the daemon's --curve-allow folder)\n", p1, p2);
  return 0;
}

static void usage(FILE *f) {
  fprintf(f, "usage: lathe [--json] [--no-autostart] [--socket PATH | --connect tcp://HOST:PORT --server-key FILE "
             "--key FILE]\n"
             "             COMMAND ...\n"
             "  run KIND [--PARAM VALUE ...]   submit a job and follow it (exit 0 if it succeeds; Ctrl-C detaches)\n"
             "  submit KIND [--PARAM VALUE ...] [--priority N] [--hold] [--sid ID]   queue a job\n"
             "  ps [--all]                     list jobs (waiting and running; --all: every job)\n"
             "  history [--since D]            finished jobs: started, ended, elapsed, attempts, reason (like sacct)\n"
             "  show ID                        a job in full\n"
             "  logs ID [-f] [--tail N]        a job's events (the last N; -f: keep following)\n"
             "  watch ID [--tail N]            follow a job to its end (from its last N events, default 20)\n"
             "  cancel ID | hold ID | release ID | rm ID | result ID | priority ID N\n"
             "  rm --older-than D              remove the finished jobs that ended over D ago (30d, 12h, 90m)\n"
             "  daemon start [--devices LIST] | stop | status   the background daemon (LIST: a worker per device)\n"
             "  devices                        the daemon's workers: device, memory, state (idle/busy/lost), job\n"
             "  keygen PATH                    make a CURVE key pair for TCP clients\n"
             "  tokenize --model PATH (--text T | --file F) [--add-bos] [--parse-special] [--json]\n"
             "                                 token ids and pieces (no daemon needed)\n"
             "  help [KIND]                    this text, or a job kind's parameters\n");
  kinds_help(f);
}

int main(int argc, char **argv) {
  cli_t cli = {.autostart = true};
  const char *no = getenv("LATHE_NO_AUTOSTART");
  if (no && *no && strcmp(no, "0") != 0) cli.autostart = false;
  cli.o.connect = getenv("LATHE_CONNECT");
  cli.o.server_key = getenv("LATHE_SERVER_KEY");
  cli.o.client_key = getenv("LATHE_CLIENT_KEY");
  /* Global options come before the command. */
  int i = 1;
  for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--json"))
      cli.json = true;
    else if (!strcmp(a, "--no-autostart"))
      cli.autostart = false;
    else if (!strcmp(a, "--help"))
      return usage(stdout), 0;
    else if (!strcmp(a, "--version"))
      return printf("lathe %s (protocol %d)\n", LATHE_VERSION, PROTO_VERSION), 0;
    else if (!strcmp(a, "--socket") && v)
      cli.o.socket = cli.socket_flag = v, i++;
    else if (!strcmp(a, "--connect") && v)
      cli.o.connect = v, i++;
    else if (!strcmp(a, "--server-key") && v)
      cli.o.server_key = v, i++;
    else if (!strcmp(a, "--key") && v)
      cli.o.client_key = v, i++;
    else
      return usage(stderr), EXIT_USAGE;
  }
  if (i >= argc) return usage(stderr), EXIT_USAGE;
  const char *cmd = argv[i];
  char **rest = argv + i + 1;
  int n = argc - i - 1;
  /* --json may also follow the command. */
  for (int k = 0; k < n; k++)
    if (!strcmp(rest[k], "--json")) {
      cli.json = true;
      memmove(rest + k, rest + k + 1, (size_t)(n - k - 1) * sizeof *rest);
      n--, k--;
    }
  /* Events go to stderr: a terminal there gets the one updating line per job, anything else JSON lines.
   * LATHE_TTY=1 forces the terminal form (for scripts that record it). */
  const char *tty = getenv("LATHE_TTY");
  cli.lines = cli.json || !(isatty(STDERR_FILENO) || (tty && !strcmp(tty, "1")));
  signal(SIGPIPE, SIG_IGN);
  int rc;
  static const char *const commands[] = {"help",     "version", "run",      "submit",  "ps",     "logs",   "watch",
                                         "priority", "daemon",  "keygen",   "show",    "result", "cancel", "hold",
                                         "release",  "rm",      "tokenize", "devices", "history"};
  if (!strcmp(cmd, "help")) {
    const kind_t *k = n ? kind_find(rest[0], strlen(rest[0])) : NULL;
    rc = 0;
    if (k) {
      kind_help(stdout, k);
    } else if (n) {
      const char *near = closest_kind(rest[0]);
      rc = near ? fail(EXIT_USAGE, "no job kind '%s'; did you mean '%s'?", rest[0], near)
                : fail(EXIT_USAGE, "no job kind '%s' (lathe help lists them)", rest[0]);
    } else {
      usage(stdout);
    }
  } else if (!strcmp(cmd, "version")) {
    printf("lathe %s (protocol %d)\n", LATHE_VERSION, PROTO_VERSION);
    rc = 0;
  } else if (!strcmp(cmd, "run"))
    rc = cmd_submit(&cli, n, rest, true);
  else if (!strcmp(cmd, "submit"))
    rc = cmd_submit(&cli, n, rest, false);
  else if (!strcmp(cmd, "ps"))
    rc = cmd_ps(&cli, n, rest);
  else if (!strcmp(cmd, "logs"))
    rc = cmd_logs(&cli, n, rest, false);
  else if (!strcmp(cmd, "watch"))
    rc = cmd_logs(&cli, n, rest, true);
  else if (!strcmp(cmd, "priority"))
    rc = cmd_priority(&cli, n, rest);
  else if (!strcmp(cmd, "daemon"))
    rc = cmd_daemon(&cli, n, rest);
  else if (!strcmp(cmd, "keygen"))
    rc = cmd_keygen(n, rest);
  else if (!strcmp(cmd, "tokenize"))
    rc = cmd_tokenize(&cli, n, rest);
  else if (!strcmp(cmd, "devices"))
    rc = cmd_devices(&cli, n, rest);
  else if (!strcmp(cmd, "history"))
    rc = cmd_history(&cli, n, rest);
  else if (!strcmp(cmd, "rm") && n >= 1 && !strncmp(rest[0], "--older-than", 12))
    rc = cmd_prune(&cli, n, rest);
  else if (!strcmp(cmd, "show") || !strcmp(cmd, "result") || !strcmp(cmd, "cancel") || !strcmp(cmd, "hold") ||
           !strcmp(cmd, "release") || !strcmp(cmd, "rm"))
    rc = cmd_id(&cli, cmd, n, rest);
  else {
    const char *near = closest(cmd, commands, sizeof commands / sizeof commands[0]);
    rc = near ? fail(EXIT_USAGE, "unknown command '%s'; did you mean '%s'?", cmd, near)
              : fail(EXIT_USAGE, "unknown command '%s' (lathe help)", cmd);
  }
  lc_destroy(&cli.c);
  return rc;
}
