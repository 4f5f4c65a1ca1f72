/* llama_run: runs a GGUF file in llama.cpp (linked against a build of it kept outside this repository, made by
 * tools/check_gguf_llama_cpp.sh) and prints, as one JSON object, what Lathe's own run of the same file is compared
 * with: the prompt's token ids (BOS as the vocabulary asks), the greedy continuation with the gap between the top
 * two logits at each step, and the mean negative log-likelihood of the prompt's tokens after the first.
 * Usage: llama_run MODEL.gguf PROMPT N_NEW */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *user) {
  (void)user;
  if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static bool no_progress(float progress, void *user) {
  (void)progress, (void)user;
  return true;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: llama_run MODEL.gguf PROMPT N_NEW\n");
    return 2;
  }
  int n_new = atoi(argv[3]);
  llama_log_set(quiet, NULL);
  llama_backend_init();
  struct llama_model_params mp = llama_model_default_params();
  mp.progress_callback = no_progress;
  struct llama_model *model = llama_model_load_from_file(argv[1], mp);
  if (!model) {
    fprintf(stderr, "llama.cpp cannot load %s\n", argv[1]);
    return 1;
  }
  const struct llama_vocab *vocab = llama_model_get_vocab(model);
  int n_vocab = llama_vocab_n_tokens(vocab);
  llama_token ids[4096];
  int n = llama_tokenize(vocab, argv[2], (int32_t)strlen(argv[2]), ids, 4096 - n_new, llama_vocab_get_add_bos(vocab),
                         false);
  if (n <= 0) {
    fprintf(stderr, "cannot tokenize the prompt (%d)\n", n);
    return 1;
  }
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = (uint32_t)(n + n_new + 8);
  cp.n_batch = cp.n_ctx;
  cp.n_threads = cp.n_threads_batch = 2;
  struct llama_context *ctx = llama_init_from_model(model, cp);
  /* Every position's logits, for the likelihood of the prompt. */
  struct llama_batch b = llama_batch_init(n, 0, 1);
  for (int i = 0; i < n; i++) {
    b.token[i] = ids[i];
    b.pos[i] = i;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = 1;
  }
  b.n_tokens = n;
  if (!ctx || llama_decode(ctx, b) != 0) {
    fprintf(stderr, "llama_decode failed\n");
    return 1;
  }
  double nll = 0;
  for (int i = 0; i + 1 < n; i++) {
    const float *lg = llama_get_logits_ith(ctx, i);
    double mx = lg[0], s = 0;
    for (int v = 1; v < n_vocab; v++) mx = lg[v] > mx ? lg[v] : mx;
    for (int v = 0; v < n_vocab; v++) s += exp(lg[v] - mx);
    nll += mx + log(s) - lg[ids[i + 1]];
  }
  printf("{\"prompt_ids\": [");
  for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
  printf("], \"prompt_nll\": %.9g, \"greedy\": [", n > 1 ? nll / (n - 1) : 0.0);
  const float *lg = llama_get_logits_ith(ctx, n - 1);
  double margin[4096];
  int got = 0;
  for (int t = 0; t < n_new; t++) {
    int best = 0;
    for (int v = 1; v < n_vocab; v++)
      if (lg[v] > lg[best]) best = v;
    double second = -INFINITY;
    for (int v = 0; v < n_vocab; v++)
      if (v != best && lg[v] > second) second = lg[v];
    margin[got++] = lg[best] - second;
    printf("%s%d", t ? ", " : "", best);
    llama_token tok = best;
    if (llama_decode(ctx, llama_batch_get_one(&tok, 1)) != 0) break;
    lg = llama_get_logits_ith(ctx, -1);
  }
  printf("], \"margins\": [");
  for (int t = 0; t < got; t++) printf("%s%.6g", t ? ", " : "", margin[t]);
  printf("]}\n");
  llama_batch_free(b);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
