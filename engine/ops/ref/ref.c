/* CPU references for the elementwise ops. */
#include <math.h>
#include <string.h>

#include "engine/ops/ref/ref.h"

float ref_weight_at(const void *w, lt_dtype_t t, uint64_t i) {
  switch (t) {
  case LT_F16: return dtype_half_to_float(((const uint16_t *)w)[i]);
  case LT_BF16: return dtype_bf16_to_float(((const uint16_t *)w)[i]);
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

void ref_geglu(float *y, const float *gate, const float *up, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    double v = gate[i];
    y[i] = (float)(0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))) * up[i]);
  }
}

void ref_softcap(float *y, const float *a, float cap, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) y[i] = (float)(cap * tanh((double)a[i] / cap));
}

void ref_relu(float *y, const float *a, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) y[i] = a[i] > 0 ? a[i] : 0.0f;
}

void ref_relu_backward(float *dx, const float *dy, const float *x, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) dx[i] = x[i] > 0 ? dy[i] : 0.0f;
}

void ref_scatter_add(float *y, const float *x, const int32_t *ids, const float *w, uint32_t n, uint32_t d,
                     uint32_t y_rows) {
  for (uint32_t i = 0; i < n; i++) {
    if (ids[i] < 0 || (uint32_t)ids[i] >= y_rows) continue;
    for (uint32_t j = 0; j < d; j++) y[(uint64_t)ids[i] * d + j] += w[i] * x[(uint64_t)i * d + j];
  }
}
