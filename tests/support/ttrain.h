/* Test support for the training tests: fixture models on the test's gpu, and gradients checked against the float64
 * references the tools write (tools/grad_ref.py, tools/distill_ref.py, tools/dpo_ref.py). */
#ifndef LATHE_TTRAIN_H
#define LATHE_TTRAIN_H

#include <stdbool.h>

#include "engine/model/model.h"
#include "engine/model/train.h"

/* Loads tests/fixtures/<name> on tgpu(), with its weights as f32 when f32 is set (asserts). Caller owns. */
model_t *ttrain_load(const char *name, bool f32);

/* Asserts every trainable tensor's gradient in t against the tensor of the same name in the safetensors file at
 * path (1e-4 absolute + 1e-3 relative, the tolerance test_train.c justifies), and that the file holds no other. */
void ttrain_check_grads(const train_t *t, const char *path);

#endif
