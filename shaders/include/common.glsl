// Shared helpers for every Lathe compute shader.
#ifndef LATHE_COMMON_GLSL
#define LATHE_COMMON_GLSL

// Workgroup size x, set by specialisation constant 0. Use WG_X, never gl_WorkGroupSize: with a spec-ID
// workgroup size the SPIR-V optimiser can fold gl_WorkGroupSize to the declared default (seen on lavapipe,
// Mesa 22.3), so shaders would index as if the workgroup had one invocation.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG_X = 64;

// Flat index of this invocation in a 1D problem dispatched as a 2D grid of workgroups
// (x up to 65535 groups, then y): see op_grid_1d() in engine/ops.c.
uint flat_index() {
  return (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * WG_X + gl_LocalInvocationID.x;
}

#endif
