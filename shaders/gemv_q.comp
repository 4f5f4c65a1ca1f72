#version 450
// GEMV with a quantised weight for few rows of x: y[M,N] (+)= x[M,K] . dequant(w)[N,K]^T over columns
// [k_base, k_base + k_len) of K. A workgroup owns ROWS consecutive rows of w (outputs n) and MR rows of x
// (workgroup y index = block of M); its invocations stride over K OPL octets (8 elements each, one scale for all)
// at a time, each keeping MR x ROWS partial sums (the scale applied once per step), which are then reduced per subgroup
// (or through shared memory) and summed in a fixed order. Variants: include/matmul_q.glsl.
// The C wrapper (engine/ops/ops_matmul_q.c) counts this shader's loop iterations to size the K chunks: keep
// gemv_q_loop_iters() in step with the loops here.
#extension GL_EXT_control_flow_attributes : enable
#if HAS_SUBGROUP_ARITH
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
#define PC_MATMUL_Q 1
#include "pc.h"
#include "common.glsl"
#include "matmul_q.glsl"

layout(constant_id = 1) const uint ROWS = 2; // rows of w (outputs n) per workgroup
layout(constant_id = 2) const uint MR = 1;   // rows of x per workgroup

// red[p * WG_X + slot]: partial sum of pair p = (m, r) from one subgroup (or one invocation).
shared float red[MR * ROWS * WG_X];

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint n0 = (gl_WorkGroupID.z * gl_NumWorkGroups.x + gl_WorkGroupID.x) * ROWS;
  const uint mb = gl_WorkGroupID.y * MR;
  if (n0 >= pc.N) return; // the whole workgroup leaves together (the grid's last z row may overhang)
  const uint k_end = pc.k_base + pc.k_len;

  float acc[MR * ROWS];
  [[unroll]] for (uint p = 0; p < MR * ROWS; p++) acc[p] = 0.0;
  // OPL octets a step (one, or on CPU drivers the two or four of a texel), all under one scale (the group is a
  // multiple of 8 * OPL); their products are summed before the scale is applied.
  for (uint k = pc.k_base + tid * 8u * OPL; k < k_end; k += WG_X * 8u * OPL) {
    vec4 xl[MR * OPL], xh[MR * OPL];
    [[unroll]] for (uint m = 0; m < MR; m++)
      [[unroll]] for (uint o = 0; o < OPL; o++) load_x8(mb + m, k + 8u * o, k_end, xl[m * OPL + o], xh[m * OPL + o]);
    [[unroll]] for (uint r = 0; r < ROWS; r++) {
      uint n = n0 + r;
      if (n >= pc.N) continue;
      vec4 ql[OPL], qh[OPL];
      load_octets(n, k, ql, qh);
      float s = scale_at(n, k);
      [[unroll]] for (uint m = 0; m < MR; m++) {
        float d = dot(xl[m * OPL], ql[0]) + dot(xh[m * OPL], qh[0]);
        [[unroll]] for (uint o = 1; o < OPL; o++) d += dot(xl[m * OPL + o], ql[o]) + dot(xh[m * OPL + o], qh[o]);
        acc[m * ROWS + r] = fma(s, d, acc[m * ROWS + r]);
      }
    }
  }

#if HAS_SUBGROUP_ARITH
  const uint n_slots = gl_NumSubgroups;
  [[unroll]] for (uint p = 0; p < MR * ROWS; p++) {
    float s = subgroupAdd(acc[p]);
    if (subgroupElect()) red[p * WG_X + gl_SubgroupID] = s;
  }
#else
  const uint n_slots = WG_X;
  [[unroll]] for (uint p = 0; p < MR * ROWS; p++) red[p * WG_X + tid] = acc[p];
#endif
  barrier();
  for (uint p = tid; p < MR * ROWS; p += WG_X) {
    uint m = mb + p / ROWS, n = n0 + p % ROWS;
    if (m < pc.M && n < pc.N) {
      float s = 0.0;
      for (uint i = 0; i < n_slots; i++) s += red[p * WG_X + i];
      store_y(m, n, s);
    }
  }
}
