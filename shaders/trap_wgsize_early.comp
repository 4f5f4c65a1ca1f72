#version 450
// Driver-trap probe: gl_WorkGroupSize read in a function written BEFORE the layout(local_size_x_id) declaration
// (as Lathe's first common.glsl did). glslang binds such a use to the size known at that point of the source,
// the default (1, 1, 1), whatever the specialisation constant later says.
#define PC_CANARY 1
#include "pc.h"

uint size_seen_early() { return gl_WorkGroupSize.x; }

layout(local_size_x_id = 0) in;
layout(std430, binding = 0) buffer O { uint o[]; };

void main() {
  if (gl_LocalInvocationID.x == 0u) {
    o[0] = size_seen_early();
    o[1] = gl_WorkGroupSize.x;
  }
  atomicAdd(o[2], 1u);
}
