/* CPU references for the zeroth-order perturbation: Philox-4x32-10 and the Box-Muller normals built on it. */
#include <math.h>

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

float ref_normal(uint64_t seed, uint32_t tensor_id, uint64_t i) {
  uint64_t q = i / 4;
  const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), tensor_id, 0};
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t r[4];
  ref_philox4x32(r, ctr, key);
  unsigned pair = (unsigned)(i % 4) / 2;
  double radius = sqrt(-2.0 * log(uniform24(r[2 * pair])));
  double angle = 2.0 * M_PI * uniform24(r[2 * pair + 1]);
  return (float)(i % 2 == 0 ? radius * cos(angle) : radius * sin(angle));
}

void ref_perturb(float *x, uint32_t n, uint64_t seed, uint32_t tensor_id, float scale) {
  for (uint32_t i = 0; i < n; i++) x[i] = (float)((double)x[i] + (double)scale * ref_normal(seed, tensor_id, i));
}
