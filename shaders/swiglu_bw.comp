#version 450
// SwiGLU backward: y = silu(gate) * up, silu(a) = a * s(a), s the logistic function, silu'(a) = s(a) (1 + a (1 -
// s(a))). dgate = dy * up * silu'(gate); dup = dy * silu(gate). With pc.gelu, GeGLU's: y = gelu(gate) * up,
// gelu(a) = a (1 + t) / 2 with t = tanh(u), u = c (a + 0.044715 a^3), c = sqrt(2 / pi); gelu'(a) = (1 + t) / 2 +
// a (1 - t^2) c (1 + 3 * 0.044715 a^2) / 2.
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
  float a = gate[i], d = dy[i];
  if (pc.gelu != 0u) {
    const float c = 0.7978845608028654;
        // 1 + t and 1 - t from e = exp(-2|u|) without cancellation: the larger is 2 / (1 + e), the smaller 2e / (1 + e).
    float u = c * (a + 0.044715 * a * a * a), e = exp(-2.0 * abs(u)), big = 2.0 / (1.0 + e), small = big * e;
    float opt = u >= 0.0 ? big : small, omt = u >= 0.0 ? small : big;
    dgate[i] = d * up[i] * (0.5 * opt + 0.5 * a * opt * omt * c * (1.0 + 3.0 * 0.044715 * a * a));
    dup[i] = d * 0.5 * a * opt;
    return;
  }
  float s = 1.0 / (1.0 + exp(-a));
  dgate[i] = d * up[i] * (s * (1.0 + a * (1.0 - s)));
  dup[i] = d * a * s;
}
