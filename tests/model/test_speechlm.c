/* The speech-text model (methods/speechlm.h) on the embedded LLaMA: prompts with speech rows, greedy answers
 * through input embeddings, training steps through a frozen LLM (inputs-only and LoRA), word error counts. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/audio/audio.h"
#include "engine/model/model_tok.h"
#include "methods/speechlm.h"
#include "support/tdata.h"
#include "support/tgpu.h"

#define KJV LATHE_SOURCE_DIR "/models/lathe-kjv-llama"

TestSuite(speechlm, .init = tgpu_setup, .fini = tgpu_teardown);

Test(speechlm, word_edits) {
  uint32_t n;
  cr_assert_eq(slm_word_edits("the cat sat", "The cat, sat.", &n), 0);
  cr_assert_eq(n, 3);
  cr_assert_eq(slm_word_edits("the cat sat on", "the cat sat", &n), 1); /* an insertion */
  cr_assert_eq(slm_word_edits("the dog sat", "the cat sat", &n), 1);    /* a substitution */
  cr_assert_eq(slm_word_edits("cat sat", "the cat sat", &n), 1);        /* a deletion */
  cr_assert_eq(slm_word_edits("", "and god said", &n), 3);
  cr_assert_eq(slm_word_edits("sat the cat", "the cat sat", &n), 2);
  cr_assert_eq(slm_word_edits("don't", "Don't!", &n), 0);
  cr_assert_eq(n, 1);
}

typedef struct fixture {
  model_t *llm;
  tok_t *tok;
  chat_tmpl_t *tmpl;
  speech_t *sp;
  slm_t *s;
} fixture_t;

static void open_all(fixture_t *f, uint32_t stack) {
  lt_err_t err = {0};
  model_load_opts_t o = {.force_f32 = true};
  f->llm = model_load(tgpu(), KJV, &o, &err);
  cr_assert(f->llm, "%s", err.msg);
  f->tok = model_tokenizer_open(KJV, &err);
  cr_assert(f->tok, "%s", err.msg);
  f->tmpl = chat_tmpl_plain(&err);
  speech_config_t c = {.n_mels = 80,
                       .d_model = 32,
                       .n_layers = 1,
                       .n_heads = 4,
                       .ffn = 64,
                       .max_positions = 256,
                       .eps = 1e-5f,
                       .stack = stack,
                       .hidden = 64,
                       .llm_hidden = 128};
  f->sp = speech_new(tgpu(), &c, 5, &err);
  cr_assert(f->sp, "%s", err.msg);
  f->s = slm_new(f->sp, f->llm, f->tok, f->tmpl, &err);
  cr_assert(f->s, "%s", err.msg);
}

static void close_all(fixture_t *f) {
  slm_destroy(&f->s);
  speech_destroy(&f->sp);
  chat_tmpl_destroy(&f->tmpl);
  tok_destroy(&f->tok);
  model_destroy(&f->llm);
}

Test(speechlm, speech_rows_of_token_embeddings_answer_as_the_text) {
  /* The speech's place filled with the token embeddings of a verse: the prompt is the text prompt token for
   * token, and the greedy answer is the LLM's answer to the text. */
  fixture_t f;
  open_all(&f, 4);
  lt_err_t err = {0};
  const char *instr = "Continue.", *input = "And God said, Let there be light: and there was light.";
  slm_prompt_t pt, ps;
  cr_assert_eq(slm_prompt_text(f.s, instr, input, &pt, &err), LT_OK, "%s", err.msg);
  int32_t *in_ids = NULL;
  size_t n_in = 0;
  cr_assert_eq(tok_encode(f.tok, input, strlen(input), 0, &in_ids, &n_in, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(slm_prompt_speech(f.s, instr, (uint32_t)n_in, NULL, &ps, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(ps.n, pt.n, "speech prompt %u tokens, text prompt %u", ps.n, pt.n);
  cr_assert_eq(ps.ids[0], tok_bos(f.tok), "the plain template's prompt starts with BOS");
  for (uint32_t i = 0; i < ps.n; i++)
    if (i < ps.speech_at || i >= ps.speech_at + ps.n_speech)
      cr_assert_eq(ps.ids[i], pt.ids[i], "token %u", i);
    else
      cr_assert_eq(pt.ids[i], in_ids[i - ps.speech_at], "token %u", i);
  const model_param_t *e = NULL;
  for (uint32_t i = 0; i < model_param_count(f.llm); i++)
    if (!strcmp(model_param_at(f.llm, i)->name, "model.embed_tokens.weight")) e = model_param_at(f.llm, i);
  float *table = tread_f32(e->buf, (uint64_t)e->rows * e->cols), *rows = talloc(n_in * 128);
  for (size_t k = 0; k < n_in; k++) memcpy(rows + k * 128, table + (uint64_t)in_ids[k] * 128, 128 * 4);
  slm_prompt_t both[2] = {pt, ps};
  const float *r[2] = {NULL, rows};
  char *ans[2];
  cr_assert_eq(slm_answer(f.s, both, r, 2, 24, ans, &err), LT_OK, "%s", err.msg);
  cr_log_info("answer: \"%s\"", ans[0]);
  cr_assert_str_eq(ans[1], ans[0]);
  cr_assert(strlen(ans[0]) > 0 && !strchr(ans[0], '\n'), "one non-empty line: \"%s\"", ans[0]);
  free(ans[0]), free(ans[1]), free(table), free(rows), free(in_ids);
  slm_prompt_free(&pt), slm_prompt_free(&ps);
  close_all(&f);
}

/* A 0.6 s test sound: a tone sweeping from f0 to f1 Hz. */
static const char *sweep(const char *name, double f0, double f1) {
  uint32_t n = 9600;
  float *x = talloc(n);
  double ph = 0;
  for (uint32_t i = 0; i < n; i++) {
    double f = f0 + (f1 - f0) * i / n;
    ph += 2 * M_PI * f / 16000;
    x[i] = (float)(0.4 * sin(ph));
  }
  static char path[512];
  snprintf(path, sizeof path, "%s", tdata_file(name, "", 0));
  lt_err_t err = {0};
  cr_assert_eq(audio_write_wav16(path, x, n, 16000, &err), LT_OK, "%s", err.msg);
  free(x);
  return path;
}

static void train_two(bool lora) {
  /* Two sounds with their own targets: steps through the frozen LLM lower the loss of both. */
  fixture_t f;
  open_all(&f, 4);
  lt_err_t err = {0};
  float *feats[2];
  uint32_t T[2];
  cr_assert_eq(slm_features(f.s, sweep("up.wav", 300, 3000), 0, &feats[0], &T[0], &err), LT_OK, "%s", err.msg);
  cr_assert_eq(slm_features(f.s, sweep("down.wav", 3000, 300), 0, &feats[1], &T[1], &err), LT_OK, "%s", err.msg);
  cr_assert_eq(T[0], 60);
  slm_example_t ex[2] = {{feats[0], T[0], "Transcribe the audio.", "In the beginning God created the heaven."},
                         {feats[1], T[1], "Transcribe the audio.", "Jesus wept."}};
  train_opts_t o = lora ? (train_opts_t){.what = TRAIN_LORA,
                                         .lora_rank = 4,
                                         .lora_alpha = 8,
                                         .lora_targets = TRAIN_LORA_Q | TRAIN_LORA_V,
                                         .seed = 1}
                        : (train_opts_t){.what = TRAIN_INPUTS};
  train_t *t = train_new(f.llm, &o, &err);
  cr_assert(t, "%s", err.msg);
  tuner_t *u = NULL;
  if (lora) {
    tune_opts_t to = {.lr = 1e-3, .steps = 100, .schedule = TUNE_CONSTANT};
    u = tuner_new(t, &to, &err);
    cr_assert(u, "%s", err.msg);
  }
  double before, after;
  cr_assert_eq(slm_eval_loss(f.s, t, ex, 2, &before, &err), LT_OK, "%s", err.msg);
  /* The forward pass's NLL of the same targets (model_forward with the rows, the path speech-eval takes) equals the
   * training state's loss, a mean over the same tokens, within f32 rounding of two implementations. */
  if (!lora) {
    slm_prompt_t p[2];
    float *r[2];
    uint32_t nr[2];
    double sum = 0;
    uint64_t cnt = 0;
    for (int i = 0; i < 2; i++) {
      cr_assert_eq(slm_speech_rows(f.s, ex[i].feats, ex[i].T, &r[i], &nr[i], &err), LT_OK, "%s", err.msg);
      cr_assert_eq(slm_prompt_speech(f.s, ex[i].instruction, nr[i], ex[i].target, &p[i], &err), LT_OK, "%s", err.msg);
    }
    cr_assert_eq(slm_target_nll(f.s, p, (const float *const *)r, 2, &sum, &cnt, &err), LT_OK, "%s", err.msg);
    cr_assert(fabs(sum / (double)cnt - before) < 1e-4, "forward NLL %.6f vs training loss %.6f", sum / cnt, before);
    for (int i = 0; i < 2; i++) free(r[i]), slm_prompt_free(&p[i]);
  }
  slm_step_info_t info;
  for (uint32_t step = 1; step <= 12; step++) {
    slm_step_opts_t so = {.lr = 2e-3f, .clip = 1.0f, .step = step};
    cr_assert_eq(slm_train_step(f.s, t, u, ex, 2, &so, &info, &err), LT_OK, "%s", err.msg);
    cr_assert(isfinite(info.loss) && info.grad_norm > 0, "step %u: loss %g, gradient norm %g", step, info.loss,
              info.grad_norm);
  }
  cr_assert_eq(slm_eval_loss(f.s, t, ex, 2, &after, &err), LT_OK, "%s", err.msg);
  cr_log_info("%s: loss %.4f -> %.4f, %u target tokens", lora ? "LoRA" : "inputs only", before, after, info.tokens);
  cr_assert_lt(after, before * 0.8, "loss %g -> %g", before, after);
  tuner_destroy(&u);
  train_destroy(&t);
  free(feats[0]), free(feats[1]);
  close_all(&f);
  tdata_cleanup();
}

Test(speechlm, steps_through_a_frozen_llm_lower_the_loss) { train_two(false); }
Test(speechlm, steps_with_lora_lower_the_loss) { train_two(true); }

Test(speechlm, refusals) {
  fixture_t f;
  open_all(&f, 1);
  lt_err_t err = {0};
  float *feats;
  uint32_t T;
  cr_assert_eq(slm_features(f.s, LATHE_SOURCE_DIR "/README.md", 0, &feats, &T, &err), LT_E_CORRUPT);
  cr_assert(strstr(err.msg, "README.md"), "%s", err.msg);
  /* 2.5 s of sound with stack 1: 125 rows of speech do not fit the 128-token window with the prompt. */
  uint32_t n = 40000;
  float *x = talloc(n);
  for (uint32_t i = 0; i < n; i++) x[i] = (float)(0.3 * sin(i * 0.05));
  const char *p = tdata_file("long.wav", "", 0);
  cr_assert_eq(audio_write_wav16(p, x, n, 16000, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(slm_features(f.s, p, 0, &feats, &T, &err), LT_OK, "%s", err.msg);
  train_opts_t o = {.what = TRAIN_INPUTS};
  train_t *t = train_new(f.llm, &o, &err);
  slm_example_t ex = {feats, T, "Transcribe the audio.", "Jesus wept."};
  double loss;
  cr_assert_eq(slm_eval_loss(f.s, t, &ex, 1, &loss, &err), LT_E_LIMIT);
  cr_assert(strstr(err.msg, "exceed the LLM's context window (128)"), "%s", err.msg);
  /* A connector for another LLM. */
  speech_config_t c = *speech_config(f.sp);
  c.llm_hidden = 64;
  speech_t *other = speech_new(tgpu(), &c, 1, &err);
  cr_assert_null(slm_new(other, f.llm, f.tok, f.tmpl, &err));
  cr_assert(strstr(err.msg, "connector writes 64 dimensions; the LLM's hidden size is 128"), "%s", err.msg);
  speech_destroy(&other);
  train_destroy(&t);
  free(x), free(feats);
  close_all(&f);
  tdata_cleanup();
}
