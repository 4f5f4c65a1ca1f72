/* Zeroth-order perturbation (MeZO): x += scale * z with z regenerated from (seed, tensor_id), never stored. */
#include <stdio.h>

#include "engine/ops/ops.h"

lt_status_t op_perturb(gpu_cmd_t *c, gpu_view_t x, uint32_t n, uint64_t seed, uint32_t tensor_id, float scale,
                       lt_err_t *err) {
  if (n == 0) return LT_OK;
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_PERTURB, "MODE=0;W_F16=0;W_BF16=0", NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_perturb_t pc = {
      .n = n, .seed_lo = (uint32_t)seed, .seed_hi = (uint32_t)(seed >> 32), .tensor_id = tensor_id, .scale = scale};
  uint64_t bytes[1] = {4ull * n};
  bool w[1] = {true};
  /* One invocation per quad of elements (one Philox call yields four normals). */
  uint32_t gx, gy;
  op_grid_1d(n / 4 + (n % 4 != 0), op_wg(OP_PERTURB), &gx, &gy);
  return op_dispatch(c, p, OP_PERTURB, &x, bytes, w, 1, &pc, gx, gy, 1, err);
}

/* Binds x (and y) and dispatches one invocation per quad of perturb.comp in the given mode. */
static lt_status_t perturb_mode(gpu_cmd_t *c, int mode, gpu_view_t y, gpu_view_t x, lt_dtype_t dtype, uint32_t n,
                                pc_perturb_t *pc, lt_err_t *err) {
  gpu_t *g = gpu_cmd_gpu(c);
  if (dtype != LT_F32 && dtype != LT_F16 && dtype != LT_BF16)
    return lt_fail(err, LT_E_INVALID, "perturb: weights must be f32, f16 or bf16, not %s", lt_dtype_str(dtype));
  if (dtype != LT_F32 && !gpu_caps(g)->storage16)
    return lt_fail(err, LT_E_UNSUPPORTED, "perturb: %s weights need 16-bit storage buffers", lt_dtype_str(dtype));
  if (n == 0) return LT_OK;
  char defines[40];
  snprintf(defines, sizeof defines, "MODE=%d;W_F16=%d;W_BF16=%d", mode, dtype == LT_F16, dtype == LT_BF16);
  op_id_t id = mode == 2 ? OP_PERTURB_CP : OP_PERTURB;
  gpu_pipeline_t *p = op_pipeline(g, id, defines, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc->n = n;
  uint64_t xb = (uint64_t)lt_dtype_size(dtype) * n;
  gpu_view_t v[2] = {mode == 2 ? y : x, x};
  uint64_t bytes[2] = {mode == 2 ? 4ull * n : xb, xb};
  bool w[2] = {true, false};
  uint32_t gx, gy;
  op_grid_1d(n / 4 + (n % 4 != 0), op_wg(id), &gx, &gy);
  return op_dispatch(c, p, id, v, bytes, w, mode == 2 ? 2 : 1, pc, gx, gy, 1, err);
}

lt_status_t op_perturb_update(gpu_cmd_t *c, gpu_view_t x, lt_dtype_t dtype, uint32_t n, uint64_t seed,
                              uint32_t tensor_id, float decay, float scale, lt_err_t *err) {
  pc_perturb_t pc = {.seed_lo = (uint32_t)seed,
                     .seed_hi = (uint32_t)(seed >> 32),
                     .tensor_id = tensor_id,
                     .scale = scale,
                     .decay = decay};
  return perturb_mode(c, 1, (gpu_view_t){0}, x, dtype, n, &pc, err);
}

lt_status_t op_perturb_copy(gpu_cmd_t *c, gpu_view_t y, gpu_view_t w, lt_dtype_t dtype, uint32_t n, uint64_t base,
                            uint64_t seed, uint32_t tensor_id, float scale, lt_err_t *err) {
  if (base % 4 || base + n > UINT32_MAX)
    return lt_fail(err, LT_E_INVALID, "perturb_copy: elements [%llu, +%u) must start on a quad, within 2^32",
                   (unsigned long long)base, n);
  pc_perturb_t pc = {.seed_lo = (uint32_t)seed,
                     .seed_hi = (uint32_t)(seed >> 32),
                     .tensor_id = tensor_id,
                     .scale = scale,
                     .base_q = (uint32_t)(base / 4)};
  return perturb_mode(c, 2, y, w, dtype, n, &pc, err);
}
