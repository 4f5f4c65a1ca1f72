/* lathe-devices: lists the Vulkan devices Lathe can use and the capabilities of the one it would pick. */
#include <stdio.h>

#include "engine/gpu/gpu.h"

int main(void) {
  lt_err_t err = {0};
  int n = gpu_list_devices(stdout, &err);
  if (n < 0) {
    fprintf(stderr, "lathe-devices: %s\n", err.msg);
    return 1;
  }
  gpu_t *g = gpu_new(NULL, &err);
  if (!g) {
    fprintf(stderr, "lathe-devices: %s\n", err.msg);
    return 1;
  }
  const gpu_caps_t *c = gpu_caps(g);
  printf("chosen: %s (%s, %s)\n", c->name, c->driver_name, c->driver_info);
  printf("  subgroup %u (arith %d, shuffle %d), shared %u B, storage16 %d, storage8 %d, float16 %d, int8 %d, "
         "int-dot %d\n",
         c->subgroup_size, c->subgroup_arith, c->subgroup_shuffle, c->max_shared, c->storage16, c->storage8, c->float16,
         c->int8, c->int_dot);
  printf("  max storage range %llu, max alloc %llu, device-local %llu, unified memory %d\n",
         (unsigned long long)c->max_storage_range, (unsigned long long)c->max_alloc,
         (unsigned long long)c->device_local_bytes, c->unified);
  gpu_destroy(&g);
  return 0;
}
