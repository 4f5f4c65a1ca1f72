/* safetensors reader (single file or sharded set, memory-mapped read-only) and writer.
 * Format: u64 little-endian header length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets":
 * [begin, end]}, "__metadata__": {string: string}}, then the data area the offsets index into. The header is
 * untrusted: every length, dtype, shape and offset is checked before use. */
#ifndef LATHE_SAFETENSORS_H
#define LATHE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model/ftensor.h"
#include "common/status.h"

#define ST_MAX_HEADER (100u << 20) /* largest JSON header accepted, bytes */
#define ST_MAX_INDEX (100u << 20)  /* largest model.safetensors.index.json accepted, bytes */

typedef struct st_file st_file_t;

/* Opens weights read-only from path: a .safetensors file, a sharded set's index JSON (weight_map names the
 * shard of every tensor; shards live next to it), or a folder holding model.safetensors.index.json or
 * model.safetensors. Caller owns *out (st_destroy). */
lt_status_t st_open(st_file_t **out, const char *path, lt_err_t *err);

/* Parses a safetensors image held in memory. data is borrowed and must outlive the object; label names it
 * in messages. Caller owns *out (st_destroy). */
lt_status_t st_open_buffer(st_file_t **out, const void *data, size_t size, const char *label, lt_err_t *err);

/* Unmaps and frees *self_p and sets it to NULL; NULL-safe. */
void st_destroy(st_file_t **self_p);

/* Number of tensors over all shards. */
uint32_t st_count(const st_file_t *f);

/* The i-th tensor (ordered by shard, then data offset); owned by f. */
const ft_tensor_t *st_tensor(const st_file_t *f, uint32_t i);

/* The tensor called name, or NULL; owned by f. */
const ft_tensor_t *st_find(const st_file_t *f, const char *name);

/* Number of shard files (1 for a single file). */
uint32_t st_shard_count(const st_file_t *f);

/* Path (or buffer label) of shard i; owned by f. */
const char *st_shard_path(const st_file_t *f, uint32_t shard);

/* Value of key in the __metadata__ map (the first shard holding it), or NULL; owned by f. */
const char *st_metadata(const st_file_t *f, const char *key);

/* Writes n tensors (name, dtype, n_dims, shape, data; nbytes must equal the shape's size; shard is ignored)
 * to path in the given order, contiguously, with the header padded by spaces to a multiple of 8 bytes.
 * meta holds n_meta (key, value) string pairs for __metadata__ (transformers expects "format": "pt" when
 * there is any). Writes path.tmp and renames it, so path is either old or complete. */
lt_status_t st_write(const char *path, const ft_tensor_t *tensors, uint32_t n, const char *const *meta, uint32_t n_meta,
                     lt_err_t *err);

/* Writes n tensors into folder dir as Hugging Face does: consecutive tensors fill shards
 * model-0000i-of-0000K.safetensors of at most max_shard_bytes of data each (a larger tensor gets a shard of
 * its own), then model.safetensors.index.json; a set that fits one shard is written as model.safetensors
 * without an index. meta as for st_write, copied into every shard. */
lt_status_t st_write_sharded(const char *dir, const ft_tensor_t *tensors, uint32_t n, uint64_t max_shard_bytes,
                             const char *const *meta, uint32_t n_meta, lt_err_t *err);

#endif
