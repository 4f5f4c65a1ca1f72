/* Tokenizers from Hugging Face folders and GGUF vocabularies. */
#include "engine/model_tok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/gguf.h"
#include "engine/model_config.h"

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
    static const char *llama3[] = {TOK_REGEX_LLAMA3};
    if (pre && strcmp(pre, "llama-bpe") == 0) {
      s.n_pre_regexes = 1;
      s.pre_regexes = llama3;
      s.ignore_merges = true;
    }
  } else {
    lt_fail(err, LT_E_UNSUPPORTED, "%s: tokenizer model \"%s\" is not supported (supported: llama, gpt2)", path,
            gt.model);
    goto out;
  }
  t = tok_new(&s, err);
out:
  free(lens);
  gguf_close(&g);
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
