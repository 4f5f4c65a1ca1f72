// Buffers and loads shared by matmul_q.comp and gemv_q.comp: y[M,N] (+)= x[M,K] . dequant(w)[N,K]^T with w
// quantised per row in groups of pc.group columns (layout: engine/ops/quant.h). Work goes in octets: eight
// consecutive K-elements, which share one scale (the group is a multiple of 8) and one 32-bit word of int4 or
// two words of int8.
// GQ=<block format> reads GGUF's block formats instead (include/qblock.glsl).
// Variant defines: OPL=2 (int8) or 4 (int4): gemv_q.comp reads OPL octets at a time through an RGBA32UI view (CPU
// drivers; needs kp and the group to be multiples of 8 * OPL); BITS=8|4 the integers' width; S_F16=1 reads f16
// scales (else f32); VEC4=1 reads x four K-elements at a time (needs K and x_stride to be multiples of 4).
// W_TEXEL=1 (CPU drivers) reads the weight's 32-bit words through an R32UI texel view, X_TEXEL=1 (with VEC4) x
// through an RGBA32F one (see matmul.glsl on why).
#ifndef LATHE_MATMUL_Q_GLSL
#define LATHE_MATMUL_Q_GLSL
#ifndef OPL
#define OPL 1
#endif

layout(std430, binding = 0) buffer Y { float y[]; }; // read too when accumulating
#if VEC4 && X_TEXEL
layout(binding = 1) uniform samplerBuffer xt;
#define X4(i) texelFetch(xt, int(i))
#elif VEC4
layout(std430, binding = 1) readonly buffer X { vec4 x[]; };
#define X4(i) x[i]
#else
layout(std430, binding = 1) readonly buffer X { float x[]; };
#endif

#if GQ
#if W_TEXEL
layout(binding = 2) uniform usamplerBuffer wqt; // rows of blocks, pc.row_bytes apart, as 32-bit words
#define WQ(i) texelFetch(wqt, int(i)).x
#else
layout(std430, binding = 2) readonly buffer W { uint wq[]; };               // rows of blocks, pc.row_bytes apart
#endif
layout(std430, binding = 3) readonly buffer S { uint unused_scales[]; }; // the blocks carry their scales
#include "qblock.glsl"

// The weights w[n, k .. k+8) (n < N, k a multiple of 8 below K) into lo, hi.
void load_q8(uint n, uint k, out vec4 lo, out vec4 hi) { qb_octet(n * pc.row_bytes, k, lo, hi); }

// load_q8() returns the weights themselves.
float scale_at(uint n, uint k) { return 1.0; }
#else
#if S_F16
#extension GL_EXT_shader_16bit_storage : require
#define STYPE float16_t
#else
#define STYPE float
#endif

#if BITS == 8
#define QTYPE uvec2 // one octet: eight int8
#else
#define QTYPE uint // one octet: eight int4, low nibble first
#endif

// The eight integers of one octet (int8: two words; int4: one word, low nibble first) into lo, hi, sign-extended.
#if BITS == 8
void unpack_octet(uvec2 v, out vec4 lo, out vec4 hi) {
  int a = int(v.x), b = int(v.y);
  lo = vec4(bitfieldExtract(a, 0, 8), bitfieldExtract(a, 8, 8), bitfieldExtract(a, 16, 8), bitfieldExtract(a, 24, 8));
  hi = vec4(bitfieldExtract(b, 0, 8), bitfieldExtract(b, 8, 8), bitfieldExtract(b, 16, 8), bitfieldExtract(b, 24, 8));
}
#else
void unpack_octet(uint v, out vec4 lo, out vec4 hi) {
  int a = int(v);
  lo = vec4(bitfieldExtract(a, 0, 4), bitfieldExtract(a, 4, 4), bitfieldExtract(a, 8, 4), bitfieldExtract(a, 12, 4));
  hi = vec4(bitfieldExtract(a, 16, 4), bitfieldExtract(a, 20, 4), bitfieldExtract(a, 24, 4), bitfieldExtract(a, 28, 4));
}
#endif

#if OPL > 1
// OPL octets a texel (RGBA32UI: 16 bytes, two octets of int8 or four of int4), rows starting on a texel.
layout(binding = 2) uniform usamplerBuffer wq4;
#elif W_TEXEL
layout(binding = 2) uniform usamplerBuffer wqt; // the octets as 32-bit words
#if BITS == 8
QTYPE wq_at(uint i) { return uvec2(texelFetch(wqt, int(2u * i)).x, texelFetch(wqt, int(2u * i + 1u)).x); }
#else
QTYPE wq_at(uint i) { return texelFetch(wqt, int(i)).x; }
#endif
#else
layout(std430, binding = 2) readonly buffer W { QTYPE wq[]; };
QTYPE wq_at(uint i) { return wq[i]; }
#endif
layout(std430, binding = 3) readonly buffer S { STYPE sc[]; };
#endif // GQ

// x[m, k .. k+8) into lo, hi; zero outside [0, M) x [k, k_end) (k a multiple of 8; k_end is a multiple of 8, or K).
void load_x8(uint m, uint k, uint k_end, out vec4 lo, out vec4 hi) {
  lo = vec4(0);
  hi = vec4(0);
  if (m >= pc.M) return;
  uint b = m * pc.x_stride + k;
#if VEC4
  if (k < k_end) lo = X4(b / 4u);
  if (k + 4u < k_end) hi = X4(b / 4u + 1u);
#else
  [[unroll]] for (uint i = 0; i < 4u; i++) {
    if (k + i < k_end) lo[i] = x[b + i];
    if (k + 4u + i < k_end) hi[i] = x[b + 4u + i];
  }
#endif
}

#if !GQ && !(OPL > 1)
// The integers of w[n, k .. k+8) (n < N, k a multiple of 8 below kp) into lo, hi, sign-extended.
void load_q8(uint n, uint k, out vec4 lo, out vec4 hi) { unpack_octet(wq_at((n * pc.kp + k) / 8u), lo, hi); }
#endif

// The OPL octets of w[n, k .. k + 8 * OPL) (k a multiple of 8 * OPL) into lo[o], hi[o]: load_q8's, or with OPL > 1
// those of one texel, sign-extended.
void load_octets(uint n, uint k, out vec4 lo[OPL], out vec4 hi[OPL]) {
#if OPL > 1
  uvec4 t = texelFetch(wq4, int((n * pc.kp + k) / (8u * OPL)));
#if BITS == 8
  [[unroll]] for (uint o = 0; o < OPL; o++) unpack_octet(uvec2(t[2u * o], t[2u * o + 1u]), lo[o], hi[o]);
#else
  [[unroll]] for (uint o = 0; o < OPL; o++) unpack_octet(t[o], lo[o], hi[o]);
#endif
#else
  load_q8(n, k, lo[0], hi[0]);
#endif
}

#if !GQ
// The scale of w[n, k].
float scale_at(uint n, uint k) { return float(sc[n * pc.n_groups + k / pc.group]); }
#endif // !GQ

// Writes one result, adding what y holds when this dispatch accumulates.
void store_y(uint m, uint n, float v) {
  uint i = m * pc.y_stride + n;
  y[i] = pc.accumulate != 0u ? y[i] + v : v;
}

#endif
