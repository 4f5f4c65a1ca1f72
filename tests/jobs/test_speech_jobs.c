/* The speech kinds in-process (jobs/speech.c): speech-train's two stages, speech-eval and generate --audio on a
 * few synthetic sounds paired with the embedded LLaMA, the files they write, and bad input named clearly. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/audio/audio.h"
#include "engine/model/speech.h"
#include "engine/text/lines.h"
#include "jobs/job_local.h"
#include "support/tdata.h"
#include "support/tgpu.h"
#include "jobs/tjobs.h"

#define KJV LATHE_SOURCE_DIR "/models/lathe-kjv-llama"
#define DEMO LATHE_SOURCE_DIR "/models/lathe-kjv-speech"
/* Held-out verses the embedded demo's test speaks and transcribes. */
#define DEMO_ROWS 24

extern char **environ;

TestSuite(speech_jobs, .init = tgpu_setup, .fini = tgpu_teardown);

/* Runs kind with the (key, value) pairs of array kv. */
#define RUN(l, kind, kv, err) job_local_run(l, kind, kv, sizeof kv / sizeof kv[0] / 2, err)

static size_t lines_in(const char *path) {
  FILE *f = fopen(path, "r");
  cr_assert(f, "%s missing", path);
  size_t n = 0;
  int c;
  while ((c = fgetc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

/* Writes name (0.5 s: a tone sweeping from f0 to f1 Hz) in the test's folder. */
static void sweep(const char *name, double f0, double f1) {
  uint32_t n = 8000;
  float *x = talloc(n);
  double ph = 0;
  for (uint32_t i = 0; i < n; i++) {
    ph += 2 * M_PI * (f0 + (f1 - f0) * i / n) / 16000;
    x[i] = (float)(0.4 * sin(ph));
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", tdata_dir(), name);
  lt_err_t err = {0};
  cr_assert_eq(audio_write_wav16(path, x, n, 16000, &err), LT_OK, "%s", err.msg);
  free(x);
}

static const char *ROWS = "{\"audio\": \"a.wav\", \"text\": \"Jesus wept.\"}\n"
                          "{\"audio\": \"b.wav\", \"text\": \"In the beginning God created the heaven.\"}\n"
                          "{\"audio\": \"c.wav\", \"text\": \"And God said, Let there be light.\"}\n";

Test(speech_jobs, train_both_stages_evaluate_and_answer_from_audio) {
  sweep("a.wav", 200, 2000), sweep("b.wav", 2000, 200), sweep("c.wav", 800, 900);
  const char *data = strdup(tdata_file("train.jsonl", ROWS, 0));
  char out1[1024], out2[1024], path[1200];
  snprintf(out1, sizeof out1, "%s/asr", tdata_dir());
  snprintf(out2, sizeof out2, "%s/sp", tdata_dir());
  job_local_t *l = job_local_new(tgpu(), tdata_dir(), NULL);
  cr_assert(l);
  lt_err_t err = {0};
  const char *asr[] = {"model", KJV,  "data",    data, "output",        out1,  "steps",  "3",
                       "batch", "2",  "d_model", "32", "layers",        "1",   "heads",  "4",
                       "ffn",   "64", "hidden",  "64", "max_positions", "100", "warmup", "1"};
  cr_assert_eq(RUN(l, "speech-train", asr, &err), JOB_SUCCEEDED, "%s", err.msg);
  const msgpack_object *res = job_local_result(l);
  cr_assert_eq(tjobs_num(mp_get(res, "steps")), 3);
  cr_assert_eq(tjobs_num(mp_get(res, "examples")), 3);
  cr_assert(isfinite(tjobs_num(mp_get(res, "final_loss"))) && tjobs_num(mp_get(res, "final_loss")) > 0);
  snprintf(path, sizeof path, "%s/speech-log.jsonl", out1);
  cr_assert_eq(lines_in(path), 3);
  snprintf(path, sizeof path, "%s/targets.jsonl", out1);
  cr_assert_eq(lines_in(path), 3, "asr: the transcripts are the targets");
  snprintf(path, sizeof path, "%s/speech/model.safetensors", out1);
  cr_assert_eq(access(path, R_OK), 0, "no speech model written");
  cr_assert_eq(tjobs_count_events(l, "metric"), 3);
  /* Stage self-powered from it, with LoRA on the LLM: the LLM's answers become targets. */
  char sp_from[1100];
  snprintf(sp_from, sizeof sp_from, "%s/speech", out1);
  const char *sp[] = {"model",  KJV,     "data",        data,
                      "output", out2,    "stage",       "self-powered",
                      "speech", sp_from, "instruction", "Continue the verse.",
                      "steps",  "2",     "batch",       "2",
                      "lora",   "true",  "warmup",      "0"};
  cr_assert_eq(RUN(l, "speech-train", sp, &err), JOB_SUCCEEDED, "%s", err.msg);
  res = job_local_result(l);
  snprintf(path, sizeof path, "%s/targets.jsonl", out2);
  cr_assert_eq(lines_in(path), 3, "one LLM answer per row");
  cr_assert_eq(tjobs_num(mp_get(res, "examples")) + tjobs_num(mp_get(res, "dropped")), 6,
               "3 answers (kept or not) + 3 asr rows");
  snprintf(path, sizeof path, "%s/adapter/adapter_config.json", out2);
  cr_assert_eq(access(path, R_OK), 0, "no LoRA adapter written");
  /* speech-eval: transcription and instruction prompts, with the adapter. */
  char adapter[1100], speech2[1100];
  snprintf(adapter, sizeof adapter, "%s/adapter", out2);
  snprintf(speech2, sizeof speech2, "%s/speech", out2);
  const char *ev[] = {"model",   KJV,     "speech",      speech2,       "data",       data,
                      "adapter", adapter, "instruction", "Keep going.", "max_tokens", "12"};
  cr_assert_eq(RUN(l, "speech-eval", ev, &err), JOB_SUCCEEDED, "%s", err.msg);
  res = job_local_result(l);
  cr_assert_eq(tjobs_count_events(l, "output"), 6, "two prompts per row");
  cr_assert_eq(tjobs_num(mp_get(res, "rows")), 3);
  cr_assert_eq(tjobs_num(mp_get(res, "words")), 2 + 7 + 7);
  double f = tjobs_num(mp_get(res, "follow_share")), t = tjobs_num(mp_get(res, "transcribe_share")),
         n = tjobs_num(mp_get(res, "neither_share"));
  cr_assert(fabs(f + t + n - 1) < 1e-9, "shares %g + %g + %g", f, t, n);
  cr_assert_geq(tjobs_num(mp_get(res, "wer")), 0);
  /* generate --audio. */
  char wav[1100];
  snprintf(wav, sizeof wav, "%s/a.wav", tdata_dir());
  const char *g[] = {"model",      KJV,
                     "speech",     speech2,
                     "audio",      wav,
                     "prompt",     "Transcribe the audio.",
                     "prompt",     "Continue the verse.",
                     "max_tokens", "8"};
  cr_assert_eq(RUN(l, "generate", g, &err), JOB_SUCCEEDED, "%s", err.msg);
  cr_assert_eq(tjobs_count_events(l, "output"), 2);
  const msgpack_object *o = tjobs_first_event(l, "output");
  cr_assert_eq(tjobs_num(mp_get(o, "speech_rows")), 7, "0.5 s: 50 frames, 25 positions, 7 rows of 4");
  job_local_destroy(&l);
  tdata_cleanup();
}

Test(speech_jobs, bad_input_is_named) {
  sweep("a.wav", 200, 2000);
  job_local_t *l = job_local_new(tgpu(), tdata_dir(), NULL);
  lt_err_t err = {0};
  char out[1024];
  snprintf(out, sizeof out, "%s/out", tdata_dir());
  struct {
    const char *rows, *needle;
  } cases[] = {
      {"{\"audio\": \"a.wav\"}\n", "train.jsonl:1: a row needs \"audio\" (a file) and \"text\""},
      {"{\"audio\": \"a.wav\", \"text\": \"x\"}\n{\"audio\": \"gone.wav\", \"text\": \"y\"}\n", "train.jsonl:2: audio"},
      {"{\"audio\": \"empty.wav\", \"text\": \"x\"}\n", "the file is empty"},
  };
  tdata_file("empty.wav", "", 0);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *data = strdup(tdata_file("train.jsonl", cases[i].rows, 0));
    const char *kv[] = {"model", KJV, "data", data, "output", out, "steps", "1", "force", "true"};
    cr_assert_eq(RUN(l, "speech-train", kv, &err), JOB_FAILED, "case %zu", i);
    cr_assert(strstr(err.msg, cases[i].needle), "case %zu: %s", i, err.msg);
    free((void *)data);
  }
  const char *data = strdup(tdata_file("train.jsonl", "{\"audio\": \"a.wav\", \"text\": \"x\"}\n", 0));
  const char *sp[] = {"model", KJV, "data", data, "output", out, "stage", "self-powered", "force", "true"};
  cr_assert_eq(RUN(l, "speech-train", sp, &err), JOB_FAILED);
  cr_assert(strstr(err.msg, "self-powered needs instructions"), "%s", err.msg);
  const char *bad_stage[] = {"model", KJV, "data", data, "output", out, "stage", "whisper"};
  cr_assert_eq(RUN(l, "speech-train", bad_stage, &err), JOB_FAILED);
  cr_assert(strstr(err.msg, "asr or self-powered"), "%s", err.msg);
  const char *no_speech[] = {"model", KJV, "audio", data, "prompt", "x"};
  cr_assert_eq(RUN(l, "generate", no_speech, &err), JOB_FAILED);
  cr_assert(strstr(err.msg, "--audio needs the speech model"), "%s", err.msg);
  const char *no_model[] = {"model", KJV, "speech", LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny", "data", data};
  cr_assert_eq(RUN(l, "speech-eval", no_model, &err), JOB_FAILED);
  cr_assert(strstr(err.msg, "neither a Lathe speech model"), "%s", err.msg);
  free((void *)data);
  job_local_destroy(&l);
  tdata_cleanup();
}

/* Speaks text into path with espeak-ng's voice, speed and pitch (no shell: the verse goes as one argument). */
static void speak(const char *text, const char *voice, int wpm, int pitch, const char *path) {
  char s[16], p[16];
  snprintf(s, sizeof s, "%d", wpm), snprintf(p, sizeof p, "%d", pitch);
  char *const argv[] = {"espeak-ng", "-v", (char *)voice, "-s", s, "-p", p, "-w", (char *)path, (char *)text, NULL};
  pid_t pid;
  cr_assert_eq(posix_spawnp(&pid, "espeak-ng", NULL, NULL, argv, environ), 0,
               "espeak-ng did not start: scripts/deps.sh installs it");
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "espeak-ng failed on \"%s\"", text);
}

/* speech-eval of speech model `speech` (with the demo's LoRA pairs) on data with the held-out pool: its result's
 * wer, transcript_nll, listening_gain, follow share and transcribe share. */
typedef struct demo_fig {
  double wer, nll, gain, follow, transcribe;
} demo_fig_t;

static demo_fig_t demo_eval(job_local_t *l, const char *speech, const char *data) {
  lt_err_t err = {0};
  const char *ev[] = {"model", KJV,       "speech",        speech,         "data",
                      data,    "adapter", DEMO "/adapter", "instructions", DEMO "/instructions-heldout.txt"};
  cr_assert_eq(RUN(l, "speech-eval", ev, &err), JOB_SUCCEEDED, "%s", err.msg);
  const msgpack_object *res = job_local_result(l);
  demo_fig_t f = {tjobs_num(mp_get(res, "wer")), tjobs_num(mp_get(res, "transcript_nll")),
                  tjobs_num(mp_get(res, "listening_gain")), tjobs_num(mp_get(res, "follow_share")),
                  tjobs_num(mp_get(res, "transcribe_share"))};
  double neither = tjobs_num(mp_get(res, "neither_share"));
  cr_assert(fabs(f.follow + f.transcribe + neither - 1) < 1e-9);
  return f;
}

static double fig(json_t *o, const char *key) { return json_number_value(json_object_get(o, key)); }

Test(speech_jobs, embedded_demo_hears_held_out_verses) {
  /* The first DEMO_ROWS held-out verses of the embedded speech model (never in its training data, nor in its LLM's),
   * spoken again by espeak-ng as the demo spoke them. The model makes their transcripts likelier than a speech
   * model of the same shape with fresh weights does (beside the same LoRA pairs), its own speech helps more than
   * theirs does (a fresh encoder still passes on the utterance's length, so its listening gain is not zero), and
   * it measures as models/lathe-kjv-speech/figures.json recorded for these rows (the same audio, the same greedy
   * answers; the margins allow other CPUs' float rounding to flip a few tokens). The demo model hears little:
   * docs/speech.md gives the figures and why. */
  json_error_t je;
  json_t *figs = json_load_file(DEMO "/figures.json", 0, &je);
  cr_assert(figs, "%s", je.text);
  json_t *rec = json_object_get(json_object_get(figs, "subset"), "self-powered");
  cr_assert(rec, "figures.json has no subset figures");
  cr_assert_eq(json_integer_value(json_object_get(json_object_get(figs, "subset"), "rows")), DEMO_ROWS);
  lines_t *r = NULL;
  lt_err_t err = {0};
  cr_assert(r = lines_open(DEMO "/heldout.jsonl", 0, &err), "%s", err.msg);
  const char *data = strdup(tdata_file("heldout.jsonl", "", 0));
  FILE *f = fopen(data, "w");
  json_t *o;
  for (int i = 0; i < DEMO_ROWS; i++) {
    cr_assert_eq(lines_next_json(r, &o, &err), 1, "%s", err.msg);
    char wav[1024];
    snprintf(wav, sizeof wav, "%s/%02d.wav", tdata_dir(), i);
    speak(json_string_value(json_object_get(o, "text")), json_string_value(json_object_get(o, "voice")),
          (int)json_integer_value(json_object_get(o, "wpm")), (int)json_integer_value(json_object_get(o, "pitch")),
          wav);
    json_t *row = json_pack("{s:s, s:O}", "audio", wav, "text", json_object_get(o, "text"));
    char *line = json_dumps(row, JSON_COMPACT);
    fprintf(f, "%s\n", line);
    free(line), json_decref(row), json_decref(o);
  }
  fclose(f);
  lines_destroy(&r);
  job_local_t *l = job_local_new(tgpu(), tdata_dir(), NULL);
  demo_fig_t d = demo_eval(l, DEMO, data);
  /* The control: fresh weights of the same shape. */
  speech_t *fresh = speech_load(tgpu(), DEMO, NULL, 0, &err);
  cr_assert(fresh, "%s", err.msg);
  speech_config_t c = *speech_config(fresh);
  speech_destroy(&fresh);
  fresh = speech_new(tgpu(), &c, 7, &err);
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/fresh", tdata_dir());
  cr_assert_eq(speech_save(fresh, dir, &err), LT_OK, "%s", err.msg);
  speech_destroy(&fresh);
  demo_fig_t z = demo_eval(l, dir, data);
  cr_log_info("embedded demo, %d held-out verses: WER %.3f, transcript NLL %.3f, listening gain %.4f (fresh weights: "
              "%.3f, %.3f, %.4f; recorded: %.3f, %.3f, %.4f); follow %.3f, transcribe %.3f",
              DEMO_ROWS, d.wer, d.nll, d.gain, z.wer, z.nll, z.gain, fig(rec, "wer"), fig(rec, "transcript_nll"),
              fig(rec, "listening_gain"), d.follow, d.transcribe);
  cr_assert_lt(d.nll, z.nll - 0.05, "transcript NLL %.3f is not below fresh weights' %.3f", d.nll, z.nll);
  /* It hears: its own speech makes a transcript likelier than another verse's speech does, more so than with fresh
   * weights. */
  cr_assert_gt(d.gain, z.gain + 0.008, "listening gain %.4f, fresh weights' %.4f", d.gain, z.gain);
  cr_assert(fabs(d.gain - fig(rec, "listening_gain")) < 0.01, "listening gain %.4f, recorded %.4f", d.gain,
            fig(rec, "listening_gain"));
  cr_assert(fabs(d.nll - fig(rec, "transcript_nll")) < 0.05, "transcript NLL %.4f, recorded %.4f", d.nll,
            fig(rec, "transcript_nll"));
  cr_assert(fabs(d.wer - fig(rec, "wer")) < 0.1, "WER %.3f, recorded %.3f", d.wer, fig(rec, "wer"));
  cr_assert(fabs(d.follow - fig(rec, "follow_share")) < 0.15, "follow share %.3f, recorded %.3f", d.follow,
            fig(rec, "follow_share"));
  json_decref(figs);
  free((void *)data);
  job_local_destroy(&l);
  tdata_cleanup();
}
