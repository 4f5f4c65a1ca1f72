#version 450
// The backward passes' matrix product: y[M,N] (+)= sum_k A(m,k) B(n,k) over this dispatch's K chunk, with either
// operand read transposed through its strides (pc.h, pc_mmt). dX = dY . W reads W transposed (any weight dtype,
// quantised ones in place); dW = dY^T . X reads both transposed. A workgroup of 64 computes a 32 x 32 tile; each
// invocation keeps 4 x 4 sums in registers. Rows and columns past M or N read the last one (computed, never
// stored), so the K loop has no branches. One loop iteration per K column: the wrapper sizes the chunks by it.
// Variants: W_F16 / W_BF16 (16-bit b), BITS=8|4 (quantised b with S_F16 scales or f32 ones).
#extension GL_EXT_control_flow_attributes : require
#define PC_MMT 1
#include "pc.h"
#include "common.glsl"

#if W_F16 || W_BF16 || S_F16
#extension GL_EXT_shader_16bit_storage : require
#endif

layout(std430, binding = 0) buffer Y { float y[]; }; // read too when accumulating
layout(std430, binding = 1) readonly buffer A { float a[]; };
#if BITS
layout(std430, binding = 2) readonly buffer B { uint bq[]; };
#if S_F16
layout(std430, binding = 3) readonly buffer S { float16_t sc[]; };
#else
layout(std430, binding = 3) readonly buffer S { float sc[]; };
#endif
// Element (r, c) of the quantised matrix: its integer (byte r * kp + c for int8, nibble c of row r for int4,
// low nibble first) times its group's scale.
float b_elem(uint r, uint c) {
#if BITS == 8
  uint byte = r * pc.kp + c;
  int q = bitfieldExtract(int(bq[byte / 4u]), int(8u * (byte % 4u)), 8);
#else
  uint nib = r * pc.kp + c; // kp is a multiple of 8, so rows start on whole bytes
  int q = bitfieldExtract(int(bq[nib / 8u]), int(4u * (nib % 8u)), 4);
#endif
  return float(q) * float(sc[r * pc.n_groups + c / pc.group]);
}
#elif W_F16
layout(std430, binding = 2) readonly buffer B { float16_t b[]; };
float b_elem(uint r, uint c) { return float(b[r * pc.ldb + c]); }
#elif W_BF16
layout(std430, binding = 2) readonly buffer B { uint16_t b[]; };
float b_elem(uint r, uint c) { return uintBitsToFloat(uint(b[r * pc.ldb + c]) << 16); }
#else
layout(std430, binding = 2) readonly buffer B { float b[]; };
float b_elem(uint r, uint c) { return b[r * pc.ldb + c]; }
#endif

const uint TM = 4, TN = 4, BM = 32, BN = 32; // WG_X == (BM / TM) * (BN / TN) == 64

void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint tx = tid % (BN / TN), ty = tid / (BN / TN);
  const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
  if (m0 + ty * TM >= pc.M) return; // no barriers: whole invocations may leave
  uint rows[TM], cols[TN];
  [[unroll]] for (uint i = 0; i < TM; i++) rows[i] = min(m0 + ty * TM + i, pc.M - 1u);
  [[unroll]] for (uint j = 0; j < TN; j++) cols[j] = min(n0 + tx + j * (BN / TN), pc.N - 1u);
  float acc[TM * TN];
  [[unroll]] for (uint i = 0; i < TM * TN; i++) acc[i] = 0.0;
  const uint k_end = pc.k_base + pc.k_len;
  for (uint k = pc.k_base; k < k_end; k++) {
    float av[TM];
    [[unroll]] for (uint i = 0; i < TM; i++) av[i] = pc.at != 0u ? a[k * pc.lda + rows[i]] : a[rows[i] * pc.lda + k];
    [[unroll]] for (uint j = 0; j < TN; j++) {
      float bv = pc.bt != 0u ? b_elem(k, cols[j]) : b_elem(cols[j], k);
      [[unroll]] for (uint i = 0; i < TM; i++) acc[i * TN + j] = fma(av[i], bv, acc[i * TN + j]);
    }
  }
  [[unroll]] for (uint i = 0; i < TM; i++) {
    uint m = m0 + ty * TM + i;
    [[unroll]] for (uint j = 0; j < TN; j++) {
      uint n = n0 + tx + j * (BN / TN);
      if (m < pc.M && n < pc.N) {
        uint o = m * pc.ldy + n;
        y[o] = pc.accumulate != 0u ? y[o] + acc[i * TN + j] : acc[i * TN + j];
      }
    }
  }
}
