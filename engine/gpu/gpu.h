/* The Vulkan runtime: device choice, capabilities, buffers, run-time compiled pipelines, command recording. */
#ifndef LATHE_GPU_H
#define LATHE_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct gpu gpu_t;
typedef struct gpu_buf gpu_buf_t;
typedef struct gpu_pipeline gpu_pipeline_t;
typedef struct gpu_cmd gpu_cmd_t;

/* Device type ranks used for the default choice (higher is preferred). */
typedef enum gpu_kind {
  GPU_KIND_OTHER = 0,
  GPU_KIND_CPU,
  GPU_KIND_VIRTUAL,
  GPU_KIND_INTEGRATED,
  GPU_KIND_DISCRETE
} gpu_kind_t;

/* Everything shaders and callers need to know about the device, queried once at gpu_new(). */
typedef struct gpu_caps {
  char name[256];
  char driver_name[256];
  char driver_info[256];
  uint32_t vendor_id, device_id, driver_version, api_version;
  uint8_t device_uuid[16];
  uint32_t device_index; /* its index in the Vulkan instance's list (what LATHE_DEVICE and --device name) */
  gpu_kind_t kind;
  bool storage16; /* 16-bit storage buffers (f16 weights) */
  bool storage8;  /* 8-bit storage buffers (int8 weights) */
  bool float16;   /* fp16 arithmetic */
  bool int8;      /* int8 arithmetic */
  bool int_dot;   /* VK_KHR_shader_integer_dot_product */
  uint32_t subgroup_size;
  bool subgroup_arith; /* subgroupAdd/subgroupMax in compute */
  bool subgroup_shuffle;
  uint32_t max_shared; /* bytes of shared memory per workgroup */
  uint32_t max_wg_invocations;
  uint32_t max_wg_count[3];
  uint32_t max_push;          /* bytes of push constants */
  uint64_t max_storage_range; /* largest range one binding may have */
  uint64_t max_alloc;         /* largest single allocation */
  uint64_t min_storage_align; /* minStorageBufferOffsetAlignment */
  uint64_t device_local_bytes;
  bool unified; /* a memory type is device-local and host-visible: weights written through the map */
  /* Uniform texel buffers (a binding read through a format, gpu_texel_t): which formats the device reads that way
   * (bit t for format t; gpu_texel_readable()), how many texels one may span and the offset alignment it needs. */
  uint32_t texel_formats;
  uint64_t max_texels, min_texel_align;
} gpu_caps_t;

/* The format a binding is read through as a uniform texel buffer (0: an ordinary storage buffer). */
typedef enum gpu_texel {
  GPU_TEXEL_NONE = 0,
  GPU_TEXEL_RGBA32F,  /* 16-byte texels of four f32 */
  GPU_TEXEL_RGBA32UI, /* 16-byte texels of four uint32 (eight f16 or bf16 values, unpacked by the shader) */
  GPU_TEXEL_R32UI,    /* 4-byte texels of one uint32 (quantised blocks, unpacked by the shader) */
  GPU_TEXEL_COUNT
} gpu_texel_t;

/* Bytes per texel of format t (0 for GPU_TEXEL_NONE). */
uint32_t gpu_texel_size(gpu_texel_t t);

/* Whether the device with caps reads format t as a uniform texel buffer (false for GPU_TEXEL_NONE). */
bool gpu_texel_readable(const gpu_caps_t *caps, gpu_texel_t t);

/* Options for gpu_new(); zero-initialised means defaults. */
typedef struct gpu_opts {
  const char *device; /* index or UUID; NULL reads LATHE_DEVICE; NULL/empty picks the best */
  const char
      *cache_dir;     /* shader cache folder; NULL reads LATHE_CACHE_DIR, then XDG_CACHE_HOME/lathe, ~/.cache/lathe */
  int validation;     /* 0 reads LATHE_VALIDATION, 1 forces the Khronos validation layer on, -1 off */
  bool no_disk_cache; /* compile everything, never read or write the disk cache */
} gpu_opts_t;

/* Counters for tests and benchmarks. */
typedef struct gpu_stats {
  uint64_t compiles;            /* GLSL -> SPIR-V compilations done by shaderc */
  uint64_t spirv_cache_hits;    /* SPIR-V files read from disk and accepted */
  uint64_t spirv_cache_rejects; /* SPIR-V files found but rejected (corrupt, truncated, mismatched) */
  uint64_t pipelines;           /* pipelines created */
  bool pipeline_cache_loaded;   /* VkPipelineCache data read from disk and accepted */
  bool pipeline_cache_rejected; /* pipeline cache file present but rejected */
  uint64_t dispatches, barriers, submits;
  uint64_t bytes_allocated;                  /* device bytes in live buffers */
  uint64_t bytes_peak;                       /* highest bytes_allocated since gpu_new() */
  uint64_t validation_errors;                /* messages of error severity from the validation layer */
  uint64_t bytes_uploaded, bytes_downloaded; /* through gpu_upload() and gpu_download() */
} gpu_stats_t;

/* Opens the chosen Vulkan device. Returns NULL and fills err (naming the package to install when no loader,
 * ICD or device exists). Caller owns the result; free with gpu_destroy(). */
gpu_t *gpu_new(const gpu_opts_t *opts, lt_err_t *err);

/* Waits for the device, saves the pipeline cache, frees everything and sets *g to NULL; NULL-safe. */
void gpu_destroy(gpu_t **g);

/* Returns the device's capabilities; owned by g. */
const gpu_caps_t *gpu_caps(const gpu_t *g);

/* Returns the counters; owned by g. */
const gpu_stats_t *gpu_stats(const gpu_t *g);

/* Writes a device UUID in its usual form (8-4-4-4-12 lower-case hex digits, NUL-terminated) into out. */
void gpu_uuid_str(const uint8_t u[16], char out[37]);

/* Prints one line per Vulkan device to f, tab-separated: index, type, name, UUID, MiB of its largest device-local
 * heap; returns the count or a negative status. */
int gpu_list_devices(void *file, lt_err_t *err);

/* ---- buffers ---- */

/* Allocates a device buffer of `bytes` (at most caps.max_storage_range) from a pooled block.
 * Returns NULL and fills err (LT_E_DEVICE_OOM, LT_E_LIMIT). Caller owns; free with gpu_buf_destroy(). */
gpu_buf_t *gpu_buf_new(gpu_t *g, uint64_t bytes, lt_err_t *err);

/* Returns the buffer's memory to its block and sets *b to NULL; NULL-safe. */
void gpu_buf_destroy(gpu_buf_t **b);

/* Returns the buffer's size in bytes. */
uint64_t gpu_buf_size(const gpu_buf_t *b);

/* Copies n bytes from host src into the buffer at byte offset off; waits until done. */
lt_status_t gpu_upload(gpu_buf_t *b, uint64_t off, const void *src, uint64_t n, lt_err_t *err);

/* Copies n bytes from the buffer at byte offset off into host dst; waits until done. */
lt_status_t gpu_download(gpu_buf_t *b, uint64_t off, void *dst, uint64_t n, lt_err_t *err);

/* Fills n bytes at off with zeros; waits until done. */
lt_status_t gpu_buf_zero(gpu_buf_t *b, uint64_t off, uint64_t n, lt_err_t *err);

/* ---- pipelines ---- */

/* A compiled compute pipeline for one embedded shader with one set of defines and specialisation constants.
 * `defines` is "NAME=VALUE;NAME2" (may be NULL); the device's capability defines are always added.
 * spec[i] is specialisation constant id i (id 0, 1, 2 are the workgroup size x, y, z by convention).
 * Returns a pipeline owned by g (cached: the same key returns the same pipeline), or NULL with err. */
gpu_pipeline_t *gpu_pipeline_get(gpu_t *g, const char *shader, const char *defines, uint32_t n_bindings,
                                 uint32_t push_size, const uint32_t *spec, uint32_t n_spec, lt_err_t *err);

/* gpu_pipeline_get() with the bindings in texel_mask (bit i: binding i) declared as uniform texel buffers, which
 * dispatches bind through a format (gpu_bind_t.texel). */
gpu_pipeline_t *gpu_pipeline_get_texel(gpu_t *g, const char *shader, const char *defines, uint32_t n_bindings,
                                       uint32_t texel_mask, uint32_t push_size, const uint32_t *spec, uint32_t n_spec,
                                       lt_err_t *err);

/* Compiles GLSL source text to SPIR-V (for tests and tools). Caller owns *spirv (free()). */
lt_status_t gpu_compile_glsl(gpu_t *g, const char *name, const char *source, const char *defines, uint32_t **spirv,
                             size_t *n_words, lt_err_t *err);

/* ---- command recording ---- */

/* One buffer range bound to a dispatch. range 0 means "to the end of the buffer". */
typedef struct gpu_bind {
  gpu_buf_t *buf;
  uint64_t off, range;
  bool write;        /* the shader writes this range (drives barrier placement) */
  gpu_texel_t texel; /* read through this format as a uniform texel buffer (the pipeline's texel_mask says which) */
} gpu_bind_t;

/* Starts recording. Dispatches are submitted in chunks as they accumulate; barriers are inserted only where a
 * dispatch touches a range an earlier one wrote (or writes one an earlier one read). Caller owns the recorder and
 * must end it with gpu_cmd_finish() or gpu_cmd_abort(). */
gpu_cmd_t *gpu_cmd_begin(gpu_t *g, lt_err_t *err);

/* Records one dispatch of p with the given bindings (in binding order) and push constants. */
lt_status_t gpu_cmd_dispatch(gpu_cmd_t *c, gpu_pipeline_t *p, const gpu_bind_t *binds, uint32_t n_binds,
                             const void *push, uint32_t push_size, uint32_t gx, uint32_t gy, uint32_t gz,
                             lt_err_t *err);

/* Records a buffer-to-buffer copy of n bytes (ordered like a dispatch that reads src and writes dst). */
lt_status_t gpu_cmd_copy(gpu_cmd_t *c, gpu_buf_t *src, uint64_t src_off, gpu_buf_t *dst, uint64_t dst_off, uint64_t n,
                         lt_err_t *err);

/* Returns a device buffer of at least `bytes` that lives until the recorder is finished or aborted (for
 * intermediate results such as split-reduction partials). Owned by the recorder. NULL with err on failure. */
gpu_buf_t *gpu_cmd_scratch(gpu_cmd_t *c, uint64_t bytes, lt_err_t *err);

/* Submits what is left, waits for the device, frees the recorder and sets *c to NULL.
 * Returns LT_E_DEVICE_LOST, LT_E_DEVICE_OOM, ... from the submission that hit them. */
lt_status_t gpu_cmd_finish(gpu_cmd_t **c, lt_err_t *err);

/* Waits for anything already submitted, drops the rest, frees the recorder and sets *c to NULL; NULL-safe. */
void gpu_cmd_abort(gpu_cmd_t **c);

/* Returns the gpu a recorder belongs to. */
gpu_t *gpu_cmd_gpu(const gpu_cmd_t *c);

/* Number of dispatches after which a recorder submits its command buffer (default 100). */
void gpu_set_chunk(gpu_t *g, uint32_t dispatches_per_submit);

#endif
