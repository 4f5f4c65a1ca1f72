/* Element types of tensors on the device and in model files, and the conversions between float and the 16-bit
 * formats (IEEE half, bfloat16), used by production code (loading, saving, quantisation) and the references. */
#ifndef LATHE_DTYPE_H
#define LATHE_DTYPE_H

#include <stdint.h>

/* LT_I8 and LT_I4 are quantised weights (engine/ops/quant.h): int8, or two int4 per byte, with per-group scales.
 * LT_Q8_0 .. LT_Q6_K are GGUF's block formats (engine/ops/qblock.h): each row a run of self-describing blocks. */
typedef enum lt_dtype {
  LT_F32 = 0,
  LT_F16 = 1,
  LT_BF16 = 2,
  LT_I32 = 3,
  LT_I8 = 4,
  LT_I4 = 5,
  LT_Q8_0 = 6,
  LT_Q4_0,
  LT_Q4_1,
  LT_Q5_0,
  LT_Q5_1,
  LT_Q2_K,
  LT_Q3_K,
  LT_Q4_K,
  LT_Q5_K,
  LT_Q6_K,
  LT_DTYPE_COUNT
} lt_dtype_t;

/* Bytes per element of a dtype (LT_I4: 1, for the byte that holds two; block formats: 0, see qblock_row_bytes). */
uint32_t lt_dtype_size(lt_dtype_t t);

/* Returns the dtype's name ("f32", ...); static string. */
const char *lt_dtype_str(lt_dtype_t t);

/* Converts an IEEE half (bits) to float. */
float dtype_half_to_float(uint16_t h);
/* Converts a float to IEEE half bits, rounding to nearest even. */
uint16_t dtype_float_to_half(float f);
/* Converts bfloat16 bits to float (exact). */
float dtype_bf16_to_float(uint16_t h);
/* Converts a float to bfloat16 bits, rounding to nearest even. */
uint16_t dtype_float_to_bf16(float f);

#endif
