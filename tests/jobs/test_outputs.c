/* Outputs are never written through a link someone planted: every writer creates a new file under a unique name in
 * the destination's folder and renames it into place (common/fsout.h), so a symbolic link at the destination is
 * replaced, not followed, and a link at the old predictable "<path>.tmp" is never touched; logs opened for
 * appending refuse a link. The victims' bytes are checked after each writer. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsout.h"
#include "common/util.h"
#include "engine/model/safetensors.h"
#include "engine/text/jsonl.h"
#include "jobs/plot.h"
#include "jobs/resume.h"

static char dir[] = "/tmp/lathe-outputs-XXXXXX";
static char victim[300];

static void setup(void) {
  strcpy(dir, "/tmp/lathe-outputs-XXXXXX");
  cr_assert(mkdtemp(dir));
  snprintf(victim, sizeof victim, "%s/victim", dir);
  FILE *f = fopen(victim, "w");
  cr_assert(f);
  fputs("precious\n", f);
  fclose(f);
}

static void teardown(void) { util_rm_rf(dir, NULL); }

TestSuite(outputs, .init = setup, .fini = teardown);

/* dir/name, made a symbolic link to the victim; and dir/name.tmp too. Returns dir/name in path. */
static void plant(const char *name, char *path, size_t n) {
  snprintf(path, n, "%s/%s", dir, name);
  cr_assert_eq(symlink(victim, path), 0);
  char tmp[400];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  cr_assert_eq(symlink(victim, tmp), 0);
}

/* The victim still holds its bytes, path is a regular file now, and no temporary is left in dir. */
static void check_safe(const char *path) {
  char buf[64] = {0};
  FILE *f = fopen(victim, "r");
  cr_assert(f);
  cr_assert(fgets(buf, sizeof buf, f));
  fclose(f);
  cr_assert_str_eq(buf, "precious\n", "the victim was written through a link");
  struct stat sb;
  cr_assert_eq(lstat(path, &sb), 0);
  cr_assert(S_ISREG(sb.st_mode), "%s is not a regular file", path);
  char cmd[400], out[64] = {0};
  snprintf(cmd, sizeof cmd, "ls -A %s | grep -c '^\\.' || true", dir);
  FILE *p = popen(cmd, "r");
  cr_assert(p && fgets(out, sizeof out, p));
  pclose(p);
  cr_assert_eq(atoi(out), 0, "a temporary file is left in %s", dir);
}

Test(outputs, the_writers_replace_a_planted_link_and_never_follow_it) {
  char path[300];
  lt_err_t err = {0};
  /* safetensors */
  plant("model.safetensors", path, sizeof path);
  float v[4] = {1, 2, 3, 4};
  ft_tensor_t t = {.name = "w", .dtype = FT_F32, .n_dims = 2, .shape = {2, 2}, .n_elems = 4, .nbytes = 16, .data = v};
  cr_assert_eq(st_write(path, &t, 1, NULL, 0, &err), LT_OK, "%s", err.msg);
  check_safe(path);
  /* JSON files (config.json, adapter_config.json, reports) */
  plant("config.json", path, sizeof path);
  json_t *j = json_pack("{s:i}", "hidden_size", 8);
  cr_assert_eq(jsonl_write_file(path, j, JSON_COMPACT, &err), LT_OK, "%s", err.msg);
  json_decref(j);
  check_safe(path);
  /* plots */
  plant("loss.svg", path, sizeof path);
  double y[3] = {3, 2, 1};
  plot_curve_t c = {"loss", y, 0};
  plot_spec_t spec = {.title = "t",
                      .subtitle = "s",
                      .xlabel = "step",
                      .ylabel = {"loss", NULL},
                      .n = 3,
                      .curves = &c,
                      .n_curves = 1,
                      .band_lo = -1,
                      .band_hi = -1,
                      .mark = -1};
  cr_assert_eq(plot_svg_write(path, &spec, &err), LT_OK, "%s", err.msg);
  check_safe(path);
  /* the resume state, and a log rewritten on resume */
  plant("tune.state", path, sizeof path);
  cr_assert_eq(resume_state_write(path, 7, "/x/checkpoint-7", &err), LT_OK, "%s", err.msg);
  check_safe(path);
  char ckpt[64];
  cr_assert_eq(resume_state_read(path, ckpt, sizeof ckpt), 7);
  /* CURVE keys: a secret one is 0600 */
  plant("client.key", path, sizeof path);
  cr_assert_eq(util_write_z85_key(path, "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", true, &err), LT_OK, "%s", err.msg);
  check_safe(path);
  struct stat sb;
  cr_assert_eq(stat(path, &sb), 0);
  cr_assert_eq(sb.st_mode & 0777, 0600);
}

Test(outputs, a_log_opened_for_writing_refuses_a_link) {
  char path[300];
  lt_err_t err = {0};
  plant("tune-log.jsonl", path, sizeof path);
  cr_assert_null(resume_log_open(path, 0, &err));
  cr_assert(strstr(err.msg, "tune-log.jsonl") && strstr(err.msg, "symbolic link"), "%s", err.msg);
  cr_assert_null(util_open_nofollow(path, true, &err));
  check_safe(victim);
  /* A real log is appended to after its kept lines are rewritten into a new file. */
  char real[300];
  snprintf(real, sizeof real, "%s/real.jsonl", dir);
  FILE *f = util_open_nofollow(real, false, &err);
  cr_assert(f, "%s", err.msg);
  fputs("{\"step\": 1}\n{\"step\": 2}\n", f);
  fclose(f);
  FILE *log = resume_log_open(real, 1, &err);
  cr_assert(log, "%s", err.msg);
  fputs("{\"step\": 2, \"again\": true}\n", log);
  fclose(log);
  char buf[256] = {0};
  f = fopen(real, "r");
  cr_assert_eq(fread(buf, 1, sizeof buf - 1, f), strlen("{\"step\": 1}\n{\"step\": 2, \"again\": true}\n"));
  fclose(f);
  cr_assert_str_eq(buf, "{\"step\": 1}\n{\"step\": 2, \"again\": true}\n");
}

Test(outputs, a_new_output_gets_the_mode_asked_less_the_umask) {
  char path[300];
  snprintf(path, sizeof path, "%s/out.txt", dir);
  mode_t old = umask(027);
  util_out_t o;
  cr_assert_eq(util_out_open(&o, path, 0644, NULL), LT_OK);
  fputs("x\n", o.f);
  cr_assert_eq(util_out_commit(&o, NULL), LT_OK);
  umask(old);
  struct stat sb;
  cr_assert_eq(stat(path, &sb), 0);
  cr_assert_eq(sb.st_mode & 0777, 0640);
  /* An output given up leaves nothing behind. */
  snprintf(path, sizeof path, "%s/gone.txt", dir);
  cr_assert_eq(util_out_open(&o, path, 0644, NULL), LT_OK);
  util_out_abort(&o);
  cr_assert_neq(access(path, F_OK), 0);
  unlink(victim);
  char cmd[300], out[16] = {0};
  snprintf(cmd, sizeof cmd, "ls -A %s | wc -l", dir);
  FILE *p = popen(cmd, "r");
  cr_assert(p && fgets(out, sizeof out, p));
  pclose(p);
  cr_assert_eq(atoi(out), 1, "only out.txt is left");
}
