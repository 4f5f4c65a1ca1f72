/* CPU references for RoPE, the embedding gather and causal attention (double precision, naive). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ref/ref.h"

/* Llama-3 frequency adjustment written as one clamped blend (equivalent to Hugging Face's three cases, coded
 * independently of rope_table_build): blend 1 keeps inv_freq, blend 0 divides it by the factor. */
static double ref_rope_freq(uint32_t i, uint32_t rot_dim, double theta, const rope_scaling_t *s) {
  double inv = 1.0 / pow(theta, (double)(2 * i) / (double)rot_dim);
  if (!s || s->type != 1) return inv;
  double ratio = (double)s->original_max_position * inv / (2.0 * M_PI); /* original context / wavelength */
  double blend = (ratio - s->low_freq_factor) / ((double)s->high_freq_factor - s->low_freq_factor);
  blend = blend < 0 ? 0 : blend > 1 ? 1 : blend;
  return blend * inv + (1.0 - blend) * inv / s->factor;
}

void ref_rope(float *x, const int32_t *pos, uint32_t rows, uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim,
              bool neox, double theta, const rope_scaling_t *scaling) {
  uint32_t pairs = rot_dim / 2;
  for (uint32_t r = 0; r < rows; r++)
    for (uint32_t h = 0; h < n_heads; h++) {
      float *xh = x + ((uint64_t)r * n_heads + h) * head_dim;
      for (uint32_t i = 0; i < pairs; i++) {
        double a = (double)pos[r] * ref_rope_freq(i, rot_dim, theta, scaling);
        uint32_t i0 = neox ? i : 2 * i, i1 = neox ? i + pairs : 2 * i + 1;
        double u = xh[i0], w = xh[i1];
        xh[i0] = (float)(u * cos(a) - w * sin(a));
        xh[i1] = (float)(w * cos(a) + u * sin(a));
      }
    }
}

void ref_embed(float *y, const void *table, lt_dtype_t ttype, const int32_t *ids, uint32_t n_ids, uint32_t dim,
               uint32_t row_lo, uint32_t row_hi) {
  for (uint32_t r = 0; r < n_ids; r++) {
    int64_t id = ids[r];
    if (id < (int64_t)row_lo || id >= (int64_t)row_hi) continue;
    uint64_t src = (uint64_t)(id - row_lo) * dim;
    for (uint32_t j = 0; j < dim; j++) y[(uint64_t)r * dim + j] = ref_weight_at(table, ttype, src + j);
  }
}

void ref_attention(float *out, const float *q, const float *k, const float *v, uint32_t n_q, uint32_t n_heads,
                   uint32_t n_kv_heads, uint32_t head_dim, uint32_t q_pos0, uint32_t kv_len, uint32_t window,
                   float scale, float softcap) {
  uint32_t group = n_heads / n_kv_heads;
  uint64_t kv_stride = (uint64_t)n_kv_heads * head_dim;
  double *w = malloc((kv_len ? kv_len : 1) * sizeof *w), *acc = malloc(head_dim * sizeof *acc);
  if (!w || !acc) abort();
  for (uint32_t t = 0; t < n_q; t++)
    for (uint32_t h = 0; h < n_heads; h++) {
      const float *qh = q + ((uint64_t)t * n_heads + h) * head_dim;
      uint64_t kvo = (uint64_t)(h / group) * head_dim;
      uint64_t end = (uint64_t)q_pos0 + t + 1;
      if (end > kv_len) end = kv_len;
      uint64_t beg = window && (uint64_t)q_pos0 + t + 1 > window ? (uint64_t)q_pos0 + t + 1 - window : 0;
      double mx = -INFINITY, sum = 0;
      for (uint64_t j = beg; j < end; j++) {
        double s = 0;
        for (uint32_t d = 0; d < head_dim; d++) s += (double)qh[d] * k[j * kv_stride + kvo + d];
        w[j] = s * scale;
        if (softcap > 0) w[j] = softcap * tanh(w[j] / softcap);
        if (w[j] > mx) mx = w[j];
      }
      memset(acc, 0, head_dim * sizeof *acc);
      for (uint64_t j = beg; j < end; j++) {
        w[j] = exp(w[j] - mx);
        sum += w[j];
        for (uint32_t d = 0; d < head_dim; d++) acc[d] += w[j] * v[j * kv_stride + kvo + d];
      }
      float *oh = out + ((uint64_t)t * n_heads + h) * head_dim;
      for (uint32_t d = 0; d < head_dim; d++) oh[d] = sum > 0 ? (float)(acc[d] / sum) : 0.0f;
    }
  free(w);
  free(acc);
}
