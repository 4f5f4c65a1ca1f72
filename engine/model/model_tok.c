/* Tokenizers and chat templates from Hugging Face folders and GGUF files. */
#include "engine/model/model_tok.h"
#include "engine/text/jsonl.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/model/gguf.h"
#include "engine/model/model_config.h"

static bool is_dir(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Builds a tok_t from the GGUF tokenizer arrays ("llama": SentencePiece by score; "gpt2": byte-level BPE). */
static tok_t *from_gguf(const char *path, lt_err_t *err) {
  gguf_t *g = NULL;
  if (gguf_open(&g, path, err) != LT_OK) return NULL;
  gguf_tokenizer_t gt;
  tok_t *t = NULL;
  uint32_t *lens = NULL;
  if (gguf_tokenizer(g, &gt, err) != LT_OK) goto out;
  if (gt.n_tokens > UINT32_MAX || gt.n_merges > UINT32_MAX) {
    lt_fail(err, LT_E_LIMIT, "%s: vocabulary too large", path);
    goto out;
  }
  tok_spec_t s = {.n_tokens = (uint32_t)gt.n_tokens,
                  .tokens = gt.tokens,
                  .scores = gt.scores,
                  .token_types = gt.token_types,
                  .bos_id = (int32_t)gt.bos_id,
                  .eos_id = (int32_t)gt.eos_id,
                  .unk_id = (int32_t)gt.unk_id};
  if (!(lens = malloc((gt.n_tokens ? gt.n_tokens : 1) * sizeof *lens))) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    goto out;
  }
  for (uint64_t i = 0; i < gt.n_tokens; i++) lens[i] = (uint32_t)gt.token_lens[i];
  s.token_lens = lens;
  const char *pre = NULL;
  const gguf_kv_t *kv = gguf_kv_find(g, "tokenizer.ggml.pre");
  if (kv) gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL);
  if (strcmp(gt.model, "llama") == 0) {
    s.kind = TOK_SPM;
    s.add_space_prefix = true;
    bool b;
    if (gguf_kv_find(g, "tokenizer.ggml.add_space_prefix") &&
        gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b, NULL) == LT_OK)
      s.add_space_prefix = b;
  } else if (strcmp(gt.model, "gpt2") == 0) {
    s.kind = TOK_BYTE_LEVEL;
    s.n_merges = (uint32_t)gt.n_merges;
    s.merges = gt.merges;
    tok_pre_by_name(pre, &s); /* unknown names keep GPT-2's pattern */
  } else {
    lt_fail(err, LT_E_UNSUPPORTED, "%s: tokenizer model \"%s\" is not supported (supported: llama, gpt2)", path,
            gt.model);
    goto out;
  }
  t = tok_new(&s, err);
out:
  free(lens);
  gguf_destroy(&g);
  return t;
}

tok_t *model_tokenizer_open(const char *path, lt_err_t *err) {
  if (!is_dir(path)) return from_gguf(path, err);
  char p[4096];
  snprintf(p, sizeof p, "%s/tokenizer.json", path);
  tok_t *t = tok_new_json(p, err);
  if (!t) return NULL;
  model_config_t cfg;
  if (model_config_from_hf(&cfg, path, NULL) == LT_OK) {
    int32_t eos = cfg.n_eos ? cfg.eos_ids[0] : tok_eos(t);
    int32_t bos = cfg.bos_id >= 0 ? cfg.bos_id : tok_bos(t);
    if (tok_set_bos_eos(t, bos, eos, err) != LT_OK) tok_destroy(&t);
  }
  return t;
}

/* A token's text in tokenizer_config.json: a string or an AddedToken object {"content": ...}. */
static const char *token_text(const json_t *v) {
  if (json_is_string(v)) return json_string_value(v);
  return json_string_value(json_object_get(v, "content"));
}

static chat_tmpl_t *tmpl_from_gguf(const char *path, lt_err_t *err) {
  gguf_t *g = NULL;
  if (gguf_open(&g, path, err) != LT_OK) return NULL;
  const char *src = NULL;
  chat_tmpl_t *t = NULL;
  if (!gguf_kv_find(g, "tokenizer.chat_template") || gguf_get_str(g, "tokenizer.chat_template", &src, err) != LT_OK) {
    t = chat_tmpl_plain(err);
  } else {
    gguf_tokenizer_t gt;
    const char *bos = "", *eos = "";
    if (gguf_tokenizer(g, &gt, NULL) == LT_OK) {
      if (gt.bos_id >= 0 && (uint64_t)gt.bos_id < gt.n_tokens) bos = gt.tokens[gt.bos_id];
      if (gt.eos_id >= 0 && (uint64_t)gt.eos_id < gt.n_tokens) eos = gt.tokens[gt.eos_id];
    }
    t = chat_tmpl_new(src, bos, eos, err);
  }
  gguf_destroy(&g);
  return t;
}

chat_tmpl_t *model_chat_template_open(const char *model_path, lt_err_t *err) {
  struct stat sb;
  if (stat(model_path, &sb) != 0) {
    lt_fail(err, LT_E_IO, "cannot open %s", model_path);
    return NULL;
  }
  if (!S_ISDIR(sb.st_mode)) return tmpl_from_gguf(model_path, err);
  char path[4200];
  snprintf(path, sizeof path, "%s/tokenizer_config.json", model_path);
  if (stat(path, &sb) != 0) return chat_tmpl_plain(err);
  json_error_t je;
  char jb[160];
  json_t *cfg = json_load_file(path, 0, &je);
  if (!cfg) {
    lt_fail(err, LT_E_CORRUPT, "%s: %s (line %d)", path, jsonl_error_brief(&je, jb, sizeof jb), je.line);
    return NULL;
  }
  const json_t *ct = json_object_get(cfg, "chat_template");
  const char *src = json_string_value(ct);
  if (json_is_array(ct)) { /* [{"name": "default", "template": ...}, {"name": "tool_use", ...}] */
    size_t i;
    json_t *e;
    json_array_foreach(ct, i, e) {
      const char *name = json_string_value(json_object_get(e, "name"));
      if (name && !strcmp(name, "default")) src = json_string_value(json_object_get(e, "template"));
    }
  }
  chat_tmpl_t *t = src ? chat_tmpl_new(src, token_text(json_object_get(cfg, "bos_token")),
                                       token_text(json_object_get(cfg, "eos_token")), err)
                       : chat_tmpl_plain(err);
  json_decref(cfg);
  return t;
}

/* A token's text for a message: printable ASCII as is, other bytes as \xNN, cut to 48 bytes of output. */
static void token_show(char *out, size_t cap, const tok_t *t, int32_t id) {
  size_t n = 0, o = 0;
  const char *s = tok_token_text(t, id, &n);
  for (size_t i = 0; s && i < n && o + 5 < cap && o < 48; i++) {
    unsigned char c = (unsigned char)s[i];
    o += (size_t)snprintf(out + o, cap - o, c >= 0x20 && c < 0x7f && c != '\'' ? "%c" : "\\x%02x", c);
  }
  out[o] = '\0';
}

lt_status_t model_tokenizers_same(const char *a, const char *b, const char *name_a, const char *name_b, lt_err_t *err) {
  tok_t *ta = model_tokenizer_open(a, err);
  if (!ta) return err ? err->code : LT_E_IO;
  tok_t *tb = model_tokenizer_open(b, err);
  if (!tb) {
    tok_destroy(&ta);
    return err ? err->code : LT_E_IO;
  }
  lt_status_t st = LT_OK;
  uint32_t na = tok_n_vocab(ta), nb = tok_n_vocab(tb), n = na < nb ? na : nb;
  for (uint32_t i = 0; i < n && st == LT_OK; i++) {
    size_t la = 0, lb = 0;
    const char *sa = tok_token_text(ta, (int32_t)i, &la), *sb = tok_token_text(tb, (int32_t)i, &lb);
    if (la == lb && !memcmp(sa, sb, la) && tok_token_type(ta, (int32_t)i) == tok_token_type(tb, (int32_t)i)) continue;
    char xa[200], xb[200];
    token_show(xa, sizeof xa, ta, (int32_t)i), token_show(xb, sizeof xb, tb, (int32_t)i);
    st = lt_fail(err, LT_E_INVALID,
                 "the %s and the %s do not share a tokenizer: token %u is '%s' in the %s's and '%s' in the %s's",
                 name_a, name_b, i, xa, name_a, xb, name_b);
  }
  if (st == LT_OK && na != nb)
    st = lt_fail(err, LT_E_INVALID,
                 "the %s and the %s do not share a tokenizer: the %s's has %u tokens, the %s's %u (token %u is the "
                 "first one only one of them has)",
                 name_a, name_b, name_a, na, name_b, nb, n);
  if (st == LT_OK && (tok_bos(ta) != tok_bos(tb) || tok_eos(ta) != tok_eos(tb)))
    st = lt_fail(err, LT_E_INVALID,
                 "the %s and the %s do not share a tokenizer: BOS / EOS ids %d / %d in the %s's, %d / %d in the %s's",
                 name_a, name_b, tok_bos(ta), tok_eos(ta), name_a, tok_bos(tb), tok_eos(tb), name_b);
  tok_destroy(&ta), tok_destroy(&tb);
  return st;
}
