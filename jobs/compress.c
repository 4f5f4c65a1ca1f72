/* The `compress` kind: calibrate once, drop / prune / quantise as the methods ask, write a folder Lathe loads, and
 * report the scores behind every decision with perplexity, speed and memory before and after
 * (docs/compression.md). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "methods/compress.h"
#include "engine/model/gguf_write.h"
#include "engine/text/jsonl.h"
#include "jobs/plot.h"
#include "jobs/runners.h"

#define MAX_CALIB_TOKENS (64ull << 20) /* calibration tokens read at most (windows are drawn from them) */
#define SPEED_REPS 3u                  /* timed runs per speed figure (the best counts) */

/* A JSON array of n doubles (NaN as null). */
static json_t *doubles(const double *v, uint64_t n) {
  json_t *a = json_array();
  for (uint64_t i = 0; i < n; i++) json_array_append_new(a, isnan(v[i]) ? json_null() : json_real(v[i]));
  return a;
}

/* The indices i < n with flag[i]. */
static json_t *indices(const bool *flag, uint32_t n) {
  json_t *a = json_array();
  for (uint32_t i = 0; i < n; i++)
    if (flag[i]) json_array_append_new(a, json_integer(i));
  return a;
}

/* {"prefill_tok_s", "decode_tok_s", "weight_device_bytes", "weight_file_bytes", "activation_bytes"} */
static json_t *speed_json(const compress_speed_t *s) {
  return json_pack("{s:f, s:f, s:I, s:I, s:I}", "prefill_tok_s", s->prefill_tok_s, "decode_tok_s", s->decode_tok_s,
                   "weight_device_bytes", (json_int_t)s->weight_device_bytes, "weight_file_bytes",
                   (json_int_t)s->weight_file_bytes, "activation_bytes", (json_int_t)s->activation_bytes);
}

/* Stops calibration when the job is cancelled or asked to stop. */
/* The job folder's pictures: scores.svg, each block's calibration scores (block drop's and layer drop's) with the
 * dropped blocks shaded; experts.svg for a MoE model, each expert's mean router probability per block with the
 * dropped experts crossed out. A picture that cannot be written is a log line, not a failure. */
static void write_plots(job_ctx_t *ctx, const char *model, const model_config_t *cfg, const compress_calib_t *calib,
                        const compress_methods_t *meth, const compress_choice_t *choice) {
  uint32_t L = cfg->n_layers, E = cfg->n_experts;
  char path[4200], title[200];
  lt_err_t e = {0};
  bool *marked = calloc(L, sizeof *marked);
  if (!marked) return;
  for (uint32_t l = 0; l < L; l++)
    marked[l] = (meth->block_drop && choice->drop_block && choice->drop_block[l]) ||
                (meth->layer_drop && choice->drop_ffn && choice->drop_ffn[l]);
  plot_curve_t curves[2] = {{"block: cos(h_l, h_l+1)", compress_block_scores(calib), 0},
                            {"layer: cos(x, x + FFN(x))", compress_layer_scores(calib), 0}};
  snprintf(title, sizeof title, "compress: per-block scores (high: the block changes little; %s)",
           meth->block_drop   ? "the highest blocks dropped"
           : meth->layer_drop ? "the highest feed-forward layers dropped"
                              : "nothing dropped");
  plot_spec_t spec = {.title = title,
                      .subtitle = model,
                      .xlabel = "block",
                      .ylabel = {"mean cosine similarity", NULL},
                      .n = L,
                      .curves = curves,
                      .n_curves = 2,
                      .band_lo = -1,
                      .band_hi = -1,
                      .mark = -1,
                      .marked = meth->block_drop || meth->layer_drop ? marked : NULL,
                      .marked_label = meth->block_drop ? "dropped block" : "dropped FFN",
                      .fit = true};
  snprintf(path, sizeof path, "%s/scores.svg", job_dir(ctx));
  job_picture(ctx, plot_svg_write(path, &spec, &e), "scores_plot", "scores.svg", &e);
  free(marked);
  const double *ex = compress_expert_scores(calib);
  if (!E || !ex) return;
  double *v = malloc((uint64_t)L * E * sizeof *v);
  if (!v) return;
  for (uint32_t l = 0; l < L; l++)
    for (uint32_t x = 0; x < E; x++)
      v[(uint64_t)l * E + x] = x < model_config_experts(cfg, l) ? ex[(uint64_t)l * E + x] : NAN;
  plot_heat_t h = {.title = "compress: expert usage (mean router probability per token)",
                   .subtitle = model,
                   .xlabel = "expert",
                   .ylabel = "block",
                   .scale_label = "probability",
                   .rows = L,
                   .cols = E,
                   .v = v,
                   .marked = meth->expert_drop ? choice->drop_expert : NULL,
                   .marked_label = "dropped expert"};
  snprintf(path, sizeof path, "%s/experts.svg", job_dir(ctx));
  job_picture(ctx, plot_heat_write(path, &h, &e), "experts_plot", "experts.svg", &e);
  free(v);
}

static bool on_window(void *user, uint32_t done, uint32_t total) {
  job_ctx_t *ctx = user;
  job_progress(ctx, done, total, "windows");
  return job_should_stop(ctx) == JOB_GO;
}

/* Reads the methods and their parameters (validated by the daemon). */
static compress_methods_t read_methods(job_ctx_t *ctx) {
  compress_methods_t m = {.drop = (uint32_t)job_param_int(ctx, "drop"),
                          .keep = (uint32_t)job_param_int(ctx, "keep"),
                          .global = job_param_bool(ctx, "global"),
                          .sparsity = job_param_float(ctx, "sparsity"),
                          .bits = (uint32_t)job_param_int(ctx, "bits"),
                          .group = (uint32_t)job_param_int(ctx, "group")};
  for (size_t i = 0; i < job_param_list_len(ctx, "method"); i++) {
    const char *s = job_param_list_at(ctx, "method", i);
    m.block_drop |= !strcmp(s, "block-drop");
    m.layer_drop |= !strcmp(s, "layer-drop");
    m.expert_drop |= !strcmp(s, "expert-drop");
    m.prune |= !strcmp(s, "prune");
    m.quantize |= !strcmp(s, "quantize");
  }
  const char *pattern = job_param_str(ctx, "pattern");
  if (*pattern && sscanf(pattern, "%u:%u", &m.keep_n, &m.keep_m) != 2) m.keep_n = m.keep_m = 0;
  return m;
}

/* Perplexity of the eval windows under m with the choice's drops applied by hooks (the random baselines). */
static lt_status_t hooked_ppl(model_t *m, const compress_choice_t *ch, const int32_t *ids, uint64_t n, uint32_t T,
                              uint32_t windows, double *ppl, lt_err_t *err) {
  model_hooks_t h = compress_choice_hooks(ch);
  double nll;
  uint64_t tokens;
  lt_status_t st = compress_eval_nll(m, ids, n, T, windows, &h, &nll, &tokens, err);
  *ppl = exp(nll);
  return st;
}

job_outcome_t run_compress(job_ctx_t *ctx, lt_err_t *err) {
  const char *path = job_param_str(ctx, "model"), *out_dir = job_param_str(ctx, "output");
  compress_methods_t meth = read_methods(ctx);
  uint64_t seed = (uint64_t)job_param_int(ctx, "seed");
  uint32_t windows = (uint32_t)job_param_int(ctx, "eval_windows");
  uint32_t n_decode = (uint32_t)job_param_int(ctx, "decode_tokens");
  uint32_t baselines = (uint32_t)job_param_int(ctx, "baseline_seeds");
  job_outcome_t outcome = JOB_FAILED;
  tok_t *tok = NULL;
  model_t *m = job_model(ctx, path, &tok, err), *cm = NULL;
  if (!m) return JOB_FAILED;
  const model_config_t *cfg = model_config(m);
  uint32_t T = (uint32_t)job_param_int(ctx, "tokens");
  if (cfg->max_position && T > cfg->max_position) T = cfg->max_position;
  int32_t *cal = NULL, *ev = NULL;
  uint64_t n_cal = 0, n_ev = 0;
  compress_calib_t *calib = NULL;
  compress_choice_t choice = {0};
  json_t *report = json_object();
  compress_calib_opts_t co = {.samples = (uint32_t)job_param_int(ctx, "samples"),
                              .tokens = T,
                              .seed = seed,
                              .inputs = meth.prune,
                              .on_window = on_window,
                              .ctx = ctx};
  compress_speed_t before, after;
  double nll0, nll1;
  uint64_t scored;
  job_log(ctx, "calibrating on %u windows of %u tokens", co.samples, T);
  const char *eval_path = job_param_str(ctx, "eval");
  char eval_name[4200];
  snprintf(eval_name, sizeof eval_name, "%s", eval_path);
  if (compress_read_tokens(tok, job_param_str(ctx, "data"), MAX_CALIB_TOKENS, &cal, &n_cal, err) != LT_OK) goto done;
  if (*eval_path) {
    if (compress_read_tokens(tok, eval_path, windows ? (uint64_t)windows * T + T + n_decode : 0, &ev, &n_ev, err) !=
        LT_OK)
      goto done;
  } else {
    /* No --eval: the last tenth of --data's tokens (at least two windows) is held out of calibration and scored. */
    uint64_t hold = n_cal / 10 > 2 * (uint64_t)T + 1 + n_decode ? n_cal / 10 : 2 * (uint64_t)T + 1 + n_decode;
    if (hold + T + 1 > n_cal) {
      lt_fail(err, LT_E_INVALID,
              "--data holds %llu tokens: too few to hold out %llu for the evaluation and calibrate on the rest; pass "
              "--eval or more data",
              (unsigned long long)n_cal, (unsigned long long)hold);
      goto done;
    }
    if (!(ev = malloc(hold * sizeof *ev))) {
      lt_fail(err, LT_E_NOMEM, "out of memory");
      goto done;
    }
    memcpy(ev, cal + (n_cal - hold), hold * sizeof *ev);
    n_ev = hold, n_cal -= hold;
    snprintf(eval_name, sizeof eval_name, "the last %llu tokens of %s (held out of calibration)",
             (unsigned long long)hold, job_param_str(ctx, "data"));
    job_log(ctx, "no --eval: scoring %s", eval_name);
  }
  if (compress_calibrate(&calib, m, cal, n_cal, &co, err) != LT_OK) goto done;
  job_stop_t stop = job_should_stop(ctx);
  if (stop != JOB_GO) {
    outcome = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
    goto done;
  }
  if (compress_choose(&choice, cfg, calib, &meth, false, 0, err) != LT_OK) goto done;
  uint32_t L = cfg->n_layers, E = cfg->n_experts;
  json_t *methods = json_array();
  for (size_t i = 0; i < job_param_list_len(ctx, "method"); i++)
    json_array_append_new(methods, json_string(job_param_list_at(ctx, "method", i)));
  json_object_set_new(report, "model", json_string(path));
  json_object_set_new(report, "output", json_string(out_dir));
  json_object_set_new(report, "methods", methods);
  json_object_set_new(report, "calibration",
                      json_pack("{s:s, s:i, s:i, s:I}", "data", job_param_str(ctx, "data"), "samples", co.samples,
                                "tokens", T, "seed", (json_int_t)seed));
  if (meth.block_drop)
    json_object_set_new(report, "block_drop",
                        json_pack("{s:s, s:o, s:o}", "score", "mean cos(h_l, h_l+1)", "scores",
                                  doubles(compress_block_scores(calib), L), "dropped", indices(choice.drop_block, L)));
  if (meth.layer_drop)
    json_object_set_new(report, "layer_drop",
                        json_pack("{s:s, s:o, s:o}", "score", "mean cos(x, x + FFN(norm(x)))", "scores",
                                  doubles(compress_layer_scores(calib), L), "dropped", indices(choice.drop_ffn, L)));
  if (meth.expert_drop) {
    json_t *sc = json_array(), *dr = json_array();
    for (uint32_t l = 0; l < L; l++) {
      json_array_append_new(sc, doubles(compress_expert_scores(calib) + (uint64_t)l * E, model_config_experts(cfg, l)));
      json_array_append_new(dr, indices(choice.drop_expert + (uint64_t)l * E, model_config_experts(cfg, l)));
    }
    json_object_set_new(report, "expert_drop",
                        json_pack("{s:s, s:b, s:o, s:o}", "score", "mean router probability", "global", meth.global,
                                  "scores", sc, "dropped", dr));
  }
  write_plots(ctx, path, cfg, calib, &meth, &choice);
  /* Before: perplexity and speed of the original. */
  if (compress_eval_nll(m, ev, n_ev, T, windows, NULL, &nll0, &scored, err) != LT_OK ||
      compress_measure(m, ev, n_ev, T, n_decode, SPEED_REPS, &before, err) != LT_OK)
    goto done;
  job_metric(ctx, "perplexity_before", exp(nll0), 0);
  /* The drops applied by hooks on the original, by the scores and at random (the baselines). */
  if (meth.block_drop || meth.layer_drop || meth.expert_drop) {
    double chosen, sum = 0;
    if (hooked_ppl(m, &choice, ev, n_ev, T, windows, &chosen, err) != LT_OK) goto done;
    /* The report owns the lists from the start, so an error half-way leaks nothing. */
    json_t *rnd = json_array(), *drops = json_array();
    json_t *b = json_pack("{s:f, s:o, s:o}", "scored_choice_perplexity", chosen, "random_perplexities", rnd,
                          "random_drops", drops);
    json_object_set_new(report, "baseline", b);
    for (uint32_t s = 1; s <= baselines; s++) {
      compress_choice_t rc;
      double p;
      if (compress_choose(&rc, cfg, calib, &meth, true, seed + 1000 * s, err) != LT_OK) goto done;
      lt_status_t st = hooked_ppl(m, &rc, ev, n_ev, T, windows, &p, err);
      json_t *ex = json_array();
      for (uint32_t l = 0; E && l < L; l++) json_array_append_new(ex, indices(rc.drop_expert + (uint64_t)l * E, E));
      json_array_append_new(drops, json_pack("{s:o, s:o, s:o}", "blocks", indices(rc.drop_block, L), "layers",
                                             indices(rc.drop_ffn, L), "experts", ex));
      compress_choice_free(&rc);
      if (st != LT_OK) goto done;
      json_array_append_new(rnd, json_real(p));
      sum += p;
      job_log(ctx, "random drop %u: perplexity %.4f", s, p);
    }
    if (baselines) json_object_set_new(b, "random_mean_perplexity", json_real(sum / baselines));
  }
  /* The compressed folder, reloaded and measured. */
  compress_summary_t sum;
  if (compress_write(path, out_dir, &choice.plan, calib, &sum, err) != LT_OK) goto done;
  job_artifact(ctx, "model", out_dir);
  if (meth.prune)
    json_object_set_new(report, "prune",
                        json_pack("{s:f, s:s, s:I, s:I, s:f, s:i}", "sparsity", meth.sparsity, "pattern",
                                  job_param_str(ctx, "pattern"), "pruned", (json_int_t)sum.pruned, "prunable",
                                  (json_int_t)sum.prunable, "achieved",
                                  sum.prunable ? (double)sum.pruned / (double)sum.prunable : 0.0, "magnitude_fallbacks",
                                  sum.magnitude_fallbacks));
  if (meth.quantize)
    json_object_set_new(report, "quantize",
                        json_pack("{s:i, s:i, s:I, s:f}", "bits", meth.bits, "group", meth.group, "weights",
                                  (json_int_t)sum.quantised, "max_rel_error", sum.quant_max_rel_err));
  if (!(cm = model_load(model_gpu(m), out_dir, NULL, err))) goto done;
  if (compress_eval_nll(cm, ev, n_ev, T, windows, NULL, &nll1, &scored, err) != LT_OK ||
      compress_measure(cm, ev, n_ev, T, n_decode, SPEED_REPS, &after, err) != LT_OK)
    goto done;
  job_metric(ctx, "perplexity_after", exp(nll1), 0);
  json_object_set_new(report, "perplexity",
                      json_pack("{s:s, s:I, s:f, s:f, s:f}", "eval", eval_name, "tokens", (json_int_t)scored, "before",
                                exp(nll0), "after", exp(nll1), "ratio", exp(nll1 - nll0)));
  json_object_set_new(report, "speed",
                      json_pack("{s:i, s:i, s:o, s:o, s:f, s:f, s:f}", "prefill_tokens", T, "decode_tokens", n_decode,
                                "before", speed_json(&before), "after", speed_json(&after), "prefill_ratio",
                                after.prefill_tok_s / before.prefill_tok_s, "decode_ratio",
                                after.decode_tok_s / before.decode_tok_s, "weight_memory_ratio",
                                (double)after.weight_device_bytes / (double)before.weight_device_bytes));
  char rpath[4200];
  snprintf(rpath, sizeof rpath, "%s/report.json", job_dir(ctx));
  if (jsonl_write_file(rpath, report, JSON_INDENT(1), err) != LT_OK) goto done;
  job_artifact(ctx, "report", "report.json");
  /* The same report beside the model it describes, which travels without the job folder. */
  snprintf(rpath, sizeof rpath, "%s/lathe-report.json", out_dir);
  if (jsonl_write_file(rpath, report, JSON_INDENT(1), err) != LT_OK) goto done;
  char gguf[4200] = "";
  if (!strcmp(job_param_str(ctx, "format"), "gguf")) {
    snprintf(gguf, sizeof gguf, "%s/model.gguf", out_dir);
    job_log(ctx, "writing %s", gguf);
    if (model_export_gguf(out_dir, gguf, err) != LT_OK) goto done;
    job_artifact(ctx, "gguf", gguf);
  }
  job_output_begin(ctx);
  job_output_str(ctx, "output", out_dir);
  if (gguf[0]) job_output_str(ctx, "gguf", gguf);
  job_output_float(ctx, "perplexity_before", exp(nll0));
  job_output_float(ctx, "perplexity_after", exp(nll1));
  job_output_float(ctx, "prefill_ratio", after.prefill_tok_s / before.prefill_tok_s);
  job_output_float(ctx, "decode_ratio", after.decode_tok_s / before.decode_tok_s);
  job_output_float(ctx, "weight_memory_ratio", (double)after.weight_device_bytes / (double)before.weight_device_bytes);
  job_output_end(ctx);
  job_result_str(ctx, "output", out_dir);
  if (gguf[0]) job_result_str(ctx, "gguf", gguf);
  job_result_float(ctx, "perplexity_before", exp(nll0));
  job_result_float(ctx, "perplexity_after", exp(nll1));
  job_result_float(ctx, "weight_memory_ratio", (double)after.weight_device_bytes / (double)before.weight_device_bytes);
  outcome = JOB_SUCCEEDED;
done:
  model_destroy(&cm);
  compress_choice_free(&choice);
  compress_calib_destroy(&calib);
  json_decref(report);
  free(cal), free(ev);
  return outcome;
}
