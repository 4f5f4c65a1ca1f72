// Activations shared by the elementwise ops (eltwise.comp) and the gated GEMV (gemv.comp with GLU), so that a
// fused gate-and-up product applies exactly the activation the separate ops apply.
#ifndef LATHE_ACT_GLSL
#define LATHE_ACT_GLSL

float silu(float v) { return v / (1.0 + exp(-v)); }

// tanh(u) written through exp so large |u| saturates instead of producing inf/inf.
float tanh_safe(float u) { return 1.0 - 2.0 / (exp(2.0 * u) + 1.0); }

// erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, about one f32 step of values near 1).
float erf_as(float v) {
  float a = abs(v), t = 1.0 / (1.0 + 0.3275911 * a);
  float p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  float e = 1.0 - p * exp(-a * a);
  return v < 0.0 ? -e : e;
}

// The exact GELU, v * Phi(v), and its derivative Phi(v) + v * phi(v).
float gelu_erf(float v) { return 0.5 * v * (1.0 + erf_as(v * 0.7071067811865476)); }
float gelu_erf_grad(float v) {
  return 0.5 * (1.0 + erf_as(v * 0.7071067811865476)) + v * 0.3989422804014327 * exp(-0.5 * v * v);
}

float gelu_tanh(float v) { return 0.5 * v * (1.0 + tanh_safe(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

#endif
