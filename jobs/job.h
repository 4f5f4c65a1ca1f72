/* What a runner sees of its job: parameters, its artifact folder, stop requests, and calls that emit events
 * (progress, log lines, metrics, artifacts) and build the result. A runner uses only this header and the engine's
 * public API. The calls are implemented once (jobs/job.c) over a small host interface (job_host_t below) that
 * decides where events go, how stop requests arrive and which device and models the job gets: lathe-worker is one
 * host (daemon/worker.c), jobs/job_local.h an in-process one for tests and tools. All strings passed in are
 * copied. */
#ifndef LATHE_JOB_H
#define LATHE_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include "common/proto.h"
#include "engine/gpu/gpu.h"
#include "engine/model/model.h"
#include "engine/text/tokenizer.h"

typedef struct job_ctx job_ctx_t;

/* What job_should_stop() asks of a runner. */
typedef enum job_stop {
  JOB_GO = 0,          /* keep going */
  JOB_STOP_CANCEL,     /* stop now, return JOB_CANCELLED */
  JOB_STOP_CHECKPOINT, /* the daemon is shutting down: save a checkpoint if the kind can, return JOB_STOPPED */
} job_stop_t;

/* How a runner ended. */
typedef enum job_outcome { JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED, JOB_STOPPED } job_outcome_t;

/* A runner: runs the job to an outcome. On JOB_FAILED, err->msg is the reason shown to the user. */
typedef job_outcome_t (*kind_run_fn)(job_ctx_t *ctx, lt_err_t *err);

/* The job's id, and how many times it has been started (1 on the first run). */
int64_t job_id(const job_ctx_t *ctx);
uint32_t job_attempt(const job_ctx_t *ctx);

/* The job's artifact folder (exists; outputs, checkpoints and logs go there); owned by ctx. */
const char *job_dir(const job_ctx_t *ctx);

/* The devices the daemon lent the job beside its own (a data-parallel job's, `devices` > 1): how many, and the
 * i-th one's selector (an index or UUID for gpu_opts_t.device) into buf. 0 when the host lent none (an in-process
 * host: the job then opens its replicas on its own device). */
uint32_t job_lent_devices(const job_ctx_t *ctx);
const char *job_lent_device(const job_ctx_t *ctx, uint32_t i, char *buf, size_t n);

/* Parameter values (the daemon has validated them and filled in defaults, so the key always exists). */
int64_t job_param_int(const job_ctx_t *ctx, const char *key);
double job_param_float(const job_ctx_t *ctx, const char *key);
bool job_param_bool(const job_ctx_t *ctx, const char *key);
/* String and path parameters; owned by ctx. */
const char *job_param_str(job_ctx_t *ctx, const char *key);

/* Checks (without blocking) whether the daemon asked the job to stop. Call it between steps: a cancelled job
 * must return within a second or two or its worker is killed. */
job_stop_t job_should_stop(job_ctx_t *ctx);

/* Emits a progress event: step of total (total 0 when unknown), in `unit` ("steps", "tokens"...). */
void job_progress(job_ctx_t *ctx, uint64_t step, uint64_t total, const char *unit);

/* Emits a log line. */
void job_log(job_ctx_t *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Emits a metric value (a loss, a rate) at a step. */
void job_metric(job_ctx_t *ctx, const char *name, double value, uint64_t step);
/* Emits a `text` event: the next piece of item's generated text as it is produced (prompt: its prompt, given with
 * the item's first piece, else NULL); done marks the item's last piece. */
void job_text(job_ctx_t *ctx, uint32_t item, const char *prompt, const char *piece, size_t n, bool done);

/* Announces a file the job wrote, by its path relative to job_dir(). */
void job_artifact(job_ctx_t *ctx, const char *name, const char *relpath);

/* Starts an output record: one item of what the job produces (one prompt's generation, one score), sent as an
 * "output" event that `lathe run --json` prints as one JSON object. Add fields, then job_output_end(). */
void job_output_begin(job_ctx_t *ctx);
void job_output_str(job_ctx_t *ctx, const char *key, const char *v);
void job_output_int(job_ctx_t *ctx, const char *key, int64_t v);
void job_output_float(job_ctx_t *ctx, const char *key, double v);
void job_output_ints(job_ctx_t *ctx, const char *key, const int32_t *v, size_t n);
void job_output_bool(job_ctx_t *ctx, const char *key, bool v);
/* A field with no value (JSON null): "nothing here", e.g. no label for an inconsistent preference. */
void job_output_null(job_ctx_t *ctx, const char *key);
/* Opens a list field of the output record (key NULL: a list nested in the list being filled); add entries
 * with job_output_list_str() and close it with job_output_list_end(). Lists nest at most 2 deep (the
 * protocol bounds the nesting of a whole events reply). */
void job_output_list_begin(job_ctx_t *ctx, const char *key);
void job_output_list_str(job_ctx_t *ctx, const char *v);
void job_output_list_end(job_ctx_t *ctx);
/* Sends the output record started by job_output_begin(). */
void job_output_end(job_ctx_t *ctx);

/* A list-of-strings parameter: its number of entries, and entry i (owned by ctx). */
size_t job_param_list_len(job_ctx_t *ctx, const char *key);
const char *job_param_list_at(job_ctx_t *ctx, const char *key, size_t i);

/* Adds a key to the job's result map (what `lathe result` shows). */
void job_result_int(job_ctx_t *ctx, const char *key, int64_t v);
void job_result_float(job_ctx_t *ctx, const char *key, double v);
void job_result_str(job_ctx_t *ctx, const char *key, const char *v);
/* A list of n strings under key in the result. */
void job_result_strs(job_ctx_t *ctx, const char *key, const char *const *v, size_t n);

/* Writes dir/lathe-report.json: {kind, job, result} with the result's fields so far (job_result_*), beside a model
 * the job wrote, which travels without the job folder. */
lt_status_t job_report_write(job_ctx_t *ctx, const char *dir, lt_err_t *err);

/* The worker's device, opened on first use and kept open between jobs (the keep-alive). Owned by the worker;
 * NULL with err when no device can be opened. */
gpu_t *job_gpu(job_ctx_t *ctx, lt_err_t *err);

/* After a picture was written (st; e its error) at path: an artifact named name, or a log line saying why not (a
 * picture is never worth failing a job for). */
void job_picture(job_ctx_t *ctx, lt_status_t st, const char *name, const char *path, const lt_err_t *e);

/* The dtype f32 weights are written as, from the job's `dtype` parameter: f32, f16, bf16, or base (that of the
 * model at base's token embedding; f32 when it cannot be read). */
lt_dtype_t job_save_dtype(job_ctx_t *ctx, const char *base);

/* The float dtype of the model at base, as its token embedding is stored (f32, f16 or bf16; f32 for anything
 * else or a file that does not open). */
lt_dtype_t job_base_dtype(const char *base);

/* The model at path (a Hugging Face folder or a .gguf file) on the worker's device, with its tokenizer in *tok.
 * The worker keeps the last model loaded between jobs (the keep-alive), so a second job on the same model does
 * not load it again. When the job has an "adapter" parameter naming a folder (what `tune` writes: a PEFT LoRA or
 * a bottleneck adapter), it is applied on top for this job only. Both are owned by the worker; NULL with err on
 * failure. */
model_t *job_model(job_ctx_t *ctx, const char *path, tok_t **tok, lt_err_t *err);

/* ---- hosts: what runs a runner ---- */

/* A host's callbacks. Each gets the host's own pointer (ctx of job_run). */
typedef struct job_host {
  /* Takes one finished event message {t: "event", job, type, data: {...}} (msgpack bytes, valid during the call). */
  void (*emit)(void *host, const void *msg, size_t n);
  /* Returns what the job has been asked to do since the last call (JOB_GO when nothing); never blocks. */
  job_stop_t (*poll_stop)(void *host);
  /* The device for the job's kernels; owned by the host. NULL with err. */
  gpu_t *(*gpu)(void *host, job_ctx_t *c, lt_err_t *err);
  /* The model at path with its tokenizer in *tok; both owned by the host. NULL with err. */
  model_t *(*model)(void *host, job_ctx_t *c, const char *path, tok_t **tok, lt_err_t *err);
} job_host_t;

/* One job to run: its id, attempt (1 first), kind name, artifact folder and normalised parameters (a msgpack
 * map holding every key of the kind's schema, as kind_params_normalise() writes it). */
typedef struct job_spec {
  int64_t id;
  uint32_t attempt;
  const char *kind, *dir;
  const msgpack_object *params;
  const msgpack_object *lent; /* an array of device selectors lent beside the job's own device, or NULL */
} job_spec_t;

/* Runs the runner of spec->kind on host h (ctx its pointer) and returns its outcome; the job's result map goes to
 * result (a writer the caller initialised, then owns). On JOB_FAILED err says why. */
job_outcome_t job_run(const job_host_t *h, void *ctx, const job_spec_t *spec, mpw_t *result, lt_err_t *err);

#endif
