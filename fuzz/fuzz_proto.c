/* libFuzzer target for the message decoder: the pre-pass, msgpack-c's unpacker behind it, the request field
 * readers and the kind schema check, exactly as lathed runs them on untrusted bytes.
 * Build: cmake -DLATHE_FUZZ=ON -S . -B build && cmake --build build --target fuzz_proto
 * Run:   build/bin/fuzz_proto -max_len=4096 fuzz/corpus */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/proto.h"
#include "jobs/kind.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  proto_err_t e;
  mp_doc_t *d = mp_doc_parse(data, size, &e);
  if (!d) return 0;
  const msgpack_object *m = mp_doc_root(d);
  int64_t v = 0, id = 0;
  char op[32], kind[32];
  bool follow = false;
  mp_field_int(m, "", "v", true, 0, INT64_MAX, &v, &e);
  mp_field_str(m, "", "op", true, op, sizeof op, &e);
  mp_field_int(m, "", "id", false, 1, INT64_MAX, &id, &e);
  mp_field_bool(m, "", "follow", false, &follow, &e);
  const msgpack_object *params = NULL;
  if (mp_field_str(m, "", "kind", true, kind, sizeof kind, &e) && mp_field_map(m, "", "params", false, &params, &e)) {
    const kind_t *k = kind_find(kind, strlen(kind));
    if (k) {
      mpw_t w;
      mpw_init(&w);
      kind_params_normalise(k, params, &w, &e);
      mpw_free(&w);
    }
  }
  /* Re-encoding what was decoded must give a message that decodes again. */
  mpw_t w;
  mpw_init(&w);
  mpw_obj(&w, m);
  mp_doc_t *again = mp_doc_parse(w.sb.data, w.sb.size, &e);
  if (!again && e.code != P_TOO_LARGE) __builtin_trap();
  mp_doc_destroy(&again);
  mpw_free(&w);
  mp_doc_destroy(&d);
  return 0;
}
