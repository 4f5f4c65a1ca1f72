#version 450
// RoPE in place on x[rows, n_heads, head_dim]: one invocation per rotated pair, x over the (head, pair)s of a row,
// y and z over rows. The first rot_dim dims of each head turn by the angle of pos[row] read from the (cos, sin)
// table [max_pos, rot_dim / 2]. Rows whose position lies outside the table are left untouched. pc.inverse turns
// by minus the angle: the rotation's transpose, which is RoPE's backward pass.
#define PC_ROPE 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer P { int pos[]; };
layout(std430, binding = 2) readonly buffer T { vec2 cs_table[]; }; // (cos, sin)

void main() {
  uint pairs = pc.rot_dim / 2u;
  uint i = gl_GlobalInvocationID.x, row = gl_WorkGroupID.z * gl_NumWorkGroups.y + gl_WorkGroupID.y;
  if (i >= pc.n_heads * pairs || row >= pc.rows) return;
  int p = pos[row];
  if (p < 0 || uint(p) >= pc.max_pos) return;
  uint head = i / pairs, pair = i - head * pairs;
  vec2 cs = cs_table[uint(p) * pairs + pair];
  if (pc.inverse != 0u) cs.y = -cs.y;
  uint base = (row * pc.n_heads + head) * pc.head_dim;
  // neox (Hugging Face rotate_half): pairs (i, i + rot/2); interleaved (GGUF): pairs (2i, 2i + 1).
  uint i0 = pc.neox != 0u ? base + pair : base + 2u * pair;
  uint i1 = pc.neox != 0u ? i0 + pairs : i0 + 1u;
  float a = x[i0], b = x[i1];
  x[i0] = a * cs.x - b * cs.y;
  x[i1] = b * cs.x + a * cs.y;
}
