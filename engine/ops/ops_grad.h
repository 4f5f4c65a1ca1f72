/* The backward passes of the compute ops and the optimiser, for first-order training (engine/model/train.c).
 * Conventions as in ops.h: outputs first, f32 activations and gradients, views aligned to min_storage_align.
 * Each op has a CPU reference in engine/ops/ref/ref_grad.h. Every reduction runs in a fixed order (no atomics), so
 * a gradient is the same bits on every run on one device. */
#ifndef LATHE_OPS_GRAD_H
#define LATHE_OPS_GRAD_H

#include "engine/ops/ops.h"

/* dx[M,K] (+)= dy[M,N] . w[N,K] for the weight of y = x . w^T as stored: f32, f16 or bf16 (read in its dtype). */
lt_status_t op_matmul_dx(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, gpu_view_t w, lt_dtype_t wtype, uint32_t M,
                         uint32_t N, uint32_t K, bool accumulate, lt_err_t *err);

/* As op_matmul_dx for a quantised weight (engine/ops/quant.h), read in place: no dequantised copy. */
lt_status_t op_matmul_dx_q(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, const qmat_view_t *w, uint32_t M, uint32_t N,
                           uint32_t K, bool accumulate, lt_err_t *err);

/* dw[N,K] (+)= dy[M,N]^T . x[M,K]: the weight gradient of y = x . w^T, summed over the M rows in order. */
lt_status_t op_matmul_dw(gpu_cmd_t *c, gpu_view_t dw, gpu_view_t dy, gpu_view_t x, uint32_t M, uint32_t N, uint32_t K,
                         bool accumulate, lt_err_t *err);

/* RMSNorm backward for y = x / rms(x) * w over rows of n: dx[r,:] += dLoss/dx from g = dLoss/dy, and, when dw has
 * a buffer, dw[:] += the weight gradient summed over the rows. dx must not alias g or x. */
lt_status_t op_rmsnorm_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dw, gpu_view_t g, gpu_view_t x, gpu_view_t w,
                                uint32_t rows, uint32_t n, float eps, lt_err_t *err);

/* As op_rmsnorm_backward, but dx is overwritten (dx = dLoss/dx), not added to; dw still accumulates. */
lt_status_t op_rmsnorm_backward_set(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dw, gpu_view_t g, gpu_view_t x,
                                    gpu_view_t w, uint32_t rows, uint32_t n, float eps, lt_err_t *err);

/* The `window` of op_attention_lse and op_attention_backward that makes every query see every key (an encoder). */
#define ATTN_BIDIRECTIONAL UINT32_MAX

/* Causal attention over one sequence of T tokens at positions 0..T-1 (q: [T, n_heads, head_dim]; k, v:
 * [T, n_kv_heads, head_dim]) that also writes lse[T, n_heads], the log-sum-exp of each query's scaled scores,
  * for op_attention_backward. The same result as op_attention with q_pos0 0 and kv_len T (and the same sliding
 * window, 0 for none, and soft-cap, 0 for none). */
lt_status_t op_attention_lse(gpu_cmd_t *c, gpu_view_t out, gpu_view_t lse, gpu_view_t q, gpu_view_t k, gpu_view_t v,
                             uint32_t T, uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim, uint32_t window,
                             float scale, float softcap, lt_err_t *err);

/* The backward of op_attention_lse: dq, dk, dv (overwritten) from dout, recomputing the probabilities from lse.
 * Needs a scratch of T * n_heads floats, which it takes from the recorder. */
lt_status_t op_attention_backward(gpu_cmd_t *c, gpu_view_t dq, gpu_view_t dk, gpu_view_t dv, gpu_view_t q, gpu_view_t k,
                                  gpu_view_t v, gpu_view_t out, gpu_view_t dout, gpu_view_t lse, uint32_t T,
                                  uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim, uint32_t window,
                                  float scale, float softcap, lt_err_t *err);

/* LayerNorm backward for y = (x - mean) * inv * w + b over rows of n: dx (added to when acc_dx, else overwritten),
 * dw and db added to (either NULL: not wanted), from g = dLoss/dy. Takes 2 * rows floats of scratch. */
lt_status_t op_layernorm_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dw, gpu_view_t db, gpu_view_t g, gpu_view_t x,
                                  gpu_view_t w, uint32_t rows, uint32_t n, float eps, bool acc_dx, lt_err_t *err);

/* SwiGLU backward for y = silu(gate) * up: dgate and dup (overwritten) from dy, n elements. */
lt_status_t op_swiglu_backward(gpu_cmd_t *c, gpu_view_t dgate, gpu_view_t dup, gpu_view_t dy, gpu_view_t gate,
                               gpu_view_t up, uint32_t n, lt_err_t *err);
/* GeGLU backward for y = gelu_tanh(gate) * up (Gemma), as op_swiglu_backward. */
lt_status_t op_geglu_backward(gpu_cmd_t *c, gpu_view_t dgate, gpu_view_t dup, gpu_view_t dy, gpu_view_t gate,
                              gpu_view_t up, uint32_t n, lt_err_t *err);

/* Embedding backward: dtable[ids[r], :] += dy[r, :] for r < n_rows (rows of dim floats; ids outside
 * [0, table_rows) skipped). ids is read on the host too (host_ids, the same values), to group the rows by id. */
lt_status_t op_embed_backward(gpu_cmd_t *c, gpu_view_t dtable, gpu_view_t dy, const int32_t *host_ids, uint32_t n_rows,
                              uint32_t dim, uint32_t table_rows, lt_err_t *err);

/* Cross-entropy over rows of n logits with per-row weights: nll[r] = lse - x[r, t[r]], and, when dlogits is the
 * logits buffer itself (in place), dlogits = (softmax(x) - onehot(t)) * w[r]. Targets i32, weights f32; a row
 * with weight 0 gets a zero gradient. lse is a scratch of rows floats. */
lt_status_t op_cross_entropy(gpu_cmd_t *c, gpu_view_t nll, gpu_view_t lse, bool backward, gpu_view_t logits,
                             gpu_view_t targets, gpu_view_t weights, uint32_t rows, uint32_t n, lt_err_t *err);

/* Knowledge distillation over rows of n logits at temperature T: loss[r] = T^2 KL(softmax(t/T) || softmax(s/T))
 * for the student's logits s and the teacher's t, and, with backward, s overwritten in place by the gradient of
 * sum_r w[r] loss[r]: w[r] T (softmax(s/T) - softmax(t/T)). Rows may be 150,000+ wide. */
lt_status_t op_kd(gpu_cmd_t *c, gpu_view_t loss, gpu_view_t student, gpu_view_t teacher, gpu_view_t weights,
                  uint32_t rows, uint32_t n, float temperature, bool backward, lt_err_t *err);

/* ATKD's terms over rows of n >= 2 logits at temperature T, each row with its ground-truth token tgt[r]:
 * loss[2r] = T^2 TCKD (KL of the target / non-target split) and loss[2r + 1] = T^2 NCKD (KL among the non-target
 * tokens, renormalised), teacher first. With backward, s is overwritten in place by the gradient of
 * sum_r w[2r] loss[2r] + w[2r + 1] loss[2r + 1]. A target outside [0, n) gives NaN losses. */
lt_status_t op_atkd(gpu_cmd_t *c, gpu_view_t loss, gpu_view_t student, gpu_view_t teacher, gpu_view_t targets,
                    gpu_view_t weights, uint32_t rows, uint32_t n, float temperature, bool backward, lt_err_t *err);

/* AdamW settings of one step. */
typedef struct adamw_params {
  float lr, beta1, beta2, eps, weight_decay;
  float grad_scale; /* applied to the gradient first (global-norm clipping) */
  uint32_t step;    /* 1 for the first step: the bias corrections 1 - beta^step */
} adamw_params_t;

/* One fused AdamW step on n elements: moments m, v and parameter p updated in place from g. */
lt_status_t op_adamw(gpu_cmd_t *c, gpu_view_t p, gpu_view_t g, gpu_view_t m, gpu_view_t v, uint32_t n,
                     const adamw_params_t *a, lt_err_t *err);

/* out[0] = sum of x[i]^2 for i < n, in a fixed order (several passes over partials taken from the recorder). */
lt_status_t op_sumsq(gpu_cmd_t *c, gpu_view_t out, gpu_view_t x, uint64_t n, lt_err_t *err);

/* out[0] = the largest of x[i] for i < n (none may be NaN), passes as for op_sumsq. */
lt_status_t op_max(gpu_cmd_t *c, gpu_view_t out, gpu_view_t x, uint64_t n, lt_err_t *err);

#endif
