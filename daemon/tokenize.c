/* `lathe tokenize` (run as lathe-worker --tokenize ...): a model's tokenizer on text, in this process, with no
 * daemon and no device. The model may be a .gguf file (a vocabulary-only one will do) or a folder holding
 * tokenizer.json (config.json, when there, names BOS and EOS). */
#include "daemon/tokenize.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model_tok.h"

static int usage(void) {
  fprintf(stderr, "usage: lathe tokenize --model PATH (--text TEXT | --file FILE) [--add-bos] [--parse-special] "
                  "[--json]\n"
                  "  prints each input's token ids and, without --json, their pieces; --file: one input per line\n");
  return 2;
}

/* The piece of token id as its bytes decode, or as the tokenizer stores it when those bytes are not whole UTF-8
 * (a byte-fallback token): a new string, caller frees. */
static char *piece(const tok_t *t, int32_t id) {
  char *s = NULL;
  size_t n = 0;
  if (tok_decode(t, &id, 1, TOK_KEEP_LEADING, &s, &n, NULL) == LT_OK) {
    json_t *ok = json_stringn(s, n);
    if (ok) {
      json_decref(ok);
      return s;
    }
    free(s);
  }
  const char *raw = tok_token_text(t, id, &n);
  return raw ? strndup(raw, n) : strdup("?");
}

/* Tokenizes one input and prints it: ids then quoted pieces, or one JSON object. False on failure (said). */
static bool one(const tok_t *t, const char *text, size_t len, unsigned flags, bool json, const char *where) {
  int32_t *ids = NULL;
  size_t n = 0;
  lt_err_t err = {0};
  if (tok_encode(t, text, len, flags, &ids, &n, &err) != LT_OK) {
    fprintf(stderr, "lathe tokenize: %s: %s\n", where, err.msg);
    return false;
  }
  if (json) {
    json_t *o = json_object(), *a = json_array(), *p = json_array();
    for (size_t i = 0; i < n; i++) {
      char *s = piece(t, ids[i]);
      json_array_append_new(a, json_integer(ids[i]));
      json_array_append_new(p, json_string(s));
      free(s);
    }
    json_object_set_new(o, "ids", a);
    json_object_set_new(o, "pieces", p);
    char *line = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    puts(line ? line : "{}");
    free(line);
    json_decref(o);
  } else {
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
    fputs("\t", stdout);
    for (size_t i = 0; i < n; i++) {
      char *s = piece(t, ids[i]);
      json_t *q = json_string(s);
      char *quoted = q ? json_dumps(q, JSON_ENCODE_ANY) : NULL;
      printf("%s%s", i ? " " : "", quoted ? quoted : s);
      free(quoted), json_decref(q), free(s);
    }
    fputs("\n", stdout);
  }
  free(ids);
  return true;
}

int tokenize_main(int argc, char **argv) {
  const char *model = NULL, *text = NULL, *file = NULL;
  unsigned flags = 0;
  bool json = false;
  static const struct option lo[] = {{"model", 1, 0, 'm'},         {"text", 1, 0, 't'}, {"file", 1, 0, 'f'},
                                     {"add-bos", 0, 0, 'b'},       {"json", 0, 0, 'j'}, {"help", 0, 0, 'h'},
                                     {"parse-special", 0, 0, 's'}, {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    switch (c) {
    case 'm': model = optarg; break;
    case 't': text = optarg; break;
    case 'f': file = optarg; break;
    case 'b': flags |= TOK_ADD_BOS; break;
    case 's': flags |= TOK_PARSE_SPECIAL; break;
    case 'j': json = true; break;
    case 'h': usage(); return 0;
    default: return usage();
    }
  }
  if (optind < argc || !model || !text == !file) return usage();
  lt_err_t err = {0};
  tok_t *t = model_tokenizer_open(model, &err);
  if (!t) {
    fprintf(stderr, "lathe tokenize: --model: %s\n", err.msg);
    return 1;
  }
  bool ok = true;
  if (text) {
    ok = one(t, text, strlen(text), flags, json, "--text");
  } else {
    FILE *f = strcmp(file, "-") ? fopen(file, "r") : stdin;
    if (!f) {
      fprintf(stderr, "lathe tokenize: --file: %s: cannot open it\n", file);
      tok_destroy(&t);
      return 1;
    }
    char *line = NULL, where[64];
    size_t cap = 0;
    ssize_t len;
    for (long no = 1; ok && (len = getline(&line, &cap, f)) >= 0; no++) {
      if (len && line[len - 1] == '\n') line[--len] = '\0';
      if (len && line[len - 1] == '\r') line[--len] = '\0';
      snprintf(where, sizeof where, "line %ld", no);
      ok = one(t, line, (size_t)len, flags, json, where);
    }
    free(line);
    if (f != stdin) fclose(f);
  }
  tok_destroy(&t);
  return ok ? 0 : 1;
}
