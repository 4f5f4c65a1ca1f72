#version 450
// GEMV for few rows of x: y[M,N] (+)= x[M,K] . w[N,K]^T over columns [k_base, k_base + k_len) of K.
// A workgroup owns ROWS consecutive rows of w (outputs n) and MR rows of x (workgroup y index = block of M);
// its invocations stride over K, KV elements at a time, each keeping MR x ROWS partial sums, which are then
// reduced per subgroup (or through shared memory) and summed in a fixed order. Variants: include/matmul.glsl.
// The C wrapper (engine/ops/ops_matmul.c) counts this shader's loop iterations to size the K chunks (loops marked
// [[unroll]] have trip counts fixed by specialisation and are unrolled): keep gemv_loop_iters() in step.
// GLU=1 (SwiGLU) or 2 (GeGLU): a gated MLP's two products in one dispatch, y = act(x.w^T) * (x.w2^T), over the
// whole of K at once (the wrapper refuses a K that needs chunks); the sums are reduced in the order of the plain
// variant and the activation is eltwise.comp's, so the result is what the three separate dispatches give.
#extension GL_EXT_control_flow_attributes : enable
#if HAS_SUBGROUP_ARITH
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
#define PC_MATMUL 1
#include "pc.h"
#include "common.glsl"
#include "matmul.glsl"
#include "act.glsl"

#ifndef GLU
#define GLU 0
#endif
#define N_ACC (GLU != 0 ? 2u : 1u) // sums kept per (m, r): the gate's, and with GLU the up projection's

layout(constant_id = 1) const uint ROWS = 2; // rows of w (outputs n) per workgroup
layout(constant_id = 2) const uint MR = 1;   // rows of x per workgroup

// red[(a * MR * ROWS + p) * WG_X + slot]: partial sum a (gate, or up with GLU) of pair p = (m, r) from one subgroup
// (or one invocation).
shared float red[N_ACC * MR * ROWS * WG_X];

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint n0 = (gl_WorkGroupID.z * gl_NumWorkGroups.x + gl_WorkGroupID.x) * ROWS;
  const uint mb = gl_WorkGroupID.y * MR;
  if (n0 >= pc.N) return; // the whole workgroup leaves together (the grid's last z row may overhang)
  const uint k_end = pc.k_base + pc.k_len;

  // Rows past M or N read the last row instead (computed, never stored), so the loop needs no branches.
  uint xrow[MR], wrow[ROWS];
  [[unroll]] for (uint m = 0; m < MR; m++) xrow[m] = min(mb + m, pc.M - 1) * pc.x_stride;
  [[unroll]] for (uint r = 0; r < ROWS; r++) wrow[r] = min(n0 + r, pc.N - 1) * pc.w_stride;
  float acc[N_ACC * MR * ROWS];
  [[unroll]] for (uint p = 0; p < N_ACC * MR * ROWS; p++) acc[p] = 0.0;
  for (uint k = pc.k_base + tid * KV; k < k_end; k += WG_X * KV) {
    KTYPE xv[MR];
    [[unroll]] for (uint m = 0; m < MR; m++) xv[m] = x_at(xrow[m] + k);
    [[unroll]] for (uint r = 0; r < ROWS; r++) {
      KTYPE wv = w_at(wrow[r] + k);
      [[unroll]] for (uint m = 0; m < MR; m++) acc[m * ROWS + r] = KDOT(xv[m], wv, acc[m * ROWS + r]);
#if GLU
      KTYPE uv = w2_at(wrow[r] + k);
      [[unroll]] for (uint m = 0; m < MR; m++)
        acc[MR * ROWS + m * ROWS + r] = KDOT(xv[m], uv, acc[MR * ROWS + m * ROWS + r]);
#endif
    }
  }

#if HAS_SUBGROUP_ARITH
  const uint n_slots = gl_NumSubgroups;
  [[unroll]] for (uint p = 0; p < N_ACC * MR * ROWS; p++) {
    float s = subgroupAdd(acc[p]);
    if (subgroupElect()) red[p * WG_X + gl_SubgroupID] = s;
  }
#else
  const uint n_slots = WG_X;
  [[unroll]] for (uint p = 0; p < N_ACC * MR * ROWS; p++) red[p * WG_X + tid] = acc[p];
#endif
  barrier();
  for (uint p = tid; p < MR * ROWS; p += WG_X) {
    uint m = mb + p / ROWS, n = n0 + p % ROWS;
    if (m < pc.M && n < pc.N) {
      float s = 0.0;
      for (uint i = 0; i < n_slots; i++) s += red[p * WG_X + i];
#if GLU
      float u = 0.0;
      for (uint i = 0; i < n_slots; i++) u += red[(MR * ROWS + p) * WG_X + i];
      s = (GLU == 1 ? silu(s) : gelu_tanh(s)) * u;
#endif
      store_y(m, n, s);
    }
  }
}
