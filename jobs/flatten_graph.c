/* The `flatten-graph` kind: an edge list becomes a DAG's source-to-sink paths and their text form (CPU only; the
 * rules are in methods/graph.h and docs/data-jobs.md). Writes flat.txt (the text) and flat.json (everything) to
 * the job's folder and sends one output record {paths, text, ...}. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "common/fsout.h"
#include "engine/text/jsonl.h"
#include "methods/graph.h"
#include "jobs/runners.h"

/* Bytes of node names listed in the output record's sources and sinks (the full lists are in flat.json): an
 * output record must fit in one protocol message. */
#define ENDPOINT_LIST_BYTES (64u << 10)

static void on_read(void *ctx, uint64_t done, uint64_t total) { job_progress(ctx, done, total, "bytes"); }

/* Adds the names of ids[n] to the output record as a list under key, up to budget bytes; returns how many. */
static uint32_t output_names(job_ctx_t *ctx, const graph_t *g, const char *key, const uint32_t *ids, uint32_t n,
                             size_t budget) {
  job_output_list_begin(ctx, key);
  uint32_t i = 0;
  for (size_t used = 0; i < n; i++) {
    size_t len;
    const char *name = graph_node_name(g, ids[i], &len);
    if ((used += len) > budget) break;
    job_output_list_str(ctx, name);
  }
  job_output_list_end(ctx);
  return i;
}

static json_t *names_json(const graph_t *g, const uint32_t *ids, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; i < n; i++) {
    size_t len;
    const char *name = graph_node_name(g, ids[i], &len);
    json_array_append_new(a, json_stringn(name, len));
  }
  return a;
}

/* Writes flat.txt and flat.json into the job's folder. */
static lt_status_t write_files(job_ctx_t *ctx, const graph_t *g, const graph_flat_t *f, lt_err_t *err) {
  char path[4200];
  snprintf(path, sizeof path, "%s/flat.txt", job_dir(ctx));
  util_out_t t;
  if (util_out_open(&t, path, 0644, err) != LT_OK) return LT_E_IO;
  if (fwrite(f->text, 1, f->text_len, t.f) != f->text_len) {
    util_out_abort(&t);
    return lt_fail(err, LT_E_IO, "cannot write %s", path);
  }
  if (util_out_commit(&t, err) != LT_OK) return LT_E_IO;
  json_t *o = json_object(), *paths = json_array();
  for (size_t p = 0; p < f->n_paths; p++)
    json_array_append_new(paths,
                          names_json(g, f->path_nodes + f->path_start[p], f->path_start[p + 1] - f->path_start[p]));
  json_object_set_new(o, "paths", paths);
  json_object_set_new(o, "text", json_stringn(f->text, f->text_len));
  json_object_set_new(o, "sources", names_json(g, f->sources, f->n_sources));
  json_object_set_new(o, "sinks", names_json(g, f->sinks, f->n_sinks));
  json_object_set_new(o, "total_paths",
                      f->total_paths > INT64_MAX ? json_real((double)f->total_paths)
                                                 : json_integer((json_int_t)f->total_paths));
  json_object_set_new(o, "truncated", json_boolean(f->truncated));
  json_object_set_new(o, "note", json_string(f->note));
  snprintf(path, sizeof path, "%s/flat.json", job_dir(ctx));
  lt_status_t st = jsonl_write_file(path, o, JSON_COMPACT | JSON_PRESERVE_ORDER, err);
  json_decref(o);
  if (st != LT_OK) return st;
  job_artifact(ctx, "text", "flat.txt");
  job_artifact(ctx, "paths", "flat.json");
  return LT_OK;
}

job_outcome_t run_flatten_graph(job_ctx_t *ctx, lt_err_t *err) {
  const char *in = job_param_str(ctx, "input"), *fs = job_param_str(ctx, "format");
  graph_format_t fmt = !strcmp(fs, "jsonl") ? GRAPH_JSONL : !strcmp(fs, "csv") ? GRAPH_CSV : GRAPH_AUTO;
  graph_limits_t lim = {.max_nodes = (uint32_t)job_param_int(ctx, "max_nodes"),
                        .max_edges = (uint32_t)job_param_int(ctx, "max_edges")};
  graph_flat_opts_t o = {.max_paths = (uint32_t)job_param_int(ctx, "max_paths"),
                         .max_bytes = (size_t)job_param_int(ctx, "max_bytes")};
  graph_t *g = graph_new(&lim);
  graph_flat_t f = {0};
  job_outcome_t out = JOB_FAILED;
  if (!g) {
    lt_fail(err, LT_E_NOMEM, "out of memory");
    return JOB_FAILED;
  }
  if (graph_read(g, in, fmt, job_param_bool(ctx, "directed"), on_read, ctx, err) != LT_OK) goto done;
  job_stop_t stop = job_should_stop(ctx);
  if (stop != JOB_GO) {
    out = stop == JOB_STOP_CANCEL ? JOB_CANCELLED : JOB_STOPPED;
    goto done;
  }
  if (graph_flatten(g, &o, &f, err) != LT_OK) goto done;
  job_log(ctx,
          "%u nodes, %llu edges read; the DAG keeps %llu (%llu undirected oriented, %llu repeats dropped, %llu "
          "back edges removed); %u sources, %u sinks; %zu of %s%llu paths listed",
          f.n_nodes, (unsigned long long)graph_n_edges(g), (unsigned long long)f.n_edges,
          (unsigned long long)f.n_undirected, (unsigned long long)f.n_duplicates, (unsigned long long)f.n_back_edges,
          f.n_sources, f.n_sinks, f.n_paths, f.total_paths == UINT64_MAX ? "at least " : "",
          (unsigned long long)f.total_paths);
  if (f.truncated) job_log(ctx, "capped: %s", f.note);
  if (write_files(ctx, g, &f, err) != LT_OK) goto done;
  job_output_begin(ctx);
  job_output_list_begin(ctx, "paths");
  for (size_t p = 0; p < f.n_paths; p++) {
    job_output_list_begin(ctx, NULL);
    for (size_t i = f.path_start[p]; i < f.path_start[p + 1]; i++)
      job_output_list_str(ctx, graph_node_name(g, f.path_nodes[i], NULL));
    job_output_list_end(ctx);
  }
  job_output_list_end(ctx);
  job_output_str(ctx, "text", f.text);
  uint32_t ns = output_names(ctx, g, "sources", f.sources, f.n_sources, ENDPOINT_LIST_BYTES);
  uint32_t nk = output_names(ctx, g, "sinks", f.sinks, f.n_sinks, ENDPOINT_LIST_BYTES);
  job_output_int(ctx, "n_sources", f.n_sources);
  job_output_int(ctx, "n_sinks", f.n_sinks);
  if (f.total_paths > INT64_MAX)
    job_output_float(ctx, "total_paths", (double)f.total_paths);
  else
    job_output_int(ctx, "total_paths", (int64_t)f.total_paths);
  job_output_bool(ctx, "truncated", f.truncated);
  if (f.truncated) job_output_str(ctx, "note", f.note);
  job_output_end(ctx);
  if (ns < f.n_sources || nk < f.n_sinks)
    job_log(ctx, "the output lists %u of %u sources and %u of %u sinks; flat.json has them all", ns, f.n_sources, nk,
            f.n_sinks);
  job_result_int(ctx, "nodes", f.n_nodes);
  job_result_int(ctx, "edges", (int64_t)f.n_edges);
  job_result_int(ctx, "back_edges", (int64_t)f.n_back_edges);
  job_result_int(ctx, "paths", (int64_t)f.n_paths);
  job_result_int(ctx, "truncated", f.truncated);
  out = JOB_SUCCEEDED;
done:
  graph_flat_free(&f);
  graph_destroy(&g);
  return out;
}
