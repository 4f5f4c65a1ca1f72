/* Device choice, capabilities and buffer memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "engine/gpu/gpu_internal.h"

#define BLOCK_BYTES (64ull << 20)
#define STAGING_BYTES (8ull << 20)
#define INSTALL_HINT "install the Vulkan loader and a driver: apt-get install libvulkan1 mesa-vulkan-drivers"

const char *gpu_vk_result_str(VkResult r) {
  switch (r) {
/* clang-format off */
#define C(x) case x: return #x;
    C(VK_SUCCESS) C(VK_NOT_READY) C(VK_TIMEOUT) C(VK_INCOMPLETE) C(VK_ERROR_OUT_OF_HOST_MEMORY)
    C(VK_ERROR_OUT_OF_DEVICE_MEMORY) C(VK_ERROR_INITIALIZATION_FAILED) C(VK_ERROR_DEVICE_LOST)
    C(VK_ERROR_MEMORY_MAP_FAILED) C(VK_ERROR_LAYER_NOT_PRESENT) C(VK_ERROR_EXTENSION_NOT_PRESENT)
    C(VK_ERROR_FEATURE_NOT_PRESENT) C(VK_ERROR_INCOMPATIBLE_DRIVER) C(VK_ERROR_TOO_MANY_OBJECTS)
    C(VK_ERROR_FORMAT_NOT_SUPPORTED) C(VK_ERROR_FRAGMENTED_POOL) C(VK_ERROR_OUT_OF_POOL_MEMORY)
    C(VK_ERROR_INVALID_EXTERNAL_HANDLE) C(VK_ERROR_FRAGMENTATION) C(VK_ERROR_UNKNOWN)
#undef C
        /* clang-format on */
        default : return "VK_ERROR_(unnamed)";
  }
}

lt_status_t gpu_vk_fail(lt_err_t *err, VkResult r, const char *call, const char *file, int line) {
  lt_status_t code = LT_E_VULKAN;
  if (r == VK_ERROR_DEVICE_LOST)
    code = LT_E_DEVICE_LOST;
  else if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
    code = LT_E_DEVICE_OOM;
  else if (r == VK_ERROR_INCOMPATIBLE_DRIVER || r == VK_ERROR_INITIALIZATION_FAILED)
    code = LT_E_NO_VULKAN;
  const char *base = strrchr(file, '/');
  return lt_fail(err, code, "%s failed: %s (%s:%d)", call, gpu_vk_result_str(r), base ? base + 1 : file, line);
}

static VkBool32 VKAPI_PTR on_validation(VkDebugUtilsMessageSeverityFlagBitsEXT sev,
                                        VkDebugUtilsMessageTypeFlagsEXT type,
                                        const VkDebugUtilsMessengerCallbackDataEXT *data, void *user) {
  (void)type;
  gpu_t *g = user;
  if (sev & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) {
    g->stats.validation_errors++;
    fprintf(stderr, "lathe: validation error: %s\n", data->pMessage);
  } else if (sev & VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT) {
    fprintf(stderr, "lathe: validation warning: %s\n", data->pMessage);
  }
  return VK_FALSE;
}

static bool has_layer(const char *name) {
  uint32_t n = 0;
  if (vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || n == 0) return false;
  VkLayerProperties *p = calloc(n, sizeof *p);
  if (!p) return false;
  bool found = false;
  if (vkEnumerateInstanceLayerProperties(&n, p) == VK_SUCCESS)
    for (uint32_t i = 0; i < n; i++) found |= strcmp(p[i].layerName, name) == 0;
  free(p);
  return found;
}

static bool has_dev_ext(VkPhysicalDevice pd, const char *name) {
  uint32_t n = 0;
  if (vkEnumerateDeviceExtensionProperties(pd, NULL, &n, NULL) != VK_SUCCESS) return false;
  VkExtensionProperties *p = calloc(n ? n : 1, sizeof *p);
  if (!p) return false;
  bool found = false;
  if (vkEnumerateDeviceExtensionProperties(pd, NULL, &n, p) == VK_SUCCESS)
    for (uint32_t i = 0; i < n; i++) found |= strcmp(p[i].extensionName, name) == 0;
  free(p);
  return found;
}

static gpu_kind_t kind_of(VkPhysicalDeviceType t) {
  switch (t) {
  case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return GPU_KIND_DISCRETE;
  case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return GPU_KIND_INTEGRATED;
  case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return GPU_KIND_VIRTUAL;
  case VK_PHYSICAL_DEVICE_TYPE_CPU: return GPU_KIND_CPU;
  default: return GPU_KIND_OTHER;
  }
}

static const char *kind_str(gpu_kind_t k) {
  static const char *names[] = {"other", "cpu", "virtual", "integrated", "discrete"};
  return names[k];
}

void gpu_uuid_str(const uint8_t u[16], char out[37]) {
  char *p = out;
  for (int i = 0; i < 16; i++) {
    p += sprintf(p, "%02x", u[i]);
    if (i == 3 || i == 5 || i == 7 || i == 9) *p++ = '-';
  }
  *p = '\0';
}

/* Creates the instance, with the validation layer when asked. */
static lt_status_t make_instance(gpu_t *g, bool validation, lt_err_t *err) {
  lt_status_t st = LT_OK;
  uint32_t api = 0;
  if ((st = vkfn_load(err)) != LT_OK) return st;
  /* vkEnumerateInstanceVersion is absent on a 1.0 loader. vkCreateInstance returns VK_ERROR_INCOMPATIBLE_DRIVER
   * when no ICD is installed. */
  if (!vkEnumerateInstanceVersion || vkEnumerateInstanceVersion(&api) != VK_SUCCESS || api < VK_API_VERSION_1_2)
    return lt_fail(err, LT_E_NO_VULKAN, "the Vulkan loader is older than 1.2; " INSTALL_HINT);
  const char *layers[1] = {"VK_LAYER_KHRONOS_validation"};
  const char *exts[2];
  uint32_t n_layers = 0, n_exts = 0;
  if (validation) {
    if (!has_layer(layers[0]))
      return lt_fail(err, LT_E_NO_VULKAN,
                     "LATHE_VALIDATION is set but the Khronos validation layer is missing; "
                     "apt-get install vulkan-validationlayers");
    n_layers = 1;
    exts[n_exts++] = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
  }
  VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                           .pApplicationName = "lathe",
                           .pEngineName = "lathe",
                           .apiVersion = VK_API_VERSION_1_2};
  VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                             .pApplicationInfo = &app,
                             .enabledLayerCount = n_layers,
                             .ppEnabledLayerNames = layers,
                             .enabledExtensionCount = n_exts,
                             .ppEnabledExtensionNames = exts};
  VkResult r = vkCreateInstance(&ci, NULL, &g->inst);
  if (r == VK_ERROR_INCOMPATIBLE_DRIVER)
    return lt_fail(err, LT_E_NO_VULKAN, "no Vulkan driver (ICD) is installed; " INSTALL_HINT);
  VK_TRY(r);
  if ((st = vkfn_load_instance(g->inst, err)) != LT_OK) goto out;
  if (validation) {
    PFN_vkCreateDebugUtilsMessengerEXT mk =
        (PFN_vkCreateDebugUtilsMessengerEXT)vkGetInstanceProcAddr(g->inst, "vkCreateDebugUtilsMessengerEXT");
    if (mk) {
      VkDebugUtilsMessengerCreateInfoEXT mi = {.sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
                                               .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT |
                                                                  VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT,
                                               .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                                                              VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT,
                                               .pfnUserCallback = on_validation,
                                               .pUserData = g};
      VK_TRY(mk(g->inst, &mi, NULL, &g->messenger));
    }
  }
out:
  return st;
}

/* Picks a physical device: by index or UUID when asked (from_env: the ask is LATHE_DEVICE, and a refusal names it),
 * else the best kind (discrete first). */
static lt_status_t choose_device(gpu_t *g, const char *want, bool from_env, lt_err_t *err) {
  lt_status_t st = LT_OK;
  uint32_t n = 0;
  VkPhysicalDevice *pds = NULL;
  VK_TRY(vkEnumeratePhysicalDevices(g->inst, &n, NULL));
  if (n == 0) return lt_fail(err, LT_E_NO_VULKAN, "no Vulkan device found; " INSTALL_HINT);
  pds = calloc(n, sizeof *pds);
  if (!pds) return lt_fail(err, LT_E_NOMEM, "out of memory listing devices");
  VK_TRY(vkEnumeratePhysicalDevices(g->inst, &n, pds));
  int best = -1;
  gpu_kind_t best_kind = GPU_KIND_OTHER;
  char list[360] = ""; /* "index = name [UUID]" of each usable device, for the error when none matches */
  size_t len = 0;
  for (uint32_t i = 0; i < n; i++) {
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(pds[i], &props);
    if (props.apiVersion < VK_API_VERSION_1_1) continue;
    if (want && *want) {
      VkPhysicalDeviceIDProperties idp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES};
      VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &idp};
      vkGetPhysicalDeviceProperties2(pds[i], &p2);
      char u[37];
      gpu_uuid_str(idp.deviceUUID, u);
      char idx[16];
      snprintf(idx, sizeof idx, "%u", i);
      if (len < sizeof list)
        len +=
            (size_t)snprintf(list + len, sizeof list - len, "%s%u = %s [%s]", len ? ", " : "", i, props.deviceName, u);
      if (strcmp(want, idx) == 0 || strcasecmp(want, u) == 0) {
        best = (int)i;
        break;
      }
      continue;
    }
    gpu_kind_t k = kind_of(props.deviceType);
    if (best < 0 || k > best_kind) {
      best = (int)i;
      best_kind = k;
    }
  }
  if (best < 0) {
    st = want && *want
             ? lt_fail(err, LT_E_INVALID, "%s%s%s matches no Vulkan device; name one by index or UUID: %s",
                       from_env ? "LATHE_DEVICE=" : "device ", want, from_env ? "" : " (--device or LATHE_DEVICE)",
                       list[0] ? list : "(none with Vulkan 1.1)")
             : lt_fail(err, LT_E_NO_VULKAN, "no Vulkan 1.1+ device found; " INSTALL_HINT);
    goto out;
  }
  g->phys = pds[best];
  g->caps.device_index = (uint32_t)best;
out:
  free(pds);
  return st;
}

/* Fills g->caps and picks memory types. */
static void query_caps(gpu_t *g) {
  gpu_caps_t *c = &g->caps;
  VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  VkPhysicalDeviceDriverProperties drv = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES, .pNext = &sg};
  VkPhysicalDeviceIDProperties idp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES, .pNext = &drv};
  VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &idp};
  vkGetPhysicalDeviceProperties2(g->phys, &p2);
  const VkPhysicalDeviceLimits *lim = &p2.properties.limits;
  snprintf(c->name, sizeof c->name, "%s", p2.properties.deviceName);
  snprintf(c->driver_name, sizeof c->driver_name, "%s", drv.driverName);
  snprintf(c->driver_info, sizeof c->driver_info, "%s", drv.driverInfo);
  c->vendor_id = p2.properties.vendorID;
  c->device_id = p2.properties.deviceID;
  c->driver_version = p2.properties.driverVersion;
  c->api_version = p2.properties.apiVersion;
  memcpy(c->device_uuid, idp.deviceUUID, 16);
  c->kind = kind_of(p2.properties.deviceType);
  c->subgroup_size = sg.subgroupSize ? sg.subgroupSize : 1;
  bool sg_compute = (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) != 0;
  c->subgroup_arith = sg_compute && (sg.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
  c->subgroup_shuffle = sg_compute && (sg.supportedOperations & VK_SUBGROUP_FEATURE_SHUFFLE_BIT);
  c->max_shared = lim->maxComputeSharedMemorySize;
  c->max_wg_invocations = lim->maxComputeWorkGroupInvocations;
  for (int i = 0; i < 3; i++) c->max_wg_count[i] = lim->maxComputeWorkGroupCount[i];
  c->max_push = lim->maxPushConstantsSize;
  c->max_storage_range = lim->maxStorageBufferRange;
  /* LATHE_MAX_BINDING lowers the binding limit (tests use it to make small models split their weights). */
  const char *mb = getenv("LATHE_MAX_BINDING");
  if (mb && *mb) {
    unsigned long long v = strtoull(mb, NULL, 10);
    if (v >= 1024 && v < c->max_storage_range) c->max_storage_range = v;
  }
  c->min_storage_align = lim->minStorageBufferOffsetAlignment;
  c->max_texels = lim->maxTexelBufferElements;
  c->min_texel_align = lim->minTexelBufferOffsetAlignment ? lim->minTexelBufferOffsetAlignment : 1;
  c->texel_formats = 0;
  for (uint32_t t = GPU_TEXEL_NONE + 1; t < GPU_TEXEL_COUNT; t++) {
    VkFormatProperties fp;
    vkGetPhysicalDeviceFormatProperties(g->phys, gpu_texel_vk_format((gpu_texel_t)t), &fp);
    if (fp.bufferFeatures & VK_FORMAT_FEATURE_UNIFORM_TEXEL_BUFFER_BIT) c->texel_formats |= 1u << t;
  }

  VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
  VkPhysicalDeviceProperties2 p3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3};
  vkGetPhysicalDeviceProperties2(g->phys, &p3);
  c->max_alloc = m3.maxMemoryAllocationSize;

  VkPhysicalDeviceShaderFloat16Int8Features f16 = {.sType =
                                                       VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
  VkPhysicalDevice8BitStorageFeatures s8 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES,
                                            .pNext = &f16};
  VkPhysicalDevice16BitStorageFeatures s16 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
                                              .pNext = &s8};
  VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &s16};
  vkGetPhysicalDeviceFeatures2(g->phys, &f2);
  c->storage16 = s16.storageBuffer16BitAccess;
  c->storage8 = s8.storageBuffer8BitAccess;
  c->float16 = f16.shaderFloat16;
  c->int8 = f16.shaderInt8;
  c->int_dot = has_dev_ext(g->phys, VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME);

  vkGetPhysicalDeviceMemoryProperties(g->phys, &g->memprops);
  const VkPhysicalDeviceMemoryProperties *mp = &g->memprops;
  uint64_t biggest_local = 0;
  for (uint32_t h = 0; h < mp->memoryHeapCount; h++)
    if ((mp->memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) && mp->memoryHeaps[h].size > biggest_local)
      biggest_local = mp->memoryHeaps[h].size;
  c->device_local_bytes = biggest_local;
  const VkMemoryPropertyFlags hv = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  int uni = -1, local = -1, staging = -1;
  for (uint32_t t = 0; t < mp->memoryTypeCount; t++) {
    VkMemoryPropertyFlags f = mp->memoryTypes[t].propertyFlags;
    uint64_t heap = mp->memoryHeaps[mp->memoryTypes[t].heapIndex].size;
    if ((f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) && (f & hv) == hv && uni < 0 && heap * 2 >= biggest_local)
      uni = (int)t;
    if ((f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) && local < 0) local = (int)t;
    if ((f & hv) == hv && (staging < 0 || (f & VK_MEMORY_PROPERTY_HOST_CACHED_BIT))) staging = (int)t;
  }
  c->unified = uni >= 0 && !g->force_staging;
  g->type_device = (uint32_t)(c->unified ? uni : (local >= 0 ? local : staging));
  g->type_staging = (uint32_t)(c->unified ? uni : staging);
}

/* Creates the logical device with the optional features the device has, and one compute queue. */
static lt_status_t make_device(gpu_t *g, lt_err_t *err) {
  lt_status_t st = LT_OK;
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(g->phys, &nq, NULL);
  VkQueueFamilyProperties qf[32];
  if (nq > 32) nq = 32;
  vkGetPhysicalDeviceQueueFamilyProperties(g->phys, &nq, qf);
  int fam = -1;
  for (uint32_t i = 0; i < nq; i++) {
    /* Prefer a compute queue without graphics (async compute), else any compute queue. */
    if (!(qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT)) continue;
    if (fam < 0 || !(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) fam = (int)i;
  }
  if (fam < 0) return lt_fail(err, LT_E_UNSUPPORTED, "device %s has no compute queue", g->caps.name);
  g->qfam = (uint32_t)fam;
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                .queueFamilyIndex = g->qfam,
                                .queueCount = 1,
                                .pQueuePriorities = &prio};
  VkPhysicalDeviceShaderFloat16Int8Features f16 = {.sType =
                                                       VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES,
                                                   .shaderFloat16 = g->caps.float16,
                                                   .shaderInt8 = g->caps.int8};
  VkPhysicalDevice8BitStorageFeatures s8 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES,
                                            .pNext = &f16,
                                            .storageBuffer8BitAccess = g->caps.storage8};
  VkPhysicalDevice16BitStorageFeatures s16 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
                                              .pNext = &s8,
                                              .storageBuffer16BitAccess = g->caps.storage16};
  VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &s16};
  VkDeviceCreateInfo di = {
      .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .pNext = &f2, .queueCreateInfoCount = 1, .pQueueCreateInfos = &qi};
  VK_TRY(vkCreateDevice(g->phys, &di, NULL, &g->dev));
  vkGetDeviceQueue(g->dev, g->qfam, 0, &g->queue);
  VkCommandPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                .queueFamilyIndex = g->qfam};
  VK_TRY(vkCreateCommandPool(g->dev, &pi, NULL, &g->pool));
out:
  return st;
}

/* Builds the capability defines that every shader sees. */
static void make_defines(gpu_t *g) {
  const gpu_caps_t *c = &g->caps;
  snprintf(g->defines, sizeof g->defines,
           "LATHE_GLSL=1;SUBGROUP_SIZE=%u;HAS_SUBGROUP_ARITH=%d;HAS_SUBGROUP_SHUFFLE=%d;HAS_STORAGE16=%d;"
           "HAS_STORAGE8=%d;HAS_FLOAT16=%d;HAS_INT8=%d;IS_CPU=%d",
           c->subgroup_size, c->subgroup_arith, c->subgroup_shuffle, c->storage16, c->storage8, c->float16, c->int8,
           c->kind == GPU_KIND_CPU);
}

/* Picks the shader cache folder and creates it (mode 0700); leaves it empty when it cannot be made. */
static void make_cache_dir(gpu_t *g, const gpu_opts_t *o) {
  g->cache_dir[0] = '\0';
  if (o->no_disk_cache) return;
  const char *env = o->cache_dir ? o->cache_dir : getenv("LATHE_CACHE_DIR");
  char path[1024];
  if (env && *env)
    snprintf(path, sizeof path, "%s", env);
  else if (getenv("XDG_CACHE_HOME") && *getenv("XDG_CACHE_HOME"))
    snprintf(path, sizeof path, "%s/lathe", getenv("XDG_CACHE_HOME"));
  else if (getenv("HOME") && *getenv("HOME"))
    snprintf(path, sizeof path, "%s/.cache/lathe", getenv("HOME"));
  else
    return;
  /* mkdir -p */
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    mkdir(path, 0700);
    *p = '/';
  }
  mkdir(path, 0700);
  char spv[1100];
  snprintf(spv, sizeof spv, "%s/spirv", path);
  mkdir(spv, 0700);
  struct stat sb;
  if (stat(spv, &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(g->cache_dir, sizeof g->cache_dir, "%s", path);
}

gpu_t *gpu_new(const gpu_opts_t *opts, lt_err_t *err) {
  gpu_opts_t def = {0};
  const gpu_opts_t *o = opts ? opts : &def;
  lt_status_t st = LT_OK;
  gpu_t *g = calloc(1, sizeof *g);
  if (!g) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  g->chunk = 100;
  const char *fs = getenv("LATHE_FORCE_STAGING");
  g->force_staging = fs && *fs && strcmp(fs, "0") != 0;
  int validation = o->validation > 0;
  if (o->validation == 0) {
    const char *v = getenv("LATHE_VALIDATION");
    validation = v && *v && strcmp(v, "0") != 0;
  }
  if ((st = make_instance(g, validation != 0, err)) != LT_OK) goto out;
  const char *want = o->device ? o->device : getenv("LATHE_DEVICE");
  if ((st = choose_device(g, want, !o->device, err)) != LT_OK) goto out;
  query_caps(g);
  if ((st = make_device(g, err)) != LT_OK) goto out;
  make_defines(g);
  make_cache_dir(g, o);
  gpu_shader_init(g);
  st = gpu_pcache_open(g, err);
out:
  if (st != LT_OK) gpu_destroy(&g);
  return g;
}

void gpu_destroy(gpu_t **gp) {
  if (!gp || !*gp) return;
  gpu_t *g = *gp;
  if (g->dev) {
    vkDeviceWaitIdle(g->dev);
    gpu_buf_destroy(&g->staging);
    gpu_pcache_save(g);
    gpu_pipelines_free(g);
    if (g->pcache) vkDestroyPipelineCache(g->dev, g->pcache, NULL);
    for (gpu_block_t *b = g->blocks, *nx; b; b = nx) {
      nx = b->next;
      vkFreeMemory(g->dev, b->mem, NULL);
      free(b->free);
      free(b);
    }
    if (g->pool) vkDestroyCommandPool(g->dev, g->pool, NULL);
    vkDestroyDevice(g->dev, NULL);
  }
  if (g->messenger) {
    PFN_vkDestroyDebugUtilsMessengerEXT rm =
        (PFN_vkDestroyDebugUtilsMessengerEXT)vkGetInstanceProcAddr(g->inst, "vkDestroyDebugUtilsMessengerEXT");
    if (rm) rm(g->inst, g->messenger, NULL);
  }
  if (g->inst) vkDestroyInstance(g->inst, NULL);
  free(g);
  *gp = NULL;
}

const gpu_caps_t *gpu_caps(const gpu_t *g) { return &g->caps; }
const gpu_stats_t *gpu_stats(const gpu_t *g) { return &g->stats; }
void gpu_set_chunk(gpu_t *g, uint32_t n) { g->chunk = n ? n : 1; }

int gpu_list_devices(void *file, lt_err_t *err) {
  FILE *f = file;
  gpu_t tmp = {0};
  lt_status_t st = make_instance(&tmp, false, err);
  if (st != LT_OK) return st;
  uint32_t n = 0;
  VkPhysicalDevice pds[16];
  vkEnumeratePhysicalDevices(tmp.inst, &n, NULL);
  if (n > 16) n = 16;
  vkEnumeratePhysicalDevices(tmp.inst, &n, pds);
  for (uint32_t i = 0; i < n; i++) {
    VkPhysicalDeviceIDProperties idp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &idp};
    vkGetPhysicalDeviceProperties2(pds[i], &p2);
    char u[37];
    gpu_uuid_str(idp.deviceUUID, u);
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(pds[i], &mp);
    uint64_t local = 0;
    for (uint32_t h = 0; h < mp.memoryHeapCount; h++)
      if ((mp.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) && mp.memoryHeaps[h].size > local)
        local = mp.memoryHeaps[h].size;
    fprintf(f, "%u\t%s\t%s\t%s\t%llu\n", i, kind_str(kind_of(p2.properties.deviceType)), p2.properties.deviceName, u,
            (unsigned long long)(local >> 20));
  }
  vkDestroyInstance(tmp.inst, NULL);
  return (int)n;
}

/* ---- memory blocks ---- */

static bool block_take(gpu_block_t *b, uint64_t size, uint64_t align, uint64_t *off) {
  for (uint32_t i = 0; i < b->n_free; i++) {
    gpu_range_t *r = &b->free[i];
    uint64_t start = (r->off + align - 1) / align * align;
    if (start + size > r->off + r->size) continue;
    uint64_t end = start + size, r_end = r->off + r->size;
    /* Split the free range into [r.off, start) and [end, r_end). */
    if (start > r->off && end < r_end) {
      if (b->n_free == b->cap_free) {
        uint32_t cap = b->cap_free ? b->cap_free * 2 : 8;
        gpu_range_t *nf = realloc(b->free, cap * sizeof *nf);
        if (!nf) return false;
        b->free = nf;
        b->cap_free = cap;
        r = &b->free[i];
      }
      memmove(&b->free[i + 2], &b->free[i + 1], (b->n_free - i - 1) * sizeof *r);
      b->free[i + 1] = (gpu_range_t){end, r_end - end};
      r->size = start - r->off;
      b->n_free++;
    } else if (start > r->off) {
      r->size = start - r->off;
    } else if (end < r_end) {
      r->off = end;
      r->size = r_end - end;
    } else {
      memmove(r, r + 1, (b->n_free - i - 1) * sizeof *r);
      b->n_free--;
    }
    *off = start;
    return true;
  }
  return false;
}

static void block_give(gpu_block_t *b, uint64_t off, uint64_t size) {
  uint32_t i = 0;
  while (i < b->n_free && b->free[i].off < off) i++;
  bool join_prev = i > 0 && b->free[i - 1].off + b->free[i - 1].size == off;
  bool join_next = i < b->n_free && off + size == b->free[i].off;
  if (join_prev && join_next) {
    b->free[i - 1].size += size + b->free[i].size;
    memmove(&b->free[i], &b->free[i + 1], (b->n_free - i - 1) * sizeof b->free[0]);
    b->n_free--;
  } else if (join_prev) {
    b->free[i - 1].size += size;
  } else if (join_next) {
    b->free[i].off = off;
    b->free[i].size += size;
  } else {
    /* cap_free >= n_free + 1 always holds here: a block starts with one free range and each take that splits
     * grows the array first, so there is room for the range being returned. */
    if (b->n_free == b->cap_free) {
      uint32_t cap = b->cap_free ? b->cap_free * 2 : 8;
      gpu_range_t *nf = realloc(b->free, cap * sizeof *nf);
      if (!nf) return; /* leaks the range inside the block; the block is freed whole later */
      b->free = nf;
      b->cap_free = cap;
    }
    memmove(&b->free[i + 1], &b->free[i], (b->n_free - i) * sizeof b->free[0]);
    b->free[i] = (gpu_range_t){off, size};
    b->n_free++;
  }
}

static gpu_block_t *block_new(gpu_t *g, uint64_t size, uint32_t type, lt_err_t *err) {
  lt_status_t st = LT_OK;
  gpu_block_t *b = calloc(1, sizeof *b);
  if (!b) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  VkMemoryAllocateInfo ai = {
      .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = size, .memoryTypeIndex = type};
  VK_TRY(vkAllocateMemory(g->dev, &ai, NULL, &b->mem));
  if (g->memprops.memoryTypes[type].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT)
    VK_TRY(vkMapMemory(g->dev, b->mem, 0, VK_WHOLE_SIZE, 0, &b->map));
  b->size = size;
  b->type = type;
  b->free = malloc(8 * sizeof *b->free);
  if (!b->free) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  b->cap_free = 8;
  b->n_free = 1;
  b->free[0] = (gpu_range_t){0, size};
  b->next = g->blocks;
  g->blocks = b;
out:
  if (st != LT_OK) {
    if (b->mem) vkFreeMemory(g->dev, b->mem, NULL);
    free(b->free);
    free(b);
    if (st == LT_E_DEVICE_OOM)
      lt_fail(err, st, "out of device memory allocating a %llu-byte block", (unsigned long long)size);
    return NULL;
  }
  return b;
}

static gpu_buf_t *buf_new_typed(gpu_t *g, uint64_t bytes, uint32_t type, lt_err_t *err) {
  lt_status_t st = LT_OK;
  if (bytes == 0) {
    lt_fail(err, LT_E_INVALID, "a buffer of 0 bytes was requested");
    return NULL;
  }
  if (bytes > g->caps.max_storage_range) {
    lt_fail(err, LT_E_LIMIT,
            "a buffer of %llu bytes exceeds this device's maxStorageBufferRange (%llu); split it into pieces",
            (unsigned long long)bytes, (unsigned long long)g->caps.max_storage_range);
    return NULL;
  }
  gpu_buf_t *b = calloc(1, sizeof *b);
  if (!b) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  b->g = g;
  b->size = bytes;
  VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                           .size = bytes,
                           /* Texel use too: ops on CPU drivers read operands through texel views (docs/speed.md). */
                           .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_UNIFORM_TEXEL_BUFFER_BIT |
                                    VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                           .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
  VK_TRY(vkCreateBuffer(g->dev, &bi, NULL, &b->buf));
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(g->dev, b->buf, &req);
  if (!(req.memoryTypeBits & (1u << type))) {
    st = lt_fail(err, LT_E_UNSUPPORTED, "the chosen memory type cannot hold storage buffers on %s", g->caps.name);
    goto out;
  }
  uint64_t align = req.alignment > g->caps.min_storage_align ? req.alignment : g->caps.min_storage_align;
  b->alloc_size = req.size;
  for (gpu_block_t *blk = g->blocks; blk && !b->blk; blk = blk->next)
    if (blk->type == type && block_take(blk, req.size, align, &b->off)) b->blk = blk;
  if (!b->blk) {
    uint64_t sz = req.size > BLOCK_BYTES ? req.size : BLOCK_BYTES;
    if (g->caps.max_alloc && sz > g->caps.max_alloc) sz = req.size;
    gpu_block_t *blk = block_new(g, sz, type, err);
    if (!blk) {
      st = err ? err->code : LT_E_DEVICE_OOM;
      goto out;
    }
    if (!block_take(blk, req.size, align, &b->off)) {
      st = lt_fail(err, LT_E_NOMEM, "block sub-allocation failed");
      goto out;
    }
    b->blk = blk;
  }
  b->blk->live++;
  VK_TRY(vkBindBufferMemory(g->dev, b->buf, b->blk->mem, b->off));
  g->stats.bytes_allocated += b->alloc_size;
  if (g->stats.bytes_allocated > g->stats.bytes_peak) g->stats.bytes_peak = g->stats.bytes_allocated;
out:
  if (st != LT_OK) {
    gpu_buf_destroy(&b);
    return NULL;
  }
  return b;
}

gpu_buf_t *gpu_buf_new(gpu_t *g, uint64_t bytes, lt_err_t *err) { return buf_new_typed(g, bytes, g->type_device, err); }

void gpu_buf_destroy(gpu_buf_t **bp) {
  if (!bp || !*bp) return;
  gpu_buf_t *b = *bp;
  gpu_t *g = b->g;
  for (uint32_t i = 0; i < b->n_views; i++) vkDestroyBufferView(g->dev, b->views[i].view, NULL);
  free(b->views);
  if (b->buf) vkDestroyBuffer(g->dev, b->buf, NULL);
  if (b->blk) {
    block_give(b->blk, b->off, b->alloc_size);
    g->stats.bytes_allocated -= b->alloc_size;
    if (--b->blk->live == 0) {
      /* Free empty blocks so long-lived daemons return memory. */
      gpu_block_t **pp = &g->blocks;
      while (*pp && *pp != b->blk) pp = &(*pp)->next;
      if (*pp) *pp = b->blk->next;
      vkFreeMemory(g->dev, b->blk->mem, NULL);
      free(b->blk->free);
      free(b->blk);
    }
  }
  free(b);
  *bp = NULL;
}

uint64_t gpu_buf_size(const gpu_buf_t *b) { return b->size; }

lt_status_t gpu_run_once(gpu_t *g, void (*fn)(VkCommandBuffer cb, void *ctx), void *ctx, lt_err_t *err) {
  lt_status_t st = LT_OK;
  VkCommandBuffer cb = VK_NULL_HANDLE;
  VkFence fence = VK_NULL_HANDLE;
  VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                    .commandPool = g->pool,
                                    .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                    .commandBufferCount = 1};
  VK_TRY(vkAllocateCommandBuffers(g->dev, &ai, &cb));
  VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                 .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
  VK_TRY(vkBeginCommandBuffer(cb, &bi));
  VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                        .srcAccessMask = VK_ACCESS_MEMORY_WRITE_BIT,
                        .dstAccessMask = VK_ACCESS_MEMORY_READ_BIT | VK_ACCESS_MEMORY_WRITE_BIT};
  vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, 0, 1, &mb, 0, NULL,
                       0, NULL);
  fn(cb, ctx);
  mb.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
  vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
  VK_TRY(vkEndCommandBuffer(cb));
  VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  VK_TRY(vkCreateFence(g->dev, &fi, NULL, &fence));
  VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &cb};
  VK_TRY(vkQueueSubmit(g->queue, 1, &si, fence));
  g->stats.submits++;
  VK_TRY(vkWaitForFences(g->dev, 1, &fence, VK_TRUE, UINT64_MAX));
out:
  if (fence) vkDestroyFence(g->dev, fence, NULL);
  if (cb) vkFreeCommandBuffers(g->dev, g->pool, 1, &cb);
  return st;
}

typedef struct copy_ctx {
  VkBuffer src, dst;
  VkBufferCopy region;
} copy_ctx_t;

static void record_copy(VkCommandBuffer cb, void *p) {
  copy_ctx_t *c = p;
  vkCmdCopyBuffer(cb, c->src, c->dst, 1, &c->region);
}

static lt_status_t check_range(const gpu_buf_t *b, uint64_t off, uint64_t n, const char *what, lt_err_t *err) {
  if (off > b->size || n > b->size - off)
    return lt_fail(err, LT_E_INVALID, "%s of %llu bytes at offset %llu is outside a %llu-byte buffer", what,
                   (unsigned long long)n, (unsigned long long)off, (unsigned long long)b->size);
  return LT_OK;
}

static lt_status_t ensure_staging(gpu_t *g, lt_err_t *err) {
  if (g->staging) return LT_OK;
  g->staging = buf_new_typed(g, STAGING_BYTES, g->type_staging, err);
  return g->staging ? LT_OK : (err ? err->code : LT_E_DEVICE_OOM);
}

/* Moves bytes between host memory and a buffer, through the mapping or a staging buffer. */
static lt_status_t transfer(gpu_buf_t *b, uint64_t off, void *host, uint64_t n, bool up, lt_err_t *err) {
  gpu_t *g = b->g;
  lt_status_t st = check_range(b, off, n, up ? "an upload" : "a download", err);
  if (st != LT_OK || n == 0) return st;
  if (up)
    g->stats.bytes_uploaded += n;
  else
    g->stats.bytes_downloaded += n;
  if (b->blk->map && !g->force_staging) {
    char *p = (char *)b->blk->map + b->off + off;
    if (up)
      memcpy(p, host, n);
    else {
      /* Shader writes were made host-visible by the barrier that ends every submission. */
      memcpy(host, p, n);
    }
    return LT_OK;
  }
  if ((st = ensure_staging(g, err)) != LT_OK) return st;
  char *stage = (char *)g->staging->blk->map + g->staging->off;
  for (uint64_t done = 0; done < n;) {
    uint64_t k = n - done < STAGING_BYTES ? n - done : STAGING_BYTES;
    copy_ctx_t c = {.region = {.size = k}};
    if (up) {
      memcpy(stage, (char *)host + done, k);
      c.src = g->staging->buf;
      c.dst = b->buf;
      c.region.dstOffset = off + done;
    } else {
      c.src = b->buf;
      c.dst = g->staging->buf;
      c.region.srcOffset = off + done;
    }
    if ((st = gpu_run_once(g, record_copy, &c, err)) != LT_OK) return st;
    if (!up) memcpy((char *)host + done, stage, k);
    done += k;
  }
  return LT_OK;
}

lt_status_t gpu_upload(gpu_buf_t *b, uint64_t off, const void *src, uint64_t n, lt_err_t *err) {
  return transfer(b, off, (void *)src, n, true, err);
}

lt_status_t gpu_download(gpu_buf_t *b, uint64_t off, void *dst, uint64_t n, lt_err_t *err) {
  return transfer(b, off, dst, n, false, err);
}

typedef struct fill_ctx {
  VkBuffer buf;
  uint64_t off, n;
} fill_ctx_t;

static void record_fill(VkCommandBuffer cb, void *p) {
  fill_ctx_t *f = p;
  vkCmdFillBuffer(cb, f->buf, f->off, f->n, 0);
}

lt_status_t gpu_buf_zero(gpu_buf_t *b, uint64_t off, uint64_t n, lt_err_t *err) {
  lt_status_t st = check_range(b, off, n, "a fill", err);
  if (st != LT_OK || n == 0) return st;
  if (b->blk->map && !b->g->force_staging) {
    memset((char *)b->blk->map + b->off + off, 0, n);
    return LT_OK;
  }
  if (off % 4 || n % 4) return lt_fail(err, LT_E_INVALID, "gpu_buf_zero needs 4-byte aligned offset and size");
  fill_ctx_t f = {b->buf, off, n};
  return gpu_run_once(b->g, record_fill, &f, err);
}

/* The texel formats: Vulkan's format and the bytes of one texel, by gpu_texel_t. */
static const struct {
  VkFormat vk;
  uint32_t size;
} texel_formats[GPU_TEXEL_COUNT] = {
    [GPU_TEXEL_RGBA32F] = {VK_FORMAT_R32G32B32A32_SFLOAT, 16},
    [GPU_TEXEL_RGBA32UI] = {VK_FORMAT_R32G32B32A32_UINT, 16},
    [GPU_TEXEL_R32UI] = {VK_FORMAT_R32_UINT, 4},
};

uint32_t gpu_texel_size(gpu_texel_t t) { return (unsigned)t < GPU_TEXEL_COUNT ? texel_formats[t].size : 0; }

VkFormat gpu_texel_vk_format(gpu_texel_t t) {
  return (unsigned)t < GPU_TEXEL_COUNT ? texel_formats[t].vk : VK_FORMAT_UNDEFINED;
}

bool gpu_texel_readable(const gpu_caps_t *caps, gpu_texel_t t) {
  return t != GPU_TEXEL_NONE && (unsigned)t < GPU_TEXEL_COUNT && (caps->texel_formats >> t) & 1;
}
