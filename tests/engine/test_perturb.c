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
