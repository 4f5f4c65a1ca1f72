/* First-order tuning: AdamW, clipping, schedules, gradient accumulation and SAM over a train_t (methods/tune.h). */
#include "methods/tune.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ops.h"
#include "engine/ops/ops_grad.h"

struct tuner {
  train_t *t;
  gpu_t *g;
  tune_opts_t o;
  uint32_t steps;
  gpu_buf_t **m, **v; /* AdamW moments, one pair per trainable tensor */
  gpu_buf_t **e;      /* SAM: the perturbation added to each tensor (NULL without SAM) */
  gpu_buf_t *sq;      /* per-tensor sums of squares of the gradients, one every sq_stride floats */
  uint32_t sq_stride; /* floats per slot: each slot's view must start at a bindable offset */
  uint32_t n;
};

static uint64_t tensor_n(const train_tensor_t *x) { return (uint64_t)x->rows * x->cols; }

tuner_t *tuner_new(train_t *t, const tune_opts_t *o, lt_err_t *err) {
  tuner_t *u = calloc(1, sizeof *u);
  if (!u) return lt_fail(err, LT_E_NOMEM, "out of memory"), NULL;
  u->t = t, u->g = model_gpu(train_model(t)), u->o = *o, u->n = train_tensor_count(t);
  if (u->o.beta1 == 0) u->o.beta1 = 0.9;
  if (u->o.beta2 == 0) u->o.beta2 = 0.999;
  if (u->o.eps == 0) u->o.eps = 1e-8;
  lt_status_t st = LT_OK;
  u->m = calloc(u->n ? u->n : 1, sizeof *u->m);
  u->v = calloc(u->n ? u->n : 1, sizeof *u->v);
  u->e = o->sam_rho > 0 ? calloc(u->n ? u->n : 1, sizeof *u->e) : NULL;
  if (!u->m || !u->v || (o->sam_rho > 0 && !u->e)) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t i = 0; i < u->n && st == LT_OK; i++) {
    uint64_t bytes = tensor_n(train_tensor_at(t, i)) * 4;
    gpu_buf_t **bufs[3] = {&u->m[i], &u->v[i], u->e ? &u->e[i] : NULL};
    for (int k = 0; k < 3 && st == LT_OK; k++) {
      if (!bufs[k]) continue;
      if (!(*bufs[k] = gpu_buf_new(u->g, bytes, err)))
        st = err ? err->code : LT_E_DEVICE_OOM;
      else
        st = gpu_buf_zero(*bufs[k], 0, bytes, err);
    }
  }
  u->sq_stride = (uint32_t)(gpu_caps(u->g)->min_storage_align / 4 ? gpu_caps(u->g)->min_storage_align / 4 : 1);
  if (st == LT_OK && !(u->sq = gpu_buf_new(u->g, (uint64_t)(u->n ? u->n : 1) * u->sq_stride * 4, err)))
    st = err ? err->code : LT_E_DEVICE_OOM;
  if (st != LT_OK) tuner_destroy(&u);
  return u;
}

void tuner_destroy(tuner_t **up) {
  if (!up || !*up) return;
  tuner_t *u = *up;
  for (uint32_t i = 0; i < u->n; i++) {
    if (u->m) gpu_buf_destroy(&u->m[i]);
    if (u->v) gpu_buf_destroy(&u->v[i]);
    if (u->e) gpu_buf_destroy(&u->e[i]);
  }
  free(u->m), free(u->v), free(u->e);
  gpu_buf_destroy(&u->sq);
  free(u);
  *up = NULL;
}

double tune_lr_at(const tune_opts_t *o, uint32_t s) {
  if (o->warmup && s < o->warmup) return o->lr * (double)(s + 1) / (double)o->warmup;
  if (o->schedule == TUNE_CONSTANT || o->steps <= o->warmup) return o->lr;
  double p = (double)(s - o->warmup) / (double)(o->steps - o->warmup); /* 0 at the end of warmup, -> 1 */
  if (p > 1) p = 1;
  if (o->schedule == TUNE_LINEAR) return o->lr * (1.0 - p);
  return o->lr * 0.5 * (1.0 + cos(M_PI * p));
}

/* The global norm of the gradients: per-tensor sums of squares on the device, summed in double on the host in
 * tensor order (deterministic). */
static lt_status_t grad_norm(tuner_t *u, double *norm, lt_err_t *err) {
  gpu_cmd_t *c = gpu_cmd_begin(u->g, err);
  if (!c) return err ? err->code : LT_E_VULKAN;
  lt_status_t st = LT_OK;
  for (uint32_t i = 0; i < u->n && st == LT_OK; i++) {
    const train_tensor_t *x = train_tensor_at(u->t, i);
    gpu_view_t out = {u->sq, (uint64_t)i * u->sq_stride * 4};
    st = op_sumsq(c, out, gv(x->grad), tensor_n(x), err);
  }
  if (st == LT_OK) st = gpu_cmd_finish(&c, err);
  gpu_cmd_abort(&c);
  float *sq = st == LT_OK ? malloc((uint64_t)(u->n ? u->n : 1) * u->sq_stride * sizeof *sq) : NULL;
  if (st == LT_OK && !sq) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK) st = gpu_download(u->sq, 0, sq, (uint64_t)u->n * u->sq_stride * 4, err);
  double s = 0;
  for (uint32_t i = 0; st == LT_OK && i < u->n; i++) s += sq[(uint64_t)i * u->sq_stride];
  free(sq);
  *norm = sqrt(s);
  return st;
}

/* Zeroes the gradients, then accumulates the mean gradient of the micro-batches; returns their mean loss and, when
 * info is not NULL, the means of the distillation counters. */
static lt_status_t gradient(tuner_t *u, const tune_batch_t *mb, uint32_t n, double *loss, tune_step_info_t *info,
                            lt_err_t *err) {
  lt_status_t st = train_zero_grad(u->t, err);
  double sum = 0;
  if (info) *info = (tune_step_info_t){0};
  for (uint32_t i = 0; i < n && st == LT_OK; i++) {
    double l = 0;
    if (mb[i].pair_weights)
      st = train_grad_pairs(u->t, mb[i].ids, mb[i].mask, mb[i].pair_weights, mb[i].ref_logp, mb[i].n_seq / 2, mb[i].T,
                            1.0f / (float)n, &l, err);
    else
      st =
          train_grad_labeled(u->t, mb[i].ids, mb[i].labels, mb[i].mask, mb[i].n_seq, mb[i].T, 1.0f / (float)n, &l, err);
    sum += l;
    const train_stats_t *ts = train_stats(u->t);
    if (info) {
      info->ce += ts->ce / n, info->teacher_ce += ts->teacher_ce / n;
      info->atkd_easy += ts->atkd_easy, info->atkd_hard += ts->atkd_hard;
      if (mb[i].pair_weights) info->dpo_margin += ts->dpo_margin / n, info->dpo_accuracy += ts->dpo_accuracy / n;
    }
  }
  *loss = sum / n;
  return st;
}

/* SAM's ascent: e = rho * g / ||g|| kept per tensor, theta += e (sign +1) or theta -= e (sign -1). */
static lt_status_t sam_move(tuner_t *u, double gnorm, int sign, lt_err_t *err) {
  gpu_cmd_t *c = gpu_cmd_begin(u->g, err);
  if (!c) return err ? err->code : LT_E_VULKAN;
  lt_status_t st = LT_OK;
  float s = gnorm > 0 ? (float)(u->o.sam_rho / gnorm) : 0.0f;
  for (uint32_t i = 0; i < u->n && st == LT_OK; i++) {
    const train_tensor_t *x = train_tensor_at(u->t, i);
    uint32_t n = (uint32_t)tensor_n(x);
    if (sign > 0) st = op_scale(c, gv(u->e[i]), gv(x->grad), s, n, err);
    if (st == LT_OK) st = op_axpy(c, gv(x->value), gv(u->e[i]), (float)sign, n, err);
  }
  if (st == LT_OK) st = gpu_cmd_finish(&c, err);
  gpu_cmd_abort(&c);
  return st;
}

lt_status_t tuner_step(tuner_t *u, const tune_batch_t *mb, uint32_t n, tune_step_info_t *info, lt_err_t *err) {
  if (n == 0) return lt_fail(err, LT_E_INVALID, "a step needs at least one micro-batch");
  double loss = 0, gnorm = 0;
  tune_step_info_t dist = {0};
  lt_status_t st = gradient(u, mb, n, &loss, &dist, err);
  if (st == LT_OK) st = grad_norm(u, &gnorm, err);
  if (st != LT_OK) return st;
  if (!isfinite(loss) || !isfinite(gnorm))
    return lt_fail(err, LT_E_NUMERIC, "step %u: the loss is %g and the gradient norm %g (not finite)", u->steps + 1,
                   loss, gnorm);
  if (u->o.sam_rho > 0) {
    /* Gradient at theta + e, same micro-batches; then back to theta. */
    double loss_e = 0;
    st = sam_move(u, gnorm, +1, err);
    if (st == LT_OK) st = gradient(u, mb, n, &loss_e, NULL, err);
    lt_status_t back = sam_move(u, gnorm, -1, err);
    if (st == LT_OK) st = back;
    if (st == LT_OK) st = grad_norm(u, &gnorm, err);
    if (st != LT_OK) return st;
    if (!isfinite(gnorm))
      return lt_fail(err, LT_E_NUMERIC, "step %u: the SAM gradient norm is %g (not finite)", u->steps + 1, gnorm);
  }
  double lr = tune_lr_at(&u->o, u->steps);
  float gscale = u->o.clip > 0 && gnorm > u->o.clip ? (float)(u->o.clip / gnorm) : 1.0f;
  uint32_t step = u->steps + 1;
  gpu_cmd_t *c = gpu_cmd_begin(u->g, err);
  if (!c) return err ? err->code : LT_E_VULKAN;
  for (uint32_t i = 0; i < u->n && st == LT_OK; i++) {
    const train_tensor_t *x = train_tensor_at(u->t, i);
    adamw_params_t a = {.lr = (float)lr,
                        .beta1 = (float)u->o.beta1,
                        .beta2 = (float)u->o.beta2,
                        .eps = (float)u->o.eps,
                        .weight_decay = x->decay ? (float)u->o.weight_decay : 0.0f,
                        .grad_scale = gscale,
                        .step = step};
    st = op_adamw(c, gv(x->value), gv(x->grad), gv(u->m[i]), gv(u->v[i]), (uint32_t)tensor_n(x), &a, err);
  }
  if (st == LT_OK) st = gpu_cmd_finish(&c, err);
  gpu_cmd_abort(&c);
  if (st != LT_OK) return st;
  u->steps = step;
  if (info) {
    *info = dist;
    info->loss = loss, info->grad_norm = gnorm, info->lr = lr;
  }
  return LT_OK;
}

lt_status_t tuner_state_save(tuner_t *u, uint32_t *steps, float **values, float **m, float **v, lt_err_t *err) {
  lt_status_t st = LT_OK;
  *steps = u->steps;
  for (uint32_t i = 0; i < u->n && st == LT_OK; i++) {
    const train_tensor_t *x = train_tensor_at(u->t, i);
    uint64_t bytes = tensor_n(x) * 4;
    st = gpu_download(x->value, 0, values[i], bytes, err);
    if (st == LT_OK) st = gpu_download(u->m[i], 0, m[i], bytes, err);
    if (st == LT_OK) st = gpu_download(u->v[i], 0, v[i], bytes, err);
  }
  return st;
}

lt_status_t tuner_state_load(tuner_t *u, uint32_t steps, float *const *values, float *const *m, float *const *v,
                             lt_err_t *err) {
  lt_status_t st = LT_OK;
  for (uint32_t i = 0; i < u->n && st == LT_OK; i++) {
    const train_tensor_t *x = train_tensor_at(u->t, i);
    uint64_t bytes = tensor_n(x) * 4;
    st = gpu_upload(x->value, 0, values[i], bytes, err);
    if (st == LT_OK) st = gpu_upload(u->m[i], 0, m[i], bytes, err);
    if (st == LT_OK) st = gpu_upload(u->v[i], 0, v[i], bytes, err);
  }
  if (st == LT_OK) u->steps = steps;
  return st;
}
