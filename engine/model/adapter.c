/* Adapters on top of a loaded model's forward pass (model.h, model_adapter_*): LoRA pairs in PEFT's layout and
 * CogSteer bottleneck adapters as `tune --train adapter` writes them, applied exactly as the training pass computes
 * them (engine/model/train.c): y += (alpha / r) (x A^T) B^T after a projection; h += relu(h D^T) U^T on the stream
 * after the attention and after the MLP of block M. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model_internal.h"
#include "engine/text/jsonl.h"
#include "engine/model/safetensors.h"

#define N_TARGETS 7

static const char *const TARGET_MODULES[N_TARGETS] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                      "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                      "mlp.down_proj"};

struct model_adapter {
  bool lora;
  float scale;                /* LoRA: alpha / r */
  uint32_t rank;              /* LoRA: r */
  gpu_buf_t *(*A)[N_TARGETS]; /* LoRA: per block and target, or NULL */
  gpu_buf_t *(*B)[N_TARGETS];
  uint32_t layer, dim;    /* bottleneck: block M and width a */
  gpu_buf_t *D[2], *U[2]; /* bottleneck: per site (after attention, after the MLP) */
  gpu_buf_t *scratch;     /* [cap, max(r, a)] */
  uint32_t n_layers;
  const model_t *m;
};

/* Input and output widths of target i of block l. */
static void target_dims(const model_config_t *c, int i, uint32_t *in, uint32_t *out) {
  uint32_t d = c->hidden_size, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim,
           f = c->intermediate_size;
  static const int IN_FFN = 6;
  *in = i == 3 ? qd : i == IN_FFN ? f : d;
  *out = i == 0 ? qd : (i == 1 || i == 2) ? kvd : (i == 3 || i == IN_FFN) ? d : f;
}

/* Uploads tensor name of f as an f32 [rows, cols] buffer (f32, f16 or bf16 in the file). */
static gpu_buf_t *upload(model_t *m, const st_file_t *f, const char *name, uint32_t rows, uint32_t cols,
                         const char *dir, lt_err_t *err) {
  const ft_tensor_t *t = st_find(f, name);
  if (!t) return lt_fail(err, LT_E_INVALID, "%s: no tensor %s", dir, name), NULL;
  if (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols)
    return lt_fail(err, LT_E_INVALID, "%s: %s is not [%u, %u]: the adapter does not fit this model", dir, name, rows,
                   cols),
           NULL;
  if (t->dtype != FT_F32 && t->dtype != FT_F16 && t->dtype != FT_BF16)
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: %s is %s (f32, f16 or bf16 expected)", dir, name,
                   ft_dtype_str(t->dtype)),
           NULL;
  uint64_t n = (uint64_t)rows * cols;
  float *v = malloc(n * 4 + 4);
  if (!v) return lt_fail(err, LT_E_NOMEM, "out of memory"), NULL;
  for (uint64_t i = 0; i < n; i++) {
    uint16_t h = t->dtype == FT_F32 ? 0 : ((const uint16_t *)t->data)[i];
    v[i] = t->dtype == FT_F32   ? ((const float *)t->data)[i]
           : t->dtype == FT_F16 ? dtype_half_to_float(h)
                                : dtype_bf16_to_float(h);
  }
  gpu_buf_t *b = gpu_buf_new(m->g, n * 4, err);
  if (b && gpu_upload(b, 0, v, n * 4, err) != LT_OK) gpu_buf_destroy(&b);
  free(v);
  return b;
}

model_adapter_t *model_adapter_load(model_t *m, const char *dir, lt_err_t *err) {
  const model_config_t *c = &m->cfg;
  char p[4200];
  snprintf(p, sizeof p, "%s/adapter_config.json", dir);
  json_error_t je;
  char jb[160];
  json_t *cfg = json_load_file(p, 0, &je);
  if (!cfg) return lt_fail(err, LT_E_IO, "%s: %s", p, jsonl_error_brief(&je, jb, sizeof jb)), NULL;
  model_adapter_t *a = calloc(1, sizeof *a);
  st_file_t *f = NULL;
  lt_status_t st = a ? LT_OK : lt_fail(err, LT_E_NOMEM, "out of memory");
  const char *peft = json_string_value(json_object_get(cfg, "peft_type"));
  const char *lathe = json_string_value(json_object_get(cfg, "lathe_adapter"));
  if (st == LT_OK && !(peft && !strcmp(peft, "LORA")) && !(lathe && !strcmp(lathe, "cogsteer-bottleneck")))
    st = lt_fail(err, LT_E_UNSUPPORTED, "%s: neither a PEFT LoRA adapter nor a Lathe bottleneck adapter", p);
  if (st == LT_OK) {
    a->m = m;
    a->n_layers = c->n_layers;
    a->lora = peft != NULL;
    snprintf(p, sizeof p, "%s/%s", dir, a->lora ? "adapter_model.safetensors" : "adapter.safetensors");
    st = st_open(&f, p, err);
  }
  uint32_t width = 1;
  if (st == LT_OK && a->lora) {
    json_t *r = json_object_get(cfg, "r"), *alpha = json_object_get(cfg, "lora_alpha");
    if (!json_is_integer(r) || json_integer_value(r) < 1 || !json_is_number(alpha))
      st = lt_fail(err, LT_E_INVALID, "%s/adapter_config.json: r must be a positive integer and lora_alpha a number",
                   dir);
    else if (json_is_true(json_object_get(cfg, "use_rslora")) || json_is_true(json_object_get(cfg, "use_dora")))
      st = lt_fail(err, LT_E_UNSUPPORTED, "%s: rsLoRA and DoRA adapters are not supported", dir);
    if (st == LT_OK) {
      a->rank = (uint32_t)json_integer_value(r);
      a->scale = (float)json_number_value(alpha) / (float)a->rank;
      width = a->rank;
      a->A = calloc(c->n_layers, sizeof *a->A), a->B = calloc(c->n_layers, sizeof *a->B);
      if (!a->A || !a->B) st = lt_fail(err, LT_E_NOMEM, "out of memory");
    }
    uint32_t found = 0;
    for (uint32_t l = 0; st == LT_OK && l < c->n_layers; l++)
      for (int i = 0; st == LT_OK && i < N_TARGETS; i++) {
        char name[160];
        snprintf(name, sizeof name, "base_model.model.model.layers.%u.%s.lora_A.weight", l, TARGET_MODULES[i]);
        if (!st_find(f, name)) continue;
        if (i >= 4 && c->n_experts)
          st = lt_fail(err, LT_E_UNSUPPORTED, "%s: LoRA on %s, but this model's MLP is a mixture of experts", dir,
                       TARGET_MODULES[i]);
        uint32_t in, out;
        target_dims(c, i, &in, &out);
        if (st == LT_OK && !(a->A[l][i] = upload(m, f, name, a->rank, in, dir, err))) st = err ? err->code : LT_E_IO;
        snprintf(name, sizeof name, "base_model.model.model.layers.%u.%s.lora_B.weight", l, TARGET_MODULES[i]);
        if (st == LT_OK && !(a->B[l][i] = upload(m, f, name, out, a->rank, dir, err))) st = err ? err->code : LT_E_IO;
        found++;
      }
    if (st == LT_OK && found == 0) st = lt_fail(err, LT_E_INVALID, "%s: no LoRA pair for this model's layers", dir);
  } else if (st == LT_OK) {
    json_t *layer = json_object_get(cfg, "layer"), *dim = json_object_get(cfg, "bottleneck"),
           *hid = json_object_get(cfg, "hidden_size");
    if (!json_is_integer(layer) || !json_is_integer(dim) || json_integer_value(dim) < 1)
      st = lt_fail(err, LT_E_INVALID, "%s/adapter_config.json: layer and bottleneck must be integers", dir);
    else if (json_integer_value(layer) < 0 || (uint64_t)json_integer_value(layer) >= c->n_layers)
      st = lt_fail(err, LT_E_INVALID, "%s: block %lld is out of range for this model (blocks 0..%u)", dir,
                   (long long)json_integer_value(layer), c->n_layers - 1);
    else if (json_integer_value(hid) != c->hidden_size)
      st = lt_fail(err, LT_E_INVALID, "%s: made for hidden size %lld, this model has %u", dir,
                   (long long)json_integer_value(hid), c->hidden_size);
    if (st == LT_OK) {
      a->layer = (uint32_t)json_integer_value(layer);
      a->dim = width = (uint32_t)json_integer_value(dim);
      const char *site[2] = {"attn", "mlp"};
      for (int s = 0; s < 2 && st == LT_OK; s++) {
        char name[160];
        snprintf(name, sizeof name, "adapter.layers.%u.%s.down.weight", a->layer, site[s]);
        if (!(a->D[s] = upload(m, f, name, a->dim, c->hidden_size, dir, err))) st = err ? err->code : LT_E_IO;
        snprintf(name, sizeof name, "adapter.layers.%u.%s.up.weight", a->layer, site[s]);
        if (st == LT_OK && !(a->U[s] = upload(m, f, name, c->hidden_size, a->dim, dir, err)))
          st = err ? err->code : LT_E_IO;
      }
    }
  }
  if (st == LT_OK && !(a->scratch = gpu_buf_new(m->g, (uint64_t)m->a.cap * width * 4, err)))
    st = err ? err->code : LT_E_DEVICE_OOM;
  st_destroy(&f);
  json_decref(cfg);
  if (st != LT_OK) model_adapter_destroy(&a);
  return a;
}

void model_adapter_destroy(model_adapter_t **ap) {
  if (!ap || !*ap) return;
  model_adapter_t *a = *ap;
  for (uint32_t l = 0; a->A && a->B && l < a->n_layers; l++)
    for (int i = 0; i < N_TARGETS; i++) gpu_buf_destroy(&a->A[l][i]), gpu_buf_destroy(&a->B[l][i]);
  free(a->A), free(a->B);
  for (int s = 0; s < 2; s++) gpu_buf_destroy(&a->D[s]), gpu_buf_destroy(&a->U[s]);
  gpu_buf_destroy(&a->scratch);
  free(a);
  *ap = NULL;
}

void model_set_adapter(model_t *m, const model_adapter_t *a) { m->adapter = a && a->m == m ? a : NULL; }

const model_adapter_t *model_get_adapter(const model_t *m) { return m->adapter; }

bool adapter_has_lora(const model_t *m, uint32_t l, int target) {
  const model_adapter_t *a = m->adapter;
  return a && a->lora && l < a->n_layers && a->A[l][target];
}

lt_status_t adapter_lora(const model_t *m, gpu_cmd_t *c, gpu_buf_t *y, gpu_buf_t *x, uint32_t l, int target, uint32_t T,
                         lt_err_t *err) {
  const model_adapter_t *a = m->adapter;
  if (!a || !a->lora || !a->A[l][target] || T == 0) return LT_OK;
  uint32_t in, out, r = a->rank;
  target_dims(&m->cfg, target, &in, &out);
  lt_status_t st = op_matmul(c, gv(a->scratch), gv(x), gv(a->A[l][target]), LT_F32, T, r, in, false, err);
  if (st == LT_OK) st = op_scale(c, gv(a->scratch), gv(a->scratch), a->scale, T * r, err);
  if (st == LT_OK) st = op_matmul(c, gv(y), gv(a->scratch), gv(a->B[l][target]), LT_F32, T, out, r, true, err);
  return st;
}

lt_status_t adapter_bottleneck(const model_t *m, gpu_cmd_t *c, gpu_buf_t *h, uint32_t l, int site, uint32_t T,
                               lt_err_t *err) {
  const model_adapter_t *a = m->adapter;
  if (!a || a->lora || l != a->layer || T == 0) return LT_OK;
  uint32_t d = m->cfg.hidden_size;
  lt_status_t st = op_matmul(c, gv(a->scratch), gv(h), gv(a->D[site]), LT_F32, T, a->dim, d, false, err);
  if (st == LT_OK) st = op_relu(c, gv(a->scratch), gv(a->scratch), T * a->dim, err);
  if (st == LT_OK) st = op_matmul(c, gv(h), gv(a->scratch), gv(a->U[site]), LT_F32, T, d, a->dim, true, err);
  return st;
}
