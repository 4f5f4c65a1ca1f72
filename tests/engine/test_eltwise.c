/* Elementwise ops against their CPU references, on sizes that are not multiples of the workgroup. */
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ref/ref.h"
#include "support/tgpu.h"

TestSuite(eltwise, .init = tgpu_setup, .fini = tgpu_teardown);

typedef lt_status_t (*binop_fn)(gpu_cmd_t *, gpu_view_t, gpu_view_t, gpu_view_t, uint32_t, uint32_t, lt_err_t *);
typedef void (*binref_fn)(float *, const float *, const float *, uint32_t, uint32_t);

static void check_binop(binop_fn op, binref_fn ref, uint32_t n, uint32_t nb, const char *what) {
  uint64_t seed = 0x1234 + n;
  float *a = talloc(n), *b = talloc(nb), *want = talloc(n);
  trand(a, n, -4, 4, &seed);
  trand(b, nb, -4, 4, &seed);
  ref(want, a, b, n, nb);
  gpu_buf_t *ba = tbuf_f32(a, n), *bb = tbuf_f32(b, nb), *by = tbuf_f32(NULL, n);
  gpu_cmd_t *c = tbegin();
  lt_err_t err = {0};
  cr_assert_eq(op(c, gv(by), gv(ba), gv(bb), n, nb, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, n);
  /* One f32 add or multiply: the GPU result must be exactly the correctly rounded one. */
  tassert_close(got, want, n, 0, 0, what);
  free(got), free(a), free(b), free(want);
  gpu_buf_destroy(&ba), gpu_buf_destroy(&bb), gpu_buf_destroy(&by);
}

Test(eltwise, add_odd_sizes) {
  check_binop(op_add, ref_add, 1, 1, "add 1");
  check_binop(op_add, ref_add, 1000, 1000, "add 1000");
  check_binop(op_add, ref_add, 777, 37, "add broadcast 777%37");
}

Test(eltwise, mul_odd_sizes) {
  check_binop(op_mul, ref_mul, 513, 513, "mul 513");
  check_binop(op_mul, ref_mul, 4099, 97, "mul broadcast");
}

Test(eltwise, large_grid_uses_second_dimension) {
  /* 65535 workgroups fill the grid's x dimension; the 301 elements past them need its y dimension. */
  uint32_t n = 65535u * op_wg(OP_ELTWISE) + 301u;
  check_binop(op_add, ref_add, n, 3, "add over a 2D grid");
}

Test(eltwise, scale_and_activations) {
  uint32_t n = 1531;
  uint64_t seed = 99;
  float *a = talloc(n), *u = talloc(n), *want = talloc(n);
  trand(a, n, -12, 12, &seed);
  trand(u, n, -3, 3, &seed);
  gpu_buf_t *ba = tbuf_f32(a, n), *bu = tbuf_f32(u, n), *by = tbuf_f32(NULL, n);
  lt_err_t err = {0};
  struct {
    const char *name;
    int which;
  } cases[] = {{"scale", 0}, {"silu", 1},          {"gelu", 2},  {"swiglu", 3},
               {"relu", 4},  {"relu backward", 5}, {"geglu", 6}, {"softcap", 7}};
  for (unsigned k = 0; k < 8; k++) {
    gpu_cmd_t *c = tbegin();
    lt_status_t st = LT_OK;
    switch (cases[k].which) {
    case 0:
      st = op_scale(c, gv(by), gv(ba), -0.37f, n, &err);
      ref_scale(want, a, -0.37f, n);
      break;
    case 1:
      st = op_silu(c, gv(by), gv(ba), n, &err);
      ref_silu(want, a, n);
      break;
    case 2:
      st = op_gelu(c, gv(by), gv(ba), n, &err);
      ref_gelu(want, a, n);
      break;
    case 3:
      st = op_swiglu(c, gv(by), gv(ba), gv(bu), n, &err);
      ref_swiglu(want, a, u, n);
      break;
    case 4:
      st = op_relu(c, gv(by), gv(ba), n, &err);
      ref_relu(want, a, n);
      break;
    case 5:
      st = op_relu_backward(c, gv(by), gv(bu), gv(ba), n, &err);
      ref_relu_backward(want, u, a, n);
      break;
    case 6:
      st = op_geglu(c, gv(by), gv(ba), gv(bu), n, &err);
      ref_geglu(want, a, u, n);
      break;
    case 7: /* a in [-12, 12] against a cap of 5: both the linear and the saturated part of tanh */
      st = op_softcap(c, gv(by), gv(ba), 5.0f, n, &err);
      ref_softcap(want, a, 5.0f, n);
      break;
    }
    cr_assert_eq(st, LT_OK, "%s", err.msg);
    tfinish(&c);
    float *got = tread_f32(by, n);
    /* exp() on GPUs is accurate to a few ulp (Vulkan allows 3 + 2|x| ulp); the chain adds a few more roundings:
     * 2e-6 absolute near zero and 1e-5 relative cover it with margin while catching any formula error. */
    tassert_close(got, want, n, 2e-6, 1e-5, cases[k].name);
    free(got);
  }
  free(a), free(u), free(want);
  gpu_buf_destroy(&ba), gpu_buf_destroy(&bu), gpu_buf_destroy(&by);
}

Test(eltwise, in_place_and_chained_without_host_sync) {
  /* y = ((a + b) * b) + a recorded back to back: the recorder must place barriers between dependent dispatches. */
  uint32_t n = 2049;
  uint64_t seed = 5;
  float *a = talloc(n), *b = talloc(n), *t = talloc(n), *want = talloc(n);
  trand(a, n, -1, 1, &seed);
  trand(b, n, -1, 1, &seed);
  ref_add(t, a, b, n, n);
  ref_mul(t, t, b, n, n);
  ref_add(want, t, a, n, n);
  gpu_buf_t *ba = tbuf_f32(a, n), *bb = tbuf_f32(b, n), *bt = tbuf_f32(NULL, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_add(c, gv(bt), gv(ba), gv(bb), n, n, &err), LT_OK);
  cr_assert_eq(op_mul(c, gv(bt), gv(bt), gv(bb), n, n, &err), LT_OK);
  cr_assert_eq(op_add(c, gv(bt), gv(bt), gv(ba), n, n, &err), LT_OK);
  tfinish(&c);
  float *got = tread_f32(bt, n);
  tassert_close(got, want, n, 0, 0, "chained");
  free(got), free(a), free(b), free(t), free(want);
  gpu_buf_destroy(&ba), gpu_buf_destroy(&bb), gpu_buf_destroy(&bt);
}

Test(eltwise, bad_views_are_errors) {
  gpu_buf_t *small = tbuf_f32(NULL, 10), *big = tbuf_f32(NULL, 100);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_add(c, gv(big), gv(big), gv(small), 100, 11, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "binding 2") != NULL, "message names the binding: %s", err.msg);
  cr_assert_eq(op_add(c, gv(small), gv(big), gv(big), 100, 100, &err), LT_E_INVALID);
  cr_assert_eq(op_add(c, gv(big), gv(big), gv(big), 100, 0, &err), LT_E_INVALID);
  tfinish(&c);
  gpu_buf_destroy(&small), gpu_buf_destroy(&big);
}

Test(eltwise, scatter_add_weighted_rows) {
  /* 13 rows of width 67 scattered into 20 rows, one id out of range (skipped). */
  uint32_t n = 13, d = 67, yr = 20;
  uint64_t seed = 77;
  float *x = talloc(n * d), *y = talloc(yr * d), *w = talloc(n), *want = talloc(yr * d);
  int32_t ids[13] = {3, 0, 19, 7, 25, 11, 2, 18, 5, 9, 14, 1, 16};
  trand(x, n * d, -2, 2, &seed);
  trand(y, yr * d, -2, 2, &seed);
  trand(w, n, 0, 1, &seed);
  memcpy(want, y, yr * d * 4);
  ref_scatter_add(want, x, ids, w, n, d, yr);
  gpu_buf_t *by = tbuf_f32(y, yr * d), *bx = tbuf_f32(x, n * d), *bi = tbuf_bytes(ids, sizeof ids),
            *bw = tbuf_f32(w, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_scatter_add(c, gv(by), gv(bx), gv(bi), gv(bw), n, d, yr, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(by, yr * d);
  /* One multiply and one add per element, as in the reference (which rounds w*x to float first, like the GPU
   * may fuse it): allow one rounding of the product. */
  tassert_close(got, want, yr * d, 1e-6, 1e-6, "scatter_add");
  free(got), free(x), free(y), free(w), free(want);
  gpu_buf_destroy(&by), gpu_buf_destroy(&bx), gpu_buf_destroy(&bi), gpu_buf_destroy(&bw);
}
