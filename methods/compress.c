/* Calibration statistics, the choices they drive, and the measurements of a compressed model (methods/compress.h).
 * Writing the compressed folder is in methods/compress_write.c. */
#include "methods/compress.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/text/jsonl.h"

#define EVAL_BATCH 8u /* windows per forward call when scoring */

/* ---- data ---- */

lt_status_t compress_read_tokens(const tok_t *tok, const char *path, uint64_t max_tokens, int32_t **ids, uint64_t *n,
                                 lt_err_t *err) {
  *ids = NULL;
  *n = 0;
  jsonl_t *r = jsonl_open(path, err);
  if (!r) return err ? err->code : LT_E_IO;
  char *joined = NULL;
  size_t jcap = 0;
  uint64_t have = 0, room = 0;
  lt_status_t st = LT_OK;
  json_t *row;
  while ((!max_tokens || have < max_tokens) && (st = jsonl_next(r, &row, err)) == LT_OK && row) {
    const char *text = jsonl_str(row, "text"), *prompt = jsonl_str(row, "prompt");
    const char *completion = jsonl_str(row, "completion");
    if (!text && prompt && completion) {
      /* The calibration text is the whole conversation turn. */
      size_t need = strlen(prompt) + strlen(completion) + 1;
      if (need > jcap) {
        char *grown = realloc(joined, need);
        if (!grown) {
          json_decref(row);
          st = lt_fail(err, LT_E_NOMEM, "out of memory");
          break;
        }
        joined = grown, jcap = need;
      }
      snprintf(joined, need, "%s%s", prompt, completion);
      text = joined;
    }
    if (!text) {
      st = lt_fail(err, LT_E_INVALID, "%s: needs a \"text\" string, or \"prompt\" and \"completion\" strings",
                   jsonl_where(r));
      json_decref(row);
      break;
    }
    int32_t *row_ids = NULL;
    size_t rn = 0;
    st = tok_encode(tok, text, strlen(text), TOK_ADD_BOS, &row_ids, &rn, err);
    json_decref(row);
    if (st != LT_OK) break;
    if (max_tokens && rn > max_tokens - have) rn = (size_t)(max_tokens - have);
    if (have + rn > room) {
      uint64_t grown_n = (have + rn) * 2 + 1024;
      int32_t *grown = realloc(*ids, grown_n * sizeof *grown);
      if (!grown) {
        free(row_ids);
        st = lt_fail(err, LT_E_NOMEM, "out of memory");
        break;
      }
      *ids = grown, room = grown_n;
    }
    memcpy(*ids + have, row_ids, rn * sizeof *row_ids);
    have += rn;
    free(row_ids);
  }
  free(joined);
  jsonl_destroy(&r);
  if (st != LT_OK) {
    free(*ids);
    *ids = NULL;
    return st;
  }
  *n = have;
  return LT_OK;
}

/* ---- calibration ---- */

/* Input slots per block: ATTN_IN, ATTN_OUT, FFN_IN, FFN_ACT, then EXPERT_IN and EXPERT_ACT of each expert. */
#define FIXED_SLOTS 4u

struct compress_calib {
  uint32_t L, E, d, slots;
  uint64_t tokens;
  double *block_cos, *layer_cos, *expert_p; /* sums while calibrating, then means */
  uint64_t *block_n, *layer_n, *router_n;   /* tokens behind each sum */
  double **sq;                              /* [L * slots] per-column sums of squares, NULL until reached */
  float *prev, *resid;                      /* the pass's h_l and feed-forward input x: [rows, d] */
  int64_t prev_layer, resid_layer;          /* which block they belong to (-1: none) */
  uint32_t prev_rows, resid_rows, max_rows;
  bool oom; /* an allocation inside a hook failed */
};

static int32_t slot_of(const compress_calib_t *c, model_site_t site, int32_t expert) {
  switch (site) {
  case MODEL_SITE_ATTN_IN: return 0;
  case MODEL_SITE_ATTN_OUT: return 1;
  case MODEL_SITE_FFN_IN: return 2;
  case MODEL_SITE_FFN_ACT: return 3;
  case MODEL_SITE_EXPERT_IN:
  case MODEL_SITE_EXPERT_ACT:
    if (expert < 0 || (uint32_t)expert >= c->E) return -1;
    return (int32_t)(FIXED_SLOTS + 2 * (uint32_t)expert + (site == MODEL_SITE_EXPERT_ACT));
  case MODEL_SITE_FFN_RESID:
  case MODEL_SITE_FFN_OUT:
  case MODEL_SITE_COUNT: break;
  }
  return -1;
}

/* cos(a, b) in double; 0 when either is all zeros (as op_cosine). */
static double cosine(const float *a, const float *b, uint32_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (uint32_t i = 0; i < n; i++) {
    ab += (double)a[i] * b[i];
    aa += (double)a[i] * a[i];
    bb += (double)b[i] * b[i];
  }
  return aa > 0 && bb > 0 ? ab / (sqrt(aa) * sqrt(bb)) : 0.0;
}

static void on_resid(void *ctx, uint32_t layer, uint32_t item, const float *h, uint32_t n_tokens, uint32_t hidden) {
  compress_calib_t *c = ctx;
  (void)item; /* one item per forward call */
  if (n_tokens > c->max_rows) return;
  if (layer > 0 && c->prev_layer == (int64_t)layer - 1 && c->prev_rows == n_tokens) {
    for (uint32_t t = 0; t < n_tokens; t++)
      c->block_cos[layer - 1] += cosine(c->prev + (uint64_t)t * hidden, h + (uint64_t)t * hidden, hidden);
    c->block_n[layer - 1] += n_tokens;
  }
  memcpy(c->prev, h, (uint64_t)n_tokens * hidden * 4);
  c->prev_layer = layer;
  c->prev_rows = n_tokens;
}

static void on_router(void *ctx, uint32_t layer, const float *probs, uint32_t n_rows, uint32_t n_experts) {
  compress_calib_t *c = ctx;
  for (uint32_t t = 0; t < n_rows; t++)
    for (uint32_t e = 0; e < n_experts && e < c->E; e++)
      c->expert_p[(uint64_t)layer * c->E + e] += probs[(uint64_t)t * n_experts + e];
  c->router_n[layer] += n_rows;
}

static void on_site(void *ctx, model_site_t site, uint32_t layer, int32_t expert, const float *x, uint32_t rows,
                    uint32_t cols) {
  compress_calib_t *c = ctx;
  if (site == MODEL_SITE_FFN_RESID) {
    if (rows > c->max_rows) return;
    memcpy(c->resid, x, (uint64_t)rows * cols * 4);
    c->resid_layer = layer;
    c->resid_rows = rows;
    return;
  }
  if (site == MODEL_SITE_FFN_OUT) {
    if (c->resid_layer != (int64_t)layer || c->resid_rows != rows) return;
    for (uint32_t t = 0; t < rows; t++)
      c->layer_cos[layer] += cosine(c->resid + (uint64_t)t * cols, x + (uint64_t)t * cols, cols);
    c->layer_n[layer] += rows;
    return;
  }
  int32_t s = slot_of(c, site, expert);
  if (s < 0) return;
  uint64_t i = (uint64_t)layer * c->slots + (uint32_t)s;
  if (!c->sq[i] && !(c->sq[i] = calloc(cols, sizeof **c->sq))) {
    c->oom = true;
    return;
  }
  for (uint32_t r = 0; r < rows; r++)
    for (uint32_t j = 0; j < cols; j++) {
      double v = x[(uint64_t)r * cols + j];
      c->sq[i][j] += v * v;
    }
}

/* The next value of a splitmix64 stream. */
static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

lt_status_t compress_calibrate(compress_calib_t **out, model_t *m, const int32_t *ids, uint64_t n,
                               const compress_calib_opts_t *opts, lt_err_t *err) {
  *out = NULL;
  const model_config_t *cf = model_config(m);
  uint32_t T = opts->tokens, L = cf->n_layers;
  if (T < 2 || opts->samples == 0) return lt_fail(err, LT_E_INVALID, "calibration needs samples >= 1 and tokens >= 2");
  if (n < T)
    return lt_fail(err, LT_E_INVALID, "the calibration data has %llu tokens, fewer than one window of %u",
                   (unsigned long long)n, T);
  compress_calib_t *c = calloc(1, sizeof *c);
  if (!c) return lt_fail(err, LT_E_NOMEM, "out of memory");
  c->L = L;
  c->E = cf->n_experts;
  c->d = cf->hidden_size;
  c->slots = FIXED_SLOTS + 2 * c->E;
  c->max_rows = T;
  c->prev_layer = c->resid_layer = -1;
  c->block_cos = calloc(L, sizeof *c->block_cos);
  c->layer_cos = calloc(L, sizeof *c->layer_cos);
  c->expert_p = calloc((uint64_t)L * (c->E ? c->E : 1), sizeof *c->expert_p);
  c->block_n = calloc(L, sizeof *c->block_n);
  c->layer_n = calloc(L, sizeof *c->layer_n);
  c->router_n = calloc(L, sizeof *c->router_n);
  c->sq = calloc((uint64_t)L * c->slots, sizeof *c->sq);
  c->prev = malloc((uint64_t)T * c->d * 4);
  c->resid = malloc((uint64_t)T * c->d * 4);
  bool *cap_resid = malloc((L + 1) * sizeof *cap_resid);
  lt_status_t st = LT_OK;
  model_seq_t *s = NULL;
  if (!c->block_cos || !c->layer_cos || !c->expert_p || !c->block_n || !c->layer_n || !c->router_n || !c->sq ||
      !c->prev || !c->resid || !cap_resid) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  for (uint32_t l = 0; l <= L; l++) cap_resid[l] = true;
  bool cap_site[MODEL_SITE_COUNT] = {0};
  cap_site[MODEL_SITE_FFN_RESID] = cap_site[MODEL_SITE_FFN_OUT] = true;
  if (opts->inputs) {
    cap_site[MODEL_SITE_ATTN_IN] = cap_site[MODEL_SITE_ATTN_OUT] = true;
    cap_site[MODEL_SITE_FFN_IN] = cap_site[MODEL_SITE_FFN_ACT] = !cf->n_experts;
    cap_site[MODEL_SITE_EXPERT_IN] = cap_site[MODEL_SITE_EXPERT_ACT] = cf->n_experts > 0;
  }
  model_hooks_t h = {.ctx = c,
                     .capture_resid = cap_resid,
                     .on_resid = on_resid,
                     .on_router = cf->n_experts ? on_router : NULL,
                     .capture_site = cap_site,
                     .on_site = on_site};
  if (!(s = model_seq_new(m, T, err))) {
    st = err ? err->code : LT_E_DEVICE_OOM;
    goto out;
  }
  uint64_t rng = opts->seed;
  for (uint32_t w = 0; w < opts->samples && st == LT_OK; w++) {
    uint64_t off = splitmix64(&rng) % (n - T + 1);
    model_seq_truncate(s, 0);
    model_item_t it = {.seq = s, .tokens = ids + off, .n_tokens = T, .out = MODEL_OUT_NONE};
    st = model_forward(m, &it, 1, &h, err);
    if (st == LT_OK && c->oom) st = lt_fail(err, LT_E_NOMEM, "out of memory collecting calibration inputs");
    c->tokens += T;
    if (st == LT_OK && opts->on_window && !opts->on_window(opts->ctx, w + 1, opts->samples)) break;
  }
  for (uint32_t l = 0; l < L; l++) {
    c->block_cos[l] = c->block_n[l] ? c->block_cos[l] / (double)c->block_n[l] : NAN;
    c->layer_cos[l] = c->layer_n[l] ? c->layer_cos[l] / (double)c->layer_n[l] : NAN;
    for (uint32_t e = 0; e < c->E; e++)
      if (c->router_n[l]) c->expert_p[(uint64_t)l * c->E + e] /= (double)c->router_n[l];
  }
out:
  model_seq_destroy(&s);
  free(cap_resid);
  if (st != LT_OK) compress_calib_destroy(&c);
  *out = c;
  return st;
}

void compress_calib_destroy(compress_calib_t **cp) {
  if (!cp || !*cp) return;
  compress_calib_t *c = *cp;
  for (uint64_t i = 0; c->sq && i < (uint64_t)c->L * c->slots; i++) free(c->sq[i]);
  free(c->sq);
  free(c->block_cos), free(c->layer_cos), free(c->expert_p);
  free(c->block_n), free(c->layer_n), free(c->router_n);
  free(c->prev), free(c->resid);
  free(c);
  *cp = NULL;
}

uint64_t compress_calib_tokens(const compress_calib_t *c) { return c->tokens; }
const double *compress_block_scores(const compress_calib_t *c) { return c->block_cos; }
const double *compress_layer_scores(const compress_calib_t *c) { return c->layer_cos; }
const double *compress_expert_scores(const compress_calib_t *c) { return c->E ? c->expert_p : NULL; }

const double *compress_input_sq(const compress_calib_t *c, model_site_t site, uint32_t layer, int32_t expert) {
  int32_t s = slot_of(c, site, expert);
  return s < 0 || layer >= c->L ? NULL : c->sq[(uint64_t)layer * c->slots + (uint32_t)s];
}

/* ---- choices ---- */

/* Whether item i may still be picked. */
static bool pickable(const bool *drop, const double *scores, const bool *exclude, uint32_t i) {
  return !drop[i] && !(exclude && exclude[i]) && !isnan(scores[i]);
}

uint32_t compress_pick_highest(bool *drop, const double *scores, uint32_t n_items, uint32_t count,
                               const bool *exclude) {
  uint32_t marked = 0;
  for (; marked < count; marked++) {
    int64_t best = -1;
    for (uint32_t i = 0; i < n_items; i++)
      if (pickable(drop, scores, exclude, i) && (best < 0 || scores[i] > scores[best])) best = i;
    if (best < 0) break;
    drop[best] = true;
  }
  return marked;
}

uint32_t compress_pick_random(bool *drop, const double *scores, uint32_t n_items, uint32_t count, const bool *exclude,
                              uint64_t seed) {
  uint32_t marked = 0;
  for (; marked < count; marked++) {
    uint32_t open = 0;
    for (uint32_t i = 0; i < n_items; i++) open += pickable(drop, scores, exclude, i);
    if (open == 0) break;
    uint64_t k = splitmix64(&seed) % open;
    for (uint32_t i = 0; i < n_items; i++)
      if (pickable(drop, scores, exclude, i) && k-- == 0) {
        drop[i] = true;
        break;
      }
  }
  return marked;
}

/* One (block, expert) candidate of an expert drop. */
typedef struct cand {
  double score;
  uint32_t l, e;
} cand_t;

/* Highest score first; ties: the lower block, then the lower expert. */
static int cand_cmp(const void *a, const void *b) {
  const cand_t *x = a, *y = b;
  if (x->score != y->score) return x->score > y->score ? -1 : 1;
  if (x->l != y->l) return x->l < y->l ? -1 : 1;
  return x->e < y->e ? -1 : x->e > y->e;
}

lt_status_t compress_pick_experts(bool *drop, const double *scores, uint32_t L, uint32_t E, uint32_t keep, bool global,
                                  uint32_t min_keep, const bool *skip_block, lt_err_t *err) {
  if (keep < min_keep || keep > E)
    return lt_fail(err, LT_E_INVALID, "expert drop: keeping %u of %u experts; need %u..%u (top-k routing uses %u)",
                   keep, E, min_keep, E, min_keep);
  cand_t *c = malloc(((uint64_t)L * E + 1) * sizeof *c);
  uint32_t *kept = calloc(L + 1, sizeof *kept);
  bool *taken = calloc((uint64_t)L * E + 1, sizeof *taken);
  if (!c || !kept || !taken) {
    free(c), free(kept), free(taken);
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  uint32_t nc = 0, blocks = 0;
  for (uint32_t l = 0; l < L; l++) {
    if (skip_block && skip_block[l]) continue;
    blocks++;
    for (uint32_t e = 0; e < E; e++) c[nc++] = (cand_t){scores[(uint64_t)l * E + e], l, e};
  }
  qsort(c, nc, sizeof *c, cand_cmp);
  /* Per block: its keep best. Global: first min_keep per block, then the best of the rest up to the total. */
  uint64_t total = (uint64_t)keep * blocks, have = 0;
  uint32_t first = global ? min_keep : keep;
  for (uint32_t i = 0; i < nc; i++)
    if (kept[c[i].l] < first) {
      kept[c[i].l]++;
      taken[(uint64_t)c[i].l * E + c[i].e] = true;
      have++;
    }
  for (uint32_t i = 0; global && i < nc && have < total; i++)
    if (!taken[(uint64_t)c[i].l * E + c[i].e]) {
      taken[(uint64_t)c[i].l * E + c[i].e] = true;
      have++;
    }
  for (uint32_t i = 0; i < nc; i++)
    if (!taken[(uint64_t)c[i].l * E + c[i].e]) drop[(uint64_t)c[i].l * E + c[i].e] = true;
  free(c), free(kept), free(taken);
  return LT_OK;
}

void compress_choice_free(compress_choice_t *c) {
  if (!c) return;
  free(c->drop_block), free(c->drop_ffn), free(c->drop_expert);
  memset(c, 0, sizeof *c);
}

lt_status_t compress_choose(compress_choice_t *out, const model_config_t *cfg, const compress_calib_t *c,
                            const compress_methods_t *m, bool random, uint64_t seed, lt_err_t *err) {
  memset(out, 0, sizeof *out);
  uint32_t L = cfg->n_layers, E = cfg->n_experts;
  out->n_layers = L;
  out->n_experts = E;
  out->drop_block = calloc(L, 1);
  out->drop_ffn = calloc(L, 1);
  out->drop_expert = calloc((uint64_t)L * (E ? E : 1), 1);
  bool *skip = calloc(L, 1);
  lt_status_t st = LT_OK;
  if (!out->drop_block || !out->drop_ffn || !out->drop_expert || !skip) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  if (m->block_drop) {
    const double *s = compress_block_scores(c);
    uint32_t got = random ? compress_pick_random(out->drop_block, s, L, m->drop, NULL, seed)
                          : compress_pick_highest(out->drop_block, s, L, m->drop, NULL);
    if (got < m->drop || got == L) {
      st = lt_fail(err, LT_E_INVALID, "block drop: cannot drop %u of %u blocks", m->drop, L);
      goto out;
    }
  }
  if (m->layer_drop) {
    /* Blocks already dropped, and feed-forward sub-layers already gone (NaN scores), are not candidates. */
    const double *s = compress_layer_scores(c);
    uint32_t got = random ? compress_pick_random(out->drop_ffn, s, L, m->drop, out->drop_block, seed + 1)
                          : compress_pick_highest(out->drop_ffn, s, L, m->drop, out->drop_block);
    if (got < m->drop) {
      st = lt_fail(err, LT_E_INVALID, "layer drop: only %u feed-forward sub-layers can go, not %u", got, m->drop);
      goto out;
    }
  }
  if (m->expert_drop) {
    if (!E) {
      st = lt_fail(err, LT_E_INVALID, "expert drop needs a mixture-of-experts model");
      goto out;
    }
    for (uint32_t l = 0; l < L; l++) skip[l] = out->drop_block[l] || out->drop_ffn[l] || cfg->ffn_dropped[l];
    uint32_t keep = m->keep ? m->keep : (3 * E + 3) / 4;
    const double *s = compress_expert_scores(c);
    if ((st = compress_pick_experts(out->drop_expert, s, L, E, keep, m->global, cfg->n_experts_used, skip, err)) !=
        LT_OK)
      goto out;
    for (uint32_t l = 0; random && l < L; l++) {
      /* The same number of experts per block, drawn at random. */
      bool *row = out->drop_expert + (uint64_t)l * E;
      uint32_t n = 0;
      for (uint32_t e = 0; e < E; e++) n += row[e], row[e] = false;
      compress_pick_random(row, s + (uint64_t)l * E, model_config_experts(cfg, l), n, NULL, seed + 2 + l);
    }
  }
  out->plan = (compress_plan_t){.drop_block = out->drop_block,
                                .drop_ffn = out->drop_ffn,
                                .drop_expert = E ? out->drop_expert : NULL,
                                .sparsity = m->prune && !m->keep_m ? m->sparsity : 0,
                                .keep_n = m->prune ? m->keep_n : 0,
                                .keep_m = m->prune ? m->keep_m : 0,
                                .bits = m->quantize ? m->bits : 0,
                                .group = m->quantize ? m->group : 0};
out:
  free(skip);
  if (st != LT_OK) compress_choice_free(out);
  return st;
}

model_hooks_t compress_choice_hooks(const compress_choice_t *c) {
  return (model_hooks_t){
      .skip_block = c->drop_block, .skip_ffn = c->drop_ffn, .expert_mask = c->n_experts ? c->drop_expert : NULL};
}

/* ---- measuring ---- */

lt_status_t compress_eval_nll(model_t *m, const int32_t *ids, uint64_t n, uint32_t T, uint32_t max_windows,
                              const model_hooks_t *hooks, double *nll, uint64_t *tokens, lt_err_t *err) {
  *nll = NAN;
  *tokens = 0;
  uint64_t W = T >= 2 ? n / T : 0;
  if (max_windows && W > max_windows) W = max_windows;
  if (W == 0) return lt_fail(err, LT_E_INVALID, "%llu tokens make no window of %u to score", (unsigned long long)n, T);
  model_seq_t *seqs[EVAL_BATCH] = {0};
  model_item_t items[EVAL_BATCH];
  float *out = malloc((uint64_t)EVAL_BATCH * T * sizeof *out);
  lt_status_t st = out ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t b = 0; b < EVAL_BATCH && st == LT_OK; b++)
    if (!(seqs[b] = model_seq_new(m, T, err))) st = err ? err->code : LT_E_DEVICE_OOM;
  double sum = 0;
  for (uint64_t w0 = 0; w0 < W && st == LT_OK; w0 += EVAL_BATCH) {
    uint32_t nb = W - w0 < EVAL_BATCH ? (uint32_t)(W - w0) : EVAL_BATCH;
    for (uint32_t b = 0; b < nb; b++) {
      const int32_t *win = ids + (w0 + b) * T;
      model_seq_truncate(seqs[b], 0);
      items[b] = (model_item_t){.seq = seqs[b],
                                .tokens = win,
                                .n_tokens = T - 1,
                                .out = MODEL_OUT_NLL,
                                .result = out + (uint64_t)b * T,
                                .targets = win + 1};
    }
    if ((st = model_forward(m, items, nb, hooks, err)) != LT_OK) break;
    for (uint32_t b = 0; b < nb; b++)
      for (uint32_t t = 0; t + 1 < T; t++) sum += out[(uint64_t)b * T + t];
    *tokens += (uint64_t)nb * (T - 1);
  }
  for (uint32_t b = 0; b < EVAL_BATCH; b++) model_seq_destroy(&seqs[b]);
  free(out);
  if (st == LT_OK) *nll = sum / (double)*tokens;
  return st;
}

/* Monotonic seconds. */
static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

lt_status_t compress_measure(model_t *m, const int32_t *ids, uint64_t n, uint32_t T, uint32_t n_decode, uint32_t reps,
                             compress_speed_t *out, lt_err_t *err) {
  memset(out, 0, sizeof *out);
  if (T == 0 || n < (uint64_t)T + n_decode)
    return lt_fail(err, LT_E_INVALID, "timing needs %u + %u tokens, have %llu", T, n_decode, (unsigned long long)n);
  model_seq_t *s = model_seq_new(m, T + n_decode, err);
  if (!s) return err ? err->code : LT_E_DEVICE_OOM;
  float *logits = malloc((uint64_t)model_config(m)->vocab_size * sizeof *logits);
  lt_status_t st = logits ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  double best_prefill = INFINITY, best_decode = INFINITY;
  /* Run 0 is the warm-up that builds every pipeline. */
  for (uint32_t r = 0; r <= reps && st == LT_OK; r++) {
    model_seq_truncate(s, 0);
    model_item_t it = {.seq = s, .tokens = ids, .n_tokens = T, .out = MODEL_OUT_LAST, .result = logits};
    double t0 = now_s();
    if ((st = model_forward(m, &it, 1, NULL, err)) != LT_OK) break;
    double t1 = now_s();
    for (uint32_t i = 0; i < n_decode && st == LT_OK; i++) {
      it.tokens = ids + T + i;
      it.n_tokens = 1;
      st = model_forward(m, &it, 1, NULL, err);
    }
    double t2 = now_s();
    if (r > 0 || reps == 0) {
      best_prefill = fmin(best_prefill, t1 - t0);
      best_decode = fmin(best_decode, t2 - t1);
    }
  }
  if (st == LT_OK) {
    const model_mem_t *mem = model_mem(m);
    out->prefill_tok_s = T / best_prefill;
    out->decode_tok_s = n_decode ? n_decode / best_decode : 0.0;
    out->weight_device_bytes = mem->weight_device_bytes;
    out->weight_file_bytes = mem->weight_file_bytes;
    out->activation_bytes = mem->activation_bytes;
  }
  free(logits);
  model_seq_destroy(&s);
  return st;
}
