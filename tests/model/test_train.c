/* First-order training over whole models (engine/model/train.h): gradients of the masked LM loss against PyTorch's
 * float64 autograd (tools/grad_ref.py writes grad_ref.json and grads.safetensors next to the fixtures), finite
 * differences through the GPU path, LoRA starting as the base model, and the adapter's backward stopping at its
 * block.
 *
 * Tolerance for the gradients: the engine runs in f32 and the reference in f64. The fixture losses are about 5 and
 * the gradients' largest entries about 1; every gradient entry is a sum over at most 26 rows of products of f32
 * activations that went through ~20 f32 ops each, so its error is a few hundred f32 roundings of O(1) values:
 * 1e-4 absolute plus 1e-3 relative holds that with a margin and is still far below any missing or doubled term
 * (a row's contribution is ~1/20 of the loss's scale). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model.h"
#include "engine/model/train.h"
#include "engine/ops/dtype.h"
#include "methods/tune.h"
#include "support/tgpu.h"
#include "support/ttrain.h"

#define FIXTURES LATHE_SOURCE_DIR "/tests/fixtures"

TestSuite(train, .init = tgpu_setup, .fini = tgpu_teardown);

/* The fixed batch of grad_ref.json: ids [n_seq * T], mask [n_seq * (T - 1)], and the reference loss. */
typedef struct gref {
  int32_t ids[64];
  uint8_t mask[64];
  uint32_t n_seq, T;
  double loss;
} gref_t;

static void gref_load(gref_t *g, const char *name) {
  char p[512];
  snprintf(p, sizeof p, FIXTURES "/%s/grad_ref.json", name);
  json_t *j = ttrain_batch_load(p, g->ids, g->mask, 64, &g->n_seq, &g->T);
  g->loss = json_real_value(json_object_get(j, "loss"));
  json_decref(j);
}

static model_t *load_f32(const char *name) { return ttrain_load(name, true); }

static float *read_buf(gpu_buf_t *b, uint64_t n) { return tread_f32(b, n); }

/* Every gradient of a full-training state against a reference file (grads.safetensors, or with the MoE
 * load-balancing term grads-balance.safetensors). */
static void check_full_grads(const char *name, float balance, const char *file) {
  gref_t g;
  gref_load(&g, name);
  model_t *m = load_f32(name);
  lt_err_t err = {0};
  train_opts_t o = {.what = TRAIN_FULL, .balance = balance};
  train_t *t = train_new(m, &o, &err);
  cr_assert(t, "%s", err.msg);
  double loss = 0;
  cr_assert_eq(train_grad(t, g.ids, g.mask, g.n_seq, g.T, 1.0f, &loss, &err), LT_OK, "%s", err.msg);
  /* The loss (the cross-entropy; the balancing term is a gradient only): f32 forward against f64, a mean of ~20
   * cross-entropies of size ~5. */
  cr_assert(fabs(loss - g.loss) < 1e-4, "%s: loss %.7f, reference %.7f", name, loss, g.loss);
  char p[512];
  snprintf(p, sizeof p, FIXTURES "/%s/%s", name, file);
  ttrain_check_grads(t, p);
  train_destroy(&t);
  model_destroy(&m);
}

Test(train, full_gradients_match_pytorch_llama) { check_full_grads("llama-tiny", 0, "grads.safetensors"); }

Test(train, full_gradients_match_pytorch_tied_llama3_scaling) {
  check_full_grads("llama3-scaled", 0, "grads.safetensors");
}

Test(train, full_gradients_match_pytorch_qwen2_biases) { check_full_grads("qwen2-tiny", 0, "grads.safetensors"); }

Test(train, full_gradients_match_pytorch_mistral_window) {
  check_full_grads("mistral-swa-tiny", 0, "grads.safetensors");
}

Test(train, full_gradients_match_pytorch_phi3_fused) {
  /* The reference names Phi-3's fused qkv_proj and gate_up_proj; Lathe trains their parts (q, k, v; gate, up). */
  check_full_grads("phi3-tiny", 0, "grads.safetensors");
}

Test(train, full_gradients_match_pytorch_gemma2) {
  /* Scaled embeddings, norms before and after each sub-layer (1 + w), GeGLU, soft-capped scores and logits, a
   * window in block 0: every gradient, norms and the tied embedding included. */
  check_full_grads("gemma2-tiny", 0, "grads.safetensors");
}

Test(train, full_gradients_match_pytorch_mixtral) {
  /* Router, experts (through the renormalised top-2 gate weights) and everything below them. */
  check_full_grads("mixtral-tiny", 0, "grads.safetensors");
}

Test(train, mixtral_load_balancing_gradients_match_pytorch) {
  /* The same with 0.02 x the mean over blocks of E * sum_e f_e P_e added (tools/lathe_ref.py load_balance_loss). */
  check_full_grads("mixtral-tiny", 0.02f, "grads-balance.safetensors");
}

Test(train, recompute_gives_the_same_gradients) {
  gref_t g;
  gref_load(&g, "llama-tiny");
  float *grads[2][64];
  uint32_t n_t = 0;
  for (int rc = 0; rc < 2; rc++) {
    model_t *m = load_f32("llama-tiny");
    lt_err_t err = {0};
    train_opts_t o = {.what = TRAIN_FULL, .recompute = rc};
    train_t *t = train_new(m, &o, &err);
    cr_assert(t, "%s", err.msg);
    double loss;
    cr_assert_eq(train_grad(t, g.ids, g.mask, g.n_seq, g.T, 1.0f, &loss, &err), LT_OK, "%s", err.msg);
    n_t = train_tensor_count(t);
    cr_assert(n_t <= 64);
    for (uint32_t i = 0; i < n_t; i++) {
      const train_tensor_t *x = train_tensor_at(t, i);
      grads[rc][i] = read_buf(x->grad, (uint64_t)x->rows * x->cols);
      if (rc) {
        /* The same kernels on the same inputs: bit-identical. */
        cr_assert_eq(memcmp(grads[0][i], grads[1][i], (uint64_t)x->rows * x->cols * 4), 0, "%s differs", x->name);
        free(grads[0][i]), free(grads[1][i]);
      }
    }
    train_destroy(&t);
    model_destroy(&m);
  }
}

/* Central differences (step h) of the GPU loss for a few coordinates of trainable tensor `which`, against its
 * gradient. */
static void finite_differences(train_t *t, const gref_t *g, uint32_t which, uint32_t n_coords, float h) {
  lt_err_t err = {0};
  const train_tensor_t *x = train_tensor_at(t, which);
  uint64_t n = (uint64_t)x->rows * x->cols;
  cr_assert_eq(train_zero_grad(t, &err), LT_OK);
  double loss;
  cr_assert_eq(train_grad(t, g->ids, g->mask, g->n_seq, g->T, 1.0f, &loss, &err), LT_OK, "%s", err.msg);
  float *grad = read_buf(x->grad, n), *val = read_buf(x->value, n);
  for (uint32_t k = 0; k < n_coords; k++) {
    uint64_t i = (k * 2654435761u) % n;
    float o = val[i], v;
    double up, dn;
    v = o + h;
    cr_assert_eq(gpu_upload(x->value, i * 4, &v, 4, &err), LT_OK);
    cr_assert_eq(train_loss(t, g->ids, g->mask, g->n_seq, g->T, &up, &err), LT_OK, "%s", err.msg);
    v = o - h;
    cr_assert_eq(gpu_upload(x->value, i * 4, &v, 4, &err), LT_OK);
    cr_assert_eq(train_loss(t, g->ids, g->mask, g->n_seq, g->T, &dn, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(gpu_upload(x->value, i * 4, &o, 4, &err), LT_OK);
    double fd = (up - dn) / (2 * h);
    /* f32 losses of ~5 carry ~1e-6 of rounding: 1e-6 / h in the quotient (5x margin), plus the h^2 terms (2%). */
    cr_assert(fabs(fd - grad[i]) < 5e-6 / h + 0.02 * fabs(grad[i]), "%s[%llu]: finite difference %g, gradient %g",
              x->name, (unsigned long long)i, fd, grad[i]);
  }
  free(grad), free(val);
}

Test(train, finite_differences_through_the_gpu_full) {
  gref_t g;
  gref_load(&g, "llama-tiny");
  model_t *m = load_f32("llama-tiny");
  lt_err_t err = {0};
  train_opts_t o = {.what = TRAIN_FULL};
  train_t *t = train_new(m, &o, &err);
  cr_assert(t, "%s", err.msg);
  for (uint32_t i = 0; i < train_tensor_count(t); i += 5) finite_differences(t, &g, i, 2, 1e-2f);
  train_destroy(&t);
  model_destroy(&m);
}

Test(train, lora_starts_as_the_base_and_its_gradients_are_right) {
  gref_t g;
  gref_load(&g, "llama-tiny");
  char p[512];
  snprintf(p, sizeof p, FIXTURES "/llama-tiny");
  lt_err_t err = {0};
  /* The base in f16: LoRA trains on a frozen base in its own dtype. */
  model_t *m = model_load(tgpu(), FIXTURES "/llama-tiny-f16", NULL, &err);
  cr_assert(m, "%s", err.msg);
  train_opts_t full = {.what = TRAIN_FULL};
  cr_assert_null(train_new(m, &full, &err), "full training of f16 weights must be refused");
  cr_assert(strstr(err.msg, "f32"), "%s", err.msg);
  train_opts_t o = {.what = TRAIN_LORA,
                    .lora_rank = 4,
                    .lora_alpha = 8,
                    .lora_targets = TRAIN_LORA_Q | TRAIN_LORA_V | TRAIN_LORA_DOWN,
                    .seed = 3};
  train_t *t = train_new(m, &o, &err);
  cr_assert(t, "%s", err.msg);
  cr_assert_eq(train_tensor_count(t), 2u * 3 * model_config(m)->n_layers);
  cr_assert_str_eq(train_tensor_at(t, 0)->name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  cr_assert_str_eq(train_tensor_at(t, 1)->name, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
  /* B = 0: the adapted model computes exactly the base model's loss (the LoRA term adds exact zeros). */
  train_opts_t none = {.what = TRAIN_LORA, .lora_rank = 1, .lora_alpha = 1, .lora_targets = TRAIN_LORA_K};
  train_t *t0 = train_new(m, &none, &err);
  cr_assert(t0, "%s", err.msg);
  double a, b;
  cr_assert_eq(train_loss(t, g.ids, g.mask, g.n_seq, g.T, &a, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_loss(t0, g.ids, g.mask, g.n_seq, g.T, &b, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(a, b, "a fresh LoRA changed the loss: %.9g vs %.9g", a, b);
  train_destroy(&t0);
  /* Make B non-zero so A gets a gradient too, then check both by finite differences. */
  const train_tensor_t *B = train_tensor_at(t, 1);
  uint64_t nb = (uint64_t)B->rows * B->cols, seed = 4;
  float *bv = talloc(nb);
  trand(bv, nb, -0.5, 0.5, &seed);
  cr_assert_eq(gpu_upload(B->value, 0, bv, nb * 4, &err), LT_OK);
  free(bv);
  finite_differences(t, &g, 0, 4, 1e-2f);
  finite_differences(t, &g, 1, 4, 1e-2f);
  finite_differences(t, &g, 5, 4, 1e-2f);
  train_destroy(&t);
  /* Bad options are refused with a reason. */
  train_opts_t bad[] = {{.what = TRAIN_LORA, .lora_rank = 0, .lora_targets = TRAIN_LORA_Q},
                        {.what = TRAIN_LORA, .lora_rank = 2, .lora_targets = 0},
                        {.what = TRAIN_ADAPTER, .adapter_layer = 2}};
  const char *why[] = {"rank", "targets", "out of range"};
  for (int i = 0; i < 3; i++) {
    cr_assert_null(train_new(m, &bad[i], &err));
    cr_assert(strstr(err.msg, why[i]), "%s", err.msg);
  }
  model_destroy(&m);
}

Test(train, adapter_backward_stops_at_its_block) {
  gref_t g;
  gref_load(&g, "llama-tiny");
  lt_err_t err = {0};
  model_t *m = model_load(tgpu(), FIXTURES "/llama-tiny", NULL, &err);
  cr_assert(m, "%s", err.msg);
  uint32_t dispatches[2];
  for (uint32_t M = 0; M < 2; M++) {
    train_opts_t o = {.what = TRAIN_ADAPTER, .adapter_layer = M, .seed = 1};
    train_t *t = train_new(m, &o, &err);
    cr_assert(t, "%s", err.msg);
    cr_assert_eq(train_tensor_count(t), 4u);
    double base, with;
    cr_assert_eq(train_loss(t, g.ids, g.mask, g.n_seq, g.T, &with, &err), LT_OK, "%s", err.msg);
    train_opts_t lo = {.what = TRAIN_LORA, .lora_rank = 1, .lora_alpha = 1, .lora_targets = TRAIN_LORA_K};
    train_t *t0 = train_new(m, &lo, &err);
    cr_assert_eq(train_loss(t0, g.ids, g.mask, g.n_seq, g.T, &base, &err), LT_OK, "%s", err.msg);
    train_destroy(&t0);
    cr_assert_eq(with, base, "a fresh adapter (up-projection 0) changed the loss");
    /* Give the up-projections values so the down-projections get gradients, then check all four. */
    for (uint32_t i = 1; i < 4; i += 2) {
      const train_tensor_t *U = train_tensor_at(t, i);
      uint64_t n = (uint64_t)U->rows * U->cols, seed = 9 + i;
      float *v = talloc(n);
      trand(v, n, -0.3, 0.3, &seed);
      cr_assert_eq(gpu_upload(U->value, 0, v, n * 4, &err), LT_OK);
      free(v);
    }
    /* A small step: the ReLU's kink is within 1e-2 of some rows' inputs, where a difference quotient breaks. */
    for (uint32_t i = 0; i < 4; i++) finite_differences(t, &g, i, 3, 2e-3f);
    cr_assert_eq(train_stats(t)->lowest_block_backward, M, "the backward ran below block %u", M);
    dispatches[M] = train_stats(t)->backward_dispatches;
    train_destroy(&t);
  }
  /* The adapter at block 1 runs no backward through block 0's attention or block 0 at all: fewer dispatches. */
  cr_assert_lt(dispatches[1], dispatches[0], "backward dispatches: block 1 %u, block 0 %u", dispatches[1],
               dispatches[0]);
  model_destroy(&m);
}

Test(train, merged_lora_computes_the_adapted_model) {
  /* The merged weights W + (alpha / r) B A give the loss of the base plus its unmerged LoRA: the two differ only
   * in f32 rounding of the sums (one product instead of two added), ~1e-6 relative on losses of ~5. */
  gref_t g;
  gref_load(&g, "llama-tiny");
  lt_err_t err = {0};
  model_t *m = model_load(tgpu(), FIXTURES "/llama-tiny", NULL, &err), *mm = load_f32("llama-tiny");
  cr_assert(m, "%s", err.msg);
  train_opts_t o = {.what = TRAIN_LORA, .lora_rank = 3, .lora_alpha = 5, .lora_targets = 0x7f, .seed = 2};
  train_t *t = train_new(m, &o, &err);
  cr_assert(t, "%s", err.msg);
  for (uint32_t i = 1; i < train_tensor_count(t); i += 2) {
    const train_tensor_t *B = train_tensor_at(t, i);
    uint64_t n = (uint64_t)B->rows * B->cols, seed = i;
    float *v = talloc(n);
    trand(v, n, -0.3, 0.3, &seed);
    cr_assert_eq(gpu_upload(B->value, 0, v, n * 4, &err), LT_OK);
    free(v);
  }
  double adapted, merged, base;
  cr_assert_eq(train_loss(t, g.ids, g.mask, g.n_seq, g.T, &adapted, &err), LT_OK, "%s", err.msg);
  train_opts_t full = {.what = TRAIN_FULL};
  train_t *tb = train_new(mm, &full, &err);
  cr_assert_eq(train_loss(tb, g.ids, g.mask, g.n_seq, g.T, &base, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_lora_merge(t, mm, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_loss(tb, g.ids, g.mask, g.n_seq, g.T, &merged, &err), LT_OK, "%s", err.msg);
  cr_assert(fabs(adapted - base) > 1e-3, "the LoRA pairs change nothing: the comparison would prove nothing");
  cr_assert(fabs(merged - adapted) < 1e-5, "merged %.9g, unmerged %.9g", merged, adapted);
  train_destroy(&tb), train_destroy(&t);
  model_destroy(&mm), model_destroy(&m);
}

Test(train, a_diverging_run_fails_naming_the_step) {
  gref_t g;
  gref_load(&g, "llama-tiny");
  model_t *m = load_f32("llama-tiny");
  lt_err_t err = {0};
  train_opts_t o = {.what = TRAIN_FULL};
  train_t *t = train_new(m, &o, &err);
  /* A learning rate of 1e30 sends the weights past f32's range within a few steps. */
  tune_opts_t to = {.lr = 1e30, .steps = 50, .schedule = TUNE_CONSTANT};
  tuner_t *u = tuner_new(t, &to, &err);
  cr_assert(u, "%s", err.msg);
  tune_batch_t b = {.ids = g.ids, .mask = g.mask, .n_seq = g.n_seq, .T = g.T};
  tune_step_info_t info;
  lt_status_t st = LT_OK;
  uint32_t s = 0;
  while (s < 50 && (st = tuner_step(u, &b, 1, &info, &err)) == LT_OK) s++;
  cr_assert_eq(st, LT_E_NUMERIC, "the run did not stop on a non-finite loss (%s)", err.msg);
  char want[32];
  snprintf(want, sizeof want, "step %u", s + 1);
  cr_assert(strstr(err.msg, want), "the error does not name %s: %s", want, err.msg);
  tuner_destroy(&u), train_destroy(&t), model_destroy(&m);
}

/* The masked mean NLL of the batch through the model's inference forward pass (adapters applied when set). */
static double forward_loss(model_t *m, const gref_t *g) {
  lt_err_t err = {0};
  double sum = 0, count = 0;
  for (uint32_t s = 0; s < g->n_seq; s++) {
    float nll[64];
    model_seq_t *sq = model_seq_new(m, g->T, &err);
    cr_assert(sq, "%s", err.msg);
    model_item_t it = {.seq = sq,
                       .tokens = g->ids + s * g->T,
                       .n_tokens = g->T - 1,
                       .out = MODEL_OUT_NLL,
                       .targets = g->ids + s * g->T + 1,
                       .result = nll};
    cr_assert_eq(model_forward(m, &it, 1, NULL, &err), LT_OK, "%s", err.msg);
    model_seq_destroy(&sq);
    for (uint32_t i = 0; i + 1 < g->T; i++)
      if (g->mask[s * (g->T - 1) + i]) sum += nll[i], count++;
  }
  return sum / count;
}

Test(train, saved_adapters_apply_in_the_forward_pass) {
  /* What tune writes (PEFT LoRA, bottleneck adapter) loads on top of the base and the inference forward pass then
   * computes the loss the training pass computed with the same tensors: two implementations of one function, in
   * f32 with different summation orders (1e-5 on losses of ~5). */
  gref_t g;
  gref_load(&g, "llama-tiny");
  lt_err_t err = {0};
  train_opts_t opts[2] = {{.what = TRAIN_LORA, .lora_rank = 4, .lora_alpha = 8, .lora_targets = 0x7f, .seed = 5},
                          {.what = TRAIN_ADAPTER, .adapter_layer = 1, .seed = 6}};
  for (int k = 0; k < 2; k++) {
    model_t *m = model_load(tgpu(), FIXTURES "/llama-tiny", NULL, &err);
    cr_assert(m, "%s", err.msg);
    double base = forward_loss(m, &g);
    train_t *t = train_new(m, &opts[k], &err);
    cr_assert(t, "%s", err.msg);
    for (uint32_t i = 1; i < train_tensor_count(t); i += 2) {
      const train_tensor_t *x = train_tensor_at(t, i);
      uint64_t n = (uint64_t)x->rows * x->cols, seed = 17 + i;
      float *v = talloc(n);
      trand(v, n, -0.3, 0.3, &seed);
      cr_assert_eq(gpu_upload(x->value, 0, v, n * 4, &err), LT_OK);
      free(v);
    }
    double trained;
    cr_assert_eq(train_loss(t, g.ids, g.mask, g.n_seq, g.T, &trained, &err), LT_OK, "%s", err.msg);
    char dir[] = "/tmp/lathe-adapter-XXXXXX";
    cr_assert(mkdtemp(dir));
    cr_assert_eq(train_save_adapter(t, dir, FIXTURES "/llama-tiny", &err), LT_OK, "%s", err.msg);
    model_adapter_t *ad = model_adapter_load(m, dir, &err);
    cr_assert(ad, "%s", err.msg);
    model_set_adapter(m, ad);
    double applied = forward_loss(m, &g);
    model_set_adapter(m, NULL);
    cr_assert(fabs(applied - base) > 1e-3, "the adapter changes nothing: the check would prove nothing");
    cr_assert(fabs(applied - trained) < 1e-5, "%s: forward with the adapter %.9g, training pass %.9g",
              k ? "bottleneck" : "LoRA", applied, trained);
    cr_assert_eq(forward_loss(m, &g), base, "unsetting the adapter does not restore the base");
    /* A fresh training state started from the folder computes the same loss as the one that wrote it. */
    train_opts_t fresh = opts[k];
    fresh.seed = 99;
    train_t *t2 = train_new(m, &fresh, &err);
    double resumed;
    cr_assert_eq(train_load_adapter(t2, dir, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(train_loss(t2, g.ids, g.mask, g.n_seq, g.T, &resumed, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(resumed, trained, "starting from the saved adapter gives another model");
    train_destroy(&t2);
    model_adapter_destroy(&ad);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
    train_destroy(&t);
    model_destroy(&m);
  }
  /* An adapter made for another model is refused, naming the mismatch. */
  model_t *other = model_load(tgpu(), FIXTURES "/llama3-scaled", NULL, &err);
  model_t *m = model_load(tgpu(), FIXTURES "/llama-tiny", NULL, &err);
  train_t *t = train_new(m, &opts[0], &err);
  char dir[] = "/tmp/lathe-adapter-XXXXXX";
  cr_assert(mkdtemp(dir));
  cr_assert_eq(train_save_adapter(t, dir, "llama-tiny", &err), LT_OK, "%s", err.msg);
  cr_assert_null(model_adapter_load(other, dir, &err));
  cr_assert(strstr(err.msg, "does not fit"), "%s", err.msg);
  train_opts_t r2 = opts[0];
  r2.lora_rank = 2;
  train_t *t3 = train_new(m, &r2, &err);
  cr_assert_neq(train_load_adapter(t3, dir, &err), LT_OK, "an adapter of rank 4 loaded into a rank-2 run");
  cr_assert(strstr(err.msg, "does not fit"), "%s", err.msg);
  train_destroy(&t3);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
  train_destroy(&t), model_destroy(&m), model_destroy(&other);
}

Test(train, a_fresh_lora_gives_the_base_logits_bit_for_bit) {
  /* B starts at zero: the adapter adds exact zeros to every projection, so every logit keeps its bits. */
  lt_err_t err = {0};
  model_t *m = model_load(tgpu(), FIXTURES "/llama-tiny", NULL, &err);
  cr_assert(m, "%s", err.msg);
  int32_t toks[12] = {0, 45, 66, 85, 73, 70, 1, 83, 86, 79, 84, 1};
  uint32_t V = model_config(m)->vocab_size;
  float *out[2] = {talloc(12 * V), talloc(12 * V)};
  train_opts_t o = {.what = TRAIN_LORA, .lora_rank = 8, .lora_alpha = 16, .lora_targets = 0x7f, .seed = 1};
  train_t *t = train_new(m, &o, &err);
  char dir[] = "/tmp/lathe-adapter-XXXXXX";
  cr_assert(mkdtemp(dir));
  cr_assert_eq(train_save_adapter(t, dir, "llama-tiny", &err), LT_OK, "%s", err.msg);
  model_adapter_t *ad = model_adapter_load(m, dir, &err);
  cr_assert(ad, "%s", err.msg);
  for (int k = 0; k < 2; k++) {
    model_set_adapter(m, k ? ad : NULL);
    model_seq_t *s = model_seq_new(m, 16, &err);
    model_item_t it = {.seq = s, .tokens = toks, .n_tokens = 12, .out = MODEL_OUT_ALL, .result = out[k]};
    cr_assert_eq(model_forward(m, &it, 1, NULL, &err), LT_OK, "%s", err.msg);
    model_seq_destroy(&s);
  }
  model_set_adapter(m, NULL);
  cr_assert_eq(memcmp(out[0], out[1], 12 * V * 4), 0, "a fresh LoRA changed the logits");
  model_adapter_destroy(&ad);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
  free(out[0]), free(out[1]);
  train_destroy(&t), model_destroy(&m);
}

/* The embedding table of m (f32 on the device) downloaded; caller frees. */
static float *embed_table(model_t *m) {
  for (uint32_t i = 0; i < model_param_count(m); i++) {
    const model_param_t *p = model_param_at(m, i);
    if (!strcmp(p->name, "model.embed_tokens.weight")) {
      cr_assert_eq(p->dtype, LT_F32);
      return tread_f32(p->buf, (uint64_t)p->rows * p->cols);
    }
  }
  cr_assert_fail("no embedding table");
  return NULL;
}

Test(train, input_embeddings_from_outside_and_their_gradient) {
  /* Two sequences of 12 distinct tokens (24 ids of 96, none repeated). Runs of positions take their input
   * embeddings from a buffer holding exactly their tokens' rows: the loss is the same to the bit, and the gradient
   * that reaches those rows equals the token embedding gradient a full-training state gives each of those ids
   * (each id occurs once, and llama-tiny's head is untied, so that row gets the input's gradient alone). */
  model_t *m = ttrain_load("llama-tiny", true);
  uint32_t n_seq = 2, T = 12, d = model_config(m)->hidden_size;
  int32_t ids[24];
  uint8_t mask[22];
  for (uint32_t i = 0; i < 24; i++) ids[i] = (int32_t)((i * 37 + 5) % 96);
  for (uint32_t i = 0; i < 22; i++) mask[i] = i % 11 >= 4; /* targets after the runs only, as a speech prompt */
  train_input_run_t runs[2] = {{.seq = 0, .pos = 1, .n = 4, .row = 0}, {.seq = 1, .pos = 2, .n = 3, .row = 4}};
  float *table = embed_table(m), *emb = talloc(7 * d);
  for (int r = 0; r < 2; r++)
    for (uint32_t k = 0; k < runs[r].n; k++)
      memcpy(emb + (uint64_t)(runs[r].row + k) * d, table + (uint64_t)ids[runs[r].seq * T + runs[r].pos + k] * d,
             d * 4);
  gpu_buf_t *be = tbuf_f32(emb, 7 * d), *bd = tbuf_f32(NULL, 7 * d);
  lt_err_t err = {0};
  train_opts_t full = {.what = TRAIN_FULL};
  train_t *tf = train_new(m, &full, &err);
  cr_assert(tf, "%s", err.msg);
  double lf, li;
  cr_assert_eq(train_grad(tf, ids, mask, n_seq, T, 1.0f, &lf, &err), LT_OK, "%s", err.msg);
  float *dtable = NULL;
  for (uint32_t i = 0; i < train_tensor_count(tf); i++)
    if (!strcmp(train_tensor_at(tf, i)->name, "model.embed_tokens.weight"))
      dtable = tread_f32(train_tensor_at(tf, i)->grad, (uint64_t)model_config(m)->vocab_size * d);
  cr_assert_not_null(dtable);
  /* The full state refuses a gradient for outside embeddings (its table's gradient would take the placeholders'). */
  cr_assert_eq(train_set_inputs(tf, be, bd, runs, 2, &err), LT_E_UNSUPPORTED);
  cr_assert(strstr(err.msg, "trains the token embeddings"), "%s", err.msg);
  train_destroy(&tf);
  train_opts_t in = {.what = TRAIN_INPUTS};
  train_t *ti = train_new(m, &in, &err);
  cr_assert(ti, "%s", err.msg);
  cr_assert_eq(train_tensor_count(ti), 0);
  cr_assert_eq(train_grad(ti, ids, mask, n_seq, T, 1.0f, &li, &err), LT_E_INVALID, "nothing to train yet");
  cr_assert_eq(train_set_inputs(ti, be, bd, runs, 2, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_grad(ti, ids, mask, n_seq, T, 1.0f, &li, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(lf, li, "the same embeddings from outside change the loss: %.9g vs %.9g", lf, li);
  float *got = tread_f32(bd, 7 * d), *want = talloc(7 * d);
  for (int r = 0; r < 2; r++)
    for (uint32_t k = 0; k < runs[r].n; k++)
      memcpy(want + (uint64_t)(runs[r].row + k) * d, dtable + (uint64_t)ids[runs[r].seq * T + runs[r].pos + k] * d,
             d * 4);
  /* The same ops in the same order down the stream: equal but for the weight-gradient work the full state adds
   * beside them, which does not touch dx. */
  tassert_close(got, want, 7 * d, 1e-7, 1e-5, "input embedding gradient");
  double norm = 0;
  for (uint64_t i = 0; i < 7ull * d; i++) norm += (double)got[i] * got[i];
  cr_assert_gt(norm, 1e-8, "the gradient is not zero");
  /* Other embeddings change the loss; runs outside the batch are refused. */
  for (uint64_t i = 0; i < 7ull * d; i++) emb[i] *= -1;
  cr_assert_eq(gpu_upload(be, 0, emb, 7ull * d * 4, &err), LT_OK, "%s", err.msg);
  double ln;
  cr_assert_eq(train_loss(ti, ids, mask, n_seq, T, &ln, &err), LT_OK, "%s", err.msg);
  cr_assert_neq(ln, li, "the outside embeddings are not read");
  train_input_run_t bad = {.seq = 2, .pos = 0, .n = 1, .row = 0};
  cr_assert_eq(train_set_inputs(ti, be, bd, &bad, 1, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(train_loss(ti, ids, mask, n_seq, T, &ln, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "sequence 2"), "%s", err.msg);
  bad = (train_input_run_t){.seq = 0, .pos = 0, .n = 8, .row = 0};
  cr_assert_eq(train_set_inputs(ti, be, bd, &bad, 1, &err), LT_E_INVALID, "rows past the buffer");
  free(got), free(want), free(dtable), free(table), free(emb);
  gpu_buf_destroy(&be), gpu_buf_destroy(&bd);
  train_destroy(&ti), model_destroy(&m);
}
