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

/* The template of the model at path: "chat_template" of tokenizer_config.json in a Hugging Face folder (a
 * string, or the entry named "default" of a list), or tokenizer.chat_template of a .gguf file, with its BOS and
 * EOS token texts; the plain template when the model has none. Caller owns; NULL with err. */
chat_tmpl_t *model_chat_template_open(const char *model_path, lt_err_t *err);

#endif
