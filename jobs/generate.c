/* The `generate` kind: batched text generation from one or more prompts, optionally steered (activation
 * addition, CogSteer contrastive intervention, ROSE). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/generate.h"
#include "common/util.h"
#include "jobs/datajob.h"
#include "jobs/runners.h"

/* Bytes of generated text the result holds at most (the rest of a reply needs room too). */
#define RESULT_TEXTS_MAX (256u << 10)
#include "jobs/steer_common.h"

/* A prompt's text goes out as `text` events at most this often while it is generated (and once at its end). */
#define STREAM_EVERY_MS 100

typedef struct progress {
  job_ctx_t *ctx;
  const tok_t *tok;
  uint64_t done, total;
  size_t *sent;       /* bytes of each prompt's text sent in `text` events */
  int64_t *sent_mono; /* when each prompt's last piece went */
} progress_t;

/* Length of the longest prefix of s[0..n) that does not end inside a UTF-8 sequence. */
static size_t utf8_whole(const char *s, size_t n) {
  size_t i = n, back = 0;
  while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) i--, back++;
  if (i == 0) return n;
  unsigned char lead = (unsigned char)s[i - 1];
  size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  return back + 1 >= need ? n : i - 1;
}

/* Sends what item's text has grown by since its last piece (decoding all its tokens, so pieces always join up to
 * the final text); done: the item's last piece, whatever remains. */
static void stream_text(progress_t *p, uint32_t item, const int32_t *tokens, uint32_t n, bool done) {
  char *text = NULL;
  size_t len = 0;
  if (tok_decode(p->tok, tokens, n, TOK_KEEP_LEADING, &text, &len, NULL) != LT_OK) return;
  size_t upto = done ? len : utf8_whole(text, len);
  size_t from = p->sent[item] < upto ? p->sent[item] : upto;
  if (upto > from || done) {
    job_text(p->ctx, item, p->sent[item] == 0 ? job_param_list_at(p->ctx, "prompt", item) : NULL, text + from,
             upto - from, done);
    p->sent[item] = upto;
  }
  free(text);
}

/* After each token: progress, the text so far (throttled), and a stop when the job is cancelled or asked to stop. */
static bool on_step(void *user, uint32_t item, const int32_t *tokens, uint32_t n) {
  progress_t *p = user;
  job_progress(p->ctx, ++p->done, p->total, "tokens");
  int64_t now = util_mono_ms();
  if (now - p->sent_mono[item] >= STREAM_EVERY_MS) {
    p->sent_mono[item] = now;
    stream_text(p, item, tokens, n, false);
  }
  return job_should_stop(p->ctx) == JOB_GO;
}

job_outcome_t run_generate(job_ctx_t *ctx, lt_err_t *err) {
  const char *path = job_param_str(ctx, "model");
  size_t n = job_param_list_len(ctx, "prompt");
  gen_opts_t o = {.max_tokens = (uint32_t)job_param_int(ctx, "max_tokens"),
                  .sample = {.temperature = (float)job_param_float(ctx, "temperature"),
                             .top_k = (uint32_t)job_param_int(ctx, "top_k"),
                             .top_p = (float)job_param_float(ctx, "top_p")},
                  .seed = (uint64_t)job_param_int(ctx, "seed"),
                  .ignore_eos = job_param_bool(ctx, "ignore_eos")};
  unsigned flags = job_param_bool(ctx, "add_bos") ? TOK_ADD_BOS : 0;
  job_outcome_t out = JOB_FAILED;
  tok_t *tok = NULL;
  model_t *m = job_model(ctx, path, &tok, err);
  if (!m) return JOB_FAILED;
  const char **texts = calloc(n, sizeof *texts);
  char **outs = NULL; /* the decoded texts */
  FILE *gens = NULL;  /* generations.jsonl */
  gen_result_t *res = calloc(n, sizeof *res);
  job_steer_t js = {0};
  progress_t pr = {0};
  if (!texts || !res) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) texts[i] = job_param_list_at(ctx, "prompt", i);
  if (job_steer_init(&js, ctx, m, tok, texts, n, flags, err) != LT_OK) goto done;
  /* Generation stops at the model's context (positions past it were never trained): said once in the log, and
   * such texts end with stop "context". */
  uint32_t ctx_len = model_config(m)->max_position, longest = 0, asked = o.max_tokens;
  for (size_t i = 0; i < n; i++) longest = js.prompts.lens[i] > longest ? js.prompts.lens[i] : longest;
  if (ctx_len && longest >= ctx_len) {
    lt_fail(err, LT_E_LIMIT, "a prompt of %u tokens fills the model's context of %u tokens: nothing can be generated",
            longest, ctx_len);
    goto done;
  }
  if (ctx_len && o.max_tokens > ctx_len - longest) {
    o.max_tokens = ctx_len - longest;
    job_log(ctx,
            "max_tokens %u reaches past the model's context (%u tokens, the longest prompt %u): generating %u "
            "at most",
            asked, ctx_len, longest, o.max_tokens);
  }
  pr = (progress_t){.ctx = ctx,
                    .tok = tok,
                    .total = (uint64_t)o.max_tokens * n,
                    .sent = calloc(n, sizeof *pr.sent),
                    .sent_mono = calloc(n, sizeof *pr.sent_mono)};
  if (!pr.sent || !pr.sent_mono) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  job_progress(ctx, 0, pr.total, "tokens");
  if (steer_generate(m, &js.cfg, (const int32_t *const *)js.prompts.ids, js.prompts.lens, (uint32_t)n, &o, on_step, &pr,
                     res, err) != LT_OK)
    goto done;
  job_stop_t stop = job_should_stop(ctx);
  if (stop != JOB_GO) {
    out = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
    goto done;
  }
  for (size_t i = 0; i < n; i++) stream_text(&pr, (uint32_t)i, res[i].tokens, res[i].n_tokens, true);
  uint64_t total = 0;
  size_t text_bytes = 0;
  if (!(outs = calloc(n, sizeof *outs)) || !(gens = dj_create(ctx, "generations.jsonl", err))) {
    if (!outs) lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    char *text = NULL;
    size_t tlen = 0;
    if (tok_decode(tok, res[i].tokens, res[i].n_tokens, TOK_KEEP_LEADING, &text, &tlen, err) != LT_OK) goto done;
    const char *why = res[i].stopped_at_eos                                                     ? "eos"
                      : o.max_tokens < asked && js.prompts.lens[i] + res[i].n_tokens >= ctx_len ? "context"
                                                                                                : "max_tokens";
    json_t *row = json_pack("{s:s, s:s, s:i, s:s}", "prompt", job_param_list_at(ctx, "prompt", i), "text", text,
                            "tokens", (int)res[i].n_tokens, "stop", why);
    if (!row || dj_write(gens, row, err) != LT_OK) {
      free(text);
      goto done;
    }
    outs[i] = text, text_bytes += tlen;
    job_output_begin(ctx);
    job_output_str(ctx, "prompt", job_param_list_at(ctx, "prompt", i));
    job_output_str(ctx, "text", text);
    job_output_ints(ctx, "tokens", res[i].tokens, res[i].n_tokens);
    job_output_int(ctx, "prompt_tokens", js.prompts.lens[i]);
    job_output_str(ctx, "stop", why);
    job_output_int(ctx, "item", (int64_t)i);
    if (js.cfg.method != STEER_NONE) job_output_str(ctx, "steer", steer_method_str(js.cfg.method));
    job_output_end(ctx);
    total += res[i].n_tokens;
  }
  job_result_int(ctx, "prompts", (int64_t)n);
  job_result_int(ctx, "tokens", (int64_t)total);
  /* The texts themselves, while they stay small enough for a reply; all of them are in generations.jsonl. */
  if (text_bytes <= RESULT_TEXTS_MAX)
    job_result_strs(ctx, "texts", (const char *const *)outs, n);
  else
    job_result_str(ctx, "texts_in", "generations.jsonl");
  out = JOB_SUCCEEDED;
done:
  if (gens) fclose(gens);
  for (size_t i = 0; outs && i < n; i++) free(outs[i]);
  free(outs);
  for (size_t i = 0; res && i < n; i++) free(res[i].tokens);
  free(texts), free(res);
  free(pr.sent), free(pr.sent_mono);
  job_steer_free(&js);
  return out;
}
