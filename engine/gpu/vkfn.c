/* Run-time loading of the Vulkan loader library. */
#include "engine/gpu/vkfn.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>

#define VKFN_DEFINE(name) PFN_##name lt_##name;
VKFN_DEFINE(vkGetInstanceProcAddr)
VKFN_GLOBAL(VKFN_DEFINE)
VKFN_INSTANCE(VKFN_DEFINE)
#undef VKFN_DEFINE

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *lib;
static int instance_loaded;

lt_status_t vkfn_load(lt_err_t *err) {
  lt_status_t st = LT_OK;
  pthread_mutex_lock(&lock);
  if (!lib) {
    /* LATHE_VULKAN_LIBRARY lets tests point at a missing library to check the error path. */
    const char *want = getenv("LATHE_VULKAN_LIBRARY");
    const char *names[] = {want && *want ? want : "libvulkan.so.1", "libvulkan.so"};
    for (unsigned i = 0; i < (want && *want ? 1u : 2u) && !lib; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      st = lt_fail(err, LT_E_NO_VULKAN,
                   "the Vulkan loader (libvulkan.so.1) is not installed; apt-get install libvulkan1 "
                   "mesa-vulkan-drivers");
      goto out;
    }
    lt_vkGetInstanceProcAddr = (PFN_vkGetInstanceProcAddr)dlsym(lib, "vkGetInstanceProcAddr");
    if (!lt_vkGetInstanceProcAddr) {
      dlclose(lib);
      lib = NULL;
      st = lt_fail(err, LT_E_NO_VULKAN, "libvulkan.so.1 has no vkGetInstanceProcAddr; reinstall libvulkan1");
      goto out;
    }
#define VKFN_GET(name) lt_##name = (PFN_##name)lt_vkGetInstanceProcAddr(NULL, #name);
    VKFN_GLOBAL(VKFN_GET)
#undef VKFN_GET
    if (!lt_vkCreateInstance || !lt_vkEnumerateInstanceLayerProperties) {
      st = lt_fail(err, LT_E_NO_VULKAN, "the Vulkan loader lacks core entry points; apt-get install libvulkan1");
      goto out;
    }
  }
out:
  pthread_mutex_unlock(&lock);
  return st;
}

lt_status_t vkfn_load_instance(VkInstance inst, lt_err_t *err) {
  lt_status_t st = LT_OK;
  pthread_mutex_lock(&lock);
  if (!instance_loaded) {
    const char *missing = NULL;
#define VKFN_GET(name)                                                                                                 \
  lt_##name = (PFN_##name)lt_vkGetInstanceProcAddr(inst, #name);                                                       \
  if (!lt_##name && !missing) missing = #name;
    VKFN_INSTANCE(VKFN_GET)
#undef VKFN_GET
    if (missing)
      st = lt_fail(err, LT_E_NO_VULKAN, "the Vulkan loader does not provide %s (Vulkan 1.2 needed)", missing);
    else
      instance_loaded = 1;
  }
  pthread_mutex_unlock(&lock);
  return st;
}
