#version 450
// lse[r] = log(sum(exp(x[r,:]))) (max-subtracted), one workgroup per row; with has_target also the
// cross-entropy nll[r] = lse[r] - x[r, target[r]], NaN when the target id is outside [0, n).
#define PC_ROWS 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer L { float lse[]; };
layout(std430, binding = 1) writeonly buffer N { float nll[]; };
layout(std430, binding = 2) readonly buffer X { float x[]; };
layout(std430, binding = 3) readonly buffer T { int target[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint base = r * pc.n, t = gl_LocalInvocationID.x;
  float m = ROWS_NEG_INF, s = 0.0;
  for (uint i = t; i < pc.n; i += WG_X) {
    float v = x[base + i];
    if (v > m) {
      s = s * exp(m - v) + 1.0;
      m = v;
    } else if (m > ROWS_NEG_INF) {
      s += exp(v - m);
    }
  }
  float mx = wg_max(m);
  float tot = wg_sum(m > ROWS_NEG_INF ? s * exp(m - mx) : 0.0);
  if (t != 0u) return;
  float l = mx + log(tot);
  lse[r] = l;
  if (pc.has_target != 0u) {
    int tg = target[r];
    nll[r] = (tg >= 0 && uint(tg) < pc.n) ? l - x[base + uint(tg)] : ROWS_NAN;
  }
}
