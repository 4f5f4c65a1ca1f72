/* The layering of the source tree (cmake/layers.cmake, run by every build): the real tree passes, and a tree where
 * an engine/gpu file includes from engine/model, or production code includes the CPU references, fails. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "support/tdata.h"

/* Runs the layer check on the tree at root; returns its exit status. */
static int check_tree(const char *root) {
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "'%s' -DROOT='%s' -P '%s/cmake/layers.cmake' >/dev/null 2>&1", LATHE_CMAKE, root,
           LATHE_SOURCE_DIR);
  int st = system(cmd);
  cr_assert_neq(st, -1);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Makes root/<dir> and writes root/<file> holding one include of header. */
static void write_file(const char *root, const char *dir, const char *file, const char *header) {
  char path[4096];
  snprintf(path, sizeof path, "mkdir -p '%s/%s'", root, dir);
  cr_assert_eq(system(path), 0);
  snprintf(path, sizeof path, "%s/%s", root, file);
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fprintf(f, "#include \"%s\"\nint x;\n", header);
  fclose(f);
}

TestSuite(layers, .fini = tdata_cleanup);

Test(layers, real_tree_passes) { cr_assert_eq(check_tree(LATHE_SOURCE_DIR), 0); }

Test(layers, downward_include_passes) {
  const char *root = tdata_dir();
  write_file(root, "engine/model", "engine/model/ok.c", "engine/gpu/gpu.h");
  write_file(root, "methods", "methods/ok.c", "engine/model/model.h");
  cr_assert_eq(check_tree(root), 0);
}

Test(layers, gpu_including_model_fails) {
  const char *root = tdata_dir();
  write_file(root, "engine/gpu", "engine/gpu/bad.c", "engine/model/model.h");
  cr_assert_neq(check_tree(root), 0);
}

Test(layers, text_including_model_fails) {
  const char *root = tdata_dir();
  write_file(root, "engine/text", "engine/text/bad.h", "engine/model/gguf.h");
  cr_assert_neq(check_tree(root), 0);
}

Test(layers, production_including_references_fails) {
  const char *root = tdata_dir();
  write_file(root, "engine/model", "engine/model/bad.c", "engine/ops/ref/ref.h");
  cr_assert_neq(check_tree(root), 0);
}
