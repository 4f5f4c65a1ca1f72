/* Driver traps we have hit, each isolated in a tiny shader: the canaries record what the driver does (they
 * document rather than fail where drivers may legitimately differ), and the tests around them assert strictly
 * that Lathe's own kernels are not affected.
 * - lavapipe stops every loop of an invocation after ~65,535 iterations in total, silently.
 * - with `layout(local_size_x_id = 0) in;`, shaderc's optimiser can fold gl_WorkGroupSize to the declared default
 *   (1) although the pipeline specialises the size: shaders must read WG_X (common.glsl) instead. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ref/ref.h"
#include "support/tgpu.h"

TestSuite(driver, .init = tgpu_setup, .fini = tgpu_teardown);

/* Runs one workgroup of `shader` (spec constant 0 = wg) on a buffer of `words` 32-bit words (zeroed first) and
 * returns them. Caller owns the result (free()). */
static uint32_t *run_probe(const char *shader, uint32_t wg, pc_canary_t pc, uint32_t words) {
  lt_err_t err = {0};
  gpu_pipeline_t *p = gpu_pipeline_get(tgpu(), shader, NULL, 1, sizeof pc, &wg, 1, &err);
  cr_assert(p != NULL, "%s: %s", shader, err.msg);
  gpu_buf_t *b = tbuf_bytes(NULL, 4ull * words);
  gpu_bind_t bind = {.buf = b, .write = true};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(gpu_cmd_dispatch(c, p, &bind, 1, &pc, sizeof pc, 1, 1, 1, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  uint32_t *out = tread_bytes(b, 4ull * words);
  gpu_buf_destroy(&b);
  return out;
}

/* Runs the loop canary for n iterations; returns the iterations it counted and checks the sum agrees. */
static uint32_t canary_count(uint32_t n) {
  uint32_t *o = run_probe("canary_loop.comp", 1, (pc_canary_t){.n = n, .step = 1.0f}, 2);
  float sum;
  memcpy(&sum, &o[0], 4);
  uint32_t count = o[1];
  free(o);
  /* Sums of 1.0 are exact in f32 up to 2^24: the sum and the counter must agree. */
  cr_assert_eq((double)sum, (double)count, "canary %u: sum %g but %u iterations", n, (double)sum, count);
  return count;
}

Test(driver, loop_canary) {
  const gpu_caps_t *cp = gpu_caps(tgpu());
  cr_assert_eq(canary_count(1000), 1000, "a loop of 1000 iterations must complete");
  const uint32_t long_loops[] = {65535, 70000, 200000};
  for (unsigned i = 0; i < 3; i++) {
    uint32_t n = long_loops[i], got = canary_count(n);
    /* Observed on lavapipe (Mesa 22.3.6, LLVM 15): 65535 -> 65535, 70000 -> 65535, 200000 -> 65535. */
    cr_log_info("loop canary on %s (%s): %u iterations asked, %u run%s", cp->name, cp->driver_info, n, got,
                got < n ? " (the driver stopped the loop)" : "");
    cr_assert(got > 0 && got <= n, "canary %u counted %u", n, got);
  }
}

Test(driver, reductions_over_150001_are_not_truncated) {
  /* A reduction that one invocation looped over 150,001 elements would stop near 65,535 on lavapipe: the sums
   * below would then be ~0.44 of the truth. Uniform rows make the exact answer known in closed form. */
  uint32_t n = 150001;
  float *x = talloc(2ull * n), *p = talloc(2ull * n), *want = talloc(2ull * n);
  uint64_t seed = 77;
  trand(x + n, n, -20, 20, &seed); /* row 0 all zeros, row 1 random */
  gpu_buf_t *bx = tbuf_f32(x, 2ull * n), *by = tbuf_f32(NULL, 2ull * n), *bl = tbuf_f32(NULL, 2);
  gpu_view_t none = {0};
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_softmax(c, gv(by), gv(bx), 2, n, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_logsumexp(c, gv(bl), none, gv(bx), none, 2, n, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *y = tread_f32(by, 2ull * n), *lse = tread_f32(bl, 2);
  /* Row 0: every probability is 1/150001 and lse = log(150001) = 11.918; f32 sums of equal terms in 147-term
   * strides then a tree are off by a few ulp: 1e-5 relative, 2e-5 absolute on lse. */
  for (uint32_t i = 0; i < n; i++) p[i] = (float)(1.0 / n);
  tassert_close(y, p, n, 0, 1e-5, "softmax of a uniform 150,001 row");
  cr_assert(fabs(lse[0] - log((double)n)) <= 2e-5, "lse of 150,001 zeros: got %.9g want %.9g", (double)lse[0],
            log((double)n));
  /* Row 1: against the double reference (tolerances as in test_rows.c for a 150k row). */
  ref_softmax(want, x, 2, n);
  tassert_close(y + n, want + n, n, 1e-7, 1e-4, "softmax of a random 150,001 row");
  float ref_lse[2];
  ref_logsumexp(ref_lse, NULL, x, NULL, 2, n);
  cr_assert(fabs(lse[1] - ref_lse[1]) <= 2e-5, "lse of a random 150,001 row: got %.9g want %.9g", (double)lse[1],
            (double)ref_lse[1]);
  free(x), free(p), free(want), free(y), free(lse);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&by), gpu_buf_destroy(&bl);
}

Test(driver, workgroup_size_from_a_specialisation_constant) {
  const gpu_caps_t *cp = gpu_caps(tgpu());
  /* 64 as the engine uses it; 128 as well, since WG_X's declared default is 64 and would pass by accident. */
  const uint32_t sizes[] = {64, 128};
  for (unsigned i = 0; i < 2; i++) {
    uint32_t w = sizes[i], *o = run_probe("trap_wgsize.comp", w, (pc_canary_t){0}, 5);
    /* Read after the layout declaration, all three forms see the specialised size (lavapipe, Mesa 22.3.6); the
     * trap is a use written before the declaration: see gl_workgroup_size_before_its_declaration. */
    cr_log_info("workgroup of %u on %s (%s): gl_WorkGroupSize.x reads %u, 2 * (gl_WorkGroupSize.x / 2) %u, "
                "stride loop visits %u (want %u); WG_X reads %u; %u invocations ran",
                w, cp->name, cp->driver_info, o[0], o[3], o[4], 4 * w, o[1], o[2]);
    cr_assert_eq(o[2], w, "the workgroup has %u invocations, not %u", o[2], w);
    cr_assert_eq(o[1], w, "WG_X reads %u, not the specialised %u", o[1], w);
    cr_assert(o[0] == w || o[0] == 1, "gl_WorkGroupSize.x reads %u: neither the size nor the default", o[0]);
    free(o);
  }
}

Test(driver, gl_workgroup_size_before_its_declaration) {
  /* The trap Lathe hit first: flat_index() in common.glsl read gl_WorkGroupSize.x and was included before the
   * shader's layout(local_size_x_id = 0) line, so it indexed as if workgroups had one invocation and most of
   * every output went unwritten. common.glsl now declares the size itself and exposes WG_X. This test pins
   * the compiler behaviour down so a change to it is noticed. */
  uint32_t *o = run_probe("trap_wgsize_early.comp", 64, (pc_canary_t){0}, 5);
  cr_log_info("gl_WorkGroupSize.x before the declaration reads %u, after it %u; %u invocations ran", o[0], o[1], o[2]);
  cr_assert_eq(o[2], 64, "the workgroup has %u invocations, not 64", o[2]);
  cr_assert_eq(o[1], 64, "after its declaration gl_WorkGroupSize.x reads %u, not 64", o[1]);
  cr_assert_eq(o[0], 1,
               "before its declaration gl_WorkGroupSize.x reads %u: the compiler changed; revisit the "
               "note in shaders/include/common.glsl",
               o[0]);
  free(o);
}
