/* The wire protocol: limits, stable error codes, the hostile-input pre-pass, decoded documents with field
 * accessors that name the offending field, and a msgpack writer. Described in docs/protocol.md. */
#ifndef LATHE_PROTO_H
#define LATHE_PROTO_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1
/* Deepest container nesting accepted (a request is a map holding a params map holding scalars: depth 2). */
#define PROTO_MAX_DEPTH 8
/* Largest message answered: anything bigger gets a `too_large` error reply without being decoded. */
/* The release of the daemon, the CLI and the worker (one number for all three). */
#define LATHE_VERSION "0.1.0"

#define PROTO_MAX_MSG (1u << 20)
/* ZMQ_MAXMSGSIZE: a peer sending more than this is disconnected by libzmq before the bytes are buffered. */
#define PROTO_HARD_MAX_MSG (16 << 20)
/* Longest string field (kind names, submission ids, reasons); params strings have their own schema limits. */
#define PROTO_MAX_STR 4096

/* Stable error codes carried as strings in error replies (never renumber: append). */
typedef enum proto_code {
  P_OK = 0,
  P_BAD_MSGPACK,   /* not msgpack, or a type the protocol does not use (ext) */
  P_TRUNCATED,     /* the bytes end inside a value */
  P_TOO_DEEP,      /* containers nested deeper than PROTO_MAX_DEPTH */
  P_TOO_MANY,      /* a container declares more elements than bytes remain */
  P_TOO_LARGE,     /* the message exceeds PROTO_MAX_MSG */
  P_TRAILING,      /* bytes after the one top-level value */
  P_BAD_FRAMES,    /* a message of more than one frame */
  P_BAD_VERSION,   /* missing or unsupported protocol version */
  P_NOT_A_MAP,     /* the top-level value is not a map */
  P_MISSING_FIELD, /* a required field is absent */
  P_BAD_TYPE,      /* a field has the wrong type */
  P_BAD_VALUE,     /* a field has a value outside its domain */
  P_UNKNOWN_OP,
  P_UNKNOWN_KIND,
  P_UNKNOWN_PARAM,
  P_MISSING_PARAM,
  P_OUT_OF_RANGE,
  P_QUEUE_FULL,
  P_NOT_FOUND,
  P_BAD_STATE, /* the job is not in a state that allows the operation */
  P_CONFLICT,  /* a submission id reused with a different job */
  P_DENIED,
  P_SHUTTING_DOWN,
  P_INTERNAL,  /* the daemon failed (store I/O); the request may be retried */
  P_READ_ONLY, /* the store cannot be written for now: reads work, writes are refused until it recovers */
  P_CODE_COUNT
} proto_code_t;

/* Returns the code's stable lower-case name ("queue_full"); static string. */
const char *proto_code_str(proto_code_t c);

/* Returns the code named s, or P_INTERNAL for an unknown name. */
proto_code_t proto_code_parse(const char *s);

/* One rejection: code, the field it concerns ("" when none; "params.steps" for nested ones) and a message. */
typedef struct proto_err {
  proto_code_t code;
  char field[96];
  char msg[320];
} proto_err_t;

/* Fills e (if non-NULL) and returns false, so validators can `return proto_fail(...)`. */
bool proto_fail(proto_err_t *e, proto_code_t code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- decoding ---- */

/* The pre-pass run before msgpack-c sees any byte: walks the encoding without allocating and rejects
 * truncated values, containers declaring more elements than bytes remain (msgpack-c would reserve memory for
 * the declared count), nesting deeper than max_depth, ext types and trailing bytes. Returns true if sound. */
bool mp_check(const uint8_t *p, size_t n, unsigned max_depth, proto_err_t *e);

typedef struct mp_doc mp_doc_t;

/* Checks (mp_check with PROTO_MAX_DEPTH, size against PROTO_MAX_MSG) and decodes one message. Returns NULL
 * with e filled on rejection. The document does not keep buf. Caller owns; free with mp_doc_destroy(). */
mp_doc_t *mp_doc_parse(const void *buf, size_t n, proto_err_t *e);

/* Frees the document and sets *d to NULL; NULL-safe. */
void mp_doc_destroy(mp_doc_t **d);

/* The decoded top-level value; owned by the document. */
const msgpack_object *mp_doc_root(const mp_doc_t *d);

/* Returns the value under key in a map (NULL if absent or not a map); owned by the map's document. */
const msgpack_object *mp_get(const msgpack_object *map, const char *key);

/* True if o is a string equal to s. */
bool mp_str_is(const msgpack_object *o, const char *s);

/* Copies a string value into buf (NUL-terminated). False if o is not a string, holds a NUL or does not fit. */
bool mp_str_copy(const msgpack_object *o, char *buf, size_t n);

/* Reads an integer value (positive or negative msgpack int) into *v. False if o is NULL or not an integer. */
bool mp_as_int(const msgpack_object *o, int64_t *v);

/* Field readers for request maps. Each returns true when the field is valid, or absent and not required
 * (leaving *out untouched); otherwise false with e naming `prefix key` (prefix may be "" or "params."). */
bool mp_field_int(const msgpack_object *map, const char *prefix, const char *key, bool required, int64_t lo, int64_t hi,
                  int64_t *out, proto_err_t *e);
bool mp_field_bool(const msgpack_object *map, const char *prefix, const char *key, bool required, bool *out,
                   proto_err_t *e);
/* String fields are copied into buf of size n (longer strings are rejected as bad_value). */
bool mp_field_str(const msgpack_object *map, const char *prefix, const char *key, bool required, char *buf, size_t n,
                  proto_err_t *e);
/* Map fields: *out points into the document. */
bool mp_field_map(const msgpack_object *map, const char *prefix, const char *key, bool required,
                  const msgpack_object **out, proto_err_t *e);

/* ---- encoding ---- */

/* A msgpack writer whose containers need no element count up front: map/array headers are written as 32-bit
 * headers and patched when the container ends. Nesting is limited to PROTO_MAX_DEPTH. */
typedef struct mpw {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  unsigned depth;
  size_t at[PROTO_MAX_DEPTH];
  uint32_t count[PROTO_MAX_DEPTH];
  bool is_map[PROTO_MAX_DEPTH];
} mpw_t;

/* Starts an empty writer (the caller owns the struct; free its buffer with mpw_free()). */
void mpw_init(mpw_t *w);
/* Frees the writer's buffer; the struct may be reused after mpw_init(). */
void mpw_free(mpw_t *w);
/* Takes the encoded bytes: caller owns the returned buffer (free()); the writer is left empty. */
char *mpw_take(mpw_t *w, size_t *n);

void mpw_map(mpw_t *w);   /* opens a map; add key, value, key, value... then mpw_end() */
void mpw_array(mpw_t *w); /* opens an array; then mpw_end() */
void mpw_end(mpw_t *w);   /* closes the innermost container */
void mpw_str(mpw_t *w, const char *s);
void mpw_strn(mpw_t *w, const char *s, size_t n);
void mpw_int(mpw_t *w, int64_t v);
void mpw_double(mpw_t *w, double v);
void mpw_bool(mpw_t *w, bool v);
void mpw_nil(mpw_t *w);
/* Appends one already-encoded msgpack value (bytes from mp_check-ed storage or another writer). */
void mpw_raw(mpw_t *w, const void *bytes, size_t n);
/* Appends a decoded value. */
void mpw_obj(mpw_t *w, const msgpack_object *o);

/* key/value shorthands for maps */
void mpw_kstr(mpw_t *w, const char *k, const char *v);
void mpw_kint(mpw_t *w, const char *k, int64_t v);
void mpw_kbool(mpw_t *w, const char *k, bool v);
void mpw_kdouble(mpw_t *w, const char *k, double v);
void mpw_knil(mpw_t *w, const char *k);

/* Writes {"v":1,"rid":rid,"ok":false,"code":...,"field":...,"msg":...}: the one shape every rejection has. */
void proto_write_error(mpw_t *w, uint64_t rid, const proto_err_t *e);

#endif
