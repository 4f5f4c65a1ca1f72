#version 450
// Causal attention, flash style with register blocking. A workgroup takes a tile of BR queries that share one KV
// head (query = (row, head in the GQA group), rows times group size flattened) and one split of the keys, and walks
// the split in blocks of BC = WG_X keys:
//   1. S = Q K^T for the block: each invocation scores 4 queries x QG keys over vec4 dims (Q tile in shared);
//   2. online softmax per query: block max, rescale factor alpha, P = exp(S - max), running sum;
//   3. O = alpha O + P V: each invocation owns 4 queries x DI vec4 output columns in registers.
// Every load is a vec4 feeding 16 or more FMAs (lavapipe pays per load instruction, GPUs per byte).
// One split writes out[] directly; several write unnormalised partials (max, sum, acc[head_dim]) that
// attn_merge.comp combines. The C wrapper sizes splits so that no invocation loops too long (lavapipe).
// Variants (defines): BR = 4 or 16 queries per tile; DI = vec4 output columns per invocation;
// HD4 = head_dim % 4 == 0 (vec4 loads and stores; otherwise scalar loads padded with zeros);
// KS = key slices in step 3: the invocations of a query group that a small head leaves without columns take the
// block's keys in KS interleaved slices, each keeping its own partial O (all rescaled by the same alpha), summed
// in slice order once at the end. Used with DI = 1.
// KV_TEXEL = 1 (with HD4; CPU drivers): K and V are read through RGBA32F texel views (see include/matmul.glsl on
// why lavapipe gathers those faster than storage-buffer loads with per-lane addresses).
#extension GL_EXT_control_flow_attributes : require
#define PC_ATTN 1
#include "pc.h"
#include "common.glsl"

#ifndef BR
#define BR 16
#endif
#ifndef DI
#define DI 2
#endif
#ifndef KS
#define KS 1
#endif
#define QG (BR / 4)        // groups of 4 queries in a tile
#define MAX_BC 64u         // keys per block = WG_X <= MAX_BC (set by the C wrapper)
#define MAX_HD4 64u        // head_dim <= 256
// Finite stand-in for -inf: exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
#define NEG_BIG -1.0e30

#if HD4
layout(std430, binding = 0) writeonly buffer O { vec4 o4[]; };  // [n_q, n_heads, head_dim]
layout(std430, binding = 1) readonly buffer Q { vec4 q4[]; };   // [n_q, n_heads, head_dim]
#if KV_TEXEL
layout(binding = 2) uniform samplerBuffer k4t; // [kv_len, n_kv_heads, head_dim] as vec4 texels
layout(binding = 3) uniform samplerBuffer v4t;
vec4 k_at(uint i) { return texelFetch(k4t, int(i)); }
vec4 v_at(uint i) { return texelFetch(v4t, int(i)); }
#else
layout(std430, binding = 2) readonly buffer K { vec4 k4[]; };   // [kv_len, n_kv_heads, head_dim]
layout(std430, binding = 3) readonly buffer V { vec4 v4[]; };   // [kv_len, n_kv_heads, head_dim]
vec4 k_at(uint i) { return k4[i]; }
vec4 v_at(uint i) { return v4[i]; }
#endif
vec4 q_at(uint i) { return q4[i]; }
#else
layout(std430, binding = 0) writeonly buffer O { float o[]; };
layout(std430, binding = 1) readonly buffer Q { float q[]; };
layout(std430, binding = 2) readonly buffer K { float k[]; };
layout(std430, binding = 3) readonly buffer V { float v[]; };
#endif
layout(std430, binding = 4) writeonly buffer PML { vec2 part_ml[]; };   // [rows, n_heads, n_splits] (max, sum)
layout(std430, binding = 5) writeonly buffer PACC { float part_acc[]; }; // [rows, n_heads, n_splits, head_dim]

shared vec4 q_s[BR][MAX_HD4];  // the tile's queries, pre-scaled
shared vec4 p_s[MAX_BC][QG];   // S, then P, for the block: p_s[key][query / 4][query % 4]
shared float red[MAX_BC];
shared float m_s[BR], l_s[BR], alpha_s[BR];
shared uint kend_s[BR];        // keys [k0, kend) are visible to the query; 0 for padding queries
shared uint kbeg_s[BR];        // and keys from kbeg on (a sliding window); 0 without one
#if KS > 1
shared vec4 o_s[WG_X][4];      // each slice's partial O for its 4 queries, summed at the end
#endif

// vec4 of a head's dims [d, d + 4) at element offset `base` (a multiple of 4 with HD4), zero past head_dim.
#if HD4
#define LOAD4(arr, base, d) arr##_at(((base) + (d)) / 4u)
#else
#define LOAD4(arr, base, d) load4_##arr((base), (d))
vec4 load4_q(uint base, uint d) {
  vec4 r = vec4(0.0);
  [[unroll]] for (uint c = 0u; c < 4u; c++) if (d + c < pc.head_dim) r[c] = q[base + d + c];
  return r;
}
vec4 load4_k(uint base, uint d) {
  vec4 r = vec4(0.0);
  [[unroll]] for (uint c = 0u; c < 4u; c++) if (d + c < pc.head_dim) r[c] = k[base + d + c];
  return r;
}
vec4 load4_v(uint base, uint d) {
  vec4 r = vec4(0.0);
  [[unroll]] for (uint c = 0u; c < 4u; c++) if (d + c < pc.head_dim) r[c] = v[base + d + c];
  return r;
}
#endif

void main() {
  uint tid = gl_LocalInvocationID.x;
  uint tile = gl_WorkGroupID.x, kvh = gl_WorkGroupID.y, z = gl_WorkGroupID.z;
  uint group = pc.n_heads / pc.n_kv_heads;
  uint nqi = (pc.n_q - pc.row_base) * group; // queries of this KV head in this dispatch
  uint qi0 = tile * BR;
  // Uniform per workgroup, so returning here keeps every barrier below in uniform control flow.
  if (qi0 >= nqi || kvh >= pc.n_kv_heads || z >= pc.n_splits) return;
  uint hd = pc.head_dim, hd4 = (hd + 3u) / 4u;
  uint k0 = z * pc.split_len;
  uint kvo = kvh * hd; // this KV head's offset inside a cache position

  if (tid < BR) {
    uint qi = qi0 + tid, t = pc.row_base + qi / group;
    kend_s[tid] = qi < nqi ? min(min(pc.kv_len, pc.q_pos0 + t + 1u), k0 + pc.split_len) : 0u;
    kbeg_s[tid] = pc.window != 0u && pc.q_pos0 + t + 1u > pc.window ? pc.q_pos0 + t + 1u - pc.window : 0u;
    m_s[tid] = NEG_BIG;
    l_s[tid] = 0.0;
  }
  for (uint e = tid; e < BR * hd4; e += WG_X) {
    uint r = e / hd4, d4 = e % hd4, qi = qi0 + r;
    uint t = pc.row_base + qi / group, h = kvh * group + qi % group;
    q_s[r][d4] = qi < nqi ? LOAD4(q, (t * pc.n_heads + h) * hd, 4u * d4) * pc.scale : vec4(0.0);
  }
  // The last query of the tile sees the most keys (positions grow with the row).
  uint qlast = min(qi0 + BR, nqi) - 1u;
  uint kmax = min(min(pc.kv_len, pc.q_pos0 + pc.row_base + qlast / group + 1u), k0 + pc.split_len);
  // The first query of the tile sees the earliest keys: with a window, blocks before its first key are skipped.
  uint tfirst = pc.q_pos0 + pc.row_base + qi0 / group + 1u;
  uint kfrom = pc.window != 0u && tfirst > pc.window ? max(k0, tfirst - pc.window) : k0;
  barrier();

  // Phase 1: query group qg1, keys kg + KG * j. Phase 2: row r2, keys part + TPR * j.
  // Phase 3: query group qg3, vec4 columns dg + DG * i.
  uint KG = WG_X / QG, qg1 = tid / KG, kg = tid % KG;
  uint TPR = WG_X / BR, r2 = tid / TPR, part = tid % TPR;
  uint DG = WG_X / QG / KS, qg3 = tid / (DG * KS), dg = tid % DG, ks = (tid % (DG * KS)) / DG;
  vec4 acc[DI][4];
  [[unroll]] for (uint i = 0u; i < DI; i++) [[unroll]] for (uint qq = 0u; qq < 4u; qq++) acc[i][qq] = vec4(0.0);

  for (uint kb = kfrom; kb < kmax; kb += WG_X) {
    // 1. scores of 4 queries x QG keys
    vec4 s[QG]; // s[j][qq]
    uint kbase[QG];
    [[unroll]] for (uint j = 0u; j < QG; j++) {
      s[j] = vec4(0.0);
      kbase[j] = min(kb + kg + KG * j, kmax - 1u) * pc.kv_stride + kvo; // clamped: masked below
    }
    for (uint d4 = 0u; d4 < hd4; d4++) {
      vec4 qv[4];
      [[unroll]] for (uint qq = 0u; qq < 4u; qq++) qv[qq] = q_s[4u * qg1 + qq][d4];
      [[unroll]] for (uint j = 0u; j < QG; j++) {
        vec4 kv = LOAD4(k, kbase[j], 4u * d4);
        [[unroll]] for (uint qq = 0u; qq < 4u; qq++) s[j][qq] += dot(qv[qq], kv);
      }
    }
    [[unroll]] for (uint j = 0u; j < QG; j++) {
      uint c = kg + KG * j;
      vec4 sv;
      [[unroll]] for (uint qq = 0u; qq < 4u; qq++) {
        uint r = 4u * qg1 + qq;
        float sc = s[j][qq];
        // Soft-capping, tanh written through exp so a large |score| saturates instead of producing inf / inf.
        if (pc.softcap > 0.0) sc = pc.softcap * (1.0 - 2.0 / (exp(2.0 * sc / pc.softcap) + 1.0));
        sv[qq] = kb + c < kend_s[r] && kb + c >= kbeg_s[r] ? sc : NEG_BIG;
      }
      p_s[c][qg1] = sv;
    }
    barrier();

    // 2. online softmax, TPR invocations per query row
    float mx = NEG_BIG;
    for (uint c = part; c < WG_X; c += TPR) mx = max(mx, p_s[c][r2 / 4u][r2 % 4u]);
    red[tid] = mx;
    barrier();
    if (part == 0u) {
      for (uint i = 1u; i < TPR; i++) mx = max(mx, red[tid + i]);
      float m_new = max(m_s[r2], mx);
      alpha_s[r2] = exp(m_s[r2] - m_new);
      m_s[r2] = m_new;
    }
    barrier();
    float m_new = m_s[r2], sum = 0.0;
    uint kend = kend_s[r2], kbeg = kbeg_s[r2];
    for (uint c = part; c < WG_X; c += TPR) {
      float p = kb + c < kend && kb + c >= kbeg ? exp(p_s[c][r2 / 4u][r2 % 4u] - m_new) : 0.0;
      p_s[c][r2 / 4u][r2 % 4u] = p;
      sum += p;
    }
    red[tid] = sum;
    barrier(); // also publishes P
    if (part == 0u) {
      for (uint i = 1u; i < TPR; i++) sum += red[tid + i];
      l_s[r2] = l_s[r2] * alpha_s[r2] + sum;
    }

    // 3. O = alpha O + P V for 4 queries x DI vec4 columns
    vec4 alpha = vec4(alpha_s[4u * qg3], alpha_s[4u * qg3 + 1u], alpha_s[4u * qg3 + 2u], alpha_s[4u * qg3 + 3u]);
    [[unroll]] for (uint i = 0u; i < DI; i++) [[unroll]] for (uint qq = 0u; qq < 4u; qq++) acc[i][qq] *= alpha[qq];
    uint nb = min(WG_X, kmax - kb);
    for (uint c = ks; c < nb; c += KS) {
      vec4 p = p_s[c][qg3];
      uint vbase = (kb + c) * pc.kv_stride + kvo;
      [[unroll]] for (uint i = 0u; i < DI; i++) {
        uint d4 = dg + DG * i;
        if (d4 < hd4) {
          vec4 vv = LOAD4(v, vbase, 4u * d4);
          [[unroll]] for (uint qq = 0u; qq < 4u; qq++) acc[i][qq] += p[qq] * vv;
        }
      }
    }
    barrier(); // p_s, red and alpha_s are rewritten by the next block; publishes l_s
  }
#if KS > 1
  [[unroll]] for (uint qq = 0u; qq < 4u; qq++) o_s[tid][qq] = acc[0][qq];
  barrier();
  if (ks != 0u) return; // the first slice writes; every barrier is behind us
  [[unroll]] for (uint qq = 0u; qq < 4u; qq++) {
    vec4 s = o_s[tid][qq];
    for (uint j = 1u; j < KS; j++) s += o_s[tid + j * DG][qq];
    acc[0][qq] = s;
  }
#endif

  [[unroll]] for (uint qq = 0u; qq < 4u; qq++) {
    uint r = 4u * qg3 + qq, qi = qi0 + r;
    if (qi >= nqi) continue;
    uint lrow = qi / group, h = kvh * group + qi % group;
    if (pc.n_splits == 1u) {
      float inv = l_s[r] > 0.0 ? 1.0 / l_s[r] : 0.0;
      uint ob = ((pc.row_base + lrow) * pc.n_heads + h) * hd;
      [[unroll]] for (uint i = 0u; i < DI; i++) {
        uint d4 = dg + DG * i;
#if HD4
        if (d4 < hd4) o4[ob / 4u + d4] = acc[i][qq] * inv;
#else
        [[unroll]] for (uint c = 0u; c < 4u; c++)
          if (d4 < hd4 && 4u * d4 + c < hd) o[ob + 4u * d4 + c] = acc[i][qq][c] * inv;
#endif
      }
    } else {
      uint pi = (lrow * pc.n_heads + h) * pc.n_splits + z;
      if (dg == 0u) part_ml[pi] = vec2(m_s[r], l_s[r]);
      [[unroll]] for (uint i = 0u; i < DI; i++) {
        uint d4 = dg + DG * i;
        [[unroll]] for (uint c = 0u; c < 4u; c++)
          if (d4 < hd4 && 4u * d4 + c < hd) part_acc[pi * hd + 4u * d4 + c] = acc[i][qq][c];
      }
    }
  }
}
