/* CPU reference of the log-mel features. */
#include "engine/ops/ref/ref_audio.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ref_logmel(float *y, const float *x, uint64_t n, const logmel_shape_t *s) {
  uint32_t nf = s->n_fft, nb = nf / 2 + 1, nm = s->n_mels, frames = logmel_frames(n, s);
  float *filt = malloc((size_t)nm * nb * sizeof *filt);
  double *frame = malloc(nf * sizeof *frame), *power = malloc(nb * sizeof *power);
  double *out = malloc((size_t)frames * nm * sizeof *out);
  logmel_filters(s, filt);
  double mx = -INFINITY;
  for (uint32_t t = 0; t < frames; t++) {
    for (uint32_t j = 0; j < nf; j++) {
      int64_t i = (int64_t)t * s->hop + j - nf / 2;
      if (i < 0) i = -i;
      if (i >= (int64_t)n) i = 2 * ((int64_t)n - 1) - i;
      frame[j] = x[i] * (0.5 - 0.5 * cos(2.0 * M_PI * j / nf));
    }
    for (uint32_t k = 0; k < nb; k++) {
      double re = 0, im = 0;
      for (uint32_t j = 0; j < nf; j++) {
        double a = 2.0 * M_PI * (double)(((uint64_t)j * k) % nf) / nf;
        re += frame[j] * cos(a);
        im -= frame[j] * sin(a);
      }
      power[k] = re * re + im * im;
    }
    for (uint32_t m = 0; m < nm; m++) {
      double e = 0;
      for (uint32_t k = 0; k < nb; k++) e += (double)filt[(uint64_t)m * nb + k] * power[k];
      double v = log10(fmax(e, 1e-10));
      out[(uint64_t)t * nm + m] = v;
      mx = fmax(mx, v);
    }
  }
  for (uint64_t i = 0; i < (uint64_t)frames * nm; i++) y[i] = (float)((fmax(out[i], mx - LOGMEL_RANGE) + 4.0) / 4.0);
  free(filt), free(frame), free(power), free(out);
}

void ref_im2col(float *cols, const float *x, uint32_t t_in, uint32_t ch, uint32_t k, uint32_t stride, uint32_t pad) {
  uint32_t t_out = conv_out_len(t_in, k, stride, pad);
  for (uint32_t t = 0; t < t_out; t++)
    for (uint32_t c = 0; c < ch; c++)
      for (uint32_t j = 0; j < k; j++) {
        int64_t u = (int64_t)t * stride + j - pad;
        cols[((uint64_t)t * ch + c) * k + j] = u >= 0 && u < t_in ? x[(uint64_t)u * ch + c] : 0.0f;
      }
}

void ref_col2im(float *dx, const float *dcols, uint32_t t_in, uint32_t ch, uint32_t k, uint32_t stride, uint32_t pad) {
  uint32_t t_out = conv_out_len(t_in, k, stride, pad);
  memset(dx, 0, (uint64_t)t_in * ch * sizeof *dx);
  for (uint32_t t = 0; t < t_out; t++)
    for (uint32_t c = 0; c < ch; c++)
      for (uint32_t j = 0; j < k; j++) {
        int64_t u = (int64_t)t * stride + j - pad;
        if (u >= 0 && u < t_in) dx[(uint64_t)u * ch + c] += dcols[((uint64_t)t * ch + c) * k + j];
      }
}
