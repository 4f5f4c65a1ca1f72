/* GGUF reader: a bounds-checked cursor over the header, key/values copied into native arrays, tensor infos
 * validated against the data section. */
#include "engine/model/gguf.h"
#include "engine/ops/qblock.h"

#include <stdlib.h>
#include <string.h>

struct gguf {
  char *path;
  ft_map_t map; /* zero for a borrowed buffer */
  uint32_t version;
  uint64_t alignment, data_off;
  gguf_kv_t *kv;
  char **kv_chars; /* per key/value: the bytes of its strings, or NULL */
  uint64_t n_kv;
  const gguf_kv_t **kv_sorted;
  gguf_tensor_t *t;
  uint64_t n_t;
  const gguf_tensor_t **t_sorted;
};

static const struct {
  const char *name;
  uint32_t size;
} vtype_table[GGUF_VTYPE_COUNT] = {
    [GGUF_U8] = {"u8", 1},         [GGUF_I8] = {"i8", 1},       [GGUF_U16] = {"u16", 2}, [GGUF_I16] = {"i16", 2},
    [GGUF_U32] = {"u32", 4},       [GGUF_I32] = {"i32", 4},     [GGUF_F32] = {"f32", 4}, [GGUF_BOOL] = {"bool", 1},
    [GGUF_STRING] = {"string", 0}, [GGUF_ARRAY] = {"array", 0}, [GGUF_U64] = {"u64", 8}, [GGUF_I64] = {"i64", 8},
    [GGUF_F64] = {"f64", 8},
};

const char *gguf_vtype_str(gguf_vtype_t t) { return (unsigned)t < GGUF_VTYPE_COUNT ? vtype_table[t].name : "?"; }

/* ggml type names, for messages about the types this reader does not map. */
static const char *const ggml_names[] = {
    "F32",   "F16",    "Q4_0", "Q4_1", "Q4_2", "Q4_3",    "Q5_0",   "Q5_1",    "Q8_0",  "Q8_1",   "Q2_K",
    "Q3_K",  "Q4_K",   "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
    "IQ2_S", "IQ4_XS", "I8",   "I16",  "I32",  "I64",     "F64",    "IQ1_M",   "BF16",
};

const char *gguf_ggml_type_str(uint32_t type) {
  return type < sizeof ggml_names / sizeof ggml_names[0] ? ggml_names[type] : "unknown";
}

static bool ggml_to_ft(uint32_t type, ft_dtype_t *out) {
  switch (type) {
  case GGML_TYPE_F32: *out = FT_F32; return true;
  case GGML_TYPE_F16: *out = FT_F16; return true;
  case GGML_TYPE_BF16: *out = FT_BF16; return true;
  default: {
    lt_dtype_t q;
    if (!qblock_from_ggml(type, &q)) return false;
    *out = (ft_dtype_t)(FT_Q8_0 + (int)(q - LT_Q8_0));
    return true;
  }
  }
}

/* ---- bounds-checked cursor ---- */

typedef struct rd {
  const uint8_t *p;
  uint64_t size, off;
  const char *lab;
  lt_err_t *err;
} rd_t;

static uint64_t rd_left(const rd_t *r) { return r->size - r->off; }

static lt_status_t rd_raw(rd_t *r, void *out, uint64_t n, const char *what) {
  if (n > rd_left(r))
    return lt_fail(r->err, LT_E_CORRUPT, "%s: file ends inside %s (offset %llu needs %llu bytes, %llu left)", r->lab,
                   what, (unsigned long long)r->off, (unsigned long long)n, (unsigned long long)rd_left(r));
  memcpy(out, r->p + r->off, n);
  r->off += n;
  return LT_OK;
}

static lt_status_t rd_u32(rd_t *r, uint32_t *v, const char *what) { return rd_raw(r, v, 4, what); }
static lt_status_t rd_u64(rd_t *r, uint64_t *v, const char *what) { return rd_raw(r, v, 8, what); }

/* Reads a string header; *s points into the file (not NUL-terminated). Lengths over max are refused. */
static lt_status_t rd_str(rd_t *r, const uint8_t **s, uint64_t *len, uint64_t max, const char *what) {
  lt_status_t st = rd_u64(r, len, what);
  if (st) return st;
  if (*len > max)
    return lt_fail(r->err, LT_E_LIMIT, "%s: %s is %llu bytes long (at most %llu allowed)", r->lab, what,
                   (unsigned long long)*len, (unsigned long long)max);
  if (*len > rd_left(r))
    return lt_fail(r->err, LT_E_CORRUPT, "%s: %s of %llu bytes runs past the end of the file (%llu bytes left)", r->lab,
                   what, (unsigned long long)*len, (unsigned long long)rd_left(r));
  *s = r->p + r->off;
  r->off += *len;
  return LT_OK;
}

/* Reads a name (key or tensor name): 1..max bytes, no NUL; returns a NUL-terminated copy in *out. */
static lt_status_t rd_name(rd_t *r, char **out, uint64_t max, const char *what) {
  const uint8_t *s;
  uint64_t len;
  lt_status_t st = rd_str(r, &s, &len, max, what);
  if (st) return st;
  if (len == 0 || memchr(s, 0, len))
    return lt_fail(r->err, LT_E_CORRUPT, "%s: %s is empty or holds a NUL byte", r->lab, what);
  *out = malloc(len + 1);
  if (!*out) return lt_fail(r->err, LT_E_NOMEM, "%s: out of memory for %s", r->lab, what);
  memcpy(*out, s, len);
  (*out)[len] = '\0';
  return LT_OK;
}

/* Reads n strings into kv: a first pass checks every length against the bytes left, then one allocation
 * (*chars, caller frees) holds them all. */
static lt_status_t rd_strings(rd_t *r, gguf_kv_t *kv, char **chars_out, const char *what) {
  uint64_t n = kv->n;
  if (n > rd_left(r) / 8)
    return lt_fail(r->err, LT_E_CORRUPT, "%s: %s: %llu strings cannot fit in the %llu bytes left", r->lab, what,
                   (unsigned long long)n, (unsigned long long)rd_left(r));
  uint64_t start = r->off, total = 0;
  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *s;
    uint64_t len;
    lt_status_t st = rd_str(r, &s, &len, UINT64_MAX, what);
    if (st) return st;
    total += len + 1; /* bounded by the file size plus n */
  }
  char **ptrs = malloc((n ? n : 1) * sizeof *ptrs);
  uint64_t *lens = malloc((n ? n : 1) * sizeof *lens);
  char *chars = malloc(total ? total : 1);
  if (!ptrs || !lens || !chars) {
    free(ptrs), free(lens), free(chars);
    return lt_fail(r->err, LT_E_NOMEM, "%s: out of memory for %s (%llu strings)", r->lab, what, (unsigned long long)n);
  }
  r->off = start;
  char *c = chars;
  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *s;
    rd_str(r, &s, &lens[i], UINT64_MAX, what); /* checked by the first pass */
    memcpy(c, s, lens[i]);
    c[lens[i]] = '\0';
    ptrs[i] = c;
    c += lens[i] + 1;
  }
  kv->data = ptrs;
  kv->lens = lens;
  *chars_out = chars;
  return LT_OK;
}

/* Reads the type and value of kv (its key already read); *chars receives the bytes of its strings. */
static lt_status_t rd_value(rd_t *r, gguf_kv_t *kv, char **chars, const char *what) {
  uint32_t type, elem;
  uint64_t n = 1;
  lt_status_t st = rd_u32(r, &type, what);
  if (st) return st;
  if (type >= GGUF_VTYPE_COUNT)
    return lt_fail(r->err, LT_E_CORRUPT, "%s: %s has unknown value type %u", r->lab, what, type);
  elem = type;
  if (type == GGUF_ARRAY) {
    if ((st = rd_u32(r, &elem, what)) || (st = rd_u64(r, &n, what))) return st;
    if (elem == GGUF_ARRAY)
      return lt_fail(r->err, LT_E_UNSUPPORTED, "%s: %s is an array of arrays (not supported)", r->lab, what);
    if (elem >= GGUF_VTYPE_COUNT)
      return lt_fail(r->err, LT_E_CORRUPT, "%s: %s is an array of unknown type %u", r->lab, what, elem);
  }
  kv->type = (gguf_vtype_t)type;
  kv->elem = (gguf_vtype_t)elem;
  kv->n = n;
  if (elem == GGUF_STRING) return rd_strings(r, kv, chars, what);
  uint64_t esz = vtype_table[elem].size;
  if (n > rd_left(r) / esz)
    return lt_fail(r->err, LT_E_CORRUPT, "%s: %s: %llu %s elements run past the end of the file (%llu bytes left)",
                   r->lab, what, (unsigned long long)n, vtype_table[elem].name, (unsigned long long)rd_left(r));
  void *d = malloc(n ? n * esz : 1);
  if (!d) return lt_fail(r->err, LT_E_NOMEM, "%s: out of memory for %s", r->lab, what);
  rd_raw(r, d, n * esz, what); /* fits: checked above */
  kv->data = d;
  if (elem == GGUF_BOOL)
    for (uint64_t i = 0; i < n; i++)
      if (((const uint8_t *)d)[i] > 1)
        return lt_fail(r->err, LT_E_CORRUPT, "%s: %s: bool %llu is %u, not 0 or 1", r->lab, what, (unsigned long long)i,
                       ((const uint8_t *)d)[i]);
  return LT_OK;
}

/* Reads tensor info i into gt (offset and data are resolved later, once the data section is known). */
static lt_status_t rd_tensor_info(rd_t *r, gguf_tensor_t *gt, uint64_t i) {
  char what[96];
  snprintf(what, sizeof what, "the name of tensor #%llu", (unsigned long long)i);
  char *name = NULL;
  lt_status_t st = rd_name(r, &name, GGUF_MAX_NAME, what);
  if (st) return st;
  gt->t.name = name;
  snprintf(what, sizeof what, "the info of tensor %.64s", name);
  uint32_t n_dims, type;
  if ((st = rd_u32(r, &n_dims, what))) return st;
  if (n_dims == 0 || n_dims > FT_MAX_DIMS)
    return lt_fail(r->err, n_dims ? LT_E_LIMIT : LT_E_CORRUPT, "%s: tensor %s has n_dims %u (1 to %d supported)",
                   r->lab, name, n_dims, FT_MAX_DIMS);
  for (uint32_t d = 0; d < FT_MAX_DIMS; d++) gt->ne[d] = 1;
  for (uint32_t d = 0; d < n_dims; d++)
    if ((st = rd_u64(r, &gt->ne[d], what))) return st;
  if ((st = rd_u32(r, &type, what)) || (st = rd_u64(r, &gt->offset, what))) return st;
  gt->ggml_type = type;
  if (!ggml_to_ft(type, &gt->t.dtype))
    return lt_fail(r->err, LT_E_UNSUPPORTED, "%s: tensor %s has type %s (%u); supported: F32, F16, BF16, %s", r->lab,
                   name, gguf_ggml_type_str(type), type, qblock_names());
  gt->t.n_dims = n_dims;
  for (uint32_t d = 0; d < FT_MAX_DIMS; d++) gt->t.shape[d] = d < n_dims ? gt->ne[n_dims - 1 - d] : 1;
  char sb[96];
  if (!ft_shape_bytes(gt->t.dtype, gt->t.shape, n_dims, &gt->t.n_elems, &gt->t.nbytes))
    return lt_fail(r->err, LT_E_CORRUPT, "%s: tensor %s: %s dims %s overflow or break its %d-element blocks", r->lab,
                   name, gguf_ggml_type_str(type), ft_shape_str(sb, sizeof sb, gt->ne, n_dims),
                   ft_block_elems(gt->t.dtype));
  return LT_OK;
}

static int cmp_kv(const void *a, const void *b) {
  return strcmp((*(const gguf_kv_t *const *)a)->key, (*(const gguf_kv_t *const *)b)->key);
}

static int cmp_tname(const void *a, const void *b) {
  return strcmp((*(const gguf_tensor_t *const *)a)->t.name, (*(const gguf_tensor_t *const *)b)->t.name);
}

static int cmp_toff(const void *a, const void *b) {
  const gguf_tensor_t *x = *(const gguf_tensor_t *const *)a, *y = *(const gguf_tensor_t *const *)b;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Places the tensors in the data section: aligned, inside it, not overlapping. */
static lt_status_t place_tensors(gguf_t *g, const uint8_t *base, uint64_t size, lt_err_t *err) {
  uint64_t data_size = size > g->data_off ? size - g->data_off : 0;
  if (g->n_t && g->data_off > size)
    return lt_fail(err, LT_E_CORRUPT, "%s: data section would start at %llu, past the end of the file (%llu bytes)",
                   g->path, (unsigned long long)g->data_off, (unsigned long long)size);
  for (uint64_t i = 0; i < g->n_t; i++) {
    gguf_tensor_t *gt = &g->t[i];
    if (gt->offset % g->alignment)
      return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: offset %llu is not a multiple of the alignment %llu", g->path,
                     gt->t.name, (unsigned long long)gt->offset, (unsigned long long)g->alignment);
    if (gt->offset > data_size || gt->t.nbytes > data_size - gt->offset)
      return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: bytes [%llu, +%llu) run past the data section (%llu bytes)",
                     g->path, gt->t.name, (unsigned long long)gt->offset, (unsigned long long)gt->t.nbytes,
                     (unsigned long long)data_size);
    gt->t.data = base + g->data_off + gt->offset;
  }
  const gguf_tensor_t **by_off = malloc((g->n_t + 1) * sizeof *by_off);
  if (!by_off) return lt_fail(err, LT_E_NOMEM, "%s: out of memory", g->path);
  for (uint64_t i = 0; i < g->n_t; i++) by_off[i] = &g->t[i];
  qsort(by_off, g->n_t, sizeof *by_off, cmp_toff);
  lt_status_t st = LT_OK;
  const gguf_tensor_t *prev = NULL;
  for (uint64_t i = 0; i < g->n_t && !st; i++) {
    if (!by_off[i]->t.nbytes) continue;
    if (prev && prev->offset + prev->t.nbytes > by_off[i]->offset)
      st = lt_fail(err, LT_E_CORRUPT, "%s: tensors %s and %s overlap in the data section", g->path, prev->t.name,
                   by_off[i]->t.name);
    prev = by_off[i];
  }
  free(by_off);
  return st;
}

static lt_status_t parse(gguf_t *g, const uint8_t *base, uint64_t size, lt_err_t *err) {
  rd_t r = {base, size, 0, g->path, err};
  char magic[4];
  uint64_t n_t, n_kv;
  lt_status_t st = rd_raw(&r, magic, 4, "the magic");
  if (st) return st;
  if (memcmp(magic, "GGUF", 4)) return lt_fail(err, LT_E_CORRUPT, "%s: not a GGUF file (bad magic)", g->path);
  if ((st = rd_u32(&r, &g->version, "the version"))) return st;
  if (g->version == 0x02000000u || g->version == 0x03000000u)
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: big-endian GGUF is not supported", g->path);
  if (g->version != 2 && g->version != 3)
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: GGUF version %u is not supported (2 and 3 are)", g->path, g->version);
  if ((st = rd_u64(&r, &n_t, "the tensor count")) || (st = rd_u64(&r, &n_kv, "the key/value count"))) return st;
  /* Each key/value takes at least 13 bytes and each tensor info at least 29: refuse counts the file cannot hold
   * before allocating for them. */
  if (n_kv > GGUF_MAX_KV || n_kv > rd_left(&r) / 13)
    return lt_fail(err, n_kv > GGUF_MAX_KV ? LT_E_LIMIT : LT_E_CORRUPT,
                   "%s: key/value count %llu is impossible for %llu bytes (limit %u)", g->path,
                   (unsigned long long)n_kv, (unsigned long long)rd_left(&r), GGUF_MAX_KV);
  if (n_t > GGUF_MAX_TENSORS || n_t > rd_left(&r) / 29)
    return lt_fail(err, n_t > GGUF_MAX_TENSORS ? LT_E_LIMIT : LT_E_CORRUPT,
                   "%s: tensor count %llu is impossible for %llu bytes (limit %u)", g->path, (unsigned long long)n_t,
                   (unsigned long long)rd_left(&r), GGUF_MAX_TENSORS);
  g->kv = calloc(n_kv + 1, sizeof *g->kv);
  g->kv_chars = calloc(n_kv + 1, sizeof *g->kv_chars);
  g->kv_sorted = malloc((n_kv + 1) * sizeof *g->kv_sorted);
  g->t = calloc(n_t + 1, sizeof *g->t);
  g->t_sorted = malloc((n_t + 1) * sizeof *g->t_sorted);
  if (!g->kv || !g->kv_chars || !g->kv_sorted || !g->t || !g->t_sorted)
    return lt_fail(err, LT_E_NOMEM, "%s: out of memory", g->path);

  for (uint64_t i = 0; i < n_kv; i++) {
    char what[96];
    snprintf(what, sizeof what, "key #%llu", (unsigned long long)i);
    char *key = NULL;
    if ((st = rd_name(&r, &key, GGUF_MAX_KEY, what))) return st;
    g->kv[i].key = key;
    g->n_kv = i + 1;
    snprintf(what, sizeof what, "the value of %.64s", key);
    if ((st = rd_value(&r, &g->kv[i], &g->kv_chars[i], what))) return st;
    g->kv_sorted[i] = &g->kv[i];
  }
  qsort(g->kv_sorted, g->n_kv, sizeof *g->kv_sorted, cmp_kv);
  for (uint64_t i = 1; i < g->n_kv; i++)
    if (!strcmp(g->kv_sorted[i - 1]->key, g->kv_sorted[i]->key))
      return lt_fail(err, LT_E_CORRUPT, "%s: key %s appears twice", g->path, g->kv_sorted[i]->key);

  for (uint64_t i = 0; i < n_t; i++) {
    g->n_t = i + 1;
    if ((st = rd_tensor_info(&r, &g->t[i], i))) return st;
    g->t_sorted[i] = &g->t[i];
  }
  qsort(g->t_sorted, g->n_t, sizeof *g->t_sorted, cmp_tname);
  for (uint64_t i = 1; i < g->n_t; i++)
    if (!strcmp(g->t_sorted[i - 1]->t.name, g->t_sorted[i]->t.name))
      return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s appears twice", g->path, g->t_sorted[i]->t.name);

  g->alignment = GGUF_DEFAULT_ALIGNMENT;
  if (gguf_kv_find(g, "general.alignment")) {
    uint32_t a;
    if ((st = gguf_get_u32(g, "general.alignment", &a, err))) return st;
    if (a == 0 || (a & (a - 1)))
      return lt_fail(err, LT_E_CORRUPT, "%s: general.alignment %u is not a power of two", g->path, a);
    g->alignment = a;
  }
  g->data_off = (r.off + g->alignment - 1) / g->alignment * g->alignment;
  return place_tensors(g, base, size, err);
}

static lt_status_t open_common(gguf_t **out, const char *label, lt_err_t *err) {
  *out = calloc(1, sizeof **out);
  if (*out) (*out)->path = malloc(strlen(label) + 1);
  if (!*out || !(*out)->path) {
    free(*out);
    *out = NULL;
    return lt_fail(err, LT_E_NOMEM, "%s: out of memory", label);
  }
  strcpy((*out)->path, label);
  return LT_OK;
}

lt_status_t gguf_open_buffer(gguf_t **out, const void *data, size_t size, const char *label, lt_err_t *err) {
  lt_status_t st = open_common(out, label, err);
  if (!st) st = parse(*out, data, size, err);
  if (st) gguf_destroy(out);
  return st;
}

lt_status_t gguf_open(gguf_t **out, const char *path, lt_err_t *err) {
  lt_status_t st = open_common(out, path, err);
  if (!st) st = ft_map_open(&(*out)->map, path, err);
  if (!st) st = parse(*out, (*out)->map.data, (*out)->map.size, err);
  if (st) gguf_destroy(out);
  return st;
}

void gguf_destroy(gguf_t **self_p) {
  if (!self_p || !*self_p) return;
  gguf_t *g = *self_p;
  for (uint64_t i = 0; i < g->n_kv; i++) {
    gguf_kv_t *kv = &g->kv[i];
    free(g->kv_chars[i]);
    free((void *)kv->key);
    free((void *)kv->data);
    free((void *)kv->lens);
  }
  for (uint64_t i = 0; i < g->n_t; i++) free((void *)g->t[i].t.name);
  free(g->kv);
  free(g->kv_chars);
  free(g->kv_sorted);
  free(g->t);
  free(g->t_sorted);
  ft_map_close(&g->map);
  free(g->path);
  free(g);
  *self_p = NULL;
}

const char *gguf_path(const gguf_t *g) { return g->path; }
uint32_t gguf_version(const gguf_t *g) { return g->version; }
uint64_t gguf_alignment(const gguf_t *g) { return g->alignment; }
uint64_t gguf_data_offset(const gguf_t *g) { return g->data_off; }
uint64_t gguf_kv_count(const gguf_t *g) { return g->n_kv; }
const gguf_kv_t *gguf_kv_at(const gguf_t *g, uint64_t i) { return i < g->n_kv ? &g->kv[i] : NULL; }
uint64_t gguf_tensor_count(const gguf_t *g) { return g->n_t; }
const gguf_tensor_t *gguf_tensor_at(const gguf_t *g, uint64_t i) { return i < g->n_t ? &g->t[i] : NULL; }

const gguf_kv_t *gguf_kv_find(const gguf_t *g, const char *key) {
  gguf_kv_t k = {.key = key};
  const gguf_kv_t *kp = &k, **hit = bsearch(&kp, g->kv_sorted, g->n_kv, sizeof *g->kv_sorted, cmp_kv);
  return hit ? *hit : NULL;
}

const gguf_tensor_t *gguf_tensor_find(const gguf_t *g, const char *name) {
  gguf_tensor_t k = {.t.name = name};
  const gguf_tensor_t *kp = &k, **hit = bsearch(&kp, g->t_sorted, g->n_t, sizeof *g->t_sorted, cmp_tname);
  return hit ? *hit : NULL;
}

/* Finds a scalar key of any type; missing or array -> error naming the key. */
static lt_status_t scalar(const gguf_t *g, const char *key, const gguf_kv_t **kv, const char *want, lt_err_t *err) {
  *kv = gguf_kv_find(g, key);
  if (!*kv) return lt_fail(err, LT_E_INVALID, "%s: key %s is missing", g->path, key);
  if ((*kv)->type == GGUF_ARRAY)
    return lt_fail(err, LT_E_INVALID, "%s: key %s is an array of %s, expected %s", g->path, key,
                   gguf_vtype_str((*kv)->elem), want);
  return LT_OK;
}

/* An integer of any stored width, as sign and magnitude so no value is lost: value = neg ? -mag : mag. */
typedef struct int_val {
  bool neg;
  uint64_t mag;
} int_val_t;

/* Reads an integer scalar of any width; false when kv holds no integer. */
static bool int_value(const gguf_kv_t *kv, int_val_t *v) {
  const void *d = kv->data;
  int64_t sv;
  switch (kv->type) {
  case GGUF_U8: *v = (int_val_t){false, *(const uint8_t *)d}; return true;
  case GGUF_U16: *v = (int_val_t){false, *(const uint16_t *)d}; return true;
  case GGUF_U32: *v = (int_val_t){false, *(const uint32_t *)d}; return true;
  case GGUF_U64: *v = (int_val_t){false, *(const uint64_t *)d}; return true;
  case GGUF_I8: sv = *(const int8_t *)d; break;
  case GGUF_I16: sv = *(const int16_t *)d; break;
  case GGUF_I32: sv = *(const int32_t *)d; break;
  case GGUF_I64: sv = *(const int64_t *)d; break;
  default: return false;
  }
  *v = (int_val_t){sv < 0, sv < 0 ? 0 - (uint64_t)sv : (uint64_t)sv};
  return true;
}

lt_status_t gguf_get_u32(const gguf_t *g, const char *key, uint32_t *out, lt_err_t *err) {
  const gguf_kv_t *kv;
  lt_status_t st = scalar(g, key, &kv, "an integer", err);
  if (st) return st;
  int_val_t v;
  if (!int_value(kv, &v))
    return lt_fail(err, LT_E_INVALID, "%s: key %s is %s, expected an integer", g->path, key, gguf_vtype_str(kv->type));
  if (v.neg || v.mag > UINT32_MAX)
    return lt_fail(err, LT_E_INVALID, "%s: key %s is out of the u32 range", g->path, key);
  *out = (uint32_t)v.mag;
  return LT_OK;
}

lt_status_t gguf_get_i32(const gguf_t *g, const char *key, int32_t *out, lt_err_t *err) {
  const gguf_kv_t *kv;
  lt_status_t st = scalar(g, key, &kv, "an integer", err);
  if (st) return st;
  int_val_t v;
  if (!int_value(kv, &v))
    return lt_fail(err, LT_E_INVALID, "%s: key %s is %s, expected an integer", g->path, key, gguf_vtype_str(kv->type));
  if (v.mag > (v.neg ? (uint64_t)INT32_MAX + 1 : (uint64_t)INT32_MAX))
    return lt_fail(err, LT_E_INVALID, "%s: key %s is out of the i32 range", g->path, key);
  *out = v.neg ? (int32_t)(0 - (int64_t)v.mag) : (int32_t)v.mag;
  return LT_OK;
}

lt_status_t gguf_get_f32(const gguf_t *g, const char *key, float *out, lt_err_t *err) {
  const gguf_kv_t *kv;
  lt_status_t st = scalar(g, key, &kv, "a float", err);
  if (st) return st;
  if (kv->type == GGUF_F32)
    *out = *(const float *)kv->data;
  else if (kv->type == GGUF_F64)
    *out = (float)*(const double *)kv->data;
  else
    return lt_fail(err, LT_E_INVALID, "%s: key %s is %s, expected f32", g->path, key, gguf_vtype_str(kv->type));
  return LT_OK;
}

lt_status_t gguf_get_bool(const gguf_t *g, const char *key, bool *out, lt_err_t *err) {
  const gguf_kv_t *kv;
  lt_status_t st = scalar(g, key, &kv, "a bool", err);
  if (st) return st;
  if (kv->type != GGUF_BOOL)
    return lt_fail(err, LT_E_INVALID, "%s: key %s is %s, expected bool", g->path, key, gguf_vtype_str(kv->type));
  *out = *(const uint8_t *)kv->data != 0;
  return LT_OK;
}

lt_status_t gguf_get_str(const gguf_t *g, const char *key, const char **out, lt_err_t *err) {
  const gguf_kv_t *kv;
  lt_status_t st = scalar(g, key, &kv, "a string", err);
  if (st) return st;
  if (kv->type != GGUF_STRING)
    return lt_fail(err, LT_E_INVALID, "%s: key %s is %s, expected string", g->path, key, gguf_vtype_str(kv->type));
  *out = ((const char *const *)kv->data)[0];
  return LT_OK;
}

lt_status_t gguf_get_array(const gguf_t *g, const char *key, gguf_vtype_t elem, const void **data, uint64_t *n,
                           lt_err_t *err) {
  const gguf_kv_t *kv = gguf_kv_find(g, key);
  if (!kv) return lt_fail(err, LT_E_INVALID, "%s: key %s is missing", g->path, key);
  if (kv->type != GGUF_ARRAY || kv->elem != elem)
    return lt_fail(err, LT_E_INVALID, "%s: key %s is %s%s, expected an array of %s", g->path, key,
                   kv->type == GGUF_ARRAY ? "an array of " : "", gguf_vtype_str(kv->elem), gguf_vtype_str(elem));
  *data = kv->data;
  *n = kv->n;
  return LT_OK;
}

lt_status_t gguf_get_strings(const gguf_t *g, const char *key, const char *const **strs, const uint64_t **lens,
                             uint64_t *n, lt_err_t *err) {
  const void *data;
  lt_status_t st = gguf_get_array(g, key, GGUF_STRING, &data, n, err);
  if (st) return st;
  *strs = data;
  if (lens) *lens = gguf_kv_find(g, key)->lens;
  return LT_OK;
}

/* Reads an optional token id: absent, 0xFFFFFFFF or -1 give -1; any other value outside the vocabulary fails. */
static lt_status_t token_id(const gguf_t *g, const char *key, uint64_t n_tokens, int64_t *out, lt_err_t *err) {
  *out = -1;
  const gguf_kv_t *kv = gguf_kv_find(g, key);
  if (!kv) return LT_OK;
  int_val_t v;
  if (kv->type == GGUF_ARRAY || !int_value(kv, &v))
    return lt_fail(err, LT_E_CORRUPT, "%s: %s is not an integer", g->path, key);
  if ((v.neg && v.mag == 1) || (!v.neg && v.mag == UINT32_MAX)) return LT_OK;
  if (v.neg || v.mag >= n_tokens)
    return lt_fail(err, LT_E_CORRUPT, "%s: %s is outside the %llu-token vocabulary", g->path, key,
                   (unsigned long long)n_tokens);
  *out = (int64_t)v.mag;
  return LT_OK;
}

lt_status_t gguf_tokenizer(const gguf_t *g, gguf_tokenizer_t *tok, lt_err_t *err) {
  *tok = (gguf_tokenizer_t){.bos_id = -1, .eos_id = -1, .unk_id = -1, .pad_id = -1};
  lt_status_t st = gguf_get_strings(g, "tokenizer.ggml.tokens", &tok->tokens, &tok->token_lens, &tok->n_tokens, err);
  if (st) return st;
  if (gguf_kv_find(g, "tokenizer.ggml.model") && (st = gguf_get_str(g, "tokenizer.ggml.model", &tok->model, err)))
    return st;
  const void *data;
  uint64_t n;
  if (gguf_kv_find(g, "tokenizer.ggml.scores")) {
    if ((st = gguf_get_array(g, "tokenizer.ggml.scores", GGUF_F32, &data, &n, err))) return st;
    if (n != tok->n_tokens)
      return lt_fail(err, LT_E_CORRUPT, "%s: tokenizer.ggml.scores has %llu entries for %llu tokens", g->path,
                     (unsigned long long)n, (unsigned long long)tok->n_tokens);
    tok->scores = data;
  }
  if (gguf_kv_find(g, "tokenizer.ggml.token_type")) {
    if ((st = gguf_get_array(g, "tokenizer.ggml.token_type", GGUF_I32, &data, &n, err))) return st;
    if (n != tok->n_tokens)
      return lt_fail(err, LT_E_CORRUPT, "%s: tokenizer.ggml.token_type has %llu entries for %llu tokens", g->path,
                     (unsigned long long)n, (unsigned long long)tok->n_tokens);
    tok->token_types = data;
  }
  if (gguf_kv_find(g, "tokenizer.ggml.merges") &&
      (st = gguf_get_strings(g, "tokenizer.ggml.merges", &tok->merges, NULL, &tok->n_merges, err)))
    return st;
  if ((st = token_id(g, "tokenizer.ggml.bos_token_id", tok->n_tokens, &tok->bos_id, err)) ||
      (st = token_id(g, "tokenizer.ggml.eos_token_id", tok->n_tokens, &tok->eos_id, err)) ||
      (st = token_id(g, "tokenizer.ggml.unknown_token_id", tok->n_tokens, &tok->unk_id, err)) ||
      (st = token_id(g, "tokenizer.ggml.padding_token_id", tok->n_tokens, &tok->pad_id, err)))
    return st;
  return LT_OK;
}
