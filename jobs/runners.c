#include "jobs/runners.h"

#include <string.h>

static const struct {
  const char *name;
  kind_run_fn run;
} runners[] = {
#define P(...)
#define KIND(name, policy, gpu, validate, summary, params) {#name, run_##name},
#include "jobs/kinds.def"
#undef KIND
#undef P
};

kind_run_fn runner_for(const kind_t *k) {
  for (size_t i = 0; i < sizeof runners / sizeof runners[0]; i++)
    if (strcmp(runners[i].name, k->name) == 0) return runners[i].run;
  return NULL;
}
