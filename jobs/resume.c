/* The state file and line log of resumable jobs (jobs/resume.h). */
#include "jobs/resume.h"

#include "common/fsout.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

lt_status_t resume_state_write(const char *path, uint64_t step, const char *dir, lt_err_t *err) {
  util_out_t o;
  if (util_out_open(&o, path, 0644, err) != LT_OK) return LT_E_IO;
  if (fprintf(o.f, "%" PRIu64 "\n%s\n", step, dir) < 0) {
    util_out_abort(&o);
    return lt_fail(err, LT_E_IO, "cannot write %s: %s", path, strerror(errno));
  }
  return util_out_commit(&o, err);
}

uint64_t resume_state_read(const char *path, char *dir, size_t n) {
  FILE *f = fopen(path, "r");
  uint64_t step = 0;
  dir[0] = 0;
  if (!f) return 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  if (fscanf(f, "%" SCNu64 "\n", &step) != 1 || (len = getline(&line, &cap, f)) < 2 || line[len - 1] != '\n' ||
      (size_t)len > n)
    step = 0;
  else
    snprintf(dir, n, "%.*s", (int)len - 1, line);
  free(line);
  fclose(f);
  return step;
}

FILE *resume_log_open(const char *path, uint64_t keep, lt_err_t *err) {
  FILE *log = NULL;
  if (keep == 0) {
    return util_open_nofollow(path, false, err);
  }
  FILE *in = fopen(path, "r");
  if (!in) return lt_fail(err, LT_E_IO, "cannot resume: %s: %s", path, strerror(errno)), NULL;
  util_out_t o;
  lt_status_t st = util_out_open(&o, path, 0644, err);
  FILE *out = o.f;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  uint64_t kept = 0;
  while (st == LT_OK && kept < keep && (len = getline(&line, &cap, in)) > 0 && line[len - 1] == '\n') {
    if (fwrite(line, 1, (size_t)len, out) != (size_t)len) st = lt_fail(err, LT_E_IO, "writing %s", path);
    kept++;
  }
  free(line);
  fclose(in);
  if (st == LT_OK && kept < keep)
    st = lt_fail(err, LT_E_CORRUPT, "cannot resume: %s holds %" PRIu64 " of the %" PRIu64 " lines of the checkpoint",
                 path, kept, keep);
  if (st == LT_OK)
    st = util_out_commit(&o, err);
  else
    util_out_abort(&o);
  if (st == LT_OK) log = util_open_nofollow(path, true, err);
  return log;
}
