#version 450
// Driver-trap probe: with the workgroup size given by specialisation constant 0 (common.glsl), what do
// gl_WorkGroupSize.x (read directly, through a specialisation-constant expression, and as a loop stride) and
// WG_X read, and how many invocations does the workgroup really have?
#define PC_CANARY 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) buffer O { uint o[]; };

const uint WG_HALF = gl_WorkGroupSize.x / 2u;

void main() {
  if (gl_LocalInvocationID.x == 0u) {
    o[0] = gl_WorkGroupSize.x;
    o[1] = WG_X;
    o[3] = 2u * WG_HALF;
  }
  atomicAdd(o[2], 1u);
  // Invocations striding by gl_WorkGroupSize.x over 4 * WG_X items visit each once: 4 * WG_X visits in all.
  uint visits = 0u;
  for (uint i = gl_LocalInvocationID.x; i < 4u * WG_X; i += gl_WorkGroupSize.x) visits++;
  atomicAdd(o[4], visits);
}
