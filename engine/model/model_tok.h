/* The tokenizer and the chat template that belong to a model, whatever its format. */
#ifndef LATHE_MODEL_TOK_H
#define LATHE_MODEL_TOK_H

#include "common/status.h"
#include "engine/text/chat.h"
#include "engine/text/tokenizer.h"

/* Opens the tokenizer of the model at path: tokenizer.json in a Hugging Face folder, or the vocabulary embedded
 * in a .gguf file (tokenizer.ggml.*). BOS and EOS ids come from the model's config when it names them.
 * Caller owns the result (tok_destroy). NULL with err on failure. */
tok_t *model_tokenizer_open(const char *path, lt_err_t *err);

/* Checks that the models at paths a and b (named name_a and name_b in the message) tokenize alike: the same
 * vocabulary size, the same text and type for every token id, the same BOS and EOS. LT_OK when they do;
 * LT_E_INVALID naming the first token that differs (or what else does) when not; a file's own error when a
 * tokenizer cannot be opened. */
lt_status_t model_tokenizers_same(const char *a, const char *b, const char *name_a, const char *name_b, lt_err_t *err);

/* The template of the model at path: "chat_template" of tokenizer_config.json in a Hugging Face folder (a
 * string, or the entry named "default" of a list), or tokenizer.chat_template of a .gguf file, with its BOS and
 * EOS token texts; the plain template when the model has none. Caller owns; NULL with err. */
chat_tmpl_t *model_chat_template_open(const char *model_path, lt_err_t *err);

#endif
