/* One status type for the whole project, plus a per-call error carrying a human message. */
#ifndef LATHE_STATUS_H
#define LATHE_STATUS_H

#include <stdarg.h>

typedef enum lt_status {
  LT_OK = 0,
  LT_E_INVALID = -1,     /* bad argument, shape or input */
  LT_E_NOMEM = -2,       /* host allocation failed */
  LT_E_IO = -3,          /* file or socket error */
  LT_E_NO_VULKAN = -4,   /* no loader, no ICD or no usable device */
  LT_E_VULKAN = -5,      /* a Vulkan call failed */
  LT_E_DEVICE_OOM = -6,  /* out of device memory */
  LT_E_DEVICE_LOST = -7, /* the device was lost */
  LT_E_SHADER = -8,      /* shader failed to compile or link */
  LT_E_UNSUPPORTED = -9, /* the device lacks a required feature */
  LT_E_CORRUPT = -10,    /* a file failed validation */
  LT_E_LIMIT = -11,      /* a size exceeds a limit */
  LT_E_NUMERIC = -12,    /* a computation produced NaN or infinity (a diverging loss) */
} lt_status_t;

/* Error detail filled by the call that failed; the caller owns the struct (stack is fine). */
typedef struct lt_err {
  lt_status_t code;
  char msg[512];
} lt_err_t;

/* Returns a stable lower-case name for a status code; static string, never NULL. */
const char *lt_status_str(lt_status_t s);

/* Records code and a printf-style message in err (if non-NULL) and returns code. */
lt_status_t lt_fail(lt_err_t *err, lt_status_t code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Clears err to LT_OK with an empty message; NULL-safe. */
void lt_err_clear(lt_err_t *err);

#endif
