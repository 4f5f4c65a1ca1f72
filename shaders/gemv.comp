#version 450
// GEMV for few rows of x: y[M,N] (+)= x[M,K] . w[N,K]^T over columns [k_base, k_base + k_len) of K.
// A workgroup owns ROWS rows of w (outputs n, SPREAD rows apart: spread_row) and MR rows of x (workgroup y index =
// block of M); its invocations stride over K, KV elements at a time, each keeping MR x ROWS partial sums, which are
// then reduced per subgroup (or through shared memory) and summed in a fixed order. Variants: include/matmul.glsl.
// The C wrapper (engine/ops/ops_matmul.c) counts this shader's loop iterations to size the K chunks (loops marked
// [[unroll]] have trip counts fixed by specialisation and are unrolled): keep gemv_loop_iters() in step.
// GLU=1 (SwiGLU) or 2 (GeGLU): a gated MLP's two products in one dispatch, y = act(x.w^T) * (x.w2^T), over the
// whole of K at once (the wrapper refuses a K that needs chunks); the sums are reduced in the order of the plain
// variant and the activation is eltwise.comp's, so the result is what the three separate dispatches give.
// QKV=1: three products of one x in one dispatch, y = x.w^T ([M, N]), y2 = x.w2^T and y3 = x.w3^T ([M, n2] each),
// the attention's q, k and v: workgroups walk the rows of w, then w2, then w3 (ROWS divides N and n2, so each
// workgroup reads one matrix), each row summed as the plain variant sums it.
// ROPE=1 (with QKV): q and k leave rotated by RoPE at the position pos[m], as rope.comp turns them (every dim of a
// head, (cos, sin) from the table [rope_max_pos, head_dim / 2]): a workgroup's rows are taken in rotation pairs
// (slots 2j and 2j + 1 hold a pair's two rows), so each pair's two sums meet in its epilogue.
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
#ifndef QKV
#define QKV 0
#endif
#ifndef NORM
#define NORM 0
#endif
#ifndef ROPE
#define ROPE 0
#endif
#if ROPE
layout(std430, binding = 8) readonly buffer P { int pos[]; };
layout(std430, binding = 9) readonly buffer T { vec2 cs_table[]; }; // (cos, sin)
// The row of w (and of y) behind slot `slot` of q or k: pairs adjacent in slots, wherever they are in the head.
uint rope_row(uint slot) {
  if (pc.rope_neox == 0u) return slot;
  uint head = slot / pc.rope_hd, i = slot - head * pc.rope_hd;
  return head * pc.rope_hd + (i >> 1) + (i & 1u) * (pc.rope_hd >> 1);
}
#endif
// NORM (with GLU or QKV): x is the residual stream and the products see RMSNorm(x) * g: each (x_k g_k) enters the
// sums, the rows' sums of squares are kept beside them, and every result is scaled by 1 / sqrt(mean(x^2) + eps).
#if NORM
// The norm weights g[k .. k+4): through a texel view (RGBA32F) with x's, else four scalar loads.
#if X_TEXEL
layout(binding = GLU != 0 ? 4 : 7) uniform samplerBuffer gt;
vec4 g4_at(uint k) { return texelFetch(gt, int(k / 4u)); }
#else
layout(std430, binding = GLU != 0 ? 4 : 7) readonly buffer G { float gn[]; };
vec4 g4_at(uint k) { return vec4(gn[k], gn[k + 1u], gn[k + 2u], gn[k + 3u]); }
#endif
#if KV == 1
KTYPE g_at(uint k) { return gn[k]; } // scalar loads never come with X_TEXEL
#define KMUL(a, b) ((a) * (b))
#elif KV == 4
KTYPE g_at(uint k) { return g4_at(k); }
#define KMUL(a, b) ((a) * (b))
#else
KTYPE g_at(uint k) { return mat2x4(g4_at(k), g4_at(k + 4u)); }
#define KMUL(a, b) matrixCompMult((a), (b))
#endif
#define N_SS MR // the rows' sums of squares, after the products' sums
#else
#define N_SS 0u
#endif
#define N_ACC (GLU != 0 ? 2u : 1u) // sums kept per (m, r): the gate's, and with GLU the up projection's

layout(constant_id = 1) const uint ROWS = 2; // rows of w (outputs n) per workgroup
layout(constant_id = 2) const uint MR = 1;   // rows of x per workgroup
layout(constant_id = 3) const uint SPREAD = 1; // workgroups sharing each block of ROWS * SPREAD rows (spread_row)
#if ROPE
#define UNIT 2u // a rotation pair's two rows stay adjacent in a workgroup's slots
#else
#define UNIT 1u
#endif

// red[(a * MR * ROWS + p) * WG_X + slot]: partial sum a (gate, or up with GLU) of pair p = (m, r) from one subgroup
// (or one invocation).
shared float red[(N_ACC * MR * ROWS + N_SS) * WG_X];

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint g = gl_WorkGroupID.z * gl_NumWorkGroups.x + gl_WorkGroupID.x;
#if QKV
  // Which matrix this workgroup reads (uniform over it), its row count, and its index among that matrix's
  // workgroups: each matrix has whole blocks of ROWS * SPREAD rows' worth of workgroups.
  const uint gq = (pc.N + ROWS * SPREAD - 1u) / (ROWS * SPREAD) * SPREAD;
  const uint gk = (pc.n2 + ROWS * SPREAD - 1u) / (ROWS * SPREAD) * SPREAD;
  const uint mat = g < gq ? 0u : g < gq + gk ? 1u : 2u;
  const uint n_rows = mat == 0u ? pc.N : pc.n2;
  const uint gm = mat == 0u ? g : mat == 1u ? g - gq : g - gq - gk;
  if (g >= gq + 2u * gk) return;
#else
  const uint n_rows = pc.N;
  const uint gm = g;
#endif
  // The whole workgroup leaves together when its first row is past the end (a block's last workgroups, or the
  // grid's last z row, may overhang); its later rows are larger.
  if (spread_row(gm, 0u, ROWS, SPREAD, UNIT) >= n_rows) return;
  const uint mb = gl_WorkGroupID.y * MR;
  const uint k_end = pc.k_base + pc.k_len;

  // Rows past M or N read the last row instead (computed, never stored), so the loop needs no branches.
  uint xrow[MR], wrow[ROWS];
  [[unroll]] for (uint m = 0; m < MR; m++) xrow[m] = min(mb + m, pc.M - 1) * pc.x_stride;
#if ROPE
  [[unroll]] for (uint r = 0; r < ROWS; r++) {
    uint slot = min(spread_row(gm, r, ROWS, SPREAD, UNIT), n_rows - 1);
    wrow[r] = (mat < 2u ? rope_row(slot) : slot) * pc.w_stride;
  }
#else
  [[unroll]] for (uint r = 0; r < ROWS; r++)
    wrow[r] = min(spread_row(gm, r, ROWS, SPREAD, UNIT), n_rows - 1) * pc.w_stride;
#endif
  float acc[N_ACC * MR * ROWS + N_SS];
  [[unroll]] for (uint p = 0; p < N_ACC * MR * ROWS + N_SS; p++) acc[p] = 0.0;
  for (uint k = pc.k_base + tid * KV; k < k_end; k += WG_X * KV) {
    KTYPE xv[MR];
    [[unroll]] for (uint m = 0; m < MR; m++) xv[m] = x_at(xrow[m] + k);
#if NORM
    KTYPE gk = g_at(k);
    [[unroll]] for (uint m = 0; m < MR; m++) {
      acc[N_ACC * MR * ROWS + m] = KDOT(xv[m], xv[m], acc[N_ACC * MR * ROWS + m]);
      xv[m] = KMUL(xv[m], gk);
    }
#endif
    [[unroll]] for (uint r = 0; r < ROWS; r++) {
#if QKV
      KTYPE wv = mat == 0u ? w_at(wrow[r] + k) : mat == 1u ? w2_at(wrow[r] + k) : w3_at(wrow[r] + k);
#else
      KTYPE wv = w_at(wrow[r] + k);
#endif
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
  [[unroll]] for (uint p = 0; p < N_ACC * MR * ROWS + N_SS; p++) {
    float s = subgroupAdd(acc[p]);
    if (subgroupElect()) red[p * WG_X + gl_SubgroupID] = s;
  }
#else
  const uint n_slots = WG_X;
  [[unroll]] for (uint p = 0; p < N_ACC * MR * ROWS + N_SS; p++) red[p * WG_X + tid] = acc[p];
#endif
  barrier();
  for (uint p = tid; p < MR * ROWS; p += WG_X) {
    uint m = mb + p / ROWS, n = spread_row(gm, p % ROWS, ROWS, SPREAD, UNIT);
    if (m < pc.M && n < n_rows) {
      float s = 0.0;
      for (uint i = 0; i < n_slots; i++) s += red[p * WG_X + i];
#if NORM
      float ss = 0.0;
      for (uint i = 0; i < n_slots; i++) ss += red[(N_ACC * MR * ROWS + p / ROWS) * WG_X + i];
      float scale = inversesqrt(ss / float(pc.K) + pc.eps);
      s *= scale;
#endif
#if GLU
      float u = 0.0;
      for (uint i = 0; i < n_slots; i++) u += red[(MR * ROWS + p) * WG_X + i];
#if NORM
      u *= scale;
#endif
      s = (GLU == 1 ? silu(s) : gelu_tanh(s)) * u;
#endif
#if ROPE
      if (mat < 2u) {
        // The pair's other sum (slot n ^ 1, the same row m), scaled alike; then the turn.
        float s2 = 0.0;
        for (uint i = 0; i < n_slots; i++) s2 += red[(p ^ 1u) * WG_X + i];
#if NORM
        s2 *= scale;
#endif
        int ps = pos[m];
        if (ps >= 0 && uint(ps) < pc.rope_max_pos) {
          uint i = n % pc.rope_hd;
          vec2 cs = cs_table[uint(ps) * (pc.rope_hd / 2u) + i / 2u];
          s = (i & 1u) == 0u ? s * cs.x - s2 * cs.y : s * cs.x + s2 * cs.y;
        }
        n = rope_row(n);
      }
#endif
#if QKV
      if (mat == 1u)
        y2[m * pc.n2 + n] = s;
      else if (mat == 2u)
        y3[m * pc.n2 + n] = s;
      else
        store_y(m, n, s);
#else
      store_y(m, n, s);
#endif
    }
  }
}
