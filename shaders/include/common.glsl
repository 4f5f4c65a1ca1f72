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

// Row `r` of workgroup `g` of a GEMV whose workgroups own `rows` rows each, spread `spread` apart: every block of
// rows * spread rows is shared by spread consecutive workgroups, each taking units of `unit` adjacent rows (a RoPE
// pair, or one row) spread units apart. With spread 1 a workgroup's rows are adjacent. CPU drivers read a workgroup's
// rows side by side; short adjacent rows then interleave in the same memory pages, which defeats the CPU's stream
// prefetcher, while rows a few KiB apart each stream on their own (engine/ops/ops_matmul.c, gemv_spread()).
uint spread_row(uint g, uint r, uint rows, uint spread, uint unit) {
  uint b = g / spread, o = g - b * spread;
  return b * rows * spread + ((r / unit) * spread + o) * unit + r % unit;
}

#endif
