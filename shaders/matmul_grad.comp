#version 450
// Backward GEMM with register blocking: y[M,N] (+)= sum over r in [k_base, k_base + k_len) of a(m, r) . w[r, n]
// (pc.K rows of w in all; the chunk fields are those of every K-chunked op, filled by op_dispatch_k()).
// a is read from the x binding at x[m * x_stride + r * x_rstride], so one kernel serves both gradients of
// y = x . W^T: dX = dY . W (a = dY, r runs over N, w = W as stored) and dW = dY^T . X (a = dY transposed, r runs
// over M, w = X). Each invocation keeps TM x TN sums in registers, an outer product per r: TM values of a times
// TN values of one row of w, loaded KV at a time along n (w's contiguous dimension), so every load feeds TM or
// TN/KV sums, as in the direct variant of matmul.comp.
// Variants: BITS=8|4 reads w quantised (engine/ops/quant.h) through include/matmul_q.glsl, one octet and its
// scale per load (KV = 8; rows of q are padded to kp columns, so whole octets never leave the row); with GQ too,
// GGUF's block formats (include/qblock.glsl; N is a multiple of the block size); otherwise
// W_F16 / W_BF16 / KV select the loads of include/matmul.glsl (KV > 1 needs N and w_stride multiples of KV).
// The C wrapper (engine/ops/ops_grad.c) sizes k_len so the r loop, this shader's only loop that is not
// unrolled (the others have trip counts fixed by specialisation), stays within the loop budget.
#extension GL_EXT_control_flow_attributes : enable
#define PC_MATMUL_GRAD 1
#include "pc.h"
#include "common.glsl"

#if BITS
#define VEC4 0
#include "matmul_q.glsl"
#undef KV
#define KV 8
#define KTYPE mat2x4
// w[r, n .. n+8) dequantised (n a multiple of 8 below kp).
KTYPE w_row(uint r, uint n) {
  vec4 lo, hi;
  load_q8(r, n, lo, hi);
  float s = scale_at(r, n);
  return mat2x4(lo * s, hi * s);
}
float a_at(uint i) { return x[i]; }
#else
#include "matmul.glsl"
KTYPE w_row(uint r, uint n) { return w_at(r * pc.w_stride + n); }
#if KV == 1
float a_at(uint i) { return x[i]; }
#else
// x is declared as vec4s there; the wrapper binds a range rounded up to whole vec4s.
float a_at(uint i) { return x[i / 4u][i % 4u]; }
#endif
#endif

#if KV == 1
float comp(KTYPE v, uint c) { return v; }
#elif KV == 4
float comp(KTYPE v, uint c) { return v[c]; }
#else
float comp(KTYPE v, uint c) { return v[c / 4u][c % 4u]; }
#endif

layout(constant_id = 1) const uint BM = 128; // tile rows (of M)
layout(constant_id = 2) const uint BN = 128; // tile columns (of N)
layout(constant_id = 3) const uint TM = 16;  // rows per invocation; BM % TM == 0
layout(constant_id = 4) const uint TN = 16;  // columns per invocation, a multiple of KV; WG_X == (BM/TM) * (BN/TN)

const uint TG = TN / KV; // column groups per invocation

// Rows ty*TM + i, so invocations past M stop at once; column groups tx + g*(BN/TN), so neighbouring invocations
// load neighbouring groups of a row of w.
#define ROW(i) (m0 + ty * TM + (i))
#define COL(g) (n0 + (tx + (g) * (BN / TN)) * KV)

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint tx = tid % (BN / TN), ty = tid / (BN / TN);
  const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
  if (ROW(0) >= pc.M) return; // no barriers, so whole invocations may leave
  const uint r_end = pc.k_base + pc.k_len;

  KTYPE acc[TM * TG];
  [[unroll]] for (uint i = 0; i < TM * TG; i++) acc[i] = KTYPE(0);

  // Rows past M and groups past N read the last row and group instead (computed, never stored), so the loop
  // needs no branches. The last group of a quantised row lies within kp; of a plain one within N (KV divides N).
  uint arow[TM], wcol[TG];
#if BITS
  const uint last_col = pc.kp - KV;
#else
  const uint last_col = pc.N - KV;
#endif
  [[unroll]] for (uint i = 0; i < TM; i++) arow[i] = min(ROW(i), pc.M - 1) * pc.x_stride;
  [[unroll]] for (uint g = 0; g < TG; g++) wcol[g] = min(COL(g), last_col);
  for (uint r = pc.k_base; r < r_end; r++) {
    float a[TM];
    [[unroll]] for (uint i = 0; i < TM; i++) a[i] = a_at(arow[i] + r * pc.x_rstride);
    [[unroll]] for (uint g = 0; g < TG; g++) {
      KTYPE b = w_row(r, wcol[g]);
      [[unroll]] for (uint i = 0; i < TM; i++) acc[i * TG + g] += a[i] * b;
    }
  }

  [[unroll]] for (uint i = 0; i < TM; i++)
    [[unroll]] for (uint g = 0; g < TG; g++)
      [[unroll]] for (uint c = 0; c < KV; c++)
        if (ROW(i) < pc.M && COL(g) + c < pc.N) store_y(ROW(i), COL(g) + c, comp(acc[i * TG + g], c));
}
