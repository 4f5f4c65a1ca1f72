/* Zeroth-order fine-tuning steps (MeZO, LeZO) over the model's parameter registry. */
#include "methods/zo.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ops/ops.h"

struct zo {
  model_t *m;
  zo_opts_t o;
  uint32_t n_layers, max_batch, max_tokens;
  uint32_t n_params;
  uint32_t *tensor_id;      /* [n_params] */
  bool *zr;                 /* [n_params] read perturbed by the forward pass (version 2), else perturbed in place */
  bool *zon;                /* [n_params] the pieces read perturbed in the step at hand */
  model_zread_t zread;      /* what the step's forward passes read (zon, tensor_id) */
  bool *active;             /* [n_layers] scratch for the step at hand */
  model_seq_t **seqs;       /* [max_batch], capacity max_tokens */
  model_item_t *items;      /* [max_batch] */
  int32_t *targets;         /* [max_batch * max_tokens] */
  float *nll;               /* [max_batch * max_tokens] */
  uint32_t *which;          /* [max_batch] the example each forward item scores */
  double *ex_sum, *ex_sum2; /* [max_batch] per-example NLL sums (at +eps and -eps in a step) */
  uint64_t *ex_count, *ex_count2; /* [max_batch] their scored tokens */
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
  uint32_t version = o->version ? o->version : ZO_VERSION;
  if (version != 1 && version != ZO_VERSION) {
    lt_fail(err, LT_E_INVALID, "zeroth-order arithmetic version %u: 1 or %d", version, ZO_VERSION);
    return NULL;
  }
  uint32_t n = model_param_count(m);
  zo_t *z = calloc(1, sizeof *z);
  if (!z) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return NULL;
  }
  z->m = m;
  z->o = *o;
  z->o.version = version;
  z->n_layers = c->n_layers;
  z->max_batch = max_batch;
  z->max_tokens = max_tokens;
  z->n_params = n;
  z->tensor_id = calloc(n ? n : 1, sizeof *z->tensor_id);
  z->zr = calloc(n ? n : 1, sizeof *z->zr);
  z->zon = calloc(n ? n : 1, sizeof *z->zon);
  z->active = calloc(c->n_layers ? c->n_layers : 1, sizeof *z->active);
  z->seqs = calloc(max_batch, sizeof *z->seqs);
  z->items = calloc(max_batch, sizeof *z->items);
  z->targets = malloc((uint64_t)max_batch * max_tokens * sizeof *z->targets);
  z->nll = malloc((uint64_t)max_batch * max_tokens * sizeof *z->nll);
  z->which = calloc(max_batch, sizeof *z->which);
  z->ex_sum = calloc(max_batch, sizeof *z->ex_sum);
  z->ex_sum2 = calloc(max_batch, sizeof *z->ex_sum2);
  z->ex_count = calloc(max_batch, sizeof *z->ex_count);
  z->ex_count2 = calloc(max_batch, sizeof *z->ex_count2);
  if (!z->tensor_id || !z->zr || !z->zon || !z->active || !z->seqs || !z->items || !z->targets || !z->nll ||
      !z->which || !z->ex_sum || !z->ex_sum2 || !z->ex_count || !z->ex_count2) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    zo_destroy(&z);
    return NULL;
  }
  for (uint32_t i = 0; i < n; i++) {
    const model_param_t *p = model_param_at(m, i);
    z->zr[i] = version == ZO_VERSION && model_param_zreadable(m, i);
    if (p->dtype != LT_F32 && !z->zr[i]) {
      if (version == 1)
        lt_fail(err, LT_E_INVALID, "%s is %s on the device: a version 1 run needs f32 weights (load with force_f32)",
                p->name, lt_dtype_str(p->dtype));
      else if (p->dtype == LT_F16 || p->dtype == LT_BF16)
        lt_fail(err, LT_E_INVALID, "%s is %s and is read outside a matmul: it is perturbed in place, which needs f32",
                p->name, lt_dtype_str(p->dtype));
      else
        lt_fail(err, LT_E_INVALID, "%s is %s on the device: tuning needs f32, f16 or bf16 weights", p->name,
                lt_dtype_str(p->dtype));
      zo_destroy(&z);
      return NULL;
    }
    z->tensor_id[i] = zo_tensor_id(p);
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
  if (z->m) model_set_zread(z->m, NULL, NULL);
  free(z->tensor_id);
  free(z->zr), free(z->zon);
  free(z->active);
  free(z->targets);
  free(z->nll);
  free(z->which), free(z->ex_sum), free(z->ex_sum2), free(z->ex_count), free(z->ex_count2);
  free(z);
  *zp = NULL;
}

/* Whether parameter piece p is tuned in a step whose blocks are z->active. */
static bool tuned(const zo_t *z, const model_param_t *p) { return p->layer < 0 || z->active[p->layer]; }

/* What a pass over the step's parameters does, and to which. */
typedef enum pass_kind {
  PASS_ALL,     /* every piece in place (f32): theta += scale * z, after theta *= decay when decay != 1 */
  PASS_INPLACE, /* the same, on the pieces version 2 perturbs in place only */
  PASS_UPDATE,  /* version 2's update of every piece in its own dtype: theta = round(decay theta + scale z) */
} pass_kind_t;

/* One pass over the step's parameters (zo_blocks()); decay applies to non-norm tensors only. */
static lt_status_t pass(zo_t *z, uint64_t step_seed, float decay, float scale, pass_kind_t kind, lt_err_t *err) {
  zo_blocks(z, step_seed, z->active);
  uint32_t todo = 0;
  for (uint32_t i = 0; i < z->n_params; i++) {
    const model_param_t *p = model_param_at(z->m, i);
    if (!tuned(z, p) || (kind == PASS_INPLACE && z->zr[i])) continue;
    if (kind != PASS_UPDATE && p->dtype != LT_F32)
      return lt_fail(err, LT_E_INVALID, "%s is %s: only f32 weights are perturbed in place", p->name,
                     lt_dtype_str(p->dtype));
    todo++;
  }
  if (!todo) return LT_OK;
  gpu_cmd_t *c = gpu_cmd_begin(model_gpu(z->m), err);
  if (!c) return err ? err->code : LT_E_VULKAN;
  lt_status_t st = LT_OK;
  for (uint32_t i = 0; i < z->n_params && st == LT_OK; i++) {
    const model_param_t *p = model_param_at(z->m, i);
    if (!tuned(z, p) || (kind == PASS_INPLACE && z->zr[i])) continue;
    uint32_t n = p->n_rows * p->cols;
    float d = p->is_norm ? 1.0f : decay;
    if (kind == PASS_UPDATE) {
      st = op_perturb_update(c, gv(p->buf), p->dtype, n, step_seed, z->tensor_id[i], d, scale, err);
      continue;
    }
    if (d != 1.0f) st = op_scale(c, gv(p->buf), gv(p->buf), d, n, err);
    if (st == LT_OK) st = op_perturb(c, gv(p->buf), n, step_seed, z->tensor_id[i], scale, err);
  }
  if (st != LT_OK) {
    gpu_cmd_abort(&c);
    return st;
  }
  return gpu_cmd_finish(&c, err);
}

lt_status_t zo_perturb(zo_t *z, uint64_t step_seed, float scale, lt_err_t *err) {
  return pass(z, step_seed, 1.0f, scale, PASS_ALL, err);
}

lt_status_t zo_update(zo_t *z, uint64_t step_seed, float lr, float g, lt_err_t *err) {
  /* Version 2: one pass per tensor in its own dtype, decay and step rounded once. */
  return pass(z, step_seed, 1.0f - lr * z->o.weight_decay, -lr * g, z->o.version == 1 ? PASS_ALL : PASS_UPDATE, err);
}

/* Version 2: the step's forward passes from now on read theta + scale * z (the pieces read perturbed), and the
 * pieces perturbed in place move by delta * z (scale minus where they are now). */
static lt_status_t shift(zo_t *z, uint64_t step_seed, float scale, float delta, lt_err_t *err) {
  zo_blocks(z, step_seed, z->active);
  for (uint32_t i = 0; i < z->n_params; i++) z->zon[i] = z->zr[i] && tuned(z, model_param_at(z->m, i));
  z->zread = (model_zread_t){.seed = step_seed, .scale = scale, .tensor_id = z->tensor_id, .on = z->zon};
  lt_status_t st = model_set_zread(z->m, &z->zread, err);
  return st == LT_OK ? pass(z, step_seed, 1.0f, delta, PASS_INPLACE, err) : st;
}

lt_status_t zo_nll_each(zo_t *z, const zo_example_t *batch, uint32_t n, double *sum, uint64_t *count, lt_err_t *err) {
  if (n > z->max_batch) return lt_fail(err, LT_E_INVALID, "batch of %u over the %u prepared", n, z->max_batch);
  model_item_t *items = z->items;
  uint32_t k = 0, *which = z->which;
  for (uint32_t b = 0; b < n; b++) {
    const zo_example_t *e = &batch[b];
    sum[b] = 0.0, count[b] = 0;
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
    which[k++] = b;
  }
  lt_status_t st = k ? model_forward(z->m, items, k, NULL, err) : LT_OK;
  if (st != LT_OK) return st;
  for (uint32_t i = 0; i < k; i++)
    for (uint32_t t = 0; t < items[i].n_tokens; t++)
      if (items[i].targets[t] >= 0) {
        sum[which[i]] += items[i].result[t];
        count[which[i]]++;
      }
  return LT_OK;
}

/* The batch's NLL sum and count from per-example ones, added in example order: the same total whichever replicas
 * scored which examples. */
static void add_up(const double *sum, const uint64_t *count, uint32_t n, double *total, uint64_t *tokens) {
  *total = 0.0, *tokens = 0;
  for (uint32_t b = 0; b < n; b++) *total += sum[b], *tokens += count[b];
}

lt_status_t zo_nll(zo_t *z, const zo_example_t *batch, uint32_t n, double *sum, uint64_t *count, lt_err_t *err) {
  lt_status_t st = zo_nll_each(z, batch, n, z->ex_sum, z->ex_count, err);
  if (st == LT_OK) add_up(z->ex_sum, z->ex_count, n, sum, count);
  return st;
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

/* What one replica does in a step: its micro-batches (r, r + n_rep, r + 2 n_rep, ... of `micro` examples each)
 * scored at +eps and -eps with the weights restored after (phase 0), or the update with the agreed g (phase 1). */
typedef struct share {
  zo_t *z;
  uint64_t seed;
  float lr, g;
  int phase;
  const zo_example_t *batch;
  uint32_t n, micro, r, n_rep;
  double *sum_plus, *sum_minus; /* [batch], this replica writes [lo, hi) */
  uint64_t *count_plus, *count_minus;
  lt_status_t st;
  lt_err_t err;
} share_t;

/* Scores the replica's micro-batches into sum/count at the weights as they are. */
static lt_status_t share_score(share_t *s, double *sum, uint64_t *count, lt_err_t *err) {
  for (uint64_t lo = (uint64_t)s->r * s->micro; lo < s->n; lo += (uint64_t)s->n_rep * s->micro) {
    uint32_t k = s->n - lo < s->micro ? (uint32_t)(s->n - lo) : s->micro;
    lt_status_t st = zo_nll_each(s->z, s->batch + lo, k, sum + lo, count + lo, err);
    if (st != LT_OK) return st;
  }
  return LT_OK;
}

static void *share_run(void *arg) {
  share_t *s = arg;
  zo_t *z = s->z;
  float eps = z->o.eps;
  lt_err_t *err = &s->err;
  if (s->phase == 1) {
    s->st = zo_update(z, s->seed, s->lr, s->g, err);
    return NULL;
  }
  /* Every replica perturbs and restores its whole copy (the weights stay identical across replicas), even when
   * it has no micro-batch of its own this step. */
  if (z->o.version == 1) {
    if ((s->st = zo_perturb(z, s->seed, eps, err)) != LT_OK) return NULL;
    if ((s->st = share_score(s, s->sum_plus, s->count_plus, err)) != LT_OK) return NULL;
    if ((s->st = zo_perturb(z, s->seed, -2.0f * eps, err)) != LT_OK) return NULL;
    if ((s->st = share_score(s, s->sum_minus, s->count_minus, err)) != LT_OK) return NULL;
    s->st = zo_perturb(z, s->seed, eps, err);
    return NULL;
  }
  if ((s->st = shift(z, s->seed, eps, eps, err)) == LT_OK &&
      (s->st = share_score(s, s->sum_plus, s->count_plus, err)) == LT_OK &&
      (s->st = shift(z, s->seed, -eps, -2.0f * eps, err)) == LT_OK)
    s->st = share_score(s, s->sum_minus, s->count_minus, err);
  model_set_zread(z->m, NULL, NULL);
  /* The in-place pieces go back even after a failure (their restore is part of the step's arithmetic). */
  lt_err_t e2 = {0};
  lt_status_t back = pass(z, s->seed, 1.0f, eps, PASS_INPLACE, &e2);
  if (s->st == LT_OK && back != LT_OK) s->st = back, *err = e2;
  return NULL;
}

/* Runs phase on every replica, each in a thread of its own (replica 0 on the calling thread). */
static lt_status_t run_shares(share_t *sh, uint32_t n_rep, int phase, lt_err_t *err) {
  pthread_t th[ZO_MAX_REPLICAS];
  bool started[ZO_MAX_REPLICAS] = {0};
  for (uint32_t r = 0; r < n_rep; r++) {
    sh[r].phase = phase;
    sh[r].st = LT_OK;
    sh[r].err.code = LT_OK, sh[r].err.msg[0] = '\0';
  }
  for (uint32_t r = 1; r < n_rep; r++) started[r] = pthread_create(&th[r], NULL, share_run, &sh[r]) == 0;
  share_run(&sh[0]);
  for (uint32_t r = 1; r < n_rep; r++) {
    if (started[r])
      pthread_join(th[r], NULL);
    else
      share_run(&sh[r]); /* no thread to be had: run it here */
  }
  for (uint32_t r = 0; r < n_rep; r++)
    if (sh[r].st != LT_OK) {
      *err = sh[r].err;
      if (n_rep > 1) snprintf(err->msg, sizeof err->msg, "replica %u: %.480s", r, sh[r].err.msg);
      return sh[r].st;
    }
  return LT_OK;
}

lt_status_t zo_step_replicas(zo_t *const *z, uint32_t n_rep, uint32_t micro, uint64_t step, float lr,
                             const zo_example_t *batch, uint32_t n, zo_record_t *rec, lt_err_t *err) {
  if (n_rep < 1 || n_rep > ZO_MAX_REPLICAS)
    return lt_fail(err, LT_E_INVALID, "%u replicas: 1 to %d", n_rep, ZO_MAX_REPLICAS);
  if (micro == 0 || micro > n) micro = n ? n : 1;
  if (n > z[0]->max_batch) return lt_fail(err, LT_E_INVALID, "batch of %u over the %u prepared", n, z[0]->max_batch);
  for (uint32_t r = 1; r < n_rep; r++) {
    if (micro > z[r]->max_batch)
      return lt_fail(err, LT_E_INVALID, "micro-batch of %u over replica %u's %u prepared", micro, r, z[r]->max_batch);
    /* The replicas run in threads at once, and a device object serves one thread at a time. */
    for (uint32_t q = 0; q < r; q++)
      if (model_gpu(z[q]->m) == model_gpu(z[r]->m))
        return lt_fail(err, LT_E_INVALID, "replicas %u and %u share a device object; each needs its own", q, r);
  }
  uint64_t seed = zo_step_seed(z[0]->o.seed, step);
  float eps = z[0]->o.eps;
  /* Scratch of replica 0: per-example sums at both perturbations. */
  double *sp = z[0]->ex_sum, *sm = z[0]->ex_sum2;
  uint64_t *cp = z[0]->ex_count, *cm = z[0]->ex_count2;
  share_t sh[ZO_MAX_REPLICAS];
  for (uint32_t r = 0; r < n_rep; r++)
    sh[r] = (share_t){.z = z[r],
                      .seed = seed,
                      .lr = lr,
                      .batch = batch,
                      .n = n,
                      .micro = micro,
                      .r = r,
                      .n_rep = n_rep,
                      .sum_plus = sp,
                      .sum_minus = sm,
                      .count_plus = cp,
                      .count_minus = cm};
  lt_status_t st = run_shares(sh, n_rep, 0, err);
  if (st != LT_OK) return st;
  double lp, lm;
  uint64_t np, nm;
  add_up(sp, cp, n, &lp, &np);
  add_up(sm, cm, n, &lm, &nm);
  if (np == 0 || nm == 0) return lt_fail(err, LT_E_INVALID, "no token of the batch is scored");
  lp /= (double)np, lm /= (double)nm;
  float g = (float)((lp - lm) / (2.0 * (double)eps));
  if (!isfinite(g)) return lt_fail(err, LT_E_INVALID, "step %llu: the loss is not finite", (unsigned long long)step);
  for (uint32_t r = 0; r < n_rep; r++) sh[r].g = g;
  if ((st = run_shares(sh, n_rep, 1, err)) != LT_OK) return st;
  *rec = (zo_record_t){.step = step, .seed = seed, .g = g, .lr = lr, .loss_plus = lp, .loss_minus = lm};
  return LT_OK;
}

lt_status_t zo_step(zo_t *z, uint64_t step, float lr, const zo_example_t *batch, uint32_t n, zo_record_t *rec,
                    lt_err_t *err) {
  return zo_step_replicas(&z, 1, n, step, lr, batch, n, rec, err);
}

lt_status_t zo_replay(zo_t *z, const zo_record_t *rec, lt_err_t *err) {
  float eps = z->o.eps;
  lt_status_t st;
  /* Version 2's forward passes left all but the in-place pieces as they were. */
  pass_kind_t kind = z->o.version == 1 ? PASS_ALL : PASS_INPLACE;
  if ((st = pass(z, rec->seed, 1.0f, eps, kind, err)) != LT_OK) return st;
  if ((st = pass(z, rec->seed, 1.0f, -2.0f * eps, kind, err)) != LT_OK) return st;
  if ((st = pass(z, rec->seed, 1.0f, eps, kind, err)) != LT_OK) return st;
  return zo_update(z, rec->seed, rec->lr, rec->g, err);
}
