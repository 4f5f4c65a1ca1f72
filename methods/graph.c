/* EEDP graph flattening; the rules are in graph.h and docs/data-jobs.md. Every walk is iterative (an explicit
 * stack), so a chain of a million nodes costs memory, never the C stack. */
#include "methods/graph.h"
#include "engine/text/jsonl.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/text/lines.h"

struct graph {
  uint32_t max_nodes, max_edges;
  char *arena; /* node names back to back */
  size_t arena_len, arena_cap;
  size_t *name_off;
  uint32_t *name_len;
  size_t cap_off, cap_len;
  uint32_t n_nodes;
  uint32_t *slots; /* open addressing: node id + 1, 0 when empty */
  size_t n_slots;
  uint32_t *efrom, *eto;
  bool *edir;
  size_t cap_from, cap_to, cap_dir;
  uint64_t n_edges;
};

/* ---- building ---- */

static uint64_t fnv1a(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
  return h;
}

/* Grows *p (an array of elements of size sz holding *cap) to hold at least want; false when out of memory. */
static bool grow(void *p, size_t sz, size_t *cap, size_t want) {
  if (want <= *cap) return true;
  size_t c = *cap ? *cap : 16;
  while (c < want) c *= 2;
  void *q = realloc(*(void **)p, c * sz);
  if (!q) return false;
  *(void **)p = q;
  *cap = c;
  return true;
}

graph_t *graph_new(const graph_limits_t *lim) {
  graph_t *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->max_nodes = lim && lim->max_nodes ? lim->max_nodes : GRAPH_DEF_MAX_NODES;
  g->max_edges = lim && lim->max_edges ? lim->max_edges : GRAPH_DEF_MAX_EDGES;
  return g;
}

void graph_destroy(graph_t **gp) {
  graph_t *g = gp ? *gp : NULL;
  if (!g) return;
  free(g->arena), free(g->name_off), free(g->name_len), free(g->slots);
  free(g->efrom), free(g->eto), free(g->edir);
  free(g);
  *gp = NULL;
}

/* Rebuilds the name table at twice the size (kept under half full). */
static bool rehash(graph_t *g) {
  size_t n = g->n_slots ? g->n_slots * 2 : 64;
  uint32_t *s = calloc(n, sizeof *s);
  if (!s) return false;
  for (uint32_t id = 0; id < g->n_nodes; id++) {
    size_t i = fnv1a(g->arena + g->name_off[id], g->name_len[id]) & (n - 1);
    while (s[i]) i = (i + 1) & (n - 1);
    s[i] = id + 1;
  }
  free(g->slots);
  g->slots = s, g->n_slots = n;
  return true;
}

/* The id of the node named name, created when new. */
static lt_status_t intern(graph_t *g, const char *name, size_t n, uint32_t *id, lt_err_t *err) {
  if (g->n_slots) {
    for (size_t i = fnv1a(name, n) & (g->n_slots - 1); g->slots[i]; i = (i + 1) & (g->n_slots - 1)) {
      uint32_t c = g->slots[i] - 1;
      if (g->name_len[c] == n && memcmp(g->arena + g->name_off[c], name, n) == 0) {
        *id = c;
        return LT_OK;
      }
    }
  }
  if (g->n_nodes >= g->max_nodes)
    return lt_fail(err, LT_E_LIMIT, "more than %u nodes (the max_nodes cap)", g->max_nodes);
  bool ok = grow(&g->name_off, sizeof *g->name_off, &g->cap_off, g->n_nodes + 1) &&
            grow(&g->name_len, sizeof *g->name_len, &g->cap_len, g->n_nodes + 1) &&
            grow(&g->arena, 1, &g->arena_cap, g->arena_len + n + 1);
  if (ok && (g->n_nodes + 1) * 2 > g->n_slots) ok = rehash(g);
  if (!ok) return lt_fail(err, LT_E_NOMEM, "out of memory");
  memcpy(g->arena + g->arena_len, name, n);
  g->arena[g->arena_len + n] = '\0';
  uint32_t c = g->n_nodes++;
  g->name_off[c] = g->arena_len;
  g->name_len[c] = (uint32_t)n;
  g->arena_len += n + 1;
  size_t i = fnv1a(name, n) & (g->n_slots - 1);
  while (g->slots[i]) i = (i + 1) & (g->n_slots - 1);
  g->slots[i] = c + 1;
  *id = c;
  return LT_OK;
}

lt_status_t graph_add_edge(graph_t *g, const char *from, size_t from_n, const char *to, size_t to_n, bool directed,
                           lt_err_t *err) {
  if (from_n > GRAPH_MAX_NAME || to_n > GRAPH_MAX_NAME)
    return lt_fail(err, LT_E_INVALID, "a node name is longer than %u bytes", GRAPH_MAX_NAME);
  if (memchr(from, 0, from_n) || memchr(to, 0, to_n)) return lt_fail(err, LT_E_INVALID, "a node name holds a NUL byte");
  if (g->n_edges >= g->max_edges)
    return lt_fail(err, LT_E_LIMIT, "more than %u edges (the max_edges cap)", g->max_edges);
  uint32_t a, b;
  lt_status_t st = intern(g, from, from_n, &a, err);
  if (st == LT_OK) st = intern(g, to, to_n, &b, err);
  if (st != LT_OK) return st;
  if (!grow(&g->efrom, sizeof *g->efrom, &g->cap_from, g->n_edges + 1) ||
      !grow(&g->eto, sizeof *g->eto, &g->cap_to, g->n_edges + 1) ||
      !grow(&g->edir, sizeof *g->edir, &g->cap_dir, g->n_edges + 1))
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  g->efrom[g->n_edges] = a, g->eto[g->n_edges] = b, g->edir[g->n_edges] = directed;
  g->n_edges++;
  return LT_OK;
}

uint64_t graph_n_edges(const graph_t *g) { return g->n_edges; }

const char *graph_node_name(const graph_t *g, uint32_t id, size_t *len) {
  if (len) *len = g->name_len[id];
  return g->arena + g->name_off[id];
}

/* ---- reading ---- */

/* "true"/"false" words of a directed column; -1 when the text is none of them. */
static int parse_directed(const char *s, size_t n) {
  static const char *yes[] = {"true", "1", "yes", "directed"}, *no[] = {"false", "0", "no", "undirected"};
  for (size_t i = 0; i < 4; i++) {
    if (strlen(yes[i]) == n && strncasecmp(s, yes[i], n) == 0) return 1;
    if (strlen(no[i]) == n && strncasecmp(s, no[i], n) == 0) return 0;
  }
  return -1;
}

/* A node name from a JSON value: a string, or an integer written in decimal. */
static bool json_name(const json_t *v, char *num, const char **s, size_t *n) {
  if (json_is_string(v)) {
    *s = json_string_value(v);
    *n = json_string_length(v);
    return true;
  }
  if (json_is_integer(v)) {
    *n = (size_t)snprintf(num, 32, "%lld", (long long)json_integer_value(v));
    *s = num;
    return true;
  }
  return false;
}

static lt_status_t jsonl_edge(graph_t *g, const char *line, size_t len, bool directed, lt_err_t *err) {
  json_error_t je;
  char jb[160];
  json_t *o = json_loadb(line, len, 0, &je);
  lt_status_t st = LT_OK;
  if (!o || !json_is_object(o)) {
    st = lt_fail(err, LT_E_INVALID, "not a JSON object (%s)",
                 o ? "another JSON value" : jsonl_error_brief(&je, jb, sizeof jb));
    goto out;
  }
  const json_t *f = json_object_get(o, "from"), *t = json_object_get(o, "to"), *d = json_object_get(o, "directed");
  if (!f && !t) f = json_object_get(o, "source"), t = json_object_get(o, "target");
  char nf[32], nt[32];
  const char *sf, *stt;
  size_t lf, lt;
  if (!f || !t || !json_name(f, nf, &sf, &lf) || !json_name(t, nt, &stt, &lt)) {
    st = lt_fail(err, LT_E_INVALID, "needs \"from\" and \"to\" (or \"source\" and \"target\"), strings or integers");
    goto out;
  }
  if (d && !json_is_boolean(d)) {
    st = lt_fail(err, LT_E_INVALID, "\"directed\" must be true or false");
    goto out;
  }
  st = graph_add_edge(g, sf, lf, stt, lt, d ? json_is_true(d) : directed, err);
out:
  json_decref(o);
  return st;
}

#define CSV_MAX_FIELDS 64

/* Splits one CSV line into fields (RFC 4180 quoting; spaces around a field dropped) decoded into out (len + 1
 * bytes); fields i are out[at[i] .. at[i] + n[i]). */
static lt_status_t csv_split(const char *s, size_t len, char *out, size_t *at, size_t *n, size_t *nf, lt_err_t *err) {
  size_t i = 0, o = 0, k = 0;
  for (;;) {
    if (k == CSV_MAX_FIELDS) return lt_fail(err, LT_E_INVALID, "more than %d fields", CSV_MAX_FIELDS);
    while (i < len && (s[i] == ' ' || s[i] == '\t')) i++;
    at[k] = o;
    if (i < len && s[i] == '"') {
      for (i++;; i++) {
        if (i == len) return lt_fail(err, LT_E_INVALID, "unterminated quoted field (a field may not span lines)");
        if (s[i] == '"') {
          if (i + 1 < len && s[i + 1] == '"')
            i++;
          else
            break;
        }
        out[o++] = s[i];
      }
      i++;
      while (i < len && (s[i] == ' ' || s[i] == '\t')) i++;
      if (i < len && s[i] != ',') return lt_fail(err, LT_E_INVALID, "text after a closing quote");
    } else {
      while (i < len && s[i] != ',') out[o++] = s[i++];
      while (o > at[k] && (out[o - 1] == ' ' || out[o - 1] == '\t')) o--;
    }
    n[k] = o - at[k];
    k++;
    if (i >= len) break;
    i++; /* the comma */
  }
  *nf = k;
  return LT_OK;
}

/* Column positions of a CSV file: from, to and directed (-1: none). */
typedef struct csv_cols {
  int from, to, dir;
  bool known; /* decided by the first row */
} csv_cols_t;

static bool is_word(const char *s, size_t n, const char *w) { return strlen(w) == n && strncasecmp(s, w, n) == 0; }

static lt_status_t csv_edge(graph_t *g, const char *line, size_t len, bool directed, csv_cols_t *c, char *scratch,
                            lt_err_t *err) {
  size_t at[CSV_MAX_FIELDS], n[CSV_MAX_FIELDS], nf = 0;
  lt_status_t st = csv_split(line, len, scratch, at, n, &nf, err);
  if (st != LT_OK) return st;
  if (!c->known) {
    /* A header row names its columns; without one the columns are from, to[, directed]. */
    c->known = true;
    int f = -1, t = -1, d = -1;
    for (size_t i = 0; i < nf; i++) {
      const char *w = scratch + at[i];
      if (f < 0 && (is_word(w, n[i], "from") || is_word(w, n[i], "source")))
        f = (int)i;
      else if (t < 0 && (is_word(w, n[i], "to") || is_word(w, n[i], "target")))
        t = (int)i;
      else if (d < 0 && is_word(w, n[i], "directed"))
        d = (int)i;
    }
    if (f >= 0 && t >= 0) {
      c->from = f, c->to = t, c->dir = d;
      return LT_OK;
    }
    c->from = 0, c->to = 1, c->dir = 2;
  }
  int need = c->from > c->to ? c->from : c->to;
  if ((int)nf <= need) return lt_fail(err, LT_E_INVALID, "expected from,to[,directed], got %zu field(s)", nf);
  bool dir = directed;
  if (c->dir >= 0 && (int)nf > c->dir && n[c->dir]) {
    int v = parse_directed(scratch + at[c->dir], n[c->dir]);
    if (v < 0) return lt_fail(err, LT_E_INVALID, "directed column: expected true/false, 1/0, yes/no");
    dir = v == 1;
  }
  return graph_add_edge(g, scratch + at[c->from], n[c->from], scratch + at[c->to], n[c->to], dir, err);
}

static bool ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

lt_status_t graph_read(graph_t *g, const char *path, graph_format_t fmt, bool directed, graph_progress_fn on_progress,
                       void *progress_ctx, lt_err_t *err) {
  if (fmt == GRAPH_AUTO) {
    if (ends_with(path, ".jsonl") || ends_with(path, ".ndjson") || ends_with(path, ".json"))
      fmt = GRAPH_JSONL;
    else if (ends_with(path, ".csv"))
      fmt = GRAPH_CSV;
  }
  lines_t *r = lines_open(path, 1u << 20, err);
  if (!r) return err ? err->code : LT_E_IO;
  csv_cols_t cols = {0};
  char *scratch = NULL;
  size_t scratch_cap = 0;
  const char *line;
  size_t len;
  int got = 0;
  lt_status_t st = LT_OK;
  lt_err_t e = {0};
  while (st == LT_OK && (got = lines_next(r, &line, &len, err)) == 1) {
    size_t a = 0;
    while (a < len && isspace((unsigned char)line[a])) a++;
    if (a == len) continue;
    if (fmt == GRAPH_AUTO) fmt = line[a] == '{' ? GRAPH_JSONL : GRAPH_CSV;
    if (fmt == GRAPH_JSONL)
      st = jsonl_edge(g, line + a, len - a, directed, &e);
    else if (!grow(&scratch, 1, &scratch_cap, len + 1))
      st = lt_fail(&e, LT_E_NOMEM, "out of memory");
    else
      st = csv_edge(g, line, len, directed, &cols, scratch, &e);
    if (st != LT_OK) lt_fail(err, st, "%s:%llu: %s", path, (unsigned long long)lines_lineno(r), e.msg);
    if (on_progress && lines_lineno(r) % 4096 == 0) on_progress(progress_ctx, lines_offset(r), lines_size(r));
  }
  if (st == LT_OK && got < 0) st = (lt_status_t)got;
  if (st == LT_OK && on_progress) on_progress(progress_ctx, lines_offset(r), lines_size(r));
  free(scratch);
  lines_destroy(&r);
  return st;
}

/* ---- flattening ---- */

size_t graph_name_render(const char *name, size_t len, char *buf, size_t n) {
  bool quote = len == 0 || name[0] == ' ' || name[0] == '\t' || name[len - 1] == ' ' || name[len - 1] == '\t';
  for (size_t i = 0; i < len && !quote; i++) {
    unsigned char c = (unsigned char)name[i];
    quote = c < 0x20 || c == 0x7f || c == '[' || c == ']' || c == ',' || c == '"' ||
            (c == '-' && i + 1 < len && name[i + 1] == '>');
  }
  size_t o = 0;
#define PUT(ch)                                                                                                        \
  do {                                                                                                                 \
    if (o + 1 < n) buf[o] = (char)(ch);                                                                                \
    o++;                                                                                                               \
  } while (0)
  if (!quote) {
    for (size_t i = 0; i < len; i++) PUT(name[i]);
  } else {
    PUT('"');
    for (size_t i = 0; i < len; i++) {
      unsigned char c = (unsigned char)name[i];
      const char *esc = c == '"'    ? "\\\""
                        : c == '\\' ? "\\\\"
                        : c == '\n' ? "\\n"
                        : c == '\t' ? "\\t"
                        : c == '\r' ? "\\r"
                                    : NULL;
      char hex[8];
      if (!esc && (c < 0x20 || c == 0x7f)) {
        snprintf(hex, sizeof hex, "\\u%04x", c);
        esc = hex;
      }
      if (esc)
        for (const char *p = esc; *p; p++) PUT(*p);
      else
        PUT(c);
    }
    PUT('"');
  }
#undef PUT
  if (n) buf[o < n ? o : n - 1] = '\0';
  return o;
}

/* Working arrays of one flattening, freed together. */
typedef struct flat_work {
  uint32_t *ef, *et;  /* oriented, de-duplicated, loop-free edges in input order */
  uint64_t *set;      /* open-addressing set of (from << 32 | to) + 1 */
  size_t *off, *koff; /* CSR offsets: all edges, kept edges */
  uint32_t *to, *kto; /* CSR targets */
  bool *keep;         /* per CSR edge: not a back edge */
  uint8_t *color;     /* DFS: 0 white, 1 on the stack, 2 done */
  uint32_t *stack;    /* DFS stack of nodes */
  size_t *iter;       /* per node: next CSR edge to look at */
  uint32_t *post;     /* nodes in DFS post-order */
  uint32_t *indeg, *outdeg;
  uint64_t *count;                                  /* paths from each node to a sink */
  size_t *rlen;                                     /* rendered name lengths */
  uint32_t *tn_node, *tn_child, *tn_next, *tn_last; /* the trie: graph node, first child, next sibling, last child */
} flat_work_t;

static void work_free(flat_work_t *w) {
  free(w->ef), free(w->et), free(w->set), free(w->off), free(w->koff), free(w->to), free(w->kto), free(w->keep);
  free(w->color), free(w->stack), free(w->iter), free(w->post), free(w->indeg), free(w->outdeg), free(w->count);
  free(w->rlen), free(w->tn_node), free(w->tn_child), free(w->tn_next), free(w->tn_last);
}

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* Orients undirected edges, drops repeats and self-loops (counted as back edges) and builds the CSR. */
static lt_status_t orient(const graph_t *g, flat_work_t *w, graph_flat_t *out, uint64_t *m_out, lt_err_t *err) {
  uint32_t n = g->n_nodes;
  size_t slots = 64;
  while (slots < g->n_edges * 2) slots *= 2;
  w->ef = malloc((g->n_edges + 1) * sizeof *w->ef);
  w->et = malloc((g->n_edges + 1) * sizeof *w->et);
  w->set = calloc(slots, sizeof *w->set);
  w->off = calloc((size_t)n + 1, sizeof *w->off);
  if (!w->ef || !w->et || !w->set || !w->off) return lt_fail(err, LT_E_NOMEM, "out of memory");
  uint64_t m = 0;
  for (uint64_t e = 0; e < g->n_edges; e++) {
    uint32_t a = g->efrom[e], b = g->eto[e];
    if (!g->edir[e]) {
      out->n_undirected++;
      if (b < a) a = g->eto[e], b = g->efrom[e]; /* from the node seen first */
    }
    uint64_t key = ((uint64_t)a << 32 | b) + 1;
    size_t i = fnv1a((const char *)&key, sizeof key) & (slots - 1);
    while (w->set[i] && w->set[i] != key) i = (i + 1) & (slots - 1);
    if (w->set[i]) {
      out->n_duplicates++;
      continue;
    }
    w->set[i] = key;
    if (a == b) {
      out->n_back_edges++;
      continue;
    }
    w->ef[m] = a, w->et[m] = b, m++;
    w->off[a + 1]++;
  }
  for (uint32_t v = 0; v < n; v++) w->off[v + 1] += w->off[v];
  w->to = malloc((m + 1) * sizeof *w->to);
  size_t *fill = malloc(((size_t)n + 1) * sizeof *fill);
  if (!w->to || !fill) {
    free(fill);
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  memcpy(fill, w->off, ((size_t)n + 1) * sizeof *fill);
  for (uint64_t e = 0; e < m; e++) w->to[fill[w->ef[e]]++] = w->et[e]; /* stable: input order per node */
  free(fill);
  *m_out = m;
  return LT_OK;
}

/* Depth-first search from every node in order of appearance: back edges are dropped (keep[e] false) and the
 * nodes are recorded in post-order (a reverse topological order of what is kept). */
static lt_status_t break_cycles(uint32_t n, uint64_t m, flat_work_t *w, graph_flat_t *out, lt_err_t *err) {
  w->keep = malloc((m + 1) * sizeof *w->keep);
  w->color = calloc((size_t)n + 1, 1);
  w->stack = malloc(((size_t)n + 1) * sizeof *w->stack);
  w->iter = malloc(((size_t)n + 1) * sizeof *w->iter);
  w->post = malloc(((size_t)n + 1) * sizeof *w->post);
  if (!w->keep || !w->color || !w->stack || !w->iter || !w->post) return lt_fail(err, LT_E_NOMEM, "out of memory");
  size_t np = 0;
  for (uint32_t s = 0; s < n; s++) {
    if (w->color[s]) continue;
    size_t top = 0;
    w->stack[top++] = s;
    w->color[s] = 1;
    w->iter[s] = w->off[s];
    while (top) {
      uint32_t v = w->stack[top - 1];
      if (w->iter[v] == w->off[v + 1]) {
        w->color[v] = 2;
        w->post[np++] = v;
        top--;
        continue;
      }
      size_t e = w->iter[v]++;
      uint32_t u = w->to[e];
      w->keep[e] = w->color[u] != 1;
      if (w->color[u] == 1)
        out->n_back_edges++;
      else if (w->color[u] == 0) {
        w->color[u] = 1;
        w->iter[u] = w->off[u];
        w->stack[top++] = u;
      }
    }
  }
  return LT_OK;
}

/* Kept-edge CSR, degrees, endpoints and path counts. */
static lt_status_t endpoints(uint32_t n, uint64_t m, flat_work_t *w, graph_flat_t *out, lt_err_t *err) {
  w->koff = calloc((size_t)n + 1, sizeof *w->koff);
  w->kto = malloc((m + 1) * sizeof *w->kto);
  w->indeg = calloc((size_t)n + 1, sizeof *w->indeg);
  w->outdeg = calloc((size_t)n + 1, sizeof *w->outdeg);
  w->count = calloc((size_t)n + 1, sizeof *w->count);
  out->sources = malloc(((size_t)n + 1) * sizeof *out->sources);
  out->sinks = malloc(((size_t)n + 1) * sizeof *out->sinks);
  if (!w->koff || !w->kto || !w->indeg || !w->outdeg || !w->count || !out->sources || !out->sinks)
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  size_t k = 0;
  for (uint32_t v = 0; v < n; v++) {
    for (size_t e = w->off[v]; e < w->off[v + 1]; e++)
      if (w->keep[e]) {
        w->kto[k++] = w->to[e];
        w->indeg[w->to[e]]++;
        w->outdeg[v]++;
      }
    w->koff[v + 1] = k;
  }
  out->n_edges = k;
  for (uint32_t i = 0; i < n; i++) { /* post-order: successors are counted before their predecessors */
    uint32_t v = w->post[i];
    if (!w->outdeg[v]) w->count[v] = 1;
    for (size_t e = w->koff[v]; e < w->koff[v + 1]; e++) w->count[v] = sat_add(w->count[v], w->count[w->kto[e]]);
  }
  for (uint32_t v = 0; v < n; v++) {
    if (!w->indeg[v]) {
      out->sources[out->n_sources++] = v;
      out->total_paths = sat_add(out->total_paths, w->count[v]);
    }
    if (!w->outdeg[v]) out->sinks[out->n_sinks++] = v;
  }
  return LT_OK;
}

/* Lists source-to-sink paths depth first until a cap is reached. */
static lt_status_t list_paths(const graph_t *g, const graph_flat_opts_t *o, flat_work_t *w, graph_flat_t *out,
                              lt_err_t *err) {
  uint32_t n = g->n_nodes;
  uint32_t max_paths = o && o->max_paths ? o->max_paths : GRAPH_DEF_MAX_PATHS;
  size_t max_bytes = o && o->max_bytes ? o->max_bytes : GRAPH_DEF_MAX_BYTES;
  w->rlen = malloc(((size_t)n + 1) * sizeof *w->rlen);
  size_t cap_nodes = 0, cap_starts = 0;
  if (!w->rlen || !grow(&out->path_start, sizeof *out->path_start, &cap_starts, 1))
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t v = 0; v < n; v++) w->rlen[v] = graph_name_render(g->arena + g->name_off[v], g->name_len[v], NULL, 0);
  out->path_start[0] = 0;
  size_t bytes = 0, used = 0;
  for (uint32_t si = 0; si < out->n_sources && !out->truncated; si++) {
    size_t top = 0, plen = 0; /* plen: flat bytes of the nodes on the stack with their arrows */
    uint32_t s = out->sources[si];
    w->stack[top++] = s;
    w->iter[s] = w->koff[s];
    plen = w->rlen[s];
    while (top && !out->truncated) {
      uint32_t v = w->stack[top - 1];
      if (w->iter[v] == w->koff[v] && !w->outdeg[v]) { /* a sink, first visit: the stack is a path */
        w->iter[v]++;                                  /* visited: popped next round */
        char total[48];                                /* a saturated count is a lower bound */
        snprintf(total, sizeof total, "%s%llu", out->total_paths == UINT64_MAX ? "at least " : "",
                 (unsigned long long)out->total_paths);
        if (out->n_paths == max_paths) {
          out->truncated = true;
          snprintf(out->note, sizeof out->note, "listed the first %zu of %s paths (the max_paths cap)", out->n_paths,
                   total);
          break;
        }
        if (bytes + plen + 1 > max_bytes) {
          out->truncated = true;
          snprintf(out->note, sizeof out->note,
                   "listed %zu of %s paths: the next one (%zu bytes) would pass the max_bytes cap of %zu bytes",
                   out->n_paths, total, plen + 1, max_bytes);
          break;
        }
        if (!grow(&out->path_nodes, sizeof *out->path_nodes, &cap_nodes, used + top) ||
            !grow(&out->path_start, sizeof *out->path_start, &cap_starts, out->n_paths + 2))
          return lt_fail(err, LT_E_NOMEM, "out of memory");
        memcpy(out->path_nodes + used, w->stack, top * sizeof *w->stack);
        used += top;
        out->path_start[++out->n_paths] = used;
        bytes += plen + 1;
        continue;
      }
      if (w->iter[v] >= w->koff[v + 1]) {
        top--;
        plen -= w->rlen[v] + (top ? 4 : 0);
        continue;
      }
      uint32_t u = w->kto[w->iter[v]++];
      w->iter[u] = w->koff[u];
      w->stack[top++] = u;
      plen += 4 + w->rlen[u];
    }
  }
  return LT_OK;
}

/* Builds the trie of the listed paths (consecutive paths from one source share their longest common prefix, so
 * only the last child needs comparing) and writes it: one line per source, `a -> b`, branches `a -> [b, c]`. */
static lt_status_t render(const graph_t *g, flat_work_t *w, graph_flat_t *out, lt_err_t *err) {
  size_t total = out->n_paths ? out->path_start[out->n_paths] : 0;
  size_t cap = total + 1;
  w->tn_node = malloc(cap * sizeof *w->tn_node);
  w->tn_child = malloc(cap * sizeof *w->tn_child);
  w->tn_next = malloc(cap * sizeof *w->tn_next);
  w->tn_last = malloc(cap * sizeof *w->tn_last);
  if (!w->tn_node || !w->tn_child || !w->tn_next || !w->tn_last) return lt_fail(err, LT_E_NOMEM, "out of memory");
  const uint32_t NONE = UINT32_MAX;
  uint32_t nt = 0, root_first = NONE, root_last = NONE;
  for (size_t p = 0; p < out->n_paths; p++) {
    const uint32_t *path = out->path_nodes + out->path_start[p];
    size_t len = out->path_start[p + 1] - out->path_start[p];
    uint32_t at = NONE; /* the trie node matched so far; NONE: the root level */
    for (size_t d = 0; d < len; d++) {
      uint32_t last = at == NONE ? root_last : w->tn_last[at];
      if (last != NONE && w->tn_node[last] == path[d]) {
        at = last;
        continue;
      }
      uint32_t t = nt++;
      w->tn_node[t] = path[d], w->tn_child[t] = w->tn_last[t] = w->tn_next[t] = NONE;
      if (at == NONE) {
        if (root_last != NONE)
          w->tn_next[root_last] = t;
        else
          root_first = t;
        root_last = t;
      } else {
        if (w->tn_last[at] != NONE)
          w->tn_next[w->tn_last[at]] = t;
        else
          w->tn_child[at] = t;
        w->tn_last[at] = t;
      }
      at = t;
    }
  }
  /* Merging never lengthens the unmerged form (a shared prefix saves at least 6 bytes per extra branch, a
   * branch costs "[", "]" and ", "), so its size bounds the text. */
  size_t bound = 1;
  for (size_t p = 0; p < out->n_paths; p++) {
    size_t a = out->path_start[p], b = out->path_start[p + 1];
    for (size_t i = a; i < b; i++) bound += w->rlen[out->path_nodes[i]] + 4;
    bound += 1;
  }
  out->text = malloc(bound);
  uint32_t *stk = malloc(cap * sizeof *stk);
  if (!out->text || !stk) {
    free(stk);
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  size_t o = 0;
  for (uint32_t r = root_first; r != NONE; r = w->tn_next[r]) {
    size_t top = 0;
    uint32_t t = r;
    for (;;) {
      size_t nlen;
      const char *name = graph_node_name(g, w->tn_node[t], &nlen);
      o += graph_name_render(name, nlen, out->text + o, bound - o);
      uint32_t c = w->tn_child[t];
      if (c != NONE) {
        bool branch = w->tn_next[c] != NONE;
        memcpy(out->text + o, branch ? " -> [" : " -> ", branch ? 5 : 4);
        o += branch ? 5 : 4;
        stk[top++] = t;
        t = c;
        continue;
      }
      /* A leaf: climb until a parent has a next child, closing the branches left behind. */
      while (top) {
        uint32_t parent = stk[top - 1];
        bool branch = w->tn_next[w->tn_child[parent]] != NONE;
        if (branch && w->tn_next[t] != NONE) break;
        if (branch) out->text[o++] = ']';
        t = parent;
        top--;
      }
      if (!top) break;
      memcpy(out->text + o, ", ", 2);
      o += 2;
      t = w->tn_next[t];
    }
    out->text[o++] = '\n';
  }
  out->text[o] = '\0';
  out->text_len = o;
  free(stk);
  return LT_OK;
}

lt_status_t graph_flatten(const graph_t *g, const graph_flat_opts_t *o, graph_flat_t *out, lt_err_t *err) {
  memset(out, 0, sizeof *out);
  flat_work_t w = {0};
  uint64_t m = 0;
  out->n_nodes = g->n_nodes;
  lt_status_t st = orient(g, &w, out, &m, err);
  if (st == LT_OK) st = break_cycles(g->n_nodes, m, &w, out, err);
  if (st == LT_OK) st = endpoints(g->n_nodes, m, &w, out, err);
  if (st == LT_OK) st = list_paths(g, o, &w, out, err);
  if (st == LT_OK) st = render(g, &w, out, err);
  work_free(&w);
  if (st != LT_OK) graph_flat_free(out);
  return st;
}

void graph_flat_free(graph_flat_t *f) {
  if (!f) return;
  free(f->path_nodes), free(f->path_start), free(f->text), free(f->sources), free(f->sinks);
  memset(f, 0, sizeof *f);
}
