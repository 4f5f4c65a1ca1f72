/* Compute ops on the GPU. Each records dispatches into a gpu_cmd_t; results are ready after gpu_cmd_finish().
 * Conventions (llm.c style): outputs first, then inputs, then shape ints. Views are byte offsets into buffers
 * and must be aligned to caps.min_storage_align. All math accumulates in f32. Each op has a CPU reference in
 * engine/ops/ref/ref.h computing the same thing naively. */
#ifndef LATHE_OPS_H
#define LATHE_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/gpu/gpu.h"
#include "engine/ops/dtype.h"
#include "pc.h"

/* A range of a buffer starting at byte offset off (the op decides how many bytes it touches). */
typedef struct gpu_view {
  gpu_buf_t *buf;
  uint64_t off;
} gpu_view_t;

/* Views a whole buffer from its start. */
static inline gpu_view_t gv(gpu_buf_t *b) { return (gpu_view_t){b, 0}; }

typedef enum op_id {
#define OP(id, shader, nb, pc, wg, loops) OP_##id,
#include "engine/ops/ops.def"
#undef OP
  OP_COUNT
} op_id_t;

/* Returns the pipeline of an op variant (defines "A=1;B=2" select the variant; spec[0] is the workgroup size,
 * 0 meaning the table's default). The pipeline is owned by the gpu. NULL with err on failure. */
gpu_pipeline_t *op_pipeline(gpu_t *g, op_id_t id, const char *defines, const uint32_t *spec, uint32_t n_spec,
                            lt_err_t *err);

/* op_pipeline() with the bindings in texel_mask (bit i: binding i) read as uniform texel buffers. */
gpu_pipeline_t *op_pipeline_texel(gpu_t *g, op_id_t id, const char *defines, const uint32_t *spec, uint32_t n_spec,
                                  uint32_t texel_mask, lt_err_t *err);

/* Records one dispatch of op `id` binding n views with the given byte extents; writes[i] marks outputs. */
lt_status_t op_dispatch(gpu_cmd_t *c, gpu_pipeline_t *p, op_id_t id, const gpu_view_t *views, const uint64_t *bytes,
                        const bool *writes, uint32_t n, const void *push, uint32_t gx, uint32_t gy, uint32_t gz,
                        lt_err_t *err);

/* op_dispatch() with texel[i] the format binding i is read through (NULL: all storage buffers), for a pipeline of
 * op_pipeline_texel(); a texel binding spans exactly bytes[i], a multiple of its texel. */
lt_status_t op_dispatch_texel(gpu_cmd_t *c, gpu_pipeline_t *p, op_id_t id, const gpu_view_t *views,
                              const uint64_t *bytes, const bool *writes, const gpu_texel_t *texel, uint32_t n,
                              const void *push, uint32_t gx, uint32_t gy, uint32_t gz, lt_err_t *err);

/* Whether ops on CPU drivers read their large operands (matmul weights and x, attention's K and V) as uniform texel
 * buffers where the device allows it (on by default; benchmarks and tests turn it off to compare). Process-wide. */
void op_texel_reads(bool on);

/* Whether texel reads are on and pay on this device (a CPU driver). */
bool op_texel_reads_on(const gpu_caps_t *caps);

/* The format an op binds view v through: t when texel reads are on for this device (op_texel_reads_on), it reads t,
 * v's offset is aligned for texel views and `need` bytes are whole texels within the device's limit; else
 * GPU_TEXEL_NONE. *span gets the bytes to bind: with t, from v's offset to the end of its buffer in whole texels
 * (capped at the limit), so one view per buffer and offset serves every shape; otherwise need. */
gpu_texel_t op_texel_bind(const gpu_caps_t *caps, gpu_view_t v, gpu_texel_t t, uint64_t need, uint64_t *span);

/* Splits n invocations of workgroup size wg into a 2D grid gx*gy (gx <= 65535); shaders use flat_index(). */
void op_grid_1d(uint64_t n, uint32_t wg, uint32_t *gx, uint32_t *gy);

/* Returns the workgroup size of op id's row in the op table (engine/ops/ops.def). */
uint32_t op_wg(op_id_t id);

/* Returns the most loop iterations one invocation of op id may run in one dispatch (engine/ops/ops.def). */
uint32_t op_loop_budget(op_id_t id);

/* Loop iterations one invocation of a kernel that walks K runs in one dispatch: `fixed`, plus `per_unit` for
 * every `k_per_unit` columns of K it covers. */
typedef struct op_loop_cost {
  uint32_t fixed, per_unit, k_per_unit;
} op_loop_cost_t;

/* Records op id over columns [0, K) of its reduction in chunks, one dispatch each: whole units of `cost`, as many
 * as the op's loop budget allows per chunk, so no invocation loops too long. pc is the op's push constants, which
 * start with pc_k_head_t (pc.h): K is read there and each dispatch gets its chunk's k_base, k_len and accumulate.
 * The first chunk overwrites the output unless `accumulate`, later ones add to it; K == 0 is one empty chunk that
 * writes zeros. Views and grid as for op_dispatch(). */
lt_status_t op_dispatch_k(gpu_cmd_t *c, gpu_pipeline_t *p, op_id_t id, const gpu_view_t *views, const uint64_t *bytes,
                          const bool *writes, uint32_t n, void *pc, op_loop_cost_t cost, bool accumulate, uint32_t gx,
                          uint32_t gy, uint32_t gz, lt_err_t *err);

/* op_dispatch_k() with texel formats as op_dispatch_texel() takes them. */
lt_status_t op_dispatch_k_texel(gpu_cmd_t *c, gpu_pipeline_t *p, op_id_t id, const gpu_view_t *views,
                                const uint64_t *bytes, const bool *writes, const gpu_texel_t *texel, uint32_t n,
                                void *pc, op_loop_cost_t cost, bool accumulate, uint32_t gx, uint32_t gy, uint32_t gz,
                                lt_err_t *err);

/* ---- elementwise (engine/ops/ops_eltwise.c) ---- */

/* y[i] = a[i] + b[i % nb], i < n (f32). y may alias a. */
lt_status_t op_add(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, gpu_view_t b, uint32_t n, uint32_t nb, lt_err_t *err);
/* y[i] = a[i] * b[i % nb], i < n (f32). y may alias a. */
lt_status_t op_mul(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, gpu_view_t b, uint32_t n, uint32_t nb, lt_err_t *err);
/* y[i] = s * a[i], i < n (f32). y may alias a. */
lt_status_t op_scale(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, float s, uint32_t n, lt_err_t *err);
/* y[i] = a[i] * sigmoid(a[i]) (f32). */
lt_status_t op_silu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, uint32_t n, lt_err_t *err);
/* y[i] = gelu(a[i]) with the tanh approximation (f32). */
lt_status_t op_gelu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, uint32_t n, lt_err_t *err);
/* y[i] = a[i] * Phi(a[i]), the exact (erf) GELU of Whisper and BERT (f32). */
lt_status_t op_gelu_erf(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, uint32_t n, lt_err_t *err);
/* dx[i] = dy[i] * gelu_erf'(x[i]), the backward of op_gelu_erf (f32). dx may alias dy. */
lt_status_t op_gelu_erf_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, gpu_view_t x, uint32_t n, lt_err_t *err);
/* y[i] = silu(gate[i]) * up[i] (f32). */
lt_status_t op_swiglu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t gate, gpu_view_t up, uint32_t n, lt_err_t *err);
/* y = gelu_tanh(gate) * up (Gemma's MLP), n elements. y may alias gate. */
lt_status_t op_geglu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t gate, gpu_view_t up, uint32_t n, lt_err_t *err);
/* y = cap * tanh(a / cap), n elements (Gemma 2's logit soft-capping); cap > 0. y may alias a. */
lt_status_t op_softcap(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, float cap, uint32_t n, lt_err_t *err);
/* Its backward: dx = dy * (1 - (y / cap)^2) with y the capped values, n elements. dx may alias dy. */
lt_status_t op_softcap_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, gpu_view_t y, float cap, uint32_t n,
                                lt_err_t *err);

/* y[i] += a * x[i], i < n (f32). */
lt_status_t op_axpy(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, float a, uint32_t n, lt_err_t *err);
/* y[i] = max(a[i], 0) (f32). y may alias a. */
lt_status_t op_relu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, uint32_t n, lt_err_t *err);
/* dx[i] = dy[i] where x[i] > 0, else 0: the backward of op_relu (f32). dx may alias dy. */
lt_status_t op_relu_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, gpu_view_t x, uint32_t n, lt_err_t *err);

/* ---- matrix multiply (engine/ops/ops_matmul.c) ---- */

/* GEMM picks the device's variant of the tiled kernel: operands staged in shared memory (GPUs) or read straight
 * from the buffers (CPU drivers); MATMUL_GEMM_STAGED and MATMUL_GEMM_DIRECT force one (tests, benchmarks). */
typedef enum matmul_path {
  MATMUL_AUTO = 0,
  MATMUL_GEMM,
  MATMUL_GEMV,
  MATMUL_GEMM_STAGED,
  MATMUL_GEMM_DIRECT
} matmul_path_t;

/* y[M,N] = x[M,K] . w[N,K]^T, or y += that when accumulate. x and y are f32 row-major; w is f32 or f16 row-major
 * [N,K] (the Hugging Face Linear layout). Uses a GEMV kernel for few rows and a tiled GEMM kernel otherwise;
 * long K is split over several dispatches so no invocation loops too long. */
lt_status_t op_matmul(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, lt_dtype_t wtype, uint32_t M, uint32_t N,
                      uint32_t K, bool accumulate, lt_err_t *err);
/* As op_matmul with the kernel forced (tests and benchmarks). */
lt_status_t op_matmul_path(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, lt_dtype_t wtype, uint32_t M,
                           uint32_t N, uint32_t K, bool accumulate, matmul_path_t path, lt_err_t *err);

/* As op_matmul with row strides in elements: row m of x starts at x + m * x_stride, row m of y at
 * y + m * y_stride (so a weight split into row pieces can fill column ranges of one output). */
lt_status_t op_matmul_strided(gpu_cmd_t *c, gpu_view_t y, uint32_t y_stride, gpu_view_t x, uint32_t x_stride,
                              gpu_view_t w, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t K, bool accumulate,
                              lt_err_t *err);

/* A gated MLP's activation for few rows in one dispatch: y[M,N] = act(x . wg^T) * (x . wu^T) with act SiLU
 * (SwiGLU) or, with gelu, GeLU-tanh (GeGLU); x, y f32 row-major, wg and wu [N,K] in one dtype (f32, f16, bf16).
 * The same sums and activation as op_matmul twice and op_swiglu / op_geglu, in one dispatch instead of three (the
 * decode step's MLP). LT_E_UNSUPPORTED, with nothing recorded, when the shape is not one it takes (M above 4, or a
 * K too long for one dispatch): the caller then runs the three ops. */
/* With norm.buf set, x is the residual stream and the products see RMSNorm(x) * norm (norm: K f32 multipliers,
 * eps the norm's epsilon): the norm op that would come first is folded in (sums of x * norm scaled by each row's
 * 1 / sqrt(mean(x^2) + eps), equal to the separate ops within f32 rounding). */
lt_status_t op_gemv_glu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t wg, gpu_view_t wu, lt_dtype_t wtype,
                        uint32_t M, uint32_t N, uint32_t K, bool gelu, gpu_view_t norm, float eps, lt_err_t *err);

/* Three products of one x for few rows in one dispatch (the attention's q, k and v): q[M,N] = x . wq^T, k[M,N2] =
 * x . wk^T, v[M,N2] = x . wv^T, the weights [rows,K] in one dtype (f32, f16, bf16). The same sums as op_matmul
 * three times. LT_E_UNSUPPORTED, with nothing recorded, when the shape is not one it takes (M above 4, a K too
 * long for one dispatch, N or N2 not a multiple of the kernel's rows per workgroup): the caller runs op_matmul. */
lt_status_t op_gemv_qkv(gpu_cmd_t *c, gpu_view_t q, gpu_view_t k, gpu_view_t v, gpu_view_t x, gpu_view_t wq,
                        gpu_view_t wk, gpu_view_t wv, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t N2, uint32_t K,
                        gpu_view_t norm, float eps, lt_err_t *err);
/* (norm.buf: as for op_gemv_glu, RMSNorm(x) * norm folded in.) */

/* RoPE for op_gemv_qkv_rope: the rows' positions (int [M]), the (cos, sin) table [max_pos, head_dim / 2] that
 * op_rope reads, and the pair layout (neox: (i, i + head_dim / 2), else (2i, 2i + 1)). Every dim of a head turns. */
typedef struct op_qkv_rope {
  gpu_view_t pos, table;
  uint32_t head_dim, max_pos;
  bool neox;
} op_qkv_rope_t;

/* op_gemv_qkv with q and k leaving rotated as op_rope would turn them (the same float operations on the same
 * sums), so the pass needs no RoPE dispatches. LT_E_UNSUPPORTED as op_gemv_qkv, and also when head_dim is odd or
 * does not divide N and N2. */
lt_status_t op_gemv_qkv_rope(gpu_cmd_t *c, gpu_view_t q, gpu_view_t k, gpu_view_t v, gpu_view_t x, gpu_view_t wq,
                             gpu_view_t wk, gpu_view_t wv, lt_dtype_t wtype, uint32_t M, uint32_t N, uint32_t N2,
                             uint32_t K, gpu_view_t norm, float eps, const op_qkv_rope_t *rope, lt_err_t *err);

/* ---- quantised matrix multiply (engine/ops/ops_matmul_q.c) ---- */

/* A quantised weight [N, K] in the layout of engine/ops/quant.h: q holds its int8 (wtype LT_I8) or packed int4 (LT_I4)
 * rows of quant_row_bytes() bytes each, scales its [N, ceil(K / group)] scales in stype (LT_F16 or LT_F32). Or, with
 * wtype one of GGUF's block formats (engine/ops/qblock.h), q holds the file's rows of qblock_row_bytes() bytes each
 * (K a multiple of the block size) and scales, stype and group are unused. */
typedef struct qmat_view {
  gpu_view_t q, scales;
  lt_dtype_t wtype, stype;
  uint32_t group; /* columns per scale, a multiple of 8 */
} qmat_view_t;

/* y[M,N] = x[M,K] . dequant(w)[N,K]^T, or y += that when accumulate, reading the integers and their scales
 * directly (no dequantised copy): a GEMV kernel for few rows, a tiled GEMM otherwise (path forces one, as for
 * op_matmul_path). Row m of x starts at x + m * x_stride, row m of y at y + m * y_stride (elements), so a weight
 * split into row pieces fills column ranges of one output. x and y are f32. */
lt_status_t op_matmul_q(gpu_cmd_t *c, gpu_view_t y, uint32_t y_stride, gpu_view_t x, uint32_t x_stride,
                        const qmat_view_t *w, uint32_t M, uint32_t N, uint32_t K, bool accumulate, matmul_path_t path,
                        lt_err_t *err);

/* ---- row-wise ops (engine/ops/ops_rows.c); rows are contiguous, n elements each, f32 ---- */

/* y[r,:] = x[r,:] / sqrt(mean(x[r,:]^2) + eps) * w[:]. y may alias x. */
lt_status_t op_rmsnorm(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, uint32_t rows, uint32_t n, float eps,
                       lt_err_t *err);
/* y[r,:] = (x[r,:] - mean) / sqrt(var + eps) * w[:] + b[:]. y may alias x. */
lt_status_t op_layernorm(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t w, gpu_view_t b, uint32_t rows,
                         uint32_t n, float eps, lt_err_t *err);
/* y[r,:] = softmax(x[r,:]); rows may be 150,000+ wide. y may alias x. */
lt_status_t op_softmax(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, uint32_t rows, uint32_t n, lt_err_t *err);
/* idx[r] = index of the largest x[r,:] (u32; the lowest index wins ties). */
lt_status_t op_argmax(gpu_cmd_t *c, gpu_view_t idx, gpu_view_t x, uint32_t rows, uint32_t n, lt_err_t *err);
/* Most candidates op_topk selects per row. */
#define OP_TOPK_MAX 64u
/* idx[r,:k], val[r,:k] = the k largest x[r,:] in descending order (u32 indices; lower index first on ties);
 * 1 <= k <= OP_TOPK_MAX (MoE routing, sampling candidates). */
lt_status_t op_topk(gpu_cmd_t *c, gpu_view_t idx, gpu_view_t val, gpu_view_t x, uint32_t rows, uint32_t n, uint32_t k,
                    lt_err_t *err);
/* lse[r] = log(sum(exp(x[r,:]))); when targets (i32 [rows]) has a buffer, also nll[r] = lse[r] - x[r,t[r]]
 * (cross-entropy); pass a view with buf NULL for targets and nll to skip it. */
lt_status_t op_logsumexp(gpu_cmd_t *c, gpu_view_t lse, gpu_view_t nll, gpu_view_t x, gpu_view_t targets, uint32_t rows,
                         uint32_t n, lt_err_t *err);
/* lse[r] = log(sum(exp(x[r,:] * scales[r]))) (f32 [rows] scales; 1 / temperature gives a sampling temperature's
 * normaliser). scales may be a buffer that also holds i32 targets for other rows (its bits are read as f32). */
lt_status_t op_logsumexp_scaled(gpu_cmd_t *c, gpu_view_t lse, gpu_view_t x, gpu_view_t scales, uint32_t rows,
                                uint32_t n, lt_err_t *err);
/* out[r] = cos(a[r,:], b[r,:]) (0 when either row is all zeros). */
lt_status_t op_cosine(gpu_cmd_t *c, gpu_view_t out, gpu_view_t a, gpu_view_t b, uint32_t rows, uint32_t n,
                      lt_err_t *err);

/* ---- positions and lookup (engine/ops/ops_attn.c) ---- */

/* RoPE scaling as in config.json's rope_scaling; type 0 none, 1 llama3. */
typedef struct rope_scaling {
  int type;
  float factor, low_freq_factor, high_freq_factor;
  uint32_t original_max_position;
} rope_scaling_t;

/* Fills table[max_pos, rot_dim/2, 2] with (cos, sin) of pos * inv_freq[i], inv_freq[i] = theta^(-2i/rot_dim)
 * adjusted by the scaling; angles computed in double. Caller owns table (max_pos * rot_dim floats). */
void rope_table_build(float *table, uint32_t max_pos, uint32_t rot_dim, double theta, const rope_scaling_t *scaling);

/* Rotates x[rows, n_heads, head_dim] in place: the first rot_dim dims of each head, by the angle of pos[r]
 * (i32 [rows]) from the table built by rope_table_build(). neox: rotate-half pairs (i, i + rot_dim/2) as in
 * Hugging Face; otherwise interleaved pairs (2i, 2i+1) as in GGUF. */
lt_status_t op_rope(gpu_cmd_t *c, gpu_view_t x, gpu_view_t pos, gpu_view_t table, uint32_t rows, uint32_t n_heads,
                    uint32_t head_dim, uint32_t rot_dim, bool neox, uint32_t max_pos, lt_err_t *err);

/* The backward of op_rope, in place on the gradient dx[rows, n_heads, head_dim]: the transpose of each rotation,
 * which is the rotation by minus the angle. */
lt_status_t op_rope_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t pos, gpu_view_t table, uint32_t rows,
                             uint32_t n_heads, uint32_t head_dim, uint32_t rot_dim, bool neox, uint32_t max_pos,
                             lt_err_t *err);

/* y[i,:] = table[ids[i] - row_lo, :] for the ids in [row_lo, row_hi); other rows of y are left untouched, so a
 * table split into pieces (each at most maxStorageBufferRange) is gathered by one call per piece.
 * table is f32 or f16 [row_hi - row_lo, dim]; ids i32 [n_ids]; y f32 [n_ids, dim]. */
lt_status_t op_embed(gpu_cmd_t *c, gpu_view_t y, gpu_view_t table, lt_dtype_t ttype, gpu_view_t ids, uint32_t n_ids,
                     uint32_t dim, uint32_t row_lo, uint32_t row_hi, lt_err_t *err);

/* A zeroth-order perturbation of a weight as it is read: value + scale * z(seed, tensor_id, element index within
 * the piece), z as op_perturb() draws it. */
typedef struct op_zread {
  uint64_t seed;
  uint32_t tensor_id;
  float scale;
} op_zread_t;

/* op_embed() reading the table perturbed by *z (NULL: as op_embed()); f32, f16 and bf16 tables only. */
lt_status_t op_embed_z(gpu_cmd_t *c, gpu_view_t y, gpu_view_t table, lt_dtype_t ttype, gpu_view_t ids, uint32_t n_ids,
                       uint32_t dim, uint32_t row_lo, uint32_t row_hi, const op_zread_t *z, lt_err_t *err);

/* Causal attention for one sequence. q, out: f32 [n_q, n_heads, head_dim]; k, v: f32 caches
 * [>= kv_len, n_kv_heads, head_dim]. Query row t is at position q_pos0 + t and sees keys [0, q_pos0 + t], or with
 * a sliding window W > 0 only the last W of them, (q_pos0 + t - W, q_pos0 + t] (Mistral). Scores are scale * q.k,
 * soft-capped to softcap * tanh(s / softcap) when softcap > 0 (Gemma 2).
 * Head h uses KV head h / (n_heads / n_kv_heads). Long caches are split into key ranges run by separate
 * workgroups (flash-decoding partials merged by a second dispatch), so no invocation loops too long. */
lt_status_t op_attention(gpu_cmd_t *c, gpu_view_t out, gpu_view_t q, gpu_view_t k, gpu_view_t v, uint32_t n_q,
                         uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim, uint32_t q_pos0, uint32_t kv_len,
                         uint32_t window, float scale, float softcap, lt_err_t *err);

/* Whether op_attention's 4-query tiles split the keys of P.V into slices over the invocations a small head leaves
 * without output columns (default on; the same result within f32 rounding). For side-by-side measurements;
 * process-wide. */
void op_attention_key_slices(bool on);

/* Whether op_attention runs few queries per KV head (decode: rows x query heads per KV head up to 32, heads a
 * multiple of 4) through its decode kernel, one workgroup per KV head and key split with the softmax kept in
 * registers (default on), or through the tiled kernel that prefill uses. For tests and side-by-side measurements;
 * process-wide. */
void op_attention_decode_kernel(bool on);

/* Whether op_attention runs the queries of small heads (at most 32 dims, a multiple of 4) that its decode kernel
 * does not take through its row kernel, one invocation per query with the softmax in registers (default on), or
 * through the tiled kernel. For tests and side-by-side measurements; process-wide. */
void op_attention_row_kernel(bool on);

/* y[ids[i], :] += w[i] * x[i, :] for i < n: f32 rows of width d; ids (i32) must be distinct within one call and
 * ids outside [0, y_rows) are skipped (MoE: an expert's outputs weighted back into the residual stream). */
lt_status_t op_scatter_add(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t ids, gpu_view_t w, uint32_t n,
                           uint32_t d, uint32_t y_rows, lt_err_t *err);

/* ---- zeroth-order perturbation (engine/ops/ops_perturb.c) ---- */

/* x[i] += scale * z(seed, tensor_id, i) for i < n, z standard normal from Philox-4x32-10 (see ref_normal()). */
lt_status_t op_perturb(gpu_cmd_t *c, gpu_view_t x, uint32_t n, uint64_t seed, uint32_t tensor_id, float scale,
                       lt_err_t *err);

/* The update of a zeroth-order step in x's own dtype (f32, f16 or bf16): x[i] = round(decay * x[i] + scale *
 * z(seed, tensor_id, i)). f32 rounds to nearest; f16 and bf16 round stochastically to a neighbour (expected value
 * the f32 one) from Philox counter (i/4, 0, tensor_id, 1), so the result is a pure function of the arguments (see
 * ref_perturb_update()). */
lt_status_t op_perturb_update(gpu_cmd_t *c, gpu_view_t x, lt_dtype_t dtype, uint32_t n, uint64_t seed,
                              uint32_t tensor_id, float decay, float scale, lt_err_t *err);

/* A perturbed copy: y[i] = w[i] + scale * z(seed, tensor_id, base + i) for i < n, y f32, w f32, f16 or bf16 (the
 * weights a perturbed forward pass reads, w unchanged). base must be a multiple of 4. */
lt_status_t op_perturb_copy(gpu_cmd_t *c, gpu_view_t y, gpu_view_t w, lt_dtype_t dtype, uint32_t n, uint64_t base,
                            uint64_t seed, uint32_t tensor_id, float scale, lt_err_t *err);

#endif
