#version 450
// Conv1d as columns (pc.h, pc_conv_cols), x and y row-major with time as rows. One invocation per output element
// and at most K loop iterations, so any length runs in one dispatch.
//   mode 0, im2col:  y[t, c * K + k] = x[t * stride + k - pad, c], 0 outside x (y [t_out, C * K], x [t_in, C])
//   mode 1, its transpose as a gather: y[u, c] = sum over k of x[t, c * K + k] with t * stride + k - pad = u
//           (y [t_in, C], x [t_out, C * K]): the gradient of the columns folded back onto the input, in a fixed order
#define PC_CONV_COLS 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) writeonly buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };

void main() {
  uint i = flat_index(), C = pc.ch, K = pc.k;
  if (pc.mode == 0u) {
    if (i >= pc.t_out * C * K) return;
    uint t = i / (C * K), ck = i - t * C * K, c = ck / K, k = ck - c * K;
    int u = int(t * pc.stride + k) - int(pc.pad);
    y[i] = u >= 0 && u < int(pc.t_in) ? x[uint(u) * C + c] : 0.0;
    return;
  }
  if (i >= pc.t_in * C) return;
  uint u = i / C, c = i - u * C;
  float s = 0.0;
  for (uint k = 0u; k < K; k++) {
    int num = int(u + pc.pad) - int(k);
    if (num < 0 || uint(num) % pc.stride != 0u) continue;
    uint t = uint(num) / pc.stride;
    if (t < pc.t_out) s += x[(t * C + c) * K + k];
  }
  y[i] = s;
}
