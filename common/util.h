/* Small shared utilities: clocks, folders, default paths, CURVE key files. */
#ifndef LATHE_UTIL_H
#define LATHE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "common/status.h"

/* Wall-clock milliseconds since the Unix epoch (what the store and the wire carry). */
int64_t util_now_ms(void);

/* Monotonic milliseconds (for deadlines and rates; never goes back). */
int64_t util_mono_ms(void);

/* Copies src into dst of size n, always NUL-terminating; returns false if it had to truncate. */
bool util_copy(char *dst, const char *src, size_t n);

/* Whether the input path of job parameter `key` is usable: it exists and can be read, and for a model parameter
 * (model, teacher, student) it looks like one: a GGUF file (its magic) or a Hugging Face folder (config.json with
 * model.safetensors or model.safetensors.index.json). False with why (n bytes) saying what is wrong. */
bool util_input_ok(const char *key, const char *path, char *why, size_t n);

/* Whether output path can be written: the nearest part of it that exists is a folder this process may write in
 * (or the path itself, when it is an existing folder). False with why saying what is wrong. */
bool util_output_ok(const char *path, char *why, size_t n);

/* Parses a duration: a whole number with a unit s, m, h, d or w (a bare number is seconds), into *ms. False when
 * s is not one, or is longer than about a thousand years. */
bool util_parse_duration(const char *s, int64_t *ms);

/* Creates path and its missing parents; folders it creates get `mode`. Returns LT_OK or LT_E_IO with err. */
lt_status_t util_mkdir_p(const char *path, mode_t mode, lt_err_t *err);

/* Creates a private folder (mode 0700) or checks that an existing one belongs to us and is not readable or
 * writable by group or others. Returns LT_OK, or LT_E_IO / LT_E_INVALID with err naming the problem. */
lt_status_t util_private_dir(const char *path, lt_err_t *err);

/* Removes a file or a folder tree; missing is fine. Returns LT_OK or LT_E_IO with err. */
lt_status_t util_rm_rf(const char *path, lt_err_t *err);

/* Writes the folder holding the running executable into buf. Returns false if it does not fit or is unknown. */
bool util_exe_dir(char *buf, size_t n);

/* Writes the default client socket path: $LATHE_SOCKET, else $XDG_RUNTIME_DIR/lathe/lathed.sock, else
 * /tmp/lathe-UID/lathed.sock. Returns LT_OK or LT_E_LIMIT when it does not fit an ipc address. */
lt_status_t util_default_socket(char *buf, size_t n, lt_err_t *err);

/* Writes the default store folder: $LATHE_HOME, else $XDG_DATA_HOME/lathe, else ~/.local/share/lathe. */
lt_status_t util_default_home(char *buf, size_t n, lt_err_t *err);

/* Writes the folder of the log of a daemon the CLI starts: $LATHE_HOME when set (a private instance keeps
 * everything together), else $XDG_STATE_HOME/lathe, else ~/.local/state/lathe. */
lt_status_t util_default_log_dir(char *buf, size_t n, lt_err_t *err);

/* Reads a Z85 CURVE key (40 characters) from the first non-comment line of a file, accepting either the bare
 * key or czmq's `public-key = "..."` / `secret-key = "..."` form. Returns LT_OK or LT_E_INVALID/LT_E_IO. */
lt_status_t util_read_z85_key(const char *path, char key[41], lt_err_t *err);

/* Writes a key file (mode 0600 for secret keys, 0644 otherwise) holding the Z85 key and a newline. */
lt_status_t util_write_z85_key(const char *path, const char *key, bool secret, lt_err_t *err);

#endif
