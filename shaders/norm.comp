#version 450
// RMSNorm y = x / sqrt(mean(x^2) + eps) * w, or (layernorm) LayerNorm y = (x - mean) / sqrt(var + eps) * w + b,
// one workgroup per row. LayerNorm takes the variance of the centred values (a second pass) rather than
// E[x^2] - mean^2, which cancels catastrophically when |mean| >> std.
#define PC_NORM 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer Y { ROWS_T y[]; };
layout(std430, binding = 1) readonly buffer X { ROWS_T x[]; };
layout(std430, binding = 2) readonly buffer W { ROWS_T w[]; };
layout(std430, binding = 3) readonly buffer B { ROWS_T b[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint nv = pc.n / ROWS_W, base = r * nv, t = gl_LocalInvocationID.x;
  float mean = 0.0;
  if (pc.layernorm != 0u) {
    float s = 0.0;
    for (uint i = t; i < nv; i += WG_X) s += rows_hsum(x[base + i]);
    mean = wg_sum(s) / float(pc.n);
  }
  float ss = 0.0;
  for (uint i = t; i < nv; i += WG_X) {
    ROWS_T d = x[base + i] - mean;
    ss += rows_hsum(d * d);
  }
  float scale = inversesqrt(wg_sum(ss) / float(pc.n) + pc.eps);
  // Each invocation reads and writes only its own elements, so y may alias x.
  if (pc.layernorm != 0u) {
    for (uint i = t; i < nv; i += WG_X) y[base + i] = (x[base + i] - mean) * scale * w[i] + b[i];
  } else {
    for (uint i = t; i < nv; i += WG_X) y[base + i] = x[base + i] * scale * w[i];
  }
}
