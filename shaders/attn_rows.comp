#version 450
// Causal attention for small heads (prefill): one invocation per query (row, head) walks its visible keys of one
// split alone, KC at a time, with the online softmax (running max, sum) and the output row in registers: no shared
// memory, no barriers, no tiles left idle by a head of a few dims. Neighbouring invocations take neighbouring
// queries of one KV head (query = row x G + head in the group), so they read the same keys at about the same time.
// One split writes out[]; several write the partials (max, sum, acc) that attn_merge.comp combines, in attn.comp's
// layout. The C wrapper (ops_attn.c) sizes splits within the loop budget.
// Defines: HD4N (head_dim / 4; heads a multiple of 4 only), KC (keys per step), KV_TEXEL (K and V through RGBA32F
// texel views, CPU drivers: see include/matmul.glsl).
#extension GL_EXT_control_flow_attributes : require
#define PC_ATTN 1
#include "pc.h"
#include "common.glsl"

// Finite stand-in for -inf: exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
#define NEG_BIG -1.0e30

layout(std430, binding = 0) writeonly buffer O { vec4 o4[]; }; // [n_q, n_heads, head_dim]
layout(std430, binding = 1) readonly buffer Q { vec4 q4[]; };  // [n_q, n_heads, head_dim]
#if KV_TEXEL
layout(binding = 2) uniform samplerBuffer k4t; // [kv_len, n_kv_heads, head_dim] as vec4 texels
layout(binding = 3) uniform samplerBuffer v4t;
vec4 k_at(uint i) { return texelFetch(k4t, int(i)); }
vec4 v_at(uint i) { return texelFetch(v4t, int(i)); }
#else
layout(std430, binding = 2) readonly buffer K { vec4 k4[]; };
layout(std430, binding = 3) readonly buffer V { vec4 v4[]; };
vec4 k_at(uint i) { return k4[i]; }
vec4 v_at(uint i) { return v4[i]; }
#endif
layout(std430, binding = 4) writeonly buffer PML { vec2 part_ml[]; };   // [rows, n_heads, n_splits] (max, sum)
layout(std430, binding = 5) writeonly buffer PACC { float part_acc[]; }; // [rows, n_heads, n_splits, head_dim]

void main() {
  uint group = pc.n_heads / pc.n_kv_heads;
  uint qi = gl_GlobalInvocationID.x, kvh = gl_WorkGroupID.y, z = gl_WorkGroupID.z;
  if (qi >= (pc.n_q - pc.row_base) * group || kvh >= pc.n_kv_heads || z >= pc.n_splits) return;
  uint lrow = qi / group, h = kvh * group + qi % group, pos = pc.q_pos0 + pc.row_base + lrow;
  uint k0 = z * pc.split_len;
  uint kend = min(min(pc.kv_len, pos + 1u), k0 + pc.split_len);
  uint kbeg = max(k0, pc.window != 0u && pos + 1u > pc.window ? pos + 1u - pc.window : 0u);
  uint kvo4 = kvh * HD4N, stride4 = pc.kv_stride / 4u;

  vec4 qv[HD4N], acc[HD4N];
  uint qb = ((pc.row_base + lrow) * pc.n_heads + h) * HD4N;
  [[unroll]] for (uint i = 0u; i < HD4N; i++) qv[i] = q4[qb + i] * pc.scale, acc[i] = vec4(0.0);
  float m = NEG_BIG, l = 0.0;

  for (uint kb = kbeg; kb < kend; kb += KC) {
    float s[KC];
    float mx = m;
    [[unroll]] for (uint j = 0u; j < KC; j++) {
      uint kbase = min(kb + j, kend - 1u) * stride4 + kvo4; // clamped: masked below
      float d = 0.0;
      [[unroll]] for (uint i = 0u; i < HD4N; i++) d += dot(qv[i], k_at(kbase + i));
      // Soft-capping, tanh written through exp so a large |score| saturates instead of producing inf / inf.
      if (pc.softcap > 0.0) d = pc.softcap * (1.0 - 2.0 / (exp(2.0 * d / pc.softcap) + 1.0));
      s[j] = d;
      if (kb + j < kend) mx = max(mx, d);
    }
    float alpha = exp(m - mx);
    m = mx;
    l *= alpha;
    [[unroll]] for (uint i = 0u; i < HD4N; i++) acc[i] *= alpha;
    [[unroll]] for (uint j = 0u; j < KC; j++) {
      float p = kb + j < kend ? exp(s[j] - mx) : 0.0;
      l += p;
      uint vbase = min(kb + j, kend - 1u) * stride4 + kvo4;
      [[unroll]] for (uint i = 0u; i < HD4N; i++) acc[i] += p * v_at(vbase + i);
    }
  }

  if (pc.n_splits == 1u) {
    float inv = l > 0.0 ? 1.0 / l : 0.0;
    [[unroll]] for (uint i = 0u; i < HD4N; i++) o4[qb + i] = acc[i] * inv;
  } else {
    uint pi = (lrow * pc.n_heads + h) * pc.n_splits + z;
    part_ml[pi] = vec2(m, l);
    [[unroll]] for (uint i = 0u; i < HD4N; i++)
      [[unroll]] for (uint c = 0u; c < 4u; c++) part_acc[pi * 4u * HD4N + 4u * i + c] = acc[i][c];
  }
}
