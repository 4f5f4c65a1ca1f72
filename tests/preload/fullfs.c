/* A disk that fills up on demand, for the daemon tests: loaded into lathed with LD_PRELOAD, it makes every write to
 * a file named jobs.db* fail with ENOSPC while the file named by LATHE_TEST_FULL_FLAG exists. Everything else is
 * written as usual, so the daemon meets the failure SQLite reports for a full disk, and recovers once the test
 * removes the flag. */
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* Whether a write to fd must fail now. */
static bool disk_full(int fd) {
  const char *flag = getenv("LATHE_TEST_FULL_FLAG");
  if (!flag || access(flag, F_OK) != 0) return false;
  char link[64], path[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return false;
  path[n] = '\0';
  const char *base = strrchr(path, '/');
  return base && strncmp(base, "/jobs.db", 8) == 0;
}

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);

/* The C library's function `name`, looked up once. */
#define REAL(name, type)                                                                                               \
  static type real_##name;                                                                                             \
  if (!real_##name) *(void **)&real_##name = dlsym(RTLD_NEXT, #name)

/* write(2), failing with ENOSPC on the store while the disk is "full". */
ssize_t write(int fd, const void *buf, size_t n) {
  REAL(write, write_fn);
  if (disk_full(fd)) return errno = ENOSPC, -1;
  return real_write(fd, buf, n);
}

/* pwrite(2), likewise. */
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
  REAL(pwrite, pwrite_fn);
  if (disk_full(fd)) return errno = ENOSPC, -1;
  return real_pwrite(fd, buf, n, off);
}

/* pwrite64(2), likewise (SQLite's unix VFS calls it where it exists). */
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
  REAL(pwrite64, pwrite64_fn);
  if (disk_full(fd)) return errno = ENOSPC, -1;
  return real_pwrite64(fd, buf, n, off);
}

/* writev(2), likewise. */
ssize_t writev(int fd, const struct iovec *iov, int n) {
  REAL(writev, writev_fn);
  if (disk_full(fd)) return errno = ENOSPC, -1;
  return real_writev(fd, iov, n);
}
