#version 450
// Cross-entropy gradient over the vocabulary, in place on the logits: dlogits[r, j] = (softmax(x[r])_j -
// [j == t[r]]) * w[r], with softmax from the row's log-sum-exp (computed before by lse.comp). One invocation per
// element, so rows of any width need no loop.
#define PC_CE_GRAD 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer L { float lse[]; };
layout(std430, binding = 2) readonly buffer T { int tgt[]; };
layout(std430, binding = 3) readonly buffer W { float w[]; };

void main() {
  uint i = flat_index();
  if (i >= pc.rows * pc.n) return;
  uint r = i / pc.n, j = i - r * pc.n;
  float p = exp(x[i] - lse[r]);
  x[i] = (p - (int(j) == tgt[r] ? 1.0 : 0.0)) * w[r];
}
