// Buffers and loads shared by matmul.comp and gemv.comp: y[M,N] (+)= x[M,K] . w[N,K]^T.
// Variant defines: W_F16=1 reads w as f16 (converted to f32 on load, f32 accumulation);
// VEC4=1 reads x and w four K-elements at a time (needs K and both row strides to be multiples of 4).
#ifndef LATHE_MATMUL_GLSL
#define LATHE_MATMUL_GLSL

#if W_F16
#extension GL_EXT_shader_16bit_storage : require
#endif

#if VEC4
#define KV 4u // K-elements per load
#define XTYPE vec4
#if W_F16
#define WTYPE f16vec4
#else
#define WTYPE vec4
#endif
#define KDOT(a, b, acc) fma((a).w, (b).w, fma((a).z, (b).z, fma((a).y, (b).y, fma((a).x, (b).x, (acc)))))
#else
#define KV 1u
#define XTYPE float
#if W_F16
#define WTYPE float16_t
#else
#define WTYPE float
#endif
#define KDOT(a, b, acc) fma((a), (b), (acc))
#endif

layout(std430, binding = 0) buffer Y { float y[]; }; // read too when accumulating
layout(std430, binding = 1) readonly buffer X { XTYPE x[]; };
layout(std430, binding = 2) readonly buffer W { WTYPE w[]; };

// x[m, k .. k+KV), zero outside [0, M) x [k, k_end): k is a multiple of KV and so is k_end in the VEC4 variant.
XTYPE load_x(uint m, uint k, uint k_end) {
  return m < pc.M && k < k_end ? x[(m * pc.x_stride + k) / KV] : XTYPE(0);
}

// w[n, k .. k+KV) as f32, zero outside [0, N) x [k, k_end).
XTYPE load_w(uint n, uint k, uint k_end) {
  return n < pc.N && k < k_end ? XTYPE(w[(n * pc.w_stride + k) / KV]) : XTYPE(0);
}

// Writes one result, adding what y holds when this dispatch accumulates.
void store_y(uint m, uint n, float v) {
  uint i = m * pc.y_stride + n;
  y[i] = pc.accumulate != 0u ? y[i] + v : v;
}

#endif
