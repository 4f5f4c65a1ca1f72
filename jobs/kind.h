/* The job kind table (rows in jobs/kinds.def): names, parameter schemas, validators and crash policies.
 * Linked by the daemon (validation), the worker (dispatch) and the CLI (help and argument parsing); the
 * runners themselves live in jobs/runners.h so that only the worker links them. */
#ifndef LATHE_KIND_H
#define LATHE_KIND_H

#include <stdbool.h>
#include <stddef.h>

#include "common/proto.h"

/* KT_STRS: a list of strings (a repeated command-line flag), at most KIND_MAX_LIST entries; lo/hi bound each
 * entry's length. */
typedef enum kind_type { KT_INT, KT_FLOAT, KT_BOOL, KT_STR, KT_PATH, KT_STRS } kind_type_t;

#define KIND_MAX_LIST 256

typedef enum kind_policy { KIND_RESTART, KIND_RESUME, KIND_FAIL } kind_policy_t;

/* One parameter of a kind's schema. */
typedef struct kind_param {
  const char *key;
  kind_type_t type;
  bool required;
  const char *def; /* default as command-line text; ignored when required */
  double lo, hi;   /* bounds of an int or float; of a string's length (0, 0: unbounded) */
  const char *help;
} kind_param_t;

/* Cross-field checks on a normalised params map (every key present). Returns false with e naming the field. */
typedef bool (*kind_validate_fn)(const msgpack_object *params, proto_err_t *e);

typedef struct kind {
  const char *name;
  kind_policy_t policy;
  kind_validate_fn validate;
  const char *summary;
  const kind_param_t *params;
  size_t n_params;
} kind_t;

/* Submit-time checks that read the files a job names, beyond the existence of every path parameter that lathed
 * checks for every kind: lathed runs them before it queues the job (the parsing in a lathe-worker process of its
 * own). same_tokenizer: two model params whose tokenizers must match (NULLs: none). */
typedef struct kind_files {
  const char *same_tokenizer[2];
} kind_files_t;

/* The file checks of kind k; NULL when it has none. Static storage. */
const kind_files_t *kind_files(const kind_t *k);

/* Number of kinds in the table. */
size_t kind_count(void);

/* The i-th kind (i < kind_count()); static storage. */
const kind_t *kind_at(size_t i);

/* The kind named name (n bytes; a dash matches an underscore: flatten-graph names flatten_graph), or NULL.
 * Static storage. */
const kind_t *kind_find(const char *name, size_t n);

/* The parameter named key of kind k, or NULL. Static storage. */
const kind_param_t *kind_param_find(const kind_t *k, const char *key);

/* "restart", "resume", "fail"; static string. */
const char *kind_policy_str(kind_policy_t p);

/* "int", "float", "bool", "string", "path"; static string. */
const char *kind_type_str(kind_type_t t);

/* Parses command-line text for parameter p and appends the typed value to w. Paths are made absolute against
 * the current folder. Returns false with e naming "params.<key>". */
bool kind_parse_text(const kind_param_t *p, const char *text, mpw_t *w, proto_err_t *e);

/* Checks a client's params map (NULL: none given) against kind k's schema: unknown keys, types, ranges,
 * required keys, then the kind's validator; appends the normalised map (every key, defaults filled in, in
 * schema order) to w. Returns false with e naming the field ("params.steps"); w is then unusable. */
bool kind_params_normalise(const kind_t *k, const msgpack_object *params, mpw_t *w, proto_err_t *e);

#endif
