/* Zeroth-order fine-tuning steps (MeZO, LeZO) over the model's parameter registry. */
#include "methods/zo.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ops.h"

struct zo {
  model_t *m;
  zo_opts_t o;
  uint32_t n_layers, max_batch, max_tokens;
  uint32_t n_params;
  uint32_t *tensor_id; /* [n_params] */
  bool *active;        /* [n_layers] scratch for the step at hand */
  model_seq_t **seqs;  /* [max_batch], capacity max_tokens */
  model_item_t *items; /* [max_batch] */
  int32_t *targets;    /* [max_batch * max_tokens] */
  float *nll;          /* [max_batch * max_tokens] */
};

/* splitmix64's finaliser: a bijective 64-bit mix. */
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* murmur3's 32-bit finaliser. */
static uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  return h ^ (h >> 16);
}

uint64_t zo_step_seed(uint64_t run_seed, uint64_t step) {
  return mix64(mix64(run_seed) + 0x9e3779b97f4a7c15ull * (step + 1));
}

/* A keyed bijection of [0, n): a 4-round Feistel network on the smallest power of four >= n, walked until it
 * lands inside [0, n) (cycle walking keeps it a bijection). */
static uint64_t permute(uint64_t i, uint64_t n, uint64_t key) {
  unsigned bits = 2;
  while ((1ull << bits) < n) bits += 2;
  unsigned half = bits / 2;
  uint64_t mask = (1ull << half) - 1;
  do {
    uint64_t l = i >> half, r = i & mask;
    for (uint64_t round = 0; round < 4; round++) {
      uint64_t t = l ^ (mix64(key ^ (round << 56) ^ r) & mask);
      l = r;
      r = t;
    }
    i = (l << half) | r;
  } while (i >= n);
  return i;
}

void zo_sample(uint64_t run_seed, uint64_t step, uint32_t batch, uint32_t n_examples, uint32_t *idx) {
  for (uint32_t j = 0; j < batch; j++) {
    uint64_t p = step * batch + j, epoch = p / n_examples;
    idx[j] = (uint32_t)permute(p % n_examples, n_examples, mix64(run_seed ^ 0x5a4f2d6261746368ull) + epoch);
  }
}

uint32_t zo_tensor_id(const model_param_t *p) {
  uint32_t h = 2166136261u; /* FNV-1a over the name */
  for (const char *c = p->name; *c; c++) h = (h ^ (uint8_t)*c) * 16777619u;
  return mix32(h ^ mix32(p->row0 + 0x9e3779b9u));
}

void zo_blocks(const zo_t *z, uint64_t step_seed, bool *active) {
  uint32_t L = z->n_layers;
  for (uint32_t l = 0; l < L; l++) active[l] = true;
  if (z->o.method != ZO_LEZO) return;
  /* drop_layers distinct blocks drawn uniformly from the step seed (a draw that hits a block already left out is
   * drawn again). */
  uint64_t s = step_seed ^ 0x4c655a4f4c655a4full;
  for (uint32_t i = 0; i < z->o.drop_layers; i++) {
    uint32_t j;
    do {
      s += 0x9e3779b97f4a7c15ull;
      j = (uint32_t)(mix64(s) % L);
    } while (!active[j]);
    active[j] = false;
  }
}

zo_t *zo_new(model_t *m, const zo_opts_t *o, uint32_t max_batch, uint32_t max_tokens, lt_err_t *err) {
  const model_config_t *c = model_config(m);
  if (!(o->eps > 0.0f) || !isfinite(o->eps)) {
    lt_fail(err, LT_E_INVALID, "eps must be a positive number");
    return NULL;
  }
  if (!isfinite(o->weight_decay) || o->weight_decay < 0.0f) {
    lt_fail(err, LT_E_INVALID, "weight decay must be a non-negative number");
    return NULL;
  }
  if (o->method == ZO_LEZO ? o->drop_layers >= c->n_layers : o->drop_layers != 0) {
    lt_fail(err, LT_E_INVALID, "drop_layers %u: LeZO leaves out fewer than the model's %u blocks, MeZO none",
            o->drop_layers, c->n_layers);
    return NULL;
  }
  if (max_batch == 0 || max_tokens < 2) {
    lt_fail(err, LT_E_INVALID, "a batch needs at least one example of at least two tokens");
    return NULL;
  }
  uint32_t n = model_param_count(m);
  for (uint32_t i = 0; i < n; i++)
    if (model_param_at(m, i)->dtype != LT_F32) {
      lt_fail(err, LT_E_INVALID, "%s is %s on the device: tuning needs f32 weights (load with force_f32)",
              model_param_at(m, i)->name, lt_dtype_str(model_param_at(m, i)->dtype));
      return NULL;
    }
  zo_t *z = calloc(1, sizeof *z);
  if (!z) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  z->m = m;
  z->o = *o;
  z->n_layers = c->n_layers;
  z->max_batch = max_batch;
  z->max_tokens = max_tokens;
  z->n_params = n;
  z->tensor_id = calloc(n ? n : 1, sizeof *z->tensor_id);
  z->active = calloc(c->n_layers ? c->n_layers : 1, sizeof *z->active);
  z->seqs = calloc(max_batch, sizeof *z->seqs);
  z->items = calloc(max_batch, sizeof *z->items);
  z->targets = malloc((uint64_t)max_batch * max_tokens * sizeof *z->targets);
  z->nll = malloc((uint64_t)max_batch * max_tokens * sizeof *z->nll);
  if (!z->tensor_id || !z->active || !z->seqs || !z->items || !z->targets || !z->nll) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    zo_destroy(&z);
    return NULL;
  }
  for (uint32_t i = 0; i < n; i++) {
    z->tensor_id[i] = zo_tensor_id(model_param_at(m, i));
    /* Two pieces with one id would get the same direction: refuse rather than tune a correlated subspace. */
    for (uint32_t j = 0; j < i; j++)
      if (z->tensor_id[j] == z->tensor_id[i]) {
        lt_fail(err, LT_E_INVALID, "tensor ids of %s and %s collide", model_param_at(m, j)->name,
                model_param_at(m, i)->name);
        zo_destroy(&z);
        return NULL;
      }
  }
  for (uint32_t b = 0; b < max_batch; b++)
    if (!(z->seqs[b] = model_seq_new(m, max_tokens, err))) {
      zo_destroy(&z);
      return NULL;
    }
  return z;
}

void zo_destroy(zo_t **zp) {
  if (!zp || !*zp) return;
  zo_t *z = *zp;
  for (uint32_t b = 0; z->seqs && b < z->max_batch; b++) model_seq_destroy(&z->seqs[b]);
  free(z->seqs);
  free(z->items);
  free(z->tensor_id);
  free(z->active);
  free(z->targets);
  free(z->nll);
  free(z);
  *zp = NULL;
}

/* Whether parameter piece p is tuned in a step whose blocks are z->active. */
static bool tuned(const zo_t *z, const model_param_t *p) { return p->layer < 0 || z->active[p->layer]; }

/* One pass over the step's parameters: theta += scale * z, preceded by theta *= decay on non-norm tensors when
 * decay != 1. */
static lt_status_t pass(zo_t *z, uint64_t step_seed, float decay, float scale, lt_err_t *err) {
  zo_blocks(z, step_seed, z->active);
  gpu_cmd_t *c = gpu_cmd_begin(model_gpu(z->m), err);
  if (!c) return err ? err->code : LT_E_VULKAN;
  lt_status_t st = LT_OK;
  for (uint32_t i = 0; i < z->n_params && st == LT_OK; i++) {
    const model_param_t *p = model_param_at(z->m, i);
    if (!tuned(z, p)) continue;
    uint32_t n = p->n_rows * p->cols;
    if (decay != 1.0f && !p->is_norm) st = op_scale(c, gv(p->buf), gv(p->buf), decay, n, err);
    if (st == LT_OK) st = op_perturb(c, gv(p->buf), n, step_seed, z->tensor_id[i], scale, err);
  }
  if (st != LT_OK) {
    gpu_cmd_abort(&c);
    return st;
  }
  return gpu_cmd_finish(&c, err);
}

lt_status_t zo_perturb(zo_t *z, uint64_t step_seed, float scale, lt_err_t *err) {
  return pass(z, step_seed, 1.0f, scale, err);
}

lt_status_t zo_update(zo_t *z, uint64_t step_seed, float lr, float g, lt_err_t *err) {
  return pass(z, step_seed, 1.0f - lr * z->o.weight_decay, -lr * g, err);
}

lt_status_t zo_nll(zo_t *z, const zo_example_t *batch, uint32_t n, double *sum, uint64_t *count, lt_err_t *err) {
  if (n > z->max_batch) return lt_fail(err, LT_E_INVALID, "batch of %u over the %u prepared", n, z->max_batch);
  model_item_t *items = z->items;
  uint32_t k = 0;
  for (uint32_t b = 0; b < n; b++) {
    const zo_example_t *e = &batch[b];
    uint32_t len = e->n < z->max_tokens ? e->n : z->max_tokens;
    if (len < 2 || e->first >= len - 1) continue; /* nothing of it is scored within max_tokens */
    int32_t *tg = z->targets + (uint64_t)k * z->max_tokens;
    /* Positions before `first` predict prompt tokens: a negative target gives NaN there, never read. */
    for (uint32_t t = 0; t + 1 < len; t++) tg[t] = t >= e->first ? e->ids[t + 1] : -1;
    model_seq_truncate(z->seqs[k], 0);
    items[k] = (model_item_t){.seq = z->seqs[k],
                              .tokens = e->ids,
                              .n_tokens = len - 1,
                              .out = MODEL_OUT_NLL,
                              .result = z->nll + (uint64_t)k * z->max_tokens,
                              .targets = tg};
    k++;
  }
  lt_status_t st = k ? model_forward(z->m, items, k, NULL, err) : LT_OK;
  if (st != LT_OK) return st;
  *sum = 0.0;
  *count = 0;
  for (uint32_t i = 0; i < k; i++)
    for (uint32_t t = 0; t < items[i].n_tokens; t++)
      if (items[i].targets[t] >= 0) {
        *sum += items[i].result[t];
        (*count)++;
      }
  return LT_OK;
}

lt_status_t zo_loss(zo_t *z, const zo_example_t *batch, uint32_t n, double *loss, lt_err_t *err) {
  double sum;
  uint64_t count;
  lt_status_t st = zo_nll(z, batch, n, &sum, &count, err);
  if (st != LT_OK) return st;
  if (count == 0) return lt_fail(err, LT_E_INVALID, "no token of the batch is scored");
  *loss = sum / (double)count;
  return LT_OK;
}

lt_status_t zo_step(zo_t *z, uint64_t step, float lr, const zo_example_t *batch, uint32_t n, zo_record_t *rec,
                    lt_err_t *err) {
  uint64_t seed = zo_step_seed(z->o.seed, step);
  float eps = z->o.eps;
  double lp = 0.0, lm = 0.0;
  lt_status_t st;
  if ((st = zo_perturb(z, seed, eps, err)) != LT_OK) return st;
  if ((st = zo_loss(z, batch, n, &lp, err)) != LT_OK) return st;
  if ((st = zo_perturb(z, seed, -2.0f * eps, err)) != LT_OK) return st;
  if ((st = zo_loss(z, batch, n, &lm, err)) != LT_OK) return st;
  if ((st = zo_perturb(z, seed, eps, err)) != LT_OK) return st;
  float g = (float)((lp - lm) / (2.0 * (double)eps));
  if (!isfinite(g)) return lt_fail(err, LT_E_INVALID, "step %llu: the loss is not finite", (unsigned long long)step);
  if ((st = zo_update(z, seed, lr, g, err)) != LT_OK) return st;
  *rec = (zo_record_t){.step = step, .seed = seed, .g = g, .lr = lr, .loss_plus = lp, .loss_minus = lm};
  return LT_OK;
}

lt_status_t zo_replay(zo_t *z, const zo_record_t *rec, lt_err_t *err) {
  float eps = z->o.eps;
  lt_status_t st;
  if ((st = zo_perturb(z, rec->seed, eps, err)) != LT_OK) return st;
  if ((st = zo_perturb(z, rec->seed, -2.0f * eps, err)) != LT_OK) return st;
  if ((st = zo_perturb(z, rec->seed, eps, err)) != LT_OK) return st;
  return zo_update(z, rec->seed, rec->lr, rec->g, err);
}
