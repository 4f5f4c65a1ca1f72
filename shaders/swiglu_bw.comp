#version 450
// SwiGLU backward: y = silu(gate) * up, silu(a) = a * s(a), s the logistic function, silu'(a) = s(a) (1 + a (1 -
// s(a))). dgate = dy * up * silu'(gate); dup = dy * silu(gate).
#define PC_SWIGLU_BW 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) writeonly buffer DG { float dgate[]; };
layout(std430, binding = 1) writeonly buffer DU { float dup[]; };
layout(std430, binding = 2) readonly buffer DY { float dy[]; };
layout(std430, binding = 3) readonly buffer GT { float gate[]; };
layout(std430, binding = 4) readonly buffer UP { float up[]; };

void main() {
  uint i = flat_index();
  if (i >= pc.n) return;
  float a = gate[i], s = 1.0 / (1.0 + exp(-a)), d = dy[i];
  dgate[i] = d * up[i] * (s * (1.0 + a * (1.0 - s)));
  dup[i] = d * a * s;
}
