/* The speech encoder and connector (engine/model/speech.h) against PyTorch's float64 autograd
 * (tools/speech_ref.py wrote tests/fixtures/speech-tiny): the encoder's and the connector's outputs and the
 * gradient of every trained tensor for the loss sum(out * r); then saving and loading, Whisper's layout, frozen
 * groups, training steps that lower a loss, and refusals.
 *
 * Tolerances: the engine runs f32 arithmetic on the f32-rounded weights and inputs the reference ran in f64. Each
 * value passes through about 25 ops (two convolutions, two blocks, the connector), each summing up to 240 terms of
 * f32 with 2^-24 relative rounding: a few 1e-7 of the tensor's scale per op, a few 1e-6 at worst compounded. The
 * checks allow 1e-5 of each tensor's largest magnitude; measured: outputs 3e-7, gradients 9e-7 of scale. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/model/safetensors.h"
#include "engine/model/speech.h"
#include "support/tdata.h"
#include "support/tgpu.h"

#define FIXTURES LATHE_SOURCE_DIR "/tests/fixtures"
#define TINY FIXTURES "/speech-tiny"

TestSuite(speech, .init = tgpu_setup, .fini = tgpu_teardown);

/* Tensor name of the reference as floats (caller frees); its element count in *n. */
static float *ref_tensor(st_file_t *f, const char *name, uint64_t *n) {
  const ft_tensor_t *t = st_find(f, name);
  cr_assert_not_null(t, "%s missing from ref.safetensors", name);
  *n = t->n_elems;
  float *v = talloc(*n);
  lt_err_t err = {0};
  cr_assert_eq(ft_tensor_to_f32(t, v, &err), LT_OK, "%s", err.msg);
  return v;
}

/* Asserts got within 1e-5 of want's largest magnitude; returns the worst error over that scale. */
static double check_scaled(const float *got, const float *want, uint64_t n, const char *what) {
  double scale = 0, worst = 0;
  for (uint64_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
  cr_assert_gt(scale, 0, "%s: the reference is all zeros", what);
  tassert_close(got, want, n, 1e-5 * scale, 0, what);
  for (uint64_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)got[i] - want[i]) / scale);
  return worst;
}

static float *download(gpu_buf_t *b, uint64_t n) { return tread_f32(b, n); }

/* The model's output (or, with enc, the encoder's) downloaded; its size in *n. */
static float *output_of(const speech_t *s, bool enc, uint64_t *n) {
  uint32_t rows, cols;
  gpu_buf_t *b = enc ? speech_encoder_output(s, &rows, &cols) : speech_output(s, &rows, &cols);
  *n = (uint64_t)rows * cols;
  return tread_f32(b, *n);
}

Test(speech, forward_and_gradients_match_pytorch) {
  lt_err_t err = {0};
  speech_t *s = speech_load(tgpu(), TINY, NULL, 0, &err);
  cr_assert_not_null(s, "%s", err.msg);
  const speech_config_t *c = speech_config(s);
  cr_assert_eq(c->d_model, 32);
  cr_assert_eq(c->llm_hidden, 24);
  st_file_t *f = NULL;
  cr_assert_eq(st_open(&f, TINY "/ref.safetensors", &err), LT_OK, "%s", err.msg);
  uint64_t nx, nr, ne, no;
  float *x = ref_tensor(f, "x", &nx), *r = ref_tensor(f, "r", &nr), *enc = ref_tensor(f, "enc", &ne),
        *out = ref_tensor(f, "out", &no);
  uint32_t T = (uint32_t)(nx / c->n_mels);
  cr_assert_eq(speech_forward(s, x, T, true, &err), LT_OK, "%s", err.msg);
  uint32_t rows, cols;
  gpu_buf_t *be = speech_encoder_output(s, &rows, &cols);
  cr_assert_eq((uint64_t)rows * cols, ne);
  float *ge = download(be, ne);
  double w_enc = check_scaled(ge, enc, ne, "encoder output");
  gpu_buf_t *bo = speech_output(s, &rows, &cols);
  cr_assert_eq((uint64_t)rows * cols, no);
  cr_assert_eq(rows, speech_out_rows(s, T));
  float *go = download(bo, no);
  double w_out = check_scaled(go, out, no, "connector output");
  cr_log_info("speech forward: encoder %.2g, connector %.2g of scale", w_enc, w_out);
  gpu_buf_t *br = tbuf_f32(r, nr);
  cr_assert_eq(speech_backward(s, br, &err), LT_OK, "%s", err.msg);
  uint32_t checked = 0;
  double worst = 0;
  for (uint32_t i = 0; i < speech_param_count(s); i++) {
    speech_param_t *p = speech_param_at(s, i);
    char name[128];
    snprintf(name, sizeof name, "grad.%s", p->name);
    if (!p->trainable) {
      cr_assert_null(st_find(f, name), "%s has a reference gradient but is not trained", p->name);
      continue;
    }
    uint64_t n;
    float *want = ref_tensor(f, name, &n);
    cr_assert_eq(n, p->n, "%s", p->name);
    float *got = download(p->grad, n);
    worst = fmax(worst, check_scaled(got, want, n, name));
    free(got), free(want);
    checked++;
  }
  cr_assert_eq(checked, speech_param_count(s) - 1, "every tensor but the positions is trained");
  cr_log_info("speech gradients: %u tensors, worst %.2g of scale", checked, worst);
  /* A second backward of the same forward adds the same again. */
  speech_param_t *p = speech_param_find(s, "encoder.conv1.weight");
  float *once = download(p->grad, p->n);
  cr_assert_eq(speech_backward(s, br, &err), LT_OK, "%s", err.msg);
  float *twice = download(p->grad, p->n);
  for (uint64_t i = 0; i < p->n; i++) once[i] *= 2;
  tassert_close(twice, once, p->n, 1e-6, 1e-5, "gradients accumulate");
  free(once), free(twice);
  gpu_buf_destroy(&br);
  free(x), free(r), free(enc), free(out), free(ge), free(go);
  st_destroy(&f);
  speech_destroy(&s);
}

/* Loads the fixture and runs its input forward with training; returns the model, *x and *T. */
static speech_t *tiny_forward(const char *dir, float **x, uint32_t *T) {
  lt_err_t err = {0};
  speech_t *s = speech_load(tgpu(), dir, NULL, 0, &err);
  cr_assert_not_null(s, "%s", err.msg);
  st_file_t *f = NULL;
  cr_assert_eq(st_open(&f, TINY "/ref.safetensors", &err), LT_OK, "%s", err.msg);
  uint64_t nx;
  *x = ref_tensor(f, "x", &nx);
  *T = (uint32_t)(nx / speech_config(s)->n_mels);
  st_destroy(&f);
  return s;
}

Test(speech, save_and_load_round_trip) {
  float *x;
  uint32_t T;
  uint64_t n;
  speech_t *a = tiny_forward(TINY, &x, &T);
  lt_err_t err = {0};
  cr_assert_eq(speech_forward(a, x, T, false, &err), LT_OK, "%s", err.msg);
  float *ya = output_of(a, false, &n);
  char dir[512];
  snprintf(dir, sizeof dir, "%s/saved", tdata_dir());
  cr_assert_eq(speech_save(a, dir, &err), LT_OK, "%s", err.msg);
  speech_t *b = speech_load(tgpu(), dir, NULL, 0, &err);
  cr_assert_not_null(b, "%s", err.msg);
  cr_assert_eq(memcmp(speech_config(a), speech_config(b), sizeof(speech_config_t)), 0, "the config round-trips");
  cr_assert_eq(speech_forward(b, x, T, false, &err), LT_OK, "%s", err.msg);
  float *yb = output_of(b, false, &n);
  cr_assert_eq(memcmp(ya, yb, n * 4), 0, "the same bytes out after saving and loading");
  free(ya), free(yb), free(x);
  speech_destroy(&a), speech_destroy(&b);
  tdata_cleanup();
}

/* Writes the fixture's encoder as a Hugging Face Whisper checkpoint into dir: model_type "whisper", tensors under
 * model.encoder., a decoder tensor beside them, no connector. */
static void write_whisper(const char *dir, const char *activation, const char *drop) {
  lt_err_t err = {0};
  st_file_t *f = NULL;
  cr_assert_eq(st_open(&f, TINY "/model.safetensors", &err), LT_OK, "%s", err.msg);
  uint32_t n = st_count(f), k = 0;
  ft_tensor_t *t = calloc(n + 1, sizeof *t);
  char(*names)[128] = calloc(n + 1, sizeof *names);
  for (uint32_t i = 0; i < n; i++) {
    const ft_tensor_t *s = st_tensor(f, i);
    if (!strncmp(s->name, "connector.", 10) || (drop && !strcmp(s->name, drop))) continue;
    t[k] = *s;
    snprintf(names[k], sizeof names[k], "model.%s", s->name);
    t[k].name = names[k];
    k++;
  }
  static const float dec[4] = {1, 2, 3, 4};
  t[k] = (ft_tensor_t){
      .name = "model.decoder.layer_norm.weight", .dtype = FT_F32, .n_dims = 1, .n_elems = 4, .data = dec, .nbytes = 16};
  t[k].shape[0] = 4;
  k++;
  char p[600];
  mkdir(dir, 0755);
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  cr_assert_eq(st_write(p, t, k, NULL, 0, &err), LT_OK, "%s", err.msg);
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *o = fopen(p, "w");
  fprintf(o,
          "{\"architectures\": [\"WhisperForConditionalGeneration\"], \"model_type\": \"whisper\", "
          "\"num_mel_bins\": 80, \"d_model\": 32, \"encoder_layers\": 2, \"encoder_attention_heads\": 4, "
          "\"encoder_ffn_dim\": 64, \"max_source_positions\": 32, \"decoder_layers\": 2, "
          "\"activation_function\": \"%s\"}",
          activation);
  fclose(o);
  free(t), free(names);
  st_destroy(&f);
}

Test(speech, whisper_checkpoint_loads_its_encoder) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/whisper", tdata_dir());
  write_whisper(dir, "gelu", NULL);
  lt_err_t err = {0};
  speech_config_t conn = {.stack = 2, .hidden = 48, .llm_hidden = 24};
  snprintf(conn.llm, sizeof conn.llm, "some-llm");
  speech_t *w = speech_load(tgpu(), dir, &conn, 7, &err);
  cr_assert_not_null(w, "%s", err.msg);
  cr_assert_str_eq(speech_config(w)->source, "whisper");
  cr_assert_eq(speech_config(w)->llm_hidden, 24);
  float *x;
  uint32_t T;
  uint64_t n;
  speech_t *ref = tiny_forward(TINY, &x, &T);
  cr_assert_eq(speech_forward(w, x, T, false, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(speech_forward(ref, x, T, false, &err), LT_OK, "%s", err.msg);
  float *ew = output_of(w, true, &n), *er = output_of(ref, true, &n);
  cr_assert_eq(memcmp(ew, er, n * 4), 0, "Whisper's layout gives the same encoder");
  free(ew), free(er), free(x);
  speech_destroy(&w), speech_destroy(&ref);
  /* A missing tensor and a wrong activation are named. */
  snprintf(dir, sizeof dir, "%s/whisper-missing", tdata_dir());
  write_whisper(dir, "gelu", "encoder.layers.1.fc2.bias");
  cr_assert_null(speech_load(tgpu(), dir, &conn, 7, &err));
  cr_assert(strstr(err.msg, "encoder.layers.1.fc2.bias is missing"), "%s", err.msg);
  snprintf(dir, sizeof dir, "%s/whisper-relu", tdata_dir());
  write_whisper(dir, "relu", NULL);
  cr_assert_null(speech_load(tgpu(), dir, &conn, 7, &err));
  cr_assert(strstr(err.msg, "activation_function relu (only Whisper's \"gelu\")"), "%s", err.msg);
  tdata_cleanup();
}

Test(speech, frozen_encoder_trains_the_connector_alone) {
  float *x;
  uint32_t T;
  speech_t *s = tiny_forward(TINY, &x, &T);
  speech_set_trainable(s, false, true);
  lt_err_t err = {0};
  cr_assert_eq(speech_forward(s, x, T, true, &err), LT_OK, "%s", err.msg);
  st_file_t *f = NULL;
  cr_assert_eq(st_open(&f, TINY "/ref.safetensors", &err), LT_OK, "%s", err.msg);
  uint64_t nr;
  float *r = ref_tensor(f, "r", &nr);
  gpu_buf_t *br = tbuf_f32(r, nr);
  cr_assert_eq(speech_backward(s, br, &err), LT_OK, "%s", err.msg);
  for (uint32_t i = 0; i < speech_param_count(s); i++) {
    speech_param_t *p = speech_param_at(s, i);
    if (p->encoder) {
      cr_assert_null(p->grad, "%s is frozen but got a gradient", p->name);
      continue;
    }
    char name[128];
    snprintf(name, sizeof name, "grad.%s", p->name);
    uint64_t n;
    float *want = ref_tensor(f, name, &n), *got = download(p->grad, n);
    check_scaled(got, want, n, name);
    free(want), free(got);
  }
  free(r), free(x);
  gpu_buf_destroy(&br);
  st_destroy(&f);
  speech_destroy(&s);
}

/* 0.5 * |out - target|^2 and its gradient out - target (host side). */
static double half_sq(const float *out, const float *target, float *grad, uint64_t n) {
  double l = 0;
  for (uint64_t i = 0; i < n; i++) {
    double d = (double)out[i] - target[i];
    l += 0.5 * d * d;
    grad[i] = (float)d;
  }
  return l;
}

Test(speech, adamw_steps_fit_a_target) {
  /* A fresh model fitted to another model's output for one input: the loss falls by 10x in 40 steps. */
  speech_config_t c = {.n_mels = 80,
                       .d_model = 32,
                       .n_layers = 2,
                       .n_heads = 4,
                       .ffn = 64,
                       .max_positions = 32,
                       .eps = 1e-5f,
                       .stack = 2,
                       .hidden = 48,
                       .llm_hidden = 24};
  lt_err_t err = {0};
  speech_t *s = speech_new(tgpu(), &c, 1, &err);
  cr_assert_not_null(s, "%s", err.msg);
  float *x;
  uint32_t T;
  uint64_t n;
  speech_t *teacher = tiny_forward(TINY, &x, &T);
  cr_assert_eq(speech_forward(teacher, x, T, false, &err), LT_OK, "%s", err.msg);
  float *target = output_of(teacher, false, &n);
  float *grad = talloc(n);
  gpu_buf_t *bg = tbuf_f32(NULL, n);
  double first = 0, last = 0;
  for (uint32_t step = 1; step <= 40; step++) {
    cr_assert_eq(speech_zero_grad(s, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(speech_forward(s, x, T, true, &err), LT_OK, "%s", err.msg);
    float *out = download(speech_output(s, NULL, NULL), n);
    double l = half_sq(out, target, grad, n);
    free(out);
    if (step == 1) first = l;
    last = l;
    cr_assert_eq(gpu_upload(bg, 0, grad, n * 4, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(speech_backward(s, bg, &err), LT_OK, "%s", err.msg);
    double ss;
    cr_assert_eq(speech_grad_sumsq(s, &ss, &err), LT_OK, "%s", err.msg);
    cr_assert(isfinite(ss) && ss > 0, "gradient norm^2 %g", ss);
    cr_assert_eq(speech_adamw(s, 3e-3f, 0.0f, 1.0f, step, &err), LT_OK, "%s", err.msg);
  }
  cr_log_info("speech fit: loss %.4g -> %.4g in 40 steps", first, last);
  cr_assert_lt(last, first / 10, "loss %g -> %g", first, last);
  free(grad), free(target), free(x);
  gpu_buf_destroy(&bg);
  speech_destroy(&s), speech_destroy(&teacher);
}

Test(speech, refusals_name_the_problem) {
  lt_err_t err = {0};
  speech_config_t c = {
      .n_mels = 80, .d_model = 30, .n_layers = 1, .n_heads = 4, .ffn = 64, .max_positions = 32, .eps = 1e-5f};
  cr_assert_null(speech_new(tgpu(), &c, 1, &err));
  cr_assert(strstr(err.msg, "d_model 30 is not a multiple of 4 heads"), "%s", err.msg);
  c.d_model = 32, c.n_layers = 1000;
  cr_assert_null(speech_new(tgpu(), &c, 1, &err));
  cr_assert(strstr(err.msg, "encoder_layers 1000"), "%s", err.msg);
  c.n_layers = 1;
  speech_t *s = speech_new(tgpu(), &c, 1, &err);
  cr_assert_not_null(s, "%s", err.msg);
  /* 32 positions hold 64 frames: 65 is one too many. */
  float *x = talloc(80 * 100);
  cr_assert_eq(speech_forward(s, x, 64, false, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(speech_forward(s, x, 65, false, &err), LT_E_LIMIT);
  cr_assert(strstr(err.msg, "65 frames make 33 encoder positions; the model has 32"), "%s", err.msg);
  x[7] = NAN;
  cr_assert_eq(speech_forward(s, x, 10, false, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "feature 7 is not finite"), "%s", err.msg);
  cr_assert_eq(speech_backward(s, NULL, &err), LT_E_INVALID, "a backward after an inference forward");
  free(x);
  speech_destroy(&s);
  /* Folders that are not speech models. */
  cr_assert_null(speech_load(tgpu(), FIXTURES "/llama-tiny", NULL, 0, &err));
  cr_assert(strstr(err.msg, "neither a Lathe speech model"), "%s", err.msg);
  cr_assert_null(speech_load(tgpu(), "/nonexistent", NULL, 0, &err));
  cr_assert(strstr(err.msg, "/nonexistent"), "%s", err.msg);
}
