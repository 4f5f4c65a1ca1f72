/* The forward pass end to end on a real model made by other people (stories260K, llama2.c), in both its Hugging
 * Face and GGUF forms: greedy generation must reproduce the known story. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/generate.h"
#include "engine/model/model.h"
#include "engine/model/model_tok.h"
#include "support/tgpu.h"

#define STORIES LATHE_SOURCE_DIR "/tests/fixtures/stories260K"

TestSuite(forward, .init = tgpu_setup, .fini = tgpu_teardown);

static const char *known =
    ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a "
    "big, red ball.";

static void greedy_story(const char *model_path) {
  lt_err_t err = {0};
  /* The GGUF forms use their embedded vocabulary, the HF form its tokenizer.json. */
  tok_t *tok = model_tokenizer_open(model_path, &err);
  cr_assert(tok != NULL, "tokenizer: %s", err.msg);
  model_t *m = model_load(tgpu(), model_path, NULL, &err);
  cr_assert(m != NULL, "model_load(%s): %s", model_path, err.msg);
  int32_t *ids = NULL;
  size_t n = 0;
  cr_assert_eq(tok_encode(tok, "Once upon a time", 16, TOK_ADD_BOS, &ids, &n, &err), LT_OK, "%s", err.msg);
  const int32_t *prompts[1] = {ids};
  uint32_t lens[1] = {(uint32_t)n};
  gen_opts_t o = {.max_tokens = 48};
  gen_result_t r[1];
  cr_assert_eq(model_generate(m, prompts, lens, 1, &o, NULL, NULL, NULL, r, &err), LT_OK, "%s", err.msg);
  char *text = NULL;
  size_t len = 0;
  cr_assert_eq(tok_decode(tok, r[0].tokens, r[0].n_tokens, TOK_KEEP_LEADING, &text, &len, &err), LT_OK, "%s", err.msg);
  cr_log_info("%s: Once upon a time%s", model_path, text);
  cr_assert(strncmp(text, known, strlen(known)) == 0, "greedy output differs:\n got: %s\nwant: %s", text, known);
  free(text);
  free(r[0].tokens);
  free(ids);
  model_destroy(&m);
  tok_destroy(&tok);
}

Test(forward, stories260k_hf_greedy_story) { greedy_story(STORIES "/hf"); }
Test(forward, stories260k_gguf_greedy_story) { greedy_story(STORIES "/stories260K.gguf"); }
Test(forward, stories260k_gguf_f16_greedy_story) { greedy_story(STORIES "/stories260K-f16.gguf"); }

/* Loads stories260K (HF form) for the consistency tests below. */
static model_t *stories(void) {
  lt_err_t err = {0};
  model_t *m = model_load(tgpu(), STORIES "/hf", NULL, &err);
  cr_assert(m != NULL, "model_load: %s", err.msg);
  return m;
}

static const int32_t story_ids[] = {1, 403, 407, 261, 378, 275, 302, 261, 361, 401, 408, 384, 276, 293, 270, 302};
#define N_STORY (sizeof story_ids / sizeof story_ids[0])

/* Logits of every position from one prefill. Caller frees. */
static float *prefill_all(model_t *m, const int32_t *ids, uint32_t n, const model_hooks_t *h) {
  lt_err_t err = {0};
  uint32_t V = model_config(m)->vocab_size;
  model_seq_t *s = model_seq_new(m, 64, &err);
  cr_assert(s != NULL, "%s", err.msg);
  float *out = talloc((uint64_t)n * V);
  model_item_t it = {.seq = s, .tokens = ids, .n_tokens = n, .out = MODEL_OUT_ALL, .result = out};
  cr_assert_eq(model_forward(m, &it, 1, h, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(model_seq_len(s), n);
  model_seq_destroy(&s);
  return out;
}

Test(forward, cached_decoding_matches_prefill) {
  /* Token-by-token decoding through the KV cache must give the logits a single prefill gives at each position.
   * Both are f32 with differently ordered sums (the GEMM path for prefill, GEMV for one row, and attention over
   * different key splits): logits of magnitude ~10 agree to 1e-4 relative / 2e-4 absolute. */
  model_t *m = stories();
  lt_err_t err = {0};
  uint32_t V = model_config(m)->vocab_size;
  float *all = prefill_all(m, story_ids, N_STORY, NULL);
  model_seq_t *s = model_seq_new(m, 64, &err);
  float *one = talloc(V);
  for (uint32_t t = 0; t < N_STORY; t++) {
    model_item_t it = {.seq = s, .tokens = &story_ids[t], .n_tokens = 1, .out = MODEL_OUT_LAST, .result = one};
    cr_assert_eq(model_forward(m, &it, 1, NULL, &err), LT_OK, "%s", err.msg);
    tassert_close(one, all + (uint64_t)t * V, V, 2e-4, 1e-4, "decode vs prefill");
  }
  /* A prefill split in two (the second part attends to the cached first part) agrees as well. */
  model_seq_truncate(s, 0);
  model_item_t a = {.seq = s, .tokens = story_ids, .n_tokens = 7, .out = MODEL_OUT_NONE};
  cr_assert_eq(model_forward(m, &a, 1, NULL, &err), LT_OK, "%s", err.msg);
  float *rest = talloc((uint64_t)(N_STORY - 7) * V);
  model_item_t b = {.seq = s, .tokens = story_ids + 7, .n_tokens = N_STORY - 7, .out = MODEL_OUT_ALL, .result = rest};
  cr_assert_eq(model_forward(m, &b, 1, NULL, &err), LT_OK, "%s", err.msg);
  tassert_close(rest, all + 7ull * V, (uint64_t)(N_STORY - 7) * V, 2e-4, 1e-4, "chunked prefill");
  free(rest), free(one), free(all);
  model_seq_destroy(&s);
  model_destroy(&m);
}

Test(forward, batch_equals_single_sequences) {
  /* Three prompts of different lengths in one batch give the same greedy tokens as each alone. */
  model_t *m = stories();
  lt_err_t err = {0};
  const int32_t *prompts[3] = {story_ids, story_ids + 3, story_ids + 1};
  uint32_t lens[3] = {5, 9, 2};
  gen_opts_t o = {.max_tokens = 12};
  gen_result_t batch[3], single[1];
  cr_assert_eq(model_generate(m, prompts, lens, 3, &o, NULL, NULL, NULL, batch, &err), LT_OK, "%s", err.msg);
  for (uint32_t i = 0; i < 3; i++) {
    cr_assert_eq(model_generate(m, &prompts[i], &lens[i], 1, &o, NULL, NULL, NULL, single, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(batch[i].n_tokens, single[0].n_tokens, "prompt %u: %u vs %u tokens", i, batch[i].n_tokens,
                 single[0].n_tokens);
    cr_assert_arr_eq(batch[i].tokens, single[0].tokens, single[0].n_tokens * sizeof(int32_t), "prompt %u", i);
    free(single[0].tokens);
    free(batch[i].tokens);
  }
  model_destroy(&m);
}

Test(forward, device_selected_candidates_sample_like_the_host) {
  /* Greedy and top-k sampling (with and without top-p) through candidates the device selects (MODEL_OUT_TOP, a
   * step downloads k ids and logits) choose the same tokens as sampling the downloaded logits on the host, for
   * the same seeds, in a batch of three prompts; and the sampled runs do differ from greedy (the draws matter). */
  model_t *m = stories();
  lt_err_t err = {0};
  const int32_t *prompts[3] = {story_ids, story_ids + 3, story_ids + 1};
  uint32_t lens[3] = {5, 9, 2};
  /* {0.8, 40, 0.95} is the generate job's default; 64 is MODEL_TOP_MAX. Top-p with no top-k (the feedback job's
   * {0.1, 0, 0.9}) takes the device's 64 largest and the row's mass: at 0.3 with 0.5 the nucleus fits them, at 2.0
   * with 0.99 it outgrows them and those rows' logits come down (outgrown: 0 never, 1 some rows, -1 either).
   * sampled: 1 the tokens differ from greedy's, 0 they equal them (top_k 1), -1 either (a nucleus that peaked). */
  static const sample_opts_t opts[] = {{0, 0, 1},         {1.0f, 20, 1},   {0.8f, 32, 0.9f},
                                       {0.8f, 40, 0.95f}, {1.2f, 64, 1},   {1.5f, 1, 1},
                                       {0.3f, 0, 0.5f},   {1.2f, 0, 0.9f}, {2.0f, 0, 0.99f}};
  static const int outgrown[] = {0, 0, 0, 0, 0, 0, 0, -1, 1}, sampled[] = {0, 1, 1, 1, 1, 0, -1, 1, 1};
  gen_result_t greedy[3];
  for (size_t c = 0; c < sizeof opts / sizeof opts[0]; c++) {
    gen_result_t dev[3], host[3];
    gen_opts_t o = {.max_tokens = 24, .sample = opts[c], .seed = 1234 + c, .ignore_eos = true};
    uint64_t d0 = gpu_stats(tgpu())->bytes_downloaded;
    cr_assert_eq(model_generate(m, prompts, lens, 3, &o, NULL, NULL, NULL, dev, &err), LT_OK, "%s", err.msg);
    uint64_t d1 = gpu_stats(tgpu())->bytes_downloaded;
    o.host_sampling = true;
    cr_assert_eq(model_generate(m, prompts, lens, 3, &o, NULL, NULL, NULL, host, &err), LT_OK, "%s", err.msg);
    uint64_t d2 = gpu_stats(tgpu())->bytes_downloaded;
    /* 24 steps x 3 prompts: the host path downloads every step's 512 logits, the device path k ids and logits. */
    uint64_t V = model_config(m)->vocab_size, cand = opts[c].temperature <= 0 ? 1 : opts[c].top_k;
    bool nucleus = opts[c].temperature > 0 && opts[c].top_k == 0;
    if (nucleus) cand = MODEL_TOP_MAX;
    uint64_t dev_bytes = 24 * 3 * (cand * 8 + (nucleus ? 4 : 0));
    cr_assert_geq(d2 - d1, 24 * 3 * V * 4, "options %zu: the host path downloaded %llu bytes", c,
                  (unsigned long long)(d2 - d1));
    if (outgrown[c] == 0)
      cr_assert_leq(d1 - d0, dev_bytes, "options %zu: the device path downloaded %llu bytes", c,
                    (unsigned long long)(d1 - d0));
    if (outgrown[c] == 1)
      cr_assert_geq(d1 - d0, dev_bytes + V * 4, "options %zu: no row's nucleus outgrew the candidates (%llu bytes)", c,
                    (unsigned long long)(d1 - d0));
    bool differs = false;
    for (uint32_t i = 0; i < 3; i++) {
      cr_assert_eq(dev[i].n_tokens, 24, "options %zu, prompt %u: %u tokens", c, i, dev[i].n_tokens);
      cr_assert_eq(host[i].n_tokens, 24, "options %zu, prompt %u: %u tokens", c, i, host[i].n_tokens);
      cr_assert_arr_eq(dev[i].tokens, host[i].tokens, 24 * sizeof(int32_t), "options %zu, prompt %u", c, i);
      if (c == 0)
        greedy[i] = dev[i];
      else
        differs |= memcmp(dev[i].tokens, greedy[i].tokens, 24 * sizeof(int32_t)) != 0, free(dev[i].tokens);
      free(host[i].tokens);
    }
    if (c > 0 && sampled[c] >= 0)
      cr_assert_eq(differs, sampled[c] == 1, "options %zu: sampled tokens %s greedy's", c,
                   differs ? "differ from" : "equal");
  }
  for (uint32_t i = 0; i < 3; i++) free(greedy[i].tokens);
  model_destroy(&m);
}

Test(forward, score_matches_log_softmax_of_logits) {
  /* model_score's log-probabilities (log-sum-exp on the GPU) equal log-softmax of the full logits computed here
   * in double: f32 logsumexp over 512 terms, 1e-4 absolute. */
  model_t *m = stories();
  lt_err_t err = {0};
  uint32_t V = model_config(m)->vocab_size;
  float *all = prefill_all(m, story_ids, N_STORY, NULL);
  float lp[N_STORY], want[N_STORY];
  cr_assert_eq(model_score(m, story_ids, N_STORY, lp, &err), LT_OK, "%s", err.msg);
  want[0] = 0;
  for (uint32_t i = 1; i < N_STORY; i++) {
    const float *row = all + (uint64_t)(i - 1) * V;
    double mx = row[0], sum = 0;
    for (uint32_t v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
    for (uint32_t v = 0; v < V; v++) sum += exp(row[v] - mx);
    want[i] = (float)(row[story_ids[i]] - mx - log(sum));
  }
  tassert_close(lp, want, N_STORY, 1e-4, 0, "log-probabilities");
  free(all);
  model_destroy(&m);
}

typedef struct capture {
  float *h[8];
  uint32_t n;
} capture_t;

static void on_resid(void *ctx, uint32_t layer, uint32_t item, const float *h, uint32_t n, uint32_t d) {
  capture_t *c = ctx;
  (void)item;
  c->h[layer] = malloc((uint64_t)n * d * 4);
  memcpy(c->h[layer], h, (uint64_t)n * d * 4);
  c->n = n;
}

static bool on_attn_noop(void *ctx, uint32_t layer, uint32_t item, float *heads, uint32_t n, uint32_t nh, uint32_t hd) {
  (void)ctx, (void)layer, (void)item, (void)heads, (void)n, (void)nh, (void)hd;
  return true; /* claim a change: the unchanged values are written back */
}

Test(forward, hooks_read_and_leave_the_model_unchanged) {
  model_t *m = stories();
  const model_config_t *cf = model_config(m);
  uint32_t V = cf->vocab_size, d = cf->hidden_size;
  float *base = prefill_all(m, story_ids, N_STORY, NULL);
  /* Reading the residual stream of every layer, adding a zero-scaled vector, and writing attention outputs back
   * unchanged must not change the logits at all (bit-for-bit: the same kernels run on the same data). */
  bool cap[6] = {true, true, true, true, true, true};
  capture_t got = {0};
  float vec[64];
  for (uint32_t i = 0; i < d; i++) vec[i] = 1.0f;
  model_hooks_t h = {.ctx = &got,
                     .capture_resid = cap,
                     .on_resid = on_resid,
                     .add_vec = vec,
                     .add_layer = 2,
                     .add_alpha = 0.0f,
                     .on_attn = on_attn_noop,
                     .attn_layer = 3};
  float *hooked = prefill_all(m, story_ids, N_STORY, &h);
  tassert_close(hooked, base, (uint64_t)N_STORY * V, 0, 0, "hooked logits");
  cr_assert_eq(got.n, N_STORY);
  for (uint32_t l = 0; l <= cf->n_layers; l++) cr_assert(got.h[l] != NULL, "layer %u reported", l);
  /* h_0 is the embedding of the tokens: the first row equals embedding row of BOS, which is nonzero. */
  double norm0 = 0;
  for (uint32_t i = 0; i < d; i++) norm0 += fabs(got.h[0][i]);
  cr_assert(norm0 > 0, "h_0 is not the embedding");
  /* A non-zero steering vector changes the logits. */
  h.add_alpha = 2.0f;
  h.on_resid = NULL;
  float *steered = prefill_all(m, story_ids, N_STORY, &h);
  double diff = 0;
  for (uint64_t i = 0; i < (uint64_t)N_STORY * V; i++) diff += fabs(steered[i] - base[i]);
  cr_assert(diff > 1.0, "adding 2 * ones at layer 2 changed the logits by only %g", diff);
  for (uint32_t l = 0; l <= cf->n_layers; l++) free(got.h[l]);
  free(base), free(hooked), free(steered);
  model_destroy(&m);
}

Test(forward, skipping_a_block_equals_running_it_as_identity) {
  /* With block 2 skipped, the residual stream entering block 3 equals the one entering block 2. */
  model_t *m = stories();
  bool skip[5] = {false, false, true, false, false}, cap[6] = {false, false, true, true, false, false};
  capture_t got = {0};
  model_hooks_t h = {.ctx = &got, .capture_resid = cap, .on_resid = on_resid, .skip_block = skip};
  float *out = prefill_all(m, story_ids, N_STORY, &h);
  tassert_close(got.h[3], got.h[2], (uint64_t)N_STORY * model_config(m)->hidden_size, 0, 0, "h3 == h2");
  free(got.h[2]), free(got.h[3]), free(out);
  model_destroy(&m);
}

Test(forward, bad_input_is_refused) {
  model_t *m = stories();
  lt_err_t err = {0};
  model_seq_t *s = model_seq_new(m, 8, &err);
  float out[512];
  int32_t bad[2] = {1, 999};
  model_item_t it = {.seq = s, .tokens = bad, .n_tokens = 2, .out = MODEL_OUT_LAST, .result = out};
  cr_assert_eq(model_forward(m, &it, 1, NULL, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "999") != NULL, "%s", err.msg);
  int32_t many[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  it.tokens = many;
  it.n_tokens = 9;
  cr_assert_eq(model_forward(m, &it, 1, NULL, &err), LT_E_LIMIT, "capacity");
  cr_assert_eq(model_seq_len(s), 0);
  model_seq_destroy(&s);
  cr_assert_null(model_load(tgpu(), "/nonexistent/model", NULL, &err));
  cr_assert(strstr(err.msg, "/nonexistent/model") != NULL, "%s", err.msg);
  model_destroy(&m);
}

typedef struct seen {
  uint32_t items[8], tokens[8], n;
} seen_t;

static void on_resid_seen(void *ctx, uint32_t layer, uint32_t item, const float *h, uint32_t n, uint32_t d) {
  (void)h, (void)d;
  seen_t *s = ctx;
  if (layer == 0 && s->n < 8) s->items[s->n] = item, s->tokens[s->n++] = n;
}

Test(forward, hooks_name_the_callers_items_across_passes) {
  /* With room for 8 tokens per pass, items of 5, 6 and 2 tokens run as passes {0, 1 (3 of 6)}, {1 (3), 2}: hooks
   * must report the caller's item indices, not the positions inside each pass. */
  lt_err_t err = {0};
  model_load_opts_t o = {.max_tokens_per_pass = 8};
  model_t *m = model_load(tgpu(), STORIES "/hf", &o, &err);
  cr_assert(m != NULL, "%s", err.msg);
  model_seq_t *s[3];
  model_item_t it[3];
  uint32_t lens[3] = {5, 6, 2};
  for (int i = 0; i < 3; i++) {
    s[i] = model_seq_new(m, 16, &err);
    it[i] = (model_item_t){.seq = s[i], .tokens = story_ids, .n_tokens = lens[i], .out = MODEL_OUT_NONE};
  }
  bool cap[6] = {true};
  seen_t seen = {0};
  model_hooks_t h = {.ctx = &seen, .capture_resid = cap, .on_resid = on_resid_seen};
  cr_assert_eq(model_forward(m, it, 3, &h, &err), LT_OK, "%s", err.msg);
  uint32_t want_items[4] = {0, 1, 1, 2}, want_tokens[4] = {5, 3, 3, 2};
  cr_assert_eq(seen.n, 4, "reports: %u", seen.n);
  for (uint32_t i = 0; i < 4; i++) {
    cr_assert_eq(seen.items[i], want_items[i], "report %u names item %u, want %u", i, seen.items[i], want_items[i]);
    cr_assert_eq(seen.tokens[i], want_tokens[i], "report %u has %u tokens, want %u", i, seen.tokens[i], want_tokens[i]);
  }
  for (int i = 0; i < 3; i++) model_seq_destroy(&s[i]);
  model_destroy(&m);
}

/* A stop token ends a sequence as the model's end-of-sequence token does: the greedy story stops just before the
 * first appearance of its sixth token, which is not part of the result; the other prompt of the batch is not cut
 * unless it meets that token too. */
Test(forward, stop_ids_end_a_sequence_like_eos) {
  lt_err_t err = {0};
  tok_t *tok = model_tokenizer_open(STORIES "/stories260K.gguf", &err);
  cr_assert(tok, "%s", err.msg);
  model_t *m = model_load(tgpu(), STORIES "/stories260K.gguf", NULL, &err);
  cr_assert(m, "%s", err.msg);
  int32_t *a = NULL, *b = NULL;
  size_t na = 0, nb = 0;
  cr_assert_eq(tok_encode(tok, "Once upon a time", 16, TOK_ADD_BOS, &a, &na, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(tok_encode(tok, "The dog", 7, TOK_ADD_BOS, &b, &nb, &err), LT_OK, "%s", err.msg);
  const int32_t *prompts[2] = {a, b};
  uint32_t lens[2] = {(uint32_t)na, (uint32_t)nb};
  gen_opts_t o = {.max_tokens = 24};
  gen_result_t plain[2], stopped[2];
  cr_assert_eq(model_generate(m, prompts, lens, 2, &o, NULL, NULL, NULL, plain, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(plain[0].n_tokens, 24);
  int32_t stop = plain[0].tokens[5];
  uint32_t at = 0;
  while (plain[0].tokens[at] != stop) at++;
  o.stop_ids = &stop, o.n_stop_ids = 1;
  cr_assert_eq(model_generate(m, prompts, lens, 2, &o, NULL, NULL, NULL, stopped, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(stopped[0].n_tokens, at);
  cr_assert(stopped[0].stopped_at_eos);
  cr_assert_arr_eq(stopped[0].tokens, plain[0].tokens, at * sizeof(int32_t));
  uint32_t bat = 0;
  while (bat < plain[1].n_tokens && plain[1].tokens[bat] != stop) bat++;
  cr_assert_eq(stopped[1].n_tokens, bat, "the other prompt stops at the same token or not at all");
  cr_assert_arr_eq(stopped[1].tokens, plain[1].tokens, bat * sizeof(int32_t));
  for (int i = 0; i < 2; i++) free(plain[i].tokens), free(stopped[i].tokens);
  free(a), free(b);
  model_destroy(&m);
  tok_destroy(&tok);
}

/* Decodes n steps of stories260K (model_path) from the story's first token at batch `items`, the last logits of
 * each step into out[step * items * V ...]; returns the dispatches recorded. */
static uint64_t decode_steps(const char *model_path, uint32_t items, uint32_t n, float *out) {
  lt_err_t err = {0};
  model_t *m = model_load(tgpu(), model_path, NULL, &err);
  cr_assert(m != NULL, "%s", err.msg);
  uint32_t V = model_config(m)->vocab_size;
  model_seq_t *s[4];
  model_item_t it[4];
  uint64_t before = gpu_stats(tgpu())->dispatches;
  for (uint32_t i = 0; i < items; i++) cr_assert((s[i] = model_seq_new(m, 64, &err)) != NULL, "%s", err.msg);
  for (uint32_t t = 0; t < n; t++) {
    for (uint32_t i = 0; i < items; i++)
      it[i] = (model_item_t){.seq = s[i],
                             .tokens = &story_ids[(t + i) % N_STORY],
                             .n_tokens = 1,
                             .out = MODEL_OUT_LAST,
                             .result = out + ((uint64_t)t * items + i) * V};
    cr_assert_eq(model_forward(m, it, items, NULL, &err), LT_OK, "%s", err.msg);
  }
  uint64_t used = gpu_stats(tgpu())->dispatches - before;
  for (uint32_t i = 0; i < items; i++) model_seq_destroy(&s[i]);
  model_destroy(&m);
  return used;
}

Test(forward, fused_decode_gives_the_same_logits_in_fewer_dispatches) {
  /* Decoding runs each block's attention norm, q, k and v products as one dispatch (op_gemv_qkv with the norm
   * folded in) and its MLP norm, gate, up and activation as one (op_gemv_glu) where it can: the logits of 8 decode
   * steps, at batch 1 and 4, in f32 and f16, agree with the separate ops (same greedy tokens), with eight dispatches
   * fewer per block and step: the norm and the three products (4 -> 1), RoPE on q and k in the products' epilogue
   * (2 -> 0), the MLP's norm, two products and activation (4 -> 1); at batch 1, 5 per block and 4 more per step. */
  static const char *const paths[] = {STORIES "/stories260K.gguf", STORIES "/stories260K-f16.gguf"};
  for (int pi = 0; pi < 2; pi++)
    for (uint32_t items = 1; items <= 4; items += 3) {
      uint32_t V = 512, L = 5, n = 8;
      float *fused = talloc((uint64_t)n * items * V), *apart = talloc((uint64_t)n * items * V);
      model_fuse_decode(false);
      uint64_t d_apart = decode_steps(paths[pi], items, n, apart);
      model_fuse_decode(true);
      uint64_t d_fused = decode_steps(paths[pi], items, n, fused);
      /* The folded norm sums its squares in another order than the norm op: f32 rounding, logits of magnitude ~10
       * within 1e-4 relative / 2e-4 absolute as in cached_decoding_matches_prefill, and the same greedy token. */
      tassert_close(fused, apart, (uint64_t)n * items * V, 2e-4, 1e-4, "fused vs separate ops");
      for (uint64_t r = 0; r < (uint64_t)n * items; r++) {
        uint32_t af = 0, aa = 0;
        for (uint32_t v = 1; v < V; v++) {
          if (fused[r * V + v] > fused[r * V + af]) af = v;
          if (apart[r * V + v] > apart[r * V + aa]) aa = v;
        }
        cr_assert_eq(af, aa, "%s batch %u row %llu: greedy token %u fused, %u apart", paths[pi], items,
                     (unsigned long long)r, af, aa);
      }
      /* Per block: the q, k, v product, the attention of each sequence, o, gate-and-up, down. */
      cr_assert_eq(d_fused, ((4ull + items) * L + 4) * n, "%s batch %u: %llu dispatches fused", paths[pi], items,
                   (unsigned long long)d_fused);
      cr_assert_eq(d_apart - d_fused, 8ull * L * n, "%s batch %u: %llu dispatches apart, %llu fused", paths[pi], items,
                   (unsigned long long)d_apart, (unsigned long long)d_fused);
      cr_log_info("%s batch %u: %.1f dispatches per step fused, %.1f apart", paths[pi], items, (double)d_fused / n,
                  (double)d_apart / n);
      free(fused), free(apart);
    }
}

Test(forward, input_embeddings_from_outside) {
  /* Tokens 2..5 of a prompt enter as vectors from outside: their own token embeddings give the same logits to the
   * bit; other vectors change every later position's logits but none before them; a range past the tokens is
   * refused. */
  lt_err_t err = {0};
  model_load_opts_t o = {.force_f32 = true};
  model_t *m = model_load(tgpu(), LATHE_SOURCE_DIR "/tests/fixtures/llama-tiny", &o, &err);
  cr_assert(m, "%s", err.msg);
  uint32_t d = model_config(m)->hidden_size, V = model_config(m)->vocab_size, n = 9;
  const model_param_t *e = NULL;
  for (uint32_t i = 0; i < model_param_count(m); i++)
    if (!strcmp(model_param_at(m, i)->name, "model.embed_tokens.weight")) e = model_param_at(m, i);
  cr_assert_not_null(e);
  float *table = tread_f32(e->buf, (uint64_t)e->rows * e->cols);
  int32_t ids[9] = {1, 17, 33, 2, 90, 41, 7, 60, 5};
  float *emb = talloc(4 * d), *a = talloc((uint64_t)n * V), *b = talloc((uint64_t)n * V), *c = talloc((uint64_t)n * V);
  for (uint32_t k = 0; k < 4; k++) memcpy(emb + (uint64_t)k * d, table + (uint64_t)ids[2 + k] * d, d * 4);
  float *outs[3] = {a, b, c};
  for (int run = 0; run < 3; run++) {
    if (run == 2)
      for (uint64_t i = 0; i < 4ull * d; i++) emb[i] = -emb[i];
    model_seq_t *s = model_seq_new(m, 16, &err);
    model_item_t it = {.seq = s, .tokens = ids, .n_tokens = n, .out = MODEL_OUT_ALL, .result = outs[run]};
    if (run > 0) it.embeds = emb, it.embeds_at = 2, it.n_embeds = 4;
    cr_assert_eq(model_forward(m, &it, 1, NULL, &err), LT_OK, "%s", err.msg);
    model_seq_destroy(&s);
  }
  cr_assert_eq(memcmp(a, b, (uint64_t)n * V * 4), 0, "the tokens' own embeddings from outside change the logits");
  cr_assert_eq(memcmp(a, c, 2ull * V * 4), 0, "positions before the outside rows moved");
  for (uint32_t t = 2; t < n; t++)
    cr_assert_neq(memcmp(a + (uint64_t)t * V, c + (uint64_t)t * V, V * 4), 0, "row %u", t);
  model_seq_t *s = model_seq_new(m, 16, &err);
  model_item_t bad = {.seq = s, .tokens = ids, .n_tokens = n, .embeds = emb, .embeds_at = 7, .n_embeds = 4};
  cr_assert_eq(model_forward(m, &bad, 1, NULL, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "input embeddings for tokens 7..11 of 9"), "%s", err.msg);
  model_seq_destroy(&s);
  free(table), free(emb), free(a), free(b), free(c);
  model_destroy(&m);
}
