#version 450
// Decode attention: few query rows (a decode step, or a few rows of one) over a KV cache. One workgroup per KV head
// and key split takes every query of that KV head: QN = rows x G queries (G query heads per KV head). Its WG_X
// invocations form L = WG_X / D key lanes of D invocations; the D invocations of a lane share the head's dims
// (CW vec4 columns each). Lane j walks keys j, j + L, ... of the split, KC at a time, and keeps for every query a
// running max, sum and output in registers (online softmax); a score's partial dot products are summed over the
// lane's D invocations by subgroup shuffles, so no shared memory and no barrier inside the loop. One shared-memory
// step at the end merges the lanes. One split writes out[]; several write the partials (max, sum, acc) that
// attn_merge.comp combines, in attn.comp's layout. The C wrapper (ops_attn.c) sizes splits within the loop budget.
// Defines: QN, G, HD4N (head_dim / 4; heads a multiple of 4 only), D (1, 2, 4 or 8), KC, KV_TEXEL (K and V through
// RGBA32F texel views, CPU drivers: see include/matmul.glsl).
#extension GL_EXT_control_flow_attributes : require
#if D > 1
#extension GL_KHR_shader_subgroup_shuffle : require
#endif
#define PC_ATTN 1
#include "pc.h"
#include "common.glsl"

#define CW ((HD4N + D - 1) / D) // vec4 columns per invocation
#define L (WG_X / D)            // key lanes
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
layout(std430, binding = 4) writeonly buffer PML { vec2 part_ml[]; };   // [n_q, n_heads, n_splits] (max, sum)
layout(std430, binding = 5) writeonly buffer PACC { float part_acc[]; }; // [n_q, n_heads, n_splits, head_dim]

shared vec2 ml_s[L * QN];          // each lane's (max, sum) per query
shared vec4 acc_s[L * QN * HD4N];  // each lane's unnormalised output per query

void main() {
  uint tid = gl_LocalInvocationID.x, lane = tid / D, dc = tid % D;
  uint z = gl_WorkGroupID.x, kvh = gl_WorkGroupID.y;
  // Uniform per workgroup, so returning here keeps the barrier below in uniform control flow.
  if (kvh >= pc.n_kv_heads || z >= pc.n_splits) return;
  uint k0 = z * pc.split_len, kvo4 = kvh * HD4N, stride4 = pc.kv_stride / 4u;

  // Keys [kbeg, kend) of this split are visible to query qq (row qq / G sits at position q_pos0 + qq / G).
  uint kbeg[QN], kend[QN];
  uint kfrom = k0 + pc.split_len, kmax = k0;
  [[unroll]] for (uint qq = 0u; qq < QN; qq++) {
    uint pos = pc.q_pos0 + qq / G;
    kend[qq] = min(min(pc.kv_len, pos + 1u), k0 + pc.split_len);
    kbeg[qq] = max(k0, pc.window != 0u && pos + 1u > pc.window ? pos + 1u - pc.window : 0u);
    kmax = max(kmax, kend[qq]);
    kfrom = min(kfrom, kbeg[qq]);
  }

  vec4 qv[QN][CW], acc[QN][CW];
  float m[QN], l[QN];
  [[unroll]] for (uint qq = 0u; qq < QN; qq++) {
    uint h = kvh * G + qq % G, qb = ((qq / G) * pc.n_heads + h) * HD4N;
    [[unroll]] for (uint i = 0u; i < CW; i++) {
      uint d4 = dc * CW + i;
      qv[qq][i] = d4 < HD4N ? q4[qb + d4] * pc.scale : vec4(0.0);
      acc[qq][i] = vec4(0.0);
    }
    m[qq] = NEG_BIG;
    l[qq] = 0.0;
  }

  // The trip count is the same for every invocation (subgroup shuffles need the whole subgroup).
  for (uint kb = kfrom; kb < kmax; kb += L * KC) {
    float s[KC][QN];
    uint key[KC];
    [[unroll]] for (uint j = 0u; j < KC; j++) {
      key[j] = kb + j * L + lane;
      uint kbase = min(key[j], kmax - 1u) * stride4 + kvo4 + dc * CW; // clamped: masked below
      vec4 kv[CW];
      [[unroll]] for (uint i = 0u; i < CW; i++) kv[i] = dc * CW + i < HD4N ? k_at(kbase + i) : vec4(0.0);
      [[unroll]] for (uint qq = 0u; qq < QN; qq++) {
        float d = 0.0;
        [[unroll]] for (uint i = 0u; i < CW; i++) d += dot(qv[qq][i], kv[i]);
        s[j][qq] = d;
      }
    }
#if D > 1
    // Butterfly sums: every invocation of a lane ends with the same bits (each step adds the same two terms).
    [[unroll]] for (uint o = 1u; o < D; o <<= 1u)
      [[unroll]] for (uint j = 0u; j < KC; j++)[[unroll]] for (uint qq = 0u; qq < QN; qq++) s[j][qq] +=
          subgroupShuffleXor(s[j][qq], o);
#endif
    vec4 vv[KC][CW];
    [[unroll]] for (uint j = 0u; j < KC; j++) {
      uint vbase = min(key[j], kmax - 1u) * stride4 + kvo4 + dc * CW;
      [[unroll]] for (uint i = 0u; i < CW; i++) vv[j][i] = dc * CW + i < HD4N ? v_at(vbase + i) : vec4(0.0);
    }
    [[unroll]] for (uint qq = 0u; qq < QN; qq++) {
      float mx = m[qq];
      bool vis[KC];
      [[unroll]] for (uint j = 0u; j < KC; j++) {
        float sc = s[j][qq];
        // Soft-capping, tanh written through exp so a large |score| saturates instead of producing inf / inf.
        if (pc.softcap > 0.0) sc = pc.softcap * (1.0 - 2.0 / (exp(2.0 * sc / pc.softcap) + 1.0));
        vis[j] = key[j] < kend[qq] && key[j] >= kbeg[qq];
        s[j][qq] = sc;
        if (vis[j]) mx = max(mx, sc);
      }
      float alpha = exp(m[qq] - mx);
      m[qq] = mx;
      l[qq] *= alpha;
      [[unroll]] for (uint i = 0u; i < CW; i++) acc[qq][i] *= alpha;
      [[unroll]] for (uint j = 0u; j < KC; j++) {
        float p = vis[j] ? exp(s[j][qq] - mx) : 0.0;
        l[qq] += p;
        [[unroll]] for (uint i = 0u; i < CW; i++) acc[qq][i] += p * vv[j][i];
      }
    }
  }

  // Merge the lanes: out = sum_j acc_j e^(m_j - M) / sum_j l_j e^(m_j - M), M the largest lane max.
  [[unroll]] for (uint qq = 0u; qq < QN; qq++) {
    [[unroll]] for (uint i = 0u; i < CW; i++)
      if (dc * CW + i < HD4N) acc_s[(lane * QN + qq) * HD4N + dc * CW + i] = acc[qq][i];
    if (dc == 0u) ml_s[lane * QN + qq] = vec2(m[qq], l[qq]);
  }
  barrier();
  for (uint e = tid; e < QN * HD4N; e += WG_X) {
    uint qq = e / HD4N, d4 = e % HD4N;
    float mx = NEG_BIG;
    for (uint j = 0u; j < L; j++) mx = max(mx, ml_s[j * QN + qq].x);
    float sum = 0.0;
    vec4 a = vec4(0.0);
    for (uint j = 0u; j < L; j++) {
      vec2 ml = ml_s[j * QN + qq];
      float w = exp(ml.x - mx);
      sum += ml.y * w;
      a += acc_s[(j * QN + qq) * HD4N + d4] * w;
    }
    uint t = qq / G, h = kvh * G + qq % G;
    if (pc.n_splits == 1u) {
      o4[(t * pc.n_heads + h) * HD4N + d4] = sum > 0.0 ? a / sum : vec4(0.0);
    } else {
      uint pi = (t * pc.n_heads + h) * pc.n_splits + z;
      if (d4 == 0u) part_ml[pi] = vec2(mx, sum);
      [[unroll]] for (uint c = 0u; c < 4u; c++) part_acc[pi * 4u * HD4N + 4u * d4 + c] = a[c];
    }
  }
}
