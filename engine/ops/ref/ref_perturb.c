/* CPU references for the zeroth-order perturbation: Philox-4x32-10 and the Box-Muller normals built on it. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "engine/ops/dtype.h"
#include "engine/ops/ref/ref.h"

void ref_philox4x32(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]) {
  /* Salmon et al. 2011 (Random123): 10 rounds of two 32x32->64 multiplies, the key bumped by Weyl constants
   * between rounds. */
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/* The uniform in (0, 1) made from the top 24 bits of r; exact in double. */
static double uniform24(uint32_t r) { return ((double)(r >> 8) + 0.5) * 0x1p-24; }

/* The four Philox outputs of element i's quad in stream `word` (counter (i/4 lo, i/4 hi, tensor_id, word), key
 * (seed lo, seed hi)): word 0 feeds the normals, word 1 the stochastic rounding. */
static void quad_bits(uint64_t seed, uint32_t tensor_id, uint64_t i, uint32_t word, uint32_t r[4]) {
  uint64_t q = i / 4;
  const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), tensor_id, word};
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  ref_philox4x32(r, ctr, key);
}

float ref_normal(uint64_t seed, uint32_t tensor_id, uint64_t i) {
  uint32_t r[4];
  quad_bits(seed, tensor_id, i, 0, r);
  unsigned pair = (unsigned)(i % 4) / 2;
  double radius = sqrt(-2.0 * log(uniform24(r[2 * pair])));
  double angle = 2.0 * M_PI * uniform24(r[2 * pair + 1]);
  return (float)(i % 2 == 0 ? radius * cos(angle) : radius * sin(angle));
}

void ref_perturb(float *x, uint32_t n, uint64_t seed, uint32_t tensor_id, float scale) {
  for (uint32_t i = 0; i < n; i++) x[i] = (float)((double)x[i] + (double)scale * ref_normal(seed, tensor_id, i));
}

uint32_t ref_round_bits(uint64_t seed, uint32_t tensor_id, uint64_t i) {
  uint32_t r[4];
  quad_bits(seed, tensor_id, i, 1, r);
  return r[i % 4];
}

uint16_t ref_round_f16(float v, uint32_t r) {
  uint16_t h = dtype_float_to_half(v);
  float n = dtype_half_to_float(h);
  if (n == v || isnan(v)) return h;
  bool up = v > n;
  uint16_t h2 = (h & 0x7fff) == 0 ? (up ? 0x0001 : 0x8001) : (((h & 0x8000) == 0) == up ? h + 1 : h - 1);
  float n2 = dtype_half_to_float(h2);
  if (isinf(n)) return h2;
  if (isinf(n2)) return h;
  float lo = n < n2 ? n : n2, hi = n < n2 ? n2 : n;
  float p = (v - lo) / (hi - lo);
  float u = (float)(r >> 8) * 0x1p-24f;
  return (u < p) == (hi == n2) ? h2 : h;
}

uint16_t ref_round_bf16(float v, uint32_t r) {
  uint32_t b;
  memcpy(&b, &v, 4);
  if (isnan(v) || isinf(v)) return (uint16_t)(b >> 16);
  return (uint16_t)((b + (r >> 16)) >> 16);
}

void ref_perturb_update(void *x, lt_dtype_t dtype, uint32_t n, uint64_t seed, uint32_t tensor_id, float decay,
                        float scale) {
  for (uint32_t i = 0; i < n; i++) {
    float z = ref_normal(seed, tensor_id, i);
    if (dtype == LT_F32) {
      float *f = x;
      f[i] = decay * f[i] + scale * z;
    } else if (dtype == LT_F16) {
      uint16_t *h = x;
      h[i] = ref_round_f16(decay * dtype_half_to_float(h[i]) + scale * z, ref_round_bits(seed, tensor_id, i));
    } else {
      uint16_t *h = x;
      h[i] = ref_round_bf16(decay * dtype_bf16_to_float(h[i]) + scale * z, ref_round_bits(seed, tensor_id, i));
    }
  }
}
