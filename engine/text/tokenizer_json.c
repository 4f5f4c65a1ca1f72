/* Reads a Hugging Face tokenizer.json (BPE model) into the tokenizer builder. Normalizers, pre-tokenizers,
 * decoders and post-processors this implementation does not follow are refused with LT_E_UNSUPPORTED rather than
 * ignored; parts that only change offsets or training (trim_offsets, truncation, padding) are ignored. Two
 * added-token options are not followed: single_word, and normalized (HF matches such tokens in the normalized
 * text, here they are matched in the raw text: the same whenever the normalizer is empty, as for GPT-2 and
 * Llama 3). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/tokenizer_internal.h"
#include "engine/text/jsonl.h"

#define JSON_MAX_BYTES ((size_t)1 << 30)
#define META "\xe2\x96\x81" /* U+2581, SentencePiece's space */

/* Returns member key of object o when it has type `type` (JSON_NULL for "any"), NULL when absent or null;
 * fails (LT_E_CORRUPT) in *st when present with another type. */
static json_t *member(json_t *o, const char *key, json_type type, const char *where, lt_status_t *st, lt_err_t *err) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) return NULL;
  if (type != JSON_NULL && json_typeof(v) != type && !(type == JSON_TRUE && json_is_boolean(v))) {
    *st = lt_fail(err, LT_E_CORRUPT, "tokenizer.json: %s.%s has the wrong type", where, key);
    return NULL;
  }
  return v;
}

/* Reads boolean member key (def when absent). */
static bool flag(json_t *o, const char *key, bool def, const char *where, lt_status_t *st, lt_err_t *err) {
  json_t *v = member(o, key, JSON_TRUE, where, st, err);
  return v ? json_is_true(v) : def;
}

/* Returns the "type" string of object o (NULL with *st set when o is not an object with one). */
static const char *type_of(json_t *o, const char *where, lt_status_t *st, lt_err_t *err) {
  json_t *v = json_is_object(o) ? json_object_get(o, "type") : NULL;
  if (!json_is_string(v)) {
    *st = lt_fail(err, LT_E_CORRUPT, "tokenizer.json: %s is not an object with a \"type\" string", where);
    return NULL;
  }
  return json_string_value(v);
}

/* Reads a {"String": s} pattern (*is_regex false) or a {"Regex": r} one (*is_regex true). */
static json_t *pattern(json_t *o, const char *where, bool *is_regex, lt_status_t *st, lt_err_t *err) {
  json_t *p = member(o, "pattern", JSON_OBJECT, where, st, err);
  json_t *s = p ? json_object_get(p, "String") : NULL, *r = p ? json_object_get(p, "Regex") : NULL;
  if (json_is_string(s) == json_is_string(r)) {
    if (!*st) *st = lt_fail(err, LT_E_CORRUPT, "tokenizer.json: %s.pattern needs a String or a Regex", where);
    return NULL;
  }
  *is_regex = json_is_string(r);
  return *is_regex ? r : s;
}

static lt_status_t unsupported(lt_err_t *err, const char *what, const char *type) {
  return lt_fail(err, LT_E_UNSUPPORTED, "tokenizer.json: %s \"%s\" is not supported", what, type);
}

static lt_status_t parse_normalizer(tok_t *t, json_t *n, lt_err_t *err) {
  if (!n || json_is_null(n)) return LT_OK;
  lt_status_t st = LT_OK;
  const char *type = type_of(n, "normalizer", &st, err);
  if (st) return st;
  if (!strcmp(type, "Sequence")) {
    json_t *list = member(n, "normalizers", JSON_ARRAY, "normalizer", &st, err), *v;
    size_t i;
    json_array_foreach(list, i, v) if (!st) st = parse_normalizer(t, v, err);
    return st;
  }
  if (!strcmp(type, "Prepend")) {
    json_t *p = member(n, "prepend", JSON_STRING, "normalizer", &st, err);
    if (!p) return st ? st : lt_fail(err, LT_E_CORRUPT, "tokenizer.json: Prepend normalizer without \"prepend\"");
    return tokb_norm(
        t, (norm_op_t){.kind = NORM_PREPEND, .a = (char *)json_string_value(p), .an = json_string_length(p)}, err);
  }
  if (!strcmp(type, "Replace")) {
    bool is_regex;
    json_t *p = pattern(n, "normalizer", &is_regex, &st, err);
    json_t *c = member(n, "content", JSON_STRING, "normalizer", &st, err);
    if (st) return st;
    if (!c) return lt_fail(err, LT_E_CORRUPT, "tokenizer.json: Replace normalizer without \"content\"");
    if (is_regex) return unsupported(err, "normalizer Replace with a Regex", json_string_value(p));
    return tokb_norm(t,
                     (norm_op_t){.kind = NORM_REPLACE,
                                 .a = (char *)json_string_value(p),
                                 .an = json_string_length(p),
                                 .b = (char *)json_string_value(c),
                                 .bn = json_string_length(c)},
                     err);
  }
  return unsupported(err, "normalizer", type);
}

/* Metaspace as normalizer steps (replace spaces, prepend U+2581) plus the word split. */
static lt_status_t metaspace(tok_t *t, json_t *p, lt_err_t *err) {
  lt_status_t st = LT_OK;
  json_t *rep = member(p, "replacement", JSON_STRING, "pre_tokenizer", &st, err);
  json_t *scheme = member(p, "prepend_scheme", JSON_STRING, "pre_tokenizer", &st, err);
  bool prefix = flag(p, "add_prefix_space", true, "pre_tokenizer", &st, err);
  bool split = flag(p, "split", true, "pre_tokenizer", &st, err);
  if (st) return st;
  if (rep && strcmp(json_string_value(rep), META) != 0)
    return unsupported(err, "Metaspace replacement", json_string_value(rep));
  if (t->n_re) return unsupported(err, "pre_tokenizer order", "Metaspace after a split");
  const char *sc = scheme ? json_string_value(scheme) : prefix ? "always" : "never";
  if (strcmp(sc, "always") && strcmp(sc, "first") && strcmp(sc, "never")) return unsupported(err, "prepend_scheme", sc);
  st = tokb_norm(t, (norm_op_t){.kind = NORM_REPLACE, .a = " ", .an = 1, .b = META, .bn = 3}, err);
  if (!st && strcmp(sc, "never"))
    st = tokb_norm(
        t,
        (norm_op_t){
            .kind = NORM_PREPEND, .a = META, .an = 3, .unless_present = true, .first_only = !strcmp(sc, "first")},
        err);
  t->meta_split = split;
  return st;
}

static lt_status_t parse_pre(tok_t *t, json_t *p, lt_err_t *err) {
  if (!p || json_is_null(p)) return LT_OK;
  lt_status_t st = LT_OK;
  const char *type = type_of(p, "pre_tokenizer", &st, err);
  if (st) return st;
  if (!strcmp(type, "Sequence")) {
    json_t *list = member(p, "pretokenizers", JSON_ARRAY, "pre_tokenizer", &st, err), *v;
    size_t i;
    json_array_foreach(list, i, v) if (!st) st = parse_pre(t, v, err);
    return st;
  }
  if (!strcmp(type, "ByteLevel")) {
    bool prefix = flag(p, "add_prefix_space", true, "pre_tokenizer", &st, err);
    bool use_regex = flag(p, "use_regex", true, "pre_tokenizer", &st, err);
    if (!st && prefix) {
      if (t->n_re) return unsupported(err, "pre_tokenizer order", "ByteLevel add_prefix_space after a split");
      st = tokb_norm(t, (norm_op_t){.kind = NORM_PREPEND, .a = " ", .an = 1, .unless_present = true}, err);
    }
    if (!st && use_regex) st = tokb_regex(t, TOK_REGEX_GPT2, strlen(TOK_REGEX_GPT2), false, err);
    return st;
  }
  if (!strcmp(type, "Split")) {
    bool is_regex;
    json_t *pat = pattern(p, "pre_tokenizer", &is_regex, &st, err);
    json_t *beh = member(p, "behavior", JSON_STRING, "pre_tokenizer", &st, err);
    bool invert = flag(p, "invert", false, "pre_tokenizer", &st, err);
    if (st) return st;
    if (beh && strcmp(json_string_value(beh), "Isolated") != 0)
      return unsupported(err, "Split behavior", json_string_value(beh));
    if (invert) return unsupported(err, "Split", "invert");
    return tokb_regex(t, json_string_value(pat), json_string_length(pat), !is_regex, err);
  }
  if (!strcmp(type, "Digits")) {
    bool each = flag(p, "individual_digits", false, "pre_tokenizer", &st, err);
    const char *re = each ? "\\p{N}" : "\\p{N}+";
    return st ? st : tokb_regex(t, re, strlen(re), false, err);
  }
  if (!strcmp(type, "Metaspace")) return metaspace(t, p, err);
  return unsupported(err, "pre_tokenizer", type);
}

static lt_status_t parse_decoder(tok_t *t, json_t *d, lt_err_t *err) {
  if (!d || json_is_null(d)) return LT_OK;
  lt_status_t st = LT_OK;
  const char *type = type_of(d, "decoder", &st, err);
  if (st) return st;
  if (!strcmp(type, "Sequence")) {
    json_t *list = member(d, "decoders", JSON_ARRAY, "decoder", &st, err), *v;
    size_t i;
    json_array_foreach(list, i, v) if (!st) st = parse_decoder(t, v, err);
    return st;
  }
  if (!strcmp(type, "ByteLevel") || !strcmp(type, "ByteFallback") || !strcmp(type, "Fuse")) return LT_OK;
  if (!strcmp(type, "Replace")) { /* the SentencePiece decoder's U+2581 -> space, which decoding always does */
    bool is_regex;
    json_t *p = pattern(d, "decoder", &is_regex, &st, err);
    json_t *c = member(d, "content", JSON_STRING, "decoder", &st, err);
    if (st) return st;
    if (is_regex || !c || strcmp(json_string_value(p), META) || strcmp(json_string_value(c), " "))
      return unsupported(err, "decoder Replace of", json_string_value(p));
    return LT_OK;
  }
  if (!strcmp(type, "Strip")) {
    json_t *c = member(d, "content", JSON_STRING, "decoder", &st, err);
    json_t *start = member(d, "start", JSON_INTEGER, "decoder", &st, err);
    json_t *stop = member(d, "stop", JSON_INTEGER, "decoder", &st, err);
    if (st) return st;
    if (!c || strcmp(json_string_value(c), " ") || (stop && json_integer_value(stop) != 0) ||
        (start && (json_integer_value(start) < 0 || json_integer_value(start) > 64)))
      return unsupported(err, "decoder", "Strip other than leading spaces");
    t->strip_start = start ? (uint32_t)json_integer_value(start) : 0;
    return LT_OK;
  }
  if (!strcmp(type, "Metaspace")) {
    json_t *scheme = member(d, "prepend_scheme", JSON_STRING, "decoder", &st, err);
    bool prefix = flag(d, "add_prefix_space", true, "decoder", &st, err);
    if (st) return st;
    t->strip_start = scheme ? strcmp(json_string_value(scheme), "never") != 0 : prefix;
    return LT_OK;
  }
  return unsupported(err, "decoder", type);
}

/* BOS from a TemplateProcessing post-processor: the first special token before the sequence. */
static lt_status_t parse_post(tok_t *t, json_t *p, lt_err_t *err) {
  if (!p || json_is_null(p)) return LT_OK;
  lt_status_t st = LT_OK;
  const char *type = type_of(p, "post_processor", &st, err);
  if (st) return st;
  if (!strcmp(type, "Sequence")) {
    json_t *list = member(p, "processors", JSON_ARRAY, "post_processor", &st, err), *v;
    size_t i;
    json_array_foreach(list, i, v) if (!st) st = parse_post(t, v, err);
    return st;
  }
  if (!strcmp(type, "ByteLevel")) return LT_OK; /* it only trims offsets */
  if (strcmp(type, "TemplateProcessing") != 0) return unsupported(err, "post_processor", type);
  json_t *single = member(p, "single", JSON_ARRAY, "post_processor", &st, err);
  json_t *specials = member(p, "special_tokens", JSON_OBJECT, "post_processor", &st, err);
  json_t *first = json_array_get(single, 0);
  if (st || !first || json_object_get(first, "Sequence")) return st;
  json_t *name = json_object_get(json_object_get(first, "SpecialToken"), "id");
  json_t *id = json_array_get(json_object_get(json_object_get(specials, json_string_value(name)), "ids"), 0);
  if (!json_is_string(name) || !json_is_integer(id) || json_integer_value(id) < 0 ||
      json_integer_value(id) >= (json_int_t)t->n)
    return lt_fail(err, LT_E_CORRUPT, "tokenizer.json: post_processor.single[0] names no known special token");
  t->bos = (int32_t)json_integer_value(id);
  return LT_OK;
}

/* Reads one merge, "a b" or ["a", "b"], into the builder. */
static lt_status_t add_merge(tok_t *t, json_t *m, size_t i, lt_err_t *err) {
  if (json_is_string(m)) {
    const char *s = json_string_value(m);
    size_t n = json_string_length(m);
    const char *sp = memchr(s, ' ', n);
    if (!sp || memchr(sp + 1, ' ', (size_t)(s + n - sp - 1)) || sp == s || sp == s + n - 1)
      return lt_fail(err, LT_E_CORRUPT, "tokenizer.json: merge %zu (\"%.*s\") is not two tokens separated by a space",
                     i, (int)n, s);
    return tokb_merge(t, s, (size_t)(sp - s), sp + 1, (size_t)(s + n - sp - 1), err);
  }
  json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
  if (!json_is_array(m) || json_array_size(m) != 2 || !json_is_string(a) || !json_is_string(b))
    return lt_fail(err, LT_E_CORRUPT, "tokenizer.json: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", i);
  return tokb_merge(t, json_string_value(a), json_string_length(a), json_string_value(b), json_string_length(b), err);
}

/* Looks for a ByteLevel step in a pre-tokenizer or decoder (and their Sequences). */
static bool has_byte_level(json_t *o, const char *list_key) {
  if (!json_is_object(o)) return false;
  const char *type = json_string_value(json_object_get(o, "type"));
  if (type && !strcmp(type, "ByteLevel")) return true;
  json_t *v;
  size_t i;
  json_array_foreach(json_object_get(o, list_key), i, v) if (has_byte_level(v, list_key)) return true;
  return false;
}

/* Checks that v is an id in [0, TOK_MAX_TOKENS) and raises *max_id. */
static lt_status_t check_id(json_t *v, const char *what, uint32_t *max_id, lt_err_t *err) {
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (json_int_t)TOK_MAX_TOKENS)
    return lt_fail(err, LT_E_CORRUPT, "tokenizer.json: %s has no valid id (integer in 0..%u)", what,
                   TOK_MAX_TOKENS - 1);
  if ((uint32_t)json_integer_value(v) > *max_id) *max_id = (uint32_t)json_integer_value(v);
  return LT_OK;
}

static lt_status_t parse_model(tok_t **out, json_t *root, lt_err_t *err) {
  lt_status_t st = LT_OK;
  if (!json_is_object(root)) return lt_fail(err, LT_E_CORRUPT, "tokenizer.json: the top level is not an object");
  json_t *model = member(root, "model", JSON_OBJECT, "(top level)", &st, err);
  if (!st && !model) st = lt_fail(err, LT_E_CORRUPT, "tokenizer.json: no \"model\"");
  json_t *mtype = model ? member(model, "type", JSON_STRING, "model", &st, err) : NULL;
  if (!st && mtype && strcmp(json_string_value(mtype), "BPE") != 0)
    return unsupported(err, "model type", json_string_value(mtype));
  json_t *vocab = model ? member(model, "vocab", JSON_OBJECT, "model", &st, err) : NULL;
  json_t *merges = model ? member(model, "merges", JSON_ARRAY, "model", &st, err) : NULL;
  json_t *added = member(root, "added_tokens", JSON_ARRAY, "(top level)", &st, err);
  if (st) return st;
  if (!vocab || !json_object_size(vocab))
    return lt_fail(err, LT_E_CORRUPT, "tokenizer.json: model.vocab is missing or empty");
  json_t *drop = member(model, "dropout", JSON_NULL, "model", &st, err);
  if (drop && (!json_is_number(drop) || json_number_value(drop) > 0)) return unsupported(err, "model", "dropout");
  const char *affix[2] = {"continuing_subword_prefix", "end_of_word_suffix"};
  for (int k = 0; k < 2 && !st; k++) {
    json_t *v = member(model, affix[k], JSON_STRING, "model", &st, err);
    if (v && json_string_length(v)) return unsupported(err, "model", affix[k]);
  }
  json_t *unk = member(model, "unk_token", JSON_STRING, "model", &st, err);
  bool byte_fallback = flag(model, "byte_fallback", false, "model", &st, err);
  bool fuse_unk = flag(model, "fuse_unk", false, "model", &st, err);
  bool ignore_merges = flag(model, "ignore_merges", false, "model", &st, err);
  if (st) return st;

  /* Ids: the vocab and the added tokens (Llama 3 adds 256 past the vocab). */
  uint32_t max_id = 0;
  const char *key;
  size_t klen, i;
  json_t *v;
  json_object_keylen_foreach(vocab, key, klen, v) if (!st) st = check_id(v, "a model.vocab entry", &max_id, err);
  json_array_foreach(added, i, v) if (!st) st = check_id(json_object_get(v, "id"), "an added token", &max_id, err);
  if (st) return st;
  bool byte_level = has_byte_level(json_object_get(root, "pre_tokenizer"), "pretokenizers") ||
                    has_byte_level(json_object_get(root, "decoder"), "decoders");
  tok_t *t = *out = tokb_new(byte_level ? TOK_BYTE_LEVEL : TOK_SPM, max_id + 1, err);
  if (!t) return err ? err->code : LT_E_NOMEM;
  json_object_keylen_foreach(vocab, key, klen, v) {
    if (st) break;
    st = tokb_token(t, (uint32_t)json_integer_value(v), key, klen, 0.0f, 0, TF_MODEL, err);
  }
  json_array_foreach(added, i, v) {
    if (st) break;
    json_t *content = member(v, "content", JSON_STRING, "added_tokens[]", &st, err);
    bool special = flag(v, "special", false, "added_tokens[]", &st, err);
    unsigned fl = TF_ADDED | (special ? TF_SPECIAL : 0);
    fl |= flag(v, "lstrip", false, "added_tokens[]", &st, err) ? TF_LSTRIP : 0;
    fl |= flag(v, "rstrip", false, "added_tokens[]", &st, err) ? TF_RSTRIP : 0;
    if (!st && !content) st = lt_fail(err, LT_E_CORRUPT, "tokenizer.json: added_tokens[%zu] has no content", i);
    if (!st)
      st = tokb_token(t, (uint32_t)json_integer_value(json_object_get(v, "id")), json_string_value(content),
                      json_string_length(content), 0.0f, special ? TOK_TYPE_CONTROL : TOK_TYPE_USER_DEFINED, fl, err);
  }
  if (!st) st = tokb_index(t, err);
  if (!st)
    st = tokb_merges_reserve(t, (uint32_t)(json_array_size(merges) < INT32_MAX ? json_array_size(merges) : INT32_MAX),
                             err);
  json_array_foreach(merges, i, v) {
    if (st) break;
    st = add_merge(t, v, i, err);
  }
  if (st) return st;
  if (unk) {
    t->unk = tok_vocab_find(t, json_string_value(unk), json_string_length(unk));
    if (t->unk < 0)
      return lt_fail(err, LT_E_CORRUPT, "tokenizer.json: unk_token \"%s\" is not in the vocab", json_string_value(unk));
    t->type[t->unk] = TOK_TYPE_UNKNOWN;
  }
  t->byte_fallback = byte_fallback;
  t->fuse_unk = fuse_unk;
  t->ignore_merges = ignore_merges;
  return LT_OK;
}

/* Finds the first of names that is a token, -1 when none. */
static int32_t first_named(const tok_t *t, const char *const *names, int n) {
  for (int i = 0; i < n; i++) {
    int32_t id = tok_find(t, names[i], strlen(names[i]));
    if (id >= 0) return id;
  }
  return -1;
}

tok_t *tok_new_json_buf(const char *json, size_t len, lt_err_t *err) {
  if (!json) {
    lt_fail(err, LT_E_INVALID, "tok_new_json_buf: NULL text");
    return NULL;
  }
  json_error_t je;
  char jb[160];
  json_t *root = json_loadb(json, len, JSON_ALLOW_NUL, &je);
  if (!root) {
    lt_fail(err, LT_E_CORRUPT, "tokenizer.json: line %d column %d: %s", je.line, je.column,
            jsonl_error_brief(&je, jb, sizeof jb));
    return NULL;
  }
  tok_t *t = NULL;
  lt_status_t st = parse_model(&t, root, err);
  if (!st) st = parse_normalizer(t, json_object_get(root, "normalizer"), err);
  if (!st) st = parse_pre(t, json_object_get(root, "pre_tokenizer"), err);
  if (!st) st = parse_decoder(t, json_object_get(root, "decoder"), err);
  if (!st) st = parse_post(t, json_object_get(root, "post_processor"), err);
  if (!st) st = tokb_finish(t, err);
  if (!st) { /* names need the added-token index that tokb_finish() builds */
    static const char *const bos[] = {"<s>", "<|begin_of_text|>"};
    static const char *const eos[] = {"</s>", "<|end_of_text|>", "<|endoftext|>"};
    if (t->bos < 0) t->bos = first_named(t, bos, 2);
    t->eos = first_named(t, eos, 3);
  }
  json_decref(root);
  if (st) tok_destroy(&t);
  return t;
}

tok_t *tok_new_json(const char *path, lt_err_t *err) {
  FILE *f = path ? fopen(path, "rb") : NULL;
  if (!f) {
    lt_fail(err, LT_E_IO, "tokenizer.json: cannot open %s", path ? path : "(null)");
    return NULL;
  }
  tok_t *t = NULL;
  char *buf = NULL;
  long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
  if (size < 0 || fseek(f, 0, SEEK_SET) != 0)
    lt_fail(err, LT_E_IO, "tokenizer.json: cannot read %s", path);
  else if ((size_t)size > JSON_MAX_BYTES)
    lt_fail(err, LT_E_LIMIT, "tokenizer.json: %s is %ld bytes (at most 1 GiB)", path, size);
  else if (!(buf = malloc((size_t)size + 1)))
    lt_fail(err, LT_E_NOMEM, "tokenizer.json: out of memory");
  else if (fread(buf, 1, (size_t)size, f) != (size_t)size)
    lt_fail(err, LT_E_IO, "tokenizer.json: short read of %s", path);
  else
    t = tok_new_json_buf(buf, (size_t)size, err);
  free(buf);
  fclose(f);
  return t;
}
