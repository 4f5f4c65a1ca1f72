/* Run-time GLSL compilation with shaderc, the on-disk SPIR-V cache, the VkPipelineCache file, pipelines. */
#include <errno.h>
#include <fcntl.h>
#include <shaderc/shaderc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gpu/gpu_internal.h"
#include "common/fsout.h"
#include "engine/gpu/shader_src.h"

#define SPV_MAGIC "LTSPIRV1"
#define PLC_MAGIC "LTPLCAC1"
#define CACHE_FORMAT 1u
#define MAX_CACHE_FILE (64u << 20)

/* On-disk header of a cached SPIR-V module. All fields little-endian as written by this host. */
typedef struct spv_header {
  char magic[8];
  uint32_t format, n_words;
  uint64_t key[2];
  uint64_t checksum;
} spv_header_t;

/* On-disk header of the pipeline cache blob. */
typedef struct plc_header {
  char magic[8];
  uint32_t format, reserved;
  uint64_t size;
  uint64_t checksum;
  uint8_t device_uuid[16];
  uint32_t driver_version, vendor_id, device_id, pad;
} plc_header_t;

uint64_t gpu_hash_a(const void *data, size_t n, uint64_t seed) {
  /* FNV-1a, 64-bit. */
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ull ^ seed;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t gpu_hash_b(const void *data, size_t n, uint64_t seed) {
  /* A multiply-xorshift hash over 8-byte words (independent of FNV), finished with splitmix64. */
  const unsigned char *p = data;
  uint64_t h = seed ^ (0x9e3779b97f4a7c15ull * (n + 1));
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    h ^= w * 0xbf58476d1ce4e5b9ull;
    h = (h << 27 | h >> 37) * 0x94d049bb133111ebull;
  }
  uint64_t t = 0;
  for (size_t k = 0; i < n; i++, k++) t |= (uint64_t)p[i] << (8 * k);
  h ^= t * 0xbf58476d1ce4e5b9ull;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

const shader_source_t *shader_source_find(const char *name) {
  for (const shader_source_t *s = shader_sources; s->name; s++)
    if (strcmp(s->name, name) == 0) return s;
  return NULL;
}

void gpu_shader_init(gpu_t *g) {
  uint64_t a = 0, b = 0;
  for (const shader_source_t *s = shader_sources; s->name; s++) {
    if (strncmp(s->name, "include/", 8) != 0) continue;
    a = gpu_hash_a(s->name, strlen(s->name), a);
    a = gpu_hash_a(s->data, s->size, a);
    b = gpu_hash_b(s->name, strlen(s->name), b);
    b = gpu_hash_b(s->data, s->size, b);
  }
  g->include_digest[0] = a;
  g->include_digest[1] = b;
}

/* ---- shaderc includes: resolved from the embedded tree only ---- */

static shaderc_include_result *include_resolve(void *user, const char *requested, int type, const char *requesting,
                                               size_t depth) {
  (void)user;
  (void)type;
  (void)requesting;
  (void)depth;
  shaderc_include_result *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  char name[256];
  snprintf(name, sizeof name, "include/%s", requested);
  const shader_source_t *s = shader_source_find(name);
  if (!s) s = shader_source_find(requested);
  if (s) {
    r->source_name = s->name;
    r->source_name_length = strlen(s->name);
    r->content = s->data;
    r->content_length = s->size;
  } else {
    r->source_name = "";
    r->content = "include file not found among the embedded shaders";
    r->content_length = strlen(r->content);
  }
  return r;
}

static void include_release(void *user, shaderc_include_result *r) {
  (void)user;
  free(r);
}

/* Adds "A=1;B;C=x" as macro definitions. */
static void add_defines(shaderc_compile_options_t o, const char *defs) {
  if (!defs) return;
  const char *p = defs;
  while (*p) {
    const char *end = strchr(p, ';');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *eq = memchr(p, '=', len);
    if (len) {
      if (eq)
        shaderc_compile_options_add_macro_definition(o, p, (size_t)(eq - p), eq + 1, len - (size_t)(eq - p) - 1);
      else
        shaderc_compile_options_add_macro_definition(o, p, len, "1", 1);
    }
    p += len + (end ? 1 : 0);
  }
}

lt_status_t gpu_compile_glsl(gpu_t *g, const char *name, const char *source, const char *defines, uint32_t **spirv,
                             size_t *n_words, lt_err_t *err) {
  *spirv = NULL;
  *n_words = 0;
  if (!g->shaderc) g->shaderc = shaderc_compiler_initialize();
  if (!g->shaderc) return lt_fail(err, LT_E_SHADER, "shaderc failed to initialise");
  shaderc_compile_options_t o = shaderc_compile_options_initialize();
  if (!o) return lt_fail(err, LT_E_NOMEM, "shaderc options: out of memory");
  shaderc_compile_options_set_target_env(o, shaderc_target_env_vulkan, shaderc_env_version_vulkan_1_2);
  shaderc_compile_options_set_target_spirv(o, shaderc_spirv_version_1_3);
  shaderc_compile_options_set_optimization_level(o, shaderc_optimization_level_performance);
  shaderc_compile_options_set_include_callbacks(o, include_resolve, include_release, NULL);
  add_defines(o, g->defines);
  add_defines(o, defines);
  shaderc_compilation_result_t r =
      shaderc_compile_into_spv(g->shaderc, source, strlen(source), shaderc_compute_shader, name, "main", o);
  shaderc_compile_options_release(o);
  lt_status_t st = LT_OK;
  if (!r || shaderc_result_get_compilation_status(r) != shaderc_compilation_status_success) {
    st = lt_fail(err, LT_E_SHADER, "compiling %s [%s]: %s", name, defines ? defines : "",
                 r ? shaderc_result_get_error_message(r) : "shaderc returned nothing");
  } else {
    size_t bytes = shaderc_result_get_length(r);
    *spirv = malloc(bytes);
    if (!*spirv)
      st = lt_fail(err, LT_E_NOMEM, "out of memory");
    else {
      memcpy(*spirv, shaderc_result_get_bytes(r), bytes);
      *n_words = bytes / 4;
      g->stats.compiles++;
    }
  }
  if (r) shaderc_result_release(r);
  return st;
}

/* Writes data to path atomically (a new file renamed into place, util_out); failures are silent. */
static void write_atomic(const char *path, const void *a, size_t na, const void *b, size_t nb) {
  util_out_t o;
  if (util_out_open(&o, path, 0644, NULL) != LT_OK) return;
  if (fwrite(a, 1, na, o.f) == na && (nb == 0 || fwrite(b, 1, nb, o.f) == nb))
    util_out_commit(&o, NULL);
  else
    util_out_abort(&o);
}

/* Reads a whole file of at most MAX_CACHE_FILE bytes. Caller owns *data. */
static bool read_file(const char *path, unsigned char **data, size_t *n) {
  *data = NULL;
  *n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  struct stat sb;
  bool ok = fstat(fileno(f), &sb) == 0 && sb.st_size > 0 && sb.st_size <= MAX_CACHE_FILE;
  if (ok) {
    *data = malloc((size_t)sb.st_size);
    ok = *data && fread(*data, 1, (size_t)sb.st_size, f) == (size_t)sb.st_size;
    if (ok) *n = (size_t)sb.st_size;
  }
  fclose(f);
  if (!ok) {
    free(*data);
    *data = NULL;
  }
  return ok;
}

/* Computes the cache key of a shader variant: source, defines, includes, device, driver, compiler. */
static void spv_key(gpu_t *g, const char *name, const char *src, const char *defines, uint64_t key[2]) {
  struct {
    uint8_t uuid[16];
    uint32_t driver_version, vendor, device, format;
    uint64_t inc[2];
  } dev = {.driver_version = g->caps.driver_version,
           .vendor = g->caps.vendor_id,
           .device = g->caps.device_id,
           .format = CACHE_FORMAT,
           .inc = {g->include_digest[0], g->include_digest[1]}};
  memcpy(dev.uuid, g->caps.device_uuid, 16);
  const char *parts[4] = {name, src, g->defines, defines ? defines : ""};
  uint64_t a = gpu_hash_a(&dev, sizeof dev, 1), b = gpu_hash_b(&dev, sizeof dev, 2);
  for (int i = 0; i < 4; i++) {
    a = gpu_hash_a(parts[i], strlen(parts[i]) + 1, a);
    b = gpu_hash_b(parts[i], strlen(parts[i]) + 1, b);
  }
  key[0] = a;
  key[1] = b;
}

/* Returns cached SPIR-V for key, or NULL when absent or rejected (a rejected file is deleted). */
static uint32_t *spv_cache_read(gpu_t *g, const char *path, const uint64_t key[2], size_t *n_words) {
  unsigned char *data;
  size_t n;
  if (!read_file(path, &data, &n)) return NULL;
  spv_header_t h;
  bool ok = n >= sizeof h;
  if (ok) memcpy(&h, data, sizeof h);
  ok = ok && memcmp(h.magic, SPV_MAGIC, 8) == 0 && h.format == CACHE_FORMAT && h.key[0] == key[0] &&
       h.key[1] == key[1] && h.n_words > 5 && (uint64_t)h.n_words * 4 == n - sizeof h &&
       gpu_hash_a(data + sizeof h, n - sizeof h, 0) == h.checksum;
  uint32_t *words = NULL;
  if (ok) {
    uint32_t magic;
    memcpy(&magic, data + sizeof h, 4);
    ok = magic == 0x07230203u;
  }
  if (ok && (words = malloc(n - sizeof h))) {
    memcpy(words, data + sizeof h, n - sizeof h);
    *n_words = h.n_words;
    g->stats.spirv_cache_hits++;
  } else {
    g->stats.spirv_cache_rejects++;
    unlink(path);
  }
  free(data);
  return words;
}

static void spv_cache_write(const char *path, const uint64_t key[2], const uint32_t *words, size_t n_words) {
  spv_header_t h = {.format = CACHE_FORMAT, .n_words = (uint32_t)n_words, .key = {key[0], key[1]}};
  memcpy(h.magic, SPV_MAGIC, 8);
  h.checksum = gpu_hash_a(words, n_words * 4, 0);
  write_atomic(path, &h, sizeof h, words, n_words * 4);
}

/* Gets SPIR-V for a shader variant from the disk cache or by compiling (and caching) it. */
static lt_status_t get_spirv(gpu_t *g, const char *shader, const char *defines, uint32_t **words, size_t *n_words,
                             char *path, size_t path_cap, lt_err_t *err) {
  const shader_source_t *s = shader_source_find(shader);
  if (!s) return lt_fail(err, LT_E_INVALID, "no embedded shader named %s", shader);
  uint64_t key[2];
  spv_key(g, shader, s->data, defines, key);
  path[0] = '\0';
  if (g->cache_dir[0]) {
    snprintf(path, path_cap, "%s/spirv/%016llx%016llx.spv", g->cache_dir, (unsigned long long)key[0],
             (unsigned long long)key[1]);
    if ((*words = spv_cache_read(g, path, key, n_words))) return LT_OK;
  }
  lt_status_t st = gpu_compile_glsl(g, shader, s->data, defines, words, n_words, err);
  if (st == LT_OK && path[0]) spv_cache_write(path, key, *words, *n_words);
  return st;
}

static lt_status_t make_pipeline(gpu_t *g, gpu_pipeline_t *p, const uint32_t *words, size_t n_words,
                                 const uint32_t *spec, uint32_t n_spec, lt_err_t *err) {
  lt_status_t st = LT_OK;
  VkShaderModule mod = VK_NULL_HANDLE;
  VkDescriptorSetLayoutBinding lb[16];
  if (p->n_bindings > 16) return lt_fail(err, LT_E_INVALID, "more than 16 bindings");
  for (uint32_t i = 0; i < p->n_bindings; i++)
    lb[i] = (VkDescriptorSetLayoutBinding){.binding = i,
                                           .descriptorType = (p->texel_mask >> i) & 1
                                                                 ? VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER
                                                                 : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                           .descriptorCount = 1,
                                           .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
  VkDescriptorSetLayoutCreateInfo dl = {
      .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO, .bindingCount = p->n_bindings, .pBindings = lb};
  VK_TRY(vkCreateDescriptorSetLayout(g->dev, &dl, NULL, &p->dsl));
  VkPushConstantRange pr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .size = p->push_size};
  VkPipelineLayoutCreateInfo pl = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                   .setLayoutCount = 1,
                                   .pSetLayouts = &p->dsl,
                                   .pushConstantRangeCount = p->push_size ? 1 : 0,
                                   .pPushConstantRanges = &pr};
  VK_TRY(vkCreatePipelineLayout(g->dev, &pl, NULL, &p->layout));
  VkShaderModuleCreateInfo mi = {
      .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, .codeSize = n_words * 4, .pCode = words};
  VK_TRY(vkCreateShaderModule(g->dev, &mi, NULL, &mod));
  VkSpecializationMapEntry me[16];
  if (n_spec > 16) n_spec = 16;
  for (uint32_t i = 0; i < n_spec; i++) me[i] = (VkSpecializationMapEntry){i, i * 4, 4};
  VkSpecializationInfo si = {.mapEntryCount = n_spec, .pMapEntries = me, .dataSize = n_spec * 4, .pData = spec};
  VkComputePipelineCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
                                    .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                                              .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                                              .module = mod,
                                              .pName = "main",
                                              .pSpecializationInfo = n_spec ? &si : NULL},
                                    .layout = p->layout};
  VK_TRY(vkCreateComputePipelines(g->dev, g->pcache, 1, &ci, NULL, &p->pipe));
  g->stats.pipelines++;
out:
  if (mod) vkDestroyShaderModule(g->dev, mod, NULL);
  return st;
}

static void pipeline_free(gpu_t *g, gpu_pipeline_t *p) {
  if (p->pipe) vkDestroyPipeline(g->dev, p->pipe, NULL);
  if (p->layout) vkDestroyPipelineLayout(g->dev, p->layout, NULL);
  if (p->dsl) vkDestroyDescriptorSetLayout(g->dev, p->dsl, NULL);
  memset(p, 0, sizeof *p);
}

gpu_pipeline_t *gpu_pipeline_get(gpu_t *g, const char *shader, const char *defines, uint32_t n_bindings,
                                 uint32_t push_size, const uint32_t *spec, uint32_t n_spec, lt_err_t *err) {
  return gpu_pipeline_get_texel(g, shader, defines, n_bindings, 0, push_size, spec, n_spec, err);
}

gpu_pipeline_t *gpu_pipeline_get_texel(gpu_t *g, const char *shader, const char *defines, uint32_t n_bindings,
                                       uint32_t texel_mask, uint32_t push_size, const uint32_t *spec, uint32_t n_spec,
                                       lt_err_t *err) {
  char key[1024];
  int len =
      snprintf(key, sizeof key, "%s|%s|%u|%u|%x|", shader, defines ? defines : "", n_bindings, push_size, texel_mask);
  for (uint32_t i = 0; i < n_spec && len > 0 && (size_t)len < sizeof key; i++)
    len += snprintf(key + len, sizeof key - (size_t)len, "%u,", spec[i]);
  if (len < 0 || (size_t)len >= sizeof key) {
    lt_fail(err, LT_E_LIMIT, "pipeline key too long for %s", shader);
    return NULL;
  }
  for (gpu_pipe_entry_t *e = g->pipes; e; e = e->next)
    if (strcmp(e->key, key) == 0) return &e->p;
  if (push_size > g->caps.max_push) {
    lt_fail(err, LT_E_LIMIT, "%s needs %u bytes of push constants, the device has %u", shader, push_size,
            g->caps.max_push);
    return NULL;
  }
  gpu_pipe_entry_t *e = calloc(1, sizeof *e);
  if (!e || !(e->key = strdup(key))) {
    free(e);
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  e->p.n_bindings = n_bindings;
  e->p.push_size = push_size;
  e->p.texel_mask = texel_mask;
  uint32_t *words = NULL;
  size_t n_words = 0;
  char path[1200];
  uint64_t hits = g->stats.spirv_cache_hits;
  lt_status_t st = get_spirv(g, shader, defines, &words, &n_words, path, sizeof path, err);
  if (st == LT_OK) {
    st = make_pipeline(g, &e->p, words, n_words, spec, n_spec, err);
    if (st != LT_OK && path[0] && g->stats.spirv_cache_hits > hits) {
      /* A cached module the driver refuses is treated as corrupt: drop it and compile afresh once. */
      pipeline_free(g, &e->p);
      e->p.n_bindings = n_bindings;
      e->p.push_size = push_size;
      e->p.texel_mask = texel_mask;
      unlink(path);
      g->stats.spirv_cache_rejects++;
      free(words);
      words = NULL;
      const shader_source_t *s = shader_source_find(shader);
      st = gpu_compile_glsl(g, shader, s->data, defines, &words, &n_words, err);
      if (st == LT_OK) st = make_pipeline(g, &e->p, words, n_words, spec, n_spec, err);
    }
  }
  free(words);
  if (st != LT_OK) {
    pipeline_free(g, &e->p);
    free(e->key);
    free(e);
    return NULL;
  }
  e->next = g->pipes;
  g->pipes = e;
  return &e->p;
}

void gpu_pipelines_free(gpu_t *g) {
  for (gpu_pipe_entry_t *e = g->pipes, *nx; e; e = nx) {
    nx = e->next;
    pipeline_free(g, &e->p);
    free(e->key);
    free(e);
  }
  g->pipes = NULL;
  if (g->shaderc) shaderc_compiler_release(g->shaderc);
  g->shaderc = NULL;
}

/* ---- VkPipelineCache file ---- */

static void pcache_path(const gpu_t *g, char *out, size_t cap) {
  char u[33];
  for (int i = 0; i < 16; i++) snprintf(u + 2 * i, 3, "%02x", g->caps.device_uuid[i]);
  snprintf(out, cap, "%s/pipelines-%s.bin", g->cache_dir, u);
}

/* Checks Vulkan's own pipeline-cache header (version one) against this device. */
static bool vk_cache_header_ok(const gpu_t *g, const unsigned char *d, size_t n) {
  if (n < 32) return false;
  uint32_t hlen, hver, vendor, device;
  memcpy(&hlen, d, 4);
  memcpy(&hver, d + 4, 4);
  memcpy(&vendor, d + 8, 4);
  memcpy(&device, d + 12, 4);
  VkPhysicalDeviceProperties props;
  vkGetPhysicalDeviceProperties(g->phys, &props);
  return hlen >= 32 && hlen <= n && hver == VK_PIPELINE_CACHE_HEADER_VERSION_ONE && vendor == props.vendorID &&
         device == props.deviceID && memcmp(d + 16, props.pipelineCacheUUID, VK_UUID_SIZE) == 0;
}

lt_status_t gpu_pcache_open(gpu_t *g, lt_err_t *err) {
  lt_status_t st = LT_OK;
  unsigned char *data = NULL;
  size_t n = 0;
  const void *init = NULL;
  size_t init_n = 0;
  if (g->cache_dir[0]) {
    char path[1200];
    pcache_path(g, path, sizeof path);
    if (read_file(path, &data, &n)) {
      plc_header_t h;
      bool ok = n >= sizeof h;
      if (ok) memcpy(&h, data, sizeof h);
      ok = ok && memcmp(h.magic, PLC_MAGIC, 8) == 0 && h.format == CACHE_FORMAT && h.size == n - sizeof h &&
           memcmp(h.device_uuid, g->caps.device_uuid, 16) == 0 && h.driver_version == g->caps.driver_version &&
           h.vendor_id == g->caps.vendor_id && h.device_id == g->caps.device_id &&
           gpu_hash_a(data + sizeof h, n - sizeof h, 0) == h.checksum &&
           vk_cache_header_ok(g, data + sizeof h, n - sizeof h);
      if (ok) {
        init = data + sizeof h;
        init_n = n - sizeof h;
        g->stats.pipeline_cache_loaded = true;
      } else {
        g->stats.pipeline_cache_rejected = true;
        unlink(path);
      }
    }
  }
  VkPipelineCacheCreateInfo ci = {
      .sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO, .initialDataSize = init_n, .pInitialData = init};
  VkResult r = vkCreatePipelineCache(g->dev, &ci, NULL, &g->pcache);
  if (r != VK_SUCCESS && init) {
    /* The driver refused data that passed our checks: start empty rather than fail. */
    g->stats.pipeline_cache_loaded = false;
    g->stats.pipeline_cache_rejected = true;
    ci.initialDataSize = 0;
    ci.pInitialData = NULL;
    r = vkCreatePipelineCache(g->dev, &ci, NULL, &g->pcache);
  }
  VK_TRY(r);
out:
  free(data);
  return st;
}

void gpu_pcache_save(gpu_t *g) {
  if (!g->cache_dir[0] || !g->pcache || g->stats.pipelines == 0) return;
  size_t n = 0;
  if (vkGetPipelineCacheData(g->dev, g->pcache, &n, NULL) != VK_SUCCESS || n == 0 || n > MAX_CACHE_FILE) return;
  void *data = malloc(n);
  if (!data) return;
  if (vkGetPipelineCacheData(g->dev, g->pcache, &n, data) == VK_SUCCESS) {
    plc_header_t h = {.format = CACHE_FORMAT,
                      .size = n,
                      .driver_version = g->caps.driver_version,
                      .vendor_id = g->caps.vendor_id,
                      .device_id = g->caps.device_id};
    memcpy(h.magic, PLC_MAGIC, 8);
    memcpy(h.device_uuid, g->caps.device_uuid, 16);
    h.checksum = gpu_hash_a(data, n, 0);
    char path[1200];
    pcache_path(g, path, sizeof path);
    write_atomic(path, &h, sizeof h, data, n);
  }
  free(data);
}
