/* Writing a model as one GGUF file laid out as llama.cpp's converter lays it out (docs/formats.md, "GGUF out"). */
#ifndef LATHE_GGUF_WRITE_H
#define LATHE_GGUF_WRITE_H

#include "common/status.h"

/* Writes the Hugging Face folder src (LLaMA, Mistral without a window, Phi-3, Qwen2 or Mixtral) as the
 * GGUF file out_path: llama.cpp's tensor names and metadata keys, LLaMA's q and k rows permuted into interleaved RoPE
 * pairs, F32 / F16 / BF16 tensors in their dtype (norms F32), Lathe's int8 / int4 weights with 32-column groups as
 * Q8_0 / Q4_0 blocks holding the same integers and scales (no second rounding; rows that are no whole number of
 * blocks as F32 holding the same values), and the tokenizer (tokenizer.json:
 * byte-level BPE as "gpt2" with its merges, SentencePiece-style BPE with byte fallback as "llama" with scores
 * from the merge order) with tokenizer_config.json's chat template and add_bos_token. Anything without a GGUF form
 * (other groups, experts dropped unevenly, Gemma 2, RoPE scaling, a sliding window) is refused naming it; a
 * Mixtral's experts are stacked per block as llama.cpp stacks them. The file is written under a
 * temporary name and renamed into place. */
lt_status_t model_export_gguf(const char *src, const char *out_path, lt_err_t *err);

#endif
