/* Elementwise ops: add, mul, scale, SiLU, GELU, SwiGLU, GeGLU, soft-capping, ReLU and its backward, the log-mel
 * clamp. */
#include "engine/ops/ops.h"
#include "engine/ops/ops_audio.h"

static lt_status_t eltwise(gpu_cmd_t *c, uint32_t op, gpu_view_t y, gpu_view_t a, gpu_view_t b, uint32_t n, uint32_t nb,
                           float scale, lt_err_t *err) {
  if (n == 0) return LT_OK;
  bool has_b = op == ELT_ADD || op == ELT_MUL || op == ELT_SWIGLU || op == ELT_GEGLU || op == ELT_RELU_BW ||
               op == ELT_AXPY || op == ELT_SOFTCAP_BW || op == ELT_LOGMEL_CLAMP || op == ELT_GELU_ERF_BW;
  if (has_b && nb == 0) return lt_fail(err, LT_E_INVALID, "elementwise op: b has 0 elements");
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_ELTWISE, NULL, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_eltwise_t pc = {.n = n, .nb = has_b ? nb : 0, .op = op, .scale = scale};
  /* Ops without b bind a in its place, so every binding is valid. */
  gpu_view_t v[3] = {y, a, has_b ? b : a};
  uint64_t bytes[3] = {4ull * n, 4ull * n, has_b ? 4ull * nb : 4ull * n};
  bool w[3] = {true, false, false};
  uint32_t gx, gy;
  op_grid_1d(n, op_wg(OP_ELTWISE), &gx, &gy);
  return op_dispatch(c, p, OP_ELTWISE, v, bytes, w, 3, &pc, gx, gy, 1, err);
}

lt_status_t op_add(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, gpu_view_t b, uint32_t n, uint32_t nb, lt_err_t *err) {
  return eltwise(c, ELT_ADD, y, a, b, n, nb, 0.0f, err);
}

lt_status_t op_mul(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, gpu_view_t b, uint32_t n, uint32_t nb, lt_err_t *err) {
  return eltwise(c, ELT_MUL, y, a, b, n, nb, 0.0f, err);
}

lt_status_t op_scale(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, float s, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_SCALE, y, a, a, n, 0, s, err);
}

lt_status_t op_silu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_SILU, y, a, a, n, 0, 0.0f, err);
}

lt_status_t op_gelu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_GELU, y, a, a, n, 0, 0.0f, err);
}

lt_status_t op_gelu_erf(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_GELU_ERF, y, a, a, n, 0, 0.0f, err);
}

lt_status_t op_gelu_erf_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, gpu_view_t x, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_GELU_ERF_BW, dx, dy, x, n, n, 0.0f, err);
}

lt_status_t op_swiglu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t gate, gpu_view_t up, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_SWIGLU, y, gate, up, n, n, 0.0f, err);
}

lt_status_t op_geglu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t gate, gpu_view_t up, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_GEGLU, y, gate, up, n, n, 0.0f, err);
}

lt_status_t op_softcap(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, float cap, uint32_t n, lt_err_t *err) {
  if (!(cap > 0)) return lt_fail(err, LT_E_INVALID, "softcap: the cap %g is not positive", cap);
  return eltwise(c, ELT_SOFTCAP, y, a, a, n, 0, cap, err);
}

lt_status_t op_softcap_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, gpu_view_t y, float cap, uint32_t n,
                                lt_err_t *err) {
  if (!(cap > 0)) return lt_fail(err, LT_E_INVALID, "softcap backward: the cap %g is not positive", cap);
  return eltwise(c, ELT_SOFTCAP_BW, dx, dy, y, n, n, cap, err);
}

lt_status_t op_scatter_add(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, gpu_view_t ids, gpu_view_t w, uint32_t n,
                           uint32_t d, uint32_t y_rows, lt_err_t *err) {
  if (n == 0 || d == 0) return LT_OK;
  if ((uint64_t)n * d > UINT32_MAX) return lt_fail(err, LT_E_LIMIT, "op_scatter_add: %u x %u rows is too many", n, d);
  gpu_pipeline_t *p = op_pipeline(gpu_cmd_gpu(c), OP_SCATTER, NULL, NULL, 0, err);
  if (!p) return err ? err->code : LT_E_SHADER;
  pc_scatter_t pc = {.n = n, .d = d, .y_rows = y_rows};
  gpu_view_t v[4] = {y, x, ids, w};
  uint64_t bytes[4] = {4ull * y_rows * d, 4ull * n * d, 4ull * n, 4ull * n};
  bool wr[4] = {true, false, false, false};
  uint32_t gx, gy;
  op_grid_1d((uint64_t)n * d, op_wg(OP_SCATTER), &gx, &gy);
  return op_dispatch(c, p, OP_SCATTER, v, bytes, wr, 4, &pc, gx, gy, 1, err);
}

lt_status_t op_relu(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_RELU, y, a, a, n, 0, 0.0f, err);
}

lt_status_t op_relu_backward(gpu_cmd_t *c, gpu_view_t dx, gpu_view_t dy, gpu_view_t x, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_RELU_BW, dx, dy, x, n, n, 0.0f, err);
}

lt_status_t op_axpy(gpu_cmd_t *c, gpu_view_t y, gpu_view_t x, float a, uint32_t n, lt_err_t *err) {
  return eltwise(c, ELT_AXPY, y, y, x, n, n, a, err);
}

lt_status_t op_logmel_clamp(gpu_cmd_t *c, gpu_view_t y, gpu_view_t a, gpu_view_t mx, float range, uint32_t n,
                            lt_err_t *err) {
  return eltwise(c, ELT_LOGMEL_CLAMP, y, a, mx, n, 1, range, err);
}
