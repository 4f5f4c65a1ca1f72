/* KID's masking and rewriting (methods/distill.h). */
#include "methods/distill.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint32_t distill_kid_count(uint32_t count, double ratio) {
  if (!(ratio > 0)) return 0;
  if (ratio >= 1) return count;
  double k = floor(ratio * count + 0.5);
  return k > count ? count : (uint32_t)k;
}

/* splitmix64 over a state keyed by (seed, step, micro). */
static uint64_t next64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* A uniform integer in [0, n) without modulo bias. */
static uint32_t below(uint64_t *s, uint32_t n) {
  uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;
  do x = next64(s);
  while (x >= lim);
  return (uint32_t)(x % n);
}

uint32_t distill_kid_pick(uint64_t seed, uint64_t step, uint32_t micro, const uint8_t *mask, uint32_t n_seq, uint32_t T,
                          double ratio, uint8_t *picked) {
  uint64_t n = (uint64_t)n_seq * (T - 1);
  memset(picked, 0, n);
  uint32_t count = 0;
  for (uint64_t i = 0; i < n; i++) count += mask[i] != 0;
  uint32_t k = distill_kid_count(count, ratio);
  uint32_t *pos = k ? malloc(count * sizeof *pos) : NULL;
  if (!pos) return 0;
  for (uint64_t i = 0, j = 0; i < n; i++)
    if (mask[i]) pos[j++] = (uint32_t)i;
  /* The first k entries of a partial Fisher-Yates shuffle of the counted positions. */
  uint64_t s = seed ^ 0x4b49444d61736bull;
  s = next64(&s) ^ step;
  s = next64(&s) ^ micro;
  for (uint32_t i = 0; i < k; i++) {
    uint32_t j = i + below(&s, count - i), t = pos[i];
    pos[i] = pos[j], pos[j] = t;
    picked[pos[i]] = 1;
  }
  free(pos);
  return k;
}

lt_status_t distill_kid_rewrite(train_t *student, const int32_t *ids, const uint8_t *picked, uint32_t n_seq, uint32_t T,
                                int32_t *out, uint32_t *changed, lt_err_t *err) {
  uint64_t R = (uint64_t)n_seq * T;
  int32_t *next = malloc(R * sizeof *next);
  if (!next) return lt_fail(err, LT_E_NOMEM, "out of memory");
  lt_status_t st = train_predict(student, ids, n_seq, T, next, err);
  uint32_t c = 0;
  if (st == LT_OK) {
    memcpy(out, ids, R * sizeof *out);
    for (uint32_t s = 0; s < n_seq; s++)
      for (uint32_t t = 0; t + 1 < T; t++)
        if (picked[(uint64_t)s * (T - 1) + t]) {
          uint64_t r = (uint64_t)s * T + t;
          c += next[r] != ids[r + 1];
          out[r + 1] = next[r];
        }
  }
  free(next);
  if (changed) *changed = c;
  return st;
}
