/* Test support for the training tests (ttrain.h). */
#include "support/ttrain.h"

#include <stdio.h>
#include <stdlib.h>

#include "engine/model/safetensors.h"
#include "support/tgpu.h"

model_t *ttrain_load(const char *name, bool f32) {
  char p[512];
  snprintf(p, sizeof p, LATHE_SOURCE_DIR "/tests/fixtures/%s", name);
  lt_err_t err = {0};
  model_load_opts_t o = {.force_f32 = f32};
  model_t *m = model_load(tgpu(), p, &o, &err);
  cr_assert(m, "%s: %s", name, err.msg);
  return m;
}

void ttrain_int_grid(const json_t *a, uint32_t n_seq, uint32_t T, int32_t *out) {
  for (uint32_t s = 0; s < n_seq; s++)
    for (uint32_t t = 0; t < T; t++)
      out[s * T + t] = (int32_t)json_integer_value(json_array_get(json_array_get(a, s), t));
}

json_t *ttrain_batch_load(const char *path, int32_t *ids, uint8_t *mask, uint32_t cap, uint32_t *n_seq, uint32_t *T) {
  json_error_t je;
  json_t *j = json_load_file(path, 0, &je);
  cr_assert(j, "%s: %s", path, je.text);
  const json_t *ji = json_object_get(j, "ids"), *jm = json_object_get(j, "mask");
  *n_seq = (uint32_t)json_array_size(ji);
  *T = (uint32_t)json_array_size(json_array_get(ji, 0));
  cr_assert(*n_seq * *T <= cap, "%s: %u x %u tokens, room for %u", path, *n_seq, *T, cap);
  ttrain_int_grid(ji, *n_seq, *T, ids);
  for (uint32_t s = 0; s < *n_seq; s++)
    for (uint32_t t = 0; t + 1 < *T; t++)
      mask[s * (*T - 1) + t] = (uint8_t)json_integer_value(json_array_get(json_array_get(jm, s), t));
  return j;
}

void ttrain_check_grads(const train_t *t, const char *path) {
  lt_err_t err = {0};
  st_file_t *f = NULL;
  cr_assert_eq(st_open(&f, path, &err), LT_OK, "%s", err.msg);
  uint32_t checked = 0;
  for (uint32_t i = 0; i < train_tensor_count(t); i++) {
    const train_tensor_t *x = train_tensor_at(t, i);
    const ft_tensor_t *ref = st_find(f, x->name);
    cr_assert(ref, "%s: no reference gradient for %s", path, x->name);
    uint64_t n = (uint64_t)x->rows * x->cols;
    cr_assert_eq(ref->n_elems, n, "%s: %s has %llu elements, reference %llu", path, x->name, (unsigned long long)n,
                 (unsigned long long)ref->n_elems);
    float *got = tread_f32(x->grad, n);
    tassert_close(got, (const float *)ref->data, n, 1e-4, 1e-3, x->name);
    free(got);
    checked++;
  }
  cr_assert_eq(checked, st_count(f), "%s: %u gradients checked of %u", path, checked, st_count(f));
  st_destroy(&f);
}
