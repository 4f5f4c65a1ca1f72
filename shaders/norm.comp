#version 450
// RMSNorm y = x / sqrt(mean(x^2) + eps) * w, or (layernorm) LayerNorm y = (x - mean) / sqrt(var + eps) * w + b,
// one workgroup per row. LayerNorm takes the variance of the centred values (a second pass) rather than
// E[x^2] - mean^2, which cancels catastrophically when |mean| >> std.
#define PC_NORM 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer W { float w[]; };
layout(std430, binding = 3) readonly buffer B { float b[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint base = r * pc.n, t = gl_LocalInvocationID.x;
  float mean = 0.0;
  if (pc.layernorm != 0u) {
    float s = 0.0;
    for (uint i = t; i < pc.n; i += WG_X) s += x[base + i];
    mean = wg_sum(s) / float(pc.n);
  }
  float ss = 0.0;
  for (uint i = t; i < pc.n; i += WG_X) {
    float d = x[base + i] - mean;
    ss += d * d;
  }
  float scale = inversesqrt(wg_sum(ss) / float(pc.n) + pc.eps);
  // Each invocation reads and writes only its own elements, so y may alias x.
  if (pc.layernorm != 0u) {
    for (uint i = t; i < pc.n; i += WG_X) y[base + i] = (x[base + i] - mean) * scale * w[i] + b[i];
  } else {
    for (uint i = t; i < pc.n; i += WG_X) y[base + i] = x[base + i] * scale * w[i];
  }
}
