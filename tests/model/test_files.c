/* Model files: safetensors (single, sharded, writer), GGUF, config.json / GGUF metadata, the uniform weight
 * mapping, on the real stories260K model in three encodings, on hand-built files, and on hostile inputs. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model/ftensor.h"
#include "engine/ops/qblock.h"
#include "engine/model/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/model_file.h"
#include "engine/ops/ref/ref.h"
#include "engine/model/safetensors.h"

static void tmp_cleanup(void);
TestSuite(files, .fini = tmp_cleanup);

/* ---- fixtures ---- */

/* Returns tests/fixtures/stories260K/rel (the committed third-party model, MIT); fails the test when it is
 * absent. */
static const char *model_path(const char *rel) {
  static char buf[4][1024];
  static int k;
  const char *dir = LATHE_SOURCE_DIR "/tests/fixtures/stories260K";
  struct stat sb;
  cr_assert(stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode), "the stories260K fixture folder %s is missing", dir);
  char *p = buf[k++ % 4];
  snprintf(p, 1024, "%s/%s", dir, rel);
  return p;
}

/* Reads a whole file into an exact-size heap buffer (so ASan sees any over-read). Caller frees. */
static uint8_t *slurp(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  cr_assert(f != NULL, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
  cr_assert(p != NULL);
  cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *size = (size_t)n;
  return p;
}

static void spit(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert(f != NULL, "cannot create %s", path);
  cr_assert_eq(fwrite(data, 1, n, f), n);
  fclose(f);
}

/* The test's temporary folder (one per test), removed with its files when the test ends, failed or not. */
static char tmp_dir[256];

static const char *tmp_new(void) {
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(tmp_dir, sizeof tmp_dir, "%s/lathe-files-XXXXXX", base);
  cr_assert(mkdtemp(tmp_dir) != NULL, "mkdtemp failed");
  return tmp_dir;
}

static void tmp_cleanup(void) {
  const char *dir = tmp_dir;
  DIR *d = dir[0] ? opendir(dir) : NULL;
  if (!d) return;
  struct dirent *e;
  char p[1200];
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      unlink(p);
    }
  closedir(d);
  rmdir(dir);
  tmp_dir[0] = '\0';
}

static char *join(const char *dir, const char *file) {
  static char buf[4][1200];
  static int k;
  char *p = buf[k++ % 4];
  snprintf(p, 1200, "%s/%s", dir, file);
  return p;
}

/* Converts a tensor to a new f32 array (asserting success). Caller frees. */
static float *to_f32(const ft_tensor_t *t) {
  float *y = malloc((t->n_elems ? t->n_elems : 1) * sizeof *y);
  lt_err_t err = {0};
  cr_assert(y != NULL);
  cr_assert_eq(ft_tensor_to_f32(t, y, &err), LT_OK, "%s", err.msg);
  return y;
}

static uint64_t rng(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Asserts that a call failed with a non-empty message (and that the message names `needle` when given). */
static void expect_fail(lt_status_t s, const lt_err_t *err, const char *needle, const char *what) {
  cr_assert_neq(s, LT_OK, "%s: expected an error, got success", what);
  cr_assert_eq(err->code, s, "%s: err->code %d differs from the returned %d", what, err->code, s);
  cr_assert(err->msg[0] != '\0', "%s: error without a message", what);
  if (needle)
    cr_assert(strstr(err->msg, needle) != NULL, "%s: message \"%s\" does not mention \"%s\"", what, err->msg, needle);
}

/* ---- a GGUF builder for hand-made files ---- */

typedef struct gb {
  uint8_t *p;
  size_t n, cap;
} gb_t;

static void gb_put(gb_t *b, const void *src, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
    cr_assert(b->p != NULL);
  }
  memcpy(b->p + b->n, src, n);
  b->n += n;
}
static void gb_u32(gb_t *b, uint32_t v) { gb_put(b, &v, 4); }
static void gb_u64(gb_t *b, uint64_t v) { gb_put(b, &v, 8); }
static void gb_str(gb_t *b, const char *s) {
  gb_u64(b, strlen(s));
  gb_put(b, s, strlen(s));
}
static void gb_head(gb_t *b, uint64_t n_t, uint64_t n_kv) {
  gb_put(b, "GGUF", 4);
  gb_u32(b, 3);
  gb_u64(b, n_t);
  gb_u64(b, n_kv);
}
static void gb_kv_u32(gb_t *b, const char *key, uint32_t v) {
  gb_str(b, key);
  gb_u32(b, GGUF_U32);
  gb_u32(b, v);
}
static void gb_kv_str(gb_t *b, const char *key, const char *v) {
  gb_str(b, key);
  gb_u32(b, GGUF_STRING);
  gb_str(b, v);
}
/* Tensor info with dims in GGUF order (innermost first). */
static void gb_tensor(gb_t *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
  gb_str(b, name);
  gb_u32(b, n_dims);
  for (uint32_t i = 0; i < n_dims; i++) gb_u64(b, ne[i]);
  gb_u32(b, type);
  gb_u64(b, off);
}
static void gb_align(gb_t *b, size_t a) {
  static const uint8_t zero[64];
  gb_put(b, zero, (a - b->n % a) % a);
}

/* Parses b as GGUF and returns the status, keeping the message in err. */
static lt_status_t gb_parse(const gb_t *b, lt_err_t *err) {
  gguf_t *g = NULL;
  uint8_t *copy = malloc(b->n ? b->n : 1);
  memcpy(copy, b->p, b->n);
  lt_status_t s = gguf_open_buffer(&g, copy, b->n, "built.gguf", err);
  if (!s) gguf_destroy(&g);
  cr_assert_null(g);
  free(copy);
  return s;
}

/* ---- the real model: Hugging Face folder ---- */

Test(files, hf_config) {
  model_config_t c;
  lt_err_t err = {0};
  cr_assert_eq(model_config_from_hf(&c, model_path("hf"), &err), LT_OK, "%s", err.msg);
  cr_assert_eq(c.arch, MODEL_ARCH_LLAMA);
  cr_assert_eq(c.hidden_size, 64);
  cr_assert_eq(c.intermediate_size, 172);
  cr_assert_eq(c.n_layers, 5);
  cr_assert_eq(c.n_heads, 8);
  cr_assert_eq(c.n_kv_heads, 4);
  cr_assert_eq(c.head_dim, 8);
  cr_assert_eq(c.rope_dim, 8);
  cr_assert_eq(c.vocab_size, 512);
  cr_assert_eq(c.max_position, 2048);
  cr_assert_float_eq(c.rms_norm_eps, 1e-5f, 1e-12);
  cr_assert_eq(c.rope_theta, 10000.0);
  cr_assert_eq(c.rope_scaling.type, 0);
  cr_assert(!c.tie_word_embeddings);
  cr_assert_eq(c.bos_id, 1);
  cr_assert_eq(c.n_eos, 1);
  cr_assert_eq(c.eos_ids[0], 2);
  cr_assert_eq(c.n_experts, 0);
}

Test(files, hf_safetensors) {
  st_file_t *st = NULL;
  lt_err_t err = {0};
  cr_assert_eq(st_open(&st, model_path("hf"), &err), LT_OK, "%s", err.msg);
  cr_assert_eq(st_count(st), 48);
  cr_assert_eq(st_shard_count(st), 1);
  static const struct {
    const char *name;
    uint32_t n_dims;
    uint64_t shape[2];
  } want[] = {
      {"model.embed_tokens.weight", 2, {512, 64}},
      {"lm_head.weight", 2, {512, 64}},
      {"model.norm.weight", 1, {64}},
      {"model.layers.0.self_attn.q_proj.weight", 2, {64, 64}},
      {"model.layers.4.self_attn.k_proj.weight", 2, {32, 64}},
      {"model.layers.2.self_attn.v_proj.weight", 2, {32, 64}},
      {"model.layers.1.mlp.gate_proj.weight", 2, {172, 64}},
      {"model.layers.3.mlp.down_proj.weight", 2, {64, 172}},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const ft_tensor_t *t = st_find(st, want[i].name);
    cr_assert_not_null(t, "%s missing", want[i].name);
    cr_assert_str_eq(t->name, want[i].name);
    cr_assert_eq(t->dtype, FT_F32);
    cr_assert_eq(t->n_dims, want[i].n_dims, "%s", want[i].name);
    for (uint32_t d = 0; d < t->n_dims; d++) cr_assert_eq(t->shape[d], want[i].shape[d], "%s dim %u", want[i].name, d);
    cr_assert_eq(t->nbytes, t->n_elems * 4);
  }
  cr_assert_null(st_find(st, "model.layers.5.mlp.gate_proj.weight"));
  /* Listed by data offset, contiguous from the start of the data area. */
  for (uint32_t i = 1; i < st_count(st); i++)
    cr_assert_eq((const uint8_t *)st_tensor(st, i - 1)->data + st_tensor(st, i - 1)->nbytes,
                 (const uint8_t *)st_tensor(st, i)->data);
  st_destroy(&st);
  cr_assert_null(st);
}

Test(files, hf_model_file) {
  model_file_t *m = NULL;
  lt_err_t err = {0};
  cr_assert_eq(model_file_open(&m, model_path("hf"), &err), LT_OK, "%s", err.msg);
  const model_weights_t *w = model_file_weights(m);
  cr_assert_eq(w->format, MODEL_FORMAT_HF);
  cr_assert(w->rope_neox, "HF stores Q/K for rotate-half RoPE");
  cr_assert_eq(w->n_layers, 5);
  cr_assert_eq(w->n_tensors, 48);
  cr_assert_str_eq(w->tensors[0].name, "model.embed_tokens.weight");
  cr_assert_str_eq(w->tensors[2].name, "model.layers.0.self_attn.q_proj.weight");
  cr_assert_str_eq(w->tensors[47].name, "lm_head.weight");
  cr_assert_eq(w->layers[3].wk.shape[0], 32);
  cr_assert_str_eq(w->layers[3].ffn.down.name, "model.layers.3.mlp.down_proj.weight");
  cr_assert_null(model_file_gguf(m));
  cr_assert_not_null(model_file_st(m));
  model_file_destroy(&m);
}

/* ---- the real model: GGUF ---- */

Test(files, gguf_metadata_and_tokenizer) {
  gguf_t *g = NULL;
  lt_err_t err = {0};
  cr_assert_eq(gguf_open(&g, model_path("stories260K.gguf"), &err), LT_OK, "%s", err.msg);
  cr_assert_eq(gguf_version(g), 3);
  cr_assert_eq(gguf_alignment(g), 32);
  cr_assert_eq(gguf_data_offset(g) % 32, 0);
  cr_assert_eq(gguf_tensor_count(g), 48);
  cr_assert_eq(gguf_kv_count(g), 19);
  const char *s;
  uint32_t u;
  float f;
  cr_assert_eq(gguf_get_str(g, "general.architecture", &s, &err), LT_OK, "%s", err.msg);
  cr_assert_str_eq(s, "llama");
  cr_assert_eq(gguf_get_u32(g, "llama.embedding_length", &u, &err), LT_OK);
  cr_assert_eq(u, 64);
  cr_assert_eq(gguf_get_u32(g, "llama.rope.dimension_count", &u, &err), LT_OK);
  cr_assert_eq(u, 8);
  cr_assert_eq(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f, &err), LT_OK);
  cr_assert_float_eq(f, 1e-5f, 1e-12);
  /* Wrong-type and missing keys are errors that name the key. */
  expect_fail(gguf_get_str(g, "llama.block_count", &s, &err), &err, "llama.block_count", "u32 read as string");
  expect_fail(gguf_get_u32(g, "llama.nothing", &u, &err), &err, "llama.nothing", "missing key");
  expect_fail(gguf_get_u32(g, "tokenizer.ggml.scores", &u, &err), &err, "array", "array read as scalar");
  int32_t i32;
  expect_fail(gguf_get_i32(g, "tokenizer.ggml.padding_token_id", &i32, &err), &err, "i32 range", "0xFFFFFFFF as i32");

  gguf_tokenizer_t tok;
  cr_assert_eq(gguf_tokenizer(g, &tok, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(tok.n_tokens, 512);
  cr_assert_str_eq(tok.model, "llama");
  cr_assert_str_eq(tok.tokens[0], "<unk>");
  cr_assert_str_eq(tok.tokens[1], "<s>");
  cr_assert_str_eq(tok.tokens[2], "</s>");
  cr_assert_eq(tok.token_lens[1], 3);
  cr_assert_not_null(tok.scores);
  cr_assert_eq(tok.token_types[0], 2);
  cr_assert_eq(tok.token_types[1], 3);
  cr_assert_null(tok.merges);
  cr_assert_eq(tok.bos_id, 1);
  cr_assert_eq(tok.eos_id, 2);
  cr_assert_eq(tok.unk_id, 0);
  cr_assert_eq(tok.pad_id, -1, "0xFFFFFFFF means none");

  const gguf_tensor_t *t = gguf_tensor_find(g, "blk.0.ffn_down.weight");
  cr_assert_not_null(t);
  cr_assert_eq(t->ne[0], 172);
  cr_assert_eq(t->ne[1], 64);
  cr_assert_eq(t->t.shape[0], 64, "row-major shape reverses the GGUF dims");
  cr_assert_eq(t->t.shape[1], 172);
  cr_assert_eq(t->ggml_type, GGML_TYPE_F32);

  model_config_t c, h;
  cr_assert_eq(model_config_from_gguf(&c, g, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(model_config_from_hf(&h, model_path("hf"), &err), LT_OK, "%s", err.msg);
  cr_assert_eq(c.arch, h.arch);
  cr_assert_eq(c.hidden_size, h.hidden_size);
  cr_assert_eq(c.intermediate_size, h.intermediate_size);
  cr_assert_eq(c.n_layers, h.n_layers);
  cr_assert_eq(c.n_heads, h.n_heads);
  cr_assert_eq(c.n_kv_heads, h.n_kv_heads);
  cr_assert_eq(c.head_dim, h.head_dim);
  cr_assert_eq(c.rope_dim, h.rope_dim);
  cr_assert_eq(c.vocab_size, h.vocab_size);
  cr_assert_eq(c.max_position, h.max_position);
  cr_assert_eq(c.rms_norm_eps, h.rms_norm_eps);
  cr_assert_eq(c.rope_theta, h.rope_theta);
  cr_assert_eq(c.tie_word_embeddings, h.tie_word_embeddings);
  cr_assert_eq(c.bos_id, h.bos_id);
  cr_assert_eq(c.n_eos, 1);
  cr_assert_eq(c.eos_ids[0], h.eos_ids[0]);
  gguf_destroy(&g);
}

/* HF q_proj row h*hd + s*hd/2 + i holds GGUF attn_q row h*hd + 2i + s (Hugging Face's conversion permute). */
static void unpermute_check(const float *hf, const float *gg, uint32_t n_heads, uint32_t hd, uint32_t cols,
                            const char *what) {
  for (uint32_t h = 0; h < n_heads; h++)
    for (uint32_t s = 0; s < 2; s++)
      for (uint32_t i = 0; i < hd / 2; i++) {
        const float *a = hf + ((size_t)h * hd + s * hd / 2 + i) * cols, *b = gg + ((size_t)h * hd + 2 * i + s) * cols;
        cr_assert(memcmp(a, b, cols * sizeof *a) == 0, "%s: head %u pair %u half %u differs", what, h, i, s);
      }
}

Test(files, gguf_f32_matches_hf) {
  model_file_t *mh = NULL, *mg = NULL;
  lt_err_t err = {0};
  cr_assert_eq(model_file_open(&mh, model_path("hf"), &err), LT_OK, "%s", err.msg);
  cr_assert_eq(model_file_open(&mg, model_path("stories260K.gguf"), &err), LT_OK, "%s", err.msg);
  const model_weights_t *h = model_file_weights(mh), *g = model_file_weights(mg);
  const model_config_t *c = model_file_config(mh);
  cr_assert_eq(g->format, MODEL_FORMAT_GGUF);
  cr_assert(!g->rope_neox, "GGUF llama stores Q/K for interleaved RoPE");
  cr_assert_eq(g->n_tensors, h->n_tensors);
  uint32_t permuted = 0, exact = 0;
  for (uint32_t i = 0; i < h->n_tensors; i++) {
    const model_tensor_t *a = &h->tensors[i], *b = &g->tensors[i];
    cr_assert_str_eq(a->name, b->name, "canonical names agree across formats");
    cr_assert_eq(a->t->n_elems, b->t->n_elems, "%s", a->name);
    for (uint32_t d = 0; d < a->t->n_dims; d++) cr_assert_eq(a->t->shape[d], b->t->shape[d], "%s", a->name);
    float *x = to_f32(a->t), *y = to_f32(b->t);
    if (a->role == MR_WQ || a->role == MR_WK) {
      cr_assert(memcmp(x, y, a->t->n_elems * 4) != 0, "%s: Q/K should differ by the RoPE permutation", a->name);
      unpermute_check(x, y, a->role == MR_WQ ? c->n_heads : c->n_kv_heads, c->head_dim, c->hidden_size, a->name);
      permuted++;
    } else {
      cr_assert(memcmp(x, y, a->t->n_elems * 4) == 0, "%s differs between HF and GGUF", a->name);
      exact++;
    }
    free(x), free(y);
  }
  cr_assert_eq(permuted, 10);
  cr_assert_eq(exact, 38);
  /* The embedding table, explicitly. */
  cr_assert_eq(h->tok_embd.nbytes, 512 * 64 * 4);
  cr_assert(memcmp(h->tok_embd.data, g->tok_embd.data, h->tok_embd.nbytes) == 0);
  model_file_destroy(&mh);
  model_file_destroy(&mg);
}

Test(files, gguf_f16_is_rounded_f32) {
  model_file_t *m32 = NULL, *m16 = NULL;
  lt_err_t err = {0};
  cr_assert_eq(model_file_open(&m32, model_path("stories260K.gguf"), &err), LT_OK, "%s", err.msg);
  cr_assert_eq(model_file_open(&m16, model_path("stories260K-f16.gguf"), &err), LT_OK, "%s", err.msg);
  cr_assert_eq(gguf_tensor_count(model_file_gguf(m16)), 48);
  const model_weights_t *a = model_file_weights(m32), *b = model_file_weights(m16);
  uint32_t halves = 0;
  for (uint32_t i = 0; i < a->n_tensors; i++) {
    const ft_tensor_t *x = a->tensors[i].t, *y = b->tensors[i].t;
    cr_assert_eq(x->n_elems, y->n_elems);
    float *fx = to_f32(x), *fy = to_f32(y);
    /* F16 tensors hold the f32 weights rounded to nearest even; the F32 ones (norms) are unchanged. */
    for (uint64_t k = 0; k < x->n_elems; k++) {
      float want = y->dtype == FT_F16 ? dtype_half_to_float(dtype_float_to_half(fx[k])) : fx[k];
      cr_assert(want == fy[k], "%s[%llu]: %.9g vs %.9g", a->tensors[i].name, (unsigned long long)k, want, fy[k]);
    }
    halves += y->dtype == FT_F16;
    free(fx), free(fy);
  }
  cr_assert_eq(halves, 2 + 5 * 7, "embeddings, head and the 7 matrices of each block are F16");
  model_file_destroy(&m32);
  model_file_destroy(&m16);
}

/* Every value type through the typed accessors, on a hand-built file. */
Test(files, gguf_accessors) {
  gb_t b = {0};
  gb_head(&b, 0, 9);
  gb_str(&b, "i8");
  gb_u32(&b, GGUF_I8);
  gb_put(&b, (int8_t[]){-5}, 1);
  gb_str(&b, "i64min");
  gb_u32(&b, GGUF_I64);
  gb_put(&b, (int64_t[]){INT64_MIN}, 8);
  gb_str(&b, "i32min");
  gb_u32(&b, GGUF_I32);
  gb_put(&b, (int32_t[]){INT32_MIN}, 4);
  gb_str(&b, "u64big");
  gb_u32(&b, GGUF_U64);
  gb_u64(&b, 1ull << 40);
  gb_str(&b, "f64");
  gb_u32(&b, GGUF_F64);
  gb_put(&b, (double[]){0.125}, 8);
  gb_str(&b, "yes");
  gb_u32(&b, GGUF_BOOL);
  gb_put(&b, "\1", 1);
  gb_str(&b, "u16s");
  gb_u32(&b, GGUF_ARRAY);
  gb_u32(&b, GGUF_U16);
  gb_u64(&b, 3);
  gb_put(&b, (uint16_t[]){7, 8, 65535}, 6);
  gb_str(&b, "strs");
  gb_u32(&b, GGUF_ARRAY);
  gb_u32(&b, GGUF_STRING);
  gb_u64(&b, 3);
  gb_str(&b, "a b");
  gb_u64(&b, 3);
  gb_put(&b, "x\0y", 3);
  gb_str(&b, "");
  gb_kv_str(&b, "s", "hello");
  gguf_t *g = NULL;
  lt_err_t err = {0};
  cr_assert_eq(gguf_open_buffer(&g, b.p, b.n, "types.gguf", &err), LT_OK, "%s", err.msg);
  int32_t i;
  uint32_t u;
  float f;
  bool yes;
  const char *str;
  cr_assert_eq(gguf_get_i32(g, "i8", &i, &err), LT_OK);
  cr_assert_eq(i, -5);
  cr_assert_eq(gguf_get_i32(g, "i32min", &i, &err), LT_OK);
  cr_assert_eq(i, INT32_MIN);
  expect_fail(gguf_get_u32(g, "i8", &u, &err), &err, "u32 range", "negative as u32");
  expect_fail(gguf_get_i32(g, "i64min", &i, &err), &err, "i32 range", "INT64_MIN as i32");
  expect_fail(gguf_get_u32(g, "u64big", &u, &err), &err, "u32 range", "2^40 as u32");
  cr_assert_eq(gguf_get_f32(g, "f64", &f, &err), LT_OK);
  cr_assert_eq(f, 0.125f);
  expect_fail(gguf_get_f32(g, "i8", &f, &err), &err, "expected f32", "int as float");
  cr_assert_eq(gguf_get_bool(g, "yes", &yes, &err), LT_OK);
  cr_assert(yes);
  cr_assert_eq(gguf_get_str(g, "s", &str, &err), LT_OK);
  cr_assert_str_eq(str, "hello");
  const void *data;
  uint64_t n;
  cr_assert_eq(gguf_get_array(g, "u16s", GGUF_U16, &data, &n, &err), LT_OK);
  cr_assert_eq(n, 3);
  cr_assert_eq(((const uint16_t *)data)[2], 65535);
  expect_fail(gguf_get_array(g, "u16s", GGUF_U32, &data, &n, &err), &err, "array of u16", "u16 array as u32");
  expect_fail(gguf_get_array(g, "s", GGUF_STRING, &data, &n, &err), &err, "expected an array", "scalar as array");
  const char *const *strs;
  const uint64_t *lens;
  cr_assert_eq(gguf_get_strings(g, "strs", &strs, &lens, &n, &err), LT_OK);
  cr_assert_eq(n, 3);
  cr_assert_str_eq(strs[0], "a b");
  cr_assert_eq(lens[1], 3, "a string may hold a NUL byte");
  cr_assert(memcmp(strs[1], "x\0y", 3) == 0);
  cr_assert_eq(lens[2], 0);
  cr_assert_str_eq(gguf_kv_at(g, 0)->key, "i8");
  cr_assert_null(gguf_kv_at(g, 9));
  gguf_tokenizer_t tok;
  expect_fail(gguf_tokenizer(g, &tok, &err), &err, "tokenizer.ggml.tokens", "no tokenizer");
  gguf_destroy(&g);
  free(b.p);

  /* The dtype helpers the loaders and the forward pass share. */
  lt_dtype_t lt;
  cr_assert(ft_dtype_to_lt(FT_BF16, &lt) && lt == LT_BF16);
  cr_assert(!ft_dtype_to_lt(FT_Q8_0, &lt));
  cr_assert_eq(ft_dtype_size(FT_F16), 2);
  cr_assert_eq(ft_dtype_size(FT_Q8_0), 0);
  cr_assert_str_eq(ft_dtype_str(FT_Q8_0), "Q8_0");
}

/* ---- Q8_0 ---- */

Test(files, q8_0_dequantize) {
  /* Two blocks: scale 0.5 with q = i - 16, scale -0.25 with q = 127, -128, 0, 1, ... */
  uint8_t blk[2 * FT_Q8_0_BLOCK_BYTES];
  uint16_t d0 = 0x3800, d1 = 0xb400;
  memcpy(blk, &d0, 2);
  memcpy(blk + FT_Q8_0_BLOCK_BYTES, &d1, 2);
  float want[64];
  for (int i = 0; i < 32; i++) {
    int8_t q0 = (int8_t)(i - 16), q1 = (int8_t)(i == 0 ? 127 : i == 1 ? -128 : i - 2);
    blk[2 + i] = (uint8_t)q0;
    blk[FT_Q8_0_BLOCK_BYTES + 2 + i] = (uint8_t)q1;
    want[i] = 0.5f * q0;
    want[32 + i] = -0.25f * q1;
  }
  float got[64];
  qblock_dequant(LT_Q8_0, blk, got, 64);
  for (int i = 0; i < 64; i++) cr_assert_eq(got[i], want[i], "element %d: %g vs %g", i, got[i], want[i]);

  /* The same blocks as a [2, 32] Q8_0 tensor of a hand-built GGUF file. */
  gb_t b = {0};
  gb_head(&b, 1, 0);
  gb_tensor(&b, "q", 2, (uint64_t[]){32, 2}, GGML_TYPE_Q8_0, 0);
  gb_align(&b, 32);
  gb_put(&b, blk, sizeof blk);
  gguf_t *g = NULL;
  lt_err_t err = {0};
  cr_assert_eq(gguf_open_buffer(&g, b.p, b.n, "q8.gguf", &err), LT_OK, "%s", err.msg);
  const ft_tensor_t *t = &gguf_tensor_find(g, "q")->t;
  cr_assert_eq(t->dtype, FT_Q8_0);
  cr_assert_eq(t->nbytes, 68);
  cr_assert_eq(t->shape[0], 2);
  float *y = to_f32(t);
  cr_assert(memcmp(y, want, sizeof want) == 0);
  free(y);
  gguf_destroy(&g);
  free(b.p);

  /* Rows that are not whole blocks are refused. */
  b = (gb_t){0};
  gb_head(&b, 1, 0);
  gb_tensor(&b, "q", 2, (uint64_t[]){33, 2}, GGML_TYPE_Q8_0, 0);
  gb_align(&b, 32);
  gb_put(&b, blk, sizeof blk);
  expect_fail(gb_parse(&b, &err), &err, "blocks", "Q8_0 row of 33");
  free(b.p);
}

/* ---- writer, shards ---- */

Test(files, writer_round_trip) {
  const char *dir = tmp_new();
  uint8_t raw[600];
  for (int i = 0; i < 600; i++) raw[i] = (uint8_t)(i * 37 + 11);
  const ft_tensor_t in[] = {
      {.name = "a.f32", .dtype = FT_F32, .n_dims = 2, .shape = {3, 5, 1, 1}, .data = raw, .nbytes = 60},
      {.name = "b.f16", .dtype = FT_F16, .n_dims = 3, .shape = {7, 1, 3, 1}, .data = raw + 60, .nbytes = 42},
      {.name = "c.bf16", .dtype = FT_BF16, .n_dims = 1, .shape = {13, 1, 1, 1}, .data = raw + 102, .nbytes = 26},
      {.name = "d.i8", .dtype = FT_I8, .n_dims = 4, .shape = {2, 3, 1, 5}, .data = raw + 128, .nbytes = 30},
      {.name = "e.u8", .dtype = FT_U8, .n_dims = 1, .shape = {1, 1, 1, 1}, .data = raw + 158, .nbytes = 1},
      {.name = "f.i32", .dtype = FT_I32, .n_dims = 0, .shape = {1, 1, 1, 1}, .data = raw + 159, .nbytes = 4},
      {.name = "g.empty", .dtype = FT_F32, .n_dims = 2, .shape = {0, 9, 1, 1}, .data = NULL, .nbytes = 0},
      {.name = "h.f32 with \"odd\" name",
       .dtype = FT_F32,
       .n_dims = 1,
       .shape = {17, 1, 1, 1},
       .data = raw + 163,
       .nbytes = 68},
  };
  const uint32_t n = sizeof in / sizeof in[0];
  const char *meta[] = {"format", "pt", "note", "round trip"};
  lt_err_t err = {0};
  const char *path = join(dir, "rt.safetensors");
  cr_assert_eq(st_write(path, in, n, meta, 2, &err), LT_OK, "%s", err.msg);

  size_t size;
  uint8_t *file = slurp(path, &size);
  uint64_t hlen;
  memcpy(&hlen, file, 8);
  cr_assert_eq(hlen % 8, 0, "header padded to 8 bytes");
  cr_assert_eq(file[8], '{');
  cr_assert_eq(size, 8 + hlen + 231, "data area holds exactly the tensors");
  free(file);

  st_file_t *st = NULL;
  cr_assert_eq(st_open(&st, path, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(st_count(st), n);
  cr_assert_str_eq(st_metadata(st, "format"), "pt");
  cr_assert_str_eq(st_metadata(st, "note"), "round trip");
  cr_assert_null(st_metadata(st, "absent"));
  for (uint32_t i = 0; i < n; i++) {
    const ft_tensor_t *t = st_find(st, in[i].name);
    cr_assert_not_null(t, "%s", in[i].name);
    cr_assert_eq(t->dtype, in[i].dtype, "%s", in[i].name);
    cr_assert_eq(t->n_dims, in[i].n_dims, "%s", in[i].name);
    for (uint32_t d = 0; d < FT_MAX_DIMS; d++) cr_assert_eq(t->shape[d], in[i].shape[d], "%s", in[i].name);
    cr_assert_eq(t->nbytes, in[i].nbytes);
    cr_assert(!t->nbytes || memcmp(t->data, in[i].data, t->nbytes) == 0, "%s bytes", in[i].name);
  }
  /* A file is listed in its data order, which is the order written. */
  cr_assert_str_eq(st_tensor(st, 0)->name, "a.f32");
  st_destroy(&st);

  /* Bad input to the writer is refused with a message naming the tensor; nothing is left behind. */
  ft_tensor_t bad = in[0];
  bad.nbytes = 56;
  expect_fail(st_write(path, &bad, 1, NULL, 0, &err), &err, "a.f32", "size mismatch");
  bad = in[0];
  bad.dtype = FT_Q8_0;
  expect_fail(st_write(path, &bad, 1, NULL, 0, &err), &err, "Q8_0", "Q8_0 in safetensors");
  ft_tensor_t twice[2] = {in[0], in[0]};
  expect_fail(st_write(path, twice, 2, NULL, 0, &err), &err, "a.f32", "duplicate name");
  bad = in[0];
  bad.name = "__metadata__";
  expect_fail(st_write(path, &bad, 1, NULL, 0, &err), &err, "__metadata__", "reserved name");
  cr_assert(access(join(dir, "rt.safetensors.tmp"), F_OK) != 0);
}

/* Copies the list of a model's tensors (views into st). Caller frees. */
static ft_tensor_t *tensor_list(const st_file_t *st) {
  ft_tensor_t *t = malloc(st_count(st) * sizeof *t);
  for (uint32_t i = 0; i < st_count(st); i++) t[i] = *st_tensor(st, i);
  return t;
}

Test(files, sharded_set) {
  const char *dir = tmp_new();
  st_file_t *orig = NULL, *sh = NULL;
  lt_err_t err = {0};
  cr_assert_eq(st_open(&orig, model_path("hf/model.safetensors"), &err), LT_OK, "%s", err.msg);
  ft_tensor_t *list = tensor_list(orig);
  uint64_t total = 0;
  for (uint32_t i = 0; i < st_count(orig); i++) total += list[i].nbytes;
  const char *meta[] = {"format", "pt"};
  cr_assert_eq(st_write_sharded(dir, list, st_count(orig), total - total / 3, meta, 1, &err), LT_OK, "%s", err.msg);
  cr_assert(access(join(dir, "model-00001-of-00002.safetensors"), F_OK) == 0);
  cr_assert(access(join(dir, "model-00002-of-00002.safetensors"), F_OK) == 0);
  cr_assert(access(join(dir, "model.safetensors"), F_OK) != 0);

  cr_assert_eq(st_open(&sh, dir, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(st_shard_count(sh), 2);
  cr_assert_eq(st_count(sh), st_count(orig));
  uint32_t in_second = 0;
  for (uint32_t i = 0; i < st_count(orig); i++) {
    const ft_tensor_t *a = st_tensor(orig, i), *b = st_find(sh, a->name);
    cr_assert_not_null(b, "%s lost in sharding", a->name);
    cr_assert_eq(b->nbytes, a->nbytes);
    cr_assert(memcmp(a->data, b->data, a->nbytes) == 0, "%s bytes", a->name);
    in_second += b->shard == 1;
  }
  cr_assert(in_second > 0 && in_second < st_count(orig));
  cr_assert(strstr(st_shard_path(sh, 1), "model-00002-of-00002.safetensors") != NULL);
  cr_assert_str_eq(st_metadata(sh, "format"), "pt");
  st_destroy(&sh);

  /* With config.json next to it, the sharded folder is a loadable model. */
  size_t n;
  uint8_t *cfg = slurp(model_path("hf/config.json"), &n);
  spit(join(dir, "config.json"), cfg, n);
  free(cfg);
  model_file_t *m = NULL;
  cr_assert_eq(model_file_open(&m, dir, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(model_file_weights(m)->n_tensors, 48);
  model_file_destroy(&m);

  /* Hostile indexes: each refused with a message. */
  const char *idx = join(dir, "model.safetensors.index.json");
  static const struct {
    const char *json, *needle;
  } bad[] = {
      {"{\"metadata\": {}}", "weight_map"},
      {"{\"weight_map\": {}}", "weight_map"},
      {"{\"weight_map\": [1]}", "weight_map"},
      {"{\"weight_map\": {\"model.norm.weight\": \"../etc/passwd\"}}", "shard file name"},
      {"{\"weight_map\": {\"model.norm.weight\": 7}}", "shard file name"},
      {"{\"weight_map\": {\"model.norm.weight\": \"missing.safetensors\"}}", "missing.safetensors"},
      {"{\"weight_map\": {\"nope\": \"model-00001-of-00002.safetensors\"}}", "nope"},
      {"{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}", "does not list"},
      {"{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00002.safetensors\",", "invalid JSON"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    spit(idx, bad[i].json, strlen(bad[i].json));
    expect_fail(st_open(&sh, dir, &err), &err, bad[i].needle, bad[i].json);
    cr_assert_null(sh);
  }
  /* A tensor held by both shards. */
  st_file_t *s1 = NULL;
  cr_assert_eq(st_open(&s1, join(dir, "model-00002-of-00002.safetensors"), &err), LT_OK, "%s", err.msg);
  ft_tensor_t *l1 = tensor_list(s1);
  ft_tensor_t *l2 = malloc((st_count(s1) + 1) * sizeof *l2);
  memcpy(l2, l1, st_count(s1) * sizeof *l2);
  l2[st_count(s1)] = list[0]; /* a tensor of shard 1 */
  cr_assert_eq(st_write(join(dir, "model-00003-of-00003.safetensors"), l2, st_count(s1) + 1, NULL, 0, &err), LT_OK);
  const char *dup = "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\", "
                    "\"model.norm.weight\": \"model-00003-of-00003.safetensors\"}}";
  spit(idx, dup, strlen(dup));
  expect_fail(st_open(&sh, dir, &err), &err, "is in both", "tensor in two shards");
  st_destroy(&s1);
  free(l1), free(l2), free(list);
  st_destroy(&orig);
}

/* ---- config.json variants ---- */

static lt_status_t config_text(model_config_t *c, const char *text, const char *gen, lt_err_t *err) {
  json_error_t je;
  json_t *j = json_loads(text, 0, &je), *g = gen ? json_loads(gen, 0, &je) : NULL;
  cr_assert_not_null(j, "test JSON: %s", je.text);
  lt_status_t s = model_config_from_json(c, j, g, "config.json", err);
  json_decref(j);
  json_decref(g);
  return s;
}

#define BASE                                                                                                           \
  "\"hidden_size\": 4096, \"intermediate_size\": 14336, \"num_hidden_layers\": 32, "                                   \
  "\"num_attention_heads\": 32, \"vocab_size\": 128256"

Test(files, config_variants) {
  model_config_t c;
  lt_err_t err = {0};
  /* Llama 3.1 style: llama3 RoPE scaling, eos list, GQA. */
  cr_assert_eq(config_text(&c,
                           "{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"num_key_value_heads\": 8, "
                           "\"rope_theta\": 500000.0, \"max_position_embeddings\": 131072, \"rms_norm_eps\": 1e-05, "
                           "\"bos_token_id\": 128000, \"eos_token_id\": [128001, 128008, 128009], "
                           "\"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                           "\"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}, "
                           "\"tie_word_embeddings\": false}",
                           NULL, &err),
               LT_OK, "%s", err.msg);
  cr_assert_eq(c.head_dim, 128);
  cr_assert_eq(c.n_kv_heads, 8);
  cr_assert_eq(c.rope_theta, 500000.0);
  cr_assert_eq(c.rope_scaling.type, 1);
  cr_assert_eq(c.rope_scaling.factor, 8.0f);
  cr_assert_eq(c.rope_scaling.low_freq_factor, 1.0f);
  cr_assert_eq(c.rope_scaling.high_freq_factor, 4.0f);
  cr_assert_eq(c.rope_scaling.original_max_position, 8192);
  cr_assert_eq(c.n_eos, 3);
  cr_assert_eq(c.eos_ids[2], 128009);
  cr_assert_eq(c.bos_id, 128000);

  /* Defaults: kv heads = heads, head_dim = hidden / heads, LlamaConfig's eps and theta; generation_config wins. */
  cr_assert_eq(config_text(&c, "{\"model_type\": \"llama\", " BASE "}",
                           "{\"eos_token_id\": [7, 9], \"bos_token_id\": null}", &err),
               LT_OK, "%s", err.msg);
  cr_assert_eq(c.n_kv_heads, 32);
  cr_assert_eq(c.head_dim, 128);
  cr_assert_float_eq(c.rms_norm_eps, 1e-6f, 1e-12);
  cr_assert_eq(c.rope_theta, 10000.0);
  cr_assert_eq(c.n_eos, 2);
  cr_assert_eq(c.eos_ids[1], 9);
  cr_assert_eq(c.bos_id, -1);
  cr_assert(!c.tie_word_embeddings);

  /* An explicit head_dim that is not hidden / heads. */
  cr_assert_eq(config_text(&c, "{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"head_dim\": 64}", NULL, &err),
               LT_OK, "%s", err.msg);
  cr_assert_eq(c.head_dim, 64);

  /* Mixtral. */
  cr_assert_eq(config_text(&c,
                           "{\"architectures\": [\"MixtralForCausalLM\"], " BASE ", \"num_key_value_heads\": 8, "
                           "\"num_local_experts\": 8, \"num_experts_per_tok\": 2, \"sliding_window\": null, "
                           "\"router_aux_loss_coef\": 0.02, \"tie_word_embeddings\": false}",
                           NULL, &err),
               LT_OK, "%s", err.msg);
  cr_assert_eq(c.arch, MODEL_ARCH_MIXTRAL);
  cr_assert_eq(c.n_experts, 8);
  cr_assert_eq(c.n_experts_used, 2);
  cr_assert_eq(c.rope_theta, 1e6);
  cr_assert_eq(c.sliding_window, 0);

  static const struct {
    const char *json, *needle;
  } bad[] = {
      {"{\"architectures\": [\"GPT2LMHeadModel\"], " BASE "}",
       "LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM"},
      {"{" BASE "}", "supported"},
      {"{\"model_type\": \"llama\", " BASE ", \"hidden_act\": \"gelu\"}", "hidden_act"},
      {"{\"model_type\": \"llama\", " BASE ", \"attention_bias\": true}", "attention_bias"},
      {"{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}}", "yarn"},
      {"{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}",
       "low_freq_factor"},
      {"{\"model_type\": \"llama\", \"intermediate_size\": 1, \"num_hidden_layers\": 1, \"num_attention_heads\": 1, "
       "\"vocab_size\": 5}",
       "hidden_size"},
      {"{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 5}", "key/value heads"},
      {"{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 64}", "num_key_value_heads"},
      {"{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 0}", "num_key_value_heads"},
      {"{\"model_type\": \"llama\", \"hidden_size\": 100, \"intermediate_size\": 1, \"num_hidden_layers\": 1, "
       "\"num_attention_heads\": 3, \"vocab_size\": 5}",
       "does not split"},
      {"{\"model_type\": \"llama\", " BASE ", \"hidden_size\": -4}", "hidden_size"},
      {"{\"model_type\": \"llama\", " BASE ", \"vocab_size\": 4.5}", "vocab_size"},
      {"{\"model_type\": \"llama\", " BASE ", \"rms_norm_eps\": \"small\"}", "rms_norm_eps"},
      {"{\"model_type\": \"llama\", " BASE ", \"rms_norm_eps\": 0}", "rms_norm_eps"},
      {"{\"model_type\": \"llama\", " BASE ", \"eos_token_id\": 999999}", "eos id"},
      {"{\"model_type\": \"llama\", " BASE ", \"eos_token_id\": [1, \"x\"]}", "eos_token_id"},
      {"{\"model_type\": \"llama\", " BASE ", \"eos_token_id\": [1,2,3,4,5,6,7,8,9]}", "eos ids"},
      {"{\"model_type\": \"llama\", " BASE ", \"num_hidden_layers\": 100000}", "num_hidden_layers"},
      {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 4, \"num_experts_per_tok\": 5}", "experts"},
      {"{\"model_type\": \"llama\", " BASE ", \"tie_word_embeddings\": 1}", "tie_word_embeddings"},
      {"[1, 2]", "not a JSON object"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_fail(config_text(&c, bad[i].json, NULL, &err), &err, bad[i].needle, bad[i].json);
  cr_assert_eq(config_text(&c, "{\"architectures\": [\"GPT2LMHeadModel\"], " BASE "}", NULL, &err), LT_E_UNSUPPORTED);
}

/* ---- the uniform mapping refuses incomplete or mis-shaped models ---- */

Test(files, mapping_names_missing_and_misshaped_tensors) {
  const char *dir = tmp_new();
  st_file_t *st = NULL, *st2 = NULL;
  model_config_t c;
  model_weights_t *w = NULL;
  lt_err_t err = {0};
  cr_assert_eq(model_config_from_hf(&c, model_path("hf"), &err), LT_OK, "%s", err.msg);
  cr_assert_eq(st_open(&st, model_path("hf"), &err), LT_OK, "%s", err.msg);
  ft_tensor_t *list = tensor_list(st);
  uint32_t n = st_count(st), k = 0;

  /* Drop model.layers.3.mlp.up_proj.weight. */
  ft_tensor_t *fewer = malloc(n * sizeof *fewer);
  for (uint32_t i = 0; i < n; i++)
    if (strcmp(list[i].name, "model.layers.3.mlp.up_proj.weight")) fewer[k++] = list[i];
  const char *p = join(dir, "fewer.safetensors");
  cr_assert_eq(st_write(p, fewer, k, NULL, 0, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(st_open(&st2, p, &err), LT_OK, "%s", err.msg);
  expect_fail(model_weights_from_st(&w, &c, st2, &err), &err, "model.layers.3.mlp.up_proj.weight is missing",
              "missing tensor");
  cr_assert_null(w);
  st_destroy(&st2);

  /* Give layer 2's k_proj the shape of q_proj. */
  for (uint32_t i = 0; i < n; i++)
    if (!strcmp(list[i].name, "model.layers.2.self_attn.k_proj.weight")) {
      const ft_tensor_t *q = st_find(st, "model.layers.2.self_attn.q_proj.weight");
      list[i].shape[0] = q->shape[0];
      list[i].n_elems = q->n_elems;
      list[i].nbytes = q->nbytes;
      list[i].data = q->data;
    }
  p = join(dir, "bad.safetensors");
  cr_assert_eq(st_write(p, list, n, NULL, 0, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(st_open(&st2, p, &err), LT_OK, "%s", err.msg);
  expect_fail(model_weights_from_st(&w, &c, st2, &err), &err,
              "model.layers.2.self_attn.k_proj.weight has shape [64, 64], expected [32, 64]", "mis-shaped tensor");
  st_destroy(&st2);

  /* Tied: no lm_head needed, the head is the embedding table, and the flat list holds it once. */
  model_config_t tied = c;
  tied.tie_word_embeddings = true;
  cr_assert_eq(model_weights_from_st(&w, &tied, st, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(w->lm_head.data, w->tok_embd.data);
  cr_assert_eq(w->n_tensors, 47);
  model_weights_destroy(&w);

  /* A config asking for more layers than the GGUF file has. */
  gguf_t *g = NULL;
  cr_assert_eq(gguf_open(&g, model_path("stories260K.gguf"), &err), LT_OK, "%s", err.msg);
  model_config_t more = c;
  more.n_layers = 6;
  expect_fail(model_weights_from_gguf(&w, &more, g, &err), &err, "blk.5.attn_norm.weight is missing", "extra layer");
  model_config_t wide = c;
  wide.intermediate_size = 173;
  expect_fail(model_weights_from_gguf(&w, &wide, g, &err), &err, "blk.0.ffn_gate.weight has shape [172, 64]",
              "wrong ffn width");
  gguf_destroy(&g);
  free(fewer), free(list);
  st_destroy(&st);
}

/* ---- a tiny Mixtral in both formats ---- */

/* hidden 8, 2 heads of 4, 1 kv head, ffn 16, 3 experts (2 used), vocab 10, 1 layer. */
static const struct mix_spec {
  const char *gguf, *hf; /* hf NULL: expert stack, split into hf_expert names */
  uint32_t n_dims;
  uint64_t shape[3]; /* row-major */
} mix[] = {
    {"token_embd.weight", "model.embed_tokens.weight", 2, {10, 8}},
    {"output_norm.weight", "model.norm.weight", 1, {8}},
    {"output.weight", "lm_head.weight", 2, {10, 8}},
    {"blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight", 1, {8}},
    {"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 2, {8, 8}},
    {"blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 2, {4, 8}},
    {"blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", 2, {4, 8}},
    {"blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight", 2, {8, 8}},
    {"blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight", 1, {8}},
    {"blk.0.ffn_gate_inp.weight", "model.layers.0.block_sparse_moe.gate.weight", 2, {3, 8}},
    {"blk.0.ffn_gate_exps.weight", "model.layers.0.block_sparse_moe.experts.%u.w1.weight", 3, {3, 16, 8}},
    {"blk.0.ffn_up_exps.weight", "model.layers.0.block_sparse_moe.experts.%u.w3.weight", 3, {3, 16, 8}},
    {"blk.0.ffn_down_exps.weight", "model.layers.0.block_sparse_moe.experts.%u.w2.weight", 3, {3, 8, 16}},
};
#define N_MIX (sizeof mix / sizeof mix[0])

Test(files, mixtral_both_formats) {
  /* GGUF with stacked experts; every weight value distinct. */
  gb_t b = {0};
  gb_head(&b, N_MIX, 9);
  gb_kv_str(&b, "general.architecture", "llama");
  gb_kv_u32(&b, "llama.embedding_length", 8);
  gb_kv_u32(&b, "llama.feed_forward_length", 16);
  gb_kv_u32(&b, "llama.block_count", 1);
  gb_kv_u32(&b, "llama.attention.head_count", 2);
  gb_kv_u32(&b, "llama.attention.head_count_kv", 1);
  gb_kv_u32(&b, "llama.expert_count", 3);
  gb_kv_u32(&b, "llama.expert_used_count", 2);
  gb_kv_u32(&b, "llama.vocab_size", 10);
  uint64_t off = 0, sizes[N_MIX];
  for (size_t i = 0; i < N_MIX; i++) {
    uint64_t ne[3], n = 1;
    for (uint32_t d = 0; d < mix[i].n_dims; d++) ne[d] = mix[i].shape[mix[i].n_dims - 1 - d], n *= ne[d];
    gb_tensor(&b, mix[i].gguf, mix[i].n_dims, ne, GGML_TYPE_F32, off);
    sizes[i] = n * 4;
    off += (sizes[i] + 31) / 32 * 32;
  }
  gb_align(&b, 32);
  float next = 1;
  for (size_t i = 0; i < N_MIX; i++) {
    for (uint64_t k = 0; k < sizes[i] / 4; k++, next += 1) gb_put(&b, &next, 4);
    gb_align(&b, 32);
  }
  gguf_t *g = NULL;
  model_config_t cg, ch;
  model_weights_t *wg = NULL;
  lt_err_t err = {0};
  cr_assert_eq(gguf_open_buffer(&g, b.p, b.n, "mixtral.gguf", &err), LT_OK, "%s", err.msg);
  cr_assert_eq(model_config_from_gguf(&cg, g, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(cg.arch, MODEL_ARCH_MIXTRAL);
  cr_assert_eq(cg.n_experts, 3);
  cr_assert_eq(cg.n_experts_used, 2);
  cr_assert_eq(cg.head_dim, 4);
  cr_assert_eq(cg.vocab_size, 10);
  cr_assert_eq(model_weights_from_gguf(&wg, &cg, g, &err), LT_OK, "%s", err.msg);
  const ft_tensor_t *stack = &gguf_tensor_find(g, "blk.0.ffn_up_exps.weight")->t;
  cr_assert_eq(wg->layers[0].experts[2].up.data, (const uint8_t *)stack->data + 2 * 16 * 8 * 4);
  cr_assert_eq(wg->layers[0].experts[2].up.shape[0], 16);
  cr_assert_eq(wg->layers[0].experts[2].up.shape[1], 8);

  /* The same weights in Hugging Face layout: experts split out of the stacks. */
  const char *dir = tmp_new();
  ft_tensor_t hf[N_MIX + 6];
  char names[9][80];
  uint32_t n = 0, nn = 0;
  for (size_t i = 0; i < N_MIX; i++) {
    const ft_tensor_t *t = &gguf_tensor_find(g, mix[i].gguf)->t;
    if (mix[i].n_dims < 3) {
      hf[n] = *t;
      hf[n++].name = mix[i].hf;
      continue;
    }
    for (uint32_t e = 0; e < 3; e++, nn++) {
      snprintf(names[nn], sizeof names[nn], "model.layers.0.block_sparse_moe.experts.%u.w%c.weight", e,
               strstr(mix[i].gguf, "gate") ? '1'
               : strstr(mix[i].gguf, "up") ? '3'
                                           : '2');
      hf[n] = *t;
      hf[n].name = names[nn];
      hf[n].n_dims = 2;
      hf[n].shape[0] = t->shape[1];
      hf[n].shape[1] = t->shape[2];
      hf[n].shape[2] = 1;
      hf[n].nbytes = t->nbytes / 3;
      hf[n].n_elems = t->n_elems / 3;
      hf[n++].data = (const uint8_t *)t->data + e * (t->nbytes / 3);
    }
  }
  cr_assert_eq(st_write(join(dir, "model.safetensors"), hf, n, NULL, 0, &err), LT_OK, "%s", err.msg);
  const char *cfg = "{\"architectures\": [\"MixtralForCausalLM\"], \"hidden_size\": 8, \"intermediate_size\": 16, "
                    "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, "
                    "\"vocab_size\": 10, \"num_local_experts\": 3, \"num_experts_per_tok\": 2, "
                    "\"eos_token_id\": 2, \"bos_token_id\": 1}";
  spit(join(dir, "config.json"), cfg, strlen(cfg));
  model_file_t *m = NULL;
  cr_assert_eq(model_file_open(&m, dir, &err), LT_OK, "%s", err.msg);
  ch = *model_file_config(m);
  cr_assert_eq(ch.n_experts, 3);
  const model_weights_t *h = model_file_weights(m);
  cr_assert_eq(wg->n_tensors, h->n_tensors);
  cr_assert_eq(h->n_tensors, 3 + 6 + 1 + 9);
  for (uint32_t i = 0; i < h->n_tensors; i++) {
    cr_assert_str_eq(wg->tensors[i].name, h->tensors[i].name);
    cr_assert_eq(wg->tensors[i].expert, h->tensors[i].expert);
    cr_assert_eq(wg->tensors[i].t->nbytes, h->tensors[i].t->nbytes, "%s", h->tensors[i].name);
    cr_assert(memcmp(wg->tensors[i].t->data, h->tensors[i].t->data, h->tensors[i].t->nbytes) == 0, "%s",
              h->tensors[i].name);
  }
  cr_assert_str_eq(h->tensors[9].name, "model.layers.0.block_sparse_moe.experts.0.w3.weight");
  model_file_destroy(&m);

  /* A router with the wrong expert count is named. */
  model_weights_destroy(&wg);
  cg.n_experts = 4;
  expect_fail(model_weights_from_gguf(&wg, &cg, g, &err), &err, "blk.0.ffn_gate_inp.weight has shape [3, 8]",
              "expert count");
  cr_assert_null(wg);
  gguf_destroy(&g);
  free(b.p);
}

/* ---- hostile safetensors headers ---- */

/* Builds a safetensors image: the given header length field (or strlen(header) when hlen_field is UINT64_MAX),
 * the header text, then data_len zero bytes. Caller frees. */
static uint8_t *st_image(const char *header, uint64_t hlen_field, size_t data_len, size_t *size) {
  size_t h = strlen(header);
  *size = 8 + h + data_len;
  uint8_t *p = calloc(1, *size);
  uint64_t len = hlen_field == UINT64_MAX ? h : hlen_field;
  memcpy(p, &len, 8);
  memcpy(p + 8, header, h);
  return p;
}

static lt_status_t st_try(const uint8_t *img, size_t size, lt_err_t *err) {
  st_file_t *st = NULL;
  lt_status_t s = st_open_buffer(&st, img, size, "hostile.safetensors", err);
  if (!s) st_destroy(&st);
  cr_assert_null(st);
  return s;
}

#define T(dtype, shape, offs) "{\"dtype\": \"" dtype "\", \"shape\": " shape ", \"data_offsets\": " offs "}"

Test(files, hostile_safetensors) {
  static const struct {
    const char *header, *needle;
    lt_status_t code;
  } cases[] = {
      {"{\"a\": ", "not valid JSON", LT_E_CORRUPT},
      {"[1, 2]", "not a JSON object", LT_E_CORRUPT},
      {"{\"w\": " T("F64", "[2]", "[0, 16]") "}", "F64", LT_E_UNSUPPORTED},
      {"{\"w\": " T("F32", "[3]", "[0, 8]") "}", "needs 12 bytes but data_offsets span 8", LT_E_CORRUPT},
      {"{\"w\": " T("F32", "[-1]", "[0, 8]") "}", "shape entry 0", LT_E_CORRUPT},
      {"{\"w\": " T("F32", "[1, 1, 1, 1, 2]", "[0, 8]") "}", "5 dims", LT_E_LIMIT},
      {"{\"w\": " T("F32", "[4294967296, 4294967296, 16]", "[0, 8]") "}", "overflows", LT_E_CORRUPT},
      {"{\"w\": " T("F32", "[1]", "[8, 4]") "}", "begins after it ends", LT_E_CORRUPT},
      {"{\"w\": " T("U8", "[1000]", "[0, 1000]") "}", "past the data area", LT_E_CORRUPT},
      {"{\"w\": " T("U8", "[2]", "[0, 18446744073709551615]") "}", "not valid JSON", LT_E_CORRUPT},
      {"{\"a\": " T("F32", "[2]", "[0, 8]") ", \"b\": " T("F32", "[2]", "[4, 12]") "}", "overlap", LT_E_CORRUPT},
      {"{\"__metadata__\": {\"k\": 1}}", "__metadata__", LT_E_CORRUPT},
      {"{\"__metadata__\": [\"k\"]}", "__metadata__", LT_E_CORRUPT},
      {"{\"w\": 3}", "not an object", LT_E_CORRUPT},
      {"{\"w\": " T("F32", "[1]", "[0, 4]") ", \"w\": " T("F32", "[1]", "[4, 8]") "}", "duplicate", LT_E_CORRUPT},
      {"{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", "data_offsets", LT_E_CORRUPT},
      {"{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", "data_offsets", LT_E_CORRUPT},
      {"{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", "dtype", LT_E_CORRUPT},
      {"{\"w\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}", "shape", LT_E_CORRUPT},
      {"{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", "shape entry", LT_E_CORRUPT},
      {"{\"\": " T("F32", "[1]", "[0, 4]") "}", "empty name", LT_E_CORRUPT},
      {"{\"w\": " T("F32", "[1]", "[0, 4]") "} x", "not valid JSON", LT_E_CORRUPT},
  };
  lt_err_t err = {0};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t size;
    uint8_t *img = st_image(cases[i].header, UINT64_MAX, 16, &size);
    lt_status_t s = st_try(img, size, &err);
    expect_fail(s, &err, cases[i].needle, cases[i].header);
    cr_assert_eq(s, cases[i].code, "%s: code %s", cases[i].header, lt_status_str(s));
    free(img);
  }
  /* Valid edge cases: trailing spaces, empty tensors anywhere, an empty header object. */
  static const char *const fine[] = {
      "{\"w\": " T("F32", "[2]", "[0, 8]") "}      ",
      "{\"e\": " T("F32", "[0, 4]", "[16, 16]") ", \"w\": " T("F32", "[4]", "[0, 16]") "}",
      "{}",
  };
  for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
    size_t size;
    uint8_t *img = st_image(fine[i], UINT64_MAX, 16, &size);
    cr_assert_eq(st_try(img, size, &err), LT_OK, "%s: %s", fine[i], err.msg);
    free(img);
  }

  /* Header length fields: past the end of the file, and over the 100 MB limit. */
  size_t size;
  uint8_t *img = st_image("{}", 1000, 0, &size);
  expect_fail(st_try(img, size, &err), &err, "runs past the end", "header length past EOF");
  free(img);
  img = st_image("{}", 200u << 20, 0, &size);
  lt_status_t s = st_try(img, size, &err);
  expect_fail(s, &err, "limit", "header length over the limit");
  cr_assert_eq(s, LT_E_LIMIT);
  free(img);
  uint8_t tiny[5] = {0};
  expect_fail(st_try(tiny, 5, &err), &err, "too small", "5-byte file");
  expect_fail(st_try(tiny, 0, &err), &err, "too small", "empty file");

  /* Through files: an empty file, a missing one, and a folder without weights. */
  const char *dir = tmp_new();
  st_file_t *st = NULL;
  spit(join(dir, "empty.safetensors"), "", 0);
  expect_fail(st_open(&st, join(dir, "empty.safetensors"), &err), &err, "empty.safetensors", "empty file");
  expect_fail(st_open(&st, join(dir, "absent.safetensors"), &err), &err, "absent.safetensors", "missing file");
  cr_assert_eq(err.code, LT_E_IO);
  expect_fail(st_open(&st, dir, &err), &err, "neither", "empty folder");
  cr_assert_null(st);
}

/* ---- hostile GGUF headers ---- */

Test(files, hostile_gguf) {
  lt_err_t err = {0};
  gb_t b = {0};
#define CASE(needle, code_, ...)                                                                                       \
  do {                                                                                                                 \
    b.n = 0;                                                                                                           \
    __VA_ARGS__;                                                                                                       \
    lt_status_t s_ = gb_parse(&b, &err);                                                                               \
    expect_fail(s_, &err, needle, #__VA_ARGS__);                                                                       \
    if (code_) cr_assert_eq(s_, code_, "%s: code %s (%s)", needle, lt_status_str(s_), err.msg);                        \
  } while (0)
  static const uint8_t data[256];
  CASE("bad magic", LT_E_CORRUPT, gb_put(&b, "GGML", 4), gb_u32(&b, 3), gb_u64(&b, 0), gb_u64(&b, 0));
  CASE("version 1", LT_E_UNSUPPORTED, gb_put(&b, "GGUF", 4), gb_u32(&b, 1), gb_u64(&b, 0), gb_u64(&b, 0));
  CASE("version 4", LT_E_UNSUPPORTED, gb_put(&b, "GGUF", 4), gb_u32(&b, 4), gb_u64(&b, 0), gb_u64(&b, 0));
  CASE("big-endian", LT_E_UNSUPPORTED, gb_put(&b, "GGUF", 4), gb_u32(&b, 0x03000000u), gb_u64(&b, 0));
  CASE("file ends inside", LT_E_CORRUPT, gb_put(&b, "GGUF", 4), gb_u32(&b, 3));
  CASE("file ends inside", LT_E_CORRUPT, gb_put(&b, "GG", 2));
  CASE("key/value count", LT_E_CORRUPT, gb_head(&b, 0, 1000));
  CASE("key/value count", LT_E_LIMIT, gb_head(&b, 0, 1ull << 21));
  CASE("tensor count", LT_E_CORRUPT, gb_head(&b, 1000, 0));
  CASE("tensor count", LT_E_LIMIT, gb_head(&b, 1ull << 40, 0));
  CASE("tensor count", LT_E_LIMIT, gb_head(&b, 1ull << 21, 0));
  /* Giant lengths and counts: refused before anything is allocated. */
  CASE("bytes long", LT_E_LIMIT, gb_head(&b, 0, 1), gb_u64(&b, 1ull << 62), gb_put(&b, data, 64));
  CASE("runs past the end", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_u64(&b, 1000), gb_put(&b, data, 64));
  CASE("runs past the end", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_str(&b, "k"), gb_u32(&b, GGUF_STRING),
       gb_u64(&b, 1ull << 60), gb_put(&b, data, 16));
  CASE("run past the end", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_str(&b, "k"), gb_u32(&b, GGUF_ARRAY),
       gb_u32(&b, GGUF_U32), gb_u64(&b, 1ull << 61), gb_put(&b, data, 64));
  CASE("run past the end", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_str(&b, "k"), gb_u32(&b, GGUF_ARRAY),
       gb_u32(&b, GGUF_F64), gb_u64(&b, UINT64_MAX / 4), gb_put(&b, data, 64));
  CASE("cannot fit", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_str(&b, "k"), gb_u32(&b, GGUF_ARRAY), gb_u32(&b, GGUF_STRING),
       gb_u64(&b, 1ull << 40), gb_put(&b, data, 64));
  CASE("runs past the end", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_str(&b, "k"), gb_u32(&b, GGUF_ARRAY),
       gb_u32(&b, GGUF_STRING), gb_u64(&b, 3), gb_str(&b, "ab"), gb_u64(&b, 1ull << 50), gb_put(&b, data, 64));
  CASE("unknown value type 13", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_str(&b, "k"), gb_u32(&b, 13), gb_u32(&b, 0));
  CASE("unknown type 99", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_str(&b, "k"), gb_u32(&b, GGUF_ARRAY), gb_u32(&b, 99),
       gb_u64(&b, 0));
  CASE("array of arrays", LT_E_UNSUPPORTED, gb_head(&b, 0, 1), gb_str(&b, "k"), gb_u32(&b, GGUF_ARRAY),
       gb_u32(&b, GGUF_ARRAY), gb_u64(&b, 1), gb_put(&b, data, 64));
  CASE("not 0 or 1", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_str(&b, "k"), gb_u32(&b, GGUF_BOOL), gb_put(&b, "\2", 1));
  CASE("NUL", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_u64(&b, 3), gb_put(&b, "a\0b", 3), gb_u32(&b, GGUF_U8),
       gb_put(&b, data, 1));
  CASE("empty", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_str(&b, ""), gb_u32(&b, GGUF_U8), gb_put(&b, data, 1));
  CASE("appears twice", LT_E_CORRUPT, gb_head(&b, 0, 2), gb_kv_u32(&b, "k", 1), gb_kv_u32(&b, "k", 2));
  CASE("power of two", LT_E_CORRUPT, gb_head(&b, 0, 1), gb_kv_u32(&b, "general.alignment", 48));
  CASE("expected an integer", LT_E_INVALID, gb_head(&b, 0, 1), gb_kv_str(&b, "general.alignment", "32"));
  /* Tensor infos. */
  const uint64_t ne2[] = {8, 2}, ne5[] = {1, 1, 1, 1, 2}, big[] = {1ull << 32, 1ull << 32, 1ull << 8};
  CASE("n_dims 5", LT_E_LIMIT, gb_head(&b, 1, 0), gb_tensor(&b, "t", 5, ne5, 0, 0), gb_align(&b, 32),
       gb_put(&b, data, 64));
  CASE("n_dims 0", LT_E_CORRUPT, gb_head(&b, 1, 0), gb_tensor(&b, "t", 0, ne2, 0, 0), gb_align(&b, 32),
       gb_put(&b, data, 64));
  CASE("overflow", LT_E_CORRUPT, gb_head(&b, 1, 0), gb_tensor(&b, "t", 3, big, 0, 0), gb_align(&b, 32),
       gb_put(&b, data, 64));
  CASE("IQ2_XXS (16)", LT_E_UNSUPPORTED, gb_head(&b, 1, 0), gb_tensor(&b, "t", 2, ne2, 16, 0), gb_align(&b, 32),
       gb_put(&b, data, 64));
  CASE("Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K", LT_E_UNSUPPORTED, gb_head(&b, 1, 0),
       gb_tensor(&b, "t", 2, ne2, 20, 0), gb_align(&b, 32), gb_put(&b, data, 64));
  /* A block format whose blocks do not fit the row (8 elements of Q4_K's 256) is refused before any read. */
  CASE("Q4_K dims [8, 2] overflow or break its 256-element blocks", LT_E_CORRUPT, gb_head(&b, 1, 0),
       gb_tensor(&b, "t", 2, ne2, 12, 0), gb_align(&b, 32), gb_put(&b, data, 64));
  CASE("Q5_0 dims [8, 2] overflow or break its 32-element blocks", LT_E_CORRUPT, gb_head(&b, 1, 0),
       gb_tensor(&b, "t", 2, ne2, 6, 0), gb_align(&b, 32), gb_put(&b, data, 64));
  CASE("unknown (99)", LT_E_UNSUPPORTED, gb_head(&b, 1, 0), gb_tensor(&b, "t", 2, ne2, 99, 0), gb_align(&b, 32),
       gb_put(&b, data, 64));
  CASE("past the data section", LT_E_CORRUPT, gb_head(&b, 1, 0), gb_tensor(&b, "t", 2, ne2, 0, 1024), gb_align(&b, 32),
       gb_put(&b, data, 64));
  CASE("past the data section", LT_E_CORRUPT, gb_head(&b, 1, 0), gb_tensor(&b, "t", 2, ne2, 0, 0), gb_align(&b, 32),
       gb_put(&b, data, 63));
  CASE("past the data section", LT_E_CORRUPT, gb_head(&b, 1, 0), gb_tensor(&b, "t", 2, ne2, 0, UINT64_MAX - 31),
       gb_align(&b, 32), gb_put(&b, data, 64));
  CASE("past the end", LT_E_CORRUPT, gb_head(&b, 1, 0), gb_tensor(&b, "t", 2, ne2, 0, 0), gb_put(&b, data, 1));
  CASE("not a multiple", LT_E_CORRUPT, gb_head(&b, 1, 0), gb_tensor(&b, "t", 2, ne2, 0, 4), gb_align(&b, 32),
       gb_put(&b, data, 128));
  CASE("overlap", LT_E_CORRUPT, gb_head(&b, 2, 0), gb_tensor(&b, "a", 2, ne2, 0, 0), gb_tensor(&b, "b", 2, ne2, 0, 32),
       gb_align(&b, 32), gb_put(&b, data, 128));
  CASE("appears twice", LT_E_CORRUPT, gb_head(&b, 2, 0), gb_tensor(&b, "a", 2, ne2, 0, 0),
       gb_tensor(&b, "a", 2, ne2, 0, 64), gb_align(&b, 32), gb_put(&b, data, 128));
  char longname[GGUF_MAX_NAME + 2];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  CASE("bytes long", LT_E_LIMIT, gb_head(&b, 1, 0), gb_tensor(&b, longname, 2, ne2, 0, 0), gb_align(&b, 32),
       gb_put(&b, data, 64));
#undef CASE
  /* The smallest valid files: no tensors (v3 and v2), and one tensor with a custom alignment. */
  b.n = 0;
  gb_head(&b, 0, 0);
  cr_assert_eq(gb_parse(&b, &err), LT_OK, "%s", err.msg);
  b.p[4] = 2;
  cr_assert_eq(gb_parse(&b, &err), LT_OK, "v2: %s", err.msg);
  b.n = 0;
  gb_head(&b, 1, 1);
  gb_kv_u32(&b, "general.alignment", 64);
  gb_tensor(&b, "t", 2, ne2, 0, 0);
  gb_align(&b, 64);
  gb_put(&b, data, 64);
  cr_assert_eq(gb_parse(&b, &err), LT_OK, "%s", err.msg);
  free(b.p);

  /* Config from GGUF metadata: unsupported architecture and rope scaling are named. */
  gguf_t *g = NULL;
  model_config_t c;
  b = (gb_t){0};
  gb_head(&b, 0, 1);
  gb_kv_str(&b, "general.architecture", "gpt2");
  cr_assert_eq(gguf_open_buffer(&g, b.p, b.n, "gpt2.gguf", &err), LT_OK, "%s", err.msg);
  expect_fail(model_config_from_gguf(&c, g, &err), &err, "supported: llama", "gpt2 GGUF");
  gguf_destroy(&g);
  b.n = 0;
  gb_head(&b, 0, 2);
  gb_kv_str(&b, "general.architecture", "llama");
  gb_kv_str(&b, "llama.rope.scaling.type", "yarn");
  cr_assert_eq(gguf_open_buffer(&g, b.p, b.n, "yarn.gguf", &err), LT_OK, "%s", err.msg);
  expect_fail(model_config_from_gguf(&c, g, &err), &err, "yarn", "yarn GGUF");
  gguf_destroy(&g);
  free(b.p);
}

/* ---- truncation and random mutation of the real files ---- */

/* Parses img as GGUF or safetensors; when that succeeds, walks everything a loader would touch (all tensor
 * bytes, the config, the weight mapping, the tokenizer) so that ASan sees any bad pointer. */
static lt_status_t parse_and_walk(const uint8_t *img, size_t size, bool gguf, const model_config_t *hf_cfg,
                                  lt_err_t *err) {
  volatile float sink = 0;
  model_config_t c;
  model_weights_t *w = NULL;
  if (gguf) {
    gguf_t *g = NULL;
    lt_status_t s = gguf_open_buffer(&g, img, size, "mutated.gguf", err);
    if (s) return s;
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
      const ft_tensor_t *t = &gguf_tensor_at(g, i)->t;
      float *y = to_f32(t);
      for (uint64_t k = 0; k < t->n_elems; k += 97) sink += y[k];
      free(y);
    }
    gguf_tokenizer_t tok;
    lt_err_t e2 = {0};
    if (gguf_tokenizer(g, &tok, &e2) == LT_OK)
      for (uint64_t i = 0; i < tok.n_tokens; i++) sink += (float)strlen(tok.tokens[i]);
    if (model_config_from_gguf(&c, g, &e2) == LT_OK && model_weights_from_gguf(&w, &c, g, &e2) == LT_OK)
      model_weights_destroy(&w);
    gguf_destroy(&g);
    return LT_OK;
  }
  st_file_t *st = NULL;
  lt_status_t s = st_open_buffer(&st, img, size, "mutated.safetensors", err);
  if (s) return s;
  for (uint32_t i = 0; i < st_count(st); i++) {
    const ft_tensor_t *t = st_tensor(st, i);
    if (t->dtype != FT_F32 && t->dtype != FT_F16 && t->dtype != FT_BF16) continue;
    float *y = to_f32(t);
    for (uint64_t k = 0; k < t->n_elems; k += 97) sink += y[k];
    free(y);
  }
  lt_err_t e2 = {0};
  if (model_weights_from_st(&w, hf_cfg, st, &e2) == LT_OK) model_weights_destroy(&w);
  st_destroy(&st);
  (void)sink;
  return LT_OK;
}

/* Cuts the file at many points before its last tensor byte: every cut must fail with a message. */
static void truncations(const char *path, bool gguf, size_t header_end) {
  size_t size;
  uint8_t *full = slurp(path, &size);
  lt_err_t err = {0};
  model_config_t cfg;
  cr_assert_eq(model_config_from_hf(&cfg, model_path("hf"), &err), LT_OK, "%s", err.msg);
  cr_assert_eq(parse_and_walk(full, size, gguf, &cfg, &err), LT_OK, "%s", err.msg);
  uint32_t cuts = 0;
  for (size_t cut = 0; cut < size; cut += cut < 300 ? 1 : cut < header_end + 64 ? 23 : 40009) {
    uint8_t *img = malloc(cut ? cut : 1);
    memcpy(img, full, cut);
    lt_status_t s = parse_and_walk(img, cut, gguf, &cfg, &err);
    char what[64];
    snprintf(what, sizeof what, "%s cut at %zu", gguf ? "GGUF" : "safetensors", cut);
    expect_fail(s, &err, NULL, what);
    free(img);
    cuts++;
  }
  cr_assert(size > 1);
  uint8_t *img = malloc(size - 1);
  memcpy(img, full, size - 1);
  expect_fail(parse_and_walk(img, size - 1, gguf, &cfg, &err), &err, "past", "one byte short");
  free(img);
  cr_assert(cuts > 500, "%u cuts", cuts);
  free(full);
}

Test(files, truncated_files) {
  gguf_t *g = NULL;
  lt_err_t err = {0};
  const char *gp = model_path("stories260K.gguf");
  cr_assert_eq(gguf_open(&g, gp, &err), LT_OK, "%s", err.msg);
  /* The last tensor ends at the end of the file, so every shorter file lacks tensor bytes. */
  uint64_t end = 0;
  for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
    const gguf_tensor_t *t = gguf_tensor_at(g, i);
    if (t->offset + t->t.nbytes > end) end = t->offset + t->t.nbytes;
  }
  size_t data_off = gguf_data_offset(g);
  gguf_destroy(&g);
  struct stat sb;
  cr_assert_eq(stat(gp, &sb), 0);
  cr_assert_eq(data_off + end, (uint64_t)sb.st_size);
  truncations(gp, true, data_off);
  truncations(model_path("hf/model.safetensors"), false, 8 + 4944);
}

/* Mutates the header region of a real file a few hundred times: 1 to 4 random bytes, or an 8-byte field set to a
 * boundary value, or (safetensors) one digit changed. Nothing may crash; failures carry a message. */
static void mutations(const char *path, bool gguf, size_t header_end, uint32_t rounds, uint64_t seed) {
  static const uint64_t edges[] = {0, 1, 0xff, 0xffffffffull, 0x100000000ull, 1ull << 62, UINT64_MAX, 0x7fffffffull};
  size_t size;
  uint8_t *full = slurp(path, &size), *img = malloc(size);
  uint32_t ok = 0;
  model_config_t cfg;
  lt_err_t cerr = {0};
  cr_assert_eq(model_config_from_hf(&cfg, model_path("hf"), &cerr), LT_OK, "%s", cerr.msg);
  for (uint32_t r = 0; r < rounds; r++) {
    memcpy(img, full, size);
    uint64_t kind = rng(&seed) % 4;
    if (kind == 0 && header_end > 16) {
      uint64_t v = edges[rng(&seed) % (sizeof edges / sizeof edges[0])];
      memcpy(img + rng(&seed) % (header_end - 8), &v, 8);
    } else if (kind == 1 && !gguf) {
      for (int tries = 0; tries < 64; tries++) {
        size_t at = 8 + rng(&seed) % (header_end - 8);
        if (img[at] >= '0' && img[at] <= '9') {
          img[at] = (uint8_t)('0' + rng(&seed) % 10);
          break;
        }
      }
    } else {
      for (uint64_t k = 1 + rng(&seed) % 4; k > 0; k--) img[rng(&seed) % header_end] = (uint8_t)rng(&seed);
    }
    lt_err_t err = {0};
    lt_status_t s = parse_and_walk(img, size, gguf, &cfg, &err);
    if (s == LT_OK)
      ok++;
    else {
      cr_assert(s < 0 && err.code == s && err.msg[0], "round %u: failure %d without a message", r, s);
    }
  }
  cr_log_info("%s: %u of %u mutations still parse", path, ok, rounds);
  free(img);
  free(full);
}

Test(files, random_mutations) {
  gguf_t *g = NULL;
  lt_err_t err = {0};
  cr_assert_eq(gguf_open(&g, model_path("stories260K.gguf"), &err), LT_OK, "%s", err.msg);
  size_t data_off = gguf_data_offset(g);
  gguf_destroy(&g);
  mutations(model_path("stories260K.gguf"), true, data_off, 400, 0x9e3779b97f4a7c15ull);
  mutations(model_path("hf/model.safetensors"), false, 8 + 4944, 400, 0x243f6a8885a308d3ull);
}
