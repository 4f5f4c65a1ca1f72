/* CPU references for the elementwise ops and dtype conversion. */
#include <math.h>
#include <string.h>

#include "engine/ref.h"

float ref_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) bits = sign;
    else { /* subnormal: renormalise */
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        exp--;
      }
      bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
  else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t ref_float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
  uint32_t man = x & 0x7fffff;
  if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
  if (exp >= 31) return (uint16_t)(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return (uint16_t)sign;
    man |= 0x800000;
    uint32_t shift = (uint32_t)(14 - exp);
    uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t half = sign | ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
  return (uint16_t)half;
}

float ref_bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t ref_float_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

float ref_weight_at(const void *w, lt_dtype_t t, uint64_t i) {
  switch (t) {
  case LT_F16: return ref_half_to_float(((const uint16_t *)w)[i]);
  case LT_BF16: return ref_bf16_to_float(((const uint16_t *)w)[i]);
  default: return ((const float *)w)[i];
  }
}

void ref_add(float *y, const float *a, const float *b, uint32_t n, uint32_t nb) {
  for (uint32_t i = 0; i < n; i++) y[i] = a[i] + b[i % nb];
}

void ref_mul(float *y, const float *a, const float *b, uint32_t n, uint32_t nb) {
  for (uint32_t i = 0; i < n; i++) y[i] = a[i] * b[i % nb];
}

void ref_scale(float *y, const float *a, float s, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) y[i] = s * a[i];
}

void ref_silu(float *y, const float *a, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) y[i] = (float)(a[i] / (1.0 + exp(-(double)a[i])));
}

void ref_gelu(float *y, const float *a, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    double v = a[i];
    y[i] = (float)(0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))));
  }
}

void ref_swiglu(float *y, const float *gate, const float *up, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) y[i] = (float)(gate[i] / (1.0 + exp(-(double)gate[i])) * up[i]);
}

void ref_scatter_add(float *y, const float *x, const int32_t *ids, const float *w, uint32_t n, uint32_t d,
                     uint32_t y_rows) {
  for (uint32_t i = 0; i < n; i++) {
    if (ids[i] < 0 || (uint32_t)ids[i] >= y_rows) continue;
    for (uint32_t j = 0; j < d; j++) y[(uint64_t)ids[i] * d + j] += w[i] * x[(uint64_t)i * d + j];
  }
}
