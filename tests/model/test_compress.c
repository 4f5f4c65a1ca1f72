/* Compression (methods/compress.h) on the tiny fixture models: calibration scores against the PyTorch reference,
 * dropped blocks / feed-forward sub-layers / experts really gone (fewer bytes, fewer dispatches) while the rest
 * computes exactly what the original computes with the same parts skipped by hooks, Wanda's choices, quantised
 * models against their dequantised weights, and output folders that reload. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "methods/compress.h"
#include "engine/model/generate.h"
#include "engine/model/model.h"
#include "engine/model/model_file.h"
#include "engine/ops/quant.h"
#include "engine/ops/ref/ref.h"
#include "support/tgpu.h"

#define FIXTURES LATHE_SOURCE_DIR "/tests/fixtures"
#define MAX_TOK 32

static char tmp_root[256];

/* Removes the test's temporary folders, then closes the gpu. */
static void teardown(void) {
  if (tmp_root[0]) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_root);
    if (system(cmd) != 0) cr_log_warn("could not remove %s", tmp_root);
  }
  tgpu_teardown();
}

TestSuite(compress, .init = tgpu_setup, .fini = teardown);

/* A new empty folder under the test's temporary root; returns a static path (valid until the next call). */
static const char *tmp_dir(const char *name) {
  if (!tmp_root[0]) {
    snprintf(tmp_root, sizeof tmp_root, "%s/lathe-compress-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(tmp_root) != NULL);
  }
  static char p[400];
  snprintf(p, sizeof p, "%s/%s", tmp_root, name);
  return p;
}

/* The fixture's token sequence (prompt then greedy tokens); returns its length. */
static uint32_t fixture_tokens(const char *name, int32_t *ids) {
  char p[512];
  snprintf(p, sizeof p, FIXTURES "/%s/reference.json", name);
  json_error_t je;
  json_t *r = json_load_file(p, 0, &je);
  cr_assert(r != NULL, "%s: %s", p, je.text);
  uint32_t n = 0;
  const char *keys[] = {"prompt_tokens", "greedy_tokens"};
  for (int k = 0; k < 2; k++) {
    json_t *a = json_object_get(r, keys[k]);
    for (size_t i = 0; i < json_array_size(a) && n < MAX_TOK; i++)
      ids[n++] = (int32_t)json_integer_value(json_array_get(a, i));
  }
  json_decref(r);
  return n;
}

static model_t *load(const char *path) {
  lt_err_t err = {0};
  model_t *m = model_load(tgpu(), path, NULL, &err);
  cr_assert(m != NULL, "model_load(%s): %s", path, err.msg);
  return m;
}

/* Logits of every position of ids from one prefill (hooks may be NULL), and the dispatches it took. Caller frees. */
static float *logits(model_t *m, const int32_t *ids, uint32_t n, const model_hooks_t *h, uint64_t *dispatches) {
  lt_err_t err = {0};
  model_seq_t *s = model_seq_new(m, MAX_TOK, &err);
  cr_assert(s != NULL, "%s", err.msg);
  float *out = talloc((uint64_t)n * model_config(m)->vocab_size);
  model_item_t it = {.seq = s, .tokens = ids, .n_tokens = n, .out = MODEL_OUT_ALL, .result = out};
  uint64_t before = gpu_stats(tgpu())->dispatches;
  cr_assert_eq(model_forward(m, &it, 1, h, &err), LT_OK, "%s", err.msg);
  if (dispatches) *dispatches = gpu_stats(tgpu())->dispatches - before;
  model_seq_destroy(&s);
  return out;
}

/* One calibration window of the fixture's tokens (twice: the means must not change). Caller frees. */
static compress_calib_t *calibrate(model_t *m, const int32_t *ids, uint32_t n, bool inputs) {
  lt_err_t err = {0};
  compress_calib_t *c = NULL;
  compress_calib_opts_t o = {.samples = 2, .tokens = n, .seed = 1, .inputs = inputs};
  cr_assert_eq(compress_calibrate(&c, m, ids, n, &o, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(compress_calib_tokens(c), 2ull * n);
  return c;
}

/* Device bytes of the original's parameters that a plan removes (block l whole, or its feed-forward part, or
 * expert e of block l): what the compressed model must no longer load. */
static uint64_t param_bytes(const model_t *m, int32_t layer, bool ffn_only, int32_t expert) {
  uint64_t b = 0;
  for (uint32_t i = 0; i < model_param_count(m); i++) {
    const model_param_t *p = model_param_at(m, i);
    if (p->layer != layer || (expert >= 0 && p->expert != expert)) continue;
    bool ffn = strstr(p->name, "mlp.") || strstr(p->name, "block_sparse_moe") || strstr(p->name, "post_attention");
    if (ffn_only && !ffn) continue;
    b += (uint64_t)p->n_rows * p->cols * lt_dtype_size(p->dtype);
  }
  return b;
}

/* ---- scores ---- */

static void check_scores(const char *name) {
  /* Tolerances: the engine computes in f32 what the reference computes in f64. Cosines and probabilities are
   * O(1) means of f32 dot products over 64-wide rows: within 1e-5 absolute (f32 carries ~1e-7 relative; a wrong
   * layer or token is off by >1e-2). Sums of squares: 1e-4 relative plus 1e-6 absolute. The activations carry
   * f32 errors of ~1e-6 of their rows' O(1) scale after a few layers, so a column of values ~1e-2 has a relative
   * error ~1e-4 in its squares, and the absolute term covers the smallest columns; a token routed to the wrong
   * expert or a missing window moves a sum by its whole share (>1e-2 relative). */
  int32_t ids[MAX_TOK];
  uint32_t n = fixture_tokens(name, ids);
  char p[512];
  snprintf(p, sizeof p, FIXTURES "/%s/compress_ref.json", name);
  json_error_t je;
  json_t *ref = json_load_file(p, 0, &je);
  cr_assert(ref != NULL, "%s: %s", p, je.text);
  snprintf(p, sizeof p, FIXTURES "/%s", name);
  model_t *m = load(p);
  const model_config_t *cf = model_config(m);
  compress_calib_t *c = calibrate(m, ids, n, true);
  for (uint32_t l = 0; l < cf->n_layers; l++) {
    double bw = json_real_value(json_array_get(json_object_get(ref, "block_cos"), l));
    double lw = json_real_value(json_array_get(json_object_get(ref, "layer_cos"), l));
    cr_assert(fabs(compress_block_scores(c)[l] - bw) <= 1e-5, "%s block %u: %.8f, reference %.8f", name, l,
              compress_block_scores(c)[l], bw);
    cr_assert(fabs(compress_layer_scores(c)[l] - lw) <= 1e-5, "%s layer %u: %.8f, reference %.8f", name, l,
              compress_layer_scores(c)[l], lw);
    for (uint32_t e = 0; e < cf->n_experts; e++) {
      double pw = json_real_value(json_array_get(json_array_get(json_object_get(ref, "expert_prob"), l), e));
      double pg = compress_expert_scores(c)[l * cf->n_experts + e];
      cr_assert(fabs(pg - pw) <= 1e-5, "%s expert %u.%u: %.8f, reference %.8f", name, l, e, pg, pw);
    }
  }
  cr_assert(cf->n_experts || compress_expert_scores(c) == NULL);
  /* Sums of squares at every site. */
  static const struct {
    const char *key;
    model_site_t site;
    bool per_expert;
  } sites[] = {{"attn_in", MODEL_SITE_ATTN_IN, false},    {"attn_out", MODEL_SITE_ATTN_OUT, false},
               {"ffn_in", MODEL_SITE_FFN_IN, false},      {"ffn_act", MODEL_SITE_FFN_ACT, false},
               {"expert_in", MODEL_SITE_EXPERT_IN, true}, {"expert_act", MODEL_SITE_EXPERT_ACT, true}};
  uint32_t checked = 0;
  for (size_t s = 0; s < sizeof sites / sizeof sites[0]; s++) {
    json_t *per_layer = json_object_get(json_object_get(ref, "sq"), sites[s].key);
    for (uint32_t l = 0; l < json_array_size(per_layer); l++) {
      uint32_t ne = sites[s].per_expert ? (uint32_t)json_array_size(json_array_get(per_layer, l)) : 1;
      for (uint32_t e = 0; e < ne; e++) {
        json_t *at = json_array_get(per_layer, l);
        json_t *want = sites[s].per_expert ? json_array_get(at, e) : at;
        const double *got = compress_input_sq(c, sites[s].site, l, sites[s].per_expert ? (int32_t)e : -1);
        double total = 0;
        for (size_t j = 0; j < json_array_size(want); j++) total += json_real_value(json_array_get(want, j));
        if (total == 0) { /* an expert no token was routed to */
          cr_assert(got == NULL, "%s %s %u.%u: nothing routed, yet sums exist", name, sites[s].key, l, e);
          continue;
        }
        cr_assert(got != NULL, "%s %s %u.%u not collected", name, sites[s].key, l, e);
        for (size_t j = 0; j < json_array_size(want); j++) {
          double w = 2 * json_real_value(json_array_get(want, j)); /* the window ran twice */
          cr_assert(fabs(got[j] - w) <= 1e-4 * fabs(w) + 1e-6, "%s %s %u.%u column %zu: %.9g, reference %.9g", name,
                    sites[s].key, l, e, j, got[j], w);
          checked++;
        }
      }
    }
  }
  cr_assert_gt(checked, 500u, "%s: only %u sums compared", name, checked);
  compress_calib_destroy(&c);
  model_destroy(&m);
  json_decref(ref);
}

Test(compress, mixtral_scores_match_the_pytorch_reference) { check_scores("mixtral-tiny"); }
Test(compress, llama_scores_match_the_pytorch_reference) { check_scores("llama-tiny"); }

/* ---- drops ---- */

/* Compresses fixture `name` with plan into a new folder; returns its path (static). */
static const char *write_plan(const char *name, const char *out, const compress_plan_t *plan, const compress_calib_t *c,
                              compress_summary_t *sum) {
  char src[512];
  snprintf(src, sizeof src, FIXTURES "/%s", name);
  const char *dir = tmp_dir(out);
  lt_err_t err = {0};
  cr_assert_eq(compress_write(src, dir, plan, c, sum, &err), LT_OK, "%s", err.msg);
  return dir;
}

/* The compressed model at dir against the original with hooks h: same logits within tol (0: bit-identical),
 * fewer weight bytes by exactly removed, and at most as many dispatches as the unhooked original (fewer when
 * fewer_dispatches). */
static void check_equivalent(const char *name, const char *dir, const model_hooks_t *h, uint64_t removed, double tol,
                             bool fewer_dispatches) {
  char src[512];
  snprintf(src, sizeof src, FIXTURES "/%s", name);
  int32_t ids[MAX_TOK];
  uint32_t n = fixture_tokens(name, ids);
  model_t *orig = load(src), *comp = load(dir);
  uint32_t V = model_config(orig)->vocab_size;
  uint64_t d_orig, d_hooked, d_comp;
  float *plain = logits(orig, ids, n, NULL, &d_orig);
  float *want = logits(orig, ids, n, h, &d_hooked);
  float *got = logits(comp, ids, n, NULL, &d_comp);
  tassert_close(got, want, (uint64_t)n * V, tol, 0, dir);
  /* The hooks change something (else the comparison proves nothing). */
  double moved = 0;
  for (uint64_t i = 0; i < (uint64_t)n * V; i++) moved = fmax(moved, fabs((double)plain[i] - want[i]));
  cr_assert_gt(moved, 1e-3, "%s: the skipped parts change nothing", dir);
  uint64_t wo = model_mem(orig)->weight_device_bytes, wc = model_mem(comp)->weight_device_bytes;
  cr_assert_eq(wo - wc, removed, "%s: %llu weight bytes instead of %llu - %llu", dir, (unsigned long long)wc,
               (unsigned long long)wo, (unsigned long long)removed);
  cr_assert_leq(d_comp, d_orig, "%s: %llu dispatches, the original %llu", dir, (unsigned long long)d_comp,
                (unsigned long long)d_orig);
  if (fewer_dispatches) cr_assert_lt(d_comp, d_orig, "%s: no dispatch saved", dir);
  cr_log_info("%s: weights %llu -> %llu bytes, dispatches %llu -> %llu", dir, (unsigned long long)wo,
              (unsigned long long)wc, (unsigned long long)d_orig, (unsigned long long)d_comp);
  free(plain), free(want), free(got);
  model_destroy(&orig), model_destroy(&comp);
}

Test(compress, dropped_block_is_gone) {
  /* Block 0 of mixtral-tiny and block 1 of llama-tiny removed: the folder has one block, the other's weights are
   * not loaded, and the logits are bit-identical to the original's with skip_block (the same dispatches on the
   * same data). */
  const char *names[] = {"mixtral-tiny", "llama-tiny"};
  for (uint32_t k = 0; k < 2; k++) {
    bool drop[2] = {k == 0, k == 1};
    compress_plan_t plan = {.drop_block = drop};
    const char *dir = write_plan(names[k], names[k], &plan, NULL, NULL);
    model_t *comp = load(dir);
    cr_assert_eq(model_config(comp)->n_layers, 1);
    model_destroy(&comp);
    char src[512];
    snprintf(src, sizeof src, FIXTURES "/%s", names[k]);
    model_t *orig = load(src);
    uint64_t removed = param_bytes(orig, (int32_t)k, false, -1);
    model_destroy(&orig);
    model_hooks_t h = {.skip_block = drop};
    check_equivalent(names[k], dir, &h, removed, 0, true);
  }
}

Test(compress, dropped_ffn_sublayer_is_gone) {
  /* The feed-forward sub-layer of block 1 (MoE) and block 0 (dense) removed, attention kept: listed in
   * lathe_dropped_moe_layers, its norm, router and experts not loaded, logits bit-identical to skip_ffn. */
  const char *names[] = {"mixtral-tiny", "llama-tiny"};
  for (uint32_t k = 0; k < 2; k++) {
    bool drop[2] = {k == 1, k == 0};
    compress_plan_t plan = {.drop_ffn = drop};
    const char *dir = write_plan(names[k], names[k], &plan, NULL, NULL);
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    json_error_t je;
    json_t *j = json_load_file(cfg, 0, &je);
    json_t *list = json_object_get(j, "lathe_dropped_moe_layers");
    cr_assert(json_array_size(list) == 1 && json_integer_value(json_array_get(list, 0)) == (k == 0 ? 1 : 0));
    json_decref(j);
    char src[512];
    snprintf(src, sizeof src, FIXTURES "/%s", names[k]);
    model_t *orig = load(src);
    uint64_t removed = param_bytes(orig, k == 0 ? 1 : 0, true, -1);
    model_destroy(&orig);
    model_hooks_t h = {.skip_ffn = drop};
    check_equivalent(names[k], dir, &h, removed, 0, true);
  }
}

Test(compress, dropped_experts_are_gone) {
  /* mixtral-tiny (2 blocks x 4 experts, top-2): (a) keep 3 per block, (b) uneven counts (block 0 keeps 2, block
   * 1 keeps all 4: lathe_experts_per_layer). The router rows go too. Against expert_mask on the original: the
   * same experts run on the same rows in the same order, and only the softmax over 3 instead of 4 logits (the
   * masked one contributes exp(-1e30) = 0) may sum in another order: within 1e-5 of logits of magnitude ~1. */
  bool cases[2][8] = {{0, 0, 1, 0, 0, 1, 0, 0}, {1, 0, 0, 1, 0, 0, 0, 0}};
  const char *outs[] = {"experts-3", "experts-uneven"};
  char src[512];
  snprintf(src, sizeof src, FIXTURES "/mixtral-tiny");
  for (int k = 0; k < 2; k++) {
    compress_plan_t plan = {.drop_expert = cases[k]};
    const char *dir = write_plan("mixtral-tiny", outs[k], &plan, NULL, NULL);
    model_t *comp = load(dir);
    const model_config_t *cc = model_config(comp);
    cr_assert_eq(model_config_experts(cc, 0), k == 0 ? 3u : 2u);
    cr_assert_eq(model_config_experts(cc, 1), k == 0 ? 3u : 4u);
    model_destroy(&comp);
    model_t *orig = load(src);
    uint64_t removed = 0;
    for (int32_t l = 0; l < 2; l++)
      for (int32_t e = 0; e < 4; e++)
        if (cases[k][l * 4 + e]) removed += param_bytes(orig, l, true, e) + 64 * 4; /* + its router row */
    model_destroy(&orig);
    model_hooks_t h = {.expert_mask = cases[k]};
    check_equivalent("mixtral-tiny", dir, &h, removed, 1e-5, false);
  }
}

Test(compress, composed_drops_renumber_blocks_and_experts) {
  /* Block 0 dropped and an expert of block 1 dropped in one plan: the remaining block becomes block 0 with 3
   * experts, and computes what the original does with both hooks. */
  bool blocks[2] = {1, 0}, experts[8] = {0, 0, 0, 0, 0, 0, 1, 0};
  compress_plan_t plan = {.drop_block = blocks, .drop_expert = experts};
  const char *dir = write_plan("mixtral-tiny", "composed", &plan, NULL, NULL);
  model_t *orig = load(FIXTURES "/mixtral-tiny");
  uint64_t removed = param_bytes(orig, 0, false, -1) + param_bytes(orig, 1, true, 2) + 64 * 4;
  model_destroy(&orig);
  model_hooks_t h = {.skip_block = blocks, .expert_mask = experts};
  check_equivalent("mixtral-tiny", dir, &h, removed, 1e-5, true);
}

/* ---- pruning ---- */

/* Checks one pruned matrix against Wanda's rule: per row (or per group of m columns) the zeroed weights are
 * exactly the count asked for and none scores above a kept one. Returns the zeros. */
static uint64_t check_wanda(const ft_tensor_t *orig, const ft_tensor_t *got, const double *sq, uint32_t keep_n,
                            uint32_t keep_m, double sparsity) {
  uint32_t N = (uint32_t)orig->shape[0], K = (uint32_t)orig->shape[1];
  cr_assert_eq(got->dtype, FT_F32);
  float *w = talloc((uint64_t)N * K), *p = talloc((uint64_t)N * K);
  lt_err_t err = {0};
  cr_assert_eq(ft_tensor_to_f32(orig, w, &err), LT_OK);
  memcpy(p, got->data, (uint64_t)N * K * 4);
  uint64_t zeros = 0;
  uint32_t span = keep_m ? keep_m : K;
  for (uint32_t n = 0; n < N; n++)
    for (uint32_t g0 = 0; g0 < K; g0 += span) {
      uint32_t len = K - g0 < span ? K - g0 : span, z = 0;
      double max_zeroed = -1, min_kept = INFINITY;
      for (uint32_t k = g0; k < g0 + len; k++) {
        uint64_t i = (uint64_t)n * K + k;
        double s = fabs((double)w[i]) * sqrt(sq[k]);
        if (p[i] == 0.0f)
          z++, max_zeroed = fmax(max_zeroed, s);
        else {
          cr_assert_eq(p[i], w[i], "a kept weight changed");
          min_kept = fmin(min_kept, s);
        }
      }
      uint32_t want = keep_m ? (len > keep_n ? len - keep_n : 0) : (uint32_t)floor(sparsity * len);
      cr_assert_eq(z, want, "row %u columns %u..: %u zeros, want %u", n, g0, z, want);
      cr_assert_leq(max_zeroed, min_kept, "row %u: a zeroed weight scores %g above a kept one (%g)", n, max_zeroed,
                    min_kept);
      zeros += z;
    }
  free(w), free(p);
  return zeros;
}

Test(compress, pruning_zeroes_the_lowest_wanda_scores) {
  /* Unstructured 50% and 2:4 on both fixtures: every block matrix checked against the rule with the calibration's
   * input norms; the summary's counts add up; everything else is written byte for byte. */
  const char *names[] = {"mixtral-tiny", "llama-tiny"};
  for (uint32_t k = 0; k < 2; k++) {
    char src[512];
    snprintf(src, sizeof src, FIXTURES "/%s", names[k]);
    int32_t ids[MAX_TOK];
    uint32_t n = fixture_tokens(names[k], ids);
    model_t *m = load(src);
    compress_calib_t *c = calibrate(m, ids, n, true);
    model_destroy(&m);
    for (int pattern = 0; pattern < 2; pattern++) {
      compress_plan_t plan = {.sparsity = pattern ? 0 : 0.5, .keep_n = pattern ? 2 : 0, .keep_m = pattern ? 4 : 0};
      compress_summary_t sum;
      char out[64];
      snprintf(out, sizeof out, "%s-prune-%d", names[k], pattern);
      const char *dir = write_plan(names[k], out, &plan, c, &sum);
      model_file_t *fo = NULL, *fp = NULL;
      lt_err_t err = {0};
      cr_assert_eq(model_file_open(&fo, src, &err), LT_OK, "%s", err.msg);
      cr_assert_eq(model_file_open(&fp, dir, &err), LT_OK, "%s", err.msg);
      const model_weights_t *wo = model_file_weights(fo), *wp = model_file_weights(fp);
      cr_assert_eq(wo->n_tensors, wp->n_tensors);
      uint64_t zeros = 0, checked = 0;
      for (uint32_t i = 0; i < wo->n_tensors; i++) {
        const model_tensor_t *a = &wo->tensors[i], *b = &wp->tensors[i];
        cr_assert_str_eq(a->name, b->name);
        static const model_site_t site_of[MR_COUNT] = {
            [MR_WQ] = MODEL_SITE_ATTN_IN,       [MR_WK] = MODEL_SITE_ATTN_IN,
            [MR_WV] = MODEL_SITE_ATTN_IN,       [MR_WO] = MODEL_SITE_ATTN_OUT,
            [MR_FFN_GATE] = MODEL_SITE_FFN_IN,  [MR_FFN_UP] = MODEL_SITE_FFN_IN,
            [MR_FFN_DOWN] = MODEL_SITE_FFN_ACT, [MR_EXP_GATE] = MODEL_SITE_EXPERT_IN,
            [MR_EXP_UP] = MODEL_SITE_EXPERT_IN, [MR_EXP_DOWN] = MODEL_SITE_EXPERT_ACT};
        bool linear = a->layer >= 0 && a->t->n_dims == 2 && a->role != MR_ROUTER;
        if (!linear) {
          cr_assert_eq(a->t->nbytes, b->t->nbytes);
          cr_assert(memcmp(a->t->data, b->t->data, a->t->nbytes) == 0, "%s changed", a->name);
          continue;
        }
        const double *sq = compress_input_sq(c, site_of[a->role], (uint32_t)a->layer, a->expert);
        if (!sq) continue; /* an expert without calibration rows: ranked by |w| (see the summary) */
        zeros += check_wanda(a->t, b->t, sq, plan.keep_n, plan.keep_m, plan.sparsity);
        checked += a->t->n_elems;
      }
      cr_assert_gt(checked, 0);
      cr_assert_leq(zeros, sum.pruned);
      cr_assert(fabs((double)sum.pruned / (double)sum.prunable - 0.5) < 0.01, "%s: %llu of %llu pruned", out,
                (unsigned long long)sum.pruned, (unsigned long long)sum.prunable);
      model_file_destroy(&fo), model_file_destroy(&fp);
      model_t *again = load(dir);
      model_destroy(&again);
    }
    compress_calib_destroy(&c);
  }
}

/* ---- quantisation ---- */

/* Writes the float twin of a quantised folder: every I8 / U8 tensor dequantised to f32 (its scales dropped), the
 * config without quantization_config. */
static const char *dequantised_twin(const char *qdir, const char *out) {
  lt_err_t err = {0};
  st_file_t *st = NULL;
  cr_assert_eq(st_open(&st, qdir, &err), LT_OK, "%s", err.msg);
  model_config_t cfg;
  cr_assert_eq(model_config_from_hf(&cfg, qdir, &err), LT_OK, "%s", err.msg);
  uint32_t n = st_count(st), k = 0;
  ft_tensor_t *ts = calloc(n, sizeof *ts);
  float **owned = calloc(n, sizeof *owned);
  for (uint32_t i = 0; i < n; i++) {
    const ft_tensor_t *t = st_tensor(st, i);
    if (strstr(t->name, ".scales")) continue;
    ts[k] = *t;
    if (t->dtype == FT_I8 || t->dtype == FT_U8) {
      char sname[160];
      snprintf(sname, sizeof sname, "%s.scales", t->name);
      const ft_tensor_t *s = st_find(st, sname);
      uint32_t N = (uint32_t)t->shape[0], G = (uint32_t)s->shape[1], K = 0;
      /* The logical width: the fixture's dims are hidden 64, heads 64, and the feed-forward width. */
      uint32_t widths[] = {cfg.hidden_size, cfg.n_heads * cfg.head_dim, cfg.intermediate_size};
      for (int w = 0; w < 3; w++)
        if (quant_row_bytes(cfg.quant_bits, widths[w]) == t->shape[1] && quant_groups(widths[w], cfg.quant_group) == G)
          K = widths[w];
      cr_assert_gt(K, 0, "%s: no width fits", t->name);
      uint16_t *sc = malloc((uint64_t)N * G * 2);
      memcpy(sc, s->data, (uint64_t)N * G * 2);
      owned[k] = talloc((uint64_t)N * K);
      quant_dequant(owned[k], t->data, sc, N, K, cfg.quant_bits, cfg.quant_group);
      free(sc);
      ts[k].dtype = FT_F32;
      ts[k].shape[1] = K;
      ts[k].n_elems = (uint64_t)N * K;
      ts[k].data = owned[k];
      ts[k].nbytes = (uint64_t)N * K * 4;
    }
    k++;
  }
  cfg.quant_bits = cfg.quant_group = 0;
  const char *dir = tmp_dir(out);
  cr_assert_eq(model_folder_write(dir, &cfg, ts, k, qdir, NULL, &err), LT_OK, "%s", err.msg);
  for (uint32_t i = 0; i < n; i++) free(owned[i]);
  free(owned), free(ts);
  st_destroy(&st);
  return dir;
}

Test(compress, quantised_models_compute_with_their_dequantised_weights) {
  /* int8 and int4 (group 32) of both fixtures: the quantised model's logits match those of a float model holding
   * the dequantised weights within 1e-4 (the fixture tolerance: the same products summed in another order, the
   * scale applied per octet); the weights take fewer device bytes; model_save of the quantised model writes it
   * back quantised, and it reloads with bit-identical logits. */
  const char *names[] = {"mixtral-tiny", "llama-tiny"};
  for (uint32_t k = 0; k < 2; k++)
    for (uint32_t bits = 4; bits <= 8; bits += 4) {
      compress_plan_t plan = {.bits = bits, .group = 32};
      compress_summary_t sum;
      char out[64], twin[64], saved[64];
      snprintf(out, sizeof out, "%s-q%u", names[k], bits);
      snprintf(twin, sizeof twin, "%s-q%u-twin", names[k], bits);
      snprintf(saved, sizeof saved, "%s-q%u-saved", names[k], bits);
      char qdir[400];
      snprintf(qdir, sizeof qdir, "%s", write_plan(names[k], out, &plan, NULL, &sum));
      cr_assert_gt(sum.quantised, 0);
      cr_assert_leq(sum.quant_max_rel_err, 0.5 / ((1 << (bits - 1)) - 1) + 1e-3, "error %g", sum.quant_max_rel_err);
      char fdir[400];
      snprintf(fdir, sizeof fdir, "%s", dequantised_twin(qdir, twin));
      int32_t ids[MAX_TOK];
      uint32_t n = fixture_tokens(names[k], ids);
      model_t *q = load(qdir), *f = load(fdir);
      cr_assert_eq(model_config(q)->quant_bits, bits);
      uint32_t V = model_config(q)->vocab_size;
      float *lq = logits(q, ids, n, NULL, NULL), *lf = logits(f, ids, n, NULL, NULL);
      tassert_close(lq, lf, (uint64_t)n * V, 1e-4, 0, out);
      cr_assert_lt(model_mem(q)->weight_device_bytes, model_mem(f)->weight_device_bytes);
      lt_err_t err = {0};
      const char *sdir = tmp_dir(saved);
      cr_assert_eq(model_save(q, sdir, NULL, &err), LT_OK, "%s", err.msg);
      model_t *s = load(sdir);
      cr_assert_eq(model_mem(s)->weight_device_bytes, model_mem(q)->weight_device_bytes);
      float *ls = logits(s, ids, n, NULL, NULL);
      tassert_close(ls, lq, (uint64_t)n * V, 0, 0, saved);
      free(lq), free(lf), free(ls);
      model_destroy(&q), model_destroy(&f), model_destroy(&s);
    }
}

/* ---- choices and refusals ---- */

Test(compress, choices) {
  double s[5] = {0.5, 0.9, NAN, 0.9, 0.1};
  bool drop[5] = {0}, excl[5] = {0, 0, 0, 1, 0};
  cr_assert_eq(compress_pick_highest(drop, s, 5, 2, NULL), 2);
  cr_assert(drop[1] && drop[3] && !drop[0], "the two 0.9s");
  memset(drop, 0, sizeof drop);
  cr_assert_eq(compress_pick_highest(drop, s, 5, 9, excl), 3, "NaN and excluded items are never picked");
  cr_assert(!drop[2] && !drop[3]);
  memset(drop, 0, sizeof drop);
  cr_assert_eq(compress_pick_random(drop, s, 5, 2, excl, 7), 2);
  cr_assert(!drop[2] && !drop[3]);
  /* Experts: per block keep 2 of 4; globally 2 per block on average with at least 1 each. */
  double p[8] = {0.4, 0.3, 0.2, 0.1, 0.05, 0.05, 0.6, 0.3};
  bool d[8] = {0};
  lt_err_t err = {0};
  cr_assert_eq(compress_pick_experts(d, p, 2, 4, 2, false, 2, NULL, &err), LT_OK);
  bool want[8] = {0, 0, 1, 1, 1, 1, 0, 0};
  cr_assert_arr_eq(d, want, sizeof d);
  memset(d, 0, sizeof d);
  cr_assert_eq(compress_pick_experts(d, p, 2, 4, 2, true, 1, NULL, &err), LT_OK);
  bool want_g[8] = {0, 0, 1, 1, 1, 1, 0, 0}; /* 0.6, 0.4, 0.3, 0.3 are the best four */
  cr_assert_arr_eq(d, want_g, sizeof d);
  memset(d, 0, sizeof d);
  double q[8] = {0.9, 0.8, 0.7, 0.6, 0.1, 0.1, 0.2, 0.3};
  cr_assert_eq(compress_pick_experts(d, q, 2, 4, 2, true, 1, NULL, &err), LT_OK);
  bool want_q[8] = {0, 0, 0, 1, 1, 1, 1, 0}; /* block 1 keeps its best one only */
  cr_assert_arr_eq(d, want_q, sizeof d);
  cr_assert_eq(compress_pick_experts(d, q, 2, 4, 1, false, 2, NULL, &err), LT_E_INVALID, "keep below top-k");
}

Test(compress, bad_plans_are_errors) {
  bool all[2] = {1, 1}, three[8] = {1, 1, 1, 0, 0, 0, 0, 0};
  lt_err_t err = {0};
  const char *dir = tmp_dir("bad");
  compress_plan_t a = {.drop_block = all};
  cr_assert_eq(compress_write(FIXTURES "/llama-tiny", dir, &a, NULL, NULL, &err), LT_E_INVALID);
  compress_plan_t b = {.drop_expert = three};
  cr_assert_eq(compress_write(FIXTURES "/mixtral-tiny", dir, &b, NULL, NULL, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "routed") != NULL, "%s", err.msg);
  compress_plan_t c = {.sparsity = 0.5};
  cr_assert_eq(compress_write(FIXTURES "/llama-tiny", dir, &c, NULL, NULL, &err), LT_E_INVALID);
  compress_plan_t d = {.bits = 3, .group = 32};
  cr_assert_eq(compress_write(FIXTURES "/llama-tiny", dir, &d, NULL, NULL, &err), LT_E_INVALID);
  /* A quantised folder is not compressed again. */
  compress_plan_t q = {.bits = 8, .group = 32};
  const char *qdir = write_plan("llama-tiny", "q-again", &q, NULL, NULL);
  char qcopy[400];
  snprintf(qcopy, sizeof qcopy, "%s", qdir);
  cr_assert_eq(compress_write(qcopy, tmp_dir("q-again-2"), &q, NULL, NULL, &err), LT_E_UNSUPPORTED);
}

/* ---- data and measurements ---- */

Test(compress, jsonl_streams_and_windowed_perplexity) {
  /* The token stream is each row tokenized with BOS and appended ({"text"} or prompt + completion; blank lines
   * skipped; max_tokens cuts it); a row with neither is refused naming its line. The windowed NLL equals the mean
   * of model_score's log-probabilities over the same windows (both f32 log-softmax of the same logits: 1e-5). */
  const char *path = tmp_dir("data.jsonl");
  FILE *f = fopen(path, "w");
  cr_assert(f != NULL);
  fputs("{\"text\": \"Lathe runs\"}\n\n{\"prompt\": \"Hel\", \"completion\": \"lo there, world\"}\n", f);
  fclose(f);
  lt_err_t err = {0};
  tok_t *tok = tok_new_json(FIXTURES "/llama-tiny/tokenizer.json", &err);
  cr_assert(tok != NULL, "%s", err.msg);
  int32_t *ids = NULL, *want = NULL, *b = NULL;
  uint64_t n = 0;
  size_t na = 0, nb = 0;
  cr_assert_eq(compress_read_tokens(tok, path, 0, &ids, &n, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(tok_encode(tok, "Lathe runs", 10, TOK_ADD_BOS, &want, &na, &err), LT_OK);
  cr_assert_eq(tok_encode(tok, "Hello there, world", 18, TOK_ADD_BOS, &b, &nb, &err), LT_OK);
  cr_assert_eq(n, na + nb);
  cr_assert_arr_eq(ids, want, na * 4);
  cr_assert_arr_eq(ids + na, b, nb * 4);
  int32_t *cut = NULL;
  uint64_t nc = 0;
  cr_assert_eq(compress_read_tokens(tok, path, 5, &cut, &nc, &err), LT_OK);
  cr_assert_eq(nc, 5);
  free(cut);
  model_t *m = load(FIXTURES "/llama-tiny");
  double nll;
  uint64_t scored;
  uint32_t T = 8, W = (uint32_t)(n / T);
  cr_assert_eq(compress_eval_nll(m, ids, n, T, 0, NULL, &nll, &scored, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(scored, (uint64_t)W * (T - 1));
  double sum = 0;
  float lp[8];
  for (uint32_t w = 0; w < W; w++) {
    cr_assert_eq(model_score(m, ids + w * T, T, lp, &err), LT_OK);
    for (uint32_t t = 1; t < T; t++) sum -= lp[t];
  }
  cr_assert(fabs(nll - sum / (double)scored) <= 1e-5, "windowed NLL %.7f, model_score %.7f", nll, sum / scored);
  compress_speed_t sp;
  cr_assert_eq(compress_measure(m, ids, n, 8, 4, 1, &sp, &err), LT_OK, "%s", err.msg);
  cr_assert(sp.prefill_tok_s > 0 && sp.decode_tok_s > 0 && sp.weight_device_bytes == model_mem(m)->weight_device_bytes);
  cr_assert_eq(compress_measure(m, ids, 10, 8, 4, 1, &sp, &err), LT_E_INVALID, "too few tokens");
  f = fopen(path, "a");
  fputs("{\"prompt\": \"no completion\"}\n", f);
  fclose(f);
  free(ids);
  cr_assert_eq(compress_read_tokens(tok, path, 0, &ids, &n, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, ":4:") != NULL, "names the line: %s", err.msg);
  free(want), free(b);
  model_destroy(&m);
  tok_destroy(&tok);
}
