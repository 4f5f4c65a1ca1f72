/* EEDP graph flattening (CPU only): an edge list becomes a DAG, its source-to-sink paths, and a short text form
 * of those paths for prompts. The exact rules (orientation of undirected edges, which edges break cycles, the
 * order of paths, the text form and its quoting) are written down in docs/data-jobs.md; in short:
 *   - nodes are numbered in order of first appearance in the input;
 *   - an undirected edge is oriented from the node that appeared first to the other;
 *   - duplicate edges (same from and to after orientation) are kept once;
 *   - cycles are broken by removing the back edges of a depth-first search that starts from the nodes in order
 *     of appearance and follows out-edges in input order (a self-loop is such a back edge);
 *   - sources have in-degree 0, sinks out-degree 0 (an isolated node is both: a path of one node);
 *   - paths are enumerated source by source (in order of appearance), depth first, out-edges in input order;
 *   - the text has one line per source: the trie of its paths, `a -> b -> c`, with branches as
 *     `a -> [b -> d, c -> d]`.
 * Nothing here is bounded by the input alone: nodes, edges, name lengths, paths and output bytes are capped, and
 * the caps are reported with the limit that was hit. */
#ifndef LATHE_GRAPH_H
#define LATHE_GRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define GRAPH_DEF_MAX_NODES 100000u
#define GRAPH_DEF_MAX_EDGES 1000000u
#define GRAPH_MAX_NAME 1024u /* bytes in one node name */
#define GRAPH_DEF_MAX_PATHS 1000u
#define GRAPH_DEF_MAX_BYTES (256u << 10)

typedef struct graph graph_t;

/* Caps on what a graph may hold; zero fields take the defaults above. */
typedef struct graph_limits {
  uint32_t max_nodes;
  uint32_t max_edges;
} graph_limits_t;

typedef enum graph_format {
  GRAPH_AUTO = 0, /* by extension (.jsonl/.ndjson/.json: JSONL, .csv: CSV), else by the first non-blank byte */
  GRAPH_JSONL,    /* one object per line: {"from","to"} or {"source","target"}, optional "directed": bool */
  GRAPH_CSV,      /* from,to[,directed] with an optional header row; RFC 4180 quoting on one line */
} graph_format_t;

/* An empty graph with the given caps (NULL: defaults). Caller owns (graph_destroy); NULL when out of memory. */
graph_t *graph_new(const graph_limits_t *lim);

/* Frees the graph and sets *g to NULL; NULL-safe. */
void graph_destroy(graph_t **g);

/* Adds the edge from -> to (directed) or from -- to (undirected); names are byte strings of the given lengths.
 * LT_E_LIMIT when a cap would be passed, LT_E_INVALID for a name longer than GRAPH_MAX_NAME. */
lt_status_t graph_add_edge(graph_t *g, const char *from, size_t from_n, const char *to, size_t to_n, bool directed,
                           lt_err_t *err);

/* Told how far graph_read() got: bytes read of the file's size. */
typedef void (*graph_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/* Reads the edges of a JSONL or CSV file; edges that do not say whether they are directed take `directed`.
 * on_progress (may be NULL) is called every few thousand lines and at the end. Errors name the file and line. */
lt_status_t graph_read(graph_t *g, const char *path, graph_format_t fmt, bool directed, graph_progress_fn on_progress,
                       void *progress_ctx, lt_err_t *err);

/* Edges added so far (as given, before orientation and de-duplication). */
uint64_t graph_n_edges(const graph_t *g);

/* The name of node id (below the node count) and its length; owned by g. */
const char *graph_node_name(const graph_t *g, uint32_t id, size_t *len);

/* Caps on the flattening; zero fields take the defaults above. */
typedef struct graph_flat_opts {
  uint32_t max_paths; /* paths listed at most */
  size_t max_bytes;   /* the paths listed, written one per line unmerged, take at most this many bytes */
} graph_flat_opts_t;

/* The flattened graph. Caller owns (graph_flat_free). */
typedef struct graph_flat {
  size_t n_paths;       /* paths listed */
  uint32_t *path_nodes; /* their node ids back to back */
  size_t *path_start;   /* path i is path_nodes[path_start[i] .. path_start[i + 1]) */
  char *text;           /* the text form (NUL-terminated) */
  size_t text_len;
  uint64_t total_paths; /* source-to-sink paths of the DAG, saturating at UINT64_MAX */
  bool truncated;       /* fewer paths listed than the DAG has */
  char note[320];       /* why it was truncated, naming the cap; "" otherwise */
  uint32_t n_nodes, n_sources, n_sinks;
  uint32_t *sources, *sinks; /* node ids in order of appearance */
  uint64_t n_edges;          /* edges of the DAG */
  uint64_t n_undirected;     /* undirected edges oriented */
  uint64_t n_duplicates;     /* edges dropped as repeats */
  uint64_t n_back_edges;     /* edges removed to break cycles (self-loops included) */
} graph_flat_t;

/* Makes the DAG, finds its endpoints, lists its paths up to the caps and writes the text form into *out.
 * Running out of paths or bytes is not an error: out->truncated and out->note say so. */
lt_status_t graph_flatten(const graph_t *g, const graph_flat_opts_t *o, graph_flat_t *out, lt_err_t *err);

/* Frees what graph_flatten() put in f and zeroes it; NULL-safe. */
void graph_flat_free(graph_flat_t *f);

/* Writes name as it appears in the text form into buf (NUL-terminated, truncated to n) and returns the full
 * length: verbatim, or as a JSON string when it is empty, has surrounding spaces, a control character, or any
 * of `->`, `[`, `]`, `,`, `"`. */
size_t graph_name_render(const char *name, size_t len, char *buf, size_t n);

#endif
