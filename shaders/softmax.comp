#version 450
// y[r,:] = softmax(x[r,:]), one workgroup per row. Pass 1 keeps an online (max, sum of exp(x - max)) per
// invocation, so the row is read twice in all, not three times; the pairs are merged over the workgroup.
#define PC_ROWS 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer Y { ROWS_T y[]; };
layout(std430, binding = 1) readonly buffer X { ROWS_T x[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return; // uniform over the workgroup
  uint nv = pc.n / ROWS_W, base = r * nv, t = gl_LocalInvocationID.x;
  float m = ROWS_NEG_INF, s = 0.0;
  for (uint i = t; i < nv; i += WG_X) {
    ROWS_T v = x[base + i];
    float mv = rows_hmax(v);
    if (mv > m) {
      s *= exp(m - mv);
      m = mv;
    }
    if (m > ROWS_NEG_INF) s += rows_hsum(exp(v - m)); // -inf elements add 0; NaN propagates
  }
  float mx = wg_max(m);
  // An invocation that saw only -inf (or nothing) holds s = 0 and contributes 0, never exp(-inf + inf).
  float tot = wg_sum(m > ROWS_NEG_INF ? s * exp(m - mx) : 0.0);
  float inv = 1.0 / tot;
  // Each invocation reads and writes only its own elements, so y may alias x.
  for (uint i = t; i < nv; i += WG_X) y[base + i] = exp(x[base + i] - mx) * inv;
}
