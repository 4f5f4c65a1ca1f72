/* CPU references: the naive version of every GPU op, computing the same math in plain C (double accumulation
 * where a reduction is involved), used by the tests and benchmarks. Outputs first, then inputs, then shapes. */
#ifndef LATHE_REF_H
#define LATHE_REF_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/ops/ops.h"

/* Element i of a weight array of dtype t (f32, f16 or bf16) as float. */
float ref_weight_at(const void *w, lt_dtype_t t, uint64_t i);

/* y[i] = a[i] + b[i % nb] */
void ref_add(float *y, const float *a, const float *b, uint32_t n, uint32_t nb);
/* y[i] = a[i] * b[i % nb] */
void ref_mul(float *y, const float *a, const float *b, uint32_t n, uint32_t nb);
/* y[i] = s * a[i] */
void ref_scale(float *y, const float *a, float s, uint32_t n);
/* y[i] = a[i] / (1 + exp(-a[i])) */
void ref_silu(float *y, const float *a, uint32_t n);
/* y[i] = 0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3))) */
void ref_gelu(float *y, const float *a, uint32_t n);
/* y[i] = silu(gate[i]) * up[i] */
void ref_swiglu(float *y, const float *gate, const float *up, uint32_t n);
/* y[i] = gelu_tanh(gate[i]) * up[i] */
void ref_geglu(float *y, const float *gate, const float *up, uint32_t n);
/* y[i] = cap * tanh(a[i] / cap) */
void ref_softcap(float *y, const float *a, float cap, uint32_t n);

/* y[i] = max(a[i], 0) */
void ref_relu(float *y, const float *a, uint32_t n);
/* dx[i] = dy[i] where x[i] > 0, else 0 */
void ref_relu_backward(float *dx, const float *dy, const float *x, uint32_t n);

/* y[M,N] = x[M,K] . w[N,K]^T (+ y when accumulate); w f32 or f16 bits. Double accumulation. */
void ref_matmul(float *y, const float *x, const void *w, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t K,
                bool accumulate);

/* y[M,N] = x[M,K] . dequant(w)[N,K]^T (+ y when accumulate) for a quantised weight (engine/ops/quant.h layout): q int8
 * (LT_I8) or packed int4 (LT_I4) rows, scales f16 bits [N, ceil(K / group)]. Double accumulation. */
void ref_matmul_q(float *y, const float *x, const uint8_t *q, const uint16_t *scales, lt_dtype_t wtype, uint32_t group,
                  uint32_t M, uint32_t N, uint32_t K, bool accumulate);

/* Row-wise references (engine/ops/ref/ref_rows.c). */
void ref_rmsnorm(float *y, const float *x, const float *w, uint32_t rows, uint32_t n, float eps);
void ref_layernorm(float *y, const float *x, const float *w, const float *b, uint32_t rows, uint32_t n, float eps);
void ref_softmax(float *y, const float *x, uint32_t rows, uint32_t n);
void ref_argmax(uint32_t *idx, const float *x, uint32_t rows, uint32_t n);
void ref_topk(uint32_t *idx, float *val, const float *x, uint32_t rows, uint32_t n, uint32_t k);
/* nll and targets may be NULL. */
void ref_logsumexp(float *lse, float *nll, const float *x, const int32_t *targets, uint32_t rows, uint32_t n);
void ref_cosine(float *out, const float *a, const float *b, uint32_t rows, uint32_t n);

/* RoPE, embedding and attention references (engine/ops/ref/ref_attn.c). The RoPE reference computes its angles itself
 * (double precision), independently of rope_table_build(). */
void ref_rope(float *x, const int32_t *pos, uint32_t rows, uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim,
              bool neox, double theta, const rope_scaling_t *scaling);
void ref_embed(float *y, const void *table, lt_dtype_t ttype, const int32_t *ids, uint32_t n_ids, uint32_t dim,
               uint32_t row_lo, uint32_t row_hi);
/* Query t (at position q_pos0 + t) sees keys [0, q_pos0 + t], or with window > 0 only (q_pos0 + t - window, ...];
 * softcap > 0 caps each scaled score s to softcap * tanh(s / softcap). */
void ref_attention(float *out, const float *q, const float *k, const float *v, uint32_t n_q, uint32_t n_heads,
                   uint32_t n_kv_heads, uint32_t head_dim, uint32_t q_pos0, uint32_t kv_len, uint32_t window,
                   float scale, float softcap);

/* y[ids[i], :] += w[i] * x[i, :] (ids outside [0, y_rows) skipped) (engine/ops/ref/ref.c). */
void ref_scatter_add(float *y, const float *x, const int32_t *ids, const float *w, uint32_t n, uint32_t d,
                     uint32_t y_rows);

/* Philox-4x32-10 on counter ctr with key; writes 4 outputs (engine/ops/ref/ref_perturb.c). */
void ref_philox4x32(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);
/* The standard normal z(seed, tensor_id, i) that op_perturb() adds: counter (i/4 lo, i/4 hi, tensor_id, 0), key
 * (seed lo, seed hi); Box-Muller on outputs (0,1) and (2,3); element i takes normal i % 4. */
float ref_normal(uint64_t seed, uint32_t tensor_id, uint64_t i);
/* x[i] += scale * ref_normal(seed, tensor_id, i) */
void ref_perturb(float *x, uint32_t n, uint64_t seed, uint32_t tensor_id, float scale);
/* The 32 random bits that decide the stochastic rounding of element i in op_perturb_update(): Philox output i % 4
 * of counter (i/4 lo, i/4 hi, tensor_id, 1). */
uint32_t ref_round_bits(uint64_t seed, uint32_t tensor_id, uint64_t i);
/* v rounded stochastically to f16 bits by the random bits r (perturb.comp's rule: the upper neighbour with
 * probability (v - lo) / (hi - lo), against r's top 24 bits as a uniform). */
uint16_t ref_round_f16(float v, uint32_t r);
/* v rounded stochastically to bfloat16 bits: r's top 16 bits added below the kept ones, then truncated. */
uint16_t ref_round_bf16(float v, uint32_t r);
/* op_perturb_update() on the CPU: x[i] = round(decay * x[i] + scale * ref_normal(...)) in dtype (f32, f16 or bf16
 * bits), f32 arithmetic; matches the shader bit for bit when scale is 0 (z's last bits differ otherwise). */
void ref_perturb_update(void *x, lt_dtype_t dtype, uint32_t n, uint64_t seed, uint32_t tensor_id, float decay,
                        float scale);

#endif
