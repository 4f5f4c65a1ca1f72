#version 450
// GEMM with register blocking: y[M,N] (+)= x[M,K] . w[N,K]^T over columns [k_base, k_base + k_len) of K.
// A workgroup computes a BM x BN tile of y; each of its (BM/TM) * (BN/TN) invocations keeps TM x TN sums in
// registers: columns tx + j*(BN/TN) of the tile, so neighbouring invocations write neighbouring outputs.
// Variants (besides W_F16 and KV, see include/matmul.glsl):
//   STAGED=1 (GPUs): K is walked in BK-wide tiles of x and w staged in shared memory, so each element is read
//     from device memory once per workgroup. Rows ty + i*(BM/TM): neighbouring invocations then read shared
//     rows an odd number of vec4s apart, which spreads them over the memory banks.
//   STAGED=0 (CPU drivers): each invocation reads its operands straight from the buffers. lavapipe runs a
//     non-uniform load one lane at a time, so staging would only add a load and a store per element; what pays
//     there is many sums per load (large TM x TN). Rows ty*TM + i, so invocations past M stop at once.
//     XSHARE=1 (with it, where a subgroup is BN / TN invocations and TM a multiple of that): a subgroup's lanes
//     load the rows of x they share once between them and pass them round by shuffles.
// The C wrapper (engine/ops/ops_matmul.c) counts this shader's loop iterations to size the K chunks (loops marked
// [[unroll]] have trip counts fixed by specialisation and are unrolled): keep gemm_loop_iters() in step.
#extension GL_EXT_control_flow_attributes : enable
#if XSHARE
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#if KV == 8
#define KSHUFFLE(v, l) mat2x4(subgroupShuffle((v)[0], (l)), subgroupShuffle((v)[1], (l)))
#else
#define KSHUFFLE(v, l) subgroupShuffle((v), (l))
#endif
#endif
#define PC_MATMUL 1
#include "pc.h"
#include "common.glsl"
#include "matmul.glsl"

layout(constant_id = 1) const uint BM = 64; // tile rows (of M)
layout(constant_id = 2) const uint BN = 64; // tile columns (of N)
layout(constant_id = 3) const uint BK = 16; // K per shared tile, a multiple of 4 and of KV (STAGED only)
layout(constant_id = 4) const uint TM = 8;  // rows per invocation; BM % TM == 0
layout(constant_id = 5) const uint TN = 8;  // columns per invocation; BN % TN == 0; WG_X == (BM/TM) * (BN/TN)

#if STAGED
const uint KQ = BK / 4;  // vec4s per tile row
const uint XS = KQ + 1;  // padded row stride in vec4s
shared vec4 xs[BM * XS]; // xs[r * XS + q] = x[m0 + r, k0 + 4q .. +4)
shared vec4 ws[BN * XS]; // ws[c * XS + q] = w[n0 + c, k0 + 4q .. +4)
#if KV == 1
#define PUT(tile, r, c, v) tile[(r) * XS + (c) / 4u][(c) % 4u] = (v)
#elif KV == 4
#define PUT(tile, r, c, v) tile[(r) * XS + (c) / 4u] = (v)
#else
#define PUT(tile, r, c, v) tile[(r) * XS + (c) / 4u] = (v)[0], tile[(r) * XS + (c) / 4u + 1u] = (v)[1]
#endif
#define ROW(i) (m0 + ty + (i) * (BM / TM))
#else
#define ROW(i) (m0 + ty * TM + (i))
#endif
#define COL(j) (n0 + tx + (j) * (BN / TN))

void main() {
#if XSHARE
  // Numbered by subgroup, so that the BN / TN invocations of one row of tiles (one ty) are one subgroup.
  const uint tid = gl_SubgroupID * SUBGROUP_SIZE + gl_SubgroupInvocationID;
#else
  const uint tid = gl_LocalInvocationID.x;
#endif
  const uint tx = tid % (BN / TN), ty = tid / (BN / TN);
  const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
  const uint k_end = pc.k_base + pc.k_len;

  float acc[TM * TN];
  [[unroll]] for (uint i = 0; i < TM * TN; i++) acc[i] = 0.0;

#if STAGED
  const uint per_row = BK / KV; // loads per tile row
  for (uint k0 = pc.k_base; k0 < k_end; k0 += BK) {
    for (uint e = tid; e < BM * per_row; e += WG_X) {
      uint r = e / per_row, c = (e % per_row) * KV;
      KTYPE v = load_x(m0 + r, k0 + c, k_end);
      PUT(xs, r, c, v);
    }
    for (uint e = tid; e < BN * per_row; e += WG_X) {
      uint r = e / per_row, c = (e % per_row) * KV;
      KTYPE v = load_w(n0 + r, k0 + c, k_end);
      PUT(ws, r, c, v);
    }
    barrier();
    [[unroll]] for (uint q = 0; q < KQ; q++) {
      vec4 a[TM];
      [[unroll]] for (uint i = 0; i < TM; i++) a[i] = xs[(ty + i * (BM / TM)) * XS + q];
      [[unroll]] for (uint j = 0; j < TN; j++) {
        vec4 b = ws[(tx + j * (BN / TN)) * XS + q];
        [[unroll]] for (uint i = 0; i < TM; i++) acc[i * TN + j] = DOT4(a[i], b, acc[i * TN + j]);
      }
    }
    barrier(); // the next tile overwrites xs and ws
  }
#else
  if (ROW(0) >= pc.M) return; // no barriers in this variant, so whole invocations may leave
  // Rows past M or N read the last row instead (computed, never stored), so the loop needs no branches.
  uint xrow[TM], wrow[TN];
  [[unroll]] for (uint i = 0; i < TM; i++) xrow[i] = min(ROW(i), pc.M - 1) * pc.x_stride;
  [[unroll]] for (uint j = 0; j < TN; j++) wrow[j] = min(COL(j), pc.N - 1) * pc.w_stride;
#if XSHARE
  // The subgroup's lanes share their rows of x (one ty): each lane loads TM / SUBGROUP_SIZE of them and the others
  // arrive by shuffles, a register move where a load is a gather on CPU drivers.
  const uint XR = TM / SUBGROUP_SIZE, lane = gl_SubgroupInvocationID;
  uint xmine[XR];
  [[unroll]] for (uint t = 0; t < XR; t++) xmine[t] = xrow[lane * XR + t];
#endif
  for (uint k = pc.k_base; k < k_end; k += KV) {
    KTYPE a[TM];
#if XSHARE
    KTYPE own[XR];
    [[unroll]] for (uint t = 0; t < XR; t++) own[t] = x_at(xmine[t] + k);
    [[unroll]] for (uint i = 0; i < TM; i++) a[i] = KSHUFFLE(own[i % XR], i / XR);
#else
    [[unroll]] for (uint i = 0; i < TM; i++) a[i] = x_at(xrow[i] + k);
#endif
    [[unroll]] for (uint j = 0; j < TN; j++) {
      KTYPE b = w_at(wrow[j] + k);
      [[unroll]] for (uint i = 0; i < TM; i++) acc[i * TN + j] = KDOT(a[i], b, acc[i * TN + j]);
    }
  }
#endif

  [[unroll]] for (uint i = 0; i < TM; i++)
    [[unroll]] for (uint j = 0; j < TN; j++)
      if (ROW(i) < pc.M && COL(j) < pc.N) store_y(ROW(i), COL(j), acc[i * TN + j]);
}
