/* Output files written safely: a new file under a unique name in the destination's folder, renamed into place;
 * and opening for append or truncation without following a planted link. Below every layer (with common/status). */
#ifndef LATHE_FSOUT_H
#define LATHE_FSOUT_H

#include <stdbool.h>
#include <stdio.h>
#include <sys/types.h>

#include "common/status.h"

/* An output file written safely: created new under a unique name in the destination's folder (mkstemp, so never
 * through an existing file or a link someone planted there), then renamed over the destination, which a reader
 * sees whole or not at all. */
typedef struct util_out {
  FILE *f; /* write here */
  char tmp[4096], path[4096];
} util_out_t;

/* Starts writing path: o->f is a new file in path's folder, whose mode becomes `mode` less the umask. LT_E_IO with
 * err naming path. */
lt_status_t util_out_open(util_out_t *o, const char *path, mode_t mode, lt_err_t *err);

/* Flushes, syncs and closes o->f and renames it over o->path; on any failure removes it. LT_E_IO naming path. */
lt_status_t util_out_commit(util_out_t *o, lt_err_t *err);

/* Closes and removes an output that is not to be committed; safe on a zeroed or already finished o. */
void util_out_abort(util_out_t *o);

/* Makes a new folder under a unique name beside dest (dest's parent, mkdtemp: never an existing folder or link)
 * with mode 0755 less the umask, to fill and then rename over dest; its path goes to tmp (n bytes). LT_E_IO with err
 * naming dest. */
lt_status_t util_out_dir(const char *dest, char *tmp, size_t n, lt_err_t *err);

/* Opens path for writing (append: at its end, else truncated) without following a link at its last component; a
 * new file gets 0644 less the umask. Caller owns the FILE (fclose); NULL with err naming path. */
FILE *util_open_nofollow(const char *path, bool append, lt_err_t *err);

#endif
