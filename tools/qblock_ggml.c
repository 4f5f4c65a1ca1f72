/* Makes Lathe's block-format fixtures with ggml, the quantiser llama.cpp and ollama use (an independent
 * implementation of GGUF's block formats). Built by tools/qblock_fixtures.sh against a ggml built from a copy of
 * its source kept outside the repository; never part of Lathe's build.
 *
 *   qblock_ggml blocks OUTDIR          OUTDIR/<TYPE>.bin for each block format: "LQB1", u32 rows, u32 cols, the rows
 *                                      ggml quantised from a fixed pseudo-random matrix, then ggml's own
 *                                      dequantisation of them (f32)
 *   qblock_ggml legacy SRC.gguf OUT    SRC's tensors quantised to a mixture of the 32-element formats (Q4_0, Q4_1,
 *                                      Q5_0, Q5_1, Q8_0 by block and role; F16 where a row is no multiple of 32,
 *                                      norms F32), metadata and tokenizer carried over
   *   qblock_ggml read FILE.gguf         reads a GGUF file with ggml: keys, tensors, mean |w| of each dequantised
 *   qblock_ggml dequant FILE.gguf DIR  DIR/weights.safetensors (every tensor dequantised by ggml, F32, GGUF names)
 *                                      and DIR/meta.json (the hyper-parameters), for tools/qblock_reference.py
 *   qblock_ggml kquant SRC.gguf OUT    a LLaMA of width 256 (FFN 512, 2 blocks, 4 heads, 2 KV heads) with
 *                                      seeded random weights, quantised Q4_K_M-style (Q4_K, Q6_K for V and the
 *                                      down projection in block 0, Q5_K / Q3_K / Q2_K in block 1), with SRC's
 *                                      tokenizer (its vocabulary must hold 512 tokens) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "gguf.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;

static double uniform(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return ((rng >> 11) + 0.5) / 9007199254740992.0;
}

static float gauss(void) { return (float)(sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform())); }

static int blocks(const char *dir) {
  const enum ggml_type types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                                  GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};
  enum { ROWS = 4, COLS = 512 };
  static float src[ROWS * COLS], back[ROWS * COLS];
  for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
    /* Rows of different scales, a few outliers, one row with a positive offset (exercises the mins). */
    for (int r = 0; r < ROWS; r++)
      for (int c = 0; c < COLS; c++) {
        float v = gauss() * (r + 1) * 0.02f;
        if (c % 97 == 13) v *= 8;
        if (r == 3) v += 0.05f;
        src[r * COLS + c] = v;
      }
    size_t row_bytes = ggml_row_size(types[t], COLS);
    unsigned char *q = malloc(ROWS * row_bytes);
    ggml_quantize_chunk(types[t], src, q, 0, ROWS, COLS, NULL);
    ggml_get_type_traits(types[t])->to_float(q, back, ROWS * COLS);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.bin", dir, ggml_type_name(types[t]));
    for (char *p = path + strlen(dir); *p; p++) /* ggml names them "q4_K": the files use GGUF's "Q4_K" */
      if (*p == 'q') *p = 'Q';
    FILE *f = fopen(path, "wb");
    uint32_t hdr[2] = {ROWS, COLS};
    if (!f || fwrite("LQB1", 4, 1, f) != 1 || fwrite(hdr, 4, 2, f) != 2 || fwrite(q, row_bytes, ROWS, f) != ROWS ||
        fwrite(back, 4, ROWS * COLS, f) != ROWS * COLS || fclose(f) != 0) {
      fprintf(stderr, "cannot write %s\n", path);
      return 1;
    }
    free(q);
  }
  return 0;
}

/* Writes the tensors (f32 data in ctx) quantised to the types pick() chooses, with src's metadata, to out. */
static int write_quantised(struct gguf_context *meta, struct ggml_context *ctx, struct ggml_tensor **ts, int n,
                           enum ggml_type (*pick)(const struct ggml_tensor *), const char *out) {
  struct gguf_context *o = gguf_init_empty();
  gguf_set_kv(o, meta);
  gguf_set_val_u32(o, "general.file_type", 15); /* "mostly Q4_K_M"-style mixture; Lathe does not read it */
  void **bufs = calloc(n, sizeof *bufs);
  for (int i = 0; i < n; i++) {
    struct ggml_tensor *t = ts[i];
    enum ggml_type ty = pick(t);
    int64_t cols = t->ne[0], rows = ggml_nrows(t);
    size_t bytes = ggml_row_size(ty, cols) * rows;
    bufs[i] = malloc(bytes);
    const float *f = t->data;
    if (ty == GGML_TYPE_F32)
      memcpy(bufs[i], f, bytes);
    else if (ty == GGML_TYPE_F16)
      for (int64_t j = 0; j < cols * rows; j++) ((ggml_fp16_t *)bufs[i])[j] = ggml_fp32_to_fp16(f[j]);
    else
      ggml_quantize_chunk(ty, f, bufs[i], 0, rows, cols, NULL);
    gguf_add_tensor(o, t);
    gguf_set_tensor_type(o, t->name, ty);
    gguf_set_tensor_data(o, t->name, bufs[i]);
    fprintf(stderr, "%-28s %-5s [%lld, %lld]\n", t->name, ggml_type_name(ty), (long long)rows, (long long)cols);
  }
  bool ok = gguf_write_to_file(o, out, false);
  for (int i = 0; i < n; i++) free(bufs[i]);
  free(bufs);
  gguf_free(o);
  (void)ctx;
  if (!ok) fprintf(stderr, "cannot write %s\n", out);
  return ok ? 0 : 1;
}

static int block_of(const char *name) {
  int b = -1;
  return sscanf(name, "blk.%d.", &b) == 1 ? b : -1;
}

static enum ggml_type pick_legacy(const struct ggml_tensor *t) {
  if (ggml_n_dims(t) < 2) return GGML_TYPE_F32;
  if (t->ne[0] % 32) return GGML_TYPE_F16; /* as llama.cpp's quantiser falls back */
  if (strstr(t->name, "token_embd")) return GGML_TYPE_Q8_0;
  if (strstr(t->name, "output.weight")) return GGML_TYPE_Q8_0;
  static const enum ggml_type cycle[] = {GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                                         GGML_TYPE_Q8_0};
  int role = strstr(t->name, "attn_q")     ? 0
             : strstr(t->name, "attn_k")   ? 1
             : strstr(t->name, "attn_v")   ? 2
             : strstr(t->name, "attn_out") ? 3
             : strstr(t->name, "ffn_gate") ? 4
                                           : 5;
  return cycle[(block_of(t->name) + role) % 5];
}

static enum ggml_type pick_kquant(const struct ggml_tensor *t) {
  if (ggml_n_dims(t) < 2) return GGML_TYPE_F32;
  if (strstr(t->name, "token_embd")) return GGML_TYPE_Q4_K;
  if (strstr(t->name, "output.weight")) return GGML_TYPE_Q6_K;
  int b = block_of(t->name);
  bool v = strstr(t->name, "attn_v") != NULL, down = strstr(t->name, "ffn_down") != NULL;
  if (b == 0) return v || down ? GGML_TYPE_Q6_K : GGML_TYPE_Q4_K;
  if (v) return GGML_TYPE_Q5_K;
  if (down) return GGML_TYPE_Q3_K;
  if (strstr(t->name, "attn_k")) return GGML_TYPE_Q2_K;
  return GGML_TYPE_Q4_K;
}

static int legacy(const char *src, const char *out) {
  struct ggml_context *ctx = NULL;
  struct gguf_init_params p = {.no_alloc = false, .ctx = &ctx};
  struct gguf_context *g = gguf_init_from_file(src, p);
  if (!g) return fprintf(stderr, "cannot read %s\n", src), 1;
  int n = (int)gguf_get_n_tensors(g);
  struct ggml_tensor **ts = calloc(n, sizeof *ts);
  for (int i = 0; i < n; i++) {
    ts[i] = ggml_get_tensor(ctx, gguf_get_tensor_name(g, i));
    if (ts[i]->type != GGML_TYPE_F32) return fprintf(stderr, "%s: %s is not F32\n", src, ts[i]->name), 1;
  }
  int rc = write_quantised(g, ctx, ts, n, pick_legacy, out);
  free(ts);
  gguf_free(g);
  ggml_free(ctx);
  return rc;
}

static int kquant(const char *src, const char *out) {
  enum { D = 256, F = 512, L = 2, H = 4, KVH = 2, V = 512 };
  struct gguf_init_params p = {.no_alloc = true, .ctx = NULL};
  struct gguf_context *g = gguf_init_from_file(src, p);
  if (!g) return fprintf(stderr, "cannot read %s\n", src), 1;
  struct gguf_context *meta = gguf_init_empty();
  gguf_set_kv(meta, g);
  gguf_set_val_str(meta, "general.name", "lathe-kquant-fixture");
  gguf_set_val_u32(meta, "llama.embedding_length", D);
  gguf_set_val_u32(meta, "llama.feed_forward_length", F);
  gguf_set_val_u32(meta, "llama.block_count", L);
  gguf_set_val_u32(meta, "llama.attention.head_count", H);
  gguf_set_val_u32(meta, "llama.attention.head_count_kv", KVH);
  gguf_set_val_u32(meta, "llama.rope.dimension_count", D / H);
  struct ggml_init_params ip = {.mem_size = 64u << 20, .mem_buffer = NULL, .no_alloc = false};
  struct ggml_context *ctx = ggml_init(ip);
  struct ggml_tensor *ts[3 + 9 * L];
  int n = 0;
  struct {
    const char *name;
    int64_t cols, rows; /* rows 0: a norm vector */
  } spec[] = {{"attn_norm", D, 0},        {"attn_q", D, D},      {"attn_k", D, D / H * KVH},
              {"attn_v", D, D / H * KVH}, {"attn_output", D, D}, {"ffn_norm", D, 0},
              {"ffn_gate", D, F},         {"ffn_up", D, F},      {"ffn_down", F, D}};
  ts[n] = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, D, V), ggml_set_name(ts[n++], "token_embd.weight");
  for (int b = 0; b < L; b++)
    for (size_t s = 0; s < sizeof spec / sizeof spec[0]; s++) {
      char name[64];
      snprintf(name, sizeof name, "blk.%d.%s.weight", b, spec[s].name);
      ts[n] = spec[s].rows ? ggml_new_tensor_2d(ctx, GGML_TYPE_F32, spec[s].cols, spec[s].rows)
                           : ggml_new_tensor_1d(ctx, GGML_TYPE_F32, spec[s].cols);
      ggml_set_name(ts[n++], name);
    }
  ts[n] = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, D), ggml_set_name(ts[n++], "output_norm.weight");
  ts[n] = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, D, V), ggml_set_name(ts[n++], "output.weight");
  for (int i = 0; i < n; i++) {
    float *f = ts[i]->data;
    int64_t ne = ggml_nelements(ts[i]);
    bool norm = ggml_n_dims(ts[i]) == 1, embd = strstr(ts[i]->name, "token_embd") != NULL;
    float sd = embd ? 1.0f : 1.0f / sqrtf((float)ts[i]->ne[0]);
    for (int64_t j = 0; j < ne; j++) f[j] = norm ? 1.0f + 0.1f * gauss() : sd * gauss();
  }
  int rc = write_quantised(meta, ctx, ts, n, pick_kquant, out);
  gguf_free(meta);
  gguf_free(g);
  ggml_free(ctx);
  return rc;
}

/* Reads a GGUF file with ggml's own reader: its metadata count, each tensor's type and shape, and the mean |w| of
 * its values dequantised by ggml (a check that another implementation reads what Lathe wrote). */
static int read_file(const char *path) {
  struct ggml_context *ctx = NULL;
  struct gguf_init_params p = {.no_alloc = false, .ctx = &ctx};
  struct gguf_context *g = gguf_init_from_file(path, p);
  if (!g) return fprintf(stderr, "ggml cannot read %s\n", path), 1;
  printf("%s: GGUF v%u, %lld keys, %lld tensors, architecture %s, tokenizer %s with %zu tokens\n", path,
         gguf_get_version(g), (long long)gguf_get_n_kv(g), (long long)gguf_get_n_tensors(g),
         gguf_get_val_str(g, gguf_find_key(g, "general.architecture")),
         gguf_find_key(g, "tokenizer.ggml.model") >= 0 ? gguf_get_val_str(g, gguf_find_key(g, "tokenizer.ggml.model"))
                                                       : "(none)",
         gguf_find_key(g, "tokenizer.ggml.tokens") >= 0 ? gguf_get_arr_n(g, gguf_find_key(g, "tokenizer.ggml.tokens"))
                                                        : (size_t)0);
  for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
    struct ggml_tensor *t = ggml_get_tensor(ctx, gguf_get_tensor_name(g, i));
    int64_t n = ggml_nelements(t);
    float *f = malloc((size_t)n * sizeof *f);
    if (t->type == GGML_TYPE_F32)
      memcpy(f, t->data, (size_t)n * 4);
    else
      ggml_get_type_traits(t->type)->to_float(t->data, f, n);
    double s = 0;
    for (int64_t j = 0; j < n; j++) s += fabs(f[j]);
    printf("  %-28s %-5s [%lld, %lld] mean |w| %.6f\n", t->name, ggml_type_name(t->type), (long long)t->ne[1],
           (long long)t->ne[0], s / (double)n);
    free(f);
  }
  gguf_free(g);
  ggml_free(ctx);
  return 0;
}

/* Writes OUTDIR/weights.safetensors (every tensor of FILE as F32, dequantised by ggml, under its GGUF name and
 * row-major shape) and OUTDIR/meta.json (the llama.* hyper-parameters), for tools/qblock_reference.py. */
static int dequant_file(const char *path, const char *dir) {
  struct ggml_context *ctx = NULL;
  struct gguf_init_params p = {.no_alloc = false, .ctx = &ctx};
  struct gguf_context *g = gguf_init_from_file(path, p);
  if (!g) return fprintf(stderr, "ggml cannot read %s\n", path), 1;
  int64_t n = gguf_get_n_tensors(g);
  size_t hcap = 1 << 20, hl = 0;
  char *h = malloc(hcap);
  uint64_t off = 0;
  hl += (size_t)snprintf(h + hl, hcap - hl, "{");
  for (int64_t i = 0; i < n; i++) {
    struct ggml_tensor *t = ggml_get_tensor(ctx, gguf_get_tensor_name(g, i));
    uint64_t bytes = (uint64_t)ggml_nelements(t) * 4;
    hl += (size_t)snprintf(h + hl, hcap - hl, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[", i ? "," : "", t->name);
    for (int d = ggml_n_dims(t) - 1; d >= 0; d--)
      hl += (size_t)snprintf(h + hl, hcap - hl, "%lld%s", (long long)t->ne[d], d ? "," : "");
    hl += (size_t)snprintf(h + hl, hcap - hl, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                           (unsigned long long)(off + bytes));
    off += bytes;
  }
  hl += (size_t)snprintf(h + hl, hcap - hl, "}");
  while (hl % 8) h[hl++] = ' ';
  char out[4096];
  snprintf(out, sizeof out, "%s/weights.safetensors", dir);
  FILE *f = fopen(out, "wb");
  uint64_t hlen = hl;
  if (!f || fwrite(&hlen, 8, 1, f) != 1 || fwrite(h, 1, hl, f) != hl)
    return fprintf(stderr, "cannot write %s\n", out), 1;
  for (int64_t i = 0; i < n; i++) {
    struct ggml_tensor *t = ggml_get_tensor(ctx, gguf_get_tensor_name(g, i));
    int64_t ne = ggml_nelements(t);
    float *v = malloc((size_t)ne * 4);
    if (t->type == GGML_TYPE_F32)
      memcpy(v, t->data, (size_t)ne * 4);
    else
      ggml_get_type_traits(t->type)->to_float(t->data, v, ne);
    if (fwrite(v, 4, (size_t)ne, f) != (size_t)ne) return fprintf(stderr, "cannot write %s\n", out), 1;
    free(v);
  }
  fclose(f);
  snprintf(out, sizeof out, "%s/meta.json", dir);
  f = fopen(out, "w");
  const char *arch = gguf_get_val_str(g, gguf_find_key(g, "general.architecture"));
  static const char *const keys[] = {"embedding_length",     "feed_forward_length",     "block_count",
                                     "attention.head_count", "attention.head_count_kv", "context_length"};
  fprintf(f, "{\"architecture\": \"%s\"", arch);
  char k[128];
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    snprintf(k, sizeof k, "%s.%s", arch, keys[i]);
    int64_t id = gguf_find_key(g, k);
    if (id >= 0) fprintf(f, ", \"%s\": %u", keys[i], gguf_get_val_u32(g, id));
  }
  static const char *const fkeys[] = {"rope.freq_base", "attention.layer_norm_rms_epsilon"};
  for (size_t i = 0; i < 2; i++) {
    snprintf(k, sizeof k, "%s.%s", arch, fkeys[i]);
    int64_t id = gguf_find_key(g, k);
    if (id >= 0) fprintf(f, ", \"%s\": %.9g", fkeys[i], gguf_get_val_f32(g, id));
  }
  fprintf(f, "}\n");
  fclose(f);
  free(h);
  gguf_free(g);
  ggml_free(ctx);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "blocks")) return blocks(argv[2]);
  if (argc == 4 && !strcmp(argv[1], "legacy")) return legacy(argv[2], argv[3]);
  if (argc == 4 && !strcmp(argv[1], "kquant")) return kquant(argv[2], argv[3]);
  if (argc == 3 && !strcmp(argv[1], "read")) return read_file(argv[2]);
  if (argc == 4 && !strcmp(argv[1], "dequant")) return dequant_file(argv[2], argv[3]);
  fprintf(stderr,
          "usage: qblock_ggml blocks DIR | legacy SRC.gguf OUT | kquant SRC.gguf OUT | read FILE | dequant FILE DIR\n");
  return 2;
}
