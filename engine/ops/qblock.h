/* GGUF's block-quantised weight formats (as llama.cpp and ollama write them), read in place: a matrix [N, K] is N
 * rows of K / block elements' worth of blocks, each block self-describing (its scales inside it). The layouts
 * (docs/formats.md has them in full):
 * - Q8_0 (32 elements, 34 bytes): f16 d, 32 int8 q; w = d q.
 * - Q4_0 (32, 18): f16 d, 16 bytes of nibbles (element j < 16 the low nibble of byte j, j >= 16 the high nibble
 *   of byte j - 16); w = d (q - 8).
 * - Q4_1 (32, 20): f16 d, f16 m, nibbles as Q4_0; w = d q + m.
 * - Q5_0 (32, 22): f16 d, 32 bits of fifth bits (bit j for element j), nibbles; w = d (q - 16).
 * - Q5_1 (32, 24): f16 d, f16 m, fifth bits, nibbles; w = d q + m.
 * - Q2_K (256, 84): 16 bytes of 4-bit scale / 4-bit min per 16 elements, 64 bytes of 2-bit q, f16 d, f16 dmin;
 *   w = d sc q - dmin mn.
 * - Q3_K (256, 110): 32 bytes of high bits, 64 bytes of 2-bit low parts, 12 bytes of 6-bit scales, f16 d;
 *   w = d (sc - 32) (q - 4 when the high bit is clear).
 * - Q4_K (256, 144): f16 d, f16 dmin, 12 bytes of 6-bit scale / min per 32 elements, 128 bytes of nibbles;
 *   w = d sc q - dmin mn.
 * - Q5_K (256, 176): as Q4_K with 32 bytes of fifth bits before the nibbles.
 * - Q6_K (256, 210): 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales per 16 elements,
 *   f16 d; w = d sc (q - 32).
 * The shaders decode the same layouts (shaders/include/qblock.glsl); the functions here are the CPU reference and
 * what loading (to f32 for training) and saving use. */
#ifndef LATHE_QBLOCK_H
#define LATHE_QBLOCK_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/ops/dtype.h"

/* One block format. */
typedef struct qblock_info {
  const char *name;    /* as GGUF tools spell it: "Q4_K" */
  uint32_t ggml_type;  /* its number in GGUF files */
  uint32_t block;      /* elements per block (32 or 256) */
  uint32_t bytes;      /* bytes per block */
  uint32_t half_at[2]; /* byte offsets of the block's f16 fields (d, then m / dmin; UINT32_MAX: none) */
} qblock_info_t;

/* True for the block formats LT_Q8_0 .. LT_Q6_K. */
bool qblock_is(lt_dtype_t t);

/* The format's description (static), or NULL when t is not a block format. */
const qblock_info_t *qblock_info(lt_dtype_t t);

/* The block format with GGUF type number ggml_type; false when there is none (or Lathe lacks it). */
bool qblock_from_ggml(uint32_t ggml_type, lt_dtype_t *out);

/* The supported block formats' names, comma-separated (static string), for error messages. */
const char *qblock_names(void);

/* Bytes of one row of K elements; 0 when K is not a multiple of the block size. */
uint64_t qblock_row_bytes(lt_dtype_t t, uint64_t K);

/* Dequantises n elements (a multiple of the block size) of blocks into y[n] (caller owns y). */
void qblock_dequant(lt_dtype_t t, const void *blocks, float *y, uint64_t n);

/* Element k of a row (the row's first block at row): the weight it stands for. */
float qblock_weight(lt_dtype_t t, const uint8_t *row, uint64_t k);

#endif
