/* Symmetric per-group round-to-nearest quantisation of weight matrices: Lathe's "lathe_rtn" format, read directly
 * by the quantised matmul (op_matmul_q) and stored as such in model files (docs/compression.md).
 *
 * A matrix w [N, K] (PyTorch Linear layout [out, in]) with bits b (8 or 4) and group g (a multiple of 8) becomes
 * - q: the integers, row-major with rows padded to Kp = K rounded up to a multiple of 8 columns (padding is 0):
 *   b = 8: int8 [N, Kp]; b = 4: [N, Kp / 2] bytes, element k in byte k / 2, low nibble for even k; both two's
 *   complement, in [-qmax, qmax] with qmax = 2^(b-1) - 1 (127 or 7);
 * - scales: f16 [N, ceil(K / g)]: s = max |w| over the group's columns / qmax, rounded to f16;
 *   q = clamp(round(w / s), -qmax, qmax) (round half away from zero), and 0 where s is 0.
 * The weight the model computes with is q * s. */
#ifndef LATHE_QUANT_H
#define LATHE_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#define QUANT_COL_ALIGN 8u /* rows of q hold a multiple of this many columns */

/* K rounded up to a multiple of QUANT_COL_ALIGN. */
uint32_t quant_padded_cols(uint32_t K);

/* Bytes of one row of q for K columns at `bits` (8: Kp, 4: Kp / 2). */
uint32_t quant_row_bytes(uint32_t bits, uint32_t K);

/* Scales per row: ceil(K / group). */
uint32_t quant_groups(uint32_t K, uint32_t group);

/* True for a supported (bits, group): bits 8 or 4, group a positive multiple of QUANT_COL_ALIGN. */
bool quant_params_ok(uint32_t bits, uint32_t group);

/* Quantises w [N, K] into q (N * quant_row_bytes(bits, K) bytes) and scales (N * quant_groups(K, group) f16
 * bits), both owned by the caller. */
void quant_rtn(uint8_t *q, uint16_t *scales, const float *w, uint32_t N, uint32_t K, uint32_t bits, uint32_t group);

/* The integer of element (n, k) of q. */
int32_t quant_int(const uint8_t *q, uint32_t bits, uint32_t K, uint32_t n, uint32_t k);

/* The weight element (n, k) stands for: quant_int() times its group's scale. */
float quant_weight(const uint8_t *q, const uint16_t *scales, uint32_t bits, uint32_t group, uint32_t K, uint32_t n,
                   uint32_t k);

/* Dequantises q and scales back into w [N, K] (caller owns w). */
void quant_dequant(float *w, const uint8_t *q, const uint16_t *scales, uint32_t N, uint32_t K, uint32_t bits,
                   uint32_t group);

#endif
