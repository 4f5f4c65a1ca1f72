#include "common/proto.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const code_names[P_CODE_COUNT] = {
    [P_OK] = "ok",
    [P_BAD_MSGPACK] = "bad_msgpack",
    [P_TRUNCATED] = "truncated",
    [P_TOO_DEEP] = "too_deep",
    [P_TOO_MANY] = "too_many",
    [P_TOO_LARGE] = "too_large",
    [P_TRAILING] = "trailing_bytes",
    [P_BAD_FRAMES] = "bad_frames",
    [P_BAD_VERSION] = "bad_version",
    [P_NOT_A_MAP] = "not_a_map",
    [P_MISSING_FIELD] = "missing_field",
    [P_BAD_TYPE] = "bad_type",
    [P_BAD_VALUE] = "bad_value",
    [P_UNKNOWN_OP] = "unknown_op",
    [P_UNKNOWN_KIND] = "unknown_kind",
    [P_UNKNOWN_PARAM] = "unknown_param",
    [P_MISSING_PARAM] = "missing_param",
    [P_OUT_OF_RANGE] = "out_of_range",
    [P_QUEUE_FULL] = "queue_full",
    [P_NOT_FOUND] = "not_found",
    [P_BAD_STATE] = "bad_state",
    [P_CONFLICT] = "conflict",
    [P_DENIED] = "denied",
    [P_SHUTTING_DOWN] = "shutting_down",
    [P_INTERNAL] = "internal",
    [P_READ_ONLY] = "read_only",
};

const char *proto_code_str(proto_code_t c) {
  return (unsigned)c < P_CODE_COUNT && code_names[c] ? code_names[c] : "internal";
}

proto_code_t proto_code_parse(const char *s) {
  for (int c = 0; c < P_CODE_COUNT; c++)
    if (strcmp(code_names[c], s) == 0) return (proto_code_t)c;
  return P_INTERNAL;
}

bool proto_fail(proto_err_t *e, proto_code_t code, const char *field, const char *fmt, ...) {
  if (e) {
    e->code = code;
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
  }
  return false;
}

/* ---- the pre-pass ---- */

static uint64_t be(const uint8_t *p, unsigned k) {
  uint64_t v = 0;
  for (unsigned i = 0; i < k; i++) v = v << 8 | p[i];
  return v;
}

bool mp_check(const uint8_t *p, size_t n, unsigned max_depth, proto_err_t *e) {
  if (max_depth > PROTO_MAX_DEPTH) max_depth = PROTO_MAX_DEPTH;
  uint64_t left[PROTO_MAX_DEPTH + 1]; /* elements still expected in each open container; [0] is the top level */
  unsigned depth = 0;
  left[0] = 1;
  size_t i = 0;
  for (;;) {
    if (left[depth] == 0) {
      if (depth == 0) break;
      depth--;
      continue;
    }
    left[depth]--;
    if (i >= n) return proto_fail(e, P_TRUNCATED, "", "message ends at byte %zu inside a value", i);
    uint8_t b = p[i++];
    unsigned hdr = 0; /* bytes of length/value following the type byte */
    int kind = 0;     /* 0 scalar of `hdr` bytes, 1 str/bin with length in hdr bytes, 2 array, 3 map */
    uint64_t len = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
      kind = 0;
    } else if (b <= 0x8f) {
      kind = 3, len = b & 0x0f;
    } else if (b <= 0x9f) {
      kind = 2, len = b & 0x0f;
    } else if (b <= 0xbf) {
      kind = 1, len = b & 0x1f;
    } else {
      switch (b) {
      case 0xc4:
      case 0xd9: kind = 1, hdr = 1; break; /* bin8, str8 */
      case 0xc5:
      case 0xda: kind = 1, hdr = 2; break; /* bin16, str16 */
      case 0xc6:
      case 0xdb: kind = 1, hdr = 4; break; /* bin32, str32 */
      case 0xcc:
      case 0xd0: hdr = 1; break;
      case 0xcd:
      case 0xd1: hdr = 2; break;
      case 0xca:
      case 0xce:
      case 0xd2: hdr = 4; break;
      case 0xcb:
      case 0xcf:
      case 0xd3: hdr = 8; break;
      case 0xdc: kind = 2, hdr = 2; break;
      case 0xdd: kind = 2, hdr = 4; break;
      case 0xde: kind = 3, hdr = 2; break;
      case 0xdf: kind = 3, hdr = 4; break;
      default: /* 0xc1 (never used) and the ext family */
        return proto_fail(e, P_BAD_MSGPACK, "", "type byte 0x%02x at byte %zu is not used by this protocol", b, i - 1);
      }
    }
    if (hdr) {
      if (n - i < hdr) return proto_fail(e, P_TRUNCATED, "", "message ends inside a header at byte %zu", i);
      if (kind) len = be(p + i, hdr);
      i += hdr;
    }
    if (kind == 1) {
      if (len > n - i)
        return proto_fail(e, P_TRUNCATED, "", "a string of %llu bytes at byte %zu runs past the end (%zu left)",
                          (unsigned long long)len, i, n - i);
      i += len;
    } else if (kind >= 2) {
      uint64_t elems = kind == 3 ? 2 * len : len;
      /* Every element takes at least one byte: a larger count cannot be honest, and msgpack-c would allocate
       * for it before finding out. */
      if (elems > n - i)
        return proto_fail(e, P_TOO_MANY, "", "a %s at byte %zu declares %llu elements but only %zu bytes remain",
                          kind == 3 ? "map" : "array", i, (unsigned long long)len, n - i);
      if (depth + 1 > max_depth) return proto_fail(e, P_TOO_DEEP, "", "containers nested deeper than %u", max_depth);
      left[++depth] = elems;
    }
  }
  if (i != n) return proto_fail(e, P_TRAILING, "", "%zu bytes after the message", n - i);
  return true;
}

/* ---- documents ---- */

struct mp_doc {
  msgpack_unpacked u;
  char *bytes; /* msgpack-c's objects point into this copy */
};

mp_doc_t *mp_doc_parse(const void *buf, size_t n, proto_err_t *e) {
  if (n > PROTO_MAX_MSG) {
    proto_fail(e, P_TOO_LARGE, "", "message of %zu bytes exceeds the limit of %u", n, PROTO_MAX_MSG);
    return NULL;
  }
  if (n == 0) {
    proto_fail(e, P_TRUNCATED, "", "empty message");
    return NULL;
  }
  if (!mp_check(buf, n, PROTO_MAX_DEPTH, e)) return NULL;
  mp_doc_t *d = calloc(1, sizeof *d);
  char *copy = malloc(n);
  if (!d || !copy) {
    free(d), free(copy);
    proto_fail(e, P_INTERNAL, "", "out of memory");
    return NULL;
  }
  memcpy(copy, buf, n);
  d->bytes = copy;
  msgpack_unpacked_init(&d->u);
  size_t off = 0;
  if (msgpack_unpack_next(&d->u, copy, n, &off) != MSGPACK_UNPACK_SUCCESS || off != n) {
    mp_doc_destroy(&d);
    proto_fail(e, P_BAD_MSGPACK, "", "msgpack decoder rejected the message");
    return NULL;
  }
  return d;
}

void mp_doc_destroy(mp_doc_t **d) {
  if (!d || !*d) return;
  msgpack_unpacked_destroy(&(*d)->u);
  free((*d)->bytes);
  free(*d);
  *d = NULL;
}

const msgpack_object *mp_doc_root(const mp_doc_t *d) { return &d->u.data; }

const msgpack_object *mp_get(const msgpack_object *map, const char *key) {
  if (!map || map->type != MSGPACK_OBJECT_MAP) return NULL;
  size_t klen = strlen(key);
  for (uint32_t i = 0; i < map->via.map.size; i++) {
    const msgpack_object *k = &map->via.map.ptr[i].key;
    if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen && klen && memcmp(k->via.str.ptr, key, klen) == 0)
      return &map->via.map.ptr[i].val;
  }
  return NULL;
}

bool mp_str_is(const msgpack_object *o, const char *s) {
  size_t n = strlen(s);
  return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && (n == 0 || memcmp(o->via.str.ptr, s, n) == 0);
}

bool mp_str_copy(const msgpack_object *o, char *buf, size_t n) {
  /* msgpack-c gives an empty string a NULL pointer: never hand it to memchr/memcpy. */
  if (!o || o->type != MSGPACK_OBJECT_STR || o->via.str.size >= n ||
      (o->via.str.size && memchr(o->via.str.ptr, 0, o->via.str.size)))
    return false;
  if (o->via.str.size) memcpy(buf, o->via.str.ptr, o->via.str.size);
  buf[o->via.str.size] = '\0';
  return true;
}

bool mp_as_int(const msgpack_object *o, int64_t *v) {
  if (!o) return false; /* an absent key (mp_get's NULL) */
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX) {
    *v = (int64_t)o->via.u64;
    return true;
  }
  if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    *v = o->via.i64;
    return true;
  }
  return false;
}

/* Looks a field up; false with e filled if it is required and absent. *o is NULL when absent. */
static bool field(const msgpack_object *map, const char *prefix, const char *key, bool required,
                  const msgpack_object **o, char *name, size_t name_n, proto_err_t *e) {
  snprintf(name, name_n, "%s%s", prefix, key);
  *o = mp_get(map, key);
  if (!*o && required) return proto_fail(e, P_MISSING_FIELD, name, "%s: required field is missing", name);
  return true;
}

bool mp_field_int(const msgpack_object *map, const char *prefix, const char *key, bool required, int64_t lo, int64_t hi,
                  int64_t *out, proto_err_t *e) {
  const msgpack_object *o;
  char name[96];
  if (!field(map, prefix, key, required, &o, name, sizeof name, e)) return false;
  if (!o) return true;
  int64_t v;
  if (!mp_as_int(o, &v)) return proto_fail(e, P_BAD_TYPE, name, "%s: expected an integer", name);
  if (v < lo || v > hi)
    return proto_fail(e, P_OUT_OF_RANGE, name, "%s: %lld is outside [%lld, %lld]", name, (long long)v, (long long)lo,
                      (long long)hi);
  *out = v;
  return true;
}

bool mp_field_bool(const msgpack_object *map, const char *prefix, const char *key, bool required, bool *out,
                   proto_err_t *e) {
  const msgpack_object *o;
  char name[96];
  if (!field(map, prefix, key, required, &o, name, sizeof name, e)) return false;
  if (!o) return true;
  if (o->type != MSGPACK_OBJECT_BOOLEAN) return proto_fail(e, P_BAD_TYPE, name, "%s: expected a boolean", name);
  *out = o->via.boolean;
  return true;
}

bool mp_field_str(const msgpack_object *map, const char *prefix, const char *key, bool required, char *buf, size_t n,
                  proto_err_t *e) {
  const msgpack_object *o;
  char name[96];
  if (!field(map, prefix, key, required, &o, name, sizeof name, e)) return false;
  if (!o) return true;
  if (o->type != MSGPACK_OBJECT_STR) return proto_fail(e, P_BAD_TYPE, name, "%s: expected a string", name);
  if (!mp_str_copy(o, buf, n))
    return proto_fail(e, P_BAD_VALUE, name, "%s: string longer than %zu bytes or holding a NUL", name, n - 1);
  return true;
}

bool mp_field_map(const msgpack_object *map, const char *prefix, const char *key, bool required,
                  const msgpack_object **out, proto_err_t *e) {
  const msgpack_object *o;
  char name[96];
  if (!field(map, prefix, key, required, &o, name, sizeof name, e)) return false;
  if (!o) return true;
  if (o->type != MSGPACK_OBJECT_MAP) return proto_fail(e, P_BAD_TYPE, name, "%s: expected a map", name);
  *out = o;
  return true;
}

/* ---- the writer ---- */

void mpw_init(mpw_t *w) {
  memset(w, 0, sizeof *w);
  msgpack_sbuffer_init(&w->sb);
  msgpack_packer_init(&w->pk, &w->sb, msgpack_sbuffer_write);
}

void mpw_free(mpw_t *w) {
  msgpack_sbuffer_destroy(&w->sb);
  memset(&w->sb, 0, sizeof w->sb);
}

char *mpw_take(mpw_t *w, size_t *n) {
  assert(w->depth == 0);
  *n = w->sb.size;
  return msgpack_sbuffer_release(&w->sb);
}

static void item(mpw_t *w) {
  if (w->depth) w->count[w->depth - 1]++;
}

static void open_container(mpw_t *w, bool is_map) {
  assert(w->depth < PROTO_MAX_DEPTH);
  item(w);
  static const uint8_t placeholder[5] = {0};
  w->at[w->depth] = w->sb.size;
  w->count[w->depth] = 0;
  w->is_map[w->depth] = is_map;
  w->depth++;
  msgpack_sbuffer_write(&w->sb, (const char *)placeholder, sizeof placeholder);
}

void mpw_map(mpw_t *w) { open_container(w, true); }
void mpw_array(mpw_t *w) { open_container(w, false); }

void mpw_end(mpw_t *w) {
  assert(w->depth > 0);
  w->depth--;
  uint32_t n = w->count[w->depth];
  bool is_map = w->is_map[w->depth];
  assert(!is_map || n % 2 == 0);
  if (is_map) n /= 2;
  /* map32 / array32 header: always valid msgpack, whatever the final count. */
  uint8_t *h = (uint8_t *)w->sb.data + w->at[w->depth];
  h[0] = is_map ? 0xdf : 0xdd;
  h[1] = (uint8_t)(n >> 24), h[2] = (uint8_t)(n >> 16), h[3] = (uint8_t)(n >> 8), h[4] = (uint8_t)n;
}

void mpw_strn(mpw_t *w, const char *s, size_t n) {
  item(w);
  msgpack_pack_str(&w->pk, n);
  if (n) msgpack_pack_str_body(&w->pk, s, n);
}

void mpw_str(mpw_t *w, const char *s) { mpw_strn(w, s, strlen(s)); }

void mpw_int(mpw_t *w, int64_t v) {
  item(w);
  msgpack_pack_int64(&w->pk, v);
}

void mpw_double(mpw_t *w, double v) {
  item(w);
  msgpack_pack_double(&w->pk, v);
}

void mpw_bool(mpw_t *w, bool v) {
  item(w);
  if (v)
    msgpack_pack_true(&w->pk);
  else
    msgpack_pack_false(&w->pk);
}

void mpw_nil(mpw_t *w) {
  item(w);
  msgpack_pack_nil(&w->pk);
}

void mpw_raw(mpw_t *w, const void *bytes, size_t n) {
  item(w);
  msgpack_sbuffer_write(&w->sb, bytes, n);
}

void mpw_obj(mpw_t *w, const msgpack_object *o) {
  /* Walked here rather than with msgpack_pack_object(): msgpack-c gives empty strings a NULL pointer and its
   * inline packer then passes NULL to memcpy. Nesting is bounded by the pre-pass's depth limit. */
  switch (o->type) {
  case MSGPACK_OBJECT_NIL: mpw_nil(w); break;
  case MSGPACK_OBJECT_BOOLEAN: mpw_bool(w, o->via.boolean); break;
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    item(w);
    msgpack_pack_uint64(&w->pk, o->via.u64);
    break;
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: mpw_int(w, o->via.i64); break;
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: mpw_double(w, o->via.f64); break;
  case MSGPACK_OBJECT_STR: mpw_strn(w, o->via.str.size ? o->via.str.ptr : "", o->via.str.size); break;
  case MSGPACK_OBJECT_BIN:
    item(w);
    msgpack_pack_bin(&w->pk, o->via.bin.size);
    if (o->via.bin.size) msgpack_pack_bin_body(&w->pk, o->via.bin.ptr, o->via.bin.size);
    break;
  case MSGPACK_OBJECT_ARRAY:
    mpw_array(w);
    for (uint32_t i = 0; i < o->via.array.size; i++) mpw_obj(w, &o->via.array.ptr[i]);
    mpw_end(w);
    break;
  case MSGPACK_OBJECT_MAP:
    mpw_map(w);
    for (uint32_t i = 0; i < o->via.map.size; i++) {
      mpw_obj(w, &o->via.map.ptr[i].key);
      mpw_obj(w, &o->via.map.ptr[i].val);
    }
    mpw_end(w);
    break;
  default: mpw_nil(w); break; /* ext never passes the pre-pass */
  }
}

void mpw_kstr(mpw_t *w, const char *k, const char *v) { mpw_str(w, k), mpw_str(w, v); }
void mpw_kint(mpw_t *w, const char *k, int64_t v) { mpw_str(w, k), mpw_int(w, v); }
void mpw_kbool(mpw_t *w, const char *k, bool v) { mpw_str(w, k), mpw_bool(w, v); }
void mpw_kdouble(mpw_t *w, const char *k, double v) { mpw_str(w, k), mpw_double(w, v); }
void mpw_knil(mpw_t *w, const char *k) { mpw_str(w, k), mpw_nil(w); }

void proto_write_error(mpw_t *w, uint64_t rid, const proto_err_t *e) {
  mpw_map(w);
  mpw_kint(w, "v", PROTO_VERSION);
  mpw_kint(w, "rid", (int64_t)rid);
  mpw_kbool(w, "ok", false);
  mpw_kstr(w, "code", proto_code_str(e->code));
  mpw_kstr(w, "field", e->field);
  mpw_kstr(w, "msg", e->msg);
  mpw_end(w);
}
