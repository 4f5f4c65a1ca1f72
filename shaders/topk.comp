#version 450
// idx[r,:k], val[r,:k] = the k largest x[r,:], descending, lower index first on ties (NaN ranks below every
// number). k rounds: round j picks the first element, in that order, that comes after the element picked in
// round j - 1. Each invocation loops k * (its share of the row) times; the wrapper bounds it.
// Default: one workgroup per row. ROW_PER_INVOCATION (narrow rows such as MoE routing, many rows): one
// invocation per row, no barriers.
#define PC_ROWS 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer I { uint idx[]; };
layout(std430, binding = 1) writeonly buffer V { float val[]; };
layout(std430, binding = 2) readonly buffer X { ROWS_T x[]; };

void main() {
#if ROW_PER_INVOCATION
  uint r = flat_index(), t = 0u, stride = 1u;
  if (r >= pc.rows) return;
#else
  uint r = row_id(), t = gl_LocalInvocationID.x, stride = WG_X;
  if (r >= pc.rows) return; // uniform over the workgroup
#endif
  uint nv = pc.n / ROWS_W, base = r * nv;
  uint pk = 0xffffffffu, pi = 0u; // before every element: no key reaches 0xffffffff
  for (uint j = 0u; j < pc.k; j++) {
    uint bk = 0u, bi = 0xffffffffu;
    for (uint i = t; i < nv; i += stride) rows_consider_t(x[base + i], i * ROWS_W, pk, pi, bk, bi);
#if !ROW_PER_INVOCATION
    wg_argmax(bk, bi);
#endif
    if (t == 0u) {
      idx[r * pc.k + j] = bi;
      val[r * pc.k + j] = ROWS_AT(x, base, bi);
    }
    pk = bk;
    pi = bi;
  }
}
