#version 450
// RMSNorm backward (pc.h, pc_norm_bw). With y = x * inv * w, inv = 1 / sqrt(mean(x^2) + eps) and g = dLoss/dy:
//   dx = inv * w * g - x * inv^3 * sum(w * g * x) / n        (mode 0: one workgroup per row; keeps rinv[r] = inv)
//   dw = sum over rows of g * x * inv                         (mode 1: one invocation per column, rows in order)
// Both accumulate in a fixed order, so results do not depend on scheduling.
#define PC_NORM_BW 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) buffer DX { float dx[]; };
layout(std430, binding = 1) buffer DW { float dw[]; };
layout(std430, binding = 2) readonly buffer G { float g[]; };
layout(std430, binding = 3) readonly buffer X { float x[]; };
layout(std430, binding = 4) readonly buffer W { float w[]; };
layout(std430, binding = 5) buffer RI { float rinv[]; };

void main() {
  if (pc.mode == 1u) {
    uint i = flat_index();
    if (i >= pc.n) return;
    float s = 0.0;
    for (uint r = pc.r_base; r < pc.r_base + pc.r_len; r++) s = fma(g[r * pc.n + i] * x[r * pc.n + i], rinv[r], s);
    dw[i] = pc.accumulate != 0u ? dw[i] + s : s;
    return;
  }
  uint r = row_id();
  if (r >= pc.rows) return;
  uint base = r * pc.n, t = gl_LocalInvocationID.x;
  float ss = 0.0, dot = 0.0;
  for (uint i = t; i < pc.n; i += WG_X) {
    float xv = x[base + i];
    ss = fma(xv, xv, ss);
    dot = fma(w[i] * g[base + i], xv, dot);
  }
  vec4 red = wg_sum4(vec4(ss, dot, 0.0, 0.0));
  float inv = inversesqrt(red.x / float(pc.n) + pc.eps);
  float c = inv * inv * inv * red.y / float(pc.n);
  for (uint i = t; i < pc.n; i += WG_X) {
    float d = inv * w[i] * g[base + i] - x[base + i] * c;
    dx[base + i] = pc.accumulate != 0u ? dx[base + i] + d : d;
  }
  if (t == 0u) rinv[r] = inv;
}
