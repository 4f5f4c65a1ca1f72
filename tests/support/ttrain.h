/* Test support for the training tests: fixture models on the test's gpu, and gradients checked against the float64
 * references the tools write (tools/grad_ref.py, tools/distill_ref.py, tools/dpo_ref.py). */
#ifndef LATHE_TTRAIN_H
#define LATHE_TTRAIN_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/model/model.h"
#include "engine/model/train.h"

/* Loads tests/fixtures/<name> on tgpu(), with its weights as f32 when f32 is set (asserts). Caller owns. */
model_t *ttrain_load(const char *name, bool f32);

/* Copies the integer grid a ([n_seq][T], as the reference tools write token arrays) into out (n_seq * T). */
void ttrain_int_grid(const json_t *a, uint32_t n_seq, uint32_t T, int32_t *out);

/* Reads the fixed batch of a reference JSON (tools/grad_ref.py, distill_ref.py, dpo_ref.py): its "ids"
 * [n_seq][T] into ids (n_seq * T) and its "mask" [n_seq][T - 1] into mask (n_seq * (T - 1)), at most cap tokens
 * (asserts). Returns the parsed file for its other fields; the caller json_decref()s it. */
json_t *ttrain_batch_load(const char *path, int32_t *ids, uint8_t *mask, uint32_t cap, uint32_t *n_seq, uint32_t *T);

/* Asserts every trainable tensor's gradient in t against the tensor of the same name in the safetensors file at
 * path (1e-4 absolute + 1e-3 relative, the tolerance test_train.c justifies), and that the file holds no other. */
void ttrain_check_grads(const train_t *t, const char *path);

#endif
