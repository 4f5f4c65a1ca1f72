#include "engine/text/lines.h"
#include "engine/text/jsonl.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CHUNK (64u << 10)

struct lines {
  FILE *f;
  char *path;
  size_t max;
  char *buf; /* the current line */
  size_t cap, len;
  char chunk[CHUNK]; /* bytes read from the file and not yet consumed: chunk[pos..end) */
  size_t pos, end;
  uint64_t lineno, offset, size;
  bool eof;
};

lines_t *lines_open(const char *path, size_t max_line, lt_err_t *err) {
  lines_t *r = calloc(1, sizeof *r);
  if (!r) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  r->max = max_line ? max_line : LINES_MAX_DEFAULT;
  r->path = strdup(path);
  r->f = fopen(path, "rb");
  if (!r->path || !r->f) {
    lt_fail(err, r->path ? LT_E_IO : LT_E_NOMEM, "cannot open %s", path);
    lines_destroy(&r);
    return NULL;
  }
  struct stat sb;
  if (fstat(fileno(r->f), &sb) == 0 && S_ISREG(sb.st_mode)) r->size = (uint64_t)sb.st_size;
  return r;
}

void lines_destroy(lines_t **rp) {
  lines_t *r = rp ? *rp : NULL;
  if (!r) return;
  if (r->f) fclose(r->f);
  free(r->path);
  free(r->buf);
  free(r);
  *rp = NULL;
}

/* Appends n bytes to the current line, refusing to grow past max (checked before allocating). */
static lt_status_t append(lines_t *r, const char *p, size_t n, lt_err_t *err) {
  if (r->len + n > r->max)
    return lt_fail(err, LT_E_LIMIT, "%s:%llu: line longer than %zu bytes", r->path, (unsigned long long)r->lineno + 1,
                   r->max);
  if (r->len + n + 1 > r->cap) {
    size_t cap = r->cap ? r->cap : 256;
    while (cap < r->len + n + 1) cap *= 2;
    char *b = realloc(r->buf, cap);
    if (!b) return lt_fail(err, LT_E_NOMEM, "out of memory");
    r->buf = b, r->cap = cap;
  }
  memcpy(r->buf + r->len, p, n);
  r->len += n;
  return LT_OK;
}

int lines_next(lines_t *r, const char **line, size_t *len, lt_err_t *err) {
  r->len = 0;
  bool any = false;
  for (;;) {
    if (r->pos == r->end) {
      if (r->eof) break;
      r->end = fread(r->chunk, 1, CHUNK, r->f);
      r->pos = 0;
      if (r->end == 0) {
        if (ferror(r->f)) return lt_fail(err, LT_E_IO, "%s: read error", r->path);
        r->eof = true;
        break;
      }
    }
    any = true;
    const char *nl = memchr(r->chunk + r->pos, '\n', r->end - r->pos);
    size_t take = nl ? (size_t)(nl - (r->chunk + r->pos)) : r->end - r->pos;
    lt_status_t st = append(r, r->chunk + r->pos, take, err);
    if (st != LT_OK) return st;
    r->pos += take + (nl ? 1 : 0);
    r->offset += take + (nl ? 1 : 0);
    if (nl) break;
  }
  if (!any) return 0;
  lt_status_t st = append(r, "", 0, err); /* makes room for the NUL */
  if (st != LT_OK) return st;
  if (r->len && r->buf[r->len - 1] == '\r') r->len--;
  r->buf[r->len] = '\0';
  r->lineno++;
  *line = r->buf;
  *len = r->len;
  return 1;
}

int lines_next_json(lines_t *r, json_t **obj, lt_err_t *err) {
  const char *line;
  size_t len;
  int got;
  while ((got = lines_next(r, &line, &len, err)) == 1) {
    size_t a = 0;
    while (a < len && (line[a] == ' ' || line[a] == '\t')) a++;
    if (a == len) continue;
    json_error_t je;
    char jb[160];
    json_t *o = json_loadb(line + a, len - a, 0, &je);
    if (!o || !json_is_object(o)) {
      json_decref(o);
      return lt_fail(err, LT_E_INVALID, "%s:%llu: not a JSON object (%s)", r->path, (unsigned long long)r->lineno,
                     o ? "another JSON value" : jsonl_error_brief(&je, jb, sizeof jb));
    }
    *obj = o;
    return 1;
  }
  return got;
}

uint64_t lines_lineno(const lines_t *r) { return r->lineno; }
uint64_t lines_offset(const lines_t *r) { return r->offset; }
uint64_t lines_size(const lines_t *r) { return r->size; }
const char *lines_path(const lines_t *r) { return r->path; }
