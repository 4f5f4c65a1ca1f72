/* JSONL rows, read one bounded line at a time. */
#include "engine/text/jsonl.h"

#include "common/fsout.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct jsonl {
  FILE *f;
  char *line;
  size_t cap;
  uint64_t lineno, size, offset;
  char path[PATH_MAX];
  char where[PATH_MAX + 32];
};

jsonl_t *jsonl_open(const char *path, lt_err_t *err) {
  jsonl_t *r = calloc(1, sizeof *r);
  if (!r) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  snprintf(r->path, sizeof r->path, "%s", path);
  snprintf(r->where, sizeof r->where, "%s", path);
  struct stat sb;
  if (!(r->f = fopen(path, "r")) || fstat(fileno(r->f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    lt_fail(err, LT_E_IO, "cannot open %s: %s", path, r->f ? "not a regular file" : strerror(errno));
    jsonl_destroy(&r);
    return NULL;
  }
  r->size = (uint64_t)sb.st_size;
  return r;
}

lt_status_t jsonl_next(jsonl_t *r, json_t **row, lt_err_t *err) {
  *row = NULL;
  ssize_t len;
  while ((len = getline(&r->line, &r->cap, r->f)) >= 0) {
    r->lineno++;
    r->offset += (uint64_t)len;
    snprintf(r->where, sizeof r->where, "%s:%llu", r->path, (unsigned long long)r->lineno);
    if ((size_t)len > JSONL_MAX_LINE)
      return lt_fail(err, LT_E_LIMIT, "%s: line longer than %u bytes", r->where, JSONL_MAX_LINE);
    size_t k = (size_t)len;
    while (k && (r->line[k - 1] == '\n' || r->line[k - 1] == '\r' || r->line[k - 1] == ' ')) k--;
    if (k == 0) continue;
    json_error_t je;
    char jb[160];
    json_t *o = json_loadb(r->line, k, 0, &je);
    if (!json_is_object(o)) {
      lt_fail(err, LT_E_INVALID, "%s: not a JSON object (%s)", r->where,
              o ? "another JSON value" : jsonl_error_brief(&je, jb, sizeof jb));
      json_decref(o);
      return LT_E_INVALID;
    }
    *row = o;
    return LT_OK;
  }
  if (ferror(r->f)) return lt_fail(err, LT_E_IO, "%s: read error", r->path);
  return LT_OK;
}

const char *jsonl_where(const jsonl_t *r) { return r->where; }
uint64_t jsonl_offset(const jsonl_t *r) { return r->offset; }
uint64_t jsonl_size(const jsonl_t *r) { return r->size; }

void jsonl_destroy(jsonl_t **rp) {
  if (!rp || !*rp) return;
  jsonl_t *r = *rp;
  if (r->f) fclose(r->f);
  free(r->line);
  free(r);
  *rp = NULL;
}

void jsonl_free(json_t **rows, size_t n) {
  for (size_t i = 0; rows && i < n; i++) json_decref(rows[i]);
  free(rows);
}

lt_status_t jsonl_load(const char *path, uint64_t max_rows, json_t ***rows, size_t *n, lt_err_t *err) {
  *rows = NULL;
  *n = 0;
  jsonl_t *r = jsonl_open(path, err);
  if (!r) return err ? err->code : LT_E_IO;
  lt_status_t st = LT_OK;
  size_t have = 0;
  json_t *row;
  while ((!max_rows || *n < max_rows) && (st = jsonl_next(r, &row, err)) == LT_OK && row) {
    if (*n == have) {
      size_t want = have ? have * 2 : 64;
      json_t **grown = realloc(*rows, want * sizeof *grown);
      if (!grown) {
        json_decref(row);
        st = lt_fail(err, LT_E_NOMEM, "out of memory");
        break;
      }
      *rows = grown;
      have = want;
    }
    (*rows)[(*n)++] = row;
  }
  jsonl_destroy(&r);
  if (st != LT_OK) {
    jsonl_free(*rows, *n);
    *rows = NULL;
    *n = 0;
  }
  return st;
}

const char *jsonl_str(const json_t *row, const char *key) { return json_string_value(json_object_get(row, key)); }

lt_status_t jsonl_row_tokens(const tok_t *tok, const json_t *row, unsigned flags, int32_t **ids, size_t *n,
                             size_t *first, const char *where, lt_err_t *err) {
  *ids = NULL;
  *n = 0;
  *first = 1;
  const char *text = jsonl_str(row, "text"), *prompt = jsonl_str(row, "prompt"),
             *completion = jsonl_str(row, "completion");
  if (!text && !(prompt && completion))
    return lt_fail(err, LT_E_INVALID, "%s: needs a \"text\" string, or \"prompt\" and \"completion\" strings", where);
  const char *head = text ? text : prompt;
  lt_status_t st = tok_encode(tok, head, strlen(head), flags, ids, n, err);
  if (st != LT_OK || text) return st;
  int32_t *cids = NULL;
  size_t nc = 0;
  if ((st = tok_encode(tok, completion, strlen(completion), 0, &cids, &nc, err)) != LT_OK) return st;
  int32_t *all = realloc(*ids, (*n + nc + 1) * sizeof *all);
  if (!all)
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
  else {
    if (nc) memcpy(all + *n, cids, nc * sizeof *cids);
    *ids = all;
    *first = *n;
    *n += nc;
  }
  free(cids);
  return st;
}

lt_status_t jsonl_write_file(const char *path, const json_t *j, size_t flags, lt_err_t *err) {
  util_out_t o;
  if (util_out_open(&o, path, 0644, err) != LT_OK) return LT_E_IO;
  if (json_dumpf(j, o.f, flags) != 0 || fputc('\n', o.f) == EOF) {
    util_out_abort(&o);
    return lt_fail(err, LT_E_IO, "cannot write %s", path);
  }
  return util_out_commit(&o, err);
}

const char *jsonl_error_brief(const json_error_t *je, char *buf, size_t n) {
  const char *near = strstr(je->text, " near ");
  size_t len = near ? (size_t)(near - je->text) : strlen(je->text);
  snprintf(buf, n, "%.*s", (int)len, je->text);
  return buf;
}
