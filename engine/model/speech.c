/* The speech encoder and connector: tensors, loading and saving, and the forward and backward passes recorded
 * with the engine's ops (one utterance per pass). */
#include "engine/model/speech.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/model/ftensor.h"
#include "engine/model/safetensors.h"
#include "engine/ops/ops_audio.h"
#include "engine/ops/ops_grad.h"

/* Indices into the tensor list of one block's tensors (-1: absent). */
typedef struct sp_layer {
  int ln1w, ln1b, wq, bq, wk, wv, bv, wo, bo, ln2w, ln2b, w1, b1, w2, b2;
  gpu_buf_t *x, *xn1, *q, *k, *v, *att, *lse, *xmid, *xn2, *f1, *g1; /* saved activations */
} sp_layer_t;

struct speech {
  gpu_t *g;
  speech_config_t c;
  speech_param_t *p;
  uint32_t np;
  int conv1w, conv1b, conv2w, conv2b, pos, lnfw, lnfb, p1w, p1b, p2w, p2b;
  sp_layer_t *L;
  /* Activations, sized for cap_t input frames. */
  uint32_t cap_t, T, T2, T3;
  bool trained; /* the last forward kept what the backward needs */
  gpu_buf_t *x, *c1, *a1, *h1, *c2, *a2, *xl, *enc, *z1, *z1g, *out, *ones;
  /* Backward scratch. */
  gpu_buf_t *dxs, *dxn, *dbig, *dq, *dk, *dv, *datt, *dc2, *dh1, *denc, *dz;
};

/* ---- config ---- */

lt_status_t speech_config_check(const speech_config_t *c, lt_err_t *err) {
  struct {
    const char *key;
    uint32_t v, lo, hi;
  } k[] = {{"num_mel_bins", c->n_mels, 1, 512},
           {"d_model", c->d_model, 2, SPEECH_MAX_DIM},
           {"encoder_layers", c->n_layers, 0, SPEECH_MAX_LAYERS},
           {"encoder_attention_heads", c->n_heads, 1, 256},
           {"encoder_ffn_dim", c->ffn, 1, 4 * SPEECH_MAX_DIM},
           {"max_source_positions", c->max_positions, 1, SPEECH_MAX_POSITIONS}};
  for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
    if (k[i].v < k[i].lo || k[i].v > k[i].hi)
      return lt_fail(err, LT_E_LIMIT, "speech config: %s %u outside %u..%u", k[i].key, k[i].v, k[i].lo, k[i].hi);
  if (c->d_model % c->n_heads)
    return lt_fail(err, LT_E_INVALID, "speech config: d_model %u is not a multiple of %u heads", c->d_model,
                   c->n_heads);
  if (c->d_model / c->n_heads > 256)
    return lt_fail(err, LT_E_UNSUPPORTED, "speech config: head size %u (at most 256)", c->d_model / c->n_heads);
  if (c->d_model % 2 || c->d_model < 4)
    return lt_fail(err, LT_E_INVALID, "speech config: d_model %u must be even and at least 4 (sinusoids)", c->d_model);
  if (!(c->eps > 0 && c->eps < 1)) return lt_fail(err, LT_E_INVALID, "speech config: layer_norm_eps %g", c->eps);
  if (c->llm_hidden) {
    if (c->stack < 1 || c->stack > 64) return lt_fail(err, LT_E_LIMIT, "speech config: connector stack %u", c->stack);
    if (c->hidden < 1 || c->hidden > 4 * SPEECH_MAX_DIM || c->llm_hidden > 4 * SPEECH_MAX_DIM)
      return lt_fail(err, LT_E_LIMIT, "speech config: connector hidden %u, llm_hidden %u", c->hidden, c->llm_hidden);
  }
  return LT_OK;
}

/* ---- tensors ---- */

static int add_param(speech_t *s, const char *name, uint32_t n_dims, uint32_t d0, uint32_t d1, uint32_t d2,
                     bool trainable, bool encoder) {
  speech_param_t *p = &s->p[s->np];
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "%s", name);
  p->n_dims = n_dims;
  p->shape[0] = d0, p->shape[1] = d1, p->shape[2] = d2;
  p->n = (uint64_t)d0 * (n_dims > 1 ? d1 : 1) * (n_dims > 2 ? d2 : 1);
  p->trainable = trainable;
  p->encoder = encoder;
  return (int)s->np++;
}

/* Builds the tensor list of config c (no buffers yet). */
static lt_status_t build(speech_t *s, lt_err_t *err) {
  const speech_config_t *c = &s->c;
  uint32_t D = c->d_model, F = c->ffn, L = c->n_layers;
  s->p = calloc(16u * L + 16u, sizeof *s->p);
  s->L = calloc(L ? L : 1, sizeof *s->L);
  if (!s->p || !s->L) return lt_fail(err, LT_E_NOMEM, "speech model: tensor list");
  s->conv1w = add_param(s, "encoder.conv1.weight", 3, D, c->n_mels, 3, true, true);
  s->conv1b = add_param(s, "encoder.conv1.bias", 1, D, 0, 0, true, true);
  s->conv2w = add_param(s, "encoder.conv2.weight", 3, D, D, 3, true, true);
  s->conv2b = add_param(s, "encoder.conv2.bias", 1, D, 0, 0, true, true);
  s->pos = add_param(s, "encoder.embed_positions.weight", 2, c->max_positions, D, 0, false, true);
  char n[96];
#define P(field, suffix, nd, a, b, tr)                                                                                 \
  snprintf(n, sizeof n, "encoder.layers.%u.%s", l, suffix);                                                            \
  s->L[l].field = add_param(s, n, nd, a, b, 0, tr, true)
  for (uint32_t l = 0; l < L; l++) {
    P(ln1w, "self_attn_layer_norm.weight", 1, D, 0, true);
    P(ln1b, "self_attn_layer_norm.bias", 1, D, 0, true);
    P(wq, "self_attn.q_proj.weight", 2, D, D, true);
    P(bq, "self_attn.q_proj.bias", 1, D, 0, true);
    P(wk, "self_attn.k_proj.weight", 2, D, D, true);
    P(wv, "self_attn.v_proj.weight", 2, D, D, true);
    P(bv, "self_attn.v_proj.bias", 1, D, 0, true);
    P(wo, "self_attn.out_proj.weight", 2, D, D, true);
    P(bo, "self_attn.out_proj.bias", 1, D, 0, true);
    P(ln2w, "final_layer_norm.weight", 1, D, 0, true);
    P(ln2b, "final_layer_norm.bias", 1, D, 0, true);
    P(w1, "fc1.weight", 2, F, D, true);
    P(b1, "fc1.bias", 1, F, 0, true);
    P(w2, "fc2.weight", 2, D, F, true);
    P(b2, "fc2.bias", 1, D, 0, true);
  }
#undef P
  s->lnfw = add_param(s, "encoder.layer_norm.weight", 1, D, 0, 0, true, true);
  s->lnfb = add_param(s, "encoder.layer_norm.bias", 1, D, 0, 0, true, true);
  s->p1w = s->p1b = s->p2w = s->p2b = -1;
  if (c->llm_hidden) {
    s->p1w = add_param(s, "connector.proj1.weight", 2, c->hidden, c->stack * D, 0, true, false);
    s->p1b = add_param(s, "connector.proj1.bias", 1, c->hidden, 0, 0, true, false);
    s->p2w = add_param(s, "connector.proj2.weight", 2, c->llm_hidden, c->hidden, 0, true, false);
    s->p2b = add_param(s, "connector.proj2.bias", 1, c->llm_hidden, 0, 0, true, false);
  }
  for (uint32_t i = 0; i < s->np; i++) {
    s->p[i].buf = gpu_buf_new(s->g, s->p[i].n * 4, err);
    if (!s->p[i].buf) return err ? err->code : LT_E_DEVICE_OOM;
  }
  return LT_OK;
}

static uint64_t mix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Whisper's positions: sin of t * 10000^(-i / (d/2 - 1)) in the first half of the row, cos in the second. */
static void sinusoids(float *out, uint32_t len, uint32_t d) {
  uint32_t h = d / 2;
  double inc = log(10000.0) / (h > 1 ? h - 1 : 1);
  for (uint32_t t = 0; t < len; t++)
    for (uint32_t i = 0; i < h; i++) {
      double a = t * exp(-inc * i);
      out[(uint64_t)t * d + i] = (float)sin(a);
      out[(uint64_t)t * d + h + i] = (float)cos(a);
    }
}

/* Fresh values for tensor i: sinusoids, LayerNorm 1 / 0, else uniform +-1/sqrt(fan_in). */
static lt_status_t init_param(speech_t *s, int i, uint64_t *seed, lt_err_t *err) {
  speech_param_t *p = &s->p[i];
  float *h = malloc(p->n * sizeof *h);
  if (!h) return lt_fail(err, LT_E_NOMEM, "speech model: %s", p->name);
  bool ln = strstr(p->name, "layer_norm") != NULL;
  if (i == s->pos)
    sinusoids(h, p->shape[0], p->shape[1]);
  else if (ln)
    for (uint64_t j = 0; j < p->n; j++) h[j] = strstr(p->name, ".weight") ? 1.0f : 0.0f;
  else {
    /* The fan-in of a bias is that of its weight: the tensor before it in the list. */
    const speech_param_t *w = p->n_dims == 1 ? p - 1 : p;
    uint64_t fan_in = (uint64_t)w->shape[1] * (w->n_dims > 2 ? w->shape[2] : 1);
    double b = 1.0 / sqrt((double)(fan_in ? fan_in : 1));
    for (uint64_t j = 0; j < p->n; j++) h[j] = (float)((2.0 * (mix64(seed) >> 11) / 9007199254740992.0 - 1.0) * b);
  }
  lt_status_t st = gpu_upload(p->buf, 0, h, p->n * 4, err);
  free(h);
  return st;
}

static speech_t *alloc_model(gpu_t *g, const speech_config_t *c, lt_err_t *err) {
  if (speech_config_check(c, err) != LT_OK) return NULL;
  speech_t *s = calloc(1, sizeof *s);
  if (!s) return lt_fail(err, LT_E_NOMEM, "speech model"), NULL;
  s->g = g;
  s->c = *c;
  if (build(s, err) != LT_OK) speech_destroy(&s);
  return s;
}

speech_t *speech_new(gpu_t *g, const speech_config_t *c, uint64_t seed, lt_err_t *err) {
  speech_t *s = alloc_model(g, c, err);
  if (!s) return NULL;
  if (!s->c.source[0]) snprintf(s->c.source, sizeof s->c.source, "lathe");
  for (uint32_t i = 0; i < s->np; i++)
    if (init_param(s, (int)i, &seed, err) != LT_OK) {
      speech_destroy(&s);
      return NULL;
    }
  return s;
}

static void free_acts(speech_t *s) {
  gpu_buf_t **b[] = {&s->x,  &s->c1,  &s->a1,   &s->h1,   &s->c2,  &s->a2,   &s->xl,   &s->enc,
                     &s->z1, &s->z1g, &s->out,  &s->ones, &s->dxs, &s->dxn,  &s->dbig, &s->dq,
                     &s->dk, &s->dv,  &s->datt, &s->dc2,  &s->dh1, &s->denc, &s->dz};
  for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) gpu_buf_destroy(b[i]);
  for (uint32_t l = 0; s->L && l < s->c.n_layers; l++) {
    sp_layer_t *y = &s->L[l];
    gpu_buf_t **lb[] = {&y->x, &y->xn1, &y->q, &y->k, &y->v, &y->att, &y->lse, &y->xmid, &y->xn2, &y->f1, &y->g1};
    for (size_t i = 0; i < sizeof lb / sizeof lb[0]; i++) gpu_buf_destroy(lb[i]);
  }
  s->cap_t = 0;
}

void speech_destroy(speech_t **sp) {
  if (!sp || !*sp) return;
  speech_t *s = *sp;
  free_acts(s);
  for (uint32_t i = 0; s->p && i < s->np; i++) {
    gpu_buf_destroy(&s->p[i].buf), gpu_buf_destroy(&s->p[i].grad);
    gpu_buf_destroy(&s->p[i].m), gpu_buf_destroy(&s->p[i].v);
  }
  free(s->p);
  free(s->L);
  free(s);
  *sp = NULL;
}

const speech_config_t *speech_config(const speech_t *s) { return &s->c; }
uint32_t speech_param_count(const speech_t *s) { return s->np; }
speech_param_t *speech_param_at(speech_t *s, uint32_t i) { return i < s->np ? &s->p[i] : NULL; }

speech_param_t *speech_param_find(speech_t *s, const char *name) {
  for (uint32_t i = 0; i < s->np; i++)
    if (!strcmp(s->p[i].name, name)) return &s->p[i];
  return NULL;
}

void speech_set_trainable(speech_t *s, bool encoder, bool connector) {
  for (uint32_t i = 0; i < s->np; i++) s->p[i].trainable = (int)i != s->pos && (s->p[i].encoder ? encoder : connector);
}

uint32_t speech_enc_rows(uint32_t T) { return conv_out_len(conv_out_len(T, 3, 1, 1), 3, 2, 1); }

uint32_t speech_out_rows(const speech_t *s, uint32_t T) {
  uint32_t t2 = speech_enc_rows(T);
  return s->c.llm_hidden ? (t2 + s->c.stack - 1) / s->c.stack : t2;
}

/* ---- config.json ---- */

static uint32_t jget_u(const json_t *o, const char *k, uint32_t dflt, bool *missing) {
  json_t *v = json_object_get(o, k);
  if (!v) {
    if (missing) *missing = true;
    return dflt;
  }
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX) {
    if (missing) *missing = true;
    return dflt;
  }
  return (uint32_t)json_integer_value(v);
}

/* The encoder's keys (Whisper's names) from o into c; err names the first missing or bad key. */
static lt_status_t encoder_keys(const json_t *o, speech_config_t *c, const char *path, lt_err_t *err) {
  const char *keys[] = {"num_mel_bins",    "d_model",
                        "encoder_layers",  "encoder_attention_heads",
                        "encoder_ffn_dim", "max_source_positions"};
  uint32_t *dst[] = {&c->n_mels, &c->d_model, &c->n_layers, &c->n_heads, &c->ffn, &c->max_positions};
  for (int i = 0; i < 6; i++) {
    bool bad = false;
    *dst[i] = jget_u(o, keys[i], 0, &bad);
    if (bad) return lt_fail(err, LT_E_INVALID, "%s: \"%s\" is missing or not a non-negative integer", path, keys[i]);
  }
  json_t *e = json_object_get(o, "layer_norm_eps");
  c->eps = json_is_number(e) ? (float)json_number_value(e) : 1e-5f;
  json_t *act = json_object_get(o, "activation_function");
  if (act && (!json_is_string(act) || strcmp(json_string_value(act), "gelu")))
    return lt_fail(err, LT_E_UNSUPPORTED, "%s: activation_function %s (only Whisper's \"gelu\")", path,
                   json_is_string(act) ? json_string_value(act) : "(not a string)");
  return LT_OK;
}

static lt_status_t read_config(const char *dir, speech_config_t *c, lt_err_t *err) {
  char path[1024];
  snprintf(path, sizeof path, "%s/config.json", dir);
  json_t *j = NULL;
  lt_status_t st = ft_json_load(&j, path, 1u << 20, err);
  if (st != LT_OK) return st;
  memset(c, 0, sizeof *c);
  json_t *enc = json_object_get(j, "encoder"), *mt = json_object_get(j, "model_type");
  if (json_is_object(enc)) {
    snprintf(c->source, sizeof c->source, "lathe");
    st = encoder_keys(enc, c, path, err);
    json_t *conn = json_object_get(j, "connector"), *llm = json_object_get(j, "llm");
    if (st == LT_OK && conn) {
      json_t *type = json_object_get(conn, "type");
      if (!json_is_string(type) || strcmp(json_string_value(type), "stack-mlp"))
        st = lt_fail(err, LT_E_UNSUPPORTED, "%s: connector type %s (\"stack-mlp\" is known)", path,
                     json_is_string(type) ? json_string_value(type) : "(missing)");
      bool bad = false;
      c->stack = jget_u(conn, "stack", 0, &bad);
      c->hidden = jget_u(conn, "hidden", 0, &bad);
      c->llm_hidden = jget_u(conn, "llm_hidden", 0, &bad);
      if (st == LT_OK && bad)
        st = lt_fail(err, LT_E_INVALID, "%s: the connector needs integers stack, hidden and llm_hidden", path);
    }
    if (json_is_string(llm)) snprintf(c->llm, sizeof c->llm, "%s", json_string_value(llm));
  } else if (json_is_string(mt) && !strcmp(json_string_value(mt), "whisper")) {
    snprintf(c->source, sizeof c->source, "whisper");
    st = encoder_keys(j, c, path, err);
  } else {
    st = lt_fail(err, LT_E_INVALID,
                 "%s: neither a Lathe speech model (an \"encoder\" object) nor a Whisper checkpoint (model_type "
                 "\"whisper\")",
                 path);
  }
  json_decref(j);
  return st;
}

speech_t *speech_load(gpu_t *g, const char *dir, const speech_config_t *conn, uint64_t seed, lt_err_t *err) {
  speech_config_t c;
  if (read_config(dir, &c, err) != LT_OK) return NULL;
  bool whisper = !strcmp(c.source, "whisper");
  if (whisper && conn && conn->llm_hidden) {
    c.stack = conn->stack, c.hidden = conn->hidden, c.llm_hidden = conn->llm_hidden;
    snprintf(c.llm, sizeof c.llm, "%s", conn->llm);
  }
  st_file_t *f = NULL;
  if (st_open(&f, dir, err) != LT_OK) return NULL;
  speech_t *s = alloc_model(g, &c, err);
  lt_status_t st = s ? LT_OK : (err ? err->code : LT_E_INVALID);
  for (uint32_t i = 0; s && st == LT_OK && i < s->np; i++) {
    speech_param_t *p = &s->p[i];
    bool conn_part = !p->encoder;
    if (whisper && conn_part) {
      st = init_param(s, (int)i, &seed, err);
      continue;
    }
    char alt[128];
    snprintf(alt, sizeof alt, "model.%s", p->name);
    const ft_tensor_t *t = st_find(f, p->name);
    if (!t) t = st_find(f, alt);
    if (!t) {
      st = lt_fail(err, LT_E_CORRUPT, "%s: tensor %s is missing", dir, p->name);
      break;
    }
    bool shape_ok = t->n_dims == p->n_dims && t->n_elems == p->n;
    for (uint32_t d = 0; shape_ok && d < p->n_dims; d++) shape_ok = t->shape[d] == p->shape[d];
    /* Whisper's positions may be longer than the config says; more rows than needed are not an error. */
    if (!shape_ok) {
      char want[64], got[64];
      int o = 0;
      for (uint32_t d = 0; d < p->n_dims; d++)
        o += snprintf(want + o, sizeof want - o, "%s%u", d ? ", " : "", p->shape[d]);
      o = 0;
      for (uint32_t d = 0; d < t->n_dims && d < 4; d++)
        o += snprintf(got + o, sizeof got - o, "%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
      st = lt_fail(err, LT_E_CORRUPT, "%s: tensor %s has shape [%s]; the config implies [%s]", dir, t->name, got, want);
      break;
    }
    float *h = malloc(p->n * sizeof *h);
    if (!h) {
      st = lt_fail(err, LT_E_NOMEM, "%s: %s", dir, p->name);
      break;
    }
    st = ft_tensor_to_f32(t, h, err);
    for (uint64_t j = 0; st == LT_OK && j < p->n; j++)
      if (!isfinite(h[j])) st = lt_fail(err, LT_E_CORRUPT, "%s: tensor %s holds a non-finite value", dir, p->name);
    if (st == LT_OK) st = gpu_upload(p->buf, 0, h, p->n * 4, err);
    free(h);
  }
  st_destroy(&f);
  if (st != LT_OK) speech_destroy(&s);
  return s;
}

lt_status_t speech_save(const speech_t *s, const char *dir, lt_err_t *err) {
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) return lt_fail(err, LT_E_IO, "%s: %s", dir, strerror(errno));
  const speech_config_t *c = &s->c;
  json_t *enc = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:s}", "num_mel_bins", c->n_mels, "d_model", c->d_model,
                          "encoder_layers", c->n_layers, "encoder_attention_heads", c->n_heads, "encoder_ffn_dim",
                          c->ffn, "max_source_positions", c->max_positions, "layer_norm_eps", (double)c->eps,
                          "activation_function", "gelu");
  json_t *j = json_pack("{s:[s], s:s, s:o}", "architectures", "LatheSpeechModel", "llm", c->llm, "encoder", enc);
  if (c->llm_hidden)
    json_object_set_new(j, "connector",
                        json_pack("{s:s, s:i, s:i, s:i}", "type", "stack-mlp", "stack", c->stack, "hidden", c->hidden,
                                  "llm_hidden", c->llm_hidden));
  char path[1024];
  snprintf(path, sizeof path, "%s/config.json", dir);
  int bad = json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(j);
  if (bad) return lt_fail(err, LT_E_IO, "%s: cannot write", path);
  ft_tensor_t *t = calloc(s->np, sizeof *t);
  float **h = calloc(s->np, sizeof *h);
  lt_status_t st = t && h ? LT_OK : lt_fail(err, LT_E_NOMEM, "speech save");
  for (uint32_t i = 0; st == LT_OK && i < s->np; i++) {
    const speech_param_t *p = &s->p[i];
    h[i] = malloc(p->n * 4);
    if (!h[i]) {
      st = lt_fail(err, LT_E_NOMEM, "speech save: %s", p->name);
      break;
    }
    st = gpu_download(p->buf, 0, h[i], p->n * 4, err);
    t[i] = (ft_tensor_t){
        .name = p->name, .dtype = FT_F32, .n_dims = p->n_dims, .n_elems = p->n, .data = h[i], .nbytes = p->n * 4};
    for (uint32_t d = 0; d < FT_MAX_DIMS; d++) t[i].shape[d] = d < p->n_dims ? p->shape[d] : 1;
  }
  if (st == LT_OK) {
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    st = st_write(path, t, s->np, meta, 1, err);
  }
  for (uint32_t i = 0; h && i < s->np; i++) free(h[i]);
  free(h), free(t);
  return st;
}

/* ---- activations ---- */

static gpu_buf_t *nb(speech_t *s, uint64_t floats, lt_err_t *err) {
  return gpu_buf_new(s->g, (floats ? floats : 1) * 4, err);
}

/* Makes the activation and scratch buffers for up to T input frames. */
static lt_status_t ensure_acts(speech_t *s, uint32_t T, lt_err_t *err) {
  if (T <= s->cap_t) return LT_OK;
  free_acts(s);
  const speech_config_t *c = &s->c;
  uint64_t D = c->d_model, F = c->ffn, M = c->n_mels, T2 = speech_enc_rows(T), S = c->llm_hidden ? c->stack : 1;
  uint64_t T3 = (T2 + S - 1) / S, H = c->n_heads;
  uint64_t big = F > 3 * D ? F : 3 * D;
  gpu_buf_t **b[] = {&s->x,  &s->c1,  &s->a1,   &s->h1,   &s->c2,  &s->a2,   &s->xl,   &s->enc,
                     &s->z1, &s->z1g, &s->out,  &s->ones, &s->dxs, &s->dxn,  &s->dbig, &s->dq,
                     &s->dk, &s->dv,  &s->datt, &s->dc2,  &s->dh1, &s->denc, &s->dz};
  uint64_t n[] = {T * M,
                  T * 3 * M,
                  T * D,
                  T * D,
                  T2 * 3 * D,
                  T2 * D,
                  T2 * D,
                  T3 * S * D,
                  T3 * c->hidden,
                  T3 * c->hidden,
                  T3 * (c->llm_hidden ? c->llm_hidden : D),
                  T,
                  T2 * D,
                  T2 * D,
                  T2 * big,
                  T2 * D,
                  T2 * D,
                  T2 * D,
                  T2 * D,
                  T2 * 3 * D,
                  T * D,
                  T3 * S * D,
                  T3 * (c->hidden > D ? c->hidden : D)};
  for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
    if (!(*b[i] = nb(s, n[i], err))) return err ? err->code : LT_E_DEVICE_OOM;
  for (uint32_t l = 0; l < c->n_layers; l++) {
    sp_layer_t *y = &s->L[l];
    gpu_buf_t **lb[] = {&y->x, &y->xn1, &y->q, &y->k, &y->v, &y->att, &y->lse, &y->xmid, &y->xn2, &y->f1, &y->g1};
    uint64_t ln[] = {T2 * D, T2 * D, T2 * D, T2 * D, T2 * D, T2 * D, T2 * H, T2 * D, T2 * D, T2 * F, T2 * F};
    for (size_t i = 0; i < sizeof lb / sizeof lb[0]; i++)
      if (!(*lb[i] = nb(s, ln[i], err))) return err ? err->code : LT_E_DEVICE_OOM;
  }
  /* A column of ones for the biases' gradients (column sums as a product). */
  uint64_t ones_n = gpu_buf_size(s->ones) / 4;
  float *one = malloc(ones_n * 4);
  if (!one) return lt_fail(err, LT_E_NOMEM, "speech: ones");
  for (uint64_t i = 0; i < ones_n; i++) one[i] = 1.0f;
  lt_status_t st = gpu_upload(s->ones, 0, one, ones_n * 4, err);
  free(one);
  if (st == LT_OK) s->cap_t = T;
  return st;
}

/* ---- forward ---- */

static gpu_view_t pv(const speech_t *s, int i) { return i >= 0 ? gv(s->p[i].buf) : gv(NULL); }

/* y[M,N] = x[M,K] . W^T + b. */
static lt_status_t lin(speech_t *s, gpu_cmd_t *c, gpu_buf_t *y, gpu_buf_t *x, int w, int b, uint32_t M, uint32_t N,
                       uint32_t K, lt_err_t *err) {
  lt_status_t st = op_matmul(c, gv(y), gv(x), pv(s, w), LT_F32, M, N, K, false, err);
  if (st == LT_OK && b >= 0) st = op_add(c, gv(y), gv(y), pv(s, b), M * N, N, err);
  return st;
}

lt_status_t speech_forward(speech_t *s, const float *feats, uint32_t T, bool train, lt_err_t *err) {
  const speech_config_t *c = &s->c;
  s->trained = false;
  uint32_t T2 = speech_enc_rows(T);
  if (T < 2 || T2 == 0) return lt_fail(err, LT_E_INVALID, "speech: %u feature frames (at least 2)", T);
  if (T2 > c->max_positions)
    return lt_fail(err, LT_E_LIMIT, "speech: %u frames make %u encoder positions; the model has %u (%.1f s of audio)",
                   T, T2, c->max_positions, c->max_positions * 0.02);
  for (uint64_t i = 0; i < (uint64_t)T * c->n_mels; i++)
    if (!isfinite(feats[i]))
      return lt_fail(err, LT_E_INVALID, "speech: feature %llu is not finite", (unsigned long long)i);
  lt_status_t st = ensure_acts(s, T, err);
  if (st != LT_OK) return st;
  uint32_t D = c->d_model, F = c->ffn, M = c->n_mels, H = c->n_heads, hd = D / H;
  uint32_t S = c->llm_hidden ? c->stack : 1, T3 = (T2 + S - 1) / S;
  s->T = T, s->T2 = T2, s->T3 = T3;
  st = gpu_upload(s->x, 0, feats, (uint64_t)T * M * 4, err);
  /* The rows of the stacked input past the last frame stay zero. */
  if (st == LT_OK && (uint64_t)T3 * S > T2)
    st = gpu_buf_zero(s->enc, (uint64_t)T2 * D * 4, ((uint64_t)T3 * S - T2) * D * 4, err);
  if (st != LT_OK) return st;
  gpu_cmd_t *cmd = gpu_cmd_begin(s->g, err);
  if (!cmd) return err ? err->code : LT_E_VULKAN;
  st = op_im2col(cmd, gv(s->c1), gv(s->x), T, M, 3, 1, 1, err);
  if (st == LT_OK) st = lin(s, cmd, s->a1, s->c1, s->conv1w, s->conv1b, T, D, 3 * M, err);
  if (st == LT_OK) st = op_gelu_erf(cmd, gv(s->h1), gv(s->a1), T * D, err);
  if (st == LT_OK) st = op_im2col(cmd, gv(s->c2), gv(s->h1), T, D, 3, 2, 1, err);
  if (st == LT_OK) st = lin(s, cmd, s->a2, s->c2, s->conv2w, s->conv2b, T2, D, 3 * D, err);
  gpu_buf_t *h = c->n_layers ? s->L[0].x : s->xl;
  if (st == LT_OK) st = op_gelu_erf(cmd, gv(h), gv(s->a2), T2 * D, err);
  if (st == LT_OK) st = op_add(cmd, gv(h), gv(h), pv(s, s->pos), T2 * D, T2 * D, err);
  float scale = 1.0f / sqrtf((float)hd);
  for (uint32_t l = 0; l < c->n_layers && st == LT_OK; l++) {
    sp_layer_t *y = &s->L[l];
    gpu_buf_t *next = l + 1 < c->n_layers ? s->L[l + 1].x : s->xl;
    st = op_layernorm(cmd, gv(y->xn1), gv(y->x), pv(s, y->ln1w), pv(s, y->ln1b), T2, D, c->eps, err);
    if (st == LT_OK) st = lin(s, cmd, y->q, y->xn1, y->wq, y->bq, T2, D, D, err);
    if (st == LT_OK) st = lin(s, cmd, y->k, y->xn1, y->wk, -1, T2, D, D, err);
    if (st == LT_OK) st = lin(s, cmd, y->v, y->xn1, y->wv, y->bv, T2, D, D, err);
    if (st == LT_OK)
      st = op_attention_lse(cmd, gv(y->att), gv(y->lse), gv(y->q), gv(y->k), gv(y->v), T2, H, H, hd, ATTN_BIDIRECTIONAL,
                            scale, 0, err);
    if (st == LT_OK) st = lin(s, cmd, y->xmid, y->att, y->wo, y->bo, T2, D, D, err);
    if (st == LT_OK) st = op_add(cmd, gv(y->xmid), gv(y->xmid), gv(y->x), T2 * D, T2 * D, err);
    if (st == LT_OK)
      st = op_layernorm(cmd, gv(y->xn2), gv(y->xmid), pv(s, y->ln2w), pv(s, y->ln2b), T2, D, c->eps, err);
    if (st == LT_OK) st = lin(s, cmd, y->f1, y->xn2, y->w1, y->b1, T2, F, D, err);
    if (st == LT_OK) st = op_gelu_erf(cmd, gv(y->g1), gv(y->f1), T2 * F, err);
    if (st == LT_OK) st = lin(s, cmd, next, y->g1, y->w2, y->b2, T2, D, F, err);
    if (st == LT_OK) st = op_add(cmd, gv(next), gv(next), gv(y->xmid), T2 * D, T2 * D, err);
  }
  if (st == LT_OK) st = op_layernorm(cmd, gv(s->enc), gv(s->xl), pv(s, s->lnfw), pv(s, s->lnfb), T2, D, c->eps, err);
  if (st == LT_OK && c->llm_hidden) {
    st = lin(s, cmd, s->z1, s->enc, s->p1w, s->p1b, T3, c->hidden, S * D, err);
    if (st == LT_OK) st = op_gelu_erf(cmd, gv(s->z1g), gv(s->z1), T3 * c->hidden, err);
    if (st == LT_OK) st = lin(s, cmd, s->out, s->z1g, s->p2w, s->p2b, T3, c->llm_hidden, c->hidden, err);
  }
  if (st != LT_OK) {
    gpu_cmd_abort(&cmd);
    return st;
  }
  st = gpu_cmd_finish(&cmd, err);
  s->trained = st == LT_OK && train;
  return st;
}

gpu_buf_t *speech_output(const speech_t *s, uint32_t *rows, uint32_t *cols) {
  if (!s->c.llm_hidden) return speech_encoder_output(s, rows, cols);
  if (rows) *rows = s->T3;
  if (cols) *cols = s->c.llm_hidden;
  return s->out;
}

gpu_buf_t *speech_encoder_output(const speech_t *s, uint32_t *rows, uint32_t *cols) {
  if (rows) *rows = s->T2;
  if (cols) *cols = s->c.d_model;
  return s->enc;
}

/* ---- backward ---- */

static lt_status_t ensure_grads(speech_t *s, lt_err_t *err) {
  for (uint32_t i = 0; i < s->np; i++) {
    speech_param_t *p = &s->p[i];
    if (!p->trainable || p->grad) continue;
    if (!(p->grad = gpu_buf_new(s->g, p->n * 4, err))) return err ? err->code : LT_E_DEVICE_OOM;
    lt_status_t st = gpu_buf_zero(p->grad, 0, p->n * 4, err);
    if (st != LT_OK) return st;
  }
  return LT_OK;
}

static gpu_view_t gview(const speech_t *s, int i) { return i >= 0 && s->p[i].trainable ? gv(s->p[i].grad) : gv(NULL); }

/* For y = x . W^T + b over M rows: dW += dy^T x, db += column sums of dy (when trainable), and dx (+)= dy . W
 * when dx is not NULL. */
static lt_status_t lin_bwd(speech_t *s, gpu_cmd_t *c, gpu_buf_t *dx, gpu_buf_t *dy, gpu_buf_t *x, int w, int b,
                           uint32_t M, uint32_t N, uint32_t K, bool acc, lt_err_t *err) {
  lt_status_t st = LT_OK;
  if (s->p[w].trainable) st = op_matmul_dw(c, gview(s, w), gv(dy), gv(x), M, N, K, true, err);
  if (st == LT_OK && b >= 0 && s->p[b].trainable)
    st = op_matmul_dw(c, gview(s, b), gv(dy), gv(s->ones), M, N, 1, true, err);
  if (st == LT_OK && dx) st = op_matmul_dx(c, gv(dx), gv(dy), pv(s, w), LT_F32, M, N, K, acc, err);
  return st;
}

lt_status_t speech_backward(speech_t *s, gpu_buf_t *dout, lt_err_t *err) {
  if (!s->trained) return lt_fail(err, LT_E_INVALID, "speech backward: no training forward before it");
  lt_status_t st = ensure_grads(s, err);
  if (st != LT_OK) return st;
  const speech_config_t *c = &s->c;
  uint32_t D = c->d_model, F = c->ffn, M = c->n_mels, H = c->n_heads, hd = D / H, T = s->T, T2 = s->T2, T3 = s->T3;
  uint32_t S = c->llm_hidden ? c->stack : 1;
  bool enc_train = false;
  for (uint32_t i = 0; i < s->np; i++) enc_train |= s->p[i].encoder && s->p[i].trainable;
  gpu_cmd_t *cmd = gpu_cmd_begin(s->g, err);
  if (!cmd) return err ? err->code : LT_E_VULKAN;
  gpu_buf_t *denc = dout;
  if (c->llm_hidden) {
    st = lin_bwd(s, cmd, s->dz, dout, s->z1g, s->p2w, s->p2b, T3, c->llm_hidden, c->hidden, false, err);
    if (st == LT_OK) st = op_gelu_erf_backward(cmd, gv(s->dz), gv(s->dz), gv(s->z1), T3 * c->hidden, err);
    if (st == LT_OK)
      st = lin_bwd(s, cmd, enc_train ? s->denc : NULL, s->dz, s->enc, s->p1w, s->p1b, T3, c->hidden, S * D, false, err);
    denc = s->denc;
  }
  if (st == LT_OK && enc_train) {
    gpu_buf_t *dxs = s->dxs;
    st = op_layernorm_backward(cmd, gv(dxs), gview(s, s->lnfw), gview(s, s->lnfb), gv(denc), gv(s->xl), pv(s, s->lnfw),
                               T2, D, c->eps, false, err);
    float scale = 1.0f / sqrtf((float)hd);
    for (int l = (int)c->n_layers - 1; l >= 0 && st == LT_OK; l--) {
      sp_layer_t *y = &s->L[l];
      st = lin_bwd(s, cmd, s->dbig, dxs, y->g1, y->w2, y->b2, T2, D, F, false, err);
      if (st == LT_OK) st = op_gelu_erf_backward(cmd, gv(s->dbig), gv(s->dbig), gv(y->f1), T2 * F, err);
      if (st == LT_OK) st = lin_bwd(s, cmd, s->dxn, s->dbig, y->xn2, y->w1, y->b1, T2, F, D, false, err);
      if (st == LT_OK)
        st = op_layernorm_backward(cmd, gv(dxs), gview(s, y->ln2w), gview(s, y->ln2b), gv(s->dxn), gv(y->xmid),
                                   pv(s, y->ln2w), T2, D, c->eps, true, err);
      if (st == LT_OK) st = lin_bwd(s, cmd, s->datt, dxs, y->att, y->wo, y->bo, T2, D, D, false, err);
      if (st == LT_OK)
        st = op_attention_backward(cmd, gv(s->dq), gv(s->dk), gv(s->dv), gv(y->q), gv(y->k), gv(y->v), gv(y->att),
                                   gv(s->datt), gv(y->lse), T2, H, H, hd, ATTN_BIDIRECTIONAL, scale, 0, err);
      if (st == LT_OK) st = lin_bwd(s, cmd, s->dxn, s->dq, y->xn1, y->wq, y->bq, T2, D, D, false, err);
      if (st == LT_OK) st = lin_bwd(s, cmd, s->dxn, s->dk, y->xn1, y->wk, -1, T2, D, D, true, err);
      if (st == LT_OK) st = lin_bwd(s, cmd, s->dxn, s->dv, y->xn1, y->wv, y->bv, T2, D, D, true, err);
      if (st == LT_OK)
        st = op_layernorm_backward(cmd, gv(dxs), gview(s, y->ln1w), gview(s, y->ln1b), gv(s->dxn), gv(y->x),
                                   pv(s, y->ln1w), T2, D, c->eps, true, err);
    }
    /* The positions are fixed: the stream's gradient goes through conv2's GELU. */
    if (st == LT_OK) st = op_gelu_erf_backward(cmd, gv(dxs), gv(dxs), gv(s->a2), T2 * D, err);
    if (st == LT_OK) st = lin_bwd(s, cmd, s->dc2, dxs, s->c2, s->conv2w, s->conv2b, T2, D, 3 * D, false, err);
    if (st == LT_OK) st = op_col2im(cmd, gv(s->dh1), gv(s->dc2), T, D, 3, 2, 1, err);
    if (st == LT_OK) st = op_gelu_erf_backward(cmd, gv(s->dh1), gv(s->dh1), gv(s->a1), T * D, err);
    if (st == LT_OK) st = lin_bwd(s, cmd, NULL, s->dh1, s->c1, s->conv1w, s->conv1b, T, D, 3 * M, false, err);
  }
  if (st != LT_OK) {
    gpu_cmd_abort(&cmd);
    return st;
  }
  return gpu_cmd_finish(&cmd, err);
}

lt_status_t speech_zero_grad(speech_t *s, lt_err_t *err) {
  for (uint32_t i = 0; i < s->np; i++)
    if (s->p[i].grad) {
      lt_status_t st = gpu_buf_zero(s->p[i].grad, 0, s->p[i].n * 4, err);
      if (st != LT_OK) return st;
    }
  return LT_OK;
}

lt_status_t speech_grad_sumsq(speech_t *s, double *out, lt_err_t *err) {
  *out = 0;
  /* One partial per tensor, each at an offset a storage view may start at. */
  uint64_t stride = gpu_caps(s->g)->min_storage_align;
  if (stride < 4) stride = 4;
  gpu_buf_t *acc = gpu_buf_new(s->g, stride * s->np, err);
  if (!acc) return err ? err->code : LT_E_DEVICE_OOM;
  gpu_cmd_t *c = gpu_cmd_begin(s->g, err);
  lt_status_t st = c ? LT_OK : (err ? err->code : LT_E_VULKAN);
  for (uint32_t i = 0; st == LT_OK && i < s->np; i++)
    if (s->p[i].trainable && s->p[i].grad)
      st = op_sumsq(c, (gpu_view_t){acc, stride * i}, gv(s->p[i].grad), s->p[i].n, err);
  if (st == LT_OK)
    st = gpu_cmd_finish(&c, err);
  else
    gpu_cmd_abort(&c);
  float *h = st == LT_OK ? malloc(stride * s->np) : NULL;
  if (st == LT_OK && !h) st = lt_fail(err, LT_E_NOMEM, "speech: sums");
  if (st == LT_OK) st = gpu_download(acc, 0, h, stride * s->np, err);
  for (uint32_t i = 0; st == LT_OK && i < s->np; i++)
    if (s->p[i].trainable && s->p[i].grad) *out += h[i * (stride / 4)];
  free(h);
  gpu_buf_destroy(&acc);
  return st;
}

lt_status_t speech_adamw(speech_t *s, float lr, float weight_decay, float grad_scale, uint32_t step, lt_err_t *err) {
  for (uint32_t i = 0; i < s->np; i++) {
    speech_param_t *p = &s->p[i];
    if (!p->trainable || !p->grad || p->m) continue;
    p->m = gpu_buf_new(s->g, p->n * 4, err);
    p->v = p->m ? gpu_buf_new(s->g, p->n * 4, err) : NULL;
    if (!p->v) return err ? err->code : LT_E_DEVICE_OOM;
    lt_status_t st = gpu_buf_zero(p->m, 0, p->n * 4, err);
    if (st == LT_OK) st = gpu_buf_zero(p->v, 0, p->n * 4, err);
    if (st != LT_OK) return st;
  }
  gpu_cmd_t *c = gpu_cmd_begin(s->g, err);
  if (!c) return err ? err->code : LT_E_VULKAN;
  lt_status_t st = LT_OK;
  for (uint32_t i = 0; st == LT_OK && i < s->np; i++) {
    speech_param_t *p = &s->p[i];
    if (!p->trainable || !p->grad) continue;
    adamw_params_t a = {.lr = lr,
                        .beta1 = 0.9f,
                        .beta2 = 0.999f,
                        .eps = 1e-8f,
                        .weight_decay = p->n_dims > 1 ? weight_decay : 0.0f,
                        .grad_scale = grad_scale,
                        .step = step};
    st = op_adamw(c, gv(p->buf), gv(p->grad), gv(p->m), gv(p->v), (uint32_t)p->n, &a, err);
  }
  if (st != LT_OK) {
    gpu_cmd_abort(&c);
    return st;
  }
  return gpu_cmd_finish(&c, err);
}
