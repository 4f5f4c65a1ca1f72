/* First-order training cost (engine/model/train.h, methods/tune.h), in the same run:
 * - training tokens per second of full, LoRA and adapter steps (forward, backward, AdamW) on the embedded LLaMA
 *   against PyTorch on the CPU doing full steps on the same model and batch (tools/bench_train_torch.py, when
 *   Debian's python3-torch is installed; PyTorch only as a bench peer);
 * - peak device memory (gpu_stats bytes_peak, each on a fresh device) of each kind of step against the inference of
 *   the same batch (the training forward's loss alone, no gradients).
 * Model: argv[1] (default LATHE_SOURCE_DIR/models/lathe-kjv-llama). Exit status 1 on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "engine/gpu/gpu.h"
#include "engine/model/model.h"
#include "engine/model/train.h"
#include "methods/tune.h"

#define N_SEQ 8u
#define T 64u
#define STEPS 5u

static _Noreturn void die(const char *what, const char *msg) {
  fprintf(stderr, "bench_train: %s: %s\n", what, msg);
  exit(1);
}

typedef struct figure {
  double tok_s;
  uint64_t peak;
} figure_t;

/* One configuration on a fresh device: STEPS optimiser steps after a warm-up step (tokens/s), and the device's
 * peak memory. what < 0: inference of the same batch through the model's forward pass (per-token NLL). The
 * inference and full figures load the weights as f32 (as full training must); LoRA and adapter keep the file's. */
static figure_t measure(const char *path, int what, const int32_t *ids, const uint8_t *mask) {
  lt_err_t err = {0};
  gpu_opts_t go = {0};
  gpu_t *g = gpu_new(&go, &err);
  if (!g) die("gpu", err.msg);
  model_load_opts_t lo = {.force_f32 = what == TRAIN_FULL, .max_tokens_per_pass = N_SEQ * T};
  model_t *m = model_load(g, path, &lo, &err);
  if (!m) die("model", err.msg);
  figure_t f = {0};
  train_t *t = NULL;
  if (what < 0) {
    /* Inference: the model's own forward pass scoring every token of the batch (no training state at all). */
    float *nll = malloc((uint64_t)N_SEQ * T * 4);
    model_item_t it[N_SEQ];
    model_seq_t *sq[N_SEQ];
    for (uint32_t i = 0; i < N_SEQ; i++) {
      if (!(sq[i] = model_seq_new(m, T + 1, &err))) die("seq", err.msg);
      it[i] = (model_item_t){.seq = sq[i],
                             .tokens = ids + i * T,
                             .n_tokens = T - 1,
                             .out = MODEL_OUT_NLL,
                             .targets = ids + i * T + 1,
                             .result = nll + i * T};
    }
    if (model_forward(m, it, N_SEQ, NULL, &err) != LT_OK) die("forward", err.msg);
    for (uint32_t i = 0; i < N_SEQ; i++) model_seq_destroy(&sq[i]);
    free(nll);
    (void)mask;
  } else {
    train_opts_t o = {.what = (train_what_t)what,
                      .lora_rank = 8,
                      .lora_alpha = 16,
                      .lora_targets = TRAIN_LORA_Q | TRAIN_LORA_V,
                      .adapter_layer = model_config(m)->n_layers / 2};
    if (!(t = train_new(m, &o, &err))) die("train", err.msg);
    tune_opts_t to = {.lr = 1e-4, .clip = 1, .steps = STEPS + 1, .schedule = TUNE_CONSTANT};
    tuner_t *u = tuner_new(t, &to, &err);
    if (!u) die("tuner", err.msg);
    tune_batch_t b = {ids, mask, N_SEQ, T, NULL, NULL, NULL};
    tune_step_info_t info;
    if (tuner_step(u, &b, 1, &info, &err) != LT_OK) die("step", err.msg);
    double t0 = now_s();
    for (uint32_t s = 0; s < STEPS; s++)
      if (tuner_step(u, &b, 1, &info, &err) != LT_OK) die("step", err.msg);
    f.tok_s = (double)STEPS * N_SEQ * T / (now_s() - t0);
    tuner_destroy(&u);
  }
  f.peak = gpu_stats(g)->bytes_peak;
  train_destroy(&t);
  model_destroy(&m);
  gpu_destroy(&g);
  return f;
}

/* The PyTorch peer's tokens/s on the same batch, or 0 when it cannot run here. */
static double torch_peer(const char *path, const int32_t *ids) {
  char file[] = "/tmp/lathe-bench-train-XXXXXX";
  int fd = mkstemp(file);
  if (fd < 0) return 0;
  bool ok = write(fd, ids, (size_t)N_SEQ * T * 4) == (ssize_t)(N_SEQ * T * 4);
  close(fd);
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tools/bench_train_torch.py '%s' %s %u %u %u 2>/dev/null",
           LATHE_SOURCE_DIR, path, file, N_SEQ, T, STEPS);
  double v = 0;
  FILE *p = ok ? popen(cmd, "r") : NULL;
  if (p) {
    if (fscanf(p, "tokens_per_s %lf", &v) != 1) v = 0;
    pclose(p);
  }
  unlink(file);
  return v;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : LATHE_SOURCE_DIR "/models/lathe-kjv-llama";
  lt_err_t err = {0};
  gpu_t *g = gpu_new(NULL, &err);
  if (!g) die("gpu", err.msg);
  model_t *m = model_load(g, path, NULL, &err);
  if (!m) die("model", err.msg);
  uint32_t V = model_config(m)->vocab_size;
  model_destroy(&m);
  gpu_destroy(&g);
  int32_t *ids = malloc(N_SEQ * T * 4);
  uint8_t *mask = malloc(N_SEQ * (T - 1));
  uint64_t s = 0x5eed;
  for (uint32_t i = 0; i < N_SEQ * T; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    ids[i] = (int32_t)((s >> 33) % V);
  }
  memset(mask, 1, N_SEQ * (T - 1));
  figure_t inf = measure(path, -1, ids, mask);
  const char *names[] = {"full", "lora (q,v r8)", "adapter (mid block)"};
  figure_t f[3];
  for (int w = 0; w < 3; w++) f[w] = measure(path, w, ids, mask);
  double peer = torch_peer(path, ids);
  printf("train batch %ux%u on %s\n", N_SEQ, T, path);
  for (int w = 0; w < 3; w++) {
    printf("train %-20s lathe %8.1f tok/s", names[w], f[w].tok_s);
    if (peer > 0)
      printf(", pytorch-cpu full %8.1f tok/s, ratio %.2f", peer, f[w].tok_s / peer);
    else
      printf(", pytorch-cpu peer unavailable (python3-torch not installed)");
    printf("; peak device memory %.1f MiB vs inference %.1f MiB (ratio %.2f)\n", mib(f[w].peak), mib(inf.peak),
           (double)f[w].peak / (double)inf.peak);
  }
  free(ids), free(mask);
  return 0;
}
