/* Audio in: a file read through libsndfile (WAV, FLAC, Ogg and the other formats it knows), mixed to mono and
 * resampled with libsamplerate to the rate a speech encoder wants (16 kHz for Whisper-style features). Every
 * size is checked from the header before anything is read, so a hostile file fails with a message naming what is
 * wrong instead of exhausting memory. */
#ifndef LATHE_AUDIO_H
#define LATHE_AUDIO_H

#include <stdint.h>

#include "common/status.h"

/* Defaults: the rate speech features are computed at, the longest audio one file may hold, the most channels
 * mixed down. */
#define AUDIO_RATE 16000u
#define AUDIO_MAX_SECONDS_DEFAULT (20.0 * 60.0)
#define AUDIO_MAX_CHANNELS 8u
/* Source rates accepted (Hz). */
#define AUDIO_MIN_SOURCE_RATE 1000
#define AUDIO_MAX_SOURCE_RATE 384000

/* Mono samples in [-1, 1] (floats; a float file may hold louder ones) at `rate` Hz. */
typedef struct audio {
  float *samples; /* n of them; owned by the struct (audio_free) */
  uint64_t n;
  uint32_t rate;
  /* What the file held before mixing and resampling. */
  uint32_t src_rate, src_channels;
  uint64_t src_frames;
  char format[64]; /* e.g. "WAV, 16-bit PCM" */
} audio_t;

/* Reads path, mixes its channels to mono (their mean) and resamples to `rate` Hz (0: AUDIO_RATE). Audio longer
 * than max_seconds (0: AUDIO_MAX_SECONDS_DEFAULT) is refused with LT_E_LIMIT before it is read. Errors name the
 * file: LT_E_IO (missing, unreadable), LT_E_CORRUPT (empty, truncated header, not audio, a non-finite sample),
 * LT_E_UNSUPPORTED (an encoding libsndfile cannot decode, a channel count or rate outside the limits). On success
 * the caller owns *out (audio_free). */
lt_status_t audio_load(const char *path, uint32_t rate, double max_seconds, audio_t *out, lt_err_t *err);

/* Resamples n mono samples from src_rate to dst_rate Hz with libsamplerate's best sinc converter. Returns the new
 * samples (caller frees) and their count in *n_out; NULL with err on failure. */
float *audio_resample(const float *x, uint64_t n, uint32_t src_rate, uint32_t dst_rate, uint64_t *n_out, lt_err_t *err);

/* Frees the samples and zeroes the struct; NULL-safe. */
void audio_free(audio_t *a);

/* Writes n mono samples at `rate` Hz to path as a 16-bit PCM WAV (clipped to [-1, 1]). Used by tools and tests
 * that make audio. */
lt_status_t audio_write_wav16(const char *path, const float *x, uint64_t n, uint32_t rate, lt_err_t *err);

#endif
