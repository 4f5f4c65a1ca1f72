/* The state file and line log of resumable jobs (jobs/resume.h). */
#include "jobs/resume.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

lt_status_t resume_state_write(const char *path, uint64_t step, const char *dir, lt_err_t *err) {
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return lt_fail(err, LT_E_IO, "cannot write %s: %s", tmp, strerror(errno));
  bool ok = fprintf(f, "%" PRIu64 "\n%s\n", step, dir) > 0;
  ok = fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) return lt_fail(err, LT_E_IO, "cannot write %s: %s", path, strerror(errno));
  return LT_OK;
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
    if (!(log = fopen(path, "w"))) lt_fail(err, LT_E_IO, "cannot write %s: %s", path, strerror(errno));
    return log;
  }
  FILE *in = fopen(path, "r");
  if (!in) return lt_fail(err, LT_E_IO, "cannot resume: %s: %s", path, strerror(errno)), NULL;
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *out = fopen(tmp, "w");
  lt_status_t st = out ? LT_OK : lt_fail(err, LT_E_IO, "cannot write %s: %s", tmp, strerror(errno));
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  uint64_t kept = 0;
  while (st == LT_OK && kept < keep && (len = getline(&line, &cap, in)) > 0 && line[len - 1] == '\n') {
    if (fwrite(line, 1, (size_t)len, out) != (size_t)len) st = lt_fail(err, LT_E_IO, "writing %s", tmp);
    kept++;
  }
  free(line);
  fclose(in);
  if (st == LT_OK && kept < keep)
    st = lt_fail(err, LT_E_CORRUPT, "cannot resume: %s holds %" PRIu64 " of the %" PRIu64 " lines of the checkpoint",
                 path, kept, keep);
  if (out && fclose(out) != 0 && st == LT_OK) st = lt_fail(err, LT_E_IO, "writing %s", tmp);
  if (st == LT_OK && rename(tmp, path) != 0) st = lt_fail(err, LT_E_IO, "cannot rename %s: %s", tmp, strerror(errno));
  if (st == LT_OK && !(log = fopen(path, "a"))) lt_fail(err, LT_E_IO, "cannot append to %s: %s", path, strerror(errno));
  return log;
}
