/* Steering: statistics for the layer analysis, residual means, vector files, and steered generation. */
#include "methods/steer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/safetensors.h"

#define PCA_MAX_ITERS 1000
#define PCA_TOL 1e-12 /* squared change of the unit vector between iterations that counts as converged */

/* ---- words ---- */

static bool is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

uint32_t steer_words(const tok_t *t, const int32_t *ids, uint32_t n, int32_t *word_of) {
  uint32_t n_words = 0;
  bool boundary = true; /* the next token with text starts a word */
  for (uint32_t i = 0; i < n; i++) {
    word_of[i] = -1;
    if (ids[i] == tok_bos(t) || ids[i] == tok_eos(t) || tok_token_type(t, ids[i]) == TOK_TYPE_CONTROL) {
      boundary = true;
      continue;
    }
    /* The token's own bytes: the space markers (Ġ, ▁) and byte tokens (<0x0A>) decode to real whitespace. */
    char *text = NULL;
    size_t len = 0;
    if (tok_decode(t, &ids[i], 1, TOK_KEEP_LEADING, &text, &len, NULL) != LT_OK) len = 0;
    const unsigned char *b = (const unsigned char *)text;
    bool all_space = true;
    for (size_t k = 0; k < len; k++) all_space &= is_space(b[k]);
    if (len && all_space)
      boundary = true;
    else if (len) {
      if (boundary || is_space(b[0])) n_words++;
      word_of[i] = (int32_t)n_words - 1;
      boundary = is_space(b[len - 1]);
    }
    free(text);
  }
  return n_words;
}

void steer_pool_max(float *out, const float *h, const int32_t *word_of, uint32_t n, uint32_t d, uint32_t n_words) {
  for (uint64_t i = 0; i < (uint64_t)n_words * d; i++) out[i] = -INFINITY;
  for (uint32_t i = 0; i < n; i++) {
    if (word_of[i] < 0) continue;
    float *o = out + (uint64_t)word_of[i] * d;
    const float *x = h + (uint64_t)i * d;
    for (uint32_t j = 0; j < d; j++)
      if (x[j] > o[j]) o[j] = x[j];
  }
}

void steer_word_sum(double *out, const float *v, const int32_t *word_of, uint32_t n, uint32_t n_words) {
  for (uint32_t w = 0; w < n_words; w++) out[w] = 0;
  for (uint32_t i = 0; i < n; i++)
    if (word_of[i] >= 0) out[word_of[i]] += v[i];
}

/* ---- statistics ---- */

double steer_pca1(double *proj, const float *x, uint32_t n, uint32_t d) {
  for (uint32_t i = 0; i < n; i++) proj[i] = 0;
  double *mean = calloc(d ? d : 1, sizeof *mean), *v = calloc(d ? d : 1, sizeof *v), *u = calloc(d ? d : 1, sizeof *u);
  double explained = 0;
  if (!mean || !v || !u || n == 0 || d == 0) goto out;
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < d; j++) mean[j] += x[(uint64_t)i * d + j];
  for (uint32_t j = 0; j < d; j++) mean[j] /= n;
  /* Start from the centred row of largest norm: it has a component along the leading eigenvector unless every
   * centred row is orthogonal to it, which would make that eigenvalue zero. */
  double total = 0, best = -1;
  uint32_t start = 0;
  for (uint32_t i = 0; i < n; i++) {
    double s = 0;
    for (uint32_t j = 0; j < d; j++) {
      double c = x[(uint64_t)i * d + j] - mean[j];
      s += c * c;
    }
    total += s;
    if (s > best) best = s, start = i;
  }
  if (total <= 0) goto out;
  for (uint32_t j = 0; j < d; j++) v[j] = (x[(uint64_t)start * d + j] - mean[j]) / sqrt(best);
  for (int it = 0; it < PCA_MAX_ITERS; it++) {
    /* u = Xc^T (Xc v), the covariance times v up to the factor 1/n. */
    for (uint32_t j = 0; j < d; j++) u[j] = 0;
    for (uint32_t i = 0; i < n; i++) {
      const float *r = x + (uint64_t)i * d;
      double w = 0;
      for (uint32_t j = 0; j < d; j++) w += (r[j] - mean[j]) * v[j];
      for (uint32_t j = 0; j < d; j++) u[j] += w * (r[j] - mean[j]);
    }
    double norm = 0, change = 0;
    for (uint32_t j = 0; j < d; j++) norm += u[j] * u[j];
    norm = sqrt(norm);
    if (norm == 0) goto out;
    for (uint32_t j = 0; j < d; j++) {
      u[j] /= norm;
      change += (u[j] - v[j]) * (u[j] - v[j]);
      v[j] = u[j];
    }
    if (change < PCA_TOL) break;
  }
  uint32_t big = 0;
  for (uint32_t j = 1; j < d; j++)
    if (fabs(v[j]) > fabs(v[big])) big = j;
  double sign = v[big] < 0 ? -1 : 1, var = 0;
  for (uint32_t i = 0; i < n; i++) {
    double p = 0;
    for (uint32_t j = 0; j < d; j++) p += (x[(uint64_t)i * d + j] - mean[j]) * v[j];
    proj[i] = sign * p;
    var += p * p;
  }
  explained = var / total;
out:
  free(mean), free(v), free(u);
  return explained;
}

double steer_pearson(const double *x, const double *y, uint32_t n) {
  if (n < 2) return NAN;
  double mx = 0, my = 0;
  for (uint32_t i = 0; i < n; i++) mx += x[i], my += y[i];
  mx /= n, my /= n;
  double sxy = 0, sxx = 0, syy = 0;
  for (uint32_t i = 0; i < n; i++) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  if (sxx == 0 || syy == 0) return NAN;
  return sxy / sqrt(sxx * syy);
}

typedef struct ranked {
  double v;
  uint32_t i;
} ranked_t;

static int ranked_cmp(const void *a, const void *b) {
  const ranked_t *x = a, *y = b;
  if (x->v != y->v) return x->v < y->v ? -1 : 1;
  return x->i < y->i ? -1 : (x->i > y->i);
}

void steer_ranks(double *rank, const double *x, uint32_t n) {
  ranked_t *r = malloc((n ? n : 1) * sizeof *r);
  if (!r) {
    for (uint32_t i = 0; i < n; i++) rank[i] = NAN;
    return;
  }
  for (uint32_t i = 0; i < n; i++) r[i] = (ranked_t){x[i], i};
  qsort(r, n, sizeof *r, ranked_cmp);
  for (uint32_t a = 0; a < n;) {
    uint32_t b = a + 1;
    while (b < n && r[b].v == r[a].v) b++;
    double avg = (a + 1 + b) / 2.0; /* ranks a+1 .. b */
    for (uint32_t k = a; k < b; k++) rank[r[k].i] = avg;
    a = b;
  }
  free(r);
}

double steer_spearman(const double *x, const double *y, uint32_t n) {
  double *rx = malloc((n ? n : 1) * sizeof *rx), *ry = malloc((n ? n : 1) * sizeof *ry);
  double r = NAN;
  if (rx && ry) {
    steer_ranks(rx, x, n);
    steer_ranks(ry, y, n);
    r = steer_pearson(rx, ry, n);
  }
  free(rx), free(ry);
  return r;
}

double steer_kendall(const double *x, const double *y, uint32_t n) {
  if (n < 2) return NAN;
  double concordant = 0, discordant = 0, tied_x = 0, tied_y = 0;
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t j = i + 1; j < n; j++) {
      int dx = (x[i] > x[j]) - (x[i] < x[j]), dy = (y[i] > y[j]) - (y[i] < y[j]);
      if (dx == 0) tied_x++;
      if (dy == 0) tied_y++;
      if (dx * dy > 0)
        concordant++;
      else if (dx * dy < 0)
        discordant++;
    }
  double pairs = (double)n * (n - 1) / 2;
  double den = sqrt((pairs - tied_x) * (pairs - tied_y));
  return den > 0 ? (concordant - discordant) / den : NAN;
}

double steer_contrast(const double *mean_pos, const double *mean_neg, uint32_t d, double mean_norm) {
  double s = 0;
  for (uint32_t j = 0; j < d; j++) s += (mean_pos[j] - mean_neg[j]) * (mean_pos[j] - mean_neg[j]);
  return mean_norm > 0 ? sqrt(s) / mean_norm : NAN;
}

/* ---- residual-stream means ---- */

typedef struct means_ctx {
  uint32_t d, skip;
  uint32_t *pos;    /* [n_layers + 1]: positions of the current prompt seen so far (pieces come in order) */
  double *sum;      /* [(n_layers + 1) * d]: the current prompt's sum over its positions */
  double *norm_sum; /* [n_layers + 1]: sum of ||h|| over all prompts' positions */
  uint64_t *count;  /* [n_layers + 1]: positions summed for the current prompt */
} means_ctx_t;

static void means_on_resid(void *ctx, uint32_t layer, uint32_t item, const float *h, uint32_t n_tokens,
                           uint32_t hidden) {
  means_ctx_t *c = ctx;
  (void)item; /* one prompt per call */
  double *s = c->sum + (uint64_t)layer * hidden;
  for (uint32_t t = 0; t < n_tokens; t++, c->pos[layer]++) {
    if (c->pos[layer] < c->skip) continue;
    const float *r = h + (uint64_t)t * hidden;
    double nn = 0;
    for (uint32_t j = 0; j < hidden; j++) {
      s[j] += r[j];
      nn += (double)r[j] * r[j];
    }
    c->norm_sum[layer] += sqrt(nn);
    c->count[layer]++;
  }
}

lt_status_t steer_means(model_t *m, const int32_t *const *prompts, const uint32_t *lens, uint32_t n, uint32_t skip,
                        const bool *want, double *mean, double *norm, uint32_t *n_used, lt_err_t *err) {
  const model_config_t *cf = model_config(m);
  uint32_t L = cf->n_layers + 1, d = cf->hidden_size;
  means_ctx_t c = {.d = d, .skip = skip};
  c.pos = calloc(L, sizeof *c.pos);
  c.sum = calloc((uint64_t)L * d, sizeof *c.sum);
  c.norm_sum = calloc(L, sizeof *c.norm_sum);
  c.count = calloc(L, sizeof *c.count);
  double *acc = calloc((uint64_t)L * d, sizeof *acc);
  uint64_t total = 0;
  uint32_t used = 0;
  lt_status_t st = LT_OK;
  if (!c.pos || !c.sum || !c.norm_sum || !c.count || !acc) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  model_hooks_t h = {.ctx = &c, .capture_resid = want, .on_resid = means_on_resid};
  for (uint32_t p = 0; p < n && st == LT_OK; p++) {
    if (lens[p] <= skip) continue;
    memset(c.pos, 0, L * sizeof *c.pos);
    memset(c.count, 0, L * sizeof *c.count);
    memset(c.sum, 0, (uint64_t)L * d * sizeof *c.sum);
    model_seq_t *s = model_seq_new(m, lens[p], err);
    if (!s) {
      st = err ? err->code : LT_E_NOMEM;
      break;
    }
    model_item_t it = {.seq = s, .tokens = prompts[p], .n_tokens = lens[p], .out = MODEL_OUT_NONE};
    st = model_forward(m, &it, 1, &h, err);
    model_seq_destroy(&s);
    if (st != LT_OK) break;
    for (uint32_t l = 0; l < L; l++)
      if (want[l])
        for (uint32_t j = 0; j < d; j++) acc[(uint64_t)l * d + j] += c.sum[(uint64_t)l * d + j] / (double)c.count[l];
    total += lens[p] - skip;
    used++;
  }
  if (st == LT_OK)
    for (uint32_t l = 0; l < L; l++) {
      if (!want[l]) continue;
      for (uint32_t j = 0; j < d; j++) mean[(uint64_t)l * d + j] = used ? acc[(uint64_t)l * d + j] / used : NAN;
      norm[l] = total ? c.norm_sum[l] / (double)total : NAN;
    }
  if (n_used) *n_used = used;
out:
  free(c.pos), free(c.sum), free(c.norm_sum), free(c.count), free(acc);
  return st;
}

/* ---- steering-vector files ---- */

lt_status_t steer_vector_save(const char *path, const float *v, uint32_t hidden, uint32_t layer, const char *model,
                              uint32_t n_pos, uint32_t n_neg, lt_err_t *err) {
  char ls[16], ps[16], ns[16];
  snprintf(ls, sizeof ls, "%u", layer);
  snprintf(ps, sizeof ps, "%u", n_pos);
  snprintf(ns, sizeof ns, "%u", n_neg);
  const char *meta[] = {"format",         "pt",
                        "lathe.kind",     "steering-vector",
                        "lathe.method",   "mean-difference",
                        "lathe.model",    model,
                        "lathe.layer",    ls,
                        "lathe.positive", ps,
                        "lathe.negative", ns};
  ft_tensor_t t = {.name = "steer.vector",
                   .dtype = FT_F32,
                   .n_dims = 1,
                   .shape = {hidden, 1, 1, 1},
                   .n_elems = hidden,
                   .data = v,
                   .nbytes = (uint64_t)hidden * 4};
  return st_write(path, &t, 1, meta, sizeof meta / sizeof meta[0] / 2, err);
}

lt_status_t steer_vector_load(const char *path, uint32_t hidden, float **v, uint32_t *layer, char *model, size_t cap,
                              lt_err_t *err) {
  *v = NULL;
  st_file_t *f = NULL;
  lt_status_t st = st_open(&f, path, err);
  if (st != LT_OK) return st;
  const ft_tensor_t *t = st_find(f, "steer.vector");
  const char *ls = st_metadata(f, "lathe.layer"), *mp = st_metadata(f, "lathe.model");
  char *end = NULL;
  unsigned long lv = ls ? strtoul(ls, &end, 10) : 0;
  if (!t)
    st = lt_fail(err, LT_E_INVALID, "%s: no tensor \"steer.vector\" (not a steering vector file)", path);
  else if (t->n_dims != 1 || t->n_elems != hidden)
    st = lt_fail(err, LT_E_INVALID, "%s: the vector has %llu entries but the model's hidden size is %u", path,
                 (unsigned long long)t->n_elems, hidden);
  else if (!ls || !*ls || *end || lv > UINT32_MAX)
    st = lt_fail(err, LT_E_INVALID, "%s: no valid lathe.layer in the metadata", path);
  else if (!(*v = malloc((uint64_t)hidden * 4)))
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
  else
    st = ft_tensor_to_f32(t, *v, err);
  if (st == LT_OK) {
    *layer = (uint32_t)lv;
    snprintf(model, cap, "%s", mp ? mp : "");
  } else {
    free(*v);
    *v = NULL;
  }
  st_destroy(&f);
  return st;
}

/* ---- steered generation ---- */

const char *steer_method_str(steer_method_t m) {
  switch (m) {
  case STEER_NONE: return "none";
  case STEER_ADD: return "add";
  case STEER_CONTRAST: return "contrast";
  case STEER_ROSE: return "rose";
  }
  return "?";
}

void steer_contrast_apply(float *a, const float *a_s, uint32_t n_heads, uint32_t head_dim, float exponent,
                          bool renorm) {
  uint32_t qd = n_heads * head_dim;
  double before = 0, after = 0;
  for (uint32_t j = 0; j < qd; j++) before += (double)a[j] * a[j];
  for (uint32_t h = 0; h < n_heads; h++) {
    float *x = a + (uint64_t)h * head_dim;
    const float *xs = a_s + (uint64_t)h * head_dim;
    double dn = 0;
    for (uint32_t j = 0; j < head_dim; j++) dn += ((double)xs[j] - x[j]) * ((double)xs[j] - x[j]);
    double s = pow(1.0 + sqrt(dn), exponent);
    for (uint32_t j = 0; j < head_dim; j++) x[j] = (float)(x[j] - s * ((double)xs[j] - x[j]));
  }
  if (!renorm) return;
  for (uint32_t j = 0; j < qd; j++) after += (double)a[j] * a[j];
  if (after <= 0) return;
  double k = sqrt(before / after);
  for (uint32_t j = 0; j < qd; j++) a[j] = (float)(a[j] * k);
}

void steer_rose_combine(float *logits, const float *neg, uint32_t vocab, float alpha) {
  for (uint32_t v = 0; v < vocab; v++) logits[v] = logits[v] - alpha * neg[v];
}

/* The attention hook of the contrastive intervention. gen_pair_t guarantees that every hooked call holds one
 * token per sequence with each prompt's contrastive (second) sequence just before its base (first) sequence, and
 * the hook runs once per item in item order, so the calls alternate: keep a_s, then steer a with it. */
typedef struct contrast_ctx {
  const steer_cfg_t *s;
  bool base_next; /* the next call is a base sequence */
  float *a_s;     /* [n_heads * head_dim] of the last contrastive sequence seen */
} contrast_ctx_t;

static bool contrast_on_attn(void *ctx, uint32_t layer, uint32_t item, float *heads, uint32_t n_tokens,
                             uint32_t n_heads, uint32_t head_dim) {
  contrast_ctx_t *c = ctx;
  (void)layer, (void)item;
  uint32_t qd = n_heads * head_dim;
  float *last = heads + (uint64_t)(n_tokens - 1) * qd;
  c->base_next = !c->base_next;
  if (c->base_next) {
    memcpy(c->a_s, last, (uint64_t)qd * 4);
    return false;
  }
  steer_contrast_apply(last, c->a_s, n_heads, head_dim, c->s->exponent, c->s->renorm);
  return true;
}

/* ROSE's logits hook: combine, then pass the result on to the caller's hook. */
typedef struct rose_ctx {
  float alpha;
  gen_logits_fn next;
  void *next_ctx;
} rose_ctx_t;

static void rose_on_logits(void *ctx, uint32_t item, uint32_t step, float *logits, const float *second,
                           uint32_t vocab) {
  rose_ctx_t *c = ctx;
  steer_rose_combine(logits, second, vocab, c->alpha);
  if (c->next) c->next(c->next_ctx, item, step, logits, NULL, vocab);
}

lt_status_t steer_generate(model_t *m, const steer_cfg_t *s, const int32_t *const *prompts, const uint32_t *lens,
                           uint32_t n, const gen_opts_t *o, gen_step_fn on_step, void *step_ctx, gen_result_t *res,
                           lt_err_t *err) {
  const model_config_t *cf = model_config(m);
  if (!s || s->method == STEER_NONE) return model_generate(m, prompts, lens, n, o, NULL, on_step, step_ctx, res, err);
  if ((s->method == STEER_ADD || s->method == STEER_CONTRAST) && s->layer >= cf->n_layers)
    return lt_fail(err, LT_E_INVALID, "steering layer %u is outside the model's blocks 0..%u", s->layer,
                   cf->n_layers - 1);
  if (s->method == STEER_ADD && !s->vec) return lt_fail(err, LT_E_INVALID, "activation addition without a vector");
  if ((s->method == STEER_CONTRAST || s->method == STEER_ROSE) && !s->twins)
    return lt_fail(err, LT_E_INVALID, "%s steering without its second prompts", steer_method_str(s->method));
  gen_opts_t go = *o;
  model_hooks_t h = {0};
  gen_pair_t pair = {.prompts = s->twins, .prompt_lens = s->twin_lens};
  contrast_ctx_t cc = {.s = s};
  rose_ctx_t rc = {.alpha = s->alpha, .next = o->on_logits, .next_ctx = o->logits_ctx};
  switch (s->method) {
  case STEER_ADD: h = (model_hooks_t){.add_vec = s->vec, .add_layer = s->layer, .add_alpha = s->alpha}; break;
  case STEER_CONTRAST:
    if (!(cc.a_s = malloc((uint64_t)cf->n_heads * cf->head_dim * 4))) return lt_fail(err, LT_E_NOMEM, "out of memory");
    h = (model_hooks_t){.ctx = &cc, .on_attn = contrast_on_attn, .attn_layer = s->layer};
    go.pair = &pair;
    break;
  case STEER_ROSE:
    pair.second_logits = true;
    go.pair = &pair;
    go.on_logits = rose_on_logits;
    go.logits_ctx = &rc;
    break;
  case STEER_NONE: break;
  }
  lt_status_t st =
      model_generate(m, prompts, lens, n, &go, s->method == STEER_ROSE ? NULL : &h, on_step, step_ctx, res, err);
  free(cc.a_s);
  return st;
}

/* Teacher-forced scoring: the log-softmax of each step's logits at the forced token. */
typedef struct score_ctx {
  const int32_t *const *conts;
  float *const *lp;
} score_ctx_t;

static void score_on_logits(void *ctx, uint32_t item, uint32_t step, float *logits, const float *second,
                            uint32_t vocab) {
  score_ctx_t *c = ctx;
  (void)second;
  double mx = logits[0], sum = 0;
  for (uint32_t v = 1; v < vocab; v++) mx = logits[v] > mx ? logits[v] : mx;
  for (uint32_t v = 0; v < vocab; v++) sum += exp(logits[v] - mx);
  c->lp[item][step] = (float)(logits[c->conts[item][step]] - mx - log(sum));
}

lt_status_t steer_score(model_t *m, const steer_cfg_t *s, const int32_t *const *prompts, const uint32_t *lens,
                        const int32_t *const *conts, const uint32_t *cont_lens, uint32_t n, float *const *lp,
                        lt_err_t *err) {
  uint32_t V = model_config(m)->vocab_size;
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < cont_lens[i]; j++)
      if (conts[i][j] < 0 || (uint32_t)conts[i][j] >= V)
        return lt_fail(err, LT_E_INVALID, "continuation %u: token id %d is outside the vocabulary (%u)", i, conts[i][j],
                       V);
  gen_result_t *res = calloc(n ? n : 1, sizeof *res);
  if (!res) return lt_fail(err, LT_E_NOMEM, "out of memory");
  score_ctx_t c = {.conts = conts, .lp = lp};
  gen_opts_t o = {.forced = conts, .forced_lens = cont_lens, .on_logits = score_on_logits, .logits_ctx = &c};
  lt_status_t st = steer_generate(m, s, prompts, lens, n, &o, NULL, NULL, res, err);
  for (uint32_t i = 0; i < n; i++) free(res[i].tokens);
  free(res);
  return st;
}
