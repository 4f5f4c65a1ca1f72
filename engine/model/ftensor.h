/* Tensors as stored in model files (safetensors, GGUF), seen through one description: dtype, row-major shape
 * (outermost dimension first, as PyTorch and safetensors write it), and a pointer into a read-only mapping.
 * Also the small file helpers both readers share: read-only mappings and bounded JSON loading. */
#ifndef LATHE_FTENSOR_H
#define LATHE_FTENSOR_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/ops/ops.h"
#include "common/status.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model file readers assume a little-endian host"
#endif

#define FT_MAX_DIMS 4
#define FT_Q8_0_BLOCK 32       /* elements per Q8_0 block */
#define FT_Q8_0_BLOCK_BYTES 34 /* f16 scale + 32 int8 */

/* FT_Q8_0 .. FT_Q6_K are GGUF's block formats, in the order of LT_Q8_0 .. LT_Q6_K (engine/ops/qblock.h). */
typedef enum ft_dtype {
  FT_F32 = 0,
  FT_F16,
  FT_BF16,
  FT_I8,
  FT_U8,
  FT_I32,
  FT_Q8_0,
  FT_Q4_0,
  FT_Q4_1,
  FT_Q5_0,
  FT_Q5_1,
  FT_Q2_K,
  FT_Q3_K,
  FT_Q4_K,
  FT_Q5_K,
  FT_Q6_K,
  FT_DTYPE_COUNT
} ft_dtype_t;

/* One tensor inside a model file. The name and data belong to the file object that listed it. data may be
 * unaligned (safetensors headers need not be padded): read it with memcpy or ft_tensor_to_f32(). */
typedef struct ft_tensor {
  const char *name;
  ft_dtype_t dtype;
  uint32_t n_dims;             /* 0 (scalar) .. FT_MAX_DIMS */
  uint64_t shape[FT_MAX_DIMS]; /* row-major, outermost first; unused entries are 1 */
  uint64_t n_elems;
  const void *data;
  uint64_t nbytes;
  uint32_t shard; /* index of the file that holds it (0 for a single file) */
} ft_tensor_t;

/* Returns the dtype's name as safetensors spells it ("F32", "BF16", "Q8_0", ...); static string. */
const char *ft_dtype_str(ft_dtype_t t);

/* Bytes per element for plain dtypes; 0 for block-quantised ones (Q8_0, Q4_K, ...). */
uint32_t ft_dtype_size(ft_dtype_t t);

/* Elements per block of a dtype: the block size of a block format, 1 for the others. */
uint32_t ft_block_elems(ft_dtype_t t);

/* The block format of a block-quantised file dtype (into *out); false for the others. */
bool ft_dtype_qblock(ft_dtype_t t, lt_dtype_t *out);

/* Maps a file dtype to the compute-side dtype (F32, F16, BF16, I32); false when there is none. */
bool ft_dtype_to_lt(ft_dtype_t t, lt_dtype_t *out);

/* Computes the element count and byte size of a tensor of this dtype and row-major shape. Returns false on
 * overflow, more than FT_MAX_DIMS dims, or (block formats) an innermost dimension that is not a multiple of the
 * block size. */
bool ft_shape_bytes(ft_dtype_t t, const uint64_t *shape, uint32_t n_dims, uint64_t *n_elems, uint64_t *nbytes);

/* Formats a shape as "[512, 64]" into buf (always NUL-terminated); returns buf. */
const char *ft_shape_str(char *buf, size_t cap, const uint64_t *shape, uint32_t n_dims);

/* Converts t (F32, F16, BF16 or a block format) to f32 into out[t->n_elems] (caller owns out). Integer dtypes are
 * refused with LT_E_INVALID naming the tensor. */
lt_status_t ft_tensor_to_f32(const ft_tensor_t *t, float *out, lt_err_t *err);

/* A read-only memory mapping of a whole file. */
typedef struct ft_map {
  const uint8_t *data; /* NULL for an empty file */
  size_t size;
} ft_map_t;

/* Maps path read-only (regular files only); on failure m is zeroed and err names the file. Release with
 * ft_map_close(). */
lt_status_t ft_map_open(ft_map_t *m, const char *path, lt_err_t *err);

/* Unmaps m (NULL-safe, idempotent). */
void ft_map_close(ft_map_t *m);

/* Loads a JSON file of at most max_bytes into *out, refusing duplicate keys; caller owns *out (json_decref).
 * On failure *out is NULL and err names the file (and the line/column of a syntax error). */
lt_status_t ft_json_load(json_t **out, const char *path, size_t max_bytes, lt_err_t *err);

#endif
