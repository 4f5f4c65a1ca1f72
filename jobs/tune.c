/* The `tune` kind: first-order fine-tuning (engine/model/train.h, methods/tune.h) of a model on a JSONL file, with
 * held-out evals, the forgetting measure on a general set, checkpoints, resumption and a loss curve; and the
 * `distill` kind, the same run with the loss taken against a frozen teacher (train_set_distill; KID's rewriting
 * from methods/distill.h): a teacher state that runs forward only and its held-out loss as the reference.
 * tune --objective dpo trains on preference pairs (methods/prefs.h) against the frozen starting weights: their
 * log-probabilities computed once per micro-batch, the evals on held-out pairs (accuracy, reward margin, KL).
 *
 * Files: <output>/ gets the result: a Hugging Face folder (full), a PEFT adapter (lora: adapter_config.json and
 * adapter_model.safetensors; with merge also <output>/merged, the merged model) or an adapter folder (adapter:
 * adapter_config.json and adapter.safetensors); <output>/checkpoint-<step>/train-state.safetensors holds the
 * trainable tensors and AdamW's moments after that step; <output>/tune-log.jsonl one line per step; loss.svg the
 * curves. <job dir>/tune.state names the last complete checkpoint; a resumed attempt loads it and carries on.
 * Batches are a function of (seed, step), so a resumed run ends on the bytes an uninterrupted one would.
 *
 * The model is loaded privately (not through job_model()): full training changes its weights in place, and the
 * worker's kept model must stay the file's model for the jobs that follow. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "engine/model/model_file.h"
#include "engine/model/model_tok.h"
#include "engine/model/safetensors.h"
#include "engine/model/train.h"
#include "jobs/plot.h"
#include "jobs/resume.h"
#include "jobs/runners.h"
#include "methods/dataset.h"
#include "methods/distill.h"
#include "methods/prefs.h"
#include "methods/tune.h"
#include "methods/zo.h"

#define STATE_NAME "tune.state"
#define CKPT_FILE "train-state.safetensors"

/* One eval of the policy on held-out pairs against the reference. */
typedef struct dpo_eval {
  double loss;            /* the mean DPO loss */
  double pref_accuracy;   /* share of pairs whose chosen side the policy finds more likely than the rejected */
  double ref_accuracy;    /* the same for the reference (the starting weights) */
  double reward_accuracy; /* share of pairs with a positive implicit reward margin */
  double reward_margin;   /* mean of beta ((lp_w - lr_w) - (lp_l - lr_l)) */
  double kl_ref;          /* mean per completion token of KL(policy || reference) */
  double chosen_logp, rejected_logp; /* the policy's mean summed log-probability of each side */
} dpo_eval_t;

typedef struct run {
  job_ctx_t *ctx;
  const char *kind; /* "tune" or "distill" */
  const char *base, *output, *what;
  uint32_t batch, accum, seq_len;
  uint64_t steps, eval_every, save_every, seed;
  tune_opts_t o;
  train_opts_t to;
  dataset_t data, eval, general;
  model_t *m;
  train_t *t;
  tuner_t *u;
  FILE *log;
  char state_path[PATH_MAX], log_path[PATH_MAX];
  int32_t *ids;               /* [batch * seq_len] */
  uint8_t *mask;              /* [batch * (seq_len - 1)] */
  double *curve, *eval_curve; /* per step (NaN where none) */
  /* distill */
  bool distill, kid;
  const char *teacher_path;
  model_t *tm;
  train_t *tt;          /* the teacher: frozen */
  train_distill_t dist; /* the loss */
  double mask_ratio;
  double teacher_eval; /* the teacher's held-out loss (NaN without --eval) */
  uint8_t *picked;     /* [batch * (seq_len - 1)] KID's masked targets */
  int32_t **kid_ids;   /* [accum][batch * seq_len] KID's rewritten inputs */
  /* tune --objective dpo */
  bool dpo;
  uint32_t seqs;            /* sequences per micro-batch: batch, or both sides of batch pairs */
  pref_set_t pdata, peval;  /* training and held-out pairs */
  model_t *rm;              /* full: the reference's own copy of the starting weights (else it shares r->m) */
  train_t *rt;              /* the reference: frozen */
  float *pw;                /* per training pair: its loss weight (1, or the strength's share) */
  float **mb_pw;            /* [accum][batch] the micro-batches' pair weights */
  double **mb_ref;          /* [accum][2 * batch] the reference's log-probability of each sequence */
  const lm_example_t **pex; /* [2 * batch] the sides of a micro-batch's pairs */
  const pref_pair_t **pp;   /* [batch] a micro-batch's pairs */
  dpo_eval_t eval_first_dpo, eval_last_dpo;
} run_t;

/* Fills one micro-batch from examples ex[0..n): sequences padded to the longest (at most seq_len) with target
 * masks covering each example's scored positions. Returns the micro-batch. */
static tune_batch_t make_batch(run_t *r, const lm_example_t *const *ex, uint32_t n) {
  uint32_t T = 2;
  for (uint32_t i = 0; i < n; i++)
    if (ex[i]->n > T) T = ex[i]->n;
  for (uint32_t i = 0; i < n; i++) {
    const lm_example_t *e = ex[i];
    for (uint32_t j = 0; j < T; j++) r->ids[i * T + j] = j < e->n ? e->ids[j] : e->ids[e->n - 1];
    for (uint32_t j = 0; j + 1 < T; j++) r->mask[i * (T - 1) + j] = j >= e->first && j + 1 < e->n;
  }
  return (tune_batch_t){.ids = r->ids, .mask = r->mask, .n_seq = n, .T = T};
}

/* Fills one micro-batch of pairs p[0..n) (sequence 2j chosen, 2j + 1 rejected). */
static tune_batch_t make_pair_batch(run_t *r, const pref_pair_t *const *p, uint32_t n) {
  for (uint32_t j = 0; j < n; j++) r->pex[2 * j] = &p[j]->chosen, r->pex[2 * j + 1] = &p[j]->rejected;
  return make_batch(r, r->pex, 2 * n);
}

/* The policy against the reference on the held-out pairs, in micro-batches. */
static lt_status_t dpo_evaluate(run_t *r, dpo_eval_t *e, lt_err_t *err) {
  memset(e, 0, sizeof *e);
  double beta = r->dist.beta, tokens = 0;
  double *lp = malloc(2 * (uint64_t)r->batch * sizeof *lp), *lr = malloc(2 * (uint64_t)r->batch * sizeof *lr),
         *kl = malloc(2 * (uint64_t)r->batch * sizeof *kl);
  const pref_pair_t **pp = malloc(r->batch * sizeof *pp);
  lt_status_t st = lp && lr && kl && pp ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t i = 0; st == LT_OK && i < r->peval.n; i += r->batch) {
    uint32_t n = r->peval.n - i < r->batch ? r->peval.n - i : r->batch;
    for (uint32_t j = 0; j < n; j++) pp[j] = &r->peval.p[i + j];
    tune_batch_t b = make_pair_batch(r, pp, n);
    st = train_compare(r->t, r->rt, b.ids, b.mask, b.n_seq, b.T, lp, lr, kl, err);
    for (uint32_t j = 0; st == LT_OK && j < n; j++) {
      double z = beta * ((lp[2 * j] - lr[2 * j]) - (lp[2 * j + 1] - lr[2 * j + 1]));
      e->loss += train_dpo_pair_loss(z), e->reward_margin += z, e->reward_accuracy += z > 0;
      e->pref_accuracy += lp[2 * j] > lp[2 * j + 1], e->ref_accuracy += lr[2 * j] > lr[2 * j + 1];
      e->chosen_logp += lp[2 * j], e->rejected_logp += lp[2 * j + 1];
      e->kl_ref += kl[2 * j] + kl[2 * j + 1];
    }
    for (uint32_t k = 0; st == LT_OK && k < b.n_seq * (b.T - 1); k++) tokens += b.mask[k];
  }
  double n = r->peval.n;
  e->loss /= n, e->reward_margin /= n, e->reward_accuracy /= n, e->pref_accuracy /= n, e->ref_accuracy /= n;
  e->chosen_logp /= n, e->rejected_logp /= n;
  e->kl_ref = tokens ? e->kl_ref / tokens : 0;
  free(lp), free(lr), free(kl), free(pp);
  return st;
}

/* Token-weighted mean loss of a data set under the model of t, in micro-batches. */
static lt_status_t set_loss(run_t *r, train_t *t, const dataset_t *d, double *loss, lt_err_t *err) {
  double sum = 0, count = 0;
  const lm_example_t **ex = malloc(r->batch * sizeof *ex);
  if (!ex) return lt_fail(err, LT_E_NOMEM, "out of memory");
  lt_status_t st = LT_OK;
  for (uint32_t i = 0; i < d->n && st == LT_OK; i += r->batch) {
    uint32_t n = d->n - i < r->batch ? d->n - i : r->batch;
    for (uint32_t j = 0; j < n; j++) ex[j] = &d->ex[i + j];
    tune_batch_t b = make_batch(r, ex, n);
    double c = 0, l = 0;
    for (uint32_t j = 0; j < n * (b.T - 1); j++) c += b.mask[j];
    if (c == 0) continue;
    st = train_loss(t, b.ids, b.mask, b.n_seq, b.T, &l, err);
    sum += l * c;
    count += c;
  }
  free(ex);
  *loss = count ? sum / count : NAN;
  return st;
}

/* ---- checkpoints ---- */

/* Host copies of the trainable tensors and their moments: 3 arrays per tensor. */
typedef struct host_state {
  uint32_t n;
  float **val, **m, **v;
} host_state_t;

static void host_state_free(host_state_t *h) {
  for (uint32_t i = 0; i < h->n; i++) {
    if (h->val) free(h->val[i]);
    if (h->m) free(h->m[i]);
    if (h->v) free(h->v[i]);
  }
  free(h->val), free(h->m), free(h->v);
  memset(h, 0, sizeof *h);
}

static lt_status_t host_state_alloc(host_state_t *h, const train_t *t, lt_err_t *err) {
  h->n = train_tensor_count(t);
  h->val = calloc(h->n + 1, sizeof *h->val), h->m = calloc(h->n + 1, sizeof *h->m),
  h->v = calloc(h->n + 1, sizeof *h->v);
  if (!h->val || !h->m || !h->v) return lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t i = 0; i < h->n; i++) {
    const train_tensor_t *x = train_tensor_at(t, i);
    uint64_t b = (uint64_t)x->rows * x->cols * 4;
    h->val[i] = malloc(b), h->m[i] = malloc(b), h->v[i] = malloc(b);
    if (!h->val[i] || !h->m[i] || !h->v[i]) return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  return LT_OK;
}

/* An f32 tensor of the checkpoint file. */
static ft_tensor_t f32_tensor(const char *name, uint32_t rows, uint32_t cols, const float *data) {
  ft_tensor_t t = {.name = name, .dtype = FT_F32, .n_dims = 2, .shape = {rows, cols}, .data = data};
  t.n_elems = (uint64_t)rows * cols;
  t.nbytes = t.n_elems * 4;
  return t;
}

/* Writes <output>/checkpoint-<step>/train-state.safetensors, the log flushed first, then names it in the state. */
static lt_status_t checkpoint(run_t *r, uint64_t step, lt_err_t *err) {
  host_state_t h = {0};
  uint32_t steps = 0;
  lt_status_t st = host_state_alloc(&h, r->t, err);
  if (st == LT_OK) st = tuner_state_save(r->u, &steps, h.val, h.m, h.v, err);
  ft_tensor_t *ts = st == LT_OK ? calloc(3 * (uint64_t)h.n + 1, sizeof *ts) : NULL;
  char(*names)[200] = st == LT_OK ? calloc(3 * (uint64_t)h.n + 1, sizeof *names) : NULL;
  if (st == LT_OK && (!ts || !names)) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t i = 0; st == LT_OK && i < h.n; i++) {
    const train_tensor_t *x = train_tensor_at(r->t, i);
    snprintf(names[3 * i], 200, "%s", x->name);
    snprintf(names[3 * i + 1], 200, "%s.adam_m", x->name);
    snprintf(names[3 * i + 2], 200, "%s.adam_v", x->name);
    ts[3 * i] = f32_tensor(names[3 * i], x->rows, x->cols, h.val[i]);
    ts[3 * i + 1] = f32_tensor(names[3 * i + 1], x->rows, x->cols, h.m[i]);
    ts[3 * i + 2] = f32_tensor(names[3 * i + 2], x->rows, x->cols, h.v[i]);
  }
  char dir[PATH_MAX], path[PATH_MAX + 32], sbuf[24];
  snprintf(dir, sizeof dir, "%s/checkpoint-%" PRIu64, r->output, step);
  snprintf(path, sizeof path, "%s/" CKPT_FILE, dir);
  snprintf(sbuf, sizeof sbuf, "%" PRIu64, step);
  const char *meta[] = {"format", "pt", "lathe_tune_steps", sbuf};
  if (st == LT_OK && (fflush(r->log) != 0 || fsync(fileno(r->log)) != 0))
    st = lt_fail(err, LT_E_IO, "writing %s: %s", r->log_path, strerror(errno));
  if (st == LT_OK) st = util_mkdir_p(dir, 0755, err);
  if (st == LT_OK) st = st_write(path, ts, 3 * h.n, meta, 2, err);
  if (st == LT_OK) st = resume_state_write(r->state_path, step, dir, err);
  if (st == LT_OK) job_artifact(r->ctx, "checkpoint", dir);
  free(ts), free(names);
  host_state_free(&h);
  return st;
}

/* Loads the checkpoint in dir (written after `step` steps) into the trainables and the optimiser. */
static lt_status_t resume(run_t *r, const char *dir, uint64_t step, lt_err_t *err) {
  char path[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/" CKPT_FILE, dir);
  st_file_t *f = NULL;
  lt_status_t st = st_open(&f, path, err);
  host_state_t h = {0};
  if (st == LT_OK) st = host_state_alloc(&h, r->t, err);
  for (uint32_t i = 0; st == LT_OK && i < h.n; i++) {
    const train_tensor_t *x = train_tensor_at(r->t, i);
    uint64_t n = (uint64_t)x->rows * x->cols;
    float *dst[3] = {h.val[i], h.m[i], h.v[i]};
    const char *suffix[3] = {"", ".adam_m", ".adam_v"};
    for (int k = 0; k < 3 && st == LT_OK; k++) {
      char name[200];
      snprintf(name, sizeof name, "%s%s", x->name, suffix[k]);
      const ft_tensor_t *t = st_find(f, name);
      if (!t || t->dtype != FT_F32 || t->n_elems != n)
        st = lt_fail(err, LT_E_CORRUPT, "cannot resume: %s lacks %s as f32 [%u, %u]", path, name, x->rows, x->cols);
      else
        memcpy(dst[k], t->data, n * 4);
    }
  }
  if (st == LT_OK) st = tuner_state_load(r->u, (uint32_t)step, h.val, h.m, h.v, err);
  host_state_free(&h);
  st_destroy(&f);
  return st;
}

/* Opens the log for appending after `step` steps, keeping only the lines of steps before it. */
static lt_status_t log_open(run_t *r, uint64_t step, lt_err_t *err) {
  r->log = resume_log_open(r->log_path, step, err);
  return r->log ? LT_OK : err ? err->code : LT_E_IO;
}

/* ---- results ---- */

/* LoRA merged into the base: a second copy of the base in f32 with the pairs folded in, written as a Hugging
 * Face folder in the base's dtype. */
static lt_status_t write_merged(run_t *r, gpu_t *g, lt_err_t *err) {
  model_load_opts_t lo = {.force_f32 = true};
  model_t *mm = model_load(g, r->base, &lo, err);
  if (!mm) return err ? err->code : LT_E_IO;
  lt_status_t st = train_lora_merge(r->t, mm, err);
  char dir[PATH_MAX + 8];
  snprintf(dir, sizeof dir, "%s/merged", r->output);
  model_save_opts_t so = {.f32_as = job_save_dtype(r->ctx, r->base)};
  if (st == LT_OK) st = model_save(mm, dir, &so, err);
  model_destroy(&mm);
  return st;
}

static void plot_write(run_t *r) {
  char p[PATH_MAX + 16];
  snprintf(p, sizeof p, "%s/loss.svg", r->output);
  char title[160];
  if (r->distill)
    snprintf(title, sizeof title, "distill --method %s --train %s: loss per step (eval: cross-entropy)",
             job_param_str(r->ctx, "method"), r->what);
  else if (r->dpo)
    snprintf(title, sizeof title, "tune --objective dpo --train %s: DPO loss per step (eval: held-out pairs)", r->what);
  else
    snprintf(title, sizeof title, "tune --train %s: loss per step", r->what);
  lt_err_t e = {0};
  job_picture(r->ctx, plot_loss_write(p, title, r->base, r->curve, r->eval_curve, (uint32_t)r->steps + 1, &e), "plot",
              p, &e);
}

/* ---- the loop ---- */

/* distill: one eval as an output record and a log line: the student's held-out loss and perplexity, and the
 * teacher's as the reference. */
static void eval_record(run_t *r, uint64_t step, double loss) {
  job_output_begin(r->ctx);
  job_output_int(r->ctx, "step", (int64_t)step);
  job_output_float(r->ctx, "eval_loss", loss);
  job_output_float(r->ctx, "eval_ppl", exp(loss));
  job_output_float(r->ctx, "teacher_eval_loss", r->teacher_eval);
  job_output_float(r->ctx, "teacher_eval_ppl", exp(r->teacher_eval));
  job_output_end(r->ctx);
  fprintf(r->log,
          "{\"step\": %" PRIu64 ", \"eval_loss\": %.9g, \"eval_ppl\": %.9g, \"teacher_eval_loss\": %.9g, "
          "\"teacher_eval_ppl\": %.9g}\n",
          step, loss, exp(loss), r->teacher_eval, exp(r->teacher_eval));
}

/* dpo: one eval as an output record and a log line. */
static void dpo_record(run_t *r, uint64_t step, const dpo_eval_t *e) {
  job_output_begin(r->ctx);
  job_output_int(r->ctx, "step", (int64_t)step);
  job_output_float(r->ctx, "eval_loss", e->loss);
  job_output_float(r->ctx, "pref_accuracy", e->pref_accuracy);
  job_output_float(r->ctx, "reference_pref_accuracy", e->ref_accuracy);
  job_output_float(r->ctx, "reward_accuracy", e->reward_accuracy);
  job_output_float(r->ctx, "reward_margin", e->reward_margin);
  job_output_float(r->ctx, "kl_ref", e->kl_ref);
  job_output_float(r->ctx, "chosen_logp", e->chosen_logp);
  job_output_float(r->ctx, "rejected_logp", e->rejected_logp);
  job_output_end(r->ctx);
  fprintf(r->log,
          "{\"step\": %" PRIu64 ", \"eval_loss\": %.9g, \"pref_accuracy\": %.9g, \"reference_pref_accuracy\": %.9g, "
          "\"reward_accuracy\": %.9g, \"reward_margin\": %.9g, \"kl_ref\": %.9g, \"chosen_logp\": %.9g, "
          "\"rejected_logp\": %.9g}\n",
          step, e->loss, e->pref_accuracy, e->ref_accuracy, e->reward_accuracy, e->reward_margin, e->kl_ref,
          e->chosen_logp, e->rejected_logp);
  job_metric(r->ctx, "pref_accuracy", e->pref_accuracy, step);
  job_metric(r->ctx, "reward_margin", e->reward_margin, step);
  job_metric(r->ctx, "kl_ref", e->kl_ref, step);
}

/* dpo: the micro-batch k of pairs idx[0..batch): sides, pair weights, and the reference's log-probabilities
 * (one forward of the reference, reused by SAM's second pass). */
static lt_status_t pair_micro_batch(run_t *r, const uint32_t *idx, uint32_t k, tune_batch_t *b, lt_err_t *err) {
  const pref_pair_t **pp = r->pp;
  for (uint32_t j = 0; j < r->batch; j++) {
    pp[j] = &r->pdata.p[idx[j]];
    r->mb_pw[k][j] = r->pw ? r->pw[idx[j]] : 1.0f;
  }
  *b = make_pair_batch(r, pp, r->batch);
  b->pair_weights = r->mb_pw[k];
  b->ref_logp = r->mb_ref[k];
  return train_compare(r->rt, NULL, b->ids, b->mask, b->n_seq, b->T, r->mb_ref[k], NULL, NULL, err);
}

static job_outcome_t loop(run_t *r, uint64_t start, lt_err_t *err) {
  job_ctx_t *ctx = r->ctx;
  uint32_t per_step = r->batch * r->accum;
  uint32_t *idx = malloc(per_step * sizeof *idx);
  const lm_example_t **ex = malloc(per_step * sizeof *ex);
  tune_batch_t *mb = malloc(r->accum * sizeof *mb);
  int32_t **mids = calloc(r->accum, sizeof *mids);
  uint8_t **mmask = calloc(r->accum, sizeof *mmask);
  int32_t *eval_ids = r->ids; /* make_batch fills r->ids / r->mask: the micro-batches get their own, evals these */
  uint8_t *eval_mask = r->mask;
  job_outcome_t out = JOB_FAILED;
  if (!idx || !ex || !mb || !mids || !mmask) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (uint32_t k = 0; k < r->accum; k++) {
    mids[k] = malloc((uint64_t)r->seqs * r->seq_len * 4);
    mmask[k] = malloc((uint64_t)r->seqs * r->seq_len);
    if (!mids[k] || !mmask[k]) {
      lt_fail(err, LT_E_NOMEM, "out of memory");
      goto done;
    }
  }
  int64_t t0 = util_mono_ms();
  uint64_t tokens = 0;
  for (uint64_t s = start; s < r->steps; s++) {
    job_stop_t stop = job_should_stop(ctx);
    if (stop == JOB_STOP_CANCEL) {
      out = JOB_CANCELLED;
      goto done;
    }
    if (stop == JOB_STOP_CHECKPOINT) {
      out = s > start && checkpoint(r, s, err) != LT_OK ? JOB_FAILED : JOB_STOPPED;
      goto done;
    }
    zo_sample(r->seed, s, per_step, r->dpo ? r->pdata.n : r->data.n, idx);
    for (uint32_t j = 0; j < per_step && !r->dpo; j++) ex[j] = &r->data.ex[idx[j]];
    uint32_t masked = 0, changed = 0;
    for (uint32_t k = 0; k < r->accum; k++) {
      r->ids = mids[k], r->mask = mmask[k];
      if (r->dpo && pair_micro_batch(r, idx + k * r->batch, k, &mb[k], err) != LT_OK) goto done;
      if (!r->dpo) mb[k] = make_batch(r, ex + k * r->batch, r->batch);
      tokens += (uint64_t)mb[k].n_seq * mb[k].T;
      if (!r->kid) continue;
      /* KID: the picked targets become the student's own predictions; the labels stay the data's. */
      uint32_t ch = 0;
      masked += distill_kid_pick(r->seed, s, k, mb[k].mask, mb[k].n_seq, mb[k].T, r->mask_ratio, r->picked);
      if (distill_kid_rewrite(r->t, mb[k].ids, r->picked, mb[k].n_seq, mb[k].T, r->kid_ids[k], &ch, err) != LT_OK)
        goto done;
      changed += ch;
      mb[k].labels = mb[k].ids;
      mb[k].ids = r->kid_ids[k];
    }
    r->ids = eval_ids, r->mask = eval_mask;
    tune_step_info_t info;
    if (tuner_step(r->u, mb, r->accum, &info, err) != LT_OK) {
      if (err->code == LT_E_NUMERIC) job_log(ctx, "%s; the last checkpoint is kept", err->msg);
      goto done;
    }
    r->curve[s + 1] = info.loss;
    double secs = (double)(util_mono_ms() - t0) / 1000.0, rate = secs > 0 ? (double)(s + 1 - start) / secs : 0;
    double eta = rate > 0 ? (double)(r->steps - s - 1) / rate : 0;
    job_progress(ctx, s + 1, r->steps, "steps");
    job_metric(ctx, "loss", info.loss, s + 1);
    job_metric(ctx, "lr", info.lr, s + 1);
    job_metric(ctx, "grad_norm", info.grad_norm, s + 1);
    job_metric(ctx, "tokens_per_s", secs > 0 ? (double)tokens / secs : 0, s + 1);
    job_metric(ctx, "eta_s", eta, s + 1);
    fprintf(r->log, "{\"step\": %" PRIu64 ", \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g", s + 1, info.loss,
            info.lr, info.grad_norm);
    if (r->distill) {
      fprintf(r->log, ", \"ce\": %.9g, \"teacher_ce\": %.9g", info.ce, info.teacher_ce);
      job_metric(ctx, "ce", info.ce, s + 1);
      job_metric(ctx, "teacher_ce", info.teacher_ce, s + 1);
    }
    if (r->dist.kind == TRAIN_LOSS_ATKD)
      fprintf(r->log, ", \"atkd_easy\": %u, \"atkd_hard\": %u", info.atkd_easy, info.atkd_hard);
    if (r->dpo) {
      fprintf(r->log, ", \"reward_margin\": %.9g, \"reward_accuracy\": %.9g", info.dpo_margin, info.dpo_accuracy);
      job_metric(ctx, "train_reward_margin", info.dpo_margin, s + 1);
    }
    if (r->kid) {
      fprintf(r->log, ", \"kid_masked\": %u, \"kid_changed\": %u", masked, changed);
      job_metric(ctx, "kid_changed", masked ? (double)changed / masked : 0, s + 1);
    }
    fputs("}\n", r->log);
    bool last = s + 1 == r->steps;
    char el[96] = "";
    if ((r->eval.n || r->peval.n) && (last || (r->eval_every && (s + 1) % r->eval_every == 0))) {
      double e;
      if (r->dpo) {
        if (dpo_evaluate(r, &r->eval_last_dpo, err) != LT_OK) goto done;
        e = r->eval_last_dpo.loss;
        dpo_record(r, s + 1, &r->eval_last_dpo);
        snprintf(el, sizeof el, ", held-out DPO loss %.4f, preference accuracy %.3f, KL %.4g", e,
                 r->eval_last_dpo.pref_accuracy, r->eval_last_dpo.kl_ref);
      } else {
        if (set_loss(r, r->t, &r->eval, &e, err) != LT_OK) goto done;
        snprintf(el, sizeof el, ", eval loss %.4f (perplexity %.2f)", e, exp(e));
        if (r->distill) eval_record(r, s + 1, e);
      }
      r->eval_curve[s + 1] = e;
      job_metric(ctx, "eval_loss", e, s + 1);
    }
    job_log(ctx, "step %" PRIu64 "/%" PRIu64 ": loss %.4f%s, lr %.3g, %.0f tokens/s, ETA %.0fs", s + 1, r->steps,
            info.loss, el, info.lr, secs > 0 ? (double)tokens / secs : 0, eta);
    if (!last && r->save_every && (s + 1) % r->save_every == 0 && checkpoint(r, s + 1, err) != LT_OK) goto done;
  }
  out = JOB_SUCCEEDED;
done:
  for (uint32_t k = 0; mids && mmask && k < r->accum; k++) free(mids[k]), free(mmask[k]);
  free(mids), free(mmask), free(idx), free(ex), free(mb);
  r->ids = eval_ids, r->mask = eval_mask;
  return out;
}

/* Parses "q,v,down" into TRAIN_LORA_* bits (the daemon's validator has checked every name). */
static uint32_t lora_bits(const char *list) {
  static const char *const known[] = {"q", "k", "v", "o", "gate", "up", "down"};
  uint32_t bits = 0;
  for (const char *s = list; *s;) {
    size_t n = strcspn(s, ",");
    for (int i = 0; i < 7; i++)
      if (strlen(known[i]) == n && !strncmp(known[i], s, n)) bits |= 1u << i;
    s += n + (s[n] == ',');
  }
  return bits;
}

/* The distillation settings of a distill job: the loss, and the teacher loaded in its own dtype as a frozen state. */
static lt_status_t teacher_open(run_t *r, gpu_t *g, lt_err_t *err) {
  job_ctx_t *ctx = r->ctx;
  const char *method = job_param_str(ctx, "method");
  r->kid = !strcmp(method, "kid");
  r->mask_ratio = job_param_float(ctx, "mask_ratio");
  const char *loss = r->kid ? job_param_str(ctx, "kid_loss") : method;
  r->dist = (train_distill_t){.kind = !strcmp(loss, "atkd") ? TRAIN_LOSS_ATKD : TRAIN_LOSS_KD,
                              .temperature = (float)job_param_float(ctx, "kd_temperature"),
                              .lambda = (float)job_param_float(ctx, "lambda")};
  /* The submit-time check again: the files may have changed since. */
  if (model_tokenizers_same(r->teacher_path, r->base, "teacher", "student", err) != LT_OK) return err->code;
  model_load_opts_t lo = {0};
  if (!(r->tm = model_load(g, r->teacher_path, &lo, err))) return err ? err->code : LT_E_IO;
  train_opts_t to = {.what = TRAIN_FROZEN};
  if (!(r->tt = train_new(r->tm, &to, err))) return err ? err->code : LT_E_INVALID;
  r->dist.teacher = r->tt;
  if (train_set_distill(r->t, &r->dist, err) != LT_OK) return err->code;
  if (r->kid) {
    if (!(r->picked = malloc((uint64_t)r->batch * r->seq_len)) || !(r->kid_ids = calloc(r->accum, sizeof *r->kid_ids)))
      return lt_fail(err, LT_E_NOMEM, "out of memory");
    for (uint32_t k = 0; k < r->accum; k++)
      if (!(r->kid_ids[k] = malloc((uint64_t)r->batch * r->seq_len * 4)))
        return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  const model_config_t *tc = model_config(r->tm);
  lt_dtype_t wdt = model_param_at(r->tm, 0)->dtype; /* the blocks' matrices (a quantised model keeps its embedding) */
  for (uint32_t i = 0; i < model_param_count(r->tm); i++)
    if (model_param_at(r->tm, i)->layer >= 0 && !model_param_at(r->tm, i)->is_norm) {
      wdt = model_param_at(r->tm, i)->dtype;
      break;
    }
  char lam[32] = "";
  if (r->dist.kind == TRAIN_LOSS_ATKD) snprintf(lam, sizeof lam, ", lambda %g", r->dist.lambda);
  job_log(ctx, "teacher %s: %u blocks, hidden %u, %s block weights; loss %s%s at temperature %g%s", r->teacher_path,
          tc->n_layers, tc->hidden_size, lt_dtype_str(wdt), r->kid ? "kid + " : "", loss, r->dist.temperature, lam);
  return LT_OK;
}

/* dpo: the pair weights of --dpo-weight: max(strength, 0) over its mean across the training pairs, so that the
 * loss keeps the scale of unweighted pairs (the learning rate means the same) and a pair whose likelihood margin
 * disagrees with its vote counts for nothing. */
static lt_status_t pair_weights(run_t *r, lt_err_t *err) {
  if (strcmp(job_param_str(r->ctx, "dpo_weight"), "strength")) return LT_OK;
  double sum = 0;
  uint32_t zero = 0;
  for (uint32_t i = 0; i < r->pdata.n; i++) sum += r->pdata.p[i].strength > 0 ? r->pdata.p[i].strength : 0;
  if (!(sum > 0)) return lt_fail(err, LT_E_INVALID, "--dpo-weight strength: no training pair has a positive strength");
  if (!(r->pw = malloc((uint64_t)r->pdata.n * sizeof *r->pw))) return lt_fail(err, LT_E_NOMEM, "out of memory");
  double mean = sum / r->pdata.n;
  for (uint32_t i = 0; i < r->pdata.n; i++) {
    double v = r->pdata.p[i].strength;
    r->pw[i] = v > 0 ? (float)(v / mean) : 0.0f;
    zero += !(v > 0);
  }
  job_log(r->ctx, "pair weights: strength / %.4g (the mean of the positive parts); %u of %u pairs weigh 0", mean, zero,
          r->pdata.n);
  return LT_OK;
}

/* dpo: the reference, the starting weights, as a frozen state: over the policy's own model when training LoRA or
 * adapters (the base is never changed; they start at zero), over a second f32 copy of the base for full training,
 * that copy with the starting LoRA folded in when training continues from --adapter. */
static lt_status_t reference_open(run_t *r, gpu_t *g, bool from_adapter, lt_err_t *err) {
  bool full = r->to.what == TRAIN_FULL;
  if (from_adapter && r->to.what == TRAIN_ADAPTER)
    return lt_fail(err, LT_E_INVALID,
                   "--objective dpo from --adapter: a bottleneck adapter cannot be folded into the reference; start "
                   "from a LoRA adapter or from the base");
  if (full || from_adapter) {
    model_load_opts_t lo = {.force_f32 = true};
    if (!(r->rm = model_load(g, r->base, &lo, err))) return err ? err->code : LT_E_IO;
    if (from_adapter && train_lora_merge(r->t, r->rm, err) != LT_OK) return err->code;
  }
  train_opts_t to = {.what = TRAIN_FROZEN};
  if (!(r->rt = train_new(r->rm ? r->rm : r->m, &to, err))) return err ? err->code : LT_E_INVALID;
  r->dist = (train_distill_t){.kind = TRAIN_LOSS_DPO, .teacher = r->rt, .beta = (float)job_param_float(r->ctx, "beta")};
  if (train_set_distill(r->t, &r->dist, err) != LT_OK) return err->code;
  r->mb_pw = calloc(r->accum, sizeof *r->mb_pw);
  r->mb_ref = calloc(r->accum, sizeof *r->mb_ref);
  r->pex = malloc(2 * (uint64_t)r->batch * sizeof *r->pex);
  r->pp = malloc((uint64_t)r->batch * sizeof *r->pp);
  if (!r->mb_pw || !r->mb_ref || !r->pex || !r->pp) return lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t k = 0; k < r->accum; k++)
    if (!(r->mb_pw[k] = malloc(r->batch * sizeof **r->mb_pw)) ||
        !(r->mb_ref[k] = malloc(2 * (uint64_t)r->batch * sizeof **r->mb_ref)))
      return lt_fail(err, LT_E_NOMEM, "out of memory");
  job_log(r->ctx, "DPO against the starting weights (%s), beta %g%s", r->rm ? "a second f32 copy" : "the base, shared",
          r->dist.beta, r->pw ? ", pairs weighted by strength" : "");
  return LT_OK;
}

/* dpo: reads the training and held-out pairs. */
static lt_status_t pairs_read(run_t *r, const tok_t *tok, unsigned flags, const char *eval_path, lt_err_t *err) {
  pref_opts_t po = {.flags = flags,
                    .context = r->seq_len,
                    .include_inconsistent = job_param_bool(r->ctx, "include_inconsistent"),
                    .need_strength = !strcmp(job_param_str(r->ctx, "dpo_weight"), "strength")};
  if (pref_read(&r->pdata, tok, job_param_str(r->ctx, "data"), &po, err) != LT_OK) return err->code;
  po.need_strength = false;
  if (*eval_path && pref_read(&r->peval, tok, eval_path, &po, err) != LT_OK) return err->code;
  const char *what = po.include_inconsistent ? "included" : "skipped";
  job_log(r->ctx,
          "%u training pairs (%" PRIu64 " rows marked inconsistent, %s; %" PRIu64 " with nothing to score within %u "
          "tokens; %" PRIu64 " sides cut to it), %u held-out pairs (%" PRIu64 " inconsistent, %s)",
          r->pdata.n, r->pdata.inconsistent, what, r->pdata.skipped, r->seq_len, r->pdata.cut, r->peval.n,
          r->peval.inconsistent, what);
  return pair_weights(r, err);
}

/* tune and distill: the run of one job of either kind. */
static job_outcome_t first_order(job_ctx_t *ctx, bool distill, lt_err_t *err) {
  run_t r = {.ctx = ctx,
             .kind = distill ? "distill" : "tune",
             .distill = distill,
             .teacher_path = distill ? job_param_str(ctx, "teacher") : NULL,
             .teacher_eval = NAN,
             .base = job_param_str(ctx, distill ? "student" : "model"),
             .output = job_param_str(ctx, "output"),
             .what = job_param_str(ctx, "train"),
             .batch = (uint32_t)job_param_int(ctx, "batch"),
             .accum = (uint32_t)job_param_int(ctx, "grad_accum"),
             .seq_len = (uint32_t)job_param_int(ctx, "seq_len"),
             .steps = (uint64_t)job_param_int(ctx, "steps"),
             .eval_every = (uint64_t)job_param_int(ctx, "eval_every"),
             .save_every = (uint64_t)job_param_int(ctx, "save_every"),
             .seed = (uint64_t)job_param_int(ctx, "seed")};
  r.dpo = !distill && !strcmp(job_param_str(ctx, "objective"), "dpo");
  r.seqs = r.batch * (r.dpo ? 2 : 1);
  const char *sched = job_param_str(ctx, "schedule");
  r.o = (tune_opts_t){.lr = job_param_float(ctx, "lr"),
                      .weight_decay = job_param_float(ctx, "weight_decay"),
                      .clip = job_param_float(ctx, "clip"),
                      .sam_rho = job_param_float(ctx, "sam_rho"),
                      .warmup = (uint32_t)job_param_int(ctx, "warmup"),
                      .steps = (uint32_t)r.steps,
                      .schedule = !strcmp(sched, "linear")     ? TUNE_LINEAR
                                  : !strcmp(sched, "constant") ? TUNE_CONSTANT
                                                               : TUNE_COSINE};
  bool full = !strcmp(r.what, "full"), lora = !strcmp(r.what, "lora");
  r.to = (train_opts_t){.what = full   ? TRAIN_FULL
                                : lora ? TRAIN_LORA
                                       : TRAIN_ADAPTER,
                        .lora_rank = (uint32_t)job_param_int(ctx, "lora_rank"),
                        .lora_alpha = (float)job_param_float(ctx, "lora_alpha"),
                        .lora_targets = lora_bits(job_param_str(ctx, "lora_targets")),
                        .adapter_layer = (uint32_t)(job_param_int(ctx, "layer") < 0 ? 0 : job_param_int(ctx, "layer")),
                        .adapter_dim = (uint32_t)job_param_int(ctx, "adapter_dim"),
                        .seed = r.seed,
                        .recompute = job_param_bool(ctx, "recompute"),
                        .balance = (float)job_param_float(ctx, "balance")};
  unsigned flags = job_param_bool(ctx, "add_bos") ? TOK_ADD_BOS : 0;
  const char *eval_path = job_param_str(ctx, "eval"), *general_path = job_param_str(ctx, "eval_general");
  snprintf(r.state_path, sizeof r.state_path, "%s/" STATE_NAME, job_dir(ctx));
  snprintf(r.log_path, sizeof r.log_path, "%s/%s-log.jsonl", r.output, r.kind);
  job_outcome_t out = JOB_FAILED;
  double general_before = NAN, general_after = NAN, eval_first = NAN, eval_last = NAN;
  tok_t *tok = model_tokenizer_open(r.base, err);
  if (!tok) return JOB_FAILED;
  if (util_mkdir_p(r.output, 0755, err) != LT_OK) goto done;
  gpu_t *g = job_gpu(ctx, err);
  if (!g) goto done;
  model_load_opts_t lo = {.force_f32 = full};
  if (!(r.m = model_load(g, r.base, &lo, err))) goto done;
  uint32_t max_pos = model_config(r.m)->max_position;
  if (max_pos && r.seq_len > max_pos) r.seq_len = max_pos;
  if (r.dpo && pairs_read(&r, tok, flags, eval_path, err) != LT_OK) goto done;
  if (!r.dpo && dataset_read(&r.data, tok, job_param_str(ctx, "data"), flags, r.seq_len, err) != LT_OK) goto done;
  if (!r.dpo && *eval_path && dataset_read(&r.eval, tok, eval_path, flags, r.seq_len, err) != LT_OK) goto done;
  if (*general_path && dataset_read(&r.general, tok, general_path, flags, r.seq_len, err) != LT_OK) goto done;
  if (r.data.cut)
    job_log(ctx, "%" PRIu64 " training rows are longer than %u tokens and were cut to it", r.data.cut, r.seq_len);
  if (!r.dpo)
    job_log(ctx, "%u training rows (%" PRIu64 " skipped: nothing to score), %u eval rows, %u general rows", r.data.n,
            r.data.skipped, r.eval.n, r.general.n);
  if (!(r.t = train_new(r.m, &r.to, err))) goto done;
  const char *from = job_param_str(ctx, "adapter");
  if (*from && train_load_adapter(r.t, from, err) != LT_OK) goto done;
  if (*from) job_log(ctx, "training continues from the adapter in %s", from);
  if (distill && teacher_open(&r, g, err) != LT_OK) goto done;
  if (r.dpo && reference_open(&r, g, *from, err) != LT_OK) goto done;
  if (!(r.u = tuner_new(r.t, &r.o, err))) goto done;
  if (!(r.ids = malloc((uint64_t)r.seqs * r.seq_len * 4)) || !(r.mask = malloc((uint64_t)r.seqs * r.seq_len)) ||
      !(r.curve = malloc((r.steps + 1) * sizeof *r.curve)) ||
      !(r.eval_curve = malloc((r.steps + 1) * sizeof *r.eval_curve))) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (uint64_t i = 0; i <= r.steps; i++) r.curve[i] = r.eval_curve[i] = NAN;
  uint64_t n_train = 0;
  for (uint32_t i = 0; i < train_tensor_count(r.t); i++)
    n_train += (uint64_t)train_tensor_at(r.t, i)->rows * train_tensor_at(r.t, i)->cols;
  job_log(ctx, "training %s: %" PRIu64 " trainable parameters in %u tensors, lr %g, batch %u x %u, %" PRIu64 " steps%s",
          r.what, n_train, train_tensor_count(r.t), r.o.lr, r.batch, r.accum, r.steps, r.o.sam_rho > 0 ? ", SAM" : "");
  if (r.general.n && set_loss(&r, r.t, &r.general, &general_before, err) != LT_OK) goto done;
  char ckpt[PATH_MAX];
  uint64_t start = resume_state_read(r.state_path, ckpt, sizeof ckpt);
  if (start > r.steps) start = 0;
  if (start && resume(&r, ckpt, start, err) != LT_OK) goto done;
  if (start) job_log(ctx, "attempt %u: resuming from %s (step %" PRIu64 ")", job_attempt(ctx), ckpt, start);
  if (log_open(&r, start, err) != LT_OK) goto done;
  if (r.peval.n) {
    if (dpo_evaluate(&r, &r.eval_first_dpo, err) != LT_OK) goto done;
    r.eval_last_dpo = r.eval_first_dpo;
    r.eval_curve[start] = eval_last = eval_first = r.eval_first_dpo.loss;
    job_metric(ctx, "eval_loss", eval_first, start);
    job_log(ctx,
            "held-out pairs at step %" PRIu64 ": DPO loss %.4f, preference accuracy %.3f (the reference's %.3f), "
            "reward margin %.4g, KL to the reference %.4g per token",
            start, eval_first, r.eval_first_dpo.pref_accuracy, r.eval_first_dpo.ref_accuracy,
            r.eval_first_dpo.reward_margin, r.eval_first_dpo.kl_ref);
    dpo_record(&r, start, &r.eval_first_dpo);
  }
  if (r.eval.n) {
    if (distill && set_loss(&r, r.tt, &r.eval, &r.teacher_eval, err) != LT_OK) goto done;
    if (set_loss(&r, r.t, &r.eval, &eval_first, err) != LT_OK) goto done;
    r.eval_curve[start] = eval_last = eval_first;
    job_metric(ctx, "eval_loss", eval_first, start);
    job_log(ctx, "eval loss at step %" PRIu64 ": %.4f (perplexity %.2f)", start, eval_first, exp(eval_first));
    if (distill) {
      job_log(ctx, "teacher's eval loss: %.4f (perplexity %.2f)", r.teacher_eval, exp(r.teacher_eval));
      eval_record(&r, start, eval_first);
    }
  }
  out = loop(&r, start, err);
  if (out != JOB_SUCCEEDED) goto done;
  out = JOB_FAILED;
  for (uint64_t s = r.steps + 1; (r.eval.n || r.peval.n) && s-- > 0;)
    if (!isnan(r.eval_curve[s])) {
      eval_last = r.eval_curve[s];
      break;
    }
  if (r.general.n && set_loss(&r, r.t, &r.general, &general_after, err) != LT_OK) goto done;
  if (fflush(r.log) != 0) {
    lt_fail(err, LT_E_IO, "writing %s", r.log_path);
    goto done;
  }
  lt_status_t st;
  if (full) {
    model_save_opts_t so = {.f32_as = job_save_dtype(ctx, r.base)};
    st = model_save(r.m, r.output, &so, err);
  } else {
    st = train_save_adapter(r.t, r.output, r.base, err);
    if (st == LT_OK && lora && job_param_bool(ctx, "merge")) st = write_merged(&r, g, err);
  }
  if (st != LT_OK) goto done;
  plot_write(&r);
  job_artifact(ctx, full ? "model" : "adapter", r.output);
  job_artifact(ctx, "log", r.log_path);
  job_result_int(ctx, "steps", (int64_t)r.steps);
  job_result_int(ctx, "resumed_from", (int64_t)start);
  job_result_str(ctx, "output", r.output);
  job_result_str(ctx, "train", r.what);
  if (distill) job_result_str(ctx, "method", job_param_str(ctx, "method"));
  if (!distill) job_result_str(ctx, "objective", r.dpo ? "dpo" : "ce");
  if (r.dpo) job_result_int(ctx, "pairs", r.pdata.n);
  if (!isnan(r.curve[r.steps])) job_result_float(ctx, "loss", r.curve[r.steps]);
  job_output_begin(ctx);
  job_output_str(ctx, "output", r.output);
  job_output_int(ctx, "steps", (int64_t)r.steps);
  if (r.peval.n) {
    const dpo_eval_t *a = &r.eval_first_dpo, *b = &r.eval_last_dpo;
    const char *base = start ? "eval_pref_accuracy_at_resume" : "eval_pref_accuracy_base";
    job_result_float(ctx, base, a->pref_accuracy);
    job_result_float(ctx, "eval_pref_accuracy", b->pref_accuracy);
    job_result_float(ctx, "eval_reward_accuracy", b->reward_accuracy);
    job_result_float(ctx, "eval_reward_margin", b->reward_margin);
    job_result_float(ctx, "eval_kl_ref", b->kl_ref);
    job_output_float(ctx, base, a->pref_accuracy);
    job_output_float(ctx, "eval_pref_accuracy", b->pref_accuracy);
    job_output_float(ctx, "eval_reward_accuracy", b->reward_accuracy);
    job_output_float(ctx, "eval_reward_margin", b->reward_margin);
    job_output_float(ctx, "eval_kl_ref", b->kl_ref);
  }
  if (r.eval.n || r.peval.n) {
    job_result_float(ctx, start ? "eval_loss_at_resume" : "eval_loss_base", eval_first);
    job_result_float(ctx, "eval_loss", eval_last);
    job_output_float(ctx, "eval_loss_base", eval_first);
    job_output_float(ctx, "eval_loss", eval_last);
    if (distill) {
      job_result_float(ctx, "eval_ppl", exp(eval_last));
      job_result_float(ctx, "teacher_eval_loss", r.teacher_eval);
      job_result_float(ctx, "teacher_eval_ppl", exp(r.teacher_eval));
      job_output_float(ctx, "eval_ppl", exp(eval_last));
      job_output_float(ctx, "teacher_eval_loss", r.teacher_eval);
      job_output_float(ctx, "teacher_eval_ppl", exp(r.teacher_eval));
    }
  }
  if (r.general.n) {
    job_result_float(ctx, "general_loss_before", general_before);
    job_result_float(ctx, "general_loss_after", general_after);
    job_result_float(ctx, "forgetting", general_after - general_before);
    job_output_float(ctx, "general_loss_before", general_before);
    job_output_float(ctx, "general_loss_after", general_after);
    job_output_float(ctx, "forgetting", general_after - general_before);
  }
  job_output_end(ctx);
  if (job_report_write(ctx, r.output, err) != LT_OK) goto done;
  out = JOB_SUCCEEDED;
done:
  if (r.log) fclose(r.log);
  tuner_destroy(&r.u);
  train_destroy(&r.t);
  train_destroy(&r.tt);
  train_destroy(&r.rt);
  model_destroy(&r.m);
  model_destroy(&r.tm);
  model_destroy(&r.rm);
  for (uint32_t k = 0; k < r.accum; k++) {
    if (r.mb_pw) free(r.mb_pw[k]);
    if (r.mb_ref) free(r.mb_ref[k]);
  }
  free(r.mb_pw), free(r.mb_ref), free(r.pex), free(r.pp), free(r.pw);
  pref_free(&r.pdata);
  pref_free(&r.peval);
  for (uint32_t k = 0; r.kid_ids && k < r.accum; k++) free(r.kid_ids[k]);
  free(r.kid_ids), free(r.picked);
  dataset_free(&r.data);
  dataset_free(&r.eval);
  dataset_free(&r.general);
  free(r.ids), free(r.mask), free(r.curve), free(r.eval_curve);
  tok_destroy(&tok);
  return out;
}

job_outcome_t run_tune(job_ctx_t *ctx, lt_err_t *err) { return first_order(ctx, false, err); }

job_outcome_t run_distill(job_ctx_t *ctx, lt_err_t *err) { return first_order(ctx, true, err); }
