#version 450
// out[r] = dot(a[r,:], b[r,:]) / (|a[r,:]| |b[r,:]|), 0 when either norm is 0. One workgroup per row; the three
// sums are reduced together.
#define PC_ROWS 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer O { float o[]; };
layout(std430, binding = 1) readonly buffer A { ROWS_T a[]; };
layout(std430, binding = 2) readonly buffer B { ROWS_T b[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint nv = pc.n / ROWS_W, base = r * nv, t = gl_LocalInvocationID.x;
  vec4 s = vec4(0.0); // (a.b, a.a, b.b, unused)
  for (uint i = t; i < nv; i += WG_X) {
    ROWS_T u = a[base + i], v = b[base + i];
    s += vec4(rows_hsum(u * v), rows_hsum(u * u), rows_hsum(v * v), 0.0);
  }
  s = wg_sum4(s);
  // The product of the two norms, not sqrt(a.a * b.b), which would overflow sooner.
  if (t == 0u) o[r] = (s.y > 0.0 && s.z > 0.0) ? s.x / (sqrt(s.y) * sqrt(s.z)) : 0.0;
}
