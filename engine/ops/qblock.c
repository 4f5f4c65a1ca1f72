/* GGUF's block formats: their table and the CPU dequantiser, one element at a time from the layouts in
 * engine/ops/qblock.h (the reference the shaders are tested against, and what loading to f32 uses). */
#include "engine/ops/qblock.h"

#include <string.h>

#define NONE UINT32_MAX

static const qblock_info_t infos[] = {
    [LT_Q8_0 - LT_Q8_0] = {"Q8_0", 8, 32, 34, {0, NONE}},
    [LT_Q4_0 - LT_Q8_0] = {"Q4_0", 2, 32, 18, {0, NONE}},
    [LT_Q4_1 - LT_Q8_0] = {"Q4_1", 3, 32, 20, {0, 2}},
    [LT_Q5_0 - LT_Q8_0] = {"Q5_0", 6, 32, 22, {0, NONE}},
    [LT_Q5_1 - LT_Q8_0] = {"Q5_1", 7, 32, 24, {0, 2}},
    [LT_Q2_K - LT_Q8_0] = {"Q2_K", 10, 256, 84, {80, 82}},
    [LT_Q3_K - LT_Q8_0] = {"Q3_K", 11, 256, 110, {108, NONE}},
    [LT_Q4_K - LT_Q8_0] = {"Q4_K", 12, 256, 144, {0, 2}},
    [LT_Q5_K - LT_Q8_0] = {"Q5_K", 13, 256, 176, {0, 2}},
    [LT_Q6_K - LT_Q8_0] = {"Q6_K", 14, 256, 210, {208, NONE}},
};
#define N_INFOS (sizeof infos / sizeof infos[0])

bool qblock_is(lt_dtype_t t) { return t >= LT_Q8_0 && t < LT_Q8_0 + (int)N_INFOS; }

const qblock_info_t *qblock_info(lt_dtype_t t) { return qblock_is(t) ? &infos[t - LT_Q8_0] : NULL; }

bool qblock_from_ggml(uint32_t ggml_type, lt_dtype_t *out) {
  for (uint32_t i = 0; i < N_INFOS; i++)
    if (infos[i].ggml_type == ggml_type) {
      *out = (lt_dtype_t)(LT_Q8_0 + (int)i);
      return true;
    }
  return false;
}

const char *qblock_names(void) { return "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K"; }

uint64_t qblock_row_bytes(lt_dtype_t t, uint64_t K) {
  const qblock_info_t *q = qblock_info(t);
  if (!q || K % q->block) return 0;
  return K / q->block * q->bytes;
}

static float half_at(const uint8_t *b, uint32_t off) {
  uint16_t h;
  memcpy(&h, b + off, 2);
  return dtype_half_to_float(h);
}

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block's 12 packed bytes: the first four pairs in
 * the low six bits of bytes j and j + 4, the last four in nibbles of bytes j + 4 with their top bits in the top two
 * bits of bytes j - 4 and j. */
static void scale_min_k4(uint32_t j, const uint8_t *s, uint32_t *sc, uint32_t *mn) {
  if (j < 4) {
    *sc = s[j] & 63u;
    *mn = s[j + 4] & 63u;
  } else {
    *sc = (s[j + 4] & 0xfu) | ((uint32_t)(s[j - 4] >> 6) << 4);
    *mn = (uint32_t)(s[j + 4] >> 4) | ((uint32_t)(s[j] >> 6) << 4);
  }
}

/* Element e of the block at b. */
static float elem(lt_dtype_t t, const uint8_t *b, uint32_t e) {
  switch (t) {
  case LT_Q8_0: return half_at(b, 0) * (float)(int8_t)b[2 + e];
  case LT_Q4_0:
  case LT_Q4_1: {
    const uint8_t *qs = b + (t == LT_Q4_0 ? 2 : 4);
    int q = e < 16 ? qs[e] & 0xf : qs[e - 16] >> 4;
    return t == LT_Q4_0 ? (float)(q - 8) * half_at(b, 0) : (float)q * half_at(b, 0) + half_at(b, 2);
  }
  case LT_Q5_0:
  case LT_Q5_1: {
    uint32_t at = t == LT_Q5_0 ? 2 : 4, qh;
    memcpy(&qh, b + at, 4);
    const uint8_t *qs = b + at + 4;
    int q = (e < 16 ? qs[e] & 0xf : qs[e - 16] >> 4) | (int)((qh >> e) & 1u) << 4;
    return t == LT_Q5_0 ? (float)(q - 16) * half_at(b, 0) : (float)q * half_at(b, 0) + half_at(b, 2);
  }
  case LT_Q2_K: { /* 128-element halves; in each, four 2-bit planes of the same 32 bytes, 16 elements per scale */
    uint32_t h = e / 128, j = e % 128 / 32, l = e % 32, sc = b[8 * h + 2 * j + l / 16];
    int q = (b[16 + 32 * h + l] >> (2 * j)) & 3;
    float dl = half_at(b, 80) * (float)(sc & 0xf), ml = half_at(b, 82) * (float)(sc >> 4);
    return dl * (float)q - ml;
  }
  case LT_Q3_K: {
    uint32_t h = e / 128, j = e % 128 / 32, l = e % 32, s = 8 * h + 2 * j + l / 16;
    const uint8_t *sb = b + 96;
    uint32_t lo = s < 8 ? sb[s] & 0xfu : (uint32_t)sb[s - 8] >> 4, hi = (sb[8 + s % 4] >> (2 * (s / 4))) & 3u;
    int q = ((b[32 + 32 * h + l] >> (2 * j)) & 3) - ((b[l] >> (4 * h + j)) & 1 ? 0 : 4);
    float dl = half_at(b, 108) * (float)((int)(lo | hi << 4) - 32);
    return dl * (float)q;
  }
  case LT_Q4_K:
  case LT_Q5_K: { /* 64-element chunks: the low nibbles of 32 bytes, then their high nibbles */
    uint32_t c = e / 64, w = e % 64, sub = 2 * c + w / 32, l = w % 32, sc, mn;
    scale_min_k4(sub, b + 4, &sc, &mn);
    const uint8_t *qs = b + (t == LT_Q4_K ? 16 : 48);
    int q = w < 32 ? qs[32 * c + l] & 0xf : qs[32 * c + l] >> 4;
    if (t == LT_Q5_K) q += ((b[16 + l] >> sub) & 1) << 4;
    float d1 = half_at(b, 0) * (float)sc, m1 = half_at(b, 2) * (float)mn;
    return d1 * (float)q - m1;
  }
  case LT_Q6_K: { /* 128-element halves; in each, four 32-element quarters */
    uint32_t h = e / 128, w = e % 128, qd = w / 32, l = w % 32;
    uint8_t lo = b[64 * h + l + 32 * (qd & 1)], hb = b[128 + 32 * h + l];
    int q = ((qd >= 2 ? lo >> 4 : lo & 0xf) | ((hb >> (2 * qd)) & 3) << 4) - 32;
    int8_t sc = (int8_t)b[192 + 8 * h + l / 16 + 2 * qd];
    return half_at(b, 208) * (float)sc * (float)q;
  }
  default: return 0.0f;
  }
}

void qblock_dequant(lt_dtype_t t, const void *blocks, float *y, uint64_t n) {
  const qblock_info_t *q = qblock_info(t);
  if (!q) return;
  const uint8_t *b = blocks;
  for (uint64_t i = 0; i < n / q->block; i++, b += q->bytes)
    for (uint32_t e = 0; e < q->block; e++) y[i * q->block + e] = elem(t, b, e);
}

float qblock_weight(lt_dtype_t t, const uint8_t *row, uint64_t k) {
  const qblock_info_t *q = qblock_info(t);
  if (!q) return 0.0f;
  return elem(t, row + k / q->block * q->bytes, (uint32_t)(k % q->block));
}
