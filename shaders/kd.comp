#version 450
// Knowledge distillation at temperature T over rows of n logits, one workgroup per row (the student's logits s, the
// teacher's t): with pS = softmax(s / T) and pT = softmax(t / T),
//   loss[r] = T^2 KL(pT || pS) = T^2 sum_j pT_j (log pT_j - log pS_j)
//   s[r, j] <- w[r] T (pS_j - pT_j)      (in place: the gradient of w[r] loss[r], when pc.backward)
// Three passes over the row: both log-sum-exps (online max and sum), then the loss terms and the gradient.
#define PC_KD 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer L { float loss[]; };
layout(std430, binding = 1) buffer S { float s[]; };
layout(std430, binding = 2) readonly buffer T { float tch[]; };
layout(std430, binding = 3) readonly buffer W { float w[]; };

// log-sum-exp of row base of buf / temperature over the workgroup (buf selected by which: 0 student, 1 teacher).
float row_lse(uint base, uint which) {
  uint t = gl_LocalInvocationID.x;
  float m = ROWS_NEG_INF, sum = 0.0;
  for (uint i = t; i < pc.n; i += WG_X) {
    float v = (which == 0u ? s[base + i] : tch[base + i]) / pc.temperature;
    if (v > m) {
      sum *= exp(m - v);
      m = v;
    }
    sum += exp(v - m);
  }
  float mx = wg_max(m);
  return mx + log(wg_sum(m > ROWS_NEG_INF ? sum * exp(m - mx) : 0.0));
}

void main() {
  uint r = row_id();
  if (r >= pc.rows) return;
  uint base = r * pc.n, t = gl_LocalInvocationID.x;
  float T = pc.temperature;
  float ls = row_lse(base, 0u), lt = row_lse(base, 1u);
  float kl = 0.0;
  for (uint i = t; i < pc.n; i += WG_X) {
    float lps = s[base + i] / T - ls, lpt = tch[base + i] / T - lt;
    float pt = exp(lpt);
    kl += pt * (lpt - lps);
    // Each invocation writes only the elements it read, after both reductions: s may be overwritten in place.
    if (pc.backward != 0u) s[base + i] = w[r] * T * (exp(lps) - pt);
  }
  kl = wg_sum(kl);
  if (t == 0u) loss[r] = T * T * kl;
}
