/* The `sleep` kind: progress steps with a delay, a checkpoint file so that a cut-off job resumes where it
 * stopped, and test switches that fail the job, crash the worker or ignore a cancel. */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "common/util.h"
#include "common/fsout.h"
#include "jobs/runners.h"

/* Checkpoints are written at most this often (and when the daemon asks for one). */
#define CHECKPOINT_EVERY_MS 500
/* A long delay is slept in slices this long so a cancel is noticed quickly. */
#define SLICE_MS 20

static int64_t read_checkpoint(const char *path) {
  FILE *f = fopen(path, "r");
  long long step = 0;
  if (f) {
    if (fscanf(f, "%lld", &step) != 1 || step < 0) step = 0;
    fclose(f);
  }
  return step;
}

/* Writes the next step to run atomically (a crash mid-write leaves the previous checkpoint). */
static bool write_checkpoint(const char *path, int64_t step) {
  util_out_t o;
  if (util_out_open(&o, path, 0644, NULL) != LT_OK) return false;
  if (fprintf(o.f, "%lld\n", (long long)step) < 0) {
    util_out_abort(&o);
    return false;
  }
  return util_out_commit(&o, NULL) == LT_OK;
}

/* Sleeps ms in slices, returning early with the stop request if one comes (a cancel is ignored when asked). */
static job_stop_t pause_ms(job_ctx_t *ctx, int64_t ms, bool ignore_cancel) {
  int64_t end = util_mono_ms() + ms;
  for (;;) {
    job_stop_t s = job_should_stop(ctx);
    if (s == JOB_STOP_CHECKPOINT || (s == JOB_STOP_CANCEL && !ignore_cancel)) return s;
    int64_t left = end - util_mono_ms();
    if (left <= 0) return JOB_GO;
    if (left > SLICE_MS) left = SLICE_MS;
    nanosleep(&(struct timespec){.tv_sec = 0, .tv_nsec = left * 1000000}, NULL);
  }
}

job_outcome_t run_sleep(job_ctx_t *ctx, lt_err_t *err) {
  int64_t steps = job_param_int(ctx, "steps"), delay = job_param_int(ctx, "delay_ms");
  int64_t fail = job_param_int(ctx, "fail"), crash = job_param_int(ctx, "crash");
  bool ignore_cancel = job_param_bool(ctx, "ignore_cancel");
  const char *message = job_param_str(ctx, "message");
  char ckpt[PATH_MAX];
  snprintf(ckpt, sizeof ckpt, "%s/sleep.ckpt", job_dir(ctx));
  int64_t start = read_checkpoint(ckpt);
  if (start > steps) start = 0;
  if (start > 0)
    job_log(ctx, "attempt %u: resuming from checkpoint at step %lld of %lld", job_attempt(ctx), (long long)start,
            (long long)steps);
  int64_t last_ckpt = util_mono_ms();
  for (int64_t s = start; s < steps; s++) {
    job_stop_t stop = delay ? pause_ms(ctx, delay, ignore_cancel) : job_should_stop(ctx);
    if (stop == JOB_STOP_CANCEL && ignore_cancel) stop = JOB_GO;
    if (stop == JOB_STOP_CHECKPOINT) {
      if (write_checkpoint(ckpt, s)) job_artifact(ctx, "checkpoint", "sleep.ckpt");
      return JOB_STOPPED;
    }
    if (stop == JOB_STOP_CANCEL) return JOB_CANCELLED;
    if (s == crash) {
      /* A deliberate crash for the tests: no core file. */
      setrlimit(RLIMIT_CORE, &(struct rlimit){0, 0});
      abort();
    }
    if (s == fail) {
      lt_fail(err, LT_E_INVALID, "failed at step %lld as asked (params.fail)", (long long)s);
      return JOB_FAILED;
    }
    if (*message) job_log(ctx, "%s (step %lld)", message, (long long)s + 1);
    job_progress(ctx, (uint64_t)s + 1, (uint64_t)steps, "steps");
    if (util_mono_ms() - last_ckpt >= CHECKPOINT_EVERY_MS) {
      write_checkpoint(ckpt, s + 1);
      last_ckpt = util_mono_ms();
    }
  }
  job_result_int(ctx, "steps", steps);
  job_result_int(ctx, "resumed_from", start);
  return JOB_SUCCEEDED;
}
