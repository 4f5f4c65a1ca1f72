/* Whole-model throughput: Lathe's forward pass against a CPU peer measured in the same run on the same machine.
 * The peer is a straightforward forward pass of the same weights: OpenBLAS sgemm / sgemv for every projection on
 * f32 copies of the weights, the engine's CPU references (ref_rmsnorm, ref_rope, ref_attention, ref_swiglu) for
 * the rest, and a plain f32 KV cache. Both run the same token ids, and their last-position logits are compared,
 * which keeps the peer honest.
 *
 * Two models: the one named by argv[1] (default LATHE_SOURCE_DIR/models/lathe-kjv-llama, else stories260K), and a
 * synthetic LLaMA of about 100M parameters in f16 with random weights, written by this program into a temporary
 * folder and deleted afterwards. Figures: prefill of one prompt (512 tokens for the named model, 128 for the
 * synthetic one) and of 4 such prompts, decoding at batch 1 and 4 after a 16-token prompt, and the bytes the loader
 * placed. Each figure is one timed run after a warm-up that builds every pipeline. LATHE_BENCH_QUICK=1 shrinks the
 * synthetic model's workloads (32-token prompts, 16 decoding steps instead of 32).
 *
 * With LATHE_BENCH_LLAMA=/path/to/llama-bench (tools/llama_cpp_build.sh builds it from a llama.cpp checkout kept
 * outside this repository), llama.cpp's CPU backend is a second peer: the model is written as GGUF
 * (model_export_gguf; a .gguf is taken as it is) and llama-bench runs prefill of the same length and decoding of
 * the same number of tokens on it, right after Lathe's figures, with as many threads as OpenBLAS uses. With
 * LATHE_BENCH_LLAMA_VULKAN=/path/to/llama-bench of a Vulkan build (tools/llama_cpp_build.sh --vulkan), llama.cpp's
 * Vulkan backend on the same driver is a third.
 * LATHE_BENCH_NO_FUSE=1 turns off the fused decode products (model_fuse_decode), LATHE_BENCH_NO_FUSE=rope only
 * RoPE and the KV-cache write in the q, k, v product's epilogue (model_fuse_rope), for side-by-sides.
 * LATHE_TEXEL_READS=0 reads the weights as storage buffers on CPU drivers too (op_texel_reads).
 * Usage: bench_model [model folder or .gguf]. Exit status 1 when the f16 model's logits differ by more than 1e-2. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "engine/gpu/gpu.h"
#include "engine/model/model.h"
#include "engine/model/gguf_write.h"
#include "engine/model/model_file.h"
#include "engine/ops/ref/ref.h"
#include "engine/model/safetensors.h"
#include "synth.h"

#define MAX_ITEMS 4u
#define F16_TOLERANCE 1e-2 /* largest |logit difference| accepted for the f16 model (f32 math on both sides) */

/* The synthetic folder, removed on every exit path. */
static char synth_dir[256];

/* Prints what failed, removes the synthetic folder and exits with status 1. */
static _Noreturn void die(const char *what, const char *msg) {
  fprintf(stderr, "bench_model: %s: %s\n", what, msg);
  synth_remove(synth_dir);
  exit(1);
}

/* malloc that dies on failure; caller owns the result. */
static void *xmalloc(uint64_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) die("malloc", "out of memory");
  return p;
}

/* Monotonic seconds. */
/* ---- the peer: a plain CPU forward pass ---- */

typedef struct peer_layer {
  float *attn_norm, *ffn_norm, *wq, *wk, *wv, *wo, *gate, *up, *down; /* f32, PyTorch [out, in] */
} peer_layer_t;

typedef struct peer {
  model_config_t cfg;
  bool neox;
  float *embed, *lm_head, *out_norm; /* lm_head == embed when tied */
  peer_layer_t *layers;
  uint64_t weight_bytes;
  uint32_t cap;                                       /* rows per forward */
  float *x, *xn, *q, *k, *v, *att, *gate, *up, *last; /* [cap, width] */
  int32_t *pos;
  double t_blas; /* seconds spent in OpenBLAS since the last reset */
} peer_t;

/* One sequence's KV cache: k[l] and v[l] are [cap, n_kv_heads * head_dim]. */
typedef struct peer_seq {
  float **k, **v;
  uint32_t len, cap;
} peer_seq_t;

/* An f32 copy of t, counted in the peer's weight bytes; caller owns. */
static float *peer_f32(peer_t *p, const ft_tensor_t *t) {
  lt_err_t err = {0};
  float *out = xmalloc(t->n_elems * 4);
  if (ft_tensor_to_f32(t, out, &err) != LT_OK) die("peer weights", err.msg);
  p->weight_bytes += t->n_elems * 4;
  return out;
}

/* Loads f32 copies of the weights at path for forward passes of at most cap rows. Caller owns (peer_free). */
static peer_t *peer_load(const char *path, uint32_t cap) {
  lt_err_t err = {0};
  model_file_t *f = NULL;
  if (model_file_open(&f, path, &err) != LT_OK) die("peer: model_file_open", err.msg);
  peer_t *p = calloc(1, sizeof *p);
  if (!p) die("peer", "out of memory");
  p->cfg = *model_file_config(f);
  const model_config_t *c = &p->cfg;
  if (c->n_experts) die("peer", "the CPU peer runs dense LLaMA models only");
  if (c->sliding_window && c->sliding_window < 4096) die("peer", "the CPU peer has no sliding-window attention");
  const model_weights_t *w = model_file_weights(f);
  p->neox = w->rope_neox;
  p->embed = peer_f32(p, &w->tok_embd);
  p->lm_head = w->lm_head.data == w->tok_embd.data ? p->embed : peer_f32(p, &w->lm_head);
  p->out_norm = peer_f32(p, &w->out_norm);
  p->layers = calloc(c->n_layers, sizeof *p->layers);
  if (!p->layers) die("peer", "out of memory");
  for (uint32_t l = 0; l < c->n_layers; l++) {
    const model_layer_t *s = &w->layers[l];
    peer_layer_t *d = &p->layers[l];
    d->attn_norm = peer_f32(p, &s->attn_norm), d->ffn_norm = peer_f32(p, &s->ffn_norm);
    d->wq = peer_f32(p, &s->wq), d->wk = peer_f32(p, &s->wk), d->wv = peer_f32(p, &s->wv);
    d->wo = peer_f32(p, &s->wo);
    d->gate = peer_f32(p, &s->ffn.gate), d->up = peer_f32(p, &s->ffn.up), d->down = peer_f32(p, &s->ffn.down);
  }
  model_file_destroy(&f);
  uint64_t d = c->hidden_size, qd = (uint64_t)c->n_heads * c->head_dim, kvd = (uint64_t)c->n_kv_heads * c->head_dim;
  p->cap = cap;
  p->x = xmalloc(cap * d * 4), p->xn = xmalloc(cap * d * 4), p->q = xmalloc(cap * qd * 4);
  p->k = xmalloc(cap * kvd * 4), p->v = xmalloc(cap * kvd * 4), p->att = xmalloc(cap * qd * 4);
  uint64_t ffn = c->intermediate_size;
  p->gate = xmalloc(cap * ffn * 4), p->up = xmalloc(cap * ffn * 4);
  p->last = xmalloc(MAX_ITEMS * d * 4), p->pos = xmalloc(cap * 4ull);
  return p;
}

/* Frees *pp and sets it to NULL. */
static void peer_free(peer_t **pp) {
  peer_t *p = *pp;
  if (p->lm_head != p->embed) free(p->lm_head);
  free(p->embed), free(p->out_norm);
  for (uint32_t l = 0; l < p->cfg.n_layers; l++) {
    peer_layer_t *d = &p->layers[l];
    float *all[] = {d->attn_norm, d->ffn_norm, d->wq, d->wk, d->wv, d->wo, d->gate, d->up, d->down};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
  }
  free(p->layers);
  free(p->x), free(p->xn), free(p->q), free(p->k), free(p->v), free(p->att), free(p->gate), free(p->up);
  free(p->last), free(p->pos);
  free(p);
  *pp = NULL;
}

/* An empty KV cache of cap tokens. Caller owns (peer_seq_free). */
static peer_seq_t *peer_seq_new(const peer_t *p, uint32_t cap) {
  peer_seq_t *s = calloc(1, sizeof *s);
  if (!s) die("peer", "out of memory");
  uint64_t kvd = (uint64_t)p->cfg.n_kv_heads * p->cfg.head_dim;
  s->k = xmalloc(p->cfg.n_layers * sizeof *s->k), s->v = xmalloc(p->cfg.n_layers * sizeof *s->v);
  for (uint32_t l = 0; l < p->cfg.n_layers; l++) s->k[l] = xmalloc(cap * kvd * 4), s->v[l] = xmalloc(cap * kvd * 4);
  s->cap = cap;
  return s;
}

/* Frees *sp and sets it to NULL. */
static void peer_seq_free(const peer_t *p, peer_seq_t **sp) {
  peer_seq_t *s = *sp;
  for (uint32_t l = 0; l < p->cfg.n_layers; l++) free(s->k[l]), free(s->v[l]);
  free(s->k), free(s->v), free(s);
  *sp = NULL;
}

/* y[M, N] (+)= x[M, K] . w[N, K]^T: sgemv for one row, sgemm otherwise. */
static void peer_mm(peer_t *p, float *y, const float *x, const float *w, uint32_t M, uint32_t N, uint32_t K, bool acc) {
  double t0 = now_s();
  if (M == 1)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)N, (int)K, 1.0f, w, (int)K, x, 1, acc ? 1.0f : 0.0f, y, 1);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x, (int)K, w, (int)K,
                acc ? 1.0f : 0.0f, y, (int)N);
  p->t_blas += now_s() - t0;
}

/* Appends n tokens toks[i][0..n) to each of the n_items sequences (all items the same length) and writes each
 * item's last-position logits to logits[i * vocab]. */
static void peer_forward(peer_t *p, peer_seq_t *const *seqs, const int32_t *const *toks, uint32_t n_items, uint32_t n,
                         float *logits) {
  const model_config_t *c = &p->cfg;
  uint32_t d = c->hidden_size, hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
  uint32_t ffn = c->intermediate_size, T = n_items * n;
  if (T > p->cap) die("peer", "too many rows for one pass");
  for (uint32_t i = 0; i < n_items; i++)
    for (uint32_t t = 0; t < n; t++) {
      memcpy(p->x + (uint64_t)(i * n + t) * d, p->embed + (uint64_t)toks[i][t] * d, d * 4ull);
      p->pos[i * n + t] = (int32_t)(seqs[i]->len + t);
    }
  for (uint32_t l = 0; l < c->n_layers; l++) {
    const peer_layer_t *L = &p->layers[l];
    ref_rmsnorm(p->xn, p->x, L->attn_norm, T, d, c->rms_norm_eps);
    peer_mm(p, p->q, p->xn, L->wq, T, qd, d, false);
    peer_mm(p, p->k, p->xn, L->wk, T, kvd, d, false);
    peer_mm(p, p->v, p->xn, L->wv, T, kvd, d, false);
    ref_rope(p->q, p->pos, T, c->n_heads, hd, c->rope_dim, p->neox, c->rope_theta, &c->rope_scaling);
    ref_rope(p->k, p->pos, T, c->n_kv_heads, hd, c->rope_dim, p->neox, c->rope_theta, &c->rope_scaling);
    for (uint32_t i = 0; i < n_items; i++) {
      peer_seq_t *s = seqs[i];
      memcpy(s->k[l] + (uint64_t)s->len * kvd, p->k + (uint64_t)i * n * kvd, (uint64_t)n * kvd * 4);
      memcpy(s->v[l] + (uint64_t)s->len * kvd, p->v + (uint64_t)i * n * kvd, (uint64_t)n * kvd * 4);
      ref_attention(p->att + (uint64_t)i * n * qd, p->q + (uint64_t)i * n * qd, s->k[l], s->v[l], n, c->n_heads,
                    c->n_kv_heads, hd, s->len, s->len + n, c->sliding_window, 1.0f / sqrtf((float)hd), 0.0f);
    }
    peer_mm(p, p->x, p->att, L->wo, T, d, qd, true);
    ref_rmsnorm(p->xn, p->x, L->ffn_norm, T, d, c->rms_norm_eps);
    peer_mm(p, p->gate, p->xn, L->gate, T, ffn, d, false);
    peer_mm(p, p->up, p->xn, L->up, T, ffn, d, false);
    ref_swiglu(p->gate, p->gate, p->up, T * ffn);
    peer_mm(p, p->x, p->gate, L->down, T, d, ffn, true);
  }
  for (uint32_t i = 0; i < n_items; i++) {
    ref_rmsnorm(p->last + (uint64_t)i * d, p->x + (uint64_t)(i * n + n - 1) * d, p->out_norm, 1, d, c->rms_norm_eps);
    seqs[i]->len += n;
  }
  peer_mm(p, logits, p->last, p->lm_head, n_items, c->vocab_size, d, false);
}

/* ---- running both ---- */

typedef struct workload {
  uint32_t prefill, prompt, steps; /* prefill length; decode prompt length and steps */
} workload_t;

typedef struct runner {
  model_t *m;
  peer_t *p;
  model_seq_t *ls[MAX_ITEMS];
  peer_seq_t *ps[MAX_ITEMS];
  const int32_t *toks[MAX_ITEMS];
  uint32_t vocab;
  float *lathe_logits, *peer_logits; /* [MAX_ITEMS, vocab] */
} runner_t;

/* Lathe: appends toks[i][from .. from + n) to the first n_items sequences; fills lathe_logits. */
static void lathe_step(runner_t *r, uint32_t n_items, uint32_t from, uint32_t n) {
  lt_err_t err = {0};
  model_item_t it[MAX_ITEMS];
  for (uint32_t i = 0; i < n_items; i++)
    it[i] = (model_item_t){.seq = r->ls[i],
                           .tokens = r->toks[i] + from,
                           .n_tokens = n,
                           .out = MODEL_OUT_LAST,
                           .result = r->lathe_logits + (uint64_t)i * r->vocab};
  if (model_forward(r->m, it, n_items, NULL, &err) != LT_OK) die("model_forward", err.msg);
}

/* The peer's lathe_step: fills peer_logits. */
static void peer_step(runner_t *r, uint32_t n_items, uint32_t from, uint32_t n) {
  const int32_t *t[MAX_ITEMS];
  for (uint32_t i = 0; i < n_items; i++) t[i] = r->toks[i] + from;
  peer_forward(r->p, r->ps, t, n_items, n, r->peer_logits);
}

/* Empties every sequence on both sides. */
static void reset(runner_t *r) {
  for (uint32_t i = 0; i < MAX_ITEMS; i++) model_seq_truncate(r->ls[i], 0), r->ps[i]->len = 0;
}

typedef struct figure {
  double lathe_s, peer_s, diff;
  uint64_t new_pipelines, dispatches, barriers, submits; /* Lathe's counters over the timed part */
} figure_t;

/* Times prefill (steps == 0: one pass of n tokens per item) or decoding (a prompt of n tokens, untimed, then
 * `steps` passes of one token per item) on both sides, from empty sequences. */
static figure_t measure(runner_t *r, uint32_t n_items, uint32_t n, uint32_t steps) {
  figure_t f = {0};
  gpu_t *g = model_gpu(r->m);
  reset(r);
  if (steps) lathe_step(r, n_items, 0, n), peer_step(r, n_items, 0, n);
  gpu_stats_t s0 = *gpu_stats(g);
  double t0 = now_s();
  if (!steps) lathe_step(r, n_items, 0, n);
  for (uint32_t s = 0; s < steps; s++) lathe_step(r, n_items, n + s, 1);
  f.lathe_s = now_s() - t0;
  const gpu_stats_t *s1 = gpu_stats(g);
  f.new_pipelines = s1->pipelines - s0.pipelines;
  f.dispatches = s1->dispatches - s0.dispatches, f.submits = s1->submits - s0.submits;
  f.barriers = s1->barriers - s0.barriers;
  r->p->t_blas = 0;
  t0 = now_s();
  if (!steps) peer_step(r, n_items, 0, n);
  for (uint32_t s = 0; s < steps; s++) peer_step(r, n_items, n + s, 1);
  f.peer_s = now_s() - t0;
  for (uint64_t i = 0; i < (uint64_t)n_items * r->vocab; i++) {
    double e = fabs((double)r->lathe_logits[i] - r->peer_logits[i]);
    if (!(e <= f.diff)) f.diff = e; /* NaN propagates */
  }
  return f;
}

/* Formats bytes as MiB into buf (32 bytes); returns buf. */
static const char *mib_str(char *buf, uint64_t bytes) {
  snprintf(buf, 32, "%.1f MiB", mib(bytes));
  return buf;
}

static void llama_peer(const char *env, bool offload, const char *peer, const char *path, const char *label,
                       const workload_t *w, double lathe_pp, double lathe_tg);

/* Measures every figure for the model at path; returns 1 when its logits disagree beyond tol (tol < 0: only
 * printed). */
static int bench_model(gpu_t *g, const char *path, const char *label, const workload_t *w, double tol) {
  lt_err_t err = {0};
  model_load_opts_t lo = {.max_tokens_per_pass = MAX_ITEMS * w->prefill};
  double t0 = now_s();
  runner_t r = {.m = model_load(g, path, &lo, &err)};
  if (!r.m) die("model_load", err.msg);
  double t_load = now_s() - t0;
  t0 = now_s();
  r.p = peer_load(path, MAX_ITEMS * w->prefill);
  double t_peer_load = now_s() - t0;
  const model_config_t *c = model_config(r.m);
  r.vocab = c->vocab_size;
  uint32_t cap = w->prefill > w->prompt + w->steps ? w->prefill : w->prompt + w->steps;
  int32_t *toks = xmalloc((uint64_t)MAX_ITEMS * cap * 4);
  uint64_t seed = 12345;
  for (uint64_t i = 0; i < (uint64_t)MAX_ITEMS * cap; i++) toks[i] = (int32_t)(splitmix64(&seed) % c->vocab_size);
  for (uint32_t i = 0; i < MAX_ITEMS; i++) {
    r.toks[i] = toks + (uint64_t)i * cap;
    if (!(r.ls[i] = model_seq_new(r.m, cap, &err))) die("model_seq_new", err.msg);
    r.ps[i] = peer_seq_new(r.p, cap);
  }
  r.lathe_logits = xmalloc((uint64_t)MAX_ITEMS * r.vocab * 4);
  r.peer_logits = xmalloc((uint64_t)MAX_ITEMS * r.vocab * 4);
  uint64_t params = 0;
  for (uint32_t l = 0; l < c->n_layers; l++)
    params += (uint64_t)c->hidden_size * (2 * c->n_heads + 2 * c->n_kv_heads) * c->head_dim +
              3ull * c->hidden_size * c->intermediate_size + 2ull * c->hidden_size;
  params += (uint64_t)c->vocab_size * c->hidden_size * (c->tie_word_embeddings ? 1 : 2) + c->hidden_size;
  printf("model %s: %s, %.2fM parameters (d %u, %u layers, %u/%u heads, ffn %u, vocab %u); loaded in %.2f s by "
         "lathe, %.2f s by the peer\n",
         label, path, (double)params / 1e6, c->hidden_size, c->n_layers, c->n_heads, c->n_kv_heads,
         c->intermediate_size, c->vocab_size, t_load, t_peer_load);
  /* Warm-up: every pipeline the timed runs use (GEMM rows, GEMV for 1 and for 4 rows, every attention kernel)
   * is built here (the detail lines say if one was not), and OpenBLAS starts its threads. */
  t0 = now_s();
  lathe_step(&r, 1, 0, w->prefill); /* a prompt of the prefill's length: its attention may take other kernels */
  reset(&r);
  lathe_step(&r, MAX_ITEMS, 0, w->prompt);
  lathe_step(&r, 1, w->prompt, 1);
  lathe_step(&r, MAX_ITEMS, w->prompt + 1, 1);
  peer_step(&r, MAX_ITEMS, 0, w->prompt);
  printf("model %s warm-up: %.2f s\n", label, now_s() - t0);
  static const struct {
    const char *name;
    uint32_t items;
    bool decode;
  } figs[] = {{"prefill", 1, false}, {"prefill", MAX_ITEMS, false}, {"decode", 1, true}, {"decode", MAX_ITEMS, true}};
  int bad = 0;
  double lathe_pp = 0, lathe_tg = 0; /* batch 1, for the llama.cpp peer */
  for (size_t i = 0; i < sizeof figs / sizeof figs[0]; i++) {
    figure_t f = measure(&r, figs[i].items, figs[i].decode ? w->prompt : w->prefill, figs[i].decode ? w->steps : 0);
    double toks_n = (double)figs[i].items * (figs[i].decode ? w->steps : w->prefill);
    if (figs[i].items == 1) *(figs[i].decode ? &lathe_tg : &lathe_pp) = toks_n / f.lathe_s;
    char what[64];
    if (figs[i].decode)
      snprintf(what, sizeof what, "decode batch %u (%u steps)", figs[i].items, w->steps);
    else if (figs[i].items == 1)
      snprintf(what, sizeof what, "prefill %u", w->prefill);
    else
      snprintf(what, sizeof what, "prefill %ux%u", figs[i].items, w->prefill);
    printf("model %s %s: lathe %.1f tok/s, openblas-cpu %.1f tok/s, ratio %.2f, max |logit diff| %.2g%s\n", label, what,
           toks_n / f.lathe_s, toks_n / f.peer_s, f.peer_s / f.lathe_s, f.diff,
           tol >= 0 && !(f.diff <= tol) ? " FAIL" : "");
    uint64_t passes = figs[i].decode ? w->steps : 1;
    printf("  detail: lathe %.3f s, %.0f dispatches, %.0f barriers, %.0f submits per pass%s; "
           "openblas-cpu %.3f s, %.0f%% in OpenBLAS\n",
           f.lathe_s, (double)f.dispatches / passes, (double)f.barriers / passes, (double)f.submits / passes,
           f.new_pipelines ? " (pipelines were built while timing!)" : "", f.peer_s, 100 * r.p->t_blas / f.peer_s);
    if (tol >= 0 && !(f.diff <= tol)) bad = 1;
  }
  llama_peer("LATHE_BENCH_LLAMA", false, "llama.cpp-cpu", path, label, w, lathe_pp, lathe_tg);
  llama_peer("LATHE_BENCH_LLAMA_VULKAN", true, "llama.cpp-vulkan", path, label, w, lathe_pp, lathe_tg);
  const model_mem_t *mm = model_mem(r.m);
  char a[32], b[32], d[32], e[32];
  printf("model %s memory: lathe weights %s on the device for %s in the file (ratio %.2f), activations %s; "
         "openblas-cpu weights %s (f32)\n",
         label, mib_str(a, mm->weight_device_bytes), mib_str(b, mm->weight_file_bytes),
         (double)mm->weight_device_bytes / (double)mm->weight_file_bytes, mib_str(d, mm->activation_bytes),
         mib_str(e, r.p->weight_bytes));
  for (uint32_t i = 0; i < MAX_ITEMS; i++) model_seq_destroy(&r.ls[i]), peer_seq_free(r.p, &r.ps[i]);
  free(toks), free(r.lathe_logits), free(r.peer_logits);
  peer_free(&r.p);
  model_destroy(&r.m);
  return bad;
}

/* llama-bench's mean tokens per second for its prompt test (-p) and generation test (-n) from its JSON output;
 * false when it did not run. */
static bool llama_bench(const char *bench, const char *gguf, uint32_t prefill, uint32_t steps, bool offload, double *pp,
                        double *tg) {
  char cmd[1536];
  snprintf(cmd, sizeof cmd, "'%s' -m '%s' -p %u -n %u -t %d -ngl %d -r 3 -o json 2>/dev/null", bench, gguf, prefill,
           steps, openblas_get_num_threads(), offload ? 99 : 0);
  FILE *f = popen(cmd, "r");
  if (!f) return false;
  static char out[1 << 16];
  size_t n = fread(out, 1, sizeof out - 1, f);
  out[n] = '\0';
  int st = pclose(f);
  *pp = *tg = 0;
  /* One object per test: "n_prompt": P, "n_gen": G, ... "avg_ts": T. */
  for (char *o = strstr(out, "\"n_prompt\""); o; o = strstr(o + 1, "\"n_prompt\"")) {
    long np = strtol(strchr(o, ':') + 1, NULL, 10);
    char *g = strstr(o, "\"n_gen\""), *ts = strstr(o, "\"avg_ts\"");
    if (!g || !ts) break;
    long ng = strtol(strchr(g, ':') + 1, NULL, 10);
    double v = strtod(strchr(ts, ':') + 1, NULL);
    if (np > 0 && ng == 0) *pp = v;
    if (np == 0 && ng > 0) *tg = v;
  }
  return st == 0 && *pp > 0 && *tg > 0;
}

/* A llama.cpp peer for the model at path: llama-bench named by the environment variable `env`, every layer
 * offloaded to the GPU when `offload` (a Vulkan build: the device Vulkan lists first), printed as `peer`; prints its
 * prefill and decode rates against Lathe's (lathe_pp, lathe_tg tokens per second, batch 1) as ratios. */
static void llama_peer(const char *env, bool offload, const char *peer, const char *path, const char *label,
                       const workload_t *w, double lathe_pp, double lathe_tg) {
  const char *bench = getenv(env);
  if (!bench || !*bench) return;
  char gguf[512];
  size_t len = strlen(path);
  bool own = !(len > 5 && !strcmp(path + len - 5, ".gguf"));
  lt_err_t err = {0};
  if (own) {
    snprintf(gguf, sizeof gguf, "%s/lathe-bench-%d.gguf", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    if (model_export_gguf(path, gguf, &err) != LT_OK) {
      printf("model %s %s: not measured: cannot write it as GGUF: %s\n", label, peer, err.msg);
      return;
    }
  } else {
    snprintf(gguf, sizeof gguf, "%s", path);
  }
  double pp, tg;
  if (llama_bench(bench, gguf, w->prefill, w->steps, offload, &pp, &tg)) {
    printf("model %s prefill %u: lathe %.1f tok/s, %s %.1f tok/s, ratio %.2f\n", label, w->prefill, lathe_pp, peer, pp,
           lathe_pp / pp);
    printf("model %s decode batch 1 (%u tokens): lathe %.1f tok/s, %s %.1f tok/s, ratio %.2f\n", label, w->steps,
           lathe_tg, peer, tg, lathe_tg / tg);
  } else {
    printf("model %s %s: %s did not run on %s\n", label, peer, bench, gguf);
  }
  if (own) unlink(gguf);
}

/* The model to compare first: argv[1], else lathe-kjv-llama when it exists, else stories260K. */
static const char *pick_model(int argc, char **argv, const char **label) {
  struct stat sb;
  if (argc > 1) {
    const char *slash = strrchr(argv[1], '/');
    *label = slash && slash[1] ? slash + 1 : argv[1];
    return argv[1];
  }
  if (stat(LATHE_SOURCE_DIR "/models/lathe-kjv-llama", &sb) == 0) {
    *label = "kjv-llama";
    return LATHE_SOURCE_DIR "/models/lathe-kjv-llama";
  }
  printf("note: %s not found: measuring stories260K instead\n", LATHE_SOURCE_DIR "/models/lathe-kjv-llama");
  *label = "stories260K";
  return LATHE_SOURCE_DIR "/tests/fixtures/stories260K/hf";
}

int main(int argc, char **argv) {
  const char *q = getenv("LATHE_BENCH_QUICK"), *nf = getenv("LATHE_BENCH_NO_FUSE");
  bool quick = q && *q && strcmp(q, "0") != 0;
  /* LATHE_BENCH_NO_FUSE=1: decode runs every product apart; =rope: RoPE and the cache write apart. */
  if (nf && !strcmp(nf, "rope"))
    model_fuse_rope(false);
  else if (nf && *nf && strcmp(nf, "0") != 0)
    model_fuse_decode(false);
  const char *tx = getenv("LATHE_TEXEL_READS");
  if (tx && !strcmp(tx, "0")) op_texel_reads(false);
  /* The synthetic model decodes slowly on lavapipe: fewer steps there keep the whole run to a few minutes. */
  workload_t named = {512, 16, 64};
  workload_t synth = quick ? (workload_t){32, 16, 16} : (workload_t){128, 16, 32};
  lt_err_t err = {0};
  gpu_t *g = gpu_new(NULL, &err);
  if (!g) die("gpu_new", err.msg);
  printf("device: %s; peer: OpenBLAS %s, %d threads%s\n", gpu_caps(g)->name, openblas_get_config(),
         openblas_get_num_threads(), quick ? "; LATHE_BENCH_QUICK: small workloads" : "");
  const char *label = NULL, *path = pick_model(argc, argv, &label);
  int rc = bench_model(g, path, label, &named, -1);
  double t0 = now_s();
  char msg[512];
  if (!synth_write(synth_dir, sizeof synth_dir, msg, sizeof msg)) die("synthetic model", msg);
  printf("synthetic model written to %s in %.2f s\n", synth_dir, now_s() - t0);
  rc |= bench_model(g, synth_dir, "synthetic-100M-f16", &synth, F16_TOLERANCE);
  synth_remove(synth_dir);
  if (gpu_stats(g)->validation_errors) {
    printf("validation layer: %llu errors\n", (unsigned long long)gpu_stats(g)->validation_errors);
    rc = 1;
  }
  gpu_destroy(&g);
  return rc;
}
