/* The op table and the helpers every op wrapper uses. */
#include <stdio.h>
#include <string.h>

#include "engine/ops/ops.h"

typedef struct op_info {
  const char *name, *shader;
  uint32_t n_bindings, push_size, wg, loop_budget;
} op_info_t;

static const op_info_t op_table[OP_COUNT] = {
#define OP(id, shader, nb, pc, wg, loops) [OP_##id] = {#id, shader, nb, (uint32_t)sizeof(pc), wg, loops},
#include "engine/ops/ops.def"
#undef OP
};

gpu_pipeline_t *op_pipeline(gpu_t *g, op_id_t id, const char *defines, const uint32_t *spec, uint32_t n_spec,
                            lt_err_t *err) {
  return op_pipeline_texel(g, id, defines, spec, n_spec, 0, err);
}

gpu_pipeline_t *op_pipeline_texel(gpu_t *g, op_id_t id, const char *defines, const uint32_t *spec, uint32_t n_spec,
                                  uint32_t texel_mask, lt_err_t *err) {
  const op_info_t *o = &op_table[id];
  uint32_t sp[8] = {o->wg};
  if (n_spec > 8) n_spec = 8;
  for (uint32_t i = 0; i < n_spec; i++) sp[i] = spec[i];
  if (sp[0] == 0) sp[0] = o->wg;
  return gpu_pipeline_get_texel(g, o->shader, defines, o->n_bindings, texel_mask, o->push_size, sp, n_spec ? n_spec : 1,
                                err);
}

lt_status_t op_dispatch(gpu_cmd_t *c, gpu_pipeline_t *p, op_id_t id, const gpu_view_t *views, const uint64_t *bytes,
                        const bool *writes, uint32_t n, const void *push, uint32_t gx, uint32_t gy, uint32_t gz,
                        lt_err_t *err) {
  return op_dispatch_texel(c, p, id, views, bytes, writes, NULL, n, push, gx, gy, gz, err);
}

lt_status_t op_dispatch_texel(gpu_cmd_t *c, gpu_pipeline_t *p, op_id_t id, const gpu_view_t *views,
                              const uint64_t *bytes, const bool *writes, const gpu_texel_t *texel, uint32_t n,
                              const void *push, uint32_t gx, uint32_t gy, uint32_t gz, lt_err_t *err) {
  const op_info_t *o = &op_table[id];
  gpu_bind_t b[16];
  if (n > 16 || n != o->n_bindings)
    return lt_fail(err, LT_E_INVALID, "op %s: %u views for %u bindings", o->name, n, o->n_bindings);
  for (uint32_t i = 0; i < n; i++) {
    if (!views[i].buf) return lt_fail(err, LT_E_INVALID, "op %s: binding %u has no buffer", o->name, i);
    uint64_t size = gpu_buf_size(views[i].buf);
    uint64_t want = bytes[i] ? bytes[i] : 4;
    if (views[i].off > size || want > size - views[i].off)
      return lt_fail(err, LT_E_INVALID, "op %s: binding %u needs %llu bytes at offset %llu of a %llu-byte buffer",
                     o->name, i, (unsigned long long)want, (unsigned long long)views[i].off, (unsigned long long)size);
    /* Bind exactly what the op touches, rounded up to 4 bytes but never past the buffer. */
    uint64_t range = (want + 3) & ~3ull;
    if (range > size - views[i].off) range = size - views[i].off;
    gpu_texel_t t = texel ? texel[i] : GPU_TEXEL_NONE;
    /* A texel binding covers whole texels of what the op reads (its bytes are a multiple of the texel). */
    if (t) range = want;
    b[i] = (gpu_bind_t){views[i].buf, views[i].off, range, writes[i], t};
  }
  return gpu_cmd_dispatch(c, p, b, n, push, o->push_size, gx, gy, gz, err);
}

static bool g_texel = true;

void op_texel_reads(bool on) { g_texel = on; }

bool op_texel_reads_on(const gpu_caps_t *caps) { return g_texel && caps->kind == GPU_KIND_CPU; }

gpu_texel_t op_texel_bind(const gpu_caps_t *caps, gpu_view_t v, gpu_texel_t t, uint64_t need, uint64_t *span) {
  *span = need;
  uint64_t ts = gpu_texel_size(t);
  if (!op_texel_reads_on(caps) || !gpu_texel_readable(caps, t) || !v.buf || need == 0 || need % ts ||
      need / ts > caps->max_texels || v.off % caps->min_texel_align || v.off > gpu_buf_size(v.buf))
    return GPU_TEXEL_NONE;
  uint64_t whole = (gpu_buf_size(v.buf) - v.off) / ts * ts;
  if (whole / ts > caps->max_texels) whole = caps->max_texels * ts;
  if (whole > need) *span = whole;
  return t;
}

void op_grid_1d(uint64_t n, uint32_t wg, uint32_t *gx, uint32_t *gy) {
  uint64_t groups = (n + wg - 1) / wg;
  if (groups == 0) groups = 1;
  *gx = (uint32_t)(groups < 65535 ? groups : 65535);
  *gy = (uint32_t)((groups + *gx - 1) / *gx);
}

uint32_t op_wg(op_id_t id) { return op_table[id].wg; }

uint32_t op_loop_budget(op_id_t id) { return op_table[id].loop_budget; }

lt_status_t op_dispatch_k(gpu_cmd_t *c, gpu_pipeline_t *p, op_id_t id, const gpu_view_t *views, const uint64_t *bytes,
                          const bool *writes, uint32_t n, void *pc, op_loop_cost_t cost, bool accumulate, uint32_t gx,
                          uint32_t gy, uint32_t gz, lt_err_t *err) {
  return op_dispatch_k_texel(c, p, id, views, bytes, writes, NULL, n, pc, cost, accumulate, gx, gy, gz, err);
}

lt_status_t op_dispatch_k_texel(gpu_cmd_t *c, gpu_pipeline_t *p, op_id_t id, const gpu_view_t *views,
                                const uint64_t *bytes, const bool *writes, const gpu_texel_t *texel, uint32_t n,
                                void *pc, op_loop_cost_t cost, bool accumulate, uint32_t gx, uint32_t gy, uint32_t gz,
                                lt_err_t *err) {
  const op_info_t *o = &op_table[id];
  /* Whole units per chunk, so every chunk but the last covers whole K-groups (and K tiles). */
  uint32_t units = o->loop_budget > cost.fixed ? (o->loop_budget - cost.fixed) / cost.per_unit : 0;
  if (units == 0)
    return lt_fail(err, LT_E_LIMIT, "op %s: an invocation loops %u + %u times per K step, past its budget of %u",
                   o->name, cost.fixed, cost.per_unit, o->loop_budget);
  uint32_t k_chunk = units * cost.k_per_unit;
  /* The head is copied in and out so the op's own struct is only ever written through bytes. */
  pc_k_head_t h;
  memcpy(&h, pc, sizeof h);
  uint32_t K = h.K, k_base = 0;
  do {
    h.k_base = k_base;
    h.k_len = K - k_base < k_chunk ? K - k_base : k_chunk;
    h.accumulate = accumulate || k_base > 0;
    memcpy(pc, &h, sizeof h);
    lt_status_t st = op_dispatch_texel(c, p, id, views, bytes, writes, texel, n, pc, gx, gy, gz, err);
    if (st != LT_OK) return st;
    k_base += h.k_len;
  } while (k_base < K);
  return LT_OK;
}
