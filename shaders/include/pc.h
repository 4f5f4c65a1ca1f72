/* Push-constant structs, written once and compiled both as C (the files of engine/ops) and as GLSL (shaders/).
 * A shader selects its struct by defining PC_<NAME> before including this file; C sees them all.
 * Only 4-byte scalar fields: the C and std430 push-constant layouts then agree without padding rules.
 * Every struct stays at most 128 bytes (the minimum maxPushConstantsSize). */
/* The fields between PC_BEGIN and PC_END are struct members, which clang-format cannot see through the macros. */
/* clang-format off */
#ifndef LATHE_PC_H
#define LATHE_PC_H

#ifdef LATHE_GLSL
#define PC_BEGIN(name) layout(push_constant) uniform name##_block {
#define PC_END(name) } pc;
#else
#include <stdint.h>
typedef uint32_t uint;
#define PC_BEGIN(name) typedef struct name {
#define PC_END(name) } name##_t;
#endif

/* Elementwise ops: y[i] = f(a[i], b[i % nb]) for i < n. */
#if !defined(LATHE_GLSL) || defined(PC_ELTWISE)
PC_BEGIN(pc_eltwise)
  uint n;      /* elements of y and a */
  uint nb;     /* elements of b (broadcast by modulo); 0 when unused */
  uint op;     /* ELT_* */
  float scale; /* for ELT_SCALE and ELT_AXPY */
PC_END(pc_eltwise)
#endif
#define ELT_ADD 0u
#define ELT_MUL 1u
#define ELT_SCALE 2u
#define ELT_SILU 3u
#define ELT_GELU 4u
#define ELT_SWIGLU 5u
#define ELT_RELU 6u
#define ELT_RELU_BW 7u /* y = a where b > 0, else 0: the ReLU's backward with b its input */
#define ELT_AXPY 8u    /* y = a + scale * b */
#define ELT_GEGLU 9u   /* y = gelu_tanh(a) * b (Gemma's MLP) */
#define ELT_SOFTCAP 10u /* y = scale * tanh(a / scale) (Gemma 2's logit soft-capping) */
#define ELT_SOFTCAP_BW 11u /* y = a * (1 - (b / scale)^2): the backward of the cap, b its output */
#define ELT_GELU_ERF 13u /* y = a * Phi(a), the exact GELU (Whisper's) */
#define ELT_GELU_ERF_BW 14u /* y = a * gelu_erf'(b): its backward, b its input */
#define ELT_LOGMEL_CLAMP 12u /* y = (max(a, b - scale) + 4) / 4: Whisper's log-mel normalisation, b its maximum */

/* Row-wise normalisation: RMSNorm (layernorm 0) and LayerNorm (layernorm 1); one workgroup per row. */
#if !defined(LATHE_GLSL) || defined(PC_NORM)
PC_BEGIN(pc_norm)
  uint rows, n;
  float eps;
  uint layernorm; /* 1: subtract the mean and add the bias */
PC_END(pc_norm)
#endif

/* Row-wise reductions: softmax, argmax, log-sum-exp / cross-entropy, cosine, top-k. */
#if !defined(LATHE_GLSL) || defined(PC_ROWS)
PC_BEGIN(pc_rows)
  uint rows, n;
  uint k;        /* top-k: how many */
  uint has_target; /* log-sum-exp: 1 cross-entropy targets bound, 2 a scale per row bound instead */
PC_END(pc_rows)
#endif

/* Driver-trap tests: one invocation adds `step` n times (tests/engine/test_driver_traps.c). */
#if !defined(LATHE_GLSL) || defined(PC_CANARY)
PC_BEGIN(pc_canary)
  uint n;
  float step;
PC_END(pc_canary)
#endif

/* Matrix multiply y[M,N] = x[M,K] . w[N,K]^T (+ y when accumulate). */
#if !defined(LATHE_GLSL) || defined(PC_MATMUL)
PC_BEGIN(pc_matmul)
  uint M, N, K;
  uint k_base, k_len; /* this dispatch covers columns [k_base, k_base + k_len) of K */
  uint accumulate;    /* 1: add to y instead of overwriting */
  uint x_stride, w_stride, y_stride; /* row strides in elements */
  uint n2;            /* gemv.comp with QKV: rows of w2 and of w3 (N is w's) */
  float eps;          /* gemv.comp with NORM: the RMSNorm epsilon */
  uint rope_hd;       /* gemv.comp with QKV and ROPE: head_dim (every dim turns), */
  uint rope_neox;     /* 1: pairs (i, i + head_dim / 2) (Hugging Face), 0: pairs (2i, 2i + 1) (GGUF), */
  uint rope_max_pos;  /* and the rows of the (cos, sin) table */
PC_END(pc_matmul)
#endif

/* Matrix multiply with a quantised weight (engine/ops/quant.h): y[M,N] (+)= x[M,K] . dequant(w)[N,K]^T. */
#if !defined(LATHE_GLSL) || defined(PC_MATMUL_Q)
PC_BEGIN(pc_matmul_q)
  uint M, N, K;
  uint k_base, k_len; /* this dispatch covers columns [k_base, k_base + k_len) of K; k_base a multiple of 8 */
  uint accumulate;    /* 1: add to y instead of overwriting */
  uint x_stride, y_stride; /* row strides of x and y in elements */
  uint kp;            /* columns per row of q (K rounded up to a multiple of 8) */
  uint n_groups;      /* scales per row */
  uint group;         /* columns per scale */
  uint row_bytes;     /* block formats (GQ): bytes per row of w */
PC_END(pc_matmul_q)
#endif

#ifndef LATHE_GLSL
#include <stddef.h>
/* The head the push constants of the ops that walk K in chunks start with: op_dispatch_k() (engine/ops/ops.c)
 * reads K and sets each chunk's k_base, k_len and accumulate through it. */
typedef struct pc_k_head {
  uint M, N, K, k_base, k_len, accumulate;
} pc_k_head_t;
#define PC_K_HEAD_OK(t)                                                                                               \
  (offsetof(t, K) == offsetof(pc_k_head_t, K) && offsetof(t, k_base) == offsetof(pc_k_head_t, k_base) &&              \
   offsetof(t, k_len) == offsetof(pc_k_head_t, k_len) && offsetof(t, accumulate) == offsetof(pc_k_head_t, accumulate))
_Static_assert(PC_K_HEAD_OK(pc_matmul_t) && PC_K_HEAD_OK(pc_matmul_q_t), "a K-chunked op's push constants must "
               "start with the fields of pc_k_head_t");
#endif

/* RoPE applied in place to x[rows, n_heads, head_dim]. */
#if !defined(LATHE_GLSL) || defined(PC_ROPE)
PC_BEGIN(pc_rope)
  uint rows, n_heads, head_dim, rot_dim;
  uint neox;    /* 1: rotate-half pairs (i, i + rot/2) as Hugging Face; 0: interleaved pairs (2i, 2i + 1) as GGUF */
  uint max_pos; /* rows of the cos/sin table */
  uint inverse; /* 1: rotate by minus the angle (the backward pass) */
PC_END(pc_rope)
#endif

/* Embedding gather: y[r] = table[ids[r] - row_lo] for ids in [row_lo, row_hi). */
#if !defined(LATHE_GLSL) || defined(PC_EMBED)
PC_BEGIN(pc_embed)
  uint n_ids, dim, row_lo, row_hi;
  uint row_bytes; /* block-format tables (GQ): bytes per row */
  uint seed_lo, seed_hi, tensor_id; /* PERTURB=1: rows read as table + scale * z(seed, tensor_id, element) */
  float scale;
PC_END(pc_embed)
#endif

/* Causal attention over a KV cache with grouped KV heads. */
#if !defined(LATHE_GLSL) || defined(PC_ATTN)
PC_BEGIN(pc_attn)
  uint n_q;        /* end of this dispatch's query rows: it covers rows [row_base, n_q) */
  uint n_heads, n_kv_heads, head_dim;
  uint q_pos0;     /* position of the first query row; query t sees keys [0, q_pos0 + t] */
  uint kv_len;     /* keys present in the cache */
  uint kv_stride;  /* elements between consecutive positions in the cache (n_kv_heads * head_dim) */
  float scale;     /* usually 1/sqrt(head_dim) */
  uint row_base;   /* first query row of this dispatch; partials are indexed by row - row_base */
  uint split_len;  /* keys per split; workgroup z covers keys [z * split_len, (z + 1) * split_len) */
  uint n_splits;   /* 1: attn writes out directly; more: attn writes partials that attn_merge combines */
  uint window;     /* sliding window: query t sees keys (q_pos0 + t - window, q_pos0 + t] only; 0: none */
  float softcap;   /* > 0: each scaled score s becomes softcap * tanh(s / softcap) (Gemma 2) */
PC_END(pc_attn)
#endif

/* Weighted scatter-add of rows: y[ids[i], :] += w[i] * x[i, :]. */
#if !defined(LATHE_GLSL) || defined(PC_SCATTER)
PC_BEGIN(pc_scatter)
  uint n, d, y_rows;
PC_END(pc_scatter)
#endif

/* x += scale * z, z standard normal from Philox-4x32-10 keyed by a 64-bit seed. */
#if !defined(LATHE_GLSL) || defined(PC_PERTURB)
PC_BEGIN(pc_perturb)
  uint n;
  uint seed_lo, seed_hi;
  uint tensor_id;
  float scale;
  float decay;  /* MODE 1 (the update): x = decay * x + scale * z */
  uint base_q;  /* MODE 2 (a perturbed copy): z starts at element 4 * base_q of the tensor piece */
PC_END(pc_perturb)
#endif

/* ---- training: backward passes and the optimiser ---- */

/* The backward matmul: y[M,N] (+)= sum over r in [k_base, k_base + k_len) of a(m, r) . w[r, n] (K rows of w in all),
 * a read from the x binding at x[m * x_stride + r * x_rstride] (either operand order of dy), w row-major [K, N] in
 * any weight dtype (quantised: kp columns per row of q, n_groups scales per row, group columns per scale). */
#if !defined(LATHE_GLSL) || defined(PC_MATMUL_GRAD)
PC_BEGIN(pc_matmul_grad)
  uint M, N, K;
  uint k_base, k_len;
  uint accumulate;
  uint x_stride, x_rstride; /* element steps of a along m and along r */
  uint w_stride, y_stride;  /* row strides of w and y in elements */
  uint kp, n_groups, group; /* quantised w only */
  uint row_bytes;           /* block-format w (GQ) only: bytes per row */
PC_END(pc_matmul_grad)
#endif
#ifndef LATHE_GLSL
_Static_assert(PC_K_HEAD_OK(pc_matmul_grad_t), "the backward matmul's push constants start with pc_k_head_t");
#endif

/* RMSNorm backward. mode 0 (one workgroup per row): dx[r] (+)= inv w*g - x inv^3 sum(w*g*x) / n and
 * rinv[r] = inv; mode 1 (one invocation per column): dw[i] (+)= sum over rows [r_base, r_base + r_len) of
 * g[r,i] x[r,i] rinv[r]. */
#if !defined(LATHE_GLSL) || defined(PC_NORM_BW)
PC_BEGIN(pc_norm_bw)
  uint rows, n;
  float eps;
  uint mode;
  uint r_base, r_len;
  uint accumulate; /* mode 0: add to dx; mode 1: add to dw (always after the first row chunk) */
  uint layernorm;  /* LayerNorm's backward (the mean subtracted) instead of RMSNorm's */
PC_END(pc_norm_bw)
#endif

/* Causal attention for training, one sequence of T tokens (queries and keys at positions 0..T-1). mode 0:
 * out and lse per (query, head); mode 1: dq and D = sum(dout * out) per (query, head); mode 2: dk, dv per
 * (key, kv head) over the queries [t_base, t_base + t_len), accumulating after the first chunk. */
#if !defined(LATHE_GLSL) || defined(PC_ATTN_TRAIN)
PC_BEGIN(pc_attn_train)
  uint T, n_heads, n_kv_heads;
  float scale;
  uint mode;
  uint t_base, t_len, accumulate;
  uint window; /* query t sees keys (t - window, t] only; 0: all keys up to t */
  float softcap; /* > 0: scores are capped to softcap * tanh(s / softcap) (Gemma 2) */
  uint bidir;    /* every query sees every key (an encoder); window unused */
PC_END(pc_attn_train)
#endif

/* Knowledge distillation at a temperature over rows of n logits (the loss per row, and the student's gradient in
 * place when backward). */
#if !defined(LATHE_GLSL) || defined(PC_KD)
PC_BEGIN(pc_kd)
  uint rows, n;
  float temperature;
  uint backward;
PC_END(pc_kd)
#endif

/* SwiGLU backward: dgate = dy * up * silu'(gate), dup = dy * silu(gate). */
#if !defined(LATHE_GLSL) || defined(PC_SWIGLU_BW)
PC_BEGIN(pc_swiglu_bw)
  uint n;
  uint gelu; /* 1: y = gelu_tanh(gate) * up (GeGLU) instead of SwiGLU */
PC_END(pc_swiglu_bw)
#endif

/* Embedding backward: for each distinct id u (ids[u]), dtable[ids[u], c] += sum of dy[rows[j], c] over
 * j in [start[u], start[u+1]). */
#if !defined(LATHE_GLSL) || defined(PC_EMBED_BW)
PC_BEGIN(pc_embed_bw)
  uint n_unique, dim, table_rows;
PC_END(pc_embed_bw)
#endif

/* Cross-entropy gradient: dlogits[r, j] = (exp(x[r, j] - lse[r]) - (j == t[r])) * w[r] for r < rows, j < n. */
#if !defined(LATHE_GLSL) || defined(PC_CE_GRAD)
PC_BEGIN(pc_ce_grad)
  uint rows, n;
PC_END(pc_ce_grad)
#endif

/* AdamW on n elements: m = b1 m + (1 - b1) g s; v = b2 v + (1 - b2) (g s)^2; p -= lr (mhat / (sqrt(vhat) + eps)
 * + wd p), with bias corrections c1 = 1 - b1^t, c2 = 1 - b2^t computed on the host in double. */
#if !defined(LATHE_GLSL) || defined(PC_ADAMW)
PC_BEGIN(pc_adamw)
  uint n;
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float c1, c2;
PC_END(pc_adamw)
#endif

/* Partial sums: out[g] = sum over x[g * chunk .. (g + 1) * chunk) of x (square = 0) or x^2 (square = 1). */
#if !defined(LATHE_GLSL) || defined(PC_REDUCE)
PC_BEGIN(pc_reduce)
  uint n, chunk, mode; /* REDUCE_* */
PC_END(pc_reduce)
#endif
#define REDUCE_SUM 0u
#define REDUCE_SUMSQ 1u
#define REDUCE_MAX 2u /* the largest element (none may be NaN) */

/* Conv1d as columns (conv_cols.comp), x [T_in, C] row-major, one invocation per output element:
 * mode 0 (im2col): y[t, c * K + k] = x[t * stride + k - pad, c], 0 outside x; y is [T_out, C * K]
 * mode 1 (its transpose, a gather): y[u, c] = sum over k of x[t, c * K + k] with t * stride + k - pad = u; x is
 *   [T_out, C * K] and y [T_in, C] */
#if !defined(LATHE_GLSL) || defined(PC_CONV_COLS)
PC_BEGIN(pc_conv_cols)
  uint t_in, t_out, ch, k, stride, pad, mode;
PC_END(pc_conv_cols)
#endif

/* Log-mel features (logmel.comp): one workgroup per frame t; frame t is samples [t * hop - n_fft / 2, ...) of x,
 * reflected at both ends, times the window. y[t * n_mels + m] = log10(max(mel power, 1e-10)). */
#define LOGMEL_MAX_FFT 1024u /* the largest n_fft the shader's shared arrays hold */
#if !defined(LATHE_GLSL) || defined(PC_LOGMEL)
PC_BEGIN(pc_logmel)
  uint n;      /* samples of x */
  uint frames; /* frames to write */
  uint hop, n_fft, n_bins, n_mels;
PC_END(pc_logmel)
#endif

/* clang-format on */
#endif
