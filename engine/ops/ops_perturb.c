/* Zeroth-order perturbation (MeZO): x += scale * z with z regenerated from (seed, tensor_id), never stored. */
#include "engine/ops/ops.h"

lt_status_t op_perturb(gpu_cmd_t *c, gpu_view_t x, uint32_t n, uint64_t seed, uint32_t tensor_id, float scale,
                       lt_err_t *err) {
  if (n == 0) return LT_OK;
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_PERTURB, NULL, NULL, 0, err);
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
