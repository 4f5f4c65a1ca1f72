/* CPU references of the backward passes and the optimiser (engine/ops/ops_grad.h): the same math in plain C with
 * double accumulation, straight from the definitions (no online softmax, no recomputation). */
#ifndef LATHE_REF_GRAD_H
#define LATHE_REF_GRAD_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/ops/ops_grad.h"

/* dx[M,K] (+)= dy[M,N] . w[N,K], w f32, f16 or bf16 bits. */
void ref_matmul_dx(float *dx, const float *dy, const void *w, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t K,
                   bool accumulate);
/* As ref_matmul_dx for a quantised weight (engine/ops/quant.h: q, f16 scales). */
void ref_matmul_dx_q(float *dx, const float *dy, const uint8_t *q, const uint16_t *scales, uint32_t bits,
                     uint32_t group, uint32_t M, uint32_t N, uint32_t K, bool accumulate);
/* dw[N,K] (+)= dy[M,N]^T . x[M,K]. */
void ref_matmul_dw(float *dw, const float *dy, const float *x, uint32_t M, uint32_t N, uint32_t K, bool accumulate);
/* RMSNorm backward: dx += dLoss/dx, and dw += dLoss/dw when dw is not NULL. */
void ref_rmsnorm_backward(float *dx, float *dw, const float *g, const float *x, const float *w, uint32_t rows,
                          uint32_t n, float eps);
/* RoPE backward in place: the rotation by minus the angle. */
void ref_rope_backward(float *dx, const int32_t *pos, uint32_t rows, uint32_t n_heads, uint32_t head_dim,
                       uint32_t rot_dim, bool neox, double theta, const rope_scaling_t *scaling);
/* Causal attention over T tokens with its log-sum-exp per (query, head); window > 0: query t sees keys
 * (t - window, t] only, ATTN_BIDIRECTIONAL: every key; softcap > 0: scores capped to softcap * tanh(s / softcap). */
void ref_attention_lse(float *out, float *lse, const float *q, const float *k, const float *v, uint32_t T,
                       uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim, uint32_t window, float scale,
                       float softcap);
/* Its backward: dq, dk, dv (overwritten) from dout, from the definition. */
void ref_attention_backward(float *dq, float *dk, float *dv, const float *q, const float *k, const float *v,
                            const float *dout, uint32_t T, uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim,
                            uint32_t window, float scale, float softcap);
/* LayerNorm backward: dx += dLoss/dx; dw += dLoss/dw and db += dLoss/db when not NULL. */
void ref_layernorm_backward(float *dx, float *dw, float *db, const float *g, const float *x, const float *w,
                            uint32_t rows, uint32_t n, float eps);
/* y[i] = a[i] Phi(a[i]) through libm's erf. */
void ref_gelu_erf(float *y, const float *a, uint32_t n);
/* dx[i] = dy[i] (Phi(x[i]) + x[i] phi(x[i])). */
void ref_gelu_erf_backward(float *dx, const float *dy, const float *x, uint32_t n);
/* SwiGLU backward. */
void ref_swiglu_backward(float *dgate, float *dup, const float *dy, const float *gate, const float *up, uint32_t n);
/* GeGLU backward (y = gelu_tanh(gate) * up). */
void ref_geglu_backward(float *dgate, float *dup, const float *dy, const float *gate, const float *up, uint32_t n);
/* dtable[ids[r], :] += dy[r, :] (ids outside [0, table_rows) skipped). */
void ref_embed_backward(float *dtable, const float *dy, const int32_t *ids, uint32_t n_rows, uint32_t dim,
                        uint32_t table_rows);
/* nll[r] = lse(x[r]) - x[r, t[r]]; dlogits (may be NULL) = (softmax - onehot) * w[r]. */
void ref_cross_entropy(float *nll, float *dlogits, const float *logits, const int32_t *targets, const float *weights,
                       uint32_t rows, uint32_t n);
/* loss[r] = T^2 KL(softmax(t/T) || softmax(s/T)); dstudent (may be NULL) = w[r] T (softmax(s/T) - softmax(t/T)). */
void ref_kd(float *loss, float *dstudent, const float *student, const float *teacher, const float *weights,
            uint32_t rows, uint32_t n, float temperature);
/* ATKD's terms straight from their definitions in double: loss[2r] = T^2 TCKD, loss[2r + 1] = T^2 NCKD (op_atkd);
 * dstudent (may be NULL) = the gradient of w[2r] loss[2r] + w[2r + 1] loss[2r + 1]. */
void ref_atkd(float *loss, float *dstudent, const float *student, const float *teacher, const int32_t *targets,
              const float *weights, uint32_t rows, uint32_t n, float temperature);
/* One AdamW step on n elements. */
void ref_adamw(float *p, const float *g, float *m, float *v, uint32_t n, const adamw_params_t *a);

#endif
