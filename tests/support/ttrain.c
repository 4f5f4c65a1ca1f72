/* Test support for the training tests (ttrain.h). */
#include "support/ttrain.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
  uint32_t checked = 0; /* reference tensors covered */
  /* A fused reference (Phi-3's qkv_proj, gate_up_proj) holds the gradients of several of Lathe's tensors as row
   * ranges: q, k, v and gate, up, in that order. */
  static const struct {
    const char *part, *fused;
    int from_end; /* rows counted from the end of the fused tensor: k (2 parts), v and up (1 part) */
  } parts[] = {{"q_proj", "qkv_proj", 0},
               {"k_proj", "qkv_proj", 2},
               {"v_proj", "qkv_proj", 1},
               {"gate_proj", "gate_up_proj", 0},
               {"up_proj", "gate_up_proj", 1}};
  for (uint32_t i = 0; i < train_tensor_count(t); i++) {
    const train_tensor_t *x = train_tensor_at(t, i);
    const ft_tensor_t *ref = st_find(f, x->name);
    uint64_t n = (uint64_t)x->rows * x->cols, row0 = 0;
    bool part = false;
    if (!ref)
      for (size_t k = 0; k < sizeof parts / sizeof parts[0] && !ref; k++) {
        char fused[sizeof x->name + 16];
        const char *at = strstr(x->name, parts[k].part);
        if (!at) continue;
        snprintf(fused, sizeof fused, "%.*s%s%s", (int)(at - x->name), x->name, parts[k].fused,
                 at + strlen(parts[k].part));
        if (!(ref = st_find(f, fused))) continue;
        part = true;
        row0 = parts[k].from_end ? ref->shape[0] - (uint64_t)parts[k].from_end * x->rows : 0;
        checked -= parts[k].from_end != 0; /* one reference tensor, counted once (at its first part) */
      }
    cr_assert(ref, "%s: no reference gradient for %s", path, x->name);
    if (part)
      cr_assert(ref->n_dims == 2 && ref->shape[1] == x->cols && row0 + x->rows <= ref->shape[0],
                "%s: %s [%u, %u] does not fit its fused reference", path, x->name, x->rows, x->cols);
    else
      cr_assert_eq(ref->n_elems, n, "%s: %s has %llu elements, reference %llu", path, x->name, (unsigned long long)n,
                   (unsigned long long)ref->n_elems);
    float *got = tread_f32(x->grad, n);
    tassert_close(got, (const float *)ref->data + row0 * x->cols, n, 1e-4, 1e-3, x->name);
    free(got);
    checked++;
  }
  cr_assert_eq(checked, st_count(f), "%s: %u gradients checked of %u", path, checked, st_count(f));
  st_destroy(&f);
}
