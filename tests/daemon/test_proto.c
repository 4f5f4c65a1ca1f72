/* Unit checks of the decoder pre-pass and the kind table (no daemon). */
#include <string.h>

#include "td.h"

TestSuite(proto, .timeout = 10);

static proto_code_t check(const void *p, size_t n) {
  proto_err_t e = {0};
  return mp_check(p, n, PROTO_MAX_DEPTH, &e) ? P_OK : e.code;
}

Test(proto, prepass_limits) {
  cr_assert_eq(check("\x80", 1), P_OK);
  cr_assert_eq(check("\x92\x01\x02", 3), P_OK);
  cr_assert_eq(check("\x92\x01", 2), P_TOO_MANY, "two elements declared, one byte left");
  cr_assert_eq(check("\x92\x01\xcd\x01", 4), P_TRUNCATED);
  cr_assert_eq(check("\xdd\xff\xff\xff\xff", 5), P_TOO_MANY);
  cr_assert_eq(check("\xa5\x61", 2), P_TRUNCATED);
  cr_assert_eq(check("\xc1", 1), P_BAD_MSGPACK);
  cr_assert_eq(check("\x80\x80", 2), P_TRAILING);
  uint8_t deep[PROTO_MAX_DEPTH + 2];
  memset(deep, 0x91, sizeof deep);
  deep[PROTO_MAX_DEPTH] = 0xc0;
  cr_assert_eq(check(deep, PROTO_MAX_DEPTH + 1), P_OK, "exactly the limit is fine");
  deep[PROTO_MAX_DEPTH] = 0x91, deep[PROTO_MAX_DEPTH + 1] = 0xc0;
  cr_assert_eq(check(deep, PROTO_MAX_DEPTH + 2), P_TOO_DEEP);
}

Test(proto, defaults_fill_in_and_cli_flags_do_not_collide) {
  static const char *const reserved[] = {"json", "no_autostart", "socket",   "connect", "server_key",
                                         "key",  "help",         "priority", "hold",    "sid"};
  for (size_t i = 0; i < kind_count(); i++) {
    const kind_t *k = kind_at(i);
    for (size_t p = 0; p < k->n_params; p++)
      for (size_t r = 0; r < sizeof reserved / sizeof *reserved; r++)
        cr_assert_str_neq(k->params[p].key, reserved[r], "kind %s: parameter --%s is a CLI flag", k->name, reserved[r]);
    /* Required parameters get a plain value of their type; every default parses and validates. */
    mpw_t given, w;
    mpw_init(&given);
    mpw_init(&w);
    mpw_map(&given);
    size_t n_required = 0;
    for (size_t p = 0; p < k->n_params; p++) {
      const kind_param_t *q = &k->params[p];
      if (!q->required) continue;
      n_required++;
      mpw_str(&given, q->key);
      switch (q->type) {
      case KT_INT: mpw_int(&given, (int64_t)q->lo); break;
      case KT_FLOAT: mpw_double(&given, q->lo); break;
      case KT_BOOL: mpw_bool(&given, false); break;
      case KT_STR: mpw_str(&given, "x"); break;
      case KT_PATH: mpw_str(&given, "/x"); break;
      case KT_STRS: mpw_array(&given), mpw_str(&given, "x"), mpw_end(&given); break;
      }
    }
    mpw_end(&given);
    proto_err_t e = {0};
    mp_doc_t *g = mp_doc_parse(given.sb.data, given.sb.size, &e);
    /* Every default parses and passes its own checks. */
    for (size_t p = 0; p < k->n_params; p++) {
      if (k->params[p].required) continue;
      mpw_t one;
      mpw_init(&one);
      cr_assert(kind_parse_text(&k->params[p], k->params[p].def, &one, &e), "kind %s: default of --%s: %s", k->name,
                k->params[p].key, e.msg);
      mpw_free(&one);
    }
    if (kind_params_normalise(k, mp_doc_root(g), &w, &e)) {
      mp_doc_t *d = mp_doc_parse(w.sb.data, w.sb.size, &e);
      cr_assert_eq(mp_doc_root(d)->via.map.size, k->n_params, "every key is filled in");
      mp_doc_destroy(&d);
    } else {
      /* A kind's validator may refuse the placeholders (compress checks its method names; steer-eval wants one of
       * several optional parameters): it runs after every value was parsed, and names one of the kind's fields. */
      const char *f = e.field + (strncmp(e.field, "params.", 7) ? 0 : 7);
      cr_assert(kind_param_find(k, f) != NULL, "kind %s: %s", k->name, e.msg);
    }
    mpw_free(&w);
    /* Leaving a required parameter out is an error naming it. */
    if (n_required) {
      mpw_init(&w);
      cr_assert(!kind_params_normalise(k, NULL, &w, &e), "kind %s accepted no parameters", k->name);
      cr_assert(strstr(e.msg, "requires it") != NULL, "kind %s: %s", k->name, e.msg);
      mpw_free(&w);
    }
    mp_doc_destroy(&g);
    mpw_free(&given);
  }
}
