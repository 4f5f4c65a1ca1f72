#version 450
// Weighted scatter-add of rows: y[ids[i], j] += w[i] * x[i, j]. ids are distinct within one dispatch, so no two
// invocations touch the same element of y.
#define PC_SCATTER 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer I { int ids[]; };
layout(std430, binding = 3) readonly buffer W { float w[]; };

void main() {
  uint e = flat_index();
  if (e >= pc.n * pc.d) return;
  uint i = e / pc.d, j = e - i * pc.d;
  int r = ids[i];
  if (r < 0 || uint(r) >= pc.y_rows) return;
  y[uint(r) * pc.d + j] += w[i] * x[e];
}
