/* Sampling (CPU, over downloaded logits), batched generation and scoring. */
#include "engine/model/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_next(sample_rng_t *r) {
  uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int32_t argmax(const float *x, uint32_t n) {
  uint32_t best = 0;
  for (uint32_t i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return (int32_t)best;
}

typedef struct cand {
  float p;
  uint32_t id;
} cand_t;

static int cand_desc(const void *a, const void *b) {
  const cand_t *x = a, *y = b;
  if (x->p != y->p) return x->p < y->p ? 1 : -1;
  return x->id < y->id ? -1 : (x->id > y->id);
}

/* Draws from n candidates c (their weights summing to sum), sorting and cutting them first (top-k, then top-p)
 * when cut is set; the top-p cut is a share of mass when that is positive (the whole row's, of which c are the
 * largest), else of the kept candidates' own sum. */
static int32_t draw(cand_t *c, uint32_t n, double sum, bool cut, double mass, const sample_opts_t *o,
                    sample_rng_t *rng) {
  if (cut) {
    qsort(c, n, sizeof *c, cand_desc);
    if (o->top_k && o->top_k < n) n = o->top_k;
    double kept = mass;
    if (kept <= 0)
      for (uint32_t i = 0; i < n; i++) kept += c[i].p;
    if (o->top_p > 0 && o->top_p < 1) {
      double acc = 0;
      for (uint32_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (acc >= o->top_p * kept) {
          n = i + 1;
          break;
        }
      }
    }
    sum = 0;
    for (uint32_t i = 0; i < n; i++) sum += c[i].p;
  }
  double u = (double)(rng_next(rng) >> 11) * (1.0 / 9007199254740992.0) * sum, acc = 0;
  for (uint32_t i = 0; i < n; i++) {
    acc += c[i].p;
    if (u < acc) return (int32_t)c[i].id;
  }
  return (int32_t)c[n - 1].id;
}

double sample_weight(float logit, float max, float temperature) { return exp(((double)logit - max) / temperature); }

int32_t sample_token(const float *logits, uint32_t vocab, const sample_opts_t *o, sample_rng_t *rng, float *scratch) {
  if (o->temperature <= 0) return argmax(logits, vocab);
  cand_t *c = (cand_t *)scratch; /* 2 * vocab floats hold vocab candidates */
  float mx = logits[argmax(logits, vocab)];
  double sum = 0;
  for (uint32_t i = 0; i < vocab; i++) {
    double p = sample_weight(logits[i], mx, o->temperature);
    c[i] = (cand_t){(float)p, i};
    sum += p;
  }
  return draw(c, vocab, sum, (o->top_k && o->top_k < vocab) || (o->top_p > 0 && o->top_p < 1), 0, o, rng);
}

int32_t sample_top(const float *top, const int32_t *ids, uint32_t k, double mass, const sample_opts_t *o,
                   sample_rng_t *rng) {
  if (o->temperature <= 0) return ids[0];
  cand_t c[MODEL_TOP_MAX];
  if (k > MODEL_TOP_MAX) k = MODEL_TOP_MAX;
  if (o->top_k && o->top_k < k) k = o->top_k;
  double sum = 0;
  for (uint32_t i = 0; i < k; i++) {
    double p = sample_weight(top[i], top[0], o->temperature);
    c[i] = (cand_t){(float)p, (uint32_t)ids[i]};
    sum += p;
  }
  return draw(c, k, sum, true, mass, o, rng);
}

/* Whether t ends a sequence: one of the model's end-of-sequence tokens or of the caller's stop tokens. */
static bool is_eos(const model_config_t *c, const gen_opts_t *o, int32_t t) {
  for (uint32_t i = 0; i < c->n_eos; i++)
    if (c->eos_ids[i] == t) return true;
  for (uint32_t i = 0; i < o->n_stop_ids; i++)
    if (o->stop_ids[i] == t) return true;
  return false;
}

/* Where a forward pass leaves what prompt i's next token is chosen from. */
typedef struct sample_dst {
  bool dev;     /* the device selects `top` candidates (MODEL_OUT_TOP) */
  bool nucleus; /* with the row's mass, for a top-p cut over the whole vocabulary (logits where it outgrows them) */
  uint32_t top, V;
  const sample_opts_t *so;
  float *logits, *top_val; /* [n, V]; [n, MODEL_TOP_MAX] */
  int32_t *top_ids;        /* [n, MODEL_TOP_MAX] */
  double *mass;            /* [n] */
} sample_dst_t;

/* The item that runs n_tokens of seq and returns what prompt i samples from. */
static model_item_t sampled_item(const sample_dst_t *d, model_seq_t *seq, const int32_t *tokens, uint32_t n_tokens,
                                 uint32_t i) {
  model_item_t it = {.seq = seq, .tokens = tokens, .n_tokens = n_tokens};
  if (d->dev) {
    it.out = MODEL_OUT_TOP, it.top_k = d->top;
    it.result = d->top_val + (uint64_t)i * MODEL_TOP_MAX, it.top_ids = d->top_ids + (uint64_t)i * MODEL_TOP_MAX;
    if (d->nucleus) {
      it.top_temp = d->so->temperature, it.top_p = d->so->top_p;
      it.top_mass = d->mass + i, it.top_logits = d->logits + (uint64_t)i * d->V;
    }
  } else {
    it.out = MODEL_OUT_LAST, it.result = d->logits + (uint64_t)i * d->V;
  }
  return it;
}

lt_status_t model_generate(model_t *m, const int32_t *const *prompts, const uint32_t *prompt_lens, uint32_t n,
                           const gen_opts_t *o, const model_hooks_t *hooks, gen_step_fn on_step, void *step_ctx,
                           gen_result_t *res, lt_err_t *err) {
  const model_config_t *cf = model_config(m);
  uint32_t V = cf->vocab_size;
  const gen_pair_t *pair = o->pair;
  uint32_t per = pair ? 2 : 1; /* sequences per prompt: seq[i] is prompt i's first, seq[n + i] its second */
  /* The second sequence's logits are for on_logits alone. */
  model_out_t out2 = pair && pair->second_logits && o->on_logits ? MODEL_OUT_LAST : MODEL_OUT_NONE;
  lt_status_t st = LT_OK;
  memset(res, 0, n * sizeof *res);
  model_seq_t **seq = calloc((size_t)n * per, sizeof *seq);
  model_item_t *items = calloc((size_t)n * per, sizeof *items);
  /* The device selects the candidates (MODEL_OUT_TOP) where the host needs no more of the logits than those. */
  const sample_opts_t *so = &o->sample;
  uint32_t top = so->temperature <= 0 ? 1 : so->top_k;
  /* A top-p cut with no top-k: the device's largest candidates and the row's mass, where the nucleus fits them. */
  bool nucleus = so->temperature > 0 && (top == 0 || top >= V) && so->top_p > 0 && so->top_p < 1;
  if (nucleus) top = V < MODEL_TOP_MAX ? V : MODEL_TOP_MAX;
  bool dev = !o->forced && !o->on_logits && !o->host_sampling && top >= 1 && top <= MODEL_TOP_MAX && top <= V;
  nucleus &= dev;
  /* Host sampling (and a nucleus that outgrows the candidates): every sequence's logits, one row's candidates. */
  bool host_rows = !dev || nucleus;
  float *logits = host_rows ? malloc((uint64_t)n * per * V * 4) : NULL,
        *scratch = host_rows ? malloc((uint64_t)V * 2 * 4) : NULL;
  double *mass = calloc(n, sizeof *mass);
  float *top_val = malloc((uint64_t)n * MODEL_TOP_MAX * 4);
  int32_t *top_ids = malloc((uint64_t)n * MODEL_TOP_MAX * 4);
  sample_rng_t *rng = calloc(n, sizeof *rng);
  bool *done = calloc(n, sizeof *done);
  int32_t *next = calloc(n, sizeof *next);
  uint32_t *limit = calloc(n, sizeof *limit);
  sample_dst_t dst = {.dev = dev,
                      .nucleus = nucleus,
                      .top = top,
                      .V = V,
                      .so = so,
                      .logits = logits,
                      .top_val = top_val,
                      .top_ids = top_ids,
                      .mass = mass};
  if (!seq || !items || (host_rows && (!logits || !scratch)) || !mass || !rng || !done || !next || !limit || !top_val ||
      !top_ids) {
    st = lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  bool any = false;
  for (uint32_t i = 0; i < n; i++) {
    if (prompt_lens[i] == 0 || (pair && pair->prompt_lens[i] == 0)) {
      st = lt_fail(err, LT_E_INVALID, "prompt %u is empty (no tokens)", i);
      goto out;
    }
    limit[i] = o->forced ? o->forced_lens[i] : o->max_tokens;
    done[i] = limit[i] == 0;
    any |= !done[i];
    for (uint32_t k = 0; k < per; k++) {
      uint32_t want = (k ? pair->prompt_lens[i] : prompt_lens[i]) + limit[i];
      if (!(seq[k * n + i] = model_seq_new(m, want, err))) {
        st = err ? err->code : LT_E_NOMEM;
        goto out;
      }
    }
    if (!(res[i].tokens = malloc(((uint64_t)limit[i] + 1) * sizeof(int32_t)))) {
      st = lt_fail(err, LT_E_NOMEM, "out of memory");
      goto out;
    }
    rng[i].state = o->seed + i;
  }
  if (!any) goto out;
  uint32_t k = 0;
  if (!pair) {
    for (uint32_t i = 0; i < n; i++) items[i] = sampled_item(&dst, seq[i], prompts[i], prompt_lens[i], i);
    k = n;
  } else {
    /* Every token but the last, both sequences together, without hooks; then the last tokens in pair order. */
    for (uint32_t i = 0; i < n; i++) {
      if (pair->prompt_lens[i] > 1)
        items[k++] =
            (model_item_t){.seq = seq[n + i], .tokens = pair->prompts[i], .n_tokens = pair->prompt_lens[i] - 1};
      if (prompt_lens[i] > 1)
        items[k++] = (model_item_t){.seq = seq[i], .tokens = prompts[i], .n_tokens = prompt_lens[i] - 1};
    }
    if (k && (st = model_forward(m, items, k, NULL, err)) != LT_OK) goto out;
    k = 0;
    for (uint32_t i = 0; i < n; i++) {
      items[k++] = (model_item_t){.seq = seq[n + i],
                                  .tokens = pair->prompts[i] + pair->prompt_lens[i] - 1,
                                  .n_tokens = 1,
                                  .out = out2,
                                  .result = out2 ? logits + (uint64_t)(n + i) * V : NULL};
      items[k++] = sampled_item(&dst, seq[i], prompts[i] + prompt_lens[i] - 1, 1, i);
    }
  }
  if ((st = model_forward(m, items, k, hooks, err)) != LT_OK) goto out;
  for (;;) {
    uint32_t active = 0;
    bool stop = false;
    for (uint32_t i = 0; i < n; i++) {
      if (done[i]) continue;
      float *lg = host_rows ? logits + (uint64_t)i * V : NULL; /* with a nucleus, the rows that outgrew it */
      if (o->on_logits)
        o->on_logits(o->logits_ctx, i, res[i].n_tokens, lg, out2 ? logits + (uint64_t)(n + i) * V : NULL, V);
      const float *tv = top_val + (uint64_t)i * MODEL_TOP_MAX;
      const int32_t *ti = top_ids + (uint64_t)i * MODEL_TOP_MAX;
      /* Candidates unless a nucleus outgrew them (mass 0): then the row, as in host sampling. */
      int32_t t = o->forced                          ? o->forced[i][res[i].n_tokens]
                  : dev && (!nucleus || mass[i] > 0) ? sample_top(tv, ti, top, mass[i], so, &rng[i])
                                                     : sample_token(lg, V, so, &rng[i], scratch);
      if (!o->forced && !o->ignore_eos && is_eos(cf, o, t)) {
        done[i] = true;
        res[i].stopped_at_eos = true;
        continue;
      }
      res[i].tokens[res[i].n_tokens++] = t;
      if (on_step && !on_step(step_ctx, i, res[i].tokens, res[i].n_tokens)) stop = true;
      if (res[i].n_tokens == limit[i]) {
        done[i] = true;
        continue;
      }
      next[i] = t;
      if (pair)
        items[active++] = (model_item_t){.seq = seq[n + i],
                                         .tokens = &next[i],
                                         .n_tokens = 1,
                                         .out = out2,
                                         .result = out2 ? logits + (uint64_t)(n + i) * V : NULL};
      items[active++] = sampled_item(&dst, seq[i], &next[i], 1, i);
    }
    if (stop || active == 0) break;
    if ((st = model_forward(m, items, active, hooks, err)) != LT_OK) break;
  }
out:
  for (uint32_t i = 0; seq && i < n * per; i++) model_seq_destroy(&seq[i]);
  if (st != LT_OK)
    for (uint32_t i = 0; i < n; i++) {
      free(res[i].tokens);
      res[i].tokens = NULL;
      res[i].n_tokens = 0;
    }
  free(seq), free(items), free(logits), free(scratch), free(rng), free(done), free(next), free(limit), free(top_val);
  free(top_ids), free(mass);
  return st;
}

lt_status_t model_score(model_t *m, const int32_t *tokens, uint32_t n, float *logprobs, lt_err_t *err) {
  if (n == 0) return LT_OK;
  logprobs[0] = 0;
  if (n == 1) return LT_OK;
  model_seq_t *s = model_seq_new(m, n, err);
  if (!s) return err ? err->code : LT_E_NOMEM;
  float *nll = malloc((uint64_t)n * 4);
  lt_status_t st = nll ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK) {
    /* Position i predicts token i + 1: feed tokens[0..n-1) with targets tokens[1..n). */
    model_item_t it = {
        .seq = s, .tokens = tokens, .n_tokens = n - 1, .out = MODEL_OUT_NLL, .result = nll, .targets = tokens + 1};
    st = model_forward(m, &it, 1, NULL, err);
  }
  if (st == LT_OK)
    for (uint32_t i = 1; i < n; i++) logprobs[i] = -nll[i - 1];
  free(nll);
  model_seq_destroy(&s);
  return st;
}
