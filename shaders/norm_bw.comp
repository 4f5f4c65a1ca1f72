#version 450
// RMSNorm backward (pc.h, pc_norm_bw). With y = x * inv * w, inv = 1 / sqrt(mean(x^2) + eps) and g = dLoss/dy:
//   dx = inv * w * g - x * inv^3 * sum(w * g * x) / n        (mode 0: one workgroup per row; keeps rinv[r] = inv)
//   dw = sum over rows of g * x * inv                         (mode 1: one invocation per column, rows in order)
// LayerNorm (pc.layernorm), y = xh * w + b with xh = (x - mean) * inv, inv = 1 / sqrt(var + eps), gw = w * g:
//   dx = inv * (gw - mean(gw) - xh * mean(gw * xh))          (mode 0; keeps rinv[r] = inv, rinv[rows + r] = mean)
//   dw = sum over rows of g * xh                              (mode 1)
//   db = sum over rows of g, written to the dw binding        (mode 2)
// All accumulate in a fixed order, so results do not depend on scheduling.
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
  if (pc.mode != 0u) {
    uint i = flat_index();
    if (i >= pc.n) return;
    float s = 0.0;
    if (pc.mode == 2u)
      for (uint r = pc.r_base; r < pc.r_base + pc.r_len; r++) s += g[r * pc.n + i];
    else if (pc.layernorm != 0u)
      for (uint r = pc.r_base; r < pc.r_base + pc.r_len; r++)
        s = fma(g[r * pc.n + i] * (x[r * pc.n + i] - rinv[pc.rows + r]), rinv[r], s);
    else
      for (uint r = pc.r_base; r < pc.r_base + pc.r_len; r++) s = fma(g[r * pc.n + i] * x[r * pc.n + i], rinv[r], s);
    dw[i] = pc.accumulate != 0u ? dw[i] + s : s;
    return;
  }
  uint r = row_id();
  if (r >= pc.rows) return;
  uint base = r * pc.n, t = gl_LocalInvocationID.x;
  if (pc.layernorm != 0u) {
    float s = 0.0;
    for (uint i = t; i < pc.n; i += WG_X) s += x[base + i];
    float mean = wg_sum(s) / float(pc.n);
    float ss = 0.0, sg = 0.0, sgx = 0.0;
    for (uint i = t; i < pc.n; i += WG_X) {
      float d = x[base + i] - mean, gw = w[i] * g[base + i];
      ss = fma(d, d, ss);
      sg += gw;
      sgx = fma(gw, d, sgx);
    }
    vec4 red = wg_sum4(vec4(ss, sg, sgx, 0.0));
    float inv = inversesqrt(red.x / float(pc.n) + pc.eps);
    float mg = red.y / float(pc.n), c = inv * inv * red.z / float(pc.n);
    for (uint i = t; i < pc.n; i += WG_X) {
      float d = inv * (w[i] * g[base + i] - mg - (x[base + i] - mean) * c);
      dx[base + i] = pc.accumulate != 0u ? dx[base + i] + d : d;
    }
    if (t == 0u) rinv[r] = inv, rinv[pc.rows + r] = mean;
    return;
  }
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
