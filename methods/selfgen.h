/* Self-generated training data: the model writes its own target for (instruction, input) pairs, and only
 * targets that end a sentence are kept. The pieces that decide what is asked and what is kept. */
#ifndef LATHE_SELFGEN_H
#define LATHE_SELFGEN_H

#include <stdbool.h>
#include <stddef.h>

/* Whether text ends a sentence: its last character other than white space is '.', '!' or '?', or a closing
 * quote (" ' ” ’ ») right after one of those. */
bool sg_ends_sentence(const char *text);

/* The pool index of the j-th instruction (j < per_input) paired with input number `input` (0-based): the pool is
 * walked cyclically, input i taking entries i * per_input + j (mod pool), so every instruction is used as
 * evenly as the counts allow and per_input == pool gives every pair. */
size_t sg_pick(size_t input, size_t j, size_t per_input, size_t pool);

/* The user message for a pair: the instruction, then a blank line and the input when the input is not empty.
 * Caller frees; NULL when out of memory. */
char *sg_message(const char *instruction, const char *input);

#endif
