#version 450
// Log-mel power spectrum, one workgroup per frame: the frame's windowed samples into shared memory (reflected at
// the ends of x), then one DFT bin per invocation through the twiddle table (indices (j * k) mod n_fft, so no
// angle is rounded twice), then one mel band per invocation. The table buffer holds the window, cos and sin of
// 2 pi m / n_fft (n_fft each) and the mel filters [n_mels][n_bins].
#define PC_LOGMEL 1
#include "pc.h"
#include "common.glsl"
#include "rows.glsl"

layout(std430, binding = 0) writeonly buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer T { float tab[]; };

shared float frame_s[LOGMEL_MAX_FFT];
shared float power_s[LOGMEL_MAX_FFT / 2u + 1u];

void main() {
  uint t = row_id(), tid = gl_LocalInvocationID.x;
  if (t >= pc.frames) return; // the whole workgroup leaves together
  uint n = pc.n, nf = pc.n_fft;
  int start = int(t * pc.hop) - int(nf / 2u);
  for (uint j = tid; j < nf; j += WG_X) {
    int i = start + int(j);
    if (i < 0) i = -i;
    if (i >= int(n)) i = 2 * (int(n) - 1) - i;
    frame_s[j] = x[uint(i)] * tab[j];
  }
  barrier();
  for (uint k = tid; k < pc.n_bins; k += WG_X) {
    float re = 0.0, im = 0.0;
    uint m = 0u;
    for (uint j = 0u; j < nf; j++) {
      re += frame_s[j] * tab[nf + m];
      im -= frame_s[j] * tab[2u * nf + m];
      m += k;
      if (m >= nf) m -= nf;
    }
    power_s[k] = re * re + im * im;
  }
  barrier();
  uint fb = 3u * nf;
  for (uint b = tid; b < pc.n_mels; b += WG_X) {
    float s = 0.0;
    for (uint k = 0u; k < pc.n_bins; k++) s += tab[fb + b * pc.n_bins + k] * power_s[k];
    y[t * pc.n_mels + b] = log(max(s, 1e-10)) * 0.4342944819032518; // log10
  }
}
