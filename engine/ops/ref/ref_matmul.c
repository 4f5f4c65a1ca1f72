/* CPU reference for the matrix multiply. */
#include "engine/ops/ref/ref.h"

#include "engine/ops/quant.h"

void ref_matmul(float *y, const float *x, const void *w, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t K,
                bool accumulate) {
  for (uint32_t m = 0; m < M; m++)
    for (uint32_t n = 0; n < N; n++) {
      double s = accumulate ? y[(uint64_t)m * N + n] : 0.0;
      for (uint32_t k = 0; k < K; k++) {
        uint64_t i = (uint64_t)n * K + k;
        double wv = ref_weight_at(w, wtype, i);
        s += (double)x[(uint64_t)m * K + k] * wv;
      }
      y[(uint64_t)m * N + n] = (float)s;
    }
}

void ref_matmul_q(float *y, const float *x, const uint8_t *q, const uint16_t *scales, lt_dtype_t wtype, uint32_t group,
                  uint32_t M, uint32_t N, uint32_t K, bool accumulate) {
  uint32_t bits = wtype == LT_I4 ? 4 : 8;
  for (uint32_t m = 0; m < M; m++)
    for (uint32_t n = 0; n < N; n++) {
      double s = accumulate ? y[(uint64_t)m * N + n] : 0.0;
      for (uint32_t k = 0; k < K; k++)
        s += (double)x[(uint64_t)m * K + k] * quant_weight(q, scales, bits, group, K, n, k);
      y[(uint64_t)m * N + n] = (float)s;
    }
}
