#version 450
// Causal attention, flash style: one workgroup per (query row, head, key split). The workgroup walks its keys in
// blocks of WG_X: each invocation scores one key, the block's max and sum update the running (max, sum) of an
// online softmax, then each invocation accumulates the probability-weighted V rows for the output dims it owns.
// One split writes out[] directly; several write unnormalised partials (max, sum, acc[head_dim]) that
// attn_merge.comp combines. The C wrapper bounds the keys per split so no invocation loops too long.
// HD4=1 (head_dim % 4 == 0) reads K as vec4.
#if HAS_SUBGROUP_ARITH
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
#define PC_ATTN 1
#include "pc.h"
#include "common.glsl"

#define MAX_HD 256u
#define MAX_WG 256u
// Finite stand-in for -inf: exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
#define NEG_BIG -1.0e30

layout(std430, binding = 0) writeonly buffer O { float o[]; };    // [n_q, n_heads, head_dim]
layout(std430, binding = 1) readonly buffer Q { float q[]; };     // [n_q, n_heads, head_dim]
#if HD4
layout(std430, binding = 2) readonly buffer K { vec4 k4[]; };     // [kv_len, n_kv_heads, head_dim / 4]
#else
layout(std430, binding = 2) readonly buffer K { float k[]; };     // [kv_len, n_kv_heads, head_dim]
#endif
layout(std430, binding = 3) readonly buffer V { float v[]; };     // [kv_len, n_kv_heads, head_dim]
layout(std430, binding = 4) writeonly buffer PML { vec2 part_ml[]; };  // [rows, n_heads, n_splits] (max, sum)
layout(std430, binding = 5) writeonly buffer PACC { float part_acc[]; }; // [rows, n_heads, n_splits, head_dim]

#if HD4
shared vec4 q_s[MAX_HD / 4u];
#else
shared float q_s[MAX_HD];
#endif
shared float acc_s[MAX_HD]; // acc_s[d] is only touched by invocation d % WG_X
shared float p_s[MAX_WG];
shared float red[MAX_WG];

#if HAS_SUBGROUP_ARITH
float wg_max(float x) {
  x = subgroupMax(x);
  if (subgroupElect()) red[gl_SubgroupID] = x;
  barrier();
  float r = red[0];
  for (uint i = 1u; i < gl_NumSubgroups; i++) r = max(r, red[i]);
  barrier();
  return r;
}

float wg_sum(float x) {
  x = subgroupAdd(x);
  if (subgroupElect()) red[gl_SubgroupID] = x;
  barrier();
  float r = red[0];
  for (uint i = 1u; i < gl_NumSubgroups; i++) r += red[i];
  barrier();
  return r;
}
#else
// Tree reductions over shared memory; WG_X is a power of two (checked by the C wrapper).
float wg_max(float x) {
  uint tid = gl_LocalInvocationID.x;
  red[tid] = x;
  barrier();
  for (uint s = WG_X / 2u; s > 0u; s >>= 1u) {
    if (tid < s) red[tid] = max(red[tid], red[tid + s]);
    barrier();
  }
  float r = red[0];
  barrier();
  return r;
}

float wg_sum(float x) {
  uint tid = gl_LocalInvocationID.x;
  red[tid] = x;
  barrier();
  for (uint s = WG_X / 2u; s > 0u; s >>= 1u) {
    if (tid < s) red[tid] += red[tid + s];
    barrier();
  }
  float r = red[0];
  barrier();
  return r;
}
#endif

void main() {
  uint tid = gl_LocalInvocationID.x;
  uint h = gl_WorkGroupID.x, lrow = gl_WorkGroupID.y, z = gl_WorkGroupID.z;
  uint t = pc.row_base + lrow;
  // Uniform per workgroup, so returning here keeps every barrier below in uniform control flow.
  if (t >= pc.n_q || h >= pc.n_heads || z >= pc.n_splits) return;
  uint hd = pc.head_dim;
  uint kvh = h / (pc.n_heads / pc.n_kv_heads);
  uint end = min(pc.kv_len, pc.q_pos0 + t + 1u); // causal: keys [0, q_pos0 + t], never past the cache
  uint k0 = z * pc.split_len;
  uint k1 = min(end, k0 + pc.split_len);
  uint qo = (t * pc.n_heads + h) * hd;

#if HD4
  for (uint d = tid; d < hd / 4u; d += WG_X)
    q_s[d] = vec4(q[qo + 4u * d], q[qo + 4u * d + 1u], q[qo + 4u * d + 2u], q[qo + 4u * d + 3u]) * pc.scale;
#else
  for (uint d = tid; d < hd; d += WG_X) q_s[d] = q[qo + d] * pc.scale;
#endif
  for (uint d = tid; d < hd; d += WG_X) acc_s[d] = 0.0;
  barrier();

  float m = NEG_BIG, l = 0.0;
  for (uint kb = k0; kb < k1; kb += WG_X) {
    uint j = kb + tid;
    float s = NEG_BIG;
    if (j < k1) {
      uint ko = j * pc.kv_stride + kvh * hd;
#if HD4
      vec4 a = vec4(0.0);
      for (uint d = 0u; d < hd / 4u; d++) a += q_s[d] * k4[ko / 4u + d];
      s = (a.x + a.y) + (a.z + a.w);
#else
      s = 0.0;
      for (uint d = 0u; d < hd; d++) s += q_s[d] * k[ko + d];
#endif
    }
    float m_new = max(m, wg_max(s));
    float p = j < k1 ? exp(s - m_new) : 0.0;
    p_s[tid] = p;
    float alpha = exp(m - m_new);
    l = l * alpha + wg_sum(p); // wg_sum's barriers also publish p_s
    m = m_new;
    uint nb = min(WG_X, k1 - kb);
    uint vo = kb * pc.kv_stride + kvh * hd;
    for (uint d = tid; d < hd; d += WG_X) {
      float a = acc_s[d] * alpha;
      for (uint jj = 0u; jj < nb; jj++) a += p_s[jj] * v[vo + jj * pc.kv_stride + d];
      acc_s[d] = a;
    }
    barrier(); // p_s is rewritten by the next block
  }

  if (pc.n_splits == 1u) {
    float inv = l > 0.0 ? 1.0 / l : 0.0;
    for (uint d = tid; d < hd; d += WG_X) o[qo + d] = acc_s[d] * inv;
  } else {
    uint pi = (lrow * pc.n_heads + h) * pc.n_splits + z;
    if (tid == 0u) part_ml[pi] = vec2(m, l);
    for (uint d = tid; d < hd; d += WG_X) part_acc[pi * hd + d] = acc_s[d];
  }
}
