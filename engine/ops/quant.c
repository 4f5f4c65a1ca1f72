/* Symmetric per-group round-to-nearest quantisation (the layout is described in engine/ops/quant.h). */
#include "engine/ops/quant.h"

#include <math.h>
#include <string.h>

#include "engine/ops/dtype.h"

#define HALF_MAX 65504.0f

uint32_t quant_padded_cols(uint32_t K) { return (K + QUANT_COL_ALIGN - 1) / QUANT_COL_ALIGN * QUANT_COL_ALIGN; }

uint32_t quant_row_bytes(uint32_t bits, uint32_t K) {
  return bits == 4 ? quant_padded_cols(K) / 2 : quant_padded_cols(K);
}

uint32_t quant_groups(uint32_t K, uint32_t group) { return (K + group - 1) / group; }

bool quant_params_ok(uint32_t bits, uint32_t group) {
  return (bits == 8 || bits == 4) && group > 0 && group % QUANT_COL_ALIGN == 0;
}

/* Stores integer v at element k of a q row. */
static void put_int(uint8_t *row, uint32_t bits, uint32_t k, int32_t v) {
  if (bits == 8) {
    row[k] = (uint8_t)(int8_t)v;
    return;
  }
  uint8_t nib = (uint8_t)(v & 0xf), shift = (uint8_t)(k % 2 ? 4 : 0);
  row[k / 2] = (uint8_t)((row[k / 2] & ~(0xf << shift)) | (nib << shift));
}

void quant_rtn(uint8_t *q, uint16_t *scales, const float *w, uint32_t N, uint32_t K, uint32_t bits, uint32_t group) {
  uint32_t G = quant_groups(K, group), rb = quant_row_bytes(bits, K);
  float qmax = (float)((1 << (bits - 1)) - 1);
  memset(q, 0, (uint64_t)N * rb);
  for (uint32_t n = 0; n < N; n++) {
    const float *wr = w + (uint64_t)n * K;
    uint8_t *qr = q + (uint64_t)n * rb;
    for (uint32_t g = 0; g < G; g++) {
      uint32_t k0 = g * group, k1 = k0 + group < K ? k0 + group : K;
      float amax = 0.0f;
      for (uint32_t k = k0; k < k1; k++) amax = fmaxf(amax, fabsf(wr[k]));
      uint16_t sh = dtype_float_to_half(fminf(amax / qmax, HALF_MAX));
      scales[(uint64_t)n * G + g] = sh;
      /* q is computed against the stored (f16) scale, so q * s is the nearest representable weight. */
      float s = dtype_half_to_float(sh);
      for (uint32_t k = k0; k < k1; k++) {
        float v = s > 0.0f ? roundf(wr[k] / s) : 0.0f;
        put_int(qr, bits, k, (int32_t)fmaxf(-qmax, fminf(qmax, v)));
      }
    }
  }
}

int32_t quant_int(const uint8_t *q, uint32_t bits, uint32_t K, uint32_t n, uint32_t k) {
  const uint8_t *row = q + (uint64_t)n * quant_row_bytes(bits, K);
  if (bits == 8) return (int8_t)row[k];
  int32_t nib = (row[k / 2] >> (k % 2 ? 4 : 0)) & 0xf;
  return nib >= 8 ? nib - 16 : nib;
}

float quant_weight(const uint8_t *q, const uint16_t *scales, uint32_t bits, uint32_t group, uint32_t K, uint32_t n,
                   uint32_t k) {
  float s = dtype_half_to_float(scales[(uint64_t)n * quant_groups(K, group) + k / group]);
  return (float)quant_int(q, bits, K, n, k) * s;
}

void quant_dequant(float *w, const uint8_t *q, const uint16_t *scales, uint32_t N, uint32_t K, uint32_t bits,
                   uint32_t group) {
  for (uint32_t n = 0; n < N; n++)
    for (uint32_t k = 0; k < K; k++) w[(uint64_t)n * K + k] = quant_weight(q, scales, bits, group, K, n, k);
}
