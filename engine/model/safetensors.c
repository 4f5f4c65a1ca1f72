/* safetensors: header validation, sharded sets, lookup by name, and the writer. */
#include "engine/model/safetensors.h"
#include "engine/text/jsonl.h"

#include "common/fsout.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct st_shard {
  char *path;     /* file path or buffer label */
  ft_map_t map;   /* zero for a borrowed buffer */
  json_t *header; /* parsed header; owns the tensor names */
  json_t *meta;   /* __metadata__ inside header, or NULL */
} st_shard_t;

struct st_file {
  st_shard_t *shards;
  uint32_t n_shards;
  ft_tensor_t *t; /* by shard, then offset */
  uint32_t n;
  const ft_tensor_t **by_name; /* sorted by name */
};

/* The dtypes a safetensors file may hold here (Q8_0 is GGUF-only). */
static const ft_dtype_t st_dtypes[] = {FT_F32, FT_F16, FT_BF16, FT_I8, FT_U8, FT_I32};
#define ST_DTYPE_LIST "F32, F16, BF16, I8, U8, I32"

static bool st_dtype_ok(ft_dtype_t t) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (st_dtypes[i] == t) return true;
  return false;
}

static bool json_u64(const json_t *j, uint64_t *out) {
  if (!json_is_integer(j) || json_integer_value(j) < 0) return false;
  *out = (uint64_t)json_integer_value(j);
  return true;
}

/* Checks one header entry and fills t; area is the data area of the shard. */
static lt_status_t parse_entry(ft_tensor_t *t, const char *name, const json_t *v, const uint8_t *area,
                               uint64_t area_size, uint32_t shard, const char *lab, lt_err_t *err) {
  if (!*name) return lt_fail(err, LT_E_CORRUPT, "%s: a tensor has an empty name", lab);
  if (!json_is_object(v)) return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: entry is not an object", lab, name);
  const json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
               *jo = json_object_get(v, "data_offsets");
  if (!json_is_string(jd)) return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: dtype missing or not a string", lab, name);
  int dt = -1;
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (!strcmp(json_string_value(jd), ft_dtype_str(st_dtypes[i]))) dt = (int)st_dtypes[i];
  if (dt < 0)
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: tensor %s: unsupported dtype \"%.40s\" (supported: " ST_DTYPE_LIST ")",
                   lab, name, json_string_value(jd));
  if (!json_is_array(js)) return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: shape missing or not an array", lab, name);
  size_t nd = json_array_size(js);
  if (nd > FT_MAX_DIMS)
    return lt_fail(err, LT_E_LIMIT, "%s: tensor %s: %zu dims, at most %d supported", lab, name, nd, FT_MAX_DIMS);
  *t = (ft_tensor_t){.name = name, .dtype = (ft_dtype_t)dt, .n_dims = (uint32_t)nd, .shard = shard};
  for (size_t i = 0; i < FT_MAX_DIMS; i++) t->shape[i] = 1;
  for (size_t i = 0; i < nd; i++)
    if (!json_u64(json_array_get(js, i), &t->shape[i]))
      return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: shape entry %zu is not a non-negative integer", lab, name, i);
  uint64_t begin, end;
  if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_u64(json_array_get(jo, 0), &begin) ||
      !json_u64(json_array_get(jo, 1), &end))
    return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: data_offsets is not a pair of non-negative integers", lab, name);
  if (begin > end)
    return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: data_offsets [%llu, %llu] begins after it ends", lab, name,
                   (unsigned long long)begin, (unsigned long long)end);
  if (end > area_size)
    return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: data_offsets end %llu is past the data area (%llu bytes)", lab,
                   name, (unsigned long long)end, (unsigned long long)area_size);
  char sb[96];
  if (!ft_shape_bytes(t->dtype, t->shape, t->n_dims, &t->n_elems, &t->nbytes))
    return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: shape %s overflows", lab, name,
                   ft_shape_str(sb, sizeof sb, t->shape, t->n_dims));
  if (t->nbytes != end - begin)
    return lt_fail(err, LT_E_CORRUPT, "%s: tensor %s: shape %s of %s needs %llu bytes but data_offsets span %llu", lab,
                   name, ft_shape_str(sb, sizeof sb, t->shape, t->n_dims), ft_dtype_str(t->dtype),
                   (unsigned long long)t->nbytes, (unsigned long long)(end - begin));
  t->data = area + begin;
  return LT_OK;
}

static int cmp_offset(const void *a, const void *b) {
  const ft_tensor_t *x = a, *y = b;
  if (x->data != y->data) return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
  return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Parses the image of shard si (data, size) and appends its tensors to f->t. */
static lt_status_t parse_shard(st_file_t *f, uint32_t si, const uint8_t *data, size_t size, lt_err_t *err) {
  st_shard_t *sh = &f->shards[si];
  const char *lab = sh->path;
  if (size < 8)
    return lt_fail(err, LT_E_CORRUPT, "%s: %zu bytes is too small for a safetensors file (no 8-byte header length)",
                   lab, size);
  uint64_t hlen;
  memcpy(&hlen, data, 8);
  if (hlen > ST_MAX_HEADER)
    return lt_fail(err, LT_E_LIMIT, "%s: header length %llu is over the %u-byte limit", lab, (unsigned long long)hlen,
                   ST_MAX_HEADER);
  if (hlen > size - 8)
    return lt_fail(err, LT_E_CORRUPT, "%s: header length %llu runs past the end of the file (%zu bytes)", lab,
                   (unsigned long long)hlen, size);
  json_error_t je;
  char jb[160];
  sh->header = json_loadb((const char *)data + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
  if (!sh->header)
    return lt_fail(err, LT_E_CORRUPT, "%s: header is not valid JSON (at byte %d): %s", lab, je.position,
                   jsonl_error_brief(&je, jb, sizeof jb));
  if (!json_is_object(sh->header)) return lt_fail(err, LT_E_CORRUPT, "%s: header is not a JSON object", lab);

  const uint8_t *area = data + 8 + hlen;
  uint64_t area_size = size - 8 - hlen;
  size_t count = json_object_size(sh->header);
  if (count > UINT32_MAX - f->n) return lt_fail(err, LT_E_LIMIT, "%s: too many tensors", lab);
  ft_tensor_t *grown = realloc(f->t, (f->n + count + 1) * sizeof *grown);
  if (!grown) return lt_fail(err, LT_E_NOMEM, "%s: out of memory for %zu tensor entries", lab, count);
  f->t = grown;
  uint32_t first = f->n;
  const char *key;
  json_t *v;
  json_object_foreach(sh->header, key, v) {
    if (!strcmp(key, "__metadata__")) {
      if (!json_is_object(v)) return lt_fail(err, LT_E_CORRUPT, "%s: __metadata__ is not an object", lab);
      const char *mk;
      json_t *mv;
      json_object_foreach(v, mk, mv) {
        if (!json_is_string(mv))
          return lt_fail(err, LT_E_CORRUPT, "%s: __metadata__ value of %.80s is not a string", lab, mk);
      }
      sh->meta = v;
      continue;
    }
    lt_status_t s = parse_entry(&f->t[f->n], key, v, area, area_size, si, lab, err);
    if (s) return s;
    f->n++;
  }

  /* Tensors may not share bytes; empty tensors hold none and may sit anywhere in the area. */
  qsort(f->t + first, f->n - first, sizeof *f->t, cmp_offset);
  const ft_tensor_t *prev = NULL;
  for (uint32_t i = first; i < f->n; i++) {
    const ft_tensor_t *t = &f->t[i];
    if (!t->nbytes) continue;
    if (prev && (const uint8_t *)prev->data + prev->nbytes > (const uint8_t *)t->data)
      return lt_fail(err, LT_E_CORRUPT, "%s: tensors %s [%llu, %llu) and %s [%llu, %llu) overlap", lab, prev->name,
                     (unsigned long long)((const uint8_t *)prev->data - area),
                     (unsigned long long)((const uint8_t *)prev->data - area + prev->nbytes), t->name,
                     (unsigned long long)((const uint8_t *)t->data - area),
                     (unsigned long long)((const uint8_t *)t->data - area + t->nbytes));
    prev = t;
  }
  return LT_OK;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp((*(const ft_tensor_t *const *)a)->name, (*(const ft_tensor_t *const *)b)->name);
}

/* Builds the sorted name index; a name held by two shards is an error. */
static lt_status_t build_index(st_file_t *f, lt_err_t *err) {
  f->by_name = malloc(((size_t)f->n + 1) * sizeof *f->by_name);
  if (!f->by_name) return lt_fail(err, LT_E_NOMEM, "%s: out of memory for the name index", f->shards[0].path);
  for (uint32_t i = 0; i < f->n; i++) f->by_name[i] = &f->t[i];
  qsort(f->by_name, f->n, sizeof *f->by_name, cmp_name);
  for (uint32_t i = 1; i < f->n; i++)
    if (!strcmp(f->by_name[i - 1]->name, f->by_name[i]->name))
      return lt_fail(err, LT_E_CORRUPT, "tensor %s is in both %s and %s", f->by_name[i]->name,
                     f->shards[f->by_name[i - 1]->shard].path, f->shards[f->by_name[i]->shard].path);
  return LT_OK;
}

static lt_status_t alloc_file(st_file_t **out, uint32_t n_shards, lt_err_t *err) {
  *out = calloc(1, sizeof **out);
  if (*out) (*out)->shards = calloc(n_shards, sizeof *(*out)->shards);
  if (!*out || !(*out)->shards) {
    free(*out);
    *out = NULL;
    return lt_fail(err, LT_E_NOMEM, "out of memory opening safetensors");
  }
  (*out)->n_shards = n_shards;
  return LT_OK;
}

static char *str_dup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* Returns dir + "/" + file; caller owns (free). */
static char *path_join(const char *dir, const char *file) {
  size_t a = strlen(dir), b = strlen(file);
  char *p = malloc(a + b + 2);
  if (!p) return NULL;
  memcpy(p, dir, a);
  p[a] = '/';
  memcpy(p + a + 1, file, b + 1);
  return p;
}

/* Returns the folder part of path ("." when there is none); caller owns (free). */
static char *path_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return str_dup(".");
  size_t n = slash == path ? 1 : (size_t)(slash - path);
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, path, n);
    d[n] = '\0';
  }
  return d;
}

/* Maps shard si from path and parses it. */
static lt_status_t open_shard(st_file_t *f, uint32_t si, const char *path, lt_err_t *err) {
  st_shard_t *sh = &f->shards[si];
  sh->path = str_dup(path);
  if (!sh->path) return lt_fail(err, LT_E_NOMEM, "%s: out of memory", path);
  lt_status_t s = ft_map_open(&sh->map, path, err);
  return s ? s : parse_shard(f, si, sh->map.data, sh->map.size, err);
}

lt_status_t st_open_buffer(st_file_t **out, const void *data, size_t size, const char *label, lt_err_t *err) {
  lt_status_t s = alloc_file(out, 1, err);
  if (s) return s;
  st_file_t *f = *out;
  f->shards[0].path = str_dup(label);
  if (!f->shards[0].path) s = lt_fail(err, LT_E_NOMEM, "%s: out of memory", label);
  if (!s) s = parse_shard(f, 0, data, size, err);
  if (!s) s = build_index(f, err);
  if (s) st_destroy(out);
  return s;
}

/* A shard named by an index must sit next to it: a plain file name, no folders. */
static bool shard_name_ok(const char *name) {
  return *name && !strchr(name, '/') && strcmp(name, ".") && strcmp(name, "..");
}

static lt_status_t open_index(st_file_t **out, const char *path, lt_err_t *err) {
  json_t *idx = NULL;
  const char **files = NULL;
  char *dir = NULL;
  lt_status_t s = ft_json_load(&idx, path, ST_MAX_INDEX, err);
  if (s) return s;
  const json_t *wm = json_object_get(idx, "weight_map");
  size_t n_map = json_object_size(wm);
  if (!json_is_object(wm) || n_map == 0) {
    s = lt_fail(err, LT_E_CORRUPT, "%s: weight_map missing, empty or not an object", path);
    goto done;
  }
  files = malloc(n_map * sizeof *files);
  dir = path_dir(path);
  if (!files || !dir) {
    s = lt_fail(err, LT_E_NOMEM, "%s: out of memory", path);
    goto done;
  }
  uint32_t n_files = 0;
  const char *name;
  const json_t *v;
  json_object_foreach((json_t *)wm, name, v) {
    if (!json_is_string(v) || !shard_name_ok(json_string_value(v))) {
      s = lt_fail(err, LT_E_CORRUPT, "%s: weight_map entry %s is not a shard file name next to the index", path, name);
      goto done;
    }
    uint32_t k = 0;
    while (k < n_files && strcmp(files[k], json_string_value(v))) k++;
    if (k == n_files) files[n_files++] = json_string_value(v);
  }
  if ((s = alloc_file(out, n_files, err))) goto done;
  for (uint32_t i = 0; i < n_files && !s; i++) {
    char *sp = path_join(dir, files[i]);
    s = sp ? open_shard(*out, i, sp, err) : lt_fail(err, LT_E_NOMEM, "%s: out of memory", path);
    free(sp);
  }
  if (!s) s = build_index(*out, err);
  json_object_foreach((json_t *)wm, name, v) {
    if (s) break;
    const ft_tensor_t *t = st_find(*out, name);
    if (!t)
      s = lt_fail(err, LT_E_CORRUPT, "%s: weight_map puts %s in %s, which does not hold it", path, name,
                  json_string_value(v));
    else if (strcmp(files[t->shard], json_string_value(v)))
      s = lt_fail(err, LT_E_CORRUPT, "%s: weight_map puts %s in %s but it is in %s", path, name, json_string_value(v),
                  files[t->shard]);
  }
  for (uint32_t i = 0; !s && i < (*out)->n; i++)
    if (!json_object_get(wm, (*out)->t[i].name))
      s = lt_fail(err, LT_E_CORRUPT, "%s: shard %s holds %s, which weight_map does not list", path,
                  files[(*out)->t[i].shard], (*out)->t[i].name);
done:
  if (s) st_destroy(out);
  free(files);
  free(dir);
  json_decref(idx);
  return s;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && !strcmp(s + a - b, suffix);
}

lt_status_t st_open(st_file_t **out, const char *path, lt_err_t *err) {
  *out = NULL;
  struct stat st;
  if (stat(path, &st) != 0) return lt_fail(err, LT_E_IO, "%s: cannot stat: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode)) {
    char *index = path_join(path, "model.safetensors.index.json"), *single = path_join(path, "model.safetensors");
    lt_status_t s;
    if (!index || !single)
      s = lt_fail(err, LT_E_NOMEM, "%s: out of memory", path);
    else if (access(index, F_OK) == 0)
      s = open_index(out, index, err);
    else if (access(single, F_OK) == 0)
      s = st_open(out, single, err);
    else
      s = lt_fail(err, LT_E_IO, "%s: holds neither model.safetensors.index.json nor model.safetensors", path);
    free(index);
    free(single);
    return s;
  }
  if (ends_with(path, ".json")) return open_index(out, path, err);
  lt_status_t s = alloc_file(out, 1, err);
  if (!s) s = open_shard(*out, 0, path, err);
  if (!s) s = build_index(*out, err);
  if (s) st_destroy(out);
  return s;
}

void st_destroy(st_file_t **self_p) {
  if (!self_p || !*self_p) return;
  st_file_t *f = *self_p;
  for (uint32_t i = 0; i < f->n_shards; i++) {
    free(f->shards[i].path);
    ft_map_close(&f->shards[i].map);
    json_decref(f->shards[i].header);
  }
  free(f->shards);
  free(f->t);
  free(f->by_name);
  free(f);
  *self_p = NULL;
}

uint32_t st_count(const st_file_t *f) { return f->n; }

const ft_tensor_t *st_tensor(const st_file_t *f, uint32_t i) { return i < f->n ? &f->t[i] : NULL; }

const ft_tensor_t *st_find(const st_file_t *f, const char *name) {
  ft_tensor_t key = {.name = name};
  const ft_tensor_t *kp = &key;
  const ft_tensor_t **hit = bsearch(&kp, f->by_name, f->n, sizeof *f->by_name, cmp_name);
  return hit ? *hit : NULL;
}

uint32_t st_shard_count(const st_file_t *f) { return f->n_shards; }

const char *st_shard_path(const st_file_t *f, uint32_t shard) {
  return shard < f->n_shards ? f->shards[shard].path : NULL;
}

const char *st_metadata(const st_file_t *f, const char *key) {
  for (uint32_t i = 0; i < f->n_shards; i++) {
    const json_t *v = json_object_get(f->shards[i].meta, key);
    if (v) return json_string_value(v);
  }
  return NULL;
}

/* ---- writer ---- */

/* Writes size bytes from each of the n pieces to path: a new file renamed into place (util_out). */
static lt_status_t write_atomic(const char *path, const void *const *piece, const uint64_t *size, uint32_t n,
                                lt_err_t *err) {
  util_out_t o;
  if (util_out_open(&o, path, 0644, err) != LT_OK) return LT_E_IO;
  for (uint32_t i = 0; i < n; i++)
    if (size[i] && fwrite(piece[i], 1, size[i], o.f) != size[i]) {
      lt_fail(err, LT_E_IO, "%s: write failed: %s", path, strerror(errno));
      util_out_abort(&o);
      return LT_E_IO;
    }
  return util_out_commit(&o, err);
}

/* Adds the n_meta (key, value) pairs to obj as strings. */
static lt_status_t add_meta(json_t *obj, const char *const *meta, uint32_t n_meta, const char *path, lt_err_t *err) {
  for (uint32_t i = 0; i < n_meta; i++)
    if (!meta[2 * i] || !meta[2 * i + 1] || json_object_set_new(obj, meta[2 * i], json_string(meta[2 * i + 1])))
      return lt_fail(err, LT_E_INVALID, "%s: metadata pair %u is not a valid (key, string) pair", path, i);
  return LT_OK;
}

lt_status_t st_write(const char *path, const ft_tensor_t *tensors, uint32_t n, const char *const *meta, uint32_t n_meta,
                     lt_err_t *err) {
  json_t *root = json_object();
  const void **piece = malloc(((size_t)n + 2) * sizeof *piece);
  uint64_t *size = malloc(((size_t)n + 2) * sizeof *size);
  char *text = NULL;
  lt_status_t s = LT_OK;
  if (!root || !piece || !size) {
    s = lt_fail(err, LT_E_NOMEM, "%s: out of memory", path);
    goto done;
  }
  if (n_meta) {
    json_t *m = json_object();
    if (!m || json_object_set_new(root, "__metadata__", m)) {
      s = lt_fail(err, LT_E_NOMEM, "%s: out of memory", path);
      goto done;
    }
    if ((s = add_meta(m, meta, n_meta, path, err))) goto done;
  }
  uint64_t off = 0;
  for (uint32_t i = 0; i < n; i++) {
    const ft_tensor_t *t = &tensors[i];
    uint64_t ne, nb;
    if (!t->name || !*t->name || !strcmp(t->name, "__metadata__") || json_object_get(root, t->name)) {
      s = lt_fail(err, LT_E_INVALID, "%s: tensor %u: name %s is empty, reserved or repeated", path, i,
                  t->name ? t->name : "(null)");
      goto done;
    }
    if (!st_dtype_ok(t->dtype)) {
      s = lt_fail(err, LT_E_INVALID, "%s: tensor %s: dtype %s cannot be stored (supported: " ST_DTYPE_LIST ")", path,
                  t->name, ft_dtype_str(t->dtype));
      goto done;
    }
    if (!ft_shape_bytes(t->dtype, t->shape, t->n_dims, &ne, &nb) || nb != t->nbytes || (nb && !t->data)) {
      s = lt_fail(err, LT_E_INVALID, "%s: tensor %s: %u dims of %s do not describe its %llu bytes of data", path,
                  t->name, t->n_dims, ft_dtype_str(t->dtype), (unsigned long long)t->nbytes);
      goto done;
    }
    json_t *shape = json_array(), *e = json_object();
    for (uint32_t d = 0; shape && d < t->n_dims; d++)
      json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
    if (!shape || !e || json_object_set_new(e, "dtype", json_string(ft_dtype_str(t->dtype))) ||
        json_object_set_new(e, "shape", shape) ||
        json_object_set_new(e, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + nb))) ||
        json_object_set_new(root, t->name, e)) {
      s = lt_fail(err, LT_E_NOMEM, "%s: out of memory building the header", path);
      goto done;
    }
    piece[i + 2] = t->data;
    size[i + 2] = nb;
    off += nb;
  }
  text = json_dumps(root, JSON_COMPACT);
  if (!text) {
    s = lt_fail(err, LT_E_NOMEM, "%s: out of memory building the header", path);
    goto done;
  }
  /* Pad with spaces (JSON whitespace) so the data area starts 8-byte aligned. */
  uint64_t len = strlen(text), padded = (len + 7) & ~(uint64_t)7;
  char *grown = realloc(text, padded + 1);
  if (!grown) {
    s = lt_fail(err, LT_E_NOMEM, "%s: out of memory building the header", path);
    goto done;
  }
  text = grown;
  memset(text + len, ' ', padded - len);
  piece[0] = &padded;
  size[0] = 8;
  piece[1] = text;
  size[1] = padded;
  s = write_atomic(path, piece, size, n + 2, err);
done:
  free(text);
  free(piece);
  free(size);
  json_decref(root);
  return s;
}

lt_status_t st_write_sharded(const char *dir, const ft_tensor_t *tensors, uint32_t n, uint64_t max_shard_bytes,
                             const char *const *meta, uint32_t n_meta, lt_err_t *err) {
  /* Shard k holds tensors [first[k], first[k+1]). */
  uint32_t *first = malloc(((size_t)n + 2) * sizeof *first), n_shards = 0;
  json_t *index = json_object(), *wm = json_object();
  char *text = NULL;
  lt_status_t s = LT_OK;
  if (!first || !index || !wm || json_object_set(index, "weight_map", wm)) {
    s = lt_fail(err, LT_E_NOMEM, "%s: out of memory", dir);
    goto done;
  }
  uint64_t fill = 0, total = 0;
  first[0] = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (i > first[n_shards] && fill + tensors[i].nbytes > max_shard_bytes) {
      first[++n_shards] = i;
      fill = 0;
    }
    fill += tensors[i].nbytes;
    total += tensors[i].nbytes;
  }
  first[++n_shards] = n;
  if (n_shards == 1) {
    char *p = path_join(dir, "model.safetensors");
    s = p ? st_write(p, tensors, n, meta, n_meta, err) : lt_fail(err, LT_E_NOMEM, "%s: out of memory", dir);
    free(p);
    goto done;
  }
  for (uint32_t k = 0; k < n_shards && !s; k++) {
    char name[64];
    snprintf(name, sizeof name, "model-%05u-of-%05u.safetensors", k + 1, n_shards);
    char *p = path_join(dir, name);
    s = p ? st_write(p, tensors + first[k], first[k + 1] - first[k], meta, n_meta, err)
          : lt_fail(err, LT_E_NOMEM, "%s: out of memory", dir);
    free(p);
    for (uint32_t i = first[k]; !s && i < first[k + 1]; i++)
      if (json_object_set_new(wm, tensors[i].name, json_string(name)))
        s = lt_fail(err, LT_E_NOMEM, "%s: out of memory", dir);
  }
  if (s) goto done;
  if (json_object_set_new(index, "metadata", json_pack("{sI}", "total_size", (json_int_t)total)) ||
      !(text = json_dumps(index, JSON_INDENT(2)))) {
    s = lt_fail(err, LT_E_NOMEM, "%s: out of memory", dir);
    goto done;
  }
  char *p = path_join(dir, "model.safetensors.index.json");
  const void *piece[1] = {text};
  uint64_t size[1] = {strlen(text)};
  s = p ? write_atomic(p, piece, size, 1, err) : lt_fail(err, LT_E_NOMEM, "%s: out of memory", dir);
  free(p);
done:
  free(text);
  free(first);
  json_decref(wm);
  json_decref(index);
  return s;
}
