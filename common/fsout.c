/* Output files written safely (common/fsout.h). */
#include "common/fsout.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The process's umask (read by setting it and putting it back). */
static mode_t current_umask(void) {
  mode_t m = umask(022);
  umask(m);
  return m;
}

lt_status_t util_out_open(util_out_t *o, const char *path, mode_t mode, lt_err_t *err) {
  memset(o, 0, sizeof *o);
  if (snprintf(o->path, sizeof o->path, "%s", path) >= (int)sizeof o->path)
    return lt_fail(err, LT_E_IO, "path too long: %s", path);
  char dir[sizeof o->path];
  snprintf(dir, sizeof dir, "%s", path);
  const char *folder = dirname(dir);
  const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
  if ((size_t)snprintf(o->tmp, sizeof o->tmp, "%s/.%.64s.XXXXXX", folder, base) >= sizeof o->tmp)
    return lt_fail(err, LT_E_IO, "path too long: %s", path);
  int fd = mkstemp(o->tmp);
  if (fd < 0) return lt_fail(err, LT_E_IO, "cannot write %s: %s", path, strerror(errno));
  if (fchmod(fd, mode & ~current_umask()) != 0 || !(o->f = fdopen(fd, "wb"))) {
    lt_fail(err, LT_E_IO, "cannot write %s: %s", path, strerror(errno));
    close(fd);
    unlink(o->tmp);
    o->tmp[0] = '\0';
    return LT_E_IO;
  }
  return LT_OK;
}

lt_status_t util_out_commit(util_out_t *o, lt_err_t *err) {
  if (!o->f) return lt_fail(err, LT_E_IO, "cannot write %s: not open", o->path);
  bool ok = fflush(o->f) == 0 && fsync(fileno(o->f)) == 0 && !ferror(o->f);
  int e = errno;
  ok = fclose(o->f) == 0 && ok;
  o->f = NULL;
  if (ok && rename(o->tmp, o->path) == 0) {
    o->tmp[0] = '\0';
    return LT_OK;
  }
  if (ok) e = errno;
  unlink(o->tmp);
  o->tmp[0] = '\0';
  return lt_fail(err, LT_E_IO, "cannot write %s: %s", o->path, strerror(e ? e : EIO));
}

void util_out_abort(util_out_t *o) {
  if (o->f) fclose(o->f);
  o->f = NULL;
  if (o->tmp[0]) unlink(o->tmp);
  o->tmp[0] = '\0';
}

lt_status_t util_out_dir(const char *dest, char *tmp, size_t n, lt_err_t *err) {
  char parent[4096];
  snprintf(parent, sizeof parent, "%s", dest);
  const char *base = strrchr(dest, '/') ? strrchr(dest, '/') + 1 : dest;
  if ((size_t)snprintf(tmp, n, "%s/.%.64s.XXXXXX", dirname(parent), base) >= n)
    return lt_fail(err, LT_E_IO, "path too long: %s", dest);
  if (!mkdtemp(tmp) || chmod(tmp, 0755 & ~current_umask()) != 0)
    return lt_fail(err, LT_E_IO, "cannot make a folder beside %s: %s", dest, strerror(errno));
  return LT_OK;
}

FILE *util_open_nofollow(const char *path, bool append, lt_err_t *err) {
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (append ? O_APPEND : O_TRUNC), 0644);
  FILE *f = fd >= 0 ? fdopen(fd, append ? "ab" : "wb") : NULL;
  if (!f) {
    lt_fail(err, LT_E_IO, "cannot write %s: %s", path, errno == ELOOP ? "it is a symbolic link" : strerror(errno));
    if (fd >= 0) close(fd);
  }
  return f;
}
