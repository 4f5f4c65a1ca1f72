/* Test support for file-based tests (the data jobs): a private temporary folder per test and files written into it. */
#ifndef LATHE_TDATA_H
#define LATHE_TDATA_H

#include <stddef.h>

/* Makes a fresh temporary folder for the running test (removed by tdata_cleanup()); returns its path. */
const char *tdata_dir(void);

/* Writes len bytes of text (len 0: strlen) to name inside the test's folder; returns the full path (static
 * storage, valid until the next call). */
const char *tdata_file(const char *name, const char *text, size_t len);

/* Removes the test's folder; safe to call when none was made. */
void tdata_cleanup(void);

#endif
