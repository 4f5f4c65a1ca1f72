/* The speech kinds (docs/speech.md): speech-train (stages asr and self-powered), speech-eval (word error rate and
 * the speech-anchor-bias measure) and generate --audio. */
#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"
#include "engine/model/model_tok.h"
#include "engine/text/lines.h"
#include "methods/selfgen.h"
#include "methods/speechlm.h"
#include "jobs/datajob.h"
#include "jobs/runners.h"
#include "jobs/speech_job.h"

/* ---- what every speech job opens ---- */

typedef struct sjob {
  job_ctx_t *ctx;
  model_t *llm; /* the worker's */
  tok_t *tok;   /* the worker's */
  chat_tmpl_t *tmpl;
  speech_t *sp;
  slm_t *s;
} sjob_t;

static void sjob_close(sjob_t *j) {
  slm_destroy(&j->s);
  speech_destroy(&j->sp);
  chat_tmpl_destroy(&j->tmpl);
}

/* The LLM (with the job's adapter, when it has one), its chat template and the speech model at `speech` (NULL:
 * made by the caller into j->sp before slm_new). */
static lt_status_t sjob_open(job_ctx_t *ctx, sjob_t *j, const char *speech, lt_err_t *err) {
  memset(j, 0, sizeof *j);
  j->ctx = ctx;
  const char *model = job_param_str(ctx, "model");
  if (!(j->llm = job_model(ctx, model, &j->tok, err))) return err->code ? err->code : LT_E_INVALID;
  if (!(j->tmpl = model_chat_template_open(model, err))) return err->code;
  if (speech) {
    speech_config_t conn = {0};
    if (!(j->sp = speech_load(model_gpu(j->llm), speech, &conn, 1, err))) return err->code;
    if (!speech_config(j->sp)->llm_hidden)
      return lt_fail(err, LT_E_INVALID,
                     "%s: a speech model without a connector (a Whisper checkpoint?): train one "
                     "with speech-train first",
                     speech);
    if (!(j->s = slm_new(j->sp, j->llm, j->tok, j->tmpl, err))) return err->code;
  }
  return LT_OK;
}

/* One row of a speech JSONL file with its features. */
typedef struct srow {
  char *audio, *text, *instruction; /* instruction: the row's own (may be NULL) */
  float *feats;
  uint32_t T;
} srow_t;

static void rows_free(srow_t *r, size_t n) {
  for (size_t i = 0; r && i < n; i++) free(r[i].audio), free(r[i].text), free(r[i].instruction), free(r[i].feats);
  free(r);
}

/* Reads the rows of path ({"audio", "text"[, "instruction"]}, audio relative to path's folder) and computes their
 * features, with progress; at most max_rows (0: all). */
static lt_status_t rows_load(sjob_t *j, const char *path, uint64_t max_rows, double max_seconds, srow_t **out,
                             size_t *n_out, lt_err_t *err) {
  *out = NULL, *n_out = 0;
  uint64_t total = 0;
  lt_status_t st = dj_count_rows(path, max_rows, &total, err);
  if (st != LT_OK) return st;
  if (total == 0) return lt_fail(err, LT_E_INVALID, "%s: no rows", path);
  srow_t *rows = calloc(total, sizeof *rows);
  if (!rows) return lt_fail(err, LT_E_NOMEM, "out of memory");
  char *pc = strdup(path);
  const char *folder = pc ? dirname(pc) : ".";
  lines_t *r = lines_open(path, 1u << 20, err);
  if (!r) st = err->code;
  size_t n = 0;
  json_t *o = NULL;
  int got;
  while (st == LT_OK && n < total && (got = lines_next_json(r, &o, err)) == 1) {
    const char *a = json_string_value(json_object_get(o, "audio")), *t = json_string_value(json_object_get(o, "text"));
    const char *ins = json_string_value(json_object_get(o, "instruction"));
    if (!a || !t)
      st = lt_fail(err, LT_E_INVALID, "%s:%llu: a row needs \"audio\" (a file) and \"text\" (its transcript) strings",
                   path, (unsigned long long)lines_lineno(r));
    if (st == LT_OK) {
      char full[4096];
      snprintf(full, sizeof full, "%s%s%s", a[0] == '/' ? "" : folder, a[0] == '/' ? "" : "/", a);
      rows[n].audio = strdup(full), rows[n].text = strdup(t), rows[n].instruction = ins ? strdup(ins) : NULL;
      if (!rows[n].audio || !rows[n].text) st = lt_fail(err, LT_E_NOMEM, "out of memory");
    }
    if (st == LT_OK) {
      st = slm_features(j->s, rows[n].audio, max_seconds, &rows[n].feats, &rows[n].T, err);
      if (st != LT_OK) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        lt_fail(err, st, "%s:%llu: %s", path, (unsigned long long)lines_lineno(r), why);
      }
    }
    json_decref(o);
    o = NULL;
    if (st == LT_OK) {
      n++;
      job_progress(j->ctx, n, total, "rows read");
      if (job_should_stop(j->ctx) != JOB_GO) st = lt_fail(err, LT_E_INVALID, "stopped while reading the rows");
    }
  }
  if (st == LT_OK && got < 0) st = (lt_status_t)got;
  lines_destroy(&r);
  free(pc);
  if (st != LT_OK) {
    rows_free(rows, total);
    return st;
  }
  *out = rows, *n_out = n;
  return LT_OK;
}

/* Answers n prompts in batches of `batch`: rows[i] the speech rows of prompt i (NULL: text). */
static lt_status_t answer_all(sjob_t *j, slm_prompt_t *p, const float *const *rows, size_t n, uint32_t batch,
                              uint32_t max_tokens, char **texts, const char *what, lt_err_t *err) {
  lt_status_t st = LT_OK;
  for (size_t at = 0; at < n && st == LT_OK; at += batch) {
    uint32_t k = (uint32_t)(n - at < batch ? n - at : batch);
    st = slm_answer(j->s, p + at, rows + at, k, max_tokens, texts + at, err);
    job_progress(j->ctx, at + k, n, what);
    if (st == LT_OK && job_should_stop(j->ctx) != JOB_GO) st = lt_fail(err, LT_E_INVALID, "stopped");
  }
  return st;
}

/* Opens OUTPUT/name for writing and announces it. */
static FILE *out_create(job_ctx_t *ctx, const char *out, const char *name, lt_err_t *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", out, name);
  FILE *f = fopen(path, "w");
  if (!f) return lt_fail(err, LT_E_IO, "%s: cannot write", path), NULL;
  job_artifact(ctx, name, path);
  return f;
}

/* The outcome of a failure: a stop request wins over the error it caused. */
static job_outcome_t failed(job_ctx_t *ctx) {
  job_stop_t s = job_should_stop(ctx);
  return s != JOB_GO ? dj_stopped(s) : JOB_FAILED;
}

/* ---- speech-train ---- */

/* An example: a row's features with an instruction and target (owned here). */
typedef struct tex {
  const srow_t *row;
  char *instruction, *target;
} tex_t;

/* Writes the self-powered targets: for each row, per_input instructions of the pool (the row's own first), the
 * LLM's answer from the transcript; answers that end a sentence are kept (selfgen's rule). */
static lt_status_t self_powered(sjob_t *j, const srow_t *rows, size_t n_rows, const dj_pool_t *pool, tex_t *ex,
                                size_t *n_ex, FILE *log, uint64_t *dropped, lt_err_t *err) {
  job_ctx_t *ctx = j->ctx;
  size_t per = (size_t)job_param_int(ctx, "per_input"), np = 0;
  uint32_t max_tokens = (uint32_t)job_param_int(ctx, "max_tokens"), batch = 8;
  slm_prompt_t *p = calloc(n_rows * per, sizeof *p);
  const char **ins = calloc(n_rows * per, sizeof *ins);
  size_t *row_of = calloc(n_rows * per, sizeof *row_of);
  char **ans = calloc(n_rows * per, sizeof *ans);
  const float **none = calloc(n_rows * per, sizeof *none);
  lt_status_t st = p && ins && row_of && ans && none ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  for (size_t i = 0; st == LT_OK && i < n_rows; i++)
    for (size_t k = 0; st == LT_OK && k < per; k++) {
      const char *in = k == 0 && rows[i].instruction ? rows[i].instruction
                       : pool->n                     ? pool->v[sg_pick(i, k, per, pool->n)]
                                                     : NULL;
      if (!in) continue;
      ins[np] = in, row_of[np] = i;
      st = slm_prompt_text(j->s, in, rows[i].text, &p[np], err);
      np++;
    }
  if (st == LT_OK) st = answer_all(j, p, none, np, batch, max_tokens, ans, "LLM answers", err);
  for (size_t i = 0; st == LT_OK && i < np; i++) {
    bool keep = ans[i][0] && sg_ends_sentence(ans[i]);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b}", "audio", rows[row_of[i]].audio, "text", rows[row_of[i]].text,
                          "instruction", ins[i], "answer", ans[i], "kept", keep);
    st = dj_write(log, o, err);
    if (!keep) {
      (*dropped)++;
      continue;
    }
    ex[*n_ex] = (tex_t){.row = &rows[row_of[i]], .instruction = strdup(ins[i]), .target = strdup(ans[i])};
    if (!ex[*n_ex].instruction || !ex[*n_ex].target) st = lt_fail(err, LT_E_NOMEM, "out of memory");
    (*n_ex)++;
  }
  for (size_t i = 0; i < np; i++) slm_prompt_free(&p[i]), free(ans[i]);
  free(p), free(ins), free(row_of), free(ans), free(none);
  return st;
}

/* A new speech model of the job's size parameters for llm. */
static speech_t *new_speech(job_ctx_t *ctx, model_t *llm, lt_err_t *err) {
  speech_config_t c = {.n_mels = 80,
                       .d_model = (uint32_t)job_param_int(ctx, "d_model"),
                       .n_layers = (uint32_t)job_param_int(ctx, "layers"),
                       .n_heads = (uint32_t)job_param_int(ctx, "heads"),
                       .ffn = (uint32_t)job_param_int(ctx, "ffn"),
                       .max_positions = (uint32_t)job_param_int(ctx, "max_positions"),
                       .eps = 1e-5f,
                       .stack = (uint32_t)job_param_int(ctx, "stack"),
                       .hidden = (uint32_t)job_param_int(ctx, "hidden"),
                       .llm_hidden = model_config(llm)->hidden_size};
  return speech_new(model_gpu(llm), &c, (uint64_t)job_param_int(ctx, "seed"), err);
}

job_outcome_t run_speech_train(job_ctx_t *ctx, lt_err_t *err) {
  const char *out = job_param_str(ctx, "output"), *stage = job_param_str(ctx, "stage");
  const char *speech = job_param_str(ctx, "speech"), *model = job_param_str(ctx, "model");
  bool selfp = !strcmp(stage, "self-powered"), lora = job_param_bool(ctx, "lora");
  uint32_t steps = (uint32_t)job_param_int(ctx, "steps"), batch = (uint32_t)job_param_int(ctx, "batch");
  job_outcome_t res = JOB_FAILED;
  sjob_t j;
  srow_t *rows = NULL;
  size_t n_rows = 0, n_ex = 0;
  tex_t *ex = NULL;
  dj_pool_t pool = {0};
  FILE *targets = NULL, *log = NULL;
  train_t *t = NULL;
  tuner_t *u = NULL;
  slm_example_t *mb = NULL;
  uint32_t *order = NULL;
  double *recent = NULL;
  uint64_t dropped = 0;
  if (sjob_open(ctx, &j, NULL, err) != LT_OK) goto done;
  if (util_mkdir_p(out, 0755, err) != LT_OK) goto done;
  /* The speech model: given (Lathe's, or a Whisper checkpoint's encoder with a new connector), or new. */
  if (*speech) {
    speech_config_t conn = {.stack = (uint32_t)job_param_int(ctx, "stack"),
                            .hidden = (uint32_t)job_param_int(ctx, "hidden"),
                            .llm_hidden = model_config(j.llm)->hidden_size};
    j.sp = speech_load(model_gpu(j.llm), speech, &conn, (uint64_t)job_param_int(ctx, "seed"), err);
  } else {
    j.sp = new_speech(ctx, j.llm, err);
  }
  if (!j.sp || !(j.s = slm_new(j.sp, j.llm, j.tok, j.tmpl, err))) goto done;
  const speech_config_t *sc = speech_config(j.sp);
  const char *enc = job_param_str(ctx, "train_encoder");
  bool train_enc = !strcmp(enc, "yes") || (!strcmp(enc, "auto") && !selfp);
  speech_set_trainable(j.sp, train_enc, true);
  job_log(ctx,
          "speech model: %s, %u blocks of width %u, %u heads; connector: %u frames per row into %u dimensions; "
          "stage %s, training the %s",
          *speech ? speech : "new", sc->n_layers, sc->d_model, sc->n_heads, sc->stack, sc->llm_hidden, stage,
          train_enc ? "encoder and connector" : "connector");
  if (rows_load(&j, job_param_str(ctx, "data"), (uint64_t)job_param_int(ctx, "max_rows"),
                job_param_float(ctx, "max_audio_seconds"), &rows, &n_rows, err) != LT_OK)
    goto done;
  if (dj_pool_load(ctx, &pool, err) != LT_OK) goto done;
  size_t per = (size_t)job_param_int(ctx, "per_input");
  bool asr_rows = !selfp || job_param_bool(ctx, "asr_rows");
  if (!(ex = calloc(n_rows * (per + 1), sizeof *ex))) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  if (!(targets = out_create(ctx, out, "targets.jsonl", err))) goto done;
  if (selfp) {
    bool own = false;
    for (size_t i = 0; i < n_rows; i++) own |= rows[i].instruction != NULL;
    if (!pool.n && !own) {
      lt_fail(err, LT_E_INVALID,
              "stage self-powered needs instructions: --instruction, --instructions, or rows with "
              "their own \"instruction\"");
      goto done;
    }
    if (self_powered(&j, rows, n_rows, &pool, ex, &n_ex, targets, &dropped, err) != LT_OK) goto done;
    job_log(ctx, "self-powered targets: %zu kept, %llu dropped (not ending a sentence)", n_ex,
            (unsigned long long)dropped);
  }
  const char *asr = job_param_str(ctx, "asr_instruction");
  for (size_t i = 0; asr_rows && i < n_rows; i++) {
    ex[n_ex] = (tex_t){.row = &rows[i], .instruction = strdup(asr), .target = strdup(rows[i].text)};
    if (!ex[n_ex].instruction || !ex[n_ex].target) {
      lt_fail(err, LT_E_NOMEM, "out of memory");
      goto done;
    }
    if (!selfp) {
      json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b}", "audio", rows[i].audio, "text", rows[i].text, "instruction",
                            asr, "answer", rows[i].text, "kept", 1);
      if (dj_write(targets, o, err) != LT_OK) goto done;
    }
    n_ex++;
  }
  fclose(targets), targets = NULL;
  /* Examples longer than the LLM's window are left out, and counted. */
  size_t kept = 0, too_long = 0;
  for (size_t i = 0; i < n_ex; i++) {
    slm_example_t e = {ex[i].row->feats, ex[i].row->T, ex[i].instruction, ex[i].target};
    uint32_t len = 0;
    if (slm_example_tokens(j.s, &e, &len, err) != LT_OK) goto done;
    if (len > slm_window(j.s)) {
      free(ex[i].instruction), free(ex[i].target);
      too_long++;
      continue;
    }
    ex[kept++] = ex[i];
  }
  n_ex = kept;
  if (too_long)
    job_log(ctx, "%zu examples left out: longer than the LLM's context window (%u tokens)", too_long, slm_window(j.s));
  job_result_int(ctx, "too_long", (int64_t)too_long);
  if (n_ex == 0) {
    lt_fail(err, LT_E_INVALID, "no training example: every LLM answer was dropped or too long");
    goto done;
  }
  /* The LLM: frozen, with LoRA pairs on q and v when asked. */
  train_opts_t to = lora ? (train_opts_t){.what = TRAIN_LORA,
                                          .lora_rank = (uint32_t)job_param_int(ctx, "lora_rank"),
                                          .lora_alpha = 2.0f * (float)job_param_int(ctx, "lora_rank"),
                                          .lora_targets = TRAIN_LORA_Q | TRAIN_LORA_K | TRAIN_LORA_V | TRAIN_LORA_O,
                                          .seed = (uint64_t)job_param_int(ctx, "seed")}
                         : (train_opts_t){.what = TRAIN_INPUTS};
  if (!(t = train_new(j.llm, &to, err))) goto done;
  const char *lora_from = job_param_str(ctx, "lora_from");
  if (*lora_from && !lora) {
    lt_fail(err, LT_E_INVALID, "--lora-from needs --lora");
    goto done;
  }
  if (*lora_from) {
    if (train_load_adapter(t, lora_from, err) != LT_OK) goto done;
    job_log(ctx, "LoRA pairs from %s", lora_from);
  }
  tune_opts_t sched = {.lr = job_param_float(ctx, "lr"),
                       .warmup = (uint32_t)job_param_int(ctx, "warmup"),
                       .steps = steps,
                       .schedule = TUNE_COSINE};
  if (lora) {
    tune_opts_t lo = sched;
    lo.lr = job_param_float(ctx, "lora_lr");
    lo.clip = job_param_float(ctx, "clip");
    if (!(u = tuner_new(t, &lo, err))) goto done;
  }
  if (!(log = out_create(ctx, out, "speech-log.jsonl", err))) goto done;
  mb = calloc(batch, sizeof *mb), order = malloc(n_ex * sizeof *order), recent = calloc(10, sizeof *recent);
  if (!mb || !order || !recent) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  uint64_t rng = (uint64_t)job_param_int(ctx, "seed") * 0x9E3779B97F4A7C15ull + 1;
  size_t at = n_ex;
  job_log(ctx, "%zu examples from %zu rows; %u steps of %u", n_ex, n_rows, steps, batch);
  slm_step_info_t info = {0};
  for (uint32_t step = 1; step <= steps; step++) {
    for (uint32_t b = 0; b < batch; b++) {
      if (at == n_ex) { /* a new epoch: a fresh shuffle */
        for (size_t i = 0; i < n_ex; i++) order[i] = (uint32_t)i;
        for (size_t i = n_ex; i > 1; i--) {
          rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
          size_t k = rng % i;
          uint32_t tmp = order[i - 1];
          order[i - 1] = order[k], order[k] = tmp;
        }
        at = 0;
      }
      const tex_t *e = &ex[order[at++]];
      mb[b] = (slm_example_t){e->row->feats, e->row->T, e->instruction, e->target};
    }
    slm_step_opts_t so = {.lr = (float)tune_lr_at(&sched, step - 1),
                          .weight_decay = (float)job_param_float(ctx, "weight_decay"),
                          .clip = (float)job_param_float(ctx, "clip"),
                          .step = step};
    if (slm_train_step(j.s, t, u, mb, batch, &so, &info, err) != LT_OK) goto done;
    if (!isfinite(info.loss)) {
      lt_fail(err, LT_E_NUMERIC, "step %u: the loss is not finite", step);
      goto done;
    }
    recent[step % 10] = info.loss;
    json_t *o = json_pack("{s:i, s:f, s:f, s:f, s:i}", "step", step, "loss", info.loss, "grad_norm", info.grad_norm,
                          "lr", (double)so.lr, "tokens", info.tokens);
    if (dj_write(log, o, err) != LT_OK) goto done;
    job_metric(ctx, "loss", info.loss, step);
    job_progress(ctx, step, steps, "steps");
    if (step == 1 || step % 50 == 0 || step == steps)
      job_log(ctx, "step %u: loss %.4f, gradient norm %.3g, lr %.3g", step, info.loss, info.grad_norm, (double)so.lr);
    job_stop_t stop = job_should_stop(ctx);
    if (stop != JOB_GO) {
      res = dj_stopped(stop);
      goto done;
    }
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/speech", out);
  speech_config_t *cw = (speech_config_t *)speech_config(j.sp);
  snprintf(cw->llm, sizeof cw->llm, "%s", model);
  if (speech_save(j.sp, dir, err) != LT_OK) goto done;
  job_artifact(ctx, "speech", dir);
  if (lora) {
    char ad[4096];
    snprintf(ad, sizeof ad, "%s/adapter", out);
    if (util_mkdir_p(ad, 0755, err) != LT_OK || train_save_adapter(t, ad, model, err) != LT_OK) goto done;
    job_artifact(ctx, "adapter", ad);
    job_result_str(ctx, "adapter", ad);
  }
  double last = 0;
  uint32_t k = steps < 10 ? steps : 10;
  for (uint32_t i = 0; i < k; i++) last += recent[(steps - i) % 10];
  job_result_str(ctx, "stage", stage);
  job_result_str(ctx, "speech", dir);
  job_result_int(ctx, "steps", steps);
  job_result_int(ctx, "rows", (int64_t)n_rows);
  job_result_int(ctx, "examples", (int64_t)n_ex);
  job_result_int(ctx, "dropped", (int64_t)dropped);
  job_result_float(ctx, "final_loss", last / k);
  job_report_write(ctx, dir, NULL);
  res = JOB_SUCCEEDED;
done:
  if (res == JOB_FAILED) res = failed(ctx);
  if (targets) fclose(targets);
  if (log) fclose(log);
  for (size_t i = 0; ex && i < n_ex; i++) free(ex[i].instruction), free(ex[i].target);
  free(ex), free(mb), free(order), free(recent);
  tuner_destroy(&u);
  train_destroy(&t);
  dj_pool_free(&pool);
  rows_free(rows, n_rows);
  sjob_close(&j);
  return res;
}

/* ---- speech-eval ---- */

/* An answer follows the instruction when its word error rate against the LLM's own answer is below that against
 * the transcript and at most this; it transcribes in the mirror case; else neither. */
#define VERDICT_WER 0.5

job_outcome_t run_speech_eval(job_ctx_t *ctx, lt_err_t *err) {
  job_outcome_t res = JOB_FAILED;
  sjob_t j;
  srow_t *rows = NULL;
  size_t n_rows = 0, np = 0;
  dj_pool_t pool = {0};
  float **sr = NULL;
  uint32_t *nsr = NULL;
  slm_prompt_t *p = NULL, *tp = NULL;
  const float **pr = NULL, **none = NULL;
  char **ans = NULL, **llm = NULL;
  size_t *row_of = NULL;
  const char **ins = NULL;
  uint32_t max_tokens = (uint32_t)job_param_int(ctx, "max_tokens"), batch = (uint32_t)job_param_int(ctx, "batch");
  if (sjob_open(ctx, &j, job_param_str(ctx, "speech"), err) != LT_OK) goto done;
  if (rows_load(&j, job_param_str(ctx, "data"), (uint64_t)job_param_int(ctx, "max_rows"),
                job_param_float(ctx, "max_audio_seconds"), &rows, &n_rows, err) != LT_OK)
    goto done;
  if (dj_pool_load(ctx, &pool, err) != LT_OK) goto done;
  size_t cap = n_rows * (pool.n + 1);
  sr = calloc(n_rows, sizeof *sr), nsr = calloc(n_rows, sizeof *nsr), p = calloc(cap, sizeof *p);
  tp = calloc(cap, sizeof *tp), pr = calloc(cap, sizeof *pr), none = calloc(cap, sizeof *none);
  ans = calloc(cap, sizeof *ans), llm = calloc(cap, sizeof *llm), row_of = calloc(cap, sizeof *row_of);
  ins = calloc(cap, sizeof *ins);
  if (!sr || !nsr || !p || !tp || !pr || !none || !ans || !llm || !row_of || !ins) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  const char *asr = job_param_str(ctx, "asr_instruction");
  for (size_t i = 0; i < n_rows; i++) {
    if (slm_speech_rows(j.s, rows[i].feats, rows[i].T, &sr[i], &nsr[i], err) != LT_OK) goto done;
    for (size_t k = 0; k <= pool.n; k++) {
      ins[np] = k == 0 ? asr : pool.v[k - 1], row_of[np] = i, pr[np] = sr[i];
      if (slm_prompt_speech(j.s, ins[np], nsr[i], NULL, &p[np], err) != LT_OK) goto done;
      if (k > 0 && slm_prompt_text(j.s, ins[np], rows[i].text, &tp[np], err) != LT_OK) goto done;
      np++;
    }
  }
  if (answer_all(&j, p, pr, np, batch, max_tokens, ans, "answers", err) != LT_OK) goto done;
  /* How likely the LLM finds each transcript after its speech: a measure that moves before the answers do. The
   * control puts the next row's speech before the same transcript: a model that hears finds its own speech's
   * transcript likelier, and the gap between the two is what the speech tells it. */
  double nll_sum = 0, other_sum = 0;
  uint64_t nll_count = 0, other_count = 0;
  for (size_t i = 0; i < n_rows; i++) {
    for (int c = 0; c < (n_rows > 1 ? 2 : 1); c++) {
      size_t o = c ? (i + 1) % n_rows : i;
      slm_prompt_t q;
      if (slm_prompt_speech(j.s, asr, nsr[o], rows[i].text, &q, err) != LT_OK) goto done;
      lt_status_t qs = slm_target_nll(j.s, &q, (const float *const *)&sr[o], 1, c ? &other_sum : &nll_sum,
                                      c ? &other_count : &nll_count, err);
      slm_prompt_free(&q);
      if (qs != LT_OK) goto done;
    }
  }
  /* The LLM's own answers from the transcripts, for the instruction prompts. */
  size_t nt = 0;
  slm_prompt_t *tq = calloc(np, sizeof *tq);
  size_t *tix = calloc(np, sizeof *tix);
  char **tans = calloc(np, sizeof *tans);
  lt_status_t st = tq && tix && tans ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  for (size_t i = 0; st == LT_OK && i < np; i++)
    if (tp[i].n) tq[nt] = tp[i], tix[nt++] = i;
  /* The LLM's own answers come from the LLM as it is: without the job's adapter, as speech-train made them. */
  const model_adapter_t *ad = model_get_adapter(j.llm);
  model_set_adapter(j.llm, NULL);
  if (st == LT_OK) st = answer_all(&j, tq, none, nt, batch, max_tokens, tans, "LLM answers", err);
  model_set_adapter(j.llm, ad);
  for (size_t k = 0; st == LT_OK && k < nt; k++) llm[tix[k]] = tans[k], tans[k] = NULL;
  free(tq), free(tix), free(tans);
  if (st != LT_OK) goto done;
  uint64_t edits = 0, words = 0, n_ins = 0, follow = 0, transcribe = 0, neither = 0;
  double to_llm = 0;
  for (size_t i = 0; i < np; i++) {
    const srow_t *r = &rows[row_of[i]];
    uint32_t w, e = slm_word_edits(ans[i], r->text, &w);
    job_output_begin(ctx);
    job_output_int(ctx, "row", (int64_t)row_of[i] + 1);
    job_output_str(ctx, "instruction", ins[i]);
    job_output_str(ctx, "answer", ans[i]);
    job_output_str(ctx, "text", r->text);
    if (!llm[i]) { /* a transcription prompt */
      edits += e, words += w;
      job_output_int(ctx, "edits", e);
      job_output_int(ctx, "words", w);
    } else {
      uint32_t wl, el = slm_word_edits(ans[i], llm[i], &wl);
      double d_llm = wl ? (double)el / wl : (ans[i][0] ? 1.0 : 0.0), d_text = w ? (double)e / w : 1.0;
      /* Closer to one than to the other, and close: within half the reference's length in word edits. */
      bool f = d_llm < d_text && d_llm <= VERDICT_WER, tr = d_text < d_llm && d_text <= VERDICT_WER;
      const char *v = f ? "follows" : tr ? "transcribes" : "neither";
      follow += f, transcribe += tr, neither += !f && !tr;
      to_llm += d_llm;
      n_ins++;
      job_output_str(ctx, "llm_answer", llm[i]);
      job_output_float(ctx, "wer_to_llm_answer", d_llm);
      job_output_float(ctx, "wer_to_text", d_text);
      job_output_str(ctx, "verdict", v);
    }
    job_output_end(ctx);
  }
  double wer = words ? (double)edits / words : 0;
  job_log(ctx, "transcription: WER %.3f (%llu edits over %llu words, %zu rows)", wer, (unsigned long long)edits,
          (unsigned long long)words, n_rows);
  job_result_float(ctx, "wer", wer);
  job_result_int(ctx, "rows", (int64_t)n_rows);
  job_result_int(ctx, "words", (int64_t)words);
  job_result_int(ctx, "edits", (int64_t)edits);
  job_result_float(ctx, "transcript_nll", nll_count ? nll_sum / (double)nll_count : 0);
  job_log(ctx, "transcripts after their speech: %.4f nats per token over %llu tokens",
          nll_count ? nll_sum / (double)nll_count : 0, (unsigned long long)nll_count);
  if (other_count) {
    double other = other_sum / (double)other_count, gain = other - nll_sum / (double)nll_count;
    job_result_float(ctx, "transcript_nll_other_speech", other);
    job_result_float(ctx, "listening_gain", gain);
    job_log(ctx, "after another row's speech: %.4f nats per token; listening gain %.4f", other, gain);
  }
  if (n_ins) {
    job_log(ctx, "instruction prompts: %llu; follow %.3f, transcribe %.3f, neither %.3f", (unsigned long long)n_ins,
            (double)follow / n_ins, (double)transcribe / n_ins, (double)neither / n_ins);
    job_result_int(ctx, "instruction_prompts", (int64_t)n_ins);
    job_result_float(ctx, "follow_share", (double)follow / n_ins);
    job_result_float(ctx, "transcribe_share", (double)transcribe / n_ins);
    job_result_float(ctx, "neither_share", (double)neither / n_ins);
    job_result_float(ctx, "mean_wer_to_llm_answer", to_llm / n_ins);
  }
  res = JOB_SUCCEEDED;
done:
  if (res == JOB_FAILED) res = failed(ctx);
  for (size_t i = 0; i < np; i++) slm_prompt_free(&p[i]), slm_prompt_free(&tp[i]), free(ans[i]), free(llm[i]);
  for (size_t i = 0; sr && i < n_rows; i++) free(sr[i]);
  free(sr), free(nsr), free(p), free(tp), free(pr), free(none), free(ans), free(llm), free(row_of), free(ins);
  dj_pool_free(&pool);
  rows_free(rows, n_rows);
  sjob_close(&j);
  return res;
}

/* ---- generate --audio ---- */

job_outcome_t speech_generate(job_ctx_t *ctx, lt_err_t *err) {
  job_outcome_t res = JOB_FAILED;
  sjob_t j;
  float *feats = NULL, *rows = NULL;
  uint32_t T = 0, nr = 0;
  size_t n = job_param_list_len(ctx, "prompt");
  slm_prompt_t *p = calloc(n, sizeof *p);
  const float **pr = calloc(n, sizeof *pr);
  char **ans = calloc(n, sizeof *ans);
  if (!p || !pr || !ans) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  if (sjob_open(ctx, &j, job_param_str(ctx, "speech"), err) != LT_OK) goto done;
  const char *audio = job_param_str(ctx, "audio");
  if (slm_features(j.s, audio, 0, &feats, &T, err) != LT_OK) goto done;
  if (slm_speech_rows(j.s, feats, T, &rows, &nr, err) != LT_OK) goto done;
  job_log(ctx, "%s: %.2f s of audio, %u frames, %u rows of speech into the LLM; answering greedily", audio, T * 0.01, T,
          nr);
  for (size_t i = 0; i < n; i++) {
    pr[i] = rows;
    if (slm_prompt_speech(j.s, job_param_list_at(ctx, "prompt", i), nr, NULL, &p[i], err) != LT_OK) goto done;
  }
  if (answer_all(&j, p, pr, n, 8, (uint32_t)job_param_int(ctx, "max_tokens"), ans, "prompts", err) != LT_OK) goto done;
  for (size_t i = 0; i < n; i++) {
    const char *prompt = job_param_list_at(ctx, "prompt", i);
    job_text(ctx, (uint32_t)i, prompt, ans[i], strlen(ans[i]), true);
    job_output_begin(ctx);
    job_output_str(ctx, "prompt", prompt);
    job_output_str(ctx, "text", ans[i]);
    job_output_str(ctx, "audio", audio);
    job_output_int(ctx, "speech_rows", nr);
    job_output_int(ctx, "item", (int64_t)i);
    job_output_end(ctx);
  }
  job_result_int(ctx, "prompts", (int64_t)n);
  job_result_strs(ctx, "texts", (const char *const *)ans, n);
  res = JOB_SUCCEEDED;
done:
  if (res == JOB_FAILED) res = failed(ctx);
  for (size_t i = 0; p && i < n; i++) slm_prompt_free(&p[i]), free(ans ? ans[i] : NULL);
  free(p), free(pr), free(ans), free(feats), free(rows);
  sjob_close(&j);
  return res;
}
