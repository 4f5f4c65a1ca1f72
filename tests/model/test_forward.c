/* The forward pass end to end on a real model made by other people (stories260K, llama2.c), in both its Hugging
 * Face and GGUF forms: greedy generation must reproduce the known story. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "engine/generate.h"
#include "engine/model.h"
#include "engine/model_tok.h"
#include "support/tgpu.h"

#define STORIES LATHE_SOURCE_DIR "/../shared/models/stories260K"

TestSuite(forward, .init = tgpu_setup, .fini = tgpu_teardown);

static const char *known = ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a "
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
  model_free(&m);
  tok_destroy(&tok);
}

Test(forward, stories260k_hf_greedy_story) { greedy_story(STORIES "/hf"); }
Test(forward, stories260k_gguf_greedy_story) { greedy_story(STORIES "/stories260K.gguf"); }
Test(forward, stories260k_gguf_f16_greedy_story) { greedy_story(STORIES "/stories260K-f16.gguf"); }
