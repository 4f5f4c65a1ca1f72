/* The speech-text model: features, prompts, greedy answers and training steps over a speech model and an LLM. */
#include "methods/speechlm.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/audio/audio.h"
#include "engine/ops/ops_audio.h"

/* Where the speech goes in the rendered user turn (control bytes no template writes). */
#define SPEECH_MARK "\x01\x02speech\x02\x01"

struct slm {
  speech_t *sp;
  model_t *llm;
  const tok_t *tok;
  const chat_tmpl_t *tmpl;
  gpu_t *g;
  logmel_shape_t mel;
  gpu_buf_t *mel_tab;
  int32_t placeholder;
  uint32_t d; /* the LLM's hidden size */
};

slm_t *slm_new(speech_t *sp, model_t *llm, const tok_t *tok, const chat_tmpl_t *tmpl, lt_err_t *err) {
  const speech_config_t *c = speech_config(sp);
  uint32_t d = model_config(llm)->hidden_size;
  if (c->llm_hidden != d)
    return lt_fail(err, LT_E_INVALID,
                   "the speech model's connector writes %u dimensions; the LLM's hidden size is %u (a connector for "
                   "another LLM?)",
                   c->llm_hidden, d),
           NULL;
  slm_t *s = calloc(1, sizeof *s);
  if (!s) return lt_fail(err, LT_E_NOMEM, "out of memory"), NULL;
  s->sp = sp, s->llm = llm, s->tok = tok, s->tmpl = tmpl, s->g = model_gpu(llm), s->d = d;
  s->mel = logmel_whisper();
  s->mel.n_mels = c->n_mels;
  s->placeholder = 0;
  uint64_t tn = logmel_table_len(&s->mel);
  float *tab = malloc(tn * 4);
  s->mel_tab = tab ? gpu_buf_new(s->g, tn * 4, err) : NULL;
  lt_status_t st = s->mel_tab ? LT_OK : (err && err->code ? err->code : lt_fail(err, LT_E_NOMEM, "out of memory"));
  if (st == LT_OK) {
    logmel_table(&s->mel, tab);
    st = gpu_upload(s->mel_tab, 0, tab, tn * 4, err);
  }
  free(tab);
  if (st != LT_OK) slm_destroy(&s);
  return s;
}

void slm_destroy(slm_t **sp) {
  if (!sp || !*sp) return;
  gpu_buf_destroy(&(*sp)->mel_tab);
  free(*sp);
  *sp = NULL;
}

lt_status_t slm_features(slm_t *s, const char *path, double max_seconds, float **feats, uint32_t *T, lt_err_t *err) {
  *feats = NULL, *T = 0;
  audio_t a;
  lt_status_t st = audio_load(path, s->mel.rate, max_seconds, &a, err);
  if (st != LT_OK) return st;
  if (logmel_check(&s->mel, a.n, err) != LT_OK) {
    audio_free(&a);
    return lt_fail(err, LT_E_INVALID, "audio %s: %.3f s is too short for one 25 ms window", path,
                   (double)a.n / s->mel.rate);
  }
  uint32_t frames = logmel_frames(a.n, &s->mel);
  uint64_t out_n = (uint64_t)frames * s->mel.n_mels;
  gpu_buf_t *bx = gpu_buf_new(s->g, a.n * 4, err), *by = bx ? gpu_buf_new(s->g, out_n * 4, err) : NULL;
  float *y = malloc(out_n * 4);
  st = bx && by ? LT_OK : (err ? err->code : LT_E_DEVICE_OOM);
  if (st == LT_OK && !y) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st == LT_OK) st = gpu_upload(bx, 0, a.samples, a.n * 4, err);
  gpu_cmd_t *c = st == LT_OK ? gpu_cmd_begin(s->g, err) : NULL;
  if (st == LT_OK && !c) st = err ? err->code : LT_E_VULKAN;
  if (st == LT_OK) st = op_logmel(c, gv(by), gv(bx), gv(s->mel_tab), a.n, &s->mel, err);
  if (st == LT_OK) st = gpu_cmd_finish(&c, err);
  gpu_cmd_abort(&c);
  if (st == LT_OK) st = gpu_download(by, 0, y, out_n * 4, err);
  gpu_buf_destroy(&bx), gpu_buf_destroy(&by);
  audio_free(&a);
  if (st != LT_OK) {
    free(y);
    return st;
  }
  *feats = y, *T = frames;
  return LT_OK;
}

lt_status_t slm_speech_rows(slm_t *s, const float *feats, uint32_t T, float **rows, uint32_t *n, lt_err_t *err) {
  *rows = NULL, *n = 0;
  lt_status_t st = speech_forward(s->sp, feats, T, false, err);
  if (st != LT_OK) return st;
  uint32_t r, c;
  gpu_buf_t *b = speech_output(s->sp, &r, &c);
  float *h = malloc((uint64_t)r * c * 4 + 4);
  if (!h) return lt_fail(err, LT_E_NOMEM, "out of memory");
  st = gpu_download(b, 0, h, (uint64_t)r * c * 4, err);
  if (st != LT_OK) {
    free(h);
    return st;
  }
  *rows = h, *n = r;
  return LT_OK;
}

/* ---- prompts ---- */

/* Appends the tokens of text (flags as tok_encode) to p. */
static lt_status_t append_text(slm_t *s, slm_prompt_t *p, const char *text, size_t len, unsigned flags, lt_err_t *err) {
  int32_t *ids = NULL;
  size_t n = 0;
  lt_status_t st = len ? tok_encode(s->tok, text, len, flags, &ids, &n, err) : LT_OK;
  if (st == LT_OK && !len && (flags & TOK_ADD_BOS) && tok_bos(s->tok) >= 0) {
    ids = malloc(sizeof *ids), n = 1;
    if (!ids) return lt_fail(err, LT_E_NOMEM, "out of memory");
    ids[0] = tok_bos(s->tok);
  }
  if (st != LT_OK) return st;
  int32_t *grown = realloc(p->ids, (p->n + n + 1) * sizeof *grown);
  if (!grown) {
    free(ids);
    return lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  p->ids = grown;
  if (n) memcpy(p->ids + p->n, ids, n * sizeof *ids);
  p->n += (uint32_t)n;
  free(ids);
  return LT_OK;
}

/* The user turn with content rendered by the template (generation prompt on); caller frees. */
static lt_status_t render(slm_t *s, const char *content, char **out, lt_err_t *err) {
  chat_msg_t m[] = {{"user", content}};
  size_t len;
  return chat_render(s->tmpl, m, 1, true, out, &len, err);
}

/* content = instruction, a blank line, then tail (the instruction alone when it is empty). */
static char *join_content(const char *instruction, const char *tail) {
  size_t a = strlen(instruction), b = strlen(tail);
  char *c = malloc(a + b + 3);
  if (!c) return NULL;
  snprintf(c, a + b + 3, "%s%s%s", instruction, a ? "\n\n" : "", tail);
  return c;
}

lt_status_t slm_prompt_speech(slm_t *s, const char *instruction, uint32_t n_speech, const char *target, slm_prompt_t *p,
                              lt_err_t *err) {
  memset(p, 0, sizeof *p);
  char *content = join_content(instruction ? instruction : "", SPEECH_MARK), *text = NULL;
  if (!content) return lt_fail(err, LT_E_NOMEM, "out of memory");
  lt_status_t st = render(s, content, &text, err);
  free(content);
  if (st != LT_OK) return st;
  char *mark = strstr(text, SPEECH_MARK);
  if (!mark) {
    free(text);
    return lt_fail(err, LT_E_UNSUPPORTED, "the chat template does not keep the user's text as it is written");
  }
  unsigned flags = chat_encode_flags(s->tmpl, s->tok);
  st = append_text(s, p, text, (size_t)(mark - text), flags, err);
  p->speech_at = p->n;
  for (uint32_t i = 0; st == LT_OK && i < n_speech; i++) {
    int32_t *grown = realloc(p->ids, (p->n + 2) * sizeof *grown);
    if (!grown) {
      st = lt_fail(err, LT_E_NOMEM, "out of memory");
      break;
    }
    p->ids = grown;
    p->ids[p->n++] = s->placeholder;
  }
  p->n_speech = n_speech;
  const char *after = mark + strlen(SPEECH_MARK);
  if (st == LT_OK) st = append_text(s, p, after, strlen(after), flags & ~TOK_ADD_BOS, err);
  free(text);
  p->target_at = p->n;
  if (st == LT_OK && target) {
    /* After the plain template's "Assistant:" an answer starts with a space; the answer ends with its line. */
    bool plain = chat_tmpl_is_plain(s->tmpl);
    size_t tl = strlen(target);
    char *t = malloc(tl + 3);
    if (!t) st = lt_fail(err, LT_E_NOMEM, "out of memory");
    if (st == LT_OK) {
      snprintf(t, tl + 3, "%s%s\n", plain && target[0] != ' ' ? " " : "", target);
      st = append_text(s, p, t, strlen(t), 0, err);
      free(t);
    }
  }
  if (st != LT_OK) slm_prompt_free(p);
  return st;
}

lt_status_t slm_prompt_text(slm_t *s, const char *instruction, const char *input, slm_prompt_t *p, lt_err_t *err) {
  memset(p, 0, sizeof *p);
  char *content = join_content(instruction ? instruction : "", input ? input : ""), *text = NULL;
  if (!content) return lt_fail(err, LT_E_NOMEM, "out of memory");
  lt_status_t st = render(s, content, &text, err);
  free(content);
  if (st == LT_OK) st = append_text(s, p, text, strlen(text), chat_encode_flags(s->tmpl, s->tok), err);
  free(text);
  p->target_at = p->n;
  if (st != LT_OK) slm_prompt_free(p);
  return st;
}

void slm_prompt_free(slm_prompt_t *p) {
  if (!p) return;
  free(p->ids);
  memset(p, 0, sizeof *p);
}

/* ---- answers ---- */

static bool is_eos(const model_config_t *c, int32_t id) {
  for (uint32_t i = 0; i < c->n_eos; i++)
    if (c->eos_ids[i] == id) return true;
  return false;
}

/* The text of ids without special tokens, cut at the first newline or turn marker, trimmed; caller frees. */
static char *answer_text(slm_t *s, const int32_t *ids, uint32_t n, lt_err_t *err) {
  char *t = NULL;
  size_t len = 0;
  if (n == 0) return strdup("");
  if (tok_decode(s->tok, ids, n, TOK_SKIP_SPECIAL | TOK_UTF8_REPLACE, &t, &len, err) != LT_OK) return NULL;
  char *cut = strchr(t, '\n');
  if (cut) *cut = 0;
  char *b = t;
  while (*b && isspace((unsigned char)*b)) b++;
  size_t k = strlen(b);
  while (k && isspace((unsigned char)b[k - 1])) b[--k] = 0;
  memmove(t, b, k + 1);
  return t;
}

lt_status_t slm_answer(slm_t *s, const slm_prompt_t *prompts, const float *const *rows, uint32_t n, uint32_t max_tokens,
                       char **texts, lt_err_t *err) {
  const model_config_t *c = model_config(s->llm);
  uint32_t V = c->vocab_size, window = c->max_position ? c->max_position : 4096;
  for (uint32_t i = 0; i < n; i++) texts[i] = NULL;
  model_seq_t **seq = calloc(n ? n : 1, sizeof *seq);
  model_item_t *it = calloc(n ? n : 1, sizeof *it);
  float *logits = malloc((uint64_t)(n ? n : 1) * V * 4);
  int32_t *gen = calloc((uint64_t)(n ? n : 1) * (max_tokens + 1), sizeof *gen), *next = calloc(n ? n : 1, 4);
  uint32_t *len = calloc(n ? n : 1, 4), *who = calloc(n ? n : 1, 4);
  bool *done = calloc(n ? n : 1, 1);
  lt_status_t st =
      seq && it && logits && gen && next && len && who && done ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  for (uint32_t i = 0; st == LT_OK && i < n; i++) {
    if (prompts[i].n + 1 > window) {
      st = lt_fail(err, LT_E_LIMIT, "prompt %u: %u tokens leave no room in the LLM's context window (%u)", i,
                   prompts[i].n, window);
      break;
    }
    uint32_t cap = prompts[i].n + max_tokens + 1 < window ? prompts[i].n + max_tokens + 1 : window;
    if (!(seq[i] = model_seq_new(s->llm, cap, err))) st = err ? err->code : LT_E_NOMEM;
  }
  /* Prefill: every prompt at once. */
  uint32_t active = 0;
  for (uint32_t i = 0; st == LT_OK && i < n; i++) {
    it[active] = (model_item_t){.seq = seq[i],
                                .tokens = prompts[i].ids,
                                .n_tokens = prompts[i].n,
                                .out = MODEL_OUT_LAST,
                                .result = logits + (uint64_t)active * V};
    if (rows && rows[i] && prompts[i].n_speech)
      it[active].embeds = rows[i], it[active].embeds_at = prompts[i].speech_at,
      it[active].n_embeds = prompts[i].n_speech;
    who[active++] = i;
  }
  while (st == LT_OK && active) {
    st = model_forward(s->llm, it, active, NULL, err);
    uint32_t keep = 0;
    for (uint32_t k = 0; st == LT_OK && k < active; k++) {
      uint32_t i = who[k];
      const float *l = logits + (uint64_t)k * V;
      int32_t best = 0;
      for (uint32_t v = 1; v < V; v++)
        if (l[v] > l[best]) best = (int32_t)v;
      bool stop = is_eos(c, best);
      if (!stop) {
        gen[(uint64_t)i * (max_tokens + 1) + len[i]++] = best;
        char *tt = NULL;
        size_t tl = 0;
        if (tok_decode(s->tok, &best, 1, 0, &tt, &tl, NULL) == LT_OK) stop = memchr(tt, '\n', tl) != NULL;
        free(tt);
      }
      if (stop || len[i] >= max_tokens || model_seq_len(seq[i]) + 1 >= window) continue;
      next[i] = best;
      it[keep] = (model_item_t){.seq = seq[i],
                                .tokens = &next[i],
                                .n_tokens = 1,
                                .out = MODEL_OUT_LAST,
                                .result = logits + (uint64_t)keep * V};
      who[keep++] = i;
    }
    active = keep;
  }
  for (uint32_t i = 0; st == LT_OK && i < n; i++)
    if (!(texts[i] = answer_text(s, gen + (uint64_t)i * (max_tokens + 1), len[i], err)))
      st = err && err->code ? err->code : lt_fail(err, LT_E_NOMEM, "out of memory");
  if (st != LT_OK)
    for (uint32_t i = 0; i < n; i++) free(texts[i]), texts[i] = NULL;
  for (uint32_t i = 0; seq && i < n; i++) model_seq_destroy(&seq[i]);
  free(seq), free(it), free(logits), free(gen), free(next), free(len), free(who), free(done);
  return st;
}

lt_status_t slm_target_nll(slm_t *s, const slm_prompt_t *prompts, const float *const *rows, uint32_t n, double *sum,
                           uint64_t *count, lt_err_t *err) {
  lt_status_t st = LT_OK;
  for (uint32_t i = 0; i < n && st == LT_OK; i++) {
    const slm_prompt_t *p = &prompts[i];
    if (p->target_at >= p->n || p->n < 2) continue;
    model_seq_t *q = model_seq_new(s->llm, p->n, err);
    float *nll = malloc(p->n * sizeof *nll);
    int32_t *tgt = malloc(p->n * sizeof *tgt);
    if (!q || !nll || !tgt) st = err && err->code ? err->code : lt_fail(err, LT_E_NOMEM, "out of memory");
    if (st == LT_OK) {
      /* Row j predicts token j + 1: the targets are the prompt shifted by one. */
      for (uint32_t j = 0; j < p->n; j++) tgt[j] = j + 1 < p->n ? p->ids[j + 1] : p->ids[j];
      model_item_t it = {
          .seq = q, .tokens = p->ids, .n_tokens = p->n - 1, .out = MODEL_OUT_NLL, .result = nll, .targets = tgt};
      if (rows && rows[i] && p->n_speech) it.embeds = rows[i], it.embeds_at = p->speech_at, it.n_embeds = p->n_speech;
      st = model_forward(s->llm, &it, 1, NULL, err);
      for (uint32_t j = p->target_at - 1; st == LT_OK && j + 1 < p->n; j++) *sum += nll[j], (*count)++;
    }
    model_seq_destroy(&q);
    free(nll), free(tgt);
  }
  return st;
}

/* ---- training ---- */

uint32_t slm_window(const slm_t *s) {
  uint32_t w = model_config(s->llm)->max_position;
  return w ? w : 4096;
}

lt_status_t slm_example_tokens(slm_t *s, const slm_example_t *ex, uint32_t *n, lt_err_t *err) {
  slm_prompt_t p;
  lt_status_t st = slm_prompt_speech(s, ex->instruction, speech_out_rows(s->sp, ex->T), ex->target, &p, err);
  *n = st == LT_OK ? p.n : 0;
  slm_prompt_free(&p);
  return st;
}

/* The batch of a step: ids and mask padded to the longest prompt, the speech rows on the device and their runs. */
typedef struct sbatch {
  int32_t *ids;
  uint8_t *mask;
  uint32_t n, T, tokens, total_rows;
  uint32_t *rows_at, *n_rows;
  gpu_buf_t *emb, *demb;
  train_input_run_t *runs;
} sbatch_t;

static void sbatch_free(sbatch_t *b) {
  free(b->ids), free(b->mask), free(b->rows_at), free(b->n_rows), free(b->runs);
  gpu_buf_destroy(&b->emb), gpu_buf_destroy(&b->demb);
  memset(b, 0, sizeof *b);
}

static lt_status_t sbatch_make(slm_t *s, const slm_example_t *ex, uint32_t n, bool grad, sbatch_t *b, lt_err_t *err) {
  memset(b, 0, sizeof *b);
  uint32_t window = slm_window(s);
  slm_prompt_t *p = calloc(n ? n : 1, sizeof *p);
  float **rows = calloc(n ? n : 1, sizeof *rows);
  b->rows_at = calloc(n ? n : 1, 4), b->n_rows = calloc(n ? n : 1, 4), b->runs = calloc(n ? n : 1, sizeof *b->runs);
  lt_status_t st = p && rows && b->rows_at && b->n_rows && b->runs ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  if (n == 0 && st == LT_OK) st = lt_fail(err, LT_E_INVALID, "an empty batch");
  for (uint32_t i = 0; st == LT_OK && i < n; i++) {
    st = slm_speech_rows(s, ex[i].feats, ex[i].T, &rows[i], &b->n_rows[i], err);
    if (st == LT_OK) st = slm_prompt_speech(s, ex[i].instruction, b->n_rows[i], ex[i].target, &p[i], err);
    if (st == LT_OK && p[i].n > window)
      st = lt_fail(err, LT_E_LIMIT, "example %u: %u tokens (%u of them speech) exceed the LLM's context window (%u)", i,
                   p[i].n, p[i].n_speech, window);
    if (st == LT_OK && p[i].n < 2) st = lt_fail(err, LT_E_INVALID, "example %u: an empty prompt", i);
    if (st != LT_OK) break;
    b->rows_at[i] = b->total_rows;
    b->total_rows += b->n_rows[i];
    if (p[i].n > b->T) b->T = p[i].n;
  }
  b->n = n;
  uint64_t d = s->d;
  if (st == LT_OK) {
    b->ids = malloc((uint64_t)n * b->T * 4), b->mask = calloc((uint64_t)n * (b->T - 1), 1);
    if (!b->ids || !b->mask) st = lt_fail(err, LT_E_NOMEM, "out of memory");
  }
  for (uint32_t i = 0; st == LT_OK && i < n; i++) {
    for (uint32_t j = 0; j < b->T; j++) b->ids[(uint64_t)i * b->T + j] = j < p[i].n ? p[i].ids[j] : s->placeholder;
    for (uint32_t j = p[i].target_at; j < p[i].n; j++) b->mask[(uint64_t)i * (b->T - 1) + j - 1] = 1, b->tokens++;
    b->runs[i] = (train_input_run_t){.seq = i, .pos = p[i].speech_at, .n = b->n_rows[i], .row = b->rows_at[i]};
  }
  if (st == LT_OK && b->tokens == 0) st = lt_fail(err, LT_E_INVALID, "the batch has no target token");
  if (st == LT_OK) {
    b->emb = gpu_buf_new(s->g, (uint64_t)b->total_rows * d * 4 + 4, err);
    if (b->emb && grad) b->demb = gpu_buf_new(s->g, (uint64_t)b->total_rows * d * 4 + 4, err);
    if (!b->emb || (grad && !b->demb)) st = err ? err->code : LT_E_DEVICE_OOM;
  }
  for (uint32_t i = 0; st == LT_OK && i < n; i++)
    st = gpu_upload(b->emb, (uint64_t)b->rows_at[i] * d * 4, rows[i], (uint64_t)b->n_rows[i] * d * 4, err);
  for (uint32_t i = 0; p && i < n; i++) slm_prompt_free(&p[i]);
  for (uint32_t i = 0; rows && i < n; i++) free(rows[i]);
  free(p), free(rows);
  if (st != LT_OK) sbatch_free(b);
  return st;
}

lt_status_t slm_eval_loss(slm_t *s, train_t *t, const slm_example_t *ex, uint32_t n, double *loss, lt_err_t *err) {
  sbatch_t b;
  lt_status_t st = sbatch_make(s, ex, n, false, &b, err);
  if (st != LT_OK) return st;
  uint32_t n_runs = 0;
  for (uint32_t i = 0; i < n; i++)
    if (b.n_rows[i]) b.runs[n_runs++] = b.runs[i];
  st = train_set_inputs(t, b.emb, NULL, b.runs, n_runs, err);
  if (st == LT_OK) st = train_loss(t, b.ids, b.mask, b.n, b.T, loss, err);
  train_set_inputs(t, NULL, NULL, NULL, 0, NULL);
  sbatch_free(&b);
  return st;
}

lt_status_t slm_train_step(slm_t *s, train_t *t, tuner_t *lora, const slm_example_t *ex, uint32_t n,
                           const slm_step_opts_t *o, slm_step_info_t *info, lt_err_t *err) {
  memset(info, 0, sizeof *info);
  sbatch_t b;
  lt_status_t st = sbatch_make(s, ex, n, true, &b, err);
  if (st != LT_OK) return st;
  info->tokens = b.tokens, info->max_len = b.T;
  st = train_set_inputs(t, b.emb, b.demb, b.runs, n, err);
  if (st == LT_OK) {
    if (lora) {
      tune_batch_t mb = {.ids = b.ids, .mask = b.mask, .n_seq = b.n, .T = b.T};
      tune_step_info_t ti;
      st = tuner_step(lora, &mb, 1, &ti, err);
      info->loss = ti.loss;
    } else {
      st = train_grad(t, b.ids, b.mask, b.n, b.T, 1.0f, &info->loss, err);
    }
  }
  train_set_inputs(t, NULL, NULL, NULL, 0, NULL);
  /* The speech model: each example's forward again (its activations were overwritten by the next example's),
   * then its backward from its rows' gradient. */
  uint32_t most = 0;
  for (uint32_t i = 0; i < n; i++) most = b.n_rows[i] > most ? b.n_rows[i] : most;
  gpu_buf_t *dout = st == LT_OK ? gpu_buf_new(s->g, (uint64_t)most * s->d * 4 + 4, err) : NULL;
  if (st == LT_OK && !dout) st = err ? err->code : LT_E_DEVICE_OOM;
  if (st == LT_OK) st = speech_zero_grad(s->sp, err);
  for (uint32_t i = 0; st == LT_OK && i < n; i++) {
    st = speech_forward(s->sp, ex[i].feats, ex[i].T, true, err);
    gpu_cmd_t *c = st == LT_OK ? gpu_cmd_begin(s->g, err) : NULL;
    if (st == LT_OK && !c) st = err ? err->code : LT_E_VULKAN;
    if (st == LT_OK)
      st = gpu_cmd_copy(c, b.demb, (uint64_t)b.rows_at[i] * s->d * 4, dout, 0, (uint64_t)b.n_rows[i] * s->d * 4, err);
    if (st == LT_OK) st = gpu_cmd_finish(&c, err);
    gpu_cmd_abort(&c);
    if (st == LT_OK) st = speech_backward(s->sp, dout, err);
  }
  double ss = 0;
  if (st == LT_OK) st = speech_grad_sumsq(s->sp, &ss, err);
  if (st == LT_OK && !isfinite(ss)) st = lt_fail(err, LT_E_NUMERIC, "the speech model's gradient is not finite");
  info->grad_norm = sqrt(ss);
  float scale = o->clip > 0 && info->grad_norm > o->clip ? (float)(o->clip / info->grad_norm) : 1.0f;
  if (st == LT_OK) st = speech_adamw(s->sp, o->lr, o->weight_decay, scale, o->step, err);
  gpu_buf_destroy(&dout);
  sbatch_free(&b);
  return st;
}

/* ---- word error ---- */

/* Splits text into words: lower-cased letters and digits (apostrophes inside words kept), split at anything
 * else. Returns the count; words[i] point into buf (caller frees buf and words). */
static uint32_t words_of(const char *text, char **buf, char ***words) {
  size_t n = strlen(text);
  char *b = malloc(n + 1);
  char **w = malloc((n / 2 + 2) * sizeof *w);
  uint32_t k = 0;
  size_t o = 0;
  bool in = false;
  for (size_t i = 0; b && w && i < n; i++) {
    unsigned char ch = (unsigned char)text[i];
    bool keep = isalnum(ch) || ch >= 0x80 || (ch == '\'' && in && i + 1 < n && isalnum((unsigned char)text[i + 1]));
    if (keep) {
      if (!in) w[k++] = b + o;
      b[o++] = (char)tolower(ch);
      in = true;
    } else if (in) {
      b[o++] = 0;
      in = false;
    }
  }
  if (b && in) b[o++] = 0;
  *buf = b, *words = w;
  return b && w ? k : 0;
}

uint32_t slm_word_edits(const char *hyp, const char *ref, uint32_t *ref_words) {
  char *hb, *rb, **hw, **rw;
  uint32_t nh = words_of(hyp, &hb, &hw), nr = words_of(ref, &rb, &rw);
  *ref_words = nr;
  uint32_t *prev = malloc((nh + 1) * 4), *cur = malloc((nh + 1) * 4), edits = nh > nr ? nh : nr;
  if (prev && cur) {
    for (uint32_t j = 0; j <= nh; j++) prev[j] = j;
    for (uint32_t i = 1; i <= nr; i++) {
      cur[0] = i;
      for (uint32_t j = 1; j <= nh; j++) {
        uint32_t sub = prev[j - 1] + (strcmp(rw[i - 1], hw[j - 1]) != 0), del = prev[j] + 1, ins = cur[j - 1] + 1;
        cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
      }
      uint32_t *tmp = prev;
      prev = cur, cur = tmp;
    }
    edits = prev[nh];
  }
  free(prev), free(cur), free(hb), free(rb), free(hw), free(rw);
  return edits;
}
