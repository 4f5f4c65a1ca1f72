#include "tdata.h"

#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char dir[64];

const char *tdata_dir(void) {
  if (!dir[0]) {
    snprintf(dir, sizeof dir, "/tmp/lathe-data-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
  }
  return dir;
}

const char *tdata_file(const char *name, const char *text, size_t len) {
  static char path[256];
  snprintf(path, sizeof path, "%s/%s", tdata_dir(), name);
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "cannot write %s", path);
  size_t n = len ? len : strlen(text);
  cr_assert_eq(fwrite(text, 1, n, f), n);
  fclose(f);
  return path;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path);
}

void tdata_cleanup(void) {
  if (!dir[0]) return;
  if (!getenv("LATHE_TEST_KEEP") && nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
    cr_log_warn("could not remove %s", dir);
  dir[0] = '\0';
}
