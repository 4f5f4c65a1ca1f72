/* Test support: one gpu per test process, buffers from host arrays, tolerance checks, seeded random data. */
#ifndef LATHE_TGPU_H
#define LATHE_TGPU_H

#include <criterion/criterion.h>
#include <stdint.h>

#include "engine/gpu/gpu.h"
#include "engine/ops/ops.h"

/* Criterion init/fini for GPU suites: .init = tgpu_setup, .fini = tgpu_teardown. The teardown fails the test
 * when the validation layer (LATHE_VALIDATION=1) reported any error. */
void tgpu_setup(void);
void tgpu_teardown(void);

/* The gpu opened by tgpu_setup(); owned by the fixture. */
gpu_t *tgpu(void);

/* Makes a device buffer holding n floats copied from src (zeros when src is NULL). Caller owns. */
gpu_buf_t *tbuf_f32(const float *src, uint64_t n);
/* Makes a device buffer of raw bytes copied from src (zeros when src is NULL). Caller owns. */
gpu_buf_t *tbuf_bytes(const void *src, uint64_t n);
/* Downloads n floats from b into a new array. Caller owns (free()). */
float *tread_f32(gpu_buf_t *b, uint64_t n);
/* Downloads n bytes from b into a new array. Caller owns (free()). */
void *tread_bytes(gpu_buf_t *b, uint64_t n);

/* Starts a recorder on the fixture's gpu (asserts success). Caller ends it with tfinish(). */
gpu_cmd_t *tbegin(void);
/* Submits and waits (asserts success). */
void tfinish(gpu_cmd_t **c);

/* Asserts |got - want| <= atol + rtol * |want| elementwise, reporting the worst element. */
void tassert_close(const float *got, const float *want, uint64_t n, double atol, double rtol, const char *what);

/* Fills x with uniform values in [lo, hi) from a fixed-seed generator (state in *seed). */
void trand(float *x, uint64_t n, float lo, float hi, uint64_t *seed);

/* Returns a new array of n floats; asserts on failure. Caller owns (free()). */
float *talloc(uint64_t n);

#endif
