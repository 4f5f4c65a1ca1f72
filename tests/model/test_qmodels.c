/* GGUF files quantised by ggml (tests/fixtures/qblock, made by tools/qblock_fixtures.sh), run with their weights
 * read in place: stories260K in a mixture of the 32-element formats with F16 and F32 tensors, and a width-256 LLaMA
 * in a Q4_K_M-style mixture of the K-quants. Each must compute what the same file dequantised to f32 (by the CPU
 * reference, itself checked against ggml's dequantiser in tests/engine/test_qblock.c) computes, in prefill and
 * decode, and generate the same greedy tokens. */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/generate.h"
#include "engine/model/model.h"
#include "engine/model/train.h"
#include "support/tgpu.h"

#define QDIR LATHE_SOURCE_DIR "/tests/fixtures/qblock"

TestSuite(qmodels, .init = tgpu_setup, .fini = tgpu_teardown);

static model_t *load(const char *path, bool f32) {
  lt_err_t err = {0};
  model_load_opts_t o = {.force_f32 = f32};
  model_t *m = model_load(tgpu(), path, &o, &err);
  cr_assert(m != NULL, "model_load(%s): %s", path, err.msg);
  return m;
}

/* Logits of every position of ids from one prefill (or, with decode, one token at a time). Caller frees. */
static float *logits(model_t *m, const int32_t *ids, uint32_t n, bool decode) {
  lt_err_t err = {0};
  uint32_t V = model_config(m)->vocab_size;
  model_seq_t *s = model_seq_new(m, 64, &err);
  cr_assert(s != NULL, "%s", err.msg);
  float *out = talloc((uint64_t)n * V);
  for (uint32_t t = 0; t < n; t += decode ? 1 : n) {
    model_item_t it = {.seq = s,
                       .tokens = ids + t,
                       .n_tokens = decode ? 1 : n,
                       .out = decode ? MODEL_OUT_LAST : MODEL_OUT_ALL,
                       .result = out + (uint64_t)t * V};
    cr_assert_eq(model_forward(m, &it, 1, NULL, &err), LT_OK, "%s", err.msg);
  }
  model_seq_destroy(&s);
  return out;
}

static const int32_t ids[] = {1, 403, 407, 261, 378, 275, 302, 261, 361, 401, 408, 384, 276, 293, 270, 302};
#define N_IDS (sizeof ids / sizeof ids[0])

/* The in-place model against the dequantised one: both multiply the same f32 weight values (the shader decodes
 * each to within one f32 rounding of the reference), in differently ordered f32 sums through every layer, as the
 * decode-vs-prefill test in test_forward.c compares them: 2e-4 absolute plus 1e-4 relative on logits of magnitude
 * ~10 (a misread block shows as errors of order 0.1 and more). Greedy tokens must agree too. Returns the weight
 * bytes on the device in place and dequantised. */
static void same_as_dequantised(const char *path, uint64_t *in_place, uint64_t *f32) {
  model_t *q = load(path, false), *d = load(path, true);
  uint32_t V = model_config(q)->vocab_size;
  for (int decode = 0; decode < 2; decode++) {
    float *a = logits(q, ids, N_IDS, decode), *b = logits(d, ids, N_IDS, decode);
    tassert_close(a, b, (uint64_t)N_IDS * V, 2e-4, 1e-4, decode ? "decode, in place vs dequantised" : "prefill");
    free(a), free(b);
  }
  lt_err_t err = {0};
  const int32_t *prompts[1] = {ids};
  uint32_t lens[1] = {5};
  gen_opts_t o = {.max_tokens = 24};
  gen_result_t rq[1], rd[1];
  cr_assert_eq(model_generate(q, prompts, lens, 1, &o, NULL, NULL, NULL, rq, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(model_generate(d, prompts, lens, 1, &o, NULL, NULL, NULL, rd, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(rq[0].n_tokens, rd[0].n_tokens);
  cr_assert_arr_eq(rq[0].tokens, rd[0].tokens, rq[0].n_tokens * sizeof(int32_t), "%s: greedy tokens differ", path);
  free(rq[0].tokens), free(rd[0].tokens);
  *in_place = model_mem(q)->weight_device_bytes;
  *f32 = model_mem(d)->weight_device_bytes;
  model_destroy(&q), model_destroy(&d);
}

/* Runs same_as_dequantised() on path and asserts the weights in place take less than 1 / ratio of the f32 bytes. */
static void in_place_smaller(const char *path, uint64_t ratio) {
  uint64_t in_place, f32;
  same_as_dequantised(path, &in_place, &f32);
  cr_log_info("%s: %llu bytes on the device in place, %llu dequantised", path, (unsigned long long)in_place,
              (unsigned long long)f32);
  cr_assert_lt(in_place * ratio, f32, "in place takes %llu bytes, f32 %llu", (unsigned long long)in_place,
               (unsigned long long)f32);
}

/* About a quarter of f32 would be all-Q4; the F16 down projections and Q8_0 embedding and head keep it larger. */
Test(qmodels, mixed_32_element_formats_run_in_place) { in_place_smaller(QDIR "/stories260K-mixed.gguf", 2); }

/* 2.6 to 6.6 bits per weight against 32. */
Test(qmodels, k_quant_mixture_runs_in_place) { in_place_smaller(QDIR "/kquant-tiny.gguf", 4); }

/* Lathe's logits, the blocks read in place, against an independent implementation: ggml dequantised the file's
 * weights and the PyTorch reference ran them in float64 (tools/qblock_reference.py; <name>.logits.f32 beside the
 * file). The float32 reference lands 2e-6 (K-quant) and 1.1e-5 (stories, logits up to 19) from float64; Lathe's f32
 * sums in another order land about as far, so 2e-4 + 1e-5 relative has a margin of ten, while a misread block
 * moves logits by 0.1 and more (see the mutation in same_as_dequantised's comment). */
static void matches_independent_reference(const char *name) {
  char path[PATH_MAX], ref[PATH_MAX];
  snprintf(path, sizeof path, QDIR "/%s.gguf", name);
  snprintf(ref, sizeof ref, QDIR "/%s.logits.f32", name);
  model_t *m = load(path, false);
  uint32_t V = model_config(m)->vocab_size;
  float *got = logits(m, ids, N_IDS, false), *want = talloc((uint64_t)N_IDS * V);
  FILE *f = fopen(ref, "rb");
  cr_assert(f, "%s is missing", ref);
  cr_assert_eq(fread(want, 4, (size_t)N_IDS * V, f), (size_t)N_IDS * V, "%s is short", ref);
  fclose(f);
  tassert_close(got, want, (uint64_t)N_IDS * V, 2e-4, 1e-5, name);
  free(got), free(want);
  model_destroy(&m);
}

Test(qmodels, k_quant_mixture_matches_ggml_and_pytorch) { matches_independent_reference("kquant-tiny"); }

Test(qmodels, legacy_mixture_matches_ggml_and_pytorch) { matches_independent_reference("stories260K-mixed"); }

Test(qmodels, quantised_stories_stay_close_to_the_original) {
  /* ggml's quantisation (4 to 8 bits) perturbs stories260K's logits but keeps its predictions: the next-token
   * argmax over the story agrees with the f32 original's at most positions. A figure, not a property of Lathe:
   * it shows the file is read as the quantiser meant (a misread one agrees at chance, about 1 in 512). */
  model_t *q = load(QDIR "/stories260K-mixed.gguf", false);
  model_t *o = load(LATHE_SOURCE_DIR "/tests/fixtures/stories260K/stories260K.gguf", false);
  uint32_t V = model_config(q)->vocab_size, agree = 0;
  float *a = logits(q, ids, N_IDS, false), *b = logits(o, ids, N_IDS, false);
  double worst = 0;
  for (uint32_t t = 0; t < N_IDS; t++) {
    uint32_t ia = 0, ib = 0;
    for (uint32_t v = 1; v < V; v++) {
      if (a[t * V + v] > a[t * V + ia]) ia = v;
      if (b[t * V + v] > b[t * V + ib]) ib = v;
      worst = fmax(worst, fabs(a[t * V + v] - b[t * V + v]));
    }
    agree += ia == ib;
  }
  cr_log_info("stories260K mixed vs f32: argmax agrees at %u of %u positions, largest logit change %.3f", agree,
              (unsigned)N_IDS, worst);
  cr_assert_geq(agree, N_IDS / 2, "argmax agrees at only %u of %u positions", agree, (unsigned)N_IDS);
  free(a), free(b);
  model_destroy(&q), model_destroy(&o);
}

Test(qmodels, lora_on_a_k_quant_base_equals_lora_on_its_dequantised_copy) {
  /* LoRA on every projection of the K-quant model read in place (the backward reads the blocks in place too)
   * against the same LoRA (same seed) on the dequantised copy: one batch's loss and every LoRA gradient agree to
   * f32 reordering (1e-5 relative on the loss; gradients within 1e-4 of the largest |gradient| plus 1e-3
   * relative: sums over 32 tokens and two blocks of ~256-long dots). */
  model_t *q = load(QDIR "/kquant-tiny.gguf", false), *d = load(QDIR "/kquant-tiny.gguf", true);
  train_opts_t o = {.what = TRAIN_LORA, .lora_rank = 4, .lora_alpha = 8, .lora_targets = 0x7f, .seed = 3};
  lt_err_t err = {0};
  train_t *tq = train_new(q, &o, &err), *td = train_new(d, &o, &err);
  cr_assert(tq && td, "%s", err.msg);
  int32_t batch[2 * N_IDS];
  uint8_t mask[2 * (N_IDS - 1)];
  for (uint32_t i = 0; i < N_IDS; i++) batch[i] = ids[i], batch[N_IDS + i] = ids[N_IDS - 1 - i];
  memset(mask, 1, sizeof mask);
  double lq, ld;
  cr_assert_eq(train_zero_grad(tq, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_zero_grad(td, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_grad(tq, batch, mask, 2, N_IDS, 1.0f, &lq, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_grad(td, batch, mask, 2, N_IDS, 1.0f, &ld, &err), LT_OK, "%s", err.msg);
  cr_assert(fabs(lq - ld) <= 1e-5 * fabs(ld), "loss %.9g in place, %.9g dequantised", lq, ld);
  cr_assert_eq(train_tensor_count(tq), train_tensor_count(td));
  for (uint32_t i = 0; i < train_tensor_count(tq); i++) {
    const train_tensor_t *a = train_tensor_at(tq, i), *b = train_tensor_at(td, i);
    uint64_t n = (uint64_t)a->rows * a->cols;
    float *ga = tread_f32(a->grad, n), *gb = tread_f32(b->grad, n);
    double gmax = 0;
    for (uint64_t k = 0; k < n; k++) gmax = fmax(gmax, fabs(gb[k]));
    tassert_close(ga, gb, n, 1e-4 * gmax + 1e-9, 1e-3, a->name);
    free(ga), free(gb);
  }
  train_destroy(&tq), train_destroy(&td);
  model_destroy(&q), model_destroy(&d);
}
