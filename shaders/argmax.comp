#version 450
// idx[r] = index of the largest x[r,:], the lowest index on ties; NaN ranks below every number (an all-NaN row
// gives 0). One workgroup per row.
#define PC_ROWS 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer I { uint idx[]; };
layout(std430, binding = 1) readonly buffer X { ROWS_T x[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint nv = pc.n / ROWS_W, base = r * nv, t = gl_LocalInvocationID.x;
  uint bk = 0u, bi = 0xffffffffu;
  for (uint i = t; i < nv; i += WG_X) rows_consider_t(x[base + i], i * ROWS_W, 0xffffffffu, 0u, bk, bi);
  wg_argmax(bk, bi);
  if (t == 0u) idx[r] = bi;
}
