/* Two-pass steering against plain generation on the same model in the same run: the time per generated token of
 * CogSteer's contrastive intervention (a contrastive twin of every prompt, its heads read and the base heads
 * steered at one block) and of ROSE (a reverse-prompt twin, logits combined), each as a ratio to plain greedy
 * decoding. Both twins of a prompt go through one model_forward call per token (one pass over the weights), so
 * the ratio should stay well under 2. The per-token time runs from the first new token to the last, which leaves
 * the prefill out; each figure is the best of five rounds that interleave the three, after a warm-up. Batch 1
 * and batch 4.
 * Model: argv[1], else LATHE_SOURCE_DIR/models/lathe-kjv-llama when present, else stories260K.
 * LATHE_BENCH_QUICK=1 shortens the runs. A ratio of 2 or more is flagged in the output; the exit status stays 0
 * for it (on a shared CPU-only machine one busy round can push a ratio past 2), 1 only when something fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "clock.h"
#include "engine/model/model_tok.h"
#include "methods/steer.h"

#define MAX_BATCH 4
#define ROUNDS 5

static _Noreturn void die(const char *what, const char *msg) {
  fprintf(stderr, "bench_steer: %s: %s\n", what, msg);
  exit(1);
}

typedef struct setup {
  model_t *m;
  const int32_t *prompts[MAX_BATCH], *twins[MAX_BATCH];
  uint32_t lens[MAX_BATCH], twin_lens[MAX_BATCH];
} setup_t;

/* When prompt 0 got its first and its latest token. */
typedef struct clock_ctx {
  double first, last;
} clock_ctx_t;

static bool on_step(void *ctx, uint32_t item, const int32_t *tokens, uint32_t n) {
  clock_ctx_t *c = ctx;
  (void)tokens;
  if (item == 0) {
    if (n == 1) c->first = now_s();
    c->last = now_s();
  }
  return true;
}

/* Seconds per decoding step of n prompts under s, from the first new token to the k-th (the prefill and the first
 * step are left out). */
static double per_token(setup_t *b, const steer_cfg_t *s, uint32_t n, uint32_t k) {
  lt_err_t err = {0};
  gen_opts_t o = {.max_tokens = k, .ignore_eos = true};
  gen_result_t res[MAX_BATCH];
  clock_ctx_t c = {0};
  if (steer_generate(b->m, s, b->prompts, b->lens, n, &o, on_step, &c, res, &err) != LT_OK) die("generate", err.msg);
  for (uint32_t i = 0; i < n; i++) free(res[i].tokens);
  return (c.last - c.first) / (k - 1);
}

static int32_t *encode(tok_t *t, const char *text, uint32_t *n) {
  lt_err_t err = {0};
  int32_t *ids = NULL;
  size_t len = 0;
  if (tok_encode(t, text, strlen(text), TOK_ADD_BOS, &ids, &len, &err) != LT_OK) die("encode", err.msg);
  *n = (uint32_t)len;
  return ids;
}

int main(int argc, char **argv) {
  struct stat sb;
  const char *path = argc > 1 ? argv[1]
                     : stat(LATHE_SOURCE_DIR "/models/lathe-kjv-llama/config.json", &sb) == 0
                         ? LATHE_SOURCE_DIR "/models/lathe-kjv-llama"
                         : LATHE_SOURCE_DIR "/tests/fixtures/stories260K/hf";
  const char *q = getenv("LATHE_BENCH_QUICK");
  bool quick = q && *q && strcmp(q, "0") != 0;
  uint32_t k = quick ? 24 : 64;
  lt_err_t err = {0};
  gpu_t *g = gpu_new(NULL, &err);
  if (!g) die("gpu_new", err.msg);
  tok_t *tok = model_tokenizer_open(path, &err);
  if (!tok) die(path, err.msg);
  setup_t b = {.m = model_load(g, path, NULL, &err)};
  if (!b.m) die(path, err.msg);
  const model_config_t *cf = model_config(b.m);
  static const char *const texts[MAX_BATCH] = {"In the beginning", "And it came to pass, when", "The LORD said unto",
                                               "Blessed are they that"};
  int32_t *owned[2 * MAX_BATCH];
  for (int i = 0; i < MAX_BATCH; i++) {
    char twin[256];
    snprintf(twin, sizeof twin, "They wept and mourned in sorrow. %s", texts[i]);
    b.prompts[i] = owned[i] = encode(tok, texts[i], &b.lens[i]);
    b.twins[i] = owned[MAX_BATCH + i] = encode(tok, twin, &b.twin_lens[i]);
  }
  steer_cfg_t contrast = {.method = STEER_CONTRAST,
                          .layer = cf->n_layers / 2,
                          .exponent = 0.4f,
                          .renorm = true,
                          .twins = b.twins,
                          .twin_lens = b.twin_lens};
  steer_cfg_t rose = {.method = STEER_ROSE, .alpha = 0.5f, .twins = b.twins, .twin_lens = b.twin_lens};
  printf("model %s (%u blocks, hidden %u) on %s; per decoding step over %u tokens, best of %d\n", path, cf->n_layers,
         cf->hidden_size, gpu_caps(g)->name, k, ROUNDS);
  const steer_cfg_t *cfgs[3] = {NULL, &contrast, &rose};
  for (uint32_t n = 1; n <= MAX_BATCH; n *= 4) {
    /* Rounds interleave the three so that a busy machine slows them alike; the best round of each counts. */
    double best[3] = {1e30, 1e30, 1e30};
    for (int m = 0; m < 3; m++) per_token(&b, cfgs[m], n, 4); /* warm-up: pipelines, caches */
    for (int r = 0; r < ROUNDS; r++)
      for (int m = 0; m < 3; m++) {
        double t = per_token(&b, cfgs[m], n, k);
        best[m] = t < best[m] ? t : best[m];
      }
    printf("batch %u: plain %.3f ms/token\n", n, best[0] * 1e3);
    printf("batch %u: contrastive intervention (layer %u) %.3f ms/token = %.2fx plain%s\n", n, contrast.layer,
           best[1] * 1e3, best[1] / best[0], best[1] / best[0] < 2 ? "" : "  (NOT under 2x)");
    printf("batch %u: ROSE %.3f ms/token = %.2fx plain%s\n", n, best[2] * 1e3, best[2] / best[0],
           best[2] / best[0] < 2 ? "" : "  (NOT under 2x)");
  }
  for (int i = 0; i < 2 * MAX_BATCH; i++) free(owned[i]);
  model_destroy(&b.m);
  tok_destroy(&tok);
  gpu_destroy(&g);
  return 0;
}
