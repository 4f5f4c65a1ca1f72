/* A Jinja subset for chat templates: the template is split into pieces (text, {{ }}, {% %}, {# #}) with
 * Hugging Face's whitespace rules applied to the text, parsed into a tree, and the tree is evaluated against
 * the conversation. Parsing and rendering allocate from arenas and report errors by longjmp to the entry point,
 * which frees the arena: nothing allocated inside is ever freed on its own. */
#include "engine/text/chat.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUT_LIMIT (16u << 20) /* bytes of rendered text */
#define MEM_LIMIT (64u << 20) /* bytes of parse or render working memory */
#define RANGE_LIMIT 100000    /* entries of range() */

const char *const CHAT_PLAIN_TEMPLATE = "{% for message in messages %}{{ message['role'] | capitalize }}: "
                                        "{{ message['content'] | trim }}\n\n{% endfor %}"
                                        "{% if add_generation_prompt %}Assistant:{% endif %}";

const char *const CHAT_PLAIN_STOPS[] = {"\nUser:", "\nAssistant:", "\nSystem:", NULL};

/* ---- arena and errors ---- */

typedef struct ablock {
  struct ablock *next;
  size_t used, cap;
  max_align_t data[];
} ablock_t;

typedef struct arena {
  ablock_t *head;
  size_t total;
} arena_t;

static void arena_free(arena_t *a) {
  for (ablock_t *b = a->head, *next; b; b = next) {
    next = b->next;
    free(b);
  }
  a->head = NULL;
  a->total = 0;
}

/* Parse and render state: where errors go, the arena, the line being worked on. Always heap-allocated, so its
 * fields keep their values across the longjmp. */
typedef struct jx {
  jmp_buf jb;
  lt_err_t *err;
  arena_t mem;
  int line;
} jx_t;

__attribute__((format(printf, 3, 4))) static _Noreturn void jfail(jx_t *x, lt_status_t code, const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  lt_fail(x->err, code, "chat template line %d: %s", x->line, msg);
  longjmp(x->jb, 1);
}

/* n zeroed bytes from the arena (fails past MEM_LIMIT). */
static void *jalloc(jx_t *x, size_t n) {
  n = (n + 15) & ~(size_t)15;
  ablock_t *b = x->mem.head;
  if (!b || b->cap - b->used < n) {
    size_t cap = n > 65536 ? n : 65536;
    if (x->mem.total + cap > MEM_LIMIT) jfail(x, LT_E_LIMIT, "more than %u MiB of working memory", MEM_LIMIT >> 20);
    if (!(b = malloc(sizeof *b + cap))) jfail(x, LT_E_NOMEM, "out of memory");
    b->next = x->mem.head, b->used = 0, b->cap = cap;
    x->mem.head = b;
    x->mem.total += cap;
  }
  void *p = (char *)b->data + b->used;
  b->used += n;
  memset(p, 0, n);
  return p;
}

static char *jstrdup(jx_t *x, const char *s, size_t n) {
  char *p = jalloc(x, n + 1);
  memcpy(p, s, n);
  return p;
}

/* A growable array of pointers in the arena. */
typedef struct parr {
  void **v;
  size_t n, cap;
} parr_t;

static void parr_push(jx_t *x, parr_t *a, void *p) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 8;
    void **v = jalloc(x, cap * sizeof *v);
    if (a->n) memcpy(v, a->v, a->n * sizeof *v);
    a->v = v, a->cap = cap;
  }
  a->v[a->n++] = p;
}

/* A growable byte string in the arena. */
typedef struct sbuf {
  char *p;
  size_t n, cap;
} sbuf_t;

static void sb_add(jx_t *x, sbuf_t *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = jalloc(x, cap);
    if (b->n) memcpy(p, b->p, b->n);
    b->p = p, b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static void sb_str(jx_t *x, sbuf_t *b, const char *s) { sb_add(x, b, s, strlen(s)); }

/* ---- values ---- */

typedef enum vt { V_UNDEF, V_NONE, V_BOOL, V_INT, V_STR, V_LIST, V_DICT } vt_t;

typedef struct vlist vlist_t;
typedef struct vdict vdict_t;

/* A value; an undefined value keeps the name it came from in s, for messages. */
typedef struct val {
  vt_t t;
  union {
    bool b;
    int64_t i;
    struct {
      const char *p;
      size_t n;
    } s;
    vlist_t *l;
    vdict_t *d;
  };
} val_t;

struct vlist {
  size_t n;
  val_t *v;
};

struct vdict {
  size_t n, cap;
  const char **k;
  size_t *kn;
  val_t *v;
  bool ns; /* a namespace(): attributes may be assigned */
};

static const char *vt_name(vt_t t) {
  static const char *names[] = {"undefined", "none", "boolean", "integer", "string", "list", "dict"};
  return names[t];
}

static val_t v_undef(const char *hint) { return (val_t){.t = V_UNDEF, .s = {hint, hint ? strlen(hint) : 0}}; }
static val_t v_none(void) { return (val_t){.t = V_NONE}; }
static val_t v_bool(bool b) { return (val_t){.t = V_BOOL, .b = b}; }
static val_t v_int(int64_t i) { return (val_t){.t = V_INT, .i = i}; }
static val_t v_str(const char *p, size_t n) { return (val_t){.t = V_STR, .s = {p, n}}; }

static vlist_t *list_new(jx_t *x, size_t n) {
  vlist_t *l = jalloc(x, sizeof *l);
  l->n = n;
  l->v = jalloc(x, (n ? n : 1) * sizeof *l->v);
  return l;
}

static val_t v_list(vlist_t *l) { return (val_t){.t = V_LIST, .l = l}; }

static vdict_t *dict_new(jx_t *x) { return jalloc(x, sizeof(vdict_t)); }

static val_t *dict_get(const vdict_t *d, const char *k, size_t kn) {
  for (size_t i = 0; i < d->n; i++)
    if (d->kn[i] == kn && memcmp(d->k[i], k, kn) == 0) return &d->v[i];
  return NULL;
}

static void dict_set(jx_t *x, vdict_t *d, const char *k, size_t kn, val_t v) {
  val_t *have = dict_get(d, k, kn);
  if (have) {
    *have = v;
    return;
  }
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 8;
    const char **nk = jalloc(x, cap * sizeof *nk);
    size_t *nkn = jalloc(x, cap * sizeof *nkn);
    val_t *nv = jalloc(x, cap * sizeof *nv);
    if (d->n) {
      memcpy(nk, d->k, d->n * sizeof *nk);
      memcpy(nkn, d->kn, d->n * sizeof *nkn);
      memcpy(nv, d->v, d->n * sizeof *nv);
    }
    d->k = nk, d->kn = nkn, d->v = nv, d->cap = cap;
  }
  d->k[d->n] = k, d->kn[d->n] = kn, d->v[d->n] = v;
  d->n++;
}

static void dict_sets(jx_t *x, vdict_t *d, const char *k, val_t v) { dict_set(x, d, k, strlen(k), v); }

static bool truthy(val_t v) {
  switch (v.t) {
  case V_UNDEF:
  case V_NONE: return false;
  case V_BOOL: return v.b;
  case V_INT: return v.i != 0;
  case V_STR: return v.s.n != 0;
  case V_LIST: return v.l->n != 0;
  case V_DICT: return v.d->n != 0;
  }
  return false;
}

/* ---- UTF-8 helpers (Python strings count code points) ---- */

/* Decodes the code point at s[*i] (advancing *i); invalid bytes count as one code point each. */
static uint32_t utf8_next(const char *s, size_t n, size_t *i) {
  const unsigned char *u = (const unsigned char *)s;
  uint32_t c = u[*i];
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (*i + len > n) len = 1;
  if (len > 1) {
    c &= 0x3f >> (len - 1);
    for (size_t k = 1; k < len; k++) c = c << 6 | (u[*i + k] & 0x3f);
  }
  *i += len;
  return c;
}

static size_t utf8_count(const char *s, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; k++) utf8_next(s, n, &i);
  return k;
}

/* Byte offset of code point index k (clamped to the end). */
static size_t utf8_offset(const char *s, size_t n, size_t k) {
  size_t i = 0;
  while (k-- && i < n) utf8_next(s, n, &i);
  return i;
}

/* Python's str.isspace() for one code point. */
static bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Strips Python whitespace (chars NULL) or the code points of chars from the ends of s. */
static val_t strip(val_t s, bool left, bool right, const val_t *chars) {
  size_t a = 0, b = s.s.n;
  for (;;) { /* left */
    if (!left || a >= b) break;
    size_t i = a;
    uint32_t c = utf8_next(s.s.p, b, &i);
    bool drop = false;
    if (chars) {
      for (size_t j = 0; j < chars->s.n && !drop;) drop = utf8_next(chars->s.p, chars->s.n, &j) == c;
    } else
      drop = py_space(c);
    if (!drop) break;
    a = i;
  }
  while (right && b > a) {
    size_t start = b - 1;
    while (start > a && ((unsigned char)s.s.p[start] & 0xc0) == 0x80) start--;
    size_t i = start;
    uint32_t c = utf8_next(s.s.p, b, &i);
    bool drop = false;
    if (chars) {
      for (size_t j = 0; j < chars->s.n && !drop;) drop = utf8_next(chars->s.p, chars->s.n, &j) == c;
    } else
      drop = py_space(c);
    if (!drop) break;
    b = start;
  }
  return v_str(s.s.p + a, b - a);
}

/* ---- text conversions ---- */

static void repr_into(jx_t *x, sbuf_t *b, val_t v);

/* Python's str() of v into b (undefined: nothing). */
static void str_into(jx_t *x, sbuf_t *b, val_t v) {
  char num[32];
  switch (v.t) {
  case V_UNDEF: break;
  case V_NONE: sb_str(x, b, "None"); break;
  case V_BOOL: sb_str(x, b, v.b ? "True" : "False"); break;
  case V_INT:
    snprintf(num, sizeof num, "%lld", (long long)v.i);
    sb_str(x, b, num);
    break;
  case V_STR: sb_add(x, b, v.s.p, v.s.n); break;
  case V_LIST:
    sb_str(x, b, "[");
    for (size_t i = 0; i < v.l->n; i++) {
      if (i) sb_str(x, b, ", ");
      repr_into(x, b, v.l->v[i]);
    }
    sb_str(x, b, "]");
    break;
  case V_DICT:
    sb_str(x, b, v.d->ns ? "<Namespace {" : "{");
    for (size_t i = 0; i < v.d->n; i++) {
      if (i) sb_str(x, b, ", ");
      repr_into(x, b, v_str(v.d->k[i], v.d->kn[i]));
      sb_str(x, b, ": ");
      repr_into(x, b, v.d->v[i]);
    }
    sb_str(x, b, v.d->ns ? "}>" : "}");
    break;
  }
}

/* Python's repr(): strings quoted, the rest as str(). */
static void repr_into(jx_t *x, sbuf_t *b, val_t v) {
  if (v.t != V_STR) {
    str_into(x, b, v);
    return;
  }
  bool dq = memchr(v.s.p, '\'', v.s.n) && !memchr(v.s.p, '"', v.s.n);
  char q = dq ? '"' : '\'';
  sb_add(x, b, &q, 1);
  for (size_t i = 0; i < v.s.n; i++) {
    char c = v.s.p[i];
    if (c == '\\')
      sb_str(x, b, "\\\\");
    else if (c == q)
      sb_str(x, b, dq ? "\\\"" : "\\'");
    else if (c == '\n')
      sb_str(x, b, "\\n");
    else if (c == '\t')
      sb_str(x, b, "\\t");
    else if (c == '\r')
      sb_str(x, b, "\\r");
    else
      sb_add(x, b, &c, 1);
  }
  sb_add(x, b, &q, 1);
}

static val_t to_str(jx_t *x, val_t v) {
  if (v.t == V_STR) return v;
  sbuf_t b = {0};
  str_into(x, &b, v);
  return v_str(b.p ? b.p : "", b.n);
}

/* json.dumps(v, ensure_ascii=False) with Python's default separators, as Hugging Face's tojson filter. */
static void json_into(jx_t *x, sbuf_t *b, val_t v) {
  switch (v.t) {
  case V_UNDEF:
  case V_NONE: sb_str(x, b, "null"); break;
  case V_BOOL: sb_str(x, b, v.b ? "true" : "false"); break;
  case V_INT: str_into(x, b, v); break;
  case V_STR:
    sb_str(x, b, "\"");
    for (size_t i = 0; i < v.s.n; i++) {
      unsigned char c = (unsigned char)v.s.p[i];
      char esc[8];
      if (c == '"')
        sb_str(x, b, "\\\"");
      else if (c == '\\')
        sb_str(x, b, "\\\\");
      else if (c == '\n')
        sb_str(x, b, "\\n");
      else if (c == '\r')
        sb_str(x, b, "\\r");
      else if (c == '\t')
        sb_str(x, b, "\\t");
      else if (c == '\b')
        sb_str(x, b, "\\b");
      else if (c == '\f')
        sb_str(x, b, "\\f");
      else if (c < 0x20) {
        snprintf(esc, sizeof esc, "\\u%04x", c);
        sb_str(x, b, esc);
      } else
        sb_add(x, b, (const char *)&v.s.p[i], 1);
    }
    sb_str(x, b, "\"");
    break;
  case V_LIST:
    sb_str(x, b, "[");
    for (size_t i = 0; i < v.l->n; i++) {
      if (i) sb_str(x, b, ", ");
      json_into(x, b, v.l->v[i]);
    }
    sb_str(x, b, "]");
    break;
  case V_DICT:
    sb_str(x, b, "{");
    for (size_t i = 0; i < v.d->n; i++) {
      if (i) sb_str(x, b, ", ");
      json_into(x, b, v_str(v.d->k[i], v.d->kn[i]));
      sb_str(x, b, ": ");
      json_into(x, b, v.d->v[i]);
    }
    sb_str(x, b, "}");
    break;
  }
}

/* ---- the template: pieces ---- */

typedef enum pkind { PK_TEXT, PK_VAR, PK_BLOCK, PK_COMMENT } pkind_t;

typedef struct piece {
  pkind_t k;
  const char *p; /* text, or the inside of the tag without its markers */
  size_t n;
  int line;
  bool strip_before, strip_after, plus; /* {%- or {{-, -%} or -}}, {%+ */
} piece_t;

/* The source with newlines normalised to \n and one trailing newline dropped (Jinja's defaults). */
static char *normalise(jx_t *x, const char *src, size_t *n_out) {
  size_t n = strlen(src), o = 0;
  char *s = jalloc(x, n + 1);
  for (size_t i = 0; i < n; i++) {
    if (src[i] == '\r') {
      if (i + 1 < n && src[i + 1] == '\n') i++;
      s[o++] = '\n';
    } else
      s[o++] = src[i];
  }
  if (o && s[o - 1] == '\n') o--;
  s[o] = '\0';
  *n_out = o;
  return s;
}

/* Finds the closing marker c1 c2 of a tag from i, skipping quoted strings; returns its index or n. */
static size_t find_close(const char *s, size_t n, size_t i, char c1, char c2, bool strings) {
  for (; i + 1 < n; i++) {
    if (strings && (s[i] == '\'' || s[i] == '"')) {
      char q = s[i];
      for (i++; i < n && s[i] != q; i++)
        if (s[i] == '\\') i++;
      continue;
    }
    if (s[i] == c1 && s[i + 1] == c2) return i;
  }
  return n;
}

static int count_lines(const char *s, size_t a, size_t b, int line) {
  for (size_t i = a; i < b; i++) line += s[i] == '\n';
  return line;
}

/* Splits the source into pieces and applies the whitespace rules to the text pieces: {%- and -%} strip all
 * whitespace on their side; otherwise a block or comment tag takes the newline right after it (trim_blocks) and
 * the spaces and tabs before it on its line (lstrip_blocks, unless written {%+). */
static piece_t *split(jx_t *x, const char *s, size_t n, size_t *np) {
  parr_t a = {0};
  size_t i = 0;
  int line = 1;
  while (i < n) {
    size_t j = i;
    while (j + 1 < n && !(s[j] == '{' && (s[j + 1] == '{' || s[j + 1] == '%' || s[j + 1] == '#'))) j++;
    if (j + 1 >= n) j = n;
    if (j > i) {
      piece_t *t = jalloc(x, sizeof *t);
      *t = (piece_t){.k = PK_TEXT, .p = s + i, .n = j - i, .line = line};
      parr_push(x, &a, t);
      line = count_lines(s, i, j, line);
    }
    if (j == n) break;
    piece_t *t = jalloc(x, sizeof *t);
    char open = s[j + 1];
    t->k = open == '{' ? PK_VAR : open == '%' ? PK_BLOCK : PK_COMMENT;
    t->line = line;
    size_t a0 = j + 2;
    if (a0 < n && s[a0] == '-')
      t->strip_before = true, a0++;
    else if (a0 < n && s[a0] == '+' && t->k != PK_VAR)
      t->plus = true, a0++;
    char c1 = t->k == PK_VAR ? '}' : t->k == PK_BLOCK ? '%' : '#';
    size_t close = find_close(s, n, a0, c1, '}', t->k != PK_COMMENT);
    x->line = line;
    if (close == n) jfail(x, LT_E_INVALID, "unclosed %s", t->k == PK_VAR ? "{{" : t->k == PK_BLOCK ? "{%" : "{#");
    size_t b0 = close;
    if (b0 > a0 && s[b0 - 1] == '-') t->strip_after = true, b0--;
    t->p = s + a0, t->n = b0 - a0;
    parr_push(x, &a, t);
    line = count_lines(s, j, close + 2, line);
    i = close + 2;
  }
  piece_t *out = jalloc(x, (a.n ? a.n : 1) * sizeof *out);
  for (size_t k = 0; k < a.n; k++) out[k] = *(piece_t *)a.v[k];
  for (size_t k = 0; k < a.n; k++) {
    piece_t *t = &out[k];
    if (t->k != PK_TEXT) continue;
    const piece_t *prev = k ? &out[k - 1] : NULL, *next = k + 1 < a.n ? &out[k + 1] : NULL;
    size_t lo = 0, hi = t->n;
    if (prev && prev->strip_after) {
      while (lo < hi && strchr(" \t\n\r\f\v", t->p[lo])) lo++;
    } else if (prev && (prev->k == PK_BLOCK || prev->k == PK_COMMENT) && t->n && t->p[0] == '\n')
      lo = 1;
    if (next && next->strip_before) {
      while (hi > lo && strchr(" \t\n\r\f\v", t->p[hi - 1])) hi--;
    } else if (next && (next->k == PK_BLOCK || next->k == PK_COMMENT) && !next->plus) {
      size_t ls = t->n; /* start of the tag's line within the text */
      while (ls > 0 && t->p[ls - 1] != '\n') ls--;
      bool line_start = ls > 0 || t->p == s || t->p[-1] == '\n';
      bool blank = true;
      for (size_t q = ls; q < t->n && blank; q++) blank = t->p[q] == ' ' || t->p[q] == '\t';
      if (line_start && blank && ls < hi) hi = ls > lo ? ls : lo;
    }
    t->p += lo;
    t->n = hi > lo ? hi - lo : 0;
  }
  *np = a.n;
  return out;
}

/* ---- expression tokens ---- */

typedef enum jt { J_END, J_NAME, J_STR, J_INT, J_OP } jt_t;

typedef struct jtok {
  jt_t t;
  const char *p; /* J_STR: the decoded string */
  size_t n;
  int64_t i;
} jtok_t;

static int hexval(char c) {
  return c >= '0' && c <= '9'   ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

static void put_utf8(jx_t *x, sbuf_t *b, uint32_t c) {
  char u[4];
  size_t n;
  if (c < 0x80)
    u[0] = (char)c, n = 1;
  else if (c < 0x800)
    u[0] = (char)(0xc0 | c >> 6), u[1] = (char)(0x80 | (c & 0x3f)), n = 2;
  else if (c < 0x10000)
    u[0] = (char)(0xe0 | c >> 12), u[1] = (char)(0x80 | (c >> 6 & 0x3f)), u[2] = (char)(0x80 | (c & 0x3f)), n = 3;
  else
    u[0] = (char)(0xf0 | c >> 18), u[1] = (char)(0x80 | (c >> 12 & 0x3f)), u[2] = (char)(0x80 | (c >> 6 & 0x3f)),
    u[3] = (char)(0x80 | (c & 0x3f)), n = 4;
  sb_add(x, b, u, n);
}

/* Decodes a string literal's body with Python's escapes (unknown escapes stay as written). */
static void unescape(jx_t *x, const char *s, size_t n, sbuf_t *b) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '\\' || i + 1 == n) {
      sb_add(x, b, s + i, 1);
      continue;
    }
    char c = s[++i];
    const char *simple = "n\nt\tr\r\\\\''\"\"a\ab\bf\fv\v";
    const char *hit = NULL;
    for (const char *p = simple; *p; p += 2)
      if (*p == c) hit = p + 1;
    if (hit) {
      sb_add(x, b, hit, 1);
    } else if (c >= '0' && c <= '7') {
      uint32_t v = 0;
      size_t k = 0;
      while (k < 3 && i < n && s[i] >= '0' && s[i] <= '7') v = v * 8 + (uint32_t)(s[i++] - '0'), k++;
      i--;
      put_utf8(x, b, v);
    } else if (c == 'x' || c == 'u' || c == 'U') {
      size_t want = c == 'x' ? 2 : c == 'u' ? 4 : 8;
      uint32_t v = 0;
      if (i + want >= n) jfail(x, LT_E_INVALID, "truncated \\%c escape", c);
      for (size_t k = 1; k <= want; k++) {
        int h = hexval(s[i + k]);
        if (h < 0) jfail(x, LT_E_INVALID, "bad \\%c escape", c);
        v = v << 4 | (uint32_t)h;
      }
      if (v > 0x10ffff) jfail(x, LT_E_INVALID, "escape out of the Unicode range");
      i += want;
      put_utf8(x, b, v);
    } else {
      sb_add(x, b, s + i - 1, 2);
    }
  }
}

/* Splits the inside of a tag into tokens (ends with J_END). */
static jtok_t *lex(jx_t *x, const char *s, size_t n, size_t *nt) {
  static const char *ops[] = {"**", "//", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ".",
                              ",",  ":",  "|",  "~",  "+",  "-",  "*", "/", "%", "<", ">", "="};
  parr_t a = {0};
  size_t i = 0;
  for (;;) {
    while (i < n && strchr(" \t\n\r", s[i])) i++;
    jtok_t *t = jalloc(x, sizeof *t);
    parr_push(x, &a, t);
    if (i >= n) break;
    char c = s[i];
    if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      size_t j = i;
      while (j < n && (s[j] == '_' || (s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
                       (s[j] >= '0' && s[j] <= '9')))
        j++;
      *t = (jtok_t){J_NAME, s + i, j - i, 0};
      i = j;
    } else if (c >= '0' && c <= '9') {
      int64_t v = 0;
      size_t j = i;
      while (j < n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_')) {
        if (s[j] != '_') {
          if (v > (INT64_MAX - 9) / 10) jfail(x, LT_E_INVALID, "integer too large");
          v = v * 10 + (s[j] - '0');
        }
        j++;
      }
      if (j < n && (s[j] == '.' || s[j] == 'e' || s[j] == 'E') && j + 1 < n && s[j + 1] >= '0' && s[j + 1] <= '9')
        jfail(x, LT_E_UNSUPPORTED, "floating-point numbers are not supported");
      *t = (jtok_t){J_INT, s + i, j - i, v};
      i = j;
    } else if (c == '\'' || c == '"') {
      size_t j = i + 1;
      while (j < n && s[j] != c) j += s[j] == '\\' ? 2 : 1;
      if (j >= n) jfail(x, LT_E_INVALID, "unterminated string");
      sbuf_t b = {0};
      unescape(x, s + i + 1, j - i - 1, &b);
      *t = (jtok_t){J_STR, b.p ? b.p : "", b.n, 0};
      i = j + 1;
    } else {
      size_t k = 0;
      while (k < sizeof ops / sizeof *ops && strncmp(s + i, ops[k], strlen(ops[k])) != 0) k++;
      if (k == sizeof ops / sizeof *ops) jfail(x, LT_E_INVALID, "unexpected character '%c'", c);
      *t = (jtok_t){J_OP, ops[k], strlen(ops[k]), 0};
      i += strlen(ops[k]);
    }
  }
  jtok_t *out = jalloc(x, a.n * sizeof *out);
  for (size_t k = 0; k < a.n; k++) out[k] = *(jtok_t *)a.v[k];
  *nt = a.n;
  return out;
}

/* ---- the tree ---- */

typedef enum nk {
  /* statements */
  N_TEXT,
  N_OUT,
  N_IF,
  N_FOR,
  N_SET,
  N_BODY,
  /* expressions */
  N_CONST,
  N_NAME,
  N_ATTR,
  N_ITEM,
  N_SLICE,
  N_CALL,
  N_FILTER,
  N_TEST,
  N_NOT,
  N_NEG,
  N_AND,
  N_OR,
  N_BIN,
  N_COND,
  N_LIST,
  N_DICT
} nk_t;

typedef struct node node_t;
struct node {
  nk_t k;
  int line;
  val_t v;       /* N_CONST */
  const char *s; /* N_TEXT text, names, attribute, filter, test, operator */
  size_t sn;
  node_t *a, *b, *c; /* operands; N_IF/N_FOR: a condition or iterable, b the loop filter; N_SET: a value */
  parr_t kids;       /* bodies, arguments, list items, dict keys */
  parr_t kids2;      /* else bodies, keyword argument values, dict values */
  parr_t names;      /* N_FOR targets, keyword argument names (const char *, NUL-terminated) */
  bool neg;          /* N_TEST: `is not` */
  const char *attr;  /* N_SET: namespace attribute, or NULL */
};

typedef struct parser {
  jx_t *x;
  const piece_t *pc;
  size_t np, ip; /* pieces and the next one */
  jtok_t *t;     /* tokens of the tag being parsed */
  size_t nt, it;
  unsigned depth; /* nesting of expressions and blocks, bounded so that no template exhausts the C stack */
} parser_t;

#define MAX_DEPTH 200

static void enter(parser_t *p) {
  if (++p->depth > MAX_DEPTH) jfail(p->x, LT_E_LIMIT, "nested more than %d deep", MAX_DEPTH);
}

static node_t *mk(parser_t *p, nk_t k) {
  node_t *n = jalloc(p->x, sizeof *n);
  n->k = k;
  n->line = p->x->line;
  return n;
}

static const jtok_t *peek(parser_t *p) { return &p->t[p->it]; }
static bool is_op(const jtok_t *t, const char *op) {
  return t->t == J_OP && strlen(op) == t->n && !memcmp(t->p, op, t->n);
}
static bool is_name(const jtok_t *t, const char *w) {
  return t->t == J_NAME && strlen(w) == t->n && !memcmp(t->p, w, t->n);
}
static bool skip_op(parser_t *p, const char *op) {
  if (!is_op(peek(p), op)) return false;
  p->it++;
  return true;
}
static bool skip_name(parser_t *p, const char *w) {
  if (!is_name(peek(p), w)) return false;
  p->it++;
  return true;
}

static void describe(const jtok_t *t, char *buf, size_t n) {
  if (t->t == J_END)
    snprintf(buf, n, "end of tag");
  else
    snprintf(buf, n, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->p);
}

static void expect_op(parser_t *p, const char *op) {
  if (skip_op(p, op)) return;
  char d[64];
  describe(peek(p), d, sizeof d);
  jfail(p->x, LT_E_INVALID, "expected '%s', found %s", op, d);
}

static const char *expect_name(parser_t *p) {
  const jtok_t *t = peek(p);
  if (t->t != J_NAME) {
    char d[64];
    describe(t, d, sizeof d);
    jfail(p->x, LT_E_INVALID, "expected a name, found %s", d);
  }
  p->it++;
  return jstrdup(p->x, t->p, t->n);
}

static node_t *parse_expr(parser_t *p);
static node_t *parse_or(parser_t *p);
static node_t *parse_unary(parser_t *p, bool with_filter);

/* Call arguments after '(': positional into kids, keyword into names + kids2. */
static void parse_args(parser_t *p, node_t *n) {
  while (!skip_op(p, ")")) {
    if (n->kids.n || n->kids2.n) expect_op(p, ",");
    if (skip_op(p, ")")) break; /* a trailing comma */
    if (peek(p)->t == J_NAME && is_op(&p->t[p->it + 1], "=")) {
      parr_push(p->x, &n->names, (void *)expect_name(p));
      p->it++;
      parr_push(p->x, &n->kids2, parse_expr(p));
    } else {
      if (n->kids2.n) jfail(p->x, LT_E_INVALID, "a positional argument after a keyword argument");
      parr_push(p->x, &n->kids, parse_expr(p));
    }
  }
}

static node_t *parse_primary(parser_t *p) {
  const jtok_t *t = peek(p);
  node_t *n;
  if (t->t == J_NAME) {
    p->it++;
    n = mk(p, N_CONST);
    if (is_name(t, "true") || is_name(t, "True"))
      n->v = v_bool(true);
    else if (is_name(t, "false") || is_name(t, "False"))
      n->v = v_bool(false);
    else if (is_name(t, "none") || is_name(t, "None"))
      n->v = v_none();
    else {
      n->k = N_NAME;
      n->s = jstrdup(p->x, t->p, t->n);
      n->sn = t->n;
    }
    return n;
  }
  if (t->t == J_STR) {
    sbuf_t b = {0};
    while (peek(p)->t == J_STR) { /* adjacent literals join */
      sb_add(p->x, &b, peek(p)->p, peek(p)->n);
      p->it++;
    }
    n = mk(p, N_CONST);
    n->v = v_str(b.p ? b.p : "", b.n);
    return n;
  }
  if (t->t == J_INT) {
    p->it++;
    n = mk(p, N_CONST);
    n->v = v_int(t->i);
    return n;
  }
  if (skip_op(p, "(")) {
    n = parse_expr(p);
    if (is_op(peek(p), ",")) jfail(p->x, LT_E_UNSUPPORTED, "tuples are not supported");
    expect_op(p, ")");
    return n;
  }
  if (skip_op(p, "[")) {
    n = mk(p, N_LIST);
    while (!skip_op(p, "]")) {
      if (n->kids.n) expect_op(p, ",");
      if (skip_op(p, "]")) break;
      parr_push(p->x, &n->kids, parse_expr(p));
    }
    return n;
  }
  if (skip_op(p, "{")) {
    n = mk(p, N_DICT);
    while (!skip_op(p, "}")) {
      if (n->kids.n) expect_op(p, ",");
      if (skip_op(p, "}")) break;
      parr_push(p->x, &n->kids, parse_expr(p));
      expect_op(p, ":");
      parr_push(p->x, &n->kids2, parse_expr(p));
    }
    return n;
  }
  char d[64];
  describe(t, d, sizeof d);
  jfail(p->x, LT_E_INVALID, "unexpected %s", d);
}

static node_t *parse_postfix(parser_t *p, node_t *n) {
  for (;;) {
    if (skip_op(p, ".")) {
      node_t *m;
      if (peek(p)->t == J_INT) { /* x.0 is x[0] */
        m = mk(p, N_ITEM);
        m->b = mk(p, N_CONST);
        m->b->v = v_int(peek(p)->i);
        p->it++;
      } else {
        m = mk(p, N_ATTR);
        m->s = expect_name(p);
        m->sn = strlen(m->s);
      }
      m->a = n;
      n = m;
    } else if (skip_op(p, "[")) {
      node_t *parts[3] = {NULL, NULL, NULL};
      int k = 0;
      bool slice = false;
      for (;;) {
        if (!is_op(peek(p), ":") && !is_op(peek(p), "]")) parts[k] = parse_expr(p);
        if (skip_op(p, ":")) {
          slice = true;
          if (++k == 3) jfail(p->x, LT_E_INVALID, "too many ':' in a slice");
          continue;
        }
        break;
      }
      expect_op(p, "]");
      node_t *m = mk(p, slice ? N_SLICE : N_ITEM);
      m->a = n;
      if (slice) {
        for (int i = 0; i < 3; i++) parr_push(p->x, &m->kids, parts[i]);
      } else {
        if (!parts[0]) jfail(p->x, LT_E_INVALID, "empty subscript");
        m->b = parts[0];
      }
      n = m;
    } else if (skip_op(p, "(")) {
      node_t *m = mk(p, N_CALL);
      m->a = n;
      parse_args(p, m);
      n = m;
    } else
      return n;
  }
}

static node_t *parse_filters(parser_t *p, node_t *n) {
  for (;;) {
    if (skip_op(p, "|")) {
      node_t *m = mk(p, N_FILTER);
      m->s = expect_name(p);
      m->sn = strlen(m->s);
      m->a = n;
      if (skip_op(p, "(")) parse_args(p, m);
      n = m;
    } else if (skip_name(p, "is")) {
      node_t *m = mk(p, N_TEST);
      m->neg = skip_name(p, "not");
      m->s = expect_name(p);
      m->sn = strlen(m->s);
      m->a = n;
      if (skip_op(p, "(")) parse_args(p, m);
      n = m;
    } else
      return n;
  }
}

static node_t *parse_unary(parser_t *p, bool with_filter) {
  node_t *n;
  enter(p);
  if (skip_op(p, "-")) {
    n = mk(p, N_NEG);
    n->a = parse_unary(p, false);
  } else if (skip_op(p, "+")) {
    n = parse_unary(p, false);
  } else
    n = parse_postfix(p, parse_primary(p));
  p->depth--;
  return with_filter ? parse_filters(p, n) : n;
}

static node_t *binary(parser_t *p, const char *op, node_t *a, node_t *b) {
  node_t *n = mk(p, N_BIN);
  n->s = op;
  n->a = a, n->b = b;
  return n;
}

static node_t *parse_math2(parser_t *p) {
  node_t *n = parse_unary(p, true);
  for (;;) {
    const jtok_t *t = peek(p);
    if (is_op(t, "*") || is_op(t, "//") || is_op(t, "%")) {
      p->it++;
      n = binary(p, t->p, n, parse_unary(p, true));
    } else if (is_op(t, "/") || is_op(t, "**")) {
      jfail(p->x, LT_E_UNSUPPORTED, "the '%.*s' operator is not supported", (int)t->n, t->p);
    } else
      return n;
  }
}

static node_t *parse_concat(parser_t *p) {
  node_t *n = parse_math2(p);
  while (skip_op(p, "~")) n = binary(p, "~", n, parse_math2(p));
  return n;
}

static node_t *parse_math1(parser_t *p) {
  node_t *n = parse_concat(p);
  for (;;) {
    if (skip_op(p, "+"))
      n = binary(p, "+", n, parse_concat(p));
    else if (skip_op(p, "-"))
      n = binary(p, "-", n, parse_concat(p));
    else
      return n;
  }
}

static node_t *parse_compare(parser_t *p) {
  node_t *n = parse_math1(p);
  static const char *cmp[] = {"==", "!=", "<=", ">=", "<", ">"};
  for (;;) {
    const char *op = NULL;
    for (size_t k = 0; k < 6 && !op; k++)
      if (skip_op(p, cmp[k])) op = cmp[k];
    if (!op && skip_name(p, "in")) op = "in";
    if (!op && is_name(peek(p), "not") && is_name(&p->t[p->it + 1], "in")) {
      p->it += 2;
      op = "not in";
    }
    if (!op) return n;
    n = binary(p, op, n, parse_math1(p));
  }
}

static node_t *parse_not(parser_t *p) {
  if (skip_name(p, "not")) {
    node_t *n = mk(p, N_NOT);
    enter(p);
    n->a = parse_not(p);
    p->depth--;
    return n;
  }
  return parse_compare(p);
}

static node_t *parse_and(parser_t *p) {
  node_t *n = parse_not(p);
  while (skip_name(p, "and")) {
    node_t *m = mk(p, N_AND);
    m->a = n, m->b = parse_not(p);
    n = m;
  }
  return n;
}

static node_t *parse_or(parser_t *p) {
  node_t *n = parse_and(p);
  while (skip_name(p, "or")) {
    node_t *m = mk(p, N_OR);
    m->a = n, m->b = parse_and(p);
    n = m;
  }
  return n;
}

static node_t *parse_expr(parser_t *p) {
  enter(p);
  node_t *n = parse_or(p);
  while (skip_name(p, "if")) {
    node_t *m = mk(p, N_COND);
    m->a = n;
    m->b = parse_or(p);
    if (skip_name(p, "else")) m->c = parse_expr(p);
    n = m;
  }
  p->depth--;
  return n;
}

/* ---- statements ---- */

/* Starts parsing the tag of piece pc (its tokens become current). */
static void open_tag(parser_t *p, const piece_t *pc) {
  p->x->line = pc->line;
  p->t = lex(p->x, pc->p, pc->n, &p->nt);
  p->it = 0;
}

static void end_tag(parser_t *p) {
  if (peek(p)->t == J_END) return;
  char d[64];
  describe(peek(p), d, sizeof d);
  jfail(p->x, LT_E_INVALID, "unexpected %s", d);
}

/* Parses pieces into body until a block tag whose keyword is in stop (NULL-terminated; NULL: the end of the
 * template). Returns that keyword with its tag open (tokens after the keyword current), or NULL at the end. */
static const char *parse_body(parser_t *p, parr_t *body, const char *const *stop);

static node_t *parse_if(parser_t *p) {
  static const char *const stop[] = {"elif", "else", "endif", NULL};
  node_t *n = mk(p, N_IF);
  n->a = parse_expr(p);
  end_tag(p);
  const char *kw = parse_body(p, &n->kids, stop);
  if (!kw) jfail(p->x, LT_E_INVALID, "'if' without 'endif'");
  if (!strcmp(kw, "elif")) {
    parr_push(p->x, &n->kids2, parse_if(p));
  } else if (!strcmp(kw, "else")) {
    static const char *const end[] = {"endif", NULL};
    end_tag(p);
    if (!parse_body(p, &n->kids2, end)) jfail(p->x, LT_E_INVALID, "'if' without 'endif'");
    end_tag(p);
  } else
    end_tag(p);
  return n;
}

static node_t *parse_for(parser_t *p) {
  static const char *const stop[] = {"else", "endfor", NULL}, *const end[] = {"endfor", NULL};
  node_t *n = mk(p, N_FOR);
  do parr_push(p->x, &n->names, (void *)expect_name(p));
  while (skip_op(p, ","));
  if (!skip_name(p, "in")) jfail(p->x, LT_E_INVALID, "expected 'in' in a for tag");
  n->a = parse_or(p); /* not parse_expr: a trailing `if` filters the loop */
  if (skip_name(p, "if")) n->b = parse_expr(p);
  if (skip_name(p, "recursive")) jfail(p->x, LT_E_UNSUPPORTED, "recursive loops are not supported");
  end_tag(p);
  const char *kw = parse_body(p, &n->kids, stop);
  if (!kw) jfail(p->x, LT_E_INVALID, "'for' without 'endfor'");
  end_tag(p);
  if (!strcmp(kw, "else")) {
    if (!parse_body(p, &n->kids2, end)) jfail(p->x, LT_E_INVALID, "'for' without 'endfor'");
    end_tag(p);
  }
  return n;
}

static node_t *parse_set(parser_t *p) {
  static const char *const end[] = {"endset", NULL};
  node_t *n = mk(p, N_SET);
  n->s = expect_name(p);
  n->sn = strlen(n->s);
  if (skip_op(p, ".")) n->attr = expect_name(p);
  if (is_op(peek(p), ",")) jfail(p->x, LT_E_UNSUPPORTED, "assigning several names at once is not supported");
  if (skip_op(p, "=")) {
    n->a = parse_expr(p);
    end_tag(p);
    return n;
  }
  if (n->attr || peek(p)->t != J_END) jfail(p->x, LT_E_UNSUPPORTED, "this form of 'set' is not supported");
  if (!parse_body(p, &n->kids, end)) jfail(p->x, LT_E_INVALID, "'set' without 'endset'");
  end_tag(p);
  return n;
}

static const char *parse_body(parser_t *p, parr_t *body, const char *const *stop) {
  static const char *const end_gen[] = {"endgeneration", NULL};
  enter(p);
  while (p->ip < p->np) {
    const piece_t *pc = &p->pc[p->ip++];
    p->x->line = pc->line;
    if (pc->k == PK_COMMENT) continue;
    if (pc->k == PK_TEXT) {
      if (!pc->n) continue;
      node_t *n = mk(p, N_TEXT);
      n->s = pc->p, n->sn = pc->n;
      parr_push(p->x, body, n);
      continue;
    }
    open_tag(p, pc);
    if (pc->k == PK_VAR) {
      node_t *n = mk(p, N_OUT);
      n->a = parse_expr(p);
      end_tag(p);
      parr_push(p->x, body, n);
      continue;
    }
    const jtok_t *kw = peek(p);
    if (kw->t != J_NAME) jfail(p->x, LT_E_INVALID, "a block tag starts with a keyword");
    p->it++;
    for (size_t i = 0; stop && stop[i]; i++)
      if (is_name(kw, stop[i])) {
        p->depth--;
        return stop[i];
      }
    if (is_name(kw, "if"))
      parr_push(p->x, body, parse_if(p));
    else if (is_name(kw, "for"))
      parr_push(p->x, body, parse_for(p));
    else if (is_name(kw, "set"))
      parr_push(p->x, body, parse_set(p));
    else if (is_name(kw, "generation")) { /* Hugging Face's marker of assistant text: rendered as is */
      end_tag(p);
      node_t *n = mk(p, N_BODY);
      if (!parse_body(p, &n->kids, end_gen)) jfail(p->x, LT_E_INVALID, "'generation' without 'endgeneration'");
      end_tag(p);
      parr_push(p->x, body, n);
    } else if (is_name(kw, "elif") || is_name(kw, "else") || is_name(kw, "endif") || is_name(kw, "endfor") ||
               is_name(kw, "endset") || is_name(kw, "endgeneration"))
      jfail(p->x, LT_E_INVALID, "unexpected '%.*s'", (int)kw->n, kw->p);
    else
      jfail(p->x, LT_E_UNSUPPORTED, "'%.*s' tags are not supported", (int)kw->n, kw->p);
  }
  p->depth--;
  return NULL;
}

/* ---- the template object ---- */

struct chat_tmpl {
  jx_t *x; /* owns the tree */
  parr_t body;
  char *bos, *eos;
  bool plain;
};

/* Parses source into t's tree (arena t->x); false with t->x->err filled. */
static bool parse_template(chat_tmpl_t *t, const char *source, const char *bos, const char *eos) {
  jx_t *x = t->x;
  if (setjmp(x->jb)) return false;
  size_t n, np;
  char *src = normalise(x, source, &n);
  piece_t *pc = split(x, src, n, &np);
  parser_t p = {.x = x, .pc = pc, .np = np};
  parse_body(&p, &t->body, NULL);
  t->bos = jstrdup(x, bos ? bos : "", bos ? strlen(bos) : 0);
  t->eos = jstrdup(x, eos ? eos : "", eos ? strlen(eos) : 0);
  return true;
}

chat_tmpl_t *chat_tmpl_new(const char *source, const char *bos_token, const char *eos_token, lt_err_t *err) {
  chat_tmpl_t *t = calloc(1, sizeof *t);
  jx_t *x = calloc(1, sizeof *x);
  if (!t || !x) {
    free(t), free(x);
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  x->err = err;
  t->x = x;
  if (!parse_template(t, source, bos_token, eos_token)) {
    arena_free(&x->mem);
    free(x), free(t);
    return NULL;
  }
  x->err = NULL;
  return t;
}

void chat_tmpl_destroy(chat_tmpl_t **tp) {
  chat_tmpl_t *t = tp ? *tp : NULL;
  if (!t) return;
  arena_free(&t->x->mem);
  free(t->x);
  free(t);
  *tp = NULL;
}

bool chat_tmpl_is_plain(const chat_tmpl_t *t) { return t->plain; }

unsigned chat_encode_flags(const chat_tmpl_t *t, const tok_t *tok) {
  if (!t->plain) return TOK_PARSE_SPECIAL;
  return tok_bos(tok) >= 0 ? TOK_ADD_BOS : 0;
}

chat_tmpl_t *chat_tmpl_plain(lt_err_t *err) {
  chat_tmpl_t *t = chat_tmpl_new(CHAT_PLAIN_TEMPLATE, NULL, NULL, err);
  if (t) t->plain = true;
  return t;
}

/* ---- rendering ---- */

typedef struct scope {
  struct scope *up;
  vdict_t *vars;
} scope_t;

typedef struct rx {
  jx_t *x;
  const chat_tmpl_t *t;
  scope_t *top;
  char *out; /* the result (malloc), unless capturing */
  size_t n, cap;
  sbuf_t *capture; /* a block set being rendered */
} rx_t;

static void emit(rx_t *r, const char *s, size_t n) {
  if (r->capture) {
    sb_add(r->x, r->capture, s, n);
    return;
  }
  if (r->n + n + 1 > r->cap) {
    if (r->n + n + 1 > OUT_LIMIT) jfail(r->x, LT_E_LIMIT, "more than %u MiB of output", OUT_LIMIT >> 20);
    size_t cap = r->cap ? r->cap * 2 : 1024;
    while (cap < r->n + n + 1) cap *= 2;
    char *o = realloc(r->out, cap);
    if (!o) jfail(r->x, LT_E_NOMEM, "out of memory");
    r->out = o, r->cap = cap;
  }
  memcpy(r->out + r->n, s, n);
  r->n += n;
  r->out[r->n] = '\0';
}

static val_t lookup(rx_t *r, const char *name, size_t n) {
  for (scope_t *s = r->top; s; s = s->up) {
    val_t *v = dict_get(s->vars, name, n);
    if (v) return *v;
  }
  return v_undef(name);
}

static val_t eval(rx_t *r, const node_t *n);

static _Noreturn void type_error(rx_t *r, const char *what, val_t a, val_t b) {
  jfail(r->x, LT_E_INVALID, "cannot %s %s and %s", what, vt_name(a.t), vt_name(b.t));
}

static _Noreturn void undefined(rx_t *r, val_t v) {
  jfail(r->x, LT_E_INVALID, "'%.*s' is undefined", (int)(v.s.n > 60 ? 60 : v.s.n), v.s.p ? v.s.p : "");
}

static bool num(val_t v) { return v.t == V_INT || v.t == V_BOOL; }
static int64_t ival(val_t v) { return v.t == V_BOOL ? v.b : v.i; }

static bool equal(val_t a, val_t b) {
  if (num(a) && num(b)) return ival(a) == ival(b);
  if (a.t != b.t) return false;
  switch (a.t) {
  case V_UNDEF:
  case V_NONE: return true;
  case V_STR: return a.s.n == b.s.n && !memcmp(a.s.p, b.s.p, a.s.n);
  case V_LIST:
    if (a.l->n != b.l->n) return false;
    for (size_t i = 0; i < a.l->n; i++)
      if (!equal(a.l->v[i], b.l->v[i])) return false;
    return true;
  case V_DICT:
    if (a.d->n != b.d->n) return false;
    for (size_t i = 0; i < a.d->n; i++) {
      val_t *o = dict_get(b.d, a.d->k[i], a.d->kn[i]);
      if (!o || !equal(a.d->v[i], *o)) return false;
    }
    return true;
  default: return false;
  }
}

/* Ordering of numbers or strings: negative, zero or positive. */
static int order(rx_t *r, val_t a, val_t b) {
  if (num(a) && num(b)) return ival(a) < ival(b) ? -1 : ival(a) > ival(b);
  if (a.t == V_STR && b.t == V_STR) {
    size_t n = a.s.n < b.s.n ? a.s.n : b.s.n;
    int c = memcmp(a.s.p, b.s.p, n);
    return c ? c : a.s.n < b.s.n ? -1 : a.s.n > b.s.n;
  }
  type_error(r, "compare", a, b);
}

static bool contains(rx_t *r, val_t hay, val_t needle) {
  switch (hay.t) {
  case V_STR:
    if (needle.t != V_STR) type_error(r, "look for", needle, hay);
    return needle.s.n == 0 || memmem(hay.s.p, hay.s.n, needle.s.p, needle.s.n) != NULL;
  case V_LIST:
    for (size_t i = 0; i < hay.l->n; i++)
      if (equal(hay.l->v[i], needle)) return true;
    return false;
  case V_DICT: return needle.t == V_STR && dict_get(hay.d, needle.s.p, needle.s.n) != NULL;
  case V_UNDEF: undefined(r, hay);
  default: type_error(r, "look in", hay, needle);
  }
}

static val_t concat(rx_t *r, val_t a, val_t b) {
  char *p = jalloc(r->x, a.s.n + b.s.n + 1);
  memcpy(p, a.s.p, a.s.n);
  memcpy(p + a.s.n, b.s.p, b.s.n);
  return v_str(p, a.s.n + b.s.n);
}

static int64_t floordiv(rx_t *r, int64_t a, int64_t b) {
  if (b == 0) jfail(r->x, LT_E_INVALID, "division by zero");
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static val_t repeat(rx_t *r, val_t s, int64_t k) {
  if (k <= 0) return s.t == V_STR ? v_str("", 0) : v_list(list_new(r->x, 0));
  if (s.t == V_STR) {
    if ((uint64_t)k * s.s.n > OUT_LIMIT) jfail(r->x, LT_E_LIMIT, "string repetition too large");
    sbuf_t b = {0};
    for (int64_t i = 0; i < k; i++) sb_add(r->x, &b, s.s.p, s.s.n);
    return v_str(b.p ? b.p : "", b.n);
  }
  if ((uint64_t)k * s.l->n > RANGE_LIMIT) jfail(r->x, LT_E_LIMIT, "list repetition too large");
  vlist_t *l = list_new(r->x, (size_t)k * s.l->n);
  for (int64_t i = 0; i < k; i++) memcpy(l->v + (size_t)i * s.l->n, s.l->v, s.l->n * sizeof *l->v);
  return v_list(l);
}

static val_t binop(rx_t *r, const char *op, val_t a, val_t b) {
  if (!strcmp(op, "==")) return v_bool(equal(a, b));
  if (!strcmp(op, "!=")) return v_bool(!equal(a, b));
  if (!strcmp(op, "<")) return v_bool(order(r, a, b) < 0);
  if (!strcmp(op, "<=")) return v_bool(order(r, a, b) <= 0);
  if (!strcmp(op, ">")) return v_bool(order(r, a, b) > 0);
  if (!strcmp(op, ">=")) return v_bool(order(r, a, b) >= 0);
  if (!strcmp(op, "in")) return v_bool(contains(r, b, a));
  if (!strcmp(op, "not in")) return v_bool(!contains(r, b, a));
  if (!strcmp(op, "~")) return concat(r, to_str(r->x, a), to_str(r->x, b));
  if (a.t == V_UNDEF) undefined(r, a);
  if (b.t == V_UNDEF) undefined(r, b);
  if (!strcmp(op, "+")) {
    if (num(a) && num(b)) return v_int(ival(a) + ival(b));
    if (a.t == V_STR && b.t == V_STR) return concat(r, a, b);
    if (a.t == V_LIST && b.t == V_LIST) {
      vlist_t *l = list_new(r->x, a.l->n + b.l->n);
      memcpy(l->v, a.l->v, a.l->n * sizeof *l->v);
      memcpy(l->v + a.l->n, b.l->v, b.l->n * sizeof *l->v);
      return v_list(l);
    }
    type_error(r, "add", a, b);
  }
  if (!strcmp(op, "*")) {
    if (num(a) && num(b)) return v_int(ival(a) * ival(b));
    if ((a.t == V_STR || a.t == V_LIST) && num(b)) return repeat(r, a, ival(b));
    if ((b.t == V_STR || b.t == V_LIST) && num(a)) return repeat(r, b, ival(a));
    type_error(r, "multiply", a, b);
  }
  if (!num(a) || !num(b)) type_error(r, !strcmp(op, "-") ? "subtract" : "divide", a, b);
  if (!strcmp(op, "-")) return v_int(ival(a) - ival(b));
  if (!strcmp(op, "//")) return v_int(floordiv(r, ival(a), ival(b)));
  int64_t q = floordiv(r, ival(a), ival(b)); /* % as Python: the sign of the divisor */
  return v_int(ival(a) - q * ival(b));
}

/* Evaluates a call's arguments: positional into pos[npos], keyword values looked up by name with kwarg(). */
typedef struct args {
  size_t n;
  val_t pos[8];
  size_t nk;
  const char *kname[8];
  val_t kval[8];
} args_t;

static void eval_args(rx_t *r, const node_t *n, args_t *a) {
  if (n->kids.n > 8 || n->kids2.n > 8) jfail(r->x, LT_E_UNSUPPORTED, "more than 8 arguments");
  a->n = n->kids.n;
  for (size_t i = 0; i < a->n; i++) a->pos[i] = eval(r, n->kids.v[i]);
  a->nk = n->kids2.n;
  for (size_t i = 0; i < a->nk; i++) {
    a->kname[i] = n->names.v[i];
    a->kval[i] = eval(r, n->kids2.v[i]);
  }
}

/* Argument i, or keyword `name`, or def; fails on unknown keywords and too many arguments. */
static val_t arg(const args_t *a, size_t i, const char *name, val_t def) {
  if (i < a->n) return a->pos[i];
  for (size_t k = 0; k < a->nk; k++)
    if (!strcmp(a->kname[k], name)) return a->kval[k];
  return def;
}

static void check_args(rx_t *r, const args_t *a, size_t max, const char *const *names, const char *what) {
  if (a->n > max) jfail(r->x, LT_E_INVALID, "%s takes at most %zu arguments", what, max);
  for (size_t k = 0; k < a->nk; k++) {
    bool known = false;
    for (size_t i = 0; names && names[i]; i++) known |= !strcmp(a->kname[k], names[i]);
    if (!known) jfail(r->x, LT_E_UNSUPPORTED, "%s has no argument '%s'", what, a->kname[k]);
  }
}

static val_t need_str(rx_t *r, val_t v, const char *what) {
  if (v.t == V_UNDEF) undefined(r, v);
  if (v.t != V_STR) jfail(r->x, LT_E_INVALID, "%s expects a string, not %s", what, vt_name(v.t));
  return v;
}

typedef enum casing { C_LOWER, C_UPPER, C_TITLE, C_CAPITALIZE } casing_t;

/* ASCII case changes with Python's rules for title() and capitalize(). */
static val_t recase(rx_t *r, val_t s, casing_t how) {
  char *p = jstrdup(r->x, s.s.p, s.s.n);
  bool word = false;
  for (size_t i = 0; i < s.s.n; i++) {
    char c = p[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    bool up = how == C_UPPER || (how == C_TITLE && alpha && !word) || (how == C_CAPITALIZE && i == 0);
    if (up && c >= 'a' && c <= 'z') p[i] = (char)(c - 32);
    if (!up && c >= 'A' && c <= 'Z') p[i] = (char)(c + 32);
    word = alpha;
  }
  return v_str(p, s.s.n);
}

static val_t replace(rx_t *r, val_t s, val_t old, val_t new_, int64_t count) {
  if (old.s.n == 0) jfail(r->x, LT_E_UNSUPPORTED, "replace() of an empty string");
  sbuf_t b = {0};
  size_t i = 0;
  while (i < s.s.n) {
    const char *hit = count != 0 ? memmem(s.s.p + i, s.s.n - i, old.s.p, old.s.n) : NULL;
    if (!hit) break;
    sb_add(r->x, &b, s.s.p + i, (size_t)(hit - (s.s.p + i)));
    sb_add(r->x, &b, new_.s.p, new_.s.n);
    i = (size_t)(hit - s.s.p) + old.s.n;
    if (count > 0) count--;
  }
  sb_add(r->x, &b, s.s.p + i, s.s.n - i);
  return v_str(b.p, b.n);
}

static val_t split_str(rx_t *r, val_t s, val_t sep) {
  parr_t parts = {0};
  if (sep.t == V_NONE || sep.t == V_UNDEF) { /* runs of whitespace, ends ignored */
    size_t i = 0;
    while (i < s.s.n) {
      while (i < s.s.n && strchr(" \t\n\r\f\v", s.s.p[i])) i++;
      size_t j = i;
      while (j < s.s.n && !strchr(" \t\n\r\f\v", s.s.p[j])) j++;
      if (j > i) {
        val_t *v = jalloc(r->x, sizeof *v);
        *v = v_str(s.s.p + i, j - i);
        parr_push(r->x, &parts, v);
      }
      i = j;
    }
  } else {
    need_str(r, sep, "split()");
    if (!sep.s.n) jfail(r->x, LT_E_INVALID, "split() with an empty separator");
    size_t i = 0;
    for (;;) {
      const char *hit = memmem(s.s.p + i, s.s.n - i, sep.s.p, sep.s.n);
      size_t j = hit ? (size_t)(hit - s.s.p) : s.s.n;
      val_t *v = jalloc(r->x, sizeof *v);
      *v = v_str(s.s.p + i, j - i);
      parr_push(r->x, &parts, v);
      if (!hit) break;
      i = j + sep.s.n;
    }
  }
  vlist_t *l = list_new(r->x, parts.n);
  for (size_t i = 0; i < parts.n; i++) l->v[i] = *(val_t *)parts.v[i];
  return v_list(l);
}

/* The items of something iterated over: a list's items, a dict's keys, a string's characters. */
static vlist_t *items_of(rx_t *r, val_t v) {
  switch (v.t) {
  case V_UNDEF: return list_new(r->x, 0); /* Jinja iterates an undefined value as empty */
  case V_LIST: return v.l;
  case V_DICT: {
    vlist_t *l = list_new(r->x, v.d->n);
    for (size_t i = 0; i < v.d->n; i++) l->v[i] = v_str(v.d->k[i], v.d->kn[i]);
    return l;
  }
  case V_STR: {
    vlist_t *l = list_new(r->x, utf8_count(v.s.p, v.s.n));
    for (size_t i = 0, k = 0; i < v.s.n; k++) {
      size_t a = i;
      utf8_next(v.s.p, v.s.n, &i);
      l->v[k] = v_str(v.s.p + a, i - a);
    }
    return l;
  }
  default: jfail(r->x, LT_E_INVALID, "cannot iterate over %s", vt_name(v.t));
  }
}

static val_t call_method(rx_t *r, val_t obj, const char *name, const args_t *a) {
  if (obj.t == V_UNDEF) undefined(r, obj);
  static const char *const none[] = {NULL};
  if (obj.t == V_STR) {
    if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
      check_args(r, a, 1, none, name);
      val_t chars = arg(a, 0, "", v_none());
      if (chars.t != V_NONE) need_str(r, chars, name);
      return strip(obj, name[0] != 'r', name[0] != 'l', chars.t == V_NONE ? NULL : &chars);
    }
    if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
      check_args(r, a, 1, none, name);
      val_t s = need_str(r, arg(a, 0, "", v_undef("argument")), name);
      if (s.s.n > obj.s.n) return v_bool(false);
      return v_bool(!memcmp(name[0] == 's' ? obj.s.p : obj.s.p + obj.s.n - s.s.n, s.s.p, s.s.n));
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "title") || !strcmp(name, "capitalize")) {
      check_args(r, a, 0, none, name);
      return recase(r, obj,
                    name[0] == 'u'   ? C_UPPER
                    : name[0] == 'l' ? C_LOWER
                    : name[0] == 't' ? C_TITLE
                                     : C_CAPITALIZE);
    }
    if (!strcmp(name, "split")) {
      check_args(r, a, 1, none, name);
      return split_str(r, obj, arg(a, 0, "", v_none()));
    }
    if (!strcmp(name, "replace")) {
      check_args(r, a, 3, none, name);
      val_t c = arg(a, 2, "", v_int(-1));
      return replace(r, obj, need_str(r, arg(a, 0, "", v_undef("old")), name),
                     need_str(r, arg(a, 1, "", v_undef("new")), name), num(c) ? ival(c) : -1);
    }
  }
  if (obj.t == V_DICT) {
    if (!strcmp(name, "get")) {
      check_args(r, a, 2, none, name);
      val_t k = arg(a, 0, "", v_undef("key"));
      val_t *v = k.t == V_STR ? dict_get(obj.d, k.s.p, k.s.n) : NULL;
      return v ? *v : arg(a, 1, "", v_none());
    }
    if (!strcmp(name, "items") || !strcmp(name, "keys") || !strcmp(name, "values")) {
      check_args(r, a, 0, none, name);
      vlist_t *l = list_new(r->x, obj.d->n);
      for (size_t i = 0; i < obj.d->n; i++) {
        val_t k = v_str(obj.d->k[i], obj.d->kn[i]);
        if (name[0] == 'k')
          l->v[i] = k;
        else if (name[0] == 'v')
          l->v[i] = obj.d->v[i];
        else {
          vlist_t *pair = list_new(r->x, 2);
          pair->v[0] = k, pair->v[1] = obj.d->v[i];
          l->v[i] = v_list(pair);
        }
      }
      return v_list(l);
    }
  }
  jfail(r->x, LT_E_UNSUPPORTED, "%s has no method '%s' here", vt_name(obj.t), name);
}

static val_t call_global(rx_t *r, const char *name, const args_t *a) {
  if (!strcmp(name, "raise_exception")) {
    val_t m = to_str(r->x, arg(a, 0, "", v_str("", 0)));
    jfail(r->x, LT_E_INVALID, "raise_exception: %.*s", (int)(m.s.n > 300 ? 300 : m.s.n), m.s.p);
  }
  if (!strcmp(name, "namespace")) {
    if (a->n) jfail(r->x, LT_E_UNSUPPORTED, "namespace() takes keyword arguments only");
    vdict_t *d = dict_new(r->x);
    d->ns = true;
    for (size_t k = 0; k < a->nk; k++) dict_sets(r->x, d, a->kname[k], a->kval[k]);
    return (val_t){.t = V_DICT, .d = d};
  }
  if (!strcmp(name, "range")) {
    if (a->nk || a->n < 1 || a->n > 3) jfail(r->x, LT_E_INVALID, "range() takes 1 to 3 integers");
    for (size_t i = 0; i < a->n; i++)
      if (!num(a->pos[i])) jfail(r->x, LT_E_INVALID, "range() takes integers");
    int64_t lo = a->n > 1 ? ival(a->pos[0]) : 0, hi = ival(a->pos[a->n > 1 ? 1 : 0]),
            step = a->n > 2 ? ival(a->pos[2]) : 1;
    if (step == 0) jfail(r->x, LT_E_INVALID, "range() step is zero");
    int64_t count =
        step > 0 ? (hi > lo ? (hi - lo + step - 1) / step : 0) : (lo > hi ? (lo - hi - step - 1) / -step : 0);
    if (count > RANGE_LIMIT) jfail(r->x, LT_E_LIMIT, "range() of more than %d entries", RANGE_LIMIT);
    vlist_t *l = list_new(r->x, (size_t)count);
    for (int64_t i = 0; i < count; i++) l->v[i] = v_int(lo + i * step);
    return v_list(l);
  }
  jfail(r->x, LT_E_UNSUPPORTED, "unknown function '%s'", name);
}

static val_t filter(rx_t *r, const char *name, val_t v, const args_t *a) {
  static const char *const none[] = {NULL}, *const def_kw[] = {"default_value", "boolean", NULL},
                           *const join_kw[] = {"d", NULL};
  if (!strcmp(name, "trim")) {
    check_args(r, a, 1, none, "trim");
    val_t chars = arg(a, 0, "", v_none());
    if (chars.t != V_NONE) need_str(r, chars, "trim");
    return strip(to_str(r->x, v), true, true, chars.t == V_NONE ? NULL : &chars);
  }
  if (!strcmp(name, "length") || !strcmp(name, "count")) {
    check_args(r, a, 0, none, name);
    if (v.t == V_STR) return v_int((int64_t)utf8_count(v.s.p, v.s.n));
    if (v.t == V_LIST) return v_int((int64_t)v.l->n);
    if (v.t == V_DICT) return v_int((int64_t)v.d->n);
    if (v.t == V_UNDEF) return v_int(0);
    jfail(r->x, LT_E_INVALID, "%s has no length", vt_name(v.t));
  }
  if (!strcmp(name, "lower") || !strcmp(name, "upper") || !strcmp(name, "title") || !strcmp(name, "capitalize")) {
    check_args(r, a, 0, none, name);
    return recase(r, to_str(r->x, v),
                  name[0] == 'u'   ? C_UPPER
                  : name[0] == 'l' ? C_LOWER
                  : name[0] == 't' ? C_TITLE
                                   : C_CAPITALIZE);
  }
  if (!strcmp(name, "default") || !strcmp(name, "d")) {
    check_args(r, a, 2, def_kw, name);
    val_t d = arg(a, 0, "default_value", v_str("", 0));
    bool boolean = truthy(arg(a, 1, "boolean", v_bool(false)));
    return v.t == V_UNDEF || (boolean && !truthy(v)) ? d : v;
  }
  if (!strcmp(name, "first") || !strcmp(name, "last")) {
    check_args(r, a, 0, none, name);
    vlist_t *l = items_of(r, v);
    return l->n ? l->v[name[0] == 'f' ? 0 : l->n - 1] : v_undef(name);
  }
  if (!strcmp(name, "string")) {
    check_args(r, a, 0, none, name);
    return to_str(r->x, v);
  }
  if (!strcmp(name, "join")) {
    check_args(r, a, 1, join_kw, name);
    val_t sep = to_str(r->x, arg(a, 0, "d", v_str("", 0)));
    vlist_t *l = items_of(r, v);
    sbuf_t b = {0};
    for (size_t i = 0; i < l->n; i++) {
      if (i) sb_add(r->x, &b, sep.s.p, sep.s.n);
      str_into(r->x, &b, l->v[i]);
    }
    return v_str(b.p ? b.p : "", b.n);
  }
  if (!strcmp(name, "list")) {
    check_args(r, a, 0, none, name);
    return v_list(items_of(r, v));
  }
  if (!strcmp(name, "replace")) {
    check_args(r, a, 3, none, name);
    val_t c = arg(a, 2, "", v_int(-1));
    return replace(r, to_str(r->x, v), need_str(r, arg(a, 0, "", v_undef("old")), name),
                   need_str(r, arg(a, 1, "", v_undef("new")), name), num(c) ? ival(c) : -1);
  }
  if (!strcmp(name, "tojson")) {
    check_args(r, a, 0, none, name);
    sbuf_t b = {0};
    json_into(r->x, &b, v);
    return v_str(b.p, b.n);
  }
  jfail(r->x, LT_E_UNSUPPORTED, "unknown filter '%s'", name);
}

static bool test(rx_t *r, const char *name, val_t v, const args_t *a) {
  static const char *const none[] = {NULL};
  if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "sameas")) {
    check_args(r, a, 1, none, name);
    return equal(v, arg(a, 0, "", v_undef("argument")));
  }
  check_args(r, a, 0, none, name);
  if (!strcmp(name, "defined")) return v.t != V_UNDEF;
  if (!strcmp(name, "undefined")) return v.t == V_UNDEF;
  if (!strcmp(name, "none")) return v.t == V_NONE;
  if (!strcmp(name, "string")) return v.t == V_STR;
  if (!strcmp(name, "number") || !strcmp(name, "integer")) return v.t == V_INT;
  if (!strcmp(name, "boolean")) return v.t == V_BOOL;
  if (!strcmp(name, "true")) return v.t == V_BOOL && v.b;
  if (!strcmp(name, "false")) return v.t == V_BOOL && !v.b;
  if (!strcmp(name, "mapping")) return v.t == V_DICT;
  if (!strcmp(name, "sequence")) return v.t == V_LIST || v.t == V_STR || v.t == V_DICT;
  if (!strcmp(name, "iterable")) return v.t == V_LIST || v.t == V_STR || v.t == V_DICT;
  if (!strcmp(name, "odd") || !strcmp(name, "even")) {
    if (!num(v)) jfail(r->x, LT_E_INVALID, "'%s' needs an integer", name);
    return (ival(v) % 2 != 0) == (name[0] == 'o');
  }
  jfail(r->x, LT_E_UNSUPPORTED, "unknown test '%s'", name);
}

/* Python indexing: negative counts from the end; out of range is undefined. */
static val_t item(rx_t *r, val_t obj, val_t key) {
  if (obj.t == V_UNDEF) undefined(r, obj);
  if (obj.t == V_DICT) {
    if (key.t != V_STR) return v_undef("item");
    val_t *v = dict_get(obj.d, key.s.p, key.s.n);
    return v ? *v : v_undef(jstrdup(r->x, key.s.p, key.s.n));
  }
  if ((obj.t == V_LIST || obj.t == V_STR) && num(key)) {
    size_t len = obj.t == V_LIST ? obj.l->n : utf8_count(obj.s.p, obj.s.n);
    int64_t k = ival(key);
    if (k < 0) k += (int64_t)len;
    if (k < 0 || (uint64_t)k >= len) return v_undef("index");
    if (obj.t == V_LIST) return obj.l->v[k];
    size_t a = utf8_offset(obj.s.p, obj.s.n, (size_t)k), b = a;
    utf8_next(obj.s.p, obj.s.n, &b);
    return v_str(obj.s.p + a, b - a);
  }
  jfail(r->x, LT_E_INVALID, "cannot index %s with %s", vt_name(obj.t), vt_name(key.t));
}

static val_t slice(rx_t *r, val_t obj, const node_t *n) {
  if (obj.t == V_UNDEF) undefined(r, obj);
  if (obj.t != V_LIST && obj.t != V_STR) jfail(r->x, LT_E_INVALID, "cannot slice %s", vt_name(obj.t));
  int64_t len = (int64_t)(obj.t == V_LIST ? obj.l->n : utf8_count(obj.s.p, obj.s.n));
  int64_t part[3];
  bool given[3];
  for (int i = 0; i < 3; i++) {
    given[i] = n->kids.v[i] != NULL;
    if (!given[i]) continue;
    val_t v = eval(r, n->kids.v[i]);
    if (v.t == V_NONE) {
      given[i] = false;
      continue;
    }
    if (!num(v)) jfail(r->x, LT_E_INVALID, "slice bounds must be integers");
    part[i] = ival(v);
  }
  int64_t step = given[2] ? part[2] : 1;
  if (step == 0) jfail(r->x, LT_E_INVALID, "slice step is zero");
  /* Python's slice.indices() */
  int64_t lo = step > 0 ? 0 : -1, hi = step > 0 ? len : len - 1, start, stop;
  start = given[0] ? part[0] : step > 0 ? lo : hi;
  stop = given[1] ? part[1] : step > 0 ? hi : lo;
  if (given[0]) start = start < 0 ? (start + len < lo ? lo : start + len) : (start > hi ? hi : start);
  if (given[1]) stop = stop < 0 ? (stop + len < lo ? lo : stop + len) : (stop > hi ? hi : stop);
  size_t count = 0;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) count++;
  vlist_t *src = obj.t == V_LIST ? obj.l : items_of(r, obj);
  vlist_t *l = list_new(r->x, count);
  size_t k = 0;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) l->v[k++] = src->v[i];
  if (obj.t == V_LIST) return v_list(l);
  sbuf_t b = {0};
  for (size_t i = 0; i < count; i++) sb_add(r->x, &b, l->v[i].s.p, l->v[i].s.n);
  return v_str(b.p ? b.p : "", b.n);
}

static val_t eval(rx_t *r, const node_t *n) {
  r->x->line = n->line;
  switch (n->k) {
  case N_CONST: return n->v;
  case N_NAME: return lookup(r, n->s, n->sn);
  case N_ATTR: {
    val_t o = eval(r, n->a);
    if (o.t == V_UNDEF) undefined(r, o);
    if (o.t != V_DICT) return v_undef(n->s);
    val_t *v = dict_get(o.d, n->s, n->sn);
    return v ? *v : v_undef(n->s);
  }
  case N_ITEM: {
    val_t o = eval(r, n->a);
    return item(r, o, eval(r, n->b));
  }
  case N_SLICE: return slice(r, eval(r, n->a), n);
  case N_CALL: {
    args_t a;
    if (n->a->k == N_ATTR) {
      val_t o = eval(r, n->a->a);
      eval_args(r, n, &a);
      r->x->line = n->line;
      return call_method(r, o, n->a->s, &a);
    }
    if (n->a->k == N_NAME) {
      eval_args(r, n, &a);
      r->x->line = n->line;
      return call_global(r, n->a->s, &a);
    }
    jfail(r->x, LT_E_UNSUPPORTED, "only functions and methods can be called");
  }
  case N_FILTER: {
    val_t v = eval(r, n->a);
    args_t a;
    eval_args(r, n, &a);
    r->x->line = n->line;
    return filter(r, n->s, v, &a);
  }
  case N_TEST: {
    val_t v = eval(r, n->a);
    args_t a;
    eval_args(r, n, &a);
    r->x->line = n->line;
    return v_bool(test(r, n->s, v, &a) != n->neg);
  }
  case N_NOT: return v_bool(!truthy(eval(r, n->a)));
  case N_NEG: {
    val_t v = eval(r, n->a);
    if (!num(v)) jfail(r->x, LT_E_INVALID, "cannot negate %s", vt_name(v.t));
    return v_int(-ival(v));
  }
  case N_AND: {
    val_t a = eval(r, n->a);
    return truthy(a) ? eval(r, n->b) : a;
  }
  case N_OR: {
    val_t a = eval(r, n->a);
    return truthy(a) ? a : eval(r, n->b);
  }
  case N_BIN: {
    val_t a = eval(r, n->a), b = eval(r, n->b);
    r->x->line = n->line;
    return binop(r, n->s, a, b);
  }
  case N_COND: return truthy(eval(r, n->b)) ? eval(r, n->a) : n->c ? eval(r, n->c) : v_undef("else");
  case N_LIST: {
    vlist_t *l = list_new(r->x, n->kids.n);
    for (size_t i = 0; i < n->kids.n; i++) l->v[i] = eval(r, n->kids.v[i]);
    return v_list(l);
  }
  case N_DICT: {
    vdict_t *d = dict_new(r->x);
    for (size_t i = 0; i < n->kids.n; i++) {
      val_t k = need_str(r, eval(r, n->kids.v[i]), "a dict key");
      dict_set(r->x, d, k.s.p, k.s.n, eval(r, n->kids2.v[i]));
    }
    return (val_t){.t = V_DICT, .d = d};
  }
  default: jfail(r->x, LT_E_INVALID, "a statement where an expression belongs");
  }
}

static void exec_body(rx_t *r, const parr_t *body);

static void exec_for(rx_t *r, const node_t *n) {
  vlist_t *all = items_of(r, eval(r, n->a));
  scope_t s = {.up = r->top, .vars = dict_new(r->x)};
  r->top = &s;
  /* The loop filter first, so that loop.length and loop.last count the items kept. */
  vlist_t *l = all;
  if (n->b) {
    l = list_new(r->x, all->n);
    l->n = 0;
    for (size_t i = 0; i < all->n; i++) {
      dict_sets(r->x, s.vars, n->names.v[0], all->v[i]);
      if (truthy(eval(r, n->b))) l->v[l->n++] = all->v[i];
    }
  }
  if (!l->n) {
    r->top = s.up;
    exec_body(r, &n->kids2);
    return;
  }
  for (size_t i = 0; i < l->n; i++) {
    val_t v = l->v[i];
    if (n->names.n == 1)
      dict_sets(r->x, s.vars, n->names.v[0], v);
    else {
      if (v.t != V_LIST || v.l->n != n->names.n)
        jfail(r->x, LT_E_INVALID, "cannot unpack %s into %zu names", vt_name(v.t), n->names.n);
      for (size_t k = 0; k < n->names.n; k++) dict_sets(r->x, s.vars, n->names.v[k], v.l->v[k]);
    }
    vdict_t *loop = dict_new(r->x);
    int64_t len = (int64_t)l->n, idx = (int64_t)i;
    dict_sets(r->x, loop, "index0", v_int(idx));
    dict_sets(r->x, loop, "index", v_int(idx + 1));
    dict_sets(r->x, loop, "revindex0", v_int(len - idx - 1));
    dict_sets(r->x, loop, "revindex", v_int(len - idx));
    dict_sets(r->x, loop, "first", v_bool(i == 0));
    dict_sets(r->x, loop, "last", v_bool(i + 1 == l->n));
    dict_sets(r->x, loop, "length", v_int(len));
    dict_sets(r->x, loop, "previtem", i ? l->v[i - 1] : v_undef("previtem"));
    dict_sets(r->x, loop, "nextitem", i + 1 < l->n ? l->v[i + 1] : v_undef("nextitem"));
    dict_sets(r->x, s.vars, "loop", (val_t){.t = V_DICT, .d = loop});
    exec_body(r, &n->kids);
  }
  r->top = s.up;
}

static void exec_set(rx_t *r, const node_t *n) {
  val_t v;
  if (n->a)
    v = eval(r, n->a);
  else { /* {% set x %}...{% endset %} */
    sbuf_t b = {0}, *saved = r->capture;
    r->capture = &b;
    exec_body(r, &n->kids);
    r->capture = saved;
    v = v_str(b.p ? b.p : "", b.n);
  }
  r->x->line = n->line;
  if (n->attr) {
    val_t ns = lookup(r, n->s, n->sn);
    if (ns.t != V_DICT || !ns.d->ns) jfail(r->x, LT_E_INVALID, "'%s' is not a namespace", n->s);
    dict_sets(r->x, ns.d, n->attr, v);
  } else
    dict_set(r->x, r->top->vars, n->s, n->sn, v);
}

static void exec_body(rx_t *r, const parr_t *body) {
  for (size_t i = 0; i < body->n; i++) {
    const node_t *n = body->v[i];
    r->x->line = n->line;
    switch (n->k) {
    case N_TEXT: emit(r, n->s, n->sn); break;
    case N_OUT: {
      sbuf_t b = {0};
      str_into(r->x, &b, eval(r, n->a));
      emit(r, b.p ? b.p : "", b.n);
      break;
    }
    case N_IF: exec_body(r, truthy(eval(r, n->a)) ? &n->kids : &n->kids2); break;
    case N_FOR: exec_for(r, n); break;
    case N_SET: exec_set(r, n); break;
    case N_BODY: exec_body(r, &n->kids); break;
    default: jfail(r->x, LT_E_INVALID, "an expression where a statement belongs");
    }
  }
}

lt_status_t chat_render(const chat_tmpl_t *t, const chat_msg_t *msgs, size_t n, bool add_generation_prompt, char **out,
                        size_t *len, lt_err_t *err) {
  jx_t *x = calloc(1, sizeof *x);
  rx_t *r = calloc(1, sizeof *r);
  if (!x || !r) {
    free(x), free(r);
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  x->err = err;
  r->x = x;
  r->t = t;
  if (setjmp(x->jb)) {
    lt_status_t code = err ? err->code : LT_E_INVALID;
    free(r->out);
    arena_free(&x->mem);
    free(x), free(r);
    return code;
  }
  scope_t *root = jalloc(x, sizeof *root);
  root->vars = dict_new(x);
  vlist_t *l = list_new(x, n);
  for (size_t i = 0; i < n; i++) {
    vdict_t *m = dict_new(x);
    dict_sets(x, m, "role", v_str(msgs[i].role, strlen(msgs[i].role)));
    dict_sets(x, m, "content", v_str(msgs[i].content, strlen(msgs[i].content)));
    l->v[i] = (val_t){.t = V_DICT, .d = m};
  }
  dict_sets(x, root->vars, "messages", v_list(l));
  dict_sets(x, root->vars, "add_generation_prompt", v_bool(add_generation_prompt));
  dict_sets(x, root->vars, "bos_token", v_str(t->bos, strlen(t->bos)));
  dict_sets(x, root->vars, "eos_token", v_str(t->eos, strlen(t->eos)));
  r->top = root;
  emit(r, "", 0);
  exec_body(r, &t->body);
  *out = r->out;
  *len = r->n;
  arena_free(&x->mem);
  free(x), free(r);
  return LT_OK;
}
