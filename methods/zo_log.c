/* The zeroth-order run log: a header line with the run's options, then one (step, seed, g, lr) line per step. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "methods/zo.h"

#define LOG_FORMAT "lathe-zo-log"

/* Writes j as one compact line and frees it. */
static lt_status_t put_line(FILE *f, json_t *j, lt_err_t *err) {
  char *text = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(j);
  if (!text) return lt_fail(err, LT_E_NOMEM, "out of memory writing the run log");
  bool ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
  free(text);
  return ok ? LT_OK : lt_fail(err, LT_E_IO, "writing the run log: %s", strerror(errno));
}

lt_status_t zo_log_header(FILE *f, const char *base, const zo_opts_t *o, lt_err_t *err) {
  json_t *j = json_object();
  char seed[24];
  snprintf(seed, sizeof seed, "%" PRIu64, o->seed);
  json_object_set_new(j, "format", json_string(LOG_FORMAT));
  json_object_set_new(j, "version", json_integer(o->version ? o->version : ZO_VERSION));
  json_object_set_new(j, "base", json_string(base));
  json_object_set_new(j, "method", json_string(o->method == ZO_LEZO ? "lezo" : "mezo"));
  json_object_set_new(j, "eps", json_real(o->eps));
  json_object_set_new(j, "weight_decay", json_real(o->weight_decay));
  json_object_set_new(j, "drop_layers", json_integer(o->drop_layers));
  json_object_set_new(j, "seed", json_string(seed));
  return put_line(f, j, err);
}

lt_status_t zo_log_record(FILE *f, const zo_record_t *r, lt_err_t *err) {
  json_t *j = json_object();
  char seed[24];
  snprintf(seed, sizeof seed, "%" PRIu64, r->seed);
  json_object_set_new(j, "step", json_integer((json_int_t)r->step));
  json_object_set_new(j, "seed", json_string(seed));
  /* jansson prints doubles with 17 digits: a float widened to double reads back to the same float. */
  json_object_set_new(j, "g", json_real(r->g));
  json_object_set_new(j, "lr", json_real(r->lr));
  json_object_set_new(j, "loss_plus", json_real(r->loss_plus));
  json_object_set_new(j, "loss_minus", json_real(r->loss_minus));
  return put_line(f, j, err);
}

/* A u64 written as a decimal string; false when absent or malformed. */
static bool get_u64(json_t *o, const char *key, uint64_t *v) {
  const char *s = json_string_value(json_object_get(o, key));
  if (!s || !*s || *s == '-') return false;
  char *end;
  errno = 0;
  unsigned long long x = strtoull(s, &end, 10);
  if (*end || errno) return false;
  *v = x;
  return true;
}

static bool get_num(json_t *o, const char *key, double *v) {
  json_t *x = json_object_get(o, key);
  if (!json_is_number(x)) return false;
  *v = json_number_value(x);
  return true;
}

lt_status_t zo_log_read(const char *path, zo_opts_t *o, char *base, size_t base_n, zo_record_t **recs, uint64_t *n,
                        lt_err_t *err) {
  *recs = NULL;
  *n = 0;
  FILE *f = fopen(path, "r");
  if (!f) return lt_fail(err, LT_E_IO, "cannot open %s: %s", path, strerror(errno));
  lt_status_t st = LT_OK;
  char *line = NULL;
  size_t cap = 0, have = 0;
  ssize_t len;
  uint64_t lineno = 0;
  while (st == LT_OK && (len = getline(&line, &cap, f)) >= 0) {
    lineno++;
    json_error_t je;
    json_t *j = json_loadb(line, (size_t)len, 0, &je);
    if (!json_is_object(j)) {
      st = lt_fail(err, LT_E_CORRUPT, "%s:%" PRIu64 ": not a JSON object", path, lineno);
    } else if (lineno == 1) {
      const char *fmt = json_string_value(json_object_get(j, "format"));
      const char *method = json_string_value(json_object_get(j, "method"));
      const char *b = json_string_value(json_object_get(j, "base"));
      json_t *ver = json_object_get(j, "version"), *drop = json_object_get(j, "drop_layers");
      double eps, wd;
      memset(o, 0, sizeof *o);
      if (!fmt || strcmp(fmt, LOG_FORMAT) || (json_integer_value(ver) != 1 && json_integer_value(ver) != ZO_VERSION) ||
          !method || !b || !json_is_integer(drop) || json_integer_value(drop) < 0 || !get_num(j, "eps", &eps) ||
          !get_num(j, "weight_decay", &wd) || !get_u64(j, "seed", &o->seed) ||
          (strcmp(method, "mezo") && strcmp(method, "lezo")))
        st = lt_fail(err, LT_E_CORRUPT, "%s: not a version 1 or %d %s header", path, ZO_VERSION, LOG_FORMAT);
      else {
        o->method = strcmp(method, "lezo") ? ZO_MEZO : ZO_LEZO;
        o->eps = (float)eps;
        o->weight_decay = (float)wd;
        o->drop_layers = (uint32_t)json_integer_value(drop);
        o->version = (uint32_t)json_integer_value(ver);
        if (base_n) snprintf(base, base_n, "%s", b);
      }
    } else {
      zo_record_t r = {0};
      json_t *step = json_object_get(j, "step");
      double g, lr;
      if (!json_is_integer(step) || json_integer_value(step) != (json_int_t)*n || !get_u64(j, "seed", &r.seed) ||
          !get_num(j, "g", &g) || !get_num(j, "lr", &lr)) {
        st = lt_fail(err, LT_E_CORRUPT, "%s:%" PRIu64 ": expected the line of step %" PRIu64, path, lineno, *n);
      } else {
        r.step = *n;
        r.g = (float)g;
        r.lr = (float)lr;
        get_num(j, "loss_plus", &r.loss_plus);
        get_num(j, "loss_minus", &r.loss_minus);
        if (*n == have) {
          have = have ? 2 * have : 256;
          zo_record_t *grown = realloc(*recs, have * sizeof *grown);
          if (!grown)
            st = lt_fail(err, LT_E_NOMEM, "out of memory reading %s", path);
          else
            *recs = grown;
        }
        if (st == LT_OK) (*recs)[(*n)++] = r;
      }
    }
    json_decref(j);
  }
  if (st == LT_OK && lineno == 0) st = lt_fail(err, LT_E_CORRUPT, "%s is empty", path);
  free(line);
  fclose(f);
  if (st != LT_OK) {
    free(*recs);
    *recs = NULL;
    *n = 0;
  }
  return st;
}
