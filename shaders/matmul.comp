#version 450
// Tiled GEMM with register blocking: y[M,N] (+)= x[M,K] . w[N,K]^T over columns [k_base, k_base + k_len) of K.
// A workgroup computes a BM x BN tile of y; each of its (BM/TM) * (BN/TN) invocations computes TM x TN outputs,
// rows ty + i*(BM/TM) and columns tx + j*(BN/TN) of the tile (strided, so neighbouring invocations read
// neighbouring shared rows without bank conflicts and write neighbouring outputs). K is walked in BK-wide
// tiles staged in shared memory, four K-elements per vec4. Variants: see include/matmul.glsl.
// The C wrapper (engine/ops_matmul.c) counts this shader's loop iterations to size the K chunks: keep
// gemm_loop_iters() in step with the loops here.
#extension GL_EXT_control_flow_attributes : enable
#define PC_MATMUL 1
#include "pc.h"
#include "common.glsl"
#include "matmul.glsl"

layout(constant_id = 1) const uint BM = 64; // tile rows (of M)
layout(constant_id = 2) const uint BN = 64; // tile columns (of N)
layout(constant_id = 3) const uint BK = 16; // K per shared tile, a multiple of 4
layout(constant_id = 4) const uint TM = 8;  // rows per invocation; BM % TM == 0
layout(constant_id = 5) const uint TN = 8;  // columns per invocation; BN % TN == 0; WG_X == (BM/TM) * (BN/TN)

const uint KQ = BK / 4;  // vec4s per tile row
const uint XS = KQ + 1;  // padded row stride in vec4s: an odd stride spreads rows over the shared banks
shared vec4 xs[BM * XS]; // xs[r * XS + q] = x[m0 + r, k0 + 4q .. +4)
shared vec4 ws[BN * XS]; // ws[c * XS + q] = w[n0 + c, k0 + 4q .. +4)

#if VEC4
#define PUT(tile, r, c, v) tile[(r) * XS + (c) / 4u] = (v)
#else
#define PUT(tile, r, c, v) tile[(r) * XS + (c) / 4u][(c) % 4u] = (v)
#endif
#define DOT4(a, b, acc) fma((a).w, (b).w, fma((a).z, (b).z, fma((a).y, (b).y, fma((a).x, (b).x, (acc)))))

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint tx = tid % (BN / TN), ty = tid / (BN / TN);
  const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
  const uint k_end = pc.k_base + pc.k_len;
  const uint per_row = BK / KV; // loads per tile row

  float acc[TM * TN];
  [[unroll]] for (uint i = 0; i < TM * TN; i++) acc[i] = 0.0;

  for (uint k0 = pc.k_base; k0 < k_end; k0 += BK) {
    for (uint e = tid; e < BM * per_row; e += WG_X) {
      uint r = e / per_row, c = (e % per_row) * KV;
      PUT(xs, r, c, load_x(m0 + r, k0 + c, k_end));
    }
    for (uint e = tid; e < BN * per_row; e += WG_X) {
      uint r = e / per_row, c = (e % per_row) * KV;
      PUT(ws, r, c, load_w(n0 + r, k0 + c, k_end));
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

  [[unroll]] for (uint i = 0; i < TM; i++) {
    uint m = m0 + ty + i * (BM / TM);
    [[unroll]] for (uint j = 0; j < TN; j++) {
      uint n = n0 + tx + j * (BN / TN);
      if (m < pc.M && n < pc.N) store_y(m, n, acc[i * TN + j]);
    }
  }
}
