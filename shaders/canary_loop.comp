#version 450
// Driver-trap canary: invocation 0 adds pc.step pc.n times in one loop and stores the sum and the iteration
// count, showing whether the driver runs long loops to the end (lavapipe stops them near 65,535 iterations).
#define PC_CANARY 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) writeonly buffer O { float o[]; };

void main() {
  if (gl_GlobalInvocationID.x != 0u) return;
  float s = 0.0;
  uint count = 0u;
  for (uint i = 0u; i < pc.n; i++) {
    s += pc.step;
    count++;
  }
  o[0] = s;
  o[1] = uintBitsToFloat(count);
}
