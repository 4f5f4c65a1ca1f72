/* JSONL input: one JSON object per non-blank line. Lines are bounded (JSONL_MAX_LINE) and every error names the
 * file and line. Shared by every job that reads a data set. */
#ifndef LATHE_JSONL_H
#define LATHE_JSONL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/text/tokenizer.h"

#define JSONL_MAX_LINE (64u << 20) /* longest row read, bytes */

typedef struct jsonl jsonl_t;

/* Opens path for reading rows. Caller owns the result (jsonl_destroy); NULL with err naming the file. */
jsonl_t *jsonl_open(const char *path, lt_err_t *err);

/* Reads the next row into *row (caller json_decref()s it), or sets *row to NULL at the end of the file. A line
 * that is too long or not a JSON object is an error naming "path:line". */
lt_status_t jsonl_next(jsonl_t *r, json_t **row, lt_err_t *err);

/* "path:line" of the row last read; owned by r. */
const char *jsonl_where(const jsonl_t *r);

/* Bytes read so far, and the file's size (for progress). */
uint64_t jsonl_offset(const jsonl_t *r);
uint64_t jsonl_size(const jsonl_t *r);

/* Closes the file and frees *r, setting it to NULL; NULL-safe. */
void jsonl_destroy(jsonl_t **r);

/* jansson's error text without the input it quotes ("... near 'TOKEN'"), into buf: an error about a file the
 * caller may not read must not echo its contents. Returns buf. */
const char *jsonl_error_brief(const json_error_t *je, char *buf, size_t n);

/* Writes j (json_dumpf flags) to path as a new file renamed into place (util_out: never through a planted link).
 * LT_E_IO with err naming path. */
lt_status_t jsonl_write_file(const char *path, const json_t *j, size_t flags, lt_err_t *err);

/* Reads every row of path (at most max_rows, 0: all). Caller owns *rows (jsonl_free). */
lt_status_t jsonl_load(const char *path, uint64_t max_rows, json_t ***rows, size_t *n, lt_err_t *err);

/* Releases what jsonl_load() returned. */
void jsonl_free(json_t **rows, size_t n);

/* The string value of key in row, or NULL; owned by row. */
const char *jsonl_str(const json_t *row, const char *key);

/* Tokenizes a training or scoring row: {"text"} gives text's tokens (flags, e.g. TOK_ADD_BOS, apply) scored from
 * index 1; {"prompt", "completion"} gives the prompt's tokens followed by the completion's own tokens (tokenized
 * separately, so exactly they are scored), scored from the first completion token. *first is the index of the
 * first scored token. Caller owns *ids (free()). where names the row in errors. */
lt_status_t jsonl_row_tokens(const tok_t *tok, const json_t *row, unsigned flags, int32_t **ids, size_t *n,
                             size_t *first, const char *where, lt_err_t *err);

#endif
