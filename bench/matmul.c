/* Benchmark of op_matmul: GFLOPS of Lathe's GEMV and GEMM kernels (f32 and f16 weights, and GGUF's block formats
 * read in place) as a ratio to OpenBLAS
 * on the CPU (cblas_sgemv for one row, cblas_sgemm otherwise), measured in the same run on the same data; the two GEMM variants against each other;
 * the crossover between GEMV and GEMM for small M (what MATMUL_AUTO's threshold rests on); and shader compile
 * time with cold and warm caches. LATHE_BENCH_QUICK=1 shrinks the shapes. Upload time is excluded; each figure
 * is the mean of several timed repetitions after one warm-up run.
 * Compile times: Mesa drivers keep their own disk cache of compiled shaders, which would make a "cold" start
 * warm; the benchmark points MESA_SHADER_CACHE_DIR into its temporary folder so that both caches start empty.
 * Usage: bench_matmul [MxNxK ...]; shapes named on the command line are timed alone (f32, f16 and the block
 * formats). */
#include <cblas.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "engine/gpu/gpu.h"
#include "engine/ops/ops.h"
#include "engine/ops/qblock.h"
#include "engine/ops/quant.h"
#include "engine/ops/ref/ref.h"

static void die(const char *what, const lt_err_t *err) {
  fprintf(stderr, "bench_matmul: %s: %s\n", what, err ? err->msg : "failed");
  exit(1);
}

/* Uniform values in [-1, 1) from a fixed-seed xorshift. */
static void fill(float *a, uint64_t n, uint64_t seed) {
  for (uint64_t i = 0; i < n; i++) {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    a[i] = (float)((double)(seed >> 40) / 8388608.0 - 1.0);
  }
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) die("malloc", NULL);
  return p;
}

static gpu_buf_t *upload(gpu_t *g, const void *src, uint64_t n) {
  lt_err_t err = {0};
  gpu_buf_t *b = gpu_buf_new(g, n, &err);
  if (!b || gpu_upload(b, 0, src, n, &err) != LT_OK) die("upload", &err);
  return b;
}

/* Repetitions after the warm-up: at least 2, more while they fit in about `budget_s` seconds. */
static int reps_for(double one_run_s, double budget_s) {
  int r = (int)(budget_s / (one_run_s > 1e-6 ? one_run_s : 1e-6));
  return r < 2 ? 2 : r > 50 ? 50 : r;
}

/* Seconds per call of op_matmul_path, or with q of op_matmul_q on that quantised weight (mean over repetitions
 * after a warm-up that also compiles). */
static double time_lathe_q(gpu_t *g, gpu_buf_t *y, gpu_buf_t *x, gpu_buf_t *w, lt_dtype_t wt, const qmat_view_t *q,
                           uint32_t M, uint32_t N, uint32_t K, matmul_path_t path, double budget_s) {
  lt_err_t err = {0};
  double t0 = 0, one = 0;
  int reps = 0;
  for (int i = -1; i < reps; i++) {
    if (i == 0) t0 = now_s();
    double s = now_s();
    gpu_cmd_t *c = gpu_cmd_begin(g, &err);
    if (!c || (q ? op_matmul_q(c, gv(y), N, gv(x), K, q, M, N, K, false, path, &err)
                 : op_matmul_path(c, gv(y), gv(x), gv(w), wt, M, N, K, false, path, &err)) != LT_OK)
      die("op_matmul", &err);
    if (gpu_cmd_finish(&c, &err) != LT_OK) die("gpu_cmd_finish", &err);
    if (i == -1) reps = reps_for(one = now_s() - s, budget_s);
  }
  return (now_s() - t0) / reps;
}

static double time_lathe(gpu_t *g, gpu_buf_t *y, gpu_buf_t *x, gpu_buf_t *w, lt_dtype_t wt, uint32_t M, uint32_t N,
                         uint32_t K, matmul_path_t path, double budget_s) {
  return time_lathe_q(g, y, x, w, wt, NULL, M, N, K, path, budget_s);
}

/* Seconds per OpenBLAS product y[M,N] = x[M,K] . w[N,K]^T, timed like time_lathe(): cblas_sgemv for one row (the
 * matrix-vector product is its own, faster path in OpenBLAS: an sgemm with M = 1 would flatter a GEMV about 4x),
 * cblas_sgemm otherwise. */
static double time_blas(float *y, const float *x, const float *w, uint32_t M, uint32_t N, uint32_t K, double budget_s) {
  double t0 = 0;
  int reps = 0;
  for (int i = -1; i < reps; i++) {
    if (i == 0) t0 = now_s();
    double s = now_s();
    if (M == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)N, (int)K, 1.0f, w, (int)K, x, 1, 0.0f, y, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x, (int)K, w, (int)K, 0.0f, y,
                  (int)N);
    if (i == -1) reps = reps_for(now_s() - s, budget_s);
  }
  return (now_s() - t0) / reps;
}

/* Largest |a - b| over the largest |b|: a sanity check that both sides computed the same product. */
static double rel_diff(const float *a, const float *b, uint64_t n) {
  double d = 0, m = 0;
  for (uint64_t i = 0; i < n; i++) {
    d = fmax(d, fabs((double)a[i] - (double)b[i]));
    m = fmax(m, fabs((double)b[i]));
  }
  return m > 0 ? d / m : d;
}

/* One shape: OpenBLAS f32, then Lathe with f32 and with f16 weights (the same values rounded to f16; OpenBLAS
 * keeps the f32 weights), each printed as a ratio to OpenBLAS. */
static void bench_shape(gpu_t *g, uint32_t M, uint32_t N, uint32_t K, double budget_s) {
  uint64_t nx = (uint64_t)M * K, nw = (uint64_t)N * K, ny = (uint64_t)M * N;
  float *x = xmalloc(nx * 4), *w = xmalloc(nw * 4), *yb = xmalloc(ny * 4), *yl = xmalloc(ny * 4);
  uint16_t *wh = xmalloc(nw * 2);
  fill(x, nx, 11 + M);
  fill(w, nw, 17 + N);
  for (uint64_t i = 0; i < nw; i++) wh[i] = dtype_float_to_half(w[i]);
  double flops = 2.0 * M * N * K;
  double blas = flops / time_blas(yb, x, w, M, N, K, budget_s) / 1e9;
  gpu_buf_t *bx = upload(g, x, nx * 4), *by = upload(g, yl, ny * 4);
  for (int t = 0; t < 2; t++) {
    lt_dtype_t wt = t ? LT_F16 : LT_F32;
    gpu_buf_t *bw = t ? upload(g, wh, nw * 2) : upload(g, w, nw * 4);
    /* On CPU drivers the weights go through texel views (op_texel_reads); storage-buffer reads are timed beside
     * them, interleaved, unless LATHE_TEXEL_READS=0 turned texel reads off for the whole run. */
    const char *tx = getenv("LATHE_TEXEL_READS");
    bool side = gpu_caps(g)->kind == GPU_KIND_CPU && !(tx && !strcmp(tx, "0"));
    double lathe = 0, storage = 0;
    for (int half = 0; half < (side ? 2 : 1); half++) {
      double a = flops / time_lathe(g, by, bx, bw, wt, M, N, K, MATMUL_AUTO, budget_s / 2) / 1e9;
      if (side) op_texel_reads(false);
      double b = side ? flops / time_lathe(g, by, bx, bw, wt, M, N, K, MATMUL_AUTO, budget_s / 2) / 1e9 : 0;
      if (side) op_texel_reads(true);
      lathe += a / (side ? 2 : 1), storage += b / 2;
    }
    lt_err_t err = {0};
    if (gpu_download(by, 0, yl, ny * 4, &err) != LT_OK) die("download", &err);
    /* f16 weights differ from OpenBLAS's f32 ones by up to 2^-11 relative. */
    double diff = rel_diff(yl, yb, ny), allowed = t ? 1e-2 : 1e-4;
    char also[96] = "";
    if (side) snprintf(also, sizeof also, " (storage-buffer reads %.2f GFLOPS, ratio %.3f)", storage, storage / blas);
    printf("matmul %s %ux%ux%u: lathe %.2f GFLOPS, openblas %s %.2f GFLOPS, ratio %.3f%s%s\n", lt_dtype_str(wt), M, N,
           K, lathe, M == 1 ? "sgemv" : "sgemm", blas, lathe / blas, also,
           diff <= allowed ? "" : "  [RESULT MISMATCH]");
    if (diff > allowed)
      fprintf(stderr, "bench_matmul: %s %ux%ux%u differs from OpenBLAS by %.3g of max |y|\n", lt_dtype_str(wt), M, N, K,
              diff);
    fflush(stdout);
    gpu_buf_destroy(&bw);
  }
  gpu_buf_destroy(&bx), gpu_buf_destroy(&by);
  free(x), free(w), free(wh), free(yb), free(yl);
}

/* Times the quantised weight qv (named `name`, `bytes` of it read per product) against OpenBLAS on wd, the same
 * weights dequantised to f32, on x (host, and bx on the device; yb, yl and by the host and device outputs), and
 * prints GFLOPS, the weight bytes read per second and the ratio, flagging a result that differs. */
static void report_q(gpu_t *g, const char *name, const qmat_view_t *qv, uint64_t bytes, const float *x, const float *wd,
                     gpu_buf_t *bx, gpu_buf_t *by, float *yb, float *yl, uint32_t M, uint32_t N, uint32_t K,
                     double budget_s) {
  uint64_t ny = (uint64_t)M * N;
  double flops = 2.0 * M * N * K;
  double blas = flops / time_blas(yb, x, wd, M, N, K, budget_s) / 1e9;
  double secs = time_lathe_q(g, by, bx, NULL, qv->wtype, qv, M, N, K, MATMUL_AUTO, budget_s);
  lt_err_t err = {0};
  if (gpu_download(by, 0, yl, ny * 4, &err) != LT_OK) die("download", &err);
  double diff = rel_diff(yl, yb, ny);
  printf("matmul %s %ux%ux%u: lathe %.2f GFLOPS (weights %.2f GB/s), openblas %s on f32 %.2f GFLOPS, ratio %.3f%s\n",
         name, M, N, K, flops / secs / 1e9, bytes / secs / 1e9, M == 1 ? "sgemv" : "sgemm", blas,
         flops / secs / 1e9 / blas, diff <= 1e-4 ? "" : "  [RESULT MISMATCH]");
  if (diff > 1e-4) fprintf(stderr, "bench_matmul: %s differs from OpenBLAS by %.3g of max |y|\n", name, diff);
  fflush(stdout);
}

/* Weights in GGUF's block formats, read in place by the quantised kernels (random blocks with finite scales, as a
 * quantiser would leave them), against OpenBLAS on the same weights dequantised to f32: GFLOPS, their ratio, and the
 * bytes of weight read per second (what bounds a GEMV). */
static void bench_blocks(gpu_t *g, uint32_t M, uint32_t N, uint32_t K, double budget_s) {
  static const lt_dtype_t types[] = {LT_Q8_0, LT_Q4_0, LT_Q4_K, LT_Q5_K, LT_Q6_K};
  uint64_t nx = (uint64_t)M * K, nw = (uint64_t)N * K, ny = (uint64_t)M * N;
  float *x = xmalloc(nx * 4), *w = xmalloc(nw * 4), *yb = xmalloc(ny * 4), *yl = xmalloc(ny * 4);
  fill(x, nx, 23);
  gpu_buf_t *bx = upload(g, x, nx * 4), *by = upload(g, yl, ny * 4);
  for (unsigned t = 0; t < sizeof types / sizeof types[0]; t++) {
    const qblock_info_t *qi = qblock_info(types[t]);
    uint64_t bytes = N * qblock_row_bytes(types[t], K), padded = (bytes + 3) / 4 * 4;
    uint8_t *q = xmalloc(padded);
    uint64_t s = 0x9e3779b97f4a7c15ull + t;
    for (uint64_t i = 0; i < padded; i++) s = s * 6364136223846793005ull + 1442695040888963407ull, q[i] = s >> 56;
    for (uint64_t b = 0; b < bytes / qi->bytes; b++)
      for (int f = 0; f < 2; f++)
        if (qi->half_at[f] != UINT32_MAX) {
          uint16_t h = dtype_float_to_half(f ? 0.002f : 0.01f);
          memcpy(q + b * qi->bytes + qi->half_at[f], &h, 2);
        }
    qblock_dequant(types[t], q, w, nw);
    gpu_buf_t *bq = upload(g, q, padded);
    qmat_view_t qv = {gv(bq), {0}, types[t], LT_F32, 0};
    report_q(g, qi->name, &qv, bytes, x, w, bx, by, yb, yl, M, N, K, budget_s);
    gpu_buf_destroy(&bq);
    free(q);
  }
  gpu_buf_destroy(&bx), gpu_buf_destroy(&by);
  free(x), free(w), free(yb), free(yl);
}

/* Lathe's own int8 and int4 weights (round-to-nearest, f16 scales per group of 128), read in place by the quantised
 * kernels, against OpenBLAS on the same weights dequantised to f32, as bench_blocks reports them. */
static void bench_ints(gpu_t *g, uint32_t M, uint32_t N, uint32_t K, double budget_s) {
  const uint32_t group = 128;
  uint64_t nx = (uint64_t)M * K, nw = (uint64_t)N * K, ny = (uint64_t)M * N;
  float *x = xmalloc(nx * 4), *w = xmalloc(nw * 4), *wd = xmalloc(nw * 4), *yb = xmalloc(ny * 4), *yl = xmalloc(ny * 4);
  fill(x, nx, 29);
  fill(w, nw, 31);
  gpu_buf_t *bx = upload(g, x, nx * 4), *by = upload(g, yl, ny * 4);
  for (uint32_t bits = 8; bits >= 4; bits -= 4) {
    uint64_t qbytes = (uint64_t)N * quant_row_bytes(bits, K), sbytes = (uint64_t)N * quant_groups(K, group) * 2;
    uint8_t *q = xmalloc((qbytes + 3) / 4 * 4);
    uint16_t *sc = xmalloc((sbytes + 3) / 4 * 4);
    memset(q, 0, (qbytes + 3) / 4 * 4), memset(sc, 0, (sbytes + 3) / 4 * 4);
    quant_rtn(q, sc, w, N, K, bits, group);
    quant_dequant(wd, q, sc, N, K, bits, group);
    gpu_buf_t *bq = upload(g, q, (qbytes + 3) / 4 * 4), *bs = upload(g, sc, (sbytes + 3) / 4 * 4);
    qmat_view_t qv = {gv(bq), gv(bs), bits == 8 ? LT_I8 : LT_I4, LT_F16, group};
    char name[32];
    snprintf(name, sizeof name, "int%u g%u", bits, group);
    report_q(g, name, &qv, qbytes + sbytes, x, wd, bx, by, yb, yl, M, N, K, budget_s);
    gpu_buf_destroy(&bq), gpu_buf_destroy(&bs);
    free(q), free(sc);
  }
  gpu_buf_destroy(&bx), gpu_buf_destroy(&by);
  free(x), free(w), free(wd), free(yb), free(yl);
}

/* The device's GEMM variant against the other one (shared-memory staging or direct loads) on one shape. */
static void bench_variants(gpu_t *g, uint32_t M, uint32_t N, uint32_t K, double budget_s) {
  uint64_t nx = (uint64_t)M * K, nw = (uint64_t)N * K;
  float *x = xmalloc(nx * 4), *w = xmalloc(nw * 4), *y = calloc((uint64_t)M * N, 4);
  if (!y) die("calloc", NULL);
  fill(x, nx, 7);
  fill(w, nw, 9);
  gpu_buf_t *bx = upload(g, x, nx * 4), *bw = upload(g, w, nw * 4), *by = upload(g, y, (uint64_t)M * N * 4);
  double flops = 2.0 * M * N * K;
  double st = flops / time_lathe(g, by, bx, bw, LT_F32, M, N, K, MATMUL_GEMM_STAGED, budget_s) / 1e9;
  double di = flops / time_lathe(g, by, bx, bw, LT_F32, M, N, K, MATMUL_GEMM_DIRECT, budget_s) / 1e9;
  printf("matmul gemm variants f32 %ux%ux%u: staged %.2f GFLOPS, direct %.2f GFLOPS (this device uses %s)\n", M, N, K,
         st, di, gpu_caps(g)->kind == GPU_KIND_CPU ? "direct" : "staged");
  fflush(stdout);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bw), gpu_buf_destroy(&by);
  free(x), free(w), free(y);
}

/* GEMV against GEMM for a few small M on one K x N weight: where MATMUL_AUTO should switch kernels. */
static void bench_crossover(gpu_t *g, uint32_t N, uint32_t K, double budget_s) {
  static const uint32_t ms[] = {1, 2, 4, 8, 16};
  uint64_t nw = (uint64_t)N * K;
  float *w = xmalloc(nw * 4), *x = xmalloc((uint64_t)16 * K * 4), *y = calloc((uint64_t)16 * N, 4);
  if (!y) die("calloc", NULL);
  fill(w, nw, 3);
  fill(x, (uint64_t)16 * K, 5);
  gpu_buf_t *bw = upload(g, w, nw * 4), *bx = upload(g, x, (uint64_t)16 * K * 4),
            *by = upload(g, y, (uint64_t)16 * N * 4);
  for (unsigned i = 0; i < sizeof ms / sizeof ms[0]; i++) {
    double flops = 2.0 * ms[i] * N * K;
    double v = flops / time_lathe(g, by, bx, bw, LT_F32, ms[i], N, K, MATMUL_GEMV, budget_s) / 1e9;
    double m = flops / time_lathe(g, by, bx, bw, LT_F32, ms[i], N, K, MATMUL_GEMM, budget_s) / 1e9;
    printf("matmul crossover f32 %ux%ux%u: gemv %.2f GFLOPS, gemm %.2f GFLOPS\n", ms[i], N, K, v, m);
    fflush(stdout);
  }
  gpu_buf_destroy(&bw), gpu_buf_destroy(&bx), gpu_buf_destroy(&by);
  free(w), free(x), free(y);
}

/* Gets every matmul pipeline variant (both kernels, f32 and f16 weights, vec4 and scalar loads) by running each
 * once on a tiny problem; returns the seconds it took. */
static double get_pipelines(gpu_t *g, int *n_variants) {
  lt_err_t err = {0};
  float zeros[64] = {0};
  gpu_buf_t *b = upload(g, zeros, sizeof zeros);
  double t0 = now_s();
  *n_variants = 0;
  for (int path = MATMUL_GEMM; path <= MATMUL_GEMV; path++)
    for (int t = 0; t < 2; t++)
      for (uint32_t K = 3; K <= 4; K++) {
        gpu_cmd_t *c = gpu_cmd_begin(g, &err);
        if (!c || op_matmul_path(c, gv(b), gv(b), gv(b), t ? LT_F16 : LT_F32, 1, 1, K, false, path, &err) != LT_OK)
          die("op_matmul", &err);
        if (gpu_cmd_finish(&c, &err) != LT_OK) die("gpu_cmd_finish", &err);
        ++*n_variants;
      }
  double s = now_s() - t0;
  gpu_buf_destroy(&b);
  return s;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path);
}

int main(int argc, char **argv) {
  /* Shapes named on the command line (MxNxK: M rows of x, N output columns, K inputs) are timed alone. */
  uint32_t shapes[16][3], n_shapes = 0;
  for (int i = 1; i < argc; i++) {
    if (n_shapes == 16 ||
        sscanf(argv[i], "%ux%ux%u", &shapes[n_shapes][0], &shapes[n_shapes][1], &shapes[n_shapes][2]) != 3 ||
        !shapes[n_shapes][0] || !shapes[n_shapes][1] || !shapes[n_shapes][2]) {
      fprintf(stderr, "usage: bench_matmul [MxNxK ...] (up to 16 shapes, each dimension at least 1); got %s\n",
              argv[i]);
      return 2;
    }
    n_shapes++;
  }
  const char *q = getenv("LATHE_BENCH_QUICK");
  bool quick = q && *q && strcmp(q, "0") != 0;
  char dir[] = "/tmp/lathe-bench-matmul-XXXXXX";
  if (!mkdtemp(dir)) die("mkdtemp", NULL);
  char driver_cache[sizeof dir + 16];
  snprintf(driver_cache, sizeof driver_cache, "%s/mesa", dir);
  setenv("MESA_SHADER_CACHE_DIR", driver_cache, 1);
  lt_err_t err = {0};
  gpu_opts_t o = {.cache_dir = dir};
  /* LATHE_TEXEL_READS=0: weights read as storage buffers on CPU drivers too (the comparison for texel reads). */
  const char *tx = getenv("LATHE_TEXEL_READS");
  if (tx && !strcmp(tx, "0")) op_texel_reads(false);

  /* Cold: an empty cache folder, so every variant is compiled from GLSL. */
  gpu_t *g = gpu_new(&o, &err);
  if (!g) die("gpu_new", &err);
  printf("device: %s (%s)\n", gpu_caps(g)->name, gpu_caps(g)->driver_info);
  int nv = 0;
  double cold = get_pipelines(g, &nv);
  printf("matmul shader compile cold: %d pipelines in %.1f ms, %llu compiles\n", nv, 1e3 * cold,
         (unsigned long long)gpu_stats(g)->compiles);
  gpu_destroy(&g); /* saves the pipeline cache */

  /* Warm: the same folder and a new gpu_t should compile nothing. */
  g = gpu_new(&o, &err);
  if (!g) die("gpu_new", &err);
  double warm = get_pipelines(g, &nv);
  const gpu_stats_t *st = gpu_stats(g);
  printf("matmul shader compile warm: %d pipelines in %.1f ms, %llu compiles, %llu SPIR-V cache hits, pipeline "
         "cache %s\n",
         nv, 1e3 * warm, (unsigned long long)st->compiles, (unsigned long long)st->spirv_cache_hits,
         st->pipeline_cache_loaded ? "loaded" : "not loaded");
  fflush(stdout);

  double budget = quick ? 0.3 : 1.5; /* seconds of timed repetitions per figure */
  if (n_shapes) {
    for (uint32_t i = 0; i < n_shapes; i++) {
      bench_shape(g, shapes[i][0], shapes[i][1], shapes[i][2], budget);
      bench_blocks(g, shapes[i][0], shapes[i][1], shapes[i][2], budget);
      bench_ints(g, shapes[i][0], shapes[i][1], shapes[i][2], budget);
    }
    gpu_destroy(&g);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
  }
  uint32_t big = quick ? 1024 : 4096, sq = quick ? 512 : 2048, rows = quick ? 128 : 512;
  bench_shape(g, 1, big, big, budget);
  bench_shape(g, rows, big, big, budget);
  bench_shape(g, sq, sq, sq, budget);
  bench_blocks(g, 1, big, big, budget);
  bench_ints(g, 1, big, big, budget);
  bench_blocks(g, rows / 4, big, big, budget);
  bench_ints(g, rows / 4, big, big, budget);
  bench_variants(g, rows / 2, big / 2, big / 2, budget / 2);
  bench_crossover(g, big, big, budget / 3);

  gpu_destroy(&g);
  nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}
