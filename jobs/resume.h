/* What a resumable job keeps between attempts (tune-zo, tune): a small state file in the job's folder naming the
 * last complete checkpoint, and a line log that a resumed attempt cuts back to that checkpoint. */
#ifndef LATHE_RESUME_H
#define LATHE_RESUME_H

#include <stdint.h>
#include <stdio.h>

#include "common/status.h"

/* Writes the state file at path atomically (a temporary, fsync, rename): the step, then the checkpoint folder,
 * one line each. */
lt_status_t resume_state_write(const char *path, uint64_t step, const char *dir, lt_err_t *err);

/* Reads the state file at path: the step of the last checkpoint (0 when there is none or it is damaged) and its
 * folder into dir (n bytes). */
uint64_t resume_state_read(const char *path, char *dir, size_t n);

/* Opens the line log at path for appending: with keep 0 a new, empty log; otherwise its first keep complete lines
 * stay and the rest goes (a killed attempt may have written past its checkpoint). LT_E_CORRUPT, naming the file,
 * when it holds fewer. Caller owns the FILE (fclose); NULL with err. */
FILE *resume_log_open(const char *path, uint64_t keep, lt_err_t *err);

#endif
