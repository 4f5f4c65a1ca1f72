/* JSONL prompt sets and the steering configuration shared by the steering kinds. */
#include "jobs/steer_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void seqs_free(seqs_t *s) {
  if (!s) return;
  for (size_t i = 0; s->ids && i < s->n; i++) free(s->ids[i]);
  free(s->ids);
  free(s->lens);
  memset(s, 0, sizeof *s);
}

/* Tokenizes prefix + text (either may be empty) into *ids, *len. */
static lt_status_t encode_joined(const tok_t *tok, const char *prefix, const char *text, unsigned flags, int32_t **ids,
                                 uint32_t *len, lt_err_t *err) {
  size_t a = strlen(prefix), b = strlen(text), n = 0;
  char *joined = malloc(a + b + 1);
  if (!joined) return lt_fail(err, LT_E_NOMEM, "out of memory");
  memcpy(joined, prefix, a);
  memcpy(joined + a, text, b + 1);
  lt_status_t st = tok_encode(tok, joined, a + b, flags, ids, &n, err);
  free(joined);
  if (st == LT_OK && n == 0) st = lt_fail(err, LT_E_INVALID, "\"%.60s\" encodes to no tokens", text);
  if (st == LT_OK && n > UINT32_MAX) st = lt_fail(err, LT_E_LIMIT, "a text of %zu tokens is too long", n);
  if (st != LT_OK) {
    free(*ids);
    *ids = NULL;
  }
  *len = (uint32_t)n;
  return st;
}

/* Tokenizes prefix + texts[i] for i < n into out. */
static lt_status_t encode_all(const tok_t *tok, const char *prefix, const char *const *texts, size_t n, unsigned flags,
                              seqs_t *out, lt_err_t *err) {
  memset(out, 0, sizeof *out);
  out->ids = calloc(n ? n : 1, sizeof *out->ids);
  out->lens = calloc(n ? n : 1, sizeof *out->lens);
  if (!out->ids || !out->lens) {
    seqs_free(out);
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  out->n = n;
  for (size_t i = 0; i < n; i++) {
    lt_status_t st = encode_joined(tok, prefix, texts[i], flags, &out->ids[i], &out->lens[i], err);
    if (st != LT_OK) {
      seqs_free(out);
      return st;
    }
  }
  return LT_OK;
}

lt_status_t texts_load(const char *path, const tok_t *tok, unsigned flags, seqs_t *out, lt_err_t *err) {
  memset(out, 0, sizeof *out);
  json_t **rows = NULL;
  size_t n = 0;
  lt_status_t st = jsonl_load(path, 0, &rows, &n, err);
  if (st != LT_OK) return st;
  const char **texts = calloc(n ? n : 1, sizeof *texts);
  if (!texts) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  for (size_t i = 0; st == LT_OK && i < n; i++) {
    texts[i] = jsonl_str(rows[i], "text") ? jsonl_str(rows[i], "text") : jsonl_str(rows[i], "prompt");
    if (!texts[i]) st = lt_fail(err, LT_E_INVALID, "%s: row %zu has no \"text\" string", path, i + 1);
  }
  if (st == LT_OK && n == 0) st = lt_fail(err, LT_E_INVALID, "%s: no rows", path);
  if (st == LT_OK) st = encode_all(tok, "", texts, n, flags, out, err);
  free(texts);
  jsonl_free(rows, n);
  return st;
}

lt_status_t job_means(job_ctx_t *ctx, model_t *m, const seqs_t *set, uint32_t skip, const bool *want, double *mean,
                      double *norm, uint32_t *used, job_tally_t *t, job_stop_t *stop, lt_err_t *err) {
  const model_config_t *cf = model_config(m);
  uint32_t L = cf->n_layers + 1, d = cf->hidden_size;
  double *cm = calloc((uint64_t)L * d, sizeof *cm), *cn = calloc(L, sizeof *cn);
  double *sm = calloc((uint64_t)L * d, sizeof *sm), *sn = calloc(L, sizeof *sn);
  uint64_t positions = 0;
  *used = 0;
  *stop = JOB_GO;
  lt_status_t st = cm && cn && sm && sn ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  for (size_t i = 0; st == LT_OK && i < set->n; i += 16) {
    uint32_t k = set->n - i < 16 ? (uint32_t)(set->n - i) : 16, u = 0;
    uint64_t pos = 0;
    for (uint32_t j = 0; j < k; j++) pos += set->lens[i + j] > skip ? set->lens[i + j] - skip : 0;
    if ((st = steer_means(m, (const int32_t *const *)set->ids + i, set->lens + i, k, skip, want, cm, cn, &u, err)) !=
        LT_OK)
      break;
    for (uint32_t l = 0; l < L && u; l++) {
      if (!want[l]) continue;
      for (uint32_t j = 0; j < d; j++) sm[(uint64_t)l * d + j] += cm[(uint64_t)l * d + j] * u;
      sn[l] += cn[l] * (double)pos;
    }
    *used += u;
    positions += pos;
    t->done += k;
    job_progress(ctx, t->done, t->total, "prompts");
    if ((*stop = job_should_stop(ctx)) != JOB_GO) break;
  }
  for (uint32_t l = 0; st == LT_OK && l < L; l++) {
    if (!want[l]) continue;
    for (uint32_t j = 0; j < d; j++) mean[(uint64_t)l * d + j] = *used ? sm[(uint64_t)l * d + j] / *used : NAN;
    norm[l] = positions ? sn[l] / (double)positions : NAN;
  }
  free(cm), free(cn), free(sm), free(sn);
  return st;
}

lt_status_t job_steer_init(job_steer_t *s, job_ctx_t *ctx, model_t *m, const tok_t *tok, const char *const *texts,
                           size_t n, unsigned flags, lt_err_t *err) {
  memset(s, 0, sizeof *s);
  const model_config_t *cf = model_config(m);
  const char *vec = job_param_str(ctx, "steer_vector"), *cp = job_param_str(ctx, "contrast_prompt");
  const char *rp = job_param_str(ctx, "reverse_prompt"), *pp = job_param_str(ctx, "positive_prompt");
  int64_t layer = job_param_int(ctx, "steer_layer");
  const char *prefix = "", *twin_prefix = NULL;
  lt_status_t st = LT_OK;
  if (*vec) {
    uint32_t recorded = 0;
    char made_with[1024];
    if ((st = steer_vector_load(vec, cf->hidden_size, &s->vec, &recorded, made_with, sizeof made_with, err)) != LT_OK)
      return st;
    if (*made_with && strcmp(made_with, model_path(m)) != 0)
      job_log(ctx, "note: %s was measured on %s, not on %s", vec, made_with, model_path(m));
    s->cfg = (steer_cfg_t){.method = STEER_ADD,
                           .layer = layer >= 0 ? (uint32_t)layer : recorded,
                           .vec = s->vec,
                           .alpha = (float)job_param_float(ctx, "steer_alpha")};
  } else if (*cp) {
    s->cfg = (steer_cfg_t){.method = STEER_CONTRAST,
                           .layer = (uint32_t)layer,
                           .exponent = (float)job_param_float(ctx, "contrast_exponent"),
                           .renorm = job_param_bool(ctx, "contrast_renorm")};
    twin_prefix = cp;
  } else if (*rp) {
    s->cfg = (steer_cfg_t){.method = STEER_ROSE, .alpha = (float)job_param_float(ctx, "rose_alpha")};
    prefix = pp;
    twin_prefix = rp;
  }
  if (*pp && s->cfg.method != STEER_ROSE) job_log(ctx, "note: positive_prompt is used by ROSE only (reverse_prompt)");
  if ((s->cfg.method == STEER_ADD || s->cfg.method == STEER_CONTRAST) && s->cfg.layer >= cf->n_layers)
    st = lt_fail(err, LT_E_INVALID, "steer_layer %u is outside the model's blocks 0..%u", s->cfg.layer,
                 cf->n_layers - 1);
  if (st == LT_OK) st = encode_all(tok, prefix, texts, n, flags, &s->prompts, err);
  if (st == LT_OK && twin_prefix) st = encode_all(tok, twin_prefix, texts, n, flags, &s->twins, err);
  if (st != LT_OK) {
    job_steer_free(s);
    return st;
  }
  s->cfg.twins = (const int32_t *const *)s->twins.ids;
  s->cfg.twin_lens = s->twins.lens;
  return LT_OK;
}

void job_steer_free(job_steer_t *s) {
  if (!s) return;
  free(s->vec);
  seqs_free(&s->prompts);
  seqs_free(&s->twins);
  memset(s, 0, sizeof *s);
}
