#version 450
// Embedding backward without atomics: rows[] lists the batch rows grouped by token id (ascending rows within a
// group), start[u] where group u begins; one invocation per (group, column) adds its rows in order, so the sum is
// the same on every run. A group holds at most the wrapper's loop budget of rows (larger ones are split into
// several dispatches).
#define PC_EMBED_BW 1
#include "pc.h"
#include "common.glsl"

layout(std430, binding = 0) buffer DT { float dtable[]; };
layout(std430, binding = 1) readonly buffer DY { float dy[]; };
layout(std430, binding = 2) readonly buffer IDS { int ids[]; };   // the group's token id
layout(std430, binding = 3) readonly buffer RW { int rows[]; };   // batch rows, grouped
layout(std430, binding = 4) readonly buffer ST { int start[]; };  // [n_unique + 1]

void main() {
  uint i = flat_index();
  if (i >= pc.n_unique * pc.dim) return;
  uint u = i / pc.dim, c = i - u * pc.dim;
  int id = ids[u];
  if (id < 0 || uint(id) >= pc.table_rows) return;
  float s = 0.0;
  for (int j = start[u]; j < start[u + 1u]; j++) s += dy[uint(rows[j]) * pc.dim + c];
  dtable[uint(id) * pc.dim + c] += s;
}
