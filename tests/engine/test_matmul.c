/* Matrix multiply against its CPU reference: odd shapes, f32 and f16 weights, both kernels, accumulation, and K
 * long enough to be split over several dispatches. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ref/ref.h"
#include "support/tgpu.h"

TestSuite(matmul, .init = tgpu_setup, .fini = tgpu_teardown);

typedef struct shape {
  uint32_t M, N, K;
} shape_t;

/* Shapes that are not multiples of any tile or workgroup size; K a multiple of 8 (vector loads for f32 and f16
 * weights), of 4 only (f32 vector loads), or odd (scalar loads); M above one direct tile (128 rows). */
static const shape_t odd_shapes[] = {{1, 37, 53},    {3, 129, 77}, {67, 65, 131}, {130, 33, 257}, {5, 70, 64},
                                     {33, 130, 136}, {261, 9, 20}, {2, 3, 1},     {65, 1, 4},     {1, 1, 1}};
#define N_ODD (sizeof odd_shapes / sizeof odd_shapes[0])

/* Host copies of one problem: x [M,K] f32, w [N,K] in wtype (f16 as bits), y0 [M,N] the starting y. */
typedef struct problem {
  uint32_t M, N, K;
  lt_dtype_t wtype;
  float *x, *y0;
  void *w;
} problem_t;

/* Fills a problem with uniform values in [-1, 1), or with integers in [-2, 2] when integral (then every f32
 * partial sum of up to 2^22 products is an integer of at most 2^24, exact, so any summation order gives the
 * exact result). */
static problem_t problem_new(uint32_t M, uint32_t N, uint32_t K, lt_dtype_t wtype, bool integral, uint64_t seed) {
  problem_t p = {M, N, K, wtype, talloc((uint64_t)M * K), talloc((uint64_t)M * N), NULL};
  uint64_t nw = (uint64_t)N * K;
  float *wf = talloc(nw);
  trand(p.x, (uint64_t)M * K, -1, 1, &seed);
  trand(wf, nw, -1, 1, &seed);
  trand(p.y0, (uint64_t)M * N, -1, 1, &seed);
  if (integral) {
    for (uint64_t i = 0; i < (uint64_t)M * K; i++) p.x[i] = roundf(2.0f * p.x[i]);
    for (uint64_t i = 0; i < nw; i++) wf[i] = roundf(2.0f * wf[i]);
    for (uint64_t i = 0; i < (uint64_t)M * N; i++) p.y0[i] = roundf(2.0f * p.y0[i]);
  }
  if (wtype == LT_F16 || wtype == LT_BF16) {
    uint16_t *h = malloc(nw * 2 + 2);
    cr_assert(h != NULL);
    for (uint64_t i = 0; i < nw; i++) h[i] = wtype == LT_F16 ? dtype_float_to_half(wf[i]) : dtype_float_to_bf16(wf[i]);
    free(wf);
    p.w = h;
  } else
    p.w = wf;
  return p;
}

static void problem_free(problem_t *p) { free(p->x), free(p->y0), free(p->w); }

/* Runs the op on the GPU (y starting as y0) and returns y. Caller owns (free()). */
static float *run_gpu(const problem_t *p, bool accumulate, matmul_path_t path, uint64_t *dispatches) {
  gpu_buf_t *bx = tbuf_f32(p->x, (uint64_t)p->M * p->K);
  gpu_buf_t *bw = tbuf_bytes(p->w, (uint64_t)p->N * p->K * lt_dtype_size(p->wtype));
  gpu_buf_t *by = tbuf_f32(p->y0, (uint64_t)p->M * p->N);
  uint64_t before = gpu_stats(tgpu())->dispatches;
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_matmul_path(c, gv(by), gv(bx), gv(bw), p->wtype, p->M, p->N, p->K, accumulate, path, &err), LT_OK,
               "%s", err.msg);
  tfinish(&c);
  if (dispatches) *dispatches = gpu_stats(tgpu())->dispatches - before;
  float *got = tread_f32(by, (uint64_t)p->M * p->N);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bw), gpu_buf_destroy(&by);
  return got;
}

/* Compares y from the GPU with the reference, elementwise within 1e-5 * (sum_k |x_mk w_nk| + |y0| when
 * accumulating) + 1e-6, or exactly when `exact` (integer data). Why: both sides multiply the same f32 values (f16
 * weights are widened exactly on both sides), so the only difference is the f32 rounding of the GPU's reordered
 * sums. Each output is a chain of at most K + ~10 additions (K-groups, then subgroup partials, then K chunks),
 * each rounding by at most 2^-24 of the running |sum| <= sum |terms|: a worst case of 1.6e-5 * sum |terms| for
 * K = 257, but rounding errors of random data grow like the square root of the chain (~1e-6), so 1e-5 holds with
 * a wide margin, and 1e-6 absolute covers sums near zero. A missing or doubled term is about 1/K of sum |terms|
 * (4e-3 here), far outside it. */
static void check(const problem_t *p, bool accumulate, matmul_path_t path, bool exact, const char *what) {
  uint64_t MN = (uint64_t)p->M * p->N;
  float *want = talloc(MN);
  memcpy(want, p->y0, MN * 4);
  ref_matmul(want, p->x, p->w, p->wtype, p->M, p->N, p->K, accumulate);
  float *got = run_gpu(p, accumulate, path, NULL);
  for (uint32_t m = 0; m < p->M; m++)
    for (uint32_t n = 0; n < p->N; n++) {
      double mag = accumulate ? fabs((double)p->y0[(uint64_t)m * p->N + n]) : 0.0;
      for (uint32_t k = 0; k < p->K; k++) {
        uint64_t i = (uint64_t)n * p->K + k;
        double wv = ref_weight_at(p->w, p->wtype, i);
        mag += fabs((double)p->x[(uint64_t)m * p->K + k] * wv);
      }
      double tol = exact ? 0.0 : 1e-5 * mag + 1e-6;
      double g = got[(uint64_t)m * p->N + n], e = want[(uint64_t)m * p->N + n];
      cr_assert(fabs(g - e) <= tol, "%s %ux%ux%u %s%s path %d: y[%u,%u] = %.9g, want %.9g (tolerance %.3g)", what, p->M,
                p->N, p->K, lt_dtype_str(p->wtype), accumulate ? " accumulate" : "", (int)path, m, n, g, e, tol);
    }
  free(want), free(got);
}

static void check_all_odd_shapes(matmul_path_t path, const char *what) {
  for (unsigned s = 0; s < N_ODD; s++)
    for (int t = 0; t < 3; t++)
      for (int acc = 0; acc < 2; acc++) {
        const shape_t *sh = &odd_shapes[s];
        const lt_dtype_t types[3] = {LT_F32, LT_F16, LT_BF16};
        problem_t p = problem_new(sh->M, sh->N, sh->K, types[t], false, 1000 + 10 * s + 2 * t + acc);
        check(&p, acc, path, false, what);
        problem_free(&p);
      }
}

Test(matmul, gemm_staged_odd_shapes) { check_all_odd_shapes(MATMUL_GEMM_STAGED, "gemm staged"); }

Test(matmul, gemm_direct_odd_shapes) { check_all_odd_shapes(MATMUL_GEMM_DIRECT, "gemm direct"); }

Test(matmul, gemv_odd_shapes) { check_all_odd_shapes(MATMUL_GEMV, "gemv"); }

Test(matmul, auto_odd_shapes) { check_all_odd_shapes(MATMUL_AUTO, "auto"); }

Test(matmul, gemv_rows_spread_over_workgroups) {
  /* On CPU drivers a GEMV workgroup's rows sit several rows apart when rows are short (gemv_spread): 768 f16
   * values a row put them 8 apart, in blocks of 128 rows shared by 8 workgroups. Row counts that fill whole
   * blocks, leave a last block part full, or leave it one row; 1 and 4 rows of x; every dtype. */
  static const shape_t shapes[] = {{1, 1024, 768}, {1, 1000, 768}, {4, 1153, 768}, {2, 300, 1536}, {1, 129, 96}};
  const lt_dtype_t types[3] = {LT_F32, LT_F16, LT_BF16};
  for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int t = 0; t < 3; t++) {
      problem_t p = problem_new(shapes[s].M, shapes[s].N, shapes[s].K, types[t], false, 4000 + 10 * s + t);
      check(&p, t == 1, MATMUL_GEMV, false, "gemv, rows spread");
      problem_free(&p);
    }
}

Test(matmul, storage_buffer_weights_odd_shapes) {
  /* CPU drivers read weights through texel views (op_texel_reads); GPUs, and any shape or device the views do not
   * fit, read them as storage buffers. Both paths against the reference here. */
  op_texel_reads(false);
  check_all_odd_shapes(MATMUL_GEMV, "gemv, storage-buffer weights");
  check_all_odd_shapes(MATMUL_GEMM_DIRECT, "gemm direct, storage-buffer weights");
  op_texel_reads(true);
}

Test(matmul, texel_and_storage_weight_reads_give_the_same_bits) {
  /* The same loads in the same order through either kind of binding: GEMV, the direct GEMM and the gated GEMV
   * (without and with the folded RMSNorm, whose weights follow x's binding) give identical bits both ways, for f32 (vec4 texels) and f16 / bf16 (eight values a texel). On a CPU driver with the
   * texel formats the texel runs must be pipelines of their own (the variant really ran). */
  static const shape_t shapes[] = {{1, 37, 64}, {3, 129, 136}, {4, 16, 8}, {130, 33, 256}};
  const lt_dtype_t types[3] = {LT_F32, LT_F16, LT_BF16};
  const gpu_caps_t *caps = gpu_caps(tgpu());
  bool texel = caps->kind == GPU_KIND_CPU && gpu_texel_readable(caps, GPU_TEXEL_RGBA32F) &&
               gpu_texel_readable(caps, GPU_TEXEL_RGBA32UI);
  lt_err_t err = {0};
  for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int t = 0; t < 3; t++) {
      const shape_t *sh = &shapes[s];
      problem_t p = problem_new(sh->M, sh->N, sh->K, types[t], false, 9100 + 3 * s + t);
      uint64_t MN = (uint64_t)sh->M * sh->N;
      float *got[2][4];
      for (int on = 0; on < 2; on++) {
        op_texel_reads(on);
        uint64_t pipes = gpu_stats(tgpu())->pipelines;
        got[on][0] = run_gpu(&p, false, MATMUL_GEMV, NULL);
        got[on][1] = run_gpu(&p, true, MATMUL_GEMM_DIRECT, NULL);
        got[on][2] = got[on][3] = NULL;
        if (sh->M <= 4) {
          /* The gated GEMV, without and with the RMSNorm folded in (its weights: the first K of x's values). */
          uint64_t wb = (uint64_t)sh->N * sh->K * lt_dtype_size(types[t]);
          gpu_buf_t *bx = tbuf_f32(p.x, (uint64_t)sh->M * sh->K), *bw = tbuf_bytes(p.w, wb), *by = tbuf_f32(NULL, MN);
          gpu_buf_t *bn = tbuf_f32(p.x, sh->K);
          for (int nm = 0; nm < 2; nm++) {
            gpu_cmd_t *c = tbegin();
            cr_assert_eq(op_gemv_glu(c, gv(by), gv(bx), gv(bw), gv(bw), types[t], sh->M, sh->N, sh->K, false,
                                     nm ? gv(bn) : (gpu_view_t){0}, 1e-5f, &err),
                         LT_OK, "%s", err.msg);
            tfinish(&c);
            got[on][2 + nm] = tread_f32(by, MN);
          }
          gpu_buf_destroy(&bx), gpu_buf_destroy(&bw), gpu_buf_destroy(&by), gpu_buf_destroy(&bn);
        }
        if (on && texel && s == 0)
          cr_assert_gt(gpu_stats(tgpu())->pipelines, pipes, "%s: the texel reads reused the storage pipelines",
                       lt_dtype_str(types[t]));
      }
      static const char *const what[4] = {"gemv", "gemm direct", "glu", "glu with the norm"};
      for (int k = 0; k < 4; k++)
        if (got[0][k]) {
          cr_assert(memcmp(got[0][k], got[1][k], MN * 4) == 0, "%ux%ux%u %s, %s: texel and storage reads differ", sh->M,
                    sh->N, sh->K, lt_dtype_str(types[t]), what[k]);
          free(got[0][k]), free(got[1][k]);
        }
      problem_free(&p);
    }
  op_texel_reads(true);
  cr_log_info("texel weight reads on this device: %s", texel ? "yes" : "no (both runs read storage buffers)");
}

Test(matmul, x_at_many_offsets_gets_views_that_live_with_their_chunk) {
  /* A buffer keeps 32 texel views; an x bound at more offsets than that (as a mixture-of-experts layer binds its
   * rows per expert) gets views that live only as long as the chunk that records them. 80 GEMVs, each on its own
   * row of one x buffer, in one recorder (several chunks), all against the reference; the validation build checks
   * no view is destroyed while a dispatch still uses it. */
  const uint32_t N = 24, K = 64, R = 80;
  problem_t p = problem_new(R, N, K, LT_F32, false, 4242);
  gpu_buf_t *bx = tbuf_f32(p.x, (uint64_t)R * K), *bw = tbuf_f32(p.w, (uint64_t)N * K);
  gpu_buf_t *by = tbuf_f32(NULL, (uint64_t)R * N);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  for (uint32_t r = 0; r < R; r++)
    cr_assert_eq(op_matmul_strided(c, (gpu_view_t){by, 4ull * r * N}, N, (gpu_view_t){bx, 4ull * r * K}, K, gv(bw),
                                   LT_F32, 1, N, K, false, &err),
                 LT_OK, "row %u: %s", r, err.msg);
  tfinish(&c);
  float *got = tread_f32(by, (uint64_t)R * N), *want = talloc((uint64_t)R * N);
  ref_matmul(want, p.x, p.w, LT_F32, R, N, K, false);
  tassert_close(got, want, (uint64_t)R * N, 1e-5, 1e-5, "one GEMV per row");
  free(got), free(want);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bw), gpu_buf_destroy(&by);
  problem_free(&p);
}

Test(matmul, long_k_is_split_over_dispatches) {
  /* Each K needs more loop iterations than one invocation may run (its loop budget in engine/ops/ops.def), for
   * each kernel and load width: it is split into chunks that accumulate, the first chunk of each at the largest
   * size the budget allows. Integer data makes the exact result the only right one, so a chunk that drops,
   * repeats or overwrites even one term fails; so does an invocation that lavapipe cut short. */
  struct {
    uint32_t M, N, K;
    matmul_path_t path;
    lt_dtype_t wtype;
    bool accumulate;
  } cases[] = {
      {3, 2, 1100001, MATMUL_GEMV, LT_F32, false},       {1, 2, 1100001, MATMUL_GEMV, LT_F16, true},
      {3, 5, 20001, MATMUL_GEMM_DIRECT, LT_F32, false},  {2, 3, 70004, MATMUL_GEMM_DIRECT, LT_F32, true},
      {2, 3, 140000, MATMUL_GEMM_DIRECT, LT_F32, true}, /* K % 8 == 0: f32 eight at a time */
      {2, 3, 140000, MATMUL_GEMM_DIRECT, LT_F16, false}, {9, 70, 8003, MATMUL_GEMM_STAGED, LT_F32, false},
      {3, 5, 30000, MATMUL_GEMM_STAGED, LT_F32, true},   {3, 5, 52800, MATMUL_GEMM_STAGED, LT_F16, false},
  };
  for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    problem_t p = problem_new(cases[i].M, cases[i].N, cases[i].K, cases[i].wtype, true, 77 + i);
    uint64_t dispatches = 0;
    free(run_gpu(&p, cases[i].accumulate, cases[i].path, &dispatches));
    cr_assert_gt(dispatches, 1, "K = %u ran as %llu dispatch(es); expected a split", cases[i].K,
                 (unsigned long long)dispatches);
    check(&p, cases[i].accumulate, cases[i].path, true, "split K");
    problem_free(&p);
  }
}

Test(matmul, empty_shapes) {
  /* M or N of 0 records nothing; K of 0 writes y = 0, or leaves y alone when accumulating. */
  float junk[6] = {1, 2, 3, 4, 5, 6}, zeros[6] = {0};
  gpu_buf_t *bx = tbuf_f32(junk, 6), *bw = tbuf_f32(junk, 6), *by = tbuf_f32(junk, 6);
  lt_err_t err = {0};
  uint64_t before = gpu_stats(tgpu())->dispatches;
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_matmul(c, gv(by), gv(bx), gv(bw), LT_F32, 0, 3, 2, false, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_matmul(c, gv(by), gv(bx), gv(bw), LT_F32, 2, 0, 2, false, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_matmul(c, gv(by), gv(bx), gv(bw), LT_F32, 2, 3, 0, true, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  cr_assert_eq(gpu_stats(tgpu())->dispatches, before, "empty products dispatch nothing");
  float *got = tread_f32(by, 6);
  tassert_close(got, junk, 6, 0, 0, "K = 0, accumulate");
  free(got);
  for (int path = MATMUL_GEMM; path <= MATMUL_GEMM_DIRECT; path++) {
    cr_assert_eq(gpu_upload(by, 0, junk, sizeof junk, &err), LT_OK);
    c = tbegin();
    cr_assert_eq(op_matmul_path(c, gv(by), gv(bx), gv(bw), LT_F32, 2, 3, 0, false, path, &err), LT_OK, "%s", err.msg);
    tfinish(&c);
    got = tread_f32(by, 6);
    tassert_close(got, zeros, 6, 0, 0, "K = 0 writes zeros");
    free(got);
  }
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bw), gpu_buf_destroy(&by);
}

Test(matmul, repeated_runs_are_bit_identical) {
  /* Shared-memory tiles and subgroup partials are summed in a fixed order: a race would show up as jitter. */
  for (int path = MATMUL_GEMM; path <= MATMUL_GEMM_DIRECT; path++) {
    problem_t p = problem_new(67, 65, 132, LT_F32, false, 5);
    float *first = run_gpu(&p, false, path, NULL);
    for (int r = 0; r < 3; r++) {
      float *again = run_gpu(&p, false, path, NULL);
      cr_assert(memcmp(first, again, (size_t)67 * 65 * 4) == 0, "path %d run %d differs from the first", path, r);
      free(again);
    }
    free(first);
    problem_free(&p);
  }
}

Test(matmul, bad_arguments_are_errors) {
  gpu_buf_t *b = tbuf_f32(NULL, 1024);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_matmul(c, gv(b), gv(b), gv(b), LT_I32, 4, 4, 4, false, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "i32") != NULL, "names the dtype: %s", err.msg);
  cr_assert_eq(op_matmul_path(c, gv(b), gv(b), gv(b), LT_F32, 4, 4, 4, false, (matmul_path_t)9, &err), LT_E_INVALID);
  /* w of 40 x 40 f32 needs 6,400 bytes of a 4,096-byte buffer: op_dispatch names the binding (2 = w). */
  cr_assert_eq(op_matmul(c, gv(b), gv(b), gv(b), LT_F32, 2, 40, 40, false, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "binding 2") != NULL, "names the binding: %s", err.msg);
  /* A weight larger than one binding may cover is the caller's to split. */
  uint64_t range = gpu_caps(tgpu())->max_storage_range;
  uint32_t N = (uint32_t)(range / 4096 / 2 + 1);
  cr_assert_eq(op_matmul(c, gv(b), gv(b), gv(b), LT_F16, 1, N, 4096, false, &err), LT_E_LIMIT);
  cr_assert(strstr(err.msg, "w (") != NULL && strstr(err.msg, "maxStorageBufferRange") != NULL, "%s", err.msg);
  uint64_t align = gpu_caps(tgpu())->min_storage_align;
  if (align > 1) {
    gpu_view_t odd = {b, align / 2};
    cr_assert_eq(op_matmul(c, gv(b), odd, gv(b), LT_F32, 2, 2, 2, false, &err), LT_E_INVALID);
    cr_assert(strstr(err.msg, "x offset") != NULL, "names the operand: %s", err.msg);
  }
  tfinish(&c);
  gpu_buf_destroy(&b);
}

Test(matmul, strided_rows_fill_column_ranges) {
  /* A weight split into two row pieces fills the two column ranges of one output through row strides (as the
   * model does for weights larger than one binding); x rows are read with a padded stride. Each result element
   * sums the same K products as the reference: same 1e-5 relative tolerance as above, on the absolute sum. */
  const uint32_t M = 7, N = 40, K = 36, XS = 44, split = 16;
  uint64_t seed = 321;
  float *x = talloc((uint64_t)M * XS), *w = talloc((uint64_t)N * K), *xd = talloc((uint64_t)M * K);
  float *want = talloc((uint64_t)M * N);
  trand(x, (uint64_t)M * XS, -1, 1, &seed);
  trand(w, (uint64_t)N * K, -1, 1, &seed);
  for (uint32_t m = 0; m < M; m++) memcpy(xd + (uint64_t)m * K, x + (uint64_t)m * XS, K * 4);
  ref_matmul(want, xd, w, LT_F32, M, N, K, false);
  gpu_buf_t *bx = tbuf_f32(x, (uint64_t)M * XS), *by = tbuf_f32(NULL, (uint64_t)M * N);
  gpu_buf_t *w0 = tbuf_f32(w, (uint64_t)split * K), *w1 = tbuf_f32(w + (uint64_t)split * K, (uint64_t)(N - split) * K);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_matmul_strided(c, gv(by), N, gv(bx), XS, gv(w0), LT_F32, M, split, K, false, &err), LT_OK, "%s",
               err.msg);
  gpu_view_t y1 = {by, (uint64_t)split * 4};
  cr_assert_eq(op_matmul_strided(c, y1, N, gv(bx), XS, gv(w1), LT_F32, M, N - split, K, false, &err), LT_OK, "%s",
               err.msg);
  tfinish(&c);
  float *got = tread_f32(by, (uint64_t)M * N);
  tassert_close(got, want, (uint64_t)M * N, 1e-5 * K, 0, "strided matmul");
  cr_assert_eq(op_matmul_strided(c = tbegin(), gv(by), N - 1, gv(bx), XS, gv(w0), LT_F32, M, N, K, false, &err),
               LT_E_INVALID, "a y stride shorter than N is refused");
  tfinish(&c);
  free(got), free(x), free(w), free(xd), free(want);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&by), gpu_buf_destroy(&w0), gpu_buf_destroy(&w1);
}

/* The gated GEMV (op_gemv_glu): y = act(x . wg^T) * (x . wu^T) for the decode step's MLP. For every dtype, both
 * activations and shapes of 1 to 4 rows with odd N and K (scalar, vec4 and 8-wide loads): against the CPU reference
 * (ref_matmul twice, then ref_swiglu / ref_geglu), within the matmul tolerance above carried through the
 * activation (|d act(g) u| <= |act'(g)| |u| dg + |act(g)| du, with |act'| <= 1.13 for SiLU and GeLU-tanh), and
 * bit for bit against the three separate ops it replaces (same sums in the same order, the same activation code).
 * More than 4 rows is refused (the caller runs the three ops). */
Test(matmul, gated_gemv_equals_the_three_ops_it_fuses) {
  static const shape_t shapes[] = {{1, 37, 53}, {3, 129, 77}, {4, 65, 136}, {2, 3, 1}, {1, 70, 64}, {4, 9, 20}};
  const lt_dtype_t types[3] = {LT_F32, LT_F16, LT_BF16};
  lt_err_t err = {0};
  for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int t = 0; t < 3; t++)
      for (int gelu = 0; gelu < 2; gelu++) {
        const shape_t *sh = &shapes[s];
        problem_t pg = problem_new(sh->M, sh->N, sh->K, types[t], false, 7000 + 10 * s + 2 * t + gelu);
        problem_t pu = problem_new(sh->M, sh->N, sh->K, types[t], false, 8000 + 10 * s + 2 * t + gelu);
        memcpy(pu.x, pg.x, (uint64_t)sh->M * sh->K * 4); /* one x for both products */
        uint64_t MN = (uint64_t)sh->M * sh->N, wb = (uint64_t)sh->N * sh->K * lt_dtype_size(types[t]);
        gpu_buf_t *bx = tbuf_f32(pg.x, (uint64_t)sh->M * sh->K), *bg = tbuf_bytes(pg.w, wb), *bu = tbuf_bytes(pu.w, wb);
        gpu_buf_t *by = tbuf_f32(NULL, MN), *b1 = tbuf_f32(NULL, MN), *b2 = tbuf_f32(NULL, MN);
        uint64_t before = gpu_stats(tgpu())->dispatches;
        gpu_cmd_t *c = tbegin();
        cr_assert_eq(op_gemv_glu(c, gv(by), gv(bx), gv(bg), gv(bu), types[t], sh->M, sh->N, sh->K, gelu,
                                 (gpu_view_t){0}, 0, &err),
                     LT_OK, "%s", err.msg);
        tfinish(&c);
        cr_assert_eq(gpu_stats(tgpu())->dispatches - before, 1, "one dispatch");
        c = tbegin();
        cr_assert_eq(op_matmul_path(c, gv(b1), gv(bx), gv(bg), types[t], sh->M, sh->N, sh->K, false, MATMUL_GEMV, &err),
                     LT_OK, "%s", err.msg);
        cr_assert_eq(op_matmul_path(c, gv(b2), gv(bx), gv(bu), types[t], sh->M, sh->N, sh->K, false, MATMUL_GEMV, &err),
                     LT_OK, "%s", err.msg);
        cr_assert_eq(gelu ? op_geglu(c, gv(b1), gv(b1), gv(b2), (uint32_t)MN, &err)
                          : op_swiglu(c, gv(b1), gv(b1), gv(b2), (uint32_t)MN, &err),
                     LT_OK, "%s", err.msg);
        tfinish(&c);
        float *got = tread_f32(by, MN), *three = tread_f32(b1, MN);
        float *g = talloc(MN), *u = talloc(MN), *want = talloc(MN);
        ref_matmul(g, pg.x, pg.w, types[t], sh->M, sh->N, sh->K, false);
        ref_matmul(u, pg.x, pu.w, types[t], sh->M, sh->N, sh->K, false);
        (gelu ? ref_geglu : ref_swiglu)(want, g, u, (uint32_t)MN);
        for (uint32_t m = 0; m < sh->M; m++)
          for (uint32_t n = 0; n < sh->N; n++) {
            uint64_t i = (uint64_t)m * sh->N + n;
            double mg = 0, mu = 0;
            for (uint32_t k = 0; k < sh->K; k++) {
              double xv = fabs((double)pg.x[(uint64_t)m * sh->K + k]);
              mg += xv * fabs(ref_weight_at(pg.w, types[t], (uint64_t)n * sh->K + k));
              mu += xv * fabs(ref_weight_at(pu.w, types[t], (uint64_t)n * sh->K + k));
            }
            double dg = 1e-5 * mg + 1e-6, du = 1e-5 * mu + 1e-6, act = fabs(want[i] / (u[i] != 0 ? u[i] : 1));
            double tol = 1.13 * fabs(u[i]) * dg + (act + 1.13 * dg) * du + 1e-6;
            cr_assert(fabs(got[i] - want[i]) <= tol, "%ux%ux%u %s %s: y[%u,%u] = %.9g, want %.9g (tolerance %.3g)",
                      sh->M, sh->N, sh->K, lt_dtype_str(types[t]), gelu ? "geglu" : "swiglu", m, n, got[i], want[i],
                      tol);
            cr_assert(memcmp(&got[i], &three[i], 4) == 0, "%ux%ux%u %s %s: y[%u,%u] = %.9g fused, %.9g in three ops",
                      sh->M, sh->N, sh->K, lt_dtype_str(types[t]), gelu ? "geglu" : "swiglu", m, n, got[i], three[i]);
          }
        free(got), free(three), free(g), free(u), free(want);
        gpu_buf_destroy(&bx), gpu_buf_destroy(&bg), gpu_buf_destroy(&bu);
        gpu_buf_destroy(&by), gpu_buf_destroy(&b1), gpu_buf_destroy(&b2);
        problem_free(&pg), problem_free(&pu);
      }
  gpu_buf_t *b = tbuf_f32(NULL, 64);
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_gemv_glu(c, gv(b), gv(b), gv(b), gv(b), LT_F32, 5, 2, 2, false, (gpu_view_t){0}, 0, &err),
               LT_E_UNSUPPORTED);
  cr_assert(strstr(err.msg, "5x2x2"), "%s", err.msg);
  cr_assert_eq(op_gemv_glu(c, gv(b), gv(b), gv(b), gv(b), LT_I8, 1, 2, 2, false, (gpu_view_t){0}, 0, &err),
               LT_E_UNSUPPORTED);
  tfinish(&c);
  gpu_buf_destroy(&b);
}

Test(matmul, qkv_gemv_equals_three_products) {
  /* op_gemv_qkv: the attention's three projections of one x in one dispatch, for every dtype and 1 to 4 rows:
   * against the CPU reference within the matmul tolerance above, and bit for bit against three GEMV dispatches.
   * Row counts that are not a multiple of the kernel's rows per workgroup are refused. */
  static const struct {
    uint32_t M, N, N2, K;
  } shapes[] = {{1, 64, 32, 53}, {3, 48, 16, 136}, {4, 16, 16, 1}, {2, 128, 64, 77}, {1, 32, 32, 20}};
  const lt_dtype_t types[3] = {LT_F32, LT_F16, LT_BF16};
  lt_err_t err = {0};
  for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int t = 0; t < 3; t++) {
      uint32_t M = shapes[s].M, K = shapes[s].K, rows[3] = {shapes[s].N, shapes[s].N2, shapes[s].N2};
      problem_t p[3];
      gpu_buf_t *bw[3], *by[3], *b1[3];
      for (int i = 0; i < 3; i++) {
        p[i] = problem_new(M, rows[i], K, types[t], false, 9000 + 10 * s + 3 * t + i);
        if (i) memcpy(p[i].x, p[0].x, (uint64_t)M * K * 4);
        bw[i] = tbuf_bytes(p[i].w, (uint64_t)rows[i] * K * lt_dtype_size(types[t]));
        by[i] = tbuf_f32(NULL, (uint64_t)M * rows[i]);
        b1[i] = tbuf_f32(NULL, (uint64_t)M * rows[i]);
      }
      gpu_buf_t *bx = tbuf_f32(p[0].x, (uint64_t)M * K);
      gpu_cmd_t *c = tbegin();
      lt_status_t st = op_gemv_qkv(c, gv(by[0]), gv(by[1]), gv(by[2]), gv(bx), gv(bw[0]), gv(bw[1]), gv(bw[2]),
                                   types[t], M, rows[0], rows[1], K, (gpu_view_t){0}, 0, &err);
      cr_assert_eq(st, LT_OK, "%s", err.msg);
      for (int i = 0; i < 3; i++)
        cr_assert_eq(op_matmul_path(c, gv(b1[i]), gv(bx), gv(bw[i]), types[t], M, rows[i], K, false, MATMUL_GEMV, &err),
                     LT_OK, "%s", err.msg);
      tfinish(&c);
      for (int i = 0; i < 3; i++) {
        float *got = tread_f32(by[i], (uint64_t)M * rows[i]), *apart = tread_f32(b1[i], (uint64_t)M * rows[i]);
        cr_assert(memcmp(got, apart, (uint64_t)M * rows[i] * 4) == 0,
                  "%ux%u/%ux%u %s: product %d differs from its "
                  "own GEMV",
                  M, rows[0], rows[1], K, lt_dtype_str(types[t]), i);
        free(got), free(apart);
        check(&p[i], false, MATMUL_GEMV, false, "gemv (the qkv reference)");
        gpu_buf_destroy(&bw[i]), gpu_buf_destroy(&by[i]), gpu_buf_destroy(&b1[i]);
        problem_free(&p[i]);
      }
      gpu_buf_destroy(&bx);
    }
  gpu_buf_t *b = tbuf_f32(NULL, 4096);
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(
      op_gemv_qkv(c, gv(b), gv(b), gv(b), gv(b), gv(b), gv(b), gv(b), LT_F32, 1, 37, 16, 8, (gpu_view_t){0}, 0, &err),
      LT_E_UNSUPPORTED);
  cr_assert_eq(
      op_gemv_qkv(c, gv(b), gv(b), gv(b), gv(b), gv(b), gv(b), gv(b), LT_F32, 5, 16, 16, 8, (gpu_view_t){0}, 0, &err),
      LT_E_UNSUPPORTED);
  tfinish(&c);
  gpu_buf_destroy(&b);
}

Test(matmul, qkv_gemv_with_rope_equals_the_products_then_op_rope) {
  /* op_gemv_qkv_rope: q and k leave the fused product turned by RoPE. Against op_gemv_qkv followed by op_rope on q
   * and k in the same recording, for f32 and f16 weights, both pair layouts, with and without the norm folded in,
   * 1 to 4 rows at positions inside the table and one past it (left as it is). The sums are the same; the turn is
   * two products and a sum in f32 either way, which a compiler may contract into an fma differently: within
   * 3 x 2^-24 of |a| + |b| for the pair (a, b), bounded here by 4e-7 of the largest product. v is bit for bit. */
  static const struct {
    uint32_t M, N, N2, K, hd;
  } shapes[] = {{1, 64, 32, 53, 16},
                {3, 48, 16, 136, 8},
                {4, 32, 32, 20, 32},
                {2, 128, 64, 77, 64},
                {1, 768, 256, 768, 64}}; /* the last: RoPE pairs in workgroups whose rows are spread (gemv_spread) */
  const lt_dtype_t types[2] = {LT_F32, LT_F16};
  const int32_t positions[4] = {3, 0, 15, 40};
  const uint32_t max_pos = 16;
  lt_err_t err = {0};
  for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int t = 0; t < 2; t++)
      for (int variant = 0; variant < 4; variant++) {
        bool neox = variant & 1, norm = variant & 2;
        uint32_t M = shapes[s].M, K = shapes[s].K, hd = shapes[s].hd,
                 rows[3] = {shapes[s].N, shapes[s].N2, shapes[s].N2};
        problem_t p[3];
        gpu_buf_t *bw[3], *by[3], *b1[3];
        for (int i = 0; i < 3; i++) {
          p[i] = problem_new(M, rows[i], K, types[t], false, 15000 + 10 * s + 3 * t + i);
          bw[i] = tbuf_bytes(p[i].w, (uint64_t)rows[i] * K * lt_dtype_size(types[t]));
          by[i] = tbuf_f32(NULL, (uint64_t)M * rows[i]);
          b1[i] = tbuf_f32(NULL, (uint64_t)M * rows[i]);
        }
        float *table = talloc((uint64_t)max_pos * hd), *g = talloc(K);
        rope_table_build(table, max_pos, hd, 10000.0, NULL);
        uint64_t seed = 5 + s;
        trand(g, K, 0.5, 1.5, &seed);
        gpu_buf_t *bx = tbuf_f32(p[0].x, (uint64_t)M * K), *bt = tbuf_f32(table, (uint64_t)max_pos * hd);
        gpu_buf_t *bp = tbuf_bytes(positions, 4ull * M), *bg = tbuf_f32(g, K);
        gpu_view_t nv = norm ? gv(bg) : (gpu_view_t){0};
        op_qkv_rope_t r = {gv(bp), gv(bt), hd, max_pos, neox};
        gpu_cmd_t *c = tbegin();
        cr_assert_eq(op_gemv_qkv_rope(c, gv(by[0]), gv(by[1]), gv(by[2]), gv(bx), gv(bw[0]), gv(bw[1]), gv(bw[2]),
                                      types[t], M, rows[0], rows[1], K, nv, 1e-5f, &r, &err),
                     LT_OK, "%s", err.msg);
        cr_assert_eq(op_gemv_qkv(c, gv(b1[0]), gv(b1[1]), gv(b1[2]), gv(bx), gv(bw[0]), gv(bw[1]), gv(bw[2]), types[t],
                                 M, rows[0], rows[1], K, nv, 1e-5f, &err),
                     LT_OK, "%s", err.msg);
        for (int i = 0; i < 2; i++)
          cr_assert_eq(op_rope(c, gv(b1[i]), gv(bp), gv(bt), M, rows[i] / hd, hd, hd, neox, max_pos, &err), LT_OK, "%s",
                       err.msg);
        tfinish(&c);
        for (int i = 0; i < 3; i++) {
          uint64_t n = (uint64_t)M * rows[i];
          float *got = tread_f32(by[i], n), *want = tread_f32(b1[i], n);
          float big = 0;
          for (uint64_t e = 0; e < n; e++) big = fmaxf(big, fabsf(want[e]));
          for (uint64_t e = 0; e < n; e++)
            cr_assert(i == 2 ? got[e] == want[e] : fabsf(got[e] - want[e]) <= 4e-7f * big,
                      "%ux%u/%ux%u %s hd %u %s%s: product %d element %llu: %.9g, apart %.9g", M, rows[0], rows[1], K,
                      lt_dtype_str(types[t]), hd, neox ? "neox" : "interleaved", norm ? " normed" : "", i,
                      (unsigned long long)e, got[e], want[e]);
          free(got), free(want);
          gpu_buf_destroy(&bw[i]), gpu_buf_destroy(&by[i]), gpu_buf_destroy(&b1[i]);
          problem_free(&p[i]);
        }
        free(table), free(g);
        gpu_buf_destroy(&bx), gpu_buf_destroy(&bt), gpu_buf_destroy(&bp), gpu_buf_destroy(&bg);
      }
  /* A head size that does not divide the rows is refused, nothing recorded. */
  gpu_buf_t *b = tbuf_f32(NULL, 4096);
  op_qkv_rope_t r = {gv(b), gv(b), 12, 4, true};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_gemv_qkv_rope(c, gv(b), gv(b), gv(b), gv(b), gv(b), gv(b), gv(b), LT_F32, 1, 32, 16, 8,
                                (gpu_view_t){0}, 0, &r, &err),
               LT_E_UNSUPPORTED);
  tfinish(&c);
  gpu_buf_destroy(&b);
}

Test(matmul, fused_gemv_with_the_norm_folded_in) {
  /* Both fused GEMVs with an RMSNorm folded in (x the residual stream, g the norm's multipliers): against the CPU
   * reference of the separate steps (ref_rmsnorm, then ref_matmul, then the activation). The fold sums x g w and
   * scales by 1/sqrt(mean x^2 + eps) at the end, so it differs from the reference by f32 rounding only: the matmul
   * tolerance on the normalised rows' |x_n w| sums, plus 1e-5 of the result for the scale's own rounding (a sum
   * of K squares and one inverse square root), carried through the activation as above. */
  static const shape_t shapes[] = {{1, 32, 53}, {3, 48, 136}, {4, 16, 20}, {2, 64, 64}};
  const lt_dtype_t types[2] = {LT_F32, LT_F16};
  const float eps = 1e-5f;
  lt_err_t err = {0};
  for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int t = 0; t < 2; t++) {
      uint32_t M = shapes[s].M, N = shapes[s].N, K = shapes[s].K;
      problem_t pa = problem_new(M, N, K, types[t], false, 11000 + 10 * s + t);
      problem_t pb = problem_new(M, N, K, types[t], false, 12000 + 10 * s + t);
      problem_t pc = problem_new(M, N, K, types[t], false, 13000 + 10 * s + t);
      float *g = talloc(K), *xn = talloc((uint64_t)M * K);
      uint64_t seed = 99 + s;
      trand(g, K, 0.5, 1.5, &seed);
      ref_rmsnorm(xn, pa.x, g, M, K, eps);
      uint64_t wb = (uint64_t)N * K * lt_dtype_size(types[t]);
      gpu_buf_t *bx = tbuf_f32(pa.x, (uint64_t)M * K), *bg = tbuf_f32(g, K);
      gpu_buf_t *wa = tbuf_bytes(pa.w, wb), *wbb = tbuf_bytes(pb.w, wb), *wc = tbuf_bytes(pc.w, wb);
      gpu_buf_t *y1 = tbuf_f32(NULL, (uint64_t)M * N), *y2 = tbuf_f32(NULL, (uint64_t)M * N);
      gpu_buf_t *y3 = tbuf_f32(NULL, (uint64_t)M * N), *yg = tbuf_f32(NULL, (uint64_t)M * N);
      gpu_cmd_t *c = tbegin();
      cr_assert_eq(op_gemv_qkv(c, gv(y1), gv(y2), gv(y3), gv(bx), gv(wa), gv(wbb), gv(wc), types[t], M, N, N, K, gv(bg),
                               eps, &err),
                   LT_OK, "%s", err.msg);
      cr_assert_eq(op_gemv_glu(c, gv(yg), gv(bx), gv(wa), gv(wbb), types[t], M, N, K, false, gv(bg), eps, &err), LT_OK,
                   "%s", err.msg);
      tfinish(&c);
      const problem_t *ps[3] = {&pa, &pb, &pc};
      gpu_buf_t *ys[3] = {y1, y2, y3};
      float *prod[3];
      for (int i = 0; i < 3; i++) {
        prod[i] = talloc((uint64_t)M * N);
        ref_matmul(prod[i], xn, ps[i]->w, types[t], M, N, K, false);
        float *got = tread_f32(ys[i], (uint64_t)M * N);
        for (uint32_t m = 0; m < M; m++)
          for (uint32_t n = 0; n < N; n++) {
            double mag = 0;
            for (uint32_t k = 0; k < K; k++)
              mag += fabs((double)xn[(uint64_t)m * K + k] * ref_weight_at(ps[i]->w, types[t], (uint64_t)n * K + k));
            double e = prod[i][(uint64_t)m * N + n], tol = 1e-5 * mag + 1e-5 * fabs(e) + 1e-6;
            cr_assert(fabs(got[(uint64_t)m * N + n] - e) <= tol,
                      "qkv+norm %ux%ux%u %s product %d: y[%u,%u] = %.9g, "
                      "want %.9g",
                      M, N, K, lt_dtype_str(types[t]), i, m, n, got[(uint64_t)m * N + n], e);
          }
        free(got);
      }
      float *want = talloc((uint64_t)M * N), *got = tread_f32(yg, (uint64_t)M * N);
      ref_swiglu(want, prod[0], prod[1], M * N);
      for (uint64_t i = 0; i < (uint64_t)M * N; i++) {
        double dg = 1e-5 * fabs(prod[0][i]) + 1e-4, du = 1e-5 * fabs(prod[1][i]) + 1e-4;
        double tol =
            1.13 * fabs(prod[1][i]) * dg + (fabs(want[i] / (prod[1][i] != 0 ? prod[1][i] : 1)) + 1.13 * dg) * du;
        cr_assert(fabs(got[i] - want[i]) <= tol, "glu+norm %ux%ux%u %s: y[%llu] = %.9g, want %.9g (tolerance %.3g)", M,
                  N, K, lt_dtype_str(types[t]), (unsigned long long)i, got[i], want[i], tol);
      }
      free(want), free(got), free(g), free(xn);
      for (int i = 0; i < 3; i++) free(prod[i]);
      gpu_buf_destroy(&bx), gpu_buf_destroy(&bg), gpu_buf_destroy(&wa), gpu_buf_destroy(&wbb), gpu_buf_destroy(&wc);
      gpu_buf_destroy(&y1), gpu_buf_destroy(&y2), gpu_buf_destroy(&y3), gpu_buf_destroy(&yg);
      problem_free(&pa), problem_free(&pb), problem_free(&pc);
    }
}
