/* BPE tokenizers: byte-level (GPT-2, Llama 3) and SentencePiece-style with byte fallback (Llama 2, Mistral,
 * TinyLlama, stories260K). Built from a Hugging Face tokenizer.json or from plain arrays (what a GGUF file
 * stores). Once built (and tok_set_bos_eos() called, if needed) a tok_t is read-only: encode and decode may run
 * on several threads at once. */
#ifndef LATHE_TOKENIZER_H
#define LATHE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct tok tok_t;

typedef enum tok_kind {
  TOK_BYTE_LEVEL = 1, /* each byte maps to a printable code point (GPT-2 table); regex pre-tokenizer */
  TOK_SPM = 2,        /* SentencePiece: spaces become U+2581, characters outside the vocab become <0xNN> tokens */
} tok_kind_t;

/* Token types as GGUF stores them (tokenizer.ggml.token_type). */
typedef enum tok_type {
  TOK_TYPE_NORMAL = 1,
  TOK_TYPE_UNKNOWN = 2,
  TOK_TYPE_CONTROL = 3,      /* special: matched as a whole string in text, skipped by TOK_SKIP_SPECIAL */
  TOK_TYPE_USER_DEFINED = 4, /* added non-special token: matched as a whole string in text */
  TOK_TYPE_UNUSED = 5,
  TOK_TYPE_BYTE = 6, /* <0xNN> byte-fallback token */
} tok_type_t;

/* The pre-tokenizer patterns GGUF files name instead of storing (tokenizer.ggml.pre "gpt-2"/"default" and
 * "llama-bpe"). tokenizer.json files carry their own pattern, which is what tok_new_json() uses. */
#define TOK_REGEX_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define TOK_REGEX_LLAMA3                                                                                               \
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"             \
  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Qwen2's: Llama 3's with digits split one by one. */
#define TOK_REGEX_QWEN2                                                                                                \
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"                  \
  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* A tokenizer described by plain arrays (what the GGUF loader has in hand). Strings are UTF-8 and need not be
 * NUL-terminated when their lengths are given. Everything is copied: the arrays may be freed after tok_new(). */
typedef struct tok_spec {
  tok_kind_t kind;
  uint32_t n_tokens;
  const char *const *tokens;  /* n_tokens texts as the model file stores them (with Ġ or U+2581) */
  const uint32_t *token_lens; /* n_tokens byte lengths, or NULL when the texts are NUL-terminated */
  const float *scores;        /* n_tokens scores, or NULL; used (higher merges first) when n_merges is 0 */
  const int32_t *token_types; /* n_tokens tok_type_t values, or NULL for all normal */
  uint32_t n_merges;          /* 0: merge by score (sentencepiece / llama.cpp "llama" vocab); needs scores */
  const char *const *merges;  /* n_merges "left right" strings, best (rank 0) first; split at the first space
                                 after the first byte, as llama.cpp reads GGUF merges */
  const uint32_t *merge_lens; /* n_merges byte lengths, or NULL when NUL-terminated */
  uint32_t n_pre_regexes;     /* TOK_BYTE_LEVEL: split patterns applied in turn (0: TOK_REGEX_GPT2) */
  const char *const *pre_regexes;
  bool add_space_prefix;          /* TOK_SPM: prepend U+2581 to text (and strip one leading space when decoding) */
  bool ignore_merges;             /* a pre-token that is itself in the vocab is emitted whole (Llama 3) */
  int32_t bos_id, eos_id, unk_id; /* -1 when absent */
} tok_spec_t;

/* Sets spec's split patterns (and ignore_merges) for the byte-level pre-tokenizer GGUF files name in
 * tokenizer.ggml.pre: the GPT-2, Llama 3, Qwen2, DeepSeek (LLM, Coder, V3), Falcon, StarCoder (refact, command-r,
 * smollm, ...), BLOOM, Viking and Tekken families under the names llama.cpp's converter writes; false (spec
 * unchanged: GPT-2's pattern) for other names. */
bool tok_pre_by_name(const char *name, tok_spec_t *spec);

/* How many pre-tokenizer names tok_pre_by_name knows, and the i-th of them (a static string; NULL past the end). */
size_t tok_pre_count(void);
const char *tok_pre_at(size_t i);

/* The GGUF pre-tokenizer name of a split pattern (as tokenizer.json stores it): "llama-bpe", "qwen2" or, for GPT-2's
 * pattern, "default"; NULL for a pattern without one. Static string. */
const char *tok_pre_name(const char *pattern);

/* Encode flags. */
enum {
  TOK_ADD_BOS = 1u << 0,       /* put the BOS token first (fails when the tokenizer has none) */
  TOK_PARSE_SPECIAL = 1u << 1, /* match special tokens written in the text ("<s>"); added non-special tokens
                                  are always matched */
};
/* Decode flags. */
enum {
  TOK_SKIP_SPECIAL = 1u << 0, /* leave special tokens (BOS, EOS, control tokens) out */
  TOK_KEEP_LEADING = 1u << 1, /* do not strip the leading space the normalizer added (decoding a
                                 continuation piece by piece) */
  TOK_UTF8_REPLACE = 1u << 2, /* finished text: every byte that starts no valid UTF-8 sequence becomes U+FFFD
                                 (random or cut-off tokens can leave stray bytes; JSON needs valid UTF-8) */
};

/* Builds a tokenizer from arrays. Returns NULL and fills err (LT_E_INVALID, LT_E_CORRUPT for merges or
 * regexes that do not fit the vocab, LT_E_LIMIT, LT_E_NOMEM). Caller owns; free with tok_destroy(). */
tok_t *tok_new(const tok_spec_t *spec, lt_err_t *err);

/* Builds a tokenizer from a Hugging Face tokenizer.json file (BPE models only). BOS comes from the
 * post-processor template, else from a special token named <s>, <|begin_of_text|>; EOS from </s>,
 * <|end_of_text|>, <|endoftext|>; override with tok_set_bos_eos(). Returns NULL and fills err (LT_E_IO,
 * LT_E_CORRUPT, LT_E_UNSUPPORTED for features outside this implementation). Caller owns; tok_destroy(). */
tok_t *tok_new_json(const char *path, lt_err_t *err);

/* Same as tok_new_json() from len bytes of JSON text in memory (copied). Caller owns; tok_destroy(). */
tok_t *tok_new_json_buf(const char *json, size_t len, lt_err_t *err);

/* Frees the tokenizer and sets *t to NULL; NULL-safe. */
void tok_destroy(tok_t **t);

/* Encodes len bytes of UTF-8 text. On success *ids is a new array of *n_ids token ids (caller frees with
 * free(); NULL when *n_ids is 0). Fails with LT_E_INVALID on invalid UTF-8, on a character that has no token
 * (no byte fallback and no unknown token) or on TOK_ADD_BOS without a BOS token; LT_E_LIMIT past 2 GiB. */
lt_status_t tok_encode(const tok_t *t, const char *text, size_t len, unsigned flags, int32_t **ids, size_t *n_ids,
                       lt_err_t *err);

/* Decodes n token ids into text. On success *text is a new NUL-terminated string of *len bytes (caller frees
 * with free()). The bytes are the tokens' raw bytes: arbitrary ids may give invalid UTF-8 (no U+FFFD
 * replacement unless TOK_UTF8_REPLACE), so a continuation can be decoded piece by piece. Fails with LT_E_INVALID on an id out of
 * range. */
lt_status_t tok_decode(const tok_t *t, const int32_t *ids, size_t n, unsigned flags, char **text, size_t *len,
                       lt_err_t *err);

/* Returns the number of token ids (vocab plus added tokens). */
uint32_t tok_n_vocab(const tok_t *t);
/* Returns the tokenizer family. */
tok_kind_t tok_kind(const tok_t *t);
/* Returns the BOS, EOS and unknown token ids, -1 when absent. */
int32_t tok_bos(const tok_t *t);
int32_t tok_eos(const tok_t *t);
int32_t tok_unk(const tok_t *t);
/* Sets the BOS and EOS ids (-1: none), as a model's config names them. LT_E_INVALID when out of range. */
lt_status_t tok_set_bos_eos(tok_t *t, int32_t bos, int32_t eos, lt_err_t *err);
/* Returns the stored text of token id (Ġ / U+2581 forms, not NUL-terminated) and its length in *len; NULL when
 * id is out of range. Owned by t. */
const char *tok_token_text(const tok_t *t, int32_t id, size_t *len);
/* Returns the type of token id (tok_type_t), 0 when out of range. */
int tok_token_type(const tok_t *t, int32_t id);
/* Returns the id whose stored text is exactly text[0..len), -1 when none. */
int32_t tok_find(const tok_t *t, const char *text, size_t len);

#endif
