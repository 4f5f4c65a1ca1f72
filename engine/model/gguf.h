/* GGUF (v2 and v3) reader, memory-mapped read-only.
 * Layout: "GGUF", u32 version, u64 tensor count, u64 key/value count, the key/values (string key, u32 type,
 * value), the tensor infos (string name, u32 n_dims, u64 dims innermost first, u32 ggml type, u64 offset into
 * the data section), then the data section at the next multiple of general.alignment (default 32).
 * The file is untrusted: every count and length is checked against the bytes left before anything is
 * allocated, and tensor types, dims, offsets and overlaps are validated at open. */
#ifndef LATHE_GGUF_H
#define LATHE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/model/ftensor.h"
#include "common/status.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_KEY 65535 /* bytes in a key */
#define GGUF_MAX_NAME 1024 /* bytes in a tensor name */
#define GGUF_MAX_TENSORS (1u << 20)
#define GGUF_MAX_KV (1u << 20)

typedef struct gguf gguf_t;

/* Metadata value types, numbered as in the file. */
typedef enum gguf_vtype {
  GGUF_U8 = 0,
  GGUF_I8,
  GGUF_U16,
  GGUF_I16,
  GGUF_U32,
  GGUF_I32,
  GGUF_F32,
  GGUF_BOOL,
  GGUF_STRING,
  GGUF_ARRAY,
  GGUF_U64,
  GGUF_I64,
  GGUF_F64,
  GGUF_VTYPE_COUNT
} gguf_vtype_t;

/* ggml tensor types this reader maps (others are refused at open with their name). */
enum { GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q8_0 = 8, GGML_TYPE_BF16 = 30 };

/* One key/value. Scalars are arrays of one (type == elem, n == 1). Elements are copied out of the file into
 * aligned native arrays: uint8_t, int8_t, ..., double; bool as uint8_t 0/1; strings as NUL-terminated
 * const char *[n] with byte lengths in lens (a string may hold NUL bytes: trust lens). Owned by the gguf. */
typedef struct gguf_kv {
  const char *key;
  gguf_vtype_t type; /* GGUF_ARRAY for arrays */
  gguf_vtype_t elem; /* element type (no nested arrays) */
  uint64_t n;
  const void *data;
  const uint64_t *lens; /* string lengths, NULL unless elem is GGUF_STRING */
} gguf_kv_t;

/* One tensor. t is the uniform view (shape row-major, i.e. the GGUF dims reversed; data in the mapping). */
typedef struct gguf_tensor {
  ft_tensor_t t;
  uint32_t ggml_type;       /* type code as stored */
  uint64_t ne[FT_MAX_DIMS]; /* dims in GGUF order, ne[0] innermost; unused ones 1 */
  uint64_t offset;          /* from the start of the data section */
} gguf_tensor_t;

/* The tokenizer.ggml.* arrays and ids; pointers are owned by the gguf; absent parts are NULL / 0 / -1. */
typedef struct gguf_tokenizer {
  const char *model; /* tokenizer.ggml.model: "llama" (SentencePiece), "gpt2" (byte-level BPE), ... */
  uint64_t n_tokens;
  const char *const *tokens;
  const uint64_t *token_lens;
  const float *scores;        /* [n_tokens] or NULL */
  const int32_t *token_types; /* [n_tokens] or NULL */
  uint64_t n_merges;
  const char *const *merges; /* "a b" pairs, or NULL */
  int64_t bos_id, eos_id, unk_id, pad_id;
} gguf_tokenizer_t;

/* Maps and validates the GGUF file at path. Caller owns *out (gguf_destroy). */
lt_status_t gguf_open(gguf_t **out, const char *path, lt_err_t *err);

/* Parses a GGUF image held in memory. data is borrowed and must outlive the object; label names it in
 * messages. Caller owns *out (gguf_destroy). */
lt_status_t gguf_open_buffer(gguf_t **out, const void *data, size_t size, const char *label, lt_err_t *err);

/* Unmaps and frees *self_p and sets it to NULL; NULL-safe. */
void gguf_destroy(gguf_t **self_p);

/* File path or buffer label; owned by g. */
const char *gguf_path(const gguf_t *g);
/* Format version (2 or 3). */
uint32_t gguf_version(const gguf_t *g);
/* Data alignment in bytes (general.alignment or 32). */
uint64_t gguf_alignment(const gguf_t *g);
/* Byte offset of the data section in the file. */
uint64_t gguf_data_offset(const gguf_t *g);

/* Number of key/values. */
uint64_t gguf_kv_count(const gguf_t *g);
/* The i-th key/value in file order, or NULL; owned by g. */
const gguf_kv_t *gguf_kv_at(const gguf_t *g, uint64_t i);
/* The key/value called key, or NULL; owned by g. */
const gguf_kv_t *gguf_kv_find(const gguf_t *g, const char *key);

/* Reads an integer scalar (any integer type) that fits a u32. Missing key or wrong type: LT_E_INVALID. */
lt_status_t gguf_get_u32(const gguf_t *g, const char *key, uint32_t *out, lt_err_t *err);
/* Reads an integer scalar (any integer type) that fits an i32. */
lt_status_t gguf_get_i32(const gguf_t *g, const char *key, int32_t *out, lt_err_t *err);
/* Reads an F32 or F64 scalar as float. */
lt_status_t gguf_get_f32(const gguf_t *g, const char *key, float *out, lt_err_t *err);
/* Reads a BOOL scalar. */
lt_status_t gguf_get_bool(const gguf_t *g, const char *key, bool *out, lt_err_t *err);
/* Reads a STRING scalar; *out is NUL-terminated and owned by g. */
lt_status_t gguf_get_str(const gguf_t *g, const char *key, const char **out, lt_err_t *err);
/* Reads an array whose elements have type elem (exactly); *data (see gguf_kv_t) is owned by g. */
lt_status_t gguf_get_array(const gguf_t *g, const char *key, gguf_vtype_t elem, const void **data, uint64_t *n,
                           lt_err_t *err);
/* Reads an array of strings; *strs and *lens (may be NULL if unwanted) are owned by g. */
lt_status_t gguf_get_strings(const gguf_t *g, const char *key, const char *const **strs, const uint64_t **lens,
                             uint64_t *n, lt_err_t *err);

/* Fills tok from tokenizer.ggml.*: tokens are required; scores (F32) and token_type (I32) must have one entry
 * per token when present; ids absent or 0xFFFFFFFF read as -1, other ids outside the vocabulary fail. */
lt_status_t gguf_tokenizer(const gguf_t *g, gguf_tokenizer_t *tok, lt_err_t *err);

/* Number of tensors. */
uint64_t gguf_tensor_count(const gguf_t *g);
/* The i-th tensor in file order, or NULL; owned by g. */
const gguf_tensor_t *gguf_tensor_at(const gguf_t *g, uint64_t i);
/* The tensor called name, or NULL; owned by g. */
const gguf_tensor_t *gguf_tensor_find(const gguf_t *g, const char *name);

/* Name of a metadata value type ("u32", "string", ...); static string. */
const char *gguf_vtype_str(gguf_vtype_t t);
/* Name of a ggml tensor type ("F32", "Q4_K", ...); "unknown" for codes it does not know; static string. */
const char *gguf_ggml_type_str(uint32_t type);

#endif
