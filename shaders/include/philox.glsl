// Counter-based random numbers for shaders: Philox-4x32-10 (Salmon et al. 2011, Random123) and Box-Muller
// normals built on it. engine/ops/ref/ref_perturb.c holds the CPU reference of both.
#ifndef LATHE_PHILOX_GLSL
#define LATHE_PHILOX_GLSL

// Philox-4x32 with 10 rounds on counter c under key k.
uvec4 philox4x32_10(uvec4 c, uvec2 k) {
  for (uint r = 0u; r < 10u; r++) {
    uint hi0, lo0, hi1, lo1;
    umulExtended(0xD2511F53u, c.x, hi0, lo0);
    umulExtended(0xCD9E8D57u, c.z, hi1, lo1);
    c = uvec4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k += uvec2(0x9E3779B9u, 0xBB67AE85u);
  }
  return c;
}

// -2 ln(u) for the uniform u = (k + 1/2) 2^-24 in (0, 1), k < 2^24, to a few ulp for every k. Below 1/2 the
// built-in log() is used (Vulkan holds it to 3 ulp there). Above, log() is only held to 2^-21 absolute, and a
// tiny -2 ln u becomes a radius sqrt(-2 ln u) whose error is that 2^-21 divided by the radius (1e-3 at the
// smallest): there t = 1 - u is exact in float and ln(1 - t) = -2 atanh(t / (2 - t)) is summed as a series.
float neg2ln_uniform24(uint k) {
  if (k < 0x800000u) return -2.0 * log((float(k) + 0.5) * (1.0 / 16777216.0));
  float t = (float(0x1000000u - k) - 0.5) * (1.0 / 16777216.0);
  float s = t / (2.0 - t);
  float s2 = s * s;
  // 4 atanh(s) = 4 s (1 + s^2/3 + s^4/5 + ...); s <= 1/3, so stopping at s^16/17 leaves < 2e-10 relative.
  float p = 1.0 / 15.0 + s2 * (1.0 / 17.0);
  p = 1.0 / 13.0 + s2 * p;
  p = 1.0 / 11.0 + s2 * p;
  p = 1.0 / 9.0 + s2 * p;
  p = 1.0 / 7.0 + s2 * p;
  p = 1.0 / 5.0 + s2 * p;
  p = 1.0 / 3.0 + s2 * p;
  p = 1.0 + s2 * p;
  return 4.0 * s * p;
}

// Two standard normals from two Philox outputs: u1, u2 = (r >> 8 + 1/2) 2^-24 and
// sqrt(-2 ln u1) * (cos 2 pi u2, sin 2 pi u2). The angle is taken as pi + 2 pi c with c = u2 - 1/2 (exact in
// float), so cos and sin see arguments in (-pi, pi), where GPUs evaluate them most accurately.
vec2 box_muller24(uint r1, uint r2) {
  float radius = sqrt(neg2ln_uniform24(r1 >> 8));
  float c = (float(int(r2 >> 8) - 0x800000) + 0.5) * (1.0 / 16777216.0);
  float theta = 6.283185307179586 * c;
  return -radius * vec2(cos(theta), sin(theta));
}

// The four Philox outputs of quad q (elements 4q .. 4q+3) of a tensor in stream `word` under the 64-bit seed
// (lo, hi): counter (q, 0, tensor_id, word), key (seed lo, seed hi), the layout every zeroth-order shader shares.
// Word 0 feeds the normals (element i takes normal i % 4 of its quad), word 1 the stochastic rounding.
// engine/ops/ref/ref_perturb.c's quad_bits() is its CPU reference.
uvec4 quad_bits(uint q, uint tensor_id, uint word, uint seed_lo, uint seed_hi) {
  return philox4x32_10(uvec4(q, 0u, tensor_id, word), uvec2(seed_lo, seed_hi));
}

#endif
