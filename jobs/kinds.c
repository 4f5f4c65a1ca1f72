#include "jobs/kind.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* sleep: a failure or crash step past the last step could never happen; say so instead of running for nothing. */
static bool kind_sleep_validate(const msgpack_object *params, proto_err_t *e) {
  int64_t steps = 0, fail = -1, crash = -1;
  mp_as_int(mp_get(params, "steps"), &steps);
  mp_as_int(mp_get(params, "fail"), &fail);
  mp_as_int(mp_get(params, "crash"), &crash);
  if (fail >= steps && fail >= 0)
    return proto_fail(e, P_OUT_OF_RANGE, "params.fail", "params.fail: step %lld is not below steps (%lld)",
                      (long long)fail, (long long)steps);
  if (crash >= steps && crash >= 0)
    return proto_fail(e, P_OUT_OF_RANGE, "params.crash", "params.crash: step %lld is not below steps (%lld)",
                      (long long)crash, (long long)steps);
  return true;
}

/* The steering options shared by generate and steer-eval (STEER_PARAMS): at most one method; the contrastive
 * intervention needs a layer. need_one: steer-eval compares with and without steering, so it needs one. */
static bool steer_params_check(const msgpack_object *params, bool need_one, proto_err_t *e) {
  const msgpack_object *vec = mp_get(params, "steer_vector"), *cp = mp_get(params, "contrast_prompt"),
                       *rp = mp_get(params, "reverse_prompt");
  int64_t layer = -1;
  mp_as_int(mp_get(params, "steer_layer"), &layer);
  int n = (vec && vec->via.str.size > 0) + (cp && cp->via.str.size > 0) + (rp && rp->via.str.size > 0);
  if (n > 1)
    return proto_fail(e, P_BAD_VALUE, "params.steer_vector",
                      "params.steer_vector: give one of steer_vector, contrast_prompt and reverse_prompt, not %d", n);
  if (n == 0 && need_one)
    return proto_fail(e, P_MISSING_PARAM, "params.steer_vector",
                      "params.steer_vector: give a steering method: steer_vector, contrast_prompt or reverse_prompt");
  if (cp && cp->via.str.size > 0 && layer < 0)
    return proto_fail(e, P_MISSING_PARAM, "params.steer_layer",
                      "params.steer_layer: contrast_prompt needs the layer whose heads it steers");
  return true;
}

/* steer-eval: one steering method. */
static bool kind_steer_eval_validate(const msgpack_object *params, proto_err_t *e) {
  return steer_params_check(params, true, e);
}

/* steer-layers: a known correlation; both prompt sets or neither. */
static bool kind_steer_layers_validate(const msgpack_object *params, proto_err_t *e) {
  const msgpack_object *sel = mp_get(params, "select"), *pos = mp_get(params, "positive"),
                       *neg = mp_get(params, "negative");
  if (!sel || sel->type != MSGPACK_OBJECT_STR ||
      !(mp_str_is(sel, "pearson") || mp_str_is(sel, "spearman") || mp_str_is(sel, "kendall")))
    return proto_fail(e, P_BAD_VALUE, "params.select", "params.select: pearson, spearman or kendall");
  if ((pos && pos->via.str.size > 0) != (neg && neg->via.str.size > 0))
    return proto_fail(e, P_MISSING_PARAM, "params.negative",
                      "params.negative: the contrast strength needs both --positive and --negative");
  return true;
}

/* generate: at least one prompt, and no empty prompt when no BOS token is added (nothing to condition on). */
/* speech-train: a known stage and encoder choice. */
static bool kind_speech_train_validate(const msgpack_object *params, proto_err_t *e) {
  const msgpack_object *st = mp_get(params, "stage"), *enc = mp_get(params, "train_encoder");
  if (!st || st->type != MSGPACK_OBJECT_STR || !(mp_str_is(st, "asr") || mp_str_is(st, "self-powered")))
    return proto_fail(e, P_BAD_VALUE, "params.stage", "params.stage: asr or self-powered");
  if (!enc || enc->type != MSGPACK_OBJECT_STR ||
      !(mp_str_is(enc, "yes") || mp_str_is(enc, "no") || mp_str_is(enc, "auto")))
    return proto_fail(e, P_BAD_VALUE, "params.train_encoder", "params.train_encoder: yes, no or auto");
  return true;
}

/* speech-eval: nothing beyond the schema (the instructions may be absent: then WER alone). */
static bool kind_speech_eval_validate(const msgpack_object *params, proto_err_t *e) {
  (void)params, (void)e;
  return true;
}

static bool kind_generate_validate(const msgpack_object *params, proto_err_t *e) {
  const msgpack_object *p = mp_get(params, "prompt"), *bos = mp_get(params, "add_bos");
  const msgpack_object *au = mp_get(params, "audio"), *sp = mp_get(params, "speech");
  bool audio = au && au->type == MSGPACK_OBJECT_STR && au->via.str.size;
  if (audio != (sp && sp->type == MSGPACK_OBJECT_STR && sp->via.str.size > 0))
    return proto_fail(e, P_MISSING_PARAM, audio ? "params.speech" : "params.audio",
                      audio ? "params.speech: --audio needs the speech model (--speech)"
                            : "params.audio: --speech names a speech model for --audio");
  if (!p || p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size == 0)
    return proto_fail(e, P_MISSING_PARAM, "params.prompt", "params.prompt: give at least one prompt");
  bool add_bos = bos && bos->type == MSGPACK_OBJECT_BOOLEAN && bos->via.boolean;
  const msgpack_object *chat = mp_get(params, "chat"), *sys = mp_get(params, "system");
  bool chatting = chat && chat->type == MSGPACK_OBJECT_BOOLEAN && chat->via.boolean;
  for (uint32_t i = 0; i < p->via.array.size && !add_bos && !chatting; i++)
    if (p->via.array.ptr[i].via.str.size == 0)
      return proto_fail(e, P_BAD_VALUE, "params.prompt", "params.prompt: prompt %u is empty and add_bos is off", i);
  if (!chatting && sys && sys->type == MSGPACK_OBJECT_STR && sys->via.str.size)
    return proto_fail(e, P_BAD_VALUE, "params.system", "params.system: a system message needs params.chat");
  static const char *const prefixes[] = {"contrast_prompt", "reverse_prompt", "positive_prompt"};
  for (size_t i = 0; chatting && i < sizeof prefixes / sizeof prefixes[0]; i++) {
    const msgpack_object *v = mp_get(params, prefixes[i]);
    if (v && v->type == MSGPACK_OBJECT_STR && v->via.str.size) {
      char field[48];
      snprintf(field, sizeof field, "params.%s", prefixes[i]);
      return proto_fail(e, P_BAD_VALUE, field,
                        "%s: not with params.chat (it is put before the raw prompt, which a chat template wraps)",
                        field);
    }
  }
  return steer_params_check(params, false, e);
}

/* export: the output is named as a GGUF file, so a folder is never mistaken for one. */
static bool kind_export_validate(const msgpack_object *params, proto_err_t *e) {
  char out[4200] = "";
  const msgpack_object *o = mp_get(params, "output");
  size_t n = o && mp_str_copy(o, out, sizeof out) ? strlen(out) : 0;
  if (n < 6 || strcmp(out + n - 5, ".gguf"))
    return proto_fail(e, P_BAD_VALUE, "params.output", "params.output: a file name ending in .gguf, not '%s'", out);
  return true;
}

/* flatten-graph: the input format is one of three words. */
static bool kind_flatten_graph_validate(const msgpack_object *params, proto_err_t *e) {
  const msgpack_object *f = mp_get(params, "format");
  if (!mp_str_is(f, "auto") && !mp_str_is(f, "jsonl") && !mp_str_is(f, "csv"))
    return proto_fail(e, P_BAD_VALUE, "params.format", "params.format: expected auto, jsonl or csv");
  return true;
}

/* selfgen (and feedback): the chat template is the model's or the plain one. */
static bool kind_selfgen_validate(const msgpack_object *params, proto_err_t *e) {
  const msgpack_object *t = mp_get(params, "template");
  if (!mp_str_is(t, "model") && !mp_str_is(t, "plain"))
    return proto_fail(e, P_BAD_VALUE, "params.template", "params.template: expected model or plain");
  return true;
}

/* feedback: the template as for selfgen, and the decision rule is one of two words. */
static bool kind_feedback_validate(const msgpack_object *params, proto_err_t *e) {
  const msgpack_object *d = mp_get(params, "decide");
  if (!mp_str_is(d, "text") && !mp_str_is(d, "loglik"))
    return proto_fail(e, P_BAD_VALUE, "params.decide", "params.decide: expected text or loglik");
  return kind_selfgen_validate(params, e);
}

/* compress: known, distinct methods; bits 8 or 4; group a multiple of 8; an N:M pattern with 0 < N < M. */
static bool kind_compress_validate(const msgpack_object *params, proto_err_t *e) {
  static const char *const known[] = {"expert-drop", "layer-drop", "block-drop", "prune", "quantize"};
  const msgpack_object *m = mp_get(params, "method");
  for (uint32_t i = 0; m && m->type == MSGPACK_OBJECT_ARRAY && i < m->via.array.size; i++) {
    const msgpack_object *s = &m->via.array.ptr[i];
    bool ok = false;
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) ok |= mp_str_is(s, known[k]);
    if (!ok)
      return proto_fail(e, P_BAD_VALUE, "params.method",
                        "params.method: entry %u is none of expert-drop, layer-drop, block-drop, prune, quantize", i);
    for (uint32_t j = 0; j < i; j++)
      if (s->via.str.size == m->via.array.ptr[j].via.str.size &&
          !memcmp(s->via.str.ptr, m->via.array.ptr[j].via.str.ptr, s->via.str.size))
        return proto_fail(e, P_BAD_VALUE, "params.method", "params.method: entry %u repeats entry %u", i, j);
  }
  int64_t bits = 0, group = 0;
  mp_as_int(mp_get(params, "bits"), &bits);
  mp_as_int(mp_get(params, "group"), &group);
  if (bits != 8 && bits != 4)
    return proto_fail(e, P_BAD_VALUE, "params.bits", "params.bits: 8 or 4, not %lld", (long long)bits);
  if (group % 8)
    return proto_fail(e, P_BAD_VALUE, "params.group", "params.group: %lld is not a multiple of 8", (long long)group);
  char fmt[16] = "hf";
  const msgpack_object *fo = mp_get(params, "format");
  if (fo && !mp_str_copy(fo, fmt, sizeof fmt)) fmt[0] = '?';
  if (strcmp(fmt, "hf") && strcmp(fmt, "gguf"))
    return proto_fail(e, P_BAD_VALUE, "params.format", "params.format: hf or gguf, not '%s'", fmt);
  bool quantize = false;
  for (uint32_t i = 0; m && m->type == MSGPACK_OBJECT_ARRAY && i < m->via.array.size; i++)
    quantize |= mp_str_is(&m->via.array.ptr[i], "quantize");
  if (!strcmp(fmt, "gguf") && quantize && group != 32)
    return proto_fail(e, P_BAD_VALUE, "params.group",
                      "params.group: --format gguf writes the quantised weights as Q8_0 / Q4_0 blocks of 32 columns: "
                      "--group 32, not %lld",
                      (long long)group);
  char pat[32] = "";
  const msgpack_object *p = mp_get(params, "pattern");
  unsigned n = 0, mm = 0;
  char tail;
  if (p && mp_str_copy(p, pat, sizeof pat) && pat[0] &&
      (sscanf(pat, "%u:%u%c", &n, &mm, &tail) != 2 || n == 0 || n >= mm || mm > 1024))
    return proto_fail(e, P_BAD_VALUE, "params.pattern", "params.pattern: '%s' is not N:M with 0 < N < M <= 1024", pat);
  return true;
}

/* The dtype of written weights: f32, bf16, f16 or base (the base model's). */
static bool dtype_ok(const msgpack_object *params, proto_err_t *e) {
  const msgpack_object *dt = mp_get(params, "dtype");
  if (!mp_str_is(dt, "base") && !mp_str_is(dt, "f32") && !mp_str_is(dt, "bf16") && !mp_str_is(dt, "f16"))
    return proto_fail(e, P_BAD_VALUE, "params.dtype", "params.dtype: f32, bf16, f16 or base");
  return true;
}

/* tune_zo: a known method; drop_layers only means something to LeZO. */
static bool kind_tune_zo_validate(const msgpack_object *params, proto_err_t *e) {
  const msgpack_object *m = mp_get(params, "method");
  int64_t drop = -1;
  mp_as_int(mp_get(params, "drop_layers"), &drop);
  bool lezo = mp_str_is(m, "lezo");
  if (!lezo && !mp_str_is(m, "mezo")) return proto_fail(e, P_BAD_VALUE, "params.method", "params.method: mezo or lezo");
  if (!lezo && drop > 0)
    return proto_fail(e, P_BAD_VALUE, "params.drop_layers", "params.drop_layers: MeZO tunes every block (use lezo)");
  int64_t batch = 1, micro = 0, devices = 1;
  mp_as_int(mp_get(params, "batch"), &batch);
  mp_as_int(mp_get(params, "micro_batch"), &micro);
  mp_as_int(mp_get(params, "devices"), &devices);
  if (micro > batch)
    return proto_fail(e, P_BAD_VALUE, "params.micro_batch", "params.micro_batch: %lld is more than the batch (%lld)",
                      (long long)micro, (long long)batch);
  char pin[72] = "";
  mp_str_copy(mp_get(params, "device"), pin, sizeof pin);
  if (devices > 1 && pin[0])
    return proto_fail(e, P_BAD_VALUE, "params.device",
                      "params.device: a data-parallel run (--devices %lld) takes the devices of idle workers; it "
                      "cannot be pinned to one",
                      (long long)devices);
  if (devices > batch)
    return proto_fail(e, P_BAD_VALUE, "params.devices",
                      "params.devices: %lld devices for a batch of %lld would leave some without an example",
                      (long long)devices, (long long)batch);
  return dtype_ok(params, e);
}

static bool kind_first_order_validate(const msgpack_object *params, proto_err_t *e) {
  const msgpack_object *tr = mp_get(params, "train");
  bool full = mp_str_is(tr, "full"), lora = mp_str_is(tr, "lora"), adapter = mp_str_is(tr, "adapter");
  if (!full && !lora && !adapter)
    return proto_fail(e, P_BAD_VALUE, "params.train", "params.train: full, lora or adapter");
  int64_t layer = -1;
  mp_as_int(mp_get(params, "layer"), &layer);
  if (adapter && layer < 0)
    return proto_fail(e, P_BAD_VALUE, "params.layer", "params.layer: --train adapter needs --layer M (the block)");
  if (!adapter && layer >= 0)
    return proto_fail(e, P_BAD_VALUE, "params.layer", "params.layer: only --train adapter takes a block");
  const msgpack_object *sc = mp_get(params, "schedule");
  if (!mp_str_is(sc, "cosine") && !mp_str_is(sc, "linear") && !mp_str_is(sc, "constant"))
    return proto_fail(e, P_BAD_VALUE, "params.schedule", "params.schedule: cosine, linear or constant");
  if (!dtype_ok(params, e)) return false;
  bool merge = false;
  const msgpack_object *mg = mp_get(params, "merge");
  if (mg && mg->type == MSGPACK_OBJECT_BOOLEAN) merge = mg->via.boolean;
  if (merge && !lora) return proto_fail(e, P_BAD_VALUE, "params.merge", "params.merge: only LoRA adapters are merged");
  /* Every LoRA target must be known: a typo would silently train nothing there. */
  const msgpack_object *t = mp_get(params, "lora_targets");
  if (!t || t->type != MSGPACK_OBJECT_STR)
    return proto_fail(e, P_BAD_VALUE, "params.lora_targets", "params.lora_targets: a list");
  const char *s = t->via.str.ptr, *end = s + t->via.str.size;
  while (s <= end) {
    const char *c = memchr(s, ',', (size_t)(end - s));
    size_t n = (size_t)((c ? c : end) - s);
    static const char *const known[] = {"q", "k", "v", "o", "gate", "up", "down"};
    bool ok = false;
    for (size_t i = 0; i < 7 && !ok; i++) ok = strlen(known[i]) == n && memcmp(known[i], s, n) == 0;
    if (!ok)
      return proto_fail(e, P_BAD_VALUE, "params.lora_targets",
                        "params.lora_targets: unknown target '%.*s' (known: q,k,v,o,gate,up,down)", (int)n, s);
    if (!c) break;
    s = c + 1;
  }
  return true;
}

/* distill: tune's checks on what is trained, then the distillation settings. */
/* tune: the first-order settings, and the objective's. */
static bool kind_tune_validate(const msgpack_object *params, proto_err_t *e) {
  if (!kind_first_order_validate(params, e)) return false;
  const msgpack_object *ob = mp_get(params, "objective"), *dw = mp_get(params, "dpo_weight"),
                       *inc = mp_get(params, "include_inconsistent");
  bool dpo = mp_str_is(ob, "dpo");
  if (!dpo && !mp_str_is(ob, "ce"))
    return proto_fail(e, P_BAD_VALUE, "params.objective", "params.objective: ce or dpo");
  if (!mp_str_is(dw, "none") && !mp_str_is(dw, "strength"))
    return proto_fail(e, P_BAD_VALUE, "params.dpo_weight", "params.dpo_weight: none or strength");
  if (!dpo && !mp_str_is(dw, "none"))
    return proto_fail(e, P_BAD_VALUE, "params.dpo_weight", "params.dpo_weight: only --objective dpo weighs pairs");
  if (!dpo && inc && inc->type == MSGPACK_OBJECT_BOOLEAN && inc->via.boolean)
    return proto_fail(e, P_BAD_VALUE, "params.include_inconsistent",
                      "params.include_inconsistent: only --objective dpo reads preference pairs");
  return true;
}

static bool kind_distill_validate(const msgpack_object *params, proto_err_t *e) {
  if (!kind_first_order_validate(params, e)) return false;
  const msgpack_object *m = mp_get(params, "method"), *kl = mp_get(params, "kid_loss");
  if (!mp_str_is(m, "kd") && !mp_str_is(m, "atkd") && !mp_str_is(m, "kid"))
    return proto_fail(e, P_BAD_VALUE, "params.method", "params.method: kd, atkd or kid");
  if (!mp_str_is(kl, "kd") && !mp_str_is(kl, "atkd"))
    return proto_fail(e, P_BAD_VALUE, "params.kid_loss", "params.kid_loss: kd or atkd");
  double r = 0;
  const msgpack_object *mr = mp_get(params, "mask_ratio");
  if (mr && (mr->type == MSGPACK_OBJECT_FLOAT32 || mr->type == MSGPACK_OBJECT_FLOAT64)) r = mr->via.f64;
  if (!(r > 0 && r < 1))
    return proto_fail(e, P_OUT_OF_RANGE, "params.mask_ratio",
                      "params.mask_ratio: %g is outside (0, 1): KID masks some of the targets, not none or all", r);
  return true;
}

#define P(key, type, req, def, lo, hi, help) {#key, type, req, def, lo, hi, help},
/* Every kind's last parameters. */
#define COMMON_PARAMS                                                                                                  \
  P(device, KT_STR, false, "", 0, 64,                                                                                  \
    "the GPU the job runs on: an index or a UUID as lathe-devices lists them, or any (the CLI fills it from "          \
    "LATHE_DEVICE; empty or any: the first free worker)")                                                              \
  P(memory, KT_INT, false, "0", 0, 1073741824,                                                                         \
    "MiB of device memory the job needs: it runs only on a worker whose device has that much (0: any)")                \
  P(executor, KT_STR, false, "", 0, 8,                                                                                 \
    "where the job runs: local (lathed's own workers) or slurm (a Slurm batch job; docs/cluster.md); empty: the "      \
    "daemon's --executor")                                                                                             \
  P(partition, KT_STR, false, "", 0, 128, "Slurm partition (sbatch --partition; --executor slurm only)")               \
  P(gres, KT_STR, false, "", 0, 256, "Slurm generic resources, e.g. gpu:1 (sbatch --gres; --executor slurm only)")     \
  P(time, KT_STR, false, "", 0, 32, "Slurm time limit, e.g. 2:00:00 (sbatch --time; --executor slurm only)")           \
  P(account, KT_STR, false, "", 0, 128, "Slurm account to charge (sbatch --account; --executor slurm only)")
#define KIND(name, policy, validate, summary, params)                                                                  \
  static const kind_param_t name##_params[] = {params COMMON_PARAMS};
#include "jobs/kinds.def"
#undef KIND
#undef P

/* A kind's name is its identifier in kinds.def with each '_' written '-' (steer_layers: `lathe run steer-layers`),
 * filled in before main() runs. */
enum {
#define P(...)
#define KIND(name, policy, validate, summary, params) KIND_ID_##name,
#include "jobs/kinds.def"
#undef KIND
#undef P
  KIND_N
};
#define KIND_NAME_MAX 32
static char kind_names[KIND_N][KIND_NAME_MAX];

__attribute__((constructor)) static void kind_names_init(void) {
  static const char *const ids[KIND_N] = {
#define P(...)
#define KIND(name, policy, validate, summary, params) #name,
#include "jobs/kinds.def"
#undef KIND
#undef P
  };
  for (size_t i = 0; i < KIND_N; i++)
    for (size_t c = 0; ids[i][c] && c + 1 < KIND_NAME_MAX; c++) kind_names[i][c] = ids[i][c] == '_' ? '-' : ids[i][c];
}

static const kind_t kinds[] = {
#define P(...)
#define KIND(name, policy, validate, summary, params)                                                                  \
  {kind_names[KIND_ID_##name],                                                                                         \
   policy,                                                                                                             \
   validate,                                                                                                           \
   summary,                                                                                                            \
   name##_params,                                                                                                      \
   sizeof name##_params / sizeof name##_params[0]},
#include "jobs/kinds.def"
#undef KIND
#undef P
};

size_t kind_count(void) { return sizeof kinds / sizeof kinds[0]; }

const kind_t *kind_at(size_t i) { return i < kind_count() ? &kinds[i] : NULL; }

/* A kind's name in the table is a C identifier (flatten_graph); users write it with dashes (flatten-graph), as
 * they do parameter names, so '-' and '_' match each other. */
const kind_t *kind_find(const char *name, size_t n) {
  for (size_t i = 0; i < kind_count(); i++) {
    const char *k = kinds[i].name;
    size_t j = 0;
    while (j < n && k[j] && (k[j] == name[j] || ((k[j] == '_' || k[j] == '-') && (name[j] == '-' || name[j] == '_'))))
      j++;
    if (j == n && !k[j]) return &kinds[i];
  }
  return NULL;
}

const kind_param_t *kind_param_find(const kind_t *k, const char *key) {
  for (size_t i = 0; i < k->n_params; i++)
    if (strcmp(k->params[i].key, key) == 0) return &k->params[i];
  return NULL;
}

const char *kind_policy_str(kind_policy_t p) {
  switch (p) {
  case KIND_RESTART: return "restart";
  case KIND_RESUME: return "resume";
  case KIND_FAIL: return "fail";
  }
  return "fail";
}

const char *kind_type_str(kind_type_t t) {
  switch (t) {
  case KT_INT: return "int";
  case KT_FLOAT: return "float";
  case KT_BOOL: return "bool";
  case KT_STR: return "string";
  case KT_PATH: return "path";
  case KT_STRS: return "strings";
  }
  return "?";
}

/* Checks one typed value against its parameter and appends it to w. The single check both the wire and the
 * command line go through. */
/* Checks one string value of parameter p (NUL bytes, length bounds, absolute paths); name is "params.<key>". */
static bool check_str(const kind_param_t *p, const char *name, const msgpack_object *o, proto_err_t *e) {
  bool bounded = p->lo != 0 || p->hi != 0;
  if (o->type != MSGPACK_OBJECT_STR) return proto_fail(e, P_BAD_TYPE, name, "%s: expected a string", name);
  size_t n = o->via.str.size;
  if (n && memchr(o->via.str.ptr, 0, n)) return proto_fail(e, P_BAD_VALUE, name, "%s: holds a NUL byte", name);
  if (bounded && ((double)n < p->lo || (double)n > p->hi))
    return proto_fail(e, P_OUT_OF_RANGE, name, "%s: length %zu is outside [%.0f, %.0f]", name, n, p->lo, p->hi);
  if (n > PROTO_MAX_STR) return proto_fail(e, P_OUT_OF_RANGE, name, "%s: longer than %d bytes", name, PROTO_MAX_STR);
  /* An empty path passes only where the bounds allow it (an optional file: lo = 0). */
  if (p->type == KT_PATH && n > 0 && o->via.str.ptr[0] != '/')
    return proto_fail(e, P_BAD_VALUE, name, "%s: a path must be absolute", name);
  return true;
}

static bool check_value(const kind_param_t *p, const msgpack_object *o, mpw_t *w, proto_err_t *e) {
  char name[96];
  snprintf(name, sizeof name, "params.%s", p->key);
  bool bounded = p->lo != 0 || p->hi != 0;
  switch (p->type) {
  case KT_INT: {
    int64_t v;
    if (!mp_as_int(o, &v)) return proto_fail(e, P_BAD_TYPE, name, "%s: expected an integer", name);
    if (bounded && ((double)v < p->lo || (double)v > p->hi))
      return proto_fail(e, P_OUT_OF_RANGE, name, "%s: %lld is outside [%.0f, %.0f]", name, (long long)v, p->lo, p->hi);
    mpw_int(w, v);
    return true;
  }
  case KT_FLOAT: {
    int64_t i;
    double v;
    if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
      v = o->via.f64;
    else if (mp_as_int(o, &i))
      v = (double)i;
    else
      return proto_fail(e, P_BAD_TYPE, name, "%s: expected a number", name);
    if (!isfinite(v)) return proto_fail(e, P_BAD_VALUE, name, "%s: must be finite", name);
    if (bounded && (v < p->lo || v > p->hi))
      return proto_fail(e, P_OUT_OF_RANGE, name, "%s: %g is outside [%g, %g]", name, v, p->lo, p->hi);
    mpw_double(w, v);
    return true;
  }
  case KT_BOOL:
    if (o->type != MSGPACK_OBJECT_BOOLEAN) return proto_fail(e, P_BAD_TYPE, name, "%s: expected a boolean", name);
    mpw_bool(w, o->via.boolean);
    return true;
  case KT_STR:
  case KT_PATH:
    if (!check_str(p, name, o, e)) return false;
    mpw_strn(w, o->via.str.ptr, o->via.str.size);
    return true;
  case KT_STRS: {
    if (o->type != MSGPACK_OBJECT_ARRAY) return proto_fail(e, P_BAD_TYPE, name, "%s: expected a list of strings", name);
    if (o->via.array.size > KIND_MAX_LIST)
      return proto_fail(e, P_OUT_OF_RANGE, name, "%s: more than %d entries", name, KIND_MAX_LIST);
    for (uint32_t i = 0; i < o->via.array.size; i++)
      if (!check_str(p, name, &o->via.array.ptr[i], e)) return false;
    mpw_obj(w, o);
    return true;
  }
  }
  return proto_fail(e, P_INTERNAL, name, "%s: unknown parameter type", name);
}

bool kind_parse_text(const kind_param_t *p, const char *text, mpw_t *w, proto_err_t *e) {
  char name[96];
  snprintf(name, sizeof name, "params.%s", p->key);
  mpw_t t;
  mpw_init(&t);
  char *end = NULL;
  errno = 0;
  switch (p->type) {
  case KT_INT: {
    long long v = strtoll(text, &end, 10);
    if (!*text || *end || errno) {
      mpw_free(&t);
      return proto_fail(e, P_BAD_TYPE, name, "%s: '%s' is not an integer", name, text);
    }
    mpw_int(&t, v);
    break;
  }
  case KT_FLOAT: {
    double v = strtod(text, &end);
    if (!*text || *end || errno) {
      mpw_free(&t);
      return proto_fail(e, P_BAD_TYPE, name, "%s: '%s' is not a number", name, text);
    }
    mpw_double(&t, v);
    break;
  }
  case KT_BOOL:
    if (!strcmp(text, "true") || !strcmp(text, "1") || !strcmp(text, "yes"))
      mpw_bool(&t, true);
    else if (!strcmp(text, "false") || !strcmp(text, "0") || !strcmp(text, "no"))
      mpw_bool(&t, false);
    else {
      mpw_free(&t);
      return proto_fail(e, P_BAD_TYPE, name, "%s: '%s' is not true or false", name, text);
    }
    break;
  case KT_STR: mpw_str(&t, text); break;
  case KT_STRS: /* one command-line value is a list of one; the empty default is the empty list */
    mpw_array(&t);
    if (*text) mpw_str(&t, text);
    mpw_end(&t);
    break;
  case KT_PATH: {
    char abs[2 * PATH_MAX + 2], cwd[PATH_MAX];
    if (text[0] != '/' && text[0] && getcwd(cwd, sizeof cwd))
      snprintf(abs, sizeof abs, "%s/%s", cwd, text);
    else
      snprintf(abs, sizeof abs, "%s", text);
    mpw_str(&t, abs); /* check_value bounds the length */
    break;
  }
  }
  proto_err_t pe;
  mp_doc_t *d = mp_doc_parse(t.sb.data, t.sb.size, &pe);
  bool ok = d && check_value(p, mp_doc_root(d), w, e);
  if (!d) proto_fail(e, pe.code, name, "%s: %s", name, pe.msg);
  mp_doc_destroy(&d);
  mpw_free(&t);
  return ok;
}

/* The common `device` parameter: empty, a device index, or a UUID (8-4-4-4-12 hex digits) as lathe-devices shows. */
static bool device_ok(const msgpack_object *params, proto_err_t *e) {
  char dev[72] = "";
  mp_str_copy(mp_get(params, "device"), dev, sizeof dev);
  size_t n = strlen(dev), digits = strspn(dev, "0123456789");
  bool uuid = n == 36;
  for (size_t i = 0; uuid && i < n; i++)
    uuid = (i == 8 || i == 13 || i == 18 || i == 23) ? dev[i] == '-' : isxdigit((unsigned char)dev[i]) != 0;
  if (n == 0 || (digits == n && n <= 4) || uuid) return true;
  return proto_fail(e, P_BAD_VALUE, "params.device",
                    "params.device: '%s' is neither a device index nor a UUID (lathe-devices lists them)", dev);
}

/* The common executor parameters: executor empty, local or slurm; the Slurm options in the characters sbatch takes
 * for them (they reach sbatch as arguments, never through a shell). */
static bool executor_ok(const msgpack_object *params, proto_err_t *e) {
  char v[300];
  mp_str_copy(mp_get(params, "executor"), v, sizeof v);
  if (v[0] && strcmp(v, "local") != 0 && strcmp(v, "slurm") != 0)
    return proto_fail(e, P_BAD_VALUE, "params.executor", "params.executor: '%s' is neither local nor slurm", v);
  static const struct {
    const char *key, *chars, *example;
  } opts[] = {
      {"partition", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.,-", "gpu or debug,gpu"},
      {"gres", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.,:-", "gpu:1 or gpu:a100:2"},
      {"time", "0123456789:-", "30, 2:00:00 or 1-12"},
      {"account", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", "mylab"},
  };
  for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
    mp_str_copy(mp_get(params, opts[i].key), v, sizeof v);
    if (strspn(v, opts[i].chars) != strlen(v)) {
      char name[32];
      snprintf(name, sizeof name, "params.%s", opts[i].key);
      return proto_fail(e, P_BAD_VALUE, name, "%s: '%s' is not a Slurm %s (such as %s)", name, v, opts[i].key,
                        opts[i].example);
    }
  }
  return true;
}

bool kind_params_normalise(const kind_t *k, const msgpack_object *params, mpw_t *w, proto_err_t *e) {
  if (params && params->type != MSGPACK_OBJECT_MAP)
    return proto_fail(e, P_BAD_TYPE, "params", "params: expected a map");
  uint32_t n = params ? params->via.map.size : 0;
  for (uint32_t i = 0; i < n; i++) {
    const msgpack_object *key = &params->via.map.ptr[i].key;
    char kname[64];
    if (!mp_str_copy(key, kname, sizeof kname))
      return proto_fail(e, P_BAD_TYPE, "params", "params: keys must be short strings");
    char fname[80];
    snprintf(fname, sizeof fname, "params.%s", kname);
    if (!kind_param_find(k, kname))
      return proto_fail(e, P_UNKNOWN_PARAM, fname, "%s: kind %s has no such parameter", fname, k->name);
    for (uint32_t j = 0; j < i; j++)
      if (mp_str_is(&params->via.map.ptr[j].key, kname))
        return proto_fail(e, P_BAD_VALUE, fname, "%s: given twice", fname);
  }
  mpw_t t;
  mpw_init(&t);
  mpw_map(&t);
  bool ok = true;
  for (size_t i = 0; ok && i < k->n_params; i++) {
    const kind_param_t *p = &k->params[i];
    const msgpack_object *v = params ? mp_get(params, p->key) : NULL;
    mpw_str(&t, p->key);
    if (v && !strcmp(p->key, "device") && mp_str_is(v, "any"))
      ok = kind_parse_text(p, "", &t, e); /* --device any: no pin, stored as the default */
    else if (v)
      ok = check_value(p, v, &t, e);
    else if (p->required) {
      char name[96];
      snprintf(name, sizeof name, "params.%s", p->key);
      ok = proto_fail(e, P_MISSING_PARAM, name, "%s: kind %s requires it", name, k->name);
    } else
      ok = kind_parse_text(p, p->def, &t, e);
  }
  if (!ok) { /* the map was left with a key and no value: discard it unfinished */
    mpw_free(&t);
    return false;
  }
  mpw_end(&t);
  mp_doc_t *d = mp_doc_parse(t.sb.data, t.sb.size, e);
  ok = d && device_ok(mp_doc_root(d), e) && executor_ok(mp_doc_root(d), e) &&
       (!k->validate || k->validate(mp_doc_root(d), e));
  mp_doc_destroy(&d);
  if (ok) mpw_raw(w, t.sb.data, t.sb.size);
  mpw_free(&t);
  return ok;
}

const kind_files_t *kind_files(const kind_t *k) {
  static const struct {
    const char *kind;
    kind_files_t f;
  } table[] = {
      {"distill", {{"teacher", "student"}}},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (!strcmp(table[i].kind, k->name)) return &table[i].f;
  return NULL;
}
