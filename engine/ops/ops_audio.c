/* Whisper's log-mel features on the device: the tables (window, twiddles, Slaney mel filters) made on the host in
 * double precision, one dispatch for the spectra, then the maximum and the clamp. */
#include "engine/ops/ops_audio.h"

#include <math.h>

#include "engine/ops/ops_grad.h"

lt_status_t logmel_check(const logmel_shape_t *s, uint64_t n, lt_err_t *err) {
  if (s->rate < 1000) return lt_fail(err, LT_E_INVALID, "log-mel: sample rate %u Hz", s->rate);
  if (s->n_fft < 16 || s->n_fft > LOGMEL_MAX_FFT)
    return lt_fail(err, LT_E_INVALID, "log-mel: n_fft %u outside 16..%u", s->n_fft, LOGMEL_MAX_FFT);
  if (s->hop == 0 || s->hop > s->n_fft)
    return lt_fail(err, LT_E_INVALID, "log-mel: hop %u (n_fft %u)", s->hop, s->n_fft);
  if (s->n_mels == 0 || s->n_mels > 512) return lt_fail(err, LT_E_INVALID, "log-mel: %u mel bands (1..512)", s->n_mels);
  if (n < s->n_fft)
    return lt_fail(err, LT_E_INVALID, "log-mel: %llu samples; at least one window (%u samples, %.1f ms) is needed",
                   (unsigned long long)n, s->n_fft, 1000.0 * s->n_fft / s->rate);
  if (n > UINT32_MAX || (uint64_t)logmel_frames(n, s) * s->n_mels > UINT32_MAX)
    return lt_fail(err, LT_E_LIMIT, "log-mel: %llu samples", (unsigned long long)n);
  return LT_OK;
}

/* Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above. */
static double hz_to_mel(double f) {
  const double f_sp = 200.0 / 3.0, min_log_hz = 1000.0, min_log_mel = min_log_hz / f_sp, step = log(6.4) / 27.0;
  return f < min_log_hz ? f / f_sp : min_log_mel + log(f / min_log_hz) / step;
}

static double mel_to_hz(double m) {
  const double f_sp = 200.0 / 3.0, min_log_hz = 1000.0, min_log_mel = min_log_hz / f_sp, step = log(6.4) / 27.0;
  return m < min_log_mel ? m * f_sp : min_log_hz * exp(step * (m - min_log_mel));
}

void logmel_filters(const logmel_shape_t *s, float *out) {
  uint32_t nb = s->n_fft / 2 + 1, nm = s->n_mels;
  double lo = hz_to_mel(0.0), hi = hz_to_mel(s->rate / 2.0);
  /* n_mels + 2 band edges evenly spaced in mels. */
  double edges[512 + 2];
  for (uint32_t i = 0; i < nm + 2; i++) edges[i] = mel_to_hz(lo + (hi - lo) * i / (nm + 1));
  for (uint32_t m = 0; m < nm; m++) {
    double norm = 2.0 / (edges[m + 2] - edges[m]);
    for (uint32_t k = 0; k < nb; k++) {
      double f = (double)k * s->rate / s->n_fft;
      double up = (f - edges[m]) / (edges[m + 1] - edges[m]), down = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1]);
      double w = fmin(up, down);
      out[(uint64_t)m * nb + k] = (float)(w > 0 ? w * norm : 0.0);
    }
  }
}

void logmel_table(const logmel_shape_t *s, float *out) {
  uint32_t nf = s->n_fft;
  for (uint32_t j = 0; j < nf; j++) {
    double a = 2.0 * M_PI * j / nf;
    out[j] = (float)(0.5 - 0.5 * cos(a)); /* periodic Hann */
    out[nf + j] = (float)cos(a);
    out[2 * nf + j] = (float)sin(a);
  }
  logmel_filters(s, out + 3 * nf);
}

lt_status_t op_logmel(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t tab, uint64_t n, const logmel_shape_t *s,
                      lt_err_t *err) {
  lt_status_t st = logmel_check(s, n, err);
  if (st != LT_OK) return st;
  uint32_t frames = logmel_frames(n, s), wg = op_wg(OP_LOGMEL);
  uint64_t out_n = (uint64_t)frames * s->n_mels;
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_LOGMEL, NULL, &wg, 1, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_logmel_t pc = {.n = (uint32_t)n,
                    .frames = frames,
                    .hop = s->hop,
                    .n_fft = s->n_fft,
                    .n_bins = s->n_fft / 2 + 1,
                    .n_mels = s->n_mels};
  gpu_view_t v[3] = {y, x, tab};
  uint64_t bytes[3] = {out_n * 4, n * 4, logmel_table_len(s) * 4};
  bool w[3] = {true, false, false};
  uint32_t gx, gy;
  op_grid_1d(frames, 1, &gx, &gy);
  st = op_dispatch(c, p, OP_LOGMEL, v, bytes, w, 3, &pc, gx, gy, 1, err);
  if (st != LT_OK) return st;
  gpu_buf_t *mx = gpu_cmd_scratch(c, 4, err);
  if (!mx) return err ? err->code : LT_E_DEVICE_OOM;
  st = op_max(c, gv(mx), y, out_n, err);
  if (st != LT_OK) return st;
  return op_logmel_clamp(c, y, y, gv(mx), LOGMEL_RANGE, (uint32_t)out_n, err);
}

/* One dispatch of conv_cols.comp. */
static lt_status_t conv_cols(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, uint32_t t_in, uint32_t ch, uint32_t k,
                             uint32_t stride, uint32_t pad, uint32_t mode, const char *name, lt_err_t *err) {
  if (ch == 0 || k == 0 || stride == 0 || pad >= k)
    return lt_fail(err, LT_E_INVALID, "%s: %u channels, kernel %u, stride %u, padding %u", name, ch, k, stride, pad);
  uint32_t t_out = conv_out_len(t_in, k, stride, pad);
  if (t_out == 0) return lt_fail(err, LT_E_INVALID, "%s: %u steps are shorter than the kernel (%u)", name, t_in, k);
  uint64_t cols = (uint64_t)t_out * ch * k, in = (uint64_t)t_in * ch;
  if (cols > UINT32_MAX) return lt_fail(err, LT_E_LIMIT, "%s: %llu column elements", name, (unsigned long long)cols);
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_CONV_COLS, NULL, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_conv_cols_t pc = {.t_in = t_in, .t_out = t_out, .ch = ch, .k = k, .stride = stride, .pad = pad, .mode = mode};
  gpu_view_t v[2] = {y, x};
  uint64_t bytes[2] = {(mode == 0 ? cols : in) * 4, (mode == 0 ? in : cols) * 4};
  bool w[2] = {true, false};
  uint32_t gx, gy;
  op_grid_1d(mode == 0 ? cols : in, op_wg(OP_CONV_COLS), &gx, &gy);
  return op_dispatch(c, p, OP_CONV_COLS, v, bytes, w, 2, &pc, gx, gy, 1, err);
}

lt_status_t op_im2col(gpu_cmd_t *c, gpu_view_t cols, gpu_view_t x, uint32_t t_in, uint32_t ch, uint32_t k,
                      uint32_t stride, uint32_t pad, lt_err_t *err) {
  return conv_cols(c, cols, x, t_in, ch, k, stride, pad, 0, "im2col", err);
}

lt_status_t op_col2im(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dcols, uint32_t t_in, uint32_t ch, uint32_t k,
                      uint32_t stride, uint32_t pad, lt_err_t *err) {
  return conv_cols(c, dx, dcols, t_in, ch, k, stride, pad, 1, "col2im", err);
}
