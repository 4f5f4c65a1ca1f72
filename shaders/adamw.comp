#version 450
// AdamW, fused: one invocation per element updates the moments and the parameter (pc.h, pc_adamw). The gradient
// is scaled first (global-norm clipping); decay is decoupled (applied to p, not through the moments).
#define PC_ADAMW 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) buffer P { float p[]; };
layout(std430, binding = 1) readonly buffer G { float g[]; };
layout(std430, binding = 2) buffer M { float m[]; };
layout(std430, binding = 3) buffer V { float v[]; };

void main() {
  uint i = flat_index();
  if (i >= pc.n) return;
  float gi = g[i] * pc.grad_scale;
  float mi = pc.beta1 * m[i] + (1.0 - pc.beta1) * gi;
  float vi = pc.beta2 * v[i] + (1.0 - pc.beta2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  float upd = (mi / pc.c1) / (sqrt(vi / pc.c2) + pc.eps);
  p[i] = p[i] - pc.lr * (upd + pc.weight_decay * p[i]);
}
