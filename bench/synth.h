/* The synthetic LLaMA the benchmarks share (bench_model, bench_zo): about 100M parameters in f16 with random
 * weights and a filler tokenizer, written into a temporary folder and deleted afterwards. Header-only: each bench is one program. */
#ifndef LATHE_BENCH_SYNTH_H
#define LATHE_BENCH_SYNTH_H

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <unistd.h>

#include "engine/ops/ref/ref.h"
#include "engine/model/safetensors.h"

/* The next value of a splitmix64 stream. */
static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Deletes the synthetic folder dir and its three files, if any, and clears dir. */
static void synth_remove(char *dir) {
  if (!dir[0]) return;
  char p[300];
  snprintf(p, sizeof p, "%s/config.json", dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/tokenizer.json", dir);
  unlink(p);
  rmdir(dir);
  dir[0] = 0;
}

/* Appends an f16 tensor description (a matrix [rows, cols], or a vector when cols is 0) to t[*n], its name
 * copied into names[*n]; adds its element count to *total. */
static void synth_add_tensor(ft_tensor_t *t, char (*names)[64], uint32_t *n, uint64_t *total, const char *name,
                             uint64_t rows, uint64_t cols) {
  snprintf(names[*n], 64, "%s", name);
  t[*n] = (ft_tensor_t){.name = names[*n],
                        .dtype = FT_F16,
                        .n_dims = cols ? 2 : 1,
                        .shape = {rows, cols ? cols : 1, 1, 1},
                        .n_elems = rows * (cols ? cols : 1)};
  t[*n].nbytes = t[*n].n_elems * 2;
  *total += t[(*n)++].n_elems;
}

/* Writes a LLaMA (hidden 768, 8 layers, 12 heads, 4 KV heads, ffn 2048, vocab 32000, untied) with f16 weights
 * into a new temporary folder whose path goes to dir (n bytes). Matrices hold approximately normal values (a sum
 * of four uniforms) of standard deviation 0.02 from a fixed seed; norms are 1. Returns false with msg (msg_n
 * bytes) on failure, the folder removed. */
/* Writes dir/tokenizer.json for a vocabulary of v tokens: stories260K's SentencePiece-style tokenizer (512 tokens,
 * byte fallback, its merges) with filler pieces for the ids above, which no text reaches; enough for the model to
 * be written as GGUF and run by llama.cpp. False with msg. */
static bool synth_tokenizer(const char *dir, uint32_t v, char *msg, size_t msg_n) {
  json_error_t je;
  json_t *t = json_load_file(LATHE_SOURCE_DIR "/tests/fixtures/stories260K/hf/tokenizer.json", 0, &je);
  json_t *vocab = t ? json_object_get(json_object_get(t, "model"), "vocab") : NULL;
  if (!vocab) {
    snprintf(msg, msg_n, "stories260K's tokenizer.json: %s", t ? "no vocab" : je.text);
    json_decref(t);
    return false;
  }
  for (uint32_t id = (uint32_t)json_object_size(vocab); id < v; id++) {
    char piece[32];
    snprintf(piece, sizeof piece,
             "\xe2\x96\x81"
             "filler%u",
             id);
    json_object_set_new(vocab, piece, json_integer(id));
  }
  char p[300];
  snprintf(p, sizeof p, "%s/tokenizer.json", dir);
  bool ok = json_dump_file(t, p, JSON_COMPACT) == 0;
  if (!ok) snprintf(msg, msg_n, "%s: cannot write", p);
  json_decref(t);
  return ok;
}

static bool synth_write(char *dir, size_t n_dir, char *msg, size_t msg_n) {
  enum { D = 768, L = 8, H = 12, KV = 4, HD = D / H, F = 2048, V = 32000 };
  msg[0] = '\0';
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, n_dir, "%s/lathe-bench-model-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) {
    snprintf(msg, msg_n, "mkdtemp %s: %s", dir, strerror(errno));
    dir[0] = 0;
    return false;
  }
  char p[300];
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *f = fopen(p, "w");
  if (!f) {
    snprintf(msg, msg_n, "%s: %s", p, strerror(errno));
    synth_remove(dir);
    return false;
  }
  fprintf(f,
          "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, "
          "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
          "\"num_key_value_heads\": %d, \"vocab_size\": %d, \"max_position_embeddings\": 2048, "
          "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, \"hidden_act\": \"silu\", "
          "\"torch_dtype\": \"float16\", \"bos_token_id\": 1, \"eos_token_id\": 2}\n",
          D, F, L, H, KV, V);
  if (fclose(f) != 0 || !synth_tokenizer(dir, V, msg, msg_n)) {
    if (!msg[0]) snprintf(msg, msg_n, "%s: %s", p, strerror(errno));
    synth_remove(dir);
    return false;
  }
  static const struct {
    const char *name;
    uint64_t rows, cols; /* cols 0: a vector */
  } per_layer[] = {
      {"input_layernorm", D, 0},        {"self_attn.q_proj", H * HD, D}, {"self_attn.k_proj", KV * HD, D},
      {"self_attn.v_proj", KV * HD, D}, {"self_attn.o_proj", D, H * HD}, {"post_attention_layernorm", D, 0},
      {"mlp.gate_proj", F, D},          {"mlp.up_proj", F, D},           {"mlp.down_proj", D, F},
  };
  enum { N_PER = sizeof per_layer / sizeof per_layer[0], N = 3 + L * N_PER };
  ft_tensor_t t[N];
  char names[N][64];
  uint32_t n = 0;
  uint64_t total = 0;
  synth_add_tensor(t, names, &n, &total, "model.embed_tokens.weight", V, D);
  for (uint32_t l = 0; l < L; l++)
    for (uint32_t i = 0; i < N_PER; i++) {
      char nm[64];
      snprintf(nm, sizeof nm, "model.layers.%u.%s.weight", l, per_layer[i].name);
      synth_add_tensor(t, names, &n, &total, nm, per_layer[i].rows, per_layer[i].cols);
    }
  synth_add_tensor(t, names, &n, &total, "model.norm.weight", D, 0);
  synth_add_tensor(t, names, &n, &total, "lm_head.weight", V, D);
  uint16_t *data = malloc(total * 2), *at = data;
  if (!data) {
    snprintf(msg, msg_n, "out of memory");
    synth_remove(dir);
    return false;
  }
  uint64_t seed = 20240601;
  const float scale = 0.02f * sqrtf(12.0f / 4.0f) / 65536.0f; /* four uniforms on [0, 65536): variance 4/12 */
  for (uint32_t i = 0; i < n; i++) {
    t[i].data = at;
    for (uint64_t j = 0; j < t[i].n_elems; j++) {
      if (t[i].n_dims == 1) {
        *at++ = dtype_float_to_half(1.0f);
        continue;
      }
      uint64_t z = splitmix64(&seed);
      float s = (float)(z & 0xffff) + (float)((z >> 16) & 0xffff) + (float)((z >> 32) & 0xffff) + (float)(z >> 48);
      *at++ = dtype_float_to_half((s - 2.0f * 65535.0f) * scale);
    }
  }
  lt_err_t err = {0};
  static const char *const meta[] = {"format", "pt"};
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  bool ok = st_write(p, t, n, meta, 1, &err) == LT_OK;
  free(data);
  if (!ok) {
    snprintf(msg, msg_n, "st_write: %.400s", err.msg);
    synth_remove(dir);
  }
  return ok;
}

#endif
