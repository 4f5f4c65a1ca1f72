// Buffers and loads shared by matmul.comp and gemv.comp: y[M,N] (+)= x[M,K] . w[N,K]^T.
// Variant defines (GLU and QKV: gemv.comp's fused variants, which also bind w2, and w3, y2, y3):
//   W_F16=1: w holds f16 values (widened to f32 on load; sums are f32);
//   W_BF16=1: w holds bfloat16 values (widened exactly to f32 on load);
//   KV=n:    K-elements per load: 1 (scalar), 4 (f32 w: vec4 loads) or 8 (f16 w: one 16-byte load of 8 halves;
//            f32 w in the GEMM: two vec4 loads).
//            KV > 1 needs K and both row strides to be multiples of KV.
//   W_TEXEL=1 (KV 4 with f32 w, or KV 8 with f16 or bf16 w): w, and w2, w3, are uniform texel buffers (RGBA32F, or
//            RGBA32UI holding eight 16-bit values, unpacked here) read with texelFetch;
//   X_TEXEL=1 (KV 4 or 8): x is a uniform texel buffer too (RGBA32F).
//   CPU drivers (llvmpipe) gather a texel fetch for all lanes at once, where a storage-buffer load whose address
//   differs per lane runs as a loop over the lanes, one guarded scalar load per lane and component.
// A group of KV K-elements is a KTYPE: float, vec4, or mat2x4 (two vec4 columns).
#ifndef LATHE_MATMUL_GLSL
#define LATHE_MATMUL_GLSL

#if (W_F16 || W_BF16) && KV == 1
#extension GL_EXT_shader_16bit_storage : require
#endif
#define W_16BIT (W_F16 || W_BF16)

#if KV > 1
// The vec4 of x at quad q (elements 4q .. 4q+3).
#if X_TEXEL
layout(binding = 1) uniform samplerBuffer x;
vec4 x4_at(uint q) { return texelFetch(x, int(q)); }
#else
layout(std430, binding = 1) readonly buffer X { vec4 x[]; };
vec4 x4_at(uint q) { return x[q]; }
#endif
#endif

#if KV == 1
#define KTYPE float
#define KDOT(a, b, acc) fma((a), (b), (acc))
layout(std430, binding = 1) readonly buffer X { float x[]; };
#if W_F16
layout(std430, binding = 2) readonly buffer W { float16_t w[]; };
KTYPE w_at(uint i) { return float(w[i]); }
#elif W_BF16
layout(std430, binding = 2) readonly buffer W { uint16_t w[]; };
KTYPE w_at(uint i) { return uintBitsToFloat(uint(w[i]) << 16); }
#else
layout(std430, binding = 2) readonly buffer W { float w[]; };
KTYPE w_at(uint i) { return w[i]; }
#endif
KTYPE x_at(uint i) { return x[i]; }

#elif KV == 4 && !W_16BIT
#define KTYPE vec4
#define KDOT(a, b, acc) DOT4(a, b, acc)
KTYPE x_at(uint i) { return x4_at(i / 4u); }
#if W_TEXEL
layout(binding = 2) uniform samplerBuffer w;
KTYPE w_at(uint i) { return texelFetch(w, int(i / 4u)); }
#else
layout(std430, binding = 2) readonly buffer W { vec4 w[]; };
KTYPE w_at(uint i) { return w[i / 4u]; }
#endif

#elif KV == 8 && !W_16BIT && !GLU && !QKV
// f32 w two vec4s at a time (matmul.comp: twice the products per update of each sum).
#define KTYPE mat2x4
#define KDOT(a, b, acc) DOT4((a)[1], (b)[1], DOT4((a)[0], (b)[0], acc))
KTYPE x_at(uint i) { return mat2x4(x4_at(i / 4u), x4_at(i / 4u + 1u)); }
#if W_TEXEL
layout(binding = 2) uniform samplerBuffer w;
KTYPE w_at(uint i) { return mat2x4(texelFetch(w, int(i / 4u)), texelFetch(w, int(i / 4u + 1u))); }
#else
layout(std430, binding = 2) readonly buffer W { vec4 w[]; };
KTYPE w_at(uint i) { return mat2x4(w[i / 4u], w[i / 4u + 1u]); }
#endif

#elif KV == 8 && W_16BIT
#define KTYPE mat2x4
#define KDOT(a, b, acc) DOT4((a)[1], (b)[1], DOT4((a)[0], (b)[0], acc))
KTYPE x_at(uint i) { return mat2x4(x4_at(i / 4u), x4_at(i / 4u + 1u)); }
#if W_F16
KTYPE unpack8(uvec4 h) {
  return mat2x4(vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y)), vec4(unpackHalf2x16(h.z), unpackHalf2x16(h.w)));
}
#else
// A bfloat16 is the top half of an f32: the low one of a pair shifts up, the high one keeps its place.
vec2 unpack_bf16x2(uint u) { return vec2(uintBitsToFloat(u << 16), uintBitsToFloat(u & 0xffff0000u)); }
KTYPE unpack8(uvec4 h) {
  return mat2x4(vec4(unpack_bf16x2(h.x), unpack_bf16x2(h.y)), vec4(unpack_bf16x2(h.z), unpack_bf16x2(h.w)));
}
#endif
#if W_TEXEL
layout(binding = 2) uniform usamplerBuffer w;
KTYPE w_at(uint i) { return unpack8(texelFetch(w, int(i / 8u))); }
#else
layout(std430, binding = 2) readonly buffer W { uvec4 w[]; }; // 8 16-bit values per element
KTYPE w_at(uint i) { return unpack8(w[i / 8u]); }
#endif

#else
#error "unsupported W_F16 / KV combination"
#endif

// A further matrix laid out and typed as w, at binding B, read through NAME_at.
#if KV == 1 && W_F16
#define EXTRA_W(B, NAME)                                                                                              \
  layout(std430, binding = B) readonly buffer NAME##_buf { float16_t NAME[]; };                                       \
  KTYPE NAME##_at(uint i) { return float(NAME[i]); }
#elif KV == 1 && W_BF16
#define EXTRA_W(B, NAME)                                                                                              \
  layout(std430, binding = B) readonly buffer NAME##_buf { uint16_t NAME[]; };                                        \
  KTYPE NAME##_at(uint i) { return uintBitsToFloat(uint(NAME[i]) << 16); }
#elif KV == 1
#define EXTRA_W(B, NAME)                                                                                              \
  layout(std430, binding = B) readonly buffer NAME##_buf { float NAME[]; };                                           \
  KTYPE NAME##_at(uint i) { return NAME[i]; }
#elif KV == 4 && W_TEXEL
#define EXTRA_W(B, NAME)                                                                                              \
  layout(binding = B) uniform samplerBuffer NAME;                                                                     \
  KTYPE NAME##_at(uint i) { return texelFetch(NAME, int(i / 4u)); }
#elif KV == 4
#define EXTRA_W(B, NAME)                                                                                              \
  layout(std430, binding = B) readonly buffer NAME##_buf { vec4 NAME[]; };                                            \
  KTYPE NAME##_at(uint i) { return NAME[i / 4u]; }
#elif W_TEXEL
#define EXTRA_W(B, NAME)                                                                                              \
  layout(binding = B) uniform usamplerBuffer NAME;                                                                    \
  KTYPE NAME##_at(uint i) { return unpack8(texelFetch(NAME, int(i / 8u))); }
#else
#define EXTRA_W(B, NAME)                                                                                              \
  layout(std430, binding = B) readonly buffer NAME##_buf { uvec4 NAME[]; };                                           \
  KTYPE NAME##_at(uint i) { return unpack8(NAME[i / 8u]); }
#endif

#if GLU || QKV
// The gated GEMV's up projection, or QKV's k projection.
EXTRA_W(3, w2)
#endif
#if QKV
// QKV's v projection, and the k and v outputs.
EXTRA_W(4, w3)
layout(std430, binding = 5) writeonly buffer Y2 { float y2[]; };
layout(std430, binding = 6) writeonly buffer Y3 { float y3[]; };
#endif

// acc + a . b for two vec4s, as four fused multiply-adds in order.
#define DOT4(a, b, acc) fma((a).w, (b).w, fma((a).z, (b).z, fma((a).y, (b).y, fma((a).x, (b).x, (acc)))))

layout(std430, binding = 0) buffer Y { float y[]; }; // read too when accumulating

// x[m, k .. k+KV), zero outside [0, M) x [k_base, k_end): k is a multiple of KV and so is k_end unless KV == 1.
KTYPE load_x(uint m, uint k, uint k_end) { return m < pc.M && k < k_end ? x_at(m * pc.x_stride + k) : KTYPE(0); }

// w[n, k .. k+KV) as f32, zero outside [0, N) x [k_base, k_end).
KTYPE load_w(uint n, uint k, uint k_end) { return n < pc.N && k < k_end ? w_at(n * pc.w_stride + k) : KTYPE(0); }

// Writes one result, adding what y holds when this dispatch accumulates.
void store_y(uint m, uint n, float v) {
  uint i = m * pc.y_stride + n;
  y[i] = pc.accumulate != 0u ? y[i] + v : v;
}

#endif
