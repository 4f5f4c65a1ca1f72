/* Knobs of the row-wise ops (engine/ops/ops_rows.c) for tests and benchmarks; the ops themselves are in ops.h. */
#ifndef LATHE_OPS_ROWS_H
#define LATHE_OPS_ROWS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/ops/ops.h"

/* Process-wide: true makes later row ops use the shared-memory tree reductions even where subgroup arithmetic
 * exists (so tests cover both paths); false (the default) lets them use subgroups. */
void op_rows_force_tree(bool on);

/* The workgroup size (a power of two) row op id uses for rows of n loads (floats, or vec4s on the vec4 path) read
 * `passes` times on a device with these limits, starting from the op's table size: smaller for narrow rows, larger
 * for wide ones; 0 when no size keeps each invocation within the op's loop budget (engine/ops/ops.def). */
uint32_t op_rows_wg(op_id_t id, uint32_t n, uint32_t passes, uint32_t max_invocations, uint32_t max_shared);

#endif
