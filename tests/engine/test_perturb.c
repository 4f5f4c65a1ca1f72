/* Zeroth-order perturbation: Philox-4x32-10 against the published answers, the GPU normals against the CPU
 * reference on odd sizes and on the extreme uniforms, their statistics, and the MeZO +eps, -2eps, +eps restore. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ref/ref.h"
#include "support/tgpu.h"

TestSuite(perturb, .init = tgpu_setup, .fini = tgpu_teardown);

/* z on the GPU: perturbs a zeroed buffer by scale 1 (0 + 1 * z is exactly z). Caller owns the array. */
static float *gpu_normals(uint32_t n, uint64_t seed, uint32_t tensor_id) {
  gpu_buf_t *b = tbuf_f32(NULL, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_perturb(c, gv(b), n, seed, tensor_id, 1.0f, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *z = tread_f32(b, n);
  gpu_buf_destroy(&b);
  return z;
}

static float *ref_normals(uint32_t n, uint64_t seed, uint32_t tensor_id) {
  float *z = talloc(n);
  for (uint32_t i = 0; i < n; i++) z[i] = ref_normal(seed, tensor_id, i);
  return z;
}

/* GPU z against the double-precision reference. Error budget of one GPU normal: the radius sqrt(-2 ln u1) carries
 * a few ulp (log() is held to 3 ulp below u = 1/2, the atanh series used above it to ~3 ulp, then sqrt), about
 * 3e-7 relative; the angle 2 pi c is rounded once (|angle| <= pi: 2e-7 absolute) and cos/sin on real drivers are
 * within ~5e-7 absolute on (-pi, pi) (llvmpipe's polynomial ~1e-7, NVIDIA's sin.approx 2^-21); the radius is at
 * most 5.9 (u1 = 2^-25). So |z_gpu - z| <= 5.9 * 7e-7 + 3e-7 |z| ~ 4e-6 + 3e-7 |z|: 1e-5 absolute plus 1e-5
 * relative leaves a factor 2.5 of margin (measured on llvmpipe: at most 9.5e-7 over 4M normals), while any
 * formula or indexing error moves z by order 1. */
#define Z_ATOL 1e-5
#define Z_RTOL 1e-5

Test(perturb, philox_known_answers) {
  /* Random123's kat_vectors for philox4x32_10: counter, key, expected output. */
  static const uint32_t kat[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6,
       0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420,
       0x24126ea1},
  };
  for (int k = 0; k < 3; k++) {
    uint32_t out[4];
    ref_philox4x32(out, kat[k], kat[k] + 4);
    for (int j = 0; j < 4; j++)
      cr_assert_eq(out[j], kat[k][6 + j], "vector %d word %d: got %08x want %08x", k, j, out[j], kat[k][6 + j]);
  }
}

Test(perturb, reference_uses_the_documented_counter_and_key) {
  /* ref_normal(seed, id, i) must be Box-Muller on philox(counter (i/4 lo, i/4 hi, id, 0), key (seed lo, seed hi)),
   * with i % 4 picking cos/sin of pair 0 or 1; here checked independently, including a 64-bit element index. */
  uint64_t seed = 0x0123456789abcdefull, idx[4] = {0, 7, 4ull * 0x12345u + 2, (5ull << 32) * 4 + 1};
  for (int k = 0; k < 4; k++) {
    uint64_t i = idx[k], q = i / 4;
    uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), 77, 0}, key[2] = {0x89abcdefu, 0x01234567u}, r[4];
    ref_philox4x32(r, ctr, key);
    unsigned j = (unsigned)(i % 4), p = j / 2;
    double u1 = ((r[2 * p] >> 8) + 0.5) / 16777216.0, u2 = ((r[2 * p + 1] >> 8) + 0.5) / 16777216.0;
    double rad = sqrt(-2 * log(u1)), want = j % 2 ? rad * sin(2 * M_PI * u2) : rad * cos(2 * M_PI * u2);
    cr_assert_eq(ref_normal(seed, 77, i), (float)want, "element %llu", (unsigned long long)i);
  }
}

Test(perturb, gpu_normals_match_reference_on_odd_sizes) {
  static const uint32_t sizes[] = {1, 3, 1001, 65537};
  /* Seeds and ids with both key words and high bits set, so every word of key and counter is exercised. */
  static const uint64_t seeds[] = {42, 0xdeadbeefcafef00dull};
  static const uint32_t ids[] = {0, 0xfffffff3u};
  for (unsigned s = 0; s < 4; s++)
    for (unsigned k = 0; k < 2; k++) {
      uint32_t n = sizes[s];
      float *got = gpu_normals(n, seeds[k], ids[k]), *want = ref_normals(n, seeds[k], ids[k]);
      char what[64];
      snprintf(what, sizeof what, "z n=%u seed=%llx id=%u", n, (unsigned long long)seeds[k], ids[k]);
      tassert_close(got, want, n, Z_ATOL, Z_RTOL, what);
      free(got), free(want);
    }
}

/* Finds a tensor id whose first Philox call (counter (0, 0, id, 0)) has word w's top 24 bits in [lo, hi]. */
static uint32_t find_id(uint64_t seed, int w, uint32_t lo, uint32_t hi) {
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  for (uint32_t id = 0; id < (1u << 26); id++) {
    uint32_t ctr[4] = {0, 0, id, 0}, r[4];
    ref_philox4x32(r, ctr, key);
    if ((r[w] >> 8) >= lo && (r[w] >> 8) <= hi) return id;
  }
  cr_assert_fail("no tensor id gives word %d in [%u, %u]", w, lo, hi);
  return 0;
}

Test(perturb, extreme_uniforms) {
  /* u1 next to 1 gives a tiny radius, where a plain float log() (held only to 2^-21 absolute near 1) would be off
   * by up to 1e-3; u1 next to 0 gives the largest radius (5.9); u2 at either end puts the angle at +-pi. */
  const uint64_t seed = 7;
  const uint32_t top = 0xffffffu;
  uint32_t ids[6] = {find_id(seed, 0, top - 15, top), find_id(seed, 2, top - 15, top),
                     find_id(seed, 0, 0, 15),         find_id(seed, 1, 0, 15),
                     find_id(seed, 1, top - 15, top), find_id(seed, 0, top / 2, top / 2 + 8)};
  uint64_t align = gpu_caps(tgpu())->min_storage_align, stride = 16 > align ? 16 : align;
  gpu_buf_t *b = tbuf_bytes(NULL, 6 * stride);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  for (int k = 0; k < 6; k++)
    cr_assert_eq(op_perturb(c, (gpu_view_t){b, k * stride}, 4, seed, ids[k], 1.0f, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *all = tread_bytes(b, 6 * stride);
  for (int k = 0; k < 6; k++) {
    float *want = ref_normals(4, seed, ids[k]);
    char what[48];
    snprintf(what, sizeof what, "extreme case %d (id %u)", k, ids[k]);
    tassert_close(all + k * stride / 4, want, 4, Z_ATOL, Z_RTOL, what);
    free(want);
  }
  free(all);
  gpu_buf_destroy(&b);
}

Test(perturb, perturb_adds_scaled_normals_inside_its_view_only) {
  /* n = 1003 elements at an aligned offset inside a larger buffer: the ragged tail is written, nothing beyond. */
  const uint32_t n = 1003, pad = 64, total = n + 2 * pad;
  uint64_t rs = 3;
  float *x = talloc(total), *want = talloc(total);
  trand(x, total, -2, 2, &rs);
  memcpy(want, x, total * sizeof *x);
  const float scale = -0.37f;
  ref_perturb(want + pad, n, 99, 5, scale);
  gpu_buf_t *b = tbuf_f32(x, total);
  uint64_t align = gpu_caps(tgpu())->min_storage_align;
  cr_assert(4 * pad % align == 0, "offset %u is not aligned to %llu", 4 * pad, (unsigned long long)align);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_perturb(c, (gpu_view_t){b, 4 * pad}, n, 99, 5, scale, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(b, total);
  /* x + s z: the z error scaled by |s|, plus one rounding of a result below 3 in magnitude (2^-23 * 3). */
  tassert_close(got + pad, want + pad, n, 0.37 * Z_ATOL + 4e-7, Z_RTOL, "x + s z");
  cr_assert(memcmp(got, x, 4 * pad) == 0, "elements before the view changed");
  cr_assert(memcmp(got + pad + n, x + pad + n, 4 * pad) == 0, "elements after the view changed");
  free(got), free(x), free(want);
  gpu_buf_destroy(&b);
}

Test(perturb, statistics_of_a_million_normals) {
  const uint32_t n = 1000000;
  float *z = gpu_normals(n, 0x5eed, 3);
  double s1 = 0, s2 = 0, s4 = 0, lag = 0;
  uint32_t inside = 0;
  for (uint32_t i = 0; i < n; i++) {
    double v = z[i];
    s1 += v, s2 += v * v, s4 += v * v * v * v;
    inside += fabs(v) < 1.0;
    if (i) lag += v * z[i - 1];
  }
  double mean = s1 / n, var = s2 / n - mean * mean, kurt = s4 / n, p1 = (double)inside / n, rho = lag / (n - 1);
  /* Five standard errors of each estimate for N = 1e6 standard normals: mean 1/sqrt(N); variance sqrt(2/N);
   * fourth moment sqrt((105 - 9)/N); P(|z| < 1) = 0.682689 binomial sqrt(p(1-p)/N); lag-1 product 1/sqrt(N). */
  double sn = sqrt((double)n);
  cr_assert(fabs(mean) < 5 / sn, "mean %g", mean);
  cr_assert(fabs(var - 1) < 5 * sqrt(2.0) / sn, "variance %g", var);
  cr_assert(fabs(kurt - 3) < 5 * sqrt(96.0) / sn, "fourth moment %g", kurt);
  cr_assert(fabs(p1 - 0.682689492) < 5 * sqrt(0.682689 * 0.317311) / sn, "P(|z| < 1) = %g", p1);
  cr_assert(fabs(rho) < 5 / sn, "lag-1 correlation %g", rho);
  free(z);
}

/* Correlation of two sequences of (nearly) zero-mean unit normals. */
static double correlation(const float *a, const float *b, uint32_t n) {
  double s = 0;
  for (uint32_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s / n;
}

Test(perturb, different_seed_or_tensor_gives_different_normals) {
  const uint32_t n = 40001;
  const uint64_t seed = 0x1234567800000009ull;
  float *base = gpu_normals(n, seed, 11);
  struct {
    uint64_t seed;
    uint32_t id;
    const char *what;
  } other[] = {{seed, 12, "tensor id + 1"},
               {seed + 1, 11, "seed low word + 1"},
               {seed ^ (1ull << 32), 11, "seed high word changed"}};
  for (int k = 0; k < 3; k++) {
    float *z = gpu_normals(n, other[k].seed, other[k].id);
    uint32_t same = 0;
    for (uint32_t i = 0; i < n; i++) same += z[i] == base[i];
    /* Independent streams: no element equal (a coincidence has probability ~n * 2^-24) and correlation within
     * five standard errors of 0. */
    cr_assert(same <= 1, "%s: %u equal elements", other[k].what, same);
    double rho = correlation(z, base, n);
    cr_assert(fabs(rho) < 5 / sqrt((double)n), "%s: correlation %g", other[k].what, rho);
    free(z);
  }
  free(base);
}

/* Counts elements where |x' - x| exceeds the rounding bound of the +eps, -2eps, +eps sequence. With
 * p = fl(eps z) (or the exact product when the driver fuses it into an fma; either way fl(-2eps * z) = -2p
 * exactly, as scaling by 2 is exact) the three updates cancel in exact arithmetic and only the three adds round.
 * Each rounds its exact result a_k with relative error at most 2^-23 (Vulkan leaves the rounding mode open;
 * 2^-24 under round-to-nearest): |a1| = |x + p|, |a2| = |x1 - 2p| <= |x| + |p| (to first order) and
 * |a3| = |x2 + p| ~ |x|, so |x' - x| <= 2^-23 (3|x| + 2|p|); 2^-23 (3|x| + 3 eps|z|) covers the second-order
 * terms, and 3 FLT_MIN a driver that flushes a subnormal intermediate to zero. */
static uint32_t restore_violations(const float *x0, const float *x3, const float *z, uint32_t n, float eps) {
  uint32_t bad = 0;
  for (uint32_t i = 0; i < n; i++) {
    double bound = 0x1p-23 * (3 * fabs((double)x0[i]) + 3 * eps * fabs((double)z[i])) + 3 * FLT_MIN;
    bad += !(fabs((double)x3[i] - (double)x0[i]) <= bound);
  }
  return bad;
}

Test(perturb, plus_minus_plus_restores_and_regenerates_bit_for_bit) {
  const uint32_t n = 100003;
  const uint64_t seed = 0xabcdef0123ull;
  const uint32_t id = 4;
  const float eps = 1e-3f;
  uint64_t rs = 17;
  float *x = talloc(n);
  trand(x, n, -2, 2, &rs);
  gpu_buf_t *b = tbuf_f32(x, n), *wrong = tbuf_f32(x, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  /* MeZO's three steps, recorded back to back (the recorder orders them). */
  cr_assert_eq(op_perturb(c, gv(b), n, seed, id, eps, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_perturb(c, gv(b), n, seed, id, -2 * eps, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_perturb(c, gv(b), n, seed, id, eps, &err), LT_OK, "%s", err.msg);
  /* The same with the last step on another seed: the check below must see that as a failure. */
  cr_assert_eq(op_perturb(c, gv(wrong), n, seed, id, eps, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_perturb(c, gv(wrong), n, seed, id, -2 * eps, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(op_perturb(c, gv(wrong), n, seed + 1, id, eps, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *x3 = tread_f32(b, n), *xw = tread_f32(wrong, n);
  float *z = gpu_normals(n, seed, id), *z2 = gpu_normals(n, seed, id);
  uint32_t bad = restore_violations(x, x3, z, n, eps);
  cr_assert_eq(bad, 0, "%u of %u elements not restored within rounding", bad, n);
  uint32_t bad_wrong = restore_violations(x, xw, z, n, eps);
  cr_assert(bad_wrong > n * 9 / 10, "a mismatched seed went unnoticed (%u of %u flagged)", bad_wrong, n);
  cr_assert(memcmp(z, z2, (size_t)n * 4) == 0, "the same seed did not regenerate identical z");
  free(x), free(x3), free(xw), free(z), free(z2);
  gpu_buf_destroy(&b), gpu_buf_destroy(&wrong);
}

/* ---- the update in the weights' own dtype, the perturbed copy and the perturbed embedding gather ---- */

/* n 16-bit weights of dtype (f16 or bf16) spread over [-4, 4] with some tiny ones and zeros among them. */
static uint16_t *weights16(lt_dtype_t dtype, uint32_t n, uint64_t *seed) {
  float *f = talloc(n);
  trand(f, n, -4.0f, 4.0f, seed);
  uint16_t *h = malloc(2ull * n);
  for (uint32_t i = 0; i < n; i++) {
    float v = i % 17 == 0 ? f[i] * 1e-6f : i % 29 == 0 ? 0.0f : f[i];
    h[i] = dtype == LT_F16 ? dtype_float_to_half(v) : dtype_float_to_bf16(v);
  }
  free(f);
  return h;
}

static float widen16(lt_dtype_t dtype, uint16_t h) {
  return dtype == LT_F16 ? dtype_half_to_float(h) : dtype_bf16_to_float(h);
}

/* op_perturb_update on 16-bit weights. */
static uint16_t *gpu_update16(const uint16_t *w, lt_dtype_t dtype, uint32_t n, uint64_t seed, uint32_t id, float decay,
                              float scale) {
  gpu_buf_t *b = tbuf_bytes(w, 2ull * n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_perturb_update(c, gv(b), dtype, n, seed, id, decay, scale, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  uint16_t *got = tread_bytes(b, 2ull * n);
  gpu_buf_destroy(&b);
  return got;
}

Test(perturb, stochastic_rounding_matches_the_reference_bit_for_bit_and_is_unbiased) {
  /* With scale 0 the value to round, decay * w, is one f32 multiply on both sides and the random bits are
   * integer Philox outputs: the GPU must give the reference's bits exactly, odd tail included. decay = 1 + 2^-13
   * moves most weights by a fraction of their spacing, so round-to-nearest would leave nearly all unchanged; with
   * stochastic rounding the mean of (result - exact) over 40,000 weights, in units of each weight's spacing, is
   * within 4 standard errors of 0 (one rounding has a standard deviation of at most 1/2 spacing), and the
   * fraction moved matches the expected one. */
  if (!gpu_caps(tgpu())->storage16) {
    cr_log_info("no 16-bit storage: 16-bit weights are never placed on this device");
    return;
  }
  const uint32_t n = 40003;
  const float decay = 1.0f + 0x1p-13f;
  static const lt_dtype_t types[2] = {LT_F16, LT_BF16};
  for (int t = 0; t < 2; t++) {
    lt_dtype_t dt = types[t];
    uint64_t s = 77 + t;
    uint16_t *w = weights16(dt, n, &s);
    uint16_t *got = gpu_update16(w, dt, n, 0x1234567890abcdefull, 42, decay, 0.0f);
    uint16_t *want = malloc(2ull * n);
    memcpy(want, w, 2ull * n);
    ref_perturb_update(want, dt, n, 0x1234567890abcdefull, 42, decay, 0.0f);
    double bias = 0, moved = 0, expect_moved = 0;
    uint32_t counted = 0;
    for (uint32_t i = 0; i < n; i++) {
      cr_assert_eq(got[i], want[i], "%s[%u]: %04x, reference %04x (from %04x)", lt_dtype_str(dt), i, got[i], want[i],
                   w[i]);
      float x = decay * widen16(dt, w[i]), lo = widen16(dt, w[i]);
      if (x == lo) continue;
      /* The spacing at x: the neighbour of w away from zero (|x| > |w| here). */
      uint16_t next = w[i] + 1;
      double gap = fabs((double)widen16(dt, next) - lo), frac = fabs((double)x - lo) / gap;
      bias += ((double)widen16(dt, got[i]) - x) / gap * (x < 0 ? -1 : 1);
      moved += got[i] != w[i];
      expect_moved += frac;
      counted++;
    }
    bias /= counted;
    double se = 0.5 / sqrt((double)counted);
    cr_log_info("%s: %u weights rounded, mean bias %.5f spacings (4 se = %.5f), moved %.0f of %.0f expected",
                lt_dtype_str(dt), counted, bias, 4 * se, moved, expect_moved);
    cr_assert_gt(counted, n / 2);
    cr_assert_leq(fabs(bias), 4 * se, "%s: stochastic rounding is biased", lt_dtype_str(dt));
    cr_assert_leq(fabs(moved - expect_moved), 4 * sqrt(expect_moved) + 1, "%s: moved %.0f, expected %.0f",
                  lt_dtype_str(dt), moved, expect_moved);
    free(w), free(got), free(want);
  }
}

Test(perturb, update_with_a_step_lands_on_a_neighbour_of_the_exact_value) {
  /* decay * w + scale * z: the GPU's z carries its own error (Z_ATOL, Z_RTOL), so the rounding may pick the other
   * neighbour near a boundary; every result must still be one of the two representable neighbours of the exact
   * value (spacing plus scale times z's error). The f32 update must equal the exact value to 2^-23 relative plus
   * that error. A step of 0 anywhere would fail the count of changed weights. */
  const uint32_t n = 10007;
  const float decay = 0.999f, scale = -3e-3f;
  const uint64_t seed = 99;
  uint64_t rs = 5;
  float *w32 = talloc(n);
  trand(w32, n, -2.0f, 2.0f, &rs);
  gpu_buf_t *b = tbuf_f32(w32, n);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_perturb_update(c, gv(b), LT_F32, n, seed, 8, decay, scale, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *g32 = tread_f32(b, n);
  for (uint32_t i = 0; i < n; i++) {
    double z = ref_normal(seed, 8, i), want = (double)decay * w32[i] + (double)scale * z;
    double tol = 0x1p-23 * (fabs(want) + fabs(scale * z)) + fabs(scale) * (Z_ATOL + Z_RTOL * fabs(z));
    cr_assert_leq(fabs(g32[i] - want), tol, "f32[%u]: %.9g, want %.9g", i, (double)g32[i], want);
  }
  gpu_buf_destroy(&b);
  free(w32), free(g32);
  if (!gpu_caps(tgpu())->storage16) return;
  static const lt_dtype_t types[2] = {LT_F16, LT_BF16};
  for (int t = 0; t < 2; t++) {
    lt_dtype_t dt = types[t];
    uint16_t *w = weights16(dt, n, &rs);
    uint16_t *got = gpu_update16(w, dt, n, seed, 8, decay, scale);
    uint32_t changed = 0;
    for (uint32_t i = 0; i < n; i++) {
      double z = ref_normal(seed, 8, i), want = (double)decay * widen16(dt, w[i]) + (double)scale * z;
      double v = widen16(dt, got[i]);
      /* The spacing around v: the distance to its neighbour away from zero (wider than the one toward it). */
      uint16_t up = (uint16_t)(got[i] + ((got[i] & 0x7fff) == 0x7fff ? 0 : 1));
      double gap = fabs((double)widen16(dt, up) - v);
      if (gap == 0) gap = fabs(v) * (dt == LT_F16 ? 0x1p-10 : 0x1p-7);
      double tol = gap + fabs(scale) * (Z_ATOL + Z_RTOL * fabs(z)) + 0x1p-24 * fabs(want);
      cr_assert_leq(fabs(v - want), tol, "%s[%u]: %.9g, want %.9g (from %.9g)", lt_dtype_str(dt), i, v, want,
                    (double)widen16(dt, w[i]));
      changed += got[i] != w[i];
    }
    cr_assert_gt(changed, n / 4, "%s: only %u of %u weights moved", lt_dtype_str(dt), changed, n);
    free(w), free(got);
  }
}

Test(perturb, perturbed_copy_reads_the_weights_plus_scaled_normals_from_an_offset) {
  /* y = w + scale * z(base + i), w unchanged: f32, f16 and bf16 weights, base 4 * 37, an odd length. */
  const uint32_t n = 1001;
  const uint64_t base = 148, seed = 5;
  const float scale = 0.25f;
  static const lt_dtype_t types[3] = {LT_F32, LT_F16, LT_BF16};
  uint64_t rs = 9;
  for (int t = 0; t < 3; t++) {
    lt_dtype_t dt = types[t];
    if (dt != LT_F32 && !gpu_caps(tgpu())->storage16) continue;
    float *wf = talloc(n);
    uint16_t *w16 = weights16(dt == LT_F32 ? LT_F16 : dt, n, &rs);
    for (uint32_t i = 0; i < n; i++) wf[i] = dt == LT_F32 ? widen16(LT_F16, w16[i]) * 1.1f : widen16(dt, w16[i]);
    gpu_buf_t *w = dt == LT_F32 ? tbuf_f32(wf, n) : tbuf_bytes(w16, 2ull * n), *y = tbuf_f32(NULL, n);
    lt_err_t err = {0};
    gpu_cmd_t *c = tbegin();
    cr_assert_eq(op_perturb_copy(c, gv(y), gv(w), dt, n, base, seed, 3, scale, &err), LT_OK, "%s", err.msg);
    tfinish(&c);
    float *got = tread_f32(y, n);
    for (uint32_t i = 0; i < n; i++) {
      double z = ref_normal(seed, 3, base + i), want = (double)wf[i] + (double)scale * z;
      double tol = 0x1p-24 * (fabs(wf[i]) + 2 * fabs(scale * z)) + scale * (Z_ATOL + Z_RTOL * fabs(z));
      cr_assert_leq(fabs(got[i] - want), tol, "%s[%u]: %.9g, want %.9g", lt_dtype_str(dt), i, (double)got[i], want);
    }
    void *after = tread_bytes(w, (uint64_t)lt_dtype_size(dt) * n);
    cr_assert(memcmp(after, dt == LT_F32 ? (void *)wf : (void *)w16, (uint64_t)lt_dtype_size(dt) * n) == 0,
              "%s: the weights changed", lt_dtype_str(dt));
    free(after), free(got), free(wf), free(w16);
    gpu_buf_destroy(&w), gpu_buf_destroy(&y);
  }
  /* A base off a quad is refused by name. */
  gpu_buf_t *w = tbuf_f32(NULL, 8), *y = tbuf_f32(NULL, 8);
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_perturb_copy(c, gv(y), gv(w), LT_F32, 8, 6, 1, 1, 1.0f, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "quad") != NULL, "%s", err.msg);
  tfinish(&c);
  gpu_buf_destroy(&w), gpu_buf_destroy(&y);
}

Test(perturb, embedding_gather_reads_the_rows_perturbed) {
  /* op_embed_z on a piece holding rows [10, 30) of a table of dim 13: each gathered row is the table's row plus
   * scale * z at the element's index within the piece; ids outside the piece leave y alone. */
  const uint32_t dim = 13, lo = 10, hi = 30, rows = hi - lo;
  const int32_t ids[5] = {10, 29, 3, 17, 17};
  uint64_t rs = 4;
  float *table = talloc(rows * dim);
  trand(table, rows * dim, -1.0f, 1.0f, &rs);
  float init[5 * 13];
  for (uint32_t i = 0; i < 5 * dim; i++) init[i] = -7.0f;
  gpu_buf_t *t = tbuf_f32(table, rows * dim), *y = tbuf_f32(init, 5 * dim), *ib = tbuf_bytes(ids, sizeof ids);
  op_zread_t z = {.seed = 0xfeedull << 32, .tensor_id = 12, .scale = 0.5f};
  lt_err_t err = {0};
  gpu_cmd_t *c = tbegin();
  cr_assert_eq(op_embed_z(c, gv(y), gv(t), LT_F32, gv(ib), 5, dim, lo, hi, &z, &err), LT_OK, "%s", err.msg);
  tfinish(&c);
  float *got = tread_f32(y, 5 * dim);
  for (uint32_t r = 0; r < 5; r++)
    for (uint32_t j = 0; j < dim; j++) {
      float g = got[r * dim + j];
      if (ids[r] < (int32_t)lo || ids[r] >= (int32_t)hi) {
        cr_assert_eq(g, -7.0f, "row %u outside the piece was written", r);
        continue;
      }
      uint64_t e = (uint64_t)(ids[r] - (int32_t)lo) * dim + j;
      double zz = ref_normal(z.seed, z.tensor_id, e), want = table[e] + 0.5 * zz;
      cr_assert_leq(fabs(g - want), 0x1p-24 * 4 + 0.5 * (Z_ATOL + Z_RTOL * fabs(zz)), "row %u dim %u", r, j);
    }
  free(got), free(table);
  gpu_buf_destroy(&t), gpu_buf_destroy(&y), gpu_buf_destroy(&ib);
}
