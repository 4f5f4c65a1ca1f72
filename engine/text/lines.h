/* Line-by-line reading of untrusted text files (JSONL, CSV, instruction lists) with a cap on line length that
 * holds before anything is allocated: a file with no newline in gigabytes fails with a message naming the line,
 * instead of being read whole into memory. */
#ifndef LATHE_LINES_H
#define LATHE_LINES_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* Longest line accepted by default (bytes, without the newline). */
#define LINES_MAX_DEFAULT (64u << 20)

typedef struct lines lines_t;

/* Opens path for reading lines of at most max_line bytes (0: LINES_MAX_DEFAULT). Caller owns (lines_destroy);
 * NULL with err (LT_E_IO) when the file cannot be opened. */
lines_t *lines_open(const char *path, size_t max_line, lt_err_t *err);

/* Closes the file and sets *r to NULL; NULL-safe. */
void lines_destroy(lines_t **r);

/* Reads the next line without its "\n" or "\r\n". Returns 1 with *line (owned by r, valid until the next call,
 * NUL-terminated) and *len, 0 at the end of the file, or a negative status with err (LT_E_LIMIT for a line
 * longer than max_line, LT_E_IO). */
int lines_next(lines_t *r, const char **line, size_t *len, lt_err_t *err);

/* Reads the next non-blank line as a JSON object. Returns 1 with *obj (caller owns: json_decref), 0 at the end
 * of the file, or a negative status with err naming "path:line" (LT_E_INVALID when the line is not a JSON
 * object). */
int lines_next_json(lines_t *r, json_t **obj, lt_err_t *err);

/* The number of the line last read (1-based), the bytes read so far and the file's size (for progress). */
uint64_t lines_lineno(const lines_t *r);
uint64_t lines_offset(const lines_t *r);
uint64_t lines_size(const lines_t *r);

/* The path the reader was opened on; owned by r. */
const char *lines_path(const lines_t *r);

#endif
