/* EEDP graph flattening: known graphs give the documented text, cycles and undirected edges are handled as
 * documented, and huge or hostile inputs stop at a cap with a message naming it. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "methods/graph.h"
#include "support/tdata.h"

TestSuite(graph, .fini = tdata_cleanup, .timeout = 30);

/* Reads text (written to a file named name) and flattens it with the given caps; asserts success. */
static void flatten(const char *name, const char *text, const graph_flat_opts_t *o, graph_flat_t *out) {
  lt_err_t err = {0};
  graph_t *g = graph_new(NULL);
  cr_assert_not_null(g);
  cr_assert_eq(graph_read(g, tdata_file(name, text, 0), GRAPH_AUTO, true, NULL, NULL, &err), LT_OK, "%s", err.msg);
  cr_assert_eq(graph_flatten(g, o, out, &err), LT_OK, "%s", err.msg);
  graph_destroy(&g);
}

/* Asserts that text (a file named name) flattens to exactly want, without a cap. */
static void expect_text(const char *name, const char *text, const char *want) {
  graph_flat_t f;
  flatten(name, text, NULL, &f);
  cr_assert_str_eq(f.text, want, "%s: got\n%s\nwant\n%s", name, f.text, want);
  cr_assert_eq(f.text_len, strlen(want));
  cr_assert_not(f.truncated, "%s: %s", name, f.note);
  graph_flat_free(&f);
}

Test(graph, chain) { expect_text("chain.csv", "a,b\nb,c\nc,d\n", "a -> b -> c -> d\n"); }

Test(graph, tree_merges_shared_prefixes) { expect_text("tree.csv", "r,a\nr,b\na,x\na,y\n", "r -> [a -> [x, y], b]\n"); }

Test(graph, diamond_lists_both_paths) { expect_text("diamond.csv", "a,b\na,c\nb,d\nc,d\n", "a -> [b -> d, c -> d]\n"); }

Test(graph, cycle_loses_its_back_edge) {
  graph_flat_t f;
  flatten("cycle.csv", "a,b\nb,c\nc,a\n", NULL, &f);
  cr_assert_str_eq(f.text, "a -> b -> c\n");
  cr_assert_eq(f.n_back_edges, 1);
  cr_assert_eq(f.n_edges, 2);
  graph_flat_free(&f);
  /* The search starts at the node seen first: entered at x, the back edge is b -> a. */
  expect_text("cycle2.csv", "x,a\na,b\nb,a\nb,y\n", "x -> a -> b -> y\n");
  /* A self-loop is a back edge too. */
  flatten("loop.csv", "a,a\na,b\n", NULL, &f);
  cr_assert_str_eq(f.text, "a -> b\n");
  cr_assert_eq(f.n_back_edges, 1);
  graph_flat_free(&f);
}

Test(graph, disconnected_one_line_per_source) {
  graph_flat_t f;
  flatten("parts.csv", "a,b\nc,d\ne,e\nf,d\n", NULL, &f);
  cr_assert_str_eq(f.text, "a -> b\nc -> d\ne\nf -> d\n", "%s", f.text);
  cr_assert_eq(f.n_sources, 4);
  cr_assert_eq(f.n_sinks, 3);
  cr_assert_eq(f.n_paths, 4);
  cr_assert_eq(f.total_paths, 4);
  graph_flat_free(&f);
}

Test(graph, paths_are_node_lists_in_order) {
  graph_flat_t f;
  lt_err_t err = {0};
  graph_t *g = graph_new(NULL);
  cr_assert_eq(graph_read(g, tdata_file("d.csv", "a,b\na,c\nb,d\nc,d\n", 0), GRAPH_CSV, true, NULL, NULL, &err), LT_OK);
  cr_assert_eq(graph_flatten(g, NULL, &f, &err), LT_OK);
  const char *want[2][3] = {{"a", "b", "d"}, {"a", "c", "d"}};
  cr_assert_eq(f.n_paths, 2);
  for (size_t p = 0; p < 2; p++) {
    cr_assert_eq(f.path_start[p + 1] - f.path_start[p], 3);
    for (size_t i = 0; i < 3; i++)
      cr_assert_str_eq(graph_node_name(g, f.path_nodes[f.path_start[p] + i], NULL), want[p][i]);
  }
  cr_assert_eq(f.n_sources, 1);
  cr_assert_str_eq(graph_node_name(g, f.sources[0], NULL), "a");
  cr_assert_str_eq(graph_node_name(g, f.sinks[0], NULL), "d");
  graph_flat_free(&f);
  graph_destroy(&g);
}

Test(graph, undirected_edges_point_away_from_the_node_seen_first) {
  /* b is seen before c, so the undirected c,b is b -> c; a header may name the columns in any order. */
  expect_text("u.csv", "from,to,directed\na,b\nc,b,false\n", "a -> b -> c\n");
  expect_text("u2.csv", "directed,target,source\n,b,a\nfalse,b,c\n", "a -> b -> c\n");
  /* The same in JSONL, with source/target and integer names. */
  expect_text("u.jsonl", "{\"source\": 1, \"target\": 2}\n\n{\"from\": \"3\", \"to\": 2, \"directed\": false}\n",
              "1 -> 2 -> 3\n");
}

Test(graph, undirected_default_and_duplicates) {
  graph_flat_t f;
  lt_err_t err = {0};
  graph_t *g = graph_new(NULL);
  /* All edges undirected by default; the repeat b,a of a,b is dropped. */
  cr_assert_eq(graph_read(g,
                          tdata_file("g.jsonl",
                                     "{\"from\":\"a\",\"to\":\"b\"}\n{\"from\":\"b\",\"to\":\"a\"}\n"
                                     "{\"from\":\"c\",\"to\":\"b\",\"directed\":true}\n",
                                     0),
                          GRAPH_AUTO, false, NULL, NULL, &err),
               LT_OK, "%s", err.msg);
  cr_assert_eq(graph_flatten(g, NULL, &f, &err), LT_OK);
  cr_assert_str_eq(f.text, "a -> b\nc -> b\n", "%s", f.text);
  cr_assert_eq(f.n_undirected, 2);
  cr_assert_eq(f.n_duplicates, 1);
  graph_flat_free(&f);
  graph_destroy(&g);
}

Test(graph, csv_quoting_and_name_rendering) {
  /* A name with a comma, an arrow or a bracket is written as a JSON string in the text. */
  expect_text("q.csv", "\"Smith, J.\",\"x -> y\"\n\"x -> y\", [z] \n\"say \"\"hi\"\"\",plain name\n",
              "\"Smith, J.\" -> \"x -> y\" -> \"[z]\"\n\"say \\\"hi\\\"\" -> plain name\n");
  char buf[32];
  cr_assert_eq(graph_name_render("", 0, buf, sizeof buf), 2);
  cr_assert_str_eq(buf, "\"\"");
  cr_assert_eq(graph_name_render(" a", 2, buf, sizeof buf), 4);
  cr_assert_eq(graph_name_render("a-b>c", 5, buf, sizeof buf), 5, "a lone - or > needs no quotes");
  cr_assert_eq(graph_name_render("t\tab", 4, buf, sizeof buf), 7);
  cr_assert_str_eq(buf, "\"t\\tab\"");
}

Test(graph, bad_rows_name_the_line) {
  lt_err_t err = {0};
  graph_t *g = graph_new(NULL);
  cr_assert_eq(graph_read(g, tdata_file("bad.csv", "a,b\nc\n", 0), GRAPH_AUTO, true, NULL, NULL, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "bad.csv:2: expected from,to"), "%s", err.msg);
  cr_assert_eq(graph_read(g, tdata_file("bad.jsonl", "{\"from\":\"a\"}\n", 0), GRAPH_AUTO, true, NULL, NULL, &err),
               LT_E_INVALID);
  cr_assert(strstr(err.msg, "bad.jsonl:1: needs \"from\" and \"to\""), "%s", err.msg);
  cr_assert_eq(graph_read(g, tdata_file("bad2.csv", "a,\"b\n", 0), GRAPH_AUTO, true, NULL, NULL, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "unterminated"), "%s", err.msg);
  cr_assert_eq(graph_read(g, tdata_file("bad3.csv", "a,b,maybe\n", 0), GRAPH_AUTO, true, NULL, NULL, &err),
               LT_E_INVALID);
  cr_assert_eq(graph_read(g, "/nonexistent/graph.csv", GRAPH_AUTO, true, NULL, NULL, &err), LT_E_IO);
  graph_destroy(&g);
}

/* A complete DAG on n nodes (i -> j for every i < j): 2^(n-2) paths from node 0 to node n-1. */
static char *complete_dag(int n) {
  size_t cap = (size_t)n * (size_t)n * 16, o = 0;
  char *s = malloc(cap);
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) o += (size_t)snprintf(s + o, cap - o, "n%d,n%d\n", i, j);
  return s;
}

Test(graph, exponentially_many_paths_stop_at_max_paths) {
  char *s = complete_dag(40);
  graph_flat_t f;
  graph_flat_opts_t o = {.max_paths = 100};
  flatten("dense.csv", s, &o, &f);
  cr_assert(f.truncated);
  cr_assert_eq(f.n_paths, 100);
  cr_assert_eq(f.total_paths, 1ull << 38);
  cr_assert(strstr(f.note, "listed the first 100 of 274877906944 paths (the max_paths cap)"), "%s", f.note);
  /* Depth first: the 100 paths share the chain n0 .. n32 and branch only near the sink. */
  cr_assert(strncmp(f.text, "n0 -> n1 -> n2 -> ", 18) == 0, "%.60s", f.text);
  cr_assert(strstr(f.text, "n32 -> [n33 -> [n34 -> ["), "%s", f.text);
  graph_flat_free(&f);
  free(s);
  /* 70 nodes: more paths than a uint64_t holds; the count saturates, the listing still stops at the cap. */
  s = complete_dag(70);
  graph_flat_opts_t wide = {.max_bytes = 1u << 20};
  flatten("denser.csv", s, &wide, &f);
  cr_assert_eq(f.total_paths, UINT64_MAX);
  cr_assert_eq(f.n_paths, GRAPH_DEF_MAX_PATHS);
  cr_assert(strstr(f.note, "of at least 18446744073709551615 paths"), "a saturated count is a bound: %s", f.note);
  graph_flat_free(&f);
  free(s);
}

Test(graph, long_chain_is_walked_without_recursion_and_capped_by_bytes) {
  int n = 90000;
  size_t cap = (size_t)n * 24, o = 0;
  char *s = malloc(cap);
  for (int i = 0; i + 1 < n; i++) o += (size_t)snprintf(s + o, cap - o, "node%d,node%d\n", i, i + 1);
  graph_flat_t f;
  flatten("chain.csv", s, NULL, &f);
  cr_assert(f.truncated, "one path of 90000 nodes is past the default byte cap");
  cr_assert_eq(f.n_paths, 0);
  cr_assert(strstr(f.note, "would pass the max_bytes cap of 262144 bytes"), "%s", f.note);
  graph_flat_free(&f);
  graph_flat_opts_t big = {.max_bytes = 4u << 20};
  flatten("chain.csv", s, &big, &f);
  cr_assert_not(f.truncated);
  cr_assert_eq(f.n_paths, 1);
  cr_assert_eq(f.path_start[1], (size_t)n);
  cr_assert(strncmp(f.text, "node0 -> node1 -> ", 18) == 0);
  graph_flat_free(&f);
  free(s);
}

Test(graph, node_edge_line_and_name_caps) {
  lt_err_t err = {0};
  graph_t *g = graph_new(&(graph_limits_t){.max_nodes = 10});
  cr_assert_eq(
      graph_read(g, tdata_file("n.csv", "a,b\nc,d\ne,f\ng,h\ni,j\nk,l\n", 0), GRAPH_AUTO, true, NULL, NULL, &err),
      LT_E_LIMIT);
  cr_assert(strstr(err.msg, "n.csv:6: more than 10 nodes (the max_nodes cap)"), "%s", err.msg);
  graph_destroy(&g);
  g = graph_new(&(graph_limits_t){.max_edges = 3});
  cr_assert_eq(graph_read(g, tdata_file("e.csv", "a,b\na,c\na,d\na,e\n", 0), GRAPH_AUTO, true, NULL, NULL, &err),
               LT_E_LIMIT);
  cr_assert(strstr(err.msg, "e.csv:4: more than 3 edges (the max_edges cap)"), "%s", err.msg);
  graph_destroy(&g);
  /* One line of 2 MiB without a newline: refused at 1 MiB, without reading it whole. */
  size_t big = 2u << 20;
  char *s = malloc(big + 1);
  memset(s, 'x', big);
  s[big] = '\0';
  g = graph_new(NULL);
  cr_assert_eq(graph_read(g, tdata_file("long.csv", s, big), GRAPH_AUTO, true, NULL, NULL, &err), LT_E_LIMIT);
  cr_assert(strstr(err.msg, "long.csv:1: line longer than 1048576 bytes"), "%s", err.msg);
  s[2000] = ',';
  s[4000] = '\n';
  cr_assert_eq(graph_read(g, tdata_file("name.csv", s, 4001), GRAPH_AUTO, true, NULL, NULL, &err), LT_E_INVALID);
  cr_assert(strstr(err.msg, "longer than 1024 bytes"), "%s", err.msg);
  graph_destroy(&g);
  free(s);
}
