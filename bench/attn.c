/* Attention and RoPE throughput on the chosen device against a CPU peer measured in the same run: OpenBLAS sgemm
 * for Q.K^T and P.V per head with a scalar causal softmax between them. Prints GFLOPS and the ratio.
 * LATHE_ATTN_KEY_SLICES=1 turns off the key slices of decode tiles (op_attention_key_slices), LATHE_ATTN_DECODE=0 the
 * decode kernel (op_attention_decode_kernel: decode then runs the tiles prefill uses), LATHE_ATTN_ROWS=0 the row
 * kernel of small heads (op_attention_row_kernel), LATHE_TEXEL_READS=0 the texel reads of K and V on CPU drivers
 * (op_texel_reads), for side-by-sides. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/ops/ops.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fill(float *x, uint64_t n, uint64_t seed) {
  for (uint64_t i = 0; i < n; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = (float)((seed >> 40) * (2.0 / 16777216.0) - 1.0);
  }
}

typedef struct shape {
  const char *name;
  uint32_t n_q, n_heads, n_kv, hd, q_pos0, kv_len;
  uint32_t calls; /* calls recorded per submission (0: 1); small shapes time the dispatch, not the submit */
} shape_t;

/* The CPU peer: per head, S = Q_h K_h^T (sgemm over the strided cache), causal softmax, O_h = P V_h. */
static void cpu_attention(float *out, const float *q, const float *k, const float *v, float *s, const shape_t *sh,
                          float scale) {
  uint32_t group = sh->n_heads / sh->n_kv, ld_q = sh->n_heads * sh->hd, ld_kv = sh->n_kv * sh->hd;
  for (uint32_t h = 0; h < sh->n_heads; h++) {
    const float *kh = k + (h / group) * sh->hd, *vh = v + (h / group) * sh->hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)sh->n_q, (int)sh->kv_len, (int)sh->hd, scale,
                q + h * sh->hd, (int)ld_q, kh, (int)ld_kv, 0.0f, s, (int)sh->kv_len);
    for (uint32_t t = 0; t < sh->n_q; t++) {
      float *row = s + (uint64_t)t * sh->kv_len, mx = -INFINITY, sum = 0;
      uint32_t end = sh->q_pos0 + t + 1 < sh->kv_len ? sh->q_pos0 + t + 1 : sh->kv_len;
      for (uint32_t j = 0; j < end; j++) mx = fmaxf(mx, row[j]);
      for (uint32_t j = 0; j < end; j++) sum += row[j] = expf(row[j] - mx);
      for (uint32_t j = 0; j < end; j++) row[j] /= sum;
      for (uint32_t j = end; j < sh->kv_len; j++) row[j] = 0;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)sh->n_q, (int)sh->hd, (int)sh->kv_len, 1.0f, s,
                (int)sh->kv_len, vh, (int)ld_kv, 0.0f, out + h * sh->hd, (int)ld_q);
  }
}

static int bench_attention(gpu_t *g, const shape_t *sh) {
  lt_err_t err = {0};
  uint64_t nq = (uint64_t)sh->n_q * sh->n_heads * sh->hd, nkv = (uint64_t)sh->kv_len * sh->n_kv * sh->hd;
  float *q = malloc(nq * 4), *k = malloc(nkv * 4), *v = malloc(nkv * 4), *o = malloc(nq * 4);
  float *s = malloc((uint64_t)sh->n_q * sh->kv_len * 4);
  if (!q || !k || !v || !o || !s) return 1;
  fill(q, nq, 1), fill(k, nkv, 2), fill(v, nkv, 3);
  float scale = 1.0f / sqrtf((float)sh->hd);
  gpu_buf_t *bq = gpu_buf_new(g, nq * 4, &err), *bk = gpu_buf_new(g, nkv * 4, &err);
  gpu_buf_t *bv = gpu_buf_new(g, nkv * 4, &err), *bo = gpu_buf_new(g, nq * 4, &err);
  if (!bq || !bk || !bv || !bo) return fprintf(stderr, "%s\n", err.msg), 1;
  if (gpu_upload(bq, 0, q, nq * 4, &err) || gpu_upload(bk, 0, k, nkv * 4, &err) || gpu_upload(bv, 0, v, nkv * 4, &err))
    return fprintf(stderr, "%s\n", err.msg), 1;
  /* Useful flops: 2 (QK) + 2 (PV) per visible (row, key, dim). */
  double keys = 0;
  for (uint32_t t = 0; t < sh->n_q; t++) keys += fmin(sh->kv_len, sh->q_pos0 + t + 1.0);
  double flops = 4.0 * keys * sh->hd * sh->n_heads;
  double t_gpu = 1e30, t_cpu = 1e30;
  uint32_t calls = sh->calls ? sh->calls : 1;
  for (int rep = 0; rep < 4; rep++) { /* first rep compiles and warms up; best of the rest */
    gpu_cmd_t *c = gpu_cmd_begin(g, &err);
    double t0 = now();
    if (!c) return fprintf(stderr, "%s: %s\n", sh->name, err.msg), 1;
    for (uint32_t i = 0; i < calls; i++)
      if (op_attention(c, gv(bo), gv(bq), gv(bk), gv(bv), sh->n_q, sh->n_heads, sh->n_kv, sh->hd, sh->q_pos0,
                       sh->kv_len, 0, scale, 0.0f, &err) != LT_OK)
        return gpu_cmd_abort(&c), fprintf(stderr, "%s: %s\n", sh->name, err.msg), 1;
    if (gpu_cmd_finish(&c, &err) != LT_OK) return fprintf(stderr, "%s: %s\n", sh->name, err.msg), 1;
    if (rep) t_gpu = fmin(t_gpu, (now() - t0) / calls);
    t0 = now();
    for (uint32_t i = 0; i < calls; i++) cpu_attention(o, q, k, v, s, sh, scale);
    if (rep) t_cpu = fmin(t_cpu, (now() - t0) / calls);
  }
  printf("attention %-28s gpu %8.3f ms %7.2f GFLOPS | openblas %8.3f ms %7.2f GFLOPS | gpu/cpu speed %.2fx\n", sh->name,
         1e3 * t_gpu, flops / t_gpu * 1e-9, 1e3 * t_cpu, flops / t_cpu * 1e-9, t_cpu / t_gpu);
  gpu_buf_destroy(&bq), gpu_buf_destroy(&bk), gpu_buf_destroy(&bv), gpu_buf_destroy(&bo);
  free(q), free(k), free(v), free(o), free(s);
  return 0;
}

static int bench_rope(gpu_t *g, uint32_t rows, uint32_t n_heads, uint32_t hd) {
  lt_err_t err = {0};
  uint32_t max_pos = 8192;
  uint64_t n = (uint64_t)rows * n_heads * hd;
  float *x = malloc(n * 4), *table = malloc((uint64_t)max_pos * hd * 4);
  int32_t *pos = malloc(rows * 4ull);
  if (!x || !table || !pos) return 1;
  fill(x, n, 4);
  for (uint32_t r = 0; r < rows; r++) pos[r] = (int32_t)r;
  rope_table_build(table, max_pos, hd, 500000.0, NULL);
  gpu_buf_t *bx = gpu_buf_new(g, n * 4, &err), *bp = gpu_buf_new(g, rows * 4ull, &err);
  gpu_buf_t *bt = gpu_buf_new(g, (uint64_t)max_pos * hd * 4, &err);
  if (!bx || !bp || !bt) return fprintf(stderr, "%s\n", err.msg), 1;
  if (gpu_upload(bx, 0, x, n * 4, &err) || gpu_upload(bp, 0, pos, rows * 4ull, &err) ||
      gpu_upload(bt, 0, table, (uint64_t)max_pos * hd * 4, &err))
    return fprintf(stderr, "%s\n", err.msg), 1;
  double t_gpu = 1e30, t_cpu = 1e30;
  for (int rep = 0; rep < 4; rep++) {
    gpu_cmd_t *c = gpu_cmd_begin(g, &err);
    double t0 = now();
    if (!c || op_rope(c, gv(bx), gv(bp), gv(bt), rows, n_heads, hd, hd, true, max_pos, &err) != LT_OK ||
        gpu_cmd_finish(&c, &err) != LT_OK)
      return fprintf(stderr, "rope: %s\n", err.msg), 1;
    if (rep) t_gpu = fmin(t_gpu, now() - t0);
    t0 = now();
    for (uint32_t r = 0; r < rows; r++) /* the CPU peer: the same table-driven rotation in plain C */
      for (uint32_t h = 0; h < n_heads; h++) {
        float *xh = x + ((uint64_t)r * n_heads + h) * hd;
        const float *cs = table + (uint64_t)pos[r] * hd;
        for (uint32_t i = 0; i < hd / 2; i++) {
          float a = xh[i], b = xh[i + hd / 2];
          xh[i] = a * cs[2 * i] - b * cs[2 * i + 1];
          xh[i + hd / 2] = b * cs[2 * i] + a * cs[2 * i + 1];
        }
      }
    if (rep) t_cpu = fmin(t_cpu, now() - t0);
  }
  printf("rope %ux%ux%u neox                 gpu %8.3f ms %7.2f GB/s   | plain C  %8.3f ms | gpu/cpu speed %.2fx\n",
         rows, n_heads, hd, 1e3 * t_gpu, 8.0 * (double)n / t_gpu * 1e-9, 1e3 * t_cpu, t_cpu / t_gpu);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bp), gpu_buf_destroy(&bt);
  free(x), free(table), free(pos);
  return 0;
}

/* Runs every shape, or those whose name contains argv[1]. */
int main(int argc, char **argv) {
  lt_err_t err = {0};
  gpu_t *g = gpu_new(NULL, &err);
  if (!g) return fprintf(stderr, "%s\n", err.msg), 1;
  printf("device: %s\n", gpu_caps(g)->name);
  const char *no_ks = getenv("LATHE_ATTN_KEY_SLICES");
  if (no_ks && !strcmp(no_ks, "1")) op_attention_key_slices(false);
  const char *tx = getenv("LATHE_TEXEL_READS");
  if (tx && !strcmp(tx, "0")) op_texel_reads(false);
  const char *dk = getenv("LATHE_ATTN_DECODE");
  if (dk && !strcmp(dk, "0")) op_attention_decode_kernel(false);
  const char *rk = getenv("LATHE_ATTN_ROWS");
  if (rk && !strcmp(rk, "0")) op_attention_row_kernel(false);
  static const shape_t shapes[] = {
      {"prefill 512, 32/8 heads, hd 128", 512, 32, 8, 128, 0, 512, 0},
      {"prefill 2048, 8/8 heads, hd 64", 2048, 8, 8, 64, 0, 2048, 0},
      {"prefill 512, 8/4 heads, hd 8 (stories260K)", 512, 8, 4, 8, 0, 512, 0},
      {"decode at 4096, 32/8, hd 128", 1, 32, 8, 128, 4095, 4096, 0},
      {"decode at 16384, 32/8, hd 128", 1, 32, 8, 128, 16383, 16384, 0},
      {"decode at 1024, 4/2, hd 32 (small heads)", 1, 4, 2, 32, 1023, 1024, 0},
      {"decode at 64, 8/4, hd 8 (stories260K), 32 calls a submit", 1, 8, 4, 8, 63, 64, 32},
      {"decode at 1, 8/4, hd 8 (floor), 32 calls a submit", 1, 8, 4, 8, 0, 1, 32},
      {"decode at 256, 12/4, hd 64 (100M), 32 calls a submit", 1, 12, 4, 64, 255, 256, 32},
  };
  int rc = 0;
  const char *only = argc > 1 ? argv[1] : "";
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] && !rc; i++)
    if (strstr(shapes[i].name, only)) rc = bench_attention(g, &shapes[i]);
  if (!rc && strstr("rope", only)) rc = bench_rope(g, 2048, 32, 128);
  gpu_destroy(&g);
  return rc;
}
