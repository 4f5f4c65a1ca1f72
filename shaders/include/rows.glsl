// Workgroup reductions and row access for the row-wise ops (one workgroup per row). Include after common.glsl.
// VEC4 (set by the wrapper when the row width is a multiple of 4) makes row buffers vec4 arrays, so each load
// moves 16 bytes: declare row buffers with ROWS_T; a row of n floats is n / ROWS_W elements of ROWS_T.
// Every helper must be reached by the whole workgroup in uniform control flow: it contains barriers (and subgroup
// operations on the fast path) and returns the reduced value to every invocation. The shared-memory tree is the
// path that is always correct; HAS_SUBGROUP_ARITH selects subgroup reductions unless ROWS_NO_SUBGROUP is defined
// (tests use it to exercise the tree on devices that have subgroups).
#ifndef LATHE_ROWS_GLSL
#define LATHE_ROWS_GLSL

#if HAS_SUBGROUP_ARITH && !defined(ROWS_NO_SUBGROUP)
#define ROWS_SUBGROUP 1
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

#if VEC4
#define ROWS_T vec4
#define ROWS_W 4u
float rows_hsum(vec4 v) { return (v.x + v.y) + (v.z + v.w); }
float rows_hmax(vec4 v) { return max(max(v.x, v.y), max(v.z, v.w)); }
// Float j of the row starting at ROWS_T element base.
#define ROWS_AT(arr, base, j) arr[(base) + (j) / 4u][(j) % 4u]
#else
#define ROWS_T float
#define ROWS_W 1u
float rows_hsum(float v) { return v; }
float rows_hmax(float v) { return v; }
#define ROWS_AT(arr, base, j) arr[(base) + (j)]
#endif

// Partials: one per invocation on the tree path, one per subgroup on the subgroup path.
shared vec4 rows_red[WG_X];
shared uvec2 rows_pair[WG_X]; // (key, index) for wg_argmax

#define ROWS_NEG_INF uintBitsToFloat(0xff800000u)
#define ROWS_NAN uintBitsToFloat(0x7fc00000u)

// Index of the row this workgroup handles (rows beyond 65535 use the y dimension of the grid).
uint row_id() { return gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x; }

// Smallest power of two >= WG_X, halved: the first stride of a tree that works for any workgroup size.
uint rows_tree_start() {
  uint p = 1u;
  while (p < WG_X) p <<= 1;
  return p >> 1;
}

// Sum of v over the workgroup, componentwise.
vec4 wg_sum4(vec4 v) {
  uint t = gl_LocalInvocationID.x;
#ifdef ROWS_SUBGROUP
  v = subgroupAdd(v);
  if (subgroupElect()) rows_red[gl_SubgroupID] = v;
  barrier();
  vec4 s = vec4(0.0);
  for (uint i = gl_SubgroupInvocationID; i < gl_NumSubgroups; i += gl_SubgroupSize) s += rows_red[i];
  s = subgroupAdd(s);
#else
  rows_red[t] = v;
  barrier();
  for (uint h = rows_tree_start(); h > 0u; h >>= 1) {
    if (t < h && t + h < WG_X) rows_red[t] += rows_red[t + h];
    barrier();
  }
  vec4 s = rows_red[0];
#endif
  barrier(); // everyone has read the partials before the next reduction overwrites them
  return s;
}

float wg_sum(float v) { return wg_sum4(vec4(v, 0.0, 0.0, 0.0)).x; }

// Maximum of v over the workgroup (v must not be NaN).
float wg_max(float v) {
  uint t = gl_LocalInvocationID.x;
#ifdef ROWS_SUBGROUP
  v = subgroupMax(v);
  if (subgroupElect()) rows_red[gl_SubgroupID].x = v;
  barrier();
  float m = ROWS_NEG_INF;
  for (uint i = gl_SubgroupInvocationID; i < gl_NumSubgroups; i += gl_SubgroupSize) m = max(m, rows_red[i].x);
  m = subgroupMax(m);
#else
  rows_red[t].x = v;
  barrier();
  for (uint h = rows_tree_start(); h > 0u; h >>= 1) {
    if (t < h && t + h < WG_X) rows_red[t].x = max(rows_red[t].x, rows_red[t + h].x);
    barrier();
  }
  float m = rows_red[0].x;
#endif
  barrier();
  return m;
}

// An order-preserving unsigned key of a float: larger floats give larger keys, -0 and +0 share a key and NaN
// gets 0, below every number (so NaN never wins a maximum over numbers).
uint rows_key(float v) {
  uint b = floatBitsToUint(v);
  if (isnan(v)) return 0u;
  if ((b & 0x7fffffffu) == 0u) b = 0u;
  return (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
}

// True when (key a, index ia) comes before (key b, index ib) in the order "larger value first, lower index first".
bool rows_before(uint a, uint ia, uint b, uint ib) { return a > b || (a == b && ia < ib); }

// Folds element (v, i) into the best pair (bk, bi) so far, considering only elements that come after (pk, pi)
// in the order of rows_before() (pk = 0xffffffff: every element).
void rows_consider(float v, uint i, uint pk, uint pi, inout uint bk, inout uint bi) {
  uint k = rows_key(v);
  bool after = k < pk || (k == pk && i > pi);
  if (after && rows_before(k, i, bk, bi)) {
    bk = k;
    bi = i;
  }
}

// rows_consider() for every float of row element v, whose first float has index i0 (no loop: lavapipe counts
// loop iterations).
void rows_consider_t(ROWS_T v, uint i0, uint pk, uint pi, inout uint bk, inout uint bi) {
#if VEC4
  rows_consider(v.x, i0, pk, pi, bk, bi);
  rows_consider(v.y, i0 + 1u, pk, pi, bk, bi);
  rows_consider(v.z, i0 + 2u, pk, pi, bk, bi);
  rows_consider(v.w, i0 + 3u, pk, pi, bk, bi);
#else
  rows_consider(v, i0, pk, pi, bk, bi);
#endif
}

// The first (key, index) pair over the workgroup in the order of rows_before(); idx 0xffffffff means "none".
void wg_argmax(inout uint key, inout uint idx) {
  uint t = gl_LocalInvocationID.x;
#ifdef ROWS_SUBGROUP
  uint k = subgroupMax(key);
  uint i = subgroupMin(key == k ? idx : 0xffffffffu);
  if (subgroupElect()) rows_pair[gl_SubgroupID] = uvec2(k, i);
  barrier();
  uvec2 b = uvec2(0u, 0xffffffffu);
  for (uint j = gl_SubgroupInvocationID; j < gl_NumSubgroups; j += gl_SubgroupSize)
    if (rows_before(rows_pair[j].x, rows_pair[j].y, b.x, b.y)) b = rows_pair[j];
  key = subgroupMax(b.x);
  idx = subgroupMin(b.x == key ? b.y : 0xffffffffu);
#else
  rows_pair[t] = uvec2(key, idx);
  barrier();
  for (uint h = rows_tree_start(); h > 0u; h >>= 1) {
    if (t < h && t + h < WG_X) {
      uvec2 o = rows_pair[t + h], m = rows_pair[t];
      if (rows_before(o.x, o.y, m.x, m.y)) rows_pair[t] = o;
    }
    barrier();
  }
  key = rows_pair[0].x;
  idx = rows_pair[0].y;
#endif
  barrier();
}

#endif
