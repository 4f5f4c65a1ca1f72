/* Compressed models against their original, measured in the same run on the same device: prefill and decode
 * throughput and the weight bytes the loader placed, as ratios to the original's, for each method of the compress
 * job alone and for block drop composed with int4. With calibration and evaluation JSONL files it also reports
 * perplexity before and after; without them it calibrates on random token ids (speed and memory do not depend
 * on what the weights learnt, only on which are kept and how they are stored).
 *
 * Usage: bench_compress [MODEL [CALIB.jsonl EVAL.jsonl]]; MODEL defaults to LATHE_SOURCE_DIR/models/lathe-kjv-moe,
 * else the mixtral-tiny fixture. The machine may be shared: each compressed model is timed in rounds alternating
 * with the original (each round a warm-up and a timed run of both), and each ratio is the best of its rounds over
 * the original's best of the same rounds. LATHE_BENCH_QUICK=1 shrinks the workloads. Exit status 1 on any
 * failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "methods/compress.h"
#include "engine/model/model_tok.h"

#define ROUNDS 5u

static char tmp_root[256];

/* Removes the temporary folder of compressed models. */
static void tmp_remove(void) {
  if (!tmp_root[0]) return;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
  if (system(cmd) != 0) fprintf(stderr, "bench_compress: could not remove %s\n", tmp_root);
  tmp_root[0] = 0;
}

/* Prints what failed, removes the temporary folder and exits with status 1. */
static _Noreturn void die(const char *what, const char *msg) {
  fprintf(stderr, "bench_compress: %s: %s\n", what, msg);
  tmp_remove();
  exit(1);
}

typedef struct variant {
  const char *name;
  compress_methods_t m;
} variant_t;

/* The model to compress: argv[1], else lathe-kjv-moe when it exists, else the mixtral-tiny fixture. */
static const char *pick_model(int argc, char **argv) {
  struct stat sb;
  if (argc > 1) return argv[1];
  if (stat(LATHE_SOURCE_DIR "/models/lathe-kjv-moe", &sb) == 0) return LATHE_SOURCE_DIR "/models/lathe-kjv-moe";
  printf("note: %s not found: measuring the mixtral-tiny fixture instead\n", LATHE_SOURCE_DIR "/models/lathe-kjv-moe");
  return LATHE_SOURCE_DIR "/tests/fixtures/mixtral-tiny";
}

/* The best of `rounds` alternating timings of a and b into *sa and *sb (speeds: the highest seen). */
static void time_pair(model_t *a, model_t *b, const int32_t *ids, uint64_t n, uint32_t T, uint32_t n_decode,
                      uint32_t rounds, compress_speed_t *sa, compress_speed_t *sb) {
  lt_err_t err = {0};
  for (uint32_t r = 0; r < rounds; r++) {
    compress_speed_t x, y;
    if (compress_measure(a, ids, n, T, n_decode, 1, &x, &err) != LT_OK) die("measure", err.msg);
    if (compress_measure(b, ids, n, T, n_decode, 1, &y, &err) != LT_OK) die("measure", err.msg);
    if (r == 0) *sa = x, *sb = y;
    sa->prefill_tok_s = fmax(sa->prefill_tok_s, x.prefill_tok_s);
    sa->decode_tok_s = fmax(sa->decode_tok_s, x.decode_tok_s);
    sb->prefill_tok_s = fmax(sb->prefill_tok_s, y.prefill_tok_s);
    sb->decode_tok_s = fmax(sb->decode_tok_s, y.decode_tok_s);
  }
}

/* ids[n] uniform in [3, vocab) from a fixed seed (ids 0..2 are special in the embedded models). Caller frees. */
static int32_t *random_ids(uint64_t n, uint32_t vocab) {
  int32_t *ids = malloc(n * sizeof *ids);
  if (!ids) die("malloc", "out of memory");
  uint64_t s = 12345;
  for (uint64_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    ids[i] = (int32_t)(3 + (s >> 33) % (vocab > 3 ? vocab - 3 : 1));
  }
  return ids;
}

int main(int argc, char **argv) {
  const char *q = getenv("LATHE_BENCH_QUICK");
  bool quick = q && *q && strcmp(q, "0") != 0;
  const char *path = pick_model(argc, argv);
  bool with_data = argc > 3;
  lt_err_t err = {0};
  gpu_t *g = gpu_new(NULL, &err);
  if (!g) die("gpu_new", err.msg);
  model_t *m = model_load(g, path, NULL, &err);
  if (!m) die(path, err.msg);
  const model_config_t *cfg = model_config(m);
  uint32_t T = quick ? 32 : 128, n_decode = quick ? 8 : 32, samples = quick ? 4 : 16, windows = quick ? 4 : 32;
  uint32_t rounds = quick ? 2 : ROUNDS;
  if (cfg->max_position && T > cfg->max_position) T = cfg->max_position;
  int32_t *cal = NULL, *ev = NULL;
  uint64_t n_cal, n_ev;
  if (with_data) {
    tok_t *tok = model_tokenizer_open(path, &err);
    if (!tok) die("tokenizer", err.msg);
    if (compress_read_tokens(tok, argv[2], 0, &cal, &n_cal, &err) != LT_OK) die(argv[2], err.msg);
    if (compress_read_tokens(tok, argv[3], (uint64_t)windows * T + T + n_decode, &ev, &n_ev, &err) != LT_OK)
      die(argv[3], err.msg);
    tok_destroy(&tok);
  } else {
    n_cal = n_ev = (uint64_t)windows * T + T + n_decode;
    cal = random_ids(n_cal, cfg->vocab_size);
    ev = random_ids(n_ev, cfg->vocab_size);
  }
  printf("device: %s; model %s (%u blocks, %u experts); prefill %u tokens, decode %u, best of %u rounds%s\n",
         gpu_caps(g)->name, path, cfg->n_layers, cfg->n_experts, T, n_decode, rounds,
         quick ? "; LATHE_BENCH_QUICK: small workloads" : "");
  compress_calib_t *calib = NULL;
  compress_calib_opts_t co = {.samples = samples, .tokens = T, .seed = 1, .inputs = true};
  if (compress_calibrate(&calib, m, cal, n_cal, &co, &err) != LT_OK) die("calibrate", err.msg);
  double nll0 = NAN, nll;
  uint64_t scored;
  if (with_data && compress_eval_nll(m, ev, n_ev, T, windows, NULL, &nll0, &scored, &err) != LT_OK)
    die("perplexity", err.msg);
  printf("%-22s %9s %9s %12s %8s %8s %8s%s\n", "model", "prefill/s", "decode/s", "weights", "prefill", "decode",
         "memory", with_data ? "  perplexity" : "");
  printf("%-22s %9s %9s %12llu %8s %8s %8s", "original", "", "", (unsigned long long)model_mem(m)->weight_device_bytes,
         "1.00x", "1.00x", "1.00x");
  if (with_data) printf("  %10.3f", exp(nll0));
  printf("\n");

  const variant_t variants[] = {
      {"block-drop 1", {.block_drop = true, .drop = 1}},
      {"layer-drop 1", {.layer_drop = true, .drop = 1}},
      {"expert-drop keep 3/4", {.expert_drop = true}},
      {"prune 2:4", {.prune = true, .keep_n = 2, .keep_m = 4}},
      {"int8 g128", {.quantize = true, .bits = 8, .group = 128}},
      {"int4 g128", {.quantize = true, .bits = 4, .group = 128}},
      {"block-drop 1 + int4", {.block_drop = true, .drop = 1, .quantize = true, .bits = 4, .group = 128}},
  };
  snprintf(tmp_root, sizeof tmp_root, "%s/lathe-bench-compress-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmp_root)) die("mkdtemp", tmp_root);
  for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
    const variant_t *v = &variants[i];
    if (v->m.expert_drop && !cfg->n_experts) continue;
    compress_choice_t ch;
    if (compress_choose(&ch, cfg, calib, &v->m, false, 0, &err) != LT_OK) die(v->name, err.msg);
    char dir[400];
    snprintf(dir, sizeof dir, "%s/%zu", tmp_root, i);
    if (compress_write(path, dir, &ch.plan, calib, NULL, &err) != LT_OK) die(v->name, err.msg);
    compress_choice_free(&ch);
    model_t *cm = model_load(g, dir, NULL, &err);
    if (!cm) die(v->name, err.msg);
    compress_speed_t base, s;
    time_pair(m, cm, ev, n_ev, T, n_decode, rounds, &base, &s);
    if (with_data && compress_eval_nll(cm, ev, n_ev, T, windows, NULL, &nll, &scored, &err) != LT_OK)
      die(v->name, err.msg);
    printf("%-22s %9.1f %9.1f %12llu %7.2fx %7.2fx %7.2fx", v->name, s.prefill_tok_s, s.decode_tok_s,
           (unsigned long long)s.weight_device_bytes, s.prefill_tok_s / base.prefill_tok_s,
           s.decode_tok_s / base.decode_tok_s, (double)s.weight_device_bytes / (double)base.weight_device_bytes);
    if (with_data) printf("  %10.3f", exp(nll));
    printf("\n");
    fflush(stdout);
    model_destroy(&cm);
  }
  int rc = 0;
  if (gpu_stats(g)->validation_errors) {
    printf("validation layer: %llu errors\n", (unsigned long long)gpu_stats(g)->validation_errors);
    rc = 1;
  }
  compress_calib_destroy(&calib);
  model_destroy(&m);
  free(cal), free(ev);
  tmp_remove();
  gpu_destroy(&g);
  return rc;
}
