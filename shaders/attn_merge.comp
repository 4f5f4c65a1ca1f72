#version 450
// Merges the per-split partials of attn.comp (log-sum-exp): out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M)
// with M the largest split max. One workgroup per (query row, head); invocations own output dims.
#define PC_ATTN 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) writeonly buffer O { float o[]; };        // [n_q, n_heads, head_dim]
layout(std430, binding = 1) readonly buffer PML { vec2 part_ml[]; };  // [rows, n_heads, n_splits] (max, sum)
layout(std430, binding = 2) readonly buffer PACC { float part_acc[]; }; // [rows, n_heads, n_splits, head_dim]

void main() {
  uint tid = gl_LocalInvocationID.x;
  uint h = gl_WorkGroupID.x, lrow = gl_WorkGroupID.y;
  uint t = pc.row_base + lrow;
  if (t >= pc.n_q || h >= pc.n_heads) return;
  uint hd = pc.head_dim, ns = pc.n_splits;
  uint base = (lrow * pc.n_heads + h) * ns;
  float mx = part_ml[base].x;
  for (uint s = 1u; s < ns; s++) mx = max(mx, part_ml[base + s].x);
  float l = 0.0;
  for (uint s = 0u; s < ns; s++) l += part_ml[base + s].y * exp(part_ml[base + s].x - mx);
  float inv = l > 0.0 ? 1.0 / l : 0.0;
  uint oo = (t * pc.n_heads + h) * hd;
  for (uint d = tid; d < hd; d += WG_X) {
    float a = 0.0;
    for (uint s = 0u; s < ns; s++) a += part_acc[(base + s) * hd + d] * exp(part_ml[base + s].x - mx);
    o[oo + d] = a * inv;
  }
}
