#version 450
// Zeroth-order perturbation: x[i] += scale * z(seed, tensor_id, i) for i < n, z standard normal from
// Philox-4x32-10 keyed by (seed lo, seed hi) on counter (i/4 lo, i/4 hi, tensor_id, 0), Box-Muller on outputs
// (0,1) and (2,3), element i taking normal i % 4. One invocation handles the four elements of one Philox call.
#define PC_PERTURB 1
#include "pc.h"
#include "common.glsl"
#include "philox.glsl"

// One binding seen two ways: a whole quad is one 16-byte access, the ragged tail goes element by element.
layout(std430, binding = 0) buffer X4 { vec4 x4[]; };
layout(std430, binding = 0) buffer X1 { float x1[]; };

void main() {
  uint q = flat_index(); // quad: elements 4q .. 4q+3
  uint full = pc.n >> 2;
  if (q > full || (q == full && (pc.n & 3u) == 0u)) return;
  // Counter high word: the element index i = 4q + j is a uint (n is 32-bit), so q < 2^30 and q's high word is 0.
  uvec4 r = philox4x32_10(uvec4(q, 0u, pc.tensor_id, 0u), uvec2(pc.seed_lo, pc.seed_hi));
  vec4 z = vec4(box_muller24(r.x, r.y), box_muller24(r.z, r.w));
  if (q < full) {
    x4[q] += pc.scale * z;
  } else {
    uint i = 4u * q; // i + j < n <= 2^32 - 1 never wraps
    for (uint j = 0u; j < (pc.n & 3u); j++) x1[i + j] += pc.scale * z[j];
  }
}
