/* Knobs of the row-wise ops (engine/ops/ops_rows.c) for tests and benchmarks; the ops themselves are in ops.h. */
#ifndef LATHE_OPS_ROWS_H
#define LATHE_OPS_ROWS_H

#include <stdbool.h>
#include <stdint.h>

/* Most loop iterations one invocation of a row kernel may run, over all its loops: a quarter of the ~65,535
 * after which lavapipe silently stops a shader's loops. Wider rows get bigger workgroups, then are refused. */
#define ROWS_MAX_ITERS 16384u

/* Process-wide: true makes later row ops use the shared-memory tree reductions even where subgroup arithmetic
 * exists (so tests cover both paths); false (the default) lets them use subgroups. */
void op_rows_force_tree(bool on);

/* The workgroup size (a power of two) the row ops use for rows of n loads (floats, or vec4s on the vec4 path)
 * read `passes` times, starting from `preferred` on a device with these limits: smaller for narrow rows, larger
 * for wide ones; 0 when no size keeps each invocation within ROWS_MAX_ITERS loop iterations. */
uint32_t op_rows_wg(uint32_t n, uint32_t passes, uint32_t preferred, uint32_t max_invocations, uint32_t max_shared);

#endif
