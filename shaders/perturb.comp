#version 450
// Zeroth-order perturbation with z(seed, tensor_id, i) standard normal from Philox-4x32-10 keyed by (seed lo,
// seed hi) on counter (i/4 lo, i/4 hi, tensor_id, 0), Box-Muller on outputs (0,1) and (2,3), element i taking
// normal i % 4. One invocation handles the four elements of one Philox call (a quad). Modes:
//   MODE=0 (in place, f32): x[i] += scale * z(i) for i < n.
//   MODE=1 (the update, in x's own dtype): x[i] = round(decay * x[i] + scale * z(i)). f32 rounds to nearest; f16 and
//     bfloat16 (W_F16, W_BF16) round stochastically: up or down to a neighbour with the probability that makes the
//     expected result the f32 value, from a second Philox stream (counter word 3 = 1), so a step is still a pure
//     function of the seed.
//   MODE=2 (a perturbed copy): y[i] = w[i] + scale * z(base + i) into f32 y, w in its dtype: the weights as a
//     perturbed forward pass reads them, without changing them. base = 4 * pc.base_q.
#if W_F16 || W_BF16
#extension GL_EXT_shader_16bit_storage : require
#endif
#define PC_PERTURB 1
#include "pc.h"
#include "common.glsl"
#include "philox.glsl"

#ifndef MODE
#define MODE 0
#endif

// x (MODE 0, 1) or w (MODE 2), one binding seen two ways: a whole quad is one access, the ragged tail goes
// element by element.
#if W_F16 || W_BF16
layout(std430, binding = MODE == 2 ? 1 : 0) buffer X4 { uvec2 x4[]; };
layout(std430, binding = MODE == 2 ? 1 : 0) buffer X1 { uint16_t x1[]; };
#else
layout(std430, binding = MODE == 2 ? 1 : 0) buffer X4 { vec4 x4[]; };
layout(std430, binding = MODE == 2 ? 1 : 0) buffer X1 { float x1[]; };
#endif
#if MODE == 2
layout(std430, binding = 0) writeonly buffer Y4 { vec4 y4[]; };
layout(std430, binding = 0) writeonly buffer Y1 { float y1[]; };
#endif

#if W_F16
vec4 widen(uvec2 h) { return vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y)); }
float widen1(uint i) { return unpackHalf2x16(uint(x1[i])).x; }
#elif W_BF16
vec4 widen(uvec2 h) {
  return vec4(uintBitsToFloat(h.x << 16), uintBitsToFloat(h.x & 0xffff0000u), uintBitsToFloat(h.y << 16),
              uintBitsToFloat(h.y & 0xffff0000u));
}
float widen1(uint i) { return uintBitsToFloat(uint(x1[i]) << 16); }
#else
vec4 widen(vec4 v) { return v; }
float widen1(uint i) { return x1[i]; }
#endif

#if MODE == 1 && W_F16
// v rounded to one of its two f16 neighbours: the upper with probability (v - lo) / (hi - lo), decided by r's top
// 24 bits. Values past the largest finite half saturate to it; NaN stays NaN.
uint round_f16(float v, uint r) {
  uint h = packHalf2x16(vec2(v, 0.0)) & 0xffffu;
  float n = unpackHalf2x16(h).x;
  if (n == v || isnan(v)) return h;
  bool up = v > n;
  uint h2 = (h & 0x7fffu) == 0u ? (up ? 0x0001u : 0x8001u) : (((h & 0x8000u) == 0u) == up ? h + 1u : h - 1u);
  float n2 = unpackHalf2x16(h2).x;
  if (isinf(n)) return h2; // v beyond the range: the finite neighbour
  if (isinf(n2)) return h;
  float lo = min(n, n2), hi = max(n, n2);
  float p = (v - lo) / (hi - lo);
  float u = float(r >> 8) * (1.0 / 16777216.0);
  return (u < p) == (hi == n2) ? h2 : h;
}
#elif MODE == 1 && W_BF16
// v rounded to one of its two bfloat16 neighbours: away from zero with probability (dropped bits) / 2^16, by adding
// r's top 16 bits below the kept ones (a carry rounds up). NaN stays NaN, infinities stay.
uint round_bf16(float v, uint r) {
  uint b = floatBitsToUint(v);
  if (isnan(v) || isinf(v)) return b >> 16;
  return (b + (r >> 16)) >> 16;
}
#endif

void main() {
  uint q = flat_index(); // quad: elements 4q .. 4q+3
  uint full = pc.n >> 2;
  if (q > full || (q == full && (pc.n & 3u) == 0u)) return;
#if MODE == 2
  uint zq = pc.base_q + q;
#else
  uint zq = q;
#endif
  // Counter high word: the element index i = 4q + j is a uint (n is 32-bit), so q < 2^30 and q's high word is 0.
  uvec4 r = quad_bits(zq, pc.tensor_id, 0u, pc.seed_lo, pc.seed_hi);
  vec4 z = vec4(box_muller24(r.x, r.y), box_muller24(r.z, r.w));
#if MODE == 1 && (W_F16 || W_BF16)
  uvec4 u = quad_bits(zq, pc.tensor_id, 1u, pc.seed_lo, pc.seed_hi);
#endif
  if (q < full) {
#if MODE == 0
    x4[q] += pc.scale * z;
#elif MODE == 2
    y4[q] = widen(x4[q]) + pc.scale * z;
#else
    vec4 v = pc.decay * widen(x4[q]) + pc.scale * z;
#if W_F16
    x4[q] = uvec2(round_f16(v.x, u.x) | (round_f16(v.y, u.y) << 16), round_f16(v.z, u.z) | (round_f16(v.w, u.w) << 16));
#elif W_BF16
    x4[q] = uvec2(round_bf16(v.x, u.x) | (round_bf16(v.y, u.y) << 16),
                  round_bf16(v.z, u.z) | (round_bf16(v.w, u.w) << 16));
#else
    x4[q] = v;
#endif
#endif
  } else {
    uint i = 4u * q; // i + j < n <= 2^32 - 1 never wraps
    for (uint j = 0u; j < (pc.n & 3u); j++) {
#if MODE == 0
      x1[i + j] += pc.scale * z[j];
#elif MODE == 2
      y1[i + j] = widen1(i + j) + pc.scale * z[j];
#else
      float v = pc.decay * widen1(i + j) + pc.scale * z[j];
#if W_F16
      x1[i + j] = uint16_t(round_f16(v, u[j]));
#elif W_BF16
      x1[i + j] = uint16_t(round_bf16(v, u[j]));
#else
      x1[i + j] = v;
#endif
#endif
    }
  }
}
