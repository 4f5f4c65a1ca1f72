#include "common/status.h"

#include <stdio.h>
#include <string.h>

const char *lt_status_str(lt_status_t s) {
  switch (s) {
  case LT_OK: return "ok";
  case LT_E_INVALID: return "invalid";
  case LT_E_NOMEM: return "out-of-memory";
  case LT_E_IO: return "io";
  case LT_E_NO_VULKAN: return "no-vulkan";
  case LT_E_VULKAN: return "vulkan";
  case LT_E_DEVICE_OOM: return "device-out-of-memory";
  case LT_E_DEVICE_LOST: return "device-lost";
  case LT_E_SHADER: return "shader";
  case LT_E_UNSUPPORTED: return "unsupported";
  case LT_E_CORRUPT: return "corrupt";
  case LT_E_LIMIT: return "limit";
  case LT_E_NUMERIC: return "numeric";
  }
  return "unknown";
}

lt_status_t lt_fail(lt_err_t *err, lt_status_t code, const char *fmt, ...) {
  if (err) {
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return code;
}

void lt_err_clear(lt_err_t *err) {
  if (err) {
    err->code = LT_OK;
    err->msg[0] = '\0';
  }
}
