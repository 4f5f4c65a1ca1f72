/* The tokenizer that belongs to a model, whatever its format. */
#ifndef LATHE_MODEL_TOK_H
#define LATHE_MODEL_TOK_H

#include "engine/status.h"
#include "engine/tokenizer.h"

/* Opens the tokenizer of the model at path: tokenizer.json in a Hugging Face folder, or the vocabulary embedded
 * in a .gguf file (tokenizer.ggml.*). BOS and EOS ids come from the model's config when it names them.
 * Caller owns the result (tok_destroy). NULL with err on failure. */
tok_t *model_tokenizer_open(const char *path, lt_err_t *err);

#endif
