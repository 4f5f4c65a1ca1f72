/* Tokenizer: known answers on the real stories260K tokenizer (README), hand-derived ids on small byte-level
 * tokenizers written here, round trips on random UTF-8, hostile tokenizer.json files and a large-vocab load. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/text/tokenizer.h"

TestSuite(tokenizer);

/* ---- helpers ------------------------------------------------------------------------------------------------ */

/* Path of a stories260K fixture; fails the test (never skips) when it is missing. Caller frees. */
static char *fixture(const char *rel) {
  char *p = NULL;
  cr_assert(asprintf(&p, "%s/tests/fixtures/stories260K/%s", LATHE_SOURCE_DIR, rel) > 0);
  cr_assert(access(p, R_OK) == 0, "missing fixture %s", p);
  return p;
}

static tok_t *stories(void) {
  char *p = fixture("hf/tokenizer.json");
  lt_err_t err = {0};
  tok_t *t = tok_new_json(p, &err);
  cr_assert(t != NULL, "tok_new_json(%s): %s", p, err.msg);
  free(p);
  return t;
}

static tok_t *from_json(json_t *root) {
  char *s = json_dumps(root, JSON_COMPACT);
  cr_assert(s != NULL);
  lt_err_t err = {0};
  tok_t *t = tok_new_json_buf(s, strlen(s), &err);
  cr_assert(t != NULL, "tok_new_json_buf: %s", err.msg);
  free(s);
  json_decref(root);
  return t;
}

static int32_t *enc(const tok_t *t, const char *s, unsigned flags, size_t *n) {
  lt_err_t err = {0};
  int32_t *ids = NULL;
  cr_assert_eq(tok_encode(t, s, strlen(s), flags, &ids, n, &err), LT_OK, "encode '%s': %s", s, err.msg);
  return ids;
}

static char *dec(const tok_t *t, const int32_t *ids, size_t n, unsigned flags) {
  lt_err_t err = {0};
  char *s = NULL;
  size_t len = 0;
  cr_assert_eq(tok_decode(t, ids, n, flags, &s, &len, &err), LT_OK, "decode: %s", err.msg);
  cr_assert_eq(strlen(s), len);
  return s;
}

static void ids_str(char *o, size_t cap, const int32_t *ids, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n && k + 12 < cap; i++) k += (size_t)snprintf(o + k, cap - k, "%s%d", i ? "," : "", ids[i]);
  o[k] = '\0';
}

/* Encodes s and asserts the ids are exactly want[0..nw). */
static void expect_ids(const tok_t *t, const char *s, unsigned flags, const int32_t *want, size_t nw) {
  size_t n;
  int32_t *got = enc(t, s, flags, &n);
  char a[2048], b[2048];
  ids_str(a, sizeof a, got, n);
  ids_str(b, sizeof b, want, nw);
  cr_assert(n == nw && !memcmp(got, want, n * sizeof *got), "'%s': got [%s], want [%s]", s, a, b);
  free(got);
}
#define EXPECT_IDS(t, s, flags, ...)                                                                                   \
  do {                                                                                                                 \
    const int32_t want_[] = {__VA_ARGS__};                                                                             \
    expect_ids(t, s, flags, want_, sizeof want_ / sizeof *want_);                                                      \
  } while (0)

/* Asserts decode(encode(s)) == s byte for byte. */
static void expect_roundtrip(const tok_t *t, const char *s, size_t len) {
  lt_err_t err = {0};
  int32_t *ids = NULL;
  size_t n = 0, back_len = 0;
  char *back = NULL;
  cr_assert_eq(tok_encode(t, s, len, 0, &ids, &n, &err), LT_OK, "encode: %s", err.msg);
  cr_assert_eq(tok_decode(t, ids, n, 0, &back, &back_len, &err), LT_OK, "decode: %s", err.msg);
  cr_assert(back_len == len && !memcmp(back, s, len), "round trip of '%.*s' (%zu bytes) gave '%s' (%zu bytes)",
            (int)len, s, len, back, back_len);
  free(ids), free(back);
}

/* GPT-2's bytes_to_unicode, written independently of the engine's copy. */
static void byte_char(int b, char out[3]) {
  int cp = b, k = 0;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
    cp = 256;
    for (int x = 0; x < b; x++) cp += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
  }
  if (cp < 0x80)
    out[k++] = (char)cp;
  else
    out[k++] = (char)(0xc0 | cp >> 6), out[k++] = (char)(0x80 | (cp & 0x3f));
  out[k] = '\0';
}

/* A byte-level BPE tokenizer.json: ids 0..255 are the bytes (id == byte value), then `extra` tokens, then the
 * merged tokens of `merges` in rank order (when new), then added tokens. pre is the pre_tokenizer object. */
static json_t *byte_level_json(const char *const *extra, int n_extra, const char *const *merges, int n_merges,
                               json_t *pre, bool ignore_merges, bool merges_as_pairs) {
  json_t *vocab = json_object(), *jm = json_array();
  int next = 0;
  for (int b = 0; b < 256; b++) {
    char c[3];
    byte_char(b, c);
    json_object_set_new(vocab, c, json_integer(next++));
  }
  for (int i = 0; i < n_extra; i++) json_object_set_new(vocab, extra[i], json_integer(next++));
  for (int i = 0; i < n_merges; i++) {
    const char *sp = strchr(merges[i], ' ');
    char merged[64];
    snprintf(merged, sizeof merged, "%.*s%s", (int)(sp - merges[i]), merges[i], sp + 1);
    if (!json_object_get(vocab, merged)) json_object_set_new(vocab, merged, json_integer(next++));
    json_array_append_new(jm, merges_as_pairs ? json_pack("[s#s]", merges[i], (int)(sp - merges[i]), sp + 1)
                                              : json_string(merges[i]));
  }
  json_t *added = json_pack("[{s:i,s:s,s:b,s:b,s:b},{s:i,s:s,s:b,s:b,s:b},{s:i,s:s,s:b,s:b,s:b}]",          //
                            "id", next, "content", "<|endoftext|>", "special", 1, "lstrip", 0, "rstrip", 0, //
                            "id", next + 1, "content", "<|x|>", "special", 1, "lstrip", 1, "rstrip", 1,     //
                            "id", next + 2, "content", "[[user]]", "special", 0, "lstrip", 0, "rstrip", 0);
  return json_pack("{s:s,s:o,s:n,s:o,s:{s:s},s:{s:s,s:b},s:{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:o}}",      //
                   "version", "1.0", "added_tokens", added, "normalizer", "pre_tokenizer", pre,              //
                   "post_processor", "type", "ByteLevel", "decoder", "type", "ByteLevel", "trim_offsets", 1, //
                   "model", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix",              //
                   "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", ignore_merges,  //
                   "vocab", vocab, "merges", jm);
}

static json_t *gpt2_pre(void) {
  return json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1);
}

static json_t *qwen2_pre(void) {
  return json_pack("{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b,s:b}]}", "type", "Sequence", "pretokenizers",  //
                   "type", "Split", "pattern", "Regex", TOK_REGEX_QWEN2, "behavior", "Isolated", "invert", 0, //
                   "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0);
}

static json_t *llama3_pre(void) {
  return json_pack("{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b,s:b}]}", "type", "Sequence", "pretokenizers",   //
                   "type", "Split", "pattern", "Regex", TOK_REGEX_LLAMA3, "behavior", "Isolated", "invert", 0, //
                   "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0);
}

/* The merges of the small GPT-2-style tokenizer; merged ids are 256 + rank. */
static const char *const GPT2_MERGES[] = {"h e", "Ġ t",  "Ġt he", "a t",  "Ġ c",   "Ġc at",
                                          "i n", "Ġ in", "t he",  "h at", "Ġ hat", "e e"};
enum { HE = 256, G_T, G_THE, AT, G_C, G_CAT, IN, G_IN, THE, HAT, G_HAT, EE, ENDOFTEXT, X_TOK, USER_TOK };

static tok_t *small_gpt2(bool pairs) {
  return from_json(byte_level_json(NULL, 0, GPT2_MERGES, 12, gpt2_pre(), false, pairs));
}

static uint64_t rng(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return *s >> 33;
}

/* Fills o with n random code points (ASCII, whitespace, controls, Latin-1, CJK, emoji, NUL) as UTF-8, never
 * U+2581 (which SentencePiece decodes as a space); returns the byte length. */
static size_t random_utf8(char *o, int n, uint64_t *seed) {
  static const uint32_t ranges[][2] = {{0x20, 0x7e},       {0x20, 0x20},     {0x09, 0x0d},
                                       {0x00, 0x1f},       {0xa0, 0x2ff},    {0x4e00, 0x9fff},
                                       {0x1f300, 0x1f6ff}, {0x3040, 0x30ff}, {0x0400, 0x04ff}};
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    const uint32_t *r = ranges[rng(seed) % 9];
    uint32_t cp = r[0] + (uint32_t)(rng(seed) % (r[1] - r[0] + 1));
    if (cp < 0x80)
      o[k++] = (char)cp;
    else if (cp < 0x800)
      o[k++] = (char)(0xc0 | cp >> 6), o[k++] = (char)(0x80 | (cp & 0x3f));
    else if (cp < 0x10000)
      o[k++] = (char)(0xe0 | cp >> 12), o[k++] = (char)(0x80 | (cp >> 6 & 0x3f)), o[k++] = (char)(0x80 | (cp & 0x3f));
    else
      o[k++] = (char)(0xf0 | cp >> 18), o[k++] = (char)(0x80 | (cp >> 12 & 0x3f)),
      o[k++] = (char)(0x80 | (cp >> 6 & 0x3f)), o[k++] = (char)(0x80 | (cp & 0x3f));
  }
  return k;
}

static double clock_s(clockid_t which) {
  struct timespec ts;
  clock_gettime(which, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static double now_s(void) { return clock_s(CLOCK_MONOTONIC); }
static double cpu_s(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

/* ---- stories260K (SentencePiece BPE with byte fallback) ------------------------------------------------------- */

Test(tokenizer, stories_known_answer) {
  tok_t *t = stories();
  cr_assert_eq(tok_kind(t), TOK_SPM);
  cr_assert_eq(tok_n_vocab(t), 512);
  cr_assert_eq(tok_bos(t), 1);
  cr_assert_eq(tok_eos(t), 2);
  cr_assert_eq(tok_unk(t), 0);
  /* README: the prompt tokenizes to [1, 403, 407, 261, 378] with BOS. */
  EXPECT_IDS(t, "Once upon a time", TOK_ADD_BOS, 1, 403, 407, 261, 378);
  EXPECT_IDS(t, "Once upon a time", 0, 403, 407, 261, 378);
  const int32_t ids[] = {1, 403, 407, 261, 378};
  char *s = dec(t, ids, 5, TOK_SKIP_SPECIAL);
  cr_assert_str_eq(s, "Once upon a time");
  free(s);
  s = dec(t, ids, 5, 0); /* HF: "<s>" then " Once..."; only a leading space is stripped */
  cr_assert_str_eq(s, "<s> Once upon a time");
  free(s);
  s = dec(t, ids + 2, 3, TOK_KEEP_LEADING); /* a continuation keeps its space */
  cr_assert_str_eq(s, " upon a time");
  free(s);
  size_t n;
  const char *text = tok_token_text(t, 403, &n);
  cr_assert(n == 7 && !memcmp(text, "\xe2\x96\x81Once", 7));
  cr_assert_eq(tok_find(t, "\xe2\x96\x81upon", 7), 407);
  cr_assert_eq(tok_find(t, "</s>", 4), 2);
  cr_assert_eq(tok_token_type(t, 1), TOK_TYPE_CONTROL);
  cr_assert_eq(tok_token_type(t, 3 + 0x41), TOK_TYPE_BYTE);
  tok_destroy(&t);
  cr_assert_null(t);
  tok_destroy(&t); /* NULL-safe */
}

Test(tokenizer, stories_byte_fallback_and_round_trip) {
  tok_t *t = stories();
  /* stories260K's byte tokens are <0x00>..<0xFF> at ids 3..258: U+1F436 (F0 9F 90 B6) and U+4F60 (E4 BD A0) are
   * not in the vocab, so they must come out as their UTF-8 bytes. */
  size_t n;
  int32_t *ids = enc(t, "Lily saw a \xf0\x9f\x90\xb6 and said \xe4\xbd\xa0", 0, &n);
  const int32_t dog[] = {3 + 0xf0, 3 + 0x9f, 3 + 0x90, 3 + 0xb6}, ni[] = {3 + 0xe4, 3 + 0xbd, 3 + 0xa0};
  bool has_dog = false, has_ni = false;
  for (size_t i = 0; i + 4 <= n; i++) has_dog |= !memcmp(ids + i, dog, sizeof dog);
  for (size_t i = 0; i + 3 <= n; i++) has_ni |= !memcmp(ids + i, ni, sizeof ni);
  cr_assert(has_dog && has_ni, "emoji / CJK bytes not found in the encoding");
  free(ids);
  const char *texts[] = {
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
      "  two leading spaces, trailing  ",
      "tabs\tand\nnew lines\r\n",
      "emoji \xf0\x9f\x98\x80\xf0\x9f\x8c\x8d and Chinese \xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c!",
      "caf\xc3\xa9 na\xc3\xafve \xe2\x80\x9cquoted\xe2\x80\x9d \xe2\x80\x94 dash",
      "<s> and </s> written as text",
      "",
      " ",
  };
  for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) expect_roundtrip(t, texts[i], strlen(texts[i]));
  uint64_t seed = 7;
  char buf[1024];
  for (int k = 0; k < 200; k++) expect_roundtrip(t, buf, random_utf8(buf, 1 + (int)(rng(&seed) % 200), &seed));
  tok_destroy(&t);
}

Test(tokenizer, stories_special_tokens_in_text) {
  tok_t *t = stories();
  EXPECT_IDS(t, "<s>Once upon a time</s>", TOK_PARSE_SPECIAL, 1, 403, 407, 261, 378, 2);
  /* Without TOK_PARSE_SPECIAL the markers are plain text: no control id may appear. */
  size_t n;
  int32_t *ids = enc(t, "<s>Once upon a time</s>", 0, &n);
  for (size_t i = 0; i < n; i++) cr_assert(ids[i] != 1 && ids[i] != 2, "control token %d from plain text", ids[i]);
  free(ids);
  /* The normalizer runs per segment (HF legacy): " a time" after </s> gets its own U+2581 prefix. */
  ids = enc(t, "Once</s> a time", TOK_PARSE_SPECIAL, &n);
  cr_assert(n >= 4 && ids[0] == 403 && ids[1] == 2);
  char *s = dec(t, ids, n, TOK_SKIP_SPECIAL);
  cr_assert_str_eq(s, "Once  a time");
  free(s);
  s = dec(t, ids, n, 0);
  cr_assert_str_eq(s, "Once</s>  a time");
  free(s), free(ids);
  tok_destroy(&t);
}

Test(tokenizer, stories_metaspace_form) {
  /* The same model written with the Metaspace pre-tokenizer and decoder instead of Prepend + Replace. */
  for (int split = 0; split < 2; split++) {
    char *p = fixture("hf/tokenizer.json");
    json_error_t je;
    json_t *root = json_load_file(p, 0, &je);
    cr_assert(root != NULL, "%s: %s", p, je.text);
    free(p);
    json_object_set_new(root, "normalizer", json_null());
    json_object_set_new(root, "pre_tokenizer",
                        json_pack("{s:s,s:s,s:s,s:b}", "type", "Metaspace", "replacement", "\xe2\x96\x81",
                                  "prepend_scheme", "first", "split", split));
    json_object_set_new(root, "decoder",
                        json_pack("{s:s,s:s,s:s,s:b}", "type", "Metaspace", "replacement", "\xe2\x96\x81",
                                  "prepend_scheme", "first", "split", split));
    tok_t *t = from_json(root);
    EXPECT_IDS(t, "Once upon a time", TOK_ADD_BOS, 1, 403, 407, 261, 378);
    expect_roundtrip(t, "Once upon a time, there was a dog.", strlen("Once upon a time, there was a dog."));
    tok_destroy(&t);
  }
}

Test(tokenizer, score_merging_matches_rank_merging) {
  /* The GGUF form of stories260K: the same tokens with scores and types and no merges (llama.cpp's "llama"
   * vocab). Its GGUF stores score -(id - 259) for ids >= 259 and 0 below, types 2 (<unk>), 3 (<s>, </s>),
   * 6 (bytes), 1 (the rest). Merging by score must reproduce the README ids and the merge-list encoding. */
  tok_t *ref = stories();
  uint32_t n = tok_n_vocab(ref);
  const char **toks = calloc(n, sizeof *toks);
  uint32_t *lens = calloc(n, sizeof *lens);
  float *scores = calloc(n, sizeof *scores);
  int32_t *types = calloc(n, sizeof *types);
  for (uint32_t i = 0; i < n; i++) {
    size_t len;
    toks[i] = tok_token_text(ref, (int32_t)i, &len);
    lens[i] = (uint32_t)len;
    scores[i] = i >= 259 ? -(float)(i - 259) : 0.0f;
    types[i] = i == 0 ? TOK_TYPE_UNKNOWN : i < 3 ? TOK_TYPE_CONTROL : i < 259 ? TOK_TYPE_BYTE : TOK_TYPE_NORMAL;
  }
  tok_spec_t spec = {.kind = TOK_SPM,
                     .n_tokens = n,
                     .tokens = toks,
                     .token_lens = lens,
                     .scores = scores,
                     .token_types = types,
                     .add_space_prefix = true,
                     .bos_id = 1,
                     .eos_id = 2,
                     .unk_id = 0};
  lt_err_t err = {0};
  tok_t *t = tok_new(&spec, &err);
  cr_assert(t != NULL, "tok_new: %s", err.msg);
  free(toks), free(lens), free(scores), free(types);
  EXPECT_IDS(t, "Once upon a time", TOK_ADD_BOS, 1, 403, 407, 261, 378);
  const char *texts[] = {"Once upon a time, there was a little girl named Lily. She loved to play outside.",
                         "One day, she saw a big, red ball. \"Can I play?\" asked Tom.",
                         "<s>special</s> and text \xf0\x9f\x90\xb6 \xe4\xbd\xa0\xe5\xa5\xbd"};
  char buf[1024];
  uint64_t seed = 11;
  for (int k = 0; k < 103; k++) {
    const char *s = k < 3 ? texts[k] : buf;
    size_t len = k < 3 ? strlen(s) : random_utf8(buf, 1 + (int)(rng(&seed) % 100), &seed);
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    cr_assert_eq(tok_encode(ref, s, len, TOK_PARSE_SPECIAL, &a, &na, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(tok_encode(t, s, len, TOK_PARSE_SPECIAL, &b, &nb, &err), LT_OK, "%s", err.msg);
    char x[2048], y[2048];
    ids_str(x, sizeof x, a, na);
    ids_str(y, sizeof y, b, nb);
    cr_assert(na == nb && !memcmp(a, b, na * sizeof *a), "'%.*s': by rank [%s], by score [%s]", (int)len, s, x, y);
    expect_roundtrip(t, s, len);
    free(a), free(b);
  }
  tok_destroy(&t);
  tok_destroy(&ref);
}

Test(tokenizer, score_merging_skips_control_tokens) {
  /* "ab" is a control token with the best score: plain text must merge into normal tokens only. */
  const char *toks[] = {"<unk>", "\u2581", "a", "b", "\u2581a", "ab"};
  const float scores[] = {0, -5, -5, -5, -1, 0};
  const int32_t types[] = {TOK_TYPE_UNKNOWN, 1, 1, 1, 1, TOK_TYPE_CONTROL};
  tok_spec_t spec = {.kind = TOK_SPM,
                     .n_tokens = 6,
                     .tokens = toks,
                     .scores = scores,
                     .token_types = types,
                     .add_space_prefix = true,
                     .bos_id = -1,
                     .eos_id = -1,
                     .unk_id = 0};
  lt_err_t err = {0};
  tok_t *t = tok_new(&spec, &err);
  cr_assert(t != NULL, "tok_new: %s", err.msg);
  EXPECT_IDS(t, "ab", 0, 4, 3);
  EXPECT_IDS(t, "ab", TOK_PARSE_SPECIAL, 5);
  /* No byte tokens in this vocab: an unknown character becomes <unk>. */
  EXPECT_IDS(t, "az", 0, 4, 0);
  tok_destroy(&t);
}

/* ---- byte-level BPE ----------------------------------------------------------------------------------------- */

Test(tokenizer, byte_level_hand_derived) {
  for (int pairs = 0; pairs < 2; pairs++) { /* merges as "a b" strings, then as ["a", "b"] pairs */
    tok_t *t = small_gpt2(pairs);
    cr_assert_eq(tok_kind(t), TOK_BYTE_LEVEL);
    cr_assert_eq(tok_n_vocab(t), USER_TOK + 1);
    /* Pre-tokens "the", " cat", " in", " the", " hat". " the": (h,e) rank 0 first, then (Ġ,t) rank 1 beats
     * (t,he) rank 8, then (Ġt,he) rank 2 -> Ġthe; merging (t,he) first would have stranded Ġ. */
    EXPECT_IDS(t, "the cat in the hat", 0, THE, G_CAT, G_IN, G_THE, G_HAT);
    /* Bytes stand for themselves (id == byte): "!" is 33, "é" is C3 A9, and " é" stays one pre-token. */
    EXPECT_IDS(t, "the cat!", 0, THE, G_CAT, 33);
    EXPECT_IDS(t, " \xc3\xa9", 0, 32, 0xc3, 0xa9);
    /* Equal ranks: the leftmost pair merges first, "eee" -> ee, e. Lower ranks first: in "thee" (h,e) rank 0
     * beats (e,e) rank 11, then (t,he) -> the, e. */
    EXPECT_IDS(t, "eee", 0, EE, 'e');
    EXPECT_IDS(t, "thee", 0, THE, 'e');
    /* GPT-2 pattern: "'s" splits off, digits stay with their space, "\n\n" is whitespace. */
    EXPECT_IDS(t, "it's 42\n\nin", 0, 'i', 't', '\'', 's', 32, '4', '2', 10, 10, IN);
    /* Added tokens: special ones only with TOK_PARSE_SPECIAL; <|x|> strips the spaces around it; the
     * non-special [[user]] always matches. */
    EXPECT_IDS(t, "hi<|endoftext|>the", TOK_PARSE_SPECIAL, 'h', 'i', ENDOFTEXT, THE);
    EXPECT_IDS(t, "the <|x|> cat", TOK_PARSE_SPECIAL, THE, X_TOK, 'c', AT);
    EXPECT_IDS(t, "[[user]]the", 0, USER_TOK, THE);
    size_t n;
    int32_t *ids = enc(t, "hi<|endoftext|>", 0, &n);
    for (size_t i = 0; i < n; i++) cr_assert(ids[i] != ENDOFTEXT, "special token from plain text");
    free(ids);
    const int32_t seq[] = {THE, G_CAT, ENDOFTEXT, G_HAT};
    char *s = dec(t, seq, 4, 0);
    cr_assert_str_eq(s, "the cat<|endoftext|> hat");
    free(s);
    s = dec(t, seq, 4, TOK_SKIP_SPECIAL);
    cr_assert_str_eq(s, "the cat hat");
    free(s);
    lt_err_t err = {0};
    int32_t *none = NULL;
    cr_assert_eq(tok_encode(t, "x", 1, TOK_ADD_BOS, &none, &n, &err), LT_E_INVALID, "GPT-2 has no BOS");
    cr_assert_null(none);
    tok_destroy(&t);
  }
}

Test(tokenizer, byte_level_from_arrays_matches_json) {
  /* The GGUF "gpt2" form: token texts, types and "a b" merges as arrays, the pattern named rather than stored
   * (tokenizer.ggml.pre through tok_pre_by_name), against tokenizer.json carrying the pattern itself: GPT-2's,
   * Llama 3's and Qwen2's. */
  static const char *const names[] = {"gpt-2", "llama-bpe", "qwen2"};
  for (int which = 0; which < 3; which++) {
    bool llama3 = which == 1;
    json_t *pre = which == 0 ? gpt2_pre() : llama3 ? llama3_pre() : qwen2_pre();
    tok_t *ref = from_json(byte_level_json(NULL, 0, GPT2_MERGES, 12, pre, llama3, false));
    uint32_t n = tok_n_vocab(ref);
    const char **toks = calloc(n, sizeof *toks);
    uint32_t *lens = calloc(n, sizeof *lens);
    int32_t *types = calloc(n, sizeof *types);
    for (uint32_t i = 0; i < n; i++) {
      size_t len;
      toks[i] = tok_token_text(ref, (int32_t)i, &len);
      lens[i] = (uint32_t)len;
      types[i] = tok_token_type(ref, (int32_t)i);
    }
    tok_spec_t spec = {.kind = TOK_BYTE_LEVEL,
                       .n_tokens = n,
                       .tokens = toks,
                       .token_lens = lens,
                       .token_types = types,
                       .n_merges = 12,
                       .merges = GPT2_MERGES,
                       .bos_id = -1,
                       .eos_id = ENDOFTEXT,
                       .unk_id = -1};
    cr_assert(tok_pre_by_name(names[which], &spec), "%s is a known pre-tokenizer", names[which]);
    cr_assert_eq(spec.ignore_merges, llama3);
    /* The toy merges have no digits, where Qwen2's and Llama 3's patterns differ: the pattern itself is checked. */
    const char *want = which == 0 ? TOK_REGEX_GPT2 : llama3 ? TOK_REGEX_LLAMA3 : TOK_REGEX_QWEN2;
    cr_assert(spec.n_pre_regexes == 1 && !strcmp(spec.pre_regexes[0], want), "%s names the wrong pattern",
              names[which]);
    cr_assert_str_eq(tok_pre_name(want), which == 0 ? "default" : names[which]);
    lt_err_t err = {0};
    tok_t *t = tok_new(&spec, &err);
    cr_assert(t != NULL, "tok_new: %s", err.msg);
    free(toks), free(lens), free(types);
    cr_assert_eq(tok_eos(t), ENDOFTEXT);
    EXPECT_IDS(t, "the cat in the hat", 0, THE, G_CAT, G_IN, G_THE, G_HAT);
    EXPECT_IDS(t, "thee<|endoftext|>", TOK_PARSE_SPECIAL, THE, 'e', ENDOFTEXT);
    char buf[1024];
    uint64_t seed = 17;
    for (int k = 0; k < 50; k++) {
      size_t len = random_utf8(buf, 1 + (int)(rng(&seed) % 100), &seed);
      int32_t *a = NULL, *b = NULL;
      size_t na = 0, nb = 0;
      cr_assert_eq(tok_encode(ref, buf, len, 0, &a, &na, &err), LT_OK, "%s", err.msg);
      cr_assert_eq(tok_encode(t, buf, len, 0, &b, &nb, &err), LT_OK, "%s", err.msg);
      cr_assert(na == nb && !memcmp(a, b, na * sizeof *a), "arrays and JSON disagree on '%.*s'", (int)len, buf);
      free(a), free(b);
    }
    tok_destroy(&t);
    tok_destroy(&ref);
  }
}

Test(tokenizer, llama3_regex_splits) {
  /* With ignore_merges and no merges, a pre-token that is in the vocab comes out whole and any other one as
   * bytes, so the ids show where the Llama 3 pattern split. */
  const char *const extra[] = {"'M", "Ġgoing", "123", "456", "Ġtimes", "ĠwÃ¶rld", "'s", "Ġ1234567"};
  enum { APOS_M = 256, G_GOING, N123, N456, G_TIMES, G_WORLD, APOS_S, G_1234567 };
  tok_t *t = from_json(byte_level_json(extra, 8, NULL, 0, llama3_pre(), true, false));
  /* (?i:'m) catches "'M"; the space before digits is its own piece; \p{N}{1,3} groups digits by three. */
  EXPECT_IDS(t, "I'M going 1234567 times", 0, 'I', APOS_M, G_GOING, ' ', N123, N456, '7', G_TIMES);
  /* "ö" (C3 B6, written Ã¶ in byte-level form) is a letter, so " wörld" is one piece; "\n\n" is one
   * \s*[\r\n]+ piece; " ö" is not a token and falls back to bytes; in "a  b" the first space stands alone. */
  EXPECT_IDS(t, "it's w\xc3\xb6rld\n\nok", 0, 'i', 't', APOS_S, G_WORLD, 10, 10, 'o', 'k');
  EXPECT_IDS(t, "it's \xc3\xb6 w\xc3\xb6rld", 0, 'i', 't', APOS_S, 32, 0xc3, 0xb6, G_WORLD);
  EXPECT_IDS(t, "a  b", 0, 'a', ' ', ' ', 'b');
  tok_destroy(&t);
  /* The GPT-2 pattern on the same vocab keeps " 1234567" whole and "'M" apart. */
  t = from_json(byte_level_json(extra, 8, NULL, 0, gpt2_pre(), true, false));
  EXPECT_IDS(t, "I'M going 1234567 times", 0, 'I', '\'', 'M', G_GOING, G_1234567, G_TIMES);
  tok_destroy(&t);
}

Test(tokenizer, byte_level_round_trip) {
  tok_t *t[2] = {small_gpt2(false), from_json(byte_level_json(NULL, 0, GPT2_MERGES, 12, llama3_pre(), true, false))};
  char buf[4096];
  uint64_t seed = 3;
  for (int k = 0; k < 2; k++) {
    const char *s = "the cat in the hat \xf0\x9f\x98\x80 \xe4\xbd\xa0\xe5\xa5\xbd 12345\r\n\t end";
    expect_roundtrip(t[k], s, strlen(s));
    expect_roundtrip(t[k], "", 0);
    for (int i = 0; i < 200; i++) expect_roundtrip(t[k], buf, random_utf8(buf, 1 + (int)(rng(&seed) % 300), &seed));
    tok_destroy(&t[k]);
  }
}

/* ---- hostile input ------------------------------------------------------------------------------------------- */

static void expect_json_error(const char *json, lt_status_t want, const char *what) {
  lt_err_t err = {0};
  tok_t *t = tok_new_json_buf(json, strlen(json), &err);
  cr_assert_null(t, "%s: accepted", what);
  cr_assert_eq(err.code, want, "%s: got %s (%s), want %s", what, lt_status_str(err.code), err.msg, lt_status_str(want));
  cr_assert(err.msg[0] != '\0', "%s: no message", what);
}

#define VOCAB_ABC "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2}"

Test(tokenizer, hostile_tokenizer_json) {
  expect_json_error("", LT_E_CORRUPT, "empty file");
  expect_json_error("not json", LT_E_CORRUPT, "not JSON");
  expect_json_error("[1,2]", LT_E_CORRUPT, "top level array");
  expect_json_error("{}", LT_E_CORRUPT, "missing model");
  expect_json_error("{\"model\":null}", LT_E_CORRUPT, "null model");
  expect_json_error("{\"model\":[]}", LT_E_CORRUPT, "model of the wrong type");
  expect_json_error("{\"model\":{\"type\":\"WordPiece\"," VOCAB_ABC "}}", LT_E_UNSUPPORTED, "WordPiece");
  expect_json_error("{\"model\":{\"type\":7," VOCAB_ABC "}}", LT_E_CORRUPT, "numeric model type");
  expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":[],\"merges\":[]}}", LT_E_CORRUPT, "vocab array");
  expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{}}}", LT_E_CORRUPT, "empty vocab");
  expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"}}}", LT_E_CORRUPT, "string id");
  expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1}}}", LT_E_CORRUPT, "negative id");
  expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1073741824}}}", LT_E_CORRUPT, "huge id");
  expect_json_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0}}}", LT_E_CORRUPT, "one id, two texts");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"merges\":\"a b\"}}", LT_E_CORRUPT, "merges string");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"merges\":[\"a c\"]}}", LT_E_CORRUPT, "unknown right");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"merges\":[[\"x\",\"b\"]]}}", LT_E_CORRUPT,
                    "unknown left");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"merges\":[\"b a\"]}}", LT_E_CORRUPT,
                    "merged not in vocab");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"merges\":[\"ab\"]}}", LT_E_CORRUPT, "no space");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"merges\":[\"a b c\"]}}", LT_E_CORRUPT, "two spaces");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"merges\":[[0,1]]}}", LT_E_CORRUPT, "numeric pair");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"merges\":[[\"a\"]]}}", LT_E_CORRUPT, "short pair");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"unk_token\":\"<unk>\"}}", LT_E_CORRUPT,
                    "unk not in vocab");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"byte_fallback\":\"yes\"}}", LT_E_CORRUPT,
                    "string flag");
  expect_json_error("{\"model\":{\"type\":\"BPE\"," VOCAB_ABC ",\"dropout\":0.1}}", LT_E_UNSUPPORTED, "dropout");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"added_tokens\":{}}", LT_E_CORRUPT, "added_tokens object");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"added_tokens\":[{\"content\":\"x\"}]}", LT_E_CORRUPT,
                    "added without id");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"added_tokens\":[{\"id\":3}]}", LT_E_CORRUPT, "added without content");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"added_tokens\":[{\"id\":0,\"content\":\"zz\"}]}", LT_E_CORRUPT,
                    "added token contradicts the vocab");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"normalizer\":{\"type\":\"NFKC\"}}", LT_E_UNSUPPORTED, "NFKC");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"normalizer\":{\"type\":1}}", LT_E_CORRUPT, "normalizer type");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                    "\"behavior\":\"Isolated\"}}",
                    LT_E_CORRUPT, "regex that does not compile");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{}}}", LT_E_CORRUPT,
                    "Split without pattern");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
                    "\"behavior\":\"Removed\"}}",
                    LT_E_UNSUPPORTED, "Split Removed");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"}}", LT_E_UNSUPPORTED,
                    "BERT pre-tokenizer");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"decoder\":{\"type\":\"WordPiece\"}}", LT_E_UNSUPPORTED, "decoder");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"post_processor\":{\"type\":\"RobertaProcessing\"}}", LT_E_UNSUPPORTED,
                    "RoBERTa post-processor");
  expect_json_error("{\"model\":{" VOCAB_ABC "},\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
                    "[{\"SpecialToken\":{\"id\":\"<s>\"}}],\"special_tokens\":{}}}",
                    LT_E_CORRUPT, "template naming an unknown token");

  /* The smallest valid file loads. */
  lt_err_t err = {0};
  const char *ok = "{\"model\":{" VOCAB_ABC ",\"merges\":[\"a b\"]}}";
  tok_t *t = tok_new_json_buf(ok, strlen(ok), &err);
  cr_assert(t != NULL, "%s", err.msg);
  EXPECT_IDS(t, "abba", 0, 2, 1, 0);
  tok_destroy(&t);

  /* Files: missing, and the real one cut in half. */
  t = tok_new_json("/nonexistent/tokenizer.json", &err);
  cr_assert(t == NULL && err.code == LT_E_IO, "%s", err.msg);
  char *p = fixture("hf/tokenizer.json");
  FILE *f = fopen(p, "rb");
  cr_assert(f != NULL);
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  free(p);
  buf[n / 2] = '\0';
  expect_json_error(buf, LT_E_CORRUPT, "truncated tokenizer.json");
}

Test(tokenizer, hostile_encode_decode_and_spec) {
  tok_t *t = stories();
  const struct {
    const char *s;
    size_t n;
  } bad[] = {{"\xff", 1},
             {"ok \xc3", 4},
             {"\xc0\xaf", 2},
             {"\xed\xa0\x80", 3},
             {"\xf4\x90\x80\x80", 4},
             {"\x80 lone", 6},
             {"abc\xe4\xbd", 5},
             {"\xf8\x88\x80\x80\x80", 5}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    lt_err_t err = {0};
    int32_t *ids = (int32_t *)&err; /* must be reset to NULL */
    size_t n = 99;
    cr_assert_eq(tok_encode(t, bad[i].s, bad[i].n, TOK_ADD_BOS, &ids, &n, &err), LT_E_INVALID, "bad UTF-8 %zu", i);
    cr_assert(ids == NULL && n == 0 && strstr(err.msg, "UTF-8"), "bad UTF-8 %zu: %s", i, err.msg);
  }
  lt_err_t err = {0};
  char *s = NULL;
  size_t len;
  const int32_t out_of_range[] = {1, 512}, negative[] = {-1};
  cr_assert_eq(tok_decode(t, out_of_range, 2, 0, &s, &len, &err), LT_E_INVALID);
  cr_assert_eq(tok_decode(t, negative, 1, 0, &s, &len, &err), LT_E_INVALID);
  cr_assert_null(s);
  cr_assert_eq(tok_set_bos_eos(t, 512, 2, &err), LT_E_INVALID);
  cr_assert_eq(tok_set_bos_eos(t, -1, 2, &err), LT_OK);
  int32_t *ids = NULL;
  size_t n;
  cr_assert_eq(tok_encode(t, "x", 1, TOK_ADD_BOS, &ids, &n, &err), LT_E_INVALID, "BOS removed");
  cr_assert_eq(tok_find(t, "no such token", 13), -1);
  cr_assert_null(tok_token_text(t, 512, &len));
  cr_assert_eq(tok_token_type(t, -3), 0);
  tok_destroy(&t);

  /* Arrays: a merge whose parts are missing, a bad type, missing arrays, an out-of-range BOS, score merging on a
   * byte-level vocab. */
  const char *toks[] = {"a", "b", "ab"}, *bad_merge[] = {"a c"}, *good_merge[] = {"a b"};
  const float scores[] = {0, 0, 1};
  const int32_t bad_types[] = {1, 9, 1};
  tok_spec_t spec = {.kind = TOK_BYTE_LEVEL,
                     .n_tokens = 3,
                     .tokens = toks,
                     .n_merges = 1,
                     .merges = bad_merge,
                     .bos_id = -1,
                     .eos_id = -1,
                     .unk_id = -1};
  cr_assert_null(tok_new(&spec, &err));
  cr_assert_eq(err.code, LT_E_CORRUPT, "%s", err.msg);
  spec.merges = good_merge;
  spec.token_types = bad_types;
  cr_assert_null(tok_new(&spec, &err));
  cr_assert_eq(err.code, LT_E_CORRUPT, "%s", err.msg);
  spec.token_types = NULL;
  spec.bos_id = 3;
  cr_assert_null(tok_new(&spec, &err));
  cr_assert_eq(err.code, LT_E_INVALID, "%s", err.msg);
  spec.bos_id = -1;
  spec.n_merges = 0;
  spec.scores = scores;
  cr_assert_null(tok_new(&spec, &err));
  cr_assert_eq(err.code, LT_E_INVALID, "%s", err.msg);
  cr_assert_null(tok_new(NULL, &err));
  spec.tokens = NULL;
  cr_assert_null(tok_new(&spec, &err));
  cr_assert_eq(err.code, LT_E_INVALID, "%s", err.msg);
  spec = (tok_spec_t){.kind = TOK_BYTE_LEVEL,
                      .n_tokens = 3,
                      .tokens = toks,
                      .n_merges = 1,
                      .merges = good_merge,
                      .bos_id = -1,
                      .eos_id = -1,
                      .unk_id = -1};
  const char *bad_re[] = {"[a-"};
  spec.n_pre_regexes = 1;
  spec.pre_regexes = bad_re;
  cr_assert_null(tok_new(&spec, &err));
  cr_assert_eq(err.code, LT_E_CORRUPT, "%s", err.msg);
  /* GGUF merges split at the first space after the first byte (as llama.cpp reads them): "a  b" is "a" + " b";
   * "ab " has no right side. */
  const char *sp_toks[] = {"a", " b", "a b"}, *sp_merge[] = {"a  b"}, *no_right[] = {"ab "};
  spec.n_pre_regexes = 0;
  spec.tokens = sp_toks;
  spec.merges = sp_merge;
  t = tok_new(&spec, &err);
  cr_assert(t != NULL, "%s", err.msg);
  tok_destroy(&t);
  spec.merges = no_right;
  cr_assert_null(tok_new(&spec, &err));
  cr_assert_eq(err.code, LT_E_CORRUPT, "%s", err.msg);
  /* A vocab without byte tokens and no unknown token: encoding an unknown byte fails cleanly. */
  spec.tokens = toks;
  spec.merges = good_merge;
  t = tok_new(&spec, &err);
  cr_assert(t != NULL, "%s", err.msg);
  EXPECT_IDS(t, "abab", 0, 2, 2);
  cr_assert_eq(tok_encode(t, "abz", 3, 0, &ids, &n, &err), LT_E_INVALID);
  cr_assert_null(ids);
  tok_destroy(&t);
}

/* ---- a Llama 3 sized vocab ----------------------------------------------------------------------------------- */

Test(tokenizer, large_vocab_load, .timeout = 60) {
  /* 128,000 tokens and 280,000 merges over a 40-character alphabet (26 ASCII letters and 14 two-byte byte-level
   * characters): every 2- and 3-character string, then random 4-character ones; each token gets one merge per
   * split point (2-char: 1, 3-char: 2, 4-char: 3) until 280,000. */
  static const char *const alpha2[] = {"Ġ", "Ċ", "ĉ", "Ã", "©", "Â", "¤", "Å", "ł", "ı", "ð", "Ł", "ĸ", "ŀ"};
  char alpha[40][3];
  for (int i = 0; i < 26; i++) alpha[i][0] = (char)('a' + i), alpha[i][1] = '\0';
  for (int i = 0; i < 14; i++) strcpy(alpha[26 + i], alpha2[i]);
  double t0 = now_s();
  json_t *vocab = json_object(), *merges = json_array();
  int next = 0;
  for (int b = 0; b < 256; b++) {
    char c[3];
    byte_char(b, c);
    json_object_set_new(vocab, c, json_integer(next++));
  }
  const int n_tokens = 128000, n_merges = 280000;
  char tokn[16], m[40];
  uint64_t seed = 5;
  int n_m = 0;
  for (int len = 2; next < n_tokens; len = len < 4 ? len + 1 : 4) {
    int count = len == 2 ? 1600 : len == 3 ? 64000 : n_tokens - next;
    for (int k = 0; k < count && next < n_tokens; k++) {
      int idx[4];
      for (int j = 0, v = k; j < len; j++) idx[j] = len < 4 ? v % 40 : (int)(rng(&seed) % 40), v /= 40;
      tokn[0] = '\0';
      for (int j = 0; j < len; j++) strcat(tokn, alpha[idx[j]]);
      if (json_object_get(vocab, tokn)) continue;
      json_object_set_new(vocab, tokn, json_integer(next++));
      for (int cut = 1; cut < len && n_m < n_merges; cut++) {
        m[0] = '\0';
        for (int j = 0; j < len; j++) strcat(strcat(m, j == cut ? " " : ""), alpha[idx[j]]);
        json_array_append_new(merges, json_string(m));
        n_m++;
      }
    }
  }
  cr_assert_eq(n_m, n_merges);
  json_t *root = json_pack("{s:[],s:n,s:o,s:{s:s},s:{s:s,s:b,s:o,s:o}}", "added_tokens", "normalizer", "pre_tokenizer",
                           llama3_pre(), "decoder", "type", "ByteLevel", "model", "type", "BPE", "ignore_merges", 1,
                           "vocab", vocab, "merges", merges);
  char dir[] = "/tmp/lathe-tok-XXXXXX", path[64];
  cr_assert(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  cr_assert_eq(json_dump_file(root, path, JSON_INDENT(2)), 0);
  json_decref(root);
  double t1 = now_s();

  lt_err_t err = {0};
  double c1 = cpu_s();
  tok_t *t = tok_new_json(path, &err);
  double t2 = now_s(), c2 = cpu_s();
  cr_assert(t != NULL, "%s", err.msg);
  cr_assert_eq(tok_n_vocab(t), (uint32_t)n_tokens);
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fclose(f);
  /* CPU time next to wall time: on a loaded machine the wall time says more about the neighbours. */
  cr_log_info("large vocab: generated %d tokens / %d merges (%.1f MB) in %.2f s; tok_new_json took %.3f s (%.3f s CPU)",
              n_tokens, n_merges, (double)size / 1e6, t1 - t0, t2 - t1, c2 - c1);

  /* Encoding throughput on 200 KB of text over the same alphabet, and a round trip. */
  size_t cap = 200000, k = 0;
  char *text = malloc(cap + 8);
  while (k < cap) {
    const char *c = rng(&seed) % 6 ? alpha[rng(&seed) % 40] : " ";
    size_t cl = strlen(c);
    memcpy(text + k, c, cl);
    k += cl;
  }
  int32_t *ids = NULL;
  size_t n = 0;
  double t3 = now_s();
  cr_assert_eq(tok_encode(t, text, k, 0, &ids, &n, &err), LT_OK, "%s", err.msg);
  double t4 = now_s();
  cr_log_info("large vocab: encoded %zu bytes into %zu tokens in %.3f s", k, n, t4 - t3);
  char *back = NULL;
  size_t blen = 0;
  cr_assert_eq(tok_decode(t, ids, n, 0, &back, &blen, &err), LT_OK, "%s", err.msg);
  cr_assert(blen == k && !memcmp(back, text, k), "large vocab round trip");
  free(back), free(ids), free(text);
  tok_destroy(&t);
  unlink(path);
  rmdir(dir);
}

Test(tokenizer, every_named_pre_tokenizer_compiles_and_keeps_every_byte) {
  /* Each tokenizer.ggml.pre name of the table: its patterns compile (PCRE2, UTF and Unicode properties), and a
   * byte-level tokenizer built with them encodes tricky text (whitespace runs, digits, accents, emoji, CJK, code,
   * full-width punctuation) into ids that decode back to the very bytes: no pattern drops or repeats text. That
   * the splits equal the reference tokenizers' is checked against their ids by tools/tokenizer_vocab_check.py. */
  static const char *const texts[] = {
      "ied 4 \xc2\xbd months",
      "   leading\t\ttabs\n\n\nand  runs   ",
      "3333 1234567 \xe2\x91\xa0\xe2\x85\xa2",
      "F\xc3\xbchrer caf\xc3\xa9 na\xc3\xafve \xce\xb1\xce\xb2\xce\xb3 \xd0\xbf\xd1\x80\xd0\xb8",
      "Hello \xf0\x9f\x98\x81 \xe6\x88\x91\xe6\x83\xb3\xe5\x9c\xa8"
      "apple\xe5\xb7\xa5\xe4\xbd\x9c"
      "1314\xef\xbd\x9e",
      "def f(x):\n    return x**2 != y[0]; // \xe3\x80\x82\xef\xbc\x8c'll 've",
  };
  tok_t *ref = from_json(byte_level_json(NULL, 0, GPT2_MERGES, 12, gpt2_pre(), false, false));
  uint32_t n = tok_n_vocab(ref);
  const char **toks = calloc(n, sizeof *toks);
  uint32_t *lens = calloc(n, sizeof *lens);
  for (uint32_t i = 0; i < n; i++) {
    size_t len;
    toks[i] = tok_token_text(ref, (int32_t)i, &len);
    lens[i] = (uint32_t)len;
  }
  cr_assert_gt(tok_pre_count(), 30);
  cr_assert_null(tok_pre_at(tok_pre_count()));
  for (size_t k = 0; k < tok_pre_count(); k++) {
    tok_spec_t spec = {.kind = TOK_BYTE_LEVEL,
                       .n_tokens = n,
                       .tokens = toks,
                       .token_lens = lens,
                       .n_merges = 12,
                       .merges = GPT2_MERGES,
                       .bos_id = -1,
                       .eos_id = -1,
                       .unk_id = -1};
    cr_assert(tok_pre_by_name(tok_pre_at(k), &spec), "%s", tok_pre_at(k));
    cr_assert_gt(spec.n_pre_regexes, 0, "%s", tok_pre_at(k));
    lt_err_t err = {0};
    tok_t *t = tok_new(&spec, &err);
    cr_assert(t != NULL, "%s: %s", tok_pre_at(k), err.msg);
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
      int32_t *ids = NULL;
      size_t nid = 0;
      cr_assert_eq(tok_encode(t, texts[i], strlen(texts[i]), 0, &ids, &nid, &err), LT_OK, "%s: %s", tok_pre_at(k),
                   err.msg);
      char *back = NULL;
      size_t nb = 0;
      cr_assert_eq(tok_decode(t, ids, nid, 0, &back, &nb, &err), LT_OK, "%s", err.msg);
      cr_assert(nb == strlen(texts[i]) && !memcmp(back, texts[i], nb), "%s: text %zu does not come back", tok_pre_at(k),
                i);
      free(ids), free(back);
    }
    tok_destroy(&t);
  }
  free(toks), free(lens);
  tok_destroy(&ref);
}

Test(tokenizer, utf8_replace_marks_stray_bytes_and_keeps_valid_text) {
  /* Byte-level ids of a lone lead byte, a stray continuation byte and an overlong form decode to raw bytes, or with
   * TOK_UTF8_REPLACE to one U+FFFD per byte that starts no valid sequence; valid text (2-, 3- and 4-byte forms)
   * is untouched. */
  tok_t *t = stories(); /* SentencePiece with <0xNN> byte tokens: any byte string is a list of ids */
  static const char bad[] = "a\xC3 b\x80"
                            "c\xC0\xAF\xE2\x82\xAC\xF0\x9F\x98\x81\xC3\xA9";
  size_t n = sizeof bad - 1;
  int32_t *ids = calloc(n, sizeof *ids);
  for (size_t i = 0; i < n; i++) {
    char piece[8];
    snprintf(piece, sizeof piece, "<0x%02X>", (unsigned char)bad[i]);
    cr_assert_geq(ids[i] = tok_find(t, piece, strlen(piece)), 0, "%s", piece);
  }
  lt_err_t err = {0};
  char *raw = NULL, *fixed = NULL;
  size_t nr = 0, nf = 0;
  cr_assert_eq(tok_decode(t, ids, n, TOK_KEEP_LEADING, &raw, &nr, &err), LT_OK, "%s", err.msg);
  cr_assert(nr == sizeof bad - 1 && !memcmp(raw, bad, nr), "raw decoding keeps the bytes");
  cr_assert_eq(tok_decode(t, ids, n, TOK_KEEP_LEADING | TOK_UTF8_REPLACE, &fixed, &nf, &err), LT_OK, "%s", err.msg);
  static const char want[] = "a\xEF\xBF\xBD b\xEF\xBF\xBD"
                             "c\xEF\xBF\xBD\xEF\xBF\xBD\xE2\x82\xAC\xF0\x9F\x98\x81\xC3\xA9";
  cr_assert(nf == sizeof want - 1 && !memcmp(fixed, want, nf) && strlen(fixed) == nf, "got %s", fixed);
  free(ids), free(raw), free(fixed);
  tok_destroy(&t);
}
