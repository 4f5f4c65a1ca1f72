#version 450
// idx[r] = index of the largest x[r,:], the lowest index on ties; NaN ranks below every number (an all-NaN row
// gives 0). One workgroup per row.
#define PC_ROWS 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer I { uint idx[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint base = r * pc.n, t = gl_LocalInvocationID.x;
  uint bk = 0u, bi = 0xffffffffu;
  for (uint i = t; i < pc.n; i += WG_X) {
    uint k = rows_key(x[base + i]);
    if (rows_before(k, i, bk, bi)) {
      bk = k;
      bi = i;
    }
  }
  wg_argmax(bk, bi);
  if (t == 0u) idx[r] = bi;
}
