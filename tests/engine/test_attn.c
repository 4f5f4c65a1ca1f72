/* RoPE, embedding gather and causal attention against their CPU references, on odd shapes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ref/ref.h"
#include "support/tgpu.h"

TestSuite(attn, .init = tgpu_setup, .fini = tgpu_teardown);

/* ---- RoPE ---- */

/* Rotates a copy of x[rows, n_heads, head_dim] on the GPU with a table of max_pos positions built by
 * rope_table_build(); returns the result (caller frees). */
static float *rope_gpu(const float *x, const int32_t *pos, uint32_t rows, uint32_t n_heads, uint32_t head_dim,
                       uint32_t rot_dim, bool neox, double theta, const rope_scaling_t *sc, uint32_t max_pos) {
  uint64_t n = (uint64_t)rows * n_heads * head_dim;
  float *table = talloc((uint64_t)max_pos * rot_dim);
  rope_table_build(table, max_pos, rot_dim, theta, sc);
  gpu_buf_t *bx = tbuf_f32(x, n), *bp = tbuf_bytes(pos, 4ull * rows),
            *bt = tbuf_f32(table, (uint64_t)max_pos * rot_dim);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_rope(c, gv(bx), gv(bp), gv(bt), rows, n_heads, head_dim, rot_dim, neox, max_pos, &err), LT_OK, "%s",
               err.msg);
  tfinish(&c);
  float *got = tread_f32(bx, n);
  free(table);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&bp), gpu_buf_destroy(&bt);
  return got;
}

/* Compares op_rope with ref_rope (theta 10000, positions < 300). The first and last rows have positions outside
 * the table (-1 and 300) and must come back untouched. rows >= 3. */
static void check_rope(uint32_t rows, uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim, bool neox,
                       const char *what) {
  uint64_t n = (uint64_t)rows * n_heads * head_dim, seed = 77 + head_dim + rot_dim;
  uint32_t max_pos = 300;
  float *x = talloc(n), *want = talloc(n);
  int32_t *pos = malloc(4ull * rows);
  cr_assert(pos != NULL);
  trand(x, n, -1, 1, &seed);
  for (uint32_t r = 0; r < rows; r++) pos[r] = (int32_t)((r * 97u + 3u) % max_pos);
  pos[0] = -1, pos[rows - 1] = (int32_t)max_pos; /* outside the table: left untouched */
  memcpy(want, x, n * 4);
  uint64_t row = (uint64_t)n_heads * head_dim;
  ref_rope(want + row, pos + 1, rows - 2, n_heads, head_dim, rot_dim, neox, 10000.0, NULL);
  float *got = rope_gpu(x, pos, rows, n_heads, head_dim, rot_dim, neox, 10000.0, NULL, max_pos);
  /* |x| <= 1: the table's cos and sin are f32 roundings of the double values (2^-24 relative each) and the GPU
   * rounds two products and a sum in f32, so |error| <= ~5 * 6e-8 = 3e-7; 1e-6 absolute covers it, while a wrong
   * pairing, sign or frequency moves results by O(0.1). Dims past rot_dim must match exactly (within atol). */
  tassert_close(got, want, n, 1e-6, 0, what);
  free(got), free(x), free(want), free(pos);
}

Test(attn, rope_neox_and_interleaved) {
  check_rope(7, 3, 40, 40, true, "rope neox 40");
  check_rope(7, 3, 40, 40, false, "rope interleaved 40");
  check_rope(5, 2, 128, 128, true, "rope neox 128");
}

Test(attn, rope_partial_rotary) {
  check_rope(6, 5, 64, 24, true, "rope neox 24 of 64");
  check_rope(6, 5, 40, 16, false, "rope interleaved 16 of 40");
}

Test(attn, rope_rows_past_the_grid_y_limit) {
  /* 70001 rows need the grid's z dimension (y stops at 65535). */
  check_rope(70001, 1, 6, 4, true, "rope 70001 rows");
}

Test(attn, rope_llama3_scaling_at_large_positions) {
  /* Llama 3.1 settings; with theta 500000 and 64 rotated dims, pairs 0..14 keep their frequency, 15..17 are
   * interpolated and 18..31 are divided by the factor, so all three branches are exercised. */
  rope_scaling_t sc = {
      .type = 1, .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4, .original_max_position = 8192};
  int32_t pos[] = {0, 1, 2047, 8191, 8192, 32767, 65536, 99999, 100000};
  uint32_t rows = 9, n_heads = 3, hd = 64, max_pos = 100001;
  uint64_t n = (uint64_t)rows * n_heads * hd, seed = 4242;
  float *x = talloc(n), *want = talloc(n), *plain = talloc(n);
  trand(x, n, -1, 1, &seed);
  memcpy(want, x, n * 4);
  memcpy(plain, x, n * 4);
  ref_rope(want, pos, rows, n_heads, hd, hd, true, 500000.0, &sc);
  ref_rope(plain, pos, rows, n_heads, hd, hd, true, 500000.0, NULL);
  float *got = rope_gpu(x, pos, rows, n_heads, hd, hd, true, 500000.0, &sc, max_pos);
  /* Angles are computed in double for both (pos 100000 in f32 angles would be off by ~1e-2 rad); the table only
   * rounds cos/sin to f32 (~6e-8), times |x| <= 1, plus f32 products: 1e-6 absolute as for plain RoPE. */
  tassert_close(got, want, n, 1e-6, 0, "rope llama3");
  double diff = 0;
  for (uint64_t i = 0; i < n; i++) diff = fmax(diff, fabs((double)want[i] - plain[i]));
  cr_assert(diff > 0.1, "the scaling must matter at these positions (max change %g)", diff);
  free(got), free(x), free(want), free(plain);
}

/* ---- embedding gather ---- */

/* Gathers n_ids ids (the first 23 fixed, including out-of-range ones; the rest pseudo-random in [-3, vocab + 3))
 * from a table of `vocab` rows split at row 37, with one call per piece, and compares with ref_embed. */
static void check_embed(lt_dtype_t tt, uint32_t n_ids, uint32_t dim) {
  uint32_t vocab = 101, split = 37;
  int32_t fixed[23] = {5, 36, 37, 100, 0, -1, 101, 200, 64, 36, 99, 1, 37, 2, 50, -7, 88, 7, 36, 14, 100, 3, 42};
  int32_t *ids = malloc(4ull * n_ids);
  cr_assert(ids != NULL);
  for (uint32_t i = 0; i < n_ids; i++) ids[i] = i < 23 ? fixed[i] : (int32_t)((i * 2654435761u) % (vocab + 6)) - 3;
  uint64_t nt = (uint64_t)vocab * dim, seed = 31 + tt;
  float *tf = talloc(nt), *want = talloc((uint64_t)n_ids * dim), *init = talloc((uint64_t)n_ids * dim);
  uint16_t *th = malloc(nt * 2);
  cr_assert(th != NULL);
  trand(tf, nt, -3, 3, &seed);
  for (uint64_t i = 0; i < nt; i++) th[i] = tt == LT_BF16 ? dtype_float_to_bf16(tf[i]) : dtype_float_to_half(tf[i]);
  for (uint64_t i = 0; i < (uint64_t)n_ids * dim; i++) init[i] = 7.25f; /* rows with bad ids must keep this */
  memcpy(want, init, (uint64_t)n_ids * dim * 4);
  const void *table = tt == LT_F32 ? (const void *)tf : (const void *)th;
  ref_embed(want, table, tt, ids, n_ids, dim, 0, vocab);
  uint32_t es = lt_dtype_size(tt);
  gpu_buf_t *b0 = tbuf_bytes(table, (uint64_t)split * dim * es);
  gpu_buf_t *b1 = tbuf_bytes((const char *)table + (uint64_t)split * dim * es, (uint64_t)(vocab - split) * dim * es);
  gpu_buf_t *bi = tbuf_bytes(ids, 4ull * n_ids), *by = tbuf_f32(init, (uint64_t)n_ids * dim);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_embed(c, gv(by), gv(b0), tt, gv(bi), n_ids, dim, 0, split, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_embed(c, gv(by), gv(b1), tt, gv(bi), n_ids, dim, split, vocab, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, (uint64_t)n_ids * dim);
  /* A gather is a copy and f16/bf16 -> f32 is exact: the results must be identical. */
  tassert_close(got, want, (uint64_t)n_ids * dim, 0, 0, lt_dtype_str(tt));
  free(got), free(tf), free(th), free(want), free(init), free(ids);
  gpu_buf_destroy(&b0), gpu_buf_destroy(&b1), gpu_buf_destroy(&bi), gpu_buf_destroy(&by);
}

Test(attn, embed_f32_split_table) { check_embed(LT_F32, 23, 45); }

Test(attn, embed_f16_split_table) { check_embed(LT_F16, 23, 45); }

Test(attn, embed_bf16_split_table) { check_embed(LT_BF16, 23, 45); }

Test(attn, embed_ids_past_the_grid_y_limit) {
  /* 70001 ids need the grid's z dimension (y stops at 65535). */
  check_embed(LT_F32, 70001, 3);
}

/* ---- attention ---- */

/* Runs op_attention on random q, k, v (cache of kv_len + 3 positions, NaN past kv_len) and compares with
 * ref_attention. */
static void check_attn_wc(uint32_t n_q, uint32_t n_heads, uint32_t n_kv, uint32_t hd, uint32_t q_pos0, uint32_t kv_len,
                          uint32_t window, float softcap, const char *what) {
  uint32_t cap = kv_len + 3;
  uint64_t nq = (uint64_t)n_q * n_heads * hd, nkv = (uint64_t)cap * n_kv * hd, nvalid = (uint64_t)kv_len * n_kv * hd;
  uint64_t seed = 1000003ull * n_q + 7ull * kv_len + hd;
  float *q = talloc(nq), *k = talloc(nkv), *v = talloc(nkv), *want = talloc(nq);
  trand(q, nq, -2, 2, &seed);
  trand(k, nkv, -1, 1, &seed);
  trand(v, nkv, -1, 1, &seed);
  for (uint64_t i = nvalid; i < nkv; i++) k[i] = v[i] = NAN; /* positions past kv_len must never be read */
  float scale = 1.0f / sqrtf((float)hd);
  ref_attention(want, q, k, v, n_q, n_heads, n_kv, hd, q_pos0, kv_len, window, scale, softcap);
  gpu_buf_t *bq = tbuf_f32(q, nq), *bk = tbuf_f32(k, nkv), *bv = tbuf_f32(v, nkv), *bo = tbuf_f32(NULL, nq);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_attention(c, gv(bo), gv(bq), gv(bk), gv(bv), n_q, n_heads, n_kv, hd, q_pos0, kv_len, window, scale,
                            softcap, &err),
               LT_OK, "%s: %s", what, err.msg);
  tfinish(&c);
  float *got = tread_f32(bo, nq);
  /* Outputs are convex combinations of v in [-1, 1]. The GPU sums scores, probabilities and weighted values in f32
   * in another order (blocks, online rescaling, split merge) than the double reference: errors of a few 1e-7
   * relative of the sums of |terms| (each <= 1 here), so 1e-5 absolute + 1e-4 relative has margin, while a wrong
   * mask, scale or head mapping moves outputs by O(0.01-0.1). */
  tassert_close(got, want, nq, 1e-5, 1e-4, what);
  free(got), free(q), free(k), free(v), free(want);
  gpu_buf_destroy(&bq), gpu_buf_destroy(&bk), gpu_buf_destroy(&bv), gpu_buf_destroy(&bo);
}

static void check_attn_w(uint32_t n_q, uint32_t n_heads, uint32_t n_kv, uint32_t hd, uint32_t q_pos0, uint32_t kv_len,
                         uint32_t window, const char *what) {
  check_attn_wc(n_q, n_heads, n_kv, hd, q_pos0, kv_len, window, 0.0f, what);
}

static void check_attn(uint32_t n_q, uint32_t n_heads, uint32_t n_kv, uint32_t hd, uint32_t q_pos0, uint32_t kv_len,
                       const char *what) {
  check_attn_w(n_q, n_heads, n_kv, hd, q_pos0, kv_len, 0, what);
}

Test(attn, sliding_window) {
  /* Mistral's window: query t sees keys (t - W, t]. Windows shorter than a 64-key block, across block and split
   * boundaries, with GQA, in prefill, chunked prefill and decode; a window past the sequence is full attention. */
  check_attn_w(37, 4, 2, 16, 0, 37, 4, "prefill 37, window 4");
  check_attn_w(100, 6, 3, 40, 0, 100, 70, "prefill 100, window 70 (more than a block)");
  check_attn_w(13, 4, 1, 64, 24, 37, 5, "chunk of 13 after 24, window 5");
  check_attn_w(1, 8, 2, 128, 36, 37, 9, "decode, window 9");
  check_attn_w(2, 4, 2, 128, 4998, 5000, 300, "decode-like with splits, window 300");
  check_attn_w(300, 2, 1, 38, 0, 300, 260, "prefill across a split boundary, window 260");
  check_attn_w(20, 2, 1, 8, 0, 20, 1000, "a window longer than the sequence");
}

Test(attn, soft_capped_scores) {
  /* Gemma 2: scores capped by cap * tanh(s / cap), alone and with a window (its local layers); q in [-2, 2] and head
   * sizes up to 64 give scaled scores of several units, so a cap of 1.5 bends most of them. */
  check_attn_wc(37, 4, 2, 16, 0, 37, 0, 1.5f, "prefill 37, cap 1.5");
  check_attn_wc(13, 4, 1, 64, 24, 37, 5, 1.5f, "chunk of 13 after 24, window 5, cap 1.5");
  check_attn_wc(2, 4, 2, 128, 4998, 5000, 0, 50.0f, "decode-like with splits, cap 50");
}

Test(attn, a_window_changes_the_output) {
  /* The window must matter: the same problem with and without it differs by far more than the tolerance. */
  uint32_t n_q = 20, H = 2, KV = 1, hd = 8;
  uint64_t nq = (uint64_t)n_q * H * hd, nk = (uint64_t)n_q * KV * hd, seed = 5;
  float *q = talloc(nq), *k = talloc(nk), *v = talloc(nk), *a = talloc(nq), *b = talloc(nq);
  trand(q, nq, -2, 2, &seed), trand(k, nk, -1, 1, &seed), trand(v, nk, -1, 1, &seed);
  ref_attention(a, q, k, v, n_q, H, KV, hd, 0, n_q, 4, 0.35f, 0.0f);
  ref_attention(b, q, k, v, n_q, H, KV, hd, 0, n_q, 0, 0.35f, 0.0f);
  double worst = 0;
  for (uint64_t i = 0; i < nq; i++) worst = fmax(worst, fabs(a[i] - b[i]));
  /* Rows 0..3 see at most 4 keys either way: identical; later rows lose keys. */
  for (uint64_t i = 0; i < 4ull * H * hd; i++) cr_assert_eq(a[i], b[i], "row %llu", (unsigned long long)(i / (H * hd)));
  cr_assert_gt(worst, 0.05, "window 4 moved the outputs by only %g", worst);
  free(q), free(k), free(v), free(a), free(b);
}

Test(attn, prefill) {
  check_attn(37, 4, 4, 64, 0, 37, "prefill 37, gqa 1, hd 64");
  check_attn(37, 6, 3, 40, 0, 37, "prefill 37, gqa 2, hd 40");
  check_attn(37, 8, 2, 8, 0, 37, "prefill 37, gqa 4, hd 8");
  check_attn(37, 2, 1, 37, 0, 37, "prefill 37, gqa 2, odd hd 37");
}

Test(attn, decode) {
  check_attn(1, 8, 2, 128, 36, 37, "decode, gqa 4, hd 128");
  check_attn(1, 4, 4, 40, 36, 37, "decode, gqa 1, hd 40");
  check_attn(1, 4, 2, 255, 36, 37, "decode, gqa 2, hd 255");
  check_attn(1, 2, 1, 8, 0, 1, "decode of the first token");
}

Test(attn, decode_kernel_shapes) {
  /* Few queries per KV head run attn_dec.comp: one to eight query heads per KV head, one to four rows, heads of 4 to
   * 256 (one to eight invocations sharing a key's dims), a cache in one split and in several, windows and caps. */
  check_attn(1, 8, 4, 8, 63, 64, "decode, gqa 2, hd 8 (stories260K)");
  check_attn(1, 12, 4, 64, 255, 256, "decode, gqa 3, hd 64");
  check_attn(4, 12, 4, 64, 252, 256, "4 rows, gqa 3, hd 64");
  check_attn(3, 16, 2, 4, 40, 43, "3 rows, gqa 8, hd 4");
  check_attn(1, 2, 2, 256, 99, 100, "decode, gqa 1, hd 256");
  check_attn(2, 4, 2, 256, 30, 32, "2 rows, gqa 2, hd 256");
  check_attn(1, 32, 4, 128, 2999, 3000, "decode at 3000 keys (splits), gqa 8, hd 128");
  check_attn(4, 8, 8, 96, 5000, 5004, "4 rows at 5004 keys (splits), gqa 1, hd 96");
  check_attn_wc(2, 8, 2, 32, 1020, 1022, 300, 0.0f, "2 rows, window 300 across splits");
  check_attn_wc(1, 4, 2, 64, 700, 701, 0, 1.5f, "decode, cap 1.5");
  check_attn(2, 4, 2, 16, 8, 9, "rows past the cache see only kv_len keys");
}

/* max |a - b| over n floats, and whether any pair differs in its bits. */
static double max_diff(const float *a, const float *b, uint64_t n, bool *bits_differ) {
  double worst = 0;
  *bits_differ = false;
  for (uint64_t i = 0; i < n; i++) {
    worst = fmax(worst, fabs((double)a[i] - b[i]));
    *bits_differ |= memcmp(&a[i], &b[i], 4) != 0;
  }
  return worst;
}

/* Runs one problem sh = {n_q, n_heads, n_kv, hd, q_pos0, kv_len} (random q, k, v from seed) with a kernel switched
 * on and off (`kernel`: op_attention_decode_kernel or op_attention_row_kernel; off, attn.comp's tiles run): the two
 * agree within f32 rounding and are not the same bits (so the switch really changed kernels). */
static void check_against_tiles(void (*kernel)(bool), const uint32_t sh[6], uint64_t seed, float scale,
                                const char *what) {
  uint64_t nq = (uint64_t)sh[0] * sh[1] * sh[3], nkv = (uint64_t)sh[5] * sh[2] * sh[3];
  float *q = talloc(nq), *k = talloc(nkv), *v = talloc(nkv);
  trand(q, nq, -2, 2, &seed), trand(k, nkv, -1, 1, &seed), trand(v, nkv, -1, 1, &seed);
  gpu_buf_t *bq = tbuf_f32(q, nq), *bk = tbuf_f32(k, nkv), *bv = tbuf_f32(v, nkv);
  gpu_buf_t *bo[2] = {tbuf_f32(NULL, nq), tbuf_f32(NULL, nq)};
  float *got[2];
  for (int tiled = 0; tiled < 2; tiled++) {
    kernel(!tiled);
    lt_err_t err = {0};
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_attention(c, gv(bo[tiled]), gv(bq), gv(bk), gv(bv), sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], 0,
                              scale, 0.0f, &err),
                 LT_OK, "%s: %s", what, err.msg);
    tfinish(&c);
    got[tiled] = tread_f32(bo[tiled], nq);
  }
  kernel(true);
  bool differ;
  double d = max_diff(got[0], got[1], nq, &differ);
  /* Outputs in [-1, 1]: f32 sums in two orders agree to a few 1e-7 (the reference tolerance is 1e-5). */
  cr_assert_leq(d, 1e-5, "%s: the kernel and the tiles differ by %g", what, d);
  cr_assert(differ, "%s: the same bits both ways: the kernel did not run", what);
  free(got[0]), free(got[1]), free(q), free(k), free(v);
  gpu_buf_destroy(&bq), gpu_buf_destroy(&bk), gpu_buf_destroy(&bv), gpu_buf_destroy(&bo[0]), gpu_buf_destroy(&bo[1]);
}

Test(attn, decode_kernel_against_the_tiled_kernel) {
  /* The same decode problems through attn_dec.comp and through attn.comp's tiles (op_attention_decode_kernel). */
  static const uint32_t shapes[][6] = {{1, 8, 4, 8, 63, 64}, {1, 12, 4, 64, 255, 256}, {2, 32, 8, 128, 1998, 2000}};
  static const char *what[] = {"decode, gqa 2, hd 8", "decode, gqa 3, hd 64", "2 rows, gqa 4, hd 128"};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    check_against_tiles(op_attention_decode_kernel, shapes[i], 77 + i, 1.0f / sqrtf((float)shapes[i][3]), what[i]);
}

Test(attn, tiled_kernel_shapes) {
  /* With the decode and row kernels off every shape runs attn.comp's tiles (what GPUs run for heads over 32 dims,
   * and any device for heads not a multiple of 4): prefill, decode, windows, caps and splits. */
  op_attention_decode_kernel(false);
  op_attention_row_kernel(false);
  check_attn(37, 4, 4, 64, 0, 37, "tiles: prefill 37, gqa 1, hd 64");
  check_attn(37, 8, 2, 8, 0, 37, "tiles: prefill 37, gqa 4, hd 8");
  check_attn(1, 8, 2, 128, 36, 37, "tiles: decode, gqa 4, hd 128");
  check_attn(13, 4, 1, 128, 24, 37, "tiles: chunk of 13 after 24, gqa 4, hd 128");
  check_attn_w(100, 6, 3, 40, 0, 100, 70, "tiles: prefill 100, window 70");
  check_attn_wc(13, 4, 1, 64, 24, 37, 5, 1.5f, "tiles: chunk of 13 after 24, window 5, cap 1.5");
  check_attn(2, 4, 2, 128, 4998, 5000, "tiles: decode-like, 5000 keys");
  check_attn(300, 2, 1, 36, 0, 300, "tiles: prefill across a split boundary");
  op_attention_decode_kernel(true);
  op_attention_row_kernel(true);
}

Test(attn, row_kernel_shapes) {
  /* Small heads (and on CPU drivers heads up to 128) run one invocation per query (attn_rows.comp): GQA 1 to 8,
   * heads of 4 to 128, chunks after a cache, windows, caps, and a cache split over several workgroups. */
  check_attn(512, 8, 4, 8, 0, 512, "rows: prefill 512, gqa 2, hd 8 (stories260K)");
  check_attn(70, 16, 2, 4, 0, 70, "rows: prefill 70, gqa 8, hd 4");
  check_attn(33, 4, 4, 32, 10, 43, "rows: chunk of 33 after 10, gqa 1, hd 32");
  check_attn_w(90, 4, 2, 16, 0, 90, 7, "rows: prefill 90, window 7");
  check_attn_wc(40, 4, 2, 16, 0, 40, 0, 1.5f, "rows: prefill 40, cap 1.5");
  check_attn(40, 2, 2, 32, 3000, 3040, "rows: 40 rows after 3000 keys (splits)");
}

Test(attn, row_kernel_against_the_tiled_kernel) {
  /* Prefill of small heads through attn_rows.comp and through attn.comp's tiles (op_attention_row_kernel). */
  static const uint32_t shape[6] = {200, 8, 4, 8, 0, 200};
  check_against_tiles(op_attention_row_kernel, shape, 99, 0.35f, "prefill 200, gqa 2, hd 8");
}

Test(attn, storage_buffer_keys_and_values) {
  /* CPU drivers read K and V through texel views (op_texel_reads); GPUs, and heads of sizes not a multiple of 4,
   * read storage buffers. The same shapes through storage buffers against the reference. */
  op_texel_reads(false);
  check_attn(37, 4, 4, 64, 0, 37, "prefill 37, gqa 1, hd 64, storage-buffer K and V");
  check_attn(1, 8, 2, 128, 36, 37, "decode, gqa 4, hd 128, storage-buffer K and V");
  check_attn(5, 4, 2, 64, 30, 32, "chunk, storage-buffer K and V");
  check_attn(2, 4, 2, 128, 4998, 5000, "decode-like, 5000 keys, storage-buffer K and V");
  op_texel_reads(true);
}

Test(attn, chunked_prefill) {
  check_attn(17, 6, 3, 40, 20, 37, "chunk of 17 after 20, gqa 2, hd 40");
  check_attn(13, 4, 1, 128, 24, 37, "chunk of 13 after 24, gqa 4, hd 128");
  check_attn(5, 4, 2, 64, 30, 32, "query rows past the cache see only kv_len keys");
}

Test(attn, long_cache_splits_and_merges) {
  /* Few (row, head) tiles: the 5000 keys are spread over many splits merged by attn_merge. */
  check_attn(2, 4, 2, 128, 4998, 5000, "decode-like, 5000 keys");
}

Test(attn, prefill_across_split_boundaries) {
  /* Few tiles, so 256-key splits: rows 0..255 are written directly, later ones merge two splits, in one call
   * (head_dim 38: scalar loads). */
  check_attn(300, 2, 1, 38, 0, 300, "prefill across a split boundary");
}

Test(attn, loop_cap_canary) {
  /* lavapipe silently stops a loop after ~65,535 iterations per invocation. attn.comp loops ~120 times per block
   * of 64 keys at head_dim 64 (~170 at 256, where a single split went wrong between 24,000 and 30,000 keys), so
   * one split of these 48000 keys would loop ~90,000 times; this passes only while keys are split. */
  check_attn(1, 1, 1, 64, 47999, 48000, "canary: 48000 keys, head_dim 64");
}

Test(attn, bad_arguments_are_errors) {
  gpu_buf_t *b = tbuf_f32(NULL, 4096);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_attention(c, gv(b), gv(b), gv(b), gv(b), 1, 6, 4, 8, 0, 1, 0, 1.0f, 0.0f, &err), LT_E_INVALID);
  cr_assert_eq(op_attention(c, gv(b), gv(b), gv(b), gv(b), 1, 1, 1, 257, 0, 1, 0, 1.0f, 0.0f, &err), LT_E_INVALID);
  cr_assert_eq(op_attention(c, gv(b), gv(b), gv(b), gv(b), 1, 1, 1, 8, 0, 0, 0, 1.0f, 0.0f, &err), LT_E_INVALID);
  cr_assert_eq(op_rope(c, gv(b), gv(b), gv(b), 1, 1, 8, 7, true, 4, &err), LT_E_INVALID);
  cr_assert_eq(op_rope(c, gv(b), gv(b), gv(b), 1, 1, 8, 10, true, 4, &err), LT_E_INVALID);
  cr_assert_eq(op_embed(c, gv(b), gv(b), LT_I32, gv(b), 1, 8, 0, 4, &err), LT_E_INVALID);
  cr_assert_eq(op_embed(c, gv(b), gv(b), LT_F32, gv(b), 1, 8, 5, 4, &err), LT_E_INVALID);
  tfinish(&c);
  gpu_buf_destroy(&b);
}
