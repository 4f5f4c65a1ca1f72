/* Speech in for the generate kind: `generate --audio FILE --speech DIR` (jobs/speech.c). */
#ifndef LATHE_SPEECH_JOB_H
#define LATHE_SPEECH_JOB_H

#include "jobs/job.h"

/* Answers each prompt (an instruction) from the job's audio file with its speech model feeding its LLM. */
job_outcome_t speech_generate(job_ctx_t *ctx, lt_err_t *err);

#endif
