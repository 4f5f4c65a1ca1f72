#include "jobs/runners.h"

/* The runners in the order of the kind table (jobs/kinds.def). */
static const kind_run_fn runners[] = {
#define P(...)
#define KIND(name, policy, validate, summary, params) run_##name,
#include "jobs/kinds.def"
#undef KIND
#undef P
};

kind_run_fn runner_for(const kind_t *k) {
  size_t i = (size_t)(k - kind_at(0));
  return i < sizeof runners / sizeof runners[0] ? runners[i] : NULL;
}
