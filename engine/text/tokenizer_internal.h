/* The tokenizer's representation and the builder that tok_new() and the tokenizer.json reader share. */
#ifndef LATHE_TOKENIZER_INTERNAL_H
#define LATHE_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>

#include "engine/text/tokenizer.h"

#define TOK_MAX_TOKENS (1u << 24)      /* ids must stay exact in a float and small in memory */
#define TOK_MAX_TOKEN_BYTES (1u << 16) /* longest token text accepted */
#define TOK_MAX_TEXT ((size_t)1 << 31) /* longest input to encode (symbol offsets are 32-bit) */

/* Per-token flags. */
enum {
  TF_SET = 1,     /* the id has a text (vocab files may leave holes) */
  TF_MODEL = 2,   /* in the model vocab: found by text lookups while merging */
  TF_ADDED = 4,   /* matched as a whole string in the input before the model runs; decoded as raw text */
  TF_SPECIAL = 8, /* added and special: matched only with TOK_PARSE_SPECIAL, skipped by TOK_SKIP_SPECIAL */
  TF_LSTRIP = 16, /* added: swallows the whitespace before it */
  TF_RSTRIP = 32, /* added: swallows the whitespace after it */
};

/* One normalizer step, applied to each text segment between added tokens. */
typedef enum norm_kind { NORM_PREPEND = 1, NORM_REPLACE } norm_kind_t;
typedef struct norm_op {
  norm_kind_t kind;
  char *a; /* text to prepend, or text to replace (non-empty) */
  size_t an;
  char *b; /* replacement */
  size_t bn;
  bool unless_present; /* prepend only when the segment does not already start with it (Metaspace) */
  bool first_only;     /* prepend only to a segment at offset 0 of the input (Metaspace "first") */
} norm_op_t;

typedef struct merge_slot {
  uint64_t key; /* left id << 32 | right id */
  int32_t rank; /* -1: empty slot */
  int32_t id;   /* the merged token */
} merge_slot_t;

struct tok {
  tok_kind_t kind;
  uint32_t n; /* ids 0..n-1 */
  char *text; /* all token texts, back to back */
  size_t text_len, text_cap;
  uint32_t *off, *len;
  float *score;
  uint8_t *type; /* tok_type_t */
  uint8_t *flags;

  int32_t *vslot; /* open-addressing text -> id over TF_MODEL tokens; -1 empty */
  uint32_t vmask;
  merge_slot_t *mslot; /* (left, right) -> rank, merged id */
  uint32_t mmask, n_merges, merge_cap;
  bool by_score; /* no merge list: merge the adjacent pair whose concatenation has the best score */
  char *scratch; /* builder scratch (merged texts) */
  size_t scratch_cap;

  int32_t byte_tok[256];    /* byte-level: token of each byte's code point; SPM: the <0xNN> token; -1 none */
  uint16_t cp_of_byte[256]; /* GPT-2 bytes-to-unicode table */
  int16_t byte_of_cp[324];  /* its inverse, -1 where undefined */

  int32_t *added; /* added token ids sorted by first byte, then longest first */
  uint32_t n_added;
  uint32_t added_start[257];

  pcre2_code **re; /* pre-tokenizer splits, applied in turn ("Isolated": matches and gaps are pieces) */
  uint32_t n_re;
  norm_op_t *norm;
  uint32_t n_norm;
  bool meta_split;      /* split pieces before each U+2581 (Metaspace split) */
  bool ignore_merges;   /* emit a piece whole when it is a token */
  bool byte_fallback;   /* SPM: unknown characters become <0xNN> tokens */
  bool fuse_unk;        /* consecutive unknown characters give one unknown token */
  uint32_t strip_start; /* leading spaces the decoder strips */
  int32_t bos, eos, unk;
};

/* Builder. tokb_new() makes an empty tokenizer of n ids; then tokb_token() for each id, tokb_index(),
 * tokb_merge() in rank order, tokb_regex()/tokb_norm() and finally tokb_finish(). Each returns LT_OK or fills
 * err; on failure the caller destroys the half-built tokenizer with tok_destroy(). */
tok_t *tokb_new(tok_kind_t kind, uint32_t n, lt_err_t *err);
/* Sets token id's text (copied), score, type and flags; an id set twice must keep the same text (the flags are
 * or-ed, a non-zero type replaces the old one). */
lt_status_t tokb_token(tok_t *t, uint32_t id, const char *s, size_t n, float score, int type, unsigned flags,
                       lt_err_t *err);
/* Builds the text -> id table over TF_MODEL tokens (the first id wins for duplicate texts). */
lt_status_t tokb_index(tok_t *t, lt_err_t *err);
/* Makes room for n more merges. */
lt_status_t tokb_merges_reserve(tok_t *t, uint32_t n, lt_err_t *err);
/* Adds the next merge by rank: both sides and their concatenation must be model tokens. */
lt_status_t tokb_merge(tok_t *t, const char *a, size_t an, const char *b, size_t bn, lt_err_t *err);
/* Adds a split pattern (a PCRE2 regex with UTF and UCP, or a literal string). */
lt_status_t tokb_regex(tok_t *t, const char *pat, size_t n, bool literal, lt_err_t *err);
/* Appends a normalizer step; copies op.a and op.b. */
lt_status_t tokb_norm(tok_t *t, norm_op_t op, lt_err_t *err);
/* Builds the byte tables and the added-token index and checks the special ids. */
lt_status_t tokb_finish(tok_t *t, lt_err_t *err);
/* Returns the model-vocab id of text s[0..n), -1 when none. */
int32_t tok_vocab_find(const tok_t *t, const char *s, size_t n);

#endif
