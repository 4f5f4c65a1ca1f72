#version 450
// Causal GQA attention for training (or, with pc.bidir, every query seeing every key: an encoder's), on one sequence of pc.T tokens at positions 0..T-1 (queries and keys the same
// rows). Three modes over the same buffers (pc.h, pc_attn_train); s = scale * q . k, query head h reads KV head
// h / (n_heads / n_kv_heads):
//   0 forward,  one invocation per (query t, head h): out = softmax(s) v with an online softmax, lse = log-sum-exp
//   1 backward, one invocation per (t, h): D = dout . out; dq = scale * sum_j P (dout . v_j - D) k_j, P =
//     exp(s - lse)
//   2 backward, one invocation per (key j, KV head g): over the queries t >= j of this chunk and the heads of g,
//     dv += P dout_t; dk += scale * P (dout_t . v_j - D) q_t
// HD (a define: the head size) makes every loop over dims compile-time and unrolled, so an invocation loops once
// per key (modes 0, 1) or once per (query, head) of its chunk (mode 2); the wrapper keeps both within the op's
// loop budget. Every sum runs in a fixed order, with no atomics.
// With pc.softcap > 0 (Gemma 2) the scores are capped, s = cap * tanh(scale q.k / cap), and the backward carries the
// cap's derivative 1 - (s / cap)^2 into dq and dk.
#extension GL_EXT_control_flow_attributes : require
#define PC_ATTN_TRAIN 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) buffer R0 { float r0[]; };            // 0: out   1: dq  2: dk
layout(std430, binding = 1) buffer R1 { float r1[]; };            // 0: lse   1: D   2: dv
layout(std430, binding = 2) readonly buffer Q { float q[]; };     // [T, n_heads, HD]
layout(std430, binding = 3) readonly buffer K { float k[]; };     // [T, n_kv_heads, HD]
layout(std430, binding = 4) readonly buffer V { float v[]; };     // [T, n_kv_heads, HD]
layout(std430, binding = 5) readonly buffer O { float o[]; };     // 1: out
layout(std430, binding = 6) readonly buffer DO { float dout[]; }; // 1, 2: dLoss/dout
layout(std430, binding = 7) readonly buffer L { float lse[]; };   // 1, 2: [T, n_heads]
layout(std430, binding = 8) readonly buffer DD { float dd[]; };   // 2: D [T, n_heads]

// The score from scale * q.k: soft-capped when pc.softcap > 0 (tanh through exp: large values saturate).
float capped(float s) { return pc.softcap > 0.0 ? pc.softcap * (1.0 - 2.0 / (exp(2.0 * s / pc.softcap) + 1.0)) : s; }
// The derivative of capped() at the capped score c.
float dcap(float c) {
  float t = pc.softcap > 0.0 ? c / pc.softcap : 0.0;
  return 1.0 - t * t;
}

float dot_at(float a[HD], uint base, bool from_k) {
  float s = 0.0;
  [[unroll]] for (uint d = 0; d < HD; d++) s = fma(a[d], from_k ? k[base + d] : v[base + d], s);
  return s;
}

void main() {
  uint i = flat_index();
  uint H = pc.n_heads, KV = pc.n_kv_heads, rep = H / KV;
  if (pc.mode == 2u) {
    if (i >= pc.T * KV) return;
    uint j = i / KV, g = i - j * KV, kb = (j * KV + g) * HD;
    float kj[HD], vj[HD], dk[HD], dv[HD];
    [[unroll]] for (uint d = 0; d < HD; d++) kj[d] = k[kb + d], vj[d] = v[kb + d], dk[d] = 0.0, dv[d] = 0.0;
    uint t0 = pc.bidir != 0u ? pc.t_base : max(j, pc.t_base), t1 = min(pc.t_base + pc.t_len, pc.T);
    if (pc.window != 0u) t1 = min(t1, j + pc.window); // queries t < j + window see key j
    for (uint t = t0; t < t1; t++) {
      for (uint hh = 0u; hh < rep; hh++) {
        uint h = g * rep + hh, qb = (t * H + h) * HD;
        float s = 0.0, dp = 0.0;
        [[unroll]] for (uint d = 0; d < HD; d++) {
          s = fma(q[qb + d], kj[d], s);
          dp = fma(dout[qb + d], vj[d], dp);
        }
                float sc = capped(pc.scale * s), p = exp(sc - lse[t * H + h]);
        float ds = p * (dp - dd[t * H + h]) * dcap(sc);
        [[unroll]] for (uint d = 0; d < HD; d++) {
          dv[d] = fma(p, dout[qb + d], dv[d]);
          dk[d] = fma(ds, q[qb + d], dk[d]);
        }
      }
    }
    bool acc = pc.accumulate != 0u;
    [[unroll]] for (uint d = 0; d < HD; d++) {
      r0[kb + d] = (acc ? r0[kb + d] : 0.0) + pc.scale * dk[d];
      r1[kb + d] = (acc ? r1[kb + d] : 0.0) + dv[d];
    }
    return;
  }
  if (i >= pc.T * H) return;
  uint t = i / H, h = i - t * H, g = h / rep, qb = (t * H + h) * HD;
  uint j0 = pc.window != 0u && t + 1u > pc.window ? t + 1u - pc.window : 0u; // the first key in the window
  uint j1 = pc.bidir != 0u ? pc.T - 1u : t;                                   // the last key it sees
  float qv[HD];
  [[unroll]] for (uint d = 0; d < HD; d++) qv[d] = q[qb + d];
  if (pc.mode == 0u) {
    // Finite stand-in for -inf: exp(-1e30 - m) is 0 and never NaN.
    float m = -1.0e30, l = 0.0, acc[HD];
    [[unroll]] for (uint d = 0; d < HD; d++) acc[d] = 0.0;
    for (uint j = j0; j <= j1; j++) {
      uint kb = (j * KV + g) * HD;
            float s = capped(pc.scale * dot_at(qv, kb, true));
      float mn = max(m, s), a = exp(m - mn), p = exp(s - mn);
      l = l * a + p;
      [[unroll]] for (uint d = 0; d < HD; d++) acc[d] = fma(p, v[kb + d], acc[d] * a);
      m = mn;
    }
    [[unroll]] for (uint d = 0; d < HD; d++) r0[qb + d] = acc[d] / l;
    r1[t * H + h] = m + log(l);
    return;
  }
  float dov[HD], dq[HD], D = 0.0;
  [[unroll]] for (uint d = 0; d < HD; d++) {
    dov[d] = dout[qb + d];
    D = fma(dov[d], o[qb + d], D);
    dq[d] = 0.0;
  }
  float L = lse[t * H + h];
  for (uint j = j0; j <= j1; j++) {
    uint kb = (j * KV + g) * HD;
        float sc = capped(pc.scale * dot_at(qv, kb, true)), p = exp(sc - L);
    float ds = p * (dot_at(dov, kb, false) - D) * dcap(sc);
    [[unroll]] for (uint d = 0; d < HD; d++) dq[d] = fma(ds, k[kb + d], dq[d]);
  }
  [[unroll]] for (uint d = 0; d < HD; d++) r0[qb + d] = pc.scale * dq[d];
  r1[t * H + h] = D;
}
