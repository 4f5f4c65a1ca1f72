// Activations shared by the elementwise ops (eltwise.comp) and the gated GEMV (gemv.comp with GLU), so that a
// fused gate-and-up product applies exactly the activation the separate ops apply.
#ifndef LATHE_ACT_GLSL
#define LATHE_ACT_GLSL

float silu(float v) { return v / (1.0 + exp(-v)); }

// tanh(u) written through exp so large |u| saturates instead of producing inf/inf.
float tanh_safe(float u) { return 1.0 - 2.0 / (exp(2.0 * u) + 1.0); }

float gelu_tanh(float v) { return 0.5 * v * (1.0 + tanh_safe(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

#endif
