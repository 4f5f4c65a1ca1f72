/* The `tune-zo` kind: zeroth-order fine-tuning (MeZO or LeZO, methods/zo.h) of a model on a JSONL file, with
 * held-out evals, checkpoints, a replayable run log, and resumption after a worker or daemon restart.
 *
 * Files: <output>/ holds the final model (Hugging Face layout), <output>/checkpoint-<step>/ the checkpoints (the
 * weights after that many steps), <output>/zo-log.jsonl the run log, <output>/loss.svg the loss curves.
 * <job dir>/tune_zo.state names the last complete checkpoint; a resumed attempt loads it, cuts the log back to its
 * step and carries on. Batches are a
 * function of (seed, step), so the resumed run reaches the weights an uninterrupted one would.
 *
 * The model is loaded privately with f32 weights, not through job_model(): tuning changes the weights in place,
 * and the worker's kept model must stay the file's model for the jobs that follow (it may also hold f16 weights,
 * which cannot be perturbed and restored without rounding). */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fsout.h"
#include "common/util.h"
#include "engine/model/model_tok.h"
#include "engine/text/jsonl.h"
#include "methods/dataset.h"
#include "methods/zo.h"
#include "jobs/plot.h"
#include "jobs/resume.h"
#include "jobs/runners.h"

#define LOG_NAME "zo-log.jsonl"
#define STATE_NAME "tune_zo.state"

/* Everything one attempt of the job holds. */
typedef struct run {
  job_ctx_t *ctx;
  const char *base, *output;
  zo_opts_t o;
  bool f32; /* the weights are tuned as f32 (loaded with force_f32) */
  float lr;
  uint64_t steps, eval_every, save_every;
  uint32_t batch;
  dataset_t train, eval;
  model_t *m;
  zo_t *z;
  /* Data-parallel replicas (--devices): [0] is m and z on the job's own device; the others each hold their own
   * copy of the weights on a device of their own (owned here). */
  uint32_t n_rep, micro;
  zo_t *zs[ZO_MAX_REPLICAS];
  model_t *rm[ZO_MAX_REPLICAS];
  gpu_t *rg[ZO_MAX_REPLICAS];
  FILE *log;
  char log_path[PATH_MAX], state_path[PATH_MAX];
  double eval_first, eval_last, loss_last; /* NAN until measured */
  double *eval_curve;                      /* eval loss after step s at [s] (NAN where not measured this attempt) */
} run_t;

/* <output>/loss.svg: the training loss of every step (from the run log, so a resumed run's earlier steps too) and
 * the eval losses this attempt measured. */
static void plot_write(run_t *r) {
  zo_opts_t o;
  zo_record_t *recs = NULL;
  uint64_t n = 0;
  lt_err_t e = {0};
  if (zo_log_read(r->log_path, &o, NULL, 0, &recs, &n, &e) != LT_OK) {
    job_log(r->ctx, "loss curve not written: %s", e.msg);
    return;
  }
  double *curve = malloc((r->steps + 1) * sizeof *curve);
  if (curve) {
    for (uint64_t s = 0; s <= r->steps; s++) curve[s] = NAN;
    for (uint64_t i = 0; i < n; i++)
      if (recs[i].step < r->steps) curve[recs[i].step + 1] = 0.5 * (recs[i].loss_plus + recs[i].loss_minus);
    char p[PATH_MAX + 16], title[160];
    snprintf(p, sizeof p, "%s/loss.svg", r->output);
    snprintf(title, sizeof title, "tune-zo --method %s: loss per step (train: mean of the two perturbed losses)",
             r->o.method == ZO_LEZO ? "lezo" : "mezo");
    job_picture(r->ctx, plot_loss_write(p, title, r->base, curve, r->eval_curve, (uint32_t)r->steps + 1, &e), "plot", p,
                &e);
  }
  free(recs), free(curve);
}

/* Mean NLL of the eval set, in batches. */
static lt_status_t eval_loss(run_t *r, double *loss, lt_err_t *err) {
  double sum = 0.0;
  uint64_t count = 0;
  for (uint32_t i = 0; i < r->eval.n; i += r->batch) {
    uint32_t n = r->eval.n - i < r->batch ? r->eval.n - i : r->batch;
    double s;
    uint64_t c;
    lt_status_t st = zo_nll(r->z, r->eval.ex + i, n, &s, &c, err);
    if (st != LT_OK) return st;
    sum += s;
    count += c;
  }
  *loss = sum / (double)count;
  return LT_OK;
}

/* Saves the weights after `step` steps as <output>/checkpoint-<step>, the log flushed to disk first, then
 * records it in the state file: a checkpoint the state names is complete and its steps are in the log. */
static lt_status_t checkpoint(run_t *r, uint64_t step, lt_err_t *err) {
  char dir[PATH_MAX], tmp[PATH_MAX + 80], steps[24];
  snprintf(dir, sizeof dir, "%s/checkpoint-%" PRIu64, r->output, step);
  snprintf(steps, sizeof steps, "%" PRIu64, step);
  const char *meta[] = {"lathe_zo_steps", steps};
  model_save_opts_t so = {.meta = meta, .n_meta = 1};
  lt_status_t st;
  if (fflush(r->log) != 0 || fsync(fileno(r->log)) != 0)
    return lt_fail(err, LT_E_IO, "writing %s: %s", r->log_path, strerror(errno));
  if ((st = util_out_dir(dir, tmp, sizeof tmp, err)) != LT_OK) return st;
  if ((st = model_save(r->m, tmp, &so, err)) != LT_OK) {
    util_rm_rf(tmp, NULL);
    return st;
  }
  if ((st = util_rm_rf(dir, err)) != LT_OK) return st;
  if (rename(tmp, dir) != 0) return lt_fail(err, LT_E_IO, "cannot rename %s: %s", tmp, strerror(errno));
  if ((st = resume_state_write(r->state_path, step, dir, err)) != LT_OK) return st;
  job_artifact(r->ctx, "checkpoint", dir);
  return LT_OK;
}

/* Opens the log for appending after `step` steps: a fresh run writes the header; a resumed one keeps the header
 * and the lines of steps before `step` (a killed attempt may have logged further) and drops the rest. */
static lt_status_t log_open(run_t *r, uint64_t step, lt_err_t *err) {
  if (!(r->log = resume_log_open(r->log_path, step ? step + 1 : 0, err))) return err ? err->code : LT_E_IO;
  return step ? LT_OK : zo_log_header(r->log, r->base, &r->o, err);
}

/* Seconds as "1h02m", "3m05s" or "12s". */
static void fmt_duration(char *buf, size_t n, double s) {
  uint64_t t = s > 0 ? (uint64_t)(s + 0.5) : 0;
  if (t >= 3600)
    snprintf(buf, n, "%" PRIu64 "h%02" PRIu64 "m", t / 3600, t / 60 % 60);
  else if (t >= 60)
    snprintf(buf, n, "%" PRIu64 "m%02" PRIu64 "s", t / 60, t % 60);
  else
    snprintf(buf, n, "%" PRIu64 "s", t);
}

/* The replicas of a data-parallel run (--devices N): N - 1 more copies of the weights at path, each on a device the
 * daemon lent the job (on the job's own device when the host lent none), scoring micro-batches of r->micro. */
static lt_status_t open_replicas(run_t *r, const char *path, uint32_t context, lt_err_t *err) {
  r->n_rep = (uint32_t)job_param_int(r->ctx, "devices");
  int64_t micro = job_param_int(r->ctx, "micro_batch");
  r->micro = micro > 0 ? (uint32_t)micro : (r->batch + r->n_rep - 1) / r->n_rep;
  r->zs[0] = r->z;
  if (r->n_rep > ZO_MAX_REPLICAS)
    return lt_fail(err, LT_E_INVALID, "--devices %u: at most %d", r->n_rep, ZO_MAX_REPLICAS);
  char names[1024] = "";
  size_t at = (size_t)snprintf(names, sizeof names, "%s", gpu_caps(job_gpu(r->ctx, err))->name);
  for (uint32_t i = 1; i < r->n_rep; i++) {
    char sel[72];
    job_lent_device(r->ctx, i - 1, sel, sizeof sel);
    if (!sel[0]) util_copy(sel, job_param_str(r->ctx, "device"), sizeof sel);
    gpu_opts_t go = {.device = sel[0] ? sel : NULL};
    model_load_opts_t lo = {.force_f32 = r->f32};
    if (!(r->rg[i] = gpu_new(&go, err))) return err->code;
    if (!(r->rm[i] = model_load(r->rg[i], path, &lo, err))) return err->code;
    if (!(r->zs[i] = zo_new(r->rm[i], &r->o, r->micro, context, err))) return err->code;
    if (at < sizeof names)
      at += (size_t)snprintf(names + at, sizeof names - at, ", %s%s%s", sel[0] ? sel : "", sel[0] ? ": " : "",
                             gpu_caps(r->rg[i])->name);
  }
  if (r->n_rep > 1 || r->micro < r->batch)
    job_log(r->ctx,
            "batches of %u in forward passes of %u examples on %u device%s (%s); only the losses cross "
            "between them",
            r->batch, r->micro, r->n_rep, r->n_rep > 1 ? "s" : "", names);
  return LT_OK;
}

/* Runs steps [start, steps) with evals and checkpoints; the outcome of the loop. */
static job_outcome_t train(run_t *r, uint64_t start, lt_err_t *err) {
  job_ctx_t *ctx = r->ctx;
  uint32_t *idx = malloc(r->batch * sizeof *idx);
  zo_example_t *b = malloc(r->batch * sizeof *b);
  if (!idx || !b) {
    free(idx), free(b);
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return JOB_FAILED;
  }
  job_outcome_t out = JOB_FAILED;
  int64_t t0 = util_mono_ms();
  double loss = 0.0;
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
    zo_sample(r->o.seed, s, r->batch, r->train.n, idx);
    for (uint32_t j = 0; j < r->batch; j++) b[j] = r->train.ex[idx[j]];
    zo_record_t rec;
    if (zo_step_replicas(r->zs, r->n_rep, r->micro, s, r->lr, b, r->batch, &rec, err) != LT_OK) goto done;
    if (zo_log_record(r->log, &rec, err) != LT_OK) goto done;
    loss = 0.5 * (rec.loss_plus + rec.loss_minus);
    double secs = (double)(util_mono_ms() - t0) / 1000.0;
    double rate = secs > 0 ? (double)(s + 1 - start) / secs : 0.0;
    double eta = rate > 0 ? (double)(r->steps - s - 1) / rate : 0.0;
    job_progress(ctx, s + 1, r->steps, "steps");
    job_metric(ctx, "loss", loss, s + 1);
    job_metric(ctx, "projected_grad", rec.g, s + 1);
    job_metric(ctx, "lr", rec.lr, s + 1);
    job_metric(ctx, "steps_per_s", rate, s + 1);
    job_metric(ctx, "eta_s", eta, s + 1);
    bool last = s + 1 == r->steps;
    if (last || (r->eval_every && (s + 1) % r->eval_every == 0)) {
      char eta_s[32], el_s[48] = "";
      fmt_duration(eta_s, sizeof eta_s, eta);
      if (r->eval.n) {
        if (eval_loss(r, &r->eval_last, err) != LT_OK) goto done;
        job_metric(ctx, "eval_loss", r->eval_last, s + 1);
        if (r->eval_curve) r->eval_curve[s + 1] = r->eval_last;
        snprintf(el_s, sizeof el_s, ", eval loss %.4f", r->eval_last);
      }
      job_log(ctx, "step %" PRIu64 "/%" PRIu64 ": loss %.4f%s, g %.4g, %.2f steps/s, ETA %s", s + 1, r->steps, loss,
              el_s, (double)rec.g, rate, eta_s);
    }
    if (!last && r->save_every && (s + 1) % r->save_every == 0 && checkpoint(r, s + 1, err) != LT_OK) goto done;
  }
  if (r->steps > start) r->loss_last = loss;
  out = JOB_SUCCEEDED;
done:
  free(idx), free(b);
  return out;
}

job_outcome_t run_tune_zo(job_ctx_t *ctx, lt_err_t *err) {
  run_t r = {.ctx = ctx,
             .base = job_param_str(ctx, "model"),
             .output = job_param_str(ctx, "output"),
             .lr = (float)job_param_float(ctx, "lr"),
             .steps = (uint64_t)job_param_int(ctx, "steps"),
             .eval_every = (uint64_t)job_param_int(ctx, "eval_every"),
             .save_every = (uint64_t)job_param_int(ctx, "save_every"),
             .batch = (uint32_t)job_param_int(ctx, "batch"),
             .eval_first = NAN,
             .eval_last = NAN,
             .loss_last = NAN};
  r.o = (zo_opts_t){.method = strcmp(job_param_str(ctx, "method"), "lezo") ? ZO_MEZO : ZO_LEZO,
                    .eps = (float)job_param_float(ctx, "eps"),
                    .weight_decay = (float)job_param_float(ctx, "weight_decay"),
                    .seed = (uint64_t)job_param_int(ctx, "seed")};
  uint32_t context = (uint32_t)job_param_int(ctx, "context");
  unsigned flags = job_param_bool(ctx, "add_bos") ? TOK_ADD_BOS : 0;
  const char *eval_path = job_param_str(ctx, "eval");
  snprintf(r.log_path, sizeof r.log_path, "%s/" LOG_NAME, r.output);
  snprintf(r.state_path, sizeof r.state_path, "%s/" STATE_NAME, job_dir(ctx));
  job_outcome_t out = JOB_FAILED;
  tok_t *tok = model_tokenizer_open(r.base, err);
  if (!tok) return JOB_FAILED;
  if (util_mkdir_p(r.output, 0755, err) != LT_OK) goto done;
  char ckpt[PATH_MAX];
  uint64_t start = resume_state_read(r.state_path, ckpt, sizeof ckpt);
  if (start > r.steps) start = 0; /* the state of another run's length: start over */
  gpu_t *g = job_gpu(ctx, err);
  if (!g) goto done;
  if (start) {
    /* A run resumed goes on with the arithmetic its log began with (a version 1 log: f32 weights in place). */
    zo_opts_t was;
    zo_record_t *recs = NULL;
    uint64_t n_recs = 0;
    lt_err_t e2 = {0};
    if (zo_log_read(r.log_path, &was, NULL, 0, &recs, &n_recs, &e2) == LT_OK) r.o.version = was.version;
    free(recs);
  }
  /* Version 2 tunes a 16-bit base in its own dtype (the memory of inference) unless the output is to be another
   * dtype: then in f32, as version 1 always did. */
  r.f32 = r.o.version == 1 || job_save_dtype(ctx, r.base) != job_base_dtype(r.base);
  model_load_opts_t lo = {.force_f32 = r.f32};
  if (!(r.m = model_load(g, start ? ckpt : r.base, &lo, err))) goto done;
  uint32_t L = model_config(r.m)->n_layers, max_pos = model_config(r.m)->max_position;
  /* Rows longer than the model was trained on would be scored at positions it never saw. */
  if (max_pos && context > max_pos) context = max_pos;
  if (dataset_read(&r.train, tok, job_param_str(ctx, "data"), flags, context, err) != LT_OK) goto done;
  if (*eval_path && dataset_read(&r.eval, tok, eval_path, flags, context, err) != LT_OK) goto done;
  job_log(ctx, "%u training rows (%" PRIu64 " skipped: nothing to score within %u tokens), %u eval rows", r.train.n,
          r.train.skipped, context, r.eval.n);
  int64_t drop = job_param_int(ctx, "drop_layers");
  if (r.o.method == ZO_LEZO) r.o.drop_layers = drop < 0 ? L / 2 : (uint32_t)drop;
  if (!(r.z = zo_new(r.m, &r.o, r.batch, context, err))) goto done;
  if (open_replicas(&r, start ? ckpt : r.base, context, err) != LT_OK) goto done;
  if (log_open(&r, start, err) != LT_OK) goto done;
  if (start)
    job_log(ctx, "attempt %u: resuming from %s (step %" PRIu64 " of %" PRIu64 ")", job_attempt(ctx), ckpt, start,
            r.steps);
  uint64_t n_params = 0;
  for (uint32_t i = 0; i < model_param_count(r.m); i++)
    n_params += (uint64_t)model_param_at(r.m, i)->n_rows * model_param_at(r.m, i)->cols;
  job_log(ctx,
          "%s on %" PRIu64 " parameters (%u of %u blocks tuned each step), lr %g, eps %g, batch %u, "
          "%.1f MiB of weights on the device",
          r.o.method == ZO_LEZO ? "LeZO" : "MeZO", n_params, L - r.o.drop_layers, L, (double)r.lr, (double)r.o.eps,
          r.batch, (double)model_mem(r.m)->weight_device_bytes / 1048576.0);
  if (r.eval.n && r.steps < (1u << 24) && (r.eval_curve = malloc((r.steps + 1) * sizeof *r.eval_curve)))
    for (uint64_t s = 0; s <= r.steps; s++) r.eval_curve[s] = NAN;
  if (r.eval.n) {
    double el;
    if (eval_loss(&r, &el, err) != LT_OK) goto done;
    job_metric(ctx, "eval_loss", el, start);
    r.eval_first = r.eval_last = el;
    if (r.eval_curve) r.eval_curve[start] = el;
    job_log(ctx, "eval loss at step %" PRIu64 ": %.4f", start, el);
  }
  out = train(&r, start, err);
  if (out != JOB_SUCCEEDED) goto done;
  char steps[24];
  snprintf(steps, sizeof steps, "%" PRIu64, r.steps);
  const char *meta[] = {"lathe_zo_steps", steps};
  model_save_opts_t so = {.meta = meta, .n_meta = 1, .f32_as = job_save_dtype(ctx, r.base)};
  if (fflush(r.log) != 0 || model_save(r.m, r.output, &so, err) != LT_OK) {
    if (!err->msg[0]) lt_fail(err, LT_E_IO, "writing %s: %s", r.log_path, strerror(errno));
    out = JOB_FAILED;
    goto done;
  }
  job_artifact(ctx, "model", r.output);
  job_artifact(ctx, "log", r.log_path);
  if (r.steps < (1u << 24)) plot_write(&r);
  /* The eval loss at this attempt's first step: the base model's, unless the attempt resumed. */
  const char *first_key = start ? "eval_loss_at_resume" : "eval_loss_base";
  job_result_int(ctx, "steps", (int64_t)r.steps);
  job_result_int(ctx, "resumed_from", (int64_t)start);
  job_result_str(ctx, "output", r.output);
  if (!isnan(r.loss_last)) job_result_float(ctx, "loss", r.loss_last);
  if (r.eval.n) {
    job_result_float(ctx, first_key, r.eval_first);
    job_result_float(ctx, "eval_loss", r.eval_last);
  }
  if (job_report_write(ctx, r.output, err) != LT_OK) {
    out = JOB_FAILED;
    goto done;
  }
  job_output_begin(ctx);
  job_output_str(ctx, "output", r.output);
  job_output_str(ctx, "log", r.log_path);
  job_output_int(ctx, "steps", (int64_t)r.steps);
  if (r.eval.n) {
    job_output_float(ctx, first_key, r.eval_first);
    job_output_float(ctx, "eval_loss", r.eval_last);
  }
  job_output_end(ctx);
done:
  free(r.eval_curve);
  if (r.log) fclose(r.log);
  for (uint32_t i = 1; i < ZO_MAX_REPLICAS; i++) {
    zo_destroy(&r.zs[i]);
    model_destroy(&r.rm[i]);
    gpu_destroy(&r.rg[i]);
  }
  zo_destroy(&r.z);
  model_destroy(&r.m);
  dataset_free(&r.train);
  dataset_free(&r.eval);
  tok_destroy(&tok);
  return out;
}
