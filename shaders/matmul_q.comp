#version 450
// Tiled GEMM with a quantised weight: y[M,N] (+)= x[M,K] . dequant(w)[N,K]^T over columns [k_base, k_base + k_len)
// of K. The structure of matmul.comp: a workgroup computes a BM x BN tile of y, each of its (BM/TM) * (BN/TN)
// invocations TM x TN outputs (strided rows and columns), K walked in BK-wide tiles staged in shared memory. The
// weight tile is dequantised as it is staged (one octet of integers and one scale per load), so shared memory
// holds f32 and the inner loop is that of the f32 kernel. Variants: include/matmul_q.glsl.
// The C wrapper (engine/ops/ops_matmul_q.c) counts this shader's loop iterations to size the K chunks: keep
// gemm_q_loop_iters() in step with the loops here.
#extension GL_EXT_control_flow_attributes : enable
#define PC_MATMUL_Q 1
#include "pc.h"
#include "common.glsl"
#include "matmul_q.glsl"

layout(constant_id = 1) const uint BM = 64; // tile rows (of M)
layout(constant_id = 2) const uint BN = 64; // tile columns (of N)
layout(constant_id = 3) const uint BK = 16; // K per shared tile, a multiple of 8
layout(constant_id = 4) const uint TM = 8;  // rows per invocation; BM % TM == 0
layout(constant_id = 5) const uint TN = 8;  // columns per invocation; BN % TN == 0; WG_X == (BM/TM) * (BN/TN)

const uint KQ = BK / 4;  // vec4s per tile row
const uint KO = BK / 8;  // octets per tile row
const uint XS = KQ + 1;  // padded row stride in vec4s: an odd stride spreads rows over the shared banks
shared vec4 xs[BM * XS]; // xs[r * XS + q] = x[m0 + r, k0 + 4q .. +4)
shared vec4 ws[BN * XS]; // ws[c * XS + q] = dequant(w)[n0 + c, k0 + 4q .. +4)

#define DOT4(a, b, acc) fma((a).w, (b).w, fma((a).z, (b).z, fma((a).y, (b).y, fma((a).x, (b).x, (acc)))))

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint tx = tid % (BN / TN), ty = tid / (BN / TN);
  const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
  const uint k_end = pc.k_base + pc.k_len;

  float acc[TM * TN];
  [[unroll]] for (uint i = 0; i < TM * TN; i++) acc[i] = 0.0;

  for (uint k0 = pc.k_base; k0 < k_end; k0 += BK) {
    for (uint e = tid; e < BM * KO; e += WG_X) {
      uint r = e / KO, c = (e % KO) * 8u;
      vec4 lo, hi;
      load_x8(m0 + r, k0 + c, k_end, lo, hi);
      xs[r * XS + c / 4u] = lo;
      xs[r * XS + c / 4u + 1u] = hi;
    }
    for (uint e = tid; e < BN * KO; e += WG_X) {
      uint r = e / KO, c = (e % KO) * 8u, n = n0 + r, k = k0 + c;
      vec4 lo = vec4(0), hi = vec4(0);
      if (n < pc.N && k < k_end) {
        load_q8(n, k, lo, hi);
        float s = scale_at(n, k);
        lo *= s;
        hi *= s;
      }
      ws[r * XS + c / 4u] = lo;
      ws[r * XS + c / 4u + 1u] = hi;
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
