#version 450
// idx[r,:k], val[r,:k] = the k largest x[r,:], descending, lower index first on ties (NaN ranks below every
// number). One workgroup per row, k rounds: round j picks the first element, in that order, that comes after
// the element picked in round j - 1, so each invocation loops k * ceil(n / WG_X) times (the wrapper bounds it).
#define PC_ROWS 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer I { uint idx[]; };
layout(std430, binding = 1) writeonly buffer V { float val[]; };
layout(std430, binding = 2) readonly buffer X { float x[]; };

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint base = r * pc.n, t = gl_LocalInvocationID.x;
  uint pk = 0xffffffffu, pi = 0u; // before every element: no key reaches 0xffffffff
  for (uint j = 0u; j < pc.k; j++) {
    uint bk = 0u, bi = 0xffffffffu;
    for (uint i = t; i < pc.n; i += WG_X) {
      uint k = rows_key(x[base + i]);
      bool after = k < pk || (k == pk && i > pi);
      if (after && rows_before(k, i, bk, bi)) {
        bk = k;
        bi = i;
      }
    }
    wg_argmax(bk, bi);
    if (t == 0u) {
      idx[r * pc.k + j] = bi;
      val[r * pc.k + j] = x[base + bi];
    }
    pk = bk;
    pi = bi;
  }
}
