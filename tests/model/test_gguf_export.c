/* Hugging Face folders written as GGUF files (engine/model/gguf_write.c) and read back: the same logits and greedy
 * tokens as the folder, the same token ids from the converted tokenizer (also against llama.cpp's own conversion of
 * stories260K), Lathe's int8 / int4 weights as Q8_0 / Q4_0 blocks, and what has no GGUF form refused. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model/generate.h"
#include "engine/model/gguf_write.h"
#include "engine/model/model.h"
#include "engine/model/model_tok.h"
#include "methods/compress.h"
#include "support/tgpu.h"

#define FIXTURES LATHE_SOURCE_DIR "/tests/fixtures"

TestSuite(gguf_export, .init = tgpu_setup, .fini = tgpu_teardown);

static char tmp_dir[64];

/* A fresh temporary folder (removed by the test's end through rm -rf in cleanup()). */
static const char *fresh(void) {
  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/lathe-gguf-XXXXXX");
  cr_assert(mkdtemp(tmp_dir));
  return tmp_dir;
}

static void cleanup(const char *dir) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
}

/* Logits of every position of ids (one prefill). Caller frees. */
static float *logits(const char *path, const int32_t *ids, uint32_t n, uint32_t *V) {
  lt_err_t err = {0};
  model_t *m = model_load(tgpu(), path, NULL, &err);
  cr_assert(m, "%s: %s", path, err.msg);
  *V = model_config(m)->vocab_size;
  model_seq_t *s = model_seq_new(m, 64, &err);
  float *out = talloc((uint64_t)n * *V);
  model_item_t it = {.seq = s, .tokens = ids, .n_tokens = n, .out = MODEL_OUT_ALL, .result = out};
  cr_assert_eq(model_forward(m, &it, 1, NULL, &err), LT_OK, "%s", err.msg);
  model_seq_destroy(&s);
  model_destroy(&m);
  return out;
}

/* Ids of text under the tokenizer of path. Caller frees. */
static int32_t *encode(const char *path, const char *text, size_t *n) {
  lt_err_t err = {0};
  tok_t *t = model_tokenizer_open(path, &err);
  cr_assert(t, "%s: %s", path, err.msg);
  int32_t *ids = NULL;
  cr_assert_eq(tok_encode(t, text, strlen(text), TOK_ADD_BOS, &ids, n, &err), LT_OK, "%s", err.msg);
  tok_destroy(&t);
  return ids;
}

/* Texts for a real vocabulary (whitespace runs, a tab, digits, accents, CJK, an emoji through byte fallback), and
 * for the fixtures' 96-token toy vocabulary (printable ASCII only). */
static const char *const texts[] = {"Once upon a time, there was a little girl.", "  two  spaces\tand a tab\n",
                                    "digits 12345 and unicode: caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82",
                                    "Lathe runs"};
static const char *const toy_texts[] = {"Once upon a time, there was a little girl.", "Lathe runs  twice: 12345!"};

/* The folder and its GGUF copy: the same token ids for every text; the same logits over the tokens of the first
 * (1e-4: the GGUF copy of a LLaMA computes RoPE on interleaved pairs, the same rotation summed in another order). */
static void same_model(const char *folder, bool toy) {
  const char *const *tx = toy ? toy_texts : texts;
  size_t n_tx = toy ? sizeof toy_texts / sizeof toy_texts[0] : sizeof texts / sizeof texts[0];
  const char *dir = fresh();
  char out[PATH_MAX];
  snprintf(out, sizeof out, "%s/model.gguf", dir);
  lt_err_t err = {0};
  cr_assert_eq(model_export_gguf(folder, out, &err), LT_OK, "%s", err.msg);
  for (size_t k = 0; k < n_tx; k++) {
    size_t na, nb;
    int32_t *a = encode(folder, tx[k], &na), *b = encode(out, tx[k], &nb);
    cr_assert_eq(na, nb, "%s: \"%s\" is %zu tokens in the folder, %zu in the GGUF copy", folder, tx[k], na, nb);
    cr_assert_arr_eq(a, b, na * sizeof *a, "%s: \"%s\" tokenises differently", folder, tx[k]);
    free(a), free(b);
  }
  size_t n;
  int32_t *ids = encode(folder, tx[0], &n);
  uint32_t V, V2;
  float *a = logits(folder, ids, (uint32_t)n, &V), *b = logits(out, ids, (uint32_t)n, &V2);
  cr_assert_eq(V, V2);
  tassert_close(b, a, (uint64_t)n * V, 1e-4, 1e-5, folder);
  free(a), free(b), free(ids);
  cleanup(dir);
}

Test(gguf_export, llama_byte_level_bpe) { same_model(FIXTURES "/llama-tiny", true); }

Test(gguf_export, qwen2_biases_tied) { same_model(FIXTURES "/qwen2-tiny", true); }

/* Mixtral: each block's experts stacked into ffn_gate_exps / ffn_up_exps / ffn_down_exps, the router as
 * ffn_gate_inp, expert_count and expert_used_count (what Lathe's GGUF reader and llama.cpp take apart again). */
Test(gguf_export, mixtral_experts_stacked) { same_model(FIXTURES "/mixtral-tiny", true); }

/* Phi-3 with its window: written as llama.cpp's phi3, q/k/v fused back into attn_qkv and gate/up into ffn_up. */
Test(gguf_export, phi3_fused_with_its_window) { same_model(FIXTURES "/phi3-tiny", true); }

/* Gemma 2 as llama.cpp's gemma2: norms written as 1 + w, the soft-caps and the window under their keys, rotate-half
 * RoPE, and read back with llama.cpp's rules (sliding block first, then every other one; the query scale from the
 * shape). The fixture's query_pre_attn_scalar (24) is no head size, so a copy with 16, its head_dim, goes out; the
 * toy text runs past the window of 4, so a wrong block order or window changes the logits. */
Test(gguf_export, gemma2_norms_plus_one_softcaps_and_windows) {
  char dir[] = "/tmp/lathe-gemma2-XXXXXX";
  cr_assert(mkdtemp(dir));
  char cmd[PATH_MAX + 128], path[PATH_MAX];
  snprintf(cmd, sizeof cmd, "cp %s/gemma2-tiny/*.json %s/gemma2-tiny/model.safetensors %s", FIXTURES, FIXTURES, dir);
  cr_assert_eq(system(cmd), 0);
  snprintf(path, sizeof path, "%s/config.json", dir);
  json_error_t je;
  json_t *cfg = json_load_file(path, 0, &je);
  cr_assert(cfg, "%s", je.text);
  json_object_set_new(cfg, "query_pre_attn_scalar", json_integer(16));
  cr_assert_eq(json_dump_file(cfg, path, JSON_INDENT(2)), 0);
  json_decref(cfg);
  same_model(dir, true);
  cleanup(dir);
}

Test(gguf_export, stories260k_sentencepiece_style) {
  /* A real model with a SentencePiece-style BPE vocabulary (byte fallback): the folder and its GGUF copy agree, and
   * the copy tokenises as llama.cpp's own conversion of the same model (stories260K.gguf) does. */
  same_model(FIXTURES "/stories260K/hf", false);
  const char *dir = fresh();
  char out[PATH_MAX];
  snprintf(out, sizeof out, "%s/model.gguf", dir);
  lt_err_t err = {0};
  cr_assert_eq(model_export_gguf(FIXTURES "/stories260K/hf", out, &err), LT_OK, "%s", err.msg);
  for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
    size_t na, nb;
    int32_t *a = encode(FIXTURES "/stories260K/stories260K.gguf", texts[k], &na), *b = encode(out, texts[k], &nb);
    cr_assert_eq(na, nb, "\"%s\": %zu tokens by llama.cpp's conversion, %zu by ours", texts[k], na, nb);
    cr_assert_arr_eq(a, b, na * sizeof *a, "\"%s\" tokenises differently from llama.cpp's conversion", texts[k]);
    free(a), free(b);
  }
  cleanup(dir);
}

Test(gguf_export, int8_and_int4_become_q8_0_and_q4_0) {
  /* llama-tiny compressed by Lathe's RTN quantiser in groups of 32, then written as GGUF: the same integers and
   * scales as Q8_0 / Q4_0 blocks, so the same logits up to the f32 order of the sums. */
  for (uint32_t bits = 8; bits >= 4; bits -= 4) {
    const char *dir = fresh();
    char q[PATH_MAX], out[PATH_MAX];
    snprintf(q, sizeof q, "%s/q", dir);
    snprintf(out, sizeof out, "%s/q.gguf", dir);
    lt_err_t err = {0};
    compress_plan_t plan = {.bits = bits, .group = 32};
    cr_assert_eq(compress_write(FIXTURES "/llama-tiny", q, &plan, NULL, NULL, &err), LT_OK, "%s", err.msg);
    cr_assert_eq(model_export_gguf(q, out, &err), LT_OK, "%s", err.msg);
    size_t n;
    int32_t *ids = encode(q, texts[0], &n);
    uint32_t V, V2;
    float *a = logits(q, ids, (uint32_t)n, &V), *b = logits(out, ids, (uint32_t)n, &V2);
    tassert_close(b, a, (uint64_t)n * V, 1e-4, 1e-5, bits == 8 ? "Q8_0" : "Q4_0");
    /* The blocks are read in place: the GGUF copy is much smaller on the device than f32. */
    model_t *m = model_load(tgpu(), out, NULL, &err);
    cr_assert(m, "%s", err.msg);
    const model_param_t *wq = NULL;
    for (uint32_t i = 0; i < model_param_count(m); i++)
      if (strstr(model_param_at(m, i)->name, "q_proj")) wq = model_param_at(m, i);
    cr_assert(wq && wq->dtype == (bits == 8 ? LT_Q8_0 : LT_Q4_0), "q_proj is %s", wq ? lt_dtype_str(wq->dtype) : "?");
    model_destroy(&m);
    free(a), free(b), free(ids);
    cleanup(dir);
    if (bits == 4) break;
  }
}

Test(gguf_export, what_has_no_gguf_form_is_refused) {
  const char *dir = fresh();
  char out[PATH_MAX], q[PATH_MAX];
  snprintf(out, sizeof out, "%s/x.gguf", dir);
  lt_err_t err = {0};

  cr_assert_eq(model_export_gguf(FIXTURES "/mistral-swa-tiny", out, &err), LT_E_UNSUPPORTED);
  cr_assert(strstr(err.msg, "sliding window"), "%s", err.msg);
  cr_assert_eq(model_export_gguf(FIXTURES "/gemma2-tiny", out, &err), LT_E_UNSUPPORTED);
  cr_assert(strstr(err.msg, "query_pre_attn_scalar"), "%s", err.msg);
  /* Groups of 64 have no block format. */
  snprintf(q, sizeof q, "%s/q", dir);
  compress_plan_t plan = {.bits = 8, .group = 64};
  cr_assert_eq(compress_write(FIXTURES "/llama-tiny", q, &plan, NULL, NULL, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(model_export_gguf(q, out, &err), LT_E_UNSUPPORTED);
  cr_assert(strstr(err.msg, "--group 32"), "%s", err.msg);
  cr_assert_neq(access(out, F_OK), 0, "a refused export left a file");
  cleanup(dir);
}
