/* Compute ops on the GPU. Each records dispatches into a gpu_cmd_t; results are ready after gpu_cmd_finish().
 * Conventions (llm.c style): outputs first, then inputs, then shape ints. Views are byte offsets into buffers
 * and must be aligned to caps.min_storage_align. All math accumulates in f32. Each op has a CPU reference in
 * engine/ref.h computing the same thing naively. */
#ifndef LATHE_OPS_H
#define LATHE_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/gpu.h"
#include "pc.h"

typedef enum lt_dtype { LT_F32 = 0, LT_F16 = 1, LT_BF16 = 2, LT_I32 = 3 } lt_dtype_t;

/* Bytes per element of a dtype. */
uint32_t lt_dtype_size(lt_dtype_t t);

/* Returns the dtype's name ("f32", ...); static string. */
const char *lt_dtype_str(lt_dtype_t t);

/* A range of a buffer starting at byte offset off (the op decides how many bytes it touches). */
typedef struct gpu_view {
  gpu_buf_t *buf;
  uint64_t off;
} gpu_view_t;

/* Views a whole buffer from its start. */
static inline gpu_view_t gv(gpu_buf_t *b) { return (gpu_view_t){b, 0}; }

typedef enum op_id {
#define OP(id, shader, nb, pc, wg) OP_##id,
#include "engine/ops.def"
#undef OP
  OP_COUNT
} op_id_t;

/* Returns the pipeline of an op variant (defines "A=1;B=2" select the variant; spec[0] is the workgroup size,
 * 0 meaning the table's default). The pipeline is owned by the gpu. NULL with err on failure. */
gpu_pipeline_t *op_pipeline(gpu_t *g, op_id_t id, const char *defines, const uint32_t *spec, uint32_t n_spec,
                            lt_err_t *err);

/* Records one dispatch of op `id` binding n views with the given byte extents; writes[i] marks outputs. */
lt_status_t op_dispatch(gpu_cmd_t *c, gpu_pipeline_t *p, op_id_t id, const gpu_view_t *views, const uint64_t *bytes,
                        const bool *writes, uint32_t n, const void *push, uint32_t gx, uint32_t gy, uint32_t gz,
                        lt_err_t *err);

/* Splits n invocations of workgroup size wg into a 2D grid gx*gy (gx <= 65535); shaders use flat_index(). */
void op_grid_1d(uint64_t n, uint32_t wg, uint32_t *gx, uint32_t *gy);

/* ---- elementwise (engine/ops_eltwise.c) ---- */

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
/* y[i] = silu(gate[i]) * up[i] (f32). */
lt_status_t op_swiglu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t gate, gpu_view_t up, uint32_t n, lt_err_t *err);

#endif
