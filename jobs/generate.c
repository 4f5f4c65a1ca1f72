/* The `generate` kind: batched text generation from one or more prompts, optionally steered (activation
 * addition, CogSteer contrastive intervention, ROSE). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/generate.h"
#include "engine/model/model_tok.h"
#include "common/util.h"
#include "jobs/datajob.h"
#include "jobs/runners.h"
#include "jobs/speech_job.h"

/* Bytes of generated text the result holds at most (the rest of a reply needs room too). */
#define RESULT_TEXTS_MAX (256u << 10)
#include "jobs/steer_common.h"

/* A prompt's text goes out as `text` events at most this often while it is generated (and once at its end). */
#define STREAM_EVERY_MS 100

/* End-of-turn tokens of common chat templates: with --chat, any of them the vocabulary holds as a special token
 * ends a reply (besides the model's end-of-sequence tokens). */
static const char *const TURN_ENDS[] = {"<|im_end|>",    "<|eot_id|>",      "<|end|>",    "<end_of_turn>",
                                        "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>", "</s>"};

typedef struct progress {
  job_ctx_t *ctx;
  const tok_t *tok;
  const char *const *stops; /* with the plain template: text that opens the next turn (the reply is cut there) */
  size_t hold;              /* bytes held back while streaming: the longest stop string */
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

/* The length of text[0..len) cut before its first stop string (len when none); *cut says whether one was found. */
static size_t stop_cut(const char *const *stops, const char *text, size_t len, bool *cut) {
  size_t at = len;
  for (size_t i = 0; stops && stops[i]; i++) {
    const char *hit = memmem(text, len, stops[i], strlen(stops[i]));
    if (hit && (size_t)(hit - text) < at) at = (size_t)(hit - text);
  }
  if (cut) *cut = at < len;
  return at;
}

/* Sends what item's text has grown by since its last piece (decoding all its tokens, so pieces always join up to
 * the final text); done: the item's last piece, whatever remains. Text past a stop string is never sent, nor the
 * last bytes that could be the start of one until the item is done. */
static void stream_text(progress_t *p, uint32_t item, const int32_t *tokens, uint32_t n, bool done) {
  char *text = NULL;
  size_t len = 0;
  if (tok_decode(p->tok, tokens, n, TOK_KEEP_LEADING, &text, &len, NULL) != LT_OK) return;
  bool cut = false;
  size_t end = stop_cut(p->stops, text, len, &cut);
  if (!done && !cut) end = end > p->hold ? end - p->hold : 0;
  size_t upto = done || cut ? end : utf8_whole(text, end);
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
  if (*job_param_str(ctx, "audio")) return speech_generate(ctx, err);
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
  chat_tmpl_t *tmpl = NULL;
  char **rendered = NULL; /* the prompts as conversations, with --chat */
  if (!texts || !res) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) texts[i] = job_param_list_at(ctx, "prompt", i);
  bool chat = job_param_bool(ctx, "chat");
  int32_t stop_ids[sizeof TURN_ENDS / sizeof TURN_ENDS[0]];
  uint32_t n_stop = 0;
  if (chat) {
    /* Each prompt becomes a conversation: the system message, if any, and the prompt as the user's turn. */
    if (!(tmpl = model_chat_template_open(path, err)) || !(rendered = calloc(n, sizeof *rendered))) {
      if (tmpl) lt_fail(err, LT_E_NOMEM, "out of memory");
      goto done;
    }
    const char *sys = job_param_str(ctx, "system");
    for (size_t i = 0; i < n; i++) {
      chat_msg_t msgs[2] = {{"system", sys}, {"user", texts[i]}};
      size_t len = 0;
      if (chat_render(tmpl, *sys ? msgs : msgs + 1, *sys ? 2 : 1, true, &rendered[i], &len, err) != LT_OK) goto done;
      texts[i] = rendered[i];
    }
    flags = chat_encode_flags(tmpl, tok);
    if (chat_tmpl_is_plain(tmpl)) {
      pr.stops = CHAT_PLAIN_STOPS;
      for (size_t i = 0; CHAT_PLAIN_STOPS[i]; i++)
        if (strlen(CHAT_PLAIN_STOPS[i]) > pr.hold) pr.hold = strlen(CHAT_PLAIN_STOPS[i]);
    } else {
      for (size_t i = 0; i < sizeof TURN_ENDS / sizeof TURN_ENDS[0]; i++) {
        int32_t id = tok_find(tok, TURN_ENDS[i], strlen(TURN_ENDS[i]));
        int type = tok_token_type(tok, id);
        if (id >= 0 && (type == TOK_TYPE_CONTROL || type == TOK_TYPE_USER_DEFINED)) stop_ids[n_stop++] = id;
      }
      o.stop_ids = stop_ids, o.n_stop_ids = n_stop;
    }
    job_log(ctx, "chat: %s template%s, %u end-of-turn token%s", chat_tmpl_is_plain(tmpl) ? "the plain" : "the model's",
            *sys ? " with a system message" : "", n_stop, n_stop == 1 ? "" : "s");
  }
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
  pr.ctx = ctx, pr.tok = tok, pr.total = (uint64_t)o.max_tokens * n;
  pr.sent = calloc(n, sizeof *pr.sent), pr.sent_mono = calloc(n, sizeof *pr.sent_mono);
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
    if (tok_decode(tok, res[i].tokens, res[i].n_tokens, TOK_KEEP_LEADING | TOK_UTF8_REPLACE, &text, &tlen, err) !=
        LT_OK)
      goto done;
    bool cut = false;
    tlen = stop_cut(pr.stops, text, tlen, &cut);
    text[tlen] = '\0';
    const char *why = res[i].stopped_at_eos                                                     ? "eos"
                      : cut                                                                     ? "end_of_turn"
                      : o.max_tokens < asked && js.prompts.lens[i] + res[i].n_tokens >= ctx_len ? "context"
                                                                                                : "max_tokens";
    json_t *row = json_pack("{s:s, s:s, s:i, s:s}", "prompt", job_param_list_at(ctx, "prompt", i), "text", text,
                            "tokens", (int)res[i].n_tokens, "stop", why);
    if (!row || dj_write(gens, row, err) != LT_OK) {
      if (!row) lt_fail(err, LT_E_NOMEM, "out of memory writing the generations");
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
    if (chat) job_output_str(ctx, "rendered", texts[i]);
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
  for (size_t i = 0; rendered && i < n; i++) free(rendered[i]);
  free(rendered);
  chat_tmpl_destroy(&tmpl);
  job_steer_free(&js);
  return out;
}
