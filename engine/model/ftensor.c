/* Shared pieces of the model file readers: dtype table, shape arithmetic, conversion to f32, mappings. */
#include "engine/model/ftensor.h"
#include "engine/text/jsonl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/ops/dtype.h"
#include "engine/ops/qblock.h"

static const struct {
  const char *name;
  uint32_t size;
} dtype_table[FT_DTYPE_COUNT] = {
    [FT_F32] = {"F32", 4},   [FT_F16] = {"F16", 2},   [FT_BF16] = {"BF16", 2}, [FT_I8] = {"I8", 1},
    [FT_U8] = {"U8", 1},     [FT_I32] = {"I32", 4},   [FT_Q8_0] = {"Q8_0", 0}, [FT_Q4_0] = {"Q4_0", 0},
    [FT_Q4_1] = {"Q4_1", 0}, [FT_Q5_0] = {"Q5_0", 0}, [FT_Q5_1] = {"Q5_1", 0}, [FT_Q2_K] = {"Q2_K", 0},
    [FT_Q3_K] = {"Q3_K", 0}, [FT_Q4_K] = {"Q4_K", 0}, [FT_Q5_K] = {"Q5_K", 0}, [FT_Q6_K] = {"Q6_K", 0},
};

_Static_assert(FT_Q6_K - FT_Q8_0 == LT_Q6_K - LT_Q8_0 && FT_Q4_K - FT_Q8_0 == LT_Q4_K - LT_Q8_0,
               "the file's block dtypes follow the compute side's order");

bool ft_dtype_qblock(ft_dtype_t t, lt_dtype_t *out) {
  if (t < FT_Q8_0 || t > FT_Q6_K) return false;
  *out = (lt_dtype_t)(LT_Q8_0 + (int)(t - FT_Q8_0));
  return true;
}

const char *ft_dtype_str(ft_dtype_t t) { return (unsigned)t < FT_DTYPE_COUNT ? dtype_table[t].name : "?"; }

uint32_t ft_dtype_size(ft_dtype_t t) { return (unsigned)t < FT_DTYPE_COUNT ? dtype_table[t].size : 0; }

bool ft_dtype_to_lt(ft_dtype_t t, lt_dtype_t *out) {
  switch (t) {
  case FT_F32: *out = LT_F32; return true;
  case FT_F16: *out = LT_F16; return true;
  case FT_BF16: *out = LT_BF16; return true;
  case FT_I32: *out = LT_I32; return true;
  default: return false;
  }
}

uint32_t ft_block_elems(ft_dtype_t t) {
  lt_dtype_t q;
  return ft_dtype_qblock(t, &q) ? qblock_info(q)->block : 1;
}

bool ft_shape_bytes(ft_dtype_t t, const uint64_t *shape, uint32_t n_dims, uint64_t *n_elems, uint64_t *nbytes) {
  if (n_dims > FT_MAX_DIMS || (unsigned)t >= FT_DTYPE_COUNT) return false;
  uint64_t n = 1;
  for (uint32_t i = 0; i < n_dims; i++)
    if (__builtin_mul_overflow(n, shape[i], &n)) return false;
  uint64_t bytes;
  lt_dtype_t q;
  if (ft_dtype_qblock(t, &q)) {
    const qblock_info_t *qi = qblock_info(q);
    if (n_dims == 0 || shape[n_dims - 1] % qi->block) return false;
    if (__builtin_mul_overflow(n / qi->block, (uint64_t)qi->bytes, &bytes)) return false;
  } else if (__builtin_mul_overflow(n, (uint64_t)dtype_table[t].size, &bytes))
    return false;
  *n_elems = n;
  *nbytes = bytes;
  return true;
}

const char *ft_shape_str(char *buf, size_t cap, const uint64_t *shape, uint32_t n_dims) {
  size_t len = 0;
  buf[0] = '\0';
  len += (size_t)snprintf(buf, cap, "[");
  for (uint32_t i = 0; i < n_dims && i < FT_MAX_DIMS && len < cap; i++)
    len += (size_t)snprintf(buf + len, cap - len, "%s%llu", i ? ", " : "", (unsigned long long)shape[i]);
  if (len < cap) snprintf(buf + len, cap - len, "]");
  return buf;
}

lt_status_t ft_tensor_to_f32(const ft_tensor_t *t, float *out, lt_err_t *err) {
  const uint8_t *p = t->data;
  switch (t->dtype) {
  case FT_F32: memcpy(out, p, t->n_elems * 4); break;
  case FT_F16:
    for (uint64_t i = 0; i < t->n_elems; i++) {
      uint16_t h;
      memcpy(&h, p + 2 * i, 2);
      out[i] = dtype_half_to_float(h);
    }
    break;
  case FT_BF16:
    for (uint64_t i = 0; i < t->n_elems; i++) {
      uint16_t h;
      memcpy(&h, p + 2 * i, 2);
      uint32_t bits = (uint32_t)h << 16;
      memcpy(&out[i], &bits, 4);
    }
    break;
  default: {
    lt_dtype_t q;
    if (ft_dtype_qblock(t->dtype, &q)) {
      qblock_dequant(q, p, out, t->n_elems);
      break;
    }
    return lt_fail(err, LT_E_INVALID, "tensor %s: dtype %s cannot be converted to f32", t->name,
                   ft_dtype_str(t->dtype));
  }
  }
  return LT_OK;
}

lt_status_t ft_map_open(ft_map_t *m, const char *path, lt_err_t *err) {
  *m = (ft_map_t){0};
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return lt_fail(err, LT_E_IO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  lt_status_t s = LT_OK;
  if (fstat(fd, &st) != 0)
    s = lt_fail(err, LT_E_IO, "%s: cannot stat: %s", path, strerror(errno));
  else if (!S_ISREG(st.st_mode))
    s = lt_fail(err, LT_E_IO, "%s: not a regular file", path);
  else if (st.st_size > 0) {
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
      s = lt_fail(err, LT_E_IO, "%s: cannot map: %s", path, strerror(errno));
    else
      *m = (ft_map_t){p, (size_t)st.st_size};
  }
  close(fd);
  return s;
}

void ft_map_close(ft_map_t *m) {
  if (m && m->data) munmap((void *)m->data, m->size);
  if (m) *m = (ft_map_t){0};
}

lt_status_t ft_json_load(json_t **out, const char *path, size_t max_bytes, lt_err_t *err) {
  *out = NULL;
  struct stat st;
  if (stat(path, &st) != 0) return lt_fail(err, LT_E_IO, "%s: cannot stat: %s", path, strerror(errno));
  if (!S_ISREG(st.st_mode)) return lt_fail(err, LT_E_IO, "%s: not a regular file", path);
  if ((uint64_t)st.st_size > max_bytes)
    return lt_fail(err, LT_E_LIMIT, "%s: %lld bytes is over the %zu-byte limit for this JSON file", path,
                   (long long)st.st_size, max_bytes);
  json_error_t je;
  char jb[160];
  *out = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
  if (!*out)
    return lt_fail(err, LT_E_CORRUPT, "%s: invalid JSON at line %d column %d: %s", path, je.line, je.column,
                   jsonl_error_brief(&je, jb, sizeof jb));
  return LT_OK;
}
