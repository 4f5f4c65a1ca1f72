#version 450
// ATKD's two distillation terms at temperature T over rows of n logits, one workgroup per row (the student's logits
// s, the teacher's t, the row's ground-truth token g). With pS = softmax(s / T), pT = softmax(t / T):
//   TCKD = KL([pT_g, 1 - pT_g] || [pS_g, 1 - pS_g])             (target vs the rest)
//   NCKD = KL(pT restricted to j != g, renormalised || the same of pS)   (among the non-targets)
//   loss[2r] = T^2 TCKD, loss[2r + 1] = T^2 NCKD
// and with pc.backward, s overwritten in place by the gradient of wt TCKD + wn NCKD (w[2r] = wt, w[2r + 1] = wn):
//   j == g: wt T (pS_g - pT_g)
//   j != g: T (wn (qS_j - qT_j) - wt (pS_g - pT_g) qS_j)      with q the renormalised non-target probabilities.
// Everything is built from the non-target log-sum-exps (never 1 - p, which cancels when p is near 1). A target out
// of [0, n) gives NaN losses and leaves the row as it was.
#define PC_KD 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer L { float loss[]; };
layout(std430, binding = 1) buffer S { float s[]; };
layout(std430, binding = 2) readonly buffer T { float tch[]; };
layout(std430, binding = 3) readonly buffer G { int tgt[]; };
layout(std430, binding = 4) readonly buffer W { float w[]; };

float lae(float a, float b) { // log(exp(a) + exp(b))
  float m = max(a, b);
  return m == ROWS_NEG_INF ? m : m + log(exp(a - m) + exp(b - m));
}

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint base = r * pc.n, t = gl_LocalInvocationID.x;
  float T = pc.temperature;
  int gi = tgt[r];
  if (gi < 0 || uint(gi) >= pc.n) { // uniform over the workgroup
    if (t == 0u) {
      loss[2u * r] = ROWS_NAN;
      loss[2u * r + 1u] = ROWS_NAN;
    }
    return;
  }
  uint g = uint(gi);
  // Every read of s happens before the last barrier ahead of the writes: s is overwritten in place.
  float sg = s[base + g] / T, tg = tch[base + g] / T;
  float ms = ROWS_NEG_INF, mt = ROWS_NEG_INF;
  for (uint i = t; i < pc.n; i += WG_X)
    if (i != g) {
      ms = max(ms, s[base + i] / T);
      mt = max(mt, tch[base + i] / T);
    }
  ms = wg_max(ms);
  mt = wg_max(mt);
  vec4 z = vec4(0.0);
  for (uint i = t; i < pc.n; i += WG_X)
    if (i != g) z.xy += vec2(exp(s[base + i] / T - ms), exp(tch[base + i] / T - mt));
  z = wg_sum4(z);
  float lsn = ms + log(z.x), ltn = mt + log(z.y); // log sum over j != g of exp(x_j / T)
  float ls = lae(lsn, sg), lt = lae(ltn, tg);
  float lqg = sg - ls, lqn = lsn - ls, lpg = tg - lt, lpn = ltn - lt;
  float pg = exp(lpg), qg = exp(lqg);
  float tckd = pg * (lpg - lqg) + exp(lpn) * (lpn - lqn);
  float wt = pc.backward != 0u ? w[2u * r] : 0.0, wn = pc.backward != 0u ? w[2u * r + 1u] : 0.0;
  float nckd = 0.0;
  for (uint i = t; i < pc.n; i += WG_X) {
    if (i == g) {
      if (pc.backward != 0u) s[base + i] = wt * T * (qg - pg);
      continue;
    }
    float lqs = s[base + i] / T - lsn, lqt = tch[base + i] / T - ltn;
    float qs = exp(lqs), qt = exp(lqt);
    nckd += qt * (lqt - lqs);
    if (pc.backward != 0u) s[base + i] = T * (wn * (qs - qt) - wt * (qg - pg) * qs);
  }
  nckd = wg_sum(nckd);
  if (t == 0u) {
    loss[2u * r] = T * T * tckd;
    loss[2u * r + 1u] = T * T * nckd;
  }
}
