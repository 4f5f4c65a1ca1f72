// Shared helpers for every Lathe compute shader.
#ifndef LATHE_COMMON_GLSL
#define LATHE_COMMON_GLSL

// Workgroup size x, set by specialisation constant 0, declared here before any helper uses it. Helpers use WG_X:
// glslang binds a gl_WorkGroupSize written before the layout(local_size_x_id) line to the default (1, 1, 1)
// (tests/engine/test_driver_traps.c pins this down), which once made every shader index as if its workgroups had
// one invocation.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG_X = 64;

// Flat index of this invocation in a 1D problem dispatched as a 2D grid of workgroups
// (x up to 65535 groups, then y): see op_grid_1d() in engine/ops/ops.c.
uint flat_index() {
  return (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * WG_X + gl_LocalInvocationID.x;
}

#endif
