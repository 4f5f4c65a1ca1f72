/* Audio in and the log-mel features: the WAV reader, mixing and resampling, bad files, and Whisper's log-mel on
 * the device against the CPU reference and against numpy (tools/logmel_ref.py wrote tests/fixtures/audio). */
#include <fcntl.h>
#include <math.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/audio/audio.h"
#include "engine/model/safetensors.h"
#include "engine/ops/ops_audio.h"
#include "engine/ops/ops_grad.h"
#include "engine/ops/ref/ref_audio.h"
#include "support/tdata.h"
#include "support/tgpu.h"

#define FIXTURES LATHE_SOURCE_DIR "/tests/fixtures"

TestSuite(audio, .fini = tdata_cleanup);
TestSuite(logmel, .init = tgpu_setup, .fini = tgpu_teardown);

/* The tensor `name` of the numpy reference as floats (caller frees), its element count in *n. */
static float *numpy_ref(const char *name, uint64_t *n) {
  lt_err_t err = {0};
  st_file_t *f = NULL;
  cr_assert_eq(st_open(&f, FIXTURES "/audio/logmel-ref.safetensors", &err), LT_OK, "%s", err.msg);
  const ft_tensor_t *t = st_find(f, name);
  cr_assert_not_null(t, "%s missing from the fixture", name);
  *n = t->n_elems;
  float *v = talloc(*n);
  cr_assert_eq(ft_tensor_to_f32(t, v, &err), LT_OK, "%s", err.msg);
  st_destroy(&f);
  return v;
}

/* Writes a WAV of `frames` frames of `ch` channels (sample i of channel c: f(i, c)) through libsndfile. */
static const char *write_wav(const char *name, int rate, int ch, int format, sf_count_t frames,
                             double (*f)(sf_count_t, int, int)) {
  char *path = strdup(tdata_file(name, "", 0));
  SF_INFO info = {.samplerate = rate, .channels = ch, .format = format};
  SNDFILE *s = sf_open(path, SFM_WRITE, &info);
  cr_assert_not_null(s, "%s", sf_strerror(NULL));
  float *buf = talloc((uint64_t)frames * ch);
  for (sf_count_t i = 0; i < frames; i++)
    for (int c = 0; c < ch; c++) buf[i * ch + c] = (float)f(i, c, rate);
  cr_assert_eq(sf_writef_float(s, buf, frames), frames);
  sf_close(s);
  free(buf);
  static char out[512];
  snprintf(out, sizeof out, "%s", path);
  free(path);
  return out;
}

static double sine1k(sf_count_t i, int c, int rate) {
  (void)c;
  return 0.5 * sin(2 * M_PI * 1000.0 * i / rate);
}

Test(audio, reads_the_fixture_wav_sample_for_sample) {
  lt_err_t err = {0};
  audio_t a;
  cr_assert_eq(audio_load(FIXTURES "/audio/tones-16k.wav", 0, 0, &a, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(a.n, 21920);
  cr_assert_eq(a.rate, 16000);
  cr_assert_eq(a.src_channels, 1);
  cr_assert(strstr(a.format, "WAV") && strstr(a.format, "16"), "%s", a.format);
  /* 16-bit PCM read as floats is the integer / 32768 exactly: the numpy reference reads it that way too. */
  for (uint64_t i = 0; i < a.n; i++) {
    float q = a.samples[i] * 32768.0f;
    cr_assert_eq(q, roundf(q), "sample %llu = %g is not a 16-bit value", (unsigned long long)i, a.samples[i]);
  }
  audio_free(&a);
}

Test(audio, mixes_channels_and_resamples_to_16k) {
  /* 44.1 kHz stereo, a 1 kHz sine on both channels: the mono mix at 16 kHz is the same sine sampled at 16 kHz.
   * libsamplerate's medium sinc converter keeps 97 dB of signal to noise inside its pass band: 1e-3 leaves room
   * for that and the 16-bit-free float path; the first and last 200 samples (filter warm-up) are skipped. */
  const char *p = write_wav("stereo.wav", 44100, 2, SF_FORMAT_WAV | SF_FORMAT_FLOAT, 44100, sine1k);
  lt_err_t err = {0};
  audio_t a;
  cr_assert_eq(audio_load(p, 16000, 0, &a, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(a.src_rate, 44100);
  cr_assert_eq(a.src_channels, 2);
  cr_assert(a.n >= 15999 && a.n <= 16001, "%llu samples for 1 s", (unsigned long long)a.n);
  double worst = 0;
  for (uint64_t i = 200; i + 200 < a.n; i++) worst = fmax(worst, fabs(a.samples[i] - sine1k((sf_count_t)i, 0, 16000)));
  cr_assert_lt(worst, 1e-3, "resampled sine off by %g", worst);
  audio_free(&a);
}

static double opposite(sf_count_t i, int c, int rate) { return (c == 0 ? 1 : -1) * sine1k(i, 0, rate); }

Test(audio, mixing_is_the_mean_of_the_channels) {
  const char *p = write_wav("opposite.wav", 16000, 2, SF_FORMAT_WAV | SF_FORMAT_FLOAT, 1600, opposite);
  lt_err_t err = {0};
  audio_t a;
  cr_assert_eq(audio_load(p, 16000, 0, &a, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(a.n, 1600);
  for (uint64_t i = 0; i < a.n; i++) cr_assert_eq(a.samples[i], 0.0f);
  audio_free(&a);
}

/* Loads path expecting failure with `code` and a message containing `needle`. */
static void expect_refused(const char *path, double max_seconds, lt_status_t code, const char *needle) {
  lt_err_t err = {0};
  audio_t a;
  lt_status_t st = audio_load(path, 0, max_seconds, &a, &err);
  cr_assert_eq(st, code, "%s: status %s (%s), wanted %s", path, lt_status_str(st), err.msg, lt_status_str(code));
  cr_assert(strstr(err.msg, needle), "%s: message \"%s\" lacks \"%s\"", path, err.msg, needle);
  cr_assert(strstr(err.msg, path), "the message names the file: %s", err.msg);
  cr_assert_null(a.samples);
}

/* A canonical 44-byte WAV header: format tag, channels, rate, bits, and the data size it claims. */
static void wav_header(unsigned char h[44], uint16_t tag, uint16_t ch, uint32_t rate, uint16_t bits, uint32_t data) {
  uint32_t block = ch * (bits / 8u), byte_rate = rate * block;
  memcpy(h, "RIFF", 4);
  uint32_t riff = 36 + data;
  memcpy(h + 4, &riff, 4);
  memcpy(h + 8, "WAVEfmt ", 8);
  uint32_t fmt = 16;
  memcpy(h + 16, &fmt, 4);
  memcpy(h + 20, &tag, 2);
  memcpy(h + 22, &ch, 2);
  memcpy(h + 24, &rate, 4);
  memcpy(h + 28, &byte_rate, 4);
  uint16_t b16 = (uint16_t)block;
  memcpy(h + 32, &b16, 2);
  memcpy(h + 34, &bits, 2);
  memcpy(h + 36, "data", 4);
  memcpy(h + 40, &data, 4);
}

Test(audio, bad_files_get_clear_errors) {
  expect_refused(tdata_file("empty.wav", "", 0), 0, LT_E_CORRUPT, "empty");
  expect_refused("/nonexistent/speech.wav", 0, LT_E_IO, "No such file");
  expect_refused(tdata_dir(), 0, LT_E_IO, "folder");
  expect_refused(tdata_file("text.wav", "this is not audio at all, just some words\n", 0), 0, LT_E_CORRUPT,
                 "not a readable audio file");

  unsigned char h[44 + 3200];
  memset(h, 0, sizeof h);
  wav_header(h, 1, 1, 16000, 16, 3200);
  /* The header cut off inside its fmt chunk. */
  expect_refused(tdata_file("truncated.wav", (const char *)h, 30), 0, LT_E_CORRUPT, "header is truncated");
  /* Encodings libsndfile cannot decode: an unknown format tag, and Windows Media Audio. */
  wav_header(h, 0x7777, 1, 16000, 16, 3200);
  expect_refused(tdata_file("encoding.wav", (const char *)h, sizeof h), 0, LT_E_UNSUPPORTED,
                 "WAV encoding 0x7777 (an unknown encoding)");
  wav_header(h, 0x0161, 1, 16000, 16, 3200);
  expect_refused(tdata_file("wma.wav", (const char *)h, sizeof h), 0, LT_E_UNSUPPORTED,
                 "WAV encoding 0x0161 (Windows Media Audio)");
  /* Channel counts: none, and more than are mixed down. */
  wav_header(h, 1, 0, 16000, 16, 3200);
  expect_refused(tdata_file("zero-channels.wav", (const char *)h, sizeof h), 0, LT_E_CORRUPT, "says 0 channels");
  const char *nine = write_wav("nine.wav", 16000, 9, SF_FORMAT_WAV | SF_FORMAT_PCM_16, 160, sine1k);
  expect_refused(nine, 0, LT_E_UNSUPPORTED, "9 channels; 1 to 8");
  /* A rate outside the accepted range. */
  const char *slow = write_wav("slow.wav", 400, 1, SF_FORMAT_WAV | SF_FORMAT_PCM_16, 400, sine1k);
  expect_refused(slow, 0, LT_E_UNSUPPORTED, "sample rate 400 Hz");
  /* A header and no samples. */
  wav_header(h, 1, 1, 16000, 16, 0);
  expect_refused(tdata_file("nodata.wav", (const char *)h, 44), 0, LT_E_CORRUPT, "no samples");
  /* A float sample that is not a number. */
  const char *nan = write_wav("nan.wav", 16000, 1, SF_FORMAT_WAV | SF_FORMAT_FLOAT, 100, sine1k);
  SNDFILE *s = NULL;
  SF_INFO info = {0};
  cr_assert_not_null(s = sf_open(nan, SFM_RDWR, &info));
  float bad = NAN;
  sf_seek(s, 37, SEEK_SET);
  sf_writef_float(s, &bad, 1);
  sf_close(s);
  expect_refused(nan, 0, LT_E_CORRUPT, "sample 37 is not a finite number");
}

Test(audio, ten_hours_are_refused_before_any_is_read) {
  /* Ten hours of 8 kHz 8-bit mono: 288 MB of samples, in a sparse file that takes no disk. The limit is checked
   * from the header, so the test reads nothing of it. */
  uint32_t data = 10u * 3600u * 8000u;
  unsigned char h[44];
  wav_header(h, 1, 1, 8000, 8, data);
  const char *p = tdata_file("ten-hours.wav", (const char *)h, 44);
  int fd = open(p, O_WRONLY);
  cr_assert_geq(fd, 0);
  cr_assert_eq(ftruncate(fd, 44 + (off_t)data), 0);
  close(fd);
  expect_refused(p, 0, LT_E_LIMIT, "holds 10:00:00 of audio; the limit is 0:20:00");
  /* A lower limit of the caller's own. */
  const char *sec = write_wav("two-seconds.wav", 16000, 1, SF_FORMAT_WAV | SF_FORMAT_PCM_16, 32000, sine1k);
  expect_refused(sec, 1.5, LT_E_LIMIT, "holds 0:00:02 of audio");
}

Test(audio, filters_match_numpy) {
  uint64_t n;
  float *want = numpy_ref("filters", &n);
  logmel_shape_t s = logmel_whisper();
  cr_assert_eq(n, (uint64_t)s.n_mels * (s.n_fft / 2 + 1));
  float *got = talloc(n);
  logmel_filters(&s, got);
  /* Both computed in double and rounded to f32 once: at most a rounding step apart (weights are below 0.03). */
  tassert_close(got, want, n, 1e-9, 1e-6, "mel filters vs numpy");
  free(got), free(want);
}

Test(audio, cpu_reference_matches_numpy) {
  lt_err_t err = {0};
  audio_t a;
  cr_assert_eq(audio_load(FIXTURES "/audio/tones-16k.wav", 0, 0, &a, &err), LT_OK, "%s", err.msg);
  uint64_t n;
  float *want = numpy_ref("logmel", &n);
  logmel_shape_t s = logmel_whisper();
  cr_assert_eq(n, (uint64_t)logmel_frames(a.n, &s) * s.n_mels);
  float *got = talloc(n);
  ref_logmel(got, a.samples, a.n, &s);
  /* Both in double from the same 16-bit samples (numpy through an FFT, the reference through a direct DFT): the
   * features agree to f32 rounding of values near 1 (1e-6) with room for the filters' f32 rounding. */
  tassert_close(got, want, n, 2e-6, 0, "log-mel: CPU reference vs numpy");
  free(got), free(want);
  audio_free(&a);
}

/* op_logmel of n samples x against ref_logmel; returns the largest difference. */
static double device_vs_ref(const float *x, uint64_t n, const logmel_shape_t *s, double atol, const char *what) {
  uint32_t frames = logmel_frames(n, s);
  uint64_t out_n = (uint64_t)frames * s->n_mels, tn = logmel_table_len(s);
  float *tab = talloc(tn), *want = talloc(out_n);
  logmel_table(s, tab);
  ref_logmel(want, x, n, s);
  gpu_buf_t *bx = tbuf_f32(x, n), *bt = tbuf_f32(tab, tn), *by = tbuf_f32(NULL, out_n);
  gpu_cmd_t *c = tbegin();
  lt_err_t err = {0};
  cr_assert_eq(op_logmel(c, gv(by), gv(bx), gv(bt), n, s, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, out_n);
  double worst = 0;
  for (uint64_t i = 0; i < out_n; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
  tassert_close(got, want, out_n, atol, 0, what);
  free(tab), free(want), free(got);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bt), gpu_buf_destroy(&by);
  return worst;
}

/* The device's tolerance: an f32 DFT of n_fft terms carries rounding errors that add up like a random walk, about
 * sqrt(n_fft) * 2^-24 (1.2e-6 for 400) of the frame's largest magnitude. Bands at the top of the range move by
 * that relative amount, 1.2e-6 / ln 10 / 4 = 1.3e-7 in normalised log10 units; bands 8 decades down (the clamp's
 * floor, below which every value is the same) have a magnitude 1e-4 of the largest, so the same error is 1.2% of
 * them in magnitude, 2.4% in power: 0.024 / ln 10 / 4 = 2.6e-3 at the very floor. Bands that close to the floor
 * are few; measured worst on the fixture: 3.6e-5. */
#define LOGMEL_ATOL 3e-3

Test(logmel, device_matches_cpu_reference_and_numpy) {
  lt_err_t err = {0};
  audio_t a;
  cr_assert_eq(audio_load(FIXTURES "/audio/tones-16k.wav", 0, 0, &a, &err), LT_OK, "%s", err.msg);
  logmel_shape_t s = logmel_whisper();
  double worst = device_vs_ref(a.samples, a.n, &s, LOGMEL_ATOL, "log-mel: device vs CPU reference");
  cr_log_info("log-mel device vs CPU reference: worst %.3g", worst);
  uint64_t n;
  float *want = numpy_ref("logmel", &n);
  float *tab = talloc(logmel_table_len(&s));
  logmel_table(&s, tab);
  gpu_buf_t *bx = tbuf_f32(a.samples, a.n), *bt = tbuf_f32(tab, logmel_table_len(&s)), *by = tbuf_f32(NULL, n);
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_logmel(c, gv(by), gv(bx), gv(bt), a.n, &s, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, n);
  tassert_close(got, want, n, LOGMEL_ATOL, 0, "log-mel: device vs numpy");
  /* Most bands sit well above the floor, where the error is the small one. */
  uint64_t close = 0;
  for (uint64_t i = 0; i < n; i++) close += fabs((double)got[i] - want[i]) < 1e-4;
  cr_assert_gt(close, n * 9 / 10, "only %llu of %llu bands within 1e-4", (unsigned long long)close,
               (unsigned long long)n);
  free(want), free(tab), free(got);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bt), gpu_buf_destroy(&by);
  audio_free(&a);
}

Test(logmel, other_shapes_and_lengths) {
  /* 128 mels (Whisper large-v3), a 512-point FFT with hop 128 at 8 kHz, and the shortest input (one window). */
  uint64_t seed = 5;
  uint64_t n = 9001;
  float *x = talloc(n);
  trand(x, n, -0.5f, 0.5f, &seed);
  logmel_shape_t v3 = logmel_whisper();
  v3.n_mels = 128;
  device_vs_ref(x, n, &v3, LOGMEL_ATOL, "log-mel 128 mels");
  logmel_shape_t other = {8000, 512, 128, 40};
  device_vs_ref(x, n, &other, LOGMEL_ATOL, "log-mel n_fft 512");
  logmel_shape_t w = logmel_whisper();
  device_vs_ref(x, 400, &w, LOGMEL_ATOL, "log-mel of one window");
  free(x);
}

Test(logmel, refuses_bad_shapes) {
  lt_err_t err = {0};
  logmel_shape_t s = logmel_whisper();
  cr_assert_eq(logmel_check(&s, 399, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "399 samples; at least one window (400 samples, 25.0 ms)"), "%s", err.msg);
  s.n_fft = 4096;
  cr_assert_eq(logmel_check(&s, 100000, &err), LT_E_INVALID);
  s = logmel_whisper();
  s.hop = 0;
  cr_assert_eq(logmel_check(&s, 100000, &err), LT_E_INVALID);
}

Test(logmel, max_over_many_passes) {
  /* More elements than one pass of the reduction covers, the largest placed near the end. */
  uint64_t n = 3000001, seed = 11;
  float *x = talloc(n);
  trand(x, n, -100, 100, &seed);
  x[n - 7] = 123.5f;
  gpu_buf_t *bx = tbuf_f32(x, n), *bo = tbuf_f32(NULL, 1);
  gpu_cmd_t *c = tbegin();
  lt_err_t err = {0};
  cr_assert_eq(op_max(c, gv(bo), gv(bx), n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(bo, 1);
  cr_assert_eq(got[0], 123.5f);
  free(got), free(x);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bo);
}

TestSuite(conv_cols, .init = tgpu_setup, .fini = tgpu_teardown);

Test(conv_cols, im2col_and_its_transpose) {
  /* Whisper's two convolutions (kernel 3, padding 1, strides 1 and 2) on odd lengths, and a wider kernel. */
  struct {
    uint32_t t_in, ch, k, stride, pad;
  } shapes[] = {{37, 5, 3, 1, 1}, {37, 5, 3, 2, 1}, {38, 3, 3, 2, 1}, {16, 4, 5, 3, 2}, {3, 2, 3, 2, 1}};
  for (int si = 0; si < 5; si++) {
    uint32_t t_in = shapes[si].t_in, ch = shapes[si].ch, k = shapes[si].k, st = shapes[si].stride, pad = shapes[si].pad;
    uint32_t t_out = conv_out_len(t_in, k, st, pad);
    uint64_t ni = (uint64_t)t_in * ch, nc = (uint64_t)t_out * ch * k, seed = 70 + si;
    float *x = talloc(ni), *dc = talloc(nc), *cols = talloc(nc), *dx = talloc(ni);
    trand(x, ni, -1, 1, &seed);
    trand(dc, nc, -1, 1, &seed);
    ref_im2col(cols, x, t_in, ch, k, st, pad);
    ref_col2im(dx, dc, t_in, ch, k, st, pad);
    /* The references are each other's transpose: <im2col(x), dc> == <x, col2im(dc)>. */
    double l = 0, r = 0;
    for (uint64_t i = 0; i < nc; i++) l += (double)cols[i] * dc[i];
    for (uint64_t i = 0; i < ni; i++) r += (double)x[i] * dx[i];
    cr_assert(fabs(l - r) < 1e-4, "adjoint %d: %g vs %g", si, l, r);
    gpu_buf_t *bx = tbuf_f32(x, ni), *bdc = tbuf_f32(dc, nc), *bc = tbuf_f32(NULL, nc), *bdx = tbuf_f32(NULL, ni);
    lt_err_t err = {0};
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_im2col(c, gv(bc), gv(bx), t_in, ch, k, st, pad, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(op_col2im(c, gv(bdx), gv(bdc), t_in, ch, k, st, pad, &err), LT_OK, "%s", err.msg);
    tfinish(&c);
    float *gc = tread_f32(bc, nc), *gdx = tread_f32(bdx, ni);
    /* im2col copies (exact); col2im adds at most k values of magnitude <= 1 in another order. */
    tassert_close(gc, cols, nc, 0, 0, "im2col");
    tassert_close(gdx, dx, ni, 1e-6 * k, 0, "col2im");
    free(gc), free(gdx), free(x), free(dc), free(cols), free(dx);
    gpu_buf_destroy(&bx), gpu_buf_destroy(&bdc), gpu_buf_destroy(&bc), gpu_buf_destroy(&bdx);
  }
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_im2col(c, gv(NULL), gv(NULL), 1, 4, 5, 1, 1, &err), LT_E_INVALID, "a kernel longer than the input");
  cr_assert(strstr(err.msg, "shorter than the kernel"), "%s", err.msg);
  cr_assert_eq(op_im2col(c, gv(NULL), gv(NULL), 10, 4, 3, 0, 1, &err), LT_E_INVALID, "stride 0");
  tfinish(&c);
}
