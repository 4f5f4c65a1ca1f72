/* The speech side of a speech-text model: a Whisper-style audio encoder and a connector into an LLM's embedding
 * space, on the Vulkan engine, forward and backward (tools/speech_ref.py is its PyTorch reference):
 *   features [T, n_mels] -> conv1 (k 3, pad 1) + GELU -> conv2 (k 3, stride 2, pad 1) + GELU -> + sinusoids
 *   -> n_layers pre-norm blocks (LayerNorm, bidirectional attention with no k bias, LayerNorm, GELU MLP)
 *   -> LayerNorm -> encoder states [T2, d], T2 = (T - 1) / 2 + 1
 *   connector "stack-mlp": `stack` consecutive states concatenated (the last group zero-padded), then
 *   Linear + GELU + Linear -> [ceil(T2 / stack), llm_hidden], rows the LLM reads as embeddings.
 * GELU is the exact (erf) one, as Whisper's. One utterance per pass; gradients accumulate over passes.
 * Weights live in a folder: config.json (LatheSpeechModel: the encoder's Whisper keys, the connector and the
 * LLM it pairs with) and model.safetensors with Hugging Face Whisper's encoder names (encoder.conv1.weight,
 * encoder.layers.0.self_attn.q_proj.weight, ...) plus connector.proj1 / connector.proj2. A Hugging Face Whisper
 * checkpoint folder (WhisperForConditionalGeneration) loads too: its encoder, with a connector made fresh. */
#ifndef LATHE_SPEECH_H
#define LATHE_SPEECH_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/gpu/gpu.h"
#include "engine/ops/ops.h"

/* Limits on what a config may ask for. */
#define SPEECH_MAX_LAYERS 64u
#define SPEECH_MAX_DIM 8192u
#define SPEECH_MAX_POSITIONS 16384u

typedef struct speech_config {
  uint32_t n_mels, d_model, n_layers, n_heads, ffn, max_positions;
  float eps;
  uint32_t stack, hidden, llm_hidden; /* the connector; llm_hidden 0: none (the encoder alone) */
  char llm[512];                      /* the LLM the connector feeds (a path or a name; may be empty) */
  char source[32];                    /* "lathe" or "whisper" (the layout the weights came in) */
} speech_config_t;

/* One tensor of the model: its values, gradient and optimiser moments on the device (grad, m and v NULL until
 * training asks for them). All f32. */
typedef struct speech_param {
  char name[96];
  uint32_t n_dims;
  uint32_t shape[3];
  uint64_t n;
  bool trainable; /* false for the fixed positions, and for groups frozen with speech_set_trainable() */
  bool encoder;   /* part of the encoder (else the connector) */
  gpu_buf_t *buf, *grad, *m, *v;
} speech_param_t;

typedef struct speech speech_t;

/* Checks a config (sizes within the limits, heads dividing d_model, an even d_model for the sinusoids).
 * LT_E_INVALID / LT_E_LIMIT with err naming the key. */
lt_status_t speech_config_check(const speech_config_t *c, lt_err_t *err);

/* Makes a model with fresh weights on g: Linear and conv weights uniform in +-1/sqrt(fan_in) (PyTorch's default),
 * LayerNorms 1 and 0, Whisper's sinusoidal positions. Caller owns (speech_destroy). NULL with err. */
speech_t *speech_new(gpu_t *g, const speech_config_t *c, uint64_t seed, lt_err_t *err);

/* Loads a speech model folder (config.json + weights), Lathe's own or a Hugging Face Whisper checkpoint (its
 * encoder; then `conn`, when not NULL, gives the connector to make fresh with `seed`). Every tensor is checked
 * for presence and shape. Caller owns. NULL with err naming the file or tensor. */
speech_t *speech_load(gpu_t *g, const char *dir, const speech_config_t *conn, uint64_t seed, lt_err_t *err);

/* Writes config.json and model.safetensors into dir (made if missing). */
lt_status_t speech_save(const speech_t *s, const char *dir, lt_err_t *err);

/* Frees the model and its buffers; NULL-safe. */
void speech_destroy(speech_t **s);

/* The config and the tensors; owned by s. */
const speech_config_t *speech_config(const speech_t *s);
uint32_t speech_param_count(const speech_t *s);
speech_param_t *speech_param_at(speech_t *s, uint32_t i);
/* The tensor called name, or NULL. */
speech_param_t *speech_param_find(speech_t *s, const char *name);

/* Marks the encoder's and the connector's tensors trainable or frozen (the positions stay fixed). */
void speech_set_trainable(speech_t *s, bool encoder, bool connector);

/* Rows after conv2 and after the connector for T input frames. */
uint32_t speech_enc_rows(uint32_t T);
uint32_t speech_out_rows(const speech_t *s, uint32_t T);

/* Runs one utterance: feats [T, n_mels] (host floats). With `train`, keeps what speech_backward() needs.
 * Afterwards speech_output() holds the connector's rows (or the encoder's without a connector) and
 * speech_encoder_output() the encoder's, both device buffers owned by s, valid until the next forward. */
lt_status_t speech_forward(speech_t *s, const float *feats, uint32_t T, bool train, lt_err_t *err);
gpu_buf_t *speech_output(const speech_t *s, uint32_t *rows, uint32_t *cols);
gpu_buf_t *speech_encoder_output(const speech_t *s, uint32_t *rows, uint32_t *cols);

/* Adds the gradients of the trainable tensors for dLoss/d(output) `dout` (device, the shape of speech_output())
 * after a training forward. Allocates the gradient buffers (zeroed) on first use. */
lt_status_t speech_backward(speech_t *s, gpu_buf_t *dout, lt_err_t *err);

/* Zeroes every gradient. */
lt_status_t speech_zero_grad(speech_t *s, lt_err_t *err);

/* The sum of squares of every trainable gradient (for clipping and logging), read back to the host. */
lt_status_t speech_grad_sumsq(speech_t *s, double *out, lt_err_t *err);

/* One AdamW step on every trainable tensor (moments made on first use); grad_scale multiplies the gradients
 * first (1 / batch size, clipping). step counts from 1. Weight decay applies to matrices only. */
lt_status_t speech_adamw(speech_t *s, float lr, float weight_decay, float grad_scale, uint32_t step, lt_err_t *err);

#endif
