#version 450
// Embedding gather: y[r, :] = table[ids[r] - row_lo, :] for ids in [row_lo, row_hi); one invocation per output
// element, x over the row's dims, y and z over rows. Other rows of y are not written, so a table split into
// bindable pieces is gathered piece by piece. TABLE_F16=1 reads an f16 table, TABLE_BF16=1 a bfloat16 one (both
// converted exactly to f32); GQ=<block format> a table of GGUF blocks (include/qblock.glsl), one invocation per
// octet of the row's dims instead of per element. PERTURB=1 (float tables): each value read is table[i] +
// scale * z(seed, tensor_id, i), i counted from the piece's first element (perturb.comp's normals), for a
// zeroth-order step's forward pass that leaves the table as it is.
#if TABLE_F16 || TABLE_BF16
#extension GL_EXT_shader_16bit_storage : require
#endif
#extension GL_EXT_control_flow_attributes : enable
#define PC_EMBED 1
#include "pc.h"
#include "common.glsl"
#if PERTURB
#include "philox.glsl"
// perturb.comp's z for element i: normal i % 4 of the quad i / 4.
float z_at(uint i) {
  uvec4 r = quad_bits(i >> 2, pc.tensor_id, 0u, pc.seed_lo, pc.seed_hi);
  vec2 n = (i & 2u) == 0u ? box_muller24(r.x, r.y) : box_muller24(r.z, r.w);
  return n[i & 1u];
}
#endif

layout(std430, binding = 0) writeonly buffer Y { float y[]; };
#if TABLE_F16
layout(std430, binding = 1) readonly buffer T { float16_t table[]; };
float table_at(uint i) { return float(table[i]); }
#elif TABLE_BF16
layout(std430, binding = 1) readonly buffer T { uint16_t table[]; };
float table_at(uint i) { return uintBitsToFloat(uint(table[i]) << 16); }
#elif GQ
layout(std430, binding = 1) readonly buffer T { uint wq[]; };
#include "qblock.glsl"
#else
layout(std430, binding = 1) readonly buffer T { float table[]; };
float table_at(uint i) { return table[i]; }
#endif
layout(std430, binding = 2) readonly buffer I { int ids[]; };

void main() {
  uint r = gl_WorkGroupID.z * gl_NumWorkGroups.y + gl_WorkGroupID.y;
#if GQ
  uint col = gl_GlobalInvocationID.x * 8u; // dim is a multiple of the block size
#else
  uint col = gl_GlobalInvocationID.x;
#endif
  if (col >= pc.dim || r >= pc.n_ids) return;
  int id = ids[r];
  if (id < 0 || uint(id) < pc.row_lo || uint(id) >= pc.row_hi) return;
#if GQ
  vec4 lo, hi;
  qb_octet((uint(id) - pc.row_lo) * pc.row_bytes, col, lo, hi);
  [[unroll]] for (uint i = 0; i < 4u; i++) {
    y[r * pc.dim + col + i] = lo[i];
    y[r * pc.dim + col + 4u + i] = hi[i];
  }
#else
  uint i = (uint(id) - pc.row_lo) * pc.dim + col;
#if PERTURB
  y[r * pc.dim + col] = table_at(i) + pc.scale * z_at(i);
#else
  y[r * pc.dim + col] = table_at(i);
#endif
#endif
}
