/* Private to the files of engine/gpu: the structures behind the opaque gpu types. */
#ifndef LATHE_GPU_INTERNAL_H
#define LATHE_GPU_INTERNAL_H

#include "engine/gpu/vkfn.h"

#include "engine/gpu/gpu.h"

/* Checks a VkResult; on failure records its name and the call site in err, sets st and jumps to `out`. */
#define VK_TRY(call)                                                                                                   \
  do {                                                                                                                 \
    VkResult vk_try_r_ = (call);                                                                                       \
    if (vk_try_r_ != VK_SUCCESS) {                                                                                     \
      st = gpu_vk_fail(err, vk_try_r_, #call, __FILE__, __LINE__);                                                     \
      goto out;                                                                                                        \
    }                                                                                                                  \
  } while (0)

typedef struct gpu_range {
  uint64_t off, size;
} gpu_range_t;

typedef struct gpu_block {
  VkDeviceMemory mem;
  uint64_t size;
  uint32_t type;
  void *map;         /* non-NULL when host-visible */
  gpu_range_t *free; /* sorted by offset, coalesced */
  uint32_t n_free, cap_free;
  uint32_t live; /* buffers placed in this block */
  struct gpu_block *next;
} gpu_block_t;

struct gpu_buf {
  gpu_t *g;
  VkBuffer buf;
  uint64_t size;
  gpu_block_t *blk;
  uint64_t off, alloc_size;
  /* Texel views made for dispatches (gpu_cmd_dispatch), kept until the buffer is destroyed. */
  struct gpu_texel_view {
    uint64_t off, range;
    gpu_texel_t fmt;
    VkBufferView view;
  } * views;
  uint32_t n_views;
};

typedef struct gpu_pipe_entry gpu_pipe_entry_t;

struct gpu_pipeline {
  VkDescriptorSetLayout dsl;
  VkPipelineLayout layout;
  VkPipeline pipe;
  uint32_t n_bindings, push_size;
  uint32_t texel_mask; /* bindings declared as uniform texel buffers */
};

struct gpu_pipe_entry {
  char *key;
  gpu_pipeline_t p;
  gpu_pipe_entry_t *next;
};

struct gpu {
  VkInstance inst;
  VkDebugUtilsMessengerEXT messenger;
  VkPhysicalDevice phys;
  VkDevice dev;
  VkQueue queue;
  uint32_t qfam;
  VkCommandPool pool;
  VkPipelineCache pcache;
  gpu_caps_t caps;
  gpu_stats_t stats;
  VkPhysicalDeviceMemoryProperties memprops;
  uint32_t type_device;  /* memory type for buffers */
  uint32_t type_staging; /* host-visible type for transfers (== type_device when unified) */
  bool force_staging;
  gpu_block_t *blocks;
  gpu_buf_t *staging; /* lazily made when not unified */
  char cache_dir[1024];
  char defines[512]; /* capability defines, "A=1;B=2" */
  uint64_t include_digest[2];
  gpu_pipe_entry_t *pipes;
  uint32_t chunk;
  void *shaderc; /* shaderc_compiler_t, made on first compile */
};

/* Records a failed Vulkan call in err and returns the matching status (device lost, device OOM, ...). */
lt_status_t gpu_vk_fail(lt_err_t *err, VkResult r, const char *call, const char *file, int line);

/* Returns the name of a VkResult; static string. */
const char *gpu_vk_result_str(VkResult r);

/* Loads the pipeline cache from disk into g->pcache (creating an empty one when absent or rejected). */
lt_status_t gpu_pcache_open(gpu_t *g, lt_err_t *err);

/* Writes g->pcache to disk with a validated header; failures are ignored (the cache is an optimisation). */
void gpu_pcache_save(gpu_t *g);

/* Frees every pipeline and the shader compiler. */
void gpu_pipelines_free(gpu_t *g);

/* Computes the digest of every embedded include file into g->include_digest. */
void gpu_shader_init(gpu_t *g);

/* 64-bit hashes used for cache keys and checksums (two independent functions give 128 bits). */
uint64_t gpu_hash_a(const void *data, size_t n, uint64_t seed);
uint64_t gpu_hash_b(const void *data, size_t n, uint64_t seed);

/* Runs a one-time command buffer recorded by fn(cb, ctx), waiting for it. */
lt_status_t gpu_run_once(gpu_t *g, void (*fn)(VkCommandBuffer cb, void *ctx), void *ctx, lt_err_t *err);

/* Vulkan's format for texel format t (VK_FORMAT_UNDEFINED for GPU_TEXEL_NONE). */
VkFormat gpu_texel_vk_format(gpu_texel_t t);

#endif
