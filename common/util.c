#include "common/util.h"

#include "common/fsout.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int64_t util_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool util_input_ok(const char *key, const char *path, char *why, size_t n) {
  struct stat st;
  if (stat(path, &st) != 0) return snprintf(why, n, "%s: %s", path, strerror(errno)), false;
  if (access(path, R_OK) != 0) return snprintf(why, n, "%s: cannot be read: %s", path, strerror(errno)), false;
  if (strcmp(key, "model") && strcmp(key, "teacher") && strcmp(key, "student")) return true;
  if (S_ISDIR(st.st_mode)) {
    char p[PATH_MAX + 40];
    snprintf(p, sizeof p, "%s/config.json", path);
    bool config = access(p, R_OK) == 0;
    snprintf(p, sizeof p, "%s/model.safetensors", path);
    bool weights = access(p, R_OK) == 0;
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
    weights |= access(p, R_OK) == 0;
    if (config && weights) return true;
    snprintf(why, n,
             "%s is a folder without %s: a model is a Hugging Face folder (config.json, model.safetensors or its "
             "index, tokenizer.json) or a .gguf file",
             path, !config ? "config.json" : "model.safetensors or model.safetensors.index.json");
    return false;
  }
  char magic[4] = {0};
  FILE *f = fopen(path, "rb");
  size_t got = f ? fread(magic, 1, 4, f) : 0;
  if (f) fclose(f);
  if (got == 4 && !memcmp(magic, "GGUF", 4)) return true;
  snprintf(why, n,
           "%s is not a GGUF file (it does not start with \"GGUF\"): a model is a .gguf file or a Hugging Face "
           "folder",
           path);
  return false;
}

bool util_output_ok(const char *path, char *why, size_t n) {
  char p[PATH_MAX];
  util_copy(p, path, sizeof p);
  struct stat st;
  /* The nearest existing part of the path: the job makes the folders below it. */
  while (stat(p, &st) != 0) {
    char *slash = strrchr(p, '/');
    if (!slash) {
      util_copy(p, ".", sizeof p);
      continue;
    }
    if (slash == p)
      slash[1] = '\0';
    else
      *slash = '\0';
  }
  if (!S_ISDIR(st.st_mode)) {
    if (strcmp(p, path) != 0) return snprintf(why, n, "%s: %s is a file, not a folder", path, p), false;
    /* An existing file is replaced by a new one made beside it (the force check is the caller's). */
    char *slash = strrchr(p, '/');
    if (!slash)
      util_copy(p, ".", sizeof p);
    else if (slash == p)
      slash[1] = '\0';
    else
      *slash = '\0';
  }
  if (access(p, W_OK | X_OK) != 0)
    return snprintf(why, n, "%s: cannot write in %s: %s", path, p, strerror(errno)), false;
  return true;
}

bool util_parse_duration(const char *s, int64_t *ms) {
  char *end = NULL;
  if (!s || *s < '0' || *s > '9') return false;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  static const struct {
    char unit;
    int64_t ms;
  } units[] = {{'\0', 1000}, {'s', 1000}, {'m', 60000}, {'h', 3600000}, {'d', 86400000}, {'w', 604800000}};
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (*end == units[i].unit && (!*end || !end[1])) {
      if (errno || v > 366000LL * 86400000 / units[i].ms) return false;
      *ms = v * units[i].ms;
      return true;
    }
  return false;
}

int64_t util_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool util_copy(char *dst, const char *src, size_t n) {
  size_t len = strlen(src);
  if (len < n) {
    memcpy(dst, src, len + 1);
    return true;
  }
  if (n) {
    memcpy(dst, src, n - 1);
    dst[n - 1] = '\0';
  }
  return false;
}

lt_status_t util_mkdir_p(const char *path, mode_t mode, lt_err_t *err) {
  char buf[PATH_MAX];
  if (!util_copy(buf, path, sizeof buf)) return lt_fail(err, LT_E_LIMIT, "path too long: %s", path);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      if (mkdir(buf, mode) != 0 && errno != EEXIST)
        return lt_fail(err, LT_E_IO, "cannot create %s: %s", buf, strerror(errno));
      if (c == '\0') break;
      *p = c;
    }
  }
  return LT_OK;
}

lt_status_t util_private_dir(const char *path, lt_err_t *err) {
  lt_status_t st = util_mkdir_p(path, 0700, err);
  if (st) return st;
  struct stat sb;
  if (stat(path, &sb) != 0) return lt_fail(err, LT_E_IO, "cannot stat %s: %s", path, strerror(errno));
  if (!S_ISDIR(sb.st_mode)) return lt_fail(err, LT_E_INVALID, "%s is not a folder", path);
  if (sb.st_uid != geteuid())
    return lt_fail(err, LT_E_INVALID, "%s belongs to uid %u, not to us (uid %u)", path, (unsigned)sb.st_uid,
                   (unsigned)geteuid());
  if (sb.st_mode & 077)
    return lt_fail(err, LT_E_INVALID, "%s has mode %03o; it must be 0700 (chmod 700 %s)", path,
                   (unsigned)(sb.st_mode & 0777), path);
  return LT_OK;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

lt_status_t util_rm_rf(const char *path, lt_err_t *err) {
  struct stat sb;
  if (lstat(path, &sb) != 0) return errno == ENOENT ? LT_OK : lt_fail(err, LT_E_IO, "%s: %s", path, strerror(errno));
  if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
    return lt_fail(err, LT_E_IO, "cannot remove %s: %s", path, strerror(errno));
  return LT_OK;
}

bool util_exe_dir(char *buf, size_t n) {
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) return false;
  exe[len] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return false;
  *slash = '\0';
  return util_copy(buf, exe, n);
}

static const char *home_dir(void) {
  const char *h = getenv("HOME");
  if (h && *h) return h;
  struct passwd *pw = getpwuid(getuid());
  return pw ? pw->pw_dir : "/";
}

lt_status_t util_default_socket(char *buf, size_t n, lt_err_t *err) {
  const char *s = getenv("LATHE_SOCKET"), *rt = getenv("XDG_RUNTIME_DIR");
  int len;
  if (s && *s)
    len = snprintf(buf, n, "%s", s);
  else if (rt && *rt)
    len = snprintf(buf, n, "%s/lathe/lathed.sock", rt);
  else
    len = snprintf(buf, n, "/tmp/lathe-%u/lathed.sock", (unsigned)getuid());
  /* An ipc endpoint is a Unix socket address: sun_path is 108 bytes including the NUL. */
  if (len < 0 || (size_t)len >= n || (size_t)len >= sizeof(((struct sockaddr_un *)0)->sun_path))
    return lt_fail(err, LT_E_LIMIT, "socket path too long for a Unix socket (at most 107 bytes): %s", buf);
  return LT_OK;
}

/* $LATHE_HOME when set, else $XDG_VAR/lathe, else ~/FALLBACK/lathe, into buf; `what` names it in the error. */
static lt_status_t lathe_dir(char *buf, size_t n, const char *xdg_var, const char *fallback, const char *what,
                             lt_err_t *err) {
  const char *h = getenv("LATHE_HOME"), *x = getenv(xdg_var);
  int len;
  if (h && *h)
    len = snprintf(buf, n, "%s", h);
  else if (x && *x)
    len = snprintf(buf, n, "%s/lathe", x);
  else
    len = snprintf(buf, n, "%s/%s/lathe", home_dir(), fallback);
  if (len < 0 || (size_t)len >= n) return lt_fail(err, LT_E_LIMIT, "%s path too long", what);
  return LT_OK;
}

lt_status_t util_default_log_dir(char *buf, size_t n, lt_err_t *err) {
  return lathe_dir(buf, n, "XDG_STATE_HOME", ".local/state", "log folder", err);
}

lt_status_t util_default_home(char *buf, size_t n, lt_err_t *err) {
  return lathe_dir(buf, n, "XDG_DATA_HOME", ".local/share", "store", err);
}

lt_status_t util_read_z85_key(const char *path, char key[41], lt_err_t *err) {
  FILE *f = fopen(path, "r");
  if (!f) return lt_fail(err, LT_E_IO, "cannot read key %s: %s", path, strerror(errno));
  char line[256];
  lt_status_t st = lt_fail(err, LT_E_INVALID, "%s holds no Z85 key", path);
  while (fgets(line, sizeof line, f)) {
    char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    size_t len = strcspn(p, "\r\n");
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
    /* A bare key first: Z85 uses '#' and '=' too, so a 40-character line is a key whatever it starts with. */
    if (len != 40 && (strncmp(p, "public-key", 10) == 0 || strncmp(p, "secret-key", 10) == 0)) {
      char *q = strchr(p, '"');
      if (!q) continue;
      p = q + 1;
      len = strcspn(p, "\"");
    } else if (len != 40) {
      continue; /* comments, czmq metadata, blank lines */
    }
    if (len == 40) {
      memcpy(key, p, 40);
      key[40] = '\0';
      lt_err_clear(err);
      st = LT_OK;
    } else {
      st = lt_fail(err, LT_E_INVALID, "%s: a Z85 CURVE key has 40 characters, found %zu", path, len);
    }
    break;
  }
  fclose(f);
  return st;
}

lt_status_t util_write_z85_key(const char *path, const char *key, bool secret, lt_err_t *err) {
  util_out_t o;
  if (util_out_open(&o, path, secret ? 0600 : 0644, err) != LT_OK) return LT_E_IO;
  if (fprintf(o.f, "%s\n", key) < 0) {
    util_out_abort(&o);
    return lt_fail(err, LT_E_IO, "cannot write %s: %s", path, strerror(errno));
  }
  return util_out_commit(&o, err);
}
