#version 450
// y[r,:] = softmax(x[r,:]), one workgroup per row. Pass 1 keeps an online (max, sum of exp(x - max)) per
// invocation, so the row is read twice in all, not three times; the pairs are merged over the workgroup.
#define PC_ROWS 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return; // uniform over the workgroup
  uint base = r * pc.n, t = gl_LocalInvocationID.x;
  float m = ROWS_NEG_INF, s = 0.0;
  for (uint i = t; i < pc.n; i += WG_X) {
    float v = x[base + i];
    if (v > m) {
      s = s * exp(m - v) + 1.0;
      m = v;
    } else if (m > ROWS_NEG_INF) {
      s += exp(v - m); // NaN v propagates here; v = -inf adds 0
    }
  }
  float mx = wg_max(m);
  // An invocation that saw only -inf (or nothing) holds s = 0 and contributes 0, never exp(-inf + inf).
  float tot = wg_sum(m > ROWS_NEG_INF ? s * exp(m - mx) : 0.0);
  float inv = 1.0 / tot;
  for (uint i = t; i < pc.n; i += WG_X) y[base + i] = exp(x[base + i] - mx) * inv;
}
