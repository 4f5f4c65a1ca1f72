#version 450
// Partial sums of x (or of its squares, or maxima) over chunks: workgroup gid sums x[gid * chunk, (gid + 1) * chunk), its
// invocations striding over the chunk, then a fixed tree: the same result on every run. The wrapper repeats it on
// the partials until one value is left.
#define PC_REDUCE 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer O { float o[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };

void main() {
  uint gid = row_id(), t = gl_LocalInvocationID.x;
  uint lo = gid * pc.chunk, hi = min(lo + pc.chunk, pc.n);
  if (lo >= pc.n) return; // the whole workgroup leaves together
  float s;
  if (pc.mode == REDUCE_MAX) {
    s = ROWS_NEG_INF;
    for (uint i = lo + t; i < hi; i += WG_X) s = max(s, x[i]);
    s = wg_max(s);
  } else {
    s = 0.0;
    for (uint i = lo + t; i < hi; i += WG_X) s += pc.mode == REDUCE_SUMSQ ? x[i] * x[i] : x[i];
    s = wg_sum(s);
  }
  if (t == 0u) o[gid] = s;
}
