#version 450
// lse[r] = log(sum(exp(x[r,:]))) (max-subtracted), one workgroup per row; with has_target 1 also the
// cross-entropy nll[r] = lse[r] - x[r, target[r]], NaN when the target id is outside [0, n). With has_target 2,
// binding 3 holds a scale per row (f32 bits) and lse[r] = log(sum(exp(x[r,:] * scale[r]))) (a temperature's sum).
#define PC_ROWS 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer L { float lse[]; };
layout(std430, binding = 1) writeonly buffer N { float nll[]; };
layout(std430, binding = 2) readonly buffer X { ROWS_T x[]; };
layout(std430, binding = 3) readonly buffer T { int target[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint nv = pc.n / ROWS_W, base = r * nv, t = gl_LocalInvocationID.x;
  float m = ROWS_NEG_INF, s = 0.0, scale = pc.has_target == 2u ? intBitsToFloat(target[r]) : 1.0;
  for (uint i = t; i < nv; i += WG_X) {
    ROWS_T v = x[base + i];
    if (pc.has_target == 2u) v *= scale;
    float mv = rows_hmax(v);
    if (mv > m) {
      s *= exp(m - mv);
      m = mv;
    }
    if (m > ROWS_NEG_INF) s += rows_hsum(exp(v - m));
  }
  float mx = wg_max(m);
  float tot = wg_sum(m > ROWS_NEG_INF ? s * exp(m - mx) : 0.0);
  if (t != 0u) return;
  float l = mx + log(tot);
  lse[r] = l;
  if (pc.has_target == 1u) {
    int tg = target[r];
    nll[r] = (tg >= 0 && uint(tg) < pc.n) ? l - ROWS_AT(x, base, uint(tg)) : ROWS_NAN;
  }
}
