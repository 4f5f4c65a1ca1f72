/* BPE tokenizer: building from arrays, encoding (added tokens, normalizer, regex pre-tokenizer, merges by
 * rank or by score over a linked list of symbols and a binary heap of candidate pairs) and decoding. */
#include "engine/text/tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ---------------------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, folded so the low bits see the high ones */
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
  return h ^ (h >> 29);
}

static uint64_t mix64(uint64_t x) { /* splitmix64 finaliser */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static uint32_t pow2_at_least(uint64_t n) {
  uint32_t c = 16;
  while (c < n) c <<= 1;
  return c;
}

/* Grows *p (elements of size sz) to hold at least need elements. */
static lt_status_t grow(void **p, size_t *cap, size_t need, size_t sz, lt_err_t *err) {
  if (need <= *cap) return LT_OK;
  size_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * sz);
  if (!q) return lt_fail(err, LT_E_NOMEM, "tokenizer: out of memory (%zu bytes)", c * sz);
  *p = q;
  *cap = c;
  return LT_OK;
}

/* Length of the UTF-8 sequence at s[0..n) when it is valid (shortest form, no surrogates, <= U+10FFFF), else 0. */
static size_t utf8_len(const unsigned char *s, size_t n, uint32_t *cp) {
  unsigned c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t k;
  uint32_t v, min;
  if ((c & 0xe0) == 0xc0)
    k = 2, v = c & 0x1f, min = 0x80;
  else if ((c & 0xf0) == 0xe0)
    k = 3, v = c & 0x0f, min = 0x800;
  else if ((c & 0xf8) == 0xf0)
    k = 4, v = c & 0x07, min = 0x10000;
  else
    return 0;
  if (k > n) return 0;
  for (size_t i = 1; i < k; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    v = v << 6 | (s[i] & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
  *cp = v;
  return k;
}

/* Byte length of the (already validated) UTF-8 character starting with lead byte c. */
static size_t utf8_step(unsigned char c) { return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4; }

static size_t utf8_put(char *o, uint32_t cp) {
  if (cp < 0x80) return o[0] = (char)cp, 1;
  if (cp < 0x800) return o[0] = (char)(0xc0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3f)), 2;
  if (cp < 0x10000)
    return o[0] = (char)(0xe0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3f)), o[2] = (char)(0x80 | (cp & 0x3f)), 3;
  o[0] = (char)(0xf0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
  o[2] = (char)(0x80 | (cp >> 6 & 0x3f)), o[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* Returns the offset of the first invalid UTF-8 byte in s[0..n), or n when all of it is valid. */
static size_t utf8_invalid_at(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  uint32_t cp;
  for (size_t i = 0; i < n;) {
    size_t k = utf8_len(u + i, n - i, &cp);
    if (!k) return i;
    i += k;
  }
  return n;
}

/* Unicode White_Space (what the Rust tokenizers library strips around lstrip/rstrip added tokens). */
static bool is_space_cp(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Value of a "<0xNN>" byte-fallback token text, or -1. */
static int byte_token_value(const char *s, size_t n) {
  if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; i++) {
    char c = s[i];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                   : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

/* ---- building ------------------------------------------------------------------------------------------------ */

tok_t *tokb_new(tok_kind_t kind, uint32_t n, lt_err_t *err) {
  if (kind != TOK_BYTE_LEVEL && kind != TOK_SPM) {
    lt_fail(err, LT_E_INVALID, "tokenizer: unknown kind %d", (int)kind);
    return NULL;
  }
  if (n == 0 || n > TOK_MAX_TOKENS) {
    lt_fail(err, n ? LT_E_LIMIT : LT_E_INVALID, "tokenizer: %u tokens (expected 1..%u)", n, TOK_MAX_TOKENS);
    return NULL;
  }
  tok_t *t = calloc(1, sizeof *t);
  if (!t) goto oom;
  t->kind = kind;
  t->n = n;
  t->bos = t->eos = t->unk = -1;
  t->off = calloc(n, sizeof *t->off);
  t->len = calloc(n, sizeof *t->len);
  t->score = calloc(n, sizeof *t->score);
  t->type = malloc(n);
  t->flags = calloc(n, 1);
  if (!t->off || !t->len || !t->score || !t->type || !t->flags) goto oom;
  memset(t->type, TOK_TYPE_UNUSED, n);
  /* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for 256, 257, ... */
  for (int i = 0; i < 324; i++) t->byte_of_cp[i] = -1;
  uint32_t next = 256;
  for (int b = 0; b < 256; b++) {
    bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    t->cp_of_byte[b] = (uint16_t)(printable ? (uint32_t)b : next++);
    t->byte_of_cp[t->cp_of_byte[b]] = (int16_t)b;
    t->byte_tok[b] = -1;
  }
  return t;
oom:
  tok_destroy(&t);
  lt_fail(err, LT_E_NOMEM, "tokenizer: out of memory for %u tokens", n);
  return NULL;
}

lt_status_t tokb_token(tok_t *t, uint32_t id, const char *s, size_t n, float score, int type, unsigned flags,
                       lt_err_t *err) {
  if (id >= t->n) return lt_fail(err, LT_E_CORRUPT, "tokenizer: token id %u out of range (%u ids)", id, t->n);
  if (n > TOK_MAX_TOKEN_BYTES) return lt_fail(err, LT_E_LIMIT, "tokenizer: token %u is %zu bytes long", id, n);
  if (utf8_invalid_at(s, n) != n) return lt_fail(err, LT_E_CORRUPT, "tokenizer: token %u is not valid UTF-8", id);
  if (t->flags[id] & TF_SET) {
    if (t->len[id] != n || memcmp(t->text + t->off[id], s, n) != 0)
      return lt_fail(err, LT_E_CORRUPT, "tokenizer: id %u is given two different texts ('%.*s' and '%.*s')", id,
                     (int)t->len[id], t->text + t->off[id], (int)n, s);
  } else {
    if (t->text_len + n > UINT32_MAX) return lt_fail(err, LT_E_LIMIT, "tokenizer: token texts exceed 4 GiB");
    lt_status_t st = grow((void **)&t->text, &t->text_cap, t->text_len + n + 1, 1, err);
    if (st) return st;
    memcpy(t->text + t->text_len, s, n);
    t->off[id] = (uint32_t)t->text_len;
    t->len[id] = (uint32_t)n;
    t->text_len += n;
    t->score[id] = score;
    t->type[id] = TOK_TYPE_NORMAL;
  }
  if (type) t->type[id] = (uint8_t)type;
  t->flags[id] |= (uint8_t)(flags | TF_SET);
  return LT_OK;
}

int32_t tok_vocab_find(const tok_t *t, const char *s, size_t n) {
  if (!t->vslot) return -1;
  for (uint64_t i = hash_bytes(s, n) & t->vmask;; i = (i + 1) & t->vmask) {
    int32_t id = t->vslot[i];
    if (id < 0) return -1;
    if (t->len[id] == n && memcmp(t->text + t->off[id], s, n) == 0) return id;
  }
}

lt_status_t tokb_index(tok_t *t, lt_err_t *err) {
  uint32_t cap = pow2_at_least((uint64_t)t->n * 2);
  free(t->vslot);
  t->vslot = malloc((size_t)cap * sizeof *t->vslot);
  if (!t->vslot) return lt_fail(err, LT_E_NOMEM, "tokenizer: out of memory for the vocab table");
  memset(t->vslot, 0xff, (size_t)cap * sizeof *t->vslot);
  t->vmask = cap - 1;
  for (uint32_t id = 0; id < t->n; id++) {
    if (!(t->flags[id] & TF_MODEL) || !t->len[id]) continue;
    const char *s = t->text + t->off[id];
    uint64_t i = hash_bytes(s, t->len[id]) & t->vmask;
    for (;; i = (i + 1) & t->vmask) {
      int32_t o = t->vslot[i];
      if (o < 0) break;
      if (t->len[o] == t->len[id] && memcmp(t->text + t->off[o], s, t->len[id]) == 0) break; /* first id wins */
    }
    if (t->vslot[i] < 0) t->vslot[i] = (int32_t)id;
  }
  return LT_OK;
}

static merge_slot_t *merge_slot(const tok_t *t, uint64_t key) {
  for (uint64_t i = mix64(key) & t->mmask;; i = (i + 1) & t->mmask) {
    merge_slot_t *m = &t->mslot[i];
    if (m->rank < 0 || m->key == key) return m;
  }
}

lt_status_t tokb_merges_reserve(tok_t *t, uint32_t n, lt_err_t *err) {
  uint64_t want = (uint64_t)t->n_merges + n;
  if (want > INT32_MAX / 2) return lt_fail(err, LT_E_LIMIT, "tokenizer: %llu merges", (unsigned long long)want);
  if (want * 2 <= (uint64_t)t->merge_cap) return LT_OK;
  uint32_t cap = pow2_at_least(want * 2);
  merge_slot_t *old = t->mslot;
  uint32_t old_cap = t->merge_cap;
  t->mslot = malloc((size_t)cap * sizeof *t->mslot);
  if (!t->mslot) {
    t->mslot = old;
    return lt_fail(err, LT_E_NOMEM, "tokenizer: out of memory for %u merges", n);
  }
  for (uint32_t i = 0; i < cap; i++) t->mslot[i].rank = -1;
  t->merge_cap = cap;
  t->mmask = cap - 1;
  for (uint32_t i = 0; i < old_cap; i++)
    if (old[i].rank >= 0) *merge_slot(t, old[i].key) = old[i];
  free(old);
  return LT_OK;
}

lt_status_t tokb_merge(tok_t *t, const char *a, size_t an, const char *b, size_t bn, lt_err_t *err) {
  uint32_t rank = t->n_merges;
  int32_t ia = tok_vocab_find(t, a, an), ib = tok_vocab_find(t, b, bn);
  if (ia < 0 || ib < 0)
    return lt_fail(err, LT_E_CORRUPT, "tokenizer: merge %u ('%.*s' '%.*s'): '%.*s' is not in the vocab", rank, (int)an,
                   a, (int)bn, b, ia < 0 ? (int)an : (int)bn, ia < 0 ? a : b);
  lt_status_t st = grow((void **)&t->scratch, &t->scratch_cap, an + bn, 1, err);
  if (st) return st;
  memcpy(t->scratch, a, an);
  memcpy(t->scratch + an, b, bn);
  int32_t im = tok_vocab_find(t, t->scratch, an + bn);
  if (im < 0)
    return lt_fail(err, LT_E_CORRUPT, "tokenizer: merge %u ('%.*s' '%.*s'): the merged token is not in the vocab", rank,
                   (int)an, a, (int)bn, b);
  if ((st = tokb_merges_reserve(t, 1, err))) return st;
  uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
  merge_slot_t *m = merge_slot(t, key);
  if (m->rank < 0) *m = (merge_slot_t){.key = key, .rank = (int32_t)rank, .id = im}; /* a repeat keeps its rank */
  t->n_merges++;
  return LT_OK;
}

lt_status_t tokb_regex(tok_t *t, const char *pat, size_t n, bool literal, lt_err_t *err) {
  pcre2_code **list = realloc(t->re, (t->n_re + 1) * sizeof *t->re);
  if (!list) return lt_fail(err, LT_E_NOMEM, "tokenizer: out of memory");
  t->re = list;
  int code;
  PCRE2_SIZE at;
  pcre2_code *re =
      pcre2_compile((PCRE2_SPTR)pat, n, PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0), &code, &at, NULL);
  if (!re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(code, msg, sizeof msg);
    return lt_fail(err, LT_E_CORRUPT, "tokenizer: pre-tokenizer pattern does not compile at offset %zu: %s", (size_t)at,
                   (const char *)msg);
  }
  pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* an optional speed-up: the interpreter runs when JIT is missing */
  t->re[t->n_re++] = re;
  return LT_OK;
}

static char *dup_bytes(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    if (n) memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

lt_status_t tokb_norm(tok_t *t, norm_op_t op, lt_err_t *err) {
  if (op.kind == NORM_REPLACE && op.an == 0) return lt_fail(err, LT_E_CORRUPT, "tokenizer: Replace of an empty string");
  if (utf8_invalid_at(op.a, op.an) != op.an || utf8_invalid_at(op.b ? op.b : "", op.bn) != op.bn)
    return lt_fail(err, LT_E_CORRUPT, "tokenizer: normalizer text is not valid UTF-8");
  norm_op_t *list = realloc(t->norm, (t->n_norm + 1) * sizeof *t->norm);
  if (!list) return lt_fail(err, LT_E_NOMEM, "tokenizer: out of memory");
  t->norm = list;
  norm_op_t c = op;
  c.a = dup_bytes(op.a, op.an);
  c.b = dup_bytes(op.b ? op.b : "", op.bn);
  if (!c.a || !c.b) {
    free(c.a), free(c.b);
    return lt_fail(err, LT_E_NOMEM, "tokenizer: out of memory");
  }
  t->norm[t->n_norm++] = c;
  return LT_OK;
}

static int cmp_added(const void *pa, const void *pb, void *ctx) {
  const tok_t *t = ctx;
  int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
  uint8_t ca = (uint8_t)t->text[t->off[a]], cb = (uint8_t)t->text[t->off[b]];
  if (ca != cb) return ca < cb ? -1 : 1;
  if (t->len[a] != t->len[b]) return t->len[a] > t->len[b] ? -1 : 1; /* longest first */
  return a < b ? -1 : a > b;
}

lt_status_t tokb_finish(tok_t *t, lt_err_t *err) {
  char name[8];
  for (int b = 0; b < 256; b++) {
    size_t k;
    if (t->kind == TOK_BYTE_LEVEL)
      k = utf8_put(name, t->cp_of_byte[b]);
    else
      k = (size_t)snprintf(name, sizeof name, "<0x%02X>", b);
    int32_t id = tok_vocab_find(t, name, k);
    t->byte_tok[b] = id;
    if (id >= 0 && t->kind == TOK_SPM) t->type[id] = TOK_TYPE_BYTE;
  }
  uint32_t na = 0;
  for (uint32_t id = 0; id < t->n; id++) na += (t->flags[id] & TF_ADDED) && t->len[id];
  t->added = malloc((na ? na : 1) * sizeof *t->added);
  if (!t->added) return lt_fail(err, LT_E_NOMEM, "tokenizer: out of memory");
  t->n_added = 0;
  for (uint32_t id = 0; id < t->n; id++)
    if ((t->flags[id] & TF_ADDED) && t->len[id]) t->added[t->n_added++] = (int32_t)id;
  qsort_r(t->added, t->n_added, sizeof *t->added, cmp_added, t);
  uint32_t j = 0;
  for (int c = 0; c <= 256; c++) {
    while (j < t->n_added && (uint8_t)t->text[t->off[t->added[j]]] < c) j++;
    t->added_start[c] = j;
  }
  t->added_start[256] = t->n_added;
  int32_t ids[3] = {t->bos, t->eos, t->unk};
  for (int i = 0; i < 3; i++)
    if (ids[i] < -1 || ids[i] >= (int32_t)t->n)
      return lt_fail(err, LT_E_INVALID, "tokenizer: special id %d out of range (%u ids)", ids[i], t->n);
  if (t->by_score && t->kind != TOK_SPM)
    return lt_fail(err, LT_E_INVALID, "tokenizer: merging by score needs a SentencePiece vocab; give merges");
  return LT_OK;
}

void tok_destroy(tok_t **tp) {
  if (!tp || !*tp) return;
  tok_t *t = *tp;
  free(t->text), free(t->off), free(t->len), free(t->score), free(t->type), free(t->flags);
  free(t->vslot), free(t->mslot), free(t->scratch), free(t->added);
  for (uint32_t i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
  free(t->re);
  for (uint32_t i = 0; i < t->n_norm; i++) free(t->norm[i].a), free(t->norm[i].b);
  free(t->norm);
  free(t);
  *tp = NULL;
}

static const char *spec_str(const char *const *s, const uint32_t *lens, uint32_t i, size_t *n) {
  *n = lens ? lens[i] : (s[i] ? strlen(s[i]) : 0);
  return s[i] ? s[i] : "";
}

tok_t *tok_new(const tok_spec_t *spec, lt_err_t *err) {
  if (!spec || !spec->tokens || (spec->n_merges && !spec->merges) || (spec->n_pre_regexes && !spec->pre_regexes)) {
    lt_fail(err, LT_E_INVALID, "tok_new: missing arrays in the spec");
    return NULL;
  }
  tok_t *t = tokb_new(spec->kind, spec->n_tokens, err);
  if (!t) return NULL;
  lt_status_t st = LT_OK;
  for (uint32_t i = 0; i < spec->n_tokens && !st; i++) {
    size_t n;
    const char *s = spec_str(spec->tokens, spec->token_lens, i, &n);
    int type = spec->token_types ? spec->token_types[i] : TOK_TYPE_NORMAL;
    if (type < TOK_TYPE_NORMAL || type > TOK_TYPE_BYTE) {
      st = lt_fail(err, LT_E_CORRUPT, "tok_new: token %u has type %d", i, type);
      break;
    }
    unsigned fl = TF_MODEL;
    if (type == TOK_TYPE_CONTROL || type == TOK_TYPE_UNKNOWN) fl |= TF_ADDED | TF_SPECIAL;
    if (type == TOK_TYPE_USER_DEFINED) fl |= TF_ADDED;
    st = tokb_token(t, i, s, n, spec->scores ? spec->scores[i] : 0.0f, type, fl, err);
  }
  if (!st) st = tokb_index(t, err);
  if (!st) st = tokb_merges_reserve(t, spec->n_merges, err);
  for (uint32_t i = 0; i < spec->n_merges && !st; i++) {
    size_t n;
    const char *s = spec_str(spec->merges, spec->merge_lens, i, &n);
    /* As llama.cpp reads GGUF merges: split at the first space after the first byte, so a left token may be a
     * space itself and the right one may hold spaces. */
    const char *sp = n > 1 ? memchr(s + 1, ' ', n - 1) : NULL;
    if (!sp || sp == s + n - 1)
      st =
          lt_fail(err, LT_E_CORRUPT, "tok_new: merge %u ('%.*s') is not two tokens separated by a space", i, (int)n, s);
    else
      st = tokb_merge(t, s, (size_t)(sp - s), sp + 1, (size_t)(s + n - sp - 1), err);
  }
  t->by_score = spec->n_merges == 0 && spec->scores != NULL;
  if (spec->kind == TOK_BYTE_LEVEL) {
    if (!spec->n_pre_regexes && !st) st = tokb_regex(t, TOK_REGEX_GPT2, strlen(TOK_REGEX_GPT2), false, err);
    for (uint32_t i = 0; i < spec->n_pre_regexes && !st; i++) {
      if (!spec->pre_regexes[i])
        st = lt_fail(err, LT_E_INVALID, "tok_new: pre-tokenizer pattern %u is NULL", i);
      else
        st = tokb_regex(t, spec->pre_regexes[i], strlen(spec->pre_regexes[i]), false, err);
    }
  } else {
    t->byte_fallback = true;
    if (!st) st = tokb_norm(t, (norm_op_t){.kind = NORM_REPLACE, .a = " ", .an = 1, .b = "\xe2\x96\x81", .bn = 3}, err);
    if (!st && spec->add_space_prefix)
      st = tokb_norm(t, (norm_op_t){.kind = NORM_PREPEND, .a = "\xe2\x96\x81", .an = 3}, err);
    t->strip_start = spec->add_space_prefix ? 1 : 0;
  }
  t->ignore_merges = spec->ignore_merges;
  t->bos = spec->bos_id, t->eos = spec->eos_id, t->unk = spec->unk_id;
  if (!st) st = tokb_finish(t, err);
  if (st) tok_destroy(&t);
  return t;
}

/* ---- encoding ------------------------------------------------------------------------------------------------ */

typedef struct span {
  uint32_t off, len;
} span_t;

typedef struct sym {
  int32_t id;          /* -1: a character outside the vocab (merging by score), resolved to bytes at the end */
  uint32_t start, len; /* len 0: merged into its left neighbour */
  int32_t prev, next;
} sym_t;

typedef struct pair {
  double key;            /* rank, or minus the merged token's score: lower merges first */
  uint32_t l, r, ll, rl; /* symbols and their lengths when the pair was queued */
  int32_t id;
} pair_t;

typedef struct enc {
  const tok_t *t;
  lt_err_t *err;
  int32_t *ids;
  size_t n_ids, cap_ids;
  char *nb[2]; /* normalizer ping-pong buffers */
  size_t nb_cap[2];
  span_t *sp[2];
  size_t sp_cap[2];
  sym_t *sym;
  size_t sym_cap;
  pair_t *heap;
  size_t heap_n, heap_cap;
  char *map; /* a byte-level piece in its code-point form (ignore_merges lookups) */
  size_t map_cap;
  pcre2_match_data *md;
} enc_t;

static lt_status_t emit(enc_t *e, int32_t id) {
  lt_status_t st = grow((void **)&e->ids, &e->cap_ids, e->n_ids + 1, sizeof *e->ids, e->err);
  if (!st) e->ids[e->n_ids++] = id;
  return st;
}

static bool pair_less(const pair_t *a, const pair_t *b) { return a->key < b->key || (a->key == b->key && a->l < b->l); }

static lt_status_t heap_push(enc_t *e, pair_t p) {
  lt_status_t st = grow((void **)&e->heap, &e->heap_cap, e->heap_n + 1, sizeof *e->heap, e->err);
  if (st) return st;
  size_t i = e->heap_n++;
  while (i > 0 && pair_less(&p, &e->heap[(i - 1) / 2])) {
    e->heap[i] = e->heap[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  e->heap[i] = p;
  return LT_OK;
}

static pair_t heap_pop(enc_t *e) {
  pair_t top = e->heap[0], last = e->heap[--e->heap_n];
  size_t i = 0, n = e->heap_n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && pair_less(&e->heap[c + 1], &e->heap[c])) c++;
    if (!pair_less(&e->heap[c], &last)) break;
    e->heap[i] = e->heap[c];
    i = c;
  }
  if (n) e->heap[i] = last;
  return top;
}

/* Queues the pair (l, r) of word w when the vocab can merge it. */
static lt_status_t try_pair(enc_t *e, const char *w, int32_t l, int32_t r) {
  if (l < 0 || r < 0) return LT_OK;
  const tok_t *t = e->t;
  const sym_t *a = &e->sym[l], *b = &e->sym[r];
  pair_t p = {.l = (uint32_t)l, .r = (uint32_t)r, .ll = a->len, .rl = b->len};
  if (t->by_score) {
    int32_t id = tok_vocab_find(t, w + a->start, (size_t)a->len + b->len);
    if (id < 0 || t->type[id] != TOK_TYPE_NORMAL) return LT_OK;
    p.key = -(double)t->score[id];
    p.id = id;
  } else {
    if (a->id < 0 || b->id < 0 || !t->mslot) return LT_OK;
    const merge_slot_t *m = merge_slot(t, (uint64_t)(uint32_t)a->id << 32 | (uint32_t)b->id);
    if (m->rank < 0) return LT_OK;
    p.key = m->rank;
    p.id = m->id;
  }
  return heap_push(e, p);
}

static lt_status_t push_sym(enc_t *e, size_t *ns, int32_t id, uint32_t start, uint32_t len) {
  lt_status_t st = grow((void **)&e->sym, &e->sym_cap, *ns + 1, sizeof *e->sym, e->err);
  if (st) return st;
  e->sym[*ns] = (sym_t){.id = id, .start = start, .len = len, .prev = (int32_t)*ns - 1, .next = (int32_t)*ns + 1};
  (*ns)++;
  return LT_OK;
}

/* Emits the byte-fallback tokens of w[0..n), or the unknown token, or fails. */
static lt_status_t emit_unknown(enc_t *e, const char *w, size_t n) {
  const tok_t *t = e->t;
  bool bytes = t->byte_fallback;
  for (size_t i = 0; i < n && bytes; i++) bytes = t->byte_tok[(uint8_t)w[i]] >= 0;
  if (bytes) {
    for (size_t i = 0; i < n; i++) {
      lt_status_t st = emit(e, t->byte_tok[(uint8_t)w[i]]);
      if (st) return st;
    }
    return LT_OK;
  }
  if (t->unk >= 0) return emit(e, t->unk);
  return lt_fail(e->err, LT_E_INVALID, "tokenizer: '%.*s' has no token (no byte fallback, no unknown token)", (int)n,
                 w);
}

/* Runs the BPE model on one pre-token w[0..n) and appends its ids. */
static lt_status_t enc_word(enc_t *e, const char *w, uint32_t n) {
  const tok_t *t = e->t;
  lt_status_t st = LT_OK;
  if (t->ignore_merges) {
    const char *key = w;
    size_t kn = n;
    if (t->kind == TOK_BYTE_LEVEL) {
      if ((st = grow((void **)&e->map, &e->map_cap, (size_t)n * 2, 1, e->err))) return st;
      kn = 0;
      for (uint32_t i = 0; i < n; i++) kn += utf8_put(e->map + kn, t->cp_of_byte[(uint8_t)w[i]]);
      key = e->map;
    }
    int32_t id = tok_vocab_find(t, key, kn);
    if (id >= 0) return emit(e, id);
  }
  size_t ns = 0;
  if (t->kind == TOK_BYTE_LEVEL) {
    for (uint32_t i = 0; i < n && !st; i++) {
      int32_t id = t->byte_tok[(uint8_t)w[i]];
      if (id < 0 && (id = t->unk) < 0)
        return lt_fail(e->err, LT_E_INVALID, "tokenizer: byte 0x%02x has no token and there is no unknown token",
                       (uint8_t)w[i]);
      st = push_sym(e, &ns, id, i, 1);
    }
  } else {
    for (uint32_t i = 0; i < n && !st;) {
      uint32_t k = (uint32_t)utf8_step((uint8_t)w[i]);
      int32_t id = tok_vocab_find(t, w + i, k);
      if (id >= 0 || t->by_score) {
        st = push_sym(e, &ns, id, i, k);
      } else {
        bool bytes = t->byte_fallback;
        for (uint32_t j = 0; j < k && bytes; j++) bytes = t->byte_tok[(uint8_t)w[i + j]] >= 0;
        if (bytes) {
          for (uint32_t j = 0; j < k && !st; j++) st = push_sym(e, &ns, t->byte_tok[(uint8_t)w[i + j]], i + j, 1);
        } else if (t->unk < 0) {
          return lt_fail(e->err, LT_E_INVALID, "tokenizer: '%.*s' has no token (no byte fallback, no unknown token)",
                         (int)k, w + i);
        } else if (t->fuse_unk && ns && e->sym[ns - 1].id == t->unk) {
          e->sym[ns - 1].len += k;
        } else {
          st = push_sym(e, &ns, t->unk, i, k);
        }
      }
      i += k;
    }
  }
  if (st) return st;
  if (ns) e->sym[ns - 1].next = -1;
  e->heap_n = 0;
  for (size_t i = 0; i + 1 < ns && !st; i++) st = try_pair(e, w, (int32_t)i, (int32_t)i + 1);
  while (!st && e->heap_n) {
    pair_t p = heap_pop(e);
    sym_t *a = &e->sym[p.l], *b = &e->sym[p.r];
    if (a->len != p.ll || b->len != p.rl || a->next != (int32_t)p.r) continue; /* stale: a side has changed */
    a->len += b->len;
    a->id = p.id;
    a->next = b->next;
    if (b->next >= 0) e->sym[b->next].prev = (int32_t)p.l;
    b->len = 0;
    st = try_pair(e, w, a->prev, (int32_t)p.l);
    if (!st) st = try_pair(e, w, (int32_t)p.l, a->next);
  }
  for (int32_t i = ns ? 0 : -1; i >= 0 && !st; i = e->sym[i].next) {
    const sym_t *s = &e->sym[i];
    st = s->id >= 0 ? emit(e, s->id) : emit_unknown(e, w + s->start, s->len);
  }
  return st;
}

/* Applies the normalizer steps to s[0..n); returns the result (one of e's buffers) and its length in *out_n. */
static lt_status_t normalize(enc_t *e, const char *s, size_t n, bool at_start, const char **out, size_t *out_n) {
  const tok_t *t = e->t;
  const char *cur = s;
  size_t cn = n;
  int w = 0;
  for (uint32_t k = 0; k < t->n_norm; k++) {
    const norm_op_t *op = &t->norm[k];
    size_t need;
    if (op->kind == NORM_PREPEND) {
      if (cn == 0 || (op->first_only && !at_start) ||
          (op->unless_present && cn >= op->an && !memcmp(cur, op->a, op->an)))
        continue;
      need = op->an + cn;
    } else {
      size_t hits = 0;
      for (const char *p = cur; (p = memmem(p, (size_t)(cur + cn - p), op->a, op->an)); p += op->an) hits++;
      if (!hits) continue;
      need = cn + hits * op->bn; /* an upper bound: the replaced text is removed */
    }
    lt_status_t st = grow((void **)&e->nb[w], &e->nb_cap[w], need + 1, 1, e->err);
    if (st) return st;
    char *o = e->nb[w];
    size_t on = 0;
    if (op->kind == NORM_PREPEND) {
      memcpy(o, op->a, op->an);
      memcpy(o + op->an, cur, cn);
      on = op->an + cn;
    } else {
      const char *p = cur, *end = cur + cn, *q;
      while ((q = memmem(p, (size_t)(end - p), op->a, op->an))) {
        memcpy(o + on, p, (size_t)(q - p));
        on += (size_t)(q - p);
        memcpy(o + on, op->b, op->bn);
        on += op->bn;
        p = q + op->an;
      }
      memcpy(o + on, p, (size_t)(end - p));
      on += (size_t)(end - p);
    }
    if (on > TOK_MAX_TEXT) return lt_fail(e->err, LT_E_LIMIT, "tokenizer: normalized text exceeds 2 GiB");
    cur = o, cn = on, w ^= 1;
  }
  *out = cur;
  *out_n = cn;
  return LT_OK;
}

/* Splits each span of `in` with regex re (matches and the gaps between them become spans) into `out`. */
static lt_status_t split_regex(enc_t *e, const pcre2_code *re, const char *s, const span_t *in, size_t nin, int outw,
                               size_t *nout) {
  size_t no = 0;
  lt_status_t st = LT_OK;
  for (size_t k = 0; k < nin && !st; k++) {
    PCRE2_SPTR sub = (PCRE2_SPTR)(s + in[k].off);
    size_t n = in[k].len, pos = 0, last = 0;
    while (pos <= n && !st) {
      int rc = pcre2_match(re, sub, n, pos, PCRE2_NO_UTF_CHECK, e->md, NULL);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return lt_fail(e->err, LT_E_INVALID, "tokenizer: pre-tokenizer match failed: %s", (const char *)msg);
      }
      const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
      size_t ms = ov[0], me = ov[1];
      if (me == ms) { /* an empty match splits nothing: step over one character */
        if (ms >= n) break;
        pos = ms + utf8_step(sub[ms]);
        continue;
      }
      span_t piece[2] = {{in[k].off + (uint32_t)last, (uint32_t)(ms - last)},
                         {in[k].off + (uint32_t)ms, (uint32_t)(me - ms)}};
      for (int j = ms > last ? 0 : 1; j < 2 && !st; j++) {
        st = grow((void **)&e->sp[outw], &e->sp_cap[outw], no + 1, sizeof(span_t), e->err);
        if (!st) e->sp[outw][no++] = piece[j];
      }
      last = pos = me;
    }
    if (!st && last < n) {
      st = grow((void **)&e->sp[outw], &e->sp_cap[outw], no + 1, sizeof(span_t), e->err);
      if (!st) e->sp[outw][no++] = (span_t){in[k].off + (uint32_t)last, (uint32_t)(n - last)};
    }
  }
  *nout = no;
  return st;
}

/* Encodes one text segment (the input between two added tokens). */
static lt_status_t enc_segment(enc_t *e, const char *s, size_t n, bool at_start) {
  const tok_t *t = e->t;
  const char *w = s;
  size_t wn = 0;
  lt_status_t st = normalize(e, s, n, at_start, &w, &wn);
  if (st || !wn) return st;
  int cur = 0;
  if ((st = grow((void **)&e->sp[0], &e->sp_cap[0], 1, sizeof(span_t), e->err))) return st;
  e->sp[0][0] = (span_t){0, (uint32_t)wn};
  size_t np = 1;
  for (uint32_t k = 0; k < t->n_re && !st; k++) {
    st = split_regex(e, t->re[k], w, e->sp[cur], np, cur ^ 1, &np);
    cur ^= 1;
  }
  for (size_t k = 0; k < np && !st; k++) {
    span_t p = e->sp[cur][k];
    if (!t->meta_split) {
      st = enc_word(e, w + p.off, p.len);
      continue;
    }
    uint32_t from = 0; /* Metaspace split: each word starts at a U+2581 */
    for (uint32_t i = 1; i + 3 <= p.len && !st; i++) {
      if (memcmp(w + p.off + i, "\xe2\x96\x81", 3) != 0) continue;
      st = enc_word(e, w + p.off + from, i - from);
      from = i;
    }
    if (!st) st = enc_word(e, w + p.off + from, p.len - from);
  }
  return st;
}

/* Returns the added token matching text at i (the longest one), or -1. */
static int32_t match_added(const tok_t *t, const char *s, size_t n, size_t i, bool special) {
  uint8_t c = (uint8_t)s[i];
  for (uint32_t k = t->added_start[c]; k < t->added_start[c + 1]; k++) {
    int32_t id = t->added[k];
    if (!special && (t->flags[id] & TF_SPECIAL)) continue;
    if (t->len[id] <= n - i && !memcmp(s + i, t->text + t->off[id], t->len[id])) return id;
  }
  return -1;
}

lt_status_t tok_encode(const tok_t *t, const char *text, size_t len, unsigned flags, int32_t **ids, size_t *n_ids,
                       lt_err_t *err) {
  if (!t || !ids || !n_ids || (len && !text)) return lt_fail(err, LT_E_INVALID, "tok_encode: NULL argument");
  *ids = NULL;
  *n_ids = 0;
  if (len > TOK_MAX_TEXT) return lt_fail(err, LT_E_LIMIT, "tok_encode: %zu bytes of text (at most 2 GiB)", len);
  size_t bad = utf8_invalid_at(text, len);
  if (bad != len) return lt_fail(err, LT_E_INVALID, "tok_encode: invalid UTF-8 at byte %zu", bad);
  if ((flags & TOK_ADD_BOS) && t->bos < 0) return lt_fail(err, LT_E_INVALID, "tok_encode: the tokenizer has no BOS");
  enc_t e = {.t = t, .err = err};
  lt_status_t st = LT_OK;
  if (t->n_re && !(e.md = pcre2_match_data_create(1, NULL))) st = lt_fail(err, LT_E_NOMEM, "tok_encode: out of memory");
  if (!st && (flags & TOK_ADD_BOS)) st = emit(&e, t->bos);
  size_t seg = 0; /* start of the pending text segment */
  bool special = flags & TOK_PARSE_SPECIAL;
  for (size_t i = 0; i < len && !st;) {
    int32_t id = t->n_added ? match_added(t, text, len, i, special) : -1;
    if (id < 0) {
      i += utf8_step((uint8_t)text[i]);
      continue;
    }
    size_t end = i + t->len[id], seg_end = i;
    uint32_t cp;
    if (t->flags[id] & TF_LSTRIP) /* step back over whitespace characters of the pending segment */
      for (size_t j = seg_end; j > seg;) {
        size_t b = j - 1;
        while (b > seg && ((uint8_t)text[b] & 0xc0) == 0x80) b--;
        if (!utf8_len((const unsigned char *)text + b, j - b, &cp) || !is_space_cp(cp)) break;
        seg_end = j = b;
      }
    if (t->flags[id] & TF_RSTRIP)
      for (size_t k; end < len && (k = utf8_len((const unsigned char *)text + end, len - end, &cp)) && is_space_cp(cp);)
        end += k;
    if (seg_end > seg) st = enc_segment(&e, text + seg, seg_end - seg, seg == 0);
    if (!st) st = emit(&e, id);
    seg = i = end;
  }
  if (!st && seg < len) st = enc_segment(&e, text + seg, len - seg, seg == 0);
  pcre2_match_data_free(e.md);
  free(e.nb[0]), free(e.nb[1]), free(e.sp[0]), free(e.sp[1]), free(e.sym), free(e.heap), free(e.map);
  if (st) {
    free(e.ids);
    return st;
  }
  *ids = e.ids;
  *n_ids = e.n_ids;
  return LT_OK;
}

/* ---- decoding ------------------------------------------------------------------------------------------------ */

typedef struct dbuf {
  char *p;
  size_t n, cap;
} dbuf_t;

static lt_status_t put(dbuf_t *d, const char *s, size_t n, lt_err_t *err) {
  lt_status_t st = grow((void **)&d->p, &d->cap, d->n + n + 1, 1, err);
  if (st) return st;
  memcpy(d->p + d->n, s, n);
  d->n += n;
  return LT_OK;
}

/* Appends the bytes token id stands for. */
static lt_status_t decode_token(const tok_t *t, int32_t id, dbuf_t *d, lt_err_t *err) {
  const char *s = t->text + t->off[id];
  size_t n = t->len[id];
  if (t->flags[id] & TF_ADDED) return put(d, s, n, err);
  lt_status_t st = grow((void **)&d->p, &d->cap, d->n + n + 1, 1, err); /* no token decodes longer than its text */
  if (st) return st;
  if (t->kind == TOK_BYTE_LEVEL) {
    size_t n0 = d->n;
    for (size_t i = 0; i < n;) {
      uint32_t cp;
      size_t k = utf8_len((const unsigned char *)s + i, n - i, &cp);
      if (!k || cp >= 324 || t->byte_of_cp[cp] < 0) { /* not byte-level text: the raw text, as HF does */
        d->n = n0;
        return put(d, s, n, err);
      }
      d->p[d->n++] = (char)t->byte_of_cp[cp];
      i += k;
    }
    return LT_OK;
  }
  int b = t->type[id] == TOK_TYPE_BYTE ? byte_token_value(s, n) : -1;
  if (b >= 0) {
    d->p[d->n++] = (char)b;
    return LT_OK;
  }
  for (size_t i = 0; i < n;) {
    if (n - i >= 3 && !memcmp(s + i, "\xe2\x96\x81", 3)) {
      d->p[d->n++] = ' ';
      i += 3;
    } else {
      d->p[d->n++] = s[i++];
    }
  }
  return LT_OK;
}

/* Rewrites d's bytes with U+FFFD for every byte that starts no valid UTF-8 sequence. */
static lt_status_t utf8_replace(dbuf_t *d, lt_err_t *err) {
  dbuf_t o = {0};
  lt_status_t st = put(&o, "", 0, err);
  for (size_t i = 0; i < d->n && !st;) {
    uint32_t cp;
    size_t k = utf8_len((const unsigned char *)d->p + i, d->n - i, &cp);
    st = k ? put(&o, d->p + i, k, err) : put(&o, "\xEF\xBF\xBD", 3, err);
    i += k ? k : 1;
  }
  if (!st) o.p[o.n] = '\0'; /* put() keeps room for it */
  free(d->p);
  *d = o;
  return st;
}

lt_status_t tok_decode(const tok_t *t, const int32_t *ids, size_t n, unsigned flags, char **text, size_t *len,
                       lt_err_t *err) {
  if (!t || !text || (n && !ids)) return lt_fail(err, LT_E_INVALID, "tok_decode: NULL argument");
  *text = NULL;
  if (len) *len = 0;
  dbuf_t d = {0};
  lt_status_t st = put(&d, "", 0, err);
  for (size_t i = 0; i < n && !st; i++) {
    int32_t id = ids[i];
    if (id < 0 || (uint32_t)id >= t->n)
      st = lt_fail(err, LT_E_INVALID, "tok_decode: id %d out of range (%u ids)", id, t->n);
    else if (!((flags & TOK_SKIP_SPECIAL) && (t->flags[id] & TF_SPECIAL)))
      st = decode_token(t, id, &d, err);
  }
  if (st) {
    free(d.p);
    return st;
  }
  size_t skip = 0;
  if (!(flags & TOK_KEEP_LEADING))
    while (skip < t->strip_start && skip < d.n && d.p[skip] == ' ') skip++;
  memmove(d.p, d.p + skip, d.n - skip);
  d.n -= skip;
  d.p[d.n] = '\0';
  if ((flags & TOK_UTF8_REPLACE) && (st = utf8_replace(&d, err)) != LT_OK) {
    free(d.p);
    return st;
  }
  *text = d.p;
  if (len) *len = d.n;
  return LT_OK;
}

/* ---- queries ------------------------------------------------------------------------------------------------- */

uint32_t tok_n_vocab(const tok_t *t) { return t->n; }
tok_kind_t tok_kind(const tok_t *t) { return t->kind; }
int32_t tok_bos(const tok_t *t) { return t->bos; }
int32_t tok_eos(const tok_t *t) { return t->eos; }
int32_t tok_unk(const tok_t *t) { return t->unk; }

lt_status_t tok_set_bos_eos(tok_t *t, int32_t bos, int32_t eos, lt_err_t *err) {
  if (bos < -1 || bos >= (int32_t)t->n || eos < -1 || eos >= (int32_t)t->n)
    return lt_fail(err, LT_E_INVALID, "tok_set_bos_eos: ids %d, %d out of range (%u ids)", bos, eos, t->n);
  t->bos = bos;
  t->eos = eos;
  return LT_OK;
}

const char *tok_token_text(const tok_t *t, int32_t id, size_t *len) {
  if (id < 0 || (uint32_t)id >= t->n) return NULL;
  if (len) *len = t->len[id];
  return t->text ? t->text + t->off[id] : "";
}

int tok_token_type(const tok_t *t, int32_t id) { return id < 0 || (uint32_t)id >= t->n ? 0 : t->type[id]; }

int32_t tok_find(const tok_t *t, const char *text, size_t len) {
  int32_t id = tok_vocab_find(t, text, len);
  if (id >= 0) return id;
  for (uint32_t k = 0; k < t->n_added; k++) {
    int32_t a = t->added[k];
    if (t->len[a] == len && !memcmp(t->text + t->off[a], text, len)) return a;
  }
  return -1;
}

/* The pre-tokenizers GGUF files name in tokenizer.ggml.pre: the Hugging Face tokenizers' own split patterns,
 * applied in turn (each splits every piece into its matches and the gaps between them, as a Split pre-tokenizer
 * with the Isolated behaviour does), then GPT-2's byte-level mapping. A family whose tokenizer.json runs Digits or
 * Punctuation pre-tokenizers before the byte-level one gets their patterns first. */
static const char *const re_gpt2[] = {TOK_REGEX_GPT2}, *const re_llama3[] = {TOK_REGEX_LLAMA3},
                         *const re_qwen2[] = {TOK_REGEX_QWEN2};
/* DeepSeek LLM: line breaks, then Latin/Greek/Cyrillic-like letter runs (its tokenizer.json's own classes),
 * ASCII and full-width punctuation, trailing whitespace, CJK runs and digit runs. */
static const char *const re_deepseek_llm[] = {
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+"};
/* DeepSeek Coder: line breaks, letter runs, punctuation runs, CJK runs, single digits. */
static const char *const re_deepseek_coder[] = {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+",
                                                "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", "\\p{N}"};
/* DeepSeek V3: up to three digits, kana and CJK runs, then its byte-level pattern. */
static const char *const re_deepseek_v3[] = {
    "\\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+"
    "[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"};
/* Falcon: punctuation runs (Punctuation), GPT-2's, then digit runs cut into threes. */
static const char *const re_falcon[] = {"[\\p{P}\\$\\+<=>\\^~\\|`]+", TOK_REGEX_GPT2, "[0-9][0-9][0-9]"};
/* StarCoder and kin: single digits (Digits, individual), then GPT-2's. */
static const char *const re_starcoder[] = {"\\p{N}", TOK_REGEX_GPT2};
/* BLOOM, Poro, GPT-3 Finnish: a run up to whitespace or sentence punctuation, with one leading space. */
static const char *const re_bloom[] = {" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"};
static const char *const re_viking[] = {" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+", "\\p{N}"};
/* Tekken (Mistral Nemo): case-aware letter runs, single digits. */
static const char *const re_tekken[] = {
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?"
    "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};

#define PRE(name, list, ignore)                                                                                        \
  { name, list, sizeof list / sizeof list[0], ignore }
static const struct {
  const char *name;
  const char *const *re;
  uint32_t n_re;
  bool ignore_merges;
} pre_names[] = {
    PRE("default", re_gpt2, false),
    PRE("gpt-2", re_gpt2, false),
    PRE("phi-2", re_gpt2, false),
    PRE("roberta-bpe", re_gpt2, false),
    PRE("mpt", re_gpt2, false),
    PRE("olmo", re_gpt2, false),
    PRE("jais", re_gpt2, false),
    PRE("jina-es", re_gpt2, false),
    PRE("jina-de", re_gpt2, false),
    PRE("jina-v1-en", re_gpt2, false),
    PRE("jina-v2-es", re_gpt2, false),
    PRE("jina-v2-de", re_gpt2, false),
    PRE("jina-v2-code", re_gpt2, false),
    PRE("gigachat", re_gpt2, false),
    PRE("llama-bpe", re_llama3, true),
    PRE("llama3", re_llama3, true),
    PRE("llama-v3", re_llama3, true),
    PRE("falcon3", re_llama3, true),
    PRE("dbrx", re_llama3, false),
    PRE("smaug-bpe", re_llama3, false),
    PRE("chatglm-bpe", re_llama3, false),
    PRE("qwen2", re_qwen2, false),
    PRE("deepseek-r1-qwen", re_qwen2, false),
    PRE("stablelm2", re_qwen2, false),
    PRE("megrez", re_qwen2, false),
    PRE("deepseek-llm", re_deepseek_llm, false),
    PRE("deepseek-coder", re_deepseek_coder, false),
    PRE("deepseek-v3", re_deepseek_v3, false),
    PRE("falcon", re_falcon, false),
    PRE("starcoder", re_starcoder, false),
    PRE("refact", re_starcoder, false),
    PRE("command-r", re_starcoder, false),
    PRE("smollm", re_starcoder, false),
    PRE("codeshell", re_starcoder, false),
    PRE("exaone", re_starcoder, false),
    PRE("minerva-7b", re_starcoder, false),
    PRE("bloom", re_bloom, false),
    PRE("poro-chat", re_bloom, false),
    PRE("gpt3-finnish", re_bloom, false),
    PRE("viking", re_viking, false),
    PRE("tekken", re_tekken, true),
};
#undef PRE

size_t tok_pre_count(void) { return sizeof pre_names / sizeof pre_names[0]; }

const char *tok_pre_at(size_t i) { return i < tok_pre_count() ? pre_names[i].name : NULL; }

bool tok_pre_by_name(const char *name, tok_spec_t *spec) {
  for (size_t i = 0; name && i < sizeof pre_names / sizeof pre_names[0]; i++)
    if (!strcmp(name, pre_names[i].name)) {
      spec->n_pre_regexes = pre_names[i].n_re;
      spec->pre_regexes = pre_names[i].re;
      spec->ignore_merges = pre_names[i].ignore_merges;
      return true;
    }
  return false;
}

const char *tok_pre_name(const char *pattern) {
  if (!pattern || !strcmp(pattern, TOK_REGEX_GPT2)) return "default";
  if (!strcmp(pattern, TOK_REGEX_LLAMA3)) return "llama-bpe";
  if (!strcmp(pattern, TOK_REGEX_QWEN2)) return "qwen2";
  return NULL;
}
