/* Audio in through libsndfile and libsamplerate: header checks first, then a chunked read that mixes to mono. */
#include "engine/audio/audio.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <samplerate.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Frames read per sf_readf_float call. */
#define AUDIO_CHUNK 4096

void audio_free(audio_t *a) {
  if (!a) return;
  free(a->samples);
  memset(a, 0, sizeof *a);
}

/* Formats seconds as H:MM:SS for messages about long audio. */
static void hms(double s, char *out, size_t cap) {
  unsigned long t = (unsigned long)(s + 0.5);
  snprintf(out, cap, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
}

/* The names of the container and the encoding, e.g. "WAV, 16-bit PCM". */
static void format_name(int format, char *out, size_t cap) {
  SF_FORMAT_INFO major = {.format = format & SF_FORMAT_TYPEMASK}, sub = {.format = format & SF_FORMAT_SUBMASK};
  const char *mn = sf_command(NULL, SFC_GET_FORMAT_INFO, &major, sizeof major) == 0 ? major.name : "unknown";
  const char *sn = sf_command(NULL, SFC_GET_FORMAT_INFO, &sub, sizeof sub) == 0 ? sub.name : "unknown";
  snprintf(out, cap, "%.28s, %.28s", mn, sn);
}

/* What a RIFF/WAVE file's header says, for naming why libsndfile refused it. */
typedef struct wav_sniff {
  int riff;          /* the file starts with RIFF....WAVE */
  int fmt_truncated; /* the file ends inside the header, before the fmt chunk is whole */
  int has_fmt;
  uint16_t tag, channels, bits;
} wav_sniff_t;

static uint32_t le32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Walks the chunks of a RIFF/WAVE header up to its fmt chunk. */
static wav_sniff_t sniff_wav(const char *path) {
  wav_sniff_t w = {0};
  FILE *f = fopen(path, "rb");
  if (!f) return w;
  unsigned char h[12];
  if (fread(h, 1, 12, f) == 12 && !memcmp(h, "RIFF", 4) && !memcmp(h + 8, "WAVE", 4)) {
    w.riff = 1;
    /* At most 64 chunks before fmt: a header is never longer than that. */
    for (int i = 0; i < 64; i++) {
      unsigned char c[8];
      if (fread(c, 1, 8, f) != 8) {
        w.fmt_truncated = 1;
        break;
      }
      uint32_t len = le32(c + 4);
      if (!memcmp(c, "fmt ", 4)) {
        unsigned char b[16];
        if (len < 16 || fread(b, 1, 16, f) != 16) {
          w.fmt_truncated = 1;
          break;
        }
        w.has_fmt = 1;
        w.tag = le16(b);
        w.channels = le16(b + 2);
        w.bits = le16(b + 14);
        break;
      }
      if (fseek(f, (long)len + (len & 1), SEEK_CUR) != 0) break;
    }
  }
  fclose(f);
  return w;
}

/* The usual name of a WAVE format tag. */
static const char *wav_tag_name(uint16_t tag) {
  switch (tag) {
  case 0x0001: return "PCM";
  case 0x0002: return "Microsoft ADPCM";
  case 0x0003: return "IEEE float";
  case 0x0006: return "A-law";
  case 0x0007: return "mu-law";
  case 0x0011: return "IMA ADPCM";
  case 0x0031: return "GSM 6.10";
  case 0x0050: return "MPEG";
  case 0x0055: return "MPEG layer 3";
  case 0x0161: return "Windows Media Audio";
  case 0x00FF: return "AAC";
  case 0xFFFE: return "extensible";
  default: return "an unknown encoding";
  }
}

/* Opens path for reading with the header checked; fills *info. NULL with err naming what is wrong. */
static SNDFILE *open_checked(const char *path, SF_INFO *info, lt_err_t *err) {
  struct stat st;
  if (stat(path, &st) != 0) return lt_fail(err, LT_E_IO, "audio %s: %s", path, strerror(errno)), NULL;
  if (S_ISDIR(st.st_mode)) return lt_fail(err, LT_E_IO, "audio %s: is a folder, not an audio file", path), NULL;
  if (st.st_size == 0) return lt_fail(err, LT_E_CORRUPT, "audio %s: the file is empty (0 bytes)", path), NULL;
  memset(info, 0, sizeof *info);
  SNDFILE *f = sf_open(path, SFM_READ, info);
  if (!f) {
    int e = sf_error(NULL);
    const char *why = sf_strerror(NULL);
    wav_sniff_t w = sniff_wav(path);
    if (e == SF_ERR_SYSTEM)
      lt_fail(err, LT_E_IO, "audio %s: %s", path, why);
    else if (w.riff && w.fmt_truncated)
      lt_fail(err, LT_E_CORRUPT, "audio %s: a WAV whose header is truncated (%lld bytes, the fmt chunk incomplete)",
              path, (long long)st.st_size);
    else if (w.riff && w.has_fmt && w.channels == 0)
      lt_fail(err, LT_E_CORRUPT, "audio %s: the WAV header says 0 channels", path);
    else if (w.riff && w.has_fmt && w.tag != 0x0001 && w.tag != 0x0003)
      lt_fail(err, LT_E_UNSUPPORTED, "audio %s: WAV encoding 0x%04x (%s) that libsndfile cannot decode (%s)", path,
              w.tag, wav_tag_name(w.tag), why);
    else if (e == SF_ERR_UNSUPPORTED_ENCODING)
      lt_fail(err, LT_E_UNSUPPORTED, "audio %s: an encoding libsndfile cannot decode (%s)", path, why);
    else
      lt_fail(err, LT_E_CORRUPT,
              "audio %s: not a readable audio file (%lld bytes; a truncated or malformed header, or not audio): %s",
              path, (long long)st.st_size, why);
    return NULL;
  }
  return f;
}

lt_status_t audio_load(const char *path, uint32_t rate, double max_seconds, audio_t *out, lt_err_t *err) {
  memset(out, 0, sizeof *out);
  if (!path || !*path) return lt_fail(err, LT_E_INVALID, "audio: no file named");
  if (rate == 0) rate = AUDIO_RATE;
  if (!(max_seconds > 0)) max_seconds = AUDIO_MAX_SECONDS_DEFAULT;
  SF_INFO info;
  SNDFILE *f = open_checked(path, &info, err);
  if (!f) return err ? err->code : LT_E_CORRUPT;
  lt_status_t st = LT_OK;
  float *mono = NULL, *buf = NULL;
  format_name(info.format, out->format, sizeof out->format);
  if (info.channels < 1 || (uint32_t)info.channels > AUDIO_MAX_CHANNELS) {
    st = lt_fail(err, LT_E_UNSUPPORTED, "audio %s: %d channels; 1 to %u are mixed to mono", path, info.channels,
                 AUDIO_MAX_CHANNELS);
    goto done;
  }
  if (info.samplerate < AUDIO_MIN_SOURCE_RATE || info.samplerate > AUDIO_MAX_SOURCE_RATE) {
    st = lt_fail(err, LT_E_UNSUPPORTED, "audio %s: sample rate %d Hz; %d to %d Hz are accepted", path, info.samplerate,
                 AUDIO_MIN_SOURCE_RATE, AUDIO_MAX_SOURCE_RATE);
    goto done;
  }
  if (info.frames <= 0) {
    st = lt_fail(err, LT_E_CORRUPT, "audio %s: holds no samples (%s)", path, out->format);
    goto done;
  }
  double seconds = (double)info.frames / info.samplerate;
  if (seconds > max_seconds) {
    char have[32], lim[32];
    hms(seconds, have, sizeof have);
    hms(max_seconds, lim, sizeof lim);
    st = lt_fail(err, LT_E_LIMIT, "audio %s: holds %s of audio; the limit is %s (%.0f s) per file: cut it into parts",
                 path, have, lim, max_seconds);
    goto done;
  }
  uint64_t frames = (uint64_t)info.frames;
  uint32_t ch = (uint32_t)info.channels;
  mono = malloc(frames * sizeof *mono);
  buf = malloc((size_t)AUDIO_CHUNK * ch * sizeof *buf);
  if (!mono || !buf) {
    st = lt_fail(err, LT_E_NOMEM, "audio %s: %llu samples do not fit in memory", path, (unsigned long long)frames);
    goto done;
  }
  uint64_t got = 0;
  while (got < frames) {
    sf_count_t want = (sf_count_t)(frames - got < AUDIO_CHUNK ? frames - got : AUDIO_CHUNK);
    sf_count_t r = sf_readf_float(f, buf, want);
    if (r <= 0) break;
    for (sf_count_t i = 0; i < r; i++) {
      float s = 0;
      for (uint32_t c = 0; c < ch; c++) s += buf[(size_t)i * ch + c];
      s /= (float)ch;
      if (!isfinite(s)) {
        st = lt_fail(err, LT_E_CORRUPT, "audio %s: sample %llu is not a finite number", path,
                     (unsigned long long)(got + (uint64_t)i));
        goto done;
      }
      mono[got + (uint64_t)i] = s;
    }
    got += (uint64_t)r;
  }
  if (got < frames) {
    st = lt_fail(err, LT_E_CORRUPT, "audio %s: truncated: the header promises %llu frames, the file holds %llu%s%s",
                 path, (unsigned long long)frames, (unsigned long long)got, sf_error(f) ? ": " : "",
                 sf_error(f) ? sf_strerror(f) : "");
    goto done;
  }
  out->src_rate = (uint32_t)info.samplerate;
  out->src_channels = ch;
  out->src_frames = frames;
  if ((uint32_t)info.samplerate == rate) {
    out->samples = mono;
    out->n = frames;
    mono = NULL;
  } else {
    out->samples = audio_resample(mono, frames, (uint32_t)info.samplerate, rate, &out->n, err);
    if (!out->samples) st = err ? err->code : LT_E_INVALID;
  }
  out->rate = rate;
done:
  free(mono);
  free(buf);
  sf_close(f);
  if (st != LT_OK) audio_free(out);
  return st;
}

float *audio_resample(const float *x, uint64_t n, uint32_t src_rate, uint32_t dst_rate, uint64_t *n_out,
                      lt_err_t *err) {
  *n_out = 0;
  if (src_rate == 0 || dst_rate == 0) return lt_fail(err, LT_E_INVALID, "resample: a rate of 0 Hz"), NULL;
  if (n == 0) return lt_fail(err, LT_E_INVALID, "resample: no samples"), NULL;
  if (n > (uint64_t)LONG_MAX / 2)
    return lt_fail(err, LT_E_LIMIT, "resample: %llu samples", (unsigned long long)n), NULL;
  double ratio = (double)dst_rate / src_rate;
  uint64_t cap = (uint64_t)ceil((double)n * ratio) + 16;
  float *y = malloc(cap * sizeof *y);
  if (!y) return lt_fail(err, LT_E_NOMEM, "resample: %llu samples", (unsigned long long)cap), NULL;
  SRC_DATA d = {.data_in = x,
                .data_out = y,
                .input_frames = (long)n,
                .output_frames = (long)cap,
                .src_ratio = ratio,
                .end_of_input = 1};
  int e = src_simple(&d, SRC_SINC_MEDIUM_QUALITY, 1);
  if (e != 0) {
    free(y);
    return lt_fail(err, LT_E_INVALID, "resample %u -> %u Hz: %s", src_rate, dst_rate, src_strerror(e)), NULL;
  }
  *n_out = (uint64_t)d.output_frames_gen;
  return y;
}

lt_status_t audio_write_wav16(const char *path, const float *x, uint64_t n, uint32_t rate, lt_err_t *err) {
  SF_INFO info = {.samplerate = (int)rate, .channels = 1, .format = SF_FORMAT_WAV | SF_FORMAT_PCM_16};
  SNDFILE *f = sf_open(path, SFM_WRITE, &info);
  if (!f) return lt_fail(err, LT_E_IO, "audio %s: cannot write: %s", path, sf_strerror(NULL));
  sf_command(f, SFC_SET_CLIPPING, NULL, SF_TRUE);
  sf_count_t w = sf_writef_float(f, x, (sf_count_t)n);
  int e = sf_close(f);
  if (w != (sf_count_t)n || e != 0) return lt_fail(err, LT_E_IO, "audio %s: short write", path);
  return LT_OK;
}
