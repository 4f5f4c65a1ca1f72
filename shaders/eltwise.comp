#version 450
// Elementwise ops: y[i] = f(a[i], b[i % nb]).
#define PC_ELTWISE 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) writeonly buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer A { float a[]; };
layout(std430, binding = 2) readonly buffer B { float b[]; };

#include "act.glsl"

void main() {
  uint i = flat_index();
  if (i >= pc.n) return;
  float v = a[i];
  switch (pc.op) {
  case ELT_ADD: v = v + b[i % pc.nb]; break;
  case ELT_MUL: v = v * b[i % pc.nb]; break;
  case ELT_SCALE: v = v * pc.scale; break;
  case ELT_SILU: v = silu(v); break;
  case ELT_GELU: v = gelu_tanh(v); break;
  case ELT_GEGLU: v = gelu_tanh(v) * b[i % pc.nb]; break;
  case ELT_SOFTCAP: v = pc.scale * tanh_safe(v / pc.scale); break;
  case ELT_SOFTCAP_BW: {
    float t = b[i % pc.nb] / pc.scale;
    v = v * (1.0 - t * t);
    break;
  }
  case ELT_SWIGLU: v = silu(v) * b[i % pc.nb]; break;
  case ELT_RELU: v = max(v, 0.0); break;
  case ELT_RELU_BW: v = b[i % pc.nb] > 0.0 ? v : 0.0; break;
  case ELT_AXPY: v = fma(pc.scale, b[i % pc.nb], v); break;
  case ELT_GELU_ERF: v = gelu_erf(v); break;
  case ELT_GELU_ERF_BW: v = v * gelu_erf_grad(b[i % pc.nb]); break;
  case ELT_LOGMEL_CLAMP: v = (max(v, b[i % pc.nb] - pc.scale) + 4.0) * 0.25; break;
  }
  y[i] = v;
}
