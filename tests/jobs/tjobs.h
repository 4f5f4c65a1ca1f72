/* Test support for runners driven in process (jobs/job_local.h): reading their events and result values.
 * Header only: the other test binaries, which share tests/support/, do not link the jobs layer. */
#ifndef LATHE_TJOBS_H
#define LATHE_TJOBS_H

#include <criterion/criterion.h>
#include <stddef.h>
#include <stdint.h>

#include "jobs/job_local.h"

/* The data map of the first event of type `type` of the last run, or NULL; owned by l. */
static inline const msgpack_object *tjobs_first_event(const job_local_t *l, const char *type) {
  for (size_t i = 0; i < job_local_event_count(l); i++) {
    const msgpack_object *e = job_local_event(l, i);
    if (mp_str_is(mp_get(e, "type"), type)) return mp_get(e, "data");
  }
  return NULL;
}

/* The number of events of type `type` of the last run. */
static inline size_t tjobs_count_events(const job_local_t *l, const char *type) {
  size_t n = 0;
  for (size_t i = 0; i < job_local_event_count(l); i++) n += mp_str_is(mp_get(job_local_event(l, i), "type"), type);
  return n;
}

/* A msgpack number (integer or float) as a double; asserts it is one. */
static inline double tjobs_num(const msgpack_object *o) {
  cr_assert(o);
  if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32) return o->via.f64;
  int64_t i = 0;
  cr_assert(mp_as_int(o, &i));
  return (double)i;
}

#endif
