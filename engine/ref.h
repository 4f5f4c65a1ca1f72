/* CPU references: the naive version of every GPU op, computing the same math in plain C (double accumulation
 * where a reduction is involved), used by the tests and benchmarks. Outputs first, then inputs, then shapes. */
#ifndef LATHE_REF_H
#define LATHE_REF_H

#include <stdint.h>

/* Converts an IEEE half (bits) to float. */
float ref_half_to_float(uint16_t h);
/* Converts a float to IEEE half bits, rounding to nearest even. */
uint16_t ref_float_to_half(float f);

/* y[i] = a[i] + b[i % nb] */
void ref_add(float *y, const float *a, const float *b, uint32_t n, uint32_t nb);
/* y[i] = a[i] * b[i % nb] */
void ref_mul(float *y, const float *a, const float *b, uint32_t n, uint32_t nb);
/* y[i] = s * a[i] */
void ref_scale(float *y, const float *a, float s, uint32_t n);
/* y[i] = a[i] / (1 + exp(-a[i])) */
void ref_silu(float *y, const float *a, uint32_t n);
/* y[i] = 0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3))) */
void ref_gelu(float *y, const float *a, uint32_t n);
/* y[i] = silu(gate[i]) * up[i] */
void ref_swiglu(float *y, const float *gate, const float *up, uint32_t n);

#endif
