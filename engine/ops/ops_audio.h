/* Speech on the device (engine/ops/ops_audio.c): Whisper's log-mel spectrogram, and the columns a speech encoder's
 * conv1d layers multiply (im2col and its transpose). */
#ifndef LATHE_OPS_AUDIO_H
#define LATHE_OPS_AUDIO_H

#include "engine/ops/ops.h"

/* Whisper's features: 25 ms windows (400 samples at 16 kHz) every 10 ms (160), 80 mel bands. */
#define LOGMEL_N_FFT 400u
#define LOGMEL_HOP 160u
#define LOGMEL_N_MELS 80u
#define LOGMEL_RATE 16000u
/* Whisper keeps 8 decades below the loudest band (log10 units). */
#define LOGMEL_RANGE 8.0f

/* The shape of a log-mel computation. */
typedef struct logmel_shape {
  uint32_t rate, n_fft, hop, n_mels;
} logmel_shape_t;

/* Whisper's shape: 16 kHz, n_fft 400, hop 160, 80 mels. */
static inline logmel_shape_t logmel_whisper(void) {
  return (logmel_shape_t){LOGMEL_RATE, LOGMEL_N_FFT, LOGMEL_HOP, LOGMEL_N_MELS};
}

/* Frames of n samples: one every hop, the last of the centred frames dropped (as Whisper does): n / hop. */
static inline uint32_t logmel_frames(uint64_t n, const logmel_shape_t *s) { return (uint32_t)(n / s->hop); }

/* Floats of the table buffer op_logmel reads: window, cos, sin (n_fft each) and the filters. */
static inline uint64_t logmel_table_len(const logmel_shape_t *s) {
  return 3ull * s->n_fft + (uint64_t)s->n_mels * (s->n_fft / 2 + 1);
}

/* Checks a shape and a sample count: LT_OK, or LT_E_INVALID with err naming what is wrong. */
lt_status_t logmel_check(const logmel_shape_t *s, uint64_t n, lt_err_t *err);

/* Fills the mel filter bank [n_mels][n_fft / 2 + 1] the way librosa's mel() does by default (Slaney's mel scale,
 * bands from 0 Hz to rate / 2, each normalised to unit area), which is what Whisper's features use. */
void logmel_filters(const logmel_shape_t *s, float *out);

/* Fills the table op_logmel reads (logmel_table_len floats, caller's memory): the periodic Hann window, the
 * twiddles and logmel_filters(). */
void logmel_table(const logmel_shape_t *s, float *out);

/* y[i] = (max(a[i], mx[0] - range) + 4) / 4 for i < n: Whisper's normalisation of log10 mel power. y may alias a. */
lt_status_t op_logmel_clamp(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, gpu_view_t mx, float range, uint32_t n,
                            lt_err_t *err);

/* y [frames][n_mels] = Whisper's normalised log-mel features of n samples x: log10 of the mel power (at least
 * 1e-10), clamped to LOGMEL_RANGE below the largest, then (v + 4) / 4. tab holds logmel_table(). The maximum
 * lives in a scratch buffer of the recorder. */
lt_status_t op_logmel(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t tab, uint64_t n, const logmel_shape_t *s,
                      lt_err_t *err);

/* Output length of a conv1d over t_in steps: (t_in + 2 pad - k) / stride + 1 (0 when the kernel does not fit). */
static inline uint32_t conv_out_len(uint32_t t_in, uint32_t k, uint32_t stride, uint32_t pad) {
  return t_in + 2 * pad < k ? 0 : (t_in + 2 * pad - k) / stride + 1;
}

/* cols [t_out, ch * k] = the conv1d windows of x [t_in, ch] (im2col, zero padding of pad steps each side); a
 * conv1d with weight [out, ch, k] (PyTorch's layout) is then cols times its [out, ch * k] transpose. */
lt_status_t op_im2col(gpu_cmd_t *c, gpu_view_t cols, gpu_view_t x, uint32_t t_in, uint32_t ch, uint32_t k,
                      uint32_t stride, uint32_t pad, lt_err_t *err);

/* dx [t_in, ch] = the column gradient dcols [t_out, ch * k] folded back onto the input (op_im2col's transpose),
 * overwritten. */
lt_status_t op_col2im(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dcols, uint32_t t_in, uint32_t ch, uint32_t k,
                      uint32_t stride, uint32_t pad, lt_err_t *err);

#endif
