/* Fuzz target for the parsers of files users hand to Lathe: the first byte picks the parser, the rest is the file.
 *   0 safetensors (header and tensor table)      1 GGUF (header, metadata, tensor infos)
 *   2 tokenizer.json                             3 config.json (a Hugging Face model configuration)
 *   4 a chat template (parsed, then rendered)    5 JSONL rows (read and tokenised as training rows)
 * Every input must give a clear error or a result, never a crash, a hang or a sanitizer report.
 * `make check` replays fuzz/corpus-files with mutations under ASan (fuzz/replay.c); with clang the same function
 * is a libFuzzer target. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/model/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "engine/text/chat.h"
#include "engine/text/jsonl.h"
#include "engine/text/tokenizer.h"

/* A tokenizer for the JSONL rows: bytes as tokens (256 of them), built once. */
static tok_t *byte_tokenizer(void) {
  static tok_t *t;
  if (t) return t;
  static const char json[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [], "
                             "\"byte_fallback\": false}, \"added_tokens\": []}";
  t = tok_new_json_buf(json, sizeof json - 1, NULL);
  return t;
}

static void jsonl_rows(const uint8_t *data, size_t size) {
  int fd = memfd_create("fuzz-jsonl", MFD_CLOEXEC);
  if (fd < 0) return;
  if (write(fd, data, size) == (ssize_t)size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    jsonl_t *r = jsonl_open(path, NULL);
    json_t *row = NULL;
    tok_t *tok = byte_tokenizer();
    for (int i = 0; r && i < 1000 && jsonl_next(r, &row, NULL) == LT_OK && row; i++) {
      int32_t *ids = NULL;
      size_t n = 0, first = 0;
      if (tok) jsonl_row_tokens(tok, row, 0, &ids, &n, &first, "fuzz", NULL);
      free(ids);
      json_decref(row);
    }
    jsonl_destroy(&r);
  }
  close(fd);
}

static void chat_template(const uint8_t *data, size_t size) {
  char *src = strndup((const char *)data, size);
  if (!src) return;
  chat_tmpl_t *t = chat_tmpl_new(src, "<s>", "</s>", NULL);
  if (t) {
    chat_msg_t msgs[] = {{"system", "Be brief."}, {"user", "Hello"}, {"assistant", "Hi"}, {"user", "Again"}};
    char *out = NULL;
    size_t len = 0;
    chat_render(t, msgs, 4, true, &out, &len, NULL);
    free(out);
    chat_tmpl_destroy(&t);
  }
  free(src);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t which = data[0] % 6;
  data++, size--;
  switch (which) {
  case 0: {
    st_file_t *f = NULL;
    if (st_open_buffer(&f, data, size, "fuzz.safetensors", NULL) == LT_OK) st_destroy(&f);
    break;
  }
  case 1: {
    gguf_t *g = NULL;
    if (gguf_open_buffer(&g, data, size, "fuzz.gguf", NULL) == LT_OK) {
      model_config_t cfg;
      model_config_from_gguf(&cfg, g, NULL);
      gguf_destroy(&g);
    }
    break;
  }
  case 2: {
    tok_t *t = tok_new_json_buf((const char *)data, size, NULL);
    if (t) {
      int32_t *ids = NULL;
      size_t n = 0;
      tok_encode(t, "Hello world, 123!", 17, TOK_ADD_BOS, &ids, &n, NULL);
      char *text = NULL;
      size_t len = 0;
      if (ids) tok_decode(t, ids, n, 0, &text, &len, NULL);
      free(ids), free(text);
      tok_destroy(&t);
    }
    break;
  }
  case 3: {
    json_t *j = json_loadb((const char *)data, size, 0, NULL);
    model_config_t cfg;
    if (j) model_config_from_json(&cfg, j, NULL, "fuzz/config.json", NULL);
    json_decref(j);
    break;
  }
  case 4: chat_template(data, size); break;
  default: jsonl_rows(data, size); break;
  }
  return 0;
}
