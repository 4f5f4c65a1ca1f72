/* Hostile input over the real socket: every malformed message gets an error reply with a stable code and the
 * field it concerns, nothing allocates what a header merely declares, and the daemon keeps serving. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/kind.h"
#include "td.h"

static td_t t;
static lc_t *c;

static void setup(void) {
  memset(&t, 0, sizeof t);
  td_start(&t, NULL);
  c = td_client(&t);
}
static void teardown(void) {
  lc_destroy(&c);
  td_cleanup(&t);
}

TestSuite(hostile, .init = setup, .fini = teardown, .timeout = 60);

/* Sends bytes and returns the reply's error code (asserting the reply says ok: false). */
static proto_code_t reject(const void *buf, size_t n, char *field, size_t field_n) {
  lt_err_t err = {0};
  cr_assert_eq(lc_send_raw(c, buf, n, &err), LT_OK, "%s", err.msg);
  mp_doc_t *d = lc_recv_reply(c, 5000, &err);
  cr_assert_not_null(d, "no reply to %zu hostile bytes: %s", n, err.msg);
  const msgpack_object *m = mp_doc_root(d), *ok = mp_get(m, "ok");
  cr_assert(ok && ok->type == MSGPACK_OBJECT_BOOLEAN && !ok->via.boolean, "hostile input accepted");
  char code[32] = "";
  cr_assert(mp_str_copy(mp_get(m, "code"), code, sizeof code));
  cr_assert(mp_get(m, "msg"), "every error has a message");
  if (field && !mp_str_copy(mp_get(m, "field"), field, field_n)) field[0] = '\0';
  mp_doc_destroy(&d);
  return proto_code_parse(code);
}

static void expect(mpw_t *w, proto_code_t want, const char *want_field) {
  char field[96];
  proto_code_t got = reject(w->sb.data, w->sb.size, field, sizeof field);
  mpw_free(w);
  cr_assert_eq(got, want, "got %s, want %s", proto_code_str(got), proto_code_str(want));
  if (want_field) cr_assert_str_eq(field, want_field);
}

static void still_serving(void) {
  mpw_t w;
  lc_begin(c, &w, "ping");
  lt_err_t err = {0};
  mp_doc_t *d = lc_call(c, &w, NULL, &err);
  cr_assert_not_null(d, "the daemon stopped answering: %s", err.msg);
  mp_doc_destroy(&d);
}

/* A request map with v and op, left open for more fields. */
static void req(mpw_t *w, const char *op) {
  mpw_init(w);
  mpw_map(w);
  mpw_kint(w, "v", PROTO_VERSION);
  mpw_kstr(w, "op", op);
}

/* A submit of a sleep job of `steps` steps, its params map left open for more fields. */
static void sleep_submit(mpw_t *w, int64_t steps) {
  req(w, "submit");
  mpw_kstr(w, "kind", "sleep");
  mpw_str(w, "params");
  mpw_map(w);
  mpw_kint(w, "steps", steps);
}

static long rss_kb(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb;
}

Test(hostile, random_bytes) {
  uint64_t s = 0x9e3779b97f4a7c15ULL;
  for (int i = 0; i < 300; i++) {
    uint8_t buf[256];
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    size_t n = 1 + s % sizeof buf;
    for (size_t k = 0; k < n; k++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      buf[k] = (uint8_t)s;
    }
    proto_code_t code = reject(buf, n, NULL, 0);
    cr_assert(code != P_OK && code != P_INTERNAL, "random message %d got %s", i, proto_code_str(code));
  }
  still_serving();
}

Test(hostile, truncated_at_every_length) {
  mpw_t w;
  sleep_submit(&w, 100000);
  mpw_kstr(&w, "message", "hello");
  mpw_end(&w);
  mpw_end(&w);
  for (size_t n = 1; n < w.sb.size; n++) {
    proto_code_t code = reject(w.sb.data, n, NULL, 0);
    /* A cut inside a container header's elements shows as a count larger than the bytes left. */
    cr_assert(code == P_TRUNCATED || code == P_TOO_MANY, "cut at %zu: %s", n, proto_code_str(code));
  }
  mpw_free(&w);
  still_serving();
}

Test(hostile, deep_nesting) {
  uint8_t deep[200];
  memset(deep, 0x91, sizeof deep - 1); /* arrays of one element, 199 deep */
  deep[sizeof deep - 1] = 0xc0;
  cr_assert_eq(reject(deep, sizeof deep, NULL, 0), P_TOO_DEEP);
  /* Nested inside a well-formed request: {v, op, kind, params: [[[[[[[[[[1]]]]]]]]]]} */
  static const uint8_t ten[] = {0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x01};
  mpw_t w;
  req(&w, "submit");
  mpw_kstr(&w, "kind", "sleep");
  mpw_str(&w, "params");
  mpw_raw(&w, ten, sizeof ten);
  mpw_end(&w);
  expect(&w, P_TOO_DEEP, NULL);
  still_serving();
}

Test(hostile, huge_declared_counts_allocate_nothing) {
  long before = rss_kb(t.pid);
  static const uint8_t array32[] = {0xdd, 0x80, 0x00, 0x00, 0x00, 0xc0}; /* 2^31 elements, one present */
  static const uint8_t map32[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v', 0x01};
  static const uint8_t nested[] = {0x81, 0xa1, 'x', 0xdd, 0x7f, 0xff, 0xff, 0xff};
  static const uint8_t str32[] = {0xdb, 0xff, 0xff, 0xff, 0xf0, 'a'};
  static const uint8_t bin32[] = {0xc6, 0x7f, 0xff, 0xff, 0xff};
  for (int i = 0; i < 50; i++) {
    cr_assert_eq(reject(array32, sizeof array32, NULL, 0), P_TOO_MANY);
    cr_assert_eq(reject(map32, sizeof map32, NULL, 0), P_TOO_MANY);
    cr_assert_eq(reject(nested, sizeof nested, NULL, 0), P_TOO_MANY);
    cr_assert_eq(reject(str32, sizeof str32, NULL, 0), P_TRUNCATED);
    cr_assert_eq(reject(bin32, sizeof bin32, NULL, 0), P_TRUNCATED);
  }
  long after = rss_kb(t.pid);
  cr_log_info("lathed RSS %ld kB before, %ld kB after 250 huge headers", before, after);
  cr_assert_lt(after - before, 20 * 1024, "the daemon grew by %ld kB", after - before);
  still_serving();
}

Test(hostile, wrong_types_and_values_name_the_field) {
  mpw_t w;
  mpw_init(&w), mpw_map(&w), mpw_kstr(&w, "v", "1"), mpw_kstr(&w, "op", "ping"), mpw_end(&w);
  expect(&w, P_BAD_TYPE, "v");
  mpw_init(&w), mpw_map(&w), mpw_kint(&w, "v", 2), mpw_kstr(&w, "op", "ping"), mpw_end(&w);
  expect(&w, P_BAD_VERSION, "v");
  mpw_init(&w), mpw_map(&w), mpw_kstr(&w, "op", "ping"), mpw_end(&w);
  expect(&w, P_BAD_VERSION, "v");
  mpw_init(&w), mpw_map(&w), mpw_kint(&w, "v", 1), mpw_kint(&w, "op", 5), mpw_end(&w);
  expect(&w, P_BAD_TYPE, "op");
  mpw_init(&w), mpw_map(&w), mpw_kint(&w, "v", 1), mpw_end(&w);
  expect(&w, P_MISSING_FIELD, "op");
  mpw_init(&w), mpw_map(&w), mpw_kint(&w, "v", 1), mpw_kint(&w, "rid", -1), mpw_kstr(&w, "op", "ping"), mpw_end(&w);
  expect(&w, P_OUT_OF_RANGE, "rid");
  req(&w, "launch_missiles"), mpw_end(&w);
  expect(&w, P_UNKNOWN_OP, "op");
  req(&w, "submit"), mpw_kint(&w, "kind", 7), mpw_end(&w);
  expect(&w, P_BAD_TYPE, "kind");
  req(&w, "submit"), mpw_kstr(&w, "kind", "nope"), mpw_end(&w);
  expect(&w, P_UNKNOWN_KIND, "kind");
  req(&w, "submit"), mpw_kstr(&w, "kind", "sleep"), mpw_str(&w, "params"), mpw_array(&w), mpw_end(&w), mpw_end(&w);
  expect(&w, P_BAD_TYPE, "params");
  req(&w, "submit"), mpw_kstr(&w, "kind", "sleep"), mpw_str(&w, "params"), mpw_map(&w), mpw_kstr(&w, "steps", "ten"),
      mpw_end(&w), mpw_end(&w);
  expect(&w, P_BAD_TYPE, "params.steps");
  req(&w, "submit"), mpw_kstr(&w, "kind", "sleep"), mpw_str(&w, "params"), mpw_map(&w), mpw_kint(&w, "steps", -5),
      mpw_end(&w), mpw_end(&w);
  expect(&w, P_OUT_OF_RANGE, "params.steps");
  req(&w, "submit"), mpw_kstr(&w, "kind", "sleep"), mpw_str(&w, "params"), mpw_map(&w), mpw_kint(&w, "bogus", 1),
      mpw_end(&w), mpw_end(&w);
  expect(&w, P_UNKNOWN_PARAM, "params.bogus");
  req(&w, "submit"), mpw_kstr(&w, "kind", "sleep"), mpw_str(&w, "params"), mpw_map(&w), mpw_kint(&w, "steps", 3),
      mpw_kint(&w, "fail", 7), mpw_end(&w), mpw_end(&w);
  expect(&w, P_OUT_OF_RANGE, "params.fail");
  req(&w, "submit"), mpw_kstr(&w, "kind", "sleep"), mpw_kstr(&w, "priority", "high"), mpw_end(&w);
  expect(&w, P_BAD_TYPE, "priority");
  req(&w, "show"), mpw_kstr(&w, "id", "x"), mpw_end(&w);
  expect(&w, P_BAD_TYPE, "id");
  req(&w, "show"), mpw_kint(&w, "id", 12345), mpw_end(&w);
  expect(&w, P_NOT_FOUND, "id");
  mpw_init(&w), mpw_array(&w), mpw_int(&w, 1), mpw_end(&w);
  expect(&w, P_NOT_A_MAP, NULL);
  static const uint8_t trailing[] = {0x80, 0xc0};
  cr_assert_eq(reject(trailing, sizeof trailing, NULL, 0), P_TRAILING);
  static const uint8_t ext[] = {0xd4, 0x01, 0x02};
  cr_assert_eq(reject(ext, sizeof ext, NULL, 0), P_BAD_MSGPACK);
  still_serving();
}

Test(hostile, oversize_and_multipart_frames) {
  size_t big = 2u << 20;
  char *buf = calloc(1, big);
  cr_assert_eq(reject(buf, big, NULL, 0), P_TOO_LARGE, "over the answer limit: an error reply");
  const void *frames[2] = {"\x80", "\x80"};
  size_t ns[2] = {1, 1};
  cr_assert_eq(lc_send_frames(c, frames, ns, 2, NULL), LT_OK);
  lt_err_t err = {0};
  mp_doc_t *d = lc_recv_reply(c, 5000, &err);
  cr_assert_not_null(d, "%s", err.msg);
  cr_assert(mp_str_is(mp_get(mp_doc_root(d), "code"), "bad_frames"));
  mp_doc_destroy(&d);
  /* Past ZMQ_MAXMSGSIZE libzmq drops the connection before buffering the frame: no reply, the daemon lives. */
  lc_t *rude = td_client(&t);
  size_t huge = 20u << 20;
  char *hbuf = calloc(1, huge);
  cr_assert_eq(lc_send_raw(rude, hbuf, huge, NULL), LT_OK);
  cr_assert_null(lc_recv_reply(rude, 1000, &err), "no reply to a frame over the hard limit");
  lc_destroy(&rude);
  free(hbuf);
  free(buf);
  still_serving();
}

/* Parameters just under the message limit fit a submit but not the worker's run message (which adds the job's
 * folder): they are refused at submit naming params, nothing is queued, and a job just under the parameter limit
 * runs. */
/* generate's params {model, prompt: [...], max_tokens: 1} as msgpack, the prompts of PROTO_MAX_STR bytes each
 * (the most a string may hold) but the last, of `last` bytes, KIND_MAX_LIST - 1 of them. */
static void big_prompts(mpw_t *w, size_t last) {
  static char text[PROTO_MAX_STR + 1];
  memset(text, 'a', PROTO_MAX_STR);
  mpw_init(w);
  mpw_map(w);
  mpw_kstr(w, "model", LATHE_SOURCE_DIR "/models/lathe-kjv-llama");
  mpw_str(w, "prompt");
  mpw_array(w);
  for (int i = 0; i < KIND_MAX_LIST - 1; i++) {
    text[i + 1 < KIND_MAX_LIST - 1 ? PROTO_MAX_STR : last] = '\0';
    mpw_str(w, text);
  }
  mpw_end(w);
  mpw_kint(w, "max_tokens", 1);
  mpw_end(w);
}

/* Parameters just under the message limit fit a submit but not the worker's run message, which adds the job's
 * folder and kind: they are refused at submit naming params, and nothing is queued. Smaller ones are accepted and
 * start. */
Test(hostile, parameters_that_cannot_reach_the_worker_are_refused_at_submit) {
  mpw_t w;
  big_prompts(&w, PROTO_MAX_STR);
  cr_assert(w.sb.size > PROTO_MAX_MSG - 8192 && w.sb.size < PROTO_MAX_MSG, "%zu bytes", w.sb.size);
  proto_err_t pe = {0};
  lt_err_t err = {0};
  int64_t id = lc_submit(c, "generate", w.sb.data, w.sb.size, NULL, 0, false, NULL, &pe, &err);
  mpw_free(&w);
  cr_assert_eq(id, 0, "accepted");
  cr_assert_eq(pe.code, P_TOO_LARGE, "%s %s", pe.msg, err.msg);
  cr_assert_str_eq(pe.field, "params");
  cr_assert(strstr(pe.msg, "may take at most"), "%s", pe.msg);
  /* 8 KiB less: accepted, and it starts; its id 1 shows that nothing was queued before it. */
  big_prompts(&w, 0);
  id = lc_submit(c, "generate", w.sb.data, w.sb.size, NULL, 0, false, NULL, &pe, &err);
  mpw_free(&w);
  cr_assert_eq(id, 1, "%s %s", pe.msg, err.msg);
  td_wait_state(c, id, "running", 10000);
  /* `show` of it fits a reply: the parameters are left out with their size. */
  mp_doc_t *d = td_show(c, id);
  const msgpack_object *job = mp_get(mp_doc_root(d), "job");
  cr_assert_gt(td_int(job, "params_bytes"), 1000000);
  cr_assert_eq(mp_get(job, "params")->type, MSGPACK_OBJECT_NIL);
  mp_doc_destroy(&d);
  still_serving();
}

/* One client pipelining hundreds of costly requests (each a `list` of 100 jobs, a reply of about 20 KiB) does not
 * stall another: three pings in a row from a second client each come back within a turn or two of the first
 * client's stream, long before that stream ends. (Each turn served up to 256 requests and sent their replies
 * together after its commit, so every ping waited for a whole batch of the other client's.) */
Test(hostile, a_pipelining_client_does_not_stall_the_others) {
  enum { JOBS = 100, LISTS = 800 };
  lc_t *p = td_client(&t);
  lt_err_t err = {0};
  for (int i = 0; i < JOBS; i++) {
    mpw_t w;
    sleep_submit(&w, 1);
    mpw_end(&w);
    mpw_kbool(&w, "hold", true);
    mpw_end(&w);
    cr_assert_eq(lc_send_raw(p, w.sb.data, w.sb.size, &err), LT_OK, "%s", err.msg);
    mpw_free(&w);
  }
  for (int i = 0; i < JOBS; i++) {
    mp_doc_t *d = lc_recv_reply(p, 10000, &err);
    cr_assert(d, "submit %d: %s", i, err.msg);
    cr_assert(mp_get(mp_doc_root(d), "id"), "submit %d was refused", i);
    mp_doc_destroy(&d);
  }
  mpw_t w;
  req(&w, "list");
  mpw_end(&w);
  for (int i = 0; i < LISTS; i++) cr_assert_eq(lc_send_raw(p, w.sb.data, w.sb.size, &err), LT_OK, "%s", err.msg);
  mpw_free(&w);
  mp_doc_t *d = lc_recv_reply(p, 10000, &err);
  cr_assert(d, "first list: %s", err.msg);
  cr_assert_eq(mp_get(mp_doc_root(d), "jobs")->via.array.size, JOBS);
  mp_doc_destroy(&d);
  int got = 1;
  for (int i = 0; i < 3; i++) still_serving();
  while ((d = lc_recv_reply(p, 0, &err))) got++, mp_doc_destroy(&d);
  cr_log_info("the pings came back after %d of the other client's %d replies", got, LISTS);
  cr_assert_lt(got, LISTS / 4, "the pings waited for %d of the other client's %d replies", got, LISTS);
  for (; got < LISTS; got++) {
    d = lc_recv_reply(p, 10000, &err);
    cr_assert(d, "list reply %d of %d: %s", got + 1, LISTS, err.msg);
    mp_doc_destroy(&d);
  }
  lc_destroy(&p);
}
